"""A drift-free clock for paced sends: the k-th frame leaves at start + k * interval.

Sleeping one interval after each send accumulates every late wake-up; computing
each deadline from the start does not.
"""

from __future__ import annotations

import time


class Pacer:
    def __init__(self, interval: float, speed: float = 1.0, start: float | None = None) -> None:
        if speed < 0:
            raise ValueError("speed must be 0 (as fast as possible) or more")
        self.interval = interval
        self.speed = speed
        self.start = time.monotonic() if start is None else start

    def deadline(self, k: int) -> float:
        """When frame k is due (monotonic seconds); now for --speed 0."""
        if self.speed == 0:
            return self.start
        return self.start + k * self.interval / self.speed

    def at(self, seconds: float) -> float:
        """When a moment `seconds` into the call is due."""
        if self.speed == 0:
            return self.start
        return self.start + seconds / self.speed

    def wait(self, k: int) -> float:
        """Sleep until frame k is due; return how late we woke (seconds)."""
        return sleep_until(self.deadline(k))


def sleep_until(deadline: float) -> float:
    """Sleep to a monotonic deadline; return how late we woke."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return -remaining
        # time.sleep overshoots by up to a scheduler tick; sleep short, then spin.
        time.sleep(remaining - 0.0005 if remaining > 0.002 else remaining / 2)
