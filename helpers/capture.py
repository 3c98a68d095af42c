"""Live packet capture with tcpdump, done so that nothing is lost at either end.

The recipe (measured on the reference machine, see COURSE.md "Kernel facts"):

- ``tcpdump -i lo -n -U --immediate-mode -w FILE FILTER``: without ``--immediate-mode``
  a stop within about a second of the traffic loses everything in libpcap's buffer.
- Start is not instant: tcpdump prints ``listening on`` ~20 ms after it starts and any
  packet sent before that line is lost, so :meth:`Capture.start` waits for the line.
- Stop must not cut the tail: a *sentinel* UDP datagram that the filter also matches is
  sent last; once it is in the file every earlier packet is too (packets reach the file
  in capture order), and only then tcpdump gets SIGINT (SIGKILL would truncate).
- Always filter on the experiment's ports: the Jupyter kernel itself talks TCP over lo.
- As root tcpdump drops to user ``tcpdump`` unless ``-Z root``.

The sentinel is UDP, so the TCP DataFrame of :mod:`helpers.dissect` never shows it; it
still counts as a frame number (as in Wireshark).
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import threading
import time
import weakref
from pathlib import Path
from typing import Iterable

from .caps import capabilities, find_tool, scratch_dir
from .errors import CourseError, MissingToolError, PrivilegeError

SENTINEL = b"tcpcourse-capture-sentinel:"
_live: "weakref.WeakSet[Capture]" = weakref.WeakSet()


def _tcpdump() -> str:
    exe = find_tool("tcpdump")
    if not exe:
        raise MissingToolError("tcpdump", "tcpdump", "live capture needs it")
    return exe


def port_filter(ports: Iterable[int], *, proto: str = "tcp") -> str:
    ports = sorted({int(p) for p in ports})
    if not ports:
        raise CourseError("a capture needs at least one port to filter on.",
                          "pass the server's port: Capture(ports=[server.port]).")
    for p in ports:
        if not 0 < p < 65536:
            raise CourseError(f"port {p} is not a TCP port.", "use the port the server bound (1-65535).")
    return " or ".join(f"{proto} port {p}" for p in ports)


class Capture:
    """tcpdump on ``lo`` (or on ``lo`` inside a course namespace) for some ports.

    Use as a context manager; ``capture.path`` is the complete pcap after the block::

        with Capture(ports=[srv.port]) as cap:
            ... traffic ...
        df = dissect.segments(cap.path)

    ``ns`` is a :class:`helpers.netns.Namespace` (tcpdump then runs inside it).
    ``iface='any'`` captures on every interface (LINUX_SLL2 link type).
    """

    def __init__(self, ports: Iterable[int], *, path: str | os.PathLike | None = None,
                 ns=None, iface: str = "lo", extra_filter: str | None = None,
                 snaplen: int = 256, buffer_kib: int | None = 32768,
                 start_timeout: float = 5.0):
        self.ports = sorted({int(p) for p in ports})
        self.ns = ns
        self.iface = iface
        self.path = Path(path) if path else Path(
            scratch_dir(), f"capture-{os.getpid()}-{time.time_ns()}.pcap")
        self.buffer_kib = buffer_kib
        self.snaplen = int(snaplen)
        self.start_timeout = start_timeout
        self._sentinel_sock: socket.socket | None = None
        flt = f"({port_filter(self.ports)})"
        if extra_filter:
            flt = f"({flt} and ({extra_filter}))"
        self._tcp_filter = flt
        self.proc: subprocess.Popen | None = None
        self.stderr_lines: list[str] = []
        self.dropped: int | None = None
        self.stopped_cleanly = False

    # -- start ---------------------------------------------------------------
    def _make_sentinel(self) -> None:
        if self.ns is not None:
            sock = self.ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self._sentinel_sock = sock
        self.sentinel_port = sock.getsockname()[1]

    def start(self) -> "Capture":
        caps = capabilities()
        if not caps.live_capture:
            raise PrivilegeError(
                f"live capture is not possible here: {caps.live_capture.detail}.",
                "run the notebook as root (or give tcpdump CAP_NET_RAW), or use replay mode "
                "(TCPCOURSE_MODE=replay) to read the recorded corpus instead.")
        exe = _tcpdump()
        self._make_sentinel()
        flt = f"{self._tcp_filter} or (udp and dst port {self.sentinel_port} and dst host 127.0.0.1)"
        # Immediate mode uses one ring slot per snaplen-sized frame: with tcpdump's default
        # snaplen (256 KB) a 2 MB ring holds 8 packets and a burst is dropped. Headers are all
        # the course reads (IPv6 + TCP with options < 120 bytes), so 256 bytes by default.
        argv = [exe]
        if os.geteuid() == 0:
            argv += ["-Z", "root"]
        argv += ["-i", self.iface, "-n", "-U", "--immediate-mode", "-s", str(self.snaplen)]
        if self.buffer_kib:
            argv += ["-B", str(int(self.buffer_kib))]
        argv += ["-w", str(self.path)]
        argv.append(flt)
        if self.ns is not None:
            argv = ["ip", "netns", "exec", self.ns.name] + argv
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        _live.add(self)
        ready = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.stderr_lines.append(line.rstrip())
                if "listening on" in line:
                    ready.set()
            ready.set()

        self._pump = threading.Thread(target=pump, daemon=True, name="tcpdump-stderr")
        self._pump.start()
        ready.wait(self.start_timeout)
        if self.proc.poll() is not None or not any("listening on" in l for l in self.stderr_lines):
            self._kill()
            msg = "; ".join(self.stderr_lines[-3:]) or "no output"
            raise CourseError(f"tcpdump did not start listening within {self.start_timeout} s: {msg}",
                              "check that tcpdump runs by hand: "
                              f"`{' '.join(argv[:-1])} '{flt}'`.")
        return self

    # -- stop ----------------------------------------------------------------
    def _sentinel_in_file(self, token: bytes) -> bool:
        """Has the token reached the file? Reads only what was appended since the last look."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._scan_from)
                data = fh.read()
        except FileNotFoundError:
            return False
        if token in data:
            return True
        self._scan_from = max(self._scan_from, self._scan_from + len(data) - len(token))
        return False

    def stop(self, timeout: float = 5.0) -> Path:
        """Send the sentinel, wait until it is in the file, SIGINT tcpdump, return the path."""
        if self.proc is None:
            return self.path
        if self.proc.poll() is None:
            token = SENTINEL + str(time.time_ns()).encode()
            try:
                self._scan_from = max(0, self.path.stat().st_size - len(token))
            except FileNotFoundError:
                self._scan_from = 0
            deadline = time.monotonic() + timeout
            found = False
            resend = 0.0
            while time.monotonic() < deadline:
                now = time.monotonic()
                if now >= resend:  # resend now and then: a datagram can be dropped under load
                    self._sentinel_sock.sendto(token, ("127.0.0.1", self.sentinel_port))
                    resend = now + 0.25
                if self._sentinel_in_file(token):
                    found = True
                    break
                time.sleep(0.003)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
                self.stopped_cleanly = found
            except subprocess.TimeoutExpired:
                self._kill()
            if not found:
                self.stderr_lines.append("sentinel never reached the file: the tail may be missing")
        self._pump.join(timeout=2)
        self._close_sentinel()
        for line in self.stderr_lines:
            if "dropped by kernel" in line:
                try:
                    self.dropped = int(line.split()[0])
                except ValueError:
                    pass
        _live.discard(self)
        self.proc = None
        return self.path

    def _close_sentinel(self):
        if self._sentinel_sock is not None:
            self._sentinel_sock.close()
            self._sentinel_sock = None

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._close_sentinel()
        _live.discard(self)

    def __enter__(self) -> "Capture":
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.stop()
            if self.dropped:
                raise CourseError(
                    f"tcpdump reports {self.dropped} packets dropped by the kernel: the capture "
                    f"{self.path} has holes.",
                    "re-run with fewer packets, or a larger buffer: Capture(..., buffer_kib=131072).")
            if not self.stopped_cleanly:
                raise CourseError(
                    f"the capture {self.path} is incomplete: "
                    + (self.stderr_lines[-1] if self.stderr_lines else "tcpdump stopped early"),
                    "re-run the experiment; if it repeats, the machine is overloaded.")
        else:  # interrupted or failed: stop at once, keep what was written
            if self.proc is not None:
                try:
                    self.stop(timeout=1.0)
                except Exception:
                    self._kill()
            self._kill()
        return False


def stop_all() -> None:
    """Kill every capture this process still runs (atexit, and tests)."""
    for cap in list(_live):
        cap._kill()


atexit.register(stop_all)
