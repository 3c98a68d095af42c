"""Small things every notebook does: the run-mode banner, whole tables, the closing leak
check, and a one-line report when the learner interrupts a cell.

Importing this module inside an IPython kernel registers :func:`interrupt_handler` for
KeyboardInterrupt (the stop button): instead of a ten-frame traceback into socket code,
the cell's output is one line saying that the course's captures and servers were stopped
and nothing of them is left (or what is). The experiment's own ``finally``/``with`` clean-up
has run by then; the handler stops stragglers and checks. Any other exception keeps its
full traceback, so nbval and the learner still see real failures."""
from __future__ import annotations

import base64
import html
import io
from typing import Any

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


#: what each capability lets a chapter do, for the banner
DOES = {"live_capture": "capture packets with tcpdump",
        "namespaces": "create private network namespaces (and change sysctls inside them)"}


def mode_banner(needs=("live_capture",)) -> Banner:
    """The banner at the top of a chapter: will this notebook's privileged experiments run live
    or replay, and why. *needs*: the capabilities the chapter's experiments need."""
    needs = tuple(needs)
    if not needs:
        return Banner("LIVE: this chapter needs no privileges and captures nothing; every cell runs "
                      "live on this machine, whatever the mode.", True)
    doing = " and ".join(DOES.get(n, n) for n in needs)
    m = caps.mode()
    missing = caps.capabilities().missing(needs)
    if m == "replay":
        return Banner(f"REPLAY: TCPCOURSE_MODE=replay is set, so the experiments that {doing} come from "
                      "the recorded corpus (pcaps/); each result names its file. Plain sockets, ss and "
                      "TCP_INFO still run live. Unset TCPCOURSE_MODE to run everything live.", False)
    if missing:
        why = "; ".join(f"{x.name}: {x.detail}" for x in missing)
        return Banner(f"REPLAY: this machine cannot {doing} here ({why}). Those experiments are read "
                      f"from the recorded corpus (pcaps/), and each result names its file. Plain "
                      f"sockets, ss, nstat and TCP_INFO still run live.", False)
    return Banner(f"LIVE: this machine can {doing}; every experiment below runs now.", True)


def show(items) -> None:
    """Display a render() list as ordinary cell output: figures as images (closed afterwards,
    so the inline backend does not show them a second time), strings as Markdown, tables and
    results with their rich views."""
    from IPython.display import display

    for item in items:
        display(to_output(item)["data"], raw=True)


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


class WholeTable:
    """A DataFrame shown whole: no cell cut to pandas' ``display.max_colwidth`` (50
    characters, then "..."), long text left-aligned and wrapped. ``whole(df)`` in a cell."""

    def __init__(self, df):
        self.df = df

    def _repr_html_(self) -> str:
        import pandas as pd

        with pd.option_context("display.max_colwidth", None, "display.max_rows", None):
            body = self.df.to_html(border=1, justify="left")
        return body.replace("<td>", '<td style="text-align:left">')

    def __repr__(self) -> str:
        import pandas as pd

        with pd.option_context("display.max_colwidth", None, "display.max_rows", None,
                               "display.width", 10_000):
            return self.df.to_string()


def whole(df) -> WholeTable:
    """Display *df* with every cell in full (pandas cuts cells at 50 characters)."""
    return WholeTable(df)


INTERRUPTED = "interrupted: the capture and servers were stopped, nothing left behind"


def interrupt_handler(shell, etype, value, tb, tb_offset=None) -> list[str]:
    """IPython custom exception handler for KeyboardInterrupt: stop what the course still
    runs, check, and show one line as the cell's error output (red in Jupyter).

    IPython ignores the structured traceback a handler returns (up to 9.x at least), so
    the handler shows it itself, the way the kernel shows any traceback; the execute reply
    stays an error, so Run All stops at the interrupted cell."""
    try:
        left = nothing_left_behind()
    except (Exception, KeyboardInterrupt) as exc:   # the report must not fail (a second Ctrl-C
        # here would make IPython unregister the handler for the kernel's life); say so
        line = f"interrupted: could not check what is left behind ({type(exc).__name__}: {exc})"
    else:
        line = (INTERRUPTED if not left else
                "interrupted: stopped the course's captures and servers, but still left: " + ", ".join(left))
    stb = [line]
    show = getattr(shell, "_showtraceback", None)
    if callable(show):
        show(etype, value, stb)
    else:
        import sys
        print(line, file=sys.stderr)
    return stb


def install_interrupt_handler(shell=None) -> bool:
    """Register :func:`interrupt_handler` for KeyboardInterrupt in *shell* (default: the
    running IPython, if any). Leaves a shell that already has custom handlers alone.
    Returns True when the handler is in place."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
    if shell is None or not hasattr(shell, "set_custom_exc"):
        return False
    current = tuple(getattr(shell, "custom_exceptions", ()))
    if current == (KeyboardInterrupt,):
        return True
    if current:
        return False
    shell.set_custom_exc((KeyboardInterrupt,), interrupt_handler)
    return True


def keep_language_version(model=None, path="", contents_manager=None, **_kw) -> None:
    """Jupyter Server ``pre_save_hook``: when a notebook is saved whose ``language_info``
    differs from the file on disk only in ``version`` (JupyterLab copies the kernel's
    Python version into every notebook it opens, and autosaves), keep the file's version,
    so that opening a committed notebook with another Python leaves the clone clean.

    Start JupyterLab with ``--ContentsManager.pre_save_hook=helpers.notebook.keep_language_version``.
    Anything else the learner changes is saved as usual."""
    if not model or model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    import json
    import os

    # read the file itself: the manager's get() is a coroutine in async contents managers
    root = os.path.realpath(getattr(contents_manager, "root_dir", None) or ".")
    os_path = os.path.realpath(os.path.join(root, path.strip("/")))
    if not os_path.startswith(root + os.sep):
        return
    try:
        with open(os_path, encoding="utf-8") as f:
            on_disk = json.load(f).get("metadata", {}).get("language_info")
    except (OSError, ValueError, AttributeError):   # a new file, or not a notebook yet
        return
    meta = model["content"].setdefault("metadata", {})
    new = meta.get("language_info")
    if not isinstance(on_disk, dict) or not isinstance(new, dict) or "version" not in on_disk:
        return
    if {k: v for k, v in new.items() if k != "version"} == {k: v for k, v in on_disk.items() if k != "version"}:
        meta["language_info"] = {**new, "version": on_disk["version"]}


_MIME_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
)


def to_output(item: Any) -> dict:
    """One item as an nbformat ``display_data`` output (what an Output widget holds).

    Figures become PNGs (and are closed, so they never pile up or show twice);
    strings are Markdown; DataFrames and other rich objects use their ``_repr_*_``.
    """
    data: dict[str, Any] = {}
    from matplotlib.figure import Figure
    import matplotlib.pyplot as plt

    if isinstance(item, Figure):
        buf = io.BytesIO()
        item.savefig(buf, format="png", bbox_inches="tight")
        data["image/png"] = base64.b64encode(buf.getvalue()).decode("ascii")
        w, h = item.get_size_inches() * item.dpi
        data["text/plain"] = f"<Figure size {w:.0f}x{h:.0f}>"
        plt.close(item)
    elif isinstance(item, str):
        data = {"text/markdown": item, "text/plain": item}
    else:
        bundle = getattr(item, "_repr_mimebundle_", None)
        if callable(bundle):
            try:
                got = bundle()
            except TypeError:
                got = bundle(include=None, exclude=None)
            if isinstance(got, tuple):
                got = got[0]
            data.update(got or {})
        for mime, meth in _MIME_METHODS:
            if mime in data:
                continue
            f = getattr(item, meth, None)
            if not callable(f):
                continue
            try:
                val = f()
            except Exception:
                continue
            if isinstance(val, tuple):
                val = val[0]
            if val is None:
                continue
            if isinstance(val, bytes):
                val = base64.b64encode(val).decode("ascii")
            data[mime] = val
        data.setdefault("text/plain", repr(item))
    return {"output_type": "display_data", "data": data, "metadata": {}}


install_interrupt_handler()
