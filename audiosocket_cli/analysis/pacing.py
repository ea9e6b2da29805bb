"""Is audio paced at real time, judged block by block, and if not, in what pattern?

Asterisk plays what an application sends the moment it arrives, with no
buffer: audio that comes slower than real time leaves the caller gaps, audio
that comes faster is choppy or lost. One rule for the whole tool (`dial`,
`load`, `capture`, `check`, `report`):

- Audio is cut into *stretches*: a stretch ends where nothing arrives for
  more than PAUSE (a pause between utterances is not slowness).
- Each stretch is tiled into *blocks* of at least PACE_BLOCK seconds of
  audio; the last, shorter remainder joins the block before it. A block's
  ratio is its audio seconds over the wall-clock time from the end of the
  block before it (or the stretch's first arrival) to the end of its last
  message's audio, so a gap between two blocks still counts.
- A block whose ratio is off 1 by more than PACE_TOLERANCE is a finding.
  Its pattern says why: *synthesis stalls* (gaps of more than STALL beyond
  the audio before them make up at least half of the lost time), a *steady
  slow clock* (every frame a little late), *bursts* (at least a tenth of the
  messages came a half frame or more ahead of the audio before them), or a
  *steady fast clock*.

`PaceTracker.add` is fed each audio message's arrival time and duration; it
costs a few comparisons per message and keeps only the worst blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

PACE_TOLERANCE = 0.02  # off real time by more than 2% ...
PACE_BLOCK = 3.0  # ... over any 3 s or more of audio
PAUSE = 0.5  # s with nothing arriving: the stretch ends (a pause, not a stall)
STALL = 0.040  # s of silence on the wire beyond the audio before it: a stall, not jitter
EARLY = 0.5  # a message this many of the previous message's durations ahead: bursting
BURSTY_SHARE = 0.1  # of a block's messages early like that: the pattern is bursts

SLOW_STALLS = "synthesis stalls"
SLOW_CLOCK = "a steady slow clock"
FAST_BURSTS = "bursts"
FAST_CLOCK = "a steady fast clock"


@dataclass(frozen=True)
class PaceBlock:
    """One judged block: `ratio` audio seconds per wall-clock second from `start` to `end`."""

    start: float
    end: float
    audio: float
    messages: int
    stalls: int  # gaps longer than STALL beyond the audio before them
    stalled: float  # their silence, seconds
    early: int  # messages that came a half frame or more ahead of the audio before them

    @property
    def ratio(self) -> float:
        span = self.end - self.start
        return self.audio / span if span > 0 else float("inf")

    @property
    def off(self) -> bool:
        return abs(self.ratio - 1.0) > PACE_TOLERANCE

    @property
    def slow(self) -> bool:
        return self.ratio < 1.0 - PACE_TOLERANCE

    @property
    def pattern(self) -> str:
        if self.slow:
            lost = (self.end - self.start) - self.audio
            return SLOW_STALLS if self.stalls and self.stalled >= 0.5 * lost else SLOW_CLOCK
        return FAST_BURSTS if self.early >= BURSTY_SHARE * self.messages else FAST_CLOCK

    def describe(self) -> str:
        """`0.96x real time over 3.0 s of audio from 1.20s to 4.33s: a steady slow clock
        (frames every 20.8 ms for 20 ms of audio)`."""
        text = (
            f"{self.ratio:.3f}x real time over {self.audio:.1f} s of audio from "
            f"{self.start:.2f}s to {self.end:.2f}s: {self.pattern}"
        )
        pattern = self.pattern
        if pattern == SLOW_STALLS:
            text += (
                f" ({self.stalls} gap{'' if self.stalls == 1 else 's'}, "
                f"{self.stalled * 1000:.0f} ms of silence in all)"
            )
        elif pattern in (SLOW_CLOCK, FAST_CLOCK) and self.messages:
            wall = (self.end - self.start - self.stalled) / self.messages
            frame = self.audio / self.messages
            text += f" (a message every {wall * 1000:.1f} ms for {frame * 1000:.1f} ms of audio)"
        elif pattern == FAST_BURSTS:
            text += f" ({self.early} of {self.messages} messages came ahead of time)"
        return text


class PaceTracker:
    """Blocks of one direction's audio as it arrives; keeps the slowest and the fastest."""

    __slots__ = (
        "blocks",
        "slowest",
        "fastest",
        "_last_end",
        "_last_seconds",
        "_start",
        "_audio",
        "_messages",
        "_stalls",
        "_stalled",
        "_early",
        "_previous",
    )

    def __init__(self) -> None:
        self.blocks = 0  # judged
        self.slowest: PaceBlock | None = None
        self.fastest: PaceBlock | None = None
        self._last_end: float | None = None  # arrival + duration of the last message
        self._last_seconds = 0.0
        self._previous: PaceBlock | None = None  # this stretch's last full block
        self._new_stretch(0.0)

    def _new_stretch(self, t: float) -> None:
        self._previous = None
        self._open_block(t)

    def _open_block(self, t: float) -> None:
        self._start = t
        self._audio = 0.0
        self._messages = 0
        self._stalls = 0
        self._stalled = 0.0
        self._early = 0

    def add(self, t: float, seconds: float) -> None:
        """An audio message `seconds` long arrived at `t`."""
        last_end = self._last_end
        if last_end is None:
            self._open_block(t)
        else:
            gap = t - last_end
            if gap > PAUSE:
                self._close_stretch()
                self._new_stretch(t)
            elif gap > STALL:
                self._stalls += 1
                self._stalled += gap
            elif gap < -EARLY * self._last_seconds:
                self._early += 1
        self._audio += seconds
        self._messages += 1
        end = t + seconds
        self._last_end = end
        self._last_seconds = seconds
        if self._audio >= PACE_BLOCK:
            block = self._block(end)
            self._judge(block)
            self._previous = block
            self._open_block(end)

    def _block(self, end: float) -> PaceBlock:
        return PaceBlock(
            self._start,
            end,
            self._audio,
            self._messages,
            self._stalls,
            self._stalled,
            self._early,
        )

    def _remainder(self) -> PaceBlock | None:
        """The stretch's last full block with the shorter remainder after it, if any."""
        previous = self._previous
        if previous is None or not self._messages or self._last_end is None:
            return None
        rest = self._block(self._last_end)
        return PaceBlock(
            previous.start,
            rest.end,
            previous.audio + rest.audio,
            previous.messages + rest.messages,
            previous.stalls + rest.stalls,
            previous.stalled + rest.stalled,
            previous.early + rest.early,
        )

    def _close_stretch(self) -> None:
        merged = self._remainder()
        if merged is not None:
            self._judge(merged, count=False)

    def _judge(self, block: PaceBlock, count: bool = True) -> None:
        if count:
            self.blocks += 1
        ratio = block.ratio
        if self.slowest is None or ratio < self.slowest.ratio:
            self.slowest = block
        if self.fastest is None or ratio > self.fastest.ratio:
            self.fastest = block

    def worst(self) -> PaceBlock | None:
        """The block furthest from real time if it is off by more than the tolerance
        (the audio so far: the current stretch's remainder counts with its block)."""
        blocks = (self.slowest, self.fastest, self._remainder())
        candidates = [b for b in blocks if b is not None and b.off]
        if not candidates:
            return None
        return max(candidates, key=lambda b: abs(b.ratio - 1.0))
