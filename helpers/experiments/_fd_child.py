"""Child process for the 01_01 fd experiment: a fresh interpreter, so fd numbers are
predictable (0, 1, 2 are stdin/stdout/stderr; the first socket gets the lowest free fd).
Prints one JSON object of observations on stdout. Not for direct use.

bind() and listen() are called through libc (ctypes) so that their real return values
are recorded: Python's socket methods return None and raise on failure."""
import ctypes
import json
import os
import socket
import struct
import subprocess
import sys

_libc = ctypes.CDLL(None, use_errno=True)


def open_fds() -> list[int]:
    """The fds open in this process now (the listing's own fd excluded)."""
    fds = []
    for fd in range(0, 1024):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            pass
    return fds


def _ss(port: int) -> str:
    out = subprocess.run(["ss", "-tanH", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True)
    return out.stdout


def _sys_bind(fd: int, addr: str, port: int) -> int:
    sin = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(addr) + bytes(8)
    buf = ctypes.create_string_buffer(sin, len(sin))
    ret = _libc.bind(fd, buf, len(sin))
    if ret != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return ret


def _sys_listen(fd: int, backlog: int) -> int:
    ret = _libc.listen(fd, backlog)
    if ret != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return ret


def _sys_close(sock: socket.socket) -> int:
    fd = sock.detach()          # Python forgets the fd; libc's close() returns the real result
    ret = _libc.close(fd)
    if ret != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return ret


def main(n_clients: int, backlog: int = 8) -> None:
    obs = {"steps": [], "backlog": backlog}

    def step(call, returns, note=""):
        obs["steps"].append({"call": call, "returns": returns, "note": note})

    obs["open_before_socket"] = open_fds()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lfd = listener.fileno()
    step("socket(AF_INET, SOCK_STREAM)", lfd, "a new fd")
    obs["listener_fd"] = lfd
    ret = _sys_bind(lfd, "127.0.0.1", 0)
    port = listener.getsockname()[1]
    step(f"bind({lfd}, 127.0.0.1:0)", ret, f"0 = success; port 0: the kernel picked port {port}")
    obs["port"] = port
    before = {"open": open_fds(), "accepting": listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)}
    ret = _sys_listen(lfd, backlog)
    after = {"open": open_fds(), "accepting": listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)}
    step(f"listen({lfd}, {backlog})", ret, "0 = success; no new fd: the same fd now accepts")
    obs["listen"] = {"ret": ret, "before": before, "after": after}

    clients, accepted = [], []
    for _ in range(n_clients):
        c = socket.socket()
        err = c.connect_ex(("127.0.0.1", port))
        clients.append(c)
        step("socket()  [client]", c.fileno(), "the client's fd, in the same process")
        step(f"connect({c.fileno()}, 127.0.0.1:{port})", err, f"0 = connected; local port {c.getsockname()[1]}")
    obs["ss_before_accept"] = _ss(port)
    for _ in range(n_clients):
        conn, peer = listener.accept()
        accepted.append(conn)
        step(f"accept({lfd})", conn.fileno(), f"a NEW fd for the connection from port {peer[1]}")

    obs["clients"] = [{"fd": c.fileno(), "local": list(c.getsockname()), "peer": list(c.getpeername())}
                      for c in clients]
    obs["accepted"] = [{"fd": a.fileno(), "local": list(a.getsockname()), "peer": list(a.getpeername())}
                       for a in accepted]
    obs["listener_after"] = {
        "fd": listener.fileno(),
        "local": list(listener.getsockname()),
        "accepting": listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
    }
    obs["ss"] = _ss(port)

    # Close two fds, the LOWER one first: "last freed" and "lowest free" now differ.
    lower, higher = sorted([accepted[0], accepted[-1] if len(accepted) > 1 else clients[-1]],
                           key=lambda s: s.fileno())
    freed = [lower.fileno(), higher.fileno()]
    step(f"close({freed[0]})", _sys_close(lower), "the lower one first")
    step(f"close({freed[1]})", _sys_close(higher), "the higher one last")
    obs["freed_order"] = freed
    obs["open_before_reuse"] = open_fds()
    again = socket.socket()
    step("socket()", again.fileno(), "which of the two free numbers?")
    obs["open_before_second"] = open_fds()
    again2 = socket.socket()
    step("socket()", again2.fileno(), "and the next one")
    obs["reused"] = [again.fileno(), again2.fileno()]
    obs["open_fds"] = open_fds()
    print(json.dumps(obs))
    for s in clients + accepted + [again, again2, listener]:
        s.close()               # detached sockets: close() is a no-op


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
