"""Small things every notebook does: the run-mode banner and the closing leak check."""
from __future__ import annotations

import html

from . import caps


def _box(text: str, colour: str, edge: str):
    from IPython.display import HTML
    return HTML(f'<div style="background:{colour};border-left:6px solid {edge};padding:6px 10px;'
                f'font-family:sans-serif">{text}</div>')


def mode_banner(needs=("live_capture",)):
    """The banner at the top of a chapter: will this notebook capture live or replay, and why."""
    m = caps.mode()
    c = caps.capabilities()
    missing = c.missing(needs)
    if m == "replay":
        text, live = "REPLAY: TCPCOURSE_MODE=replay is set, so captures come from the recorded corpus (pcaps/).", False
    elif missing:
        why = "; ".join(f"{x.name}: {x.detail}" for x in missing)
        text, live = (f"REPLAY: this machine cannot capture here ({why}). Every capture in this notebook "
                      f"is read from the recorded corpus (pcaps/), and each result says which file. "
                      f"Sockets, ss, nstat and TCP_INFO still run live."), False
    else:
        text, live = "LIVE: tcpdump can capture on this machine; every capture below is made now.", True
    print(text)
    return _box(html.escape(text), "#e8f5e9" if live else "#fff3e0", "#2e7d32" if live else "#ef6c00")


def nothing_left_behind() -> list[str]:
    """Close a notebook: stop whatever the course started here, then list what remains of it
    (capture processes started by this kernel, course namespaces). An empty list is good."""
    import os
    from pathlib import Path

    from . import capture, leaks, servers
    capture.stop_all()
    servers.stop_all()
    left = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Name", "").strip() in leaks.CAPTURE_PROCS and int(fields.get("PPid", 0)) == os.getpid():
            left.append(f"capture process {pid} ({fields['Name'].strip()})")
    left += [f"namespace {n}" for n in leaks.namespaces() if n.startswith(f"tcpcourse-{os.getpid()}-")]
    return left
