"""Chapter 01_04: the SYN-flood guard refuses hostile targets; the flood is bounded; the
experiments show their claims live and replayed."""
import os
import random
import socket
import subprocess
import time

import pytest

from helpers import netns, rawsyn
from helpers.errors import ParameterError, UnsafeTargetError
from helpers.experiments import synflood
from helpers.experiments.synflood import (MAX_FLOOD, MAX_SECONDS, build_syns, check_flood_target,
                                          half_open_lifetime, queue_caps, send_bounded, send_flood,
                                          syn_cookie_anatomy, syn_flood)

from conftest import needs_live, needs_netns


# ------------------------------------------------------------------ guard: refuses before touching anything
@pytest.fixture
def nothing_may_happen(monkeypatch):
    """Fail the test if anything creates a socket, runs a command or builds a packet."""
    touched = []

    def forbid(what):
        def f(*a, **k):
            touched.append(what)
            raise AssertionError(f"the guard let something through: {what}")
        return f
    monkeypatch.setattr(socket, "socket", forbid("socket.socket"))
    monkeypatch.setattr(subprocess, "run", forbid("subprocess.run"))
    monkeypatch.setattr(subprocess, "Popen", forbid("subprocess.Popen"))
    monkeypatch.setattr(netns.Namespace, "socket", forbid("Namespace.socket"))
    monkeypatch.setattr(rawsyn, "build_syns", forbid("build_syns"))
    monkeypatch.setattr(rawsyn, "raw_sender", forbid("raw_sender"))
    return touched


class FakeNamespace(netns.Namespace):
    """Looks like a course namespace but was never opened (no privileges needed)."""

    def __init__(self, name="tcpcourse-1-x"):
        self.name = name
        self.pid = os.getpid()
        self._state = "open"


HOSTILE = [
    # (namespace, target, count, what the message must say)
    (None, "8.8.8.8", 10, "not a loopback"),
    (None, "192.168.1.1", 10, "not a loopback"),
    (None, "10.0.0.1", 10, "not a loopback"),
    (None, "127.0.0.1", 10, "host's own lo"),
    (None, "localhost", 10, "not a numeric"),
    ("default", "127.0.0.1", 10, "not a Namespace object"),
    ("tcpcourse-1-x", "127.0.0.1", 10, "not a Namespace object"),
    (None, "::1", 10, "IPv4"),
    (None, "127.0.0.1", MAX_FLOOD + 1, "outside 0.."),
    (None, "127.0.0.1", -1, "outside 0.."),
    (None, "127.0.0.1", 2.5, "whole number"),
    (None, "127.0.0.1", True, "whole number"),
]


@pytest.mark.parametrize("ns,target,count,message", HOSTILE, ids=lambda v: repr(v)[:20])
def test_guard_refuses_hostile_targets(ns, target, count, message, nothing_may_happen):
    with pytest.raises(UnsafeTargetError, match=message) as err:
        check_flood_target(ns, target, count=count)
    assert err.value.fix, "every refusal names a fix"
    # the flood itself refuses too, before building or creating anything
    with pytest.raises(UnsafeTargetError, match=message):
        send_flood(ns, 80, count, target=target)
    assert nothing_may_happen == []


def test_guard_refuses_a_namespace_it_did_not_create(nothing_may_happen):
    fake = FakeNamespace()    # a course-looking name, but not in this process's registry
    with pytest.raises(UnsafeTargetError, match="not one this process created"):
        send_flood(fake, 80, 10)
    with pytest.raises(UnsafeTargetError, match="not a loopback"):
        send_flood(fake, 80, 10, target="8.8.8.8")
    assert nothing_may_happen == []


@pytest.mark.parametrize("seconds", [0, -1, MAX_SECONDS + 1, float("nan"), "1"])
def test_guard_refuses_unbounded_time(seconds, nothing_may_happen):
    with pytest.raises(UnsafeTargetError, match="seconds"):
        check_flood_target(FakeNamespace(), "127.0.0.1", count=10, seconds=seconds)


@pytest.mark.parametrize("spoof", ["10.98.0.0/16", "0.0.0.0/0", "8.8.8.0/24", None])
def test_guard_refuses_other_source_ranges(spoof, monkeypatch, nothing_may_happen):
    monkeypatch.setattr(netns, "is_course_namespace", lambda ns: True)
    with pytest.raises(UnsafeTargetError, match="documented range"):
        check_flood_target(FakeNamespace(), "127.0.0.1", count=10, spoof_net=spoof)


def test_crafted_sources_must_be_spoofed_range(monkeypatch):
    monkeypatch.setattr(rawsyn, "check_flood_target", lambda *a, **k: pytest.fail("sources are checked first"))
    monkeypatch.setattr(rawsyn, "raw_sender", lambda *a, **k: pytest.fail("nothing may be sent"))
    with pytest.raises(UnsafeTargetError, match="outside 10.99.0.0/16"):
        rawsyn.send_crafted(FakeNamespace(), 80, [{"src": "192.168.1.1", "sport": 1, "seq": 1}])


# ------------------------------------------------------------------ the packets and the bounded loop
def test_build_syns_equals_scapy_packet_by_packet():
    from scapy.layers.inet import IP, TCP

    pkts = build_syns(4242, 500, seed=7)
    srcs = rawsyn.syn_sources(500, 7)
    assert len({(s, p) for s, p, _ in srcs}) == 500, "every SYN its own 4-tuple"
    assert all(rawsyn.ipaddress.ip_address(s) in rawsyn._SPOOF for s, _, _ in srcs)
    for i in random.Random(1).sample(range(500), 40):
        src, sport, seq = srcs[i]
        ref = bytes(IP(src=src, dst="127.0.0.1", id=0) /
                    TCP(sport=sport, dport=4242, flags="S", seq=seq, window=64240, options=[("MSS", 1460)]))
        assert pkts[i] == ref, f"packet {i} differs from scapy's"


def test_build_syns_is_bounded():
    with pytest.raises(UnsafeTargetError):
        build_syns(80, MAX_FLOOD + 1)


def test_send_loop_stops_at_its_time_bound():
    sent = []

    def slow(pkt):
        sent.append(pkt)
        time.sleep(0.001)
    t0 = time.monotonic()
    out = send_bounded(slow, [b"x"] * 10000, count=10000, seconds=0.05, check_every=8)
    assert time.monotonic() - t0 < 0.5
    assert out["stopped"] == "time" and out["sent"] == len(sent) < 10000


def test_send_loop_stops_at_its_count_bound():
    sent = []
    out = send_bounded(sent.append, [b"x"] * 100, count=30, seconds=1, chunks=4,
                       on_chunk=lambda n: sent.append(("chunk", n)))
    assert out["sent"] == 30 and out["stopped"] == "count"
    assert [x for x in sent if isinstance(x, tuple)] == [("chunk", 8), ("chunk", 15), ("chunk", 22), ("chunk", 30)]


def _m(**sysctls):
    from helpers.rules import Machine
    base = {"somaxconn": 4096, "tcp_max_syn_backlog": 256, "tcp_synack_retries": 5}
    return Machine(release="6.18", hz=250, sysctls={**base, **sysctls})


def test_queue_caps_follow_the_kernel_rules():
    assert queue_caps(_m(), 16, 0)["cap"] == 17
    assert queue_caps(_m(), 16, 1)["cap"] == 17
    off = queue_caps(_m(), 1024, 0)
    assert off["cap"] == 256 - 64 + 1 == 193 and off["limit"].startswith("3/4")
    assert queue_caps(_m(), 1024, 1)["cap"] == 1025
    assert queue_caps(_m(), 8000, 1)["cap"] == 4097
    assert queue_caps(_m(somaxconn=4), 1024, 0)["cap"] == 5, "somaxconn clamps the backlog first"
    assert queue_caps(_m(tcp_max_syn_backlog=4096), 1024, 0)["cap"] == 1025, "a big sysctl: the backlog limits"
    assert queue_caps(_m(tcp_syncookies=0), 1024)["cap"] == 193, "cookies default to the machine's sysctl"


def test_queue_caps_before_the_2025_fix():
    """Linux 6.1.0 without the backport counted the SYN queue full at the backlog itself."""
    from helpers.experiments.synflood import cap_phrase, full_queue_cap
    from helpers.rules import Machine
    old = Machine(release="6.1.0", hz=250, sysctls={"somaxconn": 4096, "tcp_max_syn_backlog": 256})
    assert queue_caps(old, 16, 1)["cap"] == full_queue_cap(old, 16) == 16
    assert queue_caps(old, 16, 0)["limit"] == "full queue"
    assert queue_caps(old, 1024, 1)["cap"] == 1024
    assert cap_phrase(old, 16) == "min(16, somaxconn 4096) = 16"
    assert cap_phrase(_m(), 16) == "min(16, somaxconn 4096) + 1 = 17"


def test_half_open_lifetime_rules():
    from helpers import rules
    m = _m()
    assert rules.reqsk_timer_handler(m, 17, 0, 16).value == 2, "over half full, no young entry: down to 2"
    assert rules.reqsk_timer_handler(m, 8, 0, 16).value == 5, "half full: the normal limit"
    assert rules.reqsk_timer_handler(m, 17, 0, 1024).value == 5
    assert rules.reqsk_timer_handler(m, 17, 17, 16).value == 5, "all young: nothing lowered"
    assert synflood.synacks_by(m, 8.7) == 4 and synflood.synacks_by(m, 8.7, 2) == 3
    assert rules.syn_ack_recalc(m).value == 63 and rules.syn_ack_recalc(m, 2).value == 7


def test_cookies_do_not_pass_a_full_accept_queue():
    from helpers import rules
    assert rules.acceptq_and_cookies(_m(tcp_syncookies=1), 4, 10).value == 5
    assert rules.acceptq_and_cookies(_m(tcp_syncookies=1), 16, 10).value == 10


def test_mss_index_and_ts_bits():
    assert [synflood.mss_index(m) for m in (65495, 1460, 1459, 1440, 1300, 1000, 536, 100)] == [3, 3, 2, 2, 1, 0, 0, 0]
    assert synflood.ts_options(7, True) == 23 and synflood.ts_options(None, False) == 15


# ------------------------------------------------------------------ live
@needs_netns
def test_guard_accepts_only_its_own_open_namespace():
    with netns.Namespace() as ns:
        with pytest.raises(UnsafeTargetError, match="not routed to lo"):
            check_flood_target(ns, "127.0.0.1", count=10)
        rawsyn.setup_namespace(ns)
        check_flood_target(ns, "127.0.0.1", count=10)     # allowed
        for target in ("8.8.8.8", "192.168.1.1", "10.0.0.1", "10.99.0.1"):
            with pytest.raises(UnsafeTargetError, match="not a loopback"):
                send_flood(ns, 80, 10, target=target)
        with pytest.raises(UnsafeTargetError, match="not a Namespace object"):
            send_flood(ns.name, 80, 10)          # its name alone is not enough
    with pytest.raises(UnsafeTargetError, match="not one this process created"):
        send_flood(ns, 80, 10)                   # closed
    assert ns.name not in netns.list_course_namespaces()


@needs_netns
def test_flood_stops_at_its_time_bound():
    with netns.Namespace(sysctls={"net.ipv4.tcp_syncookies": 1}) as ns:
        rawsyn.setup_namespace(ns)
        lst = ns.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(16)
        port = lst.getsockname()[1]
        pkts = build_syns(port, MAX_FLOOD)
        t0 = time.monotonic()
        out = send_flood(ns, port, MAX_FLOOD, seconds=0.005, packets=pkts)
        assert time.monotonic() - t0 < 0.5
        assert out["stopped"] == "time" and 0 < out["sent"] < MAX_FLOOD
        from helpers import rules
        assert synflood.syn_recv_count(ns, port) == rules.half_open_cap(rules.Machine.read(ns), 16, 1).value


@needs_netns
@needs_live
@pytest.mark.parametrize("cookies", [0, 1])
def test_syn_flood_live_small(cookies, live_mode):
    r = syn_flood(cookies=cookies, flood=300, backlog=8)
    assert r.mode == "live"
    syn_flood.check(r)
    from helpers import rules
    m = r.machine_snapshot()
    assert r.data["ss_syn_recv"] == rules.half_open_cap(m, 8, cookies).value
    ok = sum(x["connected"] for x in r.data["legit"])
    # cookies get clients past the half-open queue, not past a full accept queue (8 + 1)
    room = rules.acceptq_and_cookies(m, 8, len(r.data["legit"])).value
    assert ok == (room if cookies else 0)
    if cookies:
        assert r.data["counters_legit"]["TcpExtListenOverflows"] == len(r.data["legit"]) - room
    assert not [n for n in netns.list_course_namespaces() if n.startswith(f"tcpcourse-{os.getpid()}-")]


@needs_netns
@needs_live
def test_syn_flood_live_small_flood_leaves_room(live_mode):
    r = syn_flood(cookies=0, flood=5, backlog=64)
    syn_flood.check(r)
    assert r.data["ss_syn_recv"] == 5 and all(x["connected"] for x in r.data["legit"])


@needs_netns
@needs_live
def test_cookie_anatomy_live(live_mode):
    r = syn_cookie_anatomy()
    syn_cookie_anatomy.check(r)


@needs_netns
@needs_live
def test_half_open_lifetime_live(live_mode):
    """About 10 s: the wait is the phenomenon."""
    from helpers import progress

    seen = []
    with progress.listening(lambda f, text: seen.append(f)):
        r = half_open_lifetime()
    half_open_lifetime.check(r)
    assert seen and seen[-1] == 1.0 and len(seen) > 20, "a 9 s wait reports its progress"
    assert not [n for n in netns.list_course_namespaces() if n.startswith(f"tcpcourse-{os.getpid()}-")]


# ------------------------------------------------------------------ replay
def test_syn_flood_replay_every_grid_point(replay_each):
    for _, r in replay_each(syn_flood, points=12):
        items = synflood.render(r)
        assert len(items) == 4 and isinstance(items[1], str)
        rows = dict(zip(*synflood.outcome_table(r).T.values))
        assert rows["TcpExtTCPReqQFullDrop (legitimate)"] == str(r.data["counters_legit"]["TcpExtTCPReqQFullDrop"])
    import matplotlib.pyplot as plt
    fig = synflood.flood_plot([syn_flood(**p) for p in syn_flood.grid()[:3]])
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3
    plt.close("all")


def test_cookie_anatomy_replay(replay_mode):
    r = syn_cookie_anatomy()
    assert r.mode == "replay"
    syn_cookie_anatomy.check(r)
    t = synflood.probe_table(r)
    assert list(t["ISN − base"][:3]) == [0, 0, 1]
    assert str(t["TSval"].dtype) == "Int64" and str(t["ISN − base"].dtype) == "Int64"
    assert t["ISN − base"].isna().sum() == 5, "no difference across 4-tuples (other port, the TS probes)"
    n = r.data["normal"]["server_snd_mss"]
    assert n == synflood.client_max_window(r, "normal") // 2, "half the client's largest window"


def test_half_open_lifetime_replay(replay_mode):
    r = half_open_lifetime()
    assert r.mode == "replay"
    half_open_lifetime.check(r)
    t = synflood.lifetime_table(r)
    assert list(t["entries dropped"]) == [9, 0]
    import matplotlib.pyplot as plt
    synflood.lifetime_plot(r)
    plt.close("all")


def test_lifetime_invariant_rejects_63_s_story(replay_mode):
    """The invariant fails on data where the flooded entries all survived."""
    import copy

    r = half_open_lifetime()
    bad = copy.deepcopy(r)
    small = bad.data["listeners"][0]
    small["entries_end"], small["dropped_at"] = 17, None
    with pytest.raises(AssertionError):
        half_open_lifetime.check(bad)


def test_replay_refuses_unrecorded_flood(replay_mode):
    with pytest.raises(ParameterError, match="not recorded"):
        syn_flood(flood=300)


def test_live_refuses_out_of_bounds_flood(live_mode):
    with pytest.raises(ParameterError, match="out of range"):
        syn_flood(flood=MAX_FLOOD + 1)


@pytest.mark.parametrize("mode", ["live", "auto", "replay"])
@pytest.mark.parametrize("bad, match", [({"flood": MAX_FLOOD + 1}, "out of range"),
                                        ({"flood": -1}, "out of range"),
                                        ({"backlog": 0}, "out of range"),
                                        ({"floods": 10}, "unknown parameter")])
def test_bad_parameters_are_refused_before_privileges(mode, bad, match, monkeypatch):
    """Bad parameters get their own error first, whoever asks: as root, as a plain user
    (where live mode would otherwise stop at the missing privileges), in every mode."""
    monkeypatch.setenv("TCPCOURSE_MODE", mode)
    with pytest.raises(ParameterError, match=match):
        syn_flood(**bad)


def test_nothing_left_behind():
    assert not [n for n in netns.list_course_namespaces() if n.startswith(f"tcpcourse-{os.getpid()}-")]


def test_syn_queue_full_comparison_follows_the_kernel_version():
    from helpers import rules
    base = {"somaxconn": 4096, "tcp_max_syn_backlog": 256}
    new = rules.Machine(release="6.18.44", sysctls=base)
    old = rules.Machine(release="6.1.100", sysctls=base)
    assert rules.half_open_cap(new, 16, 1).value == 17, "6.13+: full only above the backlog"
    assert rules.half_open_cap(old, 16, 1).value == 16, "before the 2025 fix: full at the backlog"
    assert rules.half_open_cap(old, 1024, 0).value == 193, "the ¾ rule is the same on both"
    assert rules.inet_csk_reqsk_queue_is_full_strict(rules.Machine(release="5.15.177"))
    assert not rules.inet_csk_reqsk_queue_is_full_strict(rules.Machine(release="5.15.176"))
