"""The 01_01 / 01_02 rules (helpers.rules, section "01_01 / 01_02") against hand-computed
values and against this machine, and the 01_02 experiments that use them."""
import dataclasses
import socket

import pytest

from helpers import rules
from helpers.experiments.fds import fd_reuse, fds, listen_step
from helpers.experiments.handshake import (autotuning, handshake, rcvbuf_autotuning, reader_agreement,
                                           sack_blocks, sack_view, scaled_window, syn_checks, synack_options,
                                           synack_prediction, synack_seen)

from conftest import needs_live, needs_netns


def machine(**sysctls):
    base = {"tcp_rmem": [4096, 131072, 33554432], "rmem_max": 4194304, "somaxconn": 4096,
            "tcp_sack": 1, "tcp_timestamps": 1, "tcp_window_scaling": 1, "tcp_moderate_rcvbuf": 1}
    return rules.Machine(release="6.18.0", sysctls={**base, **sysctls})


# ---------------------------------------------------------------- rules, by hand
def test_alloc_fd_is_the_lowest_free_not_the_last_freed():
    assert rules.alloc_fd([0, 1, 2]).value == 3
    assert rules.alloc_fd([0, 1, 2, 3, 4, 5, 6, 8]).value == 7      # 7 and 9 free, 9 freed last
    assert rules.alloc_fd([1, 2]).value == 0


def test_sys_listen_caps_the_backlog_at_somaxconn():
    assert rules.sys_listen(machine(), 8).value == 8
    assert rules.sys_listen(machine(somaxconn=4), 8).value == 4
    assert rules.sys_listen(machine(), -1).value == 0


def test_synack_options_answer_the_syn():
    m = machine()
    all_on = rules.tcp_synack_options(m, syn_sack=True, syn_ts=True, syn_wscale=True, mtu=1500).value
    assert all_on == {"mss": 1460, "sack_perm": True, "timestamps": True, "wscale": 10}
    bare = rules.tcp_synack_options(m, syn_sack=False, syn_ts=False, syn_wscale=False, mtu=1500).value
    assert bare == {"mss": 1460, "sack_perm": False, "timestamps": False, "wscale": None}
    server_off = rules.tcp_synack_options(machine(tcp_sack=0), syn_sack=True, syn_ts=True, syn_wscale=True)
    assert server_off.value["sack_perm"] is False and server_off.value["mss"] == 65495


def test_window_scale_on_stock_and_profile_settings():
    assert rules.default_wscale(machine()).value == 10
    stock = machine(tcp_rmem=[4096, 131072, 6291456], rmem_max=212992)
    assert rules.default_wscale(stock).value == 7
    # SO_RCVBUF 1 MiB capped by a stock rmem_max: 425,984 stored, scale from 212,992
    stored = rules.sock_setsockopt_buf(1 << 20, 212992).value
    assert stored == 425984 and rules.default_wscale(stock, rcvbuf=stored).value == 2


def test_autotuning_band_and_lock():
    m = machine()
    free = rules.tcp_rcv_space_adjust(m, 131072, so_rcvbuf_set=False)
    assert (free.low, free.high) == (131073, 33554432) and free.agrees(2_000_000) and not free.agrees(131072)
    assert not free.agrees(33554433), "rmem_max (4 MiB here) is no bound, tcp_rmem[2] is"
    locked = rules.tcp_rcv_space_adjust(m, 131072, so_rcvbuf_set=True)
    assert locked.value == 131072 and not locked.band
    off = rules.tcp_rcv_space_adjust(machine(tcp_moderate_rcvbuf=0), 131072, so_rcvbuf_set=False)
    assert off.value == 131072


def test_tcp_maxseg_bound_to_half_the_peer_window():
    assert rules.tcp_bound_to_half_wnd(65495, 65536, options_len=12).value == 32768   # lo
    assert rules.tcp_bound_to_half_wnd(536, 65536, options_len=12).value == 524
    assert rules.tcp_bound_to_half_wnd(1460, 64240).value == 1460
    assert rules.tcp_bound_to_half_wnd(1460, 400).value == 400          # tiny window: not halved


# ---------------------------------------------------------------- experiments
def test_fd_reuse_tells_lowest_free_from_last_freed(replay_mode):
    r = fds(clients=2)
    fds.check(r)
    reuse = fd_reuse(r)
    assert reuse.freed_order[0] < reuse.freed_order[1]
    assert reuse.reused[0] == reuse.freed_order[0] and reuse.lowest_free_won
    ls = listen_step(r)
    assert ls.ret == 0 and ls.fds_before == ls.fds_after


def test_fd_reuse_check_fails_for_last_freed_first():
    from helpers.experiments.fds import FdReuse
    stack = FdReuse([7, 9], [9, 7], [[0, 1, 2, 3, 4, 5, 6, 8], [0, 1, 2, 3, 4, 5, 6, 8, 9]])
    with pytest.raises(AssertionError):
        stack.check(quiet=True)


def test_rcvbuf_autotuning_live():
    r = rcvbuf_autotuning(rcvbuf=65536)
    rcvbuf_autotuning.check(r)
    a = autotuning(r)
    assert a.unset_end > a.unset_start and a.set_end == a.set_start


def test_handshake_replay_rules_and_readers(replay_each):
    for params, r in replay_each(handshake, points=12):
        m = r.machine_snapshot()
        for sc in syn_checks(r):
            sc.check(m, params, quiet=True)
        if params["rcvbuf"] is None:
            assert syn_checks(r)[0].syn["wscale"] == rules.default_wscale(m).value
        ra = reader_agreement(r, wireshark=False)
        ra.check(quiet=True)


def test_scaled_window_agrees_with_wireshark(replay_each):
    pytest.importorskip("pyshark")
    from helpers.caps import capabilities
    if not capabilities().tshark:
        pytest.skip("no tshark")
    for params, r in list(replay_each(handshake, points=12))[:2]:
        sw = scaled_window(r, wireshark=True)
        assert sw.wireshark is not None
        sw.check()
        if sw.shift:        # a reader that forgot the scale is caught
            with pytest.raises(AssertionError):
                dataclasses.replace(sw, window=sw.field).check()


def test_synack_options_replay(replay_each):
    for params, r in replay_each(synack_options, points=4):
        seen = synack_seen(r)
        assert seen["sack_perm"] == bool(params["client_sack"])
        assert seen["timestamps"] == bool(params["client_timestamps"])
        assert synack_prediction(r).agrees(seen)


def test_sack_blocks_replay(replay_each):
    for params, r in replay_each(sack_blocks, points=2):
        v = sack_view(r)
        assert bool(v.acks_with_sack) == bool(params["sack"])


@needs_live
@needs_netns
def test_synack_options_live(live_mode):
    r = synack_options(client_sack=0, client_timestamps=0)
    synack_options.check(r)
    assert synack_seen(r)["sack_perm"] is False and synack_seen(r)["timestamps"] is False


@needs_live
@needs_netns
def test_sack_blocks_live(live_mode):
    r = sack_blocks(sack=1)
    sack_blocks.check(r)
    assert sack_view(r).acks_with_sack


@needs_live
def test_handshake_live_predictions_on_this_machine(live_mode):
    """The SYN options follow the rules evaluated on this machine (whatever its settings)."""
    r = handshake(rcvbuf=1048576)
    handshake.check(r)
    m = rules.machine()
    stored = rules.sock_setsockopt_buf(1048576, m.rmem_max).value
    assert r.data["client"][0]["so_rcvbuf_got"] == stored
    assert syn_checks(r)[0].syn["wscale"] == rules.default_wscale(m, rcvbuf=stored).value


def test_default_rcvbuf_is_tcp_rmem1():
    with socket.socket() as s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == rules.machine().tcp_rmem[1]
