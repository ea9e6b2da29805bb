"""`audiosocket replay TRACE [ADDRESS]`: run a recorded call again against an application.

The `>` side of one call in a trace file, raw dump or packet capture is sent
to ADDRESS with its original timing (relative to the call's first `>`
message, scaled by --speed) on a drift-free clock, each message in one send.
What the application sends back is shown, checked as Asterisk would check it,
optionally recorded, and at the end set beside what it sent in the original.
The engine is replayer.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from audiosocket_cli.commands.options import (
    AddressType,
    Failure,
    ProtocolFailure,
    asterisk_rules,
    lenient_option,
    open_output,
    open_pcap,
    output_options,
    pcap_option,
)
from audiosocket_cli.engines.replay import ReplayError, ReplayInput, pick, scan
from audiosocket_cli.engines.replay import replay as run_replay
from audiosocket_cli.media.recorder import check_writable, file_recording
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.transport import ConnectError
from audiosocket_cli.output.sinks import Environment
from audiosocket_cli.protocol.events import FAILURE_ENDINGS

DEFAULT_PORT = 9092
ADDRESS = AddressType(default_port=DEFAULT_PORT, client=True)
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("trace_file", metavar="TRACE", type=click.Path(allow_dash=True))
@click.argument("address", metavar="[ADDRESS]", required=False, type=ADDRESS)
@click.option(
    "--call",
    "call_filter",
    metavar="UUID",
    help="The call to replay when TRACE holds several (UUID, a prefix of it, or #N).",
)
@click.option(
    "--speed",
    metavar="X",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="1 is the original timing, 2 twice as fast; 0 sends everything at once, in order.",
)
@click.option(
    "--linger",
    metavar="SECONDS",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds to wait for the application after the last message, then close.",
)
@click.option(
    "--record",
    "record_path",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Write the audio the application sends to this WAV "
    "(audio at a second rate goes to FILE stem + .RATE.wav).",
)
@click.option(
    "--port",
    metavar="PORT",
    type=click.IntRange(1, 65535),
    help="The application's port in a packet capture.",
)
@lenient_option
@pcap_option
@output_options
def replay(
    trace_file: str,
    address: Any,
    call_filter: str | None,
    speed: float,
    linger: float,
    record_path: str | None,
    port: int | None,
    lenient: bool,
    pcap_path: str | None,
    json_lines: bool,
    trace_path: str | None,
    verbose: int,
    quiet: bool,
) -> None:
    """Run a recorded call again: send the `>` side of TRACE (what Asterisk
    sent) to the application at ADDRESS (default 127.0.0.1:9092) with its
    original timing, show what comes back, and compare it with what the
    application sent in the original.

    TRACE is a trace file (--trace of any command), a raw dump of what
    Asterisk sent (it carries no timing: each message goes out when the audio
    before it has played, one 20 ms frame every 20 ms), or a packet capture
    (pcap or pcapng, as tcpdump -w or Wireshark write). '-' reads standard
    input. Each message goes out in one send at its
    original time from the call's first message, on a drift-free clock. The
    call ends when everything was sent and --linger passed, or when the
    application hangs up or closes; a trace that ended with a hangup message
    from Asterisk's side ends with it here too.

    Strict like Asterisk: when the application sends something Asterisk
    refuses, the call ends with the reason and exit status 3 (--lenient only
    reports it).

    \b
    Examples:
      audiosocket replay call.trace 127.0.0.1:9092
      audiosocket replay call.trace --speed 0 --record answer.wav
      audiosocket replay capture.pcap 9092 --call 40325ec2
      audiosocket replay capture.pcap --port 4573 --json | jq -c 'select(.event)'
      audiosocket replay dump.raw 10.0.0.5:9092 --linger 3 --trace again.trace
      audiosocket replay call.trace --pcap again.pcap   # the new call, for Wireshark

    \b
    Exit status: 0 the call ended normally (either side), 1 could not read
    TRACE or connect, 2 usage error, 3 the application broke the protocol,
    130 Ctrl-C, 143 SIGTERM.
    """
    if address is None:
        address = Address("127.0.0.1", DEFAULT_PORT)
    if trace_path and trace_path != "-" and Path(trace_path).resolve() == _resolved(trace_file):
        raise click.BadParameter("--trace would overwrite TRACE", param_hint="--trace")
    if record_path and Path(record_path).resolve() == _resolved(trace_file):
        raise click.BadParameter("--record would overwrite TRACE", param_hint="--record")
    if pcap_path and Path(pcap_path).resolve() == _resolved(trace_file):
        raise click.BadParameter("--pcap would overwrite TRACE", param_hint="--pcap")
    if record_path:
        problem = check_writable(Path(record_path))
        if problem:
            raise Failure(f"{problem} (--record)")
    try:
        source = ReplayInput(trace_file)
    except ReplayError as exc:
        raise Failure(str(exc)) from None
    try:
        calls, kind = scan(source, port)
        original = pick(calls, call_filter, source.label)
        recording = (
            file_recording(Path(record_path), original.rate or 8000) if record_path else None
        )
        output = open_output(
            Environment(),
            json_lines=json_lines,
            trace_path=trace_path,
            verbose=verbose,
            quiet=quiet,
            command="replay",
        )
        pcap = None
        try:
            pcap = open_pcap(pcap_path, output)
            end = run_replay(
                source,
                original,
                port,
                address,
                speed=speed,
                linger=linger,
                rules=asterisk_rules(lenient=lenient),
                output=output,
                recording=recording,
                comparable=kind != "raw",
                pcap=pcap,
            )
        except ConnectError as exc:
            raise Failure(str(exc)) from None
        finally:
            if recording is not None:
                recording.close()
            if pcap is not None:
                pcap.close()
            output.close()
    except ReplayError as exc:
        if exc.usage:
            if exc.param:
                raise click.BadParameter(str(exc), param_hint=exc.param) from None
            raise click.UsageError(str(exc)) from None
        raise Failure(str(exc)) from None
    finally:
        source.close()
    if end.broke_protocol:
        raise ProtocolFailure(f"{end.ended}: {end.detail}")
    if end.ended in FAILURE_ENDINGS:
        raise Failure(f"{end.ended}: {end.detail}")


def _resolved(name: str) -> Path | None:
    return None if name == "-" else Path(name).resolve()
