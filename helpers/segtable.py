"""The segment table: a capture's TCP segments as a pandas DataFrame, in numpy, with
tshark's semantics (see :mod:`helpers.dissect` for the columns and the rules it
reproduces), and the course's one retransmission detector."""
from __future__ import annotations

import os
import socket
import warnings

from typing import Any

import numpy as np
import pandas as pd

from .errors import BadPcapError
# the reader's building blocks (package-internal: only the dissect family uses them)
from .pcapfile import (_DT_IP4, _DT_IP6, _DT_TCP, _FLAG_NAMES, _OTHER_LINKTYPES, LINKTYPES,
                       _gather, _load, _Records, _records, _u16, _u32)

#: the columns of segments(), in order (the schema is described in helpers.dissect)
COLUMNS = ["frame", "time", "t", "ipv", "src", "dst", "sport", "dport", "stream", "flags",
           "tcp_flags", "seq_raw", "ack_raw", "seq", "ack", "len", "win_raw", "win",
           "mss", "wscale", "tsval", "tsecr", "sack_perm", "anomaly"]


class NoTcpWarning(UserWarning):
    """segments() read a capture with packets but not one TCP segment in them."""


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
            l3, v = _ethertype(u8, et, p + hl, p + c)
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


# Bits of the ``anomaly`` column (see helpers.dissect): what the row's numbers rest on.
ANOMALY_IP_LEN = 1        # IP total / payload length exceeded the frame: clipped (tshark)
ANOMALY_TS_FRACTION = 2   # the record's time-stamp fraction was >= 1 s: normalised
ANOMALY_TUNNEL = 4        # TCP inside a tunnel: src/dst/ports are the inner packet's
ANOMALY_BITS = {ANOMALY_IP_LEN: "ip_len_clipped", ANOMALY_TS_FRACTION: "ts_fraction",
                ANOMALY_TUNNEL: "tunnel"}

#: tunnel kinds (codes in _ip_layer's work items; 0 = not tunnelled)
TUNNELS = {1: "vxlan", 2: "geneve", 3: "gre", 4: "ipip", 5: "6in4", 6: "4in6", 7: "6in6"}
VXLAN_PORT, GENEVE_PORT = 4789, 6081

#: why a packet gave no TCP row (the keys of df.attrs["skipped"])
_SKIP = {1: "not IPv4/IPv6 (ARP, LLDP, ...) or cut before the IP header",
         2: "IP but not TCP (UDP, ICMP, ...)",
         3: "IP fragment after the first (no TCP header)",
         4: "cut before the end of the TCP header (snap length)",
         5: "bad IP header (header or total length impossible)",
         6: "tunnel not opened (GRE version 1 / PPTP, GRE routing, payload not IP or "
            "Ethernet)",
         7: "tunnels nested deeper than 4"}


def _ethertype(u8, et, l3, end):
    """(l3 offset, IP version or 0) after an EtherType et whose payload starts at l3,
    skipping up to two 802.1Q / 802.1ad tags."""
    for _ in range(2):
        tag = ((et == 0x8100) | (et == 0x88A8) | (et == 0x9100)) & (l3 + 4 <= end)
        if not tag.any():
            break
        et = et.copy()
        et[tag] = _u16(u8, l3[tag] + 2, True)
        l3 = np.where(tag, l3 + 4, l3)
    return l3, np.where(et == 0x0800, 4, np.where(et == 0x86DD, 6, 0))


def _ether(u8, p, end):
    """An Ethernet header at p inside a tunnel: (l3 offset, IP version or 0)."""
    ok = p + 14 <= end
    et = np.where(ok, _u16(u8, np.where(ok, p + 12, 0), True), 0)
    return _ethertype(u8, et, p + 14, end)


def _header(u8, sel, l3, cap_end, dt, skipped: list):
    """(positions where sel holds and the IP header dt fits the captured bytes, the headers);
    the others are counted in skipped as cut short."""
    m = np.flatnonzero(sel)
    short = l3[m] + dt.itemsize > cap_end[m]
    if short.any():
        skipped.append(np.full(int(short.sum()), 4))
        m = m[~short]
    return m, _gather(u8, l3[m], dt)


def _clip(length, room):
    """IP total/payload length clipped to the bytes the frame has room for, as tshark does
    ("IPv4 total length exceeds packet length"); 0 (TSO, jumbogram) means the frame's
    length to tshark. Returns (length, anomaly bits)."""
    length = length.astype(np.int64)
    length = np.where(length == 0, room, length)
    over = length > room
    if not over.any():
        return length, np.zeros(len(length), np.int64)
    return np.where(over, room, length), np.where(over, ANOMALY_IP_LEN, 0)


def _rows(i, kind, m, ok, l4, total, ver, h, anom):
    """One part of _ip_layer's result: the TCP rows among positions m (mask ok)."""
    k = m[ok]
    return (i[k], l4[ok], total[ok], np.full(len(k), ver), h["src"][ok], h["dst"][ok],
            anom[ok] | np.where(kind[k] > 0, ANOMALY_TUNNEL, 0), kind[k])


def _ip_layer(u8, rec: _Records, i, l3, v):
    """IPv4/IPv6 (and the tunnels they carry) -> TCP.

    Returns (parts, skipped, rows_total) where parts is a list of (packet index, tcp
    offset, tcp bytes per IP, ipv, src, dst, anomaly bits, tunnel code) tuples, and
    skipped an array of skip-reason codes (one per packet that gave no TCP row after
    the link layer)."""
    parts = []
    skipped = []
    cap_end = rec.off[i] + rec.caplen[i]
    lim = rec.off[i] + rec.origlen[i]          # the frame's reported (wire) end
    lim = np.maximum(lim, cap_end)             # a record whose origlen < caplen: trust caplen
    kind = np.zeros(len(i), np.int64)
    for depth in range(5):
        if not len(i):
            break
        if depth == 4:
            skipped.append(np.full(len(i), 7))
            break
        nxt = []                                 # tunnel work for the next round
        # ---- IPv4
        m, h = _header(u8, v == 4, l3, cap_end, _DT_IP4, skipped)
        if len(m):
            ihl = (h["vhl"] & 0x0F).astype(np.int64) * 4
            tot, anom = _clip(h["len"], lim[m] - l3[m])
            bad = (ihl < 20) | (tot < ihl)
            proto = h["proto"].astype(np.int64)
            first = (h["frag"] & 0x1FFF) == 0
            l4 = l3[m] + ihl
            tcp = (proto == 6) & first & ~bad
            cut = tcp & (l4 + 20 > cap_end[m])
            ok = tcp & ~cut
            parts.append(_rows(i, kind, m, ok, l4, tot - ihl, 4, h, anom))
            if not ok.all():
                rest = ~ok
                code = np.where(bad, 5, np.where(~first, 3, np.where(cut, 4, 2)))[rest]
                nxt.append((m[rest], l4[rest], l3[m][rest] + tot[rest], proto[rest], 4,
                            code))
        # ---- IPv6
        m, h = _header(u8, v == 6, l3, cap_end, _DT_IP6, skipped)
        if len(m):
            nh = h["nh"].astype(np.int64)
            pos = l3[m] + 40
            e = cap_end[m]
            plen, anom = _clip(h["plen"], lim[m] - l3[m] - 40)
            alive = np.ones(len(m), bool)
            code = np.zeros(len(m), np.int64)
            for _ in range(12):                            # extension headers
                ext = alive & np.isin(nh, (0, 43, 60, 44, 51, 135, 139, 140))
                if not ext.any():
                    break
                x = np.flatnonzero(ext)
                short = pos[x] + 8 > e[x]
                alive[x[short]] = False
                code[x[short]] = 4
                x = x[~short]
                px = pos[x]
                kx = nh[x]
                nxt_h = u8[px].astype(np.int64)
                ln = u8[px + 1].astype(np.int64)
                size = np.where(kx == 44, 8, np.where(kx == 51, (ln + 2) * 4, (ln + 1) * 8))
                frag_later = (kx == 44) & ((_u16(u8, px + 2, True) >> 3) != 0)
                alive[x[frag_later]] = False
                code[x[frag_later]] = 3
                nh[x] = nxt_h
                pos[x] = px + size
            tcp = alive & (nh == 6)
            cut = tcp & (pos + 20 > e)
            ok = tcp & ~cut
            tcp_total = plen - (pos - l3[m] - 40)
            parts.append(_rows(i, kind, m, ok, pos, tcp_total, 6, h, anom))
            if not ok.all():
                rest = ~ok
                code = np.where(code != 0, code, np.where(cut, 4, 2))[rest]
                nxt.append((m[rest], pos[rest], l3[m][rest] + 40 + plen[rest], nh[rest], 6,
                            code))
        # ---- tunnels: IP in IP, GRE, VXLAN, Geneve
        if not nxt:
            break
        w = np.concatenate([x[0] for x in nxt])
        p4 = np.concatenate([x[1] for x in nxt])
        pend = np.concatenate([x[2] for x in nxt])
        proto = np.concatenate([x[3] for x in nxt])
        outer_v = np.concatenate([np.full(len(x[0]), x[4]) for x in nxt])
        code = np.concatenate([x[5] for x in nxt])
        cand = (code == 2) & np.isin(proto, (4, 41, 47, 17))
        if not cand.any():
            skipped.append(code)
            break
        skipped.append(code[~cand])
        w, p4, pend, proto, outer_v = w[cand], p4[cand], pend[cand], proto[cand], outer_v[cand]
        ce = cap_end[w]
        il3 = np.zeros(len(w), np.int64)
        iv = np.zeros(len(w), np.int64)
        ik = np.zeros(len(w), np.int64)
        why = np.full(len(w), 2)                       # plain UDP stays "not TCP"
        # IP in IP: the inner header starts at the outer payload
        s = np.flatnonzero(proto == 4)
        il3[s], iv[s], ik[s] = p4[s], 4, np.where(outer_v[s] == 4, 4, 6)
        s = np.flatnonzero(proto == 41)
        il3[s], iv[s], ik[s] = p4[s], 6, np.where(outer_v[s] == 4, 5, 7)
        # GRE version 0
        s = np.flatnonzero((proto == 47) & (p4 + 4 <= ce))
        if len(s):
            fl = _u16(u8, p4[s], True)
            pt = _u16(u8, p4[s] + 2, True)
            hl = 4 + 4 * (((fl & 0xC000) != 0).astype(np.int64) + ((fl & 0x2000) != 0)
                          + ((fl & 0x1000) != 0))
            usable = ((fl & 0x4007) == 0)               # version 0, no source routing
            inner = p4[s] + hl
            el3, ev = _ether(u8, inner, ce[s])
            il3[s] = np.where(pt == 0x6558, el3, inner)
            iv[s] = np.where(~usable, 0, np.where(pt == 0x0800, 4, np.where(
                pt == 0x86DD, 6, np.where(pt == 0x6558, ev, 0))))
            ik[s] = 3
            why[s] = 6
        # VXLAN and Geneve on their UDP ports
        s = np.flatnonzero((proto == 17) & (p4 + 16 <= ce))
        if len(s):
            sp = _u16(u8, p4[s], True)
            dp = _u16(u8, p4[s] + 2, True)
            vx = (sp == VXLAN_PORT) | (dp == VXLAN_PORT)
            gn = ~vx & ((sp == GENEVE_PORT) | (dp == GENEVE_PORT))
            t = s[vx]
            if len(t):
                il3[t], iv[t] = _ether(u8, p4[t] + 16, ce[t])
                ik[t] = 1
                why[t] = 6
            t = s[gn]
            if len(t):
                b0 = u8[p4[t] + 8].astype(np.int64)
                pt = _u16(u8, p4[t] + 10, True)
                inner = p4[t] + 16 + (b0 & 0x3F) * 4
                el3, ev = _ether(u8, inner, ce[t])
                il3[t] = np.where(pt == 0x6558, el3, inner)
                iv[t] = np.where(pt == 0x0800, 4, np.where(pt == 0x86DD, 6,
                                 np.where(pt == 0x6558, ev, 0)))
                ik[t] = 2
                why[t] = 6
        # the inner version nibble must agree with what the tunnel says it carries
        has = il3 < ce
        nib = np.where(has, u8[np.minimum(il3, len(u8) - 1)] >> 4, -1)
        go = (iv != 0) & has & (nib == iv)
        skipped.append(np.where((iv != 0) & ~has, 4, why)[~go])
        if not go.any():
            break
        cap_end, lim, kind = cap_end[w[go]], np.minimum(lim[w[go]], pend[go]), ik[go]
        i, l3, v = i[w[go]], il3[go], iv[go]
    sk = np.concatenate(skipped) if skipped else np.zeros(0, np.int64)
    return parts, sk


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
    skipped), 802.1Q tags; TCP inside VXLAN, Geneve, GRE and IP-in-IP tunnels. Raises
    :class:`~helpers.errors.BadPcapError` for a missing, empty, corrupt or cut-off file;
    ``allow_truncated=True`` keeps the complete packets of a file whose last record is
    cut (and sets ``df.attrs["truncated"]``). What was clipped, normalised or found in a
    tunnel is flagged in the ``anomaly`` column; what gave no row is counted in
    ``df.attrs["skipped"]``, and a file with packets but no TCP row warns
    (:class:`NoTcpWarning`).
    """
    buf, size = _load(path)
    rec = _records(path, buf, size, allow_truncated)
    u8 = buf
    i, l3, v = _link_layer(u8, rec, path)
    parts, skipped = _ip_layer(u8, rec, i, l3, v)
    parts = [p for p in parts if len(p[0])]
    seg = _Seg()
    z = np.zeros(0, np.int64)
    seg.s4 = seg.d4 = np.zeros(0, np.uint32)
    seg.s6 = seg.d6 = np.zeros(0, "S16")
    if parts:
        cols = list(zip(*parts))
        pk = np.concatenate(cols[0])
        # a tunnel round appends its inner packets after the outer ones: sort into file order
        order = np.argsort(pk, kind="stable")
        seg.pkt = pk[order]
        seg.tcp = np.concatenate(cols[1])[order]
        seg.tcp_total = np.concatenate(cols[2])[order]
        seg.ipv = np.concatenate(cols[3])[order].astype(np.int64)
        seg.anomaly = np.concatenate(cols[6])[order].astype(np.int64)
        seg.tunnel = np.concatenate(cols[7])[order].astype(np.int64)
        for fam, (sa, da) in ((4, ("s4", "d4")), (6, ("s6", "d6"))):
            fp = [p for p in parts if p[3][0] == fam]
            if fp:                       # file order, as seg.pkt (tunnels mix the order)
                o = np.argsort(np.concatenate([p[0] for p in fp]), kind="stable")
                setattr(seg, sa, np.concatenate([p[4] for p in fp])[o])
                setattr(seg, da, np.concatenate([p[5] for p in fp])[o])
    else:
        seg.pkt = seg.tcp = seg.tcp_total = seg.ipv = seg.anomaly = seg.tunnel = z
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
    ts_bad = np.zeros(0, np.int64)
    if rec.count:
        sec, frac = rec.sec, rec.frac
        u_all = units if np.ndim(units) else np.full(rec.count, units)
        # a pcap record whose fraction is >= 1 s: normalised below (sec + frac / units),
        # flagged (tshark prints it as it is, "Fractional second ... is invalid")
        ts_bad = np.flatnonzero(frac >= u_all)
        if len(ts_bad):
            flagged = np.zeros(rec.count, np.int64)
            flagged[ts_bad] = ANOMALY_TS_FRACTION
            seg.anomaly = seg.anomaly | flagged[seg.pkt]
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
        "anomaly": seg.anomaly,
    }, copy=False)
    df.attrs["path"] = str(path)
    df.attrs["packets"] = int(rec.count)
    df.attrs["linktypes"] = [LINKTYPES.get(lt, _OTHER_LINKTYPES.get(lt, f"LINKTYPE_{lt}"))
                             for lt in rec.linktypes]
    df.attrs["truncated"] = bool(rec.truncated)
    _report(df, seg, rec, len(i), skipped, ts_bad, path)
    return df


def _report(df, seg, rec, ip_packets: int, skipped, ts_bad, path) -> None:
    """df.attrs "skipped", "anomalies", "tunnels"; a warning when no packet gave TCP."""
    reasons: dict[str, int] = {}
    if rec.count - ip_packets:
        reasons[_SKIP[1]] = int(rec.count - ip_packets)
    if len(skipped):
        for code, cnt in zip(*np.unique(skipped, return_counts=True)):
            reasons[_SKIP[int(code)]] = int(cnt)
    anomalies: dict[str, int] = {}
    if len(ts_bad):
        anomalies["ts_fraction"] = int(len(ts_bad))        # records, TCP or not
    if len(df):
        for bit, name in ANOMALY_BITS.items():
            if name != "ts_fraction":
                cnt = int(np.count_nonzero(seg.anomaly & bit))
                if cnt:
                    anomalies[name] = cnt
    tunnels: dict[str, int] = {}
    if len(df) and seg.tunnel.any():
        for code, cnt in zip(*np.unique(seg.tunnel[seg.tunnel > 0], return_counts=True)):
            tunnels[TUNNELS[int(code)]] = int(cnt)
    df.attrs["skipped"] = reasons
    df.attrs["anomalies"] = anomalies
    df.attrs["tunnels"] = tunnels
    if rec.count and not len(df):
        why = "; ".join(f"{n} {r}" for r, n in reasons.items())
        warnings.warn(f"{path}: {rec.count} packets but no TCP segment ({why})",
                      NoTcpWarning, stacklevel=3)


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


