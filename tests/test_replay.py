"""`audiosocket replay` against a real server on 127.0.0.1.

The traces are written here with tracefile.TraceWriter (and the captures
with dpkt, see test_pcap.py); the server is this module's own, which keeps
every byte with the monotonic time it arrived. Timing is real only in the
tests that check timing (a ~2 s trace at --speed 1); elsewhere --speed 0.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result
from test_pcap import T0, TcpConn, write_capture

from audiosocket_cli.files.trace import TraceWriter
from audiosocket_cli.protocol.events import CallEnd, CallInfo, CallStart
from audiosocket_cli.protocol.wire import Decoder, Message, decode_all

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
UUID = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
OTHER = "0badc0de-0000-4000-8000-000000000001"


# A server of our own.


class Conn:
    """One accepted connection: every chunk with its arrival time, and a way to answer."""

    def __init__(self, sock: socket.socket, on_message: Callable | None) -> None:
        self.sock = sock
        self.chunks: list[tuple[float, bytes]] = []
        self.messages: list[tuple[float, Message]] = []
        self.ended = threading.Event()
        self.on_message = on_message
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        decoder = Decoder()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                break
            now = time.monotonic()
            if not data:
                break
            self.chunks.append((now, data))
            decoder.feed(data)
            for message in decoder.messages():
                self.messages.append((now, message))
                if self.on_message is not None:
                    try:
                        self.on_message(self, message)
                    except OSError:
                        pass
        self.ended.set()

    @property
    def data(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)

    def send(self, message: Message) -> None:
        self.sock.sendall(message.encode())

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Server:
    def __init__(self, on_message: Callable | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.conns: list[Conn] = []
        self.on_message = on_message
        self.accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns.append(Conn(sock, self.on_message))
            self.accepted.set()

    def conn(self, timeout: float = 5.0) -> Conn:
        assert self.accepted.wait(timeout), "nothing connected"
        conn = self.conns[0]
        assert conn.ended.wait(timeout), "the call did not end"
        return conn

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def server() -> Server:
    srv = Server()
    yield srv
    srv.close()


def echo(conn: Conn, message: Message) -> None:
    if message.is_audio:
        conn.send(message)


# Traces made here.


def frame(n: int, size: int = 320) -> bytes:
    """Distinct 16-bit samples per frame, so order and loss show."""
    values = (np.arange(size // 2, dtype=np.int64) * 3 + n * 997) % 60000 - 30000
    return values.astype("<i2").tobytes()


def write_trace(
    path: Path, calls: list[tuple[str | None, list]], ended: dict | None = None
) -> Path:
    """calls: (uuid, [(t, dir, Message)]) per connection; `>` first message is the UUID."""
    writer = TraceWriter(str(path), command="test")
    for conn, (uuid, messages) in enumerate(calls, start=1):
        call = CallInfo(conn=conn, started_ts=1_764_000_000.0 + conn)
        writer.event(call, CallStart(0.0, "peer=127.0.0.1:40000", {"peer": "127.0.0.1:40000"}))
        last = 0.0
        for t, direction, message in messages:
            writer.message(call, t, direction, message, None)
            if message.name == "uuid" and uuid:
                call.uuid = uuid
            last = t
        end = dict(ended or {"ended": "caller-close"})
        writer.event(
            call,
            CallEnd(last, end.pop("ended"), "", {}, "", fields=end),
        )
    writer.close()
    return path


def short_call(uuid: str = UUID, frames: int = 10, echoed: bool = True) -> list:
    out = [(0.0004, ">", Message.for_uuid(uuid))]
    for k in range(frames):
        t = 0.02 * (k + 1)
        out.append((t, ">", Message.audio(frame(k))))
        if echoed:
            out.append((t + 0.001, "<", Message.audio(frame(k))))
    out.append((0.02 * frames + 0.005, ">", Message.dtmf("5")))
    return out


def sent_side(messages: list) -> list[Message]:
    return [m for _, d, m in messages if d == ">"]


def replay(*args: str) -> Result:
    from audiosocket_cli.cli import cli

    return CliRunner().invoke(cli, ["replay", *args], catch_exceptions=False)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def events(result: Result, name: str) -> list[dict]:
    return [e for e in json_lines(result.stdout) if e.get("event") == name]


def one_error(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("audiosocket:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def run_subprocess(args: list[str], env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "audiosocket_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def timing_error(arrivals: list[float], wanted: list[float]) -> float:
    """How far the replay was from its schedule, robustly: the larger of the 90th
    percentile of the messages' distances from their times and the last message's
    (both counted from the first). A scheduler stall on a busy machine delays a few
    messages; a drifting or bursting clock moves most of them, and the last."""
    assert len(arrivals) == len(wanted)
    errors = sorted(
        abs((a - arrivals[0]) - (w - wanted[0])) for a, w in zip(arrivals, wanted, strict=True)
    )
    last = abs((arrivals[-1] - arrivals[0]) - (wanted[-1] - wanted[0]))
    return max(errors[int(0.9 * (len(errors) - 1))], last)


def sent_stamps(stdout: str) -> list[float]:
    """replay's own times of its sends (taken as each write returned), from --json."""
    return [e["t"] for e in json_lines(stdout) if e.get("dir") == ">" and "type" in e]


def paced_on_arrival(arrivals: list[float], wanted: list[float]) -> None:
    """The receiver's view, loosely: what it timed has the schedule's shape, neither
    bunched nor stretched (its own thread, on a busy machine, adds its own delays; the
    5 ms bound is on replay's own stamps)."""
    assert timing_error(arrivals, wanted) < 0.05, (arrivals, wanted)


def within(
    attempt: Callable[[], tuple[list[float], list[float]]], tolerance: float = 0.005, tries: int = 5
) -> None:
    """On schedule within `tolerance` (see timing_error), in one of a few tries.

    Each try is a whole real-time replay; the machine is shared with other
    work, so a stall from the scheduler is not taken for the tool's fault,
    but every try is reported when none succeeds.
    """
    worst = []
    for _ in range(tries):
        error = timing_error(*attempt())
        if error < tolerance:
            return
        worst.append(f"{error * 1000:.2f}")
    pytest.fail(f"the replay was more than {tolerance * 1000:g} ms off in each try: {worst} ms")


# The bytes.


def test_bytes_arrive_as_in_the_trace(tmp_path: Path, server: Server) -> None:
    messages = short_call()
    messages.insert(5, (0.05, ">", Message(0x10, b"\x01\x02\x03")))  # odd: sent as it was
    trace = write_trace(tmp_path / "call.trace", [(UUID, messages)])
    result = replay(str(trace), server.address, "--speed", "0", "--json", "--linger", "0.2")
    assert result.exit_code == 0, result.stderr
    conn = server.conn()
    assert conn.data == b"".join(m.encode() for m in sent_side(messages))
    shown = [e for e in json_lines(result.stdout) if e.get("dir") == ">"]
    assert [(e["type"], e["len"]) for e in shown] == [
        (m.kind, len(m.payload)) for m in sent_side(messages)
    ]
    start = events(result, "call-start")[0]
    assert start["original_call"] == UUID and start["peer"] == server.address
    end = events(result, "call-end")[0]
    assert end["ended"] == "caller-close" and end["call"] == UUID


def test_timing_at_speed_1(tmp_path: Path, cli_env: dict) -> None:
    """A 2 s trace with irregular gaps: each message within 5 ms, in its own write."""
    messages = [(0.0004, ">", Message.for_uuid(UUID))]
    t = 0.02
    for k in range(60):
        messages.append((t, ">", Message.audio(frame(k))))
        t += 0.02 if k != 30 else 0.15  # a pause, as when Asterisk's channel is silent
    messages.append((1.5173, ">", Message.dtmf("3")))
    messages.append((1.5174, ">", Message.dtmf("#")))  # 0.1 ms later: still its own send
    for k in range(20):
        messages.append((1.6 + 0.02 * k, ">", Message.audio(frame(100 + k))))
    trace = write_trace(tmp_path / "call.trace", [(UUID, messages)])

    def attempt() -> tuple[list[float], list[float]]:
        target = Server()
        try:
            done = run_subprocess(
                ["replay", str(trace), target.address, "--linger", "0", "--json"], cli_env
            )
            assert done.returncode == 0, done.stderr
            conn = target.conn()
        finally:
            target.close()
        assert [m for _, m in conn.messages] == sent_side(messages)
        # One write per message: no read ends inside a message, and with 20 ms
        # between them nearly every message arrives alone.
        sizes = [len(m.encode()) for m in sent_side(messages)]
        boundaries = {sum(sizes[:n]) for n in range(len(sizes) + 1)}
        ends = [sum(len(c) for _, c in conn.chunks[: n + 1]) for n in range(len(conn.chunks))]
        assert set(ends) <= boundaries
        assert len(conn.chunks) >= 0.9 * len(sizes)
        end = [e for e in json_lines(done.stdout) if e.get("event") == "call-end"][0]
        assert end["ended"] == "caller-close" and end["max_send_lag_ms"] >= 0
        paced_on_arrival([a for a, _ in conn.messages], [t for t, _, _ in messages])
        return sent_stamps(done.stdout), [t for t, _, _ in messages]

    within(attempt)


def test_speed_0_and_speed_2(tmp_path: Path, server: Server) -> None:
    messages = short_call(frames=50)  # 1 s of audio
    trace = write_trace(tmp_path / "call.trace", [(UUID, messages)])
    result = replay(str(trace), server.address, "--speed", "0", "--linger", "0", "-q")
    assert result.exit_code == 0
    arrivals = [a for a, _ in server.conn().messages]
    assert arrivals[-1] - arrivals[0] < 0.5  # not paced: the trace spans 1 s

    second = Server()
    try:
        result = replay(str(trace), second.address, "--speed", "2", "--linger", "0", "-q")
        assert result.exit_code == 0
        arrivals = [a for a, _ in second.conn().messages]
        spread = arrivals[-1] - arrivals[0]
        assert 0.45 < spread < 0.6  # 1 s of trace at twice the speed
    finally:
        second.close()


# Choosing a call, and the inputs.


def test_call_selection(tmp_path: Path, server: Server) -> None:
    first, second = short_call(UUID, frames=3), short_call(OTHER, frames=5)
    trace = write_trace(tmp_path / "two.trace", [(UUID, first), (OTHER, second)])
    result = replay(str(trace), server.address, "--speed", "0")
    assert result.exit_code == 2
    line = one_error(result)
    assert "holds 2 calls; pick one with --call" in line
    assert f"{UUID} (#1, 5 messages" in line and f"{OTHER} (#2, 7 messages" in line
    assert not server.conns

    result = replay(str(trace), server.address, "--speed", "0", "--call", "0BADC0", "--linger", "0")
    assert result.exit_code == 0, result.stderr
    assert decode_all(server.conn().data) == sent_side(second)

    again = Server()
    try:
        result = replay(str(trace), again.address, "--speed", "0", "--call", "#1", "--linger", "0")
        assert result.exit_code == 0
        assert decode_all(again.conn().data) == sent_side(first)
    finally:
        again.close()

    result = replay(str(trace), server.address, "--call", "ffff")
    assert result.exit_code == 2
    assert "no call 'ffff'" in one_error(result)


def test_raw_dump_paced_by_audio_duration(cli_env: dict) -> None:
    """samples/call.raw: no timing; each message at the sum of the audio before it."""
    raw = (SAMPLES / "call.raw").read_bytes()
    messages = decode_all(raw)
    wanted, t = [], 0.0
    for message in messages:
        wanted.append(t)
        t += message.duration
    assert 1.9 < t < 2.1

    def attempt() -> tuple[list[float], list[float]]:
        target = Server()
        try:
            done = run_subprocess(
                ["replay", str(SAMPLES / "call.raw"), target.address, "--speed", "4",
                 "--linger", "0", "--json"],
                cli_env,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            conn = target.conn()
        finally:
            target.close()
        assert conn.data == raw
        overall = [e for e in json_lines(done.stdout) if e.get("item") == "overall"]
        assert overall[0]["same"] is None and "nothing to compare with" in overall[0]["text"]
        paced_on_arrival([a for a, _ in conn.messages], [w / 4 for w in wanted])
        return sent_stamps(done.stdout), [w / 4 for w in wanted]

    within(attempt)


def test_packet_capture_replay(tmp_path: Path, server: Server) -> None:
    from test_pcap import two_calls

    packets, expected = two_calls()
    capture = write_capture(tmp_path / "calls.pcap", packets)
    result = replay(str(capture), server.address, "--speed", "0")
    assert result.exit_code == 2 and "holds 2 calls" in one_error(result)
    result = replay(str(capture), server.address, "--speed", "0", "--call", "1111", "--json",
                    "--linger", "0")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    wanted = [m for _, d, m in expected[0].messages if d == ">"]
    assert decode_all(server.conn().data) == wanted
    compared = {e["item"]: e for e in events(result, "diagnosis") if e.get("code") == "compare"}
    assert compared["messages"]["original"] == {"audio": 10}
    assert compared["ending"]["original"] == "caller-close"  # the client closed (FIN)


def test_capture_with_port_and_speed_1(tmp_path: Path, cli_env: dict) -> None:
    """Capture times drive the pacing too: 20 frames 25 ms apart take 475 ms."""
    conn = TcpConn(("10.0.0.1", 40001), ("10.0.0.2", 4573))
    packets = [(T0 + i * 0.0001, p) for i, p in enumerate(conn.handshake())]
    for k in range(20):
        packets.append((T0 + 0.025 * (k + 1), conn.send(True, Message.audio(frame(k)).encode())))
    capture = write_capture(tmp_path / "port.pcap", packets)
    wanted = [0.025 * k for k in range(20)]

    def attempt() -> tuple[list[float], list[float]]:
        target = Server()
        try:
            done = run_subprocess(
                ["replay", str(capture), target.address, "--port", "4573", "--linger", "0",
                 "--json"],
                cli_env,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            got = target.conn().messages
        finally:
            target.close()
        assert [m for _, m in got] == [Message.audio(frame(k)) for k in range(20)]
        paced_on_arrival([a for a, _ in got], wanted)
        return sent_stamps(done.stdout), wanted

    # Its own process, timed on its own stamps; twenty frames, so that one or two a busy
    # machine delays are not the verdict (see timing_error).
    within(attempt)


def test_bad_inputs(tmp_path: Path, server: Server) -> None:
    trace = write_trace(tmp_path / "call.trace", [(UUID, short_call(frames=2))])
    cases = [
        ([str(tmp_path / "missing.trace")], 1, "no such file"),
        ([str(tmp_path)], 1, "is a directory"),
        ([str(SAMPLES / "hello-8k.wav")], 1, "not a trace file, packet capture or AudioSocket"),
        ([str(trace), "--speed", "-1"], 2, "--speed"),
        ([str(trace), "--linger", "x"], 2, "--linger"),
        ([str(trace), "127.0.0.1:http"], 2, "ADDRESS"),
        ([str(trace), "127.0.0.1:99999"], 2, "port"),
        ([str(trace), "--record", str(tmp_path / "no" / "x.wav")], 1, "no such folder"),
    ]
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    cases.append(([str(empty)], 1, "empty: no AudioSocket messages"))
    asterisk_only = write_trace(tmp_path / "x.trace", [(UUID, [(0.1, "<", Message.hangup())])])
    cases.append(([str(asterisk_only)], 1, "no messages toward the application"))
    for args, status, text in cases:
        if len(args) == 1 or args[1].startswith("--"):
            args = [args[0], server.address, *args[1:]]
        result = replay(*args)
        assert result.exit_code == status, (args, result.stderr)
        assert text in one_error(result), (args, result.stderr)
    assert not server.conns  # none of these made a call
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = replay(str(trace), f"127.0.0.1:{port}")
    assert result.exit_code == 1
    assert f"cannot connect to 127.0.0.1:{port}" in one_error(result)


# What comes back.


def test_record_and_comparison(tmp_path: Path) -> None:
    """The server echoes, as the original application did: same answer, recorded exactly."""
    messages = short_call(frames=10)
    trace = write_trace(tmp_path / "call.trace", [(UUID, messages)])
    server = Server(on_message=echo)
    try:
        wav = tmp_path / "back.wav"
        again = str(tmp_path / "again.trace")
        result = replay(str(trace), server.address, "--speed", "0", "--record", str(wav),
                        "--json", "--linger", "0.3", "--trace", again)  # fmt: skip
        assert result.exit_code == 0, result.stderr
        conn = server.conn()
    finally:
        server.close()
    samples, rate = sf.read(wav, dtype="int16")
    assert rate == 8000
    assert samples.astype("<i2").tobytes() == b"".join(frame(k) for k in range(10))
    compared = {e["item"]: e for e in events(result, "diagnosis") if e.get("code") == "compare"}
    assert set(compared) == {"messages", "audio", "dtmf", "ending", "overall"}
    assert all(e["same"] for e in compared.values()), compared
    assert compared["audio"]["now"] == compared["audio"]["original"] == 0.2
    assert compared["ending"]["now"] == "caller-close"
    assert conn.data == b"".join(m.encode() for m in sent_side(messages))
    # The replay's own trace holds both sides, and replays in turn.
    lines = (tmp_path / "again.trace").read_text().splitlines()
    kept = [json.loads(line) for line in lines[1:]]
    assert [base64.b64decode(k["data"]) for k in kept if k.get("dir") == "<"] == [
        frame(k) for k in range(10)
    ]


def test_plain_summary_and_a_different_answer(tmp_path: Path) -> None:
    """This time the application hangs up after 3 frames: the summary says so."""
    messages = short_call(frames=10)
    trace = write_trace(tmp_path / "call.trace", [(UUID, messages)])
    seen = []

    def hang_up_third(conn: Conn, message: Message) -> None:
        seen.append(message)
        if len(seen) == 4:
            conn.send(Message.audio(frame(7)))
            conn.send(Message.hangup())

    server = Server(on_message=hang_up_third)
    try:
        result = replay(str(trace), server.address, "--speed", "0")
        assert result.exit_code == 0, result.stderr
    finally:
        server.close()
    lines = result.stdout.splitlines()
    compare = [line for line in lines if " - diagnosis - compare " in line]
    assert compare[0].endswith(
        "compare messages: this time 2 messages (audio 1, hangup 1); "
        "originally 10 messages (audio 10)"
    )
    assert compare[1].endswith(
        "compare audio: this time 0.020s at 8000 Hz; originally 0.200s at 8000 Hz"
    )
    assert compare[2].endswith("compare dtmf: this time none; originally none")
    assert "compare ending: this time app-hangup after " in compare[3]
    assert compare[3].endswith("originally caller-close after 0.20s")  # the trace's call-end
    assert lines[-2].endswith(
        "the application differs from the original in: messages, audio, ending"
    )
    assert " - call-end - app-hangup (the application hung up); " in lines[-1]


def test_original_hangup_is_replayed(tmp_path: Path, server: Server) -> None:
    messages = short_call(frames=3) + [(0.2, ">", Message.hangup())]
    trace = write_trace(tmp_path / "call.trace", [(UUID, messages)])
    result = replay(str(trace), server.address, "--speed", "0", "--json", "--linger", "0.3")
    assert result.exit_code == 0
    conn = server.conn()
    assert decode_all(conn.data)[-1] == Message.hangup()
    end = events(result, "call-end")[0]
    assert end["ended"] == "caller-hangup" and end["original_ending"] == "caller-hangup"


def test_strict_and_lenient(tmp_path: Path) -> None:
    """The application sends a DTMF message, which Asterisk refuses."""
    trace = write_trace(tmp_path / "call.trace", [(UUID, short_call(frames=20))])

    def dtmf_back(conn: Conn, message: Message) -> None:
        if message.is_audio and message.payload == frame(2):
            conn.send(Message.dtmf("1"))

    for flags, status in (([], 3), (["--lenient"], 0)):
        server = Server(on_message=dtmf_back)
        try:
            result = replay(str(trace), server.address, "--speed", "0", "--linger", "0.3", *flags)
            conn = server.conn()
        finally:
            server.close()
        assert result.exit_code == status, result.stderr
        # Strict: the call's ending (the error line) says it; lenient: a warning.
        said = [
            line
            for line in result.stderr.splitlines()
            if line.startswith("warning:" if flags else "audiosocket: error:")
        ]
        assert "the application sent a dtmf message (kind 0x03, 1 byte, digit 1)" in said[0]
        received = decode_all(conn.data)
        if status == 3:
            assert "refused" in result.stdout.splitlines()[-1] or "Asterisk ends" in result.stdout
        else:
            assert len(received) == len(sent_side(short_call(frames=20)))


# Signals: the recording is whole.


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_leave_a_valid_recording(
    tmp_path: Path, cli_env: dict, sig: int, status: int
) -> None:
    trace = write_trace(tmp_path / "call.trace", [(UUID, short_call(frames=150))])
    wav = tmp_path / "back.wav"
    server = Server(on_message=echo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "audiosocket_cli", "replay", str(trace), server.address,
         "--record", str(wav), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env,
    )  # fmt: skip
    try:
        assert server.accepted.wait(10)
        deadline = time.monotonic() + 10
        while len(server.conns[0].messages) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        server.close()
    assert proc.returncode == status, err
    assert "Traceback" not in err
    samples, rate = sf.read(wav, dtype="int16")
    echoed = b"".join(m.payload for _, m in server.conns[0].messages if m.is_audio)
    got = samples.astype("<i2").tobytes()
    assert len(got) >= 19 * 320 and echoed.startswith(got)


# Against `audiosocket listen --record`.


def test_replay_against_listen_record(tmp_path: Path, cli_env: dict) -> None:
    """samples/call.trace against `listen --record`: the caller's audio sample for
    sample, and each message within 5 ms of its time at --speed 1."""
    if not (ROOT / "audiosocket_cli" / "commands" / "listen.py").exists():
        pytest.skip("audiosocket listen is not built yet")
    original = [json.loads(line) for line in (SAMPLES / "call.trace").read_text().splitlines()[1:]]
    caller = [o for o in original if o.get("dir") == ">"]
    audio = b"".join(base64.b64decode(o["data"]) for o in caller if o["kind"] == "audio")
    tries = iter(range(1, 10))

    def attempt() -> tuple[list[float], list[float]]:
        folder = tmp_path / f"try{next(tries)}"
        record_dir, listen_trace = folder / "calls", folder / "listen.trace"
        folder.mkdir()
        listen = subprocess.Popen(
            [sys.executable, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--record",
             str(record_dir), "--max-calls", "1", "-q", "--trace", str(listen_trace)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env,
        )  # fmt: skip
        try:
            first = listen.stderr.readline() if listen.stderr else ""
            assert first.startswith("listening on "), first
            address = first.split()[-1]
            done = run_subprocess(
                ["replay", str(SAMPLES / "call.trace"), address, "--linger", "0.2", "-q"], cli_env
            )
            assert done.returncode == 0, done.stderr
            listen.wait(timeout=10)
        finally:
            if listen.poll() is None:
                listen.kill()
                listen.wait(timeout=5)
        samples, rate = sf.read(record_dir / f"{UUID}.wav", dtype="int16")
        assert rate == 8000
        assert samples.astype("<i2").tobytes() == audio
        heard = [json.loads(line) for line in listen_trace.read_text().splitlines()[1:]]
        heard = [h for h in heard if h.get("dir") == ">"]
        assert [(h["type"], h["data"]) for h in heard] == [(c["type"], c["data"]) for c in caller]
        return [h["t"] for h in heard], [c["t"] for c in caller]

    # listen's own stamps: its scheduling counts as well as replay's.
    within(attempt)


def test_help_has_examples_and_no_numpy(cli_env: dict) -> None:
    code = (
        "import sys\n"
        "from audiosocket_cli.cli import cli\n"
        "try:\n"
        "    cli.main(['replay', '--help'], prog_name='audiosocket')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('numpy' in sys.modules, 'soundfile' in sys.modules, 'dpkt' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=20, env=cli_env)  # fmt: skip
    assert "Examples:" in done.stdout and "audiosocket replay call.trace" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "False False False"
    assert os.path.exists(SAMPLES / "call.trace")
