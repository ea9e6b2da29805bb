"""`audiosocket converse`: a scripted caller measured against a fake voice bot with known truths.

The bot (tests/voice_bot.py) logs what it did on its own clock; every figure
asserted is the tool's own (--json), compared with the bot's log, never with
a clock the test measured. Each fault of the bot fails exactly its own
expectation. Against `listen --echo` and `listen --play` the verdicts are
what a person would call them.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import ROOT
from test_schema import check_lines, server
from voice_bot import ANSWERS, SHORT_ANSWER, BotConfig, CallLog, VoiceBot, espeak_available

from audiosocket_cli.engines.conversation.measures import CallerTurn, measure
from audiosocket_cli.engines.conversation.scenario import (
    DEFAULT_SCENARIO,
    ScenarioError,
    parse_scenario,
)

TOLERANCE = 0.03  # s: the accuracy asked of every figure against the bot's truth
TIMEOUT = 90

needs_espeak = pytest.mark.skipif(
    not espeak_available() and not __import__("os").environ.get("CI"),
    reason="espeak-ng is not installed (apt-get install espeak-ng)",
)


def converse(cli_env: dict[str, str], port: int, *args: str) -> tuple[int, list[dict], str]:
    """Run `audiosocket converse PORT ARGS --json`: (status, records, stderr); every line
    checked against the output schema."""
    done = subprocess.run(
        [sys.executable, "-m", "audiosocket_cli", "converse", str(port), *args, "--json"],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=TIMEOUT,
    )
    records = check_lines(done.stdout, "converse") if done.stdout else []
    return done.returncode, records, done.stderr


def events(records: list[dict], name: str) -> list[dict]:
    return [r for r in records if r.get("event") == name]


def failed(records: list[dict]) -> dict[str, str]:
    """The failed expectations: name -> evidence."""
    return {
        r["expectation"]: r["evidence"]
        for r in events(records, "expectation")
        if r["verdict"] == "fail"
    }


def scenario_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return str(path)


def ended(log: CallLog) -> None:
    assert log.ended.wait(10), "the bot's call did not end"


# The accuracy: every figure within TOLERANCE of the bot's own times, delays 0.2 to 3 s.

ACCURACY_SCENARIO = """
name = "accuracy"
[[step]]
name = "greeting"
wait = "speech"
expect = "first-response"
within = 5
[[step]]
wait = "silence"
for = 0.3
[[step]]
name = "question"
say = "question"
expect = "answer"
within = 5
[[step]]
wait = "silence"
for = 0.3
[[step]]
name = "yes"
say = "yes"
expect = "answer"
within = 5
[[step]]
name = "barge-in 1"
barge_in = "interrupt"
after_ms = 300
expect = "stop"
within = 5
[[step]]
name = "barge-in 2"
barge_in = "question"
after_ms = 300
expect = "stop"
within = 5
[[step]]
close = true
"""
SHORT, LONG = SHORT_ANSWER, ANSWERS[0]
ACCURACY = {
    8000: BotConfig(
        greet_ms=200, reply_ms=[200, 1200, 3000], stop_ms=[250, 1500], answers=(SHORT, LONG, LONG)
    ),
    16000: BotConfig(
        greet_ms=3000,
        reply_ms=[700, 400, 250],
        stop_ms=[1000, 3000],
        answers=(SHORT, LONG, LONG),
        silence_frames=False,  # nothing at all while quiet, as Asterisk itself does
    ),
}


def starvation(records: list[dict], log: CallLog) -> float:
    """How late a busy machine made either side (s): the tool's own sends, the bot's, and
    how far the tool's playout clock ran ahead of its own arrival stamps. When the tool's
    receiving thread waits for a CPU, it reads a few frames at once, stamped late; laid end
    to end, they keep a continuous stream that late: its playout runs ahead of arrivals."""
    end = events(records, "call-end")[0]
    ahead, play_end = 0.0, float("-inf")
    for r in records:
        if r.get("kind") == "audio" and r["dir"] == "<":
            play = max(r["t"], play_end)
            ahead = max(ahead, play - r["t"])
            play_end = play + r["len"] / 2 / r["rate"]
    return max(end["max_send_lag_ms"] / 1000, log.late, ahead)


def slack(records: list[dict], log: CallLog) -> float:
    """TOLERANCE, widened by what a starved machine took (starvation, beyond 10 ms)."""
    return TOLERANCE + max(0.0, starvation(records, log) - 0.01)


@needs_espeak
@pytest.mark.parametrize("rate", sorted(ACCURACY))
def test_figures_match_the_bots_own_times(
    tmp_path: Path, cli_env: dict[str, str], rate: int
) -> None:
    scenario = scenario_file(tmp_path, ACCURACY_SCENARIO)
    for _attempt in range(2):  # a second call only if a busy machine starved the first
        with VoiceBot(ACCURACY[rate], rates=(rate,)) as bot:
            status, records, stderr = converse(cli_env, bot.port, scenario, "--rate", str(rate))
            log = bot.calls[0]
            ended(log)
        assert status == 0, (failed(records), stderr)
        errors = figures_against_truth(records, log)
        worst = max(abs(a - b) for _, a, b in errors)
        if worst <= TOLERANCE or starvation(records, log) <= 0.01:
            break
    print(
        f"{rate} Hz, tool - bot (ms), starved {starvation(records, log) * 1000:.0f} ms:",
        [(w, round((a - b) * 1000)) for w, a, b in errors],
    )
    assert worst <= slack(records, log), errors


def figures_against_truth(records: list[dict], log: CallLog) -> list[tuple[str, float, float]]:
    """(what, the tool's figure, the bot's truth) for every figure of the call."""
    summary = events(records, "conversation")[0]
    out = [("first response", summary["first_response"], log.first("greeting").start)]
    turns = [t for t in events(records, "turn") if t["latency"] is not None]
    assert len(turns) == len(log.replies) >= 3
    for turn, (caller_end, start) in zip(turns, log.replies, strict=True):
        out.append((f"latency {turn['step_name']}", turn["latency"], start - caller_end))
    barge_ins = events(records, "barge-in")
    assert len(barge_ins) == len(log.barge_ins) == 2
    for barge_in, (caller_start, stop) in zip(barge_ins, log.barge_ins, strict=True):
        assert barge_in["stopped"]
        out.append((f"stop {barge_in['step_name']}", barge_in["stop_time"], stop - caller_start))
    return out


def best_lag(a, b, limit: int) -> int:  # type: ignore[no-untyped-def]
    """The shift of `a` against `b` (in samples, within ±limit) where they match best."""
    import numpy as np

    n = len(a) + len(b)
    spectrum = np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n))
    corr = np.fft.irfft(spectrum, n)
    lags = np.concatenate([corr[-limit:], corr[: limit + 1]])
    return int(np.argmax(lags)) - limit


# Each fault fails exactly its own expectation, with its evidence in one line.

NEVER_GREETS = DEFAULT_SCENARIO.read_text().replace("timeout = 10", "timeout = 2")
# The dead-air bot's answer begins with "Sure." (voiced for 0.34 s): barging in 500 ms
# into it is a coin toss at the end of its sound on a busy machine. 1 s in, it has
# surely fallen quiet, and the barge-in goes into the rest of the answer.
LATE_BARGE_IN = DEFAULT_SCENARIO.read_text().replace("after_ms = 500", "after_ms = 1000")


@needs_espeak
@pytest.mark.parametrize(
    ("fault", "config", "expected"),
    [
        ("ignores barge-in", BotConfig(stop_ms=None), "4 'barge-in': stop"),
        ("talks over", BotConfig(talk_over_ms=400), "no-talk-over"),
        ("dead air", BotConfig(dead_air=3.0), "no-dead-air"),
        ("never greets", BotConfig(greet_ms=None), "1 'greeting': first-response"),
    ],
    ids=["ignores-barge-in", "talks-over", "dead-air", "never-greets"],
)
def test_each_fault_fails_exactly_its_expectation(
    tmp_path: Path, cli_env: dict[str, str], fault: str, config: BotConfig, expected: str
) -> None:
    args = [scenario_file(tmp_path, NEVER_GREETS)] if config.greet_ms is None else []
    if fault == "dead air":
        args = [scenario_file(tmp_path, LATE_BARGE_IN)]
    if fault == "talks over":
        args = ["--record", str(tmp_path / "call.wav"), "--trace", str(tmp_path / "call.trace")]
        args += ["--junit", str(tmp_path / "call.xml")]
    with VoiceBot(config) as bot:
        status, records, stderr = converse(cli_env, bot.port, *args)
        ended(bot.calls[0])
    fails = failed(records)
    assert list(fails) == [expected], fails
    assert status == 3, stderr
    evidence = fails[expected]
    assert "\n" not in evidence
    assert f"audiosocket: converse: FAIL {expected}: {evidence}" in stderr
    if fault == "ignores barge-in":
        (barge_in,) = events(records, "barge-in")
        assert barge_in["stop_time"] > 2.0, barge_in
    elif fault == "talks over":
        (talk,) = events(records, "conversation")[0]["talk_over_at"]
        assert events(records, "turn")[0]["talk_over"]
        assert "the agent began speaking at" in evidence
        files_agree(tmp_path, records, expected)
    elif fault == "dead air":
        ((start, end),) = events(records, "conversation")[0]["dead_air_spans"]
        lead, rest = bot.calls[0].spoken[1:3]  # "Sure.", silence, the rest of the answer
        assert lead.end is not None
        truth = rest.start - lead.end
        assert end - start == pytest.approx(truth, abs=slack(records, bot.calls[0])), truth
    else:
        assert "did not speak within the step's 2s" in evidence


def files_agree(tmp_path: Path, records: list[dict], failure: str) -> None:
    """--junit has a testcase per expectation; --record's two channels line up with
    --trace's messages within a frame."""
    import numpy as np
    import soundfile as sf

    end = events(records, "call-end")[0]
    assert str(tmp_path / "call.wav") in end["recordings"]
    root = ET.parse(tmp_path / "call.xml").getroot()
    names = [r["expectation"] for r in events(records, "expectation")]
    assert [c.get("name") for c in root.iter("testcase")] == names
    assert [f.get("message") for f in root.iter("failure")] == [failed(records)[failure]]

    audio, rate = sf.read(tmp_path / "call.wav", dtype="int16")
    assert audio.shape[1] == 2 and rate == 8000
    lines = [json.loads(line) for line in (tmp_path / "call.trace").read_text().splitlines()[1:]]
    for channel, direction in ((0, ">"), (1, "<")):
        placed = np.zeros(len(audio) + rate, dtype=np.float64)
        for r in lines:
            if r.get("dir") == direction and r.get("kind") == "audio":
                pcm = np.frombuffer(base64.b64decode(r["data"]), dtype="<i2")
                at = round(r["t"] * rate)
                placed[at : at + len(pcm)] = pcm
        lag = best_lag(audio[:, channel].astype(np.float64), placed[: len(audio)], rate // 50)
        assert abs(lag) <= rate // 50, f"channel {channel}: {lag} samples off the trace"


# DTMF, silence, the agent's hangup; the call's UUID and --before-call.

HANGUP_SCENARIO = """
[[step]]
wait = "speech"
[[step]]
wait = "silence"
for = 0.5
[[step]]
dtmf = "12#"
[[step]]
silence = 0.5
[[step]]
name = "yes"
say = "yes"
expect = "answer"
[[step]]
name = "bye"
expect = "hangup"
within = 4
"""
UUID = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"


@needs_espeak
def test_dtmf_silence_and_the_agent_hanging_up(tmp_path: Path, cli_env: dict[str, str]) -> None:
    config = BotConfig(greet_ms=200, reply_ms=300, answers=(SHORT,), hangup_after=1)
    registered = tmp_path / "registered"
    with VoiceBot(config) as bot:
        status, records, stderr = converse(
            cli_env,
            bot.port,
            scenario_file(tmp_path, HANGUP_SCENARIO),
            "--uuid",
            UUID,
            "--before-call",
            f"echo $AUDIOSOCKET_UUID > {registered}",
        )
        ended(bot.calls[0])
    assert status == 0, (failed(records), stderr)
    assert registered.read_text().strip() == UUID
    digits = [r["digit"] for r in records if r.get("kind") == "dtmf" and r["dir"] == ">"]
    assert digits == ["1", "2", "#"]
    end = events(records, "call-end")[0]
    assert end["ended"] == "app-hangup" and end["call"] == UUID
    bye = [r for r in events(records, "expectation") if r["expect"] == "hangup"]
    assert bye[0]["verdict"] == "pass" and bye[0]["measured"] < 4


# Real applications: what a person would call them.

SHORT_SCENARIO = """
[[step]]
name = "greeting"
wait = "speech"
timeout = 2
expect = "first-response"
[[step]]
wait = "silence"
for = 0.7
[[step]]
name = "question"
say = "question"
expect = "answer"
timeout = 1.5
[[step]]
name = "barge-in"
barge_in = "interrupt"
after_ms = 500
timeout = 1.5
expect = "stop"
[[step]]
hangup = true
"""


@pytest.mark.parametrize("how", ["--echo", "--play"])
def test_listen_echo_talks_over_and_listen_play_never_answers(
    tmp_path: Path, cli_env: dict[str, str], how: str
) -> None:
    prompt = ROOT / "audiosocket_cli" / "scenarios" / "hello.wav"
    reply = ["--echo"] if how == "--echo" else ["--play", str(prompt)]
    with server(cli_env, "listen", "127.0.0.1:0", *reply, "-q") as (listen, port):
        status, records, stderr = converse(cli_env, port, scenario_file(tmp_path, SHORT_SCENARIO))
    assert status == 3, stderr
    assert events(records, "call-end")[0]["ended"] == "caller-hangup"  # the last step
    verdicts = {r["expectation"]: r["verdict"] for r in events(records, "expectation")}
    if how == "--echo":
        # It never greets; it "answers" at once, while the caller speaks: talk-over; and
        # it never speaks on its own, so there is nothing to barge into.
        assert verdicts == {
            "1 'greeting': first-response": "fail",
            "3 'question': answer": "pass",
            "4 'barge-in': stop": "fail",
            "no-talk-over": "fail",
            "no-dead-air": "pass",
        }
        (turn,) = events(records, "turn")
        assert turn["talk_over"] and turn["latency"] < -1.0
        # The echo began when our question's sound came back (late if listen was slow;
        # its arrival and its playout differ by what a stalled listen bunched up, which
        # the 100 ms here allows: the figures' accuracy is tested against the fake bot).
        back = next(
            r["t"]
            for r in records
            if r.get("kind") == "audio" and r["dir"] == "<" and (r["level_dbfs"] or -99) > -40
        )
        lag = events(records, "call-end")[0]["max_send_lag_ms"] / 1000
        assert abs(turn["agent_start"] - back) <= 0.1 + lag
    else:
        # It greets at once, then never says anything again.
        assert verdicts == {
            "1 'greeting': first-response": "pass",
            "3 'question': answer": "fail",
            "4 'barge-in': stop": "fail",
            "no-talk-over": "pass",
            "no-dead-air": "pass",
        }
        summary = events(records, "conversation")[0]
        assert summary["first_response"] <= 0.1
        assert "no answer" in failed(records)["3 'question': answer"]


# Scenarios: a bad one is one line naming the file, the step and the problem; exit 2.


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '[[step]]\nwait = "speech"\n[[step]]\nname = "q"\nsya = "question"\n',
            "step 2 'q': no action: give one of wait, say, barge_in, dtmf, silence, hangup, "
            "close (unknown key 'sya')",
        ),
        ('[[step]]\nsay = "nothing-here.wav"\n', "step 1: say = 'nothing-here.wav': no such file"),
        (
            '[[step]]\nwait = "speech"\ntimeout = -1\n',
            "step 1: `timeout` must be more than 0, not -1",
        ),
        (
            '[[step]]\nsay = "question"\nexpect = "stop"\n',
            "step 1: expect = 'stop': a say step expects \"answer\"",
        ),
        ("[[step]\n", "not valid TOML"),
        ('name = "x"\n', "no steps"),
    ],
    ids=["unknown-key", "missing-file", "negative", "wrong-expect", "toml", "empty"],
)
def test_a_bad_scenario_is_one_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, str(path), tmp_path)
    line = str(caught.value)
    assert line.startswith(f"{path}: ") and problem in line and "\n" not in line


def test_a_bad_scenario_exits_2_before_connecting(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = scenario_file(tmp_path, '[[step]]\nname = "ask"\nsay = "question"\nwithin = 2\n')
    done = subprocess.run(
        [sys.executable, "-m", "audiosocket_cli", "converse", "1", path],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert done.stderr == (f"audiosocket: error: {path}: step 1 'ask': `within` without `expect`\n")


def test_the_built_in_scenario_prints_and_parses(cli_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "audiosocket_cli", "converse", "--print-scenario"],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0
    scenario = parse_scenario(done.stdout, "printed", DEFAULT_SCENARIO.parent)
    assert [s.action for s in scenario.steps] == [
        "wait-speech",
        "wait-silence",
        "say",
        "barge-in",
        "close",
    ]


# The measures' definitions, on timelines made by hand.


def turn(n: int, action: str, start: float, end: float) -> CallerTurn:
    return CallerTurn(n, n, f"t{n}", action, "x", start, end, ((start, end),))


def test_a_pause_while_the_caller_speaks_is_not_a_stop_but_a_reply_after_is() -> None:
    barge = [turn(1, "barge-in", 1.5, 2.5)]
    # Talks on through a short pause: stops only at 4.0.
    talks_on = measure(barge, [(1.0, 2.0), (2.3, 4.0)], call_end=6)
    assert talks_on.barge_ins[0].stop_time == pytest.approx(2.5)
    assert not talks_on.talk_overs
    # Stops at 1.8, answers 0.4 s after the caller's end: a stop, then a reply.
    stops = measure(barge, [(1.0, 1.8), (2.9, 3.5)], call_end=6)
    assert stops.barge_ins[0].stop_time == pytest.approx(0.3)
    assert stops.turns[0].latency == pytest.approx(0.4)


def test_talk_over_and_a_negative_latency() -> None:
    echo = measure([turn(1, "say", 2.0, 3.77)], [(2.01, 3.78)], call_end=5)
    assert echo.talk_overs and echo.talk_overs[0].into == pytest.approx(0.01)
    assert echo.turns[0].latency == pytest.approx(2.01 - 3.77)


def test_dead_air_is_the_agents_silence_only() -> None:
    assert measure([], [(1, 2), (5, 6)], call_end=7).dead_air[0].seconds == 3
    between = [turn(1, "say", 2.5, 3.0)]
    assert not measure(between, [(1, 2), (5, 6)], call_end=7).dead_air
    assert not measure([], [(1, 2), (5, 6)], call_end=7, quiet=[(2.0, 4.0)]).dead_air
    assert not measure([], [(1, 2), (5, 6)], call_end=7, dead_air=0).dead_air
