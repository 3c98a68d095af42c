#!/usr/bin/env python3
"""Build notebooks/*.ipynb from their jupytext sources in notebooks/src/*.py and execute
them so the committed notebooks carry outputs (plots readable without a kernel).

The run is deterministic: replay mode (the recorded corpus), fixed figure settings, and
volatile metadata (execution times, widget state) stripped. tests/test_notebook_files.py
checks that every .ipynb matches its source, so the two never drift.

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
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
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
    nb = clean(nb)
    target = NB / (src.stem + ".ipynb")
    if execute:
        env_mode = os.environ.get("TCPCOURSE_MODE")
        os.environ["TCPCOURSE_MODE"] = "replay"
        os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        try:
            NotebookClient(nb, timeout=600, kernel_name="python3",
                           resources={"metadata": {"path": str(NB)}}).execute()
        finally:
            if env_mode is None:
                os.environ.pop("TCPCOURSE_MODE", None)
            else:
                os.environ["TCPCOURSE_MODE"] = env_mode
        nb = clean(nb)
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
