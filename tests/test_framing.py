"""Chapter 02_04: the length-prefixed protocol, its incremental parser, and the stream experiments."""
import socket

import pytest
from hypothesis import given, settings, strategies as st

from helpers.framing import (DEFAULT_MAX, HEADER, MAGIC, BadMagic, FrameParser, FramingError,
                             OversizeFrame, TruncatedFrame, encode, encode_all, recv_messages, split)

MAX = 300
messages = st.lists(st.binary(max_size=MAX), max_size=20)
cuts = st.lists(st.integers(min_value=0, max_value=8000), max_size=40)


def parse(chunks, max_size=MAX):
    p = FrameParser(max_size=max_size)
    out = []
    for c in chunks:
        out += p.feed(c)
        assert p.buffered <= p.bound
    p.close()
    return out, p


@settings(max_examples=300, deadline=None)
@given(messages, cuts)
def test_any_split_gives_the_same_messages(msgs, cut):
    stream = encode_all(msgs, MAX)
    chunks = split(stream, cut)
    assert b"".join(chunks) == stream
    out, p = parse(chunks)
    assert out == msgs
    assert p.messages == len(msgs) and p.offset == len(stream)
    assert p.high_water <= max(HEADER.size, MAX)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_byte_by_byte(msgs):
    stream = encode_all(msgs, MAX)
    out, _ = parse([stream[i:i + 1] for i in range(len(stream))])
    assert out == msgs


@settings(max_examples=200, deadline=None)
@given(messages, st.integers(min_value=MAX + 1, max_value=2**32 - 1), cuts)
def test_oversize_rejected_before_buffering(msgs, length, cut):
    good = encode_all(msgs, MAX)
    stream = good + HEADER.pack(MAGIC, length) + b"x" * 50
    p = FrameParser(max_size=MAX)
    out = []
    with pytest.raises(OversizeFrame) as e:
        for c in split(stream, cut):
            try:
                out += p.feed(c)
            finally:
                assert p.buffered <= p.bound
    out += e.value.messages
    assert out == msgs, "every message before the bad header is delivered"
    assert e.value.offset == len(good)
    assert str(length) in str(e.value) and "fix:" in str(e.value)
    assert p.state == "failed" and p.buffered == 0
    with pytest.raises(FramingError, match="already failed"):
        p.feed(b"TC")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), cuts)
def test_garbage_never_crashes_or_grows(data, cut):
    p = FrameParser(max_size=MAX)
    try:
        for c in split(data, cut):
            for m in p.feed(c):
                assert len(m) <= MAX
            assert p.buffered <= p.bound
        p.close()
    except FramingError as e:
        assert isinstance(e, (BadMagic, OversizeFrame, TruncatedFrame)) and e.fix


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=MAX), min_size=1, max_size=5), st.data())
def test_truncated_stream_is_reported(msgs, data):
    stream = encode_all(msgs, MAX)
    cut = data.draw(st.integers(min_value=1, max_value=len(stream) - 1)) if len(stream) > 1 else None
    if cut is None:
        return
    p = FrameParser(max_size=MAX)
    p.feed(stream[:cut])
    boundaries = set()
    pos = 0
    for m in msgs:
        pos += HEADER.size + len(m)
        boundaries.add(pos)
    if cut in boundaries:
        p.close()   # a clean boundary is not an error
    else:
        with pytest.raises(TruncatedFrame, match="stream ended"):
            p.close()


def test_bad_magic_rejected_at_the_first_wrong_byte():
    p = FrameParser()
    assert p.feed(encode(b"hello")) == [b"hello"]
    with pytest.raises(BadMagic, match="offset 11") as e:
        p.feed(b"G")          # first byte of 'GET / HTTP/1.1'
    assert e.value.offset == 11


def test_encode_refuses_oversize_and_zero_length_works():
    with pytest.raises(OversizeFrame, match="larger than max_size=4"):
        encode(b"12345", max_size=4)
    assert FrameParser().feed(encode(b"")) == [b""]
    assert len(encode(b"", DEFAULT_MAX)) == HEADER.size


def test_bad_max_size():
    with pytest.raises(ValueError):
        FrameParser(max_size=-1)


def test_recv_messages_over_a_socketpair():
    a, b = socket.socketpair()
    with a, b:
        msgs = [bytes([i]) * i for i in range(50)]
        a.sendall(encode_all(msgs))
        a.shutdown(socket.SHUT_WR)
        sizes = []
        assert list(recv_messages(b, recv_size=7, sizes=sizes)) == msgs
        assert max(sizes) <= 7 and sum(sizes) == len(encode_all(msgs))


# ---------------------------------------------------------------------------- the experiments
from helpers.experiments.framing import (PATTERNS, framed_exchange, partial_writes, streams,  # noqa: E402
                                         three_views)
from conftest import needs_live, needs_netns  # noqa: E402


def test_partial_writes_live_for_everyone(replay_mode):
    r = partial_writes(size=1 << 20, sndbuf=16384)
    assert r.mode == "live"
    partial_writes.check(r)
    assert r.data["sndbuf_got"] == 2 * 16384


@pytest.mark.parametrize("recv_size", [7, 100, 65536])
def test_framed_exchange(recv_size):
    r = framed_exchange(messages=100, recv_size=recv_size)
    framed_exchange.check(r)
    assert r.data["received"] == 100
    if recv_size == 7:
        assert max(r.data["recv_sizes"]) <= 7


def test_streams_replay_every_grid_point(replay_mode):
    grid = streams.grid()
    assert len(grid) == len(PATTERNS) * 2 * 2
    for params in grid:
        r = streams(**params)
        assert r.mode == "replay"
        streams.check(r)
        v = three_views(r)
        assert v["send() returned"].sum() == v["segments on the wire"].sum() == v["recv() returned"].sum()


@needs_live
@needs_netns
def test_streams_live(live_mode):
    r = streams(pattern="1x20000", reader_delay_ms=0, recv_size=4096)   # a value the corpus lacks
    streams.check(r)
    assert max(r.data["recv_sizes"]) <= 4096
