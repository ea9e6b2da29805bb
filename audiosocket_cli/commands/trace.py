"""`audiosocket trace FILE...`: print saved traces, raw dumps and captures."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from audiosocket_cli.analysis.stats import SUMMARY_ROWS, DirectionStats
from audiosocket_cli.commands.options import Failure, input_options, open_output, output_options
from audiosocket_cli.files.trace import (
    RawBatch,
    Record,
    TraceFormatError,
    event_from_record,
    open_input,
    read_records,
)
from audiosocket_cli.output.sinks import Environment
from audiosocket_cli.protocol.events import CallEnd, CallInfo, CallWarning, Event
from audiosocket_cli.protocol.wire import (
    AUDIO_RATES,
    KIND_NAMES,
    MESSAGE_NAMES,
    Message,
    ProtocolError,
)
from audiosocket_cli.status import ExitStatus


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("files", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("--call", "call_filter", metavar="UUID", help="Only this call (UUID, prefix or #N).")
@click.option(
    "--kind", "kinds", metavar="KIND[,KIND]", help=f"Only these kinds: {', '.join(MESSAGE_NAMES)}."
)
@input_options
@click.option("--summary", is_flag=True, help="A table per call instead of every message.")
@click.option(
    "--extract",
    "extract_dir",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Write each call's audio, per direction, as WAVs in this folder.",
)
@output_options
def trace(
    files: tuple[str, ...],
    call_filter: str | None,
    kinds: str | None,
    direction: str,
    port: int | None,
    summary: bool,
    extract_dir: str | None,
    json_lines: bool,
    trace_path: str | None,
    verbose: int,
    quiet: bool,
) -> None:
    """Print saved traces: trace files, raw byte dumps ('-' is stdin) and
    packet captures (pcap, pcapng).

    A pipe gets one plain line per message; a terminal a coloured view.

    \b
    Exit status: 0 read, 1 a file that cannot be read or is not a trace,
    capture or AudioSocket byte dump (or is empty), 2 usage error (--call
    that matches no call: the calls are listed), 3 what was read shows a peer
    breaking the protocol (malformed messages, a stream cut inside a message,
    a call that ended on a violation).

    \b
    Examples:
      audiosocket trace call.trace
      audiosocket trace call.trace | grep dtmf
      audiosocket trace --json call.trace | jq .level_dbfs
      audiosocket trace --summary capture.pcap
      audiosocket trace --extract wavs/ call.trace
      cat dump.raw | audiosocket trace -
    """
    wanted_kinds = _parse_kinds(kinds)
    env = Environment()
    output = open_output(
        env,
        json_lines=json_lines,
        trace_path=trace_path,
        verbose=verbose,
        quiet=quiet,
        command="trace",
    )
    calls: dict[tuple[int, int], CallInfo] = {}
    tables: dict[tuple[int, int], dict[str, DirectionStats]] = {}
    # With --call, a call's records before its UUID message (its call-start) wait here
    # until that message shows whose call it is; `settled` calls hold nothing more.
    held: dict[tuple[int, int], list[Record]] = {}
    settled: set[tuple[int, int]] = set()
    matched: set[tuple[int, int]] = set()
    extractor = _Extractor(extract_dir) if extract_dir else None
    # What each record costs is decided once: a filter drops a message before any work.
    wanted_types = _kind_bytes(wanted_kinds) if wanted_kinds else None
    show_messages = not summary and extractor is None
    show_events = show_messages and not wanted_kinds
    count = summary  # statistics: only the summary needs them (every call-end has its own)
    verdict = _Verdict()

    def take(key: tuple[int, int], call: CallInfo, t: float, d: str, message: Message) -> None:
        """One message: what it costs is decided by the flags, a filter first."""
        kind, payload = message
        if wanted_types is not None and kind not in wanted_types:
            return  # dropped before any other work
        if not (payload and kind in AUDIO_RATES and not len(payload) & 1) and message.problem:
            verdict.malformed(message)  # well-formed audio is not even asked
        if count:
            stats = tables.get(key)
            if stats is None:
                stats = tables[key] = {">": DirectionStats(), "<": DirectionStats()}
            stats[d].add(t, message)
        if extractor is not None:
            extractor.add(key, call, d, message)
        if show_messages:
            output.message(call, t, d, message)

    def show(key: tuple[int, int], call: CallInfo, record: Record) -> None:
        message = record.message
        if message is not None:
            take(key, call, record.t, record.dir, message)
            return
        if record.ts is not None and not call.started_ts:
            call.started_ts = record.ts - record.t
        event = event_from_record(record)
        verdict.event(event)
        if not show_events:
            return
        if isinstance(event, CallEnd) and not all(event.directions.values()):
            # A file that does not say what went each way (written by hand, or cut):
            # the fields are there all the same, as the schema has them.
            empty = DirectionStats().as_dict()
            directions = {d: event.directions.get(d) or empty for d in (">", "<")}
            event = dataclasses.replace(event, directions=directions)
        output.emit(call, event)

    try:
        for number, name in enumerate(files):
            file_calls: dict[int, tuple[CallInfo, tuple[int, int]]] = {}
            for record in _records(name, direction, port, batches=not call_filter):
                if isinstance(record, RawBatch):
                    # A raw dump's messages, a read at a time: one call, one direction.
                    known = file_calls.get(1)
                    if known is None:
                        call = calls[(number, 1)] = CallInfo(conn=1, started_ts=0.0)
                        known = file_calls[1] = (call, (number, 1))
                    call, key = known
                    if call.uuid is None and record.call[0] != "#":
                        call.uuid = record.call
                    d = record.dir
                    for t, message in record.items:
                        take(key, call, t, d, message)
                    continue
                known = file_calls.get(record.conn)
                if known is None:
                    key = (number, record.conn)
                    call = calls[key] = CallInfo(conn=record.conn, started_ts=0.0)
                    known = file_calls[record.conn] = (call, key)
                call, key = known
                if call.uuid is None and record.call[0] != "#":
                    call.uuid = record.call
                if call_filter and not _matches(call, call_filter):
                    uuid = record.message.uuid if record.message is not None else None
                    if call.uuid is None and uuid and str(uuid).startswith(call_filter.lower()):
                        settled.add(key)
                        matched.add(key)
                        for earlier in held.pop(key, []):
                            show(key, call, earlier)
                    else:
                        if record.message is not None:
                            settled.add(key)
                            held.pop(key, None)
                        elif call.uuid is None and key not in settled:
                            held.setdefault(key, []).append(record)
                        continue
                elif call_filter:
                    matched.add(key)
                show(key, call, record)
        if call_filter and not matched:
            listing = ", ".join(f"{c.call_id} (#{c.conn})" for c in calls.values()) or "none"
            raise click.BadParameter(
                f"no call {call_filter!r} in {', '.join(files)} (calls: {listing})",
                param_hint="--call",
            )
        if summary:
            _print_summary(env, calls, tables, json_lines)
    finally:
        output.close()
        if extractor:
            extractor.close()
    if extractor:
        for path in extractor.written:
            click.echo(f"wrote {path}", err=True)
    if verdict.broke_protocol:
        click.get_current_context().exit(ExitStatus.PROTOCOL)


class _Verdict:
    """The exit rule for what was read: 3 when a peer broke the protocol in it."""

    def __init__(self) -> None:
        self.broke_protocol = False

    def malformed(self, message: Message) -> None:
        # Odd audio from the application is taken by Asterisk; everything else is malformed.
        self.broke_protocol = True

    def event(self, event: Event) -> None:
        if isinstance(event, CallEnd) and event.broke_protocol:
            self.broke_protocol = True
        elif isinstance(event, CallWarning) and event.fields.get("violation"):
            self.broke_protocol = True  # a stream cut inside a message, seen by the reader


def _kind_bytes(names: set[str]) -> frozenset[int]:
    """The kind bytes that --kind names cover."""
    out = {kind for kind, name in KIND_NAMES.items() if name in names}
    if "unknown" in names:
        out |= set(range(256)) - set(KIND_NAMES)
    return frozenset(out)


def _parse_kinds(kinds: str | None) -> set[str]:
    if not kinds:
        return set()
    wanted = {k.strip() for k in kinds.split(",") if k.strip()}
    bad = wanted - set(MESSAGE_NAMES)
    if bad:
        raise click.BadParameter(
            f"unknown kind {', '.join(sorted(bad))} (one of {', '.join(MESSAGE_NAMES)})",
            param_hint="--kind",
        )
    return wanted


def _matches(call: CallInfo, wanted: str) -> bool:
    wanted = wanted.lower()
    if wanted.startswith("#"):
        # #N names the connection for its whole life, also once its UUID is known.
        return wanted == f"#{call.conn}"
    return call.call_id.lower().startswith(wanted)


def _records(
    name: str, direction: str, port: int | None, batches: bool = False
) -> Iterator[Record | RawBatch]:
    try:
        stream, label = open_input(name)
    except TraceFormatError as exc:
        raise Failure(str(exc)) from None
    try:
        yield from read_records(stream, label, direction, port=port, batches=batches)
    except (TraceFormatError, ProtocolError) as exc:
        raise Failure(str(exc)) from None
    except OSError as exc:
        raise Failure(f"{label}: cannot read: {exc.strerror or exc}") from None
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _print_summary(
    env: Environment,
    calls: dict[tuple[int, int], CallInfo],
    tables: dict[tuple[int, int], dict[str, DirectionStats]],
    json_lines: bool,
) -> None:
    import json

    for key, stats in tables.items():
        call = calls[key]
        if json_lines:
            record = {"call": call.call_id, "conn": call.conn}
            record.update({d: s.as_dict() for d, s in stats.items()})
            env.stdout.write(json.dumps(record) + "\n")
            continue
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"call {call.call_id}", title_justify="left")
        table.add_column("")
        table.add_column("> to application", justify="right")
        table.add_column("< to Asterisk", justify="right")
        for label, cell in SUMMARY_ROWS:
            table.add_row(label, cell(stats[">"]), cell(stats["<"]))
        Console(
            file=env.stdout, no_color=not env.color, width=None if env.stdout_isatty else 120
        ).print(table)


class _Extractor:
    """Audio per call and direction: DIR/<call>.in.wav (>) and .out.wav (<); a second rate
    in <call>.in.<rate>.wav. Files of an earlier run are replaced, not piled up."""

    def __init__(self, directory: str) -> None:
        from audiosocket_cli.media.recorder import check_writable_folder

        self.directory = Path(directory)
        problem = check_writable_folder(self.directory)
        if problem:
            raise Failure(problem)
        self.recordings: dict[tuple[tuple[int, int], str], Any] = {}
        self.stems: set[str] = set()

    def add(self, key: tuple[int, int], call: CallInfo, d: str, message: Message) -> None:
        """Audio of one call (key: file number and connection) into its files."""
        from audiosocket_cli.media.recorder import Recording

        if not message.is_audio or d not in "<>" or not message.rate:
            return
        recording = self.recordings.get((key, d))
        if recording is None:
            stem = call.call_id.replace("#", "conn")
            if (key, "<" if d == ">" else ">") not in self.recordings:
                # Two inputs holding the same call keep apart: the second gets -2.
                base, n = stem, 2
                while stem in self.stems:
                    stem, n = f"{base}-{n}", n + 1
                self.stems.add(stem)
            else:
                stem = self.recordings[(key, "<" if d == ">" else ">")].stem
            side = "in" if d == ">" else "out"
            directory = self.directory

            def path_for(rate: int, first: Path | None, stem: str = stem, side: str = side) -> Path:
                return directory / (
                    f"{stem}.{side}.wav" if first is None else f"{stem}.{side}.{rate}.wav"
                )

            recording = self.recordings[(key, d)] = Recording(path_for)
            recording.stem = stem  # type: ignore[attr-defined]
        note = recording.write(message.rate, message.payload)
        if recording.error is not None and note:
            raise Failure(recording.error)

    @property
    def written(self) -> list[Path]:
        return [path for recording in self.recordings.values() for path in recording.paths]

    def close(self) -> None:
        notes = [note for recording in self.recordings.values() if (note := recording.end())]
        if notes:
            raise Failure(notes[0])
