"""The rules module: each rule against hand-computed values, then against this machine."""
from __future__ import annotations

import socket

import pytest

from helpers import rules
from helpers.rules import Machine, RuleMismatch


def fake(**sysctls) -> Machine:
    base = {"tcp_rmem": [4096, 131072, 33554432], "tcp_wmem": [4096, 16384, 4194304],
            "rmem_max": 4194304, "wmem_max": 4194304, "somaxconn": 4096, "tcp_max_syn_backlog": 2048,
            "tcp_syn_retries": 6, "tcp_synack_retries": 5, "tcp_syn_linear_timeouts": 4,
            "tcp_congestion_control": "bbr", "tcp_syncookies": 1, "tcp_reordering": 3}
    base.update(sysctls)
    return Machine(release="6.18.0", hz=250, hz_source="test", lo_mtu=65536, sysctls=base)


# -- hand-computed values ------------------------------------------------------------------
def test_sndbuf_expand_reference_values():
    m = fake()
    for header in (192, 320):                         # this machine's config, Debian's
        assert rules.skb_truesize_per_mss(65495, header) == 131328
    assert rules.skb_truesize_per_mss(1460, 320) == 4352
    assert rules.skb_truesize_per_mss(1460, 192) == 2304
    assert rules.tcp_sndbuf_expand(m).value == 3 * 10 * 131328 == 3939840      # empty cache, bbr
    assert rules.tcp_sndbuf_expand(m, cc="cubic").value == 2626560             # the stock 6.1 value
    m.metrics = {"127.0.0.1": {"reordering": 12}}
    assert rules.tcp_sndbuf_expand(m).value == 4194304                         # 13 segs: capped
    m.sysctls["tcp_no_metrics_save"] = 1          # stops saving, not reading (tcp_init_metrics)
    assert rules.tcp_sndbuf_expand(m).value == 4194304
    m.metrics = {}
    m.sysctls["tcp_wmem"] = [4096, 4_000_000, 8_000_000]
    assert rules.tcp_sndbuf_expand(m).value == 4_000_000   # tcp_wmem[1] already above: never lowered


def test_window_scale_follows_the_largest_buffer():
    assert rules.default_wscale(fake()).value == 10                             # 32 MiB
    assert rules.default_wscale(fake(tcp_rmem=[4096, 131072, 6291456])).value == 7
    # SO_RCVBUF set: the clamp is that buffer's window (1 MiB asked -> 2 MiB stored -> 5)
    assert rules.default_wscale(fake(), rcvbuf=2 * 1048576).value == 5
    assert rules.default_wscale(fake(), rcvbuf=8192).value == 0
    w = rules.tcp_select_initial_window(fake(), 65536, 65495).value
    assert w["rcv_wnd"] == 65495 and w["rcv_wscale"] == 10


def test_setsockopt_doubling_and_caps():
    assert rules.sock_setsockopt_buf(4096, 4194304).value == 8192
    assert rules.sock_setsockopt_buf(1 << 20, 212992).value == 425984           # stock cap
    assert rules.sock_setsockopt_buf(1, 4194304).value == 2304                  # SOCK_MIN_RCVBUF
    assert rules.sock_setsockopt_buf(1, 4194304, which="SO_SNDBUF").value == 4608   # SOCK_MIN_SNDBUF
    assert rules.sock_setsockopt_buf(-1, 4194304, which="SO_SNDBUF").value == 8388608  # u32: capped


def test_queue_rules():
    assert rules.sk_acceptq_is_full(fake(), 2).value == 3
    assert rules.sk_acceptq_is_full(fake(), 0).value == 1
    assert rules.sk_acceptq_is_full(fake(somaxconn=4), 100).value == 5
    assert rules.sk_acceptq_is_full(fake(somaxconn=4), -1).value == 5          # unsigned compare
    assert rules.half_open_cap(fake(tcp_max_syn_backlog=256), 1024, cookies=0).value == 193
    assert rules.half_open_cap(fake(tcp_max_syn_backlog=256), 1024, cookies=1).value == 1025
    assert rules.half_open_cap(fake(), 16, cookies=0).value == 17


def test_syn_retry_schedules():
    # linear retries come on top of tcp_syn_retries (tcp_write_timeout): 6 + 4 retries, 131 s
    assert rules.syn_retry_schedule(fake()).value == [1, 1, 1, 1, 1, 2, 4, 8, 16, 32, 64]
    assert sum(rules.syn_retry_schedule(fake()).value) == 131
    assert rules.syn_retry_schedule(fake(tcp_syn_linear_timeouts=None)).value == [1, 2, 4, 8, 16, 32, 64]
    assert sum(rules.syn_retry_schedule(fake(tcp_syn_linear_timeouts=0)).value) == 127   # the classic 127 s
    assert rules.syn_retry_schedule(fake(tcp_syn_linear_timeouts=1), n=4).value == [1, 1, 2, 4]
    assert rules.synack_retry_schedule(fake()).value == [1, 2, 4, 8, 16]


def test_max_tcp_header_from_config(monkeypatch):
    base = {"CONFIG_X86_L1_CACHE_SHIFT": "6"}
    for extra, want in (({}, 192), ({"CONFIG_WLAN": "y"}, 256),
                        ({"CONFIG_HYPERV_NET": "y", "CONFIG_NET_IPGRE": "m"}, 320),
                        # netdevice.h tests defined(CONFIG_HYPERV_NET): a module does not count
                        ({"CONFIG_HYPERV_NET": "m", "CONFIG_NET_IPGRE": "m"}, 256)):
        monkeypatch.setattr(rules, "_CONFIG_CACHE", ({**base, **extra}, "test"))
        assert rules.max_tcp_header()[0] == want
    monkeypatch.setattr(rules, "_CONFIG_CACHE", ({}, ""))
    assert rules.max_tcp_header()[0] is None


@pytest.mark.netns
def test_truesize_at_mss_1460_on_this_machine():
    """In a namespace with MTU 1500 the send buffer at establishment is factor × 10 ×
    truesize(1460): the header room of this kernel's config decides 2,304 or 4,352."""
    from helpers.netns import Namespace, have_namespace_privileges
    if not have_namespace_privileges():
        pytest.skip("needs namespace privileges")
    with Namespace(mtu=1500) as ns:
        m = Machine.read(ns)
        lst, c, s = _pair(ns.socket, cc="reno")
        try:
            want = rules.tcp_sndbuf_expand(m, cc="reno", mss=1460, reordering=3)
            want.check(c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), "MTU 1500, reno", quiet=True)
        finally:
            c.close(), s.close(), lst.close()


def test_delack_band_from_hz():
    for hz, tick in ((100, 10), (250, 4), (1000, 1)):
        m = fake()
        m.hz = hz
        p = rules.delack_band(m)
        assert p.value == 40 and p.low == 39 and p.high == 40 + 2 * tick + 15


def test_check_prints_and_raises_a_readable_mismatch(capsys):
    p = rules.sk_acceptq_is_full(fake(), 2)
    assert p.check(3, "ss Recv-Q") == 3
    out = capsys.readouterr().out
    assert "min(backlog, somaxconn) + 1" in out and "backlog=2" in out and "agree" in out
    with pytest.raises(RuleMismatch) as exc:
        p.check(4, "ss Recv-Q", reference="pcaps/accept_queue/x.pcap")
    text = str(exc.value)
    assert "prediction:  3" in text and "measured:    4" in text and "pcaps/accept_queue/x.pcap" in text
    assert isinstance(exc.value, AssertionError)


def test_band_check():
    p = rules.delack_band(fake())
    assert p.agrees(44.0) and not p.agrees(20.0) and not p.agrees(200.0) and not p.agrees("x")


def test_machine_round_trip_and_old_manifest_entries():
    m = fake()
    assert Machine.from_dict(m.as_dict()) == m
    old = {"kernel": "6.18.1", "sysctls": {"net.ipv4.tcp_rmem": "4096 131072 6291456",
                                           "net.core.somaxconn": "128",
                                           "net.ipv4.tcp_congestion_control": "cubic"}}
    r = Machine.from_manifest(old)
    assert r.tcp_rmem == [4096, 131072, 6291456] and r.somaxconn == 128 and r.tcp_congestion_control == "cubic"
    assert Machine.from_manifest({"machine": m.as_dict()}) == m


def test_parse_tcp_metrics():
    text = "127.0.0.1 age 1.120sec cwnd 24 reordering 12 rtt 4651us rttvar 9266us source 127.0.0.1\n"
    d = rules.parse_tcp_metrics(text, "127.0.0.1")
    assert d["reordering"] == 12 and d["cwnd"] == 24 and d["rtt"] == "4651us"
    assert rules.parse_tcp_metrics(text, "127.0.0.2") == {}


# -- this machine -------------------------------------------------------------------------
def test_this_machine_is_read():
    m = rules.machine()
    assert m.tcp_rmem and len(m.tcp_rmem) == 3 and m.tcp_wmem and m.somaxconn
    assert m.hz in (100, 250, 300, 1000), m.hz_source
    assert m.lo_mtu >= 1280


def test_measured_hz_matches_the_kernel_config():
    hz, how = rules.kernel_hz()
    if not how.startswith("CONFIG_HZ"):
        pytest.skip("no kernel config readable here: HZ was measured, nothing to compare")
    assert rules.measure_hz() == hz


def _pair(sock_factory=socket.socket, cc: str | None = None, rcvbuf: int | None = None):
    lst = sock_factory()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    c = sock_factory()
    if cc:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    if rcvbuf:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    c.connect(lst.getsockname())
    s, _ = lst.accept()
    return lst, c, s


def test_setsockopt_rule_on_this_machine():
    m = rules.machine()
    for asked in (1, 4096, 1 << 20, 1 << 30):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, asked)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, asked)
            rules.sock_setsockopt_buf(asked, m.rmem_max).check(
                s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), quiet=True)
            rules.sock_setsockopt_buf(asked, m.wmem_max, which="SO_SNDBUF").check(
                s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), quiet=True)


def test_accept_queue_rule_on_this_machine():
    from helpers import kernel
    m = rules.machine()
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(2)
    clients = []
    try:
        for _ in range(5):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(lst.getsockname())
            clients.append(c)
        import time
        time.sleep(0.2)
        row = kernel.ss(state="listening", sport=lst.getsockname()[1]).iloc[0]
        rules.sk_acceptq_is_full(m, 2).check(int(row["recv_q"]), "ss Recv-Q", quiet=True)
    finally:
        for c in clients:
            c.close()
        lst.close()


@pytest.mark.netns
def test_sndbuf_at_establishment_cold_and_warm_cache():
    """A fresh namespace has an empty metrics cache; after traffic it may hold a
    reordering value. Either way, the rule evaluated on a snapshot taken just before
    connect() gives the buffer the connection gets."""
    from helpers.netns import Namespace, have_namespace_privileges
    if not have_namespace_privileges():
        pytest.skip("needs namespace privileges")
    with Namespace() as ns:
        for round_ in range(3):
            for cc in ("reno", "bbr"):
                m = Machine.read(ns)
                if round_ == 0 and cc == "reno":
                    assert m.metrics["127.0.0.1"] == {}, "a fresh namespace starts with an empty cache"
                lst, c, s = _pair(ns.socket, cc=cc)
                try:
                    want = rules.tcp_sndbuf_expand(m, cc=cc)
                    want.check(c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), f"client, {cc}", quiet=True)
                    # some traffic, so the cache learns something for the next round
                    c.sendall(b"x" * 200000)
                    got = 0
                    while got < 200000:
                        got += len(s.recv(65536))
                finally:
                    c.close(), s.close(), lst.close()


def test_index_spot_checks_run_and_agree(capsys):
    preds = rules.spot_checks()
    assert [p.rule for p in preds] == ["sock_setsockopt()", "sk_acceptq_is_full()"]
    assert capsys.readouterr().out.count("agree ✓") == 2
