# %% [markdown]
# # 01_04 · SYN flood and SYN cookies
#
# **Objectives**
# 1. Flood a listener with spoofed SYNs, inside a private namespace, and watch its queue of
#    half-open connections (SYN-RECV) fill up and stop.
# 2. Measure what a full queue costs legitimate clients, with SYN cookies off and on, in the
#    kernel's own counters (`TCPReqQFullDrop`, `ListenDrops`, `SyncookiesSent`/`Recv`).
# 3. Find what limits the half-open queue: `listen()`'s backlog, and, without cookies, one
#    more rule.
# 4. Decode a SYN cookie from the SYN-ACKs in a capture: what it encodes and what it costs.
# 5. Measure how long an unanswered half-open entry lives, and why a flood shortens it.
#
# **Prerequisites:** [01_02 The three-way handshake](01_02-three-way-handshake.ipynb),
# [01_03 SYN queue and accept queue](01_03-syn-queue-and-accept-queue.ipynb).
# **Time:** 45 minutes.
#
# Everything in this chapter happens inside a network namespace the course creates and
# deletes: its own `lo`, its own counters, its own `tcp_syncookies`. Your machine's settings
# are never touched, and the flood code refuses any other target (section 0).

# %%
import textwrap
import pandas as pd
from helpers.notebook import mode_banner, nothing_left_behind
from helpers.experiments.synflood import (syn_flood, syn_cookie_anatomy, half_open_lifetime, send_flood,
                                          outcome_table, flood_plot, probe_table, render, queue_caps,
                                          lifetime_table, lifetime_plot, client_max_window,
                                          mss_index, MSSTAB, MAX_FLOOD, MAX_SECONDS, SPOOF_NET)
from helpers.errors import UnsafeTargetError
from helpers.checks import check_value
from helpers.widgets import Panel

mode_banner(needs=("live_capture", "namespaces"))

# %% [markdown]
# ## 0 · A flood that can only hit its own namespace
#
# The flood sends SYNs from spoofed addresses in the private range `10.99.0.0/16` through a
# raw socket. Before it builds a single packet it calls a guard that refuses any target that
# is not `127.0.0.0/8` *inside* a namespace this very process created and still holds open,
# and any count or duration beyond its bounds. Try it: none of these sends anything.

# %%
attempts = [
    dict(ns=None, target="8.8.8.8", count=100),        # a public address
    dict(ns=None, target="192.168.1.1", count=100),    # a private address on your network
    dict(ns=None, target="127.0.0.1", count=100),      # the host's own lo, outside any namespace
    dict(ns="default", target="127.0.0.1", count=100), # a namespace name is not enough
    dict(ns=None, target="127.0.0.1", count=MAX_FLOOD + 1),
]
refused = []
for a in attempts:
    try:
        send_flood(a["ns"], 80, a["count"], target=a["target"])
    except UnsafeTargetError as err:
        refused.append(err.problem.removeprefix("refusing to send spoofed SYNs: "))
        print(f"ns={a['ns']!s}, target={a['target']}, count={a['count']}: refused")
        print(textwrap.fill(err.problem.removeprefix("refusing to send spoofed SYNs: "), 96,
                            initial_indent="    ", subsequent_indent="    "))

# %%
assert len(refused) == len(attempts), "every hostile target must be refused"
print(f"bounds: at most {MAX_FLOOD} SYNs and {MAX_SECONDS:g} s per flood; spoofed sources only from {SPOOF_NET}")

# %% [markdown]
# Inside the namespace, `10.99.0.0/16` is routed to `lo`. The listener's SYN-ACKs to those
# addresses leave through `lo`, come back in, are not addressed to this machine and are
# dropped: nobody ever answers them, so each half-open entry stays, which is exactly what an
# attacker's spoofed SYNs do to a real server.
#
# ## 1 · The flood, SYN cookies off
#
# A listener on `127.0.0.1` calls `listen(16)` and never calls `accept()`. With
# `net.ipv4.tcp_syncookies = 0` inside the namespace, a Python loop sends 2000 spoofed SYNs
# as fast as it can (the run below prints how long that took); then 10 legitimate clients
# try to connect and get 0.15 s (their first SYN retry would come only after 1 s).
#
# **Predict:** how many half-open (SYN-RECV) entries does the listener hold after the flood?
# How many of the 10 legitimate clients get in?

# %%
off = syn_flood(cookies=0, flood=2000, backlog=16)
off

# %%
outcome_table(off)

# %%
d = off.data
syn_flood.check(off)     # the chapter's claims on this run; each assert names its claim
assert d["ss_syn_recv"] == 16 + 1, "the half-open queue stops at backlog + 1"
assert d["counters_flood"]["TcpExtTCPReqQFullDrop"] == 2000 - 17, "every later SYN is dropped, and counted"
assert sum(c["connected"] for c in d["legit"]) == 0, "no legitimate client gets in"
assert d["counters_legit"]["TcpExtTCPReqQFullDrop"] == len(d["legit"]) == 10, "each legitimate SYN was dropped too"
print(f"{d['flood']['sent']} SYNs sent in {d['flood']['send_seconds'] * 1000:.0f} ms of sending "
      f"({d['flood']['wall_seconds'] * 1000:.0f} ms with the 20 samples of the queue)")
print(f"SYN-RECV: {d['ss_syn_recv']} entries; TCPReqQFullDrop: {d['counters_flood']['TcpExtTCPReqQFullDrop']} during "
      f"the flood, {d['counters_legit']['TcpExtTCPReqQFullDrop']} after it; legitimate clients connected: 0/{len(d['legit'])}")

# %% [markdown]
# **Observe.** The queue stopped at 17, one more than the backlog: a SYN finds the queue
# "full" only when it already holds *more* than `backlog` entries (the same `backlog + 1`
# you met for the accept queue in 01_03). Every SYN after that was dropped without an
# answer; the kernel counts each in `TcpExtTCPReqQFullDrop` (and `TcpExtListenDrops`). The
# legitimate clients' SYNs are dropped just the same (10 more `TCPReqQFullDrop` after the
# flood, one per client): the kernel cannot tell them apart.
#
# The capture agrees: 2000 spoofed SYNs, but SYN-ACKs to only 17 of their sources.

# %%
df_off = off.segments()
spoofed_syns = df_off[df_off["src"].str.startswith("10.99.") & (df_off["flags"] == "SYN")]
answered = df_off[df_off["dst"].str.startswith("10.99.") & (df_off["flags"] == "SYN+ACK")]
print(f"{len(spoofed_syns)} spoofed SYNs captured, {answered[['dst', 'dport']].drop_duplicates().shape[0]} "
      f"of them answered")
assert len(spoofed_syns) == 2000 and answered[["dst", "dport"]].drop_duplicates().shape[0] == 17
df_off[["t", "src", "sport", "dst", "dport", "flags", "seq_raw", "mss"]].head(4)

# %% [markdown]
# ## 2 · The same flood, SYN cookies on
#
# **Predict:** with `tcp_syncookies = 1`, does the queue grow past 17? Do the legitimate
# clients get in?

# %%
on = syn_flood(cookies=1, flood=2000, backlog=16)
on

# %%
outcome_table(on)

# %%
d = on.data
syn_flood.check(on)
assert d["ss_syn_recv"] == 17, "cookies do not enlarge the queue"
assert d["counters_flood"]["TcpExtSyncookiesSent"] == 2000 - 17, "every SYN beyond the full queue gets a cookie"
assert d["counters_flood"]["TcpExtTCPReqQFullDrop"] == 0, "and none is dropped"
assert sum(c["connected"] for c in d["legit"]) == 10, "every legitimate client gets in"
assert d["counters_legit"]["TcpExtSyncookiesRecv"] == 10, "each through a cookie it sent back"
print(f"SyncookiesSent during the flood: {d['counters_flood']['TcpExtSyncookiesSent']}; "
      f"legitimate clients: 10/10 in at most {max(c['ms'] for c in d['legit']):.2f} ms; "
      f"SyncookiesRecv: {d['counters_legit']['TcpExtSyncookiesRecv']}")

# %% [markdown]
# **Explain.** The queue still stopped at 17. What changed is the answer to the 18th SYN:
# instead of dropping it, the kernel answered with a SYN-ACK whose sequence number (the
# *cookie*) encodes what it needs to rebuild the connection later, and then *forgot* the
# SYN. A spoofed source never answers, so nothing more happens. A real client sends back its
# ACK, acknowledging cookie + 1; the kernel checks the cookie, rebuilds the connection and
# puts it straight into the accept queue (`SyncookiesRecv`). The flood costs the server one
# SYN-ACK per SYN and no memory.
#
# ## 3 · A bigger backlog
#
# With `listen(16)` the queue stopped at 17. Now `listen(1024)`, the same 2000 SYNs, once with
# cookies off and once on. The namespace sets `net.ipv4.tcp_max_syn_backlog = 256`.
# **Predict:** does the queue reach 1025 in both runs?

# %%
big_off = syn_flood(cookies=0, flood=2000, backlog=1024)
big_on = syn_flood(cookies=1, flood=2000, backlog=1024)
pd.DataFrame({("cookies on" if r.params["cookies"] else "cookies off"): outcome_table(r).set_index("measurement")["value"]
              for r in (big_off, big_on)})

# %%
for r in (big_off, big_on):
    syn_flood.check(r)
m = big_off.data["max_syn_backlog"]
assert big_off.data["ss_syn_recv"] == m - m // 4 + 1 == 193, "cookies off: stops once more than ¾ of the sysctl"
assert big_off.data["counters_flood"]["TcpExtTCPReqQFullDrop"] == 0, "the queue was never full"
assert big_off.data["counters_flood"]["TcpExtListenDrops"] == 2000 - 193, "yet 1807 SYNs were dropped"
assert big_on.data["ss_syn_recv"] == 1024 + 1, "cookies on: the ¾ rule does not apply"
print(f"tcp_max_syn_backlog = {m}: cookies off → {big_off.data['ss_syn_recv']} = {m} − {m}/4 + 1; "
      f"cookies on → {big_on.data['ss_syn_recv']} = 1024 + 1")

# %% [markdown]
# **Explain.** Without cookies, Linux keeps the last quarter of `tcp_max_syn_backlog` for
# peers it has already seen complete a connection ("proven" peers, in `tcp_input.c`): once the queue
# holds more than `256 − 256/4 = 192` entries, a SYN from anyone else is dropped. That drop is
# counted only in `ListenDrops`, not in `TCPReqQFullDrop`: the queue was not full. With
# cookies on, this rule is skipped; the queue fills to `backlog + 1` and cookies take over.
# So the half-open queue is bounded by `listen()`'s backlog, and without cookies also by
# `tcp_max_syn_backlog`; there is no separate "SYN queue size" to set.
#
# The four runs side by side: the flood sampled the queue and the counters 20 times as it went.
# Each plot is one run. The blue line is the queue (SYN-RECV entries); the green dotted line
# counts cookies sent, the red dash-dot line SYNs dropped; the grey dashed line is the cap
# the run should reach.

# %%
fig = flood_plot([off, on, big_off, big_on], title="What became of each of 2000 spoofed SYNs")

# %%
for r in (off, on, big_off, big_on):
    for s in r.data["samples"]:
        assert s["syn_recv"] + s["TcpExtSyncookiesSent"] + s["TcpExtListenDrops"] == s["sent"]
print("at each of the 80 samples: SYN-RECV entries + cookies sent + SYNs dropped = SYNs sent so far")

# %% [markdown]
# **Observe.** In every run the blue line climbs until it meets its cap and then stays flat,
# and from that moment every further SYN went to exactly one of the other two lines: a drop
# with cookies off, a cookie with cookies on. No SYN is lost from the books. Only the
# bottom-left run (cookies off, `listen(1024)`) stops below its backlog, at 193, and drops
# the rest; with cookies on the same backlog lets the queue reach 1025 before the first
# cookie. (On a log scale, 0 sits at the bottom: a line lying there counted nothing.)
#
# ## 4 · Your turn: cookies, flood size, backlog
#
# Change the three knobs and press **Run**; each run is a new namespace and a new capture
# (or, in replay, the recording for those values). **Predict** before you press: with
# cookies on, `listen(1024)` and a flood of 200, how many cookies does the kernel send?

# %%
panel = Panel(syn_flood, syn_flood.params, render=render, title="SYN flood")
panel

# %% [markdown]
# nbval cannot press buttons, so the next cell calls the panel's callback directly, as the
# button does, shows what the panel now shows, and asserts on what it returns.

# %%
small = panel.update(cookies=1, flood=200, backlog=1024)
panel.show()

# %%
syn_flood.check(small)
assert small.data["ss_syn_recv"] == 200 and small.data["counters_flood"]["TcpExtSyncookiesSent"] == 0, \
    "a flood that fits in the queue gets no cookies: they are a fallback, not the normal path"
assert sum(c["connected"] for c in small.data["legit"]) == 10
print("200 SYNs fit in listen(1024)'s queue: 0 cookies sent, legitimate clients use the queue as usual")

# %% [markdown]
# ## 5 · What a cookie encodes
#
# A Linux SYN cookie (`net/ipv4/syncookies.c`) is the server's ISN:
#
# `cookie = H1(4-tuple) + client ISN + (minute counter << 24) + ((H2(4-tuple, minute) + MSS index) mod 2²⁴)`
#
# where H1 and H2 are keyed hashes (the key never leaves the kernel) and the MSS index points
# into a table of four MSS values, `msstab = (536, 1300, 1440, 1460)`. We cannot compute the
# hashes, but we can send SYNs that differ in one field and compare the cookies they get.
# The namespace here has cookies on, a full `listen(16)` queue (17 spoofed SYNs first), and
# `net.ipv4.tcp_timestamps = 2`: timestamps without the random per-address offset that
# normally hides the TSval's low bits.
#
# **Predict:** the same SYN, sent twice. Same cookie or not? And a SYN whose ISN is one higher?

# %%
anatomy = syn_cookie_anatomy()
anatomy

# %%
probes = probe_table(anatomy)
probes

# %%
syn_cookie_anatomy.check(anatomy)
by = probes.set_index("probe")
assert by.loc["same SYN again", "cookie ISN"] == by.loc["base: MSS 1460", "cookie ISN"], "stateless: same SYN, same cookie"
assert by.loc["client ISN + 1", "ISN − base"] == 1, "the client's ISN is added in"
for label, mss in [("MSS 1440", 1440), ("MSS 1300", 1300), ("MSS 536", 536), ("MSS 1000", 1000), ("MSS 65495", 65495)]:
    assert by.loc[label, "ISN − base"] == mss_index(mss) - 3, f"{label}: the cookie moves by the MSS index"
ts = probes.dropna(subset=["TSval"])
assert (ts["TSval & 63"] == ts["expected bits"]).all(), "TSval's low 6 bits carry wscale | SACK << 4"
print("same SYN → same cookie; ISN+1 → cookie+1; MSS 1440/1300/536 → cookie −1/−2/−3; "
      "MSS 65495 and 1460 share index 3; MSS 1000 falls back to 536")

# %% [markdown]
# **Observe.** Sending the same SYN twice got the same cookie: the kernel kept nothing
# between the two. The client ISN goes in as a plain sum, so ISN + 1 gave cookie + 1. The
# MSS index sits in the low 24 bits: 1440, 1300 and 536 moved the cookie by −1, −2 and −3
# against 1460. Any other MSS is rounded *down* to a table entry: 65495 encodes as 1460 and
# 1000 as 536. Another source port changes the hashes, and the cookie is unrelated.
#
# There is no room in 32 bits for window scale or SACK. When the SYN carries timestamps, Linux
# hides them in the low 6 bits of its own TSval: window scale in bits 0–3 (15 = none), SACK in
# bit 4, ECN in bit 5: `7 | 16 = 23`, `3`, `15 | 16 = 31`, `15` above.
#
# ### The cost of a cookie
#
# A real client on `lo` announces MSS 65495. After a normal handshake the server sends it
# segments of tens of kilobytes. **Predict:** what does the server send after a cookie
# handshake?

# %%
n, c = anatomy.data["normal"], anatomy.data["cookie"]
cost = pd.DataFrame({"normal handshake": n, "cookie handshake": c}).loc[
    ["client_syn_mss", "server_snd_mss", "server_maxseg", "server_wscale", "server_sack", "server_timestamps"]]
cost.loc["client's largest window (capture)"] = [client_max_window(anatomy, "normal"),
                                                 client_max_window(anatomy, "cookie")]
cost

# %%
assert c["client_syn_mss"] == 65495 and c["server_snd_mss"] == MSSTAB[mss_index(65495)] - 12 == 1448
assert n["server_snd_mss"] > 10 * c["server_snd_mss"]
seg = anatomy.segments()
cookie_data = seg[(seg["sport"] == anatomy.data["port"]) & (seg["dport"] == c["client_port"]) & (seg["len"] > 0)]
assert cookie_data["len"].max() == 1448
print(f"client announced {c['client_syn_mss']}; through the cookie the server keeps only msstab's "
      f"{MSSTAB[mss_index(65495)]} (TCP_MAXSEG {c['server_maxseg']} = 1460 − 12 bytes of timestamps); "
      f"largest server segment in the capture: {cookie_data['len'].max()} bytes")
w = client_max_window(anatomy, "normal")
assert n["server_snd_mss"] == min(65495 - 12, w // 2), "the normal connection: half the client's largest window"
print(f"normal handshake: send MSS {n['server_snd_mss']} = {w} // 2, below 65495 − 12 = 65483")

# %% [markdown]
# Why 47616 and not 65483 for the normal connection? Linux never sends a segment larger
# than half the biggest window the peer has ever advertised (`tcp_bound_to_half_wnd()` in
# `include/net/tcp.h`), so that a window always holds at least two segments. This client's
# largest window was 95232 bytes, half of it 47616: still 33 times the cookie connection's 1448.

# %% [markdown]
# And without timestamps? The last crafted SYN offered window scale 7 and SACK but no
# timestamps. Its SYN-ACK was read off `lo` with a packet socket, and a crafted ACK carrying
# cookie + 1, the only other packet that spoofed source ever sent, was enough:

# %%
ao = anatomy.data["ack_only"]
print(f"half-open entries before / after that SYN: {ao['syn_recv_before']} / {ao['syn_recv_after_syn']}")
print(f"accept() returned a connection from {ao['peer'][0]}:{ao['peer'][1]} in state {ao['state']}")
print(f"its window scale: {'kept' if ao['server_wscale_ok'] else 'lost'}, SACK: {'kept' if ao['server_sack'] else 'lost'}, "
      f"send MSS {ao['server_snd_mss']}")
assert ao["accepted"] and ao["syn_recv_after_syn"] == ao["syn_recv_before"]
assert not ao["server_wscale_ok"] and not ao["server_sack"]

# %% [markdown]
# A cookie connection is a degraded connection: a coarse MSS, and without timestamps no
# window scaling (so at most 64 KB in flight) and no SACK. That is why Linux sends cookies only
# when the queue is full (`tcp_syncookies = 1`), not always (`= 2`).
#
# ## 6 · How long does a half-open entry live?
#
# With cookies off, a flood's entries sit in the queue. Nobody will ever answer them: does the
# kernel give up on them, and when? The namespace keeps the default
# `net.ipv4.tcp_synack_retries`, which the run reads. Two listeners, cookies off, each left
# with 17 unanswered entries: `listen(16)` after 200 spoofed SYNs (a full queue) and
# `listen(1024)` after 17 (a nearly empty one). The run watches both queues for 9 seconds and
# captures every SYN-ACK (a live run takes about 10 s: the waiting *is* the experiment).
#
# **Predict:** after how many seconds are the entries gone? The same for both listeners?

# %%
life = half_open_lifetime()
life

# %%
lifetime_table(life)

# %%
fig = lifetime_plot(life)

# %%
half_open_lifetime.check(life)
L16, L1024 = life.data["listeners"]
retries = life.data["synack_retries"]
assert retries == 5, "the namespace's tcp_synack_retries is the kernel default"
assert all(len(t) == 4 for t in L1024["synack_times"]) and L1024["entries_end"] == 17
assert sorted(len(t) for t in L16["synack_times"]) == [3] * 9 + [4] * 8 and L16["entries_end"] == 8
assert 6.5 <= L16["dropped_at"] <= 8.5
print(f"tcp_synack_retries in the namespace: {retries}")
print(f"listen(1024): every entry resent at about 1, 3 and 7 s and still there at {life.data['watch_seconds']:.1f} s")
print(f"listen(16):   9 entries dropped at {L16['dropped_at']:.1f} s after 2 retransmissions; "
      f"the other {L16['entries_end']} resent a third time and kept")

# %% [markdown]
# **Observe.** An unanswered SYN-ACK is resent with exponential backoff: 1 s, then 2 s, then
# 4 s later (the timer starts at 1 s and doubles). In the nearly empty `listen(1024)` queue
# every entry got its third retransmission at about 7 s and is still there at 9 s; with
# `tcp_synack_retries = 5` the kernel would go on resending at about 15 and 31 s and give up
# at about 63 s (we stopped watching at 9 s). The full `listen(16)` queue is treated
# differently: at the third timeout, about 7 s after the flood, 9 of its 17 entries were
# dropped after only two retransmissions, and the remaining 8 were resent and kept.
#
# **Explain.** `reqsk_timer_handler()` in `net/ipv4/inet_connection_sock.c` checks, each time an
# entry's timer fires, whether the queue is more than half full (`2 × entries > backlog`) of
# entries that already had a retransmission ("old" ones). If it is, it lowers the retry limit
# for that entry, down to 2 ("abort old ones without pity", says the comment), to keep
# room for new SYNs. It drops old entries only while the queue stays more than half full:
# 17, 16, …, 9 entries, then at 8 of 16 the normal limit applies again. Either way, an
# unanswered half-open entry lives seconds, not milliseconds.
#
# > **Myth vs measurement.** The source notes say SYN cookies mean "the server doesn't waste an
# > entry in the SYN queue *for too long*", and that a half-open entry is removed "if the final
# > ACK doesn't arrive within a short period".
# > Measured: a cookie keeps *no* entry at all (SYN-RECV stayed at 17 while 1983 cookies went
# > out; the same SYN twice got the same cookie; an ACK alone created a connection). And
# > without cookies, nothing expires quickly: an unanswered entry lived 7 s in a flooded
# > queue, and over 9 s (63 s by the kernel's retry rule) in a quiet one. The notes' other
# > claim, "the SYN queue fills up, preventing legitimate connections", holds only with
# > cookies off: with this kernel's default (`tcp_syncookies = 1`) all 10 legitimate clients
# > got in. And the half-open queue is not capped at 128: `listen(1024)` held 1025 entries.

# %%
assert on.data["ss_syn_recv"] == 17 and on.data["counters_flood"]["TcpExtSyncookiesSent"] == 1983
assert sum(x["connected"] for x in on.data["legit"]) == 10
assert big_on.data["ss_syn_recv"] == 1025 > 128
assert L16["dropped_at"] > 6.5 and L1024["entries_end"] == 17

# %% [markdown]
# ## Check your understanding
#
# **1.** Cookies off, `tcp_max_syn_backlog = 256`, a listener with `listen(64)`, a flood of
# 2000 spoofed SYNs. How many SYN-RECV entries remain?

# %%
answer_1 = ...  # an integer

# %%
check_value(answer_1, queue_caps(0, 64, 256)["cap"], name="SYN-RECV entries",
            hint="two limits apply with cookies off (sections 1 and 3): work out both; the queue stops at the first one it reaches");

# %% [markdown]
# **2.** Same, but `tcp_max_syn_backlog = 512` and `listen(1024)`.

# %%
answer_2 = ...  # an integer

# %%
check_value(answer_2, queue_caps(0, 1024, 512)["cap"], name="SYN-RECV entries",
            hint="redo section 3's arithmetic with the new sysctl, and remember the queue takes one entry past its limit");

# %% [markdown]
# **3.** A client announces MSS 1400 and gets a cookie. Which MSS can the server use for its
# segments (before subtracting timestamp bytes)?

# %%
answer_3 = ...  # an integer

# %%
check_value(answer_3, MSSTAB[mss_index(1400)], name="server MSS",
            hint="a cookie stores no MSS, only a position in msstab; look at what the MSS 1000 probe of section 5 got");

# %% [markdown]
# **4.** In the cookies-on run of section 2, 2000 spoofed SYNs came from 2000 different
# sources. How many *different* spoofed sources received a SYN-ACK? Predict it from what you
# saw in section 2 first; then, if you like, confirm it from the capture (`on.segments()`).

# %%
answer_4 = ...  # an integer

# %%
df_on = on.segments()
check_value(answer_4, df_on[df_on["dst"].str.startswith("10.99.") & (df_on["flags"] == "SYN+ACK")]
            [["dst", "dport"]].drop_duplicates().shape[0], name="spoofed sources answered",
            hint="a spoofed SYN got either a half-open entry or a cookie, and both are answered with a SYN-ACK; "
                 "how many SYNs got neither (look at TCPReqQFullDrop in section 2)?");

# %% [markdown]
# ## Summary
# * A listener's half-open queue holds `backlog + 1` entries; without cookies, also no more
#   than `tcp_max_syn_backlog − tcp_max_syn_backlog/4 + 1` (193 here) for unproven peers.
# * Cookies off: a flood fills it, every later SYN (legitimate or not) is dropped
#   (`TCPReqQFullDrop`, `ListenDrops`) and new clients cannot connect.
# * Cookies on (the default, `tcp_syncookies = 1`): once the queue is full, SYNs are answered
#   with a cookie and forgotten (`SyncookiesSent`); real clients complete the handshake
#   (`SyncookiesRecv`). No state, so identical SYNs get identical cookies, and an ACK alone
#   creates a connection.
# * A cookie holds the client ISN and a 2-bit MSS index; window scale and SACK survive only
#   in the timestamp. The price: MSS 1460 instead of 65495, and no scaling or SACK without
#   timestamps.
# * Without cookies, an unanswered entry gets its SYN-ACK resent 1, 2, 4, … s apart,
#   `tcp_synack_retries` times; when the queue is more than half full of such old entries,
#   the kernel drops them after 2 retransmissions (about 7 s) until it is half full again.
#
# **What's next:** 01_05 Reuseport sharding: several listeners on one port.

# %%
assert nothing_left_behind() == []
