"""Runs in the replay stage (capabilities really dropped): prove the drop is real and that
the experiments replay instead of failing."""
import os

import pytest

from helpers import caps

pytestmark = pytest.mark.skipif(not os.environ.get("TCPCOURSE_EXPECT_REPLAY"),
                                reason="only meaningful in the replay stage of course.py test")


def test_capabilities_really_dropped():
    eff = caps.effective_caps()
    assert not eff >> caps.CAP_NET_RAW & 1 and not eff >> caps.CAP_NET_ADMIN & 1
    c = caps.capabilities()
    assert not c.live_capture, c.live_capture.detail
    assert not c.namespaces and not c.raw_sockets


def test_tcpdump_itself_refuses():
    from helpers.capture import Capture
    from helpers.errors import PrivilegeError
    with pytest.raises(PrivilegeError, match="live capture is not possible"):
        Capture([9]).start()


def test_auto_mode_replays_with_reason():
    from helpers.experiments.handshake import handshake
    r = handshake()
    assert r.mode == "replay" and "live capture" in r.reason
    assert "REPLAY" in r.banner_text()
    handshake.check(r)


def test_forced_live_mode_says_why(monkeypatch):
    from helpers.errors import PrivilegeError
    from helpers.experiments.handshake import handshake
    monkeypatch.setenv("TCPCOURSE_MODE", "live")
    with pytest.raises(PrivilegeError, match="run as root"):
        handshake()
