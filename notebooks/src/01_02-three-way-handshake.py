# %% [markdown]
# # 01_02 · The three-way handshake
#
# **Objectives**
# 1. Capture a real connection and read its SYN, SYN-ACK and ACK.
# 2. Check the arithmetic: each side acknowledges the other's initial sequence number + 1.
# 3. Predict every option the two sides announce (MSS, window scale, window, SACK,
#    timestamps) from this machine's settings with the kernel's own rules, and change two
#    of them with `setsockopt` before `connect()`.
# 4. See that a SYN-ACK only answers what the SYN offered, that SACK blocks appear after a
#    loss (not in the SYNs), and that setting `SO_RCVBUF` turns receive-buffer autotuning off.
# 5. See the same packets through three tools: the course's dissector, pyshark (Wireshark)
#    and scapy.
# 6. See that the kernel answers SYNs without the application.
#
# **Prerequisites:** [01_01 Sockets are file descriptors](01_01-sockets-are-file-descriptors.ipynb).
# **Time:** 30 minutes.

# %%
import pandas as pd
from helpers.notebook import mode_banner, nothing_left_behind
from helpers.experiments.handshake import (
    handshake, isn_table, scaled_window, kernel_answers, syn_options, render, syn_checks, reader_agreement,
    synack_options, synack_prediction, synack_seen, sack_blocks, sack_view, rcvbuf_autotuning, autotuning)
from helpers import dissect, plots, rules
from helpers.notebook import show
from helpers.checks import check_value
from helpers.widgets import Panel

mode_banner(needs=("live_capture", "namespaces"))

# %% [markdown]
# ## 1 · Capture two short connections
#
# A server on `127.0.0.1` answers `ping` with `pong`. The client connects, sends one
# request, reads the reply and closes; twice. `tcpdump` captures only the server's port
# (the Jupyter kernel also talks TCP over `lo`).
#
# **Predict:** how many segments does one such conversation take, from SYN to the last ACK?

# %%
result = handshake()
result

# %%
df = result.segments()
df[["frame", "t", "stream", "src", "sport", "dst", "dport", "flags", "seq", "ack", "len", "win"]]

# %% [markdown]
# **Observe.** Each connection: 3 handshake segments, request and reply (each acknowledged),
# and the FIN exchange. The `seq` and `ack` columns are *relative* numbers (Wireshark's
# convention: counted from each side's first sequence number); the real ones are in
# `seq_raw` / `ack_raw`. The `win` column is the advertised receive window in bytes: in the
# SYN and SYN-ACK it is the raw 16-bit field (never scaled there); afterwards it is the
# field shifted left by the window scale **its sender** announced in its own SYN or SYN-ACK
# (a receiver describes its own buffer, so it scales by its own shift).

# %%
handshake.check(result)   # the chapter's claims on this capture; each assert names its claim
sw = scaled_window(result)
sw.check()                # our dissector and Wireshark must read the same window in bytes
show([f"Segments per connection: {df.groupby('stream').size().to_dict()}. The first segment after "
      f"the handshake comes from {sw.sender}, whose own {sw.sender_segment} announced window scale "
      f"{sw.shift}: its window field {sw.field} means {sw.field} × 2^{sw.shift} = **{sw.window:,} bytes**"
      + (f"; Wireshark reads {sw.wireshark:,} bytes too." if sw.wireshark is not None else ".")])

# %% [markdown]
# ## 2 · SYN, SYN-ACK, ACK and the ISN arithmetic
#
# **Predict:** the client's SYN carries sequence number *x*. What does the server put in
# the acknowledgment field of its SYN-ACK? And the client in its final ACK, if the server's
# ISN is *y*?

# %%
isn = isn_table(result)
isn   # handshake.check() above asserted: ack = ISN + 1 both ways, every ISN different

# %% [markdown]
# **Explain.** A SYN counts as one byte of sequence space, so "I have received your SYN"
# is written as ISN + 1. The ISNs are unpredictable on purpose: Linux derives them from a
# keyed hash of the 4-tuple plus a clock, so an off-path attacker cannot guess them and a
# late segment of an old connection is unlikely to fit a new one.
#
# The ladder shows the first connection, time running down:

# %%
first = df[df.stream == df.stream.min()]
fig = plots.ladder(first, title="one connection: handshake, ping/pong, close")

# %% [markdown]
# ## 3 · The options in the SYNs, predicted from this machine
#
# **Predict:** on `lo` (MTU 65536) which MSS does each side announce? (The MSS is the
# largest payload: the packet size limit minus 20 bytes of IPv4 header and 20 of TCP header.)

# %%
opts = syn_options(result)
opts

# %% [markdown]
# Every number in that table comes from a rule the kernel applies to this machine's
# settings. The next cell evaluates each rule on the machine the capture was made on
# (live: this one, a moment ago) and sets it against the packet:
#
# * **MSS** (`tcp_mss_default`): min(MTU, 65535) − 40. Not 65536 − 40 = 65496 but 65495: an
#   IPv4 packet cannot exceed 65,535 bytes (16-bit total length).
# * **window scale** (`tcp_select_initial_window`, `net/ipv4/tcp_output.c`): the smallest
#   shift that lets the 16-bit window field describe the largest buffer this socket could
#   ever get. With `SO_RCVBUF` unset that is the larger of two bounds: receive
#   **autotuning** grows the buffer up to `net.ipv4.tcp_rmem[2]`, and a later
#   `setsockopt(SO_RCVBUF)` could ask for up to `net.core.rmem_max`.
# * **window** (same function): the payload share of the receive buffer (half of
#   `tcp_rmem[1]` on a fresh socket), rounded down to a multiple of the MSS, at most 65,535.
#   The server rounds to MSS − 12: when its SYN-ACK is sent, it already knows from the SYN
#   that timestamps (12 bytes in every segment) are on.
# * **SYN-ACK options** (`tcp_synack_options`): an option the SYN offered, if this side
#   allows it; the MSS is the server's own.
# * **TCP_MAXSEG read back** (`tcp_bound_to_half_wnd`): the smaller MSS minus 12 bytes of
#   timestamps, but never more than half the largest window the peer has offered.

# %%
m = result.machine_snapshot()
first_check = syn_checks(result)[0]
first_check.check(m, result.params, reference=result.reference())
rules.assert_rule(result, rules.default_wscale, first_check.syn["wscale"],
                  what="window scale in the client's SYN (SO_RCVBUF unset)");

# %%
show([f"On the machine that ran this capture (Linux {m.release}, {m.where}): `tcp_rmem[2]` = "
      f"{m.tcp_rmem[2]:,} and `rmem_max` = {m.rmem_max:,}, so the shift is chosen for "
      f"{max(m.tcp_rmem[2], m.rmem_max):,} bytes: **{first_check.syn['wscale']}**, and "
      f"65,535 × 2^{first_check.syn['wscale']} = {65535 << first_check.syn['wscale']:,} bytes is the "
      f"largest window it can announce. The reference machine has `tcp_rmem[2]` = 32 MiB (scale 10); "
      "before Linux 6.16 the default was 6 MiB (scale 7)."])

# %% [markdown]
# Window scale, MSS and SACK-permitted appear **only** in the SYN and SYN-ACK: they are
# negotiated once. Timestamps, once both sides offered them, ride in *every* later segment
# (the 12 bytes the MSS rule subtracts); `handshake.check` asserted both on this capture. SACK *blocks* are a different thing from
# SACK-permitted: the SYNs only agree that they may be used, and a receiver puts them in
# its ACKs when data arrives out of order, i.e. after a loss. Nothing is lost on `lo` here,
# so these ACKs carry none; section 5 drops a segment on purpose and shows them.
#
# ## 4 · A SYN-ACK answers the SYN
#
# Both ends above run on one kernel with the same settings, so "the server offered SACK"
# and "the client offered SACK" cannot be told apart. The next experiment separates them:
# a client in one network namespace with `net.ipv4.tcp_sack=0` and
# `net.ipv4.tcp_timestamps=0`, a server in another namespace with the defaults, joined by a
# virtual Ethernet pair (MTU 1500).
#
# **Predict:** the server has SACK and timestamps enabled. Does its SYN-ACK offer them to a
# client whose SYN did not?

# %%
bare = synack_options(client_sack=0, client_timestamps=0)
bare

# %%
syn_options(bare)

# %%
synack_options.check(bare)   # the invariant: SYN-ACK options and both ends' TCP_INFO
bare_syn = syn_options(bare).iloc[0]
sa = synack_prediction(bare)
sa.check(synack_seen(bare), "options in the SYN-ACK", reference=bare.reference())
show([f"The client's SYN offered SACK: {bare_syn['SACK permitted']}, timestamps: {bare_syn['timestamps']}; "
      f"the server (tcp_sack={sa.inputs['tcp_sack']}, tcp_timestamps={sa.inputs['tcp_timestamps']}) "
      f"answered with SACK: **{sa.value['sack_perm']}**, timestamps: **{sa.value['timestamps']}**. "
      f"TCP_INFO agrees on both ends (client {bare.data['client_tcpinfo']['opt_sack']}/"
      f"{bare.data['client_tcpinfo']['opt_timestamps']}, server {bare.data['server_tcpinfo']['opt_sack']}/"
      f"{bare.data['server_tcpinfo']['opt_timestamps']}). The server announced its own MSS, "
      f"{sa.value['mss']}, for the veth's MTU {bare.data['mtu']}, and without timestamps rounded its "
      f"window to that full MSS: {int(syn_options(bare).iloc[1]['window']):,}."])

# %% [markdown]
# **Explain.** An option is used only if both sides want it, and a server cannot offer what
# the client did not ask for: the SYN-ACK *answers* the SYN (`tcp_synack_options()` applies
# the same rule to the window scale; this experiment leaves it on). The MSS is not
# negotiated: each side announces its own, from its own MTU.
#
# ## 5 · SACK blocks come later, after a loss
#
# In a namespace whose `lo` has MTU 1500 (offloads off, so segments are real-sized), a
# client writes a dozen full segments at once, and a firewall rule drops the third of them,
# once. The server reads everything.
#
# **Predict:** the receiver gets segments 4, 5, 6, ... but not 3. Its ACKs cannot
# acknowledge beyond the hole. What else can they say?

# %%
sack = sack_blocks(sack=1)
sv = sack_view(sack)
sv.check()
sack_blocks.check(sack)
pd.DataFrame(sv.acks_with_sack).head(6)

# %%
nosack = sack_blocks(sack=0)
sack_blocks.check(nosack)
nv = sack_view(nosack)
nv.check()
show([f"With `tcp_sack=1`: the segment at relative seq {sv.lost_seq} was dropped; "
      f"**{len(sv.acks_with_sack)}** duplicate ACKs said \"up to {sv.acks_with_sack[0]['ack']}\" and carried "
      f"SACK blocks starting at {sv.acks_with_sack[0]['blocks'][0][0]}, the end of the hole, growing as more "
      f"data arrived (last: {sv.acks_with_sack[-1]['blocks']}). No ACK before the loss carried one. "
      f"With `tcp_sack=0` the SYNs offered no SACK permitted and the same loss produced "
      f"**{len(nv.acks_with_sack)}** SACK blocks: the duplicate ACKs only repeat {sv.lost_seq}."])

# %% [markdown]
# **Explain.** *SACK permitted* is negotiated once, in the SYN and SYN-ACK. *SACK blocks*
# are sent whenever the receiver holds data beyond a hole: each duplicate ACK lists the
# ranges it has, so the sender can resend only what is missing. Without SACK the sender
# sees only "still waiting for the hole" in every duplicate ACK and must guess what else arrived.
#
# ## 6 · Your turn: change the SYN with `setsockopt`
#
# `TCP_MAXSEG` set *before* `connect()` lowers the MSS the client announces.
# `SO_RCVBUF` set before `connect()` fixes the receive buffer, and the kernel picks the
# window scale from it: a small buffer needs no scaling. Pick values and press **Run**;
# each run is a fresh capture (or, in replay, the recording for those values).
#
# **Predict** before you press: with `SO_RCVBUF` = 4096, what window scale does the SYN
# carry? What does `getsockopt(SO_RCVBUF)` report afterwards?

# %%
panel = Panel(handshake, handshake.params, render=render, title="SYN options")
panel

# %% [markdown]
# nbval cannot press buttons, so the next cell calls the panel's callback directly, the way
# the button does; the invariant checks every option of the new capture against the rules.

# %%
small = panel.update(mss=536, rcvbuf=4096)
panel.show()   # what the panel shows, also kept in the saved notebook

# %%
handshake.check(small)
syn_checks(small)[0].check(small.machine_snapshot(), small.params, reference=small.reference())

# %%
big = panel.update(mss=None, rcvbuf=1048576)
handshake.check(big)
scales = {"SO_RCVBUF 4096": syn_checks(small)[0].syn["wscale"], "SO_RCVBUF 1 MiB": syn_checks(big)[0].syn["wscale"],
          "unset": syn_checks(result)[0].syn["wscale"]}
got = {"4096": small.data["client"][0]["so_rcvbuf_got"], "1 MiB": big.data["client"][0]["so_rcvbuf_got"]}
show([f"Window scale in the client's SYN: {scales}. `SO_RCVBUF` read back: 4096 → **{got['4096']:,}**, "
      f"1 MiB → **{got['1 MiB']:,}** (doubled, after capping the request at `rmem_max` = "
      f"{big.machine_snapshot().rmem_max:,}). A buffer fixed with `SO_RCVBUF` also fixes the scale: "
      "the kernel sizes it for that buffer, not for what autotuning could reach."])

# %% [markdown]
# A value the panel does not offer gets a clear message instead of a crash. The cell asks
# a panel of its own, so the one above keeps its result and shows no error you did not cause:

# %%
from helpers.errors import ParameterError
try:
    Panel(handshake, handshake.params).update(mss=12)
except ParameterError as err:
    print(err)
else:
    raise AssertionError("mss=12 must be refused")

# %% [markdown]
# > **Myth vs measurement.** "Socket buffers are what you set." Measured above: the kernel
# > stores twice the request (room for its own bookkeeping, `man 7 socket`), and first caps
# > the request at `net.core.rmem_max` (stock kernels: 212,992 bytes). And the SYN-ACK's
# > options did not follow the client's settings: the invariant checked them against the
# > *server's* rule in every capture.
#
# ## 7 · Setting `SO_RCVBUF` turns autotuning off
#
# A receive buffer left alone starts at `tcp_rmem[1]` and grows while the application keeps
# up with a fast sender (`tcp_rcv_space_adjust()`), never beyond `tcp_rmem[2]`;
# `net.core.rmem_max` plays no part in that. Once the application sets `SO_RCVBUF`, the
# kernel locks the buffer at that size.
#
# **Predict:** two receivers read the same bulk transfer as fast as they can; one left its
# buffer alone, the other set `SO_RCVBUF` to half of `tcp_rmem[1]` (the kernel doubles it,
# so both start equal). Which buffer is larger at the end?

# %%
tune = rcvbuf_autotuning()
at = autotuning(tune)
at.check(tune)

# %%
show([f"Both started at {at.unset_start:,} and {at.set_start:,} bytes; after "
      f"{at.bytes_each[0] / 2**20:,.0f} MiB the unset buffer had grown to **{at.unset_end:,}** bytes "
      f"(bound: `tcp_rmem[2]` = {tune.machine_snapshot().tcp_rmem[2]:,}), the one set with "
      f"`SO_RCVBUF` stayed at **{at.set_end:,}**."])

# %% [markdown]
# > **Myth vs measurement.** "Set a big `SO_RCVBUF` to make transfers fast." Setting it
# > switches autotuning off and fixes the window scale for that size; on a stock kernel the
# > request is also capped at `rmem_max` (212,992 → 425,984 stored), far below the 6 to
# > 32 MiB autotuning may use. Leave it unset unless you want a *small* buffer.

# %% [markdown]
# ## 8 · The same packets through Wireshark (pyshark) and scapy
#
# The DataFrame above comes from the course's own fast reader. Wireshark's dissector,
# through pyshark, and scapy read the same file; they must agree.

# %%
ws = dissect.pyshark_summary(result.pcap, display_filter="tcp", limit=None)
with pd.option_context("display.max_colwidth", 100):
    display(ws[["frame", "src", "dst", "flags", "info"]].head(10))

# %%
pkts = dissect.scapy_packets(result.pcap)
print(pkts[0].summary())
pkts[0]["TCP"].options

# %%
reader_agreement(result).check()   # also part of handshake.check(): the three readers agree

# %% [markdown]
# ## 9 · The kernel answers SYNs, not the application
#
# **Predict:** a server calls `listen()` but never `accept()`. Do the clients' `connect()`
# calls succeed?

# %%
ka = kernel_answers(clients=3)
pd.DataFrame(ka.data["ss"])

# %%
kernel_answers.check(ka)
print(f"{ka.data['connect_ok']} of {ka.data['clients']} connect() calls returned; accept queue "
      f"(Recv-Q of LISTEN) = {ka.data['listen_recv_q']}, backlog (Send-Q) = {ka.data['listen_send_q']}")

# %% [markdown]
# **Explain.** The SYN-ACK is sent by the kernel, from the listening socket's settings,
# and the final ACK moves the connection into the accept queue. `accept()` later only
# takes it out. What happens when that queue is full is chapter 01_03.
#
# ## Check your understanding
#
# **1.** A client's SYN has raw sequence number 1000. The server's ISN is 5000. What is the
# raw acknowledgment number in the client's final ACK?

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, 5001, name="final ACK number", hint="the client acknowledges the server's SYN");

# %% [markdown]
# **2.** In the capture of section 1, how many bytes of payload did the server send in all
# (both connections)? Compute it from `df` rather than counting by hand.

# %%
answer_2 = ...  # e.g. df[...]["len"].sum()

# %%
server_port = result.data["server_port"]
check_value(answer_2, int(df[df.sport == server_port]["len"].sum()), name="server payload bytes",
            hint="select the rows whose source port is the server's and sum `len`");

# %% [markdown]
# **3.** With `TCP_MAXSEG` = 1400, what MSS will the SYN-ACK (the server's answer) carry?

# %%
answer_3 = ...  # an integer

# %%
r1400 = handshake(mss=1400)
check_value(answer_3, int(syn_options(r1400).query("segment == 'SYN+ACK'").iloc[0]["MSS"]),
            name="SYN-ACK MSS", hint="the option only changes what the *client* announces");

# %% [markdown]
# **4.** A learner's Debian 12 laptop runs the stock Linux 6.1: `tcp_rmem` = 4096 131072
# 6291456 and `rmem_max` = 212992. Which window scale does a client with `SO_RCVBUF` unset
# announce there? (The checker evaluates the same kernel rule on those settings.)

# %%
answer_4 = ...  # an integer

# %%
stock = rules.Machine(release="6.1.0", sysctls={"tcp_rmem": [4096, 131072, 6291456], "rmem_max": 212992})
check_value(answer_4, rules.default_wscale(stock).value, name="window scale on stock 6.1",
            hint="the shift makes 65,535 × 2^shift cover the larger of tcp_rmem[2] and rmem_max");

# %% [markdown]
# ## Summary
# * SYN, SYN-ACK, ACK; each side acknowledges the other's ISN + 1; ISNs differ every time.
# * Every option in the SYNs follows a kernel rule on this machine's settings: MSS from the
#   MTU, window scale from the larger of `tcp_rmem[2]` and `rmem_max` (or from `SO_RCVBUF`
#   when set), the window from the buffer and the MSS. `TCP_MAXSEG` and `SO_RCVBUF` set
#   before `connect()` change what the client announces, never the server's SYN-ACK.
# * The SYN-ACK offers SACK and timestamps only if the SYN did. SACK blocks appear in
#   ACKs after a loss; SACK permitted only in the SYNs.
# * `SO_RCVBUF` is doubled, capped by `rmem_max`, and switches autotuning off; left unset,
#   the buffer grows up to `tcp_rmem[2]`.
# * The kernel completes handshakes without the application.
#
# **What's next:** 01_03 SYN queue and accept queue.

# %%
assert nothing_left_behind() == []
