"""Committed notebooks match their jupytext sources, carry outputs, and stay clean."""
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "notebooks"
SOURCES = sorted((NB / "src").glob("*.py"))


def test_every_notebook_has_a_source_and_vice_versa():
    notebooks = {p.stem for p in NB.glob("*.ipynb")}
    sources = {p.stem for p in SOURCES}
    assert notebooks == sources
    assert {"00_00-index", "01_01-sockets-are-file-descriptors", "01_02-three-way-handshake"} <= notebooks
    for name in notebooks:
        assert name[:2].isdigit() and name[2] == "_" and name[5] == "-" and " " not in name


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_notebook_matches_source(src):
    want = [(c.cell_type, c.source) for c in jupytext.read(src).cells]
    nb = nbformat.read(NB / (src.stem + ".ipynb"), as_version=4)
    have = [(c.cell_type, c.source) for c in nb.cells]
    assert have == want, f"{src.stem}.ipynb is out of date: run tools/build_notebooks.py {src.stem}"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_notebook_has_outputs_and_clean_metadata(src):
    nb = nbformat.read(NB / (src.stem + ".ipynb"), as_version=4)
    nbformat.validate(nb)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("outputs") is not None for c in code)
    assert sum(bool(c.outputs) for c in code) >= len(code) // 2, "committed notebooks carry outputs"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"committed outputs contain an error: {errors[0].get('ename')}"
    text = "".join(c.source for c in nb.cells)
    for needed in ("Objectives", "Check your understanding", "Summary", "mode_banner"):
        assert needed in text, f"{src.stem} lacks the {needed} part of the skeleton"
    assert "sys.path" not in text and "pip install" not in text
    for c in code:
        assert set(c.metadata) <= {"tags"}


def test_plots_visible_without_a_kernel():
    nb = nbformat.read(NB / "01_02-three-way-handshake.ipynb", as_version=4)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the ladder diagram must be committed as an image"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_exercises_have_checkers(src):
    """At least two exercises after "Check your understanding"; each answer starts blank
    (``answer_N = ...``) and is handed to a checker call in a later code cell."""
    import re
    cells = jupytext.read(src).cells
    start = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"
                  and "Check your understanding" in c.source), None)
    assert start is not None, f"{src.stem}: no 'Check your understanding' section"
    code = [c.source for c in cells[start:] if c.cell_type == "code"]
    answers = []
    for i, text in enumerate(code):
        for m in re.finditer(r"^(answer_\w+)\s*=\s*\.\.\.", text, re.M):
            name = m.group(1)
            answers.append(name)
            later = "\n".join([text[m.end():]] + code[i + 1:])
            called = re.search(r"\w+\((?:[^()]|\([^()]*\))*\b" + name + r"\b", later)
            assert called, f"{src.stem}: {name} is never handed to a checker"
    assert len(answers) >= 2, f"{src.stem}: at least two checked exercises, found {answers}"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_prose_is_not_hidden_in_code_cells(src):
    """A missing `# %% [markdown]` marker turns a section into comments of a code cell."""
    import re
    for i, cell in enumerate(jupytext.read(src).cells):
        if cell.cell_type == "code":
            stray = re.findall(r"^# (?:#+ |\*\*Predict|> \*\*Myth).*", cell.source, re.M)
            assert not stray, f"{src.stem} cell {i}: prose in a code cell, add `# %% [markdown]`: {stray[0]}"


# --------------------------------------------------------------------------- open and save

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from contextlib import contextmanager

NOTEBOOKS = sorted(NB.glob("*.ipynb"))
JUPYTER = Path(sys.executable).with_name("jupyter")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jupyter_env(base: Path) -> dict:
    """Private Jupyter config, data, runtime and workspace dirs: nothing of the user's
    ~/.jupyter is read or written (trust signatures, workspaces, settings)."""
    env = dict(os.environ)
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_WORKSPACES_DIR",
                "JUPYTERLAB_SETTINGS_DIR", "IPYTHONDIR"):
        env[var] = str(base / var.lower())
    return env


@contextmanager
def _jupyter(app: str, root: Path, base: Path, *extra: str):
    """``jupyter server|lab`` on 127.0.0.1, a random port and token, serving *root*; stopped after."""
    port, token = _free_port(), os.urandom(16).hex()
    log = open(base / f"{app}.log", "w")
    proc = subprocess.Popen(
        [str(JUPYTER), app, "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", *extra],
        env=_jupyter_env(base), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _api(url, token, "GET", "/api/status")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter {app} did not start: {(base / f'{app}.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield url, token
    finally:
        # the whole session: the server and the kernels it started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def _api(url: str, token: str, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url + path, method=method, headers={"Authorization": f"token {token}",
                                                                     "Content-Type": "application/json"},
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def _kernel_language_info(name: str) -> dict:
    """What JupyterLab copies into a notebook when it connects: the kernel_info reply's
    language_info of a kernel started here."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name=name)
    try:
        return kc.kernel_info(reply=True, timeout=60)["content"]["language_info"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_notebooks_share_the_kernel_metadata_a_kernel_reports():
    """Every notebook names the same kernel, with the full language_info of its reply
    (a bare ``{"name": "python"}`` is filled in by JupyterLab on open, and autosaved)."""
    metas = {p.name: nbformat.read(p, as_version=4).metadata for p in NOTEBOOKS}
    first = next(iter(metas.values()))
    li = first["language_info"]
    assert {"codemirror_mode", "file_extension", "mimetype", "name", "nbconvert_exporter",
            "pygments_lexer", "version"} <= set(li), f"language_info is incomplete: {li}"
    for name, meta in metas.items():
        assert meta == first, f"{name}: metadata differs from {NOTEBOOKS[0].name}: rebuild both"


def test_open_and_save_through_the_server_leaves_the_files_unchanged(tmp_path):
    """What JupyterLab does when a learner opens a notebook: GET it from the contents API,
    fill in kernelspec (from the server's kernel spec) and language_info (from the kernel's
    kernel_info reply), and autosave it with PUT. The bytes on disk must not change.

    Only ``language_info.version`` may differ, when this machine's kernel runs another
    Python than the one the notebooks were built with: opening then changes that one line."""
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    for p in NOTEBOOKS:
        shutil.copy2(p, root / "notebooks" / p.name)
    with _jupyter("server", root, tmp_path) as (url, token):
        specs = _api(url, token, "GET", "/api/kernelspecs")
        committed = nbformat.read(NOTEBOOKS[0], as_version=4).metadata
        kname = committed["kernelspec"]["name"]
        spec = specs["kernelspecs"][kname]["spec"]
        kernelspec = {"display_name": spec["display_name"], "language": spec["language"], "name": kname}
        language_info = _kernel_language_info(kname)
        if language_info.get("version") != committed["language_info"].get("version"):
            warnings.warn(f"this kernel runs Python {language_info.get('version')}, the notebooks were built "
                          f"with {committed['language_info'].get('version')}: opening one here changes that line")
            language_info = {**language_info, "version": committed["language_info"].get("version")}
        changed = []
        for p in NOTEBOOKS:
            path = f"/api/contents/notebooks/{p.name}"
            model = _api(url, token, "GET", path + "?type=notebook&content=1")
            nb = model["content"]
            assert any(c.get("metadata", {}).get("trusted") is not None for c in nb["cells"] if
                       c["cell_type"] == "code"), "the server marks cells' trust on load (stripped on save)"
            nb["metadata"]["kernelspec"] = kernelspec
            nb["metadata"]["language_info"] = language_info
            _api(url, token, "PUT", path, {"type": "notebook", "format": "json", "content": nb})
            if (root / "notebooks" / p.name).read_bytes() != p.read_bytes():
                changed.append(p.name)
    assert not changed, f"opening and saving changed {changed}: rebuild with tools/build_notebooks.py"


def _open_with_another_python(url: str, token: str, name: str) -> None:
    model = _api(url, token, "GET", f"/api/contents/notebooks/{name}?type=notebook&content=1")
    model["content"]["metadata"]["language_info"]["version"] = "3.99.0"
    _api(url, token, "PUT", f"/api/contents/notebooks/{name}",
         {"type": "notebook", "format": "json", "content": model["content"]})


def test_keep_language_version_hook_keeps_a_clone_clean_under_another_python(tmp_path):
    """With helpers.notebook.keep_language_version as the server's pre_save_hook, a
    kernel of another Python (3.99.0 here) changes nothing on save; without it, it does."""
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    name = NOTEBOOKS[0].name
    shutil.copy2(NOTEBOOKS[0], root / "notebooks" / name)
    hook = "--ContentsManager.pre_save_hook=helpers.notebook.keep_language_version"
    with _jupyter("server", root, tmp_path, hook) as (url, token):
        _open_with_another_python(url, token, name)
    assert (root / "notebooks" / name).read_bytes() == NOTEBOOKS[0].read_bytes()
    with _jupyter("server", root, tmp_path) as (url, token):
        _open_with_another_python(url, token, name)
    assert b'"version": "3.99.0"' in (root / "notebooks" / name).read_bytes()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_open_in_jupyterlab_leaves_notebooks_clean(tmp_path):
    """The real thing: JupyterLab in a headless Chromium opens each notebook (its kernel
    starts, the frontend fills in the metadata), the tab must not turn dirty, and a save
    (what autosave does) must leave the bytes unchanged."""
    pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    browser_exe = _chromium()
    if not browser_exe:
        pytest.skip("no chromium to drive JupyterLab with")
    committed = nbformat.read(NOTEBOOKS[0], as_version=4).metadata["language_info"].get("version")
    # another Python than the build's (a learner's 3.11.2): the tab may turn dirty, but the
    # save hook that `study` starts the lab with keeps the committed bytes
    same_python = committed == _kernel_language_info("python3").get("version")
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    for p in NOTEBOOKS:
        shutil.copy2(p, root / "notebooks" / p.name)
    dirty, changed = [], []
    hook = "--ContentsManager.pre_save_hook=helpers.notebook.keep_language_version"
    with _jupyter("lab", root, tmp_path, hook) as (url, token), pw.sync_playwright() as play:
        browser = play.chromium.launch(executable_path=browser_exe, args=["--no-sandbox"])
        try:
            for i, p in enumerate(NOTEBOOKS):
                target = root / "notebooks" / p.name
                ctx = browser.new_context()
                page = ctx.new_page()
                page.goto(f"{url}/lab/workspaces/t{i}/tree/notebooks/{p.name}?reset&token={token}")
                page.wait_for_function(
                    "() => { const e = document.querySelector('.jp-Notebook-ExecutionIndicator');"
                    " return e && e.getAttribute('data-status') === 'idle'; }", timeout=90_000)
                page.wait_for_timeout(1000)   # the kernel_info reply lands in the model
                if page.query_selector(".jp-mod-dirty") is not None:
                    dirty.append(p.name)
                before = target.stat().st_mtime_ns
                # the server answers the PUT once the file is written (it writes in place)
                with page.expect_response(lambda r: r.request.method == "PUT" and "/api/contents/" in r.url,
                                          timeout=30_000) as saved:
                    page.keyboard.press("Control+s")
                assert saved.value.ok and target.stat().st_mtime_ns != before, f"{p.name}: JupyterLab did not save"
                if target.read_bytes() != p.read_bytes():
                    changed.append(p.name)
                ctx.close()
        finally:
            browser.close()
    assert not dirty or not same_python, f"opening marked {dirty} modified (autosave would rewrite them)"
    assert not changed, f"a save from JupyterLab changed {changed}"


# --------------------------------------------------------------------------- cells read well

def test_refusal_demos_use_a_panel_of_their_own():
    """A cell that shows a refused value must not hand it to a panel the learner sees:
    that panel would show a red error the learner did not cause after Run All."""
    import re
    for src in SOURCES:
        cells = [c.source for c in jupytext.read(src).cells if c.cell_type == "code"]
        shown = {m.group(1) for text in cells for m in re.finditer(r"^(\w+)\s*=\s*Panel\(", text, re.M)
                 if re.search(rf"^{m.group(1)}\s*$", text, re.M) or any(re.fullmatch(rf"\s*{m.group(1)}\s*", t)
                                                                        for t in cells)}
        for text in cells:
            if "except ParameterError" not in text:
                continue
            for name in re.findall(r"\b(\w+)\.update\(", text):
                assert name not in shown, f"{src.stem}: a refused value goes to the displayed panel {name!r}"


def test_capability_table_is_shown_in_full():
    """00_00's capability table: pandas cuts cells at 50 characters ("..."); the notebook
    shows every explanation whole."""
    import html as _html
    from helpers import caps
    nb = nbformat.read(NB / "00_00-index.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "caps.table()" in c.source)
    shown = "".join(o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {}))
    assert "<table" in shown and "...</td>" not in shown
    for c in caps.capabilities().items():
        assert _html.escape(c.if_missing, quote=False) in shown, f"{c.name}: explanation not shown in full"


def test_whole_shows_long_cells_and_aligns_them_left():
    import pandas as pd
    from helpers.notebook import whole
    long = "what it means if missing:" + " a long explanation" * 10
    df = pd.DataFrame([{"capability": "x", "what it means if missing": long}])
    assert long not in df._repr_html_()               # what pandas does by default
    shown = whole(df)
    assert long in shown._repr_html_() and long in repr(shown)
    assert '<td style="text-align:left">' in shown._repr_html_()


class _Shell:
    def __init__(self, custom=()):
        self.custom_exceptions, self.set = custom, []
        self.shown = []

    def set_custom_exc(self, exc_tuple, handler):
        self.custom_exceptions = exc_tuple
        self.set.append(handler)

    def _showtraceback(self, etype, value, stb):
        self.shown.append((etype, stb))


def test_install_interrupt_handler_only_for_keyboardinterrupt():
    from helpers import notebook
    shell = _Shell()
    assert notebook.install_interrupt_handler(shell) and shell.custom_exceptions == (KeyboardInterrupt,)
    assert notebook.install_interrupt_handler(shell) and len(shell.set) == 1      # idempotent
    other = _Shell(custom=(ValueError,))
    assert not notebook.install_interrupt_handler(other) and other.set == []      # not ours: left alone
    stb = notebook.interrupt_handler(shell, KeyboardInterrupt, KeyboardInterrupt(), None)
    assert stb == [notebook.INTERRUPTED] and shell.shown == [(KeyboardInterrupt, stb)]


def _run_cell(km, kc, code: str, interrupt_on: str | None = None) -> tuple[str, list]:
    """Execute *code*; with *interrupt_on*, interrupt the kernel once that text is printed.
    Returns the reply status and the iopub outputs (stream and error contents)."""
    msg_id = kc.execute(code)
    outs, interrupted = [], False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = kc.get_iopub_msg(timeout=30)
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = m["msg_type"], m["content"]
        if kind == "status" and content["execution_state"] == "idle":
            break
        if kind in ("stream", "error"):
            outs.append((kind, content))
            if interrupt_on and not interrupted and kind == "stream" and interrupt_on in content["text"]:
                km.interrupt_kernel()
                interrupted = True
    else:
        raise AssertionError(f"cell did not finish: {code!r}")
    reply = kc.get_shell_msg(timeout=30)
    return reply["content"]["status"], outs


def test_interrupting_a_plain_cell_prints_one_line_and_cleans_up():
    """The stop button in a plain experiment cell: one line, the course's servers stopped
    (even one started outside a ``with``), and real failures keep their traceback."""
    from jupyter_client.manager import start_new_kernel
    from helpers.notebook import INTERRUPTED

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(NB))
    try:
        status, outs = _run_cell(km, kc, "from helpers.notebook import mode_banner\nfrom helpers import servers")
        assert status == "ok", outs
        cell = ("import time\nsrv = servers.Server(servers.echo).start()\nport = srv.port\n"
                "print('serving', flush=True)\nfor _ in range(600):\n    time.sleep(0.1)\n")
        status, outs = _run_cell(km, kc, cell, interrupt_on="serving")
        errors = [c for k, c in outs if k == "error"]
        assert status == "error", "the interrupted cell must stop Run All"
        assert len(errors) == 1 and errors[0]["ename"] == "KeyboardInterrupt"
        assert errors[0]["traceback"] == [INTERRUPTED]
        status, outs = _run_cell(km, kc, "import socket\ns = socket.socket()\n"
                                         "print(len(servers._live), s.connect_ex(('127.0.0.1', port)))\ns.close()")
        import errno
        assert outs == [("stream", {"name": "stdout", "text": f"0 {errno.ECONNREFUSED}\n"})], outs
        status, outs = _run_cell(km, kc, "def f():\n    return 1 / 0\nf()")
        errors = [c for k, c in outs if k == "error"]
        assert status == "error" and errors[0]["ename"] == "ZeroDivisionError"
        assert len(errors[0]["traceback"]) > 1, "other errors keep their full traceback"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _banner_needs(text: str) -> set[str] | None:
    import ast
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "mode_banner":
            for kw in node.keywords:
                if kw.arg == "needs":
                    return set(ast.literal_eval(kw.value))
            return {"live_capture"}                   # mode_banner's default
    return None


def _experiments_used(text: str) -> dict[str, set[str]]:
    """The course experiments a notebook source imports by name, with what each needs."""
    import ast
    import importlib
    from helpers.experiments.base import Experiment
    used = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers.experiments"):
            mod = importlib.import_module(node.module)
            for alias in node.names:
                obj = getattr(mod, alias.name, None)
                if isinstance(obj, Experiment):
                    used[alias.name] = set(obj.needs)
    return used


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_banner_names_every_need_of_the_chapters_experiments(src):
    """A chapter whose banner says LIVE must not replay experiments for a reason it did not
    check: in a container where capture works but named namespaces do not, 02_02's banner
    said LIVE while its zero-window experiment replayed."""
    text = src.read_text()
    banner = _banner_needs(text)
    used = _experiments_used(text)
    if banner is None:
        assert not any(used.values()), f"{src.name} runs privileged experiments but shows no banner"
        return
    missing = {name: sorted(needs - banner) for name, needs in used.items() if needs - banner}
    assert not missing, f"{src.name}: mode_banner(needs={sorted(banner)}) misses {missing}"
