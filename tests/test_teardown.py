"""Chapter 03_01: FIN teardown, TIME_WAIT and FIN_WAIT_2, live (root) and replayed."""
import copy
import os

import pytest

from helpers import netns, rules
from helpers.errors import CorpusError, ParameterError
from helpers.experiments.teardown import (
    ACTIVE_PATH, check_teardown, fin_segments, fin_wait2, inet_csk_bind_conflict, inet_twsk_alloc,
    inet_twsk_schedule, is_subsequence, parse_proc_tcp, rebind, ss_timer_seconds, state_spans,
    tcp_fin_time, tcp_timewait_expiry, teardown, time_wait_expiry, timeline, tw_overflow)

from conftest import needs_live, needs_netns

PROC = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A1B2 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A1B2 0100007F:C350 08 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C350 0100007F:A1B2 05 00000000:00000000 03:000000BE 00000000     0        0 0 3 0000000000000000
   3: 0100007F:C351 0100007F:A1B2 06 00000000:00000000 03:0000174A 00000000     0        0 0 3 0000000000000000
   4: 0100007F:1F90 0100007F:D000 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
"""


def _no_course_namespaces_left():
    return not [n for n in netns.list_course_namespaces() if n.startswith(f"tcpcourse-{os.getpid()}-")]


# ----------------------------------------------------------------------------- pure parts
def test_parse_proc_tcp_states_substates_and_timers():
    rows = parse_proc_tcp(PROC, {0xA1B2}, clk_tck=100)
    assert [(r["lport"], r["state"], r["timer"], r["timer_s"]) for r in rows] == [
        (0xA1B2, "CLOSE-WAIT", None, None),
        (0xC350, "FIN-WAIT-2", "timewait", 1.9),     # an orphan handed to tcp_time_wait(TCP_FIN_WAIT2)
        (0xC351, "TIME-WAIT", "timewait", 59.62),
    ], "LISTEN rows and other ports are left out"
    assert parse_proc_tcp(PROC, {1}) == []


def test_ss_timer_text():
    assert ss_timer_seconds("59sec") == 59
    assert ss_timer_seconds("1.900ms") == 1.9, "ss prints 1.9 s as 1.900ms"
    assert ss_timer_seconds("900ms") == 0.9
    assert ss_timer_seconds("1min") == 60 and ss_timer_seconds("1min2sec") == 62
    assert ss_timer_seconds("") is None and ss_timer_seconds("soon") is None


def test_state_order_check():
    assert is_subsequence(["ESTAB", "FIN-WAIT-2", "TIME-WAIT"], ACTIVE_PATH)
    assert not is_subsequence(["ESTAB", "TIME-WAIT", "FIN-WAIT-2"], ACTIVE_PATH)
    assert not is_subsequence(["CLOSE-WAIT"], ACTIVE_PATH)


def test_rules():
    m = rules.Machine(release="6.18", hz=250, sysctls={"tcp_fin_timeout": 2, "tcp_max_tw_buckets": 4})
    p = tcp_fin_time(m, 0.2)
    assert p.value == 2 and p.agrees(2.05) and not p.agrees(1.9) and not p.agrees(2.6)
    assert tcp_fin_time(m, 1.0).value == 3.5, "never below 3.5 × RTO"
    assert tcp_fin_time(m, 0.2, linger2=5).value == 5, "TCP_LINGER2 wins over the sysctl"
    assert inet_twsk_alloc(m, 10).value == 4 and inet_twsk_alloc(m, 3).value == 3
    t = inet_twsk_schedule(m, 0.5)
    assert t.value == 59.5 and t.agrees(59.49) and not t.agrees(59.0) and not t.agrees(60)
    assert inet_twsk_schedule(m, 0.5, 1.0).agrees(59), "ss -o reads whole seconds"
    assert [inet_csk_bind_conflict(m, o, n).value for o in (0, 1) for n in (0, 1)] == \
        ["EADDRINUSE", "EADDRINUSE", "EADDRINUSE", "ok"]
    assert rules.tcp_timewait_len(m).value == 60


def test_simultaneous_has_no_last_ack(live_mode):
    with pytest.raises(ParameterError, match="no LAST_ACK"):
        teardown.func(None, first="simultaneous", lose_last_ack=1)
    with pytest.raises(ParameterError, match="half-close"):
        teardown.func(None, first="simultaneous", how="shutdown")


def test_replay_half_close(replay_mode):
    r = teardown(first="client", how="shutdown")
    d = r.data
    assert d["after_eof"] == d["after_eof_len"] > 0, "the server sent after reading EOF; the client read it all"
    fw2 = {row[3] for row in d["samples"] if row[1] == "client" and row[2] == "FIN-WAIT-2"}
    assert fw2 == {None}, "the half-closed client's FIN_WAIT_2 is a full socket without a timer"
    closed = teardown(first="client", how="close")
    assert "timewait" in {row[3] for row in closed.data["samples"] if row[1] == "client" and row[2] == "FIN-WAIT-2"}


def test_parameters_are_checked(replay_mode):
    with pytest.raises(ParameterError):
        teardown(first="nobody")
    with pytest.raises((ParameterError, CorpusError)):
        teardown(first="simultaneous", lose_last_ack=1)    # no such recording: it cannot exist
    with pytest.raises(ParameterError):
        fin_wait2(fin_timeout=0)


# ----------------------------------------------------------------------------- live
@needs_live
@needs_netns
@pytest.mark.parametrize("first,how,lose", [("client", "close", 0), ("server", "close", 1),
                                            ("server", "shutdown", 0), ("simultaneous", "close", 0)])
def test_live_teardown(live_mode, first, how, lose):
    r = teardown(first=first, how=how, lose_last_ack=lose)
    assert r.mode == "live"
    teardown.check(r)
    assert r.seconds < 5
    assert _no_course_namespaces_left(), "the namespace (and its TIME_WAIT entries) is gone"


@needs_live
@needs_netns
def test_live_fin_wait2(live_mode):
    r = fin_wait2(fin_timeout=1)
    fin_wait2.check(r)
    assert r.seconds < 6
    assert _no_course_namespaces_left()


@needs_netns
def test_live_rebind_and_overflow(live_mode):
    r = rebind()
    rebind.check(r)
    o = tw_overflow(max_tw_buckets=4, closes=10)
    tw_overflow.check(o)
    assert o.data["time_wait"] == 4 and o.data["overflow"] == 6
    assert _no_course_namespaces_left()


# ----------------------------------------------------------------------------- replay
def test_replay_every_grid_point(replay_each):
    for params, r in replay_each(teardown, points=7):
        tl = timeline(r)
        assert set(tl) == {"client", "server"}
        spans = state_spans(r)
        assert {"client", "server"} <= set(spans["side"])
    for exp in (fin_wait2, rebind, tw_overflow, time_wait_expiry):
        for params, r in replay_each(exp):
            pass


def test_replay_last_ack_and_time_wait_timer(replay_mode):
    r = teardown(first="client", lose_last_ack=1)
    tl = timeline(r)
    assert "LAST-ACK" in tl["server"] and tl["client"][-1] == "TIME-WAIT"
    tw = r.data["tw_timers"]
    assert [t["side"] for t in tw] == ["client"] and 55 < tw[0]["proc_s"] <= 60
    fins = fin_segments(r)
    assert sum(f["from"] == "server" for f in fins) >= 2, "the server's FIN was retransmitted"


def test_replay_simultaneous_both_time_wait(replay_mode):
    r = teardown(first="simultaneous")
    tl = timeline(r)
    assert tl["client"][-1] == tl["server"][-1] == "TIME-WAIT"
    assert {t["side"] for t in r.data["tw_timers"]} == {"client", "server"}


def test_invariant_catches_a_wrong_result(replay_mode):
    r = teardown(first="client", lose_last_ack=0)
    bad = copy.deepcopy(r)
    bad.data["samples"].append([9.9, "server", "TIME-WAIT", "timewait", 59.0])
    with pytest.raises(AssertionError, match="never enters TIME_WAIT"):
        check_teardown(bad)
    bad = copy.deepcopy(r)
    bad.data["tw_timers"][0]["proc_s"] = 29.0          # as if TIME_WAIT lasted 30 s
    with pytest.raises(AssertionError):
        check_teardown(bad)
    f = fin_wait2(fin_timeout=1)
    bad = copy.deepcopy(f)
    bad.data["orphan"]["gone_after_s"] = 3.0
    with pytest.raises(AssertionError):
        fin_wait2.check(bad)
    o = tw_overflow()
    bad = copy.deepcopy(o)
    bad.data["time_wait"] = 10
    with pytest.raises(AssertionError):
        tw_overflow.check(bad)


def test_replay_time_wait_expiry(replay_mode):
    """The whole 60 s is recorded, never waited for in a test (the recorder runs it live)."""
    r = time_wait_expiry()
    time_wait_expiry.check(r)
    m = r.machine_snapshot()
    p = tcp_timewait_expiry(m)
    assert p.low < 60 < p.high and p.agrees(r.data["gone_after_s"])
    assert not p.agrees(59.0) and not p.agrees(66.0), "the band cannot pass a shortened or a lingering entry"
    bad = copy.deepcopy(r)
    bad.data["gone_after_s"] = 30.0
    with pytest.raises(AssertionError):
        time_wait_expiry.check(bad)
