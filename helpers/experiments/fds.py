"""Chapter 01_01: sockets are file descriptors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from ..caps import capabilities
from ..errors import CourseError
from ..params import Param
from .base import Result, experiment

TRACED = "socket,bind,listen,accept,accept4,connect,close,setsockopt"
_SYSCALL = re.compile(r"^(?P<pid>\d+\s+)?(?P<call>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)(?P<err>.*)$")


def parse_strace(text: str, *, only_sockets: bool = True) -> list[dict]:
    """strace output lines -> [{call, args, ret, error}]; close() of non-socket fds dropped."""
    rows, socket_fds = [], set()
    for line in text.splitlines():
        m = _SYSCALL.match(line.strip())
        if not m:
            continue
        call, args, ret = m["call"], m["args"], int(m["ret"])
        if call == "socket" and ret >= 0:
            socket_fds.add(ret)
        if call in ("accept", "accept4") and ret >= 0:
            socket_fds.add(ret)
        if only_sockets and call == "close":
            fd = int(args.split(",")[0]) if args.split(",")[0].isdigit() else -1
            if fd not in socket_fds:
                continue
            socket_fds.discard(fd)
        rows.append({"call": call, "args": args, "ret": ret, "error": m["err"].strip()})
    return rows


def ss_table(text: str):
    """`ss -tanH` lines as a DataFrame with named columns (for LISTEN rows Recv-Q is the
    accept-queue length and Send-Q the backlog)."""
    import pandas as pd

    rows = [line.split()[:5] for line in text.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=["state", "recv_q", "send_q", "local", "peer"]).astype(
        {"recv_q": int, "send_q": int})


@dataclass
class ListenStep:
    """What listen() did to the listener's fd: its real return value, the process's open
    fds just before and just after, and SO_ACCEPTCONN before and after."""

    ret: int
    fds_before: list[int]
    fds_after: list[int]
    accepting_before: int
    accepting_after: int

    def check(self, quiet: bool = False) -> None:
        if not quiet:
            print(f"listen() returned {self.ret}; open fds before {self.fds_before}, after {self.fds_after}; "
                  f"SO_ACCEPTCONN {self.accepting_before} → {self.accepting_after}")
        assert self.ret == 0, f"listen() returned {self.ret}, not 0 (success)"
        assert self.fds_after == self.fds_before, \
            f"listen() changed the open fds {self.fds_before} → {self.fds_after}: it must make no new fd"
        assert (self.accepting_before, self.accepting_after) == (0, 1), \
            "the same fd must turn into a listening socket (SO_ACCEPTCONN 0 → 1)"


def listen_step(result: Result) -> ListenStep:
    ls = result.data["listen"]
    return ListenStep(ls["ret"], ls["before"]["open"], ls["after"]["open"],
                      ls["before"]["accepting"], ls["after"]["accepting"])


@dataclass
class FdReuse:
    """Two fds closed, the lower first; then two new sockets. ``alloc_fd`` predicts each
    new number from the fds open just before that socket() call."""

    freed_order: list[int]
    reused: list[int]
    open_before: list[list[int]]

    @property
    def lowest_free_won(self) -> bool:
        return self.reused[0] == min(self.freed_order) != self.freed_order[-1]

    def check(self, quiet: bool = False) -> None:
        from .. import rules
        for got, before, what in zip(self.reused, self.open_before, ("first", "second")):
            rules.alloc_fd(before).check(got, f"the {what} socket() after close({self.freed_order[0]}), "
                                              f"close({self.freed_order[1]})", quiet=quiet)
        assert self.reused[0] != self.freed_order[-1], \
            f"the next socket got fd {self.reused[0]}, the one freed last: expected the lowest free one"


def fd_reuse(result: Result) -> FdReuse:
    d = result.data
    return FdReuse(d["freed_order"], d["reused"], [d["open_before_reuse"], d["open_before_second"]])


@dataclass
class QueueView:
    """`ss` on the server's port: the LISTEN row (Recv-Q = connections waiting for accept(),
    Send-Q = the accept-queue limit listen() stored) and the ESTAB rows on each end."""

    listen_recv_q: int
    listen_send_q: int
    server_ends: list[tuple[str, str]]
    client_ends: list[tuple[str, str]]
    listen_rows: int

    def check(self, result: Result, *, waiting: int, quiet: bool = False) -> None:
        from .. import rules
        assert self.listen_rows == 1, f"expected one LISTEN row, found {self.listen_rows}"
        if not quiet:
            print(f"LISTEN Recv-Q {self.listen_recv_q} (connections not yet accepted; {waiting} expected), "
                  f"ESTAB rows: {len(self.server_ends)} server ends, {len(self.client_ends)} client ends")
        assert self.listen_recv_q == waiting, \
            f"Recv-Q of the listener is {self.listen_recv_q}, expected {waiting} connections waiting"
        rules.assert_rule(result, rules.sys_listen, self.listen_send_q, result.data["backlog"],
                          what="Send-Q of the LISTEN row", quiet=quiet)
        assert len(self.server_ends) == len(result.data["clients"]), \
            "each connection's server end exists (ESTAB) whether or not accept() was called"
        assert sorted(self.server_ends) == sorted((p, l) for l, p in self.client_ends), \
            "each server end has a client end with local and peer swapped"


def queue_view(result: Result, when: str = "before_accept") -> QueueView:
    """The `ss` view before the accepts (``when="before_accept"``) or after them (``"after"``)."""
    text = result.data["ss_before_accept" if when == "before_accept" else "ss"]
    t = ss_table(text)
    port = f":{result.data['port']}"
    lst = t[t.state == "LISTEN"]
    est = t[t.state == "ESTAB"]
    server = est[est.local.str.endswith(port)]
    client = est[est.peer.str.endswith(port)]
    return QueueView(int(lst.recv_q.iloc[0]) if len(lst) else -1, int(lst.send_q.iloc[0]) if len(lst) else -1,
                     list(zip(server.local, server.peer)), list(zip(client.local, client.peer)), len(lst))


def check_fds(result: Result) -> None:
    """The 01_01 claims, asserted on one run."""
    from .. import rules
    d = result.data
    n = len(d["clients"])
    rules.alloc_fd(d["open_before_socket"]).check(d["listener_fd"], "the listener's fd", quiet=True)
    listen_step(result).check(quiet=True)
    assert all(s["returns"] == 0 for s in d["steps"] if s["call"].startswith(("bind", "connect", "close"))), \
        "bind(), connect() and close() return 0 on success"
    acc = [a["fd"] for a in d["accepted"]]
    assert len(set(acc)) == len(acc) == n and d["listener_fd"] not in acc \
        and not set(acc) & {c["fd"] for c in d["clients"]}, \
        f"accept() must return new fds, distinct from the listener's {d['listener_fd']}: got {acc}"
    assert d["listener_after"]["fd"] == d["listener_fd"] and d["listener_after"]["accepting"] == 1, \
        "the listener must keep its fd and stay listening after accept()"
    tuples = {tuple(a["local"]) + tuple(a["peer"]) for a in d["accepted"]}
    assert len(tuples) == n, "every accepted socket must have its own 4-tuple"
    clients = {tuple(c["peer"]) + tuple(c["local"]) for c in d["clients"]}
    assert tuples == clients, "each accepted 4-tuple must mirror one client's 4-tuple"
    assert all(a["local"][1] == d["port"] for a in d["accepted"]), \
        "accepted sockets share the listener's local port"
    queue_view(result, "before_accept").check(result, waiting=n, quiet=True)
    queue_view(result, "after").check(result, waiting=0, quiet=True)
    fd_reuse(result).check(quiet=True)
    if d.get("traced"):
        strace_agrees(result).check(quiet=True)


@dataclass
class StraceView:
    """The child's socket system calls as strace saw them, set against what the child recorded."""

    listen_ret: list[int]
    accept_fds: list[int]
    accept_on: list[int]
    cloexec: bool
    connect_rets: list[int]
    recorded_accept_fds: list[int]
    listener_fd: int

    def check(self, quiet: bool = False) -> None:
        if not quiet:
            print(f"strace: listen() = {self.listen_ret}, accept4() on fd {sorted(set(self.accept_on))} "
                  f"= {self.accept_fds}, connect() = {self.connect_rets}")
        assert self.listen_ret == [0], f"strace saw listen() return {self.listen_ret}"
        assert self.accept_fds == self.recorded_accept_fds, \
            f"strace's accept4() results {self.accept_fds} differ from the fds Python got {self.recorded_accept_fds}"
        assert set(self.accept_on) == {self.listener_fd}, "accept is called on the listener's fd"
        assert self.cloexec, "Python asks for close-on-exec fds (SOCK_CLOEXEC)"
        assert self.connect_rets and all(r == 0 for r in self.connect_rets), "connect() returns 0, not an fd"


def strace_agrees(result: Result) -> StraceView:
    calls = result.data["strace"]
    accepts = [c for c in calls if c["call"] in ("accept", "accept4")]
    return StraceView([c["ret"] for c in calls if c["call"] == "listen"], [c["ret"] for c in accepts],
                      [int(c["args"].split(",")[0]) for c in accepts],
                      all("SOCK_CLOEXEC" in c["args"] for c in accepts),
                      [c["ret"] for c in calls if c["call"] == "connect"],
                      [a["fd"] for a in result.data["accepted"]], result.data["listener_fd"])


@experiment("fds", chapter="01_01",
            params=[Param("clients", "clients", 3, minimum=1, maximum=20,
                          doc="how many clients connect before the server accepts")],
            invariant=check_fds,
            claim="accept() returns a new fd per connection; the lowest free fd is reused; "
                  "each connection has its own 4-tuple")
def fds(run, clients: int = 3) -> dict:
    """Walk socket/bind/listen/accept in a fresh child process and record every fd.

    Runs live without privileges (nothing is captured). With strace available, the same
    child runs under ``strace -f`` and the socket syscalls are returned too.
    """
    child = [sys.executable, "-m", "helpers.experiments._fd_child", str(clients)]
    data: dict = {}
    strace_ok = capabilities().strace.available
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "strace.txt")
        # no -f: only the experiment's own process, not the `ss` it starts
        argv = (["strace", "-qq", "-e", f"trace={TRACED}", "-o", log] + child) if strace_ok else child
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise CourseError(f"the fd experiment's child failed: {out.stderr.strip()[-400:]}",
                              "run `python -m helpers.experiments._fd_child` by hand to see why.")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        if strace_ok:
            with open(log) as fh:
                data["strace"] = parse_strace(fh.read())
    data["traced"] = strace_ok
    return data
