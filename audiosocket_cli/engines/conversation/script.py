"""A conversation as a frame source: the scenario run one frame at a time, the agent
heard through the speech detector. No sockets, no threads of its own.

A :class:`Script` is what a caller sends: at each frame's moment it runs its
steps and gives the frame (a piece of an utterance, or silence, as a phone
line sends it), and it sends DTMF or ends the call through its
:class:`Line`. It decides on what the :class:`AgentEar` has heard so far:
the application's audio on its playout clock, fed to the speech detector as
it arrives. When the call has ended, `Script.conclude` measures both
timelines (measures.py) and judges the expectations (verdicts.py).

Two engines drive it: converse (one call on dial's threads: the ear is fed by
the receiving thread, hence its lock) and load (`--scenario`: a script per
call on the worker's loop).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from audiosocket_cli.engines.conversation.measures import (
    FRAME,
    STOP_GAP,
    CallerTurn,
    Measures,
    measure,
)
from audiosocket_cli.engines.conversation.scenario import Scenario, Step, Utterance
from audiosocket_cli.engines.conversation.verdicts import (
    Expectation,
    StepRecord,
    Thresholds,
    judge,
)
from audiosocket_cli.media.stereo import LEFT, RIGHT, StereoRecording
from audiosocket_cli.protocol.wire import Message

STEREO_FLUSH_LAG = 1.0  # s: the stereo file is written up to this far behind the call
SOUNDING = 0.1  # s: the agent's audio was loud this recently: it is speaking, not pausing


class Line(Protocol):
    """The call, as a script acts on it (from the thread or loop that asks for frames)."""

    def send_now(self, message: Message) -> None: ...

    def end_call(self, ended: str, detail: str) -> None: ...


class AgentView(NamedTuple):
    """What the agent has said so far, as the script sees it at one moment (a tuple:
    made every frame of every call, under load too)."""

    speaking: bool
    segments: tuple[tuple[float, float], ...]  # the open one last while speaking
    sounding: bool = False  # its audio is not silent now (not a pause within speech)

    @property
    def start(self) -> float | None:
        """The start of the speech going on now."""
        return self.segments[-1][0] if self.speaking and self.segments else None

    @property
    def last_end(self) -> float:
        """When the agent last stopped speaking (0: never spoke)."""
        closed = self.segments[:-1] if self.speaking else self.segments
        return closed[-1][1] if closed else 0.0

    def began_since(self, t: float) -> bool:
        return any(start >= t for start, _ in self.segments)


class AgentEar:
    """The application's audio as it arrives (receiver thread), the script's view of it
    (sender thread): one lock between them."""

    def __init__(self, stereo: StereoRecording | None = None, **detector: Any) -> None:
        from audiosocket_cli.analysis.speech import SpeechDetector

        self.lock = threading.Lock()
        self.detector = SpeechDetector(**detector)
        self.stereo = stereo
        self._play_end = float("-inf")
        self._loud_end = float("-inf")
        # The segments as a tuple, made again only when they changed.
        self._seen: tuple[int, float, float] = (0, 0.0, 0.0)
        self._segments: tuple[tuple[float, float], ...] = ()

    def heard(self, t: float, payload: bytes, rate: int) -> None:
        seconds = (len(payload) // 2) / rate
        # Sound: a sample's high byte neither 0x00 nor 0xff (peak above -42 dBFS).
        loud = bool(payload[1::2].translate(None, b"\x00\xff"))
        with self.lock:
            play = max(t, self._play_end)  # the detector's playout clock, the same rule
            self.detector.feed(t, payload, rate)
            self._play_end = play + seconds
            if loud:
                self._loud_end = self._play_end
            if self.stereo is not None:
                self.stereo.add(RIGHT, play, payload, rate)

    def view(self, now: float) -> AgentView:
        with self.lock:
            detector = self.detector
            detector.advance(now)
            segments = detector.segments
            if segments:
                last = segments[-1]
                seen = (len(segments), last.start, last.end)
                if seen != self._seen:
                    self._seen = seen
                    self._segments = tuple((s.start, s.end) for s in segments)
            return AgentView(detector.speaking, self._segments, now - self._loud_end < SOUNDING)

    def finish(self) -> list[tuple[float, float]]:
        """The agent's speech segments, once the call has ended. Not clipped at the call's
        end: audio that came ahead of the playout clock (a burst) was heard by the
        script as it came, and is measured where it plays."""
        with self.lock:
            self.detector.finish()
            return [(s.start, s.end) for s in self.detector.segments]


@dataclass
class _Turn:
    """An utterance being sent."""

    number: int
    step: Step
    utterance: Utterance
    sent_start: float
    position: int = 0  # bytes sent
    sent_end: float | None = None  # set when its last frame went out
    sent_until: float = 0.0  # the end of the last frame sent

    def measured(self) -> CallerTurn:
        start = self.sent_start
        until = self.sent_end if self.sent_end is not None else self.sent_until
        speech = tuple(
            (start + a, min(start + b, until))
            for a, b in self.utterance.speech
            if start + a < until
        )
        return CallerTurn(
            turn=self.number,
            step=self.step.index,
            step_name=self.step.name,
            action=self.step.action,
            label=self.utterance.label,
            sent_start=start,
            sent_end=until,
            speech=speech,
        )

    @property
    def speech_start(self) -> float:
        return self.sent_start + self.utterance.speech_start

    @property
    def speech_end(self) -> float:
        return self.sent_start + self.utterance.speech_end


@dataclass
class _Progress:
    step: Step
    started: float | None = None
    ended: float | None = None
    outcome: str = "not-reached"
    turn: _Turn | None = None
    digits_sent: int = 0
    next_digit: float = 0.0

    def record(self) -> StepRecord:
        return StepRecord(self.step, self.started, self.ended, self.outcome)


class Script:
    """The scenario as a frame source: `next_frame` runs the steps at each frame's moment
    and returns what the caller sends then."""

    def __init__(
        self,
        scenario: Scenario,
        utterances: Mapping[Path, Utterance],
        ear: AgentEar,
        frame_seconds: float,
        stereo: StereoRecording | None = None,
        start: float = 0.0,
    ) -> None:
        self.scenario = scenario
        self.start = start  # the first frame's time since the connection
        self.utterances = utterances
        self.ear = ear
        self.frame_seconds = frame_seconds
        self.stereo = stereo
        self.caller: Line | None = None
        self.progress = [_Progress(step) for step in scenario.steps]
        self.turns: list[_Turn] = []
        self.quiet: list[tuple[float, float]] = []
        self.current = 0
        self.playing: _Turn | None = None
        self.frame = 0
        self.finished = False

    # The frame source.

    def next_frame(self, rate: int, samples: int) -> bytes | None:
        if self.finished:
            return None
        m = self.start + self.frame * self.frame_seconds
        self.frame += 1
        self._run(m)
        if self.finished:
            return None
        pcm = self._audio(m, rate, samples)
        if self.stereo is not None:
            with self.ear.lock:
                self.stereo.add(LEFT, m, pcm, rate)
                if self.frame % 25 == 0:
                    self.stereo.flush(m - STEREO_FLUSH_LAG)
        return pcm

    def _audio(self, m: float, rate: int, samples: int) -> bytes:
        size = samples * 2
        turn = self.playing
        if turn is None:
            return bytes(size)
        pcm = turn.utterance.pcm
        chunk = pcm[turn.position : turn.position + size]
        turn.position += len(chunk)
        turn.sent_until = m + len(chunk) / 2 / rate
        if turn.position >= len(pcm):
            turn.sent_end = turn.sent_until
            self.playing = None
        return chunk + bytes(size - len(chunk))  # a phone line's frames are whole

    # The steps.

    def _run(self, m: float) -> None:
        view: AgentView | None = None
        while self.current < len(self.progress):
            p = self.progress[self.current]
            if p.started is None:
                p.started = m
                p.outcome = "cut"  # until it ends
                if self._begin(p, m):
                    return
            if view is None:
                view = self.ear.view(m)
            outcome = self._poll(p, m, view)
            if outcome is None:
                return
            p.outcome, p.ended = outcome, m
            if p.step.action == "silence":
                self.quiet.append((p.started, m))
            self.current += 1
        self._end("caller-close", "the scenario ended")

    def _begin(self, p: _Progress, m: float) -> bool:
        """Start a step; True if it ended the call."""
        step = p.step
        if step.action == "say":
            self._say(p, m)
        elif step.action == "dtmf":
            p.next_digit = m
        elif step.action == "hangup":
            p.outcome, p.ended = "done", m
            self._caller().send_now(Message.hangup())
            self._end("caller-hangup", f"step {step.title}")
            return True
        elif step.action == "close":
            p.outcome, p.ended = "done", m
            self._end("caller-close", f"step {step.title}")
            return True
        return False

    def _say(self, p: _Progress, m: float) -> None:
        assert p.step.file is not None
        turn = _Turn(len(self.turns) + 1, p.step, self.utterances[p.step.file], m)
        self.turns.append(turn)
        p.turn = self.playing = turn

    def _poll(self, p: _Progress, m: float, agent: AgentView) -> str | None:
        """The step's outcome if it is over at `m` (done or timeout), else None."""
        step, waited = p.step, m - (p.started or 0.0)
        action = step.action
        if action == "wait-speech":
            if agent.speaking:
                return "done"
            return "timeout" if waited >= step.timeout else None
        if action == "wait-silence":
            if not agent.speaking and m - agent.last_end >= step.seconds:
                return "done"
            return "timeout" if waited >= step.timeout else None
        if action == "say":
            turn = p.turn
            assert turn is not None
            if turn.sent_end is None:
                return None
            if step.expect != "answer":
                return "done"
            if agent.began_since(turn.speech_start - FRAME):
                return "done"
            return "timeout" if m - turn.speech_end >= step.timeout else None
        if action == "barge-in":
            turn = p.turn
            if turn is None:
                # Into the agent's own speech: not speech it began while the caller spoke.
                start, spoke = agent.start, self._last_speech_end()
                into = start is not None and start >= spoke - FRAME and m >= start + step.after
                if into and agent.sounding:
                    self._say(p, m)
                    return None
                return "timeout" if waited >= step.timeout else None
            if turn.sent_end is None:
                return None
            if not agent.speaking and m - agent.last_end >= STOP_GAP:
                return "done"
            return "done" if m - turn.sent_start >= step.timeout else None
        if action == "dtmf":
            while p.digits_sent < len(step.digits) and m >= p.next_digit - 1e-9:
                self._caller().send_now(Message.dtmf(step.digits[p.digits_sent]))
                p.digits_sent += 1
                p.next_digit += step.interval
            return "done" if p.digits_sent == len(step.digits) else None
        if action == "silence":
            return "done" if waited >= step.seconds - 1e-9 else None
        if action == "expect":  # hangup: the call ends under us if the agent does it
            return "timeout" if waited >= (step.within or 0.0) + self.frame_seconds else None
        raise AssertionError(f"unknown action {action!r}")

    def _last_speech_end(self) -> float:
        """When the caller's last utterance, said in full, stopped being speech."""
        for turn in reversed(self.turns):
            if turn.sent_end is not None:
                return turn.speech_end
        return 0.0

    def _caller(self) -> Line:
        assert self.caller is not None
        return self.caller

    def _end(self, ended: str, detail: str) -> None:
        self.finished = True
        self._caller().end_call(ended, detail)

    # The end.

    def conclude(self, t: float, ended: str, thresholds: Thresholds) -> Concluded:
        """Once the call has ended (at `t`, how: `ended`): the two timelines measured and
        every expectation judged."""
        for p in self.progress:  # what was not reached stays so; what was going on was cut
            if p.started is not None and p.ended is None:
                p.outcome = "cut"
        agent = self.ear.finish()
        turns = [turn.measured() for turn in self.turns]
        measures = measure(turns, agent, call_end=t, quiet=self.quiet, dead_air=thresholds.dead_air)
        records = [p.record() for p in self.progress]
        expectations = judge(records, measures, thresholds, ended=ended, call_end=t)
        return Concluded(measures, expectations, agent, turns)


@dataclass(frozen=True)
class Concluded:
    """A conversation's figures and verdicts, from Script.conclude."""

    measures: Measures
    expectations: list[Expectation]
    agent: list[tuple[float, float]]  # the agent's speech segments
    turns: list[CallerTurn]  # the caller's
