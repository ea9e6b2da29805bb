"""The Wireshark dissector (files/dissector.lua), run by the real tshark.

Its decoding is checked message by message against `audiosocket trace --json`
of the same file: pcaps written with PcapWriter (messages split across
segments, many in one segment, IPv4 and IPv6, port 9092 and the UUID
heuristic) and a real `tcpdump -i lo` capture of `dial` calling `listen`.
Also: expert info, display filters, and the `audiosocket dissector` command.
"""

from __future__ import annotations

import io
import json
import os
import selectors
import shutil
import signal
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
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


def _connection_closed(path: Path) -> bool:
    """Has each side of the capture's connection sent its FIN (or either an RST)?"""
    try:
        data = path.read_bytes()
        reader = dpkt.pcap.Reader(io.BytesIO(data))
        fins = set()
        for _, buf in reader:
            ip = dpkt.ethernet.Ethernet(buf).data
            tcp = getattr(ip, "data", None)
            if not isinstance(tcp, dpkt.tcp.TCP):
                continue
            if tcp.flags & dpkt.tcp.TH_RST:
                return True
            if tcp.flags & dpkt.tcp.TH_FIN:
                fins.add(tcp.sport)
        return len(fins) == 2
    except (ValueError, struct.error, dpkt.UnpackError, OSError):
        return False  # the header or a packet is still being written


def _tcpdump_usable() -> bool:
    return shutil.which("tcpdump") is not None and os.geteuid() == 0


def test_real_call_captured_by_tcpdump(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """`dial` calls `listen --echo` on 127.0.0.1 while tcpdump captures `lo`."""
    need_tshark()
    if not _tcpdump_usable():
        if os.environ.get("CI"):
            pytest.fail("tcpdump and root are needed, and CI has them")
        pytest.skip("tcpdump is not installed or not root")
    capture = tmp_path / "call.pcap"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        listen = subprocess.Popen(
            [PYTHON, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--echo",
             "--max-calls", "1", "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env,
        )  # fmt: skip
        procs.append(listen)
        first = _wait_for_line(listen, "listening on ")
        assert first.startswith("listening on "), first
        port = int(first.split()[-1].rsplit(":", 1)[1])
        dump = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-w", str(capture),
             f"tcp port {port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        procs.append(dump)
        # tcpdump says so once its filter is on the socket: every packet after is captured.
        if "listening on" not in _wait_for_line(dump, "listening on"):
            pytest.skip("tcpdump cannot capture on lo")
        call = subprocess.run(
            [PYTHON, "-m", "audiosocket_cli", "dial", f"127.0.0.1:{port}", UUID_A,
             "--tone", "440", "--duration", "1", "--dtmf", "12@0.5", "-q"],
            capture_output=True, text=True, timeout=60, env=cli_env,
        )  # fmt: skip
        assert call.returncode == 0, call.stderr
        assert listen.wait(timeout=DEADLINE) == 0
        # Both FINs are in the file before tcpdump is stopped, so none is lost on the way.
        deadline = time.monotonic() + DEADLINE
        while not _connection_closed(capture):
            if time.monotonic() > deadline:
                raise AssertionError("tcpdump never wrote the end of the call")
            time.sleep(0.05)
        dump.send_signal(signal.SIGINT)
        assert dump.wait(timeout=DEADLINE) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)

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
