"""A `load --stats` CSV in the report: recognised by its header row, read with every
cell checked, summarised, and its section of the page (before the calls): the run's
figures per period on one time axis, and a summary.

A run of scripted conversations (`load --scenario`) adds columns of its own:
response latency, time to first response and barge-in stop time per period
(`response_p50_ms`, `first_response_p95_ms`, `barge_in_stop_p99_ms`, ... as
CONVERSATION_COLUMN matches) and failed expectations by kind
(`failed_expect_<kind>`). When the CSV has them, the section gets a plot of
those latencies over the run and their summary rows; when not, nothing changes.
"""

from __future__ import annotations

import html
import io
import math
import re
from array import array
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from audiosocket_cli.engines.report.common import ReportError
from audiosocket_cli.engines.report.conversation_plots import conversation_load_svg
from audiosocket_cli.engines.report.plots import load_svg

# The documented first columns of `load --stats FILE.csv` (docs/load.md): a CSV input
# is recognised by them, as a trace by its JSON header and a pcap by its magic.
LOAD_CSV_HEAD = b"period,t,seconds,"
# Columns kept for the plots and the summary; any other column is checked, then dropped,
# so that a day of 1 s periods stays a few MB.
LOAD_KEPT = (
    "t",
    "seconds",
    "active",
    "started",
    "ended",
    "failed",
    "total_started",
    "total_ended",
    "total_failed",
    "total_violations",
    "msgs_out_per_s",
    "msgs_in_per_s",
    "send_late_p50_ms",
    "send_late_p99_ms",
    "send_late_max_ms",
    "ttfa_p50_ms",
    "ttfa_p99_ms",
    "echo_p50_ms",
    "echo_p99_ms",
)
# A scenario run's latencies per period, kept and plotted when the CSV has them.
CONVERSATION_COLUMN = re.compile(r"(response|first_response|barge_in_stop)_(p\d+|max)_ms")
FAILED_EXPECT = "failed_expect_"  # failed expectations by kind: not failed calls


def is_load_csv(stream: BinaryIO) -> bool:
    """True when the stream starts with the header row of `load --stats` (peeked, not read)."""
    peek = getattr(stream, "peek", None)
    if peek is None:
        return False
    try:
        head = peek(len(LOAD_CSV_HEAD) + 3)
    except (OSError, ValueError):
        return False
    return head.removeprefix(b"\xef\xbb\xbf").startswith(LOAD_CSV_HEAD)  # a spreadsheet's BOM


@dataclass
class LoadRun:
    """One `load --stats` CSV: the kept columns (NaN for an empty cell) and failures by reason."""

    number: int
    source: str
    rows: int
    columns: dict[str, array[float]]
    failed_by: dict[str, float]
    failed_expect: dict[str, float] = field(default_factory=dict)  # by expectation kind

    @property
    def anchor(self) -> str:
        return f"load-{self.number}"

    @property
    def conversations(self) -> bool:
        """The CSV has a scenario run's latency columns."""
        return any(CONVERSATION_COLUMN.fullmatch(name) for name in self.columns)

    def column(self, name: str) -> Any:
        """The column as a numpy array; all NaN when the CSV does not have it."""
        import numpy as np

        values = self.columns.get(name)
        if values is None:
            return np.full(self.rows, np.nan)
        return np.frombuffer(values, dtype=np.float64)


def read_load_csv(stream: BinaryIO, label: str, number: int) -> LoadRun:
    """Every cell checked (a number, or empty for no sample); ReportError names file and line."""
    import csv

    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        reader = csv.reader(text)
        header = next(reader)
        kept = {
            name: array("d")
            for name in [*LOAD_KEPT, *header]
            if name in header and (name in LOAD_KEPT or CONVERSATION_COLUMN.fullmatch(name))
        }
        where = [(i, kept.get(name)) for i, name in enumerate(header)]
        failed = {
            i: name[7:]
            for i, name in enumerate(header)
            if name.startswith("failed_") and not name.startswith(FAILED_EXPECT)
        }
        expect = {
            i: name[len(FAILED_EXPECT) :]
            for i, name in enumerate(header)
            if name.startswith(FAILED_EXPECT)
        }
        failed_by = dict.fromkeys(failed.values(), 0.0)
        failed_expect = dict.fromkeys(expect.values(), 0.0)
        rows = 0
        for row in reader:
            if not row:
                continue  # a blank line, as spreadsheets leave at the end
            if len(row) != len(header):
                raise ReportError(
                    f"{label} line {reader.line_num}: {len(row)} fields, "
                    f"the header has {len(header)}"
                )
            for (i, values), cell in zip(where, row, strict=True):
                value = _load_number(cell, label, reader.line_num, header[i])
                if values is not None:
                    values.append(value)
                if i in failed and value == value:
                    failed_by[failed[i]] += value
                elif i in expect and value == value:
                    failed_expect[expect[i]] += value
            rows += 1
    except UnicodeDecodeError:
        raise ReportError(f"{label}: not a UTF-8 text CSV") from None
    except csv.Error as exc:
        raise ReportError(f"{label} line {reader.line_num}: {exc}") from None
    except OSError as exc:
        raise ReportError(f"{label}: cannot read: {exc.strerror or exc}") from None
    finally:
        text.detach()  # the caller closes the stream (or it is stdin)
    if not rows:
        raise ReportError(f"{label} line 2: a load stats CSV with no rows")
    return LoadRun(number, label, rows, kept, failed_by, failed_expect)


def _load_number(cell: str, label: str, line: int, column: str) -> float:
    cell = cell.strip()
    if not cell:
        return math.nan  # no sample in that period: a gap in the plot, never a zero
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ReportError(f"{label} line {line}: {column} is {cell!r}, not a number")
    return value


def load_summary(run: LoadRun) -> list[tuple[str, str]]:
    """The run's figures as (label, value) rows: totals from the last row, worst and medians."""
    import numpy as np

    def last(name: str) -> float:
        values = run.column(name)
        values = values[~np.isnan(values)]
        return float(values[-1]) if values.size else math.nan

    def count(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.0f}"

    def ms(values: Any) -> str:
        return "-" if np.isnan(values).all() else f"{float(np.nanmedian(values)):.3f} ms"

    t = run.column("t")
    rows = [
        ("duration", f"{float(np.nanmax(t)):.3f} s" if not np.isnan(t).all() else "-"),
        ("periods", str(run.rows)),
        ("calls total", count(last("total_started"))),
        ("ended normally", count(last("total_ended"))),
        ("failed", count(last("total_failed"))),
    ]
    for reason, n in sorted(run.failed_by.items()):
        if n:
            rows.append((f"failed: {reason}", f"{n:.0f}"))
    rows.append(("protocol violations", count(last("total_violations"))))
    active = run.column("active")
    rows.append(("most calls up", "-" if np.isnan(active).all() else f"{np.nanmax(active):.0f}"))
    p99 = run.column("send_late_p99_ms")
    if np.isnan(p99).all():
        rows.append(("worst send lateness p99", "-"))
    else:
        worst = int(np.nanargmax(p99))
        rows.append(
            ("worst send lateness p99", f"{p99[worst]:.3f} ms (period ending {t[worst]:.3f} s)")
        )
    rows.append(("median of the period p50s: send lateness", ms(run.column("send_late_p50_ms"))))
    rows.append(("median of the period p50s: time to first audio", ms(run.column("ttfa_p50_ms"))))
    rows.append(("median of the period p50s: echo round trip", ms(run.column("echo_p50_ms"))))
    if run.conversations:
        rows += _conversation_summary(run, ms)
    return rows


def _conversation_summary(run: LoadRun, ms: Any) -> list[tuple[str, str]]:
    """A scenario run's rows: the median p50s, the worst tail of each latency (and
    when), failed expectations by kind."""
    import numpy as np

    t = run.column("t")
    rows = []
    for stem, what in (
        ("response", "response latency"),
        ("first_response", "time to first response"),
        ("barge_in_stop", "barge-in stop"),
    ):
        if f"{stem}_p50_ms" in run.columns:
            rows.append((f"median of the period p50s: {what}", ms(run.column(f"{stem}_p50_ms"))))
        tail = next((s for s in ("max", "p99", "p95") if f"{stem}_{s}_ms" in run.columns), None)
        if tail is None:
            continue
        values = run.column(f"{stem}_{tail}_ms")
        if np.isnan(values).all():
            rows.append((f"worst {what} {tail}", "-"))
            continue
        worst = int(np.nanargmax(values))
        rows.append(
            (f"worst {what} {tail}", f"{values[worst]:.3f} ms (period ending {t[worst]:.3f} s)")
        )
    total = sum(run.failed_expect.values())
    if run.failed_expect:
        rows.append(("failed expectations", f"{total:.0f}"))
    for kind, n in sorted(run.failed_expect.items()):
        if n:
            rows.append((f"failed expectations: {kind}", f"{n:.0f}"))
    return rows


def _load_section(run: LoadRun) -> str:
    esc = html.escape
    table = "".join(
        f'<tr><th class="l">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in load_summary(run)
    )
    return "\n".join(
        [
            f'<section id="{run.anchor}">',
            f"<h2>Load run {esc(run.source)}</h2>",
            f'<table class="load">{table}</table>',
            load_svg(run, f"l{run.number}-"),
            conversation_load_svg(run, f"l{run.number}c-") if run.conversations else "",
            "</section>",
        ]
    )
