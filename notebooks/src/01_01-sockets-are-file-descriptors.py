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
from helpers.experiments.fds import fds, ss_table
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
# **Observe.** The `result` column is the fd (or, for `bind`, the port the kernel chose
# for port 0). `socket()` returned the lowest free number; `bind` and `listen` worked on
# the same fd. The three clients live in the same child process as the server (fds 4–6),
# so their fds come from the same table.

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
before = ss_table(d["ss_before_accept"])
before

# %% [markdown]
# **Observe.** All three connections are already `ESTAB` on both sides. On a `LISTEN`
# line `ss` reuses its columns: Recv-Q is the number of connections waiting in the accept
# queue (3) and Send-Q the backlog passed to `listen()` (8). The kernel finished each
# handshake on its own; `accept()` only *takes one connection off the queue and gives it
# an fd*.

# %%
listen_row = before[before.state == "LISTEN"].iloc[0]
server_side = before[(before.state == "ESTAB") & before.local.str.endswith(f":{d['port']}")]
assert listen_row.recv_q == 3, "Recv-Q of a listener = connections waiting in the accept queue"
assert listen_row.send_q == 8, "Send-Q of a listener = the backlog given to listen()"
assert len(server_side) == 3, "the server side of each connection exists before accept()"

# %% [markdown]
# > **Myth vs measurement.** The source notes have the kernel create the connection when
# > `accept()` returns ("t=1.1 Kernel creates new socket … Accept() returns").
# > Measured above: the kernel's TCP connection exists and is `ESTABLISHED` as soon as the
# > handshake completes, with **no** fd and no `accept()` call. What `accept()` adds is the
# > file-descriptor side: it wraps the queued connection in a file and gives it the lowest
# > free fd number. A server that never calls `accept()` still completes handshakes (01_02
# > section 6 shows it again; 01_03 shows what happens when the queue is full).

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
after = ss_table(d["ss"])
after

# %%
assert (after.state == "LISTEN").sum() == 1 and (after.state == "ESTAB").sum() == 6
assert after[after.state == "LISTEN"].recv_q.iloc[0] == 0, "the accept queue is empty again"
estab = after[after.state == "ESTAB"]
pairs = set(zip(estab.local, estab.peer))
server_ends = {(l, p) for l, p in pairs if l.endswith(f":{d['port']}")}
assert len(server_ends) == 3 and all((p, l) in pairs for l, p in server_ends), \
    "each server end has a client end with local and peer swapped"

# %% [markdown]
# **Observe.** One `LISTEN` line (Recv-Q back to 0) and six `ESTAB` lines: each of the three
# connections appears twice, once per end, because client and server live on the same
# machine.
#
# ## 4 · What happens to a closed fd number?
#
# The server now closes its second accepted socket and then creates one more socket.
#
# **Predict:** which fd will that new socket get: a fresh, higher number, or one already
# used?

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
# The child ran under `strace` (when strace exists here), which printed every socket system
# call of that process, in order, with its return value. (The `ss` it started is a
# different process and is not traced.)

# %%
if d["traced"]:
    calls = pd.DataFrame(d["strace"])
    with pd.option_context("display.max_colwidth", 90):
        display(calls[["call", "args", "ret"]])
    listen_fd = calls[calls.call == "listen"].args.iloc[0].split(",")[0]
    accepts = calls[calls.call.isin(["accept", "accept4"])]
    assert int(listen_fd) == d["listener_fd"] and accepts.ret.tolist() == list(accepted.fd)
    assert all(accepts.args.str.startswith(f"{d['listener_fd']},")), "accept is called on the listener"
    assert all(accepts.args.str.contains("SOCK_CLOEXEC")), "Python asks for close-on-exec fds"
    assert (calls[calls.call == "connect"].ret == 0).all(), "connect() returns 0, not an fd"
else:
    print("strace is not installed here: skipped (apt-get install strace)")

# %% [markdown]
# **Observe.** Python's `accept()` is the `accept4()` system call with `SOCK_CLOEXEC`
# (the new fd is not inherited by programs this process starts). Every `accept4` is
# called on the listener's fd and returns a new one; `connect()` returns 0 and the client
# keeps the fd `socket()` gave it. `IPPROTO_IP` (0) in the first `socket()` means "the
# default protocol for this type", which for `SOCK_STREAM` is TCP.
#
# ## Check your understanding
#
# **1.** A fresh process opens a listener (fd 3), then accepts 4 connections. It closes the
# connections on fds 5 and 6, then accepts one more connection. Which fd does it get?

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, 5, name="fd after closing 5 and 6",
            hint="fds 4..7 were the connections; the lowest free number wins");

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
            hint="each connection has two ends on the same machine");

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
