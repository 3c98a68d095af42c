"""Chapter 01_03: the accept-queue experiment, live (root) and replayed."""
import pytest

from helpers import netns
from helpers.errors import CourseError, ParameterError
from helpers.experiments.queues import (accept_queue, fates, late_count, overflow_sources, render,
                                        retry_gaps, synack_retransmissions)

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
    assert netns.list_course_namespaces() == [], "the namespace is gone after the run"


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
        assert abs(over - src["total"]) <= 2, (params, over, src)
        table = fates(r)
        assert len(table) == params["clients"] + late_count(params["backlog"])


def test_replay_abort_0_late_client_story(replay_mode):
    r = accept_queue(backlog=2, clients=6, abort_on_overflow=0)
    for port, times in synack_retransmissions(r).items():
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert 0.8 <= gaps[0] <= 1.3 and 1.7 <= gaps[1] <= 2.5, "SYN-ACK retries double: 1 s, then 2 s"
    items = render(r)
    assert items[0] is r and len(items) == 4


def test_parameters_are_checked(replay_mode):
    with pytest.raises(ParameterError, match="out of range"):
        accept_queue(backlog=0)
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
    assert [late_count(b) for b in (1, 2, 4, 16)] == [1, 2, 2, 2]
