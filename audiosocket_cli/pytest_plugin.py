"""pytest plugin: hold scripted conversations with the voice bot under test.

Installed with audiosocket-cli (a `pytest11` entry point), so a bot team's
tests use it with nothing to import:

    def test_answers_quickly(audiosocket_converse):
        result = audiosocket_converse()                  # the built-in scenario
        assert result.passed, result.report()
        assert result.turns[0].latency < 1.0

The application's address comes from `--audiosocket-address HOST:PORT`, the
`audiosocket_address` ini value, or $AUDIOSOCKET_ADDRESS, in that order; a
conftest may override the `audiosocket_address` fixture instead (to start the
bot itself). `--audiosocket-record DIR` keeps each conversation's stereo WAV.
When a test fails, its conversations' figures and failed expectations are
shown in a report section of their own.

Loaded in every pytest run where audiosocket-cli is installed: nothing heavy
is imported until a conversation is held.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

RESULTS = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("audiosocket", "AudioSocket conversations (audiosocket-cli)")
    group.addoption(
        "--audiosocket-address",
        dest="audiosocket_address",
        metavar="HOST:PORT",
        help="The AudioSocket application the audiosocket_converse fixture calls.",
    )
    group.addoption(
        "--audiosocket-record",
        dest="audiosocket_record",
        metavar="DIR",
        help="Keep each conversation's stereo WAV (caller left, agent right) in DIR.",
    )
    parser.addini("audiosocket_address", "The AudioSocket application's HOST:PORT.")
    parser.addini("audiosocket_rate", "The calls' audio rate (8000 by default).", default="8000")


@pytest.fixture
def audiosocket_address(request: pytest.FixtureRequest) -> str:
    """HOST:PORT of the application under test; override it to start the bot yourself."""
    config = request.config
    address = (
        config.getoption("audiosocket_address")
        or config.getini("audiosocket_address")
        or os.environ.get("AUDIOSOCKET_ADDRESS")
    )
    if not address:
        pytest.fail(
            "no AudioSocket application to call: give --audiosocket-address HOST:PORT, the "
            "audiosocket_address ini value or $AUDIOSOCKET_ADDRESS, or override the "
            "audiosocket_address fixture",
            pytrace=False,
        )
    return str(address)


@pytest.fixture
def audiosocket_converse(
    request: pytest.FixtureRequest, audiosocket_address: str
) -> Iterator[Callable[..., Any]]:
    """A function that holds one conversation and returns its ConversationResult.

    `audiosocket_converse(scenario=None, **options)`: `scenario` is a TOML file's
    path, a list of step tables (as a TOML file's [[step]]s), a Scenario, or None
    for the built-in one; files are found beside the test module first. `options`
    are audiosocket_cli.converse's: rate, uuid, record, max_response,
    max_first_response, max_barge_in_stop, dead_air, talk_over, ...
    """
    from audiosocket_cli.engines.converse import Scenario, converse

    config = request.config
    here = Path(str(request.path)).parent
    record_dir = config.getoption("audiosocket_record")
    results: list[Any] = []
    request.node.stash[RESULTS] = results

    def hold(scenario: Any = None, **options: Any) -> Any:
        if isinstance(scenario, (str, Path)) and not Path(scenario).is_absolute():
            beside = here / scenario
            scenario = beside if beside.exists() else Path(scenario)
        elif isinstance(scenario, list):
            scenario = Scenario.from_steps(scenario, base=here, name=request.node.name)
        options.setdefault("rate", int(config.getini("audiosocket_rate") or 8000))
        if record_dir and "record" not in options:
            folder = Path(record_dir)
            folder.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^\w.-]+", "_", request.node.name)
            options["record"] = folder / f"{name}-{len(results) + 1}.wav"
        result = converse(audiosocket_address, scenario, **options)
        results.append(result)
        return result

    yield hold


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    results = item.stash.get(RESULTS, None)
    if results and report.when == "call" and report.failed:
        text = "\n".join(result.report() for result in results)
        report.sections.append(("audiosocket conversations", text))
