"""`dial` and `listen` against each other: both ends of a call are this tool.

`dial --play` calls `listen --record DIR --echo`; what listen recorded and
what dial recorded of the echo must both be the file, sample for sample.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from pathlib import Path

import soundfile as sf
from conftest import PYTHON, SAMPLES

HELLO = SAMPLES / "hello-8k.wav"
UUID = "0f6c1a3e-6d0b-4c2e-9f8e-1c2d3e4f5a6b"


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([proc.stderr], [], [], remaining)[0]:
            raise TimeoutError(f"no line from listen in {timeout} s: {line!r}")
        byte = os.read(proc.stderr.fileno(), 1)  # unbuffered: select sees what is left
        if not byte:
            break
        line += byte
    return line.decode()


def test_dial_play_into_listen_echo_both_recordings_equal_the_file(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    echo_wav = tmp_path / "echo.wav"
    listen = subprocess.Popen(
        [PYTHON, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--record", str(calls_dir)]
        + ["--echo", "--max-calls", "1", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env,
    )
    try:
        first = read_line(listen, timeout=20)
        match = re.fullmatch(r"listening on (\S+)\n", first)
        assert match, first
        dial = subprocess.run(
            [PYTHON, "-m", "audiosocket_cli", "dial", match.group(1), UUID]
            + ["--play", str(HELLO), "--speed", "0", "--linger", "1", "--record", str(echo_wav)]
            + ["-q"],
            capture_output=True,
            env=cli_env,
            timeout=30,
        )
        assert dial.returncode == 0, dial.stderr
        listen.wait(timeout=10)  # --max-calls 1: it exits once the call has ended
        assert listen.returncode == 0
    finally:
        listen.kill()
        listen.communicate(timeout=10)
    expected, rate = sf.read(HELLO, dtype="int16")
    heard, heard_rate = sf.read(calls_dir / f"{UUID}.wav", dtype="int16")
    echoed, echoed_rate = sf.read(echo_wav, dtype="int16")
    assert rate == heard_rate == echoed_rate == 8000
    assert heard.tobytes() == expected.tobytes()  # what listen received
    assert echoed.tobytes() == expected.tobytes()  # what came back to dial
    assert b"Traceback" not in dial.stderr
