# %% [markdown]
# # 03_03 · The 4-tuple and port reuse
#
# **Objectives**
# 1. Open several connections from one client to one server port and tie each file
#    descriptor to its 4-tuple with `ss -tanpe` and `/proc/PID/fd`.
# 2. See the kernel deliver every byte to the socket whose 4-tuple names its sender, with two
#    connections carrying data at once.
# 3. Run a client out of ephemeral ports in a namespace with a tiny `ip_local_port_range`, and
#    predict the count and the error from the kernel's rule (`__inet_hash_connect()`).
# 4. See that more destination addresses reuse the same local ports, that bind-before-connect
#    spends a port for every destination, and what `IP_BIND_ADDRESS_NO_PORT` changes.
# 5. Watch TIME_WAIT hold ports, and measure when `tcp_tw_reuse` 0/1/2 lets `connect()` take one
#    over (loopback only, timestamps needed, after `tcp_tw_reuse_delay`).
#
# **Prerequisites:** [01_01 Sockets are file descriptors](01_01-sockets-are-file-descriptors.ipynb),
# [03_01 FIN teardown and TIME_WAIT](03_01-fin-teardown-and-time-wait.ipynb).
# **Time:** 30 minutes.
#
# Section 1 uses plain sockets on `127.0.0.1` and always runs live; its connections end with an
# RST (`SO_LINGER` 0), so it leaves no TIME_WAIT on your machine. Sections 3 to 6 change sysctls
# and fill port ranges, so they run in a private network namespace that the course creates and
# deletes (root), or are replayed from the recorded corpus; the banner says which.

# %%
from helpers.notebook import mode_banner, nothing_left_behind, show
from helpers.experiments.portreuse import (four_tuples, port_exhaustion, tw_reuse, tuple_table, attempts_table,
                                           reuse_summary, exhaustion_plot, tw_plot, render_exhaustion, render_tw,
                                           inet_hash_connect, inet_csk_find_open_port, port_parity,
                                           tcp_twsk_unique, tw_reuse_delay, four_tuple_space, DESTINATIONS)
from helpers import rules
from helpers.checks import check_value
from helpers.widgets import Panel
import pandas as pd

mode_banner(needs=("namespaces",))

# %% [markdown]
# ## 1 · Four connections from one client
#
# A server listens on `127.0.0.1`; one client process opens four connections to it. For every
# socket, both ends, the course reads the fd, the 4-tuple (`getsockname()`/`getpeername()`), the
# socket's inode from `/proc/self/fd/N` (a link such as `socket:[123456]`), and the row of
# `ss -tanpe` with that inode (`ino:`), which also names the process and fd that hold it.
#
# **Predict:** which of the four numbers of the 4-tuple differ between the four connections?

# %%
ft = four_tuples(n=4)
ft

# %%
tuple_table(ft)

# %%
four_tuples.check(ft)
d = ft.data
ports = [c["client"]["lport"] for c in d["connections"]]
show([f"Four client sockets, four fds, four inodes. The 4-tuples share the client address, the server "
      f"address and the server port {d['port']}; only the client port differs: {ports}. `ss` gave every "
      f"inode the same 4-tuple as Python did, and the server's accepted socket mirrors the client's."])

# %% [markdown]
# **Explain.** The fd is the process's handle; the inode names the kernel socket behind it;
# the 4-tuple is how the kernel finds that socket when a packet arrives (the established hash
# table is keyed by it). `ss -tanpe` reads the kernel's socket table (`-e` adds `ino:`), and
# `-p` walks `/proc/PID/fd` of every process it may read to find which fd links to which inode:
# the same join this cell made by hand.
#
# ## 2 · The kernel delivers by 4-tuple
#
# Two of the connections now carry data at once: the client writes 4 KB chunks to the two
# sockets in turn, without blocking, while the server reads whichever of its two sockets is
# readable. Every chunk starts with the client port that wrote it.
#
# **Predict:** can a chunk written on one connection ever be read from the other server socket?

# %%
dv = d["delivery"]
pd.DataFrame([{"server socket for peer port": p, "bytes read": dv["received"][p],
               "intact": dv["intact"][p], "client ports found in the chunks": dv["headers_seen"][p]}
              for p in dv["received"]])

# %%
assert all(dv["intact"].values()) and all(v == [int(p)] for p, v in dv["headers_seen"].items())
show([f"{dv['reads']} reads, and the reader switched between the two sockets {dv['switches']} times: "
      f"both streams were in flight together, and every byte landed on the socket whose 4-tuple "
      f"names its sender."])

# %% [markdown]
# ## 3 · Running out of ports
#
# A client that does not `bind()` gets its port from `connect()`, which takes one from
# `net.ipv4.ip_local_port_range`. The course sets that range to **10 ports** (40000–40009) in a
# fresh namespace, listens on port 5000 (outside the range, so the listener takes none of it),
# and connects to `127.0.0.1:5000` until the kernel refuses.
#
# **Predict:** how many connections succeed, and which error ends the run? Which ports come first?

# %%
ex1 = port_exhaustion(ports=10, destinations=1, mode="connect")
ex1

# %%
attempts_table(ex1)

# %%
port_exhaustion.check(ex1)
# the namespace's range, not this machine's: the rule is evaluated on the namespace's snapshot
inet_hash_connect(ex1.machine_snapshot(), 1, ex1.data["reserved"]).check(
    sum(a["ok"] for a in ex1.data["attempts"]), what="connections before the first refusal")
first = [a["port"] for a in ex1.data["attempts"] if a["ok"]][:5]
port_parity(ex1.machine_snapshot(), "connect").check(
    "even" if all(p % 2 == 0 for p in first) else "odd" if all(p % 2 for p in first) else "mixed",
    what=f"parity of the first five ports {first}");

# %%
exhaustion_plot(ex1);

# %% [markdown]
# **Explain.** `__inet_hash_connect()` (net/ipv4/inet_hashtables.c) starts at a pseudo-random
# offset (a hash of the addresses and the destination port plus a perturbation table) and walks
# the range in steps of two: first every port with the parity of the range's low end, then the
# other half. Since Linux 4.6, `bind()` to port 0 does the opposite (odd first here), so that
# servers binding ephemeral ports leave the even ones to clients. A port is free for `connect()`
# when no other socket uses the same 4-tuple; when the scan finds none, `connect()` fails with
# **EADDRNOTAVAIL** ("cannot assign requested address"), not with a timeout and not on the wire:
# no SYN is sent.
#
# The scan covers the range rounded down to an even size. With an odd range (say 9 ports) one
# port is outside the scan, and which one depends on each call's random offset: the last port
# is found only by luck. Keep the two ends of the range of different parity (the kernel's
# documentation says so too).
#
# ## 4 · More destinations, the same ports; bind-before-connect
#
# Only the 4-tuple has to be unique. In a namespace, all of 127.0.0.0/8 is local, so one
# listener on `0.0.0.0:5000` answers 127.0.0.1, .2 and .3. Three runs with the same 10-port
# range and three destinations:
#
# - `connect`: no `bind()`; `connect()` picks the port;
# - `bind`: `bind(("127.0.0.1", 0))` first, then `connect()` (a common way to pick the source address);
# - `bind_no_port`: the same `bind()`, with the socket option `IP_BIND_ADDRESS_NO_PORT` set first.
#
# **Predict** the number of connections for each.

# %%
runs = {mode: port_exhaustion(ports=10, destinations=3, mode=mode) for mode in ("connect", "bind", "bind_no_port")}
rows = []
for mode, r in runs.items():
    port_exhaustion.check(r)
    m = r.machine_snapshot()
    rule = inet_csk_find_open_port if mode == "bind" else inet_hash_connect
    pred = rule(m, 3, r.data["reserved"])
    ok = [a for a in r.data["attempts"] if a["ok"]]
    fail = [a for a in r.data["attempts"] if not a["ok"]]
    rows.append({"mode": mode, "predicted": pred.value, "measured": len(ok),
                 "per destination": {dst: sum(a["dest"] == dst for a in ok) for dst in DESTINATIONS},
                 "ends with": sorted({f"{a['call']}(): {a['errno']}" for a in fail})})
    pred.check(len(ok), what=f"connections, mode {mode}", quiet=True)
pd.DataFrame(rows)

# %%
bound = runs["bind"]
odd_first = [a["port"] for a in bound.data["attempts"] if a["ok"]][:5]
port_parity(bound.machine_snapshot(), "bind").check(
    "odd" if all(p % 2 for p in odd_first) else "even" if all(p % 2 == 0 for p in odd_first) else "mixed",
    what=f"parity of the first five ports bind() gave {odd_first}");
exhaustion_plot(runs["bind"]);

# %% [markdown]
# **Explain.** With `connect()` choosing, the three destinations used the *same* ten local ports
# (asserted by the check): thirty connections. `bind()` to port 0 cannot know the destination, so
# the kernel must give the socket a port that no other socket holds for any destination
# (`inet_csk_find_open_port()`), and a port taken that way is skipped by later `connect()` scans
# and `bind()`s alike: ten connections in all, and the eleventh `bind()` fails with
# **EADDRINUSE**. `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2) tells `bind()` to fix only the address and
# leave the port to `connect()`, which knows the whole 4-tuple: thirty again.
#
# ## 5 · TIME_WAIT feeds exhaustion; `tcp_tw_reuse`
#
# Now the client closes first, so each of its ports sits in TIME_WAIT for 60 s (chapter 03_01).
# With a 4-port range, four short connections are enough to leave none free. The run then tries
# `connect()` every 20 ms. Seven settings, each in its own namespace:
#
# | `tcp_tw_reuse` | destination | timestamps | closes first |
# |---|---|---|---|
# | 2 (the default) | 127.0.0.1 | on | client |
# | 0 | 127.0.0.1 | on | client |
# | 1 | 127.0.0.1 | on | client |
# | 2 | 192.0.2.1 (an address on the namespace's `lo`, not in 127/8) | on | client |
# | 1 | 192.0.2.1 | on | client |
# | 2 | 127.0.0.1 | off | client |
# | 0 | 127.0.0.1 | on | **server** |
#
# **Predict:** in which runs does a `connect()` succeed before the TIME_WAIT entries expire, and
# how long after the close?

# %%
grid = [(2, "loopback", 1, "client"), (0, "loopback", 1, "client"), (1, "loopback", 1, "client"),
        (2, "other", 1, "client"), (1, "other", 1, "client"), (2, "loopback", 0, "client"),
        (0, "loopback", 1, "server")]
tw = {g: tw_reuse(tw_reuse=g[0], dest=g[1], timestamps=g[2], closer=g[3]) for g in grid}
rows = []
for g, r in tw.items():
    tw_reuse.check(r)
    m = r.machine_snapshot()
    rows.append({**reuse_summary(r), "rule says reuse": tcp_twsk_unique(m, loopback=r.data["loopback"]).value})
table = pd.DataFrame(rows)
table

# %%
default = tw[(2, "loopback", 1, "client")]
m = default.machine_snapshot()
delay = default.data["sysctls"].get("net.ipv4.tcp_tw_reuse_delay")
first_age = reuse_summary(default)["first take-over at age (s)"]
rules.assert_rule(default, tw_reuse_delay, first_age, delay,
                  what="age of the first TIME_WAIT socket connect() took over (tcp_tw_reuse=2, 127.0.0.1)")
client_first = table["closes first"] == "client"
assert list(table[client_first]["TIME_WAIT ports taken over"] > 0) == list(table[client_first]["rule says reuse"])
tw_plot(default);

# %%
tw_plot(tw[(2, "other", 1, "client")]);

# %%
server_first = tw[(0, "loopback", 1, "server")]
assert reuse_summary(server_first)["refused (EADDRNOTAVAIL)"] == 0
show([f"The server closed first: {server_first.data['server_tw_before']} TIME_WAIT entries on the server's "
      f"side, {server_first.data['tw_before']} on the client's ports, and all "
      f"{reuse_summary(server_first)['connections made']} new connect()s succeeded at once with "
      f"`tcp_tw_reuse = 0`."])

# %% [markdown]
# **Explain.** `connect()` may take over a 4-tuple that a TIME_WAIT socket holds only when
# `tcp_twsk_unique()` (net/ipv4/tcp_ipv4.c) agrees:
#
# - `tcp_tw_reuse` is 1, or 2 and the TIME_WAIT socket has a loopback source or destination
#   address (127.0.0.0/8, ::1) or is bound to `lo`. "Loopback" means the *address*: 192.0.2.1 on
#   the `lo` interface does not count, so the default 2 refused it while 1 allowed it;
# - the connection carried TCP timestamps (with them, PAWS tells an old duplicate segment from
#   the new connection's); with `tcp_timestamps = 0` nothing is reused;
# - the TIME_WAIT socket is older than `net.ipv4.tcp_tw_reuse_delay` (1000 ms; the sysctl exists
#   from Linux 6.13; older kernels use a whole-second rule: between 1 and 2 s).
#
# When the **server** closes first, the TIME_WAIT is the server's: the client's ports are free at
# once, whatever `tcp_tw_reuse` says (it is about `connect()` only). There were fewer TIME_WAIT
# entries than connections on the server: when the client's next connection used a port whose
# 4-tuple a server TIME_WAIT still held, the server accepted the new SYN (its timestamp is newer)
# and the TIME_WAIT ended (`tcp_timewait_state_process()`). The side that closes first pays the
# TIME_WAIT: a busy client that closes first runs out of ports (the first six runs); one that
# keeps its connections open and reuses them does not spend a port per request.
#
# Each take-over counts in `TcpExtTWRecycled` (asserted by the check). Until then, and with
# `tcp_tw_reuse = 0` for the whole 60 s, the client gets EADDRNOTAVAIL. This is how TIME_WAIT
# turns a busy client that closes first into one that cannot connect: ports × 60 s is the
# ceiling of its connection rate to one destination (about 28232 / 60 ≈ 470 per second with
# the default range), unless loopback reuse applies.
#
# > **Myth vs measurement.** The source notes count "2³² addresses × 2¹⁶ ports ≈ 281 trillion
# > possible connections" to one server port. That counts every possible *client*. One client
# > address can open, to one server address and port, only as many connections as its ephemeral
# > range holds, and closing them does not give the ports back for a minute (TIME_WAIT).

# %%
here = rules.machine()
space = four_tuple_space(here)
print(space.report())
show([f"On this machine: **{space.value:,}** connections from one client address to one server "
      f"address and port, not {2**48:,}. Each further destination address or port gives the range "
      f"again; 2⁴⁸ needs 2³² client addresses."])

# %% [markdown]
# ## 6 · Your turn
#
# Two panels. The first sets the range size, the number of destinations and how the client gets
# its port; the second sets `tcp_tw_reuse`, the destination and timestamps. Replaying, they
# offer only the recorded settings.

# %%
panel = Panel(port_exhaustion, port_exhaustion.params, render=render_exhaustion, title="Port exhaustion")
panel

# %%
r = panel.update(ports=10, destinations=3, mode="bind_no_port")
port_exhaustion.check(r)
panel.show()

# %%
panel_tw = Panel(tw_reuse, tw_reuse.params, render=render_tw, title="TIME_WAIT and tcp_tw_reuse")
panel_tw

# %%
r = panel_tw.update(tw_reuse=1, dest="other", timestamps=1)
tw_reuse.check(r)
panel_tw.show()

# %% [markdown]
# ## Check your understanding
#
# **1.** `ip_local_port_range` is `40000 40007` and no `bind()` is made. A client connects to
# 127.0.0.1:80 and 127.0.0.2:80 until the kernel refuses. How many connections are open then?

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, 16, name="connections",
            hint="how many ports does the scan cover, and may two connections share a local port?");

# %% [markdown]
# **2.** Same range, but every socket calls `bind(("127.0.0.1", 0))` before `connect()` (no
# `IP_BIND_ADDRESS_NO_PORT`). How many connections now?

# %%
answer_2 = ...  # an integer

# %%
check_value(answer_2, 8, name="connections with bind-before-connect",
            hint="can a port that bind() gave one socket serve a second destination? See section 4.");

# %% [markdown]
# **3.** The range is `40001 40010`. Which parity do the first five ports that `connect()` picks
# have: "even" or "odd"?

# %%
answer_3 = ...  # "even" or "odd"

# %%
check_value(answer_3, "odd", name="parity", hint="which parity does the scan try first, relative to the range?");

# %% [markdown]
# **4.** True or False: with the default `tcp_tw_reuse = 2`, a client that connects to
# 10.0.0.5 and closes first can reuse its TIME_WAIT ports after one second.

# %%
answer_4 = ...  # True or False

# %%
check_value(answer_4, False, name="reuse towards 10.0.0.5",
            hint="what does 2 mean, and what decides whether a TIME_WAIT socket counts as loopback?");

# %% [markdown]
# ## Summary
# * A connection is its 4-tuple; the fd is one process's handle on it. `ss -tanpe` and
#   `/proc/PID/fd` join the two through the socket inode. Packets and bytes go to the socket
#   whose 4-tuple matches, however many connections share an address and port.
# * `connect()` without `bind()` gets a port from `ip_local_port_range`: the even-rounded range
#   *per destination* (address and port), ports of the low end's parity first, then
#   EADDRNOTAVAIL. `bind()` to port 0 prefers the other parity and holds its port for every
#   destination (EADDRINUSE after one range); `IP_BIND_ADDRESS_NO_PORT` leaves the port to
#   `connect()`.
# * TIME_WAIT keeps a closed connection's port for 60 s, on the side that closed first.
#   `tcp_tw_reuse` lets `connect()` take it over: 1 always, 2 (default) only for loopback
#   addresses, both only with timestamps and only after `tcp_tw_reuse_delay`.
# * "2⁴⁸ connections" counts clients; one client to one server port gets one port range.
#
# **What's next:** 04_01 I/O models.

# %%
assert nothing_left_behind() == []
