#!/usr/bin/env python3
"""Regenerate the capture fixtures in tests/data/ (needs root: tcpdump on lo/any).

    sudo .venv/bin/python tests/data/make_fixtures.py          # all fixtures
    sudo .venv/bin/python tests/data/make_fixtures.py lo_ipv4   # just one

The files are committed, so the tests that use them need only tshark, not root.
Every fixture is real loopback traffic captured by tcpdump with a BPF filter on the
ports of this script's own servers (the Jupyter kernel also talks TCP over lo), and
a small snap length (-s 128) so that bulk transfers stay a few kB on disk: the TCP
payload length then comes from the IP header, exactly as tshark computes tcp.len.

Traffic in the "standard" scenario (each fixture runs it over 127.0.0.1 and/or ::1):
  conversation  handshake with options, request/response both ways, FIN teardown
  abort         data, then close with SO_LINGER(on, 0): RST; then a new connection
                from the same client port (same 4-tuple: a new tshark stream)
  bulk          1 MB with small reads on the receiver: window scaling matters
  refused       connect to a closed port: SYN answered by RST+ACK
zero_window.pcap: a SYN dropped by a full accept queue (retransmitted after 1 s), a
receiver with a 4 kB SO_RCVBUF that stops reading (zero window, probes that
Wireshark calls keep-alives), then reads again (window update).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- capture
class Tcpdump:
    """tcpdump writing FILE; returns once it is listening, stops cleanly on exit."""

    def __init__(self, path: Path, iface: str, bpf: str, *extra: str, snaplen: int = 128,
                 sentinel: tuple[str, int] | None = None):
        self.path, self.iface, self.bpf, self.extra = Path(path), iface, bpf, extra
        self.snaplen, self.sentinel = snaplen, sentinel

    def __enter__(self):
        cmd = ["tcpdump", "-i", self.iface, "-n", "-U", "--immediate-mode", "-Z", "root",
               "-s", str(self.snaplen), *self.extra, "-w", str(self.path), self.bpf]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if "listening on" in line:
                break
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"tcpdump failed: {' '.join(cmd)}")
        else:
            self.proc.kill()
            raise RuntimeError("tcpdump did not start listening within 10 s")
        # keep draining stderr so tcpdump never blocks on it
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        return self

    def __exit__(self, *exc):
        try:
            if self.sentinel:  # a packet the filter matches: SYN to a closed port + RST
                refused(*self.sentinel)
            # wait until the file stops growing (the sentinel reached it)
            last, stable_since = -1, time.monotonic()
            while time.monotonic() - stable_since < 0.3:
                size = self.path.stat().st_size if self.path.exists() else 0
                if size != last:
                    last, stable_since = size, time.monotonic()
                time.sleep(0.05)
        finally:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return False


# --------------------------------------------------------------------------- traffic
def _fam(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listener(host: str, backlog: int = 8, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(_fam(host), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((host, 0))
    s.listen(backlog)
    return s


def free_port(host: str) -> int:
    s = socket.socket(_fam(host), socket.SOCK_STREAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed early")
        buf += chunk
    return bytes(buf)


def drain(sock: socket.socket, chunk: int = 65536) -> int:
    total = 0
    while True:
        try:
            data = sock.recv(chunk)
        except ConnectionResetError:
            return total
        if not data:
            return total
        total += len(data)


def run_thread(fn, *args) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def conversation(lst: socket.socket, host: str) -> None:
    """Handshake, data both ways, FIN from the client, FIN from the server."""
    def server():
        conn, _ = lst.accept()
        with conn:
            recv_exact(conn, 100)
            conn.sendall(b"R" * 3000)
            recv_exact(conn, 50)
            conn.sendall(b"r" * 20)
            drain(conn)
    t = run_thread(server)
    with socket.create_connection((host, lst.getsockname()[1])) as c:
        c.sendall(b"Q" * 100)
        recv_exact(c, 3000)
        c.sendall(b"q" * 50)
        recv_exact(c, 20)
        c.shutdown(socket.SHUT_WR)
        drain(c)
    t.join(5)


def abort_and_reuse(lst: socket.socket, host: str) -> None:
    """RST by SO_LINGER(on, 0), then a new SYN on the very same 4-tuple."""
    port = lst.getsockname()[1]

    def server():
        for _ in range(2):
            conn, _ = lst.accept()
            with conn:
                try:
                    data = conn.recv(100)
                    if data:
                        conn.sendall(data)
                    drain(conn)
                except ConnectionResetError:
                    pass
    t = run_thread(server)
    c = socket.socket(_fam(host), socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind((host, 0))
    cport = c.getsockname()[1]
    c.connect((host, port))
    c.sendall(b"x" * 10)
    recv_exact(c, 10)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()                                    # RST
    time.sleep(0.05)
    c = socket.socket(_fam(host), socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind((host, cport))                         # same 4-tuple again
    c.connect((host, port))
    c.sendall(b"y" * 10)
    recv_exact(c, 10)
    c.close()
    t.join(5)


def bulk(lst: socket.socket, host: str, total: int = 1 << 20) -> None:
    """1 MB from client to server; the server reads 1 kB at a time, slowly."""
    def server():
        conn, _ = lst.accept()
        with conn:
            n = 0
            while True:
                data = conn.recv(1024)
                if not data:
                    break
                n += len(data)
                if n % (64 * 1024) < 1024:
                    time.sleep(0.002)
    t = run_thread(server)
    with socket.create_connection((host, lst.getsockname()[1])) as c:
        c.sendall(b"B" * total)
        c.shutdown(socket.SHUT_WR)
        drain(c)
    t.join(10)


def refused(host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        pass


def standard(hosts: list[str], bulk_bytes: int | None = 1 << 20):
    """Prepare listeners on each host; return (BPF filter, function running the traffic,
    sentinel (host, closed port) for Tcpdump)."""
    plan = []
    ports = []
    for host in hosts:
        l1, l2, l3 = listener(host), listener(host), listener(host)
        closed = free_port(host)
        plan.append((host, l1, l2, l3, closed))
        ports += [l1.getsockname()[1], l2.getsockname()[1], l3.getsockname()[1], closed]
    bpf = "tcp and (" + " or ".join(f"port {p}" for p in sorted(set(ports))) + ")"

    def run():
        for host, l1, l2, l3, closed in plan:
            conversation(l1, host)
            abort_and_reuse(l2, host)
            if bulk_bytes:
                bulk(l3, host, bulk_bytes)
            refused(host, closed)
            for s in (l1, l2, l3):
                s.close()
    sentinel = (plan[-1][0], plan[-1][4])
    return bpf, run, sentinel


def zero_window_traffic(host: str = "127.0.0.1"):
    small = listener(host, rcvbuf=4096)          # set before listen(): small window
    full = listener(host, backlog=0)             # accept queue of 1
    closed = free_port(host)
    ports = [small.getsockname()[1], full.getsockname()[1], closed]
    bpf = "tcp and (" + " or ".join(f"port {p}" for p in ports) + ")"

    def run():
        # 1. a SYN dropped because the accept queue is full: retransmitted after 1 s
        a = socket.create_connection((host, full.getsockname()[1]))
        b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        b.setblocking(False)
        b.connect_ex((host, full.getsockname()[1]))
        time.sleep(0.3)
        c1, _ = full.accept()                    # frees the queue; the retry gets in
        time.sleep(1.2)
        c2, _ = full.accept()
        for s in (a, b, c1, c2):
            s.close()
        full.close()
        # 2. zero window: the receiver stops reading
        done = threading.Event()
        got = []

        def server():
            conn, _ = small.accept()
            with conn:
                done.wait(10)
                got.append(drain(conn, 4096))
        t = run_thread(server)
        c = socket.create_connection((host, small.getsockname()[1]))
        c.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 0.5
        while sent < 48 * 1024 and time.monotonic() < deadline:
            try:
                sent += c.send(b"Z" * min(16384, 48 * 1024 - sent))
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(2.0)                          # probes at 0.2 / 0.6 / 1.4 s ...
        done.set()                               # reader resumes: window update
        c.setblocking(True)
        c.shutdown(socket.SHUT_WR)
        drain(c)
        c.close()
        t.join(10)
        small.close()
    return bpf, run, (host, closed)


# --------------------------------------------------------------------------- fixtures
def capture(name: str, iface: str, bpf_run_sentinel, *extra: str, snaplen: int = 128):
    bpf, run, sentinel = bpf_run_sentinel
    path = HERE / name
    if path.exists():
        path.unlink()
    with Tcpdump(path, iface, bpf, *extra, snaplen=snaplen, sentinel=sentinel):
        run()
    os.chmod(path, 0o644)
    print(f"{name}: {path.stat().st_size} bytes")
    return path


def tool(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


FIXTURES = {
    "lo_ipv4": lambda: capture("lo_ipv4.pcap", "lo", standard(["127.0.0.1"])),
    "lo_ipv6": lambda: capture("lo_ipv6.pcap", "lo", standard(["::1"])),
    "any_sll2": lambda: capture("any_sll2.pcap", "any", standard(["127.0.0.1", "::1"]),
                                "-y", "LINUX_SLL2"),
    "any_sll": lambda: capture("any_sll.pcap", "any", standard(["127.0.0.1", "::1"]),
                               "-y", "LINUX_SLL"),
    # full snap length, nanosecond time stamps, no bulk transfer (keeps the file small)
    "lo_nano": lambda: capture("lo_nano.pcap", "lo", standard(["127.0.0.1"], bulk_bytes=None),
                               "--time-stamp-precision=nano", snaplen=0),
    "zero_window": lambda: capture("zero_window.pcap", "lo", zero_window_traffic()),
}


def make_pcapng() -> None:
    """pcapng files: tshark converts (tcpdump cannot write pcapng); mergecap mixes
    interfaces of different link types and time resolutions into one file."""
    out = HERE / "lo_ipv6.pcapng"
    tool("tshark", "-r", str(HERE / "lo_ipv6.pcap"), "-F", "pcapng", "-w", str(out))
    out2 = HERE / "mixed.pcapng"
    tool("mergecap", "-F", "pcapng", "-w", str(out2), str(HERE / "lo_nano.pcap"),
         str(HERE / "any_sll.pcap"))
    for p in (out, out2):
        os.chmod(p, 0o644)
        print(f"{p.name}: {p.stat().st_size} bytes")


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("make_fixtures.py needs root (tcpdump on lo and any)", file=sys.stderr)
        return 2
    for t in ("tcpdump", "tshark", "mergecap"):
        if not shutil.which(t):
            print(f"{t} is not installed", file=sys.stderr)
            return 2
    names = argv or list(FIXTURES) + ["pcapng"]
    for name in names:
        if name == "pcapng":
            make_pcapng()
        else:
            FIXTURES[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
