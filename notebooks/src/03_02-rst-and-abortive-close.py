# %% [markdown]
# # 03_02 · RST and the abortive close
#
# **Objectives**
# 1. See the three ways `close()` can end a connection (FIN, RST because data was unread, RST
#    because of `SO_LINGER(on, 0)`) and the order in which the kernel decides.
# 2. Count, in bytes, what each RST destroys.
# 3. See the RST a closed port sends, and the RST, `EPIPE` and `SIGPIPE` that meet a writer
#    whose peer has gone.
# 4. Make `close()` block with `SO_LINGER(on, N)` and predict for how long.
# 5. Let keepalive and `TCP_USER_TIMEOUT` find a peer that vanished, on a schedule computed
#    from the socket options.
#
# **Prerequisites:** [02_02 Flow control and the zero window](02_02-flow-control-and-zero-window.ipynb).
# **Time:** 30 minutes.

# %%
from IPython.display import Markdown
from helpers import rules
from helpers.notebook import mode_banner, nothing_left_behind, show
from helpers.experiments.rst import (abortive_close, abort_view, bytes_table, checked, plot_bytes, plot_ladder,
                                     render, render_linger, render_dead_peer, linger_table, sigpipe, linger_timeout, dead_peer, dead_peer_view, tcp_close,
                                     tcp_disconnect_loss, sk_stream_wait_close, tcp_keepalive_timer,
                                     tcp_write_timeout_user)
from helpers.checks import check_value, Exercise
from helpers.widgets import Panel

mode_banner(needs=("live_capture", "namespaces"))

# %% [markdown]
# ## 1 · SO_LINGER(on, 0): the abortive close
#
# Each run of `abortive_close` happens in a fresh network namespace, so the kernel counters
# it reads (`nstat`) are its own. Here a client writes 64 KiB to a server whose receive
# buffer is small and which does not read, then sets `SO_LINGER` to (on, 0 s) and closes.
#
# **Predict:** what goes on the wire instead of a FIN? How many of the 64 KiB does the
# server's application get to read?

# %%
linger0 = abortive_close(scenario="linger0")
linger0

# %%
d = linger0.data
tcp_close(d["closer_unread"], tuple(d["linger"])).check(abort_view(linger0).close_sent,
                                                        "what the client's close() sent")
tcp_disconnect_loss(d["sent"], d["closer_outq"]).check(d["delivered"], "bytes the server's application read")
show(checked(linger0))   # asserts this run's claims, then shows its table and ladder

# %% [markdown]
# **Explain.** `tcp_close()` (net/ipv4/tcp.c) checks, in this order: was data left unread
# in the receive queue? (RST); else is `SO_LINGER` on with 0 s? (RST, through
# `tcp_disconnect()`); else send FIN. `tcp_disconnect()` throws away the send queue: the
# bytes still there (`SIOCOUTQ` at the close, printed above) are lost. The peer's kernel
# keeps what was already in *its* receive queue: the server reads those bytes, and only then
# does `recv()` raise `ECONNRESET`. The client keeps no TIME_WAIT (the check looked with
# `ss`): that is why people reach for `SO_LINGER(on, 0)`, and what it costs.
# `nstat` counts this close as `TcpExtTCPAbortOnData`, not as "on close".

# %% [markdown]
# ## 2 · close() with unread data, and the read timeout
#
# The client sends a 1000-byte request; the server closes without reading it.
#
# **Predict:** FIN or RST?

# %%
unread = abortive_close(scenario="unread")
show(checked(unread))   # asserts this run's claims, then shows its table and ladder

# %% [markdown]
# RFC 2525 §2.17 asks for an RST here, because data was lost; `tcp_close()` does it and counts
# `TcpExtTCPAbortOnClose` (this namespace's own counter: exactly 1). The client's next
# `recv()` raises `ECONNRESET`: every byte of its request is lost, and it learns so.
#
# > **Myth vs measurement.** The seed notes say "a read timeout leads to close with RST".
# > The next run is that server: it reads the request, waits 0.2 s for more, times out and
# > closes.

# %%
timeout = abortive_close(scenario="read_timeout")
show(checked(timeout))   # asserts this run's claims, then shows its table and ladder

# %% [markdown]
# A FIN, no RST: nothing was unread, so `tcp_close()` had no reason to abort. The client reads
# EOF, and the server (the active closer) holds TIME_WAIT. A timeout is not what decides; the
# receive queue is.

# %% [markdown]
# ## 3 · A closed port, and writing to a peer that closed
#
# **Predict:** what does `connect()` to a port where nothing listens raise, and what answers
# the SYN?

# %%
refused = abortive_close(scenario="refused")
show(checked(refused))   # asserts this run's claims, then shows its table and ladder

# %% [markdown]
# Now the server closes first (nothing unread: FIN). The client, in CLOSE_WAIT, sends
# 1000 bytes, then again.
#
# **Predict:** which `send()` fails, and with what?

# %%
wac = abortive_close(scenario="write_after_close")
show(checked(wac))   # asserts this run's claims, then shows its table and ladder
print({k: wac.data[k] for k in ("first_send", "second_send_error", "third_send_error")})

# %% [markdown]
# **Explain.** The first `send()` only queues the bytes: it cannot know that the server's
# socket is gone. The server's kernel answers the data with RST (`TcpExtTCPAbortOnData`), and
# `tcp_reset()` (net/ipv4/tcp_input.c) leaves `EPIPE` on a socket in CLOSE_WAIT
# (`ECONNRESET` in ESTABLISHED, `ECONNREFUSED` in SYN_SENT: the closed port above). The next
# `send()` returns it. A C program gets `SIGPIPE` as well, whose default action kills it;
# Python ignores `SIGPIPE` at start-up, so you see `BrokenPipeError`. Three child processes:

# %%
sp = sigpipe()
sigpipe.check(sp)
{mode: {"exit": r["returncode"], "signal": r["signal"], "last line": r["lines"][-1]} for mode, r in sp.data.items()}

# %% [markdown]
# With `SIGPIPE` back at its default (`SIG_DFL`), the process dies in the second `send()`
# (exit −13: killed by signal 13) and never prints its last line; `send(…, MSG_NOSIGNAL)`
# gets `EPIPE` without the signal.
#
# ## 4 · SO_LINGER(on, N): a close() that blocks
#
# **Predict:** a writer with `SO_LINGER(on, 1)` closes while its reader, which never reads,
# advertises a zero window. How long does `close()` take? And if the reader reads?

# %%
lt = linger_timeout(linger_s=1)
linger_timeout.check(lt)
sk_stream_wait_close(lt.machine_snapshot(), lt.data["linger_s"]).check(lt.data["zero_window"]["close_blocked_s"],
                                                                       "close() with a zero window")
linger_table(lt)

# %% [markdown]
# **Explain.** With a non-zero linger, `tcp_close()` sends the FIN (queued behind the data)
# and `sk_stream_wait_close()` waits until the FIN is acknowledged, or `N` seconds. The zero
# window keeps both the data and the FIN from leaving, so `close()` takes `N` s; then it
# returns without an error and Linux *keeps* the data: the orphaned socket stays in
# FIN-WAIT-1 and goes on probing (no RST). With a reader that reads,
# `close()` waits only for the FIN's ACK, which the peer may delay (02_03's delayed-ACK timer).
#
# Try other linger times (plain loopback sockets: this panel always runs live, in about
# N + 0.2 s).

# %%
linger_panel = Panel(linger_timeout, linger_timeout.params, render=render_linger, title="SO_LINGER(on, N)")
linger_panel

# %%
two = linger_panel.update(linger_s=2)     # what pressing Run with N = 2 does
linger_panel.show()
linger_timeout.check(two)

# %% [markdown]
# ## 5 · A peer that vanished: keepalive and TCP_USER_TIMEOUT
#
# In a namespace the server vanishes: an iptables rule drops every packet to its port. The
# client has `SO_KEEPALIVE` with `TCP_KEEPIDLE` 1 s, `TCP_KEEPINTVL` 1 s, `TCP_KEEPCNT` 2.
#
# **Predict:** when does the client's blocked `recv()` return, and with what error?

# %%
ka = dead_peer(mechanism="keepalive")
dead_peer.check(ka)
kd = ka.data
tcp_keepalive_timer(ka.machine_snapshot(), kd["idle"], kd["intvl"], kd["count"]).check(
    kd["since_connect_s"], "from connect() to ETIMEDOUT")
kv = dead_peer_view(ka)
print(f"SYN-ACK at {kv.synack_t:.3f} s; keepalive probes at {', '.join(f'{t:.3f}' for t in kv.probes)} s; "
      f"ETIMEDOUT {kd['since_connect_s']:.3f} s after connect(); RST from the client: {kv.rst_from_client}")
show([plot_ladder(ka)])

# %% [markdown]
# The client sent `TCP_KEEPCNT` probes (empty segments at the last acknowledged byte − 1),
# the first `TCP_KEEPIDLE` after the last segment it received, then one per
# `TCP_KEEPINTVL`; when the last went unanswered for another interval, `tcp_keepalive_timer()`
# sent an RST and reported `ETIMEDOUT`. Without the socket options, the namespace's sysctls
# (`net.ipv4.tcp_keepalive_time`, `_probes`, `_intvl`) feed the same rule:

# %%
print(rules.keepalive_deadline(ka.machine_snapshot()).report())

# %% [markdown]
# Keepalive only runs on an idle connection. A client with data in flight to a vanished peer
# retransmits instead; `TCP_USER_TIMEOUT` (the experiment's default, 1500 ms) bounds
# how long:

# %%
ut = dead_peer(mechanism="user_timeout")
dead_peer.check(ut)
uv = dead_peer_view(ut)
tcp_write_timeout_user(ut.machine_snapshot(), ut.data["user_timeout_ms"]).check(
    uv.abort_after_first_rto, "from the first RTO retransmission to ETIMEDOUT")
Markdown(f"The data left at {uv.retrans[0]:.3f} s and again at {', '.join(f'{t:.3f}' for t in uv.retrans[1:])} s "
         f"({uv.loss_probes} tail loss probe(s) first, then the timeouts); `ETIMEDOUT` came "
         f"{ut.data['since_send_s']:.3f} s after `send()`: {uv.abort_after_first_rto:.3f} s after the first "
         f"timeout's retransmission, plus the {uv.first_rto - uv.retrans[0]:.3f} s before it.")

# %% [markdown]
# **Explain.** The first copy after the original is a *tail loss probe* (02_02), not a
# timeout. The clock of `TCP_USER_TIMEOUT` starts at the first retransmission by the
# retransmission timer (`retrans_stamp`, set in `tcp_retransmit_skb()`; the probe goes through
# `__tcp_retransmit_skb()` and does not set it). From there the retransmissions double, the
# last timer is clamped to end when `TCP_USER_TIMEOUT` has passed
# (`tcp_clamp_rto_to_user_timeout()` in net/ipv4/tcp_timer.c), and the connection is dropped
# with `ETIMEDOUT`, without an RST (counted as `TcpExtTCPAbortOnTimeout`). So "send() to error"
# is the user timeout plus the wait for the first timeout (the sentence above).
#
# Change the keepalive settings or the user timeout (live as root; a replay offers the
# recorded values):

# %%
dead_panel = Panel(dead_peer, dead_peer.params, render=render_dead_peer, title="a vanished peer")
dead_panel

# %%
dead_panel.update(mechanism="keepalive")     # what pressing Run does
dead_panel.show()
dead_peer.check(dead_panel.result)

# %% [markdown]
# ## 6 · What each ending delivers

# %%
runs = [linger0, unread, timeout, wac]
show([bytes_table(runs + [refused]), plot_bytes(runs)])

# %% [markdown]
# ## 7 · Your turn: pick a scenario
#
# Pick a scenario and press **Run** (about a second live).

# %%
panel = Panel(abortive_close, abortive_close.params, render=render, title="RST and abortive close")
panel

# %% [markdown]
# nbval cannot press buttons, so the next cell calls the panel's callback directly.

# %%
again = panel.update(scenario="unread")
panel.show()

# %%
abortive_close.check(again)

# %% [markdown]
# ## Check your understanding
#
# **1.** A server sets `SO_LINGER(on, 0)` but closes with 10 unread bytes in its receive
# queue. Which counter counts its RST: `TCPAbortOnClose` or `TCPAbortOnData`?

# %%
answer_1 = ...  # "TCPAbortOnClose" or "TCPAbortOnData"

# %%
Exercise("the counter", hint="tcp_close() checks one condition before the other (section 1)",
         test=lambda a: str(a).strip().removeprefix("TcpExt") == tcp_close(10, (1, 0)).value[5:-1],
         ok="right: unread data is checked first, so it is an abort on close").check(answer_1);

# %% [markdown]
# **2.** With `TCP_KEEPIDLE` 5 s, `TCP_KEEPINTVL` 2 s and `TCP_KEEPCNT` 3, how many seconds
# after the last segment received does keepalive report a vanished peer?

# %%
answer_2 = ...  # a number of seconds

# %%
check_value(answer_2, rules.keepalive_deadline(ka.machine_snapshot(), 5, 2, 3).value, name="keepalive deadline",
            hint="the first probe after the idle time, then one interval per probe");

# %% [markdown]
# ## Summary
# * `close()` sends RST instead of FIN when data was left unread (`TCPAbortOnClose`) or with
#   `SO_LINGER(on, 0)` (`TCPAbortOnData`); otherwise FIN, whatever timed out before.
# * An RST destroys the closer's send queue and the data in flight to it; the peer reads what
#   its own queue already held, then gets `ECONNRESET` (or `EPIPE` in CLOSE_WAIT,
#   `ECONNREFUSED` while connecting). No TIME_WAIT follows an RST.
# * After the peer's FIN, the first `send()` succeeds, the RST comes back, the next `send()`
#   fails with `EPIPE` and `SIGPIPE` (Python ignores the signal; `MSG_NOSIGNAL` avoids it).
# * `SO_LINGER(on, N)` makes `close()` wait up to N s for the FIN's ACK; Linux keeps the data.
# * A vanished peer is found by keepalive after idle + count × interval, or with data in
#   flight by `TCP_USER_TIMEOUT`; both report `ETIMEDOUT`.
#
# **What's next:** [03_03 The 4-tuple and port reuse](03_03-four-tuple-and-port-reuse.ipynb).

# %%
assert nothing_left_behind() == []
