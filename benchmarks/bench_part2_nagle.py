#!/usr/bin/env python3
"""Seconds per panel re-run for chapters 02_03 (nagle) and 02_04 (streams), live and replay.

    .venv/bin/python benchmarks/bench_part2_nagle.py [--repeat 5]

Uses bench_notebooks.panel_seconds (cycling the experiment's grid) and also times the
02_03 panel on its default (stalling) setting, its slowest case. Live needs root for the
02_04 panel (capture in a namespace); the 02_03 panel is always live (plain sockets).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_notebooks import panel_seconds  # noqa: E402

PANELS = [
    ("02_03 nagle", "helpers.experiments.nagle", "nagle", "render"),
    ("02_04 streams", "helpers.experiments.framing", "streams", "render_streams"),
]


def default_nagle(repeat: int) -> list[float]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from helpers.experiments.nagle import nagle, render
    from helpers.widgets import Panel
    panel = Panel(nagle, nagle.params, render=render)
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        panel.update()
        out.append(time.perf_counter() - t0)
        plt.close("all")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    modes = ["live", "replay"] if os.geteuid() == 0 else ["replay"]
    print(f"{'panel':45s} {'median':>9s} {'max':>9s}   runs")
    for label, module, name, render in PANELS:
        for m in modes:
            t = panel_seconds(m, args.repeat, module, name, render)
            print(f"{label + ' (' + m + ')':45s} {statistics.median(t):8.2f}s {max(t):8.2f}s   {len(t)}", flush=True)
    t = default_nagle(args.repeat)
    print(f"{'02_03 nagle, default setting (stalls)':45s} {statistics.median(t):8.2f}s {max(t):8.2f}s   {len(t)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
