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
from helpers.notebook import mode_banner, nothing_left_behind
from helpers.experiments.framing import (streams, partial_writes, framed_exchange, three_views,
                                         boundaries_figure, render_streams)
from helpers.framing import (FrameParser, FramingError, OversizeFrame, BadMagic, TruncatedFrame,
                             HEADER, MAGIC, encode, encode_all, split)
from helpers.checks import check, check_value
from helpers.widgets import Panel

mode_banner()

# %% [markdown]
# ## 1 · Ten sends, one recv
#
# Inside a private network namespace whose `lo` has an Ethernet-sized MTU (1500) and no
# segmentation offloads (so the capture shows real segments), a client makes ten
# `send()` calls of 100 bytes. The receiver sleeps 50 ms, then calls `recv(65536)` until it
# has all 1000 bytes. (Namespaces and capture need root; without it the recording is
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
assert v["segments on the wire"].count() > 1, "the sends did not become one segment"
fig = boundaries_figure(many)

# %% [markdown]
# **Explain.** Each `send()` only appends bytes to the socket's send buffer; the receiver's
# kernel appends what arrives to its receive buffer; `recv()` hands over whatever is there,
# up to the size asked. While the reader slept, all ten sends' bytes piled up in one
# buffer, and nothing in it says where one send ended.
#
# > **Myth vs measurement.** "Nagle's algorithm waits to gather small writes into one large
# > segment." Measured: the ten 100-byte sends left as separate segments (asserted above:
# > more than one). Nagle does not wait to gather; it only holds a small segment while
# > earlier data is unacknowledged, and on this path every ACK came back before the next
# > `send()`. The coalescing the reader saw happened in its *receive buffer*.
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
assert one_big.data["recv_sizes"] == [20000], "after the pause the 14 segments are read in one recv()"

# %% [markdown]
# **Explain.** The sender's kernel cuts the byte stream into segments of at most one MSS
# (1500 − 20 IP − 20 TCP − 12 timestamp option = 1448 bytes); the receiver's kernel glues them
# back into one stream. Neither cut is visible to the application: what `recv()` returns
# depends only on how many bytes were waiting and how many it asked for.
#
# Three sends of 3000 bytes make the point once more: three different ways to cut the same
# 9000 bytes.

# %%
mixed = streams(pattern="3x3000", reader_delay_ms=0, recv_size=65536)
streams.check(mixed)
fig = boundaries_figure(mixed)
three_views(mixed).T

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
partial_writes.check(pw)
print(f"send({d['size']:,} B) returned {d['first_send']:,}; more sends until EAGAIN queued "
      f"{d['queued_before_eagain']:,} B in all; after the reader started, a send() loop needed "
      f"{d['loop_calls']} more calls; all {d['received']:,} bytes arrived")
assert d["first_send"] < d["size"] and d["eagain"]
assert d["loop_calls"] > 1 and d["received"] == d["size"]

# %% [markdown]
# **Explain.** The first `send()` took about what fits in the send buffer (SO_SNDBUF 64 KB,
# which the kernel doubles: 128 KB read back, asserted below); a few more sends filled the
# receiver's buffer too; then `EAGAIN` (Python: `BlockingIOError`). A blocking socket would have waited
# instead, but a socket with a timeout (Python's `settimeout`) or a signal can also return a
# short count. Code that ignores the return value of `send()` loses data.
# `socket.sendall()` is the loop: call `send()` with the rest until nothing is left (it
# raises on error, and then you cannot know how much was sent).

# %%
assert d["sndbuf_got"] == 2 * d["sndbuf_set"], "the kernel doubles SO_SNDBUF"
assert abs(d["first_send"] - d["sndbuf_got"]) < 0.25 * d["sndbuf_got"], "the first send() took about one send buffer"

# %% [markdown]
# ## 4 · A length-prefixed protocol
#
# If TCP does not keep boundaries, the protocol must. The course's protocol puts a
# 6-byte header in front of every message: two magic bytes `TC`, then the payload length as
# an unsigned 32-bit big-endian integer.

# %%
frame = encode(b"hello")
print(frame, "=", frame[:2], "+ length", int.from_bytes(frame[2:6], "big"), "+", frame[6:])
assert HEADER.size == 6 and frame[:2] == MAGIC and len(frame) == 6 + 5

# %% [markdown]
# The receiver runs a small state machine, `FrameParser`, fed with whatever `recv()`
# returned:
#
# | state | needs | then |
# |---|---|---|
# | `header` | 6 bytes (checks the magic byte by byte) | length > `max_size` → **error**; else `payload` |
# | `payload` | `length` bytes | emit the message, back to `header` |
# | `failed` | | every later `feed()` raises: the stream has lost its framing |
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
# The tests (`tests/test_framing.py`) check the same property with *hypothesis* on
# hundreds of random message lists and random cut points.
#
# ### Refusing bad input
#
# A peer can be broken or hostile. Three cases the parser must refuse with a clear error,
# without waiting for (or storing) bytes it will never use:

# %%
errors = {}
p = FrameParser(max_size=1024)
try:
    p.feed(encode(b"ok") + HEADER.pack(MAGIC, 1_000_000_000) + b"xxxx")
except OversizeFrame as err:
    errors["oversize"] = err
    print(err, "\n  messages before the error:", err.messages, "; bytes held:", p.buffered)
assert p.buffered == 0 and errors["oversize"].messages == [b"ok"]

try:
    FrameParser().feed(b"GET / HTTP/1.1\r\n")
except BadMagic as err:
    errors["bad magic"] = err
    print(err)

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
# exhaust the server's memory with one header. The bad magic is refused at the first wrong
# byte. After an error the parser stays failed: once one length is wrong, every later
# "message" would be garbage, so the only safe move is to close the connection.
#
# ## 5 · Over a real connection
#
# 200 messages of random sizes (0 to 300 bytes), encoded as one stream, written in random
# pieces with `TCP_NODELAY`; the server calls `recv(100)` and feeds the parser. Then two bad
# clients: one announces a 1 GB message, one speaks HTTP. (Plain sockets: live for everyone.)

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
assert d["received_ok"] and d["recv_calls"] != d["messages"]
assert d["oversize_buffered"] <= HEADER.size + d["max_size"]

# %%
sizes = pd.DataFrame({"message sizes (first 10)": d["message_sizes"][:10],
                      "recv() sizes (first 10)": d["recv_sizes"][:10]})
sizes.T

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
# **1.** In section 2, one `send()` of 20,000 bytes became how many segments on the wire?
# Compute it from `one` (hint: `three_views(one)`).

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, int(three_views(one)["segments on the wire"].count()), name="segments",
            hint="count the non-empty entries of the 'segments on the wire' column");

# %% [markdown]
# **2.** Write `frames_in(data)`: it returns the list of messages in `data`, a complete
# stream of the course's protocol, using `FrameParser`. The checker feeds it a stream.

# %%
def frames_in(data: bytes) -> list:
    ...  # your code


# %%
sample = [b"alpha", b"", b"gamma" * 50]
check(lambda: ... if frames_in(encode_all(sample)) is None else frames_in(encode_all(sample)) == sample,
      "right: the parser returns each message exactly as it was sent",
      "not yet: create a FrameParser, feed it the data, collect what feed() returns, then close()");

# %% [markdown]
# **3.** A header announces 70,000 bytes and the parser has `max_size=65536`. How many
# bytes of that message's payload does the parser store before refusing it?

# %%
answer_3 = ...  # an integer

# %%
probe = FrameParser(max_size=65536)
try:
    probe.feed(HEADER.pack(MAGIC, 70_000) + b"z" * 500)
except OversizeFrame:
    pass
check_value(answer_3, max(0, probe.high_water - HEADER.size), name="payload bytes stored",
            hint="the length is checked as soon as the 6-byte header is complete");

# %% [markdown]
# ## Summary
# * TCP carries a byte stream. `send()` sizes, segment sizes (the MSS) and `recv()` sizes are
#   three independent cuts of it; only the order of the bytes is kept.
# * `send()` returns how many bytes it took, possibly fewer than given; `sendall()` loops.
# * Frame messages yourself: a length prefix plus an incremental parser that checks the
#   magic, refuses oversize lengths before buffering, reports truncation at EOF, and holds at
#   most one header + `max_size` bytes.
#
# **What's next:** 02_05 backpressure: what happens when the producer is faster than the
# consumer.

# %%
assert nothing_left_behind() == []
