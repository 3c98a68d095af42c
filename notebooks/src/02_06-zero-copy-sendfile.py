# %% [markdown]
# # 02_06 · Zero-copy: `sendfile` and `splice`
#
# **Objectives**
# 1. Serve the same file three ways: `read` + `send`, `sendfile`, and `splice` through a
#    pipe.
# 2. Count the system calls each method makes, with the program's own count and with
#    `strace`.
# 3. Measure the sender's CPU time and the throughput for a few file sizes.
# 4. Know what zero-copy saves on loopback and what it does not.
#
# **Prerequisites:** [01_01 Sockets are file descriptors](01_01-sockets-are-file-descriptors.ipynb),
# [02_01 Send and receive buffers](02_01-send-and-receive-buffers.ipynb).
# **Time:** 25 minutes.
#
# Nothing here needs privileges: every cell runs live. `strace` (where installed) traces
# only a child process this notebook starts.

# %%
import pandas as pd
from helpers.notebook import mode_banner, nothing_left_behind
from helpers.caps import capabilities
from helpers.experiments.sendfile import sendfile_methods, table, grouped_bars, render, METHODS, MB
from helpers.checks import check, check_value
from helpers.widgets import Panel

mode_banner(needs=())

# %%
has_strace = capabilities().strace.available
print("strace:", capabilities().strace.detail if has_strace else
      "not installed: the system calls below are the program's own count (apt-get install strace "
      "for an independent one)")

# %% [markdown]
# ## 1 · Three ways to send a file
#
# A server that sends a file to a client has to move bytes from the page cache (where the
# kernel keeps the file) into a socket. Three ways:
#
# * **read/write**: `read()` 64 KB into a buffer in the process, `send()` it; repeat.
#   The bytes are copied from the page cache to the process, then from the process into
#   the socket.
# * **sendfile**: `sendfile(socket, file, offset, count)`: the kernel moves the bytes
#   itself. The socket's buffers *refer to* the page-cache pages; nothing passes through
#   the process.
# * **splice**: `splice(file → pipe)` then `splice(pipe → socket)`: the same page
#   references, but through a pipe the program owns, one pipe-full per call.
#
# The sender runs in a **fresh child process**, so its CPU time and system calls are its
# own. It sends the file 5 times per method (interleaved) to a sink that reads and
# discards it; the numbers are medians. The file is written to a temporary directory and
# read once, so that it sits in the page cache: we compare copies, not the disk.
#
# **Predict:** for a 16 MB file and a 64 KB buffer, how many system calls does each method
# make to send it?

# %%
r16 = sendfile_methods(size_mb=16, bufsize=65536, trace=True)
t16 = table(r16)
t16

# %%
sendfile_methods.check(r16)   # the chapter's claims on this run; each assert names its claim
calls = {m["method"]: m["calls"] for m in r16.data["methods"]}
print(calls)
assert calls["read/write"] == {"readv": 256, "sendto": 256}, "16 MB / 64 KB = 256 reads and 256 sends"
assert calls["sendfile"] == {"sendfile": 1}, "one sendfile call for the whole cached file"
pipe = r16.data["methods"][2]["pipe_capacity"]
assert calls["splice"] == {"splice": 2 * 16 * MB // pipe}, "two splices per pipe-full"

# %% [markdown]
# **Observe.** `read/write` needs two system calls per 64 KB; `sendfile` needs **one** for
# the whole file (a blocking socket: the kernel loops inside the call until every byte is
# queued). `splice` needs two per pipe-full, like read/write: it avoids the copy, not the
# calls.
#
# The `strace` column counts *every* system call the sender made between the start and
# the end of a transfer: the transfer's own calls, plus a few to wait for the sink's
# answer (`shutdown`, `poll`, `recvfrom`, `ioctl`) and to set up a pipe or a buffer. The
# program's count and strace's agree on the transfer calls:

# %%
if has_strace:
    seen = pd.DataFrame({m["method"]: m["strace"] for m in r16.data["methods"]}).fillna(0).astype(int)
    display(seen)
    for m in r16.data["methods"]:
        for call, n in m["calls"].items():
            assert m["strace"][call] == n, f"{m['method']}: strace counted {m['strace'][call]} {call}"
    assert all(set(m["strace"]) - set(m["calls"]) <= {"shutdown", "poll", "recvfrom", "ioctl", "pipe2",
                                                      "fcntl", "close", "mmap", "munmap", "brk"}
               for m in r16.data["methods"])
else:
    print("strace is not installed: skipped. The program's own count above is exact for its loop "
          "(each os.readv / sock.send / os.sendfile / os.splice is one system call).")

# %% [markdown]
# Python's `os.readv` is the `readv` system call and `sock.send` is `sendto`; a C program
# would use `read` and `write`, with the same counts.
#
# ## 2 · CPU time and throughput
#
# **Predict:** which method uses the least CPU in the sender? Which one is fastest?

# %%
runs = {16: r16}
for size in (1, 64):
    runs[size] = sendfile_methods(size_mb=size, bufsize=65536)
    sendfile_methods.check(runs[size])
results = [runs[s] for s in sorted(runs)]
fig = grouped_bars(results)

# %%
def metric(result, method, key):
    return next(m for m in result.data["methods"] if m["method"] == method)[key]

for r in results[1:]:          # 16 and 64 MB: large enough for stable CPU numbers
    rw_cpu, sf_cpu = metric(r, "read/write", "cpu_best_s"), metric(r, "sendfile", "cpu_best_s")
    print(f"{r.data['size_mb']:>3} MB: sender CPU (best of 5) read/write {rw_cpu * 1e3:.1f} ms, "
          f"sendfile {sf_cpu * 1e3:.1f} ms ({sf_cpu / rw_cpu:.0%})")
    assert sf_cpu < 0.8 * rw_cpu, "sendfile saves the sender's CPU"
    ratio = metric(r, "sendfile", "mb_per_s") / metric(r, "read/write", "mb_per_s")
    assert 0.3 < ratio < 3, f"throughput within a factor of 3 on loopback, got {ratio:.2f}"

# %% [markdown]
# **Observe.** `sendfile` spends a fraction of read/write's CPU in the sender: the copy
# into the process and back is gone, and so are the system calls. But the **throughput**
# does not follow the CPU: the methods stay within a factor of 3 of each other (asserted
# above), in either direction, and sendfile is often not the fastest. On loopback the receiving side still copies every byte from the socket into its own buffer,
# and that copy, plus TCP's work, sets the pace. A 1 MB transfer takes about a millisecond:
# its bars are mostly noise, and no claim is made for them.
#
# **Explain.** Zero-copy removes work from the *sender*: fewer copies, fewer system calls,
# less memory traffic, no user-space buffer. A file server that spends its CPU copying
# gets that CPU back for other connections. On a real network card with scatter-gather
# DMA, the card reads the page-cache pages directly; on `lo` there is no card, and the
# receiver's copy is the same in every method.
#
# > **Myth vs measurement.** The source notes present `sendfile()` as the way to make
# > static file serving fast ("the kernel can transfer data directly from the page cache
# > … to the NIC"). Measured here: `sendfile` cut the sender's CPU time to a fraction and
# > its system calls to one, but did not make the transfer itself reliably faster on
# > loopback (asserted above: within a factor of 3, in either direction). Zero-copy saves
# > CPU; it is a speed-up only where the sender's CPU was the bottleneck.
#
# ## 3 · The buffer size matters for read/write
#
# read/write makes two system calls per buffer. **Predict:** with a 4 KB buffer instead of
# 64 KB, how does read/write's CPU time change? And sendfile's?

# %%
r4k = sendfile_methods(size_mb=16, bufsize=4096, trace=True)
sendfile_methods.check(r4k)
table(r4k)

# %%
rw4k, rw64k = metric(r4k, "read/write", "cpu_best_s"), metric(r16, "read/write", "cpu_best_s")
print(f"read/write: {metric(r4k, 'read/write', 'syscalls')} system calls and {rw4k * 1e3:.1f} ms CPU with "
      f"4 KB, {metric(r16, 'read/write', 'syscalls')} and {rw64k * 1e3:.1f} ms with 64 KB")
assert metric(r4k, "read/write", "syscalls") == 16 * metric(r16, "read/write", "syscalls")
assert rw4k > 1.2 * rw64k, "sixteen times the system calls cost CPU"
assert metric(r4k, "sendfile", "syscalls") == metric(r16, "sendfile", "syscalls") == 1

# %% [markdown]
# **Explain.** Each system call costs a kernel entry and exit and the bookkeeping around
# it; with 4 KB buffers read/write makes 8192 of them for 16 MB. `sendfile` does not use
# the buffer at all.
#
# ## 4 · Your turn
#
# Pick a file size and a buffer size (the buffer is read/write's buffer and splice's pipe
# capacity). **Predict** the system calls of each method before you press **Run**. A run
# takes about a second; bigger files take longer.

# %%
panel = Panel(sendfile_methods, sendfile_methods.params, render=render, title="serving a file three ways")
panel

# %% [markdown]
# nbval cannot press buttons, so the next cell calls the panel's callback the way the
# button does, and asserts on what it returns.

# %%
big = panel.update(size_mb=16, bufsize=1048576)
panel.show()   # what the panel shows, also kept in the saved notebook

# %%
sendfile_methods.check(big)
assert metric(big, "read/write", "syscalls") == 2 * 16
assert metric(big, "splice", "pipe_capacity") in (65536, 1048576), "a pipe holds 64 KB, or up to pipe-max-size"

# %% [markdown]
# ## Check your understanding
#
# **1.** How many system calls does the read/write loop make to send a 64 MB file with a
# 4096-byte buffer (reads plus sends, assuming every send takes the whole buffer)?

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, 2 * 64 * MB // 4096, name="read/write system calls",
            hint="one read and one send per 4096-byte buffer");

# %% [markdown]
# **2.** Which of the three methods made the fewest system calls for the 64 MB file in
# section 2? Answer with its name as in the table.

# %%
answer_2 = ...  # "read/write", "sendfile" or "splice"

# %%
fewest = min(results[-1].data["methods"], key=lambda m: m["syscalls"])["method"]
check_value(answer_2, fewest, name="fewest system calls", hint="look at the third plot (log scale)");

# %% [markdown]
# **3.** True or false: on loopback, `sendfile` roughly doubles the throughput of
# read/write for a 64 MB file. Decide from your measurement in section 2.

# %%
answer_3 = ...  # True or False

# %%
r64 = runs[64]
doubled = metric(r64, "sendfile", "mb_per_s") >= 1.8 * metric(r64, "read/write", "mb_per_s")
check_value(answer_3, doubled, name="sendfile doubles the throughput",
            hint="compare the throughput bars for 64 MB (sendfile saves CPU, not necessarily time)");

# %% [markdown]
# ## Summary
# * `sendfile` sends a cached file in one system call, without copying it through the
#   process; read/write needs two calls per buffer and two copies.
# * `splice` also avoids the copy but still makes two calls per pipe-full.
# * The saving is CPU time in the sender (measured: a fraction of read/write's). On
#   loopback the throughput stays about the same, because the receiver's copy sets the
#   pace.
# * Count system calls with the program itself or with `strace -f`; measure CPU in a child
#   process with `getrusage`.
#
# **What's next:** Part 3, 03_01 FIN, teardown and TIME_WAIT (coming next; see the [index](00_00-index.ipynb)).

# %%
assert nothing_left_behind() == []
