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
#: or another job's tcpdump, does not carry it). tcpdump (helpers.capture) and tshark
#: (pyshark, helpers.wireshark) inherit the environment they are started with, and so
#: does the dumpcap that tshark starts to capture.
RUN_ID_VAR = "TCPCOURSE_RUN_ID"
#: How far up the process tree a capture process is traced to the run that started it.
MAX_ANCESTORS = 64


def _environ(pid: int | str) -> list[bytes]:
    """A process's environment; OSError when it cannot be read (another user's process,
    or a set-capability binary such as a setcap'd dumpcap, which the kernel marks
    non-dumpable even for its own user)."""
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def _parent(pid: int | str) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _started_by_run(pid: int | str, run_id: str) -> bool:
    """Did test run *run_id* start process *pid*? Its environment says so. Where that
    cannot be read, its nearest ancestor whose environment can be read decides (a dumpcap
    with file capabilities, started by a tshark of this run, is this run's)."""
    tag = f"{RUN_ID_VAR}={run_id}".encode()
    for _ in range(MAX_ANCESTORS):
        try:
            return tag in _environ(pid)
        except OSError:
            pass
        try:
            pid = _parent(pid)
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
    return False


def capture_processes(parent: int | None = None, run_id: str | None = None) -> list[str]:
    """Running tcpdump/dumpcap/tshark as "PID ARGS": only children of *parent*, or only
    those started under test run *run_id*, if given."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if comm not in CAPTURE_PROCS:
                continue
            if parent is not None and _parent(pid) != parent:
                continue
            if run_id is not None and not _started_by_run(pid, run_id):
                continue
        except (OSError, ValueError, IndexError):
            continue
        try:   # empty for a process that is exiting (a zombie): then its name
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip() or comm
        except OSError:
            args = comm
        out.append(f"{pid} {args}")
    return sorted(out)


def namespaces(run_id: str | None = None) -> list[str]:
    """The course's network namespaces (``tcpcourse-<pid>-*``); other namespaces on the
    machine (a container runtime's, another tool's, a kernel profile's) are not the course's
    to check. With *run_id*, a namespace whose creator is still running but was not
    started by that run is another job's, and is left out; one whose creator is gone is
    kept (nobody else will remove it)."""
    from .netns import NS_PREFIX, list_course_namespaces
    out = []
    for name in list_course_namespaces():
        pid = name[len(NS_PREFIX):].split("-", 1)[0]
        if run_id is not None and pid.isdigit() and Path(f"/proc/{pid}").exists() \
                and not _started_by_run(pid, run_id):
            continue
        out.append(name)
    return out


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
    run_id = os.environ.get(RUN_ID_VAR)
    return {"capture_processes": capture_processes(run_id=run_id), "namespaces": namespaces(run_id),
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
