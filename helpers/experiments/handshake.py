"""Chapter 01_02: the three-way handshake, seen on the wire and in the kernel.

Experiments:

- :func:`handshake`: two short connections on lo, captured; the client sets TCP_MAXSEG and
  SO_RCVBUF before connect(). Every option in the SYN and the SYN-ACK is predicted by a
  kernel rule (:mod:`helpers.rules`) evaluated on the machine the capture was made on.
- :func:`synack_options`: a client in one namespace whose ``tcp_sack`` / ``tcp_timestamps``
  may be off, a server in another (defaults), joined by a veth pair: the SYN-ACK carries
  SACK permitted and timestamps only when the SYN offered them.
- :func:`rcvbuf_autotuning`: a bulk transfer into a receiver with SO_RCVBUF unset (the
  kernel grows the buffer, up to ``tcp_rmem[2]``) and into one with SO_RCVBUF set (the
  buffer stays put: setting it turns autotuning off).
- :func:`kernel_answers`: the kernel completes handshakes for a listener that never accepts.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from .. import rules
from ..params import Param
from ..servers import Server, connect, listener, recv_until, request_response
from .base import Result, experiment

REQUEST = b"ping\n"
REPLY = b"pong\n"
TS_OPTION_LEN = 12          # NOP NOP TIMESTAMP(10): carried by every segment once negotiated


def handshakes(df):
    """The first three segments of every stream: {stream: (syn, synack, ack) rows}."""
    out = {}
    for stream, seg in df.groupby("stream", sort=True):
        if len(seg) >= 3:
            out[stream] = tuple(seg.iloc[i] for i in range(3))
    return out


def isn_table(result: Result):
    """Per connection: the client's ISN, the SYN-ACK's ack, the server's ISN, the final ACK's ack."""
    import pandas as pd
    return pd.DataFrame([{"stream": stream, "client ISN x": syn.seq_raw, "SYN-ACK ack": synack.ack_raw,
                          "server ISN y": synack.seq_raw, "final ACK ack": ack.ack_raw}
                         for stream, (syn, synack, ack) in handshakes(result.segments()).items()])


@dataclass
class ScaledWindow:
    """The first segment after a handshake, its window field, the shift its sender announced,
    and the window in bytes as our dissector and (where tshark exists) Wireshark read it."""

    sender: str
    sender_segment: str      # "SYN" or "SYN+ACK": where the sender announced its shift
    shift: int
    field: int
    window: int              # as our dissector scaled it
    frame: int
    wireshark: int | None    # Wireshark's calculated window (Info "Win="), None without tshark

    def check(self) -> None:
        """Two independent dissectors must read the same window in bytes from the field and
        the shift announced in the sender's own SYN/SYN-ACK (the dissector's own arithmetic
        is unit-tested in tests/test_handshake_rules.py)."""
        if self.wireshark is None:
            print(f"window {self.window} (no tshark here: Wireshark's reading not compared)")
            return
        assert self.window == self.wireshark, \
            (f"frame {self.frame}: our dissector reads window {self.window} (field {self.field} << {self.shift}), "
             f"Wireshark reads {self.wireshark}")


def scaled_window(result: Result, *, wireshark: bool | None = None) -> ScaledWindow:
    """The first segment after the first handshake, read with its sender's window scale,
    and Wireshark's reading of the same frame (where tshark exists)."""
    from ..caps import capabilities
    df = result.segments()
    first = df[df.stream == df.stream.min()]
    seg = first.iloc[3]
    own = first.iloc[0] if seg.src == first.iloc[0].src and seg.sport == first.iloc[0].sport else first.iloc[1]
    if wireshark is None:
        wireshark = bool(capabilities().tshark)
    ws_win = None
    if wireshark:
        from .. import dissect
        ws = dissect.pyshark_summary(result.pcap, display_filter=f"frame.number == {int(seg.frame)}", limit=1)
        found = ws["info"].str.extract(r"Win=(\d+)")[0]
        assert len(ws) == 1 and found.notna().all(), f"Wireshark shows no window for frame {int(seg.frame)}"
        ws_win = int(found.iloc[0])
    return ScaledWindow(f"{seg.src}:{seg.sport}", own["flags"], int(own.wscale), int(seg.win_raw), int(seg.win),
                        int(seg.frame), ws_win)


def _offered(row) -> dict:
    """The options one SYN or SYN-ACK row carries."""
    import pandas as pd
    return {"mss": None if pd.isna(row.mss) else int(row.mss),
            "sack_perm": bool(row.sack_perm),
            "timestamps": not pd.isna(row.tsval),
            "wscale": None if pd.isna(row.wscale) else int(row.wscale),
            "window": int(row.win_raw)}


# --------------------------------------------------------------------------------------
# what the rules predict for the SYN and the SYN-ACK
# --------------------------------------------------------------------------------------
def client_rcvbuf(m: rules.Machine, requested: int | None) -> rules.Prediction | None:
    """SO_RCVBUF as the kernel stores it (doubled, capped by rmem_max); None when unset."""
    if requested is None:
        return None
    return rules.sock_setsockopt_buf(requested, m.sysctls.get("rmem_max") or 0)


def syn_window(m: rules.Machine, *, stored_rcvbuf: int | None, mss: int) -> rules.Prediction:
    """The window field and the window scale of a SYN (tcp_connect_init →
    tcp_select_initial_window): the receive buffer's payload share, rounded down to the
    MSS, at most 65,535; SO_RCVBUF set before connect() also clamps the window."""
    buf = stored_rcvbuf if stored_rcvbuf is not None else (m.sysctls.get("tcp_rmem") or [0, 131072, 0])[1]
    space = rules.tcp_win_from_space(buf)
    pred = rules.tcp_select_initial_window(m, space, mss, window_clamp=space if stored_rcvbuf is not None else 0)
    pred.inputs = {"receive buffer": buf, **pred.inputs}
    return pred


def synack_window(m: rules.Machine, *, mss: int, timestamps: bool) -> rules.Prediction:
    """The window field of a SYN-ACK (tcp_openreq_init_rwin): as for a SYN, from the
    listener's buffer (tcp_rmem[1], SO_RCVBUF unset), with the MSS minus the 12 bytes of
    timestamps when they were negotiated."""
    return syn_window(m, stored_rcvbuf=None, mss=mss - (TS_OPTION_LEN if timestamps else 0))


@dataclass
class SynCheck:
    """One connection's SYN and SYN-ACK against the rules."""

    stream: int
    syn: dict
    synack: dict
    rcvbuf_set: int | None
    rcvbuf_got: int | None
    tcpinfo: dict
    server_max_window: int      # the largest window the server offered before the client read TCP_INFO

    def predictions(self, m: rules.Machine, params: dict) -> list[tuple[rules.Prediction, object, str]]:
        """(prediction, measured, what) for every claim about this handshake."""
        out = []
        stored = None
        buf = client_rcvbuf(m, params.get("rcvbuf"))
        if buf is not None:
            out.append((buf, self.rcvbuf_got, "getsockopt(SO_RCVBUF) after setting it"))
            stored = buf.value
        mss_pred = rules.Prediction("tcp_mss_default()", "min(MTU, 65535) − 40, or TCP_MAXSEG if set",
                                    {"lo MTU": m.lo_mtu, "TCP_MAXSEG": params.get("mss")},
                                    params.get("mss") or rules.tcp_mss_default(m.lo_mtu), unit="B")
        out.append((mss_pred, self.syn["mss"], "MSS in the SYN"))
        win = syn_window(m, stored_rcvbuf=stored, mss=mss_pred.value)
        out.append((_part(win, "rcv_wscale", "window scale"), self.syn["wscale"], "window scale in the SYN"))
        out.append((_part(win, "rcv_wnd", "window"), self.syn["window"], "window field of the SYN"))
        sa = rules.tcp_synack_options(m, syn_sack=self.syn["sack_perm"], syn_ts=self.syn["timestamps"],
                                      syn_wscale=self.syn["wscale"] is not None)
        got = {k: self.synack[k] for k in ("mss", "sack_perm", "timestamps", "wscale")}
        out.append((sa, got, "options in the SYN-ACK"))
        out.append((_part(synack_window(m, mss=sa.value["mss"], timestamps=sa.value["timestamps"]),
                          "rcv_wnd", "window"), self.synack["window"], "window field of the SYN-ACK"))
        return out

    def check(self, m: rules.Machine, params: dict, *, reference: str | None = None, quiet: bool = False) -> None:
        for pred, measured, what in self.predictions(m, params):
            pred.check(measured, f"stream {self.stream}: {what}", reference=reference, quiet=quiet)
        # the kernel's own view of the same handshake (TCP_INFO on the client)
        assert self.tcpinfo["rcv_wscale"] == self.syn["wscale"], \
            f"TCP_INFO rcv_wscale {self.tcpinfo['rcv_wscale']} differs from the SYN's {self.syn['wscale']}"
        assert self.tcpinfo["snd_wscale"] == self.synack["wscale"], \
            f"TCP_INFO snd_wscale {self.tcpinfo['snd_wscale']} differs from the SYN-ACK's {self.synack['wscale']}"
        self.maxseg_prediction().check(self.tcpinfo["tcp_maxseg"], f"stream {self.stream}: TCP_MAXSEG read back",
                                       reference=reference, quiet=quiet)

    def maxseg_prediction(self) -> rules.Prediction:
        ts = TS_OPTION_LEN if (self.syn["timestamps"] and self.synack["timestamps"]) else 0
        return rules.tcp_bound_to_half_wnd(min(self.syn["mss"], self.synack["mss"]), self.server_max_window,
                                           options_len=ts)


def _part(pred: rules.Prediction, key: str, label: str) -> rules.Prediction:
    """One field of a multi-valued prediction, as a prediction of its own."""
    return rules.Prediction(pred.rule, pred.formula if key == "rcv_wscale" else
                            "min(rounddown(payload share of the buffer, MSS), 65535)",
                            pred.inputs, pred.value[key], unit="" if key == "rcv_wscale" else "B")


def syn_checks(result: Result) -> list[SynCheck]:
    """One :class:`SynCheck` per connection of a :func:`handshake` result."""
    out = []
    clients = result.data["client"]
    df = result.segments()
    for i, (stream, (syn, synack, _)) in enumerate(sorted(handshakes(df).items())):
        c = clients[i] if i < len(clients) else {}
        seg = df[df.stream == stream]
        server = seg[seg.sport == synack.sport]
        replied = server[server["len"] > 0]
        upto = replied.frame.iloc[0] if len(replied) else server.frame.max()
        out.append(SynCheck(int(stream), _offered(syn), _offered(synack), c.get("so_rcvbuf_set"),
                            c.get("so_rcvbuf_got"),
                            {"rcv_wscale": c.get("rcv_wscale"), "snd_wscale": c.get("snd_wscale"),
                             "tcp_maxseg": c.get("tcp_maxseg_got")},
                            int(server[server.frame <= upto]["win"].max())))
    return out


# --------------------------------------------------------------------------------------
# the same packets through three readers
# --------------------------------------------------------------------------------------
@dataclass
class ReaderAgreement:
    """The capture read by the course's dissector, by Wireshark (pyshark) and by scapy."""

    segments: int
    wireshark: int | None          # None: tshark is not installed here
    scapy: int
    raw_seq_scapy: bool
    frames_flags_wireshark: bool | None
    rel_seq_wireshark: bool | None
    mss_scapy: int | None
    mss_dissect: int | None

    def check(self, quiet: bool = False) -> None:
        if not quiet:
            ws = "tshark missing: Wireshark not compared" if self.wireshark is None else \
                f"Wireshark {self.wireshark}"
            print(f"segments: dissector {self.segments}, {ws}, scapy {self.scapy}; "
                  f"MSS of the first SYN: scapy {self.mss_scapy}, dissector {self.mss_dissect}")
        assert self.scapy == self.segments, f"scapy reads {self.scapy} packets, the dissector {self.segments}"
        assert self.raw_seq_scapy, "scapy's sequence numbers differ from the dissector's seq_raw"
        assert self.mss_scapy == self.mss_dissect, "scapy and the dissector read different MSS options"
        if self.wireshark is not None:
            assert self.wireshark == self.segments, \
                f"Wireshark reads {self.wireshark} TCP packets, the dissector {self.segments}"
            assert self.frames_flags_wireshark, "Wireshark's frame numbers or flags differ from the dissector's"
            assert self.rel_seq_wireshark, "Wireshark's relative Seq= differs from the dissector's seq"


def reader_agreement(result: Result, *, wireshark: bool | None = None) -> ReaderAgreement:
    """Read *result*'s capture three ways and compare (Wireshark only where tshark exists)."""
    from .. import dissect
    from ..caps import capabilities
    df = result.segments()
    pkts = dissect.scapy_packets(result.pcap)
    mss_scapy = dict(pkts[0]["TCP"].options).get("MSS") if pkts else None
    if wireshark is None:
        wireshark = bool(capabilities().tshark)
    n_ws = ff = rel = None
    if wireshark:
        ws = dissect.pyshark_summary(result.pcap, display_filter="tcp", limit=None)
        n_ws = len(ws)
        ff = list(ws["frame"]) == list(df["frame"]) and list(ws["flags"]) == list(df["flags"])
        seq = ws["info"].str.extract(r"Seq=(\d+)")[0]
        rel = seq.notna().all() and [int(x) for x in seq] == [int(x) for x in df["seq"]]
    return ReaderAgreement(len(df), n_ws, len(pkts), [p["TCP"].seq for p in pkts] == [int(x) for x in df.seq_raw],
                           ff, rel, None if mss_scapy is None else int(mss_scapy),
                           None if len(df) == 0 else int(df.iloc[0].mss))


# --------------------------------------------------------------------------------------
# experiment 1: the handshake on lo
# --------------------------------------------------------------------------------------
def check_handshake(result: Result) -> None:
    """The 01_02 claims on one capture (live or replayed)."""
    df = result.segments()
    d = result.data
    m = result.machine_snapshot()
    hs = handshakes(df)
    assert len(hs) == d["connections"], f"expected {d['connections']} connections in the capture, found {len(hs)}"
    isns = []
    for stream, (syn, synack, ack) in hs.items():
        assert (syn["flags"], synack["flags"], ack["flags"]) == ("SYN", "SYN+ACK", "ACK"), \
            f"stream {stream}: first three segments are {syn['flags']}, {synack['flags']}, {ack['flags']}"
        assert synack.ack_raw == (syn.seq_raw + 1) % 2**32, "the SYN-ACK must acknowledge the client ISN + 1"
        assert ack.ack_raw == (synack.seq_raw + 1) % 2**32, "the final ACK must acknowledge the server ISN + 1"
        assert syn.sport == ack.sport == synack.dport, "the handshake must stay on one 4-tuple"
        isns += [syn.seq_raw, synack.seq_raw]
    assert len(set(isns)) == len(isns), "every ISN must differ (client and server, each connection)"
    for sc in syn_checks(result):
        sc.check(m, result.params, reference=result.reference(), quiet=True)
    data = df[df["len"] > 0]
    assert (data["len"] == len(REQUEST)).sum() >= 2 * d["connections"], "one request and one reply per connection"
    fins = df[df["flags"].str.contains("FIN")]
    assert len(fins) >= 2 * d["connections"], "each side sends a FIN at close"
    later = df[~df["flags"].isin(["SYN", "SYN+ACK"])]
    assert not later["sack_perm"].any() and later["mss"].isna().all() and later["wscale"].isna().all(), \
        "MSS, window scale and SACK permitted appear only in SYN and SYN-ACK"
    negotiated_ts = all(_offered(syn)["timestamps"] and _offered(sa)["timestamps"] for syn, sa, _ in hs.values())
    assert later["tsval"].notna().all() == negotiated_ts, \
        "once both SYNs carried timestamps, every later segment carries them"
    reader_agreement(result).check(quiet=True)


@experiment(
    "handshake", chapter="01_02", needs={"live_capture"},
    params=[
        Param("mss", "TCP_MAXSEG (client)", None, choices=(None, 536, 1400), unit="bytes",
              doc="the MSS the client announces in its SYN (set before connect)"),
        Param("rcvbuf", "SO_RCVBUF (client)", None, choices=(None, 4096, 65536, 1048576), unit="bytes",
              doc="the client's receive buffer before connect: it decides the window scale"),
    ],
    invariant=check_handshake,
    claim="SYN, SYN-ACK, ACK; ack = peer ISN + 1; ISNs differ; every SYN and SYN-ACK option as the "
          "kernel's rules predict from this machine's settings, TCP_MAXSEG and SO_RCVBUF",
)
def handshake(run, mss: int | None = None, rcvbuf: int | None = None, connections: int = 2) -> dict:
    """Capture `connections` short conversations (connect, ping/pong, close) on loopback.

    The client sets TCP_MAXSEG and SO_RCVBUF *before* connect(), so they shape its SYN.
    Returns per-connection kernel readings (SO_RCVBUF as stored by the kernel, the
    TCP_MAXSEG it reports, TCP_INFO window scales) next to the capture.
    """
    from ..kernel import tcp_info

    opts = []
    if mss is not None:
        opts.append((socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss))
    if rcvbuf is not None:
        opts.append((socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf))
    clients = []
    with Server(request_response(REPLY)) as srv:
        with run.capture([srv.port]):
            for _ in range(connections):
                with connect("127.0.0.1", srv.port, sockopts=opts) as c:
                    c.sendall(REQUEST)
                    reply = recv_until(c)
                    info = tcp_info(c).as_dict()
                    clients.append({
                        "port": c.getsockname()[1],
                        "so_rcvbuf_set": rcvbuf,
                        "so_rcvbuf_got": c.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                        "tcp_maxseg_got": c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG),
                        "reply": reply.decode(),
                        "snd_mss": info.get("snd_mss"), "rcv_mss": info.get("rcv_mss"),
                        "rcv_wscale": info.get("rcv_wscale"), "snd_wscale": info.get("snd_wscale"),
                    })
                _wait_for_time_wait(clients[-1]["port"])  # both FINs are in the capture
            time.sleep(0.02)
    return {"server_port": srv.port, "connections": connections, "params_mss": mss,
            "params_rcvbuf": rcvbuf, "client": clients}


def _wait_for_time_wait(port: int, timeout: float = 2.0) -> None:
    """Wait (bounded) until the connection of client port *port* has finished its teardown:
    every socket of it gone or in TIME-WAIT (whichever side closed first), so both FINs
    and their ACKs are on the wire. A fixed sleep lost the last FIN on a busy machine."""
    from ..kernel import ss
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = ss(port=port)
        if (rows["state"] == "TIME-WAIT").all():
            return
        time.sleep(0.005)


def syn_options(result: Result):
    """The options each side announced, one row per SYN / SYN-ACK in the capture."""
    import pandas as pd

    df = result.segments()
    syns = df[df["flags"].isin(["SYN", "SYN+ACK"])]
    rows = []
    for _, s in syns.iterrows():
        rows.append({"stream": s.stream, "segment": s["flags"], "from": f"{s.src}:{s.sport}",
                     "ISN (raw seq)": s.seq_raw, "MSS": s.mss, "window scale": s.wscale,
                     "window": s.win_raw, "SACK permitted": bool(s.sack_perm),
                     "timestamps": s.tsval is not pd.NA})
    return pd.DataFrame(rows)


def render(result: Result) -> list:
    """What the 01_02 panel shows: the banner, the SYN options, and the ladder of one connection."""
    from ..plots import ladder

    df = result.segments()
    first = df[df["stream"] == df["stream"].min()]
    d = result.data
    c = d["client"][0]
    note = (f"client SO_RCVBUF asked {c['so_rcvbuf_set'] or 'default'} → kernel reports {c['so_rcvbuf_got']}; "
            f"TCP_MAXSEG read back after connect: {c['tcp_maxseg_got']}")
    return [result, syn_options(result), note,
            ladder(first, title=f"connection 1 of {d['connections']}: mss={result.params['mss'] or 'default'}, "
                               f"rcvbuf={result.params['rcvbuf'] or 'default'}")]


# --------------------------------------------------------------------------------------
# experiment 2: a SYN without SACK / timestamps, across two namespaces
# --------------------------------------------------------------------------------------
CLIENT_ADDR, SERVER_ADDR = "192.0.2.1", "192.0.2.2"    # TEST-NET-1, only inside the two namespaces


def check_synack_options(result: Result) -> None:
    """Each option in the SYN-ACK iff the SYN offered it (and the server allows it); both
    ends' TCP_INFO agree on what was negotiated."""
    d = result.data
    df = result.segments()
    hs = handshakes(df)
    assert len(hs) == 1, f"expected one connection in the capture, found {len(hs)}"
    (syn, synack, ack), = hs.values()
    assert (syn["flags"], synack["flags"], ack["flags"]) == ("SYN", "SYN+ACK", "ACK")
    client_m = rules.Machine.from_dict(d["client_machine"])
    offered = _offered(syn)
    want_syn = {"sack_perm": bool(client_m.sysctls.get("tcp_sack")),
                "timestamps": bool(client_m.sysctls.get("tcp_timestamps"))}
    assert {k: offered[k] for k in want_syn} == want_syn, \
        f"the client's SYN offered {offered}, its namespace has tcp_sack/tcp_timestamps {want_syn}"
    sa = synack_prediction(result)
    sa.check(synack_seen(result), "options in the SYN-ACK", reference=result.reference(), quiet=True)
    win = synack_window(result.machine_snapshot(), mss=sa.value["mss"], timestamps=sa.value["timestamps"])
    _part(win, "rcv_wnd", "window").check(int(synack.win_raw), "window field of the SYN-ACK",
                                          reference=result.reference(), quiet=True)
    negotiated = {"sack": sa.value["sack_perm"], "timestamps": sa.value["timestamps"]}
    for side in ("client", "server"):
        got = {k: d[f"{side}_tcpinfo"][f"opt_{k}"] for k in negotiated}
        assert got == negotiated, f"TCP_INFO on the {side} says {got} was negotiated, expected {negotiated}"
    later = df.iloc[2:]
    assert not later["sack_perm"].any(), "SACK permitted appears only in SYN and SYN-ACK"
    assert later["tsval"].notna().all() == negotiated["timestamps"] or later.empty, \
        "after the handshake every segment carries timestamps exactly when they were negotiated"
    assert d["reply"] == REPLY.decode(), "the connection works either way"


def synack_seen(result: Result) -> dict:
    """The SYN-ACK's options as captured, in the shape :func:`synack_prediction` predicts."""
    (_, synack, _), = handshakes(result.segments()).values()
    o = _offered(synack)
    return {k: o[k] for k in ("mss", "sack_perm", "timestamps", "wscale")}


def synack_prediction(result: Result) -> rules.Prediction:
    """tcp_synack_options() on the server namespace, for the SYN this capture holds."""
    (syn, _, _), = handshakes(result.segments()).values()
    o = _offered(syn)
    return rules.tcp_synack_options(result.machine_snapshot(), syn_sack=o["sack_perm"], syn_ts=o["timestamps"],
                                    syn_wscale=o["wscale"] is not None, mtu=result.data["mtu"])


@experiment(
    "synack_options", chapter="01_02", needs={"live_capture", "namespaces"},
    params=[
        Param("client_sack", "client tcp_sack", 0, choices=(0, 1),
              doc="net.ipv4.tcp_sack in the client's namespace: 0, its SYN offers no SACK"),
        Param("client_timestamps", "client tcp_timestamps", 0, choices=(0, 1),
              doc="net.ipv4.tcp_timestamps in the client's namespace: 0, its SYN carries no timestamps"),
    ],
    invariant=check_synack_options,
    claim="a SYN-ACK carries SACK permitted and timestamps only if the SYN offered them",
)
def synack_options(run, client_sack: int = 0, client_timestamps: int = 0) -> dict:
    """A client namespace (tcp_sack, tcp_timestamps as given) and a server namespace
    (untouched defaults) joined by a veth pair; one connection, ping/pong, close, captured
    in the server's namespace. Records both namespaces' settings (taken before the
    traffic) and both ends' TCP_INFO."""
    from ..kernel import tcp_info
    from ..netns import Namespace

    with Namespace(name="hs-server") as srv_ns, \
            Namespace(name="hs-client", sysctls={"net.ipv4.tcp_sack": client_sack,
                                                 "net.ipv4.tcp_timestamps": client_timestamps}) as cli_ns:
        cli_ns.ip("link", "add", "hs-c", "type", "veth", "peer", "name", "hs-s", "netns", srv_ns.name)
        cli_ns.ip("addr", "add", f"{CLIENT_ADDR}/24", "dev", "hs-c")
        srv_ns.ip("addr", "add", f"{SERVER_ADDR}/24", "dev", "hs-s")
        cli_ns.ip("link", "set", "hs-c", "up")
        srv_ns.ip("link", "set", "hs-s", "up")
        mtu = int(open_mtu(srv_ns, "hs-s"))
        server_machine = rules.Machine.read(srv_ns, addresses=(CLIENT_ADDR,)).as_dict()
        client_machine = rules.Machine.read(cli_ns, addresses=(SERVER_ADDR,)).as_dict()
        lst = srv_ns.socket()
        lst.bind((SERVER_ADDR, 0))
        lst.listen(4)
        port = lst.getsockname()[1]
        with run.capture([port], ns=srv_ns, iface="any"):
            c = cli_ns.socket()
            c.settimeout(5)
            deadline = time.monotonic() + 5     # the veth link may need a moment to come up
            while True:
                try:
                    c.connect((SERVER_ADDR, port))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    c.close()
                    c = cli_ns.socket()
                    c.settimeout(5)
                    time.sleep(0.05)
            lst.settimeout(5)
            conn, _ = lst.accept()
            c.sendall(REQUEST)
            conn.settimeout(5)
            got = conn.recv(64)
            conn.sendall(REPLY)
            reply = recv_until(c)
            client_info, server_info = tcp_info(c).as_dict(), tcp_info(conn).as_dict()
            c.close()
            conn.close()
            time.sleep(0.05)
        lst.close()
    keep = ("opt_sack", "opt_timestamps", "opt_wscale", "rcv_wscale", "snd_wscale", "snd_mss", "rcv_mss")
    return {"port": port, "mtu": mtu, "client_sack": client_sack, "client_timestamps": client_timestamps,
            "machine": server_machine, "client_machine": client_machine,
            "request_seen": got.decode(), "reply": reply.decode(),
            "client_tcpinfo": {k: client_info.get(k) for k in keep},
            "server_tcpinfo": {k: server_info.get(k) for k in keep}}


def open_mtu(ns, dev: str) -> int:
    import re
    out = ns.ip("link", "show", dev).stdout
    return int(re.search(r"mtu (\d+)", out).group(1))


# --------------------------------------------------------------------------------------
# experiment 2b: SACK blocks appear in ACKs after a loss, not in the handshake only
# --------------------------------------------------------------------------------------
SACK_SEGMENTS = 12           # full-sized segments the client sends in one write
SACK_DROP_INDEX = 2          # the firewall drops the third full-sized data segment, once
SACK_MTU = 1500


@dataclass
class SackView:
    """What the receiver's ACKs carried around one lost segment."""

    sack_enabled: bool             # tcp_sack in the namespace (both ends)
    syn_offered: bool              # SACK permitted in the SYN and the SYN-ACK
    lost_seq: int | None           # relative seq of the segment sent twice (the dropped one)
    lost_len: int | None
    first_lost_frame: int | None
    acks_with_sack: list[dict]     # frame, ack, blocks (relative to the client's ISN)
    acks_before_loss_with_sack: int
    retransmitted_seqs: list[int]
    dropped_seq: int               # 1 + index × first segment's payload: where the dropped one starts

    def check(self, quiet: bool = False) -> None:
        if not quiet:
            print(f"tcp_sack={int(self.sack_enabled)}; SACK permitted in SYN and SYN-ACK: {self.syn_offered}; "
                  f"segment at seq {self.lost_seq} ({self.lost_len} B) sent twice; "
                  f"{len(self.acks_with_sack)} ACKs carried SACK blocks"
                  + (f", the first: ack {self.acks_with_sack[0]['ack']}, blocks {self.acks_with_sack[0]['blocks']}"
                     if self.acks_with_sack else ""))
        assert self.lost_seq == self.dropped_seq, \
            (f"the lowest segment sent twice starts at {self.lost_seq}; the firewall dropped data segment "
             f"#{SACK_DROP_INDEX} (from 0), which starts at {self.dropped_seq}")
        assert self.syn_offered == self.sack_enabled, "SACK permitted is in the SYNs exactly when tcp_sack is on"
        assert self.acks_before_loss_with_sack == 0, "no ACK carries SACK blocks before anything is lost"
        if not self.sack_enabled:
            assert not self.acks_with_sack, "with tcp_sack=0 no ACK carries SACK blocks, even after a loss"
            return
        dup = [a for a in self.acks_with_sack if a["ack"] == self.lost_seq]
        assert dup, "after the loss the receiver's duplicate ACKs (ack = the hole's start) carry SACK blocks"
        hole_end = self.lost_seq + self.lost_len
        for a in dup:   # (a later ACK may carry a D-SACK block for a segment received twice)
            assert any(b[0] == hole_end for b in a["blocks"]), \
                (f"a duplicate ACK for the hole ({self.lost_seq}) should SACK the data from its end "
                 f"({hole_end}) on: got blocks {a['blocks']}")


def sack_view(result: Result) -> SackView:
    """Read the capture of :func:`sack_blocks`: the dropped segment, and which ACKs carry SACK blocks."""
    from .. import dissect
    df = result.segments()
    d = result.data
    (syn, synack, _), = handshakes(df).values()
    client_isn = int(syn.seq_raw)
    pkts = dissect.scapy_packets(result.pcap)
    rex = dissect.retransmissions(df)
    rex = rex[rex["len"] > 0]
    lost = rex.sort_values("seq").iloc[0] if len(rex) else None   # the hole is the lowest resent seq
    # (a tail-loss probe may resend the last segment too, possibly first)
    first_lost = None
    if lost is not None:
        same = df[(df.sport == lost.sport) & (df.seq == lost.seq) & (df["len"] > 0)]
        first_lost = int(same.frame.iloc[0])
    acks, before = [], 0
    for row, pkt in zip(df.itertuples(), pkts):
        if row.sport != d["port"] or row.flags in ("SYN+ACK",):
            continue
        blocks = dict(pkt["TCP"].options).get("SAck")
        if not blocks:
            continue
        if first_lost is None or row.frame <= first_lost:
            before += 1
            continue
        edges = [(int(x) - client_isn) % 2**32 for x in blocks]
        acks.append({"frame": int(row.frame), "ack": int(row.ack),
                     "blocks": [list(edges[i:i + 2]) for i in range(0, len(edges), 2)]})
    m = result.machine_snapshot()
    return SackView(bool(m.sysctls.get("tcp_sack")), bool(syn.sack_perm) and bool(synack.sack_perm),
                    None if lost is None else int(lost.seq), None if lost is None else int(lost["len"]),
                    first_lost, acks, before, sorted({int(x) for x in rex.seq}),
                    1 + d["drop_index"] * int(df[(df.sport == syn.sport) & (df["len"] > 0)]["len"].iloc[0]))


def check_sack_blocks(result: Result) -> None:
    sack_view(result).check(quiet=True)
    assert result.data["received"] == result.data["sent"], "every byte arrives despite the loss"


@experiment(
    "sack_blocks", chapter="01_02", needs={"live_capture", "namespaces"},
    params=[Param("sack", "net.ipv4.tcp_sack", 1, choices=(0, 1),
                  doc="SACK on or off in the namespace (both ends)")],
    invariant=check_sack_blocks,
    claim="SACK permitted is negotiated in the SYNs; SACK blocks appear in ACKs after a loss (tcp_sack=1), never otherwise",
)
def sack_blocks(run, sack: int = 1) -> dict:
    """In a namespace (lo at MTU 1500, offloads off, tcp_sack as given), a client writes
    SACK_SEGMENTS full-sized segments at once; an iptables rule on INPUT drops the
    SACK_DROP_INDEX-th (from 0) full-sized data segment to the server once
    (``-m statistic --mode nth``). The server reads everything. Captured on lo."""
    from ..caps import find_tool
    from ..errors import CourseError
    from ..netns import Namespace

    if find_tool("iptables") is None:
        raise CourseError("iptables is not installed: the experiment drops one segment with a firewall rule "
                          "inside its namespace.", "install it: `apt-get install iptables`.")
    with Namespace(mtu=SACK_MTU, offloads=False, sysctls={"net.ipv4.tcp_sack": sack}, name="sack") as ns:
        machine = rules.Machine.read(ns).as_dict()
        lst = ns.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        port = lst.getsockname()[1]
        rule = ["INPUT", "-p", "tcp", "--dport", str(port), "-m", "length", "--length", f"{SACK_MTU - 100}:65535",
                "-m", "statistic", "--mode", "nth", "--every", "1000000", "--packet", str(SACK_DROP_INDEX),
                "-j", "DROP"]
        proc = ns.run(["iptables", "-w", "-A", *rule])
        if proc.returncode != 0:
            raise CourseError(f"iptables failed inside the namespace: {proc.stderr.strip()}",
                              "install iptables with the statistic and length matches, and run as root.")
        mss = rules.tcp_mss_default(SACK_MTU) - TS_OPTION_LEN
        payload = bytes(SACK_SEGMENTS * mss)
        received = 0
        with run.capture([port], ns=ns):
            c = ns.socket()
            c.settimeout(5)
            c.connect(("127.0.0.1", port))
            lst.settimeout(5)
            conn, _ = lst.accept()
            conn.settimeout(5)
            c.sendall(payload)
            deadline = time.monotonic() + 5
            while received < len(payload) and time.monotonic() < deadline:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                received += len(chunk)
            c.close()
            conn.close()
            time.sleep(0.05)
        lst.close()
    return {"port": port, "sack": sack, "sent": len(payload), "received": received, "machine": machine,
            "segments": SACK_SEGMENTS, "drop_index": SACK_DROP_INDEX}


# --------------------------------------------------------------------------------------
# experiment 3: receive autotuning, and SO_RCVBUF turning it off
# --------------------------------------------------------------------------------------
BULK_LIMIT = 256 << 20       # bytes per transfer at most
BULK_SECONDS = 8.0           # and at most this long


@dataclass
class Autotuning:
    """SO_RCVBUF of two receivers before and after the same bulk transfer."""

    unset_start: int
    unset_end: int
    set_request: int
    set_start: int
    set_end: int
    bytes_each: list[int]

    def check(self, result: Result, quiet: bool = False) -> None:
        m = result.machine_snapshot()
        client_rcvbuf(m, self.set_request).check(self.set_start, "SO_RCVBUF right after setting it",
                                                 reference=result.reference(), quiet=quiet)
        rules.assert_rule(result, rules.tcp_rcv_space_adjust, self.unset_end, self.unset_start,
                          so_rcvbuf_set=False, what="SO_RCVBUF unset: after the transfer", quiet=quiet)
        rules.assert_rule(result, rules.tcp_rcv_space_adjust, self.set_end, self.set_start,
                          so_rcvbuf_set=True, what="SO_RCVBUF set: after the transfer", quiet=quiet)


def autotuning(result: Result) -> Autotuning:
    d = result.data
    return Autotuning(d["unset"]["start"], d["unset"]["end"], d["rcvbuf"], d["set"]["start"], d["set"]["end"],
                      [d["unset"]["bytes"], d["set"]["bytes"]])


def check_autotuning(result: Result) -> None:
    autotuning(result).check(result, quiet=True)


@experiment("rcvbuf_autotuning", chapter="01_02",
            params=[Param("rcvbuf", "SO_RCVBUF (second receiver)", None, minimum=4096, maximum=16 << 20,
                          unit="bytes", doc="what the second receiver sets before connect(); default: half of "
                                            "tcp_rmem[1], so that both receivers start equal")],
            invariant=check_autotuning,
            claim="an unset receive buffer grows under a bulk transfer (up to tcp_rmem[2]); "
                  "a buffer set with SO_RCVBUF stays put")
def rcvbuf_autotuning(run, rcvbuf: int | None = None) -> dict:
    """Two bulk transfers on lo into a reader that keeps reading: first into a client with
    SO_RCVBUF unset, then into one that set *rcvbuf* (default: half of tcp_rmem[1]) before
    connect(). SO_RCVBUF is read right after connect() and after the transfer (bounded by
    BULK_LIMIT bytes and BULK_SECONDS). Needs no privileges: always live."""
    if rcvbuf is None:
        rcvbuf = max(4096, rules.machine().tcp_rmem[1] // 2)
    out = {"rcvbuf": rcvbuf}
    for case, req in (("unset", None), ("set", rcvbuf)):
        with listener(backlog=1) as lst:
            c = socket.socket()
            try:
                if req is not None:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, req)
                c.settimeout(5)
                c.connect(("127.0.0.1", lst.port))
                lst.sock.settimeout(5)
                conn, _ = lst.sock.accept()
                with conn:
                    start = c.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                    got = _bulk(conn, c)
                    end = c.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            finally:
                c.close()
        out[case] = {"start": start, "end": end, "bytes": got}
    return out


def _bulk(writer: socket.socket, reader: socket.socket) -> int:
    """Send up to BULK_LIMIT bytes from *writer* (a thread) while *reader* reads; stop
    early only at BULK_SECONDS."""
    stop = threading.Event()
    chunk = memoryview(bytes(1 << 18))

    def write() -> None:
        sent = 0
        writer.settimeout(1)
        try:
            while sent < BULK_LIMIT and not stop.is_set():
                sent += writer.send(chunk[:min(len(chunk), BULK_LIMIT - sent)])
        except OSError:
            pass
        finally:
            try:
                writer.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    t = threading.Thread(target=write, daemon=True)
    t.start()
    got = 0
    deadline = time.monotonic() + BULK_SECONDS
    reader.settimeout(1)
    try:
        while time.monotonic() < deadline:
            try:
                data = reader.recv(1 << 18)
            except socket.timeout:
                continue
            if not data:
                break
            got += len(data)
    finally:
        stop.set()
        t.join(timeout=3)
    return got


# --------------------------------------------------------------------------------------
# experiment 4: the kernel answers SYNs without the application
# --------------------------------------------------------------------------------------
def check_kernel_answers(result: Result) -> None:
    d = result.data
    assert d["connect_ok"] == d["clients"], "every connect() must return although nobody accepts"
    assert d["listen_recv_q"] == d["clients"], \
        f"the listener's accept queue should hold {d['clients']} (ss Recv-Q), got {d['listen_recv_q']}"
    assert d["server_estab"] == d["clients"], "ss must show each server-side socket ESTABLISHED"
    rules.sys_listen(result.machine_snapshot(), d["backlog"]).check(
        d["listen_send_q"], "Send-Q of the LISTEN row", quiet=True)


@experiment("kernel_answers", chapter="01_02",
            params=[Param("clients", "clients", 3, minimum=1, maximum=8)],
            invariant=check_kernel_answers,
            claim="the kernel completes handshakes for a listener that never calls accept()")
def kernel_answers(run, clients: int = 3) -> dict:
    """Connect to a listener that never calls accept(); read the queue with ss."""
    from ..kernel import ss

    ok = 0
    backlog = 16
    with listener(backlog=backlog) as lst:
        socks = []
        try:
            for _ in range(clients):
                s = socket.create_connection(("127.0.0.1", lst.port), timeout=2)
                socks.append(s)
                ok += 1
            view = ss(port=lst.port)
        finally:
            for s in socks:
                s.close()
    listen = view[view["state"] == "LISTEN"]
    server_side = view[(view["state"] == "ESTAB") & (view["lport"] == lst.port)]
    return {"clients": clients, "connect_ok": ok, "backlog": backlog,
            "listen_recv_q": int(listen["recv_q"].iloc[0]), "listen_send_q": int(listen["send_q"].iloc[0]),
            "server_estab": int(len(server_side)),
            "ss": [{k: (None if v != v else v) for k, v in row.items()}  # NaN (ss's '*') -> None
                   for row in view[["state", "recv_q", "send_q", "local", "lport", "peer", "pport"]]
                   .astype(object).to_dict("records")]}
