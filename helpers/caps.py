"""What this machine lets the course do, detected once per process.

``capabilities()`` answers five questions and caches the answer:

- live capture: is tcpdump installed, and can it really capture on ``lo``?
- namespaces: can this process create a named network namespace, run a command in it and
  delete it, as the experiments do (CAP_SYS_ADMIN + CAP_NET_ADMIN, and a mount setup that
  lets ``ip netns`` work: a chroot or container may refuse it despite the capabilities)?
- tshark: is Wireshark's command-line dissector there (pyshark needs it)?
- raw sockets: may this process open a raw IP socket (CAP_NET_RAW; scapy sending)?
- strace: can strace trace a child here?

``table()`` shows them, each with what a missing one means for the learner; 00_00-index
displays it. ``mode()`` reads the run mode from ``TCPCOURSE_MODE`` (auto/live/replay).
"""
from __future__ import annotations

import functools
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from .errors import ParameterError

MODE_VAR = "TCPCOURSE_MODE"
MODES = ("auto", "live", "replay")

# Linux capability bit numbers (linux/capability.h)
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21


def mode() -> str:
    """The run mode: ``auto`` (default: live when possible, else replay), ``live`` or ``replay``."""
    value = os.environ.get(MODE_VAR, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ParameterError(
            f"{MODE_VAR}={value!r} is not a run mode.",
            f"set {MODE_VAR} to one of {', '.join(MODES)} (or unset it for auto).",
        )
    return value


def effective_caps() -> int:
    """This process's effective capability mask, from /proc/self/status."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def has_cap(bit: int) -> bool:
    return bool(effective_caps() >> bit & 1)


@dataclass
class Capability:
    name: str
    available: bool
    detail: str
    if_missing: str

    def __bool__(self) -> bool:  # so `if caps.live_capture:` reads naturally
        return self.available


@dataclass
class Capabilities:
    live_capture: Capability
    namespaces: Capability
    tshark: Capability
    raw_sockets: Capability
    strace: Capability
    detected_at: float = field(default_factory=time.time)

    def items(self):
        return [self.live_capture, self.namespaces, self.tshark, self.raw_sockets, self.strace]

    def missing(self, needs) -> list[Capability]:
        return [getattr(self, n) for n in needs if not getattr(self, n).available]


SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find_tool(name: str) -> str | None:
    """Path of a command-line tool, also in the sbin directories a user's PATH often lacks."""
    return shutil.which(name) or next(
        (f"{d}/{name}" for d in SBIN if os.path.exists(f"{d}/{name}")), None)


def tool_version(argv) -> str:
    """First line a tool prints about its version (tshark's root warning skipped)."""
    lines = version_lines(argv)
    return lines[0] if lines else ""


def version_lines(argv) -> list[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [t.strip() for t in (out.stdout + out.stderr).splitlines()
            if t.strip() and "Running as user" not in t]


def _probe_tcpdump() -> Capability:
    name = "live capture"
    if_missing = ("packets come from the recorded corpus (replay mode); sockets, ss, nstat "
                  "and TCP_INFO still run live")
    tcpdump = find_tool("tcpdump")
    if not tcpdump:
        return Capability(name, False, "tcpdump is not installed (apt-get install tcpdump)", if_missing)
    # The real test: start tcpdump on lo and wait for "listening on".
    argv = [tcpdump, "-i", "lo", "-n", "--immediate-mode", "-c", "1", "-w", os.devnull]
    if os.geteuid() == 0:
        argv[1:1] = ["-Z", "root"]
    argv.append("udp port 9 and host 127.0.0.254")
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        return Capability(name, False, f"tcpdump cannot start: {exc}", if_missing)
    try:
        line = proc.stderr.readline()  # first line: "listening on ..." or an error
    finally:
        proc.kill()
        proc.wait(timeout=5)
        proc.stderr.close()
    if "listening on" in line:
        return Capability(name, True, f"tcpdump can capture on lo ({tcpdump})", if_missing)
    why = line.strip() or "tcpdump exited without a word"
    if "ermitted" in why or "privilege" in why:
        why = f"no CAP_NET_RAW: {why}"
    return Capability(name, False, why, if_missing)


#: Each probe namespace gets its own label: ``tcpcourse-<pid>-capsprobe-<n>``.
_PROBE_COUNTER = itertools.count()
#: Bound on each step of the namespace probe (add, exec, delete), in seconds.
PROBE_TIMEOUT = 10.0


def _probe_namespaces() -> Capability:
    """Do what the experiments do: create a named namespace ``tcpcourse-<pid>-capsprobe-<n>``
    (``ip netns add``: a bind mount under /run/netns), run a command in it (``ip netns
    exec``), open a socket inside (setns, as :meth:`helpers.netns.Namespace.socket`), and
    delete it again, always. Capabilities alone are not enough: in a chroot whose root is
    not a mount point, or in many containers, ``unshare --net`` works but ``ip netns add``
    fails (``mount --make-rslave /run/netns failed: Operation not permitted``)."""
    name = "namespaces"
    if_missing = ("chapters that change sysctls, spoof sources or turn offloads off replay "
                  "their recorded results")
    ip = shutil.which("ip")
    if not ip:
        where = find_tool("ip")
        why = (f"`ip` is in {os.path.dirname(where)}, which is not on PATH (add it to PATH)"
               if where else "`ip` is not installed (apt-get install iproute2)")
        return Capability(name, False, why, if_missing)
    caps = effective_caps()
    missing = [n for n, b in (("CAP_SYS_ADMIN", CAP_SYS_ADMIN), ("CAP_NET_ADMIN", CAP_NET_ADMIN))
               if not caps >> b & 1]
    if missing:
        return Capability(name, False, "missing " + " and ".join(missing), if_missing)
    from .errors import CourseError
    from .netns import Namespace
    ns = Namespace(name=f"capsprobe-{next(_PROBE_COUNTER)}")
    steps = iter((f"creating {ns.name}", f"`ip netns exec {ns.name} true`",
                  f"a socket inside {ns.name}"))
    step = next(steps)
    failure = None
    try:
        ns.open()
        step = next(steps)
        out = ns.run(["true"], timeout=PROBE_TIMEOUT)
        if out.returncode != 0:
            raise CourseError(f"exited with {out.returncode}: {(out.stderr or out.stdout).strip()}")
        step = next(steps)
        ns.socket().close()
    except (CourseError, OSError, subprocess.SubprocessError) as exc:
        failure = f"{step} failed: {_first_words(exc)}"
    finally:
        try:
            ns.close()      # always: kills what runs inside, deletes the namespace
        except (CourseError, OSError, subprocess.SubprocessError) as exc:
            failure = failure or f"`ip netns del {ns.name}` failed: {_first_words(exc)}"
    if failure:
        return Capability(
            name, False,
            f"{failure} (named network namespaces cannot be made here, as in a chroot whose / "
            f"is not a mount point or in a container, although CAP_SYS_ADMIN and CAP_NET_ADMIN "
            f"are present)", if_missing)
    return Capability(name, True, "created, entered and deleted a named network namespace", if_missing)


def _first_words(exc: BaseException, limit: int = 200) -> str:
    """An error's problem (not its fix), on one line, at most *limit* characters."""
    text = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _probe_tshark() -> Capability:
    name = "tshark"
    if_missing = ("Wireshark's expert analysis (retransmission, zero window, ...) and the "
                  "pyshark views are unavailable; the course's own dissector still works")
    exe = shutil.which("tshark")
    if not exe:
        return Capability(name, False, "tshark is not installed (apt-get install tshark)", if_missing)
    version = tool_version([exe, "--version"])
    return Capability(name, bool(version), version or "tshark did not start", if_missing)


def _probe_raw() -> Capability:
    name = "raw sockets"
    if_missing = "scapy can build and parse packets but not send them; crafted-packet demos replay"
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
    except PermissionError:
        return Capability(name, False, "no CAP_NET_RAW: raw sockets refused", if_missing)
    except OSError as exc:
        return Capability(name, False, f"raw socket failed: {exc}", if_missing)
    return Capability(name, True, "raw IP sockets allowed", if_missing)


def _probe_strace() -> Capability:
    name = "strace"
    if_missing = "the syscall traces in 01_01 are skipped (the fd experiments still run)"
    exe = shutil.which("strace")
    if not exe:
        return Capability(name, False, "strace is not installed (apt-get install strace)", if_missing)
    try:
        out = subprocess.run([exe, "-f", "-e", "trace=none", "true"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Capability(name, False, f"strace failed: {exc}", if_missing)
    if out.returncode != 0:
        return Capability(name, False, f"strace cannot trace: {out.stderr.strip()[:120]}", if_missing)
    return Capability(name, True, tool_version([exe, "-V"]) or "strace works", if_missing)


@functools.lru_cache(maxsize=1)
def capabilities() -> Capabilities:
    """Detect once per process; ``capabilities.cache_clear()`` to detect again."""
    return Capabilities(
        live_capture=_probe_tcpdump(),
        namespaces=_probe_namespaces(),
        tshark=_probe_tshark(),
        raw_sockets=_probe_raw(),
        strace=_probe_strace(),
    )


def table():
    """The capability check as a DataFrame: capability, available, detail, if missing."""
    import pandas as pd

    caps = capabilities()
    rows = [
        {"capability": c.name, "available": "yes" if c.available else "NO",
         "detail": c.detail, "what it means if missing": c.if_missing}
        for c in caps.items()
    ]
    return pd.DataFrame(rows)


def summary() -> str:
    """One paragraph for bug reports: mode, capabilities, kernel, user."""
    caps = capabilities()
    lines = [f"mode={mode()} uid={os.geteuid()} kernel={os.uname().release}"]
    lines += [f"{c.name}: {'yes' if c else 'no'} ({c.detail})" for c in caps.items()]
    try:
        from .rules import machine
        lines.append("machine: " + machine().describe())
    except Exception as exc:   # a report must never fail
        lines.append(f"machine: could not be read ({exc})")
    profile = os.environ.get("TCPCOURSE_PROFILE")
    if profile:
        lines.append(f"kernel profile: {profile}")
    return "\n".join(lines)


def scratch_dir() -> str:
    """A private directory for live captures of this user (created on demand)."""
    base = os.environ.get("TCPCOURSE_SCRATCH") or os.path.join(
        tempfile.gettempdir(), f"tcpcourse-{os.geteuid()}")
    os.makedirs(base, mode=0o700, exist_ok=True)
    return base
