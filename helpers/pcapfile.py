"""Reading pcap and pcapng files into numpy record arrays (the first layer of
:mod:`helpers.dissect`): magic numbers, link types, truncated and foreign files."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .errors import BadPcapError


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


