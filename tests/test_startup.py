"""Start-up stays light: --help and the CLI module load no numpy, soundfile, sounddevice,
soxr or rich (checked with `python -X importtime` in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = {"numpy", "soundfile", "sounddevice", "soxr", "rich", "dpkt"}


def imported_modules(args: list[str], env: dict[str, str]) -> tuple[set[str], str]:
    """Top-level names of every module a fresh interpreter imported, and its stdout."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                modules.add(name.split(".")[0])
    assert "audiosocket_cli" in modules  # the parse found the imports at all
    return modules, proc.stdout


@pytest.mark.parametrize(
    ("args", "shows"),
    [
        (["-c", "import audiosocket_cli.cli"], ""),
        (["-m", "audiosocket_cli", "--help"], "Commands:"),
        (["-m", "audiosocket_cli", "--version"], "audiosocket, version"),
        (["-m", "audiosocket_cli", "trace", "--help"], "--extract"),
    ],
    ids=["import-cli", "help", "version", "trace-help"],
)
def test_startup_imports_nothing_heavy(
    args: list[str], shows: str, cli_env: dict[str, str]
) -> None:
    modules, stdout = imported_modules(args, cli_env)
    assert shows in stdout
    assert modules & HEAVY == set()


def test_the_check_would_see_a_heavy_import(cli_env: dict[str, str]) -> None:
    # The same check on a command that does load numpy, so a passing test means something.
    modules, _ = imported_modules(["-c", "import audiosocket_cli.cli, numpy"], cli_env)
    assert "numpy" in modules
