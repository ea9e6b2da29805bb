"""`load --scenario`: every call a conversation, measured against a fake voice bot's truths.

The bot (tests/voice_bot.py) logs what it did on its own clock; the figures
asserted are load's own (--conversations, --json, --stats), compared with the
bot's log. A bot that ignores barge-in fails exactly `stop`, in every call,
counted by kind, and the run exits 3 unless --max-failed tolerates it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_converse import TOLERANCE, needs_espeak
from voice_bot import BotConfig, CallLog, VoiceBot

from audiosocket_cli.engines.load import CONVERSATION_CSV_COLUMNS, CSV_COLUMNS, Histogram

TIMEOUT = 90
SCENARIO = """
name = "two turns"

[[step]]
name = "greeting"
wait = "speech"
expect = "first-response"

[[step]]
wait = "silence"
for = 0.3

[[step]]
name = "question"
say = "question"
expect = "answer"

[[step]]
name = "barge-in"
barge_in = "interrupt"
after_ms = 300
expect = "stop"

[[step]]
close = true
"""


def load(
    cli_env: dict[str, str], port: int, tmp_path: Path, *args: str
) -> tuple[int, list[dict], list[dict], str]:
    """`audiosocket load PORT --scenario S --json --conversations F ARGS`: (status, JSON
    lines, conversation lines, stderr)."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    conversations = tmp_path / "conversations.jsonl"
    done = subprocess.run(
        [
            sys.executable, "-m", "audiosocket_cli", "load", str(port),
            "--scenario", str(scenario), "--conversations", str(conversations),
            "--json", "--period", "0.5", *args,
        ],
        capture_output=True, text=True, env=cli_env, timeout=TIMEOUT,
    )  # fmt: skip
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    talks = [json.loads(line) for line in conversations.read_text().splitlines()]
    return done.returncode, lines, sorted(talks, key=lambda t: t["n"]), done.stderr


def truths(talk: dict, log: CallLog) -> list[tuple[str, float, float]]:
    """(what, load's figure, the bot's truth) for one conversation."""
    out = [("first response", talk["first_response"], log.first("greeting").start)]
    (turn,) = [t for t in talk["turns"] if t["latency"] is not None]
    ((caller_end, start),) = log.replies
    out.append(("latency", turn["latency"], start - caller_end))
    (barge_in,) = talk["barge_ins"]
    ((caller_start, stop),) = log.barge_ins
    assert barge_in["stopped"]
    out.append(("stop", barge_in["stop_time"], stop - caller_start))
    return out


@needs_espeak
@pytest.mark.parametrize("rate", [8000, 16000])
def test_every_call_is_measured_as_converse_measures_it(
    tmp_path: Path, cli_env: dict[str, str], rate: int
) -> None:
    config = BotConfig(greet_ms=400, reply_ms=[300, 900], stop_ms=250)
    for _attempt in range(2):  # a second run only if a busy machine starved the first
        with VoiceBot(config, rates=(rate,)) as bot:
            status, lines, talks, stderr = load(
                cli_env, bot.port, tmp_path, "--calls", "2", "--total", "2", "--rate", "4",
                "--sample-rate", str(rate), "--stats", str(tmp_path / "run.csv"),
            )  # fmt: skip
            for log in bot.calls:
                assert log.ended.wait(10)
        assert status == 0, stderr
        assert [t["n"] for t in talks] == [1, 2]  # the bot's calls in order: 0.25 s apart
        assert all(t["conversation"]["passed"] for t in talks), talks
        errors = [e for talk, log in zip(talks, bot.calls, strict=True) for e in truths(talk, log)]
        starved = max(max(t["max_send_lag_ms"] for t in talks) / 1000, *(c.late for c in bot.calls))
        worst = max(abs(a - b) for _, a, b in errors)
        # Our sends' lag and the bot's own lateness show a starved machine, but not a
        # stall of our reads between two sends: a starved run gets a second one.
        if worst <= TOLERANCE or starved <= 0.01:
            break
    assert worst <= TOLERANCE + max(0.0, starved - 0.02), errors
    total = lines[-1]
    assert total["type"] == "total"
    assert total["total_conversations"] == 2 and total["total_conversations_failed"] == 0
    assert total["total_responses"] == 2 and total["total_failed_expect"] == {}
    # The run's percentiles are the conversations' figures (to the histogram's 1%).
    latencies = sorted(t["turns"][0]["latency"] for t in talks)
    assert total["total_response_p50_ms"] == pytest.approx(latencies[0] * 1000, rel=0.011)
    assert total["total_response_p99_ms"] == pytest.approx(latencies[1] * 1000, rel=0.011)
    stops = [t["barge_ins"][0]["stop_time"] for t in talks]
    assert total["total_barge_in_stop_p95_ms"] == pytest.approx(max(stops) * 1000, rel=0.011)
    # Each period counts the conversations that ended in it; the periods add up.
    assert sum(line["conversations"] for line in lines) == 2
    with open(tmp_path / "run.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS + CONVERSATION_CSV_COLUMNS
    assert sum(int(r["conversations"]) for r in rows) == 2
    assert sum(int(r["responses"]) for r in rows) == 2


@needs_espeak
def test_a_bot_that_ignores_barge_in_fails_stop_in_every_call(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    with VoiceBot(BotConfig(greet_ms=300, reply_ms=300, stop_ms=None)) as bot:
        status, lines, talks, stderr = load(
            cli_env, bot.port, tmp_path, "--calls", "2", "--total", "2", "--rate", "4",
            "--workers", "2",
        )  # fmt: skip
    assert status == 3, stderr
    assert "2 of 2 conversations failed an expectation: {'stop': 2}" in stderr
    total = lines[-1]
    assert total["total_failed_expect"] == {"stop": 2}
    assert total["total_conversations_failed"] == 2 and total["total_failed"] == 0
    # It talked on to the end of its answer, seconds later: over the 1 s limit.
    assert total["total_barge_in_stop_p95_ms"] > 1000
    for talk in talks:  # one line per call from the two workers, none interleaved
        failed = [e for e in talk["expectations"] if e["verdict"] == "fail"]
        assert [e["expectation"] for e in failed] == ["4 'barge-in': stop"], failed
        assert failed[0]["measured"] > 1.0 and "(over 1s)" in failed[0]["evidence"], failed


@pytest.mark.parametrize(
    ("failed", "max_failed", "share", "status"),
    [(0, 0, None, 0), (2, 0, None, 3), (2, 2, None, 0), (2, None, 1.0, 0), (2, None, 0.5, 3)],
)
def test_max_failed_tolerates_failed_conversations(
    failed: int, max_failed: int | None, share: float | None, status: int
) -> None:
    """Conversations that failed an expectation are exit 3 past --max-failed (a count, or
    a share of the conversations), as calls that failed are exit 1."""
    from audiosocket_cli.engines.load import LoadResult, PeriodStats

    totals = PeriodStats()
    totals.started = totals.conversations = 3
    totals.conversations_failed = failed
    assert LoadResult(totals, None, "").status(max_failed, share) == status


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--scenario", "builtin", "--tone", "440"], "choose one audio source"),
        (["--scenario", "builtin", "--dtmf", "1@1"], "--dtmf goes in the scenario"),
        (["--conversations", "x.jsonl"], "--conversations needs --scenario"),
        (["--scenario", "nowhere.toml"], "nowhere.toml"),
        (["--scenario", "builtin", "--max-response", "soon"], "is not a duration"),
    ],
)
def test_scenario_usage_errors_are_one_line(
    args: list[str], problem: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "audiosocket_cli", "load", "9", *args],
        capture_output=True, text=True, env=cli_env, timeout=TIMEOUT, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert problem in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2  # the line (and click's hint)


def test_a_bad_scenario_file_names_its_step(tmp_path: Path, cli_env: dict[str, str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[step]]\nsya = "question"\n')
    done = subprocess.run(
        [sys.executable, "-m", "audiosocket_cli", "load", "9", "--scenario", str(bad)],
        capture_output=True, text=True, env=cli_env, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "bad.toml" in done.stderr and "(--scenario)" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_histogram_keeps_negative_latencies() -> None:
    """A reply begun before the caller's speech ended is a negative latency (talk-over):
    it must stay negative in the percentiles, not become zero."""
    h = Histogram()
    for value in (-0.8, -0.2, 0.0, 0.3, 1.2):
        h.add(value)
    assert h.percentile(20) == pytest.approx(-0.8, rel=0.01)
    assert h.percentile(40) == pytest.approx(-0.2, rel=0.01)
    assert h.percentile(60) == pytest.approx(0.0, abs=1e-6)
    assert h.percentile(80) == pytest.approx(0.3, rel=0.01)
    assert h.percentile(100) == pytest.approx(1.2, rel=0.01)
    merged = Histogram()
    merged.merge(h.state())
    assert merged.percentile(20) == h.percentile(20) and merged.max == 1.2
    only_negative = Histogram()
    only_negative.add(-0.5)
    assert only_negative.max == -0.5 and only_negative.percentile(50) == pytest.approx(-0.5, 0.01)


def test_the_dashboard_and_the_plain_line_show_the_conversations() -> None:
    """A terminal's live table and a pipe's line carry a --scenario run's figures."""
    import io

    from audiosocket_cli.engines.load import Dashboard, PeriodRow, PeriodStats, plain_line

    period = PeriodStats()
    period.conversations, period.conversations_failed, period.talk_overs = 3, 1, 2
    for latency in (-0.4, 0.6, 0.9):
        period.response.add(latency)
    period.first_response.add(0.5)
    period.barge_in_stop.add(0.25)
    period.failed_expect["stop"] += 1
    totals = PeriodStats()
    totals.merge(period.record())
    row = PeriodRow(0, 1.0, 1.0, period, totals, 3, 0, final=True, conversation=True).as_dict()
    assert row["response_p50_ms"] == pytest.approx(600, rel=0.01)
    assert row["response_max_ms"] == pytest.approx(900, rel=0.01)
    line = plain_line(row)
    assert "conversations=3/3 conversations_failed=1/1" in line
    assert "talk_overs=2/2" in line and "failed_expect=stop:1" in line
    assert "response_ms=" in line and "barge_in_stop_ms=" in line
    out = io.StringIO()
    dashboard = Dashboard(out)
    dashboard.update(row)
    dashboard.close()
    shown = out.getvalue()
    assert "response latency" in shown and "failed: stop" in shown
    assert "conversations / failed" in shown and "talk-overs / dead air" in shown
    plain = PeriodRow(0, 1.0, 1.0, PeriodStats(), PeriodStats(), 0, 0).as_dict()
    assert "conversations" not in plain and "conversations=" not in plain_line(plain)


@needs_espeak
def test_a_conversation_cut_by_sigterm_is_not_judged(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    import signal

    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    conversations = tmp_path / "conversations.jsonl"
    with VoiceBot(BotConfig(greet_ms=300, reply_ms=300, stop_ms=250)) as bot:
        load = subprocess.Popen(
            [
                sys.executable, "-m", "audiosocket_cli", "load", str(bot.port),
                "--scenario", str(scenario), "--conversations", str(conversations),
                "--calls", "2", "--total", "2", "--json", "--period", "0.2", "--workers", "1",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env,
        )  # fmt: skip
        assert load.stdout is not None
        lines = []
        for line in load.stdout:  # until both calls are up: then cut them short
            lines.append(json.loads(line))
            if lines[-1]["active"] == 2:
                load.send_signal(signal.SIGTERM)
                break
        out, err = load.communicate(timeout=TIMEOUT)
    lines += [json.loads(line) for line in out.splitlines()]
    assert load.returncode == 143, err
    total = lines[-1]
    assert total["type"] == "total" and total["total_stopped"] == 2
    assert total["total_conversations"] == 0 and total["total_failed_expect"] == {}
    assert conversations.read_text() == ""


# Bots as real ones are: slow to greet, or gone mid-call.


@needs_espeak
def test_slow_greeters_are_waited_for_and_measured(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A bot whose greeting takes 2.5 s (text to speech warming up) passes: load's own
    frames keep the call alive, and the time to first response is its truth."""
    with VoiceBot(BotConfig(greet_ms=2500, reply_ms=300, stop_ms=250)) as bot:
        status, lines, talks, stderr = load(
            cli_env, bot.port, tmp_path, "--calls", "2", "--total", "2", "--rate", "4"
        )
        for log in bot.calls:
            assert log.ended.wait(10)
    assert status == 0, stderr
    assert lines[-1]["total_conversations"] == 2 and lines[-1]["total_failed"] == 0
    for talk, log in zip(talks, bot.calls, strict=True):
        assert talk["conversation"]["passed"], talk["expectations"]
        truth = log.first("greeting").start
        assert truth >= 2.5
        assert talk["first_response"] == pytest.approx(truth, abs=TOLERANCE + log.late)


@needs_espeak
def test_a_bot_that_crashes_mid_question_fails_the_calls_and_what_they_cut(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The bot's process dies 2.5 s into each call, while the caller asks its question:
    the calls fail (app-reset, exit 1), the greeting still passes, and the answer and the
    barge-in fail as not reached, counted by kind."""
    with VoiceBot(BotConfig(greet_ms=300, reply_ms=300, stop_ms=250, crash_ms=2500)) as bot:
        status, lines, talks, stderr = load(
            cli_env, bot.port, tmp_path, "--calls", "2", "--total", "2", "--rate", "4"
        )
    assert status == 1, stderr
    total = lines[-1]
    assert total["total_failed_by"] == {"app-reset": 2}, [t.get("ended") for t in talks]
    assert total["total_conversations"] == 2 and total["total_conversations_failed"] == 2
    assert total["total_failed_expect"] == {"answer": 2, "stop": 2}
    for talk in talks:
        assert talk["ended"] == "app-reset"
        verdicts = {e["expectation"]: e for e in talk["expectations"]}
        assert verdicts["1 'greeting': first-response"]["verdict"] == "pass"
        for name in ("3 'question': answer", "4 'barge-in': stop"):
            assert verdicts[name]["verdict"] == "fail"
            assert "app-reset" in verdicts[name]["evidence"], verdicts[name]
