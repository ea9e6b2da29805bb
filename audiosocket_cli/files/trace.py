"""Trace files: JSON lines that keep every message with its bytes and time.

The first line names the format and version. Each message line is the
`--json` record plus `ts` (Unix time) and `data` (payload, base64), so a
trace can be printed again, replayed, and its audio extracted. Events are
kept too. Lines are written in batches at least every 100 ms and at every
event, and on Ctrl-C and SIGTERM, so a trace is whole up to its last batch.

This module also reads the other inputs of `trace` and `replay`: raw dumps
(one direction's bytes, no timing), and dispatches packet captures to
files/pcap/.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from audiosocket_cli import __version__
from audiosocket_cli.files.records import Record, TraceFormatError
from audiosocket_cli.protocol.events import (
    CONVERSATION_EVENTS,
    ENDINGS,
    CallDiagnosis,
    CallEnd,
    CallInfo,
    CallStart,
    CallWarning,
    ConversationEvent,
    Event,
    event_record,
    message_record,
)
from audiosocket_cli.protocol.wire import (
    AUDIO_RATES,
    KIND_NAMES,
    Decoder,
    Kind,
    Message,
    ProtocolError,
    TruncatedMessage,
)

SNIFF_SIZE = 256
RECV_SIZE = 65536
FORMAT = "audiosocket-trace"
VERSION = 2  # 2: call-end carries `ended`, `detail` and counts keyed by direction
READABLE_VERSIONS = (1, 2)
PCAP_MAGICS = (
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
    b"\x0a\x0d\x0d\x0a",  # pcapng section header block
)


class TraceWriter:
    """Writes a trace file: a header line, then a JSON line per message or event.

    Lines are buffered and written by flush(), which the output layer calls at
    least every 100 ms and at every call's end, and close(): a trace is whole
    up to its last flush however the tool ends (Ctrl-C and SIGTERM flush).
    """

    def __init__(self, path: str, command: str = "", created: float | None = None) -> None:
        self.path = path
        self.stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        header = {
            "format": FORMAT,
            "version": VERSION,
            "tool": f"audiosocket-cli {__version__}",
            "command": command,
            "created": time.time() if created is None else created,
        }
        self.stream.write(json.dumps(header) + "\n")
        self.stream.flush()

    def message(
        self, call: CallInfo, t: float, direction: str, message: Message, level: float | None
    ) -> None:
        self.stream.write(self.line(call, t, direction, message, level))

    @staticmethod
    def line(
        call: CallInfo, t: float, direction: str, message: Message, level: float | None
    ) -> str:
        """A message's trace line."""
        record = message_record(call, t, direction, message, level)
        record["ts"] = round(call.unix_time(t), 6)
        record["data"] = base64.b64encode(message.payload).decode("ascii")
        return json.dumps(record) + "\n"

    def event(self, call: CallInfo, event: Event) -> None:
        record = event_record(call, event)
        record["ts"] = round(call.unix_time(event.t), 6)
        self.stream.write(json.dumps(record, default=str) + "\n")
        self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()


def sniff(head: bytes) -> str:
    """'trace', 'pcap' or 'raw', from a file's first bytes."""
    if head[:4] in PCAP_MAGICS:
        return "pcap"
    if head.lstrip()[:1] == b"{" and FORMAT.encode() in head[:200]:
        return "trace"
    return "raw"


def read_trace_lines(lines: Iterator[bytes], name: str) -> Iterator[Record]:
    first = next(lines, b"")
    try:
        header = json.loads(first)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise TraceFormatError(f"{name}: not an {FORMAT} file")
    version = header.get("version")
    if version not in READABLE_VERSIONS:
        raise TraceFormatError(f"{name}: trace version {version} is not supported")
    last: Record | None = None
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            last = _record(obj)
            if version == 1 and last.event == "call-end":
                upgrade_call_end(last.fields)
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            if not line.endswith(b"\n"):
                # A last line cut short by a crash: the rest is whole; say so, as for raw dumps.
                yield Record(
                    t=last.t if last else 0.0,
                    conn=last.conn if last else 1,
                    call=last.call if last else "#1",
                    dir="-",
                    event="warning",
                    text=f"{name}: line {number} cut short ({len(line)} bytes), ignored",
                    fields={"cut_bytes": len(line)},
                )
                return
            raise TraceFormatError(f"{name}: line {number}: {exc}") from None
        yield last


def _record(obj: dict[str, Any]) -> Record:
    t, conn, call = float(obj["t"]), int(obj["conn"]), str(obj["call"])
    if "event" in obj:
        extra = {
            k: v
            for k, v in obj.items()
            if k not in ("t", "conn", "call", "dir", "event", "text", "ts")
        }
        return Record(
            t,
            conn,
            call,
            dir="-",
            event=obj["event"],
            text=obj.get("text", ""),
            ts=obj.get("ts"),
            fields=extra,
        )
    message = Message(int(obj["type"]), base64.b64decode(obj["data"], validate=True))
    return Record(t, conn, call, dir=obj["dir"], message=message, ts=obj.get("ts"))


# How a call ended in version 1 traces (each command had its words) as an ENDINGS token.
_V1_SIDES = {
    "app": "app",
    "application": "app",
    "server": "app",
    "our": "app",  # listen spoke as the application
    "caller": "caller",
    "client": "caller",
    "peer": "caller",  # ... and its peer was Asterisk
}
_V1_HOWS = {"hangup": "hangup", "close": "close", "closed": "close", "reset": "reset"}
_V1_WHOLE = {
    "duration": "caller-close",
    "file-end": "caller-close",
    "inject-hangup": "caller-hangup",
    "inject-close": "caller-close",
    "protocol-error": "truncated",
    "capture-end": "unknown",
    "error": "internal-error",
}


def v1_ending(value: str) -> str | None:
    """`peer-close` (listen), `client-reset` (pcap), `application-hangup` (capture)..."""
    value = value.strip().lower()
    if value in ENDINGS:
        return value
    if value in _V1_WHOLE:
        return _V1_WHOLE[value]
    side, _, how = value.partition("-")
    if side in _V1_SIDES and how in _V1_HOWS:
        return f"{_V1_SIDES[side]}-{_V1_HOWS[how]}"
    return None


def upgrade_call_end(fields: dict[str, Any]) -> None:
    """A version 1 call-end's fields in version 2's words, in place."""
    for key in ("ended", "how", "reason"):
        value = fields.get(key)
        if isinstance(value, str) and v1_ending(value):
            fields["ended"] = v1_ending(value)
            break
    if "detail" not in fields and isinstance(fields.get("reason"), str):
        fields["detail"] = fields["reason"]
    for old in ("how", "reason"):
        fields.pop(old, None)
    for old, new in (("inbound", ">"), ("sent", ">"), ("outbound", "<"), ("received", "<")):
        if old in fields:
            fields.setdefault(new, fields.pop(old))


@dataclass(slots=True)
class RawBatch:
    """Messages of a raw dump read in one go, all of one call and direction: what a
    reader that wants speed takes instead of a Record per message."""

    call: str
    dir: str
    items: list[tuple[float, Message]]


def read_raw(stream: BinaryIO, name: str, direction: str = ">") -> Iterator[Record]:
    """A raw dump: time advances by each audio message's duration."""
    for item in read_raw_batches(stream, name, direction):
        if type(item) is RawBatch:
            call = item.call
            for t, message in item.items:
                yield Record(t, 1, call, direction, message)
        else:
            yield item  # type: ignore[misc]


def read_raw_batches(
    stream: BinaryIO, name: str, direction: str = ">"
) -> Iterator[RawBatch | Record]:
    """A raw dump as RawBatch es (one per read, split where the UUID names the call),
    then a Record of warning if the dump ends inside a message."""
    decoder = Decoder()
    t = 0.0
    call = "#1"
    rates = AUDIO_RATES
    while chunk := stream.read(65536):
        decoder.feed(chunk)
        items: list[tuple[float, Message]] = []
        for message in decoder.messages():
            kind = message[0]
            if kind == Kind.UUID and call == "#1" and message.uuid:
                if items:
                    yield RawBatch(call, direction, items)
                    items = []
                call = str(message.uuid)
            items.append((t, message))
            rate = rates.get(kind)
            if rate:
                t += len(message[1]) / (2 * rate)
        if items:
            yield RawBatch(call, direction, items)
    try:
        decoder.end_of_stream()
    except TruncatedMessage as exc:
        yield Record(
            t=t,
            conn=1,
            call=call,
            dir="-",
            event="warning",
            text=f"{name}: {exc}",
            fields={"missing": exc.missing, "violation": True},
        )


class _Prefixed(io.RawIOBase):
    """Bytes already read from a stream, then the rest of that stream."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            data, self._head = self._head[: len(buffer)], self._head[len(buffer) :]
        else:
            # read1 returns what a pipe has now, so a live trace is shown as it comes.
            read = getattr(self._rest, "read1", self._rest.read)
            data = read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def read_records(
    stream: BinaryIO,
    name: str,
    direction: str = ">",
    port: int | None = None,
    batches: bool = False,
) -> Iterator[Any]:
    """Records of any input: trace file, packet capture or raw dump. With `batches`, a
    raw dump comes as RawBatch es (see read_raw_batches)."""
    # Read the head rather than peek(): a pipe's peek() may return a few bytes only,
    # and BytesIO has none. Then rewind, or put the head back in front of a pipe.
    if stream.seekable():
        start = stream.tell()
        head = stream.read(SNIFF_SIZE)
        stream.seek(start)
    else:
        head = stream.read(SNIFF_SIZE)
        stream = io.BufferedReader(_Prefixed(head, stream), RECV_SIZE)
    kind = sniff(head)
    if not head:
        raise TraceFormatError(f"{name}: empty: no AudioSocket messages in it")
    if kind == "raw" and not looks_like_audiosocket(head):
        raise TraceFormatError(
            f"{name}: not a trace file, packet capture or AudioSocket byte dump "
            f"(it begins {head[:8].hex(' ')}{_looks_like(head)})"
        )
    if kind == "trace":
        return read_trace_lines(iter(stream), name)
    if kind == "pcap":
        try:
            from audiosocket_cli.files.pcap import read_pcap
        except ImportError as exc:  # pragma: no cover - pcap support not built yet
            raise TraceFormatError(f"{name}: packet captures are not supported: {exc}") from None
        return _upgraded(read_pcap(stream, name, port=port))
    if batches:
        return read_raw_batches(stream, name, direction)
    return read_raw(stream, name, direction)


def looks_like_audiosocket(head: bytes) -> bool:
    """Do these first bytes read as AudioSocket messages (every kind a known one)?"""
    pos = 0
    while pos + 3 <= len(head):
        if head[pos] not in KIND_NAMES:
            return False
        pos += 3 + (head[pos + 1] << 8 | head[pos + 2])
    return pos > 0 or (len(head) > 0 and head[0] in KIND_NAMES)


def _looks_like(head: bytes) -> str:
    for magic, what in (
        (b"RIFF", "a WAV file"),
        (b"fLaC", "a FLAC file"),
        (b"OggS", "an Ogg file"),
        (b"ID3", "an MP3 file"),
        (b"{", "JSON"),
    ):
        if head.lstrip().startswith(magic):
            return f": {what}"
    return ""


def open_input(name: str) -> tuple[BinaryIO, str]:
    """(stream, label) for an input argument; '-' is stdin. TraceFormatError if it cannot
    be opened, naming why."""
    if name == "-":
        return sys.stdin.buffer, "<stdin>"
    try:
        return open(name, "rb"), name  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise TraceFormatError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise TraceFormatError(f"{name}: is a directory") from None
    except OSError as exc:
        raise TraceFormatError(f"{name}: cannot read: {exc.strerror or exc}") from None


def event_from_record(record: Record) -> Event:
    """A trace's event line as the typed event it was, to be shown again."""
    fields = dict(record.fields)
    name, text, t = record.event, record.text, record.t
    if name == "call-end":
        ended = fields.pop("ended", None)
        if not isinstance(ended, str) or ended not in ENDINGS:
            ended = "unknown"
        detail = str(fields.pop("detail", "") or "")
        head = f"{ended} ({detail})" if detail else ended
        if text == head:
            summary = ""
        elif text.startswith(f"{head}; "):
            summary = text[len(head) + 2 :]
        else:
            summary = text
        directions = {d: fields.pop(d, {}) for d in (">", "<")}
        for key in ("duration", "partial"):
            fields.pop(key, None)
        return CallEnd(
            t=t,
            ended=ended,
            detail=detail,
            directions=directions,
            summary=summary,
            violations=tuple(fields.pop("violations", ()) or ()),
            diagnoses=tuple(fields.pop("diagnoses", ()) or ()),
            recordings=tuple(fields.pop("recordings", ()) or ()),
            partial=bool(record.fields.get("partial", False)),
            fields=fields,
        )
    if name == "call-start":
        return CallStart(t, text, fields)
    if name == "diagnosis":
        return CallDiagnosis(t, str(fields.pop("code", "")), text, fields)
    if name in CONVERSATION_EVENTS:
        return ConversationEvent(name, t, text, fields)
    return CallWarning(t, text, fields)


def _upgraded(records: Iterator[Record]) -> Iterator[Record]:
    """A capture's call-ends in the words of ENDINGS (`client-close` is `caller-close`)."""
    for record in records:
        if record.event == "call-end":
            upgrade_call_end(record.fields)
        yield record


__all__ = [
    "ProtocolError",
    "Record",
    "TraceFormatError",
    "TraceWriter",
    "read_raw",
    "read_records",
    "read_trace_lines",
    "sniff",
]
