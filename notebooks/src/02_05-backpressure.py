# %% [markdown]
# # 02_05 · Backpressure
#
# **Objectives**
# 1. Fill a connection whose reader has stopped, and see where the bytes wait: the
#    sender's send queue and the receiver's receive queue.
# 2. See the three faces of a full socket: a non-blocking `send` raises `EAGAIN`, a
#    blocking `send` waits, and asyncio's `drain()` waits.
# 3. Measure a producer's memory with and without backpressure, in a separate process.
# 4. Read the buffers' occupancy over time from the kernel (`SIOCOUTQ`, `FIONREAD`) and
#    from asyncio.
#
# **Prerequisites:** [02_01 Send and receive buffers](02_01-send-and-receive-buffers.ipynb),
# [02_02 Flow control and the zero window](02_02-flow-control-and-zero-window.ipynb).
# **Time:** 30 minutes.
#
# Nothing here needs privileges: plain sockets, `ioctl`s, TCP_INFO and `/proc`. Every cell
# runs live, on this machine, now.

# %%
import pandas as pd
from helpers.notebook import mode_banner, nothing_left_behind
from helpers.experiments.backpressure import (send_blocks, producer_memory, occupancy_plot, summary,
                                              render, PRODUCERS, MB)
from helpers.checks import check, check_value
from helpers.widgets import Panel

mode_banner(needs=())

# %% [markdown]
# ## 1 · A reader that stops: where do the bytes go?
#
# A consumer accepts a connection and does not read. The producer's socket is
# **non-blocking**: it calls `send()` with 64 KB chunks until the kernel refuses. When
# `send()` fails, the producer waits up to 0.3 s for `select()` to call the socket
# writable again, and stops when it does not.
#
# **Predict:** with the kernel's default buffers on `lo`, how many bytes will `send()`
# accept before it fails: about 64 KB, about 1 MB, or several MB?

# %%
full = send_blocks()
d = full.data
print(f"send() accepted {d['queued']:,} bytes in {d['send_calls']} calls "
      f"(the last one took only {d['send_sizes'][-1]:,}), then raised BlockingIOError "
      f"(EAGAIN) {d['eagain']} time(s); select() says writable: {d['writable_when_full']}")

# %%
send_blocks.check(full)       # the chapter's claims on this run; each assert names its claim
assert d["queued"] > 1 * MB, "on lo the default send buffer grows to megabytes"
assert d["send_sizes"][-1] <= d["send_sizes"][0], "the last send() takes what still fits"

# %% [markdown]
# **Observe.** The last successful `send()` returned *less* than it was given: a
# non-blocking send is partial when the buffer has room for only part of it. The next
# one raised `BlockingIOError`, Python's name for `EAGAIN`/`EWOULDBLOCK`: "try again
# later". Nothing was lost; every accepted byte is queued in the kernel. Where?

# %%
where = pd.DataFrame([
    {"queue": "producer's send queue (SIOCOUTQ)", "bytes": d["outq"]},
    {"queue": "consumer's receive queue (FIONREAD)", "bytes": d["inq"]},
    {"queue": "sum", "bytes": d["outq"] + d["inq"]},
    {"queue": "accepted by send()", "bytes": d["queued"]},
]).set_index("queue")
where

# %%
assert d["outq"] + d["inq"] == d["queued"]
assert d["outq"] > d["inq"], "with the default buffers most bytes wait on the sender's side"
ss_view = pd.DataFrame(d["ss"]).set_index("side")
ss_view

# %% [markdown]
# **Explain.** The receiver's queue filled first, up to its receive buffer (`skmem` `rb`,
# printed below); then its advertised window fell to zero (chapter 02_02) and the rest
# stayed in the sender's send queue, until that reached its own limit (`tb`, the send
# buffer, which Linux grows up to `net.ipv4.tcp_wmem[2]` = 4 MB). `ss` agrees: `Send-Q` of
# the producer and `Recv-Q` of the consumer are the two `ioctl` numbers above.

# %%
from helpers.kernel import sysctl
wmem_max = int(str(sysctl("net.ipv4.tcp_wmem")).split()[2])
assert ss_view.loc["producer", "send_q"] == d["outq"] and ss_view.loc["consumer", "recv_q"] == d["inq"]
assert d["inq"] <= ss_view.loc["consumer", "skmem_rb"], "the receive queue stops at the receive buffer"
assert ss_view.loc["producer", "skmem_tb"] == wmem_max, "the send buffer grew to tcp_wmem[2]"
print(f"receive buffer {ss_view.loc['consumer', 'skmem_rb']:,} bytes; send buffer grew to "
      f"{ss_view.loc['producer', 'skmem_tb']:,} = tcp_wmem[2]")

# %% [markdown]
# TCP_INFO of the producer tells the same story from the sender's side:

# %%
ti = d["tcp_info"]
print(f"snd_wnd (the peer's window) = {ti['snd_wnd']}, notsent_bytes = {ti['notsent_bytes']:,}, "
      f"rwnd_limited = {ti['rwnd_limited'] / 1e3:.0f} ms (time blocked by the receiver's window)")
assert ti["snd_wnd"] < ti["snd_mss"] and ti["notsent_bytes"] > 0 and ti["rwnd_limited"] > 0

# %% [markdown]
# ## 2 · A blocking send waits
#
# In the same run, the producer then switched its socket back to **blocking** and called
# `sendall()` with 256 KB more, in a thread, while the consumer kept not reading for
# 0.3 s. Then the consumer read everything.
#
# **Predict:** when does `sendall()` return: at once, after about 0.3 s, or never?

# %%
print(f"sendall blocked for {d['blocked_s']:.3f} s; still blocked during the pause: "
      f"{d['blocked_during_pause']}; returned {d['returned_after_read_s'] * 1e3:.1f} ms after the "
      f"consumer started reading; the consumer received {d['received']:,} bytes")
assert d["blocked_during_pause"] and 0.8 * d["pause"] <= d["blocked_s"] < d["pause"] + 1.0
assert d["returned_after_read_s"] < 1.0 and d["received"] == d["queued"] + d["extra"]

# %% [markdown]
# **Explain.** A blocking `send()` sleeps inside the kernel until the socket has room
# (for `sendall`, repeatedly, until all of it is queued). That sleep *is* backpressure:
# a slow reader slows the writer down, through the window and the send buffer, without
# any code in the application. A non-blocking socket gives the same signal as an error
# (`EAGAIN`) and leaves the waiting to the program (`select`, `poll`, `epoll`: chapter
# 04_01).
#
# A smaller send buffer moves the point where `send()` fails, not the principle:

# %%
small = send_blocks(sndbuf=16384)
send_blocks.check(small)
print(f"SO_SNDBUF 16384 (the kernel doubles it): send() accepted {small.data['queued']:,} bytes, "
      f"{small.data['outq']:,} waiting in the send queue, {small.data['inq']:,} in the receive queue")
assert small.data["queued"] < d["queued"] and small.data["outq"] < d["outq"]

# %% [markdown]
# ## 3 · asyncio: `write()` never blocks, `drain()` does
#
# `StreamWriter.write()` never waits: when the socket is full it appends to a buffer in
# the **application's memory**. Backpressure reaches the producer only if it
# `await writer.drain()`, which waits while that buffer is above its high-water mark
# (64 KB by default) until it falls below the low-water mark (16 KB).
#
# The experiment runs the producer in a **fresh child process** (so we measure its memory,
# not the Jupyter kernel's) and sends 16 MB to a consumer here that reads 32 MB/s. Both
# sides sample their queues every few milliseconds; the child also samples its resident
# memory (RSS). The kernel buffers are fixed at 64 KB each (doubled to 128 KB) so that the
# picture is easy to read. Three producers:
#
# * `asyncio + drain`: `writer.write(chunk)` then `await writer.drain()`;
# * `asyncio, no drain`: `writer.write(chunk)` in a loop, drain never awaited;
# * `blocking sendall`: plain `sock.sendall(chunk)`.
#
# **Predict:** for each, how long does the *producer* take to hand over 16 MB, and how much
# does its memory grow?

# %%
runs = [producer_memory(producer=p, total_mb=16, rate_mb_s=32) for p in PRODUCERS]
for r in runs:
    producer_memory.check(r)
summary(runs)

# %%
fig = occupancy_plot(runs)

# %% [markdown]
# **Observe.** With `drain()` (left) and with a blocking send (right), the producer
# finishes when the consumer does, about 16 MB ÷ 32 MB/s = 0.5 s, and the unread bytes
# never exceed a few hundred KB: asyncio's buffer stays below its high-water mark plus one
# write, and the kernel queues stay at their limits. Without `drain()` (middle) the
# producer "finishes" almost at once and the data piles up in asyncio's buffer, in the
# producer's memory, and drains only at the consumer's pace.

# %%
by = {r.data["producer"]: r.data for r in runs}
paced = 16 / 32
growth = {p: (x["peak_rss"] - x["rss_before"]) / MB for p, x in by.items()}
nd, dr, bl = by["asyncio, no drain"], by["asyncio + drain"], by["blocking sendall"]
assert nd["produce_s"] < 0.2 * paced, "without drain the producer runs ahead"
assert dr["produce_s"] > 0.7 * paced and bl["produce_s"] > 0.7 * paced, "with backpressure it is paced"
assert all(abs(x["consumer_s"] - paced) < 0.5 for x in by.values()), "the consumer's pace is the same for all"
assert dr["peak_app_buffer"] <= dr["limits"][1] + dr["chunk"], "drain keeps the buffer near the high-water mark"
assert nd["peak_app_buffer"] > 0.8 * 16 * MB, "without drain almost everything waits in asyncio's buffer"
assert growth["asyncio, no drain"] * MB >= 0.9 * nd["peak_app_buffer"], "and that buffer is the producer's memory"
assert growth["asyncio + drain"] < 4 and growth["blocking sendall"] < 4, "backpressure keeps memory bounded"
print({p: f"+{g:.1f} MB" for p, g in growth.items()})

# %% [markdown]
# **Explain.** The kernel applies backpressure to the *socket* in every case: its queues
# never grew past their limits. What differs is whether the *producer* listens. A
# blocking send and `drain()` pass the kernel's "full" on to the code that makes the data;
# `write()` without `drain()` converts it into memory. With a producer that never stops
# (a log shipper, a proxy in front of a slow client) that memory grows until the process
# is killed.
#
# > **Myth vs measurement.** The source notes say "if you don't read fast enough, you'll
# > inadvertently throttle the sender". Measured: only a sender that *honours*
# > backpressure is throttled. The asyncio producer without `drain()` handed over 16 MB
# > in a few milliseconds while the reader needed 0.5 s, and its memory grew by about the
# > size of the data (asserted above). The kernel throttles the socket; the application has to
# > let itself be throttled.
#
# ## 4 · Your turn
#
# Pick the producer, the amount of data and the consumer's speed. **Predict** the
# producer's time and memory growth before you press **Run**: the experiment runs live
# (about 1 s).

# %%
panel = Panel(producer_memory, producer_memory.params, render=render, title="producer vs slow consumer")
panel

# %% [markdown]
# nbval cannot press buttons, so the next cell calls the panel's callback the way the
# button does, and asserts on what it returns.

# %%
fast = panel.update(producer="asyncio, no drain", total_mb=8, rate_mb_s=64)
panel.show()   # what the panel shows, also kept in the saved notebook

# %%
producer_memory.check(fast)
assert fast.data["peak_app_buffer"] > 0.8 * 8 * MB
assert fast.data["peak_rss"] - fast.data["rss_before"] < 2 * nd["peak_rss"] - 2 * nd["rss_before"], \
    "half the data, less memory growth"

# %% [markdown]
# ## Check your understanding
#
# **1.** A non-blocking `send()` on a connection whose peer has stopped reading returns
# `4000` although you passed 65536 bytes. What happens on the next `send()` if the peer
# still does not read? Answer `"EAGAIN"`, `"blocks"` or `"sends"`.

# %%
answer_1 = ...  # a string

# %%
check_value(answer_1, "EAGAIN", name="next non-blocking send",
            hint="a non-blocking socket never sleeps; see section 1");

# %% [markdown]
# **2.** With `drain()`, how long (in seconds) does the producer need to hand 16 MB to a
# consumer that reads 8 MB/s? Predict, then run the cell: the checker compares with a live
# run (within 25 %).

# %%
answer_2 = ...  # seconds

# %%
slow = producer_memory(producer="asyncio + drain", total_mb=16, rate_mb_s=8)
producer_memory.check(slow)
check_value(answer_2, slow.data["produce_s"], rel=0.25, name="producer time with drain",
            hint="with backpressure the producer moves at the consumer's pace");

# %% [markdown]
# **3.** Is the following true: "without `drain()` the kernel's send queue grows without
# bound"? Check it against the runs of section 3 (`summary(runs)`).

# %%
answer_3 = ...  # True or False

# %%
kernel_bounded = nd["peak_outq"] <= 2 * nd["sndbuf_got"]
check_value(answer_3, not kernel_bounded, name="the send queue grows without bound",
            hint="compare `peak send queue` of the three producers: what grew was asyncio's buffer");

# %% [markdown]
# ## Summary
# * A full socket shows up as `EAGAIN` (non-blocking), as a `send()` that sleeps
#   (blocking), or as `await writer.drain()` that waits (asyncio).
# * The bytes already accepted wait in the sender's send queue and the receiver's receive
#   queue; `SIOCOUTQ`, `FIONREAD`, `ss` and TCP_INFO show them.
# * The kernel bounds its own queues. A producer's memory is bounded only if it honours
#   backpressure; asyncio's `write()` without `drain()` buffers everything in user space.
#
# **What's next:** [02_06 Zero-copy: sendfile](02_06-zero-copy-sendfile.ipynb): the
# cost of moving bytes into those queues.

# %%
assert nothing_left_behind() == []
