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
from helpers.notebook import mode_banner, nothing_left_behind
from helpers.experiments.flowcontrol import zero_window, analyse, probe_table, samples_frame, plot, render, shown
from helpers import dissect
from helpers.checks import check_value, Exercise
from helpers.widgets import Panel

mode_banner()

# %% [markdown]
# ## 1 · A reader that pauses
#
# Inside a private network namespace (MTU 1500 and segmentation offloads off, so the
# capture shows real 1448-byte segments, and the kernel counters are this experiment's
# own), a reader accepts a connection and then does not read for 2 s. Its `SO_RCVBUF` is
# 16 KiB (32 KiB once doubled), set on the listener before `listen()`. The writer sends
# 96 KiB (twice the doubled buffer, plus 32 KiB), more than the reader can hold, with one
# `sendall()`.
#
# **Predict:** once the reader's buffer is full, what does the writer's kernel do until the
# reader reads again? Stay silent? Retransmit? Something else?

# %%
result = zero_window(rcvbuf=16384, pause=2)
result

# %%
zero_window.check(result)   # the chapter's claims on this capture; each assert names its claim
df = result.segments()
d = result.data
a = analyse(result, df)
print(f"{len(df)} segments; writer → reader {len(a['from_w'])}, reader → writer {len(a['to_w'])}")
assert d["reader_rcvbuf"] == 2 * 16384 and d["total"] == 2 * d["reader_rcvbuf"] + 32768 == 96 * 1024
print(f"sendall() of {d['total']:,} bytes returned after {d['writer_done_at'] * 1000:.1f} ms; "
      f"the reader started reading at {d['resume_at']:.2f} s")
assert d["writer_done_at"] < 0.5 < d["resume_at"]

# %% [markdown]
# As in 02_01, `sendall()` returned at once: the bytes waited in the writer's send buffer.
#
# ## 2 · The window falls to 0
#
# Every segment from the reader carries its advertised window (`win`, already scaled). The
# first ACKs of the transfer:

# %%
to_w = a["to_w"]
first_zero_t = float(a["first_zero"]["t"])
to_w[to_w.t <= first_zero_t][["t", "flags", "ack", "win"]]

# %%
opening = to_w[(to_w.t <= first_zero_t) & ~to_w["flags"].str.contains("SYN")]
assert opening["win"].iloc[0] > opening["win"].iloc[-2] > 0 == opening["win"].iloc[-1]
print(f"window {opening['win'].iloc[0]:,} → … → {opening['win'].iloc[-2]:,} → 0 at {first_zero_t:.3f} s; "
      f"the reader had {a['zero_ack'] - 1:,} bytes queued")
queued = a["zero_ack"] - 1
assert 0.8 * d["reader_rcvbuf"] < queued < d["reader_rcvbuf"]

# %% [markdown]
# **Explain.** The window is the free space the receiver's kernel promises: as unread bytes
# pile up in the receive buffer it shrinks, and when the buffer is full it is 0. (Only the
# 28,960 bytes printed above, 28.3 KiB, fit in the 32 KiB buffer: the buffer is charged with
# packet memory, as in 02_01.) The writer may not send beyond `ack + win`, so it stops.
#
# Two details of the table. **Why does the window first rise**, from 15,928 in the SYN+ACK
# to 18,824? The SYN+ACK's window is chosen before any data has arrived, on the kernel's
# default guess that half of the buffer's memory will hold payload (`TCP_DEFAULT_SCALING_RATIO`
# in `include/net/tcp.h`: "Assume a 50% default for skb->len/skb->truesize ratio"): 32,768 / 2
# = 16,384, rounded down to whole segments, 11 × 1448. The first data segment lets the kernel
# measure the real ratio on this path (`tcp_measure_rcv_mss()` in `net/ipv4/tcp_input.c`),
# better than half here, and the next ACK offers 13 × 1448. **Why the ~44 ms gaps?** The first
# ACKs leave within microseconds; after them the reader's kernel only ACKs at once when its
# window can move forward (`__tcp_ack_snd_check()` in `net/ipv4/tcp_input.c`), which it cannot
# while nobody reads. The other ACKs wait for the delayed-ACK timer (`TCP_DELACK_MIN`, 40 ms,
# in `include/net/tcp.h`), counted by nstat as `DelayedACKs`. Chapter 02_03 is about that timer.

# %%
mss = int(df[df.len > 0]["len"].max())
syn_ack = to_w[to_w["flags"].str.contains("SYN")].iloc[0]
assert mss == 1448 and int(syn_ack["win"]) == (d["reader_rcvbuf"] // 2) // mss * mss
assert opening["win"].iloc[0] > int(syn_ack["win"]) and (opening["win"] % mss == 0).all()
first_data_t = float(a["from_w"][a["from_w"].len > 0]["t"].iloc[0])
gaps = opening[opening.t >= first_data_t]["t"].diff().fillna(opening["t"].iloc[0] - first_data_t)
quick, delayed = gaps[gaps < 0.01], gaps[gaps >= 0.01]
assert len(quick) >= 2 and delayed.between(0.03, 0.1).all()
assert len(delayed) == d["counters"]["TcpExtDelayedACKs"]
print(f"SYN+ACK window {int(syn_ack['win']):,} = {int(syn_ack['win']) // mss} × {mss}; first ACK "
      f"{opening['win'].iloc[0]:,} = {opening['win'].iloc[0] // mss} × {mss}; {len(quick)} ACKs at once, "
      f"then {len(delayed)} after {[round(g * 1000) for g in delayed]} ms; "
      f"nstat DelayedACKs {d['counters']['TcpExtDelayedACKs']}")

# %% [markdown]
# **A surprise: retransmissions.** Nothing was lost on this private link, yet the writer sent
# some segments twice:

# %%
rt = a["retrans"]
rt_view = rt.assign(first_sent=rt["orig_t"].round(4), after_ms=((rt["t"] - rt["orig_t"]) * 1000).round(1))
rt_view[["t", "seq", "len", "first_sent", "after_ms"]]

# %%
c = d["counters"]
assert len(rt) == c["TcpRetransSegs"] <= c["TcpExtTCPLossProbes"] and c["TcpExtTCPTimeouts"] == 0
assert c["TcpExtTCPDSACKRecv"] == c["TcpExtTCPDSACKOldSent"] == len(rt), "each one was a duplicate"
for _, r in rt.iterrows():   # sent before any ACK covered the original
    covered = to_w[(to_w.t > r["orig_t"]) & (to_w["ack"] >= r["seq"] + r["len"])]
    assert float(covered["t"].iloc[0]) > float(r["t"])
assert (rt["t"] < first_zero_t).all(), "every retransmission comes before the zero window"
print(f"{len(rt)} retransmissions, {list(rt_view['after_ms'])} ms after the original, all before "
      f"the zero window at {first_zero_t:.3f} s; nstat TCPLossProbes {c['TcpExtTCPLossProbes']}, "
      f"TcpRetransSegs {c['TcpRetransSegs']}, TCPTimeouts {c['TcpExtTCPTimeouts']}; D-SACKs: sent by the "
      f"reader {c['TcpExtTCPDSACKOldSent']}, received by the writer {c['TcpExtTCPDSACKRecv']}; "
      f"net.ipv4.tcp_early_retrans = {d['tcp_early_retrans']}")

# %% [markdown]
# **Explain.** These are *tail loss probes* (TLP, on by default: `net.ipv4.tcp_early_retrans`
# = 3; `Documentation/networking/ip-sysctl.rst`: "Tail loss probe (TLP) converts RTOs
# occurring due to tail losses into fast recovery (RFC8985)"). When the last segments sent
# get no ACK for about two round-trip times plus a few milliseconds, far less than the
# 200 ms retransmission timeout, the writer re-sends the last one. Here the ACKs were only
# *late* (the reader's 40 ms delayed ACKs), so the probe arrived as a duplicate and the reader
# said so with a D-SACK (counted as `TCPDSACKOldSent` at the reader, `TCPDSACKRecv` at the
# writer). No retransmission timeout fired (`TCPTimeouts` 0), and all of this happened before
# the window reached 0. What the writer does *while* the window is 0 is the next question.
#
# ## 3 · While the window is 0
#
# **Predict:** the writer still has about 68 KiB to send and the window is 0. Does it send
# anything before the reader reads again? If so, when, and how often?

# %%
probes = probe_table(result, a)
shown(probes)

# %%
assert 2 <= len(probes) <= 3, "a 2 s pause shows two or three probes"
assert (a["probes"]["len"] == 0).all() and (a["probes"]["seq"] == a["zero_ack"] - 1).all()
rto = samples_frame(result).query("snd_wnd == 0")["rto_ms"].iloc[0] / 1000
assert 0.8 * rto <= probes["interval"].iloc[0] <= 1.5 * rto, "the first probe comes one RTO after the zero window"
assert probes["ratio"].dropna().between(1.6, 2.5).all(), "each interval doubles"
assert samples_frame(result)["notsent"].iloc[-1] == d["total"] - queued + 1   # + 1: the FIN
assert not ((rt["t"] > first_zero_t) & (rt["t"] < float(a["update"]["t"]))).any(), "no retransmission"
print(f"RTO {rto * 1000:.0f} ms; probe intervals {list(probes['interval'])} s: ratios "
      f"{list(probes['ratio'].dropna())}")

# %% [markdown]
# **Explain.** The writer does not retransmit while the window is 0 (the check above), and it
# does not stay silent either: that could hang the connection for ever if the reader's window
# update were lost. Its kernel runs the *persist* (probe) timer. It fires after one
# retransmission timeout (RTO: at least 200 ms on Linux, `net.ipv4.tcp_rto_min_us`; on
# loopback the round trip is microseconds, so it is ≈ 200 ms; TCP_INFO showed it above) and
# then backs off exponentially, each interval twice the one before, up to the maximum RTO
# (`tcp_send_probe0()` in `net/ipv4/tcp_output.c`). On this kernel that maximum is the sysctl
# `net.ipv4.tcp_rto_max_ms`, printed below; older kernels use the constant `TCP_RTO_MAX`,
# 120 s, in `include/net/tcp.h`. A pause of seconds never reaches it. Each probe is an empty
# segment whose sequence number is one *below* what the receiver expects: the receiver must
# answer with an ACK that carries its current window, and the probe holds no data that could
# be lost or would need to be accepted.
#
# %%
print(f"net.ipv4.tcp_rto_max_ms = {d['tcp_rto_max_ms']}")
assert d["tcp_rto_max_ms"] in (None, 120000) and probes["interval"].max() < 120

# %% [markdown]
# ## 4 · Not every probe is answered
#
# Look at the `answered` column: on loopback the second probe usually gets no reply at all.

# %%
unanswered = probes[~probes["answered"]]
limit = d["tcp_invalid_ratelimit_ms"] / 1000
print(f"unanswered probes: {list(unanswered['probe'])}, each {list(unanswered['since last answer'])} s "
      f"after the previous answer; net.ipv4.tcp_invalid_ratelimit = {limit * 1000:.0f} ms; "
      f"nstat TcpExtTCPACKSkippedSeq = {d['counters']['TcpExtTCPACKSkippedSeq']}")
assert (unanswered["since last answer"] < limit).all()
assert (probes[probes["answered"]]["since last answer"].dropna() > limit).all()
assert d["counters"]["TcpExtTCPACKSkippedSeq"] == len(unanswered)

# %% [markdown]
# **Explain.** A probe's sequence number lies outside the receive window, and Linux answers
# out-of-window segments at most once per `net.ipv4.tcp_invalid_ratelimit` (500 ms), a
# defence against ACK storms. The second probe came 0.44 s after the first answer, so the
# receiver's kernel skipped it and counted `TCPACKSkippedSeq`. No harm done: the sender
# simply probes again later. (You will only see this when the first intervals are short,
# as on loopback.)
#
# ## 5 · The window update
#
# **Predict:** when the reader reads again, which segment restarts the transfer, and who
# sends it?

# %%
upd = a["update"]
after = df[(df.t >= float(upd["t"]) - 1e-6)].head(6)
after[["t", "sport", "dport", "flags", "seq", "ack", "len", "win"]]

# %%
assert int(upd["sport"]) == d["port"] and int(upd["len"]) == 0
assert int(upd["ack"]) == a["zero_ack"] and int(upd["win"]) > 0, "same ACK number, window > 0"
assert float(upd["t"]) >= d["resume_at"] - 0.05, "sent only when the reader reads"
first_data = a["from_w"][(a["from_w"].t > float(upd["t"])) & (a["from_w"]["len"] > 0)].iloc[0]
assert int(first_data["seq"]) == a["zero_ack"] and float(first_data["t"]) - float(upd["t"]) < 0.05
print(f"window update at {float(upd['t']):.3f} s (win {int(upd['win']):,}); data resumes "
      f"{(float(first_data['t']) - float(upd['t'])) * 1e6:.0f} µs later at seq {int(first_data['seq']):,}")

# %% [markdown]
# **Explain.** The reader's kernel, not the writer, restarts the transfer: when the
# application has read enough to free a useful amount of space, it sends an ACK that
# acknowledges nothing new (same ACK number) but opens the window. That is a *window update*.
#
# ## 6 · The picture: a time-sequence graph
#
# Blue bars are data segments (sequence number against time), the green step the reader's
# ACKs, the purple dashed step the window edge (ACK + window): the writer may only send
# below it. Magenta bars are retransmissions (the tail loss probes of section 2), red crosses
# zero-window ACKs, orange diamonds the probes. Below, the writer's TCP_INFO `backoff`,
# sampled every 20 ms. Both panels share the time axis: seconds since the SYN, the first
# packet of the capture.

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
samples = samples_frame(result)
samples

# %%
stalled = samples[samples.t > first_zero_t + 0.01]
assert (stalled["snd_wnd"] == 0).all(), "TCP_INFO snd_wnd is 0 while stalled"
steps = sorted(set(stalled["backoff"]))
assert steps == list(range(steps[0], steps[-1] + 1)) and steps[-1] >= len(probes) - 1, "one step per probe"
print(f"snd_wnd 0 throughout; backoff counts the probes: {sorted(set(stalled['backoff']))}; "
      f"notsent_bytes {stalled['notsent'].iloc[-1]:,} waiting at the writer")

# %% [markdown]
# `backoff` rises by one per probe (each interval is RTO × 2^backoff). `probes` counts the
# probes *not yet answered*: it drops back to 0 whenever a zero-window answer arrives. `ss`
# during the stall, and the namespace's counters for the whole run:

# %%
pd.DataFrame(d["stall_ss"]).T

# %%
ss_w, ss_r = d["stall_ss"]["writer"], d["stall_ss"]["reader"]
fin = 1 if ss_w["state"] == "FIN-WAIT-1" else 0
assert ss_w["send_q"] + ss_r["recv_q"] == d["total"] + fin, "every byte is in one of the two queues"
assert ss_r["recv_q"] <= ss_r["skmem_rb"] == d["reader_rcvbuf"]
pd.Series(d["counters"], name="nstat delta")

# %%
c = d["counters"]
assert c["TcpExtTCPWinProbe"] == len(probes), "one TCPWinProbe per probe on the wire"
assert c["TcpExtTCPToZeroWindowAdv"] >= 1 and c["TcpExtTCPFromZeroWindowAdv"] >= 1

# %% [markdown]
# The writer had already called `shutdown(SHUT_WR)` after `sendall()`: it is in FIN-WAIT-1,
# its FIN queued behind the data, and the FIN takes one sequence number, hence the + 1.
# `TCPToZeroWindowAdv` / `TCPFromZeroWindowAdv` count the reader closing and reopening its
# window; `TCPWinProbe` the writer's probes.
#
# ## 8 · What Wireshark calls these segments
#
# Wireshark's TCP expert analysis, through pyshark, on the same file:

# %%
exp = dissect.expert(result.pcap)
labelled = dissect.with_expert(df, exp)
probe_rows = labelled.loc[a["probes"].index]
window_rows = labelled[labelled["labels"].map(lambda l: bool({"zero_window", "window_update"} & set(l)))]
with pd.option_context("display.max_colwidth", 80):
    display(pd.concat([probe_rows, window_rows]).sort_values("t")[["t", "sport", "seq", "ack", "len", "win",
                                                                    "labels", "expert_info"]])

# %%
assert probe_rows["labels"].map(lambda l: "keep_alive" in l and "zero_window_probe" not in l).all()
assert labelled.loc[a["zeros"].index, "labels"].map(lambda l: "zero_window" in l).all()
assert "window_update" in labelled.loc[upd.name, "labels"]
assert d["writer_so_keepalive"] == 0, "the writer never enabled SO_KEEPALIVE"
print(f"Wireshark: probes = {set(probe_rows['labels'].map(tuple))}; SO_KEEPALIVE on the writer: "
      f"{d['writer_so_keepalive']}; tcp_keepalive_time {d['tcp_keepalive_time_s']} s")

# %% [markdown]
# > **Myth vs measurement.** The source notes say that a slow reader makes "the peer's
# > sending stall", as if the sender simply waited; and a capture of it in Wireshark seems to
# > say the connection is sending keep-alives. Measured: while the window is 0 the sender
# > retransmits nothing (its tail loss probes all came before), but it is not silent: it
# > probes the zero window at doubling intervals (counted by `TCPWinProbe`); and these are not
# > keep-alives: `SO_KEEPALIVE` is off and the keep-alive timer would wait 2 hours.
# > Wireshark calls a *zero-window probe* a segment at the next expected sequence number with
# > one byte of data (what the RFCs describe and some stacks send). Linux sends no data and
# > uses the sequence number one *below* (`tcp_xmit_probe_skb`: "use a previous sequence")
# > which is exactly Wireshark's rule for a keep-alive. Same wire format, different purpose:
# > read the label, then check the window.
#
# ## 9 · Your turn: receive buffer and pause
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
zero_window.check(long)
lp = probe_table(long)
assert len(lp) in (3, 4) and lp["ratio"].dropna().between(1.6, 2.5).all()
assert lp["since zero window"].iloc[-1] > 1.4, "the last probe comes seconds after the zero window"
print(f"4 KiB buffer, 4 s pause: probes at {list(lp['since zero window'])} s after the zero window")
# the 4 KiB reader: its window never went above 2896 bytes, two segments
assert long.segments().query("sport == @long.data['port'] and len == 0")["win"].max() <= 4096

# %% [markdown]
# ## Check your understanding
#
# **1.** Had the reader of section 1 paused for a minute, when would the writer's 6th probe
# have come, in seconds after the zero window? Use this run's probe table.

# %%
answer_1 = ...  # a number of seconds

# %%
check_value(answer_1, float(probes["interval"].iloc[0]) * (2 ** 6 - 1), rel=0.15, name="6th probe",
            hint="the table's `since zero window` column: where did probes 1, 2 and 3 sit, "
                 "measured in first intervals?");

# %% [markdown]
# **2.** In the panel's run (`long`: 4 KiB buffer, 4 s pause), how many bytes of payload did
# the reader hold when it advertised its zero window? Compute it from `long.segments()`.

# %%
answer_2 = ...  # a number of bytes

# %%
check_value(answer_2, analyse(long)["zero_ack"] - 1, name="bytes held",
            hint="find the reader's first segment with win 0; what does its ack number count?");

# %% [markdown]
# **3.** Which sysctl decides that a probe coming 0.44 s after the last answer gets no reply?
# Give its full name.

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
#   zero window, then at doubling intervals, up to the maximum RTO (120 s). It retransmits
#   nothing while the window is 0; its tail loss probes, provoked by the reader's delayed
#   ACKs, all came before.
#   TCP_INFO shows `snd_wnd` 0 and `backoff` counting the probes; `nstat` counts `TCPWinProbe`.
# * The receiver answers out-of-window probes at most once per `tcp_invalid_ratelimit` (500 ms).
# * When the application reads, the receiver sends a window update (same ACK, window > 0)
#   and the data flows again.
# * Wireshark labels Linux's probes "TCP Keep-Alive": same wire format, not `SO_KEEPALIVE`.
#
# **What's next:** [02_03 Nagle and delayed ACK](02_03-nagle-and-delayed-ack.ipynb): small
# writes, the 40 ms delayed-ACK timer met in section 2, and the stall they make together.

# %%
assert nothing_left_behind() == []
