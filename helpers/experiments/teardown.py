"""Chapter 03_01: how a connection ends: the FIN exchange, TIME_WAIT and FIN_WAIT_2.

Every experiment runs inside a private network namespace, so its TIME_WAIT entries, its
sysctls (``tcp_fin_timeout``, ``tcp_max_tw_buckets``) and its counters are its own and
vanish with it: nothing is left in the host's TCP tables.

- :func:`teardown` -- one connection closed client-first, server-first or simultaneously,
  captured, while both sides' states are sampled every few milliseconds from the kernel's
  socket table. Optionally the active closer's last ACK is held back for a moment by a
  firewall rule inside the namespace, so the passive closer sits in LAST_ACK, retransmits
  its FIN, and the TIME_WAIT socket answers that retransmission (what TIME_WAIT is for).
  A simultaneous close holds both FINs back once, so both sides have sent FIN before
  either has received one (what loopback's instant delivery never does by itself).
- :func:`fin_wait2` -- a short ``tcp_fin_timeout`` in the namespace, three connections:
  an orphaned FIN_WAIT_2 (client closed, the server application never does) that the
  kernel ends after tcp_fin_timeout while the server stays in CLOSE_WAIT; a half-closed
  one (shutdown(SHUT_WR), fd kept) that reads the server's reply after EOF and outlives
  tcp_fin_timeout; and a full close whose TIME_WAIT still counts down from 60 s.
- :func:`rebind` -- a listener port with a TIME_WAIT entry: bind() without SO_REUSEADDR
  fails with EADDRINUSE, with it succeeds.
- :func:`tw_overflow` -- more active closes than ``tcp_max_tw_buckets``: the kernel keeps
  that many TIME_WAIT entries and counts the rest in TcpExtTCPTimeWaitOverflow.
- :func:`time_wait_expiry` -- the whole minute once: a TIME_WAIT entry watched until it
  vanishes (over 60 s live, so the recorder runs it and the notebook replays it).

:func:`teardown` also takes ``how``: ``close()`` orphans the active side at once (its
FIN_WAIT_2 becomes a timewait entry with a timer), ``shutdown(SHUT_WR)`` ends only its
sending direction (the peer reads EOF and still sends; FIN_WAIT_2 has no timer).

Why the states come from /proc/net/tcp and not only from ``ss``: a transition such as
FIN_WAIT_1 -> FIN_WAIT_2 takes a delayed ACK (tens of ms) on loopback; one ``ss`` run
inside a namespace costs ~10 ms of fork and exec. /proc/net/tcp is the same socket table
(full sockets and TIME_WAIT entries, with their timers) read in-process in well under a
millisecond; ``ss -tano`` snapshots at the key moments show the same rows the learner
would type ``ss`` for, and its ``timer:(timewait,...)`` field.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from .. import progress, rules
from ..errors import CourseError, ParameterError
from ..kernel import parse_proc_tcp, ss_timer_ms   # the one socket-table and ss-timer readers
from ..params import Param
from .base import Result, experiment

SAMPLE_EVERY = 0.003     # s between socket-table samples
HOLD = 0.15              # s the passive side waits in CLOSE_WAIT before it closes
SIM_GAP = 0.10           # s between the client's and the server's close() (simultaneous)
LOSE_FOR = 0.10          # s the active closer's last ACK is dropped (below the 200 ms RTO floor)
DEADLINE = 4.0           # s: a teardown run ends by then, whatever happens
REQUEST, REPLY = b"GET /\n", b"200 OK\n"
AFTER_EOF = b"sent after EOF " * 100      # what the passive side sends after a half-close

ACTIVE_PATH = ["ESTAB", "FIN-WAIT-1", "FIN-WAIT-2", "TIME-WAIT"]
PASSIVE_PATH = ["ESTAB", "CLOSE-WAIT", "LAST-ACK"]
SIMULTANEOUS_PATH = ["ESTAB", "FIN-WAIT-1", "CLOSING", "FIN-WAIT-2", "TIME-WAIT"]


# ======================================================================================
# rules (to move into helpers/rules.py)
# ======================================================================================
def tcp_fin_time(m: rules.Machine, rto_s: float, linger2: int = 0) -> rules.Prediction:
    """How long an orphaned FIN_WAIT_2 lives (tcp_fin_time(), include/net/tcp.h): TCP_LINGER2
    if set, else ``tcp_fin_timeout``, but never less than 3.5 × RTO. When that is at most
    TCP_TIMEWAIT_LEN, tcp_rcv_state_process() (FIN_WAIT1 + ACK of the FIN on an orphan) hands
    the socket to tcp_time_wait(sk, TCP_FIN_WAIT2, tmo): a small timewait entry that ss and
    /proc/net/tcp show in state FIN-WAIT-2 with a ``timewait`` timer of tmo seconds."""
    fin_timeout = int(linger2 or m.sysctls.get("tcp_fin_timeout") or 60)
    floor = 3.5 * float(rto_s)
    value = max(float(fin_timeout), floor)
    return rules.timer_band(m, value, rule="tcp_fin_time()",
                            formula="max(TCP_LINGER2 or tcp_fin_timeout, 3.5 × RTO)",
                            inputs={"tcp_fin_timeout": fin_timeout, "TCP_LINGER2": linger2,
                                    "rto_s": round(float(rto_s), 3)})


def inet_twsk_schedule(m: rules.Machine, elapsed_s: float, timer_unit_s: float = 0.01,
                       read_spread_s: float = 0.0) -> rules.Prediction:
    """What a TIME_WAIT entry's timer reads *elapsed_s* after the segment that started or
    restarted it (tcp_time_wait() arms TCP_TIMEWAIT_LEN; tcp_timewait_state_process()
    re-arms it when a retransmitted FIN arrives): TCP_TIMEWAIT_LEN − elapsed, to within a
    tick and the unit the timer is read in (/proc/net/tcp: 1/USER_HZ; ss -o: whole seconds
    above 10 s), and the time the read itself took (*read_spread_s*: the timer is read at some
    moment after *elapsed_s* was taken). No sysctl enters."""
    tl = rules.TCP_TIMEWAIT_LEN_S
    tick = 1.0 / (m.hz or 250)
    want = tl - float(elapsed_s)
    return rules.Prediction("inet_twsk_schedule()", "TCP_TIMEWAIT_LEN − time since the segment that (re)started it",
                            {"TCP_TIMEWAIT_LEN_s": tl, "elapsed_s": round(float(elapsed_s), 3), "HZ": m.hz or 250,
                             "read in units of_s": timer_unit_s, "read took_s": round(float(read_spread_s), 4)},
                            round(want, 3), low=round(want - tick - timer_unit_s - float(read_spread_s) - 0.01, 3),
                            high=round(want + tick + 0.01, 3), unit="s")


def inet_twsk_alloc(m: rules.Machine, closes: int, max_tw_buckets: int | None = None) -> rules.Prediction:
    """How many of *closes* active closes get a TIME_WAIT entry (inet_twsk_alloc(),
    net/ipv4/inet_timewait_sock.c): none once the namespace already holds
    ``tcp_max_tw_buckets`` of them; tcp_time_wait() then closes the socket at once and
    counts TcpExtTCPTimeWaitOverflow. The limit and the count are per network namespace."""
    cap = int(max_tw_buckets if max_tw_buckets is not None else m.sysctls.get("tcp_max_tw_buckets"))
    return rules.Prediction("inet_twsk_alloc()", "min(closes, tcp_max_tw_buckets) entries; the rest overflow",
                            {"closes": int(closes), "tcp_max_tw_buckets": cap}, min(int(closes), cap))


def inet_csk_bind_conflict(m: rules.Machine, old_reuseaddr: int, new_reuseaddr: int) -> rules.Prediction:
    """bind() to a port that a TIME_WAIT entry still holds (inet_bind_conflict(),
    net/ipv4/inet_connection_sock.c): no conflict only when both the new socket and the
    entry have sk_reuse (the entry is not LISTEN). The entry inherits sk_reuse from the
    connection, which inherits it from its listener (sk_clone_lock copies it; tcp_time_wait
    copies it to tw_reuse): the old server must have set SO_REUSEADDR too."""
    ok = bool(old_reuseaddr) and bool(new_reuseaddr)
    return rules.Prediction("inet_bind_conflict()", "TIME_WAIT holder: ok only if old and new both SO_REUSEADDR",
                            {"old listener SO_REUSEADDR": int(old_reuseaddr), "new SO_REUSEADDR": int(new_reuseaddr)},
                            "ok" if ok else "EADDRINUSE")


# ======================================================================================
# the kernel's socket table, sampled
# ======================================================================================
_SS_TIMER = re.compile(r"timer:\((\w+),([^,)]*)")


def ss_timer_seconds(text: str) -> float | None:
    """Seconds in ss's timer text. ss (print_ms_timer()) writes 59.5 s as ``59sec``, 1.9 s as
    ``1.900ms`` (seconds, a dot, then milliseconds), 0.9 s as ``900ms``, 61 s as ``1min1sec``."""
    ms = ss_timer_ms(text)
    return None if ms is None else ms / 1000.0


def ss_rows(ns, port: int) -> list[dict]:
    """``ss -tanoH`` inside *ns* for *port* (either end, no LISTEN): state, ports, the timer."""
    proc = ns.run(["ss", "-tanoH", f"( sport = :{port} or dport = :{port} )"], timeout=20)
    if proc.returncode != 0:
        raise CourseError(f"ss failed inside the namespace: {proc.stderr.strip()}",
                          "install iproute2 (`apt-get install iproute2`).")
    rows = []
    for line in proc.stdout.splitlines():
        tok = line.split()
        if len(tok) < 5 or tok[0] == "LISTEN":
            continue
        t = _SS_TIMER.search(line)
        rows.append({"state": tok[0], "lport": int(tok[3].rsplit(":", 1)[1]), "rport": int(tok[4].rsplit(":", 1)[1]),
                     "timer": t.group(1) if t else None, "timer_text": t.group(2) if t else None,
                     "timer_s": ss_timer_seconds(t.group(2)) if t else None, "line": " ".join(tok)})
    return rows


class Sampler:
    """A thread that reads the namespace's /proc/net/tcp every SAMPLE_EVERY s until
    stopped or *seconds* have passed (and at most *limit* samples): [t, lport, rport,
    state, timer, timer_s] for the sockets of *ports*, one row per socket per sample,
    plus [t, None, ...] when none is left."""

    def __init__(self, ns, ports: set[int], seconds: float = DEADLINE + 2, limit: int = 5000):
        self.ns, self.ports, self.seconds, self.limit = ns, set(ports), seconds, limit
        self.rows: list[list] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcpcourse-teardown-sampler", daemon=True)
        self.error: BaseException | None = None

    def snapshot(self) -> list[dict]:
        return parse_proc_tcp(self.ns.read_proc("net/tcp"), self.ports)

    def _run(self) -> None:
        end = time.monotonic() + self.seconds
        try:
            for _ in range(self.limit):
                if self._stop.is_set() or time.monotonic() > end:
                    break
                now = time.time()
                rows = self.snapshot()
                for r in rows:
                    self.rows.append([now, r["lport"], r["rport"], r["state"], r["timer"], r["timer_s"]])
                if not rows:
                    self.rows.append([now, None, None, None, None, None])
                self._stop.wait(SAMPLE_EVERY)
        except BaseException as exc:   # reported by stop()
            self.error = exc

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.error is not None:
            raise CourseError(f"sampling the socket table failed: {self.error}",
                              "run again; if it repeats, report it with caps.summary().")


def _wait(pred, seconds: float, step: float = 0.005) -> bool:
    """Poll *pred* until true or *seconds* pass (bounded)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def _listener(ns, backlog: int, reuseaddr: int | None = None) -> tuple[socket.socket, int]:
    """A listener on 127.0.0.1 (an ephemeral port) inside *ns*, SO_REUSEADDR set if asked."""
    lst = ns.socket()
    if reuseaddr is not None:
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuseaddr)
    lst.bind(("127.0.0.1", 0))
    lst.listen(backlog)
    return lst, lst.getsockname()[1]


def _pair(ns, port: int, lst: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A connected (client, server) pair inside *ns*, one request and reply exchanged."""
    c = ns.socket()
    c.settimeout(5)
    c.connect(("127.0.0.1", port))
    lst.settimeout(5)
    s, _ = lst.accept()
    s.settimeout(5)
    c.sendall(REQUEST)
    if s.recv(100) != REQUEST:
        raise CourseError("the request did not arrive whole.", "run again.")
    s.sendall(REPLY)
    if c.recv(100) != REPLY:
        raise CourseError("the reply did not arrive whole.", "run again.")
    return c, s


def _rto_s(sock: socket.socket) -> float:
    from ..kernel import tcp_info
    return float(tcp_info(sock).rto or 200000) / 1e6


# ======================================================================================
# 1. teardown: client-first, server-first, simultaneous
# ======================================================================================
def check_teardown(result: Result, quiet: bool = True) -> None:
    """The claims of :func:`teardown` on a live or replayed result."""
    d = result.data
    tl = timeline(result)
    active, passive = d["active"], d["passive"]
    fins = fin_segments(result)
    if d["first"] == "simultaneous":
        for side in ("client", "server"):
            assert tl[side][-1] == "TIME-WAIT", f"simultaneous close: the {side} ends in TIME_WAIT ({tl[side]})"
            assert is_subsequence(tl[side], SIMULTANEOUS_PATH), f"{side}'s states {tl[side]}"
        assert "CLOSING" in tl["client"] + tl["server"], "one side went through CLOSING"
        assert d["both_fin_wait_1"], "both sides were in FIN_WAIT_1 at once: each sent FIN before receiving one"
        first = {f["from"]: f for f in fins if f["first"]}
        for side, peer in (("client", "server"), ("server", "client")):
            assert not first[side]["acks_peer_fin"], f"the {side}'s first FIN does not acknowledge the {peer}'s FIN"
    else:
        assert tl[active][-1] == "TIME-WAIT", f"the active closer ({active}) ends in TIME_WAIT: {tl[active]}"
        assert "TIME-WAIT" not in tl[passive], f"the passive closer ({passive}) never enters TIME_WAIT: {tl[passive]}"
        assert is_subsequence(tl[active], ACTIVE_PATH), f"{active}'s states {tl[active]} follow {ACTIVE_PATH}"
        assert is_subsequence(tl[passive], PASSIVE_PATH), f"{passive}'s states {tl[passive]} follow {PASSIVE_PATH}"
        assert "CLOSE-WAIT" in tl[passive] and "FIN-WAIT-2" in tl[active], \
            f"while the {passive} application had not closed: {passive} CLOSE_WAIT, {active} FIN_WAIT_2"
        assert d["passive_gone"], f"the {passive}'s socket is gone after its FIN was acknowledged"
        order = [f["from"] for f in fins if f["first"]]
        assert order == [active, passive], f"the {active}'s FIN comes first: {order}"
        fw2_timers = {r[3] for r in d["samples"] if r[1] == active and r[2] == "FIN-WAIT-2"}
        if d.get("how", "close") == "shutdown":
            assert d["after_eof"] == d["after_eof_len"], \
                f"after shutdown(SHUT_WR) the {passive} read EOF and could still send: {d['after_eof']} bytes arrived"
            assert None in fw2_timers and "timewait" not in fw2_timers, \
                f"a half-closed FIN_WAIT_2 (fd still open) has no timer: {fw2_timers}"
        else:
            assert "timewait" in fw2_timers, \
                f"an orphaned FIN_WAIT_2 is a timewait entry (tcp_time_wait(sk, TCP_FIN_WAIT2, tmo)): {fw2_timers}"
        if d["lose_last_ack"]:
            assert "LAST-ACK" in tl[passive], f"with the last ACK held back the {passive} sits in LAST_ACK"
            n = sum(1 for f in fins if f["from"] == passive)
            assert n >= 2, f"the {passive} retransmitted its FIN ({n} FINs)"
            tw_acks = acks_from_time_wait(result)
            assert tw_acks >= 2, f"the {active}'s TIME_WAIT entry acknowledged each copy of the FIN ({tw_acks} ACKs)"
    # the TIME_WAIT timer, read in /proc/net/tcp and in ss -o, against TCP_TIMEWAIT_LEN
    for tw in d["tw_timers"]:
        rules.assert_rule(result, inet_twsk_schedule, tw["proc_s"], tw["elapsed_s"], 0.01, tw["read_took_s"],
                          quiet=quiet,
                          what=f"{tw['side']}'s TIME_WAIT timer in /proc/net/tcp")
        if tw["ss_s"] is not None:
            rules.assert_rule(result, inet_twsk_schedule, tw["ss_s"], tw["ss_elapsed_s"], 1.0, tw["ss_took_s"],
                              quiet=True,
                              what=f"{tw['side']}'s ss -o timer:(timewait,{tw['ss_text']})")
    sides = {tw["side"] for tw in d["tw_timers"]}
    assert sides == ({"client", "server"} if d["first"] == "simultaneous" else {active}), \
        f"TIME_WAIT timers read for {sorted(sides)}"


@experiment(
    "teardown", chapter="03_01", needs={"live_capture", "namespaces"}, seconds=1.5,
    params=[
        Param("first", "who closes first", "client", choices=("client", "server", "simultaneous"),
              doc="the side whose application calls close() first (the active closer); simultaneous: both "
                  "call close() before either has received the other's FIN"),
        Param("how", "how the active side closes", "close", choices=("close", "shutdown"),
              doc="close(): the socket is orphaned at once; shutdown(SHUT_WR): only the sending direction "
                  "ends, the peer can still send, and the socket is closed after the peer's FIN"),
        Param("lose_last_ack", "drop the last ACK once", 0, choices=(0, 1),
              doc="1: a firewall rule drops the active closer's final ACK for 0.1 s, so the passive side "
                  "stays in LAST_ACK and retransmits its FIN (not for a simultaneous close)"),
    ],
    grid=[{"first": f, "how": "close", "lose_last_ack": l} for f in ("client", "server") for l in (0, 1)]
         + [{"first": f, "how": "shutdown", "lose_last_ack": 0} for f in ("client", "server")]
         + [{"first": "simultaneous", "how": "close", "lose_last_ack": 0}],
    invariant=check_teardown,
    claim="the active closer goes FIN_WAIT_1, FIN_WAIT_2, TIME_WAIT and holds TIME_WAIT for TCP_TIMEWAIT_LEN "
          "(60 s); the passive closer goes CLOSE_WAIT, LAST_ACK and closes; a simultaneous close leaves both "
          "sides in TIME_WAIT",
)
def teardown(run, first: str = "client", how: str = "close", lose_last_ack: int = 0) -> dict:
    """One connection (a request and a reply), then closed by *first*; both sides' states
    are sampled from the namespace's socket table throughout; the TIME_WAIT timers are read
    at the end (/proc/net/tcp and ``ss -o``)."""
    from ..caps import find_tool
    from ..netns import Namespace
    from .queues import _iptables

    if first == "simultaneous" and how != "close":
        raise ParameterError("how='shutdown' with first='simultaneous' is not an experiment of this chapter.",
                             "use how='close', or first='client' / 'server' for a half-close.")
    if first == "simultaneous" and lose_last_ack:
        raise ParameterError("lose_last_ack=1 with first='simultaneous': a simultaneous close has no LAST_ACK.",
                             "use lose_last_ack=0, or first='client' / 'server'.")
    if find_tool("iptables") is None:
        raise CourseError("iptables is not installed: the experiment holds back segments with a firewall "
                          "rule inside its namespace.", "install it: `apt-get install iptables`.")
    events: list[dict] = []
    with Namespace(name="teardown") as ns:
        machine = rules.Machine.read(ns).as_dict()
        lst, port = _listener(ns, 4)

        def mark(what: str) -> None:
            events.append({"t": time.time(), "event": what})

        with run.capture([port], ns=ns):
            c, s = _pair(ns, port, lst)
            cport = c.getsockname()[1]
            rto = _rto_s(c)
            side_of = {port: "server", cport: "client"}
            socks = {"client": c, "server": s}
            with Sampler(ns, {port, cport}) as sampler:
                time.sleep(0.02)
                if first == "simultaneous":
                    active, passive = "client", "server"
                    _iptables(ns, "-A", "INPUT", "-p", "tcp", "--tcp-flags", "FIN", "FIN",
                              "--dport", str(port), "-j", "DROP")
                    _iptables(ns, "-A", "INPUT", "-p", "tcp", "--tcp-flags", "FIN", "FIN",
                              "--sport", str(port), "-j", "DROP")
                    mark("firewall drops every FIN")
                    c.close()
                    mark("client close()")
                    time.sleep(SIM_GAP)
                    s.close()
                    mark("server close()")
                    time.sleep(0.01)
                    both = sampler.snapshot()
                    _iptables(ns, "-F", "INPUT")
                    mark("firewall rule lifted")
                    both_fw1 = sorted(r["state"] for r in both) == ["FIN-WAIT-1", "FIN-WAIT-1"]
                    _wait(lambda: sorted(r["state"] for r in sampler.snapshot()) == ["TIME-WAIT", "TIME-WAIT"],
                          DEADLINE)
                    passive_gone = None
                else:
                    active, passive = (first, "server" if first == "client" else "client")
                    a, p = socks[active], socks[passive]
                    aport = a.getsockname()[1]
                    pport = p.getsockname()[1]
                    after_eof = None
                    if how == "shutdown":
                        a.shutdown(socket.SHUT_WR)
                        mark(f"{active} shutdown(SHUT_WR)")
                    else:
                        a.close()
                        mark(f"{active} close()")
                    eof = p.recv(100)
                    mark(f"{passive} recv() returns {eof!r} (EOF)")
                    time.sleep(HOLD)
                    if how == "shutdown":          # the passive side can still send
                        p.sendall(AFTER_EOF)
                        mark(f"{passive} sends {len(AFTER_EOF)} bytes after EOF")
                        got = b""
                        for _ in range(50):
                            chunk = a.recv(65536)
                            got += chunk
                            if not chunk or len(got) >= len(AFTER_EOF):
                                break
                        after_eof = len(got)
                        mark(f"{active} reads them")
                    if lose_last_ack:
                        _iptables(ns, "-A", "INPUT", "-p", "tcp", "--sport", str(aport), "--dport", str(pport),
                                  "--tcp-flags", "ALL", "ACK", "-j", "DROP")
                        mark(f"firewall drops the {active}'s pure ACKs")
                    p.close()
                    mark(f"{passive} close()")
                    if lose_last_ack:
                        time.sleep(min(LOSE_FOR, rto / 2))
                        _iptables(ns, "-F", "INPUT")
                        mark("firewall rule lifted")
                    passive_gone = _wait(lambda: not any(r["lport"] == pport for r in sampler.snapshot()),
                                         DEADLINE)
                    both_fw1 = None
                    if how == "shutdown":
                        a_eof = a.recv(100)
                        a.close()
                        mark(f"{active} recv() returns {a_eof!r}, then close()")
                time.sleep(0.03)
            # the TIME_WAIT timers, read now: /proc/net/tcp (1/USER_HZ) and ss -o (text)
            t_proc = time.time()
            proc_rows = sampler.snapshot()
            t_ss = time.time()
            view = ss_rows(ns, port)
            t_end = time.time()
        lst.close()
    from ..dissect import segments
    segs = segments(run.pcap)
    t0 = float(segs["time"].iloc[0]) if len(segs) else events[0]["t"]
    progress.report(1.0, "done")
    return _finish_teardown({
        "port": port, "client_port": cport, "first": first, "how": how, "lose_last_ack": lose_last_ack,
        "after_eof": None if first == "simultaneous" else after_eof, "after_eof_len": len(AFTER_EOF),
        "active": active, "passive": passive, "rto_s": round(rto, 4),
        "both_fin_wait_1": both_fw1, "passive_gone": passive_gone,
        "samples": [[round(r[0] - t0, 4), side_of.get(r[1]), *r[3:]] for r in sampler.rows],
        "events": [{"t": round(e["t"] - t0, 4), "event": e["event"]} for e in events],
        "proc_end": [{**r, "side": side_of.get(r["lport"]), "t": round(t_proc - t0, 4),
                      "took": round(t_ss - t_proc, 4)} for r in proc_rows],
        "ss_end": [{**r, "side": side_of.get(r["lport"]), "t": round(t_ss - t0, 4),
                    "took": round(t_end - t_ss, 4)} for r in view],
        "machine": machine,
    }, segs)


def _finish_teardown(data: dict, segs) -> dict:
    """Fill ``tw_timers``: for each TIME_WAIT entry at the end, the timer read and the time
    since the last segment that side received (from the capture): the one that started or
    restarted its TIME_WAIT timer."""
    out = []
    for side in ("client", "server"):
        proc = [r for r in data["proc_end"] if r["side"] == side and r["state"] == "TIME-WAIT"]
        if not proc:
            continue
        lport = data["port"] if side == "server" else data["client_port"]
        # the last segment this side received moved it into TIME_WAIT (a FIN in FIN_WAIT_2,
        # the ACK of its FIN in CLOSING) or restarted the timer (a retransmitted FIN)
        got = segs[segs["dport"] == lport]
        if not len(got):
            continue
        last = float(got["t"].iloc[-1])
        sr = [r for r in data["ss_end"] if r["side"] == side and r["state"] == "TIME-WAIT"]
        out.append({"side": side, "entered_at": round(last, 4), "proc_s": proc[0]["timer_s"],
                    "elapsed_s": round(proc[0]["t"] - last, 4), "read_took_s": proc[0]["took"],
                    "ss_s": sr[0]["timer_s"] if sr else None, "ss_text": sr[0]["timer_text"] if sr else None,
                    "ss_elapsed_s": round(sr[0]["t"] - last, 4) if sr else None,
                    "ss_took_s": sr[0]["took"] if sr else None})
    data["tw_timers"] = out
    return data


# ----------------------------------------------------------------------------- analysis
def is_subsequence(seen: list[str], path: list[str]) -> bool:
    """True when *seen* visits states in *path*'s order (skipping some is allowed:
    a state shorter than one sample can be missed, never reordered)."""
    it = iter(path)
    return all(any(s == p for p in it) for s in seen)


def timeline(result: Result) -> dict[str, list[str]]:
    """Each side's distinct states in the order the samples saw them."""
    out: dict[str, list[str]] = {"client": [], "server": []}
    for t, side, state, *_ in result.data["samples"]:
        if side in out and state and (not out[side] or out[side][-1] != state):
            out[side].append(state)
    return out


def state_spans(result: Result):
    """One row per side and state: first and last time it was sampled (s since the first packet)."""
    import pandas as pd
    rows = []
    for side in ("client", "server"):
        cur = None
        for t, sd, state, *_ in result.data["samples"]:
            if sd != side:
                continue
            if cur is None or cur["state"] != state:
                cur = {"side": side, "state": state, "from": t, "to": t}
                rows.append(cur)
            else:
                cur["to"] = t
    return pd.DataFrame(rows, columns=["side", "state", "from", "to"])


def fin_segments(result: Result) -> list[dict]:
    """Every FIN in the capture: who sent it, when, whether it is that side's first, and
    whether its ACK field already covers the peer's FIN."""
    d = result.data
    df = result.segments()
    fins = df[(df["tcp_flags"] & 1) == 1]
    out, seen = [], set()
    peer_fin_end = {}
    for _, r in fins.iterrows():
        side = "server" if int(r["sport"]) == d["port"] else "client"
        peer_fin_end.setdefault(side, int(r["seq_raw"]) + int(r["len"]) + 1)
    for _, r in fins.iterrows():
        side = "server" if int(r["sport"]) == d["port"] else "client"
        peer = "client" if side == "server" else "server"
        end = peer_fin_end.get(peer)
        out.append({"from": side, "t": float(r["t"]), "first": side not in seen,
                    "acks_peer_fin": end is not None and int(r["ack_raw"]) == end % (1 << 32)})
        seen.add(side)
    return out


def acks_from_time_wait(result: Result) -> int:
    """Pure ACKs the active closer sent after entering TIME_WAIT (one per FIN it received)."""
    d = result.data
    df = result.segments()
    aport = d["port"] if d["active"] == "server" else d["client_port"]
    fins_in = df[(df["dport"] == aport) & ((df["tcp_flags"] & 1) == 1)]
    if not len(fins_in):
        return 0
    after = df[(df["sport"] == aport) & (df["flags"] == "ACK") & (df["len"] == 0) & (df["t"] >= fins_in["t"].iloc[0])]
    return int(len(after))


# ======================================================================================
# 2. FIN_WAIT_2: orphaned vs half-closed, and TIME_WAIT, under a short tcp_fin_timeout
# ======================================================================================
def check_fin_wait2(result: Result, quiet: bool = True) -> None:
    d = result.data
    o, h, f = d["orphan"], d["half"], d["full"]
    # the orphan: a timewait entry in FIN-WAIT-2 with a timer, gone after tcp_fin_time()
    assert o["state_after_ack"] == "FIN-WAIT-2" and o["timer_after_ack"] == "timewait", \
        f"an orphaned FIN_WAIT_2 is a timewait entry (substate FIN_WAIT2): {o['state_after_ack']}/{o['timer_after_ack']}"
    assert o["gone_after_s"] is not None, "the orphaned FIN_WAIT_2 disappeared"
    rules.assert_rule(result, tcp_fin_time, o["gone_after_s"], o["rto_s"], quiet=quiet,
                      what="orphaned FIN_WAIT_2: from the ACK of its FIN until it disappeared")
    assert o["server_state_end"] == "CLOSE-WAIT", "the server application never closed: CLOSE_WAIT stays"
    assert o["rst_after_late_fin"], "the server's late FIN found no socket and was answered with RST"
    # the half-closed one: a full socket, no timer, still there; reads after EOF
    assert h["eof_at_server"] and h["reply_after_eof"] == h["reply_len"], \
        "after shutdown(SHUT_WR) the server reads EOF and can still send; the client reads it all"
    assert h["state_end"] == "FIN-WAIT-2" and h["timer_end"] is None, \
        f"a half-closed FIN_WAIT_2 with its fd open has no timer and outlives tcp_fin_timeout: {h}"
    assert h["age_end_s"] > d["fin_timeout"], "it was checked after tcp_fin_timeout had passed"
    # the full close: TIME_WAIT counts down from 60 s whatever tcp_fin_timeout says
    rules.assert_rule(result, inet_twsk_schedule, f["proc_s"], f["elapsed_s"], 0.01, f["read_took_s"], quiet=quiet,
                      what="TIME_WAIT timer with a short tcp_fin_timeout")
    assert f["proc_s"] > d["fin_timeout"], "tcp_fin_timeout does not shorten TIME_WAIT"


@experiment(
    "fin_wait2", chapter="03_01", needs={"live_capture", "namespaces"}, seconds=3.5,
    params=[Param("fin_timeout", "tcp_fin_timeout (s)", 1, choices=(1, 2), minimum=1, maximum=5,
                  doc="net.ipv4.tcp_fin_timeout inside the namespace (the host's default is 60)")],
    invariant=check_fin_wait2,
    claim="tcp_fin_timeout ends an orphaned FIN_WAIT_2 (a timewait entry) while the peer stays in CLOSE_WAIT; "
          "a half-closed socket reads EOF and keeps receiving, and its FIN_WAIT_2 has no timer; TIME_WAIT still "
          "counts down from 60 s",
)
def fin_wait2(run, fin_timeout: int = 1) -> dict:
    """Three connections in a namespace with tcp_fin_timeout = *fin_timeout*: orphan (client
    close(), server never closes), half (client shutdown(SHUT_WR), server replies after EOF),
    full (client close(), server closes at EOF). Sampled until the orphan's entry is gone
    (bounded); then the orphan's server closes late and gets a RST."""
    from ..netns import Namespace

    with Namespace(sysctls={"net.ipv4.tcp_fin_timeout": fin_timeout}, name="finwait2") as ns:
        machine = rules.Machine.read(ns).as_dict()
        lst, port = _listener(ns, 8)
        with run.capture([port], ns=ns):
            (oc, os_), (hc, hs), (fc, fs) = (_pair(ns, port, lst) for _ in range(3))
            ports = {k: c.getsockname()[1] for k, c in (("orphan", oc), ("half", hc), ("full", fc))}
            side = {v: k for k, v in ports.items()}
            rto = _rto_s(oc)

            def row(kind: str) -> dict | None:
                rs = [r for r in parse_proc_tcp(ns.read_proc("net/tcp"), {ports[kind]}) if r["lport"] == ports[kind]]
                return rs[0] if rs else None

            with Sampler(ns, set(ports.values()), seconds=fin_timeout + DEADLINE) as sampler:
                # full close first: its TIME_WAIT starts the clock
                fc.close()
                if fs.recv(10) != b"":
                    raise CourseError("the server did not read EOF.", "run again.")
                fs.close()
                # half close: the client keeps its fd
                hc.shutdown(socket.SHUT_WR)
                eof = hs.recv(10) == b""
                body = b"after-eof " * 300
                hs.sendall(body)
                got = b""
                hc.settimeout(2)
                while len(got) < len(body):
                    chunk = hc.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                # the orphan: the client closes, the server application never does
                t_close = time.time()
                oc.close()
                _wait(lambda: (row("orphan") or {}).get("state") == "FIN-WAIT-2", 1.0)
                after_ack = row("orphan") or {}
                bound = tcp_fin_time(rules.Machine.from_dict(machine), rto).high + 1.0
                gone = _wait(lambda: row("orphan") is None, bound, step=0.004)
                t_gone = time.time()
                progress.report(0.8, "orphaned FIN_WAIT_2 expired" if gone else "still waiting")
                time.sleep(0.05)
            server_state = next((r["state"] for r in sampler.snapshot() if r["rport"] == ports["orphan"]), None)
            half_row = row("half") or {}
            t_full_read = time.time()
            full_row = row("full") or {}
            t_full_done = time.time()
            view = ss_rows(ns, port)
            # the server application finally closes: its FIN reaches no socket
            os_.close()
            time.sleep(0.05)
            hs.close()
            hc.close()
            time.sleep(0.05)
        lst.close()
    from ..dissect import segments
    df = segments(run.pcap)
    t0 = float(df["time"].iloc[0])
    o = ports["orphan"]
    ack_of_fin = df[(df["sport"] == port) & (df["dport"] == o) & (df["t"] >= t_close - t0 - 0.001)
                    & ((df["tcp_flags"] & 1) == 0)]
    t_ack = float(ack_of_fin["t"].iloc[0]) if len(ack_of_fin) else None
    late_fin = df[(df["sport"] == port) & (df["dport"] == o) & ((df["tcp_flags"] & 1) == 1)]
    rst = df[(df["sport"] == o) & ((df["tcp_flags"] & 4) == 4)]
    fport = ports["full"]
    full_fin = df[(df["dport"] == fport) & ((df["tcp_flags"] & 1) == 1)]
    progress.report(1.0, "done")
    return {
        "port": port, "ports": ports, "fin_timeout": fin_timeout,
        "samples": [[round(r[0] - t0, 4), side.get(r[1], "server:" + str(side.get(r[2]))), *r[3:]]
                    for r in sampler.rows],
        "orphan": {"rto_s": round(rto, 4), "close_at": round(t_close - t0, 4),
                   "ack_at": None if t_ack is None else round(t_ack, 4),
                   "state_after_ack": after_ack.get("state"), "timer_after_ack": after_ack.get("timer"),
                   "timer_after_ack_s": after_ack.get("timer_s"),
                   "gone_after_s": round(t_gone - t0 - t_ack, 4) if gone and t_ack is not None else None,
                   "server_state_end": server_state,
                   "rst_after_late_fin": bool(len(late_fin)) and bool(len(rst))
                   and float(rst["t"].iloc[0]) >= float(late_fin["t"].iloc[0])},
        "half": {"eof_at_server": eof, "reply_len": len(body), "reply_after_eof": len(got),
                 "state_end": half_row.get("state"), "timer_end": half_row.get("timer"),
                 "age_end_s": round(t_full_read - t_close, 4)},
        "full": {"proc_s": full_row.get("timer_s"), "state": full_row.get("state"),
                 "read_took_s": round(t_full_done - t_full_read, 4),
                 "elapsed_s": round(t_full_read - t0 - float(full_fin["t"].iloc[-1]), 4) if len(full_fin) else None},
        "ss_end": [{**r, "who": side.get(r["lport"], "server")} for r in view],
        "machine": machine,
    }


# ======================================================================================
# 3. rebinding a listener's port over TIME_WAIT
# ======================================================================================
def check_rebind(result: Result, quiet: bool = True) -> None:
    d = result.data
    for case in d["cases"]:
        assert case["time_wait_on_port"] >= 1, "the old server connection holds the port in TIME_WAIT"
        rules.assert_rule(result, inet_csk_bind_conflict, case["outcome"], case["old_reuseaddr"],
                          case["new_reuseaddr"], quiet=quiet,
                          what=f"bind() (old listener SO_REUSEADDR={case['old_reuseaddr']}, "
                               f"new SO_REUSEADDR={case['new_reuseaddr']})")
        if case["outcome"] == "ok":
            assert case["accepted"], "the new listener accepted a connection"


@experiment(
    "rebind", chapter="03_01", needs={"namespaces"},
    invariant=check_rebind,
    claim="a server restarted while its old connection is in TIME_WAIT: bind() fails with EADDRINUSE "
          "without SO_REUSEADDR and succeeds with it",
)
def rebind(run) -> dict:
    """For each combination of SO_REUSEADDR on the old listener and on the new socket: a
    listener accepts one connection and the server closes it first (that side goes to
    TIME_WAIT on the listener's port); the listener closes; a new socket binds the port."""
    from ..netns import Namespace

    cases = []
    with Namespace(name="rebind") as ns:
        machine = rules.Machine.read(ns).as_dict()
        for old in (0, 1):
            for new in (0, 1):
                lst, port = _listener(ns, 1, reuseaddr=old)
                c, s = _pair(ns, port, lst)
                s.close()                       # the server closes first: its side goes TIME_WAIT
                c.recv(10)
                c.close()
                lst.close()

                def tw_count() -> int:
                    return sum(1 for r in parse_proc_tcp(ns.read_proc("net/tcp"), {port})
                               if r["state"] == "TIME-WAIT" and r["lport"] == port)
                _wait(lambda: tw_count() > 0, 2.0)
                case = {"port": port, "old_reuseaddr": old, "new_reuseaddr": new,
                        "time_wait_on_port": tw_count(), "accepted": False}
                n = ns.socket()
                n.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, new)
                try:
                    n.bind(("127.0.0.1", port))
                    case["outcome"] = "ok"
                except OSError as exc:
                    case["outcome"] = errno.errorcode.get(exc.errno, str(exc.errno))
                if case["outcome"] == "ok":
                    n.listen(1)
                    c2 = ns.socket()
                    c2.settimeout(2)
                    c2.connect(("127.0.0.1", port))
                    n.settimeout(2)
                    conn, _ = n.accept()
                    case["accepted"] = True
                    conn.close()
                    c2.close()
                n.close()
                case["ss"] = ss_rows(ns, port)
                cases.append(case)
    return {"cases": cases, "machine": machine}


# ======================================================================================
# 4. tcp_max_tw_buckets overflow
# ======================================================================================
def check_tw_overflow(result: Result, quiet: bool = True) -> None:
    d = result.data
    rules.assert_rule(result, inet_twsk_alloc, d["time_wait"], d["closes"], quiet=quiet,
                      what="TIME_WAIT entries in the namespace after the closes")
    assert d["overflow"] == d["closes"] - d["time_wait"], \
        f"TcpExtTCPTimeWaitOverflow {d['overflow']} = closes {d['closes']} − entries {d['time_wait']}"
    assert d["sockstat_tw"] == d["time_wait"], "sockstat's tw agrees with the table"


@experiment(
    "tw_overflow", chapter="03_01", needs={"namespaces"},
    params=[Param("max_tw_buckets", "tcp_max_tw_buckets", 4, choices=(4,), minimum=0, maximum=64,
                  doc="net.ipv4.tcp_max_tw_buckets inside the namespace"),
            Param("closes", "connections closed", 10, choices=(10,), minimum=1, maximum=200,
                  doc="connections the client closes first, one after another")],
    invariant=check_tw_overflow,
    claim="beyond tcp_max_tw_buckets an active close gets no TIME_WAIT entry: the kernel closes the socket and "
          "counts TcpExtTCPTimeWaitOverflow",
)
def tw_overflow(run, max_tw_buckets: int = 4, closes: int = 10) -> dict:
    """*closes* connections, each closed by the client first, in a namespace with
    tcp_max_tw_buckets = *max_tw_buckets*; then the TIME_WAIT entries are counted."""
    from ..kernel import nstat_delta, sockstat
    from ..netns import Namespace

    with Namespace(sysctls={"net.ipv4.tcp_max_tw_buckets": max_tw_buckets}, name="twover") as ns:
        machine = rules.Machine.read(ns).as_dict()
        lst, port = _listener(ns, 16)
        with nstat_delta(ns) as counters:
            for _ in range(closes):
                c, s = _pair(ns, port, lst)
                c.close()
                s.recv(10)
                s.close()
                _wait(lambda: not any(r["lport"] == port and r["state"] == "LAST-ACK"
                                      for r in parse_proc_tcp(ns.read_proc("net/tcp"), {port})), 1.0)
            time.sleep(0.05)
        rows = parse_proc_tcp(ns.read_proc("net/tcp"), {port})
        tw = sum(1 for r in rows if r["state"] == "TIME-WAIT")
        st = sockstat(ns).get("TCP", {}).get("tw")
        lst.close()
    return {"port": port, "max_tw_buckets": max_tw_buckets, "closes": closes, "time_wait": tw,
            "overflow": int(counters.delta.get("TcpExtTCPTimeWaitOverflow", 0)), "sockstat_tw": st,
            "states": sorted(r["state"] for r in rows), "machine": machine}


# ======================================================================================
# 5. the whole 60 s, once (recorded; a live run takes over a minute)
# ======================================================================================
EXPIRY_SAMPLE = 0.05     # s between socket-table samples while waiting for the expiry


def tcp_timewait_expiry(m: rules.Machine) -> rules.Prediction:
    """When a TIME_WAIT entry is removed: TCP_TIMEWAIT_LEN after the segment that started it,
    late by at most its timer-wheel slot (a 60 s timer sits in a coarse level of the wheel:
    2.048 s slots at HZ=250) plus scheduling slack; never more than a tick early."""
    return rules.timer_band(m, rules.TCP_TIMEWAIT_LEN_S, rule="inet_twsk_kill() via tw_timer_handler()",
                            formula="TCP_TIMEWAIT_LEN (60 s), within [−1 tick − 10 ms, + wheel slot + slack]",
                            inputs={"TCP_TIMEWAIT_LEN_s": rules.TCP_TIMEWAIT_LEN_S})


def check_time_wait_expiry(result: Result, quiet: bool = True) -> None:
    d = result.data
    assert d["gone_after_s"] is not None, "the TIME_WAIT entry disappeared"
    rules.assert_rule(result, tcp_timewait_expiry, d["gone_after_s"], quiet=quiet,
                      what="from the FIN that started TIME_WAIT until the entry vanished")
    first = d["timer_first_s"]
    assert first is not None and abs(first + d["first_read_after_s"] - rules.TCP_TIMEWAIT_LEN_S) < 0.1, \
        "the first timer reading was 60 s minus the time since the FIN"


@experiment(
    "time_wait_expiry", chapter="03_01", needs={"live_capture", "namespaces"}, seconds=63,
    invariant=check_time_wait_expiry,
    claim="a TIME_WAIT entry disappears TCP_TIMEWAIT_LEN (60 s) after the FIN that started it, late by at most "
          "its timer-wheel slot",
)
def time_wait_expiry(run) -> dict:
    """One connection closed client-first in a namespace; the client's TIME_WAIT entry is
    watched (every EXPIRY_SAMPLE s) until it disappears, at most 60 s + its wheel slot + 2 s.
    Over a minute live: the notebook replays it, the recorder runs it."""
    from ..dissect import segments
    from ..netns import Namespace

    with Namespace(name="twexpiry") as ns:
        machine = rules.Machine.read(ns)
        lst, port = _listener(ns, 1)
        with run.capture([port], ns=ns):
            c, s = _pair(ns, port, lst)
            cport = c.getsockname()[1]
            c.close()
            s.recv(10)
            s.close()
            time.sleep(0.05)
        df = segments(run.pcap)
        fin = df[(df["dport"] == cport) & ((df["tcp_flags"] & 1) == 1)]
        t_fin = float(fin["time"].iloc[-1])
        bound = tcp_timewait_expiry(machine).high + 2.0
        samples, first, first_at, gone = [], None, None, None
        for _ in range(int(bound / EXPIRY_SAMPLE) + 100):           # bounded
            now = time.time()
            rows = [r for r in parse_proc_tcp(ns.read_proc("net/tcp"), {cport}) if r["lport"] == cport]
            if rows and first is None:
                first, first_at = rows[0]["timer_s"], now
            if len(samples) % 20 == 0 or not rows:
                samples.append([round(now - t_fin, 3), rows[0]["state"] if rows else None,
                                rows[0]["timer_s"] if rows else None])
            if not rows:
                gone = now
                break
            if now - t_fin > bound:
                break
            progress.report(min(0.99, (now - t_fin) / 61), "waiting for TIME_WAIT to end")
            time.sleep(EXPIRY_SAMPLE)
        lst.close()
    progress.report(1.0, "done")
    return {"port": port, "client_port": cport, "timer_first_s": first,
            "first_read_after_s": None if first_at is None else round(first_at - t_fin, 4),
            "gone_after_s": None if gone is None else round(gone - t_fin, 4),
            "samples": samples, "machine": machine.as_dict()}


# ======================================================================================
# plot: each side's states over time, with the FINs and the held-back ACKs marked
# ======================================================================================
STATE_COLOURS = {"ESTAB": "#9e9e9e", "FIN-WAIT-1": "#ffb74d", "FIN-WAIT-2": "#f57c00", "CLOSE-WAIT": "#64b5f6",
                 "LAST-ACK": "#1565c0", "CLOSING": "#ab47bc", "TIME-WAIT": "#c62828"}


def swimlanes(result: Result, ax=None):
    """Each side's sampled states as coloured bars on a shared time axis (s since the first
    packet), the FINs each side sent as arrows between the lanes, and the run's events."""
    import matplotlib.pyplot as plt
    from ..plots import use_style

    use_style()
    spans = state_spans(result)
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 3.2))
    else:
        fig = ax.figure
    lanes = {"client": 1, "server": 0}
    total = max(float(spans["to"].max() - spans["from"].min()), 0.01) if len(spans) else 1.0
    for _, r in spans.iterrows():
        width = max(float(r["to"]) - float(r["from"]), 0.003)
        ax.barh(lanes[r["side"]], width, left=float(r["from"]), height=0.5,
                color=STATE_COLOURS.get(r["state"], "#eeeeee"), edgecolor="white")
        if width > 0.09 * total:
            ax.text(float(r["from"]) + width / 2, lanes[r["side"]], r["state"], ha="center", va="center",
                    fontsize=8, color="white" if r["state"] in ("LAST-ACK", "TIME-WAIT", "FIN-WAIT-2") else "black")
    for f in fin_segments(result):
        y0, y1 = (1, 0) if f["from"] == "client" else (0, 1)
        ax.annotate("", xy=(f["t"], y1 + (0.25 if y1 < y0 else -0.25)), xytext=(f["t"], y0 + (-0.25 if y1 < y0 else 0.25)),
                    arrowprops={"arrowstyle": "->", "color": "#e65100"})
    for e in result.data["events"]:
        ax.axvline(e["t"], color="#bdbdbd", lw=0.8, ls=":")
    from matplotlib.patches import Patch
    seen = [st for st in STATE_COLOURS if st in set(spans["state"])]
    ax.legend(handles=[Patch(color=STATE_COLOURS[st], label=st) for st in seen], loc="upper center",
              bbox_to_anchor=(0.5, -0.28), ncol=len(seen), fontsize=8, frameon=False)
    ax.set_yticks([0, 1], ["server", "client"])
    ax.set_xlabel("time since the first packet (s)")
    d = result.data
    ax.set_title(f"states per side, first={d['first']}, lose_last_ack={d['lose_last_ack']} "
                 "(orange arrows: FINs)")
    return fig


# ======================================================================================
# for the notebook and the panel: sentences and tables from a result (live or replayed)
# ======================================================================================
def fin_ack_delay(result: Result) -> float | None:
    """How long the passive side took to acknowledge the first FIN (s): the FIN_WAIT_1 time.
    tcp_fin() puts the receiver in pingpong mode, so a FIN's ACK waits for the delayed-ACK
    timer unless the application's own FIN (or data) carries it first."""
    d = result.data
    df = result.segments()
    fins = [f for f in fin_segments(result) if f["first"]]
    if not fins:
        return None
    f = fins[0]
    src = d["port"] if f["from"] == "server" else d["client_port"]
    back = df[(df["dport"] == src) & (df["t"] > f["t"])]
    return round(float(back["t"].iloc[0]) - f["t"], 4) if len(back) else None


def teardown_sentence(result: Result) -> str:
    """What one teardown run showed, in one paragraph of Markdown."""
    d = result.data
    tl = timeline(result)
    parts = [f"**client**: {' → '.join(tl['client'])}; **server**: {' → '.join(tl['server'])}."]
    delay = fin_ack_delay(result)
    if delay is not None and d["first"] != "simultaneous":
        parts.append(f"The first FIN was acknowledged after {delay * 1e3:.0f} ms (the {d['active']} sat in "
                     "FIN_WAIT_1 that long).")
    if d.get("how") == "shutdown":
        parts.append(f"The {d['active']} called `shutdown(SHUT_WR)`: the {d['passive']} read EOF and then sent "
                     f"{d['after_eof']:,} bytes, which the {d['active']} read; its FIN_WAIT_2 had no timer (its fd "
                     "was still open).")
    for tw in d["tw_timers"]:
        parts.append(f"The {tw['side']}'s TIME_WAIT timer read **{tw['proc_s']:.2f} s** {tw['elapsed_s'] * 1e3:.0f} ms "
                     f"after the segment that started it (`ss -o`: `timer:(timewait,{tw['ss_text']},0)`).")
    if d["lose_last_ack"]:
        n = sum(1 for f in fin_segments(result) if f["from"] == d["passive"])
        parts.append(f"With its last ACK dropped, the {d['passive']} sent its FIN {n} times; the {d['active']}'s "
                     f"TIME_WAIT entry answered each copy ({acks_from_time_wait(result)} ACKs).")
    return " ".join(parts)


def render(result: Result) -> list:
    """What the 03_01 panel shows: the banner, the swimlanes, the ladder, one sentence."""
    from .. import plots
    return [result, swimlanes(result), plots.ladder(result.segments(), max_segments=20,
                                                      title=f"{result.data['first']} closes first"),
            teardown_sentence(result)]


def fin_wait2_table(result: Result):
    """One row per connection of :func:`fin_wait2`: what the client did, what it became."""
    import pandas as pd
    d = result.data
    o, h, f = d["orphan"], d["half"], d["full"]
    return pd.DataFrame([
        {"connection": "orphan", "client did": "close(); the server application never closes",
         "client socket at the end": "gone" if o["gone_after_s"] is not None else o["state_after_ack"],
         "server socket at the end": o["server_state_end"],
         "timer": f"FIN-WAIT-2 (timewait entry) ended after {o['gone_after_s']:.2f} s"},
        {"connection": "half", "client did": "shutdown(SHUT_WR), kept the fd, read the reply",
         "client socket at the end": h["state_end"], "server socket at the end": "CLOSE-WAIT (then closes)",
         "timer": "none"},
        {"connection": "full", "client did": "close(); the server closes at EOF",
         "client socket at the end": f["state"], "server socket at the end": "gone",
         "timer": f"timewait {f['proc_s']:.2f} s left"},
    ])


def rebind_table(result: Result):
    """The four SO_REUSEADDR combinations of :func:`rebind` and what bind() returned."""
    import pandas as pd
    return pd.DataFrame([{"old listener SO_REUSEADDR": c["old_reuseaddr"], "new socket SO_REUSEADDR": c["new_reuseaddr"],
                          "TIME_WAIT entries on the port": c["time_wait_on_port"], "bind()": c["outcome"]}
                         for c in result.data["cases"]])
