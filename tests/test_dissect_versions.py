"""Wireshark's expert labels across tshark versions (issue 9, item 10).

Binder images run tshark 3.6 (Ubuntu 22.04) or 4.2 (24.04); Debian 12, where the corpus
was dissected, has 4.0. Only 4.0 can be installed here, so the other versions are
simulated by monkeypatching helpers.wireshark.tshark_version (and, for a tshark that
labelled differently, label_probe); the rules themselves are measured on the installed
tshark with a crafted capture.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pandas as pd
import pytest

from helpers import wireshark
from helpers.dissect import expert, segments, with_expert
from test_dissect import DATA, needs_tshark

V36, V40, V42 = (3, 6, 2), (4, 0, 17), (4, 2, 2)


@pytest.fixture(autouse=True)
def _fresh_notes():
    wireshark._NOTED.clear()
    yield
    wireshark._NOTED.clear()


@pytest.mark.parametrize("text,version", [
    ("TShark (Wireshark) 3.6.2 (Git v3.6.2 packaged as 3.6.2-2)", V36),
    ("Running as user \"root\"\nTShark (Wireshark) 4.2.2 (Git v4.2.2 packaged as "
     "4.2.2-1.1build3).", V42),
    ("TShark (Wireshark) 4.0.17 (Git v4.0.17 packaged as 4.0.17-0+deb12u3).", V40),
    ("tcpdump version 4.99.3", None),
    ("", None),
])
def test_parse_tshark_version(text, version):
    assert wireshark.parse_tshark_version(text) == version


def test_manifest_records_the_corpus_version():
    assert wireshark.manifest_tshark_version() == V40


def test_manifest_version_is_the_most_common(tmp_path, monkeypatch):
    entries = [{"tools": {"tshark": "TShark (Wireshark) 4.2.2 (x)"}}] * 2 + \
              [{"tools": {"tshark": "TShark (Wireshark) 3.6.2 (y)"}}, {"tools": {}}, {}]
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "entries": entries}))
    monkeypatch.setenv("TCPCOURSE_CORPUS", str(tmp_path))
    assert wireshark.manifest_tshark_version() == V42
    (tmp_path / "manifest.json").unlink()
    assert wireshark.manifest_tshark_version() is None


@needs_tshark
def test_installed_version_is_read_from_tshark():
    out = subprocess.run([shutil.which("tshark"), "--version"], capture_output=True,
                         text=True).stdout
    assert wireshark.tshark_version() == wireshark.parse_tshark_version(out)
    assert wireshark.tshark_version()[0] >= 3


@needs_tshark
def test_expert_messages_are_the_installed_tsharks():
    """EXPERT_MESSAGES (what the course prints and asserts) are the names tshark gives
    the expert items in its field glossary."""
    out = subprocess.run(["tshark", "-G", "fields"], capture_output=True, text=True).stdout
    names: dict[str, set[str]] = {}
    for line in out.splitlines():
        cols = line.split("\t")
        if len(cols) > 2 and cols[2].startswith("tcp.analysis."):
            names.setdefault(cols[2], set()).add(cols[1])
    by_label = {lab: f for f, lab in wireshark.EXPERT_LABELS.items()}
    for label, msg in wireshark.EXPERT_MESSAGES.items():
        assert msg in names[by_label[label]], (label, names[by_label[label]])


@pytest.mark.parametrize("running,expect", [
    (V36, "tcp.flags.ns"), (V42, "tcp.completeness.str")])
def test_report_says_what_differs(running, expect):
    text = wireshark.version_report(running, V40)
    assert f"tshark {'.'.join(map(str, running))} here" in text and "4.0.17" in text
    assert expect in text
    other = "tcp.completeness.str" if expect == "tcp.flags.ns" else "tcp.flags.ns"
    assert other not in text                     # only the changes between the two
    since = [c.since for c in wireshark.version_differences(running, V40)]
    assert since == ([(4, 0, 0)] if running == V36 else [(4, 2, 0)])


def test_report_3_6_against_4_2_lists_both_changes():
    assert len(wireshark.version_differences(V36, V42)) == 2
    assert wireshark.version_report((4, 0, 2), V40).startswith("tshark 4.0.2, as the corpus")


@pytest.mark.parametrize("running", [V36, V42])
def test_note_is_printed_once_when_versions_differ(monkeypatch, capsys, running):
    monkeypatch.setattr(wireshark, "tshark_version", lambda: running)
    assert wireshark.note_version_once() is not None
    assert wireshark.note_version_once() is not None
    out = capsys.readouterr().out
    assert out.count("the corpus was dissected with tshark 4.0.17") == 1


def test_no_note_on_the_corpus_version(monkeypatch, capsys):
    monkeypatch.setattr(wireshark, "tshark_version", lambda: (4, 0, 11))
    assert wireshark.note_version_once() is None
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- the probe capture
@needs_tshark
def test_label_probe_measures_the_rules():
    """The installed tshark on the crafted capture: Linux's probe is keep_alive, the
    1-byte probe zero_window_probe, and so on. On 4.0 it is exactly the reference."""
    got = wireshark.label_probe()
    assert "keep_alive" in got[6] and "zero_window_probe" not in got[6]
    assert "zero_window_probe" in got[8]
    assert "zero_window" in got[5] and "window_update" in got[10]
    assert "retransmission" in got[12]
    if wireshark.tshark_version()[:2] == (4, 0):
        assert got == wireshark.PROBE_REFERENCE
        assert wireshark.label_differences() == []


def test_label_differences_name_the_segment(monkeypatch):
    monkeypatch.setattr(wireshark, "tshark_version", lambda: V42)
    found = dict(wireshark.PROBE_REFERENCE)
    found[6] = ("zero_window_probe",)
    diffs = wireshark.label_differences(found)
    assert diffs == ["Linux's zero-window probe (no data, seq = next - 1): tshark 4.2.2 "
                     "says ['zero_window_probe'], tshark 4.0.17 said ['keep_alive']"]


# ---------------------------------------------------------------- assert_labels
def _labelled():
    return pd.DataFrame({"frame": [3, 5, 6], "labels": [(), ("keep_alive",),
                                                        ("keep_alive", "zero_window")]})


def test_assert_labels_passes_and_fails(monkeypatch):
    monkeypatch.setattr(wireshark, "tshark_version", lambda: V40)
    wireshark.assert_labels(_labelled(), [5, 6], "keep_alive", absent=("zero_window_probe",))
    wireshark.assert_labels(_labelled(), _labelled()["frame"] > 4, "keep_alive")
    monkeypatch.setattr(wireshark, "label_probe", lambda: dict(wireshark.PROBE_REFERENCE))
    with pytest.raises(AssertionError, match=r"frame 3: no label") as e:
        wireshark.assert_labels(_labelled(), [3, 5], "keep_alive")
    assert "as the corpus was dissected with (4.0.17)" in str(e.value)
    assert "labels like tshark 4.0.17" in str(e.value)
    with pytest.raises(AssertionError, match=r"frame 6: \['keep_alive', 'zero_window'\]"):
        wireshark.assert_labels(_labelled(), [6], "keep_alive", absent=("zero_window",))
    with pytest.raises(AssertionError, match="no rows selected"):
        wireshark.assert_labels(_labelled(), [99], "keep_alive")


@pytest.mark.parametrize("running", [V36, V42])
def test_assert_labels_on_another_version_says_what_differs(monkeypatch, capsys, running):
    monkeypatch.setattr(wireshark, "tshark_version", lambda: running)
    wireshark.assert_labels(_labelled(), [5, 6], "keep_alive")      # passes, with a note
    out = capsys.readouterr().out
    assert f"tshark {'.'.join(map(str, running))} here" in out and "4.0.17" in out
    changed = dict(wireshark.PROBE_REFERENCE)
    changed[6] = ("zero_window_probe",)
    monkeypatch.setattr(wireshark, "label_probe", lambda: changed)
    labelled = pd.DataFrame({"frame": [6], "labels": [("zero_window_probe",)]})
    with pytest.raises(AssertionError) as e:
        wireshark.assert_labels(labelled, [6], "keep_alive", claim="Linux's probes are "
                                "keep-alives to Wireshark")
    msg = str(e.value)
    assert msg.startswith("Linux's probes are keep-alives to Wireshark: frame 6")
    assert f"tshark {'.'.join(map(str, running))} here" in msg
    assert "Linux's zero-window probe (no data, seq = next - 1): tshark" in msg
    assert "said ['keep_alive']" in msg


def test_assert_labels_needs_labels():
    with pytest.raises(KeyError, match="with_expert"):
        wireshark.assert_labels(pd.DataFrame({"frame": [1]}), [1], "keep_alive")


@needs_tshark
def test_zero_window_fixture_with_assert_labels():
    """What 02_02 asserts, through assert_labels, on the zero-window fixture."""
    e = expert(DATA / "zero_window.pcap")
    assert e.attrs["tshark_version"] == ".".join(map(str, wireshark.tshark_version()))
    df = with_expert(segments(DATA / "zero_window.pcap"), e)
    probes = df.index[(df["len"] == 0) & df["labels"].apply(lambda x: "keep_alive" in x)]
    assert len(probes) >= 2
    wireshark.assert_labels(df, probes, "keep_alive", absent=("zero_window_probe",))
    wireshark.assert_labels(df, df["win"].eq(0) & ~df["flags"].str.contains("RST|SYN|FIN"),
                            "zero_window")
    info = e.loc[e["labels"].apply(lambda x: "zero_window" in x), "info"].iloc[0]
    assert info == wireshark.EXPERT_MESSAGES["zero_window"]
