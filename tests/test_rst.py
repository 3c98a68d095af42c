"""Chapter 03_02: RST and the abortive close, live (root) and replayed, and its kernel rules."""
import copy
import os

import pytest

from helpers import netns, rules
from helpers.errors import CourseError, ParameterError
from helpers.experiments.rst import (SCENARIOS, abort_view, abortive_close, check_linger, dead_peer,
                                     dead_peer_view, linger_timeout, sigpipe, sk_stream_wait_close, tcp_close,
                                     tcp_disconnect_loss, tcp_keepalive_timer, tcp_reset, tcp_write_timeout_user)

from conftest import needs_live, needs_netns


def _mine():
    return [n for n in netns.list_course_namespaces() if n.startswith(f"tcpcourse-{os.getpid()}-")]


# ----------------------------------------------------------------------------- live (root)

@needs_live
@needs_netns
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_live_each_scenario_shows_its_claims(live_mode, scenario):
    r = abortive_close(scenario=scenario)
    assert r.mode == "live" and r.pcap is not None
    abortive_close.check(r)
    v = abort_view(r)
    if scenario in ("linger0", "unread", "write_after_close"):
        assert v.sent > (v.delivered or 0), "an RST destroys data: fewer bytes delivered than sent"
    assert _mine() == [], "the namespace is gone after the run"


@needs_live
@needs_netns
@pytest.mark.parametrize("mechanism", ["keepalive", "user_timeout"])
def test_live_dead_peer(live_mode, mechanism):
    r = dead_peer(mechanism=mechanism)
    dead_peer.check(r)
    assert r.data["error"] == "ETIMEDOUT"
    assert _mine() == [], "the namespace (and its iptables rule) is gone after the run"


# ----------------------------------------------------------------------------- anyone

def test_sigpipe_live_for_everyone(replay_mode):
    r = sigpipe()
    assert r.mode == "live", "plain loopback sockets in child processes: no privileges needed"
    sigpipe.check(r)
    assert r.data["sig_dfl"]["returncode"] == -13


def test_linger_timeout_live_for_everyone(replay_mode):
    r = linger_timeout(linger_s=1)
    assert r.mode == "live"
    check_linger(r, quiet=False)
    z = r.data["zero_window"]
    assert 0.9 < z["close_blocked_s"] < 2.0


def test_replay_every_grid_point_shows_the_claims(replay_each):
    for params, r in replay_each(abortive_close, points=5):
        v = abort_view(r)
        assert v.table().index[0] == params["scenario"]
    for _params, r in replay_each(dead_peer, points=2):
        assert r.pcap is not None


def test_replay_without_privileges(no_capture):
    r = abortive_close(scenario="linger0")
    assert r.mode == "replay" and "CAP_NET_RAW" in r.reason
    d = r.data
    assert d["delivered"] == d["sent"] - d["closer_outq"] and d["closer_outq"] > 0
    r = dead_peer(mechanism="keepalive")
    assert r.mode == "replay"
    v = dead_peer_view(r)
    assert len(v.probes) == r.data["count"]


def _set(key, value=None, add=None):
    """A change to a recorded result's data: set data[key...] to *value*, or add *add* to it."""
    def change(data):
        *path, last = key.split(".")
        for k in path:
            data = data[k]
        data[last] = data[last] + add if add is not None else value
    return change


@pytest.mark.parametrize("exp, params, change, match", [
    (abortive_close, {"scenario": "unread"}, _set("counters.TcpExtTCPAbortOnClose", 0), "TCPAbortOnClose"),
    (abortive_close, {"scenario": "linger0"}, _set("delivered", add=-1), "tcp_disconnect"),
    (abortive_close, {"scenario": "read_timeout"}, _set("ss_after", []), "TIME_WAIT"),
    (abortive_close, {"scenario": "write_after_close"}, _set("second_send_error", "ECONNRESET"), "tcp_reset"),
    (dead_peer, {"mechanism": "keepalive"}, _set("since_connect_s", add=1.0), "tcp_keepalive_timer"),
    (dead_peer, {"mechanism": "user_timeout"}, _set("since_send_s", add=-0.4), "tcp_write_timeout"),
], ids=["unread", "linger0", "read_timeout", "write_after_close", "keepalive", "user_timeout"])
def test_invariant_catches_wrong_results(replay_mode, exp, params, change, match):
    bad = copy.deepcopy(exp(**params))
    exp.check(bad)                    # the recording itself holds
    change(bad.data)
    with pytest.raises(AssertionError, match=match):
        exp.check(bad)


def test_linger_invariant_catches_a_close_that_did_not_block(replay_mode):
    r = linger_timeout(linger_s=1)
    bad = copy.deepcopy(r)
    bad.data["zero_window"]["close_blocked_s"] = 0.01
    with pytest.raises(AssertionError, match="sk_stream_wait_close"):
        linger_timeout.check(bad)


def test_parameters_are_checked(replay_mode):
    with pytest.raises(ParameterError):
        abortive_close(scenario="nonsense")
    with pytest.raises(ParameterError, match="not recorded"):
        dead_peer(mechanism="keepalive", idle=2)     # valid live, but not recorded
    with pytest.raises(ParameterError, match="out of range"):
        dead_peer(idle=60)
    with pytest.raises(ParameterError):
        linger_timeout(linger_s=0)


def test_missing_iptables_is_a_clear_error(monkeypatch, live_mode):
    import helpers.caps as caps
    monkeypatch.setattr(caps, "find_tool", lambda name, real=caps.find_tool: None if name == "iptables" else real(name))
    with pytest.raises(CourseError, match="iptables"):
        dead_peer.func(None, mechanism="keepalive")


# ----------------------------------------------------------------------------- rules

def test_tcp_close_checks_unread_before_linger():
    assert tcp_close(0).value == "FIN"
    assert tcp_close(10).value == "RST (TCPAbortOnClose)"
    assert tcp_close(0, (1, 0)).value == "RST (TCPAbortOnData)"
    assert tcp_close(10, (1, 0)).value == "RST (TCPAbortOnClose)", "unread data is checked first"
    assert tcp_close(0, (1, 5)).value == "FIN", "a non-zero linger closes gracefully"
    assert tcp_close(0, (0, 0)).value == "FIN", "SO_LINGER off"


def test_tcp_reset_errors():
    assert [tcp_reset(s).value for s in ("SYN_SENT", "CLOSE_WAIT", "ESTABLISHED", "FIN_WAIT1")] == \
        ["ECONNREFUSED", "EPIPE", "ECONNRESET", "ECONNRESET"]


def test_loss_and_timer_rules():
    assert tcp_disconnect_loss(65536, 61440).value == 4096
    m = rules.Machine(release="6.18", hz=250)
    k = tcp_keepalive_timer(m, 1, 1, 2)
    assert k.value == 3 == rules.keepalive_deadline(m, 1, 1, 2).value
    assert k.agrees(3.05) and not k.agrees(2.9) and not k.agrees(4.0)
    w = sk_stream_wait_close(m, 2)
    assert w.agrees(2.0) and not w.agrees(1.5) and not w.agrees(3.0)
    u = tcp_write_timeout_user(m, 1500)   # from the first RTO retransmission
    assert u.agrees(1.52) and not u.agrees(1.2) and not u.agrees(2.5)


def test_pictures_and_tables(replay_mode):
    from helpers.experiments.rst import (bytes_table, checked, linger_table, plot_bytes, plot_ladder, render,
                                         render_dead_peer, render_linger)
    runs = [abortive_close(scenario=s) for s in SCENARIOS]
    t = bytes_table(runs)
    assert list(t.index) == list(SCENARIOS)
    assert t.loc["linger0", "lost"] == runs[0].data["closer_outq"] > 0 and t.loc["read_timeout", "lost"] == 0
    assert t.loc["read_timeout", "TIME_WAIT after"] == 1 and t.loc["linger0", "TIME_WAIT after"] == 0
    fig = plot_bytes(runs)
    assert len(fig.axes[0].patches) == 2 * (len(SCENARIOS) - 1), "two bars per scenario that carries data"
    items = render(runs[1])
    assert items[0] is runs[1] and len(items) == 3 and checked(runs[1])[0].equals(items[1])
    assert "keepalive" in plot_ladder(dead_peer(mechanism="keepalive")).axes[0].get_title(loc="left")
    for mech in ("keepalive", "user_timeout"):
        r = dead_peer(mechanism=mech)
        shown = render_dead_peer(r)
        assert shown[0] is r and "ETIMEDOUT" in shown[1] and "between" in shown[1]
    lt = linger_timeout(linger_s=1)
    lt_items = render_linger(lt)
    assert lt_items[0] is lt and list(linger_table(lt).index) == ["reader reads", "zero window"]
    assert "FIN-WAIT-1" in lt_items[-1]
