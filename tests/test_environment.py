"""One source of truth for dependencies: environment.yml must agree with pyproject.toml."""
import ast
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _split(spec: str):
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_split(s) for s in project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = dict(_split(s) for s in env["dependencies"] if isinstance(s, str))
    python_spec = conda.pop("python")
    conda.pop("pip", None)
    assert conda == wanted, (
        f"environment.yml and pyproject.toml disagree; only in environment.yml: "
        f"{sorted(set(conda.items()) - set(wanted.items()))}, only in pyproject: "
        f"{sorted(set(wanted.items()) - set(conda.items()))}")
    assert python_spec.replace(",", "") == project["requires-python"].replace(",", "").replace(" ", "")


def test_python_bounds_exclude_314():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "<3.14" in project["requires-python"], "pyshark 0.6 breaks on Python 3.14"
    assert sys.version_info < (3, 14)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^\s*(python3 course\.py \w+)\s*$", readme, re.M)
    assert sorted(set(commands)) == ["python3 course.py study", "python3 course.py test"], commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 course.py test" in ci


def course_packages() -> tuple[set[str], set[str]]:
    """The Debian packages course.py's ensure_system installs: (study and test, test only),
    read from its TOOLS and TEST_TOOLS tables (tool -> package) without running it."""
    tree = ast.parse((ROOT / "course.py").read_text())
    tables = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id in ("TOOLS", "TEST_TOOLS"):
                    tables[t.id] = set(ast.literal_eval(node.value).values())
    assert set(tables) == {"TOOLS", "TEST_TOOLS"}, "course.py's package tables moved"
    return tables["TOOLS"], tables["TEST_TOOLS"]


def _readme_apt_lines() -> list[set[str]]:
    readme = (ROOT / "README.md").read_text()
    return [{w for w in line.split() if not w.startswith("-")}
            for line in re.findall(r"apt-get install ([^`\n]+)", readme)]


def test_readme_names_every_package_course_py_installs():
    """A learner without sudo asks root to run the README's apt-get line: it must name every
    package course.py would install (and the venv module), or a tool is missing later."""
    packages, test_only = course_packages()
    assert {"procps", "tcpdump", "tshark", "iproute2"} <= packages
    lines = _readme_apt_lines()
    full = [line for line in lines if packages <= line]
    assert full, (f"no apt-get line in README.md names all of {sorted(packages)}; "
                  f"closest misses {sorted(packages - max(lines, key=len, default=set()))}")
    assert "python3-venv" in full[0], "without the venv module course.py stops"
    assert any(test_only <= line for line in lines), f"README.md never names {sorted(test_only)}"
    extra = full[0] - packages - {"python3-venv", "install", "apt-get"}
    assert not extra, f"README.md asks for packages course.py does not: {sorted(extra)}"
