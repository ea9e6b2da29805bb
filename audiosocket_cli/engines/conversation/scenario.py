"""A conversation's script: an ordered list of steps, read from TOML or given as dicts.

Read like a SIPp scenario: each step does one thing (wait for the agent, say
something, barge in, send DTMF, stay quiet, hang up), has a timeout where it
waits, may carry one expectation, and has a name, so that a failure names
its step. Every problem is a :class:`ScenarioError` naming the file, the step
and what is wrong, found before the call is placed.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHIPPED = Path(__file__).resolve().parent.parent.parent / "scenarios"
DEFAULT_SCENARIO = SHIPPED / "default.toml"

WAIT_TIMEOUT = 10.0  # s: how long a step waits on the agent unless it says `timeout`
SILENCE_FOR = 0.7  # s: `wait = "silence"` without `for`
HANGUP_WITHIN = 5.0  # s: `expect = "hangup"` without `within`
DTMF_INTERVAL = 0.1  # s between the digits of a `dtmf` step
DTMF_DIGITS = frozenset("0123456789*#ABCD")

ACTIONS = ("wait", "say", "barge_in", "dtmf", "silence", "hangup", "close")
# The expectation each action may carry, and the standalone one.
EXPECTS = {
    "wait-speech": ("first-response",),
    "say": ("answer",),
    "barge-in": ("stop",),
    "expect": ("hangup",),
}
# The keys each action takes besides `name` and the action's own.
KEYS = {
    "wait-speech": {"timeout", "expect", "within", "optional"},
    "wait-silence": {"timeout", "for", "optional"},
    "say": {"expect", "within", "timeout"},
    "barge-in": {"after_ms", "expect", "within", "timeout"},
    "dtmf": {"interval"},
    "silence": set(),
    "hangup": set(),
    "close": set(),
    "expect": {"within"},
}
TOP_KEYS = {"name", "description", "step"}


class ScenarioError(Exception):
    """A scenario that cannot run; str() is one line: file, step, problem."""

    def __init__(self, source: str, problem: str, step: int | None = None, name: str = "") -> None:
        self.source, self.problem, self.step, self.step_name = source, problem, step, name
        where = source
        if step is not None:
            where += f": step {step}" + (f" {name!r}" if name else "")
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Step:
    """One step. `action` is one of wait-speech, wait-silence, say, barge-in, dtmf,
    silence, hangup, close, expect (a standalone expectation)."""

    index: int  # from 1, in the scenario's order
    name: str
    action: str
    file: Path | None = None  # say, barge-in: the audio file
    label: str = ""  # the file as the scenario names it (a shipped name or a path)
    digits: str = ""
    seconds: float = 0.0  # silence: how long; wait-silence: how long the agent must be quiet
    interval: float = DTMF_INTERVAL
    after: float = 0.0  # barge-in: this far into the agent's utterance (s)
    timeout: float = WAIT_TIMEOUT
    expect: str | None = None  # first-response, answer, stop, hangup
    within: float | None = None  # the expectation's limit; None: the command's threshold
    optional: bool = False  # a wait that times out is not a failure

    @property
    def speaks(self) -> bool:
        return self.action in ("say", "barge-in")

    @property
    def title(self) -> str:
        """`3 'question'`: how output names the step."""
        return f"{self.index} {self.name!r}"


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    source: str = "<steps>"
    description: str = ""

    @classmethod
    def from_steps(
        cls,
        steps: Iterable[Mapping[str, Any]],
        *,
        name: str = "scenario",
        base: str | Path | None = None,
        source: str = "<steps>",
    ) -> Scenario:
        """A scenario from step tables, as in a TOML file's [[step]] list; file paths are
        relative to `base` (the current folder when None)."""
        root = Path(base) if base is not None else Path.cwd()
        parsed = tuple(_step(i, raw, root, source) for i, raw in enumerate(steps, 1))
        if not parsed:
            raise ScenarioError(source, "no steps (each step is a [[step]] table)")
        return cls(name=name, steps=parsed, source=source)

    @property
    def files(self) -> list[Path]:
        return [step.file for step in self.steps if step.file is not None]


def shipped_utterances() -> dict[str, Path]:
    """The caller utterances shipped in the package, by name."""
    return {path.stem: path for path in sorted(SHIPPED.glob("*.wav"))}


def load_scenario(path: str | Path | None = None) -> Scenario:
    """The scenario in a TOML file, or the built-in one (None)."""
    if path is None:
        return parse_scenario(DEFAULT_SCENARIO.read_text(encoding="utf-8"), "built-in", SHIPPED)
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(source, "no such file") from None
    except IsADirectoryError:
        raise ScenarioError(source, "is a directory") from None
    except UnicodeDecodeError:
        raise ScenarioError(source, "not a text file (a scenario is TOML)") from None
    except OSError as exc:
        raise ScenarioError(source, f"cannot read: {exc.strerror or exc}") from None
    return parse_scenario(text, source, path.parent)


def parse_scenario(text: str, source: str = "<string>", base: str | Path = ".") -> Scenario:
    # tomllib from 3.11; the same parser as the tomli package before (a dependency there).
    tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, f"not valid TOML: {exc}") from None
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ScenarioError(
            source, f"unknown key {unknown[0]!r} (a scenario has name, description and [[step]])"
        )
    steps = data.get("step")
    if steps is None:
        raise ScenarioError(source, "no steps (each step is a [[step]] table)")
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ScenarioError(source, "`step` must be an array of tables: [[step]]")
    name = data.get("name", Path(source).stem)
    description = data.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise ScenarioError(source, f"`{key}` must be a string")
    scenario = Scenario.from_steps(steps, name=name, base=base, source=source)
    return Scenario(scenario.name, scenario.steps, source, description)


def _step(index: int, raw: Mapping[str, Any], base: Path, source: str) -> Step:
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise ScenarioError(source, "`name` must be a string", index)

    def fail(problem: str) -> ScenarioError:
        return ScenarioError(source, problem, index, name or "")

    actions = [key for key in ACTIONS if key in raw]
    if not actions:
        if "expect" not in raw:
            unknown = sorted(set(raw) - {"name"})
            hint = f" (unknown key {unknown[0]!r})" if unknown else ""
            return _raise(fail(f"no action: give one of {', '.join(ACTIONS)}{hint}"))
        action = "expect"
    elif len(actions) > 1:
        return _raise(fail(f"one action a step, not {' and '.join(actions)}"))
    else:
        action = actions[0]
    kind = action
    if action == "wait":
        what = raw["wait"]
        if what not in ("speech", "silence"):
            return _raise(fail(f'wait = {what!r}: expected "speech" or "silence"'))
        kind = f"wait-{what}"
    elif action == "barge_in":
        kind = "barge-in"
    own = {"wait", "barge_in"} if action in ("wait", "barge_in") else {action}
    allowed = KEYS[kind] | own | {"name"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        return _raise(fail(f"unknown key {unknown[0]!r} for a {kind} step"))

    fields: dict[str, Any] = {}
    if "timeout" in raw:
        fields["timeout"] = _seconds(raw["timeout"], "timeout", fail, positive=True)
    if "within" in raw:
        fields["within"] = _seconds(raw["within"], "within", fail)
    if "optional" in raw:
        if not isinstance(raw["optional"], bool):
            return _raise(fail("`optional` must be true or false"))
        fields["optional"] = raw["optional"]
    if "expect" in raw:
        expect = raw["expect"]
        allowed_expects = EXPECTS.get(kind, ())
        if expect not in allowed_expects:
            if not allowed_expects:
                return _raise(fail(f"a {kind} step carries no expectation"))
            choices = " or ".join(f'"{e}"' for e in allowed_expects)
            return _raise(fail(f"expect = {expect!r}: a {kind} step expects {choices}"))
        fields["expect"] = expect
    elif "within" in raw:
        return _raise(fail("`within` without `expect`"))

    if kind in ("say", "barge-in"):
        fields["file"], fields["label"] = _utterance(raw[action], action, base, fail)
        if kind == "barge-in":
            after_ms = raw.get("after_ms", 0)
            fields["after"] = _seconds(after_ms, "after_ms", fail) / 1000
    elif kind == "wait-silence":
        fields["seconds"] = _seconds(raw.get("for", SILENCE_FOR), "for", fail)
    elif kind == "dtmf":
        digits = raw["dtmf"]
        if not isinstance(digits, str) or not digits:
            return _raise(fail('`dtmf` must be a string of digits, e.g. "12#"'))
        bad = [d for d in digits if d not in DTMF_DIGITS]
        if bad:
            return _raise(fail(f"dtmf = {digits!r}: {bad[0]!r} is not a DTMF digit (0-9 * # A-D)"))
        fields["digits"] = digits
        if "interval" in raw:
            fields["interval"] = _seconds(raw["interval"], "interval", fail)
    elif kind == "silence":
        fields["seconds"] = _seconds(raw["silence"], "silence", fail, positive=True)
    elif kind in ("hangup", "close"):
        if raw[action] is not True:
            return _raise(fail(f"`{action}` must be true"))
    elif kind == "expect" and "within" not in fields:
        fields["within"] = HANGUP_WITHIN
    return Step(index=index, name=name or _default_name(kind, raw), action=kind, **fields)


def _raise(error: ScenarioError) -> Any:
    raise error


def _default_name(kind: str, raw: Mapping[str, Any]) -> str:
    if kind in ("say", "barge-in"):
        return f"{kind} {raw.get('say', raw.get('barge_in'))}"
    if kind == "expect":
        return f"expect {raw['expect']}"
    return kind


def _seconds(value: Any, key: str, fail: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(f"`{key}` must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        more = "more than 0" if positive else "0 or more"
        raise fail(f"`{key}` must be {more}, not {value!r}")
    return number


def _utterance(value: Any, key: str, base: Path, fail: Any) -> tuple[Path, str]:
    """A shipped utterance's name, or a file relative to the scenario."""
    if not isinstance(value, str) or not value:
        raise fail(f"`{key}` must name an audio file or a shipped utterance")
    shipped = shipped_utterances()
    candidate = Path(value)
    if not candidate.suffix and "/" not in value and value in shipped:
        return shipped[value], value
    path = candidate if candidate.is_absolute() else base / candidate
    if not path.is_file():
        names = ", ".join(shipped)
        why = "is a directory" if path.is_dir() else "no such file"
        raise fail(f"{key} = {value!r}: {why} ({path}); shipped utterances: {names}")
    return path, value


@dataclass
class Utterance:
    """An utterance at the call's rate, and where speech is inside it (s from its start)."""

    label: str
    pcm: bytes
    rate: int
    speech: list[tuple[float, float]] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / self.rate

    @property
    def speech_start(self) -> float:
        return self.speech[0][0] if self.speech else 0.0

    @property
    def speech_end(self) -> float:
        return self.speech[-1][1] if self.speech else self.duration


def load_utterances(scenario: Scenario, rate: int) -> dict[Path, Utterance]:
    """Every file the scenario speaks, read once, resampled to `rate`, its speech found
    offline (analysis.speech.speech_segments); a ScenarioError names a file that fails."""
    from audiosocket_cli.analysis.speech import speech_segments
    from audiosocket_cli.media.audio import AudioFileError, load_pcm

    out: dict[Path, Utterance] = {}
    for step in scenario.steps:
        if step.file is None or step.file in out:
            continue
        try:
            pcm = load_pcm(step.file, rate)
        except AudioFileError as exc:
            raise ScenarioError(scenario.source, str(exc), step.index, step.name) from None
        segments = [(s.start, s.end) for s in speech_segments(pcm, rate)]
        if not segments:
            raise ScenarioError(
                scenario.source,
                f"{step.label}: no speech found in it",
                step.index,
                step.name,
            )
        out[step.file] = Utterance(step.label, pcm, rate, segments)
    return out
