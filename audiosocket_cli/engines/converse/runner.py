"""The scripted caller: a scenario played on the dial engine, the agent heard as it speaks.

The call is dial's (engines.dial.Caller): the same session and rules, the
same drift-free 20 ms frames, the same output. What it sends comes from a
conversation.script.Script, the scenario as a frame source run at each
frame's moment; the application's audio reaches its AgentEar from the
receiving thread, with its arrival time as the call report counts it. When the
call has ended, the script measures and judges, and the events are shown
before the call's end.
"""

from __future__ import annotations

import uuid as uuid_lib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from audiosocket_cli.engines.call import CallReport
from audiosocket_cli.engines.conversation.results import (
    BargeInResult,
    ConversationResult,
    TurnResult,
    call_fields,
    events,
)
from audiosocket_cli.engines.conversation.scenario import (
    Scenario,
    Utterance,
    load_scenario,
    load_utterances,
)
from audiosocket_cli.engines.conversation.script import AgentEar, Script
from audiosocket_cli.engines.conversation.verdicts import Expectation, Thresholds
from audiosocket_cli.engines.dial import Caller, CallPlan
from audiosocket_cli.media.stereo import StereoRecording
from audiosocket_cli.net.address import Address, parse_address
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.session import INACTIVITY, Ended, Rules
from audiosocket_cli.protocol.wire import AUDIO_RATES, Message

DEFAULT_PORT = 9092
DISTURBED = 0.02  # s: our sends this late say the machine kept us from measuring to a frame


class ScriptedCaller(Caller):
    """dial's Caller, with what a script needs from the sending thread: send a message
    now, end the call now."""

    def send_now(self, message: Message) -> None:
        self._send(message)

    def end_call(self, ended: str, detail: str) -> None:
        self._end(ended, detail)


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
        self._caller: ScriptedCaller | None = None

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
        script.caller = self._caller = caller
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
        concluded = script.conclude(t, ended.ended, self.thresholds)
        measures, expectations = concluded.measures, concluded.expectations
        agent, turns = concluded.agent, concluded.turns
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
        lag = self._caller.max_send_lag if self._caller is not None else 0.0
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
