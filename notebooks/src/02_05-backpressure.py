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
# Almost nothing here needs privileges: plain sockets, `ioctl`s, TCP_INFO and `/proc` run
# live, on this machine, now. One experiment compares this machine with a fresh network
# namespace (root); without root it is replayed from the recorded corpus, and says so.

# %%
import pandas as pd
from helpers.notebook import mode_banner, nothing_left_behind, show
from helpers import rules
from helpers.experiments.backpressure import (send_blocks, producer_memory, occupancy_plot, summary, sndbuf_metrics,
                                              render, peak_moment, sndbuf_after_connect, sndbuf_rule,
                                              sndbuf_got_rule, eagain_rule, no_drain_growth_band,
                                              PRODUCERS, MB, CHUNK, KERNEL_BUF, SMALL_MSS)
from helpers.checks import check_value
from helpers.widgets import Panel

mode_banner(needs=("namespaces",))

# %% [markdown]
# ## 1 · A reader that stops: where do the bytes go?
#
# A consumer accepts a connection and does not read. The producer's socket is
# **non-blocking**: it calls `send()` with 64 KB chunks until the kernel refuses. When
# `send()` fails, the producer waits up to 0.3 s for `select()` to call the socket
# writable again; it stops when `send()` fails although the consumer's window was already
# closed and nothing was in flight (TCP_INFO), so that no ACK can still free room.
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
# below `rb`. The producer's `w` obeys the rule that decides `EAGAIN`
# (`sk_stream_memory_free()`): `send()` fails only once `w` has reached `tb`, and the
# check runs only before a new packet buffer (skb) is started, so `w` ends between `tb`
# and `tb` plus one skb.

# %%
prod_ss, cons_ss = ss_view.loc["producer"], ss_view.loc["consumer"]
assert prod_ss["send_q"] == d["outq"] and cons_ss["recv_q"] == d["inq"]
assert d["inq"] <= cons_ss["skmem_rb"], "the bytes in the receive queue stay below the receive buffer"
assert cons_ss["skmem_r"] < cons_ss["skmem_rb"] + rules.skb_truesize_per_mss(d["tcp_info"]["snd_mss"]), \
    "r ends at most one packet buffer above rb"
assert prod_ss["skmem_tb"] == d["sndbuf_when_full"]
eagain_rule(full).check(int(prod_ss["skmem_w"]), "the producer's send-queue memory w when send() failed")
print(f"receive buffer rb {cons_ss['skmem_rb']:,} bytes, charged r {cons_ss['skmem_r']:,}, bytes queued "
      f"{d['inq']:,}; send buffer tb {prod_ss['skmem_tb']:,} (producer), {cons_ss['skmem_tb']:,} (consumer)")

# %% [markdown]
# How large is the send buffer, and when was it set? Read `SO_SNDBUF` before `connect()`
# and right after it, before any data; then again on a connection whose segments are cut
# to 1,200 bytes (`TCP_MAXSEG`) instead of lo's 64 KB.
#
# **Predict:** is the buffer right after `connect()` still `tcp_wmem[1]` (the value a new
# socket starts with), or already larger?

# %%
here = rules.machine()                       # this machine's settings and metrics cache, now
lo_conn = sndbuf_after_connect()
small_seg = sndbuf_after_connect(mss=SMALL_MSS)
pd.DataFrame([lo_conn, small_seg]).drop(columns=["metrics"]).set_index("mss_asked")

# %% [markdown]
# Linux sizes a connection's send buffer when the connection is established
# (`tcp_sndbuf_expand()` in `net/ipv4/tcp_input.c`, unless `SO_SNDBUF` was set):
#
# *factor*(congestion control) × max(10, cwnd, reordering + 1) × *truesize*(MSS), capped at `tcp_wmem[2]`
#
# The factor is 3 for bbr and 2 for cubic and reno (room for fast recovery); 10 is the
# initial congestion window; *truesize* is the memory one full-sized packet buffer costs in
# the worst case (the MSS plus header room, rounded up to a power of two, plus the
# `sk_buff`): 131,328 bytes for lo's 65,495-byte MSS. The rule, evaluated with this
# machine's settings and each connection's own inputs:

# %%
for conn, mss in ((lo_conn, None), (small_seg, SMALL_MSS)):
    sndbuf_rule(here, conn, mss=mss).check(conn["after_connect"], f"SO_SNDBUF after connect(), MSS {mss or 'lo'}")
    print()
assert lo_conn["before_connect"] == here.tcp_wmem[1], "before connect(): tcp_wmem[1]"
assert lo_conn["accepted_side"] == lo_conn["after_connect"], "the accepted side gets the same buffer"
assert small_seg["after_connect"] < lo_conn["after_connect"], "smaller segments, a smaller send buffer"

# %% [markdown]
# Every factor is visible in the numbers. An example from the reference machine: with
# `TCP_MAXSEG` 1460 it once read 387,072 bytes = 3 (bbr) × (55 + 1) (a reordering of 55
# from the cache) × 2,304 (1,460 bytes plus header room rounds up to a 2 KiB allocation,
# plus the 256-byte `sk_buff`). Your machine's inputs are in the rule checks above.

# %% [markdown]
# One input is not a setting: **reordering**. It comes from the kernel's per-destination
# **metrics cache**. When a connection closes, Linux remembers what it learned about the
# peer address (round-trip time and its variance, the congestion window, slow-start
# threshold and how much reordering it saw) and the next connection to that address
# starts from it (`tcp_init_metrics()` in `net/ipv4/tcp_metrics.c`). `ip tcp_metrics show`
# prints the cache; anyone may read it; flushing it (`ip tcp_metrics flush`) needs root.
# This is the entry for 127.0.0.1 just before the connection above:

# %%
cache = rules.tcp_metrics_reordering(rules.Machine(sysctls=here.sysctls, metrics={"127.0.0.1": lo_conn["metrics"]}))
print("ip tcp_metrics show 127.0.0.1:", " ".join(f"{k} {v}" for k, v in lo_conn["metrics"].items()) or "(no entry)")
cache.check(lo_conn["reordering"], "TCP_INFO reordering of the new connection")

# %% [markdown]
# What would a machine with an empty cache give? A fresh **network namespace** has its own,
# empty cache. The next experiment connects once on the host and several times in a fresh
# namespace: its first connection, the cache after that connection closed (what the kernel
# stored), a connection with reno instead of the default congestion control, and the cache
# after `ip tcp_metrics flush` (root only).
#
# **Predict:** which of the three send buffers is the largest?

# %%
cw = sndbuf_metrics()
display(cw)                       # live (root) or replayed from the corpus: the banner says which
sndbuf_metrics.check(cw)          # the rule, with each connection's own inputs, for all three
c = cw.data
ns_m, host_m = cw.machine_snapshot(), rules.Machine.from_dict(c["host_machine"])
cache_text = lambda e: " ".join(f"{k} {v}" for k, v in e.items() if k != "source") or "(empty)"
pd.DataFrame([
    {"where": "host", "cache for 127.0.0.1 before": cache_text(c["host"]["metrics"]), "cc": c["host"]["cc"],
     "reordering": c["host"]["reordering"], "SO_SNDBUF after connect()": c["host"]["after_connect"],
     "rule": sndbuf_rule(host_m, c["host"]).value},
    {"where": "fresh namespace", "cache for 127.0.0.1 before": cache_text(c["ns_metrics_before"]), "cc": c["ns_first"]["cc"],
     "reordering": c["ns_first"]["reordering"], "SO_SNDBUF after connect()": c["ns_first"]["after_connect"],
     "rule": sndbuf_rule(ns_m, c["ns_first"]).value},
    {"where": "same namespace, reno", "cache for 127.0.0.1 before": cache_text(c["ns_metrics_after"]), "cc": c["ns_reno"]["cc"],
     "reordering": c["ns_reno"]["reordering"], "SO_SNDBUF after connect()": c["ns_reno"]["after_connect"],
     "rule": sndbuf_rule(ns_m, c["ns_reno"]).value},
]).set_index("where")

# %%
host_c, first_c = c["host"], c["ns_first"]
show([f"The host's cache held reordering **{host_c['metrics'].get('reordering', 'none')}** for 127.0.0.1, "
      f"the fresh namespace's nothing: **{host_c['after_connect']:,}** against **{first_c['after_connect']:,}** "
      "bytes of send buffer"
      + (", the same here (the reordering is below 10, or the cap tcp_wmem[2] decides both). "
         if host_c["after_connect"] == first_c["after_connect"] else
         ": a warm machine starts its connections with a bigger buffer than a fresh one. ")
      + f"After one connection the namespace's cache held *{cache_text(c['ns_metrics_after'])}* "
        f"(round-trip time, its variance and the congestion window it ended with); `ip tcp_metrics flush` "
        f"emptied it again ({cache_text(c['ns_metrics_flushed'])}). Reno's factor "
        f"{rules.sndbuf_expand_factor('reno')} instead of {first_c['cc']}'s {rules.sndbuf_expand_factor(first_c['cc'])} "
        f"gives **{c['ns_reno']['after_connect']:,}** bytes."])

# %% [markdown]
# > **Myth vs measurement.** "The send buffer starts at `tcp_wmem[1]` and grows as it
# > is needed." It starts there for a socket that is not connected yet; the moment the
# > handshake completes it jumps to the rule's value (on lo: megabytes, before a byte is
# > sent), and later ACKs can raise it again as the congestion window grows. What it
# > jumps to depends on the congestion control, the MSS and what the metrics cache
# > remembers about the peer, never on one fixed number.

# %% [markdown]
# TCP_INFO of the producer tells the same story from the sender's side:

# %%
ti = d["tcp_info"]
print(f"SO_SNDBUF right after connect() {d['sndbuf_got']:,}; when the socket was full {d['sndbuf_when_full']:,} "
      f"(cwnd {ti['snd_cwnd']} segments by then)")
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
# `sendall()` with 256 KB more (any amount would do: the send buffer has no room left), in a thread, while the consumer kept not reading for
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
sndbuf_got_rule(small).check(sd["sndbuf_got"], "SO_SNDBUF read back after setsockopt(16384)")
assert sd["queued"] < d["queued"] and sd["outq"] < d["outq"]

# %% [markdown]
# **Observe.** Where did `send()` stop? Not at a number of *bytes*: the limit counts the
# send queue's *memory* (`w` in `ss -tm`: payload plus each packet buffer's bookkeeping),
# and `tcp_sendmsg()` checks it only before it starts a new packet buffer (an skb); bytes
# are still appended to the last one unchecked (`sk_stream_memory_free()`):

# %%
sw = next(x for x in sd["ss"] if x["side"] == "producer")["skmem_w"]
eagain_rule(small).check(sw, "the send queue's memory when send() failed")
assert sd["outq"] <= sw
show([f"Here the send queue held **{sd['outq']:,}** bytes of payload in **{sw:,}** bytes of memory, "
      f"for a send buffer of **{sd['sndbuf_got']:,}**: the payload ended "
      + ("above" if sd["outq"] > sd["sndbuf_got"] else "below")
      + " the buffer. On lo one skb carries up to 64 KB, so the last one can take the queue well above "
        "`SO_SNDBUF`; with small skbs their overhead counts, and the payload stops a little below it "
        "(Linux 6.1 stopped at 32,741 bytes for this 32,768-byte buffer). Either way the memory obeys "
        "the rule."])

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
m = runs[0].machine_snapshot()
for x in by.values():
    assert x["sndbuf_got"] == rules.sock_setsockopt_buf(KERNEL_BUF, m.wmem_max, which="SO_SNDBUF").value
    assert x["rcvbuf_got"] == rules.sock_setsockopt_buf(KERNEL_BUF, m.rmem_max).value
py = ".".join(map(str, nd["python"][:2]))
print(f"producer: Python {py}, asyncio write buffer: {nd['write_buffer']}; send and receive buffers "
      f"{dr['sndbuf_got']:,} / {dr['rcvbuf_got']:,} bytes")

# %%
fig = occupancy_plot(runs)

# %% [markdown]
# **Observe.** With `drain()` (left) and with a blocking send (right), the producer
# finishes when the consumer does, about 16 MB ÷ 32 MB/s = 0.5 s, and the unread bytes
# never exceed a few hundred KB: asyncio's buffer stays below its high-water mark plus one
# write, and the receive and send queues below their buffers plus one packet buffer each
# (section 2). Without `drain()` (middle) the
# producer "finishes" while far more data than the kernel's queues can hold has not even
# reached the kernel (on an idle machine, most of the 16 MB): it piles up
# in asyncio's buffer, in the producer's memory, and drains only at the consumer's pace.

# %%
paced = 16 / 32
growth = {p: (x["peak_rss"] - x["rss_before"]) / MB for p, x in by.items()}
print(f"without drain: producer done after {nd['produce_s'] * 1e3:.0f} ms with "
      f"{nd['app_at_produced'] / MB:.1f} of 16 MB still in its own buffer")
assert nd["app_at_produced"] > nd["sndbuf_got"] + nd["rcvbuf_got"], \
    "without drain the producer runs ahead: more is left in its own buffer than the kernel's queues can hold"
print(f"with drain / blocking: producer done when the consumer had read all but "
      f"{dr['unread_at_produced'] / 1024:.0f} / {bl['unread_at_produced'] / 1024:.0f} KB")
assert dr["unread_at_produced"] < MB and bl["unread_at_produced"] < MB, "with backpressure it is paced"
# the consumer is paced: it cannot read 16 MB faster than 32 MB/s (a busy machine only slows it)
assert all(x["consumer_s"] > 0.5 * paced for x in by.values()), "the consumer keeps its pace"
assert all(x["peak_outq"] <= rules.sk_stream_memory_free(m, x["sndbuf_got"]).high for x in by.values()), \
    "send queue bounded"
assert all(x["peak_inq"] <= rules.tcp_try_rmem_schedule(m, x["rcvbuf_got"]).high for x in by.values()), \
    "receive queue bounded: the buffer plus at most one skb"
assert dr["peak_app_buffer"] <= dr["limits"][1] + dr["chunk"], "drain keeps the buffer near the high-water mark"
assert nd["peak_app_buffer"] >= 8 * (nd["sndbuf_got"] + nd["rcvbuf_got"]), \
    "without drain asyncio's buffer grows far past the kernel's queues"
assert growth["asyncio, no drain"] * MB >= 0.9 * nd["peak_app_buffer"], "and that buffer is the producer's memory"
assert growth["asyncio + drain"] < 4 and growth["blocking sendall"] < 4, "backpressure keeps memory bounded"
print({p: f"+{g:.1f} MB" for p, g in growth.items()})

# %% [markdown]
# How much memory does the no-drain producer need for 16 MB of unsent data? That depends on
# the Python that runs it, because asyncio changed how it buffers in 3.12:
#
# * up to **3.11**, `write()` *copies* the data into one `bytearray` and deletes what the
#   socket took from its front. When a `bytearray` falls below half of its allocation,
#   CPython moves the rest into a new, smaller allocation and frees the old one only
#   afterwards (`PyByteArray_Resize` in `Objects/bytearrayobject.c`): for a moment both
#   exist, about **1.5 times** the data (measured: 1.54 on 3.11);
# * from **3.12**, the transport keeps a `deque` of the objects you wrote, without copying
#   them (so changing a `bytearray` after `write()` changes what is sent), sends several at
#   once with `sendmsg()`, and frees each when it is sent: about **1 times** the data
#   (measured: 0.99 on 3.12 and 3.13).
#
# The dashed line is the peak (`VmHWM`, the kernel's record of the highest RSS), which an
# RSS sample every 4 ms can miss:

# %%
pm = peak_moment(runs[PRODUCERS.index("asyncio, no drain")])
low, high = no_drain_growth_band(nd["write_buffer"])
ratio_16 = growth["asyncio, no drain"] / 16
print(f"Python {py} ({nd['write_buffer']}): peak growth {ratio_16:.2f} × the data (expected {low}–{high}); "
      f"RSS sampled: at most +{pm['rss_growth_sampled'] / MB:.1f} MB; peak (VmHWM) +{pm['hwm_growth'] / MB:.1f} MB, "
      f"reached between {pm['t_before'] * 1e3:.0f} and {pm['t'] * 1e3:.0f} ms, while asyncio's buffer went from "
      f"{pm['app_before'] / MB:.1f} to {pm['app_at'] / MB:.1f} MB (its peak: {pm['peak_app_buffer'] / MB:.1f} MB)")
assert low <= ratio_16 <= high, f"peak memory / data for asyncio's {nd['write_buffer']} buffer"
if nd["write_buffer"] == "bytearray":
    assert pm["hwm_growth"] > pm["rss_growth_sampled"] + MB, "the peak is above every RSS sample"
    assert pm["app_at"] < 0.6 * pm["peak_app_buffer"] < 1.2 * pm["app_before"], \
        "the peak comes when the buffer drains below about half of its peak"

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
producer_memory.check(fast)   # includes: the buffer grows far past the kernel's queues, and it is memory
ratio = (fast.data["peak_rss"] - fast.data["rss_before"]) / (nd["peak_rss"] - nd["rss_before"])
print(f"memory growth for 8 MB / for 16 MB = {ratio:.2f} (about half when the producer runs far ahead "
      f"both times; how far ahead depends on how busy the machine is)")

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
cap_q = rules.sk_stream_memory_free(m, big.data["sndbuf_got"]).high
print(f"peak send queue: {big.data['peak_outq'] / 1024:.0f} KB for 32 MB, {nd['peak_outq'] / 1024:.0f} KB for 16 MB; "
      f"the send buffer's limit (sk_stream_memory_free): {cap_q / 1024:.0f} KB, whatever the program writes")
# the rule is the cap; how close each run came to it depends on how fast the reader kept up
assert max(big.data["peak_outq"], nd["peak_outq"]) <= cap_q
check_value(answer_3, "about the same", name="peak kernel send queue for 32 MB",
            hint="which limit applies to the kernel's send queue, and does it depend on how much the program writes?");

# %% [markdown]
# ## Summary
# * A full socket shows up as `EAGAIN` (non-blocking), as a `send()` that sleeps
#   (blocking), or as `await writer.drain()` that waits (asyncio).
# * The bytes already accepted wait in the sender's send queue and the receiver's receive
#   queue; `SIOCOUTQ`, `FIONREAD`, `ss` and TCP_INFO show them.
# * The kernel bounds its own queues: the receive queue by the receive buffer, the send
#   queue's memory by the send buffer plus at most one packet buffer (`sk_stream_memory_free()`).
# * A connection's send buffer is set when it is established (`tcp_sndbuf_expand()`): from
#   the congestion control, the MSS and the reordering the metrics cache (`ip tcp_metrics`)
#   remembers for the peer, capped at `tcp_wmem[2]`. A second run can differ from the first.
# * A producer's memory is bounded only if it honours backpressure; asyncio's `write()`
#   without `drain()` keeps everything in user space (on 3.11 briefly half as much again).
#
# **What's next:** [02_06 Zero-copy: sendfile](02_06-zero-copy-sendfile.ipynb): the
# cost of moving bytes into those queues.

# %%
assert nothing_left_behind() == []
