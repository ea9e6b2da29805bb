"""Packet captures: `audiosocket trace` on pcap and pcapng files.

The captures are made here with dpkt's writers (dpkt.pcap.Writer,
dpkt.pcapng.Writer) from packets built with dpkt; one more is a real
`tcpdump -i lo` capture of a call between `audiosocket dial` and `listen`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audiosocket_cli.cli import cli
from audiosocket_cli.files.pcap import read_pcap
from audiosocket_cli.files.trace import read_records
from audiosocket_cli.protocol.wire import Message

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "samples" / "hello-8k.wav"
UUID_A = "11111111-2222-4333-8444-555555555555"
UUID_B = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
T0 = 1_700_000_000.0

ACK = dpkt.tcp.TH_ACK
SYN = dpkt.tcp.TH_SYN
FIN = dpkt.tcp.TH_FIN
RST = dpkt.tcp.TH_RST
PSH = dpkt.tcp.TH_PUSH


# Building captures with dpkt.


class TcpConn:
    """The packets of one TCP connection; `send` advances the sender's sequence number."""

    def __init__(
        self,
        client: tuple[str, int],
        server: tuple[str, int],
        isn_client: int = 1000,
        isn_server: int = 500_000,
    ) -> None:
        self.client = client
        self.server = server
        self.seq = {True: isn_client, False: isn_server}
        self.v6 = ":" in client[0]

    def segment(
        self, from_client: bool, flags: int, data: bytes = b"", seq: int | None = None
    ) -> dpkt.Packet:
        """A packet; seq defaults to the sender's next sequence number (not advanced)."""
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        tcp = dpkt.tcp.TCP(
            sport=src[1],
            dport=dst[1],
            seq=(self.seq[from_client] if seq is None else seq) % (1 << 32),
            ack=self.seq[not from_client] % (1 << 32) if flags & ACK else 0,
            flags=flags,
            win=65535,
            data=data,
        )
        if self.v6:
            ip6 = dpkt.ip6.IP6(
                src=socket.inet_pton(socket.AF_INET6, src[0]),
                dst=socket.inet_pton(socket.AF_INET6, dst[0]),
                nxt=dpkt.ip.IP_PROTO_TCP,
                hlim=64,
                data=tcp,
            )
            ip6.plen = len(bytes(tcp))
            return ip6
        return dpkt.ip.IP(
            src=socket.inet_aton(src[0]),
            dst=socket.inet_aton(dst[0]),
            p=dpkt.ip.IP_PROTO_TCP,
            ttl=64,
            data=tcp,
        )

    def handshake(self) -> list[dpkt.Packet]:
        syn = self.segment(True, SYN)
        self.seq[True] += 1
        synack = self.segment(False, SYN | ACK)
        self.seq[False] += 1
        return [syn, synack, self.segment(True, ACK)]

    def send(self, from_client: bool, data: bytes) -> dpkt.Packet:
        packet = self.segment(from_client, ACK | PSH, data)
        self.seq[from_client] += len(data)
        return packet

    def lose(self, from_client: bool, data: bytes) -> None:
        """Bytes sent that the capture never saw."""
        self.seq[from_client] += len(data)

    def ack(self, from_client: bool) -> dpkt.Packet:
        return self.segment(from_client, ACK)

    def fin(self, from_client: bool) -> dpkt.Packet:
        packet = self.segment(from_client, FIN | ACK)
        self.seq[from_client] += 1
        return packet

    def rst(self, from_client: bool) -> dpkt.Packet:
        return self.segment(from_client, RST | ACK)


LINKTYPES = {"ethernet": 1, "sll": 113, "sll2": 276, "null": 0, "raw": 101}


def link_frame(linktype: int, ip: dpkt.Packet) -> bytes:
    v6 = isinstance(ip, dpkt.ip6.IP6)
    ethtype = dpkt.ethernet.ETH_TYPE_IP6 if v6 else dpkt.ethernet.ETH_TYPE_IP
    if linktype == 1:
        return bytes(
            dpkt.ethernet.Ethernet(
                src=b"\x02\x00\x00\x00\x00\x01",
                dst=b"\x02\x00\x00\x00\x00\x02",
                type=ethtype,
                data=ip,
            )
        )
    if linktype == 113:
        return bytes(dpkt.sll.SLL(type=0, ethtype=ethtype, data=ip))
    if linktype == 276:
        return bytes(dpkt.sll2.SLL2(ethtype=ethtype, intindex=1, data=ip))
    if linktype == 0:  # BSD loopback: the address family, in the writer's byte order
        return (30 if v6 else 2).to_bytes(4, "little") + bytes(ip)
    assert linktype == 101
    return bytes(ip)


def write_capture(
    path: Path, packets: list[tuple[float, dpkt.Packet]], linktype: int = 1, ng: bool = False
) -> Path:
    with open(path, "wb") as f:
        writer = (dpkt.pcapng.Writer if ng else dpkt.pcap.Writer)(
            f, snaplen=65535, linktype=linktype
        )
        for ts, ip in packets:
            writer.writepkt(link_frame(linktype, ip), ts=ts)
    return path


@dataclass
class Expected:
    """What a call in a capture must read as: (ts, dir, message) in order."""

    uuid: str
    client: str
    server: str
    start: float = 0.0
    messages: list[tuple[float, str, Message]] = field(default_factory=list)
    ended: str = ""


def audio(n: int, size: int = 320) -> Message:
    """Audio frames that differ from each other, so that order and duplicates show."""
    return Message.audio(bytes((n * 7 + i) % 251 for i in range(size)))


def two_calls(v6: bool = False) -> tuple[list[tuple[float, dpkt.Packet]], list[Expected]]:
    """Two interleaved calls, with a retransmission, an overlap and an out-of-order pair.

    Call A: frame 3 sent twice (a retransmission); frame 5 and a DTMF in one
    segment; frame 6's header alone, its payload in the next segment; frame
    8 half sent, then sent whole again (an overlapping retransmission); the
    application answers each frame 1 ms later; the client closes (FIN).
    Call B: frames 4 and 5 captured in the wrong order; the server resets.
    """
    host = ("fd00::1", "fd00::3", "fd00::2") if v6 else ("10.0.0.1", "10.0.0.3", "10.0.0.2")
    a = TcpConn((host[0], 40001), (host[2], 9092), isn_client=(1 << 32) - 700)  # wraps
    b = TcpConn((host[1], 40002), (host[2], 9092), isn_client=77_777)
    exp_a = Expected(UUID_A, f"{host[0]}:40001", f"{host[2]}:9092", start=T0)
    exp_b = Expected(UUID_B, f"{host[1]}:40002", f"{host[2]}:9092", start=T0 + 0.003)
    if v6:
        for e in (exp_a, exp_b):
            e.client, e.server = (
                f"[{e.client.rsplit(':', 1)[0]}]:{e.client.rsplit(':', 1)[1]}",
                f"[{host[2]}]:9092",
            )
    packets: list[tuple[float, dpkt.Packet]] = []

    def put(ts: float, packet: dpkt.Packet) -> None:
        packets.append((ts, packet))

    for i, p in enumerate(a.handshake()):
        put(T0 + i * 0.0001, p)
    for i, p in enumerate(b.handshake()):
        put(T0 + 0.003 + i * 0.0001, p)
    ua, ub = Message.for_uuid(UUID_A), Message.for_uuid(UUID_B)
    put(T0 + 0.010, a.send(True, ua.encode()))
    exp_a.messages.append((T0 + 0.010, ">", ua))
    put(T0 + 0.011, b.send(True, ub.encode()))
    exp_b.messages.append((T0 + 0.011, ">", ub))
    held_b = None
    for k in range(10):
        ta = T0 + 0.020 + 0.020 * k
        tb = ta + 0.005
        frame = audio(k)
        if k == 3:
            p = a.send(True, frame.encode())
            put(ta, p)
            put(ta + 0.004, p)  # the retransmission, after call B's packet
            exp_a.messages.append((ta, ">", frame))
        elif k == 5:
            dtmf = Message.dtmf("7")
            put(ta, a.send(True, frame.encode() + dtmf.encode()))
            exp_a.messages += [(ta, ">", frame), (ta, ">", dtmf)]
        elif k == 6:
            wire = frame.encode()
            put(ta, a.send(True, wire[:3]))
            put(ta + 0.001, a.send(True, wire[3:]))
            exp_a.messages.append((ta + 0.001, ">", frame))
        elif k == 8:
            wire = frame.encode()
            seq = a.seq[True]
            put(ta, a.segment(True, ACK | PSH, wire[:200], seq=seq))
            put(ta + 0.002, a.send(True, wire))  # all of it again, from the same seq
            exp_a.messages.append((ta + 0.002, ">", frame))
        else:
            put(ta, a.send(True, frame.encode()))
            exp_a.messages.append((ta, ">", frame))
        answer = audio(100 + k)
        reply_ts = ta + (0.003 if k in (6, 8) else 0.001)
        put(reply_ts, a.send(False, answer.encode()))
        exp_a.messages.append((reply_ts, "<", answer))
        if k == 4:
            held_b = b.send(True, frame.encode())  # captured after frame 5
        elif k == 5:
            put(tb, b.send(True, frame.encode()))
            put(tb + 0.003, held_b)
            exp_b.messages += [(tb + 0.003, ">", audio(4)), (tb + 0.003, ">", frame)]
        else:
            put(tb, b.send(True, frame.encode()))
            exp_b.messages.append((tb, ">", frame))
    end = T0 + 0.3
    put(end, a.fin(True))
    put(end + 0.0005, a.fin(False))
    put(end + 0.0010, a.ack(True))
    put(end + 0.002, b.rst(False))
    exp_a.ended, exp_b.ended = "caller-close", "app-reset"
    packets.sort(key=lambda item: item[0])
    return packets, [exp_a, exp_b]


# Running the command.


def trace(*args: str) -> Result:
    return CliRunner().invoke(cli, ["trace", *args], catch_exceptions=False)


def json_lines(result: Result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def read(path: Path, port: int | None = None) -> list:
    with open(path, "rb") as stream:
        return list(read_records(stream, str(path), port=port))


def one_error(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("audiosocket: error: ")
    return lines[0]


def check_calls(path: Path, expected: list[Expected], port: int | None = None) -> None:
    """The capture reads as the expected calls: ids, order, bytes, times, ends."""
    args = ["--json", str(path)] + (["--port", str(port)] if port else [])
    result = trace(*args)
    assert result.exit_code == 0, result.stderr
    lines = json_lines(result)
    assert [e["conn"] for e in lines if e.get("event") == "call-start"] == [1, 2]
    records = read(path, port)
    assert [r.ts for r in records] == sorted(r.ts for r in records)  # capture-time order
    for conn, exp in enumerate(expected, start=1):
        mine = [r for r in records if r.conn == conn]
        start = [r for r in mine if r.event == "call-start"]
        assert len(start) == 1 and start[0].t == 0 and start[0].ts == pytest.approx(exp.start)
        assert start[0].fields == {"peer": exp.client, "server": exp.server}
        got = [(r.ts, r.dir, r.message) for r in mine if r.message is not None]
        assert [(d, m) for _, d, m in got] == [(d, m) for _, d, m in exp.messages]
        for (ts, _, _), (want, _, _) in zip(got, exp.messages, strict=True):
            assert ts == pytest.approx(want, abs=2e-6)
        for r in mine:
            assert r.t == pytest.approx(r.ts - exp.start, abs=2e-6)
        # #N until the UUID message, the UUID from then on.
        calls = [r.call for r in mine]
        uuid_at = next(i for i, r in enumerate(mine) if r.message and r.message.name == "uuid")
        assert set(calls[: uuid_at + 1]) == {f"#{conn}"}
        assert set(calls[uuid_at + 1 :]) == {exp.uuid}
        end = [r for r in mine if r.event == "call-end"]
        assert len(end) == 1 and end[0].fields["ended"] == exp.ended and mine[-1] is end[0]
        assert not [r for r in mine if r.event == "warning"]
        # The same through the command's JSON lines.
        shown = [e for e in lines if e["conn"] == conn and "kind" in e]
        assert [(e["dir"], e["type"], e["len"]) for e in shown] == [
            (d, m.kind, len(m.payload)) for _, d, m in exp.messages
        ]
        assert {e["uuid"] for e in shown if e["kind"] == "uuid"} == {exp.uuid}


def test_two_interleaved_calls(tmp_path: Path) -> None:
    packets, expected = two_calls()
    path = write_capture(tmp_path / "calls.pcap", packets)
    check_calls(path, expected)
    # Plain lines: the UUIDs' first 8 digits, the DTMF, the ends.
    result = trace(str(path))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "0.000000 #1 - call-start - client=10.0.0.1:40001 server=10.0.0.2:9092"
    assert lines[1] == "0.000000 #2 - call-start - client=10.0.0.3:40002 server=10.0.0.2:9092"
    assert "0.120000 11111111 > dtmf 1 digit=7" in lines
    assert lines[-2].endswith(
        "11111111 - call-end - caller-close (the caller closed the connection)"
    )
    assert lines[-1].endswith(
        "aaaaaaaa - call-end - app-reset (the application reset the connection)"
    )
    assert sum(" > audio 320 " in line for line in lines) == 20  # no duplicated frame


@pytest.mark.parametrize(
    ("link", "ng", "v6"),
    [
        ("ethernet", True, False),
        ("sll", False, False),
        ("sll2", True, False),
        ("null", False, False),
        ("raw", False, True),
        ("ethernet", False, True),
    ],
)
def test_link_types_and_pcapng(tmp_path: Path, link: str, ng: bool, v6: bool) -> None:
    packets, expected = two_calls(v6=v6)
    path = write_capture(tmp_path / "calls.cap", packets, LINKTYPES[link], ng=ng)
    check_calls(path, expected)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(1, 700), min_size=1, max_size=40),
    swaps=st.lists(st.integers(0, 60), max_size=8),
    copies=st.lists(st.tuples(st.integers(0, 60), st.integers(-50, 50)), max_size=8),
    isn=st.integers(0, (1 << 32) - 1),
)
def test_any_segmentation_order_and_retransmission(
    cuts: list[int], swaps: list[int], copies: list[tuple[int, int]], isn: int
) -> None:
    """However the stream is cut, reordered nearby and partly sent again, it reads the same."""
    messages = [Message.for_uuid(UUID_A)] + [audio(k, 40 + 30 * k) for k in range(8)]
    messages.insert(4, Message.dtmf("#"))
    stream = b"".join(m.encode() for m in messages)
    conn = TcpConn(("10.0.0.1", 40001), ("10.0.0.2", 9092), isn_client=isn)
    packets = conn.handshake()
    base = conn.seq[True]
    pieces, pos = [], 0
    for cut in cuts:
        if pos >= len(stream):
            break
        pieces.append((pos, stream[pos : pos + cut]))
        pos += cut
    if pos < len(stream):
        pieces.append((pos, stream[pos:]))
    for i in swaps:  # neighbours captured the wrong way round
        if i + 1 < len(pieces):
            pieces[i], pieces[i + 1] = pieces[i + 1], pieces[i]
    for i, shift in copies:  # retransmissions, some overlapping their neighbours
        if i < len(pieces):
            start = max(0, min(len(stream) - 1, pieces[i][0] + shift))
            pieces.insert(i + 1, (start, stream[start : start + len(pieces[i][1])]))
    packets += [conn.segment(True, ACK | PSH, data, seq=base + start) for start, data in pieces]
    conn.seq[True] = base + len(stream)
    packets += [conn.fin(True), conn.fin(False)]
    buffer = io.BytesIO()
    writer = dpkt.pcap.Writer(buffer, snaplen=65535)
    for n, packet in enumerate(packets):
        writer.writepkt(link_frame(1, packet), ts=T0 + n * 0.001)
    buffer.seek(0)
    records = list(read_pcap(buffer, "fuzz.pcap"))
    assert [r.message for r in records if r.message] == messages
    assert [r.event for r in records if r.event] == ["call-start", "call-end"]


def test_summary_and_extract(tmp_path: Path) -> None:
    packets, expected = two_calls()
    path = write_capture(tmp_path / "calls.pcap", packets)
    result = trace("--summary", "--json", str(path))
    tables = json_lines(result)
    assert [t["call"] for t in tables] == [UUID_A, UUID_B]
    assert tables[0][">"]["kinds"] == {"uuid": 1, "audio": 10, "dtmf": 1}
    assert tables[0]["<"]["kinds"] == {"audio": 10}
    assert tables[1][">"]["kinds"] == {"uuid": 1, "audio": 10}
    result = trace("--call", "aaaa", "--json", str(path))
    assert {e["conn"] for e in json_lines(result)} == {2}


def test_gap_is_reported_and_decoding_resumes(tmp_path: Path) -> None:
    """Part of frame 3 never reaches the capture; the peer's ACKs say it was sent."""
    conn = TcpConn(("10.0.0.1", 40001), ("10.0.0.2", 9092))
    packets = [(T0 + i * 0.0001, p) for i, p in enumerate(conn.handshake())]
    packets.append((T0 + 0.01, conn.send(True, Message.for_uuid(UUID_A).encode())))
    for k in range(10):
        ts = T0 + 0.02 + 0.02 * k
        wire = audio(k).encode()
        if k == 3:
            conn.lose(True, wire[:100])
            packets.append((ts, conn.send(True, wire[100:])))
        else:
            packets.append((ts, conn.send(True, wire)))
        packets.append((ts + 0.0005, conn.ack(False)))
    end = T0 + 0.3
    packets += [(end, conn.fin(True)), (end + 0.001, conn.fin(False))]
    path = write_capture(tmp_path / "gap.pcap", packets)

    records = read(path)
    warnings = [r for r in records if r.event == "warning"]
    assert warnings[0].fields["missing"] == 100
    assert warnings[0].fields["direction"] == ">"
    assert "100 bytes missing in 10.0.0.1:40001 > 10.0.0.2:9092" in warnings[0].text
    assert warnings[0].ts == pytest.approx(T0 + 0.02 + 0.06)
    # The rest of frame 3 is skipped; decoding resumes with frame 4, each at its own time.
    assert warnings[1].fields["skipped"] == 323 - 100
    audio_records = [r for r in records if r.message is not None and r.message.is_audio]
    assert [r.message for r in audio_records] == [audio(k) for k in range(10) if k != 3]
    for r in audio_records[3:]:
        k = [audio(n) for n in range(10)].index(r.message)
        assert r.ts == pytest.approx(T0 + 0.02 + 0.02 * k, abs=2e-6)
    assert records[-1].event == "call-end" and records[-1].fields["ended"] == "caller-close"
    # The command shows it on stderr as well.
    result = trace(str(path))
    assert result.exit_code == 0
    assert "gap in the capture: 100 bytes missing" in result.stderr


def test_gap_at_the_end_of_a_capture(tmp_path: Path) -> None:
    """Bytes behind a hole that never fills: taken when the capture ends."""
    conn = TcpConn(("10.0.0.1", 40001), ("10.0.0.2", 9092))
    packets = [(T0 + i * 0.0001, p) for i, p in enumerate(conn.handshake())]
    packets.append((T0 + 0.01, conn.send(True, Message.for_uuid(UUID_A).encode())))
    packets.append((T0 + 0.02, conn.send(True, audio(0).encode())))
    conn.lose(True, audio(1).encode())
    packets.append((T0 + 0.06, conn.send(True, audio(2).encode())))
    packets.append((T0 + 0.08, conn.send(True, audio(3).encode())))
    path = write_capture(tmp_path / "gap.pcap", packets)
    records = read(path)
    warnings = [r for r in records if r.event == "warning"]
    assert [w.fields.get("missing") for w in warnings] == [323]
    assert [r.message for r in records if r.message and r.message.is_audio] == [
        audio(0),
        audio(2),
        audio(3),
    ]
    assert records[-1].fields["ended"] == "unknown"


def test_a_fin_the_capture_missed_is_no_gap(tmp_path: Path) -> None:
    conn = TcpConn(("10.0.0.1", 40001), ("10.0.0.2", 9092))
    packets = [(T0 + i * 0.0001, p) for i, p in enumerate(conn.handshake())]
    packets.append((T0 + 0.01, conn.send(True, Message.for_uuid(UUID_A).encode())))
    packets.append((T0 + 0.02, conn.send(True, audio(0).encode())))
    conn.fin(True)  # sent, never captured
    packets += [(T0 + 0.1, conn.fin(False)), (T0 + 0.5, conn.ack(False))]
    records = read(write_capture(tmp_path / "fin.pcap", packets))
    assert not [r for r in records if r.event == "warning"]
    assert [r.message for r in records if r.message] == [Message.for_uuid(UUID_A), audio(0)]
    assert records[-1].event == "call-end"


def test_port_finds_calls_that_do_not_start_with_a_uuid(tmp_path: Path) -> None:
    conn = TcpConn(("10.0.0.1", 40001), ("10.0.0.2", 4573))
    packets = [(T0 + i * 0.0001, p) for i, p in enumerate(conn.handshake())]
    for k in range(3):
        packets.append((T0 + 0.02 * (k + 1), conn.send(True, audio(k).encode())))
    packets.append((T0 + 0.1, conn.send(False, Message.hangup().encode())))
    packets += [(T0 + 0.11, conn.fin(False)), (T0 + 0.111, conn.fin(True))]
    # Another connection on another port, that is not AudioSocket at all.
    other = TcpConn(("10.0.0.1", 40002), ("10.0.0.9", 80))
    packets += [(T0 + 0.001 + i * 0.0001, p) for i, p in enumerate(other.handshake())]
    packets.append((T0 + 0.002, other.send(True, b"GET / HTTP/1.1\r\n\r\n")))
    packets.sort(key=lambda item: item[0])
    path = write_capture(tmp_path / "port.pcap", packets)

    result = trace(str(path))
    assert result.exit_code == 1
    assert "no AudioSocket connection among 2 TCP connection(s)" in one_error(result)
    assert "--port" in result.stderr

    records = read(path, port=4573)
    messages = [(r.dir, r.message) for r in records if r.message is not None]
    assert messages == [(">", audio(0)), (">", audio(1)), (">", audio(2)), ("<", Message.hangup())]
    assert {r.call for r in records} == {"#1"}
    start = records[0]
    assert start.event == "call-start" and start.fields["server"] == "10.0.0.2:4573"
    assert records[-1].fields["ended"] == "app-hangup"  # its hangup came before its FIN
    result = trace("--port", "4573", str(path))
    assert result.exit_code == 0 and "#1 < hangup 0" in result.stdout


def test_capture_that_begins_mid_call(tmp_path: Path) -> None:
    """No SYN, and the first packet starts inside a message: found with --port."""
    conn = TcpConn(("10.0.0.1", 40001), ("10.0.0.2", 9092))
    conn.handshake()
    conn.send(True, Message.for_uuid(UUID_A).encode())
    wire = audio(0).encode()
    packets = [(T0, conn.send(True, wire[50:]))]
    conn.lose(True, b"")
    for k in range(1, 6):
        packets.append((T0 + 0.02 * k, conn.send(True, audio(k).encode())))
    path = write_capture(tmp_path / "mid.pcap", packets)
    records = read(path, port=9092)
    assert [r.message for r in records if r.message] == [audio(k) for k in range(1, 6)]
    warnings = [r.text for r in records if r.event == "warning"]
    assert "no SYN seen" in warnings[0]
    assert "skipped 273 bytes" in warnings[1]


def test_truncated_and_bad_files(tmp_path: Path) -> None:
    packets, _ = two_calls()
    path = write_capture(tmp_path / "calls.pcap", packets)
    data = path.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])  # tcpdump killed mid-write
    result = trace("--json", str(cut))
    assert result.exit_code == 0
    ends = [e for e in json_lines(result) if e.get("event") == "call-end"]
    assert len(ends) == 2 and "cut short" in ends[0]["text"]

    bad = tmp_path / "bad.pcap"
    bad.write_bytes(data[:4] + b"\x00" * 10)  # the magic, then nothing sensible
    result = trace(str(bad))
    assert result.exit_code == 1
    assert "not a packet capture" in one_error(result)

    usb = tmp_path / "usb.pcap"
    with open(usb, "wb") as f:
        dpkt.pcap.Writer(f, linktype=189).writepkt(b"\x00" * 40, ts=T0)
    result = trace(str(usb))
    assert result.exit_code == 1
    assert "link type 189 is not supported" in one_error(result)


# A real capture.


def _tcpdump_usable() -> bool:
    return shutil.which("tcpdump") is not None and os.geteuid() == 0


@pytest.mark.skipif(not _tcpdump_usable(), reason="tcpdump is not installed or not root")
def trace_messages(path: Path) -> list[tuple[str, int, bytes]]:
    """(direction, kind, payload) of every message in a `--trace` file."""
    return [
        (obj["dir"], obj["type"], base64.b64decode(obj["data"]))
        for obj in map(json.loads, path.read_text().splitlines()[1:])
        if "data" in obj
    ]


def pcap_messages(path: Path) -> list[tuple[str, int, bytes]]:
    """(direction, kind, payload) of every message in a capture, as far as it is written."""
    try:
        records = read(path)
    except Exception:  # a capture still being written may end mid-packet
        return []
    return [(r.dir, r.message.kind, r.message.payload) for r in records if r.message]


def test_tcpdump_capture_of_a_real_call(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """`dial` calls `listen --echo` on 127.0.0.1 while tcpdump captures `lo`."""
    import sys

    capture = tmp_path / "call.pcap"
    dial_trace = tmp_path / "dial.trace"
    uuid = "5e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"
    procs: list[subprocess.Popen] = []
    try:
        listen = subprocess.Popen(
            [sys.executable, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--echo",
             "--max-calls", "1", "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env, text=True,
        )  # fmt: skip
        procs.append(listen)
        first = listen.stderr.readline() if listen.stderr else ""
        assert first.startswith("listening on "), first
        port = int(first.split()[-1].rsplit(":", 1)[1])
        dump = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-U", "-B", "16384", "-w", str(capture),
             f"tcp port {port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(dump)
        line = dump.stderr.readline() if dump.stderr else ""
        if "listening on" not in line:
            pytest.skip(f"tcpdump cannot capture on lo: {line.strip()}")
        time.sleep(0.2)  # tcpdump prints before its capture is live
        call = subprocess.run(
            [sys.executable, "-m", "audiosocket_cli", "dial", f"127.0.0.1:{port}", uuid,
             "--play", str(HELLO), "--speed", "0", "--linger", "0.5", "--dtmf", "42@0",
             "--trace", str(dial_trace), "-q"],
            capture_output=True, text=True, timeout=30, env=cli_env,
        )  # fmt: skip
        assert call.returncode == 0, call.stderr
        listen.wait(timeout=10)
        # tcpdump drops what it has not yet written when it is stopped: wait until
        # the file holds every message the dialler's trace has, then stop it.
        expected = len(trace_messages(dial_trace))
        deadline = time.monotonic() + 20
        while len(pcap_messages(capture)) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        dump.send_signal(signal.SIGTERM)
        dump.wait(timeout=10)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)

    sent = trace_messages(dial_trace)
    assert sum(d == ">" for d, _, _ in sent) > 200 and any(d == "<" for d, _, _ in sent)
    records = read(capture)
    seen = pcap_messages(capture)
    assert [m for m in seen if m[0] == ">"] == [m for m in sent if m[0] == ">"]
    assert [m for m in seen if m[0] == "<"] == [m for m in sent if m[0] == "<"]
    assert not [r for r in records if r.event == "warning"]
    result = trace(str(capture))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert f"#1 > uuid 16 uuid={uuid}" in lines[1]
    assert sum(" 5e1f2a3b > audio " in line for line in lines) == sum(
        d == ">" and k == 0x10 for d, k, _ in sent
    )
    assert [line.split()[-1] for line in lines if " > dtmf " in line] == ["digit=4", "digit=2"]
    assert "call-end" in lines[-1]


def test_port_means_only_that_port(tmp_path: Path) -> None:
    """--port names the AudioSocket port: a call on another port is not read, even one
    that starts with a UUID."""
    conn = TcpConn(("10.0.0.1", 40001), ("10.0.0.2", 9092))
    packets = [(T0 + i * 0.0001, p) for i, p in enumerate(conn.handshake())]
    packets.append((T0 + 0.01, conn.send(True, Message.for_uuid(UUID_A).encode())))
    packets.append((T0 + 0.03, conn.send(True, audio(1).encode())))
    packets += [(T0 + 0.05, conn.fin(True)), (T0 + 0.051, conn.fin(False))]
    path = write_capture(tmp_path / "9092.pcap", packets)
    assert trace(str(path)).exit_code == 0  # found by its UUID
    result = trace("--port", "9999", str(path))
    assert result.exit_code == 1
    assert "no AudioSocket connection among 1 TCP connection(s)" in one_error(result)
