"""Kernel profiles: the definitions, the command line, and namespaces inheriting them."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from helpers import profiles

ROOT = Path(__file__).resolve().parent.parent


def course():
    spec = importlib.util.spec_from_file_location("course_script", ROOT / "course.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_at_least_three_profiles_that_differ():
    assert {"host", "older-distro", "tuned-server"} <= set(profiles.names())
    old = profiles.PROFILES["older-distro"]["sysctls"]
    assert old["net.ipv4.tcp_rmem"].split()[2] == str(6 << 20)
    assert old["net.ipv4.tcp_syn_linear_timeouts"] == "0"
    assert old["net.ipv4.tcp_congestion_control"] in ("reno", "cubic")   # loss-based
    assert int(profiles.PROFILES["tuned-server"]["sysctls"]["net.core.somaxconn"]) > 4096
    assert set(profiles.DEFAULT_EXTRA) <= set(profiles.names())


@pytest.mark.parametrize("name", profiles.names())
def test_profile_sysctls_exist_on_this_kernel(name):
    """A misspelt name would be skipped at run time: every one must be a real sysctl here
    (tcp_syn_linear_timeouts is the exception on kernels before 6.5, where it is absent)."""
    for key in profiles.PROFILES[name]["sysctls"]:
        assert key.startswith("net.")
        path = Path("/proc/sys", *key.split("."))
        if key == "net.ipv4.tcp_syn_linear_timeouts" and not path.exists():
            continue
        assert path.exists(), f"{name}: no sysctl {key} on this kernel"


def test_parse_custom_profile():
    got = profiles.parse_assignments("net.ipv4.tcp_rmem=4096 131072 6291456, net.core.somaxconn=128")
    assert got == {"net.ipv4.tcp_rmem": "4096 131072 6291456", "net.core.somaxconn": "128"}
    with pytest.raises(ValueError):
        profiles.parse_assignments("kernel.hostname=x")
    with pytest.raises(ValueError):
        profiles.parse_assignments("net.ipv4.tcp_sack")


def test_command_line_choice():
    c = course()
    chosen, rest = c.choose_profiles(["-k", "rules"])
    assert [n for n, _ in chosen] == ["machine", *profiles.DEFAULT_EXTRA] and rest == ["-k", "rules"]
    assert chosen[0][1] is None
    chosen, _ = c.choose_profiles(["--profile", "all"])
    assert [n for n, _ in chosen] == profiles.names()
    chosen, _ = c.choose_profiles(["--profile=tuned-server"])
    assert chosen == [("tuned-server", profiles.PROFILES["tuned-server"]["sysctls"])]
    chosen, _ = c.choose_profiles(["--profile", "custom:net.ipv4.tcp_fin_timeout=5"])
    assert chosen == [("custom", {"net.ipv4.tcp_fin_timeout": "5"})]
    with pytest.raises(SystemExit, match="no kernel profile called"):
        c.choose_profiles(["--profile", "nonsense"])


@pytest.mark.netns
def test_course_namespaces_inherit_the_profile(monkeypatch):
    from helpers.netns import Namespace, have_namespace_privileges
    if not have_namespace_privileges():
        pytest.skip("needs namespace privileges")
    monkeypatch.setenv("TCPCOURSE_PROFILE_SYSCTLS", json.dumps(
        {"net.ipv4.tcp_fin_timeout": "17", "net.ipv4.tcp_max_syn_backlog": "333",
         "net.ipv4.tcp_congestion_control": "no-such-algorithm"}))
    with Namespace(sysctls={"net.ipv4.tcp_max_syn_backlog": 444}) as ns:
        assert ns.sysctl("net.ipv4.tcp_fin_timeout") == 17           # from the profile
        assert ns.sysctl("net.ipv4.tcp_max_syn_backlog") == 444      # the experiment's own wins
        assert ns.sysctl("net.ipv4.tcp_congestion_control") != "no-such-algorithm"


def test_host_sysctl_restore_file(tmp_path, monkeypatch):
    """A profile that had to change a host-wide sysctl writes it down first, so a killed run
    is undone by the next one."""
    c = course()
    monkeypatch.setattr(c, "STATE", tmp_path)
    monkeypatch.setattr(c, "HOST_RESTORE", tmp_path / "restore.json")
    c.remember_host_sysctl("net.core.wmem_max", "4194304")
    c.remember_host_sysctl("net.core.wmem_max", "212992")   # the first (original) value is kept
    assert json.loads((tmp_path / "restore.json").read_text()) == {"net.core.wmem_max": "4194304"}
    current = Path("/proc/sys/net/core/wmem_max").read_text().strip()
    try:   # writable only by root, and only in the initial namespace (read-only copy elsewhere)
        Path("/proc/sys/net/core/wmem_max").write_text(current)
    except OSError:
        return
    (tmp_path / "restore.json").write_text(json.dumps({"net.core.wmem_max": current}))
    c.restore_host_sysctls()
    assert not (tmp_path / "restore.json").exists()
    assert Path("/proc/sys/net/core/wmem_max").read_text().strip() == current
