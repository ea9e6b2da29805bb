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

from benchmarks.fuzz import CRASHES, SEEDS, TARGETS, replay  # noqa: E402

# Crashes in modules this test's author may not change, kept here until they are fixed
# (file name -> the bug): they must still fail, so that a fix also removes the entry.
# The four trace.py crashes once listed here are fixed.
KNOWN: dict[str, str] = {}


# One test per folder and target rather than per file: pytest's own cost per test would
# be most of the time, with some 700 inputs.
@pytest.mark.parametrize("folder", [SEEDS, CRASHES], ids=lambda f: f.name)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_inputs_raise_only_what_is_allowed(target: str, folder: Path) -> None:
    run, allowed = TARGETS[target].load()
    bugs: dict[str, str] = {}
    for path in sorted((folder / target).glob("*")):
        found = replay(run, allowed, path.read_bytes())
        if path.name in KNOWN:
            assert found, f"{path} no longer fails: remove it from KNOWN"
        elif found:
            bugs[str(path.relative_to(ROOT))] = found
    assert not bugs, bugs


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
