"""Showing messages and events: human (rich), plain lines, JSON lines, trace files.

Every command reports through one :class:`Output`, which fans each message
or event out to its sinks: one display sink chosen by the terminal and the
flags, and optionally a trace file. A message's level is computed here, once,
and only when a sink shows it.

Plain lines are `TIME CALL DIR KIND LEN DETAIL...`; events have DIR `-`,
their name as KIND, and LEN `-` (docs/output.md).
"""

from __future__ import annotations

import binascii
import copy
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from audiosocket_cli.analysis.levels import format_level, levels_dbfs
from audiosocket_cli.files.trace import TraceWriter
from audiosocket_cli.protocol.events import (
    CallDiagnosis,
    CallEnd,
    CallInfo,
    CallStart,
    CallWarning,
    Event,
    event_record,
    message_record,
)
from audiosocket_cli.protocol.wire import AUDIO_RATES, Message, describe_error_code

FLUSH_INTERVAL = 0.1  # s: batched lines reach a pipe at least this often

# A message gathered for the sinks: (call, t, direction, message). The call is
# as it was then (a copy while it has no UUID yet: a later one must not rename it).
Gathered = tuple[CallInfo, float, str, Message]
# A Gathered direction: received and sent straight back at once (Output.echoed), a
# line each way.
ECHOED = "><"
ECHO_DIRECTIONS = (">", "<")


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


def message_detail(message: Message, level: float | None) -> str:
    """The DETAIL part of a plain line."""
    name = message.name
    if name == "audio":
        detail = f"rate={message.rate} level={format_level(level)}"
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


def plain_message_line(
    call_id: str, t: float, direction: str, message: Message, level: float | None
) -> str:
    line = f"{t:.6f} {call_id} {direction} {message.name} {len(message.payload)}"
    detail = message_detail(message, level)
    return f"{line} {detail}" if detail else line


def plain_event_line(call_id: str, t: float, name: str, text: str) -> str:
    line = f"{t:.6f} {call_id} - {name} -"
    return f"{line} {text}" if text else line


class Sink(Protocol):
    # Whether message() does anything, and whether it needs the level.
    shows_messages: bool
    needs_level: bool

    def message(
        self, call: CallInfo, t: float, direction: str, message: Message, level: float | None
    ) -> None: ...

    def event(self, call: CallInfo, event: Event) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class _LineSink:
    """Lines to a stream: at once on a terminal, in batches to a file or a pipe.
    Each kind of sink says how a message is one `line`."""

    def __init__(self, stream: TextIO, quiet: bool = False, batch: bool = False) -> None:
        self.stream = stream
        self.shows_messages = not quiet
        self.needs_level = not quiet
        self.batch = batch
        self._lines: list[str] = []
        self._flushed = time.monotonic()

    @staticmethod
    def line(
        call: CallInfo, t: float, direction: str, message: Message, level: float | None
    ) -> str:
        raise NotImplementedError

    def message(
        self, call: CallInfo, t: float, direction: str, message: Message, level: float | None
    ) -> None:
        if self.shows_messages:
            self._write(self.line(call, t, direction, message, level))

    def _write(self, line: str) -> None:
        if not self.batch:
            self.stream.write(line)
            self.stream.flush()
            return
        self._lines.append(line)
        now = time.monotonic()
        if now - self._flushed >= FLUSH_INTERVAL or len(self._lines) >= 4096:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self.stream.write("".join(lines))
        self.stream.flush()
        self._flushed = time.monotonic() if now is None else now

    def messages(self, batch: list[Gathered], levels: list[float | None]) -> None:
        """A gathered batch and its levels: its lines made in one go, written with
        the next flush."""
        if self.shows_messages:
            line = self.line
            self._lines.extend(
                [line(c, t, d, m, lv) for (c, t, d, m), lv in zip(batch, levels, strict=True)]
            )
            self._batch_done()

    def lines(self, text: str) -> None:
        """Whole lines made in another process (`listen --workers`), in order with this
        sink's own and written as they are."""
        self._lines.append(text)
        self._batch_done()

    def _batch_done(self) -> None:
        now = time.monotonic()
        if not self.batch or now - self._flushed >= FLUSH_INTERVAL:
            self.flush(now)

    def flush_due(self, now: float) -> float | None:
        """Write what waits if it has waited FLUSH_INTERVAL (one write for many lines);
        how long until the next is due, or None when nothing waits."""
        if not self._lines:
            return None
        waited = now - self._flushed
        if waited >= FLUSH_INTERVAL:
            self.flush(now)
            return None
        return FLUSH_INTERVAL - waited

    def close(self) -> None:
        self.flush()


class PlainSink(_LineSink):
    """One line per message, audio included; nothing folded, no colour."""

    takes_echoes = True  # messages() makes an ECHOED entry's two lines itself

    def __init__(self, stream: TextIO, quiet: bool = False, batch: bool = False) -> None:
        super().__init__(stream, quiet, batch)
        self._shown: dict[float | None, str] = {}  # format_level's, by level

    @staticmethod
    def line(
        call: CallInfo, t: float, direction: str, message: Message, level: float | None
    ) -> str:
        return plain_message_line(call.short_id, t, direction, message, level) + "\n"

    def messages(self, batch: list[Gathered], levels: list[float | None]) -> None:
        """A gathered batch, its lines made in one loop (the per-message hot path)."""
        if not self.shows_messages:
            return
        append, rates, general = self._lines.append, AUDIO_RATES, self.line
        shown_by_level = self._shown
        if len(shown_by_level) > 4096:
            shown_by_level.clear()  # levels are rounded to 0.1 dB: this is never reached
        for (call, t, d, message), level in zip(batch, levels, strict=True):
            kind, payload = message
            rate, n = rates.get(kind), len(payload)
            if rate is None or not n or n & 1:
                for one in ECHO_DIRECTIONS if d == ECHOED else (d,):
                    append(general(call, t, one, message, level))
                continue
            # Well-formed audio, nearly every line: the same line as plain_message_line
            # makes, without its general path.
            shown = shown_by_level.get(level)
            if shown is None:
                shown = shown_by_level[level] = format_level(level)
            if d == ECHOED:
                head = f"{t:.6f} {call.short_id}"
                tail = f"audio {n} rate={rate} level={shown}\n"
                append(f"{head} > {tail}{head} < {tail}")
            else:
                append(f"{t:.6f} {call.short_id} {d} audio {n} rate={rate} level={shown}\n")
        self._batch_done()

    def event(self, call: CallInfo, event: Event) -> None:
        self._write(plain_event_line(call.short_id, event.t, event.name, event.text) + "\n")
        if not isinstance(event, CallStart):
            self.flush()  # a warning or a call's end is worth a flush of its own


class JsonSink(_LineSink):
    """JSON lines, one object per message or event."""

    @staticmethod
    def line(
        call: CallInfo, t: float, direction: str, message: Message, level: float | None
    ) -> str:
        kind, payload = message
        rate = AUDIO_RATES.get(kind)
        call_id = call.call_id
        if rate is not None and payload and not len(payload) & 1 and '"' not in call_id:
            # Well-formed audio: the same object json.dumps would write, without it.
            shown = "null" if level is None else repr(level)
            return (
                f'{{"t": {round(t, 6)!r}, "conn": {call.conn}, "call": "{call_id}", '
                f'"dir": "{direction}", "kind": "audio", "type": {kind}, "len": {len(payload)}, '
                f'"rate": {rate}, "level_dbfs": {shown}}}\n'
            )
        return json.dumps(message_record(call, t, direction, message, level)) + "\n"

    def messages(self, batch: list[Gathered], levels: list[float | None]) -> None:
        """A gathered batch, its lines made in one loop (the per-message hot path)."""
        if not self.shows_messages:
            return
        append, rates, general = self._lines.append, AUDIO_RATES, self.line
        for (call, t, d, message), level in zip(batch, levels, strict=True):
            kind, payload = message
            rate, n, call_id = rates.get(kind), len(payload), call.call_id
            if rate is None or not n or n & 1 or '"' in call_id:
                append(general(call, t, d, message, level))
                continue
            # The same line as line() makes, without its call.
            shown = "null" if level is None else repr(level)
            append(
                f'{{"t": {round(t, 6)!r}, "conn": {call.conn}, "call": "{call_id}", '
                f'"dir": "{d}", "kind": "audio", "type": {kind}, "len": {n}, '
                f'"rate": {rate}, "level_dbfs": {shown}}}\n'
            )
        self._batch_done()

    def event(self, call: CallInfo, event: Event) -> None:
        self._write(json.dumps(event_record(call, event), default=str) + "\n")
        if not isinstance(event, CallStart):
            self.flush()


class StderrEventSink:
    """Warnings and diagnoses in human form on stderr, beside plain/JSON stdout."""

    shows_messages = False
    needs_level = False

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def message(
        self, call: CallInfo, t: float, direction: str, message: Message, level: float | None
    ) -> None:
        pass

    def event(self, call: CallInfo, event: Event) -> None:
        if isinstance(event, (CallWarning, CallDiagnosis)):
            self.stream.write(f"{event.name}: call {call.short_id}: {event.text}\n")
            self.stream.flush()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TraceSink:
    """The trace file as a sink: a write error warns once and stops the trace, never the call."""

    shows_messages = True
    needs_level = True

    def __init__(self, writer: TraceWriter, on_error: Callable[[str], None]) -> None:
        self.writer = writer
        self.on_error = on_error
        self.failed = False
        self._flushed = time.monotonic()
        # An audio line's middle, the same for every frame of a call's direction.
        self._middles: dict[tuple[int, str | None, str, int, int], str] = {}

    def message(
        self, call: CallInfo, t: float, direction: str, message: Message, level: float | None
    ) -> None:
        if not self.failed:
            self._guard(self.writer.message, call, t, direction, message, level)

    def event(self, call: CallInfo, event: Event) -> None:
        if not self.failed:
            self._guard(self.writer.event, call, event)

    def messages(self, batch: list[Gathered], levels: list[float | None]) -> None:
        """A gathered batch as trace lines, written at once: an audio message's line from
        a template (the same text as TraceWriter.line's json.dumps), any other through the
        writer: a busy proxy cannot afford json.dumps per message."""
        if self.failed:
            return
        lines: list[str] = []
        append, rates, b64 = lines.append, AUDIO_RATES, binascii.b2a_base64
        general, middles = self.writer.line, self._middles
        for (call, t, d, message), level in zip(batch, levels, strict=True):
            kind, payload = message
            rate, n = rates.get(kind), len(payload)
            if rate is None or not n or n & 1:
                append(general(call, t, d, message, level))
                continue
            key = (call.conn, call.uuid, d, kind, n)
            middle = middles.get(key)
            if middle is None:
                call_id = call.call_id
                if '"' in call_id or "\\" in call_id:
                    append(general(call, t, d, message, level))
                    continue
                if len(middles) > 4096:
                    middles.clear()
                middle = middles[key] = (
                    f'"conn": {call.conn}, "call": "{call_id}", "dir": "{d}", "kind": "audio", '
                    f'"type": {kind}, "len": {n}, "rate": {rate}, "level_dbfs": '
                )
            shown = "null" if level is None else repr(level)
            append(
                f'{{"t": {round(t, 6)!r}, {middle}{shown}, '
                f'"ts": {round(call.started_ts + t, 6)!r}, '
                f'"data": "{b64(payload, newline=False).decode()}"}}\n'
            )
        self._guard(self._write, "".join(lines))

    def _guard(self, write: Callable[..., None], *args: Any) -> None:
        try:
            write(*args)
        except OSError as exc:
            self.failed = True
            self.on_error(
                f"{self.writer.path}: cannot write the trace: {exc.strerror or exc}; "
                "it stops here, whole up to the last message written"
            )

    def lines(self, text: str) -> None:
        """Whole trace lines made in another process (`listen --workers`)."""
        if not self.failed:
            self._guard(self._write, text)

    def _write(self, text: str) -> None:
        self.writer.stream.write(text)

    def flush(self) -> None:
        if not self.failed:
            self._guard(self.writer.flush)
        self._flushed = time.monotonic()

    def flush_due(self, now: float) -> float | None:
        """Written at least every FLUSH_INTERVAL, like the display."""
        waited = now - self._flushed
        if waited >= FLUSH_INTERVAL:
            self.flush()
            return None
        return FLUSH_INTERVAL - waited

    def close(self) -> None:
        try:
            self.writer.close()
        except OSError:
            pass


class Output:
    """Fans messages and events out to sinks; safe to call from two threads.

    Where a sink shows levels, messages are gathered (a loop turn's worth, or
    at most BATCH of them, or FLUSH_INTERVAL) and their levels computed in one
    numpy pass before they go to the sinks; an event first sends what is
    gathered, so the order of lines is the order of things.
    """

    BATCH = 512  # gathered messages that go to the sinks at once
    TICK_BATCH = 256  # ... or at the end of a loop turn

    def __init__(self, sinks: list[Any], stderr: TextIO | None = None) -> None:
        self.sinks = sinks
        self.stderr = stderr or sys.stderr
        self._lock = threading.Lock()
        self._message_sinks = [s for s in sinks if s.shows_messages]
        self.shows_messages = bool(self._message_sinks)
        self._levels = any(s.needs_level for s in self._message_sinks)
        # Gather only where every sink that shows levels writes in batches anyway (a
        # file, a pipe): a terminal sees each line at once.
        self._gather = self._levels and all(
            getattr(s, "batch", True) for s in self._message_sinks if s.needs_level
        )
        self._pending: list[Gathered] = []
        # Until when tick() has nothing to do: set by tick, undone (0) by whatever
        # gives it work (the first message gathered, lines handed to a sink).
        self._tick_at = 0.0
        self._drained = time.monotonic()
        # A server (listen, capture) goes on when stdout's reader leaves; see _stdout_gone.
        self.outlive_stdout = False

    @property
    def trace_failed(self) -> bool:
        return any(isinstance(s, TraceSink) and s.failed for s in self.sinks)

    def message(self, call: CallInfo, t: float, direction: str, message: Message) -> None:
        if not self._message_sinks:
            return
        if not self._gather:
            self._tick_at = 0.0
            level = None
            if self._levels and message[0] in AUDIO_RATES:
                level = levels_dbfs([message[1]])[0]
            with self._lock:
                for sink in self._message_sinks:
                    try:
                        sink.message(call, t, direction, message, level)
                    except BrokenPipeError:
                        self._stdout_gone(sink)
            return
        if call.uuid is None:
            call = copy.copy(call)  # its line says #N, even once the UUID is known
        pending = self._pending
        if not pending:
            self._tick_at = 0.0
        pending.append((call, t, direction, message))
        if len(pending) >= self.BATCH or time.monotonic() - self._drained >= FLUSH_INTERVAL:
            self._drain()

    def echoed(self, call: CallInfo, t: float, message: Message) -> None:
        """message() for `>` then `<`: one received and sent straight back, gathered
        as one entry (ECHOED) that stands for both."""
        if self._gather:
            self.message(call, t, ECHOED, message)
        else:
            self.message(call, t, ">", message)
            self.message(call, t, "<", message)

    def _drain(self) -> None:
        """The gathered messages, with their levels, to the sinks."""
        with self._lock:
            # Taken from the one list, never swapped for another: a message gathered by
            # the other thread meanwhile stays for the next drain instead of landing in
            # a list already written.
            gathered = self._pending
            pending = gathered[:]
            del gathered[: len(pending)]
            self._drained = time.monotonic()
            self._tick_at = 0.0
            if not pending:
                return
            rates = AUDIO_RATES
            levels = levels_dbfs([m[1] if m[0] in rates else b"" for _, _, _, m in pending])
            expanded: tuple[list[Gathered], list[float | None]] | None = None
            for sink in list(self._message_sinks):
                batch, batch_levels = pending, levels
                if not getattr(sink, "takes_echoes", False):
                    if expanded is None:
                        echoes = any(d == ECHOED for _, _, d, _ in pending)
                        expanded = _expand_echoes(pending, levels) if echoes else (pending, levels)
                    batch, batch_levels = expanded
                try:
                    many = getattr(sink, "messages", None)
                    if many is not None:
                        many(batch, batch_levels)
                    else:
                        for (call, t, d, m), level in zip(batch, batch_levels, strict=True):
                            sink.message(call, t, d, m, level)
                except BrokenPipeError:
                    self._stdout_gone(sink)

    def lines(self, made: list[tuple[str | None, str | None]]) -> None:
        """Message lines made in another process (`listen --workers`): for each message,
        its display line(s) and its trace line(s), each None where not shown."""
        if self._pending:
            self._drain()
        self._tick_at = 0.0
        with self._lock:
            for sink in list(self._message_sinks):
                add = getattr(sink, "lines", None)
                if add is None:
                    continue
                which = 1 if isinstance(sink, TraceSink) else 0
                text = "".join([pair[which] or "" for pair in made])
                if text:
                    try:
                        add(text)
                    except BrokenPipeError:
                        self._stdout_gone(sink)

    def emit(self, call: CallInfo, event: Event) -> None:
        if self._pending:
            self._drain()
        self._tick_at = 0.0
        with self._lock:
            for sink in list(self.sinks):
                try:
                    sink.event(call, event)
                except BrokenPipeError:
                    self._stdout_gone(sink)

    def call_start(self, call: CallInfo, text: str, **fields: Any) -> None:
        self.emit(call, CallStart(call.elapsed(), text, fields))

    def warning(self, call: CallInfo, t: float, text: str, **fields: Any) -> None:
        self.emit(call, CallWarning(t, text, fields))

    def diagnosis(self, call: CallInfo, t: float, code: str, text: str, **fields: Any) -> None:
        self.emit(call, CallDiagnosis(t, code, text, fields))

    def call_end(self, call: CallInfo, end: CallEnd) -> None:
        self.emit(call, end)

    def tick(self) -> float | None:
        """Cheap, at the end of each loop turn: gathered messages go to the sinks once
        there are enough of them or they have waited a little, and lines reach their
        stream at least every FLUSH_INTERVAL. Returns how soon to tick again (None:
        nothing waits)."""
        now = time.monotonic()
        pending = self._pending
        tick_at = self._tick_at
        if now < tick_at and len(pending) < self.TICK_BATCH:
            # Nothing has changed since the last tick said when to come back.
            return None if tick_at == math.inf else tick_at - now
        if pending and (
            len(pending) >= self.TICK_BATCH or now - self._drained >= FLUSH_INTERVAL / 2
        ):
            self._drain()
        again: float | None = FLUSH_INTERVAL / 2 if self._pending else None
        for sink in list(self._message_sinks):
            due = getattr(sink, "flush_due", None)
            if due is not None:
                try:
                    wait = due(now)
                except BrokenPipeError:
                    self._stdout_gone(sink)
                    continue
                if wait is not None and (again is None or wait < again):
                    again = wait
        self._tick_at = math.inf if again is None else now + again
        return again

    def _stdout_gone(self, sink: Any) -> None:
        """stdout's reader left (`listen | grep -m1 ...`). A server outlives it: the
        sink is dropped, said once on stderr, and the calls and recordings go on;
        anything else ends as a closed pipe ends it (quietly, status 0)."""
        if not self.outlive_stdout:
            raise BrokenPipeError
        for group in (self.sinks, self._message_sinks):
            while sink in group:
                group.remove(sink)
        self.shows_messages = bool(self._message_sinks)
        self._levels = any(s.needs_level for s in self._message_sinks)
        try:  # the interpreter's last flush of stdout must not fail either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        self.note("output stopped: stdout was closed (its reader left); calls and recordings go on")

    def flush(self) -> None:
        """Batched lines out now (an event, a quiet moment, the end)."""
        if self._pending:
            self._drain()
        with self._lock:
            for sink in self.sinks:
                try:
                    sink.flush()
                except (OSError, ValueError):
                    pass

    def close(self) -> None:
        try:
            self._drain()
        except (OSError, ValueError):
            pass
        with self._lock:
            for sink in self.sinks:
                try:
                    sink.close()
                except (OSError, ValueError):
                    pass

    def note(self, text: str) -> None:
        """A line for the user on stderr, outside any call."""
        noter(self.stderr)(text)


def _expand_echoes(
    batch: list[Gathered], levels: list[float | None]
) -> tuple[list[Gathered], list[float | None]]:
    """A batch with each ECHOED entry as the two it stands for, `>` then `<`."""
    out: list[Gathered] = []
    out_levels: list[float | None] = []
    for item, level in zip(batch, levels, strict=True):
        call, t, d, message = item
        if d == ECHOED:
            out += ((call, t, ">", message), (call, t, "<", message))
            out_levels += (level, level)
        else:
            out.append(item)
            out_levels.append(level)
    return out, out_levels


def noter(stream: TextIO) -> Callable[[str], None]:
    """A function that says one warning line on `stream`, never failing."""

    def note(text: str) -> None:
        try:
            stream.write(f"audiosocket: warning: {text}\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    return note
