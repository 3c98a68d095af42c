"""A length-prefixed message protocol and an incremental parser (chapter 02_04).

TCP delivers a stream of bytes, not messages: one ``send`` may arrive in several
``recv`` calls and several sends in one. A protocol on top of TCP has to mark where each
message ends. This one puts a 6-byte header in front of every message::

    +------+------+---------------------------+-------------------+
    | 'T'  | 'C'  | length (uint32, big end.) | payload (length)  |
    +------+------+---------------------------+-------------------+

The two magic bytes catch a peer that speaks something else (or a stream that lost its
place); the length says how many payload bytes follow. :class:`FrameParser` is a small
state machine fed with whatever ``recv`` returned::

    parser = FrameParser(max_size=65536)
    for chunk in chunks:                 # any split of the stream
        for message in parser.feed(chunk):
            handle(message)
    parser.close()                       # at EOF: raises if a message was cut off

Guarantees (tested with hypothesis in tests/test_framing.py):

- any valid stream, split at any points, yields the same messages in the same order;
- a header announcing more than ``max_size`` bytes is rejected as soon as the header is
  complete (:class:`OversizeFrame`), before any of its payload is stored;
- a wrong magic byte is rejected as soon as that byte arrives (:class:`BadMagic`);
- EOF in the middle of a message is reported by :meth:`FrameParser.close`
  (:class:`TruncatedFrame`);
- the parser never holds more than ``max(HEADER.size, max_size)`` bytes (``buffered``,
  ``bound``; ``high_water`` is the most it ever held), so a hostile or broken peer cannot
  make it grow without bound;
- ``feed()`` and ``encode()`` accept only bytes-like data (:class:`ParameterError`
  otherwise: ``bytes(7)`` would silently be seven zero bytes);
- after an error the parser stays failed: the stream has lost its framing and nothing
  after the error can be trusted.
"""
from __future__ import annotations

import socket
import struct
from typing import Iterable, Iterator

from .errors import CourseError, ParameterError

MAGIC = b"TC"
HEADER = struct.Struct("!2sI")          # magic, payload length
DEFAULT_MAX = 64 * 1024

__all__ = ["MAGIC", "HEADER", "DEFAULT_MAX", "FramingError", "BadMagic", "OversizeFrame",
           "TruncatedFrame", "encode", "encode_all", "FrameParser", "send_message",
           "recv_messages", "split"]


class FramingError(CourseError, ValueError):
    """The byte stream does not follow the protocol; the message says where and why."""

    def __init__(self, problem: str, fix: str, offset: int):
        super().__init__(problem, fix)
        self.offset = offset
        self.messages: list[bytes] = []   # valid messages completed by the failing feed()


class BadMagic(FramingError):
    """A header does not start with the magic bytes b'TC'."""


class OversizeFrame(FramingError):
    """A header announces a payload larger than the parser's max_size."""


class TruncatedFrame(FramingError):
    """The stream ended in the middle of a header or a payload."""


def _byte_view(data, where: str) -> memoryview:
    """A flat byte view of *data*; anything that is not bytes-like is a ParameterError.

    ``bytes(7)`` would be seven zero bytes and ``bytes(10**10)`` a 10 GB allocation, so
    integers (and str, which has no single byte encoding) are refused, not converted.
    """
    try:
        view = memoryview(data)
    except TypeError:
        raise ParameterError(f"{where} needs bytes, got {type(data).__name__} ({data!r:.40}).",
                             "pass what recv() returned (bytes); encode text first, "
                             "e.g. 'hi'.encode().") from None
    if view.ndim != 1 or view.itemsize != 1:
        view = memoryview(view.tobytes())     # e.g. an array('H'): its raw bytes
    return view


def encode(payload: bytes, max_size: int = DEFAULT_MAX) -> bytes:
    """Header + payload for one message; refuses payloads larger than *max_size*."""
    payload = _byte_view(payload, "encode()").tobytes()
    if len(payload) > max_size:
        raise OversizeFrame(f"a {len(payload)}-byte message is larger than max_size={max_size}.",
                            "split it into smaller messages, or agree on a larger max_size "
                            "with the receiver.", 0)
    return HEADER.pack(MAGIC, len(payload)) + payload


def encode_all(payloads: Iterable[bytes], max_size: int = DEFAULT_MAX) -> bytes:
    """The stream for several messages, back to back."""
    return b"".join(encode(p, max_size) for p in payloads)


class FrameParser:
    """Incremental parser: ``feed(bytes) -> [messages]``; see the module docstring.

    States: ``"header"`` (collecting the 6 header bytes), ``"payload"`` (collecting
    ``expected`` payload bytes), ``"failed"`` (after a FramingError), ``"closed"``
    (after :meth:`close`).
    """

    def __init__(self, max_size: int = DEFAULT_MAX):
        if not isinstance(max_size, int) or isinstance(max_size, bool) or not 0 <= max_size < 2**32:
            raise ParameterError(f"max_size={max_size!r} is not a usable message limit.",
                              "give a whole number of bytes between 0 and 2**32 - 1.")
        self.max_size = max_size
        self.state = "header"
        self.expected = 0            # payload bytes of the current message
        self._buf = bytearray()      # the partial header or payload
        self.offset = 0              # stream bytes consumed so far
        self.messages = 0            # complete messages returned so far
        self.high_water = 0          # largest `buffered` ever seen
        self.error: FramingError | None = None

    @property
    def bound(self) -> int:
        """The most bytes this parser may ever hold: a header, or one payload (the header
        bytes are dropped once the length is read)."""
        return max(HEADER.size, self.max_size)

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete header or payload."""
        return len(self._buf)

    def _fail(self, err: FramingError) -> FramingError:
        self.state = "failed"
        self.error = err
        self._buf = bytearray()
        return err

    def feed(self, data: bytes) -> list[bytes]:
        """Consume *data* (any length, any split); return the messages it completes.

        On a protocol error the exception's ``messages`` attribute holds the messages this
        call completed before the bad byte (they were valid and may still be handled).
        """
        out: list[bytes] = []
        try:
            self._feed(data, out)
        except FramingError as err:
            err.messages = out
            raise
        return out

    def _feed(self, data: bytes, out: list[bytes]) -> None:
        view = _byte_view(data, "feed()")       # a wrong type is the caller's bug, not the peer's
        if self.state == "failed":
            raise FramingError(f"the parser already failed at stream offset {self.error.offset} "
                               f"({self.error.problem}); the stream has lost its framing.",
                               "close the connection; a new connection starts a new parser.",
                               self.error.offset)
        if self.state == "closed":
            raise FramingError("feed() after close(): the stream had already ended.",
                               "create a new FrameParser for a new connection.", self.offset)
        i = 0
        n = len(view)
        while i < n:
            if self.state == "header":
                start = self.offset - len(self._buf)          # where this header began
                take = min(HEADER.size - len(self._buf), n - i)
                self._buf += view[i:i + take]
                i += take
                self.offset += take
                self.high_water = max(self.high_water, len(self._buf))
                have = bytes(self._buf[:len(MAGIC)])
                if have != MAGIC[:len(have)]:
                    raise self._fail(BadMagic(
                        f"bad magic at stream offset {start}: expected {MAGIC!r}, got {have!r}.",
                        "the peer does not speak this protocol, or an earlier length was wrong; "
                        "close the connection.", start))
                if len(self._buf) < HEADER.size:
                    break
                _, length = HEADER.unpack(bytes(self._buf))
                if length > self.max_size:
                    raise self._fail(OversizeFrame(
                        f"the header at stream offset {start} announces {length} bytes, more than "
                        f"max_size={self.max_size}.",
                        "refuse the message and close the connection (a larger limit only if both "
                        "sides agree on it).", start))
                self._buf = bytearray()
                self.expected = length
                self.state = "payload"
                if length == 0:
                    out.append(b"")
                    self.messages += 1
                    self.state = "header"
            else:  # payload
                take = min(self.expected - len(self._buf), n - i)
                if not self._buf and take == self.expected:   # whole payload in this chunk: no copy held
                    out.append(bytes(view[i:i + take]))
                    done = True
                else:
                    self._buf += view[i:i + take]
                    self.high_water = max(self.high_water, len(self._buf))   # before any reset
                    done = len(self._buf) == self.expected
                    if done:
                        out.append(bytes(self._buf))
                        self._buf = bytearray()
                i += take
                self.offset += take
                if not done:
                    break
                self.messages += 1
                self.state = "header"

    def close(self) -> None:
        """End of stream: fine between messages, :class:`TruncatedFrame` inside one."""
        if self.state == "failed":
            return
        state, held = self.state, len(self._buf)
        self.state = "closed"
        if state == "header" and held:
            raise self._fail(TruncatedFrame(
                f"the stream ended {held} byte(s) into a {HEADER.size}-byte header "
                f"(offset {self.offset - held}).",
                "the sender closed early or crashed: discard the partial message.", self.offset - held))
        if state == "payload":
            raise self._fail(TruncatedFrame(
                f"the stream ended after {held} of {self.expected} payload bytes of message "
                f"{self.messages + 1}.",
                "the sender closed early or crashed: discard the partial message.", self.offset - held))

    def __repr__(self) -> str:
        return (f"<FrameParser {self.state}: {self.messages} messages, {self.buffered} bytes held "
                f"(bound {self.bound}), offset {self.offset}>")


def split(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Cut *stream* at the given positions (any order, duplicates and out-of-range ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    edges = [0, *points, len(stream)]
    return [stream[a:b] for a, b in zip(edges, edges[1:])]


def send_message(sock: socket.socket, payload: bytes, max_size: int = DEFAULT_MAX) -> None:
    """Encode one message and send all of it (``sendall`` loops over partial writes)."""
    sock.sendall(encode(payload, max_size))


def recv_messages(sock: socket.socket, parser: FrameParser | None = None, *, recv_size: int = 65536,
                  max_messages: int = 100_000, sizes: list | None = None) -> Iterator[bytes]:
    """Yield messages from *sock* until EOF (bounded by *max_messages*); raises FramingError.

    *sizes*: optional list that receives the size of every recv() result.
    """
    parser = parser or FrameParser()
    count = 0
    while count < max_messages:
        data = sock.recv(recv_size)
        if sizes is not None and data:
            sizes.append(len(data))
        if not data:
            parser.close()
            return
        for m in parser.feed(data):
            yield m
            count += 1
