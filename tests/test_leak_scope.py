"""The leak check watches only what the course started: not a learner's own Wireshark or
tcpdump, not another job's, not namespaces the course did not make."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from helpers import leaks


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
