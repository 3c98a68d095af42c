"""Chapter 03_03: the 4-tuple and port reuse: the rules (pure), the experiments live (the
namespace ones as root) and replayed from the corpus."""
import copy
import os
import subprocess

import pytest

from helpers import netns, rules
from helpers.errors import CourseError, ParameterError
from helpers.experiments.portreuse import (
    _tcp_states, attempts_table, check_exhaustion, check_four_tuples, check_tw_reuse, four_tuple_space,
    four_tuples, inet_csk_find_open_port, inet_hash_connect, parse_ss_pe, port_exhaustion, port_parity,
    reuse_summary, tcp_twsk_unique, tuple_table, tw_reuse, tw_reuse_delay)

from conftest import needs_netns


def _m(rng="40000 40009", **kw):
    sysctls = {"ip_local_port_range": [int(x) for x in rng.split()], "tcp_tw_reuse": 2, "tcp_timestamps": 1}
    sysctls.update(kw)
    return rules.Machine(release="6.18.0", sysctls=sysctls)


# ---------------------------------------------------------------------------- rules
def test_connect_count_is_the_even_range_per_destination():
    assert inet_hash_connect(_m()).value == 10
    assert inet_hash_connect(_m(), 3).value == 30
    assert inet_hash_connect(_m(), 1, reserved=[40002, 40003, 50000]).value == 8
    assert four_tuple_space(_m("32768 60999")).value == 28232
    assert "2^48" in four_tuple_space(_m()).inputs["seed's claim"]


def test_odd_range_is_a_band_and_bind_does_not_share():
    p = inet_hash_connect(_m("40000 40008"), 2)
    assert (p.low, p.high) == (16, 18) and p.agrees(17) and not p.agrees(19)
    b = inet_csk_find_open_port(_m(), 3)
    assert b.value == 10 and not b.band and b.agrees(10) and not b.agrees(30)


def test_parity_rule_and_its_bad_input():
    assert port_parity(_m(), "connect").value == "even"
    assert port_parity(_m(), "bind").value == "odd"
    assert port_parity(_m("40001 40010"), "connect").value == "odd"
    with pytest.raises(ParameterError, match="connect"):
        port_parity(_m(), "listen")
    with pytest.raises(CourseError, match="ip_local_port_range"):
        inet_hash_connect(rules.Machine(sysctls={}))


def test_twsk_unique_truth_table():
    table = {(0, True, 1): False, (1, True, 1): True, (2, True, 1): True, (2, False, 1): False,
             (1, False, 1): True, (2, True, 0): False, (1, False, 0): False}
    for (reuse, loopback, ts), want in table.items():
        got = tcp_twsk_unique(_m(tcp_tw_reuse=reuse, tcp_timestamps=ts), loopback=loopback).value
        assert got is want, (reuse, loopback, ts)


def test_reuse_delay_band_with_and_without_the_sysctl():
    new = tw_reuse_delay(_m(), 1000)
    assert new.low == 1.0 and 1.0 < new.high < 2.0 and new.agrees(1.1) and not new.agrees(0.9)
    old = tw_reuse_delay(_m(), None)
    assert old.low == 1.0 and old.high > 2.0 and old.agrees(1.9)
    assert tw_reuse_delay(_m(), 200).agrees(0.25)


# ---------------------------------------------------------------------------- parsers
SS_TEXT = """\
LISTEN 0      5      127.0.0.1:41000 0.0.0.0:*     users:(("python",pid=77,fd=3)) ino:1001 sk:1 cgroup:/ <->
ESTAB  0      0      127.0.0.1:52344 127.0.0.1:41000 users:(("python",pid=77,fd=4)) uid:1000 ino:1002 sk:2 <->
ESTAB  0      0      127.0.0.1:41000 127.0.0.1:52344 ino:1003 sk:3 <->
"""


def test_parse_ss_pe():
    rows = parse_ss_pe(SS_TEXT)
    assert [r["ino"] for r in rows] == [1001, 1002, 1003]
    assert rows[0]["pport"] is None and rows[1]["users"] == [{"comm": "python", "pid": 77, "fd": 4}]
    assert rows[2]["users"] == [] and (rows[2]["lport"], rows[2]["pport"]) == (41000, 52344)


PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:9C40 0100007F:1388 06 00000000:00000000 03:00000a3c 00000000     0        0 0 3
   2: 0100007F:9C41 0100007F:1388 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   3: 0100007F:1388 0100007F:9C41 01 00000000:00000000 00:00000000 00000000     0        0 3 1
"""


def test_tcp_states_counts_only_the_range():
    assert _tcp_states(PROC_TCP, 40000, 40003) == {"ESTABLISHED": 1, "TIME_WAIT": 1, "server TIME_WAIT": 0}
    server_tw = PROC_TCP.replace("0100007F:1388 0100007F:9C41 01", "0100007F:1388 0100007F:9C41 06")
    assert _tcp_states(server_tw, 40000, 40003)["server TIME_WAIT"] == 1


# ---------------------------------------------------------------------------- four_tuples (no privileges)
def _timewait_on(port):
    out = subprocess.run(["ss", "-tanH", "state", "time-wait", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True, timeout=30).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_four_tuples_live_for_anyone():
    r = four_tuples(n=4)
    assert r.mode == "live"
    four_tuples.check(r)
    d = r.data
    fds = [c[w]["fd"] for c in d["connections"] for w in ("client", "server")]
    assert len(set(fds)) == 8 and d["listener"]["fd"] not in fds
    assert d["delivery"]["received"] == {k: d["delivery"]["bytes_each"] for k in d["delivery"]["received"]}
    assert len(tuple_table(r)) == 8
    assert _timewait_on(d["port"]) == [], "the run leaves no TIME_WAIT on the host"


def test_four_tuples_check_catches_a_wrong_tuple():
    r = four_tuples(n=2)
    bad = copy.deepcopy(r)
    bad.data["connections"][0]["client"]["ss"]["lport"] += 1
    with pytest.raises(AssertionError, match="ss gives inode"):
        check_four_tuples(bad)
    bad = copy.deepcopy(r)
    bad.data["delivery"]["headers_seen"][next(iter(bad.data["delivery"]["headers_seen"]))].append(1)
    with pytest.raises(AssertionError, match="written by that client"):
        check_four_tuples(bad)


def test_bad_parameters_are_refused():
    with pytest.raises(ParameterError):
        four_tuples(n=1)
    with pytest.raises(ParameterError):
        port_exhaustion(mode="sendto")
    with pytest.raises(ParameterError):
        tw_reuse(tw_reuse=3)
    with pytest.raises(ParameterError):
        tw_reuse(closer="both")


# ---------------------------------------------------------------------------- namespaces (root)
def _mine():
    return [n for n in netns.list_course_namespaces() if n.startswith(f"tcpcourse-{os.getpid()}-")]


@needs_netns
@pytest.mark.parametrize("mode,dests,want", [("connect", 3, 30), ("bind", 2, 10), ("bind_no_port", 2, 20)])
def test_exhaustion_live(live_mode, mode, dests, want):
    r = port_exhaustion(ports=10, destinations=dests, mode=mode)
    port_exhaustion.check(r)
    assert sum(a["ok"] for a in r.data["attempts"]) == want
    assert r.data["ss_established"] == want
    assert not _mine(), "the namespace is gone after the run"


@needs_netns
def test_exhaustion_live_odd_range_and_reserved_count(live_mode):
    r = port_exhaustion(ports=7, destinations=1, mode="connect")
    port_exhaustion.check(r)
    assert sum(a["ok"] for a in r.data["attempts"]) in (6, 7)


@needs_netns
def test_tw_reuse_live_loopback_default(live_mode):
    r = tw_reuse(tw_reuse=2, dest="loopback", timestamps=1)
    tw_reuse.check(r)
    s = reuse_summary(r)
    assert s["TIME_WAIT ports taken over"] == 4 and s["refused (EADDRNOTAVAIL)"] >= 1
    assert r.seconds < 4
    assert not _mine()


@needs_netns
def test_tw_reuse_live_not_loopback(live_mode):
    r = tw_reuse(tw_reuse=2, dest="other", timestamps=1)
    tw_reuse.check(r)
    assert reuse_summary(r)["TIME_WAIT ports taken over"] == 0
    assert r.data["samples"][-1][2] == 4, "all four ports are still in TIME_WAIT at the end"


@needs_netns
def test_tw_reuse_live_server_closes_first(live_mode):
    r = tw_reuse(tw_reuse=0, dest="loopback", timestamps=1, closer="server")
    tw_reuse.check(r)
    s = reuse_summary(r)
    assert s["connections made"] == 4 and s["refused (EADDRNOTAVAIL)"] == 0 and s["TIME_WAIT ports taken over"] == 0
    assert r.seconds < 3


# ---------------------------------------------------------------------------- replay
def test_replay_exhaustion_grid(replay_each):
    totals = {}
    for params, r in replay_each(port_exhaustion, points=4):
        totals[(params["mode"], params["destinations"])] = sum(a["ok"] for a in r.data["attempts"])
        assert r.machine_snapshot().where.startswith("namespace")
        assert len(attempts_table(r)) == len(r.data["attempts"])
    assert totals == {("connect", 1): 10, ("connect", 3): 30, ("bind", 3): 10, ("bind_no_port", 3): 30}


def test_replay_tw_reuse_grid(replay_each):
    taken = {}
    for params, r in replay_each(tw_reuse, points=7):
        s = reuse_summary(r)
        taken[(params["tw_reuse"], params["dest"], params["timestamps"], params["closer"])] = \
            (s["TIME_WAIT ports taken over"] > 0, s["connections made"] > 0)
    assert taken == {(2, "loopback", 1, "client"): (True, True), (0, "loopback", 1, "client"): (False, False),
                     (1, "loopback", 1, "client"): (True, True), (2, "other", 1, "client"): (False, False),
                     (1, "other", 1, "client"): (True, True), (2, "loopback", 0, "client"): (False, False),
                     (0, "loopback", 1, "server"): (False, True)}


def test_replay_checks_catch_tampering(replay_mode):
    r = port_exhaustion(ports=10, destinations=3, mode="bind_no_port")
    bad = copy.deepcopy(r)
    bad.data["attempts"] = [a for a in bad.data["attempts"] if a["dest"] != "127.0.0.3" or not a["ok"]]
    with pytest.raises(AssertionError):
        check_exhaustion(bad)
    t = tw_reuse(tw_reuse=2, dest="loopback", timestamps=1)
    bad = copy.deepcopy(t)
    next(a for a in bad.data["attempts"] if a["ok"])["age"] = 0.2
    with pytest.raises(AssertionError, match="tcp_twsk_unique"):
        check_tw_reuse(bad)
    with pytest.raises(ParameterError, match="recorded"):
        port_exhaustion(ports=12)
