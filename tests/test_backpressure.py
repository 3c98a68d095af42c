"""Chapter 02_05: backpressure (plain sockets, always live)."""
import socket
import time

import pytest

from helpers.errors import ParameterError
from helpers.experiments.backpressure import (CHUNK, MB, PRODUCERS, gso_max_size, inq, occupancy,
                                              occupancy_plot, outq, peak_moment, producer_memory, render,
                                              send_blocks, sndbuf_after_connect, summary)


def test_registered_without_needs():
    for exp in (send_blocks, producer_memory):
        assert exp.needs == set() and not exp.records and exp.chapter == "02_05"


def test_ioctls_count_queued_bytes():
    with socket.create_server(("127.0.0.1", 0)) as lst, socket.create_connection(lst.getsockname()) as c:
        s, _ = lst.accept()
        with s:
            c.sendall(b"x" * 1000)
            deadline = time.monotonic() + 2
            while inq(s) < 1000 and time.monotonic() < deadline:   # loopback is quick; bounded wait
                time.sleep(0.01)
            assert inq(s) == 1000
            s.recv(400)
            assert inq(s) == 600
            assert outq(c) <= 1000


@pytest.mark.parametrize("sndbuf", [None, 16384])
def test_send_blocks_live_in_replay_mode(replay_mode, sndbuf):
    r = send_blocks(sndbuf=sndbuf, pause=0.2)
    assert r.mode == "live"
    send_blocks.check(r)
    d = r.data
    assert d["queued"] == d["outq"] + d["inq"] and d["eagain"] >= 1
    assert d["send_error"] is None


def test_send_blocks_invariant_catches_a_send_that_did_not_block():
    r = send_blocks(pause=0.2)
    r.data["blocked_s"] = 0.01
    with pytest.raises(AssertionError, match="returned after"):
        send_blocks.check(r)


@pytest.mark.parametrize("producer", PRODUCERS)
def test_producer_memory(producer):
    r = producer_memory(producer=producer, total_mb=8, rate_mb_s=64)
    producer_memory.check(r)
    d = r.data
    growth = d["peak_rss"] - d["rss_before"]
    if producer == "asyncio, no drain":
        assert growth > 6 * MB and d["peak_app_buffer"] > 6 * MB
    else:
        assert growth < 4 * MB
    o = occupancy(r)
    assert {"t", "app", "outq", "inq", "rss_growth"} <= set(o.columns) and len(o) > 5
    assert d["pid"] != __import__("os").getpid(), "memory is measured in a child process"


def test_views():
    runs = [producer_memory(producer=p, total_mb=4, rate_mb_s=64) for p in PRODUCERS[:2]]
    fig = occupancy_plot(runs)
    assert len(fig.axes) == 4
    assert [a.get_gid() for a in fig.axes[2].lines if a.get_gid()] == ["peak-rss"]
    s = summary(runs)
    assert list(s.index) == list(PRODUCERS[:2])
    items = render(runs[0])
    assert items[0] is runs[0] and len(items) == 3


def test_producer_memory_invariant_catches_unbounded_memory():
    r = producer_memory(producer="asyncio + drain", total_mb=4, rate_mb_s=64)
    r.data["peak_rss"] = r.data["rss_before"] + 100 * MB
    with pytest.raises(AssertionError, match="bounded"):
        producer_memory.check(r)


def test_rejects_bad_values():
    with pytest.raises(ParameterError):
        producer_memory(producer="threads")
    with pytest.raises(ParameterError, match="out of range"):
        producer_memory(total_mb=1000)
    with pytest.raises(ParameterError, match="out of range"):
        send_blocks(pause=10)


def test_sndbuf_is_sized_at_connect():
    lo = sndbuf_after_connect()
    small = sndbuf_after_connect(mss=1460)
    assert lo["after_connect"] == lo["accepted_side"] > lo["before_connect"]
    assert lo["before_connect"] < small["after_connect"] < lo["after_connect"]
    assert small["mss"] <= 1460


def test_send_queue_exceeds_sndbuf_by_less_than_one_packet_buffer():
    r = send_blocks(sndbuf=16384, pause=0.1)
    d = r.data
    assert d["sndbuf_got"] == 32768 == d["sndbuf_when_full"], "read back with getsockopt"
    assert d["sndbuf_got"] < d["outq"] <= d["sndbuf_got"] + gso_max_size()
    assert d["send_sizes"][-1] < CHUNK
    d["sndbuf_got"] = d["outq"] - d["gso_max_size"] - 1
    with pytest.raises(AssertionError, match="packet buffer"):
        send_blocks.check(r)


def test_peak_moment_and_single_column_plot():
    r = producer_memory(producer="asyncio, no drain", total_mb=8, rate_mb_s=64)
    pm = peak_moment(r)
    assert pm is not None and pm["hwm_growth"] > pm["rss_growth_sampled"] + MB
    assert pm["app_at"] < 0.6 * pm["peak_app_buffer"] < 1.2 * pm["app_before"]
    fig = occupancy_plot([r])
    assert "each column" not in fig._suptitle.get_text()
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert legend.width <= fig.bbox.width, "the legend fits in the figure"
