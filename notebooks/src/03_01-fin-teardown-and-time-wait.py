# %% [markdown]
# # 03_01 · FIN teardown and TIME_WAIT
#
# **Objectives**
# 1. Watch both sides' states while a connection closes: client first, server first, and
#    both at once.
# 2. See which side keeps TIME_WAIT, for how long, and what it is for.
# 3. Tell apart what `tcp_fin_timeout` governs (an orphaned FIN_WAIT_2) from what it does
#    not (TIME_WAIT).
# 4. Half-close a connection with `shutdown(SHUT_WR)`; leave one in CLOSE_WAIT.
# 5. Restart a server over TIME_WAIT, and overflow `tcp_max_tw_buckets`.
#
# **Prerequisites:** [01_02 The three-way handshake](01_02-three-way-handshake.ipynb),
# [02_03 Nagle and delayed ACK](02_03-nagle-and-delayed-ack.ipynb).
# **Time:** 30 minutes.
#
# Every experiment runs in a private network namespace: its TIME_WAIT entries, its sysctls
# and its counters vanish with it, so nothing is left in your machine's TCP tables.

# %%
from helpers import rules
from helpers.notebook import mode_banner, nothing_left_behind, show
from helpers.experiments.teardown import (teardown, fin_wait2, rebind, tw_overflow, render, swimlanes, timeline,
                                          state_spans, teardown_sentence, fin_ack_delay, fin_segments,
                                          acks_from_time_wait, fin_wait2_table, rebind_table, tcp_fin_time,
                                          inet_twsk_schedule, inet_twsk_alloc, inet_csk_bind_conflict,
                                          time_wait_expiry, tcp_timewait_expiry)
from helpers import plots
from helpers.checks import check_value
from helpers.widgets import Panel

mode_banner(needs=("live_capture", "namespaces"))

# %% [markdown]
# ## 1 · The client closes first
#
# A client sends a request, the server replies, then the **client** calls `close()`. The
# server's application reads EOF (`recv()` returns `b""`), waits 0.15 s, and closes too.
# While this happens, the kernel's socket table (`/proc/net/tcp`, what `ss` reads) is
# sampled every 3 ms, so each side's state can be drawn against the packets.
#
# **Predict:** which states does each side pass through? Which side ends in TIME_WAIT?

# %%
r_client = teardown(first="client", how="close", lose_last_ack=0)
r_client

# %%
teardown.check(r_client)   # the chapter's claims on this run; each assert names its claim
fig = swimlanes(r_client)
state_spans(r_client)

# %%
fig = plots.ladder(r_client.segments(), title="the client closes first")
show([teardown_sentence(r_client)])

# %% [markdown]
# **Observe.** The client (the *active closer*) went FIN_WAIT_1 → FIN_WAIT_2 → TIME_WAIT;
# the server (the *passive closer*) went CLOSE_WAIT, then sent its own FIN and was gone.
# Its LAST_ACK lasted microseconds on loopback (the client's ACK came back at once), too
# short for any sample: section 2 makes it visible.
#
# The first FIN was not acknowledged at once: when a FIN arrives, the kernel (`tcp_fin()`)
# switches the receiver to "pingpong" mode, so its ACK waits for the delayed-ACK timer
# (02_03), in the hope that the application's own FIN can carry it. Here the application
# waited 0.15 s, so the timer won:

# %%
delay = fin_ack_delay(r_client)
rules.assert_rule(r_client, rules.delack_band, delay * 1e3, what="ms from the FIN to its ACK");

# %% [markdown]
# ## 2 · TIME_WAIT: how long, and what for
#
# TIME_WAIT lasts `TCP_TIMEWAIT_LEN`, 60 s, a `#define` in `include/net/tcp.h`, not a
# setting. The course does not wait a minute: it reads the entry's timer in
# `/proc/net/tcp` (1/100 s) and in `ss -o` (`timer:(timewait,59sec,0)`, whole seconds) and
# checks it against 60 s minus the time since the segment that started it:

# %%
tw = r_client.data["tw_timers"][0]
rules.assert_rule(r_client, inet_twsk_schedule, tw["proc_s"], tw["elapsed_s"], 0.01, tw["read_took_s"],
                  what="the client's TIME_WAIT timer in /proc/net/tcp")
rules.assert_rule(r_client, rules.tcp_timewait_len, 60.0, what="TCP_TIMEWAIT_LEN");

# %% [markdown]
# And the whole minute? A live run would take over 60 s, more than any cell of this course
# may, so this one is always read from the corpus, where the recorder watched a TIME_WAIT
# entry until it vanished:

# %%
r_minute = time_wait_expiry.replay({}, "a live run waits over a minute for TIME_WAIT to end")
time_wait_expiry.check(r_minute)
rules.assert_rule(r_minute, tcp_timewait_expiry, r_minute.data["gone_after_s"],
                  what="from the FIN that started TIME_WAIT until the entry vanished")
show([f"The entry vanished **{r_minute.data['gone_after_s']:.2f} s** after the FIN: 60 s, plus the lateness of "
      f"the timer wheel, whose slots for a 60 s timer are {rules.timer_wheel_granularity(r_minute.machine_snapshot(), 60).value:g} s wide."])

# %% [markdown]
# Why keep the connection at all? The last ACK can be lost. Then the other side still
# waits in LAST_ACK and sends its FIN again; someone must answer it. To show it, this run
# drops the **server**'s last ACK for 0.1 s with a firewall rule inside the namespace (the
# server closes first this time).
#
# **Predict:** how many times does the client send its FIN? Who answers the second one?

# %%
r_lost = teardown(first="server", how="close", lose_last_ack=1)
teardown.check(r_lost)
fig = swimlanes(r_lost)
show([teardown_sentence(r_lost)])

# %%
fig = plots.ladder(r_lost.segments(), title="the server closes first; its last ACK is dropped once")
fins = fin_segments(r_lost)
assert [f["from"] for f in fins].count("client") >= 2, "the client in LAST_ACK retransmitted its FIN"
assert "LAST-ACK" in timeline(r_lost)["client"]

# %% [markdown]
# **Explain.** The client sat in LAST_ACK until its retransmitted FIN (one RTO, about
# 0.2 s, later) was acknowledged by the server's TIME_WAIT entry. Without TIME_WAIT that
# retransmission would have met no socket and been answered with a RST. TIME_WAIT also
# keeps stray segments of this connection from being taken for a new one with the same
# four numbers (03_03). Each retransmitted FIN restarts the 60 s (the timer above is
# measured from the *last* segment the entry received).
#
# > **Myth vs measurement.** The source notes say TIME_WAIT lasts "2*MSL (60-120s)" and that
# > `close()` frees the connection at once. On Linux it is 60 s exactly (a constant, read
# > above from the kernel's own timer), and the connection outlives `close()` in TIME_WAIT
# > on the side that closed first only.
#
# ## 3 · Both close at once
#
# On loopback a FIN arrives before `close()` returns, so two applications can hardly close
# "at the same time". The experiment holds back every FIN once with a firewall rule, so
# both sides have sent a FIN before either has received one, as on a long path.
#
# **Predict:** which side ends in TIME_WAIT now?

# %%
r_sim = teardown(first="simultaneous", how="close", lose_last_ack=0)
teardown.check(r_sim)
fig = swimlanes(r_sim)
show([teardown_sentence(r_sim)])

# %% [markdown]
# **Observe.** Both sides were in FIN_WAIT_1 together. The server received the client's FIN
# while its own was still unacknowledged: FIN_WAIT_1 → **CLOSING** (the rare state of the
# diagram), then TIME_WAIT when its FIN was acknowledged. The client's FIN was acknowledged
# first, so it went the ordinary way. **Both** hold TIME_WAIT: here the source notes are right.
#
# ## 4 · `tcp_fin_timeout`, FIN_WAIT_2, half-close and CLOSE_WAIT
#
# A namespace with `tcp_fin_timeout = 1` (the default is 60) and three connections:
#
# * **orphan**: the client calls `close()`; the server's application never does.
# * **half**: the client calls `shutdown(SHUT_WR)` and keeps its socket; the server reads
#   EOF, then sends a 3,000-byte reply.
# * **full**: the client calls `close()`; the server closes at EOF (TIME_WAIT, as above).
#
# **Predict:** which of the three client sockets is still there after 1 s? What does
# `tcp_fin_timeout` do to the TIME_WAIT entry?

# %%
r_fw2 = fin_wait2(fin_timeout=1)
fin_wait2.check(r_fw2)
fin_wait2_table(r_fw2)

# %%
o = r_fw2.data["orphan"]
rules.assert_rule(r_fw2, tcp_fin_time, o["gone_after_s"], o["rto_s"],
                  what="the orphaned FIN_WAIT_2, from the ACK of its FIN until it vanished")
f = r_fw2.data["full"]
rules.assert_rule(r_fw2, inet_twsk_schedule, f["proc_s"], f["elapsed_s"], 0.01, f["read_took_s"],
                  what="TIME_WAIT timer in the same namespace");

# %% [markdown]
# **Observe.**
#
# * The **orphan** (closed, waiting for a FIN that never comes) was handed to a small
#   timewait entry in state FIN_WAIT_2 (`tcp_time_wait(sk, TCP_FIN_WAIT2, tmo)`), which `ss`
#   shows as `FIN-WAIT-2` with a `timewait` timer; it vanished after `tcp_fin_timeout`
#   (never less than 3.5 RTOs). Its server is still in **CLOSE_WAIT**, and stays there as long
#   as the application does not close: the kernel cannot close a socket the application
#   holds. When the server finally closed, its FIN reached no socket and got a RST.
# * The **half**-closed client read all 3,000 bytes after its own FIN: `shutdown(SHUT_WR)`
#   ends only the sending direction. Its FIN_WAIT_2 has no timer at all (it is not an
#   orphan) and outlived `tcp_fin_timeout`.
# * The **full** close's TIME_WAIT counted down from 60 s, untouched by `tcp_fin_timeout = 1`.
#
# > **Myth vs measurement.** "Lower `tcp_fin_timeout` to get rid of TIME_WAIT sockets" is
# > common advice. Measured: it ended the orphaned FIN_WAIT_2 after about 1 s and left
# > TIME_WAIT at 60 s.
#
# The same contrast on one connection, with the default `tcp_fin_timeout`: in section 1 the
# client called `close()`, and its FIN_WAIT_2 was a `timewait` entry with a timer; here it
# calls `shutdown(SHUT_WR)` and keeps its socket.

# %%
r_half = teardown(first="client", how="shutdown", lose_last_ack=0)
teardown.check(r_half)
show([teardown_sentence(r_half)])
timers = {how: sorted({str(row[3]) for row in r.data["samples"] if row[1] == "client" and row[2] == "FIN-WAIT-2"})
          for how, r in (("close", r_client), ("shutdown", r_half))}
print("timers the client's FIN_WAIT_2 showed:", timers)
assert timers == {"close": ["timewait"], "shutdown": ["None"]}

# %%
ss_view = [row["line"] for row in r_fw2.data["ss_end"]]
print("\n".join(ss_view))   # ss -tano inside the namespace, at the end

# %% [markdown]
# ## 5 · Restarting a server over TIME_WAIT
#
# A server that closes its connections first leaves TIME_WAIT entries on **its listening
# port**. Restart it within 60 s and `bind()` meets them. The experiment tries all four
# combinations of `SO_REUSEADDR` on the old listener and on the new socket.
#
# **Predict:** is it enough to set `SO_REUSEADDR` on the new socket?

# %%
r_bind = rebind()
rebind.check(r_bind)
rebind_table(r_bind)

# %% [markdown]
# **Explain.** `inet_bind_conflict()` lets the new socket share the port only when both it
# *and* the TIME_WAIT entry have `sk_reuse`; the entry inherits it from its connection,
# which inherits it from the old listener. So a server must set `SO_REUSEADDR` on every
# start: the run that leaves the TIME_WAIT entries and the run that rebinds.
#
# ## 6 · More TIME_WAIT than the table allows
#
# `tcp_max_tw_buckets` caps the TIME_WAIT entries of a network namespace. Here it is 4,
# and the client closes 10 connections first.

# %%
r_over = tw_overflow(max_tw_buckets=4, closes=10)
tw_overflow.check(r_over)
do = r_over.data
rules.assert_rule(r_over, inet_twsk_alloc, do["time_wait"], do["closes"], what="TIME_WAIT entries left")
show([f"{do['closes']} active closes, **{do['time_wait']}** TIME_WAIT entries, "
      f"`TcpExtTCPTimeWaitOverflow` = {do['overflow']}: beyond the cap the kernel closed the socket at once."])

# %% [markdown]
# ## 7 · Your turn
#
# Choose who closes first, whether it calls `close()` or `shutdown(SHUT_WR)`, and whether
# the last ACK is lost once, then press **Run** (about half a second live). **Predict**
# first: which side ends in TIME_WAIT, and does LAST_ACK show up? (`tcp_fin_timeout` has a
# panel of its own below.)

# %%
panel = Panel(teardown, teardown.params, render=render, title="who closes first")
panel

# %% [markdown]
# nbval cannot press buttons; this cell calls the panel's callback the way the button does.

# %%
p_run = panel.update(first="client", how="close", lose_last_ack=1)
panel.show()   # what the panel shows, also kept in the saved notebook

# %%
teardown.check(p_run)
assert "LAST-ACK" in timeline(p_run)["server"] and timeline(p_run)["client"][-1] == "TIME-WAIT"
assert acks_from_time_wait(p_run) >= 2

# %% [markdown]
# And `tcp_fin_timeout` (1 or 2 s in the namespace): **predict** how long the orphaned
# FIN_WAIT_2 lives, and what the TIME_WAIT timer reads at the end.

# %%
fin_panel = Panel(fin_wait2, fin_wait2.params, render=lambda r: [r, fin_wait2_table(r)], title="tcp_fin_timeout")
fin_panel

# %%
f2 = fin_panel.update(fin_timeout=2)
fin_panel.show()
fin_wait2.check(f2)
assert f2.data["orphan"]["gone_after_s"] > r_fw2.data["orphan"]["gone_after_s"] + 0.5, "2 s outlives 1 s"

# %% [markdown]
# ## Check your understanding
#
# **1.** A web server closes every connection first and serves 500 connections per second
# without pause. About how many TIME_WAIT entries does it hold (ignore `tcp_max_tw_buckets`)?

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, 500 * int(rules.TCP_TIMEWAIT_LEN_S), name="TIME_WAIT entries", rel=0.05,
            hint="each entry lives TCP_TIMEWAIT_LEN seconds; how many closes happen in that time?");

# %% [markdown]
# **2.** In section 4, which client connections still had a socket after `tcp_fin_timeout`?
# Give a set of names from `{"orphan", "half", "full"}`.

# %%
answer_2 = ...  # a set of strings

# %%
check_value(answer_2, {"half", "full"}, name="sockets that outlived tcp_fin_timeout",
            hint="look at the table's 'client socket at the end' column");

# %% [markdown]
# **3.** Your service has thousands of sockets in CLOSE_WAIT. Which side must change its
# code: the one showing CLOSE_WAIT, or its peer? Answer `"this side"` or `"peer"`.

# %%
answer_3 = ...  # "this side" or "peer"

# %%
check_value(answer_3, "this side", name="who must fix CLOSE_WAIT",
            hint="CLOSE_WAIT means the peer's FIN arrived; what has the local application not done yet?");

# %% [markdown]
# ## Summary
# * The side that closes first goes FIN_WAIT_1 → FIN_WAIT_2 → TIME_WAIT; the other goes
#   CLOSE_WAIT → LAST_ACK → closed. Close together and both go through TIME_WAIT (one via
#   CLOSING).
# * TIME_WAIT lasts 60 s (`TCP_TIMEWAIT_LEN`, not a sysctl) and answers a retransmitted FIN;
#   each one restarts the 60 s.
# * `tcp_fin_timeout` only limits an **orphaned** FIN_WAIT_2. A half-closed socket waits
#   without a timer, and CLOSE_WAIT lasts until the application calls `close()`.
# * Restarting a server over TIME_WAIT needs `SO_REUSEADDR` on the old and the new listener.
# * `tcp_max_tw_buckets` caps TIME_WAIT per namespace; beyond it a close skips TIME_WAIT
#   and `TcpExtTCPTimeWaitOverflow` counts it.
#
# **What's next:** [03_02 RST and the abortive close](03_02-rst-and-abortive-close.ipynb): ending a connection without the FIN dance.

# %%
assert nothing_left_behind() == []
