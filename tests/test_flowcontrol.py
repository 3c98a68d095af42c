"""Chapter 02_02: the zero-window experiment, live (root) and replayed."""
import copy

import pytest

from helpers import netns
from helpers.errors import ParameterError
from helpers.experiments.flowcontrol import analyse, plot, probe_table, render, zero_window

from conftest import needs_live, needs_netns


@needs_live
@needs_netns
def test_live_short_pause_shows_the_claims(live_mode):
    r = zero_window(rcvbuf=4096, pause=1)
    assert r.mode == "live"
    zero_window.check(r)
    assert len(probe_table(r)) >= 1
    assert netns.list_course_namespaces() == [], "the namespace is gone after the run"


def test_replay_every_grid_point_shows_the_claims(replay_each):
    assert len(list(replay_each(zero_window, points=9))) == 9


def test_replay_probes_double_and_the_receiver_rate_limits_answers(replay_mode):
    r = zero_window(rcvbuf=16384, pause=4)
    t = probe_table(r)
    assert len(t) == 4
    assert t["ratio"].dropna().between(1.6, 2.5).all()
    assert list(t["answered"]) == [True, False, True, True], "the 2nd probe comes < 500 ms after the 1st answer"
    assert r.data["counters"]["TcpExtTCPACKSkippedSeq"] == 1
    a = analyse(r)
    assert int(a["update"]["ack"]) == a["zero_ack"] and int(a["update"]["win"]) > 0


def test_replay_without_capture_privileges(no_capture):
    r = zero_window()
    assert r.mode == "replay" and "CAP_NET_RAW" in r.reason
    items = render(r)
    assert items[0] is r and len(items) == 4
    fig = items[-1]
    assert len(fig.axes) == 2
    assert len(plot(r).axes) == 2


def test_invariant_catches_a_wrong_result(replay_mode):
    r = zero_window(rcvbuf=4096, pause=2)
    bad = copy.deepcopy(r)
    bad.data["counters"]["TcpExtTCPWinProbe"] += 1
    with pytest.raises(AssertionError, match="TCPWinProbe"):
        zero_window.check(bad)
    bad = copy.deepcopy(r)
    bad.data["received"] -= 1
    with pytest.raises(AssertionError, match="every byte"):
        zero_window.check(bad)


def test_parameters_are_checked(replay_mode):
    with pytest.raises(ParameterError, match="not recorded"):
        zero_window(pause=3)
    with pytest.raises(ParameterError, match="out of range"):
        zero_window(pause=60)


def test_replay_retransmissions_are_loss_probes_before_the_zero_window(replay_mode):
    r = zero_window(rcvbuf=16384, pause=2)
    a = analyse(r)
    c = r.data["counters"]
    rt = a["retrans"]
    assert len(rt) == c["TcpRetransSegs"] <= c["TcpExtTCPLossProbes"]
    assert c["TcpExtTCPDSACKRecv"] == len(rt) and c["TcpExtTCPTimeouts"] == 0
    assert (rt["t"] < float(a["first_zero"]["t"])).all()
    assert ((rt["t"] - rt["orig_t"]) < 0.04).all(), "the loss probe fires before the 40 ms delayed ACK"
    assert r.data["tcp_rto_max_ms"] == 120000 and r.data["tcp_early_retrans"] == 3
    assert all(isinstance(s["rto_ms"], int) for s in r.data["samples"])


def test_probe_table_is_shown_without_nan(replay_mode):
    from helpers.experiments.flowcontrol import shown
    t = shown(probe_table(zero_window(rcvbuf=16384, pause=2)))
    assert t["ratio"].iloc[0] == "—" and t["since last answer"].iloc[0] == "—"
    assert not t.isna().any().any()
