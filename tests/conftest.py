import os

import pytest

from helpers import caps

os.environ.setdefault("MPLBACKEND", "Agg")


def _live():
    return bool(caps.capabilities().live_capture)


def _netns():
    return bool(caps.capabilities().namespaces)


needs_live = pytest.mark.skipif(not _live(), reason="live capture needs CAP_NET_RAW and tcpdump")
needs_netns = pytest.mark.skipif(not _netns(), reason="namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN")


@pytest.fixture
def live_mode(monkeypatch):
    monkeypatch.setenv("TCPCOURSE_MODE", "live")


@pytest.fixture
def replay_mode(monkeypatch):
    monkeypatch.setenv("TCPCOURSE_MODE", "replay")
