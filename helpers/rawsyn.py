"""Spoofed SYNs, safely: the guard, the packet builder and the bounded sender.

Used by chapter 01_04 (SYN flood and SYN cookies) and its benchmark, but general: any
experiment that must send SYNs from addresses that are not its own uses this module, and
only this module, so that one guard stands in front of every spoofed packet.

- :func:`check_flood_target` -- the guard. It checks its *parameters* first (count and
  duration bounds, a numeric loopback target, the documented source range), then that the
  namespace is one this process created and holds open, and last that the spoofed range is
  routed to ``lo`` inside it. Bad parameters get their own error whoever asks, with or
  without privileges.
- :func:`build_syns` -- many SYNs from one scapy template, patched per packet (RFC 1624
  incremental checksums): byte-for-byte what scapy builds, about 100× faster.
- :func:`send_flood`, :func:`send_crafted` -- a raw socket inside the namespace and a send
  loop bounded in count and time (:func:`send_bounded`).
- :func:`setup_namespace` -- route :data:`SPOOF_NET` to the namespace's ``lo``, so the
  listener's answers to the spoofed sources go nowhere (and never leave the namespace).
"""
from __future__ import annotations

import ipaddress
import os
import random
import socket
import struct
import time
from typing import Any, Callable, Sequence

from .errors import UnsafeTargetError

#: The spoofed source range: private (RFC 1918), routed to ``lo`` inside the namespace only.
SPOOF_NET = "10.99.0.0/16"
#: Hard bounds of one flood: packets and wall-clock seconds.
MAX_FLOOD = 20000
MAX_SECONDS = 5.0

_SPOOF = ipaddress.ip_network(SPOOF_NET)
_FIX_NS = ("send spoofed SYNs only into a namespace this process created with "
           "helpers.netns.Namespace() and prepared with helpers.rawsyn.setup_namespace(), "
           "targeting 127.0.0.1 inside it (the 01_04 experiments do exactly that).")

# ======================================================================================
# the guard
# ======================================================================================
def _refuse(problem: str, fix: str = _FIX_NS) -> None:
    raise UnsafeTargetError("refusing to send spoofed SYNs: " + problem, fix)


def check_flood_target(ns: Any, target: Any, *, count: Any, seconds: Any = MAX_SECONDS,
                       spoof_net: Any = SPOOF_NET) -> None:
    """Refuse (:class:`~helpers.errors.UnsafeTargetError`) any flood that is not safe.

    Allowed only when all of these hold, checked in this order, before anything is
    created or sent:

    1. ``count`` is a whole number from 0 to :data:`MAX_FLOOD`, ``seconds`` a number
       above 0 and at most :data:`MAX_SECONDS`;
    2. ``target`` is a numeric IPv4 loopback address (127.0.0.0/8);
    3. ``spoof_net`` is exactly :data:`SPOOF_NET`;

    (1-3 are the caller's parameters: a bad one gets its own error first, whoever asks,
    with or without privileges), then

    4. ``ns`` is a :class:`~helpers.netns.Namespace` that this process created and still
       holds open (:func:`helpers.netns.is_course_namespace`): not ``None`` (that would
       be the host's own ``lo``) and not a name (a name can point anywhere);
    5. inside ``ns``, :data:`SPOOF_NET` is routed to ``lo`` (read with ``ip route``: the
       only check that runs a command).
    """
    from .netns import Namespace, is_course_namespace

    # 1. bounds
    if isinstance(count, bool) or not isinstance(count, int):
        _refuse(f"count={count!r} is not a whole number of packets.",
                f"give count a whole number from 0 to {MAX_FLOOD}.")
    if not 0 <= count <= MAX_FLOOD:
        _refuse(f"count={count} is outside 0..{MAX_FLOOD}: every flood is bounded.",
                f"give count a whole number from 0 to {MAX_FLOOD}.")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds != seconds:
        _refuse(f"seconds={seconds!r} is not a duration.",
                f"give seconds a number above 0 and at most {MAX_SECONDS:g}.")
    if not 0 < seconds <= MAX_SECONDS:
        _refuse(f"seconds={seconds} is outside (0, {MAX_SECONDS:g}]: every flood is bounded in time.",
                f"give seconds a number above 0 and at most {MAX_SECONDS:g}.")
    # 2. target
    try:
        addr = ipaddress.ip_address(target) if isinstance(target, str) else None
    except ValueError:
        addr = None
    if not isinstance(addr, ipaddress.IPv4Address):
        _refuse(f"the target {target!r} is not a numeric IPv4 address (names are never resolved).",
                "target 127.0.0.1 inside the experiment's namespace.")
    if not addr.is_loopback:
        _refuse(f"the target {target} is not a loopback address: a flood may only hit 127.0.0.0/8 "
                f"inside a namespace the course created, never another machine or the host.",
                "target 127.0.0.1 inside the experiment's namespace.")
    # 3. the spoofed source range (a parameter: checked before the namespace)
    try:
        net = ipaddress.ip_network(spoof_net) if isinstance(spoof_net, str) else None
    except ValueError:
        net = None
    if net != _SPOOF:
        _refuse(f"the spoofed source range {spoof_net!r} is not the course's documented range "
                f"{SPOOF_NET}.", f"use spoof_net={SPOOF_NET!r} (the default).")
    # 4. the namespace
    if ns is None:
        _refuse(f"no namespace was given, so {target} would be the host's own lo, shared with every "
                f"program on this machine.")
    if not isinstance(ns, Namespace):
        _refuse(f"{ns!r} is not a Namespace object this process created (a name such as 'default' "
                f"or 'tcpcourse-…' is not accepted: it could point at any namespace).")
    if ns.pid != os.getpid() or not is_course_namespace(ns):
        _refuse(f"the namespace {ns.name} is not one this process created and still holds open "
                f"(it is {ns._state}).")
    # 5. the route: the only check that runs a command
    routes = ns.ip("route", "show", SPOOF_NET, check=False).stdout
    if "dev lo" not in routes:
        _refuse(f"inside {ns.name}, {SPOOF_NET} is not routed to lo (ip route says {routes.strip()!r}), "
                f"so SYN-ACKs to the spoofed sources would have nowhere safe to go.",
                f"add the route first: ns.ip('route', 'add', '{SPOOF_NET}', 'dev', 'lo') "
                f"(setup_namespace() does it).")


# ======================================================================================
# building SYNs: one scapy template, patched per packet
# ======================================================================================
def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _csum_update(csum: int, added: int) -> int:
    """RFC 1624 incremental update: fields that were 0 in the template now add *added*."""
    return ~_fold((~csum & 0xFFFF) + _fold(added)) & 0xFFFF


def syn_template(port: int, *, target: str = "127.0.0.1", mss: int | None = 1460,
                 options: Sequence | None = None) -> bytes:
    """One SYN built by scapy: source 10.99.0.0, source port 0, seq 0 (patched later)."""
    from scapy.layers.inet import IP, TCP

    opts = list(options) if options is not None else ([("MSS", mss)] if mss else [])
    return bytes(IP(src=str(_SPOOF.network_address), dst=target, id=0) /
                 TCP(sport=0, dport=port, flags="S", seq=0, window=64240, options=opts))


def syn_sources(count: int, seed: int = 0) -> list[tuple[str, int, int]]:
    """*count* distinct (source address, source port, ISN) triples in :data:`SPOOF_NET`.

    Sources are drawn without replacement (no two SYNs share a 4-tuple, so each one
    wants its own half-open entry); ports and ISNs are random; all seeded.
    """
    rnd = random.Random(seed)
    hosts = rnd.sample(range(1, _SPOOF.num_addresses - 1), count)
    base = int(_SPOOF.network_address)
    return [(str(ipaddress.IPv4Address(base + h)), rnd.randrange(1024, 65536), rnd.getrandbits(32))
            for h in hosts]


def build_syns(port: int, count: int, *, seed: int = 0, target: str = "127.0.0.1",
               mss: int = 1460) -> list[bytes]:
    """*count* SYNs to *target*:*port* from distinct spoofed sources, ready for a raw socket.

    Built once: scapy builds a template (IP + TCP + MSS option, checksums included),
    then each copy gets its source address, source port and ISN patched in, and both
    checksums updated incrementally (RFC 1624). The result is byte-for-byte what scapy
    would build for each packet (the tests compare), about 100× faster.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_FLOOD:
        _refuse(f"count={count!r} is outside 0..{MAX_FLOOD}.", f"give count from 0 to {MAX_FLOOD}.")
    tmpl = syn_template(port, target=target, mss=mss)
    ihl = (tmpl[0] & 0x0F) * 4
    ip_csum = struct.unpack_from("!H", tmpl, 10)[0]
    tcp_csum = struct.unpack_from("!H", tmpl, ihl + 16)[0]
    base = int(_SPOOF.network_address)
    out = []
    buf = bytearray(tmpl)
    for src, sport, seq in syn_sources(count, seed):
        low = int(ipaddress.IPv4Address(src)) - base          # the /16's host part (16 bits)
        struct.pack_into("!I", buf, 12, base + low)
        struct.pack_into("!H", buf, 10, _csum_update(ip_csum, low))
        struct.pack_into("!H", buf, ihl, sport)
        struct.pack_into("!I", buf, ihl + 4, seq)
        # the pseudo-header holds the source address: the TCP checksum sees it too
        struct.pack_into("!H", buf, ihl + 16, _csum_update(tcp_csum, low + sport + (seq >> 16) + (seq & 0xFFFF)))
        out.append(bytes(buf))
    return out


# ======================================================================================
# sending
# ======================================================================================
def send_bounded(sendto: Callable[[bytes], Any], packets: Sequence[bytes], *, count: int,
                 seconds: float, check_every: int = 64,
                 on_chunk: Callable[[int], None] | None = None, chunks: int = 1) -> dict:
    """Send at most *count* packets, for at most *seconds*: the loop of every flood.

    The clock is read every *check_every* packets (reading it per packet would halve
    the rate). With *chunks* > 1, *on_chunk(sent)* is called after each of that many
    equal slices (the experiment samples the queue there; that time is not counted in
    ``send_seconds``). Returns sent, send_seconds, wall_seconds, stopped ("count" or "time").
    """
    n = min(int(count), len(packets))
    chunks = max(1, min(int(chunks), max(n, 1)))
    bounds = [round(n * (i + 1) / chunks) for i in range(chunks)]
    t0 = time.monotonic()
    deadline = t0 + float(seconds)
    send_s = 0.0
    sent = 0
    stopped = "count"
    for stop in bounds:
        c0 = time.perf_counter()
        while sent < stop:
            end = min(stop, sent + check_every)
            for i in range(sent, end):
                sendto(packets[i])
            sent = end
            if time.monotonic() >= deadline:
                stopped = "time"
                break
        send_s += time.perf_counter() - c0
        if on_chunk is not None:
            on_chunk(sent)
        if stopped == "time":
            break
    return {"sent": sent, "send_seconds": send_s, "wall_seconds": time.monotonic() - t0,
            "stopped": stopped if sent < n else "count",
            "rate_pps": sent / send_s if send_s > 0 else None}


def raw_sender(ns: Any, target: str = "127.0.0.1"):
    """A raw IPv4 socket created inside *ns* (IP_HDRINCL implied) and its send function."""
    raw = ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    dest = (target, 0)
    return raw, (lambda pkt: raw.sendto(pkt, dest))


def send_flood(ns: Any, port: int, count: int, *, seconds: float = MAX_SECONDS, seed: int = 0,
          target: str = "127.0.0.1", spoof_net: str = SPOOF_NET,
          on_chunk: Callable[[int], None] | None = None, chunks: int = 1,
          packets: Sequence[bytes] | None = None) -> dict:
    """Send *count* spoofed SYNs to *target*:*port* inside namespace *ns*, fast and bounded.

    Calls :func:`check_flood_target` first (nothing is built, created or sent when it
    refuses), builds the SYNs (:func:`build_syns`, unless *packets* are given), then
    sends them through a raw socket inside *ns* in a tight loop that stops at *count*
    packets or *seconds*, whichever comes first.
    """
    check_flood_target(ns, target, count=count, seconds=seconds, spoof_net=spoof_net)
    t0 = time.perf_counter()
    pkts = list(packets) if packets is not None else build_syns(port, count, seed=seed, target=target)
    build_s = time.perf_counter() - t0
    raw, send = raw_sender(ns, target)
    try:
        out = send_bounded(send, pkts, count=count, seconds=seconds, on_chunk=on_chunk, chunks=chunks)
    finally:
        raw.close()
    out["build_seconds"] = build_s
    return out


def send_crafted(ns: Any, port: int, syns: Sequence[dict], *, target: str = "127.0.0.1") -> int:
    """Send a few hand-made SYNs (each ``{"src", "sport", "seq", "options"}``), guarded.

    The sources must lie in :data:`SPOOF_NET`. Built one by one with scapy (they are few).
    """
    from scapy.layers.inet import IP, TCP

    for s in syns:
        if ipaddress.ip_address(s["src"]) not in _SPOOF:
            _refuse(f"the crafted source {s['src']} lies outside {SPOOF_NET}.",
                    f"use a source address in {SPOOF_NET}.")
    check_flood_target(ns, target, count=len(syns), seconds=MAX_SECONDS)
    pkts = [bytes(IP(src=s["src"], dst=target) / TCP(sport=s["sport"], dport=port, flags=s.get("flags", "S"),
                                                      seq=s["seq"], ack=s.get("ack", 0), window=64240,
                                                      options=list(s.get("options", [("MSS", 1460)]))))
            for s in syns]
    raw, send = raw_sender(ns, target)
    try:
        return send_bounded(send, pkts, count=len(pkts), seconds=MAX_SECONDS)["sent"]
    finally:
        raw.close()


# ======================================================================================
# the namespace
# ======================================================================================
def setup_namespace(ns: Any) -> None:
    """Route :data:`SPOOF_NET` to ``lo`` inside *ns* (SYN-ACKs to it go nowhere).

    Not a ``blackhole`` route: sending the SYN-ACK would then fail and the kernel would
    free the half-open entry at once. Over ``lo`` the send succeeds, the packet comes
    back in, is not for a local address and is dropped; the entry stays.
    """
    ns.ip("route", "add", SPOOF_NET, "dev", "lo")

