# %% [markdown]
# # 02_01 · Send and receive buffers
#
# **Objectives**
# 1. See what `SO_SNDBUF` and `SO_RCVBUF` really set: the kernel doubles, caps and floors them.
# 2. Show that `send()` returns once the bytes are in the send buffer, not when they are on
#    the wire (let alone read by the peer).
# 3. Measure how many bytes a writer can queue before `send()` would block, as a function of
#    both buffers, and find every byte in `ss -tm` and TCP_INFO.
# 4. See why `SO_RCVBUF` belongs on the listener, before `listen()`, and how a small one
#    caps the window at 64 KiB for the life of every accepted connection.
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
                                         window_table, MAX_UNSCALED, stored_rcvbuf, drops_accounted)
from helpers import rules
from helpers.experiments.handshake import syn_window
from helpers.checks import check_value
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
for which, col, cap in (("SO_SNDBUF", "sndbuf", d["wmem_max"]), ("SO_RCVBUF", "rcvbuf", d["rmem_max"])):
    # the floor: SOCK_MIN_RCVBUF = 2048 + SKB_DATA_ALIGN(sizeof(struct sk_buff)), SOCK_MIN_SNDBUF twice that
    rules.sock_setsockopt_buf(1, cap, which=which).check(table.loc[1, col], f"{which} 1 read back",
                                                        reference=sizes.reference())
print(f"doubled: 4096 → 8192; capped: 16 MiB → 2 × wmem_max = {2 * d['wmem_max']:,}; "
      f"floored: 1 → {d['min_sndbuf']:,} (send), {d['min_rcvbuf']:,} (receive)")
print(f"a new socket, nothing set: send buffer {d['default_sndbuf']:,} = tcp_wmem[1], "
      f"receive buffer {d['default_rcvbuf']:,} = tcp_rmem[1]")

# %% [markdown]
# **Explain.** The kernel stores twice what you ask for. That is a fixed rule, whatever the
# size (`man 7 socket`, SO_SNDBUF and SO_RCVBUF: "The kernel doubles this value (to allow
# space for bookkeeping overhead)"). The limit is then charged with the *memory* of each
# packet buffer (its `truesize`: payload plus the `sk_buff` header and slack), not with
# payload bytes, so how much payload fits in the doubled buffer depends on the packets:
# section 3 measures it. An unprivileged process cannot go above `net.core.wmem_max` /
# `rmem_max` (the request is capped, then doubled), and tiny values are raised to a floor.
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
print(f"the reader's first window: {wr.data['first_snd_wnd']:,} bytes; the writer's segment size "
      f"(snd_mss): {w['snd_mss']:,} bytes")
where = where_bytes_are(wr)[["send_q", "recv_q", "skmem_w", "skmem_r"]]
where

# %%
assert wr.data["returned"] == 65536 and wr.data["send_seconds"] < 0.25
assert w["bytes_sent"] < 65536 and w["notsent_bytes"] > 0
assert where.loc["writer", "send_q"] + where.loc["reader", "recv_q"] == 65536
assert w["bytes_sent"] - w["bytes_retrans"] <= wr.data["first_snd_wnd"], "no more than one window left the writer"
assert w["snd_mss"] == wr.data["first_snd_wnd"] // 2, "segments are capped at half the largest window offered"

# %% [markdown]
# **Explain.** `send()` copied the 64 KiB into the writer's send buffer and returned; it took
# a fraction of a millisecond. Only one window's worth ever left the writer, because that
# is all the reader offered; the rest sits in the writer's send queue, never
# transmitted (`notsent_bytes`). The writer even cut its segments to half that window
# (`snd_mss`): Linux caps the segment size at half the largest window the peer has
# offered, so that a small window still carries two segments (`tcp_bound_to_half_wnd()`
# in `include/net/tcp.h`, called from `tcp_sync_mss()`). `ss` shows every byte: the writer's `Send-Q` plus the
# reader's `Recv-Q` is exactly what was written. A successful `send()` therefore tells you
# nothing about delivery: only the peer's application can confirm it read your data.
#
# The `skmem` columns come from `ss -tm`. What they mean:

# %%
show(["| column | `ss -tm` field: meaning |\n|---|---|\n"
      + "\n".join(f"| `{col}` | {text} |" for col, text in SKMEM.items())])

# %% [markdown]
# `skmem_w` (memory of the send queue) is larger than `Send-Q` (payload) and `skmem_r` larger
# than `Recv-Q`: every packet costs more memory than the payload it carries.

# %%
assert where.loc["writer", "skmem_w"] > where.loc["writer", "send_q"]
assert where.loc["reader", "skmem_r"] > 1.2 * where.loc["reader", "recv_q"]
print(f"reader: {where.loc['reader', 'recv_q']:,} bytes of payload cost {where.loc['reader', 'skmem_r']:,} "
      f"bytes of memory ({where.loc['reader', 'skmem_r'] / where.loc['reader', 'recv_q']:.2f}×)")

# %% [markdown]
# ## 3 · How many bytes can a writer queue before `send()` blocks?
#
# Now the writer is non-blocking and writes 64 KiB chunks until `send()` raises `EAGAIN`
# (where a blocking `send()` would block) to a reader that never reads. `SO_SNDBUF` is set
# on the writer before `connect()`, `SO_RCVBUF` on the listener before `listen()`.
# One `EAGAIN` is not yet "full": the send buffer may only be waiting for an ACK (a delayed
# ACK takes 40 ms or more). The writer stops when the socket stays unwritable *and*
# TCP_INFO shows the reader's window has no room for the next segment
# (`kernel.window_closed`).
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
cw, cr = c["writer_info"], c["reader_info"]
print(f"writer: snd_wnd {cw['snd_wnd']:,} < snd_mss {cw['snd_mss']:,}; bytes_sent {cw['bytes_sent']:,} "
      f"- bytes_retrans {cw['bytes_retrans']:,} = {cw['bytes_sent'] - cw['bytes_retrans']:,} = reader's "
      f"bytes_received {cr['bytes_received']:,}; packets the reader dropped (skmem_d): {c['ss']['reader']['skmem_d']}")
assert cw["snd_wnd"] < cw["snd_mss"] and cw["notsent_bytes"] > 0
assert cw["bytes_sent"] - cw["bytes_retrans"] == cr["bytes_received"] and cw["unacked"] == 0
print(f"writer's probe backoff (TCP_INFO backoff): {cw['backoff']}")
assert drops_accounted(c), "a dropped packet was retransmitted, or was a zero-window probe"

# %% [markdown]
# **Observe.** Roughly the sum of the two *doubled* buffers: the reader's kernel accepted
# what its receive buffer could hold and the writer's kernel kept the rest in its send
# buffer. Three lines of the TCP_INFO table need a word:
#
# * The writer's `snd_wnd` may be 0 or a few KiB, but it is smaller than one segment
#   (`snd_mss`), and Linux does not send a segment that does not fit entirely in the
#   window (`tcp_snd_wnd_test()` in `net/ipv4/tcp_output.c`). So the rest waits, unsent.
# * `bytes_sent` counts a retransmitted byte twice: `bytes_sent − bytes_retrans` is
#   exactly what the reader received, and `unacked` 0 says all of it was acknowledged.
# * When the reader's kernel has no memory left for an arriving packet it drops it and
#   counts it in `d` (`skmem_d`); the writer then sends it again (`bytes_retrans`). Whether
#   that happens varies from run to run. A retransmission can also happen without a drop,
#   when an acknowledgement comes late (chapter 02_02). A drop without a retransmission is
#   a zero-window probe (chapter 02_02): it carries no new data, so nothing is resent, and
#   the writer's `backoff` counts the probes. A slow machine shows it: there the probes
#   start before the `ss` snapshot (seen on Linux 6.1 under emulation).
#
# Now vary one buffer at a time, keeping the other at 64 KiB:

# %%
sweep = capacity_sweep()
fig = plot_sweep(sweep)

# %%
sweep[["varied", "setting", "writer_sndbuf", "reader_rcvbuf", "send_q", "recv_q", "reader_mem", "written",
       "snd_mss"]]

# %%
for knob, own, q, other in (("sndbuf", "writer_sndbuf", "send_q", "reader_rcvbuf"),
                            ("rcvbuf", "reader_rcvbuf", "recv_q", "writer_sndbuf")):
    s = sweep[sweep.varied == knob].sort_values("setting")
    # the buffers as stored (doubled, capped at 2 × {w,r}mem_max): the bytes grow with them
    assert s["written"].iloc[-1] - s["written"].iloc[0] > 0.5 * (s[own].iloc[-1] - s[own].iloc[0]), \
        f"the largest {knob} queues more, by about what the buffer grew"
    top = s.iloc[-1]
    if top[own] > top[other]:
        assert top[q] > 0.5 * top["written"], f"the bigger buffer ({knob}) holds most of the bytes"
ratio = sweep["written"] / (sweep["writer_sndbuf"] + sweep["reader_rcvbuf"])
assert ratio.between(0.5, 1.5).all(), ratio
assert (sweep["recv_q"] <= sweep["reader_rcvbuf"]).all(), "the receive queue stays within SO_RCVBUF (doubled)"
print("bytes queued / (2 × SO_SNDBUF + 2 × SO_RCVBUF):", ratio.round(2).tolist())

# %% [markdown]
# **Explain.** For large buffers the answer is simple: a writer can queue about
# 2 × `SO_SNDBUF` + 2 × `SO_RCVBUF` bytes, the doubled values, and the bigger buffer holds
# most of them. Three details show at the ends of the table:
#
# * How much payload a doubled buffer holds depends on the packets. Row 5: an 8 KiB
#   receive buffer held 4 KiB of data (small packets, and the reader offers a window only
#   for the share of its buffer it expects to be payload: `tcp_win_from_space()` scales the
#   buffer by the socket's `scaling_ratio`, which starts at one half and is then learned
#   from the payload/truesize of the packets that arrive, Linux 6.5+). Row 9: the largest
#   receive buffer held nearly its size in data, because
#   on `lo` each packet carries up to 64 KiB and its memory (`reader_mem`, ss `skmem_r`)
#   is barely more than its payload.
# * On `lo` the writer's queue can end *above* a small `SO_SNDBUF`. The kernel checks the limit only
#   before it starts a new packet buffer (`sk_buff`), and on `lo` one buffer can hold up to
#   64 KiB (segmentation offload: TCP builds 64 KiB buffers and splits them late). The rule
#   (`sk_stream_memory_free()`): `send()` fails once the queue's *memory* (`ss` `w`) has
#   reached the buffer, and at most one skb beyond it; the asserts below check it per row.
#   The payload itself may end above the buffer (one big skb on lo) or a little below it
#   (many small skbs, each adding its overhead: Linux 6.1 stopped 27 bytes short of 32,768).
# * That is why rows 0 and 1 (8 KiB and 32 KiB of send buffer) come out alike: both limits
#   are smaller than one packet buffer of one segment (`snd_mss`), so in both the writer
#   stops with one buffer queued, while the reader's side, with the same `SO_RCVBUF`,
#   holds about the same. That buffer is a segment or two (asserted: `send_q` ≤ 2 ×
#   `snd_mss`; compare the two columns in the table below).

# %%
rows = sweep.reset_index(drop=True)
r5, r9 = rows.loc[5], rows.loc[9]
assert r5.recv_q <= 0.6 * r5.reader_rcvbuf, f"8 KiB of buffer, about 4 KiB of data (got {r5.recv_q:,} B)"
# From Linux 6.6 the receiver learns its buffer's payload share (scaling_ratio) from the
# packets it gets, nearly all of it for lo's 64 KB packets; before, tcp_adv_win_scale = 1
# fixed the window at half the buffer (Linux 6.1 measured 0.77 here: the queue may pass the
# window a little). A version difference, stated as such:
learned = cap.machine_snapshot().version >= (6, 6)
share = 0.85 if learned else 0.5
print(f"the largest receive buffer holds {r9.recv_q / r9.reader_rcvbuf:.2f} of its size in payload "
      f"(at least {share} expected on {'6.6+' if learned else 'a kernel before 6.6'})")
assert r9.recv_q >= share * r9.reader_rcvbuf, f"the largest buffer's payload share (got {r9.recv_q:,} of {r9.reader_rcvbuf:,} B)"
assert r9.reader_mem < 1.1 * r9.recv_q, \
    f"64 KiB packets cost little more than their payload ({r9.reader_mem:,} B for {r9.recv_q:,} B)"
small = sweep[(sweep.varied == "sndbuf") & (sweep.setting <= 16384)]
shown = small[["setting", "writer_sndbuf", "writer_mem", "send_q", "snd_mss", "recv_q"]].to_dict("records")
m = cap.machine_snapshot()
for row in small.itertuples():   # EAGAIN: the queue's memory reached SO_SNDBUF, at most one skb beyond it
    rules.sk_stream_memory_free(m, row.writer_sndbuf).check(
        sweep.loc[row.Index, "writer_mem"], f"writer's send-queue memory, SO_SNDBUF {row.setting}", quiet=True)
assert (small["send_q"] <= 2 * small["snd_mss"]).all(), f"…and here by a segment or two {shown}"
r0, r1 = small["recv_q"].iloc[0], small["recv_q"].iloc[1]
assert 0.7 < r0 / r1 < 1.4, f"the same SO_RCVBUF, about the same bytes at the reader {shown}"
small[["setting", "writer_sndbuf", "writer_mem", "send_q", "snd_mss", "recv_q"]]

# %% [markdown]
# ## 4 · Autotuning: leave the buffers alone and the kernel grows them
#
# **Predict:** with `SO_SNDBUF` left at the kernel default (16 KiB at the start), how much
# can the writer queue against a 64 KiB receive buffer?

# %%
auto = queue_capacity(sndbuf=None, rcvbuf=65536)
a = auto.data
queue_capacity.check(auto)
aw = a["writer_info"]
at = a["at_connect"]
rules.assert_rule(auto, rules.tcp_sndbuf_expand, at["sndbuf"], what="the writer's SO_SNDBUF right after connect()",
                  cc=at["cc"], cwnd=at["cwnd"], reordering=at["reordering"])
print(f"written {a['written']:,} bytes; SO_SNDBUF {a['tcp_wmem'][1]:,} before connect(), {at['sndbuf']:,} right "
      f"after it, {a['writer_sndbuf']:,} when full (tcp_wmem[2] {a['tcp_wmem'][2]:,}; cwnd then {aw['snd_cwnd']})")
assert at["sndbuf"] <= a["writer_sndbuf"] <= a["tcp_wmem"][2], "ACKs may raise it further, up to tcp_wmem[2]"
assert a["written"] > 4 * c["written"], "an autotuned send buffer holds far more"
ma = auto.machine_snapshot()
opts = 12 if ma.sysctls.get("tcp_timestamps", 1) else 0          # timestamps ride in every segment
lo_mss = rules.tcp_mss_default(ma.lo_mtu)
synack_wnd = syn_window(ma, stored_rcvbuf=a["reader_rcvbuf"], mss=lo_mss - opts).value["rcv_wnd"]
# tcp_bound_to_half_wnd(): at most lo's MSS minus options, at least half the SYN-ACK's window
# (the peer's largest window so far can only have grown since; TCP_INFO does not show it)
half = rules.tcp_bound_to_half_wnd(lo_mss, synack_wnd, options_len=opts)
rules.Prediction(half.rule, "between min(MSS − options, SYN-ACK window / 2) and MSS − options",
                 {**half.inputs, "SYN-ACK window": synack_wnd}, half.value, low=half.value, high=lo_mss - opts,
                 unit="B").check(aw["snd_mss"], "the writer's send MSS on lo", reference=auto.reference())

# %% [markdown]
# **Explain.** A socket whose `SO_SNDBUF` was never set is sized by the kernel the moment
# the connection is established, and again when ACKs free space while the congestion
# window has grown (`tcp_sndbuf_expand()` in `net/ipv4/tcp_input.c`):
# *factor*(congestion control: 3 for bbr, 2 for cubic and reno) × max(10, cwnd,
# reordering + 1) × the worst-case memory of one full-sized packet buffer, capped at
# `tcp_wmem[2]`. On `lo` a segment is tens of KiB (the 64 KiB MTU), so ten segments already
# ask for megabytes: the rule check above shows this machine's inputs. The reordering input
# comes from the per-destination metrics cache (`ip tcp_metrics`), so a warm machine can
# start with a bigger buffer than a fresh one (chapter 02_05 shows it).
#
# Setting `SO_SNDBUF` switches autotuning off for that socket, and `SO_RCVBUF` does the same
# for the receive side (the kernel's `Documentation/networking/ip-sysctl.rst`, `tcp_wmem`
# and `tcp_rmem`: "Calling setsockopt() with SO_SNDBUF disables automatic tuning of that
# socket's send buffer size"). The sweep shows it: every buffer you set still reads back
# exactly twice the setting after the fill.

# %%
m = cap.machine_snapshot()
for knob, col, cap_ in (("sndbuf", "writer_sndbuf", m.wmem_max), ("rcvbuf", "reader_rcvbuf", m.rmem_max)):
    for row in sweep[sweep.varied == knob].itertuples():
        want = rules.sock_setsockopt_buf(row.setting, cap_, which=f"SO_{knob.upper()}").value
        assert getattr(row, col) == want, f"SO_{knob.upper()} {row.setting}: never grown, still {want:,}"
print(f"read back after the fill, every SO_SNDBUF/SO_RCVBUF you set is still what setsockopt() stored: "
      f"2 × the setting, capped at 2 × wmem_max/rmem_max ({2 * m.wmem_max:,} / {2 * m.rmem_max:,} here)")

# %% [markdown]
# ## 5 · Set `SO_RCVBUF` before `listen()`
#
# The window scale is agreed in the SYN and SYN-ACK (chapter 01_02) and can never change
# afterwards. A server's SYN-ACK is sent from the listener's settings, before `accept()`.
# Four connections to a reader that never reads:
#
# | case | `SO_RCVBUF` on the listener, before `listen()` | on the accepted socket, after `accept()` |
# |---|---|---|
# | `before` | 4096 | — |
# | `after` | — | 4096 |
# | `small_then_big` | 4096 | 1 MiB |
# | `default` | — | — |
# | `default_then_big` | — | 1 MiB |
#
# **Predict:** which window scale does `after` announce? And in `small_then_big`, a server
# that used a small buffer on its listener and later enlarged it on one connection: how
# large a window can the writer ever see?

# %%
rb = rcvbuf_before_listen()   # 4096 and 1 MiB
rcvbuf_before_listen.check(rb)
wt = window_table(rb)
wt

# %%
assert wt.loc["before", "rcv_wscale"] == 0 and wt.loc["after", "rcv_wscale"] == rb.data["default_wscale"]
assert wt.loc["before", "rcvbuf"] == wt.loc["after", "rcvbuf"] == stored_rcvbuf(rb, 4096)
trap, fine, plain = rb.data["small_then_big"], rb.data["default_then_big"], rb.data["default"]
assert trap["rcvbuf"] == fine["rcvbuf"] == stored_rcvbuf(rb, 1 << 20)
assert trap["rcv_wscale"] == 0 and trap["max_snd_wnd"] <= MAX_UNSCALED
assert fine["max_snd_wnd"] > MAX_UNSCALED
show([f"Same {fine['rcvbuf']:,}-byte buffer: largest window seen **{trap['max_snd_wnd']:,}** bytes with scale 0, "
      f"**{fine['max_snd_wnd']:,}** with scale {fine['rcv_wscale']}; without raising it (`default`, "
      f"{plain['rcvbuf']:,} bytes): **{plain['max_snd_wnd']:,}**. Raising `SO_RCVBUF` after `accept()` "
      + ("did widen the window here" if fine["max_snd_wnd"] > plain["max_snd_wnd"] else "did not widen the window here")
      + f", within what scale {fine['rcv_wscale']} can express and the buffer holds."])
rtt = 0.1   # a 100 ms path: at most one window per round trip
print(f"at {rtt * 1000:.0f} ms round trip, {MAX_UNSCALED:,} bytes per round trip is at most "
      f"{MAX_UNSCALED * 8 / rtt / 1e6:.1f} Mbit/s")

# %% [markdown]
# **Explain.** `before` and `after` end with the same 8 KiB buffer, but only `before`, whose
# listener had it before `listen()`, announced scale 0; `after` announced the default
# scale, sized for an autotuned buffer of up to `max(tcp_rmem[2], rmem_max)`. The default
# scale already covers any buffer an unprivileged process can set, so a buffer enlarged
# after `accept()` (`default_then_big`) can be described in the window; the line above
# compares the window the writer saw with and without it, on this run. The trap is the reverse: a *small* `SO_RCVBUF` before `listen()` fixes scale
# 0, and the 16-bit window field then never describes more than 65,535 bytes. In
# `small_then_big` the buffer grew after `accept()`, but the writer never saw a
# window above 65,535 bytes (and cut its segments to half of that).
# What `ss` shows as the advertised window is the buffer's payload share
# (`tcp_win_from_space()`: the buffer scaled by `scaling_ratio`/256), never more than the
# scale can express. On `lo` the round trip
# is microseconds, so that costs nothing here; over a 100 ms path it caps the connection
# at about 5 Mbit/s. `man 7 tcp` says it plainly: "On individual connections, the socket
# buffer size must be set prior to the listen(2) or connect(2) calls in order to have it
# take effect."
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
# the writer stops once its queue's memory reaches its small SO_SNDBUF (at most one skb beyond:
# sk_stream_memory_free, checked by the invariant), so the rest of the bytes wait at the reader
assert lo["ss"]["reader"]["recv_q"] > lo["ss"]["writer"]["send_q"], "a small send buffer and a big receive " \
                                                                      "buffer: most bytes wait at the reader"
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
            hint="section 1's table shows what the kernel does with a value between the floor and the cap");

# %% [markdown]
# **2.** Predict, before running anything: with `SO_SNDBUF` 512 KiB on the writer and
# `SO_RCVBUF` 64 KiB on the reader's listener, about how many bytes can a non-blocking writer
# queue before `EAGAIN`? The check runs that case live and accepts ±30 %.

# %%
answer_2 = ...  # bytes, an integer

# %%
ex2 = queue_capacity(sndbuf=512 * 1024, rcvbuf=64 * 1024)
check_value(answer_2, ex2.data["written"], rel=0.3, name="bytes queued",
            hint="apply the rule of section 3's Explain to what getsockopt would return for each buffer");

# %% [markdown]
# **3.** A program makes one *blocking* `send()` of 1 MiB on a connection whose
# `SO_SNDBUF` and `SO_RCVBUF` were both set to 64 KiB (as in section 3), and the peer
# application never reads. True or false: the `send()` returns.

# %%
answer_3 = ...  # True or False

# %%
check_value(answer_3, bool(c["written"] >= 1 << 20), name="send() returns?",
            hint="compare 1 MiB with what section 3's writer could queue; what does a blocking send() do "
                 "when the buffers are full?");

# %% [markdown]
# ## Summary
# * `SO_SNDBUF`/`SO_RCVBUF` are doubled by the kernel (a fixed rule), capped at
#   `wmem_max`/`rmem_max` and raised to a floor; the buffer is charged with packet memory,
#   so how much payload fits depends on the packets. Unset, they start at `tcp_wmem[1]` and
#   `tcp_rmem[1]` and are autotuned; set, they are not.
# * `send()` returns when the bytes are in the send buffer: not transmitted, not
#   acknowledged, not read.
# * A writer to a stalled reader can queue about 2 × `SO_SNDBUF` + 2 × `SO_RCVBUF`; every byte
#   is visible as `Send-Q` at the writer or `Recv-Q` at the reader (`ss -tm`), and TCP_INFO
#   tells transmitted (`bytes_sent`) from waiting (`notsent_bytes`). A window smaller than
#   one segment sends nothing.
# * Set `SO_RCVBUF` on the listener before `listen()`: the window scale is fixed in the
#   handshake, and a small buffer there caps the window at 65,535 bytes for good.
#
# **What's next:** [02_02 Flow control and the zero window](02_02-flow-control-and-zero-window.ipynb):
# what the wire shows while the reader does not read.

# %%
assert nothing_left_behind() == []
