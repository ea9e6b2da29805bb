"""analysis.runs.add_runs: many calls' run messages in one batch, the figures add() makes.

Each test feeds the same messages to two DirectionStats: one message at a time
through add(), and in batches through add_runs() wherever a message continues
the current run, and compares every field (pacing's included), bit for bit.
The payloads of a run are alike, so that the batch's one documented difference
(its encoding samples read its last payload) cannot show.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_cli.analysis.pacing import PACE_BLOCK, PAUSE, STALL, PaceTracker
from audiosocket_cli.analysis.runs import add_runs
from audiosocket_cli.analysis.stats import BURST_WINDOW, DirectionStats
from audiosocket_cli.protocol.wire import Kind, Message

Timeline = list[tuple[float, Message]]


def state(stats: DirectionStats) -> dict[str, Any]:
    """Every field of a DirectionStats, and of its PaceTracker."""
    out: dict[str, Any] = {}
    for name in DirectionStats.__slots__:
        value = getattr(stats, name)
        if name == "pace" and value is not None:
            value = {field: getattr(value, field) for field in PaceTracker.__slots__}
        elif name == "_jitter_log":
            value = list(value)
        elif name in ("encoding_gate", "_bins_memo"):
            continue
        out[name] = value
    return out


def one_at_a_time(timeline: Timeline, pacing: bool = True) -> DirectionStats:
    stats = DirectionStats(analyse_pacing=pacing)
    for t, message in timeline:
        stats.add(t, message)
    return stats


def in_batches(
    timelines: list[Timeline], cuts: random.Random, pacing: bool = True
) -> list[DirectionStats]:
    """The calls' messages in time order; each call's run messages are held back and
    taken by add_runs(), all calls together, at random moments (a period's end) and
    before any other message of that call (as load's worker does)."""
    stats = [DirectionStats(analyse_pacing=pacing) for _ in timelines]
    held: list[list[float]] = [[] for _ in timelines]
    last: list[bytes] = [b"" for _ in timelines]
    merged = sorted(
        (t, i, n, message)
        for i, timeline in enumerate(timelines)
        for n, (t, message) in enumerate(timeline)
    )
    for _, i, n, message in merged:
        t = timelines[i][n][0]
        if stats[i].run_shape == (message.kind, len(message.payload)) and cuts.random() < 0.95:
            held[i].append(t)
            last[i] = message.payload
        else:
            if held[i]:
                add_runs([(stats[i], held[i], last[i])])
                held[i] = []
            stats[i].add(t, message)
        if cuts.random() < 0.01:
            add_runs([(s, h, p) for s, h, p in zip(stats, held, last, strict=True)])
            held = [[] for _ in timelines]
    add_runs([(s, h, p) for s, h, p in zip(stats, held, last, strict=True)])
    return stats


def call(rnd: random.Random, start: float = 0.0) -> Timeline:
    """An application's side of a call: paced frames with jitter, and now and then a
    pause, a stall, a burst, a late frame, a DTMF digit, a frame of another size."""
    kind = rnd.choice([Kind.AUDIO_8K, Kind.AUDIO_8K, Kind.AUDIO_16K])
    size = rnd.choice([320, 320, 640, 160, 3200])
    payload = bytes(rnd.randrange(256) for _ in range(size))
    odd = {n: bytes(rnd.randrange(256) for _ in range(n)) for n in (100, 320, 640)}
    t = start
    out: Timeline = [(t, Message(Kind.UUID, bytes(16)))]
    for _ in range(rnd.randrange(20, 500)):
        r = rnd.random()
        if r < 0.01:
            t += rnd.uniform(PAUSE, 3.0)  # a pause: the pace stretch ends
        elif r < 0.05:
            t += rnd.uniform(0.0, 0.004)  # frames together: a burst window may open
        elif r < 0.07:
            t += rnd.uniform(STALL, 0.3)  # a stall
        else:
            t += 0.020 + rnd.gauss(0.0, 0.003)
        if r > 0.995:
            out.append((t, Message(Kind.DTMF, b"5")))
        elif r > 0.99:
            other = rnd.choice(list(odd))
            out.append((t, Message(kind, payload if other == size else odd[other])))
        else:
            out.append((t, Message(kind, payload)))
    return out


@pytest.mark.parametrize("pacing", [True, False])
@pytest.mark.parametrize("seed", range(40))
def test_batches_of_one_call_give_add_s_figures(seed: int, pacing: bool) -> None:
    rnd = random.Random(seed)
    timeline = call(rnd)
    (batched,) = in_batches([timeline], rnd, pacing)
    assert state(batched) == state(one_at_a_time(timeline, pacing))


@pytest.mark.parametrize("seed", range(10))
def test_many_calls_in_one_batch_give_each_its_own_figures(seed: int) -> None:
    rnd = random.Random(1000 + seed)
    timelines = [call(rnd, start=rnd.uniform(0, 1)) for _ in range(rnd.randrange(2, 30))]
    for batched, timeline in zip(in_batches(timelines, rnd), timelines, strict=True):
        assert state(batched) == state(one_at_a_time(timeline))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=0.7, allow_nan=False),
            st.booleans(),
        ),
        min_size=1,
        max_size=300,
    ),
    st.integers(0, 2**32 - 1),
)
def test_any_arrival_times_give_add_s_figures(steps: list[tuple[float, bool]], seed: int) -> None:
    """Gaps of any length from 0 to past a pause, batches cut anywhere."""
    payload = bytes(range(256)) + bytes(64)
    timeline: Timeline = []
    t = 0.0
    for gap, dtmf in steps:
        t += gap
        timeline.append((t, Message(Kind.DTMF, b"1") if dtmf else Message(Kind.AUDIO_8K, payload)))
    (batched,) = in_batches([timeline], random.Random(seed))
    assert state(batched) == state(one_at_a_time(timeline))


def test_a_paced_run_is_taken_in_one_pass_and_closes_its_pace_blocks() -> None:
    """Thirty seconds of 20 ms frames: ten pace blocks judged, the jitter where add() puts
    it, no burst; the gaps and jitter come back in order."""
    payload = bytes(320)
    first = Message(Kind.AUDIO_8K, payload)
    times = [0.020 * n + (0.0005 if n % 2 else 0.0) for n in range(1500)]
    stats = DirectionStats(analyse_pacing=True)
    stats.add(times[0], first)
    gaps, jitter = add_runs([(stats, times[1:], payload)])
    assert state(stats) == state(one_at_a_time([(x, first) for x in times]))
    assert stats.messages == 1500 and stats.bursts == 0
    assert stats.pace is not None and stats.pace.blocks == int(1500 * 0.020 // PACE_BLOCK)
    assert gaps.tolist() == [b - a for a, b in zip(times, times[1:], strict=False)]
    assert jitter == pytest.approx(gaps - 0.020)
    assert stats.max_window_audio == pytest.approx(0.040)  # two paced frames within 20 ms
    assert max(gaps) <= BURST_WINDOW + 0.001


def test_a_burst_in_a_batch_is_counted_as_add_counts_it() -> None:
    payload = bytes(320)
    message = Message(Kind.AUDIO_8K, payload)
    times = [0.02 * n for n in range(50)] + [1.0 + 0.0001 * n for n in range(12)]
    stats = DirectionStats(analyse_pacing=True)
    stats.add(times[0], message)
    add_runs([(stats, times[1:], payload)])
    assert stats.bursts == 1
    assert state(stats) == state(one_at_a_time([(x, message) for x in times]))


def test_nothing_to_take_changes_nothing() -> None:
    stats = DirectionStats()
    stats.add(0.0, Message(Kind.AUDIO_8K, bytes(320)))
    before = state(stats)
    gaps, jitter = add_runs([(stats, [], b"")])
    assert len(gaps) == len(jitter) == 0
    assert state(stats) == before


def test_a_batch_for_statistics_with_no_run_is_refused() -> None:
    stats = DirectionStats()
    stats.add(0.0, Message(Kind.DTMF, b"1"))
    with pytest.raises(ValueError, match="no current run"):
        add_runs([(stats, [0.02], bytes(320))])


def test_the_encoding_samples_due_in_a_batch_are_analysed() -> None:
    """As many analyses as add() makes, of the batch's last payload."""
    loud = bytes(range(256)) * 2  # not silence: each analysis gives a verdict
    message = Message(Kind.AUDIO_8K, loud)
    times = [0.02 * n for n in range(40)]
    stats = DirectionStats()
    stats.add(times[0], message)
    add_runs([(stats, times[1:], loud)])
    reference = one_at_a_time([(x, message) for x in times], pacing=False)
    assert stats._encoding_tries == reference._encoding_tries > 1
    assert stats.encoding_votes == reference.encoding_votes
