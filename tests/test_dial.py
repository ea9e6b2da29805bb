"""`audiosocket dial` and `play` against a real application server on 127.0.0.1.

Every test places a real call over a real socket to tests/app_server.py,
which keeps every byte with its arrival time. Timing is real only where
timing is what a test checks; elsewhere `--speed 0`.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import statistics
import subprocess
import time
import uuid as uuid_lib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from app_server import (
    AppServer,
    ServerCall,
    after_uuid,
    burst_audio,
    paced_audio,
    split_message,
)
from click.testing import CliRunner, Result
from conftest import PYTHON, SAMPLES
from test_stereo import noise, offsets, playout, trace_audio

from audiosocket_cli.cli import cli
from audiosocket_cli.protocol.wire import Kind, Message, decode_all

HELLO = SAMPLES / "hello-8k.wav"
UUID = "40325ec2-5a6f-4f4e-9b7a-1c2d3e4f5a6b"


def hello_pcm() -> bytes:
    data, rate = sf.read(HELLO, dtype="int16")
    assert rate == 8000 and data.ndim == 1
    return data.astype("<i2").tobytes()


def dial(*args: str) -> Result:
    return CliRunner().invoke(cli, ["dial", *args], catch_exceptions=False)


def events(result: Result, name: str | None = None) -> list[dict]:
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return [r for r in records if "event" in r and (name is None or r["event"] == name)]


def error_line(result: Result) -> str:
    """The one error line of a call that failed (beside the call's own events)."""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("audiosocket: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def one_line_error(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("audiosocket: error: ")
    return lines[0]


def free_port() -> int:
    """A port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The UUID message.


def test_first_message_is_the_given_uuid_and_no_audio_sends_nothing_else() -> None:
    with AppServer() as server:
        result = dial(server.address, UUID, "--no-audio", "--duration", "0.3")
        call = server.wait_call()
        assert call.wait_ended(5)
    assert result.exit_code == 0, result.stderr
    # One write of exactly 19 bytes: the UUID message and nothing else.
    assert call.chunks[0][1] == bytes([0x01, 0x00, 0x10]) + uuid_lib.UUID(UUID).bytes
    assert call.messages == [Message(Kind.UUID, uuid_lib.UUID(UUID).bytes)]
    assert call.end_how == "eof"  # closed, no hangup: as Asterisk ends a call


def test_a_random_uuid_is_sent_and_printed_on_stderr() -> None:
    with AppServer() as server:
        result = dial(server.address, "--no-audio", "--duration", "0", "-q")
        call = server.wait_call()
        call.wait_ended(5)
    assert result.exit_code == 0, result.stderr
    printed = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("uuid ")]
    assert len(printed) == 1
    sent = call.messages[0].uuid
    assert sent is not None and sent.version == 4
    assert str(sent) == printed[0]
    assert printed[0] not in result.stderr.replace(f"uuid {printed[0]}", "")  # printed once


# Audio from a file: framing, exact samples, resampling.


def test_8k_file_arrives_as_320_byte_frames_equal_to_the_file() -> None:
    with AppServer() as server:
        result = dial(server.address, UUID, "--play", str(HELLO), "--speed", "0", "--linger", "0")
        call = server.wait_call()
        call.wait_ended(5)
    assert result.exit_code == 0, result.stderr
    audio = [m for m in call.messages if m.is_audio]
    assert all(m.kind == Kind.AUDIO_8K for m in audio)
    assert all(len(m.payload) == 320 for m in audio[:-1])
    pcm = hello_pcm()
    assert 0 < len(audio[-1].payload) < 320  # the last frame short, not padded
    assert len(pcm) % 320 == len(audio[-1].payload)
    assert call.audio() == pcm
    assert call.messages[0].kind == Kind.UUID and len(call.messages) == len(audio) + 1


def test_16k_call_sends_640_byte_kind_0x12_frames() -> None:
    with AppServer() as server:
        result = dial(
            server.address, "--play", str(HELLO), "--rate", "16000", "--speed", "0", "--linger", "0"
        )
        call = server.wait_call()
        call.wait_ended(5)
    assert result.exit_code == 0, result.stderr
    audio = [m for m in call.messages if m.is_audio]
    assert {m.kind for m in audio} == {Kind.AUDIO_16K}
    assert all(len(m.payload) == 640 for m in audio[:-1])
    assert abs(len(call.audio()) // 2 - 2 * len(hello_pcm()) // 2) <= 2


def test_44k_stereo_file_is_mixed_and_resampled_to_the_call_rate(tmp_path: Path) -> None:
    seconds, hz = 1.5, 440.0
    t = np.arange(int(44100 * seconds)) / 44100
    tone = 0.4 * np.sin(2 * np.pi * hz * t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([tone, tone], axis=1), 44100, subtype="PCM_16")
    with AppServer() as server:
        result = dial(server.address, "--play", str(path), "--speed", "0", "--linger", "0")
        call = server.wait_call()
        call.wait_ended(5)
    assert result.exit_code == 0, result.stderr
    samples = np.frombuffer(call.audio(), dtype="<i2").astype(np.float64)
    assert abs(len(samples) - seconds * 8000) <= 2  # the right duration at 8 kHz
    spectrum = np.abs(np.fft.rfft(samples[400:-400]))
    peak = np.fft.rfftfreq(len(samples) - 800, 1 / 8000)[spectrum.argmax()]
    assert abs(peak - hz) < 5  # still 440 Hz: resampled, not just relabelled
    rms = np.sqrt(np.mean(samples[400:-400] ** 2)) / 32768
    assert abs(rms - 0.4 / np.sqrt(2)) < 0.01  # both channels mixed, not summed


# Pacing: the one test here that must run in real time.


def test_real_time_pacing_over_a_5_second_file(cli_env: dict[str, str]) -> None:
    with AppServer() as server:
        proc = subprocess.Popen(
            [PYTHON, "-m", "audiosocket_cli", "play", str(HELLO), server.address, "-q"]
            + ["--linger", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=cli_env,
        )
        try:
            _, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
        call = server.wait_call()
        call.wait_ended(5)
    assert proc.returncode == 0, stderr
    times = [t for t, _ in call.audio_messages()]
    assert len(times) == 266
    gaps = np.diff(times)
    assert abs(statistics.median(gaps) - 0.020) < 0.001
    ideal_last = times[0] + (len(times) - 1) * 0.020
    assert abs(times[-1] - ideal_last) < 0.020  # drift-free: no error piles up


# DTMF and injections.


def test_dtmf_digits_are_sent_at_their_moment() -> None:
    with AppServer() as server:
        result = dial(server.address, "--dtmf", "12#@1", "--duration", "1.3", "--json")
        call = server.wait_call()
        call.wait_ended(5)
    assert result.exit_code == 0, result.stderr
    dtmf = [m for _, m in call.received if m.kind == Kind.DTMF]
    assert [m.payload for m in dtmf] == [b"1", b"2", b"#"]
    # When they left, by dial's own clock: at 1 s, never early.
    records = [json.loads(line) for line in result.stdout.splitlines()]
    sent = [r for r in records if r.get("kind") == "dtmf"]
    assert [r["digit"] for r in sent] == ["1", "2", "#"]
    for record in sent:
        assert 1.0 <= record["t"] < 1.1


def test_injections_keep_their_place_among_frames_at_speed_0() -> None:
    with AppServer() as server:
        result = dial(server.address, "--speed", "0", "--duration", "2", "--dtmf", "5@1", "-q")
        call = server.wait_call()
        call.wait_ended(5)
    assert result.exit_code == 0, result.stderr
    kinds = [m.kind for m in call.messages]
    assert kinds.count(Kind.AUDIO_8K) == 100  # 2 s of 20 ms silence
    assert kinds.index(Kind.DTMF) == 1 + 50  # after the UUID and the first second
    assert call.audio() == bytes(len(call.audio()))


def test_end_hangup_sends_a_hangup_last_and_close_does_not() -> None:
    for end, last in (("hangup", Kind.HANGUP), ("close", Kind.AUDIO_8K)):
        with AppServer() as server:
            result = dial(
                server.address, "--play", str(HELLO), "--speed", "0", "--linger", "0",
                "--end", end, "-q",
            )  # fmt: skip
            call = server.wait_call()
            call.wait_ended(5)
        assert result.exit_code == 0, result.stderr
        assert call.messages[-1].kind == last
        assert [m.kind for m in call.messages].count(Kind.HANGUP) == (end == "hangup")


def test_inject_close_drops_the_connection_without_a_hangup() -> None:
    with AppServer() as server:
        result = dial(server.address, "--speed", "0", "--inject", "close@0.1", "--json")
        call = server.wait_call()
        call.wait_ended(5)
    assert result.exit_code == 0, result.stderr
    assert [m.kind for m in call.messages] == [Kind.UUID] + [Kind.AUDIO_8K] * 5
    assert events(result, "call-end")[0]["ended"] == "caller-close"


# What the application sends back.


def test_audio_from_the_application_is_recorded_sample_for_sample(tmp_path: Path) -> None:
    answer = hello_pcm()[: 8000 * 2]  # 1 s
    out = tmp_path / "answer.wav"
    with AppServer(burst_audio(answer, then="hangup")) as server:
        result = dial(server.address, "--no-audio", "--record", str(out), "--json")
        server.wait_call().wait_ended(5)
    assert result.exit_code == 0, result.stderr
    assert events(result, "call-end")[0]["ended"] == "app-hangup"
    data, rate = sf.read(out, dtype="int16")
    assert rate == 8000
    assert data.astype("<i2").tobytes() == answer


def test_a_rate_change_mid_call_goes_to_a_second_file(tmp_path: Path) -> None:
    first, second = b"\x01\x00" * 160, b"\x02\x00" * 320
    writes = [Message.audio(first, 8000).encode(), Message.audio(second, 16000).encode()]
    out = tmp_path / "answer.wav"
    with AppServer(after_uuid(*writes, then="hangup")) as server:
        result = dial(server.address, "--no-audio", "--record", str(out), "--json")
        server.wait_call().wait_ended(5)
    assert result.exit_code == 0, result.stderr
    assert sf.read(out, dtype="int16")[0].tobytes() == first
    data, rate = sf.read(tmp_path / "answer.16000.wav", dtype="int16")
    assert (rate, data.tobytes()) == (16000, second)
    assert any("16000 Hz" in e["text"] for e in events(result, "warning"))


def test_no_audio_back_still_leaves_a_valid_empty_recording(tmp_path: Path) -> None:
    out = tmp_path / "answer.wav"
    with AppServer() as server:
        result = dial(server.address, "--no-audio", "--duration", "0", "--record", str(out))
    assert result.exit_code == 0, result.stderr
    info = sf.info(out)
    assert (info.samplerate, info.frames) == (8000, 0)


REFUSED = {
    "uuid": Message.for_uuid(UUID),
    "error": Message.error(0x02),
    "unknown kind": Message(0x42, b"xyz"),
    "empty audio": Message(Kind.AUDIO_8K, b""),
    "dtmf": Message.dtmf("5"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_asterisk_refuses_ends_the_call_with_status_3(name: str) -> None:
    message = REFUSED[name]
    handler = after_uuid(message.encode(), delay=0.05, then="hangup")
    with AppServer(handler) as server:
        result = dial(server.address, "--no-audio", "--json")
        call = server.wait_call()
        assert call.wait_ended(5)
    assert result.exit_code == 3, result.stderr
    line = error_line(result)
    assert f"kind 0x{message.kind:02x}" in line and "Asterisk ends the session" in line
    assert events(result, "call-end")[0]["ended"] == "refused"
    # Closed at once, as Asterisk does: the hangup that followed was not waited for.
    assert call.wait_for(lambda: len(call.sent) >= 1)
    assert call.ended_at is not None and call.ended_at - call.sent[0][0] < 0.04


@pytest.mark.parametrize("name", list(REFUSED))
def test_lenient_reports_what_asterisk_refuses_and_carries_on(name: str) -> None:
    handler = after_uuid(REFUSED[name].encode(), delay=0.05, then="hangup")
    with AppServer(handler) as server:
        result = dial(server.address, "--no-audio", "--json", "--lenient")
        server.wait_call().wait_ended(5)
    # What is merely refused is a warning with --lenient; what is malformed (an
    # unassigned kind, empty audio) still breaks the protocol: exit 3.
    malformed = REFUSED[name].problem is not None
    assert result.exit_code == (3 if malformed else 0), result.stderr
    assert "Traceback" not in result.stderr
    warnings = events(result, "warning")
    assert len(warnings) == 1 and "--lenient" in warnings[0]["text"]
    assert events(result, "call-end")[0]["ended"] == "app-hangup"


def test_a_payload_30_ms_after_its_header_ends_the_call() -> None:
    handler = split_message(Message.audio(bytes(320)), gap=0.030)
    with AppServer(handler) as server:
        result = dial(server.address, "--no-audio", "--json")
        server.wait_call().wait_ended(5)
    assert result.exit_code == 3, result.stderr
    assert "stalled" in error_line(result)
    assert events(result, "call-end")[0]["ended"] == "stall"


def test_a_stalled_payload_is_a_warning_with_lenient() -> None:
    handler = split_message(Message.audio(bytes(320)), gap=0.030)
    with AppServer(handler) as server:
        result = dial(server.address, "--no-audio", "--json", "--lenient")
        server.wait_call().wait_ended(5)
    assert result.exit_code == 0, result.stderr
    assert any("stalled" in e["text"] for e in events(result, "warning"))
    received = [r for r in map(json.loads, result.stdout.splitlines()) if r.get("dir") == "<"]
    assert [r["kind"] for r in received] == ["audio", "hangup"]


def test_a_stream_that_ends_inside_a_message_is_a_protocol_error() -> None:
    handler = after_uuid(bytes([0x10, 0x01, 0x40]) + bytes(100), then="close")
    with AppServer(handler) as server:
        result = dial(server.address, "--no-audio", "--lenient", "-q")
    assert result.exit_code == 3
    assert "stream ended inside a message of kind 0x10" in error_line(result)


# Diagnoses.


def test_ten_seconds_of_audio_in_one_burst_is_diagnosed(tmp_path: Path) -> None:
    trace = tmp_path / "call.trace"
    answer = np.tile(np.frombuffer(hello_pcm(), dtype="<i2"), 2)[: 8000 * 10].tobytes()
    with AppServer(burst_audio(answer, then="hangup")) as server:
        result = dial(server.address, "--no-audio", "-q", "--json", "--trace", str(trace))
        server.wait_call().wait_ended(5)
    assert result.exit_code == 0, result.stderr
    codes = [e["code"] for e in events(result, "diagnosis")]
    assert "burst" in codes
    burst = next(e for e in events(result, "diagnosis") if e["code"] == "burst")
    assert "within 20 ms" in burst["text"]
    # The trace keeps the diagnoses and the end of the call too.
    lines = [json.loads(line) for line in trace.read_text().splitlines()[1:]]
    assert "burst" in [r.get("code") for r in lines if r.get("event") == "diagnosis"]
    assert lines[-1]["event"] == "call-end"
    assert lines[-1]["<"]["audio_seconds"] == pytest.approx(10.0)


def test_one_way_audio_is_diagnosed() -> None:
    with AppServer() as server:
        result = dial(
            server.address, "--play", str(HELLO), "--speed", "0", "--linger", "0.1", "--json"
        )
    assert result.exit_code == 0, result.stderr
    assert [e["code"] for e in events(result, "diagnosis")] == ["one-way-audio"]


def test_echoed_audio_is_not_diagnosed_as_one_way_and_paced_audio_not_as_burst() -> None:
    pcm = hello_pcm()[: 8000 * 2]
    with AppServer(paced_audio(pcm, then="hangup")) as server:
        result = dial(server.address, "--json", "-q")
    assert result.exit_code == 0, result.stderr
    assert events(result, "diagnosis") == []
    assert events(result, "call-end")[0]["<"]["realtime_ratio"] == pytest.approx(1, abs=0.1)


def mulaw(pcm: bytes) -> bytes:
    """G.711 mu-law encoding (the test's own, independent of the code under test)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def test_mu_law_labelled_as_slin_is_diagnosed() -> None:
    ulaw = mulaw(hello_pcm())
    messages = [Message(Kind.AUDIO_8K, ulaw[i : i + 160]) for i in range(0, len(ulaw), 160)]
    with AppServer(after_uuid(b"".join(m.encode() for m in messages), then="hangup")) as server:
        result = dial(server.address, "--no-audio", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    assert "ulaw" in [e["code"] for e in events(result, "diagnosis")]


def test_big_endian_audio_is_diagnosed() -> None:
    swapped = np.frombuffer(hello_pcm(), dtype="<i2").byteswap().tobytes()
    with AppServer(burst_audio(swapped, then="hangup")) as server:
        result = dial(server.address, "--no-audio", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    assert "byte-order" in [e["code"] for e in events(result, "diagnosis")]


# Bad input: one line, the documented status, no traceback, no call.


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["{addr}", "--play", "no-such.wav"], 1, "no-such.wav: no such file"),
        (["{addr}", "--play", "{bad}"], 1, "cannot read audio"),
        (["nonsense:port", "--no-audio"], 2, "port"),
        (["{addr}", "not-a-uuid"], 2, "is not a UUID"),
        (["{addr}", "--rate", "11025"], 2, "11025"),
        (["{addr}", "--play", "{bad}", "--tone", "440"], 2, "--play and --tone"),
        (["{addr}", "--inject", "bogus@1"], 2, "bogus"),
        (["{addr}", "--dtmf", "12x@1"], 2, "not a DTMF digit"),
        (["{addr}", "--frame-ms", "400", "--rate", "192000"], 2, "over a message"),
        (["{addr}", "--record", "/no/such/dir/out.wav"], 1, "no such folder"),
        (["{addr}", "--record-stereo", "/no/such/dir/out.wav"], 1, "(--record-stereo)"),
        (["{addr}", "--record-stereo", "{bad}.flac"], 2, "is a WAV file"),
        (["{addr}", "--record-stereo", "{bad}", "--speed", "0"], 2, "with --speed 1"),
        (["{addr}", "--record", "{bad}", "--record-stereo", "{bad}"], 2, "the same file"),
        (["{addr}", "--tone", "5000"], 2, "--tone"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], status: int, words: str) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_text("this is not audio\n")
    with AppServer() as server:
        argv = [a.format(addr=server.address, bad=bad) for a in args]
        result = dial(*argv)
        time.sleep(0.05)
        assert server.calls == []  # nothing was dialled
    assert result.exit_code == status, result.stderr
    assert words in one_line_error(result)


def test_nothing_listening_is_one_line_and_status_1() -> None:
    result = dial(f"127.0.0.1:{free_port()}", "--no-audio")
    assert result.exit_code == 1
    assert "cannot connect to" in one_line_error(result)


def test_play_is_dial_with_play() -> None:
    with AppServer() as server:
        result = CliRunner().invoke(
            cli, ["play", str(HELLO), server.address, UUID, "--speed", "0", "--linger", "0"]
        )
        call = server.wait_call()
        call.wait_ended(5)
    assert result.exit_code == 0, result.stderr
    assert call.messages[0].uuid == uuid_lib.UUID(UUID)
    assert call.audio() == hello_pcm()
    bad = CliRunner().invoke(cli, ["play", str(HELLO), "--tone", "440"])
    assert bad.exit_code == 2


def test_plain_output_shows_both_directions() -> None:
    answer = Message.audio(bytes(320)).encode()
    with AppServer(after_uuid(answer, then="hangup")) as server:
        result = dial(server.address, UUID, "--no-audio")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[1:4] == ["40325ec2", "-", "call-start"]
    assert lines[1].split()[1:5] == ["40325ec2", ">", "uuid", "16"]
    assert lines[2].split()[1:6] == ["40325ec2", "<", "audio", "320", "rate=8000"]
    assert lines[3].split()[2:4] == ["<", "hangup"]
    assert lines[-1].split()[2:4] == ["-", "call-end"]


def test_dial_help_loads_no_audio_libraries(cli_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "audiosocket_cli", "dial", "--help"],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=30,
    )
    assert proc.returncode == 0
    assert "Examples:" in proc.stdout and "--lenient" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()}
    assert not imported & {"numpy", "soundfile", "sounddevice", "soxr", "rich"}


# Both sides in one stereo WAV (--record-stereo), each message where the trace puts it.


@pytest.mark.parametrize("rate", [8000, 16000])
def test_record_stereo_lines_both_sides_up_with_the_trace(tmp_path: Path, rate: int) -> None:
    """Every message of the trace is in the file, sample for sample, within a frame of
    where its time puts it: what we sent at its send time (left), the application's
    audio at its playout time (right), a burst laid end to end."""
    ours = tmp_path / "ours.wav"
    sf.write(ours, np.frombuffer(noise(1, 1.0, rate), dtype="<i2"), rate, subtype="PCM_16")
    theirs = split(noise(2, 1.6, rate), rate)  # 10 frames at once, then 70 paced
    out, trace = tmp_path / "call.wav", tmp_path / "call.trace"

    def app(call: ServerCall) -> None:
        call.wait_uuid()
        call.send(b"".join(Message.audio(f, rate).encode() for f in theirs[:10]))
        paced_audio(b"".join(theirs[10:]), rate, then="hangup")(call)  # the UUID is here

    with AppServer(app) as server:
        result = dial(
            server.address, "--play", str(ours), "--rate", str(rate),
            "--record-stereo", str(out), "--trace", str(trace), "--json",
        )  # fmt: skip
        server.wait_call().wait_ended(5)
    assert result.exit_code == 0, result.stderr
    (end,) = events(result, "call-end")
    assert end["ended"] == "app-hangup" and end["recordings"] == [str(out)]
    assert not end["partial"]
    audio, file_rate = sf.read(out, dtype="int16")
    assert file_rate == rate and audio.shape[1] == 2
    sent = trace_audio(trace)
    frame, lag = 0.020, end["max_send_lag_ms"] / 1000
    # Ours at its due time: the trace's time is that plus how late the send ran.
    left = offsets(audio[:, 0], rate, sent[">"], frame + lag + 0.005)
    right = offsets(audio[:, 1], rate, playout(sent["<"], rate), frame)
    assert len(left) == 50 and len(right) == len(theirs)
    assert max(abs(x) for x in left) <= frame + lag + 0.005, left
    assert max(abs(x) for x in right) <= 1 / rate, right
    print(f"{rate} Hz: > worst {max(map(abs, left)) * 1000:.2f} ms, lag {lag * 1000:.2f} ms")


def split(pcm: bytes, rate: int) -> list[bytes]:
    size = rate // 50 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


# Signals and the microphone: subprocesses.


def _start_dial(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "audiosocket_cli", "dial", *args],
        stdout=subprocess.PIPE if "--json" in args else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        # A test runner's worker may ignore SIGINT, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_call_leaves_a_valid_recording(
    tmp_path: Path, cli_env: dict[str, str], sig: int, status: int
) -> None:
    out, stereo = tmp_path / "answer.wav", tmp_path / "both.wav"
    answer = hello_pcm()
    with AppServer(paced_audio(answer, then=None)) as server:
        args = [server.address, "--record", str(out), "--record-stereo", str(stereo)]
        proc = _start_dial([*args, "-q", "--json"], cli_env)
        try:
            call = server.wait_call(timeout=10)
            assert call.wait_for(lambda: len(call.sent) >= 40, timeout=10)
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=10)
        finally:
            proc.kill()
        assert call.wait_ended(5)
    assert proc.returncode == status, stderr
    assert b"Traceback" not in stderr
    end = json.loads(stdout.splitlines()[-1])
    assert end["event"] == "call-end" and end["ended"] == (
        "terminated" if status == 143 else "interrupted"
    )
    data, rate = sf.read(out, dtype="int16")
    got = data.astype("<i2").tobytes()
    # Every sample dial received is in the file, in order (the app's last frames may
    # still have been on their way when the signal came).
    assert rate == 8000 and len(got) == round(end["<"]["audio_seconds"] * 8000) * 2 > 0
    assert got == answer[: len(got)]
    # The stereo file too: whole, listed, both sides in it up to the end.
    assert end["recordings"] == [str(out), str(stereo)] and not end["partial"]
    both, rate = sf.read(stereo, dtype="int16")
    assert rate == 8000 and both.shape[1] == 2
    assert len(both) >= len(got) // 2 and both[:, 1].any()
    assert np.flatnonzero(both[:, 1])[-1] >= round(end["<"]["audio_seconds"] * 8000) - 160


def test_record_stereo_that_cannot_be_written_warns_once_and_is_partial(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """A full disk (RLIMIT_FSIZE: past it, every write fails with EFBIG) stops the
    stereo file, not the call: one warning, the call-end partial, the file valid."""
    from test_file_errors import limited

    out = tmp_path / "both.wav"
    with AppServer(paced_audio(noise(3, 3.0, 8000), then="hangup")) as server:
        proc = subprocess.Popen(
            [PYTHON, "-m", "audiosocket_cli", "dial", server.address, "--record-stereo",
             str(out), "-q", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env,
            preexec_fn=limited(20_000),
        )  # fmt: skip
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    warnings = [r["text"] for r in records if r.get("event") == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith("stereo recording stopped: "), warnings
    assert str(out) in warnings[0] and "File too large" in warnings[0]
    end = records[-1]
    assert end["event"] == "call-end" and end["ended"] == "app-hangup"
    assert end["partial"] and end["recordings"] == [str(out)]
    info = sf.info(out)
    assert info.channels == 2 and 0 < info.frames * 4 + 44 <= 20_000


def test_mic_sends_frames_from_portaudio(alsa_null_home: dict[str, str], cli_env) -> None:
    env = {**cli_env, "HOME": alsa_null_home["HOME"]}
    with AppServer() as server:
        proc = _start_dial([server.address, "--mic", "--duration", "0.6", "-q"], env)
        try:
            _, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
        call = server.wait_call()
        call.wait_ended(5)
    assert proc.returncode == 0, stderr
    audio = [m for m in call.messages if m.is_audio]
    assert len(audio) == 30
    assert {(m.kind, len(m.payload)) for m in audio} == {(Kind.AUDIO_8K, 320)}


def test_monitor_plays_the_answer_on_portaudio(alsa_null_home: dict[str, str], cli_env) -> None:
    env = {**cli_env, "HOME": alsa_null_home["HOME"]}
    with AppServer(paced_audio(hello_pcm()[:8000], then="hangup")) as server:
        proc = _start_dial([server.address, "--monitor", "--no-audio", "-q"], env)
        try:
            _, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert b"Traceback" not in stderr


def test_trace_file_keeps_both_directions(tmp_path: Path) -> None:
    trace = tmp_path / "call.trace"
    answer = Message.audio(b"\x10\x00" * 160).encode()
    with AppServer(after_uuid(answer, then="hangup")) as server:
        result = dial(server.address, UUID, "--no-audio", "--trace", str(trace), "-q")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert lines[0]["format"] == "audiosocket-trace"
    sent = [r for r in lines if r.get("dir") == ">"]
    got = [r for r in lines if r.get("dir") == "<"]
    assert [r["kind"] for r in sent] == ["uuid"] and sent[0]["uuid"] == UUID
    assert [r["kind"] for r in got] == ["audio", "hangup"]
    assert decode_all(answer)[0].payload == base64.b64decode(got[0]["data"])
