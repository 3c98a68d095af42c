#!/usr/bin/env python3
"""Chapter 01_05: seconds per panel re-run (target: median 1 s or less), and per experiment.

    .venv/bin/python benchmarks/bench_reuseport.py [--repeat 5]

The panel's experiment (reuseport_spread) needs no privileges, so it runs live in both
modes; "replay" only shows that the mode changes nothing. The namespace experiment
(reuseport_close) is timed live only as root. Wall-clock seconds on this machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def panel_seconds(mode: str, repeat: int) -> list[float]:
    os.environ["TCPCOURSE_MODE"] = mode
    from helpers import caps
    caps.capabilities.cache_clear()
    from helpers.experiments.reuseport import render, reuseport_spread
    from helpers.widgets import Panel

    panel = Panel(reuseport_spread, reuseport_spread.params, render=render)
    panel.update(n=4)                       # warm-up: imports, first figure
    plt.close("all")
    times = []
    values = (2, 4, 8, 16)
    for i in range(repeat):
        t0 = time.perf_counter()
        panel.update(n=values[i % len(values)])
        times.append(time.perf_counter() - t0)
        plt.close("all")
    return times


def experiment_seconds() -> list[tuple[str, float]]:
    from helpers.experiments import reuseport as rp
    runs = [("reuseport_spread n=4", lambda: rp.reuseport_spread(n=4)),
            ("reuseport_hash n=4", lambda: rp.reuseport_hash(n=4)),
            ("reuseport_join", rp.reuseport_join),
            ("accept_sharing slow_ms=4", lambda: rp.accept_sharing(slow_ms=4))]
    if os.geteuid() == 0:
        os.environ["TCPCOURSE_MODE"] = "live"
        runs += [(f"reuseport_close migrate={m} (live)", lambda m=m: rp.reuseport_close(migrate=m)) for m in (0, 1)]
    out = []
    for label, fn in runs:
        t0 = time.perf_counter()
        fn()
        out.append((label, time.perf_counter() - t0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"{'panel (reuseport_spread)':32s} {'median':>8s} {'max':>8s}  runs")
    for mode in ("live", "replay"):
        t = panel_seconds(mode, args.repeat)
        print(f"{mode:32s} {statistics.median(t):7.2f}s {max(t):7.2f}s  {len(t)}", flush=True)
    print(f"\n{'experiment':32s} {'seconds':>8s}")
    for label, s in experiment_seconds():
        print(f"{label:32s} {s:7.2f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
