"""The kernel's rules, evaluated on the machine the notebook runs on (principle 5).

A claim such as "the accept queue holds backlog + 1" or "the send buffer jumps to 4 MB at
connect" is not a number from the machine the course was written on: it is a rule the
kernel applies to *this* machine's parameters. This module holds both halves:

- :class:`Machine` -- one snapshot of the parameters the rules read: kernel release, HZ,
  the congestion control, ``tcp_rmem``/``tcp_wmem``, ``rmem_max``/``wmem_max``,
  ``somaxconn``, the SYN backlog and retries, SACK/timestamps, lo's MTU and GSO size,
  and the per-destination metrics cache (``ip tcp_metrics``) for the addresses an
  experiment uses. ``Machine.read()`` reads the host (or a namespace); every live
  :class:`~helpers.experiments.base.Result` and every corpus entry carries one, so a
  replay is predicted from the machine it was recorded on.
- one function per rule, named after the kernel function it mirrors
  (:func:`tcp_select_initial_window`, :func:`tcp_sndbuf_expand`,
  :func:`sk_acceptq_is_full`, :func:`syn_retry_schedule`, :func:`tcp_delack_min`, ...).
  Each returns a :class:`Prediction`: the rule, its inputs and the value (or band).

A notebook or an invariant then says ``prediction.check(measured)``: it prints rule,
inputs, prediction and measurement, and on a mismatch raises :class:`RuleMismatch`, an
AssertionError whose message a learner can read: what the rule says, what this machine
did, and which corpus file (recorded on the reference kernel) to compare with.

Tolerance bands live here too, one name each (:func:`delack_band`), so the notebook, the
invariant and the tests cannot disagree.
"""
from __future__ import annotations

import dataclasses
import gzip
import platform
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = [
    "Machine", "Prediction", "RuleMismatch", "machine",
    "sock_setsockopt_buf", "tcp_win_from_space", "tcp_select_initial_window", "default_wscale",
    "tcp_mss_default", "skb_truesize_per_mss", "sndbuf_expand_factor", "tcp_sndbuf_expand",
    "sk_acceptq_is_full", "accept_queue_limit", "syn_retry_schedule", "synack_retry_schedule",
    "tcp_delack_min", "delack_band", "half_open_cap", "tcp_timewait_len",
    "keepalive_deadline", "assert_rule", "overview", "spot_checks", "tcp_try_rmem_schedule",
]

# --------------------------------------------------------------------------------------
# Kernel constants (include/net/tcp.h, include/linux/skbuff.h). They are compile-time
# constants, not settings: a rule that uses one names it.
# --------------------------------------------------------------------------------------
TCP_INIT_CWND = 10                 # RFC 6928 initial window, segments
TCP_TIMEOUT_INIT_S = 1.0           # initial RTO for SYN and SYN-ACK (RFC 6298)
TCP_RTO_MAX_S = 120.0              # cap of the exponential backoff (tcp_rto_max_ms where present)
TCP_TIMEWAIT_LEN_S = 60.0          # how long TIME_WAIT lasts: a #define, not a sysctl
TCP_MAX_WSCALE = 14
U16_MAX = 65535
# x86_64 sizes on 6.x (sizeof(struct sk_buff) aligned, skb_shared_info aligned). The
# worst-case header room MAX_TCP_HEADER depends on the kernel's config (see
# max_tcp_header()): 192 on a kernel without wireless, Hyper-V or tunnels (this machine),
# 320 on Debian's stock kernel. The truesize rule rounds up to a power of two, so on lo
# (MSS 65,495) every config gives 131,328, but at MSS 1460 the two give 2,304 and 4,352.
SKB_STRUCT = 256
SKB_SHINFO = 320
MAX_TCP_HEADER = 320   # Debian's stock config; used only when the config cannot be read
# SOCK_MIN_RCVBUF = TCP_SKB_MIN_TRUESIZE = 2048 + SKB_DATA_ALIGN(sizeof(struct sk_buff));
# SOCK_MIN_SNDBUF = 2 × that (include/net/sock.h)
SOCK_MIN_RCVBUF = 2048 + SKB_STRUCT
SOCK_MIN_SNDBUF = 2 * SOCK_MIN_RCVBUF
TCP_DEFAULT_SCALING_RATIO = 128          # of 256: a fresh socket assumes half its buffer is payload

_SYSCTLS = {
    "tcp_rmem": "net.ipv4.tcp_rmem", "tcp_wmem": "net.ipv4.tcp_wmem",
    "rmem_max": "net.core.rmem_max", "wmem_max": "net.core.wmem_max",
    "somaxconn": "net.core.somaxconn", "tcp_max_syn_backlog": "net.ipv4.tcp_max_syn_backlog",
    "tcp_syn_retries": "net.ipv4.tcp_syn_retries", "tcp_synack_retries": "net.ipv4.tcp_synack_retries",
    "tcp_syn_linear_timeouts": "net.ipv4.tcp_syn_linear_timeouts",
    "tcp_sack": "net.ipv4.tcp_sack", "tcp_timestamps": "net.ipv4.tcp_timestamps",
    "tcp_window_scaling": "net.ipv4.tcp_window_scaling", "tcp_syncookies": "net.ipv4.tcp_syncookies",
    "tcp_abort_on_overflow": "net.ipv4.tcp_abort_on_overflow",
    "tcp_congestion_control": "net.ipv4.tcp_congestion_control",
    "tcp_allowed_congestion_control": "net.ipv4.tcp_allowed_congestion_control",
    "tcp_available_congestion_control": "net.ipv4.tcp_available_congestion_control",
    "tcp_fin_timeout": "net.ipv4.tcp_fin_timeout", "tcp_tw_reuse": "net.ipv4.tcp_tw_reuse",
    "tcp_max_tw_buckets": "net.ipv4.tcp_max_tw_buckets",
    "ip_local_port_range": "net.ipv4.ip_local_port_range",
    "tcp_keepalive_time": "net.ipv4.tcp_keepalive_time",
    "tcp_keepalive_intvl": "net.ipv4.tcp_keepalive_intvl",
    "tcp_keepalive_probes": "net.ipv4.tcp_keepalive_probes",
    "tcp_retries2": "net.ipv4.tcp_retries2", "tcp_no_metrics_save": "net.ipv4.tcp_no_metrics_save",
    "tcp_reordering": "net.ipv4.tcp_reordering", "tcp_recovery": "net.ipv4.tcp_recovery",
    "tcp_rto_max_ms": "net.ipv4.tcp_rto_max_ms", "tcp_rto_min_us": "net.ipv4.tcp_rto_min_us",
    "tcp_adv_win_scale": "net.ipv4.tcp_adv_win_scale", "tcp_moderate_rcvbuf": "net.ipv4.tcp_moderate_rcvbuf",
}
_LISTS = {"tcp_rmem", "tcp_wmem", "ip_local_port_range"}
_WORDS = {"tcp_congestion_control", "tcp_allowed_congestion_control", "tcp_available_congestion_control"}


# ======================================================================================
# The machine
# ======================================================================================
@dataclass
class Machine:
    """The parameters the kernel's rules read, from one machine (or namespace) at one time.

    A value is None where this kernel has no such setting (``tcp_syn_linear_timeouts``
    before Linux 6.5, ``tcp_rto_max_ms`` before 6.15): the rules then use what the kernel
    did before the setting existed.
    """

    release: str = ""
    hz: int | None = None
    hz_source: str = ""
    lo_mtu: int = 65536
    lo_gso_max_size: int | None = None
    sysctls: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)   # addr -> ip tcp_metrics fields
    sock_min_rcvbuf: int | None = None   # SOCK_MIN_RCVBUF / SOCK_MIN_SNDBUF: compile-time floors,
    sock_min_sndbuf: int | None = None   # measured (SO_*BUF = 1 reads back as the floor)
    max_tcp_header: int | None = None    # MAX_TCP_HEADER from the kernel config (None: unknown)
    skb_shinfo: int | None = None        # SKB_DATA_ALIGN(sizeof(struct skb_shared_info)), from the config
    proc_version: str = ""               # /proc/version: the upstream patch level a release string hides
    reqsk_full_strict: bool | None = None  # SYN queue full only *above* the backlog (measured)
    where: str = "host"

    # ---- reading ---------------------------------------------------------------------
    @classmethod
    def read(cls, ns: Any = None, addresses: Iterable[str] = ("127.0.0.1",)) -> "Machine":
        """Snapshot this host (``ns=None``) or a course namespace."""
        from .kernel import sysctl
        values: dict[str, Any] = {}
        for key, name in _SYSCTLS.items():
            try:
                values[key] = _coerce(key, sysctl(name, ns))
            except Exception:   # absent on this kernel, or host-wide and invisible in a namespace
                values[key] = None
            if values[key] is None and ns is not None:
                try:   # host-wide on this kernel (net.core.rmem_max on 6.1): the host's value applies
                    values[key] = _coerce(key, sysctl(name))
                except Exception:
                    pass
        hz, how = kernel_hz()
        mtu, gso = _lo_sizes(ns)
        m = cls(release=platform.release(), hz=hz, hz_source=how, lo_mtu=mtu, lo_gso_max_size=gso,
                sysctls=values, where="host" if ns is None else f"namespace {getattr(ns, 'name', ns)}")
        m.metrics = {a: tcp_metrics(a, ns) for a in addresses}
        m.sock_min_rcvbuf, m.sock_min_sndbuf = _buffer_floors()
        m.max_tcp_header = max_tcp_header()[0]
        m.skb_shinfo = skb_shinfo_size()
        try:
            m.proc_version = open("/proc/version").read().strip()
        except OSError:
            pass
        m.reqsk_full_strict = probe_reqsk_full_strict()
        return m

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Machine":
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> "Machine":
        """The machine a corpus entry was recorded on: its stored snapshot, or (for
        entries recorded before snapshots existed) one rebuilt from its sysctls and kernel."""
        if entry.get("machine"):
            return cls.from_dict(entry["machine"])
        values = {}
        by_name = {v: k for k, v in _SYSCTLS.items()}
        for name, val in (entry.get("sysctls") or {}).items():
            if name in by_name:
                values[by_name[name]] = _coerce(by_name[name], val)
        return cls(release=str(entry.get("kernel", "")), hz=None, hz_source="not recorded",
                   sysctls=values, where="corpus")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __getattr__(self, name: str) -> Any:
        # m.tcp_rmem, m.somaxconn ... read the snapshot's sysctls
        sysctls = self.__dict__.get("sysctls", {})
        if name in _SYSCTLS:
            return sysctls.get(name)
        raise AttributeError(name)

    @property
    def version(self) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", self.release or "")
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    def reordering(self, addr: str = "127.0.0.1") -> int:
        """The reordering the next connection to *addr* starts with: the metrics cache's
        value when it holds one, else ``tcp_reordering``. (tcp_init_metrics() reads a cached
        reordering even with ``tcp_no_metrics_save`` = 1, which only stops saving.)"""
        base = self.sysctls.get("tcp_reordering") or 3
        cached = (self.metrics.get(addr) or {}).get("reordering")
        return int(cached) if cached else base

    def describe(self) -> str:
        s = self.sysctls
        return (f"Linux {self.release} ({self.where}), HZ={self.hz} ({self.hz_source}), "
                f"cc={s.get('tcp_congestion_control')}, tcp_rmem={s.get('tcp_rmem')}, "
                f"tcp_wmem={s.get('tcp_wmem')}, rmem_max={s.get('rmem_max')}, "
                f"wmem_max={s.get('wmem_max')}, somaxconn={s.get('somaxconn')}, lo MTU {self.lo_mtu}")


def machine(ns: Any = None, addresses: Iterable[str] = ("127.0.0.1",)) -> Machine:
    """This machine now (see :meth:`Machine.read`)."""
    return Machine.read(ns, addresses)


def _coerce(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in _LISTS:
        return [int(x) for x in str(value).split()]
    if key in _WORDS:
        return str(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _buffer_floors() -> tuple[int | None, int | None]:
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
            return (s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                    s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    except OSError:
        return None, None


def _lo_sizes(ns: Any) -> tuple[int, int | None]:
    def read() -> tuple[int, int | None]:
        try:
            mtu = int(open("/sys/class/net/lo/mtu").read())
        except (OSError, ValueError):
            mtu = 65536
        try:
            gso = int(open("/sys/class/net/lo/gso_max_size").read())
        except (OSError, ValueError):
            gso = None   # absent on some kernels (6.18 here): say so where it matters
        return mtu, gso
    if ns is None:
        return read()
    # /sys shows the reader's namespace only after a remount: ask ip instead
    try:
        from .netns import resolve
        out = resolve(ns).run(["ip", "-d", "link", "show", "lo"], check=True).stdout
        mtu = int(re.search(r"mtu (\d+)", out).group(1))
        g = re.search(r"gso_max_size (\d+)", out)
        return mtu, int(g.group(1)) if g else None
    except Exception:
        return 65536, None


_HZ_CACHE: tuple[int | None, str] | None = None
_CONFIG_CACHE: tuple[dict[str, str], str] | None = None


def kernel_config() -> tuple[dict[str, str], str]:
    """The running kernel's build config ({"CONFIG_HZ": "250", ...}, where it was read);
    ({}, "") when neither /proc/config.gz nor /boot/config-RELEASE is readable."""
    global _CONFIG_CACHE
    if _CONFIG_CACHE is not None:
        return _CONFIG_CACHE
    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                cfg = dict(line.strip().split("=", 1) for line in f if line.startswith("CONFIG_") and "=" in line)
            _CONFIG_CACHE = (cfg, path)
            return _CONFIG_CACHE
        except (OSError, ValueError, EOFError):
            continue
    _CONFIG_CACHE = ({}, "")
    return _CONFIG_CACHE


def skb_shinfo_size() -> int:
    """SKB_DATA_ALIGN(sizeof(struct skb_shared_info)): 48 bytes plus 16 per fragment slot,
    MAX_SKB_FRAGS of them (17 unless CONFIG_MAX_SKB_FRAGS says otherwise, from 6.5), rounded
    up to the cache line: 320 on x86_64 with 17."""
    cfg, _ = kernel_config()
    frags = int(cfg.get("CONFIG_MAX_SKB_FRAGS", "17") or 17)
    line = 1 << int(cfg.get("CONFIG_X86_L1_CACHE_SHIFT", "6") or 6)
    raw = 48 + 16 * frags
    return (raw + line - 1) // line * line


_STRICT_CACHE: list = []


def probe_reqsk_full_strict() -> bool | None:
    """Measure, once per process, whether the SYN queue counts as full only *above* the
    backlog (Linux 6.13+ and stable backports of commit 3479c7549fb1, Jan 2025) or already
    at it: in a throwaway course namespace with cookies off, listen(0) and one connect. It
    gets in within 0.3 s only when the check is ``qlen > backlog``. None without namespace
    privileges (the version table then decides)."""
    if _STRICT_CACHE:
        return _STRICT_CACHE[0]
    result = None
    try:
        from .netns import Namespace, have_namespace_privileges
        if have_namespace_privileges():
            import select
            with Namespace(sysctls={"net.ipv4.tcp_syncookies": 0}) as ns:
                lst, cli = ns.socket(), ns.socket()
                lst.bind(("127.0.0.1", 0))
                lst.listen(0)
                cli.setblocking(False)
                cli.connect_ex(lst.getsockname())
                _, w, _ = select.select([], [cli], [], 0.3)
                result = bool(w) and cli.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    except Exception:
        result = None
    _STRICT_CACHE.append(result)
    return result


def max_tcp_header() -> tuple[int | None, str]:
    """MAX_TCP_HEADER (include/net/tcp.h) = L1_CACHE_ALIGN(128 + MAX_HEADER), where
    MAX_HEADER (include/linux/netdevice.h) is LL_MAX_HEADER (128 with Hyper-V networking or
    an 802.11 mesh, 96 with wireless or AX.25, else 32), plus 48 when IP-in-IP, GRE, SIT or
    IPv6 tunnels are built. (None, why) when the kernel config is not readable."""
    cfg, path = kernel_config()
    if not cfg:
        return None, "kernel config not readable"
    # netdevice.h tests `defined(CONFIG_X)` (built in only) for Hyper-V, WLAN and mesh, and
    # IS_ENABLED() (built in or a module) for AX.25 and the tunnels
    built_in = lambda k: cfg.get(k) == "y"           # noqa: E731
    on = lambda k: cfg.get(k) in ("y", "m")          # noqa: E731
    if built_in("CONFIG_HYPERV_NET"):
        ll = 128
    elif built_in("CONFIG_WLAN") or on("CONFIG_AX25"):
        ll = 128 if built_in("CONFIG_MAC80211_MESH") else 96
    else:
        ll = 32
    extra = 48 if any(on(k) for k in ("CONFIG_NET_IPIP", "CONFIG_NET_IPGRE", "CONFIG_IPV6_SIT",
                                      "CONFIG_IPV6_TUNNEL")) else 0
    line = 1 << int(cfg.get("CONFIG_X86_L1_CACHE_SHIFT", "6"))
    raw = 128 + ll + extra
    return (raw + line - 1) // line * line, f"from {path}"


def kernel_hz() -> tuple[int | None, str]:
    """(HZ, how it was found): from the kernel config where readable, else measured from
    the 1/HZ granularity of TCP_INFO's tcpi_last_data_recv (kept in jiffies)."""
    global _HZ_CACHE
    if _HZ_CACHE is not None:
        return _HZ_CACHE
    cfg, path = kernel_config()
    if cfg.get("CONFIG_HZ", "").isdigit():
        _HZ_CACHE = (int(cfg["CONFIG_HZ"]), f"CONFIG_HZ in {path}")
        return _HZ_CACHE
    _HZ_CACHE = (measure_hz(), "measured from TCP_INFO's jiffy granularity")
    return _HZ_CACHE


def measure_hz(samples: int = 60, budget_s: float = 1.0) -> int | None:
    """HZ from the smallest step of ``tcpi_last_data_recv`` (jiffies shown in ms) on an
    idle loopback connection. No privileges needed. None if it cannot tell."""
    from .kernel import tcp_info
    lst = socket.socket()
    try:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        c = socket.create_connection(lst.getsockname(), timeout=2)
        s, _ = lst.accept()
        with c, s:
            c.sendall(b"x")
            s.recv(1)
            seen: set[int] = set()
            deadline = time.monotonic() + budget_s
            for _ in range(samples * 20):
                if time.monotonic() > deadline or len(seen) >= samples:
                    break
                seen.add(int(tcp_info(s).as_dict().get("last_data_recv", 0)))
                time.sleep(0.0007)
    finally:
        lst.close()
    vals = sorted(seen)
    steps = [b - a for a, b in zip(vals, vals[1:]) if b > a]
    if not steps:
        return None
    step = min(steps)   # ms per jiffy, rounded down by jiffies_to_msecs
    for hz in (100, 250, 300, 1000):
        if abs(1000 / hz - step) < 1.0 or int(1000 / hz) == step:
            return hz
    return round(1000 / step)


def tcp_metrics(addr: str, ns: Any = None) -> dict[str, Any]:
    """The per-destination metrics cache entry for *addr* (``ip tcp_metrics show ADDR``),
    as {field: number}; {} when the cache holds nothing for it."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    argv = [ip, "tcp_metrics", "show", addr]
    try:
        if ns is None:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout
        else:
            from .netns import resolve
            out = resolve(ns).run(argv).stdout
    except Exception:
        return {}
    return parse_tcp_metrics(out, addr)


def parse_tcp_metrics(text: str, addr: str | None = None) -> dict[str, Any]:
    for line in text.splitlines():
        toks = line.split()
        if not toks or (addr and toks[0] != addr):
            continue
        out: dict[str, Any] = {}
        for k, v in zip(toks[1::2], toks[2::2]):
            m = re.match(r"^(\d+(?:\.\d+)?)(us|ms|sec)?$", v)
            if m:
                num = float(m.group(1))
                out[k] = int(num) if m.group(2) is None and num.is_integer() else v
            else:
                out[k] = v
        return out
    return {}


# ======================================================================================
# Predictions and their check
# ======================================================================================
class RuleMismatch(AssertionError):
    """A measurement disagreed with the kernel rule evaluated on this machine."""


@dataclass
class Prediction:
    """What a rule predicts: *value* exactly, or anything in [*low*, *high*]."""

    rule: str                     # e.g. "tcp_sndbuf_expand()"
    formula: str                  # the rule in one line
    inputs: dict[str, Any]
    value: Any = None
    low: float | None = None
    high: float | None = None
    unit: str = ""
    note: str = ""

    @property
    def band(self) -> bool:
        return self.low is not None or self.high is not None

    def expected_text(self) -> str:
        if self.value is None and not self.band:
            return "not recorded"
        u = f" {self.unit}" if self.unit else ""
        if self.band:
            lo = "-inf" if self.low is None else _fmt(self.low)
            hi = "inf" if self.high is None else _fmt(self.high)
            mid = f" (about {_fmt(self.value)}{u})" if self.value is not None else ""
            return f"between {lo} and {hi}{u}{mid}"
        return f"{_fmt(self.value)}{u}"

    def agrees(self, measured: Any) -> bool:
        if self.band:
            try:
                x = float(measured)
            except (TypeError, ValueError):
                return False
            return (self.low is None or x >= self.low) and (self.high is None or x <= self.high)
        return measured == self.value

    def report(self, measured: Any = None, what: str = "") -> str:
        ins = ", ".join(f"{k}={_fmt(v)}" for k, v in self.inputs.items())
        lines = [f"rule:        {self.rule}: {self.formula}",
                 f"inputs:      {ins}",
                 f"prediction:  {self.expected_text()}"]
        if measured is not None or what:
            u = f" {self.unit}" if self.unit else ""
            lines.append(f"measured:    {_fmt(measured)}{u}" + (f"  ({what})" if what else ""))
        if self.note:
            lines.append(f"note:        {self.note}")
        return "\n".join(lines)

    def check(self, measured: Any, what: str = "", *, reference: str | None = None,
              quiet: bool = False) -> Any:
        """Print rule, inputs, prediction and measurement; raise :class:`RuleMismatch`
        (readable, with the corpus file to compare with) when they disagree."""
        text = self.report(measured, what)
        ok = self.agrees(measured)
        if not quiet:
            print(text + f"\nverdict:     {'agree ✓' if ok else 'DISAGREE ✗'}")
        if not ok:
            ref = f"\ncompare:     the corpus file {reference}, recorded on the reference kernel" \
                if reference else ""
            raise RuleMismatch(
                f"this machine did not follow the kernel rule the course teaches.\n{text}{ref}\n"
                "If your kernel or its settings differ from the reference machine, this is worth "
                "reading about, not a bug in your code: include this message and caps.summary() "
                "when you report it.")
        return measured


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if not v.is_integer() else f"{int(v):,}"
    return str(v)


# ======================================================================================
# Rules: buffers and windows
# ======================================================================================
def sock_setsockopt_buf(requested: int, cap: int, *, which: str = "SO_RCVBUF",
                        floor: int | None = None) -> Prediction:
    """SO_SNDBUF/SO_RCVBUF (net/core/sock.c sock_setsockopt): the request is capped at
    ``wmem_max``/``rmem_max``, then doubled (room for the kernel's bookkeeping), and never
    below SOCK_MIN_{SND,RCV}BUF (*floor*; a compile-time constant, measured by
    :meth:`Machine.read`: 2,304 on 6.18)."""
    floor = (SOCK_MIN_RCVBUF if which == "SO_RCVBUF" else SOCK_MIN_SNDBUF) if floor is None else int(floor)
    # min_t(u32, val, cap): a negative request is a huge unsigned one, so it gets the cap
    val = int(cap) if int(requested) < 0 else min(int(requested), int(cap))
    val = max(val * 2, floor)
    capname = "rmem_max" if which == "SO_RCVBUF" else "wmem_max"
    return Prediction("sock_setsockopt()", f"max(2 × min(request, {capname}), SOCK_MIN)",
                      {"request": int(requested), capname: int(cap), "SOCK_MIN": floor}, val, unit="B")


def tcp_win_from_space(space: int, scaling_ratio: int = TCP_DEFAULT_SCALING_RATIO) -> int:
    """The window a buffer of *space* bytes can offer (include/net/tcp.h): the payload share
    of the buffer. A fresh socket assumes half (scaling_ratio 128/256; before 6.5 it was
    ``space - (space >> tcp_adv_win_scale)`` with adv_win_scale 1: also half)."""
    return (int(space) * int(scaling_ratio)) >> 8


def tcp_select_initial_window(m: Machine, space: int, mss: int, window_clamp: int = 0,
                              wscale_ok: bool = True) -> Prediction:
    """tcp_select_initial_window() (net/ipv4/tcp_output.c): the window in the SYN and the
    shift (window scale) this side announces.

    window = min(rounddown(min(space, clamp), mss), 65535);
    shift = clamp(ilog2(min(max(space, tcp_rmem[2], rmem_max), clamp)) - 15, 0, 14).
    *space* is tcp_full_space(): the payload share of the receive buffer (see
    :func:`tcp_win_from_space`); *window_clamp* is 0 unless SO_RCVBUF was set (then it is
    that same space).
    """
    clamp = window_clamp or (U16_MAX << TCP_MAX_WSCALE)
    sp = min(clamp, max(int(space), 0))
    if sp > mss:
        sp = sp - sp % mss
    rcv_wnd = min(sp, U16_MAX)
    shift = 0
    rmem2 = (m.sysctls.get("tcp_rmem") or [0, 0, 0])[2]
    rmax = m.sysctls.get("rmem_max") or 0
    if wscale_ok:
        top = min(max(sp, rmem2, rmax), clamp)
        shift = max(0, min(TCP_MAX_WSCALE, top.bit_length() - 1 - 15))
    return Prediction("tcp_select_initial_window()",
                      "shift = ilog2(min(max(space, tcp_rmem[2], rmem_max), clamp)) − 15, within 0..14",
                      {"space": int(space), "mss": int(mss), "tcp_rmem[2]": rmem2, "rmem_max": rmax,
                       "window_clamp": int(window_clamp)},
                      {"rcv_wnd": rcv_wnd, "rcv_wscale": shift, "window_clamp": min(U16_MAX << shift, clamp)})


def default_wscale(m: Machine, rcvbuf: int | None = None, mss: int | None = None) -> Prediction:
    """The window scale a socket announces: with SO_RCVBUF unset the largest buffer the
    socket could ever get decides: tcp_rmem[2] (autotuning's bound) or rmem_max (the bound
    of a later SO_RCVBUF), whichever is larger; with SO_RCVBUF set
    (*rcvbuf*, the doubled value the kernel stores) the clamp is that buffer's window."""
    mss = mss or tcp_mss_default(m.lo_mtu)
    if rcvbuf is None:
        space = tcp_win_from_space((m.sysctls.get("tcp_rmem") or [0, 131072, 0])[1])
        full = tcp_select_initial_window(m, space, mss, wscale_ok=m.sysctls.get("tcp_window_scaling") != 0)
    else:
        space = tcp_win_from_space(rcvbuf)
        full = tcp_select_initial_window(m, space, mss, window_clamp=space,
                                         wscale_ok=m.sysctls.get("tcp_window_scaling") != 0)
    return Prediction("tcp_select_initial_window()", full.formula,
                      {**full.inputs, "SO_RCVBUF (stored)": rcvbuf if rcvbuf is not None else "unset"},
                      full.value["rcv_wscale"])


def tcp_mss_default(mtu: int, family: int = 4) -> int:
    """The MSS announced on a device of this MTU: an IP packet is at most 65,535 bytes,
    minus the IP and TCP headers (40 for IPv4, 60 for IPv6)."""
    if family == 4:
        return min(int(mtu), 65535) - 40
    return min(int(mtu) - 40, 65535) - 20   # IPv6's length field excludes its own 40-byte header


def skb_truesize_per_mss(mss: int, header: int | None = None, shinfo: int | None = None) -> int:
    """Memory charged per full-sized skb in tcp_sndbuf_expand(): the MSS plus header room
    and skb_shared_info, rounded up to a power of two (kmalloc), plus the sk_buff itself.
    *header*: MAX_TCP_HEADER of the machine (``Machine.max_tcp_header``); Debian's 320 if unknown."""
    per = int(mss) + (MAX_TCP_HEADER if header is None else int(header)) + (shinfo or SKB_SHINFO)
    return (1 << (per - 1).bit_length()) + SKB_STRUCT


def sndbuf_expand_factor(cc: str) -> int:
    """ca_ops->sndbuf_expand: bbr asks for 3 packets of room per cwnd segment, every other
    algorithm gets the default 2 (RFC 5681 fast recovery, 1.7 rounded up)."""
    return 3 if str(cc).startswith("bbr") else 2


def tcp_sndbuf_expand(m: Machine, *, cc: str | None = None, mss: int | None = None, cwnd: int = TCP_INIT_CWND,
                      addr: str = "127.0.0.1", reordering: int | None = None) -> Prediction:
    """tcp_sndbuf_expand() (net/ipv4/tcp_input.c), run when a connection is established
    (unless SO_SNDBUF was set): the send buffer becomes

        factor(cc) × max(10, cwnd, reordering + 1) × truesize(mss), capped at tcp_wmem[2]

    *reordering* comes from the per-destination metrics cache when it holds one for
    *addr* (``ip tcp_metrics``): a second run can start with a bigger buffer than the first.
    """
    cc = cc or m.sysctls.get("tcp_congestion_control") or "cubic"
    mss = mss or tcp_mss_default(m.lo_mtu)
    reo = m.reordering(addr) if reordering is None else int(reordering)
    segs = max(TCP_INIT_CWND, int(cwnd), reo + 1)
    per = skb_truesize_per_mss(mss, m.max_tcp_header, m.skb_shinfo)
    factor = sndbuf_expand_factor(cc)
    _, wmem1, wmem2 = (m.sysctls.get("tcp_wmem") or [4096, 16384, 4194304])
    sndmem = factor * segs * per
    value = wmem1 if wmem1 >= sndmem else min(sndmem, wmem2)   # it only ever raises the buffer
    return Prediction("tcp_sndbuf_expand()",
                      "min(factor(cc) × max(10, cwnd, reordering + 1) × truesize(mss), tcp_wmem[2]) if above tcp_wmem[1]",
                      {"cc": cc, "factor": factor, "cwnd": cwnd, "reordering": reo, "mss": mss,
                       "truesize": per, "tcp_wmem[2]": wmem2}, value, unit="B",
                      note=(f"reordering {reo} comes from the metrics cache for {addr}"
                            if reordering is None and (m.metrics.get(addr) or {}).get("reordering") else ""))


# ======================================================================================
# Rules: queues and timers
# ======================================================================================
def sk_acceptq_is_full(m: Machine, backlog: int) -> Prediction:
    """The accept queue (include/net/sock.h sk_acceptq_is_full): listen() stores
    min(backlog, somaxconn) and the queue counts as full only when it holds *more* than
    that, so it stops at min(backlog, somaxconn) + 1 (listen(0) still takes one)."""
    smax = int(m.sysctls.get("somaxconn") or 4096)
    # __sys_listen() compares as unsigned: a negative backlog becomes somaxconn
    eff = smax if int(backlog) < 0 else min(int(backlog), smax)
    return Prediction("sk_acceptq_is_full()", "min(backlog, somaxconn) + 1",
                      {"backlog": int(backlog), "somaxconn": smax}, eff + 1, unit="connections")


accept_queue_limit = sk_acceptq_is_full


def syn_retry_schedule(m: Machine, n: int | None = None) -> Prediction:
    """When a client resends an unanswered SYN (tcp_retransmit_timer): the first gap is
    TCP_TIMEOUT_INIT (1 s); the RTO stays 1 s while the retry count is at most
    ``tcp_syn_linear_timeouts`` (Linux 6.5+; absent before, i.e. 0) and doubles after
    that, up to TCP_RTO_MAX. The linear retries come on top of ``tcp_syn_retries``
    (tcp_write_timeout() allows syn_retries + linear_timeouts), and connect() gives up with
    ETIMEDOUT one RTO after the last. Value: the list of gaps in seconds, the last one
    being the wait before giving up."""
    lin = m.sysctls.get("tcp_syn_linear_timeouts")
    retries = int(m.sysctls.get("tcp_syn_retries") or 6)
    linear = int(lin or 0)
    # tcp_write_timeout(): a connecting socket may retransmit syn_retries + linear_timeouts
    # times, then gives up one RTO after the last
    count = (retries + linear + 1) if n is None else n
    gaps, rto = [], TCP_TIMEOUT_INIT_S
    for k in range(1, count + 1):     # gap before retry k (or, for k = retries + 1, the give-up)
        gaps.append(rto)
        if k > linear:                 # backoff k exceeds the linear count: double
            rto = min(rto * 2, _rto_max(m))
    return Prediction("tcp_retransmit_timer() for SYN_SENT",
                      "gap k = 1 s while k ≤ tcp_syn_linear_timeouts + 1, then doubling",
                      {"tcp_syn_linear_timeouts": "absent (before 6.5)" if lin is None else lin,
                       "tcp_syn_retries": retries}, gaps, unit="s")


def synack_retry_schedule(m: Machine, n: int | None = None) -> Prediction:
    """When a listener resends a SYN-ACK nobody acknowledged (reqsk_timer_handler):
    1 s, then doubling, ``tcp_synack_retries`` times; then the half-open entry is dropped."""
    retries = int(m.sysctls.get("tcp_synack_retries") or 5)
    count = retries if n is None else n
    gaps = [min(TCP_TIMEOUT_INIT_S * (2 ** k), _rto_max(m)) for k in range(count)]
    return Prediction("reqsk_timer_handler()", "1 s × 2^k for k < tcp_synack_retries",
                      {"tcp_synack_retries": retries}, gaps, unit="s")


def _rto_max(m: Machine) -> float:
    ms = m.sysctls.get("tcp_rto_max_ms")
    return ms / 1000 if ms else TCP_RTO_MAX_S


def tcp_delack_min(m: Machine) -> Prediction:
    """The delayed-ACK timer's floor TCP_DELACK_MIN = HZ/25 jiffies (40 ms whenever HZ is a
    multiple of 25). The timer fires on a tick, so a stall lasts up to one more jiffy."""
    hz = m.hz or 250
    jiffies = hz // 25
    ms = jiffies * 1000 / hz
    tick = 1000 / hz
    return Prediction("TCP_DELACK_MIN", "HZ/25 jiffies, + up to one tick",
                      {"HZ": hz, "tick_ms": tick}, ms, low=ms - 1, high=ms + tick + 1, unit="ms")


def delack_band(m: Machine, slack_ms: float = 15.0) -> Prediction:
    """The band a delayed-ACK stall is asserted in, everywhere in the course: from the floor
    (minus 1 ms of clock noise) to the floor + two ticks + *slack_ms* of scheduling delay
    on a busy machine."""
    base = tcp_delack_min(m)
    tick = base.inputs["tick_ms"]
    return Prediction("DELACK_BAND", "[HZ/25 jiffies − 1 ms, HZ/25 jiffies + 2 ticks + slack]",
                      {**base.inputs, "slack_ms": slack_ms}, base.value,
                      low=base.value - 1, high=base.value + 2 * tick + slack_ms, unit="ms")


def half_open_cap(m: Machine, backlog: int, cookies: int | None = None) -> Prediction:
    """How many half-open (SYN-RECV) entries a listener keeps (tcp_conn_request): the queue
    is full above min(backlog, somaxconn), so it stops at that + 1; without cookies a SYN is
    also dropped once it holds more than max - max/4 of ``tcp_max_syn_backlog`` (the last
    quarter is kept for peers proven alive)."""
    cookies = int(m.sysctls.get("tcp_syncookies") or 0) if cookies is None else int(cookies)
    smax = int(m.sysctls.get("somaxconn") or 4096)
    msb = int(m.sysctls.get("tcp_max_syn_backlog") or 256)
    strict = inet_csk_reqsk_queue_is_full_strict(m)     # 01_03/01_04 section: '>' (6.13+) or '>='
    full = min(int(backlog), smax) + (1 if strict else 0)
    three_q = msb - (msb >> 2) + 1
    cap = full if cookies else min(full, three_q)
    return Prediction("tcp_conn_request()",
                      f"min(backlog, somaxconn){' + 1' if strict else ''}"
                      + ("" if cookies else ", and ≤ max − max/4 + 1 without cookies"),
                      {"backlog": int(backlog), "somaxconn": smax, "tcp_max_syn_backlog": msb,
                       "tcp_syncookies": cookies, "kernel": m.release or "?"}, cap, unit="entries",
                      note="" if strict else "before Linux 6.13 (and its 2025 stable backports) the SYN queue "
                                             "counted as full at min(backlog, somaxconn) entries, not above it")


def tcp_try_rmem_schedule(m: Machine, rcvbuf: int, mss: int | None = None) -> Prediction:
    """How much a receive queue can hold (net/ipv4/tcp_input.c tcp_try_rmem_schedule()):
    an arriving skb is refused (and the queue pruned) only when the memory already queued
    *exceeds* ``sk_rcvbuf``, so the last one admitted may carry the queue past the buffer
    by up to one skb: payload ≤ rcvbuf + truesize(one full skb)."""
    mss = mss or tcp_mss_default(m.lo_mtu)
    per = skb_truesize_per_mss(mss, m.max_tcp_header, m.skb_shinfo)
    return Prediction("tcp_try_rmem_schedule()", "queued payload ≤ sk_rcvbuf + truesize(one skb)",
                      {"sk_rcvbuf": int(rcvbuf), "mss": mss, "truesize": per}, int(rcvbuf),
                      low=0, high=int(rcvbuf) + per, unit="B")


def tcp_timewait_len(m: Machine | None = None) -> Prediction:
    """TIME_WAIT lasts TCP_TIMEWAIT_LEN (60 s), a compile-time constant: no sysctl changes
    it (tcp_fin_timeout governs an orphaned FIN_WAIT_2)."""
    return Prediction("TCP_TIMEWAIT_LEN", "60 s (a #define)", {}, TCP_TIMEWAIT_LEN_S, unit="s")


def keepalive_deadline(m: Machine, idle: int | None = None, intvl: int | None = None,
                       probes: int | None = None) -> Prediction:
    """A silent peer is declared dead after keepalive_time + keepalive_probes ×
    keepalive_intvl seconds (TCP_KEEPIDLE/KEEPINTVL/KEEPCNT override the sysctls)."""
    idle = int(idle if idle is not None else m.sysctls.get("tcp_keepalive_time") or 7200)
    intvl = int(intvl if intvl is not None else m.sysctls.get("tcp_keepalive_intvl") or 75)
    probes = int(probes if probes is not None else m.sysctls.get("tcp_keepalive_probes") or 9)
    return Prediction("tcp_keepalive_timer()", "idle + probes × intvl",
                      {"idle": idle, "intvl": intvl, "probes": probes}, idle + probes * intvl, unit="s")


def assert_rule(result: Any, rule, measured: Any, *args, what: str = "", quiet: bool = False, **kw) -> Prediction:
    """Evaluate *rule* on the machine *result* was produced on, check *measured* against it
    (printing rule, inputs, prediction, measurement) and return the prediction.

    Live, that machine is this one (snapshot taken just before the run). Replayed, it is
    the recording's machine, and a line says what this machine's settings would give::

        rules.assert_rule(r, rules.tcp_sndbuf_expand, r["sndbuf_after_connect"],
                          what="SO_SNDBUF right after connect()", cc="bbr")
    """
    m = result.machine_snapshot()
    pred = rule(m, *args, **kw)
    pred.check(measured, what, reference=result.reference(), quiet=quiet)
    if not getattr(result, "live", True) and not quiet:
        try:
            here = rule(machine(), *args, **kw)
            if here.value != pred.value or (here.low, here.high) != (pred.low, pred.high):
                print(f"on this machine: the same rule gives {here.expected_text()} "
                      f"(inputs {', '.join(f'{k}={_fmt(v)}' for k, v in here.inputs.items())}); "
                      f"the recording shows the reference machine's value.")
            else:
                print("on this machine: the same rule gives the same value.")
        except Exception as exc:   # a replay must never fail because the host cannot be read
            print(f"on this machine: could not evaluate the rule ({exc}).")
    return pred


def overview(m: Machine, reference: Machine | None = None) -> list[dict[str, Any]]:
    """The course's main rules evaluated on *m* (and on *reference*, the machine the corpus
    was recorded on, for comparison): one row per rule, for the index page and bug reports."""
    def rows(mm: Machine) -> list[tuple[str, Prediction]]:
        return [
            ("window scale offered (SO_RCVBUF unset)", default_wscale(mm)),
            ("send buffer at establishment (lo, default cc, cache as now)", tcp_sndbuf_expand(mm)),
            ("SO_RCVBUF 1 MiB reads back as",
             sock_setsockopt_buf(1 << 20, mm.sysctls["rmem_max"])
             if mm.sysctls.get("rmem_max") else Prediction("sock_setsockopt()", "", {}, None)),
            ("accept queue of listen(128)", sk_acceptq_is_full(mm, 128)),
            ("half-open entries of listen(1024), cookies off", half_open_cap(mm, 1024, cookies=0)),
            ("gaps between a client's SYNs (s)", syn_retry_schedule(mm)),
            ("gaps between a server's SYN-ACKs (s)", synack_retry_schedule(mm)),
            ("delayed-ACK floor", tcp_delack_min(mm)),
            ("TIME_WAIT length", tcp_timewait_len(mm)),
        ]
    out = []
    ref = dict(rows(reference)) if reference is not None else {}
    for what, p in rows(m):
        row = {"claim": what, "kernel rule": p.rule,
               "inputs here": ", ".join(f"{k}={_fmt(v)}" for k, v in p.inputs.items()),
               "this machine": p.expected_text()}
        if reference is not None:
            r = ref[what]
            row["reference machine"] = r.expected_text()
            row["same?"] = "yes" if r.expected_text() == p.expected_text() else "differs"
        out.append(row)
    return out


def spot_checks(m: Machine | None = None) -> list[Prediction]:
    """Two rules checked live on real sockets in a fraction of a second, for the index page:
    SO_RCVBUF is capped and doubled (sock_setsockopt), and a listen(2) listener that never
    accepts completes backlog + 1 handshakes out of 5 (sk_acceptq_is_full). Prints each
    check and raises :class:`RuleMismatch` on a disagreement; returns the predictions."""
    from .kernel import ss
    m = m or machine()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 100_000)
        buf = sock_setsockopt_buf(100_000, m.rmem_max)
        buf.check(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), "SO_RCVBUF read back")
    socks = [socket.socket() for _ in range(6)]
    try:
        listener, clients = socks[0], socks[1:]
        listener.bind(("127.0.0.1", 0))
        listener.listen(2)
        for c in clients:
            c.setblocking(False)
            c.connect_ex(listener.getsockname())
        time.sleep(0.2)
        queued = int(ss(state="listening", sport=listener.getsockname()[1]).iloc[0]["recv_q"])
    finally:
        for s in socks:
            s.close()
    print()
    acc = sk_acceptq_is_full(m, 2)
    acc.check(queued, f"ss Recv-Q of the listener, {len(clients)} clients")
    return [buf, acc]


# ======================================================================================
# Rules added by chapters (append below your chapter's marker; keep one rule per kernel
# function, named after it, returning a Prediction)
# ======================================================================================
# --- 01_01 / 01_02 ---
def alloc_fd(open_fds: Iterable[int]) -> Prediction:
    """The fd a new socket()/accept() gets (fs/file.c alloc_fd, via get_unused_fd_flags):
    the lowest number not open in this process (POSIX), not the one closed last."""
    taken = sorted({int(f) for f in open_fds})
    fd = next(i for i in range(len(taken) + 1) if i not in set(taken))
    return Prediction("alloc_fd()", "the lowest fd number not open in this process",
                      {"open fds": ",".join(map(str, taken))}, fd)


def sys_listen(m: Machine, backlog: int) -> Prediction:
    """What listen(fd, backlog) stores as the accept-queue limit (net/socket.c __sys_listen):
    min(backlog, net.core.somaxconn). `ss` shows it as a LISTEN socket's Send-Q."""
    smax = int(m.sysctls.get("somaxconn") or 4096)
    return Prediction("__sys_listen()", "min(backlog, somaxconn)",
                      {"backlog": int(backlog), "somaxconn": smax}, min(max(int(backlog), 0), smax))


def tcp_synack_options(m: Machine, *, syn_sack: bool, syn_ts: bool, syn_wscale: bool,
                       mtu: int | None = None) -> Prediction:
    """The options a listener puts in its SYN-ACK (net/ipv4/tcp_output.c tcp_synack_options,
    from what tcp_parse_options/tcp_openreq_init kept of the SYN): each of SACK permitted,
    timestamps and window scale only if the SYN offered it AND this machine's
    tcp_sack / tcp_timestamps / tcp_window_scaling allow it. The MSS is always the
    listener's own (its device's MTU), whatever the SYN announced."""
    s = m.sysctls
    on = lambda k: bool(1 if s.get(k) is None else s.get(k))   # noqa: E731 (absent: the default, on)
    scale = default_wscale(m).value if (syn_wscale and on("tcp_window_scaling")) else None
    value = {"mss": tcp_mss_default(mtu or m.lo_mtu),
             "sack_perm": bool(syn_sack) and on("tcp_sack"),
             "timestamps": bool(syn_ts) and on("tcp_timestamps"),
             "wscale": scale}
    return Prediction("tcp_synack_options()",
                      "option in SYN-ACK ⇔ offered in the SYN and enabled here; MSS from this side's MTU",
                      {"SYN offered SACK": bool(syn_sack), "SYN offered timestamps": bool(syn_ts),
                       "SYN offered wscale": bool(syn_wscale), "tcp_sack": s.get("tcp_sack"),
                       "tcp_timestamps": s.get("tcp_timestamps"),
                       "tcp_window_scaling": s.get("tcp_window_scaling"), "MTU": mtu or m.lo_mtu}, value)


def tcp_rcv_space_adjust(m: Machine, start: int, *, so_rcvbuf_set: bool) -> Prediction:
    """Receive-buffer autotuning (net/ipv4/tcp_input.c tcp_rcv_space_adjust): while the
    application keeps reading, the kernel grows sk_rcvbuf to follow the bytes read per
    round trip, up to net.ipv4.tcp_rmem[2] (net.core.rmem_max plays no part). It does
    nothing once SO_RCVBUF was set (SOCK_RCVBUF_LOCK) or with tcp_moderate_rcvbuf=0: the
    buffer then stays at *start*. Value: the band SO_RCVBUF ends in after a bulk transfer."""
    rmem2 = int((m.sysctls.get("tcp_rmem") or [0, 0, 6291456])[2])
    moderate = m.sysctls.get("tcp_moderate_rcvbuf")
    grows = not so_rcvbuf_set and (moderate is None or int(moderate) != 0)
    inputs = {"SO_RCVBUF set": bool(so_rcvbuf_set), "tcp_moderate_rcvbuf": moderate,
              "start": int(start), "tcp_rmem[2]": rmem2}
    if not grows:
        return Prediction("tcp_rcv_space_adjust()", "locked (SO_RCVBUF set) or moderation off: stays at start",
                          inputs, int(start), unit="B")
    return Prediction("tcp_rcv_space_adjust()", "grows above its start, never above tcp_rmem[2]",
                      inputs, None, low=int(start) + 1, high=max(rmem2, int(start)), unit="B")


def tcp_bound_to_half_wnd(mss: int, max_window: int, *, options_len: int = 0) -> Prediction:
    """The send MSS a connection uses, as getsockopt(TCP_MAXSEG) reads it once established
    (net/ipv4/tcp_output.c tcp_sync_mss → include/net/tcp.h tcp_bound_to_half_wnd): the
    smaller MSS of the two SYNs minus the options every segment carries (12 bytes of
    timestamps), but never more than half the largest window the peer has offered
    (when that window exceeds 536 bytes) -- on lo, where the MSS is 65,483 and the peer's
    window is about 64 KiB, that half wins."""
    size = int(mss) - int(options_len)
    cutoff = int(max_window) >> 1 if int(max_window) > 536 else int(max_window)
    value = max(cutoff, 68 - 20 - int(options_len)) if cutoff and size > cutoff else size
    return Prediction("tcp_bound_to_half_wnd()", "min(MSS − options, max(peer's largest window / 2, 68 − TCP header))",
                      {"MSS": int(mss), "options": int(options_len), "peer's largest window": int(max_window)},
                      value, unit="B")


# --- 01_03 / 01_04 ---
#: How late, beyond its timer-wheel slot, a kernel timer may be seen in a capture on a busy
#: machine (softirq and scheduling delay, tcpdump's timestamps): the one margin of 01_03/01_04.
TIMER_SLACK_S = 0.3


@dataclass
class SchedulePrediction(Prediction):
    """A prediction of timer gaps (a list, in seconds): a measured list agrees when it is
    not longer than the prediction and each gap lies in [gap − 1 tick − 10 ms, gap + slack]
    (:func:`timer_band` for one timer)."""

    tick_s: float = 0.004
    slack_s: float = TIMER_SLACK_S
    grain_s: list = field(default_factory=list)     # the timer wheel's slot for each gap

    def agrees(self, measured: Any) -> bool:
        try:
            xs = [float(x) for x in measured]
        except (TypeError, ValueError):
            return False
        grain = list(self.grain_s) + [0.0] * len(self.value)
        return 0 < len(xs) <= len(self.value) and all(
            w - self.tick_s - 0.01 <= x <= w + g + self.slack_s for x, w, g in zip(xs, self.value, grain))

    def expected_text(self) -> str:
        return (f"gaps {', '.join(_fmt(v) for v in self.value)} {self.unit} (each from −1 tick − 10 ms to "
                f"+ its timer-wheel slot ({', '.join(_fmt(g) for g in self.grain_s)} s) + {_fmt(self.slack_s)} s)")


def _tick_s(m: Machine) -> float:
    return 1.0 / (m.hz or 250)


def timer_wheel_granularity(m: Machine, seconds: float) -> Prediction:
    """How late a timer armed *seconds* ahead may fire by design (calc_wheel_index(),
    kernel/time/timer.c): the timer wheel files a timeout of d jiffies in level n (n = 0
    below 63 jiffies, 1 below 504, 2 below 4032, …: 63 << 3(n−1)) whose slots are 8^n
    jiffies wide, and rounds the expiry up to the slot. At HZ=250 a 1 s timer may be 32 ms
    late, a 4 s timer 256 ms."""
    hz = m.hz or 250
    d = int(round(float(seconds) * hz))
    level = 0
    while level < 8 and d >= (63 << (3 * level)):
        level += 1
    gran = (1 << (3 * level)) if level else 1
    return Prediction("calc_wheel_index()", "slot width 8^level jiffies, level from the timeout",
                      {"HZ": hz, "jiffies": d, "level": level}, gran / hz, unit="s")


def timer_band(m: Machine, seconds: float, *, rule: str = "timer", formula: str = "",
               inputs: Mapping[str, Any] | None = None, slack_s: float = TIMER_SLACK_S,
               chain: Iterable[float] | None = None) -> Prediction:
    """The band in which a kernel timer (or a *chain* of timers, each armed when the last
    fired, adding up to *seconds*) is seen to fire: never more than a tick early (jiffies
    rounding, plus 10 ms of clock noise); late by at most each timer's timer-wheel slot
    (:func:`timer_wheel_granularity`) plus TIMER_SLACK_S on a busy machine."""
    tick = _tick_s(m)
    grain = sum(timer_wheel_granularity(m, g).value for g in (chain if chain is not None else [seconds]))
    return Prediction(rule, formula or f"{_fmt(seconds)} s, within [−1 tick − 10 ms, + wheel slots + slack]",
                      {**dict(inputs or {}), "HZ": m.hz or 250, "timer-wheel slots_s": round(grain, 3),
                       "slack_s": slack_s}, float(seconds),
                      low=float(seconds) - tick - 0.01, high=float(seconds) + grain + slack_s, unit="s")


def syn_retry_band(m: Machine, n: int | None = None) -> SchedulePrediction:
    """:func:`syn_retry_schedule` (tcp_retransmit_timer(), net/ipv4/tcp_timer.c) as gaps a
    capture can be checked against: the first *n* gaps between a client's SYNs."""
    p = syn_retry_schedule(m, n)
    return SchedulePrediction(p.rule, p.formula, {**p.inputs, "HZ": m.hz or 250}, p.value, unit="s",
                              tick_s=_tick_s(m), grain_s=[timer_wheel_granularity(m, g).value for g in p.value])


def synack_retry_band(m: Machine, n: int | None = None) -> SchedulePrediction:
    """:func:`synack_retry_schedule` (reqsk_timer_handler(), net/ipv4/inet_connection_sock.c)
    as gaps a capture can be checked against: the first *n* gaps between a listener's
    SYN-ACKs to one client."""
    p = synack_retry_schedule(m, n)
    return SchedulePrediction(p.rule, p.formula, {**p.inputs, "HZ": m.hz or 250}, p.value, unit="s",
                              tick_s=_tick_s(m), grain_s=[timer_wheel_granularity(m, g).value for g in p.value])


def syn_ack_recalc(m: Machine, retries: int | None = None) -> Prediction:
    """When a listener gives up on a half-open entry whose final ACK never counted
    (syn_ack_recalc() and reqsk_timer_handler(), net/ipv4/inet_connection_sock.c): the
    entry's timer fires 1, 2, 4 … s apart; at each firing it expires once it has already
    been resent ``tcp_synack_retries`` times, else it resends. So it is dropped
    1 + 2 + … + 2^retries = 2^(retries+1) − 1 s after the first SYN-ACK (63 s for the
    default 5). A queue more than half full of such entries lowers the retry count down to 2
    (not modelled here; see 01_04's half_open_lifetime)."""
    r = int(m.sysctls.get("tcp_synack_retries") or 5) if retries is None else int(retries)
    chain = [min(TCP_TIMEOUT_INIT_S * 2 ** k, TCP_RTO_MAX_S) for k in range(r + 1)]
    return timer_band(m, sum(chain), rule="syn_ack_recalc()",
                      formula="dropped 2^(tcp_synack_retries + 1) − 1 s after the first SYN-ACK",
                      inputs={"tcp_synack_retries": r}, chain=chain)


def reqsk_timer_handler(m: Machine, qlen: int, young: int, backlog: int) -> Prediction:
    """How many SYN-ACK retransmissions a half-open entry gets when its timer fires
    (reqsk_timer_handler(), net/ipv4/inet_connection_sock.c): ``tcp_synack_retries``,
    unless the queue is more than half full, (qlen << 1) > max(8, backlog): then, while
    qlen ≥ young << k, the limit drops by one per k, down to 2 ("abort old ones without
    pity"). *young*: entries never resent yet. The listener thus drops old entries after 2
    retransmissions (syn_ack_recalc with 2: 7 s) until qlen ≤ max(8, backlog) / 2."""
    r = int(m.sysctls.get("tcp_synack_retries") or 5)
    eff_backlog = min(int(backlog), int(m.sysctls.get("somaxconn") or 4096))
    thresh = max(8, eff_backlog)
    mx = r
    if (int(qlen) << 1) > thresh:
        y = int(young) << 1
        while mx > 2:
            if qlen < y:
                break
            mx -= 1
            y <<= 1
    return Prediction("reqsk_timer_handler()",
                      "tcp_synack_retries, lowered towards 2 while (qlen << 1) > max(8, backlog) and qlen ≥ young << k",
                      {"tcp_synack_retries": r, "qlen": int(qlen), "young": int(young),
                       "max(8, backlog)": thresh}, mx, unit="retransmissions",
                      note=f"old entries are dropped until the queue holds {thresh // 2}")


#: First stable releases with upstream commit 3479c7549fb1 ("tcp/dccp: allow a connection when
#: sk_max_ack_backlog is zero", v6.13): inet_csk_reqsk_queue_is_full() compares with '>'.
#: 5.10.234 and 5.15.177 are confirmed from the stable trees; the 6.1/6.6/6.12 (and 5.4)
#: thresholds are the January 2025 stable releases, not confirmed patch by patch.
REQSK_FULL_STRICT_FROM = {(5, 4): 290, (5, 10): 234, (5, 15): 177, (6, 1): 125, (6, 6): 72, (6, 12): 10}


def inet_csk_reqsk_queue_is_full_strict(m: Machine) -> bool:
    """Does this kernel's inet_csk_reqsk_queue_is_full() (include/net/inet_connection_sock.h)
    count the SYN queue as full only *above* the backlog (qlen > backlog, Linux 6.13 and the
    stable releases in :data:`REQSK_FULL_STRICT_FROM`), or already *at* it (qlen >= backlog,
    older kernels: the half-open queue then stops at backlog, and listen(0) without cookies
    takes nothing)? Decided from the release string; a distribution kernel that backported
    the fix under an older version number is predicted wrongly (the check then says so)."""
    if m.reqsk_full_strict is not None:      # measured on that machine: no guessing
        return bool(m.reqsk_full_strict)
    v = m.version
    if v == (0, 0):
        return True
    if v >= (6, 13):
        return True
    full = _upstream_version(m)
    need = REQSK_FULL_STRICT_FROM.get(full[:2])
    return need is not None and full[2] >= need


def _upstream_version(m: Machine) -> tuple[int, int, int]:
    """(major, minor, patch) of the upstream release *m* runs. A distribution's release
    string often hides the patch level (Debian's "6.1.0-32-amd64" is 6.1.129): for the
    running kernel, /proc/version ("Debian 6.1.129-1") or Ubuntu's /proc/version_signature
    ("… 6.8.12") say it."""
    texts = [m.proc_version] if m.proc_version else []
    if not texts and m.release and m.release == platform.release():
        for path in ("/proc/version_signature", "/proc/version"):
            try:
                texts.append(open(path).read())
            except OSError:
                pass
    for text in texts:
        found = re.findall(r"(?<![\d.])(\d+)\.(\d+)\.(\d+)(?![\d])", text.replace(m.release, " "))
        for a, b, c in found:
            if (int(a), int(b)) == m.version:
                return int(a), int(b), int(c)
    mm = re.match(r"(\d+)\.(\d+)\.(\d+)", m.release or "")
    return (int(mm.group(1)), int(mm.group(2)), int(mm.group(3))) if mm else (*m.version, 0)


def acceptq_and_cookies(m: Machine, backlog: int, clients: int) -> Prediction:
    """How many of *clients* simultaneous connects get in when nobody accepts, cookies or
    not (tcp_conn_request(), net/ipv4/tcp_input.c, and tcp_v4_syn_recv_sock()): a SYN or a
    cookie ACK that finds the accept queue full (sk_acceptq_is_full) is dropped before any
    cookie logic, so at most min(backlog, somaxconn) + 1 connect; the rest wait for a SYN
    retry. Cookies protect the SYN queue, not the accept queue."""
    q = sk_acceptq_is_full(m, backlog)
    return Prediction("tcp_conn_request() / sk_acceptq_is_full()", "min(clients, min(backlog, somaxconn) + 1)",
                      {**q.inputs, "clients": int(clients),
                       "tcp_syncookies": m.sysctls.get("tcp_syncookies")},
                      min(int(clients), q.value), unit="connections")


# --- 01_05 / 02_01 / 02_05 ---
def sk_stream_memory_free(m: Machine, sndbuf: int, mss: int | None = None) -> Prediction:
    """When a writer gets EAGAIN (include/net/sock.h sk_stream_memory_free(), checked in
    tcp_sendmsg_locked() in net/ipv4/tcp.c): only before it starts a *new* skb, and only
    once the send queue's memory ``sk_wmem_queued`` (ss ``skmem`` ``w``: payload plus each
    skb's bookkeeping) has reached ``sk_sndbuf``. Bytes are still appended to the tail skb
    without a check, so at EAGAIN

        sndbuf <= wmem_queued < sndbuf + truesize(one full skb)

    (the kernel's own worst-case truesize per segment, :func:`skb_truesize_per_mss`). The
    *payload* bytes (SIOCOUTQ) may end above or below ``sndbuf``: above on lo, where one skb
    carries up to 64 KB; a little below when many small skbs each add their overhead
    (Linux 6.1 stopped at 32,741 bytes for a 32,768-byte buffer)."""
    mss = mss or tcp_mss_default(m.lo_mtu)
    per = skb_truesize_per_mss(mss, m.max_tcp_header, m.skb_shinfo)
    return Prediction("sk_stream_memory_free()", "sndbuf ≤ wmem_queued < sndbuf + truesize(one skb)",
                      {"sndbuf": int(sndbuf), "mss": mss, "truesize": per}, int(sndbuf),
                      low=int(sndbuf), high=int(sndbuf) + per - 1, unit="B")


def tcp_metrics_reordering(m: Machine, addr: str = "127.0.0.1") -> Prediction:
    """The reordering a new connection to *addr* starts with (tcp_init_metrics() in
    net/ipv4/tcp_metrics.c): the per-destination metrics cache's value (``ip tcp_metrics
    show ADDR``) when it holds one and ``tcp_no_metrics_save`` is 0, else
    ``net.ipv4.tcp_reordering`` (3). Compare with TCP_INFO ``tcpi_reordering``."""
    cached = (m.metrics.get(addr) or {}).get("reordering")
    return Prediction("tcp_init_metrics()", "cached reordering if any, else tcp_reordering",
                      {"ip tcp_metrics reordering": cached if cached else "none cached",
                       "tcp_reordering": m.sysctls.get("tcp_reordering") or 3,
                       "tcp_no_metrics_save": m.sysctls.get("tcp_no_metrics_save") or 0},
                      m.reordering(addr))


# --- 02_02 / 02_03 / 02_04 / 02_06 ---
#: Where a delayed-ACK stall is expected, at least this share of the measured waits must
#: fall inside :func:`delack_band` (the rest: scheduling noise on a busy machine). One name
#: for the notebooks, the invariants and the tests of 02_02/02_03.
DELACK_SHARE = 0.7


def delack_share(m: Machine) -> Prediction:
    """The share of delayed-ACK waits inside :func:`delack_band` (TCP_DELACK_MIN, see
    include/net/tcp.h): at least :data:`DELACK_SHARE`. Measure it with
    :func:`share_in_band`."""
    band = delack_band(m)
    return Prediction("DELACK_BAND share", f"share of waits in [{_fmt(band.low)}, {_fmt(band.high)}] ms "
                      f"≥ DELACK_SHARE", {**band.inputs, "DELACK_SHARE": DELACK_SHARE}, 1.0,
                      low=DELACK_SHARE, high=1.0)


def share_in_band(band: Prediction, values: Iterable[float]) -> float:
    """The share of *values* (NaN ignored) inside *band* (0.0 when there is none)."""
    vals = [float(v) for v in values if v == v]
    return sum(band.agrees(v) for v in vals) / len(vals) if vals else 0.0


def timer_wheel_band(m: Machine, ms: float, slack_ms: float = 15.0) -> tuple[float, float]:
    """When a kernel timer of *ms* fires, in ms, as (low, high): not before its expiry less
    one tick (jiffies rounding) and 1 ms of clock noise; late by at most its timer-wheel slot
    (:func:`timer_wheel_granularity`), one tick and *slack_ms* of scheduling delay. Tighter
    than :func:`timer_band` (whose slack covers second-long SYN timers in a capture): the
    probe timers of 02_02 are sampled within milliseconds."""
    tick = 1000 / (m.hz or 250)
    slot = timer_wheel_granularity(m, ms / 1000).value * 1000
    return ms - tick - 1, ms + slot + tick + slack_ms


def tcp_probe0_when(m: Machine, rto_ms: float, backoff: int, rto_max_ms: float | None = None) -> Prediction:
    """The gap before zero-window probe number *backoff* + 1 (tcp_send_probe0 /
    tcp_probe0_when in net/ipv4/tcp_output.c, include/net/tcp.h): the RTO doubled once per
    probe already sent, capped at the maximum RTO (``tcp_rto_max_ms`` or the socket's
    TCP_RTO_MAX_MS from Linux 6.15, the constant TCP_RTO_MAX, 120 s, before)."""
    cap = float(rto_max_ms) if rto_max_ms else _rto_max(m) * 1000
    value = min(float(rto_ms) * (2 ** int(backoff)), cap)
    low, high = timer_wheel_band(m, value)
    return Prediction("tcp_probe0_when()", "min(RTO × 2^backoff, rto_max), on the timer wheel",
                      {"RTO_ms": float(rto_ms), "backoff": int(backoff), "rto_max_ms": cap, "HZ": m.hz or 250},
                      value, low=low, high=high, unit="ms")


def tcp_probe_timer_user_timeout(m: Machine, user_timeout_ms: int) -> Prediction:
    """TCP_USER_TIMEOUT on a connection probing a zero window (tcp_probe_timer in
    net/ipv4/tcp_timer.c, and tcp_clamp_probe0_to_user_timeout): answered probes would go on
    for ever (RFC 1122 4.2.2.17), but once TCP_USER_TIMEOUT has passed since the first probe
    the connection is aborted with ETIMEDOUT. Value: ms from the first probe to the abort."""
    low, high = timer_wheel_band(m, float(user_timeout_ms))
    return Prediction("tcp_probe_timer()", "abort when now − first probe ≥ TCP_USER_TIMEOUT",
                      {"TCP_USER_TIMEOUT_ms": int(user_timeout_ms), "HZ": m.hz or 250},
                      float(user_timeout_ms), low=low, high=high, unit="ms")


def tcp_oow_rate_limited(m: Machine, times_s: Iterable[float], ratelimit_ms: int | None = None) -> Prediction:
    """Which zero-window probes get an answer (tcp_oow_rate_limited in net/ipv4/tcp_input.c):
    a probe is out of window, and out-of-window segments are answered at most once per
    ``tcp_invalid_ratelimit`` ms. Value: answered or not, per probe, from the probe times."""
    limit = int(ratelimit_ms if ratelimit_ms is not None else m.sysctls.get("tcp_invalid_ratelimit") or 500)
    answered, last = [], None
    for t in times_s:
        ok = last is None or (float(t) - last) * 1000 >= limit
        answered.append(ok)
        if ok:
            last = float(t)
    return Prediction("tcp_oow_rate_limited()", "answer a probe only if ≥ tcp_invalid_ratelimit since the last answer",
                      {"tcp_invalid_ratelimit_ms": limit, "probes": len(answered)}, answered)
