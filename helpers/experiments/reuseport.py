"""Chapter 01_05: SO_REUSEPORT sharding. N listeners on one port, each with its own queue.

Five experiments, all on 127.0.0.1 (the last one inside a private network namespace):

- :func:`reuseport_spread` (the panel): N listeners in one SO_REUSEPORT group, many
  connections; how many each listener got, and a chi-square test against "every listener
  equally likely". Also the kernel's view of the N separate accept queues (TCP_INFO of each
  listener, and ``ss``: N LISTEN rows on one port).
- :func:`reuseport_hash`: the listener is picked from a hash of the 4-tuple, so the same
  client port (picked below the ephemeral range, dealt evenly over the listeners) always
  lands on the same listener; doubling the group maps listener i to
  2i or 2i+1 (the kernel scales the 32-bit hash to the group size: ``hash * N >> 32``).
- :func:`reuseport_join`: who may bind the port a second time (EADDRINUSE unless both
  sockets have SO_REUSEPORT set when the newcomer binds -- the first may set it even after
  listen() on this kernel -- and belong to the same user; SO_REUSEADDR is not enough).
- :func:`accept_sharing`: the same load with one worker made slow, served by (a) N
  SO_REUSEPORT listeners with one thread each, and (b) one shared listener with N threads
  blocked in accept(). The hash ignores load: the slow listener still gets its 1/N share,
  and those connections wait in its queue; a shared queue lets the fast threads take more.
- :func:`reuseport_close` (needs a namespace: it sets ``net.ipv4.tcp_migrate_req``):
  close one listener while connections sit in its accept queue. With ``tcp_migrate_req=0``
  (the default) they are reset; with 1 they move to another listener of the group.

Connections are ended with an abortive close (SO_LINGER 0: an RST instead of a FIN), so a
re-run leaves no TIME_WAIT sockets behind and a client port can be bound again at once.
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import select
import socket
import struct
import threading
import time
import warnings
from typing import Iterator, Sequence

from .. import progress
from ..errors import CourseError, ParameterError
from ..params import Param
from ..stats import chi_square
from .base import Result, experiment

HOST = "127.0.0.1"
BATCH = 100                  # client sockets open at once (fds stay far below RLIMIT_NOFILE)
BACKLOG = 1024
LINGER0 = struct.pack("ii", 1, 0)
P_MIN = 1e-4                 # a spread with p below this is called "not uniform"
SIGMAS = 5.0                 # every listener's count must lie within E ± 5σ (binomial σ)
REQUEST = b"hello\n"


# ======================================================================================
# statistics: helpers.stats (chi-square without scipy)
# ======================================================================================
def _assert_uniform(counts: Sequence[int], what: str) -> None:
    if len(counts) < 2:
        return
    t = chi_square(counts)
    assert t["p_value"] > P_MIN, \
        f"{what}: counts {list(counts)} are not consistent with equal shares (chi² {t['statistic']:.1f}, " \
        f"dof {t['dof']}, p {t['p_value']:.2g} ≤ {P_MIN})"
    assert t["p_even"] > P_MIN, \
        f"{what}: counts {list(counts)} are too even for independent choices (chi² {t['statistic']:.2f}, " \
        f"lower tail p {t['p_even']:.2g} ≤ {P_MIN}): something deals them in turn"
    band = SIGMAS * t["sigma"]
    for i, c in enumerate(counts):
        assert abs(c - t["expected"]) <= band, \
            f"{what}: listener {i} got {c}, outside {t['expected']:.1f} ± {band:.1f} (5σ)"


# ======================================================================================
# sockets
# ======================================================================================
def _abort(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER on, 0 s): no FIN exchange, no TIME_WAIT on either side."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    sock.close()


def _new(ns=None) -> socket.socket:
    return ns.socket() if ns is not None else socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def _listener(port: int, *, reuseport: bool = True, backlog: int = BACKLOG, ns=None) -> socket.socket:
    s = _new(ns)
    try:
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((HOST, port))
        s.listen(backlog)
    except BaseException:
        s.close()
        raise
    return s


@contextlib.contextmanager
def reuseport_group(n: int, *, backlog: int = BACKLOG, ns=None) -> Iterator[list[socket.socket]]:
    """*n* listening sockets with SO_REUSEPORT on one port of 127.0.0.1 (the first binds
    port 0, the others that port), in listen() order; all closed on exit."""
    socks: list[socket.socket] = []
    try:
        port = 0
        for _ in range(n):
            socks.append(_listener(port, backlog=backlog, ns=ns))
            port = socks[0].getsockname()[1]
        yield socks
    finally:
        for s in socks:
            s.close()


def _queue(listener: socket.socket) -> tuple[int, int]:
    """(accept-queue length, backlog) of a listener from its TCP_INFO (tcpi_unacked and
    tcpi_sacked: the numbers ss prints as Recv-Q and Send-Q of a LISTEN row)."""
    from ..kernel import tcp_info
    info = tcp_info(listener).as_dict()
    return int(info["unacked"]), int(info["sacked"])


def _wait_queued(group: Sequence[socket.socket], want: int, timeout: float = 1.0) -> list[int]:
    """Poll the listeners' queue lengths until they add up to *want* (the final ACK of a
    handshake may still be on its way through lo when connect() returns); bounded."""
    deadline = time.monotonic() + timeout
    while True:
        q = [_queue(s)[0] for s in group]
        if sum(q) >= want or time.monotonic() > deadline:
            return q
        time.sleep(0.001)


def _drain(listener: socket.socket, on_conn) -> int:
    """accept() until the queue is empty (non-blocking); hand each connection to on_conn."""
    n = 0
    listener.setblocking(False)
    try:
        while n < 100_000:
            try:
                conn, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            n += 1
            on_conn(conn, addr)
    finally:
        listener.setblocking(True)
    return n


def _connect(port: int, *, bind_port: int = 0, ns=None, timeout: float = 2.0) -> socket.socket:
    c = _new(ns)
    try:
        if bind_port:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            c.bind((HOST, bind_port))
        c.settimeout(timeout)
        c.connect((HOST, port))
    except BaseException:
        c.close()
        raise
    return c


def _listen_rows(port: int, group: Sequence[socket.socket] = ()) -> list[dict]:
    """The LISTEN rows ``ss`` prints for *port*, in ss's order, each matched to its listener
    in *group* (index in listen() order) by the socket's inode (``ss -e`` prints ``ino:``;
    Python's ``os.fstat(sock.fileno()).st_ino`` is the same number)."""
    import re
    import subprocess

    from ..kernel import require_ss
    require_ss()
    index = {os.fstat(s.fileno()).st_ino: i for i, s in enumerate(group)}
    out = subprocess.run(["ss", "-tlnHe", f"sport = :{int(port)}"], capture_output=True, text=True,
                         timeout=10).stdout
    rows = []
    for line in out.splitlines():
        f = line.split()
        if len(f) < 4:
            continue
        m = re.search(r"\bino:(\d+)", line)
        ino = int(m.group(1)) if m else None
        rows.append({"listener": index.get(ino), "recv_q": int(f[1]), "send_q": int(f[2]), "local": f[3],
                     "ino": ino})
    return rows


# ======================================================================================
# 1. the spread over N listeners (the panel)
# ======================================================================================
N_PARAM = Param("n", "listeners (N)", 4, choices=(2, 4, 8), minimum=1, maximum=16,
                doc="how many sockets join the SO_REUSEPORT group")
CONNECTIONS_PARAM = Param("connections", "connections", 1000, choices=(1000,), minimum=100, maximum=5000,
                          doc="how many clients connect, one after another")


def check_spread(result: Result) -> None:
    """The 01_05 claims on one spread."""
    d = result.data
    counts = d["counts"]
    assert len(counts) == d["n"], f"one count per listener expected, got {len(counts)} for {d['n']}"
    assert sum(counts) == d["connections"], \
        f"every connection is accepted by exactly one listener: {sum(counts)} of {d['connections']}"
    first = d["first_batch"]
    assert sum(first["queues"]) == first["size"], \
        f"the first {first['size']} connections wait in the listeners' own queues: {first['queues']}"
    assert all(b == d["backlog"] for b in first["backlogs"]), "each listener keeps its own backlog"
    rows = first["ss_listen"]
    assert len(rows) == d["n"], f"ss shows one LISTEN row per listener on the port: {len(rows)} for {d['n']}"
    assert sorted(r["listener"] for r in rows) == list(range(d["n"])), \
        f"each LISTEN row of ss is one of the listeners (matched by inode): {[r['listener'] for r in rows]}"
    for r in rows:
        assert r["recv_q"] == first["queues"][r["listener"]], \
            f"listener {r['listener']}: ss Recv-Q {r['recv_q']} = its TCP_INFO accept-queue length " \
            f"{first['queues'][r['listener']]}"
    _assert_uniform(counts, "reuseport spread")


@experiment("reuseport_spread", chapter="01_05", params=[N_PARAM, CONNECTIONS_PARAM],
            invariant=check_spread,
            claim="N SO_REUSEPORT listeners share the connections about equally (chi-square, 5σ band); "
                  "each has its own accept queue")
def reuseport_spread(run, n: int = 4, connections: int = 1000) -> dict:
    """Connect *connections* clients to a group of *n* SO_REUSEPORT listeners; count per listener.

    Clients connect in batches of 100 while nobody accepts; after each batch every
    listener's queue is drained. After the first batch the queues are read from TCP_INFO
    and from ``ss``.
    """
    t0 = time.perf_counter()
    with reuseport_group(n) as group:
        port = group[0].getsockname()[1]
        counts, first = _count_spread(group, port, connections)
    seconds = time.perf_counter() - t0
    return {"n": n, "connections": connections, "port": port, "backlog": BACKLOG, "counts": counts,
            "chi_square": chi_square(counts), "first_batch": first, "seconds": seconds}


def _count_spread(group: Sequence[socket.socket], port: int, connections: int) -> tuple[list[int], dict]:
    """Connect *connections* clients in batches of BATCH while nobody accepts, then drain
    every listener: (count per listener, the queues after the first batch)."""
    counts = [0] * len(group)
    first: dict = {}
    done = 0
    while done < connections:
        size = min(BATCH, connections - done)
        clients = []
        try:
            for _ in range(size):
                clients.append(_connect(port))
            _wait_queued(group, size)
            if not first:
                q = [_queue(s) for s in group]
                first = {"size": size, "queues": [a for a, _ in q], "backlogs": [b for _, b in q],
                         "ss_listen": _listen_rows(port, group)}
            for i, s in enumerate(group):
                counts[i] += _drain(s, lambda conn, addr: _abort(conn))
        finally:
            for c in clients:
                c.close()
        done += size
        progress.report(done / connections, f"{done} of {connections} connections")
    return counts, first


# ======================================================================================
# 1b. steering: a reuseport BPF program picks the listener
# ======================================================================================
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)   # include/uapi/asm-generic/socket.h
BPF_RET_K = 0x06                                                            # BPF_RET | BPF_K


def attach_reuseport_cbpf_ret(sock: socket.socket, index: int) -> bytes:
    """Attach the one-instruction classic BPF program ``ret #index`` to *sock*'s reuseport
    group (SO_ATTACH_REUSEPORT_CBPF; no privileges needed). For every incoming SYN the
    kernel runs it and takes its return value as an index into the group's sockets, in
    the order they joined (listen()); an index out of range falls back to the hash
    (net/core/sock_reuseport.c run_bpf_filter/reuseport_select_sock). Returns the program."""
    import ctypes
    insns = struct.pack("HBBI", BPF_RET_K, 0, 0, int(index))          # struct sock_filter
    buf = ctypes.create_string_buffer(insns, len(insns))
    fprog = struct.pack("HxxxxxxQ", 1, ctypes.addressof(buf))          # struct sock_fprog {len; *filter}
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    return insns


def check_steer(result: Result) -> None:
    d = result.data
    assert sum(d["counts"]) == d["connections"], "every connection is accepted by exactly one listener"
    assert d["counts"][d["target"]] == d["connections"], \
        (f"the program 'ret #{d['target']}' sends every connection to listener {d['target']} "
         f"(the {d['target'] + 1}. to call listen()): got {d['counts']}")


@experiment("reuseport_steer", chapter="01_05", invariant=check_steer,
            params=[N_PARAM, Param("target", "listener to steer to", 0, choices=(0, 1, 2, 3), minimum=0,
                                   maximum=15, doc="the index the BPF program returns (listen() order)")],
            claim="a reuseport BPF program, not the hash, picks the listener when one is attached")
def reuseport_steer(run, n: int = 4, target: int = 0, connections: int = 200) -> dict:
    """The same group as :func:`reuseport_spread`, with the classic BPF program
    ``ret #target`` attached (SO_ATTACH_REUSEPORT_CBPF): the server steers every new
    connection to one listener."""
    if not 0 <= int(target) < n:
        raise ParameterError(f"target={target!r} is not a listener of {n}.", f"use 0..{n - 1}.")
    connections = int(connections)
    with reuseport_group(n) as group:
        port = group[0].getsockname()[1]
        program = attach_reuseport_cbpf_ret(group[0], target)
        counts, _ = _count_spread(group, port, connections)
    return {"n": n, "connections": connections, "target": int(target), "counts": counts,
            "program": program.hex()}


def spread_table(result: Result):
    """One row per listener: connections, share, deviation from the equal share in σ."""
    import pandas as pd

    d = result.data
    t = chi_square(d["counts"])
    return pd.DataFrame({
        "listener": range(len(d["counts"])),
        "connections": d["counts"],
        "share": [c / d["connections"] for c in d["counts"]],
        "expected": [round(t["expected"], 1)] * len(d["counts"]),
        "deviation (σ)": [round((c - t["expected"]) / t["sigma"], 2) if t["sigma"] else 0.0
                          for c in d["counts"]],
    }).set_index("listener")


def spread_text(result: Result) -> str:
    d = result.data
    t = chi_square(d["counts"])
    if t["p_value"] is None:
        return f"1 listener took all {d['connections']} connections (nothing to compare)."
    verdict = "consistent with" if t["p_value"] > P_MIN else "NOT consistent with"
    return (f"{d['n']} listeners, {d['connections']} connections in {d['seconds']:.2f} s: "
            f"chi² = {t['statistic']:.2f} with {t['dof']} degrees of freedom, p = {t['p_value']:.3f}: "
            f"{verdict} equal shares (the test rejects below p = {P_MIN:g}).")


def render(result: Result) -> list:
    """What the panel shows: the banner, the verdict, the table and the bar chart."""
    from ..plots import bars

    d = result.data
    t = chi_square(d["counts"])
    fig = bars(dict(enumerate(d["counts"])), ylabel="connections accepted", xlabel="listener",
               expected=t["expected"],
               title=f"{d['connections']} connections over {d['n']} SO_REUSEPORT listeners")
    return [result, spread_text(result), spread_table(result), fig]


# ======================================================================================
# 2. the hash: same 4-tuple, same listener
# ======================================================================================
# Client ports for the hash experiment come from below the ephemeral range (32768-60999 by
# default): there, any connect() on the host may take a port at any moment (ports are shared
# between connections to different destinations), and a later bind() to it would fail.
FIXED_PORTS = range(20000, 30000)


def _pick_client_port(rng: random.Random, tries: int = 50) -> int:
    """A client port in FIXED_PORTS that is free right now."""
    for _ in range(tries):
        p = rng.choice(FIXED_PORTS)
        probe = socket.socket()
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((HOST, p))
            return p
        except OSError:
            continue
        finally:
            probe.close()
    raise CourseError(f"no free client port found in {FIXED_PORTS.start}-{FIXED_PORTS.stop - 1}.",
                      "something on this machine holds many of those ports; run the experiment again.")


def _which_listener(group: list[socket.socket], port: int, sport: int) -> tuple[int, int]:
    """Connect from client port *sport*; return (listener index, client port)."""
    for attempt in range(3):   # the port was free a moment ago; another program may take it briefly
        try:
            c = _connect(port, bind_port=sport)
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == 2:
                raise
            time.sleep(0.05)
    try:
        sport = c.getsockname()[1]
        hits = []
        deadline = time.monotonic() + 1.0
        while not hits and time.monotonic() < deadline:
            for i, s in enumerate(group):
                if _drain(s, lambda conn, addr: _abort(conn)):
                    hits.append(i)
        if len(hits) != 1:
            raise CourseError(f"the connection from port {sport} was accepted by listeners {hits}, not by one.",
                              "run the experiment again; if it persists, report the kernel version.")
        return hits[0], sport
    finally:
        c.close()


def check_hash(result: Result) -> None:
    d = result.data
    rows = d["rows"]
    for r in rows:
        assert len(set(r["first"])) == 1, f"client port {r['sport']} landed on listeners {r['first']}: one expected"
        assert len(set(r["doubled"])) == 1, f"client port {r['sport']} landed on listeners {r['doubled']} after doubling"
    firsts = [r["first"][0] for r in rows]
    assert len(set(firsts)) >= 2, "different client ports should reach different listeners"
    if d["sources"] >= d["n"]:
        assert set(firsts) == set(range(d["n"])), \
            f"client ports were picked until every listener of {d['n']} had some: got {sorted(set(firsts))}"
    for r in rows:
        assert r["doubled"][0] // 2 == r["first"][0], \
            f"client port {r['sport']}: listener {r['first'][0]} of {d['n']} became {r['doubled'][0]} of " \
            f"{2 * d['n']}, expected {2 * r['first'][0]} or {2 * r['first'][0] + 1}"


@experiment("reuseport_hash", chapter="01_05",
            params=[Param("n", "listeners (N)", 4, choices=(2, 4, 8), minimum=2, maximum=8),
                    Param("sources", "client ports", 16, choices=(16,), minimum=12, maximum=40),
                    Param("repeats", "connections per client port", 4, choices=(4,), minimum=2, maximum=10)],
            invariant=check_hash,
            claim="the listener is a function of the 4-tuple: a client port always lands on the same "
                  "listener; doubling the group sends listener i's tuples to 2i or 2i+1")
def reuseport_hash(run, n: int = 4, sources: int = 16, repeats: int = 4) -> dict:
    """Connect *repeats* times from each of *sources* fixed client ports to a group of *n*
    listeners; then add *n* more listeners to the group and connect from the same ports again.

    Client ports are drawn at random from FIXED_PORTS; a port is kept only if its listener has
    no more ports yet than any other (otherwise skipped), so the ports are dealt evenly and the
    table shows every listener, listener 0 included. The server closes each connection
    with an RST, so the client port is free again at once.
    """
    rows = []
    rng = random.Random()
    taken = [0] * n
    used: set[int] = set()
    probes = 0
    with reuseport_group(n) as group:
        port = group[0].getsockname()[1]
        while len(rows) < sources and probes < 20 * sources:
            probes += 1
            sport = _pick_client_port(rng)
            if sport in used:
                continue
            used.add(sport)
            first = _which_listener(group, port, sport)[0]
            if taken[first] > min(taken):
                continue                            # that listener is ahead of another one: skip
            taken[first] += 1
            seen = [first] + [_which_listener(group, port, sport)[0] for _ in range(repeats - 1)]
            rows.append({"sport": sport, "first": seen})
            progress.report(0.5 * len(rows) / sources, "group of N")
        if len(rows) < sources:
            raise CourseError(f"after {probes} client ports the listeners had {taken}, not {sources} in all.",
                              "run the experiment again; if it persists, report the kernel version.")
        more = []
        try:
            for _ in range(n):
                more.append(_listener(port))
            doubled = group + more
            for k, r in enumerate(rows):
                r["doubled"] = [_which_listener(doubled, port, r["sport"])[0] for _ in range(repeats)]
                progress.report(0.5 + 0.5 * (k + 1) / sources, "group of 2N")
        finally:
            for s in more:
                s.close()
    rows.sort(key=lambda r: (r["first"][0], r["sport"]))
    return {"n": n, "port": port, "sources": sources, "repeats": repeats, "probes": probes, "rows": rows}


def hash_table(result: Result):
    import pandas as pd
    d = result.data
    n, k = d["n"], d["repeats"]
    return pd.DataFrame([{"client port": r["sport"],
                          f"listener (group of {n}), {k} tries": ", ".join(map(str, r["first"])),
                          f"listener (group of {2 * n}), {k} tries": ", ".join(map(str, r["doubled"]))}
                         for r in d["rows"]]).set_index("client port")


# ======================================================================================
# 3. who may join the group
# ======================================================================================
JOIN_CASES = [
    # label, option on the first socket, when the first socket sets it, option on the newcomer
    ("both set SO_REUSEPORT", "SO_REUSEPORT", "before bind()", "SO_REUSEPORT"),
    ("only the first set it", "SO_REUSEPORT", "before bind()", None),
    ("only the newcomer set it", None, "-", "SO_REUSEPORT"),
    ("neither set it", None, "-", None),
    ("both set SO_REUSEADDR instead", "SO_REUSEADDR", "before bind()", "SO_REUSEADDR"),
    ("the first set it after bind()", "SO_REUSEPORT", "after bind()", "SO_REUSEPORT"),
    ("the first set it after listen()", "SO_REUSEPORT", "after listen()", "SO_REUSEPORT"),
]
OTHER_USER_CASE = "newcomer of another user (nobody)"
SAME_USER_CASE = "newcomer in a child process, same user"
NOBODY = 65534
JOIN_PROBES = 40             # connections made to a pair that shares the port: who accepts them


def _opt(sock: socket.socket, name: str | None) -> None:
    if name:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), 1)


def _bind_as_user(port: int, uid: int = NOBODY, timeout: float = 5.0) -> str:
    """In a forked child running as *uid*: a socket sets SO_REUSEPORT and binds 127.0.0.1:*port*.
    Returns "ok" or the errno name of bind(); "not measured: ..." when this process may not
    change its user (that needs root). The child does nothing but these system calls."""
    if uid != os.geteuid() and os.geteuid() != 0:
        return "not measured: needs root"
    rfd, wfd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)      # fork() in a threaded process
        pid = os.fork()
    if pid == 0:                                                # the child: never returns
        code = "not measured: the child failed"
        try:
            os.close(rfd)
            try:
                if uid != os.geteuid():
                    os.setgroups([])
                    os.setresgid(uid, uid, uid)
                    os.setresuid(uid, uid, uid)
            except OSError:
                code = "not measured: cannot change user"
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                try:
                    s.bind((HOST, port))
                    code = "ok"
                except OSError as exc:
                    code = errno.errorcode.get(exc.errno, str(exc.errno))
                s.close()
        finally:
            try:
                os.write(wfd, code.encode())
            finally:
                os._exit(0)
    os.close(wfd)
    try:
        ready, _, _ = select.select([rfd], [], [], timeout)
        answer = os.read(rfd, 200).decode() if ready else "not measured: the child did not answer"
    finally:
        os.close(rfd)
        done, _ = os.waitpid(pid, os.WNOHANG)
        if not done:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            os.waitpid(pid, 0)
    return answer or "not measured: the child did not answer"


def _who_accepts(first: socket.socket, second: socket.socket, port: int) -> tuple[int, int]:
    """JOIN_PROBES connections to the shared port: how many each of the two listeners accepts."""
    hits = [0, 0]
    for _ in range(JOIN_PROBES):
        c = _connect(port)
        try:
            got = 0
            deadline = time.monotonic() + 1.0
            while not got and time.monotonic() < deadline:
                for k, s in enumerate((first, second)):
                    n = _drain(s, lambda conn, addr: _abort(conn))
                    hits[k] += n
                    got += n
        finally:
            c.close()
    return hits[0], hits[1]


def check_join(result: Result) -> None:
    rows = {r["case"]: r for r in result.data["cases"]}
    for case in ("both set SO_REUSEPORT", "the first set it after bind()", "the first set it after listen()"):
        r = rows[case]
        assert r["bind"] == "ok" and r["listen"] == "ok", f"{case}: the newcomer should share the port"
        assert r["accepted by first"] + r["accepted by newcomer"] == JOIN_PROBES and \
            min(r["accepted by first"], r["accepted by newcomer"]) > 0, \
            f"{case}: both listeners should accept some of the {JOIN_PROBES} connections, " \
            f"got {r['accepted by first']} and {r['accepted by newcomer']}"
    for case in ("only the first set it", "only the newcomer set it", "neither set it",
                 "both set SO_REUSEADDR instead"):
        r = rows[case]
        assert r["bind"] == "EADDRINUSE", f"{case}: bind() should fail with EADDRINUSE, got {r['bind']}"
    same = rows.get(SAME_USER_CASE)
    if same is not None and not same["bind"].startswith("not measured"):
        assert same["bind"] == "ok", f"{SAME_USER_CASE}: bind() should succeed, got {same['bind']}"
    other = rows.get(OTHER_USER_CASE)
    if other is not None and not other["bind"].startswith("not measured"):
        assert other["bind"] == "EADDRINUSE", \
            f"{OTHER_USER_CASE}: bind() should fail with EADDRINUSE (same-user rule), got {other['bind']}"


@experiment("reuseport_join", chapter="01_05", invariant=check_join,
            claim="a second socket can bind a listening port only if both have SO_REUSEPORT set when it binds "
                  "(the first may set it even after listen()) and both belong to the same user; "
                  "otherwise EADDRINUSE")
def reuseport_join(run) -> dict:
    """For each case, a first socket binds and listens on a port (setting its option before
    bind(), after bind() or after listen()); a second socket sets its option and tries bind()
    and listen() on the same port. Records the errno of each call and, when both listen,
    how many of JOIN_PROBES connections each accepts. Then two newcomers created by a forked
    child process (it only binds): one of the same user (the control), and, as root, one
    running as user nobody (uid 65534)."""
    cases = []
    for label, first_opt, when, new_opt in JOIN_CASES:
        first = _new()
        second = _new()
        try:
            if when == "before bind()":
                _opt(first, first_opt)
            first.bind((HOST, 0))
            if when == "after bind()":
                _opt(first, first_opt)
            first.listen(8)
            if when == "after listen()":
                _opt(first, first_opt)
            port = first.getsockname()[1]
            _opt(second, new_opt)
            row = {"case": label, "first": first_opt or "-", "first sets it": when, "newcomer": new_opt or "-",
                   "port": port, "bind": "ok", "listen": "-", "accepted by first": None,
                   "accepted by newcomer": None}
            try:
                second.bind((HOST, port))
            except OSError as exc:
                row["bind"] = errno.errorcode.get(exc.errno, str(exc.errno))
            else:
                try:
                    second.listen(8)
                    row["listen"] = "ok"
                except OSError as exc:
                    row["listen"] = errno.errorcode.get(exc.errno, str(exc.errno))
                else:
                    row["accepted by first"], row["accepted by newcomer"] = _who_accepts(first, second, port)
            cases.append(row)
        finally:
            second.close()
            first.close()
    first = _listener(0)
    try:
        port = first.getsockname()[1]
        other = NOBODY if os.geteuid() != NOBODY else NOBODY - 1   # the course itself may run as nobody
        for label, uid in ((SAME_USER_CASE, os.geteuid()), (OTHER_USER_CASE, other)):
            cases.append({"case": label, "first": "SO_REUSEPORT", "first sets it": "before bind()",
                          "newcomer": "SO_REUSEPORT", "port": port, "bind": _bind_as_user(port, uid),
                          "listen": "-", "accepted by first": None, "accepted by newcomer": None})
    finally:
        first.close()
    return {"cases": cases, "probes": JOIN_PROBES, "root": os.geteuid() == 0}


def join_table(result: Result):
    """One row per case: options, when the first socket set its option, bind()/listen() of the
    newcomer, and (when both listen) who accepted the probe connections."""
    import pandas as pd
    df = pd.DataFrame(result.data["cases"]).drop(columns="port").set_index("case")
    for col in ("accepted by first", "accepted by newcomer"):
        df[col] = df[col].astype("Int64")
    return df


# ======================================================================================
# 4. one slow worker: SO_REUSEPORT listeners vs one shared listener
# ======================================================================================
def _serve_mode(mode: str, n: int, connections: int, slow_ms: float) -> dict:
    """Run one mode; worker 0 sleeps *slow_ms* after each accept (a busy worker)."""
    accepted: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    with contextlib.ExitStack() as stack:
        if mode == "reuseport":
            listeners = stack.enter_context(reuseport_group(n))
            port = listeners[0].getsockname()[1]
            serve = listeners                       # worker i accepts from listener i
        else:
            shared = _listener(0, reuseport=False)
            stack.callback(shared.close)
            listeners = [shared]
            port = shared.getsockname()[1]
            serve = [shared] * n                    # every worker accepts from the one listener
        open_conns: list[socket.socket] = []
        lock = threading.Lock()

        def worker(i: int) -> None:
            lst = serve[i]
            while True:
                try:
                    conn, addr = lst.accept()       # blocking: the thread sleeps in the kernel
                except OSError:
                    return                          # listener shut down: the run is over
                t = time.monotonic()
                accepted[i].append((addr[1], t))
                with lock:
                    open_conns.append(conn)
                if i == 0 and slow_ms:
                    time.sleep(slow_ms / 1000)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True, name=f"reuseport-worker-{i}")
                   for i in range(n)]
        clients: list[socket.socket] = []
        done_at: dict[int, float] = {}

        def stop() -> None:
            for s in listeners:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)    # wakes the threads blocked in accept()
            for t in threads:
                if t.is_alive():
                    t.join(2.0)
            with lock:
                for c in open_conns:
                    c.close()                       # server sends FIN; client keeps its port
            for c in clients:
                _abort(c)                           # client answers with RST: nothing lingers

        stack.callback(stop)
        for t in threads:
            t.start()
        time.sleep(0.02)                            # let every worker block in accept()
        t0 = time.monotonic()
        for _ in range(connections):
            c = _connect(port)
            clients.append(c)
            done_at[c.getsockname()[1]] = time.monotonic()
        deadline = time.monotonic() + 5.0
        while sum(len(a) for a in accepted) < connections and time.monotonic() < deadline:
            time.sleep(0.002)
        seconds = time.monotonic() - t0
    waits = []
    for a in accepted:
        w = sorted(max(0.0, (t - done_at[p]) * 1000) for p, t in a if p in done_at)
        times = sorted(t for _, t in a)
        waits.append({"median_ms": w[len(w) // 2] if w else None, "max_ms": w[-1] if w else None,
                      "last_ms": (times[-1] - t0) * 1000 if a else None,
                      # mean time between two accepts of this worker: its real service time
                      # (the asked-for pause plus whatever a loaded machine adds)
                      "step_ms": (times[-1] - times[0]) * 1000 / (len(times) - 1) if len(times) > 1 else None})
    return {"mode": mode, "counts": [len(a) for a in accepted], "wait": waits, "seconds": seconds,
            "connect_ms": (max(done_at.values()) - t0) * 1000}   # when the last client's connect() returned


def slow_wait_band(d: dict) -> tuple[float, float]:
    """The band for the slow SO_REUSEPORT worker's median wait: its connections arrive almost
    at once and are taken one per pause, so the median one waits about (its count / 2) × the
    time per accept. That time is measured (``step_ms``: *slow_ms* asked, more on a loaded
    machine, where sleep() and the thread's turn both run late). Band: half to 2.5 times that."""
    w = d["reuseport"]["wait"][0]
    step = max(w.get("step_ms") or d["slow_ms"], d["slow_ms"])
    predicted = d["reuseport"]["counts"][0] / 2 * step
    return 0.5 * predicted, 2.5 * predicted


def done_after_connects(mode: dict) -> tuple[float, float]:
    """How long after the last client's connect() returned the fast workers (the latest of
    them) and the slow worker 0 accepted their last connection, in ms. Measured from the last
    connect(), not the first, so a machine that connects slowly does not blur the difference."""
    c = mode["connect_ms"]
    return (max(w["last_ms"] for w in mode["wait"][1:]) - c, mode["wait"][0]["last_ms"] - c)


def check_sharing(result: Result) -> None:
    d = result.data
    for m in ("reuseport", "shared"):
        assert sum(d[m]["counts"]) == d["connections"], f"{m}: every connection must be accepted once"
    rp, sh = d["reuseport"], d["shared"]
    _assert_uniform(rp["counts"], "SO_REUSEPORT with a slow worker")
    if d["slow_ms"] >= 2:
        expected = d["connections"] / d["n"]
        assert sh["counts"][0] < 0.5 * expected, \
            f"a shared queue: the slow thread should take less than half its share ({sh['counts'][0]} of {expected:.0f})"
        fast = [w["median_ms"] for w in rp["wait"][1:]]
        assert rp["wait"][0]["median_ms"] > 3 * max(max(fast), 1.0), \
            "SO_REUSEPORT: connections hashed to the slow listener wait far longer in its queue"
        assert rp["wait"][0]["max_ms"] > 3 * max(max(w["max_ms"] or 0 for w in sh["wait"]), 1.0), \
            "the longest waits are in the slow SO_REUSEPORT listener's own queue, not in the shared one"
        lo, hi = slow_wait_band(d)
        assert lo <= rp["wait"][0]["median_ms"] <= hi, \
            f"the slow listener's clients queue behind one pause each ({d['slow_ms']} ms asked, " \
            f"{rp['wait'][0].get('step_ms') or 0:.1f} ms per accept measured): median wait " \
            f"{rp['wait'][0]['median_ms']:.0f} ms, expected {lo:.0f}-{hi:.0f} ms"
        fast_lag, slow_lag = done_after_connects(rp)
        assert slow_lag > 3 * max(fast_lag, 2.0), \
            f"the fast SO_REUSEPORT workers are done soon after the last connect() ({fast_lag:.0f} ms), " \
            f"the slow one long after ({slow_lag:.0f} ms)"


@experiment("accept_sharing", chapter="01_05",
            params=[Param("n", "workers", 4, choices=(4,), minimum=2, maximum=8),
                    Param("slow_ms", "worker 0 busy after each accept", 4, choices=(0, 4), minimum=0,
                          maximum=10, unit="ms"),
                    Param("connections", "connections", 200, choices=(200,), minimum=100, maximum=400)],
            invariant=check_sharing,
            claim="the hash ignores load: a slow SO_REUSEPORT listener still gets 1/N and its connections "
                  "wait; with one shared queue the fast threads take over")
def accept_sharing(run, n: int = 4, slow_ms: float = 4, connections: int = 200) -> dict:
    """The same *connections* clients served by *n* worker threads, twice: each worker with
    its own SO_REUSEPORT listener, then all workers blocked in accept() on one shared listener.
    Worker 0 is busy for *slow_ms* after each accept. Records per worker: connections taken,
    how long they waited between the client's connect() returning and accept() (median and
    max), and when the worker accepted its last connection (``last_ms``, from the first
    connect())."""
    out = {"n": n, "slow_ms": slow_ms, "connections": connections}
    progress.report(0.0, "SO_REUSEPORT listeners")
    out["reuseport"] = _serve_mode("reuseport", n, connections, slow_ms)
    progress.report(0.5, "one shared listener")
    out["shared"] = _serve_mode("shared", n, connections, slow_ms)
    progress.report(1.0, "done")
    return out


def sharing_table(result: Result):
    import pandas as pd
    d = result.data
    rows = []
    for m, label in (("reuseport", "N SO_REUSEPORT listeners"), ("shared", "1 shared listener")):
        for i, (c, w) in enumerate(zip(d[m]["counts"], d[m]["wait"])):
            rows.append({"setup": label, "worker": f"{i} (slow)" if i == 0 and d["slow_ms"] else str(i),
                         "connections": c, "median wait (ms)": round(w["median_ms"] or 0, 2),
                         "max wait (ms)": round(w["max_ms"] or 0, 1),
                         "ms per accept": round(w.get("step_ms") or 0, 2),
                         "last accept at (ms)": round(w["last_ms"] or 0, 1)})
    return pd.DataFrame(rows).set_index(["setup", "worker"])


def sharing_plot(result: Result):
    """Connections per worker in the two setups, side by side, with the equal share dashed."""
    import matplotlib.pyplot as plt

    from ..plots import bars

    d = result.data
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, (mode, label) in zip(axes, [("reuseport", f"{d['n']} SO_REUSEPORT listeners"),
                                        ("shared", "1 shared listener")]):
        bars({("0 slow" if i == 0 and d["slow_ms"] else str(i)): c for i, c in enumerate(d[mode]["counts"])},
             ylabel="connections accepted", xlabel="worker", expected=d["connections"] / d["n"], title=label, ax=ax)
    return fig


# ======================================================================================
# 5. closing a listener with connections in its queue (namespace: tcp_migrate_req)
# ======================================================================================
def check_close(result: Result) -> None:
    d = result.data
    v = d["victim"]
    q = d["queues_before"][v]
    assert q >= 1, "the closed listener must have had connections waiting"
    assert sum(d["queues_before"]) == d["clients"], "every client waits in some listener's queue"
    assert d["migrate_req"] == d["migrate"], "tcp_migrate_req inside the namespace is what was asked"
    out = d["outcome"]
    accepted = sum(d["accepted"].values())
    assert out["reset"] + out["alive"] == d["clients"]
    assert accepted == out["alive"], "every client that was not reset is accepted by a remaining listener"
    assert d["payload_ok"] == accepted, "each accepted connection still holds the request its client sent"
    if d["migrate"] == 0:
        assert out["reset"] == q, f"tcp_migrate_req=0: the {q} queued connections are reset, got {out['reset']}"
        assert all(e == "ECONNRESET" for e in d["reset_errors"]), "reset clients see ECONNRESET"
        assert d["nstat"].get("TcpEstabResets", 0) == 2 * q, \
            "each reset connection counts once per side in TcpEstabResets"
        assert d["nstat"].get("TcpExtTCPMigrateReqSuccess", 0) == 0
    else:
        assert out["reset"] == 0, "tcp_migrate_req=1: no connection is reset"
        assert d["nstat"].get("TcpExtTCPMigrateReqSuccess", 0) == q, \
            f"TCPMigrateReqSuccess counts the {q} migrated connections"
        assert sum(d["queues_after"][str(i)] for i in range(d["n"]) if i != v) == d["clients"], \
            "after the close the remaining listeners hold every connection"


@experiment("reuseport_close", chapter="01_05", needs={"namespaces"},
            params=[Param("migrate", "net.ipv4.tcp_migrate_req", 0, choices=(0, 1),
                          doc="1: move the queued connections of a closing listener to another one")],
            invariant=check_close,
            claim="closing a listener resets the connections in its accept queue (ECONNRESET) unless "
                  "tcp_migrate_req=1 moves them to another listener of the group")
def reuseport_close(run, migrate: int = 0, n: int = 3, clients: int = 30) -> dict:
    """Inside a fresh namespace with ``net.ipv4.tcp_migrate_req`` = *migrate*: *n* SO_REUSEPORT
    listeners, *clients* clients connect and each sends a short request; nobody accepts. Then the
    listener with the longest queue closes. Which clients are reset, and what the other listeners
    can still accept (with the request bytes intact), with the namespace's counters."""
    from ..kernel import nstat_delta, ss
    from ..netns import Namespace

    with Namespace(sysctls={"net.ipv4.tcp_migrate_req": migrate}) as ns:
        migrate_req = int(ns.sysctl("net.ipv4.tcp_migrate_req"))
        with reuseport_group(n, backlog=64, ns=ns) as group, contextlib.ExitStack() as stack:
            port = group[0].getsockname()[1]
            socks: list[socket.socket] = []
            stack.callback(lambda: [_abort(c) for c in socks])
            for _ in range(clients):
                c = _connect(port, ns=ns)
                socks.append(c)
                c.sendall(REQUEST)
            before = _wait_queued(group, clients)
            listen_before = [int(x) for x in ss(ns=ns, state="LISTEN", sport=port)["recv_q"]]
            victim = max(range(n), key=lambda i: before[i])
            with nstat_delta(ns) as delta:       # counts what the close does, nothing else
                group[victim].close()               # the listener goes away, its queue with it
                time.sleep(0.05)
                after = {i: _queue(s)[0] for i, s in enumerate(group) if i != victim}
                listen_after = [int(x) for x in ss(ns=ns, state="LISTEN", sport=port)["recv_q"]]
                reset, reset_errors = 0, []
                for c in socks:
                    c.setblocking(False)
                    try:
                        c.recv(1)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        reset += 1
                        reset_errors.append(errno.errorcode.get(exc.errno, str(exc.errno)))
            accepted: dict[int, int] = {}
            payload_ok = 0
            for i, s in enumerate(group):
                if i == victim:
                    continue

                def take(conn, addr, i=i):
                    nonlocal payload_ok
                    conn.settimeout(1.0)
                    with contextlib.suppress(OSError):
                        if conn.recv(64) == REQUEST:
                            payload_ok += 1
                    accepted[i] = accepted.get(i, 0) + 1
                    _abort(conn)
                _drain(s, take)
    return {"migrate": migrate, "migrate_req": migrate_req, "n": n, "clients": clients, "port": port,
            "queues_before": before, "ss_listen_before": listen_before, "victim": victim,
            "queues_after": {str(k): v for k, v in after.items()} | {str(victim): None},
            "ss_listen_after": listen_after,
            "outcome": {"reset": reset, "alive": clients - reset}, "reset_errors": reset_errors,
            "accepted": {str(k): v for k, v in sorted(accepted.items())}, "payload_ok": payload_ok,
            "nstat": {k: v for k, v in delta.delta.items()
                      if k in ("TcpEstabResets", "TcpExtTCPMigrateReqSuccess", "TcpExtTCPMigrateReqFailure",
                               "TcpActiveOpens", "TcpPassiveOpens", "TcpOutRsts")}}


def close_table(result: Result):
    import pandas as pd
    d = result.data
    rows = []
    for i in range(d["n"]):
        after = d["queues_after"].get(str(i))
        rows.append({"listener": i, "queued before close": d["queues_before"][i],
                     "closed": i == d["victim"],
                     "queued after close": "-" if after is None else after,
                     "accepted afterwards": d["accepted"].get(str(i), 0)})
    return pd.DataFrame(rows).set_index("listener")
