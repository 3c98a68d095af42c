import os

from helpers import caps


def test_table_rows_and_meaning():
    t = caps.table()
    assert list(t.columns) == ["capability", "available", "detail", "what it means if missing"]
    assert len(t) == 5
    for _, row in t.iterrows():
        if row.available == "NO":
            assert row["what it means if missing"]


def test_detection_matches_the_process():
    c = caps.capabilities()
    assert bool(c.namespaces) == (caps.has_cap(caps.CAP_SYS_ADMIN) and caps.has_cap(caps.CAP_NET_ADMIN))
    assert bool(c.raw_sockets) == caps.has_cap(caps.CAP_NET_RAW)
    if os.geteuid() == 0 and caps.has_cap(caps.CAP_NET_RAW):
        assert c.live_capture, c.live_capture.detail


def test_detected_once():
    assert caps.capabilities() is caps.capabilities()


def test_summary_for_bug_reports():
    s = caps.summary()
    assert "kernel=" in s and "live capture" in s


def test_mode(monkeypatch):
    monkeypatch.delenv("TCPCOURSE_MODE", raising=False)
    assert caps.mode() == "auto"
    monkeypatch.setenv("TCPCOURSE_MODE", "REPLAY")
    assert caps.mode() == "replay"
