"""The corpus: hashes and invariants verified; tampering and gaps are caught."""
import json
import shutil

import pytest

from helpers import corpus, recorder
from helpers.errors import CorpusError
from helpers.experiments import all_experiments


def test_verify_the_committed_corpus():
    problems = recorder.verify()
    assert problems == [], "\n".join(problems)


def test_corpus_is_small_and_complete():
    assert corpus.total_bytes() < 20e6
    entries = corpus.read_manifest()["entries"]
    for e in entries:
        for key in ("experiment", "chapter", "params", "data", "kernel", "sysctls", "tools", "date", "invariant"):
            assert key in e, f"manifest entry lacks {key}"
        assert "tcpdump" in e["tools"] and "net.ipv4.tcp_syn_linear_timeouts" in e["sysctls"]
    recordable = [e for e in all_experiments().values() if e.records]
    assert recordable, "at least one experiment records"
    assert len(entries) == sum(len(e.grid()) for e in recordable)


@pytest.fixture
def corpus_copy(tmp_path, monkeypatch):
    shutil.copytree(corpus.corpus_dir(), tmp_path / "pcaps")
    monkeypatch.setenv("TCPCOURSE_CORPUS", str(tmp_path / "pcaps"))
    return tmp_path / "pcaps"


def test_tampered_file_is_caught(corpus_copy):
    entry = corpus.read_manifest()["entries"][0]
    path = corpus_copy / entry["pcap"]["path"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = recorder.verify()
    assert any("sha256" in p for p in problems)
    exp = all_experiments()[entry["experiment"]]
    with pytest.raises(CorpusError, match="git checkout pcaps"):
        exp.replay(entry["params"], "test")


def test_missing_file_and_stray_file_are_caught(corpus_copy):
    entry = corpus.read_manifest()["entries"][0]
    (corpus_copy / entry["data"]["path"]).unlink()
    (corpus_copy / "stray.pcap").write_bytes(b"x")
    problems = recorder.verify()
    assert any("missing" in p for p in problems)
    assert any("stray.pcap" in p and "not in the manifest" in p for p in problems)


def test_missing_grid_point_is_caught(corpus_copy):
    m = corpus.read_manifest()
    m["entries"] = m["entries"][1:]
    corpus.manifest_path().write_text(json.dumps(m))
    assert any("grid point not recorded" in p for p in recorder.verify())


def test_invariant_is_rechecked(corpus_copy, monkeypatch):
    exp = all_experiments()["handshake"]

    def failing(result):
        raise AssertionError("claim does not hold")
    monkeypatch.setattr(exp, "invariant", failing)
    assert any("invariant fails" in p for p in recorder.verify())


def test_unknown_recording_names_the_choices():
    all_experiments()  # registers "handshake"
    with pytest.raises(CorpusError, match="recorded:"):
        corpus.find("handshake", {"mss": 999, "rcvbuf": None})
    with pytest.raises(CorpusError, match="no recordings"):
        corpus.find("no-such-experiment", {})


def test_record_keeps_dotted_parameter_values_apart(tmp_path, monkeypatch):
    """A slug like "pause-1.5" has a dot: files must not be named by with_suffix()."""
    from helpers.experiments import base
    from helpers.params import Param

    monkeypatch.setenv("TCPCOURSE_CORPUS", str(tmp_path))
    monkeypatch.setenv("TCPCOURSE_MODE", "live")        # record() sets it; restored afterwards
    monkeypatch.setattr(base.Experiment, "replay_reason", lambda self, mode: None)

    @base.experiment("dotted_test", chapter="99_99", needs={"live_capture"},
                     params=[Param("pause", "pause", 1.0, choices=(1.0, 1.5))])
    def dotted(run, pause=1.0):
        """test only"""
        return {"pause": pause}

    try:
        new = recorder.record(["dotted_test"], progress=lambda *_: None)
        paths = sorted(e["data"]["path"] for e in new)
        assert paths == ["dotted_test/pause-1.0.json", "dotted_test/pause-1.5.json"]
        for pause in (1.0, 1.5):
            assert dotted.replay({"pause": pause}, "test").data == {"pause": pause}
    finally:
        base.REGISTRY.pop("dotted_test", None)
