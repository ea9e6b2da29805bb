"""Many calls' run messages at once: DirectionStats.add's hot path, in one batch.

A load worker hears 50 audio messages a second from each of hundreds of calls,
nearly all of them "one more message of the current run" (the hot path of
DirectionStats.add: the same kind and size as the message before). One at a
time, each costs microseconds of interpreted Python; here the arrival times
every call gathered since its last batch are taken together, with numpy over
all the calls at once. The figures come out as add() would have made them,
message by message, bit for bit: the same floating-point operations, in the
same order where order matters (sums).

What one pass cannot decide, a burst window opening or a pace stretch ending or
block closing inside the batch, is left to the one-at-a-time code for that call
(DirectionStats.add, PaceTracker.add), so the rules stay in one place.

One difference, by design: each encoding sample that falls due within a batch
analyses the batch's last payload (the frames of one stream look alike); the
number of analyses, and of questions to the shared budget, is add()'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from audiosocket_cli.analysis.pacing import EARLY, PACE_BLOCK, PAUSE, STALL, PaceTracker
from audiosocket_cli.analysis.stats import (
    BURST_UNITS,
    BURST_WINDOW,
    JITTER_BINS,
    UNITS_PER_SECOND,
    DirectionStats,
)
from audiosocket_cli.protocol.wire import Message

# (statistics, arrival times in add()'s seconds, the last message's payload)
RunBatch = tuple[DirectionStats, Sequence[float], bytes]


def add_runs(batches: Sequence[RunBatch]) -> tuple[Any, Any]:
    """Each (stats, times, payload): audio messages that continue `stats`' current run
    (of its `run_shape`), arrived at `times` (ascending), the last one `payload`. The
    same as `stats.add(t, message)` for each, in order (but for the note above on the
    encoding analysis).

    Returns two numpy arrays over all the messages, in the batches' order: each one's
    gap since the audio message before it, and its jitter (that gap less the frame's
    duration), in seconds."""
    import numpy as np

    batches = [batch for batch in batches if len(batch[1])]
    if not batches:
        return np.empty(0), np.empty(0)
    for stats, _, _ in batches:
        if stats.run_shape is None:
            raise ValueError("add_runs: a DirectionStats with no current run")
    counts = np.array([len(times) for _, times, _ in batches], dtype=np.intp)
    flat: list[float] = []
    for _, times, _ in batches:
        flat += times
    t = np.array(flat, dtype=np.float64)
    n = len(t)
    starts = np.zeros(len(counts), dtype=np.intp)
    np.cumsum(counts[:-1], out=starts[1:])
    ends = starts + counts - 1
    seg = np.repeat(np.arange(len(counts)), counts)
    stats_list = [stats for stats, _, _ in batches]

    # Each message's previous two arrivals: the batch's own, or the call's state.
    last0 = np.array([s.last_audio for s in stats_list], dtype=np.float64)
    prev = np.empty(n)
    prev[1:] = t[:-1]
    prev[starts] = last0
    prev2 = np.empty(n)
    prev2[2:] = t[:-2]
    prev2[starts] = [s._before_last for s in stats_list]
    two = counts > 1
    prev2[starts[two] + 1] = last0[two]
    gap = t - prev
    seconds = np.array([s._run_seconds for s in stats_list], dtype=np.float64)[seg]
    jitter = gap - seconds

    # DirectionStats: a message within BURST_WINDOW of the one before that may open
    # a window (a third within it, or frames over half a burst) goes one at a time.
    pair = np.array([s._run_pair for s in stats_list], dtype=np.int64)
    within = gap <= BURST_WINDOW
    opens = within & ((t - prev2 <= BURST_WINDOW) | (pair[seg] > BURST_UNITS))
    one_by_one = np.maximum.reduceat(opens, starts) | np.array(
        [s._window_open for s in stats_list], dtype=bool
    )
    max_gap = np.maximum.reduceat(gap, starts)
    any_within = np.maximum.reduceat(within, starts)
    base = np.array([s._run_jitter_base for s in stats_list], dtype=np.float64)
    # int() truncates toward zero, and so does astype(): add()'s bin, exactly.
    jitter_bin = (gap * 10000.0 - base[seg]).astype(np.int64)
    batched = ~one_by_one[seg]
    inside = (jitter_bin >= 0) & (jitter_bin < JITTER_BINS)
    keys, hits = np.unique((seg * JITTER_BINS + jitter_bin)[inside & batched], return_counts=True)
    for key, count in zip(keys.tolist(), hits.tolist(), strict=True):
        stats_list[key // JITTER_BINS]._jitter[key % JITTER_BINS] += count
    for i in np.flatnonzero(~inside & batched).tolist():
        s = stats_list[seg[i]]
        s._jitter_outside(float(gap[i]) - s._run_units / UNITS_PER_SECOND)

    # PaceTracker: the gap from the end of the audio before, against the pace rules.
    last_end0 = np.array(
        [s.pace._last_end if s.pace is not None else 0.0 for s in stats_list],
        dtype=np.float64,
    )
    prev_end = prev + seconds
    prev_end[starts] = last_end0
    pace_gap = t - prev_end
    before = seconds.copy()
    before[starts] = [s.pace._last_seconds if s.pace is not None else 0.0 for s in stats_list]
    paused = np.maximum.reduceat(pace_gap > PAUSE, starts)
    stalled = pace_gap > STALL
    stalls = np.add.reduceat(stalled, starts, dtype=np.int64)
    early = np.add.reduceat((pace_gap < -EARLY * before) & ~stalled, starts, dtype=np.int64)
    # Each call's pace block audio after each message, summed in add()'s order (a
    # row per call; adding the padding's 0.0 changes nothing): the block closes on
    # the same message.
    width = int(counts.max())
    summed = np.zeros((len(counts), width + 1))
    summed[:, 0] = [s.pace._audio if s.pace is not None else 0.0 for s in stats_list]
    column = np.arange(width)
    summed[:, 1:] = np.where(column < counts[:, None], seconds[starts][:, None], 0.0)
    np.add.accumulate(summed, axis=1, out=summed)
    closes = (summed[:, 1:] >= PACE_BLOCK).any(axis=1)
    audio = summed[np.arange(len(counts)), counts]
    stall_at: dict[int, list[float]] = {}
    for i in np.flatnonzero(stalled).tolist():
        stall_at.setdefault(int(seg[i]), []).append(float(pace_gap[i]))

    per_call = zip(
        batches,
        one_by_one.tolist(),
        max_gap.tolist(),
        any_within.tolist(),
        prev[ends].tolist(),
        t[ends].tolist(),
        (paused | closes).tolist(),
        stalls.tolist(),
        early.tolist(),
        audio.tolist(),
        strict=True,
    )
    for j, (batch, alone, most, near, before_last, last, special, *pace_figures) in enumerate(
        per_call
    ):
        stats, times, payload = batch
        pace = stats.pace
        if alone:
            _one_by_one(stats, times, payload, with_pace=False)
        else:
            _finish_run(stats, len(times), payload, most, near, before_last, last)
        if pace is None:
            continue
        if special:
            for x in times:
                pace.add(x, stats._run_seconds)
        else:
            _finish_pace(
                pace, len(times), stats._run_seconds, last, stall_at.get(j, ()), *pace_figures
            )
    return gap, jitter


def _finish_run(
    stats: DirectionStats,
    count: int,
    payload: bytes,
    max_gap: float,
    any_within: bool,
    before_last: float,
    last: float,
) -> None:
    """A call's batch with no burst window to follow: its figures, as add() leaves them."""
    if max_gap > stats.max_gap:
        stats.max_gap = max_gap
    if any_within and stats._run_pair > stats._max_window_units:
        stats._max_window_units = stats._run_pair  # paced frames: two in one window
    stats._before_last = before_last
    stats.last_audio = last
    end = stats._run + count
    # The encoding samples that fell due, in turn (each may move the next).
    while stats._enc_next and stats._enc_next <= end:
        stats._run = stats._enc_next
        stats._sample(payload)
    stats._run = end


def _finish_pace(
    pace: PaceTracker,
    count: int,
    seconds: float,
    last: float,
    stall_gaps: Sequence[float],
    stalls: int,
    early: int,
    audio: float,
) -> None:
    """A call's batch, within one pace stretch and block: its figures, as add() leaves
    them."""
    pace._audio = audio
    pace._messages += count
    pace._stalls += stalls
    for g in stall_gaps:
        pace._stalled += g
    pace._early += early
    pace._last_end = last + seconds
    pace._last_seconds = seconds


def _one_by_one(
    stats: DirectionStats, times: Sequence[float], payload: bytes, with_pace: bool
) -> None:
    """add() for each message (its pace too if `with_pace`)."""
    kind, _ = stats.run_shape  # type: ignore[misc]
    message = Message(kind, payload)
    pace = stats.pace
    if not with_pace:
        stats.pace = None
    try:
        for x in times:
            stats.add(x, message)
    finally:
        stats.pace = pace
