"""Wireshark's and scapy's views of a capture: the TCP expert analysis and summary lines
through pyshark (safe inside a running event loop), and scapy packets."""
from __future__ import annotations

import asyncio
import os
import shutil
import threading
import warnings

from typing import Any, Callable

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


