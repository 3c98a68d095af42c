"""Child process for the 01_01 fd experiment: a fresh interpreter, so fd numbers are
predictable (0, 1, 2 are stdin/stdout/stderr; the first socket gets the lowest free fd).
Prints one JSON object of observations on stdout. Not for direct use."""
import json
import os
import socket
import subprocess
import sys


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _ss(port: int) -> str:
    out = subprocess.run(["ss", "-tanH", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True)
    return out.stdout


def main(n_clients: int) -> None:
    obs = {"steps": []}

    def step(call, result, note=""):
        obs["steps"].append({"call": call, "result": result, "note": note})

    obs["lowest_free_before"] = next(fd for fd in range(3, 1024) if not _is_open(fd))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    step("socket(AF_INET, SOCK_STREAM)", listener.fileno(), "a new fd: the lowest free number")
    obs["listener_fd"] = listener.fileno()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    step("bind(127.0.0.1:0)", port, "port 0: the kernel picks an ephemeral port")
    listener.listen(8)
    step("listen(8)", listener.fileno(), "same fd, now a listening socket")
    obs["port"] = port

    clients, accepted = [], []
    for _ in range(n_clients):
        c = socket.create_connection(("127.0.0.1", port))
        clients.append(c)
        step("socket() + connect()  [client]", c.fileno(),
             f"the client's fd (connect itself returns 0); local port {c.getsockname()[1]}")
    obs["ss_before_accept"] = _ss(port)
    for _ in range(n_clients):
        conn, peer = listener.accept()
        accepted.append(conn)
        step("accept()", conn.fileno(), f"a NEW fd for the connection from port {peer[1]}")

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

    freed = accepted[1].fileno()
    accepted[1].close()
    step("close(accepted[1])", freed, "that fd number is free again")
    again = socket.socket()
    step("socket()", again.fileno(), "the lowest free fd is reused")
    obs["freed_fd"], obs["reused_fd"] = freed, again.fileno()
    obs["open_fds"] = sorted(int(x) for x in os.listdir("/proc/self/fd"))
    print(json.dumps(obs))
    for s in clients + accepted + [again, listener]:
        s.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
