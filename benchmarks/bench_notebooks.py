#!/usr/bin/env python3
"""How long each notebook takes (live and replay) and how long each chapter's panel takes to
answer one change: the median over the experiment's recorded grid, and the median with its
default values.

    .venv/bin/python benchmarks/bench_notebooks.py [--repeat 5] [--panels-only] [PANEL ...]

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


# (label, module, experiment, render): every chapter panel
PANELS = [
    ("01_02 handshake", "helpers.experiments.handshake", "handshake", "render"),
    ("01_03 accept queue", "helpers.experiments.queues", "accept_queue", "render"),
    ("01_04 SYN flood", "helpers.experiments.synflood", "syn_flood", "render"),
    ("01_05 reuseport", "helpers.experiments.reuseport", "reuseport_spread", "render"),
    ("02_01 buffers", "helpers.experiments.buffers", "queue_capacity", "render"),
    ("02_02 zero window", "helpers.experiments.flowcontrol", "zero_window", "render"),
    ("02_03 nagle", "helpers.experiments.nagle", "nagle", "render"),
    ("02_04 streams", "helpers.experiments.framing", "streams", "render_streams"),
    ("02_05 backpressure", "helpers.experiments.backpressure", "producer_memory", "render"),
    ("02_06 sendfile", "helpers.experiments.sendfile", "sendfile_methods", "render"),
]


def panel_seconds(mode: str, repeat: int, module: str, name: str, render: str,
                  default: bool = False) -> list[float]:
    """Seconds per panel.update in *mode*: over the experiment's recorded grid (cycled), or
    *repeat* times with its default values (what a learner sees first) when *default*."""
    import importlib
    os.environ["TCPCOURSE_MODE"] = mode
    from helpers import caps
    caps.capabilities.cache_clear()
    from helpers.widgets import Panel
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    mod = importlib.import_module(module)
    exp = getattr(mod, name)
    panel = Panel(exp, exp.params, render=getattr(mod, render))
    grid = [{}] if default else exp.grid()
    times = []
    for i in range(repeat):
        params = grid[i % len(grid)]
        t0 = time.perf_counter()
        panel.update(**params)
        times.append(time.perf_counter() - t0)
        plt.close("all")
    return times


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--panels-only", action="store_true", help="skip the notebook timings")
    ap.add_argument("panels", nargs="*", help="only panels whose label contains one of these")
    args = ap.parse_args()
    modes = ["live", "replay"] if os.geteuid() == 0 else ["replay"]
    print(f"{'notebook':45s} " + " ".join(f"{m:>9s}" for m in modes))
    for path in [] if args.panels_only else sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        cells = [f"{run_notebook(path, m):8.1f}s" for m in modes]
        print(f"{path.stem:45s} " + " ".join(cells), flush=True)
    print(f"\n{'panel':45s} {'mode':>7s} {'grid median':>12s} {'max':>7s} {'default':>8s}   runs")
    for label, module, name, render in PANELS:
        if args.panels and not any(p in label for p in args.panels):
            continue
        for m in modes:
            t = panel_seconds(m, args.repeat, module, name, render)
            d = panel_seconds(m, args.repeat, module, name, render, default=True)
            print(f"{label:45s} {m:>7s} {statistics.median(t):11.2f}s {max(t):6.2f}s "
                  f"{statistics.median(d):7.2f}s   {len(t)}+{len(d)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
