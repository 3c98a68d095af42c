"""Wireshark's and scapy's views of a capture: the TCP expert analysis and summary lines
through pyshark (safe inside a running event loop), and scapy packets.

tshark versions: Binder images run tshark 3.6 (Ubuntu 22.04) or 4.2 (24.04), Debian 12
has 4.0, and the corpus manifest records the version it was dissected with.
:func:`tshark_version` reads the installed one, :func:`manifest_tshark_version` the
corpus's, :data:`WIRESHARK_CHANGES` / :func:`version_report` say what differs between
two versions for what the course reads, :func:`label_probe` measures this tshark's label
rules on a crafted capture, and :func:`assert_labels` asserts expert labels with all of
that in its failure message.
"""
from __future__ import annotations

import asyncio
import functools
import os
import shutil
import threading
import warnings

from typing import Any, Callable, NamedTuple

import numpy as np
import pandas as pd

from .errors import BadPcapError, MissingToolError
from .pcapfile import _FLAG_NAMES, _fix_rerun, _load, _records

# ============================================================================ pyshark
#: tshark's TCP analysis flag fields -> the short label expert() reports.
EXPERT_LABELS = {
    "tcp.analysis.retransmission": "retransmission",
    "tcp.analysis.fast_retransmission": "fast_retransmission",
    "tcp.analysis.spurious_retransmission": "spurious_retransmission",
    "tcp.analysis.out_of_order": "out_of_order",
    "tcp.analysis.lost_segment": "lost_segment",
    "tcp.analysis.ack_lost_segment": "ack_lost_segment",
    "tcp.analysis.duplicate_ack": "dup_ack",
    "tcp.analysis.zero_window": "zero_window",
    "tcp.analysis.zero_window_probe": "zero_window_probe",
    "tcp.analysis.zero_window_probe_ack": "zero_window_probe_ack",
    "tcp.analysis.window_update": "window_update",
    "tcp.analysis.window_full": "window_full",
    "tcp.analysis.keep_alive": "keep_alive",
    "tcp.analysis.keep_alive_ack": "keep_alive_ack",
    "tcp.analysis.reused_ports": "reused_ports",
    "tcp.analysis.tfo_syn": "tfo_syn",
    "tcp.analysis.tfo_ack": "tfo_ack",
    "tcp.analysis.tfo_ignored": "tfo_ignored",
}


def _tshark() -> str:
    path = shutil.which("tshark")
    if not path:
        raise MissingToolError("tshark", "tshark",
                               why="Wireshark's expert analysis and pyshark run tshark")
    return path


def _check_capture(path) -> str:
    """Fail early, with the course's message, on a missing, empty, corrupt or cut-off
    file (tshark would only say it "crashed"). Reads the records: ~20 ms per 100k."""
    buf, size = _load(path)
    rec = _records(path, buf, size, True)
    if rec.truncated:
        raise BadPcapError(
            f"{path}: the file ends in the middle of a packet record after "
            f"{rec.count} complete packets (tcpdump killed, or the disk filled)",
            f"{_fix_rerun()}; segments({str(path)!r}, allow_truncated=True) still reads "
            "the complete packets")
    return str(path)


def _thread_safe_child_watcher() -> None:
    """Make asyncio subprocesses work in a worker thread's event loop (Python < 3.14).

    Called in the caller's thread before the worker starts. pyshark installs a
    SafeChildWatcher bound to the main thread's loop whenever it is used from the main
    thread; that watcher notices child exits only when the main loop runs, which it
    does not while a notebook cell waits for our worker (tshark's exit goes unseen
    and every call stalls for many seconds). ThreadedChildWatcher works for any loop
    in any thread (and Python 3.12+'s PidfdChildWatcher too).
    """
    if not hasattr(asyncio, "ThreadedChildWatcher"):       # Python 3.14+: no watchers
        return
    import sys
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
        current = getattr(policy, "_watcher", None)       # do not create one
        ok: tuple = (asyncio.ThreadedChildWatcher,)
        if sys.version_info >= (3, 12) and hasattr(asyncio, "PidfdChildWatcher"):
            ok += (asyncio.PidfdChildWatcher,)
        if current is None or isinstance(current, ok):
            return
        new = asyncio.ThreadedChildWatcher()
        if threading.current_thread() is threading.main_thread():
            asyncio.set_child_watcher(new)   # also removes the old SIGCHLD handler
        elif hasattr(policy, "_watcher"):
            policy._watcher = new            # signal handlers belong to the main thread


def _in_worker(fn: Callable[[asyncio.AbstractEventLoop], Any]) -> Any:
    """Run fn(loop) in a worker thread that owns a new event loop; return its result.

    pyshark's synchronous API calls loop.run_until_complete(), which fails inside a
    running loop ("This event loop is already running": every Jupyter kernel). A
    worker thread has no running loop, so the same code works in scripts, tests,
    notebooks and coroutines alike.
    """
    box: dict[str, Any] = {}

    _thread_safe_child_watcher()

    def work():
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            box["value"] = fn(loop)
        except BaseException as exc:          # re-raised in the caller's thread
            box["error"] = exc
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:
                pass
            asyncio.set_event_loop(None)
            loop.close()

    t = threading.Thread(target=work, name="helpers.dissect-pyshark", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


_CAPTURE_CLASS = None


def _file_capture(loop, path: str, **kw):
    """pyshark.FileCapture on our loop, minus a race that fakes a tshark crash.

    At the end of the file tshark exits by itself; pyshark then calls kill(), which
    polls (reaps) the child first, so asyncio's child watcher finds no child and
    reports return code 255, and pyshark raises TSharkCrashException at random. The
    subclass waits for a tshark that reached EOF instead of killing it.
    """
    global _CAPTURE_CLASS
    if _CAPTURE_CLASS is None:
        import pyshark
        from pyshark.tshark.output_parser.base_parser import BaseTsharkOutputParser
        from pyshark.tshark.output_parser.tshark_xml import TsharkXmlParser

        class _PsmlParser(TsharkXmlParser):
            """pyshark 0.6 looks for the PSML <structure> again before every packet and
            throws away the data it read meanwhile (only_summaries loses most packets)."""

            async def get_packets_from_stream(self, stream, existing_data,
                                              got_first_packet=True):
                if self._psml_structure is None:
                    existing_data = existing_data + await self._get_psml_struct(stream)
                return await BaseTsharkOutputParser.get_packets_from_stream(
                    self, stream, existing_data, got_first_packet=got_first_packet)

        class _FileCapture(pyshark.FileCapture):
            async def _cleanup_subprocess(self, process):
                if process.returncode is None and self._eof_reached:
                    try:
                        await asyncio.wait_for(process.wait(), 10)
                    except asyncio.TimeoutError:
                        pass
                await super()._cleanup_subprocess(process)

            def _setup_tshark_output_parser(self):
                if self._only_summaries:
                    return _PsmlParser(parse_summaries=True)
                return super()._setup_tshark_output_parser()

        _CAPTURE_CLASS = _FileCapture
    return _CAPTURE_CLASS(path, eventloop=loop, tshark_path=_tshark(), keep_packets=False,
                          **kw)


def _close(cap) -> None:
    """Close a capture without letting pyshark's __del__ retry on a closed loop."""
    try:
        cap.close()
    except Exception:
        pass
    finally:
        cap._running_processes.clear()


def _pyshark_run(path: str, display_filter: str, fn):
    """_in_worker(fn), turning a tshark failure into a course error that names it."""
    try:
        return _in_worker(fn)
    except Exception as exc:
        if type(exc).__name__ != "TSharkCrashException":
            raise
        import subprocess
        # tshark compiles the filter before it opens the file: /dev/null tells them apart
        probe = subprocess.run([_tshark(), "-Y", display_filter, "-r", os.devnull],
                               capture_output=True, text=True)
        lines = [ln for ln in probe.stderr.splitlines() if "Running as user" not in ln]
        msg = "\n".join(lines).strip().removeprefix("tshark: ")
        if "special file" not in msg:
            from .errors import ParameterError
            raise ParameterError(f"display filter {display_filter!r} is not valid: {msg}",
                                 "use Wireshark display-filter syntax, e.g. "
                                 "'tcp.port == 5000 && tcp.len > 0'") from None
        raise BadPcapError(f"tshark failed on {path}: {getattr(exc, 'args', [exc])[0]}",
                           "open the file in tshark/Wireshark to see what is wrong "
                           "with it; re-run the capture if it is damaged") from exc


def _walk_expert(node, labels: list[str], msgs: list[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            lab = EXPERT_LABELS.get(k)
            if lab and lab not in labels:
                labels.append(lab)
            if k == "_ws.expert.message":
                for m in (v if isinstance(v, list) else [v]):
                    if m not in msgs:
                        msgs.append(str(m))
            elif isinstance(v, (dict, list)):
                _walk_expert(v, labels, msgs)
    elif isinstance(node, list):
        for v in node:
            _walk_expert(v, labels, msgs)


def expert(path: str | os.PathLike, display_filter: str = "tcp") -> pd.DataFrame:
    """Wireshark's TCP expert analysis: one row per frame with any TCP analysis flag.

    Columns: ``frame`` (int), ``labels`` (tuple of short names such as
    "retransmission", "dup_ack", "zero_window", "window_update", "window_full",
    "keep_alive", "out_of_order", "reused_ports"; see :data:`EXPERT_LABELS`) and
    ``info`` (Wireshark's expert messages for those flags, joined by "; ").
    Computed by tshark through pyshark in a worker thread, so it also works inside a
    running event loop (Jupyter). Note: Wireshark calls Linux's zero-window probes
    (an empty segment at snd_una-1) "keep_alive", not "zero_window_probe".
    ``df.attrs["tshark_version"]`` names the tshark that labelled; when its major.minor
    is not the corpus manifest's, :func:`version_report` is printed once per process.
    """
    p = _check_capture(path)
    _tshark()
    filt = f"({display_filter}) && tcp.analysis.flags"

    def run(loop):
        rows = []
        cap = _file_capture(loop, p, display_filter=filt, use_json=True)
        try:
            for pkt in cap:
                labels: list[str] = []
                msgs: list[str] = []
                for layer in pkt.layers:
                    if layer.layer_name == "tcp":
                        _walk_expert(layer._all_fields.get("tcp.analysis", {}), labels, msgs)
                if labels:
                    rows.append((int(pkt.number), tuple(labels), "; ".join(msgs)))
        finally:
            _close(cap)
        return rows

    rows = _pyshark_run(p, filt, run)
    df = pd.DataFrame(rows, columns=["frame", "labels", "info"])
    df["frame"] = df["frame"].astype(np.int64)
    df.attrs["path"] = str(path)
    df.attrs["tshark_version"] = _fmt(tshark_version())
    note_version_once()
    return df


def with_expert(df: pd.DataFrame, exp: pd.DataFrame | None = None) -> pd.DataFrame:
    """segments() frame plus ``labels`` and ``expert_info`` columns (empty where none).

    ``exp`` defaults to ``expert(df.attrs["path"])``.
    """
    if exp is None:
        exp = expert(df.attrs["path"])
    lab = dict(zip(exp["frame"].tolist(), exp["labels"].tolist()))
    info = dict(zip(exp["frame"].tolist(), exp["info"].tolist()))
    out = df.copy()
    frames = out["frame"].tolist()
    out["labels"] = pd.Series([lab.get(f, ()) for f in frames], index=out.index, dtype=object)
    out["expert_info"] = pd.array([info.get(f, "") for f in frames], dtype="str")
    return out


# ============================================================================ tshark versions
#: Wireshark's expert message for each analysis label (packet-tcp.c's expert table; the
#: strings have not changed from 3.6 to 4.2). tests/test_dissect_versions.py checks them
#: against the installed tshark's field glossary (tshark -G fields).
EXPERT_MESSAGES = {
    "retransmission": "This frame is a (suspected) retransmission",
    "fast_retransmission": "This frame is a (suspected) fast retransmission",
    "spurious_retransmission": "This frame is a (suspected) spurious retransmission",
    "out_of_order": "This frame is a (suspected) out-of-order segment",
    "lost_segment": "Previous segment(s) not captured (common at capture start)",
    "ack_lost_segment": "ACKed segment that wasn't captured (common at capture start)",
    "dup_ack": "Duplicate ACK",
    "zero_window": "TCP Zero Window segment",
    "zero_window_probe": "TCP Zero Window Probe",
    "zero_window_probe_ack": "ACK to a TCP Zero Window Probe",
    "window_update": "TCP window update",
    "window_full": "TCP window specified by the receiver is now completely full",
    "keep_alive": "TCP keep-alive segment",
    "keep_alive_ack": "ACK to a TCP keep-alive segment",
    "reused_ports": "A new tcp session is started with the same ports as an earlier "
                    "session in this trace",
}


class WiresharkChange(NamedTuple):
    """One thing the course reads from tshark that changed between versions."""
    since: tuple[int, int, int]     # first version with `new`
    old: str
    new: str
    note: str


#: What differs between the tshark versions Binder and the course's machines have
#: (3.6 on Ubuntu 22.04, 4.0 on Debian 12, 4.2 on Ubuntu 24.04), for what the course
#: reads, from Wireshark's packet-tcp.c. The TCP analysis rules behind the labels
#: (keep-alive: 0 or 1 byte at next seq - 1; zero-window probe: exactly 1 byte at the
#: next seq into a zero window; window update; dup ACK) and the tcp.analysis.* field
#: names are the same in the three, so Linux's zero-window probes are "keep_alive" in
#: each. Only 4.0 could be run here: :func:`label_probe` measures the rules on whatever
#: tshark is installed, and :func:`assert_labels` reports any difference it finds.
WIRESHARK_CHANGES = [
    WiresharkChange((4, 0, 0), "tcp.flags.ns ('Nonce', RFC 3540)",
                    "tcp.flags.ae ('Accurate ECN') and tcp.flags.ace",
                    "the 0x100 flag bit; the Info column shows [NS] before 4.0, [AE] "
                    "from 4.0 (segments() names it AE; its tcp_flags value is the same)"),
    WiresharkChange((4, 2, 0), "tcp.completeness: an integer",
                    "tcp.completeness: a bit field with tcp.completeness.str and one "
                    "field per bit (syn, syn-ack, ack, data, fin, rst)",
                    "not read by the course; a filter on tcp.completeness == 31 keeps "
                    "working"),
]


def parse_tshark_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) from `tshark --version` (or the manifest's tools.tshark)."""
    import re
    m = re.search(r"(?:TShark|Wireshark)\D*?(\d+)\.(\d+)\.(\d+)", text or "")
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


@functools.lru_cache(maxsize=1)
def tshark_version() -> tuple[int, int, int]:
    """The installed tshark's version, read from `tshark --version`."""
    import subprocess
    exe = _tshark()
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MissingToolError("tshark", "tshark", why=f"`tshark --version` failed: {exc}")
    v = parse_tshark_version(out.stdout + out.stderr)
    if v is None:
        raise MissingToolError("tshark", "tshark", why="`tshark --version` printed no "
                               "version number")
    return v


def manifest_tshark_version() -> tuple[int, int, int] | None:
    """The tshark version the corpus was dissected with (pcaps/manifest.json, the most
    common one if entries differ); None without a manifest or a recorded version."""
    from collections import Counter
    from .corpus import read_manifest
    try:
        entries = read_manifest().get("entries", [])
    except Exception:                     # a broken manifest is reported by the corpus
        return None
    seen = Counter(v for v in (parse_tshark_version((e.get("tools") or {}).get("tshark", ""))
                               for e in entries) if v)
    return seen.most_common(1)[0][0] if seen else None


def _fmt(v) -> str:
    return ".".join(map(str, v)) if v else "unknown"


def version_differences(running: tuple[int, int, int] | None = None,
                        reference: tuple[int, int, int] | None = None) -> list[WiresharkChange]:
    """The WIRESHARK_CHANGES that lie between two versions (default: the installed
    tshark and the corpus manifest's)."""
    running = tshark_version() if running is None else running
    reference = manifest_tshark_version() if reference is None else reference
    if not running or not reference:
        return []
    lo, hi = sorted((running[:2], reference[:2]))
    return [c for c in WIRESHARK_CHANGES if lo < c.since[:2] <= hi]


def version_report(running=None, reference=None) -> str:
    """One paragraph: this tshark against the corpus's, and what differs between them."""
    running = tshark_version() if running is None else running
    reference = manifest_tshark_version() if reference is None else reference
    if not reference:
        return f"tshark {_fmt(running)} (the corpus manifest records no tshark version)"
    if running[:2] == reference[:2]:
        return f"tshark {_fmt(running)}, as the corpus was dissected with ({_fmt(reference)})"
    diffs = version_differences(running, reference)
    lines = [f"tshark {_fmt(running)} here; the corpus was dissected with tshark "
             f"{_fmt(reference)}. The rules and messages behind the expert labels the "
             "course asserts (keep_alive, zero_window, window_update, retransmission, ...) "
             "are the same in Wireshark 3.6, 4.0 and 4.2's source."]
    if diffs:
        lines.append("What differs between the two:")
        lines += [f"  - since {_fmt(c.since)}: {c.old} -> {c.new} ({c.note})" for c in diffs]
    else:
        lines.append("No difference the course reads is known between the two.")
    return "\n".join(lines)


_NOTED: set = set()


def note_version_once() -> str | None:
    """Print version_report() once per process when the installed tshark's major.minor
    differs from the corpus manifest's; return it (None when they agree)."""
    running, reference = tshark_version(), manifest_tshark_version()
    if not reference or running[:2] == reference[:2]:
        return None
    text = version_report(running, reference)
    if (running, reference) not in _NOTED:
        _NOTED.add((running, reference))
        print(text)
    return text


# ---------------------------------------------------------------- the label rules, measured
def _probe_pcap() -> bytes:
    """A 12-packet capture that exercises the rules behind the labels the course asserts:
    handshake, data, a zero window, a Linux zero-window probe (no data, seq = next - 1),
    an RFC-style probe (1 byte at next seq), the window update, a retransmission, a
    duplicate ACK. Raw IPv4 link type, client 10.0.0.1:40000, server 10.0.0.2:5000."""
    import socket
    import struct

    def seg(fwd, seq, ack, flags, win, payload=b""):
        sp, dp = (40000, 5000) if fwd else (5000, 40000)
        tcp = struct.pack(">HHIIBBHHH", sp, dp, seq, ack, 5 << 4, flags, win, 0, 0) + payload
        a, b = ("10.0.0.1", "10.0.0.2") if fwd else ("10.0.0.2", "10.0.0.1")
        return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                           socket.inet_aton(a), socket.inet_aton(b)) + tcp

    c, s = 1000, 5000
    pkts = [seg(True, c, 0, 0x02, 1000), seg(False, s, c + 1, 0x12, 1000),
            seg(True, c + 1, s + 1, 0x10, 1000),
            seg(True, c + 1, s + 1, 0x18, 1000, b"x" * 100),
            seg(False, s + 1, c + 101, 0x10, 0),                 # zero_window
            seg(True, c + 100, s + 1, 0x10, 1000),               # Linux probe
            seg(False, s + 1, c + 101, 0x10, 0),
            seg(True, c + 101, s + 1, 0x18, 1000, b"y"),         # 1-byte probe
            seg(False, s + 1, c + 101, 0x10, 0),
            seg(False, s + 1, c + 101, 0x10, 1000),              # window_update
            seg(True, c + 101, s + 1, 0x18, 1000, b"z" * 50),
            seg(True, c + 101, s + 1, 0x18, 1000, b"z" * 50)]    # retransmission
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    for k, p in enumerate(pkts):
        out += struct.pack("<IIII", 1_700_000_000, k * 100_000, len(p), len(p)) + p
    return out


#: What tshark 4.0.17 (the corpus's) labels in _probe_pcap(), frame -> labels.
PROBE_REFERENCE = {5: ("zero_window",), 6: ("keep_alive",), 7: ("zero_window",),
                   8: ("zero_window_probe",), 9: ("zero_window", "zero_window_probe_ack"),
                   10: ("window_update",), 12: ("retransmission",)}
#: what each probe frame stands for (for messages)
PROBE_ROLES = {5: "the receiver's zero window", 6: "Linux's zero-window probe (no data, "
               "seq = next - 1)", 7: "the receiver's answer to it", 8: "a 1-byte probe at the "
               "next seq", 9: "the answer to the 1-byte probe", 10: "the window update",
               12: "a retransmitted segment"}


def label_probe() -> dict[int, tuple[str, ...]]:
    """The installed tshark's labels on _probe_pcap(): {frame: sorted labels}. About 0.3 s
    (one tshark run); cached per process."""
    return dict(_label_probe_cached())


@functools.lru_cache(maxsize=1)
def _label_probe_cached() -> tuple:
    import subprocess
    import tempfile
    fields = list(EXPERT_LABELS)
    with tempfile.NamedTemporaryFile(suffix=".pcap") as f:
        f.write(_probe_pcap())
        f.flush()
        cmd = [_tshark(), "-r", f.name, "-T", "fields", "-e", "frame.number"]
        for fld in fields:
            cmd += ["-e", fld]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    res = []
    for line in out.splitlines():
        cols = line.split("\t")
        labs = tuple(sorted(EXPERT_LABELS[fl] for fl, val in zip(fields, cols[1:]) if val))
        if labs:
            res.append((int(cols[0]), labs))
    return tuple(res)


def label_differences(found: dict | None = None) -> list[str]:
    """Where the installed tshark labels the probe capture unlike tshark 4.0.17 (the
    corpus's): one sentence per frame; [] when they agree."""
    found = label_probe() if found is None else found
    out = []
    for fr in sorted(set(found) | set(PROBE_REFERENCE)):
        ref = tuple(sorted(PROBE_REFERENCE.get(fr, ())))
        got = tuple(sorted(found.get(fr, ())))
        if ref != got:
            out.append(f"{PROBE_ROLES.get(fr, f'frame {fr}')}: tshark "
                       f"{_fmt(tshark_version())} says {list(got) or 'nothing'}, tshark 4.0.17 "
                       f"said {list(ref) or 'nothing'}")
    return out


def assert_labels(labelled: pd.DataFrame, rows, label: str, *, absent: tuple = (),
                  claim: str = "") -> None:
    """Assert that every row of ``labelled`` (with_expert(), or expert()) selected by
    ``rows`` (an index, a boolean mask or a list of frames for expert()) carries the
    expert ``label`` and none of ``absent``.

    Wireshark's labels are asserted on any tshark version: when the installed tshark is
    not the corpus's, the version report is printed once; when the assert fails, the
    message says which tshark gave the labels, what differs from the corpus's version,
    and what this tshark does with the same rule on a crafted capture (label_probe()).
    """
    note_version_once()
    if "labels" not in labelled:
        raise KeyError("assert_labels needs a 'labels' column: pass with_expert(...) or "
                       "expert(...)")
    if "frame" in labelled and isinstance(rows, (list, tuple)):
        sel = labelled[labelled["frame"].isin(list(rows))]
    else:
        sel = labelled.loc[rows]
    bad = [(int(fr), tuple(lab)) for fr, lab in zip(sel.get("frame", sel.index), sel["labels"])
           if label not in lab or set(absent) & set(lab)]
    if len(sel) and not bad:
        return
    what = claim or f"Wireshark labels these segments {label!r}" + (
        f" and not {', '.join(map(repr, absent))}" if absent else "")
    detail = ("no rows selected" if not len(sel) else
              "; ".join(f"frame {fr}: {list(lab) or 'no label'}" for fr, lab in bad[:5]))
    msg = [f"{what}: {detail}", version_report()]
    try:
        diffs = label_differences()
    except Exception as exc:                  # the message must not fail itself
        diffs = [f"(the label probe failed: {exc})"]
    msg.append("On a crafted capture this tshark labels " + (
        "like tshark 4.0.17." if not diffs else "differently: " + "; ".join(diffs)))
    raise AssertionError("\n".join(msg))


_WS_FLAGS = {"SYN", "FIN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "AE", "NS"}


def _flags_from_info(info: str) -> str:
    """'[FIN, PSH, ACK]' in an Info column -> 'FIN+PSH+ACK' in segments() order."""
    start = info.find("[")
    while start != -1:
        end = info.find("]", start)
        if end == -1:
            break
        names = {x.strip() for x in info[start + 1:end].split(",")}
        if names and names <= _WS_FLAGS:
            return "+".join(n for _, n in _FLAG_NAMES if n in names)
        start = info.find("[", end)
    return ""


def pyshark_summary(path: str | os.PathLike, display_filter: str = "tcp",
                    limit: int | None = 50) -> pd.DataFrame:
    """Wireshark's packet list through pyshark: frame, time (epoch), src, dst, flags, info.

    ``info`` is Wireshark's Info column ("41970 → 5000 [SYN] Seq=0 Win=65495 ...");
    ``summary`` the whole summary line. At most ``limit`` packets (None: all).
    """
    p = _check_capture(path)
    _tshark()

    def run(loop):
        rows = []
        cap = _file_capture(loop, p, display_filter=display_filter, only_summaries=True,
                            custom_parameters=["-t", "e"])
        try:
            for pkt in cap:
                f = pkt._fields
                info = f.get("Info", "")
                rows.append((int(f.get("No.", 0)), float(f.get("Time", "nan")),
                             f.get("Source", ""), f.get("Destination", ""),
                             f.get("Protocol", ""), int(f.get("Length", 0) or 0),
                             _flags_from_info(info), info, pkt.summary_line))
                if limit is not None and len(rows) >= limit:
                    break
        finally:
            _close(cap)
        return rows

    rows = _pyshark_run(p, display_filter, run)
    df = pd.DataFrame(rows, columns=["frame", "time", "src", "dst", "protocol", "length",
                                     "flags", "info", "summary"])
    df.attrs["path"] = str(path)
    return df


def scapy_packets(path: str | os.PathLike, limit: int | None = None) -> list:
    """The TCP packets of a pcap/pcapng file as scapy packets (at most ``limit``).

    scapy's PcapReader reads both formats (it hands pcapng to PcapNgReader); the
    packet's ``.time`` is the capture time stamp in epoch seconds.
    """
    p = _check_capture(path)
    import logging
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    from scapy.layers.inet import TCP
    from scapy.utils import PcapReader

    out = []
    with PcapReader(p) as reader:
        for pkt in reader:
            if TCP in pkt:
                out.append(pkt)
                if limit is not None and len(out) >= limit:
                    break
    return out


