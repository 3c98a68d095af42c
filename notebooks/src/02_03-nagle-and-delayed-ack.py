# %% [markdown]
# # 02_03 · Nagle's algorithm and delayed ACKs
#
# **Objectives**
# 1. Measure a request/response protocol that writes a header, then a body, then reads the
#    reply, and find the delayed-ACK timer's wait (40 ms and a tick on the reference machine)
#    it loses on every request but the first.
# 2. Read in a capture *which* packet waits and what it waits for.
# 3. Measure the fixes people propose: TCP_NODELAY, TCP_CORK, one write, and TCP_QUICKACK
#    on the server (set once, or after every recv).
# 4. Follow a body larger than one MSS through Nagle and delayed ACK.
#
# **Prerequisites:** [02_01 Send and receive buffers](02_01-send-and-receive-buffers.ipynb).
# **Time:** 35 minutes.

# %%
import pandas as pd
from helpers import rules
from helpers.notebook import mode_banner, nothing_left_behind, show
from helpers.experiments.nagle import (nagle, nagle_trace, compare, summary, render, request_timeline,
                                       request_segments, stalled_request, latency_figure, stall_ms, stall_ticks,
                                       expect_stall, CLIENT_MAXSEG)
from helpers import plots
from helpers.checks import check, check_value
from helpers.widgets import Panel

mode_banner(needs=("live_capture", "namespaces"))

# %% [markdown]
# ## 1 · A request in two writes
#
# The client sends each request as two `send()` calls: an 8-byte header (the body's length),
# then a 100-byte body; then it waits for the server's 2-byte reply. The server replies once
# it has read both. Both ends are on `127.0.0.1`, where a round trip takes some
# microseconds. Fifteen requests on one connection, each timed from the first write to the
# end of the reply. (This part measures with plain sockets: it runs live for everyone.)
#
# One setting to know: the client sets `TCP_MAXSEG` to 1460 before it connects, as a host on
# Ethernet (MTU 1500) would announce, so each segment carries at most **1448 bytes** of data
# (1460 minus 12 bytes of timestamp option). Without it the MSS on `lo` is about 64 KiB
# (01_02 saw 65,495 in the SYN), and "a body larger than one segment" (sections 3 and 4)
# would need a 64 KiB body.
#
# **Predict:** how long does one request take?

# %%
default = nagle()
default

# %%
dd = default.data
lat = pd.Series(dd["latency_ms"], name="latency (ms)", index=pd.RangeIndex(1, dd["requests"] + 1, name="request"))
lat.round(3).to_frame().T

# %%
m = default.machine_snapshot()
nagle.check(default)      # the chapter's claims on this run, each a rule on this machine
ts = 12 if m.tcp_timestamps else 0
rules.Prediction("TCP_MAXSEG", "TCP_MAXSEG − 12 bytes of timestamp option (when timestamps are on)",
                 {"TCP_MAXSEG": CLIENT_MAXSEG, "tcp_timestamps": m.tcp_timestamps}, CLIENT_MAXSEG - ts,
                 unit="B").check(dd["mss"], "client snd_mss (TCP_INFO)")
band = rules.delack_band(m)
show([f"The first request took {dd['first_ms']:.2f} ms, below the delayed-ACK band "
      f"({band.low:g}–{band.high:g} ms at HZ={band.inputs['HZ']}); the median of the other "
      f"{dd['requests'] - 1} was {dd['median_ms']:.1f} ms, and {dd['stalled']} of {dd['requests']} took more "
      f"than {dd['stall_ms']:g} ms. A loopback round trip takes some microseconds."])

# %% [markdown]
# **Observe.** The first request is fast; every later one waits tens of milliseconds,
# thousands of times a loopback round trip. Nothing is slow here: something *waits*.
#
# ## 2 · Who waits, and for what
#
# A capture of five such requests shows it. (Capturing needs CAP_NET_RAW; without it this
# section replays the recorded capture, and the banner says so.)
#
# **Predict:** which packet leaves late: the header, the body, or the reply?

# %%
trace = nagle_trace(setting="default")
trace

# %%
timeline = request_timeline(trace)
timeline.round(2)

# %%
later = timeline.iloc[1:]
nagle_trace.check(trace)   # header alone at once; its ACK in DELACK_BAND; body right after; one DelayedACK per stall
td = trace.data
show([f"Header → server's ACK: median {later['server ACK after (ms)'].median():.1f} ms; the body follows "
      f"{(later['body after (ms)'] - later['server ACK after (ms)']).median():.3f} ms after that ACK; pure ACKs "
      f"from the server per request: {later['server pure ACKs'].tolist()}. The run had its own namespace, so "
      f"its counter is its own: `TcpExtDelayedACKs` = {td['delayed_acks']}, for {td['stalled']} stalled "
      f"requests."])

# %% [markdown]
# The ladder of a typical stalled request (the median one, not the last, whose packets run
# into the connection's close), with the pause drawn as a break:

# %%
k = stalled_request(trace)
pause = timeline.loc[k, "server ACK after (ms)"]
rules.assert_rule(trace, rules.delack_band, pause, what=f"request {k}: header → server's ACK", quiet=True)
fig = plots.ladder(request_segments(trace, k),
                   title=f"request {k}: header, {pause:.1f} ms of nothing, ACK, body, ACK, reply")

# %% [markdown]
# **Explain.** Two rules meet:
#
# * **Nagle's algorithm** (client). Linux uses Minshall's variant (`tcp_nagle_check` and
#   `tcp_minshall_check` in `net/ipv4/tcp_output.c`): a segment smaller than the MSS is
#   not sent while an earlier *small* segment is still unacknowledged. The header went
#   out at once (nothing small was in flight); the body is small and the small header is
#   unacknowledged, so the body waits for an ACK.
# * **Delayed ACK** (server): a receiver does not acknowledge at once; it waits, hoping to
#   put the ACK on data of its own. Once a connection looks interactive (the server
#   answered a request quickly: "pingpong" mode, entered in `tcp_event_data_sent`),
#   Linux delays the ACK of a small segment by its delayed-ACK timeout `ato`, at least
#   `TCP_ATO_MIN` = HZ/25 jiffies (`include/net/tcp.h`; 40 ms wherever HZ is a multiple
#   of 25). The timer fires on the kernel's tick (4 ms on the reference machine, HZ=250),
#   a tick or two after the floor: `rules.delack_band` is that band for this machine.
#
# The server cannot reply before it has the body, so it has nothing to put its ACK on: the
# delayed-ACK timer ends the deadlock. The first request was fast because a new connection
# starts in quick-ACK mode (every segment acknowledged at once) and is not yet "interactive".
#
# The ladder shows one more thing: the server sends a *second* pure ACK, for the body,
# before its reply, although it had just been waiting to put ACKs on data. When the
# delayed-ACK timer fires on an interactive connection, Linux concludes the guess was wrong
# and leaves pingpong mode (`tcp_delack_timer_handler` in `net/ipv4/tcp_timer.c`:
# "Delayed ACK missed: leave pingpong mode"), so the body is acknowledged at once. The
# quick reply then makes the connection interactive again, and the next header's ACK is
# delayed again: every request pays the timer once.
#
# The kernel's own view agrees. TCP_INFO of the server's socket reports `ato`, its
# *current* delayed-ACK timeout (read just before each reply), and the counter
# `TcpExtDelayedACKs` counts ACKs sent by that timer. In section 1 that counter was the
# host's, shared with everything else on the machine (it can only have risen more than
# our stalls); the capture above ran in its own namespace, where the counter is the
# experiment's alone and equals the stalls exactly (checked).

# %%
floor = rules.tcp_delack_min(m)
rules.Prediction("TCP_ATO_MIN", "HZ/25 jiffies, in µs", floor.inputs, int(floor.value * 1000),
                 unit="µs").check(dd["server_tcp_info"]["ato"], "server TCP_INFO ato")
show([f"Host-wide `TcpExtDelayedACKs` rose by {dd['delayed_acks']} during the {dd['stalled']} stalls of "
      f"section 1; the namespace's rose by {td['delayed_acks']} for the {td['stalled']} stalls of the capture."])

# %% [markdown]
# ## 3 · Four fixes and a non-fix
#
# Each setting below runs the same fifteen requests (live, plain sockets):
#
# | setting | what changes |
# |---|---|
# | `nodelay` | client sets `TCP_NODELAY`: Nagle off, the body leaves at once |
# | `cork` | client sets `TCP_CORK` before the writes and clears it after: one segment |
# | `one_write` / `sendmsg` | header and body in one `send()`, or one `sendmsg()` of two buffers |
# | `quickack_once` | server sets `TCP_QUICKACK` once, after accept |
# | `quickack_every_recv` | server sets `TCP_QUICKACK` after every `recv()` |
# | `body_2000` | the body is 2000 bytes, more than one MSS (1448 here) |
# | `mss_then_rest` | one full-sized segment (1448 bytes), then the 100-byte rest: section 4 |
#
# **Predict:** which of them still stall?

# %%
runs = compare()
table = summary(runs)
table

# %%
for name, r in runs.items():   # stalls where the rule says so (median in DELACK_BAND), else under half the floor
    nagle.check(r)
stalling = [n for n, r in runs.items() if r.data["expect_stall"]]
medians = {n: r.data["median_ms"] for n, r in runs.items()}
show([f"Still stalling: {', '.join(stalling)} (medians {', '.join(f'{medians[n]:.1f}' for n in stalling)} ms). "
      f"The fixes: medians {', '.join(f'{n} {v:.2f}' for n, v in medians.items() if n not in stalling)} ms, "
      f"all under {stall_ms(m):g} ms, half the delayed-ACK floor."])

# %% [markdown]
# The same runs as a histogram (stacked, so that settings with the same latencies all
# show; the legend gives each median):

# %%
fig = latency_figure(runs, title="Request latency per setting (log scale): fractions of a ms, or the delayed-ACK wait")

# %% [markdown]
# On the reference machine `quickack_once` once showed a median 4 ms above `default`.
# Where do such extra milliseconds come from? Each stall ends when the delayed-ACK timer
# fires, and timers fire on ticks: counted in ticks after the floor, this run's stalls
# were

# %%
ticks = stall_ticks({n: runs[n] for n in stalling})
ticks

# %%
tick = rules.tcp_delack_min(m).inputs["tick_ms"]
show([f"A tick is {tick:g} ms here (HZ={rules.tcp_delack_min(m).inputs['HZ']}). " + "; ".join(
    f"{n}: " + ", ".join(f"{v} stall{'s' if v != 1 else ''} {c}" for c, v in ticks.loc[n].items() if v)
    for n in ticks.index) + "."])

# %% [markdown]
# **Explain.** The timer is armed for `ato` = HZ/25 jiffies and the timer wheel rounds its
# expiry up to the next tick (`calc_index()` in `kernel/time/timer.c`: a timer must never
# fire early), so a stall ends one tick after the floor; when the CPU that owns the timer
# is busy or asleep, a tick later. Both settings stall on the same timer, and either can
# show the extra tick in a given run: the difference between them is whole ticks of
# jitter, not the option. TCP_QUICKACK set once only changed the first request.
#
# **Explain.** `TCP_NODELAY` lets the small body go at once; `TCP_CORK` (and a single write,
# or `sendmsg`/`writev` with both buffers) makes header and body *one* segment, so nothing
# small waits behind anything. They differ in system calls per request: a single write
# is one, cork-write-write-uncork is four (two `setsockopt` calls and two `send` calls).
# `TCP_QUICKACK` works on the other side: set after each `recv()`, it sends the pending
# ACK at once.
#
# > **Myth vs measurement.** "TCP_QUICKACK disables delayed ACKs." Measured: set once after
# > accept, it changed nothing (its median is in the delayed-ACK band, checked above). The option only leaves
# > delayed-ACK mode until the kernel's next decision; as soon as the server replies quickly
# > the connection counts as interactive again and ACKs are delayed. It must be set again
# > after every `recv()` to help (`man 7 tcp`: "not permanent").
# >
# > **Myth vs measurement.** "Nagle combined with delayed ACK can introduce ~200–500 ms
# > delays." Measured on Linux: the floor HZ/25 jiffies plus a tick or two (section 1). Linux's longest
# > delayed-ACK timeout is 200 ms (`TCP_DELACK_MAX` = HZ/5 in `include/net/tcp.h`), but this
# > interactive connection used the minimum, HZ/25 jiffies, as TCP_INFO's `ato` showed.
#
# ## 4 · A body larger than one MSS
#
# The `body_2000` row of section 3 did not stall. **Predict:** how does a 2000-byte body
# travel when the MSS is 1448 bytes: in how many segments, and does any of them wait for
# the server's ACK?

# %%
big = nagle_trace(setting="body_2000")
tl_big = request_timeline(big)
tl_big.round(2)

# %%
nagle_trace.check(big)    # header, one full segment, the tail; the full one before any ACK, the tail after it
mss = big.data["mss"]
later_big = tl_big.iloc[1:]
show([f"MSS {mss} B: a 2000-byte body goes out as {mss} + {2000 - mss} bytes after the 8-byte header; the "
      f"server's ACK came {later_big['server ACK after (ms)'].median():.3f} ms after the header (median), the "
      f"tail {later_big['body ends after (ms)'].median():.3f} ms after it; the slowest request took "
      f"{tl_big['reply after (ms)'].max():.2f} ms."])

# %% [markdown]
# **Explain.** Nagle never holds a *full-sized* segment, so the first 1448 bytes of the body
# leave at once. The 552-byte tail is small and the small header is still unacknowledged,
# so Nagle holds it, as it held the 100-byte body. But the server now has more than one
# full segment's worth of unacknowledged data (8 + 1448 bytes), and then it acknowledges
# at once, interactive or not (`__tcp_ack_snd_check` in `net/ipv4/tcp_input.c`: "More than
# one full frame received"). That ACK, a fraction of a millisecond later, releases the
# tail (the table: the tail leaves after the ACK). Small requests are the ones that stall;
# that is why the bug shows in RPC protocols and not in file transfers.
#
# ### Minshall's variant or classic Nagle?
#
# Classic Nagle (RFC 896) holds a small segment while *anything* is unacknowledged;
# Linux's variant (Minshall's) only while a *small* segment is. The `mss_then_rest` row of
# section 3 tells them apart: the client writes exactly one full segment, then the
# 100-byte rest. Classic Nagle would hold the rest until the full segment is acknowledged,
# a delayed ACK away; Minshall's sends it at once.

# %%
mr = runs["mss_then_rest"]
classic = expect_stall(**{k: mr.data["params"][k] for k in ("nodelay", "cork", "quickack", "pattern", "body")},
                       mss=mr.data["mss"], minshall=False)
linux = expect_stall(**{k: mr.data["params"][k] for k in ("nodelay", "cork", "quickack", "pattern", "body")},
                     mss=mr.data["mss"], minshall=True)
show([f"Prediction: classic Nagle stalls: {classic}; Minshall's variant stalls: {linux}. Measured: median "
      f"{mr.data['median_ms']:.2f} ms, {mr.data['stalled']} of {mr.data['requests']} requests over "
      f"{mr.data['stall_ms']:g} ms."])
nagle.check(mr)           # no stall: Linux follows Minshall's rule (tcp_minshall_check in net/ipv4/tcp_output.c)

# %% [markdown]
# ## 5 · Your turn
#
# The panel runs the same measurement with any combination: Nagle, cork, quick-ACK, the
# write pattern and the body size (live for everyone: it captures nothing). The numbers
# under the plot include the server's TCP_INFO `ato` and the `TcpExtDelayedACKs` delta.
#
# **Predict** before you press: `TCP_NODELAY` on *and* two writes with a 1000-byte body?
# Then the same with `TCP_NODELAY` off?

# %%
panel = Panel(nagle, nagle.params, render=render, title="Nagle and delayed ACK")
panel

# %% [markdown]
# nbval cannot press buttons; the next cell calls the panel's callback as the button does.

# %%
r = panel.update(nodelay=True, cork=False, quickack="off", pattern="two writes", body=1000)
panel.show()   # what the panel shows, also kept in the saved notebook
nagle.check(r)   # TCP_NODELAY: the 1000-byte body leaves at once (median under half the floor)

# %%
r2 = panel.update(nodelay=False)
panel.show()
nagle.check(r2)  # Nagle on: 1000 bytes is less than one MSS, so it waits (median in DELACK_BAND)

# %% [markdown]
# ## Check your understanding
#
# **1.** A program sends 100 requests on one connection, header and body as two writes,
# no options (the default setting). How long do the 100 requests take in all, in seconds?
# The next cell runs it live (a few seconds) and compares.

# %%
answer_1 = ...  # a number of seconds

# %%
hundred = nagle(requests=100)
check_value(answer_1, sum(hundred.data["latency_ms"]) / 1000, name="100 requests (s)", rel=0.25,
            hint="how many of the 100 requests wait for the timer, and how long does each one wait?");

# %% [markdown]
# **2.** With `TCP_NODELAY` on (the `nodelay` setting) the client still writes the header and
# the body separately. How many TCP segments does the client send per request (after the
# first)? The next cell counts them in a capture of that setting (replayed without
# capture privileges).

# %%
answer_2 = ...  # a number of segments

# %%
tl_nodelay = request_timeline(nagle_trace(setting="nodelay"))
check_value(answer_2, int(tl_nodelay["segments"].iloc[1:].median()), name="segments per request",
            hint="with Nagle off, is anything held back to be merged with the next write?");

# %% [markdown]
# **3.** Will a request with a body of exactly 1448 bytes stall, with two writes and no
# options? Answer `True` or `False`; the next cell checks it live.

# %%
answer_3 = ...  # True or False

# %%
exact = nagle(body=1448)
check(... if answer_3 is ... else answer_3 == (exact.data["median_ms"] > exact.data["stall_ms"]),
      f"right: the median was {exact.data['median_ms']:.2f} ms; Nagle never holds a full-sized segment",
      "compare the body with the MSS printed in section 1");

# %% [markdown]
# ## Summary
# * Write, write, read on one connection: the second small write waits for the ACK of the
#   first (Nagle, Minshall's variant: only a small unacknowledged segment holds it), and the
#   receiver delays that ACK by HZ/25 jiffies plus a tick or two (`rules.delack_band`), on
#   every request except the first (quick-ACK mode of a new connection).
# * Fixes: one write (or `sendmsg`/`writev`), `TCP_CORK` … uncork, `TCP_NODELAY`, or
#   `TCP_QUICKACK` re-set after every `recv()`. Set once, `TCP_QUICKACK` does nothing lasting.
# * Segments of a full MSS are never held: large bodies do not stall.
#
# **What's next:** [02_04 Streams and framing](02_04-streams-and-framing.ipynb): TCP keeps no
# message boundaries at all.

# %%
assert nothing_left_behind() == []
