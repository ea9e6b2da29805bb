"""The output layer: plain lines as docs/output.md spells them, JSON lines, traces."""

from __future__ import annotations

import base64
import errno
import io
import json
import math
import os
import threading
import time
import uuid as uuid_lib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from audiosocket_cli.analysis.levels import format_level, level_dbfs
from audiosocket_cli.files.trace import (
    FORMAT,
    VERSION,
    TraceFormatError,
    TraceWriter,
    event_from_record,
    read_raw,
    read_records,
    read_trace_lines,
    sniff,
)
from audiosocket_cli.output import sinks as sinks_module
from audiosocket_cli.output.make import make_output
from audiosocket_cli.output.sinks import (
    Environment,
    JsonSink,
    Output,
    PlainSink,
    StderrEventSink,
    TraceSink,
    message_detail,
    plain_event_line,
    plain_message_line,
)
from audiosocket_cli.protocol.events import (
    CallDiagnosis,
    CallEnd,
    CallInfo,
    CallStart,
    CallWarning,
    event_record,
    message_record,
)
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
    line = plain_message_line("40325ec2", 0.020113, ">", Message.audio(pcm, 8000), level_dbfs(pcm))
    assert line == f"0.020113 40325ec2 > audio 320 rate=8000 level={level:.1f}dBFS"
    assert line.split(" ")[:6] == ["0.020113", "40325ec2", ">", "audio", "320", "rate=8000"]


def test_the_level_shown_is_the_one_passed() -> None:
    # The level is computed once by Output.message and handed to every sink: the line
    # shows that level, not one computed again from the payload.
    pcm = sine(2200, 160)
    assert message_detail(Message.audio(pcm), -12.5) == "rate=8000 level=-12.5dBFS"
    assert message_detail(Message.audio(pcm), None) == "rate=8000 level=silent"
    assert plain_message_line("#1", 0.5, "<", Message.audio(pcm, 16000), 0.0) == (
        "0.500000 #1 < audio 320 rate=16000 level=0.0dBFS"
    )


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
    level = level_dbfs(message.payload) if message.name == "audio" else None
    assert plain_message_line("40325ec2", 1.300204, ">", message, level) == expected
    if message.name != "audio":
        # Only audio has a level: a level passed with another kind is not shown.
        assert plain_message_line("40325ec2", 1.300204, ">", message, -3.0) == expected


def test_plain_event_lines() -> None:
    assert plain_event_line("#1", 0.0, "call-start", "peer=127.0.0.1:40000") == (
        "0.000000 #1 - call-start - peer=127.0.0.1:40000"
    )
    assert plain_event_line("40325ec2", 2.02, "call-end", "") == "2.020000 40325ec2 - call-end -"


def plain_env() -> Environment:
    return Environment(
        stdout=io.StringIO(), stderr=io.StringIO(), stdout_isatty=False, stderr_isatty=False
    )


def sample_end(t: float = 2.0, **fields: Any) -> CallEnd:
    return CallEnd(
        t=t,
        ended="caller-close",
        detail="",
        directions={">": {"messages": 2, "bytes": 363}, "<": {"messages": 1, "bytes": 4}},
        summary="> 2 messages, < 1 message",
        fields=fields,
    )


def test_call_end_text_and_endings() -> None:
    end = sample_end()
    assert (end.name, end.text) == ("call-end", "caller-close; > 2 messages, < 1 message")
    with_detail = CallEnd(2.0, "app-hangup", "sent hangup", {}, "> 1 message")
    assert with_detail.text == "app-hangup (sent hangup); > 1 message"
    with pytest.raises(ValueError, match="unknown ending 'peer-closed'"):
        CallEnd(2.0, "peer-closed", "", {}, "")


def test_plain_output_through_make_output() -> None:
    env = plain_env()
    output = make_output(env)
    assert [type(s) for s in output.sinks] == [PlainSink, StderrEventSink]
    assert output.sinks[0].batch  # stdout is not a terminal: lines go out in batches
    call = CallInfo(conn=1, started_ts=0.0)
    output.emit(call, CallStart(0.0, "peer=127.0.0.1:40000", {"peer": "127.0.0.1:40000"}))
    output.message(call, 0.0004, ">", Message.for_uuid(UUID))
    call.uuid = UUID
    output.message(call, 0.020113, ">", Message.audio(bytes(320)))
    output.message(call, 1.3002041, "<", Message.error(2))
    output.warning(call, 1.5, "odd audio length 3")
    output.diagnosis(call, 1.6, "slow-audio", "audio arrives at 0.5x real time", ratio=0.5)
    output.call_end(call, sample_end())
    output.close()
    assert env.stdout.getvalue().splitlines() == [
        "0.000000 #1 - call-start - peer=127.0.0.1:40000",
        f"0.000400 #1 > uuid 16 uuid={UUID}",
        "0.020113 40325ec2 > audio 320 rate=8000 level=silent",
        "1.300204 40325ec2 < error 1 code=0x02 frame-forwarding-error",
        "1.500000 40325ec2 - warning - odd audio length 3",
        "1.600000 40325ec2 - diagnosis - audio arrives at 0.5x real time",
        "2.000000 40325ec2 - call-end - caller-close; > 2 messages, < 1 message",
    ]
    # Warnings and diagnoses also go to stderr, in human form.
    assert env.stderr.getvalue() == (
        "warning: call 40325ec2: odd audio length 3\n"
        "diagnosis: call 40325ec2: audio arrives at 0.5x real time\n"
    )


def test_call_start_is_timed_from_the_call() -> None:
    env = plain_env()
    output = make_output(env)
    call = CallInfo(conn=4, started=time.monotonic() - 5.0, started_ts=0.0)
    output.call_start(call, "peer=127.0.0.1:40000", peer="127.0.0.1:40000")
    output.close()
    t, rest = env.stdout.getvalue().split(" ", 1)
    assert rest == "#4 - call-start - peer=127.0.0.1:40000\n"
    assert 5.0 <= float(t) < 6.0


def test_batched_lines_wait_for_a_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks_module, "FLUSH_INTERVAL", 1e9)  # no flush by time in this test
    env = plain_env()
    output = make_output(env)
    call = call_with_uuid()
    output.emit(call, CallStart(0.0, "peer=x"))
    output.message(call, 0.02, ">", Message.dtmf("1"))
    assert env.stdout.getvalue() == ""  # a call's start is no reason to flush
    output.flush()
    assert env.stdout.getvalue().splitlines() == [
        "0.000000 40325ec2 - call-start - peer=x",
        "0.020000 40325ec2 > dtmf 1 digit=1",
    ]
    output.message(call, 0.04, ">", Message.dtmf("2"))
    assert len(env.stdout.getvalue().splitlines()) == 2
    output.warning(call, 0.05, "w")  # every other event flushes, with what came before
    assert env.stdout.getvalue().splitlines()[2:] == [
        "0.040000 40325ec2 > dtmf 1 digit=2",
        "0.050000 40325ec2 - warning - w",
    ]
    output.message(call, 0.06, ">", Message.dtmf("3"))
    output.diagnosis(call, 0.07, "code", "d")
    assert env.stdout.getvalue().splitlines()[4:] == [
        "0.060000 40325ec2 > dtmf 1 digit=3",
        "0.070000 40325ec2 - diagnosis - d",
    ]
    output.message(call, 0.08, ">", Message.dtmf("4"))
    output.call_end(call, sample_end(0.09))
    assert env.stdout.getvalue().splitlines()[6:] == [
        "0.080000 40325ec2 > dtmf 1 digit=4",
        "0.090000 40325ec2 - call-end - caller-close; > 2 messages, < 1 message",
    ]
    output.message(call, 0.1, ">", Message.dtmf("5"))
    assert len(env.stdout.getvalue().splitlines()) == 8
    output.close()
    assert env.stdout.getvalue().splitlines()[8:] == ["0.100000 40325ec2 > dtmf 1 digit=5"]


def test_batched_lines_flush_every_100_ms() -> None:
    stream = io.StringIO()
    sink = PlainSink(stream, batch=True)
    output = Output([sink], io.StringIO())
    call = call_with_uuid()
    output.message(call, 0.0, ">", Message.dtmf("1"))
    assert output.tick() is not None  # a line waits: the loop is asked to come back
    assert stream.getvalue() == ""
    time.sleep(sinks_module.FLUSH_INTERVAL + 0.02)
    output.message(call, 0.1, ">", Message.dtmf("2"))  # 100 ms since the last write
    lines = ["0.000000 40325ec2 > dtmf 1 digit=1", "0.100000 40325ec2 > dtmf 1 digit=2"]
    assert stream.getvalue().splitlines() == lines
    output.message(call, 0.2, ">", Message.dtmf("3"))  # just written: this one waits
    output.tick()
    assert stream.getvalue().splitlines() == lines
    time.sleep(sinks_module.FLUSH_INTERVAL + 0.02)
    assert output.tick() is None  # the loop's turn: what waited 100 ms is written
    assert stream.getvalue().splitlines() == [*lines, "0.200000 40325ec2 > dtmf 1 digit=3"]
    assert sinks_module.FLUSH_INTERVAL == 0.1


def test_unbatched_lines_go_out_at_once() -> None:
    for sink_type, check in ((PlainSink, str.split), (JsonSink, json.loads)):
        stream = io.StringIO()
        output = Output([sink_type(stream)], io.StringIO())
        assert output.sinks[0].batch is False
        call = call_with_uuid()
        output.emit(call, CallStart(0.0, "peer=x"))
        assert len(stream.getvalue().splitlines()) == 1
        output.message(call, 0.02, ">", Message.dtmf("1"))
        lines = stream.getvalue().splitlines()
        assert len(lines) == 2 and check(lines[1])


def test_quiet_shows_events_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_level(pcm: bytes) -> float | None:
        raise AssertionError("no sink shows the level: it is not computed")

    monkeypatch.setattr(sinks_module, "levels_dbfs", no_level)
    env = plain_env()
    output = make_output(env, quiet=True)
    assert not output.shows_messages
    assert all(not s.needs_level for s in output.sinks)
    call = call_with_uuid()
    output.message(call, 0.02, ">", Message.audio(sine(1000)))
    output.call_end(call, CallEnd(1.0, "app-hangup", "", {}, "> 1 message"))
    output.close()
    assert env.stdout.getvalue() == "1.000000 40325ec2 - call-end - app-hangup; > 1 message\n"


def test_the_level_is_computed_once_for_all_sinks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    computed: list[bytes] = []

    def counting_level(pcms: list[bytes]) -> list[float | None]:
        computed.extend(p for p in pcms if p)
        return [level_dbfs(p) if p else None for p in pcms]

    monkeypatch.setattr(sinks_module, "levels_dbfs", counting_level)
    env = plain_env()
    path = tmp_path / "call.trace"
    output = make_output(env, trace_path=str(path))
    call = call_with_uuid()
    pcm = sine(1000)
    output.message(call, 0.02, ">", Message.audio(pcm))
    output.message(call, 0.03, ">", Message.dtmf("1"))  # no level for other kinds
    output.message(call, 0.04, "<", Message.audio(pcm, 16000))
    output.close()
    assert computed == [pcm, pcm]
    assert [line.split(" ", 3)[3] for line in env.stdout.getvalue().splitlines()] == [
        "audio 320 rate=8000 level=-33.3dBFS",
        "dtmf 1 digit=1",
        "audio 320 rate=16000 level=-33.3dBFS",
    ]
    with open(path, "rb") as stream:
        traced = [json.loads(line) for line in stream][1:]
    assert [r.get("level_dbfs", "none") for r in traced] == [-33.3, "none", -33.3]
    # A quiet display with a trace: the trace still needs the level.
    computed.clear()
    output = make_output(plain_env(), trace_path=str(tmp_path / "quiet.trace"), quiet=True)
    output.message(call, 0.02, ">", Message.audio(pcm))
    output.close()
    assert computed == [pcm]


def test_terminal_gets_the_human_sink() -> None:
    env = Environment(stdout=io.StringIO(), stderr=io.StringIO(), stdout_isatty=True)
    output = make_output(env)
    assert [type(s).__name__ for s in output.sinks] == ["HumanSink"]
    output.close()
    # --json wins over a terminal.
    output = make_output(env, json_lines=True)
    assert [type(s) for s in output.sinks] == [JsonSink, StderrEventSink]
    assert output.sinks[0].batch is False  # a terminal sees each line at once


# JSON lines --------------------------------------------------------------------------


def test_json_fields() -> None:
    env = plain_env()
    output = make_output(env, json_lines=True)
    assert output.sinks[0].batch  # stdout is not a terminal
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
    end = CallEnd(
        t=2.0,
        ended="app-hangup",
        detail="sent hangup",
        directions={">": {"messages": 4, "bytes": 985}, "<": {"messages": 5, "bytes": 25}},
        summary="> 4 messages, < 5 messages",
        violations=("unassigned kind 0x02",),
        diagnoses=("slow-audio",),
        recordings=("in.wav",),
        partial=True,
        fields={"peer": "127.0.0.1:40000"},
    )
    output.call_end(call, end)
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
        "text": "app-hangup (sent hangup); > 4 messages, < 5 messages",
        "ended": "app-hangup",
        "detail": "sent hangup",
        "duration": 2.0,
        ">": {"messages": 4, "bytes": 985},
        "<": {"messages": 5, "bytes": 25},
        "violations": ["unassigned kind 0x02"],
        "diagnoses": ["slow-audio"],
        "recordings": ["in.wav"],
        "partial": True,
        "peer": "127.0.0.1:40000",
    }
    assert "kind" not in records[9]
    # The records are those of protocol/events.py, the one JSON contract.
    assert records[9] == event_record(call, end)
    assert records[1] == message_record(
        call, 0.020113, ">", Message.audio(pcm, 8000), level_dbfs(pcm)
    )


def test_json_events() -> None:
    env = plain_env()
    output = make_output(env, json_lines=True)
    call = call_with_uuid()
    output.call_start(call, "peer=127.0.0.1:40000", peer="127.0.0.1:40000")
    output.warning(call, 1.5, "odd audio length 3", length=3)
    output.diagnosis(call, 1.6, "slow-audio", "audio arrives at 0.5x real time", ratio=0.5)
    # An event's own fields never hide the common ones.
    hiding = {"t": 99, "conn": 0, "call": "x", "dir": ">", "event": "call-end", "text": "no"}
    output.emit(call, CallWarning(1.7, "the real text", {**hiding, "extra": 1}))
    output.emit(call, CallDiagnosis(1.8, "code-x", "diagnosed", dict(hiding)))
    output.call_end(call, CallEnd(1234.5678901, "caller-reset", "", {">": {"messages": 1}}, "s"))
    output.close()
    records = [json.loads(line) for line in env.stdout.getvalue().splitlines()]
    start = records[0]
    assert 0.0 <= start.pop("t") < 5.0  # call_start: the time since the call started
    assert start == {
        "conn": 3,
        "call": UUID,
        "dir": "-",
        "event": "call-start",
        "text": "peer=127.0.0.1:40000",
        "peer": "127.0.0.1:40000",
    }
    base = {"conn": 3, "call": UUID, "dir": "-"}
    assert records[1:5] == [
        {**base, "t": 1.5, "event": "warning", "text": "odd audio length 3", "length": 3},
        {
            **base,
            "t": 1.6,
            "event": "diagnosis",
            "text": "audio arrives at 0.5x real time",
            "code": "slow-audio",
            "ratio": 0.5,
        },
        {**base, "t": 1.7, "event": "warning", "text": "the real text", "extra": 1},
        {**base, "t": 1.8, "event": "diagnosis", "text": "diagnosed", "code": "code-x"},
    ]
    assert records[5] == {
        **base,
        "t": 1234.56789,
        "event": "call-end",
        "text": "caller-reset; s",
        "ended": "caller-reset",
        "detail": "",
        "duration": 1234.56789,
        ">": {"messages": 1},
        "<": {},
        "violations": [],
        "diagnoses": [],
        "recordings": [],
        "partial": False,
    }
    assert len(records) == 6
    # Warnings and diagnoses also go to stderr beside the JSON lines.
    assert env.stderr.getvalue() == (
        "warning: call 40325ec2: odd audio length 3\n"
        "diagnosis: call 40325ec2: audio arrives at 0.5x real time\n"
        "warning: call 40325ec2: the real text\n"
        "diagnosis: call 40325ec2: diagnosed\n"
    )


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
    output.close()  # stdout is not a terminal: the last batch goes out on close
    lines = env.stdout.getvalue().splitlines()
    assert len(lines) == 600
    assert all(line.endswith(" audio 320 rate=8000 level=-33.3dBFS") for line in lines)
    for direction in "<>":
        mine = [line for line in lines if line.split(" ")[2] == direction]
        assert [line.split(" ")[0] for line in mine] == [f"{n * 0.02:.6f}" for n in range(300)]


# Trace files -------------------------------------------------------------------------


SAMPLE_START = CallStart(0.0, "peer=127.0.0.1:40000", {"peer": "127.0.0.1:40000"})
SAMPLE_END = CallEnd(
    t=0.2,
    ended="app-hangup",
    detail="",
    directions={">": {"messages": 7, "bytes": 1707}, "<": {"messages": 8, "bytes": 1683}},
    summary="> 7 messages, < 8 messages",
    fields={"peer": "127.0.0.1:40000"},
)


def write_sample_trace(path: Path) -> list[tuple[float, str, Message]]:
    """A call written through make_output(trace_path=...): what went in."""
    env = plain_env()
    output = make_output(env, trace_path=str(path), command="test")
    assert [type(s) for s in output.sinks] == [PlainSink, StderrEventSink, TraceSink]
    call = CallInfo(conn=2, started_ts=1_764_000_000.0)
    sent: list[tuple[float, str, Message]] = [(0.0004, ">", Message.for_uuid(UUID))]
    output.emit(call, SAMPLE_START)
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
    output.call_end(call, SAMPLE_END)
    output.close()
    assert not output.trace_failed
    return sent


def test_trace_file_written_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "call.trace"
    sent = write_sample_trace(path)
    lines = path.read_bytes().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == FORMAT == "audiosocket-trace"
    assert header["version"] == VERSION == 2
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
        (
            0.2,
            "call-end",
            "app-hangup; > 7 messages, < 8 messages",
            {
                "ended": "app-hangup",
                "detail": "",
                "duration": 0.2,
                ">": {"messages": 7, "bytes": 1707},
                "<": {"messages": 8, "bytes": 1683},
                "violations": [],
                "diagnoses": [],
                "recordings": [],
                "partial": False,
                "peer": "127.0.0.1:40000",
            },
        ),
    ]
    assert events[0].dir == "-" and events[0].ts == 1_764_000_000.0
    assert events[1].ts == 1_764_000_000.2
    # The events come back typed, as they were written.
    assert [event_from_record(e) for e in events] == [SAMPLE_START, SAMPLE_END]
    # read_trace_lines reads the same lines.
    with open(path, "rb") as stream:
        again = list(read_trace_lines(iter(stream), str(path)))
    assert again == records


def test_trace_writer_buffers_until_flush_or_event(tmp_path: Path) -> None:
    path = tmp_path / "w.trace"
    writer = TraceWriter(str(path), command="cmd", created=1_700_000_000.5)
    header = json.loads(path.read_bytes())  # the header is written at once
    assert {k: header[k] for k in ("format", "version", "command", "created")} == {
        "format": FORMAT,
        "version": 2,
        "command": "cmd",
        "created": 1_700_000_000.5,
    }
    call = call_with_uuid()
    writer.message(call, 0.02, ">", Message.audio(sine(1000)), -33.3)
    assert len(path.read_bytes().splitlines()) == 1  # buffered
    writer.flush()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["level_dbfs"] == -33.3  # the level passed in
    writer.message(call, 0.04, "<", Message.dtmf("1"), None)
    assert len(path.read_bytes().splitlines()) == 2
    writer.event(call, CallWarning(0.05, "w"))  # an event flushes
    assert [json.loads(line).get("event") for line in path.read_bytes().splitlines()[2:]] == [
        None,
        "warning",
    ]
    writer.message(call, 0.06, "<", Message.hangup(), None)
    writer.close()
    records = list(read_records(io.BytesIO(path.read_bytes()), "w.trace"))
    assert [(r.t, r.dir, r.message, r.event) for r in records] == [
        (0.02, ">", Message.audio(sine(1000)), None),
        (0.04, "<", Message.dtmf("1"), None),
        (0.05, "-", None, "warning"),
        (0.06, "<", Message.hangup(), None),
    ]


def test_output_flush_reaches_the_trace(tmp_path: Path) -> None:
    path = tmp_path / "f.trace"
    output = make_output(plain_env(), trace_path=str(path))
    call = call_with_uuid()
    output.message(call, 0.02, ">", Message.dtmf("1"))
    assert len(path.read_bytes().splitlines()) == 1
    output.flush()
    assert len(path.read_bytes().splitlines()) == 2
    output.close()


class _FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_trace_write_error_warns_once_and_stops(tmp_path: Path) -> None:
    env = plain_env()
    path = tmp_path / "full.trace"
    output = make_output(env, trace_path=str(path))
    trace = output.sinks[2]
    assert isinstance(trace, TraceSink)
    trace.writer.stream.close()
    trace.writer.stream = _FullDisk()
    call = call_with_uuid()
    output.message(call, 0.02, ">", Message.dtmf("1"))  # does not raise
    output.message(call, 0.04, ">", Message.dtmf("2"))
    output.flush()
    output.call_end(call, CallEnd(0.1, "app-hangup", "", {}, "s"))
    output.close()
    assert output.trace_failed
    assert env.stderr.getvalue() == (
        f"audiosocket: warning: {path}: cannot write the trace: "
        f"{os.strerror(errno.ENOSPC)}; it stops here, whole up to the last message written\n"
    )
    # The display goes on regardless.
    assert env.stdout.getvalue().splitlines() == [
        "0.020000 40325ec2 > dtmf 1 digit=1",
        "0.040000 40325ec2 > dtmf 1 digit=2",
        "0.100000 40325ec2 - call-end - app-hangup; s",
    ]


def test_version_1_trace_is_upgraded_when_read() -> None:
    header = {"format": FORMAT, "version": 1, "tool": "audiosocket-cli 0.1.0", "command": "x"}
    base = {"conn": 1, "call": UUID, "dir": "-", "event": "call-end"}
    ends = [
        {**base, "t": 1.0, "text": "ended=our-hangup", "ended": "our-hangup"},
        {**base, "t": 2.0, "text": "t", "how": "peer-closed", "inbound": {"messages": 3}},
        {**base, "t": 3.0, "text": "t", "reason": "client-reset", "outbound": {"messages": 4}},
        {**base, "t": 4.0, "text": "t", "ended": "application-hangup", "sent": {"m": 1}},
        {**base, "t": 5.0, "text": "t", "ended": "weird", "received": {"m": 2}},
    ]
    data = b"".join(json.dumps(obj).encode() + b"\n" for obj in [header, *ends])
    records = list(read_records(io.BytesIO(data), "old.trace"))
    assert [r.fields.get("ended") for r in records] == [
        "app-hangup",
        "caller-close",
        "caller-reset",
        "app-hangup",
        "weird",
    ]
    assert records[1].fields[">"] == {"messages": 3} and "<" not in records[1].fields
    assert records[2].fields["<"] == {"messages": 4} and ">" not in records[2].fields
    assert records[3].fields[">"] == {"m": 1}
    assert records[4].fields["<"] == {"m": 2}
    events = [event_from_record(r) for r in records]
    assert all(isinstance(e, CallEnd) for e in events)
    assert [e.ended for e in events] == [
        "app-hangup",
        "caller-close",
        "caller-reset",
        "app-hangup",
        "unknown",  # not a word of ENDINGS: how the call ended is not known
    ]
    assert events[1].directions == {">": {"messages": 3}, "<": {}}
    assert events[0].text == "app-hangup; ended=our-hangup"
    # A version 2 file keeps its words as written.
    v2 = {**header, "version": 2}
    data = b"".join(json.dumps(obj).encode() + b"\n" for obj in [v2, ends[1]])
    (record,) = read_records(io.BytesIO(data), "new.trace")
    assert "ended" not in record.fields and ">" not in record.fields


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
    assert (warning.event, warning.dir, warning.fields) == (
        "warning",
        "-",
        {"missing": 223, "violation": True},
    )
    assert warning.text == (
        "cut.raw: stream ended inside a message of kind 0x10: 100 bytes received, 223 missing"
    )


# An echo (received and sent straight back) -----------------------------------------


def echo_then_messages(output: Output, call: CallInfo, echo: bool) -> None:
    """The same three messages, the middle one echoed: by echoed(), or by two message()."""
    output.message(call, 0.01, ">", Message.dtmf("1"))
    for t, pcm in ((0.02, sine(1000)), (0.04, sine(3000)), (0.06, bytes(320))):
        message = Message.audio(pcm)
        if echo:
            output.echoed(call, t, message)
        else:
            output.message(call, t, ">", message)
            output.message(call, t, "<", message)
    output.message(call, 0.07, "<", Message.audio(sine(50), 16000))


@pytest.mark.parametrize("json_lines", [False, True])
def test_an_echo_shows_as_two_messages(tmp_path: Path, json_lines: bool) -> None:
    """echoed() writes what message() twice would, in every sink (the trace too)."""
    got = {}
    for echo in (True, False):
        env = plain_env()
        path = tmp_path / f"{echo}.trace"
        output = make_output(env, json_lines=json_lines, trace_path=str(path))
        echo_then_messages(output, call_with_uuid(), echo)
        output.close()
        with open(path, "rb") as stream:
            traced = [r.message for r in read_records(stream, str(path)) if r.message]
        got[echo] = (env.stdout.getvalue(), traced)
    assert got[True] == got[False]
    lines = got[True][0].splitlines()
    assert len(lines) == 8 and len(got[True][1]) == 8
    if not json_lines:
        assert lines[1:3] == [
            "0.020000 40325ec2 > audio 320 rate=8000 level=-33.3dBFS",
            "0.020000 40325ec2 < audio 320 rate=8000 level=-33.3dBFS",
        ]
        assert lines[5:7] == [
            "0.060000 40325ec2 > audio 320 rate=8000 level=silent",
            "0.060000 40325ec2 < audio 320 rate=8000 level=silent",
        ]


def test_an_echo_on_a_terminal_is_two_lines() -> None:
    env = Environment(stdout=io.StringIO(), stderr=io.StringIO(), stdout_isatty=False)
    output = Output([PlainSink(env.stdout, batch=False)], env.stderr)
    output.echoed(call_with_uuid(), 0.02, Message.audio(sine(1000)))
    assert [line.split(" ")[2] for line in env.stdout.getvalue().splitlines()] == [">", "<"]


def test_a_line_gathered_before_the_uuid_keeps_the_call_number() -> None:
    """A message shown before the call's UUID was known says #N, even when the UUID
    comes before the gathered lines are written."""
    stream = io.StringIO()
    output = Output([PlainSink(stream, batch=True)], io.StringIO())
    call = CallInfo(conn=7)
    output.echoed(call, 0.01, Message.audio(sine(1000)))
    output.message(call, 0.02, ">", Message.audio(sine(1000)))
    call.uuid = UUID
    output.message(call, 0.03, ">", Message.audio(sine(1000)))
    output.close()
    assert [line.split(" ")[1] for line in stream.getvalue().splitlines()] == [
        "#7",
        "#7",
        "#7",
        "40325ec2",
    ]


def test_tick_says_when_to_come_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """tick(): how long until it has work (a finite number), or None when nothing
    waits, also on the turns where it returns at once."""
    now = [1000.0]
    monkeypatch.setattr(sinks_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    stream = io.StringIO()
    output = Output([PlainSink(stream, batch=True)], io.StringIO())
    assert output.tick() is None
    assert output.tick() is None  # the quick answer: still nothing
    output.echoed(call_with_uuid(), 0.02, Message.audio(sine(1000)))
    assert output.tick() == pytest.approx(sinks_module.FLUSH_INTERVAL / 2)  # gathered: drain soon
    now[0] += 0.01
    assert output.tick() == pytest.approx(sinks_module.FLUSH_INTERVAL / 2 - 0.01)  # at once
    now[0] += 0.05
    assert output.tick() == pytest.approx(sinks_module.FLUSH_INTERVAL - 0.06)  # handed to the sink
    assert stream.getvalue() == ""  # ... which writes it once it has waited 100 ms
    now[0] += sinks_module.FLUSH_INTERVAL
    assert output.tick() is None  # written: nothing waits
    assert stream.getvalue().count("\n") == 2


def test_batched_lines_are_the_lines_one_at_a_time() -> None:
    """A sink's batch path (the hot one) writes what line() writes for each message,
    and JSON what json.dumps of its record writes."""
    messages = [
        Message.audio(sine(1000)),
        Message.audio(bytes(640), 16000),
        Message.audio(sine(20000, samples=480), 48000),
        Message(0x10, b"\x01\x02\x03"),  # odd length
        Message(0x10, b""),
        Message.dtmf("7"),
        Message.hangup(),
        Message(0x42, b"\x00"),
    ]
    calls = [call_with_uuid(), CallInfo(conn=9)]
    batch = [(c, 0.02 * i, "<>"[i % 2], m) for i, m in enumerate(messages) for c in calls]
    levels = [level_dbfs(m.payload) if m.rate else None for _, _, _, m in batch]
    levels[0] = None  # a level the caller says is silence is shown as such
    for sink_type in (PlainSink, JsonSink):
        stream = io.StringIO()
        sink = sink_type(stream, batch=True)
        sink.messages(batch, levels)
        sink.flush()
        one_by_one = [sink.line(*item, level) for item, level in zip(batch, levels, strict=True)]
        assert stream.getvalue() == "".join(one_by_one)
        if sink_type is JsonSink:
            assert one_by_one == [
                json.dumps(message_record(*item, level)) + "\n"
                for item, level in zip(batch, levels, strict=True)
            ]
