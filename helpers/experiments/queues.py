"""Chapter 01_03: the SYN queue and the accept queue of a listener that does not accept.

One experiment, :func:`accept_queue`, runs one timeline inside a private network namespace
(so the counters are the experiment's own and ``tcp_abort_on_overflow`` can be changed):

1. Two *late* clients (one when the backlog is 1) start their handshakes first, but a
   firewall rule inside the namespace holds back what they send after their SYN. This
   stands in for a network delay between the SYN and the final ACK, which loopback does
   not have (and this kernel has no ``netem`` to add one). The server keeps them half-open
   in its SYN queue (SYN-RECV) while the clients already believe they are connected.
2. ``clients`` ordinary clients connect one after another. The accept queue takes
   backlog + 1 of them (rules.sk_acceptq_is_full); the SYNs of the others are dropped,
   although the namespace has SYN cookies on, and retried on the schedule of
   rules.syn_retry_schedule (tcp_syn_linear_timeouts).
3. The rule is lifted and the late clients send a request. Their ACK now finds the accept
   queue full: with ``tcp_abort_on_overflow=0`` the server ignores it and resends its
   SYN-ACK later while the client retransmits its data; with ``1`` it answers RST.
4. At ``ACCEPT_AT`` seconds the server starts accepting. The waiting clients get in with
   their next SYN retry, and (abort 0) the late clients' retransmitted data finally lands.

The listener's queue length is sampled throughout from TCP_INFO (for a listener, tcpi_unacked
is the accept queue length and tcpi_sacked the backlog: the same numbers ss shows as Recv-Q and
Send-Q), and its half-open entries (SYN-RECV) from /proc/net/tcp.

Two shorter experiments complete the chapter:

- :func:`listen_limits`: what listen() stores and the queue holds, for listen(0) and for a
  backlog above ``net.core.somaxconn`` (set small in the namespace): min(backlog, somaxconn) + 1.
- :func:`synack_expiry`: where "delay, not failure" ends. A late client's final ACK keeps
  finding the accept queue full; the server gives up on the half-open entry after
  ``tcp_synack_retries`` SYN-ACK retransmissions (set small in the namespace), and the
  client's next retransmission is answered with RST.
"""
from __future__ import annotations

import errno
import socket
import time
from typing import Any

from .. import progress, rules
from ..errors import CourseError
from ..params import Param
from .base import Result, experiment

ACCEPT_AT = 2.5          # s after the first SYN: the server starts accepting
DEADLINE = 5.0           # s: the run ends by then whatever happens
LATE_PORT = 40100        # late clients bind 40100, 40101 (the firewall rule matches them)
REQUEST = b"hello\n"
SAMPLE_EVERY = 0.02      # s between queue samples


def late_count(backlog: int) -> int:
    """How many late clients: at most 2, and never more than the backlog (the SYN queue must
    keep room for the ordinary clients' SYNs: it counts as full beyond *backlog* entries);
    none for listen(0)."""
    return max(0, min(2, backlog))


def _tcp_state(sock: socket.socket) -> str:
    from ..kernel import tcp_info
    try:
        return str(tcp_info(sock).as_dict()["state"])
    except OSError:
        return "CLOSED"


def _iptables(ns, *args: str) -> None:
    proc = ns.run(["iptables", "-w", *args])
    if proc.returncode != 0:
        raise CourseError(f"iptables {' '.join(args)} failed inside the namespace: {proc.stderr.strip()}",
                          "install iptables (`apt-get install iptables`) and run as root.")


@experiment(
    "accept_queue", chapter="01_03", needs={"live_capture", "namespaces"}, seconds=3.5,
    params=[
        Param("backlog", "listen() backlog", 2, choices=(1, 2, 4), minimum=0, maximum=16,
              doc="the backlog passed to listen(); the accept queue holds backlog + 1 (listen(0): 1)"),
        Param("clients", "clients", 6, choices=(3, 6), minimum=1, maximum=24,
              doc="ordinary clients that connect one after another"),
        Param("abort_on_overflow", "tcp_abort_on_overflow", 0, choices=(0, 1),
              doc="what the server does with a final ACK that finds the accept queue full: "
                  "0 ignore it, 1 answer RST"),
    ],
    claim="the accept queue holds min(backlog, somaxconn)+1; further SYNs are dropped (cookies on or not) "
          "and retried on the tcp_syn_linear_timeouts schedule; a final ACK that finds the queue full is "
          "ignored (abort_on_overflow=0) or reset (1)",
)
def accept_queue(run, backlog: int = 2, clients: int = 6, abort_on_overflow: int = 0) -> dict:
    """A listener with *backlog* that accepts nothing until ACCEPT_AT seconds; late clients
    whose final ACK is held back, then *clients* ordinary clients. Returns the queue samples,
    every client's fate, the server's view and the namespace's counters."""
    from ..caps import find_tool
    from ..kernel import count_syn_recv, nstat_delta, ss, tcp_info
    from ..netns import Namespace

    if find_tool("iptables") is None:
        raise CourseError("iptables is not installed: the experiment holds back the late clients' "
                          "final ACK with a firewall rule inside its namespace.",
                          "install it: `apt-get install iptables`.")
    n_late = late_count(backlog)
    samples: list[list[float]] = []          # [epoch time, accept queue length, SYN-RECV entries]
    events: list[dict] = []
    socks: list[socket.socket] = []
    # cookies on, explicitly: a full accept queue drops SYNs whatever tcp_syncookies says
    with Namespace(sysctls={"net.ipv4.tcp_abort_on_overflow": abort_on_overflow,
                            "net.ipv4.tcp_syncookies": 1},
                   name=f"queue{abort_on_overflow}") as ns:
        machine = rules.Machine.read(ns).as_dict()      # before any traffic: the rules' inputs
        sysctls = {}
        for k in ("net.ipv4.tcp_syn_linear_timeouts", "net.ipv4.tcp_syn_retries", "net.ipv4.tcp_synack_retries",
                  "net.ipv4.tcp_abort_on_overflow", "net.core.somaxconn", "net.ipv4.tcp_syncookies"):
            try:
                sysctls[k] = ns.sysctl(k)
            except (CourseError, OSError):     # tcp_syn_linear_timeouts exists from Linux 6.5 on
                sysctls[k] = None
        lsock = ns.socket()
        lsock.bind(("127.0.0.1", 0))
        port = lsock.getsockname()[1]
        lsock.listen(backlog)

        def sample(label: str | None = None) -> int:
            now = time.time()
            depth = int(tcp_info(lsock).as_dict()["unacked"])
            samples.append([now, depth, count_syn_recv(ns.read_proc("net/tcp"), port)])
            if label:
                events.append({"t": now, "event": label, "queue": depth})
            return depth

        def new_client(bind_port: int | None = None) -> socket.socket:
            c = ns.socket()
            if bind_port is not None:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                c.bind(("127.0.0.1", bind_port))
            c.setblocking(False)
            socks.append(c)
            err = c.connect_ex(("127.0.0.1", port))
            if err not in (0, errno.EINPROGRESS):
                raise CourseError(f"connect() failed with {errno.errorcode.get(err, err)}.",
                                  "this should not happen inside a fresh namespace; run again.")
            return c

        late: list[socket.socket] = []
        ordinary: list[socket.socket] = []
        ordinary_ports: list[int] = []
        accepted: list[dict] = []
        with run.capture([port], ns=ns), nstat_delta(ns) as counters:
            sample()
            # 1. late clients: everything after their SYN is held back by the firewall
            if n_late:
                _iptables(ns, "-A", "INPUT", "-p", "tcp", "--dport", str(port), "--sport",
                          f"{LATE_PORT}:{LATE_PORT + n_late - 1}", "!", "--syn", "-j", "DROP")
            t_start = time.time()
            for i in range(n_late):
                late.append(new_client(LATE_PORT + i))
                sample(f"late client {i + 1} SYN")
            time.sleep(0.02)
            late_state_held = [_tcp_state(c) for c in late]
            # 2. ordinary clients, one after another
            immediate = []
            for i in range(clients):
                c = new_client()
                ordinary.append(c)
                ordinary_ports.append(c.getsockname()[1])
                time.sleep(0.003)
                immediate.append(_tcp_state(c))
                sample(f"client {i + 1} connect")
            view_full = ss(port=port, ns=ns)
            # 3. lift the rule; the late clients send their request
            if n_late:
                _iptables(ns, "-F", "INPUT")
            for c in late:
                c.send(REQUEST)
            sample("late clients send")
            progress.report(0.05, "accept queue full: waiting for SYN retries")

            late_fate = [None] * n_late        # "reset" | "delivered"
            late_errno: list[str | None] = [None] * n_late

            def poll_late() -> None:
                for i, c in enumerate(late):
                    if late_fate[i] is not None:
                        continue
                    try:
                        c.recv(1)
                    except BlockingIOError:
                        pass
                    except OSError as exc:
                        late_fate[i], late_errno[i] = "reset", errno.errorcode.get(exc.errno, str(exc.errno))
                        continue
                    if late_fate[i] is None and _tcp_state(c) == "ESTABLISHED" \
                            and int(tcp_info(c).as_dict()["unacked"]) == 0:
                        late_fate[i] = "delivered"

            def pending() -> bool:
                return (any(_tcp_state(c) != "ESTABLISHED" for c in ordinary)
                        or any(f is None for f in late_fate))

            # wait (sampling) until the server starts accepting, or nothing is pending
            t_accept = None
            while time.time() - t_start < DEADLINE:
                poll_late()
                if not pending() and t_accept is None:
                    break
                now = time.time() - t_start
                if t_accept is None and now >= ACCEPT_AT:
                    t_accept = time.time()
                    events.append({"t": t_accept, "event": "server starts accepting", "queue": sample()})
                if t_accept is not None:
                    lsock.setblocking(False)
                    while True:
                        try:
                            conn, peer = lsock.accept()
                        except BlockingIOError:
                            break
                        conn.setblocking(False)
                        socks.append(conn)
                        accepted.append({"t": time.time(), "peer_port": peer[1], "conn": conn, "data": b""})
                    for a in accepted:
                        try:
                            a["data"] += a["conn"].recv(64)
                        except (BlockingIOError, OSError):
                            pass
                    if not pending() and all(a["data"] or a["peer_port"] not in
                                             range(LATE_PORT, LATE_PORT + n_late) for a in accepted):
                        break
                sample()
                progress.report(min(0.95, now / (ACCEPT_AT + 1.2)),
                                "waiting for SYN retries" if t_accept is None else "accepting")
                time.sleep(SAMPLE_EVERY)
            time.sleep(0.02)
            sample()
        final_state = [_tcp_state(c) for c in ordinary]
        view_end = ss(port=port, ns=ns)
        delta = counters.delta
        for s in socks:
            s.close()
    progress.report(1.0, "done")

    def rows(view):
        return [{k: (None if v != v else v) for k, v in r.items()}
                for r in view[["state", "recv_q", "send_q", "lport", "pport"]].astype(object).to_dict("records")]

    # every time below is relative to the first captured packet, like the capture's own "t"
    from ..dissect import segments
    captured = segments(run.pcap)
    t0 = float(captured["time"].iloc[0]) if len(captured) else samples[0][0]
    return {
        "port": port, "backlog": backlog, "clients": clients, "abort_on_overflow": abort_on_overflow,
        "late_ports": [LATE_PORT + i for i in range(n_late)], "accept_at": ACCEPT_AT,
        "ordinary_ports": ordinary_ports,
        "t0": t0, "t_accept": None if t_accept is None else t_accept - t0,
        "samples": [[round(t - t0, 4), d, h] for t, d, h in samples],
        "events": [{**e, "t": round(e["t"] - t0, 4)} for e in events],
        "late_state_held": late_state_held, "late_fate": late_fate, "late_errno": late_errno,
        "immediate": immediate, "final_state": final_state,
        "accepted": [{"t": round(a["t"] - t0, 4), "peer_port": a["peer_port"], "data": a["data"].decode()}
                     for a in accepted],
        "ss_full": rows(view_full), "ss_end": rows(view_end),
        "counters": {k: v for k, v in delta.items() if v and k.startswith(("TcpExt", "Tcp"))},
        "sysctls": sysctls, "machine": machine,
    }


# ----------------------------------------------------------------------------- analysis

def syn_attempts(result: Result) -> dict[int, list[float]]:
    """{client port: times (s since the first packet) of every SYN it sent}."""
    df = result.segments()
    syns = df[(df["flags"] == "SYN") & (df["dport"] == result.data["port"])]
    return {int(p): list(g["t"]) for p, g in syns.groupby("sport")}


def retry_gaps(result: Result) -> list[list[float]]:
    """For each client that had to retry: the gaps between its consecutive SYNs (s)."""
    out = []
    for port, times in syn_attempts(result).items():
        if len(times) > 1:
            out.append([round(b - a, 3) for a, b in zip(times, times[1:])])
    return out


def syn_table(result: Result):
    """One row per ordinary client: how many SYNs it sent and when (s since the first packet)."""
    import pandas as pd

    attempts = syn_attempts(result)
    return pd.DataFrame([{"client": f"client {i + 1}", "SYNs sent": len(attempts.get(p, [])),
                          "SYN times (s)": ", ".join(f"{t:.2f}" for t in attempts.get(p, []))}
                         for i, p in enumerate(result.data["ordinary_ports"])])


def half_open_view(result: Result) -> list[tuple[str, int]]:
    """(state, peer port) of the server's SYN-RECV entries while the accept queue was full (ss)."""
    return [(row["state"], row["pport"]) for row in result.data["ss_full"] if row["state"] == "SYN-RECV"]


def fates(result: Result, who: str | None = None):
    """One row per client: its SYNs, its state right after connect(), and what became of it.

    For a late client, "request" says what the server did with the request it sent while
    the accept queue was full: acknowledged (at once, or late, once there was room) or reset.
    "accepted at" is when the application's accept() returned it (empty: never, the run
    ended first). *who*: "late" or "client" for only those rows."""
    import pandas as pd

    d = result.data
    attempts = syn_attempts(result)
    rows = []
    for i, p in enumerate(d["late_ports"]):
        tl = late_timeline(result, i)
        acked = tl["request acknowledged at"]
        rows.append({"client": f"late {i + 1}", "port": p, "SYNs sent": len(attempts.get(p, [])),
                     "state at once": d["late_state_held"][i],
                     "request": (f"reset ({d['late_errno'][i]})" if d["late_fate"][i] == "reset"
                                 else f"acknowledged at {acked:.2f} s" if acked is not None else "no answer"),
                     "copies of the request": len(tl["request sent at"]),
                     "accepted at (s)": tl["accepted at"]})
    for i, p in enumerate(d["ordinary_ports"]):
        acc = [a["t"] for a in d["accepted"] if a["peer_port"] == p]
        rows.append({"client": f"client {i + 1}", "port": p, "SYNs sent": len(attempts.get(p, [])),
                     "state at once": d["immediate"][i], "request": "", "copies of the request": 0,
                     "accepted at (s)": acc[0] if acc else None})
    out = pd.DataFrame(rows)
    if who is not None:
        out = out[out["client"].str.startswith(who)].reset_index(drop=True)
    return out


def late_timeline(result: Result, i: int = 0) -> dict:
    """What happened to late client *i*, from the capture: when it sent its request (every
    copy), when the server sent it a SYN-ACK (every copy), when the server acknowledged the
    request, when it was reset, and when accept() returned it (all in s since the first packet)."""
    d = result.data
    p = d["late_ports"][i]
    df = result.segments()
    mine = df[(df["sport"] == p) | (df["dport"] == p)]
    req = mine[(mine["sport"] == p) & (mine["len"] > 0)]
    end = (int(req["seq"].iloc[0]) + int(req["len"].iloc[0])) if len(req) else None
    acks = mine[(mine["dport"] == p) & (mine["ack"] == end) & ~mine["flags"].str.contains("SYN|RST")]
    rst = mine[(mine["dport"] == p) & mine["flags"].str.contains("RST")]
    acc = [a["t"] for a in d["accepted"] if a["peer_port"] == p]
    return {"request sent at": [round(float(t), 3) for t in req["t"]],
            "SYN-ACK sent at": [round(float(t), 3) for t in mine[mine["flags"] == "SYN+ACK"]["t"]],
            "request acknowledged at": round(float(acks["t"].iloc[0]), 3) if len(acks) else None,
            "reset at": round(float(rst["t"].iloc[0]), 3) if len(rst) else None,
            "accepted at": acc[0] if acc else None,
            "segments": mine}


def retry_prediction(result: Result, n: int | None = None, quiet: bool = True) -> rules.Prediction:
    """The SYN retry gaps the kernel rule gives on the machine *result* ran on (the
    namespace's snapshot), as a band the capture's gaps are checked against."""
    return rules.syn_retry_band(result.machine_snapshot(), n)


def check_retry_gaps(result: Result, *, quiet: bool = True) -> list[list[float]]:
    """Every waiting client's SYN retry gaps against rules.syn_retry_schedule on the machine
    the run was made on (prints rule, inputs, prediction, measurement unless *quiet*)."""
    gaps = retry_gaps(result)
    for g in gaps:
        rules.assert_rule(result, rules.syn_retry_band, g, len(g), quiet=quiet,
                          what="gaps between one waiting client's SYNs, from the capture")
    return gaps


def overflow_sources(result: Result) -> dict[str, int]:
    """Where the ListenOverflows came from, read from the capture: SYNs of waiting clients
    that got no answer, and packets of late clients that reached a full queue (after the
    firewall rule was lifted, before the server started accepting)."""
    d = result.data
    df = result.segments()
    attempts = syn_attempts(result)
    dropped = sum(len(attempts.get(p, [])) - 1 for p in d["ordinary_ports"])
    lifted = next((e["t"] for e in d["events"] if e["event"] == "late clients send"), None)
    end = d["t_accept"] if d["t_accept"] is not None else float("inf")
    before = [e["queue"] for e in d["events"] if e["event"].startswith("client ")]
    full = bool(before) and before[-1] >= rules.sk_acceptq_is_full(result.machine_snapshot(), d["backlog"]).value
    late = 0
    if full and lifted is not None:
        late = int((df["sport"].isin(d["late_ports"]) & (df["t"] >= lifted - 0.05) & (df["t"] < end)).sum())
    # waiting clients whose retried SYNs landed together: all were answered while the queue had
    # room, and the ACKs that came after it filled overflowed (reset with abort_on_overflow=1,
    # else ignored and the SYN-ACK resent)
    # (every handshake-completing ACK a waiting client sent, less the connections the server
    # actually completed: accepted, or still queued at the end)
    ords = d["ordinary_ports"]
    completing = df[df["sport"].isin(ords) & (df["flags"] == "ACK") & (df["len"] == 0)]
    completing = completing[completing["sport"].isin(ords[min(len(ords), d["backlog"] + 1):])]
    listen_end = [r for r in d["ss_end"] if r["state"] == "LISTEN"]
    queued_end = int(listen_end[0]["recv_q"]) if listen_end else 0
    accepted = sum(1 for a in d["accepted"] if a["peer_port"] in ords[d["backlog"] + 1:])
    first = [a for a in d["accepted"] if a["peer_port"] in ords[:d["backlog"] + 1]]
    queued_late = max(0, queued_end - (d["backlog"] + 1 - len(first)))
    acks = max(0, int(completing.drop_duplicates(["sport", "t"]).shape[0]) - accepted - queued_late)
    return {"dropped SYNs": dropped, "late clients' packets": late, "waiting clients' ACKs": acks,
            "total": dropped + late + acks}


def synack_retransmissions(result: Result) -> dict[int, list[float]]:
    """{late client port: times of every SYN-ACK the server sent it}."""
    df = result.segments()
    sa = df[(df["flags"] == "SYN+ACK") & df["dport"].isin(result.data["late_ports"])]
    return {int(p): list(g["t"]) for p, g in sa.groupby("dport")}


def check_accept_queue(result: Result, *, quiet: bool = True) -> None:
    """The 01_03 claims on one run (live or replayed), each against the kernel rule evaluated
    on the machine (namespace) the run was made on."""
    d = result.data
    n, k = d["backlog"], d["clients"]
    m = result.machine_snapshot()
    depth = [s[1] for s in d["samples"]]
    listen = [r for r in d["ss_full"] if r["state"] == "LISTEN"][0]
    cap = rules.sk_acceptq_is_full(m, n)
    if k + len(d["late_ports"]) >= cap.value:
        rules.assert_rule(result, rules.sk_acceptq_is_full, max(depth), n, quiet=quiet,
                          what="the longest accept queue sampled (TCP_INFO of the listener)")
    else:
        assert max(depth) == k + len(d["late_ports"]) < cap.value, "with room to spare, every client is queued"
    stored = cap.value - 1     # min(backlog, somaxconn): what listen() stored, ss's Send-Q
    assert listen["send_q"] == stored, f"ss Send-Q of the listener must be min(backlog, somaxconn) = {stored}, " \
                                       f"got {listen['send_q']}"
    immediate = d["immediate"]
    want_ok = min(k, cap.value)
    assert immediate.count("ESTABLISHED") == want_ok, \
        f"{want_ok} of {k} clients should connect at once, got {immediate.count('ESTABLISHED')}"
    assert immediate[want_ok:] == ["SYN_SENT"] * (k - want_ok), \
        "the clients beyond backlog + 1 must still be in SYN_SENT (their SYN dropped)"
    assert listen["recv_q"] == want_ok, f"ss Recv-Q should be {want_ok} with the queue full"
    assert all(s == "ESTABLISHED" for s in d["late_state_held"]), \
        "a late client is ESTABLISHED as soon as it has the SYN-ACK, whatever the server does"
    if d["late_ports"] and len(d["samples"][0]) > 2:
        held = [s[2] for s in d["samples"] if s[0] <= next(e["t"] for e in d["events"]
                                                            if e["event"] == "late clients send")]
        assert max(held) == len(d["late_ports"]), \
            f"while their ACK is held, the late clients wait half-open in SYN-RECV ({max(held)} sampled)"
    c = d["counters"]
    dropped_syns = sum(len(t) for p, t in syn_attempts(result).items() if p in d["ordinary_ports"]) - k
    overflow_expected = k >= cap.value
    if k > cap.value:
        assert dropped_syns >= k - cap.value, "every waiting client retried its SYN at least once"
        check_retry_gaps(result, quiet=quiet)
    if overflow_expected or k > cap.value:
        assert c.get("TcpExtListenOverflows", 0) >= dropped_syns, "each dropped SYN counts as a ListenOverflow"
        assert c.get("TcpExtListenDrops", 0) >= c.get("TcpExtListenOverflows", 0)
    df = result.segments()
    for i, p in enumerate(d["late_ports"]):
        fate = d["late_fate"][i]
        rst = df[(df["dport"] == p) & df["flags"].str.contains("RST")]
        data = df[(df["sport"] == p) & (df["len"] > 0)]
        if not overflow_expected:
            assert fate == "delivered" and rst.empty, "with room in the queue a late client gets in normally"
            continue
        if d["abort_on_overflow"] == 1:
            assert fate == "reset" and d["late_errno"][i] == "ECONNRESET", \
                "abort_on_overflow=1: the late client's request is answered with RST (ECONNRESET)"
            assert len(rst) == 1 and float(rst["t"].iloc[0]) - float(data["t"].iloc[0]) < 0.05, \
                "the RST follows the request immediately"
        else:
            assert rst.empty, "abort_on_overflow=0: the server never resets the late client"
            assert len(data) >= 3, "the late client retransmits its request while the server ignores it"
            synacks = synack_retransmissions(result).get(p, [])
            assert len(synacks) >= 2, "the server resends its SYN-ACK to a late client whose ACK it dropped"
            rules.assert_rule(result, rules.synack_retry_band, [b - a for a, b in zip(synacks, synacks[1:])],
                              len(synacks) - 1, quiet=quiet, what="gaps between the SYN-ACKs to one late client")
            assert fate == "delivered", "once the server accepts, the retransmitted request lands"
    if d["late_ports"] and overflow_expected and d["abort_on_overflow"] == 0:
        assert c.get("TcpExtTCPLossProbes", 0) >= len(d["late_ports"]), \
            "each late client's first resend of its request is a tail-loss probe (TcpExtTCPLossProbes, " \
            f"the namespace's counter): {c.get('TcpExtTCPLossProbes', 0)}"
    if k > cap.value:
        assert d["t_accept"] is not None, "the server started accepting while clients were waiting"
        if d["abort_on_overflow"] == 0:
            assert all(s == "ESTABLISHED" for s in d["final_state"]), \
                "after the server starts accepting, every waiting client gets in with a later SYN retry"
        else:
            # retried SYNs that land together (the timer wheel batches them) are all answered while
            # the queue has room; the ACKs that then overflow it are reset, like the late clients'
            reset = [s for s in d["final_state"] if s != "ESTABLISHED"]
            assert set(reset) <= {"CLOSE", "CLOSED"}, f"a waiting client is either in or reset: {d['final_state']}"
            assert c.get("TcpOutRsts", 0) >= len(d["late_ports"]) + len(reset), \
                "each waiting client that was not let in got a RST (abort_on_overflow = 1)"


accept_queue.invariant = check_accept_queue


def render(result: Result) -> list:
    """What the 01_03 panel shows: banner, the clients' fates, the queue-depth plot, a ladder."""
    from .. import plots

    d = result.data
    table = fates(result)
    attempts = syn_attempts(result)
    retries = [t for p, ts in attempts.items() for t in ts[1:]]
    synacks = [t for ts in synack_retransmissions(result).values() for t in ts[1:]]
    events = {}
    if retries:
        events["SYN retried"] = retries
    if synacks:
        events["SYN-ACK resent"] = synacks
    if d["t_accept"] is not None:
        events["server starts accepting"] = [d["t_accept"]]
    times = [s[0] for s in d["samples"]]
    limit = rules.sk_acceptq_is_full(result.machine_snapshot(), d["backlog"]).value
    fig = plots.queue_depth(times, [s[1] for s in d["samples"]], backlog=limit - 1, events=events,
                            ylabel="connections",
                            title=f"accept queue and SYN queue: backlog {d['backlog']}, {d['clients']} clients, "
                                  f"abort_on_overflow={d['abort_on_overflow']}")
    if len(d["samples"][0]) > 2:
        ax = fig.axes[0]
        ax.lines[0].set_label("accept queue (completed, waiting for accept())")
        ax.step(times, [s[2] for s in d["samples"]], where="post", color=plots.PALETTE[1], ls="--", lw=2,
                label="SYN queue (half-open, SYN-RECV)", zorder=4)
    fig.axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.set_size_inches(11.0, 4.5)
    fig.tight_layout()
    c = d["counters"]
    note = (f"ListenOverflows {c.get('TcpExtListenOverflows', 0)}, ListenDrops {c.get('TcpExtListenDrops', 0)}, "
            f"SYN retransmissions {c.get('TcpExtTCPSynRetrans', 0)}, resets sent "
            f"{c.get('TcpOutRsts', 0)}")
    return [result, table, note, fig]


# ======================================================================================
# listen(0) and the somaxconn clamp
# ======================================================================================
#: (somaxconn set in the namespace, or None for the namespace's default; backlog passed to listen())
LIMIT_CASES = ((None, 0), (4, 100), (4, 4))
LIMIT_EXTRA = 3          # clients beyond what the rule predicts, to show the queue stops


def _fill(ns, port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        c = ns.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        out.append(c)
        time.sleep(0.003)
    return out


def check_listen_limits(result: Result, *, quiet: bool = True) -> None:
    """listen(0) holds one connection; a backlog above somaxconn is lowered to it: each case
    against rules.sk_acceptq_is_full on the namespace's own machine."""
    for case in result.data["cases"]:
        m = rules.Machine.from_dict(case["machine"])
        pred = rules.sk_acceptq_is_full(m, case["backlog"])
        pred.check(case["queue"], f"listen({case['backlog']}) with somaxconn {case['somaxconn']}: accept "
                   "queue length (TCP_INFO of the listener)", reference=result.reference(), quiet=quiet)
        pred.check(case["established"], f"clients ESTABLISHED of {case['clients']}",
                   reference=result.reference(), quiet=quiet)
        assert case["send_q"] == pred.value - 1, \
            f"ss Send-Q (what listen() stored) is min(backlog, somaxconn) = {pred.value - 1}, got {case['send_q']}"


@experiment(
    "listen_limits", chapter="01_03", needs={"namespaces"}, seconds=1,
    invariant=check_listen_limits,
    claim="the accept queue holds min(backlog, somaxconn) + 1: listen(0) takes one connection, and "
          "a backlog above net.core.somaxconn is silently lowered to it",
)
def listen_limits(run) -> dict:
    """For each of :data:`LIMIT_CASES`, in a fresh namespace (somaxconn set there when given):
    a listener that never accepts and rule + :data:`LIMIT_EXTRA` clients; returns, per case,
    the namespace's machine (read before any traffic), how many clients got in, the accept
    queue length and what ss shows as Send-Q."""
    from ..kernel import ss, tcp_info
    from ..netns import Namespace

    cases = []
    for i, (somaxconn, backlog) in enumerate(LIMIT_CASES):
        progress.report(i / len(LIMIT_CASES), f"listen({backlog}), somaxconn {somaxconn or 'default'}")
        sysctls = {} if somaxconn is None else {"net.core.somaxconn": somaxconn}
        with Namespace(sysctls=sysctls, name=f"limits{i}") as ns:
            m = rules.Machine.read(ns)
            want = rules.sk_acceptq_is_full(m, backlog).value
            lst = ns.socket()
            lst.bind(("127.0.0.1", 0))
            lst.listen(backlog)
            port = lst.getsockname()[1]
            clients = _fill(ns, port, want + LIMIT_EXTRA)
            time.sleep(0.05)
            info = tcp_info(lst).as_dict()
            row = ss(ns=ns, state="LISTEN", sport=port)
            established = sum(_tcp_state(c) == "ESTABLISHED" for c in clients)
            cases.append({"somaxconn": m.sysctls.get("somaxconn"), "somaxconn_set": somaxconn,
                          "backlog": backlog, "clients": len(clients), "established": established,
                          "queue": int(info["unacked"]), "send_q": int(row["send_q"].iloc[0]),
                          "machine": m.as_dict()})
            for c in clients:
                c.close()
            lst.close()
    progress.report(1.0, "done")
    return {"cases": cases}


def limits_table(result: Result):
    """One row per listen() call: the inputs of the rule, its prediction and what was measured."""
    import pandas as pd

    rows = []
    for c in result.data["cases"]:
        pred = rules.sk_acceptq_is_full(rules.Machine.from_dict(c["machine"]), c["backlog"])
        rows.append({"listen()": f"listen({c['backlog']})",
                     "net.core.somaxconn": f"{c['somaxconn']}" + (" (set)" if c["somaxconn_set"] else " (default)"),
                     "rule: min(backlog, somaxconn) + 1": pred.value, "clients": c["clients"],
                     "ESTABLISHED": c["established"], "accept queue": c["queue"], "ss Send-Q": c["send_q"]})
    return pd.DataFrame(rows)


# ======================================================================================
# where "delay, not failure" ends: tcp_synack_retries
# ======================================================================================
#: When the late client of :func:`synack_expiry` sends its request (s after its SYN): late
#: enough that its retransmission timer (0.2 s, doubling) fires well after the server's
#: drop time, so the reset is not left to a race.
EXPIRY_SEND_AT = 0.5
EXPIRY_AFTER = 2.5       # s the run watches past the predicted drop, at most


def expiry_events(result: Result) -> dict:
    """From the capture: the late client's SYN, the server's SYN-ACKs (s after the SYN), the
    request's copies, and the RST."""
    d = result.data
    df = result.segments()
    p = d["late_port"]
    mine = df[(df["sport"] == p) | (df["dport"] == p)]
    syn = float(mine[(mine["sport"] == p) & (mine["flags"] == "SYN")]["t"].iloc[0])
    sa = [round(float(t) - syn, 3) for t in mine[(mine["dport"] == p) & (mine["flags"] == "SYN+ACK")]["t"]]
    req = [round(float(t) - syn, 3) for t in mine[(mine["sport"] == p) & (mine["len"] > 0)]["t"]]
    rst = mine[(mine["dport"] == p) & mine["flags"].str.contains("RST")]
    return {"syn_at": syn, "synack_at": sa, "request_at": req,
            "rst_at": round(float(rst["t"].iloc[0]) - syn, 3) if len(rst) else None, "segments": mine}


def check_synack_expiry(result: Result, *, quiet: bool = True) -> None:
    """The server gives up on the half-open entry when syn_ack_recalc says, after
    tcp_synack_retries SYN-ACK retransmissions; the client learns it from a RST."""
    d = result.data
    ev = expiry_events(result)
    m = result.machine_snapshot()
    retries = m.sysctls.get("tcp_synack_retries")
    assert d["late_state_held"] == "ESTABLISHED" and d["queue_full"] == rules.sk_acceptq_is_full(m, d["backlog"]).value, \
        "the late client believes it is connected while the accept queue is full"
    sa = ev["synack_at"]
    assert len(sa) == retries + 1, f"the first SYN-ACK and tcp_synack_retries = {retries} copies, got {len(sa)}"
    rules.assert_rule(result, rules.synack_retry_band, [b - a for a, b in zip(sa, sa[1:])], retries, quiet=quiet,
                      what="gaps between the server's SYN-ACKs, from the capture")
    assert d["dropped_at"] is not None, "the half-open entry disappeared within the run"
    rules.assert_rule(result, rules.syn_ack_recalc, d["dropped_at"] - d["syn_sent_at"], retries, quiet=quiet,
                      what="when SYN-RECV emptied (s after the SYN, sampled every 20 ms)")
    assert d["fate"] == "reset" and d["errno"] == "ECONNRESET", \
        f"the client's next retransmission after the drop is answered with RST ({d['fate']}, {d['errno']})"
    assert ev["rst_at"] is not None and ev["rst_at"] >= d["dropped_at"] - d["syn_sent_at"] - 0.05, \
        "the RST comes only after the server dropped the entry"
    before = [t for t in ev["request_at"] if t < ev["rst_at"]]
    assert len(before) >= 3, "before that, the client's request was retransmitted and ignored"
    assert d["counters"].get("TcpExtListenOverflows", 0) >= len(before), \
        "each ignored copy (and each ACK of a resent SYN-ACK) counts as a ListenOverflow"


@experiment(
    "synack_expiry", chapter="01_03", needs={"live_capture", "namespaces"}, seconds=4,
    params=[Param("synack_retries", "tcp_synack_retries", 1, choices=(1,), minimum=1, maximum=2,
                  doc="SYN-ACK retransmissions before the server drops a half-open entry "
                      "(set in the namespace; 1 ends after 3 s, 2 after 7 s)")],
    invariant=check_synack_expiry,
    claim="a late client whose ACK keeps finding the accept queue full is dropped by the server "
          "2^(tcp_synack_retries+1) - 1 s after its SYN, and its next retransmission gets a RST",
)
def synack_expiry(run, synack_retries: int = 1) -> dict:
    """listen(1), never accepting; a late client whose packets after the SYN are held back
    while two ordinary clients fill the accept queue; then the late client sends a request
    (at :data:`EXPIRY_SEND_AT` s) into the full queue. The namespace has
    tcp_synack_retries = *synack_retries* and abort_on_overflow 0. Samples SYN-RECV until the
    client is reset or the predicted drop time + :data:`EXPIRY_AFTER` s has passed."""
    from ..caps import find_tool
    from ..kernel import count_syn_recv, nstat_delta, tcp_info
    from ..netns import Namespace

    if find_tool("iptables") is None:
        raise CourseError("iptables is not installed: the experiment holds back the late client's "
                          "final ACK with a firewall rule inside its namespace.",
                          "install it: `apt-get install iptables`.")
    backlog = 1
    with Namespace(sysctls={"net.ipv4.tcp_synack_retries": synack_retries,
                            "net.ipv4.tcp_abort_on_overflow": 0}, name="expiry") as ns:
        machine = rules.Machine.read(ns)
        deadline_s = rules.syn_ack_recalc(machine).value + EXPIRY_AFTER
        lst = ns.socket()
        lst.bind(("127.0.0.1", 0))
        port = lst.getsockname()[1]
        lst.listen(backlog)
        socks: list[socket.socket] = []
        samples: list[list[float]] = []
        fate, err = None, None
        with run.capture([port], ns=ns), nstat_delta(ns) as counters:
            _iptables(ns, "-A", "INPUT", "-p", "tcp", "--dport", str(port), "--sport", str(LATE_PORT),
                      "!", "--syn", "-j", "DROP")
            late = ns.socket()
            late.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            late.bind(("127.0.0.1", LATE_PORT))
            late.setblocking(False)
            socks.append(late)
            t_syn = time.time()
            late.connect_ex(("127.0.0.1", port))
            time.sleep(0.02)
            held = _tcp_state(late)
            socks += _fill(ns, port, rules.sk_acceptq_is_full(machine, backlog).value)
            time.sleep(0.02)
            full = int(tcp_info(lst).as_dict()["unacked"])
            _iptables(ns, "-F", "INPUT")
            time.sleep(max(0.0, t_syn + EXPIRY_SEND_AT - time.time()))
            late.send(REQUEST)
            dropped = None
            for _ in range(int(deadline_s / SAMPLE_EVERY) + 10):      # bounded
                now = time.time()
                n = count_syn_recv(ns.read_proc("net/tcp"), port)
                samples.append([round(now - t_syn, 3), n])
                if dropped is None and n == 0:
                    dropped = now
                try:
                    late.recv(1)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    fate, err = "reset", errno.errorcode.get(exc.errno, str(exc.errno))
                    break
                if now - t_syn > deadline_s:
                    break
                progress.report(min(0.99, (now - t_syn) / deadline_s), "waiting for the server to give up")
                time.sleep(SAMPLE_EVERY)
            time.sleep(0.02)
        for s in socks:
            s.close()
        lst.close()
    progress.report(1.0, "done")
    from ..dissect import segments
    captured = segments(run.pcap)
    t0 = float(captured["time"].iloc[0])
    return {"port": port, "backlog": backlog, "late_port": LATE_PORT, "synack_retries": synack_retries,
            "late_state_held": held, "queue_full": full, "send_at": EXPIRY_SEND_AT,
            "syn_sent_at": round(t_syn - t0, 4),
            "dropped_at": None if dropped is None else round(dropped - t0, 4),
            "samples": [[round(t + t_syn - t0, 4), n] for t, n in samples],
            "fate": fate, "errno": err,
            "counters": {k: v for k, v in counters.delta.items() if v and k.startswith(("TcpExt", "Tcp"))},
            "machine": machine.as_dict()}


# ======================================================================================
# analyses for the notebook: small dataclasses with check() and sentence()
# ======================================================================================
from dataclasses import dataclass, field as _field   # noqa: E402


@dataclass
class QueueFill:
    """Section 1 of 01_03: how many clients got in at once, and what ss says."""

    result: Result
    backlog: int
    somaxconn: int | None
    stored: int                 # ss Send-Q of the LISTEN row: what listen() stored
    waiting: int                # ss Recv-Q: connections waiting for accept()
    at_once: int
    clients: int
    syncookies: int | None

    @classmethod
    def of(cls, result: Result) -> "QueueFill":
        d = result.data
        listen = [row for row in d["ss_full"] if row["state"] == "LISTEN"][0]
        m = result.machine_snapshot()
        return cls(result, d["backlog"], m.sysctls.get("somaxconn"), listen["send_q"], listen["recv_q"],
                   d["immediate"].count("ESTABLISHED"), d["clients"], m.sysctls.get("tcp_syncookies"))

    def check(self, quiet: bool = False) -> None:
        rules.assert_rule(self.result, rules.sk_acceptq_is_full, self.waiting, self.backlog, quiet=quiet,
                          what="ss Recv-Q of the LISTEN row with the queue full")
        rules.assert_rule(self.result, rules.sk_acceptq_is_full, self.at_once, self.backlog, quiet=True)
        assert self.stored == min(self.backlog, self.somaxconn), "ss Send-Q shows min(backlog, somaxconn)"
        assert self.result.data["immediate"][self.at_once:] == ["SYN_SENT"] * (self.clients - self.at_once), \
            "the others are still in SYN_SENT: their SYN was dropped"

    def sentence(self) -> str:
        return (f"`listen({self.backlog})`: **{self.at_once} of {self.clients}** clients were ESTABLISHED at once; "
                f"`ss` shows Recv-Q {self.waiting} over Send-Q {self.stored}; the other "
                f"{self.clients - self.at_once} are still in SYN_SENT. The namespace's `net.core.somaxconn` is "
                f"{self.somaxconn}, and its `tcp_syncookies` is {self.syncookies}.")


@dataclass
class Retries:
    """Section 2 of 01_03: the waiting clients' SYN retries against the kernel's schedule."""

    result: Result
    gaps: list[list[float]]
    linear: Any
    first_waiting: int          # index of the first client that had to wait
    syns: int                   # SYNs it sent
    synacks: int                # SYN-ACKs the server sent it
    answered_at: float | None   # when the server answered it (s)
    t_accept: float | None

    @classmethod
    def of(cls, result: Result) -> "Retries":
        d = result.data
        m = result.machine_snapshot()
        i = rules.sk_acceptq_is_full(m, d["backlog"]).value
        p = d["ordinary_ports"][i] if i < len(d["ordinary_ports"]) else None
        df = result.segments()
        sa = df[(df["dport"] == p) & (df["flags"] == "SYN+ACK")] if p is not None else df.iloc[:0]
        return cls(result, retry_gaps(result), m.sysctls.get("tcp_syn_linear_timeouts"), i,
                   len(syn_attempts(result).get(p, [])), int(len(sa)), float(sa["t"].iloc[0]) if len(sa) else None,
                   d["t_accept"])

    def check(self, quiet: bool = False) -> None:
        k = self.result.data["clients"]
        assert len(self.gaps) == k - self.first_waiting, "every client beyond backlog + 1 retried"
        check_retry_gaps(self.result, quiet=quiet)
        assert self.answered_at is not None and self.t_accept is not None and self.answered_at > self.t_accept, \
            "the server answered the waiting client only after the application made room"
        assert self.syns >= 2 and self.synacks >= 1, \
            f"{self.syns} SYNs, answered only after the application made room ({self.synacks} SYN-ACKs)"

    def segments(self):
        """The capture's segments of the first waiting client (for a ladder)."""
        p = self.result.data["ordinary_ports"][self.first_waiting]
        df = self.result.segments()
        return df[(df["sport"] == p) | (df["dport"] == p)]

    def wait_of(self, i: int) -> float | None:
        """How long ordinary client *i* (0-based) waited from its first SYN to the SYN-ACK."""
        p = self.result.data["ordinary_ports"][i]
        df = self.result.segments()
        sa = df[(df["dport"] == p) & (df["flags"] == "SYN+ACK")]
        syn = df[(df["sport"] == p) & (df["flags"] == "SYN")]
        return float(sa["t"].iloc[0] - syn["t"].iloc[0]) if len(sa) and len(syn) else None

    def sentence(self) -> str:
        lin = "absent (a kernel before 6.5: 0)" if self.linear is None else self.linear
        want = rules.syn_retry_schedule(self.result.machine_snapshot(), max(map(len, self.gaps), default=1)).value
        return (f"`tcp_syn_linear_timeouts` = {lin} here, so the rule gives gaps of "
                f"{', '.join(f'{g:g}' for g in want)} s; the capture shows "
                f"{'; '.join(', '.join(f'{g:.2f}' for g in c) for c in self.gaps)} s. The server started accepting "
                f"at {self.t_accept:.2f} s; client {self.first_waiting + 1} sent {self.syns} SYNs and was answered "
                f"once, at {self.answered_at:.2f} s, by the first SYN that came after.")


@dataclass
class LateClient:
    """Section 3 of 01_03: the late client whose final ACK found the queue full."""

    result: Result
    requests: list[float]
    synacks: list[float]
    acknowledged_at: float | None
    accepted_at: float | None
    reset_at: float | None
    loss_probes: int
    segments: Any = _field(repr=False, default=None)

    @classmethod
    def of(cls, result: Result, i: int = 0) -> "LateClient":
        tl = late_timeline(result, i)
        return cls(result, tl["request sent at"], tl["SYN-ACK sent at"], tl["request acknowledged at"],
                   tl["accepted at"], tl["reset at"], int(result.data["counters"].get("TcpExtTCPLossProbes", 0)),
                   tl["segments"])

    @property
    def request_gaps(self) -> list[float]:
        return [round(b - a, 3) for a, b in zip(self.requests, self.requests[1:])]

    def check(self, quiet: bool = False) -> None:
        d = self.result.data
        n_late = len(d["late_ports"])
        if d["abort_on_overflow"] == 1:
            assert self.reset_at is not None and len(self.requests) == 1 and self.reset_at - self.requests[0] < 0.05, \
                "abort_on_overflow = 1: the request is answered with RST at once"
            return
        g = self.request_gaps
        assert len(self.requests) >= 4 and all(b > 0.8 * a for a, b in zip(g, g[1:])) and g[-1] > 3 * g[0], \
            "the request is retransmitted at growing intervals (the RTO backs off)"
        assert self.loss_probes >= n_late, \
            f"the first resend of each late request is a tail-loss probe: TcpExtTCPLossProbes {self.loss_probes}"
        rules.assert_rule(self.result, rules.synack_retry_band, [b - a for a, b in zip(self.synacks, self.synacks[1:])],
                          len(self.synacks) - 1, quiet=quiet, what="gaps between the server's SYN-ACKs to the late client")
        assert self.acknowledged_at is not None and self.acknowledged_at > d["t_accept"], \
            "the request got in only after the server made room"
        assert d["t_accept"] < self.accepted_at <= self.acknowledged_at + 0.05

    def sentence(self) -> str:
        d = self.result.data
        if d["abort_on_overflow"] == 1:
            return (f"The request left at {self.requests[0]:.3f} s and the RST came back "
                    f"{(self.reset_at - self.requests[0]) * 1e6:.0f} µs later.")
        return (f"The request left at {self.requests[0]:.2f} s and was sent {len(self.requests)} times, "
                f"{', '.join(f'{g:.2f}' for g in self.request_gaps)} s apart; the namespace counted "
                f"{self.loss_probes} tail-loss probes (`TcpExtTCPLossProbes`, one per late client). The server sent "
                f"its SYN-ACK at {', '.join(f'{t:.2f}' for t in self.synacks)} s. It started accepting at "
                f"{d['t_accept']:.2f} s; `accept()` returned the late client at {self.accepted_at:.2f} s and the "
                f"request was acknowledged at {self.acknowledged_at:.2f} s.")


@dataclass
class Expiry:
    """Section 3b of 01_03: the server gives up on the late client after tcp_synack_retries."""

    result: Result
    retries: int
    synacks: list[float]
    requests: list[float]
    dropped_at: float
    rst_at: float | None
    errno: str | None
    segments: Any = _field(repr=False, default=None)

    @classmethod
    def of(cls, result: Result) -> "Expiry":
        ev = expiry_events(result)
        d = result.data
        return cls(result, int(result.machine_snapshot().sysctls.get("tcp_synack_retries")), ev["synack_at"],
                   ev["request_at"], round(d["dropped_at"] - d["syn_sent_at"], 3), ev["rst_at"], d["errno"],
                   ev["segments"])

    def check(self, quiet: bool = False) -> None:
        check_synack_expiry(self.result, quiet=quiet)

    def sentence(self) -> str:
        before = [t for t in self.requests if self.rst_at is None or t < self.rst_at]
        return (f"With `tcp_synack_retries` = {self.retries}, the server sent its SYN-ACK at "
                f"{', '.join(f'{t:.2f}' for t in self.synacks)} s and dropped the half-open entry at "
                f"**{self.dropped_at:.2f} s**. Until then the client's request went out {len(before)} times "
                f"({', '.join(f'{t:.2f}' for t in before)} s), each copy ignored; the next copy reached a listener "
                f"that no longer knew the connection and got a RST at {self.rst_at:.2f} s: `recv()` failed with "
                f"**{self.errno}**.")
