"""`audiosocket capture --upstream ADDRESS [ADDRESS]`: a transparent recording proxy."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path
from typing import Any

import click

from audiosocket_cli.commands.listen import workers_option
from audiosocket_cli.commands.options import (
    AddressType,
    Failure,
    application_rules,
    asterisk_rules,
    open_output,
    open_pcap,
    output_options,
    pcap_option,
    warm_up,
)
from audiosocket_cli.engines.capture import COALESCE, Proxy, resolve, worker_proxy
from audiosocket_cli.engines.workers import Budget, WorkerFailed, serve, unavailable
from audiosocket_cli.media.recorder import check_writable_folder
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.reactor import Reactor
from audiosocket_cli.net.transport import (
    CONNECT_TIMEOUT,
    ConnectError,
    bound_address,
    listen,
    listen_reuseport,
)
from audiosocket_cli.output.sinks import Environment, Output
from audiosocket_cli.status import Terminated

DEFAULT_PORT = 9093


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument(
    "address", required=False, default=f"127.0.0.1:{DEFAULT_PORT}", type=AddressType(DEFAULT_PORT)
)
@click.option(
    "--upstream",
    required=True,
    type=AddressType(client=True),
    help="The real AudioSocket application to forward each call to.",
)
@click.option(
    "--record",
    "record_dir",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Write DIR/<uuid>.in.wav (from Asterisk) and DIR/<uuid>.out.wav (from the application).",
)
@click.option(
    "--record-stereo",
    "stereo_dir",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Write both sides of each call to DIR/<uuid>.stereo.wav on one timeline: Asterisk "
    "on the left, the application on the right, each where it plays (may be --record's DIR).",
)
@click.option(
    "--max-calls", metavar="N", type=click.IntRange(min=1), help="Exit after N calls have ended."
)
@click.option(
    "--max-concurrent",
    metavar="N",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Calls at once; a caller beyond that is closed at once.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=CONNECT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Give up on the upstream after this long (Asterisk allows 2 s).",
)
@click.option(
    "--timeout",
    metavar="SECONDS",
    type=click.FloatRange(0, min_open=True),
    help="End a call when nothing arrives from the caller for SECONDS.",
)
@workers_option
@pcap_option
@output_options
def capture(
    address: Address,
    upstream: Address,
    record_dir: str | None,
    stereo_dir: str | None,
    max_calls: int | None,
    max_concurrent: int,
    connect_timeout: float,
    timeout: float | None,
    workers: int,
    pcap_path: str | None,
    json_lines: bool,
    trace_path: str | None,
    verbose: int,
    quiet: bool,
) -> None:
    """Sit between Asterisk and the application: forward, show and record.

    Point Asterisk at ADDRESS (default 127.0.0.1:9093); each call is
    forwarded to the --upstream application. Every byte goes on unchanged
    and at once, in the chunks it came in, both ways; decoding, display and
    recording happen on the side. At each call's end: a summary and the
    diagnoses of `dial` (pacing, bursts, kinds Asterisk refuses, one-way
    audio, mu-law labelled as slin). `>` is what Asterisk sent, `<` what the
    application sent.

    --pcap FILE keeps each call's connection from Asterisk to capture, as
    Asterisk saw it: its addresses and ports, the chunks read from Asterisk
    and those written back to it (the leg to the upstream is not in the file).

    \b
    Exit status (with --max-calls): 0 every call ended normally, 1 cannot
    listen or the upstream could not be reached, 2 usage error, 3 a peer
    broke the protocol (forwarded all the same), 130 Ctrl-C, 143 SIGTERM.

    One process forwards every call on one core: past a few hundred calls at
    once, or when `capture` keeps a core busy, raise --workers (up to one per
    core). The workers share the port, one output, one --max-calls and
    --max-concurrent, and one exit status.

    \b
    Examples:
      audiosocket capture --upstream 127.0.0.1:9092
      audiosocket capture --upstream bot:9092 0.0.0.0:9093 --record calls/ --trace calls.trace
      audiosocket capture --upstream 9092 --record-stereo calls/   # calls/<uuid>.stereo.wav
      audiosocket capture --upstream 9092 --json | jq 'select(.event)'
      audiosocket capture --upstream 9092 --max-calls 1 -q
      audiosocket capture --upstream 9092 --pcap calls.pcap   # for Wireshark
      audiosocket capture --upstream 9092 -q --workers 2      # 1000+ calls at once
    """
    ctx = click.get_current_context()
    if workers > 1 and pcap_path is not None:
        raise click.UsageError(f"--pcap goes with one worker, not --workers {workers}")
    try:
        addresses = resolve(upstream)
    except OSError as exc:
        raise Failure(f"cannot resolve upstream {upstream.host}: {exc.strerror or exc}") from None
    directory = stereo = None
    if record_dir:
        directory = Path(record_dir)
        problem = check_writable_folder(directory)
        if problem:
            raise Failure(problem)
    if stereo_dir:
        stereo = Path(stereo_dir)
        problem = check_writable_folder(stereo)
        if problem:
            raise Failure(f"{problem} (--record-stereo)")
    output = open_output(
        Environment(),
        json_lines=json_lines,
        trace_path=trace_path,
        verbose=verbose,
        quiet=quiet,
        command="capture",
    )
    # A server outlives a pipe's reader (`listen | grep -m1 ...`): see docs/output.md.
    output.outlive_stdout = True
    warm_up(directory is not None or stereo is not None)
    why = unavailable() if workers > 1 else ""
    if workers > 1 and not why:
        settings = dict(
            upstream=upstream,
            upstream_addresses=addresses,
            record_dir=directory,
            stereo_dir=stereo,
            max_concurrent=max_concurrent,
            max_calls=max_calls,
            connect_timeout=connect_timeout,
            caller_rules=application_rules(idle_timeout=timeout, observe=True),
            app_rules=asterisk_rules(observe=True),
        )
        _serve_workers(ctx, output, address, upstream, addresses, workers, settings)
        return
    reactor = Reactor(coalesce=COALESCE)
    ending = "interrupted"
    pcap = None
    try:
        pcap = open_pcap(pcap_path, output)  # before listening: a bad FILE is one line
        try:
            server = listen(address)
        except ConnectError as exc:
            raise Failure(str(exc)) from None
        _refuse_loop(server, upstream, addresses)
        click.echo(f"listening on {bound_address(server)}", err=True)
        if why:
            click.echo(
                f"audiosocket: warning: --workers {workers}: {why}; running one worker", err=True
            )
        proxy = Proxy(
            reactor,
            server,
            upstream,
            addresses,
            output,
            record_dir=directory,
            stereo_dir=stereo,
            max_concurrent=max_concurrent,
            max_calls=max_calls,
            connect_timeout=connect_timeout,
            caller_rules=application_rules(idle_timeout=timeout, observe=True),
            app_rules=asterisk_rules(observe=True),
            pcap=pcap,
        )
        try:
            proxy.start()
            reactor.run()
        except Terminated:
            ending = "terminated"
            raise
        finally:
            # Before the group maps Ctrl-C/SIGTERM to 130/143: WAVs and trace closed whole.
            proxy.close(ending)
    finally:
        reactor.close()
        if pcap is not None:
            pcap.close()
        output.close()
    ctx.exit(proxy.exit_status)


def _refuse_loop(server: socket.socket, upstream: Address, addresses: list) -> None:
    """A usage error if the upstream is capture's own address: calls would loop."""
    bound = bound_address(server)
    if any(_same(bound, sockaddr) for _, sockaddr in addresses):
        server.close()
        raise click.BadParameter(
            f"{upstream} is capture's own address: calls would loop", param_hint="--upstream"
        )


def _serve_workers(
    ctx: click.Context,
    output: Output,
    address: Address,
    upstream: Address,
    addresses: list,
    workers: int,
    settings: dict[str, Any],
) -> None:
    """`capture --workers N`: N processes on one port, their output merged here."""
    try:
        try:
            server = listen_reuseport(address)
        except ConnectError as exc:
            raise Failure(str(exc)) from None
        _refuse_loop(server, upstream, addresses)
        budget = Budget(
            settings["max_calls"], settings["max_concurrent"], shared=True, workers=workers
        )
        try:
            status = serve(server, worker_proxy(**settings), output, budget, workers, sys.stderr)
        except WorkerFailed as exc:
            raise Failure(str(exc)) from None
    finally:
        output.close()
    ctx.exit(status)


def _same(bound: Address, sockaddr: tuple) -> bool:
    host, port = sockaddr[:2]
    if port != bound.port:
        return False
    if host == bound.host:
        return True
    try:
        return bound.host in ("0.0.0.0", "::") and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
