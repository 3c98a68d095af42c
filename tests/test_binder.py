"""The way onto Binder: README's launch link opens a notebook that exists, and the Binder
files (environment.yml, apt.txt, postBuild) provide what the notebooks and helpers use."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote

import yaml

from test_environment import ROOT, _split, course_packages

BINDER_LINK = re.compile(r"https://mybinder\.org/v2/gh/([^/\s)]+)/([^/\s)]+)/([^?\s)]+)\?urlpath=([^\s)`]+)")
PLACEHOLDER = ("OWNER", "REPO")


def _links() -> list[tuple[str, str, str, str]]:
    return BINDER_LINK.findall((ROOT / "README.md").read_text())


def _origin() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def test_readme_has_a_binder_link_to_an_existing_notebook():
    links = _links()
    assert links, "README.md gives no mybinder.org v2/gh launch link"
    for owner, repo, ref, urlpath in links:
        assert ref == "HEAD", f"the link should follow the default branch (HEAD), not {ref!r}"
        path = unquote(urlpath)
        assert path.startswith("lab/tree/"), f"urlpath {path!r} does not open JupyterLab on a file"
        target = ROOT / path.removeprefix("lab/tree/")
        assert target.suffix == ".ipynb" and target.is_file(), f"urlpath names {target}, which does not exist"
    assert any(unquote(u) == "lab/tree/notebooks/00_00-index.ipynb" for *_, u in links), "start at the index"


def test_binder_repository_is_this_one_or_a_marked_placeholder():
    readme = (ROOT / "README.md").read_text()
    origin = _origin()
    github = re.search(r"github\.com[:/]([^/\s]+)/([^/\s]+?)(?:\.git)?$", origin or "")
    for owner, repo, *_ in _links():
        if github:
            assert (owner, repo) == github.groups(), f"the link names {owner}/{repo}, the remote is {origin}"
        else:
            assert (owner, repo) == PLACEHOLDER, f"no GitHub remote, yet the link names {owner}/{repo}"
            assert re.search(r"OWNER/REPO`? is a placeholder", readme), \
                "README.md must say that OWNER/REPO is a placeholder to fill in"


# -- the Binder environment provides what the code imports --------------------------------
def _imports() -> dict[str, set[str]]:
    """Top-level third-party modules imported by notebooks/src/*.py and helpers/**/*.py,
    each with the files that import it."""
    files = sorted((ROOT / "notebooks" / "src").glob("*.py")) + sorted((ROOT / "helpers").rglob("*.py"))
    found: dict[str, set[str]] = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "helpers":
                    found.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    return found


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _requires(dist: str) -> set[str]:
    """Distributions *dist* requires (unconditionally), from its installed metadata."""
    try:
        reqs = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return set()
    return {_norm(_split(r)[0].split("[")[0].split(";")[0]) for r in reqs if "extra ==" not in r}


def _provided(listed: set[str]) -> set[str]:
    """Every distribution installing *listed* brings: them and their requirements, closed."""
    seen, todo = set(), list(listed)
    while todo:
        d = todo.pop()
        if d not in seen:
            seen.add(d)
            todo += sorted(_requires(d) - seen)
    return seen


def test_environment_yml_provides_every_import():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = {_norm(_split(s)[0]) for s in env["dependencies"] if isinstance(s, str)} - {"python", "pip"}
    provided = _provided(listed)
    owners = metadata.packages_distributions()
    imports = _imports()
    assert {"pandas", "pyshark", "scapy", "ipywidgets"} <= set(imports), "the import scan finds the course's libraries"
    missing = {}
    for module, files in sorted(imports.items()):
        dists = {_norm(d) for d in owners.get(module, [module])}
        if not dists & provided:
            missing[module] = (sorted(dists), sorted(files)[:3])
    assert not missing, f"imported but not provided by environment.yml (module: distributions, files): {missing}"


def test_apt_txt_has_the_tools():
    """pyshark runs tshark; ss/nstat/ip (iproute2), strace and the rest are what course.py
    installs everywhere else, so Binder gets the same."""
    apt = set((ROOT / "apt.txt").read_text().split())
    packages, _ = course_packages()
    assert "tshark" in apt, "pyshark needs tshark"
    assert packages <= apt, f"apt.txt lacks {sorted(packages - apt)} (course.py installs them)"


def test_postbuild_installs_the_helpers_package():
    post = (ROOT / "postBuild").read_text()
    assert post.startswith("#!"), "postBuild must be an executable script"
    assert (ROOT / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
    assert re.search(r"pip install .*-e \.", post), "postBuild installs the course's helpers package"
