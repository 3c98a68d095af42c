"""helpers.netns against the real kernel: namespaces are created, used and removed.

Tests that need CAP_SYS_ADMIN/CAP_NET_ADMIN skip cleanly without them (the check is
on capabilities, not on uid 0). After this module no tcpcourse-* namespace of this
process, or of a dead process, may remain.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import kernel, netns
from helpers.errors import CourseError, MissingToolError, ParameterError, PrivilegeError

needs_ns = pytest.mark.skipif(
    not netns.have_namespace_privileges(),
    reason="needs CAP_SYS_ADMIN and CAP_NET_ADMIN for network namespaces",
)
pytestmark = pytest.mark.netns


def ours() -> list[str]:
    return [n for n in netns.list_course_namespaces()
            if n.startswith(f"{netns.NS_PREFIX}{os.getpid()}-")]


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def pid_gone(pid: int, timeout: float = 3.0) -> bool:
    """True once *pid* no longer exists (or is a zombie nobody has reaped yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                if any(l.startswith("State:") and "Z" in l.split()[1] for l in f):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(autouse=True, scope="module")
def no_namespace_left_behind():
    yield
    if netns.have_namespace_privileges():
        netns.cleanup_stale()
    assert ours() == [], "a test left a namespace behind"
    leftovers = []
    for name in netns.list_course_namespaces():
        m = netns._NAME_RE.match(name)
        if m and not netns._pid_alive(int(m.group(1))):
            leftovers.append(name)
    assert leftovers == []


def run_child(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# ----------------------------------------------------------------------------- no privileges
def test_capabilities_are_read_from_capeff():
    with open("/proc/self/status") as f:
        caps = int(next(l for l in f if l.startswith("CapEff:")).split()[1], 16)
    expected = [n for n, bit in (("CAP_SYS_ADMIN", 21), ("CAP_NET_ADMIN", 12))
                if not caps & (1 << bit)]
    assert netns.missing_capabilities() == expected


def test_privilege_error_without_capabilities():
    """Without CAP_SYS_ADMIN/CAP_NET_ADMIN: a clear PrivilegeError naming the fallback."""
    if not netns.have_namespace_privileges():
        with pytest.raises(PrivilegeError) as err:
            netns.Namespace().open()
        assert "replay mode" in str(err.value) and "run as root" in str(err.value)
        assert ours() == []
        return
    # privileged here: drop the two capabilities from a child that stays uid 0
    setpriv = subprocess.run(["which", "setpriv"], capture_output=True, text=True).stdout.strip()
    if not setpriv:
        pytest.skip("needs setpriv to drop capabilities")
    code = textwrap.dedent("""
        import os
        from helpers import netns
        from helpers.errors import PrivilegeError
        print(os.getuid(), netns.missing_capabilities())
        try:
            netns.Namespace().open()
        except PrivilegeError as e:
            print("PrivilegeError:", e)
    """)
    out = subprocess.run(
        [setpriv, "--bounding-set", "-sys_admin,-net_admin", "--inh-caps",
         "-sys_admin,-net_admin", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("0 ['CAP_SYS_ADMIN', 'CAP_NET_ADMIN']")
    assert "PrivilegeError:" in out.stdout
    assert "CAP_SYS_ADMIN and CAP_NET_ADMIN" in out.stdout
    assert "replay mode" in out.stdout and "run as root" in out.stdout


def test_missing_ip_is_reported(monkeypatch, tmp_path):
    if not netns.have_namespace_privileges():
        pytest.skip("the privilege check comes first")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingToolError) as err:
        netns.Namespace().open()
    assert "`ip`" in str(err.value) and "iproute2" in str(err.value)


def test_bad_parameters_are_refused_before_anything_is_created():
    before = netns.list_course_namespaces()
    for kw in ({"mtu": 20}, {"mtu": 100_000}, {"mtu": "1500"}, {"name": "../x"},
               {"name": "a b"}, {"sysctls": {"kernel.pid_max": 4096}}):
        with pytest.raises(ParameterError):
            netns.Namespace(**kw)
    assert netns.list_course_namespaces() == before


# ----------------------------------------------------------------------------- sysctl policy
@pytest.mark.parametrize("name", [
    "kernel.pid_max", "vm.swappiness", "fs.file-max",           # not net.* at all
    "net.core.netdev_max_backlog", "net.core.default_qdisc",    # not on the allow-list
    "net.ipv4.tcp_mem", "net.ipv4.udp_mem", "net.ipv4.tcp_max_orphans",  # denylist
    "net.ipv4.inet_peer_threshold", "net.nf_conntrack_max", "net.ipv4.route.gc_thresh",
    "net.ipv6.route.gc_thresh", "net.ipv4.neigh.default.gc_thresh3",
])
def test_host_wide_sysctls_are_refused(name):
    with pytest.raises(ValueError) as err:
        netns.check_sysctl_name(name)
    assert "host" in str(err.value) or "not on the course's list" in str(err.value)
    with pytest.raises(ValueError):
        netns.Namespace(sysctls={name: 1})


@pytest.mark.parametrize("name", [
    "net.ipv4.tcp_syncookies", "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.tcp_max_syn_backlog", "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syn_linear_timeouts", "net.ipv4.tcp_congestion_control",
    "net.ipv4.tcp_rmem", "net.core.somaxconn", "net.ipv4.conf.lo.rp_filter",
    "net/ipv4/tcp_fin_timeout",
])
def test_per_netns_sysctls_pass_the_static_policy(name):
    assert netns.check_sysctl_name(name) == name.replace("/", ".")


@needs_ns
def test_static_policy_agrees_with_the_kernel():
    """Every host sysctl under /proc/sys/net: if the course would write it, the kernel
    must keep it per namespace; if the kernel keeps it host-wide, the course refuses."""
    names = []
    for d, _dirs, files in os.walk("/proc/sys/net"):
        names += [os.path.join(d, f)[len("/proc/sys/"):] for f in files]
    with netns.Namespace() as ns:
        inside_devs = {"all", "default", "lo"}     # the only devices a fresh namespace has
        wrong = []
        for path in names:
            parts = path.split("/")
            device_entry = (len(parts) > 3 and parts[2] in ("conf", "neigh")
                            and parts[3] not in inside_devs)
            try:
                netns.check_sysctl_name(path)
                allowed = True
            except ParameterError:
                allowed = False
            per_ns, reason = netns.sysctl_is_per_netns(path, ns)
            if allowed and not per_ns and not device_entry:
                wrong.append(("allowed but host-wide", path, reason))
            if not allowed and per_ns:
                continue  # conservative: per-namespace but not on the list is fine
        assert wrong == []
        assert len(names) > 100


@needs_ns
def test_kernel_check_detects_shared_and_hidden_sysctls():
    with netns.Namespace() as ns:
        ok, why = netns.sysctl_is_per_netns("net.ipv4.tcp_syncookies", ns)
        assert ok, why
        ok, why = netns.sysctl_is_per_netns("kernel.pid_max", ns)   # visible, shared
        assert not ok and "same /proc/sys entry" in why
        ok, why = netns.sysctl_is_per_netns("net.core.netdev_max_backlog", ns)
        if os.path.exists("/proc/sys/net/core/netdev_max_backlog"):
            assert not ok and "not inside the namespace" in why
        else:   # this process itself runs in a non-initial namespace (a kernel profile)
            assert not ok and "no sysctl" in why
        ok, why = netns.sysctl_is_per_netns("net.ipv4.no_such_sysctl", ns)
        assert not ok and "no sysctl" in why


# ----------------------------------------------------------------------------- a namespace
@needs_ns
def test_namespace_basics():
    with netns.Namespace() as ns:
        assert ns.name.startswith(f"{netns.NS_PREFIX}{os.getpid()}-")
        assert os.path.exists(ns.path) and ns.is_open
        assert ns.name in netns.list_course_namespaces()
        assert netns.is_course_namespace(ns.name) and netns.is_course_namespace(ns)
        link = ns.ip("-o", "link", "show", "lo").stdout
        assert "UP" in link.split("<", 1)[1].split(">", 1)[0].split(",")
        assert "mtu 65536" in link
        r = ns.run(["ip", "-o", "addr", "show", "lo"])
        assert r.returncode == 0 and "127.0.0.1/8" in r.stdout
        # a thread inside really is in another network namespace
        inner = ns.call(lambda: os.stat("/proc/thread-self/ns/net").st_ino)
        assert inner == os.stat(ns.path).st_ino != os.stat("/proc/self/ns/net").st_ino
        assert "TcpExt:" in ns.read_proc("net/netstat")
        with pytest.raises(ParameterError):
            ns.read_proc("../etc/passwd")
        with pytest.raises(ParameterError):
            ns.read_proc("self/environ")
    assert not os.path.exists(ns.path)
    assert not netns.is_course_namespace(ns.name)
    assert ns.name not in netns.list_course_namespaces()


@needs_ns
def test_named_namespace_and_reuse():
    with netns.Namespace(name="flood") as ns:
        assert ns.name == f"{netns.NS_PREFIX}{os.getpid()}-flood"
        with pytest.raises(CourseError):       # the same name twice at once
            netns.Namespace(name="flood").open()
        assert ns.is_open                      # the failed attempt did not touch it
    ns.close()                                 # idempotent
    with pytest.raises(CourseError):           # a Namespace is used once
        ns.open()
    with pytest.raises(CourseError):
        ns.run(["true"])


@needs_ns
def test_sockets_inside_are_isolated_from_the_host():
    with netns.Namespace() as ns:
        srv = ns.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        port = srv.getsockname()[1]
        cli = ns.socket()
        cli.settimeout(5)
        cli.connect(("127.0.0.1", port))          # the creating thread is long gone
        conn, peer = srv.accept()
        cli.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        assert peer == cli.getsockname()
        # the host's 127.0.0.1 is another machine, as far as TCP is concerned
        if len(kernel.ss(state="LISTEN", sport=port)) == 0:
            with socket.socket() as h:
                h.settimeout(2)
                with pytest.raises(ConnectionRefusedError):
                    h.connect(("127.0.0.1", port))
        with socket.socket() as host_l:          # and the other way round
            host_l.bind(("127.0.0.1", 0))
            host_l.listen(1)
            probe = ns.socket()
            probe.settimeout(2)
            if kernel.ss(ns=ns, state="LISTEN", sport=host_l.getsockname()[1]).empty:
                with pytest.raises(ConnectionRefusedError):
                    probe.connect(host_l.getsockname())
        ipv6 = ns.socket(socket.AF_INET6)
        assert ipv6.family == socket.AF_INET6
    # sockets made by the namespace are closed with it
    for s in (srv, cli, probe, ipv6):
        assert s.fileno() == -1
    conn.close()


@needs_ns
def test_mtu_and_offloads_are_applied_inside_only():
    host_mtu = open("/sys/class/net/lo/mtu").read().strip()
    host_k = subprocess.run(["ethtool", "-k", "lo"], capture_output=True, text=True).stdout
    with netns.Namespace(mtu=1500, offloads=False) as ns:
        assert "mtu 1500" in ns.ip("link", "show", "lo").stdout
        state = ns.offload_state()
        for feature in ("tcp-segmentation-offload", "generic-segmentation-offload",
                        "generic-receive-offload"):
            assert state[feature] == "off", feature
        assert ns.offloads_unchanged == []
        out = ns.run(["ethtool", "-k", "lo"]).stdout
        assert "tcp-segmentation-offload: off" in out
        # a connection inside negotiates the small MSS: 1500 - 40 (- 12 timestamps)
        srv = ns.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        cli = ns.socket()
        cli.connect(srv.getsockname())
        info = kernel.tcp_info(cli)
        assert info.advmss in (1448, 1460) and info.pmtu == 1500
    assert open("/sys/class/net/lo/mtu").read().strip() == host_mtu
    assert subprocess.run(["ethtool", "-k", "lo"], capture_output=True,
                          text=True).stdout == host_k


@needs_ns
def test_sysctls_inside_differ_from_the_host():
    name = "net.ipv4.tcp_syncookies"
    host_before = kernel.sysctl(name)
    inside_value = 0 if host_before != 0 else 1
    with netns.Namespace(sysctls={name: inside_value}) as ns:
        assert ns.sysctl(name) == inside_value
        assert kernel.sysctl(name) == host_before
        if subprocess.run(["which", "sysctl"], capture_output=True).returncode == 0:
            assert ns.run(["sysctl", "-n", name]).stdout.strip() == str(inside_value)
        # write later, read back; tuples become space-separated values
        assert ns.sysctl("net.ipv4.ip_local_port_range", (40000, 40010)) == "40000 40010"
        assert kernel.sysctl("net.ipv4.ip_local_port_range") != "40000 40010"
        assert ns.sysctl("net.ipv4.tcp_abort_on_overflow", True) == 1
        # refused even on an open namespace, and nothing is written
        pid_max = kernel.sysctl("kernel.pid_max")
        with pytest.raises(ValueError):
            ns.sysctl("kernel.pid_max", 4096)
        assert kernel.sysctl("kernel.pid_max") == pid_max
        with pytest.raises(ValueError):
            ns.sysctl("net.ipv4.tcp_mem", "1 2 3")
        # a value the kernel rejects is a CourseError naming the sysctl
        with pytest.raises(CourseError) as err:
            ns.sysctl("net.ipv4.tcp_syncookies", "banana")
        assert "tcp_syncookies" in str(err.value)
    assert kernel.sysctl(name) == host_before


# ----------------------------------------------------------------------------- teardown
@needs_ns
def test_gone_after_an_exception():
    with pytest.raises(RuntimeError):
        with netns.Namespace() as ns:
            path = ns.path
            raise RuntimeError("boom")
    assert not os.path.exists(path)
    assert ours() == []


@needs_ns
def test_gone_after_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt):
        with netns.Namespace() as ns:
            p = ns.popen(["sleep", "300"])
            raise KeyboardInterrupt
    assert not os.path.exists(ns.path)
    assert p.poll() is not None


def run_interrupted(body: str, timeout: float = 120) -> tuple[dict, list[str]]:
    """Run *body* in a child Python (its own session) that prints one JSON line with its
    "pid": a real SIGINT, timed by a thread, lands in that child only, never in pytest (a
    stray one, late under load, once ended the unit stage after 281 of 502 tests).
    Returns the child's JSON and the course namespaces named after it that are left."""
    # a suite started in the background inherits SIGINT ignored: the child takes it back
    body = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n" + textwrap.dedent(body)
    child = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True,
                           timeout=timeout, start_new_session=True)
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    left = [n for n in netns.list_course_namespaces() if n.startswith(f"{netns.NS_PREFIX}{out['pid']}-")]
    return out, left


@needs_ns
def test_gone_after_a_real_sigint():
    out, left = run_interrupted("""
        import json, os, signal, time
        from helpers import netns
        try:
            with netns.Namespace() as ns:
                path = ns.path
                signal.raise_signal(signal.SIGINT)
                time.sleep(1)          # the signal arrives before this ends
            got = "not interrupted"
        except KeyboardInterrupt:
            got = "KeyboardInterrupt"
        print(json.dumps({"pid": os.getpid(), "got": got, "path_left": os.path.exists(path)}))
    """)
    assert out["got"] == "KeyboardInterrupt" and not out["path_left"], out
    assert left == []


@needs_ns
def test_sigint_at_any_moment_leaves_nothing_behind():
    """A real SIGINT from another thread, landing during setup, body or teardown (in a child
    Python: the signal can never reach pytest or the test runner)."""
    out, left = run_interrupted("""
        import json, os, signal, threading, time
        from helpers import netns
        prefix = f"{netns.NS_PREFIX}{os.getpid()}-"
        runs = []
        for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05):
            timer = threading.Timer(delay, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
            got = "not interrupted"
            try:
                timer.start()
                with netns.Namespace(offloads=False, sysctls={"net.ipv4.tcp_syncookies": 0}):
                    time.sleep(0.2)
            except KeyboardInterrupt:
                got = "interrupted"
            try:
                timer.join()
                time.sleep(0.01)     # a late signal (a loaded machine) lands here, not in the next round
            except KeyboardInterrupt:
                got += ", late"
            runs.append({"delay": delay, "got": got,
                         "left": [n for n in netns.list_course_namespaces() if n.startswith(prefix)]})
        print(json.dumps({"pid": os.getpid(), "runs": runs}))
    """)
    assert all(r["left"] == [] for r in out["runs"]), out["runs"]
    assert [r["got"] for r in out["runs"]] == ["interrupted"] * 7, out["runs"]
    assert left == []


@needs_ns
def test_processes_inside_are_killed_at_exit():
    with netns.Namespace() as ns:
        p = ns.popen(["sleep", "300"])
        child = ns.popen(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE,
                         text=True)
        grandchild = int(child.stdout.readline())
        # a daemon that escaped its parent: found with `ip netns pids`
        daemon = int(ns.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"]).stdout)
        assert p.poll() is None and child.poll() is None
    assert p.poll() == -signal.SIGTERM
    assert child.poll() is not None
    assert pid_gone(grandchild) and pid_gone(daemon)


def test_running_needs_an_open_namespace():
    ns = netns.Namespace()
    with pytest.raises(CourseError):
        ns.popen(["true"])
    with pytest.raises(CourseError):
        ns.socket()
    ns.close()                # closing a never-opened namespace is harmless


@needs_ns
def test_is_course_namespace_only_for_our_own():
    foreign = f"tcpx-foreign-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        assert not netns.is_course_namespace(foreign)
        assert not netns.is_course_namespace("tcpcourse-1-0")
        assert not netns.is_course_namespace(f"{netns.NS_PREFIX}{os.getpid()}-999")
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=True)


# ----------------------------------------------------------------------------- crashes
@needs_ns
def test_cleanup_stale_removes_namespaces_of_dead_processes():
    dead = dead_pid()
    stale = f"{netns.NS_PREFIX}{dead}-0"
    mine_unregistered = f"{netns.NS_PREFIX}{os.getpid()}-leftover"
    alive = subprocess.Popen(["sleep", "60"])
    live = f"{netns.NS_PREFIX}{alive.pid}-0"
    try:
        for n in (stale, mine_unregistered, live):
            subprocess.run(["ip", "netns", "add", n], check=True)
        # something running inside a stale namespace is killed too
        sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "300"])
        # wait until it is really inside (ip netns exec opens, then enters, then execs):
        # under load cleanup could otherwise run between the open and the enter
        deadline = time.monotonic() + 10
        while str(sleeper.pid) not in subprocess.run(["ip", "netns", "pids", stale], capture_output=True,
                                                     text=True).stdout.split():
            assert time.monotonic() < deadline, "the sleeper never entered the namespace"
            time.sleep(0.01)
        removed = netns.cleanup_stale()
        assert stale in removed and mine_unregistered in removed
        assert live not in removed and live in netns.list_course_namespaces()
        assert stale not in netns.list_course_namespaces()
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
    finally:
        alive.kill()
        alive.wait()
        for n in (stale, mine_unregistered, live):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
    assert live not in netns.list_course_namespaces()


CHILD = """
    import sys, time
    from helpers import netns
    ns = netns.Namespace().open()
    print(ns.name, flush=True)
    {action}
"""


@needs_ns
def test_atexit_removes_an_unclosed_namespace():
    child = run_child(CHILD.format(action="sys.exit(0)"))
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    name = out.split()[0]
    assert name not in netns.list_course_namespaces()


@needs_ns
def test_sigterm_removes_the_namespace():
    child = run_child(CHILD.format(action="time.sleep(60)"))
    name = child.stdout.readline().strip()
    assert name in netns.list_course_namespaces()
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGTERM      # still dies of SIGTERM
    assert name not in netns.list_course_namespaces()


@needs_ns
def test_sigkill_leaves_a_stale_namespace_that_cleanup_removes():
    child = run_child(CHILD.format(action="time.sleep(60)"))
    name = child.stdout.readline().strip()
    child.kill()
    child.wait(timeout=30)
    assert name in netns.list_course_namespaces()      # nobody could clean up ...
    assert name in netns.cleanup_stale()               # ... until the next session
    assert name not in netns.list_course_namespaces()


@needs_ns
def test_new_namespace_sweeps_stale_ones_first():
    stale = f"{netns.NS_PREFIX}{dead_pid()}-7"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with netns.Namespace():
            assert stale not in netns.list_course_namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
