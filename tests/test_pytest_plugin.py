"""The pytest plugin, tested with pytester: a bot team's tests, run in a pytest of their own.

The inner runs are subprocesses with nothing but the installed package, so the
plugin is found through its `pytest11` entry point as a user's pytest finds it.
The example in examples/ runs against the fake voice bot.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from conftest import ROOT
from voice_bot import BotConfig, VoiceBot, espeak_available

pytest_plugins = ["pytester"]

FAILING = """
def test_an_impossible_first_response(audiosocket_converse):
    result = audiosocket_converse(
        [{"name": "hello", "wait": "speech", "expect": "first-response", "within": 0.01},
         {"close": True}],
    )
    assert result.first_response is not None
    assert result.passed
"""


def test_the_plugin_is_a_pytest11_entry_point() -> None:
    found = [e.value for e in entry_points(group="pytest11") if e.name == "audiosocket"]
    assert found == ["audiosocket_cli.pytest_plugin"]


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_the_example_passes_a_good_bot_and_a_failure_shows_the_conversation(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_example=(ROOT / "examples" / "test_my_bot.py").read_text(),
        test_failing=FAILING,
    )
    records = pytester.path / "calls"
    with VoiceBot(BotConfig(greet_ms=300, reply_ms=400, stop_ms=200)) as bot:
        result = pytester.runpytest_subprocess(
            "--audiosocket-address",
            f"127.0.0.1:{bot.port}",
            "--audiosocket-record",
            str(records),
            "-k",
            "built_in or impossible",
            "-p",
            "no:cacheprovider",
            timeout=90,
        )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- audiosocket conversations -*",
            "test_an_impossible_first_response: first response *s; talk-over 0; *",
            "  FAIL 1 'hello': first-response: the agent first spoke *s after the "
            "connection (over 0.01s)",
        ]
    )
    assert sorted(p.name for p in records.iterdir()) == [
        "test_an_impossible_first_response-1.wav",
        "test_the_built_in_conversation_passes-1.wav",
    ]


def test_without_an_address_the_test_fails_saying_how_to_give_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUDIOSOCKET_ADDRESS", raising=False)
    pytester.makepyfile(test_x=FAILING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*no AudioSocket application to call: give --audiosocket-address*"]
    )
