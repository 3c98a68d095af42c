"""Chapter 01_04: SYN flood and SYN cookies, inside a course namespace.

A SYN flood fills a listener's queue of half-open connections (SYN-RECV) with SYNs whose
source addresses never answer. Everything here happens inside a private network
namespace (:class:`helpers.netns.Namespace`) whose ``lo`` also carries a route for a
spoofed private range, :data:`SPOOF_NET`: the listener's SYN-ACKs to that range go out
``lo``, come back in, are not for a local address and are dropped, so the half-open
entries stay as long as the experiment runs.

The spoofed SYNs come from :mod:`helpers.rawsyn` (the guard, the builder and the bounded
sender, re-exported here): every path that sends one first calls its guard, which refuses
any target outside a namespace this process created, any non-loopback target, any other
source range, and any count or duration beyond its bounds.

Every claim is checked against a kernel rule (:mod:`helpers.rules`) evaluated on the
namespace's own machine snapshot, taken before the flood: rules.half_open_cap for the
queue's limits, rules.acceptq_and_cookies for who gets in, reqsk_timer_handler and
syn_ack_recalc for how long entries live.

Experiments:

- :func:`syn_flood` (panel: cookies on/off, flood size, backlog): SYN-RECV count, the
  counters (TCPReqQFullDrop, ListenDrops, SyncookiesSent/Recv) and whether 10 legitimate
  clients still get in (with cookies on, as many as the accept queue holds: cookies protect
  the SYN queue, not the accept queue); the two limits of the half-open queue (min(backlog,
  somaxconn) + 1 on kernels with the 2025 fix, 6.13+ and stable backports, backlog before; and ¾ of ``tcp_max_syn_backlog`` without cookies).
- :func:`syn_cookie_anatomy`: what a cookie encodes, read from SYN-ACKs to crafted SYNs
  (statelessness, client ISN, MSS index, the options in the timestamp), what a cookie
  connection costs (an MSS rounded down to msstab: nothing at Ethernet's 1460, 1460 instead
  of 65495 on lo; without timestamps no window scale and no SACK), and that an ACK alone,
  carrying cookie + 1, creates a connection.
- :func:`half_open_lifetime` (about 9 s, not in the panel): how long unanswered entries
  live, cookies off: in a queue over half full the kernel drops old entries after 2
  SYN-ACK retransmissions (about 7 s) until the queue is half full, after which new
  clients get in again; in an uncrowded queue they get tcp_synack_retries retransmissions.
"""
from __future__ import annotations

import select
import socket
import struct
import time
from typing import Any, Sequence

from .. import progress, rules
from ..rawsyn import (MAX_FLOOD, MAX_SECONDS, SPOOF_NET, _SPOOF, build_syns,  # noqa: F401 (re-exported)
                      check_flood_target, raw_sender, send_bounded, send_crafted, send_flood,
                      setup_namespace, syn_sources, syn_template)
from ..kernel import count_syn_recv
from ..params import Param
from .base import Result, experiment

#: net.ipv4.tcp_max_syn_backlog inside the experiment's namespace.
MAX_SYN_BACKLOG = 256
#: Legitimate clients that try to connect after the flood.
LEGIT_CLIENTS = 10
#: How long the legitimate clients get (the first SYN retry comes only after 1 s).
LEGIT_WAIT = 0.4
#: Linux's table of MSS values a cookie can encode (net/ipv4/syncookies.c, msstab).
MSSTAB = (536, 1300, 1440, 1460)
#: Options carried in the low 6 bits of a cookie SYN-ACK's TSval.
TS_WSCALE_NONE = 0xF
TS_SACK = 1 << 4
TS_ECN = 1 << 5


def syn_recv_count(ns: Any, port: int) -> int:
    """Half-open entries (SYN-RECV) of the listener on *port*, from /proc/net/tcp inside *ns*."""
    return _count_syn_recv(ns.read_proc("net/tcp"), port)


def snapshot(ns: Any, port: int) -> tuple[int, dict[str, int]]:
    """SYN-RECV count and every counter, read by one thread inside *ns* (cheap enough to
    sample during a flood)."""
    from ..kernel import parse_snmp, read_counter_files

    def read():
        with open("/proc/thread-self/net/tcp") as f:
            return f.read(), read_counter_files()
    tcp, texts = ns.call(read)
    out: dict[str, int] = {}
    for key in ("snmp", "netstat"):
        if key in texts:
            parse_snmp(texts[key], out)
    return _count_syn_recv(tcp, port), out


_count_syn_recv = count_syn_recv


def queue_caps(m: "rules.Machine", backlog: int, cookies: int | None = None) -> dict:
    """The two limits of the half-open queue (tcp_conn_request(), net/ipv4/tcp_input.c) on
    machine *m* (a namespace's snapshot): a wrapper of :func:`helpers.rules.half_open_cap`
    that also names which limit applies.

    - full queue: a SYN finds it full when it already holds more than min(backlog,
      somaxconn), so it stops at that + 1 (kernels with the 2025 fix, 6.13+ and stable
      backports; older ones stop at min(backlog, somaxconn)) (then: a cookie, or a drop counted in TCPReqQFullDrop);
    - without cookies, the last quarter of ``tcp_max_syn_backlog`` is kept for peers
      proven alive: a SYN from anyone else is dropped once the queue holds more than
      max - max/4 entries, so it stops at max - max//4 + 1 (counted only in ListenDrops).
    """
    pred = rules.half_open_cap(m, backlog, cookies)
    ins = pred.inputs
    full = full_queue_cap(m, ins["backlog"])
    three_quarters = ins["tcp_max_syn_backlog"] - (ins["tcp_max_syn_backlog"] >> 2) + 1
    return {"backlog_effective": full - 1, "full_cap": full, "three_quarter_cap": three_quarters,
            "cap": pred.value, "limit": "full queue" if pred.value == full else "3/4 of tcp_max_syn_backlog"}


def full_queue_cap(m: "rules.Machine", backlog: int) -> int:
    """Where a full half-open queue stops (inet_csk_reqsk_queue_is_full()): min(backlog,
    somaxconn) + 1 on kernels with the 2025 fix (6.13+, and stable backports), min(backlog,
    somaxconn) on older ones: :func:`helpers.rules.half_open_cap` with cookies on."""
    return rules.half_open_cap(m, backlog, 1).value


def cap_phrase(m: "rules.Machine", backlog: int) -> str:
    """"min(16, somaxconn 4096) + 1 = 17" for machine *m*: the full-queue cap, spelled out."""
    p = rules.half_open_cap(m, backlog, 1)
    plus = " + 1" if rules.inet_csk_reqsk_queue_is_full_strict(m) else ""
    return f"min({backlog}, somaxconn {p.inputs['somaxconn']}){plus} = {p.value}"


def legit_connects(ns: Any, port: int, n: int = LEGIT_CLIENTS, wait: float = LEGIT_WAIT) -> list[dict]:
    """Start *n* non-blocking connects inside *ns*; wait at most *wait* s; who got in?

    The wait is shorter than the first SYN retry (1 s), so a client whose SYN was
    dropped counts as failed instead of being rescued by its retry.
    """
    socks = []
    try:
        # make the sockets first (entering the namespace can take tens of ms each on a busy
        # machine), then start the clock: the wait is for the handshakes, not for us
        made = [ns.socket() for _ in range(n)]
        t0 = time.perf_counter()
        for s in made:
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", port))
            socks.append({"sock": s, "err0": err, "t": None})
        pending = {c["sock"].fileno(): c for c in socks}
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLOUT)
        deadline = time.perf_counter() + wait   # from the last connect()
        while pending:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            for fd, _ev in poller.poll(max(1, int(left * 1000))):
                c = pending.pop(fd, None)
                if c is not None:
                    poller.unregister(fd)
                    c["t"] = time.perf_counter() - t0
        out = []
        for c in socks:
            s = c["sock"]
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            try:
                s.getpeername()
                ok = err == 0 and c["t"] is not None
            except OSError:
                ok = False
            out.append({"client_port": s.getsockname()[1], "connected": ok,
                        "ms": round(c["t"] * 1000, 3) if ok else None,
                        "state": "ESTABLISHED" if ok else "SYN-SENT"})
        return out
    finally:
        for c in socks:
            c["sock"].close()


COUNTERS = ("TcpExtTCPReqQFullDrop", "TcpExtTCPReqQFullDoCookies", "TcpExtListenDrops",
            "TcpExtListenOverflows", "TcpExtSyncookiesSent", "TcpExtSyncookiesRecv",
            "TcpExtSyncookiesFailed", "TcpPassiveOpens")


def _pick(delta: dict) -> dict:
    return {k: int(delta.get(k, 0)) for k in COUNTERS}


# ======================================================================================
# experiment 1: the flood
# ======================================================================================
def check_syn_flood(result: Result, *, quiet: bool = True) -> None:
    """The 01_04 claims on one run (live or replayed), each against the kernel rule evaluated
    on the namespace the run was made in (its machine snapshot, taken before the flood)."""
    d = result.data
    p = result.params
    m = result.machine_snapshot()
    cap = rules.half_open_cap(m, p["backlog"], p["cookies"])
    sent = d["flood"]["sent"]
    assert sent == p["flood"], f"the flood must send all {p['flood']} SYNs, sent {sent}"
    expect = min(sent, cap.value)
    if sent >= cap.value:
        rules.assert_rule(result, rules.half_open_cap, d["syn_recv_after_flood"], p["backlog"], p["cookies"],
                          quiet=quiet, what="SYN-RECV entries after the flood (/proc/net/tcp)")
    assert d["syn_recv_after_flood"] == expect, \
        f"SYN-RECV should stop at min(flood, {cap.value}) = {expect}, found {d['syn_recv_after_flood']}"
    assert d["ss_syn_recv"] == expect, "ss must agree with /proc/net/tcp on the SYN-RECV count"
    c = d["counters_flood"]
    beyond = sent - expect
    full = full_queue_cap(result.machine_snapshot(), p["backlog"])
    if p["cookies"]:
        assert c["TcpExtSyncookiesSent"] == beyond, \
            f"with cookies on, every SYN beyond the full queue gets a cookie: {beyond}, counted {c['TcpExtSyncookiesSent']}"
        assert c["TcpExtTCPReqQFullDrop"] == 0 and c["TcpExtListenDrops"] == 0, "cookies on: no SYN dropped"
    else:
        assert c["TcpExtSyncookiesSent"] == 0, "cookies off: no cookie sent"
        assert c["TcpExtListenDrops"] == beyond, f"cookies off: every SYN beyond the cap is dropped ({beyond})"
        full_drops = beyond if cap.value == full else 0
        assert c["TcpExtTCPReqQFullDrop"] == full_drops, \
            f"TCPReqQFullDrop counts only drops at a full queue: expected {full_drops}, got {c['TcpExtTCPReqQFullDrop']}"
    ok = sum(x["connected"] for x in d["legit"])
    cl = d["counters_legit"]
    if p["cookies"]:
        # nobody accepts: cookies get clients past the SYN queue, not past a full accept queue
        room = rules.assert_rule(result, rules.acceptq_and_cookies, ok, p["backlog"], len(d["legit"]), quiet=quiet,
                                 what="legitimate clients connected within the wait, cookies on, nobody accepting").value
        assert cl["TcpExtSyncookiesRecv"] == cl["TcpExtSyncookiesSent"], \
            "each client that got a cookie answered it (SyncookiesRecv = SyncookiesSent): a SYN that finds " \
            "the accept queue full gets no cookie"
        if expect == cap.value:
            assert cl["TcpExtSyncookiesRecv"] == room, \
                "with the queue full, every legitimate client that got in connected through a cookie"
        if room < len(d["legit"]):
            assert cl["TcpExtListenOverflows"] >= len(d["legit"]) - room, \
                "the clients beyond the accept queue's limit were dropped (ListenOverflows), cookies or not"
        assert d["accept_queue"] == room, "the connected clients wait in the accept queue"
    elif expect == cap.value:
        assert ok == 0, f"cookies off and the queue at its limit: no legitimate client gets in ({ok})"
    elif sent + len(d["legit"]) <= cap.value:
        assert ok == min(len(d["legit"]), full), "a small flood leaves room: the legitimate clients get in"
    # the capture: every flood SYN is on the wire, and the SYN-ACKs match the kernel's view
    if result.pcap is not None:
        df = result.segments()
        spoofed = df["src"].str.startswith("10.99.")
        syns = df[spoofed & (df["flags"] == "SYN")]
        assert len(syns) == sent, f"the capture holds {len(syns)} spoofed SYNs, the flood sent {sent}"
        synacks = df[df["dst"].str.startswith("10.99.") & (df["flags"] == "SYN+ACK")]
        answered = synacks.drop_duplicates(["dst", "dport"])
        want = sent if p["cookies"] else expect
        assert len(answered) == want, f"{want} spoofed sources should get a SYN-ACK, {len(answered)} did"
    # the samples rise to the cap and never pass it
    ys = [s["syn_recv"] for s in d["samples"]]
    assert all(y <= cap.value for y in ys) and ys == sorted(ys), "SYN-RECV grows, never past the cap"
    for s in d["samples"]:
        assert s["syn_recv"] + s["TcpExtSyncookiesSent"] + s["TcpExtListenDrops"] == s["sent"], \
            f"every SYN sent so far is a half-open entry, a cookie or a drop: {s}"


@experiment(
    "syn_flood", chapter="01_04", needs={"live_capture", "namespaces"},
    params=[
        Param("cookies", "tcp_syncookies", 1, choices=(0, 1),
              doc="net.ipv4.tcp_syncookies inside the namespace: 1 sends cookies once the queue is full"),
        Param("flood", "flood size", 2000, choices=(200, 2000), minimum=0, maximum=MAX_FLOOD, unit="SYNs",
              doc="how many spoofed SYNs are sent (bounded)"),
        Param("backlog", "listen backlog", 16, choices=(4, 16, 1024), minimum=1, maximum=4096,
              doc="listen(backlog): also the size of the half-open queue"),
    ],
    invariant=check_syn_flood, seconds=1,
    claim="SYN-RECV stops at min(backlog, somaxconn)+1 (and, cookies off, at 3/4 of tcp_max_syn_backlog); "
          "cookies off: legitimate clients fail while the flood's entries last; cookies on: SyncookiesSent/Recv "
          "count and they get in, up to what the accept queue holds",
)
def syn_flood(run, cookies: int = 1, flood: int = 2000, backlog: int = 16, seed: int = 0) -> dict:
    """Flood a never-accepting listener with spoofed SYNs, then try 10 legitimate clients.

    Inside a fresh namespace (tcp_syncookies = *cookies*, tcp_max_syn_backlog = 256,
    :data:`SPOOF_NET` routed to lo): a listener on 127.0.0.1 with ``listen(backlog)``;
    *flood* SYNs from distinct spoofed sources, sent in 20 slices with the SYN-RECV
    count and counters sampled after each; then 10 non-blocking connects that get
    LEGIT_WAIT (0.4 s). Returns the samples, the counter deltas (flood, legitimate phase), ss's
    view and each client's outcome; the capture holds every packet of the port.
    """
    from ..kernel import counters, nstat_delta, ss
    from ..netns import Namespace

    sysctls = {"net.ipv4.tcp_syncookies": cookies, "net.ipv4.tcp_max_syn_backlog": MAX_SYN_BACKLOG}
    progress.report(0.0, "creating the namespace")
    with Namespace(sysctls=sysctls) as ns:
        setup_namespace(ns)
        machine = rules.Machine.read(ns)          # before any traffic: the rules' inputs
        somaxconn = machine.sysctls.get("somaxconn")
        max_syn = machine.sysctls.get("tcp_max_syn_backlog")
        caps = queue_caps(machine, backlog, cookies)
        lst = ns.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(backlog)
        port = lst.getsockname()[1]
        packets = build_syns(port, flood, seed=seed)
        c0 = counters(ns)
        samples = [{"sent": 0, "syn_recv": 0, **{k: 0 for k in COUNTERS}}]

        def sample(sent: int) -> None:
            n, now = snapshot(ns, port)
            samples.append({"sent": sent, "syn_recv": n, **{k: now.get(k, 0) - c0.get(k, 0) for k in COUNTERS}})
            progress.report(0.1 + 0.6 * sent / max(flood, 1), f"{sent} SYNs sent")

        with run.capture([port], ns=ns) as cap:
            with nstat_delta(ns) as d_flood:
                if flood:
                    stats = send_flood(ns, port, flood, seconds=MAX_SECONDS, packets=packets,
                                       on_chunk=sample, chunks=min(20, flood))
                else:
                    stats = {"sent": 0, "send_seconds": 0.0, "wall_seconds": 0.0, "stopped": "count",
                             "rate_pps": None, "build_seconds": 0.0}
            after = syn_recv_count(ns, port)
            ss_rows = ss(ns=ns, state="SYN-RECV", sport=port)
            progress.report(0.75, "legitimate clients connecting")
            with nstat_delta(ns) as d_legit:
                legit = legit_connects(ns, port)
            listen_row = ss(ns=ns, state="LISTEN", sport=port)
        progress.report(1.0, "done")
        return {
            "port": port, "cookies": cookies, "backlog": backlog, "flood_size": flood, "seed": seed,
            "max_syn_backlog": max_syn,
            "somaxconn": somaxconn, "caps": caps, "spoof_net": SPOOF_NET,
            "flood": stats, "samples": samples,
            "syn_recv_after_flood": after, "ss_syn_recv": int(len(ss_rows)),
            "counters_flood": _pick(d_flood.delta), "counters_legit": _pick(d_legit.delta),
            "legit": legit, "accept_queue": int(listen_row["recv_q"].iloc[0]),
            "listen_send_q": int(listen_row["send_q"].iloc[0]),
            "capture_dropped": getattr(cap, "dropped", None), "machine": machine.as_dict(),
        }


def capture_summary(result: Result) -> dict:
    """From the capture: spoofed SYNs on the wire, and how many distinct spoofed sources the
    listener answered with a SYN-ACK (an entry's or a cookie's)."""
    df = result.segments()
    syns = df[df["src"].str.startswith("10.99.") & (df["flags"] == "SYN")]
    answered = df[df["dst"].str.startswith("10.99.") & (df["flags"] == "SYN+ACK")][["dst", "dport"]]
    return {"spoofed SYNs": int(len(syns)), "sources answered": int(answered.drop_duplicates().shape[0])}


def legit_connected(result: Result, key: str = "legit") -> int:
    """How many legitimate clients got in within the wait (*key*: "legit", or "legit_after"
    for :func:`half_open_lifetime`'s clients after the watch)."""
    return sum(x["connected"] for x in result.data[key])


def outcome_table(result: Result):
    """One row per measured quantity: what the kernel reports after the flood."""
    import pandas as pd

    d = result.data
    c, cl = d["counters_flood"], d["counters_legit"]
    ok = sum(x["connected"] for x in d["legit"])
    rows = [
        ("spoofed SYNs sent", d["flood"]["sent"]),
        ("SYN-RECV entries after the flood (ss)", d["ss_syn_recv"]),
        ("queue cap on this kernel", f"{d['caps']['cap']} ({d['caps']['limit']})"),
        ("TcpExtSyncookiesSent (flood)", c["TcpExtSyncookiesSent"]),
        ("TcpExtTCPReqQFullDrop (flood)", c["TcpExtTCPReqQFullDrop"]),
        ("TcpExtListenDrops (flood)", c["TcpExtListenDrops"]),
        ("legitimate clients connected", f"{ok}/{len(d['legit'])}"),
        ("TcpExtTCPReqQFullDrop (legitimate)", cl["TcpExtTCPReqQFullDrop"]),
        ("TcpExtListenDrops (legitimate)", cl["TcpExtListenDrops"]),
        ("TcpExtSyncookiesSent (legitimate)", cl["TcpExtSyncookiesSent"]),
        ("TcpExtSyncookiesRecv (legitimate)", cl["TcpExtSyncookiesRecv"]),
        ("accept queue (LISTEN Recv-Q)", d["accept_queue"]),
    ]
    return pd.DataFrame(rows, columns=["measurement", "value"]).astype({"value": str})


def flood_plot(results: Sequence[Result] | Result, *, title: str | None = None):
    """One small plot per run, side by side (two per row): what became of each spoofed SYN
    as the flood went on. Solid: SYN-RECV entries; dotted: cookies sent; dash-dot: SYNs
    dropped (ListenDrops); thin dashed: the run's cap. A symlog y axis shared by all, so
    caps like 17, 193 and 2000 all show."""
    import math

    import matplotlib.pyplot as plt

    from ..plots import PALETTE, use_style

    use_style()
    if isinstance(results, Result):
        results = [results]
    n = len(results)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 1.6, 3.0 * nrows + 0.6),
                             sharex=True, sharey=True, squeeze=False)
    series = [("syn_recv", "SYN-RECV entries", PALETTE[0], "-", 2.2),
              ("TcpExtSyncookiesSent", "SYN cookies sent", PALETTE[2], ":", 2.4),
              ("TcpExtListenDrops", "SYNs dropped (ListenDrops)", PALETTE[3], "-.", 1.8)]
    top = 1
    for ax, r in zip(axes.flat, results):
        d = r.data
        x = [s["sent"] for s in d["samples"]]
        for key, label, colour, ls, lw in series:
            y = [s[key] for s in d["samples"]]
            ax.plot(x, y, color=colour, ls=ls, lw=lw, marker="o", ms=2.5, label=label)
            top = max(top, max(y))
        cap = d["caps"]["cap"]
        ax.axhline(cap, color="#777777", ls="--", lw=0.8, label="the queue's cap")
        ax.annotate(f"cap {cap}", (0, cap), textcoords="offset points", xytext=(2, 3), fontsize=8,
                    color="#555555")
        ax.set_title(f"cookies {'on' if d['cookies'] else 'off'}, listen({d['backlog']})", fontsize=10)
        top = max(top, cap)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("spoofed SYNs sent")
    for ax in axes[:, 0]:
        ax.set_ylabel("count (symlog)")
    ax0 = axes.flat[0]
    ax0.set_yscale("symlog", linthresh=10)
    ax0.set_ylim(0, top * 2)
    ax0.yaxis.set_major_formatter(lambda v, _pos: f"{v:,.0f}")
    handles, labels = ax0.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize=8)
    fig.suptitle(title or "What became of each spoofed SYN", fontsize=11)
    fig.tight_layout()
    return fig


def render(result: Result) -> list:
    """What the 01_04 panel shows: the banner, the outcome table and the plot."""
    d = result.data
    ok = sum(x["connected"] for x in d["legit"])
    note = (f"{d['flood']['sent']} SYNs in {d['flood']['send_seconds'] * 1000:.1f} ms of sending; "
            f"SYN-RECV stopped at **{d['ss_syn_recv']}**; legitimate clients: **{ok}/{len(d['legit'])}**.")
    return [result, note, outcome_table(result),
            flood_plot(result, title=f"What became of each of {d['flood_size']} spoofed SYNs")]


# ======================================================================================
# experiment 2: what a cookie encodes
# ======================================================================================
# Crafted SYNs, all from spoofed sources (so the SYN-ACKs go nowhere): (label, src, sport,
# seq offset, options). Same 4-tuple for the ISN probes, one per MSS table entry.
_S = 123456789
_TS = ("Timestamp", (1000, 0))
PROBES = [
    ("base: MSS 1460", "10.99.200.1", 40000, 0, [("MSS", 1460)]),
    ("same SYN again", "10.99.200.1", 40000, 0, [("MSS", 1460)]),
    ("client ISN + 1", "10.99.200.1", 40000, 1, [("MSS", 1460)]),
    ("MSS 1440", "10.99.200.1", 40000, 0, [("MSS", 1440)]),
    ("MSS 1300", "10.99.200.1", 40000, 0, [("MSS", 1300)]),
    ("MSS 536", "10.99.200.1", 40000, 0, [("MSS", 536)]),
    ("MSS 65495", "10.99.200.1", 40000, 0, [("MSS", 65495)]),
    ("MSS 1000", "10.99.200.1", 40000, 0, [("MSS", 1000)]),
    ("other source port", "10.99.200.1", 40001, 0, [("MSS", 1460)]),
    ("TS, wscale 7, SACK", "10.99.200.2", 40000, 0, [("MSS", 1460), ("SAckOK", b""), _TS, ("NOP", None), ("WScale", 7)]),
    ("TS, wscale 3", "10.99.200.2", 40000, 0, [("MSS", 1460), _TS, ("NOP", None), ("WScale", 3)]),
    ("TS, SACK, no wscale", "10.99.200.2", 40000, 0, [("MSS", 1460), ("SAckOK", b""), _TS]),
    ("TS only", "10.99.200.2", 40000, 0, [("MSS", 1460), _TS]),
]


def mss_index(mss: int) -> int:
    """The index Linux encodes for a client MSS: the largest msstab entry <= mss (0 if none)."""
    idx = 0
    for i, m in enumerate(MSSTAB):
        if m <= mss:
            idx = i
    return idx


def ts_options(wscale: int | None, sack: bool, ecn: bool = False) -> int:
    """The 6 bits a cookie SYN-ACK's TSval carries: window scale (0xf = none), SACK, ECN."""
    return (TS_WSCALE_NONE if wscale is None else wscale) | (TS_SACK if sack else 0) | (TS_ECN if ecn else 0)


def _opt_of(options, name):
    for k, v in options:
        if k == name:
            return v
    return None


def probe_table(result: Result):
    """The crafted SYNs and the SYN-ACK each got: ISN, difference from the base, TSval bits."""
    import pandas as pd

    df = result.segments()
    d = result.data
    targets = {(p[1], p[2]) for p in PROBES}
    synacks = df[(df["flags"] == "SYN+ACK") & pd.Series([(a, b) in targets for a, b in zip(df["dst"], df["dport"])],
                                                        index=df.index)]
    synacks = synacks.iloc[: len(PROBES)]
    base = base_to = None
    rows = []
    for probe, (_, sa) in zip(d["probes"], synacks.iterrows()):
        isn = int(sa["seq_raw"])
        to = f"{sa['dst']}:{sa['dport']}"
        if base is None:
            base, base_to = isn, to
        # the difference means something only for the same 4-tuple (same hashes)
        diff = (isn - base + 2**31) % 2**32 - 2**31 if to == base_to else None
        ts = None if pd.isna(sa["tsval"]) else int(sa["tsval"])
        mss = probe["mss"]
        rows.append({"probe": probe["label"], "to": to, "client ISN": probe["seq"],
                     "client MSS": mss, "cookie ISN": isn, "ISN − base": diff,
                     "MSS index": mss_index(mss), "TSval": ts,
                     "TSval & 63": None if ts is None else ts & 63,
                     "expected bits": None if ts is None else ts_options(probe["wscale"], probe["sack"])})
    out = pd.DataFrame(rows)
    for col in ("ISN − base", "TSval", "TSval & 63", "expected bits"):
        out[col] = out[col].astype("Int64")
    return out


def check_cookie_anatomy(result: Result) -> None:
    """The cookie claims on one run (live or replayed)."""
    import pandas as pd

    d = result.data
    t = probe_table(result)
    assert len(t) == len(PROBES), f"every crafted SYN gets a SYN-ACK ({len(t)}/{len(PROBES)})"
    by = {r["probe"]: r for _, r in t.iterrows()}
    base = by["base: MSS 1460"]["cookie ISN"]
    assert by["same SYN again"]["cookie ISN"] == base, "the same SYN gets the same cookie: no state kept"
    assert by["client ISN + 1"]["ISN − base"] == 1, "the client's ISN is added into the cookie"
    for label in ("MSS 1440", "MSS 1300", "MSS 536", "MSS 65495", "MSS 1000"):
        r = by[label]
        assert r["ISN − base"] == r["MSS index"] - 3, \
            f"{label}: cookie differs from the MSS-1460 cookie by the MSS index difference"
    assert by["other source port"]["cookie ISN"] != base, "another 4-tuple, another cookie"
    assert pd.isna(by["other source port"]["ISN − base"]), "no difference shown across 4-tuples"
    ts_rows = t[t["TSval"].notna()]
    assert len(ts_rows) == 4
    for _, r in ts_rows.iterrows():
        assert r["TSval & 63"] == r["expected bits"], \
            f"{r['probe']}: TSval low bits {r['TSval & 63']}, expected {r['expected bits']}"
    c = d["counters"]
    assert c["TcpExtSyncookiesSent"] == len(PROBES) + 2, "each probe, the real client and the ACK-only SYN got a cookie"
    assert c["TcpExtSyncookiesFailed"] == 0
    normal, cookie = d["normal"], d["cookie"]
    assert normal["server_snd_mss"] > 10 * cookie["server_snd_mss"], \
        "a normal connection on lo sends segments of tens of kilobytes"
    assert cookie["server_snd_mss"] == MSSTAB[mss_index(d["lo_mss"])] - 12, \
        "a cookie connection sends at most msstab's 1460 (−12 bytes of timestamps)"
    assert cookie["client_syn_mss"] == rules.tcp_mss_default(result.machine_snapshot().lo_mtu) == d["lo_mss"], \
        "although the client announced lo's MSS (MTU − 40)"
    assert cookie["server_wscale"] == normal["server_wscale"] and cookie["server_sack"], \
        "with timestamps, window scale and SACK survive the cookie"
    ao = d["ack_only"]
    assert ao["accepted"], "a spoofed ACK carrying cookie + 1 creates a connection: accept() returns it"
    assert ao["syn_recv_after_syn"] == ao["syn_recv_before"], "the cookie SYN left no half-open entry"
    assert tuple(ao["peer"]) == (ACK_ONLY["src"], ACK_ONLY["sport"]) and ao["state"] == "ESTABLISHED"
    assert not ao["server_sack"] and not ao["server_wscale_ok"] and not ao["server_timestamps"], \
        "without timestamps the cookie cannot keep window scale or SACK: both are lost"
    assert ao["server_snd_mss"] == MSSTAB[mss_index(1460)], "MSS 1460 (no timestamp bytes to subtract)"
    assert c["TcpExtSyncookiesRecv"] == 2, "the real client and the ACK-only connection"
    if result.pcap is not None:
        df = result.segments()
        ack = df[(df["src"] == ACK_ONLY["src"]) & (df["flags"] == "ACK")]
        synack = df[(df["dst"] == ACK_ONLY["src"]) & (df["flags"] == "SYN+ACK")]
        assert len(synack) == 1 and int(synack["seq_raw"].iloc[0]) == ao["cookie"], "the sniffed cookie is the captured one"
        assert len(ack) >= 1 and int(ack["ack_raw"].iloc[0]) == (ao["cookie"] + 1) % 2**32
        from_srv = df[(df["sport"] == d["port"]) & (df["len"] > 0)]
        cookie_data = from_srv[from_srv["dport"] == cookie["client_port"]]
        normal_data = from_srv[from_srv["dport"] == normal["client_port"]]
        assert cookie_data["len"].max() == cookie["server_snd_mss"], "the capture shows 1448-byte segments"
        assert normal_data["len"].max() > 10 * cookie["server_snd_mss"]
        assert normal["server_snd_mss"] == min(d["lo_mss"] - 12, client_max_window(result, "normal") // 2), \
            "a normal connection's send MSS: lo's MSS − 12, or half the client's largest window if that is smaller"


def largest_server_segment(result: Result, kind: str) -> int | None:
    """The largest segment the server sent on connection *kind* ("normal" or "cookie"), from
    the capture."""
    if result.pcap is None:
        return None
    d = result.data
    df = result.segments()
    seg = df[(df["sport"] == d["port"]) & (df["dport"] == d[kind]["client_port"]) & (df["len"] > 0)]
    return int(seg["len"].max())


def client_max_window(result: Result, kind: str) -> int | None:
    """The largest receive window the client of connection *kind* ("normal" or "cookie")
    advertised before closing (scaled, from the capture; the SYN's is never scaled)."""
    if result.pcap is None:
        return None
    d = result.data
    df = result.segments()
    c = df[(df["sport"] == d[kind]["client_port"]) & (df["dport"] == d["port"])]
    c = c[~c["flags"].str.contains("SYN|FIN|RST")]
    return int(c["win"].max())


ACK_ONLY = {"src": "10.99.200.3", "sport": 40002, "seq": _S,
            "options": [("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7)]}


def _read_synack(sniff: socket.socket, port: int, dst: str, dport: int, timeout: float = 1.0) -> int | None:
    """The ISN of the SYN-ACK from *port* to *dst*:*dport*, read from a packet socket on lo."""
    deadline = time.monotonic() + timeout
    want_dst = socket.inet_aton(dst)
    while time.monotonic() < deadline:
        sniff.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            pkt = sniff.recv(256)
        except socket.timeout:
            break
        if len(pkt) < 40 or pkt[9] != socket.IPPROTO_TCP or pkt[16:20] != want_dst:
            continue
        ihl = (pkt[0] & 0x0F) * 4
        sport, dp, seq = struct.unpack_from("!HHI", pkt, ihl)
        flags = pkt[ihl + 13]
        if sport == port and dp == dport and flags & 0x12 == 0x12:
            return seq
    return None


def complete_with_ack_only(ns: Any, lst: socket.socket, port: int) -> dict:
    """A spoofed SYN gets a cookie; a spoofed ACK = cookie + 1 alone then creates the connection.

    The SYN-ACK is read with a packet socket on the namespace's lo (it never reaches the
    spoofed source). The SYN offers window scale and SACK but no timestamps, so the cookie
    has nowhere to keep them: the connection the ACK creates has neither.
    """
    from ..kernel import tcp_info

    sniff = ns.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    try:
        sniff.bind(("lo", 0))
        before = syn_recv_count(ns, port)
        send_crafted(ns, port, [ACK_ONLY])
        cookie = _read_synack(sniff, port, ACK_ONLY["src"], ACK_ONLY["sport"])
    finally:
        sniff.close()
    if cookie is None:
        return {"cookie": None, "accepted": False}
    after_syn = syn_recv_count(ns, port)
    send_crafted(ns, port, [{"src": ACK_ONLY["src"], "sport": ACK_ONLY["sport"], "seq": ACK_ONLY["seq"] + 1,
                             "flags": "A", "ack": (cookie + 1) % 2**32, "options": []}])
    lst.settimeout(1.0)
    try:
        a, peer = lst.accept()
    except socket.timeout:
        return {"cookie": cookie, "accepted": False, "syn_recv_before": before, "syn_recv_after_syn": after_syn}
    finally:
        lst.settimeout(None)
    info = tcp_info(a)
    return {"sock": a, "cookie": cookie, "accepted": True, "peer": list(peer),
            "syn_recv_before": before, "syn_recv_after_syn": after_syn,
            "state": info.state, "server_snd_mss": info.snd_mss, "server_wscale": info.snd_wscale,
            "server_sack": bool(info.opt_sack), "server_wscale_ok": bool(info.opt_wscale),
            "server_timestamps": bool(info.opt_timestamps)}


@experiment(
    "syn_cookie_anatomy", chapter="01_04", needs={"live_capture", "namespaces"},
    invariant=check_cookie_anatomy, seconds=1,
    claim="a cookie is stateless: same SYN, same cookie; it adds the client ISN and the MSS index; "
          "the TSval carries the options; a cookie connection sends at most 1460-byte segments",
)
def syn_cookie_anatomy(run) -> dict:
    """Read what a SYN cookie encodes from the SYN-ACKs to crafted SYNs.

    Inside a namespace with tcp_syncookies=1, tcp_timestamps=2 (timestamps without the
    random per-host-pair offset, so the TSval's low bits can be read directly) and
    offloads off (real segment sizes): one normal connection first, then 17 spoofed
    SYNs fill listen(16)'s queue, then the crafted :data:`PROBES`, then a real client
    that can only get in through a cookie (both connections carry 64 KB server → client),
    and last a spoofed SYN without timestamps whose connection is completed by a spoofed
    ACK alone (:func:`complete_with_ack_only`).
    """
    from ..kernel import nstat_delta, tcp_info
    from ..netns import Namespace

    sysctls = {"net.ipv4.tcp_syncookies": 1, "net.ipv4.tcp_max_syn_backlog": MAX_SYN_BACKLOG,
               "net.ipv4.tcp_timestamps": 2}
    with Namespace(sysctls=sysctls, offloads=False) as ns:
        setup_namespace(ns)
        machine = rules.Machine.read(ns)          # before any traffic: the rules' inputs
        lst = ns.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(16)
        port = lst.getsockname()[1]
        conns = {}
        with run.capture([port], ns=ns):
            def connect_and_talk(kind):
                c = ns.socket()
                c.settimeout(2)
                c.connect(("127.0.0.1", port))
                a, _ = lst.accept()
                a.settimeout(2)
                payload = b"x" * 65536
                a.sendall(payload)
                got = 0
                while got < len(payload):
                    got += len(c.recv(1 << 20))
                si, ci = tcp_info(a), tcp_info(c)
                conns[kind] = {
                    "client_port": c.getsockname()[1],
                    "server_snd_mss": si.snd_mss, "server_maxseg": a.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG),
                    "server_wscale": si.snd_wscale, "server_sack": bool(si.opt_sack),
                    "server_timestamps": bool(si.opt_timestamps), "client_snd_mss": ci.snd_mss,
                    "client_syn_mss": None,
                }
                return c, a

            keep = [connect_and_talk("normal")]
            with nstat_delta(ns) as delta:
                send_flood(ns, port, 17, seed=1)
                probes = []
                for label, src, sport, off, opts in PROBES:
                    probes.append({"label": label, "src": src, "sport": sport, "seq": _S + off,
                                   "options": opts, "mss": _opt_of(opts, "MSS"),
                                   "wscale": _opt_of(opts, "WScale"),
                                   "sack": any(k == "SAckOK" for k, _ in opts)})
                send_crafted(ns, port, probes)
                time.sleep(0.01)
                syn_recv = syn_recv_count(ns, port)
                keep.append(connect_and_talk("cookie"))
                time.sleep(0.02)
                ack_only = complete_with_ack_only(ns, lst, port)
                keep.append((ack_only.pop("sock"),))
            for pair in keep:
                for s in pair:
                    s.close()
            time.sleep(0.02)
    from ..dissect import segments

    lo_mss = rules.tcp_mss_default(machine.lo_mtu)
    data = {"port": port, "lo_mss": lo_mss, "machine": machine.as_dict(), "syn_recv_before_probes": syn_recv,
            "probes": [{k: v for k, v in p.items() if k != "options"}
                       | {"options": [[k, v.hex() if isinstance(v, bytes) else v] for k, v in p["options"]]}
                       for p in probes],
            "normal": conns["normal"], "cookie": conns["cookie"], "ack_only": ack_only,
            "counters": _pick(delta.delta)}
    if run.pcap is not None:
        df = segments(run.pcap)
        syn = df[(df["flags"] == "SYN") & (df["sport"] == conns["cookie"]["client_port"])]
        data["cookie"]["client_syn_mss"] = int(syn["mss"].iloc[0])
        syn = df[(df["flags"] == "SYN") & (df["sport"] == conns["normal"]["client_port"])]
        data["normal"]["client_syn_mss"] = int(syn["mss"].iloc[0])
    return data


# ======================================================================================
# experiment 3: how long a half-open entry lives
# ======================================================================================
#: How long :func:`half_open_lifetime` watches, and how often it reads the queue.
LIFETIME_WATCH = 9.0
LIFETIME_STEP = 0.1
#: The two listeners of :func:`half_open_lifetime`: about 17 unanswered entries each (a full
#: listen(16) queue holds 17 with the 2025 fix, 16 before), one
#: in a full listen(16) queue (over half full), one in a listen(1024) queue (not).
LIFETIME_BACKLOGS = (16, 1024)
LIFETIME_FLOODS = {16: 200, 1024: 17}


def synack_times(df, port: int) -> list[list[float]]:
    """For each spoofed source the listener on *port* answered: its SYN-ACKs' times (s after
    that source's SYN), in order: the first one, then every retransmission."""
    syns = df[(df["dport"] == port) & (df["flags"] == "SYN") & df["src"].str.startswith("10.99.")]
    first = {(r["src"], r["sport"]): r["time"] for _, r in syns.iterrows()}
    sa = df[(df["sport"] == port) & (df["flags"] == "SYN+ACK") & df["dst"].str.startswith("10.99.")]
    out: dict[tuple, list[float]] = {}
    for _, r in sa.iterrows():
        key = (r["dst"], r["dport"])
        if key in first:
            out.setdefault(key, []).append(round(float(r["time"] - first[key]), 3))
    return [sorted(v) for _, v in sorted(out.items())]


def resent_at(result: Result, backlog: int) -> list[float]:
    """Median times (s after the SYN) of the 1st, 2nd, … SYN-ACK retransmission of a listener's entries."""
    import statistics
    L = next(x for x in result.data["listeners"] if x["backlog"] == backlog)
    n = max((len(t) for t in L["synack_times"]), default=0)
    return [statistics.median([t[i] for t in L["synack_times"] if len(t) > i]) for i in range(1, n)]


def lifetime_table(result: Result):
    """One row per listener: its entries, how many SYN-ACKs each got, when they were resent,
    how many the kernel dropped and when."""
    import pandas as pd

    rows = []
    for L in result.data["listeners"]:
        times = L["synack_times"]
        n = max((len(t) for t in times), default=0)
        resent = [float(pd.Series([t[i] for t in times if len(t) > i]).median()) for i in range(1, n)]
        counts = pd.Series([len(t) for t in times]).value_counts().sort_index()
        rows.append({"listen()": L["backlog"], "spoofed SYNs": L["flood"],
                     "entries after the flood": L["entries_start"],
                     "entries by SYN-ACKs received": ", ".join(f"{c} got {k}" for k, c in counts.items()),
                     "resent at (s, median)": ", ".join(f"{x:.2f}" for x in resent),
                     "entries dropped": L["entries_start"] - L["entries_end"],
                     "dropped at (s)": "—" if L["dropped_at"] is None else f"{L['dropped_at']:.1f}",
                     f"entries left at {result.data['watch_seconds']:.1f} s": L["entries_end"]})
    return pd.DataFrame(rows)


def lifetime_plot(result: Result):
    """One row per listener: its SYN-RECV entries against time (line) and the SYN-ACKs it
    resent (bars: how many entries were resent a SYN-ACK at that moment)."""
    from collections import Counter

    import matplotlib.pyplot as plt

    from ..plots import PALETTE, use_style

    use_style()
    d = result.data
    fig, axes = plt.subplots(len(d["listeners"]), 1, figsize=(9.0, 4.6), sharex=True, sharey=True)
    t = [s["t"] for s in d["samples"]]
    for ax, L in zip(axes, d["listeners"]):
        y = [s["syn_recv"][str(L["backlog"])] for s in d["samples"]]
        rounds = Counter(round(x, 1) for tt in L["synack_times"] for x in tt[1:])
        ax.bar(list(rounds), list(rounds.values()), width=0.12, color=PALETTE[1], alpha=0.8,
               label="SYN-ACKs resent (entries)")
        for x, n in sorted(rounds.items()):
            ax.annotate(f"{n}", (x, n), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=8)
        ax.step(t, y, where="post", color=PALETTE[0], lw=2.2, label="SYN-RECV entries")
        ax.set_title(f"listen({L['backlog']}): {L['flood']} spoofed SYNs, {L['entries_start']} entries kept",
                     fontsize=10, loc="left")
        ax.set_ylabel("entries")
        ax.set_ylim(0, 21)
    axes[-1].set_xlabel("seconds after the flood")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle("Unanswered half-open entries, cookies off", fontsize=11)
    fig.tight_layout()
    return fig


def synacks_by(m: "rules.Machine", seconds: float, retries: int | None = None) -> int:
    """How many SYN-ACKs (the first + retransmissions) an unanswered entry has had *seconds*
    after its SYN, by rules.synack_retry_schedule on *m* (*retries*: a lowered limit)."""
    gaps = rules.synack_retry_schedule(m, retries).value
    t, n = 0.0, 1
    for g in gaps:
        t += g
        if t > seconds:
            break
        n += 1
    return n


def check_half_open_lifetime(result: Result, *, quiet: bool = True) -> None:
    """The lifetime claims on one run (live or replayed), against reqsk_timer_handler() and
    syn_ack_recalc() evaluated on the namespace's machine."""
    d = result.data
    m = result.machine_snapshot()
    by = {L["backlog"]: L for L in d["listeners"]}
    small, big = by[LIFETIME_BACKLOGS[0]], by[LIFETIME_BACKLOGS[1]]
    watch = d["watch_seconds"]
    for L in (small, big):
        want = min(L["flood"], rules.half_open_cap(m, L["backlog"], 0).value)
        assert L["entries_start"] == want, f"listen({L['backlog']}) holds {want} entries after its flood"
        assert len(L["synack_times"]) == want, "each entry's SYN-ACKs are in the capture"
        for t in L["synack_times"]:
            assert t[0] < 0.1, "the first SYN-ACK answers the SYN at once"
            if len(t) > 1:
                rules.synack_retry_band(m, len(t) - 1).check([b - a for a, b in zip(t, t[1:])], quiet=True,
                                                            reference=result.reference())
    # the flooded queue: at the third firing no entry is young, so the limit drops to 2
    lowered = rules.reqsk_timer_handler(m, small["entries_start"], 0, small["backlog"])
    left = max(8, min(small["backlog"], m.sysctls.get("somaxconn") or 4096)) // 2
    lens = sorted(len(t) for t in small["synack_times"])
    dropped = small["entries_start"] - left
    lowered.check(lens[0] - 1, "SYN-ACK retransmissions of the flooded listen(16) entries dropped first",
                  reference=result.reference(), quiet=quiet)
    assert lens[:dropped] == [lowered.value + 1] * dropped, \
        f"queue over half full: {dropped} entries dropped after {lowered.value} retransmissions ({lens})"
    assert small["entries_end"] == left, \
        f"the kernel drops old entries only until the queue is half full ({left}), found {small['entries_end']}"
    assert small["dropped_at"] is not None
    rules.assert_rule(result, rules.syn_ack_recalc, small["dropped_at"], lowered.value, quiet=quiet,
                      what="when the flooded listen(16) queue first shrank (s after the flood)")
    # the quiet queue: the full tcp_synack_retries, so by the end every entry has had
    # as many SYN-ACKs as the schedule allows in the watch, and none was dropped
    quiet_retries = rules.reqsk_timer_handler(m, big["entries_start"], 0, big["backlog"]).value
    want = synacks_by(m, watch - 0.3, quiet_retries)
    assert {len(t) for t in big["synack_times"]} == {want}, \
        f"an uncrowded queue: {want} SYN-ACKs per entry by {watch:.1f} s ({sorted({len(t) for t in big['synack_times']})})"
    assert big["entries_end"] == big["entries_start"] and big["dropped_at"] is None, \
        "and every entry is still there at the end"
    if "legit_after" in d:
        ok = sum(x["connected"] for x in d["legit_after"])
        rules.assert_rule(result, rules.acceptq_and_cookies, ok, small["backlog"], len(d["legit_after"]),
                          quiet=quiet, what="clients that connected to listen(16) after its old entries were dropped")


@experiment(
    "half_open_lifetime", chapter="01_04", needs={"live_capture", "namespaces"},
    invariant=check_half_open_lifetime, seconds=LIFETIME_WATCH + 0.5,
    claim="cookies off, unanswered half-open entries of a queue over half full are dropped after "
          "2 SYN-ACK retransmissions (about 7 s) until the queue is half full, and new clients get in "
          "again; in an uncrowded queue all are still there at 9 s",
)
def half_open_lifetime(run) -> dict:
    """Watch two listeners' unanswered half-open entries for :data:`LIFETIME_WATCH` seconds.

    One namespace, tcp_syncookies = 0: a ``listen(16)`` listener gets 200 spoofed SYNs (it
    keeps its full queue, 17 or 16 by kernel, over half full) and a ``listen(1024)`` listener
    gets 17 (in a queue far from half full). Nobody answers their SYN-ACKs. The
    SYN-RECV counts are read every :data:`LIFETIME_STEP` s; the capture holds every SYN-ACK
    and its retransmissions. Reports progress (the wait is the phenomenon: about 9 s).
    """
    from ..netns import Namespace

    sysctls = {"net.ipv4.tcp_syncookies": 0, "net.ipv4.tcp_max_syn_backlog": MAX_SYN_BACKLOG}
    progress.report(0.0, "creating the namespace")
    with Namespace(sysctls=sysctls) as ns:
        setup_namespace(ns)
        machine = rules.Machine.read(ns)          # before any traffic: the rules' inputs
        retries = machine.sysctls.get("tcp_synack_retries")
        socks, ports = [], {}
        try:
            for b in LIFETIME_BACKLOGS:
                lst = ns.socket()
                socks.append(lst)
                lst.bind(("127.0.0.1", 0))
                lst.listen(b)
                ports[b] = lst.getsockname()[1]
            packets = {b: build_syns(ports[b], LIFETIME_FLOODS[b], seed=10 + i)
                       for i, b in enumerate(LIFETIME_BACKLOGS)}

            def read() -> dict[str, int]:
                tcp = ns.read_proc("net/tcp")
                return {str(b): _count_syn_recv(tcp, ports[b]) for b in LIFETIME_BACKLOGS}

            samples = []
            with run.capture(list(ports.values()), ns=ns):
                t0 = time.monotonic()
                for b in LIFETIME_BACKLOGS:
                    send_flood(ns, ports[b], LIFETIME_FLOODS[b], packets=packets[b], seconds=1.0)
                start = read()
                deadline = t0 + LIFETIME_WATCH
                for i in range(int(LIFETIME_WATCH / LIFETIME_STEP) + 5):     # bounded
                    now = time.monotonic()
                    samples.append({"t": round(now - t0, 3), "syn_recv": read()})
                    if now >= deadline:
                        break
                    progress.report((now - t0) / LIFETIME_WATCH,
                                    f"watching the half-open entries: {now - t0:.1f} of {LIFETIME_WATCH:g} s")
                    time.sleep(min(LIFETIME_STEP, max(0.0, deadline - time.monotonic())))
                # the flood is over and old entries are gone: do new clients get in again?
                legit_after = legit_connects(ns, ports[LIFETIME_BACKLOGS[0]])
        finally:
            for s in socks:
                s.close()
    progress.report(1.0, "done")
    from ..dissect import segments

    df = segments(run.pcap) if run.pcap is not None else None
    listeners = []
    for b in LIFETIME_BACKLOGS:
        ys = [s["syn_recv"][str(b)] for s in samples]
        dropped = next((s["t"] for s in samples if s["syn_recv"][str(b)] < start[str(b)]), None)
        listeners.append({"backlog": b, "port": ports[b], "flood": LIFETIME_FLOODS[b],
                          "entries_start": start[str(b)], "entries_end": ys[-1], "dropped_at": dropped,
                          "synack_times": synack_times(df, ports[b]) if df is not None else []})
    return {"synack_retries": retries, "watch_seconds": samples[-1]["t"], "step": LIFETIME_STEP,
            "samples": samples, "listeners": listeners, "legit_after": legit_after,
            "machine": machine.as_dict()}
