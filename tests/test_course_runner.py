"""course.py's test runner tells the truth, and `study` lands where the README says.

A stage that stops early (a stray SIGINT once ended the unit stage after 281 of 502 tests
and the last line still read "N passed, N failed") counts as failed and says how many
collected tests did not run; a signal a test sends to its process group reaches its stage,
never the runner; a browser stage without Chromium is skipped, visibly, and counted.
"""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def course():
    spec = importlib.util.spec_from_file_location("course_runner_under_test", ROOT / "course.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pytest_argv(*paths) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *map(str, paths)]


def write_tests(tmp_path: Path, n: int, body_of: dict[int, str]) -> Path:
    """A test file of *n* tests; test k runs body_of[k] (default: passes)."""
    src = ["import os, signal, pytest", ""]
    for k in range(1, n + 1):
        src += [f"def test_{k:02d}():", f"    {body_of.get(k, 'pass')}", ""]
    f = tmp_path / "tests_demo" / "test_demo.py"
    f.parent.mkdir()
    f.write_text("\n".join(src))
    return f


def child_env() -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("TCPCOURSE_PROGRESS", None)
    return env


def test_a_stage_interrupted_after_4_of_10_counts_as_failed_and_says_6_did_not_run(course, tmp_path, capsys):
    f = write_tests(tmp_path, 10, {5: "os.kill(os.getpid(), signal.SIGINT)"})
    results = []
    r = course.stage("demo/unit", pytest_argv(f), child_env(), results, state=tmp_path)
    assert results == [r]
    assert r.code == 2 and r.collected == 10
    assert (r.passed, r.failed, r.skipped, r.not_run) == (4, 0, 0, 6), r
    assert r.stopped and not r.ok and r.status == "STOPPED"
    assert "6 of 10 collected tests did not run" in r.note and "interrupted" in r.note, r.note
    capsys.readouterr()
    assert course.summary(results, 1.0) == 1
    out = capsys.readouterr().out.splitlines()
    assert re.search(r"demo/unit\s+4 passed\s+0 failed\s+0 skipped\s+6 NOT RUN .* STOPPED$", "\n".join(out), re.M), out
    assert out[-1] == "4 passed, 0 failed, 0 skipped, 6 not run (1 stage(s) stopped early)", out[-1]


def test_a_killed_stage_counts_what_finished_before_the_kill(course, tmp_path):
    f = write_tests(tmp_path, 10, {3: "pytest.skip('x')", 4: "assert False",
                                   6: "os.kill(os.getpid(), signal.SIGKILL)"})
    r = course.stage("demo/killed", pytest_argv(f), child_env(), [], state=tmp_path)
    assert r.code == -signal.SIGKILL
    assert (r.passed, r.failed, r.skipped, r.not_run, r.collected) == (3, 1, 1, 5, 10), r
    assert r.stopped and "killed by SIGKILL" in r.note and "5 of 10" in r.note, r.note


def test_a_stage_that_ran_everything_is_not_stopped(course, tmp_path, capsys):
    f = write_tests(tmp_path, 5, {2: "assert 1 == 2", 3: "pytest.skip('not here')"})
    results = []
    r = course.stage("demo/full", pytest_argv(f), child_env(), results, state=tmp_path)
    assert (r.code, r.passed, r.failed, r.skipped, r.not_run) == (1, 3, 1, 1, 0), r
    assert not r.stopped and r.status == "FAILED" and r.note == ""
    ok = course.stage("demo/ok", pytest_argv(f, "-k", "not test_02"), child_env(), results, state=tmp_path)
    assert ok.ok and (ok.passed, ok.skipped, ok.not_run) == (3, 1, 0), ok
    capsys.readouterr()
    assert course.summary(results, 1.0) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "6 passed, 1 failed, 2 skipped"
    assert course.summary([ok], 1.0) == 0


def test_a_signal_to_the_stage_process_group_does_not_reach_the_runner(course, tmp_path):
    """A test that signals its own process group hits its stage only (each stage has a
    process group of its own), so the runner lives on to report it."""
    f = write_tests(tmp_path, 4, {2: "os.killpg(0, signal.SIGINT)"})
    got = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        r = course.stage("demo/group", pytest_argv(f), child_env(), [], state=tmp_path)
        time.sleep(0.2)
    finally:
        signal.signal(signal.SIGINT, old)
    assert got == [], "the stage's SIGINT reached the runner"
    assert r.stopped and r.not_run == 3 and r.passed == 1, r


def test_stage_result_without_a_progress_file_says_the_count_is_unknown(course, tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1"/></testsuites>')
    r = course.stage_result("demo/x", 2, 1.0, None, xml)
    assert (r.passed, r.failed, r.skipped) == (2, 1, 1) and r.stopped
    assert "did not run is unknown" in r.note, r.note
    r = course.stage_result("demo/y", 2, 1.0, {"collected": 10, "finished": 4, "passed": 4}, None)
    assert r.not_run == 6 and "6 of 10 collected tests did not run" in r.note
    r = course.stage_result("demo/z", 0, 1.0, {"collected": 3, "finished": 3, "passed": 3, "done": True}, None)
    assert r.ok and r.note == ""


def test_browser_stage_without_chromium_is_skipped_visibly_and_counted(course, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("TCPCOURSE_CHROMIUM", str(tmp_path / "no-chromium-here"))
    results = []
    r = course.browser_stage("demo", [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra"],
                             child_env(), results, state=tmp_path)
    out = capfd.readouterr().out
    assert "stage demo/browser: SKIPPED: Chromium is not installed (apt-get install chromium)" in out, out[-2000:]
    assert "browser stage skipped: no Chromium" in out       # pytest's -ra line, per test
    assert r.failed == 0 and not r.stopped and r.skipped >= 5 and r.passed == 0, r
    assert r.status == "skipped" and "Chromium is not installed" in r.note
    course.summary(results, 1.0)
    out = capfd.readouterr().out
    assert re.search(rf"demo/browser\s+0 passed\s+0 failed\s+{r.skipped} skipped .* skipped$", out, re.M), out
    assert "demo/browser: skipped: Chromium is not installed (apt-get install chromium)" in out


def test_unit_stage_does_not_collect_the_browser_tests():
    out = subprocess.run(pytest_argv("tests", "--collect-only", "--ignore=tests/leaks"), cwd=ROOT,
                         capture_output=True, text=True, env=child_env())
    assert "browser_notebooks" not in out.stdout
    out = subprocess.run(pytest_argv("tests/browser/browser_notebooks.py", "--collect-only"), cwd=ROOT,
                         capture_output=True, text=True, env=child_env())
    assert out.stdout.count("::test_") >= 5 or out.stdout.count("<Function test_") >= 5, out.stdout[-2000:]


# ----------------------------------------------------------------------------- study
def test_study_starts_the_lab_at_the_repository_root_on_the_index(course):
    argv = course.lab_argv(ROOT)
    assert argv[:4] == [course.vpy(), "-m", "jupyter", "lab"]
    assert f"--ServerApp.root_dir={ROOT}" in argv and "--ServerApp.ip=127.0.0.1" in argv
    assert "--LabApp.default_url=/lab/tree/notebooks/00_00-index.ipynb" in argv
    assert (ROOT / course.INDEX).exists()


def test_study_lab_prints_the_index_url_and_serves_readme_and_pcaps(course, tmp_path):
    """The lab `study` starts, for real: the URL it prints opens the index notebook; the
    root holds README.md and pcaps/. Stopped by its PID."""
    env = dict(child_env(), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), IPYTHONDIR=str(tmp_path / "ipy"))
    argv = course.lab_argv(ROOT, ["--no-browser", "--ServerApp.port=0",
                                  "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                                  f"--LabApp.workspaces_dir={tmp_path / 'ws'}"])
    log = tmp_path / "lab.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = None
        deadline = time.monotonic() + 90
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"http://127\.0\.0\.1:\d+/lab/tree/notebooks/00_00-index\.ipynb\?token=[0-9a-f]+",
                          log.read_text(errors="replace"))
            url = m.group(0) if m else None
            time.sleep(0.2)
        assert url, log.read_text(errors="replace")[-3000:]
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200 and "JupyterLab" in r.read().decode()
        base, token = url.split("/lab/")[0], url.rsplit("=", 1)[1]
        req = urllib.request.Request(f"{base}/api/contents/", headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            names = {c["name"] for c in json.load(r)["content"]}
        assert {"README.md", "pcaps", "notebooks"} <= names, names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_trust_marks_every_notebook_trusted_for_this_user(course, tmp_path, capsys):
    from nbformat import NO_CONVERT, read
    from nbformat.sign import NotebookNotary

    env = dict(os.environ, JUPYTER_DATA_DIR=str(tmp_path))
    notary = NotebookNotary(data_dir=str(tmp_path))
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    nbs = {p.name: read(p.open(encoding="utf-8"), NO_CONVERT) for p in paths}
    assert not any(notary.check_signature(nb) for nb in nbs.values()), "a fresh database trusts nothing"
    course.trust_notebooks(ROOT, env=env)
    assert f"marked {len(paths)} of {len(paths)} notebooks trusted" in capsys.readouterr().out
    notary = NotebookNotary(data_dir=str(tmp_path))
    assert all(notary.check_signature(nb) for nb in nbs.values())
    course.trust_notebooks(ROOT, env=env)           # again: nothing to sign, nothing said
    assert capsys.readouterr().out == ""


def test_chromium_is_installed_as_root_and_a_failed_install_only_skips_the_browser_stage(course, monkeypatch, capsys):
    calls = []

    def fake_run(argv, **kw):
        calls.append(list(argv))
        failed = argv[:2] == ["apt-get", "install"] and "chromium" in argv
        return subprocess.CompletedProcess(argv, 100 if failed else 0, "", "")

    monkeypatch.setattr(course, "run", fake_run)
    monkeypatch.setattr(course, "which", lambda tool: None if tool == "chromium" else f"/usr/bin/{tool}")
    monkeypatch.setattr(course.os, "geteuid", lambda: 0)
    course.ensure_system(course.TEST_TOOLS)
    installs = [c for c in calls if c[:2] == ["apt-get", "install"]]
    assert installs == [["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]], calls
    assert "could not install chromium: the browser stage will be skipped" in capsys.readouterr().out
    calls.clear()
    course.ensure_system()                              # study: no Chromium wanted
    assert calls == [[sys.executable, "-c", "import ensurepip, venv"]], calls
    monkeypatch.setattr(course.os, "geteuid", lambda: 1000)
    course.ensure_system(course.TEST_TOOLS)
    out = capsys.readouterr().out
    assert "the browser stage needs chromium (sudo apt-get install -y chromium)" in out, out
    assert not [c for c in calls if c[0] == "apt-get"], calls


def test_ctrl_c_at_the_runner_reaches_the_stage_which_unwinds_and_is_reported(tmp_path):
    """The stage has its own process group, so the terminal's Ctrl-C reaches only the
    runner: it passes the SIGINT on, waits for pytest to unwind, and reports the stage."""
    f = write_tests(tmp_path, 3, {2: "import time; open(os.environ['READY'], 'w').close(); time.sleep(60)"})
    ready = tmp_path / "ready"
    runner = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("c", {str(ROOT / 'course.py')!r})
        c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)
        results = []
        try:
            c.stage("demo/ctrl-c", {pytest_argv(f)!r}, c.os.environ.copy(), results, state=c.Path({str(tmp_path)!r}))
        except KeyboardInterrupt:
            print("RUNNER GOT CTRL-C", results[0].passed, results[0].not_run, results[0].code)
    """)
    env = dict(child_env(), READY=str(ready))
    proc = subprocess.Popen([sys.executable, "-c", runner], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the stage never reached its second test"
        proc.send_signal(signal.SIGINT)          # only the runner, as a terminal's Ctrl-C would
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "RUNNER GOT CTRL-C 1 2 2" in out, out[-3000:]
    assert "stage demo/ctrl-c stopped early" in out and "2 of 3 collected tests did not run (Ctrl-C)" in out, out[-3000:]
