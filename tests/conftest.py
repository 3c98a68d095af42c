import os

import pytest

from helpers import caps

os.environ.setdefault("MPLBACKEND", "Agg")


def _live():
    return bool(caps.capabilities().live_capture)


def _netns():
    return bool(caps.capabilities().namespaces)


@pytest.fixture(autouse=True)
def _close_figures():
    """Every figure a test draws is closed after it (matplotlib keeps pyplot figures until
    closed: the unit stage warned of more than 20 open figures)."""
    yield
    import sys
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")


needs_live = pytest.mark.skipif(not _live(), reason="live capture needs CAP_NET_RAW and tcpdump")
needs_netns = pytest.mark.skipif(not _netns(), reason="namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN")


@pytest.fixture
def live_mode(monkeypatch):
    monkeypatch.setenv("TCPCOURSE_MODE", "live")


@pytest.fixture
def replay_mode(monkeypatch):
    monkeypatch.setenv("TCPCOURSE_MODE", "replay")


@pytest.fixture
def no_capture(monkeypatch):
    """Pretend this process may not capture (CAP_NET_RAW missing), whoever runs the tests."""
    fake = caps.Capabilities(
        live_capture=caps.Capability("live capture", False, "no CAP_NET_RAW", "replay"),
        namespaces=caps.Capability("namespaces", False, "missing CAP_SYS_ADMIN", "replay"),
        tshark=caps.Capability("tshark", True, "x", "y"),
        raw_sockets=caps.Capability("raw sockets", False, "no CAP_NET_RAW", "y"),
        strace=caps.Capability("strace", True, "x", "y"))
    monkeypatch.setattr(caps, "capabilities", lambda: fake)
    import helpers.capture
    monkeypatch.setattr(helpers.capture, "capabilities", lambda: fake)
    return fake


@pytest.fixture
def replay_each(replay_mode):
    """``replay_each(exp, points=None)``: run *exp* at every point of its grid in replay
    mode; each run must come from the corpus and pass the experiment's invariant. Yields
    (params, result) for the test's own asserts. *points*: the grid size the test expects."""
    def run(exp, points: int | None = None):
        grid = exp.grid()
        if points is not None:
            assert len(grid) == points, f"{exp.name}: {len(grid)} grid points, expected {points}"
        for params in grid:
            r = exp(**params)
            assert r.mode == "replay" and "TCPCOURSE_MODE=replay" in r.reason, (exp.name, params, r.reason)
            exp.check(r)
            yield params, r
    return run
