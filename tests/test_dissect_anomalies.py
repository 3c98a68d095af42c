"""segments() never answers silently wrong: IP lengths beyond the frame, TCP inside
tunnels, time stamps whose fraction is out of range (issue 9, item 9).

The fixtures are crafted byte by byte by tests/data/dissect/make_fixtures.py (committed,
and checked here to be exactly what the script writes); each is compared with tshark
where tshark is installed.
"""
from __future__ import annotations

import importlib.util
import struct
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import dissect, segtable
from helpers.dissect import (ANOMALY_IP_LEN, ANOMALY_TS_FRACTION, ANOMALY_TUNNEL, COLUMNS,
                             NoTcpWarning, segments)
from test_dissect import DATA as MAIN_DATA, FIXTURES as MAIN_FIXTURES, assert_matches_tshark, \
    needs_tshark, write_pcap

DATA = Path(__file__).resolve().parent / "data" / "dissect"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("dissect_fixtures", DATA / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MF = _fixture_module()
CRAFTED = sorted(MF.build())


def _expert_frames(path, text: str) -> list[int]:
    """Frames whose tshark expert messages contain text."""
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number",
                          "-e", "_ws.expert.message", "-E", "occurrence=a"],
                         capture_output=True, text=True, check=True).stdout
    return [int(line.split("\t")[0]) for line in out.splitlines() if text in line]


def test_fixtures_are_what_the_script_writes():
    built = MF.build()
    assert set(built) == {p.name for p in DATA.iterdir() if p.suffix in (".pcap", ".pcapng")}
    for name, data in built.items():
        assert (DATA / name).read_bytes() == data, f"{name}: run make_fixtures.py"


@pytest.mark.parametrize("name", CRAFTED + MAIN_FIXTURES)
def test_every_packet_is_a_row_or_a_counted_skip(name):
    """packets == TCP rows + the skipped counts, whatever the file holds."""
    path = (DATA if name in CRAFTED else MAIN_DATA) / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoTcpWarning)
        df = segments(path)
    assert df.attrs["packets"] == len(df) + sum(df.attrs["skipped"].values())
    assert list(df.columns) == COLUMNS and df["anomaly"].dtype == np.int64
    for bit, name_ in dissect.ANOMALY_BITS.items():
        n = int((df["anomaly"] & bit).astype(bool).sum())
        if name_ != "ts_fraction":
            assert df.attrs["anomalies"].get(name_, 0) == n


# ------------------------------------------------------------------ IP length > frame
@needs_tshark
@pytest.mark.parametrize("name", ["ip4_len_exceeds.pcap", "ip6_len_exceeds.pcap",
                                  "ip4_len_exceeds.pcapng"])
def test_ip_length_beyond_the_frame_is_clipped_and_flagged(name):
    p = DATA / name
    df = assert_matches_tshark(p)                  # len: tshark's clipped tcp.len
    flagged = df.loc[(df["anomaly"] & ANOMALY_IP_LEN) != 0, "frame"].tolist()
    assert flagged == [5]
    assert flagged == _expert_frames(p, "length exceeds")
    row = df.set_index("frame").loc[5]
    assert row["len"] == 200, "the 200 payload bytes the frame holds, not the claimed 1400"
    assert df.attrs["anomalies"] == {"ip_len_clipped": 1}
    # frame 7 lost bytes to the snap length only: its honest IP length stands, unflagged
    cut = df.set_index("frame").loc[7]
    assert cut["len"] == 200 and cut["anomaly"] == 0


def test_ip_length_shorter_than_header_is_skipped_not_negative(tmp_path):
    """An IPv4 total length below the header length: no row with a made-up length."""
    d = bytearray((DATA / "ip4_len_exceeds.pcap").read_bytes())
    first = 24 + 16                                   # first record's data
    struct.pack_into(">H", d, first + 14 + 2, 12)     # total length 12 < 20
    p = tmp_path / "short.pcap"
    p.write_bytes(bytes(d))
    df = segments(p)
    assert 1 not in df["frame"].tolist() and len(df) == 11
    assert df.attrs["skipped"] == {"bad IP header (header or total length impossible)": 1}


# ------------------------------------------------------------------ tunnels
@needs_tshark
def test_tunnelled_tcp_matches_tshark():
    """VXLAN, Geneve, GRE (plain, key+seq, checksum, Ethernet), IP-in-IP, 6in4, 4in6,
    VXLAN over IPv6, Geneve carrying IPv6, GRE over IPv6: tshark's inner TCP, column by
    column (addresses are the inner ones)."""
    p = DATA / "tunnels.pcap"
    df = assert_matches_tshark(p, occurrence="l")
    per_conv = 12
    assert len(df) == 13 * per_conv and df["stream"].nunique() == 13
    assert df.attrs["tunnels"] == {"vxlan": 24, "geneve": 24, "gre": 60, "ipip": 12,
                                   "6in4": 12, "4in6": 12}
    plain = df["sport"].eq(41000) | df["dport"].eq(41000)
    assert ((df["anomaly"] & ANOMALY_TUNNEL) != 0).tolist() == (~plain).tolist()
    assert set(df["src"]) == {MF.C4, MF.S4, MF.C6, MF.S6}      # never the outer ones
    data = df[df["len"] > 0]
    assert set(data["len"]) == {100, 200}


@pytest.mark.parametrize("port,ver,kind,wrap", MF.TUNNELS, ids=[f"{k}-{p}" for p, _, k, _ in MF.TUNNELS])
def test_each_tunnel_kind_alone(tmp_path, port, ver, kind, wrap):
    p = tmp_path / f"{kind}.pcap"
    p.write_bytes(MF.pcap_bytes(MF.tunnel_packets(port, ver, wrap)))
    df = segments(p)
    assert len(df) == 12 and df.attrs["tunnels"] == {kind: 12}
    assert (df["anomaly"] == ANOMALY_TUNNEL).all() and set(df["ipv"]) == {ver}
    assert set(df["sport"]) == {port, 5000} and df["stream"].nunique() == 1
    assert df["len"].tolist() == [0, 0, 0, 100, 200, 100, 200, 100, 200, 0, 0, 0]
    assert df["seq"].tolist()[:4] == [0, 0, 1, 1] and df["win"].iloc[2] == 512 * 128


@needs_tshark
def test_unopened_tunnel_warns_and_counts():
    """GRE version 1 (PPTP, PPP inside): tshark finds the TCP, segments() does not open
    it; it says so: a warning and the count in attrs["skipped"]."""
    p = DATA / "tunnel_only.pcap"
    with pytest.warns(NoTcpWarning, match=r"12 packets but no TCP segment .*GRE version 1"):
        df = segments(p)
    assert len(df) == 0 and list(df.columns) == COLUMNS
    assert df.attrs["skipped"] == {segtable._SKIP[6]: 12}
    out = subprocess.run(["tshark", "-r", str(p), "-Y", "tcp", "-T", "fields", "-e",
                          "frame.number"], capture_output=True, text=True, check=True).stdout
    assert len(out.split()) == 12


def test_no_warning_when_some_tcp():
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoTcpWarning)
        assert len(segments(DATA / "tunnels.pcap")) > 0


def test_empty_capture_does_not_warn(tmp_path):
    p = tmp_path / "h.pcap"
    p.write_bytes((DATA / "tunnels.pcap").read_bytes()[:24])
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoTcpWarning)
        df = segments(p)
    assert len(df) == 0 and df.attrs["skipped"] == {}


def test_tunnels_nested_too_deep_are_counted(tmp_path):
    frames = MF.packets(MF.C4, MF.S4, 44000)
    out = []
    for f in frames:
        ipb = f[14:]
        for _ in range(5):                     # IP-in-IP five times
            ipb = MF.ip4(MF.O4A, MF.O4B, 4, ipb)
        out.append(MF.eth_ip(ipb))
    p = tmp_path / "deep.pcap"
    p.write_bytes(MF.pcap_bytes(out))
    with pytest.warns(NoTcpWarning):
        df = segments(p)
    assert df.attrs["skipped"] == {"tunnels nested deeper than 4": len(frames)}
    out3 = []
    for f in frames:                            # three levels: opened
        ipb = f[14:]
        for _ in range(3):
            ipb = MF.ip4(MF.O4A, MF.O4B, 4, ipb)
        out3.append(MF.eth_ip(ipb))
    p.write_bytes(MF.pcap_bytes(out3))
    df = segments(p)
    assert len(df) == len(frames) and set(df["src"]) == {MF.C4, MF.S4}


def test_inner_ip_length_is_bounded_by_the_outer_packet(tmp_path):
    """An inner IPv4 header that claims more than its outer packet holds is clipped."""
    frames = MF.packets(MF.C4, MF.S4, 45000)
    lie = bytearray(frames[3][14:])            # client data: 20 + 32 + 100 bytes
    struct.pack_into(">H", lie, 2, 1500)
    frames[3] = MF.eth_ip(bytes(lie))
    wrapped = [MF.eth(MF.ip4(MF.O4A, MF.O4B, 4, f[14:]), 0x0800) for f in frames]
    p = tmp_path / "inner.pcap"
    p.write_bytes(MF.pcap_bytes(wrapped))
    df = segments(p).set_index("frame")
    assert df.loc[4, "len"] == 100
    assert df.loc[4, "anomaly"] == ANOMALY_IP_LEN | ANOMALY_TUNNEL


# ------------------------------------------------------------------ time stamps
@needs_tshark
@pytest.mark.parametrize("name,unit", [("ts_usec_overflow.pcap", 10 ** 6),
                                       ("ts_nsec_overflow.pcap", 10 ** 9)])
def test_time_stamp_fraction_out_of_range_is_flagged(name, unit):
    p = DATA / name
    bad = _expert_frames(p, "Fractional second")
    assert bad == [4, 8]
    df = assert_matches_tshark(p, time_differs=bad)
    flagged = df.loc[(df["anomaly"] & ANOMALY_TS_FRACTION) != 0, "frame"].tolist()
    assert flagged == bad
    assert df.attrs["anomalies"] == {"ts_fraction": 2}
    t = df.set_index("frame")["time"]
    # normalised: seconds + fraction / units, so later than the seconds field says
    assert t[4] == pytest.approx(MF.T0 + 1.0, abs=1e-6)
    extra = (2 * unit - 1) / unit if unit == 10 ** 6 else 4.0
    assert t[8] == pytest.approx(MF.T0 + 1 + extra, abs=1e-6)


def test_time_stamp_fraction_on_a_non_tcp_record_is_counted(tmp_path):
    recs = [(MF.T0, 2_500_000, 42, b"\xff" * 12 + b"\x08\x06" + b"\0" * 28)]
    p = write_pcap(tmp_path / "arp.pcap", 1, recs)
    with pytest.warns(NoTcpWarning):
        df = segments(p)
    assert df.attrs["anomalies"] == {"ts_fraction": 1}
    assert df.attrs["skipped"] == {segtable._SKIP[1]: 1}


def test_pcapng_time_stamps_cannot_overflow():
    df = segments(DATA / "ip4_len_exceeds.pcapng")
    assert "ts_fraction" not in df.attrs["anomalies"]
    assert pd.Series(df["time"]).is_monotonic_increasing


def test_rows_stay_in_file_order_across_tunnel_kinds(tmp_path):
    """An IPv4-in-IPv6 packet before an IPv4-in-IPv4 one of the same flow: the tunnel rounds
    open them in another order, the rows must still come in file order (t never runs back)."""
    from scapy.all import IP, IPv6, TCP, Ether, wrpcap
    p1 = Ether() / IPv6(src="::1", dst="::1", nh=4) / IP(src="127.0.0.1", dst="127.0.0.2") / TCP(
        sport=1, dport=2, flags="S", seq=1000)
    p2 = Ether() / IP(src="127.0.0.1", dst="127.0.0.1", proto=4) / IP(src="127.0.0.1", dst="127.0.0.2") / TCP(
        sport=1, dport=2, flags="A", seq=1001)
    p1.time, p2.time = 1.0, 1.0004
    f = tmp_path / "mixed-tunnels.pcap"
    wrpcap(str(f), [p1, p2])
    df = dissect.segments(str(f))
    assert list(df["frame"]) == [1, 2] and df["t"].is_monotonic_increasing, df
    assert list(df["seq_raw"]) == [1000, 1001] and set(df["src"]) == {"127.0.0.1"}, df
