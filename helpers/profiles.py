"""Kernel profiles: the suite run inside a fresh network namespace whose TCP settings are
those of another machine (``python3 course.py test --profile NAME``).

Standard library only: ``course.py`` loads this file before the virtual environment exists.

A profile is a set of per-namespace sysctls. The test runner creates a namespace
``tcpprofile-NAME-PID``, brings its ``lo`` up, writes the sysctls, and runs every stage of
the suite inside it (``ip netns exec``). A fresh namespace also starts with an empty
per-destination metrics cache and zeroed counters, like a learner's first run. Course
namespaces made by the experiments inside copy the profile's settings
(``TCPCOURSE_PROFILE_SYSCTLS``), so the whole run sees one kernel.

Limits of the simulation, said where they matter:
- a non-initial namespace may only default to an *allowed* congestion control
  (``tcp_allowed_congestion_control``, host-wide; ``reno bbr`` on the reference machine):
  a loss-based profile uses reno, and cubic is set per socket with TCP_CONGESTION;
- HZ, the kernel version and compile-time constants cannot change: a profile changes
  settings, not code. Linux 6.1 itself is run under qemu (see COURSE.md).
"""
from __future__ import annotations

PROFILES: dict[str, dict] = {
    "host": {
        "about": "this machine's own settings, in a fresh namespace (empty metrics cache, "
                 "zeroed counters)",
        "sysctls": {},
    },
    "older-distro": {
        "about": "a distribution kernel of a few years ago with stock settings: 6 MiB tcp_rmem[2], "
                 "stock 212,992-byte rmem_max/wmem_max, a loss-based default congestion control, "
                 "doubling SYN retries (no linear timeouts), a smaller SYN backlog",
        "sysctls": {
            "net.ipv4.tcp_rmem": "4096 131072 6291456",
            "net.ipv4.tcp_wmem": "4096 16384 4194304",
            "net.core.rmem_max": "212992",
            "net.core.wmem_max": "212992",
            "net.core.rmem_default": "212992",
            "net.core.wmem_default": "212992",
            "net.ipv4.tcp_congestion_control": "reno",
            "net.ipv4.tcp_syn_linear_timeouts": "0",
            "net.ipv4.tcp_max_syn_backlog": "256",
            "net.core.somaxconn": "4096",
        },
    },
    "tuned-server": {
        "about": "a server tuned for many connections: large buffers, large somaxconn and SYN "
                 "backlog, a short tcp_fin_timeout, a wide ephemeral port range, tw_reuse on",
        "sysctls": {
            "net.ipv4.tcp_rmem": "4096 262144 67108864",
            "net.ipv4.tcp_wmem": "4096 65536 16777216",
            "net.core.rmem_max": "16777216",
            "net.core.wmem_max": "16777216",
            "net.core.somaxconn": "65535",
            "net.ipv4.tcp_max_syn_backlog": "65535",
            "net.ipv4.tcp_fin_timeout": "15",
            "net.ipv4.ip_local_port_range": "1024 65000",
            "net.ipv4.tcp_tw_reuse": "1",
            "net.ipv4.tcp_congestion_control": "bbr",
        },
    },
}

#: What ``python3 course.py test`` runs besides the host itself.
DEFAULT_EXTRA = ("older-distro",)


def names() -> list[str]:
    return list(PROFILES)


def parse_assignments(text: str) -> dict[str, str]:
    """``"net.ipv4.tcp_rmem=4096 131072 6291456,net.core.somaxconn=128"`` -> dict: a profile
    given on the command line (``--profile custom:...``), for profiles not listed here."""
    out: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip().startswith("net."):
            raise ValueError(f"{part!r} is not NAME=VALUE with a net.* sysctl name")
        out[key.strip()] = value.strip()
    return out
