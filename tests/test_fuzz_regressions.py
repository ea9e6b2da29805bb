"""Every fuzzing input on file, run again: seeds and past crashes raise only what is allowed.

The inputs are tests/fuzz_corpus/TARGET/* (the seeds) and tests/fuzz_crashes/TARGET/*
(each input that once broke a target); the targets and what each may raise are
benchmarks/fuzz.py's. One more test runs the fuzzer itself for a few seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.fuzz import CRASHES, SEEDS, TARGETS, Run, replay  # noqa: E402

# Crashes in modules this test's author may not change, kept here until they are fixed
# (file name -> the bug). Fixing one makes its test pass unexpectedly: remove it then.
_INFINITE = "files/trace.py: int() of an infinite JSON number raises OverflowError"
_DEEP = "files/trace.py: json.loads of deeply nested JSON raises RecursionError"
KNOWN: dict[str, str] = {
    "OverflowError-conn-infinite": _INFINITE,
    "OverflowError-type-infinite": _INFINITE,
    "RecursionError-deep-record": _DEEP,
    "RecursionError-deep-header": _DEEP,
}


def inputs() -> list[object]:
    cases: list[object] = []
    for folder in (SEEDS, CRASHES):
        for target in sorted(TARGETS):
            for path in sorted((folder / target).glob("*")) if (folder / target).is_dir() else []:
                marks = []
                if path.name in KNOWN:
                    marks.append(pytest.mark.xfail(reason=KNOWN[path.name], strict=True))
                case_id = f"{folder.name}/{target}/{path.name}"
                cases.append(pytest.param(target, path, id=case_id, marks=marks))
    return cases


_loaded: dict[str, tuple[Run, tuple[type[BaseException], ...]]] = {}


@pytest.mark.parametrize(("target", "path"), inputs())
def test_input_raises_only_what_is_allowed(target: str, path: Path) -> None:
    if target not in _loaded:
        _loaded[target] = TARGETS[target].load()
    run, allowed = _loaded[target]
    assert replay(run, allowed, path.read_bytes()) is None


def test_every_target_has_seeds() -> None:
    for target in TARGETS:
        assert list((SEEDS / target).glob("*")), target


def test_a_short_fuzzing_run(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.fuzz", "--seconds", "3", "--target", "decoder",
         "--work", str(tmp_path / "work"), "--crashes", str(tmp_path / "crashes")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    line = re.search(r"^decoder +\w+: ([\d,]+) executions .* crashes (\d+)$", result.stdout, re.M)
    assert line, result.stdout
    assert int(line[1].replace(",", "")) > 0
    assert line[2] == "0"
