"""The output layer: plain lines as CLI.md spells them, JSON lines, trace files both ways."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import threading
import time
import uuid as uuid_lib
from pathlib import Path

import numpy as np
import pytest

from audiosocket_cli.analysis.levels import format_level, level_dbfs
from audiosocket_cli.files.trace import (
    FORMAT,
    VERSION,
    TraceFormatError,
    read_raw,
    read_records,
    sniff,
)
from audiosocket_cli.output.sinks import (
    Environment,
    JsonSink,
    PlainSink,
    StderrEventSink,
    make_output,
    plain_event_line,
    plain_message_line,
)
from audiosocket_cli.protocol.events import CallInfo
from audiosocket_cli.protocol.wire import Message

UUID = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"


def expected_level(pcm: bytes) -> float:
    """RMS in dBFS to 0.1 dB, computed here independently of levels.py."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return round(20 * math.log10(math.sqrt(np.mean(x * x)) / 32768), 1)


def sine(amplitude: float, samples: int = 160, hz: float = 1000, rate: int = 8000) -> bytes:
    t = np.arange(samples) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).round().astype("<i2").tobytes()


def call_with_uuid() -> CallInfo:
    return CallInfo(conn=3, uuid=UUID, started_ts=1_764_000_000.0)


# Levels --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pcm", "level"),
    [
        (b"\x00\x80" * 160, 0.0),  # -32768: full scale
        (np.full(160, 16384, "<i2").tobytes(), -6.0),
        (np.full(160, -3277, "<i2").tobytes(), -20.0),
        (sine(32767, 8000), -3.0),
        (sine(1000, 8000), -33.3),
        (b"\xff\x7f" * 160, 0.0),  # 32767: -0.0003 dB rounds to 0.0, not -0.0
    ],
)
def test_level_dbfs(pcm: bytes, level: float) -> None:
    assert level_dbfs(pcm) == level
    assert level_dbfs(pcm) == expected_level(pcm)


@pytest.mark.parametrize("pcm", [b"", b"\x05", bytes(320)])
def test_level_of_silence_is_none(pcm: bytes) -> None:
    assert level_dbfs(pcm) is None
    assert format_level(None) == "silent"


def test_full_scale_prints_without_a_minus_sign() -> None:
    level = level_dbfs(b"\xff\x7f" * 160)
    assert format_level(level) == "0.0dBFS"
    assert json.dumps(level) == "0.0"


def test_level_ignores_an_odd_last_byte() -> None:
    pcm = sine(8000)
    assert level_dbfs(pcm + b"\x7f") == expected_level(pcm)


# Plain lines -------------------------------------------------------------------------


def test_plain_audio_line_as_cli_md() -> None:
    pcm = sine(2200, 160)
    level = expected_level(pcm)
    line = plain_message_line("40325ec2", 0.020113, ">", Message.audio(pcm, 8000))
    assert line == f"0.020113 40325ec2 > audio 320 rate=8000 level={level:.1f}dBFS"
    assert line.split(" ")[:6] == ["0.020113", "40325ec2", ">", "audio", "320", "rate=8000"]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (Message.dtmf("5"), "1.300204 40325ec2 > dtmf 1 digit=5"),
        (Message.dtmf("#"), "1.300204 40325ec2 > dtmf 1 digit=#"),
        (Message.error(2), "1.300204 40325ec2 > error 1 code=0x02 frame-forwarding-error"),
        (
            Message.error(3),
            "1.300204 40325ec2 > error 1 code=0x03 hangup-of-calling-party+frame-forwarding-error",
        ),
        (Message.error(), "1.300204 40325ec2 > error 0 code=none"),
        (Message.hangup(), "1.300204 40325ec2 > hangup 0"),
        (Message.for_uuid(UUID), f"1.300204 40325ec2 > uuid 16 uuid={UUID}"),
        (Message.audio(bytes(640), 16000), "1.300204 40325ec2 > audio 640 rate=16000 level=silent"),
        (Message(0x02, b"\x01\x02"), "1.300204 40325ec2 > unknown 2 type=0x02 data=0102"),
        (Message(0x19, b""), "1.300204 40325ec2 > unknown 0 type=0x19"),
        (Message(0xFE, bytes(40)), "1.300204 40325ec2 > unknown 40 type=0xfe data=" + "00" * 16),
        # Content problems are shown, quoted, after the detail.
        (
            Message(0x10, b"\x00\x00\x00"),
            '1.300204 40325ec2 > audio 3 rate=8000 level=silent problem="odd audio length 3'
            ' (16-bit samples)"',
        ),
        (
            Message(0x10, b""),
            '1.300204 40325ec2 > audio 0 rate=8000 level=silent problem="empty audio message"',
        ),
        (
            Message(0x01, b"abcd"),
            '1.300204 40325ec2 > uuid 4 data=61626364 problem="uuid payload is 4 bytes, not 16"',
        ),
        (
            Message(0x03, b"x"),
            '1.300204 40325ec2 > dtmf 1 digit=x problem="dtmf byte 0x78 is not a digit"',
        ),
        (
            Message(0x03, b"\x07"),
            '1.300204 40325ec2 > dtmf 1 problem="dtmf byte 0x07 is not a digit"',
        ),
    ],
)
def test_plain_lines(message: Message, expected: str) -> None:
    assert plain_message_line("40325ec2", 1.300204, ">", message) == expected


def test_plain_event_lines() -> None:
    assert plain_event_line("#1", 0.0, "call-start", "peer=127.0.0.1:40000") == (
        "0.000000 #1 - call-start - peer=127.0.0.1:40000"
    )
    assert plain_event_line("40325ec2", 2.02, "call-end", "") == "2.020000 40325ec2 - call-end -"


def plain_env() -> Environment:
    return Environment(
        stdout=io.StringIO(), stderr=io.StringIO(), stdout_isatty=False, stderr_isatty=False
    )


def test_plain_output_through_make_output() -> None:
    env = plain_env()
    output = make_output(env)
    assert [type(s) for s in output.sinks] == [PlainSink, StderrEventSink]
    call = CallInfo(conn=1, started_ts=0.0)
    output.event(call, 0.0, "call-start", "peer=127.0.0.1:40000", peer="127.0.0.1:40000")
    output.message(call, 0.0004, ">", Message.for_uuid(UUID))
    call.uuid = UUID
    output.message(call, 0.020113, ">", Message.audio(bytes(320)))
    output.message(call, 1.3002041, "<", Message.error(2))
    output.event(call, 1.5, "warning", "odd audio length 3")
    output.event(call, 2.0, "call-end", "ended=peer-closed")
    output.close()
    assert env.stdout.getvalue().splitlines() == [
        "0.000000 #1 - call-start - peer=127.0.0.1:40000",
        f"0.000400 #1 > uuid 16 uuid={UUID}",
        "0.020113 40325ec2 > audio 320 rate=8000 level=silent",
        "1.300204 40325ec2 < error 1 code=0x02 frame-forwarding-error",
        "1.500000 40325ec2 - warning - odd audio length 3",
        "2.000000 40325ec2 - call-end - ended=peer-closed",
    ]
    # Warnings and diagnoses also go to stderr, in human form.
    assert env.stderr.getvalue() == "warning: call 40325ec2: odd audio length 3\n"


def test_quiet_shows_events_only() -> None:
    env = plain_env()
    output = make_output(env, quiet=True)
    call = call_with_uuid()
    output.message(call, 0.02, ">", Message.audio(sine(1000)))
    output.event(call, 1.0, "call-end", "ended=our-hangup")
    output.close()
    assert env.stdout.getvalue() == "1.000000 40325ec2 - call-end - ended=our-hangup\n"


def test_terminal_gets_the_human_sink() -> None:
    env = Environment(stdout=io.StringIO(), stderr=io.StringIO(), stdout_isatty=True)
    output = make_output(env)
    assert [type(s).__name__ for s in output.sinks] == ["HumanSink"]
    output.close()
    # --json wins over a terminal.
    output = make_output(env, json_lines=True)
    assert [type(s) for s in output.sinks] == [JsonSink, StderrEventSink]


# JSON lines --------------------------------------------------------------------------


def test_json_fields() -> None:
    env = plain_env()
    output = make_output(env, json_lines=True)
    call = CallInfo(conn=7, started_ts=0.0)
    pcm = sine(3000)
    output.message(call, 0.0004, ">", Message.for_uuid(UUID))
    call.uuid = UUID
    output.message(call, 0.020113, ">", Message.audio(pcm, 8000))
    output.message(call, 0.04, ">", Message.audio(bytes(640), 16000))
    output.message(call, 1.3, ">", Message.dtmf("5"))
    output.message(call, 1.5, "<", Message.error(2))
    output.message(call, 1.6, "<", Message.error())
    output.message(call, 1.7, "<", Message(0x02, b"ab"))
    output.message(call, 1.8, "<", Message(0x01, b"abcd"))
    output.message(call, 1.9, "<", Message.hangup())
    output.event(call, 2.0, "call-end", "ended=our-hangup", ended="our-hangup")
    output.close()
    records = [json.loads(line) for line in env.stdout.getvalue().splitlines()]
    common = [{k: r[k] for k in ("t", "conn", "call", "dir")} for r in records]
    assert common[0] == {"t": 0.0004, "conn": 7, "call": "#7", "dir": ">"}
    assert all(c["conn"] == 7 for c in common)
    assert [c["call"] for c in common[1:]] == [UUID] * 9
    assert records[0] == {
        "t": 0.0004,
        "conn": 7,
        "call": "#7",
        "dir": ">",
        "kind": "uuid",
        "type": 1,
        "len": 16,
        "uuid": UUID,
    }
    assert records[1] == {
        **common[1],
        "t": 0.020113,
        "kind": "audio",
        "type": 16,
        "len": 320,
        "rate": 8000,
        "level_dbfs": expected_level(pcm),
    }
    assert records[2]["rate"] == 16000 and records[2]["type"] == 0x12
    assert records[2]["level_dbfs"] is None
    assert {k: records[3][k] for k in ("kind", "type", "len", "digit")} == {
        "kind": "dtmf",
        "type": 3,
        "len": 1,
        "digit": "5",
    }
    assert (records[4]["kind"], records[4]["type"], records[4]["code"]) == ("error", 255, 2)
    assert records[5]["code"] is None and records[5]["len"] == 0
    assert records[6]["kind"] == "unknown" and records[6]["type"] == 2
    assert records[6]["problem"] == "unassigned kind 0x02"
    assert records[7]["uuid"] is None and records[7]["problem"].startswith("uuid payload")
    assert (records[8]["kind"], records[8]["type"], records[8]["len"]) == ("hangup", 0, 0)
    assert records[9] == {
        "t": 2.0,
        "conn": 7,
        "call": UUID,
        "dir": "-",
        "event": "call-end",
        "text": "ended=our-hangup",
        "ended": "our-hangup",
    }
    assert "kind" not in records[9]


def test_output_is_safe_from_two_threads() -> None:
    env = plain_env()
    output = make_output(env)
    call = call_with_uuid()
    frame = Message.audio(sine(1000))

    def write(direction: str) -> None:
        for n in range(300):
            output.message(call, n * 0.02, direction, frame)

    threads = [threading.Thread(target=write, args=(d,)) for d in "<>"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = env.stdout.getvalue().splitlines()
    assert len(lines) == 600
    assert all(line.endswith(" audio 320 rate=8000 level=-33.3dBFS") for line in lines)


# Trace files -------------------------------------------------------------------------


def write_sample_trace(path: Path) -> list[tuple[float, str, Message]]:
    """A call written through make_output(trace_path=...): what went in."""
    env = plain_env()
    output = make_output(env, trace_path=str(path), command="test")
    call = CallInfo(conn=2, started_ts=1_764_000_000.0)
    sent: list[tuple[float, str, Message]] = [(0.0004, ">", Message.for_uuid(UUID))]
    output.event(call, 0.0, "call-start", "peer=127.0.0.1:40000", peer="127.0.0.1:40000")
    output.message(call, *sent[0])
    call.uuid = UUID
    for n in range(5):
        sent.append((0.02 * (n + 1), ">", Message.audio(sine(500 * (n + 1)))))
        sent.append((0.02 * (n + 1) + 0.001, "<", Message.audio(sine(400), 16000)))
    sent.append((0.15, ">", Message.dtmf("7")))
    sent.append((0.16, "<", Message(0x03, b"x")))
    sent.append((0.17, "<", Message(0x02, bytes(range(40)))))
    sent.append((0.2, "<", Message.hangup()))
    for t, direction, message in sent[1:]:
        output.message(call, t, direction, message)
    output.event(call, 0.2, "call-end", "ended=our-hangup", ended="our-hangup")
    output.close()
    return sent


def test_trace_file_written_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "call.trace"
    sent = write_sample_trace(path)
    lines = path.read_bytes().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == FORMAT == "audiosocket-trace"
    assert header["version"] == VERSION == 1
    assert header["command"] == "test"
    assert header["tool"].startswith("audiosocket-cli ")
    second = json.loads(lines[2])  # the UUID message line: the JSON record plus ts and data
    assert second["ts"] == 1_764_000_000.0004
    assert base64.b64decode(second["data"]) == uuid_lib.UUID(UUID).bytes
    assert second["uuid"] == UUID and second["kind"] == "uuid" and second["type"] == 1

    with open(path, "rb") as stream:
        records = list(read_records(stream, str(path)))
    messages = [r for r in records if r.message is not None]
    events = [r for r in records if r.event is not None]
    assert [(r.t, r.dir, r.message) for r in messages] == sent
    assert all(r.conn == 2 for r in records)
    assert messages[0].call == "#2" and {r.call for r in messages[1:]} == {UUID}
    assert [r.ts for r in messages] == [round(1_764_000_000.0 + t, 6) for t, _, _ in sent]
    assert [(e.t, e.event, e.text, e.fields) for e in events] == [
        (0.0, "call-start", "peer=127.0.0.1:40000", {"peer": "127.0.0.1:40000"}),
        (0.2, "call-end", "ended=our-hangup", {"ended": "our-hangup"}),
    ]
    assert events[0].dir == "-" and events[0].ts == 1_764_000_000.0


def test_trace_read_from_a_stream_without_peek(tmp_path: Path) -> None:
    path = tmp_path / "call.trace"
    sent = write_sample_trace(path)
    records = list(read_records(io.BytesIO(path.read_bytes()), "bytes"))
    assert [r.message for r in records if r.message is not None] == [m for _, _, m in sent]


def test_trace_read_from_a_pipe_that_trickles(tmp_path: Path) -> None:
    # A pipe's first read may hold only a few bytes; the format must still be recognised.
    path = tmp_path / "call.trace"
    sent = write_sample_trace(path)
    data = path.read_bytes()
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as pipe:
            pipe.write(data[:5])
            time.sleep(0.05)
            pipe.write(data[5:])

    thread = threading.Thread(target=writer)
    thread.start()
    with os.fdopen(read_fd, "rb") as stream:
        records = list(read_records(stream, "<pipe>"))
    thread.join(5)
    assert [r.message for r in records if r.message is not None] == [m for _, _, m in sent]


def test_trace_cut_mid_line_keeps_the_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "call.trace"
    sent = write_sample_trace(path)
    data = path.read_bytes()
    last_line_start = data.rstrip(b"\n").rfind(b"\n") + 1  # the call-end event
    cut = data[: last_line_start - 30]  # inside the hangup message's line
    cut_line = cut[cut.rfind(b"\n") + 1 :]
    records = list(read_records(io.BytesIO(cut), "cut.trace"))
    messages = [r.message for r in records if r.message is not None]
    assert messages == [m for _, _, m in sent[:-1]]
    warning = records[-1]
    assert warning.event == "warning"
    assert (
        warning.text
        == f"cut.trace: line {len(sent) + 2} cut short ({len(cut_line)} bytes), ignored"
    )
    assert warning.fields == {"cut_bytes": len(cut_line)}
    assert (warning.t, warning.conn, warning.call) == (sent[-2][0], 2, UUID)


def test_trace_with_a_bad_line_inside_names_it(tmp_path: Path) -> None:
    path = tmp_path / "call.trace"
    write_sample_trace(path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = b'{"t": 1, "conn": 1}\n'
    with pytest.raises(TraceFormatError, match="bad.trace: line 5"):
        list(read_records(io.BytesIO(b"".join(lines)), "bad.trace"))


def test_trace_of_another_version_is_refused() -> None:
    data = json.dumps({"format": FORMAT, "version": 99}).encode() + b"\n"
    with pytest.raises(TraceFormatError, match="trace version 99 is not supported"):
        list(read_records(io.BytesIO(data), "new.trace"))


def test_sniff() -> None:
    assert sniff(b'{"format": "audiosocket-trace", "version": 1}') == "trace"
    assert sniff(b"\xd4\xc3\xb2\xa1\x02\x00") == "pcap"
    assert sniff(b"\x0a\x0d\x0d\x0a") == "pcap"
    assert sniff(b"\x01\x00\x10") == "raw"
    assert sniff(b'{"something": "else"}') == "raw"
    assert sniff(b"") == "raw"


# Raw dumps ---------------------------------------------------------------------------


def test_raw_dump_times_advance_by_audio_duration() -> None:
    stream = b"".join(
        m.encode()
        for m in [
            Message.for_uuid(UUID),
            Message.audio(bytes(320)),
            Message.audio(bytes(640), 16000),
            Message.dtmf("9"),
            Message.audio(bytes(160)),
        ]
    )
    records = list(read_raw(io.BytesIO(stream), "x.raw", direction="<"))
    assert [(r.t, r.dir, r.call, r.conn) for r in records] == [
        (0.0, "<", UUID, 1),
        (0.0, "<", UUID, 1),
        (0.02, "<", UUID, 1),
        (0.04, "<", UUID, 1),
        (0.04, "<", UUID, 1),
    ]


def test_raw_dump_without_uuid_is_call_1() -> None:
    records = list(read_raw(io.BytesIO(Message.audio(bytes(320)).encode()), "x.raw"))
    assert [(r.call, r.dir) for r in records] == [("#1", ">")]


def test_truncated_raw_dump_ends_with_a_warning() -> None:
    data = Message.hangup().encode() + Message.audio(bytes(320)).encode()[:100]
    records = list(read_records(io.BytesIO(data), "cut.raw"))
    assert records[0].message == Message(0, b"")
    warning = records[1]
    assert (warning.event, warning.dir, warning.fields) == ("warning", "-", {"missing": 223})
    assert warning.text == (
        "cut.raw: stream ended inside a message of kind 0x10: 100 bytes received, 223 missing"
    )
