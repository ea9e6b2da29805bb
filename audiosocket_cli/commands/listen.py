"""`audiosocket listen [ADDRESS]`: be the application Asterisk calls.

The flags are checked and turned into a ListenConfig here; the calls run in
server.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from audiosocket_cli.commands.options import (
    INJECT,
    AddressType,
    Failure,
    application_rules,
    open_output,
    open_pcap,
    output_options,
    pcap_option,
    warm_up,
)
from audiosocket_cli.net.address import Address
from audiosocket_cli.output.sinks import Environment, Output
from audiosocket_cli.protocol.inject import Injection
from audiosocket_cli.protocol.wire import Message
from audiosocket_cli.status import ExitStatus, Terminated

DEFAULT_ADDRESS = "127.0.0.1:9092"

workers_option = click.option(
    "--workers",
    metavar="N",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Processes serving calls on the one port (SO_REUSEPORT), one core each. Raise it "
    "past a few hundred calls at once, or when one core is saturated.",
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("address", required=False, default=DEFAULT_ADDRESS, type=AddressType(9092))
@click.option(
    "--record",
    "record_dir",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Write each call's inbound audio to DIR/<uuid>.wav (another rate: <uuid>.<rate>.wav).",
)
@click.option("--echo", is_flag=True, help="Send each inbound audio message straight back.")
@click.option(
    "--play",
    "play_path",
    metavar="FILE",
    help="Send this audio file to each caller, at the call's rate, paced at real time.",
)
@click.option("--loop", is_flag=True, help="With --play: start the file again at its end.")
@click.option(
    "--tone",
    metavar="HZ",
    type=click.FloatRange(0, 96000, min_open=True),
    help="Send a sine tone at HZ to each caller.",
)
@click.option("--silence", is_flag=True, help="Send silent 20 ms frames to each caller.")
@click.option(
    "--inject",
    "injections",
    metavar="SPEC",
    type=INJECT,
    multiple=True,
    help="Send WHAT@SECONDS into each call: hangup, error[:CODE], dtmf:DIGITS, raw:HEX, close.",
)
@click.option(
    "--hangup-after",
    metavar="SECONDS",
    type=click.FloatRange(0),
    help="Hang up each call after SECONDS (same as --inject hangup@SECONDS).",
)
@click.option(
    "--max-calls",
    metavar="N",
    type=click.IntRange(1),
    help="Serve N calls, then exit once they have ended.",
)
@click.option(
    "--max-concurrent",
    metavar="N",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Calls served at once; a caller beyond is closed at once.",
)
@click.option(
    "--timeout",
    metavar="SECONDS",
    type=click.FloatRange(0, min_open=True),
    help="End a call when nothing arrives for SECONDS.",
)
@workers_option
@click.option("--monitor", is_flag=True, help="Play the inbound audio on the local sound device.")
@pcap_option
@output_options
def listen(
    address: object,
    record_dir: str | None,
    echo: bool,
    play_path: str | None,
    loop: bool,
    tone: float | None,
    silence: bool,
    injections: tuple[Injection, ...],
    hangup_after: float | None,
    max_calls: int | None,
    max_concurrent: int,
    timeout: float | None,
    workers: int,
    monitor: bool,
    pcap_path: str | None,
    json_lines: bool,
    trace_path: str | None,
    verbose: int,
    quiet: bool,
) -> None:
    """Be the application: accept AudioSocket calls (default 127.0.0.1:9092),
    many at once, show every message, and record, echo or play back.

    Each call runs until the caller hangs up or closes. Replies (at most one
    of --echo, --play, --tone, --silence) start at 8 kHz and follow the rate
    of the caller's audio. Port 0 picks a free port; the first line on stderr
    is always `listening on HOST:PORT`.

    Exit status: 0 once --max-calls calls have ended, 3 if any of them broke
    the protocol (a stream cut inside a message, garbage, a message that
    stalls); 1 if it cannot listen; 130 on Ctrl-C and 143 on SIGTERM, with
    every recording and trace complete.

    One process serves every call on one core. To find out how many calls an
    Asterisk host carries, `listen` must not be the limit: past a few hundred
    calls at once, or when `listen` keeps a core busy, raise --workers (up to
    one per core). The workers share the port (SO_REUSEPORT), one output, one
    --max-calls and --max-concurrent, and one exit status.

    \b
    Examples:
      audiosocket listen                             # show what Asterisk sends
      audiosocket listen --record calls/ --echo      # record, and echo back
      audiosocket listen 0.0.0.0:9092 --play prompt.wav --hangup-after 10
      audiosocket listen --json | jq -c 'select(.kind == "dtmf")'
      audiosocket listen --echo --inject error:2@3   # does Asterisk end the call?
      audiosocket listen --monitor --timeout 5       # hear the first call
      audiosocket listen --echo --pcap calls.pcap    # then: wireshark calls.pcap
      audiosocket listen 0.0.0.0:9092 --echo -q --workers 2   # 1000+ calls at once

    \b
    In Asterisk's dialplan (8 kHz):
      same => n,Answer()
      same => n,AudioSocket(40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01,127.0.0.1:9092)
    or through the channel driver, 16 kHz:
      same => n,Dial(AudioSocket/127.0.0.1:9092/40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01/c(slin16))
    """
    why = ""
    replies = [
        name
        for name, chosen in (
            ("--echo", echo),
            ("--play", play_path is not None),
            ("--tone", tone is not None),
            ("--silence", silence),
        )
        if chosen
    ]
    if len(replies) > 1:
        raise click.UsageError(f"{' and '.join(replies)} cannot go together: choose one reply")
    if loop and play_path is None:
        raise click.UsageError("--loop goes with --play FILE")
    if tone is not None and tone >= 4000:
        # Replies start at 8 kHz (the dialplan application's rate): above 4 kHz the
        # tone would alias, as dial refuses it too.
        raise click.BadParameter(
            f"{tone:g} Hz cannot be sent at 8000 Hz, the rate replies start at (at most 3999 Hz)",
            param_hint="--tone",
        )
    if hangup_after is not None:
        injections = (*injections, Injection(hangup_after, "hangup", (Message.hangup(),)))
    if workers > 1:
        for flag, given in (("--monitor", monitor), ("--pcap", pcap_path is not None)):
            if given:
                raise click.UsageError(f"{flag} goes with one worker, not --workers {workers}")

    from audiosocket_cli.engines.listen import ListenConfig, Server, signals_deferred
    from audiosocket_cli.net.transport import ConnectError

    config = ListenConfig(
        echo=echo,
        injections=injections,
        rules=application_rules(idle_timeout=timeout),
        max_calls=max_calls,
        max_concurrent=max_concurrent,
        source_factory=_source_factory(play_path, loop, tone, silence),
        record_dir=_record_dir(record_dir),
    )
    env = Environment()
    output = open_output(
        env,
        json_lines=json_lines,
        trace_path=trace_path,
        verbose=verbose,
        quiet=quiet,
        command="listen",
    )
    # A server outlives a pipe's reader (`listen | grep -m1 ...`): see docs/output.md.
    output.outlive_stdout = True
    if workers > 1:
        from audiosocket_cli.engines.workers import unavailable

        why = unavailable()
        if why:
            why = f"--workers {workers}: {why}; running one worker"
            workers = 1  # said once `listening on` is out, the first line on stderr
        else:
            _serve_workers(env, output, config, address, workers)  # type: ignore[arg-type]
            return
    server = None
    status = ExitStatus.OK
    ended, detail = "interrupted", "the tool stopped"
    try:
        config.pcap = open_pcap(pcap_path, output)  # before listening: a bad FILE is one line
        try:
            server = Server.bind(address, output, config)  # type: ignore[arg-type]
        except ConnectError as exc:
            raise Failure(str(exc)) from None
        missing = ""
        if monitor:
            server.monitor, missing = _open_monitor()
            config.monitor = server.monitor
        # Ready means ready: the first call's clock is as exact as the hundredth's.
        warm_up(record_dir is not None)
        env.stderr.write(f"listening on {server.address}\n")  # always the first line
        if why:
            env.stderr.write(f"audiosocket: warning: {why}\n")
        if missing:
            env.stderr.write(f"audiosocket: warning: --monitor: {missing}; going on without it\n")
        env.stderr.flush()
        status = server.run()
    except KeyboardInterrupt:
        ended, detail = "interrupted", "Ctrl-C"
        raise
    except Terminated:
        ended, detail = "terminated", "SIGTERM"
        raise
    except BrokenPipeError:
        ended, detail = "output-closed", "the output was closed"
        raise
    finally:
        with signals_deferred():
            try:
                if server is not None:
                    server.close(ended, detail)
            finally:
                if config.monitor is not None:
                    config.monitor.close()
                if config.pcap is not None:
                    config.pcap.close()
                output.close()
    if status != ExitStatus.OK:
        click.get_current_context().exit(status)


def _serve_workers(
    env: Environment, output: Output, config: Any, address: Address, workers: int
) -> None:
    """`listen --workers N`: N processes on one port, their output merged here."""
    from audiosocket_cli.engines.listen import worker_server
    from audiosocket_cli.engines.workers import Budget, WorkerFailed, serve
    from audiosocket_cli.net.transport import ConnectError, listen_reuseport, raise_fd_limit

    try:
        raise_fd_limit()
        try:
            listener = listen_reuseport(address)
        except ConnectError as exc:
            raise Failure(str(exc)) from None
        warm_up(config.record_dir is not None)  # once, before the workers are forked
        budget = Budget(config.max_calls, config.max_concurrent, shared=True, workers=workers)
        try:
            status = serve(listener, worker_server(config), output, budget, workers, env.stderr)
        except WorkerFailed as exc:
            raise Failure(str(exc)) from None
    finally:
        output.close()
    if status != ExitStatus.OK:
        click.get_current_context().exit(status)


def _source_factory(
    play_path: str | None, loop: bool, tone: float | None, silence: bool
) -> Callable[[], Any] | None:
    """What paced replies come from, per call; a file is read here, once."""
    if play_path is not None:
        from audiosocket_cli.engines.listen import file_source_factory
        from audiosocket_cli.media.audio import AudioFileError, FileSource

        if not os.path.exists(play_path):
            raise Failure(f"{play_path}: no such file")
        if os.path.isdir(play_path):
            raise Failure(f"{play_path}: is a directory")
        try:
            template = FileSource(play_path, loop=loop)
            template.pcm(8000)  # resampled now, not while the first call waits
            if template.note:
                click.echo(f"audiosocket: warning: {template.note}", err=True)
        except AudioFileError as exc:
            raise Failure(str(exc)) from None
        return file_source_factory(template)
    if tone is not None:
        from audiosocket_cli.media.audio import ToneSource

        return lambda: ToneSource(tone)
    if silence:
        from audiosocket_cli.media.audio import SilenceSource

        return SilenceSource
    return None


def _record_dir(record_dir: str | None) -> Path | None:
    if record_dir is None:
        return None
    path = Path(record_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Failure(f"{record_dir}: cannot create: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise Failure(f"{record_dir}: cannot write there")
    return path


def _open_monitor() -> tuple[Any, str]:
    """A Monitor and "", or None and what is missing."""
    from audiosocket_cli.media.monitor import Monitor, MonitorUnavailable

    try:
        return Monitor(), ""
    except MonitorUnavailable as exc:
        return None, str(exc)
