# %% [markdown]
# # How Linux really runs TCP — start here
#
# A hands-on course taught from the wire up. Every chapter starts real servers on
# loopback, captures their packets with `tcpdump`, dissects them, and asks the kernel
# itself (`ss`, `nstat`, `TCP_INFO`) what it thinks happened. A claim is a *rule* of the
# kernel, evaluated on the machine you run it on: the notebook reads this machine's
# settings, predicts the value, measures it, and asserts that the two agree. Numbers from
# the machine the course was written on appear only as examples in the text.
#
# **Objectives of this page**
# 1. See the course map and how each chapter is built.
# 2. Find out what this machine lets the course do (live capture or replay).
# 3. See the kernel rules the course checks, evaluated on this machine.
# 4. Know how to switch modes and how to report a problem.
#
# **Prerequisites:** Python, and knowing that TCP is a reliable byte stream.
# **Time:** 10 minutes.

# %%
import pandas as pd
from helpers import caps, corpus
from helpers.notebook import mode_banner, whole
from helpers.checks import check_value

mode_banner()

# %% [markdown]
# ## How every chapter works
#
# Each section runs **predict → run → observe → explain**: you write down what you
# expect, the cell runs a real experiment, you look at the packets (a ladder diagram),
# the numbers and the kernel's own view, and the text explains what you saw.
# Where the author's original study notes were wrong, a **myth vs measurement** box
# shows the measurement that corrects them. Each chapter ends with exercises whose
# checkers print ✓ or ✗ with the reason.
#
# ## Course map
#
# | chapter | what you will see | runs without root? |
# |---|---|---|
# | [01_01 Sockets are file descriptors](01_01-sockets-are-file-descriptors.ipynb) | socket/bind/listen/accept step by step, fd numbers and their reuse, 4-tuples, `strace` | yes, fully live |
# | [01_02 The three-way handshake](01_02-three-way-handshake.ipynb) | SYN/SYN-ACK/ACK, ISN arithmetic, MSS/window scale/SACK/timestamps predicted from this machine's settings, a SYN-ACK that drops what the SYN did not offer, SACK blocks after a loss, SO_RCVBUF switching autotuning off, a `TCP_MAXSEG`/`SO_RCVBUF` panel, pyshark and scapy views | sockets live, packets replayed |
# | [01_03 SYN queue and accept queue](01_03-syn-queue-and-accept-queue.ipynb) | backlog + 1 (clamped by `somaxconn`, `listen(0)` holds one), dropped SYNs retried on this kernel's schedule, ListenOverflows, a final ACK that finds the queue full, where `tcp_synack_retries` ends the wait, `tcp_abort_on_overflow` 0 vs 1 | replayed |
# | [01_04 SYN floods and SYN cookies](01_04-syn-flood-and-syn-cookies.ipynb) | a spoofed flood inside a namespace, half-open entries, cookies on and off, the ¾ rule, decoding a cookie | replayed (namespace + capture) |
# | [01_05 SO_REUSEPORT sharding](01_05-reuseport-sharding.ipynb) | N listeners sharing a port, the spread of 1000 connections (chi-square, both tails), steering with a BPF program, EADDRINUSE, a shared queue, closing a listener | live (migration replayed) |
# | [02_01 Send and receive buffers](02_01-send-and-receive-buffers.ipynb) | `send()` returns when bytes reach the send buffer; the kernel doubles SO_SNDBUF/SO_RCVBUF; bytes queued before blocking; `ss -tm` and TCP_INFO | live |
# | [02_02 Flow control and the zero window](02_02-flow-control-and-zero-window.ipynb) | window falling to 0, zero-window probes backing off from the RTO, window update, Wireshark's "Keep-Alive" label, TCP_USER_TIMEOUT and TCP_RTO_MAX_MS ending or capping the probing | replayed (probe limits live) |
# | [02_03 Nagle and delayed ACK](02_03-nagle-and-delayed-ack.ipynb) | the write-write-read stall (the delayed-ACK floor from HZ), counted in a namespace; NODELAY, CORK, one write, QUICKACK, body > MSS, Minshall's Nagle | live (ladder replayed) |
# | [02_04 Streams and framing](02_04-streams-and-framing.ipynb) | sends coalesce and split (and wait for a delayed ACK), partial writes, the queues at EAGAIN, a length-prefixed protocol and its incremental parser | live (segments replayed) |
# | [02_05 Backpressure](02_05-backpressure.ipynb) | blocking send, EAGAIN, the send buffer set at connect and what `ip tcp_metrics` remembers, asyncio drain, memory with and without backpressure | live (metrics cache replayed) |
# | [02_06 Zero-copy sendfile](02_06-zero-copy-sendfile.ipynb) | read/write vs sendfile vs splice: throughput, CPU time, system calls | live |
# | [03_01 FIN teardown and TIME_WAIT](03_01-fin-teardown-and-time-wait.ipynb) | client-first, server-first and simultaneous close as state swimlanes, TIME_WAIT's timer against TCP_TIMEWAIT_LEN, `tcp_fin_timeout` and FIN_WAIT_2, half-close, CLOSE_WAIT, rebinding over TIME_WAIT, `tcp_max_tw_buckets` overflow | replayed (namespaces) |
# | [03_02 RST and the abortive close](03_02-rst-and-abortive-close.ipynb) | RST from SO_LINGER(on, 0), from close() with unread data and from a closed port, the bytes each destroys, FIN after a read timeout, EPIPE and SIGPIPE, SO_LINGER(on, N), keepalive and TCP_USER_TIMEOUT finding a vanished peer | replayed (SIGPIPE and SO_LINGER N live) |
# | [03_03 The 4-tuple and port reuse](03_03-four-tuple-and-port-reuse.ipynb) | fd ↔ inode ↔ 4-tuple, delivery by 4-tuple, ephemeral port exhaustion and port parity, more destinations, IP_BIND_ADDRESS_NO_PORT, TIME_WAIT and `tcp_tw_reuse` 0/1/2, 2^48 against the port range | live (namespace parts replayed) |
# | 04_01 … 05_01 Servers under load | I/O models, limits, the observability toolkit, a capstone | coming next |

# %% [markdown]
# ## What can this machine do?
#
# **Predict:** are you running as root here? (The `uid=` in the report at the end of this
# page tells: 0 is root.) On Binder or a laptop account, packet
# capture is usually impossible: capturing needs the `CAP_NET_RAW` capability, and
# network namespaces need `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`.
#
# **Run:** the course checks once, by really starting `tcpdump` on `lo`, really creating,
# entering and deleting a named network namespace and really opening a raw socket: a guess from the
# user id would be wrong in containers, where root may lack these capabilities.

# %%
table = caps.table()
whole(table)     # every cell in full (pandas would cut them at 50 characters)

# %% [markdown]
# **Observe.** The last column says what each capability's absence would mean. The course
# never falls back silently: when a chapter cannot capture, it reads the recording made
# for the same experiment and parameters from `pcaps/`, and says so in an orange banner.

# %%
c = caps.capabilities()
assert list(table["capability"]) == ["live capture", "namespaces", "tshark", "raw sockets", "strace"]
# A raw socket works exactly when this process holds CAP_NET_RAW; tcpdump can capture
# without it only if the tcpdump binary carries the capability itself (setcap).
assert bool(c.raw_sockets) == bool(caps.has_cap(caps.CAP_NET_RAW))
if caps.has_cap(caps.CAP_NET_RAW) and caps.find_tool("tcpdump"):
    assert c.live_capture, "with CAP_NET_RAW and tcpdump installed, capture must work"
# Namespaces need both capabilities, and also a machine that lets `ip netns` mount
# (a container or a chroot may not, whatever the capabilities): so "yes" implies both.
assert not c.namespaces or (caps.has_cap(caps.CAP_SYS_ADMIN) and caps.has_cap(caps.CAP_NET_ADMIN))
print(f"effective capability mask of this kernel process: {caps.effective_caps():#x}")

# %% [markdown]
# ## The kernel's rules, on this machine
#
# Your kernel may not be the one the course was written on: a different version, other
# settings (a stock kernel caps socket buffers at 212,992 bytes; older kernels double the
# SYN retry gaps; the default congestion control differs between distributions), and a
# different memory of past connections (`ip tcp_metrics`). So each chapter computes its
# predictions from *this* machine's parameters. The table evaluates the main rules here
# and on the machine that recorded the corpus.
#
# **Predict:** which rows do you expect to differ between your machine and the reference?

# %%
from helpers import rules
here = rules.machine()
print(here.describe())
overview = pd.DataFrame(rules.overview(here, corpus.reference_machine()))
whole(overview)

# %% [markdown]
# **Observe.** Where a row says *differs*, a chapter run live here shows this machine's
# value and a replay shows the reference machine's; both are checked against the same
# rule. The send buffer row depends on what the kernel remembers about 127.0.0.1 from
# earlier connections (chapter 02_05 explains it), so it can change between two runs.
#
# Two rules checked right now, on real sockets: the kernel doubles a buffer size you ask
# for (after capping it), and a listener with `listen(2)` that never accepts completes
# backlog + 1 handshakes.

# %%
rules.spot_checks(here);

# %% [markdown]
# ## Live or replay: choosing the mode
#
# The environment variable `TCPCOURSE_MODE` picks the mode before JupyterLab starts:
#
# * `auto` (the default): live where the capabilities allow, replay where they don't;
# * `live`: always live; an experiment that cannot run live stops with an error saying why;
# * `replay`: always read the corpus, even as root (useful to compare your machine with
#   the reference one).
#
# Plain sockets, `ss`, `nstat` and `TCP_INFO` need no privileges, so they always run live.
#
# The outputs committed with these notebooks (what you see on GitHub before running
# anything) were produced in `replay` mode so that they are the same on every rebuild;
# that is why they may say "replay" next to "live capture: yes".

# %%
print("mode now:", caps.mode())
assert caps.mode() in caps.MODES

# %% [markdown]
# ## The recorded corpus
#
# Every experiment that needs privileges has been recorded over the parameter values its
# panel offers. The manifest says for each file what was run, on which kernel, with
# which sysctls and tool versions, and which claim it shows. The test suite re-hashes every
# file and re-checks every claim.

# %%
manifest = corpus.read_manifest()
recordings = pd.DataFrame([{"chapter": e["chapter"], "experiment": e["experiment"],
                            "parameters": corpus.slug(e["params"]), "kernel": e["kernel"],
                            "claim": e["invariant"]} for e in manifest["entries"]])
print(f"{len(recordings)} recordings, {corpus.total_bytes() / 1e6:.2f} MB")
recordings.groupby(["chapter", "experiment"]).size().rename("recordings").to_frame()

# %%
assert len(recordings) > 0 and corpus.total_bytes() < 20e6
assert set(recordings["chapter"]) >= {"01_02", "01_03", "01_04", "02_02", "02_03", "02_04"}

# %% [markdown]
# ## Reporting a problem
#
# When something does not work, open an issue with the output of the next cell: it names
# the mode, your kernel, each capability and the settings the rules read.

# %%
print(caps.summary())

# %% [markdown]
# ## Check your understanding
#
# **1.** In which mode will the captures of chapter 01_02 run on *this* machine right now?
# Answer `"live"` or `"replay"`.

# %%
answer_1 = ...  # "live" or "replay"

# %%
def expected_mode():
    if caps.mode() != "auto":
        return caps.mode()
    return "live" if caps.capabilities().live_capture else "replay"

check_value(answer_1, expected_mode(), name="run mode",
            hint="look at the 'live capture' row of the table and at TCPCOURSE_MODE");

# %% [markdown]
# **2.** Which Linux capability does packet capture need? (for example `"CAP_SYS_TIME"`)

# %%
answer_2 = ...  # a capability name

# %%
check_value(answer_2, "CAP_NET_RAW", name="capability for capture",
            hint="capture opens an AF_PACKET socket; raw sockets need the same capability");

# %% [markdown]
# ## Summary
# * The course runs live where it can and replays recorded captures where it cannot, and
#   always says which.
# * Every claim is a kernel rule evaluated on this machine's settings and asserted on data:
#   if your kernel behaves differently, a cell fails and shows the rule, its inputs, what
#   your machine did, and the recorded file to compare with.
#
# **What's next:** [01_01 Sockets are file descriptors](01_01-sockets-are-file-descriptors.ipynb).
