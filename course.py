#!/usr/bin/env python3
"""Set up and run the course. Needs only python3 (3.11-3.13), venv and git.

    python3 course.py study    # install what is missing, then JupyterLab on the index
    python3 course.py test     # install what is missing, then the whole test suite
                               # (on this machine, with a headless-Chromium stage driving
                               # JupyterLab, then under the "older-distro" kernel profile)
    python3 course.py test --profile NAME|all|custom:net.x=v,...   # only these kernel profiles

Both are safe to run again: apt packages are installed only when a tool is missing, the
virtual environment (.venv) is rebuilt only when pyproject.toml changes.
As root, missing Debian packages (tcpdump, tshark, iproute2, ...) are installed with
apt-get; without root the script says what to install and carries on in replay mode.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STATE = ROOT / ".course"
INDEX = "notebooks/00_00-index.ipynb"
# what `study` opens: the index itself, in a lab whose root is the repository (README, pcaps/)
INDEX_URL = "/lab/tree/" + INDEX
# tool -> Debian package that provides it
TOOLS = {
    "tcpdump": "tcpdump", "tshark": "tshark", "ip": "iproute2", "ss": "iproute2",
    "nstat": "iproute2", "ethtool": "ethtool", "iptables": "iptables", "strace": "strace",
    "setpriv": "util-linux", "ps": "procps", "git": "git",
}
# only the test command needs these: headless Chromium drives JupyterLab in the browser stage
TEST_TOOLS = {"chromium": "chromium"}
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
DROP = "-net_raw,-net_admin,-sys_admin"


def say(msg: str) -> None:
    print(f"[course] {msg}", flush=True)


def which(tool: str) -> str | None:
    return shutil.which(tool) or next((f"{d}/{tool}" for d in SBIN if os.path.exists(f"{d}/{tool}")), None)


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, **kw)


# -- system packages ------------------------------------------------------------
def ensure_system(optional: dict[str, str] | None = None) -> None:
    """Install the missing Debian packages as root (say which, without root). *optional*
    packages (Chromium for the browser stage) may fail to install: their stage is then
    skipped, and says so."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not which(tool)})
    extra = sorted({pkg for tool, pkg in (optional or {}).items() if not which(tool)} - set(missing))
    venv_ok = run([sys.executable, "-c", "import ensurepip, venv"], capture_output=True).returncode == 0
    if not venv_ok:
        missing.append(f"python3.{sys.version_info.minor}-venv")
    if not missing and not extra:
        return
    if os.geteuid() != 0 or not which("apt-get"):
        if missing:
            say("missing system packages: " + " ".join(missing))
            say("install them with:  sudo apt-get install -y " + " ".join(missing))
        if extra:
            say(f"the browser stage needs {' '.join(extra)} (sudo apt-get install -y {' '.join(extra)}); "
                "without it that stage is skipped")
        if not venv_ok:
            sys.exit("[course] cannot create a virtual environment without the venv module; install it first.")
        if missing:
            say("continuing: without tcpdump/root the notebooks replay the recorded corpus.")
        return
    say("installing system packages: " + " ".join(missing + extra))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # tshark asks whether non-root users may capture; answer "no" without a prompt.
    run(["debconf-set-selections"], input="wireshark-common wireshark-common/install-setuid boolean false\n",
        text=True, env=env, capture_output=True)
    run(["apt-get", "update", "-qq"], env=env, check=True)
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]
    if missing:
        run(install + missing, env=env, check=True)
    if extra and run(install + extra, env=env).returncode != 0:
        say(f"could not install {' '.join(extra)}: the browser stage will be skipped")


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


def setup(optional: dict[str, str] | None = None) -> None:
    ensure_system(optional)
    ensure_venv()


# -- study ------------------------------------------------------------------------------
TRUST_CODE = """
import sys
import nbformat
from nbformat.sign import NotebookNotary
notary = NotebookNotary()
signed = 0
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        nb = nbformat.read(f, nbformat.NO_CONVERT)
    if not notary.check_signature(nb):
        notary.sign(nb)
        signed += 1
print(signed, len(sys.argv) - 1)
"""


def trust_notebooks(root: Path = ROOT, env: dict | None = None) -> None:
    """Sign every chapter in this user's Jupyter trust database (what `jupyter trust` does),
    so JupyterLab shows their saved outputs without a "not trusted" warning. The files are
    not changed; a notebook that changed since it was signed is signed again."""
    paths = sorted(str(p) for p in (root / "notebooks").glob("*.ipynb"))
    out = run([vpy(), "-c", TRUST_CODE, *paths], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        say("could not mark the notebooks trusted (JupyterLab will ask before running them): "
            + (out.stderr.strip().splitlines() or ["?"])[-1])
        return
    signed, total = out.stdout.split()
    if int(signed):
        say(f"marked {signed} of {total} notebooks trusted (jupyter trust)")


def lab_argv(root: Path = ROOT, extra: list[str] | tuple = ()) -> list[str]:
    """JupyterLab on 127.0.0.1 with *root* as its file browser's root (README, notebooks/,
    pcaps/), opening the index: the printed URL is http://127.0.0.1:PORT/lab/tree/notebooks/
    00_00-index.ipynb?token=..."""
    argv = [vpy(), "-m", "jupyter", "lab", f"--ServerApp.root_dir={root}", "--ServerApp.ip=127.0.0.1",
            f"--LabApp.default_url={INDEX_URL}",
            # a save that differs only in language_info.version (another Python) keeps the file's
            "--ContentsManager.pre_save_hook=helpers.notebook.keep_language_version"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    if not os.environ.get("DISPLAY"):
        argv.append("--no-browser")
    return argv + list(extra)


def study(extra: list[str]) -> int:
    setup()
    trust_notebooks()
    argv = lab_argv(ROOT, extra)
    say("starting JupyterLab on the index: open the URL it prints (Ctrl-C twice to stop)")
    os.chdir(ROOT)
    os.execv(argv[0], argv)


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


# -- stages and their honest summary ---------------------------------------------------
# course.py is also a pytest plugin: every stage runs pytest with ``-p course``, and these
# hooks write to $TCPCOURSE_PROGRESS how many tests were collected and how each finished,
# after every test. A stage that stops early (an interrupt, a crash, a kill) then says how
# many collected tests did not run, instead of adding up only those that did.
PROGRESS_ENV = "TCPCOURSE_PROGRESS"
_progress = {"collected": 0, "finished": 0, "passed": 0, "failed": 0, "skipped": 0,
             "done": False, "exitstatus": None}
_outcome: dict[str, str] = {}


def _progress_write() -> None:
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    with open(f"{path}.tmp", "w") as f:
        json.dump(_progress, f)
    os.replace(f"{path}.tmp", path)


def pytest_collection_finish(session) -> None:
    _progress["collected"] = len(session.items)
    _progress_write()


def pytest_runtest_logreport(report) -> None:
    worst = _outcome.get(report.nodeid, "passed")
    if report.failed:
        worst = "failed"
    elif report.skipped and worst != "failed":
        worst = "skipped"          # skipped in setup or call, xfail included
    _outcome[report.nodeid] = worst
    if report.when == "teardown":  # the test is over: count it once
        _progress["finished"] += 1
        _progress[worst] += 1
        _progress_write()


def pytest_sessionfinish(session, exitstatus) -> None:
    _progress.update(done=True, exitstatus=int(exitstatus))
    _progress_write()


class StageResult:
    """What one stage did: counts per outcome, collected tests that never ran, time, exit."""

    def __init__(self, name: str, *, passed: int = 0, failed: int = 0, skipped: int = 0,
                 not_run: int = 0, collected: int | None = None, secs: float = 0.0, code: int = 0,
                 note: str = ""):
        self.name, self.passed, self.failed, self.skipped = name, passed, failed, skipped
        self.not_run, self.collected, self.secs, self.code, self.note = not_run, collected, secs, code, note

    @property
    def stopped(self) -> bool:
        """Ended before running every collected test, or pytest itself did not end normally
        (0: all passed, 1: some failed, 5: nothing collected)."""
        return self.not_run > 0 or self.code not in (0, 1, 5)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.stopped

    @property
    def status(self) -> str:
        if self.stopped:
            return "STOPPED"
        if self.failed:
            return "FAILED"
        return "ok" if self.passed or not self.skipped else "skipped"

    def __repr__(self) -> str:
        return (f"StageResult({self.name!r}, passed={self.passed}, failed={self.failed}, "
                f"skipped={self.skipped}, not_run={self.not_run}, collected={self.collected}, "
                f"code={self.code}, note={self.note!r})")


def why_stopped(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return {2: "interrupted (pytest exit 2: an interrupt or collection errors)",
            3: "pytest internal error (exit 3)", 4: "pytest usage error (exit 4)",
            1: "ended before the last test (exit 1: -x, --maxfail or an exit from a test)"}.get(
        code, f"pytest exit {code}")


def junit_counts(xml: Path) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for suite in ET.parse(xml).getroot().iter("testsuite"):
        tests, fail = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skip = int(suite.get("skipped", 0))
        counts["passed"] += tests - fail - skip
        counts["failed"] += fail
        counts["skipped"] += skip
    return counts


def stage_result(name: str, code: int, secs: float, progress: dict | None, junit: Path | None) -> StageResult:
    """Counts from the plugin's progress file (junit XML when there is none), and whether
    the stage stopped early, with how many collected tests did not run."""
    r = StageResult(name, secs=secs, code=code)
    if progress:
        r.collected = int(progress.get("collected", 0))
        r.passed, r.failed, r.skipped = (int(progress.get(k, 0)) for k in ("passed", "failed", "skipped"))
        r.not_run = max(0, r.collected - int(progress.get("finished", 0)))
    elif junit is not None and junit.exists():
        c = junit_counts(junit)
        r.passed, r.failed, r.skipped = c["passed"], c["failed"], c["skipped"]
    if r.stopped:
        why = why_stopped(code) if code not in (0, 5) else "ended before the last collected test"
        if r.collected is None:
            r.note = (f"stage {name} stopped early ({why}) before reporting what it collected: "
                      f"the number of tests that did not run is unknown")
        else:
            r.note = (f"stage {name} stopped early ({why}): {r.not_run} of {r.collected} "
                      f"collected tests did not run")
    return r


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stop_group(proc: subprocess.Popen, sig: int, grace: float = 120.0) -> int:
    """Send *sig* to the stage's process group, wait up to *grace* s for pytest to unwind
    (namespaces, captures, the junit file), then SIGKILL what is left. Returns its exit."""
    for s, wait in ((sig, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:   # Ctrl-C again: stop waiting politely
            continue
    return proc.wait()


def run_isolated(argv: list[str], env: dict, cwd: Path) -> int:
    """Run a stage in its own process group: a signal a test sends to its group (or a stray
    SIGINT to a group) reaches the stage, never this runner. Ctrl-C at the terminal reaches
    the runner, which passes it on to the stage and waits for the stage to clean up."""
    kw = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # started in the background (nohup, `cmd &` in a script): SIGINT is ignored, and the
        # stage would inherit that, so the tests of a real interrupt could not interrupt
        with contextlib.suppress(ValueError):          # only the main thread may set it
            signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = subprocess.Popen(argv, env=env, cwd=cwd, **kw)
    try:
        return proc.wait()
    except KeyboardInterrupt as exc:
        exc.stage_exit = stop_group(proc, signal.SIGINT)
        raise
    except BaseException as exc:  # SystemExit from SIGTERM/SIGHUP: pytest unwinds (and nbval
        # shuts its kernels down, namespaces and captures included) only on SIGINT
        exc.stage_exit = stop_group(proc, signal.SIGINT, grace=30.0)
        raise


def stage(name: str, argv: list[str], env: dict, results: list, *, state: Path = STATE,
          cwd: Path = ROOT) -> StageResult:
    slug = name.replace("/", "-")
    xml, progress = state / f"junit-{slug}.xml", state / f"progress-{slug}.json"
    xml.unlink(missing_ok=True)
    progress.unlink(missing_ok=True)
    say(f"stage {name}: {' '.join(argv)}")
    t0 = time.monotonic()
    env = dict(env, **{PROGRESS_ENV: str(progress)})
    code, interrupted = None, None
    try:
        code = run_isolated(argv + ["-p", "course", f"--junitxml={xml}"], env, cwd)
    except (KeyboardInterrupt, SystemExit) as exc:
        interrupted = exc
        code = getattr(exc, "stage_exit", 2)
    r = stage_result(name, code, time.monotonic() - t0, _read_json(progress), xml)
    if interrupted is not None:
        r.note = (r.note or f"stage {name} stopped early") + (
            " (Ctrl-C)" if isinstance(interrupted, KeyboardInterrupt) else " (a signal stopped the run)")
    results.append(r)
    if r.stopped:
        say(r.note)
    if interrupted is not None:
        raise interrupted
    return r


# -- the browser stage -------------------------------------------------------------------
BROWSER_TESTS = "tests/browser/browser_notebooks.py"


def find_chromium() -> str | None:
    """Debian's Chromium (apt package chromium); TCPCOURSE_CHROMIUM names another binary."""
    want = os.environ.get("TCPCOURSE_CHROMIUM")
    if want is not None:
        return want if os.access(want, os.X_OK) else None
    return which("chromium")


def browser_stage(label: str, pytest: list[str], env: dict, results: list, privileged: bool = True,
                  **kw) -> StageResult:
    """Headless Chromium drives JupyterLab: the notebooks and panels as a learner uses them.
    Without Chromium (or without root: the panels run live) the stage's tests are skipped,
    each with the reason, and so counted; the summary says why."""
    name = f"{label}/browser"
    chromium = find_chromium()
    env = dict(env, TCPCOURSE_MODE="live", TCPCOURSE_CHROMIUM=chromium or "")
    why = ("Chromium is not installed (apt-get install chromium)" if not chromium else
           "no live capture and namespaces here (not root, or a container): the panels it presses "
           "run live" if not privileged else "")
    if why:
        say(f"stage {name}: SKIPPED: {why}")
    r = stage(name, pytest + [BROWSER_TESTS], env, results, **kw)
    if why and not r.stopped and not r.failed:
        r.note = f"skipped: {why}"
    return r


def suite(label: str, prefix: list[str], env: dict, extra: list[str], results: list,
          browser: bool = False) -> None:
    """Every stage once: unit tests, notebooks live, notebooks replayed without capture
    capabilities, (on the machine run) the browser, leaks. *prefix* runs each inside a
    profile's namespace."""
    pytest = prefix + [vpy(), "-m", "pytest", "-p", "no:cacheprovider"]
    nbval = pytest + ["--nbval-lax", "--nbval-cell-timeout=600", "--nbval-kernel-name=python3"]
    notebooks = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("[0-9][0-9]_[0-9][0-9]-*.ipynb"))
    baseline = STATE / f"leak-baseline-{label}.json"
    run(prefix + [vpy(), "-m", "helpers.leaks", "snapshot", str(baseline)], check=True, cwd=ROOT, env=env)
    env = dict(env, TCPCOURSE_LEAK_BASELINE=str(baseline))
    privileged = os.geteuid() == 0 and caps_live(prefix)
    stage(f"{label}/unit", pytest + ["tests", "--ignore=tests/leaks", "--ignore=tests/browser"] + extra,
          env, results)
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
    if browser:   # live panels in a real browser; its tests skip themselves (with the reason) without root
        browser_stage(label, pytest, env, results, privileged)
    stage(f"{label}/leaks", pytest + ["tests/leaks"], env, results)


def summary(results: list[StageResult], secs: float, interrupted: str = "") -> int:
    """Print one line per stage and the totals; 0 only when every stage ran all it
    collected and nothing failed."""
    total = {k: sum(getattr(r, k) for r in results) for k in ("passed", "failed", "skipped", "not_run")}
    say("summary")
    for r in results:
        print(f"  {r.name:28s} {r.passed:4d} passed {r.failed:3d} failed {r.skipped:3d} skipped"
              + (f" {r.not_run:4d} NOT RUN" if r.not_run else "")
              + f"  {r.secs:7.1f} s  {r.status}", flush=True)
    for r in results:
        if r.note:
            print(f"  {r.name}: {r.note}", flush=True)
    if interrupted:
        print(f"  {interrupted}", flush=True)
    print(f"  whole suite: {secs:.1f} s", flush=True)
    stopped = [r for r in results if r.stopped]
    line = f"{total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped"
    if total["not_run"] or stopped:
        line += f", {total['not_run']} not run ({len(stopped)} stage(s) stopped early)"
    if interrupted:
        line += "; INTERRUPTED: later stages did not run"
    print(line, flush=True)
    return 0 if results and not interrupted and all(r.ok for r in results) else 1


def test(extra: list[str]) -> int:
    setup(TEST_TOOLS)
    for sig in (signal.SIGTERM, signal.SIGHUP):   # unwind (namespaces, host sysctls) when stopped
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    STATE.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg")
    for k in ("TCPCOURSE_MODE", "TCPCOURSE_PROFILE", "TCPCOURSE_PROFILE_SYSCTLS", PROGRESS_ENV):
        env.pop(k, None)
    env["TCPCOURSE_RUN_ID"] = f"{os.getpid()}-{time.time_ns()}"   # the leak check knows what is ours
    profiles, extra = choose_profiles(extra)
    results: list[StageResult] = []
    t0 = time.monotonic()
    interrupted = ""
    try:
        for name, sysctls in profiles:
            if sysctls is None:
                flush_loopback_metrics()
                suite(name, [], env, extra, results, browser=True)
                continue
            if os.geteuid() != 0 or not which("ip"):
                say(f"profile {name} skipped: kernel profiles run in a network namespace, which needs root")
                continue
            with Profile(name, sysctls) as prof:
                suite(name, prof.prefix, dict(env, **prof.env()), extra, results)
    except KeyboardInterrupt:
        interrupted = "interrupted (Ctrl-C): the stages after the last one listed did not run"
    except SystemExit as exc:     # SIGTERM/SIGHUP: the stage and the profile have unwound
        summary(results, time.monotonic() - t0, f"stopped by signal {int(exc.code or 0) - 128}: "
                "the stages after the last one listed did not run")
        raise
    code = summary(results, time.monotonic() - t0, interrupted)
    return 130 if interrupted else code


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("study", "test"):
        print(__doc__)
        return 2
    return study(argv[2:]) if argv[1] == "study" else test(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
