"""The experiment framework and the 01_01 / 01_02 experiments, live and replayed."""
import pytest

from helpers.errors import ParameterError, PrivilegeError
from helpers.experiments import all_experiments
from helpers.experiments.fds import fds, parse_strace
from helpers.experiments.handshake import handshake, kernel_answers, syn_options

from conftest import needs_live


def test_registry_has_chapter_experiments():
    exps = all_experiments()
    assert {"fds", "handshake", "kernel_answers"} <= set(exps)
    for e in exps.values():
        assert e.__doc__ and e.chapter and e.claim


def test_fds_live_without_privileges(replay_mode):
    # needs nothing: even in replay mode it runs live
    r = fds(clients=4)
    assert r.mode == "live"
    fds.check(r)
    assert len(r.data["accepted"]) == 4


def test_fds_rejects_bad_counts():
    with pytest.raises(ParameterError, match="out of range"):
        fds(clients=0)


def test_parse_strace():
    text = ('123 socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_IP) = 3\n'
            '123 close(7) = 0\n'
            '123 listen(3, 8) = 0\n'
            '123 accept4(3, {sa_family=AF_INET}, [16], SOCK_CLOEXEC) = 4\n'
            '123 close(4) = 0\n'
            '123 connect(5, {...}, 16) = -1 ECONNREFUSED (Connection refused)\n')
    rows = parse_strace(text)
    assert [r["call"] for r in rows] == ["socket", "listen", "accept4", "close", "connect"]
    assert rows[-1]["ret"] == -1 and "ECONNREFUSED" in rows[-1]["error"]


@needs_live
def test_handshake_live(live_mode):
    r = handshake(mss=1400, rcvbuf=65536)
    assert r.mode == "live" and r.pcap.exists()
    handshake.check(r)
    opts = syn_options(r)
    assert opts.query("segment == 'SYN'")["MSS"].tolist() == [1400, 1400]


@needs_live
def test_handshake_live_accepts_unrecorded_values(live_mode):
    r = handshake(mss=536, rcvbuf=4096)
    handshake.check(r)


def test_handshake_replay_every_grid_point(replay_each):
    for _, r in replay_each(handshake):
        assert "REPLAY" in r._repr_html_()


def test_replay_refuses_unrecorded_value(replay_mode):
    with pytest.raises(ParameterError, match="not one of the allowed"):
        handshake(mss=1000)


def test_forced_live_without_capability(monkeypatch, no_capture):
    monkeypatch.setenv("TCPCOURSE_MODE", "live")
    with pytest.raises(PrivilegeError, match="needs live capture"):
        handshake()
    monkeypatch.setenv("TCPCOURSE_MODE", "auto")
    r = handshake()
    assert r.mode == "replay" and "no CAP_NET_RAW" in r.reason


def test_bad_mode_variable(monkeypatch):
    monkeypatch.setenv("TCPCOURSE_MODE", "sometimes")
    with pytest.raises(ParameterError, match="auto, live, replay"):
        handshake()


def test_kernel_answers_live():
    r = kernel_answers(clients=4)
    kernel_answers.check(r)
    assert r.data["listen_recv_q"] == 4


def test_replayed_banner_names_the_data_file_when_there_is_no_pcap(replay_mode):
    """An experiment that records measurements only: the banner names its JSON file."""
    from helpers.experiments.reuseport import reuseport_close
    r = reuseport_close(migrate=0)
    assert r.pcap is None
    text = r.banner_text()
    assert "measurements come from the corpus file reuseport_close/migrate-0.json" in text
    assert "packets" not in text and "live run" in text
