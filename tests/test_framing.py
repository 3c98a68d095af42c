"""Chapter 02_04: the length-prefixed protocol, its incremental parser, and the stream experiments."""
import socket

import pytest
from hypothesis import given, settings, strategies as st

from helpers.errors import ParameterError
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


def _expected_high_water(msgs, chunks):
    """The parser copies a header always, a payload only when it spans a chunk boundary."""
    cuts, pos = set(), 0
    for c in chunks[:-1]:
        pos += len(c)
        cuts.add(pos)
    held, start = 0, 0
    for m in msgs:
        held = max(held, HEADER.size)
        a, b = start + HEADER.size, start + HEADER.size + len(m)
        if any(a < c < b for c in cuts):
            held = max(held, len(m))
        start = b
    return held


@settings(max_examples=300, deadline=None)
@given(messages, cuts)
def test_high_water_is_the_most_ever_held(msgs, cut):
    chunks = split(encode_all(msgs, MAX), cut)
    p = FrameParser(max_size=MAX)
    for c in chunks:
        p.feed(c)
        assert p.buffered <= p.high_water <= p.bound
    assert p.high_water == _expected_high_water(msgs, chunks)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=2, max_size=MAX), st.data())
def test_payload_split_in_halves_counts_the_whole_payload(payload, data):
    frame = encode(payload, MAX)
    half = HEADER.size + data.draw(st.integers(min_value=1, max_value=len(payload) - 1))
    p = FrameParser(max_size=MAX)
    assert p.feed(frame[:half]) == []
    assert p.buffered == half - HEADER.size
    assert p.feed(frame[half:]) == [payload]
    assert p.high_water == max(HEADER.size, len(payload)) and p.buffered == 0


not_bytes = st.one_of(st.integers(), st.text(min_size=1), st.floats(), st.none(),
                      st.lists(st.integers(0, 255), min_size=1), st.dictionaries(st.text(), st.integers()))


@settings(max_examples=200, deadline=None)
@given(not_bytes, messages)
def test_non_bytes_input_is_a_parameter_error(bad, msgs):
    p = FrameParser(max_size=MAX)
    with pytest.raises(ParameterError, match="needs bytes") as e:
        p.feed(bad)
    assert e.value.fix and not isinstance(e.value, FramingError)
    assert p.state == "header" and p.offset == 0, "a wrong call does not break the parser"
    out = p.feed(encode_all(msgs, MAX))
    assert out == msgs
    with pytest.raises(ParameterError):
        encode(bad)


def test_bytes_like_inputs_are_accepted():
    from array import array
    frame = encode(b"hi")
    for kind in (bytes, bytearray, memoryview):
        assert FrameParser().feed(kind(frame)) == [b"hi"]
    assert encode(array("H", [1])) == HEADER.pack(MAGIC, 2) + array("H", [1]).tobytes()


def test_huge_int_is_refused_without_allocating():
    with pytest.raises(ParameterError):
        FrameParser().feed(10 ** 10)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_byte_by_byte(msgs):
    stream = encode_all(msgs, MAX)
    out, p = parse([stream[i:i + 1] for i in range(len(stream))])
    assert out == msgs
    assert p.high_water == max([HEADER.size] * bool(msgs) + [len(m) for m in msgs], default=0)


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
    assert p.high_water <= max(HEADER.size, max((len(m) for m in msgs), default=0)), \
        "none of the oversize payload was stored"
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
from helpers.experiments.framing import (PATTERNS, acks_between_sends, check_frames_in,  # noqa: E402
                                         framed_exchange, message_cuts, partial_writes, streams,
                                         three_views)
from conftest import needs_live, needs_netns  # noqa: E402


def test_partial_writes_live_for_everyone(replay_mode):
    r = partial_writes(size=1 << 20, sndbuf=16384)
    assert r.mode == "live"
    partial_writes.check(r)
    from helpers import rules
    from helpers.experiments.framing import queues_at_eagain
    m = r.machine_snapshot()
    assert r.data["sndbuf_got"] == rules.sock_setsockopt_buf(16384, m.wmem_max).value
    q = queues_at_eagain(r)
    assert q.outq_nsd == q.notsent and q.inq == q.acked + q.unacked
    assert q.notsent == 0 or not q.why_unsent().startswith("neither")


@pytest.mark.parametrize("recv_size", [7, 100, 65536])
def test_framed_exchange(recv_size):
    r = framed_exchange(messages=100, recv_size=recv_size)
    framed_exchange.check(r)
    assert r.data["received"] == 100
    if recv_size == 7:
        assert max(r.data["recv_sizes"]) <= 7
    if recv_size < 65536:
        assert r.data["recv_cuts_inside"] > 0
        cuts = message_cuts(r)
        assert len(cuts) == 8 and (cuts["recv() ends inside at"] != "–").any()


def _frames_right(chunks):
    p, out = FrameParser(), []
    for c in chunks:
        out += p.feed(c)
    p.close()
    return out


def _frames_no_close(chunks):
    p, out = FrameParser(), []
    for c in chunks:
        out += p.feed(c)
    return out


def _frames_no_return(chunks):
    _frames_right(chunks)


def _frames_stub(chunks):
    raise NotImplementedError


@pytest.mark.parametrize("fn, verdict, says", [
    (_frames_right, True, "✓"), (_frames_no_close, False, "cut off"),
    (_frames_no_return, False, "forget `return`"), (_frames_stub, False, "not answered"),
    (lambda chunks: [m for c in chunks for m in FrameParser().feed(c)], False, "✗"),
])
def test_exercise_2_checker(fn, verdict, says, capsys):
    assert check_frames_in(fn) is verdict
    assert says in capsys.readouterr().out


def test_streams_replay_every_grid_point(replay_each):
    for _, r in replay_each(streams, points=len(PATTERNS) * 2 * 2):
        v = three_views(r)
        assert v["send() returned"].sum() == v["segments on the wire"].sum() == v["recv() returned"].sum()
        acks = acks_between_sends(r)
        assert len(acks) == v["segments on the wire"].count()


@needs_live
@needs_netns
def test_streams_live(live_mode):
    r = streams(pattern="1x20000", reader_delay_ms=0, recv_size=4096)   # a value the corpus lacks
    streams.check(r)
    assert max(r.data["recv_sizes"]) <= 4096


def test_coalescing_replay_nagle_against_a_delaying_peer(replay_mode):
    from helpers.experiments.framing import coalescing, coalescing_view
    r = coalescing(nodelay=False)
    coalescing.check(r)
    v = coalescing_view(r)
    assert v.sizes[0] == v.send_size and len(v.sizes) < v.sends, "the first alone, the rest coalesced"
    nd = coalescing_view(coalescing(nodelay=True))
    assert nd.sizes == [nd.send_size] * nd.sends


def test_coalescing_invariant_catches_one_segment_per_send(replay_mode):
    import copy
    from helpers.experiments.framing import Coalescing, coalescing
    r = coalescing(nodelay=False)
    bad = Coalescing(sizes=[100] * 10, first_ack_ms=44.0, nodelay=False, sends=10, send_size=100,
                     sends_done_ms=0.1, mss=1448)
    with pytest.raises(AssertionError, match="Nagle"):
        bad.check(copy.deepcopy(r))


@needs_live
@needs_netns
def test_coalescing_live(live_mode):
    from helpers.experiments.framing import coalescing
    r = coalescing(nodelay=False)
    assert r.mode == "live"
    coalescing.check(r)
