"""Chapter 02_05: backpressure (plain sockets, always live)."""
import socket
import time

import pytest

from helpers.errors import ParameterError
from helpers import rules
from conftest import needs_netns
from helpers.experiments.backpressure import (CHUNK, MB, PRODUCERS, SMALL_MSS, eagain_rule, inq, occupancy,
                                              occupancy_plot, outq, peak_moment, producer_memory, render,
                                              send_blocks, sndbuf_after_connect, sndbuf_metrics, sndbuf_rule,
                                              summary)


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


def test_sndbuf_is_sized_at_connect_by_tcp_sndbuf_expand():
    """Cold or warm metrics cache, bbr or cubic/reno: the send buffer right after connect()
    is tcp_sndbuf_expand() of the connection's own inputs, and the reordering it started
    with is the one the metrics cache held (or tcp_reordering)."""
    m = rules.machine()
    lo = sndbuf_after_connect()
    small = sndbuf_after_connect(mss=SMALL_MSS)
    for d, mss in ((lo, None), (small, SMALL_MSS)):
        sndbuf_rule(m, d, mss=mss).check(d["after_connect"], "SO_SNDBUF right after connect()")
        assert d["accepted_side"] == d["after_connect"], "the accepted side is sized by the same rule"
        cached = rules.tcp_metrics_reordering(rules.Machine(sysctls=m.sysctls,
                                                            metrics={"127.0.0.1": d["metrics"]}))
        cached.check(d["reordering"], "TCP_INFO reordering right after connect()")
    assert lo["before_connect"] == m.tcp_wmem[1]
    assert small["after_connect"] < lo["after_connect"] and small["mss"] <= SMALL_MSS


def test_eagain_comes_when_the_send_queue_memory_reaches_sndbuf():
    r = send_blocks(sndbuf=16384, pause=0.1)
    d = r.data
    assert d["sndbuf_got"] == d["sndbuf_when_full"], "SO_SNDBUF set: never grown"
    w = next(x for x in d["ss"] if x["side"] == "producer")["skmem_w"]
    eagain_rule(r).check(w, "ss skmem w at EAGAIN")
    assert d["outq"] <= w and d["send_sizes"][-1] < CHUNK
    next(x for x in d["ss"] if x["side"] == "producer")["skmem_w"] = d["sndbuf_when_full"] - 1
    with pytest.raises(AssertionError, match="sk_stream_memory_free"):
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


@needs_netns
def test_sndbuf_metrics_live(live_mode):
    """Host (warm or cold cache) against a fresh namespace (empty cache): each send buffer
    is the rule's for its own machine; the namespace's cache fills after one connection
    and is empty after a flush."""
    r = sndbuf_metrics()
    assert r.mode == "live"
    sndbuf_metrics.check(r)
    assert r.data["ns_first"]["reordering"] == r.machine_snapshot().sysctls.get("tcp_reordering", 3)
    assert r.data["ns_reno"]["cc"] == "reno"


def test_sndbuf_metrics_replay_and_a_wrong_buffer_is_caught(replay_each):
    for _, r in replay_each(sndbuf_metrics, points=1):
        r.data["ns_first"]["after_connect"] += 1
        with pytest.raises(AssertionError, match="tcp_sndbuf_expand"):
            sndbuf_metrics.check(r)
