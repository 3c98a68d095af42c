"""Chapter 02_04: TCP is a byte stream; messages need framing.

- :func:`streams`: the sender's send() sizes, the segments on the wire, and the
  receiver's recv() sizes, side by side (captured in a namespace with MTU 1500 and
  offloads off, so segments have their real size, 1448 payload bytes at most).
- :func:`partial_writes`: ``send()`` returns how many bytes it took, which may be fewer
  than it was given; ``sendall()`` loops until everything is queued.
- :func:`framed_exchange`: the length-prefixed protocol of :mod:`helpers.framing` over
  a real connection: the messages come out intact however recv() splits the stream,
  and a header announcing an oversize message is refused with a clear error.
"""
from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from dataclasses import dataclass

from ..errors import CourseError
from ..framing import FrameParser, FramingError, HEADER, MAGIC, encode, encode_all
from ..params import Param
from .base import Result, experiment

PATTERNS = {
    "10x100": [100] * 10,
    "1x20000": [20000],
    "3x3000": [3000] * 3,
}
MTU = 1500


# ---------------------------------------------------------------------------- streams

def _payload(sizes: list[int]) -> bytes:
    rnd = random.Random(4)
    return bytes(rnd.getrandbits(8) for _ in range(sum(sizes)))


def check_streams(result: Result) -> None:
    """The 02_04 claims on one capture: byte counts agree, boundaries do not."""
    d = result.data
    total = sum(d["send_sizes"])
    assert sum(d["recv_sizes"]) == total and d["digest_ok"], "every byte arrives, in order, unchanged"
    assert max(d["recv_sizes"]) <= d["params"]["recv_size"], "recv() never returns more than asked"
    df = result.segments()
    data = df[(df["dport"] == d["server_port"]) & (df["len"] > 0)]
    assert int(data["len"].sum()) == total, "the segments carry exactly the bytes sent"
    assert int(data["len"].max()) <= d["mss"], f"no segment exceeds the MSS ({d['mss']} B)"
    big = [s for s in d["send_sizes"] if s > d["mss"]]
    if big:
        assert len(data) > len(d["send_sizes"]), "a send larger than the MSS is split into segments"
    if d["params"]["reader_delay_ms"] >= 50 and len(d["send_sizes"]) > 1:
        assert len(d["recv_sizes"]) < len(d["send_sizes"]) or max(d["send_sizes"]) > d["params"]["recv_size"], \
            "a reader that waits finds several sends in one recv()"
    if len(d["send_sizes"]) == 1 and d["params"]["recv_size"] < total:
        assert len(d["recv_sizes"]) > 1, "one send larger than recv()'s size arrives in several recv() calls"


@experiment(
    "streams", chapter="02_04", needs={"live_capture", "namespaces"},
    params=[
        Param("pattern", "sends (count x bytes)", "10x100", choices=tuple(PATTERNS),
              doc="how many send() calls of what size"),
        Param("reader_delay_ms", "reader waits first", 50, choices=(0, 50), minimum=0, maximum=500, unit="ms",
              doc="0: the receiver calls recv() at once; else it waits until the sender's last "
                  "send() has returned, then this long, before its first recv()"),
        Param("recv_size", "recv() size", 65536, choices=(1024, 65536), minimum=1, maximum=1 << 20,
              unit="bytes", doc="the buffer size passed to each recv()"),
    ],
    invariant=check_streams,
    claim="send() sizes, segment sizes and recv() sizes are independent; only the byte sequence is kept",
)
def streams(run, pattern: str = "10x100", reader_delay_ms: int = 50,
            recv_size: int = 65536) -> dict:
    """Send a pattern of writes across a namespace's lo (MTU 1500, offloads off) and record
    the send() sizes, the capture, and what each recv() returned (size and time). A reader
    with a delay waits for the sender's last send() (an Event, at most 10 s), then the delay,
    so a slow sender cannot split its reads."""
    from ..kernel import tcp_info
    from ..netns import Namespace

    sizes = PATTERNS[pattern]
    data = _payload(sizes)
    got = bytearray()
    recvs: list[tuple[float, int]] = []
    errors: list[BaseException] = []
    with Namespace(mtu=MTU, offloads=False, name="streams") as ns:
        lst = ns.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        port = lst.getsockname()[1]
        cli = ns.socket()
        with run.capture([port], ns=ns):
            cli.connect(("127.0.0.1", port))
            srv, _ = lst.accept()
            srv.settimeout(5)
            t0 = time.perf_counter()

            sent = threading.Event()     # set after the last send() returned

            def reader():
                try:
                    if reader_delay_ms > 0:   # wait for the sender to finish (bounded), then pause
                        sent.wait(10)
                        time.sleep(reader_delay_ms / 1000)
                    while len(got) < len(data):
                        chunk = srv.recv(recv_size)
                        if not chunk:
                            break
                        recvs.append((time.perf_counter() - t0, len(chunk)))
                        got.extend(chunk)
                except BaseException as exc:   # reported below
                    errors.append(exc)

            th = threading.Thread(target=reader, daemon=True)
            th.start()
            sends = []
            pos = 0
            try:
                for s in sizes:
                    n = cli.send(data[pos:pos + s])
                    sends.append((time.perf_counter() - t0, n))
                    if n < s:
                        cli.sendall(data[pos + n:pos + s])
                    pos += s
            finally:
                sent.set()
            th.join(10)
            mss = tcp_info(cli)["snd_mss"]
            cli.close()
            srv.close()
            time.sleep(0.01)
    if errors:
        raise CourseError(f"the reader failed: {errors[0]!r}", "re-run the experiment.")
    return {"params": {"pattern": pattern, "reader_delay_ms": reader_delay_ms,
                       "recv_size": recv_size},
            "server_port": port, "mtu": MTU, "mss": mss,
            "send_sizes": [n for _, n in sends], "send_times": [t for t, _ in sends],
            "recv_sizes": [n for _, n in recvs], "recv_times": [t for t, _ in recvs],
            "digest_ok": hashlib.sha256(bytes(got)).digest() == hashlib.sha256(data).digest()}


def three_views(result: Result):
    """Sizes as the sender wrote them, as the wire carried them, as the reader got them."""
    import pandas as pd
    d = result.data
    df = result.segments()
    seg = df[(df["dport"] == d["server_port"]) & (df["len"] > 0)]
    cols = {"send() returned": d["send_sizes"], "segments on the wire": [int(x) for x in seg["len"]],
            "recv() returned": d["recv_sizes"]}
    n = max(len(v) for v in cols.values())
    return pd.DataFrame({k: v + [None] * (n - len(v)) for k, v in cols.items()},
                        index=pd.RangeIndex(1, n + 1, name="#")).astype("Int64")


def boundaries_figure(result: Result, title: str | None = None):
    """Three rows of bars over the byte stream: where sends, segments and recvs cut it."""
    import matplotlib.pyplot as plt
    from ..plots import PALETTE, use_style
    use_style()
    v = three_views(result)
    fig, ax = plt.subplots(figsize=(9.0, 2.8))
    for row, (name, colour) in enumerate(zip(v.columns, PALETTE)):
        start = 0
        for k, size in enumerate(v[name].dropna()):
            ax.barh(2 - row, int(size), left=start, height=0.6, color=colour, alpha=0.55 + 0.35 * (k % 2),
                    edgecolor="white", linewidth=1.2)
            start += int(size)
    ax.set_yticks([2, 1, 0], [f"{c} ({int(v[c].count())})" for c in v.columns])
    ax.set_xlabel("byte offset in the stream")
    ax.grid(axis="y", visible=False)
    p = result.params
    ax.set_title(title or f"{p['pattern']}, reader waits {p['reader_delay_ms']} ms, "
                          f"recv({p['recv_size']})")
    return fig


def render_streams(result: Result) -> list:
    return [result, three_views(result).T, boundaries_figure(result)]


def acks_between_sends(result: Result):
    """One row per data segment from the client: its end (relative seq + len) and whether
    the server's ACK for it was captured before the client's next data segment."""
    import pandas as pd
    d = result.data
    df = result.segments().reset_index(drop=True)
    port = d["server_port"]
    data = df[(df["dport"] == port) & (df["len"] > 0)]
    acks = df[(df["sport"] == port) & df["flags"].str.contains("ACK")]
    rows = []
    idx = list(data.index)
    for k, i in enumerate(idx):
        end = int(df.at[i, "seq"] + df.at[i, "len"])
        nxt = idx[k + 1] if k + 1 < len(idx) else None
        between = acks[(acks.index > i) & ((acks.index < nxt) if nxt is not None else True)]
        rows.append({"segment": k + 1, "bytes": int(df.at[i, "len"]), "ends at seq": end,
                     "acked before the next segment": bool((between["ack"] >= end).any()) if nxt is not None
                     else None})
    return pd.DataFrame(rows).set_index("segment")


# ---------------------------------------------------------------------------- partial writes

def check_partial_writes(result: Result) -> None:
    d = result.data
    assert d["first_send"] < d["size"], "send() on a full path took only part of the buffer"
    assert d["first_send"] > 0
    assert d["eagain"], "a second non-blocking send() with the buffers full raises EAGAIN"
    assert d["queued_before_eagain"] > d["first_send"], "later sends found room the first did not"
    q = queues_at_eagain(result)
    q.check()
    assert d["loop_calls"] > 1 and max(d["loop_counts"]) < d["size"] - d["queued_before_eagain"], \
        "with a timeout, each send() returned a short count"
    assert d["sendall_total"] == d["size"] and d["received"] == d["size"], "sendall() delivers every byte"


@dataclass
class QueuesAtEagain:
    """Where every queued byte was at the moment of EAGAIN, read together: the sender's
    TCP_INFO and ioctls (SIOCOUTQ: not yet acknowledged; SIOCOUTQNSD: not yet sent), the
    receiver's SIOCINQ (unread). Old recordings without the ioctls read at once show them
    as None."""
    queued: int
    acked: int                   # tcpi_bytes_acked − 1 (the SYN)
    unacked: int                 # sent, not acknowledged: SIOCOUTQ − SIOCOUTQNSD
    notsent: int                 # tcpi_notsent_bytes
    outq: int                    # SIOCOUTQ
    outq_nsd: int | None         # SIOCOUTQNSD
    inq: int                     # the receiver's SIOCINQ
    snd_wnd: int
    mss: int | None
    cwnd: int | None
    unacked_segs: int | None

    def table(self):
        import pandas as pd
        return pd.Series({
            "acknowledged by the receiver (tcpi_bytes_acked − 1)": self.acked,
            "sent, not yet acknowledged (SIOCOUTQ − SIOCOUTQNSD)": self.unacked,
            "not yet sent (tcpi_notsent_bytes; SIOCOUTQNSD)": self.notsent,
            "= queued before EAGAIN": self.queued,
            "sender's queue, unacknowledged (SIOCOUTQ)": self.outq,
            "receiver's queue, unread (SIOCINQ)": self.inq,
            "receiver's advertised window (tcpi_snd_wnd)": self.snd_wnd,
            "MSS (tcpi_snd_mss)": self.mss, "congestion window (tcpi_snd_cwnd, segments)": self.cwnd,
            "segments not yet acknowledged (tcpi_unacked)": self.unacked_segs}, name="bytes").to_frame()

    def why_unsent(self) -> str:
        """tcp_write_xmit() (net/ipv4/tcp_output.c) sends the next segment only if it fits
        the receiver's window (tcp_snd_wnd_test) and the congestion window has room
        (tcp_cwnd_test)."""
        if not self.notsent:
            return "nothing waited unsent"
        room = self.snd_wnd - self.unacked
        if self.mss is not None and room < min(self.notsent, self.mss):
            return (f"window-limited: the receiver's window had {room:,} bytes of room, less than the next "
                    f"segment ({min(self.notsent, self.mss):,} bytes)")
        if self.cwnd is not None and self.unacked_segs is not None and self.unacked_segs >= self.cwnd:
            return f"congestion-window-limited: {self.unacked_segs} segments unacknowledged, cwnd {self.cwnd}"
        return "neither window was full"

    def check(self) -> None:
        assert self.acked + self.unacked + self.notsent == self.queued, \
            "every queued byte is acknowledged, sent and unacknowledged, or not yet sent"
        assert self.outq == self.queued - self.acked, "acknowledged bytes have left the sender's queue"
        if self.outq_nsd is not None:
            assert self.outq_nsd == self.notsent, "SIOCOUTQNSD and TCP_INFO agree on the unsent bytes"
        assert self.inq == self.acked + self.unacked, \
            "every byte sent is already in the receiver's queue: 'unacknowledged' is not 'on the wire'"
        assert self.unacked <= self.snd_wnd, "never more unacknowledged than the receiver's advertised window"
        if self.notsent and self.mss is not None:
            assert not self.why_unsent().startswith("neither"), \
                "bytes wait unsent only when the next segment does not fit a window (tcp_write_xmit)"


def queues_at_eagain(result: Result) -> QueuesAtEagain:
    d = result.data
    k = d["at_eagain"]
    unacked = k.get("unacked", k.get("in_flight"))
    return QueuesAtEagain(queued=d["queued_before_eagain"], acked=k["acked"], unacked=unacked,
                          notsent=k["notsent"], outq=k["sender_queue"], outq_nsd=k.get("sender_notsent"),
                          inq=k["receiver_queue"], snd_wnd=k["snd_wnd"], mss=k.get("mss"), cwnd=k.get("cwnd"),
                          unacked_segs=k.get("unacked_segs"))


SIOCOUTQNSD = 0x894B       # include/uapi/linux/sockios.h: bytes in the send queue not yet sent


def _queued(sock: socket.socket, request: int) -> int:
    """SIOCINQ / SIOCOUTQ / SIOCOUTQNSD: bytes in a socket's receive queue / not yet
    acknowledged / not yet sent."""
    import fcntl
    import struct
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]


@experiment(
    "partial_writes", chapter="02_04",
    params=[Param("size", "bytes to send", 4 << 20, choices=(1 << 20, 4 << 20), minimum=1 << 20,
                  maximum=32 << 20, unit="bytes", doc="one send() of this many bytes to a reader that waits"),
            Param("sndbuf", "SO_SNDBUF (sender)", 65536, choices=(16384, 65536), minimum=4096,
                  maximum=256 << 10, unit="bytes",
                  doc="the sender's send buffer (the kernel doubles it; small enough that "
                      "the buffers cannot take the whole send)")],
    invariant=check_partial_writes,
    claim="send() may take fewer bytes than given; sendall() loops until all are queued",
)
def partial_writes(run, size: int = 4 << 20, sndbuf: int = 65536) -> dict:
    """One non-blocking send() of *size* bytes while the reader is not reading: it returns a
    count smaller than *size*, the next raises EAGAIN; then the reader starts and sendall()
    queues the rest. Returns the counts and the number of send() calls a manual loop needed."""
    import termios
    from ..kernel import tcp_info
    from ..servers import Server
    data = bytes(size)
    start = threading.Event()
    received, conns = [], []

    def slow_reader(conn, addr):
        conns.append(conn)
        start.wait(5)
        total = 0
        while total < size:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            total += len(chunk)
        received.append(total)

    with Server(slow_reader, sockopts=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)],
                name="slow-reader") as srv:
        c = socket.socket()
        try:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            c.connect(("127.0.0.1", srv.port))
            c.setblocking(False)
            t_end = time.monotonic() + 2
            while not conns and time.monotonic() < t_end:   # the receiver's socket, before any data
                time.sleep(0.002)
            time.sleep(0.02)
            first = c.send(data)
            pos, eagain = first, False
            for _ in range(1000):   # keep sending until the kernel says EAGAIN (bounded)
                try:
                    pos += c.send(data[pos:])
                except BlockingIOError:
                    eagain = True
                    break
            queued = pos
            # the kernel's view at the EAGAIN, read back to back (microseconds), before the
            # receiver's delayed ACK can change it
            outq = _queued(c, termios.TIOCOUTQ)
            outq_nsd = _queued(c, SIOCOUTQNSD)
            ti = tcp_info(c)
            inq = _queued(conns[0], termios.FIONREAD) if conns else -1
            at_eagain = {"sender_queue": outq, "sender_notsent": outq_nsd, "notsent": ti["notsent_bytes"],
                         "unacked": outq - outq_nsd, "acked": ti["bytes_acked"] - 1,
                         "snd_wnd": ti["snd_wnd"], "mss": ti["snd_mss"], "cwnd": ti["snd_cwnd"],
                         "unacked_segs": ti["unacked"], "receiver_queue": inq}
            # a manual loop, as sendall() does it: count the send() calls
            start.set()
            c.settimeout(5)
            calls, counts = 0, []
            deadline = time.monotonic() + 10
            while pos < size and time.monotonic() < deadline:
                n = c.send(data[pos:])
                counts.append(n)
                pos += n
                calls += 1
            so_sndbuf = c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            c.shutdown(socket.SHUT_WR)
            t_end = time.monotonic() + 5
            while not received and time.monotonic() < t_end:
                time.sleep(0.005)
        finally:
            c.close()
    return {"size": size, "sndbuf_set": sndbuf, "sndbuf_got": so_sndbuf, "first_send": first,
            "eagain": eagain, "queued_before_eagain": queued, "at_eagain": at_eagain, "loop_calls": calls, "loop_counts": counts[:50],
            "sendall_total": pos, "received": received[0] if received else 0}


# ---------------------------------------------------------------------------- framed exchange

def check_framed_exchange(result: Result) -> None:
    d = result.data
    assert d["received_ok"], "the messages arrive intact and in order"
    assert d["recv_calls"] == 1 or d["recv_cuts_inside"] > 0, \
        "some recv() boundary falls inside a message"
    assert d["oversize_error"] and "announces" in d["oversize_error"], "an oversize length is refused"
    assert d["oversize_buffered"] <= HEADER.size, \
        "the parser held at most one header: none of the oversize message's payload"
    assert d["garbage_error"] and "bad magic" in d["garbage_error"], "a stream in another protocol is refused"


@experiment(
    "framed_exchange", chapter="02_04",
    params=[Param("messages", "messages", 200, minimum=1, maximum=5000),
            Param("recv_size", "recv() size", 100, choices=(7, 100, 65536), minimum=1, maximum=1 << 20,
                  unit="bytes", doc="the receiver's recv() buffer size")],
    invariant=check_framed_exchange,
    claim="length-prefixed messages survive any recv() split; oversize or foreign input is refused",
)
def framed_exchange(run, messages: int = 200, recv_size: int = 100, max_size: int = 4096) -> dict:
    """Send *messages* random-sized messages as one framed stream, written in random-sized
    pieces; the server parses them with :class:`FrameParser` from recv(*recv_size*).
    Then two bad peers: one announcing a 1 GB message, one speaking HTTP."""
    from ..servers import Server
    rnd = random.Random(2)
    msgs = [bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 300))) for _ in range(messages)]
    stream = encode_all(msgs, max_size)
    outcome: dict = {}

    def handler(conn, addr):
        parser = FrameParser(max_size=max_size)
        got, sizes = [], []
        try:
            while len(sizes) < 1_000_000:
                chunk = conn.recv(recv_size)
                if not chunk:
                    parser.close()
                    break
                sizes.append(len(chunk))
                got += parser.feed(chunk)
        except FramingError as err:
            got += err.messages
            outcome.setdefault("errors", []).append(str(err).splitlines()[0])
            outcome.setdefault("buffered", []).append(parser.high_water)
        outcome.setdefault("runs", []).append({"got": got, "sizes": sizes})

    def client(port, payload, pieces) -> str:
        """Send *payload* in *pieces*; return how the connection ended for this client."""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                pos = 0
                for n in pieces:
                    c.sendall(payload[pos:pos + n])
                    pos += n
                c.sendall(payload[pos:])
                c.shutdown(socket.SHUT_WR)
                return "closed" if c.recv(1) == b"" else "data"   # wait for the server's close
            except OSError as exc:   # the server refused and closed: RST for unread data
                return type(exc).__name__

    def wait_runs(n):
        t_end = time.monotonic() + 10
        while len(outcome.get("runs", [])) < n and time.monotonic() < t_end:
            time.sleep(0.005)

    with Server(handler, name="framed") as srv:
        pieces = [rnd.randint(1, 700) for _ in range(len(stream) // 350 + 1)]
        ends = [client(srv.port, stream, pieces)]
        wait_runs(1)
        bad = encode(b"hello") + HEADER.pack(MAGIC, 1 << 30) + b"x" * 1000
        ends.append(client(srv.port, bad, [3, 5, 100]))
        wait_runs(2)
        ends.append(client(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", []))
        wait_runs(3)
    runs = outcome.get("runs", [])
    errors = outcome.get("errors", [])
    first = runs[0] if runs else {"got": [], "sizes": []}
    frame_ends = set(_cumulative([HEADER.size + len(m) for m in msgs]))
    recv_ends = _cumulative(first["sizes"])[:-1]            # the last one is the stream's end
    return {"messages": messages, "recv_size": recv_size, "max_size": max_size,
            "stream_bytes": len(stream), "send_pieces": len(pieces) + 1,
            "received_ok": first["got"] == msgs, "received": len(first["got"]),
            "recv_calls": len(first["sizes"]), "recv_sizes": first["sizes"][:200],
            "recv_cuts_inside": sum(1 for e in recv_ends if e not in frame_ends),
            "message_sizes": [len(m) for m in msgs[:200]],
            "oversize_error": errors[0] if errors else None,
            "oversize_before": len(runs[1]["got"]) if len(runs) > 1 else None,
            "oversize_buffered": outcome.get("buffered", [0])[0],
            "garbage_error": errors[1] if len(errors) > 1 else None, "client_ends": ends}


def _cumulative(sizes) -> list[int]:
    out, total = [], 0
    for n in sizes:
        total += n
        out.append(total)
    return out


def message_cuts(result: Result, first: int = 8):
    """The first *first* messages of a framed_exchange as byte ranges of the stream (header
    included), with the recv() boundaries that fall inside each one."""
    import pandas as pd
    d = result.data
    recv_ends = _cumulative(d["recv_sizes"])
    covered = recv_ends[-1] if recv_ends else 0
    rows, start = [], 0
    for k, size in enumerate(d["message_sizes"][:first]):
        end = start + HEADER.size + size
        if end > covered:
            break
        inside = [e for e in recv_ends if start < e < end]
        rows.append({"message": k + 1, "payload bytes": size, "stream bytes": f"{start}–{end}",
                     "recv() ends inside at": ", ".join(map(str, inside)) or "–"})
        start = end
    return pd.DataFrame(rows).set_index("message")


# ---------------------------------------------------------------------------- exercise 2

class _Stub(Exception):
    pass


def check_frames_in(fn) -> bool:
    """Exercise checker for ``frames_in(chunks) -> list of messages`` (chapter 02_04).

    Feeds the learner's function one stream cut several ways (all at once, byte by byte,
    cuts inside headers and payloads), then a stream cut off inside a message, which must
    raise TruncatedFrame. A function that still raises NotImplementedError is "not
    answered yet"; one that returns None is told it forgot ``return``."""
    from ..checks import check, todo
    from ..framing import TruncatedFrame, split
    hint = ("feed every chunk, keep everything feed() returns (zero, one or several messages "
            "per chunk), and think about what must happen when the stream ends.")
    sample = [b"alpha", b"", b"gamma" * 50, bytes(range(256)), b"z"]
    stream = encode_all(sample)
    ways = {"all at once": [stream], "byte by byte": [stream[i:i + 1] for i in range(len(stream))],
            "cut inside headers and payloads": split(stream, [2, 9, 12, 15, 100, 270, 280, 400, 540])}

    def verdict():
        for name, chunks in ways.items():
            try:
                got = fn(list(chunks))
            except NotImplementedError:
                raise _Stub
            if got is None:
                return f"frames_in returned None for the stream fed {name}: did you forget `return`?"
            if list(got) != sample:
                return f"wrong messages for the stream fed {name}. Hint: {hint}"
        try:
            fn(split(stream[:-3], [4, 20]))
        except TruncatedFrame:
            return ""
        except Exception as exc:
            return f"a stream cut off inside a message raised {type(exc).__name__}, not TruncatedFrame."
        return f"a stream cut off inside its last message was accepted. Hint: {hint}"

    try:
        why = verdict()
    except _Stub:
        return todo("replace the `raise NotImplementedError` line of frames_in with your code, "
                     "then run both cells again.")
    except Exception as exc:
        return check(False, "", f"your function raised {type(exc).__name__}: {exc}. Hint: {hint}")
    return check(not why, "right: every split gives the same messages, and a cut-off stream is refused",
                 why)


# ---------------------------------------------------------------------------- Nagle coalescing

def check_coalescing(result: Result) -> None:
    """Ten 100-byte sends to a peer that delays its ACKs: with Nagle the first leaves
    alone and the other nine wait for its ACK and leave coalesced; with TCP_NODELAY every
    send is a segment of its own."""
    v = coalescing_view(result)
    v.check(result)


@dataclass
class Coalescing:
    """The client's data segments after the warm-up exchange, and the server's ACKs."""
    sizes: list[int]             # payload of each client data segment after the warm-up
    first_ack_ms: float | None   # the server's first ACK of the sends, ms after the first send
    nodelay: bool
    sends: int
    send_size: int
    sends_done_ms: float         # when the last send() returned, ms after the first
    mss: int

    def sentence(self) -> str:
        return (f"{self.sends} sends of {self.send_size} bytes (all returned within {self.sends_done_ms:.2f} ms) "
                f"left as {len(self.sizes)} segment{'s' if len(self.sizes) != 1 else ''}: "
                f"{' + '.join(str(x) for x in self.sizes)} bytes; the server's first ACK came "
                f"{self.first_ack_ms:.1f} ms after the first send.")

    def check(self, result: Result) -> None:
        from .. import rules
        total = self.sends * self.send_size
        assert sum(self.sizes) == total, "the segments carry exactly the bytes sent"
        if self.nodelay:
            assert self.sizes == [self.send_size] * self.sends, "TCP_NODELAY: one segment per send()"
            return
        band = rules.delack_band(result.machine_snapshot())
        rules.assert_rule(result, rules.delack_band, self.first_ack_ms, quiet=True,
                          what="the server's delayed ACK of the first send")
        assert self.sends_done_ms < band.low, "every send() returned before that ACK could come"
        rest = total - self.send_size
        expected = [self.send_size] + [min(self.mss, rest - k) for k in range(0, rest, self.mss)]
        assert self.sizes == expected, \
            f"Nagle: the first small segment alone, the rest held until its ACK and sent in full " \
            f"segments: expected {expected}, captured {self.sizes}"


@experiment(
    "coalescing", chapter="02_04", needs={"live_capture", "namespaces"},
    params=[Param("nodelay", "TCP_NODELAY (client)", False, choices=(False, True),
                  doc="turn Nagle's algorithm off on the client")],
    invariant=check_coalescing,
    claim="with a peer that delays its ACKs, Nagle sends the first small write alone and "
          "coalesces the rest; with TCP_NODELAY every write is a segment",
)
def coalescing(run, nodelay: bool = False, sends: int = 10, send_size: int = 100) -> dict:
    """In a namespace (MTU 1500, offloads off): one request/response exchange makes the
    server's connection interactive (pingpong: it delays its ACKs); then the client makes
    *sends* back-to-back send() calls of *send_size* bytes and the server reads them."""
    from .. import rules
    from ..kernel import tcp_info
    from ..netns import Namespace
    with Namespace(mtu=MTU, offloads=False, name="coalesce") as ns:
        snapshot = rules.Machine.read(ns).as_dict()
        lst = ns.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        port = lst.getsockname()[1]
        cli = ns.socket()
        try:
            with run.capture([port], ns=ns):
                cli.settimeout(5)
                cli.connect(("127.0.0.1", port))
                if nodelay:
                    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                srv, _ = lst.accept()
                srv.settimeout(5)
                cli.sendall(b"?")                   # the warm-up: a request ...
                srv.recv(1)
                srv.sendall(b"!")                   # ... answered at once: the server turns interactive
                cli.recv(1)
                time.sleep(0.005)
                got = bytearray()
                t0 = time.perf_counter()
                for _ in range(sends):
                    cli.send(b"x" * send_size)
                done_ms = (time.perf_counter() - t0) * 1000
                mss = tcp_info(cli)["snd_mss"]
                deadline = time.monotonic() + 5
                while len(got) < sends * send_size and time.monotonic() < deadline:
                    chunk = srv.recv(65536)
                    if not chunk:
                        break
                    got.extend(chunk)
                cli.close()
                srv.close()
                time.sleep(0.01)
        finally:
            cli.close()
            lst.close()
    return {"params": {"nodelay": nodelay}, "server_port": port, "sends": sends, "send_size": send_size,
            "sends_done_ms": done_ms, "mss": mss, "received": len(got), "machine": snapshot}


def coalescing_view(result: Result) -> Coalescing:
    d = result.data
    df = result.segments()
    port = d["server_port"]
    up = df[(df["dport"] == port) & (df["len"] > 0)]
    data = up.iloc[1:]                         # after the 1-byte warm-up request
    t_first = float(data["t"].iloc[0]) if len(data) else float("nan")
    start = int(data["seq"].iloc[0]) if len(data) else 0
    down = df[(df["sport"] == port) & (df["t"] >= t_first) & (df["ack"] > start)]
    return Coalescing(sizes=[int(x) for x in data["len"]],
                      first_ack_ms=(float(down["t"].iloc[0]) - t_first) * 1000 if len(down) else None,
                      nodelay=d["params"]["nodelay"], sends=d["sends"], send_size=d["send_size"],
                      sends_done_ms=d["sends_done_ms"], mss=d["mss"])
