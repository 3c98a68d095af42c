"""Chapter 03_03: the 4-tuple and port reuse. How the kernel names a connection, and how a
client runs out of names.

Three experiments:

- :func:`four_tuples` (no privileges, on the host's loopback): one client opens several
  connections to one server port. Each has its own fd and its own 4-tuple; ``ss -tanpe``
  and ``/proc/PID/fd`` tie them together (the socket inode is the key both show). Then two
  connections carry interleaved data at once, and every byte the server reads arrived on the
  socket whose 4-tuple names its sender: the kernel delivers by 4-tuple. The connections
  end with an abortive close (SO_LINGER 0: RST), so no TIME_WAIT is left on the host.
- :func:`port_exhaustion` (a namespace with a tiny ``ip_local_port_range``): connect()
  until the kernel refuses. The count is the rule of ``__inet_hash_connect()``: the range
  (rounded down to an even size, less reserved ports) per destination, because a local
  port may be shared by connections whose 4-tuples differ (other destination address or
  port). connect() takes ports of the range's low parity first; bind(0) takes the other
  parity first (``inet_csk_find_open_port()``) and holds its port for every destination,
  so bind-before-connect runs out after one range; ``IP_BIND_ADDRESS_NO_PORT`` lets
  bind() fix only the address and leaves the port to connect().
- :func:`tw_reuse` (a namespace): the client closes first, so its ports sit in TIME_WAIT
  and the next connect() finds none free (EADDRNOTAVAIL). ``tcp_tw_reuse`` decides whether
  connect() may take over a TIME_WAIT 4-tuple (``tcp_twsk_unique()``): 0 never, 1 always,
  2 (the default) only for loopback addresses; only when the connection had timestamps;
  and only once the TIME_WAIT socket is older than ``tcp_tw_reuse_delay`` (1000 ms; a
  whole-second rule of 1 to 2 s on kernels before 6.13, which lack the sysctl).

Everything that changes a sysctl or leaves TIME_WAIT runs in a course namespace, never on
the host; ``ip netns del`` takes the TIME_WAIT sockets with it.
"""
from __future__ import annotations

import errno
import os
import re
import selectors
import socket
import struct
import subprocess
import time
from typing import Any, Iterable

from .. import progress, rules
from ..errors import CourseError, ParameterError
from ..params import Param
from .base import Result, experiment

HOST = "127.0.0.1"
LINGER0 = struct.pack("ii", 1, 0)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)   # linux/in.h
RANGE_LOW = 40000              # the namespace's ip_local_port_range starts here
SERVER_PORT = 5000             # the namespace's listener: outside the range, so it takes none of it
DESTINATIONS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")   # all local in a namespace's 127.0.0.0/8
OTHER_ADDR = "192.0.2.1"       # TEST-NET-1, added to the namespace's lo: not a loopback address
CHUNK = 4096                   # bytes per write in the delivery test
TW_POLL_S = 0.02               # s between connect() attempts while waiting for TIME_WAIT reuse
TW_SLACK_S = 0.5               # s a loaded machine may add to the reuse delay (scheduling, polling)
TW_EXTRA_S = 1.0               # s the run keeps trying after the predicted reuse time


# ======================================================================================
# rules (to move into helpers/rules.py)
# ======================================================================================
def ip_local_port_range(m: rules.Machine) -> tuple[int, int]:
    """(low, high) of ``net.ipv4.ip_local_port_range`` in the snapshot *m*."""
    rng = m.sysctls.get("ip_local_port_range")
    if not rng or len(rng) != 2:
        raise CourseError("the machine snapshot has no net.ipv4.ip_local_port_range.",
                          "take the snapshot with helpers.rules.Machine.read().")
    return int(rng[0]), int(rng[1])


def _usable_ports(m: rules.Machine, reserved: Iterable[int] = ()) -> tuple[int, dict]:
    low, high = ip_local_port_range(m)
    size = high - low + 1
    scanned = size & ~1 if size > 1 else size     # remaining &= ~1U
    inside = sorted({int(p) for p in reserved if low <= int(p) <= high})
    # with an odd range one port is never scanned: which one depends on the random offset,
    # so a reserved port may or may not be that one; count it as taken (the lower bound)
    return max(0, scanned - len(inside)), {"ip_local_port_range": f"{low} {high}", "size": size,
                                            "scanned (size rounded down to even)": scanned,
                                            "reserved in range": len(inside)}


def _count_prediction(rule: str, formula: str, inputs: dict, per: int, times: int) -> rules.Prediction:
    """Exactly per × times for an even range. With an odd range the scan covers one port
    fewer than the range holds, and which port it leaves out depends on the random offset of
    each call: the last port of the range is found only by luck, so the count lies between
    the even-rounded size and the full size (per range)."""
    if inputs["size"] % 2 and inputs["size"] > 1:
        extra = 1 if inputs["reserved in range"] == 0 else 0
        return rules.Prediction(rule, formula + " (odd range: the last port only by luck of the offset)",
                                inputs, per * times, low=per * times, high=(per + extra) * times,
                                unit="connections")
    return rules.Prediction(rule, formula, inputs, per * times, unit="connections")


def inet_hash_connect(m: rules.Machine, destinations: int = 1, reserved: Iterable[int] = ()) -> rules.Prediction:
    """How many connect()s (no port bound first) succeed before EADDRNOTAVAIL, mirroring
    ``__inet_hash_connect()`` (net/ipv4/inet_hashtables.c): it scans ``remaining = high - low
    + 1`` ports, rounded down to even when above 1, skipping ``ip_local_reserved_ports``; a
    port already used by connect() is taken again when the new 4-tuple is unique
    (``__inet_check_established``), so each further destination address gets the range
    again."""
    per, inputs = _usable_ports(m, reserved)
    return _count_prediction("__inet_hash_connect()",
                             "(range size rounded down to even − reserved) × destinations",
                             {**inputs, "destinations": destinations}, per, destinations)


def inet_csk_find_open_port(m: rules.Machine, destinations: int = 1, reserved: Iterable[int] = ()) -> rules.Prediction:
    """How many bind(port 0)-then-connect() succeed: ``inet_csk_find_open_port()`` scans
    the same even-rounded range, but a port bind() took belongs to that socket for every
    destination (its bind bucket has fastreuse ≥ 0, which ``__inet_hash_connect`` and a
    later bind() both skip): one range in all, whatever the number of destinations. The
    next bind() fails with EADDRINUSE."""
    per, inputs = _usable_ports(m, reserved)
    return _count_prediction("inet_csk_find_open_port()",
                             "range size rounded down to even − reserved, for all destinations together",
                             {**inputs, "destinations": destinations}, per, 1)


def port_parity(m: rules.Machine, how: str) -> rules.Prediction:
    """Which parity the first half of the ports has: connect() scans ports of the range's
    low parity first (``offset &= ~1U``), bind(0) the other parity first (``offset |= 1U``,
    "to not pollute connect() users"), since Linux 4.6."""
    if how not in ("connect", "bind"):
        raise ParameterError(f"how={how!r} is not a way to pick a port.", "use 'connect' or 'bind'.")
    low, high = ip_local_port_range(m)
    low_parity = "even" if low % 2 == 0 else "odd"
    other = "odd" if low_parity == "even" else "even"
    value = low_parity if how == "connect" else other
    fn = "__inet_hash_connect()" if how == "connect" else "inet_csk_find_open_port()"
    return rules.Prediction(fn, ("first pass over ports of low's parity" if how == "connect"
                                 else "first pass over ports of the parity opposite to low's"),
                            {"low": low, "low parity": low_parity}, value)


def tcp_twsk_unique(m: rules.Machine, *, loopback: bool, timestamps: bool | None = None) -> rules.Prediction:
    """Whether connect() may take over a TIME_WAIT 4-tuple (``tcp_twsk_unique()``,
    net/ipv4/tcp_ipv4.c): ``tcp_tw_reuse`` 1, or 2 with a loopback source or destination
    address (127.0.0.0/8, ::1, or a socket bound to lo), and the connection carried
    timestamps (``tw_ts_recent_stamp`` non-zero). A TIME_WAIT from an orphaned FIN_WAIT_2
    is never reused."""
    reuse = m.sysctls.get("tcp_tw_reuse")
    reuse = 2 if reuse is None else int(reuse)
    ts = bool(m.sysctls.get("tcp_timestamps", 1)) if timestamps is None else bool(timestamps)
    allowed = reuse == 1 or (reuse == 2 and loopback)
    return rules.Prediction("tcp_twsk_unique()",
                            "(tcp_tw_reuse == 1 or (== 2 and a loopback address)) and timestamps",
                            {"tcp_tw_reuse": reuse, "loopback address": loopback, "timestamps": ts},
                            bool(allowed and ts))


def tw_reuse_delay(m: rules.Machine, delay_ms: int | None) -> rules.Prediction:
    """How old (s) a TIME_WAIT socket is when connect() first may take it over. With the
    sysctl ``tcp_tw_reuse_delay`` (Linux 6.13+): once ``tcp_clock_ms()`` is past the
    TIME_WAIT socket's stamp + delay. Before it: ``ktime_get_seconds()`` past
    ``ts_recent_stamp + 1``, whole seconds, so between 1 and 2 s. The upper edge adds
    TW_SLACK_S for polling and a loaded machine."""
    if delay_ms is not None:
        low = int(delay_ms) / 1000
        return rules.Prediction("tcp_twsk_unique()", "age > tcp_tw_reuse_delay",
                                {"tcp_tw_reuse_delay": f"{int(delay_ms)} ms", "slack": f"{TW_SLACK_S} s"},
                                low, low=low, high=low + TW_POLL_S + TW_SLACK_S, unit="s")
    return rules.Prediction("tcp_twsk_unique()", "ktime_get_seconds() > ts_recent_stamp + 1 (whole seconds)",
                            {"tcp_tw_reuse_delay": "absent (kernel before 6.13)", "slack": f"{TW_SLACK_S} s"},
                            1.5, low=1.0, high=2.0 + TW_POLL_S + TW_SLACK_S, unit="s")


def four_tuple_space(m: rules.Machine, reserved: Iterable[int] = ()) -> rules.Prediction:
    """The seed's "2^32 addresses × 2^16 ports ≈ 281 trillion connections to one server port"
    counts every possible *client* (address, port). One client address can open to one
    server address and port only as many connections as its ephemeral range holds
    (``__inet_hash_connect``); 2^48 needs 2^32 client addresses."""
    per, inputs = _usable_ports(m, reserved)
    return rules.Prediction("__inet_hash_connect()",
                            "one client address → one server address:port: the even-rounded range",
                            {**inputs, "seed's claim": f"2^48 = {2 ** 48:,}"}, per, unit="connections")


# ======================================================================================
# experiment 1: four_tuples (host loopback, no privileges)
# ======================================================================================
def _abort(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): no TIME_WAIT left behind."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    except OSError:
        pass
    sock.close()


def _inode(fd: int) -> int | None:
    """The socket inode of *fd* from /proc/self/fd (``socket:[12345]``)."""
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    m = re.match(r"socket:\[(\d+)\]", link)
    return int(m.group(1)) if m else None


_SS_USERS = re.compile(r'\("([^"]*)",pid=(\d+),fd=(\d+)\)')


def parse_ss_pe(text: str) -> list[dict]:
    """Rows of ``ss -tanpeH``: state, local/peer address and port, inode, and every
    (process, pid, fd) that holds the socket."""
    rows = []
    for line in text.splitlines():
        tok = line.split()
        if len(tok) < 5:
            continue
        local, _, lport = tok[3].rpartition(":")
        peer, _, pport = tok[4].rpartition(":")
        ino = re.search(r"\bino:(\d+)", line)
        rows.append({"state": tok[0], "local": local.strip("[]"), "lport": int(lport),
                     "peer": peer.strip("[]"), "pport": None if pport == "*" else int(pport),
                     "ino": int(ino.group(1)) if ino else None,
                     "users": [{"comm": c, "pid": int(p), "fd": int(f)} for c, p, f in _SS_USERS.findall(line)]})
    return rows


def ss_pe(port: int) -> list[dict]:
    """``ss -tanpe`` rows of the sockets on *port* (either end)."""
    from ..kernel import require_ss
    require_ss()
    argv = ["ss", "-tanpeH", f"( sport = :{port} or dport = :{port} )"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise CourseError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}",
                          "check that iproute2's ss works here (`ss -tanpe`).")
    return parse_ss_pe(proc.stdout)


def _chunk(lport: int, seq: int) -> bytes:
    head = f"{lport}:{seq:06d}\n".encode()
    return head + bytes([65 + lport % 26]) * (CHUNK - len(head))


def _deliver(pairs: list[tuple[socket.socket, socket.socket]], chunks: int, deadline_s: float = 10.0) -> dict:
    """Interleave writes on every client (round robin, non-blocking) while reading every
    server socket; return what each server socket received and the order of the reads."""
    want = {c.getsockname()[1]: b"".join(_chunk(c.getsockname()[1], i) for i in range(chunks)) for c, _ in pairs}
    sent = {p: 0 for p in want}
    got = {s.getpeername()[1]: bytearray() for _, s in pairs}
    reads: list[int] = []          # peer port of each successful recv, in order
    for c, s in pairs:
        c.setblocking(False)
        s.setblocking(False)
    sel = selectors.DefaultSelector()
    for _, s in pairs:
        sel.register(s, selectors.EVENT_READ)
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            for c, _ in pairs:
                p = c.getsockname()[1]
                if sent[p] < len(want[p]):
                    try:
                        sent[p] += c.send(want[p][sent[p]:sent[p] + CHUNK])
                    except BlockingIOError:
                        pass
            for key, _ in sel.select(timeout=0.01):
                s = key.fileobj
                try:
                    data = s.recv(CHUNK)
                except BlockingIOError:
                    continue
                if data:
                    got[s.getpeername()[1]] += data
                    reads.append(s.getpeername()[1])
            if all(len(got[p]) >= len(want[p]) for p in want):
                break
        else:
            raise CourseError("the delivery test did not finish within its time limit.",
                              "the machine is very busy; run it again.")
    finally:
        sel.close()
    switches = sum(1 for a, b in zip(reads, reads[1:]) if a != b)
    return {"bytes_each": chunks * CHUNK, "chunks_each": chunks,
            "received": {str(p): len(got[p]) for p in got},
            "intact": {str(p): bytes(got[p]) == want.get(p) for p in got},
            "headers_seen": {str(p): sorted({int(h) for h in re.findall(rb"(\d+):\d{6}\n", bytes(got[p]))}) for p in got},
            "reads": len(reads), "switches": switches}


def check_four_tuples(result: Result) -> None:
    """Each connection: its own fd and 4-tuple; ss and /proc agree on which fd holds which
    tuple; the server's view mirrors the client's; bytes land on the socket named by their
    sender's 4-tuple."""
    d = result.data
    conns = d["connections"]
    assert len(conns) == d["n"], (len(conns), d["n"])
    tuples = {(c["client"]["local"], c["client"]["lport"], c["client"]["peer"], c["client"]["pport"]) for c in conns}
    assert len(tuples) == d["n"], f"the {d['n']} client sockets must have {d['n']} distinct 4-tuples: {tuples}"
    assert len({c["client"]["lport"] for c in conns}) == d["n"], "one client address: only the port differs"
    for c in conns:
        cl, sv = c["client"], c["server"]
        assert (cl["local"], cl["lport"]) == (sv["peer"], sv["pport"]) and \
            (cl["peer"], cl["pport"]) == (sv["local"], sv["lport"]), f"the server's 4-tuple mirrors the client's: {c}"
        for side in (cl, sv):
            row = side["ss"]
            assert row is not None, f"ss -tanpe shows the socket with inode {side['inode']} (fd {side['fd']})"
            assert (row["local"], row["lport"], row["peer"], row["pport"]) == \
                (side["local"], side["lport"], side["peer"], side["pport"]), \
                f"fd {side['fd']}: ss gives inode {side['inode']} the tuple {row}, getsockname/getpeername {side}"
            if row["users"]:   # ss -p names the process only where it may read its /proc/PID/fd
                assert {"pid": d["pid"], "fd": side["fd"]} in [{"pid": u["pid"], "fd": u["fd"]} for u in row["users"]], \
                    f"ss -p names pid {d['pid']} fd {side['fd']} for inode {side['inode']}: {row['users']}"
    dv = d["delivery"]
    for port, ok in dv["intact"].items():
        assert ok, f"the server socket whose peer port is {port} received exactly what that client sent"
        assert dv["headers_seen"][port] == [int(port)], \
            f"every chunk read on the socket for peer port {port} was written by that client: {dv['headers_seen'][port]}"
    assert dv["switches"] >= 1, "the two streams' reads interleave: both connections carried data at once"


@experiment(
    "four_tuples", chapter="03_03",
    params=[Param("n", "connections", 4, choices=(2, 4, 8), minimum=2, maximum=32,
                  doc="connections one client opens to one server port")],
    invariant=check_four_tuples,
    claim="each connection has its own fd and 4-tuple (ss -tanpe and /proc/PID/fd agree); the kernel "
          "delivers every byte to the socket whose 4-tuple names its sender",
)
def four_tuples(run, n: int = 4) -> dict:
    """*n* connections from one client to one server port on 127.0.0.1: the fd, inode and
    4-tuple of every socket (both ends) from Python, /proc/self/fd and ``ss -tanpe``; then
    two of them carry interleaved data at once."""
    listener = socket.socket()
    socks: list[socket.socket] = [listener]
    try:
        listener.bind((HOST, 0))
        listener.listen(n + 1)
        port = listener.getsockname()[1]
        pairs = []
        for _ in range(n):
            c = socket.socket()
            socks.append(c)
            c.settimeout(5)
            c.connect((HOST, port))
            listener.settimeout(5)
            s, _ = listener.accept()
            socks.append(s)
            pairs.append((c, s))
        view = ss_pe(port)
        by_ino = {r["ino"]: r for r in view if r["ino"] is not None}

        def side(sock: socket.socket) -> dict:
            la, lp = sock.getsockname()
            pa, pp = sock.getpeername()
            ino = _inode(sock.fileno())
            return {"fd": sock.fileno(), "inode": ino, "local": la, "lport": lp, "peer": pa, "pport": pp,
                    "ss": by_ino.get(ino)}

        conns = [{"client": side(c), "server": side(s)} for c, s in pairs]
        lfd = listener.fileno()
        lrow = by_ino.get(_inode(lfd))
        delivery = _deliver(pairs[:2], chunks=64)
    finally:
        for s in reversed(socks):
            _abort(s)
    return {"n": n, "port": port, "pid": os.getpid(), "connections": conns,
            "listener": {"fd": lfd, "ss": lrow},
            "ss": view, "delivery": delivery}


def tuple_table(result: Result):
    """One row per socket: which end, fd, inode, the 4-tuple and what ss -tanpe says."""
    import pandas as pd
    rows = []
    for i, c in enumerate(result.data["connections"], 1):
        for who in ("client", "server"):
            s = c[who]
            row = s["ss"] or {}
            users = row.get("users") or []
            rows.append({"connection": i, "end": who, "fd": s["fd"], "inode": s["inode"],
                         "4-tuple": f"{s['local']}:{s['lport']} → {s['peer']}:{s['pport']}",
                         "ss state": row.get("state"),
                         "ss process": ", ".join(f"{u['comm']} pid {u['pid']} fd {u['fd']}" for u in users) or "—"})
    return pd.DataFrame(rows)


# ======================================================================================
# experiment 2: port_exhaustion (namespace)
# ======================================================================================
MODES = ("connect", "bind", "bind_no_port")


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno, str(exc.errno))


def _reserved(ns) -> list[int]:
    text = str(ns.sysctl("net.ipv4.ip_local_reserved_ports") or "").strip()
    out: list[int] = []
    for part in filter(None, text.replace(" ", "").split(",")):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def _ns_sysctls(ns, names: Iterable[str]) -> dict:
    out = {}
    for k in names:
        try:
            out[k] = ns.sysctl(k)
        except (CourseError, OSError):      # e.g. tcp_tw_reuse_delay before Linux 6.13
            out[k] = None
    return out


def check_exhaustion(result: Result) -> None:
    """The count of successful connections, where the first failure came from, and the
    parity of the first half of the ports, each against its kernel rule."""
    d = result.data
    m = result.machine_snapshot()
    mode, dests = d["mode"], d["destinations"]
    reserved = d["reserved"]
    ok = [a for a in d["attempts"] if a["ok"]]
    rule = inet_csk_find_open_port if mode == "bind" else inet_hash_connect
    rules.assert_rule(result, rule, len(ok), dests, reserved, quiet=True,
                      what=f"successful connections ({mode}, {dests} destination(s))")
    fails = [a for a in d["attempts"] if not a["ok"]]
    assert len(fails) == dests, f"every destination ends with one refused attempt: {fails}"
    want = ("bind", "EADDRINUSE") if mode == "bind" else ("connect", "EADDRNOTAVAIL")
    for f in fails:
        assert (f["call"], f["errno"]) == want, f"{mode}: the kernel refuses with {want}, got {f}"
    low, high = ip_local_port_range(m)
    assert all(low <= a["port"] <= high for a in ok), "every local port lies in ip_local_port_range"
    per_dest = {}
    for a in ok:
        per_dest.setdefault(a["dest"], []).append(a["port"])
    for dest, ports in per_dest.items():
        assert len(set(ports)) == len(ports), f"{dest}: no local port twice to the same destination"
    if mode != "bind" and dests > 1:
        first = set(per_dest.get(DESTINATIONS[0], []))
        for dest in DESTINATIONS[1:dests]:
            assert set(per_dest.get(dest, [])) == first, \
                f"{dest} reuses exactly the local ports {DESTINATIONS[0]} took (only the 4-tuple must be unique)"
    # parity: the first half of the ports picked (per destination) share one parity
    half = ((high - low + 1) & ~1) // 2     # the first pass covers half the scanned ports
    how = "bind" if mode == "bind" else "connect"
    pred = port_parity(m, how)
    for dest, ports in per_dest.items():
        first_half = ports[:half] if len(ports) >= half else ports
        parities = {"even" if p % 2 == 0 else "odd" for p in first_half if p not in reserved}
        if first_half:
            pred.check(parities.pop() if len(parities) == 1 else "mixed", quiet=True,
                       what=f"parity of the first {len(first_half)} ports to {dest}")


@experiment(
    "port_exhaustion", chapter="03_03", needs={"namespaces"},
    params=[
        Param("ports", "ports in ip_local_port_range", 10, choices=(10,), minimum=2, maximum=64,
              doc="size of the namespace's ephemeral port range (from 40000)"),
        Param("destinations", "destination addresses", 1, choices=(1, 3), minimum=1, maximum=3,
              doc="127.0.0.1, .2, .3: one listener on 0.0.0.0 serves them all"),
        Param("mode", "how the client gets its port", "connect", choices=MODES,
              doc="connect: connect() picks; bind: bind(port 0) first; "
                  "bind_no_port: bind(port 0) with IP_BIND_ADDRESS_NO_PORT, then connect()"),
    ],
    grid=[{"ports": 10, "destinations": 1, "mode": "connect"},
          {"ports": 10, "destinations": 3, "mode": "connect"},
          {"ports": 10, "destinations": 3, "mode": "bind"},
          {"ports": 10, "destinations": 3, "mode": "bind_no_port"}],
    invariant=check_exhaustion,
    claim="connect() gets the even-rounded port range per destination address, then EADDRNOTAVAIL; "
          "bind(0) first gets one range in all, then EADDRINUSE; IP_BIND_ADDRESS_NO_PORT restores sharing",
)
def port_exhaustion(run, ports: int = 10, destinations: int = 1, mode: str = "connect") -> dict:
    """In a namespace whose ephemeral range holds *ports* ports, open connections to each of
    *destinations* addresses until the kernel refuses; every attempt's port, call and errno."""
    from ..netns import Namespace
    if mode not in MODES:
        raise ParameterError(f"mode={mode!r} is not a way to get a port.", f"use one of {', '.join(MODES)}.")
    attempts: list[dict] = []
    t0 = time.monotonic()
    rng = f"{RANGE_LOW} {RANGE_LOW + ports - 1}"
    with Namespace(sysctls={"net.ipv4.ip_local_port_range": rng}, name="ports") as ns:
        machine = rules.Machine.read(ns).as_dict()
        reserved = _reserved(ns)
        sysctls = _ns_sysctls(ns, ("net.ipv4.ip_local_port_range", "net.ipv4.ip_local_reserved_ports"))
        lsock = ns.socket()
        lsock.bind(("0.0.0.0", SERVER_PORT))
        lsock.listen(ports * destinations + 8)
        held: list[socket.socket] = []
        for di, dest in enumerate(DESTINATIONS[:destinations]):
            for i in range(ports + 2):             # bounded: the rule says ≤ ports succeed
                s = ns.socket()
                call = "socket"
                try:
                    if mode in ("bind", "bind_no_port"):
                        if mode == "bind_no_port":
                            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                        call = "bind"
                        s.bind(("127.0.0.1" if dest.startswith("127.") else dest, 0))
                    call = "connect"
                    s.settimeout(2)
                    s.connect((dest, SERVER_PORT))
                except OSError as exc:
                    attempts.append({"dest": dest, "i": i, "ok": False, "call": call, "errno": _errname(exc),
                                     "port": s.getsockname()[1] or None, "t": round(time.monotonic() - t0, 4)})
                    s.close()
                    break
                held.append(s)
                attempts.append({"dest": dest, "i": i, "ok": True, "call": "connect", "errno": None,
                                 "port": s.getsockname()[1], "t": round(time.monotonic() - t0, 4),
                                 "in_use": len(held)})
            progress.report((di + 1) / destinations, f"{dest}: done")
        # the kernel's own view: client-side sockets established from the range
        view = ns.run(["ss", "-tanH", "state", "established", f"( dport = :{SERVER_PORT} )"]).stdout
        ss_rows = [line.split() for line in view.splitlines() if line.strip()]
        ss_ports = sorted({int(r[2].rpartition(":")[2]) for r in ss_rows})
        for s in held:
            _abort(s)
    return {"ports": ports, "destinations": destinations, "mode": mode, "range": rng,
            "reserved": [p for p in reserved if RANGE_LOW <= p < RANGE_LOW + ports],
            "attempts": attempts, "ss_established": len(ss_rows), "ss_ports": ss_ports,
            "sysctls": sysctls, "machine": machine}


def attempts_table(result: Result):
    """One row per attempt: destination, its number, the outcome, the local port."""
    import pandas as pd
    rows = [{"destination": a["dest"], "attempt": a["i"] + 1,
             "outcome": "connected" if a["ok"] else f"{a['call']}() failed: {a['errno']}",
             "local port": str(a["port"]) if a["ok"] else "",
             "parity": ("even" if a["port"] % 2 == 0 else "odd") if a["ok"] else ""}
            for a in result.data["attempts"]]
    return pd.DataFrame(rows)


# ======================================================================================
# experiment 3: tw_reuse (namespace)
# ======================================================================================
def _tcp_states(text: str, low: int, high: int) -> dict[str, int]:
    """Count client-side sockets by state from /proc/net/tcp, for local ports in [low, high]."""
    names = {"01": "ESTABLISHED", "06": "TIME_WAIT"}
    out = {"ESTABLISHED": 0, "TIME_WAIT": 0, "server TIME_WAIT": 0}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 4:
            continue
        lport = int(f[1].rsplit(":", 1)[1], 16)
        if low <= lport <= high and f[3] in names:
            out[names[f[3]]] += 1
        elif lport == SERVER_PORT and f[3] == "06":
            out["server TIME_WAIT"] += 1
    return out


def check_tw_reuse(result: Result) -> None:
    """Every port in TIME_WAIT; whether connect() took one over, and when, against
    tcp_twsk_unique() on the namespace's settings; TcpExtTWRecycled counts the reuses."""
    d = result.data
    m = result.machine_snapshot()
    if d.get("closer", "client") == "server":
        # (≤ ports on the server: a new SYN whose 4-tuple a server TIME_WAIT holds, with a newer
        # timestamp, ends that TIME_WAIT and opens the new connection: tcp_timewait_state_process)
        assert d["tw_before"] == 0 and 1 <= d["server_tw_before"] <= d["ports"], \
            f"the server closed first: TIME_WAIT is on its side ({d['server_tw_before']}), none on the " \
            f"client's ports ({d['tw_before']})"
        assert all(a["ok"] for a in d["attempts"]) and len(d["attempts"]) == d["ports"], \
            f"the client's ports are free: every connect() succeeds at once: {d['attempts']}"
        assert d["counters"].get("TcpExtTWRecycled", 0) == 0, "no TIME_WAIT of the client was taken over"
        return
    assert d["tw_before"] == d["ports"], \
        f"all {d['ports']} client ports sit in TIME_WAIT after the client closed first: {d['tw_before']}"
    assert d["first_attempt"]["ok"] is False and d["first_attempt"]["errno"] == "EADDRNOTAVAIL", \
        f"with every port in TIME_WAIT the next connect() is refused at once: {d['first_attempt']}"
    pred = tcp_twsk_unique(m, loopback=d["loopback"])
    reused = [a for a in d["attempts"] if a["ok"]]
    pred.check(bool(reused), quiet=True, what="a connect() took over a TIME_WAIT port within the run")
    counters = d["counters"]
    assert counters.get("TcpExtTWRecycled", 0) == len(reused), \
        f"TcpExtTWRecycled counts each take-over: {counters.get('TcpExtTWRecycled', 0)} vs {len(reused)}"
    if reused:
        band = tw_reuse_delay(m, d["sysctls"].get("net.ipv4.tcp_tw_reuse_delay"))
        for a in reused:
            band.check(a["age"], quiet=True, what=f"age of port {a['port']}'s TIME_WAIT when connect() took it")
        assert all(a["errno"] == "EADDRNOTAVAIL" for a in d["attempts"] if not a["ok"]), d["attempts"]
        assert len({a["port"] for a in reused}) == len(reused), "each reuse takes a different TIME_WAIT port"
    else:
        waited = max(a["t"] for a in d["attempts"])
        assert waited >= d["window"] - 0.25, \
            f"the run kept trying for its whole window ({d['window']} s), not {waited} s"


@experiment(
    "tw_reuse", chapter="03_03", needs={"namespaces"}, seconds=2.5,
    params=[
        Param("tw_reuse", "net.ipv4.tcp_tw_reuse", 2, choices=(0, 1, 2),
              doc="0: never reuse a TIME_WAIT port for connect(); 1: always; 2 (default): loopback only"),
        Param("dest", "destination", "loopback", choices=("loopback", "other"),
              doc=f"loopback: 127.0.0.1; other: {OTHER_ADDR} on the namespace's lo (not a loopback address)"),
        Param("timestamps", "net.ipv4.tcp_timestamps", 1, choices=(0, 1),
              doc="TCP timestamps; TIME_WAIT reuse needs them"),
        Param("ports", "ports in ip_local_port_range", 4, choices=(4,), minimum=2, maximum=16,
              doc="size of the namespace's ephemeral port range"),
        Param("closer", "who closes first", "client", choices=("client", "server"),
              doc="the side that closes first gets the TIME_WAIT"),
    ],
    grid=[{"tw_reuse": 2, "dest": "loopback", "timestamps": 1, "ports": 4, "closer": "client"},
          {"tw_reuse": 0, "dest": "loopback", "timestamps": 1, "ports": 4, "closer": "client"},
          {"tw_reuse": 1, "dest": "loopback", "timestamps": 1, "ports": 4, "closer": "client"},
          {"tw_reuse": 2, "dest": "other", "timestamps": 1, "ports": 4, "closer": "client"},
          {"tw_reuse": 1, "dest": "other", "timestamps": 1, "ports": 4, "closer": "client"},
          {"tw_reuse": 2, "dest": "loopback", "timestamps": 0, "ports": 4, "closer": "client"},
          {"tw_reuse": 0, "dest": "loopback", "timestamps": 1, "ports": 4, "closer": "server"}],
    invariant=check_tw_reuse,
    claim="TIME_WAIT holds the client's ports (EADDRNOTAVAIL); tcp_tw_reuse 1, or 2 on a loopback address, "
          "with timestamps, lets connect() take one over once it is older than tcp_tw_reuse_delay; "
          "when the server closes first, the TIME_WAIT is its own and the client's ports stay free",
)
def tw_reuse(run, tw_reuse: int = 2, dest: str = "loopback", timestamps: int = 1, ports: int = 4,
             closer: str = "client") -> dict:
    """Fill a *ports*-port range with connections that *closer* closes first (the client: its
    ports go to TIME_WAIT), then try connect() every TW_POLL_S until *ports* connections are
    open again or the window ends."""
    from ..kernel import nstat_delta
    from ..netns import Namespace
    low, high = RANGE_LOW, RANGE_LOW + ports - 1
    addr = HOST if dest == "loopback" else OTHER_ADDR
    with Namespace(sysctls={"net.ipv4.ip_local_port_range": f"{low} {high}",
                            "net.ipv4.tcp_tw_reuse": tw_reuse, "net.ipv4.tcp_timestamps": timestamps},
                   name="twreuse") as ns:
        if dest != "loopback":
            ns.ip("addr", "add", f"{OTHER_ADDR}/32", "dev", "lo")
        machine = rules.Machine.read(ns).as_dict()
        sysctls = _ns_sysctls(ns, ("net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_tw_reuse_delay",
                                   "net.ipv4.tcp_timestamps", "net.ipv4.ip_local_port_range"))
        delay_ms = sysctls["net.ipv4.tcp_tw_reuse_delay"]
        band = tw_reuse_delay(rules.Machine.from_dict(machine), delay_ms)
        window = round(band.high - TW_SLACK_S + TW_EXTRA_S, 3)
        lsock = ns.socket()
        lsock.bind(("0.0.0.0", SERVER_PORT))
        lsock.listen(ports + 4)
        lsock.settimeout(2)
        closed_at: dict[int, float] = {}
        samples: list[list] = []
        with nstat_delta(ns) as counters:
            t0 = time.monotonic()
            for _ in range(ports):
                c = ns.socket()
                c.settimeout(2)
                c.connect((addr, SERVER_PORT))
                s, _ = lsock.accept()
                port = c.getsockname()[1]
                first, second = (c, s) if closer == "client" else (s, c)
                first.close()                      # the first closer's end gets TIME_WAIT
                second.settimeout(2)
                if second.recv(1) != b"":
                    raise CourseError(f"the {'server' if closer == 'client' else 'client'} expected EOF.",
                                      "run again.")
                closed_at[port] = time.monotonic() - t0   # just before the FIN that starts TIME_WAIT
                second.close()
            for _ in range(50):                    # ≤ 0.5 s for the last FIN to be processed
                st = _tcp_states(ns.read_proc("net/tcp"), low, high)
                if closer == "server" or st["TIME_WAIT"] >= ports:   # the server's TIME_WAIT is there at once
                    break
                time.sleep(0.01)
            tw_before, server_tw_before = st["TIME_WAIT"], st["server TIME_WAIT"]
            samples.append([round(time.monotonic() - t0, 4), st["ESTABLISHED"], st["TIME_WAIT"],
                            st["server TIME_WAIT"]])
            attempts: list[dict] = []
            held: list[socket.socket] = []
            first_close = min(closed_at.values())
            end = first_close + window
            while time.monotonic() - t0 < end and len(held) < ports:
                s = ns.socket()
                s.settimeout(2)
                t = time.monotonic() - t0
                try:
                    s.connect((addr, SERVER_PORT))
                except OSError as exc:
                    attempts.append({"t": round(t, 4), "ok": False, "errno": _errname(exc), "port": None,
                                     "age": None})
                    s.close()
                else:
                    # the age at the take-over, bounded from above: taken after connect() returned,
                    # from just before the server's close() that sent the FIN starting TIME_WAIT
                    done = time.monotonic() - t0
                    p = s.getsockname()[1]
                    held.append(s)
                    attempts.append({"t": round(t, 4), "ok": True, "errno": None, "port": p,
                                     "age": round(done - closed_at[p], 4) if p in closed_at and closer == "client"
                                     else None})
                st = _tcp_states(ns.read_proc("net/tcp"), low, high)
                samples.append([round(time.monotonic() - t0, 4), st["ESTABLISHED"], st["TIME_WAIT"],
                                st["server TIME_WAIT"]])
                progress.report(min(0.99, (time.monotonic() - t0) / end), "waiting for TIME_WAIT reuse")
                time.sleep(TW_POLL_S)
        delta = counters.delta
        for s in held:
            _abort(s)
    progress.report(1.0, "done")
    return {"tw_reuse": tw_reuse, "dest": dest, "addr": addr, "timestamps": timestamps, "ports": ports,
            "closer": closer, "server_tw_before": server_tw_before,
            "loopback": dest == "loopback", "window": window,
            "closed_at": {str(p): round(t, 4) for p, t in closed_at.items()},
            "tw_before": tw_before, "first_attempt": attempts[0] if attempts else None,
            "attempts": attempts, "samples": samples,
            "counters": {k: v for k, v in delta.items() if k.startswith(("TcpExt", "Tcp"))},
            "sysctls": sysctls, "machine": machine}


def reuse_summary(result: Result) -> dict:
    """Attempts, refusals, reuses and the age of each reused TIME_WAIT socket."""
    d = result.data
    ok = [a for a in d["attempts"] if a["ok"]]
    client = d.get("closer", "client") == "client"
    return {"tcp_tw_reuse": d["tw_reuse"], "destination": d["addr"], "timestamps": d["timestamps"],
            "closes first": d.get("closer", "client"),
            "attempts": len(d["attempts"]), "refused (EADDRNOTAVAIL)": sum(1 for a in d["attempts"] if not a["ok"]),
            "connections made": len(ok),
            "TIME_WAIT ports taken over": len(ok) if client else 0,
            "first take-over at age (s)": min((a["age"] for a in ok if a["age"] is not None), default=None)}


# ======================================================================================
# plots and panel renders
# ======================================================================================
def exhaustion_plot(result: Result):
    """Each attempt in order: the local port it got (dot, coloured by parity) or the call that
    failed (cross), and the ports in use (line), one band per destination."""
    import matplotlib.pyplot as plt
    from .. import plots  # noqa: F401  (the course style)
    d = result.data
    m = result.machine_snapshot()
    low, high = ip_local_port_range(m)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, height_ratios=[2, 1])
    in_use = 0
    xs, used = [], []
    for k, a in enumerate(d["attempts"]):
        if a["ok"]:
            in_use += 1
            ax.plot(k, a["port"], "o", color="tab:blue" if a["port"] % 2 == 0 else "tab:orange")
        else:
            ax.plot(k, low - 1, "x", color="tab:red", markersize=10)
        xs.append(k)
        used.append(in_use)
    for j, dest in enumerate(DESTINATIONS[:d["destinations"]]):
        ks = [k for k, a in enumerate(d["attempts"]) if a["dest"] == dest]
        ax.axvspan(min(ks) - 0.5, max(ks) + 0.5, alpha=0.05 if j % 2 == 0 else 0.15, color="grey")
        label = f"to {dest}" if len(ks) >= 3 else f".{dest.rsplit('.', 1)[1]}"
        ax.text(min(ks) - 0.4, high + 0.6, label, ha="left", fontsize=8)
    ax.set_ylim(low - 2, high + 1.5)
    ax.set_ylabel("local port")
    ax.plot([], [], "o", color="tab:blue", label="even port")
    ax.plot([], [], "o", color="tab:orange", label="odd port")
    why = sorted({f"{a['call']}(): {a['errno']}" for a in d["attempts"] if not a["ok"]})
    ax.plot([], [], "x", color="tab:red", label="refused: " + ", ".join(why))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title(f"ip_local_port_range {d['range']}, mode {d['mode']}: the outcome of each attempt")
    ax2.step(xs, used, where="post")
    ax2.set_ylabel("connections open")
    ax2.set_xlabel("attempt")
    fig.tight_layout()
    return fig


def tw_plot(result: Result):
    """Ports in TIME_WAIT and in ESTABLISHED over time, and every connect() attempt
    (refused or taking a TIME_WAIT port over), with the predicted earliest reuse."""
    import matplotlib.pyplot as plt
    from .. import plots  # noqa: F401
    d = result.data
    m = result.machine_snapshot()
    band = tw_reuse_delay(m, d["sysctls"].get("net.ipv4.tcp_tw_reuse_delay"))
    first = min(d["closed_at"].values())
    fig, ax = plt.subplots(figsize=(9, 3.6))
    t = [s[0] - first for s in d["samples"]]
    ax.step(t, [s[2] for s in d["samples"]], where="post", label="client ports in TIME_WAIT")
    ax.step(t, [s[1] for s in d["samples"]], where="post", label="client connections ESTABLISHED")
    if d.get("closer", "client") == "server":
        ax.step(t, [s[3] for s in d["samples"]], where="post", label="server ends in TIME_WAIT")
    for a in d["attempts"]:
        y = d["ports"] + 0.5
        ax.plot(a["t"] - first, y, "o" if a["ok"] else "x", color="tab:green" if a["ok"] else "tab:red",
                markersize=5)
    ax.plot([], [], "x", color="tab:red", label="connect(): EADDRNOTAVAIL")
    ax.plot([], [], "o", color="tab:green", label="connect() took over a TIME_WAIT port")
    if tcp_twsk_unique(m, loopback=d["loopback"]).value and d.get("closer", "client") == "client":
        ax.axvspan(band.low, band.high, color="tab:green", alpha=0.1, label="predicted take-over")
    ax.set_xlabel("s since the first close")
    ax.set_ylabel("sockets")
    ax.set_ylim(-0.3, d["ports"] + 1)
    ax.set_title(f"tcp_tw_reuse={d['tw_reuse']}, {d['addr']}, timestamps {'on' if d['timestamps'] else 'off'}, "
                 f"the {d.get('closer', 'client')} closes first")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def render_exhaustion(result: Result) -> list:
    """What the port_exhaustion panel shows: the result, the rule against the count, the plot."""
    d = result.data
    m = result.machine_snapshot()
    rule = inet_csk_find_open_port if d["mode"] == "bind" else inet_hash_connect
    pred = rule(m, d["destinations"], d["reserved"])
    ok = sum(a["ok"] for a in d["attempts"])
    return [result, f"**{ok} connections** opened; the rule {pred.rule} predicts "
                    f"{pred.expected_text()}.", exhaustion_plot(result)]


def render_tw(result: Result) -> list:
    """What the tw_reuse panel shows: the result, the summary, the plot."""
    s = reuse_summary(result)
    return [result, ", ".join(f"{k}: {v}" for k, v in s.items()), tw_plot(result)]
