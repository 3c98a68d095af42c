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
from helpers.notebook import mode_banner, nothing_left_behind, show
from helpers.caps import capabilities
from helpers.experiments.sendfile import (sendfile_methods, compare_buffers, table, buffer_table, strace_table,
                                          strace_extra_calls, grouped_bars, render, metric, cpu_comparison, MB)
from helpers.checks import check_value
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
# own. It sends the file 5 times per method (interleaved) to a sink, another fresh
# process, which reads and discards it and records its own CPU time and the whole
# machine's (every process, from `/proc/stat`) for each transfer. Throughput is the median
# of the 5 transfers; the sender's CPU is the **best** of the 5, because other processes'
# network work can be charged to a transfer. The file is written to a
# temporary directory and read once, so that it sits in the page cache: we compare
# copies, not the disk.
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
pipe = metric(r16, "splice", "pipe_capacity")
assert calls["splice"] == {"splice": 2 * 16 * MB // pipe}, "two splices per pipe-full"

# %% [markdown]
# **Observe.** `read/write` needs two system calls per 64 KB; `sendfile` needs **one** for
# the whole file (a blocking socket: the kernel loops inside the call until every byte is
# queued). `splice` needs two per pipe-full, like read/write: it avoids the copy, not the
# calls.
#
# With `strace` installed, the next table counts *every* system call the sender made
# between the start and the end of a transfer: the transfer's own calls, plus a few to
# wait for the sink's answer and to set up a pipe or a buffer. The invariant above
# (`sendfile_methods.check`) asserted that strace and the program agree on the transfer
# calls; the cell below asserts that everything else strace saw is one of those few.

# %%
show([strace_table(r16)])
assert strace_extra_calls(r16) <= {"shutdown", "poll", "recvfrom", "ioctl", "pipe2", "fcntl", "close",
                                   "mmap", "munmap", "brk"}, strace_extra_calls(r16)

# %% [markdown]
# Python's `os.readv` is the `readv` system call and `sock.send` is `sendto`; a C program
# would use `read` and `write`, with the same counts.
#
# ## 2 · CPU time and throughput
#
# **Predict:** which method uses the least CPU in the sender? Which one is fastest? And
# does the *receiver* do less work when the sender uses sendfile?

# %%
r4 = sendfile_methods(size_mb=4, bufsize=65536)
sendfile_methods.check(r4)
results = [r4, r16]
fig = grouped_bars(results)

# %% [markdown]
# The next cell compares sendfile with read/write at each size, transfer by transfer: the
# sender's CPU, the receiver's CPU (the sink process), the whole machine's busy CPU while
# the transfer ran, and the throughput (median of 5).

# %%
for r in results:
    cc = cpu_comparison(r)
    show([cc.sentence()])   # reported, not asserted: see below

# %% [markdown]
# **Observe.** The ranges above are what one run measured, transfer by transfer, on this
# machine; read them before the medians. What `sendfile` removes for certain is the copy
# into the process and back and hundreds of system calls (counted and asserted above). Its
# CPU saving on loopback is not certain: the receiver's softirq work is charged to the
# sending process, and in clean-clone runs of this course the sender's best transfer with
# `sendfile` was cheaper in one 16 MB run and dearer in the next, on the same machine. So
# none of these directions is asserted. The receiver's CPU and the throughput went either way
# with the machine's settings: on the reference host (bbr) sendfile was *slower* and its
# receiver used *more* CPU; in a test namespace with reno it was about twice as fast and
# the receiver used a little less. The sentences above say what this run measured, and
# nothing asserts a direction there. The whole machine's busy CPU is counted in 10 ms
# ticks and includes every other process on the machine, so it only gives the scale.
#
# **Explain.** Zero-copy removes work from the *sender*: fewer copies, fewer system calls,
# no user-space buffer. The receiver still copies every byte from the socket into its own
# buffer, whatever the sender did (`recv()` always copies), so that copy remains. And on
# loopback there is no wire: each segment the sender queues is delivered to the receiving
# socket by the kernel's softirq work, which is charged to whichever process is on the CPU
# at that moment; when the sender spends less time in its own loop, more of that work can land
# on the receiver. The receiver runs on the same two CPUs as the sender. The 1 MB file is left to
# the panel: the shorter the transfer, the more the sink's wake-ups weigh against the
# method. Try 64 MB in the panel too: how much do the CPU times change from one run to
# the next?
#
# Beyond this chapter (not measured here): with a real network card that supports
# scatter-gather DMA, the card reads the page-cache pages itself, and the receiver is
# another machine; a file server whose CPU is busy copying gets that CPU back.
#
# > **Myth vs measurement.** The source notes present `sendfile()` as the way to make
# > static file serving fast ("the kernel can transfer data directly from the page cache
# > … to the NIC"). Measured here: `sendfile` cut the system calls to one (asserted) and,
# > against read/write with small buffers, the sender's CPU by far (section 3, asserted).
# > With 64 KB buffers the sender's CPU, the receiver's CPU and the throughput on loopback
# > went either way between runs (section 2 prints this run's). Zero-copy saves the copy
# > and the calls; it is a speed-up only where they were the bottleneck.
#
# ## 3 · The buffer size matters for read/write
#
# read/write makes two system calls per buffer. **Predict:** with a 4 KB buffer instead of
# 64 KB, how does read/write's CPU time change? And sendfile's?
#
# To compare the two sizes fairly, one child sends the 16 MB file with both, interleaved
# (each round: every method with 4 KB, then with 64 KB), so both see the same machine.

# %%
bufs = compare_buffers(size_mb=16, bufsizes=(4096, 65536), repeats=10)
buffer_table(bufs)

# %%
b4k, b64k = bufs["by_buffer"]["4096"], bufs["by_buffer"]["65536"]
rw4k, rw64k = metric(b4k, "read/write", "cpu_best_s"), metric(b64k, "read/write", "cpu_best_s")
sf4k, sf64k = metric(b4k, "sendfile", "cpu_best_s"), metric(b64k, "sendfile", "cpu_best_s")
print(f"read/write: {metric(b4k, 'read/write', 'syscalls')} system calls and {rw4k * 1e3:.1f} ms CPU with 4 KB, "
      f"{metric(b64k, 'read/write', 'syscalls')} and {rw64k * 1e3:.1f} ms with 64 KB")
print(f"sendfile:   {metric(b4k, 'sendfile', 'syscalls')} system call and {sf4k * 1e3:.1f} ms CPU with 4 KB, "
      f"{metric(b64k, 'sendfile', 'syscalls')} and {sf64k * 1e3:.1f} ms with 64 KB")
assert metric(b4k, "read/write", "syscalls") == 16 * metric(b64k, "read/write", "syscalls") == 8192
assert rw4k > rw64k, "sixteen times the system calls cost read/write CPU"
assert metric(b4k, "sendfile", "syscalls") == metric(b64k, "sendfile", "syscalls") == 1
assert sf4k < rw4k, "against 8192 small system calls, sendfile's one call costs far less CPU"

# %% [markdown]
# %%
show([f"read/write's CPU rose {rw4k / rw64k:.2f} times with the 4 KB buffer (best of {bufs['repeats']} "
      f"transfers each); with 4 KB buffers sendfile needed {sf4k / rw4k:.2f} times read/write's CPU."])

# %% [markdown]
# **Explain.** Each system call costs a kernel entry and exit and the bookkeeping around
# it, so read/write's CPU rose with the smaller buffer (asserted; the factor is printed
# above, best of 10 transfers each, because single CPU readings on loopback vary, see
# section 2). `sendfile` does not use the buffer at all: the same one call with either
# size, and with 4 KB buffers read/write spent more CPU than sendfile (asserted).
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
# **1.** With the pipe capacity of the panel run above (16 MB, 1 MB buffer), how many
# `splice` calls would the sender make for a **64 MB** file?

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, 2 * 64 * MB // metric(big, "splice", "pipe_capacity"), name="splice calls for 64 MB",
            hint="start from the splice row of the panel's table for 16 MB");

# %% [markdown]
# **2.** In section 1 (16 MB, 64 KB buffer), how many bytes did read/write move per system
# call, on average?

# %%
answer_2 = ...  # an integer, in bytes

# %%
check_value(answer_2, r16.data["size"] // metric(r16, "read/write", "syscalls"), name="bytes per system call",
            hint="count every system call: the table's read/write row has both the reads and the sends");

# %% [markdown]
# **3.** True or false: in section 3, read/write's sender CPU grew at least in proportion
# to its system calls (the 4 KB buffer cost 16 times the CPU of the 64 KB buffer, or
# more). Decide from the numbers printed there.

# %%
answer_3 = ...  # True or False

# %%
check_value(answer_3, rw4k >= 16 * rw64k, name="CPU in proportion to system calls",
            hint="divide the two CPU times printed in section 3");

# %% [markdown]
# ## Summary
# * `sendfile` sends a cached file in one system call, without copying it through the
#   process; read/write needs two calls per buffer and two copies.
# * `splice` also avoids the copy but still makes two calls per pipe-full.
# * The saving is CPU time in the sender (measured: a fraction of read/write's). The
#   receiver still copies every byte (its CPU was not reduced; on loopback part of the
#   kernel's delivery work can move to it); on loopback the throughput went either way.
# * Count system calls with the program itself or with `strace -f`; measure CPU in a child
#   process with `getrusage`.
#
# **What's next:** Part 3, [03_01 FIN teardown and TIME_WAIT](03_01-fin-teardown-and-time-wait.ipynb): how a connection ends.

# %%
assert nothing_left_behind() == []
