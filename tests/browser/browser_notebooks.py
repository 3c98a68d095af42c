"""The notebooks in a real browser, the way a learner uses them.

Headless Chromium (Debian's package `chromium`; no browser is downloaded) is driven by
playwright against a JupyterLab this module starts on 127.0.0.1, exactly as
``python3 course.py study`` starts it, on a scratch copy of the notebooks (the tracked
.ipynb files are never opened, so autosave cannot change the clone). It runs every cell of
00_00 and 01_02, changes the 01_02 panel's MSS and presses Run, toggles TCP_NODELAY in
02_03, and interrupts a running 01_03 panel. Asserts read page text and kernel state (the
notebook model, the kernel's own variables), never pixels. Everything it starts (the lab,
its kernels, their tcpdump and namespaces, Chromium) is stopped by PID and checked gone.

``python3 course.py test`` runs it as the stage machine/browser (as root, after the notebook
stages). By hand, as root:

    TCPCOURSE_MODE=live .venv/bin/python -m pytest -p no:cacheprovider tests/browser/browser_notebooks.py

``pytest tests`` does not collect it (the name does not match test_*.py). Without Chromium,
playwright or live capture every test here is skipped with the reason.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARK = "TCPCOURSE_BROWSER_RUN"          # every process this module starts carries MARK=<id>
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOKS = ("00_00-index", "01_02-three-way-handshake", "02_03-nagle-and-delayed-ack",
             "01_03-syn-queue-and-accept-queue")
URL_RE = re.compile(r"http://127\.0\.0\.1:(\d+)(/lab/tree/notebooks/00_00-index\.ipynb)\?token=([0-9a-f]+)")
# UI waits: a live notebook run is seconds to a minute on a busy 2-core machine
RUN_ALL_TIMEOUT = 600_000
PANEL_TIMEOUT = 120_000


def _chromium() -> str | None:
    want = os.environ.get("TCPCOURSE_CHROMIUM")
    if want is not None:             # set by course.py; empty: it found none
        return want if want and os.access(want, os.X_OK) else None
    return shutil.which("chromium")


def why_skip() -> str | None:
    if not _chromium():
        return ("no Chromium: the browser stage drives Debian's chromium package "
                "(apt-get install chromium; python3 course.py test installs it as root)")
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    from helpers import caps
    c = caps.capabilities()
    if not (c.live_capture and c.namespaces):
        return "the browser stage runs the panels live: it needs root (CAP_NET_RAW, namespaces)"
    return None


REASON = why_skip()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"browser stage skipped: {REASON}")


def course_module():
    """course.py (its lab_argv and trust_notebooks are what `study` runs)."""
    mod = sys.modules.get("course")
    if mod is not None and hasattr(mod, "lab_argv"):
        return mod
    spec = importlib.util.spec_from_file_location("course_for_browser", ROOT / "course.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- processes
def marked(run_id: str) -> dict[int, str]:
    """Processes carrying MARK=run_id in their environment: pid -> command line."""
    tag = f"{MARK}={run_id}".encode()
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if tag in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
        except OSError:
            continue
    return found


def course_namespaces_of(pids) -> list[str]:
    from helpers.netns import NS_PREFIX, list_course_namespaces
    prefixes = tuple(f"{NS_PREFIX}{p}-" for p in pids)
    return [n for n in list_course_namespaces() if n.startswith(prefixes)]


def capture_children(pid: int) -> list[str]:
    from helpers.leaks import capture_processes
    return capture_processes(parent=pid)


def kill_marked(run_id: str) -> dict[int, str]:
    left = marked(run_id)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


# ----------------------------------------------------------------------------- the lab
class Lab:
    def __init__(self):
        self.run_id = uuid.uuid4().hex
        self.scratch = Path(tempfile.mkdtemp(prefix="tcpcourse-browser-"))
        self.proc: subprocess.Popen | None = None
        self.url = self.base = self.token = ""
        self.kernel_pids: set[int] = set()
        self.log = self.scratch / "jupyter.log"

    def prepare(self) -> dict:
        """The scratch root: copies of the notebooks and README, the corpus linked; Jupyter's
        config, data (trust database), runtime and lab settings inside it."""
        s = self.scratch
        (s / "notebooks").mkdir()
        for nb in (ROOT / "notebooks").glob("*.ipynb"):
            shutil.copy2(nb, s / "notebooks" / nb.name)
        shutil.copy2(ROOT / "README.md", s / "README.md")
        (s / "pcaps").symlink_to(ROOT / "pcaps")
        jp = s / ".jupyter"
        settings = {
            "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
            "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
            "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        }
        for name, value in settings.items():
            f = jp / "lab-settings" / f"{name}.jupyterlab-settings"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(jp / "config"), JUPYTER_DATA_DIR=str(jp / "data"),
                   JUPYTER_RUNTIME_DIR=str(jp / "runtime"), IPYTHONDIR=str(jp / "ipython"),
                   TCPCOURSE_MODE=os.environ.get("TCPCOURSE_MODE", "live"), MPLBACKEND="Agg",
                   **{MARK: self.run_id})
        env.pop("TCPCOURSE_PROGRESS", None)
        env.pop("JUPYTERLAB_SETTINGS_DIR", None)
        env.pop("JUPYTERLAB_WORKSPACES_DIR", None)
        return env

    def start(self) -> None:
        course = course_module()
        env = self.prepare()
        course.trust_notebooks(self.scratch, env=env)     # what `study` does, in the scratch database
        jp = self.scratch / ".jupyter"
        argv = course.lab_argv(self.scratch, [
            "--no-browser", "--ServerApp.port=0", "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={jp / 'lab-settings'}", f"--LabApp.workspaces_dir={jp / 'workspaces'}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"])
        if os.geteuid() == 0 and "--allow-root" not in argv:
            argv.append("--allow-root")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=self.scratch, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            m = URL_RE.search(self.log.read_text(errors="replace"))
            if m:
                self.url = m.group(0)
                self.base = f"http://127.0.0.1:{m.group(1)}"
                self.token = m.group(3)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError("JupyterLab did not print the index URL "
                             "(http://127.0.0.1:PORT/lab/tree/notebooks/00_00-index.ipynb?token=...):\n"
                             + self.log.read_text(errors="replace")[-3000:])

    def api(self, method: str, path: str):
        req = urllib.request.Request(f"{self.base}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body else None

    def stop(self) -> list[str]:
        """Shut the kernels down through the server, stop the server by its PID (process
        group), SIGKILL whatever still carries this run's mark. Returns what had to be killed
        or was left (namespaces), for the caller to fail on."""
        problems = []
        if self.proc is not None and self.proc.poll() is None:
            try:
                for k in self.api("GET", "/api/kernels") or []:
                    self.api("DELETE", f"/api/kernels/{k['id']}")
            except OSError as exc:
                problems.append(f"could not shut the kernels down through the server: {exc}")
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    problems.append(f"JupyterLab (pid {self.proc.pid}) ignored {signal.Signals(sig).name}")
        deadline = time.monotonic() + 10
        while marked(self.run_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = kill_marked(self.run_id)
        problems += [f"process left running (killed): {pid} {cmd}" for pid, cmd in left.items()]
        problems += [f"namespace left: {n}" for n in course_namespaces_of(self.kernel_pids)]
        shutil.rmtree(self.scratch, ignore_errors=True)
        return problems


@pytest.fixture(scope="module")
def lab():
    """JupyterLab on a scratch copy: the tracked notebooks are outside its root, so nothing
    the lab does can write to them; with autosave off not even the copies change."""
    lab = Lab()
    copies = {}
    try:
        lab.start()
        copies = digest(sorted((lab.scratch / "notebooks").glob("*.ipynb")))
        yield lab
    finally:
        saved = [Path(p).name for p, h in digest(sorted((lab.scratch / "notebooks").glob("*.ipynb"))).items()
                 if copies.get(p, h) != h]
        problems = lab.stop()
    assert not problems, "the browser stage left something behind:\n" + "\n".join(problems)
    assert not saved, f"JupyterLab saved notebooks although autosave is off: {saved}"


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS,
                               env=dict(os.environ, **{MARK: lab.run_id}))
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


@pytest.fixture(scope="module")
def page(browser, lab):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = ctx.new_page()
    p.set_default_timeout(60_000)
    p.goto(lab.url)                  # the URL `study` prints
    p.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell && "
                        "window.jupyterapp.shell.currentWidget && "
                        "window.jupyterapp.shell.currentWidget.context", timeout=120_000)
    yield p
    ctx.close()


# ----------------------------------------------------------------------------- lab actions
JS_OPEN = """async (path) => {
  const app = window.jupyterapp;
  const w = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  await w.context.ready;
  await w.sessionContext.ready;
  app.shell.activateById(w.id);
  return w.id;
}"""

JS_CELLS = """() => {
  const nb = window.jupyterapp.shell.currentWidget;
  const cells = nb.content.model.cells;
  const out = [];
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    const o = {i, type: c.type, source: c.sharedModel.getSource(), trusted: c.trusted};
    if (c.type === 'code') {
      o.count = c.executionCount;
      o.errors = c.outputs.toJSON().filter(x => x.output_type === 'error')
                   .map(x => `${x.ename}: ${x.evalue}`);
    }
    out.push(o);
  }
  return {path: nb.context.path, cells: out};
}"""

JS_RUN_ALL = """async () => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget;
  await nb.sessionContext.ready;
  return await app.commands.execute('notebook:run-all-cells');
}"""

JS_RUN_CELL = """async (i) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget;
  nb.content.activeCellIndex = i;
  nb.content.deselectAll();
  return await app.commands.execute('notebook:run-cell');
}"""

# Run code in the current notebook's kernel (after whatever it is running), return its text.
JS_KERNEL = """async (code) => {
  const nb = window.jupyterapp.shell.currentWidget;
  const kernel = nb.sessionContext.session.kernel;
  const out = [];
  const future = kernel.requestExecute({code, silent: false, store_history: false});
  future.onIOPub = (msg) => {
    const t = msg.header.msg_type, c = msg.content;
    if (t === 'stream') out.push(c.text);
    else if (t === 'execute_result') out.push(c.data['text/plain']);
    else if (t === 'error') out.push(`KERNEL-ERROR ${c.ename}: ${c.evalue}`);
  };
  await future.done;
  return out.join('');
}"""

JS_SHUTDOWN = """async () => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget;
  await nb.sessionContext.shutdown();
  await nb.context.ready;
  nb.dispose();
  return true;
}"""


def evaluate(page, js: str, arg=None, timeout_ms: int = PANEL_TIMEOUT):
    """page.evaluate(js, arg), bounded: playwright's evaluate has no timeout of its own, so a
    hung cell or a kernel that never gets ready would block the stage for ever."""
    return page.evaluate(
        "async ([a, ms]) => Promise.race([(" + js + ")(a), new Promise((_, rej) => "
        "setTimeout(() => rej(new Error(`timed out after ${ms} ms`)), ms))])", [arg, timeout_ms])


def kernel(page, code: str):
    """Evaluate *code* in the notebook's kernel; its last line's value, via json."""
    text = evaluate(page, JS_KERNEL, "import json as _j\n" + code + "\nprint(_j.dumps(_RESULT))")
    assert "KERNEL-ERROR" not in text, text
    return json.loads(text.strip().splitlines()[-1])


def open_notebook(page, lab, name: str) -> int:
    """Open notebooks/NAME.ipynb in the lab; returns its kernel's PID."""
    evaluate(page, JS_OPEN, f"notebooks/{name}.ipynb")
    pid = kernel(page, "import os\n_RESULT = os.getpid()")
    lab.kernel_pids.add(pid)
    return pid


def open_panel(page, lab, name: str, title: str):
    """Open a chapter and run only its imports and its panel's cell, as a learner who jumps
    to "Your turn" does. Returns (kernel PID, the panel)."""
    pid = open_notebook(page, lab, name)
    for i in (cell_index(page, "from helpers.widgets import Panel"), cell_index(page, "panel = Panel(")):
        evaluate(page, JS_RUN_CELL, i)
    return pid, panel(page, title)


def cells(page) -> dict:
    return evaluate(page, JS_CELLS)


def cell_index(page, needle: str) -> int:
    found = [c["i"] for c in cells(page)["cells"] if c["type"] == "code" and needle in c["source"]]
    assert found, f"no code cell containing {needle!r}"
    return found[0]


def shutdown_notebook(page, lab) -> None:
    pid = kernel(page, "import os\n_RESULT = os.getpid()")
    evaluate(page, JS_SHUTDOWN)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), f"kernel {pid} still runs after shutdown"
    assert course_namespaces_of([pid]) == [], "the kernel's namespaces outlived it"


def assert_ran_clean(page) -> None:
    """Every code cell has run (an execution count) and none holds an error, in the model;
    and the page shows no traceback."""
    state = cells(page)
    code = [c for c in state["cells"] if c["type"] == "code"]
    not_run = [c["i"] for c in code if c["count"] is None]
    errors = [(c["i"], c["errors"]) for c in code if c["errors"]]
    assert not errors, f"{state['path']}: cells with errors: {errors}"
    assert not not_run, f"{state['path']}: cells that did not run: {not_run}"
    tracebacks = page.locator(".jp-OutputArea-output", has_text="Traceback (most recent call last)")
    assert tracebacks.count() == 0, tracebacks.first.inner_text()[:2000]


def panel(page, title: str):
    """The widget panel whose title is *title* (an h4 in its first row)."""
    loc = page.locator(".widget-vbox").filter(has=page.locator("h4", has_text=title)).last
    loc.wait_for(state="visible", timeout=PANEL_TIMEOUT)
    return loc


def status(p) -> str:
    return status_el(p).inner_text()


def status_el(p):
    """The status line: the HTML beside the Run button."""
    return p.locator(".widget-hbox", has=p.page.get_by_role("button", name="Run")).last.locator(".widget-html").last


def set_number(p, label: str, value: int) -> None:
    """Set the control described *label* to *value* as a learner does: pick it in a
    dropdown, or (a slider with an exact-value box) untick "kernel default" and type it."""
    choice = p.locator(".widget-dropdown", has_text=label).locator("select")
    if choice.count():
        options = choice.locator("option").all_inner_texts()
        wanted = [o for o in options if re.match(rf"{value}\b", o.strip())]
        assert wanted, f"{label}: {value} is not offered: {options}"
        choice.select_option(label=wanted[0])
        return
    row = p.locator(".widget-hbox", has_text=label).last
    default = row.locator(".widget-checkbox", has_text="kernel default").locator("input[type=checkbox]")
    if default.count() and default.is_checked():
        default.uncheck()
    box = row.locator(".widget-text input").first
    box.fill(str(value))
    box.press("Enter")


# Watch a panel's status line from before a click: this run has started when it said
# "running", and ended when it no longer does (the line of the previous run does not count).
JS_WATCH = """(el) => {
  el.__sawRunning = false;
  const seen = () => { if (el.innerText.includes('running')) el.__sawRunning = true; };
  el.__observer = new MutationObserver(seen);
  el.__observer.observe(el, {subtree: true, childList: true, characterData: true});
}"""
JS_RUN_ENDED = "(el) => el.__sawRunning && !el.innerText.includes('running')"
JS_RUNNING = "(el) => el.__sawRunning"


def click_run(p):
    """Press the panel's Run button; returns its status element, watched from before the click."""
    el = status_el(p).element_handle()
    el.evaluate(JS_WATCH)
    p.get_by_role("button", name="Run").click()
    return el


def press_run_and_wait(page, p, done: str = "✓ ran in") -> str:
    el = click_run(p)
    page.wait_for_function(JS_RUN_ENDED, arg=el, timeout=PANEL_TIMEOUT)
    s = status(p)
    assert done in s, f"the panel says: {s}\n{p.inner_text()[:3000]}"
    return s


def output_table(p) -> list[dict[str, str]]:
    """The first table in a panel's output, as the page shows it: one dict per row."""
    table = p.locator(".widget-output table").first
    head = table.locator("thead th").all_inner_texts()
    return [dict(zip(head, row.locator("th, td").all_inner_texts()))
            for row in table.locator("tbody tr").all()]


# ----------------------------------------------------------------------------- tests
def test_study_url_opens_the_index_in_a_trusted_lab_at_the_repository_root(lab, page):
    assert URL_RE.fullmatch(lab.url), lab.url
    state = cells(page)
    assert state["path"] == "notebooks/00_00-index.ipynb", state["path"]
    code = [c for c in state["cells"] if c["type"] == "code"]
    assert code and all(c["trusted"] for c in code), \
        f"untrusted cells: {[c['i'] for c in code if not c['trusted']]}"
    trust = page.locator(".jp-StatusItem-trust").get_attribute("title")   # the status bar's shield
    assert re.fullmatch(rf"Notebook trusted: {len(code)} of {len(code)} code cells trusted\.", trust or ""), trust
    # the file browser's root is the repository: README.md and pcaps/ are there to open
    page.locator(".jp-BreadCrumbs-home").first.click()
    listing = page.locator(".jp-DirListing-content")
    for name in ("README.md", "pcaps", "notebooks"):
        listing.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    listing.get_by_text("README.md", exact=True).first.dblclick()
    page.get_by_text("How Linux really runs TCP", exact=True).first.wait_for(timeout=30_000)
    listing.get_by_text("pcaps", exact=True).first.dblclick()
    listing.get_by_text("manifest.json", exact=True).first.wait_for(timeout=30_000)
    page.evaluate("async () => { const app = window.jupyterapp; const w = await app.commands.execute("
                  "'docmanager:open', {path: 'notebooks/00_00-index.ipynb', factory: 'Notebook'}); "
                  "app.shell.activateById(w.id); }")


def test_00_00_runs_every_cell_without_errors(lab, page):
    open_notebook(page, lab, "00_00-index")
    evaluate(page, JS_RUN_ALL, timeout_ms=RUN_ALL_TIMEOUT)
    assert_ran_clean(page)
    shutdown_notebook(page, lab)


def test_01_02_runs_clean_and_its_panel_sends_the_new_mss(lab, page):
    open_notebook(page, lab, "01_02-three-way-handshake")
    evaluate(page, JS_RUN_ALL, timeout_ms=RUN_ALL_TIMEOUT)
    assert_ran_clean(page)
    p = panel(page, "SYN options")
    before = kernel(page, "_RESULT = panel.ran_with")
    assert before["mss"] != 1400, before
    set_number(p, "TCP_MAXSEG", 1400)
    press_run_and_wait(page, p)
    # page text: the SYN options table of the new capture: every client SYN announces MSS 1400
    syn = [r for r in output_table(p) if r.get("segment") == "SYN"]
    assert syn and all(r["MSS"] == "1400" for r in syn), output_table(p)
    # kernel state: the panel ran with 1400 and the capture's SYN carried it
    after = kernel(page, "_df = panel.result.segments()\n"
                         "_RESULT = {'ran_with': panel.ran_with, "
                         "'syn_mss': sorted({int(x) for x in _df[_df['flags'] == 'SYN']['mss']})}")
    assert after["ran_with"]["mss"] == 1400 and after["syn_mss"] == [1400], after
    shutdown_notebook(page, lab)


def test_02_03_nodelay_brings_the_median_under_1_ms(lab, page):
    _, p = open_panel(page, lab, "02_03-nagle-and-delayed-ack", "Nagle and delayed ACK")
    box = p.locator(".widget-checkbox", has_text="TCP_NODELAY").locator("input[type=checkbox]")
    assert not box.is_checked()
    press_run_and_wait(page, p)
    nagle_on = kernel(page, "_RESULT = panel.result.data['median_ms']")
    box.check()
    press_run_and_wait(page, p)
    text = p.locator(".widget-output").inner_text()
    m = re.search(r"median of the rest ([0-9.]+) ms", text)
    assert m, text[:2000]
    shown = float(m.group(1))
    state = kernel(page, "_RESULT = {'nodelay': panel.ran_with['nodelay'], "
                         "'median': panel.result.data['median_ms']}")
    assert state["nodelay"] is True, state
    assert shown < 1.0 and state["median"] < 1.0, (shown, state, f"Nagle on: {nagle_on} ms")
    assert nagle_on > 10 * state["median"], (nagle_on, state)   # it fell, from the delayed-ACK wait
    shutdown_notebook(page, lab)


def test_01_03_an_interrupted_panel_leaves_nothing_and_runs_again(lab, page):
    kpid, p = open_panel(page, lab, "01_03-syn-queue-and-accept-queue", "SYN queue and accept queue")
    el = click_run(p)
    page.wait_for_function(JS_RUNNING, arg=el, timeout=PANEL_TIMEOUT)
    # running, with its capture (tcpdump, a child of the kernel) and its namespace started
    deadline = time.monotonic() + 60
    while not (capture_children(kpid) and course_namespaces_of([kpid])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert capture_children(kpid), f"no capture started; the panel says: {status(p)}"
    assert course_namespaces_of([kpid]), f"no namespace started; the panel says: {status(p)}"
    assert "running" in status(p), status(p)
    # the learner presses the toolbar's stop button (Kernel > Interrupt)
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) jp-button[data-command='notebook:interrupt-kernel'], "
                 ".jp-NotebookPanel:not(.lm-mod-hidden) [data-command='notebook:interrupt-kernel']").first.click()
    page.wait_for_function("(el) => el.innerText.includes('interrupted')", arg=el, timeout=PANEL_TIMEOUT)
    assert "interrupted" in status(p), status(p)
    assert capture_children(kpid) == [], capture_children(kpid)
    assert course_namespaces_of([kpid]) == [], course_namespaces_of([kpid])
    state = kernel(page, "_RESULT = {'error': type(panel.error).__name__, 'busy': panel.busy}")
    assert state == {"error": "KeyboardInterrupt", "busy": False}, state
    # the next run works
    press_run_and_wait(page, p)
    state = kernel(page, "_RESULT = {'error': repr(panel.error), 'ran_with': panel.ran_with}")
    assert state["error"] == "None" and state["ran_with"], state
    assert capture_children(kpid) == [] and course_namespaces_of([kpid]) == []
    shutdown_notebook(page, lab)
