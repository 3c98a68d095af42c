# %% [markdown]
# # 02_03 · Nagle's algorithm and delayed ACKs
#
# **Objectives**
# 1. Measure a request/response protocol that writes a header, then a body, then reads the
#    reply, and find the ~44 ms it loses on every request but the first.
# 2. Read in a capture *which* packet waits and what it waits for.
# 3. Remove the stall four ways (TCP_NODELAY, TCP_CORK, one write, TCP_QUICKACK after every
#    recv) and see one popular fix that does not work (TCP_QUICKACK set once).
# 4. See why a body of at least one MSS never stalls.
#
# **Prerequisites:** [02_01 Send and receive buffers](02_01-send-and-receive-buffers.ipynb).
# **Time:** 30 minutes.

# %%
import pandas as pd
from helpers.notebook import mode_banner, nothing_left_behind
from helpers.experiments.nagle import (nagle, nagle_trace, compare, summary, render, request_timeline,
                                       request_segments, stalled_request, SETTINGS, STALL_MS)
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
# **Predict:** how long does one request take?

# %%
default = nagle()
default

# %%
lat = pd.Series(default.data["latency_ms"], name="latency (ms)", index=pd.RangeIndex(1, default.data["requests"] + 1, name="request"))
print(f"first request {default.data['first_ms']:.3f} ms; median of the rest {default.data['median_ms']:.1f} ms; "
      f"{default.data['stalled']} of {default.data['requests']} took more than {STALL_MS:g} ms")
lat.round(3).to_frame().T

# %%
nagle.check(default)      # the chapter's claims on this run
assert default.data["first_ms"] < STALL_MS, "the first request does not wait"
assert 30 <= default.data["median_ms"] <= 60, "every later request waits about 44 ms"
assert default.data["stalled"] >= 0.7 * (default.data["requests"] - 1)

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
assert ((later["rest of body after (ms)"] - later["server ACK after (ms)"]).abs() < 5).mean() >= 0.75, \
    "the body leaves the moment that ACK arrives"
print(f"header → server's ACK: median {later['server ACK after (ms)'].median():.1f} ms; the body follows "
      f"{(later['rest of body after (ms)'] - later['server ACK after (ms)']).median():.2f} ms after that ACK")

# %% [markdown]
# The ladder of the slowest request, with the pause drawn as a break:

# %%
k = stalled_request(trace)
fig = plots.ladder(request_segments(trace, k), title=f"request {k}: header, ~40 ms of nothing, ACK, body, reply")

# %% [markdown]
# **Explain.** Two rules meet:
#
# * **Nagle's algorithm** (client): a segment smaller than the MSS is not sent while earlier
#   data is still unacknowledged. The header went out (nothing was in flight); the body is
#   small and the header is unacknowledged, so the body waits for an ACK.
# * **Delayed ACK** (server): a receiver does not acknowledge at once; it waits, hoping to
#   put the ACK on data of its own. Once a connection looks interactive (the server
#   answered a request quickly), Linux delays ACKs for at least 40 ms (`TCP_DELACK_MIN`),
#   and the timer fires on a 4 ms tick here (HZ=250), hence ~44 ms.
#
# The server cannot reply before it has the body, so it has nothing to put its ACK on: the
# delayed-ACK timer ends the deadlock. The first request was fast because a new connection
# starts in quick-ACK mode (every segment acknowledged at once) and is not yet "interactive".
#
# The kernel's own view agrees. TCP_INFO of the server's socket reports `ato`, the
# delayed-ACK timeout, and the counter `TcpExtDelayedACKs` counts ACKs sent by that timer
# (a host-wide counter, so other traffic can only add to it):

# %%
ato = default.data["server_tcp_info"]["ato"]
print(f"server TCP_INFO ato = {ato} µs; TcpExtDelayedACKs rose by {default.data['delayed_acks']} "
      f"during {default.data['stalled']} stalled requests")
assert ato == 40_000, "the delayed-ACK timeout is 40 ms (TCP_DELACK_MIN)"
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

# %%
fig = plots.latency_hist({name: r.data["latency_ms"] for name, r in runs.items()},
                         title="Request latency per setting (log scale): two modes, µs and ~44 ms")

# %% [markdown]
# **Explain.** `TCP_NODELAY` lets the small body go at once; `TCP_CORK` (and a single write,
# or `sendmsg`/`writev` with both buffers) makes header and body *one* segment, so nothing
# small waits behind anything. Of the two, the single write is the better fix: it costs one
# system call instead of three. `TCP_QUICKACK` works on the other side: set after each
# `recv()`, it sends the pending ACK at once.
#
# > **Myth vs measurement.** "TCP_QUICKACK disables delayed ACKs." Measured: set once after
# > accept, it changed nothing (median ~44 ms, asserted above). The option only leaves
# > delayed-ACK mode until the kernel's next decision; as soon as the server replies quickly
# > the connection counts as interactive again and ACKs are delayed. It must be set again
# > after every `recv()` to help (`man 7 tcp`: "not permanent").
# >
# > **Myth vs measurement.** "Nagle combined with delayed ACK can introduce ~200–500 ms
# > delays." Measured on Linux: 40 ms + one tick, ~44 ms (section 1). 200 ms is the delayed-ACK
# > timer of other systems (Windows); Linux's maximum delayed-ACK timeout is 200 ms, but an
# > interactive connection uses the 40 ms minimum, as TCP_INFO's `ato` showed.
#
# ## 4 · A body of at least one MSS never stalls
#
# **Predict:** with a 2000-byte body the second write is larger than one MSS. Does it wait?

# %%
big = nagle_trace(setting="body_2000")
tl_big = request_timeline(big)
tl_big.round(2)

# %%
nagle_trace.check(big)
mss = big.data["mss"]
assert mss == 1448 and (tl_big["segments"].iloc[1:] == 3).all(), "header, one full segment, the rest"
assert tl_big["reply after (ms)"].iloc[1:].median() < 5 and (tl_big["reply after (ms)"] < STALL_MS).all(), \
    "no request waits"
print(f"MSS {mss} B: a 2000-byte body goes out as {mss} + {2000 - mss} bytes")

# %% [markdown]
# **Explain.** Nagle never holds a *full-sized* segment, so the first 1448 bytes of the body
# leave at once. And a receiver acknowledges at once when more than one full segment's worth
# of data is unacknowledged. That ACK releases the 552-byte tail. Small requests are the ones
# that stall; that is why the bug shows in RPC protocols and not in file transfers.
#
# ## 5 · Your turn
#
# The panel runs the same measurement with any combination: Nagle, cork, quick-ACK, the
# write pattern and the body size (live for everyone: it captures nothing). The numbers
# under the plot include the server's TCP_INFO `ato` and the `TcpExtDelayedACKs` delta.
#
# **Predict** before you press: `TCP_NODELAY` on *and* two writes with a 1000-byte body?

# %%
panel = Panel(nagle, nagle.params, render=render, title="Nagle and delayed ACK")
panel

# %% [markdown]
# nbval cannot press buttons; the next cell calls the panel's callback as the button does.

# %%
r = panel.update(nodelay=False, cork=False, quickack="every recv", pattern="two writes", body=1000)
panel.show()   # what the panel shows, also kept in the saved notebook
assert not r.data["expect_stall"] and r.data["median_ms"] < 4
r2 = panel.update(quickack="off", body=1000)
assert r2.data["expect_stall"] and 30 <= r2.data["median_ms"] <= 60, "1000 bytes is less than one MSS: it stalls"

# %% [markdown]
# ## Check your understanding
#
# **1.** Which settings of section 3 still stall? Give their names as a set, e.g.
# `{"default", "cork"}`.

# %%
answer_1 = ...  # a set of setting names

# %%
check_value(answer_1, {n for n, r in runs.items() if r.data["median_ms"] > STALL_MS}, name="settings that stall",
            hint="look at the median column of the table in section 3");

# %% [markdown]
# **2.** From the server's TCP_INFO above: what is the minimum delayed-ACK timeout, in
# milliseconds?

# %%
answer_2 = ...  # a number of ms

# %%
check_value(answer_2, default.data["server_tcp_info"]["ato"] / 1000, name="delayed-ACK timeout (ms)", tol=0.5,
            hint="TCP_INFO reports ato in microseconds");

# %% [markdown]
# **3.** Will a request with a body of exactly 1448 bytes (one full segment) stall, with
# two writes and no options? Answer `True` or `False`, then check it live.

# %%
answer_3 = ...  # True or False

# %%
exact = nagle(body=1448)
check(... if answer_3 is ... else answer_3 == (exact.data["median_ms"] > STALL_MS),
      f"right: the median was {exact.data['median_ms']:.2f} ms; Nagle never holds a full-sized segment",
      "a full-sized segment is never held by Nagle, and this body is exactly one MSS");

# %% [markdown]
# ## Summary
# * Write, write, read on one connection: the second small write waits for the ACK of the
#   first (Nagle), and the receiver delays that ACK 40 ms + one tick. ~44 ms per request,
#   except the first (quick-ACK mode of a new connection).
# * Fixes: one write (or `sendmsg`/`writev`), `TCP_CORK` … uncork, `TCP_NODELAY`, or
#   `TCP_QUICKACK` re-set after every `recv()`. Set once, `TCP_QUICKACK` does nothing lasting.
# * Segments of a full MSS are never held: large bodies do not stall.
#
# **What's next:** 02_04 streams and framing: TCP keeps no message boundaries at all.

# %%
assert nothing_left_behind() == []
