"""Verdicts and results of `check`: what a case found, and the report of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from audiosocket_cli.net.address import Address

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
VERDICTS = (PASS, WARN, FAIL, SKIP)
SECTIONS = {
    1: "Framing",
    2: "A real Asterisk call",
    3: "What the application sends back",
    4: "Hostile peer (robustness)",
}
ROBUSTNESS = 4  # the section counted apart in the summary


@dataclass
class Outcome:
    """What a case found: a verdict, a one-line reason, the evidence and its moment."""

    verdict: str
    reason: str
    evidence: str = ""
    t: float | None = None  # seconds into the case's call at which the evidence was seen
    figures: dict[str, Any] = field(default_factory=dict)  # measured numbers, for machines


def passed(reason: str, evidence: str = "", t: float | None = None) -> Outcome:
    return Outcome(PASS, reason, evidence, t)


def warned(reason: str, evidence: str = "", t: float | None = None) -> Outcome:
    return Outcome(WARN, reason, evidence, t)


def failed(reason: str, evidence: str = "", t: float | None = None) -> Outcome:
    return Outcome(FAIL, reason, evidence, t)


def skipped(reason: str) -> Outcome:
    return Outcome(SKIP, reason)


@dataclass
class Result:
    id: str
    section: int
    name: str
    verdict: str
    reason: str
    evidence: str
    t: float | None
    duration: float
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "section": self.section,
            "section_name": SECTIONS[self.section],
            "name": self.name,
            "verdict": self.verdict,
            "reason": self.reason,
            "evidence": self.evidence,
            "t": None if self.t is None else round(self.t, 6),
            "duration": round(self.duration, 3),
        }
        if self.figures:
            out["figures"] = self.figures
        return out


class Unreachable(Exception):
    """The application could not be reached at all: nothing was checked."""


@dataclass
class Report:
    address: Address
    results: list[Result]
    answers: bool
    duration: float
    halted: str = ""  # why the run stopped checking (the application died, refused calls)

    def counts(self, robustness: bool | None = None) -> dict[str, int]:
        out = dict.fromkeys(VERDICTS, 0)
        for r in self.results:
            if robustness is None or (r.section == ROBUSTNESS) == robustness:
                out[r.verdict] += 1
        return out

    def failed(self, strict: bool = False) -> bool:
        bad = (FAIL, WARN) if strict else (FAIL,)
        return bool(self.halted) or any(r.verdict in bad for r in self.results)

    def summary(self) -> str:
        def tally(counts: dict[str, int]) -> str:
            return ", ".join(f"{n} {v}" for v, n in counts.items() if n or v != SKIP)

        main = self.counts(False)
        text = f"{sum(main.values())} cases: {tally(main)}"
        hostile = self.counts(True)
        if sum(hostile.values()):
            text += f"; robustness {sum(hostile.values())} cases: {tally(hostile)}"
        answer = "answers with audio" if self.answers else "sends no audio back"
        text += f"; in {self.duration:.1f}s against {self.address} (it {answer})"
        if self.halted:
            text += f"; {self.halted}"
        return text
