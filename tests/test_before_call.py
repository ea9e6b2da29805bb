"""`--uuid`, `--uuid-pattern` and `--before-call`: the UUIDs an application expects,
and the step a dialplan takes before AudioSocket connects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from audiosocket_cli.engines.before_call import (
    BeforeCallFailed,
    CallUUIDs,
    check_uuid_pattern,
    run_before_call,
)
from audiosocket_cli.net.address import Address

PYTHON = sys.executable
HERE = Address("127.0.0.1", 9092)


def test_the_command_sees_the_call_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "env"
    uuid = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
    command = (
        f"echo $AUDIOSOCKET_UUID $AUDIOSOCKET_CALL $AUDIOSOCKET_ADDRESS "
        f"$AUDIOSOCKET_HOST $AUDIOSOCKET_PORT > {out}"
    )
    run_before_call(command, uuid, 7, HERE)
    assert out.read_text().split() == [uuid, "7", "127.0.0.1:9092", "127.0.0.1", "9092"]


@pytest.mark.parametrize(
    "command, timeout, words",
    [
        ("echo registration refused >&2; exit 4", 10.0, "exited 4: registration refused"),
        ("kill -9 $$", 10.0, "was killed by signal 9"),
        ("sleep 30", 0.3, "did not finish within 0.3 s"),
        ("sleep 30 & exit 0", 0.5, "did not finish"),  # a child holding its output open
    ],
)
def test_a_failed_command_says_why(command: str, timeout: float, words: str) -> None:
    with pytest.raises(BeforeCallFailed) as caught:
        run_before_call(command, "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01", 1, HERE, timeout)
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"--before-call {command!r}")


def test_call_uuids() -> None:
    assert CallUUIDs("40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01")(5) == (
        "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
    )
    pattern = CallUUIDs(pattern="00000000-0000-4000-8000-{n:012d}")
    assert pattern(12) == "00000000-0000-4000-8000-000000000012"
    assert CallUUIDs()(1) != CallUUIDs()(1)  # random
    assert check_uuid_pattern("{n}") is not None
    assert check_uuid_pattern("00000000-0000-4000-8000-{n:012d}") is None


@pytest.mark.parametrize(
    "args, words",
    [
        (["check", "127.0.0.1:9", "--uuid", "1"], "is not a UUID"),
        (
            [
                "check", "127.0.0.1:9", "--uuid", "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01",
                "--uuid-pattern", "00000000-0000-4000-8000-{n:012d}",
            ],
            "cannot go together",
        ),
        (["load", "127.0.0.1:9", "--uuid-pattern", "{n}"], "is not a UUID"),
        (
            [
                "dial", "127.0.0.1:9", "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01",
                "--uuid", "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c02",
            ],
            "two UUIDs",
        ),
    ],
)  # fmt: skip
def test_usage_errors(args: list[str], words: str) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "audiosocket_cli", *args], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2, done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr


def test_load_does_not_place_a_call_whose_command_failed() -> None:
    """The call fails `before-call-failed`; the reason is said once on stderr."""
    import socket

    with socket.socket() as server:  # nothing is ever accepted: no call may connect
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        done = subprocess.run(
            [
                PYTHON, "-m", "audiosocket_cli", "load", f"127.0.0.1:{port}", "--calls", "3",
                "--total", "3", "--rate", "50", "--workers", "1", "--json",
                "--before-call", "echo not registered >&2; exit 1",
            ],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
    total = json.loads(done.stdout.splitlines()[-1])
    assert total["total_failed_by"] == {"before-call-failed": 3}, total
    assert total["total_up"] == 0
    assert done.stderr.count("exited 1: not registered") == 1, done.stderr
    assert done.returncode == 1
