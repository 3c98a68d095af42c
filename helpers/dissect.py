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
        text = head.decode("utf-8")
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return "it looks like text"
    except UnicodeDecodeError:
        pass
    return f"it starts with bytes {head[:8].hex(' ')}"


# ============================================================================ reading
def _load(path: str | os.PathLike) -> tuple[bytearray, int]:
    """The file's bytes followed by _PAD zero bytes (read without an extra copy)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise BadPcapError(f"{p} is a directory, not a capture file",
                               "pass the path of a .pcap or .pcapng file")
        buf = bytearray(size + _PAD)
        with open(p, "rb") as f:
            got = f.readinto(memoryview(buf)[:size])
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
    """Gather unsigned 32-bit ints at byte offsets idx (int64 result)."""
    b = np.lib.stride_tricks.sliding_window_view(u8, 4)[idx]
    le = b.view("<u4")[:, 0].astype(np.int64)
    if big is False:
        return le
    be = b.view(">u4")[:, 0].astype(np.int64)
    if big is True:
        return be
    return np.where(big, be, le)


def _u16(u8: np.ndarray, idx: np.ndarray, big) -> np.ndarray:
    b = np.lib.stride_tricks.sliding_window_view(u8, 2)[idx]
    le = b.view("<u2")[:, 0].astype(np.int64)
    if big is False:
        return le
    be = b.view(">u2")[:, 0].astype(np.int64)
    if big is True:
        return be
    return np.where(big, be, le)


def _gather(u8: np.ndarray, idx: np.ndarray, dt: np.dtype) -> np.ndarray:
    """Rows of dt.itemsize bytes starting at idx, viewed as the structured dtype dt."""
    if len(idx) == 0:
        return np.zeros(0, dt)
    w = np.lib.stride_tricks.sliding_window_view(u8, dt.itemsize)[idx]
    return w.view(dt)[:, 0]


def _truncated(path, rec: _Records, frame: int, present: int, needed: int,
               allow: bool, what: str = "packet") -> None:
    if allow:
        rec.truncated = True
        return
    raise BadPcapError(
        f"{path}: file ends in the middle of {what} {frame} ({present} of {needed} bytes "
        f"present); the capture was cut off (tcpdump killed, or the disk filled)",
        f"{_fix_rerun()}, or pass allow_truncated=True to keep the {frame - 1} complete "
        "packets")


def _read_pcap(path, buf: bytearray, size: int, allow: bool) -> _Records:
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
    offs: list[int] = []
    app = offs.append
    off = 24
    last = size - 16
    while off <= last:
        app(off)
        off += 16 + unpack(buf, off + 8)[0]
    if off != size:
        if off < size:               # a partial record header at the end
            _truncated(path, rec, len(offs) + 1, size - off, 16, allow, "the header of packet")
        else:                        # the last record's data is cut
            start = offs.pop()
            caplen = unpack(buf, start + 8)[0]
            if caplen > _MAX_RECORD:
                raise BadPcapError(f"{path}: packet {len(offs) + 1} claims {caplen} bytes: "
                                   "the file is corrupt", _fix_rerun())
            _truncated(path, rec, len(offs) + 1, size - start, 16 + caplen, allow)
    u8 = np.frombuffer(buf, np.uint8)
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
            v = buf[p + 4]
            units = 2 ** (v & 0x7F) if v & 0x80 else 10 ** v
        elif code == 14 and ln >= 8:                    # if_tsoffset
            tsoff = struct.unpack_from(e + "q", buf, p + 4)[0]
        p += 4 + ((ln + 3) & ~3)
    return linktype, snaplen, units, tsoff


def _read_pcapng(path, buf: bytearray, size: int, allow: bool) -> _Records:
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
    while off < size:
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
        if blen < 12 or blen % 4 or blen > _MAX_RECORD:
            raise BadPcapError(f"{path}: pcapng block at byte {off} has an impossible length "
                               f"{blen}: the file is corrupt", _fix_rerun())
        if off + blen > size:
            what = "packet" if btype in (6, 3, 2) else "the block after packet"
            _truncated(path, rec, len(offs) + 1, size - off, blen, allow, what)
            break
        if btype == 6:
            app(off)
        elif btype == 1:
            ifaces.append(_parse_idb(buf, off, blen, ">" if big else "<"))
        elif btype == 3 or btype == 2:
            odd[len(offs)] = btype
            app(off)
        off += blen
    n = len(offs)
    rec.count = n
    rec.linktypes = [i[0] for i in ifaces]
    u8 = np.frombuffer(buf, np.uint8)
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
    iface = _u32(u8, bo + 8, bigmask)
    ts_hi = _u32(u8, bo + 12, bigmask)
    ts_lo = _u32(u8, bo + 16, bigmask)
    caplen = _u32(u8, bo + 20, bigmask)
    origlen = _u32(u8, bo + 24, bigmask)
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
            caplen[spb] = np.minimum(ol, blen - 16)
            iface[spb] = 0
            ts_hi[spb] = 0
            ts_lo[spb] = 0
            data[spb] = bo[spb] + 12
        pb = idx[kinds == 2]
        if len(pb):                                   # obsolete packet block
            bmp = bm if isinstance(bm, bool) else bm[kinds == 2]
            iface[pb] = _u16(u8, bo[pb] + 8, bmp)
    iface = iface + ifbase
    if n and (iface.max() >= len(ifaces)):
        k = int(np.flatnonzero(iface >= len(ifaces))[0])
        raise BadPcapError(f"{path}: packet {k + 1} refers to interface {iface[k]} but the "
                           f"file describes only {len(ifaces)}: the file is corrupt",
                           _fix_rerun())
    blocklen = _u32(u8, bo + 4, bigmask)
    room = blocklen - (data - bo) - 4
    bad = np.flatnonzero(caplen > room)
    if len(bad):
        raise BadPcapError(f"{path}: packet {bad[0] + 1} claims {caplen[bad[0]]} bytes but its "
                           "block is shorter: the file is corrupt", _fix_rerun())
    tab = np.array(ifaces, dtype=object) if ifaces else np.zeros((0, 4), dtype=object)
    lt_tab = np.array([i[0] for i in ifaces], dtype=np.int64)
    units_tab = np.array([i[2] for i in ifaces], dtype=np.int64)
    tsoff_tab = np.array([i[3] for i in ifaces], dtype=np.int64)
    del tab
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


def _records(path, buf: bytearray, size: int, allow: bool) -> _Records:
    magic = bytes(buf[:4])
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        return _read_pcap(path, buf, size, allow)
    if magic == b"\x0a\x0d\x0d\x0a":
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
    present = np.unique(lt) if len(lt) else np.zeros(0, np.int64)
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
            v = np.where(af == 2, 4, np.where(np.isin(af, (10, 23, 24, 28, 30)), 6, 0))
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
        fh = f[hit]
        v = b[hit].view(">u4")
        tsv[fh] = v[:, 1]
        tse[fh] = v[:, 2]
        ts_ok[fh] = True
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
    """Row of the first occurrence of each code (len(codes) when absent)."""
    n = len(codes)
    first = np.full(ncodes, np.iinfo(np.int64).max, dtype=np.int64)
    if n:
        r = np.arange(n, dtype=np.int64) if rows is None else rows
        # reversed assignment: the earliest row wins
        first[codes[::-1]] = r[::-1]
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
    seg.win = seg.win_raw.copy()
    syn_rows = np.flatnonzero(syn)
    if not len(syn_rows):
        return
    state: dict[int, list[int]] = {}
    ev_rows, ev_shift0, ev_shift1 = [], [], []
    ws, ws_ok = seg.ws, seg.ws_ok
    for r in syn_rows.tolist():
        s = int(stream[r])
        st = state.setdefault(s, [-1, -1])
        fwd = int(d[r])
        if ws_ok[r]:
            st[fwd] = min(int(ws[r]), 14)
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
    j = np.searchsorted(keys, rowkeys, side="right") - 1
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
        u, inv = np.unique(a, return_inverse=True)
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
        u, inv = np.unique(a, return_inverse=True)
        names = np.array([socket.inet_ntop(socket.AF_INET6, bytes(x).ljust(16, b"\0"))
                          for x in u.tolist()], dtype=object)
        k = len(seg.s6)
        src[v6] = names[inv[:k]]
        dst[v6] = names[inv[k:]]
        src_id[v6] = (1 << 32) + inv[:k]
        dst_id[v6] = (1 << 32) + inv[k:]
    seg.src, seg.dst, seg.src_id, seg.dst_id = src, dst, src_id, dst_id


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
    u8 = np.frombuffer(buf, np.uint8)
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
