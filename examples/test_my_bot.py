"""Testing a voice bot's conversation with pytest: audiosocket-cli's plugin.

The plugin comes with audiosocket-cli (nothing to import): its
`audiosocket_converse` fixture calls your AudioSocket application as Asterisk
would, holds a scripted conversation, and returns what it measured for plain
asserts. Start your bot, then:

    pip install audiosocket-cli
    pytest examples/test_my_bot.py --audiosocket-address 127.0.0.1:9092

or put `audiosocket_address = 127.0.0.1:9092` in your pytest ini, or override
the `audiosocket_address` fixture in a conftest to start the bot yourself.
When a test fails, the conversation's figures and failed expectations are in
its report; `--audiosocket-record DIR` keeps a stereo WAV of each call.
"""

from __future__ import annotations


def test_the_built_in_conversation_passes(audiosocket_converse):
    # Greets, answers a question within 1.5 s, stops within 1 s when interrupted,
    # never talks over the caller, no dead air.
    result = audiosocket_converse()
    assert result.passed, result.report()


def test_answers_opening_hours_quickly(audiosocket_converse):
    result = audiosocket_converse(
        [
            {"name": "greeting", "wait": "speech", "timeout": 10},
            {"wait": "silence", "for": 0.7},
            {"name": "hours", "say": "question", "expect": "answer", "within": 1.0},
            {"wait": "silence", "for": 0.7},
            {"name": "thanks", "say": "goodbye"},
            {"close": True},
        ],
        rate=16000,
    )
    assert result.first_response is not None and result.first_response < 2.0
    hours = result.turn("hours")
    assert hours.latency is not None and 0 <= hours.latency < 1.0, result.report()
    assert hours.agent_speech > 1.0  # it said something, not just "uh"
    assert not result.talk_overs


def test_stops_talking_when_interrupted(audiosocket_converse):
    result = audiosocket_converse(max_barge_in_stop=0.5)
    (barge_in,) = result.barge_ins
    assert barge_in.stopped and barge_in.stop_time < 0.5, result.report()
