# %% [markdown]
# # 02_01 · Send and receive buffers
#
# **Objectives**
# 1. See what `SO_SNDBUF` and `SO_RCVBUF` really set: the kernel doubles, caps and floors them.
# 2. Show that `send()` returns once the bytes are in the send buffer, not when they are on
#    the wire (let alone read by the peer).
# 3. Measure how many bytes a writer can queue before `send()` would block, as a function of
#    both buffers, and find every byte in `ss -tm` and TCP_INFO.
# 4. Learn why `SO_RCVBUF` belongs on the listener, before `listen()`.
#
# **Prerequisites:** [01_01 Sockets are file descriptors](01_01-sockets-are-file-descriptors.ipynb),
# [01_02 The three-way handshake](01_02-three-way-handshake.ipynb) (window scale).
# **Time:** 30 minutes.
#
# Nothing in this chapter needs privileges or a capture: plain sockets on `127.0.0.1`,
# `getsockopt`, `ss` and TCP_INFO. Every cell runs live on your machine.

# %%
import socket
import pandas as pd
from helpers.notebook import mode_banner, nothing_left_behind, show
from helpers.experiments.buffers import (buffer_sizes, write_returns, queue_capacity, rcvbuf_before_listen,
                                         capacity_sweep, plot_sweep, where_bytes_are, render, readback, SKMEM,
                                         SKB_MAX)
from helpers.checks import check, check_value
from helpers.widgets import Panel

mode_banner(needs=())

# %% [markdown]
# ## 1 · What does `setsockopt(SO_SNDBUF, 4096)` set?
#
# **Predict:** you set `SO_SNDBUF` to 4096 on a fresh TCP socket and read it back with
# `getsockopt`. What number comes back? And for 16 MiB?

# %%
sizes = buffer_sizes()
table = pd.DataFrame(sizes.data["rows"]).set_index("asked")
table

# %%
buffer_sizes.check(sizes)   # the chapter's claims on this run; each assert names its claim
d = sizes.data
assert table.loc[4096, "sndbuf"] == table.loc[4096, "rcvbuf"] == 8192
assert table.loc[65536, "sndbuf"] == 2 * 65536
assert table.loc[1 << 24, "sndbuf"] == 2 * d["wmem_max"] and table.loc[1 << 24, "rcvbuf"] == 2 * d["rmem_max"]
assert table.loc[1, "sndbuf"] == d["min_sndbuf"] and table.loc[1, "rcvbuf"] == d["min_rcvbuf"]
print(f"doubled: 4096 → 8192; capped: 16 MiB → 2 × wmem_max = {2 * d['wmem_max']:,}; "
      f"floored: 1 → {d['min_sndbuf']:,} (send), {d['min_rcvbuf']:,} (receive)")
print(f"a new socket, nothing set: send buffer {d['default_sndbuf']:,} = tcp_wmem[1], "
      f"receive buffer {d['default_rcvbuf']:,} = tcp_rmem[1]")

# %% [markdown]
# **Explain.** The kernel stores twice what you ask for (`man 7 socket`: "the kernel
# doubles this value to allow space for bookkeeping overhead"). A buffer is charged with
# the *memory* of each packet buffer (its `truesize`: payload plus the `sk_buff` header and
# slack), not with payload bytes, so the doubling leaves room for that overhead. An
# unprivileged process cannot go above `net.core.wmem_max` / `rmem_max` (the request is
# capped, then doubled), and tiny values are raised to a floor.
#
# > **Myth vs measurement.** The source notes draw every socket with "Receive Buffer (64KB),
# > Send Buffer (64KB)" and say the buffers are what you set. Measured: what you set is
# > doubled; a new TCP socket starts with a 16 KB send buffer and a 128 KB receive buffer
# > (`tcp_wmem[1]`, `tcp_rmem[1]`), and, unless you set them, the kernel grows them as the
# > connection needs (autotuning, section 4).
#
# ## 2 · `send()` returns before the bytes are on the wire
#
# A reader accepts a connection and never reads; its receive buffer is small (`SO_RCVBUF`
# 4096). The writer makes **one** blocking `send()` of 64 KiB.
#
# **Predict:** does `send()` block until the reader reads? Return only part? Return at once?

# %%
wr = write_returns(size=65536)
wr

# %%
write_returns.check(wr)
w = wr.data["writer_info"]
print(f"send() returned {wr.data['returned']:,} of {wr.data['size']:,} bytes in "
      f"{wr.data['send_seconds'] * 1000:.2f} ms; the reader read {wr.data['read_by_peer']} bytes")
print(f"TCP_INFO of the writer: bytes_sent {w['bytes_sent']:,} (ever transmitted), "
      f"notsent_bytes {w['notsent_bytes']:,} (never transmitted yet), snd_wnd {w['snd_wnd']}")
where = where_bytes_are(wr)[["send_q", "recv_q", "skmem_w", "skmem_r"]]
where

# %%
assert wr.data["returned"] == 65536 and wr.data["send_seconds"] < 0.25
assert w["bytes_sent"] < 65536 and w["notsent_bytes"] > 0
assert where.loc["writer", "send_q"] + where.loc["reader", "recv_q"] == 65536
assert w["snd_mss"] <= 4096, "the writer cuts its segments to fit the reader's tiny window"

# %% [markdown]
# **Explain.** `send()` copied the 64 KiB into the writer's send buffer and returned; it took
# a fraction of a millisecond. Only about 4 KiB ever left the writer, because that is all
# the reader's window allowed; the rest sits in the writer's send queue, never
# transmitted (`notsent_bytes`). `ss` shows every byte: the writer's `Send-Q` plus the
# reader's `Recv-Q` is exactly what was written. A successful `send()` therefore tells you
# nothing about delivery: only the peer's application can confirm it read your data.
#
# The `skmem` columns come from `ss -tm`. What they mean:

# %%
pd.Series(SKMEM, name="ss -tm skmem field")

# %% [markdown]
# `skmem_w` (memory of the send queue) is larger than `Send-Q` (payload) and `skmem_r` larger
# than `Recv-Q`: the overhead the doubling makes room for.

# %%
assert where.loc["writer", "skmem_w"] > where.loc["writer", "send_q"]
assert where.loc["reader", "skmem_r"] > where.loc["reader", "recv_q"]

# %% [markdown]
# ## 3 · How many bytes can a writer queue before `send()` blocks?
#
# Now the writer is non-blocking and writes 64 KiB chunks until `send()` raises `EAGAIN`
# (where a blocking `send()` would block) to a reader that never reads. `SO_SNDBUF` is set
# on the writer before `connect()`, `SO_RCVBUF` on the listener before `listen()`.
#
# **Predict:** with both set to 64 KiB, roughly how many bytes fit? 64 KiB? 128 KiB? 256 KiB?

# %%
cap = queue_capacity(sndbuf=65536, rcvbuf=65536)
show(render(cap))

# %%
queue_capacity.check(cap)
c = cap.data
total_limit = c["writer_sndbuf"] + c["reader_rcvbuf"]
print(f"written {c['written']:,} bytes; the two doubled buffers add up to {total_limit:,}: "
      f"ratio {c['written'] / total_limit:.2f}")
assert 0.5 <= c["written"] / total_limit <= 1.5
assert c["written"] == c["ss"]["writer"]["send_q"] + c["ss"]["reader"]["recv_q"]

# %% [markdown]
# **Observe.** Roughly the sum of the two *doubled* buffers: the reader's kernel accepted
# what its receive buffer could hold and the writer's kernel kept the rest in its send
# buffer. Now vary one buffer at a time, keeping the other at 64 KiB:

# %%
sweep = capacity_sweep()
fig = plot_sweep(sweep)

# %%
sweep[["varied", "setting", "writer_sndbuf", "reader_rcvbuf", "send_q", "recv_q", "written"]]

# %%
for knob in ("sndbuf", "rcvbuf"):
    s = sweep[sweep.varied == knob].sort_values("setting")
    w_ = list(s["written"])
    assert all(b >= 0.95 * a for a, b in zip(w_, w_[1:])), f"more {knob}, more bytes queued"
    assert w_[-1] > 5 * w_[0]
ratio = sweep["written"] / (sweep["writer_sndbuf"] + sweep["reader_rcvbuf"])
assert ratio.between(0.5, 1.5).all(), ratio
assert (sweep["recv_q"] <= sweep["reader_rcvbuf"]).all(), "the receive queue stays within SO_RCVBUF (doubled)"
big = sweep[sweep.setting == 1048576].set_index("varied")
assert big.loc["sndbuf", "send_q"] > 0.8 * big.loc["sndbuf", "written"]
assert big.loc["rcvbuf", "recv_q"] > 0.8 * big.loc["rcvbuf", "written"]
print("bytes queued / (2 × SO_SNDBUF + 2 × SO_RCVBUF):", ratio.round(2).tolist())

# %% [markdown]
# **Explain.** For large buffers the answer is simple: a writer can queue about
# 2 × `SO_SNDBUF` + 2 × `SO_RCVBUF` bytes, the doubled values, and the bigger buffer holds
# most of them. Two details show at the small end:
#
# * The reader's queue holds less than its doubled buffer (8 KiB of buffer held 4 KiB of
#   data): the buffer is charged with packet memory, not payload.
# * The writer's queue can *exceed* a small `SO_SNDBUF`. The kernel checks the limit only
#   before it starts a new packet buffer (`sk_buff`), and on `lo` one buffer can hold up to
#   64 KiB (segmentation offload: TCP builds 64 KiB buffers and splits them late). So the
#   send queue stays below `SO_SNDBUF` (doubled) plus one 64 KiB buffer, not below `SO_SNDBUF`.

# %%
small = sweep[(sweep.varied == "sndbuf") & (sweep.setting <= 16384)]
assert (small["send_q"] > small["writer_sndbuf"]).all(), "a small send buffer overshoots…"
assert (small["send_q"] < small["writer_sndbuf"] + SKB_MAX).all(), "…by less than one 64 KiB buffer"
small[["setting", "writer_sndbuf", "send_q"]]

# %% [markdown]
# ## 4 · Autotuning: leave the buffers alone and the kernel grows them
#
# **Predict:** with `SO_SNDBUF` left at the kernel default (16 KiB at the start), how much
# can the writer queue against a 64 KiB receive buffer?

# %%
auto = queue_capacity(sndbuf=None, rcvbuf=65536)
a = auto.data
queue_capacity.check(auto)
print(f"written {a['written']:,} bytes; the writer's SO_SNDBUF grew from {a['tcp_wmem'][1]:,} to "
      f"{a['writer_sndbuf']:,} (tcp_wmem max {a['tcp_wmem'][2]:,})")
assert a["tcp_wmem"][1] < a["writer_sndbuf"] <= a["tcp_wmem"][2]
assert a["written"] > 4 * c["written"], "an autotuned send buffer holds far more"

# %% [markdown]
# **Explain.** A socket whose `SO_SNDBUF` was never set is autotuned: the kernel grows its
# send buffer with the connection's congestion window, up to `tcp_wmem[2]` (4 MiB here).
# Setting `SO_SNDBUF` switches autotuning off for that socket, and so does `SO_RCVBUF` for
# the receive side. That is why setting buffers "for performance" often makes things worse.
#
# ## 5 · Set `SO_RCVBUF` before `listen()`
#
# The window scale is agreed in the SYN and SYN-ACK (chapter 01_02) and can never change
# afterwards. A server's SYN-ACK is sent from the listener's settings, before `accept()`.
#
# **Predict:** a server sets `SO_RCVBUF` 4096 on the *accepted* socket instead. Which window
# scale did that connection announce?

# %%
rb = rcvbuf_before_listen()   # SO_RCVBUF 4096
rcvbuf_before_listen.check(rb)
pd.DataFrame({k: rb.data[k] for k in ("before", "after")}).T

# %%
assert rb.data["before"]["rcv_wscale"] == 0 and rb.data["after"]["rcv_wscale"] == rb.data["default_wscale"]
assert rb.data["before"]["rcvbuf"] == rb.data["after"]["rcvbuf"] == 8192

# %% [markdown]
# **Explain.** Both sockets end with the same 8 KiB buffer, but only the one whose listener
# had it before `listen()` announced scale 0. The other announced the default scale, sized
# for an autotuned buffer of up to `tcp_rmem[2]`: harmless here, but a program that wants a
# *large* fixed window (above 64 KiB) must set `SO_RCVBUF` before `listen()` (or before
# `connect()` on a client), or the scale it needs is never negotiated.
#
# ## 6 · Your turn: both buffer sizes
#
# Pick a send buffer and a receive buffer and press **Run**: the writer fills the
# connection until `EAGAIN`, and the panel shows where the bytes are (`ss -tm`) and what
# TCP_INFO says. "kernel default" leaves the option unset (autotuning).

# %%
panel = Panel(queue_capacity, queue_capacity.params, render=render, title="bytes queued before send() blocks")
panel

# %% [markdown]
# nbval cannot press buttons, so the next cell calls the panel's callback directly, the way
# the button does, and asserts on what it returns.

# %%
lopsided = panel.update(sndbuf=4096, rcvbuf=1048576)
panel.show()   # what the panel shows, also kept in the saved notebook

# %%
lo = lopsided.data
assert lo["ss"]["reader"]["recv_q"] > 0.9 * lo["written"], "a small send buffer and a big receive buffer: " \
                                                            "almost everything waits at the reader"
assert lo["writer_info"]["snd_wnd"] < lo["writer_info"]["snd_mss"]
print(f"{lo['written']:,} bytes: {lo['ss']['reader']['recv_q']:,} at the reader, "
      f"{lo['ss']['writer']['send_q']:,} at the writer")

# %% [markdown]
# ## Check your understanding
#
# **1.** A program calls `setsockopt(SOL_SOCKET, SO_RCVBUF, 32768)`. What does
# `getsockopt(SOL_SOCKET, SO_RCVBUF)` return?

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, readback(32768, socket.SO_RCVBUF), name="SO_RCVBUF read back",
            hint="what did the table in section 1 do to 4096 and 65536?");

# %% [markdown]
# **2.** From `sweep` (section 3): with `SO_SNDBUF` 1 MiB and `SO_RCVBUF` 64 KiB, how many
# bytes could the writer queue before `EAGAIN`? Read it from the DataFrame.

# %%
answer_2 = ...  # e.g. sweep[(sweep.varied == "sndbuf") & (sweep.setting == 1048576)]["written"].iloc[0]

# %%
check_value(answer_2, int(sweep[(sweep.varied == "sndbuf") & (sweep.setting == 1048576)]["written"].iloc[0]),
            name="bytes queued", hint="select the row where SO_SNDBUF was varied and set to 1048576");

# %% [markdown]
# **3.** True or false: when `send()` returned in section 2, the reader's kernel had
# acknowledged every byte.

# %%
answer_3 = ...  # True or False

# %%
check_value(answer_3, bool(wr.data["writer_info"]["bytes_acked"] - 1 >= wr.data["size"]),
            name="all acknowledged?", hint="compare bytes_sent and notsent_bytes with the size of the write");

# %% [markdown]
# ## Summary
# * `SO_SNDBUF`/`SO_RCVBUF` are doubled by the kernel (room for packet overhead), capped at
#   `wmem_max`/`rmem_max` and raised to a floor; unset, they start at `tcp_wmem[1]` and
#   `tcp_rmem[1]` and are autotuned.
# * `send()` returns when the bytes are in the send buffer: not transmitted, not
#   acknowledged, not read.
# * A writer to a stalled reader can queue about 2 × `SO_SNDBUF` + 2 × `SO_RCVBUF`; every byte
#   is visible as `Send-Q` at the writer or `Recv-Q` at the reader (`ss -tm`), and TCP_INFO
#   tells transmitted (`bytes_sent`) from waiting (`notsent_bytes`).
# * Set `SO_RCVBUF` on the listener before `listen()`: the window scale is fixed in the handshake.
#
# **What's next:** [02_02 Flow control and the zero window](02_02-flow-control-and-zero-window.ipynb):
# what the wire shows while the reader does not read.

# %%
assert nothing_left_behind() == []
