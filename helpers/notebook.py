"""Small things every notebook does: the run-mode banner and the closing leak check."""
from __future__ import annotations

import html

from . import caps


class Banner:
    """A coloured box in Jupyter, one plain line elsewhere (shown once, never twice)."""

    def __init__(self, text: str, live: bool):
        self.text, self.live = text, live

    def _repr_html_(self) -> str:
        colour, edge = ("#e8f5e9", "#2e7d32") if self.live else ("#fff3e0", "#ef6c00")
        return (f'<div style="background:{colour};border-left:6px solid {edge};padding:6px 10px;'
                f'font-family:sans-serif">{html.escape(self.text)}</div>')

    def __repr__(self) -> str:
        return self.text


def mode_banner(needs=("live_capture",)) -> Banner:
    """The banner at the top of a chapter: will this notebook capture live or replay, and why."""
    m = caps.mode()
    missing = caps.capabilities().missing(needs)
    if not needs:
        return Banner("LIVE: this chapter needs no privileges and captures nothing; every cell runs "
                      "live on this machine, whatever the mode.", True)
    if m == "replay":
        return Banner("REPLAY: TCPCOURSE_MODE=replay is set, so captures come from the recorded corpus "
                      "(pcaps/); each result names its file. Sockets, ss and TCP_INFO still run live. "
                      "Unset TCPCOURSE_MODE to capture live.", False)
    if missing:
        why = "; ".join(f"{x.name}: {x.detail}" for x in missing)
        return Banner(f"REPLAY: this machine cannot capture here ({why}). Every capture in this notebook "
                      f"is read from the recorded corpus (pcaps/), and each result names its file. "
                      f"Sockets, ss, nstat and TCP_INFO still run live.", False)
    return Banner("LIVE: tcpdump can capture on this machine; every capture below is made now.", True)


def nothing_left_behind() -> list[str]:
    """Close a notebook: stop whatever the course started here, then list what remains of it
    (capture processes started by this kernel, course namespaces). An empty list is good."""
    import os

    from . import capture, leaks, servers
    capture.stop_all()
    servers.stop_all()
    left = [f"capture process {p}" for p in leaks.capture_processes(parent=os.getpid())]
    left += [f"namespace {n}" for n in leaks.namespaces() if n.startswith(f"tcpcourse-{os.getpid()}-")]
    return left
