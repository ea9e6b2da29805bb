"""What a conversation measured, from two timelines: the caller's speech and the agent's.

Pure functions, no I/O. The caller's speech is known exactly (what we sent,
where speech is inside each file); the agent's comes from the speech
detector on its audio at playout time. Times are seconds since the
connection. The definitions here are the ones docs/converse.md gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FRAME = 0.02  # s: the detector's accuracy, and the tolerance of "at the same time"
STOP_GAP = 0.5  # s: a pause shorter than this is not the end of an utterance
STILL_SPEAKING = 0.1  # s: speech this close to the call's end was cut off by the end


@dataclass(frozen=True)
class CallerTurn:
    """One utterance we sent: a `say` or a `barge_in` step."""

    turn: int  # from 1
    step: int
    step_name: str
    action: str  # "say" or "barge-in"
    label: str
    sent_start: float  # when the file's first sample went out
    sent_end: float  # when its last one did (earlier if the call ended first)
    speech: tuple[tuple[float, float], ...]  # where speech was in what was sent

    @property
    def start(self) -> float:
        return self.speech[0][0] if self.speech else self.sent_start

    @property
    def end(self) -> float:
        return self.speech[-1][1] if self.speech else self.sent_end


@dataclass(frozen=True)
class Utterance:
    """The agent's speech: detector segments joined across pauses shorter than STOP_GAP,
    except a pause in which the caller finished speaking (what follows is a reply)."""

    start: float
    end: float
    segments: tuple[tuple[float, float], ...]

    @property
    def speech(self) -> float:
        return sum(e - s for s, e in self.segments)


@dataclass(frozen=True)
class TurnMeasure:
    turn: CallerTurn
    agent_start: float | None  # the reply: the agent's first utterance begun in this turn
    latency: float | None  # agent_start - the end of the caller's speech (< 0: talk-over)
    agent_speech: float  # s of agent speech from this turn's start to the next's
    talk_over: bool  # the agent began an utterance while the caller spoke


@dataclass(frozen=True)
class BargeInMeasure:
    turn: CallerTurn
    agent_start: float | None  # the utterance barged into; None: the agent was quiet
    stopped_at: float | None  # the end of that utterance
    stop_time: float | None  # stopped_at - the caller's speech start
    stopped: bool  # False: the agent was still speaking when the call ended


@dataclass(frozen=True)
class TalkOver:
    t: float  # when the agent began
    turn: CallerTurn  # whose speech it began in
    into: float  # s into the caller's speech


@dataclass(frozen=True)
class DeadAir:
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Measures:
    first_response: float | None
    turns: list[TurnMeasure] = field(default_factory=list)
    barge_ins: list[BargeInMeasure] = field(default_factory=list)
    talk_overs: list[TalkOver] = field(default_factory=list)
    dead_air: list[DeadAir] = field(default_factory=list)
    utterances: list[Utterance] = field(default_factory=list)
    agent_segments: list[tuple[float, float]] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [m.latency for m in self.turns if m.latency is not None]

    def summary(self) -> dict[str, Any]:
        """The per-call figures, as the call-end's `conversation` field gives them."""
        latencies = self.latencies
        stops = [b.stop_time for b in self.barge_ins if b.stop_time is not None]
        return {
            "first_response": _r(self.first_response),
            "turns": len(self.turns),
            "response_p50": _r(percentile(latencies, 50)),
            "response_p95": _r(percentile(latencies, 95)),
            "response_max": _r(max(latencies) if latencies else None),
            "barge_ins": len(self.barge_ins),
            "barge_in_stop_max": _r(max(stops) if stops else None),
            "talk_overs": len(self.talk_overs),
            "dead_air": len(self.dead_air),
            "dead_air_max": _r(max(d.seconds for d in self.dead_air) if self.dead_air else None),
            "agent_speech": _r(sum(e - s for s, e in self.agent_segments)),
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p50 of 1, 2, 3, 4 is 2); None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def utterances(
    segments: Sequence[tuple[float, float]], caller_ends: Sequence[float]
) -> list[Utterance]:
    """The agent's segments joined into utterances (see Utterance)."""
    out: list[list[tuple[float, float]]] = []
    for start, end in segments:
        if out:
            last_end = out[-1][-1][1]
            reply = any(last_end - FRAME <= e <= start for e in caller_ends)
            if start - last_end < STOP_GAP and not reply:
                out[-1].append((start, end))
                continue
        out.append([(start, end)])
    return [Utterance(group[0][0], group[-1][1], tuple(group)) for group in out]


def measure(
    turns: Sequence[CallerTurn],
    agent_segments: Sequence[tuple[float, float]],
    *,
    call_end: float,
    quiet: Sequence[tuple[float, float]] = (),
    dead_air: float = 2.0,
) -> Measures:
    """Every measure of a call. `quiet`: spans in which the caller was silent on purpose
    (`silence` steps, after the last step), where silence is not dead air; `dead_air`:
    the shortest silence that counts (0: none counts)."""
    segments = sorted(agent_segments)
    spoken = [t for t in turns if t.speech]
    heard = utterances(segments, [t.end for t in spoken])
    result = Measures(
        first_response=segments[0][0] if segments else None,
        utterances=heard,
        agent_segments=list(segments),
    )
    for u in heard:
        for turn in spoken:
            if turn.start - FRAME <= u.start < turn.end - FRAME:
                result.talk_overs.append(TalkOver(u.start, turn, u.start - turn.start))
                break
    talked_over = {id(t.turn) for t in result.talk_overs}
    for i, turn in enumerate(turns):
        following = turns[i + 1].start if i + 1 < len(turns) else math.inf
        reply = None
        if turn.speech:
            reply = next(
                (u for u in heard if turn.start - FRAME <= u.start < following - FRAME), None
            )
        window_end = min(following, call_end)
        result.turns.append(
            TurnMeasure(
                turn=turn,
                agent_start=reply.start if reply else None,
                latency=reply.start - turn.end if reply else None,
                agent_speech=_overlap(segments, turn.start, window_end),
                talk_over=id(turn) in talked_over,
            )
        )
        if turn.action == "barge-in":
            result.barge_ins.append(_barge_in(turn, heard, call_end))
    if dead_air > 0:
        result.dead_air = _dead_air(segments, spoken, quiet, dead_air)
    return result


def _overlap(segments: Sequence[tuple[float, float]], a: float, b: float) -> float:
    return sum(max(0.0, min(e, b) - max(s, a)) for s, e in segments)


def _barge_in(turn: CallerTurn, heard: Sequence[Utterance], call_end: float) -> BargeInMeasure:
    b = turn.start
    interrupted = next((u for u in heard if u.start < b and u.end >= b - FRAME), None)
    if interrupted is None or not turn.speech:
        return BargeInMeasure(turn, None, None, None, stopped=False)
    stopped = interrupted.end < call_end - STILL_SPEAKING
    return BargeInMeasure(
        turn,
        agent_start=interrupted.start,
        stopped_at=interrupted.end,
        stop_time=max(0.0, interrupted.end - b),
        stopped=stopped,
    )


def _dead_air(
    segments: Sequence[tuple[float, float]],
    turns: Sequence[CallerTurn],
    quiet: Sequence[tuple[float, float]],
    longest: float,
) -> list[DeadAir]:
    """Silences between two stretches of the agent's speech with no caller speech in
    them, longer than `longest`, and not where the caller kept quiet on purpose."""
    found = []
    for (_, gap_start), (gap_end, _) in zip(segments, segments[1:], strict=False):
        if gap_end - gap_start <= longest:
            continue
        if any(t.start < gap_end and t.end > gap_start for t in turns):
            continue  # the caller spoke: two silences, one the caller's to break
        if any(q0 < gap_end and q1 > gap_start for q0, q1 in quiet):
            continue
        found.append(DeadAir(gap_start, gap_end))
    return found
