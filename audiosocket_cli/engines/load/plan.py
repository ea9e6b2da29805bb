"""What a load run will do, decided before the first call (picklable for workers)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiosocket_cli.engines.before_call import CallUUIDs, check_uuid_pattern
from audiosocket_cli.net.address import Address
from audiosocket_cli.protocol.session import Rules
from audiosocket_cli.protocol.wire import Message, frame_bytes

FRAME_MS = 20.0

__all__ = ["FRAME_MS", "LoadPlan", "check_uuid_pattern", "dtmf_schedule", "make_uuid"]


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
    uuid: str | None = None  # every call's, if given
    before_call: str | None = None  # a shell command each call waits for (engines.before_call)
    rules: Rules = field(default_factory=Rules)
    period: float = 1.0
    record_dir: Path | None = None
    # --scenario: each call holds this conversation (engines.conversation): the
    # Scenario, its utterances at sample_rate, the verdicts' Thresholds, and a file
    # that gets a JSON line per concluded conversation.
    scenario: Any = None
    utterances: dict[Path, Any] = field(default_factory=dict)
    thresholds: Any = None
    conversations_path: Path | None = None

    @property
    def frame_samples(self) -> int:
        return frame_bytes(self.sample_rate, FRAME_MS) // 2

    @property
    def frame_seconds(self) -> float:
        return self.frame_samples / self.sample_rate


def make_uuid(plan: LoadPlan, n: int) -> str:
    """Call number n's UUID: --uuid for every call, --uuid-pattern, or a random one."""
    return CallUUIDs(plan.uuid, plan.uuid_pattern)(n)


def dtmf_schedule(injections: Iterable[Any]) -> list[tuple[float, list[Message]]]:
    """--dtmf DIGITS@SECONDS (protocol.inject.Injection) as (seconds, messages), in order."""
    return sorted(((i.at, list(i.messages)) for i in injections), key=lambda x: x[0])
