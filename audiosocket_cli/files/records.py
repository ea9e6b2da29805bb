"""What every reader of calls gives: records of messages and events, and its one error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from audiosocket_cli.protocol.wire import Message


class TraceFormatError(Exception):
    """An input that is not a trace, raw dump or capture we can read."""


@dataclass(slots=True)
class Record:
    """One line of a trace: a message (with its bytes) or an event."""

    t: float
    conn: int
    call: str
    dir: str
    message: Message | None = None
    event: str | None = None
    text: str = ""
    ts: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)
