"""write_report, the engine behind `audiosocket report`: the page's path checked,
every input opened (or none is read), each read once (a load CSV into its run,
whatever `trace` reads into calls), then the page written, with any long audio
beside it."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from audiosocket_cli.engines.report.calls import CallData
from audiosocket_cli.engines.report.common import ReportError
from audiosocket_cli.engines.report.load import LoadRun, is_load_csv, read_load_csv
from audiosocket_cli.engines.report.page import render_page
from audiosocket_cli.engines.report.progress import _Progress
from audiosocket_cli.files.trace import Record, TraceFormatError, read_records
from audiosocket_cli.files.trace import open_input as files_open_input
from audiosocket_cli.protocol.wire import ProtocolError

EMBED_SECONDS = 120.0  # default: longer audio goes to WAV files beside the page


@dataclass
class Report:
    """What write_report did: the page, the WAV files beside it, the calls and load runs in it."""

    path: Path
    size: int
    calls: int
    audio_files: list[Path] = field(default_factory=list)
    loads: int = 0


def check_output(output: str) -> Path:
    """The page's path, checked writable before any input is read."""
    path = Path(output)
    if path.is_dir():
        raise ReportError(f"{output}: is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, probe = tempfile.mkstemp(prefix=".report-", dir=parent)
    except FileNotFoundError:
        raise ReportError(f"{output}: cannot write: no such directory {parent}") from None
    except OSError as exc:
        raise ReportError(f"{output}: cannot write: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    return path


def open_input(name: str, stdin: BinaryIO | None = None) -> BinaryIO:
    if name == "-" and stdin is not None:
        return stdin
    try:
        return files_open_input(name)[0]
    except TraceFormatError as exc:
        raise ReportError(str(exc)) from None


def _records(stream: BinaryIO, label: str, direction: str, port: int | None) -> Iterator[Record]:
    try:
        yield from read_records(stream, label, direction, port=port)
    except (TraceFormatError, ProtocolError) as exc:
        raise ReportError(str(exc)) from None
    except OSError as exc:
        raise ReportError(f"{label}: cannot read: {exc.strerror or exc}") from None


def write_report(
    inputs: Sequence[str],
    output: str,
    *,
    direction: str = ">",
    port: int | None = None,
    embed_seconds: float = EMBED_SECONDS,
    progress: bool = False,
    stdin: BinaryIO | None = None,
) -> Report:
    """Read every input, and write the page (and any long audio beside it)."""
    out = check_output(output)
    streams = [open_input(name, stdin) for name in inputs]  # every input opens, or none is read
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent if str(out.parent) else "."))
    try:
        calls: list[CallData] = []
        loads: list[LoadRun] = []
        bar = _Progress(progress, streams, inputs)
        try:
            for number, (name, stream) in enumerate(zip(inputs, streams, strict=True)):
                label = "<stdin>" if name == "-" else name
                if is_load_csv(stream):
                    loads.append(read_load_csv(stream, label, len(loads) + 1))
                    bar.update(number, done=True)
                    continue
                by_conn: dict[int, CallData] = {}
                for i, record in enumerate(_records(stream, label, direction, port)):
                    call = by_conn.get(record.conn)
                    if call is None:
                        call = CallData(len(calls) + 1, label, record.conn, tmp)
                        by_conn[record.conn] = call
                        calls.append(call)
                    call.add(record)
                    if not i & 0x3FF:
                        bar.update(number)
                bar.update(number, done=True)
            for call in calls:
                call.close()
            if not calls and not loads:
                raise ReportError(f"{', '.join(inputs)}: no AudioSocket messages found")
            page, audio_files = render_page(calls, inputs, out, tmp, embed_seconds, bar, loads)
        finally:
            bar.close()
            for stream in streams:
                if stream is not sys.stdin.buffer and stream is not stdin:
                    stream.close()
        staged = tmp / "page.html"
        try:
            staged.write_text(page, encoding="utf-8")
            os.replace(staged, out)
        except OSError as exc:
            raise ReportError(f"{output}: cannot write: {exc.strerror or exc}") from None
        return Report(out, out.stat().st_size, len(calls), audio_files, len(loads))
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
