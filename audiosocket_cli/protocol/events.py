"""The one event vocabulary: who a call is, and what every command reports about it.

Every command (listen, dial, capture, replay, trace, and the engines to come)
reports a call with the same five things: its start, its messages, warnings,
diagnoses and its end. The events are typed here, once, and rendered by the
output layer; their JSON form is the contract written down in
docs/output.md. A call's end carries one `ended` token from :data:`ENDINGS`,
whatever the command that saw it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from audiosocket_cli.protocol.wire import Message

# How a call ended: one token, the same whichever command saw the call.
# "caller" is Asterisk's side (the TCP client), "app" the application's.
ENDINGS: dict[str, str] = {
    "caller-hangup": "Asterisk's side sent a hangup message",
    "caller-close": "Asterisk's side closed the connection",
    "caller-reset": "Asterisk's side reset the connection",
    "app-hangup": "the application sent a hangup message",
    "app-close": "the application closed the connection",
    "app-reset": "the application reset the connection",
    "refused": "the application sent what Asterisk refuses, and Asterisk ended the session",
    "stall": "a message stayed incomplete too long (Asterisk allows a payload about 5 ms)",
    "truncated": "the stream ended (closed or reset) inside a message",
    "garbage": "the peer does not speak AudioSocket",
    "inactivity": "nothing either way for 2 s: Asterisk's dialplan application ends the call",
    "timeout": "nothing received for --timeout seconds",
    "upstream-unreachable": "capture could not reach the application",
    "interrupted": "the tool was interrupted (Ctrl-C)",
    "terminated": "the tool was terminated (SIGTERM)",
    "output-closed": "the tool's output was closed",
    "internal-error": "the tool failed",
    "unknown": "the input does not say how the call ended (read from a file)",
}
# Endings that are a peer breaking the protocol: the exit status is 3.
VIOLATION_ENDINGS = frozenset({"refused", "stall", "truncated", "garbage"})
# Endings that mean the tool could not do its job: the exit status is 1.
FAILURE_ENDINGS = frozenset({"upstream-unreachable", "internal-error"})
# What `converse` measures of a conversation, as events of their own (docs/converse.md).
CONVERSATION_EVENTS = ("turn", "barge-in", "expectation", "conversation")
EVENT_NAMES = ("call-start", "call-end", "warning", "diagnosis", *CONVERSATION_EVENTS)


@dataclass
class CallInfo:
    """Who a call is, for output: its connection number and, once known, its UUID."""

    conn: int
    uuid: str | None = None
    peer: object = None  # an address; shown with str()
    started: float = field(default_factory=time.monotonic)
    started_ts: float = field(default_factory=time.time)

    @property
    def call_id(self) -> str:
        """The whole UUID, or #N until it is known (JSON and traces)."""
        return self.uuid or f"#{self.conn}"

    @property
    def short_id(self) -> str:
        """The UUID's first 8 hex digits, or #N (human and plain output)."""
        return self.uuid[:8] if self.uuid else f"#{self.conn}"

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.started

    def unix_time(self, t: float) -> float:
        return self.started_ts + t


@dataclass(frozen=True)
class CallStart:
    t: float
    text: str
    fields: dict[str, Any] = field(default_factory=dict)
    name = "call-start"


@dataclass(frozen=True)
class CallWarning:
    t: float
    text: str
    fields: dict[str, Any] = field(default_factory=dict)
    name = "warning"


@dataclass(frozen=True)
class CallDiagnosis:
    t: float
    code: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)
    name = "diagnosis"


@dataclass(frozen=True)
class CallEnd:
    """The last word on a call: how it ended, and what went each way."""

    t: float
    ended: str
    detail: str
    directions: dict[str, dict[str, Any]]  # ">" and "<": DirectionStats.as_dict()
    summary: str  # the human line: counts each way, pacing, recordings
    violations: tuple[str, ...] = ()
    diagnoses: tuple[str, ...] = ()
    recordings: tuple[str, ...] = ()
    partial: bool = False  # a recording or trace lost writes (disk full...)
    fields: dict[str, Any] = field(default_factory=dict)
    name = "call-end"

    def __post_init__(self) -> None:
        if self.ended not in ENDINGS:
            raise ValueError(f"unknown ending {self.ended!r}")

    @property
    def text(self) -> str:
        head = f"{self.ended} ({self.detail})" if self.detail else self.ended
        return f"{head}; {self.summary}" if self.summary else head

    @property
    def broke_protocol(self) -> bool:
        return bool(self.violations) or self.ended in VIOLATION_ENDINGS


@dataclass(frozen=True)
class ConversationEvent:
    """A measure or a verdict of `converse`: `name` is one of CONVERSATION_EVENTS."""

    name: str
    t: float
    text: str
    fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in CONVERSATION_EVENTS:
            raise ValueError(f"unknown conversation event {self.name!r}")


Event = CallStart | CallWarning | CallDiagnosis | CallEnd | ConversationEvent


def event_fields(event: Event) -> dict[str, Any]:
    """The JSON fields of an event beyond t, conn, call, dir, event and text."""
    if isinstance(event, CallEnd):
        out: dict[str, Any] = {
            "ended": event.ended,
            "detail": event.detail,
            "duration": round(event.t, 6),
            ">": event.directions.get(">", {}),
            "<": event.directions.get("<", {}),
            "violations": list(event.violations),
            "diagnoses": list(event.diagnoses),
            "recordings": list(event.recordings),
            "partial": event.partial,
        }
        for key, value in event.fields.items():
            out.setdefault(key, value)  # extra fields never replace the vocabulary's
        return out
    if isinstance(event, CallDiagnosis):
        return {"code": event.code, **event.fields}
    return dict(event.fields)


def event_record(call: CallInfo, event: Event) -> dict[str, Any]:
    """An event as a JSON line's object (see docs/output.md)."""
    record: dict[str, Any] = {
        "t": round(event.t, 6),
        "conn": call.conn,
        "call": call.call_id,
        "dir": "-",
        "event": event.name,
        "text": event.text,
    }
    for key, value in event_fields(event).items():
        record.setdefault(key, value)  # an event's own fields never hide the common ones
    return record


def message_fields(message: Message, level: float | None) -> dict[str, Any]:
    """What a JSON line carries about a message beyond t, conn, call and dir."""
    kind, payload = message
    name = message.name
    fields: dict[str, Any] = {"kind": name, "type": kind, "len": len(payload)}
    if name == "audio":
        fields["rate"] = message.rate
        fields["level_dbfs"] = level
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


def message_record(
    call: CallInfo, t: float, direction: str, message: Message, level: float | None
) -> dict[str, Any]:
    """A message as a JSON line's object (see docs/output.md)."""
    return {
        "t": round(t, 6),
        "conn": call.conn,
        "call": call.call_id,
        "dir": direction,
        **message_fields(message, level),
    }
