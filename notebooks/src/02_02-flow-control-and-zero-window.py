# %% [markdown]
# # 02_02 · Flow control and the zero window
#
# **Objectives**
# 1. Watch a receiver's advertised window shrink to 0 when its application stops reading.
# 2. See what the sender's kernel does while the window is 0, and when.
# 3. See the window update that restarts the transfer when reading resumes.
# 4. Read the same story in TCP_INFO, `ss` and `nstat`, and learn why Wireshark calls
#    Linux's probes "TCP Keep-Alive".
#
# **Prerequisites:** [02_01 Send and receive buffers](02_01-send-and-receive-buffers.ipynb).
# **Time:** 30 minutes.

# %%
import pandas as pd
from helpers import rules
from helpers.notebook import mode_banner, nothing_left_behind, show
from helpers.experiments.flowcontrol import (zero_window, analyse, probe_table, samples_frame, plot, plot_start,
                                             render, shown, sendall_timing, window_closing, loss_probes,
                                             probe_schedule, window_update, stall_view, wireshark_view,
                                             probe_limits, probe_limits_view)
from helpers import dissect
from helpers.checks import check_value, Exercise
from helpers.widgets import Panel

mode_banner(needs=("live_capture", "namespaces"))

# %% [markdown]
# ## 1 · A reader that pauses
#
# Inside a private network namespace (MTU 1500 and segmentation offloads off, so the
# capture shows real 1448-byte segments, and the kernel counters are this experiment's
# own), a reader accepts a connection and then does not read for 2 s. Its `SO_RCVBUF` is
# set to 16 KiB on the listener before `listen()`. The writer sends twice the reader's
# buffer (as the kernel stores it) plus 32 KiB, more than the reader can hold, with one
# `sendall()`.
#
# **Predict:** once the reader's buffer is full, what does the writer's kernel do until the
# reader reads again? Stay silent? Retransmit? Something else?

# %%
result = zero_window(rcvbuf=16384, pause=2)
result

# %%
zero_window.check(result)   # the chapter's claims on this capture; each check names its claim
df = result.segments()
d = result.data
a = analyse(result, df)
m = result.machine_snapshot()
cap = m.rmem_max if m.rmem_max is not None else rules.machine().rmem_max
rules.sock_setsockopt_buf(16384, cap).check(d["reader_rcvbuf"], "the reader's SO_RCVBUF read back",
                                           reference=result.reference());
print(f"{len(df)} segments; writer → reader {len(a['from_w'])}, reader → writer {len(a['to_w'])}")

# %% [markdown]
# When did `sendall()` return? A blocking send returns once every byte is *queued* in the
# writer's send buffer, not when it is delivered (02_01). So it returns during the pause
# only if what the reader's buffer cannot take fits in the writer's send buffer, counted
# the way the kernel counts it: as packet memory (`ss` `skmem_w`), not payload
# (`sk_stream_memory_free()` in `include/net/sock.h`).

# %%
timing = sendall_timing(result, a)
show([timing.sentence()])
timing.check()

# %% [markdown]
# On the reference machine (bbr, whose send buffer starts at three times its congestion
# window of packets) the rest fits and `sendall()` returns at once. On Debian 12's stock
# Linux 6.1 (cubic: twice the window; larger per-packet charges) the same run measured an
# 87,040-byte send buffer, the rest did *not* fit, and `sendall()` returned only 5 ms
# after the reader resumed. The check bounds the packet memory the rest needs (between its
# payload and one full skb's charge per segment): when even the upper bound fits, `sendall()`
# must return during the pause; when even the payload overflows the buffer by more than one
# skb, it cannot; in between (as on the reference run) the rule leaves it open and the cell
# reports what happened. The check is the rule, not the reference machine's outcome.
#
# ## 2 · The window falls to 0
#
# Every segment from the reader carries its advertised window (`win`, already scaled). The
# first ACKs of the transfer:

# %%
to_w = a["to_w"]
closing = window_closing(result, a)
to_w[to_w.t <= closing.first_zero_t][["t", "flags", "ack", "win"]]

# %%
show([closing.sentence()])
closing.check(result)

# %% [markdown]
# The first 0.2 s as a time-sequence graph: blue bars are data segments (sequence number
# against time), the green step the reader's ACKs, the purple dashed step the window edge
# (ACK + window), magenta bars retransmissions, red crosses zero-window ACKs.

# %%
fig = plot_start(result, until=0.2, df=df)

# %% [markdown]
# **Explain.** The window is the free space the receiver's kernel promises: as unread bytes
# pile up in the receive buffer it shrinks, and when the buffer is full it is 0. Not all of
# the buffer holds payload (the share is printed above): the buffer is charged with packet
# memory, as in 02_01. The writer may not send beyond `ack + win`, so it stops.
#
# **The SYN-ACK's window** is chosen before any data has arrived, by
# `tcp_select_initial_window()` on the assumption that half of the buffer's memory will
# hold payload (`TCP_DEFAULT_SCALING_RATIO` in `include/net/tcp.h` from Linux 6.6;
# `tcp_adv_win_scale` = 1, also half, before), rounded down to whole segments: the check
# above printed the rule and its inputs. From 6.6 the first data segment lets the kernel
# measure the real ratio on this path (`tcp_measure_rcv_mss()` in `net/ipv4/tcp_input.c`),
# and the window can rise above the SYN-ACK's; older kernels keep the half and the window
# need not move in whole segments. **The gaps:** the first ACKs leave within microseconds;
# after them the reader's kernel only ACKs at once when its window can move forward
# (`__tcp_ack_snd_check()` in `net/ipv4/tcp_input.c`), which it cannot while nobody reads.
# The other ACKs wait for the delayed-ACK timer, at least `TCP_DELACK_MIN` (HZ/25 jiffies,
# in `include/net/tcp.h`) plus up to a tick: the check compared them with
# `rules.delack_band` for this machine's HZ, and with the namespace's `DelayedACKs`
# counter. Chapter 02_03 is about that timer.
#
# **A surprise: retransmissions.** Nothing was lost on this private link, yet the writer sent
# some segments twice:

# %%
lp = loss_probes(result, a)
show([lp.rows, lp.sentence()])
lp.check(result)

# %% [markdown]
# **Explain.** These are *tail loss probes* (TLP, on by default: `net.ipv4.tcp_early_retrans`
# = 3; `Documentation/networking/ip-sysctl.rst`: "Tail loss probe (TLP) converts RTOs
# occurring due to tail losses into fast recovery (RFC8985)"). When the last segments sent
# get no ACK for about two round-trip times plus a few milliseconds, far less than the
# retransmission timeout (at least 200 ms), the writer re-sends the last one (each one came
# sooner after its original than the delayed-ACK floor: checked). Here the ACKs were only
# *late* (the reader's delayed ACKs), so the probe arrived as a duplicate and the reader
# said so with a D-SACK (counted as `TCPDSACKOldSent` at the reader, `TCPDSACKRecv` at the
# writer). No retransmission timeout fired (`TCPTimeouts` 0), and all of this happened before
# the window reached 0. What the writer does *while* the window is 0 is the next question.
#
# ## 3 · While the window is 0
#
# **Predict:** the writer still has bytes to send (section 1 printed how many it had to
# queue) and the window is 0. Does it send
# anything before the reader reads again? If so, when, and how often?

# %%
sched = probe_schedule(result, a)
shown(sched.table)

# %%
show([sched.sentence()])
sched.check(result)    # each gap against tcp_probe0_when(), the answers against tcp_oow_rate_limited()

# %% [markdown]
# **Explain.** The writer does not retransmit while the window is 0 (checked), and it does
# not stay silent either: that could hang the connection for ever if the reader's window
# update were lost. Its kernel runs the *persist* (probe) timer (`tcp_send_probe0()` in
# `net/ipv4/tcp_output.c`). The rule, `rules.tcp_probe0_when`: the first probe comes one
# retransmission timeout (RTO) after the zero window, and each later gap is twice the one
# before, `RTO × 2^backoff`, up to the maximum RTO. The RTO is at least 200 ms on Linux
# (`net.ipv4.tcp_rto_min_us`; on loopback the round trip is microseconds), and TCP_INFO
# reported it during the stall. The band around each gap comes from the kernel's timer
# wheel: a timer fires on a tick, and a long one may be up to an eighth of its length late
# (`rules.timer_wheel_band`). Each probe is an empty segment whose sequence number is one
# *below* what the receiver expects: the receiver must answer with an ACK that carries its
# current window, and the probe holds no data that could be lost or would need to be
# accepted.
#
# ## 4 · Not every probe is answered
#
# Look at the `answered` column: on loopback the second probe usually gets no reply at all.

# %%
limit = d["tcp_invalid_ratelimit_ms"]
answers = rules.tcp_oow_rate_limited(m, list(sched.table["t"]), limit)
print(answers.report([bool(x) for x in sched.table["answered"]], "probes answered"))
show([f"Unanswered probes: {list(sched.table[~sched.table['answered'].astype(bool)]['probe'])}, "
      f"{list(sched.table[~sched.table['answered'].astype(bool)]['since last answer'])} s after the previous "
      f"answer; `net.ipv4.tcp_invalid_ratelimit` = {limit} ms; nstat `TCPACKSkippedSeq` = "
      f"{d['counters']['TcpExtTCPACKSkippedSeq']}."])

# %% [markdown]
# **Explain.** A probe's sequence number lies outside the receive window, and Linux answers
# out-of-window segments at most once per `net.ipv4.tcp_invalid_ratelimit` ms
# (`tcp_oow_rate_limited()` in `net/ipv4/tcp_input.c`), a defence against ACK storms. The
# second probe came less than that after the first answer, so the receiver's kernel skipped
# it and counted `TCPACKSkippedSeq` (the check above compared the count). No harm done: the
# sender simply probes again later. You will only see this while the intervals are shorter
# than the rate limit, as on loopback.
#
# ## 5 · The window update
#
# **Predict:** when the reader reads again, which segment restarts the transfer, and who
# sends it?

# %%
wu = window_update(result, a)
df[(df.t >= wu.t - 1e-6)].head(6)[["t", "sport", "dport", "flags", "seq", "ack", "len", "win"]]

# %%
show([wu.sentence()])
wu.check()

# %% [markdown]
# **Explain.** The reader's kernel, not the writer, restarts the transfer: when the
# application has read enough to free a useful amount of space, it sends an ACK that
# acknowledges nothing new (same ACK number) but opens the window. That is a *window update*.
#
# ## 6 · The picture: a time-sequence graph
#
# The whole run, drawn as in section 2, with the probes as orange diamonds. Below, the
# writer's TCP_INFO `backoff`, sampled every 20 ms. Both panels share the time axis: seconds
# since the SYN, the first packet of the capture.

# %%
fig = plot(result, df)

# %% [markdown]
# The window edge stays flat on the ACK line for the whole pause: nothing may be sent. The
# probes sit on it, one RTO × 2ⁿ apart.
#
# ## 7 · The kernel's own view: TCP_INFO, `ss`, `nstat`
#
# The writer's TCP_INFO, sampled during the pause (one row per change):

# %%
samples_frame(result)

# %%
sv = stall_view(result, a)
show([pd.DataFrame(d["stall_ss"]).T, pd.Series(d["counters"], name="nstat delta").to_frame().T, sv.sentence()])
sv.check()

# %% [markdown]
# `backoff` rises by one per probe (each interval is RTO × 2^backoff). `probes` counts the
# probes *not yet answered*: it drops back to 0 whenever a zero-window answer arrives. The
# writer had already called `shutdown(SHUT_WR)` after `sendall()` returned: then it is in
# FIN-WAIT-1, its FIN queued behind the data, and the FIN takes one sequence number.
# `TCPToZeroWindowAdv` / `TCPFromZeroWindowAdv` count the reader closing and reopening its
# window; `TCPWinProbe` the writer's probes.
#
# ## 8 · What Wireshark calls these segments
#
# Wireshark's TCP expert analysis, through pyshark, on the same file:

# %%
ws = wireshark_view(result, a)
with pd.option_context("display.max_colwidth", 80):
    show([ws.rows, ws.sentence()])
ws.check()

# %% [markdown]
# > **Myth vs measurement.** The source notes say that a slow reader makes "the peer's
# > sending stall", as if the sender simply waited; and a capture of it in Wireshark seems to
# > say the connection is sending keep-alives. Measured: while the window is 0 the sender
# > retransmits nothing (its tail loss probes all came before), but it is not silent: it
# > probes the zero window at doubling intervals (counted by `TCPWinProbe`); and these are not
# > keep-alives: `SO_KEEPALIVE` is off, and the keep-alive timer would wait
# > `tcp_keepalive_time` (printed above) before its first probe.
# > Wireshark calls a *zero-window probe* a segment at the next expected sequence number with
# > one byte of data (what the RFCs describe and some stacks send). Linux sends no data and
# > uses the sequence number one *below* (`tcp_xmit_probe_skb`: "use a previous sequence")
# > which is exactly Wireshark's rule for a keep-alive. Same wire format, different purpose:
# > read the label, then check the window.
#
# ## 9 · What ends the probing?
#
# A reader that never reads again, but whose kernel keeps answering: the writer's kernel
# would probe for ever (RFC 1122 4.2.2.17: "keep the connection open indefinitely as long
# as the receiving TCP continues to send acknowledgments in response to the probe
# segments"). Two socket options change that. Three writers, plain sockets on loopback
# (this runs live for everyone), each filling a reader that never reads: one with no
# option, one with `TCP_USER_TIMEOUT` 1.5 s, one with `TCP_RTO_MAX_MS` 1 s (Linux 6.15+;
# older kernels refuse it, and the run says so). Their TCP_INFO is sampled every 5 ms: a
# step in `backoff` is a probe, state `CLOSE` is the end.
#
# **Predict:** when does the `TCP_USER_TIMEOUT` writer give up, counted from what? What do
# the probe gaps of the third writer look like?

# %%
limits = probe_limits(user_timeout_ms=1500, rto_max_ms=1000)
lv = probe_limits_view(limits)
show([lv.table(), lv.sentence()])
lv.check(limits)

# %% [markdown]
# **Explain.** `TCP_USER_TIMEOUT` (`man 7 tcp`) bounds how long sent data may stay
# unacknowledged; for a zero window, `tcp_probe_timer()` in `net/ipv4/tcp_timer.c` counts
# it from the first probe and aborts the connection once it has passed, however many
# probes were answered: the application's next call fails with `ETIMEDOUT` (the kernel
# also shortens the last probe gap to end on time: `tcp_clamp_probe0_to_user_timeout()`).
# `TCP_RTO_MAX_MS` (and the sysctl `net.ipv4.tcp_rto_max_ms`, both from Linux 6.15) caps the
# backoff: the gaps double until they reach the cap, then stay there. Without either, the
# cap is the old constant `TCP_RTO_MAX`, 120 s, and the probing has no end.

# %%
print(f"this namespace's net.ipv4.tcp_rto_max_ms = {d['tcp_rto_max_ms']} "
      f"({'the sysctl exists' if d['tcp_rto_max_ms'] else 'absent: the constant TCP_RTO_MAX, 120 s'}); "
      f"TCP_RTO_MAX_MS on a socket: {limits.data['rto_max_ms'] or limits.data['rto_max_error']}")

# %% [markdown]
# ## 10 · Your turn: receive buffer and pause
#
# Pick the reader's `SO_RCVBUF` and how long it pauses, and press **Run** (a live run takes
# the pause plus a fraction of a second; the bar shows progress).

# %%
panel = Panel(zero_window, zero_window.params, render=render, title="zero window and probes")
panel

# %% [markdown]
# nbval cannot press buttons, so the next cell calls the panel's callback directly.

# %%
long = panel.update(rcvbuf=4096, pause=4)
panel.show()   # what the panel shows, also kept in the saved notebook

# %%
zero_window.check(long)    # the same rules, on a 4 KiB buffer and a 4 s pause
lsched = probe_schedule(long)
show([window_closing(long).sentence(), lsched.sentence()])

# %% [markdown]
# ## Check your understanding
#
# **1.** Had the reader of section 1 paused for a minute, when would the writer's 6th probe
# have come, in seconds after the zero window? Use this run's RTO (printed in section 3)
# and the rule.

# %%
answer_1 = ...  # a number of seconds

# %%
sixth = sum(rules.tcp_probe0_when(m, sched.rto_ms, k, sched.rto_max_ms).value for k in range(6)) / 1000
check_value(answer_1, sixth, rel=0.15, name="6th probe",
            hint="the first gap is one RTO; each later gap doubles. Add up six gaps.");

# %% [markdown]
# **2.** In the panel's run (`long`: 4 KiB buffer, 4 s pause), how many bytes of payload did
# the reader hold when it advertised its zero window? Compute it from `long.segments()`.

# %%
answer_2 = ...  # a number of bytes

# %%
check_value(answer_2, analyse(long)["zero_ack"] - 1, name="bytes held",
            hint="find the reader's first segment with win 0; what does its ack number count?");

# %% [markdown]
# **3.** Which sysctl decides that the second probe of section 4 got no reply? Give its full
# name.

# %%
answer_3 = ...  # a string, e.g. "net.ipv4.tcp_..."

# %%
Exercise("the sysctl", hint="section 4 printed it next to the unanswered probes",
         test=lambda a: str(a).strip().lower().removeprefix("net.ipv4.") == "tcp_invalid_ratelimit",
         ok="right: out-of-window segments are answered at most once per tcp_invalid_ratelimit ms",
         ).check(answer_3);

# %% [markdown]
# ## Summary
# * A receiver that does not read fills its buffer; its advertised window falls to 0 and the
#   sender stops at the window edge (`sendall()` had long returned: the bytes wait in the send
#   buffer).
# * The sender probes the zero window: an empty segment at sequence − 1, one RTO after the
#   zero window, then at doubling intervals, up to the maximum RTO (`TCP_RTO_MAX`, 120 s, or
#   `tcp_rto_max_ms` / `TCP_RTO_MAX_MS` from 6.15). While answered it probes for ever;
#   `TCP_USER_TIMEOUT` ends it with `ETIMEDOUT` that long after the first probe. It retransmits
#   nothing while the window is 0; its tail loss probes, provoked by the reader's delayed
#   ACKs, all came before.
#   TCP_INFO shows `snd_wnd` 0 and `backoff` counting the probes; `nstat` counts `TCPWinProbe`.
# * The receiver answers out-of-window probes at most once per `tcp_invalid_ratelimit` ms.
# * When the application reads, the receiver sends a window update (same ACK, window > 0)
#   and the data flows again.
# * Wireshark labels Linux's probes "TCP Keep-Alive": same wire format, not `SO_KEEPALIVE`.
#
# **What's next:** [02_03 Nagle and delayed ACK](02_03-nagle-and-delayed-ack.ipynb): small
# writes, the delayed-ACK timer met in section 2, and the stall they make together.

# %%
assert nothing_left_behind() == []
