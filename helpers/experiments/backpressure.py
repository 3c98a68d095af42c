"""Chapter 02_05: backpressure, when a producer is faster than its consumer.

Two experiments, both plain sockets on loopback (no privileges, always live):

- :func:`send_blocks`: a consumer that does not read. A non-blocking ``send`` fills the
  send and receive queues and then raises ``BlockingIOError`` (EAGAIN); a blocking
  ``sendall`` then blocks until the consumer reads. The kernel's view (FIONREAD/SIOCOUTQ
  ioctls, TCP_INFO, ``ss``) is read at the moment of EAGAIN.
- :func:`producer_memory`: a producer in a fresh child process sends a fixed amount to a
  consumer (this process) that reads at a fixed rate. Three producers: asyncio awaiting
  ``drain()``, asyncio never awaiting it, and a blocking ``sendall``. The child samples its
  own memory (RSS), asyncio's write buffer and its socket's send queue every few ms; the
  consumer samples its receive queue. Only the producer that ignores backpressure grows.

The child is a separate process so that the memory measured is the producer's alone, not
the Jupyter kernel's. Run as ``python -m helpers.experiments.backpressure --child ...``,
this module is that producer.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time

from .. import rules
from ..kernel import fill_until_full
from ..params import Param
from .base import Result, experiment

CHUNK = 65536
KERNEL_BUF = 65536        # SO_SNDBUF / SO_RCVBUF asked for in producer_memory (doubled by the kernel)
CHILD_START_S = 60        # s to wait for the producer child to connect (Python starts slowly in a VM)
PRODUCERS = ("asyncio + drain", "asyncio, no drain", "blocking sendall")
MB = 1 << 20
SAMPLE_S = 0.004
MAX_SAMPLES = 5000
SIOCOUTQ = termios.TIOCOUTQ          # bytes in the send queue: not yet acknowledged
SIOCINQ = termios.FIONREAD           # bytes in the receive queue: not yet read
#: TCP_MAXSEG for the small-segment comparison: a full skb of 1,200 bytes plus any header room
#: the kernel reserves (192..320 bytes, by kernel config) rounds up to 2 KiB: one truesize
#: (2,304) on every x86_64 config, where 1,460 gives 2,304 or 4,352 depending on the config.
SMALL_MSS = 1200


def _cc(sock) -> str:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0")[0].decode()


def sndbuf_after_connect(mss: int | None = None, cc: str | None = None) -> dict:
    """SO_SNDBUF of a fresh loopback connection before connect(), and right after it,
    before a byte is sent (optionally with TCP_MAXSEG *mss*, to shrink the segments), with
    the inputs of ``tcp_sndbuf_expand()``: the congestion control, the initial cwnd and
    the reordering the connection started with (TCP_INFO), and the metrics-cache entry for
    127.0.0.1 read just before connect() (where that reordering comes from). *cc* sets the
    congestion control on both sockets (TCP_CONGESTION; reno is always allowed)."""
    from ..kernel import tcp_info
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv = None
    try:
        for s in (lst, cli):
            if mss is not None:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
            if cc is not None:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        before = cli.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        cached = rules.tcp_metrics("127.0.0.1")          # what tcp_init_metrics() will find
        cli.settimeout(5)
        cli.connect(lst.getsockname())
        lst.settimeout(5)
        srv, _ = lst.accept()
        info = tcp_info(cli)
        return {"mss_asked": mss, "cc_asked": cc, "mss": cli.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG),
                "before_connect": before,
                "after_connect": cli.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                "accepted_side": srv.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                "cc": _cc(cli), "cwnd": info.snd_cwnd, "reordering": info.reordering,
                "metrics_reordering": cached.get("reordering"), "metrics": cached}
    finally:
        for s in (cli, srv, lst):
            if s is not None:
                s.close()


def sndbuf_rule(result_or_machine, d: dict, mss: int | None = None) -> rules.Prediction:
    """``tcp_sndbuf_expand()`` for the connection described by *d* (a dict with ``cc``,
    ``cwnd`` and ``reordering`` as the connection started with them), on the machine the
    result was produced on (or a :class:`~helpers.rules.Machine`)."""
    m = (result_or_machine.machine_snapshot() if hasattr(result_or_machine, "machine_snapshot")
         else result_or_machine)
    return rules.tcp_sndbuf_expand(m, cc=d["cc"], mss=mss, cwnd=d.get("cwnd") or rules.TCP_INIT_CWND,
                                   reordering=d["reordering"])


def check_sndbuf_metrics(result: Result) -> None:
    """The 02_05 claims about the metrics cache and the send buffer at establishment."""
    d = result.data
    ns_m = result.machine_snapshot()                       # the fresh namespace, before any traffic
    host_m = rules.Machine.from_dict(d["host_machine"])
    assert not d["ns_metrics_before"], f"a fresh namespace starts with an empty metrics cache: {d['ns_metrics_before']}"
    first, reno, host = d["ns_first"], d["ns_reno"], d["host"]
    rules.tcp_metrics_reordering(ns_m).check(first["reordering"], "reordering of the first connection in the namespace",
                                             reference=result.reference(), quiet=True)
    for conn, what in ((first, "the namespace's first connection"), (reno, "the namespace's reno connection")):
        sndbuf_rule(ns_m, conn).check(conn["after_connect"], f"SO_SNDBUF after connect(), {what}",
                                      reference=result.reference(), quiet=True)
    assert d["ns_metrics_after"].get("rtt"), \
        f"after one connection closed the cache holds an entry for 127.0.0.1 with its rtt: {d['ns_metrics_after']}"
    assert not d["ns_metrics_flushed"], "ip tcp_metrics flush empties it"
    cached = rules.Machine(sysctls=host_m.sysctls, metrics={"127.0.0.1": host["metrics"]})
    rules.tcp_metrics_reordering(cached).check(host["reordering"], "reordering of the host's connection",
                                               reference=result.reference(), quiet=True)
    sndbuf_rule(host_m, host).check(host["after_connect"], "SO_SNDBUF after connect() on the host",
                                    reference=result.reference(), quiet=True)


@experiment("sndbuf_metrics", chapter="02_05", needs={"namespaces"}, invariant=check_sndbuf_metrics,
            claim="the send buffer at establishment follows tcp_sndbuf_expand() with the reordering the "
                  "metrics cache holds; a fresh namespace starts with an empty cache")
def sndbuf_metrics(run) -> dict:
    """SO_SNDBUF right after connect() on the host (whatever its metrics cache holds) and in
    a fresh network namespace (an empty cache): the first connection, the cache after it
    closed, a reno connection, and the cache after ``ip tcp_metrics flush``."""
    from ..netns import Namespace
    host_machine = rules.machine().as_dict()
    host = sndbuf_after_connect()
    with Namespace(name="sndbuf") as ns:
        machine = rules.Machine.read(ns).as_dict()          # before any traffic in it
        before = rules.tcp_metrics("127.0.0.1", ns)
        first = ns.call(sndbuf_after_connect)
        deadline = time.monotonic() + 1.0
        after = {}
        while not after and time.monotonic() < deadline:  # the entry is written as the sockets close
            time.sleep(0.02)
            after = rules.tcp_metrics("127.0.0.1", ns)
        reno = ns.call(sndbuf_after_connect, cc="reno")
        ns.ip("tcp_metrics", "flush", "all")
        flushed = rules.tcp_metrics("127.0.0.1", ns)
    return {"machine": machine, "host_machine": host_machine, "host": host, "ns_metrics_before": before,
            "ns_first": first, "ns_metrics_after": after, "ns_reno": reno, "ns_metrics_flushed": flushed}


def _ioctl_int(sock_or_fd, request: int) -> int:
    fd = sock_or_fd if isinstance(sock_or_fd, int) else sock_or_fd.fileno()
    return struct.unpack("i", fcntl.ioctl(fd, request, struct.pack("i", 0)))[0]


def outq(sock) -> int:
    """Bytes in *sock*'s send queue (sent or not, not yet acknowledged): SIOCOUTQ."""
    return _ioctl_int(sock, SIOCOUTQ)


def inq(sock) -> int:
    """Bytes in *sock*'s receive queue, not yet read by the application: FIONREAD."""
    return _ioctl_int(sock, SIOCINQ)


def _writable(sock) -> bool:
    return bool(select.select([], [sock], [], 0)[1])


# ----------------------------------------------------------------------------- send_blocks

def _side(d: dict, side: str) -> dict:
    return next((r for r in d["ss"] if r["side"] == side), {})


def sndbuf_got_rule(result: Result) -> rules.Prediction:
    """The producer's send buffer right after connect(): ``tcp_sndbuf_expand()`` when
    SO_SNDBUF was left alone, else what ``setsockopt()`` stores (2 × min(request, wmem_max))."""
    d = result.data
    m = result.machine_snapshot()
    if d["sndbuf"] is None:
        return sndbuf_rule(m, d["at_connect"])
    return rules.sock_setsockopt_buf(d["sndbuf"], m.wmem_max or d["sndbuf"], which="SO_SNDBUF")


def eagain_rule(result: Result) -> rules.Prediction:
    """Where EAGAIN stopped the producer: :func:`helpers.rules.sk_stream_memory_free` for
    the send buffer the socket had when it was full."""
    d = result.data
    return rules.sk_stream_memory_free(result.machine_snapshot(), d["sndbuf_when_full"])


def check_send_blocks(result: Result) -> None:
    """The 02_05 claims about blocking and non-blocking send, on one run."""
    d = result.data
    assert d["eagain"] >= 1 and d["queued"] > 0 and d["full"], \
        "a non-blocking send must raise EAGAIN once the queues are full"
    assert d["queued"] == d["outq"] + d["inq"], \
        (f"every byte send() accepted is in the sender's send queue ({d['outq']}) or the receiver's "
         f"receive queue ({d['inq']}): {d['queued']}")
    assert not d["writable_when_full"], "select() must not report the full socket writable"
    sndbuf_got_rule(result).check(d["sndbuf_got"], "the producer's SO_SNDBUF right after connect()",
                                  reference=result.reference(), quiet=True)
    prod = _side(d, "producer")
    eagain_rule(result).check(prod.get("skmem_w"), "the send queue's memory at EAGAIN (ss skmem w)",
                              reference=result.reference(), quiet=True)
    assert d["outq"] <= prod["skmem_w"], \
        f"the send queue's payload ({d['outq']}) is part of its memory ({prod['skmem_w']})"
    rcv_top = rules.tcp_try_rmem_schedule(result.machine_snapshot(), d["cons_rcvbuf"]).high
    assert d["inq"] <= rcv_top, \
        (f"the receive queue ({d['inq']}) stays within the receive buffer ({d['cons_rcvbuf']}) "
         f"plus one skb (tcp_try_rmem_schedule(): at most {rcv_top})")
    assert d["tcp_info"]["snd_wnd"] < d["tcp_info"]["snd_mss"], \
        "the receiver's window is closed or smaller than one segment (TCP_INFO snd_wnd < snd_mss)"
    assert d["blocked_during_pause"], "the blocking sendall must still be blocked while the consumer pauses"
    assert d["blocked_s"] >= 0.8 * d["pause"], \
        f"the blocking sendall returned after {d['blocked_s']:.3f} s, before the {d['pause']} s pause ended"
    assert d["returned_after_read_s"] < 1.0, "once the consumer reads, the blocked sendall returns promptly"
    assert d["received"] == d["queued"] + d["extra"], "the consumer gets every byte"
    assert d["writable_after_read"], "after the consumer read everything the socket is writable again"


@experiment(
    "send_blocks", chapter="02_05",
    params=[
        Param("sndbuf", "SO_SNDBUF (producer)", None, choices=(None, 16384, 262144), minimum=4096,
              maximum=4 * MB, unit="bytes", doc="the producer's send buffer, set before connect"),
        Param("pause", "consumer pause", 0.3, choices=(0.3, 1.0), minimum=0.1, maximum=3.0, unit="s",
              doc="how long the consumer does not read while a blocking sendall waits"),
    ],
    invariant=check_send_blocks,
    claim="a full socket makes non-blocking send raise EAGAIN and blocking send wait for the reader",
)
def send_blocks(run, sndbuf: int | None = None, pause: float = 0.3, extra: int = 262144) -> dict:
    """Fill a connection whose consumer does not read, first with non-blocking sends
    (until EAGAIN), then with a blocking sendall of *extra* bytes that waits until the
    consumer reads after *pause* seconds."""
    from .. import progress
    from ..kernel import ss, tcp_info

    lst = socket.create_server(("127.0.0.1", 0))
    prod = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    cons = None
    blocker = None
    try:
        if sndbuf is not None:
            prod.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sndbuf_before = prod.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        cached = rules.tcp_metrics("127.0.0.1")          # what tcp_init_metrics() will find
        prod.settimeout(5)
        prod.connect(lst.getsockname())
        cons, _ = lst.accept()
        sndbuf_got = prod.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)     # read back, before any data
        cons_sndbuf = cons.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        port = lst.getsockname()[1]
        start = tcp_info(prod)
        at_connect = {"cc": _cc(prod), "cwnd": start.snd_cwnd, "reordering": start.reordering,
                      "metrics_reordering": cached.get("reordering")}
        # send until the socket is full: EAGAIN with the consumer's window closed and nothing
        # in flight (helpers.kernel.fill_until_full); bounded: at most 512 MB or 5 s
        f = fill_until_full(prod, chunk=CHUNK, limit=8192 * CHUNK, seconds=5, settle=0.3)
        queued, calls, sizes, eagain, first_eagain, waits = (f.written, f.calls, f.sizes, f.eagain,
                                                             f.first_eagain, f.waits)
        fill_s = f.seconds
        settle = time.monotonic()
        while outq(prod) + inq(cons) != queued and time.monotonic() - settle < 0.5:
            time.sleep(0.01)                               # the last delayed ACK
        view = {"outq": outq(prod), "inq": inq(cons), "writable_when_full": _writable(prod),
                "sndbuf_when_full": prod.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                "cons_rcvbuf": cons.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)}
        info = tcp_info(prod).as_dict()
        table = ss(port=port)
        ss_rows = [{"side": "producer" if r["lport"] != port else "consumer", "recv_q": int(r["recv_q"]),
                    "send_q": int(r["send_q"]), "skmem_w": r.get("skmem_w"), "skmem_tb": r.get("skmem_tb"),
                    "skmem_r": r.get("skmem_r"), "skmem_rb": r.get("skmem_rb")}
                   for _, r in table[table["state"] == "ESTAB"].iterrows()]
        progress.report(0.2, "non-blocking send hit EAGAIN; now a blocking sendall")

        # -- the blocking send: it waits until the consumer reads
        prod.setblocking(True)
        done: dict = {}

        def blocking_send():
            done["start"] = time.monotonic()
            try:
                prod.sendall(b"y" * extra)
            except OSError as exc:                       # shut down by the cleanup below
                done["error"] = str(exc)
            done["end"] = time.monotonic()

        blocker = threading.Thread(target=blocking_send, name="send_blocks-producer", daemon=True)
        blocker.start()
        progress.sleep(pause, 0.2, 0.9, "the consumer pauses; sendall is blocked")
        blocked_during_pause = blocker.is_alive()
        t_read = time.monotonic()
        want = queued + extra
        got = 0
        buf = bytearray(1 << 20)
        cons.settimeout(5)
        while got < want and time.monotonic() - t_read < 10:
            k = cons.recv_into(buf)
            if not k:
                break
            got += k
        blocker.join(timeout=5)
        writable_after = _writable(prod)
        progress.report(1.0, "done")
    finally:
        for s in (prod, cons):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)     # wakes a sendall still blocked
                except OSError:
                    pass
        if blocker is not None:
            blocker.join(timeout=2)
        for s in (prod, cons, lst):
            if s is not None:
                s.close()
    return {"sndbuf": sndbuf, "sndbuf_before_connect": sndbuf_before, "sndbuf_got": sndbuf_got,
            "cons_sndbuf": cons_sndbuf, "at_connect": at_connect,
            "full": f.full, "pause": pause, "extra": extra, "queued": queued, "send_calls": calls, "eagain": eagain,
            "send_sizes": sizes, "fill_s": fill_s, "first_eagain": first_eagain, "writable_again": waits, **view,
            "tcp_info": {k: info.get(k) for k in ("snd_wnd", "notsent_bytes", "unacked", "snd_mss",
                                                   "sndbuf_limited", "rwnd_limited", "bytes_acked",
                                                   "snd_cwnd", "reordering")},
            "ss": ss_rows, "blocked_during_pause": blocked_during_pause,
            "blocked_s": done.get("end", float("nan")) - done.get("start", float("nan")),
            "returned_after_read_s": done.get("end", float("nan")) - t_read,
            "send_error": done.get("error"), "received": got, "writable_after_read": writable_after}


# ----------------------------------------------------------------------------- the producer (child)

def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class _Sampler(threading.Thread):
    """Every SAMPLE_S: time, RSS, asyncio's buffered bytes, the socket's send queue, VmHWM."""

    def __init__(self, sock: socket.socket):
        super().__init__(name="sampler", daemon=True)
        self.sock = sock
        self.transport = None
        self.samples: list[tuple] = []
        self.stop = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        while not self.stop.is_set() and len(self.samples) < MAX_SAMPLES:
            tr = self.transport
            try:
                app = tr.get_write_buffer_size() if tr is not None else 0
                q = outq(self.sock)
            except (OSError, ValueError, AttributeError) as exc:   # the socket is gone: stop sampling
                self.error = f"{type(exc).__name__}: {exc}"
                break
            self.samples.append((time.monotonic(), _rss_bytes(), app, q, _peak_rss_bytes()))
            self.stop.wait(SAMPLE_S)


def child_main(producer: str, port: int, total: int, chunk: int, sndbuf: int) -> dict:
    """Produce *total* bytes in *chunk*-sized pieces, each a fresh buffer (as if computed)."""
    import asyncio

    template = os.urandom(chunk)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sampler = _Sampler(sock)
    out: dict = {"producer": producer, "pid": os.getpid(), "python": list(sys.version_info[:3]),
                 "sndbuf_got": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}
    n_chunks = total // chunk
    try:
        open("/proc/self/clear_refs", "w").write("5")    # reset VmHWM: the peak from here on
    except OSError:
        pass
    if producer == "blocking sendall":
        sock.settimeout(None)
        out["rss_before"] = _rss_bytes()
        sampler.start()
        t0 = time.monotonic()
        for _ in range(n_chunks):
            sock.sendall(bytearray(template))
        out["t_start"], out["t_produced"] = t0, time.monotonic()
        out["app_at_produced"] = 0
        out["peak_app_exact"] = 0
        sock.shutdown(socket.SHUT_WR)
        out["t_flushed"] = time.monotonic()
        out["limits"] = None
        out["write_buffer"] = None
    else:
        sock.setblocking(False)

        async def produce():
            reader, writer = await asyncio.open_connection(sock=sock)
            sampler.transport = writer.transport
            out["limits"] = list(writer.transport.get_write_buffer_limits())   # (low, high)
            # 3.11: one bytearray that copies each write; 3.12+: a deque holding the written
            # objects themselves (no copy) and sendmsg() of several at once
            out["write_buffer"] = type(getattr(writer.transport, "_buffer", None)).__name__
            out["rss_before"] = _rss_bytes()
            sampler.start()
            t0 = time.monotonic()
            drains = 0
            peak_app = 0
            for _ in range(n_chunks):
                writer.write(bytearray(template))
                peak_app = max(peak_app, writer.transport.get_write_buffer_size())   # exact, not sampled
                if producer == "asyncio + drain":
                    t = time.monotonic()
                    await writer.drain()
                    drains += time.monotonic() - t > 0.001          # drain() really waited
                # else: write and go on, the way `for item in items: writer.write(item)` does
            out["t_start"], out["t_produced"] = t0, time.monotonic()
            out["app_at_produced"] = writer.transport.get_write_buffer_size()   # still in user space
            out["drain_waits"] = drains
            out["peak_app_exact"] = peak_app
            writer.close()
            await writer.wait_closed()                              # close() flushes the buffer first
            out["t_flushed"] = time.monotonic()

        asyncio.run(asyncio.wait_for(produce(), timeout=30))
    time.sleep(2 * SAMPLE_S)
    sampler.stop.set()
    sampler.join(timeout=1)
    out["peak_rss"] = _peak_rss_bytes()
    out["samples"] = sampler.samples
    out["sampler_error"] = sampler.error
    sock.close()
    return out


# ----------------------------------------------------------------------------- producer_memory

def check_producer_memory(result: Result) -> None:
    """The 02_05 claims about memory and pacing, on one run."""
    d = result.data
    total, p = d["total"], d["producer"]
    assert d["received"] == total, f"the consumer must receive all {total} bytes, got {d['received']}"
    top = rules.sk_stream_memory_free(result.machine_snapshot(), d["sndbuf_got"]).high
    assert d["peak_outq"] <= top, \
        (f"the kernel's send queue (peak {d['peak_outq']}) stays within the send buffer "
         f"({d['sndbuf_got']}) plus one skb (sk_stream_memory_free(): below {top})")
    rcv_top = rules.tcp_try_rmem_schedule(result.machine_snapshot(), d["rcvbuf_got"]).high
    assert d["peak_inq"] <= rcv_top, \
        (f"the receive queue (peak {d['peak_inq']}) stays within the receive buffer ({d['rcvbuf_got']}) "
         f"plus one skb (tcp_try_rmem_schedule(): at most {rcv_top})")
    growth = d["peak_rss"] - d["rss_before"]
    if p == "asyncio, no drain":
        # bytes against the kernel's own bounds, not fractions of the total: how far the
        # producer gets ahead depends on how fast it runs on a busy machine
        kernel_room = d["sndbuf_got"] + d["rcvbuf_got"]
        assert d["app_at_produced"] > kernel_room, \
            (f"without backpressure the producer runs ahead of the consumer: when it was done, "
             f"{d['app_at_produced']} bytes were still in its own buffer, more than the kernel's "
             f"send and receive buffers ({kernel_room}) could ever hold")
        assert d["peak_app_buffer"] >= 8 * kernel_room, \
            (f"without drain() asyncio's buffer grows far past the kernel's queues: peak "
             f"{d['peak_app_buffer']} bytes against {kernel_room}")
        assert growth >= 0.8 * d["peak_app_buffer"], \
            f"without backpressure that buffer is the producer's memory: +{growth} bytes for a {d['peak_app_buffer']}-byte peak"
    else:
        assert growth < max(4 * MB, total / 4), f"with backpressure memory stays bounded: +{growth} bytes"
        # bytes, not time: the consumer's clock starts before the child is up
        assert d["unread_at_produced"] <= total / 4 + 512 * 1024, \
            (f"with backpressure the producer is paced by the consumer: it was done only when all but "
             f"{d['unread_at_produced']} of {total} bytes had been read")
    if p == "asyncio + drain":
        low, high = d["limits"]
        assert d["peak_app_buffer"] <= high + d["chunk"], \
            f"drain() keeps asyncio's buffer under the high-water mark {high} + one write: peak {d['peak_app_buffer']}"
        assert d["drain_waits"] > 0, "drain() must have waited at least once"
    if p == "blocking sendall":
        assert d["peak_app_buffer"] == 0, "a blocking send keeps nothing in user space beyond the chunk"


@experiment(
    "producer_memory", chapter="02_05",
    params=[
        Param("producer", "producer", "asyncio + drain", choices=PRODUCERS,
              doc="how the producer writes: asyncio with or without awaiting drain(), or a blocking sendall"),
        Param("total_mb", "data to send", 8, choices=(8, 16, 32), minimum=1, maximum=128, unit="MB",
              doc="how much the producer produces"),
        Param("rate_mb_s", "consumer speed", 32, choices=(16, 32, 64), minimum=4, maximum=512, unit="MB/s",
              doc="how fast the consumer reads"),
    ],
    invariant=check_producer_memory,
    claim="only a producer that honours backpressure keeps its memory bounded",
)
def producer_memory(run, producer: str = "asyncio + drain", total_mb: int = 8, rate_mb_s: int = 32) -> dict:
    """A producer (fresh child process) sends *total_mb* MB to a consumer reading at
    *rate_mb_s* MB/s; both sides sample their queues, the child its memory."""
    from .. import progress
    from ..errors import CourseError

    total = int(total_mb * MB)
    rate = float(rate_mb_s * MB)
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    child = None
    conn = None
    cons_samples: list[tuple] = []
    try:
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_BUF)   # before listen: inherited
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        lst.settimeout(0.5)
        argv = [sys.executable, "-m", "helpers.experiments.backpressure", "--child", producer,
                str(lst.getsockname()[1]), str(total), str(CHUNK), str(KERNEL_BUF)]
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn, waited_until = None, time.monotonic() + CHILD_START_S
        while conn is None:      # a slow machine (a VM, a loaded laptop) takes seconds to start Python
            try:
                conn, _ = lst.accept()
            except socket.timeout:
                if child.poll() is not None:
                    raise CourseError(f"the producer child exited ({child.returncode}) before it connected: "
                                      f"{(child.stderr.read() or '').strip()[-300:]}",
                                      f"run `{' '.join(argv[:4])} ...` by hand to see why.") from None
                if time.monotonic() > waited_until:
                    raise CourseError(f"the producer child did not connect within {CHILD_START_S} s.",
                                      f"run `{' '.join(argv[:4])} ...` by hand to see why.") from None
        rcvbuf_got = conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        buf = bytearray(CHUNK)
        got = 0
        t0 = time.monotonic()
        deadline = t0 + total / rate * 3 + 10          # bounded whatever happens
        conn.settimeout(5)
        next_report = 0.0
        while time.monotonic() < deadline:
            ahead = got / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(min(ahead, 0.05))           # read no faster than the rate
            cons_samples.append((time.monotonic(), inq(conn), got))
            k = conn.recv_into(buf)
            if not k:
                break
            got += k
            if got / total >= next_report:
                progress.report(0.95 * got / total, f"consumer read {got / MB:.0f} of {total_mb} MB")
                next_report += 0.1
        cons_samples.append((time.monotonic(), inq(conn), got))
        try:
            stdout, stderr = child.communicate(timeout=10)
        except subprocess.TimeoutExpired as exc:
            raise CourseError("the producer child did not finish in time.", "try less data or a faster consumer.") from exc
        if child.returncode != 0:
            raise CourseError(f"the producer child failed: {stderr.strip()[-400:]}",
                              "run `python -m helpers.experiments.backpressure --child ...` by hand to see why.")
        data = json.loads(stdout.strip().splitlines()[-1])
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait(timeout=5)
        for s in (conn, lst):
            if s is not None:
                s.close()
    progress.report(1.0, "done")
    t_ref = data["t_start"]
    samples = [{"t": t - t_ref, "rss": rss, "app": app, "outq": q, "hwm": hwm}
               for t, rss, app, q, hwm in data.pop("samples")]
    consumer = [{"t": t - t_ref, "inq": q, "received": g} for t, q, g in cons_samples]
    produce_s = data["t_produced"] - data["t_start"]
    # the last consumer sample before the producer was done (an under-estimate of what was read)
    read_by_then = max((c["received"] for c in consumer if c["t"] <= produce_s), default=0)
    return {**data, "total": total, "total_mb": total_mb, "rate": rate, "rate_mb_s": rate_mb_s,
            "chunk": CHUNK, "kernel_buf": KERNEL_BUF, "rcvbuf_got": rcvbuf_got, "received": got,
            "produce_s": produce_s, "flush_s": data["t_flushed"] - data["t_start"],
            "unread_at_produced": total - read_by_then,
            "consumer_s": consumer[-1]["t"] if consumer else None,
            # the child's exact maximum after each write (the sampler can miss the top)
            "peak_app_buffer": max([data["peak_app_exact"]] + [s["app"] for s in samples]),
            "peak_outq": max((s["outq"] for s in samples), default=0),
            "peak_inq": max((c["inq"] for c in consumer), default=0),
            "samples": samples, "consumer": consumer}


# ----------------------------------------------------------------------------- views

def occupancy(result: Result):
    """One row per producer sample: time, bytes in asyncio's buffer, the kernel send queue,
    the consumer's receive queue (latest consumer sample at that time) and RSS growth."""
    import numpy as np
    import pandas as pd
    d = result.data
    s = pd.DataFrame(d["samples"])
    c = pd.DataFrame(d["consumer"])
    if s.empty:
        return s
    idx = np.searchsorted(c["t"].to_numpy(), s["t"].to_numpy(), side="right") - 1
    s["inq"] = np.where(idx >= 0, c["inq"].to_numpy()[idx.clip(0)], 0)
    s["rss_growth"] = s["rss"] - d["rss_before"]
    return s


#: How much the producer that never awaits drain() grows, per unit of data, by how its
#: Python's asyncio buffers unsent bytes (measured on this machine: 1.54 on 3.11, 0.99 on
#: 3.12 and 3.13, 16 MB at 32 MB/s):
#: - "bytearray" (up to 3.11): each write() is *copied* into one bytearray, and what the
#:   socket took is deleted from its front; when the array falls below half its allocation
#:   CPython moves the rest to a smaller one and frees the old one only afterwards
#:   (PyByteArray_Resize): for a moment both exist, about 1.5 times the data.
#: - "deque" (3.12 and later): write() keeps a reference to the caller's object, no copy,
#:   and sendmsg() sends several at once; each is freed when sent: about 1 times the data.
NO_DRAIN_GROWTH = {"bytearray": (1.2, 1.8), "deque": (0.8, 1.25)}


def no_drain_growth_band(write_buffer: str | None) -> tuple[float, float]:
    """(low, high) memory growth / data for the no-drain producer, by asyncio's buffer kind."""
    return NO_DRAIN_GROWTH.get(write_buffer or "", (0.8, 1.8))


def peak_moment(result: Result) -> dict | None:
    """When did the producer's peak memory (VmHWM) happen, and how full was asyncio's buffer?

    Returns asyncio's buffered bytes at the last sample before VmHWM reached its peak
    (``app_before``) and at the first sample showing it (``app_at``), their times, and the
    sampled maximum RSS growth and the VmHWM growth (bytes); None without samples."""
    d = result.data
    samples = d["samples"]
    if not samples:
        return None
    top = max(s["hwm"] for s in samples)
    i = next(k for k, s in enumerate(samples) if s["hwm"] == top)
    before = samples[i - 1] if i > 0 else None
    return {"t_before": before["t"] if before else None, "app_before": before["app"] if before else None,
            "t": samples[i]["t"], "app_at": samples[i]["app"], "peak_app_buffer": d["peak_app_buffer"],
            "total": d["total"],
            "rss_growth_sampled": max(s["rss"] for s in samples) - d["rss_before"],
            "hwm_growth": d["peak_rss"] - d["rss_before"]}


def occupancy_plot(results: list[Result]):
    """Buffer occupancy over time, one column per producer: where the unread bytes are
    (application buffer, kernel send queue, consumer's receive queue; stacked, in KB, each
    column on its own scale) and the producer's memory growth (MB, one scale for all).
    The legend goes under the figure, one entry per row when the figure is narrow."""
    import matplotlib.pyplot as plt
    from .. import plots
    plots.use_style()
    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=(max(4.4 * n + 0.6, 6.0), 6.4 if n >= 3 else 7.0), sharex=True,
                             squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    colours = [plots.COLORS["rst"], plots.COLORS["data"], plots.COLORS["syn"]]
    labels = ["application buffer (asyncio)", "kernel send queue (SIOCOUTQ)",
              "consumer's receive queue (FIONREAD)"]
    top_mb = max([1.0] + [(r.data["peak_rss"] - r.data["rss_before"]) / MB for r in results])
    for col, r in enumerate(results):
        d = r.data
        o = occupancy(r)
        top, bottom = axes[0][col], axes[1][col]
        if not o.empty:
            top.stackplot(o["t"], o["app"] / 1024, o["outq"] / 1024, o["inq"] / 1024,
                          colors=colours, alpha=0.8, labels=labels)
            bottom.plot(o["t"], o["rss_growth"] / MB, color=plots.PALETTE[7], lw=1.4)
            bottom.fill_between(o["t"], o["rss_growth"] / MB, color=plots.PALETTE[7], alpha=0.12)
        for ax in (top, bottom):
            ax.axvline(d["produce_s"], color="#555555", ls=":", lw=1.2)
        peak = (d["peak_rss"] - d["rss_before"]) / MB
        bottom.axhline(peak, color=plots.COLORS["limit"], ls="--", lw=1.0, gid="peak-rss")
        bottom.text(0.99, peak, f"peak (VmHWM) +{peak:.1f} MB", transform=bottom.get_yaxis_transform(),
                    ha="right", va="bottom", fontsize=8, color=plots.COLORS["limit"])
        top.text(d["produce_s"], 0.98, " producer done", transform=top.get_xaxis_transform(), fontsize=8,
                 va="top", color="#555555")
        top.set_title(d["producer"], fontsize=11)
        top.set_ylim(bottom=0)
        bottom.set_ylim(-0.05 * top_mb, top_mb * 1.15)
        bottom.set_xlabel("time since the first write (s)")
        if col == 0:
            top.set_ylabel("unread bytes (KB)")
            bottom.set_ylabel("producer RSS growth (MB)")
    handles, names = axes[0][0].get_legend_handles_labels()
    ncol = 3 if n >= 3 else 1
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=9, bbox_to_anchor=(0.5, -0.01))
    scale = " (top: each column its own scale)" if n > 1 else ""
    fig.suptitle(f"{results[0].data['total_mb']} MB to a consumer reading {results[0].data['rate_mb_s']} MB/s"
                 f"{scale}", x=0.01, ha="left", fontweight="bold")
    fig.tight_layout(rect=(0, 0.05 if ncol == 3 else 0.12, 1, 1))
    return fig


def summary(results: list[Result]):
    """One row per producer: peaks, memory growth, times."""
    import pandas as pd
    rows = []
    for r in results:
        d = r.data
        rows.append({"producer": d["producer"], "producer done (s)": round(d["produce_s"], 3),
                     "consumer done (s)": round(d["consumer_s"], 3),
                     "peak asyncio buffer (KB)": round(d["peak_app_buffer"] / 1024),
                     "peak send queue (KB)": round(d["peak_outq"] / 1024),
                     "peak receive queue (KB)": round(d["peak_inq"] / 1024),
                     "RSS growth (MB)": round((d["peak_rss"] - d["rss_before"]) / MB, 1)})
    return pd.DataFrame(rows).set_index("producer")


def render(result: Result) -> list:
    """What the 02_05 panel shows: the numbers and the occupancy plot for one producer."""
    return [result, summary([result]), occupancy_plot([result])]


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    _p, _port, _total, _chunk, _sndbuf = sys.argv[2:7]
    print(json.dumps(child_main(_p, int(_port), int(_total), int(_chunk), int(_sndbuf))))
