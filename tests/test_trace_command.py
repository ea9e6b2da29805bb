"""`audiosocket trace`: the samples printed line by line, every flag, and bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result

from audiosocket_cli.cli import cli

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
CALL_RAW = SAMPLES / "call.raw"
CALL_TRACE = SAMPLES / "call.trace"
HELLO = SAMPLES / "hello-8k.wav"
UUID = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
OTHER_UUID = "0badc0de-0000-4000-8000-000000000001"


def run(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["trace", *args], input=input, catch_exceptions=False)


def split_raw(data: bytes) -> list[tuple[int, bytes]]:
    """The messages of a raw dump, parsed here without the codec under test."""
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 1 : pos + 3], "big")
        out.append((data[pos], data[pos + 3 : pos + 3 + length]))
        pos += 3 + length
    assert pos == len(data)
    return out


def level_text(pcm: bytes) -> str:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    power = float(np.mean(x * x))
    if power == 0:
        return "silent"
    return f"{round(10 * math.log10(power / 32768**2), 1):.1f}dBFS"


def expected_raw_lines(data: bytes, direction: str = ">") -> list[str]:
    """The plain lines docs/output.md gives, built independently from the bytes."""
    lines = []
    t = 0.0
    for kind, payload in split_raw(data):
        head = f"{t:.6f} 40325ec2 {direction}"
        if kind == 0x01:
            lines.append(f"{head} uuid 16 uuid={UUID}")
        elif kind == 0x10:
            lines.append(f"{head} audio {len(payload)} rate=8000 level={level_text(payload)}")
            t += len(payload) / 2 / 8000
        elif kind == 0x03:
            lines.append(f"{head} dtmf 1 digit={payload.decode()}")
        else:
            raise AssertionError(f"unexpected kind {kind} in the sample")
    return lines


def assert_one_line_error(
    result: Result, status: tuple[int, ...] = (1, 2), stdout: bool = False
) -> str:
    """One `audiosocket: error:` line on stderr, no traceback; stdout empty unless allowed."""
    assert result.exit_code in status, result.stderr
    if not stdout:
        assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("audiosocket: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


# Plain output ------------------------------------------------------------------------


def test_raw_dump_plain_lines() -> None:
    result = run(str(CALL_RAW))
    assert result.exit_code == 0
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    frames = [p for k, p in split_raw(CALL_RAW.read_bytes()) if k == 0x10]
    # The first lines, spelled out.
    assert lines[0] == f"0.000000 40325ec2 > uuid 16 uuid={UUID}"
    assert lines[1] == f"0.000000 40325ec2 > audio 320 rate=8000 level={level_text(frames[0])}"
    assert lines[2] == f"0.020000 40325ec2 > audio 320 rate=8000 level={level_text(frames[1])}"
    assert lines[3] == f"0.040000 40325ec2 > audio 320 rate=8000 level={level_text(frames[2])}"
    # The DTMF lines: after 50 frames of 20 ms.
    dtmf = [line for line in lines if " dtmf " in line]
    assert dtmf == ["1.000000 40325ec2 > dtmf 1 digit=1", "1.000000 40325ec2 > dtmf 1 digit=#"]
    assert lines.index(dtmf[0]) == 51  # the UUID, 50 frames, then the digits
    # And every line.
    assert lines == expected_raw_lines(CALL_RAW.read_bytes())
    assert len(lines) == 103


def test_trace_file_plain_lines() -> None:
    result = run(str(CALL_TRACE))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "0.000000 #1 - call-start - from 127.0.0.1:40000",
        f"0.000412 #1 > uuid 16 uuid={UUID}",
        lines[2],
    ]
    assert lines[2].startswith("0.020000 40325ec2 > audio 320 rate=8000 level=")
    assert lines[3].startswith("0.021000 40325ec2 < audio 320 rate=8000 level=")
    assert [line for line in lines if " dtmf " in line] == ["0.625000 40325ec2 > dtmf 1 digit=5"]
    assert lines[-2] == "2.020000 40325ec2 < hangup 0"
    assert lines[-1].startswith(
        "2.020000 40325ec2 - call-end - app-hangup (the application hung up); after 2.02s; "
        "> 102 msgs 32323 B audio 2.00s dtmf=5; < 101 msgs 32303 B audio 2.00s; "
    )
    assert len(lines) == 1 + 1 + 100 * 2 + 1 + 1 + 1
    # Plain lines are grep-able: fields separated by single spaces, no colour codes.
    assert all("\x1b" not in line and "  " not in line for line in lines)


def test_dir_less_than_for_a_raw_dump() -> None:
    result = run("--dir", "<", str(CALL_RAW))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == expected_raw_lines(CALL_RAW.read_bytes(), "<")


# JSON --------------------------------------------------------------------------------


def test_json_parsed_back() -> None:
    result = run("--json", str(CALL_RAW))
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    messages = split_raw(CALL_RAW.read_bytes())
    assert len(records) == len(messages) == 103
    assert records[0] == {
        "t": 0.0,
        "conn": 1,
        "call": UUID,
        "dir": ">",
        "kind": "uuid",
        "type": 1,
        "len": 16,
        "uuid": UUID,
    }
    t = 0.0
    for record, (kind, payload) in zip(records, messages, strict=True):
        assert record["type"] == kind and record["len"] == len(payload)
        assert record["conn"] == 1 and record["call"] == UUID and record["dir"] == ">"
        assert record["t"] == round(t, 6)
        if kind == 0x10:
            assert record["kind"] == "audio" and record["rate"] == 8000
            level = level_text(payload)
            assert record["level_dbfs"] == (None if level == "silent" else float(level[:-4]))
            t += len(payload) / 16000
        elif kind == 0x03:
            assert record["kind"] == "dtmf" and record["digit"] == payload.decode()
    assert [r["digit"] for r in records if r["kind"] == "dtmf"] == ["1", "#"]


def test_json_of_a_trace_file_keeps_events_and_directions() -> None:
    result = run("--json", str(CALL_TRACE))
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0] == {
        "t": 0.0,
        "conn": 1,
        "call": "#1",
        "dir": "-",
        "event": "call-start",
        "text": "from 127.0.0.1:40000",
        "peer": "127.0.0.1:40000",
    }
    assert sum(1 for r in records if r.get("dir") == ">") == 102
    assert sum(1 for r in records if r.get("dir") == "<") == 101
    assert records[-1]["event"] == "call-end" and records[-1]["ended"] == "app-hangup"


def test_a_conversations_events_are_read_back_as_themselves(tmp_path: Path) -> None:
    """`converse` writes turn, barge-in, expectation and conversation events: a trace of
    it shows them under their own names, never as warnings."""
    trace = tmp_path / "converse.trace"
    call = "305a5c0f-8510-41b6-ba04-8eb333b10b9b"
    head = {"format": "audiosocket-trace", "version": 2, "command": "converse"}
    events = [
        ("turn", "turn 1 (step 3 'question'): caller spoke 10.00-11.77s", {"latency": 0.4}),
        ("barge-in", "barge-in 1: the agent stopped 0.31s after the caller began", {}),
        ("expectation", "PASS no-talk-over: the agent never began while the caller spoke", {}),
        ("conversation", "first response 1.20s; 1 turn", {"turns": 1}),
    ]
    lines = [json.dumps(head)] + [
        json.dumps(
            {
                "t": 12.0,
                "conn": 1,
                "call": call,
                "dir": "-",
                "event": name,
                "text": text,
                "ts": 1.0,
                **fields,
            }
        )  # fmt: skip
        for name, text, fields in events
    ]
    trace.write_text("\n".join(lines) + "\n")
    result = run("--json", str(trace))
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["event"] for r in records] == [name for name, _, _ in events]
    assert records[0]["latency"] == 0.4 and records[3]["turns"] == 1
    plain = run(str(trace))
    assert "- turn - turn 1" in plain.stdout and "warning" not in plain.stdout + plain.stderr


# Filters -----------------------------------------------------------------------------


@pytest.fixture
def two_calls(tmp_path: Path) -> Path:
    """A raw dump of another call: a different UUID, one frame, a DTMF."""
    path = tmp_path / "other.raw"
    other = bytes.fromhex(OTHER_UUID.replace("-", ""))
    path.write_bytes(b"\x01\x00\x10" + other + b"\x10\x01\x40" + bytes(320) + b"\x03\x00\x019")
    return path


def test_call_filter_by_uuid_prefix(two_calls: Path) -> None:
    both = run(str(CALL_RAW), str(two_calls))
    assert both.exit_code == 0
    assert len(both.stdout.splitlines()) == 103 + 3
    mine = run("--call", "40325ec2", str(CALL_RAW), str(two_calls))
    assert mine.stdout.splitlines() == expected_raw_lines(CALL_RAW.read_bytes())
    other = run("--call", OTHER_UUID.upper(), str(CALL_RAW), str(two_calls))
    assert other.stdout.splitlines() == [
        f"0.000000 0badc0de > uuid 16 uuid={OTHER_UUID}",
        "0.000000 0badc0de > audio 320 rate=8000 level=silent",
        "0.020000 0badc0de > dtmf 1 digit=9",
    ]
    # No such call: a usage error that lists the calls there are.
    none = run("--call", "ffff", str(CALL_RAW), str(two_calls))
    assert none.exit_code == 2 and none.stdout == ""
    assert "no call 'ffff'" in none.stderr and f"{OTHER_UUID} (#1)" in none.stderr


def test_call_filter_keeps_the_records_before_the_uuid() -> None:
    # In a trace, the call-start event and the UUID message come before the UUID is known.
    everything = run(str(CALL_TRACE)).stdout
    by_uuid = run("--call", "40325ec2", str(CALL_TRACE))
    by_conn = run("--call", "#1", str(CALL_TRACE))
    assert by_uuid.stdout == everything
    assert by_conn.stdout == everything
    assert run("--call", "#2", str(CALL_TRACE)).stdout == ""


def test_kind_filter() -> None:
    result = run("--kind", "dtmf,uuid", str(CALL_RAW))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"0.000000 40325ec2 > uuid 16 uuid={UUID}",
        "1.000000 40325ec2 > dtmf 1 digit=1",
        "1.000000 40325ec2 > dtmf 1 digit=#",
    ]
    audio = run("--kind", "audio", str(CALL_TRACE)).stdout.splitlines()
    assert len(audio) == 200 and all(" audio 320 " in line for line in audio)
    hangup = run("--kind", " hangup ,error", str(CALL_TRACE)).stdout.splitlines()
    assert hangup == ["2.020000 40325ec2 < hangup 0"]


def test_summary_table() -> None:
    result = run("--summary", str(CALL_TRACE))
    assert result.exit_code == 0
    text = result.stdout
    assert f"call {UUID}" in text
    rows = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:4]]
        for line in text.splitlines()
        if line.startswith("│")
    }
    assert rows["messages"] == ["102", "101"]
    assert rows["bytes"] == [str(19 + 100 * 323 + 4), str(100 * 323 + 3)]
    assert rows["audio messages"] == ["100", "100"]
    assert rows["audio seconds"] == ["2.000", "2.000"]
    assert rows["rates"] == ["8000", "8000"]
    assert rows["dtmf"] == ["5", "-"]
    assert rows["problems"] == ["-", "-"]
    assert rows["gaps"] == ["mean 20.0ms worst 20.0ms"] * 2


def test_summary_json() -> None:
    result = run("--summary", "--json", str(CALL_RAW))
    assert result.exit_code == 0
    (line,) = result.stdout.splitlines()
    summary = json.loads(line)
    assert summary["call"] == UUID and summary["conn"] == 1
    inbound = summary[">"]
    assert inbound["messages"] == 103
    assert inbound["bytes"] == CALL_RAW.stat().st_size
    assert inbound["kinds"] == {"uuid": 1, "audio": 100, "dtmf": 2}
    assert inbound["audio_seconds"] == 2.0
    assert inbound["rates"] == {"8000": 100}
    assert inbound["dtmf"] == "1#"
    assert inbound["problems"] == {}
    assert summary["<"]["messages"] == 0


# Extract -----------------------------------------------------------------------------


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(str(path), dtype="int16")
    info = sf.info(str(path))
    assert (info.channels, info.subtype, info.format) == (1, "PCM_16", "WAV")
    return samples, rate


def test_extract_raw_dump(tmp_path: Path) -> None:
    out = tmp_path / "wavs"
    result = run("--extract", str(out), "-q", str(CALL_RAW))
    assert result.exit_code == 0
    wav = out / f"{UUID}.in.wav"
    assert result.stderr == f"wrote {wav}\n"
    assert sorted(p.name for p in out.iterdir()) == [wav.name]
    samples, rate = read_wav(wav)
    assert rate == 8000
    frames = [p for k, p in split_raw(CALL_RAW.read_bytes()) if k == 0x10]
    expected = np.frombuffer(b"".join(frames), dtype="<i2")
    assert np.array_equal(samples, expected)
    # The sample dump is the first two seconds of the speech file.
    speech, _ = sf.read(str(HELLO), dtype="int16")
    assert np.array_equal(samples, speech[: len(samples)])


def test_extract_trace_both_directions(tmp_path: Path) -> None:
    out = tmp_path / "wavs"
    result = run("--extract", str(out), "--summary", str(CALL_TRACE))
    assert result.exit_code == 0
    inbound, rate_in = read_wav(out / f"{UUID}.in.wav")
    outbound, rate_out = read_wav(out / f"{UUID}.out.wav")
    assert rate_in == rate_out == 8000
    records = [json.loads(line) for line in CALL_TRACE.read_text().splitlines()[1:]]

    def audio(direction: str) -> np.ndarray:
        import base64

        data = b"".join(
            base64.b64decode(r["data"])
            for r in records
            if r.get("dir") == direction and r.get("kind") == "audio"
        )
        return np.frombuffer(data, dtype="<i2")

    assert len(inbound) == 16000
    assert np.array_equal(inbound, audio(">"))
    assert np.array_equal(outbound, audio("<"))


def test_extract_two_dumps_of_the_same_call_keeps_them_apart(tmp_path: Path) -> None:
    out = tmp_path / "wavs"
    result = run("--extract", str(out), "-q", str(CALL_RAW), str(CALL_RAW))
    assert result.exit_code == 0
    first, second = out / f"{UUID}.in.wav", out / f"{UUID}-2.in.wav"
    assert sorted(out.iterdir()) == sorted([first, second])
    assert np.array_equal(read_wav(first)[0], read_wav(second)[0])
    assert len(read_wav(first)[0]) == 16000


def test_extract_into_a_file_is_a_usage_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert_one_line_error(run("--extract", str(target), str(CALL_RAW)), (2,))


# Inputs: stdin, truncated, re-traced -------------------------------------------------


def test_stdin_raw_and_trace() -> None:
    raw = run("-", input=CALL_RAW.read_bytes())
    assert raw.exit_code == 0
    assert raw.stdout == run(str(CALL_RAW)).stdout
    trace = run("-", input=CALL_TRACE.read_bytes())
    assert trace.exit_code == 0
    assert trace.stdout == run(str(CALL_TRACE)).stdout


def test_stdin_through_a_real_pipe(cli_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "audiosocket_cli", "trace", "--kind", "dtmf", "-"],
        input=CALL_TRACE.read_bytes(),
        capture_output=True,
        env=cli_env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == ["0.625000 40325ec2 > dtmf 1 digit=5"]


def test_truncated_raw_dump_warns_and_shows_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "cut.raw"
    path.write_bytes(CALL_RAW.read_bytes()[:-100])
    result = run(str(path))
    assert result.exit_code == 3  # a stream cut inside a message breaks the protocol
    lines = result.stdout.splitlines()
    assert lines[:-1] == expected_raw_lines(CALL_RAW.read_bytes())[:-1]
    problem = f"{path}: stream ended inside a message of kind 0x10: 223 bytes received, 100 missing"
    assert lines[-1] == f"1.980000 40325ec2 - warning - {problem}"
    assert result.stderr == f"warning: call 40325ec2: {problem}\n"
    as_json = [json.loads(line) for line in run("--json", str(path)).stdout.splitlines()]
    assert as_json[-1]["event"] == "warning" and as_json[-1]["missing"] == 100


def test_trace_file_cut_mid_line(tmp_path: Path) -> None:
    data = CALL_TRACE.read_bytes()
    path = tmp_path / "cut.trace"
    path.write_bytes(data[: len(data) // 2])
    result = run(str(path))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    whole_lines = data[: len(data) // 2].count(b"\n") - 1  # less the header
    assert lines[:-1] == run(str(CALL_TRACE)).stdout.splitlines()[:whole_lines]
    assert lines[-1].split(" ")[1:5] == ["40325ec2", "-", "warning", "-"]
    assert f"{path}: line {whole_lines + 2} cut short" in lines[-1]
    assert result.stderr.startswith("warning: call 40325ec2: ")


def test_trace_option_writes_a_trace_that_reads_back_the_same(tmp_path: Path) -> None:
    copy = tmp_path / "copy.trace"
    first = run("--trace", str(copy), str(CALL_RAW))
    assert first.exit_code == 0
    again = run(str(copy))
    assert again.exit_code == 0
    assert again.stdout == first.stdout


# Bad input ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    line = assert_one_line_error(run(str(tmp_path / "nope.raw")))
    assert line == f"audiosocket: error: {tmp_path / 'nope.raw'}: no such file"


def test_a_directory(tmp_path: Path) -> None:
    line = assert_one_line_error(run(str(tmp_path)))
    assert line == f"audiosocket: error: {tmp_path}: is a directory"


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.raw"
    path.write_bytes(CALL_RAW.read_bytes())
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who can read a mode-000 file (root)")
        line = assert_one_line_error(run(str(path)))
        assert line == f"audiosocket: error: {path}: cannot read: Permission denied"
    finally:
        path.chmod(0o600)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_file_that_fails_on_read() -> None:
    # Opens fine, even for root, then every read at offset 0 fails with EIO.
    line = assert_one_line_error(run("/proc/self/mem"))
    assert line == "audiosocket: error: /proc/self/mem: cannot read: Input/output error"


def test_trace_option_into_a_missing_folder(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "x.trace"
    line = assert_one_line_error(run("--trace", str(target), str(CALL_RAW)), (1,))
    assert line == f"audiosocket: error: {target}: cannot write: No such file or directory"


def test_version_1_traces_still_read_in_the_new_words() -> None:
    """A trace written before the one vocabulary: its call-end reads as `ended`."""
    result = run("--json", str(ROOT / "tests" / "data" / "call-v1.trace"))
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 1 + 1 + 100 * 2 + 1 + 1 + 1
    assert records[-1]["event"] == "call-end" and records[-1]["ended"] == "app-hangup"
    assert records[-1]["call"] == UUID
    assert [r["digit"] for r in records if r.get("kind") == "dtmf"] == ["5"]


def test_trace_of_an_unknown_version(tmp_path: Path) -> None:
    path = tmp_path / "future.trace"
    path.write_text(json.dumps({"format": "audiosocket-trace", "version": 99}) + "\n")
    line = assert_one_line_error(run(str(path)))
    assert line == f"audiosocket: error: {path}: trace version 99 is not supported"


def test_trace_file_with_a_broken_line(tmp_path: Path) -> None:
    lines = CALL_TRACE.read_bytes().splitlines(keepends=True)
    lines[10] = b"{not json\n"
    path = tmp_path / "broken.trace"
    path.write_bytes(b"".join(lines))
    result = run(str(path))
    line = assert_one_line_error(result, stdout=True)
    assert line.startswith(f"audiosocket: error: {path}: line 11: ")
    # The lines before the broken one were shown as they were read.
    assert result.stdout.splitlines() == run(str(CALL_TRACE)).stdout.splitlines()[:9]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--kind", "video", str(CALL_RAW)], "unknown kind video"),
        (["--kind", "dtmf,nope", str(CALL_RAW)], "unknown kind nope"),
        (["--dir", "x", str(CALL_RAW)], "--dir"),
        (["--bogus", str(CALL_RAW)], "--bogus"),
        ([], "FILES"),
    ],
)
def test_usage_errors(args: list[str], says: str) -> None:
    line = assert_one_line_error(run(*args), (2,))
    assert says in line


def test_errors_in_a_subprocess_are_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    for args, status in (([str(tmp_path / "missing")], 1), (["--kind", "x", str(CALL_RAW)], 2)):
        proc = subprocess.run(
            [sys.executable, "-m", "audiosocket_cli", "trace", *args],
            capture_output=True,
            env=cli_env,
            timeout=60,
        )
        assert proc.returncode == status
        assert proc.stdout == b""
        err = proc.stderr.decode()
        assert err.startswith("audiosocket: error: ") and err.count("\n") == 1, err


def test_the_samples_are_made_again_byte_for_byte(tmp_path: Path) -> None:
    """samples/ are the reference: make_samples.py makes call.raw and call.trace again
    from the committed hello-8k.wav, the same bytes every time."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, str(ROOT / "samples" / "make_samples.py"), "--out", str(tmp_path)],
        check=True,
        timeout=60,
    )
    for name in ("call.raw", "call.trace"):
        assert (tmp_path / name).read_bytes() == (ROOT / "samples" / name).read_bytes(), name
