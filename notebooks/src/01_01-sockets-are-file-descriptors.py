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
from helpers.experiments.fds import fds
from helpers.checks import check, check_value

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
# **Observe.** The `result` column is the fd (or, for `bind`, the port the kernel chose
# for port 0). `socket()` returned the lowest free number; `bind` and `listen` worked on
# the same fd.

# %%
assert d["listener_fd"] == d["lowest_free_before"], "socket() takes the lowest free fd"
assert d["listener_fd"] == 3, "in a fresh process 0, 1, 2 are taken, so the first socket is 3"
listen_step = steps[steps.call.str.startswith("listen")].iloc[0]
assert listen_step.result == d["listener_fd"], "listen() makes no new fd"
print(f"listener fd = {d['listener_fd']}, port {d['port']}")

# %% [markdown]
# ## 2 · accept() returns a new fd; the listener stays
#
# Three clients connected **before** the server called `accept()` even once.
#
# **Predict:** how many sockets does `ss` show on the server's port before the first
# `accept()`, and in which state?

# %%
print(d["ss_before_accept"])

# %% [markdown]
# **Observe.** All three connections are already `ESTAB` on both sides, and the `LISTEN`
# line's Recv-Q says 3 connections wait in the accept queue. The kernel finished each
# handshake and built each connection's socket on its own; `accept()` only *takes one off
# the queue and gives it an fd*.

# %%
before = [l.split() for l in d["ss_before_accept"].splitlines()]
listen_line = [l for l in before if l[0] == "LISTEN"][0]
server_side = [l for l in before if l[0] == "ESTAB" and l[3].endswith(f":{d['port']}")]
assert int(listen_line[1]) == 3, "Recv-Q of a listener = connections waiting in the accept queue"
assert len(server_side) == 3, "the server side of each connection exists before accept()"

# %% [markdown]
# > **Myth vs measurement.** The source notes say the kernel "creates the new socket" when
# > `accept()` returns, and that the fd is assigned "at connection time".
# > Measured above: the connection's socket exists and is `ESTABLISHED` as soon as the
# > handshake completes, with **no** fd; the fd number appears only when the application
# > calls `accept()`. A server that never calls `accept()` still completes handshakes
# > (chapter 01_02 shows the packets; 01_03 shows what happens when the queue is full).

# %%
accepted = pd.DataFrame(d["accepted"])
accepted["4-tuple"] = accepted.apply(lambda r: f"{r.local[0]}:{r.local[1]} ↔ {r.peer[0]}:{r.peer[1]}", axis=1)
accepted[["fd", "4-tuple"]]

# %%
fds.check(run)  # the chapter's claims, asserted on this run (raises if any fails)
assert d["listener_after"] == {"fd": d["listener_fd"], "local": ["127.0.0.1", d["port"]], "accepting": 1}
assert len(set(accepted.fd)) == 3 and d["listener_fd"] not in set(accepted.fd)
print("listener after three accepts:", d["listener_after"])

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
print(d["ss"])

# %%
rows = [l.split() for l in d["ss"].splitlines()]
assert sum(r[0] == "LISTEN" for r in rows) == 1 and sum(r[0] == "ESTAB" for r in rows) == 6
assert int([r for r in rows if r[0] == "LISTEN"][0][1]) == 0, "the accept queue is empty again"
tuples = {(r[3], r[4]) for r in rows if r[0] == "ESTAB"}
assert len(tuples) == 6, "six distinct (local, peer) pairs: each connection seen from both ends"

# %% [markdown]
# **Observe.** One `LISTEN` line (Recv-Q back to 0) and six `ESTAB` lines: each of the three
# connections appears twice, once per end, because client and server live on the same
# machine.
#
# ## 4 · Closed fds are reused, lowest first
#
# **Predict:** the server closed the second accepted socket (fd 8). Which fd will the
# next `socket()` get?

# %%
print(f"closed fd {d['freed_fd']}; the next socket() returned fd {d['reused_fd']}")
assert d["reused_fd"] == d["freed_fd"] < max(d["open_fds"])

# %% [markdown]
# **Explain.** POSIX requires the lowest-numbered free descriptor. This is why an fd
# number says nothing lasting about a connection: after a close, the same number may name a
# completely different peer. Code that keeps fds in tables must forget them on close.
#
# ## 5 · The same thing as system calls (`strace`)
#
# The child ran under `strace -f` (when strace exists here). These are the socket system
# calls it made, in order, with their return values.

# %%
if d["traced"]:
    calls = pd.DataFrame(d["strace"])
    display(calls[["call", "args", "ret"]])
    listen_fd = calls[calls.call == "listen"].args.iloc[0].split(",")[0]
    accept_rets = calls[calls.call.isin(["accept", "accept4"])].ret.tolist()
    assert int(listen_fd) == d["listener_fd"] and accept_rets == list(accepted.fd)
    assert all(calls[calls.call.isin(["accept", "accept4"])].args.str.startswith(f"{d['listener_fd']},"))
else:
    print("strace is not installed here: skipped (apt-get install strace)")

# %% [markdown]
# **Observe.** Python's `accept()` is the `accept4()` system call with `SOCK_CLOEXEC`
# (the new fd is not inherited by programs this process starts). Every `accept4` is
# called on the listener's fd and returns a new one.
#
# ## Check your understanding
#
# **1.** A fresh process opens a listener (fd 3), then accepts 4 connections. It closes the
# connections on fds 5 and 6, then accepts one more connection. Which fd does it get?

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, 5, name="fd after closing 5 and 6",
            hint="fds 4..7 were the connections; the lowest free number wins")

# %% [markdown]
# **2.** Run the experiment yourself with 5 clients. How many `ESTAB` lines does `ss` show
# for the port after the accepts? Replace `...` with your prediction first, then run the
# cell: the checker compares it with the measurement.

# %%
answer_2 = ...  # your prediction, an integer
run5 = fds(clients=5)
measured = sum(l.split()[0] == "ESTAB" for l in run5.data["ss"].splitlines())
fds.check(run5)
check_value(answer_2, measured, name="ESTAB lines for 5 clients",
            hint="each connection has two ends on the same machine")

# %% [markdown]
# ## Summary
# * A socket is an fd; `listen()` turns the same fd into a listener.
# * The kernel completes handshakes and queues connections without the application;
#   `accept()` only hands out an fd for one of them.
# * Connections are told apart by their 4-tuple; fd numbers are recycled lowest-first.
#
# **What's next:** [01_02 The three-way handshake](01_02-three-way-handshake.ipynb): the
# packets behind `connect()` and `accept()`.

# %%
assert nothing_left_behind() == []
