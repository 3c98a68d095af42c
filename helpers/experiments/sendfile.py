"""Chapter 02_06: serving a file with read/write, sendfile and splice.

Each method sends the same cached file over a loopback TCP connection to a sink that
reads and discards it. The sender runs in a fresh child process, so its
CPU time (``getrusage``), peak memory (``VmHWM``) and system calls are its own and not
the Jupyter kernel's. Nothing here needs privileges: the experiment always runs live.

System calls are counted twice:

- by the sender itself (every ``os.readv``/``sock.send``/``os.sendfile``/``os.splice`` in
  its loop is exactly one system call), which works everywhere;
- by ``strace -f`` where strace is installed: the sender marks the start and the end of the
  transfer with a ``stat()`` of a path that does not exist, and every system call strace saw
  between the two marks is counted. Without strace the notebook says so and uses the first
  count.

The sender's CPU time is getrusage's user + system time: only the sum is exact (the kernel
splits it between user and system from timer ticks), so only the sum is reported. The sink
is a process of its own too (:func:`sink_main`): it records its CPU time per connection
(getrusage) and the system-wide busy CPU over the same span (/proc/stat: every process on
the machine, in 10 ms ticks).
``compare_buffers`` runs several buffer sizes interleaved in one child, so every size sees
the same machine state.

The large test file lives in a temporary directory that is removed on exit.

Run as ``python -m helpers.experiments.sendfile --child ...``, this module is the sender.
"""
from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from ..params import Param
from .base import Result, experiment

METHODS = ("read/write", "sendfile", "splice")
MARK_BEGIN = "/tcpcourse-sendfile-mark-begin"
MARK_END = "/tcpcourse-sendfile-mark-end"
MB = 1 << 20
CHILD_TIMEOUT = 60.0
_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\w+)\(")


# ----------------------------------------------------------------------------- the sender (child)

def _send(method: str, sock: socket.socket, fd: int, size: int, bufsize: int) -> dict[str, int]:
    """Send *size* bytes of the file *fd* on *sock*; return {system call: times called}."""
    calls: dict[str, int] = {}

    def count(name: str) -> None:
        calls[name] = calls.get(name, 0) + 1

    sent = 0
    if method == "read/write":
        buf = bytearray(bufsize)
        view = memoryview(buf)
        while sent < size:
            n = os.readv(fd, [view[:min(bufsize, size - sent)]])
            count("readv")
            if n == 0:
                raise EOFError("the file is shorter than expected")
            done = 0
            while done < n:                 # sock.send may take part of the buffer
                done += sock.send(view[done:n])
                count("sendto")
            sent += n
    elif method == "sendfile":
        while sent < size:
            n = os.sendfile(sock.fileno(), fd, sent, size - sent)
            count("sendfile")
            if n == 0:
                raise EOFError("the file is shorter than expected")
            sent += n
    elif method == "splice":
        import fcntl
        r, w = os.pipe()
        try:
            try:
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, bufsize)
            except OSError:
                pass                         # above fs.pipe-max-size: keep the default 64 KB
            cap = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
            calls["pipe_capacity"] = cap     # not a call: reported with them, removed by the parent
            while sent < size:
                n = os.splice(fd, w, min(cap, size - sent))
                count("splice")
                if n == 0:
                    raise EOFError("the file is shorter than expected")
                left = n
                while left:
                    left -= os.splice(r, sock.fileno(), left)
                    count("splice")
                sent += n
        finally:
            os.close(r)
            os.close(w)
    else:
        raise ValueError(f"unknown method {method!r}")
    return calls


def _mark(path: str) -> None:
    try:
        os.stat(path)                        # a visible, harmless system call for strace
    except OSError:
        pass


def _slug(method: str) -> str:
    return method.replace("/", "-")


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (``man 5 proc``: clear_refs 5), so each transfer's
    peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_kb() -> int:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: that survives exec and
    would report the parent's (the Jupyter kernel's) size."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def child_main(methods: list[str], path: str, port: int, bufsizes: list[int], repeats: int) -> dict:
    """The sender: *repeats* rounds; each round sends the whole file once per buffer size and
    method (interleaved, so a busy moment of the machine hits every method and size alike),
    each transfer on a new connection. CPU time is ``getrusage``'s user + system: the sum is
    exact, the split between the two is estimated from timer ticks, so only the sum is used."""
    import resource

    size = os.path.getsize(path)
    runs: dict[str, dict[str, list]] = {str(b): {m: [] for m in methods} for b in bufsizes}
    for _ in range(repeats):
        for bufsize in bufsizes:
            for method in methods:
                sock = socket.create_connection(("127.0.0.1", port), timeout=CHILD_TIMEOUT)
                sock.settimeout(None)
                fd = os.open(path, os.O_RDONLY)
                try:
                    _reset_peak_rss()
                    r0 = resource.getrusage(resource.RUSAGE_SELF)
                    t0 = time.perf_counter()
                    _mark(f"{MARK_BEGIN}-{_slug(method)}")
                    calls = _send(method, sock, fd, size, bufsize)
                    sock.shutdown(socket.SHUT_WR)
                    sock.settimeout(CHILD_TIMEOUT)
                    ack = sock.recv(16)                  # the sink answers once it has every byte
                    _mark(f"{MARK_END}-{_slug(method)}")
                    wall = time.perf_counter() - t0
                    r1 = resource.getrusage(resource.RUSAGE_SELF)
                finally:
                    os.close(fd)
                    sock.close()
                pipe = calls.pop("pipe_capacity", None)
                cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
                runs[str(bufsize)][method].append({"wall_s": wall, "cpu_s": cpu, "calls": calls,
                                                   "ack": ack.decode(errors="replace"), "pipe_capacity": pipe,
                                                   "peak_rss_kb": _peak_rss_kb()})
    return {"size": size, "bufsizes": list(bufsizes), "runs": runs}


# ----------------------------------------------------------------------------- strace

def strace_counts(text: str, method: str) -> dict[str, int] | None:
    """System calls strace saw between the sender's begin and end marks for *method*
    (its first transfer); None when the marks are missing."""
    begin, end = f"{MARK_BEGIN}-{_slug(method)}", f"{MARK_END}-{_slug(method)}"
    counts: dict[str, int] = {}
    inside = False
    for line in text.splitlines():
        if begin in line:
            inside = True
            continue
        if end in line:
            return counts if inside else None
        if not inside or "resumed>" in line:
            continue
        m = _LINE.match(line.strip())
        if m:
            counts[m.group(2)] = counts.get(m.group(2), 0) + 1
    return None


# ----------------------------------------------------------------------------- the experiment

def _make_file(path: str, size: int) -> None:
    """A file of *size* bytes (random 1 MB blocks, so nothing compresses), then read once so
    it sits in the page cache: the experiment compares copies, not the disk."""
    block = os.urandom(min(size, MB))
    with open(path, "wb") as fh:
        left = size
        while left:
            fh.write(block[:min(left, len(block))])
            left -= min(left, len(block))
    with open(path, "rb", buffering=0) as fh:
        while fh.read(4 * MB):
            pass


def _cpu_stat() -> tuple[float, float]:
    """System-wide CPU seconds (busy, total) from the first line of /proc/stat (USER_HZ
    ticks, 10 ms each): every process's and every softirq's work on every CPU."""
    with open("/proc/stat") as fh:
        vals = [int(x) for x in fh.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / hz, sum(vals[:8]) / hz


def sink_main(expected: int) -> list[dict]:
    """The receiver, a process of its own: listen on 127.0.0.1, print the port, then serve
    *expected* connections one after another: read each to EOF, count the bytes, answer
    "ok <bytes>". For each connection: bytes, this process's CPU time (getrusage: its copy
    out of the socket and the share of TCP's work charged to it), the time from the first
    byte to the end, and the system-wide busy CPU time over the same span (/proc/stat)."""
    import resource
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    lst.settimeout(CHILD_TIMEOUT)
    print(lst.getsockname()[1], flush=True)
    buf = bytearray(MB)
    out = []
    for _ in range(expected):
        conn, _ = lst.accept()
        with conn:
            conn.settimeout(CHILD_TIMEOUT)
            n, first, r0, s0 = 0, None, None, None
            while True:
                k = conn.recv_into(buf)
                if first is None:
                    first = time.perf_counter()
                    r0 = resource.getrusage(resource.RUSAGE_SELF)
                    s0 = _cpu_stat()
                if not k:
                    break
                n += k
            wall = time.perf_counter() - first
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            s1 = _cpu_stat()
            conn.sendall(f"ok {n}".encode())
        out.append({"bytes": n, "wall_s": wall,
                    "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
                    "system_busy_s": s1[0] - s0[0], "system_total_s": s1[1] - s0[1]})
    lst.close()
    return out


class _Sink:
    """The sink process (:func:`sink_main`) as a context manager: started with the number
    of connections it will serve; ``records()`` waits for its report."""

    def __init__(self, expected: int):
        self.expected = expected
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "helpers.experiments.sendfile", "--sink",
                                      str(self.expected)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.port = int(self.proc.stdout.readline().strip() or 0)
        return self

    def records(self) -> list[dict]:
        # not communicate(): with a timeout it reads the raw pipe and would lose what
        # readline() already buffered; the report is small, so waiting first cannot block
        self.proc.wait(timeout=CHILD_TIMEOUT)
        out, err = self.proc.stdout.read(), self.proc.stderr.read()
        if self.proc.returncode != 0:
            from ..errors import CourseError
            raise CourseError(f"the sink failed: {err.strip()[-400:]}", "re-run; check the machine is not overloaded.")
        return json.loads(out.strip().splitlines()[-1])

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        return False


def _run_child(path: str, port: int, bufsizes: list[int], repeats: int, trace_to: str | None = None) -> dict:
    from ..errors import CourseError
    argv = [sys.executable, "-m", "helpers.experiments.sendfile", "--child", ",".join(METHODS), path,
            str(port), ",".join(str(b) for b in bufsizes), str(repeats)]
    if trace_to:
        argv = ["strace", "-f", "-qq", "-o", trace_to] + argv
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:   # subprocess.run kills the child first
        raise CourseError(f"the sender took longer than {CHILD_TIMEOUT:.0f} s and was stopped.",
                          "try a smaller file; check the machine is not overloaded.") from exc
    if out.returncode != 0:
        raise CourseError(f"the sender failed: {out.stderr.strip()[-400:]}",
                          "run `python -m helpers.experiments.sendfile --child sendfile FILE PORT 65536 1` "
                          "by hand against a listener to see why.")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summarise(runs: dict[str, list], sink: list[dict]) -> list[dict]:
    """One summary per method. *sink* holds the sink's records for these transfers in
    connection order (round by round, METHODS order within a round)."""
    methods = []
    for i, method in enumerate(METHODS):
        rs = runs[method]
        got = sink[i::len(METHODS)]
        wall = statistics.median(r["wall_s"] for r in rs)
        methods.append({
            "method": method, "wall_s": wall, "mb_per_s": None,   # set by the caller (knows the size)
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "cpu_best_s": min(r["cpu_s"] for r in rs),
            "sink_cpu_s": statistics.median(g["cpu_s"] for g in got) if got else None,
            "sink_cpu_all_s": [g["cpu_s"] for g in got],
            "system_busy_s": statistics.median(g["system_busy_s"] for g in got) if got else None,
            "system_busy_all_s": [g["system_busy_s"] for g in got],
            # the share of its receiving time the sink spent on the CPU (1.0 = never waited)
            "sink_busy": statistics.median(g["cpu_s"] / g["wall_s"] for g in got if g["wall_s"] > 0)
            if got else None,
            "calls": rs[0]["calls"], "syscalls": sum(rs[0]["calls"].values()),
            "pipe_capacity": rs[0]["pipe_capacity"],
            "peak_rss_kb": max(r["peak_rss_kb"] for r in rs),
            "runs": rs, "received": [g["bytes"] for g in got],
        })
    return methods


def _measure(size_mb: float, bufsizes: list[int], repeats: int, trace: bool = False) -> dict:
    """Write the file, run the sender child against a sink (once more under strace when
    *trace*); return per-buffer-size method summaries."""
    from .. import progress
    size = int(size_mb * MB)
    nb, nm = len(bufsizes), len(METHODS)
    with tempfile.TemporaryDirectory(prefix="tcpcourse-sendfile-") as tmp:
        path = os.path.join(tmp, "payload.bin")
        progress.report(0.05, f"writing a {size_mb} MB file")
        _make_file(path, size)
        with _Sink(repeats * nb * nm) as sink:
            progress.report(0.2, f"sending it {repeats} times per method")
            child = _run_child(path, sink.port, bufsizes, repeats)
            received = sink.records()
        trace_text, received_traced = None, []
        if trace:
            progress.report(0.7, "once more under strace")
            log = os.path.join(tmp, "strace.txt")
            with _Sink(nm) as sink:
                _run_child(path, sink.port, bufsizes[:1], 1, trace_to=log)
                received_traced = sink.records()
            with open(log) as fh:
                trace_text = fh.read()
    by_buffer = {}
    for j, b in enumerate(bufsizes):
        # connection order: round, then buffer size, then method
        sink_j = [rec for k in range(repeats) for rec in received[(k * nb + j) * nm:(k * nb + j + 1) * nm]]
        methods = _summarise(child["runs"][str(b)], sink_j)
        for i, m in enumerate(methods):
            m["mb_per_s"] = size / MB / m["wall_s"]
            if trace and j == 0:
                m["received"] += [g["bytes"] for g in received_traced[i::nm]]
                m["strace"] = strace_counts(trace_text, m["method"])
            else:
                m["strace"] = None
        by_buffer[str(b)] = methods
    return {"size": size, "by_buffer": by_buffer}


def metric(result, method: str, key: str):
    """One number of one method from a :class:`Result`, its data, or a list of methods."""
    data = getattr(result, "data", result)
    methods = data["methods"] if isinstance(data, dict) else data
    return next(m for m in methods if m["method"] == method)[key]


def check_sendfile(result: Result) -> None:
    """The 02_06 claims on one run."""
    d = result.data
    size = d["size"]
    by = {m["method"]: m for m in d["methods"]}
    assert set(by) == set(METHODS), f"expected the methods {METHODS}, got {sorted(by)}"
    for m in d["methods"]:
        assert m["received"] and all(r == size for r in m["received"]), \
            f"{m['method']}: the sink must receive every byte of every transfer"
    rw, sf, sp = by["read/write"], by["sendfile"], by["splice"]
    chunks = -(-size // d["bufsize"])
    assert rw["syscalls"] >= 2 * chunks, \
        f"read/write needs a read and a send per {d['bufsize']}-byte chunk: ≥ {2 * chunks}, got {rw['syscalls']}"
    assert sf["syscalls"] <= 4, f"sendfile sends a whole cached file in a few calls, got {sf['syscalls']}"
    assert sp["syscalls"] >= 2 * (-(-size // sp["pipe_capacity"])), \
        "splice moves at most one pipe-full per call, twice (file→pipe, pipe→socket)"
    if d["strace"]:
        for m in d["methods"]:
            seen = m["strace"]
            assert seen is not None, f"{m['method']}: strace output lacks the marks"
            for call, n in m["calls"].items():
                assert seen.get(call, 0) == n, \
                    f"{m['method']}: strace saw {seen.get(call, 0)} {call}, the program counted {n}"
    # No CPU claim here: on loopback the receiving side's TCP work runs in softirq context and
    # is charged to whichever process is on the CPU (often the sender), so a single run's CPU
    # times swing by more than the copy sendfile saves at large buffers. The notebook asserts
    # CPU only where the gap is wide (read/write with 4 KB buffers, section 3).


@experiment(
    "sendfile_methods", chapter="02_06",
    params=[
        Param("size_mb", "file size", 16, choices=(1, 16, 64), minimum=1, maximum=256, unit="MB",
              doc="the size of the file each method serves"),
        Param("bufsize", "buffer (read/write, pipe)", 65536, choices=(4096, 65536, 1048576),
              minimum=4096, maximum=4 * MB, unit="bytes",
              doc="read/write's buffer and splice's pipe capacity: bytes moved per system call"),
        Param("trace", "count with strace too", False, choices=(False, True),
              doc="run the sender once more under strace -f to count every system call (slower)"),
    ],
    invariant=check_sendfile,
    claim="sendfile serves a whole cached file in one system call; read/write and splice need two per buffer",
)
def sendfile_methods(run, size_mb: int = 16, bufsize: int = 65536, trace: bool = False,
                     repeats: int = 5) -> dict:
    """Serve one cached file with read/write, sendfile and splice to a loopback sink.

    A fresh child process sends the file *repeats* times per method (interleaved). Wall
    time and throughput are medians over the repeats; the sender's CPU time (user + system,
    the child's own) is the best of the repeats, because other processes' network work can
    be charged to a transfer; the receiver's CPU time is the sink process's, median. With
    *trace* and strace installed, a second child runs under ``strace -f`` and every system
    call between the marks of each transfer is counted.
    """
    from .. import progress
    from ..caps import capabilities

    traced = bool(trace) and capabilities().strace.available
    m = _measure(size_mb, [bufsize], repeats, trace=traced)
    progress.report(1.0, "done")
    return {"size": m["size"], "size_mb": size_mb, "bufsize": bufsize, "repeats": repeats,
            "strace": traced, "strace_asked": bool(trace), "methods": m["by_buffer"][str(bufsize)]}


def compare_buffers(size_mb: int = 16, bufsizes: tuple[int, ...] = (4096, 65536), repeats: int = 5) -> dict:
    """Section 3 of 02_06: every method with each buffer size, interleaved in one child
    (round by round: each size, each method), so both sizes see the same machine state.
    Always live (no privileges). Returns ``{"size", "size_mb", "repeats", "bufsizes",
    "by_buffer": {str(bufsize): [method summaries as in sendfile_methods]}}``."""
    from .. import progress
    from ..errors import ParameterError
    if not 1 <= size_mb <= 256 or not all(4096 <= b <= 4 * MB for b in bufsizes) or not 1 <= repeats <= 20:
        raise ParameterError("size_mb must be 1-256, each buffer 4096-4194304 bytes, repeats 1-20",
                             "use values in those ranges")
    m = _measure(size_mb, list(bufsizes), repeats)
    progress.report(1.0, "done")
    return {"size": m["size"], "size_mb": size_mb, "repeats": repeats, "bufsizes": list(bufsizes),
            "by_buffer": m["by_buffer"]}


def buffer_table(d: dict):
    """One row per (buffer size, method): system calls and the sender's CPU (best of the repeats)."""
    import pandas as pd
    rows = []
    for b in d["bufsizes"]:
        for m in d["by_buffer"][str(b)]:
            rows.append({"buffer": f"{b:,}", "method": m["method"], "system calls": m["syscalls"],
                         f"sender CPU ms (best of {d['repeats']})": round(m["cpu_best_s"] * 1e3, 1),
                         "MB/s (median)": round(m["mb_per_s"])})
    return pd.DataFrame(rows).set_index(["buffer", "method"])


def strace_table(result: Result):
    """strace's count of every system call per method, or a sentence when strace was not used."""
    import pandas as pd
    d = result.data
    if not d["strace"]:
        return ("strace did not run (not installed, or not asked for): the program's own count "
                "above is exact for its loop (each os.readv / sock.send / os.sendfile / os.splice "
                "is one system call).")
    return pd.DataFrame({m["method"]: m["strace"] for m in d["methods"]}).fillna(0).astype(int)


def strace_extra_calls(result: Result) -> set[str]:
    """System calls strace saw during the transfers that the program's loop did not count
    (empty when strace did not run)."""
    extra: set[str] = set()
    for m in result.data["methods"]:
        if m["strace"]:
            extra |= set(m["strace"]) - set(m["calls"])
    return extra


def table(result: Result):
    """One row per method: throughput, CPU (sender and receiver), system calls."""
    import pandas as pd
    d = result.data
    rows = []
    for m in d["methods"]:
        rows.append({"method": m["method"], "MB/s (median)": round(m["mb_per_s"]),
                     "wall ms (median)": round(m["wall_s"] * 1e3, 1),
                     f"sender CPU ms (best of {d['repeats']})": round(m["cpu_best_s"] * 1e3, 1),
                     "receiver CPU ms (median)": round(m["sink_cpu_s"] * 1e3, 1),
                     "system-wide busy CPU ms (median)": round(m["system_busy_s"] * 1e3)
                     if m.get("system_busy_s") is not None else "not measured",
                     "system calls (program)": m["syscalls"],
                     "system calls (strace)": sum(m["strace"].values()) if m["strace"] else "not counted"})
    return pd.DataFrame(rows).set_index("method")


@dataclass
class CpuComparison:
    """read/write against sendfile in one run of :func:`sendfile_methods`: the sender's
    CPU (each transfer), the receiver's (the sink process, each transfer), the system-wide
    busy CPU over each transfer (/proc/stat, 10 ms ticks, every process on the machine) and
    the throughput. A report, not a claim: on loopback the receiver's softirq work is charged
    to the sender, and every one of these went either way between runs (sendfile's sender
    was cheaper in one 16 MB run and dearer in the next on the same machine)."""
    size_mb: float
    sender: dict                 # method -> list of CPU seconds per transfer
    receiver: dict
    system: dict
    mb_per_s: dict               # method -> median
    cc: str = ""                 # the congestion control of the run's machine

    @staticmethod
    def _range(xs) -> str:
        return f"{min(xs) * 1e3:.1f}–{max(xs) * 1e3:.1f} ms"

    def sentence(self) -> str:
        rw, sf = "read/write", "sendfile"
        return (f"{self.size_mb:g} MB: the sender's CPU per transfer ranged {self._range(self.sender[rw])} with "
                f"read/write and {self._range(self.sender[sf])} with sendfile; the receiver's (its own "
                f"process) {self._range(self.receiver[rw])} and {self._range(self.receiver[sf])}; the whole "
                f"machine's busy CPU during a transfer (every process, in 10 ms ticks) "
                f"{self._range(self.system[rw])} and {self._range(self.system[sf])}; throughput (median) "
                f"{self.mb_per_s[rw]:.0f} and {self.mb_per_s[sf]:.0f} MB/s: sendfile was "
                f"{'faster' if self.mb_per_s[sf] > self.mb_per_s[rw] else 'slower'} here"
                f"{f' (congestion control {self.cc})' if self.cc else ''}; its receiver used "
                f"{'more' if statistics.median(self.receiver[sf]) > statistics.median(self.receiver[rw]) else 'less'} "
                f"CPU (medians).")


def cpu_comparison(result: Result) -> CpuComparison:
    d = result.data
    by = {m["method"]: m for m in d["methods"]}
    pick = ("read/write", "sendfile")
    return CpuComparison(size_mb=d["size_mb"],
                         sender={k: [r["cpu_s"] for r in by[k]["runs"]] for k in pick},
                         receiver={k: by[k]["sink_cpu_all_s"] for k in pick},
                         system={k: by[k]["system_busy_all_s"] for k in pick},
                         mb_per_s={k: by[k]["mb_per_s"] for k in pick},
                         cc=str(result.machine_snapshot().tcp_congestion_control or ""))


def grouped_bars(results: list[Result]):
    """Bars per method and file size: throughput (median), sender CPU per GB (best of the
    repeats, as asserted), system calls (log scale)."""
    import matplotlib.pyplot as plt
    import numpy as np
    from .. import plots
    plots.use_style()
    sizes = [r.data["size_mb"] for r in results]
    reps = results[0].data["repeats"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    width = 0.8 / len(METHODS)
    x = np.arange(len(sizes))
    metrics = [("throughput (MB/s, median)", lambda m, r: m["mb_per_s"], False),
               (f"sender CPU per GB (ms, best of {reps})",
                lambda m, r: m["cpu_best_s"] * 1e3 * 1024 / r.data["size_mb"], False),
               ("system calls per transfer", lambda m, r: m["syscalls"], True)]
    for ax, (label, get, log) in zip(axes, metrics):
        for i, method in enumerate(METHODS):
            vals = [get(next(m for m in r.data["methods"] if m["method"] == method), r) for r in results]
            bars = ax.bar(x + (i - 1) * width, vals, width, label=method, color=plots.PALETTE[i], zorder=2)
            ax.bar_label(bars, labels=[f"{v:.0f}" for v in vals], fontsize=7, padding=2)
        ax.set_xticks(x, [f"{s} MB" for s in sizes])
        ax.set_title(label, fontsize=10)
        ax.grid(axis="x", visible=False)
        if log:
            ax.set_yscale("log")
        ax.margins(y=0.15)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(METHODS), frameon=False)
    fig.suptitle(f"serving a cached file over loopback (buffer {results[0].data['bufsize']:,} bytes)",
                 x=0.01, ha="left", fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def render(result: Result) -> list:
    """What the 02_06 panel shows: the table and the bars for this one size."""
    d = result.data
    note = (f"{d['size_mb']} MB file, buffer {d['bufsize']:,} bytes, {d['repeats']} transfers per method; "
            + ("system calls also counted by strace." if d["strace"] else
               "strace is not installed here: system calls are the program's own count."
               if d.get("strace_asked", True) else
               "system calls are the program's own count (tick \"count with strace too\" to check them)."))
    return [result, table(result), note, grouped_bars([result])]


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--sink":
    print(json.dumps(sink_main(int(sys.argv[2]))))

if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    _m, _path, _port, _bufs, _rep = sys.argv[2:7]
    print(json.dumps(child_main(_m.split(","), _path, int(_port), [int(b) for b in _bufs.split(",")], int(_rep))))
