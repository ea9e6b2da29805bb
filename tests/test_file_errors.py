"""One policy for file errors: a recording or trace that cannot be written never
ends a call or the tool. It warns once naming the file and the OS reason, keeps
the file valid up to its last good write, and marks the call's end partial.

A full disk is made real with RLIMIT_FSIZE: past the limit every write fails
with EFBIG ("File too large"), as past the end of a disk it fails with ENOSPC.
"""

from __future__ import annotations

import json
import resource
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import soundfile as sf
from asterisk_client import AsteriskClient
from click.testing import CliRunner

from audiosocket_cli.cli import cli

TIMEOUT = 30


def limited(size: int):  # type: ignore[no-untyped-def]
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


def start_listen(cli_env: dict[str, str], size: int, *args: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env,
        preexec_fn=limited(size),
    )
    ready, _, _ = select.select([proc.stderr], [], [], TIMEOUT)
    assert ready
    line = proc.stderr.readline().decode()  # type: ignore[union-attr]
    assert line.startswith("listening on 127.0.0.1:"), line
    return proc, int(line.rsplit(":", 1)[1])


def speech(seconds: float, seed: int) -> bytes:
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.normal(0, 3000, int(8000 * seconds)).astype("<i2")).tobytes()


def test_a_full_disk_stops_the_recording_not_the_calls(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    limit = 20_000  # about 1.2 s of 8 kHz audio per file
    proc, port = start_listen(cli_env, limit, "--record", str(tmp_path), "--max-calls", "2")
    try:
        uuids = []
        for seed in (1, 2):
            with AsteriskClient(("127.0.0.1", port)) as client:
                uuids.append(client.send_uuid())
                client.send_audio(speech(2.0, seed), paced=False)
                client.close()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.decode().splitlines()]
    ends = [r for r in records if r.get("event") == "call-end"]
    assert [e["ended"] for e in ends] == ["caller-close", "caller-close"]
    for uuid, end in zip(uuids, ends, strict=True):
        # Every message was still received and counted: the call went on.
        assert end[">"]["audio_seconds"] == 2.0
        assert end["partial"] is True
        path = tmp_path / f"{uuid}.wav"
        info = sf.info(str(path))  # valid, up to the last good write
        assert 0.5 < info.duration < 1.3 and path.stat().st_size <= limit
    warnings = [r["text"] for r in records if r.get("event") == "warning"]
    assert len(warnings) == 2  # once per call, not once per frame
    assert all("File too large" in w and ".wav" in w for w in warnings)


def test_a_full_disk_stops_the_trace_once_and_the_calls_go_on(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    trace = tmp_path / "calls.trace"
    proc, port = start_listen(cli_env, 30_000, "--trace", str(trace), "--max-calls", "1", "-q")
    try:
        with AsteriskClient(("127.0.0.1", port)) as client:
            client.send_uuid()
            client.send_audio(speech(2.0, 3), paced=False)
            client.close()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    text = err.decode()
    assert text.count("cannot write the trace") == 1 and "File too large" in text
    end = [json.loads(line) for line in out.decode().splitlines()][-1]
    assert end["event"] == "call-end" and end[">"]["audio_seconds"] == 2.0
    # The trace holds whole lines up to where the disk filled.
    lines = trace.read_bytes().split(b"\n")
    for line in lines[:-1]:
        json.loads(line)


def test_record_targets_are_checked_before_the_call() -> None:
    with socket.create_server(("127.0.0.1", 0)) as app:
        port = app.getsockname()[1]
        app.settimeout(0.2)
        runner = CliRunner()
        for target, words in (
            ("/dev/full", "No space left on device"),
            ("/no/such/dir/x.wav", "no such folder"),
            ("answer.xyz", "cannot tell the audio format"),
        ):
            result = runner.invoke(cli, ["dial", str(port), "--record", target, "--no-audio"])
            assert result.exit_code == 1, result.output
            assert words in result.stderr and "Traceback" not in result.stderr
        try:
            app.accept()
            raise AssertionError("a call was made despite a bad --record")
        except TimeoutError:
            pass


def test_record_writes_the_format_its_extension_names(tmp_path: Path) -> None:
    from app_server import AppServer, paced_audio

    wanted = tmp_path / "answer.flac"
    with AppServer(paced_audio(bytes(3200), then="hangup")) as server:
        result = CliRunner().invoke(
            cli, ["dial", server.address, "--no-audio", "--record", str(wanted), "-q"]
        )
    assert result.exit_code == 0, result.stderr
    info = sf.info(str(wanted))
    assert info.format == "FLAC" and info.samplerate == 8000 and info.frames == 1600
