"""Dissection: a capture file to a pandas DataFrame of TCP segments, and Wireshark's view.

Three ways to look at the same packets, from fastest to richest:

:func:`segments`
    One row per TCP segment, straight from the bytes of a pcap or pcapng file, in
    pure Python + numpy (no tshark): >1M packets/s. The columns match what tshark
    prints for the same packets (stream index, relative seq/ack, scaled window, ...)
    and are checked against tshark frame by frame in ``tests/test_dissect.py``.
:func:`expert` / :func:`with_expert` / :func:`pyshark_summary`
    Wireshark's TCP expert analysis (retransmission, zero window, keep-alive, ...)
    and its summary lines, through pyshark (tshark underneath). Safe inside a running
    event loop (every Jupyter kernel): pyshark runs in a worker thread with its own loop.
:func:`scapy_packets`
    The TCP packets as scapy objects, for per-packet inspection and crafting.

Column schema of :func:`segments` (shared with the plotting code)::

    frame      int    1-based packet number in the file (tshark frame.number; counts
                      non-TCP packets too)
    time       float  epoch seconds;  t: seconds since the file's first packet (any)
    ipv        int    4 or 6
    src, dst   str    numeric addresses (IPv6 compressed, as tshark prints them)
    sport, dport int
    stream     int    0-based conversation index in order of first appearance
                      (tshark tcp.stream, including its port-reuse rule)
    flags      str    "SYN", "SYN+ACK", "PSH+ACK", "FIN+ACK", "RST+ACK", ...
    tcp_flags  int    12-bit flags field (tshark tcp.flags)
    seq_raw, ack_raw  int  header values
    seq, ack   int    relative numbers as Wireshark computes them
    len        int    TCP payload length from the IP length (not the captured length)
    win_raw    int    16-bit window field;  win: tshark tcp.window_size (scaled)
    mss, wscale, tsval, tsecr  Int64 (NA when the option is absent)
    sack_perm  bool

``df.attrs``: ``path``, ``packets`` (packets in the file), ``linktypes`` (link-type
names, one per capture interface), ``truncated`` (True when ``allow_truncated`` dropped
a partial last record).

tshark 4.0 semantics reproduced here (each one is pinned by a test against tshark):

- stream: a SYN without ACK whose seq differs from the base seq already known for its
  direction of the 4-tuple starts a new stream ("TCP Port numbers reused"), whether
  or not the earlier conversation ended with FIN or RST; a retransmitted SYN (same
  seq) stays in its stream.
- seq/ack: a direction's base is its first seq if that segment is a SYN, else first
  seq - 1, unless an earlier ACK from the other side set it to ack - 1 (so a capture
  that starts mid-stream shows seq 1 / ack 1). When the ACK flag is clear, tshark's
  tcp.ack is the raw field (0 on a SYN), so ``ack`` equals ``ack_raw`` there.
- win: SYN and SYN-ACK windows are never scaled. A window scale option sets its
  sender's shift (max 14) from the next segment on; a SYN without the option, or a
  SYN-ACK without it, turns scaling off both ways; a SYN-ACK with it after a SYN
  without it stays unscaled. So with only the SYN captured, the client's windows are
  scaled and the server's are raw; with no handshake at all every window is raw.
- len: IP total (or payload) length minus headers, never the captured length.
- Fragments (never seen on loopback, where TCP sets DF): the TCP header in a first
  fragment is read, later fragments are skipped. tshark differs here: it reassembles
  and shows the segment at the last fragment.
- Simple packet blocks (pcapng SPB) have no time stamp: ``time`` is 0 there (tshark
  prints nothing).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .errors import BadPcapError, MissingToolError

__all__ = ["segments", "expert", "with_expert", "pyshark_summary", "scapy_packets",
           "retransmitted", "retransmissions",
           "LINKTYPES", "EXPERT_LABELS", "COLUMNS"]

COLUMNS = ["frame", "time", "t", "ipv", "src", "dst", "sport", "dport", "stream", "flags",
           "tcp_flags", "seq_raw", "ack_raw", "seq", "ack", "len", "win_raw", "win",
           "mss", "wscale", "tsval", "tsecr", "sack_perm"]

#: Link types segments() reads (number -> name as tcpdump -L prints it).
LINKTYPES = {0: "NULL", 1: "EN10MB", 12: "RAW", 14: "RAW", 101: "RAW", 108: "LOOP",
             113: "LINUX_SLL", 228: "IPV4", 229: "IPV6", 276: "LINUX_SLL2"}
_OTHER_LINKTYPES = {6: "IEEE802_5", 9: "PPP", 50: "PPP_HDLC", 104: "C_HDLC",
                    105: "IEEE802_11", 127: "IEEE802_11_RADIOTAP", 147: "USER0",
                    187: "BLUETOOTH_HCI_H4", 189: "USB_LINUX", 220: "USB_LINUX_MMAPPED",
                    249: "NETLINK", 253: "NETLINK"}

_FLAG_NAMES = [(0x002, "SYN"), (0x001, "FIN"), (0x004, "RST"), (0x008, "PSH"),
               (0x010, "ACK"), (0x020, "URG"), (0x040, "ECE"), (0x080, "CWR"),
               (0x100, "AE")]

_DT_TCP = np.dtype([("sport", ">u2"), ("dport", ">u2"), ("seq", ">u4"), ("ack", ">u4"),
                    ("off", "u1"), ("fl", "u1"), ("win", ">u2")])          # 16 bytes
_DT_IP4 = np.dtype([("vhl", "u1"), ("tos", "u1"), ("len", ">u2"), ("id", ">u2"),
                    ("frag", ">u2"), ("ttl", "u1"), ("proto", "u1"), ("sum", ">u2"),
                    ("src", ">u4"), ("dst", ">u4")])                       # 20 bytes
_DT_IP6 = np.dtype([("vtc", ">u4"), ("plen", ">u2"), ("nh", "u1"), ("hlim", "u1"),
                    ("src", "S16"), ("dst", "S16")])                       # 40 bytes
_PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1",     # little-endian us, ns
                b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")     # big-endian us, ns
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_PAD = 256      # zero bytes after the file so fixed-width gathers never run off the end
_MAX_RECORD = 1 << 26


# ============================================================================ errors
def _fix_rerun() -> str:
    return ("re-run the capture and stop tcpdump with SIGINT (Ctrl-C), not SIGKILL, "
            "so that it writes complete records")


def _kind_of_bad_file(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return "it is gzip-compressed"
    if head[:3] == b"BZh":
        return "it is bzip2-compressed"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "it is zstd-compressed"
    if head[:4] == b"PK\x03\x04":
        return "it is a zip archive"
    if head[:4] in (b"\xa1\xb2\xcd\x34", b"\x34\xcd\xb2\xa1"):
        return "it is a 'modified' (Kuznetzov) pcap, which this reader does not support"
    try:
        text = head.decode("utf-8", errors="ignore")
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return "it looks like text"
    except UnicodeDecodeError:
        pass
    return f"it starts with bytes {head[:8].hex(' ')}"


# ============================================================================ reading
def _load(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The file's bytes followed by _PAD zero bytes (read without an extra copy)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise BadPcapError(f"{p} is a directory, not a capture file",
                               "pass the path of a .pcap or .pcapng file")
        buf = np.empty(size + _PAD, np.uint8)        # no zero-fill of the whole file
        buf[size:] = 0
        with open(p, "rb", buffering=0) as f:
            got = 0
            mv = memoryview(buf)
            while got < size:
                k = f.readinto(mv[got:size])
                if not k:
                    break
                got += k
            mv.release()
    except FileNotFoundError:
        raise BadPcapError(f"capture file {p} does not exist",
                           "check the path (captures are written where capture() "
                           "said; replayed ones live in pcaps/)") from None
    except PermissionError:
        raise BadPcapError(f"capture file {p} is not readable by this user",
                           f"tcpdump running as root wrote it: `sudo chmod a+r {p}`") from None
    if got != size:
        raise BadPcapError(f"{p} changed size while being read", "read it again when "
                           "the capture has stopped")
    if size == 0:
        raise BadPcapError(f"{p} is empty (0 bytes): the capture wrote nothing, not even "
                           "its file header", "make sure tcpdump started (wait for "
                           "'listening on') and was stopped with SIGINT; then re-run")
    return buf, size


class _Records:
    """Per-packet arrays of a capture file, in file order."""
    __slots__ = ("off", "caplen", "origlen", "sec", "frac", "units", "iface",
                 "linktypes", "count", "truncated", "fmt", "lt")

    def __init__(self):
        self.truncated = False


def _u32(u8: np.ndarray, idx: np.ndarray, big) -> np.ndarray:
    """Gather unsigned 32-bit ints at byte offsets idx (int64 result); big is a bool or
    a per-row bool array."""
    b0 = u8[idx].astype(np.int64)
    b1 = u8[idx + 1].astype(np.int64)
    b2 = u8[idx + 2].astype(np.int64)
    b3 = u8[idx + 3].astype(np.int64)
    if big is True:
        return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3
    le = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)
    if big is False:
        return le
    return np.where(big, (b0 << 24) | (b1 << 16) | (b2 << 8) | b3, le)


def _u16(u8: np.ndarray, idx: np.ndarray, big) -> np.ndarray:
    b0 = u8[idx].astype(np.int64)
    b1 = u8[idx + 1].astype(np.int64)
    if big is True:
        return (b0 << 8) | b1
    le = b0 | (b1 << 8)
    if big is False:
        return le
    return np.where(big, (b0 << 8) | b1, le)


def _gather(u8: np.ndarray, idx: np.ndarray, dt: np.dtype) -> np.ndarray:
    """Rows of dt.itemsize bytes starting at idx, viewed as the structured dtype dt."""
    if len(idx) == 0:
        return np.zeros(0, dt)
    w = np.lib.stride_tricks.sliding_window_view(u8, dt.itemsize)[idx]
    return w.view(dt)[:, 0]


def _truncated(path, rec: _Records, frame: int, present: int, needed: int,
               allow: bool, what: str = "packet", unit: str = "bytes") -> None:
    if allow:
        rec.truncated = True
        return
    raise BadPcapError(
        f"{path}: file ends in the middle of {what} {frame} ({present} of {needed} {unit} "
        f"present); the capture was cut off (tcpdump killed, or the disk filled)",
        f"{_fix_rerun()}, or pass allow_truncated=True to keep the {frame - 1} complete "
        "packets")


def _read_pcap(path, buf: np.ndarray, size: int, allow: bool) -> _Records:
    magic = bytes(buf[:4])
    big = magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    if size < 24:
        raise BadPcapError(f"{path}: file ends inside the 24-byte pcap file header "
                           f"({size} bytes)", _fix_rerun())
    e = ">" if big else "<"
    _, _, _, _, snaplen, network = struct.unpack_from(e + "HHiIII", buf, 4)
    linktype = network & 0xFFFF
    rec = _Records()
    rec.fmt = "pcap-ns" if nano else "pcap"
    rec.linktypes = [linktype]
    unpack = struct.Struct(e + "I").unpack_from
    # the hot loop: one unpack per record; struct.error ends it at the end of the file
    view = memoryview(buf)[:size]
    caplen_at = struct.Struct(e + "8xI").unpack_from
    offs: list[int] = [24]
    app = offs.append
    off = 24
    try:
        while True:
            off += 16 + caplen_at(view, off)[0]
            app(off)
    except struct.error:
        pass
    view.release()
    end = offs.pop()                 # the first offset where no record header fits
    if end != size:
        limit = max(snaplen, 262144)
        if end < size:               # a partial record header at the end
            _truncated(path, rec, len(offs) + 1, size - end, 16, allow,
                       unit="bytes of its 16-byte record header")
        else:                        # the last record's data is cut
            start = offs.pop()
            caplen = unpack(buf, start + 8)[0]
            if caplen > limit:
                raise BadPcapError(f"{path}: packet {len(offs) + 1} claims {caplen} captured "
                                   f"bytes (snap length {snaplen}): the file is corrupt",
                                   _fix_rerun())
            _truncated(path, rec, len(offs) + 1, size - start, 16 + caplen, allow)
    u8 = buf
    ro = np.array(offs, dtype=np.int64)
    hdr = np.lib.stride_tricks.sliding_window_view(u8, 16)[ro].view(e + "u4")
    rec.sec = hdr[:, 0].astype(np.int64)
    rec.frac = hdr[:, 1].astype(np.int64)
    rec.caplen = hdr[:, 2].astype(np.int64)
    rec.origlen = hdr[:, 3].astype(np.int64)
    bad = np.flatnonzero(rec.caplen > max(snaplen, 262144))
    if len(bad):
        raise BadPcapError(f"{path}: packet {bad[0] + 1} claims {rec.caplen[bad[0]]} "
                           f"captured bytes (snap length {snaplen}): the file is corrupt",
                           _fix_rerun())
    rec.off = ro + 16
    rec.units = np.int64(10 ** 9 if nano else 10 ** 6)
    rec.iface = None
    rec.lt = np.full(len(ro), linktype, dtype=np.int64) if len(ro) else np.zeros(0, np.int64)
    rec.count = len(ro)
    return rec


def _parse_idb(buf, off: int, blen: int, e: str) -> tuple[int, int, int, int]:
    """(linktype, snaplen, units per second, offset seconds) of an IDB."""
    linktype, _, snaplen = struct.unpack_from(e + "HHI", buf, off + 8)
    units, tsoff = 10 ** 6, 0
    p, end = off + 16, off + blen - 4
    while p + 4 <= end:
        code, ln = struct.unpack_from(e + "HH", buf, p)
        if code == 0:
            break
        if code == 9 and ln >= 1:                       # if_tsresol
            v = int(buf[p + 4])
            units = 2 ** (v & 0x7F) if v & 0x80 else 10 ** v
        elif code == 14 and ln >= 8:                    # if_tsoffset
            tsoff = struct.unpack_from(e + "q", buf, p + 4)[0]
        p += 4 + ((ln + 3) & ~3)
    return linktype, snaplen, units, tsoff


def _read_pcapng(path, buf: np.ndarray, size: int, allow: bool) -> _Records:
    rec = _Records()
    rec.fmt = "pcapng"
    ifaces: list[tuple[int, int, int, int]] = []     # global interface table
    offs: list[int] = []                             # offsets of packet blocks
    app = offs.append
    odd: dict[int, int] = {}                         # packet index -> block type (SPB/PB)
    sections: list[tuple[int, bool, int]] = []       # (first packet, big endian, iface base)
    le2 = struct.Struct("<II").unpack_from
    be2 = struct.Struct(">II").unpack_from
    un2 = le2
    big = False
    base = 0
    off = 0
    view = memoryview(buf)[:size]
    while off < size:
        # the hot loop: runs of enhanced packet blocks, one unpack per packet
        try:
            while True:
                btype, blen = un2(view, off)
                if btype != 6 or blen < 32:
                    break
                app(off)
                off += blen
        except struct.error:                         # fewer than 8 bytes left
            pass
        if off >= size:
            break
        if off + 12 > size:
            _truncated(path, rec, len(offs) + 1, size - off, 12, allow, "the block after packet")
            break
        btype, blen = un2(buf, off)
        if btype == 0x0A0D0D0A:                      # section header: sets byte order
            bom = bytes(buf[off + 8:off + 12])
            if bom == b"\x4d\x3c\x2b\x1a":
                big, un2 = False, le2
            elif bom == b"\x1a\x2b\x3c\x4d":
                big, un2 = True, be2
            else:
                raise BadPcapError(f"{path}: pcapng section header at byte {off} has a bad "
                                   "byte-order magic: the file is corrupt", _fix_rerun())
            btype, blen = un2(buf, off)
            base = len(ifaces)
            sections.append((len(offs), big, base))
        elif not sections:
            raise BadPcapError(f"{path}: pcapng file does not start with a section header",
                               _fix_rerun())
        if blen < 12 or blen % 4 or blen > _MAX_RECORD or (btype == 6 and blen < 32):
            raise BadPcapError(f"{path}: pcapng block at byte {off} has an impossible length "
                               f"{blen}: the file is corrupt", _fix_rerun())
        if off + blen > size:
            what = "packet" if btype in (6, 3, 2) else "the block after packet"
            _truncated(path, rec, len(offs) + 1, size - off, blen, allow, what)
            off = size
            break
        if btype == 1:
            ifaces.append(_parse_idb(buf, off, blen, ">" if big else "<"))
        elif btype == 3 or btype == 2:
            odd[len(offs)] = btype
            app(off)
        off += blen
    view.release()
    if off > size:                                   # the last enhanced packet block is cut
        start = offs.pop()
        blen = un2(buf, start)[1]
        _truncated(path, rec, len(offs) + 1, size - start, blen, allow)
    n = len(offs)
    rec.count = n
    rec.linktypes = [i[0] for i in ifaces]
    u8 = buf
    bo = np.array(offs, dtype=np.int64)
    if len(sections) <= 1:
        bigmask = sections[0][1] if sections else False
        ifbase = np.int64(sections[0][2] if sections else 0)
    else:
        starts = np.array([s[0] for s in sections])
        which = np.searchsorted(starts, np.arange(n), side="right") - 1
        bigmask = np.array([s[1] for s in sections])[which]
        ifbase = np.array([s[2] for s in sections], dtype=np.int64)[which]
        if not bigmask.any():
            bigmask = False
        elif bigmask.all():
            bigmask = True
    # one gather of the 28-byte enhanced packet block header per packet
    raw = np.lib.stride_tricks.sliding_window_view(u8, 28)[bo]
    h = raw.view("<u4") if bigmask is False else raw.view(">u4")
    if not isinstance(bigmask, bool):
        h = np.where(bigmask[:, None], raw.view(">u4"), raw.view("<u4"))
    h = h.astype(np.int64)
    blocklen, iface, ts_hi, ts_lo = h[:, 1], h[:, 2], h[:, 3], h[:, 4]
    caplen, origlen = h[:, 5].copy(), h[:, 6].copy()
    iface = iface.copy()
    data = bo + 28
    if odd:
        idx = np.fromiter(odd.keys(), dtype=np.int64, count=len(odd))
        kinds = np.fromiter(odd.values(), dtype=np.int64, count=len(odd))
        bm = bigmask if isinstance(bigmask, bool) else bigmask[idx]
        spb = idx[kinds == 3]
        if len(spb):                                  # simple packet block
            bms = bm if isinstance(bm, bool) else bm[kinds == 3]
            ol = _u32(u8, bo[spb] + 8, bms)
            blen = _u32(u8, bo[spb] + 4, bms)
            origlen[spb] = ol
            caplen[spb] = np.minimum(ol, blen - 16)       # clipped to the snap length below
            iface[spb] = 0
            ts_hi = ts_hi.copy()
            ts_lo = ts_lo.copy()
            ts_hi[spb] = 0
            ts_lo[spb] = 0
            data[spb] = bo[spb] + 12
        pb = idx[kinds == 2]
        if len(pb):                                   # obsolete packet block
            bmp = bm if isinstance(bm, bool) else bm[kinds == 2]
            iface[pb] = _u16(u8, bo[pb] + 8, bmp)
    iface = iface + ifbase
    if odd and n and len(ifaces):
        spb = np.fromiter((k for k, v in odd.items() if v == 3), dtype=np.int64)
        if len(spb):
            snap = np.array([i[1] if i[1] else _MAX_RECORD for i in ifaces], np.int64)
            caplen[spb] = np.minimum(caplen[spb], snap[np.minimum(iface[spb], len(ifaces) - 1)])
    if n and (iface.max() >= len(ifaces)):
        k = int(np.flatnonzero(iface >= len(ifaces))[0])
        raise BadPcapError(f"{path}: packet {k + 1} refers to interface {iface[k]} but the "
                           f"file describes only {len(ifaces)}: the file is corrupt",
                           _fix_rerun())
    odd_len = np.flatnonzero((blocklen % 4) != 0)
    if len(odd_len):
        k = int(odd_len[0])
        raise BadPcapError(f"{path}: pcapng block of packet {k + 1} has an impossible length "
                           f"{blocklen[k]}: the file is corrupt", _fix_rerun())
    room = blocklen - (data - bo) - 4
    bad = np.flatnonzero(caplen > room)
    if len(bad):
        raise BadPcapError(f"{path}: packet {bad[0] + 1} claims {caplen[bad[0]]} bytes but its "
                           "block is shorter: the file is corrupt", _fix_rerun())
    lt_tab = np.array([i[0] for i in ifaces], dtype=np.int64)
    units_tab = np.array([i[2] for i in ifaces], dtype=np.int64)
    tsoff_tab = np.array([i[3] for i in ifaces], dtype=np.int64)
    ts = (ts_hi << 32) | ts_lo
    if n:
        units = units_tab[iface]
        rec.sec = ts // units + tsoff_tab[iface]
        rec.frac = ts % units
        rec.units = units
        rec.lt = lt_tab[iface]
    else:
        rec.sec = rec.frac = rec.lt = np.zeros(0, np.int64)
        rec.units = np.int64(10 ** 6)
    rec.off, rec.caplen, rec.origlen, rec.iface = data, caplen, origlen, iface
    return rec


def _records(path, buf: np.ndarray, size: int, allow: bool) -> _Records:
    magic = bytes(buf[:4])
    if magic in _PCAP_MAGICS:
        return _read_pcap(path, buf, size, allow)
    if magic == _PCAPNG_MAGIC:
        return _read_pcapng(path, buf, size, allow)
    kind = _kind_of_bad_file(bytes(buf[:min(size, 64)]))
    fix = "pass a capture written by tcpdump -w (pcap) or tshark/dumpcap (pcapng)"
    if "gzip" in kind:
        fix = f"decompress it first: `gunzip -k {path}` (or `zcat` it to a new .pcap)"
    elif "compressed" in kind:
        fix = "decompress it first, then pass the .pcap inside"
    raise BadPcapError(f"{path} is not a pcap or pcapng capture file: {kind}", fix)


# ============================================================================ dissection
class _Seg:
    """TCP rows found in the records (columns as numpy arrays)."""


def _link_layer(u8, rec: _Records, path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(packet index, layer-3 offset, IP version) of packets that carry IPv4/IPv6."""
    po, cl, lt = rec.off, rec.caplen, rec.lt
    known = sorted(set(rec.linktypes))
    if len(lt) == 0:
        present = []
    elif len(known) == 1:
        present = known
    else:
        present = sorted(set(pd.unique(lt).tolist()))
    for code in present:
        if int(code) not in LINKTYPES:
            name = _OTHER_LINKTYPES.get(int(code), f"LINKTYPE_{int(code)}")
            raise BadPcapError(
                f"{path}: link type {int(code)} ({name}) is not supported (this reader "
                "knows EN10MB, LINUX_SLL, LINUX_SLL2, NULL, LOOP, RAW, IPV4, IPV6)",
                "capture on the loopback or 'any' interface (`tcpdump -i lo` or `-i any`), "
                "or read it with tshark/pyshark")
    out_i, out_l3, out_v = [], [], []
    for code in present:
        code = int(code)
        sel = np.flatnonzero(lt == code) if len(present) > 1 else np.arange(len(lt))
        p, c = po[sel], cl[sel]
        if code in (1, 113, 276):
            hl = {1: 14, 113: 16, 276: 20}[code]
            ok = c >= hl
            sel, p, c = sel[ok], p[ok], c[ok]
            et = _u16(u8, p + (12 if code == 1 else 14 if code == 113 else 0), True)
            l3 = p + hl
            for _ in range(2):                         # 802.1Q / 802.1ad tags
                tag = ((et == 0x8100) | (et == 0x88A8) | (et == 0x9100)) & (l3 + 4 <= p + c)
                if not tag.any():
                    break
                et = et.copy()
                et[tag] = _u16(u8, l3[tag] + 2, True)
                l3 = np.where(tag, l3 + 4, l3)
            v = np.where(et == 0x0800, 4, np.where(et == 0x86DD, 6, 0))
        elif code in (0, 108):
            ok = c >= 5
            sel, p, c = sel[ok], p[ok], c[ok]
            af = _u32(u8, p, True if code == 108 else False)
            if code == 0:                              # host byte order of the writer
                sw = af > 0xFFFF
                if sw.any():
                    af = np.where(sw, _u32(u8, p, True), af)
            # BSD address families as Wireshark knows them: 2 = INET; 24, 28, 30 = INET6
            # (Linux's AF_INET6 = 10 never appears in DLT_NULL files, nor does tshark)
            v = np.where(af == 2, 4, np.where(np.isin(af, (24, 28, 30)), 6, 0))
            l3 = p + 4
        else:                                          # raw IP
            ok = c >= 1
            sel, p, c = sel[ok], p[ok], c[ok]
            v = u8[p].astype(np.int64) >> 4
            if code == 228:
                v = np.where(v == 4, 4, 0)
            elif code == 229:
                v = np.where(v == 6, 6, 0)
            else:
                v = np.where((v == 4) | (v == 6), v, 0)
            l3 = p
        # the IP version nibble must agree with the link layer's protocol field
        has = (l3 < p + c)
        nib = np.where(has, u8[np.minimum(l3, len(u8) - 1)] >> 4, 0)
        keep = (v != 0) & has & (nib == v)
        out_i.append(sel[keep])
        out_l3.append(l3[keep])
        out_v.append(v[keep])
    if not out_i:
        z = np.zeros(0, np.int64)
        return z, z, z
    i = np.concatenate(out_i)
    l3 = np.concatenate(out_l3)
    v = np.concatenate(out_v)
    if len(out_i) > 1:
        o = np.argsort(i, kind="stable")
        i, l3, v = i[o], l3[o], v[o]
    return i, l3, v


def _ip_layer(u8, rec: _Records, i, l3, v):
    """IPv4/IPv6 -> TCP: (packet index, tcp offset, tcp bytes per IP, ipv, src, dst)."""
    end = rec.off[i] + rec.caplen[i]
    res = []
    # ---- IPv4
    m = np.flatnonzero((v == 4) & (l3 + 20 <= end))
    if len(m):
        h = _gather(u8, l3[m], _DT_IP4)
        ihl = (h["vhl"] & 0x0F).astype(np.int64) * 4
        tot = h["len"].astype(np.int64)
        ok = (h["proto"] == 6) & (ihl >= 20) & ((h["frag"] & 0x1FFF) == 0)
        tcp = l3[m] + ihl
        ok &= tcp + 20 <= end[m]
        # tcp.len uses the IP total length; 0 means "TSO, see frame length" to tshark
        tot = np.where(tot == 0, rec.origlen[i[m]] - (l3[m] - rec.off[i[m]]), tot)
        k = m[ok]
        res.append((i[k], tcp[ok], (tot - ihl)[ok], np.full(len(k), 4), h["src"][ok],
                    h["dst"][ok]))
    # ---- IPv6
    m = np.flatnonzero((v == 6) & (l3 + 40 <= end))
    if len(m):
        h = _gather(u8, l3[m], _DT_IP6)
        nh = h["nh"].astype(np.int64)
        pos = l3[m] + 40
        e = end[m]
        alive = np.ones(len(m), bool)
        for _ in range(12):                            # extension headers
            ext = alive & np.isin(nh, (0, 43, 60, 44, 51, 135, 139, 140))
            if not ext.any():
                break
            x = np.flatnonzero(ext)
            short = pos[x] + 8 > e[x]
            alive[x[short]] = False
            x = x[~short]
            px = pos[x]
            kind = nh[x]
            nxt = u8[px].astype(np.int64)
            ln = u8[px + 1].astype(np.int64)
            size = np.where(kind == 44, 8, np.where(kind == 51, (ln + 2) * 4, (ln + 1) * 8))
            frag_later = (kind == 44) & ((_u16(u8, px + 2, True) >> 3) != 0)
            alive[x[frag_later]] = False
            nh[x] = nxt
            pos[x] = px + size
        ok = alive & (nh == 6) & (pos + 20 <= e)
        plen = h["plen"].astype(np.int64)
        plen = np.where(plen == 0, rec.origlen[i[m]] - (l3[m] - rec.off[i[m]]) - 40, plen)
        tcp_total = plen - (pos - l3[m] - 40)
        k = m[ok]
        res.append((i[k], pos[ok], tcp_total[ok], np.full(len(k), 6), h["src"][ok],
                    h["dst"][ok]))
    return res


def _options(u8, seg) -> None:
    """MSS, window scale, SACK permitted, timestamps: fixed Linux layouts fast, rest walked."""
    n = len(seg.tcp)
    mss = np.zeros(n, np.int64)
    mss_ok = np.zeros(n, bool)
    ws = np.zeros(n, np.int64)
    ws_ok = np.zeros(n, bool)
    sp = np.zeros(n, bool)
    tsv = np.zeros(n, np.int64)
    tse = np.zeros(n, np.int64)
    ts_ok = np.zeros(n, bool)
    opt_end = np.minimum(seg.tcp + seg.hlen, seg.end)
    todo = np.flatnonzero(seg.hlen > 20)
    # fast path 1: NOP NOP TS (every Linux segment after the handshake)
    f = todo[(seg.hlen[todo] == 32) & (opt_end[todo] == seg.tcp[todo] + 32)]
    if len(f):
        b = np.lib.stride_tricks.sliding_window_view(u8, 12)[seg.tcp[f] + 20]
        hit = (b[:, 0] == 1) & (b[:, 1] == 1) & (b[:, 2] == 8) & (b[:, 3] == 10)
        allhit = bool(hit.all())
        fh = f if allhit else f[hit]
        v = (b if allhit else b[hit]).view(">u4")
        tsv[fh] = v[:, 1]
        tse[fh] = v[:, 2]
        ts_ok[fh] = True
        if allhit and len(f) == len(todo):
            todo = todo[:0]
        else:
            done = np.zeros(n, bool)
            done[fh] = True
            todo = todo[~done[todo]]
    # fast path 2: Linux SYN / SYN-ACK: MSS, SACK_PERM, TS, NOP, WS
    f = todo[(seg.hlen[todo] == 40) & (opt_end[todo] == seg.tcp[todo] + 40)]
    if len(f):
        b = np.lib.stride_tricks.sliding_window_view(u8, 20)[seg.tcp[f] + 20]
        hit = ((b[:, 0] == 2) & (b[:, 1] == 4) & (b[:, 4] == 4) & (b[:, 5] == 2)
               & (b[:, 6] == 8) & (b[:, 7] == 10) & (b[:, 16] == 1) & (b[:, 17] == 3)
               & (b[:, 18] == 3))
        fh = f[hit]
        bh = b[hit]
        mss[fh] = (bh[:, 2].astype(np.int64) << 8) | bh[:, 3]
        mss_ok[fh] = sp[fh] = ts_ok[fh] = ws_ok[fh] = True
        v = bh[:, 8:16].copy().view(">u4")
        tsv[fh] = v[:, 0]
        tse[fh] = v[:, 1]
        ws[fh] = bh[:, 19]
        done = np.zeros(n, bool)
        done[fh] = True
        todo = todo[~done[todo]]
    # general case: walk the option lists of all remaining rows together
    if len(todo):
        rows = todo
        pos = seg.tcp[rows] + 20
        end = opt_end[rows]
        for _ in range(40):
            live = pos < end
            rows, pos, end = rows[live], pos[live], end[live]
            if not len(rows):
                break
            kind = u8[pos]
            nop = kind == 1
            eol = kind == 0
            ln = u8[pos + 1].astype(np.int64)
            bad = ~nop & ~eol & ((ln < 2) | (pos + ln > end))
            stop = eol | bad
            for k_, l_, tgt in ((2, 4, "mss"), (3, 3, "ws"), (4, 2, "sp"), (8, 10, "ts")):
                h = np.flatnonzero((kind == k_) & (ln == l_) & ~stop)
                if not len(h):
                    continue
                r, p = rows[h], pos[h]
                if tgt == "mss":
                    mss[r] = _u16(u8, p + 2, True)
                    mss_ok[r] = True
                elif tgt == "ws":
                    ws[r] = u8[p + 2]
                    ws_ok[r] = True
                elif tgt == "sp":
                    sp[r] = True
                else:
                    tsv[r] = _u32(u8, p + 2, True)
                    tse[r] = _u32(u8, p + 6, True)
                    ts_ok[r] = True
            step = np.where(nop, 1, ln)
            keep = ~stop
            rows, pos, end = rows[keep], (pos + step)[keep], end[keep]
    seg.mss, seg.mss_ok, seg.ws, seg.ws_ok = mss, mss_ok, ws, ws_ok
    seg.sack_perm, seg.tsval, seg.tsecr, seg.ts_ok = sp, tsv, tse, ts_ok


def _first_index(codes: np.ndarray, ncodes: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Row (rows[i], default i) of the first occurrence of each code in 0..ncodes-1;
    int64 max where a code does not occur."""
    first = np.full(ncodes, np.iinfo(np.int64).max, dtype=np.int64)
    if len(codes):
        c, uniq = pd.factorize(codes)              # c counts up in order of appearance
        new = np.empty(len(c), bool)
        new[0] = True
        np.greater(c[1:], np.maximum.accumulate(c)[:-1], out=new[1:])
        pos = np.flatnonzero(new)
        first[uniq] = pos if rows is None else rows[pos]
    return first


def _streams(seg) -> None:
    """tcp.stream (with tshark's port-reuse rule), relative seq/ack, scaled window."""
    n = len(seg.sport)
    flags = seg.tcp_flags
    syn = (flags & 0x002) != 0
    ackf = (flags & 0x010) != 0
    ep_s = seg.src_id * 65536 + seg.sport
    ep_d = seg.dst_id * 65536 + seg.dport
    codes, uniq = pd.factorize(np.concatenate([ep_s, ep_d]))
    cs, cd = codes[:n].astype(np.int64), codes[n:].astype(np.int64)
    lo, hi = np.minimum(cs, cd), np.maximum(cs, cd)
    conv, cu = pd.factorize(lo * max(len(uniq), 1) + hi)
    conv = conv.astype(np.int64)
    nconv = len(cu)
    d = (cs > cd).astype(np.int64)                   # direction within the conversation
    seq, ack = seg.seq_raw, seg.ack_raw

    # --- port reuse: a SYN (no ACK) whose seq differs from its direction's base seq
    stream = conv
    syn_only = syn & ~ackf
    first_conv = _first_index(conv, nconv)
    cand = np.flatnonzero(syn_only & (first_conv[conv] < np.arange(n)))
    if len(cand):
        stream = _split_reused(conv, d, flags, seq, ack, cand, n)
    nstream = int(stream.max()) + 1 if n else 0
    seg.stream = stream

    # --- relative numbers: per (stream, direction) base sequence number
    g = stream * 2 + d
    grev = stream * 2 + (1 - d)
    ng = 2 * nstream
    own_first = _first_index(g, ng)
    ack_rows = np.flatnonzero(ackf)
    rev_first = _first_index(grev[ack_rows], ng, ack_rows)
    big = np.iinfo(np.int64).max
    base = np.zeros(ng, np.int64)
    use_own = (own_first < rev_first) & (own_first != big)
    oi = own_first[use_own]
    base[use_own] = np.where(syn[oi], seq[oi], seq[oi] - 1)
    use_rev = ~use_own & (rev_first != big)
    ri = rev_first[use_rev]
    base[use_rev] = ack[ri] - 1
    seg.seq = (seq - base[g]) & 0xFFFFFFFF
    seg.ack = np.where(ackf, (ack - base[grev]) & 0xFFFFFFFF, ack)

    # --- window scaling, replayed over SYN / SYN-ACK segments as Wireshark does
    # Per direction: -1 unknown, -2 "not used", else the shift (capped at 14). A window
    # scale option sets the sender's shift (on any segment); then on SYN and SYN-ACK:
    # no shift known for the sender -> not used both ways; a SYN-ACK with one whose
    # SYN had none -> not used. A segment's window uses the state before it.
    seg.win = seg.win_raw.copy()
    ws, ws_ok = seg.ws, seg.ws_ok
    ev = np.flatnonzero(syn | ws_ok)
    if not len(ev):
        return
    state: dict[int, list[int]] = {}
    ev_rows, ev_shift0, ev_shift1 = [], [], []
    for r in ev.tolist():
        s = int(stream[r])
        st = state.setdefault(s, [-1, -1])
        fwd = int(d[r])
        if ws_ok[r]:
            st[fwd] = min(int(ws[r]), 14)
        if flags[r] & 0x002:
            if st[fwd] == -1:
                st[0] = st[1] = -2
            elif (flags[r] & 0x010) and st[1 - fwd] == -2:
                st[fwd] = -2
        ev_rows.append(r)
        ev_shift0.append(st[0])
        ev_shift1.append(st[1])
    ev_rows_a = np.array(ev_rows, dtype=np.int64)
    ev_stream = stream[ev_rows_a]
    order = np.lexsort((ev_rows_a, ev_stream))
    keys = ev_stream[order] * (n + 1) + ev_rows_a[order]
    sh = np.stack([np.array(ev_shift0)[order], np.array(ev_shift1)[order]], axis=1)
    rowkeys = stream * (n + 1) + np.arange(n)
    j = np.searchsorted(keys, rowkeys, side="left") - 1     # last event before the row
    valid = (j >= 0) & ~syn
    jj = np.where(valid, j, 0)
    valid &= ev_stream[order][jj] == stream
    shift = np.where(valid, sh[jj, d], -1)
    scaled = valid & (shift >= 0)
    seg.win = np.where(scaled, seg.win_raw << np.maximum(shift, 0), seg.win_raw)


def _split_reused(conv, d, flags, seq, ack, cand, n) -> np.ndarray:
    """New stream index where a SYN reuses a 4-tuple with a different initial seq."""
    order = np.argsort(conv, kind="stable")
    sc = conv[order]
    bounds = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1], True])
    starts = {int(sc[bounds[k]]): (bounds[k], bounds[k + 1]) for k in range(len(bounds) - 1)}
    ackf = (flags & 0x010) != 0
    syn = (flags & 0x002) != 0
    splits: list[int] = []
    by_conv: dict[int, list[int]] = {}
    for r in cand.tolist():
        by_conv.setdefault(int(conv[r]), []).append(r)
    for c, rs in by_conv.items():
        a, b = starts[c]
        rows = order[a:b]                               # ascending (stable sort)
        rd = d[rows]
        own = {0: rows[rd == 0], 1: rows[rd == 1]}
        revack = {0: rows[(rd == 1) & ackf[rows]], 1: rows[(rd == 0) & ackf[rows]]}
        seg_start = int(rows[0])
        for r in rs:
            dr = int(d[r])
            o, q = own[dr], revack[dr]
            io = np.searchsorted(o, seg_start)
            iq = np.searchsorted(q, seg_start)
            ro = int(o[io]) if io < len(o) and o[io] < r else None
            rq = int(q[iq]) if iq < len(q) and q[iq] < r else None
            if ro is None and rq is None:
                continue                               # base not set yet: same stream
            if ro is not None and (rq is None or ro < rq):
                basev = int(seq[ro]) if syn[ro] else (int(seq[ro]) - 1) & 0xFFFFFFFF
            else:
                basev = (int(ack[rq]) - 1) & 0xFFFFFFFF
            if int(seq[r]) != basev:
                splits.append(r)
                seg_start = r
    if not splits:
        return conv
    sub = np.zeros(n, np.int64)
    sp = np.array(sorted(splits), dtype=np.int64)
    for c in np.unique(conv[sp]).tolist():
        a, b = starts[c]
        rows = order[a:b]
        cs = sp[conv[sp] == c]
        sub[rows] = np.searchsorted(cs, rows, side="right")
    key = conv * (int(sub.max()) + 1) + sub
    out, _ = pd.factorize(key)
    return out.astype(np.int64)


def _addresses(seg) -> None:
    """src/dst strings and integer ids (shared by IPv4 and IPv6) for the stream key."""
    n = len(seg.sport)
    src_id = np.zeros(n, np.int64)
    dst_id = np.zeros(n, np.int64)
    src = np.empty(n, dtype=object)
    dst = np.empty(n, dtype=object)
    v4 = seg.ipv == 4
    if v4.any():
        a = np.concatenate([seg.s4, seg.d4])
        inv, u = pd.factorize(a)
        names = np.array([socket.inet_ntoa(int(x).to_bytes(4, "big")) for x in u.tolist()],
                         dtype=object)
        k = len(seg.s4)
        src[v4] = names[inv[:k]]
        dst[v4] = names[inv[k:]]
        src_id[v4] = u[inv[:k]]
        dst_id[v4] = u[inv[k:]]
    v6 = ~v4
    if v6.any():
        a = np.concatenate([seg.s6, seg.d6])
        inv, u = _factorize16(a)
        names = np.array([socket.inet_ntop(socket.AF_INET6, bytes(x).ljust(16, b"\0"))
                          for x in u.tolist()], dtype=object)
        k = len(seg.s6)
        src[v6] = names[inv[:k]]
        dst[v6] = names[inv[k:]]
        src_id[v6] = (1 << 32) + inv[:k]
        dst_id[v6] = (1 << 32) + inv[k:]
    seg.src, seg.dst, seg.src_id, seg.dst_id = src, dst, src_id, dst_id


def _factorize16(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pd.factorize for 16-byte addresses (codes in order of first appearance)."""
    w = np.ascontiguousarray(a).view("<u8").reshape(-1, 2)
    c0, u0 = pd.factorize(w[:, 0])
    c1, u1 = pd.factorize(w[:, 1])
    codes, ukeys = pd.factorize(c0.astype(np.int64) * max(len(u1), 1) + c1)
    first = np.empty(len(ukeys), np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)
    return codes, a[first]


_FLAG_TABLE: np.ndarray | None = None


def _flag_names(flags: np.ndarray) -> np.ndarray:
    global _FLAG_TABLE
    if _FLAG_TABLE is None:
        tab = np.empty(4096, dtype=object)
        for v in range(4096):
            tab[v] = "+".join(name for bit, name in _FLAG_NAMES if v & bit)
        _FLAG_TABLE = tab
    return _FLAG_TABLE[flags]


def segments(path: str | os.PathLike, *, allow_truncated: bool = False) -> pd.DataFrame:
    """One row per TCP segment of a pcap/pcapng file, in file order (see module doc).

    Reads classic pcap (both byte orders, µs and ns) and pcapng (SHB/IDB/EPB/SPB, per
    interface link type and time resolution); link types EN10MB, LINUX_SLL,
    LINUX_SLL2, NULL, LOOP, RAW, IPV4, IPV6; IPv4 and IPv6 (extension headers
    skipped), 802.1Q tags. Raises :class:`~helpers.errors.BadPcapError` for a missing,
    empty, corrupt or cut-off file; ``allow_truncated=True`` keeps the complete packets
    of a file whose last record is cut (and sets ``df.attrs["truncated"]``).
    """
    buf, size = _load(path)
    rec = _records(path, buf, size, allow_truncated)
    u8 = buf
    i, l3, v = _link_layer(u8, rec, path)
    parts = _ip_layer(u8, rec, i, l3, v)
    seg = _Seg()
    z = np.zeros(0, np.int64)
    seg.s4 = seg.d4 = np.zeros(0, np.uint32)
    seg.s6 = seg.d6 = np.zeros(0, "S16")
    if parts:
        cols = list(zip(*parts))
        pk = np.concatenate(cols[0])
        # each part is in file order already; merging them keeps each family's order
        order = np.argsort(pk, kind="stable") if len(parts) > 1 else slice(None)
        seg.pkt = pk[order]
        seg.tcp = np.concatenate(cols[1])[order]
        seg.tcp_total = np.concatenate(cols[2])[order]
        seg.ipv = np.concatenate(cols[3])[order].astype(np.int64)
        for p in parts:
            if p[3].size and p[3][0] == 4:
                seg.s4, seg.d4 = p[4], p[5]
            elif p[3].size:
                seg.s6, seg.d6 = p[4], p[5]
    else:
        seg.pkt = seg.tcp = seg.tcp_total = seg.ipv = z
    seg.end = rec.off[seg.pkt] + rec.caplen[seg.pkt]
    th = _gather(u8, seg.tcp, _DT_TCP)
    seg.sport = th["sport"].astype(np.int64)
    seg.dport = th["dport"].astype(np.int64)
    seg.seq_raw = th["seq"].astype(np.int64)
    seg.ack_raw = th["ack"].astype(np.int64)
    off = th["off"].astype(np.int64)
    seg.hlen = (off >> 4) * 4
    seg.tcp_flags = ((off & 0x0F) << 8) | th["fl"]
    seg.win_raw = th["win"].astype(np.int64)
    seg.len = np.maximum(seg.tcp_total - seg.hlen, 0)
    _options(u8, seg)
    _addresses(seg)
    _streams(seg)

    n = len(seg.pkt)
    # time: integer seconds and fractions kept apart until the end for precision
    units = rec.units
    if rec.count:
        sec, frac = rec.sec, rec.frac
        u_all = units if np.ndim(units) else np.full(rec.count, units)
        t_all = (sec - sec[0]).astype(np.float64) + (frac / u_all - frac[0] / u_all[0])
        ps = seg.pkt
        time = sec[ps].astype(np.float64) + frac[ps] / u_all[ps]
        t = t_all[ps]
    else:
        time = t = np.zeros(0)

    def nullable(values, ok):
        return pd.arrays.IntegerArray(values.astype(np.int64), ~ok)

    df = pd.DataFrame({
        "frame": seg.pkt + 1,
        "time": time,
        "t": t,
        "ipv": seg.ipv,
        "src": pd.array(seg.src, dtype="str") if n else pd.array([], dtype="str"),
        "dst": pd.array(seg.dst, dtype="str") if n else pd.array([], dtype="str"),
        "sport": seg.sport,
        "dport": seg.dport,
        "stream": seg.stream.astype(np.int64),
        "flags": pd.array(_flag_names(seg.tcp_flags), dtype="str") if n
        else pd.array([], dtype="str"),
        "tcp_flags": seg.tcp_flags.astype(np.int64),
        "seq_raw": seg.seq_raw,
        "ack_raw": seg.ack_raw,
        "seq": seg.seq.astype(np.int64),
        "ack": seg.ack.astype(np.int64),
        "len": seg.len.astype(np.int64),
        "win_raw": seg.win_raw,
        "win": seg.win.astype(np.int64),
        "mss": nullable(seg.mss, seg.mss_ok),
        "wscale": nullable(seg.ws, seg.ws_ok),
        "tsval": nullable(seg.tsval, seg.ts_ok),
        "tsecr": nullable(seg.tsecr, seg.ts_ok),
        "sack_perm": seg.sack_perm,
    }, copy=False)
    df.attrs["path"] = str(path)
    df.attrs["packets"] = int(rec.count)
    df.attrs["linktypes"] = [LINKTYPES.get(lt, _OTHER_LINKTYPES.get(lt, f"LINKTYPE_{lt}"))
                             for lt in rec.linktypes]
    df.attrs["truncated"] = bool(rec.truncated)
    return df


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


# --------------------------------------------------------------------------------------
# Retransmissions by sequence space (the one detector the course uses; plots and the
# chapters call it)
# --------------------------------------------------------------------------------------
def _flag(flags: Any, name: str) -> bool:
    return name in str(flags).upper().replace("|", "+").split("+")


def retransmitted(df: pd.DataFrame) -> np.ndarray:
    """True for each row of *df* (segments()) that re-sends sequence space its sender had
    already sent: the segment's end (seq + len, SYN and FIN counting one) is not beyond the
    highest end seen from that endpoint before. Pure ACKs and RSTs never count, nor does a
    probe at snd_nxt − 1 carrying at most one byte (a zero-window probe or keep-alive).
    Rows are taken in capture order."""
    out = np.zeros(len(df), dtype=bool)
    nxt: dict[tuple[str, int], int] = {}
    cols = zip(df["src"], df["sport"], df["flags"], df["seq"], df["len"])
    for k, (src, sport, f, seq, ln) in enumerate(cols):
        ep = (str(src), int(sport))
        seq, ln = int(seq), int(ln)
        used = ln + int(_flag(f, "SYN")) + int(_flag(f, "FIN"))
        if used == 0 or _flag(f, "RST"):
            continue
        end = seq + used
        probe = ln <= 1 and not _flag(f, "SYN") and ep in nxt and seq == nxt[ep] - 1
        if ep in nxt and end <= nxt[ep] and not probe:
            out[k] = True
        nxt[ep] = max(nxt.get(ep, end), end)
    return out


def retransmissions(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of *df* that :func:`retransmitted` marks, with ``orig_t``: when the segment
    starting at the same sequence number was first sent by the same endpoint (NaN if the
    capture never saw it)."""
    mask = retransmitted(df)
    first: dict[tuple[str, int, int], float] = {}
    orig = []
    for k, (src, sport, seq, t) in enumerate(zip(df["src"], df["sport"], df["seq"], df["t"])):
        key = (str(src), int(sport), int(seq))
        if mask[k]:
            orig.append(first.get(key, float("nan")))
        else:
            first.setdefault(key, float(t))
    out = df[mask].copy()
    out["orig_t"] = orig
    return out

