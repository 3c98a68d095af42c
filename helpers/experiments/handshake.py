"""Chapter 01_02: the three-way handshake, seen on the wire and in the kernel."""
from __future__ import annotations

import socket
import time
from pathlib import Path

from ..params import Param
from ..servers import Server, connect, listener, recv_until, request_response
from .base import Result, experiment

REQUEST = b"ping\n"
REPLY = b"pong\n"


def lo_mtu() -> int:
    try:
        return int(Path("/sys/class/net/lo/mtu").read_text())
    except (OSError, ValueError):
        return 65536


def default_mss(mtu: int) -> int:
    """The MSS Linux announces for IPv4 at this MTU: an IPv4 packet is at most 65535 bytes
    (16-bit total length), minus 20 bytes of IP and 20 of TCP header."""
    return min(mtu, 65535) - 40


def handshakes(df):
    """The first three segments of every stream: {stream: (syn, synack, ack) rows}."""
    out = {}
    for stream, seg in df.groupby("stream", sort=True):
        if len(seg) >= 3:
            out[stream] = tuple(seg.iloc[i] for i in range(3))
    return out


def check_handshake(result: Result) -> None:
    """The 01_02 claims on one capture (live or replayed)."""
    df = result.segments()
    d = result.data
    hs = handshakes(df)
    assert len(hs) == d["connections"], f"expected {d['connections']} connections in the capture, found {len(hs)}"
    isns = []
    for stream, (syn, synack, ack) in hs.items():
        assert (syn["flags"], synack["flags"], ack["flags"]) == ("SYN", "SYN+ACK", "ACK"), \
            f"stream {stream}: first three segments are {syn['flags']}, {synack['flags']}, {ack['flags']}"
        assert synack.ack_raw == (syn.seq_raw + 1) % 2**32, "the SYN-ACK must acknowledge the client ISN + 1"
        assert ack.ack_raw == (synack.seq_raw + 1) % 2**32, "the final ACK must acknowledge the server ISN + 1"
        assert syn.sport == ack.sport == synack.dport, "the handshake must stay on one 4-tuple"
        expected_mss = d["params_mss"] or default_mss(d["lo_mtu"])
        assert syn.mss == expected_mss, f"SYN MSS {syn.mss}, expected {expected_mss}"
        assert synack.mss == default_mss(d["lo_mtu"]), \
            f"SYN-ACK MSS {synack.mss}, expected {default_mss(d['lo_mtu'])}"
        assert bool(syn.sack_perm) and bool(synack.sack_perm), "SACK must be permitted both ways"
        assert syn.tsval is not None and int(syn.tsval) > 0, "timestamps option expected on the SYN"
        assert syn.wscale == d["client"][0]["syn_wscale_expected"], \
            f"SYN window scale {syn.wscale}, expected {d['client'][0]['syn_wscale_expected']}"
        isns += [syn.seq_raw, synack.seq_raw]
    assert len(set(isns)) == len(isns), "every ISN must differ (client and server, each connection)"
    data = df[df["len"] > 0]
    assert (data["len"] == len(REQUEST)).sum() >= 2 * d["connections"], "one request and one reply per connection"
    fins = df[df["flags"].str.contains("FIN")]
    assert len(fins) >= 2 * d["connections"], "each side sends a FIN at close"




@experiment(
    "handshake", chapter="01_02", needs={"live_capture"},
    params=[
        Param("mss", "TCP_MAXSEG (client)", None, choices=(None, 536, 1400), unit="bytes",
              doc="the MSS the client announces in its SYN (set before connect)"),
        Param("rcvbuf", "SO_RCVBUF (client)", None, choices=(None, 4096, 65536, 1048576), unit="bytes",
              doc="the client's receive buffer before connect: it decides the window scale"),
    ],
    invariant=check_handshake,
    claim="SYN, SYN-ACK, ACK; ack = peer ISN + 1; ISNs differ; SYN options follow TCP_MAXSEG and SO_RCVBUF",
)
def handshake(run, mss: int | None = None, rcvbuf: int | None = None, connections: int = 2) -> dict:
    """Capture `connections` short conversations (connect, ping/pong, close) on loopback.

    The client sets TCP_MAXSEG and SO_RCVBUF *before* connect(), so they shape its SYN.
    Returns per-connection kernel readings (SO_RCVBUF as doubled by the kernel, the
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
                        "syn_wscale_expected": info.get("rcv_wscale"),
                    })
                time.sleep(0.01)  # let the FIN exchange finish inside the capture
            time.sleep(0.02)
    from ..kernel import sysctl
    return {"server_port": srv.port, "connections": connections, "params_mss": mss,
            "params_rcvbuf": rcvbuf, "lo_mtu": lo_mtu(), "client": clients,
            "tcp_rmem": [int(x) for x in str(sysctl("net.ipv4.tcp_rmem")).split()],
            "rmem_max": int(sysctl("net.core.rmem_max"))}


def default_wscale(tcp_rmem_max: int, rmem_max: int) -> int:
    """The window scale Linux offers when SO_RCVBUF is not set: the smallest shift that lets
    the 16-bit window describe the largest buffer autotuning may reach (ilog2 - 15, max 14)."""
    space = max(tcp_rmem_max, rmem_max)
    return max(0, min(14, space.bit_length() - 1 - 15))


def check_kernel_answers(result: Result) -> None:
    d = result.data
    assert d["connect_ok"] == d["clients"], "every connect() must return although nobody accepts"
    assert d["listen_recv_q"] == d["clients"], \
        f"the listener's accept queue should hold {d['clients']} (ss Recv-Q), got {d['listen_recv_q']}"
    assert d["server_estab"] == d["clients"], "ss must show each server-side socket ESTABLISHED"
    assert d["accept_calls"] == 0


@experiment("kernel_answers", chapter="01_02",
            params=[Param("clients", "clients", 3, minimum=1, maximum=8)],
            invariant=check_kernel_answers,
            claim="the kernel completes handshakes for a listener that never calls accept()")
def kernel_answers(run, clients: int = 3) -> dict:
    """Connect to a listener that never calls accept(); read the queue with ss."""
    from ..kernel import ss

    ok = 0
    with listener(backlog=16) as lst:
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
    return {"clients": clients, "connect_ok": ok, "accept_calls": 0,
            "listen_recv_q": int(listen["recv_q"].iloc[0]), "listen_send_q": int(listen["send_q"].iloc[0]),
            "server_estab": int(len(server_side)),
            "ss": [{k: (None if v != v else v) for k, v in row.items()}  # NaN (ss's '*') -> None
                   for row in view[["state", "recv_q", "send_q", "local", "lport", "peer", "pport"]]
                   .astype(object).to_dict("records")]}


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
