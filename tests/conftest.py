"""Fixtures every test module may use."""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def skip_without_portaudio() -> None:
    """Skip where PortAudio is not installed, except in CI, which installs it."""
    if not os.environ.get("CI") and ctypes.util.find_library("portaudio") is None:
        pytest.skip("PortAudio is not installed (apt-get install libportaudio2)")


@pytest.fixture
def alsa_null_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A HOME whose ALSA default device is the null device: real PortAudio, no sound card.

    Sets HOME for this process and returns an environment for subprocesses.
    Skipped where PortAudio is not installed, except in CI, which installs it.
    """
    skip_without_portaudio()
    home = tmp_path / "home"
    home.mkdir()
    (home / ".asoundrc").write_text("pcm.!default { type null }\n")
    monkeypatch.setenv("HOME", str(home))
    env = dict(os.environ)
    env["HOME"] = str(home)
    return env


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running `python -m audiosocket_cli` as a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NO_COLOR", None)
    return env


PYTHON = sys.executable


def pytest_configure(config: pytest.Config) -> None:
    """A test worker (pytest-xdist) may ignore SIGINT, and the commands the tests start
    would inherit that: their Ctrl-C tests need it handled, as in a shell."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that share a module- or session-wide fixture (a run of `check` against
    several applications, a set of captures) go to one worker (xdist's loadgroup):
    spread over several, each worker would build the fixture again, doing the same
    slow work twice or three times."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        for name in item.fixturenames:
            defs = info.name2fixturedefs.get(name)
            if defs and defs[-1].scope in ("module", "package", "session") and defs[-1].baseid:
                item.add_marker(pytest.mark.xdist_group(f"{defs[-1].baseid}::{name}"))
                break
