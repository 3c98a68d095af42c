#!/usr/bin/env python3
"""Chapter 01_04: how fast the flood path sends SYNs.

    .venv/bin/python benchmarks/bench_synflood.py [--count 20000] [--scapy-count 2000]

Needs root (a course namespace and a raw socket). In one run, inside one course namespace whose listener
answers with SYN cookies (listen(16), tcp_syncookies=1, as in the chapter):

1. the course's flood path (:func:`helpers.rawsyn.send_flood`): SYNs built
   once (scapy template, patched), then ``sendto`` on a raw socket in a tight loop;
2. scapy's own ``send(packets, iface="lo")`` loop for the same kind of SYNs, built by
   scapy, run in a thread that entered the namespace.

Both are guarded by the same ``check_flood_target`` and counted on the receiving side
(half-open entries + SyncookiesSent inside the namespace), so a path that lost packets
cannot look fast. Numbers are wall-clock on this machine: compare them as ratios within one
run. The panel's re-run time is in ``benchmarks/bench_notebooks.py`` with the other panels.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from helpers import rawsyn
from helpers.experiments import synflood


def _listener(ns):
    lst = ns.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    return lst, lst.getsockname()[1]


def handled(ns, port: int, cookies_before: int = 0) -> int:
    """SYNs the listener on *port* answered: its half-open entries plus the cookies sent
    since *cookies_before* (TcpInSegs would also count the SYN-ACKs looping back on lo)."""
    from helpers.kernel import counters
    return synflood.syn_recv_count(ns, port) + counters(ns).get("TcpExtSyncookiesSent", 0) - cookies_before


def rates(count: int, scapy_count: int) -> list[dict]:
    from helpers.kernel import counters
    from helpers.netns import Namespace

    import scapy.all  # noqa: F401  (imported before timing anything)

    rows = []
    with Namespace(sysctls={"net.ipv4.tcp_syncookies": 1,
                            "net.ipv4.tcp_max_syn_backlog": synflood.MAX_SYN_BACKLOG}) as ns:
        rawsyn.setup_namespace(ns)
        lst, port = _listener(ns)

        # 1. the course's flood path (build time reported separately)
        t0 = time.perf_counter()
        pkts = rawsyn.build_syns(port, count, seed=11)
        build = time.perf_counter() - t0
        out = rawsyn.send_flood(ns, port, count, packets=pkts)
        got = handled(ns, port)
        rows.append({"path": "raw socket sendto (course flood)", "packets": out["sent"],
                     "received": got, "seconds": out["send_seconds"],
                     "pps": out["sent"] / out["send_seconds"], "build_s": build})

        # 2. scapy's send() loop, inside the same namespace (a fresh listener port)
        lst2, port2 = _listener(ns)
        from scapy.layers.inet import IP, TCP
        from scapy.sendrecv import send

        rawsyn.check_flood_target(ns, "127.0.0.1", count=scapy_count, seconds=rawsyn.MAX_SECONDS)
        t0 = time.perf_counter()
        scapy_pkts = [IP(src=src, dst="127.0.0.1") / TCP(sport=sport, dport=port2, flags="S", seq=seq,
                                                         options=[("MSS", 1460)])
                      for src, sport, seq in rawsyn.syn_sources(scapy_count, seed=12)]
        build = time.perf_counter() - t0
        cookies_before = counters(ns).get("TcpExtSyncookiesSent", 0)

        def scapy_send():
            t = time.perf_counter()
            send(scapy_pkts, verbose=0)   # routed to lo (127.0.0.1); iface= refuses a list here
            return time.perf_counter() - t
        seconds = ns.call(scapy_send)
        got = handled(ns, port2, cookies_before)
        rows.append({"path": "scapy send() loop", "packets": scapy_count, "received": got,
                     "seconds": seconds, "pps": scapy_count / seconds, "build_s": build})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=rawsyn.MAX_FLOOD, help="SYNs for the raw-socket path")
    ap.add_argument("--scapy-count", type=int, default=2000, help="SYNs for scapy's send() (slow)")
    args = ap.parse_args()
    root = os.geteuid() == 0
    if root:
        rows = rates(args.count, args.scapy_count)
        print(f"{'send path':36s} {'packets':>8s} {'received':>9s} {'seconds':>8s} {'SYNs/s':>10s} {'build s':>8s}")
        for r in rows:
            print(f"{r['path']:36s} {r['packets']:8d} {r['received']:9d} {r['seconds']:8.3f} "
                  f"{r['pps']:10,.0f} {r['build_s']:8.3f}")
        print(f"ratio raw / scapy: {rows[0]['pps'] / rows[1]['pps']:.0f}x   "
              f"(target: raw >= 100,000 SYNs/s: {'met' if rows[0]['pps'] >= 1e5 else 'NOT met'})")
        for r in rows:
            if r["received"] < r["packets"]:
                print(f"WARNING: {r['path']}: only {r['received']} of {r['packets']} SYNs arrived")
    else:
        print("not root: the send rates need a course namespace and a raw socket")
    print("\nseconds per panel re-run: benchmarks/bench_notebooks.py --panels-only 'SYN flood'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
