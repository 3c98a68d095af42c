"""Tests of helpers.dissect: segments() agrees with tshark frame by frame, column by column.

The fixtures in tests/data/ are real loopback captures made by tcpdump (regenerate them
with ``sudo .venv/bin/python tests/data/make_fixtures.py``); the tests here need only
tshark. More link types, byte orders and pcapng layouts are synthesised from the
fixtures into tmp_path and checked against tshark the same way. Tests marked ``live``
run tcpdump themselves and skip without root/CAP_NET_RAW.
"""
from __future__ import annotations

import asyncio
import functools
import gzip
import importlib.util
import io
import os
import random
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import dissect, wireshark
from helpers.dissect import (COLUMNS, expert, pyshark_summary, scapy_packets, segments,
                             with_expert)
from helpers.errors import BadPcapError, MissingToolError, ParameterError

DATA = Path(__file__).resolve().parent / "data"
FIXTURES = ["lo_ipv4.pcap", "lo_ipv6.pcap", "any_sll2.pcap", "any_sll.pcap", "lo_nano.pcap",
            "zero_window.pcap", "lo_ipv6.pcapng", "mixed.pcapng"]
HAVE_TSHARK = shutil.which("tshark") is not None
needs_tshark = pytest.mark.skipif(not HAVE_TSHARK, reason="tshark is not installed")


# =========================================================================== tshark oracle
FIELDS = ["frame.number", "frame.protocols", "frame.time_epoch", "frame.time_relative",
          "ip.src", "ip.dst",
          "ipv6.src", "ipv6.dst", "tcp.srcport", "tcp.dstport", "tcp.stream", "tcp.flags",
          "tcp.seq_raw", "tcp.ack_raw", "tcp.seq", "tcp.ack", "tcp.len",
          "tcp.window_size_value", "tcp.window_size", "tcp.options.mss_val",
          "tcp.options.wscale.shift", "tcp.options.sack_perm",
          "tcp.options.timestamp.tsval", "tcp.options.timestamp.tsecr"]


@functools.lru_cache(maxsize=None)
def _tshark_text(path: str, mtime: float, occurrence: str = "f") -> str:
    cmd = ["tshark", "-r", path, "-Y", "tcp", "-T", "fields", "-E", f"occurrence={occurrence}",
           "-E", "separator=\t"]
    for f in FIELDS:
        cmd += ["-e", f]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def tshark_table(path, occurrence: str = "f") -> pd.DataFrame:
    """tshark's FIELDS for the TCP frames of path; occurrence "l" takes the last value of
    a field that occurs more than once (the inner IP header of a tunnelled packet)."""
    text = _tshark_text(str(path), os.path.getmtime(path), occurrence)
    rows = [line.split("\t") for line in text.splitlines()]
    return pd.DataFrame(rows, columns=FIELDS, dtype=object)


def _inner_ip(protocols: str) -> str:
    """"ip" or "ipv6": the IP layer that carries the TCP header in frame.protocols."""
    layers = protocols.split(":")
    return next(x for x in reversed(layers[:layers.index("tcp")]) if x in ("ip", "ipv6"))


def assert_matches_tshark(path, df: pd.DataFrame | None = None, *,
                          occurrence: str = "f", time_differs=()) -> pd.DataFrame:
    """Every column of segments(path) equals what tshark prints, frame by frame (time and
    t except in the frames listed in time_differs)."""
    ts = tshark_table(path, occurrence)
    df = segments(path) if df is None else df
    assert len(df) > 0
    assert df["frame"].tolist() == [int(x) for x in ts["frame.number"]], "TCP frames differ"

    def ints(col):
        return np.array([int(x) for x in ts[col]], dtype=np.int64)

    def check(name, ours, theirs):
        ours = np.asarray(ours)
        bad = np.flatnonzero(ours != theirs)
        assert not len(bad), (f"{Path(path).name}: column {name} differs in {len(bad)} rows; "
                              f"first at frame {df['frame'].iloc[bad[0]]}: ours "
                              f"{ours[bad[0]]!r}, tshark {theirs[bad[0]]!r}")

    check("sport", df["sport"], ints("tcp.srcport"))
    check("dport", df["dport"], ints("tcp.dstport"))
    check("stream", df["stream"], ints("tcp.stream"))
    check("tcp_flags", df["tcp_flags"], np.array([int(x, 16) for x in ts["tcp.flags"]]))
    check("seq_raw", df["seq_raw"], ints("tcp.seq_raw"))
    check("ack_raw", df["ack_raw"], ints("tcp.ack_raw"))
    check("seq", df["seq"], ints("tcp.seq"))
    check("ack", df["ack"], ints("tcp.ack"))
    check("len", df["len"], ints("tcp.len"))
    check("win_raw", df["win_raw"], ints("tcp.window_size_value"))
    check("win", df["win"], ints("tcp.window_size"))
    for ours, col in (("mss", "tcp.options.mss_val"), ("wscale", "tcp.options.wscale.shift"),
                      ("tsval", "tcp.options.timestamp.tsval"),
                      ("tsecr", "tcp.options.timestamp.tsecr")):
        theirs = np.array([int(x) if x else -1 for x in ts[col]], dtype=np.int64)
        check(ours, df[ours].fillna(-1).astype(np.int64), theirs)
    check("sack_perm", df["sack_perm"], (ts["tcp.options.sack_perm"] != "").to_numpy())
    v4 = np.array([_inner_ip(p) == "ip" for p in ts["frame.protocols"]], dtype=bool)
    src = np.where(v4, ts["ip.src"], ts["ipv6.src"])
    dst = np.where(v4, ts["ip.dst"], ts["ipv6.dst"])
    check("src", df["src"].astype(object), src)
    check("dst", df["dst"].astype(object), dst)
    check("ipv", df["ipv"], np.where(v4, 4, 6))
    same = ~df["frame"].isin(list(time_differs)).to_numpy()
    epoch = np.array([float(x) for x in ts["frame.time_epoch"]])
    assert np.abs(df["time"].to_numpy() - epoch)[same].max() < 1e-6, "time differs by >= 1 us"
    rel = np.array([float(x) for x in ts["frame.time_relative"]])
    assert np.abs(df["t"].to_numpy() - rel)[same].max() < 1e-6, "t differs by >= 1 us"
    # flags names follow the bits
    for name, bit in (("SYN", 2), ("FIN", 1), ("RST", 4), ("PSH", 8), ("ACK", 16)):
        has = df["flags"].str.split("+").apply(lambda xs, n=name: n in xs).to_numpy()
        check(f"flags has {name}", has, (df["tcp_flags"].to_numpy() & bit) != 0)
    return df


# =========================================================================== capture writers
def read_pcap(path):
    """(linktype, units per second, records [(sec, frac, origlen, data)]) of a classic pcap."""
    d = Path(path).read_bytes()
    magic = d[:4]
    e = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    units = 10 ** 9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 10 ** 6
    linktype = struct.unpack_from(e + "I", d, 20)[0] & 0xFFFF
    off, recs = 24, []
    while off < len(d):
        s, f, il, ol = struct.unpack_from(e + "IIII", d, off)
        recs.append((s, f, ol, d[off + 16:off + 16 + il]))
        off += 16 + il
    return linktype, units, recs


def write_pcap(path, linktype, recs, *, big=False, nano=False, snaplen=262144):
    e = ">" if big else "<"
    with open(path, "wb") as f:
        f.write(struct.pack(e + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0,
                            snaplen, linktype))
        for s, frac, ol, data in recs:
            f.write(struct.pack(e + "IIII", s, frac, len(data), ol))
            f.write(data)
    return path


def _block(e, btype, body):
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def write_pcapng(path, interfaces, packets, *, big=False, sections=None, snaplen=262144):
    """interfaces: [(linktype, tsresol byte or None)]; packets: [(iface, ts, origlen, data,
    kind)] with kind "epb" or "spb". sections: optional list of (interfaces, packets, big)."""
    sections = sections or [(interfaces, packets, big)]
    out = io.BytesIO()
    for ifaces, pkts, big_ in sections:
        e = ">" if big_ else "<"
        out.write(_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)))
        for lt, res in ifaces:
            opts = b""
            if res is not None:
                opts += struct.pack(e + "HH", 9, 1) + bytes([res]) + b"\0\0\0"
            opts += struct.pack(e + "HH", 0, 0)
            out.write(_block(e, 1, struct.pack(e + "HHI", lt, 0, snaplen) + opts))
        for iface, ts, ol, data, kind in pkts:
            if kind == "spb":
                out.write(_block(e, 3, struct.pack(e + "I", ol) + data))
            else:
                out.write(_block(e, 6, struct.pack(e + "IIIII", iface, ts >> 32,
                                                   ts & 0xFFFFFFFF, len(data), ol) + data))
    Path(path).write_bytes(out.getvalue())
    return path


def relink(recs, strip, prefix=b""):
    """Replace the first `strip` bytes of every packet by `prefix`."""
    return [(s, f, ol - strip + len(prefix), prefix + d[strip:]) for s, f, ol, d in recs]


# =========================================================================== fixtures
def test_fixtures_exist_and_are_small():
    total = sum((DATA / f).stat().st_size for f in FIXTURES)
    assert total < 1_000_000, f"fixtures take {total} bytes"
    for f in FIXTURES:
        assert (DATA / f).stat().st_size > 1000, f


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_contents(name):
    """The fixtures hold what the tests rely on (handshake options, data both ways, FIN,
    RST, a reused 4-tuple, scaled windows)."""
    df = segments(DATA / name)
    assert df.attrs["packets"] >= len(df) > 30
    assert df["flags"].eq("SYN").any() and df["flags"].eq("SYN+ACK").any()
    syn = df[df["flags"] == "SYN"].iloc[0]
    assert syn["mss"] in (65495, 65476) and syn["sack_perm"]  # lo MTU 65536, v4 / v6
    assert pd.notna(syn["wscale"])
    assert pd.notna(syn["tsval"]) and syn["tsecr"] == 0
    assert df["flags"].str.contains("FIN").any()
    assert df["flags"].str.contains("RST").any()
    data = df[df["len"] > 0]
    assert data.groupby("stream")["sport"].nunique().max() == 2 or name == "zero_window.pcap"
    assert (df["win"] != df["win_raw"]).any(), "no scaled window"
    assert df["stream"].max() >= 3
    if name != "zero_window.pcap":  # abort_and_reuse: same 4-tuple, two streams
        four = df.groupby(["src", "sport", "dst", "dport"])["stream"].nunique()
        assert four.max() == 2


def test_fixture_link_types_and_formats():
    lt = {n: segments(DATA / n).attrs["linktypes"] for n in FIXTURES}
    assert lt["lo_ipv4.pcap"] == ["EN10MB"]
    assert lt["any_sll2.pcap"] == ["LINUX_SLL2"]
    assert lt["any_sll.pcap"] == ["LINUX_SLL"]
    assert lt["mixed.pcapng"] == ["EN10MB", "LINUX_SLL"]
    assert (DATA / "lo_nano.pcap").read_bytes()[:4] == b"\x4d\x3c\xb2\xa1"
    assert (DATA / "lo_ipv6.pcapng").read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    assert set(segments(DATA / "lo_ipv6.pcap")["ipv"]) == {6}
    assert set(segments(DATA / "any_sll2.pcap")["ipv"]) == {4, 6}
    assert set(segments(DATA / "lo_ipv6.pcap")["src"]) == {"::1"}


def test_schema_and_attrs():
    df = segments(DATA / "lo_ipv4.pcap")
    assert list(df.columns) == COLUMNS
    for c in ("frame", "ipv", "sport", "dport", "stream", "tcp_flags", "seq_raw", "ack_raw",
              "seq", "ack", "len", "win_raw", "win"):
        assert df[c].dtype == np.int64, c
    for c in ("time", "t"):
        assert df[c].dtype == np.float64
    for c in ("mss", "wscale", "tsval", "tsecr"):
        assert str(df[c].dtype) == "Int64", c
    assert df["sack_perm"].dtype == bool
    assert pd.api.types.is_string_dtype(df["src"]) and pd.api.types.is_string_dtype(df["flags"])
    n = len(read_pcap(DATA / "lo_ipv4.pcap")[2])
    assert df.attrs == {"path": str(DATA / "lo_ipv4.pcap"), "packets": n,
                        "linktypes": ["EN10MB"], "truncated": False, "skipped": {},
                        "anomalies": {}, "tunnels": {}}
    assert df["anomaly"].dtype == np.int64 and (df["anomaly"] == 0).all()
    assert df["frame"].is_monotonic_increasing and df["t"].iloc[0] == 0.0
    first = df.iloc[0]
    assert first["flags"] == "SYN" and first["seq"] == 0 and first["ack"] == 0
    assert df.iloc[1]["flags"] == "SYN+ACK" and df.iloc[1]["ack"] == 1


def test_import_is_light():
    code = ("import sys, helpers.dissect; "
            "print(any(m.split('.')[0] in ('pyshark', 'scapy') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


# =========================================================================== vs tshark
@needs_tshark
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_matches_tshark(name):
    assert_matches_tshark(DATA / name)


@needs_tshark
@pytest.mark.parametrize("big,nano", [(True, False), (True, True), (False, True)])
def test_classic_pcap_byte_orders_and_precision(tmp_path, big, nano):
    lt, units, recs = read_pcap(DATA / "lo_ipv4.pcap")
    if nano and units == 10 ** 6:
        recs = [(s, f * 1000 + 123, ol, d) for s, f, ol, d in recs]
    p = write_pcap(tmp_path / "x.pcap", lt, recs, big=big, nano=nano)
    df = assert_matches_tshark(p)
    ref = segments(DATA / "lo_ipv4.pcap")
    assert df.drop(columns=["time", "t"]).equals(ref.drop(columns=["time", "t"]))


@needs_tshark
@pytest.mark.parametrize("linktype,strip,prefix", [
    (101, 14, b""),                                    # RAW
    (12, 14, b""),                                     # RAW (OpenBSD number)
    (14, 14, b""),                                     # RAW (other BSDs)
    (228, 14, b""),                                    # IPV4
    (0, 14, struct.pack("<I", 2)),                     # NULL, little-endian AF_INET
    (0, 14, struct.pack(">I", 2)),                     # NULL written on a big-endian host
    (108, 14, struct.pack(">I", 2)),                   # LOOP: network byte order
    (1, 14, b"\0" * 12 + b"\x81\x00\x00\x05\x08\x00"),  # Ethernet + one 802.1Q tag
    (1, 14, b"\0" * 12 + b"\x88\xa8\x00\x07\x81\x00\x00\x05\x08\x00"),  # QinQ
])
def test_link_types_ipv4(tmp_path, linktype, strip, prefix):
    _, _, recs = read_pcap(DATA / "lo_ipv4.pcap")
    p = write_pcap(tmp_path / "x.pcap", linktype, relink(recs, strip, prefix))
    df = assert_matches_tshark(p)
    ref = segments(DATA / "lo_ipv4.pcap")
    assert df.drop(columns=["time", "t"]).equals(ref.drop(columns=["time", "t"]))


@needs_tshark
@pytest.mark.parametrize("linktype,strip,prefix", [
    (229, 14, b""),                                    # IPV6
    (101, 14, b""),                                    # RAW
    (0, 14, struct.pack("<I", 28)),                    # NULL, FreeBSD AF_INET6
    (0, 14, struct.pack("<I", 30)),                    # NULL, macOS AF_INET6
    (108, 14, struct.pack(">I", 24)),                  # LOOP, OpenBSD AF_INET6
    (1, 14, b"\0" * 12 + b"\x81\x00\x00\x05\x86\xdd"),  # 802.1Q
])
def test_link_types_ipv6(tmp_path, linktype, strip, prefix):
    _, _, recs = read_pcap(DATA / "lo_ipv6.pcap")
    p = write_pcap(tmp_path / "x.pcap", linktype, relink(recs, strip, prefix))
    assert_matches_tshark(p)


def _with_ipv6_ext(data: bytes, headers: list[tuple[int, bytes]]) -> bytes:
    """Insert IPv6 extension headers [(type, 8*k bytes after the next-header byte)]."""
    eth, ip6, rest = data[:14], bytearray(data[14:54]), data[54:]
    first_nh = ip6[6]
    chain = b""
    types = [t for t, _ in headers]
    for k, (t, body) in enumerate(headers):
        nxt = types[k + 1] if k + 1 < len(types) else first_nh
        chain += bytes([nxt]) + body
    ip6[6] = types[0]
    struct.pack_into(">H", ip6, 4, struct.unpack_from(">H", ip6, 4)[0] + len(chain))
    return eth + bytes(ip6) + chain + rest


@needs_tshark
def test_ipv6_extension_headers(tmp_path):
    _, _, recs = read_pcap(DATA / "lo_ipv6.pcap")
    hop = b"\x00" + b"\x01\x04\x00\x00\x00\x00"                 # PadN, 8 bytes
    dst = b"\x01" + b"\x01\x0c" + b"\0" * 12                     # 16 bytes
    frag = b"\x00" + b"\x00\x00" + b"\x12\x34\x56\x78"           # offset 0, M=0
    out = []
    for k, (s, f, ol, d) in enumerate(recs):
        hdrs = [(0, hop), (60, dst)] if k % 3 == 0 else [(60, dst)] if k % 3 == 1 else []
        nd = _with_ipv6_ext(d, hdrs) if hdrs else d
        out.append((s, f, ol + len(nd) - len(d), nd))
    p = write_pcap(tmp_path / "ext.pcap", 1, out)
    df = assert_matches_tshark(p)
    assert len(df) == len(recs)
    # a fragment header with offset 0: the TCP header is there, so the segment counts
    d = _with_ipv6_ext(recs[0][3], [(44, frag)])
    df = segments(write_pcap(tmp_path / "frag.pcap", 1, [(1, 0, len(d), d)]))
    assert len(df) == 1 and df["flags"].iloc[0] == "SYN" and df["mss"].iloc[0] == 65476
    # a later fragment (offset != 0) carries no TCP header: skipped, still counted
    later = frag[:1] + b"\x00\x08" + frag[3:]
    d2 = _with_ipv6_ext(recs[0][3], [(44, later)])
    with pytest.warns(dissect.NoTcpWarning, match="2 packets but no TCP segment"):
        df = segments(write_pcap(tmp_path / "frag2.pcap", 1, [(1, 0, len(d2), d2)] * 2))
    assert len(df) == 0 and df.attrs["packets"] == 2
    assert df.attrs["skipped"] == {"IP fragment after the first (no TCP header)": 2}


@needs_tshark
def test_non_tcp_packets_are_counted(tmp_path):
    """ARP, UDP, ICMP and an IPv4 fragment between TCP packets: skipped, but counted."""
    _, _, recs = read_pcap(DATA / "lo_ipv4.pcap")
    eth = b"\0" * 12
    arp = eth + b"\x08\x06" + bytes.fromhex("0001080006040001") + b"\0" * 20
    udp = (eth + b"\x08\x00" + bytes.fromhex("4500001c00004000401100007f0000017f000001")
           + bytes.fromhex("d43100350008" "0000"))
    icmp = (eth + b"\x08\x00" + bytes.fromhex("4500001c00004000400100007f0000017f000001")
            + bytes.fromhex("0800f7ff00000000"))
    frag = bytearray(recs[3][3])
    struct.pack_into(">H", frag, 14 + 6, 0x0010)            # fragment offset 16*8: no TCP
    s0, f0 = recs[0][0], recs[0][1]
    out = [(s0 - 1, f0, len(arp), arp)]                     # first packet of the file: ARP
    for k, r in enumerate(recs):
        out.append(r)
        if k == 5:
            out += [(r[0], r[1], len(udp), udp), (r[0], r[1], len(icmp), icmp)]
        if k == 9:
            out.append((r[0], r[1], len(frag), bytes(frag)))
    p = write_pcap(tmp_path / "mixed.pcap", 1, out)
    df = assert_matches_tshark(p)
    assert len(df) == len(recs) and df.attrs["packets"] == len(out)
    assert df.attrs["skipped"] == {
        "not IPv4/IPv6 (ARP, LLDP, ...) or cut before the IP header": 1,
        "IP but not TCP (UDP, ICMP, ...)": 2, "IP fragment after the first (no TCP header)": 1}
    assert df["frame"].iloc[0] == 2 and abs(df["t"].iloc[0] - 1.0) < 1e-9  # t from the ARP


@needs_tshark
@pytest.mark.parametrize("big", [False, True])
def test_pcapng_layouts(tmp_path, big):
    """Two interfaces with different link types and time resolutions, EPB and SPB, a
    second section; both byte orders."""
    _, _, r4 = read_pcap(DATA / "lo_ipv4.pcap")
    _, _, r6 = read_pcap(DATA / "any_sll2.pcap")
    pk = []
    for k, (s, f, ol, d) in enumerate(r4[:40]):
        pk.append((0, s * 10 ** 9 + f * 1000 + 7, ol, d, "epb"))          # ns, EN10MB
        s2, f2, ol2, d2 = r6[k]
        pk.append((1, int(round((s2 + f2 / 1e6) * 2 ** 20)), ol2, d2, "epb"))  # 2^-20 s
    ifaces = [(1, 9), (276, 0x80 | 20)]
    p = write_pcapng(tmp_path / "x.pcapng", ifaces, pk, big=big)
    df = assert_matches_tshark(p)
    assert df.attrs["linktypes"] == ["EN10MB", "LINUX_SLL2"]
    # a second section in the other byte order with its own interface table
    sec2 = [(1, None)], [(0, s * 10 ** 6 + f, ol, d, "epb") for s, f, ol, d in r4[40:]], not big
    p2 = write_pcapng(tmp_path / "y.pcapng", None, None,
                      sections=[(ifaces, pk, big), sec2])
    df2 = assert_matches_tshark(p2)
    assert df2.attrs["packets"] == len(pk) + len(r4) - 40


@needs_tshark
def test_pcapng_simple_packet_blocks(tmp_path):
    _, _, recs = read_pcap(DATA / "lo_ipv4.pcap")
    pk = [(0, 0, ol, d, "spb") for s, f, ol, d in recs]
    # an SPB holds min(original length, the interface's snap length) bytes
    p = write_pcapng(tmp_path / "spb.pcapng", [(1, None)], pk, snaplen=128)
    df = segments(p)
    ts = tshark_table(p)
    assert df["frame"].tolist() == [int(x) for x in ts["frame.number"]]
    assert df["seq"].tolist() == [int(x) for x in ts["tcp.seq"]]
    assert df["win"].tolist() == [int(x) for x in ts["tcp.window_size"]]
    assert (df["time"] == 0).all()      # SPBs carry no time stamp (tshark prints none)
    assert (ts["frame.time_epoch"] == "").all()


# ---------------------------------------------------------------- tshark's semantics
def _ports(p):
    return struct.unpack_from(">HH", p, 34)


def _set_ports(p: bytearray, s, d):
    struct.pack_into(">HH", p, 34, s, d)


def _conversation(recs, k):
    """Packets (indices) of the k-th conversation of a lo_ipv4-like capture."""
    keys = []
    for s, f, ol, d in recs:
        a, b = _ports(d)
        key = tuple(sorted((a, b)))
        if key not in keys:
            keys.append(key)
    key = keys[k]
    return [i for i, r in enumerate(recs) if tuple(sorted(_ports(r[3]))) == key]


@needs_tshark
def test_port_reuse_without_fin_or_rst(tmp_path):
    """tshark starts a new stream for a SYN whose seq differs from the 4-tuple's base
    seq, even when the earlier conversation never saw FIN or RST."""
    _, _, recs = read_pcap(DATA / "lo_ipv4.pcap")
    a = _conversation(recs, 0)
    b = _conversation(recs, 1)
    fin = [i for i in a if recs[i][3][47] & 0x01]
    keep_a = [i for i in a if i < fin[0]]                 # conversation 0 without its FINs
    pa = _ports(recs[a[0]][3])
    pb = _ports(recs[b[0]][3])
    out = [recs[i] for i in keep_a]
    for i in b[:8]:
        d = bytearray(recs[i][3])
        s_, d_ = _ports(d)
        _set_ports(d, *(pa if (s_, d_) == pb else pa[::-1]))
        out.append((recs[i][0], recs[i][1], recs[i][2], bytes(d)))
    p = write_pcap(tmp_path / "reuse.pcap", 1, out)
    df = assert_matches_tshark(p)
    assert df["stream"].nunique() == 2 and df["sport"].nunique() == 2


def _no_wscale(d: bytes) -> bytes:
    d = bytearray(d)
    assert d[70:73] == b"\x01\x03\x03"
    d[70:74] = b"\x01\x01\x01\x01"
    return bytes(d)


@needs_tshark
@pytest.mark.parametrize("case", ["syn_no_ws", "synack_no_ws", "no_synack", "no_syn",
                                  "no_handshake", "syn_only_no_ws"])
def test_window_scaling_rules(tmp_path, case):
    """Wireshark scales by the sender's shift once the sender's SYN (or SYN-ACK) carried
    a window scale, unless the other side's SYN/SYN-ACK showed it has none."""
    _, _, recs = read_pcap(DATA / "lo_ipv4.pcap")
    c = [recs[i] for i in _conversation(recs, 0)][:8]
    syn, synack, rest = c[0], c[1], c[2:]
    fix = {
        "syn_no_ws": [(syn[0], syn[1], syn[2], _no_wscale(syn[3])), synack] + rest,
        "synack_no_ws": [syn, (synack[0], synack[1], synack[2], _no_wscale(synack[3]))] + rest,
        "no_synack": [syn] + rest,
        "no_syn": [synack] + rest,
        "no_handshake": rest,
        "syn_only_no_ws": [(syn[0], syn[1], syn[2], _no_wscale(syn[3]))] + rest,
    }[case]
    df = assert_matches_tshark(write_pcap(tmp_path / f"{case}.pcap", 1, fix))
    data = df[~df["flags"].str.contains("SYN")]
    scaled = set(data.loc[data["win"] != data["win_raw"], "sport"])
    client = _ports(syn[3])[0]
    server = _ports(syn[3])[1]
    expect = {"syn_no_ws": set(), "synack_no_ws": set(), "no_synack": {client},
              "no_syn": {server}, "no_handshake": set(), "syn_only_no_ws": set()}[case]
    assert scaled == expect


@needs_tshark
def test_window_scale_option_on_a_data_segment(tmp_path):
    """Wireshark takes a window scale option from any segment: it applies from the next
    segment of that sender on (the segment itself still uses the old shift)."""
    _, _, recs = read_pcap(DATA / "lo_ipv4.pcap")
    c = [recs[i] for i in _conversation(recs, 0)]
    out = []
    for k, (s, f, ol, d) in enumerate(c):
        if k == 4:                              # NOP NOP TS -> WS(5) + 9 NOPs
            d = bytearray(d)
            assert d[54:58] == b"\x01\x01\x08\x0a"
            d[54:66] = bytes.fromhex("030305") + b"\x01" * 9
            d = bytes(d)
        out.append((s, f, ol, d))
    df = assert_matches_tshark(write_pcap(tmp_path / "ws.pcap", 1, out))
    sender = df["sport"].iloc[4]
    later = df.iloc[5:]
    later = later[later["sport"] == sender]
    assert (later["win"] == later["win_raw"] * 32).all() and len(later)
    assert df["win"].iloc[4] == df["win_raw"].iloc[4] << 10


@needs_tshark
def test_relative_numbers_without_handshake(tmp_path):
    """Mid-stream start: seq relative to (first seq - 1), ack to (first ack - 1)."""
    _, _, recs = read_pcap(DATA / "lo_ipv4.pcap")
    df = assert_matches_tshark(write_pcap(tmp_path / "mid.pcap", 1, recs[5:]))
    first = df.iloc[0]
    assert first["seq"] == 1 and first["ack"] == 1


# =========================================================================== errors
def test_missing_file(tmp_path):
    with pytest.raises(BadPcapError, match="does not exist"):
        segments(tmp_path / "nope.pcap")


def test_directory(tmp_path):
    with pytest.raises(BadPcapError, match="directory"):
        segments(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.pcap"
    p.write_bytes(b"")
    with pytest.raises(BadPcapError, match="empty") as e:
        segments(p)
    assert "fix:" in str(e.value)


def test_text_file(tmp_path):
    p = tmp_path / "notes.pcap"
    p.write_text("this is not a capture\n")
    with pytest.raises(BadPcapError, match="not a pcap or pcapng.*looks like text"):
        segments(p)


def test_gzip_file(tmp_path):
    p = tmp_path / "x.pcap.gz"
    p.write_bytes(gzip.compress((DATA / "lo_ipv4.pcap").read_bytes()))
    with pytest.raises(BadPcapError, match="gzip") as e:
        segments(p)
    assert "gunzip" in str(e.value)


def test_header_only_and_short_header(tmp_path):
    p = tmp_path / "h.pcap"
    p.write_bytes((DATA / "lo_ipv4.pcap").read_bytes()[:24])
    df = segments(p)
    assert len(df) == 0 and list(df.columns) == COLUMNS and df.attrs["packets"] == 0
    p.write_bytes((DATA / "lo_ipv4.pcap").read_bytes()[:10])
    with pytest.raises(BadPcapError, match="file header"):
        segments(p)


def test_corrupt_record_length(tmp_path):
    d = bytearray((DATA / "lo_ipv4.pcap").read_bytes())
    struct.pack_into("<I", d, 24 + 8, 0x7FFFFFF0)           # first record: absurd caplen
    p = tmp_path / "bad.pcap"
    p.write_bytes(bytes(d))
    with pytest.raises(BadPcapError, match="corrupt"):
        segments(p)


def test_unsupported_linktype(tmp_path):
    d = bytearray((DATA / "lo_ipv4.pcap").read_bytes())
    struct.pack_into("<I", d, 20, 105)
    p = tmp_path / "wifi.pcap"
    p.write_bytes(bytes(d))
    with pytest.raises(BadPcapError, match=r"link type 105 \(IEEE802_11\) is not supported"):
        segments(p)


@pytest.mark.parametrize("cut", [1, 20, 60])
def test_truncated_last_record(tmp_path, cut):
    src = (DATA / "lo_ipv4.pcap").read_bytes()
    _, _, recs = read_pcap(DATA / "lo_ipv4.pcap")
    p = tmp_path / "cut.pcap"
    p.write_bytes(src[:-cut])
    last = len(recs)
    need = 16 + len(recs[-1][3])
    with pytest.raises(BadPcapError) as e:
        segments(p)
    msg = str(e.value)
    if need - cut >= 12:      # the record header's length field is there
        assert f"file ends in the middle of packet {last} ({need - cut} of {need} bytes " \
               "present)" in msg
    else:
        assert f"middle of packet {last} ({need - cut} of 16 bytes of its 16-byte record " \
               "header present)" in msg
    assert "allow_truncated=True" in msg and "SIGINT" in msg
    df = segments(p, allow_truncated=True)
    full = segments(DATA / "lo_ipv4.pcap")
    assert df.attrs["truncated"] is True and df.attrs["packets"] == last - 1
    pd.testing.assert_frame_equal(df, full.iloc[:-1], check_like=False, obj="prefix")


def test_truncated_inside_record_header(tmp_path):
    src = (DATA / "lo_ipv4.pcap").read_bytes()
    n = len(read_pcap(DATA / "lo_ipv4.pcap")[2])
    p = tmp_path / "cut.pcap"
    p.write_bytes(src + b"\x01\x02\x03\x04\x05")
    with pytest.raises(BadPcapError, match=rf"packet {n + 1} \(5 of 16 bytes of its 16-byte"):
        segments(p)
    assert segments(p, allow_truncated=True).attrs["packets"] == n


def test_truncated_pcapng(tmp_path):
    src = (DATA / "lo_ipv6.pcapng").read_bytes()
    n = segments(DATA / "lo_ipv6.pcapng").attrs["packets"]
    p = tmp_path / "cut.pcapng"
    p.write_bytes(src[:-30])
    with pytest.raises(BadPcapError, match=f"middle of packet {n} "):
        segments(p)
    df = segments(p, allow_truncated=True)
    assert df.attrs["packets"] == n - 1 and df.attrs["truncated"]


def test_every_cut_point_is_handled(tmp_path):
    """Cutting the file anywhere gives a clean error, and allow_truncated=True a prefix."""
    src = (DATA / "zero_window.pcap").read_bytes()
    full = segments(DATA / "zero_window.pcap")
    p = tmp_path / "cut.pcap"
    for cut in range(25, len(src), 97):
        p.write_bytes(src[:cut])
        try:
            segments(p)
        except BadPcapError as e:
            assert "file ends in the middle" in str(e)
        df = segments(p, allow_truncated=True)
        assert df["frame"].tolist() == full["frame"].tolist()[:len(df)]
        assert df["seq"].tolist() == full["seq"].tolist()[:len(df)]


@pytest.mark.parametrize("name", ["lo_ipv4.pcap", "lo_ipv6.pcapng", "any_sll2.pcap",
                                  "dissect/tunnels.pcap", "dissect/ip6_len_exceeds.pcap"])
def test_random_corruption_never_crashes(tmp_path, name):
    """Flipped bytes anywhere: a DataFrame or a BadPcapError, never another exception;
    every packet is a row or a counted skip, and no length is negative."""
    src = (DATA / name).read_bytes()
    rng = random.Random(1234)
    p = tmp_path / Path(name).name
    for _ in range(150):
        d = bytearray(src)
        for _ in range(rng.randint(1, 12)):
            d[rng.randrange(len(d))] = rng.randrange(256)
        p.write_bytes(bytes(d))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dissect.NoTcpWarning)
                df = segments(p)
        except BadPcapError:
            continue
        assert list(df.columns) == COLUMNS
        assert df.attrs["packets"] == len(df) + sum(df.attrs["skipped"].values())
        assert (df["len"] >= 0).all()


# =========================================================================== expert
def _tshark_labels(path) -> dict[int, tuple[str, ...]]:
    flags = list(dissect.EXPERT_LABELS)
    cmd = ["tshark", "-r", str(path), "-Y", "tcp.analysis.flags", "-T", "fields",
           "-e", "frame.number"]
    for f in flags:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        cols = line.split("\t")
        labs = {dissect.EXPERT_LABELS[f] for f, v in zip(flags, cols[1:]) if v}
        if labs:
            res[int(cols[0])] = labs
    return res


@needs_tshark
@pytest.mark.parametrize("name", ["zero_window.pcap", "lo_ipv4.pcap", "mixed.pcapng"])
def test_expert_matches_tshark(name):
    e = expert(DATA / name)
    assert list(e.columns) == ["frame", "labels", "info"]
    got = {int(f): set(lab) for f, lab in zip(e["frame"], e["labels"])}
    assert got == _tshark_labels(DATA / name)
    assert all(isinstance(x, tuple) and x for x in e["labels"])
    assert all(isinstance(x, str) and x for x in e["info"])


@needs_tshark
def test_expert_several_labels_in_one_frame(tmp_path):
    """Duplicated packets: retransmissions that also fill the window, dup ACKs."""
    _, _, recs = read_pcap(DATA / "zero_window.pcap")
    out = []
    for k, r in enumerate(recs):
        out.append(r)
        if 18 <= k <= 28:
            out.append(r)
    p = write_pcap(tmp_path / "dups.pcap", 1, out)
    e = expert(p)
    got = {int(f): set(lab) for f, lab in zip(e["frame"], e["labels"])}
    assert got == _tshark_labels(p)
    multi = e[e["labels"].apply(len) > 1]
    assert len(multi) > 0
    assert all(len(i.split("; ")) >= len(lab) for i, lab in zip(multi["info"], multi["labels"]))


@needs_tshark
def test_expert_zero_window_labels():
    """A receiver that stops reading: Wireshark 4.0 labels the receiver's ACKs
    zero_window, Linux's probes (empty segment at snd_una - 1) keep_alive, the ACK that
    reopens the window window_update; the SYN dropped by a full accept queue and sent
    again 1 s later is a retransmission."""
    e = expert(DATA / "zero_window.pcap")
    labels = [lab for labs in e["labels"] for lab in labs]
    for lab in ("zero_window", "keep_alive", "window_update", "window_full", "retransmission"):
        assert lab in labels, lab
    assert "zero_window_probe" not in labels
    df = with_expert(segments(DATA / "zero_window.pcap"), e)
    zw = df[df["labels"].apply(lambda x: "zero_window" in x)]
    assert (zw["win"] == 0).all() and len(zw) >= 2
    ka = df[df["labels"].apply(lambda x: "keep_alive" in x)]
    assert (ka["len"] == 0).all() and len(ka) >= 2
    # each probe sits one byte below the data already sent
    assert (ka["seq"] < df.loc[df["stream"] == ka["stream"].iloc[0], "seq"].max()).all()
    retx = df[df["labels"].apply(lambda x: "retransmission" in x)]
    assert retx["flags"].tolist() == ["SYN"]
    assert e.loc[e["labels"].apply(lambda x: "zero_window" in x), "info"].iloc[0] == \
        dissect.EXPERT_MESSAGES["zero_window"] == "TCP Zero Window segment"


@needs_tshark
def test_with_expert_merges_by_frame():
    seg = segments(DATA / "lo_ipv4.pcap")
    df = with_expert(seg)
    assert list(df.columns) == COLUMNS + ["labels", "expert_info"]
    assert len(df) == len(seg)
    reused = df[df["labels"].apply(lambda x: "reused_ports" in x)]
    assert len(reused) == 1 and reused["flags"].iloc[0] == "SYN"
    assert reused["stream"].iloc[0] == 2
    none = df[df["labels"].apply(len) == 0]
    assert (none["expert_info"] == "").all() and len(none) > 0


@needs_tshark
def test_expert_inside_running_event_loop():
    """What a Jupyter cell does: a synchronous call while an event loop is running."""
    async def cell():
        assert asyncio.get_running_loop().is_running()
        return expert(DATA / "zero_window.pcap"), pyshark_summary(DATA / "lo_ipv4.pcap", limit=3)
    e, s = asyncio.run(cell())
    assert "zero_window" in {x for labs in e["labels"] for x in labs}
    assert s["frame"].tolist() == [1, 2, 3]


@needs_tshark
def test_expert_after_pyshark_grabbed_the_child_watcher():
    """A learner first used pyshark directly in the notebook: pyshark then installs a
    SafeChildWatcher bound to the kernel's loop, which is blocked while the cell runs,
    so tshark's exit would go unseen (each call stalled ~20 s before the fix). Run in a
    fresh interpreter whose main thread runs the loop, as in a Jupyter kernel."""
    script = f"""
import asyncio, time
import pyshark
from helpers.dissect import expert
async def cell():
    pyshark.FileCapture({str(DATA / "lo_ipv4.pcap")!r})    # sets up the watcher only
    assert type(asyncio.get_child_watcher()).__name__ == "SafeChildWatcher"
    t0 = time.monotonic()
    e = expert({str(DATA / "zero_window.pcap")!r})
    print(len(e), round(time.monotonic() - t0, 2))
asyncio.run(cell())
"""
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rows, seconds = r.stdout.split()
    assert int(rows) > 0
    assert float(seconds) < 8, f"expert() stalled for {seconds} s"


def test_expert_without_tshark(monkeypatch):
    monkeypatch.setattr(wireshark.shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(MissingToolError, match="tshark") as e:
        expert(DATA / "lo_ipv4.pcap")
    assert e.value.tool == "tshark" and "apt-get install tshark" in str(e.value)
    with pytest.raises(MissingToolError):
        pyshark_summary(DATA / "lo_ipv4.pcap")


def test_expert_bad_file(tmp_path):
    p = tmp_path / "t.pcap"
    p.write_text("hello")
    with pytest.raises(BadPcapError, match="looks like text"):
        expert(p)
    with pytest.raises(BadPcapError, match="does not exist"):
        expert(tmp_path / "missing.pcap")


def test_expert_truncated_file(tmp_path):
    """tshark would report a 'crash'; the course names the problem instead."""
    p = tmp_path / "cut.pcap"
    p.write_bytes((DATA / "zero_window.pcap").read_bytes()[:-20])
    for fn in (expert, pyshark_summary, scapy_packets):
        with pytest.raises(BadPcapError, match="ends in the middle of a packet") as e:
            fn(p)
        assert "allow_truncated=True" in str(e.value)


@needs_tshark
def test_expert_bad_display_filter():
    with pytest.raises(ParameterError, match="display filter"):
        expert(DATA / "lo_ipv4.pcap", display_filter="tcp.port ==")


@needs_tshark
def test_expert_display_filter_restricts():
    all_ = expert(DATA / "zero_window.pcap")
    some = expert(DATA / "zero_window.pcap", display_filter="tcp.len == 0")
    assert 0 < len(some) < len(all_)
    assert set(some["frame"]) <= set(all_["frame"])


# =========================================================================== pyshark / scapy
@needs_tshark
@pytest.mark.parametrize("name", ["lo_ipv4.pcap", "mixed.pcapng"])
def test_pyshark_summary_agrees_with_segments(name):
    s = pyshark_summary(DATA / name, limit=40)
    seg = segments(DATA / name).iloc[:40]
    assert len(s) == 40
    assert s["frame"].tolist() == seg["frame"].tolist()
    assert s["flags"].tolist() == seg["flags"].tolist()
    assert s["src"].tolist() == seg["src"].tolist()
    assert np.abs(s["time"].to_numpy() - seg["time"].to_numpy()).max() < 1e-5
    assert all("→" in i or "->" in i for i in s["info"])
    full = pyshark_summary(DATA / name, limit=None)
    assert len(full) == len(segments(DATA / name))


@pytest.mark.parametrize("name", FIXTURES)
def test_scapy_packets_agree_with_segments(name):
    from scapy.layers.inet import TCP
    pkts = scapy_packets(DATA / name)
    seg = segments(DATA / name)
    assert len(pkts) == len(seg)
    assert [p[TCP].seq for p in pkts] == seg["seq_raw"].tolist()
    assert [p[TCP].window for p in pkts] == seg["win_raw"].tolist()
    assert np.abs(np.array([float(p.time) for p in pkts]) - seg["time"].to_numpy()).max() < 1e-6
    assert len(scapy_packets(DATA / name, limit=5)) == 5


# =========================================================================== live capture
def _can_capture() -> bool:
    if not shutil.which("tcpdump"):
        return False
    if os.geteuid() == 0:
        return True
    try:  # CAP_NET_RAW without root: ask tcpdump itself
        r = subprocess.run(["tcpdump", "-i", "lo", "-c", "1", "-w", os.devnull, "-n",
                            "tcp port 9"], capture_output=True, text=True, timeout=2)
        return "permission" not in r.stderr.lower()
    except subprocess.TimeoutExpired:
        return True


def _make_fixtures_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


live = pytest.mark.live
needs_capture = pytest.mark.skipif(not _can_capture(),
                                   reason="live capture needs root or CAP_NET_RAW and tcpdump")


@live
@needs_capture
@needs_tshark
@pytest.mark.parametrize("iface,hosts,extra", [
    ("lo", ["127.0.0.1"], ()),
    ("lo", ["::1"], ("--time-stamp-precision=nano",)),
    ("any", ["127.0.0.1", "::1"], ("-y", "LINUX_SLL2")),
])
def test_live_capture_matches_tshark(tmp_path, iface, hosts, extra):
    mf = _make_fixtures_module()
    bpf, run, sentinel = mf.standard(hosts, bulk_bytes=256 * 1024)
    p = tmp_path / "live.pcap"
    with mf.Tcpdump(p, iface, bpf, *extra, sentinel=sentinel):
        run()
    df = assert_matches_tshark(p)
    assert df["flags"].eq("SYN").sum() >= 3 * len(hosts)
    assert not subprocess.run(["pgrep", "-f", str(p)], capture_output=True).stdout


@live
@needs_capture
@needs_tshark
def test_live_zero_window_expert(tmp_path):
    mf = _make_fixtures_module()
    p = tmp_path / "zw.pcap"
    bpf, run, sentinel = mf.zero_window_traffic()
    with mf.Tcpdump(p, "lo", bpf, sentinel=sentinel):
        run()
    assert_matches_tshark(p)
    labels = {lab for labs in expert(p)["labels"] for lab in labs}
    assert {"zero_window", "keep_alive", "window_update", "retransmission"} <= labels
