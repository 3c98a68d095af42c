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

import errno
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

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
    from .. import rules
    from ..kernel import nstat_delta, ss, tcp_info
    from ..netns import Namespace

    progress.report(0.0, "creating a namespace (MTU 1500, offloads off)")
    with Namespace(mtu=1500, offloads=False, name="zerowin") as ns:
        snapshot = rules.Machine.read(ns).as_dict()   # this namespace's settings, before any traffic
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
                sndbuf_at_connect = writer.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
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
                        row["t_read"] = round(time.monotonic() - t0, 4)   # TCP_INFO was read between t and t_read
                        row["srtt_us"] = i.rtt                            # the smoothed RTT (not part of the key)
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
            "tcp_early_retrans": early_retrans, "tcp_rto_max_ms": rto_max_ms,
            "writer_sndbuf_at_connect": sndbuf_at_connect, "machine": snapshot}


# ----------------------------------------------------------------------------- analysis

def analyse(result: Result, df=None) -> dict:
    """The zero-window episode in the capture: the zero-window advertisements, the probes,
    which probes were answered, and the window update. Times are seconds since the SYN."""
    from ..dissect import retransmissions
    df = result.segments() if df is None else df
    port = result.data["port"]
    to_w = df[df["sport"] == port]            # reader -> writer: ACKs with the window
    from_w = df[df["dport"] == port]          # writer -> reader: data and probes
    zeros = to_w[(to_w["win"] == 0) & ~to_w["flags"].str.contains("SYN|RST|FIN")]
    retrans = retransmissions(from_w)
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


def _machine(result: Result):
    return result.machine_snapshot()


def _fin(ss_row: dict) -> int:
    return 1 if ss_row.get("state") == "FIN-WAIT-1" else 0


# --- section 1: sendall() and the writer's send buffer ------------------------------------

@dataclass
class SendallTiming:
    """When the writer's ``sendall()`` returned, and why (sk_stream_memory_free in
    include/net/sock.h): a blocking send returns once every byte is *queued*, which needs the
    bytes the reader's buffer cannot take to fit in the writer's send buffer. The buffer is
    charged with packet memory (ss ``skmem_w`` for ``Send-Q`` payload bytes), not payload.

    The prediction comes from the kernel's own bounds on that charge, not from the charge
    measured afterwards: at least one byte per payload byte, at most the worst-case truesize
    of a full segment (:func:`helpers.rules.skb_truesize_per_mss`, what tcp_sndbuf_expand()
    budgets) per segment of the capture's size. If even the worst case fits in the send
    buffer, sendall() must return during the pause; if even the payload alone does not, it
    cannot (beyond one segment's slack); in between, the rule leaves it open and the run's outcome is only reported."""
    total: int
    reader_holds: int          # payload the reader's buffer took (the zero-window ACK number − 1)
    must_queue: int            # total − reader_holds: what the writer's buffer has to hold
    mss: int                   # the writer's largest segment in the capture
    truesize: int              # rules.skb_truesize_per_mss(mss, MAX_TCP_HEADER): worst case per segment
    queued: int                # Send-Q payload at the stall (ss)
    charged: int               # its memory at the stall (ss skmem_w)
    sndbuf: int                # the writer's send buffer at the stall (skmem_tb)
    sndbuf_at_connect: int | None
    predicted_returns: bool | None   # None: between the two bounds, the rule does not decide
    done_at: float | None
    resume_at: float
    returned_before_resume: bool

    @property
    def worst_case(self) -> int:
        """Memory the writer's queue would need at the kernel's worst-case charge."""
        return -(-self.must_queue // self.mss) * self.truesize

    def sentence(self) -> str:
        when = (f"returned after {self.done_at * 1000:.1f} ms, while the reader was still paused"
                if self.returned_before_resume else
                f"returned only after the reader resumed ({self.done_at - self.resume_at:+.3f} s)")
        verdict = {True: "so the rule says it returns during the pause",
                   False: "so the rule says it waits for the reader",
                   None: "so the rule alone does not decide: the real charge does"}[self.predicted_returns]
        return (f"`sendall()` of {self.total:,} bytes {when}. The reader's buffer took "
                f"{self.reader_holds:,} bytes, so the writer had to queue {self.must_queue:,}: between "
                f"{self.must_queue:,} and {self.worst_case:,} bytes of memory ({self.truesize:,} per "
                f"{self.mss:,}-byte segment at worst), against a send buffer of {self.sndbuf:,}"
                + (f" (it was {self.sndbuf_at_connect:,} right after connect(); the kernel grows it with "
                   f"the congestion window)" if self.sndbuf_at_connect and self.sndbuf_at_connect != self.sndbuf
                   else "") + f", {verdict}. Measured at the stall: {self.charged:,} bytes of memory for "
                f"{self.queued:,} queued ({self.charged / max(self.queued, 1):.2f} per byte).")

    def check(self, result: Result | None = None) -> None:
        from .. import rules
        ref = result.reference() if result is not None else None
        segs = -(-self.queued // self.mss)
        rules.Prediction(
            "tcp_sendmsg_locked()", "payload ≤ skmem_w ≤ segments × truesize(one full segment)",
            {"Send-Q": self.queued, "mss": self.mss, "segments": segs, "truesize": self.truesize},
            self.queued, low=self.queued, high=segs * self.truesize, unit="B",
        ).check(self.charged, "the writer's send-queue memory at the stall (ss skmem_w)", reference=ref)
        if self.predicted_returns is None:
            print(f"sendall() {'returned' if self.returned_before_resume else 'did not return'} during the "
                  f"pause: the bounds ({self.must_queue:,} … {self.worst_case:,} B against {self.sndbuf:,}) "
                  "leave it open, so this is a measurement, not a checked claim")
            return
        rules.Prediction(
            "sk_stream_memory_free()", "returns during the pause if worst-case memory ≤ sndbuf; "
            "never if payload > sndbuf + truesize",
            {"must_queue": self.must_queue, "worst case": self.worst_case, "truesize": self.truesize,
             "sndbuf": self.sndbuf},
            self.predicted_returns).check(self.returned_before_resume, "sendall() returned before the reader resumed",
                                          reference=ref)


def sendall_timing(result: Result, a: dict | None = None) -> SendallTiming:
    from .. import rules
    a = analyse(result) if a is None else a
    d = result.data
    w = d["stall_ss"]["writer"]
    holds = a["zero_ack"] - 1
    must = d["total"] - holds
    df = result.segments()
    sent = df[(df["dport"] == d["port"]) & (df["len"] > 0)]
    mss = int(sent["len"].max())
    m = _machine(result)
    per = rules.skb_truesize_per_mss(mss, m.max_tcp_header, m.skb_shinfo)
    sndbuf = w["skmem_tb"]
    worst = -(-must // mss) * per
    # sk_stream_memory_free(): bytes are appended to the tail skb unchecked, so up to one
    # segment's truesize beyond sndbuf still gets queued (rules.sk_stream_memory_free's band)
    predicted = True if worst <= sndbuf else (False if must > sndbuf + per else None)
    done = d["writer_done_at"]
    return SendallTiming(total=d["total"], reader_holds=holds, must_queue=must, mss=mss, truesize=per,
                         queued=max(w["send_q"] - _fin(w), 0), charged=w["skmem_w"], sndbuf=sndbuf,
                         sndbuf_at_connect=d.get("writer_sndbuf_at_connect"),
                         predicted_returns=predicted, done_at=done, resume_at=d["resume_at"],
                         returned_before_resume=done is not None and done < d["resume_at"])


# --- section 2: the window closes -----------------------------------------------------------

@dataclass
class WindowClosing:
    """The reader's advertised windows from the SYN-ACK to the zero window, and the gaps
    between its ACKs: at once while its window can move, then delayed-ACK timer waits."""
    mss: int
    syn_ack_win: int
    wins: list[int]              # the reader's windows after the SYN-ACK, up to the first 0
    first_zero_t: float
    reader_rcvbuf: int
    held: int
    quick: int                   # ACKs sent at once (< 10 ms after the writer's latest segment)
    delayed_ms: list[float]      # the others: ms from the first data segment they acknowledge
    delayed_acks: int            # nstat TcpExtDelayedACKs (the namespace's own)

    def sentence(self) -> str:
        rise = ("rose to" if self.wins[0] > self.syn_ack_win else "started at")
        return (f"The reader's window was {self.syn_ack_win:,} bytes in the SYN-ACK, {rise} "
                f"{self.wins[0]:,} with the first ACK of data, and fell to 0 at {self.first_zero_t:.3f} s, "
                f"when the reader held {self.held:,} bytes of payload in its {self.reader_rcvbuf:,}-byte "
                f"buffer ({self.held / self.reader_rcvbuf:.0%}). {self.quick} ACKs left at once, "
                f"{len(self.delayed_ms)} came from the delayed-ACK timer, "
                f"{', '.join(f'{g:.0f}' for g in self.delayed_ms)} ms after the data they acknowledge "
                f"(nstat DelayedACKs {self.delayed_acks}).")

    def check(self, result: Result) -> None:
        from .. import rules
        space = rules.tcp_win_from_space(self.reader_rcvbuf)
        pred = rules.tcp_select_initial_window(result.machine_snapshot(), space, self.mss, window_clamp=space)
        rules.Prediction(pred.rule, "rcv_wnd = min(rounddown(space, mss), 65535), space = tcp_win_from_space(SO_RCVBUF)",
                         pred.inputs, pred.value["rcv_wnd"], unit="B").check(
            self.syn_ack_win, "window in the SYN-ACK", reference=result.reference())
        assert self.wins and self.wins[0] > 0 and self.wins[-1] == 0, "the window is open, then falls to 0"
        assert 0 < self.held < self.reader_rcvbuf, "the buffer fills before all of it holds payload"
        assert self.quick >= 1, "the first ACK leaves at once"
        share = rules.share_in_band(rules.delack_band(result.machine_snapshot()), self.delayed_ms)
        if self.delayed_ms:
            rules.assert_rule(result, rules.delack_share, share, what="share of timer-sent ACK waits in DELACK_BAND")
        assert len(self.delayed_ms) == self.delayed_acks, \
            f"{len(self.delayed_ms)} timer-paced ACKs in the capture, nstat DelayedACKs {self.delayed_acks}"


def window_closing(result: Result, a: dict | None = None) -> WindowClosing:
    a = analyse(result) if a is None else a
    to_w, from_w = a["to_w"], a["from_w"]
    t_zero = float(a["first_zero"]["t"])
    syn_ack = to_w[to_w["flags"].str.contains("SYN")].iloc[0]
    opening = to_w[(to_w["t"] <= t_zero) & ~to_w["flags"].str.contains("SYN")]
    data = from_w[from_w["len"] > 0]
    first_data_t = float(data["t"].iloc[0])
    # an ACK within 10 ms of the writer's latest segment answers it (a quick ACK, or a D-SACK
    # for a duplicate); any other ACK was sent by the delayed-ACK timer, and its wait runs
    # from the first data segment it acknowledges (the one that armed the timer)
    events = sorted([(float(t), "w") for t in data["t"] if t >= first_data_t]
                    + [(float(t), "r") for t in opening["t"] if t >= first_data_t])
    quick, waits, last_w, pending = 0, [], None, None
    for t, who in events:
        if who == "w":
            last_w = t
            pending = t if pending is None else pending
        elif last_w is not None and t - last_w < 0.01:
            quick += 1
            pending = None
        else:
            waits.append(round((t - (pending if pending is not None else last_w or t)) * 1000, 1))
            pending = None
    return WindowClosing(mss=int(data["len"].max()), syn_ack_win=int(syn_ack["win"]),
                         wins=[int(w) for w in opening["win"]], first_zero_t=t_zero,
                         reader_rcvbuf=result.data["reader_rcvbuf"], held=a["zero_ack"] - 1,
                         quick=quick, delayed_ms=waits,
                         delayed_acks=result.data["counters"]["TcpExtDelayedACKs"])


@dataclass
class LossProbes:
    """The writer's retransmissions (dissect.retransmissions): tail loss probes, sent
    before the reader's delayed ACK covered the original."""
    rows: Any                    # DataFrame: t, seq, len, first_sent, after_ms
    covered_after: list[bool]    # the first ACK covering the original came after the re-send
    first_zero_t: float
    counters: dict
    early_retrans: int
    srtt_ms: float | None = None  # the writer's smoothed RTT (TCP_INFO rtt) at the first sample

    def pto_ms(self, m) -> float | None:
        """tcp_schedule_loss_probe(): with more than one packet out the probe timer is
        2 × srtt + TCP_TIMEOUT_MIN (2 jiffies), and fires on a tick (+ 1 jiffy)."""
        if self.srtt_ms is None:
            return None
        return 2 * self.srtt_ms + 3 * 1000 / (m.hz or 250)

    def sentence(self) -> str:
        c = self.counters
        before = int((self.rows["t"] < self.first_zero_t).sum())
        return (f"{len(self.rows)} retransmissions, {', '.join(f'{x:.1f}' for x in self.rows['after_ms'])} ms "
                f"after the original, {before} of them before the zero window at {self.first_zero_t:.3f} s; nstat "
                f"TCPLossProbes {c['TcpExtTCPLossProbes']}, TcpRetransSegs {c['TcpRetransSegs']}, "
                f"TCPTimeouts {c['TcpExtTCPTimeouts']}; D-SACKs sent by the reader "
                f"{c['TcpExtTCPDSACKOldSent']}, received by the writer {c['TcpExtTCPDSACKRecv']}; "
                f"net.ipv4.tcp_early_retrans = {self.early_retrans}.")

    def check(self, result: Result) -> None:
        from .. import rules
        c = self.counters
        assert len(self.rows) == c["TcpRetransSegs"], \
            f"retransmissions in the capture {len(self.rows)} = nstat TcpRetransSegs {c['TcpRetransSegs']}"
        assert c["TcpRetransSegs"] <= c["TcpExtTCPLossProbes"] and c["TcpExtTCPTimeouts"] == 0, \
            "every retransmission is a tail loss probe, none a timeout"
        assert c["TcpExtTCPDSACKRecv"] == c["TcpExtTCPDSACKOldSent"] == len(self.rows), "each one was a duplicate"
        assert all(self.covered_after), "each was sent before an ACK covered the original"
        # when they come relative to the zero window is timing (the probe timer against the
        # reader's pause), not a rule: reported by sentence(), not asserted
        m = result.machine_snapshot()
        floor = rules.tcp_delack_min(m).value
        pto = self.pto_ms(m)
        if pto is not None and pto >= floor:   # a slow machine (a VM): srtt is milliseconds, not µs
            print(f"the probe timer 2 × srtt + 2 jiffies = {pto:.1f} ms (srtt {self.srtt_ms:.2f} ms) is not "
                  f"below the delayed-ACK floor ({floor:g} ms) here: the race is not asserted")
            return
        assert (self.rows["after_ms"] < floor).all(), (
            f"the loss probe (2 × srtt + 2 jiffies = {pto if pto is not None else float('nan'):.1f} ms) fires "
            f"before the delayed-ACK floor ({floor:g} ms)")


def loss_probes(result: Result, a: dict | None = None) -> LossProbes:
    a = analyse(result) if a is None else a
    rt, to_w = a["retrans"], a["to_w"]
    covered = []
    for _, r in rt.iterrows():
        acks = to_w[(to_w["t"] > r["orig_t"]) & (to_w["ack"] >= r["seq"] + r["len"])]
        covered.append(bool(len(acks)) and float(acks["t"].iloc[0]) > float(r["t"]))
    view = rt.assign(first_sent=rt["orig_t"].round(4), after_ms=((rt["t"] - rt["orig_t"]) * 1000).round(1))
    return LossProbes(rows=view[["t", "seq", "len", "first_sent", "after_ms"]], covered_after=covered,
                      first_zero_t=float(a["first_zero"]["t"]), counters=result.data["counters"],
                      early_retrans=result.data["tcp_early_retrans"], srtt_ms=_first_srtt_ms(result))


def _first_srtt_ms(result: Result) -> float | None:
    """The writer's smoothed RTT at the first TCP_INFO sample (recordings before it was kept: None)."""
    rows = [s for s in result.data.get("samples", []) if s.get("srtt_us") is not None]
    return rows[0]["srtt_us"] / 1000 if rows else None


# --- sections 3 and 4: probes ----------------------------------------------------------------

@dataclass
class ProbeSchedule:
    """The zero-window probes against the kernel's rules: gap k is RTO × 2^k
    (tcp_probe0_when), each an empty segment at ACK − 1, answered only when the last answer
    is ``tcp_invalid_ratelimit`` old (tcp_oow_rate_limited)."""
    table: Any                   # probe_table()
    rto_ms: float                # TCP_INFO rto when the window was 0
    rto_max_ms: float | None
    stall_s: float               # from the zero window to the window update
    empty_at_ack_minus_1: bool
    retransmitted_during: int
    ratelimit_ms: int
    skipped_seq: int             # nstat TCPACKSkippedSeq
    win_probes: int              # nstat TCPWinProbe

    def predictions(self, m) -> list:
        from .. import rules
        return [rules.tcp_probe0_when(m, self.rto_ms, k, self.rto_max_ms) for k in range(len(self.table))]

    def expected_count(self, m) -> tuple[int, int]:
        """How many probes fit in the stall: (fewest: every gap at its band's top,
        most: every gap at its bottom)."""
        from .. import rules
        out = []
        for side in ("high", "low"):
            t, k = 0.0, 0
            while k < 64:
                t += getattr(rules.tcp_probe0_when(m, self.rto_ms, k, self.rto_max_ms), side) / 1000
                if t >= self.stall_s:
                    break
                k += 1
            out.append(k)
        return out[0], out[1]

    def sentence(self) -> str:
        t = self.table
        ivs = ", ".join(f"{x * 1000:.0f}" for x in t["interval"])
        return (f"RTO {self.rto_ms:.0f} ms (TCP_INFO); {len(t)} probes in a {self.stall_s:.2f} s stall, "
                f"intervals {ivs} ms; answered: {', '.join('yes' if x else 'no' for x in t['answered'])}.")

    def check(self, result: Result) -> None:
        from .. import rules
        m = result.machine_snapshot()
        lo, hi = self.expected_count(m)
        assert lo <= len(self.table) <= hi, \
            f"{len(self.table)} probes in {self.stall_s:.2f} s; tcp_probe0_when() allows {lo} to {hi}"
        for k, (pred, iv) in enumerate(zip(self.predictions(m), self.table["interval"])):
            pred.check(float(iv) * 1000, f"gap before probe {k + 1}", reference=result.reference())
        assert self.empty_at_ack_minus_1, "Linux probes carry no data and use sequence number ACK − 1"
        assert self.retransmitted_during == 0, "no retransmission while the window is 0: the writer only probes"
        times = [float(x) for x in self.table["t"]]
        rules.tcp_oow_rate_limited(m, times, self.ratelimit_ms).check(
            [bool(x) for x in self.table["answered"]], "probes answered with the zero window")
        assert self.skipped_seq == int((~self.table["answered"].astype(bool)).sum()), \
            f"each unanswered probe counts as TCPACKSkippedSeq ({self.skipped_seq})"
        assert self.win_probes == len(self.table), \
            f"nstat TCPWinProbe {self.win_probes} = probes in the capture {len(self.table)}"


def probe_schedule(result: Result, a: dict | None = None) -> ProbeSchedule:
    a = analyse(result) if a is None else a
    d = result.data
    t_zero = float(a["first_zero"]["t"])
    t_upd = float(a["update"]["t"]) if a["update"] is not None else d["resume_at"]
    stalled = [s for s in d["samples"] if s["snd_wnd"] == 0]
    rt = a["retrans"]
    p = a["probes"]
    return ProbeSchedule(
        table=probe_table(result, a), rto_ms=float(stalled[0]["rto_ms"]) if stalled else float("nan"),
        rto_max_ms=d.get("tcp_rto_max_ms"), stall_s=t_upd - t_zero,
        empty_at_ack_minus_1=bool((p["len"] == 0).all() and (p["seq"] == a["zero_ack"] - 1).all()),
        retransmitted_during=int(((rt["t"] > t_zero) & (rt["t"] < t_upd)).sum()),
        ratelimit_ms=d["tcp_invalid_ratelimit_ms"], skipped_seq=d["counters"]["TcpExtTCPACKSkippedSeq"],
        win_probes=d["counters"]["TcpExtTCPWinProbe"])


# --- section 5: the window update -----------------------------------------------------------

@dataclass
class WindowUpdate:
    """The reader's window update and the data after it."""
    t: float
    win: int
    same_ack: bool
    from_reader_no_data: bool
    resume_at: float
    data_seq: int | None
    zero_ack: int
    data_after_us: float | None
    received: int
    total: int

    def sentence(self) -> str:
        return (f"The window update left the reader at {self.t:.3f} s ({(self.t - self.resume_at) * 1000:+.1f} ms "
                f"from the moment its application read) with window {self.win:,} and the same ACK number; "
                f"the writer's data resumed {self.data_after_us:.0f} µs later, at sequence "
                f"{self.data_seq:,}.")

    def check(self) -> None:
        assert self.from_reader_no_data and self.same_ack and self.win > 0, \
            "the window update acknowledges nothing new: same ACK, window > 0, no data"
        assert self.t >= self.resume_at - 0.05, "the window opens only when the reader reads"
        assert self.data_seq == self.zero_ack, "data resumes where it stopped"
        assert self.received == self.total, "every byte arrives once the reader reads"


def window_update(result: Result, a: dict | None = None) -> WindowUpdate:
    a = analyse(result) if a is None else a
    d = result.data
    upd = a["update"]
    assert upd is not None, "a window update follows when reading resumes"
    after = a["from_w"][(a["from_w"]["t"] > float(upd["t"])) & (a["from_w"]["len"] > 0)]
    first = after.iloc[0] if len(after) else None
    return WindowUpdate(t=float(upd["t"]), win=int(upd["win"]), same_ack=int(upd["ack"]) == a["zero_ack"],
                        from_reader_no_data=int(upd["sport"]) == d["port"] and int(upd["len"]) == 0,
                        resume_at=d["resume_at"], data_seq=int(first["seq"]) if first is not None else None,
                        zero_ack=a["zero_ack"],
                        data_after_us=(float(first["t"]) - float(upd["t"])) * 1e6 if first is not None else None,
                        received=d["received"], total=d["total"])


# --- section 7: the kernel's view -----------------------------------------------------------

@dataclass
class StallView:
    """TCP_INFO, ss and nstat during the stall."""
    snd_wnd_zero: bool
    backoffs: list[int]
    backoff_vs_probes: list[tuple]   # (t, TCP_INFO backoff, probes captured before t, ... before the read ended)
    notsent: int
    writer_send_q: int
    reader_recv_q: int
    fin: int
    reader_rb: int
    reader_rcvbuf: int
    total: int
    to_zero: int
    from_zero: int
    all_queued: bool             # sendall() had returned: every byte was in a kernel queue

    def sentence(self) -> str:
        qs = self.writer_send_q + self.reader_recv_q
        end = (f" = the {self.total:,} bytes written{' + 1 for the FIN' if self.fin else ''}" if self.all_queued else
               f": the other {self.total - qs:,} bytes were still in the application, inside `sendall()`")
        return (f"While the window was 0, TCP_INFO showed `snd_wnd` 0 throughout and `backoff` "
                f"stepping {self.backoffs}; {self.notsent:,} bytes waited unsent at the writer. "
                f"`ss`: writer Send-Q {self.writer_send_q:,} + reader Recv-Q {self.reader_recv_q:,} = {qs:,}{end}.")

    def check(self) -> None:
        assert self.snd_wnd_zero, "TCP_INFO snd_wnd is 0 during the stall"
        off = [(t, b, lo, hi) for t, b, lo, hi in self.backoff_vs_probes if not lo <= b <= hi]
        assert self.backoff_vs_probes and not off, (
            "TCP_INFO backoff grows by one per zero-window probe (tcp_send_probe0: icsk_backoff++): "
            "backoff outside [probes captured before the sample, probes captured before the read ended] at "
            + ", ".join(f"t={t:.3f} s: backoff {b}, probes {lo}..{hi}" for t, b, lo, hi in off[:4]))
        if self.all_queued:
            assert self.writer_send_q + self.reader_recv_q == self.total + self.fin, "every byte is in one of the two queues"
        else:
            assert self.writer_send_q + self.reader_recv_q < self.total, \
                "sendall() had not returned: part of the bytes had not reached the kernel yet"
        assert self.reader_recv_q <= self.reader_rb == self.reader_rcvbuf
        assert self.to_zero >= 1 and self.from_zero >= 1, "nstat counts the window closing to 0 and opening again"


def _backoff_vs_probes(stalled: list[dict], probe_t, clock_slack: float = 0.01) -> list[tuple]:
    """Each TCP_INFO sample of the stall beside the probes the capture saw before it. A sample
    is read some time between its t and its t_read (recordings without t_read: one sampling
    step), and capture and sample clocks agree within *clock_slack* seconds: a slow machine
    (a VM, a loaded laptop) widens the interval, it does not fail the rule."""
    out = []
    for s in stalled[:-1]:            # the last row is read after the pause, outside the loop
        t_read = s.get("t_read", s["t"] + SAMPLE_EVERY)
        lo = int((probe_t < s["t"] - clock_slack).sum())
        hi = int((probe_t <= t_read + clock_slack).sum())
        out.append((float(s["t"]), int(s["backoff"]), lo, hi))
    return out


def stall_view(result: Result, a: dict | None = None) -> StallView:
    a = analyse(result) if a is None else a
    d = result.data
    t_zero = float(a["first_zero"]["t"])
    stalled = [s for s in d["samples"] if s["t"] > t_zero + 0.01]
    w, r = d["stall_ss"]["writer"], d["stall_ss"]["reader"]
    probes = a["probes"]
    return StallView(snd_wnd_zero=bool(stalled) and all(s["snd_wnd"] == 0 for s in stalled),
                     backoffs=sorted({s["backoff"] for s in stalled}),
                     backoff_vs_probes=_backoff_vs_probes(stalled, probes["t"]),
                     notsent=stalled[-1]["notsent"] if stalled else 0, writer_send_q=w["send_q"],
                     reader_recv_q=r["recv_q"], fin=_fin(w), reader_rb=r["skmem_rb"],
                     reader_rcvbuf=d["reader_rcvbuf"], total=d["total"],
                     to_zero=d["counters"]["TcpExtTCPToZeroWindowAdv"],
                     from_zero=d["counters"]["TcpExtTCPFromZeroWindowAdv"],
                     all_queued=d["writer_done_at"] is not None and d["writer_done_at"] < d["resume_at"])


# --- section 8: Wireshark's names ------------------------------------------------------------

@dataclass
class WiresharkView:
    """Wireshark's expert labels (through pyshark) for the probes, the zero windows and the
    window update, beside what the writer's socket had set."""
    rows: Any                    # probes and window rows with their labels
    probe_index: Any             # index of the probe rows in rows
    probes_keep_alive: bool      # every probe labelled keep_alive, none zero_window_probe
    zeros_labelled: bool
    update_labelled: bool
    so_keepalive: int
    keepalive_time_s: int

    def sentence(self) -> str:
        return (f"Wireshark labels every probe `keep_alive` and none `zero_window_probe`: "
                f"{self.probes_keep_alive}. The writer's `SO_KEEPALIVE` is {self.so_keepalive}; "
                f"`net.ipv4.tcp_keepalive_time` is {self.keepalive_time_s} s.")

    def check(self) -> None:
        from ..wireshark import assert_labels   # says which tshark labelled, and what differs by version
        assert_labels(self.rows, self.probe_index, "keep_alive", absent=("zero_window_probe",),
                      claim="Wireshark calls Linux's zero-window probes keep-alives")
        assert self.zeros_labelled and self.update_labelled, "zero windows and the window update are labelled"
        assert self.so_keepalive == 0, "the writer never enabled SO_KEEPALIVE"


def wireshark_view(result: Result, a: dict | None = None) -> WiresharkView:
    import pandas as pd
    from .. import dissect
    a = analyse(result) if a is None else a
    d = result.data
    labelled = dissect.with_expert(result.segments(), dissect.expert(result.pcap))
    probe_rows = labelled.loc[a["probes"].index]
    window_rows = labelled[labelled["labels"].map(lambda l: bool({"zero_window", "window_update"} & set(l)))]
    rows = pd.concat([probe_rows, window_rows]).sort_values("t")[
        ["t", "sport", "seq", "ack", "len", "win", "labels", "expert_info"]]
    upd = a["update"]
    return WiresharkView(
        rows=rows, probe_index=probe_rows.index,
        probes_keep_alive=bool(len(probe_rows)) and bool(probe_rows["labels"].map(
            lambda l: "keep_alive" in l and "zero_window_probe" not in l).all()),
        zeros_labelled=bool(labelled.loc[a["zeros"].index, "labels"].map(lambda l: "zero_window" in l).all()),
        update_labelled=upd is not None and "window_update" in labelled.loc[upd.name, "labels"],
        so_keepalive=d["writer_so_keepalive"], keepalive_time_s=d["tcp_keepalive_time_s"])


def check_zero_window(result: Result) -> None:
    """The 02_02 claims on one capture (live or replayed): each analysis's check()."""
    d = result.data
    assert d["writer_error"] is None, f"the writer failed: {d['writer_error']}"
    assert d["received"] == d["total"], "every byte arrives once the reader reads"
    a = analyse(result)
    assert a["first_zero"] is not None, "the reader's advertised window falls to 0"
    quiet = _Quiet()
    with quiet:
        sendall_timing(result, a).check(result)
        window_closing(result, a).check(result)
        loss_probes(result, a).check(result)
        probe_schedule(result, a).check(result)
    window_update(result, a).check()
    stall_view(result, a).check()


class _Quiet:
    """Silence the rule reports while the invariant runs (the notebook prints them)."""

    def __enter__(self):
        import contextlib
        import io
        self._cm = contextlib.redirect_stdout(io.StringIO())
        self._cm.__enter__()
        return self

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


zero_window.invariant = check_zero_window


# ----------------------------------------------------------------------------- pictures

def samples_frame(result: Result):
    """The writer's TCP_INFO samples (one row per change) as a DataFrame."""
    import pandas as pd
    return pd.DataFrame(result.data["samples"])


def plot_start(result: Result, until: float = 0.2, df=None):
    """The first *until* seconds of the time-sequence graph: the window opening, the
    delayed ACKs, the tail loss probes and the window closing, readable at last."""
    import matplotlib.pyplot as plt
    from ..plots import time_sequence, use_style
    use_style()
    df = result.segments() if df is None else df
    d = result.data
    part = df[df["t"] <= until]
    fig, ax = plt.subplots(figsize=(10, 4.6))
    time_sequence(part, sender=("127.0.0.1", _writer_port(df, d["port"])), ax=ax,
                  title=f"The first {until:g} s: the window fills (SO_RCVBUF {d['rcvbuf']:,} → {d['reader_rcvbuf']:,})")
    ax.set_xlim(0, until)
    fig.tight_layout()
    return fig


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


# ----------------------------------------------------------------------------- what ends probing

PROBE_SAMPLE = 0.005     # s between TCP_INFO samples in probe_limits


@experiment(
    "probe_limits", chapter="02_02", seconds=3.5,
    params=[Param("user_timeout_ms", "TCP_USER_TIMEOUT", 1500, choices=(1000, 1500, 2000), minimum=500,
                  maximum=4000, unit="ms", doc="the user timeout of the second writer"),
            Param("rto_max_ms", "TCP_RTO_MAX_MS", 1000, choices=(500, 1000), minimum=200, maximum=4000,
                  unit="ms", doc="the maximum RTO of the third writer (Linux 6.15+; else not set)")],
    claim="a zero window is probed for ever while answered; TCP_USER_TIMEOUT ends it with ETIMEDOUT "
          "that long after the first probe; TCP_RTO_MAX_MS caps the probe gaps",
)
def probe_limits(run, user_timeout_ms: int = 1500, rto_max_ms: int = 1000) -> dict:
    """Three writers fill three readers that never read (plain loopback sockets, no
    privileges): one with no option, one with TCP_USER_TIMEOUT, one with TCP_RTO_MAX_MS
    (where the kernel has it). Each writer's TCP_INFO (state, backoff, rto, snd_wnd) is
    sampled every 5 ms for user_timeout + 1.5 s; a change of backoff is a probe."""
    from ..kernel import tcp_info
    conns: dict[str, tuple] = {}
    opts: dict[str, Any] = {}
    try:
        for name in ("plain", "user_timeout", "rto_max"):
            lst = socket.socket()
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            lst.bind(("127.0.0.1", 0))
            lst.listen(1)
            w = socket.create_connection(lst.getsockname(), timeout=5)
            r, _ = lst.accept()
            conns[name] = (lst, w, r)
            if name == "user_timeout":
                w.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
                opts[name] = w.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            if name == "rto_max":
                try:
                    w.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, rto_max_ms)
                    opts[name] = w.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS)
                except OSError as exc:   # before Linux 6.15: no such option
                    opts[name] = None
                    opts["rto_max_error"] = exc.strerror
            w.setblocking(False)
        t0 = time.monotonic()
        for name, (_, w, _) in conns.items():   # fill each path: the send buffer and the reader's window
            for _ in range(400):
                try:
                    w.send(b"x" * 65536)
                except BlockingIOError:
                    break
        hist: dict[str, list] = {k: [] for k in conns}
        end = t0 + (user_timeout_ms + 1500) / 1000
        prev, worst = None, 0.0   # the longest gap between two samples: the times' resolution
        while time.monotonic() < end:
            now = round(time.monotonic() - t0, 4)
            if prev is not None:
                worst = max(worst, now - prev)
            prev = now
            for name, (_, w, _) in conns.items():
                i = tcp_info(w)
                row = [now, i.state, i.backoff, i.rto // 1000, i.snd_wnd]
                if not hist[name] or hist[name][-1][1:] != row[1:]:
                    hist[name].append(row)
            time.sleep(PROBE_SAMPLE)
        errors = {}
        for name, (_, w, _) in conns.items():
            err = w.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            errors[name] = errno.errorcode.get(err, str(err)) if err else None
    finally:
        for trio in conns.values():
            for s in trio:
                s.close()
    return {"user_timeout_ms": opts.get("user_timeout"), "rto_max_ms": opts.get("rto_max"),
            "rto_max_error": opts.get("rto_max_error"), "sample_s": PROBE_SAMPLE,
            "sample_worst_s": round(worst, 4),
            "duration_s": round(time.monotonic() - t0, 3),
            "samples": hist, "errors": errors}


TCP_RTO_MAX_MS = 44       # include/uapi/linux/tcp.h (Linux 6.15+)


@dataclass
class ProbeLimits:
    """For each writer of :func:`probe_limits`: when its window closed, when each probe
    went out (backoff steps), when it was aborted and with which error."""
    writers: dict                # name -> {"zero": t, "probes": [t...], "rto_ms": x, "closed": t|None, "error"}
    user_timeout_ms: int
    rto_max_ms: int | None
    sample_s: float

    def table(self):
        import pandas as pd
        rows = []
        for name, w in self.writers.items():
            gaps = _gaps(w)
            rows.append({"writer": name, "probes": len(w["probes"]),
                         "gaps (ms)": ", ".join(f"{g:.0f}" for g in gaps),
                         "aborted after first probe (ms)": None if w["closed"] is None
                         else round((w["closed"] - w["probes"][0]) * 1000),
                         "error": w["error"] or "none: still ESTABLISHED"})
        return pd.DataFrame(rows).set_index("writer")

    def sentence(self) -> str:
        p, u = self.writers["plain"], self.writers["user_timeout"]
        s = (f"Without options the writer was still probing after {p['end']:.1f} s ({len(p['probes'])} probes, "
             f"the connection ESTABLISHED, no error). With TCP_USER_TIMEOUT "
             f"{self.user_timeout_ms} ms the kernel aborted the connection "
             f"{(u['closed'] - u['probes'][0]) * 1000:.0f} ms after its first probe: `{u['error']}`.")
        if self.rto_max_ms:
            g = _gaps(self.writers["rto_max"])
            s += (f" With TCP_RTO_MAX_MS {self.rto_max_ms} ms the gaps stopped doubling at the cap: "
                  f"{', '.join(f'{x:.0f}' for x in g)} ms.")
        return s

    def check(self, result: Result) -> None:
        from .. import rules
        m = result.machine_snapshot()
        tol = self.sample_s * 1000 + 1      # the probe times are known to the longest sampling gap
        p, u = self.writers["plain"], self.writers["user_timeout"]
        assert p["closed"] is None and p["error"] is None and len(p["probes"]) >= 2,             "without options the writer keeps probing, the connection stays up"
        for name, w in self.writers.items():
            cap = self.rto_max_ms if name == "rto_max" else None
            for k, gap in enumerate(_gaps(w)):
                pred = rules.tcp_probe0_when(m, w["rto_ms"], k, cap)
                pred.low, pred.high = pred.low - tol, pred.high + tol
                pred.check(gap, f"{name}: gap before probe {k + 1}")
        assert u["closed"] is not None and u["error"] == "ETIMEDOUT",             f"TCP_USER_TIMEOUT ends the connection with ETIMEDOUT (got {u['error']})"
        pred = rules.tcp_probe_timer_user_timeout(m, self.user_timeout_ms)
        pred.low, pred.high = pred.low - tol, pred.high + tol
        pred.check((u["closed"] - u["probes"][0]) * 1000, "from the first probe to the abort")


def _gaps(w: dict) -> list[float]:
    times = [w["zero"]] + w["probes"]
    return [(b - a) * 1000 for a, b in zip(times, times[1:])]


def probe_limits_view(result: Result) -> ProbeLimits:
    d = result.data
    writers = {}
    for name, rows in d["samples"].items():
        zero = next((r[0] for r in rows if r[4] == 0), None)
        probes, closed, last = [], None, 0
        for t, state, backoff, rto, _ in rows:
            if state != "ESTABLISHED":
                closed = closed if closed is not None else t
                continue
            if backoff > last:
                probes.append(t)
            last = backoff
        rto = next((r[3] for r in rows if r[4] == 0), rows[0][3])
        writers[name] = {"zero": zero, "probes": probes, "rto_ms": rto, "closed": closed,
                         "error": d["errors"].get(name), "end": d["duration_s"]}
    if not d.get("rto_max_ms"):
        writers.pop("rto_max", None)
    # a busy machine stretches the sampling loop: a probe's time (and the moment the window
    # closed) is known only to the longest gap between two samples
    return ProbeLimits(writers=writers, user_timeout_ms=d["user_timeout_ms"], rto_max_ms=d.get("rto_max_ms"),
                       sample_s=max(d["sample_s"], d.get("sample_worst_s", 0)))


probe_limits.invariant = lambda r: probe_limits_view(r).check(r)
