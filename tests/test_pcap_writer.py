"""PcapWriter: pcap files of what a command sent and received.

Read back with dpkt (handshake, sequence and acknowledgement numbers, packet
boundaries, timestamps, FIN and RST), with `audiosocket trace` (the same
call), and with the real tshark's TCP analysis (no malformed packets, bad
sequence numbers or checksums). Write errors and a killed writer leave a
valid file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import pytest
from conftest import PYTHON, ROOT

from audiosocket_cli.files.pcap import read_pcap
from audiosocket_cli.files.pcap_writer import ACK_AFTER, MSS, PcapWriter
from audiosocket_cli.protocol.wire import Message

T0 = 1_700_000_000.0
UUID = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
FIN, SYN, RST, PSH, ACK = (
    dpkt.tcp.TH_FIN, dpkt.tcp.TH_SYN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_ACK,
)  # fmt: skip


@dataclass
class Packet:
    ts: float
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    ack: int
    flags: int
    data: bytes
    version: int


def packets(path: Path) -> list[Packet]:
    """Every packet of a raw-IP pcap file, as dpkt reads it."""
    out = []
    with open(path, "rb") as stream:
        reader = dpkt.pcap.Reader(stream)
        assert reader.datalink() == 101  # LINKTYPE_RAW
        for ts, buf in reader:
            ip: Any = dpkt.ip.IP(buf) if buf[0] >> 4 == 4 else dpkt.ip6.IP6(buf)
            tcp = ip.data
            assert isinstance(tcp, dpkt.tcp.TCP)
            src = str(ipaddress.ip_address(ip.src))
            dst = str(ipaddress.ip_address(ip.dst))
            out.append(
                Packet(
                    ts=float(ts),
                    src=(src, tcp.sport),
                    dst=(dst, tcp.dport),
                    seq=tcp.seq,
                    ack=tcp.ack,
                    flags=tcp.flags,
                    data=bytes(tcp.data),
                    version=buf[0] >> 4,
                )
            )
    return out


def check_connection(pkts: list[Packet]) -> None:
    """The TCP rules one connection's packets must keep, in file order."""
    syn, syn_ack, ack = pkts[:3]
    assert (syn.flags, syn_ack.flags, ack.flags) == (SYN, SYN | ACK, ACK)
    assert syn_ack.ack == (syn.seq + 1) % 2**32 and ack.ack == (syn_ack.seq + 1) % 2**32
    client, server = syn.src, syn.dst
    next_seq = {client: (syn.seq + 1) % 2**32, server: (syn_ack.seq + 1) % 2**32}
    for p in pkts[2:]:
        peer = server if p.src == client else client
        assert p.dst == peer
        assert p.seq == next_seq[p.src], p
        if p.flags & ACK:
            assert p.ack == next_seq[peer], p
        next_seq[p.src] = (next_seq[p.src] + len(p.data) + (1 if p.flags & FIN else 0)) % 2**32


def test_handshake_data_and_fin(tmp_path: Path) -> None:
    path = tmp_path / "call.pcap"
    writer = PcapWriter(path)
    stream = writer.stream(("127.0.0.1", 40000), ("127.0.0.2", 9092), ts=T0)
    writes = [
        (">", Message.for_uuid(UUID).encode(), T0 + 0.001),
        (">", Message.audio(bytes(320)).encode(), T0 + 0.020),
        ("<", Message.audio(bytes(320)).encode() * 3, T0 + 0.0215),
        (">", b"\x03", T0 + 0.040),  # a message cut in two: boundaries are the calls
        (">", b"\x00\x015", T0 + 0.0400004),
    ]
    for direction, data, ts in writes:
        stream.data(direction, data, ts=ts)
    stream.data(">", b"", ts=T0 + 0.05)  # nothing to send: no packet
    stream.end("fin", by="<", ts=T0 + 0.06)
    stream.end("fin", by=">", ts=T0 + 0.07)  # once only
    stream.data(">", b"late", ts=T0 + 0.08)  # after the end: dropped
    writer.close()
    writer.close()
    assert writer.error is None

    pkts = packets(path)
    check_connection(pkts)
    assert [p.ts for p in pkts[:3]] == [T0] * 3
    client, server = ("127.0.0.1", 40000), ("127.0.0.2", 9092)
    assert (pkts[0].src, pkts[0].dst, pkts[0].version) == (client, server, 4)
    carrying = [p for p in pkts if p.data]
    assert [(">" if p.src == client else "<", p.data) for p in carrying] == [
        (d, payload) for d, payload, _ in writes
    ]
    assert all(p.flags == PSH | ACK for p in carrying)
    # Timestamps as given, to the microsecond.
    assert [round(p.ts * 1e6) for p in carrying] == [round(ts * 1e6) for _, _, ts in writes]
    # FIN from the server, FIN from the client, the last ACK from the server.
    tail = pkts[len(carrying) + 3 :]
    assert [(p.src, p.flags) for p in tail] == [
        (server, FIN | ACK), (client, FIN | ACK), (server, ACK),
    ]  # fmt: skip
    assert len(pkts) == 3 + len(writes) + 3


def test_ipv6_rst_and_addresses(tmp_path: Path) -> None:
    path = tmp_path / "v6.pcap"
    with PcapWriter(path) as writer:
        # getpeername() gives IPv6 4-tuples; brackets and scopes are accepted too.
        a = writer.stream(("::1", 50000, 0, 0), ("[::1]", 9092), ts=T0)  # type: ignore[arg-type]
        a.data(">", b"\x01\x00\x10" + bytes(16), ts=T0 + 1)
        a.end("rst", by="<", ts=T0 + 2)
        a.end("fin", ts=T0 + 3)
        # An IPv4 peer of an IPv6 socket shows as IPv4-mapped.
        b = writer.stream(("10.1.2.3", 50001), ("fe80::1%lo", 9092), ts=T0 + 4)
        b.end(ts=T0 + 5)
        with pytest.raises(ValueError, match="not an IP address"):
            writer.stream(("localhost", 1), ("::1", 2))
        with pytest.raises(ValueError, match="direction"):
            b.data("x", b"1")
        with pytest.raises(ValueError, match="'fin' or 'rst'"):
            b.end("close")
    pkts = packets(path)
    check_connection(pkts[:5])
    assert {p.version for p in pkts} == {6}
    assert pkts[0].src == ("::1", 50000) and pkts[0].dst == ("::1", 9092)
    assert (pkts[4].src, pkts[4].flags) == (("::1", 9092), RST | ACK)
    assert len(pkts) == 5 + 3 + 3
    assert pkts[5].src == ("::ffff:a01:203", 50001) and pkts[5].dst == ("fe80::1", 9092)
    check_connection(pkts[5:])


def test_large_writes_split_at_the_mss_and_are_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "big.pcap"
    writer = PcapWriter(path)
    stream = writer.stream(("127.0.0.1", 40000), ("127.0.0.1", 9092), ts=T0)
    big = bytes(range(256)) * 600  # 153600 bytes: two full segments and a bit
    stream.data(">", big, ts=T0 + 1)
    for n in range(ACK_AFTER // 1000 + 1):  # a receiver that sends nothing still acks
        stream.data(">", bytes(1000), ts=T0 + 2 + n / 1000)
    stream.end("fin", ts=T0 + 3)
    writer.close()
    pkts = packets(path)
    check_connection(pkts)
    first = [p for p in pkts if p.ts == T0 + 1 and p.data]
    assert [len(p.data) for p in first] == [MSS, MSS, len(big) - 2 * MSS]
    assert b"".join(p.data for p in first) == big
    bare_acks = [p for p in pkts[3:] if p.src[1] == 9092 and p.flags == ACK]
    assert len(bare_acks) == 2  # after the big write, and after 64 KiB more


def test_two_threads_two_calls(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Two threads write their own calls into one file at once: both come out whole."""
    path = tmp_path / "threads.pcap"
    writer = PcapWriter(path)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def call(n: int) -> None:
        try:
            uuid = f"{n}0325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
            stream = writer.stream(("127.0.0.1", 40000 + n), ("127.0.0.1", 9092))
            start.wait()
            stream.data(">", Message.for_uuid(uuid).encode())
            for i in range(300):
                frame = Message.audio(bytes([n, i % 256]) * 160).encode()
                stream.data(">", frame)
                stream.data("<", frame)
            stream.end("fin", by=">" if n == 1 else "<")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert errors == [] and writer.error is None

    pkts = packets(path)
    assert all(a.ts <= b.ts for a, b in zip(pkts, pkts[1:], strict=False))  # never back
    for port in (40001, 40002):
        check_connection([p for p in pkts if port in (p.src[1], p.dst[1])])
    calls: dict[int, list[Message]] = {}
    with open(path, "rb") as stream:
        for record in read_pcap(stream, str(path)):
            if record.message is not None:
                calls.setdefault(record.conn, []).append(record.message)
            else:
                assert record.event != "warning", record.text
    assert sorted(len(messages) for messages in calls.values()) == [601, 601]
    assert tshark_problems(path) == ""


def test_trace_reads_it_back_as_the_same_call(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = tmp_path / "call.pcap"
    sent = [
        (">", Message.for_uuid(UUID)),
        *[(">", Message.audio(bytes([i]) * 640, 16000)) for i in range(5)],
        ("<", Message.audio(b"\x01\x02" * 320, 16000)),
        (">", Message.dtmf("#")),
        ("<", Message.hangup()),
    ]
    writer = PcapWriter(path)
    stream = writer.stream(("192.0.2.1", 34567), ("192.0.2.2", 9092), ts=T0)
    for n, (direction, message) in enumerate(sent):
        stream.data(direction, message.encode(), ts=T0 + 0.02 * (n + 1))
    stream.end("fin", by=">", ts=T0 + 1)
    writer.close()

    with open(path, "rb") as stream_in:
        records = list(read_pcap(stream_in, str(path)))
    assert [(r.dir, r.message) for r in records if r.message] == sent
    assert [round(r.t, 6) for r in records if r.message] == [
        round(0.02 * (n + 1), 6) for n in range(len(sent))
    ]
    assert not [r for r in records if r.event == "warning"]

    proc = subprocess.run(
        [PYTHON, "-m", "audiosocket_cli", "trace", "--json", str(path)],
        capture_output=True, text=True, timeout=60, env=cli_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    messages = [r for r in lines if "kind" in r]
    assert [(r["dir"], r["type"], r["len"]) for r in messages] == [
        (d, m.kind, len(m.payload)) for d, m in sent
    ]
    assert messages[0]["uuid"] == UUID and messages[-2]["digit"] == "#"
    assert {r["call"] for r in messages[1:]} == {UUID}


# tshark's verdict.


def need_tshark() -> str:
    """tshark's path; skipped where it is missing, except in CI, which installs it."""
    path = shutil.which("tshark")
    if path is None:
        if not os.environ.get("CI"):
            pytest.skip("tshark is not installed (apt-get install tshark)")
        pytest.fail("tshark is not installed, and CI should have installed it")
    return path


# Any warning but the one every RST gets ("Connection reset").
PROBLEMS = (
    'tcp.analysis.flags || _ws.malformed || tcp.checksum.status == "Bad"'
    ' || ip.checksum.status == "Bad" || (_ws.expert.severity >= "Warning" && tcp.flags.reset == 0)'
)


def tshark_problems(path: Path) -> str:
    """What tshark's two-pass TCP analysis, with checksums checked, finds wrong."""
    proc = subprocess.run(
        [need_tshark(), "-n", "-2", "-r", str(path),
         "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
         "-o", "tcp.analyze_sequence_numbers:TRUE", "-Y", PROBLEMS],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_tshark_finds_nothing_wrong(tmp_path: Path) -> None:
    path = tmp_path / "clean.pcap"
    writer = PcapWriter(path)
    t = T0
    for n, (client, server) in enumerate(
        [(("127.0.0.1", 40000), ("127.0.0.1", 9092)), (("2001:db8::1", 40001), ("::1", 9092))]
    ):
        stream = writer.stream(client, server, ts=t)
        stream.data(">", Message.for_uuid(UUID).encode(), ts=t + 0.001)
        for i in range(200):  # an echo call
            frame = Message.audio(bytes([i % 256]) * 320).encode()
            stream.data(">", frame, ts=t + 0.02 * i)
            stream.data("<", frame, ts=t + 0.02 * i + 0.0005)
        for i in range(300):  # then one way only, with bare ACKs
            stream.data(">", bytes(3) + bytes(640), ts=t + 4 + 0.02 * i)
        stream.data("<", bytes(100_000), ts=t + 10)  # above the MSS
        stream.end("fin" if n == 0 else "rst", by="<", ts=t + 11)
        t += 20
    writer.close()
    assert tshark_problems(path) == ""
    summary = subprocess.run(
        [need_tshark(), "-n", "-r", str(path), "-q", "-z", "expert"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "Errors" not in summary and "Chats" in summary
    warnings = summary.split("Warns", 1)[1].split("Notes", 1)[0].strip().splitlines()[3:]
    assert [line.split(None, 3)[3] for line in warnings] == ["Connection reset (RST)"]

    # Not vacuous: the same check on the file with one data packet left out.
    with open(path, "rb") as stream_in:
        kept = [(ts, buf) for n, (ts, buf) in enumerate(dpkt.pcap.Reader(stream_in)) if n != 10]
    broken = tmp_path / "broken.pcap"
    with open(broken, "wb") as out:
        copy = dpkt.pcap.Writer(out, snaplen=262144, linktype=101)
        for ts, buf in kept:
            copy.writepkt(buf, ts)
    assert "TCP Previous segment not captured" in tshark_problems(broken)


# Errors and a killed writer.


WRITER_SCRIPT = """
import resource, signal, sys
from audiosocket_cli.files.pcap_writer import PcapWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
writer = PcapWriter(sys.argv[1])
stream = writer.stream(("127.0.0.1", 40000), ("127.0.0.1", 9092), ts=1.0)
stream.data(">", bytes([1, 0, 16]) + bytes(16), ts=2.0)
if sys.argv[2] == "limit":
    # Files may grow no further than this: the next write fails with EFBIG.
    resource.setrlimit(resource.RLIMIT_FSIZE, (writer._size + 1000, writer._size + 1000))
    for n in range(10):
        stream.data(">", bytes(300), ts=3.0 + n)  # never raises
    stream.end(ts=20.0)
    writer.close()
    print(writer.error)
else:
    print("written", flush=True)
    sys.stdin.read()  # killed here
"""


def test_write_error_is_kept_not_raised(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = tmp_path / "full.pcap"
    proc = subprocess.run(
        [PYTHON, "-c", WRITER_SCRIPT, str(path), "limit"],
        capture_output=True, text=True, timeout=60, env=cli_env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{path}: cannot write: "), proc.stdout
    # The packets before the error are all there, and nothing of the one that failed.
    pkts = packets(path)
    assert [len(p.data) for p in pkts] == [0, 0, 0, 19, 300, 300]
    check_connection(pkts)


def test_killed_writer_leaves_a_valid_file(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = tmp_path / "killed.pcap"
    proc = subprocess.Popen(
        [PYTHON, "-c", WRITER_SCRIPT, str(path), "kill"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=cli_env, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "written\n"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert [len(p.data) for p in packets(path)] == [0, 0, 0, 19]


def test_open_errors_raise(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        PcapWriter(tmp_path / "no-such-dir" / "x.pcap")
    with pytest.raises(OSError):
        PcapWriter(tmp_path)
