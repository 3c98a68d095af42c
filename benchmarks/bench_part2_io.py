#!/usr/bin/env python3
"""Seconds per panel re-run and per notebook for chapters 02_05 and 02_06.

    .venv/bin/python benchmarks/bench_part2_io.py [--repeat 5] [--panels-only]

Both chapters need no privileges, so their experiments run live in every mode; the
"replay" column is measured with TCPCOURSE_MODE=replay to show that. Each panel re-run
cycles over the recorded choices grid (like benchmarks/bench_notebooks.py). Numbers are
wall-clock seconds on this machine; compare them as ratios within one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PANELS = [
    ("02_05 producer vs slow consumer", "helpers.experiments.backpressure", "producer_memory", "render",
     [{"producer": p} for p in ("asyncio + drain", "asyncio, no drain", "blocking sendall")]),
    ("02_05 send blocks (no panel in the notebook)", "helpers.experiments.backpressure", "send_blocks", None,
     [{}]),
    ("02_06 serving a file three ways", "helpers.experiments.sendfile", "sendfile_methods", "render",
     [{"size_mb": 16, "bufsize": b} for b in (4096, 65536, 1048576)]),
]
NOTEBOOKS = ["02_05-backpressure", "02_06-zero-copy-sendfile"]


def panel_seconds(mode: str, repeat: int, module: str, name: str, render: str | None, grid: list) -> list[float]:
    import importlib

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.environ["TCPCOURSE_MODE"] = mode
    from helpers import caps
    from helpers.widgets import Panel
    caps.capabilities.cache_clear()
    mod = importlib.import_module(module)
    exp = getattr(mod, name)
    panel = Panel(exp, exp.params, render=getattr(mod, render) if render else None)
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        panel.update(**grid[i % len(grid)])
        times.append(time.perf_counter() - t0)
        plt.close("all")
    return times


def notebook_seconds(name: str, mode: str) -> float:
    import nbformat
    from nbclient import NotebookClient
    path = ROOT / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    os.environ["TCPCOURSE_MODE"] = mode
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--panels-only", action="store_true")
    args = ap.parse_args(argv)
    print(f"{'panel':48} {'mode':7} {'median s':>9} {'min':>6} {'max':>6}")
    for label, module, name, render, grid in PANELS:
        for mode in ("live", "replay"):
            t = panel_seconds(mode, args.repeat, module, name, render, grid)
            print(f"{label:48} {mode:7} {statistics.median(t):9.2f} {min(t):6.2f} {max(t):6.2f}")
    if not args.panels_only:
        print(f"\n{'notebook':48} {'mode':7} {'seconds':>9}")
        for nb in NOTEBOOKS:
            for mode in ("live", "replay"):
                print(f"{nb:48} {mode:7} {notebook_seconds(nb, mode):9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
