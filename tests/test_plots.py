"""Plots drawn from hand-built segment tables (no capture, no dissect module needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from helpers import plots
from helpers.errors import CourseError

C = ("127.0.0.1", 54321)
S = ("127.0.0.1", 8080)
BASE = 1_760_000_000.0
FLAG_BITS = {"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10}
COLUMNS = [
    "frame", "time", "t", "ipv", "src", "dst", "sport", "dport", "stream", "flags", "tcp_flags",
    "seq_raw", "ack_raw", "seq", "ack", "len", "win_raw", "win", "mss", "wscale", "tsval", "tsecr",
    "sack_perm",
]


def segments(rows, *, isn=None, wscale=7, labels=False):
    """Build a dissect-style DataFrame from (t, sender, flags, seq, ack, len, win[, labels]) rows.

    seq/ack are relative; raw values are derived from per-endpoint ISNs.
    """
    isn = isn or {C: 1_000_000, S: 3_000_000}
    out = []
    for i, row in enumerate(rows):
        t, who, flags, seq, ack, ln, win = row[:7]
        src, dst = (C, S) if who == "c" else (S, C)
        syn = "SYN" in flags.split("+")
        bits = sum(FLAG_BITS[f] for f in flags.split("+"))
        rec = {
            "frame": i + 1,
            "time": BASE + t,
            "t": t,
            "ipv": 4,
            "src": src[0],
            "dst": dst[0],
            "sport": src[1],
            "dport": dst[1],
            "stream": 0,
            "flags": flags,
            "tcp_flags": bits,
            "seq_raw": (isn[src] + seq) % 2**32,
            "ack_raw": (isn[dst] + ack) % 2**32 if "ACK" in flags else 0,
            "seq": seq,
            "ack": ack,
            "len": ln,
            "win_raw": win if syn else win >> wscale,
            "win": win,
            "mss": 65495 if syn else pd.NA,
            "wscale": wscale if syn else pd.NA,
            "tsval": 1000 + int(t * 1000),
            "tsecr": 0 if i == 0 else 1000,
            "sack_perm": syn,
        }
        if labels:
            rec["labels"] = tuple(row[7]) if len(row) > 7 else ()
        out.append(rec)
    df = pd.DataFrame(out, columns=COLUMNS + (["labels"] if labels else []))
    for col in ("frame", "sport", "dport", "stream", "tcp_flags", "len"):
        df[col] = df[col].astype("int64")
    for col in ("seq_raw", "ack_raw", "seq", "ack", "win_raw", "win"):
        df[col] = df[col].astype("int64")
    for col in ("mss", "wscale", "tsval", "tsecr"):
        df[col] = df[col].astype("Int64")
    df["sack_perm"] = df["sack_perm"].astype(bool)
    return df


def handshake_request_close(stall=0.0):
    """Handshake, header+body request (optionally a delayed-ACK stall), response, FIN close."""
    s = stall
    return segments([
        (0.000000, "c", "SYN", 0, 0, 0, 65495),
        (0.000014, "s", "SYN+ACK", 0, 1, 0, 65483),
        (0.000027, "c", "ACK", 1, 1, 0, 65536),
        (0.000102, "c", "PSH+ACK", 1, 1, 5, 65536),
        (0.000120 + s, "s", "ACK", 1, 6, 0, 65536),
        (0.000140 + s, "c", "PSH+ACK", 6, 1, 100, 65536),
        (0.000190 + s, "s", "PSH+ACK", 1, 106, 20, 65536),
        (0.000205 + s, "c", "ACK", 106, 21, 0, 65536),
        (0.000260 + s, "c", "FIN+ACK", 106, 21, 0, 65536),
        (0.000300 + s, "s", "FIN+ACK", 21, 107, 0, 65536),
        (0.000312 + s, "c", "ACK", 107, 22, 0, 65536),
    ])


def syn_retries():
    """A client retrying its SYN at 1 s steps before the listener answers."""
    return segments([
        (0.0, "c", "SYN", 0, 0, 0, 65495),
        (1.004, "c", "SYN", 0, 0, 0, 65495),
        (2.012, "c", "SYN", 0, 0, 0, 65495),
        (2.012040, "s", "SYN+ACK", 0, 1, 0, 65483),
        (2.012060, "c", "ACK", 1, 1, 0, 65536),
    ])


def bulk_zero_window(labels=True):
    """64 KB (GSO) segments until the reader stops; zero window; probes; window update."""
    rows = [
        (0.000000, "c", "SYN", 0, 0, 0, 65495, ()),
        (0.000010, "s", "SYN+ACK", 0, 1, 0, 65483, ()),
        (0.000020, "c", "ACK", 1, 1, 0, 65536, ()),
    ]
    seq, t = 1, 0.0001
    rwnd = 262144
    acked = 1
    for _ in range(4):
        rows.append((t, "c", "PSH+ACK", seq, 1, 65483, 65536, ()))
        seq += 65483
        t += 0.00005
        rwnd -= 65483
        acked = seq
        rows.append((t, "s", "ACK", 1, acked, 0, max(rwnd, 0), ()))
        t += 0.00005
    # window now nearly closed: a last small segment fills it, receiver says zero
    rows.append((t, "c", "PSH+ACK", seq, 1, 4, 65536, ()))
    seq += 4
    t += 0.00004
    rows.append((t, "s", "ACK", 1, seq, 0, 0, ("zero_window",)))
    for dt in (0.21, 0.65, 1.5):
        probe_t = t + dt
        rows.append((probe_t, "c", "ACK", seq - 1, 1, 0, 65536, ("keep_alive",)))
        rows.append((probe_t + 0.00002, "s", "ACK", 1, seq, 0, 0, ("zero_window", "keep_alive_ack")))
    t = t + 2.0
    rows.append((t, "s", "ACK", 1, seq, 0, 131072, ("window_update",)))
    t += 0.00003
    rows.append((t, "c", "PSH+ACK", seq, 1, 65483, 65536, ()))
    rows.append((t + 0.00002, "c", "PSH+ACK", seq, 1, 65483, 65536, ("retransmission",)))
    seq += 65483
    rows.append((t + 0.00005, "s", "ACK", 1, seq, 0, 65653, ()))
    if not labels:
        rows = [r[:7] for r in rows]
    return segments(rows, labels=labels)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def by_gid(fig, gid):
    return [a for a in fig.findobj(lambda a: a.get_gid() == gid)]


def texts(fig, gid):
    return [a.get_text() for a in by_gid(fig, gid)]


# --------------------------------------------------------------------------- style

def test_use_style_is_idempotent_and_sets_our_style():
    plots.use_style()
    first = {k: matplotlib.rcParams[k] for k in plots.STYLE}
    plots.use_style()
    assert {k: matplotlib.rcParams[k] for k in plots.STYLE} == first
    assert matplotlib.rcParams["figure.dpi"] == 100
    assert matplotlib.rcParams["axes.spines.top"] is False
    assert matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][0] == plots.PALETTE[0]


def test_style_uses_no_named_style_sheet():
    import inspect

    src = inspect.getsource(plots)
    assert "style.use(" not in src and "plt.style" not in src


# --------------------------------------------------------------------------- ladder

def test_ladder_handshake_arrows_labels_and_time_down(tmp_path):
    df = handshake_request_close()
    fig = plots.ladder(df)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.yaxis_inverted()
    arrows = by_gid(fig, "ladder-arrow")
    assert len(arrows) == len(df) == 11
    assert all(isinstance(a, FancyArrowPatch) for a in arrows)
    labels = texts(fig, "ladder-label")
    assert len(labels) == 11
    assert labels[0] == "SYN seq=0 win=65495 [mss 65495, ws 7, sack, ts]"
    assert labels[1].startswith("SYN+ACK seq=0 ack=1 win=65483")
    assert labels[3] == "PSH+ACK seq=1 ack=1 len=5"
    assert "FIN+ACK" in labels[8]
    times = texts(fig, "ladder-time")
    assert times[0] == "0.000 ms" and times[3] == "0.102 ms"
    # no long pause in this capture: no gap marker, and the axis says "not to scale"
    assert texts(fig, "ladder-gap") == []
    assert "not to scale" in ax.get_ylabel()
    # client on the left, labelled with ip:port
    heads = [t.get_text() for t in ax.texts if t.get_text().startswith(("client", "server"))]
    assert "client\n127.0.0.1:54321" in heads and "server\n127.0.0.1:8080" in heads
    fig.savefig(tmp_path / "ladder.png")
    assert (tmp_path / "ladder.png").stat().st_size > 10_000


def test_ladder_arrows_go_from_sender_to_receiver_and_slope_down():
    fig = plots.ladder(handshake_request_close())
    arrows = by_gid(fig, "ladder-arrow")
    (x0, y0), (x1, y1) = arrows[0]._posA_posB
    assert (x0, x1) == (0.0, 1.0) and y1 > y0  # client -> server, arriving later (lower)
    (x0, y0), (x1, y1) = arrows[1]._posA_posB
    assert (x0, x1) == (1.0, 0.0) and y1 > y0


def test_ladder_marks_a_delayed_ack_stall(tmp_path):
    fig = plots.ladder(handshake_request_close(stall=0.0402))
    gaps = texts(fig, "ladder-gap")
    assert len(gaps) == 1
    assert "40.2 ms" in gaps[0]
    assert "⋯" in fig.axes[0].get_ylabel()
    fig.savefig(tmp_path / "ladder-stall.png")


def test_ladder_marks_each_one_second_syn_retry(tmp_path):
    fig = plots.ladder(syn_retries())
    gaps = texts(fig, "ladder-gap")
    assert gaps == ["⋯  1.00 s  ⋯", "⋯  1.01 s  ⋯"]
    assert len(by_gid(fig, "ladder-arrow")) == 5
    fig.savefig(tmp_path / "ladder-syn.png")


def test_ladder_colours_retransmissions_and_rst():
    df = syn_retries()
    fig = plots.ladder(df)
    arrows = by_gid(fig, "ladder-arrow")
    colours = [matplotlib.colors.to_hex(a.get_edgecolor()) for a in arrows]
    assert colours[0] == plots.COLORS["syn"]
    assert colours[1] == colours[2] == plots.COLORS["retrans"]  # same SYN again
    assert colours[4] == plots.COLORS["ack"]
    rst = segments([(0.0, "c", "SYN", 0, 0, 0, 65495), (0.00001, "s", "RST+ACK", 1, 1, 0, 0)])
    arrows = by_gid(plots.ladder(rst), "ladder-arrow")
    assert matplotlib.colors.to_hex(arrows[1].get_edgecolor()) == plots.COLORS["rst"]


def test_ladder_truncates_long_captures():
    df = bulk_zero_window()
    fig = plots.ladder(df, max_segments=8)
    assert len(by_gid(fig, "ladder-arrow")) == 8
    assert texts(fig, "ladder-more") == [f"⋮  ({len(df) - 8} more not shown)"]
    assert texts(plots.ladder(handshake_request_close()), "ladder-more") == []


def test_ladder_expert_labels_and_zero_window_shown(tmp_path):
    fig = plots.ladder(bulk_zero_window())
    labels = texts(fig, "ladder-label")
    assert any("win=0" in s for s in labels)
    assert any("keep-alive" in s for s in labels)
    assert any("window update" in s for s in labels)
    assert any("retransmission" in s for s in labels)
    assert len(texts(fig, "ladder-gap")) == 4
    fig.savefig(tmp_path / "ladder-zero-window.png")


def test_ladder_to_scale_when_evenly_spread():
    rows = [(0.01 * i, "c" if i % 2 == 0 else "s", "ACK", 1, 1, 0, 65536) for i in range(6)]
    fig = plots.ladder(segments(rows))
    assert "to scale" in fig.axes[0].get_ylabel() and "not to scale" not in fig.axes[0].get_ylabel()
    assert texts(fig, "ladder-gap") == []


def test_ladder_client_choice_and_other_connections():
    df = handshake_request_close()
    fig = plots.ladder(df, client="127.0.0.1:8080")
    arrows = by_gid(fig, "ladder-arrow")
    assert arrows[0]._posA_posB[0][0] == 1.0  # the SYN now comes from the right
    other = df.copy()
    other["sport"] = np.where(other["sport"] == 54321, 54999, other["sport"])
    other["dport"] = np.where(other["dport"] == 54321, 54999, other["dport"])
    other["stream"] = 1
    other["t"] += 1.0
    both = pd.concat([df, other], ignore_index=True)
    fig = plots.ladder(both)
    assert len(by_gid(fig, "ladder-arrow")) == 11
    assert "11 segments of other connections not drawn" in fig.axes[0].get_title(loc="left")
    fig = plots.ladder(both, stream=1)
    assert "client\n127.0.0.1:54999" in [t.get_text() for t in fig.axes[0].texts]
    with pytest.raises(CourseError, match="endpoints are"):
        plots.ladder(df, client="10.0.0.1:1")


def test_ladder_into_given_axes():
    fig, axes = plt.subplots(1, 2, figsize=(16, 6))
    out = plots.ladder(handshake_request_close(), ax=axes[1])
    assert out is fig
    assert len(by_gid(fig, "ladder-arrow")) == 11


def test_ladder_rejects_empty_or_wrong_input():
    with pytest.raises(CourseError, match="empty"):
        plots.ladder(handshake_request_close().iloc[0:0])
    with pytest.raises(CourseError, match="no column"):
        plots.ladder(handshake_request_close().drop(columns=["seq"]))


def test_ladder_labels_do_not_overlap(tmp_path):
    fig = plots.ladder(handshake_request_close(stall=0.04))
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in by_gid(fig, "ladder-label")]
    boxes += [t.get_window_extent(r) for t in by_gid(fig, "ladder-gap")]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), "two ladder labels overlap"


# --------------------------------------------------------------------------- time-sequence

def test_time_sequence_bars_acks_window_probes_and_retransmissions(tmp_path):
    df = bulk_zero_window()
    fig = plots.time_sequence(df)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "data sent by 127.0.0.1:54321" in legend
    assert "retransmission" in legend
    assert "zero-window probe / keep-alive" in legend
    assert "ACK from 127.0.0.1:8080" in legend
    assert "window edge (ack + win)" in legend
    assert "zero window advertised" in legend
    assert "window update" in legend
    bars = [c for c in ax.collections if c.get_label() == "data sent by 127.0.0.1:54321"][0]
    segs = bars.get_segments()
    assert len(segs) == 6  # 5 data segments + the post-update one (the retransmission is separate)
    first = segs[0]
    assert first[0][1] == 1 and first[1][1] == 1 + 65483
    probes = [ln for ln in ax.lines if ln.get_label() == "zero-window probe / keep-alive"][0]
    assert len(probes.get_xdata()) == 3
    assert ax.get_xlabel().startswith("time (s")
    assert "sequence" in ax.get_ylabel()
    fig.savefig(tmp_path / "tsg.png")


def test_time_sequence_without_labels_finds_probes_and_options():
    df = bulk_zero_window(labels=False)
    fig = plots.time_sequence(df, show_window=False, show_acks=False)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "zero-window probe / keep-alive" in legend
    assert "window edge (ack + win)" not in legend and "ACK from 127.0.0.1:8080" not in legend
    assert "retransmission" in legend  # same seq sent twice


def test_time_sequence_zooms_on_small_transfers():
    fig = plots.time_sequence(handshake_request_close())
    ax = fig.axes[0]
    assert ax.get_ylim()[1] < 200  # 105 bytes sent, not squashed under a 64 KB window
    assert "65.6 kB" in texts(fig, "window-off-scale")[0]
    fig = plots.time_sequence(bulk_zero_window())
    assert texts(fig, "window-off-scale") == []


def test_time_sequence_other_direction():
    fig = plots.time_sequence(handshake_request_close(), sender="127.0.0.1:8080")
    assert fig.axes[0].get_title(loc="left") == "Time-sequence: 127.0.0.1:8080 → 127.0.0.1:54321"


def test_window_over_time(tmp_path):
    fig = plots.window_over_time(bulk_zero_window())
    ax = fig.axes[0]
    labels = [ln.get_label() for ln in ax.lines]
    assert "window advertised by 127.0.0.1:8080" in labels
    assert "bytes in flight from 127.0.0.1:54321" in labels
    assert "zero window" in labels
    inflight = [ln for ln in ax.lines if ln.get_label().startswith("bytes in flight")][0]
    assert max(inflight.get_ydata()) == 65483  # a retransmission adds nothing in flight
    fig.savefig(tmp_path / "window.png")


# --------------------------------------------------------------------------- numbers

def test_latency_hist_overlay_marks_medians(tmp_path):
    rng = np.random.default_rng(1)
    samples = {
        "default (Nagle + delayed ACK)": list(np.r_[rng.normal(44, 1.5, 95), rng.normal(0.05, 0.01, 5)]),
        "TCP_NODELAY": list(rng.lognormal(np.log(0.03), 0.3, 100)),
    }
    fig = plots.latency_hist(samples)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    meds = [t.get_text() for t in ax.texts if t.get_gid() == "median"]
    assert len(meds) == 2 and all("median" in m and "ms" in m for m in meds)
    assert len([ln for ln in ax.lines if ln.get_gid() == "median"]) == 2
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("default (Nagle + delayed ACK) (n=100, median 44")
    fig.savefig(tmp_path / "hist.png")


def test_latency_hist_linear_stacked_and_nonpositive():
    fig = plots.latency_hist({"a": [1, 2, 3], "b": [2, 3, 4]}, log=False, stacked=True, unit="s")
    assert fig.axes[0].get_xscale() == "linear"
    assert "latency (s)" == fig.axes[0].get_xlabel()
    fig = plots.latency_hist({"a": [0, 1, 2]})
    assert "1 ≤ 0 dropped" in fig.axes[0].get_legend().get_texts()[0].get_text()
    with pytest.raises(CourseError):
        plots.latency_hist({})


def test_queue_depth_with_backlog_line_and_events(tmp_path):
    t = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.5]
    d = [0, 1, 2, 3, 4, 5, 5]
    fig = plots.queue_depth(t, d, backlog=4, events={"SYN retransmitted": [1.0, 2.0]})
    ax = fig.axes[0]
    limit = [ln for ln in ax.lines if ln.get_gid() == "backlog-limit"]
    assert len(limit) == 1 and list(limit[0].get_ydata()) == [5, 5]
    assert "backlog + 1 = 5" in limit[0].get_label()
    assert ax.get_ylim()[1] > 5
    fig.savefig(tmp_path / "queue.png")
    with pytest.raises(CourseError):
        plots.queue_depth([0, 1], [1])


def test_bars_values_and_expected(tmp_path):
    fig = plots.bars({"L0": 256, "L1": 245, "L2": 253, "L3": 246}, ylabel="connections", expected=250)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["L0", "L1", "L2", "L3"]
    assert [t.get_text() for t in ax.texts] == ["256", "245", "253", "246"]
    assert [ln.get_gid() for ln in ax.lines] == ["expected"]
    fig.savefig(tmp_path / "bars.png")
    fig = plots.bars(pd.Series([1.5, 2.25], index=["a", "b"]), ylabel="x", expected={"a": 1, "b": 2})
    assert [t.get_text() for t in fig.axes[0].texts] == ["1.5", "2.25"]


def test_every_plot_returns_a_figure_without_showing(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda *a, **k: pytest.fail("plt.show() was called"))
    df = handshake_request_close()
    for fig in (
        plots.ladder(df),
        plots.time_sequence(df),
        plots.window_over_time(df),
        plots.latency_hist({"x": [1, 2]}),
        plots.queue_depth([0, 1], [0, 1]),
        plots.bars({"a": 1}, ylabel="n"),
    ):
        assert isinstance(fig, Figure)


# --------------------------------------------------------------------------- log axes

def _labels(axis, minor=False):
    axis.figure.canvas.draw()
    return [t.get_text() for t in axis.get_ticklabels(minor=minor) if t.get_text()]


def test_plain_number():
    assert [plots.plain_number(v) for v in (0, 1, 1000, 65536, 1e6, 0.05, 0.001, 2.5, -100, 1e-5)] == [
        "0", "1", "1,000", "65,536", "1,000,000", "0.05", "0.001", "2.5", "-100", "0.00001"]


def test_log_axes_label_plain_numbers():
    fig, ax = plt.subplots()
    ax.plot([1, 1e6], [0.01, 100])
    ax.set_xscale("log")                    # any log axis in the course, not only ours
    ax.set_yscale("log")
    xs, ys = _labels(ax.xaxis), _labels(ax.yaxis)
    assert {"1", "10", "1,000", "100,000", "1,000,000"} <= set(xs), xs
    assert {"0.01", "0.1", "1", "100"} <= set(ys), ys
    for text in xs + ys:
        assert "^" not in text and "e+" not in text and "e-" not in text and "mathdefault" not in text, text
    fig2, ax2 = plt.subplots()
    ax2.plot([20, 60], [1, 2])
    ax2.set_xscale("log")                   # less than a decade: minor ticks labelled, plainly
    assert set(_labels(ax2.xaxis, minor=True)) >= {"20", "30", "40"}
    fig3, ax3 = plt.subplots()
    ax3.plot([0, 5000], [0, 1])
    ax3.set_xscale("symlog", linthresh=10)
    assert _labels(ax3.xaxis) == ["0", "10", "100", "1,000"]
    for f in (fig, fig2, fig3):
        plt.close(f)


def test_latency_hist_log_axis_is_plain():
    fig = plots.latency_hist({"nodelay": [0.03, 0.04, 0.05] * 5, "nagle": [44.0, 45.0, 43.5] * 5})
    labels = _labels(fig.axes[0].xaxis)
    assert "0.1" in labels and "10" in labels and all("^" not in t and "e" not in t for t in labels), labels
    plt.close(fig)
