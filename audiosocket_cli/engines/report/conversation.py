"""A scripted conversation in the report: what a `converse --trace` file says of it.

`converse` writes, before a call's `call-end`, a `turn` event for each thing
the caller said, a `barge-in` for each barge-in, an `expectation` for each
verdict and a `conversation` with the call's figures (docs/converse.md). The
report reads them back as they are: the caller's lane is the turns (from the
first speech of each utterance to its last), the figures and verdicts are the
events' own. The agent's lane is measured here from the application's audio,
as `converse` measured it: the speech detector (analysis.speech) on the
playout clock, fed each '<' audio message with its arrival time. Memory stays
bounded: the detector keeps segments, not audio.

The detector runs only for a call whose `call-start` names a scenario (what
`converse` writes), so other calls cost nothing. A trace that has the events
but no such `call-start` still gets the lanes: the agent's from the turns'
reply starts and speech seconds, said to be so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EVENTS = frozenset({"turn", "barge-in", "expectation", "conversation"})


@dataclass(frozen=True)
class Turn:
    """One thing the caller said (a `turn` event)."""

    turn: int
    step_name: str
    action: str  # say, barge-in
    utterance: str
    caller_start: float
    caller_end: float
    agent_start: float | None
    latency: float | None  # agent_start - caller_end; below 0: it began while the caller spoke
    agent_speech: float
    talk_over: bool

    @property
    def label(self) -> str:
        return self.step_name or self.utterance or f"turn {self.turn}"


@dataclass(frozen=True)
class BargeIn:
    """A barge-in (a `barge-in` event): the caller began at `at`, the agent stopped at
    `stopped_at` (None: it was quiet, or still speaking at the end)."""

    turn: int
    step_name: str
    at: float
    agent_start: float | None
    stopped_at: float | None
    stop_time: float | None
    stopped: bool


@dataclass(frozen=True)
class Verdict:
    """An `expectation` event: its name, pass or fail, and the evidence in one line."""

    name: str
    expect: str
    passed: bool
    evidence: str
    measured: Any = None
    limit: Any = None


@dataclass
class ConversationData:
    """Everything the page shows of one call's conversation."""

    detect: bool = True  # measure the agent's speech from its audio
    scenario: str = ""
    turns: list[Turn] = field(default_factory=list)
    barge_ins: list[BargeIn] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # the `conversation` event's
    summary: str = ""  # its text
    agent: list[tuple[float, float]] = field(default_factory=list)  # the agent's speech
    agent_measured: bool = False  # from its audio (else from the turn events)
    _detector: Any = None

    @property
    def present(self) -> bool:
        """The input holds this conversation's events."""
        return bool(self.turns or self.verdicts or self.figures)

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.passed]

    def audio(self, t: float, payload: bytes, rate: int) -> None:
        """One audio message from the application, as it arrived."""
        if not self.detect:
            return
        if self._detector is None:
            from audiosocket_cli.analysis.speech import SpeechDetector

            self._detector = SpeechDetector()  # converse's own settings
        self._detector.feed(t, payload, rate)

    def event(self, name: str, text: str, fields: dict[str, Any]) -> None:
        """A `turn`, `barge-in`, `expectation` or `conversation` event's fields."""
        if name == "turn":
            self.turns.append(
                Turn(
                    turn=int(fields.get("turn") or len(self.turns) + 1),
                    step_name=str(fields.get("step_name") or ""),
                    action=str(fields.get("action") or "say"),
                    utterance=str(fields.get("utterance") or ""),
                    caller_start=_number(fields.get("caller_start")) or 0.0,
                    caller_end=_number(fields.get("caller_end")) or 0.0,
                    agent_start=_number(fields.get("agent_start")),
                    latency=_number(fields.get("latency")),
                    agent_speech=_number(fields.get("agent_speech")) or 0.0,
                    talk_over=bool(fields.get("talk_over")),
                )
            )
        elif name == "barge-in":
            at = _number(fields.get("at"))
            if at is None:
                return
            self.barge_ins.append(
                BargeIn(
                    turn=int(fields.get("turn") or 0),
                    step_name=str(fields.get("step_name") or ""),
                    at=at,
                    agent_start=_number(fields.get("agent_start")),
                    stopped_at=_number(fields.get("stopped_at")),
                    stop_time=_number(fields.get("stop_time")),
                    stopped=bool(fields.get("stopped")),
                )
            )
        elif name == "expectation":
            self.verdicts.append(
                Verdict(
                    name=str(fields.get("expectation") or text),
                    expect=str(fields.get("expect") or ""),
                    passed=fields.get("verdict") == "pass",
                    evidence=str(fields.get("evidence") or ""),
                    measured=fields.get("measured"),
                    limit=fields.get("limit"),
                )
            )
        elif name == "conversation":
            self.figures = dict(fields)
            self.summary = text
            self.scenario = str(fields.get("scenario") or self.scenario)

    def close(self) -> None:
        """The input is read: the agent's speech segments, measured or from the turns."""
        if self._detector is not None:
            self._detector.finish()
            self.agent = [(s.start, s.end) for s in self._detector.segments]
            self.agent_measured = True
            self._detector = None
        elif not self.agent_measured:
            # Each reply, as long as the agent spoke after that turn (an approximation).
            self.agent = [
                (turn.agent_start, turn.agent_start + turn.agent_speech)
                for turn in self.turns
                if turn.agent_start is not None and turn.agent_speech > 0
            ]

    @property
    def talk_over_at(self) -> list[float]:
        values = (_number(v) for v in self.figures.get("talk_over_at") or [])
        return [x for x in values if x is not None]

    @property
    def dead_air_spans(self) -> list[tuple[float, float]]:
        spans = []
        for span in self.figures.get("dead_air_spans") or []:
            try:
                start, end = (float(v) for v in span)
            except (TypeError, ValueError):
                continue
            spans.append((start, end))
        return spans

    @property
    def first_response(self) -> float | None:
        return _number(self.figures.get("first_response"))

    @property
    def end(self) -> float:
        """The last moment the conversation's lanes reach."""
        ends = [end for _, end in self.agent]
        ends += [t.caller_end for t in self.turns]
        ends += [b.stopped_at for b in self.barge_ins if b.stopped_at is not None]
        return max(ends, default=0.0)

    def figure_rows(self) -> list[tuple[str, str]]:
        """The call's figures as (label, value) rows, from the `conversation` event."""
        f = self.figures

        def seconds(name: str) -> str:
            value = _number(f.get(name))
            return "-" if value is None else f"{value:.3f} s"

        rows = [
            ("time to first response", seconds("first_response")),
            ("turns", str(f.get("turns", len(self.turns)))),
            ("response latency p50", seconds("response_p50")),
            ("response latency p95", seconds("response_p95")),
            ("response latency max", seconds("response_max")),
            ("barge-ins", str(f.get("barge_ins", len(self.barge_ins)))),
            ("longest barge-in stop", seconds("barge_in_stop_max")),
            ("talk-overs", str(f.get("talk_overs", "-"))),
            ("dead air", str(f.get("dead_air", "-"))),
            ("agent speech", seconds("agent_speech")),
        ]
        passed = sum(v.passed for v in self.verdicts)
        rows.append(("expectations", f"{passed} pass, {len(self.verdicts) - passed} fail"))
        return rows


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
