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
