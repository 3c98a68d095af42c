#!/usr/bin/env python3
"""Crafted captures for the dissector's "never silently wrong" cases (no root, no network).

    .venv/bin/python tests/data/dissect/make_fixtures.py          # (re)write every file
    .venv/bin/python tests/data/dissect/make_fixtures.py --check  # exit 1 if a file differs

Every packet is built byte by byte with struct (deterministic: fixed addresses, ports,
sequence numbers and time stamps), so the committed files can be regenerated exactly;
tests/test_dissect_anomalies.py checks that they were. Each file holds one or more
complete TCP conversations (handshake with Linux's SYN options, data both ways, FIN),
and one defect:

  ip4_len_exceeds.pcap    one data segment whose IPv4 total length (1400) exceeds its
                          frame (the frame holds 100 payload bytes, and the record says
                          the wire frame was that long too); a second one cut by the snap
                          length (caplen < origlen) whose IP length is honest
  ip6_len_exceeds.pcap    the same with the IPv6 payload length
  ip4_len_exceeds.pcapng  ip4_len_exceeds in pcapng (EPB)
  tunnels.pcap            the conversation once plain and then inside VXLAN (UDP 4789),
                          Geneve (UDP 6081, with an option), GRE (plain, with key and
                          sequence number, with checksum, carrying Ethernet 0x6558),
                          IP-in-IP (protocol 4), IPv6-in-IPv4 (41), IPv4-in-IPv6, and
                          VXLAN over IPv6; each tunnel uses its own client port
  tunnel_only.pcap        TCP only inside a tunnel type the reader does not open (GRE
                          version 1, PPTP): the file has packets but no TCP rows
  ts_usec_overflow.pcap   microsecond pcap: records with ts_usec = 1_000_000 and
                          1_999_999 (fraction out of range)
  ts_nsec_overflow.pcap   nanosecond pcap: ts_nsec = 1_000_000_000 and 4_000_000_000
"""
from __future__ import annotations

import io
import socket
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
T0 = 1_700_000_000                      # first time stamp of every file (seconds)

# ----------------------------------------------------------------------------- layers
SYN_OPTS = (struct.pack(">BBH", 2, 4, 1460) + b"\x04\x02" + struct.pack(">BBII", 8, 10, 1000, 0)
            + b"\x01" + struct.pack(">BBB", 3, 3, 7))                      # Linux SYN: 20 B


def ts_opt(tsval: int, tsecr: int) -> bytes:
    return b"\x01\x01" + struct.pack(">BBII", 8, 10, tsval, tsecr)


def tcp(sport, dport, seq, ack, flags, win, opts=b"", payload=b"") -> bytes:
    opts += b"\x00" * (-len(opts) % 4)
    off = (20 + len(opts)) // 4
    return struct.pack(">HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                       off << 4, flags, win, 0, 0) + opts + payload


def ip4(src: str, dst: str, proto: int, payload: bytes, total: int | None = None) -> bytes:
    total = 20 + len(payload) if total is None else total
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


def ip6(src: str, dst: str, nh: int, payload: bytes, plen: int | None = None) -> bytes:
    plen = len(payload) if plen is None else plen
    return struct.pack(">IHBB16s16s", 0x60000000, plen, nh, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload


def ip(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return (ip6 if ":" in src else ip4)(src, dst, proto, payload)


def eth(payload: bytes, ethertype: int, src=b"\x02\0\0\0\0\x01", dst=b"\x02\0\0\0\0\x02") -> bytes:
    return dst + src + struct.pack(">H", ethertype) + payload


def eth_ip(ip_bytes: bytes) -> bytes:
    return eth(ip_bytes, 0x86DD if ip_bytes[0] >> 4 == 6 else 0x0800)


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def vxlan(inner_eth: bytes, vni: int = 42) -> bytes:
    return struct.pack(">BBHI", 0x08, 0, 0, vni << 8) + inner_eth


def geneve(inner: bytes, ptype: int = 0x6558, opts: bytes = b"", vni: int = 7) -> bytes:
    assert len(opts) % 4 == 0
    return struct.pack(">BBHI", len(opts) // 4, 0, ptype, vni << 8) + opts + inner


def gre(inner: bytes, ptype: int, *, csum=False, key=None, seq=None, version=0) -> bytes:
    flags = (0x8000 if csum else 0) | (0x2000 if key is not None else 0) | \
            (0x1000 if seq is not None else 0) | version
    out = struct.pack(">HH", flags, ptype)
    if csum:
        out += b"\0\0\0\0"
    if key is not None:
        out += struct.pack(">I", key)
    if seq is not None:
        out += struct.pack(">I", seq)
    return out + inner


# ----------------------------------------------------------------------------- traffic
def conversation(client: str, server: str, sport: int, dport: int = 5000, *,
                 isn_c: int = 1_000_000, isn_s: int = 3_000_000, data: int = 3):
    """[(from_client, tcp bytes)] of a Linux-like connection: handshake, `data` request/
    response pairs of 100 and 200 bytes, FIN both ways."""
    c, s = isn_c, isn_s
    out = [(True, tcp(sport, dport, c, 0, 0x02, 65535, SYN_OPTS)),
           (False, tcp(dport, sport, s, c + 1, 0x12, 65483, SYN_OPTS)),
           (True, tcp(sport, dport, c + 1, s + 1, 0x10, 512, ts_opt(1001, 1000)))]
    c, s = c + 1, s + 1
    for k in range(data):
        out.append((True, tcp(sport, dport, c, s, 0x18, 512, ts_opt(1002 + k, 1001 + k),
                              bytes([65 + k]) * 100)))
        c += 100
        out.append((False, tcp(dport, sport, s, c, 0x18, 509, ts_opt(1002 + k, 1002 + k),
                               bytes([97 + k]) * 200)))
        s += 200
    out.append((True, tcp(sport, dport, c, s, 0x11, 512, ts_opt(1010, 1009))))
    out.append((False, tcp(dport, sport, s, c + 1, 0x11, 509, ts_opt(1010, 1010))))
    out.append((True, tcp(sport, dport, c + 1, s + 1, 0x10, 512, ts_opt(1011, 1010))))
    return out


def packets(client, server, sport, wrap=lambda ipb, fwd: eth_ip(ipb), **kw) -> list[bytes]:
    """Link-layer frames of conversation(); wrap(ip packet, from_client) adds the outside."""
    proto_ip = (lambda a, b, p: ip(a, b, 6, p))
    return [wrap(proto_ip(client if fwd else server, server if fwd else client, seg), fwd)
            for fwd, seg in conversation(client, server, sport, **kw)]


# ----------------------------------------------------------------------------- writers
def pcap_bytes(frames, *, nano=False, linktype=1, times=None, origlens=None) -> bytes:
    """Classic little-endian pcap. times: [(sec, frac)] (default T0 + 1 ms steps)."""
    out = io.BytesIO()
    out.write(struct.pack("<IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0,
                          262144, linktype))
    step = 1_000_000 if nano else 1000
    for k, f in enumerate(frames):
        sec, frac = times[k] if times else (T0, k * step)
        ol = origlens[k] if origlens else len(f)
        out.write(struct.pack("<IIII", sec, frac, len(f), ol) + f)
    return out.getvalue()


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def pcapng_bytes(frames, *, linktype=1, origlens=None) -> bytes:
    out = io.BytesIO()
    out.write(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
    out.write(_block(1, struct.pack("<HHI", linktype, 0, 262144) + struct.pack("<HH", 0, 0)))
    for k, f in enumerate(frames):
        ts = (T0 * 10 ** 6) + k * 1000
        ol = origlens[k] if origlens else len(f)
        out.write(_block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(f), ol) + f))
    return out.getvalue()


# ----------------------------------------------------------------------------- fixtures
C4, S4, C6, S6 = "10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"
O4A, O4B, O6A, O6B = "192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"   # outer


def _len_exceeds(v6: bool):
    """(frames, origlens): frame 5 claims 1400 payload bytes but carries 100 (the record's
    original length agrees with the frame); frame 7 is cut by the snap length (96 bytes
    kept of an honest 254-byte frame)."""
    c, s = (C6, S6) if v6 else (C4, S4)
    fr = packets(c, s, 40000)
    ol = [len(f) for f in fr]
    lie = bytearray(fr[4])               # client data, 100 payload bytes
    if v6:
        struct.pack_into(">H", lie, 14 + 4, 32 + 1400)          # TCP header 32 + "1400"
    else:
        struct.pack_into(">H", lie, 14 + 2, 20 + 32 + 1400)
    fr[4] = bytes(lie)
    ol[4] = len(lie)
    ol[6] = len(fr[6])                   # client data again: cut to 96 captured bytes
    fr[6] = fr[6][:96]
    return fr, ol


def _outer4(proto, body):
    return eth(ip4(O4A, O4B, proto, body), 0x0800)


def _outer6(nh, body):
    return eth(ip6(O6A, O6B, nh, body), 0x86DD)


_GOPT = struct.pack(">HBB", 0x0104, 0x01, 1) + b"\xde\xad\xbe\xef"  # class, type, 1 word

#: (client port, inner IP version, kind as segments() names it, wrap(ip packet, fwd))
TUNNELS = [
    (41001, 4, "vxlan", lambda p, fwd: _outer4(17, udp(50000, 4789, vxlan(eth_ip(p))))),
    (41002, 4, "geneve", lambda p, fwd: _outer4(17, udp(50001, 6081, geneve(eth_ip(p), opts=_GOPT)))),
    (41003, 4, "gre", lambda p, fwd: _outer4(47, gre(p, 0x0800))),
    (41004, 4, "gre", lambda p, fwd: _outer4(47, gre(p, 0x0800, key=99, seq=5))),
    (41005, 4, "gre", lambda p, fwd: _outer4(47, gre(p, 0x0800, csum=True))),
    (41006, 4, "gre", lambda p, fwd: _outer4(47, gre(eth_ip(p), 0x6558))),
    (41007, 4, "ipip", lambda p, fwd: _outer4(4, p)),
    (41008, 6, "6in4", lambda p, fwd: _outer4(41, p)),
    (41009, 4, "4in6", lambda p, fwd: _outer6(4, p)),
    (41010, 6, "vxlan", lambda p, fwd: _outer6(17, udp(50002, 4789, vxlan(eth_ip(p))))),
    (41011, 6, "geneve", lambda p, fwd: _outer4(17, udp(50003, 6081, geneve(p, ptype=0x86DD)))),
    (41012, 4, "gre", lambda p, fwd: _outer6(47, gre(p, 0x0800))),
]


def tunnel_packets(port, ver, wrap) -> list[bytes]:
    c, s = (C6, S6) if ver == 6 else (C4, S4)
    return packets(c, s, port, wrap)


def _tunnels() -> list[bytes]:
    frames = packets(C4, S4, 41000)                                       # plain, for contrast
    for port, ver, _kind, wrap in TUNNELS:
        frames += tunnel_packets(port, ver, wrap)
    return frames


def _tunnel_only() -> list[bytes]:
    # GRE version 1 (PPTP's enhanced GRE, carries PPP): not opened by the reader
    def pptp(p, fwd):
        body = struct.pack(">HHHHI", 0x3001, 0x880B, len(p) + 4, 1, 7) + b"\xff\x03\x00\x21" + p
        return eth(ip4(O4A, O4B, 47, body), 0x0800)
    return packets(C4, S4, 42000, pptp)


def _ts_overflow(nano: bool):
    fr = packets(C4, S4, 43000)
    unit = 10 ** 9 if nano else 10 ** 6
    times = [(T0 + k // 4, (k % 4) * (unit // 10)) for k in range(len(fr))]
    times[3] = (T0, unit)                       # exactly one second's worth
    times[7] = (T0 + 1, 2 * unit - 1 if not nano else 4_000_000_000)
    return pcap_bytes(fr, nano=nano, times=times)


def build() -> dict[str, bytes]:
    f4, o4 = _len_exceeds(False)
    f6, o6 = _len_exceeds(True)
    return {
        "ip4_len_exceeds.pcap": pcap_bytes(f4, origlens=o4),
        "ip6_len_exceeds.pcap": pcap_bytes(f6, origlens=o6),
        "ip4_len_exceeds.pcapng": pcapng_bytes(f4, origlens=o4),
        "tunnels.pcap": pcap_bytes(_tunnels()),
        "tunnel_only.pcap": pcap_bytes(_tunnel_only()),
        "ts_usec_overflow.pcap": _ts_overflow(False),
        "ts_nsec_overflow.pcap": _ts_overflow(True),
    }


def main(argv: list[str]) -> int:
    check = "--check" in argv
    bad = []
    for name, data in build().items():
        p = HERE / name
        if check:
            if not p.exists() or p.read_bytes() != data:
                bad.append(name)
        else:
            p.write_bytes(data)
            print(f"wrote {p.relative_to(HERE.parents[2])} ({len(data)} bytes)")
    if bad:
        print("differ from make_fixtures.py:", ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
