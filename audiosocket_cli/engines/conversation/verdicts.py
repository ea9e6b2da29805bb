"""Verdicts: each expectation of a conversation judged on its measures, and JUnit XML.

An expectation is a step's (`expect = "answer"` on a `say`, ...), a wait's own
(a wait that times out fails its step unless `optional`), or one of the two
that hold for the whole call: the agent does not talk over the caller, and
there is no dead air. Each verdict carries its evidence in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from audiosocket_cli.engines.conversation.measures import Measures
from audiosocket_cli.engines.conversation.scenario import Step

APP_ENDINGS = frozenset({"app-hangup", "app-close", "app-reset"})


@dataclass(frozen=True)
class Thresholds:
    """The limits of the verdicts (the command's --max-* and --dead-air options)."""

    max_first_response: float = 3.0
    max_response: float = 1.5
    max_barge_in_stop: float = 1.0
    dead_air: float = 2.0  # 0: dead air is not judged
    talk_over: bool = False  # True: talk-over is allowed (not judged)


@dataclass(frozen=True)
class StepRecord:
    """How a step went: when it began and ended, and how it ended."""

    step: Step
    started: float | None = None  # None: never reached
    ended: float | None = None
    outcome: str = "not-reached"  # done, timeout, cut (the call ended during it), not-reached


@dataclass(frozen=True)
class Expectation:
    name: str  # `3 'question': answer`, or `no-talk-over` for the call
    expect: str  # first-response, answer, stop, hangup, wait, no-talk-over, no-dead-air
    passed: bool
    evidence: str
    step: int | None = None
    step_name: str = ""
    measured: float | None = None
    limit: float | None = None

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def fields(self) -> dict[str, Any]:
        return {
            "expectation": self.name,
            "expect": self.expect,
            "verdict": self.verdict,
            "step": self.step,
            "step_name": self.step_name,
            "measured": None if self.measured is None else round(self.measured, 3),
            "limit": self.limit,
            "evidence": self.evidence,
        }


def judge(
    records: Sequence[StepRecord],
    measures: Measures,
    thresholds: Thresholds,
    *,
    ended: str,
    call_end: float,
) -> list[Expectation]:
    """Every expectation of the call, in the scenario's order, then the call's own."""
    out: list[Expectation] = []
    turns = {m.turn.step: m for m in measures.turns}
    barge_ins = {b.turn.step: b for b in measures.barge_ins}
    gone = f"the call ended ({ended}) at {call_end:.2f}s"
    for record in records:
        step = record.step
        if step.expect is None and not step.action.startswith("wait"):
            continue
        if step.expect is None and (step.optional or record.outcome != "timeout"):
            continue
        name = f"{step.index} {step.name!r}: {step.expect or 'wait'}"

        def verdict(
            passed: bool,
            evidence: str,
            measured: float | None = None,
            limit: float | None = None,
            *,
            _name: str = name,
            _step: Step = step,
        ) -> Expectation:
            return Expectation(
                _name,
                _step.expect or "wait",
                passed,
                evidence,
                _step.index,
                _step.name,
                measured,
                limit,
            )

        if record.outcome == "not-reached":
            out.append(verdict(False, f"not reached: {gone}"))
            continue
        if step.expect is None:  # a wait that timed out
            what = (
                "did not speak"
                if step.action == "wait-speech"
                else f"was not quiet for {step.seconds:g}s"
            )
            out.append(verdict(False, f"the agent {what} within the step's {step.timeout:g}s"))
            continue
        if step.expect == "first-response":
            limit = step.within if step.within is not None else thresholds.max_first_response
            first = measures.first_response
            if first is None:
                out.append(verdict(False, f"the agent never spoke ({gone})", None, limit))
            elif record.outcome == "timeout":
                out.append(
                    verdict(
                        False,
                        f"the agent did not speak within the step's {step.timeout:g}s "
                        f"(it first spoke at {first:.2f}s)",
                        first,
                        limit,
                    )
                )
            else:
                ok = first <= limit
                out.append(
                    verdict(
                        ok,
                        f"the agent first spoke {first:.2f}s after the connection "
                        f"({'within' if ok else 'over'} {limit:g}s)",
                        first,
                        limit,
                    )
                )
        elif step.expect == "answer":
            limit = step.within if step.within is not None else thresholds.max_response
            out.append(_answer(verdict, turns.get(step.index), limit, record, gone))
        elif step.expect == "stop":
            limit = step.within if step.within is not None else thresholds.max_barge_in_stop
            out.append(_stop(verdict, barge_ins.get(step.index), limit, record, gone))
        elif step.expect == "hangup":
            limit = step.within if step.within is not None else 0.0
            start = record.started if record.started is not None else call_end
            took = call_end - start
            if ended in APP_ENDINGS:
                ok = took <= limit
                out.append(
                    verdict(
                        ok,
                        f"the agent ended the call ({ended}) {took:.2f}s after the step began "
                        f"({'within' if ok else 'over'} {limit:g}s)",
                        took,
                        limit,
                    )
                )
            else:
                out.append(
                    verdict(
                        False,
                        f"the agent did not end the call within {limit:g}s ({ended})",
                        None,
                        limit,
                    )
                )
    if not thresholds.talk_over:
        out.append(_talk_over(measures))
    if thresholds.dead_air > 0:
        out.append(_no_dead_air(measures, thresholds.dead_air))
    return out


def _answer(verdict: Any, m: Any, limit: float, record: StepRecord, gone: str) -> Expectation:
    if m is None or not m.turn.speech:
        return verdict(False, f"nothing was said ({gone})", None, limit)
    end = m.turn.end
    if m.latency is None:
        waited = (record.ended or end) - end
        why = gone if record.outcome == "cut" else f"waited {waited:.2f}s"
        return verdict(
            False,
            f"no answer: the agent did not speak after the caller's speech ended at {end:.2f}s "
            f"({why})",
            None,
            limit,
        )
    ok = m.latency <= limit
    if m.latency < 0:
        text = (
            f"the agent answered at {m.agent_start:.2f}s, while the caller was still speaking "
            f"({-m.latency:.2f}s before the caller's speech ended at {end:.2f}s: talk-over)"
        )
    else:
        text = (
            f"the agent answered {m.latency:.2f}s after the caller's speech ended at {end:.2f}s "
            f"({'within' if ok else 'over'} {limit:g}s)"
        )
    return verdict(ok, text, m.latency, limit)


def _stop(verdict: Any, b: Any, limit: float, record: StepRecord, gone: str) -> Expectation:
    if b is None or not b.turn.speech:
        if record.outcome == "timeout":
            return verdict(
                False,
                f"nothing to barge into: the agent did not speak within the step's "
                f"{record.step.timeout:g}s",
                None,
                limit,
            )
        return verdict(False, f"the caller never barged in ({gone})", None, limit)
    at = b.turn.start
    if b.stop_time is None:
        return verdict(
            False, f"the agent was not speaking when the caller barged in at {at:.2f}s", None, limit
        )
    if not b.stopped:
        return verdict(
            False,
            f"the agent did not stop: still speaking {b.stop_time:.2f}s after the caller "
            f"barged in at {at:.2f}s, when {gone.removeprefix('the ')}",
            b.stop_time,
            limit,
        )
    ok = b.stop_time <= limit
    return verdict(
        ok,
        f"the agent stopped {b.stop_time:.2f}s after the caller barged in at {at:.2f}s "
        f"({'within' if ok else 'over'} {limit:g}s)",
        b.stop_time,
        limit,
    )


def _talk_over(measures: Measures) -> Expectation:
    found = measures.talk_overs
    if not found:
        text = "the agent never began speaking while the caller spoke"
    else:
        first = found[0]
        text = (
            f"the agent began speaking at {first.t:.2f}s, {first.into:.2f}s into the caller's "
            f"turn {first.turn.turn} ({first.turn.step_name!r})"
        )
        if len(found) > 1:
            text += f"; {len(found)} times in all"
    return Expectation("no-talk-over", "no-talk-over", not found, text, measured=len(found))


def _no_dead_air(measures: Measures, limit: float) -> Expectation:
    found = measures.dead_air
    if not found:
        text = f"no silence over {limit:g}s while the agent held the turn"
        return Expectation("no-dead-air", "no-dead-air", True, text, measured=0, limit=limit)
    worst = max(found, key=lambda d: d.seconds)
    text = (
        f"{worst.seconds:.2f}s of dead air from {worst.start:.2f}s to {worst.end:.2f}s "
        f"(over {limit:g}s)"
    )
    if len(found) > 1:
        text += f"; {len(found)} times in all"
    return Expectation(
        "no-dead-air", "no-dead-air", False, text, measured=worst.seconds, limit=limit
    )


def junit_xml(
    expectations: Sequence[Expectation], *, suite: str, duration: float, t: float = 0.0
) -> bytes:
    """JUnit XML: one testsuite for the call, a testcase per expectation."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="audiosocket converse")
    node = ET.SubElement(root, "testsuite", name=suite)
    failures = 0
    for e in expectations:
        case = ET.SubElement(
            node,
            "testcase",
            classname="audiosocket.converse",
            name=e.name,
            time="0.000",
        )
        props = ET.SubElement(case, "properties")
        ET.SubElement(props, "property", name="expect", value=e.expect)
        if e.measured is not None:
            ET.SubElement(props, "property", name="measured", value=f"{e.measured:.3f}")
        if e.limit is not None:
            ET.SubElement(props, "property", name="limit", value=f"{e.limit:g}")
        if e.passed:
            out = ET.SubElement(case, "system-out")
            out.text = f"PASS: {e.evidence}"
        else:
            failures += 1
            failure = ET.SubElement(case, "failure", message=e.evidence, type="fail")
            failure.text = e.evidence
    for element in (root, node):
        element.set("tests", str(len(expectations)))
        element.set("failures", str(failures))
        element.set("errors", "0")
        element.set("time", f"{duration:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
