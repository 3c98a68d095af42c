"""Chapter 02_03: Nagle's algorithm meets delayed ACKs.

A client sends each request as two writes (an 8-byte header, then the body) and waits
for a short reply; the server replies once it has read both. On Linux the second write
waits: Nagle (Minshall's variant, ``tcp_nagle_check``/``tcp_minshall_check`` in
net/ipv4/tcp_output.c) holds a small segment while an earlier *small* segment is
unacknowledged, and the server delays that ACK (``TCP_ATO_MIN`` = HZ/25 = 40 ms, plus
about one 4 ms tick at HZ=250), because after the first exchange the connection looks
interactive ("pingpong" mode) and an ACK is expected to ride on the server's reply. The
reply, in turn, waits for the body. When the delayed-ACK timer fires, the kernel leaves
pingpong mode (``tcp_delack_timer_handler`` in net/ipv4/tcp_timer.c), so the body is
acknowledged at once, in a pure ACK of its own; the quick reply makes the connection
interactive again (``tcp_event_data_sent``) and the next request stalls the same way.

Two experiments share the request loop (:func:`request_loop`):

- :func:`nagle`: latencies of many requests with the panel's settings. Plain sockets,
  no capture: it runs live for everyone.
- :func:`nagle_trace`: a handful of requests captured with tcpdump, one recording per
  setting in the corpus, to show *which* packet waits and for what.

The client's MSS is pinned to 1448 bytes (TCP_MAXSEG 1460 before connect, as on
Ethernet with timestamps), so that "a body larger than one MSS" means the same thing
here as on a real network (on lo the MSS would otherwise be 65483).
"""
from __future__ import annotations

import socket
import statistics
import struct
import time

from ..errors import CourseError
from ..params import Param
from ..servers import Server
from .base import Result, experiment

HEADER = struct.Struct("!Q")        # 8 bytes: the body length
REPLY = b"ok"
CLIENT_MAXSEG = 1460                 # -> 1448 payload bytes per segment with timestamps
PATTERNS = ("two writes", "one write", "sendmsg", "MSS, then the rest")
QUICKACK = ("off", "once", "every recv")


def stall_ms(m=None) -> float:
    """A request slower than this waited for a timer: half the delayed-ACK floor
    (rules.tcp_delack_min: HZ/25 jiffies) of the machine *m* (default: this one)."""
    from .. import rules
    hz = m.hz if m is not None and m.hz else rules.kernel_hz()[0]
    return rules.tcp_delack_min(rules.Machine(hz=hz)).value / 2


def expect_stall(nodelay: bool, cork: bool, quickack: str, pattern: str, body: int, mss: int,
                 minshall: bool = True) -> bool:
    """Should requests after the first wait for the delayed ACK? (The chapter's rule:
    tcp_nagle_check() in net/ipv4/tcp_output.c.) A small segment waits while an earlier
    *small* segment is unacknowledged (Minshall's variant, Linux: ``minshall=True``), or
    while *anything* is unacknowledged (classic RFC 896 Nagle, ``minshall=False``). The
    "MSS, then the rest" pattern tells them apart: its first segment is full-sized."""
    if nodelay or cork or quickack == "every recv" or pattern in ("one write", "sendmsg"):
        return False
    if pattern == "MSS, then the rest":
        rest = HEADER.size + body - mss
        return 0 < rest < mss and not minshall
    return body < mss


def _server_handler(quickack: str, record: dict):
    """Read header + body, reply; TCP_QUICKACK never, once after accept, or after every recv."""
    def handler(conn: socket.socket, addr) -> None:
        record["conn"] = conn
        if quickack == "once":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

        def read_exactly(n: int) -> bytes | None:
            buf = bytearray()
            while len(buf) < n:
                data = conn.recv(min(65536, n - len(buf)))
                if not data:
                    return None
                if quickack == "every recv":
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                buf += data
            return bytes(buf)

        while True:
            head = read_exactly(HEADER.size)
            if head is None:
                return
            (n,) = HEADER.unpack(head)
            if n > 1 << 20 or read_exactly(n) is None:
                return
            ato = _ato(conn)
            conn.sendall(REPLY)
            record.setdefault("ato_us", []).append(ato)
    return handler


def _ato(sock: socket.socket) -> int | None:
    from ..kernel import tcp_info
    try:
        return tcp_info(sock)["ato"]
    except (OSError, CourseError):
        return None


def request_loop(*, nodelay: bool = False, cork: bool = False, quickack: str = "off",
                 pattern: str = "two writes", body: int = 100, requests: int = 20,
                 capture=None, ns=None, deadline_s: float = 20.0) -> dict:
    """Run *requests* header+body requests on one connection; return latencies and kernel views.

    *capture*: optional callable ``capture(ports, ns=...)`` returning a context manager (the
    experiment's ``run.capture``). *ns*: a course namespace to run in (its nstat counters
    are then the experiment's own). Bounded: at most *requests* requests and *deadline_s*.
    """
    from ..kernel import nstat_delta, tcp_info

    if pattern not in PATTERNS:
        raise CourseError(f"pattern={pattern!r} is not a write pattern.", f"use one of {PATTERNS}.")
    if quickack not in QUICKACK:
        raise CourseError(f"quickack={quickack!r} is not a TCP_QUICKACK mode.", f"use one of {QUICKACK}.")
    record: dict = {}
    lat_ms: list[float] = []
    payload = b"x" * body
    head = HEADER.pack(body)
    with Server(_server_handler(quickack, record), name="nagle-server", ns=ns) as srv:
        ctx = (capture([srv.port], ns=ns) if ns is not None else capture([srv.port])) if capture else _Null()
        with ctx, nstat_delta(ns) as counters:
            c = ns.socket() if ns is not None else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, CLIENT_MAXSEG)
                c.settimeout(5.0)
                c.connect(("127.0.0.1", srv.port))
                if nodelay:
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                mss = tcp_info(c)["snd_mss"]
                stop_at = time.monotonic() + deadline_s
                for i in range(requests):
                    if time.monotonic() > stop_at:
                        break
                    t0 = time.perf_counter()
                    if cork:
                        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                    if pattern == "two writes":
                        c.sendall(head)
                        c.sendall(payload)
                    elif pattern == "one write":
                        c.sendall(head + payload)
                    elif pattern == "MSS, then the rest":
                        whole = head + payload
                        c.sendall(whole[:mss])
                        c.sendall(whole[mss:])
                    else:
                        sent = c.sendmsg([head, payload])
                        if sent < len(head) + len(payload):
                            c.sendall((head + payload)[sent:])
                    if cork:
                        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)  # uncork: flush now
                    got = b""
                    while len(got) < len(REPLY):
                        data = c.recv(len(REPLY) - len(got))
                        if not data:
                            raise CourseError("the server closed the connection mid-request.",
                                              "re-run; if it repeats, report it with the panel's settings.")
                        got += data
                    lat_ms.append((time.perf_counter() - t0) * 1e3)
                client_info = tcp_info(c).as_dict()
                server_conn = record.get("conn")
                server_info = tcp_info(server_conn).as_dict() if server_conn is not None else {}
            finally:
                c.close()
            time.sleep(0.01 if capture else 0)   # let the FIN exchange into the capture
    rest = lat_ms[1:] or lat_ms
    return {
        "params": {"nodelay": nodelay, "cork": cork, "quickack": quickack, "pattern": pattern,
                   "body": body},
        "server_port": srv.port, "requests": len(lat_ms), "latency_ms": lat_ms,
        "first_ms": lat_ms[0], "median_ms": statistics.median(rest),
        "stalled": sum(x > stall_ms() for x in lat_ms), "stall_ms": stall_ms(),
        "mss": mss, "expect_stall": expect_stall(nodelay, cork, quickack, pattern, body, mss),
        "server_ato_us": record.get("ato_us", []),
        "client_tcp_info": {k: client_info.get(k) for k in ("snd_mss", "rcv_mss", "rtt", "ato",
                                                             "segs_out", "data_segs_out")},
        "server_tcp_info": {k: server_info.get(k) for k in ("ato", "rcv_mss", "segs_out",
                                                             "data_segs_out")},
        "delayed_acks": counters["TcpExtDelayedACKs"],   # host-wide (>= our own), or the namespace's own
        "counters_scope": "namespace" if ns is not None else "host",
    }


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------------- latency

def check_nagle(result: Result) -> None:
    """The 02_03 claims on one latency run, each from the rules on the run's machine."""
    from .. import rules
    d = result.data
    m = result.machine_snapshot()
    band = rules.delack_band(m)
    assert d["requests"] >= 5, "at least five requests are needed to judge"
    later = d["latency_ms"][1:]
    waited = sum(x > stall_ms(m) for x in later)      # the first request is judged on its own
    if d["expect_stall"]:
        assert d["first_ms"] < band.low, \
            f"the first request must not wait for the delayed ACK (DELACK_BAND from {band.low:g} ms), " \
            f"took {d['first_ms']:.1f} ms"
        rules.assert_rule(result, rules.delack_band, d["median_ms"], what="median of the requests after the first")
        rules.assert_rule(result, rules.delack_share, rules.share_in_band(band, later),
                          what="share of the requests after the first in DELACK_BAND")
        if d.get("counters_scope") == "namespace":
            assert d["delayed_acks"] == waited, \
                f"one delayed ACK (the namespace's TcpExtDelayedACKs {d['delayed_acks']}) per stall ({waited})"
        else:
            assert d["delayed_acks"] >= waited, \
                "the host's TcpExtDelayedACKs rose at least once per stall (other traffic can only add)"
    else:
        assert d["median_ms"] < stall_ms(m), \
            f"with this setting nothing waits for the delayed-ACK timer: median {d['median_ms']:.2f} ms, " \
            f"half the floor is {stall_ms(m):g} ms"
        if d.get("counters_scope") == "namespace":
            assert d["delayed_acks"] <= waited, \
                f"a delayed ACK ({d['delayed_acks']} in the namespace) only where a request waited ({waited})"


@experiment(
    "nagle", chapter="02_03", seconds=1.0,
    params=[
        Param("nodelay", "TCP_NODELAY (client)", False, choices=(False, True),
              doc="turn Nagle's algorithm off on the client"),
        Param("cork", "TCP_CORK (client)", False, choices=(False, True),
              doc="cork before the writes, uncork after: one segment per request"),
        Param("quickack", "TCP_QUICKACK (server)", "off", choices=QUICKACK,
              doc="set TCP_QUICKACK on the server: never, once after accept, or after every recv"),
        Param("pattern", "write pattern", "two writes", choices=PATTERNS,
              doc="header and body as two send() calls, one send() of both, or one sendmsg() of two buffers"),
        Param("body", "body size", 100, choices=(100, 1000, 2000), minimum=1, maximum=65536, unit="bytes",
              doc="request body; the MSS here is 1448 bytes"),
        Param("requests", "requests", 15, minimum=5, maximum=200,
              doc="requests on one connection"),
    ],
    invariant=check_nagle,
    claim="header+body writes stall for the delayed ACK (DELACK_BAND) on every request after the first; NODELAY, CORK, one write, "
          "QUICKACK every recv or a body >= 1 MSS remove the stall",
)
def nagle(run, nodelay: bool = False, cork: bool = False, quickack: str = "off",
          pattern: str = "two writes", body: int = 100, requests: int = 15) -> dict:
    """Time *requests* header+body requests on one loopback connection with these settings.

    Returns every request's latency (ms), the first and the median of the rest, how many
    stalled (> 20 ms), the client's MSS, TCP_INFO of both ends (``ato``: the server's
    delayed-ACK timeout) and the host's TcpExtDelayedACKs delta. No capture: live for all.
    """
    from .. import progress
    progress.report(0.05, "requests running")
    out = request_loop(nodelay=nodelay, cork=cork, quickack=quickack, pattern=pattern, body=body,
                       requests=requests)
    progress.report(1.0, "done")
    return out


SETTINGS = {
    # name: (kwargs of request_loop)
    "default": {},
    "nodelay": {"nodelay": True},
    "cork": {"cork": True},
    "one_write": {"pattern": "one write"},
    "sendmsg": {"pattern": "sendmsg"},
    "quickack_once": {"quickack": "once"},
    "quickack_every_recv": {"quickack": "every recv"},
    "body_2000": {"body": 2000},
    "mss_then_rest": {"pattern": "MSS, then the rest", "body": 1540},
}


def compare(settings=tuple(SETTINGS), requests: int = 15) -> dict[str, Result]:
    """Run :func:`nagle` once per named setting (see :data:`SETTINGS`)."""
    return {name: nagle(requests=requests, **SETTINGS[name]) for name in settings}


def stall_ticks(results: dict[str, Result]):
    """Where the stalls of each run ended, counted in kernel ticks after the delayed-ACK
    floor (rules.tcp_delack_min on the run's machine): one row per setting, one column
    per whole number of ticks (the request's latency rounded to the nearest tick)."""
    import pandas as pd
    from .. import rules
    rows = {}
    for name, r in results.items():
        m = r.machine_snapshot()
        floor = rules.tcp_delack_min(m)
        tick = floor.inputs["tick_ms"]
        later = [x for x in r.data["latency_ms"][1:] if x > stall_ms(m)]
        counts: dict[str, int] = {}
        for x in later:
            k = max(0, round((x - floor.value) / tick))
            counts[f"+{k} tick{'s' if k != 1 else ''}"] = counts.get(f"+{k} tick{'s' if k != 1 else ''}", 0) + 1
        rows[name] = counts
    t = pd.DataFrame(rows).T.fillna(0).astype(int)
    return t[sorted(t.columns, key=lambda c: int(c[1:].split()[0]))]


def summary(results: dict[str, Result]):
    """One row per setting: first request, median of the rest, stalls, ratio to the default."""
    import pandas as pd
    base = results.get("default")
    rows = []
    for name, r in results.items():
        d = r.data
        rows.append({"setting": name, "first (ms)": round(d["first_ms"], 3),
                     "median (ms)": round(d["median_ms"], 3),
                     "stalled": f"{d['stalled']}/{d['requests']}",
                     "default ÷ this": round(base.data["median_ms"] / d["median_ms"], 1) if base else None})
    return pd.DataFrame(rows).set_index("setting")


def render(result: Result) -> list:
    """What the 02_03 panel shows: banner, numbers, the latency histogram."""
    from ..plots import latency_hist
    d = result.data
    p = d["params"]
    label = (f"nodelay={p['nodelay']}, cork={p['cork']}, quickack={p['quickack']}, "
             f"{p['pattern']}, body {p['body']} B")
    note = (f"first request {d['first_ms']:.3f} ms; median of the rest {d['median_ms']:.3f} ms; "
            f"{d['stalled']} of {d['requests']} waited > {d.get('stall_ms', stall_ms()):g} ms; MSS {d['mss']} B; "
            f"server TCP_INFO ato {d['server_tcp_info'].get('ato')} µs; "
            f"TcpExtDelayedACKs +{d['delayed_acks']} ({d.get('counters_scope', 'host')}-wide)")
    fig = latency_hist({label: d["latency_ms"]}, unit="ms", title="Request latency")
    return [result, note, fig]


# ---------------------------------------------------------------------------- capture

TRACE_SETTINGS = ("default", "nodelay", "cork", "one_write", "quickack_once",
                  "quickack_every_recv", "body_2000")


def request_timeline(result: Result):
    """One row per request from the capture: when the server's first ACK of it, the first
    and the last body segment and the reply were seen (ms since the header), how many
    segments the request took and how many pure ACKs (no data) the server sent for it."""
    import pandas as pd
    df = result.segments()
    port = result.data["server_port"]
    df = df[df["stream"] == df["stream"].min()]
    up = df[(df["dport"] == port) & (df["len"] > 0)]
    down = df[df["sport"] == port]
    rows = []
    # a request starts with a segment whose payload begins with the header: find them by
    # sequence number (request k starts at 1 + k * (8 + body))
    size = HEADER.size + result.data["params"]["body"]
    nan = float("nan")
    for k in range(result.data["requests"]):
        start = 1 + k * size
        end = start + size
        first = up[up["seq"] == start]
        if first.empty:
            continue
        h = first.iloc[0]
        later_up = up[(up["seq"] > start) & (up["seq"] < end)]
        reply = down[(down["len"] > 0) & (down["ack"] >= end)]
        t_reply = reply.iloc[0]["t"] if len(reply) else nan
        pure = down[(down["len"] == 0) & (down["ack"] > start) & (down["ack"] <= end) & (down["t"] >= h["t"])
                    & ~(down["t"] > t_reply)]
        acks = pure[pure["ack"] < end]
        t_rest = later_up.iloc[0]["t"] if len(later_up) else nan
        t_last = later_up.iloc[-1]["t"] if len(later_up) else nan
        t_ack = acks.iloc[0]["t"] if len(acks) else nan
        rows.append({"request": k + 1, "segments": 1 + len(later_up),
                     "first segment bytes": int(h["len"]),
                     "server ACK after (ms)": (t_ack - h["t"]) * 1e3,
                     "body after (ms)": (t_rest - h["t"]) * 1e3,
                     "body ends after (ms)": (t_last - h["t"]) * 1e3,
                     "reply after (ms)": (t_reply - h["t"]) * 1e3,
                     "server pure ACKs": len(pure)})
    return pd.DataFrame(rows).set_index("request")


def check_nagle_trace(result: Result) -> None:
    """The 02_03 claims on a capture: who waits, and for what (rules on the run's machine)."""
    from .. import rules
    check_nagle(result)
    m = result.machine_snapshot()
    band = rules.delack_band(m)
    quick = stall_ms(m) / 4          # "at once": well under the delayed-ACK floor
    tl = request_timeline(result)
    assert len(tl) == result.data["requests"], "every request must be in the capture"
    later = tl.iloc[1:]
    p = result.data["params"]
    if result.data["expect_stall"]:
        assert (later["segments"] == 2).all(), "header and body travel as two segments"
        assert (later["first segment bytes"] == HEADER.size).all(), "the header goes out alone, at once"
        ack = later["server ACK after (ms)"]
        rest = later["body after (ms)"]
        rules.assert_rule(result, rules.delack_share, rules.share_in_band(band, ack), quiet=True,
                          what="share of the server's ACKs of the header in DELACK_BAND")
        assert ((rest - ack).abs() < quick).mean() >= rules.DELACK_SHARE, "the body leaves as soon as that ACK arrives"
        assert (later["reply after (ms)"] >= rest).all(), "the reply follows the body"
        assert (later["server pure ACKs"] >= 2).mean() >= rules.DELACK_SHARE, \
            "after the timer's ACK the body gets a pure ACK of its own, before the reply"
    else:
        assert (later["reply after (ms)"] < band.low).all(), "no request waits for the delayed-ACK timer"
        if p["body"] < result.data["mss"] and p["pattern"] in ("one write", "sendmsg") or p["cork"]:
            assert (later["segments"] == 1).all(), "one write (or cork) makes one segment"
        if p["body"] > result.data["mss"] and p["pattern"] == "two writes" and not (p["nodelay"] or p["cork"]):
            assert (later["segments"] == 3).all(), "header, one full segment, the tail"
            assert (later["body after (ms)"] <= later["server ACK after (ms)"]).all(), \
                "the full segment leaves before any ACK"
            assert (later["body ends after (ms)"] >= later["server ACK after (ms)"]).all(), \
                "the tail of the body leaves only after the server's ACK"
            assert (later["server ACK after (ms)"] < quick).all(), "the server ACKs more than one MSS at once"


@experiment(
    "nagle_trace", chapter="02_03", needs={"live_capture", "namespaces"},
    params=[Param("setting", "setting", "default", choices=TRACE_SETTINGS,
                  doc="which fix (if any) the five captured requests use")],
    invariant=check_nagle_trace,
    claim="the header goes out at once, the body waits for the server's ACK, which comes after the "
          "delayed-ACK floor (DELACK_BAND); the namespace counts one delayed ACK per stall",
)
def nagle_trace(run, setting: str = "default") -> dict:
    """Capture five header+body requests with one named setting (see :data:`SETTINGS`),
    inside a fresh namespace, so that its TcpExtDelayedACKs counts this connection only."""
    from .. import rules
    from ..netns import Namespace
    with Namespace(name="nagle") as ns:
        snapshot = rules.Machine.read(ns).as_dict()
        out = request_loop(requests=5, capture=run.capture, ns=ns, **SETTINGS[setting])
    out["machine"] = snapshot
    return out


def stalled_request(result: Result) -> int:
    """A typical stalled request, for a ladder: among the stalled requests other than the
    last one (whose segments run into the connection's close), the one with the median
    reply time. Without stalls, request 2 (or the only one)."""
    tl = request_timeline(result)
    cand = tl.iloc[1:-1] if len(tl) > 2 else tl
    stalled = cand[cand["reply after (ms)"] > stall_ms(result.machine_snapshot())]
    if stalled.empty:
        return int(cand.index[0])
    order = stalled["reply after (ms)"].sort_values()
    return int(order.index[(len(order) - 1) // 2])


def request_segments(result: Result, request: int):
    """The capture rows of one request (header to reply, plus the ACKs between)."""
    df = result.segments()
    df = df[df["stream"] == df["stream"].min()]
    port = result.data["server_port"]
    size = HEADER.size + result.data["params"]["body"]
    start = 1 + (request - 1) * size
    t0 = df[(df["dport"] == port) & (df["seq"] == start) & (df["len"] > 0)]["t"].iloc[0]
    nxt = df[(df["dport"] == port) & (df["seq"] == start + size) & (df["len"] > 0)]
    t1 = nxt["t"].iloc[0] if len(nxt) else df["t"].max() + 1
    return df[(df["t"] >= t0) & (df["t"] < t1)]


def latency_figure(results: dict[str, Result], title: str | None = None):
    """Latency histogram of several runs, stacked so that settings with the same latency
    all show; medians are given in the legend only (their labels would overlap)."""
    from ..plots import latency_hist
    fig = latency_hist({name: r.data["latency_ms"] for name, r in results.items()}, stacked=True,
                       title=title or "Request latency per setting (log scale)")
    for ax in fig.axes:
        for a in ax.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == "median"):
            if a is not ax:
                a.remove()
    return fig


def render_trace(result: Result) -> list:
    from ..plots import ladder
    k = stalled_request(result)
    seg = request_segments(result, k)
    return [result, request_timeline(result).round(3),
            ladder(seg, client=f"127.0.0.1:{int(seg[seg['dport'] == result.data['server_port']]['sport'].iloc[0])}",
                   title=f"request {k} ({result.params['setting']})")]
