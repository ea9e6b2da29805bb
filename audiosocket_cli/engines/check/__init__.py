"""The conformance and robustness suite of `audiosocket check`: cases, runner, verdicts.

Each case is one short call (or a few) placed as Asterisk places it, on a
socket of its own (probe.Probe); every verdict about what the application
sent is read off an Asterisk-side protocol.session.Session and
analysis.stats.DirectionStats, so `check` judges exactly as `dial` does.
The modules: results (verdicts), probe (one call), judge (how a call is
judged), a module of cases per section, suite (the cases in order), runner
(one at a time, the application's health between cases), render (lines,
JSON, JUnit, a table).
"""

from audiosocket_cli.engines.check.probe import (
    DEFAULT_ANSWER_TIMEOUT,
    DEFAULT_TIMEOUT,
    Case,
)
from audiosocket_cli.engines.check.render import json_line, junit_xml, plain_line, print_table
from audiosocket_cli.engines.check.results import (
    FAIL,
    PASS,
    SECTIONS,
    SKIP,
    VERDICTS,
    WARN,
    Outcome,
    Report,
    Result,
    Unreachable,
)
from audiosocket_cli.engines.check.runner import run_check
from audiosocket_cli.engines.check.suite import BY_ID, CASES, case_list, select_cases

__all__ = [
    "BY_ID",
    "CASES",
    "DEFAULT_ANSWER_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "FAIL",
    "PASS",
    "SECTIONS",
    "SKIP",
    "VERDICTS",
    "WARN",
    "Case",
    "Outcome",
    "Report",
    "Result",
    "Unreachable",
    "case_list",
    "json_line",
    "junit_xml",
    "plain_line",
    "print_table",
    "run_check",
    "select_cases",
]
