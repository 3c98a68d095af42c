"""Chapter 02_06: serving a file with read/write, sendfile and splice (always live)."""
import glob
import os
import socket
import tempfile
import threading

import pandas as pd
import pytest

from helpers import caps
from helpers.errors import ParameterError
from helpers.experiments.sendfile import MB
from helpers.experiments.sendfile import (MARK_BEGIN, MARK_END, METHODS, _send, buffer_table, compare_buffers,
                                          grouped_bars, metric, render, sendfile_methods, strace_counts,
                                          strace_extra_calls, strace_table, table)


def test_registered_without_needs():
    assert sendfile_methods.needs == set() and not sendfile_methods.records
    assert sendfile_methods.chapter == "02_06"


def _sink(lst, got):
    conn, _ = lst.accept()
    n = 0
    with conn:
        while True:
            k = conn.recv(1 << 20)
            if not k:
                break
            n += len(k)
    got.append(n)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bufsize", [4096, 65536])
def test_send_counts_one_call_per_system_call(tmp_path, method, bufsize):
    size = 300_000                       # not a multiple of the buffer: the last chunk is short
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(size))
    got = []
    with socket.create_server(("127.0.0.1", 0)) as lst:
        t = threading.Thread(target=_sink, args=(lst, got))
        t.start()
        with socket.create_connection(lst.getsockname()) as s:
            fd = os.open(path, os.O_RDONLY)
            try:
                calls = _send(method, s, fd, size, bufsize)
            finally:
                os.close(fd)
        t.join(5)
    assert got == [size]
    chunks = -(-size // bufsize)
    if method == "read/write":
        assert calls["readv"] == chunks and calls["sendto"] >= chunks
    elif method == "sendfile":
        assert calls == {"sendfile": 1}
    else:
        pipe = calls.pop("pipe_capacity")
        assert pipe >= 4096 and calls["splice"] >= 2 * -(-size // pipe)


def test_strace_counts_between_marks():
    text = "\n".join([
        "10 read(3, ...) = 10",
        f'10 newfstatat(AT_FDCWD, "{MARK_BEGIN}-sendfile", 0x7ff, 0) = -1 ENOENT (No such file)',
        "10 sendfile(4, 5, [0] => [100], 100) = 100",
        "10 shutdown(4, SHUT_WR) = 0",
        "10 poll([{fd=4, events=POLLIN}], 1, 60000 <unfinished ...>",
        "10 <... poll resumed>) = 1 ([{fd=4, revents=POLLIN}])",
        f'10 newfstatat(AT_FDCWD, "{MARK_END}-sendfile", 0x7ff, 0) = -1 ENOENT (No such file)',
        "10 close(5) = 0",
    ])
    assert strace_counts(text, "sendfile") == {"sendfile": 1, "shutdown": 1, "poll": 1}
    assert strace_counts(text, "splice") is None


def test_experiment_live_in_replay_mode_and_cleans_up(replay_mode):
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "tcpcourse-sendfile-*")))
    r = sendfile_methods(size_mb=1, bufsize=65536)
    assert r.mode == "live"
    sendfile_methods.check(r)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "tcpcourse-sendfile-*"))) == before, \
        "the test file's directory must be removed"
    t = table(r)
    assert list(t.index) == list(METHODS)
    assert t.loc["sendfile", "system calls (program)"] == 1
    assert t.loc["read/write", "system calls (program)"] == 2 * 16
    assert (t["system calls (strace)"] == "not counted").all(), "no strace pass by default: no literal None"
    assert not any("user" in c or "sys ms" in c for c in t.columns), "getrusage's user/sys split is not shown"
    assert isinstance(strace_table(r), str) and strace_extra_calls(r) == set()
    for m in r.data["methods"]:                      # the sink's own record of each transfer
        assert m["sink_cpu_s"] > 0 and 0 < m["sink_busy"] <= 1.5
        assert len(m["received"]) == r.data["repeats"]
    assert metric(r, "sendfile", "syscalls") == metric(r.data, "sendfile", "syscalls") == 1
    items = render(r)
    assert items[0] is r and len(items) == 4


def test_compare_buffers_interleaves_sizes_in_one_child():
    d = compare_buffers(size_mb=4, bufsizes=(4096, 65536), repeats=3)
    assert d["bufsizes"] == [4096, 65536] and set(d["by_buffer"]) == {"4096", "65536"}
    for b in d["bufsizes"]:
        for m in d["by_buffer"][str(b)]:
            assert m["received"] == [4 * MB] * 3, f"{m['method']} @ {b}: every byte of every transfer"
            assert len(m["runs"]) == 3
    assert metric(d["by_buffer"]["4096"], "read/write", "syscalls") == 2 * 1024
    assert metric(d["by_buffer"]["65536"], "read/write", "syscalls") == 2 * 64
    assert metric(d["by_buffer"]["4096"], "sendfile", "syscalls") == 1
    t = buffer_table(d)
    assert len(t) == 6 and t.loc[("4,096", "read/write"), "system calls"] == 2048
    with pytest.raises(ParameterError):
        compare_buffers(bufsizes=(100,))


def test_large_file_with_strace_and_the_plot():
    r = sendfile_methods(size_mb=16, bufsize=65536, trace=True)
    sendfile_methods.check(r)             # system calls: program and strace agree
    assert isinstance(strace_table(r), pd.DataFrame) if caps.capabilities().strace.available else True
    fig = grouped_bars([r])
    assert len(fig.axes) == 3 and len(fig.legends) == 1


def test_small_buffers_cost_read_write_cpu():
    """The notebook's section 3 claims (the only CPU claims it asserts), same margins."""
    bufs = compare_buffers(size_mb=16, bufsizes=(4096, 65536), repeats=10)
    b4k, b64k = bufs["by_buffer"]["4096"], bufs["by_buffer"]["65536"]
    rw4k, rw64k = metric(b4k, "read/write", "cpu_best_s"), metric(b64k, "read/write", "cpu_best_s")
    assert rw4k > rw64k
    assert metric(b4k, "sendfile", "cpu_best_s") < rw4k


def test_without_strace_the_program_count_is_used(monkeypatch):
    real = caps.capabilities()
    fake = caps.Capabilities(live_capture=real.live_capture, namespaces=real.namespaces, tshark=real.tshark,
                             raw_sockets=real.raw_sockets,
                             strace=caps.Capability("strace", False, "not installed", "skipped"))
    monkeypatch.setattr(caps, "capabilities", lambda: fake)
    r = sendfile_methods(size_mb=1, bufsize=65536, trace=True)
    assert r.data["strace"] is False and all(m["strace"] is None for m in r.data["methods"])
    sendfile_methods.check(r)
    assert "strace is not installed" in render(r)[2]


def test_invariant_catches_a_wrong_count():
    r = sendfile_methods(size_mb=1, bufsize=65536)
    r.data["methods"][1]["syscalls"] = 40
    with pytest.raises(AssertionError, match="sendfile sends a whole cached file"):
        sendfile_methods.check(r)


def test_rejects_bad_values():
    with pytest.raises(ParameterError, match="out of range"):
        sendfile_methods(size_mb=0)
    with pytest.raises(ParameterError, match="out of range"):
        sendfile_methods(bufsize=100)


def test_sink_is_its_own_process_and_cpu_comparison():
    """The receiver runs in a process of its own (not a thread of the notebook's kernel):
    its CPU is its own, and the system-wide busy CPU of each transfer is recorded."""
    import os
    from helpers.experiments.sendfile import _Sink, cpu_comparison, sendfile_methods
    with _Sink(0) as sink:
        assert sink.proc.pid != os.getpid() and sink.port > 0
        assert sink.records() == []
    r = sendfile_methods(size_mb=4, bufsize=65536)
    cc = cpu_comparison(r)
    for m in r.data["methods"]:
        assert len(m["system_busy_all_s"]) == r.data["repeats"] and all(x >= 0 for x in m["system_busy_all_s"])
    assert "receiver's (its own process)" in cc.sentence()
