"""What a load run will do, decided before the first call (picklable for workers)."""

from __future__ import annotations

import uuid as uuid_lib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiosocket_cli.net.address import Address
from audiosocket_cli.protocol.session import Rules
from audiosocket_cli.protocol.wire import Message, frame_bytes

FRAME_MS = 20.0


# The plan.


@dataclass
class LoadPlan:
    """Everything decided before the first call; picklable, for worker processes."""

    address: Address
    calls: int = 10  # at once, at most
    rate: float = 10.0  # new calls per second
    duration: float = 10.0  # each call's length, seconds
    total: int | None = None  # calls in all; None: until stopped
    sample_rate: int = 8000
    source: str = "silence"  # silence | tone | file | none
    tone_hz: float = 440.0
    pcm: bytes = b""  # the file's audio at sample_rate (source "file")
    source_name: str = "silence"
    dtmf: list[tuple[float, list[Message]]] = field(default_factory=list)  # (at, messages)
    uuid_pattern: str | None = None
    rules: Rules = field(default_factory=Rules)
    period: float = 1.0
    record_dir: Path | None = None

    @property
    def frame_samples(self) -> int:
        return frame_bytes(self.sample_rate, FRAME_MS) // 2

    @property
    def frame_seconds(self) -> float:
        return self.frame_samples / self.sample_rate


def check_uuid_pattern(pattern: str) -> str | None:
    """Why `pattern` does not make a UUID for every call number, or None."""
    for n in (0, 1, 999_999):
        try:
            text = pattern.format(n=n)
        except (KeyError, IndexError, ValueError) as exc:
            return f"{pattern!r}: {exc!r} (the one field is {{n}}, e.g. {{n:012d}})"
        try:
            uuid_lib.UUID(text)
        except ValueError:
            return f"{pattern!r} gives {text!r} for call {n}, which is not a UUID"
    return None


def make_uuid(pattern: str | None, n: int) -> str:
    if pattern is None:
        return str(uuid_lib.uuid4())
    return str(uuid_lib.UUID(pattern.format(n=n)))


def dtmf_schedule(injections: Iterable[Any]) -> list[tuple[float, list[Message]]]:
    """--dtmf DIGITS@SECONDS (protocol.inject.Injection) as (seconds, messages), in order."""
    return sorted(((i.at, list(i.messages)) for i in injections), key=lambda x: x[0])
