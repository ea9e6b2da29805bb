"""`audiosocket listen`, run as a subprocess against real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid as uuid_lib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from asterisk_client import AsteriskClient
from click.testing import CliRunner

from audiosocket_cli.cli import cli
from audiosocket_cli.media.audio import load_pcm
from audiosocket_cli.protocol.wire import Message

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "samples" / "hello-8k.wav"


def pcm_for(seed: int, seconds: float, rate: int = 8000) -> bytes:
    """Distinct, speech-loud audio per call, so mixed-up recordings show."""
    rng = np.random.default_rng(seed)
    return rng.integers(-12000, 12000, int(seconds * rate), dtype="<i2").tobytes()


def wav_bytes(path: Path) -> tuple[bytes, int]:
    data, rate = sf.read(path, dtype="int16")
    info = sf.info(path)
    assert info.format == "WAV" and info.subtype == "PCM_16" and info.channels == 1
    return data.astype("<i2").tobytes(), rate


class Listen:
    """`audiosocket listen 127.0.0.1:0 ARGS` as a subprocess; lines read as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 20) -> None:
        full_env = dict(env or os.environ)
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._stdout_lines: queue.Queue[str] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.timeout = timeout
        deadline = time.monotonic() + 15
        while not self.stderr and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.01)
        time.sleep(0.02)
        assert self.stderr, f"no 'listening on' line; exit {self.proc.poll()}"
        first = self.stderr[0]
        assert first.startswith("listening on 127.0.0.1:"), self.stderr
        self.address = ("127.0.0.1", int(first.rsplit(":", 1)[1]))

    @staticmethod
    def _pump(stream, lines: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_line(self, predicate, timeout: float = 5.0) -> str:  # type: ignore[no-untyped-def]
        """The first stdout line for which predicate(line) holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.stdout):
                if predicate(line):
                    return line
            time.sleep(0.01)
        raise AssertionError(f"no such line in {self.stdout[-20:]}")

    def count(self, predicate) -> int:  # type: ignore[no-untyped-def]
        return sum(1 for line in list(self.stdout) if predicate(line))

    def wait(self, timeout: float | None = None) -> int:
        try:
            code = self.proc.wait(timeout or self.timeout)
        finally:
            self.kill()
        for thread in self._threads:
            thread.join(2)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def events(self, name: str) -> list[str]:
        return [line for line in self.stdout if line.split(" ")[3:4] == [name]]


@pytest.fixture
def listen_procs():
    """Every Listen made in a test is killed at its end, whatever happened."""
    made: list[Listen] = []

    def make(*args: str, **kwargs) -> Listen:  # type: ignore[no-untyped-def]
        proc = Listen(*args, **kwargs)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.kill()


def audio_lines(proc: Listen, direction: str = ">") -> list[str]:
    return [line for line in proc.stdout if f" {direction} audio " in line]


# Recording: every sample, however the call ends


def test_call_recorded_sample_for_sample_with_plain_lines(tmp_path, listen_procs):
    proc = listen_procs("--record", str(tmp_path), "--max-calls", "1")
    pcm = pcm_for(1, 1.0) + pcm_for(2, 0.0137)  # a short last frame, as a file's end
    with AsteriskClient(proc.address) as client:
        uuid = client.send_uuid()
        sent = client.send_audio(pcm, paced=False)
        client.send(Message.dtmf("5"))
        client.close()
    assert proc.wait() == 0
    recorded, rate = wav_bytes(tmp_path / f"{uuid}.wav")
    assert rate == 8000
    assert recorded == pcm
    short = uuid[:8]
    lines = proc.stdout
    # One line per message, in the documented fields: TIME CALL DIR KIND LEN DETAIL...
    assert len(audio_lines(proc)) == sent == 51
    first_audio = audio_lines(proc)[0].split(" ")
    assert float(first_audio[0]) >= 0
    assert first_audio[1:5] == [short, ">", "audio", "320"]
    assert first_audio[5] == "rate=8000" and first_audio[6].startswith("level=")
    assert audio_lines(proc)[-1].split(" ")[4] == str(len(pcm) - 50 * 320)
    assert any(line.split(" ")[1:] == [short, ">", "dtmf", "1", "digit=5"] for line in lines)
    assert any(f"> uuid 16 uuid={uuid}" in line for line in lines)
    start = lines[0].split(" ")
    assert start[1:5] == ["#1", "-", "call-start", "-"] and start[6].startswith("127.0.0.1:")
    end = proc.events("call-end")
    assert len(end) == 1
    assert end[0].split(" ")[1:6] == [short, "-", "call-end", "-", "caller-close"]
    assert "> 53 msgs" in end[0] and "dtmf=5" in end[0] and "< 0 msgs 0 B" in end[0]
    assert "> pacing " in end[0] and f"{uuid}.wav" in end[0]


def test_reset_mid_call_keeps_every_sample(tmp_path, listen_procs):
    proc = listen_procs("--record", str(tmp_path), "--max-calls", "1")
    pcm = pcm_for(3, 0.6)
    client = AsteriskClient(proc.address)
    uuid = client.send_uuid()
    client.send_audio(pcm, paced=False)
    proc.wait_line(lambda line: len(audio_lines(proc)) >= 30)
    client.reset()
    assert proc.wait() == 0
    assert wav_bytes(tmp_path / f"{uuid}.wav")[0] == pcm
    assert "call-end - caller-reset (the caller reset the connection)" in proc.events("call-end")[0]


@pytest.mark.parametrize(
    ("sig", "status", "how"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
)
def test_signal_mid_call_leaves_complete_wav(tmp_path, listen_procs, sig, status, how):
    proc = listen_procs("--record", str(tmp_path))
    pcm = pcm_for(4, 0.4)
    with AsteriskClient(proc.address) as client:
        uuid = client.send_uuid()
        client.send_audio(pcm, paced=False)
        proc.wait_line(lambda line: len(audio_lines(proc)) >= 20)
        proc.proc.send_signal(sig)
        assert proc.wait() == status
    recorded, rate = wav_bytes(tmp_path / f"{uuid}.wav")
    assert (recorded, rate) == (pcm, 8000)
    assert f"call-end - {how}" in proc.events("call-end")[0]


def test_rate_change_warns_and_keeps_both_rates(tmp_path, listen_procs):
    proc = listen_procs("--record", str(tmp_path), "--max-calls", "1")
    low, high = pcm_for(5, 0.2), pcm_for(6, 0.2, 16000)
    with AsteriskClient(proc.address) as client:
        uuid = client.send_uuid()
        client.send_audio(low, paced=False)
        client.send_audio(high, 16000, paced=False)
        client.close()
    assert proc.wait() == 0
    assert wav_bytes(tmp_path / f"{uuid}.wav") == (low, 8000)
    assert wav_bytes(tmp_path / f"{uuid}.16000.wav") == (high, 16000)
    warnings = " ".join(proc.events("warning"))
    assert "changed from 8000 Hz to 16000 Hz" in warnings and f"{uuid}.16000.wav" in warnings
    assert any("warning: call" in line and "16000 Hz" in line for line in proc.stderr)


def test_same_uuid_twice_and_no_uuid_get_their_own_files(tmp_path, listen_procs):
    proc = listen_procs("--record", str(tmp_path), "--max-calls", "3")
    uuid = str(uuid_lib.uuid4())
    sounds = [pcm_for(7, 0.1), pcm_for(8, 0.1), pcm_for(9, 0.1)]
    for pcm in sounds[:2]:
        with AsteriskClient(proc.address) as client:
            client.send_uuid(uuid)
            client.send_audio(pcm, paced=False)
            client.close()
    with AsteriskClient(proc.address) as client:
        client.send_audio(sounds[2], paced=False)  # no UUID: named after the connection
        client.close()
    assert proc.wait() == 3  # a caller that sends no UUID first breaks the protocol
    assert wav_bytes(tmp_path / f"{uuid}.wav")[0] == sounds[0]
    assert wav_bytes(tmp_path / f"{uuid}-2.wav")[0] == sounds[1]
    assert wav_bytes(tmp_path / "conn-3.wav")[0] == sounds[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{uuid}.wav", f"{uuid}-2.wav", "conn-3.wav"]
    )
    # Asterisk always sends the UUID first: say what came instead.
    warning = proc.events("warning")[0]
    assert warning.split(" ")[1] == "#3"
    assert "first message is audio (kind 0x10, 320 bytes), not a uuid" in warning


# Replies


def test_echo_returns_byte_identical_audio(listen_procs):
    proc = listen_procs("--echo", "--max-calls", "1")
    low, high = pcm_for(10, 0.5), pcm_for(11, 0.2, 16000) + b"\x01\x02\x03"  # odd: sent as is
    with AsteriskClient(proc.address) as client:
        client.send_uuid()
        client.send_audio(low, paced=False)
        client.send_audio(high, 16000, paced=False)
        expected = 25 + 11
        assert client.wait_for(expected, "audio")
        client.close()
        back = client.messages("audio")
    assert len(back) == expected
    assert [m.kind for m in back] == [0x10] * 25 + [0x12] * 11
    assert b"".join(m.payload for m in back[:25]) == low
    assert b"".join(m.payload for m in back[25:]) == high
    assert proc.wait() == 3  # odd audio from Asterisk's side is malformed
    assert "malformed message: odd audio length 3 " in " ".join(proc.events("warning"))
    assert len(audio_lines(proc, "<")) == expected


def test_play_is_resampled_paced_and_follows_the_callers_rate(listen_procs):
    proc = listen_procs("--play", str(HELLO), "--max-calls", "1")
    with AsteriskClient(proc.address) as client:
        client.send_uuid()
        time.sleep(0.2)  # replies begin at 8 kHz, before the caller's audio
        client.send_audio(pcm_for(12, 0.6, 16000), 16000)  # real time: the pacing is the point
        client.close(wait=0)
        received = list(client.received)
    assert proc.wait() == 0
    kinds = [m.kind for _, m in received]
    first_16k = kinds.index(0x12)
    assert first_16k >= 5 and set(kinds[:first_16k]) == {0x10} and set(kinds[first_16k:]) == {0x12}
    low = b"".join(m.payload for _, m in received[:first_16k])
    high = b"".join(m.payload for _, m in received[first_16k:])
    assert all(len(m.payload) == 320 for _, m in received[:first_16k])
    assert all(len(m.payload) == 640 for _, m in received[first_16k:])
    assert low == load_pcm(HELLO, 8000)[: len(low)]
    # The file goes on where it was, now resampled to 16 kHz (soxr, not sample dropping).
    offset = first_16k * 640
    assert high == load_pcm(HELLO, 16000)[offset : offset + len(high)]
    # About 50 messages a second, not a burst: ~0.8 s of call.
    assert 30 <= len(received) <= 50
    times = [t for t, _ in received]
    assert times[-1] - times[0] >= 0.02 * (len(received) - 1) - 0.06


def test_inject_sends_the_right_bytes_at_about_the_right_time(listen_procs):
    proc = listen_procs(
        "--inject",
        "dtmf:12@0.3",
        "--inject",
        "error:0x02@0.4",
        "--inject",
        "raw:100002ffff@0.45",
        "--hangup-after",
        "0.6",
        "--max-calls",
        "1",
    )
    with AsteriskClient(proc.address) as client:
        client.send_uuid()
        assert client.peer_closed.wait(3)
        received = list(client.received)
    assert proc.wait() == 0
    wire = [(m.kind, m.payload) for _, m in received]
    assert wire == [(0x03, b"1"), (0x03, b"2"), (0xFF, b"\x02"), (0x10, b"\xff\xff"), (0x00, b"")]
    # When they left, by listen's own clock (its `<` lines): never early, and on time.
    sent = [line.split(" ") for line in proc.stdout if line.split(" ")[2:3] == ["<"]]
    assert [fields[3] for fields in sent] == ["dtmf", "dtmf", "error", "audio", "hangup"]
    for fields, expected in zip(sent, [0.3, 0.3, 0.4, 0.45, 0.6], strict=True):
        assert expected <= float(fields[0]) < expected + 0.1
    end = proc.events("call-end")[0]
    assert "app-hangup (--inject hangup@0.6)" in end and "< 5 msgs" in end
    warnings = " | ".join(proc.events("warning"))
    assert "(kind 0x03, 1 byte, digit 1) by --inject dtmf:12@0.3: Asterisk would end" in warnings
    assert (
        "we sent an error message (kind 0xff, 1 byte, code 0x02) by --inject error:0x02@0.4"
        in warnings
    )


def test_inject_close_and_tone(listen_procs):
    proc = listen_procs("--tone", "440", "--inject", "close@0.3", "--max-calls", "1")
    with AsteriskClient(proc.address) as client:
        client.send_uuid()
        assert client.peer_closed.wait(3)
        received = list(client.received)
    assert proc.wait() == 0
    assert {m.kind for _, m in received} == {0x10}  # a close is no message
    assert 12 <= len(received) <= 18  # 0.3 s of 20 ms frames from t=0
    pcm = np.frombuffer(b"".join(m.payload for _, m in received), "<i2")
    assert 16000 < np.abs(pcm).max() <= 16384  # a -6 dBFS sine
    assert "call-end - app-close (--inject close@0.3)" in proc.events("call-end")[0]


# Many calls, and broken ones beside them


def test_fifty_calls_recorded_exactly_beside_garbage_and_silence(tmp_path, listen_procs):
    proc = listen_procs("--record", str(tmp_path), "--timeout", "1", "--max-calls", "52", "-q")
    clients = [AsteriskClient(proc.address, receive=False) for _ in range(50)]
    uuids = [client.send_uuid() for client in clients]
    sounds = [pcm_for(100 + i, 0.4) for i in range(50)]
    silent = garbage = None
    try:
        for k in range(20):  # round robin: all 50 calls are open together
            for client, pcm in zip(clients, sounds, strict=True):
                client.send(Message.audio(pcm[k * 320 : (k + 1) * 320]))
            if k == 5:
                silent = AsteriskClient(proc.address, receive=False)
                garbage = socket.create_connection(proc.address)
                garbage.sendall(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
            if k == 10:
                garbage.close()
            time.sleep(0.01)
        for client in clients:
            client.close()
        assert proc.wait(15) == 3  # the garbage connection broke the protocol
    finally:
        for client in clients:
            client.abandon()
        if silent is not None:
            silent.abandon()
    for uuid, pcm in zip(uuids, sounds, strict=True):
        assert wav_bytes(tmp_path / f"{uuid}.wav") == (pcm, 8000)
    ends = proc.events("call-end")
    assert len(ends) == 52
    assert sum(" caller-close " in line for line in ends) == 50
    bad = [line for line in ends if " garbage " in line]
    assert len(bad) == 1 and "not AudioSocket: the peer speaks HTTP" in bad[0]
    idle = [line for line in ends if " timeout " in line]
    assert len(idle) == 1 and "nothing received for 1 s" in idle[0]
    assert not audio_lines(proc)  # -q: events only


def test_json_lines_parse(listen_procs):
    proc = listen_procs("--json", "--echo", "--max-calls", "1")
    with AsteriskClient(proc.address) as client:
        uuid = client.send_uuid()
        client.send_audio(pcm_for(13, 0.1), paced=False)
        client.send(Message.dtmf("#"))
        client.wait_for(5, "audio")
        client.close()
    assert proc.wait() == 0
    records = [json.loads(line) for line in proc.stdout]
    assert records[0]["event"] == "call-start" and records[0]["call"] == "#1"
    messages = [r for r in records if "kind" in r]
    assert [r["kind"] for r in messages] == ["uuid"] + ["audio", "audio"] * 5 + ["dtmf"]
    assert messages[0]["uuid"] == uuid and messages[-1]["digit"] == "#"
    assert {r["conn"] for r in records} == {1}
    audio = messages[1]
    assert audio["dir"] == ">" and audio["type"] == 16 and audio["rate"] == 8000
    assert audio["len"] == 320 and isinstance(audio["level_dbfs"], float)
    end = records[-1]
    assert end["event"] == "call-end" and end["ended"] == "caller-close" and end["call"] == uuid
    assert end[">"]["messages"] == 7 and end["<"]["messages"] == 5
    assert end[">"]["dtmf"] == "#"


def test_split_writes_and_byte_by_byte_still_decode(tmp_path, listen_procs):
    proc = listen_procs("--record", str(tmp_path), "--max-calls", "1")
    pcm = pcm_for(14, 0.16)
    with AsteriskClient(proc.address) as client:
        uuid = client.send_uuid()
        for k in range(0, 5):
            client.send_split(Message.audio(pcm[k * 320 : (k + 1) * 320]))
        rest = b"".join(Message.audio(pcm[k * 320 : (k + 1) * 320]).encode() for k in range(5, 8))
        client.send_bytewise(rest)
        client.send_bytewise(Message.dtmf("7").encode(), gap=0.002)
        client.close()
    assert proc.wait() == 0
    assert wav_bytes(tmp_path / f"{uuid}.wav")[0] == pcm
    assert [line.split(" ")[4] for line in audio_lines(proc)] == ["320"] * 8
    assert proc.count(lambda line: line.endswith("> dtmf 1 digit=7")) == 1


def test_stream_cut_mid_message_ends_that_call_with_the_reason(tmp_path, listen_procs):
    proc = listen_procs("--record", str(tmp_path), "--max-calls", "1")
    pcm = pcm_for(15, 0.06)
    with AsteriskClient(proc.address) as client:
        uuid = client.send_uuid()
        client.send_audio(pcm, paced=False)
        client.send_raw(Message.audio(bytes(320)).encode()[:100])
        client.close()
    assert proc.wait() == 3
    end = proc.events("call-end")[0]
    assert (
        "truncated (the caller closed the connection: stream ended inside a message of kind 0x10: "
        "100 bytes received, 223 missing)" in end
    )
    assert wav_bytes(tmp_path / f"{uuid}.wav")[0] == pcm  # whole messages before the cut


def test_max_concurrent_refuses_with_a_line(listen_procs):
    proc = listen_procs("--max-concurrent", "1", "--max-calls", "1")
    with AsteriskClient(proc.address) as first:
        first.send_uuid()
        proc.wait_line(lambda line: " > uuid " in line)
        with AsteriskClient(proc.address) as second:
            assert second.peer_closed.wait(3)  # closed at once
        line = proc.wait_line(lambda line: " warning " in line)
        assert "#2 - warning - refused a caller from 127.0.0.1:" in line
        assert "1 call already (--max-concurrent 1)" in line
        first.close()
    assert proc.wait() == 0


def test_a_flood_of_refused_callers_is_summed_up(listen_procs):
    """Thirty callers beyond the limit: the first said at once, the rest in a summary."""
    proc = listen_procs("--max-concurrent", "1", "--max-calls", "1")
    with AsteriskClient(proc.address) as first:
        first.send_uuid()
        proc.wait_line(lambda line: " > uuid " in line)
        for _ in range(30):
            with AsteriskClient(proc.address) as extra:
                assert extra.peer_closed.wait(3)
        proc.wait_line(lambda line: "more callers in the last 1 s" in line)
        first.close()
    assert proc.wait() == 0
    warnings = proc.events("warning")
    assert len(warnings) <= 4 and "refused a caller from" in warnings[0]
    summed = sum(int(w.split("refused ")[1].split(" ")[0]) for w in warnings[1:])
    assert summed == 29 and warnings[-1].endswith("30 in all")
    assert sum("warning:" in line for line in proc.stderr) == len(warnings)


# Usage and failures: one line, the documented status


@pytest.mark.parametrize(
    ("args", "status", "text"),
    [
        (["--echo", "--tone", "440"], 2, "--echo and --tone cannot go together"),
        (["--play", str(HELLO), "--silence"], 2, "--play and --silence cannot go together"),
        (["--inject", "bogus@1"], 2, "unknown WHAT 'bogus'"),
        (["--inject", "dtmf:X@1"], 2, "not a DTMF digit"),
        (["--loop"], 2, "--loop goes with --play"),
        (["no:such:address"], 2, "write an IPv6 address as [HOST]:PORT"),
        (["127.0.0.1:99999"], 2, "is not a number from 0 to 65535"),
        (["--play", "/nonexistent/x.wav"], 1, "/nonexistent/x.wav: no such file"),
        (["--play", __file__], 1, "cannot read audio"),
        (["--trace", "/nonexistent/dir/x.trace"], 1, "/nonexistent/dir/x.trace: cannot write"),
        (["--record", __file__], 2, "is a file"),
        (["--record", "/proc/no/calls"], 1, "/proc/no/calls: cannot create"),
    ],
)
def test_bad_flags_give_one_line(args, status, text):
    result = CliRunner().invoke(cli, ["listen", *args])
    assert result.exit_code == status, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audiosocket: error: ")
    assert text in lines[0]


def test_port_in_use_is_exit_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["listen", f"127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"audiosocket: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_help_has_examples_and_loads_no_numpy():
    code = (
        "import sys\n"
        "from audiosocket_cli.cli import cli\n"
        "try:\n"
        "    cli.main(['listen', '--help'], prog_name='audiosocket')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'numpy', 'soundfile', 'sounddevice', 'soxr'} & set(sys.modules)\n"
        "print('HEAVY', sorted(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT
    ).stdout
    assert "HEAVY []" in out
    assert "Examples:" in out and "AudioSocket(" in out and "c(slin16)" in out


def test_a_message_that_stalls_ends_its_call_and_the_others_go_on(listen_procs):
    # The 5 s limit, test-sized: a message left incomplete for 1 s ends its call.
    proc = listen_procs(
        "--echo", "--max-calls", "2", env={**os.environ, "AUDIOSOCKET_MESSAGE_STALL": "1"}
    )
    with AsteriskClient(proc.address) as stalled, AsteriskClient(proc.address) as good:
        stalled.send_uuid()
        stalled.send_raw(Message.audio(bytes(320)).encode()[:200])  # and nothing more
        good.send_uuid()
        good.send_audio(pcm_for(16, 0.5), paced=False)
        assert good.wait_for(25, "audio")
        assert stalled.peer_closed.wait(8)  # after 1 s without the rest of the message
        good.close()
    assert proc.wait() == 3
    ends = proc.events("call-end")
    assert "stall (a message stayed incomplete for 1 s (200 bytes of it arrived))" in (ends[0])
    assert " caller-close " in ends[1]


def test_trace_file_keeps_every_message(tmp_path, listen_procs):
    from audiosocket_cli.files.trace import read_records

    trace = tmp_path / "calls.trace"
    proc = listen_procs("--trace", str(trace), "--echo", "-q", "--max-calls", "1")
    pcm = pcm_for(17, 0.1)
    with AsteriskClient(proc.address) as client:
        uuid = client.send_uuid()
        client.send_audio(pcm, paced=False)
        assert client.wait_for(5, "audio")
        client.close()
    assert proc.wait() == 0
    assert not audio_lines(proc)  # -q: not on stdout, but all in the trace
    with open(trace, "rb") as stream:
        records = list(read_records(stream, str(trace)))
    sent = [r.message.payload for r in records if r.message and r.dir == ">" and r.message.is_audio]
    back = [r.message.payload for r in records if r.message and r.dir == "<"]
    assert b"".join(sent) == b"".join(back) == pcm
    assert {r.call for r in records if r.message} == {uuid}
    assert [r.event for r in records if r.event] == ["call-start", "call-end"]


def test_peer_hangup_and_silence_replies(listen_procs):
    proc = listen_procs("--silence", "--max-calls", "1")
    with AsteriskClient(proc.address) as client:
        client.send_uuid()
        assert client.wait_for(5, "audio")
        client.send(Message.hangup())
        assert client.peer_closed.wait(3)  # we close after the caller's hangup
        back = client.messages()
    assert proc.wait() == 0
    assert {(m.kind, m.payload) for m in back} == {(0x10, bytes(320))}
    assert " - call-end - caller-hangup (" in proc.events("call-end")[0]


def test_echo_of_a_split_message_is_the_whole_message(listen_procs):
    """A payload read on its own that happens to begin with the kind byte (0x10) is
    still the second half of a message: the echo is the whole message."""
    proc = listen_procs("--echo", "--max-calls", "1")
    payload = bytes([0x10]) + bytes(range(1, 256)) + bytes(64)
    wire = Message.audio(payload).encode()
    with AsteriskClient(proc.address) as client:
        client.send_uuid()
        for _ in range(3):
            client.send_raw(wire[:3])
            time.sleep(0.01)  # two reads, most likely (the echo must be whole either way)
            client.send_raw(wire[3:])
        assert client.wait_for(3, "audio")
        client.close()
        back = client.messages("audio")
    assert [m.payload for m in back] == [payload] * 3
    assert proc.wait() == 0


def test_when_stdout_goes_away_the_calls_and_recordings_go_on(tmp_path):
    """`listen | grep -m1 ...`: the reader leaves; listen says so once and serves on."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--record"]
        + [str(tmp_path), "--max-calls", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        port = int(proc.stderr.readline().rsplit(":", 1)[1])  # type: ignore[union-attr]
        first_pcm = pcm_for(20, 1.0)
        with AsteriskClient(("127.0.0.1", port)) as client:
            first = client.send_uuid()
            assert proc.stdout.readline()  # type: ignore[union-attr]
            proc.stdout.close()  # type: ignore[union-attr]  # the reader leaves mid-call
            client.send_audio(first_pcm, paced=False)
            client.close()
        pcm = pcm_for(21, 0.5)
        with AsteriskClient(("127.0.0.1", port)) as client:
            second = client.send_uuid()
            client.send_audio(pcm, paced=False)
            client.close()
        assert proc.wait(20) == 0
        err = proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert err.count("output stopped: stdout was closed") == 1 and "Traceback" not in err
    assert wav_bytes(tmp_path / f"{first}.wav") == (first_pcm, 8000)
    assert wav_bytes(tmp_path / f"{second}.wav") == (pcm, 8000)


def test_a_bug_on_the_read_path_ends_that_call_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The read path is guarded inline (no wrapper): an exception in it ends its call
    `internal-error`, and the other calls are served on."""
    import io

    from audiosocket_cli.engines import listen as listen_engine
    from audiosocket_cli.engines.call import CallReport
    from audiosocket_cli.output.sinks import Output, PlainSink
    from audiosocket_cli.protocol.events import CallInfo

    stream = io.StringIO()
    output = Output([PlainSink(stream)], io.StringIO())
    listener = socket.create_server(("127.0.0.1", 0))
    server = listen_engine.Server(listener, output, listen_engine.ListenConfig(echo=True))
    pairs = []
    for conn in (1, 2):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        call = listen_engine.Call(server, ours, CallInfo(conn=conn, peer="test"))
        server.calls[conn] = call
        call.start()
        pairs.append((call, theirs))
    broken = pairs[0][0].report
    real_echoed = CallReport.echoed

    def echoed(report: CallReport, t: float, message: Message) -> None:
        if report is broken:
            raise ValueError("a bug")
        real_echoed(report, t, message)

    monkeypatch.setattr(CallReport, "echoed", echoed)
    frame = Message.audio(bytes(320)).encode()
    for call, theirs in pairs:
        theirs.sendall(Message.for_uuid(uuid_lib.uuid4()).encode())
        call.on_readable()
        for _ in range(2):  # the first audio message takes the general path, then the usual
            theirs.sendall(frame)
            call.on_readable()
    (bad, bad_peer), (good, good_peer) = pairs
    assert bad.ended and bad.closed and not good.ended
    bad_peer.settimeout(5)
    got = b""
    while chunk := bad_peer.recv(65536):
        got += chunk
    assert got == frame  # the first frame's echo (the general path), then its socket closed
    good_peer.settimeout(5)
    echoed_back = b""
    while len(echoed_back) < 2 * len(frame):
        echoed_back += good_peer.recv(65536)
    assert echoed_back == 2 * frame
    ends = [line for line in stream.getvalue().splitlines() if " call-end " in line]
    assert len(ends) == 1 and "internal-error" in ends[0] and "ValueError: a bug" in ends[0]
    server.close()
    for _, theirs in pairs:
        theirs.close()
