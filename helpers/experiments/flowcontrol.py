"""Chapter 02_02: flow control and the zero window.

One experiment, :func:`zero_window`, inside a private network namespace (MTU 1500,
offloads off, so the capture shows real 1448-byte segments and the namespace's counters
are the experiment's own):

1. A reader accepts a connection (its SO_RCVBUF set on the listener before ``listen()``)
   and then does not read for *pause* seconds.
2. A writer sends ``2 × SO_RCVBUF (as doubled) + 32 KB``: more than the reader's buffer
   can hold. Its ``sendall`` returns at once (the rest waits in its send buffer).
   The reader, not reading, delays its ACKs (~40 ms); the writer's tail-loss-probe
   timer fires first and re-sends the last segment (a duplicate: the reader answers
   with a D-SACK). These retransmissions all come before the window is 0.
3. The reader's advertised window falls to 0. The writer's kernel then sends zero-window
   probes, at intervals that double (the retransmission timeout, backed off); the reader's
   kernel answers them with its zero window, at most one answer per
   ``net.ipv4.tcp_invalid_ratelimit`` (500 ms).
4. After *pause* the reader reads everything: its kernel sends a window update (same ACK
   number, window > 0), and the rest of the data follows.

The writer's TCP_INFO (snd_wnd, backoff, probes, rto) is sampled every 20 ms during the
pause; ``ss -tm`` is read once during the stall; the namespace's nstat counters are
diffed around the run.
"""
from __future__ import annotations

import socket
import threading
import time

from .. import progress
from ..params import Param
from .base import Result, experiment

SAMPLE_EVERY = 0.02      # s between TCP_INFO samples of the writer
EXTRA = 32768            # bytes written beyond what the reader's buffer can hold
REPLY_WITHIN = 0.02      # s: a receiver segment this soon after a probe answers it
COUNTERS = ("TcpExtTCPWinProbe", "TcpExtTCPToZeroWindowAdv", "TcpExtTCPFromZeroWindowAdv",
            "TcpExtTCPWantZeroWindowAdv", "TcpExtTCPACKSkippedSeq", "TcpExtTCPLossProbes",
            "TcpRetransSegs", "TcpExtDelayedACKs", "TcpExtTCPZeroWindowDrop", "TcpExtTCPDSACKOldSent",
            "TcpExtTCPDSACKRecv", "TcpExtTCPTimeouts")


@experiment(
    "zero_window", chapter="02_02", needs={"live_capture", "namespaces"}, seconds=3.0,
    params=[
        Param("rcvbuf", "SO_RCVBUF (reader)", 16384, choices=(4096, 16384, 65536), minimum=2048,
              maximum=1 << 20, unit="bytes",
              doc="the reader's receive buffer, set on the listener before listen() (the kernel doubles it)"),
        # whole seconds: the corpus names files after the parameters, and a "." would cut the name
        Param("pause", "reader pause", 2, choices=(1, 2, 4), minimum=1, maximum=8, unit="s",
              doc="how long the reader does not read; probes back off 0.2, 0.4, 0.8, 1.6 s..."),
    ],
    claim="a reader that pauses: window falls to 0, zero-window probes at doubling intervals, "
          "a window update when reading resumes",
)
def zero_window(run, rcvbuf: int = 16384, pause: int = 2) -> dict:
    """Capture a writer that fills a paused reader's window; see the module docstring."""
    from ..kernel import nstat_delta, ss, tcp_info
    from ..netns import Namespace

    progress.report(0.0, "creating a namespace (MTU 1500, offloads off)")
    with Namespace(mtu=1500, offloads=False, name="zerowin") as ns:
        ratelimit = int(ns.sysctl("net.ipv4.tcp_invalid_ratelimit"))
        keepalive_time = int(ns.sysctl("net.ipv4.tcp_keepalive_time"))
        early_retrans = int(ns.sysctl("net.ipv4.tcp_early_retrans"))
        try:   # Linux >= 6.15 (the compiled-in TCP_RTO_MAX, 120 s, before)
            rto_max_ms = int(ns.sysctl("net.ipv4.tcp_rto_max_ms"))
        except Exception:  # noqa: BLE001 - older kernels have no such sysctl
            rto_max_ms = None
        lst = ns.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        port = lst.getsockname()[1]
        writer = ns.socket()
        reader = None
        state = {"written": 0, "done_at": None, "error": None}
        try:
            with run.capture([port], ns=ns, snaplen=128), nstat_delta(ns) as counters:
                writer.settimeout(pause + 10)
                t0 = time.monotonic()
                writer.connect(("127.0.0.1", port))
                lst.settimeout(5)
                reader, _ = lst.accept()
                got_rcvbuf = reader.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                keepalive = writer.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                total = 2 * got_rcvbuf + EXTRA

                def write() -> None:
                    try:
                        writer.sendall(b"x" * total)
                        state["done_at"] = time.monotonic() - t0
                        writer.shutdown(socket.SHUT_WR)
                    except OSError as exc:  # reported, never raised in the thread
                        state["error"] = repr(exc)

                th = threading.Thread(target=write, name="zero-window-writer", daemon=True)
                th.start()
                samples, stall_ss, last = [], None, None
                while True:
                    now = time.monotonic() - t0
                    if now >= pause:
                        break
                    i = tcp_info(writer)
                    row = {"t": round(now, 4), "snd_wnd": i.snd_wnd, "backoff": i.backoff, "probes": i.probes,
                           "rto_ms": i.rto // 1000, "notsent": i.notsent_bytes, "unacked": i.unacked}
                    key = tuple(v for k, v in row.items() if k != "t")
                    if key != last:
                        samples.append(row)
                        last = key
                    if stall_ss is None and i.snd_wnd == 0 and now > 0.2:
                        view = ss(port=port, ns=ns)
                        view = view[view["state"] != "LISTEN"]
                        stall_ss = {("reader" if int(r["lport"]) == port else "writer"):
                                    {"state": r["state"], **{k: int(r[k]) for k in (
                                        "recv_q", "send_q", "skmem_r", "skmem_rb", "skmem_w", "skmem_tb")}}
                                    for _, r in view.iterrows()}
                    progress.report(0.05 + 0.85 * now / pause, f"reader paused: {now:.1f} of {pause:g} s")
                    time.sleep(SAMPLE_EVERY)
                final = tcp_info(writer)
                samples.append({"t": round(time.monotonic() - t0, 4), "snd_wnd": final.snd_wnd,
                                "backoff": final.backoff, "probes": final.probes, "rto_ms": final.rto // 1000,
                                "notsent": final.notsent_bytes, "unacked": final.unacked})
                resume_at = time.monotonic() - t0
                progress.report(0.92, "reader reads")
                received = 0
                reader.settimeout(5)
                deadline = time.monotonic() + 5
                while received < total and time.monotonic() < deadline:
                    b = reader.recv(65536)
                    if not b:
                        break
                    received += len(b)
                th.join(5)
                reader.close()
                writer.close()
                time.sleep(0.05)   # the FIN exchange, inside the capture
        finally:
            for s in (reader, writer, lst):
                if s is not None:
                    s.close()
    progress.report(1.0, "done")
    return {"rcvbuf": rcvbuf, "pause": pause, "port": port, "reader_rcvbuf": got_rcvbuf, "total": total,
            "received": received, "writer_done_at": state["done_at"], "writer_error": state["error"],
            "resume_at": resume_at, "samples": samples, "stall_ss": stall_ss,
            "counters": {k: counters.get(k, 0) for k in COUNTERS}, "tcp_invalid_ratelimit_ms": ratelimit,
            "mtu": 1500, "writer_so_keepalive": keepalive, "tcp_keepalive_time_s": keepalive_time,
            "tcp_early_retrans": early_retrans, "tcp_rto_max_ms": rto_max_ms}


# ----------------------------------------------------------------------------- analysis

def analyse(result: Result, df=None) -> dict:
    """The zero-window episode in the capture: the zero-window advertisements, the probes,
    which probes were answered, and the window update. Times are seconds since the SYN."""
    df = result.segments() if df is None else df
    port = result.data["port"]
    to_w = df[df["sport"] == port]            # reader -> writer: ACKs with the window
    from_w = df[df["dport"] == port]          # writer -> reader: data and probes
    zeros = to_w[(to_w["win"] == 0) & ~to_w["flags"].str.contains("SYN|RST|FIN")]
    retrans = _retransmissions(from_w)
    if zeros.empty:
        return {"zeros": zeros, "probes": from_w.iloc[0:0], "first_zero": None, "update": None,
                "answered": [], "to_w": to_w, "from_w": from_w, "retrans": retrans}
    first_zero = zeros.iloc[0]
    z_ack = int(first_zero["ack"])
    after_zero = to_w[to_w["t"] > first_zero["t"]]
    opened = after_zero[after_zero["win"] > 0]
    update = opened.iloc[0] if len(opened) else None
    t_end = update["t"] if update is not None else float("inf")
    probes = from_w[(from_w["t"] > first_zero["t"]) & (from_w["t"] < t_end) & (from_w["len"] == 0)
                    & (from_w["seq"] == z_ack - 1) & ~from_w["flags"].str.contains("SYN|FIN|RST")]
    answered = []
    for _, p in probes.iterrows():
        reply = to_w[(to_w["t"] >= p["t"]) & (to_w["t"] <= p["t"] + REPLY_WITHIN) & (to_w["win"] == 0)]
        answered.append(bool(len(reply)))
    return {"zeros": zeros, "probes": probes, "first_zero": first_zero, "update": update,
            "answered": answered, "to_w": to_w, "from_w": from_w, "zero_ack": z_ack, "retrans": retrans}


def _retransmissions(from_w):
    """The writer's data segments that carry only bytes it had already sent, each with
    ``orig_t``: when those bytes were first sent."""
    rows, top, first_sent = [], None, {}
    for idx, r in from_w[from_w["len"] > 0].sort_values("t").iterrows():
        seq, end = int(r["seq"]), int(r["seq"]) + int(r["len"])
        if top is not None and end <= top:
            rows.append((idx, first_sent.get(seq, float("nan"))))
        else:
            first_sent.setdefault(seq, float(r["t"]))
            top = end if top is None else max(top, end)
    out = from_w.loc[[i for i, _ in rows]].copy()
    out["orig_t"] = [t for _, t in rows]
    return out


def probe_table(result: Result, a: dict | None = None):
    """One row per probe: when (since the first zero window), the interval to the previous
    probe (the first: to the zero-window ACK), answered or not, and the time since the last
    answered probe (what the receiver's rate limit looks at)."""
    import pandas as pd
    a = analyse(result) if a is None else a
    if a["first_zero"] is None:
        return pd.DataFrame(columns=["probe", "t", "since zero window", "interval", "ratio", "answered",
                                     "since last answer"])
    t0 = float(a["first_zero"]["t"])
    rows, prev, last_answer = [], t0, None
    for n, ((_, p), ans) in enumerate(zip(a["probes"].iterrows(), a["answered"]), 1):
        t = float(p["t"])
        iv = t - prev
        rows.append({"probe": n, "t": round(t, 4), "since zero window": round(t - t0, 4),
                     "interval": round(iv, 4),
                     "ratio": round(iv / rows[-1]["interval"], 2) if rows else None,
                     "answered": ans,
                     "since last answer": None if last_answer is None else round(t - last_answer, 4)})
        if ans:
            last_answer = t
        prev = t
    return pd.DataFrame(rows)


def shown(table):
    """*table* for display: empty cells (the first probe has no previous one) as "—"."""
    return table.astype(object).where(table.notna(), "—")


def check_zero_window(result: Result) -> None:
    """The 02_02 claims on one capture (live or replayed)."""
    d = result.data
    a = analyse(result)
    assert d["writer_error"] is None, f"the writer failed: {d['writer_error']}"
    assert d["received"] == d["total"], "every byte arrives once the reader reads"
    assert d["writer_done_at"] is not None and d["writer_done_at"] < d["resume_at"], \
        "sendall() returned while the reader was still paused (the rest waited in the send buffer)"
    assert a["first_zero"] is not None, "the reader's advertised window falls to 0"
    to_w = a["to_w"]
    before = to_w[(to_w["t"] < a["first_zero"]["t"]) & ~to_w["flags"].str.contains("SYN")]
    assert len(before) and before["win"].iloc[-1] > 0, "the window is open before it falls to 0"
    # probes
    probes = a["probes"]
    stall = d["resume_at"] - float(a["first_zero"]["t"])
    if stall > 0.6:
        assert len(probes) >= 1, f"the writer probes a zero window (stall {stall:.2f} s, no probe)"
    table = probe_table(result, a)
    assert 0.18 <= table["interval"].iloc[0] <= 1.5 if len(table) else True, \
        "the first probe follows the zero window after one retransmission timeout (>= 200 ms)"
    for r in table["ratio"].dropna():
        assert 1.6 <= r <= 2.5, f"probe intervals double (ratio {r})"
    assert (a["from_w"].loc[probes.index, "len"] == 0).all(), "Linux probes carry no data"
    # rate-limited answers: a probe within tcp_invalid_ratelimit of the last answer gets none
    limit = d["tcp_invalid_ratelimit_ms"] / 1000
    for _, row in table.iterrows():
        since = row["since last answer"]
        if since is None or since != since:
            assert row["answered"], "the first probe is answered with the zero window"
        elif since < limit - 0.02:
            assert not row["answered"], f"a probe {since:.3f} s after the last answer is not answered"
        elif since > limit + 0.02:
            assert row["answered"], f"a probe {since:.3f} s after the last answer is answered"
    assert d["counters"]["TcpExtTCPACKSkippedSeq"] >= table["answered"].eq(False).sum(), \
        "each unanswered probe counts as TCPACKSkippedSeq"
    # window update
    upd = a["update"]
    assert upd is not None, "a window update follows when reading resumes"
    assert int(upd["ack"]) == a["zero_ack"], "the window update acknowledges nothing new: same ACK, window > 0"
    assert float(upd["t"]) >= d["resume_at"] - 0.05, "the window opens only when the reader reads"
    later = a["from_w"][(a["from_w"]["t"] > upd["t"]) & (a["from_w"]["len"] > 0)]
    assert len(later) and int(later.iloc[0]["seq"]) == a["zero_ack"], "data resumes where it stopped"
    # the kernel's view
    c = d["counters"]
    assert c["TcpExtTCPWinProbe"] == len(probes), \
        f"nstat TCPWinProbe {c['TcpExtTCPWinProbe']} = probes in the capture {len(probes)}"
    assert c["TcpExtTCPToZeroWindowAdv"] >= 1 and c["TcpExtTCPFromZeroWindowAdv"] >= 1, \
        "nstat counts the window closing to 0 and opening again"
    # retransmissions: never during the stall (the writer only probes), and the capture's
    # count is the kernel's
    rt = a["retrans"]
    assert not ((rt["t"] > float(a["first_zero"]["t"])) & (rt["t"] < float(upd["t"]))).any(), \
        "no retransmission while the window is 0: the writer only probes"
    assert len(rt) == c["TcpRetransSegs"], \
        f"retransmissions in the capture {len(rt)} = nstat TcpRetransSegs {c['TcpRetransSegs']}"
    stalled = [s for s in d["samples"] if s["t"] > float(a["first_zero"]["t"]) + 0.01]
    assert stalled and all(s["snd_wnd"] == 0 for s in stalled), "TCP_INFO snd_wnd is 0 during the stall"
    assert stalled[-1]["backoff"] >= len(probes[probes["t"] < stalled[-1]["t"] - 0.01]), \
        "TCP_INFO backoff grows by one per probe"


zero_window.invariant = check_zero_window


# ----------------------------------------------------------------------------- pictures

def samples_frame(result: Result):
    """The writer's TCP_INFO samples (one row per change) as a DataFrame."""
    import pandas as pd
    return pd.DataFrame(result.data["samples"])


def plot(result: Result, df=None):
    """Time-sequence graph (data, ACK line, window edge, zero windows, probes) above the
    writer's TCP_INFO backoff, both against time since the SYN."""
    import matplotlib.pyplot as plt
    import numpy as np
    from ..plots import COLORS, time_sequence, use_style
    use_style()
    df = result.segments() if df is None else df
    d = result.data
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    time_sequence(df, sender=("127.0.0.1", _writer_port(df, d["port"])), ax=ax,
                  title=f"Zero window: SO_RCVBUF {d['rcvbuf']:,} (→{d['reader_rcvbuf']:,}), reader paused "
                        f"{d['pause']:g} s")
    ax.set_xlabel("")   # shared with the panel below
    for a_ in (ax, ax2):
        a_.axvline(d["resume_at"], color="grey", ls=":", lw=1.2)
    ax.text(d["resume_at"], ax.get_ylim()[0], "reader reads ", va="bottom", ha="right", fontsize=8.5,
            color="grey")
    s = samples_frame(result)
    ax2.step(s["t"], s["backoff"], where="post", color=COLORS["probe"], label="TCP_INFO backoff (writer)")
    ax2.step(s["t"], np.minimum(s["snd_wnd"], 1), where="post", color=COLORS["window"], ls="--",
             label="snd_wnd > 0 (1) or 0")
    ax2.set_ylabel("count")
    ax2.set_xlabel("time (s since the SYN, the capture's first packet)")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def _writer_port(df, port: int) -> int:
    return int(df[df["dport"] == port]["sport"].iloc[0])


def render(result: Result) -> list:
    """What the 02_02 panel shows: banner, a summary line, the probe table, the plot."""
    a = analyse(result)
    table = probe_table(result, a)
    d = result.data
    upd = a["update"]
    note = (f"window 0 at {float(a['first_zero']['t']):.3f} s; {len(table)} probes, "
            f"{int(table['answered'].sum()) if len(table) else 0} answered; window update at "
            f"{float(upd['t']):.3f} s (win {int(upd['win']):,}); nstat TCPWinProbe "
            f"{d['counters']['TcpExtTCPWinProbe']}, TCPACKSkippedSeq {d['counters']['TcpExtTCPACKSkippedSeq']}"
            if a["first_zero"] is not None and upd is not None else "no zero-window episode in this run")
    return [result, note, shown(table), plot(result)]
