"""Capture: real tcpdump, complete files, clean stops, clear errors."""
import os
import socket
import subprocess
import time

import pytest

from helpers import caps, dissect
from helpers.capture import Capture, port_filter, stop_all
from helpers.errors import CourseError, MissingToolError, PrivilegeError
from helpers.leaks import capture_processes
from helpers.servers import Server, connect, echo

from conftest import needs_live


def _traffic(port, n):
    with connect("127.0.0.1", port) as c:
        for _ in range(n):
            c.sendall(b"x" * 10)
            c.recv(100)


@needs_live
def test_capture_is_complete_and_filtered():
    with Server(echo) as srv, Server(echo) as other:
        with Capture([srv.port]) as cap:
            _traffic(srv.port, 50)
            _traffic(other.port, 5)   # not in the filter
    df = dissect.segments(cap.path)
    assert set(df.sport) | set(df.dport) >= {srv.port}
    assert other.port not in set(df.sport) | set(df.dport)
    # 3 handshake + 50 * (request, reply, maybe acks) + FIN exchange: every payload is there
    assert (df["len"] == 10).sum() == 100
    assert df["flags"].str.contains("FIN").sum() == 2, "the tail (FIN exchange) is in the file"
    assert cap.stopped_cleanly and cap.dropped == 0


@needs_live
def test_no_lost_tail_with_both_cores_busy():
    stop = time.monotonic() + 20
    hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2)]
    try:
        with Server(echo) as srv:
            with Capture([srv.port]) as cap:
                _traffic(srv.port, 2000)
        df = dissect.segments(cap.path)
        assert (df["len"] == 10).sum() == 4000
        assert df.iloc[-1]["flags"] in ("ACK", "FIN+ACK")
        assert time.monotonic() < stop
    finally:
        for h in hogs:
            h.kill()
            h.wait()


@needs_live
def test_interrupted_capture_leaves_no_process():
    # only this process's captures: another job's tcpdump may come and go meanwhile
    before = set(capture_processes(parent=os.getpid()))
    with Server(echo) as srv:
        with pytest.raises(KeyboardInterrupt):
            with Capture([srv.port]):
                _traffic(srv.port, 3)
                raise KeyboardInterrupt
    assert set(capture_processes(parent=os.getpid())) <= before


@needs_live
def test_stop_all_kills_forgotten_captures():
    cap = Capture([9]).start()
    assert cap.proc.poll() is None
    stop_all()
    assert cap.proc is None or cap.proc.poll() is not None


def test_port_filter():
    assert port_filter([80, 443, 80]) == "tcp port 80 or tcp port 443"
    with pytest.raises(CourseError, match="at least one port"):
        port_filter([])
    with pytest.raises(CourseError, match="not a TCP port"):
        port_filter([70000])


def test_missing_tcpdump_is_named(monkeypatch):
    import helpers.capture as capmod
    monkeypatch.setattr(capmod, "find_tool", lambda name: None)
    with pytest.raises(MissingToolError, match="apt-get install tcpdump"):
        capmod._tcpdump()


def test_no_privilege_is_named(no_capture):
    with pytest.raises(PrivilegeError, match="TCPCOURSE_MODE=replay"):
        Capture([9]).start()


@needs_live
def test_capture_inside_a_namespace():
    from helpers.netns import Namespace
    if not caps.capabilities().namespaces:
        pytest.skip("namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN")
    with Namespace(mtu=1500, offloads=False) as ns:
        with Server(echo, ns=ns) as srv:
            with Capture([srv.port], ns=ns) as cap:
                with connect("127.0.0.1", srv.port, ns=ns) as c:
                    c.sendall(b"y" * 5000)
                    got = b""
                    while len(got) < 5000:
                        got += c.recv(65536)
            # the host's lo never saw this port: the namespace has its own lo
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", srv.port), timeout=0.5).close()
    df = dissect.segments(cap.path)
    assert df.iloc[0]["flags"] == "SYN" and df.iloc[0]["mss"] == 1460, "MTU 1500 inside: MSS 1460"
    assert df["len"].max() <= 1448, "offloads off: real segments of at most MSS - 12 bytes"
    assert df["len"].sum() == 10000
