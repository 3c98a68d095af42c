# %% [markdown]
# # 02_04 · Streams and framing
#
# **Objectives**
# 1. See that TCP keeps no message boundaries: several `send()` calls arrive in one
#    `recv()`, one `send()` arrives in several, and the segments on the wire follow neither.
# 2. See `send()` take fewer bytes than it was given, and what `sendall()` does about it.
# 3. Build a length-prefixed protocol with an incremental parser (a small state machine)
#    that rejects oversize lengths and foreign input with a clear error, and never buffers
#    without bound.
# 4. Run it over a real connection, however `recv()` splits the stream.
#
# **Prerequisites:** [02_03 Nagle and delayed ACK](02_03-nagle-and-delayed-ack.ipynb).
# **Time:** 35 minutes.

# %%
import pandas as pd
from helpers import rules
from helpers.notebook import mode_banner, nothing_left_behind, show
from helpers.experiments.framing import (streams, partial_writes, framed_exchange, three_views,
                                         boundaries_figure, render_streams, acks_between_sends,
                                         message_cuts, check_frames_in, queues_at_eagain,
                                         coalescing, coalescing_view)
from helpers.framing import (FrameParser, OversizeFrame, BadMagic, TruncatedFrame,
                             HEADER, MAGIC, encode, encode_all, split)
from helpers.checks import check_value
from helpers.widgets import Panel

mode_banner(needs=("live_capture", "namespaces"))

# %% [markdown]
# ## 1 · Ten sends, one recv
#
# Inside a private network namespace whose `lo` has an Ethernet-sized MTU (1500) and no
# segmentation offloads (so the capture shows real segments), a client makes ten
# `send()` calls of 100 bytes. The receiver waits until the last `send()` has returned, then
# 50 ms more, then calls `recv(65536)` until it has all 1000 bytes. (Namespaces and capture need root; without it the recording is
# replayed.)
#
# **Predict:** how many `recv()` calls does the receiver make?

# %%
many = streams(pattern="10x100", reader_delay_ms=50, recv_size=65536)
many

# %%
three_views(many).T

# %%
v = three_views(many)
streams.check(many)
assert v["send() returned"].count() == 10 and v["recv() returned"].count() == 1, "ten sends, one recv"
assert v["recv() returned"].iloc[0] == 1000
fig = boundaries_figure(many)

# %% [markdown]
# **Explain.** Each `send()` only appends bytes to the socket's send buffer; the receiver's
# kernel appends what arrives to its receive buffer; `recv()` hands over whatever is there,
# up to the size asked. While the reader slept, all ten sends' bytes piled up in one
# buffer, and nothing in it says where one send ended.
#
# The coalescing the reader saw happened in its *receive buffer*. On the wire, this run
# shows ten data segments of 100 bytes, one per `send()`, each acknowledged before the next
# left (checked in the next cell): a fresh connection on loopback acknowledges at once
# (quick-ACK mode), within microseconds, so Nagle's algorithm never had anything to hold.

# %%
acks = acks_between_sends(many)
acks.T

# %%
assert len(acks) == 10 and (acks["bytes"] == 100).all(), "ten sends, ten 100-byte segments"
assert acks["acked before the next segment"].iloc[:-1].all(), "each segment was ACKed before the next left"

# %% [markdown]
# That is a loopback artefact, not what Nagle does on a real connection. Make the receiver
# behave like a server in the middle of a conversation: one request/response exchange
# first, so its kernel treats the connection as interactive and *delays* its ACKs
# (02_03's pingpong mode). Then the same ten `send()` calls of 100 bytes, back to back.
#
# **Predict:** how many segments now, and of what sizes?

# %%
co = coalescing(nodelay=False)
cv = coalescing_view(co)
show([cv.sentence()])
coalescing.check(co)      # the first alone; the rest held until its delayed ACK, then full segments

# %%
co_nd = coalescing(nodelay=True)
show([coalescing_view(co_nd).sentence()])
coalescing.check(co_nd)   # TCP_NODELAY: one segment per send()

# %% [markdown]
# > **Myth vs measurement.** "Nagle's algorithm waits to gather small writes into one large
# > segment." Nagle has no timer of its own: it holds a small segment only while an earlier
# > small one is unacknowledged (`tcp_nagle_check()` in `net/ipv4/tcp_output.c`). Measured:
# > against a peer that acknowledged at once (the first run) nothing was held; against a
# > peer in delayed-ACK mode the first 100 bytes left alone and the other nine sends left
# > together, as one segment, the moment the delayed ACK came. The wait is the *peer's*
# > delayed-ACK timer, not Nagle's; with `TCP_NODELAY` every send is a segment.
# %% [markdown]
#
# ## 2 · One send, many segments, many recvs
#
# **Predict:** one `send()` of 20,000 bytes, a reader calling `recv(1024)` at once. How many
# segments, how many `recv()` calls?

# %%
one = streams(pattern="1x20000", reader_delay_ms=0, recv_size=1024)
streams.check(one)
v1 = three_views(one)
seg = v1["segments on the wire"].dropna()
mss = one.data["mss"]
print(f"1 send of {v1['send() returned'].sum()} B → {len(seg)} segments (largest {seg.max()} B, MSS {mss}) "
      f"→ {v1['recv() returned'].count()} recv() calls")
assert len(seg) == -(-20000 // mss) and seg.max() == mss, "the MSS cuts the send into segments"
assert v1["recv() returned"].count() >= 20000 // 1024, "recv(1024) returns at most 1024 bytes"
fig = boundaries_figure(one)

# %% [markdown]
# The same send, but a receiver that reads with a large buffer after a pause:

# %%
one_big = streams(pattern="1x20000", reader_delay_ms=50, recv_size=65536)
streams.check(one_big)
print("recv() sizes:", one_big.data["recv_sizes"], "; segments:", three_views(one_big)["segments on the wire"].count())
assert one_big.data["recv_sizes"] == [20000], "after the pause all the segments are read in one recv()"

# %% [markdown]
# **Explain.** The sender's kernel cuts the byte stream into segments of at most one MSS
# (1500 − 20 IP − 20 TCP − 12 timestamp option = 1448 bytes); the receiver's kernel glues them
# back into one stream. Neither cut is visible to the application: what `recv()` returns
# depends only on how many bytes were waiting and how many it asked for.
#
# Three sends of 3000 bytes make the point once more: three different ways to cut the same
# 9000 bytes. This reader does not wait: it sits in `recv(65536)` from the start.

# %%
mixed = streams(pattern="3x3000", reader_delay_ms=0, recv_size=65536)
streams.check(mixed)
fig = boundaries_figure(mixed)
three_views(mixed).T

# %% [markdown]
# **Observe.** Whatever the `recv()` row shows here, it is timing, not boundaries: each
# `recv()` returns what had arrived by the time the reader's thread ran, which can be one
# send's bytes, several sends' bytes, or part of one. A split that matches the sends is a
# coincidence of scheduling (the reader kept up); run it live a few times (section 6) and
# the split can change while the 9000 bytes do not.

# %%
rs = mixed.data["recv_sizes"]
print(f"this run: recv() returned {rs}; sends were {mixed.data['send_sizes']}")
assert sum(rs) == 9000 and mixed.data["digest_ok"], "the same 9000 bytes, in order, however they were cut"

# %% [markdown]
# ## 3 · `send()` may take only part of the buffer
#
# `send()` returns a number: how many bytes the kernel accepted. A client (SO_SNDBUF
# 64 KB) sends 4 MB in one non-blocking `send()` to a server that is not reading yet.
# (Plain sockets: this runs live for everyone.)
#
# **Predict:** what does that one `send()` return?

# %%
pw = partial_writes()
pw

# %%
d = pw.data
partial_writes.check(pw)   # short first send, EAGAIN, later sends found room, every byte delivered
show([f"`send()` of {d['size']:,} bytes returned {d['first_send']:,}; more sends until `EAGAIN` queued "
      f"{d['queued_before_eagain']:,} bytes in all; after the reader started, a `send()` loop needed "
      f"{d['loop_calls']} more calls; all {d['received']:,} bytes arrived."])

# %% [markdown]
# **Explain.** The first `send()` took about what fits in the send buffer (`SO_SNDBUF`, which
# the kernel doubles: checked below against `sock_setsockopt()`'s rule). Why did the later
# sends find room? At the moment of `EAGAIN` (Python: `BlockingIOError`) the experiment read,
# back to back, the sender's TCP_INFO and its two queue ioctls (`SIOCOUTQ`: bytes not yet
# acknowledged; `SIOCOUTQNSD`: bytes not yet sent), and the receiver's `SIOCINQ` (bytes
# not yet read):

# %%
m = pw.machine_snapshot()
rules.sock_setsockopt_buf(d["sndbuf_set"], m.wmem_max, which="SO_SNDBUF").check(d["sndbuf_got"], "SO_SNDBUF read back")
q = queues_at_eagain(pw)
q.table()

# %%
q.check()   # every byte accounted for; the two views agree; the unacknowledged bytes are at the receiver
show([f"Why bytes waited unsent: {q.why_unsent()} (`tcp_write_xmit()` sends the next segment only if "
      f"it fits the receiver's window and the congestion window). The {q.unacked:,} bytes sent but not "
      f"acknowledged were not on the wire: the receiver's queue held them ({q.inq:,} = {q.acked:,} "
      f"acknowledged + {q.unacked:,} not yet)."])

# %% [markdown]
# The receiver had acknowledged part of the data, and acknowledged bytes leave the sender's
# queue: that freed the room the later sends used. "Sent but not acknowledged" did *not* mean
# "in flight": on loopback a segment arrives within microseconds, and those bytes were
# already in the receiver's queue; only the receiver's ACK for them was still to come (it
# delays its ACK, and with nobody reading, its window could not move). What was not sent
# waited because the next segment did not fit the window (the sentence above says which).
# Nothing was read yet: every byte sent sits in the receiver's queue.
#
# A blocking socket would have waited instead of raising `EAGAIN`. A socket with a timeout
# (Python's `settimeout`) returns short counts too: the loop above ran on such a socket, and
# each of its `send()` calls took only part of the rest (checked below). A signal arriving
# after some bytes were queued also ends `send()` with a short count (`man 7 signal`,
# "Interruption of system calls"). Python's documentation of
# [`socket.send`](https://docs.python.org/3/library/socket.html#socket.socket.send) puts it
# plainly: it "returns the number of bytes sent. Applications are responsible for checking
# that all data has been sent". `socket.sendall()` is that loop, and the same page warns
# that when it raises "there is no way to determine how much data, if any, was successfully
# sent".

# %%
print("send() counts in the timeout loop (first 5):", d["loop_counts"][:5])
assert d["loop_calls"] > 1 and max(d["loop_counts"]) < d["size"] - d["queued_before_eagain"], \
    "every send() in the loop took less than what was left"

# %% [markdown]
# ## 4 · A length-prefixed protocol
#
# If TCP does not keep boundaries, the protocol must. The course's protocol puts a
# 6-byte header in front of every message: two magic bytes `TC`, then the payload length as
# an unsigned 32-bit big-endian integer.

# %%
frame = encode(b"hello")
print(frame, "=", frame[:2], "+ length", int.from_bytes(frame[2:6], "big"), "+", frame[6:])

# %% [markdown]
# The receiver runs a small state machine, `FrameParser`, fed with whatever `recv()`
# returned:
#
# | state | needs | then |
# |---|---|---|
# | `header` | 6 bytes (checks the magic byte by byte) | length > `max_size` → **error**; else `payload` |
# | `payload` | `length` bytes | emit the message, back to `header` |
# | `failed` | | every later `feed()` raises: the stream has lost its framing |
# | `closed` | | after `close()` at a message boundary (end of stream); `close()` inside a header or payload raises `TruncatedFrame` and leaves the parser `failed` |
#
# **Predict:** three messages, encoded back to back, fed in chunks cut at arbitrary places,
# one byte at a time, or all at once: do we get the same three messages each time?

# %%
msgs = [b"first", b"", b"x" * 100]
stream = encode_all(msgs)
ways = {"all at once": [stream], "byte by byte": [stream[i:i + 1] for i in range(len(stream))],
        "cut at 3, 7, 50": split(stream, [3, 7, 50])}
for name, chunks in ways.items():
    p = FrameParser(max_size=1024)
    out = [m for c in chunks for m in p.feed(c)]
    p.close()
    print(f"{name:16s} {len(chunks):4d} chunks → {[len(m) for m in out]} (most bytes held: {p.high_water})")
    assert out == msgs and p.high_water <= p.bound

# %% [markdown]
# Same three messages every time. "Most bytes held" is the parser's memory: a header is
# collected byte by byte (6 bytes), and a payload that arrives whole inside one chunk is
# handed over without being copied; only a payload cut by a chunk boundary is kept until its
# last byte arrives. So the parser never holds more than one header or one payload:
# `max(6, max_size)` bytes, its `bound`.

# %% [markdown]
# The tests (`tests/test_framing.py`) check the same property with *hypothesis* on
# hundreds of random message lists and random cut points.
#
# ### Refusing bad input
#
# A peer can be broken or hostile. Three cases the parser must refuse with a clear error,
# without waiting for (or storing) bytes it will never use.
#
# **Predict:** a message `ok`, then a header announcing 1 GB (the parser's limit is 1024
# bytes), then four payload bytes, all in one `feed()`. How many bytes of the 1 GB message
# does the parser keep?

# %%
errors = {}
p = FrameParser(max_size=1024)
try:
    p.feed(encode(b"ok") + HEADER.pack(MAGIC, 1_000_000_000) + b"xxxx")
except OversizeFrame as err:
    errors["oversize"] = err
    print(err, "\n  messages before the error:", err.messages, "; most bytes ever held:", p.high_water)
assert errors["oversize"].messages == [b"ok"], "the good message before the bad header is still delivered"
assert p.high_water <= HEADER.size, "never more than one header held: no payload byte of the 1 GB message"
assert p.state == "failed"

# %% [markdown]
# A peer that speaks another protocol, here HTTP:

# %%
try:
    FrameParser().feed(b"GET / HTTP/1.1\r\n")
except BadMagic as err:
    errors["bad magic"] = err
    print(err)
assert errors["bad magic"].offset == 0 and "b'GE'" in str(errors["bad magic"]), "refused at its second byte"

# %% [markdown]
# A sender that stops in the middle of a message (the end of the stream is `close()`):

# %%
p = FrameParser()
p.feed(encode(b"a complete message")[:-3])
try:
    p.close()
except TruncatedFrame as err:
    errors["truncated"] = err
    print(err)
assert set(errors) == {"oversize", "bad magic", "truncated"}
assert all(e.fix for e in errors.values()), "every error says what to do"

# %% [markdown]
# **Explain.** The oversize header is refused as soon as its 6 bytes are in, before a
# single payload byte is stored; a parser that first buffered "1 GB" would let any peer
# exhaust the server's memory with one header. The bad magic is refused at the first byte
# that cannot be `T` then `C` (`G` is already wrong; the message shows the two bytes it
# read). After an error the parser stays failed: once one length is wrong, every later
# "message" would be garbage, so the only safe move is to close the connection.
#
# ## 5 · Over a real connection
#
# 200 messages of random sizes (0 to 300 bytes), encoded as one stream, written in random
# pieces with `TCP_NODELAY`; the server calls `recv(100)` and feeds the parser. Then two bad
# clients: one sends a 5-byte message and then announces a 1 GB message, one speaks HTTP.
# (Plain sockets: live for everyone.)
#
# **Predict:** `recv(100)` cuts the stream every 100 bytes or so, through headers and
# payloads alike. Do all 200 messages come out intact? And how many bytes does the server's
# parser hold for the client that announced 1 GB?

# %%
fx = framed_exchange(messages=200, recv_size=100)
fx

# %%
d = fx.data
framed_exchange.check(fx)
print(f"{d['messages']} messages ({d['stream_bytes']:,} bytes) written in {d['send_pieces']} pieces, read in "
      f"{d['recv_calls']} recv() calls → {d['received']} messages, identical: {d['received_ok']}")
print("oversize client:", d["oversize_error"], f"(parser held at most {d['oversize_buffered']} bytes)")
print("HTTP client:    ", d["garbage_error"])
print(f"{d['recv_cuts_inside']} of the {d['recv_calls'] - 1} recv() boundaries fall inside a message")
assert d["received_ok"] and d["received"] == d["messages"]
assert d["recv_cuts_inside"] > 0, "recv() cut through messages"
assert d["oversize_buffered"] <= HEADER.size, "at most one header held for the 1 GB client"

# %% [markdown]
# Where the messages lie in the stream (6-byte header included) and where `recv()` cut it:

# %%
message_cuts(fx)

# %% [markdown]
# **Explain.** `recv(100)` knows nothing about the messages: its cuts land wherever the
# hundredth byte falls, inside headers and payloads. The parser does not care either: it
# keeps a partial header or payload across `recv()` calls and hands over a message only when
# its last byte is in, so all 200 come out identical. For the 1 GB client it never held
# more than one header (6 bytes): it delivered the 5-byte message, refused the next one as
# soon as its header was in, and stored none of the 1000 bytes that followed.

# %% [markdown]
# ## 6 · Your turn
#
# The panel runs section 1's experiment with any of the three send patterns, a reader that
# waits or not, and two `recv()` sizes. Live runs may pick any delay and size; replay offers
# the recorded ones.
#
# **Predict** before you press: three sends of 3000 bytes, a reader that waits 50 ms, then
# `recv(65536)`: how many `recv()` calls?

# %%
panel = Panel(streams, streams.params, render=render_streams, title="Sends, segments, recvs")
panel

# %% [markdown]
# nbval cannot press buttons; the next cell calls the panel's callback as the button does.

# %%
r = panel.update(pattern="3x3000", reader_delay_ms=50, recv_size=65536)
panel.show()   # what the panel shows, also kept in the saved notebook
assert r.data["recv_sizes"] == [9000], "the reader that waits gets all three sends in one recv()"

# %% [markdown]
# ## Check your understanding
#
# **1.** In section 2, one `send()` of 20,000 bytes was cut into segments of at most one
# MSS. How many payload bytes did the *last* of those segments carry? Work it out from the
# numbers printed in section 2, then check against `three_views(one)`.

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, int(three_views(one)["segments on the wire"].dropna().iloc[-1]), name="last segment",
            hint="every segment but the last is full; what is left for the last one?");

# %% [markdown]
# **2.** Write `frames_in(chunks)`: given the chunks a receiver got from `recv()` (a list
# of bytes objects; together one whole stream of the course's protocol), return the list of
# messages, using `FrameParser`. If the stream ends in the middle of a message, it must raise
# `TruncatedFrame`. The checker cuts a stream several ways, and also cuts one short.

# %%
def frames_in(chunks: list) -> list:
    raise NotImplementedError  # replace this line with your code


# %%
check_frames_in(frames_in);

# %% [markdown]
# **3.** A parser with `max_size=65536` is fed, in `recv()` chunks of 1000 bytes, a valid
# message of 40,000 bytes followed by a header announcing 70,000 bytes (and some of that
# message's payload). What is the most bytes the parser holds at any moment (`high_water`)?

# %%
answer_3 = ...  # an integer

# %%
probe = FrameParser(max_size=65536)
probe_stream = encode(bytes(40_000)) + HEADER.pack(MAGIC, 70_000) + b"z" * 5000
try:
    for c in split(probe_stream, range(1000, len(probe_stream), 1000)):
        probe.feed(c)
except OversizeFrame:
    pass
check_value(answer_3, probe.high_water, name="most bytes held",
            hint="which of the two messages does the parser ever keep in full, and why?");

# %% [markdown]
# ## Summary
# * TCP carries a byte stream. `send()` sizes, segment sizes (the MSS) and `recv()` sizes are
#   three independent cuts of it; only the order of the bytes is kept.
# * `send()` returns how many bytes it took, possibly fewer than given; `sendall()` loops.
# * Frame messages yourself: a length prefix plus an incremental parser that checks the
#   magic, refuses oversize lengths before buffering, reports truncation at EOF, and holds at
#   most one header or one payload (`max(6, max_size)` bytes).
#
# **What's next:** 02_05 backpressure: what happens when the producer is faster than the
# consumer.

# %%
assert nothing_left_behind() == []
