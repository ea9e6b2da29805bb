"""The scripted caller: a scenario played on the dial engine, the agent heard as it speaks.

The call is dial's (engines.dial.Caller): the same session and rules, the
same drift-free 20 ms frames, the same output. What it sends comes from a
:class:`Script`, a frame source that runs the scenario one frame at a time,
at each frame's moment: it says an utterance frame by frame, and sends
silence frames when the caller is quiet, as a phone line does. It decides on
what the :class:`AgentEar` has heard so far: the application's audio laid on
its playout clock and fed to the speech detector (analysis.speech) as it
arrives. When the call has ended, the two timelines are measured
(measures.py), the expectations judged (verdicts.py), and the events shown
before the call's end.
"""

from __future__ import annotations

import threading
import uuid as uuid_lib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from audiosocket_cli.engines.call import CallReport
from audiosocket_cli.engines.converse.measures import FRAME, STOP_GAP, CallerTurn, measure
from audiosocket_cli.engines.converse.results import (
    BargeInResult,
    ConversationResult,
    TurnResult,
    call_fields,
    events,
)
from audiosocket_cli.engines.converse.scenario import (
    Scenario,
    Step,
    Utterance,
    load_scenario,
    load_utterances,
)
from audiosocket_cli.engines.converse.verdicts import Expectation, StepRecord, Thresholds, judge
from audiosocket_cli.engines.dial import Caller, CallPlan
from audiosocket_cli.media.stereo import LEFT, RIGHT, StereoRecording
from audiosocket_cli.net.address import Address, parse_address
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.session import INACTIVITY, Ended, Rules
from audiosocket_cli.protocol.wire import AUDIO_RATES, Message

DEFAULT_PORT = 9092
STEREO_FLUSH_LAG = 1.0  # s: the stereo file is written up to this far behind the call
DISTURBED = 0.02  # s: our sends this late say the machine kept us from measuring to a frame
SOUNDING = 0.1  # s: the agent's audio was loud this recently: it is speaking, not pausing


@dataclass(frozen=True)
class AgentView:
    """What the agent has said so far, as the script sees it at one moment."""

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
            self.detector.advance(now)
            return AgentView(
                self.detector.speaking,
                tuple((s.start, s.end) for s in self.detector.segments),
                now - self._loud_end < SOUNDING,
            )

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


class ScriptedCaller(Caller):
    """dial's Caller, with what a script needs from the sending thread: send a message
    now, end the call now."""

    def send_now(self, message: Message) -> None:
        self._send(message)

    def end_call(self, ended: str, detail: str) -> None:
        self._end(ended, detail)


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
    ) -> None:
        self.scenario = scenario
        self.utterances = utterances
        self.ear = ear
        self.frame_seconds = frame_seconds
        self.stereo = stereo
        self.caller: ScriptedCaller | None = None
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
        m = self.frame * self.frame_seconds
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

    def _caller(self) -> ScriptedCaller:
        assert self.caller is not None
        return self.caller

    def _end(self, ended: str, detail: str) -> None:
        self.finished = True
        self._caller().end_call(ended, detail)


class Conversation:
    """One call with a scenario: `run()` places it and returns its ConversationResult;
    net.transport.ConnectError if the application cannot be reached."""

    def __init__(
        self,
        address: Address,
        scenario: Scenario,
        *,
        output: Output,
        rate: int = 8000,
        frame_ms: float = 20.0,
        uuid: str | None = None,
        thresholds: Thresholds | None = None,
        rules: Rules | None = None,
        record: str | Path | None = None,
        pcap_file: Any = None,
        on_connected: Any = None,
        detector: Mapping[str, Any] | None = None,
        utterances: Mapping[Path, Utterance] | None = None,
        monitor: Any = None,
    ) -> None:
        self.address = address
        self.scenario = scenario
        self.output = output
        self.rate = rate
        self.frame_ms = frame_ms
        self.uuid = uuid or str(uuid_lib.uuid4())
        self.thresholds = thresholds or Thresholds()
        self.rules = rules or Rules(inactivity=INACTIVITY)
        self.record = Path(record) if record is not None else None
        self.pcap_file = pcap_file
        self.on_connected = on_connected
        self.detector = dict(detector or {})
        self.utterances = utterances
        self.monitor = monitor  # plays the application's audio (media.monitor.Monitor)
        self.result: ConversationResult | None = None
        self._stereo_warned = False

    def run(self) -> ConversationResult:
        utterances = self.utterances or load_utterances(self.scenario, self.rate)
        stereo = StereoRecording(self.record, self.rate) if self.record is not None else None
        ear = AgentEar(stereo, **self.detector)
        plan = CallPlan(self.address, self.uuid, rate=self.rate, frame_ms=self.frame_ms)
        script = Script(self.scenario, utterances, ear, plan.frame_seconds, stereo)
        plan.source = script
        plan.source_name = f"scenario:{self.scenario.name}"
        plan.rules = self.rules
        self._script, self._ear, self._stereo = script, ear, stereo
        caller = ScriptedCaller(
            plan,
            self.output,
            on_connected=self.on_connected,
            monitor=self.monitor,
            start_text=(
                f"to {self.address} rate={self.rate} frame={self.frame_ms:g}ms "
                f"scenario={self.scenario.name!r} ({len(self.scenario.steps)} steps)"
            ),
            start_fields={
                "uuid": self.uuid,
                "peer": str(self.address),
                "rate": self.rate,
                "frame_ms": self.frame_ms,
                "source": plan.source_name,
                "scenario": self.scenario.name,
            },
            before_start=self._before_start,
            end_fields=self._end_fields,
            pcap_file=self.pcap_file,
        )
        script.caller = caller
        try:
            end = caller.run()
        finally:
            if stereo is not None:
                stereo.close()  # whole however the call went (report.finish closes it too)
        assert self.result is not None
        self.result.end = end
        self.result.violations = list(end.violations)
        return self.result

    def _before_start(self, report: CallReport) -> None:
        """Hear the application's audio with its arrival time, as the report counts it."""
        ear, counted = self._ear, report.message

        def message(t: float, direction: str, message: Message) -> None:
            counted(t, direction, message)
            if direction == "<" and message.payload and message.kind in AUDIO_RATES:
                ear.heard(t, message.payload, AUDIO_RATES[message.kind])
                self._stereo_check(report, t)

        report.message = message  # type: ignore[method-assign]
        if self._stereo is not None:
            # A recording of the call: closed, listed and marked partial with the others.
            report.recordings["stereo"] = cast(Any, _StereoAsRecording(self._stereo))

    def _stereo_check(self, report: CallReport, t: float) -> None:
        stereo = self._stereo
        if stereo is not None and stereo.error and not self._stereo_warned:
            self._stereo_warned = True
            report.warning(t, f"recording stopped: {stereo.error}")

    def _end_fields(self, report: CallReport, ended: Ended) -> dict[str, Any]:
        """At the call's end, before its call-end: measure, judge, show; the call-end's
        `conversation` field. A failure here must not cost the call its end."""
        try:
            return self._conclude(report, ended)
        except Exception as exc:  # a bug: said, and the call still ends (and fails)
            why = f"converse could not measure the call: {type(exc).__name__}: {exc}"
            report.warning(ended.t, why, code="converse-failed", violation=False)
            failure = Expectation("measures", "wait", False, why)
            self.result = ConversationResult(
                self.scenario.name, self.uuid, ended.ended, ended.detail, ended.t, None,
                [], [], [], [], [failure], [], [],
            )  # fmt: skip
            return {}

    def _conclude(self, report: CallReport, ended: Ended) -> dict[str, Any]:
        t = ended.t
        script = self._script
        for p in script.progress:  # what was not reached stays so; what was going on was cut
            if p.started is not None and p.ended is None:
                p.outcome = "cut"
        agent = self._ear.finish()
        turns = [turn.measured() for turn in script.turns]
        measures = measure(
            turns,
            agent,
            call_end=t,
            quiet=script.quiet,
            dead_air=self.thresholds.dead_air,
        )
        records = [p.record() for p in script.progress]
        expectations = judge(records, measures, self.thresholds, ended=ended.ended, call_end=t)
        turn_results = [TurnResult.of(m) for m in measures.turns]
        barge_ins = [BargeInResult.of(b) for b in measures.barge_ins]
        self.result = ConversationResult(
            scenario=self.scenario.name,
            uuid=self.uuid,
            ended=ended.ended,
            detail=ended.detail,
            duration=t,
            first_response=measures.first_response,
            turns=turn_results,
            barge_ins=barge_ins,
            talk_overs=measures.talk_overs,
            dead_air=measures.dead_air,
            expectations=expectations,
            agent_segments=agent,
            caller_segments=[s for turn in turns for s in turn.speech],
            recording=self.record,
        )
        caller = script.caller
        lag = caller.max_send_lag if caller is not None else 0.0
        if lag > DISTURBED:
            report.warning(
                t,
                f"measurement disturbed: our own sends were up to {lag * 1000:.0f} ms late "
                "(a busy machine); the times of the application's speech may be late by as much",
                code="measurement-disturbed",
                violation=False,
            )
        fields = call_fields(measures, expectations, self.scenario.name)
        if self._stereo is not None:
            self._stereo_check(report, t)
            fields["stereo"] = str(self.record)
        summary = self.result.summary()
        for event in events(t, turn_results, barge_ins, expectations, summary, fields):
            self.output.emit(report.info, cast(Any, event))
        return {"conversation": fields}


class _StereoAsRecording:
    """The stereo file as the call report's recordings are: paths, partial, close."""

    def __init__(self, stereo: StereoRecording) -> None:
        self.stereo = stereo

    @property
    def paths(self) -> list[Path]:
        return [self.stereo.path]

    @property
    def partial(self) -> bool:
        return self.stereo.partial

    @property
    def error(self) -> str | None:
        return self.stereo.error

    def close(self) -> None:
        self.stereo.close()


def converse(
    address: str | Address,
    scenario: Scenario | str | Path | Sequence[Mapping[str, Any]] | None = None,
    *,
    rate: int = 8000,
    uuid: str | None = None,
    record: str | Path | None = None,
    thresholds: Thresholds | None = None,
    output: Output | None = None,
    rules: Rules | None = None,
    frame_ms: float = 20.0,
    **limits: Any,
) -> ConversationResult:
    """Hold one scripted conversation with the application at `address` (HOST:PORT,
    [IPv6]:PORT or PORT) and return what it measured and judged.

    `scenario`: a Scenario, a TOML file's path, a list of step tables (as a TOML
    file's [[step]]s, paths relative to the current folder), or None for the
    built-in one. `limits` set single thresholds: max_first_response,
    max_response, max_barge_in_stop, dead_air, talk_over. `record`: a stereo WAV
    of the call (caller left, agent right). `output`: where the call is shown
    (none by default). Raises ScenarioError for a bad scenario and
    net.transport.ConnectError when nothing answers at `address`.
    """
    from dataclasses import replace

    if isinstance(address, str):
        address = parse_address(address, DEFAULT_PORT)
    if scenario is None or isinstance(scenario, (str, Path)):
        scenario = load_scenario(scenario)
    elif not isinstance(scenario, Scenario):
        scenario = Scenario.from_steps(scenario)
    limits_given = thresholds or Thresholds()
    if limits:
        limits_given = replace(limits_given, **limits)
    conversation = Conversation(
        address,
        scenario,
        output=output if output is not None else Output([]),
        rate=rate,
        frame_ms=frame_ms,
        uuid=uuid,
        thresholds=limits_given,
        rules=rules,
        record=record,
    )
    return conversation.run()
