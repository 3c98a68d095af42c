#!/usr/bin/env python3
"""How long each notebook takes (live and replay) and how long a panel takes to answer.

    .venv/bin/python benchmarks/bench_notebooks.py [--repeat 5]

Live needs root (capture); replay runs anywhere. Prints two tables; numbers are wall-clock
seconds on this machine, so compare them as ratios within one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def run_notebook(path: Path, mode: str) -> float:
    nb = nbformat.read(path, as_version=4)
    os.environ["TCPCOURSE_MODE"] = mode
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - t0


def panel_seconds(mode: str, repeat: int) -> list[float]:
    os.environ["TCPCOURSE_MODE"] = mode
    from helpers import caps
    caps.capabilities.cache_clear()
    from helpers.experiments.handshake import handshake, render
    from helpers.widgets import Panel
    import matplotlib
    matplotlib.use("Agg")
    panel = Panel(handshake, handshake.params, render=render)
    grid = handshake.grid()
    times = []
    for i in range(repeat):
        params = grid[i % len(grid)]
        t0 = time.perf_counter()
        panel.update(**params)
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    modes = ["live", "replay"] if os.geteuid() == 0 else ["replay"]
    print(f"{'notebook':45s} " + " ".join(f"{m:>9s}" for m in modes))
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        cells = [f"{run_notebook(path, m):8.1f}s" for m in modes]
        print(f"{path.stem:45s} " + " ".join(cells), flush=True)
    print(f"\n{'panel (01_02 handshake)':45s} {'median':>9s} {'max':>9s}   runs")
    for m in modes:
        t = panel_seconds(m, args.repeat)
        print(f"{'  ' + m:45s} {statistics.median(t):8.2f}s {max(t):8.2f}s   {len(t)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
