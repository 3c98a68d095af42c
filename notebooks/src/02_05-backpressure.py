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
                                              render, peak_moment, sndbuf_after_connect,
                                              PRODUCERS, MB, CHUNK, KERNEL_BUF)
from helpers.checks import check_value
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
assert d["send_sizes"][-1] < CHUNK, "the last successful send() took only part of its chunk"

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
# **Explain.** The receiver's queue filled first, up to its receive buffer (`skmem` `rb`);
# then its advertised window fell to zero (chapter 02_02) and the rest stayed in the
# sender's send queue, until the memory it takes (`w`: the bytes plus the kernel's
# bookkeeping for each packet buffer) came close to the send buffer, `tb`. `ss` agrees
# with the `ioctl`s: `Send-Q` of the producer and `Recv-Q` of the consumer are the two
# numbers above.
#
# Two details in the table. The consumer's `r`, the memory charged for its receive queue,
# can end a little *above* `rb`: it counts the bookkeeping too, and the kernel compares
# with the limit before it adds a packet, not after. The bytes themselves (`Recv-Q`) stay
# below `rb`. And the consumer, which never sent a byte, has the same 4 MB send buffer
# as the producer: nothing grew it by filling.

# %%
from helpers.kernel import sysctl
wmem = [int(x) for x in str(sysctl("net.ipv4.tcp_wmem")).split()]
prod_ss, cons_ss = ss_view.loc["producer"], ss_view.loc["consumer"]
assert prod_ss["send_q"] == d["outq"] and cons_ss["recv_q"] == d["inq"]
assert d["inq"] <= cons_ss["skmem_rb"], "the bytes in the receive queue stay below the receive buffer"
assert abs(cons_ss["skmem_r"] - cons_ss["skmem_rb"]) < 0.05 * cons_ss["skmem_rb"], "r is about rb"
assert 0.8 * prod_ss["skmem_tb"] <= prod_ss["skmem_w"] <= prod_ss["skmem_tb"] + d["gso_max_size"], \
    "the send queue's memory came close to the send buffer"
assert prod_ss["skmem_tb"] == cons_ss["skmem_tb"] == d["cons_sndbuf"] == wmem[2], \
    "both ends have a 4 MB send buffer (tcp_wmem[2]), the consumer too"
print(f"receive buffer rb {cons_ss['skmem_rb']:,} bytes, charged r {cons_ss['skmem_r']:,}, bytes queued "
      f"{d['inq']:,}; send buffer tb {prod_ss['skmem_tb']:,} on both ends")

# %% [markdown]
# So when did the send buffer become 4 MB? Read `SO_SNDBUF` before `connect()` and right
# after it, before any data; then again on a connection whose segments are cut to
# 1460 bytes (`TCP_MAXSEG`, the size on an Ethernet path) instead of lo's 64 KB.

# %%
lo_conn = sndbuf_after_connect()
eth_like = sndbuf_after_connect(mss=1460)
pd.DataFrame([lo_conn, eth_like]).set_index("mss_asked")

# %%
assert lo_conn["before_connect"] == wmem[1], "before connect(): tcp_wmem[1]"
assert lo_conn["after_connect"] == lo_conn["accepted_side"] == d["sndbuf_got"] == wmem[2], \
    "right after connect(), before a byte: tcp_wmem[2] on both sides"
assert wmem[1] < eth_like["after_connect"] < wmem[2], "smaller segments, a smaller send buffer"

# %% [markdown]
# Linux sizes a connection's send buffer when the connection is established, from the
# segment size and the initial congestion window (`tcp_sndbuf_expand()` in
# `net/ipv4/tcp_input.c`), capped at `net.ipv4.tcp_wmem[2]`. On lo a segment carries
# up to 64 KB, so every connection starts at the 4 MB cap; with 1460-byte segments it
# starts smaller. The filling in section 1 did not change it.

# %% [markdown]
# TCP_INFO of the producer tells the same story from the sender's side:

# %%
ti = d["tcp_info"]
print(f"snd_wnd (the peer's window) = {ti['snd_wnd']}, notsent_bytes = {ti['notsent_bytes']:,}, "
      f"rwnd_limited = {ti['rwnd_limited'] / 1e3:.0f} ms (time blocked by the receiver's window)")
assert ti["snd_wnd"] < ti["snd_mss"] and ti["notsent_bytes"] > 0 and ti["rwnd_limited"] > 0
assert ti["notsent_bytes"] == d["outq"], "every byte in the send queue is still unsent"

# %% [markdown]
# `notsent_bytes` counts the bytes in the send queue that have not been sent even once;
# the rest of `SIOCOUTQ` would be sent but not yet acknowledged. Here the two are equal:
# with the window closed, all of the send queue is waiting for its first transmission.

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
# A smaller send buffer moves the point where `send()` fails, not the principle. Setting
# `SO_SNDBUF` also switches off the automatic sizing; `getsockopt` reads back what the
# kernel set:

# %%
small = send_blocks(sndbuf=16384)
send_blocks.check(small)
sd = small.data
print(f"SO_SNDBUF 16384, read back {sd['sndbuf_got']:,}: send() accepted {sd['queued']:,} bytes, "
      f"{sd['outq']:,} waiting in the send queue, {sd['inq']:,} in the receive queue")
assert sd["sndbuf_got"] == 2 * 16384, "the kernel doubles SO_SNDBUF (socket(7): room for its bookkeeping)"
assert sd["queued"] < d["queued"] and sd["outq"] < d["outq"]

# %% [markdown]
# **Observe.** The send queue holds *more* than the 32,768-byte send buffer. The limit is
# not a hard cap on the bytes: `tcp_sendmsg()` checks it only before it starts a new
# packet buffer (an skb), and then fills that buffer up to the largest packet the device
# takes in one piece (`gso_max_size`, 64 KB on lo). So a send queue can exceed `SO_SNDBUF`
# by up to one such buffer:

# %%
print(f"send queue {sd['outq']:,} = send buffer {sd['sndbuf_got']:,} + {sd['outq'] - sd['sndbuf_got']:,}; "
      f"one packet buffer on lo: up to {sd['gso_max_size']:,}")
assert sd["sndbuf_got"] < sd["outq"] <= sd["sndbuf_got"] + sd["gso_max_size"]

# %% [markdown]
# ## 3 · asyncio: `write()` never blocks, `drain()` does
#
# `StreamWriter.write()` never waits: when the socket is full it appends to a buffer in
# the **application's memory**. Backpressure reaches the producer only if it
# `await writer.drain()`, which waits while that buffer is above its high-water mark
# until it falls below the low-water mark. The Python documentation calls the defaults
# "implementation-specific" (`WriteTransport.set_write_buffer_limits`); CPython's
# asyncio uses 64 KB and a quarter of that, 16 KB (the run below reads them back with
# `get_write_buffer_limits()`).
#
# The experiment runs the producer in a **fresh child process** (so we measure its memory,
# not the Jupyter kernel's) and sends 16 MB to a consumer here that reads 32 MB/s. Both
# sides sample their queues every few milliseconds; the child also samples its resident
# memory (RSS). `SO_SNDBUF` and `SO_RCVBUF` are set to 64 KB (the kernel doubles them to
# 128 KB) so that the picture is easy to read. Three producers:
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
by = {r.data["producer"]: r.data for r in runs}
nd, dr, bl = by["asyncio, no drain"], by["asyncio + drain"], by["blocking sendall"]
assert dr["limits"] == [16384, 65536], "asyncio's default (low, high) write-buffer limits"
assert all(x["sndbuf_got"] == x["rcvbuf_got"] == 2 * KERNEL_BUF for x in by.values()), "read back: 128 KB"

# %%
fig = occupancy_plot(runs)

# %% [markdown]
# **Observe.** With `drain()` (left) and with a blocking send (right), the producer
# finishes when the consumer does, about 16 MB ÷ 32 MB/s = 0.5 s, and the unread bytes
# never exceed a few hundred KB: asyncio's buffer stays below its high-water mark plus one
# write, the receive queue below its 128 KB buffer, and the send queue below its 128 KB
# buffer plus one packet buffer (section 2): up to 192 KB. Without `drain()` (middle) the
# producer "finishes" while most of the data has not even reached the kernel: it piles up
# in asyncio's buffer, in the producer's memory, and drains only at the consumer's pace.

# %%
paced = 16 / 32
growth = {p: (x["peak_rss"] - x["rss_before"]) / MB for p, x in by.items()}
print(f"without drain: producer done after {nd['produce_s'] * 1e3:.0f} ms with "
      f"{nd['app_at_produced'] / MB:.1f} of 16 MB still in its own buffer")
assert nd["app_at_produced"] > 0.5 * 16 * MB, "without drain the producer runs ahead"
print(f"with drain / blocking: producer done when the consumer had read all but "
      f"{dr['unread_at_produced'] / 1024:.0f} / {bl['unread_at_produced'] / 1024:.0f} KB")
assert dr["unread_at_produced"] < MB and bl["unread_at_produced"] < MB, "with backpressure it is paced"
# the consumer starts its clock before the child is up, and a busy machine slows it: a wide band
assert all(0.5 * paced < x["consumer_s"] < paced + 1.0 for x in by.values()), "the consumer's pace is the same"
assert all(x["peak_outq"] <= x["sndbuf_got"] + x["gso_max_size"] for x in by.values()), "send queue bounded"
assert all(x["peak_inq"] <= x["rcvbuf_got"] for x in by.values()), "receive queue bounded"
assert dr["peak_app_buffer"] <= dr["limits"][1] + dr["chunk"], "drain keeps the buffer near the high-water mark"
assert nd["peak_app_buffer"] > 0.8 * 16 * MB, "without drain almost everything waits in asyncio's buffer"
assert growth["asyncio, no drain"] * MB >= 0.9 * nd["peak_app_buffer"], "and that buffer is the producer's memory"
assert growth["asyncio + drain"] < 4 and growth["blocking sendall"] < 4, "backpressure keeps memory bounded"
print({p: f"+{g:.1f} MB" for p, g in growth.items()})

# %% [markdown]
# The no-drain producer's peak (`VmHWM`, the dashed line) is about half as much again as
# the data, and above every RSS sample. When did it happen? Find the two samples around
# the moment `VmHWM` reached its peak:

# %%
pm = peak_moment(runs[PRODUCERS.index("asyncio, no drain")])
print(f"RSS sampled: at most +{pm['rss_growth_sampled'] / MB:.1f} MB; peak (VmHWM) +{pm['hwm_growth'] / MB:.1f} MB, "
      f"reached between {pm['t_before'] * 1e3:.0f} and {pm['t'] * 1e3:.0f} ms, while asyncio's buffer went from "
      f"{pm['app_before'] / MB:.1f} to {pm['app_at'] / MB:.1f} MB (its peak: {pm['peak_app_buffer'] / MB:.1f} MB)")
assert pm["hwm_growth"] > pm["rss_growth_sampled"] + MB, "the peak is above every RSS sample"
assert pm["app_at"] < 0.6 * pm["peak_app_buffer"] < 1.2 * pm["app_before"], \
    "the peak comes when the buffer drains below about half of its peak"
assert 1.2 * 16 < growth["asyncio, no drain"] < 1.8 * 16, "the peak is about 1.5 times the 16 MB of data"

# %% [markdown]
# asyncio (in this Python, 3.11) keeps unsent data in one `bytearray` and deletes what
# the socket took from its front. When a `bytearray` falls below half of its allocation,
# CPython moves the rest into a new, smaller allocation and frees the old one only afterwards
# (`PyByteArray_Resize` in `Objects/bytearrayobject.c`): for a moment both exist, about
# 1.5 times the data. That moment falls between two RSS samples (every 4 ms), so they
# miss it; `VmHWM`, the kernel's record of the highest RSS, does not.

# %% [markdown]
# **Explain.** The kernel applies backpressure to the *socket* in every case: its queues
# stayed within their buffers (plus one packet buffer for the send queue). What differs
# is whether the *producer* listens. A
# blocking send and `drain()` pass the kernel's "full" on to the code that makes the data;
# `write()` without `drain()` converts it into memory. With a producer that never stops
# (a log shipper, a proxy in front of a slow client) that memory grows until the process
# is killed.
#
# > **Myth vs measurement.** The source notes say "if you don't read fast enough, you'll
# > inadvertently throttle the sender". A half-truth. TCP's flow control does throttle
# > the sending *socket*: the window closes and the send queue fills (section 1). Whether
# > the sending *program* slows down depends on the program. The asyncio producer without
# > `drain()` was done while most of its 16 MB were still in its own buffer, and its
# > memory grew by more than the size of the data (asserted above). The kernel
# > throttles the socket; the application has to let itself be throttled.
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
ratio = (fast.data["peak_rss"] - fast.data["rss_before"]) / (nd["peak_rss"] - nd["rss_before"])
print(f"memory growth for 8 MB / for 16 MB = {ratio:.2f}")
assert 0.3 < ratio < 0.8, "half the data, about half the memory growth"

# %% [markdown]
# ## Check your understanding
#
# **1.** A non-blocking `send()` on a connection whose peer has stopped reading (its
# window is already zero) returns `4000` although you passed 65536 bytes. What happens
# on the next `send()` if the peer still does not read? Answer `"EAGAIN"`, `"blocks"` or
# `"sends"`.

# %%
answer_1 = ...  # a string

# %%
check_value(answer_1, "EAGAIN", name="next non-blocking send",
            hint="look at what the run in section 1 did right after its last, partial send()");

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
            hint="in `summary(runs)`, compare the drain producer's time with the consumer's");

# %% [markdown]
# **3.** The producer without `drain()` sends **32 MB** instead of 16 MB (to a consumer
# reading 64 MB/s). Its peak *kernel send queue* (`SIOCOUTQ`) is then: `"about the same"`,
# `"about double"` or `"larger still"` compared with the 16 MB run? The cell runs it.

# %%
answer_3 = ...  # a string

# %%
big = producer_memory(producer="asyncio, no drain", total_mb=32, rate_mb_s=64)
producer_memory.check(big)     # includes: peak send queue <= send buffer + one packet buffer
print(f"peak send queue: {big.data['peak_outq'] / 1024:.0f} KB for 32 MB, {nd['peak_outq'] / 1024:.0f} KB for 16 MB")
assert big.data["peak_outq"] <= big.data["sndbuf_got"] + big.data["gso_max_size"] < 2 * nd["peak_outq"]
check_value(answer_3, "about the same", name="peak kernel send queue for 32 MB",
            hint="which limit applies to the kernel's send queue, and does it depend on how much the program writes?");

# %% [markdown]
# ## Summary
# * A full socket shows up as `EAGAIN` (non-blocking), as a `send()` that sleeps
#   (blocking), or as `await writer.drain()` that waits (asyncio).
# * The bytes already accepted wait in the sender's send queue and the receiver's receive
#   queue; `SIOCOUTQ`, `FIONREAD`, `ss` and TCP_INFO show them.
# * The kernel bounds its own queues: the receive queue by the receive buffer, the send
#   queue by the send buffer plus at most one packet buffer (64 KB on lo). On lo the send
#   buffer is 4 MB from the moment the connection is established.
# * A producer's memory is bounded only if it honours backpressure; asyncio's `write()`
#   without `drain()` buffers everything in user space, and briefly half as much again.
#
# **What's next:** [02_06 Zero-copy: sendfile](02_06-zero-copy-sendfile.ipynb): the
# cost of moving bytes into those queues.

# %%
assert nothing_left_behind() == []
