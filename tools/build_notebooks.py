#!/usr/bin/env python3
"""Build notebooks/*.ipynb from their jupytext sources in notebooks/src/*.py and execute
them so the committed notebooks carry outputs (plots readable without a kernel).

The run is deterministic: replay mode (the recorded corpus), fixed figure settings, and
volatile metadata (execution times, widget state) stripped. tests/test_notebook_files.py
checks that every .ipynb matches its source, so the two never drift.

The file is written exactly as JupyterLab saves it, so that opening a notebook (which
fills in ``kernelspec`` and ``language_info`` from the kernel it starts, and autosaves)
leaves a clone clean: nbformat's writer (JSON, indent 1, sorted keys, trailing newline,
the notebook's cell ids), ``kernelspec`` from the installed python3 kernel spec and
``language_info`` as that kernel reports it in its kernel_info reply. The Python version
in ``language_info`` is the build machine's; a learner whose kernel runs another Python
sees that one line change when JupyterLab saves (tests/test_notebook_files.py).

    .venv/bin/python tools/build_notebooks.py [NAME ...]     # default: all
    .venv/bin/python tools/build_notebooks.py --no-execute   # sources only, no outputs
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "notebooks"
KERNEL = "python3"


def kernelspec(name: str = KERNEL) -> dict:
    """The ``kernelspec`` metadata JupyterLab writes for the kernel *name*."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(name)
    return {"display_name": spec.display_name, "language": spec.language, "name": name}


def kernel_language_info(name: str = KERNEL) -> dict:
    """``language_info`` from a kernel_info reply of a freshly started kernel *name*:
    what JupyterLab copies into the notebook when it connects to the kernel."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name=name)
    try:
        reply = kc.kernel_info(reply=True, timeout=60)
        return reply["content"]["language_info"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def clean(nb: nbformat.NotebookNode, language_info: dict) -> nbformat.NotebookNode:
    nb.metadata = {"kernelspec": kernelspec(), "language_info": language_info}
    nb.nbformat, nb.nbformat_minor = 4, nbformat.v4.nbformat_minor
    for i, cell in enumerate(nb.cells):
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in ("tags",)}
        cell.id = f"c{i:03d}"
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                out.get("metadata", {}).pop("execution", None)
                data = out.get("data", {})
                data.pop("application/vnd.jupyter.widget-view+json", None)
                if "data" in out and not data:
                    out["data"] = {"text/plain": "(interactive widget: run the notebook to use it)"}
    return nb


def build(src: Path, execute: bool) -> Path:
    nb = jupytext.read(src)
    nb = clean(nb, {"name": "python"})
    target = NB / (src.stem + ".ipynb")
    if execute:
        env_mode = os.environ.get("TCPCOURSE_MODE")
        os.environ["TCPCOURSE_MODE"] = "replay"
        os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        try:
            NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                           resources={"metadata": {"path": str(NB)}}).execute()
        finally:
            if env_mode is None:
                os.environ.pop("TCPCOURSE_MODE", None)
            else:
                os.environ["TCPCOURSE_MODE"] = env_mode
        # nbclient copied the kernel's kernel_info reply into the metadata
        nb = clean(nb, dict(nb.metadata["language_info"]))
    else:
        nb = clean(nb, kernel_language_info())
    nbformat.write(nb, target)
    return target


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*")
    ap.add_argument("--no-execute", action="store_true")
    args = ap.parse_args()
    sources = sorted((NB / "src").glob("*.py"))
    if args.names:
        sources = [s for s in sources if any(n in s.stem for n in args.names)]
    for src in sources:
        print("building", src.name, flush=True)
        build(src, not args.no_execute)
    return 0


if __name__ == "__main__":
    sys.exit(main())
