#!/usr/bin/env python3
"""Set up and run the course. Needs only python3 (3.11-3.13), venv and git.

    python3 course.py study    # install what is missing, then JupyterLab on the index
    python3 course.py test     # install what is missing, then the whole test suite

Both are safe to run again: apt packages are installed only when a tool is missing, the
virtual environment (.venv) is rebuilt only when pyproject.toml changes.
As root, missing Debian packages (tcpdump, tshark, iproute2, ...) are installed with
apt-get; without root the script says what to install and carries on in replay mode.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STATE = ROOT / ".course"
INDEX = "notebooks/00_00-index.ipynb"
# tool -> Debian package that provides it
TOOLS = {
    "tcpdump": "tcpdump", "tshark": "tshark", "ip": "iproute2", "ss": "iproute2",
    "nstat": "iproute2", "ethtool": "ethtool", "iptables": "iptables", "strace": "strace",
    "setpriv": "util-linux", "ps": "procps", "git": "git",
}
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
DROP = "-net_raw,-net_admin,-sys_admin"


def say(msg: str) -> None:
    print(f"[course] {msg}", flush=True)


def which(tool: str) -> str | None:
    return shutil.which(tool) or next((f"{d}/{tool}" for d in SBIN if os.path.exists(f"{d}/{tool}")), None)


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, **kw)


# -- system packages ------------------------------------------------------------
def ensure_system() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not which(tool)})
    venv_ok = run([sys.executable, "-c", "import ensurepip, venv"], capture_output=True).returncode == 0
    if not venv_ok:
        missing.append(f"python3.{sys.version_info.minor}-venv")
    if not missing:
        return
    if os.geteuid() != 0 or not which("apt-get"):
        say("missing system packages: " + " ".join(missing))
        say("install them with:  sudo apt-get install -y " + " ".join(missing))
        if not venv_ok:
            sys.exit("[course] cannot create a virtual environment without the venv module; install it first.")
        say("continuing: without tcpdump/root the notebooks replay the recorded corpus.")
        return
    say("installing system packages: " + " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # tshark asks whether non-root users may capture; answer "no" without a prompt.
    run(["debconf-set-selections"], input="wireshark-common wireshark-common/install-setuid boolean false\n",
        text=True, env=env, capture_output=True)
    run(["apt-get", "update", "-qq"], env=env, check=True)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing, env=env, check=True)


# -- python environment --------------------------------------------------------------
def python_ok(exe: str) -> bool:
    out = run([exe, "-c", "import sys; print(sys.version_info[:2] >= (3, 11) and sys.version_info[:2] < (3, 14))"],
              capture_output=True, text=True)
    return out.stdout.strip() == "True"


def pick_python() -> str:
    if (3, 11) <= sys.version_info[:2] < (3, 14):
        return sys.executable
    for name in ("python3.13", "python3.12", "python3.11"):
        exe = shutil.which(name)
        if exe and python_ok(exe):
            return exe
    sys.exit(f"[course] Python {sys.version.split()[0]} is not supported (3.11 to 3.13: pyshark 0.6 "
             f"breaks on 3.14). Install python3.11, 3.12 or 3.13 and run this script with it.")


def vpy() -> str:
    return str(VENV / "bin" / "python")


def ensure_venv() -> None:
    stamp = VENV / ".course-stamp"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == want and os.path.exists(vpy()):
        return
    if not os.path.exists(vpy()):
        say(f"creating {VENV}")
        run([pick_python(), "-m", "venv", str(VENV)], check=True)
    say("installing the course package and its dependencies (a few minutes the first time)")
    pip = [vpy(), "-m", "pip", "--disable-pip-version-check", "-q"]
    run(pip + ["install", "--upgrade", "pip"], check=True)
    run(pip + ["install", "-e", f"{ROOT}[test]"], check=True)
    stamp.write_text(want + "\n")


def setup() -> None:
    ensure_system()
    ensure_venv()


# -- study ------------------------------------------------------------------------------
def study(extra: list[str]) -> int:
    setup()
    argv = [vpy(), "-m", "jupyter", "lab", INDEX]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    if not os.environ.get("DISPLAY"):
        argv.append("--no-browser")
    say("starting JupyterLab: open the URL it prints (Ctrl-C twice to stop)")
    os.chdir(ROOT)
    os.execv(argv[0], argv + extra)


# -- test -------------------------------------------------------------------------------
def caps_live() -> bool:
    code = "from helpers.caps import capabilities as c; print(bool(c().live_capture) and bool(c().namespaces))"
    out = run([vpy(), "-c", code], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() == "True"


def stage(name: str, argv: list[str], env: dict, results: list) -> None:
    xml = STATE / f"junit-{name}.xml"
    xml.unlink(missing_ok=True)
    say(f"stage {name}: {' '.join(argv)}")
    t0 = time.monotonic()
    code = run(argv + [f"--junitxml={xml}"], env=env, cwd=ROOT).returncode
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if xml.exists():
        for suite in ET.parse(xml).getroot().iter("testsuite"):
            tests, fail = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skip = int(suite.get("skipped", 0))
            counts["passed"] += tests - fail - skip
            counts["failed"] += fail
            counts["skipped"] += skip
    if code not in (0, 5) and counts["failed"] == 0:
        counts["failed"] += 1  # pytest itself failed (collection error, crash)
    results.append((name, counts, time.monotonic() - t0, code))


def test(extra: list[str]) -> int:
    setup()
    STATE.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg")
    env.pop("TCPCOURSE_MODE", None)
    pytest = [vpy(), "-m", "pytest", "-p", "no:cacheprovider"]
    nbval = pytest + ["--nbval-lax", "--nbval-cell-timeout=600", "--nbval-kernel-name=python3"]
    notebooks = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("[0-9][0-9]_[0-9][0-9]-*.ipynb"))
    baseline = STATE / "leak-baseline.json"
    run([vpy(), "-m", "helpers.leaks", "snapshot", str(baseline)], check=True, cwd=ROOT, env=env)
    env["TCPCOURSE_LEAK_BASELINE"] = str(baseline)
    results: list = []
    t0 = time.monotonic()
    privileged = os.geteuid() == 0 and caps_live()
    stage("unit", pytest + ["tests", "--ignore=tests/leaks"] + extra, env, results)
    if privileged:
        stage("notebooks-live", nbval + notebooks, dict(env, TCPCOURSE_MODE="live"), results)
        # Replay the way a Binder user runs: capabilities really dropped, mode left on auto.
        setpriv = which("setpriv")
        stage("notebooks-replay", [setpriv, f"--bounding-set={DROP}", f"--inh-caps={DROP}", "--"]
              + nbval + ["tests/test_replay_env.py"] + notebooks, dict(env, TCPCOURSE_EXPECT_REPLAY="1"), results)
    else:
        say("not root (or no capture/namespace capabilities): the live notebook stage is skipped; "
            "notebooks run in replay mode as this user")
        stage("notebooks-replay", nbval + ["tests/test_replay_env.py"] + notebooks,
              dict(env, TCPCOURSE_EXPECT_REPLAY="1"), results)
    stage("leaks", pytest + ["tests/leaks"], env, results)
    total = {k: sum(r[1][k] for r in results) for k in ("passed", "failed", "skipped")}
    say("summary")
    for name, counts, secs, code in results:
        print(f"  {name:18s} {counts['passed']:4d} passed {counts['failed']:3d} failed "
              f"{counts['skipped']:3d} skipped  {secs:7.1f} s", flush=True)
    print(f"  whole suite: {time.monotonic() - t0:.1f} s", flush=True)
    print(f"{total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped", flush=True)
    return 1 if total["failed"] or any(r[3] not in (0, 5) for r in results) else 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("study", "test"):
        print(__doc__)
        return 2
    return study(argv[2:]) if argv[1] == "study" else test(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
