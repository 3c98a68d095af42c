"""Chapter 01_01: sockets are file descriptors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

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


def check_fds(result: Result) -> None:
    """The 01_01 claims, asserted on one run."""
    d = result.data
    assert d["reused_fd"] == d["freed_fd"], (
        f"after close({d['freed_fd']}) the next socket got fd {d['reused_fd']}: the lowest free fd "
        f"was expected to be reused")
    acc = [a["fd"] for a in d["accepted"]]
    assert len(set(acc)) == len(acc) and d["listener_fd"] not in acc, \
        f"accept() must return new fds, distinct from the listener's {d['listener_fd']}: got {acc}"
    assert d["listener_after"]["fd"] == d["listener_fd"] and d["listener_after"]["accepting"] == 1, \
        "the listener must keep its fd and stay listening after accept()"
    tuples = {tuple(a["local"]) + tuple(a["peer"]) for a in d["accepted"]}
    assert len(tuples) == len(d["accepted"]), "every accepted socket must have its own 4-tuple"
    clients = {tuple(c["peer"]) + tuple(c["local"]) for c in d["clients"]}
    assert tuples == clients, "each accepted 4-tuple must mirror one client's 4-tuple"
    assert all(a["local"][1] == d["port"] for a in d["accepted"]), \
        "accepted sockets share the listener's local port"


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
