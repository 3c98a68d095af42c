#!/usr/bin/env python3
"""Set up and run the course. Needs only python3 (3.11-3.13), venv and git.

    python3 course.py study    # install what is missing, then JupyterLab on the index
    python3 course.py test     # install what is missing, then the whole test suite
                               # (on this machine, then under the "older-distro" kernel profile)
    python3 course.py test --profile NAME|all|custom:net.x=v,...   # only these kernel profiles

Both are safe to run again: apt packages are installed only when a tool is missing, the
virtual environment (.venv) is rebuilt only when pyproject.toml changes.
As root, missing Debian packages (tcpdump, tshark, iproute2, ...) are installed with
apt-get; without root the script says what to install and carries on in replay mode.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
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
def caps_live(prefix: list[str]) -> bool:
    code = "from helpers.caps import capabilities as c; print(bool(c().live_capture) and bool(c().namespaces))"
    out = run(prefix + [vpy(), "-c", code], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() == "True"


# -- kernel profiles --------------------------------------------------------------------
def load_profiles():
    """helpers/profiles.py, loaded by path (standard library only, no venv needed)."""
    spec = importlib.util.spec_from_file_location("course_profiles", ROOT / "helpers" / "profiles.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def flush_loopback_metrics() -> None:
    """Start from an empty per-destination metrics cache for loopback, as a fresh machine
    does (a warm cache changes the send buffer a connection gets: see 02_05)."""
    ip = which("ip")
    if os.geteuid() != 0 or not ip:
        say("not root: the loopback entries of the TCP metrics cache (ip tcp_metrics) stay as they are")
        return
    for prefix in ("127.0.0.0/8", "::1"):
        run([ip, "tcp_metrics", "flush", prefix], capture_output=True)
    say("flushed the loopback entries of the TCP metrics cache (ip tcp_metrics): a first run's state")


class Profile:
    """A fresh network namespace with a profile's sysctls; the suite runs inside it."""

    def __init__(self, name: str, sysctls: dict[str, str]):
        self.name, self.sysctls = name, dict(sysctls)
        self.ns = f"tcpprofile-{''.join(c if c.isalnum() else '-' for c in name)[:20]}-{os.getpid()}"
        self.skipped: dict[str, str] = {}
        self.host_changed: dict[str, str] = {}

    @property
    def prefix(self) -> list[str]:
        return [which("ip"), "netns", "exec", self.ns]

    def _read(self, key: str, inside: bool) -> str | None:
        path = "/proc/sys/" + key.replace(".", "/")
        argv = (self.prefix if inside else []) + ["cat", path]
        out = run(argv, capture_output=True, text=True)
        return " ".join(out.stdout.split()) if out.returncode == 0 else None

    def _write(self, key: str, value: str, inside: bool) -> bool:
        path = "/proc/sys/" + key.replace(".", "/")
        argv = (self.prefix if inside else []) + ["sh", "-c", 'printf "%s" "$1" > "$2"', "sh", value, path]
        return run(argv, capture_output=True).returncode == 0

    def __enter__(self) -> "Profile":
        ip = which("ip")
        restore_host_sysctls()   # a run that was killed may have left some behind
        run([ip, "netns", "add", self.ns], check=True)
        try:
            run([ip, "-n", self.ns, "link", "set", "lo", "up"], check=True)
            for key, value in self.sysctls.items():
                want = " ".join(value.split())
                host_before = self._read(key, inside=False)
                if self._read(key, inside=True) is None:
                    self.skipped[key] = "no such sysctl inside a namespace on this kernel"
                    continue
                ok = self._write(key, value, inside=True)
                host_after = self._read(key, inside=False)
                if ok and host_after == host_before and self._read(key, inside=True) == want:
                    continue   # per-namespace: set inside only
                if host_after != host_before:
                    self._write(key, host_before or "", inside=False)
                # Host-wide (or a read-only copy of the host's value inside a namespace, as
                # net.core.rmem_max is on 6.18): set it on the host for this run only.
                if host_before is not None and host_before != want:
                    remember_host_sysctl(key, host_before)
                    self.host_changed[key] = host_before
                    self._write(key, value, inside=False)
                if self._read(key, inside=True) == want:
                    say(f"profile {self.name}: {key} is host-wide on this kernel: set on the host "
                        f"for this run, restored to {host_before} afterwards")
                else:
                    self.skipped[key] = "could not be set (host-wide and not writable)"
        except BaseException:
            self.__exit__(None, None, None)
            raise
        applied = {k: v for k, v in self.sysctls.items() if k not in self.skipped}
        say(f"profile {self.name}: namespace {self.ns}, " +
            (", ".join(f"{k}={v}" for k, v in applied.items()) or "this machine's settings"))
        for key, why in self.skipped.items():
            say(f"profile {self.name}: {key} {why}")
        return self

    def env(self) -> dict[str, str]:
        applied = {k: v for k, v in self.sysctls.items() if k not in self.skipped}
        return {"TCPCOURSE_PROFILE": self.name, "TCPCOURSE_PROFILE_SYSCTLS": json.dumps(applied)}

    def __exit__(self, *exc) -> None:
        run([which("ip"), "netns", "del", self.ns], capture_output=True)
        restore_host_sysctls()


HOST_RESTORE = STATE / "host-sysctls-to-restore.json"


def remember_host_sysctl(key: str, value: str) -> None:
    """Write down a host value before a profile changes it, so that even a killed run is
    undone (by the next course.py run, or by hand: the file names each value)."""
    STATE.mkdir(exist_ok=True)
    saved = json.loads(HOST_RESTORE.read_text()) if HOST_RESTORE.exists() else {}
    saved.setdefault(key, value)
    HOST_RESTORE.write_text(json.dumps(saved, indent=1) + "\n")


def restore_host_sysctls() -> None:
    if not HOST_RESTORE.exists():
        return
    saved = json.loads(HOST_RESTORE.read_text())
    for key, value in saved.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            say(f"could not restore {key}={value}: {exc}")
            return
    HOST_RESTORE.unlink()


def choose_profiles(args: list[str]) -> tuple[list[tuple[str, dict | None]], list[str]]:
    """Split ``--profile X`` options from the rest. Returns ([(name, sysctls or None for the
    machine itself)], remaining args)."""
    mod = load_profiles()
    chosen, rest, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a == "--profile" or a.startswith("--profile="):
            value = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            i += 1 if "=" in a else 2
            for name in filter(None, value.split(",") if not value.startswith("custom:") else [value]):
                if name == "all":
                    chosen += [(n, mod.PROFILES[n]["sysctls"]) for n in mod.names()]
                elif name.startswith("custom:"):
                    try:
                        chosen.append(("custom", mod.parse_assignments(name[len("custom:"):])))
                    except ValueError as exc:
                        sys.exit(f"[course] --profile {name}: {exc}")
                elif name in mod.PROFILES:
                    chosen.append((name, mod.PROFILES[name]["sysctls"]))
                else:
                    sys.exit(f"[course] no kernel profile called {name!r}; choose from: "
                             f"{', '.join(mod.names())}, all, or custom:net.ipv4.x=V,...")
            continue
        rest.append(a)
        i += 1
    if not chosen:
        chosen = [("machine", None)] + [(n, mod.PROFILES[n]["sysctls"]) for n in mod.DEFAULT_EXTRA]
    return chosen, rest


def stage(name: str, argv: list[str], env: dict, results: list) -> None:
    xml = STATE / f"junit-{name.replace('/', '-')}.xml"
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


def suite(label: str, prefix: list[str], env: dict, extra: list[str], results: list) -> None:
    """Every stage once: unit tests, notebooks live, notebooks replayed without capture
    capabilities, leaks. *prefix* runs each inside a profile's namespace."""
    pytest = prefix + [vpy(), "-m", "pytest", "-p", "no:cacheprovider"]
    nbval = pytest + ["--nbval-lax", "--nbval-cell-timeout=600", "--nbval-kernel-name=python3"]
    notebooks = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("[0-9][0-9]_[0-9][0-9]-*.ipynb"))
    baseline = STATE / f"leak-baseline-{label}.json"
    run(prefix + [vpy(), "-m", "helpers.leaks", "snapshot", str(baseline)], check=True, cwd=ROOT, env=env)
    env = dict(env, TCPCOURSE_LEAK_BASELINE=str(baseline))
    privileged = os.geteuid() == 0 and caps_live(prefix)
    stage(f"{label}/unit", pytest + ["tests", "--ignore=tests/leaks"] + extra, env, results)
    if privileged:
        stage(f"{label}/notebooks-live", nbval + notebooks, dict(env, TCPCOURSE_MODE="live"), results)
        # Replay the way a Binder user runs: capabilities really dropped, mode left on auto.
        setpriv = which("setpriv")
        stage(f"{label}/notebooks-replay", prefix + [setpriv, f"--bounding-set={DROP}", f"--inh-caps={DROP}", "--"]
              + nbval[len(prefix):] + ["tests/test_replay_env.py"] + notebooks,
              dict(env, TCPCOURSE_EXPECT_REPLAY="1"), results)
    else:
        say("not root (or no capture/namespace capabilities): the live notebook stage is skipped; "
            "notebooks run in replay mode as this user")
        stage(f"{label}/notebooks-replay", nbval + ["tests/test_replay_env.py"] + notebooks,
              dict(env, TCPCOURSE_EXPECT_REPLAY="1"), results)
    stage(f"{label}/leaks", pytest + ["tests/leaks"], env, results)


def test(extra: list[str]) -> int:
    setup()
    import signal
    for sig in (signal.SIGTERM, signal.SIGHUP):   # unwind (namespaces, host sysctls) when stopped
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    STATE.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg")
    for k in ("TCPCOURSE_MODE", "TCPCOURSE_PROFILE", "TCPCOURSE_PROFILE_SYSCTLS"):
        env.pop(k, None)
    env["TCPCOURSE_RUN_ID"] = f"{os.getpid()}-{time.time_ns()}"   # the leak check knows what is ours
    profiles, extra = choose_profiles(extra)
    results: list = []
    t0 = time.monotonic()
    for name, sysctls in profiles:
        if sysctls is None:
            flush_loopback_metrics()
            suite(name, [], env, extra, results)
            continue
        if os.geteuid() != 0 or not which("ip"):
            say(f"profile {name} skipped: kernel profiles run in a network namespace, which needs root")
            continue
        with Profile(name, sysctls) as prof:
            suite(name, prof.prefix, dict(env, **prof.env()), extra, results)
    total = {k: sum(r[1][k] for r in results) for k in ("passed", "failed", "skipped")}
    say("summary")
    for name, counts, secs, code in results:
        print(f"  {name:32s} {counts['passed']:4d} passed {counts['failed']:3d} failed "
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
