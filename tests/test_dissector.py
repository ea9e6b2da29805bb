"""The Wireshark dissector (files/dissector.lua), run by the real tshark.

Its decoding is checked message by message against `audiosocket trace --json`
of the same file: pcaps written with PcapWriter (messages split across
segments, many in one segment, IPv4 and IPv6, port 9092 and the UUID
heuristic) and real `tcpdump -i lo` captures of `dial` calling `listen`, and of
`listen --play` speaking before its caller's UUID. The heuristic's rule is checked
edge by edge, and against real captures of what is not AudioSocket (HTTP, TLS,
garbage). Also: expert info, display filters, and the `audiosocket dissector` command.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import random
import selectors
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dpkt
import pytest
from conftest import PYTHON, ROOT

from audiosocket_cli.files.pcap_writer import MSS, PcapWriter
from audiosocket_cli.protocol.wire import Message

LUA = ROOT / "audiosocket_cli" / "files" / "dissector.lua"
UUID_A = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
UUID_B = "5e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"
T0 = 1_700_000_000.0
HEURISTIC_PORT = 40123  # no Wireshark dissector claims it: only the UUID heuristic can match
RATES = (8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000)
# Limits on waiting for a subprocess event; reached only when something is broken.
DEADLINE = 30.0


def need_tshark() -> str:
    """tshark's path; skipped where it is missing, except in CI, which installs it."""
    path = shutil.which("tshark")
    if path is None:
        if not os.environ.get("CI"):
            pytest.skip("tshark is not installed (apt-get install tshark)")
        pytest.fail("tshark is not installed, and CI should have installed it")
    return path


def tshark(*args: str, lua: bool = True, env: dict[str, str] | None = None) -> str:
    command = [need_tshark(), "-n"]
    if lua:
        command += ["-X", f"lua_script:{LUA}"]
    proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    # A Lua error does not fail tshark: it shows up on stderr or in the tree.
    assert "Lua" not in proc.stderr and "lua_script" not in proc.stderr, proc.stderr
    return proc.stdout


def dissected(path: Path, *options: str) -> list[dict[str, Any]]:
    """Every AudioSocket message tshark shows, in order, as trace --json names its fields."""
    root = ET.fromstring(tshark("-r", str(path), "-T", "pdml", *options))
    out = []
    for packet in root.iter("packet"):
        number = packet.find("proto[@name='geninfo']/field[@name='num']")
        assert number is not None
        frame = int(number.get("show", ""))
        out += [_message(frame, proto) for proto in packet.findall("proto[@name='audiosocket']")]
    return out


def _message(frame: int, proto: ET.Element) -> dict[str, Any]:
    """One message's fields from its PDML <proto name="audiosocket">."""
    fields = {f.get("name", ""): f for f in proto.iter("field")}
    assert "_ws.lua.text" not in fields, "a Lua error in the dissector"

    def show(name: str) -> str:
        return fields[f"audiosocket.{name}"].get("show", "")

    def value(name: str) -> int:
        return int(fields[f"audiosocket.{name}"].get("value", ""), 16)

    msg: dict[str, Any] = {
        "frame": frame,
        "dir": show("dir"),
        "type": value("kind"),
        "len": int(show("len")),
    }
    for name in ("uuid", "digit"):
        if f"audiosocket.{name}" in fields:
            msg[name] = show(name)
    for name in ("rate", "samples"):
        if f"audiosocket.{name}" in fields:
            msg[name] = int(show(name))
    if "audiosocket.error_code" in fields:
        msg["code"] = value("error_code")
    experts = ("malformed", "refused", "error", "hangup")
    msg["experts"] = sorted(e for e in experts if f"audiosocket.{e}" in fields)
    return msg


def traced(path: Path, cli_env: dict[str, str]) -> list[dict[str, Any]]:
    """The messages `audiosocket trace --json` reads from the file."""
    proc = subprocess.run(
        [PYTHON, "-m", "audiosocket_cli", "trace", "--json", str(path)],
        capture_output=True, text=True, timeout=60, env=cli_env,
    )  # fmt: skip
    # 3: the file holds what breaks the protocol (the malformed messages under test).
    assert proc.returncode in (0, 3), proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    return [r for r in records if "kind" in r]


def same_fields(
    shown: dict[str, Any], record: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the dissector shows, what it should show) for one trace --json record."""
    want: dict[str, Any] = {"dir": record["dir"], "type": record["type"], "len": record["len"]}
    if record["kind"] == "uuid" and record.get("uuid"):
        want["uuid"] = record["uuid"]
    if record["kind"] == "dtmf" and record.get("digit") is not None:
        want["digit"] = record["digit"]
    if record["kind"] == "audio":
        want["rate"] = record["rate"]
        want["samples"] = record["len"] // 2
    if record["kind"] == "error" and record.get("code") is not None:
        want["code"] = record["code"]
    return {k: shown.get(k) for k in want}, want


def assert_same_messages(shown: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    assert len(shown) == len(records)
    for n, (msg, record) in enumerate(zip(shown, records, strict=True)):
        got, want = same_fields(msg, record)
        assert got == want, f"message {n}: tshark {msg} vs trace {record}"


# Crafted captures.


def audio(rate: int, samples: int, seed: int = 1) -> Message:
    return Message.audio(bytes((seed + i) % 251 for i in range(samples * 2)), rate)


def write_crafted(path: Path) -> list[tuple[str, Message]]:
    """Three connections: AudioSocket on 9092 (IPv4) and on another port (IPv6, found
    by the heuristic), and one that is not AudioSocket. The messages, in order."""
    sent: list[tuple[str, Message]] = []
    writer = PcapWriter(path)
    t = T0

    def tick() -> float:
        nonlocal t
        t += 0.01
        return t

    # On port 9092: the UUID cut into segments of 1, 2 and 16 bytes, a header cut after
    # two bytes, a message across three segments, and many messages in one segment.
    a = writer.stream(("127.0.0.1", 51000), ("127.0.0.1", 9092), ts=tick())
    uuid = Message.for_uuid(UUID_A)
    raw = uuid.encode()
    for part in (raw[:1], raw[1:3], raw[3:]):
        a.data(">", part, ts=tick())
    sent.append((">", uuid))
    frame = audio(8000, 160)
    raw = frame.encode()
    a.data(">", raw[:2], ts=tick())
    a.data(">", raw[2:100], ts=tick())
    a.data(">", raw[100:], ts=tick())
    sent.append((">", frame))
    burst = [audio(rate, 80, seed=n) for n, rate in enumerate(RATES)]
    burst += [Message.dtmf(d) for d in "0123456789*#ABCD"]
    burst += [Message.error(code) for code in (1, 2, 4, 7, 0x80)] + [Message.error()]
    a.data(">", b"".join(m.encode() for m in burst), ts=tick())
    sent += [(">", m) for m in burst]
    # More than one segment's worth in one write: the writer splits it at the MSS, and
    # a message straddles that boundary.
    frames = [audio(16000, 320, seed=n) for n in range(110)]
    big = b"".join(m.encode() for m in frames)
    assert len(big) > MSS and (MSS % len(frames[0].encode())) != 0
    a.data(">", big, ts=tick())
    sent += [(">", m) for m in frames]
    a.data(">", Message.dtmf("5").encode() + Message.hangup().encode(), ts=tick())
    sent += [(">", Message.dtmf("5")), (">", Message.hangup())]

    # A connection that is not AudioSocket; its second segment starts like a UUID message.
    other = writer.stream(("127.0.0.1", 51001), ("127.0.0.1", HEURISTIC_PORT + 1), ts=tick())
    other.data(">", b"GET / HTTP/1.0\r\n\r\n", ts=tick())
    other.data(">", b"\x01\x00\x10" + bytes(16), ts=tick())
    other.data("<", b"HTTP/1.0 200 OK\r\n\r\n", ts=tick())
    other.end("fin", by="<", ts=tick())

    # IPv6 on another port, interleaved with the first: the UUID heuristic finds it.
    b = writer.stream(("::1", 52000, 0, 0), ("::1", HEURISTIC_PORT), ts=tick())  # type: ignore[arg-type]
    b.data(">", Message.for_uuid(UUID_B).encode(), ts=tick())
    sent.append((">", Message.for_uuid(UUID_B)))
    for n in range(3):
        out, back = audio(24000, 480, seed=n), audio(24000, 480, seed=n + 7)
        raw = out.encode()
        b.data(">", raw[:500], ts=tick())
        a.data(">", frame.encode(), ts=tick())  # interleaved with the other call
        sent.append((">", frame))
        b.data(">", raw[500:], ts=tick())
        sent.append((">", out))
        b.data("<", back.encode(), ts=tick())
        sent.append(("<", back))
    b.data("<", Message.hangup().encode(), ts=tick())
    sent.append(("<", Message.hangup()))
    b.end("rst", by=">", ts=tick())
    a.end("fin", by=">", ts=tick())
    writer.close()
    assert writer.error is None
    return sent


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, Message]]]:
    path = tmp_path_factory.mktemp("crafted") / "crafted.pcap"
    return path, write_crafted(path)


def test_crafted_capture_matches_trace(
    crafted: tuple[Path, list[tuple[str, Message]]], cli_env: dict[str, str]
) -> None:
    path, sent = crafted
    shown = dissected(path)
    records = traced(path, cli_env)
    # trace and tshark agree, message by message, and both saw what was written.
    assert_same_messages(shown, records)
    assert [(r["dir"], r["type"], r["len"]) for r in records] == [
        (d, m.kind, len(m.payload)) for d, m in sent
    ]
    assert [m["digit"] for m in shown if "digit" in m] == list("0123456789*#ABCD5")
    assert [m.get("uuid") for m in shown if m["type"] == 1] == [UUID_A, UUID_B]
    assert {m["rate"] for m in shown if "rate" in m} == set(RATES)
    # Nothing here is malformed or refused; errors and hangups are flagged as such.
    assert [m for m in shown if {"malformed", "refused"} & set(m["experts"])] == []
    assert sum("error" in m["experts"] for m in shown) == 6
    assert sum("hangup" in m["experts"] for m in shown) == 2


def test_two_pass_dissection_is_the_same(
    crafted: tuple[Path, list[tuple[str, Message]]],
) -> None:
    """Wireshark dissects packets again when they are clicked; the state must hold."""
    path, _ = crafted
    assert dissected(path, "-2") == dissected(path)


def test_reassembly_places_messages_where_they_complete(
    crafted: tuple[Path, list[tuple[str, Message]]],
) -> None:
    path, _ = crafted
    shown = dissected(path)
    # The UUID came in frames 4, 5, 6 (after the handshake): shown once, in frame 6.
    assert (shown[0]["frame"], shown[0]["uuid"]) == (6, UUID_A)
    # The first audio frame, cut in three (frames 7-9), is one message in frame 9.
    assert (shown[1]["frame"], shown[1]["len"]) == (9, 320)
    # Frame 10 carries the whole burst: 9 audio, 16 DTMF, 6 error messages.
    assert sum(m["frame"] == 10 for m in shown) == 9 + 16 + 6
    # The write larger than the MSS is two packets; the message across them is in the second.
    big = [m for m in shown if m.get("rate") == 16000 and m["len"] == 640]
    assert len(big) == 110 and {m["frame"] for m in big} == {11, 12}


def test_filters(crafted: tuple[Path, list[tuple[str, Message]]]) -> None:
    path, _ = crafted

    def frames(expression: str) -> list[int]:
        out = tshark("-r", str(path), "-Y", expression, "-T", "fields", "-e", "frame.number")
        return [int(line) for line in out.split()]

    shown = dissected(path)

    def where(**fields: Any) -> list[int]:
        """Frames with a message having all these fields, from the PDML."""
        return sorted({m["frame"] for m in shown if all(m.get(k) == v for k, v in fields.items())})

    assert frames('audiosocket.digit == "5"') == where(digit="5") == [10, 14]
    assert frames("audiosocket.kind == 3") == where(type=3)
    assert frames("audiosocket.rate == 16000") == where(rate=16000) == [10, 11, 12]
    assert frames(f'audiosocket.uuid == "{UUID_B}"') == where(uuid=UUID_B)
    assert frames('audiosocket.dir == "<"') == where(dir="<") != []
    assert frames("audiosocket.error_code == 0x80") == where(code=0x80) == [10]
    assert frames("audiosocket.samples == 480") == where(samples=480) != []
    assert frames("audiosocket.len == 19") == []
    # The connection that is not AudioSocket stays plain TCP (and HTTP).
    assert frames(f"tcp.port == {HEURISTIC_PORT + 1} && audiosocket") == []


def test_expert_info_for_what_asterisk_refuses_and_malformed(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    bad = [
        Message(0x01, bytes(15)),  # uuid of 15 bytes
        Message(0x03, b"12"),  # dtmf of 2 bytes
        Message(0x03, b"x"),  # not a digit
        Message(0x10, b""),  # empty audio
        Message(0x12, b"\x00\x01\x02"),  # odd length
        Message(0x00, b"\x00"),  # hangup with a payload
        Message(0x42, b"\x09"),  # unassigned kind
        Message.error(),  # no code: fine from Asterisk
        Message.audio(bytes(320)),
    ]
    path = tmp_path / "bad.pcap"
    writer = PcapWriter(path)
    stream = writer.stream(("10.0.0.1", 40000), ("10.0.0.2", 9092), ts=T0)
    stream.data(">", Message.for_uuid(UUID_A).encode(), ts=T0 + 0.1)
    for n, message in enumerate(bad):
        stream.data(">", message.encode(), ts=T0 + 0.2 + n / 100)
    refused = [
        Message.for_uuid(UUID_B),
        Message.dtmf("1"),
        Message.error(2),
        Message(0x10, b""),
        Message(0x42, b""),
        Message.audio(bytes(320), 48000),  # fine
        Message.hangup(),  # fine
    ]
    stream.data("<", b"".join(m.encode() for m in refused), ts=T0 + 1)
    stream.end("fin", ts=T0 + 2)
    writer.close()

    shown = dissected(path)
    assert_same_messages(shown, traced(path, cli_env))
    expected = [(">", Message.for_uuid(UUID_A))] + [(">", m) for m in bad]
    expected += [("<", m) for m in refused]
    assert len(shown) == len(expected)
    for msg, (direction, message) in zip(shown, expected, strict=True):
        experts = set(msg["experts"])
        # wire.py is the oracle: what it calls a problem, and what Asterisk refuses.
        assert ("malformed" in experts) == (message.problem is not None), (msg, message)
        assert ("refused" in experts) == (direction == "<" and message.refused_by_asterisk)
    summary = tshark("-r", str(path), "-q", "-z", "expert")
    assert "Asterisk ends the session" in summary
    assert "unassigned kind 0x42" in summary and "uuid payload is 15 bytes, not 16" in summary


# A real call, captured by tcpdump.


def _wait_for_line(proc: subprocess.Popen[bytes], wanted: str) -> str:
    """The first stderr line of proc containing `wanted` ('' if proc ended first).

    Reads the pipe's bytes as they come (no text buffering that could hide a line
    from select), until that line is whole.
    """
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + DEADLINE
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                continue
            chunk = os.read(fd, 4096)
            seen += chunk
            for line in seen.decode(errors="replace").splitlines(keepends=True):
                if wanted in line and line.endswith("\n"):
                    return line.strip()
            if not chunk:
                return ""
    raise AssertionError(f"no {wanted!r} from {proc.args!r} in {DEADLINE} s: {seen!r}")


def _closed_connections(path: Path) -> int:
    """How many of the capture's connections have ended: a FIN from each side, or an RST.

    0 while the file's header or a packet is still being written.
    """
    try:
        reader = dpkt.pcap.Reader(io.BytesIO(path.read_bytes()))
        fins: dict[tuple[int, int], set[int]] = {}
        reset: set[tuple[int, int]] = set()
        for _, buf in reader:
            ip = dpkt.ethernet.Ethernet(buf).data
            tcp = getattr(ip, "data", None)
            if not isinstance(tcp, dpkt.tcp.TCP):
                continue
            key = (min(tcp.sport, tcp.dport), max(tcp.sport, tcp.dport))
            if tcp.flags & dpkt.tcp.TH_RST:
                reset.add(key)
            if tcp.flags & dpkt.tcp.TH_FIN:
                fins.setdefault(key, set()).add(tcp.sport)
        return len(reset | {key for key, sides in fins.items() if len(sides) == 2})
    except (ValueError, struct.error, dpkt.UnpackError, OSError):
        return 0


def _tcpdump_usable() -> bool:
    return shutil.which("tcpdump") is not None and os.geteuid() == 0


def _listening_port(listen: subprocess.Popen[bytes]) -> int:
    first = _wait_for_line(listen, "listening on ")
    assert first.startswith("listening on "), first
    return int(first.split()[-1].rsplit(":", 1)[1])


def need_tcpdump() -> None:
    """Skipped without tcpdump and root (or tshark), except in CI, which has them."""
    need_tshark()
    if not _tcpdump_usable():
        if os.environ.get("CI"):
            pytest.fail("tcpdump and root are needed, and CI has them")
        pytest.skip("tcpdump is not installed or not root")


def start_tcpdump(capture: Path, ports: list[int]) -> subprocess.Popen[bytes]:
    """tcpdump writing what passes on `lo` to or from these ports, once it captures.

    Not --immediate-mode: libpcap then rings packets in slots of the snapshot length
    (256 KiB), 8 of them in the default buffer, and a burst of small writes overflows
    it. Packets reach the file within tcpdump's timeout (1 s) instead.
    """
    expression = " or ".join(f"tcp port {port}" for port in ports)
    dump = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-U", "-B", "16384", "-w", str(capture), expression],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    # tcpdump says so once its filter is on the socket: every packet after is captured.
    if "listening on" not in _wait_for_line(dump, "listening on"):
        dump.kill()
        dump.wait(timeout=DEADLINE)
        pytest.skip("tcpdump cannot capture on lo")
    return dump


def stop_tcpdump(dump: subprocess.Popen[bytes], capture: Path, connections: int) -> None:
    """Stop tcpdump once every connection's end is in the file, so none is lost on the way."""
    deadline = time.monotonic() + DEADLINE
    while _closed_connections(capture) < connections:
        if time.monotonic() > deadline:
            raise AssertionError(f"tcpdump never wrote the end of {connections} connection(s)")
        time.sleep(0.05)
    dump.send_signal(signal.SIGINT)
    assert dump.wait(timeout=DEADLINE) == 0


def end_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_real_call_captured_by_tcpdump(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """`dial` calls `listen --echo` on 127.0.0.1 while tcpdump captures `lo`."""
    need_tcpdump()
    capture = tmp_path / "call.pcap"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        listen = subprocess.Popen(
            [PYTHON, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--echo",
             "--max-calls", "1", "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env,
        )  # fmt: skip
        procs.append(listen)
        port = _listening_port(listen)
        dump = start_tcpdump(capture, [port])
        procs.append(dump)
        call = subprocess.run(
            [PYTHON, "-m", "audiosocket_cli", "dial", f"127.0.0.1:{port}", UUID_A,
             "--tone", "440", "--duration", "1", "--dtmf", "12@0.5", "-q"],
            capture_output=True, text=True, timeout=60, env=cli_env,
        )  # fmt: skip
        assert call.returncode == 0, call.stderr
        assert listen.wait(timeout=DEADLINE) == 0
        stop_tcpdump(dump, capture, 1)
    finally:
        end_all(procs)

    # Heuristics first: the ephemeral port might be one a Wireshark dissector claims.
    shown = dissected(capture, "-o", "tcp.try_heuristic_first:TRUE")
    records = traced(capture, cli_env)
    for direction in "><":
        assert_same_messages(
            [m for m in shown if m["dir"] == direction],
            [r for r in records if r["dir"] == direction],
        )
    assert shown[0]["dir"] == ">" and shown[0]["uuid"] == UUID_A
    assert "".join(m["digit"] for m in shown if "digit" in m) == "12"
    assert sum(m["dir"] == ">" and m.get("rate") == 8000 for m in shown) >= 40
    assert sum(m["dir"] == "<" and m.get("rate") == 8000 for m in shown) >= 40
    assert [m for m in shown if {"malformed", "refused"} & set(m["experts"])] == []
    # The filter from the docs finds the digit.
    digits = tshark(
        "-r", str(capture), "-o", "tcp.try_heuristic_first:TRUE",
        "-Y", 'audiosocket.digit == "2"', "-T", "fields", "-e", "audiosocket.digit",
    )  # fmt: skip
    assert digits.split() == ["2"]


# The heuristic: an application that speaks first, and what is not AudioSocket.

# Every other protocol off, so that no other dissector takes a payload (by its port or its
# own heuristic) before AudioSocket's heuristic sees it. (A few heuristics stay on all the
# same, Q.931 over TPKT among them: 03 00 ... is theirs.)
OTHERS_OFF = (
    "--disable-protocol", "ALL",
    "--enable-protocol", "frame,eth,ip,ipv6,tcp,audiosocket",
)  # fmt: skip
HEURISTICS_FIRST = ("-o", "tcp.try_heuristic_first:TRUE")
DTMF_AFTER = {40: "1", 80: "2", 120: "3"}  # audio message number -> the digit sent after it


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"the peer closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def _drain(sock: socket.socket) -> None:
    """Read until the peer closes."""
    while sock.recv(65536):
        pass


def test_application_speaking_first_is_found(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """`listen --play` writes as soon as it accepts, before the caller's UUID: a real
    capture of that, on a port other than 9092, reads as `trace` reads it."""
    need_tcpdump()
    capture = tmp_path / "app-first.pcap"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        listen = subprocess.Popen(
            [PYTHON, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--play",
             str(ROOT / "samples" / "hello-8k.wav"), "--max-calls", "1", "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env,
        )  # fmt: skip
        procs.append(listen)
        port = _listening_port(listen)
        assert port != 9092
        dump = start_tcpdump(capture, [port])
        procs.append(dump)
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
            # The application's first audio message arrives before anything is sent.
            first = _recv_exactly(sock, 3 + 320)
            assert first[:3] == b"\x10\x01\x40"
            time.sleep(0.05)  # a caller slow with its UUID, as Asterisk may be
            sock.sendall(Message.for_uuid(UUID_A).encode())
            for n in range(150):
                sock.sendall(audio(8000, 160, seed=n).encode())
                if n in DTMF_AFTER:
                    sock.sendall(Message.dtmf(DTMF_AFTER[n]).encode())
            sock.shutdown(socket.SHUT_WR)
            _drain(sock)
        assert listen.wait(timeout=DEADLINE) == 0
        stop_tcpdump(dump, capture, 1)
    finally:
        end_all(procs)

    records = traced(capture, cli_env)
    assert (records[0]["dir"], records[0]["kind"]) == ("<", "audio")  # the application first
    # The same messages, in the same order, with the same directions; also when Wireshark
    # dissects the packets again (as when they are clicked).
    assert_same_messages(dissected(capture, *OTHERS_OFF), records)
    shown = dissected(capture, *HEURISTICS_FIRST)
    assert_same_messages(shown, records)
    assert dissected(capture, "-2", *HEURISTICS_FIRST) == shown
    assert shown[0]["dir"] == "<" and shown[0]["rate"] == 8000
    assert [m["uuid"] for m in shown if m["type"] == 1] == [UUID_A]
    assert next(m for m in shown if m["dir"] == ">")["type"] == 1  # Asterisk's first: the UUID
    assert sum(m["dir"] == ">" and m.get("rate") == 8000 for m in shown) == 150
    assert "".join(m["digit"] for m in shown if "digit" in m) == "123"
    assert {m["type"] for m in shown if m["dir"] == "<"} == {0x10}
    assert [m for m in shown if {"malformed", "refused"} & set(m["experts"])] == []


def _serve_once(greeting: bytes = b"") -> tuple[socket.socket, threading.Thread]:
    """A listening socket whose one connection gets `greeting` at once, then is read to
    its end and closed."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(DEADLINE)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(DEADLINE)
            conn.sendall(greeting)
            _drain(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def _call_once(port: int, data: bytes, wait_for: int = 0) -> None:
    """Connect, read `wait_for` bytes, send `data`, close, and wait for the server's close."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        _recv_exactly(sock, wait_for)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        _drain(sock)


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"hello\n" * 50
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _self_signed(directory: Path) -> tuple[Path, Path] | None:
    """(certificate, key) made by the openssl command, or None where it is missing."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _tls_exchange(cert: Path, key: Path) -> tuple[int, Callable[[], None]]:
    """A TLS server on a port of its own: (port, a function making one client connection)."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(DEADLINE)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(DEADLINE)
        with server_context.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(tls.recv(1024).upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def client() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        port = listener.getsockname()[1]
        with (
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock,
            context.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"hello over tls")
            assert tls.recv(1024) == b"HELLO OVER TLS"
        thread.join(DEADLINE)
        listener.close()

    return listener.getsockname()[1], client


@pytest.fixture(scope="module")
def others(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A real capture of connections that are not AudioSocket, and of one that is.

    HTTP (http.server and urllib), a TLS handshake and exchange (ssl, a certificate
    made by openssl here; left out where openssl is missing), `audiosocket check`'s
    garbage cases as a connection's first bytes (4.2's 512 random bytes, 4.1's
    unassigned kind), the fuzz corpus's seed of unassigned kinds, and random bytes and
    an unassigned kind sent first by the accepting side. The control: an AudioSocket
    call whose application speaks first, which must be found. Returns the capture and
    each connection's server port by name.
    """
    need_tcpdump()
    directory = tmp_path_factory.mktemp("others")
    capture = directory / "others.pcap"
    control_audio = audio(8000, 160).encode()
    first_bytes = {
        "garbage": random.Random(4).randbytes(512),  # check 4.2, the same bytes
        "unassigned": Message(0x42, b"\xde\xad\xbe\xef").encode() + control_audio,  # check 4.1
        "fuzz-odd-kinds": (ROOT / "tests" / "fuzz_corpus" / "decoder" / "odd-kinds").read_bytes(),
    }
    greetings = {
        "server-garbage": random.Random(5).randbytes(300),
        "server-unassigned": Message(0x42, b"\x01\x02").encode() + control_audio,
        "control": control_audio,
    }
    raw: dict[str, tuple[socket.socket, threading.Thread]] = {
        name: _serve_once() for name in first_bytes
    }
    raw.update({name: _serve_once(greeting) for name, greeting in greetings.items()})
    ports = {name: listener.getsockname()[1] for name, (listener, _) in raw.items()}
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    ports["http"] = http_server.server_address[1]
    http_thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    http_thread.start()
    tls_client = None
    keys = _self_signed(directory)
    if keys is not None:
        ports["tls"], tls_client = _tls_exchange(*keys)

    dump = start_tcpdump(capture, list(ports.values()))
    try:
        for name, data in first_bytes.items():
            _call_once(ports[name], data)
        _call_once(ports["server-garbage"], b"\x00" * 64, wait_for=300)
        _call_once(ports["server-unassigned"], b"", wait_for=len(greetings["server-unassigned"]))
        _call_once(
            ports["control"],
            Message.for_uuid(UUID_B).encode() + control_audio * 3 + Message.hangup().encode(),
            wait_for=len(control_audio),
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/", timeout=60) as reply:
            assert reply.read() == b"hello\n" * 50
        if tls_client is not None:
            tls_client()
        stop_tcpdump(dump, capture, len(ports))
    finally:
        end_all([dump])
        http_server.shutdown()
        http_server.server_close()
        for listener, thread in raw.values():
            thread.join(DEADLINE)
            listener.close()
    return capture, ports


def _packets_by_port(capture: Path, ports: dict[str, int], *options: str) -> dict[str, list]:
    """name -> [(sent by the server, payload length, AudioSocket kinds shown)] per packet."""
    out = tshark(
        "-r", str(capture), *options, "-T", "fields", "-E", "separator=/t",
        "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.len", "-e", "audiosocket.kind",
    )  # fmt: skip
    names = {port: name for name, port in ports.items()}
    packets: dict[str, list] = {name: [] for name in ports}
    for line in out.splitlines():
        src, dst, length, kinds = line.split("\t")
        server = int(src) if int(src) in names else int(dst)
        packets[names[server]].append((int(src) == server, int(length), kinds))
    return packets


@pytest.mark.parametrize(
    "name",
    ["http", "tls", "garbage", "unassigned", "fuzz-odd-kinds", "server-garbage",
     "server-unassigned"],
)  # fmt: skip
def test_heuristic_claims_no_other_protocol(others: tuple[Path, dict[str, int]], name: str) -> None:
    capture, ports = others
    if name not in ports:
        pytest.skip("the openssl command is missing: no certificate for the TLS server")
    # With AudioSocket's heuristic alone (every first payload goes to it), and with every
    # dissector but heuristics first.
    for options in (OTHERS_OFF, HEURISTICS_FIRST):
        packets = _packets_by_port(capture, ports, *options)[name]
        assert [p for p in packets if p[2]] == []
        # The connection is in the capture, with bytes each way where both spoke.
        assert sum(length for _, length, _ in packets) > 0
    if name in ("http", "tls"):
        # Both sides spoke, and it is what it should be when decoded as such.
        assert {by_server for by_server, length, _ in packets if length} == {True, False}
        port = ports[name]
        check = {"http": "http.response.code == 200", "tls": "tls.handshake.type == 1"}[name]
        out = tshark("-r", str(capture), "-d", f"tcp.port=={port},{name}", "-Y", check, lua=False)
        assert out.strip()


def test_heuristic_finds_the_call_among_others(
    others: tuple[Path, dict[str, int]], cli_env: dict[str, str]
) -> None:
    """The control: in the same capture, the call whose application spoke first is found,
    whole, both ways, and it is all that is found."""
    capture, ports = others
    for options in (OTHERS_OFF, HEURISTICS_FIRST):
        packets = _packets_by_port(capture, ports, *options)
        assert [p for p in packets["control"] if p[1]] == [
            (True, 3 + 320, "0x10"),
            (False, 19 + 3 * 323 + 3, "0x01,0x10,0x10,0x10,0x00"),
        ]
        claimed = {name for name, found in packets.items() if any(p[2] for p in found)}
        assert claimed == {"control"}
    shown = dissected(capture, *OTHERS_OFF)
    assert [(m["dir"], m["type"]) for m in shown] == [
        ("<", 0x10), (">", 0x01), (">", 0x10), (">", 0x10), (">", 0x10), (">", 0x00),
    ]  # fmt: skip
    assert_same_messages(shown, traced(capture, cli_env))


# The heuristic's rule, edge by edge, on crafted captures.


def _without_handshake(path: Path, port: int) -> None:
    """Drop the handshake (its first three packets) of the connection on `port`: as in a
    capture that began after the connection opened."""
    with path.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        linktype = reader.datalink()
        packets = list(reader)
    dropped = 0
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=linktype)
        for ts, buf in packets:
            tcp = dpkt.ip.IP(buf).data
            if dropped < 3 and port in (tcp.sport, tcp.dport):
                dropped += 1
                continue
            writer.writepkt(buf, ts)


def test_heuristic_rule(tmp_path: Path) -> None:
    """Each way of starting a connection, by its server port: the payload packets claimed,
    in one pass (as tshark reads) and in two (the verdict of the whole capture, as
    Wireshark shows a packet clicked after reading the file)."""
    path = tmp_path / "edges.pcap"
    writer = PcapWriter(path)
    t = T0
    frame = audio(8000, 160).encode()
    one_pass: dict[int, list[bool]] = {}  # server port -> each payload packet claimed?
    two_pass: dict[int, list[bool]] = {}

    def connection(
        port: int, *payloads: tuple[str, bytes], claimed: list[bool], found: bool = True
    ) -> None:
        """found: still AudioSocket at the end of the capture (else nothing is, later)."""
        nonlocal t
        stream = writer.stream(("127.0.0.1", 50000 + port % 10000), ("127.0.0.1", port), ts=t)
        for direction, payload in payloads:
            t += 0.01
            stream.data(direction, payload, ts=t)
        t += 0.01
        stream.end("fin", ts=t)
        one_pass[port] = claimed
        two_pass[port] = claimed if found else [False] * len(claimed)

    uuid = Message.for_uuid(UUID_A).encode()
    hangup = Message.hangup().encode()
    # Found: the application first (one message, several, a hangup last), then the UUID.
    connection(41001, ("<", frame), (">", uuid + frame), ("<", frame), claimed=[True] * 3)
    connection(41002, ("<", frame * 3 + hangup), (">", uuid), claimed=[True] * 2)
    # (A packet with only part of a message shows none: the UUID cut after 2 bytes.)
    connection(41003, ("<", frame), (">", uuid[:2]), (">", uuid[2:]), claimed=[True, False, True])
    connection(41004, *[("<", frame)] * 50, (">", uuid), claimed=[True] * 51)
    # Found, then not: the connecting side's first bytes are no UUID, the application
    # sends what it may not, or too much, before the UUID came. From that packet on,
    # nothing is claimed; and nothing at all once the whole capture is known.
    connection(
        41005, ("<", frame), ("<", frame), (">", b"GET / HTTP/1.0\r\n\r\n"), ("<", frame),
        claimed=[True, True, False, False], found=False,
    )  # fmt: skip
    connection(
        41006, ("<", frame), ("<", Message.dtmf("1").encode()), (">", uuid),
        claimed=[True, False, False], found=False,
    )  # fmt: skip
    connection(41007, ("<", frame), ("<", b"\x42\x00\x00"), claimed=[True, False], found=False)
    connection(
        41008, *[("<", frame)] * 51, (">", uuid), claimed=[True] * 50 + [False] * 2, found=False
    )
    # Never confirmed: the connecting side says nothing.
    connection(41009, ("<", frame), claimed=[True], found=False)
    # Audio first from the side that connected is taken as the application's (which side
    # sent the SYN is not known to the heuristic), until the other side's bytes are no UUID.
    connection(41010, (">", frame), ("<", frame), claimed=[True, False], found=False)
    # Not found: a first payload that is not whole messages the application may send.
    for n, first in enumerate(
        [
            frame[:-1],  # cut short
            frame + b"\x00",  # a byte after
            frame + frame[:5],  # a second message cut
            Message(0x10, b"\x01\x02\x03").encode(),  # odd length
            Message(0x10, b"").encode(),  # empty audio
            hangup,  # a hangup alone
            hangup + frame,  # a hangup first
            Message.dtmf("5").encode(),  # DTMF: Asterisk's, after its UUID
            Message.error(2).encode(),
            Message(0x42, b"\xde\xad\xbe\xef").encode(),  # an unassigned kind
            Message(0x19, bytes(320)).encode(),  # the kind after the last audio kind
            bytes.fromhex("1603010200") + bytes(0x200),  # a TLS ClientHello record
            bytes.fromhex("1603020200") + bytes(0x200),  # TLS 1.1: an even "length" 0x0302
            b"\x10",
        ]
    ):
        connection(41100 + n, ("<", first), (">", uuid), claimed=[False, False])
        connection(41200 + n, (">", first), ("<", frame), claimed=[False, False])
    # Random first payloads from either side, of lengths around an audio frame's.
    rng = random.Random(7)
    for n in range(400):
        payload = rng.randbytes(rng.choice([1, 2, 5, 20, 100, 323, 643, 1000]))
        connection(42000 + n, ("<>"[n % 2], payload), ("><"[n % 2], frame), claimed=[False] * 2)
    # The application first, but the capture began after the connection opened: which
    # side is which cannot be known, so it is not found (Decode As is for that).
    connection(41300, ("<", frame), (">", frame), claimed=[False, False])
    writer.close()
    assert writer.error is None
    _without_handshake(path, 41300)

    for options, expected in (((), one_pass), (("-2",), two_pass)):
        out = tshark(
            "-r", str(path), *OTHERS_OFF, *options, "-Y", "tcp.len > 0",
            "-T", "fields", "-e", "tcp.dstport", "-e", "tcp.srcport", "-e", "audiosocket.kind",
        )  # fmt: skip
        seen: dict[int, list[bool]] = {port: [] for port in expected}
        for line in out.splitlines():
            dst, src, kinds = line.split("\t")
            seen[min(int(dst), int(src))].append(bool(kinds))
        assert seen == expected, options
    # The directions of a call found by its application's first message.
    shown = dissected(path, *OTHERS_OFF)
    assert [(m["dir"], m["type"]) for m in shown[:4]] == [
        ("<", 0x10), (">", 0x01), (">", 0x10), ("<", 0x10),
    ]  # fmt: skip


# The `audiosocket dissector` command.


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "audiosocket_cli", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_dissector_command_prints_the_lua(cli_env: dict[str, str]) -> None:
    proc = run_cli("dissector", env=cli_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == LUA.read_text(encoding="utf-8")
    assert proc.stderr == ""
    help_text = run_cli("dissector", "--help", env=cli_env).stdout
    assert "--install" in help_text and "audiosocket dissector --install" in help_text


def test_dissector_install(
    tmp_path: Path, cli_env: dict[str, str], crafted: tuple[Path, list[tuple[str, Message]]]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = dict(cli_env, HOME=str(home))
    env.pop("XDG_CONFIG_HOME", None)
    proc = run_cli("dissector", "--install", env=env)
    assert proc.returncode == 0, proc.stderr
    installed = home / ".config" / "wireshark" / "plugins" / "audiosocket.lua"
    assert installed.read_text(encoding="utf-8") == LUA.read_text(encoding="utf-8")
    assert str(installed) in proc.stderr and proc.stdout == ""
    # tshark finds it there by itself, without -X.
    path, _ = crafted
    out = tshark("-r", str(path), "-Y", 'audiosocket.digit == "5"', lua=False, env=env)
    assert len(out.splitlines()) == 2

    xdg = tmp_path / "xdg"
    env["XDG_CONFIG_HOME"] = str(xdg)
    proc = run_cli("dissector", "--install", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (xdg / "wireshark" / "plugins" / "audiosocket.lua").is_file()
    # Installing again replaces the file.
    assert run_cli("dissector", "--install", env=env).returncode == 0

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    env["XDG_CONFIG_HOME"] = str(blocked)
    proc = run_cli("dissector", "--install", env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("audiosocket: error: ") and proc.stderr.count("\n") == 1
