"""Chapter 02_01: send and receive buffers. No privileges needed: everything runs live,
whatever the mode, and needs no corpus."""
import copy
import socket

import pytest

from helpers import rules
from helpers.errors import ParameterError
from helpers.experiments.buffers import (BUFFER_CHOICES, buffer_sizes, stored_rcvbuf, capacity_sweep, plot_capacity,
                                         plot_sweep, queue_capacity, rcvbuf_before_listen, render,
                                         where_bytes_are, window_table, write_returns)


def test_needs_nothing_and_runs_live_even_in_replay_mode(replay_mode):
    for exp in (buffer_sizes, write_returns, queue_capacity, rcvbuf_before_listen):
        assert not exp.needs and not exp.records
    r = buffer_sizes()
    assert r.mode == "live" and r.pcap is None


def test_the_kernel_doubles_and_clamps():
    r = buffer_sizes()
    buffer_sizes.check(r)
    rows = {row["asked"]: row for row in r.data["rows"]}
    assert rows[4096]["sndbuf"] == rows[4096]["rcvbuf"] == 8192
    assert rows[1 << 24]["sndbuf"] == 2 * r.data["wmem_max"], "capped at wmem_max, then doubled"
    assert rows[1]["sndbuf"] == r.data["min_sndbuf"] > 2


def test_write_returns_before_the_bytes_leave():
    r = write_returns(size=65536)
    write_returns.check(r)
    info = r.data["writer_info"]
    assert info["notsent_bytes"] > 32768, "most of the write never left the writer"
    assert info["snd_mss"] == r.data["first_snd_wnd"] // 2, "segments capped at half the largest window"


@pytest.mark.parametrize("sndbuf,rcvbuf", [(4096, 4096), (65536, 65536), (None, 16384), (262144, 4096)])
def test_queue_capacity_accounts_for_every_byte(sndbuf, rcvbuf):
    r = queue_capacity(sndbuf=sndbuf, rcvbuf=rcvbuf)
    queue_capacity.check(r)
    d = r.data
    assert d["written"] == d["ss"]["writer"]["send_q"] + d["ss"]["reader"]["recv_q"]
    if rcvbuf:
        m = r.machine_snapshot()
        assert d["reader_rcvbuf"] == rules.sock_setsockopt_buf(rcvbuf, m.rmem_max).value


def test_queue_capacity_grows_with_both_buffers():
    """A bigger buffer on either side queues more, in proportion to what the kernel really
    stored (1 MiB asked is 2 MiB with 4 MiB caps, only 425,984 B with a stock 212,992 cap)."""
    m = rules.machine()
    small = queue_capacity(sndbuf=65536, rcvbuf=65536).data["written"]
    more_snd = queue_capacity(sndbuf=1048576, rcvbuf=65536).data["written"]
    more_rcv = queue_capacity(sndbuf=65536, rcvbuf=1048576).data["written"]
    grow_snd = (rules.sock_setsockopt_buf(1048576, m.wmem_max, which="SO_SNDBUF").value
                - rules.sock_setsockopt_buf(65536, m.wmem_max, which="SO_SNDBUF").value)
    grow_rcv = (rules.sock_setsockopt_buf(1048576, m.rmem_max).value
                - rules.sock_setsockopt_buf(65536, m.rmem_max).value)
    # at least a quarter of the extra memory holds payload (skb overhead on the sender,
    # the window's payload share on the receiver)
    assert more_snd - small >= grow_snd / 4, (small, more_snd, grow_snd)
    assert more_rcv - small >= grow_rcv / 4, (small, more_rcv, grow_rcv)


def test_invariant_catches_a_wrong_result():
    r = queue_capacity(sndbuf=16384, rcvbuf=16384)
    bad = copy.deepcopy(r)
    bad.data["written"] += 1
    with pytest.raises(AssertionError, match="Send-Q"):
        queue_capacity.check(bad)
    bad = copy.deepcopy(r)
    bad.data["ss"]["writer"]["skmem_w"] = bad.data["writer_sndbuf"] - 1    # EAGAIN before the buffer was full
    with pytest.raises(AssertionError, match="sk_stream_memory_free"):
        queue_capacity.check(bad)
    bad = copy.deepcopy(r)
    bad.data["writer_info"]["bytes_sent"] += 1
    with pytest.raises(AssertionError, match="transmitted once"):
        queue_capacity.check(bad)


def test_rcvbuf_must_be_set_before_listen():
    r = rcvbuf_before_listen()
    rcvbuf_before_listen.check(r)
    d = r.data
    assert d["before"]["rcv_wscale"] == 0
    # the trap: enlarging the buffer after accept() cannot undo scale 0
    assert d["small_then_big"]["rcvbuf"] == stored_rcvbuf(r, 1 << 20) and d["small_then_big"]["max_snd_wnd"] <= 65535
    assert d["default_then_big"]["max_snd_wnd"] > 65535, "with the default scale the window exceeds 64 KiB"
    table = window_table(r)
    assert list(table.index) == ["before", "after", "small_then_big", "default", "default_then_big"]
    assert table.loc["before", "after_accept"] == "—"
    bad = copy.deepcopy(r)
    bad.data["small_then_big"]["max_snd_wnd"] = 65536
    with pytest.raises(AssertionError, match="65,535"):
        rcvbuf_before_listen.check(bad)


def test_sweep_plot_and_render():
    sweep = capacity_sweep(sndbufs=(16384, 65536), rcvbufs=(16384,), fixed=16384)
    assert list(sweep["varied"]) == ["sndbuf", "sndbuf", "rcvbuf"]
    assert (sweep["written"] == sweep["send_q"] + sweep["recv_q"]).all()
    assert (sweep["snd_wnd"] < sweep["snd_mss"]).all()
    assert {"bytes_retrans", "reader_drops"} <= set(sweep.columns)
    fig = plot_sweep(sweep)
    assert len(fig.axes) == 2
    r = queue_capacity(sndbuf=16384, rcvbuf=65536)
    items = render(r)
    assert items[0] is r and len(items) == 5
    assert list(where_bytes_are(r).index) == ["writer", "reader"]
    assert plot_capacity(r).axes


def test_parameters_are_checked():
    assert None in BUFFER_CHOICES
    with pytest.raises(ParameterError, match="out of range"):
        queue_capacity(sndbuf=10)
    with pytest.raises(ParameterError):
        write_returns(size="big")


def test_window_closed_only_when_the_peer_has_no_room():
    """fill()'s stop test: an idle connection and one whose reader still has room are not
    'full'; one filled against a reader that never reads is."""
    from helpers.experiments.buffers import _Pair, fill
    from helpers.kernel import window_closed
    with _Pair(65536, 1048576) as p:
        assert not window_closed(p.writer), "nothing queued: not full"
        p.writer.send(b"x" * 1000)
        assert not window_closed(p.writer), "a little data and a wide window: not full"
        written, eagain = fill(p.writer)
        assert eagain >= 1 and window_closed(p.writer), "filled against a reader that never reads"
        stored = p.reader.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert written > stored / 2, \
            f"the reader's {stored:,}-byte receive buffer takes its payload share (wrote {written:,})"
