"""What a new user hit, each with its fix: one clear line, the documented status.

Bad ADDRESSes, contradictory flags, audio files that are empty or cut short,
missing sound devices, inputs that are not AudioSocket at all, and the help
texts themselves.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from app_server import AppServer, paced_audio
from click.testing import CliRunner, Result
from conftest import ROOT, SAMPLES
from test_monitor import NO_PORTAUDIO_SITECUSTOMIZE

from audiosocket_cli.cli import COMMANDS, cli

UUID = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def one_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture
def nobody_listens() -> str:
    """A port where a connection would be noticed: no call may be made."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["dial", ":"], "':' has no host and no port"),
        (["dial", "0"], "'0': port 0 is not a port to connect to"),
        (["dial", "http://example.com:9092"], "is a URL (http://): ADDRESS is HOST:PORT"),
        (["play", "samples/hello-8k.wav", UUID], "is a UUID, not an ADDRESS"),
        (["capture", "--upstream", "0"], "port 0 is not a port to connect to"),
        (["replay", "samples/call.raw", "https://x"], "is a URL (https://)"),
        (["listen", "-v", "-q"], "-v and -q cannot go together"),
        (["trace", "-q", "-v", "samples/call.raw"], "-v and -q cannot go together"),
        (["listen", "--tone", "5000"], "5000 Hz cannot be sent at 8000 Hz"),
    ],
)
def test_usage_errors_are_one_line_and_status_2(args: list[str], words: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert words in one_line(result)


def test_dial_defaults_its_address_as_play_does() -> None:
    """`dial` with no ADDRESS calls 127.0.0.1:9092, as `play FILE` does."""
    result = run("dial", "--help")
    assert "Usage: cli dial [OPTIONS] [ADDRESS] [UUID]" in result.stdout
    assert "defaults to 127.0.0.1:9092" in " ".join(result.stdout.split())


def make_wavs(folder: Path) -> dict[str, Path]:
    full = folder / "full.wav"
    sf.write(full, np.zeros(8000, dtype="int16"), 8000, subtype="PCM_16")
    data = full.read_bytes()
    files = {"empty": folder / "empty.wav", "header": folder / "header.wav"}
    files["empty"].write_bytes(b"")
    files["header"].write_bytes(data[:44])
    files["cut"] = folder / "cut.wav"
    files["cut"].write_bytes(data[: 44 + 1000])
    return files


@pytest.mark.parametrize("command", ["play", "listen"])
def test_play_files_that_hold_no_audio_are_refused(
    tmp_path: Path, command: str, nobody_listens: str
) -> None:
    files = make_wavs(tmp_path)
    for name, words in (("empty", "empty file"), ("header", "no audio in it")):
        args = [command, str(files[name]), nobody_listens] if command == "play" else []
        if command == "listen":
            args = ["listen", "127.0.0.1:0", "--play", str(files[name])]
        result = run(*args)
        assert result.exit_code == 1
        assert words in one_line(result)


def test_a_cut_short_wav_is_sent_with_a_warning(tmp_path: Path) -> None:
    cut = make_wavs(tmp_path)["cut"]
    with AppServer(paced_audio(b"", then=None)) as server:
        result = run("play", str(cut), server.address, "--speed", "0", "--linger", "0", "-q")
    assert result.exit_code == 0, result.stderr
    assert (
        "the file is cut short: its header promises 1.00 s of audio and it holds 0.06 s"
        in result.stderr
    )


def test_without_portaudio_mic_fails_and_monitor_goes_on(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_PORTAUDIO_SITECUSTOMIZE)
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    with AppServer(paced_audio(bytes(3200), then="hangup")) as server:
        mic = subprocess.run(
            [sys.executable, "-m", "audiosocket_cli", "dial", server.address, "--mic"],
            capture_output=True, text=True, env=env, timeout=30,
        )  # fmt: skip
        monitor = subprocess.run(
            [sys.executable, "-m", "audiosocket_cli", "dial", server.address, "--monitor",
             "--no-audio", "--json"],
            capture_output=True, text=True, env=env, timeout=30,
        )  # fmt: skip
    assert mic.returncode == 1
    assert mic.stderr.strip().endswith(
        "--mic: no sound input: the PortAudio library is missing (apt-get install libportaudio2)"
    )
    # Hearing a call is an aid, not the job: listen and dial both warn and go on.
    assert monitor.returncode == 0, monitor.stderr
    assert "--monitor: cannot play audio: the PortAudio library is missing" in monitor.stderr
    assert "going on without it" in monitor.stderr
    end = json.loads(monitor.stdout.splitlines()[-1])
    assert end["ended"] == "app-hangup"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty: no AudioSocket messages"),
        (b"RIFF....WAVEfmt ", "not a trace file, packet capture or AudioSocket byte dump"),
        (b'{"hello": "world"}\n', "(it begins 7b 22 68 65 6c 6c 6f 22: JSON)"),
        (bytes(range(200, 256)) * 8, "not a trace file, packet capture or AudioSocket"),
    ],
)
def test_trace_refuses_what_is_not_audiosocket(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "input.bin"
    path.write_bytes(content)
    for command in ("trace", "report"):
        extra = ["-o", str(tmp_path / "r.html")] if command == "report" else []
        result = run(command, str(path), *extra)
        assert result.exit_code == 1
        assert words in one_line(result)
    result = run("trace", str(SAMPLES / "hello-8k.wav"))
    assert result.exit_code == 1 and "a WAV file" in one_line(result)


def test_extract_writes_files_and_shows_no_message_lines(tmp_path: Path) -> None:
    out = tmp_path / "wavs"
    for _ in range(2):  # a second run replaces the files, rather than piling up copies
        result = run("trace", "--extract", str(out), str(SAMPLES / "call.trace"))
        assert result.exit_code == 0
        assert result.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == [f"{UUID}.in.wav", f"{UUID}.out.wav"]


def test_every_help_has_examples_exit_statuses_and_plain_metavars() -> None:
    for name in COMMANDS:
        text = run(name, "--help").stdout
        assert "Examples:" in text, name
        for automatic in ("INTEGER RANGE", "FLOAT RANGE", "DIRECTORY", "TEXT", "PATH"):
            assert automatic not in text, (name, automatic)
    for name in ("listen", "dial", "play", "capture", "replay", "trace", "load", "check"):
        assert "Exit status" in run(name, "--help").stdout, name
