"""`audiosocket capture`: a caller and an application of the tests' own, the proxy between.

Real sockets on 127.0.0.1, capture run as a subprocess (signals need one),
real WAVs read back through libsndfile.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from test_stereo import offsets, playout, trace_audio

from audiosocket_cli.cli import cli
from audiosocket_cli.protocol.wire import Message

TIMEOUT = 10.0


def frames(seed: int, count: int, size: int = 320) -> list[bytes]:
    """Distinct random 16-bit PCM frames, so that any reordering shows."""
    rng = np.random.default_rng(seed)
    return [rng.integers(-8000, 8000, size // 2, dtype="<i2").tobytes() for _ in range(count)]


def recv_all(sock: socket.socket) -> bytes:
    got = bytearray()
    while data := sock.recv(65536):
        got += data
    return bytes(got)


class Application:
    """A listening socket; each connection runs `handler(sock)` in a thread."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(TIMEOUT)
        self.port = self.server.getsockname()[1]
        self.handler = handler
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            sock.settimeout(TIMEOUT)
            thread = threading.Thread(target=self._run, args=(sock,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, sock: socket.socket) -> None:
        try:
            with sock:
                self.handler(sock)
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(TIMEOUT)
        self.server.close()
        if self.errors:
            raise self.errors[0]


@contextmanager
def running_capture(*args: str, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen, int]]:
    """capture on a free port; yields the process and its port, kills it in any case."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "audiosocket_cli", "capture", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        # A shell's background job ignores SIGINT, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        ready, _, _ = select.select([proc.stderr], [], [], TIMEOUT)
        assert ready, "capture printed nothing"
        line = proc.stderr.readline().decode()
        assert line.startswith("listening on 127.0.0.1:"), line
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out.decode(), err.decode()


def json_events(stdout: str, name: str) -> list[dict]:
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [r for r in records if r.get("event") == name]


def wav_pcm(path: Path) -> tuple[bytes, int]:
    data, rate = sf.read(path, dtype="int16")
    return data.astype("<i2").tobytes(), rate


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_bytes_pass_unchanged_both_ways_with_half_close_recordings_and_trace(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    call_uuid = uuid.uuid4()
    caller_pcm = frames(1, 40)
    app_pcm = frames(2, 30)
    caller_bytes = Message.for_uuid(call_uuid).encode() + b"".join(
        Message.audio(f).encode() for f in caller_pcm
    )
    caller_bytes += Message.dtmf("5").encode()
    app_bytes = b"".join(Message.audio(f).encode() for f in app_pcm) + Message.hangup().encode()
    received: dict[str, bytes] = {}

    def app(sock: socket.socket) -> None:
        # Replies only once the caller's half-close has come through the proxy.
        received["app"] = recv_all(sock)
        sock.sendall(app_bytes)
        sock.shutdown(socket.SHUT_WR)

    application = Application(app)
    record, trace = tmp_path / "rec", tmp_path / "call.trace"
    args = ("--upstream", str(application.port), "--record", str(record), "--trace", str(trace))
    with running_capture(*args, "--max-calls", "1", "--json", env=cli_env) as (proc, port):
        with connect(port) as caller:
            for chunk in (caller_bytes[:1000], caller_bytes[1000:]):
                caller.sendall(chunk)
            caller.shutdown(socket.SHUT_WR)
            received["caller"] = recv_all(caller)
        status, out, err = finish(proc)
    application.join()

    assert received["app"] == caller_bytes
    assert received["caller"] == app_bytes
    assert status == 0, err
    (end,) = json_events(out, "call-end")
    assert end["call"] == str(call_uuid)
    assert (end[">"]["messages"], end["bytes_in"]) == (42, len(caller_bytes))
    assert (end["<"]["messages"], end["bytes_out"]) == (31, len(app_bytes))
    assert end["ended"] == "caller-close"

    pcm_in, rate_in = wav_pcm(record / f"{call_uuid}.in.wav")
    pcm_out, rate_out = wav_pcm(record / f"{call_uuid}.out.wav")
    assert (rate_in, rate_out) == (8000, 8000)
    assert pcm_in == b"".join(caller_pcm)
    assert pcm_out == b"".join(app_pcm)

    result = CliRunner().invoke(cli, ["trace", "--json", str(trace)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    messages = [r for r in lines if "kind" in r]
    assert sum(r["dir"] == ">" for r in messages) == 42
    assert sum(r["dir"] == "<" for r in messages) == 31
    assert [r["kind"] for r in messages if r["dir"] == "<"][-1] == "hangup"
    assert {r["call"] for r in messages} == {str(call_uuid)}


def paced(sock: socket.socket, messages: list[bytes]) -> None:
    """Send each message 20 ms after the one before, on a drift-free clock (the input's
    pace; what is asserted is timed by capture's own trace)."""
    start = time.monotonic()
    for k, message in enumerate(messages):
        delay = start + k * 0.020 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock.sendall(message)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_record_stereo_lines_both_sides_up_with_the_trace(
    tmp_path: Path, cli_env: dict[str, str], rate: int
) -> None:
    """DIR/<uuid>.stereo.wav: Asterisk left, the application right, every message of the
    trace in it sample for sample, within a frame of its playout time (a burst laid end
    to end from its arrival)."""
    call_uuid = uuid.uuid4()
    size = rate // 50 * 2
    caller_pcm, app_pcm = frames(30, 50, size), frames(31, 70, size)

    def app(sock: socket.socket) -> None:
        got = b""
        while len(got) < 19:  # the UUID
            got += sock.recv(65536)
        sock.sendall(b"".join(Message.audio(f, rate).encode() for f in app_pcm[:10]))
        paced(sock, [Message.audio(f, rate).encode() for f in app_pcm[10:]])
        sock.sendall(Message.hangup().encode())
        recv_all(sock)

    application = Application(app)
    record, trace = tmp_path / "rec", tmp_path / "call.trace"
    args = ("--upstream", str(application.port), "--record-stereo", str(record), "--max-calls")
    with running_capture(*args, "1", "--trace", str(trace), env=cli_env) as (proc, port):
        with connect(port) as caller:
            caller.sendall(Message.for_uuid(call_uuid).encode())
            paced(caller, [Message.audio(f, rate).encode() for f in caller_pcm])
            wanted = sum(len(Message.audio(f, rate).encode()) for f in app_pcm) + 3
            got = b""
            while len(got) < wanted:
                got += caller.recv(65536)
            caller.shutdown(socket.SHUT_WR)
            recv_all(caller)
        status, out, err = finish(proc)
    application.join()

    assert status == 0, err
    path = record / f"{call_uuid}.stereo.wav"
    (end,) = json_events(trace.read_text(), "call-end")
    assert end["recordings"] == [str(path)] and not end["partial"]
    audio, file_rate = sf.read(path, dtype="int16")
    assert file_rate == rate and audio.shape[1] == 2
    sent = trace_audio(trace)
    left = offsets(audio[:, 0], rate, playout(sent[">"], rate), 0.020)
    right = offsets(audio[:, 1], rate, playout(sent["<"], rate), 0.020)
    assert (len(left), len(right)) == (50, 70)
    assert max(abs(x) for x in left + right) <= 1 / rate, (left, right)
    # The burst is laid end to end from its arrival, not piled up at it.
    arrivals = [t for t, _ in sent["<"][:10]]
    assert arrivals[-1] - arrivals[0] < 0.1
    starts = [t for t, _ in playout(sent["<"], rate)[:10]]
    assert starts[-1] - starts[0] == pytest.approx(0.18, abs=1e-5)


def test_split_header_keeps_its_chunking_both_ways(cli_env: dict[str, str]) -> None:
    payload = frames(3, 1)[0]
    header, body = Message.audio(payload).encode()[:3], payload
    uuid_message = Message.for_uuid(uuid.uuid4()).encode()
    app_chunks: list[bytes] = []
    arrived = threading.Event()

    def app(sock: socket.socket) -> None:
        while len(b"".join(app_chunks)) < 19 + 3 + 320:
            app_chunks.append(sock.recv(65536))
            arrived.set()
        # The same pattern the other way: a header alone, then its payload.
        sock.sendall(header)
        time.sleep(0.05)
        sock.sendall(body)
        sock.recv(1)  # until the caller closes

    application = Application(app)
    with running_capture(
        "--upstream", str(application.port), "--max-calls", "1", "-q", env=cli_env
    ) as (
        proc,
        port,
    ):
        with connect(port) as caller:
            caller.sendall(uuid_message)
            assert arrived.wait(5)  # through the proxy before the next chunk goes
            arrived.clear()
            caller.sendall(header)
            assert arrived.wait(5)
            caller.sendall(body)
            caller_chunks = [caller.recv(65536)]
            while len(b"".join(caller_chunks)) < 323:
                caller_chunks.append(caller.recv(65536))
        status, _, err = finish(proc)
    application.join()
    assert app_chunks == [uuid_message, header, body]
    assert caller_chunks == [header, body]
    # The application's payload came 50 ms after its header: Asterisk would have
    # ended the session (its window is about 5 ms). Forwarded, and flagged.
    assert status == 3, err
    assert "stalled" in err and "(forwarded)" in err


def test_upstream_that_refuses_closes_the_caller_with_the_reason(cli_env: dict[str, str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        dead_port = probe.getsockname()[1]  # closed again: nothing listens there
    with running_capture("--upstream", str(dead_port), "--max-calls", "1", env=cli_env) as (
        proc,
        port,
    ):
        with connect(port) as caller:
            caller.sendall(Message.for_uuid(uuid.uuid4()).encode())
            try:
                assert caller.recv(100) == b""
            except ConnectionResetError:
                pass
        status, out, err = finish(proc)
    reason = f"cannot connect to upstream 127.0.0.1:{dead_port}: Connection refused"
    assert status == 1
    assert f"{reason}; closing the caller's connection" in err
    assert " - call-end - " in out and reason in out


def test_upstream_that_times_out_closes_the_caller(cli_env: dict[str, str]) -> None:
    # A listener whose accept queue is full drops SYNs: the connect hangs.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(full.getsockname())
        fillers.append(filler)
    time.sleep(0.1)
    try:
        args = ("--upstream", str(full.getsockname()[1]), "--connect-timeout", "0.5")
        with running_capture(*args, "--max-calls", "1", "--json", env=cli_env) as (proc, port):
            with connect(port) as caller:
                started = time.monotonic()
                assert caller.recv(100) == b""
                waited = time.monotonic() - started
            status, out, err = finish(proc)
    finally:
        for sock in (full, *fillers):
            sock.close()
    assert status == 1
    assert 0.4 < waited < 5
    (end,) = json_events(out, "call-end")
    assert end["ended"] == "upstream-unreachable"
    assert "timed out after 0.5 s" in end["detail"]
    assert "timed out after 0.5 s; closing the caller's connection" in err


def test_malformed_bytes_are_forwarded_unchanged_and_flagged(cli_env: dict[str, str]) -> None:
    unknown = bytes([0x05, 0x00, 0x02, 0xAB, 0xCD])
    empty_audio = bytes([0x10, 0x00, 0x00])
    truncated = bytes([0x10, 0x01, 0x40]) + bytes(100)  # 220 bytes of payload missing
    caller_bytes = Message.for_uuid(uuid.uuid4()).encode() + unknown + empty_audio + truncated
    app_bytes = Message.dtmf("7").encode() + Message.audio(frames(4, 1)[0]).encode()
    received: dict[str, bytes] = {}

    def app(sock: socket.socket) -> None:
        sock.sendall(app_bytes)
        received["app"] = recv_all(sock)

    application = Application(app)
    with running_capture(
        "--upstream", str(application.port), "--max-calls", "1", "--json", env=cli_env
    ) as (
        proc,
        port,
    ):
        with connect(port) as caller:
            caller.sendall(caller_bytes)
            got = b""
            while len(got) < len(app_bytes):
                got += caller.recv(65536)
            caller.shutdown(socket.SHUT_WR)
            received["caller"] = got + recv_all(caller)
        status, out, err = finish(proc)
    application.join()

    assert received["app"] == caller_bytes
    assert received["caller"] == app_bytes
    assert status == 3
    warnings = [e["text"] for e in json_events(out, "warning")]
    assert "the caller sent a malformed message: unassigned kind 0x05" in warnings
    assert "the caller sent a malformed message: empty audio message" in warnings
    (end,) = json_events(out, "call-end")
    assert end["ended"] == "truncated"
    assert (
        "stream ended inside a message of kind 0x10: 103 bytes received, 220 missing"
        in (end["detail"])
    )
    assert any(
        w.startswith("the application sent a dtmf message (kind 0x03, 1 byte, digit 7)")
        and w.endswith(
            "Asterisk ends the session on anything but hangup and non-empty audio (forwarded)"
        )
        for w in warnings
    )
    diagnoses = {e["code"] for e in json_events(out, "diagnosis")}
    assert "refused" in diagnoses
    kinds = [json.loads(line).get("kind") for line in out.splitlines()]
    assert kinds.count("unknown") == 1


def test_two_calls_at_once(tmp_path: Path, cli_env: dict[str, str]) -> None:
    def app(sock: socket.socket) -> None:
        # Echo: each call must get back exactly its own bytes.
        while data := sock.recv(65536):
            sock.sendall(data)

    application = Application(app)
    uuids = [uuid.uuid4(), uuid.uuid4()]
    pcm = {u: frames(i + 10, 50) for i, u in enumerate(uuids)}
    results: dict[uuid.UUID, bytes] = {}
    barrier = threading.Barrier(2, timeout=TIMEOUT)

    def caller(port: int, call_uuid: uuid.UUID) -> None:
        with connect(port) as sock:
            sock.sendall(Message.for_uuid(call_uuid).encode())
            barrier.wait()  # both calls open before either sends audio
            for frame in pcm[call_uuid]:
                sock.sendall(Message.audio(frame).encode())
                time.sleep(0.002)
            sock.shutdown(socket.SHUT_WR)
            results[call_uuid] = recv_all(sock)

    record = tmp_path / "rec"
    args = ("--upstream", str(application.port), "--record", str(record), "-q")
    with running_capture(*args, "--max-calls", "2", env=cli_env) as (proc, port):
        threads = [threading.Thread(target=caller, args=(port, u)) for u in uuids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        status, out, err = finish(proc)
    application.join()

    # The echo sends the UUID back, which Asterisk refuses: flagged, exit 3.
    assert status == 3, err
    assert out.count(" call-end ") == 2
    for call_uuid in uuids:
        sent = Message.for_uuid(call_uuid).encode() + b"".join(
            Message.audio(f).encode() for f in pcm[call_uuid]
        )
        assert results[call_uuid] == sent
        assert wav_pcm(record / f"{call_uuid}.in.wav")[0] == b"".join(pcm[call_uuid])
        assert wav_pcm(record / f"{call_uuid}.out.wav")[0] == b"".join(pcm[call_uuid])


def test_application_audio_before_the_uuid_is_recorded_under_the_uuid(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    # An application that greets before Asterisk's UUID has come through.
    app_pcm = frames(30, 10)

    def app(sock: socket.socket) -> None:
        sock.sendall(b"".join(Message.audio(f).encode() for f in app_pcm))
        recv_all(sock)

    application = Application(app)
    call_uuid = uuid.uuid4()
    record = tmp_path / "rec"
    args = ("--upstream", str(application.port), "--record", str(record), "-q")
    with running_capture(*args, "--max-calls", "1", env=cli_env) as (proc, port):
        with connect(port) as caller:
            got = b""
            while len(got) < 10 * 323:
                got += caller.recv(65536)  # the application's audio is through
            caller.sendall(Message.for_uuid(call_uuid).encode())
            caller.shutdown(socket.SHUT_WR)
            recv_all(caller)
        status, out, err = finish(proc)
    application.join()

    assert status == 0, err
    assert sorted(p.name for p in record.iterdir()) == [f"{call_uuid}.out.wav"]
    assert wav_pcm(record / f"{call_uuid}.out.wav") == (b"".join(app_pcm), 8000)


@pytest.mark.parametrize(
    ("signum", "status_wanted", "how"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
)
def test_signal_mid_call_exits_with_valid_recordings(
    tmp_path: Path, cli_env: dict[str, str], signum: int, status_wanted: int, how: str
) -> None:
    call_uuid = uuid.uuid4()
    caller_pcm, app_pcm = frames(20, 25), frames(21, 15)
    app_bytes = b"".join(Message.audio(f).encode() for f in app_pcm)
    caller_bytes = Message.for_uuid(call_uuid).encode() + b"".join(
        Message.audio(f).encode() for f in caller_pcm
    )
    app_got = threading.Event()

    def app(sock: socket.socket) -> None:
        sock.sendall(app_bytes)
        got = b""
        while len(got) < len(caller_bytes):
            got += sock.recv(65536)
        app_got.set()
        recv_all(sock)  # the call stays open until capture goes

    application = Application(app)
    record, trace = tmp_path / "rec", tmp_path / "t.trace"
    args = ("--upstream", str(application.port), "--record", str(record), "--trace", str(trace))
    args += ("--record-stereo", str(record))
    with running_capture(*args, "-q", env=cli_env) as (proc, port), connect(port) as caller:
        caller.sendall(caller_bytes)
        got = b""
        while len(got) < len(app_bytes):
            got += caller.recv(65536)
        assert app_got.wait(TIMEOUT)
        time.sleep(0.2)  # the side decoding follows the forwarding
        proc.send_signal(signum)
        status, out, err = finish(proc)
    application.join()

    assert status == status_wanted
    assert f"audiosocket: {how}" in err
    assert "Traceback" not in err
    assert wav_pcm(record / f"{call_uuid}.in.wav") == (b"".join(caller_pcm), 8000)
    assert wav_pcm(record / f"{call_uuid}.out.wav") == (b"".join(app_pcm), 8000)
    ends = [json.loads(line) for line in trace.read_text().splitlines()[1:]]
    assert ends[-1]["event"] == "call-end" and ends[-1]["ended"] == how
    # The stereo file is whole too: each side's audio, laid end to end from its arrival.
    stereo = record / f"{call_uuid}.stereo.wav"
    assert str(stereo) in ends[-1]["recordings"]
    both, rate = sf.read(stereo, dtype="int16")
    assert rate == 8000 and both.shape[1] == 2
    for channel, pcm in ((0, b"".join(caller_pcm)), (1, b"".join(app_pcm))):
        first = np.frombuffer(pcm[:320], dtype="<i2")
        views = np.lib.stride_tricks.sliding_window_view(both[:, channel], 160)
        (at,) = np.flatnonzero((views == first).all(axis=1))
        assert both[at : at + len(pcm) // 2, channel].tobytes() == pcm, channel


def test_bad_address_is_a_usage_error(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["capture", "--upstream", "127.0.0.1:99999"])
    assert result.exit_code == 2
    assert "port '99999' is not a number" in result.output
    result = CliRunner().invoke(cli, ["capture"])
    assert result.exit_code == 2
    assert "--upstream" in result.output


def test_cannot_bind_exits_1(cli_env: dict[str, str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "audiosocket_cli", "capture", "--upstream", "9", str(port)],
            capture_output=True,
            env=cli_env,
            timeout=TIMEOUT,
        )
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith(f"audiosocket: error: cannot listen on 127.0.0.1:{port}")


def test_help_does_not_load_numpy(cli_env: dict[str, str]) -> None:
    code = (
        "import sys; from audiosocket_cli.cli import cli\n"
        "try: cli.main(['capture', '--help'], standalone_mode=False)\n"
        "except SystemExit: pass\n"
        "print('numpy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=cli_env, timeout=TIMEOUT
    )
    assert out.stdout.decode().strip().endswith("False")


def test_reset_is_passed_on_as_a_reset(cli_env: dict[str, str]) -> None:
    outcome: dict[str, object] = {}
    app_ready = threading.Event()

    def app(sock: socket.socket) -> None:
        sock.recv(19)
        app_ready.set()
        try:
            outcome["app"] = sock.recv(100)
        except ConnectionResetError as exc:
            outcome["app"] = exc

    application = Application(app)
    args = ("--upstream", str(application.port), "--max-calls", "1", "--json")
    with running_capture(*args, env=cli_env) as (proc, port):
        caller = connect(port)
        caller.sendall(Message.for_uuid(uuid.uuid4()).encode())
        assert app_ready.wait(TIMEOUT)
        caller.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        caller.close()  # RST, as Asterisk does when it closes with our bytes unread
        status, out, err = finish(proc)
    application.join()
    assert isinstance(outcome["app"], ConnectionResetError)
    assert status == 0, err
    (end,) = json_events(out, "call-end")
    assert end["ended"] == "caller-reset"


def test_backpressure_stops_reading_instead_of_buffering(cli_env: dict[str, str]) -> None:
    message = Message.audio(frames(5, 1, size=64000)[0]).encode()
    release = threading.Event()
    received: dict[str, int] = {}

    def app(sock: socket.socket) -> None:
        release.wait(TIMEOUT)  # not reading: the proxy's sends to us fill up
        received["app"] = len(recv_all(sock))

    application = Application(app)
    with running_capture(
        "--upstream", str(application.port), "--max-calls", "1", "-q", env=cli_env
    ) as (
        proc,
        port,
    ):
        with connect(port) as caller:
            caller.setblocking(False)
            accepted = 0
            stalled_since = None
            deadline = time.monotonic() + TIMEOUT
            # Write until the caller's kernel will take no more for 0.5 s.
            while time.monotonic() < deadline:
                try:
                    # Whole messages in a row, however the kernel splits them.
                    accepted += caller.send(message[accepted % len(message) :])
                    stalled_since = None
                except BlockingIOError:
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > 0.5:
                        break
                    time.sleep(0.01)
            rss = _rss_kib(proc.pid)
            release.set()
            caller.setblocking(True)
            caller.sendall(message[accepted % len(message) :])
            accepted += -accepted % len(message)
            caller.shutdown(socket.SHUT_WR)
            assert recv_all(caller) == b""
        status, _, err = finish(proc)
    application.join()
    assert stalled_since is not None, "the proxy kept reading everything"
    # What sits in kernel buffers (a few MB each way on loopback), not in the proxy.
    assert accepted < 64 << 20
    assert rss < 100 << 10, f"capture holds {rss} KiB"
    assert received["app"] == accepted
    # The caller sends no UUID first, which Asterisk always does: flagged, exit 3.
    assert status == 3, err


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_timeout_ends_a_call_whose_caller_says_nothing(cli_env: dict[str, str]) -> None:
    """capture --timeout, as listen's: nothing from the caller for that long ends the call."""
    uuid_message = Message.for_uuid(uuid.uuid4()).encode()

    def app(sock: socket.socket) -> None:
        sock.recv(65536)
        sock.recv(1)  # until the proxy closes

    application = Application(app)
    with running_capture(
        "--upstream", str(application.port), "--max-calls", "1", "--timeout", "0.5", "--json",
        env=cli_env,
    ) as (proc, port):  # fmt: skip
        with connect(port) as caller:
            caller.sendall(uuid_message)
            assert recv_all(caller) == b""  # closed by capture, not by us
        status, out, err = finish(proc)
    application.join()
    assert status == 0, err
    (end,) = json_events(out, "call-end")
    assert end["ended"] == "timeout" and end["detail"] == "nothing received for 0.5 s"
    assert end["duration"] >= 0.5
