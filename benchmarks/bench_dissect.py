#!/usr/bin/env python3
"""Benchmark: how fast can each tool turn a capture into TCP rows?

    sudo .venv/bin/python benchmarks/bench_dissect.py            # capture ~100k packets, time
    .venv/bin/python benchmarks/bench_dissect.py --pcap FILE     # time an existing capture

Capture (root): a request/response server on 127.0.0.1 with TCP_NODELAY, one client
sending many small messages; tcpdump -i lo --immediate-mode -U with a filter on the
server port, stopped cleanly (a sentinel connection the filter matches, then SIGINT).

Timed on the same file, in one run:
  segments()               helpers.dissect.segments, best of 3, whole file
  dpkt                     dpkt.pcap.Reader + Ethernet/IP/TCP, rows into pandas
  tshark -T fields         tshark fields into pandas (whole file)
  scapy rdpcap             first --slow packets (default 5000)
  pyshark                  FileCapture default (PDML), first --slow packets
  pyshark use_json         FileCapture(use_json=True), first --slow packets
Reports packets/s and the ratio to segments(); --markdown prints a table for BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_dissect.py --pcap FILE --baseline REV

times segments() of this checkout against segments() of git revision REV on the same
file in one run: each side in its own fresh interpreter, alternating, best of --rounds
rounds of 3 calls each; prints both rates and their ratio (this / REV).
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from helpers.dissect import segments  # noqa: E402

OUT = ROOT / "benchmarks" / "out"


# ----------------------------------------------------------------------------- capture
def make_capture(path: Path, packets: int) -> Path:
    if os.geteuid() != 0:
        sys.exit("making a capture needs root (tcpdump); pass --pcap FILE to reuse one")
    if not shutil.which("tcpdump"):
        sys.exit("tcpdump is not installed")
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    port = lst.getsockname()[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    # -B: a 64 MB kernel buffer, so that a Python client can't outrun tcpdump (drops)
    cmd = ["tcpdump", "-i", "lo", "-n", "-U", "--immediate-mode", "-Z", "root",
           "-B", "65536", "-w", str(path), f"tcp port {port}"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while "listening on" not in proc.stderr.readline():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tcpdump did not start")
        tail: list[str] = []
        reader = threading.Thread(target=lambda: tail.extend(proc.stderr.readlines()),
                                  daemon=True)
        reader.start()

        def server():
            conn, _ = lst.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                while True:
                    data = conn.recv(64)
                    if not data:
                        return
                    conn.sendall(b"r" * 64)

        t = threading.Thread(target=server, daemon=True)
        t.start()
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # each exchange: request + response (ACKs piggyback), so ~2 packets per round
        for _ in range(packets // 2):
            c.sendall(b"q" * 32)
            got = 0
            while got < 64:
                got += len(c.recv(64 - got))
        c.close()
        t.join(5)
        # sentinel: a connection the filter matches; wait for the file to settle
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.close()
        last, stable = -1, time.monotonic()
        while time.monotonic() - stable < 0.5:
            size = path.stat().st_size
            if size != last:
                last, stable = size, time.monotonic()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        lst.close()
    reader.join(2)
    for line in tail:
        if "packets" in line:
            print("tcpdump:", line.strip())
    os.chmod(path, 0o644)
    return path


# ----------------------------------------------------------------------------- methods
def m_segments(path, limit):
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        df = segments(path)
        best = min(best, time.perf_counter() - t0)
    return df.attrs["packets"], best


def m_dpkt(path, limit):
    import dpkt
    t0 = time.perf_counter()
    rows = []
    with open(path, "rb") as f:
        n = 0
        for ts, buf in dpkt.pcap.Reader(f):
            n += 1
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            tcp = ip.data
            if not isinstance(tcp, dpkt.tcp.TCP):
                continue
            rows.append((n, ts, tcp.sport, tcp.dport, tcp.seq, tcp.ack, tcp.flags, tcp.win,
                         len(tcp.data)))
    pd.DataFrame(rows, columns=["frame", "time", "sport", "dport", "seq", "ack", "flags",
                                "win", "len"])
    return n, time.perf_counter() - t0


def m_tshark(path, limit):
    fields = ["frame.number", "frame.time_epoch", "tcp.srcport", "tcp.dstport", "tcp.stream",
              "tcp.flags", "tcp.seq", "tcp.ack", "tcp.len", "tcp.window_size"]
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=\t"]
    for f in fields:
        cmd += ["-e", f]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    df = pd.read_csv(io.BytesIO(out), sep="\t", header=None, names=fields)
    return len(df), time.perf_counter() - t0


def m_scapy(path, limit):
    import logging
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    from scapy.layers import inet, l2  # noqa: F401  (link types -> Ether/IP/TCP)
    from scapy.utils import rdpcap
    t0 = time.perf_counter()
    pkts = rdpcap(str(path), count=limit)
    return len(pkts), time.perf_counter() - t0


def _pyshark(path, limit, use_json):
    import pyshark
    t0 = time.perf_counter()
    cap = pyshark.FileCapture(str(path), use_json=use_json, keep_packets=False)
    n = 0
    try:
        for pkt in cap:
            _ = pkt.tcp.seq
            n += 1
            if n >= limit:
                break
    finally:
        cap.close()
    return n, time.perf_counter() - t0


def m_pyshark(path, limit):
    return _pyshark(path, limit, False)


def m_pyshark_json(path, limit):
    return _pyshark(path, limit, True)


METHODS = [
    ("segments() (numpy)", m_segments, False),
    ("dpkt", m_dpkt, False),
    ("tshark -T fields -> pandas", m_tshark, False),
    ("scapy rdpcap", m_scapy, True),
    ("pyshark FileCapture", m_pyshark, True),
    ("pyshark use_json=True", m_pyshark_json, True),
]


_TIMER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from helpers.dissect import segments
best = float("inf")
for _ in range(3):
    t0 = time.perf_counter()
    df = segments(sys.argv[2])
    best = min(best, time.perf_counter() - t0)
print(df.attrs["packets"], best)
"""


def compare_to_revision(path: Path, rev: str, rounds: int) -> tuple[float, float]:
    """(packets/s of this checkout, packets/s of revision rev), alternating runs."""
    import tarfile
    import tempfile
    with tempfile.TemporaryDirectory(prefix="bench_dissect_") as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "helpers"],
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        best = {"this": float("inf"), rev: float("inf")}
        n = 0
        for _ in range(rounds):
            for name, root in (("this", str(ROOT)), (rev, tmp)):
                out = subprocess.run([sys.executable, "-c", _TIMER, root, str(path)],
                                     capture_output=True, text=True, check=True).stdout
                n, sec = out.split()
                best[name] = min(best[name], float(sec))
        n = int(n)
        return n / best["this"], n / best[rev]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pcap", type=Path, help="time this capture instead of making one")
    ap.add_argument("--packets", type=int, default=100_000, help="size of the capture to make")
    ap.add_argument("--slow", type=int, default=5000,
                    help="packets for the slow methods (scapy, pyshark)")
    ap.add_argument("--only", nargs="*", help="method names (substring) to run")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table too")
    ap.add_argument("--baseline", metavar="REV",
                    help="also time segments() of git revision REV on the same file")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds for --baseline")
    args = ap.parse_args(argv)
    path = args.pcap or make_capture(OUT / "bench_100k.pcap", args.packets)
    if args.baseline:
        this, base = compare_to_revision(path, args.baseline, args.rounds)
        print(f"segments() this checkout: {this:,.0f} packets/s; {args.baseline}: "
              f"{base:,.0f} packets/s; ratio {this / base:.3f}")
        if args.only is not None and not args.only:
            return 0
    total = segments(path).attrs["packets"]
    print(f"capture: {path} ({total} packets, {path.stat().st_size / 1e6:.1f} MB)")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}")
    results = []
    for name, fn, slow in METHODS:
        if args.only and not any(o in name for o in args.only):
            continue
        n, sec = fn(path, args.slow if slow else None)
        results.append((name + (f" (first {n})" if slow else ""), n, sec, n / sec))
        print(f"  {name:<28} {n:>8} packets {sec:9.3f} s {n / sec:>12,.0f} packets/s", flush=True)
    ref = next((r[3] for r in results if r[0].startswith("segments")), None)
    header = f"{'method':<40} {'packets':>8} {'seconds':>9} {'packets/s':>12} {'vs segments()':>14}"
    print()
    print(header)
    print("-" * len(header))
    for name, n, sec, rate in results:
        ratio = f"{rate / ref:.4f}" if ref else "-"
        print(f"{name:<40} {n:>8} {sec:>9.3f} {rate:>12,.0f} {ratio:>14}")
    if args.markdown:
        print()
        print("| method | packets | seconds | packets/s | ratio to segments() |")
        print("|---|---:|---:|---:|---:|")
        for name, n, sec, rate in results:
            ratio = f"{rate / ref:.4f}" if ref else "-"
            print(f"| {name} | {n} | {sec:.3f} | {rate:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
