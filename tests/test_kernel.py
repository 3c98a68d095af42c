"""helpers.kernel against the real kernel: real sockets on 127.0.0.1, real ss, real /proc.

The host's counters are noisy (anything on the machine talks TCP over lo), so host
deltas are checked with >=; inside a fresh namespace the counts are exact.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time

import pandas as pd
import pytest

from helpers import kernel, netns
from helpers.errors import CourseError, MissingToolError, ParameterError

needs_ns = pytest.mark.skipif(
    not netns.have_namespace_privileges(),
    reason="needs CAP_SYS_ADMIN and CAP_NET_ADMIN for network namespaces",
)


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def listener(backlog: int = 16, host: str = "127.0.0.1", family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        s.listen(backlog)
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def pair(host: str = "127.0.0.1"):
    """A connected (client, server) pair on loopback."""
    with listener(host=host, family=socket.AF_INET6 if ":" in host else socket.AF_INET) as l:
        c = socket.create_connection(l.getsockname()[:2], timeout=5)
        s, _ = l.accept()
        try:
            yield c, s
        finally:
            c.close()
            s.close()


def wait_for(fn, timeout=2.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value is not None or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def lo_mtu() -> int:
    with open("/sys/class/net/lo/mtu") as f:
        return int(f.read())


# ----------------------------------------------------------------------------- ss
def test_ss_listen_shows_backlog_and_accept_queue():
    """backlog 2, never accept, 3 clients: all 3 complete (backlog + 1)."""
    with listener(backlog=2) as l:
        port = l.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        try:
            def listen_row():
                df = kernel.ss(state="LISTEN", sport=port)
                return df if len(df) and df.recv_q.iloc[0] == 3 else None

            df = wait_for(listen_row)
            assert df is not None, kernel.ss(sport=port)
            row = df.iloc[0]
            assert row.state == "LISTEN"          # filled in although ss hides the column
            assert row.send_q == 2                 # the backlog
            assert row.recv_q == 3                 # the accept queue: backlog + 1
            assert (row.local, row.lport) == ("127.0.0.1", port)
            assert row.peer == "0.0.0.0" and pd.isna(row.pport)
            # TCP_INFO of a listener reports the same two numbers
            info = kernel.tcp_info(l)
            assert info.state == "LISTEN"
            assert (info.unacked, info.sacked) == (3, 2)
            # without a state filter, ss prints the state column itself; port= matches
            # either end: 3 clients + 3 queued server-side children + the listener
            both = kernel.ss(port=port)
            assert sorted(both.state) == ["ESTAB"] * 6 + ["LISTEN"]
            estab = both[both.state == "ESTAB"]
            assert (estab.pport == port).sum() == 3 and (estab.lport == port).sum() == 3
        finally:
            for c in clients:
                c.close()


def test_ss_estab_info_fields():
    with pair() as (c, s):
        c.sendall(b"x" * 100_000)
        got = 0
        while got < 100_000:
            got += len(s.recv(100_000))
        s.sendall(b"y" * 1000)  # the client does not read: 1000 bytes stay in its Recv-Q
        time.sleep(0.05)
        cport = c.getsockname()[1]
        df = kernel.ss(state="ESTAB", sport=cport)
        assert len(df) == 1
        row = df.iloc[0]
        assert row.state == "ESTAB"
        assert row.recv_q == 1000 and row.send_q == 0
        assert row.rtt_ms > 0 and row.rttvar_ms >= 0
        assert row.cwnd >= 1 and row.mss > 0
        assert row.skmem_rb > 0 and row.skmem_tb > 0 and row.skmem_r > 0
        for col in ("skmem_t", "skmem_f", "skmem_w", "skmem_o", "skmem_bl", "skmem_d"):
            assert row[col] >= 0
        assert row.bytes_sent >= 100_000
        assert row.bytes_acked >= 100_000
        assert row.bytes_received == 1000
        assert row.retrans == 0 and row.unacked == 0 and row.backoff == 0
        assert row.rcv_space > 0 and row.snd_wnd > 0
        # cross-check with TCP_INFO of the same socket
        info = kernel.tcp_info(c)
        assert row.cc == info.cc
        assert row.wscale == f"{info.snd_wscale},{info.rcv_wscale}"
        assert row.mss == info.snd_mss
        assert "skmem:(" in row["info"]   # df.info is a pandas method: use ["info"]
        if kernel.sysctl("net.ipv4.tcp_timestamps") == 1:
            assert "ts" in row.ss_flags.split()


def test_ss_time_wait_and_state_aliases():
    with listener() as l:
        port = l.getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        s, _ = l.accept()
        s.close()          # the server closes first: the server holds TIME-WAIT
        assert c.recv(10) == b""
        c.close()
        df = kernel.ss(state="TIME_WAIT", sport=port)   # kernel spelling accepted
        assert len(df) == 1
        row = df.iloc[0]
        assert row.state == "TIME-WAIT"
        assert row.timer == "timewait"
        assert 0 < row.timer_ms <= 60_000
        assert pd.isna(row.cwnd)          # no TCP info for a TIME-WAIT socket
        several = kernel.ss(state=["LISTEN", "TIME-WAIT"], port=port)
        assert set(several.state) == {"LISTEN", "TIME-WAIT"}


def test_ss_ipv6_addresses_have_no_brackets():
    if not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6"):
        pytest.skip("no IPv6 on this machine")
    try:
        ctx = pair("::1")
        c, s = ctx.__enter__()
    except OSError as exc:
        pytest.skip(f"::1 unusable here: {exc}")
    try:
        df = kernel.ss(sport=c.getsockname()[1])
        assert list(df.local) == ["::1"] and list(df.peer) == ["::1"]
        assert int(df.pport.iloc[0]) == s.getsockname()[1]
    finally:
        ctx.__exit__(None, None, None)


def test_ss_extra_filter_and_empty_result():
    with listener() as l:
        port = l.getsockname()[1]
        df = kernel.ss(sport=port, extra_filter="src 127.0.0.1")
        assert list(df.state) == ["LISTEN"]
        none = kernel.ss(sport=port, extra_filter="src 127.0.0.2")
        assert len(none) == 0
        assert list(none.columns[:7]) == ["state", "recv_q", "send_q", "local", "lport",
                                          "peer", "pport"]


def test_ss_refuses_bad_arguments():
    with pytest.raises(ParameterError):
        kernel.ss(state="ESTABLISHING")
    with pytest.raises(ParameterError):
        kernel.ss(port=70000)
    with pytest.raises(ValueError):     # ParameterError is a ValueError
        kernel.ss(sport="22")


def test_ss_missing_tool(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingToolError) as err:
        kernel.ss()
    assert "iproute2" in str(err.value) and "`ss`" in str(err.value)


def test_parse_ss_line_rare_fields():
    # Formats ss prints in situations hard to create on demand (loss, pacing caps).
    line = ("ESTAB 0 1448 10.0.0.1:22 [2001:db8::1]:5555 timer:(on,204ms,2) "
            "skmem:(r0,rb131072,t0,tb87040,f2560,w0,o0,bl0,d3) ts sack cubic "
            "wscale:7,7 rto:408 backoff:1 rtt:1.5/0.75 mss:1448 cwnd:2 ssthresh:7 "
            "bytes_sent:5000 bytes_retrans:2896 retrans:1/4 lost:1 "
            "send 15.4Mbps pacing_rate 30bps/40bps busy:12ms rwnd_limited:4ms(33.3%) "
            "rcv_space:14480 snd_wnd:0")
    row = kernel.parse_ss_line(line)
    assert row["state"] == "ESTAB" and row["peer"] == "2001:db8::1" and row["pport"] == 5555
    assert row["timer"] == "on" and row["timer_ms"] == 204 and row["timer_retrans"] == 2
    assert row["skmem_d"] == 3 and row["skmem_tb"] == 87040
    assert row["cc"] == "cubic" and row["wscale"] == "7,7" and row["ss_flags"] == "ts sack"
    assert (row["rtt_ms"], row["rttvar_ms"]) == (1.5, 0.75)
    assert (row["retrans_now"], row["retrans"]) == (1, 4)
    assert row["backoff"] == 1 and row["ssthresh"] == 7 and row["snd_wnd"] == 0
    assert (row["pacing_rate_bps"], row["max_pacing_rate_bps"]) == (30, 40)
    assert row["send_bps"] == "15.4M"            # ss's own rounding is kept as text
    assert row["busy_ms"] == 12 and row["rwnd_limited_ms"] == 4
    assert row["rwnd_limited_pct"] == 33.3
    assert row["rto_ms"] == 408
    assert row["unacked"] == 0                   # omitted by ss when zero
    # TIME-WAIT with ss's minute format, and a line without the state column
    tw = kernel.parse_ss_line("0 0 127.0.0.1:1 127.0.0.1:2 timer:(timewait,1min2sec,0)",
                              state="TIME-WAIT")
    assert tw["state"] == "TIME-WAIT" and tw["timer_ms"] == 62_000
    assert "unacked" not in tw                   # no TCP info: nothing filled in


# ----------------------------------------------------------------------------- counters
def test_counters_have_nstat_names():
    c = kernel.counters()
    for name in ("TcpActiveOpens", "TcpPassiveOpens", "TcpExtListenOverflows",
                 "TcpExtListenDrops", "TcpExtSyncookiesSent", "IpExtInOctets",
                 "IpInReceives", "UdpInDatagrams", "IcmpInMsgs", "TcpCurrEstab"):
        assert name in c, name
        assert isinstance(c[name], int)
    if os.path.exists("/proc/net/snmp6"):
        assert "Ip6InReceives" in c and "Udp6InDatagrams" in c and "Icmp6InMsgs" in c
    assert c["TcpMaxConn"] == -1       # a signed constant in /proc/net/snmp


def test_nstat_delta_sees_connections():
    n = 5
    with listener(backlog=16) as l:
        with kernel.nstat_delta() as d:
            conns = [socket.create_connection(l.getsockname(), timeout=5) for _ in range(n)]
            accepted = [l.accept()[0] for _ in range(n)]
        for s in conns + accepted:
            s.close()
    assert d["TcpActiveOpens"] >= n        # >=: the host is noisy
    assert d["TcpPassiveOpens"] >= n
    assert d["NoSuchCounter"] == 0 and d.get("NoSuchCounter") == 0
    assert all(v != 0 for v in d.delta.values())
    t = d.table()
    assert list(t.columns) == ["counter", "before", "after", "delta"]
    assert list(t.counter) == sorted(t.counter)
    assert (t.after - t.before == t.delta).all()
    row = t[t.counter == "TcpActiveOpens"].iloc[0]
    assert row.delta >= n
    assert set(d.table(prefix="TcpExt").counter) <= {k for k in d.delta if k.startswith("TcpExt")}


def test_nstat_delta_before_enter_is_an_error():
    d = kernel.nstat_delta()
    with pytest.raises(CourseError):
        d.delta


# ----------------------------------------------------------------------------- TCP_INFO
def test_tcp_info_established_on_lo():
    with pair() as (c, s):
        c.sendall(b"hello")
        assert s.recv(5) == b"hello"
        info = kernel.tcp_info(c)
        assert info.state == "ESTABLISHED" and info.state_num == 1
        assert info.ca_state == "Open"
        assert info.length >= 104
        if lo_mtu() == 65536:
            # MSS option 65495 = 65535 - 40; minus 12 bytes of timestamp option
            assert info.advmss in (65483, 65495)
            assert 0 < info.snd_mss <= 65495
        assert 0 <= info.snd_wscale <= 14 and 0 <= info.rcv_wscale <= 14
        assert info.opt_wscale is True and "wscale" in info.option_names
        assert info.opt_sack is (kernel.sysctl("net.ipv4.tcp_sack") == 1)
        assert info.opt_timestamps is (kernel.sysctl("net.ipv4.tcp_timestamps") != 0)
        assert info.rtt > 0 and info.rto >= 200_000      # µs; 200 ms minimum RTO
        assert info.bytes_acked >= 5 and info.bytes_sent >= 5
        assert info.total_retrans == 0
        assert info.cc in kernel.sysctl("net.ipv4.tcp_available_congestion_control").split()
        d = info.as_dict()
        assert d["state"] == "ESTABLISHED" and d["snd_mss"] == info.snd_mss
        assert info["snd_cwnd"] == info.snd_cwnd
        # the server side sees the same window scales, mirrored
        sinfo = kernel.tcp_info(s)
        assert (sinfo.snd_wscale, sinfo.rcv_wscale) == (info.rcv_wscale, info.snd_wscale)
        assert sinfo.bytes_received == 5


def test_tcp_info_decodes_only_what_the_kernel_returned():
    with pair() as (c, _s):
        full = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512)
    assert len(full) <= kernel.TCP_INFO_SIZE or len(full) == 512
    old = kernel.decode_tcp_info(full[:104])          # a pre-3.15 kernel's struct
    assert old.state == "ESTABLISHED" and old.total_retrans == 0
    assert old.pacing_rate is None and old.snd_wnd is None and old.length == 104
    if len(full) >= 248:
        new = kernel.decode_tcp_info(full)
        assert new.total_rto == 0 and new.rcv_wnd > 0


def test_tcp_info_table_and_bad_socket():
    with pair() as (c, _s):
        t = kernel.tcp_info_table(c)
    assert list(t.columns) == ["field", "value"]
    assert t.set_index("field").loc["state", "value"] == "ESTABLISHED"
    assert "rtt [µs]" in set(t.field)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        with pytest.raises(ParameterError):
            kernel.tcp_info(u)


# ----------------------------------------------------------------------------- sockstat, sysctl
def test_sockstat_host():
    st = kernel.sockstat()
    assert {"inuse", "orphan", "tw", "alloc", "mem"} <= set(st["TCP"])
    with pair():
        now = kernel.sockstat()
        assert now["TCP"]["inuse"] >= 2
        assert now["sockets"]["used"] >= 3   # per namespace: a fresh one may hold none before
    if os.path.exists("/proc/net/sockstat6"):
        assert "inuse" in st["TCP6"]


def test_sysctl_reads():
    assert isinstance(kernel.sysctl("net.ipv4.tcp_syncookies"), int)
    assert kernel.sysctl("net/ipv4/tcp_syncookies") == kernel.sysctl("net.ipv4.tcp_syncookies")
    rmem = kernel.sysctl("net.ipv4.tcp_rmem")
    assert isinstance(rmem, str) and len(rmem.split()) == 3 and "\t" not in rmem
    with pytest.raises(ParameterError):
        kernel.sysctl("net.ipv4.no_such_thing")
    with pytest.raises(ParameterError):
        kernel.sysctl("net.ipv4/../../etc")
    # deliberately read-only
    assert not any(n in dir(kernel) for n in ("set_sysctl", "write_sysctl", "sysctl_write"))


# ----------------------------------------------------------------------------- inside a namespace
@needs_ns
def test_counters_inside_a_namespace_are_private():
    with netns.Namespace() as ns:
        start = kernel.counters(ns)
        assert start["TcpActiveOpens"] == 0 and start["TcpPassiveOpens"] == 0
        assert start["TcpExtListenOverflows"] == 0
        # host traffic does not move the namespace's counters (exactly)
        with kernel.nstat_delta(ns) as quiet:
            with listener() as l:
                conns = [socket.create_connection(l.getsockname(), timeout=5) for _ in range(3)]
                for c in conns:
                    c.close()
        assert quiet.delta == {}
        # a connection inside moves them by exactly one
        with kernel.nstat_delta(ns) as d:
            srv = ns.socket()
            srv.bind(("127.0.0.1", 0))
            srv.listen(4)
            cli = ns.socket()
            cli.connect(srv.getsockname())
            acc, _ = srv.accept()
        assert d["TcpActiveOpens"] == 1 and d["TcpPassiveOpens"] == 1
        assert kernel.counters(ns)["TcpActiveOpens"] == 1
        assert kernel.counters()["TcpActiveOpens"] > 1     # the host has its own, larger count
        # ss inside sees them; ss on the host does not
        port = srv.getsockname()[1]
        inside = kernel.ss(ns=ns, port=port)
        assert sorted(inside.state) == ["ESTAB", "ESTAB", "LISTEN"]
        assert len(kernel.ss(ns=ns.name, port=port)) == 3          # by name too
        host = kernel.ss(state="LISTEN", sport=port)
        assert not ((host.local == "127.0.0.1") & (host.lport == port)).any()
        # tcp_info works on a namespaced socket from any thread
        assert kernel.tcp_info(cli).state == "ESTABLISHED"
        # sockstat: inuse is the namespace's own ...
        st = kernel.sockstat(ns)
        assert st["TCP"]["inuse"] == 3 and st["TCP"]["tw"] == 0
        acc.close()


@needs_ns
def test_sockstat_tcp_memory_is_machine_wide():
    """Measured: TCP 'mem' (pages) and 'alloc' in a namespace are the host's numbers."""
    with netns.Namespace() as ns:
        for _ in range(20):   # the host may change between the two reads: retry
            host, inside = kernel.sockstat()["TCP"], kernel.sockstat(ns)["TCP"]
            if host["mem"] == inside["mem"] and host["alloc"] == inside["alloc"]:
                break
            time.sleep(0.01)
        assert host["mem"] == inside["mem"]
        assert host["alloc"] == inside["alloc"]
        assert inside["inuse"] == 0


@needs_ns
def test_sysctl_read_inside_namespace():
    with netns.Namespace(sysctls={"net.ipv4.tcp_fin_timeout": 17}) as ns:
        assert kernel.sysctl("net.ipv4.tcp_fin_timeout", ns=ns) == 17
        assert kernel.sysctl("net.ipv4.tcp_fin_timeout", ns=ns.name) == 17
        assert kernel.sysctl("net.ipv4.tcp_fin_timeout") != 17 or pytest.skip(
            "the host itself uses 17")


def test_kernel_ns_argument_errors():
    with pytest.raises(ParameterError):
        kernel.counters(ns="../etc")
    closed = netns.Namespace()
    with pytest.raises(CourseError):
        kernel.ss(ns=closed)


@pytest.mark.parametrize("text,ms", [("200ms", 200), ("59sec", 59_000), ("1.900ms", 1_900), ("2min", 120_000),
                                     ("1min2sec", 62_000), ("1min2.500ms", 62_500), ("", None), ("on", None)])
def test_ss_timer_durations_as_iproute2_prints_them(text, ms):
    """iproute2's print_ms_timer() writes 1 s 900 ms as '1.900ms': read as 1.9 ms before."""
    from helpers.kernel import ss_timer_ms as _duration_ms
    assert _duration_ms(text) == ms
