"""Chapter 01_05 (SO_REUSEPORT sharding): the chi-square function and the experiments."""
import math
import threading

import pytest

from helpers.errors import ParameterError
from helpers.experiments.reuseport import (JOIN_PROBES, OTHER_USER_CASE, SAME_USER_CASE, accept_sharing,
                                           close_table, join_table, render,
                                           reuseport_close, reuseport_hash, reuseport_join,
                                           reuseport_spread, sharing_plot, sharing_table, slow_wait_band,
                                           spread_table)

from helpers.stats import chi2_cdf, chi2_sf, chi_square

from conftest import needs_netns


def test_the_lower_tail_rejects_counts_that_are_too_even():
    """Round-robin counts (exactly equal) pass the usual upper-tail test with p = 1; only
    the lower tail (p_even) calls them suspicious."""
    t = chi_square([250, 250, 250, 250])
    assert t["statistic"] == 0 and t["p_value"] == 1.0 and t["p_even"] < 1e-4
    # but counts are whole numbers: an exactly even split of 1000 in two happens 2.5 % of
    # the time by chance (binomial: C(1000, 500) / 2^1000), and must not be called dealt
    import math
    two = chi_square([500, 500])
    assert two["p_even"] == pytest.approx(math.comb(1000, 500) / 2 ** 1000, rel=0.1)
    assert chi2_cdf(0.352, 3) == pytest.approx(0.05, rel=5e-3)      # the 5 % lower critical value
    assert chi2_cdf(7.815, 3) + chi2_sf(7.815, 3) == pytest.approx(1.0)


# -- chi-square survival function against table values ---------------------------------
@pytest.mark.parametrize("x, dof, p", [
    (3.841, 1, 0.05), (6.635, 1, 0.01), (10.828, 1, 0.001),
    (5.991, 2, 0.05), (9.210, 2, 0.01),
    (7.815, 3, 0.05), (11.345, 3, 0.01),
    (9.488, 4, 0.05), (11.070, 5, 0.05), (14.067, 7, 0.05),
    (24.996, 15, 0.05), (30.578, 15, 0.01), (2.366, 3, 0.5),
])
def test_chi2_sf_table_values(x, dof, p):
    assert chi2_sf(x, dof) == pytest.approx(p, rel=2e-3)


def test_chi2_sf_edges_and_closed_forms():
    assert chi2_sf(0, 3) == 1.0 and chi2_sf(-1, 2) == 1.0
    assert chi2_sf(2.0, 2) == pytest.approx(math.exp(-1.0))          # dof 2 is an exponential
    assert chi2_sf(4.0, 1) == pytest.approx(math.erfc(math.sqrt(2.0)))
    assert chi2_sf(1e4, 15) < 1e-300 or chi2_sf(1e4, 15) == 0.0
    xs = [0.5 * i for i in range(60)]
    for dof in (1, 2, 3, 8, 15):
        ps = [chi2_sf(x, dof) for x in xs]
        assert all(a >= b for a, b in zip(ps, ps[1:])), "a survival function never rises"
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            chi2_sf(1.0, bad)


def test_chi_square_statistic():
    t = chi_square([256, 245, 253, 246])                              # COURSE.md's measurement
    assert t["expected"] == 250 and t["dof"] == 3
    assert t["statistic"] == pytest.approx((36 + 25 + 9 + 16) / 250)
    assert t["p_value"] > 0.9
    assert chi_square([400, 200, 200, 200])["p_value"] < 1e-10
    assert chi_square([10])["p_value"] is None


# -- live experiments (no privileges) --------------------------------------------------
def test_spread_live_even_in_replay_mode(replay_mode):
    before = threading.active_count()
    r = reuseport_spread(n=4)
    assert r.mode == "live"                  # needs nothing: always live
    reuseport_spread.check(r)
    assert sum(r.data["counts"]) == 1000 and len(r.data["counts"]) == 4
    assert r.seconds < 5
    assert spread_table(r)["connections"].sum() == 1000
    items = render(r)
    assert items[0] is r and "p =" in items[1]
    fig = items[-1]
    assert any(getattr(a, "get_gid", lambda: None)() == "expected" for a in fig.axes[0].get_children())
    assert threading.active_count() == before


def test_spread_one_listener_and_many():
    r1 = reuseport_spread(n=1, connections=200)
    reuseport_spread.check(r1)
    assert r1.data["counts"] == [200] and r1.data["chi_square"]["p_value"] is None
    r16 = reuseport_spread(n=16, connections=500)
    reuseport_spread.check(r16)
    rows = r16.data["first_batch"]["ss_listen"]
    assert sorted(r["listener"] for r in rows) == list(range(16)), "every ss row matched to a listener"
    # the order ss prints them in is a detail of the listening hash (IPv4 adds at the head,
    # IPv6 at the tail): not asserted; the inode match is what ties a row to its listener


@pytest.mark.parametrize("bad", [0, 17, "x", 2.5, None])
def test_spread_rejects_bad_n(bad):
    with pytest.raises(ParameterError):
        reuseport_spread(n=bad)


def test_hash_is_a_function_of_the_tuple():
    r = reuseport_hash(n=2, sources=16, repeats=3)
    reuseport_hash.check(r)
    assert all(len(set(row["first"])) == 1 for row in r.data["rows"])


def test_hash_deals_ports_evenly_over_the_listeners():
    r = reuseport_hash(n=8, sources=16, repeats=2)
    reuseport_hash.check(r)
    firsts = [row["first"][0] for row in r.data["rows"]]
    assert sorted(firsts) == sorted(list(range(8)) * 2), "two client ports per listener, listener 0 included"
    assert r.data["probes"] >= 16
    assert all(20000 <= row["sport"] < 30000 for row in r.data["rows"]), "client ports below the ephemeral range"


def test_join_needs_the_option_on_both_sockets():
    r = reuseport_join()
    reuseport_join.check(r)
    got = {c["case"]: c["bind"] for c in r.data["cases"]}
    assert got["both set SO_REUSEPORT"] == "ok"
    assert got["only the newcomer set it"] == got["only the first set it"] == "EADDRINUSE"
    assert got["the first set it after bind()"] == got["the first set it after listen()"] == "ok"
    assert got[SAME_USER_CASE] == "ok", "the control: a child process of the same user may join"
    t = join_table(r)
    shared = t.dropna(subset=["accepted by first"])
    assert len(shared) == 3 and ((shared["accepted by first"] + shared["accepted by newcomer"]) == JOIN_PROBES).all()


def test_join_other_user_is_refused():
    import os
    r = reuseport_join()
    got = {c["case"]: c["bind"] for c in r.data["cases"]}
    if os.geteuid() == 0:
        assert got[OTHER_USER_CASE] == "EADDRINUSE", "same-user rule"
    else:
        assert got[OTHER_USER_CASE].startswith("not measured")


def test_accept_sharing_slow_worker():
    before = threading.active_count()
    r = accept_sharing(n=4, slow_ms=4)
    accept_sharing.check(r)
    t = sharing_table(r)
    assert t["connections"].sum() == 2 * 200
    lo, hi = slow_wait_band(r.data)
    assert lo <= r.data["reuseport"]["wait"][0]["median_ms"] <= hi
    fig = sharing_plot(r)
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt
    plt.close(fig)
    assert threading.active_count() == before, "every worker thread is joined"


def test_no_sockets_left_behind():
    import os
    fds_before = len(os.listdir("/proc/self/fd"))
    reuseport_spread(n=4, connections=300)
    reuseport_hash(n=2, sources=12, repeats=2)
    reuseport_join()
    accept_sharing(n=2, slow_ms=0, connections=100)
    assert len(os.listdir("/proc/self/fd")) == fds_before


# -- closing a listener: namespace live, corpus in replay ------------------------------
@needs_netns
@pytest.mark.parametrize("migrate", [0, 1])
def test_close_live(live_mode, migrate):
    r = reuseport_close(migrate=migrate)
    assert r.mode == "live"
    reuseport_close.check(r)
    assert close_table(r)["closed"].sum() == 1


@pytest.mark.parametrize("migrate", [0, 1])
def test_close_replay(replay_mode, migrate):
    r = reuseport_close(migrate=migrate)
    assert r.mode == "replay" and r.pcap is None
    reuseport_close.check(r)
    if migrate:
        assert r.data["outcome"]["reset"] == 0
    else:
        assert r.data["outcome"]["reset"] == r.data["queues_before"][r.data["victim"]]


def test_close_rejects_unrecorded_value(replay_mode):
    with pytest.raises(ParameterError):
        reuseport_close(migrate=2)


def test_a_reuseport_bpf_program_steers_every_connection():
    """SO_ATTACH_REUSEPORT_CBPF 'ret #k': listener k (listen() order) gets them all."""
    from helpers.experiments.reuseport import reuseport_steer
    for target in (0, 3):
        r = reuseport_steer(n=4, target=target)
        reuseport_steer.check(r)
        assert r.data["counts"][target] == r.data["connections"] and r.data["program"] == f"06000000{target:02x}000000"
    r.data["counts"] = [1, 0, 0, r.data["connections"] - 1]    # one went elsewhere
    with pytest.raises(AssertionError, match="sends every connection"):
        reuseport_steer.check(r)
    with pytest.raises(ParameterError):
        reuseport_steer(n=2, target=3)
