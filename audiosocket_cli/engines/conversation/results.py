"""A conversation's results: what the Python API returns, and the events the output shows.

The events are the tool's vocabulary (docs/output.md): `turn` for each thing
the caller said, `barge-in` for each barge-in, `expectation` for each
verdict, `conversation` for the call's figures, all before the call's
`call-end`, which carries the same figures in its `conversation` field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiosocket_cli.engines.conversation.measures import (
    BargeInMeasure,
    DeadAir,
    Measures,
    TalkOver,
    TurnMeasure,
    percentile,
)
from audiosocket_cli.engines.conversation.verdicts import Expectation
from audiosocket_cli.protocol.events import CallEnd, ConversationEvent

# The conversation's events are the vocabulary's own (protocol.events).
ConverseEvent = ConversationEvent


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


@dataclass(frozen=True)
class TurnResult:
    """One thing the caller said, and what the agent did about it."""

    turn: int
    step: int
    step_name: str
    action: str  # say, barge-in
    utterance: str
    caller_start: float  # the caller's speech, as sent (s since the connection)
    caller_end: float
    agent_start: float | None  # the agent's reply began (None: no reply)
    latency: float | None  # agent_start - caller_end; below 0: it began while the caller spoke
    agent_speech: float  # s of agent speech from this turn to the next
    talk_over: bool

    @classmethod
    def of(cls, m: TurnMeasure) -> TurnResult:
        t = m.turn
        return cls(
            t.turn,
            t.step,
            t.step_name,
            t.action,
            t.label,
            t.start,
            t.end,
            m.agent_start,
            m.latency,
            m.agent_speech,
            m.talk_over,
        )

    def fields(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "step": self.step,
            "step_name": self.step_name,
            "action": self.action,
            "utterance": self.utterance,
            "caller_start": _r(self.caller_start),
            "caller_end": _r(self.caller_end),
            "agent_start": _r(self.agent_start),
            "latency": _r(self.latency),
            "agent_speech": _r(self.agent_speech),
            "talk_over": self.talk_over,
        }

    def text(self) -> str:
        head = (
            f"turn {self.turn} (step {self.step} {self.step_name!r}): caller spoke "
            f"{self.caller_start:.2f}-{self.caller_end:.2f}s"
        )
        if self.latency is None:
            reply = "no reply"
        elif self.latency < 0:
            reply = f"agent began at {self.agent_start:.2f}s, {-self.latency:.2f}s before the end"
        else:
            reply = f"agent answered at {self.agent_start:.2f}s, latency {self.latency:.2f}s"
        talk = "; talk-over" if self.talk_over else ""
        return f"{head}; {reply}; agent spoke {self.agent_speech:.2f}s{talk}"


@dataclass(frozen=True)
class BargeInResult:
    turn: int
    step: int
    step_name: str
    at: float  # the caller's speech began
    agent_start: float | None  # the agent's utterance barged into (None: it was quiet)
    stopped_at: float | None
    stop_time: float | None  # stopped_at - at
    stopped: bool  # False: still speaking when the call ended

    @classmethod
    def of(cls, b: BargeInMeasure) -> BargeInResult:
        t = b.turn
        return cls(
            t.turn,
            t.step,
            t.step_name,
            t.start,
            b.agent_start,
            b.stopped_at,
            b.stop_time,
            b.stopped,
        )

    def fields(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "step": self.step,
            "step_name": self.step_name,
            "at": _r(self.at),
            "agent_start": _r(self.agent_start),
            "stopped_at": _r(self.stopped_at),
            "stop_time": _r(self.stop_time),
            "stopped": self.stopped,
        }

    def text(self) -> str:
        head = f"turn {self.turn} (step {self.step} {self.step_name!r}): the caller began at "
        if self.agent_start is None or self.stop_time is None:
            return head + f"{self.at:.2f}s while the agent was quiet"
        head += f"{self.at:.2f}s, {self.at - self.agent_start:.2f}s into the agent's speech; "
        if not self.stopped:
            return head + f"the agent was still speaking {self.stop_time:.2f}s later, at the end"
        return head + f"the agent stopped at {self.stopped_at:.2f}s ({self.stop_time:.2f}s)"


@dataclass
class ConversationResult:
    """What `converse()` returns: per turn, per barge-in, per expectation, per call."""

    scenario: str
    uuid: str
    ended: str  # how the call ended (docs/output.md, "The endings")
    detail: str
    duration: float
    first_response: float | None
    turns: list[TurnResult]
    barge_ins: list[BargeInResult]
    talk_overs: list[TalkOver]
    dead_air: list[DeadAir]
    expectations: list[Expectation]
    agent_segments: list[tuple[float, float]]
    caller_segments: list[tuple[float, float]]
    violations: list[str] = field(default_factory=list)
    recording: Path | None = None
    end: CallEnd | None = None

    @property
    def latencies(self) -> list[float]:
        return [t.latency for t in self.turns if t.latency is not None]

    @property
    def response_p50(self) -> float | None:
        return percentile(self.latencies, 50)

    @property
    def response_p95(self) -> float | None:
        return percentile(self.latencies, 95)

    @property
    def failures(self) -> list[Expectation]:
        return [e for e in self.expectations if not e.passed]

    @property
    def broke_protocol(self) -> bool:
        return self.end.broke_protocol if self.end is not None else bool(self.violations)

    @property
    def passed(self) -> bool:
        """Every expectation passed and the application kept to the protocol."""
        return not self.failures and not self.broke_protocol

    def expectation(self, name: str) -> Expectation:
        """The expectation of that name (`no-talk-over`), step name or `expect` kind."""
        for e in self.expectations:
            if name in (e.name, e.step_name, e.expect):
                return e
        raise KeyError(f"no expectation {name!r} (there are {[e.name for e in self.expectations]})")

    def turn(self, name: str) -> TurnResult:
        """The turn of that step name."""
        for t in self.turns:
            if t.step_name == name:
                return t
        raise KeyError(f"no turn {name!r} (there are {[t.step_name for t in self.turns]})")

    def summary(self) -> str:
        """One line: the call's figures and verdicts."""
        lats = self.latencies
        parts = [f"first response {_s(self.first_response)}"]
        if self.turns:
            turns = f"{len(self.turns)} turn{'' if len(self.turns) == 1 else 's'}"
            parts.append(
                f"{turns}, response p50 {_s(percentile(lats, 50))} p95 {_s(percentile(lats, 95))}"
            )
        for b in self.barge_ins:
            how = _s(b.stop_time) if b.stopped else f"not stopped after {_s(b.stop_time)}"
            parts.append(f"barge-in stop {how}")
        parts.append(f"talk-over {len(self.talk_overs)}")
        parts.append(f"dead air {len(self.dead_air)}")
        failed = len(self.failures)
        parts.append(
            f"{len(self.expectations)} expectations: {len(self.expectations) - failed} pass, "
            f"{failed} fail"
        )
        return "; ".join(parts)

    def report(self) -> str:
        """Several lines for a failed assert: the summary, then each failure's evidence."""
        lines = [f"{self.scenario}: {self.summary()} ({self.ended} after {self.duration:.2f}s)"]
        lines += [f"  FAIL {e.name}: {e.evidence}" for e in self.failures]
        if self.broke_protocol:
            lines.append(f"  the application broke the protocol: {self.violations or self.ended}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


def call_fields(measures: Measures, expectations: list[Expectation], scenario: str) -> dict:
    """The call-end's `conversation` field, and the `conversation` event's fields."""
    failed = sum(1 for e in expectations if not e.passed)
    return {
        "scenario": scenario,
        **measures.summary(),
        "talk_over_at": [round(x.t, 3) for x in measures.talk_overs],
        "dead_air_spans": [[round(d.start, 3), round(d.end, 3)] for d in measures.dead_air],
        "expectations": len(expectations),
        "failed": failed,
        "passed": failed == 0,
    }


def events(
    t: float,
    turns: list[TurnResult],
    barge_ins: list[BargeInResult],
    expectations: list[Expectation],
    summary: str,
    fields: dict[str, Any],
) -> list[ConverseEvent]:
    """The events of a conversation, in the order they are shown, all at `t`."""
    out = [ConverseEvent("turn", t, turn.text(), turn.fields()) for turn in turns]
    out += [ConverseEvent("barge-in", t, b.text(), b.fields()) for b in barge_ins]
    out += [
        ConverseEvent("expectation", t, f"{e.verdict.upper()} {e.name}: {e.evidence}", e.fields())
        for e in expectations
    ]
    out.append(ConverseEvent("conversation", t, summary, fields))
    return out
