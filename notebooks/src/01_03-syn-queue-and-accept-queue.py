# %% [markdown]
# # 01_03 · The SYN queue and the accept queue
#
# **Objectives**
# 1. Measure how many connections a listener holds for an application that does not call
#    `accept()`: `listen(backlog)` allows backlog + 1.
# 2. See what happens to the next client, and read its retry schedule from the capture.
# 3. Tell the two queues apart: half-open connections wait in the SYN queue (SYN-RECV),
#    completed ones in the accept queue.
# 4. See what the server does with a final ACK that finds the accept queue full, how long it
#    keeps trying (`net.ipv4.tcp_synack_retries`), and what `net.ipv4.tcp_abort_on_overflow` changes.
#
# Every number below is checked against the kernel's rule evaluated on the machine the run was
# made on (the namespace's settings, read before any traffic): each check prints the rule, its
# inputs, the prediction and the measurement.
#
# **Prerequisites:** [01_02 The three-way handshake](01_02-three-way-handshake.ipynb).
# **Time:** 40 minutes.
#
# Every run happens inside a private network namespace that the course creates and deletes:
# its counters (`nstat`) belong to this experiment alone, and the sysctl it changes
# (`tcp_abort_on_overflow`, `somaxconn`, `tcp_synack_retries`) changes nowhere else. Each run
# takes a few seconds live, because the clients' retries are timed in whole seconds.

# %%
from helpers.notebook import mode_banner, nothing_left_behind, show
from helpers.experiments.queues import (accept_queue, listen_limits, synack_expiry, fates, syn_table,
                                        half_open_view, overflow_sources, render, limits_table,
                                        check_listen_limits, QueueFill, Retries, LateClient, Expiry)
from helpers import plots, rules
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
fates(r0, "client")[["client", "port", "state at once"]]

# %%
d = r0.data
fill = QueueFill.of(r0)
fill.check()      # rule: sk_acceptq_is_full(), on the namespace's own settings
show([fill.sentence()])

# %% [markdown]
# **Explain.** The kernel completes handshakes for the listener (chapter 01_02) and parks each
# finished connection in the **accept queue** until `accept()` takes it. `listen(backlog)` caps
# that queue, and Linux lets it hold *backlog + 1*: `sk_acceptq_is_full()` refuses a newcomer
# only when the queue is already *longer* than the backlog. A backlog larger than
# `net.core.somaxconn` is silently lowered to it, so the rule is min(backlog, somaxconn) + 1.
#
# For a listening socket, `ss` shows the queue length as Recv-Q and the stored backlog as
# Send-Q. The course sampled the same two numbers every 20 ms from TCP_INFO of the listener.
#
# ### The two ends of the rule: `listen(0)` and `somaxconn`
#
# **Predict:** how many connections does `listen(0)` hold? And `listen(100)` in a namespace
# whose `net.core.somaxconn` is 4?

# %%
limits = listen_limits()
limits_table(limits)

# %%
check_listen_limits(limits, quiet=False)

# %% [markdown]
# `listen(0)` is not "no queue": the queue counts as full only when it holds *more* than 0, so
# one connection gets in. And a backlog above `somaxconn` is lowered without an error: the
# application asked for 100 and the kernel stored (and `ss` shows) 4.
#
# > **Myth vs measurement.** The source notes say the backlog is at most 128. That was
# > `SOMAXCONN`'s default until Linux 5.4; since then `net.core.somaxconn` defaults to 4096.
# > The value is a per-namespace setting you can read, not a constant:

# %%
m0 = r0.machine_snapshot()
here = rules.machine()
show([f"`net.core.somaxconn` is **{m0.sysctls.get('somaxconn')}** in the namespace of the run above "
      f"(Linux {m0.release}) and **{here.sysctls.get('somaxconn')}** on the machine running this notebook "
      f"(Linux {here.release}): `listen(4096)` "
      f"{'would be clamped' if (here.sysctls.get('somaxconn') or 0) < 4096 else 'is not clamped'} here, "
      "whatever the notes say."])

# %% [markdown]
# ## 2 · The client that does not get in
#
# **Predict:** client 4 sent a SYN while the queue was full. Did the server answer it at all?
# If not, when does the client try again?

# %%
syn_table(r0)

# %%
retries = Retries.of(r0)
retries.check()   # rule: tcp_retransmit_timer() for SYN_SENT, one check per waiting client
show([retries.sentence()])

# %% [markdown]
# **Explain.** A SYN that arrives while the accept queue is full is **dropped**, silently: no
# SYN-ACK, no RST. The client cannot tell a full queue from a lost packet, so it does what it
# does for loss: it retransmits the SYN when its timer fires. The first timer is 1 s
# (`TCP_TIMEOUT_INIT`); Linux 6.5 added `net.ipv4.tcp_syn_linear_timeouts`, the number of
# retries after which the timer starts doubling: with the sysctl at L the first L + 1 gaps
# are 1 s, then 2, 4, 8 s. (Absent, before 6.5, or 0: 1, 2, 4 s from the start.) The check
# above computed the gaps from the run's own setting. A waiting client gets in only with the
# first retry after the application makes room: a dropped SYN costs whole seconds, which is
# why a full accept queue shows up as latency spikes of a second or more.
#
# Look at the times of the retries in the table: clients that sent their first SYN a few
# milliseconds apart retried at *the same* moment. The kernel's timer wheel files a 1 s timer
# in a slot several jiffies wide and fires the whole slot together; the rule's band allows
# for that slot (`rules.timer_wheel_granularity`, evaluated on the run's machine below).

# %%
wheel = rules.timer_wheel_granularity(r0.machine_snapshot(), 1.0)
show([f"On the run's machine (HZ = {wheel.inputs['HZ']}), a 1 s timer sits in level {wheel.inputs['level']} "
      f"of the timer wheel, in a slot {8 ** wheel.inputs['level']} jiffies wide: **{wheel.value * 1000:.0f} ms**."])

# %% [markdown]
# > **Myth vs measurement.** "SYN retries back off exponentially: 1, 3, 7 seconds." That is
# > the rule only where `tcp_syn_linear_timeouts` is 0 or absent; the run above shows what
# > this kernel does with its own setting.
#
# Were the dropped SYNs a matter of the SYN queue, which SYN cookies protect? No: the
# namespace had `tcp_syncookies = 1` (printed in section 1), and the SYNs were dropped anyway.
# `tcp_conn_request()` checks the accept queue *first* and drops a SYN that finds it full
# before any cookie logic (chapter 01_04 measures the cookie side).
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
# Both queues over time, with the moments the SYNs were retried and the server started
# accepting. The solid line is the accept queue (completed connections); the dashed line the
# SYN queue (half-open entries, SYN-RECV, read from `/proc/net/tcp`): the ordinary clients
# pass through it in microseconds and never show, the two late clients of section 3 sit in it
# until the server accepts. (The crosses mark SYN-ACKs the server sent again to them.)

# %%
fig = render(r0)[-1]

# %% [markdown]
# And the ladder of the first waiting client: SYNs into silence, then one answered once the
# server has made room.

# %%
fig = plots.ladder(retries.segments(), title=f"client {retries.first_waiting + 1}: the SYN is dropped and retried")

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
held = half_open_view(r0)
print("server side while the queue is full:", held)
print("late clients' own view:", d["late_state_held"])
assert len(held) == len(d["late_ports"]) and set(d["late_state_held"]) == {"ESTABLISHED"}
fates(r0, "late")

# %%
late = LateClient.of(r0, 0)
late.check()      # rule: reqsk_timer_handler() for the SYN-ACKs; TcpExtTCPLossProbes for the probe
show([late.sentence()])

# %% [markdown]
# **Explain.** The final ACK (and the request riding on it) found the accept queue full. With
# `tcp_abort_on_overflow = 0` the server **ignores** it: the connection stays half-open in the
# SYN queue. The client knows nothing of this. Its `send()` returned at once, and it
# retransmits the unacknowledged request: first a *tail-loss probe* (a quick resend of the
# last segment in case it was lost; the namespace's `TcpExtTCPLossProbes` counted one per
# late client), then on its retransmission timeout, which doubles each time. The server, for
# its part, resends the SYN-ACK on its own timer: 1 s, then doubling (the server's SYN-ACK
# retries are never linear). Once the application had made room, the client's answer to the
# next SYN-ACK completed the connection and `accept()` returned it; the request itself arrived
# with the client's next retransmission, late but intact (times above).
#
# The ladder of late client 1 shows it: the request, its retransmissions (purple) and the
# server's repeated SYN-ACKs. (The client's first ACK, right after the SYN-ACK, is in the
# capture but never reached TCP: tcpdump sees a packet before the firewall rule drops it.)

# %%
fig = plots.ladder(late.segments, title="late client 1, abort_on_overflow = 0")

# %% [markdown]
# > **Myth vs measurement.** "Once the accept queue is full, new established connections
# > fail." Measured: nothing failed. The late clients' `connect()` and `send()` succeeded, the
# > server silently dropped their final ACK, and their request arrived once the server made
# > room. What the client sees is *delay*, not failure; and new SYNs are not failed either,
# > they are dropped and retried. But only for a while: the next section finds the end.
#
# ## 3b · How long the server keeps trying: `tcp_synack_retries`
#
# The server keeps the late client's half-open entry and resends its SYN-ACK on a doubling
# timer, but not forever: after `net.ipv4.tcp_synack_retries` retransmissions (5 by default:
# 1 + 2 + 4 + 8 + 16 + 32 = 63 s) the next timer drops the entry. To see the end in a few
# seconds, this run sets `tcp_synack_retries = 1` in its namespace: `listen(1)`, never
# accepting, two ordinary clients fill the accept queue, and one late client sends its
# request into it.
#
# **Predict:** when does the server give up, and what does the client's program see then?

# %%
gone = synack_expiry(synack_retries=1)
expiry = Expiry.of(gone)
expiry.check()    # rules: reqsk_timer_handler() for the SYN-ACKs, syn_ack_recalc() for the drop
show([expiry.sentence()])

# %%
fig = plots.ladder(expiry.segments, title="tcp_synack_retries = 1: the server gives up, the client is reset")

# %% [markdown]
# **Explain.** Each time the entry's timer fires, `syn_ack_recalc()` asks whether it has
# already been resent `tcp_synack_retries` times; if so the entry is dropped, otherwise the
# SYN-ACK goes out again and the timer doubles. With 1 retry that is one resend at 1 s and the
# drop at 1 + 2 = 3 s, the moment predicted above. The client still believed it was
# connected; its next retransmission reached a listener with no such entry, which answered
# RST. So "delay, not failure" holds only while the application makes room within the
# server's SYN-ACK retries (63 s with the default 5); after that the client's request fails.
#
# ## 4 · `tcp_abort_on_overflow = 1`
#
# **Predict:** the same run, but the server answers an overflowing ACK with a reset. What
# does the late client's program see, and when?

# %%
r1 = accept_queue(backlog=2, clients=6, abort_on_overflow=1)
d1 = r1.data
late1 = LateClient.of(r1, 0)
late1.check()
accept_queue.check(r1)
print(f"late clients: {d1['late_fate']} with {d1['late_errno']}; resets sent: {d1['counters'].get('TcpOutRsts', 0)}")
show([late1.sentence()])

# %%
fig = plots.ladder(late1.segments, title="late client 1, abort_on_overflow = 1")

# %% [markdown]
# **Explain.** With the sysctl at 1 the server sends RST the moment the ACK overflows, and the
# client's next `recv()` fails with ECONNRESET: the request is lost and the client knows it at
# once. That helps only clients that retry immediately; the kernel documentation recommends
# leaving it at 0 unless you are sure, because a brief burst that the default would absorb
# (the retransmissions of section 3) becomes a string of errors. The sysctl never changes
# what happens to a SYN: the ordinary clients' SYNs were dropped and retried on the same
# schedule as in section 2 (checked below). It matters for every *ACK* that overflows, and
# that can include a waiting client's: when several retried SYNs land together (the timer
# wheel batches them) all are answered while the queue has room, and the ACKs that come
# after it filled are reset.

# %%
assert d1["immediate"] == d["immediate"], "the same clients got in at once"
Retries.of(r1).check(quiet=True)
in_ = d1["final_state"].count("ESTABLISHED")
show([f"Ordinary clients at the end of this run: {in_} of {len(d1['final_state'])} ESTABLISHED"
      + (f", {len(d1['final_state']) - in_} reset" if in_ < len(d1["final_state"]) else "")
      + f"; resets sent in all: `TcpOutRsts` {d1['counters'].get('TcpOutRsts', 0)}, {len(d1['late_ports'])} of them "
      "to the late clients."])

# %% [markdown]
# ## 5 · Your turn: backlog, clients, abort_on_overflow
#
# Change the backlog, the number of ordinary clients and the sysctl, then press **Run**.
# A live run takes a few seconds when some client has to retry (the progress bar shows what
# it waits for); replay offers only the recorded values. (Live, `listen(0)` is allowed too.)
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
room = rules.sk_acceptq_is_full(roomy.machine_snapshot(), 4).value
deepest = max(s[1] for s in dr["samples"])
assert deepest == len(dr["immediate"]) + len(dr["late_ports"]) <= room, "everyone fits in the accept queue"
assert dr["immediate"] == ["ESTABLISHED"] * 3 and dr["late_fate"] == ["delivered", "delivered"]
assert dr["counters"].get("TcpExtListenOverflows", 0) == 0 and dr["counters"].get("TcpOutRsts", 0) == 0
show([f"`listen(4)` holds {room}: the queue reached {deepest}, three clients plus the two late ones; nothing dropped "
      f"(`ListenOverflows` {dr['counters'].get('TcpExtListenOverflows', 0)}), nothing reset, even with "
      "`abort_on_overflow = 1`. (Nobody was accepted: with nothing pending, the run ends early; the kernel "
      "acknowledged the late requests anyway.)"])

# %% [markdown]
# A value outside the range gets a clear message (asked of a panel of its own, so the one
# above shows no error you did not cause):

# %%
from helpers.errors import ParameterError
try:
    Panel(accept_queue, accept_queue.params).update(backlog=-1)
except ParameterError as err:
    print(err)
else:
    raise AssertionError("backlog=-1 must be refused")

# %% [markdown]
# ## Check your understanding
#
# **1.** A server calls `listen(8)` and never accepts. Clients connect one after another. How
# many of them are ESTABLISHED before the first SYN is dropped?

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, rules.sk_acceptq_is_full(rules.machine(), 8).value, name="connections before the first drop",
            hint="look again at the LISTEN row of section 1: Recv-Q against Send-Q");

# %% [markdown]
# **2.** In the first run (`r0`), how long did client 6 wait, in seconds, between its first
# SYN and the SYN-ACK that let it in? Read it from the capture `df0 = r0.segments()`
# (client 6's port is `d["ordinary_ports"][5]`).

# %%
df0 = r0.segments()
answer_2 = ...  # seconds, from df0

# %%
check_value(answer_2, Retries.of(r0).wait_of(5), name="client 6's wait (s)", tol=0.05,
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
# * `listen(backlog)` lets the accept queue hold min(backlog, somaxconn) + 1 completed
#   connections (`listen(0)`: one); `ss` shows the length as Recv-Q and the stored backlog as
#   Send-Q of the LISTEN row. `somaxconn` is 4096 by default since Linux 5.4, not 128.
# * A SYN that finds the accept queue full is dropped without a word, SYN cookies or not; the
#   client retries on its SYN timer (1 s steps for `tcp_syn_linear_timeouts` retries, then
#   doubling), and `TcpExtListenOverflows` counts each drop.
# * A final ACK that finds the queue full is ignored by default: the client believes it is
#   connected, retransmits (a tail-loss probe first), and gets in late, as long as the
#   server has SYN-ACK retries left (`tcp_synack_retries`); then it is reset. With
#   `tcp_abort_on_overflow = 1` it gets a RST at once.
#
# **What's next:** 01_04 SYN floods and SYN cookies: what if the SYN queue is the one that fills?

# %%
assert nothing_left_behind() == []
