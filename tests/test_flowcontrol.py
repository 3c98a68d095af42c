"""Chapter 02_02: the zero-window experiment, live (root) and replayed."""
import copy
import os

import pytest

from helpers import netns
from helpers.errors import ParameterError
from helpers import rules
from helpers.experiments.flowcontrol import (analyse, plot, plot_start, probe_limits, probe_limits_view, probe_schedule,
                                             probe_table, render, window_closing, zero_window)

from conftest import needs_live, needs_netns


@needs_live
@needs_netns
def test_live_short_pause_shows_the_claims(live_mode):
    r = zero_window(rcvbuf=4096, pause=1)
    assert r.mode == "live"
    zero_window.check(r)
    assert len(probe_table(r)) >= 1
    mine = [n for n in netns.list_course_namespaces() if n.startswith(f"tcpcourse-{os.getpid()}-")]
    assert mine == [], "the namespace is gone after the run"


def test_replay_every_grid_point_shows_the_claims(replay_each):
    for _params, _r in replay_each(zero_window, points=9):   # the fixture asserts the replay and the claims
        pass


def test_replay_probes_double_and_the_receiver_rate_limits_answers(replay_mode):
    r = zero_window(rcvbuf=16384, pause=4)
    sched = probe_schedule(r)
    sched.check(r)                     # gaps against tcp_probe0_when(), answers against tcp_oow_rate_limited()
    t = sched.table
    expected = rules.tcp_oow_rate_limited(r.machine_snapshot(), list(t["t"]), r.data["tcp_invalid_ratelimit_ms"])
    assert list(t["answered"]) == expected.value and not all(expected.value), "a probe soon after an answer gets none"
    assert r.data["counters"]["TcpExtTCPACKSkippedSeq"] == expected.value.count(False)
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
    floor_s = rules.tcp_delack_min(r.machine_snapshot()).value / 1000
    assert ((rt["t"] - rt["orig_t"]) < floor_s).all(), "the loss probe fires before the delayed-ACK floor"
    assert all(isinstance(s["rto_ms"], int) for s in r.data["samples"])


def test_probe_table_is_shown_without_nan(replay_mode):
    from helpers.experiments.flowcontrol import shown
    t = shown(probe_table(zero_window(rcvbuf=16384, pause=2)))
    assert t["ratio"].iloc[0] == "—" and t["since last answer"].iloc[0] == "—"
    assert not t.isna().any().any()


def test_replay_zoom_and_window_rule(replay_mode):
    r = zero_window(rcvbuf=16384, pause=2)
    fig = plot_start(r, until=0.2)
    assert fig.axes[0].get_xlim() == (0, 0.2)
    w = window_closing(r)
    w.check(r)
    assert w.wins[-1] == 0 and w.delayed_acks == len(w.delayed_ms)


def test_invariant_catches_a_probe_off_the_rule(replay_mode):
    r = zero_window(rcvbuf=4096, pause=4)
    bad = copy.deepcopy(r)
    for s in bad.data["samples"]:
        s["rto_ms"] = s["rto_ms"] * 3       # an RTO three times longer: the gaps no longer fit
    with pytest.raises(AssertionError, match="tcp_probe0_when"):
        zero_window.check(bad)


def test_probe_limits_live_for_everyone(replay_mode):
    r = probe_limits(user_timeout_ms=1000, rto_max_ms=500)
    assert r.mode == "live"            # plain sockets: no privileges needed
    v = probe_limits_view(r)
    v.check(r)
    assert v.writers["user_timeout"]["error"] == "ETIMEDOUT"
    assert v.writers["plain"]["closed"] is None


def test_probe0_rule_doubles_and_caps():
    m = rules.Machine(hz=250)
    gaps = [rules.tcp_probe0_when(m, 200, k, 1000).value for k in range(5)]
    assert gaps == [200, 400, 800, 1000, 1000]
    p = rules.tcp_probe0_when(m, 200, 3)
    assert p.value == 1600 and p.low < 1600 < p.high <= 1600 * 1.125 + 8 + 15
    assert rules.tcp_probe_timer_user_timeout(m, 1500).agrees(1510)
    assert rules.tcp_oow_rate_limited(m, [0.2, 0.6, 1.4, 3.0], 500).value == [True, False, True, True]


def test_one_retransmission_detector():
    """dissect.retransmitted is the course's one detector (plots and 02_02 use it): sequence
    space sent again counts; pure ACKs, a zero-window probe at snd_nxt − 1 and new data do not."""
    import pandas as pd
    from helpers import dissect
    rows = [  # (t, src, sport, flags, seq, len)
        (0.0, "a", 1, "SYN", 0, 0), (0.1, "b", 2, "SYN+ACK", 0, 0), (0.2, "a", 1, "ACK", 1, 0),
        (0.3, "a", 1, "PSH+ACK", 1, 100), (0.4, "a", 1, "PSH+ACK", 101, 100),
        (0.5, "a", 1, "PSH+ACK", 101, 100),          # the second segment again
        (0.6, "a", 1, "ACK", 200, 0),                # a zero-window probe: empty, at snd_nxt − 1
        (0.7, "a", 1, "SYN", 0, 0),                  # a SYN sent again
        (0.8, "b", 2, "ACK", 1, 0)]
    df = pd.DataFrame(rows, columns=["t", "src", "sport", "flags", "seq", "len"])
    assert list(dissect.retransmitted(df)) == [False, False, False, False, False, True, False, True, False]
    rt = dissect.retransmissions(df)
    assert list(rt["t"]) == [0.5, 0.7] and list(rt["orig_t"]) == [0.4, 0.0]
