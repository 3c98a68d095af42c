"""Servers and clients: loopback only, ephemeral ports, cleaned up on every exit path."""
import socket
import threading

import pytest

from helpers.errors import UnsafeTargetError
from helpers.safety import require_loopback
from helpers.servers import Server, connect, echo, listener, recv_until, request_response


def _threads():
    return {t for t in threading.enumerate() if t.name.startswith(("server", "listener"))}


def test_echo_and_request_response():
    with Server(echo) as srv:
        assert srv.port > 0
        with connect("127.0.0.1", srv.port) as c:
            c.sendall(b"hello\n")
            assert recv_until(c) == b"hello\n"
    with Server(request_response(b"pong\n")) as srv:
        with connect("127.0.0.1", srv.port) as c:
            c.sendall(b"a\nb\n")
            buf = recv_until(c)
            if buf.count(b"pong") < 2:  # the two replies may arrive in one segment or two
                buf += recv_until(c)
            assert buf == b"pong\npong\n"


def test_ipv6_loopback():
    with Server(echo, host="::1") as srv:
        with connect("::1", srv.port) as c:
            c.sendall(b"v6\n")
            assert recv_until(c) == b"v6\n"


def test_listener_never_accepts_but_handshakes_complete():
    with listener(backlog=4) as lst:
        socks = [socket.create_connection(("127.0.0.1", lst.port), timeout=2) for _ in range(3)]
        assert lst.connections == []
        for s in socks:
            s.close()


def test_cleanup_on_exception_and_keyboard_interrupt():
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with Server(echo) as srv:
                port = srv.port
                with connect("127.0.0.1", port):
                    raise exc
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
    assert not {t for t in _threads() if t.is_alive()}


@pytest.mark.parametrize("host", ["8.8.8.8", "10.0.0.1", "192.168.1.1", "example.com", "0.0.0.0", "::", "", None])
def test_non_loopback_refused(host):
    with pytest.raises(UnsafeTargetError) as err:
        Server(echo, host=host)
    assert "fix:" in str(err.value)
    with pytest.raises(UnsafeTargetError):
        with connect(host, 80):
            pass


def test_loopback_forms_accepted():
    assert require_loopback("localhost") == "127.0.0.1"
    assert require_loopback("127.1.2.3") == "127.1.2.3"
    assert require_loopback("::1") == "::1"
    assert require_loopback("::ffff:127.0.0.1") == "127.0.0.1"


def test_bad_sockopt_is_explained():
    from helpers.errors import CourseError
    with pytest.raises(CourseError, match="setsockopt"):
        with connect("127.0.0.1", 9, sockopts=[(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1)]):
            pass
