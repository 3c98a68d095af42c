"""The leak check watches only what the course started: not a learner's own Wireshark or
tcpdump, not another job's, not namespaces the course did not make."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import caps, leaks

ROOT = Path(__file__).resolve().parents[1]


def _fake_capture(tmp_path, env_extra: dict) -> subprocess.Popen:
    exe = tmp_path / "tcpdump"          # a process whose name is "tcpdump" (it only sleeps)
    if not exe.exists():
        shutil.copy(shutil.which("sleep"), exe)
    env = {k: v for k, v in os.environ.items() if k != leaks.RUN_ID_VAR}
    return subprocess.Popen([str(exe), "30"], env={**env, **env_extra})


def test_capture_processes_of_this_run_only(tmp_path):
    ours = _fake_capture(tmp_path, {leaks.RUN_ID_VAR: "run-under-test"})
    theirs = _fake_capture(tmp_path, {})
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            everything = leaks.capture_processes()
            if sum(f"{tmp_path}/tcpdump" in p for p in everything) == 2:
                break
            time.sleep(0.05)
        mine = leaks.capture_processes(run_id="run-under-test")
        assert [p.split()[0] for p in mine if f"{tmp_path}/tcpdump" in p] == [str(ours.pid)]
        assert any(p.startswith(f"{theirs.pid} ") for p in everything)
    finally:
        for p in (ours, theirs):
            p.kill()
            p.wait()


def test_only_course_namespaces_are_watched():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("creating a namespace needs root")
    name = f"notcourse-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name not in leaks.namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


# -- real tshark: a learner's own is not the course's; the course's (and its dumpcap) is --
def _long_pcap(path: Path, packets: int = 100_000) -> None:
    """A pcap of *packets* identical Ethernet/IPv4/TCP SYNs on 127.0.0.1 (seconds of tshark)."""
    import struct
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    tcp = struct.pack("!HHIIBBHHH", 40000, 9, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    frame = b"\0" * 12 + b"\x08\x00" + ip + tcp
    record = struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + record * packets)


def _tshark_on_lo(env: dict, tmp_path: Path) -> subprocess.Popen:
    """`tshark -i lo -a duration:30`, capturing nothing (a filter no packet matches); where
    this user may not capture, a tshark that dissects a long file for as long instead."""
    exe = shutil.which("tshark")
    if caps.capabilities().live_capture:
        argv = [exe, "-i", "lo", "-a", "duration:30", "-q", "-w", os.devnull,
                "-f", "udp port 9 and host 127.0.0.254"]
    else:
        pcap = tmp_path / "long.pcap"
        if not pcap.exists():
            _long_pcap(pcap, 200_000)
        argv = [exe, "-r", str(pcap), "-T", "pdml"]
    with open(tmp_path / f"tshark-{time.time_ns()}.err", "w") as err:   # shown if it fails
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    proc.errfile = err.name
    return proc


def _ppid(pid) -> int:
    """The parent of *pid*, or -1 once it has exited."""
    try:
        return leaks._parent(pid)
    except (OSError, ValueError, IndexError):
        return -1


def _family(root: subprocess.Popen, timeout: float = 10) -> list[str]:
    """Capture processes of *root*'s tree (tshark and the dumpcap it starts), once both run.
    The short-lived `dumpcap -D` that lists the interfaces first is left out."""
    want = ("tshark", "dumpcap") if caps.capabilities().live_capture else ("tshark",)
    deadline = time.monotonic() + timeout
    while True:
        procs = [p for p in leaks.capture_processes()
                 if (int(p.split()[0]) == root.pid or _ppid(p.split()[0]) == root.pid)
                 and "-D" not in p.split() and len(p.split()) > 1]
        if all(any(w in p.split()[1] for p in procs) for w in want) or time.monotonic() > deadline:
            return procs
        if root.poll() is not None:
            pytest.fail(f"tshark exited at once ({root.returncode}): {Path(root.errfile).read_text()}")
        time.sleep(0.05)


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)


@pytest.fixture
def run_id(monkeypatch):
    rid = f"leakscope-{os.getpid()}-{time.time_ns()}"
    monkeypatch.setenv(leaks.RUN_ID_VAR, rid)
    return rid


def test_foreign_tshark_does_not_fail_the_leak_check(tmp_path, run_id):
    """A tshark the learner started (not carrying this run's id) while the suite ran: the
    leak stage itself (tests/leaks) passes; a tshark the run started is caught."""
    if not shutil.which("tshark"):
        pytest.skip("tshark is not installed")
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(leaks.snapshot()))
    foreign_env = {k: v for k, v in os.environ.items() if k != leaks.RUN_ID_VAR}
    foreign = _tshark_on_lo(foreign_env, tmp_path)
    ours = None
    try:
        theirs = _family(foreign)
        assert theirs, "the learner's tshark is running"
        assert not set(theirs) & set(leaks.capture_processes(run_id=run_id))
        stage = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                 "tests/leaks/test_leaks.py::test_no_capture_process_left"]
        env = dict(os.environ, TCPCOURSE_LEAK_BASELINE=str(baseline))
        out = subprocess.run(stage, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"a foreign tshark failed the leak stage:\n{out.stdout}{out.stderr}"

        ours = _tshark_on_lo(dict(os.environ), tmp_path)      # carries TCPCOURSE_RUN_ID, as course.py's children do
        mine = _family(ours)
        assert set(mine) <= set(leaks.capture_processes(run_id=run_id)), "tshark and its dumpcap are the run's"
        out = subprocess.run(stage, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and f"{ours.pid} " in out.stdout, \
            f"the leak stage missed the run's own tshark:\n{out.stdout}{out.stderr}"
    finally:
        _stop(foreign, *([ours] if ours else []))


def test_pyshark_tshark_carries_the_run_id(tmp_path, run_id):
    """pyshark (helpers.wireshark) starts tshark with the caller's environment, so a tshark
    the course starts is recognised as the run's. tshark
    keeps reading a long capture (100,000 packets) while the test looks."""
    if not shutil.which("tshark"):
        pytest.skip("tshark is not installed")
    pcap = tmp_path / "long.pcap"
    _long_pcap(pcap)
    code = ("import sys; from helpers import wireshark as w; "
            "w._in_worker(lambda loop: list(w._file_capture(loop, sys.argv[1])))")
    child = subprocess.Popen([sys.executable, "-c", code, str(pcap)], cwd=ROOT, env=dict(os.environ),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and child.poll() is None:
            tree = [p for p in leaks.capture_processes() if _ppid(p.split()[0]) == child.pid]
            if tree:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read()
        assert tree, "pyshark started no tshark"
        assert set(tree) <= set(leaks.capture_processes(run_id=run_id))
        assert not set(tree) & set(leaks.capture_processes(run_id="another-run"))
    finally:
        _stop(child)


def test_unreadable_environment_is_traced_to_its_parent(tmp_path, run_id, monkeypatch):
    """A dumpcap with file capabilities cannot have its environment read, even by its own
    user: its parent (a tshark of this run, or not) decides."""
    exe = tmp_path / "dumpcap"          # named like the capture process, it only sleeps
    shutil.copy(shutil.which("sleep"), exe)
    foreign_env = {k: v for k, v in os.environ.items() if k != leaks.RUN_ID_VAR}
    parents = {who: subprocess.Popen(["sh", "-c", f"{exe} 30 & wait"], env=env, start_new_session=True)
               for who, env in (("ours", dict(os.environ)), ("theirs", foreign_env))}
    try:
        deadline = time.monotonic() + 10
        children: dict[str, int] = {}
        while len(children) < 2 and time.monotonic() < deadline:
            for line in leaks.capture_processes():
                pid = int(line.split()[0])
                for who, parent in parents.items():
                    if str(exe) in line and _ppid(pid) == parent.pid:
                        children[who] = pid
            time.sleep(0.05)
        assert len(children) == 2, f"the fake dumpcaps did not start: {children}"
        hidden = set(children.values())
        real = leaks._environ

        def environ(pid):
            if int(pid) in hidden:
                raise PermissionError(f"/proc/{pid}/environ: non-dumpable")
            return real(pid)
        monkeypatch.setattr(leaks, "_environ", environ)
        mine = {int(p.split()[0]) for p in leaks.capture_processes(run_id=run_id)}
        assert children["ours"] in mine, "traced through its parent to this run"
        assert children["theirs"] not in mine, "its parent does not carry the run's id"
    finally:
        _stop(*parents.values())


def test_namespaces_of_another_job_are_not_the_runs(run_id):
    """``tcpcourse-<pid>-*`` of a process still running outside this run is another job's
    (a learner's notebook); once that process is gone nobody else will remove it, so it
    counts."""
    if os.geteuid() != 0 or not caps.capabilities().namespaces:
        pytest.skip("creating a namespace needs root")
    foreign_env = {k: v for k, v in os.environ.items() if k != leaks.RUN_ID_VAR}
    jobs = {"ours": subprocess.Popen(["sleep", "30"], env=dict(os.environ)),
            "theirs": subprocess.Popen(["sleep", "30"], env=foreign_env)}
    names = {who: f"tcpcourse-{p.pid}-leakscope" for who, p in jobs.items()}
    try:
        for name in names.values():
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
        seen = leaks.namespaces(run_id)
        assert names["ours"] in seen and names["theirs"] not in seen
        assert set(names.values()) <= set(leaks.namespaces()), "without a run id: every course namespace"
        jobs["theirs"].kill()
        jobs["theirs"].wait()
        # (any course process's cleanup_stale may delete it from now on: a stale namespace)
        if os.path.exists(f"/run/netns/{names['theirs']}"):
            assert names["theirs"] in leaks.namespaces(run_id), "its creator is gone: a leak"
    finally:
        for p in jobs.values():
            p.kill()
            p.wait()
        for name in names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
