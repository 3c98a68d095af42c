"""Private network namespaces for experiments that change the kernel's TCP settings.

A :class:`Namespace` is a fresh network stack: its own ``lo``, its own routes, its own
``/proc/net`` counters and its own per-namespace sysctls. Everything the course does
that would otherwise change the learner's machine (sysctls, offloads, MTU, spoofed
source addresses, port-range exhaustion) happens in one, and ``ip netns del`` takes it
all away again::

    from helpers.netns import Namespace

    with Namespace(mtu=1500, offloads=False,
                   sysctls={"net.ipv4.tcp_syncookies": 0}) as ns:
        srv = ns.socket()                     # a socket that lives inside the namespace
        srv.bind(("127.0.0.1", 0)); srv.listen(16)
        ns.run(["ss", "-tln"])                # any command, run inside
        ns.sysctl("net.ipv4.tcp_syncookies")  # -> 0 here, the host is untouched

What is guaranteed:

- Names are ``tcpcourse-<pid>-<n>`` (:data:`NS_PREFIX`), so a namespace left behind
  by a crashed Jupyter kernel can be recognised and removed (:func:`cleanup_stale`,
  run automatically before every new namespace is created).
- Leaving the ``with`` block, by any route (normal exit, exception, KeyboardInterrupt),
  kills the processes started with :meth:`Namespace.popen` (and anything else still
  running inside), closes the sockets made with :meth:`Namespace.socket`, and deletes
  the namespace. A second Ctrl-C during that teardown is held back until it is done.
- Namespaces still open when the interpreter exits are removed by an ``atexit``
  handler, and on SIGTERM/SIGHUP when those signals have their default action.
- Sysctls are written only inside the namespace, and only when they are
  per-network-namespace (see :func:`check_sysctl_name` and
  :meth:`Namespace.sysctl`): writing a host-wide one from inside would change the
  host, so it is refused before anything is written.

Creating a namespace needs CAP_SYS_ADMIN and CAP_NET_ADMIN; without them a
:class:`~helpers.errors.PrivilegeError` says so and names the fallback (replay mode).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import fnmatch
import itertools
import os
import re
import shlex
import shutil
import signal
import socket as _socket
import subprocess
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Mapping, Sequence

from .caps import effective_caps
from .errors import CourseError, MissingToolError, ParameterError, PrivilegeError

__all__ = [
    "NS_PREFIX",
    "NETNS_RUN_DIR",
    "Namespace",
    "missing_capabilities",
    "have_namespace_privileges",
    "require_namespace_privileges",
    "list_course_namespaces",
    "is_course_namespace",
    "cleanup_stale",
    "cleanup_all",
    "check_sysctl_name",
    "sysctl_is_per_netns",
    "read_sysctl",
    "read_proc",
    "call_in_netns",
    "resolve",
]

NS_PREFIX = "tcpcourse-"
NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21

_NAME_RE = re.compile(r"^" + re.escape(NS_PREFIX) + r"(\d+)-([A-Za-z0-9_.-]+)$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,48}$")

_PRIVILEGE_FIX = (
    "run as root, or use replay mode: the notebook falls back to the recorded corpus."
)

# --------------------------------------------------------------------------------------
# registry of namespaces this process holds
# --------------------------------------------------------------------------------------
_registry: dict[str, "Namespace"] = {}
_registry_lock = threading.RLock()
_counter = itertools.count()
_handlers_installed = False


# --------------------------------------------------------------------------------------
# capabilities and tools
# --------------------------------------------------------------------------------------
def missing_capabilities() -> list[str]:
    """Names of the capabilities a namespace needs that this process lacks (CapEff)."""
    caps = effective_caps()
    missing = []
    if not caps & (1 << CAP_SYS_ADMIN):
        missing.append("CAP_SYS_ADMIN")
    if not caps & (1 << CAP_NET_ADMIN):
        missing.append("CAP_NET_ADMIN")
    return missing


def have_namespace_privileges() -> bool:
    """True when this process may create and enter network namespaces."""
    return not missing_capabilities()


def require_namespace_privileges(what: str = "creating a network namespace") -> None:
    """Raise :class:`PrivilegeError` naming the missing capabilities, if any."""
    missing = missing_capabilities()
    if missing:
        raise PrivilegeError(
            f"{what} needs {' and '.join(missing)}, which this process does not have "
            f"(checked CapEff in /proc/self/status).",
            _PRIVILEGE_FIX,
        )


def _require_tool(tool: str, package: str, why: str = "") -> str:
    path = shutil.which(tool)
    if not path:
        raise MissingToolError(tool, package, why)
    return path


def _ip() -> str:
    return _require_tool("ip", "iproute2", "it creates and deletes network namespaces")


def _cmd(argv: Sequence[str], *, timeout: float = 30, check: bool = True,
         what: str | None = None) -> subprocess.CompletedProcess:
    """Run an internal helper command in its own session (a Ctrl-C aimed at the
    notebook does not kill it half-way), capture its output, raise on failure."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise MissingToolError(argv[0], "iproute2" if argv[0] in ("ip", "ss") else argv[0])
    if check and proc.returncode != 0:
        raise CourseError(
            f"{what or 'command'} failed: `{shlex.join(argv)}` exited with "
            f"{proc.returncode}: {(proc.stderr or proc.stdout).strip()}",
            "check that iproute2 works here (`ip netns list`) and that no other "
            "program holds the namespace.",
        )
    return proc


# --------------------------------------------------------------------------------------
# entering a namespace from a short-lived thread
# --------------------------------------------------------------------------------------
_libc_setns = None


def _setns(fd: int, nstype: int) -> int:
    """libc setns(2) through ctypes (os.setns arrived only in Python 3.12)."""
    global _libc_setns
    if _libc_setns is None:
        libc = ctypes.CDLL(None, use_errno=True)  # the interpreter is linked against libc
        fn = libc.setns
        fn.argtypes = [ctypes.c_int, ctypes.c_int]
        fn.restype = ctypes.c_int
        _libc_setns = fn
    return _libc_setns(fd, nstype)


def _ns_name(ns: "Namespace | str") -> str:
    if isinstance(ns, Namespace):
        return ns.name
    if isinstance(ns, str) and ns and "/" not in ns and ns not in (".", ".."):
        return ns
    raise ParameterError(
        f"{ns!r} is not a network namespace.",
        "pass a helpers.netns.Namespace (or the name of one).",
    )


def call_in_netns(ns: "Namespace | str", fn: Callable[..., Any], *args: Any,
                  **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in a new thread that has entered namespace *ns*.

    The thread opens ``/run/netns/NAME``, calls ``setns(fd, CLONE_NEWNET)``, checks
    that it really is inside (its ``/proc/thread-self/ns/net`` is the namespace's
    inode), runs *fn* and exits; nothing else in the process changes namespace.
    Sockets created by *fn* stay in the namespace for their whole life; files under
    ``/proc/thread-self/net`` and ``/proc/sys/net`` opened by *fn* are the namespace's.
    The return value (or exception) of *fn* is passed back.
    """
    name = _ns_name(ns)
    path = os.path.join(NETNS_RUN_DIR, name)
    result: dict[str, Any] = {}

    def worker() -> None:
        try:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise CourseError(
                    f"the network namespace {name!r} does not exist (no {path}).",
                    "create it with helpers.netns.Namespace() and use it inside its "
                    "`with` block.",
                ) from None
            try:
                if _setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    if err == errno.EPERM:
                        raise PrivilegeError(
                            f"entering the network namespace {name!r} was refused (EPERM): "
                            f"it needs CAP_SYS_ADMIN.", _PRIVILEGE_FIX)
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
                # Never run fn in the wrong namespace: verify before doing anything.
                if os.stat("/proc/thread-self/ns/net").st_ino != os.fstat(fd).st_ino:
                    raise CourseError(
                        f"setns into {name!r} did not take effect; refusing to continue.",
                        "report this: the kernel or libc behaves unexpectedly.",
                    )
            finally:
                os.close(fd)
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed back to the caller
            result["error"] = exc

    t = threading.Thread(target=worker, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


# --------------------------------------------------------------------------------------
# sysctls: which ones are per network namespace
# --------------------------------------------------------------------------------------
# Families whose values live in `struct net`: the kernel registers them once per
# network namespace, so writing them from inside changes only that namespace.
PER_NETNS_SYSCTLS: tuple[str, ...] = (
    "net.ipv4.tcp_*",
    "net.ipv4.ip_*",
    "net.ipv4.ipfrag_*",
    "net.ipv4.icmp_*",
    "net.ipv4.igmp_*",
    "net.ipv4.udp_*",
    "net.ipv4.raw_l3mdev_accept",
    "net.ipv4.fib_*",
    "net.ipv4.fwmark_reflect",
    "net.ipv4.ping_group_range",
    "net.ipv4.conf.*",
    "net.ipv4.neigh.*",
    "net.ipv4.route.min_pmtu",
    "net.ipv4.route.mtu_expires",
    "net.ipv4.route.min_adv_mss",
    "net.ipv6.*",
    "net.core.somaxconn",
    "net.core.xfrm_*",
    "net.core.txrehash",
    # Not net.core.{r,w}mem_{default,max}, optmem_max, tstamp_allow_data: host-wide on
    # Linux 6.1 (hidden inside a namespace), and on 6.18 a read-only copy of the host's
    # value there. A course namespace cannot set them on either kernel.
    "net.unix.*",
    "net.netfilter.*",
    "net.mptcp.*",
)

# Host-wide sysctls inside those families (measured on Linux 6.18: these are not
# visible in a child namespace at all, because the kernel registers them for the
# initial namespace only; on other kernels a host-wide entry may be visible and
# shared, which is why the kernel is asked too, see sysctl_is_per_netns()).
HOST_WIDE_SYSCTLS: tuple[str, ...] = (
    "net.ipv4.tcp_mem",
    "net.ipv4.udp_mem",
    "net.ipv4.tcp_max_orphans",
    "net.ipv4.tcp_low_latency",
    "net.ipv4.tcp_available_ulp",
    "net.ipv4.fib_sync_mem",
    "net.ipv4.ipfrag_secret_interval",
    "net.ipv4.inet_peer_*",
    "net.ipv4.cipso_*",
    "net.ipv6.calipso_*",
    "net.ipv6.ip6frag_secret_interval",
    "net.ipv6.mld_max_msf",
    "net.ipv6.mld_qrv",
    "net.ipv6.route.gc_*",
    "net.ipv4.neigh.default.*",   # the neighbour tables' defaults: initial namespace only
    "net.ipv6.neigh.default.*",
    "net.netfilter.nf_log_all_netns",
    "net.nf_conntrack_max",
)


def _sysctl_parts(name: str) -> list[str]:
    """Split a sysctl name ('net.ipv4.tcp_syncookies' or 'net/ipv4/tcp_syncookies')."""
    if not isinstance(name, str) or not name.strip():
        raise ParameterError(f"{name!r} is not a sysctl name.",
                             "use a name such as 'net.ipv4.tcp_syncookies'.")
    name = name.strip()
    parts = name.strip("/").split("/") if "/" in name else name.split(".")
    for p in parts:
        if not p or p in (".", "..") or "\0" in p or not re.match(r"^[A-Za-z0-9_.:@+-]+$", p):
            raise ParameterError(f"{name!r} is not a valid sysctl name.",
                                 "use a name such as 'net.ipv4.tcp_syncookies'.")
    return parts


def _sysctl_path(name: str) -> str:
    return "/proc/sys/" + "/".join(_sysctl_parts(name))


def _dotted(name: str) -> str:
    return ".".join(_sysctl_parts(name))


def check_sysctl_name(name: str) -> str:
    """Refuse (ParameterError, a ValueError) a sysctl that is not per-network-namespace.

    The static policy, applied before any namespace exists:

    1. only ``net.*`` sysctls can be per network namespace (``kernel.*``, ``vm.*``,
       ``fs.*`` belong to the whole machine);
    2. the name must match :data:`PER_NETNS_SYSCTLS` (families kept in ``struct net``);
    3. and must not match :data:`HOST_WIDE_SYSCTLS` (globals inside those families).

    Before writing, :meth:`Namespace.sysctl` also asks the kernel
    (:func:`sysctl_is_per_netns`). Returns the normalised dotted name.
    """
    parts = _sysctl_parts(name)
    dotted = ".".join(parts)
    fix = ("change only per-namespace net.* sysctls inside a course namespace; a "
           "host-wide setting would change the learner's machine, so the course never "
           "writes it.")
    if parts[0] != "net":
        raise ParameterError(
            f"the sysctl {dotted} is host-wide (only net.* sysctls can belong to a "
            f"network namespace); writing it from a namespace would change the host.", fix)
    for pat in HOST_WIDE_SYSCTLS:
        if fnmatch.fnmatchcase(dotted, pat):
            raise ParameterError(
                f"the sysctl {dotted} is host-wide, not per network namespace (matches "
                f"{pat!r}); writing it from a namespace would change the host.", fix)
    if not any(fnmatch.fnmatchcase(dotted, pat) for pat in PER_NETNS_SYSCTLS):
        raise ParameterError(
            f"the sysctl {dotted} is not on the course's list of per-network-namespace "
            f"sysctls, so the course will not write it.", fix)
    return dotted


def sysctl_is_per_netns(name: str, ns: "Namespace | str") -> tuple[bool, str]:
    """Ask the kernel whether sysctl *name* is private to namespace *ns*.

    ``/proc/sys`` resolves each entry for the network namespace of the thread that
    looks it up. A per-namespace entry is a different file (a different inode) inside
    *ns* than on the host; a host-wide entry is either absent inside (how Linux 6.x
    hides most of them) or the very same inode (shared, so writing it inside would
    change the host). The host's entry is held open with O_PATH while comparing so its
    inode cannot be recycled. Returns ``(per_netns, reason)``.
    """
    path = _sysctl_path(name)
    host_fd = None
    try:
        host_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    try:
        host_ino = os.fstat(host_fd).st_ino if host_fd is not None else None

        def inside() -> int | None:
            try:
                return os.stat(path).st_ino
            except FileNotFoundError:
                return None

        ns_ino = call_in_netns(ns, inside)
    finally:
        if host_fd is not None:
            os.close(host_fd)
    if ns_ino is None and host_ino is None:
        return False, f"there is no sysctl {_dotted(name)} on this kernel"
    if ns_ino is None:
        return False, (f"{_dotted(name)} exists on the host but not inside the namespace: "
                       f"the kernel keeps it host-wide (or it belongs to a device the "
                       f"namespace does not have)")
    if ns_ino == host_ino:
        return False, (f"{_dotted(name)} is the same /proc/sys entry inside the namespace "
                       f"as on the host: the kernel shares it, so it is host-wide")
    return True, f"{_dotted(name)} is a separate entry inside the namespace"


def _parse_value(text: str) -> int | str:
    s = " ".join(text.split())
    try:
        return int(s)
    except ValueError:
        return s


def read_sysctl(name: str, ns: "Namespace | str | None" = None) -> int | str:
    """Read a sysctl of the host (``ns=None``) or of namespace *ns*.

    Returns an int when the value is one integer, otherwise the text with runs of
    whitespace collapsed to one space (``'4096 131072 6291456'``).
    """
    path = _sysctl_path(name)

    def read() -> str:
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            raise ParameterError(
                f"there is no sysctl {_dotted(name)} "
                f"{'inside namespace ' + _ns_name(ns) if ns is not None else 'on this host'}.",
                "check the name with `sysctl -a | grep ...`; host-wide sysctls are not "
                "visible inside a namespace.") from None

    text = read() if ns is None else call_in_netns(ns, read)
    return _parse_value(text)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def read_proc(rel: str, ns: "Namespace | str | None" = None) -> str:
    """Text of ``/proc/net/<...>`` or ``/proc/sys/net/<...>`` of the host or of *ns*.

    *rel* is relative to /proc: ``"net/netstat"``, ``"net/sockstat"``,
    ``"sys/net/ipv4/tcp_syncookies"``. Inside a namespace the file is read by a thread
    that entered it (``/proc/thread-self/net/...``), so no process is started.
    """
    rel = rel.strip("/")
    if ".." in rel.split("/"):
        raise ParameterError(f"{rel!r} is not a /proc path.", "use e.g. 'net/netstat'.")
    if rel.startswith("net/"):
        path = "/proc/thread-self/" + rel
    elif rel.startswith("sys/net/"):
        path = "/proc/" + rel
    else:
        raise ParameterError(
            f"read_proc only reads the network namespace's files, not {rel!r}.",
            "use a path under net/ or sys/net/, e.g. 'net/netstat'.")

    def read() -> str:
        with open(path) as f:
            return f.read()

    return read() if ns is None else call_in_netns(ns, read)


# --------------------------------------------------------------------------------------
# SIGINT deferral: teardown must finish even when the learner presses Ctrl-C again
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _sigint_deferred():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    try:
        old = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except (ValueError, TypeError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if pending:
            if callable(old):
                old(signal.SIGINT, None)
            elif old == signal.SIG_DFL:
                raise KeyboardInterrupt


# --------------------------------------------------------------------------------------
# the namespace
# --------------------------------------------------------------------------------------
class Namespace:
    """A private network namespace, created on ``__enter__`` and deleted on exit.

    Parameters
    ----------
    mtu:
        MTU for the namespace's ``lo`` (68..65536); ``None`` keeps 65536.
    offloads:
        ``False`` runs ``ethtool -K lo tso off gso off gro off`` inside, so a capture
        shows real segment sizes instead of 64 KB GSO super-segments. Features the
        driver cannot change are tolerated and listed in :attr:`offloads_unchanged`.
    sysctls:
        ``{"net.ipv4.tcp_syncookies": 0, ...}`` written inside the namespace only.
        Every name is checked before the namespace is even created
        (:func:`check_sysctl_name`) and again against the kernel before writing.
    name:
        Optional label; the namespace is called ``tcpcourse-<pid>-<label>`` (default
        label: a counter), so that :func:`cleanup_stale` can recognise it.
    """

    def __init__(self, *, mtu: int | None = None, offloads: bool = True,
                 sysctls: Mapping[str, Any] | None = None, name: str | None = None):
        if mtu is not None:
            if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65536:
                raise ParameterError(f"mtu={mtu!r} is not a valid MTU for lo.",
                                     "use an integer between 68 and 65536 (e.g. 1500).")
        self.mtu = mtu
        self.offloads = bool(offloads)
        self.sysctls: dict[str, Any] = {}
        for key, value in dict(sysctls or {}).items():
            self.sysctls[check_sysctl_name(key)] = value
        pid = os.getpid()
        if name is None:
            label = str(next(_counter))
        elif name.startswith(f"{NS_PREFIX}{pid}-"):
            label = name[len(f"{NS_PREFIX}{pid}-"):]
        else:
            label = name
        if not _LABEL_RE.match(label):
            raise ParameterError(
                f"name={name!r} cannot label a namespace.",
                "use letters, digits, '_', '.', '-' (at most 48); the namespace is "
                f"called {NS_PREFIX}<pid>-<name>.")
        self.name = f"{NS_PREFIX}{pid}-{label}"
        self.pid = pid
        self.offloads_unchanged: list[str] = []
        self._state = "new"  # new -> opening -> open -> closed
        self._lock = threading.RLock()
        self._procs: list[subprocess.Popen] = []
        self._sockets: "weakref.WeakSet[_socket.socket]" = weakref.WeakSet()

    # ---- identity --------------------------------------------------------------------
    @property
    def path(self) -> str:
        """The bind mount that keeps the namespace alive: ``/run/netns/NAME``."""
        return os.path.join(NETNS_RUN_DIR, self.name)

    @property
    def exec_prefix(self) -> list[str]:
        """``["ip", "netns", "exec", NAME]``: prepend to run any command inside."""
        return ["ip", "netns", "exec", self.name]

    @property
    def is_open(self) -> bool:
        return self._state == "open" and os.path.exists(self.path)

    def __repr__(self) -> str:
        extra = []
        if self.mtu:
            extra.append(f"mtu={self.mtu}")
        if not self.offloads:
            extra.append("offloads=off")
        if self.sysctls:
            extra.append(f"sysctls={self.sysctls}")
        return f"<Namespace {self.name} {self._state}{' ' if extra else ''}{' '.join(extra)}>"

    # ---- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "Namespace":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return False

    def open(self) -> "Namespace":
        """Create the namespace (what ``with`` does). Prefer the ``with`` form."""
        with self._lock:
            if self._state != "new":
                raise CourseError(f"the namespace {self.name} was already used ({self._state}).",
                                  "create a new Namespace() for each experiment.")
            require_namespace_privileges()
            _ip()
            if not self.offloads:
                _require_tool("ethtool", "ethtool", "it turns offloads off")
            try:
                cleanup_stale()
            except CourseError:
                pass
            _install_exit_handlers()
            with _registry_lock:
                if self.name in _registry or os.path.exists(self.path):
                    raise CourseError(
                        f"a network namespace called {self.name} already exists.",
                        "use another name= (or none, for an automatic one).")
                _registry[self.name] = self
                self._state = "opening"
            try:
                with _sigint_deferred():
                    self._setup()
            except BaseException:
                self.close()
                raise
            self._state = "open"
            return self

    def _setup(self) -> None:
        _cmd(["ip", "netns", "add", self.name], what="creating the namespace")
        if self.mtu is not None:
            _cmd(["ip", "-n", self.name, "link", "set", "lo", "mtu", str(self.mtu)],
                 what=f"setting the MTU of lo to {self.mtu}")
        _cmd(["ip", "-n", self.name, "link", "set", "lo", "up"], what="bringing lo up")
        if not self.offloads:
            self._offloads_off()
        # Under a kernel profile (course.py test --profile), a course namespace starts from
        # the profile's settings, as it would on the learner's kernel; the experiment's own
        # sysctls come after and win.
        for key, value in profile_sysctls().items():
            if key not in self.sysctls:
                try:
                    self._write_sysctl(key, value)
                except CourseError:
                    pass  # e.g. a default congestion control this namespace may not use
        for key, value in self.sysctls.items():
            self._write_sysctl(key, value)

    def _offloads_off(self) -> None:
        wanted = {"tso": "tcp-segmentation-offload",
                  "gso": "generic-segmentation-offload",
                  "gro": "generic-receive-offload"}
        # ethtool exits non-zero when some feature cannot change: tolerated, checked below
        _cmd(self.exec_prefix + ["ethtool", "-K", "lo", "tso", "off", "gso", "off",
                                 "gro", "off"], check=False)
        state = self.offload_state()
        self.offloads_unchanged = [short for short, long in wanted.items()
                                   if state.get(long, "off") != "off"]

    def offload_state(self) -> dict[str, str]:
        """``ethtool -k lo`` inside: ``{"tcp-segmentation-offload": "off", ...}``."""
        proc = _cmd(self.exec_prefix + ["ethtool", "-k", "lo"], what="ethtool -k lo")
        state = {}
        for line in proc.stdout.splitlines():
            if ":" in line and not line.startswith("Features"):
                key, _, val = line.partition(":")
                state[key.strip()] = val.split()[0] if val.split() else ""
        return state

    def close(self) -> None:
        """Kill what runs inside, close its sockets, delete the namespace. Idempotent."""
        with self._lock:
            if self._state == "closed":
                return
            with _sigint_deferred():
                try:
                    self._teardown()
                finally:
                    self._state = "closed"
                    with _registry_lock:
                        if _registry.get(self.name) is self:
                            del _registry[self.name]

    def _teardown(self) -> None:
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets.clear()
        _kill_procs(self._procs)
        self._procs.clear()
        if os.path.exists(self.path):
            _kill_netns_pids(self.name)
            _cmd(["ip", "netns", "del", self.name], check=False)
            if os.path.exists(self.path):  # one retry, e.g. after a racing exec
                time.sleep(0.05)
                _kill_netns_pids(self.name)
                _cmd(["ip", "netns", "del", self.name], what="deleting the namespace")

    def _require_open(self) -> None:
        if self._state != "open":
            raise CourseError(
                f"the namespace {self.name} is {self._state}, not open.",
                "use it inside its `with Namespace() as ns:` block.")

    # ---- running things inside -------------------------------------------------------
    @staticmethod
    def _argv(argv: str | Sequence[str]) -> list[str]:
        if isinstance(argv, str):
            return shlex.split(argv)
        return [str(a) for a in argv]

    def run(self, argv: str | Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
        """Run a command inside (``ip netns exec NAME ...``) and wait for it.

        Defaults: output captured as text, 60 s timeout; any ``subprocess.run``
        keyword overrides them (``check=True``, ``input=...``, ``timeout=...``).
        """
        self._require_open()
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(self.exec_prefix + self._argv(argv), **kw)

    def popen(self, argv: str | Sequence[str], **kw: Any) -> subprocess.Popen:
        """Start a command inside and return its Popen; it is killed on close().

        It runs in its own session (process group), so a Ctrl-C in the notebook does
        not reach it directly and close() can kill it together with its children.
        """
        self._require_open()
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.exec_prefix + self._argv(argv), **kw)
        self._procs.append(proc)
        return proc

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n NAME <args>``, e.g. ``ns.ip("route", "add", ...)``."""
        self._require_open()
        return _cmd(["ip", "-n", self.name, *map(str, args)], check=check,
                    what=f"ip {' '.join(map(str, args))}")

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in a short-lived thread inside the namespace."""
        self._require_open()
        return call_in_netns(self, fn, *args, **kwargs)

    def socket(self, family: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM,
               proto: int = 0) -> _socket.socket:
        """A socket created inside the namespace (its 127.0.0.1 is not the host's).

        The socket keeps using the namespace for its whole life, whatever thread uses
        it. It is closed when the namespace closes.
        """
        sock = self.call(_socket.socket, family, type, proto)
        self._sockets.add(sock)
        return sock

    def read_proc(self, rel: str) -> str:
        """Text of ``/proc/<rel>`` as seen inside, e.g. ``ns.read_proc("net/netstat")``."""
        self._require_open()
        return read_proc(rel, self)

    def sysctl(self, name: str, value: Any = None) -> int | str:
        """Read a sysctl inside the namespace, or write it when *value* is given.

        A write is refused with ParameterError (a ValueError) unless the sysctl is
        per network namespace: the static policy (:func:`check_sysctl_name`) and the
        kernel itself (:func:`sysctl_is_per_netns`) must both agree. Returns the value
        read back from inside.
        """
        self._require_open()
        if value is None:
            return read_sysctl(name, self)
        dotted = check_sysctl_name(name)
        self._write_sysctl(dotted, value)
        self.sysctls[dotted] = value
        return read_sysctl(dotted, self)

    def _write_sysctl(self, name: str, value: Any) -> None:
        per_ns, reason = sysctl_is_per_netns(name, self)
        if not per_ns:
            raise ParameterError(
                f"refusing to write {_dotted(name)}: {reason}.",
                "change only per-namespace net.* sysctls inside a course namespace.")
        path = _sysctl_path(name)
        text = _format_value(value)

        def write() -> None:
            with open(path, "w") as f:
                f.write(text)

        try:
            call_in_netns(self, write)
        except OSError as exc:
            raise CourseError(
                f"writing {_dotted(name)}={text} inside {self.name} failed: {exc.strerror}.",
                "check the value's range in the kernel's ip-sysctl documentation; some "
                "sysctls are read-only inside a namespace.") from None


# --------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------
def _kill_procs(procs: Iterable[subprocess.Popen], grace: float = 1.0) -> None:
    procs = [p for p in procs if p.poll() is None]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    try:
                        if os.getpgid(p.pid) == p.pid:
                            os.killpg(p.pid, sig)
                        else:
                            p.send_signal(sig)
                    except ProcessLookupError:
                        pass
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        procs = [p for p in procs if p.poll() is None]
        if not procs:
            return


def _kill_netns_pids(name: str) -> None:
    """SIGKILL whatever still runs inside the course namespace *name*."""
    proc = _cmd(["ip", "netns", "pids", name], check=False)
    for tok in proc.stdout.split():
        if tok.isdigit() and int(tok) != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(tok), signal.SIGKILL)


# --------------------------------------------------------------------------------------
# module-level housekeeping
# --------------------------------------------------------------------------------------
def profile_sysctls() -> dict[str, str]:
    """The sysctls of the kernel profile this process runs under (TCPCOURSE_PROFILE_SYSCTLS,
    set by ``course.py test --profile``), {} when none."""
    import json
    text = os.environ.get("TCPCOURSE_PROFILE_SYSCTLS", "")
    if not text:
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else {}


def list_course_namespaces() -> list[str]:
    """Names of all ``tcpcourse-*`` namespaces on this machine (any process's)."""
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    return sorted(n for n in names if n.startswith(NS_PREFIX))


def is_course_namespace(name: "str | Namespace") -> bool:
    """True only for a namespace this process created and still holds open.

    Used by guards (e.g. the SYN-flood experiment) before they send anything that must
    never leave a course namespace.
    """
    if isinstance(name, Namespace):
        name = name.name
    with _registry_lock:
        ns = _registry.get(name) if isinstance(name, str) else None
    return ns is not None and ns._state == "open" and os.path.exists(ns.path)


def resolve(ns: "Namespace | str | None") -> "Namespace | str | None":
    """The registered Namespace for a name, the name itself, or None (the host)."""
    if ns is None or isinstance(ns, Namespace):
        return ns
    name = _ns_name(ns)
    with _registry_lock:
        return _registry.get(name, name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete course namespaces whose creating process is gone; return their names.

    A namespace named ``tcpcourse-<pid>-*`` is stale when process <pid> no longer
    exists (a crashed or killed Jupyter kernel), or when <pid> is this process but
    the namespace is not in its registry (a previous process that had the same pid).
    Namespaces of live processes are left alone. Needs the namespace capabilities;
    without them nothing is removed.
    """
    if not have_namespace_privileges() or not shutil.which("ip"):
        return []
    removed = []
    me = os.getpid()
    for name in list_course_namespaces():
        m = _NAME_RE.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == me:
            with _registry_lock:
                if name in _registry:
                    continue
        elif _pid_alive(pid):
            continue
        _kill_netns_pids(name)
        proc = _cmd(["ip", "netns", "del", name], check=False)
        if proc.returncode == 0 or not os.path.exists(os.path.join(NETNS_RUN_DIR, name)):
            removed.append(name)
    return removed


def cleanup_all() -> None:
    """Close every namespace this process holds (atexit and signal path)."""
    with _registry_lock:
        live = list(_registry.values())
    for ns in live:
        with contextlib.suppress(Exception):
            ns.close()


def _on_fatal_signal(signum: int, frame: Any) -> None:
    try:
        cleanup_all()
    finally:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_exit_handlers() -> None:
    """atexit always; SIGTERM/SIGHUP only where they still have their default action
    (never override a handler somebody else installed) and only from the main thread."""
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    _handlers_installed = True
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError, TypeError):
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _on_fatal_signal)


atexit.register(cleanup_all)
