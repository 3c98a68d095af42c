"""Chapter 02_01: send and receive buffers, read from the kernel's own view.

Nothing here captures or needs privileges: plain loopback sockets, ``getsockopt``,
TCP_INFO and ``ss -tm``. Every experiment therefore runs live for every learner (no
corpus entries).

- :func:`buffer_sizes` -- what SO_SNDBUF / SO_RCVBUF read back after a setsockopt: the
  kernel doubles the value, clamps it to ``net.core.{w,r}mem_max`` (then doubles) and
  raises it to a minimum.
- :func:`write_returns` -- one ``send()`` to a reader that never reads returns at once
  with every byte, although most bytes have not been transmitted at all: ``send``
  means "copied into the send buffer".
- :func:`queue_capacity` -- a non-blocking writer writes until EAGAIN to a reader that
  never reads: how many bytes sit in the two kernel buffers (the writer's send queue and
  the reader's receive queue), as a function of both settings. The panel's experiment.
- :func:`rcvbuf_before_listen` -- SO_RCVBUF set on the listener before ``listen()``
  shapes the window scale of accepted connections; set after ``accept()`` it cannot. The
  trap: a small SO_RCVBUF before ``listen()`` gives scale 0, and the window the peer sees
  stays <= 65,535 bytes even after the buffer is enlarged on the accepted socket (tcp(7):
  buffer sizes "must be set prior to the listen(2) or connect(2) calls").
- :func:`capacity_sweep` / :func:`plot_sweep` -- bytes queued against each setting.
"""
from __future__ import annotations

import socket
import time

from .. import rules
from ..kernel import fill_until_full
from ..params import Param
from .base import Result, experiment

#: Where a writer stops: a bounded amount, whatever the buffers say.
WRITE_LIMIT = 64 << 20
CHUNK = 65536
SETTLE = 0.05     # s to wait for writability after an EAGAIN before asking whether the socket is full

BUFFER_CHOICES = (None, 4096, 16384, 65536, 262144, 1048576)

# ss -tm field names, decoded (man 8 ss, "skmem")
SKMEM = {
    "skmem_r": "r: bytes of the receive queue (rmem_alloc)",
    "skmem_rb": "rb: receive buffer limit (SO_RCVBUF as stored)",
    "skmem_t": "t: bytes handed to the device, not yet freed (wmem_alloc)",
    "skmem_tb": "tb: send buffer limit (SO_SNDBUF as stored)",
    "skmem_f": "f: memory reserved in advance (forward alloc)",
    "skmem_w": "w: bytes of the send queue incl. overhead (wmem_queued)",
    "skmem_o": "o: option memory",
    "skmem_bl": "bl: backlog (packets waiting for the socket lock)",
    "skmem_d": "d: packets dropped",
}


def _int(path: str) -> int | list[int]:
    from ..kernel import sysctl
    v = sysctl(path)
    return v if isinstance(v, int) else [int(x) for x in str(v).split()]


def readback(value: int, opt: int) -> int:
    """setsockopt(SOL_SOCKET, opt, value) on a fresh TCP socket, then getsockopt: what the kernel stored."""
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, opt, value)
        return s.getsockopt(socket.SOL_SOCKET, opt)
    finally:
        s.close()


# ----------------------------------------------------------------------------- doubling

def check_buffer_sizes(result: Result) -> None:
    d = result.data
    wmax, rmax = d["wmem_max"], d["rmem_max"]
    ref = result.reference()
    for row in d["rows"]:
        for which, kind, cap in (("SO_SNDBUF", "sndbuf", wmax), ("SO_RCVBUF", "rcvbuf", rmax)):
            # doubled, capped at 2 x {w,r}mem_max, raised to the kernel's SOCK_MIN_{SND,RCV}BUF
            rules.sock_setsockopt_buf(row["asked"], cap, which=which).check(
                row[kind], f"{which} {row['asked']} read back", reference=ref, quiet=True)
    # the floor measured on its own (setsockopt 1) is the kernel's compile-time constant,
    # 2048 + SKB_DATA_ALIGN(sizeof(struct sk_buff)) for receive and twice that for send
    for which, key, const in (("SO_SNDBUF", "min_sndbuf", rules.SOCK_MIN_SNDBUF),
                              ("SO_RCVBUF", "min_rcvbuf", rules.SOCK_MIN_RCVBUF)):
        assert d[key] == const, (f"{which} = 1 reads back {d[key]}, not SOCK_MIN = {const} "
                                 f"(2048 + sizeof(struct sk_buff) rounded to {rules.SKB_STRUCT}"
                                 f"{', × 2' if which == 'SO_SNDBUF' else ''}): another struct sk_buff size?")
    assert d["default_sndbuf"] == d["tcp_wmem"][1], "a new TCP socket starts with tcp_wmem[1] as send buffer"
    assert d["default_rcvbuf"] == d["tcp_rmem"][1], "a new TCP socket starts with tcp_rmem[1] as receive buffer"


@experiment("buffer_sizes", chapter="02_01", invariant=check_buffer_sizes,
            claim="SO_SNDBUF/SO_RCVBUF read back doubled, capped at 2 x {w,r}mem_max, raised to a minimum")
def buffer_sizes(run, values: tuple = (1, 1024, 2048, 4096, 65536, 1 << 20, 1 << 22, 1 << 24)) -> dict:
    """setsockopt each value as SO_SNDBUF and SO_RCVBUF on a fresh TCP socket; read it back."""
    rows = [{"asked": v, "sndbuf": readback(v, socket.SO_SNDBUF), "rcvbuf": readback(v, socket.SO_RCVBUF)}
            for v in values]
    s = socket.socket()
    try:
        default_snd = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        default_rcv = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        s.close()
    return {"rows": rows, "wmem_max": _int("net.core.wmem_max"), "rmem_max": _int("net.core.rmem_max"),
            "tcp_wmem": _int("net.ipv4.tcp_wmem"), "tcp_rmem": _int("net.ipv4.tcp_rmem"),
            # the smallest value each option reads back (setsockopt 1): the kernel's floor
            "min_sndbuf": readback(1, socket.SO_SNDBUF), "min_rcvbuf": readback(1, socket.SO_RCVBUF),
            "default_sndbuf": default_snd, "default_rcvbuf": default_rcv}


# ----------------------------------------------------------------------------- a pair

class _Pair:
    """A listener (SO_RCVBUF set before listen), a connected client (SO_SNDBUF before
    connect) and the accepted socket: the writer is the client, the reader the accepted
    socket, which never reads. Closed on exit, also on errors."""

    def __init__(self, sndbuf: int | None, rcvbuf: int | None):
        self.sndbuf, self.rcvbuf = sndbuf, rcvbuf
        self.socks: list[socket.socket] = []

    def __enter__(self):
        try:
            lst = socket.socket()
            self.socks.append(lst)
            if self.rcvbuf is not None:
                lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            lst.bind(("127.0.0.1", 0))
            lst.listen(1)
            self.port = lst.getsockname()[1]
            w = socket.socket()
            self.socks.append(w)
            if self.sndbuf is not None:
                w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            w.settimeout(5)
            w.connect(("127.0.0.1", self.port))
            lst.settimeout(5)
            r, _ = lst.accept()
            self.socks.append(r)
            self.writer, self.reader = w, r
            from ..kernel import tcp_info
            i = tcp_info(w)
            cc = w.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0")[0].decode()
            # the inputs of tcp_sndbuf_expand() as the connection started, and its result
            self.at_connect = {"cc": cc, "cwnd": i.snd_cwnd, "reordering": i.reordering,
                               "sndbuf": w.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}
            return self
        except BaseException:
            self.close()
            raise

    def close(self):
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.socks = []

    def __exit__(self, *exc):
        self.close()
        return False

    def ss_rows(self) -> dict:
        """`ss -tm` of the writer and the reader, as {"writer": {...}, "reader": {...}}."""
        from ..kernel import ss
        view = ss(port=self.port, state="ESTAB")
        wport = self.writer.getsockname()[1]
        out = {}
        cols = ["recv_q", "send_q"] + list(SKMEM)
        for who, lport in (("writer", wport), ("reader", self.port)):
            row = view[view["lport"] == lport]
            out[who] = {c: (None if row.empty or row[c].iloc[0] is None or row[c].iloc[0] != row[c].iloc[0]
                            else int(row[c].iloc[0])) for c in cols}
        return out


_INFO = ("snd_mss", "rcv_mss", "snd_wnd", "rcv_wnd", "rcv_space", "rcv_ssthresh", "snd_cwnd", "unacked",
         "notsent_bytes", "bytes_sent", "bytes_acked", "bytes_received", "bytes_retrans", "rcv_wscale",
         "snd_wscale", "probes", "backoff")


def drops_accounted(d: dict) -> bool:
    """A packet the reader's kernel dropped (ss skmem d) either carried data, which the writer
    sent again (TCP_INFO bytes_retrans), or was a zero-window probe, which carries no new data
    and is never resent: the writer then shows a probe backoff (tcp_send_probe0 raises
    icsk_backoff). So drops without retransmissions need a backoff (seen on Linux 6.1 under
    emulation, where the probes start before the ss snapshot)."""
    drops, wi = d["ss"]["reader"]["skmem_d"], d["writer_info"]
    return drops == 0 or wi["bytes_retrans"] > 0 or (wi.get("backoff") or 0) > 0


def _info(sock) -> dict:
    from ..kernel import tcp_info
    d = tcp_info(sock).as_dict()
    return {k: d.get(k) for k in _INFO}


# ----------------------------------------------------------------------------- write returns

def check_write_returns(result: Result) -> None:
    d = result.data
    assert d["returned"] == d["size"], "a blocking send() returned the whole write"
    assert d["read_by_peer"] == 0, "the reader never read"
    assert d["send_seconds"] < 0.25, f"send() took {d['send_seconds']:.3f} s: it should return at once"
    w, r = d["ss"]["writer"], d["ss"]["reader"]
    assert w["send_q"] + r["recv_q"] == d["size"], "every byte sits in one of the two kernel buffers"
    sent_once = d["writer_info"]["bytes_sent"] - d["writer_info"]["bytes_retrans"]
    assert sent_once < d["size"], "send() returned although not every byte was transmitted"
    assert d["writer_info"]["notsent_bytes"] > 0, "TCP_INFO counts bytes never transmitted (notsent_bytes)"
    assert sent_once + d["writer_info"]["notsent_bytes"] == d["size"], \
        "bytes transmitted + bytes not yet sent = bytes written"


@experiment("write_returns", chapter="02_01", invariant=check_write_returns,
            params=[Param("size", "bytes in one send()", 65536, choices=(16384, 65536, 262144),
                          minimum=8192, maximum=1 << 20, unit="bytes")],
            claim="send() returns once the bytes are in the send buffer, not when they are on the wire")
def write_returns(run, size: int = 65536, reader_rcvbuf: int = 4096) -> dict:
    """One blocking send() of *size* bytes to a reader with a small receive buffer that
    never reads. Returns how long send() took, what it returned, and where the bytes are
    (ss Send-Q/Recv-Q, TCP_INFO bytes_sent and notsent_bytes of the writer)."""
    from ..kernel import tcp_info
    payload = b"x" * size
    with _Pair(None, reader_rcvbuf) as p:
        first_wnd = tcp_info(p.writer).snd_wnd   # the window the reader offered before any data
        t0 = time.perf_counter()
        n = p.writer.send(payload)
        took = time.perf_counter() - t0
        time.sleep(SETTLE)   # let the in-flight bytes land and the window close
        settle(p.writer, p.reader)
        view = p.ss_rows()
        winfo, rinfo = _info(p.writer), _info(p.reader)
        sndbuf = p.writer.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    return {"size": size, "returned": n, "send_seconds": took, "read_by_peer": 0,
            "reader_rcvbuf_set": reader_rcvbuf, "writer_sndbuf": sndbuf, "ss": view,
            "first_snd_wnd": first_wnd, "writer_info": winfo, "reader_info": rinfo}


# ----------------------------------------------------------------------------- capacity

def fill(sock: socket.socket, limit: int = WRITE_LIMIT, seconds: float = 3.0) -> tuple[int, int]:
    """:func:`helpers.kernel.fill_until_full` (the course's one fill loop) with this
    chapter's chunk and settle time. Returns (bytes written, EAGAIN count)."""
    f = fill_until_full(sock, chunk=CHUNK, limit=limit, seconds=seconds, settle=SETTLE)
    return f.written, f.eagain


def settle(writer: socket.socket, reader: socket.socket, seconds: float = 1.5) -> float:
    """Wait (bounded) until every byte the reader received has been acknowledged to the
    writer, so that ss counts no byte twice (Send-Q holds sent-but-unacknowledged bytes
    that may already sit in the reader's Recv-Q). Returns the seconds waited."""
    from ..kernel import tcp_info
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        w, r = tcp_info(writer), tcp_info(reader)
        if w.unacked == 0 and w.bytes_acked - 1 == r.bytes_received:   # bytes_acked counts the SYN
            break
        time.sleep(0.005)
    return time.monotonic() - t0


def check_queue_capacity(result: Result) -> None:
    d = result.data
    w, r = d["ss"]["writer"], d["ss"]["reader"]
    assert d["eagain"] >= 1, "the writer stopped on EAGAIN (a blocking writer would block there)"
    assert d["written"] < WRITE_LIMIT, "the buffers filled before the safety limit"
    assert w["send_q"] + r["recv_q"] == d["written"], \
        f"written {d['written']} = writer Send-Q {w['send_q']} + reader Recv-Q {r['recv_q']}"
    assert d["reader_info"]["rcv_wnd"] == 0 or r["recv_q"] > 0.4 * d["reader_rcvbuf"], "the reader's buffer is full"
    assert r["recv_q"] <= d["reader_rcvbuf"], "the receive queue never exceeds SO_RCVBUF (as doubled)"
    assert r["skmem_rb"] == d["reader_rcvbuf"] and w["skmem_tb"] == d["writer_sndbuf"], \
        "ss -tm shows the same limits as getsockopt"
    rules.sk_stream_memory_free(result.machine_snapshot(), d["writer_sndbuf"]).check(
        w["skmem_w"], "the writer's send-queue memory (ss skmem w) when send() failed",
        reference=result.reference(), quiet=True)
    assert w["send_q"] <= w["skmem_w"], "the send queue's payload is part of its memory"
    assert r["recv_q"] >= 0.4 * d["reader_rcvbuf"], "the reader's queue holds a good part of its buffer"
    assert w["send_q"] >= 0.4 * d["writer_sndbuf"], "the writer's queue holds a good part of its buffer"
    assert d["writer_info"]["snd_wnd"] < d["writer_info"]["snd_mss"], \
        "the window the writer sees is too small for one more full segment (TCP_INFO snd_wnd < snd_mss)"
    wi, ri = d["writer_info"], d["reader_info"]
    assert wi["bytes_sent"] - wi["bytes_retrans"] == ri["bytes_received"], \
        "every byte transmitted once is in the reader's queue (bytes_sent counts retransmissions twice)"
    assert drops_accounted(d), ("the reader dropped packets (skmem_d) but the writer neither retransmitted "
                                "nor probed the closed window")


@experiment(
    "queue_capacity", chapter="02_01", invariant=check_queue_capacity,
    params=[
        Param("sndbuf", "SO_SNDBUF (writer)", 65536, choices=BUFFER_CHOICES, minimum=1024, maximum=4 << 20,
              unit="bytes", doc="set on the writer before connect(); None: the kernel default, autotuned"),
        Param("rcvbuf", "SO_RCVBUF (reader)", 65536, choices=BUFFER_CHOICES, minimum=1024, maximum=4 << 20,
              unit="bytes", doc="set on the listener before listen(), so the accepted socket inherits it"),
    ],
    claim="a writer can queue about SO_SNDBUF x 2 + SO_RCVBUF x 2 bytes before send() would block",
)
def queue_capacity(run, sndbuf: int | None = 65536, rcvbuf: int | None = 65536) -> dict:
    """A non-blocking writer fills the connection to a reader that never reads, until
    EAGAIN. Returns the bytes written, where they are (ss -tm of both sockets), TCP_INFO
    of both, and the buffer sizes the kernel really uses (getsockopt)."""
    with _Pair(sndbuf, rcvbuf) as p:
        t0 = time.perf_counter()
        written, eagain = fill(p.writer)
        took = time.perf_counter() - t0
        settled = settle(p.writer, p.reader)
        view = p.ss_rows()
        winfo, rinfo = _info(p.writer), _info(p.reader)
        wsnd = p.writer.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        rrcv = p.reader.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return {"sndbuf": sndbuf, "rcvbuf": rcvbuf, "written": written, "eagain": eagain, "fill_seconds": took,
            "at_connect": p.at_connect,
            "settle_seconds": settled,
            "writer_sndbuf": wsnd, "reader_rcvbuf": rrcv, "ss": view, "writer_info": winfo,
            "reader_info": rinfo, "tcp_wmem": _int("net.ipv4.tcp_wmem"), "tcp_rmem": _int("net.ipv4.tcp_rmem")}


def where_bytes_are(result: Result):
    """One row per socket: the ss -tm view (queues and skmem) of writer and reader."""
    import pandas as pd
    rows = []
    for who in ("writer", "reader"):
        row = {"socket": who}
        row.update(result.data["ss"][who])
        rows.append(row)
    return pd.DataFrame(rows).set_index("socket")


def capacity_sweep(sndbufs=(4096, 16384, 65536, 262144, 1048576), rcvbufs=(4096, 16384, 65536, 262144, 1048576),
                   fixed: int = 65536):
    """queue_capacity over each SO_SNDBUF (SO_RCVBUF fixed) and each SO_RCVBUF (SO_SNDBUF
    fixed). One row per run: which knob varied, its value, and where the bytes sat."""
    import pandas as pd
    from .. import progress
    rows = []
    runs = [("sndbuf", v) for v in sndbufs] + [("rcvbuf", v) for v in rcvbufs]
    for i, (knob, v) in enumerate(runs):
        progress.report(i / len(runs), f"{knob}={v}")
        kw = {"sndbuf": fixed, "rcvbuf": fixed, knob: v}
        r = queue_capacity(**kw)
        d = r.data
        rows.append({"varied": knob, "setting": v, "sndbuf": kw["sndbuf"], "rcvbuf": kw["rcvbuf"],
                     "writer_sndbuf": d["writer_sndbuf"], "reader_rcvbuf": d["reader_rcvbuf"],
                     "written": d["written"], "send_q": d["ss"]["writer"]["send_q"],
                     "recv_q": d["ss"]["reader"]["recv_q"], "snd_mss": d["writer_info"]["snd_mss"],
                     "snd_wnd": d["writer_info"]["snd_wnd"], "bytes_retrans": d["writer_info"]["bytes_retrans"],
                     "reader_drops": d["ss"]["reader"]["skmem_d"], "reader_mem": d["ss"]["reader"]["skmem_r"],
                     "writer_mem": d["ss"]["writer"]["skmem_w"]})
    progress.report(1.0, "done")
    return pd.DataFrame(rows)


def _kib(x, _pos=None) -> str:
    x = float(x)
    if x >= 1 << 20:
        return f"{x / (1 << 20):g} MiB"
    if x >= 1024:
        return f"{x / 1024:g} KiB"
    return f"{x:g} B"


def plot_sweep(sweep):
    """Bytes queued against each setting (log-log): two panels (SO_SNDBUF varied, SO_RCVBUF
    varied); the total, the writer's and the reader's share, and the doubled setting."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter
    from ..plots import COLORS, use_style
    use_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, knob, other in zip(axes, ("sndbuf", "rcvbuf"), ("rcvbuf", "sndbuf")):
        s = sweep[sweep["varied"] == knob].sort_values("setting")
        x = s["setting"].to_numpy()
        ax.plot(x, s["written"], "o-", color="black", lw=1.8, ms=5, label="bytes written before EAGAIN")
        ax.plot(x, s["send_q"], "s-", color=COLORS["data"], ms=4, label="… in the writer's send queue")
        ax.plot(x, s["recv_q"], "^-", color=COLORS["acks"], ms=4, label="… in the reader's receive queue")
        side = "writer_sndbuf" if knob == "sndbuf" else "reader_rcvbuf"
        ax.plot(x, s[side], ls="--", color=COLORS["limit"], lw=1.2,
                label=f"SO_{knob.upper()} as read back (2 × min(set, {'w' if knob == 'sndbuf' else 'r'}mem_max))")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xticks(x)
        ax.xaxis.set_major_formatter(FuncFormatter(_kib))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(_kib))
        ax.set_xlabel(f"SO_{knob.upper()} set; SO_{other.upper()} fixed at {_kib(s[other].iloc[0])}")
        ax.set_title(f"varying SO_{knob.upper()}")
    axes[0].set_ylabel("bytes")
    for ax in axes:       # each panel names its own buffer line
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("How much a writer can queue before send() would block", x=0.01, ha="left",
                 fontweight="bold")
    fig.tight_layout()
    return fig


def plot_capacity(result: Result):
    """One run: where the written bytes sit, against the two (doubled) buffer limits."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter
    from ..plots import COLORS, use_style
    use_style()
    d = result.data
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    sq, rq = d["ss"]["writer"]["send_q"], d["ss"]["reader"]["recv_q"]
    ax.barh([1], [sq], color=COLORS["data"], height=0.5, label="writer's send queue (ss Send-Q)")
    ax.barh([0], [rq], color=COLORS["acks"], height=0.5, label="reader's receive queue (ss Recv-Q)")
    for y, lim, name in ((1, d["writer_sndbuf"], "SO_SNDBUF"), (0, d["reader_rcvbuf"], "SO_RCVBUF")):
        ax.plot([lim, lim], [y - 0.35, y + 0.35], color=COLORS["limit"], ls="--", lw=1.5)
        ax.annotate(f"{name} {lim:,}", (lim, y + 0.3), fontsize=8, color=COLORS["limit"],
                    xytext=(3, 0), textcoords="offset points")
    ax.set_yticks([0, 1], ["reader", "writer"])
    ax.xaxis.set_major_formatter(EngFormatter(unit="B", sep=" "))
    ax.set_title(f"{d['written']:,} bytes written before EAGAIN "
                 f"(sndbuf={d['sndbuf'] or 'default'}, rcvbuf={d['rcvbuf'] or 'default'})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8)
    ax.set_ylim(-0.6, 1.9)
    fig.tight_layout()
    return fig


def render(result: Result) -> list:
    """What the 02_01 panel shows: the banner, the bar of where the bytes are, ss -tm, TCP_INFO."""
    import pandas as pd
    d = result.data
    info = pd.DataFrame({"writer": d["writer_info"], "reader": d["reader_info"]})
    note = (f"written before EAGAIN: **{d['written']:,}** bytes = writer Send-Q {d['ss']['writer']['send_q']:,} "
            f"+ reader Recv-Q {d['ss']['reader']['recv_q']:,}. Kernel limits: writer SO_SNDBUF "
            f"{d['writer_sndbuf']:,}, reader SO_RCVBUF {d['reader_rcvbuf']:,}.")
    return [result, note, plot_capacity(result), where_bytes_are(result),
            info.loc[["snd_wnd", "snd_mss", "rcv_wnd", "notsent_bytes", "unacked", "bytes_sent",
                      "bytes_retrans", "bytes_received", "rcv_wscale"]]]


# ----------------------------------------------------------------------------- window scale

#: The largest window a 16-bit window field can carry without scaling.
MAX_UNSCALED = 65535

#: (case, SO_RCVBUF on the listener before listen(), SO_RCVBUF on the accepted socket);
#: "small" and "big" are replaced by the experiment's parameters.
CASES = (("before", "small", None), ("after", None, "small"),
         ("small_then_big", "small", "big"), ("default", None, None), ("default_then_big", None, "big"))


def stored_rcvbuf(result: Result, requested: int) -> int:
    """What SO_RCVBUF *requested* reads back on the machine *result* ran on
    (:func:`helpers.rules.sock_setsockopt_buf`: doubled, capped at 2 × rmem_max)."""
    m = result.machine_snapshot()
    return rules.sock_setsockopt_buf(requested, m.rmem_max or result.data["rmem_max"]).value


def check_rcvbuf_before_listen(result: Result) -> None:
    d = result.data
    small, big = stored_rcvbuf(result, d["rcvbuf"]), stored_rcvbuf(result, d["big_rcvbuf"])
    assert d["before"]["rcvbuf"] == d["after"]["rcvbuf"] == small, f"both read back as setsockopt() stores: {small}"
    assert d["before"]["rcv_wscale"] < d["after"]["rcv_wscale"], \
        "only SO_RCVBUF set before listen() lowers the window scale of accepted connections"
    assert d["after"]["rcv_wscale"] == d["default_wscale"], "after accept() the scale is already the default one"
    trap, ok = d["small_then_big"], d["default_then_big"]
    assert trap["rcvbuf"] == ok["rcvbuf"] == big, f"the buffer was enlarged after accept() (stored {big})"
    assert trap["rcv_wscale"] == 0, "a small SO_RCVBUF before listen() announces window scale 0"
    assert trap["max_snd_wnd"] <= MAX_UNSCALED, \
        "with scale 0 the window the writer sees never exceeds 65,535 bytes, whatever the buffer"
    assert ok["max_snd_wnd"] <= min(big, MAX_UNSCALED << ok["rcv_wscale"]), \
        "enlarged after accept(): the window stays within the stored buffer and what the scale can express"
    assert trap["snd_mss"] <= MAX_UNSCALED // 2 + 1, "segments are capped at half the largest window"


@experiment("rcvbuf_before_listen", chapter="02_01", invariant=check_rcvbuf_before_listen,
            claim="SO_RCVBUF set before listen() fixes the window scale: a small one caps the window "
                  "at 64 KiB even after the buffer is enlarged")
def rcvbuf_before_listen(run, rcvbuf: int = 4096, big_rcvbuf: int = 1 << 20) -> dict:
    """Four connections to a reader that never reads (writer autotuned): SO_RCVBUF *rcvbuf*
    on the listener before listen(); *rcvbuf* on the accepted socket after accept();
    *rcvbuf* before listen() then *big_rcvbuf* after accept(); the default listener then
    *big_rcvbuf* after accept(). For each: SO_RCVBUF read back, the window scale the
    reader announced (TCP_INFO rcv_wscale), and the largest window the writer saw while
    filling the connection (TCP_INFO snd_wnd, sampled after every send())."""
    from .. import rules
    from ..kernel import tcp_info
    sizes = {"small": rcvbuf, "big": big_rcvbuf, None: None}
    out = {}
    for case, on_listener, on_accepted in CASES:
        with _Pair(None, sizes[on_listener]) as p:
            if on_accepted is not None:
                p.reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sizes[on_accepted])
            f = fill_until_full(p.writer, chunk=CHUNK, limit=WRITE_LIMIT, settle=SETTLE, watch_window=True)
            written, top = f.written, f.max_snd_wnd
            out[case] = {"before_listen": sizes[on_listener], "after_accept": sizes[on_accepted],
                         "rcvbuf": p.reader.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                         "rcv_wscale": tcp_info(p.reader).rcv_wscale, "max_snd_wnd": top,
                         "snd_mss": tcp_info(p.writer).snd_mss, "written": written}
    rmem_max = _int("net.core.rmem_max")
    return {"rcvbuf": rcvbuf, "big_rcvbuf": big_rcvbuf, **out, "rmem_max": rmem_max,
            "default_wscale": rules.default_wscale(rules.machine()).value}


def window_table(result: Result):
    """The four cases of :func:`rcvbuf_before_listen` as one table."""
    import pandas as pd
    cols = ["before_listen", "after_accept", "rcvbuf", "rcv_wscale", "max_snd_wnd", "snd_mss"]
    rows = [{c: ("—" if result.data[case][c] is None else result.data[case][c]) for c in cols}
            for case, _, _ in CASES]
    return pd.DataFrame(rows, index=[case for case, _, _ in CASES])
