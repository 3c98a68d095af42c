# %% [markdown]
# # 01_05 · SO_REUSEPORT sharding
#
# **Objectives**
# 1. Put N listening sockets on one port with `SO_REUSEPORT` and count which one accepts
#    each of 1000 connections.
# 2. Decide with a chi-square test whether the spread is what "each listener equally
#    likely" predicts, and say what such a test can and cannot tell you.
# 3. See that the kernel picks the listener from a hash of the 4-tuple, not from the load.
# 4. Find out who may join a group: which options, set when, by which user (and who gets
#    `EADDRINUSE`).
# 5. Compare N listeners with one shared listener and N threads when one worker is slow.
# 6. Measure what happens to connections waiting in a listener that closes, with and
#    without `net.ipv4.tcp_migrate_req`.
#
# **Prerequisites:** [01_03 The SYN queue and the accept queue](01_03-syn-queue-and-accept-queue.ipynb).
# **Time:** 30 minutes.
#
# Sections 1 to 5 and 7 use plain sockets on `127.0.0.1` and need no privileges: they always
# run live, so your numbers differ from the saved ones on every run (the asserts use bands
# and tests, not exact values). Section 6 changes a sysctl, so it runs in a private network
# namespace (root), or is replayed from the recorded corpus; the banner says which.

# %%
import math
import pandas as pd
from helpers.notebook import mode_banner, nothing_left_behind
from helpers.stats import chi_square, chi2_sf
from helpers.experiments.reuseport import (reuseport_spread, reuseport_hash, reuseport_join, accept_sharing,
                                           reuseport_close, reuseport_steer, spread_table, spread_text,
                                           hash_table, join_table, sharing_table, sharing_plot, slow_wait_band,
                                           done_after_connects,
                                           close_table, render, P_MIN, OTHER_USER_CASE, SAME_USER_CASE)
from helpers import plots
from helpers.checks import check_value
from helpers.widgets import Panel

mode_banner(needs=("namespaces",))

# %% [markdown]
# ## 1 · Four listeners, one port, 1000 connections
#
# Four sockets set `SO_REUSEPORT`, bind `127.0.0.1` on the same port and listen. Each is
# a full listener with its own accept queue. 1000 clients connect one after another,
# in batches of 100; after each batch every listener accepts what is waiting in its queue.
#
# **Predict:** how many connections does each listener get? Exactly 250 each? Roughly?
# Could one of them get none?

# %%
spread = reuseport_spread(n=4, connections=1000)
spread

# %%
table = spread_table(spread)
table

# %%
counts = spread.data["counts"]
assert sum(counts) == 1000 and len(counts) == 4, "each connection is accepted by exactly one listener"
assert all(150 < c < 350 for c in counts), "every listener gets roughly a quarter"
print(f"per listener: {counts}; fewest {min(counts)}, most {max(counts)}; took {spread.data['seconds']:.2f} s")

# %%
fig = plots.bars(dict(enumerate(counts)), ylabel="connections accepted", xlabel="listener",
                 expected=250, title="1000 connections over 4 SO_REUSEPORT listeners")

# %% [markdown]
# **Observe.** Every listener gets roughly a quarter (asserted: between 150 and 350), and
# rarely exactly 250: if each connection picked a listener with equal odds, one given
# listener would land on exactly 250 in about 3 % of runs (binomial arithmetic below).

# %%
p_exact = math.comb(1000, 250) * 0.25**250 * 0.75**750
print(f"P(a given listener gets exactly 250 of 1000) = {p_exact:.3f}")

# %% [markdown]
# The kernel's own view confirms that the four listeners really are four queues. Right after
# the first batch of 100 connections (nothing accepted yet) each listener's TCP_INFO reports
# its own accept-queue length (`tcpi_unacked`) and backlog (`tcpi_sacked`), and `ss` lists
# four LISTEN rows on the same port. The order `ss` prints them in is a detail of how the
# kernel's listening hash stores them (it differs between IPv4 and IPv6), so the `listener`
# column matches each row to its socket by inode instead (`ss -e`
# prints `ino:`, Python's `os.fstat(sock.fileno()).st_ino` is the same number). Each row's
# Recv-Q is that listener's queue length.

# %%
first = spread.data["first_batch"]
display(pd.DataFrame(first["ss_listen"]).rename(columns={"recv_q": "Recv-Q (queued)", "send_q": "Send-Q (backlog)"}))
print("by listener, from TCP_INFO: accept queues", first["queues"], "backlogs", first["backlogs"])
assert len(first["ss_listen"]) == 4 and len({r["local"] for r in first["ss_listen"]}) == 1, \
    "four LISTEN rows, one address:port"
assert sorted(r["listener"] for r in first["ss_listen"]) == [0, 1, 2, 3], "each row is one of the listeners"
assert all(r["recv_q"] == first["queues"][r["listener"]] for r in first["ss_listen"]), "Recv-Q = TCP_INFO queue"
assert sum(first["queues"]) == first["size"] == 100, "the 100 waiting connections are spread over 4 queues"
assert all(b == spread.data["backlog"] for b in first["backlogs"]), "each listener has its own backlog"

# %% [markdown]
# ## 2 · Is that spread "uniform"? A chi-square test
#
# If each connection picked a listener at random with equal odds, the counts would still
# wobble: a listener's count is binomial with mean *E* = 1000/4 = 250 and standard deviation
# σ = √(1000 · ¼ · ¾) ≈ 13.7. Pearson's chi-square statistic adds up the squared misses,
# scaled by the expectation:
#
# $$\chi^2 = \sum_i \frac{(O_i - E)^2}{E}$$
#
# Under "equal odds" it follows (closely, for counts this large) a chi-square distribution
# with N − 1 = 3 degrees of freedom. The **p-value** is the chance that equal odds would
# produce a χ² at least this large. A tiny p-value means "equal odds would rarely look like
# this", so we would reject it. A large one does *not* prove the choice is uniform; it only
# says these counts give no reason to doubt it.
#
# This test looks at one tail only: counts that are too *uneven*. Counts that are too
# *even* pass it with flying colours: a dealer that hands connections out in turn gives
# exactly 250 each, χ² = 0 and p = 1. Independent random choices almost never look that
# tidy, so the *lower* tail tells: P(χ² ≤ observed) (`p_even` below) close to 0 says "too
# even to be chance". Counts are whole numbers, so the course counts this tail on 100,000
# simulated draws instead of reading the continuous curve: an exact 500/500 split of 1000
# connections over two listeners happens about 2.5 % of the time by chance, while the
# continuous lower tail at χ² = 0 is 0 and would call every such run "dealt in turn".
#
# The course computes the p-value without scipy (`chi2_sf`, closed forms for whole degrees
# of freedom). First check it against a printed table: with 3 degrees of freedom the 5 %
# critical value is 7.815.

# %%
print(f"chi2_sf(7.815, 3) = {chi2_sf(7.815, 3):.4f}   chi2_sf(3.841, 1) = {chi2_sf(3.841, 1):.4f}")
assert abs(chi2_sf(7.815, 3) - 0.05) < 1e-4 and abs(chi2_sf(3.841, 1) - 0.05) < 1e-4

t = chi_square(counts)
print(spread_text(spread))
assert t["p_value"] > P_MIN, "the spread is consistent with equal odds"
assert all(abs(c - 250) <= 5 * t["sigma"] for c in counts), "every listener within 250 ± 5σ"

# %% [markdown]
# The rule used throughout this chapter: reject "equal shares" only when p < 0.0001 (so an
# honest uniform choice fails the check once in 10 000 runs), reject "independent choices"
# when the lower tail `p_even` < 0.0001 (too even), and require every listener to be within
# 5σ of its share. The two tails, on this run and on a round-robin dealer's counts:

# %%
dealt = chi_square([250, 250, 250, 250])
print(f"this run: p = {t['p_value']:.3f}, p_even = {t['p_even']:.3f};  "
      f"round-robin [250]*4: χ² = {dealt['statistic']:.0f}, p = {dealt['p_value']:.3f}, p_even = {dealt['p_even']:.3g}")
assert t["p_even"] > P_MIN, "the kernel's counts are not suspiciously even"

# %% [markdown]
#
# **Predict:** run the same experiment five more times. Will the p-value be similar each
# time?

# %%
ps = [chi_square(reuseport_spread(n=4).data["counts"])["p_value"] for _ in range(5)]
print("p-values of five more runs:", [round(p, 3) for p in ps])
assert all(p > P_MIN for p in ps)

# %% [markdown]
# **Explain.** When the null hypothesis is true, the p-value itself is uniformly
# distributed between 0 and 1: it jumps around from run to run, and one run in twenty has
# p < 0.05 by chance alone. That is why a single "p = 0.03" would not be alarming here, and
# why the threshold is set so low.
#
# ## 3 · How does the kernel pick the listener?
#
# **Predict:** a client binds a fixed source port, connects, is closed, and does it again
# three more times. Does it reach the same listener each time, or does the kernel deal
# connections round-robin? And where does that port land after the group grows from 4 to 8
# listeners?
#
# The experiment draws client ports from 20000–29999 (below the ephemeral range, so no
# other connection on the machine takes them meanwhile) and keeps four per listener, so
# every listener appears in the table.

# %%
h = reuseport_hash(n=4)
hash_table(h)

# %%
reuseport_hash.check(h)
rows = h.data["rows"]
assert all(len(set(r["first"])) == 1 and len(set(r["doubled"])) == 1 for r in rows), "same port, same listener"
assert {r["first"][0] for r in rows} == {0, 1, 2, 3}, "ports on every listener of 4"
assert all(r["doubled"][0] // 2 == r["first"][0] for r in rows), "listener i of 4 becomes 2i or 2i+1 of 8"
stayed = [r["sport"] for r in rows if r["doubled"][0] == r["first"][0]]
assert all(r["first"][0] == 0 for r in rows if r["sport"] in stayed), "only listener 0 (→ 0) can stay"
print(f"{len(rows)} client ports ({h.data['probes']} tried to deal them evenly), {h.data['repeats']} tries each: "
      f"always the same listener. After doubling the group, {len(rows) - len(stayed)} of {len(rows)} ports "
      f"went to a different socket; the {len(stayed)} that stayed were all on listener 0.")

# %% [markdown]
# **Explain.** The kernel does not deal connections round-robin, and it does not look at
# the queues. When a SYN arrives it hashes the 4-tuple (source address and port,
# destination address and port, with a secret chosen at boot) and scales the 32-bit hash
# to the group size: listener = ⌊hash · N / 2³²⌋. The same 4-tuple therefore reaches the
# same listener as long as the group does not change. ⌊hash · 8 / 2³²⌋ is
# ⌊hash · 4 / 2³²⌋ · 2 or that + 1, which is the pattern in the table (the listeners are
# numbered in `listen()` order, the order the kernel keeps them in): listener *i* of 4
# becomes 2*i* or 2*i* + 1 of 8, so only a port of listener 0 can stay on the same socket.
# Two consequences: the hash alone never looks at how busy a listener is, and changing the
# group size changes where new connections from the same 4-tuple go.
#
# A server *can* steer, though, by replacing the hash. It may attach a program to the group
# (`SO_ATTACH_REUSEPORT_CBPF` with classic BPF, `SO_ATTACH_REUSEPORT_EBPF` with eBPF) whose
# return value is the index of the listener to use; or set `SO_INCOMING_CPU` on each
# listener, so that a connection goes to the listener bound to the CPU that received it.
# The smallest program there is, `ret #0` (one classic BPF instruction, no privileges
# needed), sends everything to the first listener:
#
# **Predict:** with that program attached, how many of 200 connections does listener 0 get?

# %%
steer = reuseport_steer(n=4, target=0)
reuseport_steer.check(steer)
print(f"program {steer.data['program']} (BPF_RET|BPF_K, k = 0): counts per listener {steer.data['counts']}")

# %% [markdown]
# ## 4 · Who may join the group
#
# **Predict:** a listener holds a port. A second socket (the newcomer) binds the same
# address and port. Which combinations of options let it in? Does it matter *when* the first
# socket set its option: before `bind()`, after `bind()`, or even after `listen()`? And may
# a process of another user join?
#
# When the newcomer gets in, 40 clients connect and the last two columns count which of the
# two listeners accepted them. The last two rows run the newcomer in a forked child process
# that only binds: once as the same user (the control), once as user `nobody` (that one
# needs root; without it the row says "not measured").

# %%
join = reuseport_join()
join_table(join)

# %%
reuseport_join.check(join)
cases = {c["case"]: c for c in join.data["cases"]}
joined = ["both set SO_REUSEPORT", "the first set it after bind()", "the first set it after listen()"]
for name in joined:
    c = cases[name]
    assert c["bind"] == c["listen"] == "ok", name
    assert c["accepted by first"] > 0 and c["accepted by newcomer"] > 0, f"{name}: both accept"
refused = ["only the first set it", "only the newcomer set it", "neither set it", "both set SO_REUSEADDR instead"]
assert all(cases[name]["bind"] == "EADDRINUSE" for name in refused)
assert cases[SAME_USER_CASE]["bind"] == "ok", "a child process of the same user may join"
other = cases[OTHER_USER_CASE]["bind"]
if not other.startswith("not measured"):
    assert other == "EADDRINUSE", "another user may not join"
print(f"joined (and shared the connections): {joined}; EADDRINUSE: {refused}; "
      f"another user: {other}; same user in a child process: {cases[SAME_USER_CASE]['bind']}")

# %% [markdown]
# **Explain.** A newcomer gets in only if it set `SO_REUSEPORT` before its `bind()` and
# the socket holding the port has it set by then: `bind()` is where the kernel checks for a
# conflict, with both sockets' options as they are at that moment. On this kernel the first
# socket may even set the option after it is already listening; the two then share the
# connections like any group. socket(7) asks for the option on every socket, the first one
# included, *before* `bind()`: keep to that documented rule; what the kernel does when it is
# broken is not promised. `SO_REUSEADDR` is a different option (it lets a new listener bind a
# port that still has connections in TIME_WAIT, which chapter 03_01 measures); it does not let
# two listeners share a port.
#
# A socket created by another user is refused although both set the option (when run as
# root, above). socket(7) states that rule too, to keep another user from hijacking the
# port: every socket that later binds it must have the effective user ID of the first. The
# same-user child process is accepted, so the refusal comes from the user, not from being
# another process.
#
# ## 5 · A slow worker: SO_REUSEPORT listeners vs one shared listener
#
# Two ways to spread connections over 4 worker threads:
#
# * **SO_REUSEPORT**: each worker has its own listener and accepts only from it;
# * **shared**: one listener, all 4 workers blocked in `accept()` on it; the kernel wakes
#   one of them per connection.
#
# Worker 0 is busy for 4 ms after each accept (a slow request, a garbage-collection pause).
# 200 clients connect as fast as they can. For every connection we measure how long it
# waited between the client's `connect()` returning and the server's `accept()`.
#
# **Predict:** in each setup, how many connections does the slow worker take, and do its
# clients wait longer?

# %%
share = accept_sharing(n=4, slow_ms=4)
sharing_table(share)

# %%
fig = sharing_plot(share)

# %%
accept_sharing.check(share)
rp, sh = share.data["reuseport"], share.data["shared"]
assert sum(rp["counts"]) == sum(sh["counts"]) == 200
assert chi_square(rp["counts"])["p_value"] > P_MIN, "SO_REUSEPORT: the slow listener still gets its quarter"
assert sh["counts"][0] < 25, "shared: the slow worker takes less than half its quarter"
slow_wait, fast_wait = rp["wait"][0]["median_ms"], max(w["median_ms"] for w in rp["wait"][1:])
lo, hi = slow_wait_band(share.data)
step = rp["wait"][0]["step_ms"]   # measured: 4 ms of sleep() plus what the machine adds
assert lo <= slow_wait <= hi, \
    f"its clients queue behind one pause each: median {slow_wait:.0f} ms, band {lo:.0f}-{hi:.0f} ms"
assert slow_wait > 3 * max(fast_wait, 1.0), "they wait far longer than the fast workers' clients"
fast_lag, slow_lag = done_after_connects(rp)
assert slow_lag > 3 * max(fast_lag, 2.0), "the fast workers are done long before the slow one"
sh_max = max(w["max_ms"] or 0 for w in sh["wait"])
assert sh_max < slow_wait, "in the shared queue nobody waits that long"
print(f"SO_REUSEPORT: the slow worker took {rp['counts'][0]} of 200; its clients waited a median of "
      f"{slow_wait:.0f} ms (one accept every {step:.1f} ms, band {lo:.0f}-{hi:.0f} ms; "
      f"the fast workers' clients ≤ {fast_wait:.1f} ms). "
      f"The last client's connect() returned at {rp['connect_ms']:.0f} ms; the fast workers accepted their "
      f"last connection {fast_lag:.0f} ms after it, the slow one {slow_lag:.0f} ms after it.\n"
      f"Shared: the slow worker took {sh['counts'][0]}, "
      f"longest wait {sh_max:.1f} ms.")

# %% [markdown]
# **Explain.** With `SO_REUSEPORT` the hash decides before any worker is asked, so the slow
# worker is dealt its quarter anyway. Its clients connect within a few milliseconds and then
# queue behind it, one 4 ms pause each: the median one waits about (its count / 2) × the time
# per accept, asserted as a band of half to 2.5 times that. The time per accept is measured
# (`step_ms`): 4 ms asked, a little more in practice, and much more on a loaded machine, where
# `sleep()` and the thread's next turn both run late. Meanwhile the other workers have long
# finished their share and sit idle in `accept()` (the "last accept" column). With one
# shared queue, whichever worker is in `accept()` takes the next connection, so the slow one
# takes few and nobody waits long. The shared setup does not promise equal shares among the
# fast workers either (look at their counts, and run the cell again: a worker that has just
# accepted may come straight back and find the next connection before a sleeping one is
# woken). It is *work-conserving*: no connection waits while a worker is free, which is what
# keeps the waits short.
#
# Reading your own table: the fast workers' median waits are usually a fraction of a
# millisecond. If yours are several milliseconds, your machine was busy: all workers and the
# client loop are threads of one Python process, and a woken thread needs a free CPU and
# Python's interpreter lock before it can return from `accept()`. The asserts compare the
# slow worker with the fast ones (more than 3 times longer), which holds either way.
#
# > **Myth vs measurement.** The notes say that with `SO_REUSEPORT` "the kernel will then
# > load-balance incoming SYNs" and that it "scales the `accept()` bottleneck". Measured:
# > the kernel *hashes*; it never looks at load. A listener whose worker is stuck keeps
# > receiving its 1/N share, and those clients wait (a median of about (its share / 2) × 4 ms,
# > some 100 ms here, inside the band asserted above) while the other workers are idle. Sharding removes contention
# > on one queue; it does not balance load.
#
# ## 6 · A listener closes with connections in its queue
#
# The notes also promise "zero-downtime restarts": start the new server process with
# `SO_REUSEPORT`, then close the old one. Three listeners, 30 clients connect and each sends
# a 6-byte request; nobody accepts yet. Then the listener with the longest queue closes.
# This runs in a private network namespace, where `net.ipv4.tcp_migrate_req` (a
# per-namespace sysctl, Linux ≥ 5.14) can be set.
#
# **Predict:** what happens to the connections waiting in the closed listener's queue? The
# clients' `connect()` returned long ago.

# %%
closed0 = reuseport_close(migrate=0)
display(closed0)
close_table(closed0)

# %%
reuseport_close.check(closed0)
d0 = closed0.data
q0 = d0["queues_before"][d0["victim"]]
assert d0["outcome"]["reset"] == q0, "tcp_migrate_req=0: every connection queued on the closed listener is reset"
assert set(d0["reset_errors"]) == {"ECONNRESET"}
assert sum(d0["accepted"].values()) == d0["clients"] - q0 == d0["payload_ok"]
assert d0["nstat"]["TcpOutRsts"] == q0 and d0["nstat"]["TcpEstabResets"] == 2 * q0
print(f"listener {d0['victim']} closed with {q0} connections queued: {d0['outcome']['reset']} clients got "
      f"ECONNRESET; the other {d0['clients'] - q0} were accepted with their request intact. Counters: {d0['nstat']}")

# %% [markdown]
# **Explain.** Closing a listener aborts everything in its accept queue: the kernel sends
# each of those clients an RST (`TcpOutRsts`), and `TcpEstabResets` counts each aborted
# connection on both ends. The request bytes those clients had sent are lost. The other
# listeners' queues are untouched.
#
# **Predict:** same run with `tcp_migrate_req = 1`.

# %%
closed1 = reuseport_close(migrate=1)
display(closed1)
close_table(closed1)

# %%
reuseport_close.check(closed1)
d1 = closed1.data
q1 = d1["queues_before"][d1["victim"]]
assert d1["outcome"]["reset"] == 0, "tcp_migrate_req=1: nobody is reset"
assert d1["nstat"]["TcpExtTCPMigrateReqSuccess"] == q1, "the queued connections moved to other listeners"
assert sum(d1["accepted"].values()) == d1["payload_ok"] == d1["clients"], "all accepted, requests intact"
print(f"listener {d1['victim']} closed with {q1} queued: TCPMigrateReqSuccess = "
      f"{d1['nstat']['TcpExtTCPMigrateReqSuccess']}; all {d1['clients']} accepted by the others: {d1['accepted']}")

# %% [markdown]
# > **Myth vs measurement.** "`SO_REUSEPORT` gives zero-downtime restarts." Measured: with the
# > default `tcp_migrate_req = 0`, closing the old listener reset every connection that was
# > waiting in its queue, and the requests those clients had sent were lost (asserted above).
# > `SO_REUSEPORT` alone does not make a restart lossless. The one remedy measured here is
# > `net.ipv4.tcp_migrate_req = 1` (Linux ≥ 5.14): the kernel moved every queued connection
# > to a surviving listener, request intact (the second run). Until the old listener closes,
# > it keeps its share of new connections whatever it is doing (section 5), unless a reuseport
# > BPF program steers them away from it (section 3 attached the simplest one).
#
# ## 7 · Your turn: change N
#
# Pick a number of listeners and press **Run**: 1000 fresh connections, the counts per
# listener, the chi-square verdict, and the bar chart with the equal share as a dashed
# line. (Always live: this needs no privileges. Any N from 1 to 16 works.)
#
# **Predict** before you press: with N = 8, how large is σ for one listener, as a
# fraction of its share? Larger or smaller than with N = 2? Will one run of each show it?

# %%
panel = Panel(reuseport_spread, reuseport_spread.params, render=render, title="SO_REUSEPORT group")
panel

# %% [markdown]
# nbval cannot press buttons, so the next cell calls the panel's callback directly, the way
# the button does, and asserts on what it returns. The cell after it runs N = 2 as well and
# puts the two side by side.

# %%
eight = panel.update(n=8)
panel.show()   # what the panel shows, also kept in the saved notebook

# %%
reuseport_spread.check(eight)
assert len(eight.data["counts"]) == 8 and sum(eight.data["counts"]) == 1000
two = panel.update(n=2)
reuseport_spread.check(two)
for r in (eight, two):
    n, counts = r.data["n"], r.data["counts"]
    t = chi_square(counts)
    worst = max(abs(c - t["expected"]) for c in counts) / t["expected"]
    assert t["p_value"] > P_MIN
    assert worst <= 5 * t["sigma"] / t["expected"], "every listener within its 5σ band"
    print(f"N={n}: σ/share = √((N−1)/1000) = {t['sigma'] / t['expected']:.3f} (arithmetic); "
          f"measured: largest miss {worst:.3f} of the share, χ² p = {t['p_value']:.2f}")

# %% [markdown]
# **Explain.** σ/share = √(1000·(1/N)·(1 − 1/N)) / (1000/N) = √(1000·(N − 1))/1000 = √((N − 1)/1000): 0.084 for
# N = 8, 0.032 for N = 2. Each of 8 listeners gets fewer connections, so its count is
# relatively noisier. That is arithmetic; a single run of each is one draw, and the largest
# miss of a run with N = 2 can now and then exceed that of a run with N = 8. What the asserts
# check on the measurements is that every listener stayed within its own 5σ band.
#
# A value outside 1..16 gets a clear message instead of a crash (asked of a panel of its
# own, so the one above shows no error you did not cause):

# %%
from helpers.errors import ParameterError
try:
    Panel(reuseport_spread, reuseport_spread.params).update(n=17)
except ParameterError as err:
    print(err)
else:
    raise AssertionError("n=17 must be refused")

# %% [markdown]
# ## Check your understanding
#
# **1.** Four listeners got 256, 245, 253 and 246 of 1000 connections. What is the
# chi-square statistic? (Three decimals are enough.)

# %%
answer_1 = ...  # a number

# %%
check_value(answer_1, chi_square([256, 245, 253, 246])["statistic"], name="chi-square statistic", tol=0.002,
            hint="use the formula of section 2; what is E for 1000 connections over 4 listeners?");

# %% [markdown]
# **2.** A client port always lands on listener 1 of a group of 4 (numbered from 0, in
# `listen()` order). Four more listeners join the group. On which listeners of the 8 can
# that client port land now? Give a set.

# %%
answer_2 = ...  # e.g. {0, 1}

# %%
check_value(answer_2, {2, 3}, name="listeners of 8",
            hint="write the listener as ⌊hash · N / 2³²⌋ and see what N → 2N does to it; "
                 "the doubled column of section 3's table shows the pattern");

# %% [markdown]
# **3.** Same setup as section 6, `tcp_migrate_req = 0`, clients and listeners in one
# namespace: three listeners hold 12, 9 and 9 connections in their accept queues, and
# nobody has accepted anything. The listener holding 12 closes. By how much does the
# namespace's `TcpEstabResets` counter go up?

# %%
answer_3 = ...  # an integer

# %%
check_value(answer_3, 2 * 12, name="TcpEstabResets",
            hint="first: which connections does the close abort? Then: how many ends does each of "
                 "them have in this namespace, and which ends count? Compare with section 6's counters.");

# %% [markdown]
# **4.** True or False: with `SO_REUSEPORT`, a listener whose worker is busy gets fewer new
# connections.

# %%
answer_4 = ...  # True or False

# %%
check_value(answer_4, False, name="a busy listener gets fewer",
            hint="in section 5, compare the slow SO_REUSEPORT worker's connections with the other workers'.");

# %% [markdown]
# ## Summary
# * `SO_REUSEPORT` lets N sockets listen on one port, each with its own accept queue and
#   backlog. A newcomer's `bind()` succeeds only if it and the socket holding the port both
#   have the option set by then (the first may set it even after `listen()`) and both belong
#   to the same user; otherwise `EADDRINUSE`.
# * The kernel picks the listener from a hash of the 4-tuple scaled to the group size: the
#   counts are consistent with equal odds (chi-square, neither too uneven nor too even),
#   the same 4-tuple always lands on the same listener, and resizing the group reshuffles
#   where new connections go. A reuseport BPF program (or `SO_INCOMING_CPU`) replaces the
#   hash when the server wants to steer.
# * The hash ignores load: a slow listener keeps its 1/N share and its clients wait (a median
#   of about (share / 2) × its pause) while the other workers idle; one shared queue lets idle
#   workers take over.
# * Closing a listener resets the connections in its queue and their requests are lost,
#   unless `tcp_migrate_req = 1` moves them to another member of the group.
#
# **What's next:** 02_01 Send and receive buffers.

# %%
assert nothing_left_behind() == []
