"""Loopback servers and clients as context managers, on ephemeral ports, always cleaned up.

Every helper binds port 0 (the kernel picks a free port: read ``server.port``), checks its
address with :func:`helpers.safety.require_loopback`, and closes every socket and joins
every thread on exit, also when the block raises or the learner presses stop
(KeyboardInterrupt). ``stop_all()`` runs at interpreter exit as a last resort.

- :class:`Server`: a listener with an accept thread and a handler per connection
  (``echo``, ``request_response(reply)``, or your own ``handler(conn, addr)``)
- :func:`listener`: a listener that never calls accept() (the kernel still completes
  handshakes into the accept queue)
- :func:`connect`: a client socket with options set *before* connect()
"""
from __future__ import annotations

import atexit
import contextlib
import select
import socket
import threading
import time
import weakref
from typing import Callable, Iterable, Sequence

from .errors import CourseError
from .safety import require_loopback

SockOpt = tuple[int, int, int]
_live: "weakref.WeakSet[Server]" = weakref.WeakSet()


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _new_socket(family: int, ns=None, type_=socket.SOCK_STREAM) -> socket.socket:
    if ns is not None:
        return ns.socket(family, type_)
    return socket.socket(family, type_)


def apply_sockopts(sock: socket.socket, sockopts: Iterable[SockOpt]) -> None:
    for level, opt, value in sockopts or ():
        try:
            sock.setsockopt(level, opt, value)
        except OSError as exc:
            raise CourseError(f"setsockopt(level={level}, option={opt}, value={value}) failed: {exc}.",
                              "check the value is allowed for this option (see `man 7 tcp`).") from exc


# -- handlers ------------------------------------------------------------------
def echo(conn: socket.socket, addr) -> None:
    """Send back whatever arrives, until the peer closes."""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def request_response(reply: bytes = b"pong\n", terminator: bytes = b"\n",
                     max_request: int = 1 << 20) -> Callable:
    """A handler that reads one request up to *terminator*, sends *reply*, repeats."""
    def handler(conn: socket.socket, addr) -> None:
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            if len(buf) > max_request:
                raise CourseError(f"request larger than {max_request} bytes without {terminator!r}.",
                                  "end each request with the terminator.")
            while terminator in buf:
                _, buf = buf.split(terminator, 1)
                conn.sendall(reply)
    return handler


class Server:
    """A loopback TCP server: ``with Server(echo) as srv: srv.port``.

    handler      ``handler(conn, addr)`` run in a thread per connection; None keeps the
                 accepted sockets open without reading (see ``srv.connections``)
    accept       False: never call accept() (connections wait in the accept queue)
    sockopts     (level, option, value) set on the listener before bind/listen
    ns           a :class:`helpers.netns.Namespace` to serve inside
    max_connections  accepts beyond this are closed at once (bounded by construction)
    """

    def __init__(self, handler: Callable | None = echo, *, host: str = "127.0.0.1", port: int = 0,
                 backlog: int = 128, accept: bool = True, sockopts: Sequence[SockOpt] = (),
                 reuseport: bool = False, ns=None, max_connections: int = 10_000,
                 name: str = "server"):
        self.host = require_loopback(host, what="server address")
        self.requested_port = int(port)
        self.backlog = int(backlog)
        self.handler = handler
        self.accept_enabled = accept
        self.sockopts = list(sockopts)
        if reuseport:
            self.sockopts.append((socket.SOL_SOCKET, socket.SO_REUSEPORT, 1))
        self.ns = ns
        self.max_connections = max_connections
        self.name = name
        self.sock: socket.socket | None = None
        self.connections: list[tuple[socket.socket, tuple]] = []
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The bound port (kept after stop(), for reports)."""
        return self._address[1]

    @property
    def address(self) -> tuple:
        return self._address

    def start(self) -> "Server":
        sock = _new_socket(_family(self.host), self.ns)
        try:
            apply_sockopts(sock, self.sockopts)
            sock.bind((self.host, self.requested_port))
            sock.listen(self.backlog)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._address = sock.getsockname()[:2]
        _live.add(self)
        if self.accept_enabled:
            t = threading.Thread(target=self._accept_loop, daemon=True, name=f"{self.name}-accept")
            t.start()
            self._threads.append(t)
        return self

    def _accept_loop(self) -> None:
        sock = self.sock
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([sock], [], [], 0.05)
                if not ready:
                    continue
                conn, addr = sock.accept()
            except (OSError, ValueError):
                return  # listener closed
            with self._lock:
                if len(self.connections) >= self.max_connections:
                    conn.close()
                    continue
                self.connections.append((conn, addr))
            if self.handler is not None:
                t = threading.Thread(target=self._serve, args=(conn, addr), daemon=True,
                                     name=f"{self.name}-conn")
                t.start()
                with self._lock:
                    self._threads.append(t)

    def _serve(self, conn: socket.socket, addr) -> None:
        """Run the handler; when it returns, the server closes its end (sends FIN)."""
        try:
            self.handler(conn, addr)
        except OSError:
            pass  # peer reset / closed under us: normal at teardown
        except BaseException as exc:  # kept for the experiment to report
            self.errors.append(exc)
        finally:
            conn.close()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self.sock is not None:
            self.sock.close()
        deadline = time.monotonic() + timeout
        # the accept loop may be handing over a connection it has just accepted: let it finish
        # first, so that connection and its thread are in the lists closed and joined below
        with self._lock:
            accepting = [t for t in self._threads if t.name.endswith("-accept")]
        for t in accepting:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            conns, self.connections = self.connections, []
            threads = list(self._threads)
        for conn, _ in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        _live.discard(self)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False


def listener(backlog: int = 4, *, host: str = "127.0.0.1", **kw) -> Server:
    """A listener that never calls accept(): the kernel still answers SYNs."""
    return Server(None, host=host, backlog=backlog, accept=False, name="listener", **kw)


@contextlib.contextmanager
def connect(host: str, port: int, *, sockopts: Sequence[SockOpt] = (), timeout: float | None = 5.0,
            ns=None, bind_port: int = 0):
    """A connected client socket (options applied before connect), closed on exit."""
    host = require_loopback(host, what="client target")
    sock = _new_socket(_family(host), ns)
    try:
        apply_sockopts(sock, sockopts)
        if bind_port:
            sock.bind((host, bind_port))
        sock.settimeout(timeout)
        sock.connect((host, port))
        yield sock
    finally:
        sock.close()


def recv_until(sock: socket.socket, terminator: bytes = b"\n", limit: int = 1 << 20) -> bytes:
    """Read until *terminator* (or EOF), bounded by *limit* bytes."""
    buf = b""
    while terminator not in buf:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
        if len(buf) > limit:
            raise CourseError(f"no {terminator!r} within {limit} bytes.", "check the server's reply format.")
    return buf


def stop_all() -> None:
    for srv in list(_live):
        srv.stop(timeout=0.5)


atexit.register(stop_all)
