"""One vocabulary: every command's --json output against docs/output.schema.json.

One call is placed by `dial`, through `capture`, to `listen`, then replayed
from capture's trace, then read back by `trace`: every line every command
wrote must fit the schema, and the call must end with the same token in
each command's own report of it.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jsonschema
import pytest
from conftest import ROOT, SAMPLES

SCHEMA = json.loads((ROOT / "docs" / "output.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
TIMEOUT = 30


def check_lines(text: str, command: str) -> list[dict]:
    """Every line is one valid record; the records."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        record = json.loads(line)
        errors = sorted(VALIDATOR.iter_errors(record), key=lambda e: list(e.path))
        assert not errors, f"{command} line {number}: {errors[0].message}\n{line[:300]}"
        records.append(record)
    assert records, f"{command} wrote nothing"
    return records


@contextmanager
def server(cli_env: dict[str, str], *args: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """`audiosocket ARGS 127.0.0.1:0 ...` until its `listening on` line; killed in any case."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "audiosocket_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        ready, _, _ = select.select([proc.stderr], [], [], TIMEOUT)
        assert ready, f"{args[0]} printed nothing"
        line = proc.stderr.readline().decode()  # type: ignore[union-attr]
        assert line.startswith("listening on 127.0.0.1:"), line
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)


def run(cli_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "audiosocket_cli", *args],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=TIMEOUT,
    )


def the_end(records: list[dict]) -> dict:
    ends = [r for r in records if r.get("event") == "call-end"]
    assert len(ends) == 1, ends
    return ends[0]


@pytest.mark.parametrize("how", ["duration", "hangup"])
def test_every_command_speaks_the_schema_and_agrees_on_the_ending(
    tmp_path: Path, cli_env: dict[str, str], how: str
) -> None:
    trace = tmp_path / "capture.trace"
    with server(cli_env, "listen", "127.0.0.1:0", "--echo", "--max-calls", "2", "--json") as (
        listen,
        listen_port,
    ):
        with server(
            cli_env,
            "capture",
            "127.0.0.1:0",
            "--upstream",
            str(listen_port),
            "--max-calls",
            "1",
            "--json",
            "--trace",
            str(trace),
        ) as (capture, capture_port):
            ending = ["--duration", "0.3"] if how == "duration" else ["--inject", "hangup@0.3"]
            dial = run(
                cli_env,
                "dial",
                str(capture_port),
                "--tone",
                "440",
                "--dtmf",
                "12@0.1",
                "--json",
                *ending,
            )
            assert dial.returncode == 0, dial.stderr
            out, err = capture.communicate(timeout=TIMEOUT)
            assert capture.returncode == 0, err
        # The same call again, from capture's trace, straight to listen.
        replay = run(cli_env, "replay", str(trace), str(listen_port), "--json", "--linger", "0.2")
        assert replay.returncode == 0, replay.stderr
        listen_out, listen_err = listen.communicate(timeout=TIMEOUT)
        assert listen.returncode == 0, listen_err

    dialed = check_lines(dial.stdout, "dial")
    captured = check_lines(out.decode(), "capture")
    replayed = check_lines(replay.stdout, "replay")
    listened = check_lines(listen_out.decode(), "listen")
    traced = check_lines(run(cli_env, "trace", "--json", str(trace)).stdout, "trace")

    ended = "caller-close" if how == "duration" else "caller-hangup"
    assert the_end(dialed)["ended"] == ended
    assert the_end(captured)["ended"] == ended
    assert the_end(traced)["ended"] == ended
    assert the_end(replayed)["ended"] == ended
    listen_ends = [r["ended"] for r in listened if r.get("event") == "call-end"]
    assert listen_ends == [ended, ended]
    # The same counts under the same names, whichever command counted.
    assert the_end(captured)[">"]["dtmf"] == the_end(dialed)[">"]["dtmf"] == "12"
    assert the_end(traced)[">"]["messages"] == the_end(captured)[">"]["messages"]


def test_trace_of_every_input_kind_speaks_the_schema(cli_env: dict[str, str]) -> None:
    for sample in ("call.trace", "call.raw"):
        result = run(cli_env, "trace", "--json", str(SAMPLES / sample))
        assert result.returncode == 0, result.stderr
        check_lines(result.stdout, f"trace {sample}")
    v1 = run(cli_env, "trace", "--json", str(ROOT / "tests" / "data" / "call-v1.trace"))
    check_lines(v1.stdout, "trace of a version 1 file")


def test_the_schema_can_fail() -> None:
    good = {"t": 0.0, "conn": 1, "call": "#1", "dir": ">", "kind": "dtmf", "type": 3, "len": 1}
    assert not list(VALIDATOR.iter_errors({**good, "digit": "5"}))
    assert list(VALIDATOR.iter_errors(good))  # a dtmf without its digit
    end = {"t": 1.0, "conn": 1, "call": "#1", "dir": "-", "event": "call-end", "text": "x"}
    assert list(VALIDATOR.iter_errors({**end, "ended": "peer-close"}))
