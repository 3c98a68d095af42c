# %% [markdown]
# # 01_03 · The SYN queue and the accept queue
#
# **Objectives**
# 1. Measure how many connections a listener holds for an application that does not call
#    `accept()`: `listen(backlog)` allows backlog + 1.
# 2. See what happens to the next client, and read its retry schedule from the capture.
# 3. Tell the two queues apart: half-open connections wait in the SYN queue (SYN-RECV),
#    completed ones in the accept queue.
# 4. See what the server does with a final ACK that finds the accept queue full, and what
#    `net.ipv4.tcp_abort_on_overflow` changes.
#
# **Prerequisites:** [01_02 The three-way handshake](01_02-three-way-handshake.ipynb).
# **Time:** 40 minutes.
#
# Every run happens inside a private network namespace that the course creates and deletes:
# its counters (`nstat`) belong to this experiment alone, and the sysctl it changes
# (`tcp_abort_on_overflow`) changes nowhere else. Each run takes about 4 seconds live, because
# the clients' retries are timed in whole seconds.

# %%
import pandas as pd
from helpers.notebook import mode_banner, nothing_left_behind
from helpers.experiments.queues import (accept_queue, fates, syn_attempts, retry_gaps, late_timeline,
                                        expected_retry_gaps, overflow_sources, render)
from helpers import plots
from helpers.checks import check_value
from helpers.widgets import Panel

mode_banner(needs=("live_capture", "namespaces"))

# %% [markdown]
# ## 1 · A listener that never accepts
#
# The server calls `listen(2)` and then does nothing. Six clients connect one after another
# (non-blocking, so a client that cannot get in does not stop the next one). A moment later
# we read each client's TCP state from the kernel.
#
# Two more clients, the *late* ones, play a part in section 3; ignore them for now.
#
# **Predict:** how many of the six clients are ESTABLISHED right away?

# %%
r0 = accept_queue(backlog=2, clients=6, abort_on_overflow=0)
r0

# %%
table = fates(r0)
table[table["client"].str.startswith("client")][["client", "port", "state at once"]]

# %%
d = r0.data
listen = [row for row in d["ss_full"] if row["state"] == "LISTEN"][0]
print(f"ss, LISTEN row: Recv-Q {listen['recv_q']} (connections waiting for accept), "
      f"Send-Q {listen['send_q']} (the backlog)")
somaxconn = d["sysctls"]["net.core.somaxconn"]
print(f"net.core.somaxconn = {somaxconn} (the largest backlog listen() may ask for)")
assert somaxconn >= 2
at_once = d["immediate"].count("ESTABLISHED")
assert listen["send_q"] == 2 and listen["recv_q"] == 3, "the accept queue of listen(2) holds 3"
assert at_once == 3 and d["immediate"][3:] == ["SYN_SENT"] * 3
print(f"{at_once} clients connected at once; the other {6 - at_once} are still in SYN_SENT")

# %% [markdown]
# **Explain.** The kernel completes handshakes for the listener (chapter 01_02) and parks each
# finished connection in the **accept queue** until `accept()` takes it. `listen(backlog)` caps
# that queue, and Linux lets it hold *backlog + 1*: it refuses a newcomer only when the queue
# is already longer than the backlog. (A larger backlog than `net.core.somaxconn`, printed
# above, is silently lowered to it.)
#
# For a listening socket, `ss` shows the queue length as Recv-Q and the backlog as Send-Q.
# The course sampled the same two numbers every 20 ms from TCP_INFO of the listener.
#
# ## 2 · The client that does not get in
#
# **Predict:** client 4 sent a SYN while the queue was full. Did the server answer it at all?
# If not, when does the client try again?

# %%
attempts = syn_attempts(r0)
rows = [{"client": f"client {i + 1}", "SYNs sent": len(attempts[p]),
         "SYN times (s)": ", ".join(f"{t:.2f}" for t in attempts[p])}
        for i, p in enumerate(d["ordinary_ports"])]
pd.DataFrame(rows)

# %%
gaps = retry_gaps(r0)
print("gaps between retries, per waiting client (s):", gaps)
linear = r0.data["sysctls"]["net.ipv4.tcp_syn_linear_timeouts"]
print(f"net.ipv4.tcp_syn_linear_timeouts = {linear}")
assert len(gaps) == 3, "the three clients beyond backlog + 1 retried"
want = expected_retry_gaps(linear)
print("expected from the sysctl:", want)
assert all(0.8 * w <= g <= w + 0.5 for client in gaps for g, w in zip(client, want))
df0 = r0.segments()
waiting = d["ordinary_ports"][3]
synacks_to_waiting = df0[(df0["dport"] == waiting) & (df0["flags"] == "SYN+ACK")]
print(f"the server started accepting at {d['t_accept']:.2f} s")
print(f"client 4 sent {len(attempts[waiting])} SYNs; the server answered one of them, at "
      f"{synacks_to_waiting['t'].iloc[0]:.2f} s")
assert 2.4 <= d["t_accept"] <= 2.8
assert len(synacks_to_waiting) == 1 and synacks_to_waiting["t"].iloc[0] > d["t_accept"]

# %% [markdown]
# **Explain.** A SYN that arrives while the accept queue is full is **dropped**, silently: no
# SYN-ACK, no RST. The client cannot tell a full queue from a lost packet, so it does what it
# does for loss: it retransmits the SYN. On this kernel the retries come **1 s apart**: Linux
# 6.5 added `net.ipv4.tcp_syn_linear_timeouts` (4 here), the number of retries kept at a
# linear 1 s spacing before the classic doubling starts. (On an older kernel the sysctl does
# not exist and the gaps are 1, 2, 4 s; the asserts above expect whichever the sysctl says.)
# The server began accepting at 2.5 s; the waiting clients got in with their SYN at 3 s.
# They waited three seconds for a slot that was free after two and a half: a dropped SYN
# costs whole seconds, which is why a full accept queue shows up as latency spikes of
# about 1, 2 or 3 s.
#
# > **Myth vs measurement.** "SYN retries back off exponentially: 1, 3, 7 seconds." Measured
# > here: 1, 2, 3 s (gaps of 1 s each, asserted above). Since Linux 6.5 the first retries are
# > linear (`net.ipv4.tcp_syn_linear_timeouts`); the doubling of the old textbooks starts
# > only after them.
#
# The kernel counted every dropped SYN. These are the namespace's own counters, read before
# and after the run:

# %%
c = d["counters"]
sources = overflow_sources(r0)
print(f"from the capture: {sources}")
print(f"kernel counters: TcpExtListenOverflows {c['TcpExtListenOverflows']}, "
      f"TcpExtListenDrops {c['TcpExtListenDrops']}")
assert abs(c["TcpExtListenOverflows"] - sources["total"]) <= 2
assert c["TcpExtListenDrops"] >= c["TcpExtListenOverflows"]

# %% [markdown]
# `ListenOverflows` counts every packet the listener turned away because the accept queue was
# full: the waiting clients' SYNs, and also the packets of the two late clients of section 3
# (their story comes below), which arrive at the same full queue. The capture accounts for
# the counter. `ListenDrops` counts every SYN or ACK a listener threw away for any reason,
# so it is at least as large. On a real server these two
# counters, rising, are the first sign of an application that accepts too slowly
# (`nstat -az TcpExtListenOverflows`).
#
# The queue over time, with the moments the SYNs were retried and the server started accepting.
# (The crosses mark SYN-ACKs the server sent again to the two late clients: section 3.)

# %%
fig = render(r0)[-1]

# %% [markdown]
# And the ladder of client 4: three SYNs into silence, then the fourth answered once the server
# has made room.

# %%
fig = plots.ladder(df0[(df0["sport"] == waiting) | (df0["dport"] == waiting)],
                   title="client 4: the SYN is dropped and retried")

# %% [markdown]
# ## 3 · A final ACK that finds the queue full
#
# A SYN is checked against the accept queue when it arrives. But on a real network the final
# ACK arrives one round trip later, and by then the queue may have filled up. On loopback the
# round trip takes microseconds, so the experiment makes one: the two late clients sent their
# SYNs *first*, while the queue was empty, and a firewall rule inside the namespace held back
# everything they sent after that. The server keeps them in its **SYN queue** (state
# SYN-RECV); the clients, who have the SYN-ACK, consider themselves connected. Then the
# ordinary clients filled the accept queue, the rule was lifted, and the late clients sent
# a request.
#
# **Predict:** with `tcp_abort_on_overflow = 0` (the default), does the late client's `send()`
# succeed? Does the request reach the server?

# %%
syn_recv = [row for row in d["ss_full"] if row["state"] == "SYN-RECV"]
print("server side while the queue is full:", [(row["state"], row["pport"]) for row in syn_recv])
print("late clients' own view:", d["late_state_held"])
assert len(syn_recv) == 2 and d["late_state_held"] == ["ESTABLISHED", "ESTABLISHED"]
table[table["client"].str.startswith("late")]

# %%
tl = late_timeline(r0, 0)
for key in ("request sent at", "SYN-ACK sent at", "request acknowledged at", "accepted at"):
    print(f"{key:24s}", tl[key])
req, synacks = tl["request sent at"], tl["SYN-ACK sent at"]
req_gaps = [round(b - a, 2) for a, b in zip(req, req[1:])]
print("gaps between the copies of the request (s):", req_gaps)
assert len(req) >= 4 and all(b > 0.8 * a for a, b in zip(req_gaps, req_gaps[1:])) \
    and req_gaps[-1] > 3 * req_gaps[0], "the request is retransmitted at growing intervals (the RTO backs off)"
assert len(synacks) >= 3 and 0.8 <= synacks[1] - synacks[0] <= 1.3 and 1.7 <= synacks[2] - synacks[1] <= 2.5, \
    "the server resends its SYN-ACK after 1 s, then 2 s later"
assert tl["request acknowledged at"] > d["t_accept"], "the request got in only after the server made room"
assert d["t_accept"] < tl["accepted at"] <= tl["request acknowledged at"] + 0.05
assert d["late_fate"] == ["delivered", "delivered"]

# %% [markdown]
# **Explain.** The final ACK (and the request riding on it) found the accept queue full. With
# `tcp_abort_on_overflow = 0` the server **ignores** it: the connection stays half-open in the
# SYN queue. The client knows nothing of this. Its `send()` returned at once, and it
# retransmits the unacknowledged request: first a *tail-loss probe* (a quick resend of the
# last segment, 0.2 s later, in case it was lost), then on its retransmission timeout, which
# doubles each time (0.2, 0.4, 0.8, 1.6 s …). The server, for its part,
# resends the SYN-ACK on its own timer: after 1 s, then 2 s later (the server's SYN-ACK retries
# double, unlike the client's SYN retries). Once the application had made room, the client's
# answer to the next SYN-ACK completed the connection and `accept()` returned it (about 3.0 s);
# the request itself arrived with the client's next retransmission (about 3.4 s), late but
# intact.
#
# The ladder of late client 1 shows it: the request, its retransmissions (purple) and the
# server's repeated SYN-ACKs. (The client's first ACK, right after the SYN-ACK, is in the
# capture but never reached TCP: tcpdump sees a packet before the firewall rule drops it.)

# %%
fig = plots.ladder(tl["segments"], title="late client 1, abort_on_overflow = 0")

# %% [markdown]
# > **Myth vs measurement.** "Once the accept queue is full, new established connections
# > fail." Measured: nothing failed. The late clients' `connect()` and `send()` succeeded, the
# > server silently dropped their final ACK, and their request arrived once the server made
# > room. What the client sees is *delay*, not failure; and new SYNs are not failed either,
# > they are dropped and retried.
#
# ## 4 · `tcp_abort_on_overflow = 1`
#
# **Predict:** the same run, but the server answers an overflowing ACK with a reset. What
# does the late client's program see, and when?

# %%
r1 = accept_queue(backlog=2, clients=6, abort_on_overflow=1)
d1 = r1.data
tl1 = late_timeline(r1, 0)
print(f"late clients: {d1['late_fate']} with {d1['late_errno']}")
print(f"request at {tl1['request sent at']} s, RST at {tl1['reset at']:.3f} s")
assert d1["late_fate"] == ["reset", "reset"] and set(d1["late_errno"]) == {"ECONNRESET"}
assert len(tl1["request sent at"]) == 1 and tl1["reset at"] - tl1["request sent at"][0] < 0.05
assert d1["counters"].get("TcpOutRsts", 0) >= 2

# %%
fig = plots.ladder(tl1["segments"], title="late client 1, abort_on_overflow = 1")

# %% [markdown]
# **Explain.** With the sysctl at 1 the server sends RST the moment the ACK overflows, and the
# client's next `recv()` fails with ECONNRESET: the request is lost and the client knows it at
# once. That is only better when clients retry immediately and the overload is short; the
# kernel documentation recommends leaving it at 0 unless you are sure, because a brief burst
# that the default would absorb (the retransmissions above) becomes a string of errors. The
# ordinary clients behaved exactly as in section 2: the sysctl only matters for the ACK,
# never for the SYN.

# %%
assert d1["immediate"] == d["immediate"] and all(s == "ESTABLISHED" for s in d1["final_state"])
assert all(0.8 * w <= g <= w + 0.5 for client in retry_gaps(r1) for g, w in zip(client, want))

# %% [markdown]
# ## 5 · Your turn: backlog, clients, abort_on_overflow
#
# Change the backlog, the number of ordinary clients and the sysctl, then press **Run**.
# A live run takes about 4 seconds when some client has to retry (the progress bar shows what
# it waits for); replay offers only the recorded values.
#
# **Predict** before you press: with backlog 4 and 3 clients, does anything get dropped?

# %%
panel = Panel(accept_queue, accept_queue.params, render=render, title="SYN queue and accept queue")
panel

# %% [markdown]
# nbval cannot press buttons; this cell calls the panel's callback the way the button does.

# %%
roomy = panel.update(backlog=4, clients=3, abort_on_overflow=1)
panel.show()   # what the panel shows, also kept in the saved notebook

# %%
dr = roomy.data
assert dr["immediate"] == ["ESTABLISHED"] * 3 and dr["late_fate"] == ["delivered", "delivered"]
assert dr["counters"].get("TcpExtListenOverflows", 0) == 0 and not retry_gaps(roomy)
assert dr["t_accept"] is None, "nothing was pending, so the run ended without waiting for accept()"
print("backlog 4 holds 5: three clients plus the two late ones fit; nothing dropped, nothing reset, "
      "even with abort_on_overflow = 1. (Nobody was accepted: with nothing pending, the run ends "
      "before the server's accept time; the kernel acknowledged the late requests anyway.)")

# %% [markdown]
# A value outside the range gets a clear message:

# %%
from helpers.errors import ParameterError
try:
    panel.update(backlog=0)
except ParameterError as err:
    print(err)
else:
    raise AssertionError("backlog=0 must be refused")

# %% [markdown]
# ## Check your understanding
#
# **1.** A server calls `listen(8)` and never accepts. Clients connect one after another. How
# many of them are ESTABLISHED before the first SYN is dropped?

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, 9, name="connections before the first drop",
            hint="look again at the LISTEN row of section 1: Recv-Q against Send-Q");

# %% [markdown]
# **2.** In the first run (`r0`), how long did client 6 wait, in seconds, between its first
# SYN and the SYN-ACK that let it in? Read it from the capture `df0` (client 6's port is
# `d["ordinary_ports"][5]`).

# %%
answer_2 = ...  # seconds, from df0

# %%
p6 = d["ordinary_ports"][5]
wait6 = (df0[(df0["dport"] == p6) & (df0["flags"] == "SYN+ACK")]["t"].iloc[0]
         - df0[(df0["sport"] == p6) & (df0["flags"] == "SYN")]["t"].iloc[0])
check_value(answer_2, float(wait6), name="client 6's wait (s)", tol=0.05,
            hint="select client 6's first SYN (sport) and the server's SYN+ACK to it (dport); subtract the t columns");

# %% [markdown]
# **3.** Your monitoring shows clients failing with ECONNRESET during bursts, and
# `TcpExtListenOverflows` rising. Which value of `tcp_abort_on_overflow` is the server running
# with, 0 or 1?

# %%
answer_3 = ...  # 0 or 1

# %%
check_value(answer_3, 1, name="tcp_abort_on_overflow",
            hint="compare what the late clients saw in sections 3 and 4");

# %% [markdown]
# ## Summary
# * `listen(backlog)` lets the accept queue hold backlog + 1 completed connections; `ss` shows
#   the length as Recv-Q and the backlog as Send-Q of the LISTEN row.
# * A SYN that finds the accept queue full is dropped without a word; the client retries after
#   1, 2, 3 s on this kernel (linear since Linux 6.5), and `TcpExtListenOverflows` counts each drop.
# * A final ACK that finds the queue full is ignored by default: the client believes it is
#   connected, retransmits, and gets in late. With `tcp_abort_on_overflow = 1` it gets a RST.
#
# **What's next:** 01_04 SYN floods and SYN cookies: what if the SYN queue is the one that fills?

# %%
assert nothing_left_behind() == []
