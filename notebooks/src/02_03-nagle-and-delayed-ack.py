# %% [markdown]
# # 02_03 · Nagle's algorithm and delayed ACKs
#
# **Objectives**
# 1. Measure a request/response protocol that writes a header, then a body, then reads the
#    reply, and find the ~44 ms it loses on every request but the first.
# 2. Read in a capture *which* packet waits and what it waits for.
# 3. Measure the fixes people propose: TCP_NODELAY, TCP_CORK, one write, and TCP_QUICKACK
#    on the server (set once, or after every recv).
# 4. Follow a body larger than one MSS through Nagle and delayed ACK.
#
# **Prerequisites:** [02_01 Send and receive buffers](02_01-send-and-receive-buffers.ipynb).
# **Time:** 35 minutes.

# %%
import pandas as pd
from helpers.notebook import mode_banner, nothing_left_behind
from helpers.experiments.nagle import (nagle, nagle_trace, compare, summary, render, request_timeline,
                                       request_segments, stalled_request, latency_figure, STALL_MS)
from helpers import plots
from helpers.checks import check, check_value
from helpers.widgets import Panel

mode_banner()

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
lat = pd.Series(default.data["latency_ms"], name="latency (ms)", index=pd.RangeIndex(1, default.data["requests"] + 1, name="request"))
print(f"first request {default.data['first_ms']:.3f} ms; median of the rest {default.data['median_ms']:.1f} ms; "
      f"{default.data['stalled']} of {default.data['requests']} took more than {STALL_MS:g} ms")
print(f"client MSS (TCP_INFO snd_mss): {default.data['mss']} bytes")
lat.round(3).to_frame().T

# %%
nagle.check(default)      # the chapter's claims on this run
assert default.data["first_ms"] < STALL_MS, "the first request does not wait"
assert 30 <= default.data["median_ms"] <= 60, "every later request waits about 44 ms"
assert default.data["stalled"] >= 0.7 * (default.data["requests"] - 1)
assert default.data["mss"] == 1448, "TCP_MAXSEG 1460 with timestamps: 1448 bytes per segment"

# %% [markdown]
# **Observe.** The first request takes a fraction of a millisecond; every later one takes
# about 44 ms, thousands of times a loopback round trip. Nothing is slow here: something
# *waits*.
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
nagle_trace.check(trace)
assert (later["first segment bytes"] == 8).all(), "the 8-byte header leaves at once, alone"
assert later["server ACK after (ms)"].between(30, 80).mean() >= 0.75, "the server acknowledges it ~40 ms later"
assert ((later["body after (ms)"] - later["server ACK after (ms)"]).abs() < 5).mean() >= 0.75, \
    "the body leaves the moment that ACK arrives"
assert (later["server pure ACKs"] >= 2).mean() >= 0.75, "the body gets a pure ACK of its own, before the reply"
print(f"header → server's ACK: median {later['server ACK after (ms)'].median():.1f} ms; the body follows "
      f"{(later['body after (ms)'] - later['server ACK after (ms)']).median():.3f} ms after that ACK; "
      f"pure ACKs from the server per request: {later['server pure ACKs'].tolist()}")

# %% [markdown]
# The ladder of a typical stalled request (the median one, not the last, whose packets run
# into the connection's close), with the pause drawn as a break:

# %%
k = stalled_request(trace)
pause = timeline.loc[k, "server ACK after (ms)"]
assert k not in (1, trace.data["requests"]) and 30 <= pause <= 60
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
#   `TCP_ATO_MIN` = HZ/25 jiffies = 40 ms (`include/net/tcp.h`). The timer runs on the
#   kernel's tick, 4 ms on the reference machine (HZ=250), hence ~44 ms.
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
# `TcpExtDelayedACKs` counts ACKs sent by that timer (a host-wide counter, so other
# traffic can only add to it):

# %%
ato = default.data["server_tcp_info"]["ato"]
print(f"server TCP_INFO ato = {ato} µs; TcpExtDelayedACKs rose by {default.data['delayed_acks']} "
      f"during {default.data['stalled']} stalled requests")
assert ato == 40_000, "the delayed-ACK timeout is 40 ms (TCP_ATO_MIN)"
assert default.data["delayed_acks"] >= 0.7 * default.data["stalled"], "one timer-sent ACK per stall"

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
#
# **Predict:** which of them still stall?

# %%
runs = compare()
table = summary(runs)
table

# %%
stall = runs["default"].data["median_ms"]
for name in ("nodelay", "cork", "one_write", "sendmsg", "quickack_every_recv", "body_2000"):
    assert stall / runs[name].data["median_ms"] >= 10, f"{name} removes the stall (10× at least)"
assert 30 <= runs["quickack_once"].data["median_ms"] <= 60, "TCP_QUICKACK set once does not help"
for r in runs.values():
    nagle.check(r)
print(f"stall {stall:.1f} ms; fixes {table.loc[['nodelay', 'cork', 'one_write', 'quickack_every_recv'], 'median (ms)'].tolist()} ms")

# %% [markdown]
# The same runs as a histogram (stacked, so that settings with the same latencies all
# show; the legend gives each median):

# %%
fig = latency_figure(runs, title="Request latency per setting (log scale): fractions of a ms, or ~44 ms")

# %% [markdown]
# **Explain.** `TCP_NODELAY` lets the small body go at once; `TCP_CORK` (and a single write,
# or `sendmsg`/`writev` with both buffers) makes header and body *one* segment, so nothing
# small waits behind anything. They differ in system calls per request: a single write
# is one, cork-write-write-uncork is four (two `setsockopt` calls and two `send` calls).
# `TCP_QUICKACK` works on the other side: set after each `recv()`, it sends the pending
# ACK at once.
#
# > **Myth vs measurement.** "TCP_QUICKACK disables delayed ACKs." Measured: set once after
# > accept, it changed nothing (median ~44 ms, asserted above). The option only leaves
# > delayed-ACK mode until the kernel's next decision; as soon as the server replies quickly
# > the connection counts as interactive again and ACKs are delayed. It must be set again
# > after every `recv()` to help (`man 7 tcp`: "not permanent").
# >
# > **Myth vs measurement.** "Nagle combined with delayed ACK can introduce ~200–500 ms
# > delays." Measured on Linux: 40 ms + about one tick, ~44 ms (section 1). Linux's longest
# > delayed-ACK timeout is 200 ms (`TCP_DELACK_MAX` = HZ/5 in `include/net/tcp.h`), but this
# > interactive connection used the 40 ms minimum, as TCP_INFO's `ato` showed.
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
nagle_trace.check(big)
mss = big.data["mss"]
later_big = tl_big.iloc[1:]
assert mss == 1448 and (later_big["segments"] == 3).all(), "header, one full segment, the tail"
assert (later_big["body after (ms)"] <= later_big["server ACK after (ms)"]).all(), "the full segment leaves before any ACK"
assert (later_big["body ends after (ms)"] >= later_big["server ACK after (ms)"]).all(), \
    "the tail leaves only after the server's ACK"
assert (later_big["server ACK after (ms)"] < 5).all(), "that ACK comes at once, not after 40 ms"
assert later_big["reply after (ms)"].median() < 5 and (tl_big["reply after (ms)"] < STALL_MS).all(), \
    "no request waits"
print(f"MSS {mss} B: a 2000-byte body goes out as {mss} + {2000 - mss} bytes; server ACK after "
      f"{later_big['server ACK after (ms)'].median():.3f} ms (median), tail after "
      f"{later_big['body ends after (ms)'].median():.3f} ms")

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
assert r.data["median_ms"] < 4, "TCP_NODELAY: the 1000-byte body leaves at once"

# %%
r2 = panel.update(nodelay=False)
panel.show()
assert 30 <= r2.data["median_ms"] <= 60, "Nagle on: 1000 bytes is less than one MSS, so it waits"
assert r2.data["median_ms"] / r.data["median_ms"] >= 10

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
check(... if answer_3 is ... else answer_3 == (exact.data["median_ms"] > STALL_MS),
      f"right: the median was {exact.data['median_ms']:.2f} ms; Nagle never holds a full-sized segment",
      "compare the body with the MSS printed in section 1");

# %% [markdown]
# ## Summary
# * Write, write, read on one connection: the second small write waits for the ACK of the
#   first (Nagle), and the receiver delays that ACK 40 ms + one tick. ~44 ms per request,
#   except the first (quick-ACK mode of a new connection).
# * Fixes: one write (or `sendmsg`/`writev`), `TCP_CORK` … uncork, `TCP_NODELAY`, or
#   `TCP_QUICKACK` re-set after every `recv()`. Set once, `TCP_QUICKACK` does nothing lasting.
# * Segments of a full MSS are never held: large bodies do not stall.
#
# **What's next:** [02_04 Streams and framing](02_04-streams-and-framing.ipynb): TCP keeps no
# message boundaries at all.

# %%
assert nothing_left_behind() == []
