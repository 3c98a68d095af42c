import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import caps


def test_table_rows_and_meaning():
    t = caps.table()
    assert list(t.columns) == ["capability", "available", "detail", "what it means if missing"]
    assert len(t) == 5
    for _, row in t.iterrows():
        if row.available == "NO":
            assert row["what it means if missing"]


def test_detection_matches_the_process():
    c = caps.capabilities()
    assert bool(c.raw_sockets) == caps.has_cap(caps.CAP_NET_RAW)
    if os.geteuid() == 0 and caps.has_cap(caps.CAP_NET_RAW):
        assert c.live_capture, c.live_capture.detail


def test_detected_once():
    assert caps.capabilities() is caps.capabilities()


def test_summary_for_bug_reports():
    s = caps.summary()
    assert "kernel=" in s and "live capture" in s


def test_mode(monkeypatch):
    monkeypatch.delenv("TCPCOURSE_MODE", raising=False)
    assert caps.mode() == "auto"
    monkeypatch.setenv("TCPCOURSE_MODE", "REPLAY")
    assert caps.mode() == "replay"


def test_namespaces_yes_only_with_the_capabilities():
    """A namespace can only be made with both capabilities; with them, "no" names the step
    that failed (a chroot or container may still refuse a named namespace)."""
    c = caps.capabilities().namespaces
    privileged = caps.has_cap(caps.CAP_SYS_ADMIN) and caps.has_cap(caps.CAP_NET_ADMIN)
    if not privileged:
        assert not c and "missing CAP_" in c.detail
    elif not c:
        assert "failed" in c.detail, c.detail
    else:
        assert "created, entered and deleted" in c.detail


# -- the namespace probe does what the experiments do ------------------------------------
ADD_REFUSED = "mount --make-rslave /run/netns failed: Operation not permitted"
EXEC_REFUSED = '"mount --make-rslave /" failed: Invalid argument'


def _fake_ip(tmp_path, fail: str, message: str) -> Path:
    """An `ip` that fails `ip netns <fail> ...` with iproute2's own words (as in a chroot or
    container) and hands every other command to the real `ip`."""
    real = shutil.which("ip")
    if not real:
        pytest.skip("iproute2 is not installed")
    fake = tmp_path / "bin" / "ip"
    fake.parent.mkdir()
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = netns ] && [ "$2" = {fail} ]; then
            echo {shlex.quote(message)} >&2
            exit 255
        fi
        exec {shlex.quote(real)} "$@"
        """))
    fake.chmod(0o755)
    return fake.parent


@pytest.fixture
def fresh_caps():
    caps.capabilities.cache_clear()
    yield
    caps.capabilities.cache_clear()


def _pretend_privileged(monkeypatch):
    """Both capabilities present, so the probe goes on to `ip netns add` (as a plain user
    the fake refuses it before the kernel would)."""
    from helpers import netns
    full = caps.effective_caps() | 1 << caps.CAP_SYS_ADMIN | 1 << caps.CAP_NET_ADMIN
    monkeypatch.setattr(caps, "effective_caps", lambda: full)
    monkeypatch.setattr(netns, "effective_caps", lambda: full)


def _course_namespaces() -> list[str]:
    from helpers import netns
    return [n for n in netns.list_course_namespaces() if "capsprobe" in n]


def _probe_with_fake_ip(tmp_path, monkeypatch, fail: str, message: str) -> caps.Capability:
    """The namespace capability detected with the fake `ip` first on PATH: must be "no",
    and no probe namespace may be left."""
    fake = _fake_ip(tmp_path, fail, message)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    c = caps.capabilities().namespaces
    assert not c, c.detail
    assert not _course_namespaces()
    return c


def test_namespace_add_refused_means_no(tmp_path, monkeypatch, fresh_caps):
    """`ip netns add` refused (mount --make-rslave): capabilities present, but "no"."""
    _pretend_privileged(monkeypatch)
    c = _probe_with_fake_ip(tmp_path, monkeypatch, "add", ADD_REFUSED)
    assert "creating tcpcourse-" in c.detail and ADD_REFUSED in c.detail, c.detail


def test_namespace_exec_refused_means_no_and_is_deleted(tmp_path, monkeypatch, fresh_caps):
    """`ip netns add` works but `ip netns exec` does not (a chroot whose / is not a mount
    point): "no", and the namespace the probe made is gone again."""
    if not (caps.has_cap(caps.CAP_SYS_ADMIN) and caps.has_cap(caps.CAP_NET_ADMIN)):
        pytest.skip("the real `ip netns add` needs CAP_SYS_ADMIN and CAP_NET_ADMIN")
    c = _probe_with_fake_ip(tmp_path, monkeypatch, "exec", EXEC_REFUSED)
    assert "`ip netns exec tcpcourse-" in c.detail and EXEC_REFUSED in c.detail, c.detail


def test_chapters_replay_with_the_reason(tmp_path, monkeypatch, fresh_caps):
    """Where the probe fails, a namespace chapter's banner says REPLAY and why, and its
    experiments replay in auto mode with the same reason."""
    from helpers.experiments.reuseport import reuseport_close
    from helpers.notebook import mode_banner
    _pretend_privileged(monkeypatch)
    _probe_with_fake_ip(tmp_path, monkeypatch, "add", ADD_REFUSED)
    monkeypatch.delenv("TCPCOURSE_MODE", raising=False)
    banner = mode_banner(needs=("namespaces",))
    assert not banner.live
    assert str(banner).startswith("REPLAY") and ADD_REFUSED in str(banner), str(banner)
    r = reuseport_close()
    assert r.mode == "replay" and ADD_REFUSED in r.reason, r.reason


def test_namespace_probe_in_a_real_chroot(tmp_path):
    """For real: a chroot whose / is not a mount point (built in a private mount namespace
    from bind mounts, gone when it exits). `unshare --net` works there, so the old check
    said yes; `ip netns exec` does not, and the probe must say no."""
    if os.geteuid() != 0 or not (caps.has_cap(caps.CAP_SYS_ADMIN) and caps.has_cap(caps.CAP_NET_ADMIN)):
        pytest.skip("building a chroot needs root")
    tools = [shutil.which(t) for t in ("unshare", "chroot", "mount", "ip")]
    if not all(tools):
        pytest.skip("needs unshare, chroot, mount and ip")
    root = tmp_path / "chroot"
    root.mkdir()
    repo = Path(__file__).resolve().parents[1]
    binds = ["/usr", "/etc", "/dev", "/proc", "/sys", sys.base_prefix, str(repo)]
    for d in ("bin", "sbin", "lib", "lib64", "lib32"):
        host = Path("/") / d
        if host.is_symlink():
            (root / d).symlink_to(os.readlink(host))
        elif host.is_dir():
            binds.append(str(host))
    (root / "run").mkdir()
    (root / "tmp").mkdir(mode=0o1777)
    script = ["set -e"]
    for b in dict.fromkeys(binds):
        script += [f"mkdir -p {shlex.quote(str(root) + b)}",
                   f"mount --rbind {shlex.quote(b)} {shlex.quote(str(root) + b)}"]
    probe = ("import subprocess; from helpers import caps; c = caps.capabilities().namespaces; "
             "u = subprocess.run(['unshare', '--net', 'true']).returncode; "
             "print('RESULT', bool(c), u, c.detail)")
    script.append(f"cd / && exec chroot {shlex.quote(str(root))} /bin/sh -c "
                  + shlex.quote(f"cd {shlex.quote(str(repo))} && exec {shlex.quote(sys.executable)} -c {shlex.quote(probe)}"))
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script)],
                         capture_output=True, text=True, timeout=60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, f"the chroot did not run the probe: {out.stdout} {out.stderr}"
    _, available, unshare_rc, detail = line.split(" ", 3)
    assert unshare_rc == "0", "unshare --net works in the chroot (what the old check tested)"
    assert available == "False", f"the probe said yes in a chroot: {detail}"
    assert "tcpcourse-" in detail and "mount --make-rslave" in detail, detail
    assert not _course_namespaces()
