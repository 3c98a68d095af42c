# %% [markdown]
# # 01_02 · The three-way handshake
#
# **Objectives**
# 1. Capture a real connection and read its SYN, SYN-ACK and ACK.
# 2. Check the arithmetic: each side acknowledges the other's initial sequence number + 1.
# 3. Read the options the two sides negotiate (MSS, window scale, SACK, timestamps), and
#    change two of them with `setsockopt` before `connect()`.
# 4. See the same packets through three tools: the course's dissector, pyshark (Wireshark)
#    and scapy.
# 5. See that the kernel answers SYNs without the application.
#
# **Prerequisites:** [01_01 Sockets are file descriptors](01_01-sockets-are-file-descriptors.ipynb).
# **Time:** 30 minutes.

# %%
import pandas as pd
from helpers.notebook import mode_banner, nothing_left_behind
from helpers.experiments.handshake import (handshake, kernel_answers, syn_options, render, handshakes,
                                           default_wscale)
from helpers import dissect, plots
from helpers.checks import check_value
from helpers.widgets import Panel

mode_banner()

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
# SYN and SYN-ACK it is the raw 16-bit field (never scaled there), afterwards the field
# shifted by the window scale the peer announced, which is why 64 × 2¹⁰ = 65536 appears.

# %%
per_stream = df.groupby("stream").size()
print("segments per connection:", per_stream.to_dict())
assert per_stream.between(8, 12).all(), "connect + ping/pong + close takes about ten segments"
handshake.check(result)   # the chapter's claims on this capture; each assert names its claim

# %% [markdown]
# ## 2 · SYN, SYN-ACK, ACK and the ISN arithmetic
#
# **Predict:** the client's SYN carries sequence number *x*. What does the server put in
# the acknowledgment field of its SYN-ACK? And the client in its final ACK, if the server's
# ISN is *y*?

# %%
rows = []
for stream, (syn, synack, ack) in handshakes(df).items():
    rows.append({"stream": stream, "client ISN x": syn.seq_raw, "SYN-ACK ack": synack.ack_raw,
                 "server ISN y": synack.seq_raw, "final ACK ack": ack.ack_raw})
    assert (syn["flags"], synack["flags"], ack["flags"]) == ("SYN", "SYN+ACK", "ACK")
    assert synack.ack_raw == (syn.seq_raw + 1) % 2**32
    assert ack.ack_raw == (synack.seq_raw + 1) % 2**32
isn = pd.DataFrame(rows)
isn

# %%
assert isn["client ISN x"].nunique() == len(isn) and isn["server ISN y"].nunique() == len(isn)
assert not set(isn["client ISN x"]) & set(isn["server ISN y"])
print("the SYN consumes one sequence number: ack = ISN + 1 on both sides; all ISNs differ")

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
# ## 3 · The options in the SYNs
#
# **Predict:** on `lo` (MTU 65536) which MSS does each side announce? (The MSS is the
# largest payload: the packet size limit minus 20 bytes of IPv4 header and 20 of TCP header.)

# %%
opts = syn_options(result)
opts

# %%
mtu = result.data["lo_mtu"]
assert (opts["MSS"] == min(mtu, 65535) - 40).all(), "MSS = min(MTU, 65535) - 40 on lo by default"
assert opts["SACK permitted"].all() and opts["timestamps"].all() and opts["window scale"].notna().all()
print(f"lo MTU {mtu}; MSS {opts['MSS'].iloc[0]} both ways, SACK permitted, timestamps on, window scale "
      f"{sorted(set(opts['window scale']))}")

# %% [markdown]
# **Explain.** Not 65536 − 40 = 65496 but 65495: an IPv4 packet cannot exceed 65535 bytes
# (its total-length field has 16 bits), so Linux caps the MTU it uses at 65535 before
# subtracting the headers. The MSS tells the peer the largest segment payload this side
# can receive; TCP options count against it, so with 12 bytes of timestamps in every
# segment each one carries at most MSS − 12 bytes of data.
#
# The window scale is not arbitrary either. Without `SO_RCVBUF`, the receive buffer may
# grow (autotuning) up to the largest of `net.ipv4.tcp_rmem[2]` and `net.core.rmem_max`,
# and the kernel offers the smallest shift that lets the 16-bit window field describe that:

# %%
rmem = result.data["tcp_rmem"]
want = default_wscale(rmem[2], result.data["rmem_max"])
print(f"tcp_rmem max {rmem[2]:,} bytes, rmem_max {result.data['rmem_max']:,} → "
      f"shift {want}: 65535 << {want} = {65535 << want:,} bytes")
assert (opts["window scale"] == want).all()

# %% [markdown]
# Window scale lets the 16-bit window field describe buffers larger than 64 KB (shift
# left by the scale). SACK permitted and timestamps are offered in the SYN and used only
# if both sides offer them. None of these appear in later segments except timestamps.
#
# ## 4 · Your turn: change the SYN with `setsockopt`
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
# the button does, and asserts on what it returns.

# %%
small = panel.update(mss=536, rcvbuf=4096)
panel.show()   # what the panel shows, also kept in the saved notebook

# %%
syn = syn_options(small).query("segment == 'SYN'").iloc[0]
client = small.data["client"][0]
print(f"SO_RCVBUF set 4096 → getsockopt says {client['so_rcvbuf_got']}; "
      f"TCP_MAXSEG set 536 → getsockopt says {client['tcp_maxseg_got']} (536 − 12 bytes of timestamps)")
assert syn["MSS"] == 536, "TCP_MAXSEG before connect sets the SYN's MSS"
assert syn["window scale"] == 0, "a 4 KB receive buffer needs no window scaling"
assert client["so_rcvbuf_got"] == 2 * 4096, "the kernel doubles SO_RCVBUF"
assert client["tcp_maxseg_got"] == 536 - 12
synack_cols = ["MSS", "window scale", "window", "SACK permitted"]
small_synack = syn_options(small).query("segment == 'SYN+ACK'")[synack_cols].iloc[0]
default_synack = syn_options(result).query("segment == 'SYN+ACK'")[synack_cols].iloc[0]
assert small_synack.equals(default_synack), "the client's options do not change the server's SYN-ACK"
big = panel.update(mss=None, rcvbuf=1048576)
big_syn = syn_options(big).query("segment == 'SYN'").iloc[0]
assert big_syn["window scale"] > syn["window scale"]
default_syn = syn_options(result).query("segment == 'SYN'").iloc[0]
assert big_syn["window scale"] < default_syn["window scale"], \
    "a fixed 1 MB buffer scales less than the default autotuned maximum"
print(f"window scale: rcvbuf 4096 → {syn['window scale']}, 1 MB → {big_syn['window scale']}, "
      f"default → {default_syn['window scale']}")

# %% [markdown]
# > **Myth vs measurement.** "Socket buffers are what you set." Measured: `SO_RCVBUF`
# > 4096 reads back as 8192: the kernel doubles the value to leave room for its own
# > bookkeeping (`man 7 socket`). And the SYN-ACK's options did not change at all
# > (asserted above): they are the *server's* choices.
#
# A value the panel does not offer gets a clear message instead of a crash:

# %%
from helpers.errors import ParameterError
try:
    panel.update(mss=12)
except ParameterError as err:
    print(err)
else:
    raise AssertionError("mss=12 must be refused")

# %% [markdown]
# ## 5 · The same packets through Wireshark (pyshark) and scapy
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
assert len(ws) == len(df) == len(pkts)
assert [p["TCP"].seq for p in pkts] == list(df.seq_raw)
assert list(ws["frame"]) == list(df["frame"]) and list(ws["flags"]) == list(df["flags"])
ws_seq = ws["info"].str.extract(r"Seq=(\d+)")[0].astype(int)
assert list(ws_seq) == list(df["seq"]), "Wireshark's relative Seq= equals the DataFrame's seq"
mss_scapy = dict(pkts[0]["TCP"].options)["MSS"]
assert mss_scapy == df.iloc[0].mss
print(f"{len(df)} segments, identical in all three readers; scapy reads MSS {mss_scapy} too")

# %% [markdown]
# ## 6 · The kernel answers SYNs, not the application
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
# ## Summary
# * SYN, SYN-ACK, ACK; each side acknowledges the other's ISN + 1; ISNs differ every time.
# * The SYNs carry MSS, window scale, SACK permitted and timestamps; `TCP_MAXSEG` and
#   `SO_RCVBUF` set before `connect()` change what the client announces.
# * The kernel completes handshakes without the application.
#
# **What's next:** 01_03 SYN queue and accept queue.

# %%
assert nothing_left_behind() == []
