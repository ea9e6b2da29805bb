"""Who a call is, for output: its connection number and, once known, UUID."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from audiosocket_cli.net.address import Address


@dataclass
class CallInfo:
    conn: int
    uuid: str | None = None
    peer: Address | None = None
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
