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
# Every number is checked against the kernel's rule evaluated on the namespace the run was made
# in (its settings, read before the flood): each check prints rule, inputs, prediction and
# measurement.
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
from helpers.notebook import mode_banner, nothing_left_behind, show
from helpers.rawsyn import send_flood, MAX_FLOOD, MAX_SECONDS, SPOOF_NET
from helpers.experiments.synflood import (syn_flood, syn_cookie_anatomy, half_open_lifetime, outcome_table,
                                          flood_plot, probe_table, render, queue_caps, lifetime_table,
                                          lifetime_plot, client_max_window, capture_summary, legit_connected, cap_phrase,
                                          largest_server_segment, resent_at, mss_index, MSSTAB)
from helpers.errors import UnsafeTargetError
from helpers import rules
from helpers.checks import check_value
from helpers.widgets import Panel

mode_banner(needs=("live_capture", "namespaces"))

# %% [markdown]
# ## 0 · A flood that can only hit its own namespace
#
# The flood sends SYNs from spoofed addresses in the private range `10.99.0.0/16` through a
# raw socket (`helpers.rawsyn`, the one module allowed to). Before it builds a single packet
# it calls a guard that checks its parameters (count, duration, a numeric loopback target,
# the source range), then refuses any namespace that is not one this very process created
# and still holds open. Try it: none of these sends anything.

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
# try to connect and get `LEGIT_WAIT` = 0.4 s (their first SYN retry would come only after 1 s).
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
cap_off = rules.assert_rule(off, rules.half_open_cap, d["ss_syn_recv"], 16, 0,
                            what="SYN-RECV entries after the flood (ss)").value
assert d["counters_flood"]["TcpExtTCPReqQFullDrop"] == d["flood"]["sent"] - cap_off, "every later SYN is dropped, and counted"
assert legit_connected(off) == 0, "no legitimate client gets in"
assert d["counters_legit"]["TcpExtTCPReqQFullDrop"] == len(d["legit"]), "each legitimate SYN was dropped too"
show([f"{d['flood']['sent']} SYNs sent in {d['flood']['send_seconds'] * 1000:.0f} ms of sending "
      f"({d['flood']['wall_seconds'] * 1000:.0f} ms with the 20 samples of the queue). SYN-RECV stopped at "
      f"**{d['ss_syn_recv']}** entries; `TCPReqQFullDrop` counted {d['counters_flood']['TcpExtTCPReqQFullDrop']} "
      f"during the flood and {d['counters_legit']['TcpExtTCPReqQFullDrop']} after it; legitimate clients "
      f"connected: **{legit_connected(off)}/{len(d['legit'])}**.",
      f"The rule on this run's kernel (Linux {off.machine_snapshot().release}): the queue stops at "
      f"{cap_phrase(off.machine_snapshot(), 16)}."])

# %% [markdown]
# **Observe.** The queue stopped at the cap printed above. On kernels with the 2025 fix
# (6.13+, and stable backports) a SYN finds the queue "full" only when it already holds
# *more* than min(backlog, somaxconn) entries, so it stops at min(backlog, somaxconn) + 1
# (the same `backlog + 1` you met for the accept queue in 01_03); older kernels stop at the
# backlog itself. Every SYN after that was dropped without an answer; the
# kernel counts each in `TcpExtTCPReqQFullDrop` (and `TcpExtListenDrops`). The legitimate
# clients' SYNs are dropped just the same (one more `TCPReqQFullDrop` per client after the
# flood): the kernel cannot tell them apart.
#
# (That "+ 1" is recent for this queue: before Linux 6.13 and the stable updates of early
# 2025, `inet_csk_reqsk_queue_is_full()` compared with `>=`, so the half-open queue stopped
# at the backlog itself, and `listen(0)` without cookies took nothing. The rule above reads
# your kernel's version and says which comparison it expects.)
#
# The capture agrees: every spoofed SYN is on the wire, but only the entries got a SYN-ACK.

# %%
seen = capture_summary(off)
show([f"{seen['spoofed SYNs']} spoofed SYNs captured, **{seen['sources answered']}** of their sources answered."])
assert seen["spoofed SYNs"] == d["flood"]["sent"] and seen["sources answered"] == cap_off
off.segments()[["t", "src", "sport", "dst", "dport", "flags", "seq_raw", "mss"]].head(4)

# %% [markdown]
# ## 2 · The same flood, SYN cookies on
#
# **Predict:** with `tcp_syncookies = 1`, does the queue grow past where it stopped in
# section 1? Do the legitimate clients get in?

# %%
on = syn_flood(cookies=1, flood=2000, backlog=16)
on

# %%
outcome_table(on)

# %%
d = on.data
syn_flood.check(on)
cap_on = rules.assert_rule(on, rules.half_open_cap, d["ss_syn_recv"], 16, 1,
                           what="SYN-RECV entries after the flood, cookies on (ss)").value
assert d["ss_syn_recv"] == off.data["ss_syn_recv"], "cookies do not enlarge the queue"
assert d["counters_flood"]["TcpExtSyncookiesSent"] == d["flood"]["sent"] - cap_on, "every SYN beyond the full queue gets a cookie"
assert d["counters_flood"]["TcpExtTCPReqQFullDrop"] == 0, "and none is dropped"
got_in = rules.assert_rule(on, rules.acceptq_and_cookies, legit_connected(on), 16, len(d["legit"]),
                           what="legitimate clients connected").value
assert d["counters_legit"]["TcpExtSyncookiesRecv"] == got_in, "each through a cookie it sent back"
show([f"`SyncookiesSent` during the flood: **{d['counters_flood']['TcpExtSyncookiesSent']}**; legitimate clients: "
      f"**{legit_connected(on)}/{len(d['legit'])}**, in at most {max(c['ms'] for c in d['legit'] if c['ms']):.2f} ms; "
      f"`SyncookiesRecv`: {d['counters_legit']['TcpExtSyncookiesRecv']}."])

# %% [markdown]
# **Explain.** The queue stopped at the same place. What changed is the answer to the next SYN:
# instead of dropping it, the kernel answered with a SYN-ACK whose sequence number (the
# *cookie*) encodes what it needs to rebuild the connection later, and then *forgot* the
# SYN. A spoofed source never answers, so nothing more happens. A real client sends back its
# ACK, acknowledging cookie + 1; the kernel checks the cookie, rebuilds the connection and
# puts it straight into the accept queue (`SyncookiesRecv`). The flood costs the server one
# SYN-ACK per SYN and no memory.
#
# ### Cookies protect the SYN queue, not the accept queue
#
# In that run nobody called `accept()`, and all the legitimate clients still fit in the accept
# queue of `listen(16)`. **Predict:** the same flood, cookies on, but `listen(4)`: how many of
# the legitimate clients get in now?

# %%
few = syn_flood(cookies=1, flood=2000, backlog=4)
syn_flood.check(few)
fd = few.data
room = rules.assert_rule(few, rules.acceptq_and_cookies, legit_connected(few), 4, len(fd["legit"]),
                         what="legitimate clients connected, cookies on, nobody accepting").value
show([f"`listen(4)`, cookies on: **{legit_connected(few)} of {len(fd['legit'])}** legitimate clients got in "
      f"(`SyncookiesRecv` {fd['counters_legit']['TcpExtSyncookiesRecv']}); the other "
      f"{len(fd['legit']) - room} SYNs were dropped and counted in `ListenOverflows` "
      f"({fd['counters_legit']['TcpExtListenOverflows']}), exactly as in 01_03. They will retry in a second "
      f"and get in only once the application accepts."])

# %% [markdown]
# **Explain.** `tcp_conn_request()` checks the *accept* queue before anything else: a SYN that
# finds it full is dropped, cookies or not, and a cookie ACK that finds it full is dropped too
# (`tcp_v4_syn_recv_sock()`). Cookies replace the SYN queue's memory, not the application's
# `accept()`: a server that accepts too slowly is still full, whatever `tcp_syncookies` says.
#
# ## 3 · A bigger backlog
#
# With `listen(16)` the queue stopped at the cap of section 1. Now `listen(1024)`, the same
# 2000 SYNs, once with cookies off and once on. The namespace sets
# `net.ipv4.tcp_max_syn_backlog = 256`.
# **Predict:** does the queue reach min(1024, somaxconn) (+ 1 with the 2025 fix) in both runs?

# %%
big_off = syn_flood(cookies=0, flood=2000, backlog=1024)
big_on = syn_flood(cookies=1, flood=2000, backlog=1024)
pd.DataFrame({("cookies on" if r.params["cookies"] else "cookies off"): outcome_table(r).set_index("measurement")["value"]
              for r in (big_off, big_on)})

# %%
for r in (big_off, big_on):
    syn_flood.check(r)
three_q = rules.assert_rule(big_off, rules.half_open_cap, big_off.data["ss_syn_recv"], 1024, 0,
                            what="SYN-RECV entries, listen(1024), cookies off").value
rules.assert_rule(big_on, rules.half_open_cap, big_on.data["ss_syn_recv"], 1024, 1,
                  what="SYN-RECV entries, listen(1024), cookies on")
assert big_off.data["counters_flood"]["TcpExtTCPReqQFullDrop"] == 0, "the queue was never full"
assert big_off.data["counters_flood"]["TcpExtListenDrops"] == big_off.data["flood"]["sent"] - three_q, \
    "yet every later SYN was dropped"
m = big_off.data["max_syn_backlog"]
show([f"`tcp_max_syn_backlog` = {m} in the namespace: cookies off → **{big_off.data['ss_syn_recv']}** = "
      f"{m} − {m}/4 + 1, and {big_off.data['counters_flood']['TcpExtListenDrops']} SYNs dropped although "
      f"`TCPReqQFullDrop` stayed {big_off.data['counters_flood']['TcpExtTCPReqQFullDrop']}; cookies on → "
      f"**{big_on.data['ss_syn_recv']}** = {cap_phrase(big_on.machine_snapshot(), 1024)}."])

# %% [markdown]
# **Explain.** Without cookies, Linux keeps the last quarter of `tcp_max_syn_backlog` for
# peers it has already seen complete a connection ("proven" peers, in `tcp_input.c`): once the queue
# holds more than `max − max/4` entries, a SYN from anyone else is dropped. That drop is
# counted only in `ListenDrops`, not in `TCPReqQFullDrop`: the queue was not full. With
# cookies on, this rule is skipped; the queue fills to its full-queue cap (min(backlog,
# somaxconn) + 1 on kernels with the 2025 fix, the backlog on older ones) and cookies take over.
# So the half-open queue is bounded by `listen()`'s backlog, and without cookies also by
# `tcp_max_syn_backlog`; there is no separate "SYN queue size" to set.
#
# The four runs side by side: the flood sampled the queue and the counters 20 times as it went.
# Each plot is one run. The blue line is the queue (SYN-RECV entries); the green dotted line
# counts cookies sent, the red dash-dot line SYNs dropped; the grey dashed line is the cap
# the run should reach.

# %%
fig = flood_plot([off, on, big_off, big_on], title="What became of each spoofed SYN")

# %%
n_samples = 0
for r in (off, on, big_off, big_on):
    for s in r.data["samples"]:
        assert s["syn_recv"] + s["TcpExtSyncookiesSent"] + s["TcpExtListenDrops"] == s["sent"]
        n_samples += 1
show([f"At each of the {n_samples} samples: SYN-RECV entries + cookies sent + SYNs dropped = SYNs sent so far."])

# %% [markdown]
# **Observe.** In every run the blue line climbs until it meets its cap and then stays flat,
# and from that moment every further SYN went to exactly one of the other two lines: a drop
# with cookies off, a cookie with cookies on. No SYN is lost from the books. Only the
# bottom-left run (cookies off, `listen(1024)`) stops below its backlog, at the ¾ limit, and
# drops the rest; with cookies on the same backlog lets the queue reach its full-queue cap
# before the first cookie. (On a log scale, 0 sits at the bottom: a line lying there counted nothing.)
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
assert small.data["ss_syn_recv"] == small.data["flood"]["sent"] < rules.half_open_cap(small.machine_snapshot(), 1024, 1).value
assert small.data["counters_flood"]["TcpExtSyncookiesSent"] == 0, \
    "a flood that fits in the queue gets no cookies: they are a fallback, not the normal path"
show([f"{small.data['flood']['sent']} SYNs fit in `listen(1024)`'s queue: "
      f"{small.data['counters_flood']['TcpExtSyncookiesSent']} cookies sent; {legit_connected(small)} of "
      f"{len(small.data['legit'])} legitimate clients used the queue as usual."])

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
# The namespace here has cookies on, a `listen(16)` queue filled first with 17 spoofed SYNs
# (enough on any kernel: the queue holds 16 or 17), and
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
lo_mss = rules.tcp_mss_default(anatomy.machine_snapshot().lo_mtu)
cost = pd.DataFrame({"normal handshake": n, "cookie handshake": c}).loc[
    ["client_syn_mss", "server_snd_mss", "server_maxseg", "server_wscale", "server_sack", "server_timestamps"]]
cost.loc["client's largest window (capture)"] = [client_max_window(anatomy, "normal"),
                                                 client_max_window(anatomy, "cookie")]
cost

# %%
kept = MSSTAB[mss_index(lo_mss)]
assert c["client_syn_mss"] == lo_mss and c["server_snd_mss"] == kept - 12
assert n["server_snd_mss"] > 10 * c["server_snd_mss"]
biggest = largest_server_segment(anatomy, "cookie")
assert biggest == c["server_snd_mss"]
w = client_max_window(anatomy, "normal")
assert n["server_snd_mss"] == min(lo_mss - 12, w // 2), "the normal connection: half the client's largest window"
show([f"The client announced MSS {c['client_syn_mss']} (lo's MTU − 40); through the cookie the server keeps "
      f"only msstab's **{kept}** (TCP_MAXSEG {c['server_maxseg']} = {kept} − 12 bytes of timestamps); the largest "
      f"server segment in the capture is {biggest} bytes. The normal handshake's send MSS is "
      f"{n['server_snd_mss']} = min({lo_mss} − 12, {w} // 2): Linux never sends a segment larger than half the "
      f"biggest window the peer has advertised (`tcp_bound_to_half_wnd()` in `include/net/tcp.h`), still "
      f"{n['server_snd_mss'] // c['server_snd_mss']} times the cookie connection's."])

# %% [markdown]
# **Is that the cost of a cookie?** Only on loopback. The MSS table holds the sizes real
# networks use: 1460 is Ethernet's MSS (MTU 1500), and the "base: MSS 1460" probe of the table
# above encoded index 3, which decodes to 1460 again: on Ethernet a cookie loses nothing of the
# MSS. (1440, 1300 and 536 cover tunnels, PPPoE and the minimum.) The 65495 of `lo` is no
# network's MSS, so the 64 KB segments of loopback are what is lost here: an artefact of the lab.

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
# That is the real cost of a cookie. With timestamps (every Linux, macOS and Windows peer by
# default) window scale and SACK ride in the TSval bits and survive, as the real client's
# connection above shows. A SYN without timestamps leaves the cookie nowhere to keep them: the
# connection has no window scaling (so at most 64 KB in flight, whatever the buffers) and no
# SACK (every loss costs more). That is why Linux sends cookies only when the queue is full
# (`tcp_syncookies = 1`), not always (`= 2`).
#
# ## 6 · How long does a half-open entry live?
#
# With cookies off, a flood's entries sit in the queue. Nobody will ever answer them: does the
# kernel give up on them, and when? The namespace keeps the default
# `net.ipv4.tcp_synack_retries`, which the run reads. Two listeners, cookies off, each left
# with unanswered entries: `listen(16)` after 200 spoofed SYNs (a full queue) and
# `listen(1024)` after 17 (a nearly empty one; the run prints how many each holds). The
# run watches both queues for 9 seconds and
# captures every SYN-ACK (a live run takes about 10 s: the waiting *is* the experiment); then
# 10 legitimate clients try `listen(16)` again.
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
from helpers.experiments.synflood import check_half_open_lifetime
check_half_open_lifetime(life, quiet=False)   # rules: reqsk_timer_handler(), syn_ack_recalc()
L16, L1024 = life.data["listeners"]
ml = life.machine_snapshot()
dropped16 = L16["entries_start"] - L16["entries_end"]
show([f"`tcp_synack_retries` in the namespace: {ml.sysctls.get('tcp_synack_retries')}, so an entry would be "
      f"given up after {rules.syn_ack_recalc(ml).value:g} s. `listen(1024)`: every entry resent at about "
      f"{', '.join(f'{x:.1f}' for x in resent_at(life, L1024['backlog']))} s "
      f"({L1024['entries_start']} entries at the start) "
      f"and all {L1024['entries_end']} still there at {life.data['watch_seconds']:.1f} s. `listen(16)`: "
      f"{L16['entries_start']} entries at the start, **{dropped16} dropped at {L16['dropped_at']:.1f} s** "
      f"after 2 retransmissions; the other "
      f"{L16['entries_end']} resent a third time and kept. Afterwards {legit_connected(life, 'legit_after')} of "
      f"{len(life.data['legit_after'])} legitimate clients got into `listen(16)` at once. "
      f"(HZ = {rules.timer_wheel_granularity(ml, 4.0).inputs['HZ']}: a 4 s timer's slot of the timer wheel is "
      f"{rules.timer_wheel_granularity(ml, 4.0).value * 1000:.0f} ms wide.)"])

# %% [markdown]
# **Observe.** An unanswered SYN-ACK is resent with exponential backoff: 1 s, then 2 s, then
# 4 s later (the timer starts at 1 s and doubles; the 4 s timer sits in a coarser slot of the
# kernel's timer wheel, so it may fire up to one slot late: the width is printed above). In the nearly empty
# `listen(1024)` queue every entry got its third retransmission and is still there at the
# end; with `tcp_synack_retries` retries the kernel would go on resending and give up at the
# time printed above (we stopped watching at 9 s). The full `listen(16)` queue is treated
# differently: at the third timeout, about 7 s after the flood, entries were dropped after
# only two retransmissions, and the rest were resent and kept.
#
# **Explain.** `reqsk_timer_handler()` in `net/ipv4/inet_connection_sock.c` checks, each time an
# entry's timer fires, whether the queue is more than half full (`2 × entries > backlog`) of
# entries that already had a retransmission ("old" ones). If it is, it lowers the retry limit
# for that entry, down to 2 ("abort old ones without pity", says the comment), to keep
# room for new SYNs. It drops old entries only while the queue stays more than half full:
# at half of max(8, backlog) the normal limit applies again. Either way, an unanswered
# half-open entry lives seconds, not milliseconds.
#
# And the legitimate clients that found `listen(16)` full in section 1? They were shut out
# only while the flood's entries lasted: once the kernel had dropped the old entries, the
# clients that tried again got in at once (printed above). A real flood keeps sending, so it
# keeps the queue full; the moment it stops, the queue recovers within one SYN-ACK timeout.
#
# > **Myth vs measurement.** The source notes say SYN cookies mean "the server doesn't waste an
# > entry in the SYN queue *for too long*", and that a half-open entry is removed "if the final
# > ACK doesn't arrive within a short period".
# > Measured (below): a cookie keeps *no* entry at all (SYN-RECV stayed put while the cookies
# > went out; the same SYN twice got the same cookie; an ACK alone created a connection). And
# > without cookies, nothing expires quickly: an unanswered entry lived seconds in a flooded
# > queue, and (by the kernel's retry rule) a minute in a quiet one. The notes' other claim,
# > "the SYN queue fills up, preventing legitimate connections", holds only with cookies off
# > and only while the flood lasts; with cookies on (this kernel's default,
# > `tcp_syncookies = 1`) the legitimate clients got in, up to what the accept queue holds.
# > And the half-open queue has no fixed cap of 128: it follows `listen()`'s backlog and
# > `somaxconn`.

# %%
show([f"Cookies on: SYN-RECV {on.data['ss_syn_recv']} while {on.data['counters_flood']['TcpExtSyncookiesSent']} "
      f"cookies went out; {legit_connected(on)}/{len(on.data['legit'])} legitimate clients in. Cookies off: the "
      f"flooded entries were dropped at {L16['dropped_at']:.1f} s, the quiet ones were all there at "
      f"{life.data['watch_seconds']:.1f} s. `listen(1024)` with cookies held {big_on.data['ss_syn_recv']} half-open "
      f"entries: {cap_phrase(big_on.machine_snapshot(), 1024)}, no fixed 128."])
assert big_on.data["ss_syn_recv"] == rules.half_open_cap(big_on.machine_snapshot(), 1024, 1).value

# %% [markdown]
# ## Check your understanding
#
# **1.** Cookies off, `tcp_max_syn_backlog = 256`, a listener with `listen(64)`, a flood of
# 2000 spoofed SYNs. How many SYN-RECV entries remain?

# %%
answer_1 = ...  # an integer

# %%
here = rules.machine()
def exercise_machine(max_syn_backlog):
    """This machine's settings, with the exercise's tcp_max_syn_backlog and cookies off."""
    return rules.Machine(release=here.release, hz=here.hz,
                         sysctls={**here.sysctls, "tcp_max_syn_backlog": max_syn_backlog, "tcp_syncookies": 0})
check_value(answer_1, queue_caps(exercise_machine(256), 64, 0)["cap"], name="SYN-RECV entries",
            hint="two limits apply with cookies off (sections 1 and 3): work out both; the queue stops at the first one it reaches");

# %% [markdown]
# **2.** Same, but `tcp_max_syn_backlog = 512` and `listen(1024)`.

# %%
answer_2 = ...  # an integer

# %%
check_value(answer_2, queue_caps(exercise_machine(512), 1024, 0)["cap"], name="SYN-RECV entries",
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
check_value(answer_4, capture_summary(on)["sources answered"], name="spoofed sources answered",
            hint="a spoofed SYN got either a half-open entry or a cookie, and both are answered with a SYN-ACK; "
                 "how many SYNs got neither (look at TCPReqQFullDrop in section 2)?");

# %% [markdown]
# ## Summary
# * A listener's half-open queue holds min(backlog, somaxconn) + 1 entries on kernels with
#   the 2025 fix (6.13+, and stable backports), the backlog on older ones; without cookies,
#   also no more than `tcp_max_syn_backlog − tcp_max_syn_backlog/4 + 1` for unproven peers.
# * Cookies off: a flood fills it, every later SYN (legitimate or not) is dropped
#   (`TCPReqQFullDrop`, `ListenDrops`) and new clients cannot connect while the flood's
#   entries last; they get in again once the kernel drops them.
# * Cookies protect the SYN queue, not the accept queue: with nobody accepting, clients
#   beyond backlog + 1 are dropped, cookies or not.
# * Cookies on (the default, `tcp_syncookies = 1`): once the queue is full, SYNs are answered
#   with a cookie and forgotten (`SyncookiesSent`); real clients complete the handshake
#   (`SyncookiesRecv`). No state, so identical SYNs get identical cookies, and an ACK alone
#   creates a connection.
# * A cookie holds the client ISN and a 2-bit MSS index; window scale and SACK survive only
#   in the timestamp. The price: an MSS rounded down to msstab (nothing lost at Ethernet's
#   1460; on lo, 1460 instead of 65495), and no scaling or SACK when the SYN has no timestamps.
# * Without cookies, an unanswered entry gets its SYN-ACK resent 1, 2, 4, … s apart,
#   `tcp_synack_retries` times; when the queue is more than half full of such old entries,
#   the kernel drops them after 2 retransmissions (about 7 s) until it is half full again.
#
# **What's next:** 01_05 Reuseport sharding: several listeners on one port.

# %%
assert nothing_left_behind() == []
