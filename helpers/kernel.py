"""The kernel's own view of TCP: ``ss`` snapshots, counters, TCP_INFO, sockstat, sysctls.

Everything here works without privileges on the host (principle 2: run it live);
reading a namespace's view needs the namespace capabilities, like the namespace itself.

- :func:`ss` -- one row per socket from ``ss -tanHOimo``, info fields as columns
- :func:`counters` -- every IP/TCP/UDP counter under its ``nstat`` name
- :func:`nstat_delta` -- ``with nstat_delta() as d: ...`` then ``d["TcpExtListenOverflows"]``
- :func:`tcp_info` / :func:`tcp_info_table` -- ``getsockopt(TCP_INFO)`` decoded
- :func:`sockstat` -- ``/proc/net/sockstat`` and ``sockstat6`` as nested dicts
- :func:`sysctl` -- read a sysctl (this module never writes one; a
  :class:`helpers.netns.Namespace` writes its own, and only per-namespace ones)

Every function takes ``ns=``: ``None`` for this process's network namespace (the
host), or a :class:`helpers.netns.Namespace` (or its name) to look inside one.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import socket as _socket
import struct
import subprocess
from typing import Any, Iterable, Mapping

import pandas as pd

from . import netns as _netns
from .errors import CourseError, MissingToolError, ParameterError

__all__ = [
    "ss",
    "parse_ss_line",
    "counters",
    "nstat_delta",
    "NstatDelta",
    "tcp_info",
    "tcp_info_table",
    "window_closed",
    "fill_until_full",
    "Fill",
    "TcpInfo",
    "sockstat",
    "sysctl",
    "parse_snmp",
    "parse_snmp6",
    "read_counter_files",
    "require_ss",
    "TCP_STATES",
    "SS_STATES",
]

# ======================================================================================
# ss
# ======================================================================================
#: The state names ss prints (ss calls a closed TCP socket "UNCONN"; shown as CLOSED).
SS_STATES = ("ESTAB", "SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2", "TIME-WAIT",
             "CLOSED", "CLOSE-WAIT", "LAST-ACK", "LISTEN", "CLOSING")

# ss's printed name -> ss's filter keyword
_SS_FILTER_NAMES = {
    "ESTAB": "established", "SYN-SENT": "syn-sent", "SYN-RECV": "syn-recv",
    "FIN-WAIT-1": "fin-wait-1", "FIN-WAIT-2": "fin-wait-2", "TIME-WAIT": "time-wait",
    "CLOSED": "closed", "CLOSE-WAIT": "close-wait", "LAST-ACK": "last-ack",
    "LISTEN": "listening", "CLOSING": "closing",
}
_STATE_ALIASES = {
    "ESTABLISHED": "ESTAB", "LISTENING": "LISTEN", "UNCONN": "CLOSED", "CLOSE": "CLOSED",
    "FIN-WAIT1": "FIN-WAIT-1", "FIN-WAIT2": "FIN-WAIT-2", "SYN-RECEIVED": "SYN-RECV",
    "NEW-SYN-RECV": "SYN-RECV",
}
_SS_GROUPS = {"all", "connected", "synchronized", "bucket", "big"}

# Columns every ss() frame has, whether or not ss printed the field.
SS_COLUMNS = [
    "state", "recv_q", "send_q", "local", "lport", "peer", "pport",
    "rtt_ms", "rttvar_ms", "cwnd", "ssthresh", "mss", "rcv_space", "snd_wnd",
    "bytes_sent", "bytes_acked", "bytes_received", "retrans", "unacked", "backoff",
    "cc", "wscale",
    "skmem_r", "skmem_rb", "skmem_t", "skmem_tb", "skmem_f", "skmem_w", "skmem_o",
    "skmem_bl", "skmem_d",
]

# Fields ss prints only when non-zero: on a row that has TCP info they are 0 when absent.
_ZERO_WHEN_ABSENT = {
    "backoff", "bytes_sent", "bytes_retrans", "bytes_acked", "bytes_received",
    "segs_out", "segs_in", "data_segs_out", "data_segs_in", "unacked", "retrans",
    "retrans_now", "lost", "sacked", "dsack_dups", "fackets", "reord_seen", "notsent",
    "rcv_ooopack", "delivered", "delivered_ce", "busy_ms", "rwnd_limited_ms",
    "sndbuf_limited_ms",
}

_KNOWN_CC = {"reno", "cubic", "bbr", "bbr2", "bbr3", "dctcp", "htcp", "vegas", "westwood",
             "bic", "highspeed", "hybla", "illinois", "lp", "nv", "scalable", "veno",
             "yeah", "cdg", "prague"}

_MS_KEYS = {"rto": "rto_ms", "ato": "ato_ms", "minrtt": "min_rtt_ms", "rcv_rtt": "rcv_rtt_ms",
            "lastsnd": "lastsnd_ms", "lastrcv": "lastrcv_ms", "lastack": "lastack_ms"}


def require_ss() -> None:
    if not shutil.which("ss"):
        raise MissingToolError("ss", "iproute2", "it lists the kernel's sockets")


@functools.lru_cache(maxsize=1)
def _ss_version() -> tuple[int, ...]:
    try:
        out = subprocess.run(["ss", "-V"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return (0,)
    m = re.search(r"iproute2-(?:ss)?v?(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0,)


@functools.lru_cache(maxsize=1)
def _cc_names() -> frozenset[str]:
    names = set(_KNOWN_CC)
    try:
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            names.update(f.read().split())
    except OSError:
        pass
    return frozenset(names)


def _norm_state(state: str) -> str:
    s = str(state).strip()
    if s.lower() in _SS_GROUPS:
        return s.lower()
    s = s.upper().replace("_", "-")
    s = _STATE_ALIASES.get(s, s)
    if s not in _SS_FILTER_NAMES:
        raise ParameterError(
            f"{state!r} is not a TCP state ss knows.",
            f"use one of {', '.join(SS_STATES)} (or all/connected/synchronized).")
    return s


def _port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ParameterError(f"{what}={value!r} is not a port number.",
                             "use an integer between 0 and 65535.")
    return value


def _number(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def ss_timer_ms(text: str) -> float | None:
    """ss timer durations, as iproute2's print_ms_timer() writes them: '200ms', '59sec',
    '1.900ms' (1 s 900 ms: the dot stands for "sec"), '2min', '1min2sec', '1min2.500ms'."""
    m = re.fullmatch(r"(?:(\d+)min)?(?:(\d+)(sec|\.))?(?:(\d+)ms)?", text.strip())
    if not m or not any(m.groups()):
        return None
    return float((int(m[1] or 0) * 60 + int(m[2] or 0)) * 1000 + int(m[4] or 0))


def _split_endpoint(text: str) -> tuple[str, int | None]:
    addr, _, port = text.rpartition(":")
    m = re.match(r"^\[(.*)\](%\S+)?$", addr)
    if m:
        addr = m.group(1) + (m.group(2) or "")
    return addr, (None if port == "*" else int(port))


def _bps(text: str) -> int | float | str:
    return _number(text[:-3]) if text.endswith("bps") else _number(text)


def _parse_info(tokens: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    flags: list[str] = []
    cc_names = _cc_names()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("send", "pacing_rate", "delivery_rate") and i + 1 < len(tokens):
            val = tokens[i + 1]
            i += 2
            if tok == "pacing_rate" and "/" in val:
                cur, mx = val.split("/", 1)
                out["pacing_rate_bps"] = _bps(cur)
                out["max_pacing_rate_bps"] = _bps(mx)
            else:
                out[f"{tok}_bps"] = _bps(val)
            continue
        i += 1
        if ":" not in tok:
            if tok in cc_names:
                out["cc"] = tok
            else:
                flags.append(tok)
            continue
        key, val = tok.split(":", 1)
        if val.startswith("(") and val.endswith(")"):
            inner = val[1:-1]
            if key == "skmem":
                for item in inner.split(","):
                    m = re.match(r"^([a-z_]+?)(\d+)$", item)
                    if m:
                        out[f"skmem_{m.group(1)}"] = int(m.group(2))
            elif key == "timer":
                parts = inner.split(",")
                out["timer"] = parts[0]
                if len(parts) > 1:
                    out["timer_ms"] = ss_timer_ms(parts[1])
                if len(parts) > 2 and parts[2].isdigit():
                    out["timer_retrans"] = int(parts[2])
            else:  # bbr:(bw:..,mrtt:..), dctcp:(...), ...
                if key in cc_names:
                    out["cc"] = key
                for item in inner.split(","):
                    sub, _, sval = item.partition(":")
                    if sval:
                        out[f"{key}_{sub}{'_bps' if sval.endswith('bps') else ''}"] = _bps(sval)
            continue
        if key == "rtt" and "/" in val:
            a, b = val.split("/", 1)
            out["rtt_ms"], out["rttvar_ms"] = float(a), float(b)
        elif key == "retrans" and "/" in val:
            a, b = val.split("/", 1)
            out["retrans_now"], out["retrans"] = int(a), int(b)
        elif key == "wscale":
            out["wscale"] = val
            s, _, r = val.partition(",")
            if s.isdigit() and r.isdigit():
                out["snd_wscale"], out["rcv_wscale"] = int(s), int(r)
        elif key in _MS_KEYS:
            out[_MS_KEYS[key]] = float(val)
        elif key == "busy" and val.endswith("ms"):
            out["busy_ms"] = _number(val[:-2])
        elif key in ("rwnd_limited", "sndbuf_limited"):
            m = re.match(r"^(\d+)ms(?:\(([\d.]+)%\))?$", val)
            if m:
                out[f"{key}_ms"] = int(m.group(1))
                if m.group(2):
                    out[f"{key}_pct"] = float(m.group(2))
            else:
                out[key] = val
        else:
            out[key] = _number(val)
    if flags:
        out["ss_flags"] = " ".join(flags)
    return out


def parse_ss_line(line: str, state: str | None = None) -> dict[str, Any] | None:
    """Parse one line of ``ss -tanHOimo`` output into a dict (None for a blank line).

    *state* is used when ss left out the State column (it does when the query asks
    for exactly one state).
    """
    tokens = line.split()
    if not tokens:
        return None
    if tokens[0].isdigit():
        if state is None:
            raise CourseError(f"ss printed a line without a state: {line!r}",
                              "report this: the ss output format changed.")
        row_state = state
    else:
        row_state = _STATE_ALIASES.get(tokens[0], tokens[0])
        tokens = tokens[1:]
    if len(tokens) < 4:
        raise CourseError(f"cannot parse this line of ss output: {line!r}",
                          "report this: the ss output format changed.")
    local, lport = _split_endpoint(tokens[2])
    peer, pport = _split_endpoint(tokens[3])
    row: dict[str, Any] = {
        "state": row_state, "recv_q": int(tokens[0]), "send_q": int(tokens[1]),
        "local": local, "lport": lport, "peer": peer, "pport": pport,
    }
    info_tokens = tokens[4:]
    row.update(_parse_info(info_tokens))
    if "cwnd" in row:  # a socket with TCP info: fill the fields ss omits when zero
        for key in _ZERO_WHEN_ABSENT:
            row.setdefault(key, 0)
        row.setdefault("reordering", 3)
        ver = _ss_version()
        if ver >= (5, 4):
            row.setdefault("snd_wnd", 0)
        if ver >= (6, 7):
            row.setdefault("rcv_wnd", 0)
            row.setdefault("rehash", 0)
    row["info"] = " ".join(info_tokens)
    return row


def _ns_prefix(ns: Any) -> list[str]:
    """argv prefix running a command in namespace *ns* (checks that it exists)."""
    _netns._ip()
    ns = _netns.resolve(ns)
    if isinstance(ns, _netns.Namespace):
        ns._require_open()
        return ns.exec_prefix
    _netns.require_namespace_privileges("looking inside a network namespace")
    if not os.path.exists(os.path.join(_netns.NETNS_RUN_DIR, ns)):
        raise CourseError(f"there is no network namespace called {ns!r}.",
                          "pass the Namespace object of a running experiment.")
    return ["ip", "netns", "exec", ns]


def ss(*, state: str | Iterable[str] | None = None, sport: int | None = None,
       dport: int | None = None, port: int | None = None, ns: Any = None,
       extra_filter: str | None = None) -> pd.DataFrame:
    """One row per TCP socket, from ``ss -tanHOimo`` (optionally inside namespace *ns*).

    Filters are passed to ss itself: ``state`` (``"LISTEN"``, ``"ESTAB"``,
    ``"TIME-WAIT"``, ... or a list of them; kernel spellings such as ``"TIME_WAIT"``
    work too), ``sport``/``dport`` (``sport = :P``), ``port`` (either end), and
    ``extra_filter``, an ss filter expression ANDed to them (``"dst 127.0.0.2"``).

    Columns: ``state`` (ss's names: LISTEN, ESTAB, SYN-SENT, SYN-RECV, FIN-WAIT-1,
    FIN-WAIT-2, TIME-WAIT, CLOSE-WAIT, LAST-ACK, CLOSING, CLOSED), ``recv_q``,
    ``send_q``, ``local``, ``lport``, ``peer``, ``pport`` (IPv6 addresses without
    brackets; a ``*`` port is <NA>), then the TCP info: ``rtt_ms``/``rttvar_ms``,
    ``cwnd``, ``ssthresh``, ``mss`` (the send MSS), ``rcv_space``, ``snd_wnd``,
    ``bytes_sent``, ``bytes_acked``, ``bytes_received``, ``retrans`` (total;
    ``retrans_now`` is the current episode), ``unacked``, ``backoff``, ``cc`` (bbr,
    cubic, ...), ``wscale`` (``"snd,rcv"``), ``skmem_r`` ... ``skmem_d``, the timer
    (``timer``, ``timer_ms``, ``timer_retrans``; e.g. ``timewait``), option flags
    (``ss_flags``: ``"ts sack ecn app_limited ..."``), every other ``key:value`` ss
    prints (rates as ``*_bps`` in bits/s, times as ``*_ms``), and the raw text in
    ``info`` -- read it as ``df["info"]``: ``df.info`` is a pandas method.

    How to read it:

    - For a **LISTEN** socket, ``recv_q`` is the current length of the accept queue
      (connections completed by the kernel, not yet accept()ed) and ``send_q`` is the
      backlog (``listen(backlog)`` capped by ``net.core.somaxconn``). The queue holds
      backlog + 1 before the kernel starts dropping. ``unacked`` on a LISTEN row is
      the accept queue length again (that is what TCP_INFO reports for a listener).
    - For other sockets ``recv_q``/``send_q`` are bytes not yet read by the
      application / not yet acknowledged by the peer.
    - ss omits counters that are zero (``bytes_sent``, ``retrans``, ``unacked``,
      ``snd_wnd`` ...); on rows with TCP info they are filled with 0 here. Rows
      without TCP info (TIME-WAIT, SYN-RECV) have <NA>/NaN there. ``ssthresh`` is
      NaN while it is still "infinite" (no loss seen yet).
    """
    require_ss()
    argv = ["ss", "-tanHOimo"]
    single_state = None
    if state is not None:
        states = [state] if isinstance(state, str) else list(state)
        if not states:
            raise ParameterError("state=[] asks for no state at all.",
                                 "pass a state such as 'LISTEN', or None for all.")
        norm = [_norm_state(s) for s in states]
        for s in norm:
            argv += ["state", s if s in _SS_GROUPS else _SS_FILTER_NAMES[s]]
        distinct = {s for s in norm}
        if len(distinct) == 1 and next(iter(distinct)) not in _SS_GROUPS:
            single_state = next(iter(distinct))
    exprs = []
    if sport is not None:
        exprs.append(f"sport = :{_port(sport, 'sport')}")
    if dport is not None:
        exprs.append(f"dport = :{_port(dport, 'dport')}")
    if port is not None:
        p = _port(port, "port")
        exprs.append(f"( sport = :{p} or dport = :{p} )")
    if extra_filter:
        exprs.append(f"( {extra_filter} )")
    if exprs:
        argv.append(" and ".join(exprs))
    if ns is not None:
        argv = _ns_prefix(ns) + argv
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise CourseError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}",
                          "check the filter expression (see `man ss`, FILTER).")
    rows = [r for r in (parse_ss_line(line, single_state)
                        for line in proc.stdout.splitlines()) if r]
    return _frame(rows)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    extra: list[str] = []
    for r in rows:
        for k in r:
            if k not in SS_COLUMNS and k != "info" and k not in extra:
                extra.append(k)
    columns = SS_COLUMNS + extra + ["info"]
    df = pd.DataFrame(rows, columns=columns)
    for col in columns:
        vals = [v for v in df[col].tolist() if v is not None and not (isinstance(v, float) and v != v)]
        if not vals:
            if col in ("state", "local", "peer", "cc", "wscale", "info", "timer", "ss_flags"):
                df[col] = df[col].astype(object)
            elif col.endswith("_ms") or col.endswith("_pct"):
                df[col] = df[col].astype(float)
            else:
                df[col] = df[col].astype("Int64")
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            df[col] = df[col].astype("Int64")
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            df[col] = df[col].astype(float)
    return df


# ======================================================================================
# counters (nstat names)
# ======================================================================================
def parse_snmp(text: str, out: dict[str, int]) -> None:
    """/proc/net/snmp and /proc/net/netstat: pairs of 'Prefix: names' / 'Prefix: values'."""
    lines = [l for l in text.splitlines() if l.strip()]
    for head, vals in zip(lines[0::2], lines[1::2]):
        p1, _, names = head.partition(":")
        p2, _, values = vals.partition(":")
        if p1 != p2:
            continue
        for n, v in zip(names.split(), values.split()):
            try:
                out[p1 + n] = int(v)
            except ValueError:
                pass


def parse_snmp6(text: str, out: dict[str, int]) -> None:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass


def read_counter_files() -> dict[str, str]:
    """The raw text of /proc/net/snmp, netstat and snmp6 of the calling thread's namespace."""
    texts = {}
    for name in ("snmp", "netstat", "snmp6"):
        try:
            with open(f"/proc/thread-self/net/{name}") as f:
                texts[name] = f.read()
        except FileNotFoundError:  # snmp6 is absent when IPv6 is disabled
            pass
    return texts


def _in_ns(ns: Any, fn, *args):
    if ns is None:
        return fn(*args)
    ns = _netns.resolve(ns)
    if isinstance(ns, _netns.Namespace):
        return ns.call(fn, *args)
    return _netns.call_in_netns(ns, fn, *args)


def counters(ns: Any = None) -> dict[str, int]:
    """Every IP/ICMP/TCP/UDP counter of the host (or of namespace *ns*), nstat-named.

    Read from ``/proc/net/snmp`` (``TcpActiveOpens``, ``IpInReceives``,
    ``UdpInDatagrams`` ...), ``/proc/net/netstat`` (``TcpExtListenOverflows``,
    ``TcpExtSyncookiesSent``, ``IpExtInOctets``, ``MPTcpExt...``) and
    ``/proc/net/snmp6`` (``Ip6...``, ``Icmp6...``, ``Udp6...``): the same files and
    names ``nstat -a`` shows. Values are totals since the namespace was created, not
    deltas; a few are gauges (``TcpCurrEstab``) or constants (``TcpRtoMin``).
    """
    texts = _in_ns(ns, read_counter_files)
    out: dict[str, int] = {}
    for key in ("snmp", "netstat"):
        if key in texts:
            parse_snmp(texts[key], out)
    if "snmp6" in texts:
        parse_snmp6(texts["snmp6"], out)
    return out


class NstatDelta:
    """Counter changes around a block: ``with nstat_delta() as d: ...``.

    After the block ``d.delta`` holds the counters that changed (after - before);
    inside the block it is computed live. ``d["TcpExtListenOverflows"]`` is 0 for a
    counter that did not change or does not exist, ``d.table()`` is a DataFrame
    sorted by counter name.

    The host's counters are noisy: the Jupyter kernel itself talks TCP over lo (and
    so does everything else on the machine), so on the host compare with ``>=`` or
    filter on what you expect. Inside a fresh :class:`~helpers.netns.Namespace` the
    counters start at 0 and only your experiment moves them: exact counts hold there.
    """

    def __init__(self, ns: Any = None):
        self.ns = ns
        self.before: dict[str, int] | None = None
        self.after: dict[str, int] | None = None

    def __enter__(self) -> "NstatDelta":
        self.before = counters(self.ns)
        self.after = None
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.after = counters(self.ns)
        return False

    @staticmethod
    def _diff(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
        out = {}
        for k in set(before) | set(after):
            d = after.get(k, 0) - before.get(k, 0)
            if d:
                out[k] = d
        return dict(sorted(out.items()))

    @property
    def delta(self) -> dict[str, int]:
        if self.before is None:
            raise CourseError("nstat_delta was not entered.",
                              "use it as `with nstat_delta() as d: ...`.")
        after = self.after if self.after is not None else counters(self.ns)
        return self._diff(self.before, after)

    def __getitem__(self, name: str) -> int:
        return self.delta.get(name, 0)

    def get(self, name: str, default: int = 0) -> int:
        return self.delta.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in self.delta

    def table(self, prefix: str | None = None) -> pd.DataFrame:
        """Changed counters (optionally only those starting with *prefix*), by name."""
        delta = self.delta
        before = self.before or {}
        after = self.after if self.after is not None else {k: before.get(k, 0) + v
                                                           for k, v in delta.items()}
        rows = [{"counter": k, "before": before.get(k, 0), "after": after.get(k, 0),
                 "delta": v}
                for k, v in sorted(delta.items()) if prefix is None or k.startswith(prefix)]
        return pd.DataFrame(rows, columns=["counter", "before", "after", "delta"])

    def __repr__(self) -> str:
        where = "host" if self.ns is None else _netns._ns_name(self.ns)
        state = ("not entered" if self.before is None else
                 "open" if self.after is None else f"{len(self.delta)} changed")
        return f"<nstat_delta {where}: {state}>"


def nstat_delta(ns: Any = None) -> NstatDelta:
    """``with nstat_delta(ns=None) as d:`` -- see :class:`NstatDelta`."""
    return NstatDelta(ns)


# ======================================================================================
# TCP_INFO
# ======================================================================================
# struct tcp_info of include/uapi/linux/tcp.h, in order (Linux 6.18: 280 bytes).
_TCPI_FIELDS: list[tuple[str, str]] = [
    ("state", "B"), ("ca_state", "B"), ("retransmits", "B"), ("probes", "B"),
    ("backoff", "B"), ("options", "B"), ("_wscale", "B"), ("_flags", "B"),
    ("rto", "I"), ("ato", "I"), ("snd_mss", "I"), ("rcv_mss", "I"),
    ("unacked", "I"), ("sacked", "I"), ("lost", "I"), ("retrans", "I"), ("fackets", "I"),
    ("last_data_sent", "I"), ("last_ack_sent", "I"), ("last_data_recv", "I"),
    ("last_ack_recv", "I"),
    ("pmtu", "I"), ("rcv_ssthresh", "I"), ("rtt", "I"), ("rttvar", "I"),
    ("snd_ssthresh", "I"), ("snd_cwnd", "I"), ("advmss", "I"), ("reordering", "I"),
    ("rcv_rtt", "I"), ("rcv_space", "I"), ("total_retrans", "I"),
    ("pacing_rate", "Q"), ("max_pacing_rate", "Q"), ("bytes_acked", "Q"),
    ("bytes_received", "Q"), ("segs_out", "I"), ("segs_in", "I"),
    ("notsent_bytes", "I"), ("min_rtt", "I"), ("data_segs_in", "I"), ("data_segs_out", "I"),
    ("delivery_rate", "Q"),
    ("busy_time", "Q"), ("rwnd_limited", "Q"), ("sndbuf_limited", "Q"),
    ("delivered", "I"), ("delivered_ce", "I"),
    ("bytes_sent", "Q"), ("bytes_retrans", "Q"), ("dsack_dups", "I"), ("reord_seen", "I"),
    ("rcv_ooopack", "I"), ("snd_wnd", "I"), ("rcv_wnd", "I"), ("rehash", "I"),
    ("total_rto", "H"), ("total_rto_recoveries", "H"), ("total_rto_time", "I"),
    ("received_ce", "I"), ("delivered_e1_bytes", "I"), ("delivered_e0_bytes", "I"),
    ("delivered_ce_bytes", "I"), ("received_e1_bytes", "I"), ("received_e0_bytes", "I"),
    ("received_ce_bytes", "I"), ("accecn_fail_mode", "H"), ("accecn_opt_seen", "H"),
]


def _layout() -> tuple[list[tuple[str, str, int]], int]:
    off, out, align_max = 0, [], 1
    for name, fmt in _TCPI_FIELDS:
        size = struct.calcsize("=" + fmt)
        off = (off + size - 1) // size * size
        out.append((name, fmt, off))
        off += size
        align_max = max(align_max, size)
    return out, (off + align_max - 1) // align_max * align_max


_TCPI_LAYOUT, TCP_INFO_SIZE = _layout()

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
              5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK",
              10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV", 13: "BOUND_INACTIVE"}
CA_STATES = {0: "Open", 1: "Disorder", 2: "CWR", 3: "Recovery", 4: "Loss"}
TCPI_OPTIONS = {1: "timestamps", 2: "sack", 4: "wscale", 8: "ecn", 16: "ecn_seen",
                32: "syn_data", 64: "usec_ts", 128: "tfo_child"}

#: Units of the decoded fields (for display).
TCP_INFO_UNITS = {
    **{k: "µs" for k in ("rto", "ato", "rtt", "rttvar", "rcv_rtt", "min_rtt",
                         "busy_time", "rwnd_limited", "sndbuf_limited")},
    **{k: "ms" for k in ("last_data_sent", "last_ack_sent", "last_data_recv",
                         "last_ack_recv", "total_rto_time")},
    **{k: "bytes/s" for k in ("pacing_rate", "max_pacing_rate", "delivery_rate")},
    **{k: "bytes" for k in ("snd_mss", "rcv_mss", "advmss", "pmtu", "rcv_ssthresh",
                            "rcv_space", "bytes_acked", "bytes_received", "bytes_sent",
                            "bytes_retrans", "notsent_bytes", "snd_wnd", "rcv_wnd",
                            "delivered_e1_bytes", "delivered_e0_bytes",
                            "delivered_ce_bytes", "received_e1_bytes",
                            "received_e0_bytes", "received_ce_bytes")},
    **{k: "segments" for k in ("snd_cwnd", "snd_ssthresh", "unacked", "sacked", "lost",
                               "retrans", "fackets", "segs_out", "segs_in",
                               "data_segs_in", "data_segs_out", "delivered",
                               "delivered_ce", "reordering")},
}

_DERIVED = [
    ("length", int), ("cc", "str | None"), ("state_num", "int | None"),
    ("ca_state_num", "int | None"), ("snd_wscale", "int | None"),
    ("rcv_wscale", "int | None"), ("delivery_rate_app_limited", "bool | None"),
    ("fastopen_client_fail", "int | None"),
    ("opt_timestamps", "bool | None"), ("opt_sack", "bool | None"),
    ("opt_wscale", "bool | None"), ("opt_ecn", "bool | None"),
    ("opt_ecn_seen", "bool | None"), ("opt_syn_data", "bool | None"),
    ("opt_usec_ts", "bool | None"), ("opt_tfo_child", "bool | None"),
    ("option_names", "tuple[str, ...]"),
]


class _TcpInfoBase:
    def as_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (None where the kernel did not return them)."""
        return dataclasses.asdict(self)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def table(self) -> pd.DataFrame:
        return _info_table(self)


TcpInfo = dataclasses.make_dataclass(
    "TcpInfo",
    [(name, "Any", dataclasses.field(default=None))
     for name, _fmt in _TCPI_FIELDS if not name.startswith("_")]
    + [(name, typ, dataclasses.field(default=None)) for name, typ in _DERIVED],
    bases=(_TcpInfoBase,),
    namespace={"__doc__": (
        "struct tcp_info decoded. ``state``/``ca_state`` are names (``ESTABLISHED``, "
        "``Open``); numbers are in ``state_num``/``ca_state_num``. Times: rto, ato, "
        "rtt, rttvar, rcv_rtt, min_rtt, busy_time, *_limited in µs; last_* and "
        "total_rto_time in ms; pacing/delivery rates in bytes/s (ss shows bits/s). "
        "snd_ssthresh is 2147483647 while 'infinite'. For a LISTEN socket the kernel "
        "puts the accept-queue length in ``unacked`` and the backlog in ``sacked``. "
        "Fields the running kernel did not return are None; ``length`` is how many "
        "bytes it returned; ``cc`` is the congestion control (TCP_CONGESTION).")},
)


def decode_tcp_info(buf: bytes, cc: str | None = None) -> "TcpInfo":
    """Decode a TCP_INFO buffer; fields beyond ``len(buf)`` stay None (older kernels)."""
    values: dict[str, Any] = {}
    for name, fmt, off in _TCPI_LAYOUT:
        size = struct.calcsize("=" + fmt)
        if off + size > len(buf):
            break
        values[name] = struct.unpack_from("=" + fmt, buf, off)[0]
    info: dict[str, Any] = {k: v for k, v in values.items() if not k.startswith("_")}
    info["length"] = len(buf)
    info["cc"] = cc
    if "state" in values:
        info["state_num"] = values["state"]
        info["state"] = TCP_STATES.get(values["state"], str(values["state"]))
    if "ca_state" in values:
        info["ca_state_num"] = values["ca_state"]
        info["ca_state"] = CA_STATES.get(values["ca_state"], str(values["ca_state"]))
    if "_wscale" in values:
        info["snd_wscale"] = values["_wscale"] & 0x0F
        info["rcv_wscale"] = values["_wscale"] >> 4
    if "_flags" in values:
        info["delivery_rate_app_limited"] = bool(values["_flags"] & 1)
        info["fastopen_client_fail"] = (values["_flags"] >> 1) & 3
    if "options" in values:
        opts = values["options"]
        for bit, oname in TCPI_OPTIONS.items():
            info[f"opt_{oname}"] = bool(opts & bit)
        info["option_names"] = tuple(n for b, n in TCPI_OPTIONS.items() if opts & b)
    return TcpInfo(**info)


def tcp_info(sock: _socket.socket) -> "TcpInfo":
    """``getsockopt(IPPROTO_TCP, TCP_INFO)`` of *sock*, decoded (see :class:`TcpInfo`).

    Only as many fields as the running kernel returned are decoded, so the same code
    works on older kernels (fields they do not know are None).
    """
    if not isinstance(sock, _socket.socket) or sock.type != _socket.SOCK_STREAM:
        raise ParameterError(f"{sock!r} is not a TCP socket.",
                             "pass a socket.socket(AF_INET/AF_INET6, SOCK_STREAM).")
    buf = sock.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_INFO, max(512, TCP_INFO_SIZE))
    try:
        cc = sock.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_CONGESTION, 16)
        cc = cc.split(b"\0", 1)[0].decode() or None
    except OSError:
        cc = None
    return decode_tcp_info(buf, cc)


def window_closed(sock: _socket.socket) -> bool:
    """True when the writer holds bytes it may not send because the peer's window has no
    room for them (TCP_INFO: the window left after the bytes in flight is smaller than the
    next segment). A socket that is merely waiting for an ACK (a delayed ACK can take
    40 ms or more, longer on a busy machine) is not full yet: that wait ends by itself."""
    i = tcp_info(sock)
    in_flight = i.bytes_sent - i.bytes_retrans - (i.bytes_acked - 1)   # bytes_acked counts the SYN
    return i.notsent_bytes > 0 and i.snd_wnd - in_flight < min(i.snd_mss, i.notsent_bytes)


@dataclasses.dataclass
class Fill:
    """What :func:`fill_until_full` did: bytes accepted, ``send()`` calls (and what each
    took), how many raised EAGAIN (and after how many bytes the first did), how often
    the socket became writable again, and the largest window the writer saw."""

    written: int = 0
    calls: int = 0
    sizes: list = dataclasses.field(default_factory=list)
    eagain: int = 0
    first_eagain: int | None = None
    waits: int = 0
    seconds: float = 0.0
    max_snd_wnd: int = 0
    full: bool = False          # stopped because the socket was full (not a limit or the clock)


def fill_until_full(sock: _socket.socket, *, chunk: int = 65536, limit: int = 64 << 20,
                    seconds: float = 3.0, settle: float = 0.05, watch_window: bool = False) -> Fill:
    """Write *chunk*-sized non-blocking ``send()`` calls to *sock* until it is full, bounded
    by *limit* bytes and *seconds*. The one fill loop of the course (02_01, 02_05, ...).

    "Full" is what the kernel means by it: ``send()`` raised EAGAIN although, before that
    call, the peer's window was already closed (:func:`window_closed`) and nothing was in
    flight (TCP_INFO ``unacked`` 0). Only then can no ACK arrive that frees memory or grows
    the send buffer (``tcp_new_space()`` -> ``tcp_sndbuf_expand()`` runs when an ACK frees
    queue space, and with more segments in flight it may raise ``SO_SNDBUF`` mid-fill).
    A single EAGAIN is not "full": the writer may only be waiting for a (delayed) ACK, so
    it waits up to *settle* s for writability and tries again. *watch_window* samples
    TCP_INFO ``snd_wnd`` after every send into :attr:`Fill.max_snd_wnd`.
    """
    import select
    import time
    sock.setblocking(False)
    buf = memoryview(b"x" * chunk)
    out = Fill(max_snd_wnd=tcp_info(sock).snd_wnd or 0)
    quiet = False          # window closed and nothing in flight, seen before the last send()
    t0 = time.monotonic()
    deadline = t0 + seconds
    while out.written < limit and time.monotonic() < deadline:
        try:
            n = sock.send(buf[:min(chunk, limit - out.written)])
        except BlockingIOError:
            out.eagain += 1
            if out.first_eagain is None:
                out.first_eagain = out.written
            if quiet:
                out.full = True
                break
            if select.select([], [sock], [], settle)[1]:
                out.waits += 1
            else:
                quiet = window_closed(sock) and not tcp_info(sock).unacked
            continue
        quiet = False
        out.calls += 1
        out.written += n
        out.sizes.append(n)
        if watch_window:
            out.max_snd_wnd = max(out.max_snd_wnd, tcp_info(sock).snd_wnd or 0)
    out.seconds = time.monotonic() - t0
    return out


def _info_table(info: "TcpInfo") -> pd.DataFrame:
    rows = []
    for key, val in info.as_dict().items():
        if val is None:
            continue
        if isinstance(val, tuple):
            val = ", ".join(val) or "-"
        unit = TCP_INFO_UNITS.get(key)
        rows.append({"field": f"{key} [{unit}]" if unit else key, "value": val})
    return pd.DataFrame(rows, columns=["field", "value"])


def tcp_info_table(sock_or_info: Any) -> pd.DataFrame:
    """TCP_INFO as a 2-column DataFrame (``field`` with its unit, ``value``) for display."""
    info = sock_or_info if isinstance(sock_or_info, _TcpInfoBase) else tcp_info(sock_or_info)
    return _info_table(info)


# ======================================================================================
# sockstat, sysctl
# ======================================================================================
def _read_sockstat_files() -> dict[str, str]:
    texts = {}
    for name in ("sockstat", "sockstat6"):
        try:
            with open(f"/proc/thread-self/net/{name}") as f:
                texts[name] = f.read()
        except FileNotFoundError:
            pass
    return texts


def sockstat(ns: Any = None) -> dict[str, dict[str, int]]:
    """``/proc/net/sockstat`` (+ ``sockstat6``) as ``{"TCP": {"inuse":.., "orphan":..,
    "tw":.., "alloc":.., "mem":..}, "UDP": {...}, "TCP6": {"inuse":..}, "sockets":
    {"used":..}, ...}``.

    ``mem`` is in pages. Measured on Linux 6.18: inside a namespace ``inuse`` and
    ``tw`` are the namespace's own, but TCP ``alloc``, ``orphan`` and ``mem`` are
    machine-wide (the kernel keeps one TCP memory pool and allocation counter).
    """
    texts = _in_ns(ns, _read_sockstat_files)
    out: dict[str, dict[str, int]] = {}
    for text in texts.values():
        for line in text.splitlines():
            head, _, rest = line.partition(":")
            toks = rest.split()
            if not head or len(toks) % 2:
                continue
            out[head.strip()] = {k: int(v) for k, v in zip(toks[0::2], toks[1::2])}
    return out


def sysctl(name: str, ns: Any = None) -> int | str:
    """Read sysctl *name* (``"net.ipv4.tcp_syncookies"``) of the host or of *ns*.

    Returns an int when the value is a single integer, otherwise the text with
    whitespace collapsed (``"4096 131072 6291456"``). Deliberately read-only: to
    change a sysctl, use ``Namespace(sysctls={...})`` or ``ns.sysctl(name, value)``,
    which write inside a course namespace only.
    """
    return _netns.read_sysctl(name, _netns.resolve(ns))


#: /proc/net/tcp state numbers (include/net/tcp_states.h) as ss prints them
PROC_STATES = {1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2",
               6: "TIME-WAIT", 7: "CLOSED", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN",
               11: "CLOSING", 12: "SYN-RECV"}
#: /proc/net/tcp timer codes (the "tr" field)
PROC_TIMERS = {0: None, 1: "on", 2: "keepalive", 3: "timewait", 4: "persist"}


def parse_proc_tcp(text: str, ports: set[int] | None = None, clk_tck: int | None = None) -> list[dict]:
    """Rows of /proc/net/tcp (IPv4): local and remote port, state (ss's names; a TIME_WAIT
    entry shows its substate, FIN-WAIT-2 for an orphan handed over by tcp_time_wait()),
    the timer and its remaining seconds (the kernel prints clock ticks, USER_HZ).
    *ports*: keep rows whose local or remote port is one of these; LISTEN rows are left out."""
    tck = clk_tck or os.sysconf("SC_CLK_TCK")
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 6:
            continue
        lport = int(f[1].rsplit(":", 1)[1], 16)
        rport = int(f[2].rsplit(":", 1)[1], 16)
        st = int(f[3], 16)
        if st == 10 or (ports is not None and lport not in ports and rport not in ports):
            continue
        tr, _, when = f[5].partition(":")
        timer = PROC_TIMERS.get(int(tr, 16), tr)
        out.append({"lport": lport, "rport": rport, "state": PROC_STATES.get(st, str(st)),
                    "timer": timer, "timer_s": round(int(when, 16) / tck, 3) if timer else None})
    return out


def count_syn_recv(text: str, port: int) -> int:
    """Half-open entries (state SYN-RECV) of the listener on *port* in the text of
    /proc/net/tcp (cheap enough to sample every few milliseconds)."""
    suffix = f":{port:04X}"
    n = 0
    for line in text.splitlines()[1:]:
        f = line.split(None, 4)
        if len(f) > 3 and f[3] == "03" and f[1].endswith(suffix):
            n += 1
    return n


def syn_recv_count(port: int, ns: Any = None) -> int:
    """Half-open entries (SYN-RECV) of the listener on *port*, on the host or inside *ns*."""
    from .netns import read_proc
    return count_syn_recv(read_proc("net/tcp", ns), port)
