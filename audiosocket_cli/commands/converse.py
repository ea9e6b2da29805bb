"""`audiosocket converse ADDRESS [SCENARIO]`: hold a scripted conversation with a voice bot.

Flags and the scenario are checked here, before connecting (a bad scenario is
one line and exit 2); the call, the measures and the verdicts are
engines.converse's. Exit 3 when an expectation failed or the application
broke the protocol, 1 when it could not be reached.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

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
    monitor_option,
    open_output,
    open_pcap,
    output_options,
    pcap_option,
    placing_options,
)
from audiosocket_cli.output.sinks import Environment
from audiosocket_cli.protocol.events import FAILURE_ENDINGS
from audiosocket_cli.status import ExitStatus

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("address", required=False, type=AddressType(default_port=9092, client=True))
@click.argument("scenario", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--rate",
    type=RATE,
    default=8000,
    show_default=True,
    help="The call's audio rate (kind 0x10 at 8000, 0x12 at 16000, ...).",
)
@click.option(
    "--frame-ms",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    metavar="MS",
    help="Audio frame length.",
)
@conversation_options
@click.option(
    "--record",
    "record_path",
    metavar="FILE.wav",
    type=click.Path(dir_okay=False),
    help="A stereo WAV of the call on one timeline: the caller left, the agent right.",
)
@click.option(
    "--junit",
    "junit_path",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Also write the verdicts as JUnit XML (a testcase per expectation) for CI.",
)
@lenient_option
@monitor_option
@click.option(
    "--print-scenario",
    is_flag=True,
    help="Print the built-in scenario (a TOML file to start from) and exit.",
)
@placing_options
@pcap_option
@output_options
def converse(
    address: Any,
    scenario: str | None,
    rate: int,
    frame_ms: float,
    record_path: str | None,
    junit_path: str | None,
    lenient: bool,
    monitor: bool,
    print_scenario: bool,
    call_uuid: str | None,
    uuid_pattern: str | None,
    before_call: str | None,
    pcap_path: str | None,
    json_lines: bool,
    trace_path: str | None,
    verbose: int,
    quiet: bool,
    **conversation: Any,
) -> None:
    """Be a caller with a script: hold a conversation with the voice bot at ADDRESS.

    Places one call as Asterisk does (dial's engine: the UUID first, then 20 ms
    frames on a drift-free clock, silence frames whenever the caller is quiet,
    Asterisk's rules) and plays SCENARIO, a TOML file of steps: wait for the
    agent to speak or to go quiet, say an audio file, barge in while the agent
    speaks, send DTMF, keep quiet, hang up. Without SCENARIO, a built-in one
    that fits any bot: wait for a greeting, ask a question, barge in on the
    answer, hang up.

    The agent's speech is found in its audio with a voice activity detector;
    the caller's is known from what was sent. Measured: time to first
    response, response latency per turn, barge-in stop time, talk-over, dead
    air, agent speech per turn. Each expectation of the scenario, and the
    call's own (no talk-over, no dead air), passes or fails with its evidence:
    `expectation` lines, after `turn` and `barge-in` lines and before the
    call's end. docs/converse.md has every step, option and definition.

    \b
    Exit status: 0 every expectation passed, 1 could not connect, 2 usage
    error or a bad scenario, 3 an expectation failed or the application
    broke the protocol, 130 Ctrl-C, 143 SIGTERM.

    \b
    Examples:
      audiosocket converse 127.0.0.1:9092                      # the built-in scenario
      audiosocket converse 9092 booking.toml --record call.wav --junit converse.xml
      audiosocket converse 9092 --max-response 800ms --rate 16000 --json
      audiosocket converse --print-scenario > my-scenario.toml
    """
    from audiosocket_cli.engines.conversation.scenario import DEFAULT_SCENARIO
    from audiosocket_cli.engines.converse import ScenarioError, load_scenario

    env = Environment()
    if print_scenario:
        click.echo(DEFAULT_SCENARIO.read_text(encoding="utf-8"), file=env.stdout, nl=False)
        return
    if address is None:
        raise click.UsageError("missing argument 'ADDRESS' (or --print-scenario)")
    uuids = call_uuids(call_uuid, uuid_pattern)
    try:
        plan = load_scenario(scenario)
        from audiosocket_cli.engines.conversation.scenario import load_utterances

        utterances = load_utterances(plan, rate)
    except ScenarioError as exc:
        raise ScenarioProblem(str(exc)) from None
    if record_path is not None and Path(record_path).suffix.lower() != ".wav":
        raise click.BadParameter(
            f"{record_path!r}: the stereo recording is a WAV file (FILE.wav)",
            param_hint="--record",
        )
    for path, option in ((record_path, "--record"), (junit_path, "--junit")):
        if path is not None:
            _check_writable(Path(path), option)
    _run(
        address,
        plan,
        utterances,
        env=env,
        uuid=uuids(1),
        random_uuid=call_uuid is None and uuid_pattern is None,
        before_call=before_call,
        rate=rate,
        frame_ms=frame_ms,
        thresholds=conversation_thresholds(conversation),
        lenient=lenient,
        monitor=monitor,
        record_path=record_path,
        junit_path=junit_path,
        pcap_path=pcap_path,
        json_lines=json_lines,
        trace_path=trace_path,
        verbose=verbose,
        quiet=quiet,
    )


def _check_writable(path: Path, option: str) -> None:
    """A file that cannot be written is a one-line failure before the call."""
    if path.is_dir():
        raise Failure(f"{path}: is a directory ({option})")
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise Failure(f"{path}: cannot write: {exc.strerror or exc} ({option})") from None
    if not existed:
        try:
            path.unlink()
        except OSError:
            pass


def _run(
    address: Any,
    scenario: Any,
    utterances: Any,
    *,
    env: Environment,
    uuid: str,
    random_uuid: bool,
    before_call: str | None,
    rate: int,
    frame_ms: float,
    thresholds: Any,
    lenient: bool,
    monitor: bool,
    record_path: str | None,
    junit_path: str | None,
    pcap_path: str | None,
    json_lines: bool,
    trace_path: str | None,
    verbose: int,
    quiet: bool,
) -> None:
    import numpy  # noqa: F401  # now, not while the first frames are due

    from audiosocket_cli.engines.before_call import BeforeCallFailed, run_before_call
    from audiosocket_cli.engines.converse import Conversation, junit_xml
    from audiosocket_cli.net.transport import ConnectError

    if before_call is not None:
        try:
            run_before_call(before_call, uuid, 1, address)
        except BeforeCallFailed as exc:
            raise Failure(str(exc)) from None
    output = open_output(
        env,
        json_lines=json_lines,
        trace_path=trace_path,
        verbose=verbose,
        quiet=quiet,
        command="converse",
    )
    pcap = device = None
    try:
        if monitor:
            from audiosocket_cli.commands.dial import _open_monitor

            device = _open_monitor()
        pcap = open_pcap(pcap_path, output)
        announce = functools.partial(click.echo, f"uuid {uuid}", err=True) if random_uuid else None
        conversation = Conversation(
            address,
            scenario,
            output=output,
            rate=rate,
            frame_ms=frame_ms,
            uuid=uuid,
            thresholds=thresholds,
            rules=asterisk_rules(lenient=lenient),
            record=record_path,
            pcap_file=pcap,
            on_connected=announce,
            utterances=utterances,
            monitor=device,
        )
        try:
            result = conversation.run()
        except ConnectError as exc:
            raise Failure(str(exc)) from None
    finally:
        closers = [x.close if x is not None else None for x in (device, pcap)]
        for close in (*closers, output.close):
            if close is not None:
                try:
                    close()
                except Exception:
                    pass
    if not env.stdout_isatty:  # the verdicts that failed, beside plain and JSON stdout
        for failed in result.failures:
            click.echo(f"audiosocket: converse: FAIL {failed.name}: {failed.evidence}", err=True)
    click.echo(f"audiosocket: converse: {result.summary()}", err=True)
    if junit_path is not None:
        xml = junit_xml(
            result.expectations, suite=f"converse {scenario.name}", duration=result.duration
        )
        try:
            Path(junit_path).write_bytes(xml)
        except OSError as exc:
            raise Failure(f"{junit_path}: cannot write: {exc.strerror or exc}") from None
    end = result.end
    if end is not None and end.broke_protocol:
        raise ProtocolFailure(f"{end.ended}: {end.detail}")
    if result.ended in FAILURE_ENDINGS:
        raise Failure(f"{result.ended}: {result.detail}")
    if result.failures:
        click.get_current_context().exit(ExitStatus.PROTOCOL)
