"""`audiosocket report INPUT... -o report.html`: one HTML page with plots of each call.

A thin command: the options, and the engine's errors as one-line failures.
The engine (reading, measuring, plotting, the page) is the engines.report package.
"""

from __future__ import annotations

import click

from audiosocket_cli.commands.options import Failure, input_options
from audiosocket_cli.engines.report import EMBED_SECONDS, ReportError, write_report
from audiosocket_cli.output.sinks import Environment

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument(
    "inputs", metavar="INPUT...", nargs=-1, required=True, type=click.Path(allow_dash=True)
)
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    default="report.html",
    show_default=True,
    type=click.Path(allow_dash=False),
    help="The HTML page to write.",
)
@input_options
@click.option(
    "--embed-audio",
    "embed_seconds",
    metavar="SECONDS",
    type=click.FloatRange(min=0),
    default=EMBED_SECONDS,
    show_default=True,
    help="Audio up to this long plays inside the page; longer audio is written as WAV "
    "files in a folder beside it (FILE stem + -audio/).",
)
def report(
    inputs: tuple[str, ...],
    output: str,
    direction: str,
    port: int | None,
    embed_seconds: float,
) -> None:
    """Write one self-contained HTML page about the calls in trace files,
    raw byte dumps ('-' is stdin) and packet captures (pcap, pcapng),
    and of load runs in `load --stats` CSV files (known by their header).

    Per call: UUID, addresses, rates, duration, how it ended and the
    diagnoses with their evidence; a timeline of each direction (level,
    waveform, time between messages with bursts and gaps marked, DTMF,
    errors, hangups, warnings); histograms of jitter and frame sizes; and
    the audio of each direction to play. Several calls get a table linking
    to each. Per load run, first: calls up, messages per second, send
    lateness, time to first audio and echo round trip over time, and a
    summary. The page needs no network to open.

    \b
    Examples:
      audiosocket report call.trace -o call.html
      audiosocket report capture.pcap --port 9092 -o capture.html
      audiosocket report --dir '<' reply.raw -o reply.html
      audiosocket report run.csv -o run.html
      audiosocket listen --trace calls.trace --max-calls 10 && audiosocket report calls.trace
    """
    env = Environment()
    try:
        result = write_report(
            inputs,
            output,
            direction=direction,
            port=port,
            embed_seconds=embed_seconds,
            progress=bool(env.stderr_isatty),
        )
    except ReportError as exc:
        raise Failure(str(exc)) from None
    size = result.size / 1e6
    runs = f"{result.loads} load run(s), " if result.loads else ""
    click.echo(f"wrote {result.path} ({runs}{result.calls} call(s), {size:.1f} MB)", err=True)
    for path in result.audio_files:
        click.echo(f"wrote {path}", err=True)
