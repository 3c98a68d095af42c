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


@pytest.fixture(scope="module")
def run():
    """This test run's id: only what it started is checked, not a learner's own Wireshark
    or tshark, nor another job's capture or namespaces."""
    run_id = os.environ.get(leaks.RUN_ID_VAR)
    if not run_id:
        pytest.skip(f"run through `python3 course.py test`, which sets {leaks.RUN_ID_VAR}: without "
                    "it the check cannot tell the course's processes from anyone else's")
    return run_id


def test_no_capture_process_left(baseline, run):
    left = sorted(set(leaks.capture_processes(run_id=run)) - set(baseline["capture_processes"]))
    assert not left, f"capture processes still running: {left}"


def test_no_namespace_left(baseline, run):
    left = sorted(set(leaks.namespaces(run)) - set(baseline["namespaces"]))
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
