"""Chapter 01_03: the accept-queue experiments, live (root) and replayed, and their kernel rules."""
import os

import pytest

from helpers import netns
from helpers.errors import CourseError, ParameterError
from helpers import rules
from helpers.experiments.queues import (accept_queue, check_retry_gaps, expiry_events, fates, late_count,
                                        limits_table, listen_limits, overflow_sources, render, retry_gaps,
                                        synack_expiry, synack_retransmissions)

from conftest import needs_live, needs_netns


@needs_live
@needs_netns
def test_live_overflow_abort_1_is_fast_and_shows_the_claims(live_mode):
    """backlog 1, 3 clients: 2 get in, 1 retries; the late client is reset at once."""
    r = accept_queue(backlog=1, clients=3, abort_on_overflow=1)
    assert r.mode == "live"
    accept_queue.check(r)
    assert r.data["immediate"] == ["ESTABLISHED", "ESTABLISHED", "SYN_SENT"]
    assert r.data["late_fate"] == ["reset"] and r.data["late_errno"] == ["ECONNRESET"]
    assert len(retry_gaps(r)) == 1
    assert not [n for n in netns.list_course_namespaces() if n.startswith(f"tcpcourse-{os.getpid()}-")], \
        "the namespace is gone after the run"


@needs_live
@needs_netns
def test_live_no_overflow_ends_without_waiting(live_mode):
    r = accept_queue(backlog=4, clients=2, abort_on_overflow=0)
    accept_queue.check(r)
    assert r.seconds < 2.5, "nothing pending: the run must not wait for the accept time"
    assert r.data["t_accept"] is None and r.data["counters"].get("TcpExtListenOverflows", 0) == 0


def test_replay_every_grid_point_shows_the_claims(replay_each):
    for params, r in replay_each(accept_queue, points=12):
        src = overflow_sources(r)
        over = r.data["counters"].get("TcpExtListenOverflows", 0)
        assert over == src["total"], (params, over, src)
        table = fates(r)
        assert len(table) == params["clients"] + late_count(params["backlog"])


def test_replay_abort_0_late_client_story(replay_mode):
    r = accept_queue(backlog=2, clients=6, abort_on_overflow=0)
    m = r.machine_snapshot()
    assert m.where.startswith("namespace"), "the rules use the namespace's snapshot, not the host's"
    for port, times in synack_retransmissions(r).items():
        gaps = [b - a for a, b in zip(times, times[1:])]
        rules.synack_retry_band(m, len(gaps)).check(gaps, quiet=True)
    assert len(check_retry_gaps(r)) == 3
    assert r.data["counters"]["TcpExtTCPLossProbes"] >= 2
    items = render(r)
    assert items[0] is r and len(items) == 4
    assert any("SYN queue" in str(line.get_label()) for line in items[-1].axes[0].lines)


def test_replay_listen_limits(replay_mode):
    r = listen_limits()
    listen_limits.check(r)
    t = limits_table(r)
    assert list(t["accept queue"]) == list(t["rule: min(backlog, somaxconn) + 1"])
    assert {c["backlog"] for c in r.data["cases"]} >= {0, 100}


def test_replay_synack_expiry(replay_mode):
    r = synack_expiry()
    synack_expiry.check(r)
    ev = expiry_events(r)
    assert ev["rst_at"] > r.data["dropped_at"] - r.data["syn_sent_at"] - 0.05


@needs_live
@needs_netns
def test_live_listen_limits_and_expiry(live_mode):
    r = listen_limits()
    assert r.mode == "live"
    listen_limits.check(r)
    e = synack_expiry(synack_retries=1)
    synack_expiry.check(e)
    assert not [n for n in netns.list_course_namespaces() if n.startswith(f"tcpcourse-{os.getpid()}-")]


def test_syn_retry_rule_follows_the_kernel():
    def m(**kw):
        return rules.Machine(release="6.18", hz=250, sysctls={"tcp_syn_retries": 6, **kw})
    assert rules.syn_retry_schedule(m(tcp_syn_linear_timeouts=4)).value == [1, 1, 1, 1, 1, 2, 4, 8, 16, 32, 64]
    assert rules.syn_retry_schedule(m(tcp_syn_linear_timeouts=0)).value == [1, 2, 4, 8, 16, 32, 64]
    assert rules.syn_retry_schedule(m()).value == [1, 2, 4, 8, 16, 32, 64], "absent (before 6.5) = 0"
    assert rules.syn_retry_schedule(m(tcp_syn_linear_timeouts=1), 3).value == [1, 1, 2]
    band = rules.syn_retry_band(m(tcp_syn_linear_timeouts=0), 3)
    assert band.agrees([1.02, 2.03]) and not band.agrees([1.0, 1.0]) and not band.agrees([])
    assert rules.synack_retry_schedule(m(tcp_synack_retries=2)).value == [1, 2]


def test_timer_wheel_granularity():
    m = rules.Machine(release="6.18", hz=250)
    assert [rules.timer_wheel_granularity(m, s).value for s in (0.1, 1, 4, 32)] == [0.004, 0.032, 0.256, 2.048]
    m.hz = 1000
    assert rules.timer_wheel_granularity(m, 1).value == 0.064
    b = rules.syn_ack_recalc(rules.Machine(release="6.18", hz=250, sysctls={"tcp_synack_retries": 1}))
    assert b.value == 3 and b.agrees(3.05) and not b.agrees(2.9) and not b.agrees(3.5)


def test_parameters_are_checked(replay_mode):
    with pytest.raises(ParameterError, match="out of range"):
        accept_queue(backlog=-1)
    with pytest.raises(ParameterError, match="not recorded"):
        accept_queue(backlog=0)       # listen(0) is valid live; replay has only the recorded values
    with pytest.raises(ParameterError, match="not recorded"):
        accept_queue(backlog=3)       # valid live, but replay has only the recorded values
    with pytest.raises(ParameterError):
        accept_queue(abort_on_overflow=2)


def test_missing_iptables_is_a_clear_error(monkeypatch, live_mode):
    import helpers.caps as caps
    real = caps.find_tool
    monkeypatch.setattr(caps, "find_tool", lambda name: None if name == "iptables" else real(name))
    with pytest.raises(CourseError, match="iptables"):
        accept_queue.func(None, backlog=1, clients=1, abort_on_overflow=0)


def test_late_count():
    assert [late_count(b) for b in (0, 1, 2, 4, 16)] == [0, 1, 2, 2, 2]


@needs_live
@needs_netns
def test_live_listen_0_holds_one(live_mode):
    r = accept_queue(backlog=0, clients=3, abort_on_overflow=0)
    accept_queue.check(r)
    assert r.data["immediate"] == ["ESTABLISHED", "SYN_SENT", "SYN_SENT"] and r.data["late_ports"] == []
