"""Chapter 02_03: Nagle's algorithm and delayed ACKs, live (plain sockets) and replayed (capture)."""
import pytest

from helpers import rules
from helpers.errors import ParameterError
from helpers.experiments.nagle import (CLIENT_MAXSEG, SETTINGS, TRACE_SETTINGS, expect_stall, latency_figure,
                                       nagle, nagle_trace, request_segments, request_timeline, stall_ms,
                                       stall_ticks, stalled_request, summary)

from conftest import needs_live


def test_expect_stall_rule():
    assert expect_stall(False, False, "off", "two writes", 100, 1448)
    assert expect_stall(False, False, "once", "two writes", 1447, 1448)
    assert not expect_stall(True, False, "off", "two writes", 100, 1448)
    assert not expect_stall(False, True, "off", "two writes", 100, 1448)
    assert not expect_stall(False, False, "every recv", "two writes", 100, 1448)
    assert not expect_stall(False, False, "off", "one write", 100, 1448)
    assert not expect_stall(False, False, "off", "two writes", 1448, 1448)
    # Minshall's variant (Linux) against classic Nagle: a full segment, then a small rest
    assert not expect_stall(False, False, "off", "MSS, then the rest", 1540, 1448)
    assert expect_stall(False, False, "off", "MSS, then the rest", 1540, 1448, minshall=False)
    assert expect_stall(False, False, "off", "two writes", 100, 1448, minshall=False)


def test_linux_nagle_is_minshalls_variant():
    """A full segment then a small one: classic Nagle would hold the small one for the
    delayed ACK of the full one; Linux (tcp_minshall_check) sends it at once."""
    r = nagle(requests=8, **SETTINGS["mss_then_rest"])
    p = r.data["params"]
    assert expect_stall(p["nodelay"], p["cork"], p["quickack"], p["pattern"], p["body"], r.data["mss"], minshall=False)
    nagle.check(r)                       # median under half the delayed-ACK floor
    assert r.data["median_ms"] < stall_ms(r.machine_snapshot())


def test_default_stalls_and_runs_live_even_in_replay_mode(replay_mode):
    r = nagle(requests=8)
    assert r.mode == "live"          # plain sockets: no privileges, always live
    nagle.check(r)                       # median in rules.delack_band, the share in it >= DELACK_SHARE
    m = r.machine_snapshot()
    assert r.data["expect_stall"] and rules.delack_band(m).agrees(r.data["median_ms"])
    assert r.data["first_ms"] < rules.delack_band(m).low
    assert r.data["server_tcp_info"]["ato"] == rules.tcp_delack_min(m).value * 1000
    assert r.data["mss"] == CLIENT_MAXSEG - (12 if m.tcp_timestamps else 0)


@pytest.mark.parametrize("name", ["nodelay", "cork", "one_write", "sendmsg", "quickack_every_recv", "body_2000"])
def test_fixes_remove_the_stall(name):
    r = nagle(requests=8, **SETTINGS[name])
    nagle.check(r)
    assert not r.data["expect_stall"] and r.data["median_ms"] < stall_ms(r.machine_snapshot())


def test_quickack_once_does_not_stick():
    r = nagle(requests=8, quickack="once")
    nagle.check(r)
    assert rules.delack_band(r.machine_snapshot()).agrees(r.data["median_ms"])


def test_summary_ratio_and_figure():
    runs = {"default": nagle(requests=6), "nodelay": nagle(requests=6, nodelay=True)}
    t = summary(runs)
    ratio = runs["default"].data["median_ms"] / runs["nodelay"].data["median_ms"]
    assert t.loc["nodelay", "default ÷ this"] == round(ratio, 1)
    ticks = stall_ticks(runs)
    for name, r in runs.items():         # every stall after the first request, counted once
        assert ticks.loc[name].sum() == sum(x > stall_ms() for x in r.data["latency_ms"][1:])
    fig = latency_figure(runs)
    ax = fig.axes[0]
    assert not ax.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == "median"), "medians: legend only"
    assert all("median" in t.get_text() for t in ax.get_legend().get_texts())


def test_bad_values_are_refused():
    with pytest.raises(ParameterError):
        nagle(quickack="always")
    with pytest.raises(ParameterError):
        nagle(requests=1000)


def test_trace_replay_every_setting(replay_each):
    assert set(TRACE_SETTINGS) <= set(SETTINGS)
    for _, r in replay_each(nagle_trace):
        tl = request_timeline(r)
        assert len(tl) == 5


def test_trace_default_two_pure_acks_and_body_2000_tail(replay_mode):
    tl = request_timeline(nagle_trace(setting="default")).iloc[1:]
    assert (tl["server pure ACKs"] == 2).all()      # timer's ACK of the header, then the body's
    big = request_timeline(nagle_trace(setting="body_2000")).iloc[1:]
    assert (big["segments"] == 3).all()
    assert (big["body after (ms)"] <= big["server ACK after (ms)"]).all()
    assert (big["body ends after (ms)"] >= big["server ACK after (ms)"]).all()
    assert (big["server pure ACKs"] == 1).all()


def test_trace_ladder_of_a_stalled_request(replay_mode):
    from helpers import plots
    r = nagle_trace(setting="default")
    k = stalled_request(r)
    assert 1 < k < r.data["requests"]               # a typical one, not the first or the last
    tl = request_timeline(r)
    assert rules.delack_band(r.machine_snapshot()).agrees(tl.loc[k, "reply after (ms)"])
    seg = request_segments(r, k)
    assert not seg["flags"].str.contains("FIN").any()
    fig = plots.ladder(seg)
    gaps = [t.get_text() for t in fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == "ladder-gap")]
    assert gaps and any("ms" in g for g in gaps), "the ~40 ms pause is drawn"


@needs_live
def test_trace_live(live_mode):
    r = nagle_trace(setting="quickack_once")
    assert r.mode == "live" and r.pcap.exists()
    nagle_trace.check(r)
