"""`audiosocket load ADDRESS`: many Asterisk-side calls at once, SIPp-style statistics.

The flags are checked and turned into an engines.load.LoadPlan here (every
input is checked before the first call); the calls run in the engines.load package.
This module shows each period (plain lines, JSON lines or a live dashboard),
writes --stats, and maps the totals to an exit status.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import click

from audiosocket_cli.commands.dial import DEFAULT_PORT, DTMF
from audiosocket_cli.commands.options import (
    RATE,
    AddressType,
    Failure,
    ProtocolFailure,
    ScenarioProblem,
    asterisk_rules,
    call_uuids,
    conversation_options,
    conversation_thresholds,
    lenient_option,
    placing_options,
)
from audiosocket_cli.protocol.inject import Injection
from audiosocket_cli.status import ExitStatus

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
LINGER = 1.0  # s after a --play file, as dial's --linger default


class MaxFailedType(click.ParamType):
    """--max-failed K (calls) or P% (of the calls started)."""

    name = "K|P%"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int | None, float | None]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        try:
            if text.endswith("%"):
                share = float(text[:-1])
                if not 0 <= share <= 100:
                    raise ValueError
                return None, share / 100
            count = int(text)
            if count < 0:
                raise ValueError
            return count, None
        except ValueError:
            self.fail(f"{text!r}: expected a number of calls (5) or a percentage (5%)", param, ctx)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("address", type=AddressType(default_port=DEFAULT_PORT, client=True))
@click.option(
    "--calls",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    metavar="N",
    help="Calls up at once, at most.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="R",
    help="New calls per second (SIPp's -r; the audio's rate is --sample-rate).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Each call's length in seconds [default: 10; with --play, the file's length + 1].",
)
@click.option(
    "--total",
    type=click.IntRange(min=1),
    metavar="M",
    help="Stop after this many calls in all [default: run until Ctrl-C].",
)
@click.option("--play", "play_path", metavar="FILE", help="Send a sound file once in each call.")
@click.option(
    "--tone", type=click.FloatRange(min=0, min_open=True), metavar="HZ", help="Send a sine tone."
)
@click.option("--silence", is_flag=True, help="Send silent frames (the default).")
@click.option(
    "--scenario",
    "scenario_path",
    metavar="FILE",
    help="Each call holds this conversation (a `converse` scenario; `builtin`: its built-in "
    "one) and is measured as converse measures it.",
)
@click.option("--no-audio", is_flag=True, help="Send nothing after the UUID.")
@click.option(
    "--dtmf",
    type=DTMF,
    multiple=True,
    help="Send DTMF digits at a moment of each call: DIGITS@SECONDS. Repeatable.",
)
@click.option(
    "--sample-rate",
    type=RATE,
    default=8000,
    show_default=True,
    help="Audio sample rate: 8000 (kind 0x10) ... 192000 (0x18).",
)
@conversation_options
@click.option(
    "--conversations",
    "conversations_path",
    metavar="FILE.jsonl",
    type=click.Path(dir_okay=False),
    help="With --scenario: a JSON line per conversation (its figures, turns, verdicts).",
)
@placing_options
@lenient_option
@click.option(
    "--period",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Statistics every this many seconds.",
)
@click.option("--json", "json_lines", is_flag=True, help="A JSON line per period on stdout.")
@click.option(
    "--stats",
    "stats_path",
    metavar="FILE.csv",
    type=click.Path(dir_okay=False),
    help="Write a CSV row per period (columns: docs/load.md).",
)
@click.option(
    "--record",
    "record_dir",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Write what the application sent in each call to DIR/<uuid>.wav.",
)
@click.option(
    "--max-failed",
    type=MaxFailedType(),
    default="0",
    show_default=True,
    help="Failed calls tolerated before the exit status is 1: a count or a percentage.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    metavar="N",
    help="Worker processes, each one event loop [default: one per core].",
)
def load(
    address: Any,
    calls: int,
    rate: float,
    duration: float | None,
    total: int | None,
    play_path: str | None,
    tone: float | None,
    silence: bool,
    scenario_path: str | None,
    no_audio: bool,
    dtmf: tuple[Injection, ...],
    sample_rate: int,
    conversations_path: str | None,
    call_uuid: str | None,
    uuid_pattern: str | None,
    before_call: str | None,
    lenient: bool,
    period: float,
    json_lines: bool,
    stats_path: str | None,
    record_dir: str | None,
    max_failed: tuple[int | None, float | None],
    workers: int | None,
    **conversation: Any,
) -> None:
    """Be Asterisk many times over: run many calls at once against the application at
    ADDRESS, and print statistics every --period.

    Calls start at --rate per second, up to --calls at once, each lasting
    --duration seconds, until --total calls were made (or Ctrl-C: the calls
    still up are ended cleanly and the totals printed). Each call is a `dial`
    call: the UUID first, then 20 ms frames on a drift-free clock, closed
    without a hangup message, and judged as Asterisk judges it (strict unless
    --lenient).

    Each period shows calls started, up, ended and failed (by reason), messages
    and bytes each way, our own send lateness, the application's time to first
    audio, real-time ratio, jitter, bursts and gaps, the echo round trip when it
    echoes, and the diagnoses of the calls that ended. A plain line per period
    on a pipe, a JSON line with --json, a live table on a terminal.

    With --scenario, each call holds a `converse` conversation (the agent's
    speech found by the speech detector as it arrives) and each period adds
    response latency p50/p95/p99, time to first response, barge-in stop time,
    talk-overs, dead air and failed expectations by kind: latency against
    concurrent calls. --max-response and the other limits are converse's.

    \b
    Exit status: 0 every call ended normally (or no more failed than
    --max-failed), 1 more calls failed than --max-failed or the run could not
    start, 2 usage error, 3 the application broke the protocol in a call,
    130 Ctrl-C, 143 SIGTERM. With --scenario, also 3 when more conversations
    failed an expectation than --max-failed.

    \b
    Examples:
      audiosocket load 127.0.0.1:9092 --calls 100 --rate 10 --duration 30 --total 1000
      audiosocket load 9092 --calls 500 --tone 440 --stats run.csv --max-failed 1%
      audiosocket load 9092 --play hello.wav --total 20 --record answers/ --json
      audiosocket load 9092 --scenario builtin --calls 50 --total 200 --stats bot.csv
    """
    from audiosocket_cli.engines.load import (
        LoadPlan,
        default_workers,
        dtmf_schedule,
    )

    chosen = [
        name
        for name, given in (
            ("--play", play_path is not None),
            ("--tone", tone is not None),
            ("--silence", silence),
            ("--no-audio", no_audio),
            ("--scenario", scenario_path is not None),
        )
        if given
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one audio source, not {' and '.join(chosen)}")
    if tone is not None and tone >= sample_rate / 2:
        raise click.BadParameter(
            f"{tone:g} Hz cannot be sent at {sample_rate} Hz", param_hint="--tone"
        )
    if scenario_path is not None and dtmf:
        raise click.UsageError("--dtmf goes in the scenario (a dtmf step), not with --scenario")
    if conversations_path is not None and scenario_path is None:
        raise click.UsageError("--conversations needs --scenario")
    thresholds = conversation_thresholds(conversation)
    uuids = call_uuids(call_uuid, uuid_pattern)
    pcm = b""
    scenario: Any = None
    utterances: dict[Path, Any] = {}
    source, source_name = "silence", "silence"
    if no_audio:
        source, source_name = "none", "none"
    elif tone is not None:
        source, source_name = "tone", f"tone:{tone:g}Hz"
    elif play_path is not None:
        pcm, source_name = _read_file(play_path, sample_rate), f"file:{Path(play_path).name}"
        source = "file"
        if duration is None:
            duration = len(pcm) / 2 / sample_rate + LINGER
    elif scenario_path is not None:
        scenario, utterances = _read_scenario(scenario_path, sample_rate)
        source, source_name = "scenario", f"scenario:{scenario.name}"
        if duration is None:
            duration = float("inf")  # the scenario ends each call
    if conversations_path is not None:
        try:
            open(conversations_path, "w", encoding="utf-8").close()  # noqa: SIM115
        except OSError as exc:
            raise Failure(
                f"{conversations_path}: cannot write: {exc.strerror or exc} (--conversations)"
            ) from None
    record = Path(record_dir) if record_dir else None
    if record is not None:
        from audiosocket_cli.media.recorder import check_writable_folder

        problem = check_writable_folder(record)
        if problem:
            raise Failure(f"{problem} (--record)")
    stats_file = None
    if stats_path:
        try:
            stats_file = open(stats_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise Failure(f"{stats_path}: cannot write: {exc.strerror or exc}") from None
    plan = LoadPlan(
        address=address,
        calls=calls,
        rate=rate,
        duration=10.0 if duration is None else duration,
        total=total,
        sample_rate=sample_rate,
        source=source,
        tone_hz=tone or 440.0,
        pcm=pcm,
        source_name=source_name,
        dtmf=dtmf_schedule(dtmf),
        uuid_pattern=uuids.pattern,
        uuid=uuids.uuid,
        before_call=before_call,
        rules=asterisk_rules(lenient=lenient),
        period=period,
        record_dir=record,
        scenario=scenario,
        utterances=utterances,
        thresholds=thresholds,
        conversations_path=Path(conversations_path) if conversations_path else None,
    )
    try:
        status, last = _run(plan, workers or default_workers(), json_lines, stats_file, max_failed)
    finally:
        if stats_file is not None:
            stats_file.close()
    _exit(status, last)


def _read_scenario(path: str, rate: int) -> tuple[Any, dict[Path, Any]]:
    """The scenario and its utterances at the call's rate; a bad one is exit 2."""
    from audiosocket_cli.engines.conversation.scenario import (
        ScenarioError,
        load_scenario,
        load_utterances,
    )

    try:
        scenario = load_scenario(None if path == "builtin" else path)
        return scenario, load_utterances(scenario, rate)
    except ScenarioError as exc:
        raise ScenarioProblem(f"{exc} (--scenario)") from None


def _read_file(path: str, rate: int) -> bytes:
    from audiosocket_cli.media import audio

    if not Path(path).is_file():
        raise Failure(f"{path}: no such file")
    try:
        return audio.FileSource(path).pcm(rate)
    except audio.AudioFileError as exc:
        raise Failure(str(exc)) from None


def _run(
    plan: Any,
    workers: int,
    json_lines: bool,
    stats_file: Any,
    max_failed: tuple[int | None, float | None],
) -> tuple[int, dict[str, Any] | None]:
    import json
    import socket

    from audiosocket_cli.commands.options import warm_up
    from audiosocket_cli.engines.load import Dashboard, csv_columns, csv_row, plain_line, run_load

    try:
        socket.getaddrinfo(plan.address.host, plan.address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Failure(f"cannot resolve {plan.address.host}: {exc.strerror}") from None
    # numpy and the mu-law table now, not while the first frames are due (workers inherit).
    warm_up(recording=plan.record_dir is not None)
    writer = csv.writer(stats_file) if stats_file is not None else None
    columns = csv_columns(conversation=plan.scenario is not None)
    if writer is not None:
        writer.writerow(columns)
    dashboard = None
    if not json_lines and _isatty(sys.stdout):
        dashboard = Dashboard(sys.stdout)
    warned = [False]

    def on_row(row: Any) -> None:
        data = row.as_dict()
        if writer is not None:
            writer.writerow(csv_row(data, columns))
            stats_file.flush()
        if data["generator_late"] and not warned[0]:
            warned[0] = True
            click.echo(
                f"audiosocket: warning: our own sends were late (p99 {data['send_late_p99_ms']} "
                "ms > 5 ms): the generator, not the application, is the limit; use fewer "
                "calls or more --workers",
                err=True,
            )
        if json_lines:
            click.echo(json.dumps(data))
        elif dashboard is not None:
            dashboard.update(data)
            if data["type"] == "total":
                dashboard.close()
                click.echo(plain_line(data))
        else:
            click.echo(plain_line(data))
        sys.stdout.flush()

    try:
        result = run_load(plan, workers=workers, on_row=on_row)
    finally:
        if dashboard is not None:
            dashboard.close()
    count, share = max_failed
    return result.status(count, share), result.last


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _exit(status: int, last: dict[str, Any] | None) -> None:
    totals = last or {}
    if (
        status == ExitStatus.PROTOCOL
        and totals.get("total_conversations_failed")
        and not (totals.get("total_violations"))
    ):
        raise ProtocolFailure(
            f"{totals['total_conversations_failed']} of {totals['total_conversations']} "
            f"conversations failed an expectation: {totals['total_failed_expect']}"
        )
    if status == ExitStatus.PROTOCOL:
        raise ProtocolFailure(
            f"{totals.get('total_violations', '?')} call(s) broke the protocol "
            f"(failed by reason: {totals.get('total_failed_by', {})})"
        )
    if status == ExitStatus.FAILED:
        raise Failure(
            f"{totals.get('total_failed', '?')} of {totals.get('total_started', '?')} calls "
            f"failed: {totals.get('total_failed_by', {})}"
        )
    if status in (ExitStatus.INTERRUPTED, ExitStatus.TERMINATED):
        click.echo(
            "audiosocket: interrupted" if status == ExitStatus.INTERRUPTED else "terminated",
            err=True,
        )
        click.get_current_context().exit(status)
