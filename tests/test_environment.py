"""One source of truth for dependencies: environment.yml must agree with pyproject.toml."""
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


def test_binder_files():
    apt = (ROOT / "apt.txt").read_text().split()
    assert {"tcpdump", "tshark"} <= set(apt)
    assert "pip install" in (ROOT / "postBuild").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^\s*(python3 course\.py \w+)\s*$", readme, re.M)
    assert sorted(set(commands)) == ["python3 course.py study", "python3 course.py test"], commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 course.py test" in ci
