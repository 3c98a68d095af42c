# %% [markdown]
# # 01_01 · Sockets are file descriptors
#
# **Objectives**
# 1. Watch `socket`, `bind`, `listen`, `connect` and `accept` hand out file descriptors.
# 2. See that `accept()` returns a *new* fd per connection while the listener keeps its own.
# 3. Identify each connection by its 4-tuple, in Python and in `ss`.
# 4. See the kernel reuse the lowest free fd number.
#
# **Prerequisites:** [00_00 index](00_00-index.ipynb).  **Time:** 20 minutes.
#
# Nothing here needs privileges: every cell runs live, on this machine, now.

# %%
import pandas as pd
from helpers.notebook import mode_banner, nothing_left_behind
from helpers.experiments.fds import fds, ss_table, listen_step, queue_view, fd_reuse, strace_agrees
from helpers.notebook import show
from helpers import rules
from helpers.checks import check_value

mode_banner(needs=())

# %% [markdown]
# ## 1 · The first socket
#
# The experiment runs in a **fresh child process**, so the fd numbers are not disturbed by
# the Jupyter kernel's own sockets. A new process has fds 0, 1 and 2 (stdin, stdout,
# stderr) open.
#
# **Predict:** what number will the first `socket()` return? And `listen()`: does it
# create another fd?

# %%
run = fds(clients=3)
d = run.data
steps = pd.DataFrame(d["steps"])
steps

# %% [markdown]
# **Observe.** The `returns` column is what each system call returned: an fd for
# `socket()` and `accept()`, 0 (success) for `bind()`, `listen()`, `connect()` and
# `close()` (the child calls `bind`, `listen` and `close` through libc to record their
# real return values; Python's methods return `None`). `bind` and `listen` work on the fd
# `socket()` gave; the clients live in the same child process as the server, so their
# fds come from the same table.
#
# The kernel's rule for a new fd (`alloc_fd()` in `fs/file.c`) is "the lowest number not
# open in this process". The child listed its open fds just before `socket()`:

# %%
rules.alloc_fd(d["open_before_socket"]).check(d["listener_fd"], "fd returned by the first socket()")
ls = listen_step(run)
ls.check()   # listen() returned 0, made no new fd, and turned the same fd into a listener
std = " (stdin, stdout, stderr)" if d["open_before_socket"] == [0, 1, 2] else ""
show([f"Here the open fds were {d['open_before_socket']}{std}, so the first socket "
      f"got fd **{d['listener_fd']}**; `listen()` returned **{ls.ret}** and the open fds stayed "
      f"{ls.fds_after}: no new fd, the same one now accepts connections (`SO_ACCEPTCONN` "
      f"{ls.accepting_before} → {ls.accepting_after}). The kernel chose port {d['port']} for port 0."])

# %% [markdown]
# ## 2 · accept() returns a new fd; the listener stays
#
# Every client (`fds(clients=3)` above) connected **before** the server called `accept()` even once.
#
# **Predict:** how many sockets does `ss` show on the server's port before the first
# `accept()`, and in which state?

# %%
before = ss_table(d["ss_before_accept"])
before

# %% [markdown]
# **Observe.** All the connections are already `ESTAB` on both sides. On a `LISTEN`
# line `ss` reuses its columns: Recv-Q is the number of connections waiting in the accept
# queue, and Send-Q the limit `listen()` stored: the backlog, capped by
# `net.core.somaxconn` (`__sys_listen()` in `net/socket.c`).

# %%
qv = queue_view(run, "before_accept")
qv.check(run, waiting=len(d["clients"]))
show([f"Before any `accept()`: Recv-Q **{qv.listen_recv_q}** connections waiting, Send-Q "
      f"**{qv.listen_send_q}** (`listen({d['backlog']})` on a machine with somaxconn "
      f"{run.machine_snapshot().somaxconn}), and {len(qv.server_ends)} server ends already `ESTAB`. "
      "The kernel finished each handshake on its own; `accept()` only *takes one connection off "
      "the queue and gives it an fd*."])

# %% [markdown]
# > **Myth vs measurement.** The source notes have the kernel create the connection when
# > `accept()` returns ("t=1.1 Kernel creates new socket … Accept() returns").
# > Measured above: the kernel's TCP connection exists and is `ESTABLISHED` as soon as the
# > handshake completes, with **no** fd and no `accept()` call. What `accept()` adds is the
# > file-descriptor side: it wraps the queued connection in a file and gives it the lowest
# > free fd number. A server that never calls `accept()` still completes handshakes (01_02
# > section 9 shows it again; 01_03 shows what happens when the queue is full).

# %%
accepted = pd.DataFrame(d["accepted"])
accepted["4-tuple"] = accepted.apply(lambda r: f"{r.local[0]}:{r.local[1]} ↔ {r.peer[0]}:{r.peer[1]}", axis=1)
accepted[["fd", "4-tuple"]]

# %%
fds.check(run)  # the chapter's claims, asserted on this run (raises if any fails)
print("listener after the accepts:", d["listener_after"])

# %% [markdown]
# **Explain.** All accepted sockets share the server's **local** address and port; they
# differ by the client's port. The kernel finds the socket for an arriving segment by its
# 4-tuple (source address, source port, destination address, destination port), never by
# an fd: fds are the process's handles, the 4-tuple is the kernel's key.
#
# ## 3 · The kernel's view: `ss`
#
# **Predict:** after the accepts, how many lines will `ss` show for this port?

# %%
after = ss_table(d["ss"])
after

# %%
qa = queue_view(run, "after")
qa.check(run, waiting=0)   # accept queue empty again; each server end mirrors a client end
show([f"**Observe.** One `LISTEN` line (Recv-Q back to {qa.listen_recv_q}) and "
      f"{len(qa.server_ends) + len(qa.client_ends)} `ESTAB` lines: each of the {len(d['clients'])} "
      "connections appears twice, once per end, because client and server live on the same machine."])

# %% [markdown]
# ## 4 · What happens to a closed fd number?
#
# The server now closes two of its sockets, **the lower fd first**, and then creates two
# new sockets. Closing in that order tells two rules apart: "the number freed last comes
# back first" (a stack) and "the lowest free number comes back first".
#
# **Predict:** which fd will the first new socket get: the higher one, closed last; the
# lower one, closed first; or a fresh number?

# %%
reuse = fd_reuse(run)
reuse.check()   # alloc_fd() evaluated on the open fds just before each socket() call
show([f"Closed fd {reuse.freed_order[0]}, then fd {reuse.freed_order[1]}; the next two sockets got "
      f"fds **{reuse.reused[0]}** and **{reuse.reused[1]}**: the lowest free number first, "
      f"not fd {reuse.freed_order[1]}, the one freed last."])

# %% [markdown]
# **Explain.** POSIX requires the lowest-numbered free descriptor, and Linux's
# `alloc_fd()` searches the process's fd bitmap from the bottom. This is why an fd number
# says nothing lasting about a connection: after a close, the same number may name a
# completely different peer. Code that keeps fds in tables must forget them on close.
#
# ## 5 · The same thing as system calls (`strace`)
#
# The child ran under `strace` (when strace exists here), which printed every socket system
# call of that process, in order, with its return value. (The `ss` it started is a
# different process and is not traced.)

# %%
if d["traced"]:
    calls = pd.DataFrame(d["strace"])
    with pd.option_context("display.max_colwidth", 90):
        display(calls[["call", "args", "ret"]])
    strace_agrees(run).check()   # strace's return values = what the child recorded
else:
    print("strace is not installed here: skipped (apt-get install strace)")

# %% [markdown]
# **Observe.** Python's `accept()` is the `accept4()` system call with `SOCK_CLOEXEC`
# (the new fd is not inherited by programs this process starts). Every `accept4` is
# called on the listener's fd and returns a new one; `listen()` and `connect()` return 0
# and the client keeps the fd `socket()` gave it. `IPPROTO_IP` (0) in the first
# `socket()` means "the default protocol for this type", which for `SOCK_STREAM` is TCP.
#
# ## Check your understanding
#
# **1.** A fresh process opens a listener (fd 3), then accepts 4 connections. It closes the
# connections on fds 5 and 6, then accepts one more connection. Which fd does it get?

# %%
answer_1 = ...  # an integer

# %%
open_then = [0, 1, 2, 3, 4, 7]   # stdio, the listener, the connections on 4 and 7 (5 and 6 closed)
check_value(answer_1, rules.alloc_fd(open_then).value, name="fd after closing 5 and 6",
            hint="fds 4..7 were the connections; which numbers are free now?");

# %% [markdown]
# **2.** Run the experiment yourself with 5 clients. How many `ESTAB` lines does `ss` show
# for the port after the accepts? Replace `...` with your prediction first, then run the
# cell: the checker compares it with the measurement.

# %%
answer_2 = ...  # your prediction, an integer
run5 = fds(clients=5)
fds.check(run5)
q5 = queue_view(run5, "after")
measured = len(q5.server_ends) + len(q5.client_ends)
check_value(answer_2, measured, name="ESTAB lines for 5 clients",
            hint="each connection has two ends on the same machine");

# %% [markdown]
# ## Summary
# * A socket is an fd; `listen()` turns the same fd into a listener.
# * The kernel completes handshakes and queues connections without the application;
#   `accept()` only hands out an fd for one of them.
# * Connections are told apart by their 4-tuple; fd numbers are recycled lowest-first
#   (not last-freed-first).
#
# **What's next:** [01_02 The three-way handshake](01_02-three-way-handshake.ipynb): the
# packets behind `connect()` and `accept()`.

# %%
assert nothing_left_behind() == []
