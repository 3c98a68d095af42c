"""Last stage of the suite: nothing the course started or changed survives it."""
import json
import os
from pathlib import Path

import pytest

from helpers import leaks


@pytest.fixture(scope="module")
def baseline():
    path = os.environ.get("TCPCOURSE_LEAK_BASELINE")
    if not path or not Path(path).exists():
        pytest.skip("run through `python3 course.py test`, which takes the baseline first")
    return json.loads(Path(path).read_text())


def test_no_capture_process_left(baseline):
    run = os.environ.get(leaks.RUN_ID_VAR)   # only what this test run started
    left = sorted(set(leaks.capture_processes(run_id=run)) - set(baseline["capture_processes"]))
    assert not left, f"capture processes still running: {left}"


def test_no_namespace_left(baseline):
    left = sorted(set(leaks.namespaces()) - set(baseline["namespaces"]))
    assert not left, f"network namespaces still present: {left}"


def test_no_iptables_rule_left(baseline):
    left = sorted(set(leaks.iptables_rules()) - set(baseline["iptables"]))
    assert not left, f"iptables rules still present: {left}"


def test_no_sysctl_changed(baseline):
    now = leaks.sysctls()
    changed = {k: (baseline["sysctls"][k], v) for k, v in now.items()
               if k in baseline["sysctls"] and baseline["sysctls"][k] != v}
    assert not changed, f"host sysctls changed (was, now): {changed}"
    assert len(now) > 100, "the sysctl snapshot should read hundreds of values"
