"""Chapter 03_02: RST and the abortive close.

Four experiments, each a kernel rule predicted from this machine's settings and measured:

- :func:`abortive_close` (namespace + capture, one *scenario* per run): who sends RST and
  what data it destroys.

  ``linger0``  SO_LINGER(on, 0) then close(): RST instead of FIN, no TIME_WAIT, the peer's
               recv() returns what already sat in its receive queue and then ECONNRESET;
               what was still in the closer's send queue (SIOCOUTQ) is lost.
  ``unread``   close() with unread data in the receive queue: RST (TcpExtTCPAbortOnClose,
               counted in the experiment's own namespace); the peer loses all it sent.
  ``read_timeout``  the seed's "a read timeout closes with RST": the server reads the request,
               its next recv() times out, it closes: FIN, not RST (nothing was unread).
  ``refused``  connect() to a port without a listener: the kernel answers the SYN with RST,
               connect() raises ECONNREFUSED.
  ``write_after_close``  the peer closed (FIN); the first send() succeeds, the peer answers
               the data with RST (TcpExtTCPAbortOnData), the second send() raises EPIPE.

- :func:`sigpipe` (plain loopback, no privileges): the same write-after-close in three child
  processes: Python's default (SIGPIPE ignored: BrokenPipeError), SIGPIPE restored to SIG_DFL
  (the process is killed by the signal), SIG_DFL but send(MSG_NOSIGNAL) (EPIPE, survives).
- :func:`linger_timeout` (plain loopback): SO_LINGER(on, N) makes close() block until the
  FIN is acknowledged or N seconds pass; a reader that never reads (zero window) keeps the FIN
  from being sent, so close() blocks N s; a reader that reads lets it return at once.
- :func:`dead_peer` (namespace + capture + iptables): a peer that vanished (its INPUT packets
  dropped) is detected by keepalive after TCP_KEEPIDLE + TCP_KEEPCNT × TCP_KEEPINTVL, or, with
  data outstanding, by TCP_USER_TIMEOUT; the error is ETIMEDOUT.
"""
from __future__ import annotations

import errno
import fcntl
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass
from typing import Any

from .. import progress
from ..errors import CourseError
from ..params import Param
from .base import Result, experiment

SCENARIOS = ("linger0", "unread", "read_timeout", "refused", "write_after_close")
COUNTERS = ("TcpOutRsts", "TcpEstabResets", "TcpAttemptFails", "TcpActiveOpens", "TcpPassiveOpens",
            "TcpExtTCPAbortOnClose", "TcpExtTCPAbortOnData", "TcpExtTCPAbortOnLinger",
            "TcpExtTCPAbortOnTimeout", "TcpExtTCPKeepAlive", "TcpRetransSegs", "TcpExtTCPTimeouts",
            "TcpExtTCPLossProbes")
REQUEST = 1000            # bytes a client sends in ``unread``, ``read_timeout``, ``write_after_close``
LINGER0_BYTES = 65536     # bytes the closer writes in ``linger0`` (more than the reader's window)
READER_RCVBUF = 4096      # SO_RCVBUF of the reader's listener (the kernel doubles it)
READ_TIMEOUT = 0.2        # s: the server's recv() timeout in ``read_timeout``
STABLE = 0.1              # s: a send queue unchanged this long is settled (> the 40 ms delayed ACK)
WAIT = 2.0                # s: the longest wait for any one kernel event in abortive_close


def _q(sock: socket.socket, op: int) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), op, b"\0" * 4))[0]


def inq(sock: socket.socket) -> int:
    """Bytes in the receive queue not yet read (SIOCINQ)."""
    return _q(sock, termios.FIONREAD)


def outq(sock: socket.socket) -> int:
    """Bytes in the send queue: not yet acknowledged by the peer, sent or not (SIOCOUTQ)."""
    return _q(sock, termios.TIOCOUTQ)


def _ename(exc: BaseException | int | None) -> str | None:
    if exc is None:
        return None
    code = exc if isinstance(exc, int) else getattr(exc, "errno", None)
    if code is None:
        return type(exc).__name__
    return errno.errorcode.get(code, str(code))


def _state(sock: socket.socket) -> str:
    from ..kernel import tcp_info
    try:
        return str(tcp_info(sock).as_dict()["state"])
    except OSError:
        return "CLOSED"


def _wait_state(sock: socket.socket, states: set[str], limit: float = WAIT) -> str:
    """Poll TCP_INFO until the socket is in one of *states* (bounded by *limit* s)."""
    end = time.monotonic() + limit
    st = _state(sock)
    while st not in states and time.monotonic() < end:
        time.sleep(0.002)
        st = _state(sock)
    return st


def _linger(sock: socket.socket, seconds: int) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, int(seconds)))


def _drain(sock: socket.socket, limit: float = WAIT) -> tuple[int, str | None]:
    """recv() until EOF or an error: (bytes read, "EOF" or the errno name)."""
    sock.settimeout(limit)
    got, end = 0, time.monotonic() + limit
    while time.monotonic() < end:
        try:
            b = sock.recv(65536)
        except OSError as exc:   # Python's own timeout has no errno; the kernel's ETIMEDOUT has
            return got, _ename(exc) if exc.errno else "timeout"
        if not b:
            return got, "EOF"
        got += len(b)
    return got, "timeout"


# ===================================================================== rules
# rules (to move into helpers/rules.py)

def tcp_close(unread: int, linger: tuple[int, int] | None = None):
    """What close() sends (tcp_close in net/ipv4/tcp.c), checked in the kernel's order:
    unread data in the receive queue → RST (TcpExtTCPAbortOnClose, RFC 2525 §2.17); else
    SO_LINGER on with 0 s → RST via tcp_disconnect() (TcpExtTCPAbortOnData); else FIN."""
    from ..rules import Prediction
    on, secs = linger or (0, 0)
    if unread > 0:
        value = "RST (TCPAbortOnClose)"
    elif on and secs == 0:
        value = "RST (TCPAbortOnData)"
    else:
        value = "FIN"
    return Prediction("tcp_close()", "unread data → RST; else SO_LINGER(on, 0) → RST; else FIN",
                      {"unread_bytes": int(unread), "SO_LINGER": f"({on}, {secs})" if linger else "off"},
                      value)


def tcp_reset(state: str):
    """The error an incoming RST leaves on a socket (tcp_reset in net/ipv4/tcp_input.c):
    ECONNREFUSED in SYN_SENT, EPIPE in CLOSE_WAIT (the peer had already sent its FIN),
    ECONNRESET otherwise."""
    from ..rules import Prediction
    value = {"SYN_SENT": "ECONNREFUSED", "CLOSE_WAIT": "EPIPE"}.get(state, "ECONNRESET")
    return Prediction("tcp_reset()", "SYN_SENT → ECONNREFUSED, CLOSE_WAIT → EPIPE, else ECONNRESET",
                      {"state when the RST arrives": state}, value)


def tcp_disconnect_loss(sent: int, closer_outq: int):
    """What an abortive close destroys (tcp_disconnect → tcp_write_queue_purge; tcp_reset keeps
    the peer's receive queue): the bytes still in the closer's send queue (SIOCOUTQ). The peer's
    application reads the rest, then gets the error. Value: bytes the peer can read."""
    from ..rules import Prediction
    return Prediction("tcp_disconnect()", "delivered = sent − closer's SIOCOUTQ at close",
                      {"sent": int(sent), "SIOCOUTQ": int(closer_outq)}, int(sent) - int(closer_outq), unit="B")


def sk_stream_wait_close(m, linger_s: int):
    """How long close() blocks with SO_LINGER(on, N) while the FIN cannot be acknowledged
    (tcp_close → sk_stream_wait_close in net/core/stream.c): N s (sk_lingertime = N × HZ
    jiffies), on the timer wheel."""
    from ..rules import timer_band
    return timer_band(m, float(linger_s), rule="sk_stream_wait_close()",
                      formula="close() returns after sk_lingertime = SO_LINGER seconds",
                      inputs={"SO_LINGER_s": int(linger_s)})


def tcp_keepalive_timer(m, idle: int, intvl: int, count: int):
    """When keepalive declares a silent peer dead (tcp_keepalive_timer in
    net/ipv4/tcp_timer.c): the first probe *idle* s after the last segment received, one more
    every *intvl* s, and when *count* probes are out unanswered, RST and ETIMEDOUT:
    idle + count × intvl (:func:`helpers.rules.keepalive_deadline`), each timer re-armed when
    the last fired (a chain on the timer wheel)."""
    from ..rules import keepalive_deadline, timer_band
    base = keepalive_deadline(m, idle, intvl, count)
    return timer_band(m, float(base.value), rule=base.rule, formula=base.formula, inputs=base.inputs,
                      chain=[idle] + [intvl] * count)


def tcp_write_timeout_user(m, user_timeout_ms: int):
    """TCP_USER_TIMEOUT on a connection whose data is not acknowledged (tcp_write_timeout,
    retransmits_timed_out and tcp_clamp_rto_to_user_timeout in net/ipv4/tcp_timer.c): the clock
    starts at ``retrans_stamp``, set by the first retransmission of tcp_retransmit_skb() (an RTO,
    not a tail loss probe, which goes through __tcp_retransmit_skb()); the retransmission timer is
    clamped to fire when TCP_USER_TIMEOUT has passed since then, and the connection is dropped
    with ETIMEDOUT (no RST). Value: s from the first RTO retransmission to the error."""
    from ..rules import timer_band
    return timer_band(m, user_timeout_ms / 1000, rule="tcp_write_timeout()",
                      formula="abort when now − retrans_stamp (first RTO retransmission) ≥ TCP_USER_TIMEOUT",
                      inputs={"TCP_USER_TIMEOUT_ms": int(user_timeout_ms)})


# ===================================================================== abortive_close

@experiment(
    "abortive_close", chapter="03_02", needs={"live_capture", "namespaces"}, seconds=1.0,
    params=[Param("scenario", "scenario", "linger0", choices=SCENARIOS,
                  doc="linger0: SO_LINGER(on, 0); unread: close with unread data; read_timeout: close after a "
                      "recv() timeout, nothing unread; refused: connect to a closed port; write_after_close: "
                      "send twice to a peer that closed")],
    claim="RST comes from SO_LINGER(on, 0), from close() with unread data, from a closed port and from "
          "data sent to a closed socket; each destroys the data it names; a close with nothing unread sends FIN",
)
def abortive_close(run, scenario: str = "linger0") -> dict:
    """One RST scenario inside a fresh namespace (its nstat counters are the run's own),
    captured. Returns bytes sent and delivered, the errors each side saw, the queues at the
    close, the states afterwards (ss) and the counters."""
    from .. import rules
    from ..kernel import nstat_delta, ss
    from ..netns import Namespace

    progress.report(0.0, f"{scenario}: creating a namespace")
    out: dict[str, Any] = {"scenario": scenario}
    with Namespace(name=f"rst-{scenario.replace('_', '')}") as ns:
        out["machine"] = rules.Machine.read(ns).as_dict()
        lst = ns.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READER_RCVBUF)
        lst.bind(("127.0.0.1", 0))
        port = lst.getsockname()[1]
        if scenario == "refused":
            lst.close()         # the port is now closed: nothing listens on it
        else:
            lst.listen(1)
        out["port"] = port
        cli = ns.socket()
        srv = None
        try:
            with run.capture([port], ns=ns, snaplen=128), nstat_delta(ns) as counters:
                cli.settimeout(WAIT)
                if scenario == "refused":
                    try:
                        cli.connect(("127.0.0.1", port))
                        out["connect_error"] = None
                    except OSError as exc:
                        out["connect_error"] = _ename(exc)
                    out["closer"] = None
                else:
                    cli.connect(("127.0.0.1", port))
                    lst.settimeout(WAIT)
                    srv, _ = lst.accept()
                    out["client_port"] = cli.getsockname()[1]
                    _SCENARIO[scenario](cli, srv, out)
                time.sleep(0.05)
                view = ss(port=port, ns=ns)
                view = view[view["state"] != "LISTEN"]
                out["ss_after"] = [{"state": r["state"], "lport": int(r["lport"]), "pport": int(r["pport"])}
                                   for _, r in view.iterrows()]
        finally:
            for s in (cli, srv, lst):
                if s is not None:
                    s.close()
        out["counters"] = {k: counters.get(k, 0) for k in COUNTERS}
    progress.report(1.0, "done")
    return out


def _linger0(cli: socket.socket, srv: socket.socket, out: dict) -> None:
    """The client writes more than the reader's window, then aborts with SO_LINGER(on, 0)."""
    cli.setblocking(False)
    sent = 0
    while sent < LINGER0_BYTES:
        try:
            sent += cli.send(b"x" * (LINGER0_BYTES - sent))
        except BlockingIOError:
            break
    # wait until the reader's window is full and every byte it holds is acknowledged: each
    # byte sent is either in the reader's queue or unacknowledged in the closer's (SIOCINQ +
    # SIOCOUTQ = sent), and the closer's queue has not moved for STABLE s
    prev, end = -1, time.monotonic() + WAIT
    while time.monotonic() < end:
        now = outq(cli)
        if now == prev and now + inq(srv) == sent:
            break
        prev = now
        time.sleep(STABLE)
    out.update(sent=sent, closer_outq=outq(cli), peer_inq=inq(srv), closer_unread=inq(cli),
               linger=[1, 0], closer="client")
    _linger(cli, 0)
    cli.close()
    st = _wait_state(srv, {"CLOSE"})
    out["peer_state_after_rst"] = st
    out["peer_inq_after_rst"] = inq(srv)
    got, err = _drain(srv)
    out.update(delivered=got, peer_error=err)


def _unread(cli: socket.socket, srv: socket.socket, out: dict) -> None:
    """The client sends a request; the server closes without reading it."""
    cli.sendall(b"q" * REQUEST)
    end = time.monotonic() + WAIT
    while inq(srv) < REQUEST and time.monotonic() < end:
        time.sleep(0.002)
    out.update(sent=REQUEST, closer_unread=inq(srv), closer_outq=outq(srv), linger=None, closer="server")
    srv.close()
    out["peer_state_after_rst"] = _wait_state(cli, {"CLOSE"})
    got, err = _drain(cli)
    out.update(delivered=0, peer_read=got, peer_error=err)


def _read_timeout(cli: socket.socket, srv: socket.socket, out: dict) -> None:
    """The server reads the whole request, its next recv() times out, it closes."""
    cli.sendall(b"q" * REQUEST)
    srv.settimeout(WAIT)
    got = 0
    while got < REQUEST:
        b = srv.recv(65536)
        if not b:
            break
        got += len(b)
    srv.settimeout(READ_TIMEOUT)
    t = time.monotonic()
    try:
        srv.recv(65536)
        timed_out = False
    except socket.timeout:
        timed_out = True
    out.update(sent=REQUEST, delivered=got, read_timed_out=timed_out,
               waited_s=round(time.monotonic() - t, 4), closer_unread=inq(srv), closer_outq=outq(srv),
               linger=None, closer="server")
    srv.close()
    out["peer_state_after_close"] = _wait_state(cli, {"CLOSE_WAIT"})
    n, err = _drain(cli)
    out.update(peer_read=n, peer_error=err)
    cli.close()                     # the client closes too: the server's side goes to TIME_WAIT
    time.sleep(0.02)


def _write_after_close(cli: socket.socket, srv: socket.socket, out: dict) -> None:
    """The server closes (nothing unread: FIN); the client then sends twice."""
    out.update(closer_unread=inq(srv), closer_outq=outq(srv), linger=None, closer="server")
    srv.close()
    out["state_before_send"] = _wait_state(cli, {"CLOSE_WAIT"})
    first = cli.send(b"w" * REQUEST)
    out["first_send"] = first
    out["state_after_rst"] = _wait_state(cli, {"CLOSE"})
    try:
        cli.send(b"w" * REQUEST)
        out["second_send_error"] = None
    except OSError as exc:
        out["second_send_error"] = _ename(exc)
    try:
        cli.send(b"w")
        out["third_send_error"] = None
    except OSError as exc:
        out["third_send_error"] = _ename(exc)
    out.update(sent=first, delivered=0)


_SCENARIO = {"linger0": _linger0, "unread": _unread, "read_timeout": _read_timeout,
             "write_after_close": _write_after_close}


# ----------------------------------------------------------------------------- analysis

@dataclass
class AbortView:
    """One :func:`abortive_close` run, read from its capture and its counters."""
    scenario: str
    rsts: list                   # [(t, from "client"/"server", flags)]
    fins: list
    sent: int
    delivered: int | None
    counters: dict
    ss_after: list
    data: dict

    @property
    def close_sent(self) -> str:
        """What the closer's close() sent, as :func:`tcp_close` names it: from the capture
        (the closer's first RST or FIN) and the counter that counted the RST."""
        closer = self.data.get("closer")
        first = sorted([(t, "RST") for t, w, _ in self.rsts if w == closer]
                       + [(t, "FIN") for t, w, _ in self.fins if w == closer])
        if not first:
            return "nothing"
        if first[0][1] == "FIN":
            return "FIN"
        return "RST (TCPAbortOnClose)" if self.counters.get("TcpExtTCPAbortOnClose") else "RST (TCPAbortOnData)"

    def table(self):
        import pandas as pd
        d = self.data
        return pd.DataFrame([{
            "scenario": self.scenario, "RST from": ", ".join(w for _, w, _ in self.rsts) or "none",
            "FIN from": ", ".join(sorted({w for _, w, _ in self.fins})) or "none",
            "bytes sent": self.sent, "bytes the peer's application read": self.delivered,
            "lost": None if self.delivered is None else self.sent - self.delivered,
            "error seen": d.get("peer_error") or d.get("connect_error") or d.get("second_send_error"),
            "TIME_WAIT after": sum(r["state"] == "TIME-WAIT" for r in self.ss_after),
            "TCPAbortOnClose": self.counters.get("TcpExtTCPAbortOnClose", 0),
            "TCPAbortOnData": self.counters.get("TcpExtTCPAbortOnData", 0),
            "OutRsts": self.counters.get("TcpOutRsts", 0)}]).set_index("scenario")

    def check(self, quiet: bool = True) -> None:
        d, c = self.data, self.counters
        s = self.scenario
        who = [w for _, w, _ in self.rsts]
        if s == "refused":
            assert who == ["server"] and not self.fins, f"the closed port answers the SYN with one RST (got {who})"
            tcp_reset("SYN_SENT").check(d["connect_error"], "connect() error", quiet=quiet)
            assert c["TcpOutRsts"] == 1 and c["TcpAttemptFails"] == 1, f"counters: {c}"
            return
        closer = d["closer"]
        action = tcp_close(d["closer_unread"], tuple(d["linger"]) if d.get("linger") else None)
        if s == "write_after_close":
            action.check(self.close_sent, f"what the {closer}'s close() sent", quiet=quiet)
            assert [w for _, w, _ in self.fins] == ["server"], "the server closes with FIN (nothing unread)"
            assert who == ["server"], f"the data that arrives after the close is answered with one RST (got {who})"
            assert d["first_send"] == REQUEST, "the first send() after the peer's FIN succeeds"
            assert d["state_before_send"] == "CLOSE_WAIT", "the client has the FIN: CLOSE_WAIT"
            tcp_reset("CLOSE_WAIT").check(d["second_send_error"], "the second send()", quiet=quiet)
            assert d["third_send_error"] == "EPIPE", "every later send() raises EPIPE"
            assert c["TcpExtTCPAbortOnData"] == 1 and c["TcpOutRsts"] == 1, f"counters: {c}"
            return
        action.check(self.close_sent, f"what the {closer}'s close() sent", quiet=quiet)
        if s == "read_timeout":
            assert d["read_timed_out"] and not who, "the recv() timed out and nobody sent RST"
            assert [w for _, w, _ in self.fins][:1] == ["server"], "the server's close sent FIN first"
            assert d["delivered"] == d["sent"] and d["peer_error"] == "EOF", "nothing lost; the client reads EOF"
            assert c["TcpExtTCPAbortOnClose"] == 0 and c["TcpOutRsts"] == 0, f"counters: {c}"
            assert any(r["state"] == "TIME-WAIT" and r["lport"] == d["port"] for r in self.ss_after), \
                "the server (the active closer) holds TIME_WAIT"
            return
        assert who == [closer], f"one RST, from the {closer} (got {who})"
        assert not self.fins, "an abortive close sends no FIN"
        assert not any(r["state"] == "TIME-WAIT" for r in self.ss_after), "an abortive close leaves no TIME_WAIT"
        assert c["TcpOutRsts"] == 1 and c["TcpEstabResets"] >= 1, f"counters: {c}"
        if s == "unread":
            assert d["closer_unread"] == d["sent"] > 0, "the request sat unread in the server's queue"
            assert c["TcpExtTCPAbortOnClose"] == 1, f"TCPAbortOnClose counts the close (counters {c})"
            tcp_reset("ESTABLISHED").check(d["peer_error"], "the client's recv()", quiet=quiet)
            assert d["delivered"] == 0, "the server's application read nothing: every byte sent is lost"
        if s == "linger0":
            assert c["TcpExtTCPAbortOnData"] == 1 and c["TcpExtTCPAbortOnClose"] == 0, f"counters: {c}"
            assert d["closer_outq"] > 0, "bytes were still in the closer's send queue"
            tcp_reset("ESTABLISHED").check(d["peer_error"], "the reader's recv() after its queue", quiet=quiet)
            tcp_disconnect_loss(d["sent"], d["closer_outq"]).check(d["delivered"], "bytes the reader read",
                                                                   quiet=quiet)
            assert d["delivered"] == d["peer_inq"], "the reader reads exactly what its queue held"
            assert d["peer_inq"] + d["closer_outq"] == d["sent"], \
                "at the close every byte sent sat in one of the two queues (reader's SIOCINQ, closer's SIOCOUTQ)"


def abort_view(result: Result) -> AbortView:
    d = result.data
    port = d["port"]
    rsts, fins = [], []
    if result.pcap is not None:
        df = result.segments()
        for _, r in df.iterrows():
            who = "server" if int(r["sport"]) == port else "client"
            if "RST" in r["flags"]:
                rsts.append((float(r["t"]), who, r["flags"]))
            elif "FIN" in r["flags"]:
                fins.append((float(r["t"]), who, r["flags"]))
    return AbortView(d["scenario"], rsts, fins, d.get("sent", 0), d.get("delivered"), d["counters"],
                     d.get("ss_after", []), d)


abortive_close.invariant = lambda r: abort_view(r).check()


# ===================================================================== sigpipe

_CHILD = r"""
import json, signal, socket, sys, time
mode = sys.argv[1]
if mode != "python":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
flags = socket.MSG_NOSIGNAL if mode == "nosignal" else 0
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(1)
c = socket.create_connection(lst.getsockname(), timeout=5); s, _ = lst.accept()
s.close()
time.sleep(0.05)
first = c.send(b"w" * 100, flags)
time.sleep(0.05)
print(json.dumps({"first": first, "reached": "second send"}), flush=True)
try:
    c.send(b"w" * 100, flags)
    print(json.dumps({"error": None}), flush=True)
except OSError as exc:
    print(json.dumps({"error": exc.__class__.__name__, "errno": exc.errno}), flush=True)
"""


@experiment("sigpipe", chapter="03_02",
            claim="the second send() to a reset peer raises SIGPIPE: the default action kills the process; "
                  "Python ignores it (BrokenPipeError, EPIPE); MSG_NOSIGNAL suppresses it")
def sigpipe(run) -> dict:
    """Write after the peer closed, in three child processes (plain loopback)."""
    import json
    import signal
    out = {}
    for mode in ("python", "sig_dfl", "nosignal"):
        p = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=20)
        lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
        out[mode] = {"returncode": p.returncode, "lines": lines, "stderr": p.stderr[-500:],
                     "signal": signal.Signals(-p.returncode).name if p.returncode < 0 else None}
    return out


def check_sigpipe(result: Result) -> None:
    d = result.data
    py, dfl, nos = d["python"], d["sig_dfl"], d["nosignal"]
    for name, r in d.items():
        assert r["lines"] and r["lines"][0]["first"] == 100, f"{name}: the first send() succeeds ({r})"
    assert py["returncode"] == 0 and py["lines"][-1].get("error") == "BrokenPipeError" \
        and py["lines"][-1].get("errno") == errno.EPIPE, f"Python ignores SIGPIPE: EPIPE as BrokenPipeError ({py})"
    assert dfl["signal"] == "SIGPIPE" and len(dfl["lines"]) == 1, \
        f"with the default action the second send() kills the process with SIGPIPE ({dfl})"
    assert nos["returncode"] == 0 and nos["lines"][-1].get("errno") == errno.EPIPE, \
        f"MSG_NOSIGNAL: EPIPE, no signal ({nos})"


sigpipe.invariant = check_sigpipe


# ===================================================================== linger_timeout

@experiment(
    "linger_timeout", chapter="03_02", seconds=2.5,
    params=[Param("linger_s", "SO_LINGER seconds", 1, choices=(1, 2), minimum=1, maximum=5, unit="s",
                  doc="how long close() may block waiting for the FIN to be acknowledged")],
    claim="with SO_LINGER(on, N) close() blocks until the FIN is acknowledged or N s pass; Linux then "
          "keeps the data and goes on trying (no RST)",
)
def linger_timeout(run, linger_s: int = 1) -> dict:
    """Two writers with SO_LINGER(on, *linger_s*) close() with data queued: one to a reader
    that reads (the FIN is acknowledged at once), one to a reader that never reads (its zero
    window keeps the data and the FIN in the send queue). Plain loopback sockets."""
    from ..kernel import ss
    out: dict[str, Any] = {"linger_s": linger_s}
    for case in ("reader_reads", "zero_window"):
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READER_RCVBUF)
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        port = lst.getsockname()[1]
        w = socket.create_connection(("127.0.0.1", port), timeout=5)
        r, _ = lst.accept()
        reader_thread = None
        got = {"n": 0}
        try:
            w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            payload = 32768
            if case == "reader_reads":
                def read() -> None:
                    got["n"], got["end"] = _drain(r, 5)
                reader_thread = threading.Thread(target=read, daemon=True)
                reader_thread.start()
            w.setblocking(False)
            sent = 0
            end = time.monotonic() + 2
            while sent < payload and time.monotonic() < end:
                try:
                    sent += w.send(b"x" * (payload - sent))
                except BlockingIOError:
                    if case == "zero_window":
                        break
                    time.sleep(0.001)
            time.sleep(0.05)
            w.setblocking(True)
            queued = outq(w)
            _linger(w, linger_s)
            t = time.monotonic()
            w.close()
            blocked = time.monotonic() - t
            time.sleep(0.02)
            view = ss(port=port)
            after = [row["state"] for _, row in view.iterrows() if row["state"] != "LISTEN"
                     and int(row["pport"]) == port]
            if reader_thread is not None:
                reader_thread.join(6)
            out[case] = {"sent": sent, "queued_at_close": queued, "close_blocked_s": round(blocked, 4),
                         "closer_state_after": after, "reader_read": got["n"]}
        finally:
            w.close()
            _linger(r, 0)      # the reader aborts (RST): it frees the orphaned writer and leaves
            r.close()          # no TIME_WAIT on the host
            lst.close()
    return out


def check_linger(result: Result, quiet: bool = True) -> None:
    d = result.data
    m = result.machine_snapshot()
    z, rr = d["zero_window"], d["reader_reads"]
    assert z["queued_at_close"] > 0, "the writer had data in its send queue at close()"
    sk_stream_wait_close(m, d["linger_s"]).check(z["close_blocked_s"], "close() with a zero window", quiet=quiet)
    assert z["closer_state_after"] == ["FIN-WAIT-1"], \
        f"after the linger time the orphan keeps its data and goes on (FIN-WAIT-1, no RST): {z['closer_state_after']}"
    assert rr["close_blocked_s"] < 0.5 * z["close_blocked_s"], \
        f"a reader that reads acknowledges the FIN at once ({rr['close_blocked_s']} s)"
    assert rr["reader_read"] == rr["sent"], "every byte reached the reading peer"


linger_timeout.invariant = check_linger


def linger_table(result: Result):
    """One row per writer of :func:`linger_timeout`: bytes queued at close(), how long close()
    blocked, the rule's band, and the writer's state afterwards."""
    import pandas as pd
    d = result.data
    pred = sk_stream_wait_close(result.machine_snapshot(), d["linger_s"])
    rows = []
    for case in ("reader_reads", "zero_window"):
        c = d[case]
        rows.append({"peer": case.replace("_", " "), "bytes queued at close()": c["queued_at_close"],
                     "close() blocked (s)": c["close_blocked_s"],
                     "rule (zero window)": pred.expected_text() if case == "zero_window" else "until the FIN's ACK",
                     "writer's state after": ", ".join(c["closer_state_after"]) or "gone"})
    return pd.DataFrame(rows).set_index("peer")


def render_linger(result: Result) -> list:
    """What the SO_LINGER panel shows: banner, the table, one sentence."""
    z = result.data["zero_window"]
    return [result, linger_table(result),
            f"With `SO_LINGER(on, {result.data['linger_s']})` and a peer that does not read, `close()` blocked "
            f"{z['close_blocked_s']:.3f} s and returned without an error; the writer's orphan stays in "
            f"{', '.join(z['closer_state_after'])} with its data."]


# ===================================================================== dead_peer

@experiment(
    "dead_peer", chapter="03_02", needs={"live_capture", "namespaces"}, seconds=3.5,
    params=[Param("mechanism", "what detects the dead peer", "keepalive", choices=("keepalive", "user_timeout"),
                  doc="keepalive: an idle connection probed; user_timeout: data not acknowledged"),
            Param("idle", "TCP_KEEPIDLE", 1, choices=(1,), minimum=1, maximum=5, unit="s"),
            Param("intvl", "TCP_KEEPINTVL", 1, choices=(1,), minimum=1, maximum=5, unit="s"),
            Param("count", "TCP_KEEPCNT", 2, choices=(2,), minimum=1, maximum=5),
            Param("user_timeout_ms", "TCP_USER_TIMEOUT", 1500, choices=(1500,), minimum=500, maximum=6000,
                  unit="ms")],
    grid=[{"mechanism": "keepalive"}, {"mechanism": "user_timeout"}],
    claim="a vanished peer: keepalive gives up after TCP_KEEPIDLE + TCP_KEEPCNT × TCP_KEEPINTVL (RST, "
          "ETIMEDOUT); TCP_USER_TIMEOUT ends a connection with unacknowledged data (ETIMEDOUT, no RST)",
)
def dead_peer(run, mechanism: str = "keepalive", idle: int = 1, intvl: int = 1, count: int = 2,
              user_timeout_ms: int = 1500) -> dict:
    """In a namespace, a server vanishes (iptables drops every packet to its port); the client
    either waits idle with keepalive on, or sends data with TCP_USER_TIMEOUT set. Its blocked
    recv() returns the error; the time is measured from the connect (keepalive) or the send."""
    from .. import rules
    from ..caps import find_tool
    from ..kernel import nstat_delta
    from ..netns import Namespace
    if find_tool("iptables") is None:
        raise CourseError("iptables is not installed: the experiment makes the peer vanish with a firewall "
                          "rule inside its namespace.", "install it: `apt-get install iptables`.")
    out: dict[str, Any] = {"mechanism": mechanism, "idle": idle, "intvl": intvl, "count": count,
                           "user_timeout_ms": user_timeout_ms}
    with Namespace(name=f"dead-{mechanism.replace('_', '')}") as ns:
        out["machine"] = rules.Machine.read(ns).as_dict()
        lst = ns.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        port = lst.getsockname()[1]
        cli = ns.socket()
        srv = None
        try:
            with run.capture([port], ns=ns, snaplen=128), nstat_delta(ns) as counters:
                if mechanism == "keepalive":
                    cli.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
                    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, intvl)
                    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
                else:
                    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
                cli.settimeout(WAIT)
                cli.connect(("127.0.0.1", port))
                t_connect = time.monotonic()
                lst.settimeout(WAIT)
                srv, _ = lst.accept()
                # the server vanishes: nothing reaches its port any more
                proc = ns.run(["iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"])
                if proc.returncode != 0:
                    raise CourseError(f"iptables failed inside the namespace: {proc.stderr.strip()}",
                                      "install iptables and run as root.")
                t_send = None
                if mechanism == "user_timeout":
                    cli.send(b"d" * 100)
                    t_send = time.monotonic()
                limit = (idle + count * intvl + 3) if mechanism == "keepalive" else user_timeout_ms / 1000 + 3
                progress.report(0.1, f"waiting for {mechanism} to give up (≤ {limit:.0f} s)")
                cli.settimeout(limit)
                try:
                    cli.recv(1)
                    err = "EOF"
                except OSError as exc:   # the kernel's ETIMEDOUT is a TimeoutError too: errno tells
                    err = _ename(exc) if exc.errno else "no error within the limit"
                t_err = time.monotonic()
                out.update(error=err, since_connect_s=round(t_err - t_connect, 4),
                           since_send_s=None if t_send is None else round(t_err - t_send, 4),
                           t_connect_epoch=time.time() - (time.monotonic() - t_connect))
                time.sleep(0.05)
                ns.run(["iptables", "-w", "-F", "INPUT"])
        finally:
            for s in (cli, srv, lst):
                if s is not None:
                    s.close()
        out["port"] = port
        out["counters"] = {k: counters.get(k, 0) for k in COUNTERS}
    progress.report(1.0, "done")
    return out


@dataclass
class DeadPeerView:
    mechanism: str
    probes: list        # keepalive probe times (s since the capture's first packet)
    retrans: list       # data (re)transmissions
    rst_from_client: int
    synack_t: float
    data: dict

    @property
    def loss_probes(self) -> int:
        """Tail loss probes among the retransmissions (nstat TCPLossProbes): they come first."""
        return int(self.data["counters"].get("TcpExtTCPLossProbes", 0))

    @property
    def first_rto(self) -> float:
        """Capture time of the first retransmission by the RTO timer: after the original send
        and the tail loss probes."""
        return self.retrans[1 + self.loss_probes]

    @property
    def abort_after_first_rto(self) -> float:
        """Seconds from the first RTO retransmission to ETIMEDOUT (the send()'s capture time +
        the measured time from send() to the error)."""
        return round(self.retrans[0] + self.data["since_send_s"] - self.first_rto, 4)

    def check(self, result: Result, quiet: bool = True) -> None:
        d, c = self.data, self.data["counters"]
        m = result.machine_snapshot()
        assert d["error"] == "ETIMEDOUT", f"the dead peer is reported as ETIMEDOUT (got {d['error']})"
        if self.mechanism == "keepalive":
            tcp_keepalive_timer(m, d["idle"], d["intvl"], d["count"]).check(
                d["since_connect_s"], "from connect() to ETIMEDOUT", quiet=quiet)
            assert len(self.probes) == d["count"] == c["TcpExtTCPKeepAlive"], \
                f"TCP_KEEPCNT probes, unanswered ({len(self.probes)} captured, counter {c['TcpExtTCPKeepAlive']})"
            rules_gaps = [self.probes[0] - self.synack_t] + [b - a for a, b in zip(self.probes, self.probes[1:])]
            for k, g in enumerate(rules_gaps):
                from ..rules import timer_band
                want = d["idle"] if k == 0 else d["intvl"]
                timer_band(m, want, rule="tcp_keepalive_timer()", formula="idle, then intvl").check(
                    g, f"gap before probe {k + 1}", quiet=quiet)
            assert self.rst_from_client == 1, "keepalive gives up with an RST (tcp_send_active_reset)"
        else:
            assert len(self.retrans) >= 2 + self.loss_probes, "the data was retransmitted before the abort"
            tcp_write_timeout_user(m, d["user_timeout_ms"]).check(
                self.abort_after_first_rto, "from the first RTO retransmission to ETIMEDOUT", quiet=quiet)
            assert self.rst_from_client == 0, "TCP_USER_TIMEOUT drops the connection without an RST"
            assert c["TcpExtTCPAbortOnTimeout"] == 1, f"TCPAbortOnTimeout counts the abort ({c})"


def dead_peer_view(result: Result) -> DeadPeerView:
    d = result.data
    port = d["port"]
    df = result.segments()
    cli = df[df["dport"] == port]
    synack = df[(df["sport"] == port) & df["flags"].str.contains("SYN")]
    synack_t = float(synack["t"].iloc[0]) if len(synack) else 0.0
    after = cli[cli["t"] > synack_t]
    probes = [float(t) for t, ln, f in zip(after["t"], after["len"], after["flags"])
              if ln == 0 and f == "ACK"][1:]   # the first pure ACK completes the handshake
    retrans = [float(t) for t, ln in zip(after["t"], after["len"]) if ln > 0]
    rst = int(cli["flags"].str.contains("RST").sum())
    return DeadPeerView(d["mechanism"], probes if d["mechanism"] == "keepalive" else [], retrans, rst, synack_t, d)


dead_peer.invariant = lambda r: dead_peer_view(r).check(r)


# ----------------------------------------------------------------------------- pictures

def bytes_table(results: list[Result]):
    """One row per :func:`abortive_close` run: who sent RST or FIN, bytes sent and read,
    the error seen, TIME_WAIT left and the namespace's counters."""
    import pandas as pd
    return pd.concat([abort_view(r).table() for r in results])


def plot_bytes(results: list[Result]):
    """Bytes sent against bytes the receiving application read, per scenario (log scale)."""
    import matplotlib.pyplot as plt
    import numpy as np
    from ..plots import COLORS, use_style
    use_style()
    views = [abort_view(r) for r in results if r.data["scenario"] != "refused"]
    x = np.arange(len(views))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    sent = [max(v.sent, 0) for v in views]
    got = [v.delivered or 0 for v in views]
    ax.bar(x - 0.2, sent, 0.4, label="bytes sent (accepted by send())", color=COLORS["data"])
    ax.bar(x + 0.2, got, 0.4, label="bytes the peer's application read", color=COLORS["acks"])
    for i, (s, g) in enumerate(zip(sent, got)):
        if s > g:
            ax.text(i, max(s, 1) * 1.15, f"lost {s - g:,}", ha="center", fontsize=8.5, color="firebrick")
    ax.set_yscale("symlog", linthresh=100)
    ax.set_xticks(x, [v.scenario for v in views])
    ax.set_ylabel("bytes")
    ax.set_title("What each way of ending a connection delivers")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def plot_ladder(result: Result):
    """The ladder diagram of an :func:`abortive_close` or :func:`dead_peer` run (RST in red),
    client on the left."""
    from ..plots import ladder, use_style
    use_style()
    d = result.data
    what = d.get("scenario") or f"dead peer, {d.get('mechanism')}"
    return ladder(result.segments(), title=f"{what}: the packets", max_segments=30)


def checked(result: Result) -> list:
    """Assert the run's claims (each failure names its claim), then return what a notebook
    cell shows for it: the table row and the ladder."""
    abortive_close.check(result)
    return [abort_view(result).table(), plot_ladder(result)]


def render(result: Result) -> list:
    """What the 03_02 panel shows for one scenario: banner, the table row, the ladder."""
    v = abort_view(result)
    return [result, v.table(), plot_ladder(result)]


def render_dead_peer(result: Result) -> list:
    """What the dead-peer panel shows: banner, the rule against the measurement, the ladder."""
    d = result.data
    v = dead_peer_view(result)
    m = result.machine_snapshot()
    if d["mechanism"] == "keepalive":
        pred = tcp_keepalive_timer(m, d["idle"], d["intvl"], d["count"])
        line = (f"Keepalive (idle {d['idle']} s, interval {d['intvl']} s, {d['count']} probes): the rule says "
                f"{pred.expected_text()}; `{d['error']}` came {d['since_connect_s']:.3f} s after `connect()`, "
                f"after {len(v.probes)} unanswered probes.")
    else:
        pred = tcp_write_timeout_user(m, d["user_timeout_ms"])
        line = (f"TCP_USER_TIMEOUT {d['user_timeout_ms']} ms: the rule says {pred.expected_text()} after the first "
                f"timeout's retransmission; `{d['error']}` came {v.abort_after_first_rto:.3f} s after it "
                f"({d['since_send_s']:.3f} s after `send()`).")
    return [result, line, plot_ladder(result)]

