"""The course's plots, in one style: ladders, time-sequence graphs, windows, latencies.

Every function draws with the object API (``fig, ax = plt.subplots()``), never calls
``plt.show()``, and returns the :class:`~matplotlib.figure.Figure` so that a test can
inspect it and a notebook can save it. Pass ``ax=`` to draw into an existing axes.

In a notebook with the inline backend, end a bare call with ``;`` (``plots.ladder(df);``)
or assign it: the backend shows every new pyplot figure at the end of the cell, and a
Figure left as the cell's value would be shown a second time.

The style lives in one dict, :data:`STYLE`, applied by :func:`use_style` (on import of
this module and again by each plot function; it is idempotent). No named third-party
style sheet is used, so no library upgrade can remove it.

Logarithmic axes label their ticks with plain numbers (1, 10, 100, 1,000, 0.05), never
10^x: :func:`use_style` registers :class:`PlainLogScale` and :class:`PlainSymlogScale`
under matplotlib's names ``"log"`` and ``"symlog"``, so every ``ax.set_xscale("log")``
in the course (and in a learner's cell after importing this module) gets
:class:`PlainLogFormatter`. A plot that sets its own formatter keeps it.

Segment tables are the dissection module's DataFrame: one row per TCP segment with
``t, src, dst, sport, dport, flags, seq, ack, len, win`` (and optionally ``stream``,
``mss, wscale, sack_perm, tsval`` and ``labels``, a tuple of Wireshark expert labels
such as ``"retransmission"``, ``"zero_window_probe"``, ``"keep_alive"``,
``"window_update"``, ``"zero_window"``).

Artists that tests (and curious readers) look for carry a ``gid``: ladder arrows are
``"ladder-arrow"``, their labels ``"ladder-label"``, send times ``"ladder-time"``, gap
markers ``"ladder-gap"``, the overflow note ``"ladder-more"``; histogram medians are
``"median"``; the queue limit is ``"backlog-limit"``; the expected bar level is
``"expected"``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from cycler import cycler
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch
from matplotlib.scale import LogScale, SymmetricalLogScale, register_scale
from matplotlib.ticker import EngFormatter, FuncFormatter, LogFormatter, MaxNLocator

from .errors import CourseError

__all__ = [
    "STYLE",
    "COLORS",
    "use_style",
    "ladder",
    "time_sequence",
    "window_over_time",
    "latency_hist",
    "queue_depth",
    "bars",
    "segment_label",
    "plain_number",
    "PlainLogFormatter",
]

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9", "#f0e442", "#000000"]

#: Meaning-bearing colours, the same in every figure of the course.
COLORS = {
    "syn": "#009e73",      # green: connection set-up
    "fin": "#e69f00",      # orange: orderly close
    "rst": "#d62728",      # red: abort
    "data": "#0072b2",     # blue: payload
    "ack": "#8c8c8c",      # grey: pure ACK
    "retrans": "#b0359b",  # purple: retransmission (dashed in ladders)
    "window": "#6a3d9a",   # advertised-window edge
    "acks": "#2e7d32",     # the receiver's ACK line
    "probe": "#e69f00",
    "zero": "#d62728",
    "limit": "#d62728",
}
# Text on white needs darker shades of the light colours.
_TEXT = {
    "syn": "#006b4f",
    "fin": "#9a5b00",
    "rst": "#b01e1e",
    "data": "#005185",
    "ack": "#505050",
    "retrans": "#8a2079",
}
_CATEGORY_NAMES = {
    "syn": "SYN",
    "data": "data",
    "ack": "pure ACK",
    "fin": "FIN",
    "rst": "RST",
    "retrans": "retransmission",
}

#: The whole course style, applied with :func:`use_style`.
STYLE: dict[str, Any] = {
    "figure.figsize": (9.0, 5.0),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "savefig.bbox": "tight",
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlepad": 8,
    "axes.labelsize": 10,
    "axes.labelcolor": "#222222",
    "axes.edgecolor": "#444444",
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#E3E3E3",
    "grid.linestyle": "-",
    "grid.linewidth": 0.8,
    "axes.prop_cycle": cycler(color=PALETTE),
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "patch.linewidth": 0.8,
    "hist.bins": 40,
    "figure.constrained_layout.use": False,
}


def plain_number(v: float) -> str:
    """A tick value as people write it: ``1,000``, ``65,536``, ``0.05``, ``2.5``, never
    ``10^3`` or ``1e+03``; up to three significant digits below 1."""
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v - round(v)) <= 1e-9 * max(1.0, abs(v)):
        return f"{int(round(v)):,}"
    decimals = max(0, 2 - math.floor(math.log10(abs(v))))
    return f"{v:,.{decimals}f}".rstrip("0").rstrip(".")


class PlainLogFormatter(LogFormatter):
    """matplotlib's log-axis labelling (which ticks get a label: decades, and a few minor
    ticks when an axis spans less than a decade), written as plain numbers."""

    def __call__(self, x, pos=None):
        return plain_number(x) if super().__call__(x, pos) else ""


class _PlainLabels:
    """Mixin for a matplotlib log-type scale: its default formatters write plain numbers."""

    def __init__(self, *args, **kwargs):
        # no named *axis* parameter: matplotlib >= 3.11 then constructs the scale without
        # one (older versions pass the axis positionally, which *args takes)
        super().__init__(*args, **kwargs)

    def set_default_locators_and_formatters(self, axis):
        super().set_default_locators_and_formatters(axis)
        axis.set_major_formatter(PlainLogFormatter(self.base))
        if isinstance(self, LogScale):       # symlog leaves its minor ticks unlabelled
            axis.set_minor_formatter(PlainLogFormatter(self.base, labelOnlyBase=self.subs is not None))


class PlainLogScale(_PlainLabels, LogScale):
    """The ``"log"`` scale, labelled with :class:`PlainLogFormatter`."""

    name = "log"


class PlainSymlogScale(_PlainLabels, SymmetricalLogScale):
    """The ``"symlog"`` scale, labelled with :class:`PlainLogFormatter`."""

    name = "symlog"


def use_style() -> None:
    """Apply :data:`STYLE` to matplotlib's rcParams and the plain-number log scales
    (idempotent, cheap)."""
    mpl.rcParams.update(STYLE)
    register_scale(PlainLogScale)
    register_scale(PlainSymlogScale)


use_style()


# ----------------------------------------------------------------------------- helpers

_REQUIRED = ("t", "src", "dst", "sport", "dport", "flags", "seq", "ack", "len", "win")


def _require(df: pd.DataFrame, what: str, columns: Sequence[str] = _REQUIRED) -> None:
    if not isinstance(df, pd.DataFrame):
        raise CourseError(
            f"{what} needs a DataFrame of TCP segments, got {type(df).__name__}.",
            "pass the table returned by the dissection helpers (one row per segment).",
        )
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CourseError(
            f"{what}: the segment table has no column(s) {', '.join(missing)}.",
            "pass the table returned by the dissection helpers, not a filtered copy "
            "without those columns.",
        )
    if df.empty:
        raise CourseError(
            f"{what}: the segment table is empty, so there is nothing to draw.",
            "check the capture filter (port) and that the experiment really sent traffic.",
        )


Endpoint = tuple[str, int]


def _fmt_ep(ep: Endpoint) -> str:
    ip, port = ep
    return f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"


def _src(row) -> Endpoint:
    return (str(row["src"]), int(row["sport"]))


def _dst(row) -> Endpoint:
    return (str(row["dst"]), int(row["dport"]))


def _has(flags: str, name: str) -> bool:
    return name in str(flags).upper().split("+")


def _labels(row) -> tuple:
    return _as_labels(row.get("labels", ()) if hasattr(row, "get") else ())


def _as_labels(lab) -> tuple:
    if lab is None or (isinstance(lab, float) and math.isnan(lab)):
        return ()
    if isinstance(lab, str):
        return (lab,) if lab else ()
    try:
        return tuple(lab)
    except TypeError:
        return ()


def _parse_endpoint(spec: Any, known: Sequence[Endpoint], what: str) -> Endpoint:
    """Turn ``"ip:port"``, ``"[v6]:port"``, ``(ip, port)``, an ip or a port into an endpoint."""
    if isinstance(spec, tuple) and len(spec) == 2:
        cand = [(str(spec[0]), int(spec[1]))]
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        cand = [e for e in known if e[1] == int(spec)]
    elif isinstance(spec, str):
        s = spec.strip()
        if s.startswith("[") and "]:" in s:
            ip, port = s[1:].split("]:", 1)
            cand = [(ip, int(port))]
        elif s.count(":") == 1:
            ip, port = s.split(":")
            cand = [(ip, int(port))]
        else:
            cand = [e for e in known if e[0] == s]
    else:
        cand = []
    cand = [c for c in cand if c in known]
    if len(cand) != 1:
        raise CourseError(
            f"{what}={spec!r} does not name exactly one endpoint of this capture.",
            "give it as 'ip:port' (or (ip, port)); the endpoints are: "
            + ", ".join(_fmt_ep(e) for e in known)
            + ".",
        )
    return cand[0]


def _connection(df: pd.DataFrame, client: Any = None, stream: int | None = None, what: str = "plot"):
    """Pick one connection: returns (rows, client, server, n_omitted, stream_id)."""
    d = df
    if "stream" in df.columns and stream is not None:
        d = df[df["stream"] == stream]
        if d.empty:
            raise CourseError(
                f"{what}: there is no stream {stream} in this capture.",
                f"pick one of: {', '.join(map(str, sorted(df['stream'].unique())))}.",
            )
    d = d.sort_values(["t"], kind="stable") if "t" in d.columns else d
    ends = pd.concat([
        pd.DataFrame({"ip": d["src"].astype(str), "port": d["sport"].astype("int64")}),
        pd.DataFrame({"ip": d["dst"].astype(str), "port": d["dport"].astype("int64")}),
    ]).drop_duplicates()
    known = sorted((str(a), int(b)) for a, b in zip(ends["ip"], ends["port"]))
    if client is not None:
        cl = _parse_endpoint(client, known, "client")
        first = d[((d["src"] == cl[0]) & (d["sport"] == cl[1])) | ((d["dst"] == cl[0]) & (d["dport"] == cl[1]))]
        row = first.iloc[0]
    else:
        syn = d[d["flags"].map(lambda f: _has(f, "SYN") and not _has(f, "ACK"))]
        row = syn.iloc[0] if len(syn) else d.iloc[0]
        cl = _src(row)
    sv = _dst(row) if _src(row) == cl else _src(row)
    def _is(ip_col, port_col, ep):
        return (d[ip_col].astype(str) == ep[0]) & (d[port_col] == ep[1])

    mask = (_is("src", "sport", cl) & _is("dst", "dport", sv)) | (_is("src", "sport", sv) & _is("dst", "dport", cl))
    conn = d[mask.to_numpy(dtype=bool)]
    sid = None
    if "stream" in conn.columns and len(conn):
        ids = conn["stream"].unique()
        sid = int(ids[0]) if len(ids) == 1 else None
    return conn.reset_index(drop=True), cl, sv, len(df) - len(conn), sid


def _retransmitted(conn: pd.DataFrame) -> np.ndarray:
    """True for retransmissions: from expert labels if present, else by sequence space."""
    if "labels" in conn.columns:
        return np.array(
            [any("retransmission" in str(x) for x in _as_labels(v)) for v in conn["labels"]], dtype=bool
        )
    from .dissect import retransmitted
    return retransmitted(conn)


def _category(flags: str, length: int, retrans: bool) -> str:
    if _has(flags, "RST"):
        return "rst"
    if retrans:
        return "retrans"
    if _has(flags, "SYN"):
        return "syn"
    if _has(flags, "FIN"):
        return "fin"
    if length > 0:
        return "data"
    return "ack"


def _opt(row, name):
    v = row.get(name) if hasattr(row, "get") else None
    if v is None or v is pd.NA:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


_SHORT_LABELS = {
    "retransmission": "retransmission",
    "fast_retransmission": "fast retr.",
    "spurious_retransmission": "spurious retr.",
    "zero_window_probe": "zero-window probe",
    "zero_window_probe_ack": "probe ACK",
    "keep_alive": "keep-alive",
    "keep_alive_ack": "keep-alive ACK",
    "window_update": "window update",
    "zero_window": "zero window",
    "window_full": "window full",
    "dup_ack": "dup ACK",
    "previous_segment_not_captured": "prev. not captured",
    "out_of_order": "out of order",
    "lost_segment": "prev. segment lost",
    "ack_lost_segment": "ACKs unseen segment",
    "reused_ports": "reused ports",
}


def segment_label(row) -> str:
    """Short text for one segment: ``"SYN seq=0 win=65495 [mss 65495, ws 7, sack, ts]"``."""
    flags = str(row["flags"])
    parts = [flags, f"seq={int(row['seq'])}"]
    if _has(flags, "ACK"):
        parts.append(f"ack={int(row['ack'])}")
    ln = int(row["len"])
    if ln:
        parts.append(f"len={ln}")
    win = _opt(row, "win")
    labels = _labels(row)
    if _has(flags, "SYN"):
        if win is not None:
            parts.append(f"win={int(win)}")
        opts = []
        mss = _opt(row, "mss")
        if mss is not None:
            opts.append(f"mss {int(mss)}")
        ws = _opt(row, "wscale")
        if ws is not None:
            opts.append(f"ws {int(ws)}")
        if bool(_opt(row, "sack_perm") or False):
            opts.append("sack")
        if _opt(row, "tsval") is not None:
            opts.append("ts")
        if opts:
            parts.append("[" + ", ".join(opts) + "]")
    elif win is not None and (int(win) == 0 or any("window" in str(x) for x in labels)):
        parts.append(f"win={int(win)}")
    shown = [_SHORT_LABELS.get(str(x), str(x).replace("_", " ")) for x in labels if str(x) != "zero_window"]
    if shown:
        parts.append("(" + ", ".join(shown) + ")")
    return " ".join(parts)


def _fmt_bytes(n: float) -> str:
    return EngFormatter(unit="B", sep=" ", places=1)(n) if n >= 1000 else f"{int(n)} B"


def _fmt_gap(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 0.1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds >= 0.001:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _fmt_time(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.3f} s"
    return f"{seconds * 1e3:.3f} ms"


# ----------------------------------------------------------------------------- ladder

_ROW_IN = 0.42      # inches per segment row
_SLOPE = 0.42       # how far (in rows) an arrow drops between the two lifelines
_GAP_EXTRA = 0.9    # extra rows taken by a gap marker


def ladder(
    df: pd.DataFrame,
    *,
    client: Any = None,
    title: str | None = None,
    max_segments: int = 40,
    gap: float = 0.2,
    ax=None,
    stream: int | None = None,
) -> Figure:
    """Sequence (ladder) diagram of one TCP connection from a real capture.

    The client (left) is the endpoint that sent the first SYN, else the first source in
    *df*; pass ``client="ip:port"`` to choose. Time runs down; each segment is an arrow
    from its sender to its receiver, labelled with flags, seq, ack, len (options on
    SYNs) and, at the sending side, its time since the first packet.

    Loopback delivers instantly, so rows are spaced in capture order (not to scale)
    and every long pause -- longer than *gap* seconds, or more than 20x the median
    spacing and at least 5 ms -- is drawn as a break marker labelled with its duration
    (a 40 ms delayed-ACK stall, 1 s SYN retries). When the segments are evenly spread
    in time, the axis is drawn to scale instead; the y-axis label says which.

    Colours: SYN green, data blue, pure ACK grey, FIN orange, RST red,
    retransmission purple (dashed). Only the first *max_segments* rows are drawn.
    """
    use_style()
    _require(df, "ladder")
    conn, cl, sv, omitted, sid = _connection(df, client, stream, "ladder")
    n_total = len(conn)
    shown = conn.iloc[: max(1, int(max_segments))]
    n = len(shown)
    retrans = _retransmitted(conn)[:n]

    t = shown["t"].to_numpy(dtype=float)
    t0 = float(conn["t"].iloc[0]) if "t" in conn else 0.0
    dts = np.diff(t)
    med = float(np.median(dts)) if len(dts) else 0.0
    is_gap = (dts > gap) | ((dts > 20 * med) & (dts >= 0.005))

    to_scale = False
    if n >= 3 and not is_gap.any() and t[-1] > t[0]:
        mean = (t[-1] - t[0]) / (n - 1)
        to_scale = bool(dts.min() >= 0.4 * mean and dts.max() <= 2.5 * mean)
    if to_scale:
        mean = (t[-1] - t[0]) / (n - 1)
        y = (t - t[0]) / mean
        ylabel = f"time ↓\n(to scale, {_fmt_gap(mean)} per row)"
    else:
        steps = np.ones(max(n - 1, 0)) + _GAP_EXTRA * is_gap
        y = np.concatenate([[0.0], np.cumsum(steps)])
        ylabel = "time ↓\n(capture order, not to scale)"
        if is_gap.any():
            ylabel = "time ↓\n(not to scale; ⋯ long pauses cut)"

    y_end = float(y[-1]) + _SLOPE
    more = n_total - n
    y_bottom = y_end + (1.2 if more > 0 else 0.55)
    y_top = -0.55

    if ax is None:
        height = max(3.6, (y_bottom - y_top) * _ROW_IN + 1.75)
        fig = plt.figure(figsize=(10.0, height))
        top_in, bottom_in = 1.05, 0.7
        ax = fig.add_axes((0.07, bottom_in / height, 0.9, 1 - (top_in + bottom_in) / height))
    else:
        fig = ax.figure
    ax.set_xlim(-0.34, 1.34)
    ax.set_ylim(y_bottom, y_top)  # inverted: time runs down
    ax.grid(False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(ylabel, color="#444444", fontsize=9)
    xs = {cl: 0.0, sv: 1.0}

    # Lifelines, interrupted (dotted) where a pause was compressed.
    breaks = [(float(y[i]) + _SLOPE + 0.12, float(y[i + 1]) - 0.12) for i in np.flatnonzero(is_gap)]
    for x in (0.0, 1.0):
        start = y_top + 0.1
        for b0, b1 in breaks:
            ax.plot([x, x], [start, b0], color="#333333", lw=1.4, solid_capstyle="butt", zorder=1)
            ax.plot([x, x], [b0, b1], color="#333333", lw=1.2, ls=(0, (1, 3)), zorder=1)
            start = b1
        ax.plot([x, x], [start, y_bottom - 0.1], color="#333333", lw=1.4, solid_capstyle="butt", zorder=1)
    head = dict(ha="center", va="bottom", fontsize=10, clip_on=False)
    hdr_tr = mpl.transforms.blended_transform_factory(ax.transData, ax.transAxes)
    ax.text(0.0, 1.0, f"client\n{_fmt_ep(cl)}", transform=hdr_tr, fontweight="bold", color="#222222", **head)
    ax.text(1.0, 1.0, f"server\n{_fmt_ep(sv)}", transform=hdr_tr, fontweight="bold", color="#222222", **head)

    # Pause markers.
    for i in np.flatnonzero(is_gap):
        b0, b1 = float(y[i]) + _SLOPE, float(y[i + 1])
        mid = (b0 + b1) / 2
        for x in (0.0, 1.0):
            for dy in (-0.07, 0.07):
                ax.plot([x - 0.025, x + 0.025], [mid + dy + 0.06, mid + dy - 0.06], color="#333333", lw=1.2, zorder=3)
        ax.text(
            0.5, mid, f"⋯  {_fmt_gap(float(dts[i]))}  ⋯", ha="center", va="center", fontsize=9.5,
            style="italic", color="#333333", gid="ladder-gap", zorder=4,
            bbox=dict(boxstyle="round,pad=0.25", fc="#F4F4F4", ec="#BBBBBB", lw=0.6),
        )

    present: list[str] = []
    for k, (_, r) in enumerate(shown.iterrows()):
        s_ep = _src(r)
        x0 = xs.get(s_ep, 0.0)
        x1 = 1.0 - x0
        y0 = float(y[k])
        y1 = y0 + _SLOPE
        cat = _category(r["flags"], int(r["len"]), bool(retrans[k]))
        if cat not in present:
            present.append(cat)
        arrow = FancyArrowPatch(
            (x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=13, color=COLORS[cat],
            lw=1.6, shrinkA=0, shrinkB=0, zorder=2, linestyle="--" if cat == "retrans" else "-",
        )
        arrow.set_gid("ladder-arrow")
        ax.add_patch(arrow)
        # Label above the arrow's middle, parallel to it (rotation follows the data slope).
        yl, yr = (y0, y1) if x0 == 0.0 else (y1, y0)
        angle = math.degrees(math.atan2(yr - yl, 1.0))
        text = segment_label(r)
        if cat == "retrans" and "labels" not in conn.columns:
            text += " (retransmission)"
        ax.text(
            0.5, (y0 + y1) / 2 - 0.06, text, ha="center", va="bottom", fontsize=8.5,
            color=_TEXT[cat], rotation=angle, rotation_mode="anchor", transform_rotates_text=True,
            gid="ladder-label", zorder=3,
        )
        ax.text(
            x0 + (-0.02 if x0 == 0.0 else 0.02), y0, _fmt_time(float(r["t"]) - t0),
            ha="right" if x0 == 0.0 else "left", va="center", fontsize=8, color="#555555",
            gid="ladder-time",
        )

    if more > 0:
        ax.text(0.5, y_end + 0.65, f"⋮  ({more} more not shown)", ha="center", va="center",
                fontsize=9, color="#444444", gid="ladder-more")

    handles = [Line2D([], [], color=COLORS[c], lw=2, ls="--" if c == "retrans" else "-", label=_CATEGORY_NAMES[c])
               for c in ("syn", "data", "ack", "fin", "rst", "retrans") if c in present]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles),
              frameon=False, fontsize=8.5, handlelength=1.8, borderaxespad=0.2)
    if title is None:
        title = f"Ladder: {n_total} segment{'s' if n_total != 1 else ''}"
        if more > 0:
            title = f"Ladder: first {n} of {n_total} segments"
        if sid is not None and "stream" in df.columns and df["stream"].nunique() > 1:
            title += f" of stream {sid}"
        if omitted:
            title += f" ({omitted} segments of other connections not drawn)"
    ax.set_title(title, pad=36)
    return fig


# ----------------------------------------------------------------------------- time-sequence

def _direction(df, sender, stream, what):
    conn, cl, sv, _, _ = _connection(df, None, stream, what)
    if sender is None:
        sent = {ep: int(conn.loc[(conn["src"] == ep[0]) & (conn["sport"] == ep[1]), "len"].sum()) for ep in (cl, sv)}
        snd = cl if sent[cl] >= sent[sv] else sv
    else:
        snd = _parse_endpoint(sender, [cl, sv], "sender")
    rcv = sv if snd == cl else cl
    is_fwd = (conn["src"] == snd[0]) & (conn["sport"] == snd[1])
    return conn, snd, rcv, is_fwd.to_numpy()


def _probe_mask(fwd: pd.DataFrame) -> np.ndarray:
    """Zero-window probes / keep-alives: from labels, else 0-1 byte segments at snd_nxt-1."""
    if "labels" in fwd.columns:
        return np.array([any(str(x) in ("zero_window_probe", "keep_alive") for x in _as_labels(v))
                         for v in fwd["labels"]], dtype=bool)
    out, nxt = [], None
    for f, seq, ln in zip(fwd["flags"], fwd["seq"], fwd["len"]):
        seq, ln = int(seq), int(ln)
        syn_fin = _has(f, "SYN") or _has(f, "FIN") or _has(f, "RST")
        out.append(bool(nxt is not None and not syn_fin and ln <= 1 and seq == nxt - 1))
        end = seq + ln + int(_has(f, "SYN")) + int(_has(f, "FIN"))
        nxt = end if nxt is None else max(nxt, end)
    return np.array(out, dtype=bool)


def time_sequence(
    df: pd.DataFrame,
    *,
    sender: Any = None,
    ax=None,
    show_window: bool = True,
    show_acks: bool = True,
    title: str | None = None,
    stream: int | None = None,
) -> Figure:
    """Stevens/tcptrace time-sequence graph of one direction of a connection.

    x is time (s since the first packet), y the relative sequence number. Each data
    segment of *sender* (default: the endpoint that sent more payload) is a vertical
    bar from seq to seq+len. The receiver's cumulative ACK is the step line below the
    bars; the edge of its advertised window (ack + win) the dashed line above them:
    the sender may only send between the two. Zero-window advertisements are red
    crosses on the ACK line; zero-length probes / keep-alives orange diamonds;
    retransmissions (expert label ``retransmission``, or seq below what was already
    sent) red bars.
    """
    use_style()
    _require(df, "time_sequence")
    conn, snd, rcv, is_fwd = _direction(df, sender, stream, "time_sequence")
    fwd, rev = conn[is_fwd], conn[~is_fwd]
    if ax is None:
        fig, ax = plt.subplots(figsize=(10.0, 5.5))
    else:
        fig = ax.figure
    retr_all = _retransmitted(conn)
    retr = retr_all[is_fwd]
    probes = _probe_mask(fwd)
    data = (fwd["len"].to_numpy() > 0) & ~probes
    t_f = fwd["t"].to_numpy(float)
    seq_f = fwd["seq"].to_numpy(np.int64)
    len_f = fwd["len"].to_numpy(np.int64)
    sel = data & ~retr
    if sel.any():
        ax.vlines(t_f[sel], seq_f[sel], seq_f[sel] + len_f[sel], color=COLORS["data"], lw=2.0,
                  label=f"data sent by {_fmt_ep(snd)}", zorder=3)
        ax.plot(t_f[sel], seq_f[sel] + len_f[sel], ls="none", marker="_", ms=6, mew=1.5, color=COLORS["data"], zorder=3)
    sel = data & retr
    if sel.any():
        ax.vlines(t_f[sel], seq_f[sel], seq_f[sel] + len_f[sel], color=COLORS["retrans"], lw=2.4,
                  label="retransmission", zorder=4)
        ax.plot(t_f[sel], seq_f[sel] + len_f[sel], ls="none", marker="_", ms=7, mew=2, color=COLORS["retrans"], zorder=4)
    if probes.any():
        ax.plot(t_f[probes], seq_f[probes], ls="none", marker="D", ms=6, mfc="white", mew=1.6,
                color=COLORS["probe"], label="zero-window probe / keep-alive", zorder=5)
    ctl = fwd["flags"].map(lambda f: _has(f, "SYN") or _has(f, "FIN")).to_numpy()
    if ctl.any():
        ax.plot(t_f[ctl], seq_f[ctl], ls="none", marker="o", ms=4.5, color=COLORS["syn"],
                label="SYN / FIN", zorder=5)

    acks = rev[rev["flags"].map(lambda f: _has(f, "ACK"))]
    if len(acks):
        t_end = float(conn["t"].max())
        ta = np.append(acks["t"].to_numpy(float), t_end)
        a = acks["ack"].to_numpy(np.int64)
        w = acks["win"].to_numpy(np.int64)
        if show_acks:
            ax.step(ta, np.append(a, a[-1]), where="post", color=COLORS["acks"], lw=1.4,
                    label=f"ACK from {_fmt_ep(rcv)}", zorder=2)
        if show_window:
            ax.step(ta, np.append(a + w, (a + w)[-1]), where="post", color=COLORS["window"], lw=1.3,
                    ls="--", label="window edge (ack + win)", zorder=2)
        zero = w == 0
        if zero.any():
            ax.plot(ta[:-1][zero], a[zero], ls="none", marker="x", ms=8, mew=2, color=COLORS["zero"],
                    label="zero window advertised", zorder=6)
        if "labels" in acks.columns:
            upd = np.array(["window_update" in map(str, _as_labels(v)) for v in acks["labels"]], dtype=bool)
            if upd.any():
                ax.plot(ta[:-1][upd], (a + w)[upd], ls="none", marker="^", ms=7, color=COLORS["acks"],
                        label="window update", zorder=6)
    # A large window would squash small transfers to a flat line: zoom on the data and
    # say where the window edge went (tcptrace does the same).
    ends = [int((seq_f + len_f).max()) if len(seq_f) else 0]
    if len(acks):
        ends.append(int(acks["ack"].max()))
    data_top = max(ends)
    if show_window and len(acks):
        edge_top = int((acks["ack"] + acks["win"]).max())
        if data_top > 0 and edge_top > 4 * data_top:
            ax.set_ylim(-0.04 * data_top, data_top * 1.3)
            ax.text(0.99, 0.98, f"window edge is above the plot (up to {_fmt_bytes(edge_top)}) ↑",
                    transform=ax.transAxes, ha="right", va="top", fontsize=8.5, color=COLORS["window"],
                    gid="window-off-scale")
    ax.set_xlabel("time (s since the first packet)")
    ax.set_ylabel("relative sequence number")
    ax.yaxis.set_major_formatter(EngFormatter(unit="B", sep=" "))
    ax.set_title(title or f"Time-sequence: {_fmt_ep(snd)} → {_fmt_ep(rcv)}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.margins(x=0.03)
    return fig


def _inflight(conn: pd.DataFrame, is_fwd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nxt = una = None
    ts, vals = [], []
    for fw, f, t, seq, ln, ack in zip(is_fwd, conn["flags"], conn["t"], conn["seq"], conn["len"], conn["ack"]):
        if fw:
            end = int(seq) + int(ln) + int(_has(f, "SYN")) + int(_has(f, "FIN"))
            nxt = end if nxt is None else max(nxt, end)
        elif _has(f, "ACK"):
            una = int(ack) if una is None else max(una, int(ack))
        if nxt is not None:
            ts.append(float(t))
            vals.append(max(0, nxt - (una if una is not None else 0)))
    return np.array(ts), np.array(vals)


def window_over_time(
    df: pd.DataFrame,
    *,
    sender: Any = None,
    ax=None,
    show_inflight: bool = True,
    title: str | None = None,
    stream: int | None = None,
) -> Figure:
    """The receiver's advertised window and the sender's bytes in flight over time.

    *sender* as in :func:`time_sequence`. The window is what each segment from the
    receiver advertised (scaled), drawn as a step; zero windows are red crosses.
    Bytes in flight = highest sequence sent minus highest ACK received.
    """
    use_style()
    _require(df, "window_over_time")
    conn, snd, rcv, is_fwd = _direction(df, sender, stream, "window_over_time")
    rev = conn[~is_fwd]
    if ax is None:
        fig, ax = plt.subplots(figsize=(9.0, 4.5))
    else:
        fig = ax.figure
    t_end = float(conn["t"].max())
    if len(rev):
        tr = np.append(rev["t"].to_numpy(float), t_end)
        w = rev["win"].to_numpy(np.int64)
        ax.step(tr, np.append(w, w[-1]), where="post", color=COLORS["window"],
                label=f"window advertised by {_fmt_ep(rcv)}")
        zero = w == 0
        if zero.any():
            ax.plot(tr[:-1][zero], w[zero], ls="none", marker="x", ms=8, mew=2, color=COLORS["zero"],
                    label="zero window", zorder=5, clip_on=False)
    if show_inflight:
        ti, vi = _inflight(conn, is_fwd)
        if len(ti):
            ax.step(np.append(ti, t_end), np.append(vi, vi[-1]), where="post", color=COLORS["data"],
                    label=f"bytes in flight from {_fmt_ep(snd)}")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("time (s since the first packet)")
    ax.set_ylabel("bytes")
    ax.yaxis.set_major_formatter(EngFormatter(unit="B", sep=" "))
    ax.set_title(title or f"Advertised window and bytes in flight: {_fmt_ep(snd)} → {_fmt_ep(rcv)}")
    ax.legend(loc="best")
    return fig


# ----------------------------------------------------------------------------- numbers

def latency_hist(
    samples_by_label: Mapping[str, Sequence[float]],
    *,
    unit: str = "ms",
    log: bool = True,
    bins: int = 40,
    stacked: bool = False,
    ax=None,
    title: str | None = None,
    xlabel: str | None = None,
) -> Figure:
    """Histograms of latency samples for several settings, medians marked.

    *samples_by_label* maps a setting's name to its samples, already in *unit*.
    With ``log=True`` the bins are log-spaced and the x-axis logarithmic (a 0.03 ms
    and a 44 ms mode both show); non-positive samples are then dropped and counted in
    the legend. ``stacked=True`` stacks the histograms instead of overlaying them.
    """
    use_style()
    if not samples_by_label:
        raise CourseError("latency_hist got no samples.", "pass {'setting': [latencies, ...], ...}.")
    data: dict[str, np.ndarray] = {}
    dropped: dict[str, int] = {}
    for k, v in samples_by_label.items():
        a = np.asarray(list(v), dtype=float)
        a = a[np.isfinite(a)]
        if log:
            dropped[k] = int((a <= 0).sum())
            a = a[a > 0]
        data[str(k)] = a
    allv = np.concatenate([a for a in data.values()]) if data else np.array([])
    if allv.size == 0:
        raise CourseError("latency_hist: every sample list is empty.", "run the experiment first, then plot.")
    lo, hi = float(allv.min()), float(allv.max())
    if log:
        if hi <= lo:
            lo, hi = lo / 1.5, hi * 1.5
        edges = np.geomspace(lo, hi, bins + 1)
    else:
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    if ax is None:
        fig, ax = plt.subplots(figsize=(9.0, 4.8))
    else:
        fig = ax.figure
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(data))]
    labels = []
    for (k, a), c in zip(data.items(), colors):
        med = float(np.median(a)) if a.size else float("nan")
        lab = f"{k} (n={a.size}, median {med:.3g} {unit})"
        if dropped.get(k):
            lab += f", {dropped[k]} ≤ 0 dropped"
        labels.append(lab)
    nonempty = [(a, c, lab) for a, c, lab in zip(data.values(), colors, labels) if a.size]
    if stacked:
        ax.hist([a for a, _, _ in nonempty], bins=edges, stacked=True, color=[c for _, c, _ in nonempty],
                label=[lab for _, _, lab in nonempty], alpha=0.85, edgecolor="white", linewidth=0.5)
    else:
        for a, c, lab in nonempty:
            ax.hist(a, bins=edges, histtype="stepfilled", color=c, alpha=0.25)
            ax.hist(a, bins=edges, histtype="step", color=c, lw=1.6, label=lab)
    tr = mpl.transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for a, c, _ in nonempty:
        med = float(np.median(a))
        ax.axvline(med, color=c, ls="--", lw=1.3, gid="median")
        ax.text(med, 0.98, f"median {med:.3g} {unit}", transform=tr, rotation=90, ha="center", va="top",
                fontsize=8.5, color=c, gid="median", zorder=5,
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=c, lw=0.6, alpha=0.95))
    if log:
        ax.set_xscale("log")     # plain-number labels: PlainLogScale
    ax.set_xlabel(xlabel or f"latency ({unit}{', log scale' if log else ''})")
    ax.set_ylabel("count")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title or "Latency distribution")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    return fig


def queue_depth(
    times: Sequence[float],
    depths: Sequence[float],
    *,
    backlog: int | None = None,
    ax=None,
    title: str | None = None,
    ylabel: str = "connections in the accept queue",
    xlabel: str = "time (s)",
    events: Mapping[str, Sequence[float]] | None = None,
) -> Figure:
    """Queue depth over time as a step plot; with *backlog*, the backlog+1 limit line.

    *events* maps a name to event times (e.g. ``{"SYN retransmitted": [...]}``), drawn
    as tick marks along the bottom of the plot.
    """
    use_style()
    t = np.asarray(list(times), dtype=float)
    d = np.asarray(list(depths), dtype=float)
    if t.shape != d.shape:
        raise CourseError(
            f"queue_depth: {t.size} times but {d.size} depths.", "pass one depth per time sample."
        )
    if ax is None:
        fig, ax = plt.subplots(figsize=(9.0, 4.5))
    else:
        fig = ax.figure
    if t.size:
        ax.step(t, d, where="post", color=COLORS["data"], label="queue depth", zorder=3)
        ax.fill_between(t, d, step="post", color=COLORS["data"], alpha=0.15, zorder=2)
    top = float(d.max()) if d.size else 1.0
    if backlog is not None:
        ax.axhline(backlog + 1, color=COLORS["limit"], ls="--", lw=1.4, gid="backlog-limit",
                   label=f"backlog + 1 = {backlog + 1} (accept-queue limit)")
        top = max(top, backlog + 1)
    if events:
        tr = mpl.transforms.blended_transform_factory(ax.transData, ax.transAxes)
        markers = ["|", "x", "v", "+"]
        for i, (name, ev) in enumerate(events.items()):
            ev = np.asarray(list(ev), dtype=float)
            ax.plot(ev, np.full(ev.shape, 0.03 + 0.05 * i), transform=tr, ls="none", marker=markers[i % 4],
                    ms=11, mew=1.8, color=PALETTE[(i + 3) % len(PALETTE)], label=name, clip_on=False, zorder=5)
    ax.set_ylim(0, top * 1.15 + 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Queue depth over time")
    ax.legend(loc="upper left")
    return fig


def bars(
    data: Mapping[Any, float] | pd.Series,
    *,
    ylabel: str,
    expected: float | Mapping[Any, float] | None = None,
    xlabel: str | None = None,
    title: str | None = None,
    ax=None,
    annotate: bool = True,
) -> Figure:
    """Bar chart of counts per category (e.g. connections per listener).

    *expected* is a level drawn across all bars (e.g. the uniform share) or a mapping
    with one expected value per bar. Each bar is labelled with its value.
    """
    use_style()
    s = data if isinstance(data, pd.Series) else pd.Series(dict(data))
    if s.empty:
        raise CourseError("bars got no data.", "pass a dict or Series of {category: value}.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(5.0, min(12.0, 1.0 + 0.8 * len(s))), 4.2))
    else:
        fig = ax.figure
    x = np.arange(len(s))
    vals = s.to_numpy(dtype=float)
    rects = ax.bar(x, vals, color=COLORS["data"], width=0.65, zorder=2)
    ax.set_xticks(x, [str(i) for i in s.index])
    if annotate:
        fmt = "{:.0f}" if np.all(np.mod(vals, 1) == 0) else "{:.3g}"
        for txt in ax.bar_label(rects, labels=[fmt.format(v) for v in vals], padding=3, fontsize=9):
            txt.set_bbox(dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))
            txt.set_zorder(4)
    if expected is not None:
        if isinstance(expected, Mapping) or isinstance(expected, pd.Series):
            ev = np.array([float(expected.get(k, np.nan)) for k in s.index])
            ax.hlines(ev, x - 0.4, x + 0.4, colors=COLORS["limit"], linestyles="--", lw=1.6, gid="expected",
                      label="expected", zorder=3)
        else:
            ax.axhline(float(expected), color=COLORS["limit"], ls="--", lw=1.4, gid="expected",
                       label=f"expected {float(expected):g}", zorder=3)
        ax.legend(loc="lower right")
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.grid(axis="x", visible=False)
    ax.margins(y=0.12)
    if title:
        ax.set_title(title)
    return fig
