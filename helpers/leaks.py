"""What the course could leave behind, and a check that it did not.

``snapshot()`` records capture processes, network namespaces, iptables rules and every
readable host sysctl under /proc/sys/net; ``leftovers(baseline)`` lists what differs now.
The test suite's last stage and each notebook's closing cell use it.

    python -m helpers.leaks snapshot FILE     # before
    python -m helpers.leaks check FILE        # after: exit 1 and a list when something leaked
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from .errors import CourseError

from .caps import find_tool

CAPTURE_PROCS = ("tcpdump", "dumpcap", "tshark")
# values the kernel changes by itself
VOLATILE = re.compile(r"(nf_conntrack_count|stable_secret|/veth|/tcpc|random|hash_|fastopen_key"
                      r"|neigh/(?!default)|conf/(?!all|default|lo))")


#: ``course.py test`` sets this in the environment of everything it starts; a capture
#: process carrying this run's value was started by this run (a learner's own Wireshark,
#: or another job's tcpdump, does not carry it).
RUN_ID_VAR = "TCPCOURSE_RUN_ID"


def _started_by_run(pid: str, run_id: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:   # another user's process: not ours
        return False
    return f"{RUN_ID_VAR}={run_id}".encode() in env


def capture_processes(parent: int | None = None, run_id: str | None = None) -> list[str]:
    """Running tcpdump/dumpcap/tshark as "PID ARGS": only children of *parent*, or only
    those started under test run *run_id*, if given."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if parent is not None and comm in CAPTURE_PROCS:
                stat = Path(f"/proc/{pid}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
                    continue
            if run_id is not None and comm in CAPTURE_PROCS and not _started_by_run(pid, run_id):
                continue
        except (OSError, ValueError, IndexError):
            continue
        if comm in CAPTURE_PROCS:
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                args = comm
            out.append(f"{pid} {args}")
    return sorted(out)


def namespaces() -> list[str]:
    """The course's network namespaces (``tcpcourse-*``); other namespaces on the machine
    (a container runtime's, another tool's, a kernel profile's) are not the course's to check."""
    from .netns import NS_PREFIX
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(NS_PREFIX))
    except OSError:
        return []


def iptables_rules() -> list[str]:
    rules = []
    for tool in ("iptables", "ip6tables"):
        exe = find_tool(tool)
        if not exe:
            continue
        try:
            out = subprocess.run([exe, "-S"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        rules += [f"{tool} {l}" for l in out.stdout.splitlines() if l and not l.startswith("-P ")]
    return sorted(rules)


def sysctls() -> dict[str, str]:
    """Every net.* sysctl of this namespace (but the volatile ones), as text."""
    from .netns import read_sysctl
    out = {}
    for path in Path("/proc/sys/net").rglob("*"):
        rel = path.relative_to("/proc/sys").as_posix()
        if VOLATILE.search(rel) or not path.is_file():
            continue
        name = rel.replace("/", ".")
        try:
            out[name] = str(read_sysctl(name))
        except (CourseError, OSError):   # write-only or vanished entries
            continue
    return out


def snapshot() -> dict:
    return {"capture_processes": capture_processes(run_id=os.environ.get(RUN_ID_VAR)), "namespaces": namespaces(),
            "iptables": iptables_rules(), "sysctls": sysctls()}


def leftovers(baseline: dict | None = None) -> list[str]:
    """What exists now that did not in *baseline* (or, without one, any capture process,
    course namespace or iptables rule at all)."""
    now = snapshot()
    base = baseline or {"capture_processes": [], "namespaces": [], "iptables": [], "sysctls": now["sysctls"]}
    found = []
    for key in ("capture_processes", "namespaces", "iptables"):
        found += [f"{key}: {x}" for x in sorted(set(now[key]) - set(base[key]))]
    for name, value in sorted(now["sysctls"].items()):
        if name in base["sysctls"] and base["sysctls"][name] != value:
            found.append(f"sysctl changed: {name} = {value} (was {base['sysctls'][name]})")
    return found


def main(argv) -> int:
    if len(argv) != 3 or argv[1] not in ("snapshot", "check"):
        print(__doc__)
        return 2
    if argv[1] == "snapshot":
        Path(argv[2]).write_text(json.dumps(snapshot(), indent=1))
        return 0
    left = leftovers(json.loads(Path(argv[2]).read_text()))
    for item in left:
        print("LEAK", item)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
