"""Showing messages and events: human (rich), plain lines, JSON lines.

Every command reports through an :class:`Output`, which fans each message or
event out to its sinks: one display sink chosen by the terminal and flags,
and optionally a trace file (see tracefile.py).

Plain lines are `TIME CALL DIR KIND LEN DETAIL...`; events have DIR `-`,
their name as KIND, and LEN `-`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from audiosocket_cli.analysis.levels import format_level, level_dbfs
from audiosocket_cli.protocol.events import CallInfo
from audiosocket_cli.protocol.wire import Message, describe_error_code

EVENT_NAMES = ("call-start", "call-end", "warning", "diagnosis")


@dataclass
class Environment:
    """The streams a command writes to, and whether they are terminals."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    stdout_isatty: bool | None = None
    stderr_isatty: bool | None = None

    def __post_init__(self) -> None:
        if self.stdout_isatty is None:
            self.stdout_isatty = _isatty(self.stdout)
        if self.stderr_isatty is None:
            self.stderr_isatty = _isatty(self.stderr)

    @property
    def color(self) -> bool:
        return not os.environ.get("NO_COLOR")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def message_fields(message: Message) -> dict[str, Any]:
    """What JSON lines carry about a message beyond t/conn/call/dir."""
    fields: dict[str, Any] = {
        "kind": message.name,
        "type": message.kind,
        "len": len(message.payload),
    }
    name = fields["kind"]
    if name == "audio":
        fields["rate"] = message.rate
        fields["level_dbfs"] = level_dbfs(message.payload)
    elif name == "uuid":
        uuid = message.uuid
        fields["uuid"] = str(uuid) if uuid else None
    elif name == "dtmf":
        fields["digit"] = message.digit
    elif name == "error":
        fields["code"] = message.code
    problem = message.problem
    if problem:
        fields["problem"] = problem
    return fields


def message_detail(message: Message) -> str:
    """The DETAIL part of a plain line."""
    name = message.name
    if name == "audio":
        detail = f"rate={message.rate} level={format_level(level_dbfs(message.payload))}"
    elif name == "uuid":
        uuid = message.uuid
        detail = f"uuid={uuid}" if uuid else f"data={message.payload[:32].hex()}"
    elif name == "dtmf":
        digit = message.digit
        detail = f"digit={digit}" if digit and digit.isprintable() else ""
    elif name == "error":
        code = message.code
        detail = "code=none" if code is None else f"code=0x{code:02x} {describe_error_code(code)}"
    elif name == "unknown":
        detail = f"type=0x{message.kind:02x}"
        if message.payload:
            detail += f" data={message.payload[:16].hex()}"
    else:
        detail = ""
    problem = message.problem
    if problem and name != "unknown":
        detail = f"{detail} problem={json.dumps(problem)}".lstrip()
    return detail


def plain_message_line(call_id: str, t: float, direction: str, message: Message) -> str:
    line = f"{t:.6f} {call_id} {direction} {message.name} {len(message.payload)}"
    detail = message_detail(message)
    return f"{line} {detail}" if detail else line


def plain_event_line(call_id: str, t: float, name: str, text: str) -> str:
    line = f"{t:.6f} {call_id} - {name} -"
    return f"{line} {text}" if text else line


class Sink(Protocol):
    def message(self, call: CallInfo, t: float, direction: str, message: Message) -> None: ...

    def event(
        self, call: CallInfo, t: float, name: str, text: str, fields: dict[str, Any]
    ) -> None: ...

    def close(self) -> None: ...


class PlainSink:
    """One line per message, audio included; nothing folded, no colour."""

    def __init__(self, stream: TextIO, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet

    def message(self, call: CallInfo, t: float, direction: str, message: Message) -> None:
        if not self.quiet:
            self.stream.write(plain_message_line(call.short_id, t, direction, message) + "\n")
            self.stream.flush()

    def event(self, call: CallInfo, t: float, name: str, text: str, fields: dict[str, Any]) -> None:
        self.stream.write(plain_event_line(call.short_id, t, name, text) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def json_message_record(call: CallInfo, t: float, direction: str, message: Message) -> dict:
    return {
        "t": round(t, 6),
        "conn": call.conn,
        "call": call.call_id,
        "dir": direction,
        **message_fields(message),
    }


def json_event_record(
    call: CallInfo, t: float, name: str, text: str, fields: dict[str, Any]
) -> dict:
    record = {
        "t": round(t, 6),
        "conn": call.conn,
        "call": call.call_id,
        "dir": "-",
        "event": name,
        "text": text,
    }
    record.update(fields)
    return record


class JsonSink:
    """JSON lines, one object per message or event."""

    def __init__(self, stream: TextIO, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet

    def message(self, call: CallInfo, t: float, direction: str, message: Message) -> None:
        if not self.quiet:
            record = json_message_record(call, t, direction, message)
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()

    def event(self, call: CallInfo, t: float, name: str, text: str, fields: dict[str, Any]) -> None:
        record = json_event_record(call, t, name, text, fields)
        self.stream.write(json.dumps(record, default=str) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class StderrEventSink:
    """Warnings and diagnoses in human form on stderr, beside plain/JSON stdout."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def message(self, call: CallInfo, t: float, direction: str, message: Message) -> None:
        pass

    def event(self, call: CallInfo, t: float, name: str, text: str, fields: dict[str, Any]) -> None:
        if name in ("warning", "diagnosis"):
            self.stream.write(f"{name}: call {call.short_id}: {text}\n")
            self.stream.flush()

    def close(self) -> None:
        pass


class Output:
    """Fans messages and events out to sinks; safe to call from two threads."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks
        self._lock = threading.Lock()

    def message(self, call: CallInfo, t: float, direction: str, message: Message) -> None:
        with self._lock:
            for sink in self.sinks:
                sink.message(call, t, direction, message)

    def event(self, call: CallInfo, t: float, name: str, text: str = "", **fields: Any) -> None:
        with self._lock:
            for sink in self.sinks:
                sink.event(call, t, name, text, fields)

    def close(self) -> None:
        with self._lock:
            for sink in self.sinks:
                try:
                    sink.close()
                except (OSError, ValueError):
                    pass


def make_output(
    env: Environment,
    *,
    json_lines: bool = False,
    trace_path: str | None = None,
    verbose: int = 0,
    quiet: bool = False,
    command: str = "",
) -> Output:
    """The sinks for a command's flags and terminal."""
    sinks: list[Sink] = []
    if json_lines:
        sinks.append(JsonSink(env.stdout, quiet=quiet))
        sinks.append(StderrEventSink(env.stderr))
    elif env.stdout_isatty:
        from audiosocket_cli.output.human import (
            HumanSink,
        )  # rich costs start-up time; only for terminals

        sinks.append(HumanSink(env, verbose=verbose, quiet=quiet))
    else:
        sinks.append(PlainSink(env.stdout, quiet=quiet))
        sinks.append(StderrEventSink(env.stderr))
    if trace_path:
        from audiosocket_cli.files.trace import TraceWriter

        sinks.append(TraceWriter(trace_path, command=command))
    return Output(sinks)
