"""Dissection: a capture file to a pandas DataFrame of TCP segments, and Wireshark's view.

This module is the front door; the work is done in three layers:
:mod:`helpers.pcapfile` (reading pcap/pcapng bytes), :mod:`helpers.segtable` (the segment
table and the retransmission detector) and :mod:`helpers.wireshark` (pyshark and scapy).

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
    :func:`assert_labels` asserts labels on any tshark version (3.6, 4.0, 4.2) and
    says what differs from the version the corpus was dissected with
    (:func:`version_report`, :func:`label_probe`).
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
    anomaly    int    bit field, 0 for an ordinary row (names in ANOMALY_BITS):
                      1 ip_len_clipped  the IPv4 total length (IPv6 payload length)
                        claimed more bytes than the frame (or the enclosing tunnel
                        packet) has: ``len`` is clipped to what the frame holds, as
                        tshark does ("IPv4 total length exceeds packet length"). A frame
                        only cut by the snap length (caplen < wire length) is not
                        flagged: its IP length is honest and ``len`` follows it.
                      2 ts_fraction  the pcap record's fraction (µs or ns) was >= 1 s;
                        ``time`` is normalised (seconds + fraction / units) where
                        tshark prints the invalid value ("Fractional second ... is
                        invalid"). pcapng time stamps cannot be out of range.
                      4 tunnel  TCP found inside VXLAN (UDP 4789), Geneve (UDP 6081),
                        GRE version 0 (IPv4, IPv6 or Ethernet inside, with or without
                        checksum, key, sequence number), IP-in-IP, IPv6-in-IPv4,
                        IPv4-in-IPv6 or IPv6-in-IPv6 (up to 4 levels): ``src``, ``dst``,
                        ports and ``ipv`` are the inner packet's, as tshark's ``tcp``
                        and innermost ``ip``/``ipv6`` fields.

``df.attrs``: ``path``, ``packets`` (packets in the file), ``linktypes`` (link-type
names, one per capture interface), ``truncated`` (True when ``allow_truncated`` dropped
a partial last record), ``skipped`` ({reason: packets} for every packet that gave no
TCP row: not IP, IP but not TCP, later fragments, cut short, bad IP header, a tunnel not
opened (GRE version 1/PPTP, ...), tunnels nested too deep; ``packets`` always equals
``len(df) + sum(skipped.values())``), ``anomalies`` ({name: count}: rows for
ip_len_clipped and tunnel, records for ts_fraction) and ``tunnels`` ({kind: rows}).
A file that has packets but no TCP row raises a :class:`NoTcpWarning` naming the
reasons.

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
- len: IP total (or payload) length minus headers, never the captured length, but
  clipped to the frame's wire length when the IP header claims more (flagged).
- Fragments (never seen on loopback, where TCP sets DF): the TCP header in a first
  fragment is read, later fragments are skipped. tshark differs here: it reassembles
  and shows the segment at the last fragment.
- Simple packet blocks (pcapng SPB) have no time stamp: ``time`` is 0 there (tshark
  prints nothing).
"""
from __future__ import annotations

from .pcapfile import LINKTYPES
from .segtable import (ANOMALY_BITS, ANOMALY_IP_LEN, ANOMALY_TS_FRACTION, ANOMALY_TUNNEL,
                       COLUMNS, TUNNELS, NoTcpWarning, retransmissions, retransmitted,
                       segments)
from .wireshark import (EXPERT_LABELS, EXPERT_MESSAGES, WIRESHARK_CHANGES, assert_labels,
                        expert, label_probe, manifest_tshark_version, pyshark_summary,
                        scapy_packets, tshark_version, version_report, with_expert)

__all__ = ["segments", "expert", "with_expert", "pyshark_summary", "scapy_packets",
           "retransmitted", "retransmissions",
           "LINKTYPES", "EXPERT_LABELS", "COLUMNS", "ANOMALY_BITS", "ANOMALY_IP_LEN",
           "ANOMALY_TS_FRACTION", "ANOMALY_TUNNEL", "TUNNELS", "NoTcpWarning",
           "EXPERT_MESSAGES", "WIRESHARK_CHANGES", "assert_labels", "label_probe",
           "manifest_tshark_version", "tshark_version", "version_report"]
