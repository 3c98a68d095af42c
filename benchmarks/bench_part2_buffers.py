#!/usr/bin/env python3
"""Panel re-run seconds for chapters 02_01 (queue_capacity) and 02_02 (zero_window).

    .venv/bin/python benchmarks/bench_part2_buffers.py [--repeat 5]

Each panel is updated *repeat* times with its default values (as the Run button does:
experiment + render) in live and in replay mode; prints the median and the range. Live
02_02 needs root (capture + namespace). 02_01 needs no privileges, so it is live in both
modes. The lead's benchmarks/bench_notebooks.py can take these as PANELS rows:
("02_01 buffers", "helpers.experiments.buffers", "queue_capacity", "render") and
("02_02 zero window", "helpers.experiments.flowcontrol", "zero_window", "render").
"""
from __future__ import annotations

import argparse
import os
import statistics


def panel_seconds(mode: str, repeat: int, module: str, name: str) -> list[float]:
    import importlib
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.environ["TCPCOURSE_MODE"] = mode
    from helpers import caps
    caps.capabilities.cache_clear()
    from helpers.widgets import Panel
    mod = importlib.import_module(module)
    exp = getattr(mod, name)
    panel = Panel(exp, exp.params, render=mod.render, replay=mode == "replay")
    out = []
    for _ in range(repeat):
        panel.update()
        out.append(panel.elapsed)
        plt.close("all")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows = [("02_01 buffers", "helpers.experiments.buffers", "queue_capacity"),
            ("02_02 zero window", "helpers.experiments.flowcontrol", "zero_window")]
    print(f"{'panel':<20} {'mode':<7} {'median s':>9} {'min':>7} {'max':>7}")
    for label, module, name in rows:
        for mode in ("live", "replay"):
            try:
                t = panel_seconds(mode, args.repeat, module, name)
            except Exception as exc:  # e.g. live without root
                print(f"{label:<20} {mode:<7} skipped: {exc}")
                continue
            print(f"{label:<20} {mode:<7} {statistics.median(t):9.3f} {min(t):7.3f} {max(t):7.3f}")


if __name__ == "__main__":
    main()
