"""The HTML report of recorded calls: the engine behind `audiosocket report`.

Reads whatever `trace` reads (trace files, raw dumps, pcap and pcapng),
streams each call's records once into bounded aggregates, and writes one
self-contained HTML page: per call a header, the diagnoses with their
evidence, a timeline per direction (level, waveform envelope, arrival gaps,
events) on a shared time axis, histograms of jitter and frame sizes, and the
audio of each direction (embedded, or in WAV files beside the page when long).
A `load --stats` CSV (known by its header row) gets a section of its own,
before the calls: the run's figures per period on one time axis, and a summary.

Memory is bounded for any call length: audio becomes a min/max envelope in
10 ms bins and energy in 100 ms bins as it streams (numpy, in batches); only
the arrival time and duration of each audio message are kept (two floats),
and the audio itself goes straight to a WAV file on disk. Plots are SVG from
matplotlib (Agg), decimated to at most MAX_POINTS points per series.

numpy and matplotlib are imported inside the functions that use them, so
that importing this module (for `audiosocket report --help`) stays light.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import itertools
import math
import os
import re
import sys
import tempfile
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from audiosocket_cli import __version__
from audiosocket_cli.analysis.stats import (
    BURST_AUDIO,
    BURST_WINDOW,
    SUMMARY_ROWS,
    Diagnosis,
    DirectionStats,
    diagnose_application,
    diagnose_asterisk,
)
from audiosocket_cli.files.trace import Record, TraceFormatError, read_records
from audiosocket_cli.files.trace import open_input as files_open_input
from audiosocket_cli.protocol.wire import Kind, Message, ProtocolError, describe_error_code

FINE = 0.01  # s per envelope bin
COARSE_BINS = 10  # envelope bins per level/count bin (100 ms)
COARSE = FINE * COARSE_BINS
MAX_BINS = 24 * 3600 * 100  # envelope bins: a day; later audio is drawn at the last bin
FLUSH_SAMPLES = 1 << 18  # samples buffered per direction before a numpy batch
MAX_POINTS = 1500  # per plotted series: a plot is about 1100 px wide
GAP_MARK = 0.200  # s: a gap longer than this is marked (a jitter buffer cannot hide it)
FRAME_MS = 20.0
MAX_MARKERS = 400  # events drawn per call; the rest are counted
MAX_LABELS = 40  # marker labels written per call, so that text stays legible
EMBED_SECONDS = 120.0  # default: longer audio goes to WAV files beside the page
DIRECTIONS = (">", "<")
DIR_NAMES = {">": "to application", "<": "to Asterisk"}
DIR_SIDES = {">": "in", "<": "out"}
COLORS = {">": "#1f77b4", "<": "#d95f02"}
REF_COLOR = "#2ca02c"  # the 20 ms line
MARK_COLOR = "#d62728"  # gaps and bursts
EVENT_COLORS = {
    "dtmf": "#7b3294",
    "error": "#d62728",
    "hangup": "#000000",
    "warning": "#e6ab02",
    "diagnosis": "#e6ab02",
    "uuid": "#666666",
    "problem": "#d62728",
}


class ReportError(Exception):
    """The report cannot be made: an input that cannot be read, an output that cannot be written."""


@dataclass
class Marker:
    t: float
    dir: str  # ">", "<" or "-" for events
    kind: str  # a key of EVENT_COLORS
    label: str


class DirectionData:
    """One direction of one call, aggregated as its messages stream by."""

    def __init__(self, tmpdir: Path, stem: str, side: str) -> None:
        import numpy as np

        # The application's side ("out") is judged by the one pacing rule, as dial judges it.
        self.stats = DirectionStats(analyse_pacing=side == DIR_SIDES["<"])
        self.times = array("d")  # arrival time of each audio message
        self.durations = array("f")  # its audio seconds
        self.env_min = np.full(0, 32767, dtype=np.int16)
        self.env_max = np.full(0, -32768, dtype=np.int16)
        self.sumsq = np.zeros(0)
        self.nsamples = np.zeros(0)
        self.counts = np.zeros(0, dtype=np.int32)  # messages of any kind per 100 ms
        self._payloads: list[bytes] = []
        self._ptimes: list[float] = []
        self._prates: list[int] = []
        self._pending_samples = 0
        self._msg_times: list[float] = []
        self._tmpdir = tmpdir
        self._stem = f"{stem}.{side}"
        self.wavs: dict[int, _Wav] = {}  # one WAV per rate

    def add(self, t: float, message: Message) -> None:
        self.stats.add(t, message)
        self._msg_times.append(t)
        rate = message.rate
        payload = message.payload
        if rate is None or len(payload) < 2:
            if len(self._msg_times) >= 4096:
                self._flush_counts()
            return
        self.times.append(t)
        self.durations.append(message.duration)
        if len(payload) & 1:
            payload = payload[:-1]
        self._payloads.append(payload)
        self._ptimes.append(t)
        self._prates.append(rate)
        self._pending_samples += len(payload) >> 1
        if rate not in self.wavs:
            suffix = ".wav" if not self.wavs else f".{rate}.wav"
            self.wavs[rate] = _Wav(self._tmpdir / (self._stem + suffix), rate)
        if self._pending_samples >= FLUSH_SAMPLES:
            self.flush()

    def flush(self) -> None:
        """Envelope and energy of the buffered audio, each sample in the bin of its own time."""
        self._flush_counts()
        if not self._payloads:
            return
        import numpy as np

        counts = np.fromiter((len(p) >> 1 for p in self._payloads), np.int64, len(self._payloads))
        joined = b"".join(self._payloads)
        samples = np.frombuffer(joined, dtype="<i2")
        # The batch to its WAV in one write (one per run of a rate), not one per message.
        if len(self.wavs) == 1:
            next(iter(self.wavs.values())).write(joined)
        else:
            for rate, run in itertools.groupby(
                zip(self._prates, self._payloads, strict=True), lambda p: p[0]
            ):
                self.wavs[rate].write(b"".join(payload for _, payload in run))
        starts = np.cumsum(counts) - counts
        # A message's sample k plays at t + k/rate: a burst of audio overlaps in time,
        # steady audio fills every bin however the messages are cut.
        rates = np.repeat(np.asarray(self._prates, dtype=np.float64), counts)
        when = np.arange(samples.size, dtype=np.float64)
        when -= np.repeat(starts, counts)
        when /= rates
        when += np.repeat(np.asarray(self._ptimes), counts)
        index = np.clip((when * (1 / FINE)).astype(np.int64), 0, MAX_BINS - 1)
        runs = np.concatenate(([0], np.flatnonzero(index[1:] != index[:-1]) + 1))
        bins = index[runs]
        lows = np.minimum.reduceat(samples, runs)
        highs = np.maximum.reduceat(samples, runs)
        squares = samples.astype(np.float64)
        squares *= squares
        energy = np.add.reduceat(squares, runs)
        sizes = np.diff(np.append(runs, samples.size)).astype(np.float64)
        self._grow(int(bins.max()) + 1)
        np.minimum.at(self.env_min, bins, lows)
        np.maximum.at(self.env_max, bins, highs)
        coarse = bins // COARSE_BINS
        np.add.at(self.sumsq, coarse, energy)
        np.add.at(self.nsamples, coarse, sizes)
        self._payloads, self._ptimes, self._prates = [], [], []
        self._pending_samples = 0

    def _flush_counts(self) -> None:
        if not self._msg_times:
            return
        import numpy as np

        index = np.clip(
            (np.asarray(self._msg_times) * (1 / FINE)).astype(np.int64), 0, MAX_BINS - 1
        )
        self._grow(int(index.max()) + 1)
        np.add.at(self.counts, index // COARSE_BINS, 1)
        self._msg_times = []

    def _grow(self, fine_bins: int) -> None:
        import numpy as np

        if fine_bins <= self.env_min.size:
            return
        # Double, so that a long call reallocates a few dozen times, not per batch.
        size = max(fine_bins, 2 * self.env_min.size, 1024)
        size = -(-size // COARSE_BINS) * COARSE_BINS
        coarse = size // COARSE_BINS

        def grown(old: Any, fill: float, n: int) -> Any:
            new = np.full(n, fill, dtype=old.dtype)
            new[: old.size] = old
            return new

        self.env_min = grown(self.env_min, 32767, size)
        self.env_max = grown(self.env_max, -32768, size)
        self.sumsq = grown(self.sumsq, 0.0, coarse)
        self.nsamples = grown(self.nsamples, 0.0, coarse)
        self.counts = grown(self.counts, 0, coarse)

    def close(self) -> None:
        self.flush()
        for writer in self.wavs.values():
            writer.close()

    @property
    def audio_end(self) -> float:
        if not self.times:
            return 0.0
        return self.times[-1] + self.durations[-1]


class _Wav:
    """A 16-bit mono WAV on disk, written as audio streams by (soundfile)."""

    def __init__(self, path: Path, rate: int) -> None:
        import soundfile as sf

        self.path = path
        self.rate = rate
        self.samples = 0
        try:
            self._file = sf.SoundFile(
                str(path), "w", samplerate=rate, channels=1, subtype="PCM_16", format="WAV"
            )
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise ReportError(f"{path}: cannot write: {exc}") from None

    def write(self, pcm: bytes) -> None:
        self._file.buffer_write(pcm, dtype="int16")
        self.samples += len(pcm) >> 1

    def close(self) -> None:
        self._file.close()


@dataclass
class Finding:
    """A diagnosis as the page shows it: what, where it came from, and the evidence."""

    code: str
    text: str
    source: str  # "input" (a diagnosis event) or "measured" (computed here)
    evidence: str = ""
    t: float | None = None


class CallData:
    """Everything the page shows of one call (one connection of one input)."""

    def __init__(self, number: int, source: str, conn: int, tmpdir: Path) -> None:
        self.number = number
        self.source = source
        self.conn = conn
        self.uuid: str | None = None
        self.start_ts: float | None = None
        self.first_t: float | None = None
        self.last_t = 0.0
        self.start_fields: dict[str, Any] = {}
        self.end_fields: dict[str, Any] = {}
        self.end_text = ""
        self.input_findings: list[Finding] = []
        self.markers: list[Marker] = []
        self.dropped_markers = 0
        self.warnings = 0
        self.two_sided = False
        stem = f"call{number}"
        self.dirs = {d: DirectionData(tmpdir, stem, DIR_SIDES[d]) for d in DIRECTIONS}

    @property
    def call_id(self) -> str:
        return self.uuid or f"#{self.conn}"

    @property
    def anchor(self) -> str:
        return f"call-{self.number}"

    @property
    def duration(self) -> float:
        ends = [self.last_t] + [d.audio_end for d in self.dirs.values()]
        return max(0.0, max(ends) - min(0.0, self.first_t or 0.0))

    @property
    def ended(self) -> str:
        f = self.end_fields
        return str(f.get("ended") or f.get("how") or f.get("reason") or "")

    def add(self, record: Record) -> None:
        t = record.t
        if self.first_t is None:
            self.first_t = t
        if t > self.last_t:
            self.last_t = t
        if record.ts is not None and self.start_ts is None:
            self.start_ts = record.ts - t
        if not record.call.startswith("#"):
            self.uuid = record.call
        message = record.message
        if message is not None:
            direction = record.dir if record.dir in self.dirs else ">"
            if direction == "<":
                self.two_sided = True
            self.dirs[direction].add(t, message)
            if message.kind == Kind.UUID and message.uuid and self.uuid is None:
                self.uuid = str(message.uuid)
            if not message.is_audio or message.problem:
                self._message_marker(t, direction, message)
            return
        event = record.event or "event"
        if event == "call-start":
            self.two_sided = True
            self.start_fields = dict(record.fields)
        elif event == "call-end":
            self.two_sided = True
            self.end_fields = dict(record.fields)
            self.end_text = record.text
        elif event == "diagnosis":
            fields = dict(record.fields)
            code = str(fields.pop("code", "diagnosis"))
            evidence = ", ".join(f"{k}={v}" for k, v in fields.items())
            self.input_findings.append(Finding(code, record.text, "input", evidence, t))
            self._marker(Marker(t, "-", "diagnosis", code))
        elif event == "warning":
            self.warnings += 1
            self._marker(Marker(t, "-", "warning", _shorten(record.text, 40)))

    def _message_marker(self, t: float, direction: str, message: Message) -> None:
        kind = message.name
        if message.problem:
            self._marker(Marker(t, direction, "problem", _shorten(message.problem, 40)))
        elif kind == "dtmf":
            self._marker(Marker(t, direction, "dtmf", message.digit or "?"))
        elif kind == "error":
            code = message.code
            label = "error" if code is None else f"error {describe_error_code(code)}"
            self._marker(Marker(t, direction, "error", label))
        elif kind == "hangup":
            self._marker(Marker(t, direction, "hangup", "hangup"))
        elif kind == "uuid":
            self._marker(Marker(t, direction, "uuid", "uuid"))

    def _marker(self, marker: Marker) -> None:
        if len(self.markers) < MAX_MARKERS:
            self.markers.append(marker)
        else:
            self.dropped_markers += 1

    def close(self) -> None:
        for d in self.dirs.values():
            d.close()

    def findings(self) -> list[Finding]:
        """The input's diagnoses, then those measured here that the input did not name."""
        import numpy as np

        found = list(self.input_findings)
        named = {f.code for f in found}
        app, ast = self.dirs["<"].stats, self.dirs[">"].stats
        measured: list[Diagnosis] = diagnose_asterisk(ast)
        if self.two_sided:  # a raw dump holds one direction: no verdict on the other
            measured += diagnose_application(app, ast, FRAME_MS)
        for diagnosis in measured:
            if diagnosis.code in named:
                continue
            found.append(
                Finding(diagnosis.code, diagnosis.text, "measured", self._evidence(diagnosis))
            )
        for d in DIRECTIONS:
            data = self.dirs[d]
            times = np.frombuffer(data.times, dtype=np.float64)
            if times.size < 2:
                continue
            gaps = np.diff(times)
            big = np.flatnonzero(gaps > GAP_MARK)
            if big.size:
                worst = int(big[np.argmax(gaps[big])])
                # A gap is timed by the message that ended it: when the audio came back.
                where = ", ".join(f"{times[i + 1]:.2f}s" for i in big[:8])
                more = f" and {big.size - 8} more" if big.size > 8 else ""
                found.append(
                    Finding(
                        "gap",
                        f"{big.size} gap(s) over {GAP_MARK * 1000:.0f} ms in the audio "
                        f"{DIR_NAMES[d]}, the longest {gaps[worst] * 1000:.0f} ms: "
                        "longer than a jitter buffer hides",
                        "measured",
                        f"audio resumed after a gap at {where}{more}",
                        float(times[worst + 1]),
                    )
                )
        return found

    def _evidence(self, diagnosis: Diagnosis) -> str:
        app = self.dirs["<"]
        if diagnosis.code == "burst":
            spans = burst_spans(app)
            where = ", ".join(f"{a:.2f}-{b:.2f}s" for a, b in spans[:8])
            return f"{app.stats.bursts} burst(s) at {where}" if where else ""
        if diagnosis.code == "pacing":
            ratio = app.stats.realtime_ratio
            return f"realtime ratio {ratio:.2f}" if ratio else ""
        if diagnosis.code in ("ulaw", "byte-order"):
            stats = (self.dirs[">"] if diagnosis.text.startswith("caller") else app).stats
            votes = ", ".join(f"{k}={n}" for k, n in stats.encoding_votes.most_common())
            return f"frames analysed: {votes}"
        if diagnosis.code == "frame-size":
            sizes = ", ".join(f"{n}x{s} B" for s, n in app.stats.sizes.most_common(6))
            return f"sizes: {sizes}"
        if diagnosis.code == "one-way-audio":
            return f"{self.dirs['>'].stats.audio_messages} audio messages in, 0 out"
        return ""


def burst_spans(data: DirectionData) -> list[tuple[float, float]]:
    """(start, end) of each run of arrivals with more than 100 ms of audio within 20 ms."""
    import numpy as np

    times = np.frombuffer(data.times, dtype=np.float64)
    if times.size < 2:
        return []
    durations = np.asarray(data.durations, dtype=np.float64)
    total = np.concatenate(([0.0], np.cumsum(durations)))
    first = np.searchsorted(times, times - BURST_WINDOW, side="left")
    within = total[1:] - total[first]
    hot = within > BURST_AUDIO
    if not hot.any():
        return []
    edges = np.diff(np.concatenate(([0], hot.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [(float(times[a]), float(times[b])) for a, b in zip(starts, ends, strict=True)]


# Load runs: the `load --stats` CSV.

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
LOAD_COLORS = {
    "active": "#333333",
    "started": REF_COLOR,
    "ended": "#7b3294",
    "failed": MARK_COLOR,
    "p50": COLORS[">"],
    "p99": COLORS["<"],
    "max": MARK_COLOR,
}


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

    @property
    def anchor(self) -> str:
        return f"load-{self.number}"

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
        kept = {name: array("d") for name in LOAD_KEPT if name in header}
        where = [(i, kept.get(name)) for i, name in enumerate(header)]
        failed = {i: name[7:] for i, name in enumerate(header) if name.startswith("failed_")}
        failed_by = dict.fromkeys(failed.values(), 0.0)
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
    return LoadRun(number, label, rows, kept, failed_by)


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


def _grouped_nan(values: Any, group: int, how: str) -> Any:
    """Each group of periods as one point: its worst ("max") or its mean, NaN-aware."""
    import numpy as np

    if group == 1:
        return values
    pad = (-values.size) % group
    blocks = np.concatenate((values, np.full(pad, np.nan))).reshape(-1, group)
    if how == "max":
        return np.fmax.reduce(blocks, axis=1)  # fmax skips NaN; all NaN stays NaN
    valid = ~np.isnan(blocks)
    counts = valid.sum(axis=1)
    sums = np.where(valid, blocks, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _load_line(ax: Any, x: Any, y: Any, group: int, how: str, **style: Any) -> None:
    """A series with its empty periods as gaps; a point between two gaps gets a dot, or a
    line would not show it."""
    import numpy as np

    y = _grouped_nan(y, group, how)
    line = ax.plot(x, y, linewidth=1.2, **style)[0]
    missing = np.isnan(y)
    before = np.concatenate(([True], missing[:-1]))
    after = np.concatenate((missing[1:], [True]))
    alone = ~missing & before & after
    if alone.any():
        ax.plot(
            x[alone], y[alone], linestyle="none", marker="o", markersize=3, color=line.get_color()
        )


def load_svg(run: LoadRun, prefix: str) -> str:
    """The run over time, one shared axis: calls, messages/s, send lateness, TTFA, echo."""
    import numpy as np

    plt = _matplotlib()
    t = run.column("t")
    span = max(float(np.nanmax(t)) if not np.isnan(t).all() else 0.0, 0.1)
    group = _decimate(t.size)
    x = _grouped_nan(t, group, "max")  # a group is drawn at its last period's end
    fig, axes = plt.subplots(5, 1, figsize=(12, 10), sharex=True, gridspec_kw={"hspace": 0.5})
    try:
        calls, msgs, late, ttfa, echo = axes
        calls.set_title("calls up (at each period's end), and calls per period")
        _load_line(
            calls, x, run.column("active"), group, "max", color=LOAD_COLORS["active"], label="up"
        )
        for name in ("started", "ended", "failed"):
            _load_line(
                calls,
                x,
                run.column(name),
                group,
                "max",
                color=LOAD_COLORS[name],
                label=name,
                linestyle="--" if name != "failed" else "-",
            )
        calls.set_ylabel("calls")
        calls.set_ylim(bottom=0)
        _legend(calls, 4)
        msgs.set_title("messages per second")
        _load_line(
            msgs,
            x,
            run.column("msgs_out_per_s"),
            group,
            "mean",
            color=COLORS[">"],
            label="> we sent",
        )
        _load_line(
            msgs,
            x,
            run.column("msgs_in_per_s"),
            group,
            "mean",
            color=COLORS["<"],
            label="< the application sent",
        )
        msgs.set_ylabel("msg/s")
        msgs.set_ylim(bottom=0)
        _legend(msgs, 2)
        for ax, title, stem, stats in (
            (late, "our send lateness (ms)", "send_late", ("p50", "p99", "max")),
            (ttfa, "time to first audio (ms)", "ttfa", ("p50", "p99")),
            (echo, "echo round trip (ms)", "echo", ("p50", "p99")),
        ):
            ax.set_title(title)
            ax.set_ylabel("ms")
            drawn = False
            for stat in stats:
                y = run.column(f"{stem}_{stat}_ms")
                if np.isnan(y).all():
                    continue
                # p50s are averaged over a group of periods, the worst figures kept as worst.
                how = "mean" if stat == "p50" else "max"
                _load_line(ax, x, y, group, how, color=LOAD_COLORS[stat], label=stat)
                drawn = True
            if drawn:
                ax.set_ylim(bottom=0)
                _legend(ax, len(stats))
            else:
                ax.text(
                    0.5,
                    0.5,
                    "no sample in any period",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    color="#888888",
                )
            ax.grid(True, axis="y", color="#dddddd", linewidth=0.5)
        axes[-1].set_xlim(0, span)
        axes[-1].xaxis.set_major_formatter(_time_formatter(span))
        axes[-1].set_xlabel(
            "time from run start (s)" if span < 300 else "time from run start (m:ss)"
        )
        for ax in axes[:-1]:
            ax.tick_params(labelbottom=True)
        fig.subplots_adjust(left=0.07, right=0.98, top=0.97, bottom=0.05)
        return _svg(fig, prefix)
    finally:
        plt.close(fig)


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
            "</section>",
        ]
    )


# Reading.


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


class _Progress:
    """A rich progress bar on stderr (a terminal only): bytes read, then calls drawn."""

    def __init__(self, enabled: bool, streams: Sequence[BinaryIO], names: Sequence[str]) -> None:
        self.bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.streams = streams
        self.sizes = []
        for stream in streams:
            try:
                self.sizes.append(os.fstat(stream.fileno()).st_size or None)
            except (OSError, ValueError, io.UnsupportedOperation):
                self.sizes.append(None)
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            console=Console(file=sys.stderr),
            transient=True,
        )
        self.bar.start()
        self.tasks = [
            self.bar.add_task(f"reading {name}", total=size)
            for name, size in zip(names, self.sizes, strict=True)
        ]
        self.plot_task: Any = None

    def update(self, number: int, done: bool = False) -> None:
        if self.bar is None:
            return
        if done:
            self.bar.update(
                self.tasks[number], completed=self.sizes[number] or 1, total=self.sizes[number] or 1
            )
            return
        try:
            position = self.streams[number].tell()
        except (OSError, ValueError):
            return
        self.bar.update(self.tasks[number], completed=position)

    def plotting(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.plot_task is None:
            self.plot_task = self.bar.add_task("drawing calls", total=total)
        self.bar.update(self.plot_task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# Plotting.


def _matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",  # text stays text: smaller, and searchable in the page
            "svg.hashsalt": "audiosocket-report",  # same input, same page
            "font.size": 9,
            "axes.titlesize": 9,
            "axes.titlelocation": "left",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "path.simplify": True,
        }
    )
    return plt


def _decimate(n: int) -> int:
    """Group size that brings n points down to at most MAX_POINTS."""
    return max(1, -(-n // MAX_POINTS))


def _grouped(values: Any, group: int, fill: float, reduce: Any) -> Any:
    import numpy as np

    if group == 1:
        return values
    pad = (-values.size) % group
    padded = np.concatenate((values, np.full(pad, fill, dtype=values.dtype)))
    return reduce(padded.reshape(-1, group), axis=1)


def level_series(data: DirectionData, span: float) -> tuple[Any, Any]:
    """(seconds, dBFS) per 100 ms bin, or coarser for long calls; NaN where no audio."""
    import numpy as np

    bins = min(data.sumsq.size, int(math.ceil(span / COARSE)) + 1)
    group = _decimate(bins)
    energy = _grouped(data.sumsq[:bins], group, 0.0, np.sum)
    count = _grouped(data.nsamples[:bins], group, 0.0, np.sum)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = 10 * np.log10(energy / count / (32768.0 * 32768.0))
    level = np.where(count > 0, np.maximum(level, -100.0), np.nan)
    x = (np.arange(level.size) + 0.5) * COARSE * group
    return x, level


def envelope_series(data: DirectionData, span: float) -> tuple[Any, Any, Any]:
    """(seconds, min, max) of the samples, full scale 1, NaN where no audio."""
    import numpy as np

    bins = min(data.env_min.size, int(math.ceil(span / FINE)) + 1)
    group = _decimate(bins)
    low = _grouped(data.env_min[:bins], group, 32767, np.min).astype(np.float64)
    high = _grouped(data.env_max[:bins], group, -32768, np.max).astype(np.float64)
    empty = low > high
    low[empty] = np.nan
    high[empty] = np.nan
    x = (np.arange(low.size) + 0.5) * FINE * group
    return x, low / 32768, high / 32768


def gap_series(data: DirectionData) -> tuple[Any, Any, Any]:
    """(arrival time, shortest gap, longest gap) in ms per group of arrivals."""
    import numpy as np

    times = np.frombuffer(data.times, dtype=np.float64)
    if times.size < 2:
        empty = np.zeros(0)
        return empty, empty, empty
    gaps = np.diff(times) * 1000
    x = times[1:]
    group = _decimate(gaps.size)
    if group == 1:
        return x, gaps, gaps
    low = _grouped(gaps, group, np.inf, np.min)
    high = _grouped(gaps, group, -np.inf, np.max)
    return x[::group], low, high


def jitter_values(data: DirectionData) -> Any:
    """Each inter-arrival time less the audio the message before carried, in ms."""
    import numpy as np

    times = np.frombuffer(data.times, dtype=np.float64)
    if times.size < 2:
        return np.zeros(0)
    durations = np.asarray(data.durations, dtype=np.float64)
    return (np.diff(times) - durations[:-1]) * 1000


def _time_formatter(span: float) -> Any:
    from matplotlib.ticker import FuncFormatter

    if span < 300:
        return FuncFormatter(lambda v, _: f"{v:g}")
    return FuncFormatter(lambda v, _: f"{int(v // 60)}:{int(v % 60):02d}")


def log_tick_values(low: float, high: float, room: int = 8) -> list[float]:
    """Major ticks of a log axis from low to high, at most `room` of them: 1, 2 and 5
    times each power of ten if they fit, else 1 and 3 times, else the powers of ten
    (every other one, or fewer, if even those do not fit). A range holding none of
    these gets round values 1, 2 or 5 apart instead, so that it has a label."""
    low, high = sorted((low, high))
    if not (math.isfinite(high) and high > 0):
        return []
    low = max(low, high * 1e-12)
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    bottom, top = low * (1 - 1e-9), high * (1 + 1e-9)  # ends within rounding count
    ticks: list[float] = []
    choices = [((1, 2, 5), 1), ((1, 3), 1)] + [((1,), n) for n in range(1, last - first + 2)]
    for subs, stride in choices:
        ticks = [
            m * 10.0**e
            for e in range(first - first % stride, last + 1, stride)
            for m in subs
            if bottom <= m * 10.0**e <= top
        ]
        if len(ticks) <= max(room, 2):
            break
    if ticks:
        return ticks
    step = 10.0 ** math.floor(math.log10((high - low) / 3 or high))
    step *= next((m for m in (1, 2, 5) if (high - low) / (m * step) <= 4), 10)
    return [n * step for n in range(math.ceil(low / step), math.floor(high / step) + 1)]


def plain_number(value: float) -> str:
    """A tick label as a plain number: 0.1, 20, 1,000; never 10^3 or 2.46 x 10^1."""
    return f"{value:,.6f}".rstrip("0").rstrip(".")


def _log_axis(axis: Any) -> None:
    """A log axis readable at a glance: major ticks only (log_tick_values, as many as fit),
    each labelled as a plain number; no minor ticks, so no crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, Locator, NullLocator

    class NiceLogLocator(Locator):
        def __call__(self) -> list[float]:
            assert self.axis is not None
            low, high = self.axis.get_view_interval()
            # As many labels as the axis has room for at its size and font.
            return log_tick_values(low, high, self.axis.get_tick_space())

        def tick_values(self, vmin: float, vmax: float) -> list[float]:
            return log_tick_values(vmin, vmax)

    axis.set_major_locator(NiceLogLocator())
    axis.set_major_formatter(FuncFormatter(lambda value, _: plain_number(value)))
    axis.set_minor_locator(NullLocator())


def _count_axis(ax: Any, most: int) -> None:
    """A histogram's count axis, log scale: bars rise from below 1, so that a single bar
    (every message one size) stands as tall as its count and the axis spans a decade."""
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.set_ylim(0.7, max(most, 1) * 1.6)


def timeline_svg(call: CallData, prefix: str) -> str:
    """Events, then per direction: level, waveform envelope and arrival gaps, one time axis."""
    plt = _matplotlib()
    span = max(call.duration, 0.1)
    ratios = [0.9] + [1.0, 1.0, 1.3] * 2
    fig, axes = plt.subplots(
        7,
        1,
        figsize=(12, 12),
        sharex=True,
        gridspec_kw={"height_ratios": ratios, "hspace": 0.45},
    )
    try:
        _events_axis(axes[0], call)
        for row, d in enumerate(DIRECTIONS):
            data = call.dirs[d]
            color = COLORS[d]
            name = f"{d} {DIR_NAMES[d]}"
            level_ax, wave_ax, gap_ax = axes[1 + 3 * row : 4 + 3 * row]
            x, level = level_series(data, span)
            level_ax.plot(x, level, color=color, linewidth=1.0)
            level_ax.set_ylim(-100, 0)
            level_ax.set_ylabel("dBFS")
            level_ax.set_title(f"{name}: level (RMS per {COARSE * 1000:.0f} ms)")
            level_ax.grid(True, axis="y", color="#dddddd", linewidth=0.5)
            x, low, high = envelope_series(data, span)
            if x.size:
                wave_ax.fill_between(x, low, high, color=color, linewidth=0.4, edgecolor=color)
            wave_ax.set_ylim(-1, 1)
            wave_ax.set_ylabel("sample")
            wave_ax.set_title(f"{name}: waveform (min/max envelope)")
            wave_ax.axhline(0, color="#cccccc", linewidth=0.5)
            _gap_axis(gap_ax, data, color, name)
            for marker in call.markers:
                if marker.kind in ("hangup", "error") or (
                    marker.dir == d and marker.kind == "dtmf"
                ):
                    for ax in (level_ax, wave_ax):
                        ax.axvline(
                            marker.t, color=EVENT_COLORS[marker.kind], linewidth=0.8, alpha=0.6
                        )
        axes[-1].set_xlim(0, span)
        axes[-1].xaxis.set_major_formatter(_time_formatter(span))
        axes[-1].set_xlabel(
            "time from call start (s)" if span < 300 else "time from call start (m:ss)"
        )
        for ax in axes[:-1]:
            ax.tick_params(labelbottom=True)
        fig.subplots_adjust(left=0.07, right=0.98, top=0.98, bottom=0.04)
        return _svg(fig, prefix)
    finally:
        plt.close(fig)


def _events_axis(ax: Any, call: CallData) -> None:
    rows = {">": 2, "<": 1, "-": 0}
    ax.set_ylim(-0.6, 2.8)
    ax.set_yticks([2, 1, 0], ["> in", "< out", "events"])
    ax.set_title("messages other than audio, warnings and diagnoses")
    ax.grid(True, axis="y", color="#eeeeee", linewidth=0.5)
    if not call.markers:
        ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center", va="center", color="#888888")
        return
    by_kind: dict[str, list[Marker]] = {}
    for marker in call.markers:
        by_kind.setdefault(marker.kind, []).append(marker)
    for kind, markers in by_kind.items():
        ax.scatter(
            [m.t for m in markers],
            [rows.get(m.dir, 0) for m in markers],
            color=EVENT_COLORS[kind],
            marker="v" if kind in ("hangup", "error") else "o",
            s=28,
            zorder=3,
            label=kind,
        )
    span = max(call.duration, 0.1)
    for marker in call.markers[:MAX_LABELS]:
        # Near the right edge the label goes to the left of its marker, inside the plot.
        right = marker.t > 0.85 * span
        ax.annotate(
            marker.label,
            (marker.t, rows.get(marker.dir, 0)),
            xytext=(-3 if right else 3, 4),
            textcoords="offset points",
            ha="right" if right else "left",
            fontsize=8,
            color=EVENT_COLORS[marker.kind],
        )
    _legend(ax, len(by_kind))


def _gap_axis(ax: Any, data: DirectionData, color: str, name: str) -> None:
    import numpy as np

    ax.set_title(f"{name}: time between audio messages (ms, log)")
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.set_ylabel("ms")
    ax.axhline(FRAME_MS, color=REF_COLOR, linestyle="--", linewidth=1.0, label="20 ms")
    x, low, high = gap_series(data)
    if x.size:
        low = np.maximum(low, 0.1)  # a burst's 0 ms drawn at the bottom of the log scale
        high = np.maximum(high, 0.1)
        if low is high or np.array_equal(low, high):
            ax.plot(x, high, color=color, linewidth=0.8, marker=".", markersize=2)
        else:
            ax.fill_between(x, low, high, color=color, alpha=0.35, linewidth=0)
            ax.plot(x, high, color=color, linewidth=0.8)
        top = max(float(np.nanmax(high)) * 2, 100.0)
        ax.set_ylim(0.08, top)
    else:
        ax.set_ylim(0.08, 1000)
        ax.text(0.5, 0.5, "no audio", transform=ax.transAxes, ha="center", color="#888888")
    times = np.frombuffer(data.times, dtype=np.float64)
    if times.size >= 2:
        gaps = np.diff(times)
        big = np.flatnonzero(gaps > GAP_MARK)
        if big.size:
            shown = big[np.argsort(gaps[big])[::-1][:MAX_LABELS]]
            ax.scatter(
                times[shown + 1],
                gaps[shown] * 1000,
                color=MARK_COLOR,
                marker="^",
                s=24,
                zorder=3,
                label=f"gap > {GAP_MARK * 1000:.0f} ms ({big.size})",
            )
            for i in shown[:10]:
                ax.annotate(
                    f"{gaps[i] * 1000:.0f} ms",
                    (times[i + 1], gaps[i] * 1000),
                    xytext=(3, -10),
                    textcoords="offset points",
                    fontsize=7,
                    color=MARK_COLOR,
                )
    spans = burst_spans(data)
    if spans:
        # A burst is a few ms wide on an hour's axis: a marker at the bottom shows where.
        for start, end in spans[:MAX_MARKERS]:
            ax.axvspan(start, max(end, start + 0.02), color=MARK_COLOR, alpha=0.18, linewidth=0)
        ax.scatter(
            [start for start, _ in spans[:MAX_MARKERS]],
            [0.12] * min(len(spans), MAX_MARKERS),
            color=MARK_COLOR,
            marker="v",
            s=24,
            zorder=3,
            label=f"burst ({len(spans)})",
        )
    _legend(ax, 3)


def _legend(ax: Any, columns: int) -> None:
    """The legend above the plot, right, beside the title: it never hides data."""
    ax.legend(
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        ncol=columns,
        frameon=False,
        borderaxespad=0.1,
        handletextpad=0.3,
        columnspacing=1.0,
    )


def histograms_svg(call: CallData, prefix: str) -> str:
    """Per direction: inter-arrival jitter and audio message sizes."""
    import numpy as np

    plt = _matplotlib()
    fig, axes = plt.subplots(2, 2, figsize=(12, 5), gridspec_kw={"hspace": 0.6, "wspace": 0.2})
    try:
        for row, d in enumerate(DIRECTIONS):
            data = call.dirs[d]
            color = COLORS[d]
            jitter_ax, size_ax = axes[row]
            jitter = jitter_values(data)
            jitter_ax.set_title(
                f"{d} {DIR_NAMES[d]}: jitter (arrival gap less the audio before, ms)"
            )
            if jitter.size:
                # Outliers beyond the range land in its end bins rather than widening it.
                low = max(-40.0, min(-10.0, float(np.floor(jitter.min()))))
                high = min(200.0, max(30.0, float(np.ceil(jitter.max()))))
                width = 1.0 if high - low <= 120 else 2.0
                edges = np.arange(low, high + width, width)
                counts, _ = np.histogram(np.clip(jitter, low, high), bins=edges)
                jitter_ax.bar(edges[:-1], counts, width=width, align="edge", color=color)
                _count_axis(jitter_ax, int(counts.max()))
                jitter_ax.axvline(0, color=REF_COLOR, linestyle="--", linewidth=1.0)
                jitter_ax.set_xlim(low, high)
            else:
                jitter_ax.text(0.5, 0.5, "no audio", transform=jitter_ax.transAxes, ha="center")
            jitter_ax.set_ylabel("messages")
            sizes = data.stats.sizes.most_common(12)
            size_ax.set_title(f"{d} {DIR_NAMES[d]}: audio message sizes (bytes)")
            if sizes:
                sizes.sort()
                labels = [str(s) for s, _ in sizes]
                size_ax.bar(labels, [n for _, n in sizes], color=color)
                _count_axis(size_ax, max(n for _, n in sizes))
                size_ax.tick_params(axis="x", labelsize=7)
            else:
                size_ax.text(0.5, 0.5, "no audio", transform=size_ax.transAxes, ha="center")
        fig.subplots_adjust(left=0.07, right=0.98, top=0.93, bottom=0.08)
        return _svg(fig, prefix)
    finally:
        plt.close(fig)


_NUMBER = re.compile(r"(\d+\.\d\d)\d+")
_IDS = re.compile(r'(\bid="|href="#|url\(#)')


def _svg(fig: Any, prefix: str) -> str:
    """The figure as an inline <svg>: ids made unique in the page, coordinates rounded."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    # Two decimals are a hundredth of a point: finer than a pixel, and a third of the size.
    text = _NUMBER.sub(r"\1", text)
    text = _IDS.sub(lambda m: m.group(1) + prefix, text)
    # Scale with the page: keep the viewBox, drop the fixed size.
    text = re.sub(
        r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 class="plot"', text, count=1
    )
    return text


# The page.


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}
h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
h3{font-size:1em;margin-bottom:.3em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f4f4f4}td.l,th.l{text-align:left}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;font-size:.9em}
dt{color:#666}dd{margin:0;font-family:ui-monospace,monospace}
.plot{width:100%;height:auto;display:block}
.in{color:#1f77b4}.out{color:#d95f02}.muted{color:#888}
.finding{margin:.3em 0}.code{font-family:ui-monospace,monospace;font-weight:bold}
.none{color:#2ca02c}.wide{overflow-x:auto}table.calls{font-size:.8em}
audio{vertical-align:middle;margin:.2em 0}
"""


def render_page(
    calls: list[CallData],
    inputs: Sequence[str],
    out: Path,
    tmp: Path,
    embed_seconds: float,
    bar: _Progress,
    loads: Sequence[LoadRun] = (),
) -> tuple[str, list[Path]]:
    esc = html.escape
    runs = f"{len(loads)} load run(s), " if loads else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>AudioSocket report: {esc(', '.join(inputs))}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>AudioSocket report</h1>",
        f'<p class="muted">{esc(", ".join(inputs))}: {runs}{len(calls)} call(s). '
        f"Written by audiosocket-cli {esc(__version__)} on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
    ]
    # Load runs first: the whole run before any one call of it.
    parts += [_load_section(run) for run in loads]
    if calls:
        parts.append(_calls_table(calls))
    audio_files: list[Path] = []
    for done, call in enumerate(calls):
        bar.plotting(done, len(calls))
        parts.append(_call_section(call, out, tmp, embed_seconds, audio_files))
    bar.plotting(len(calls), len(calls))
    parts.append("</body></html>\n")
    return "\n".join(parts), audio_files


def _gaps(stats: DirectionStats) -> str:
    mean = stats.mean_gap
    return "-" if mean is None else f"{mean * 1000:.1f}/{stats.max_gap * 1000:.1f}"


CALLS_TABLE_ROWS = (
    ("messages", lambda s: str(s.messages)),
    ("bytes", lambda s: str(s.wire_bytes)),
    ("audio s", lambda s: f"{s.audio_seconds:.2f}"),
    ("rates", lambda s: ",".join(str(r) for r in s.rates) or "-"),
    ("dtmf", lambda s: s.digits or "-"),
    ("gaps ms mean/worst", _gaps),
)


def _calls_table(calls: list[CallData]) -> str:
    esc = html.escape
    # The input column only where calls come from several inputs: the table is wide.
    several = len({call.source for call in calls}) > 1
    head = "".join(f"<th>{esc(name)}</th>" for name, _ in CALLS_TABLE_ROWS)
    rows = [
        '<div class="wide"><table class="calls"><tr>'
        '<th class="l" rowspan="2">call</th>'
        + ('<th class="l" rowspan="2">input</th>' if several else "")
        + '<th rowspan="2">duration s</th><th class="l" rowspan="2">ended</th>'
        '<th rowspan="2">findings</th>'
        f'<th colspan="{len(CALLS_TABLE_ROWS)}" class="in">&gt; to application</th>'
        f'<th colspan="{len(CALLS_TABLE_ROWS)}" class="out">&lt; to Asterisk</th></tr>',
        f"<tr>{head}{head}</tr>",
    ]
    for call in calls:
        short = call.call_id if call.call_id.startswith("#") else call.call_id[:8]
        cells = [
            f'<td class="l"><a href="#{call.anchor}" title="{esc(call.call_id)}">'
            f"{esc(short)}</a></td>",
            f'<td class="l">{esc(call.source)}</td>' if several else "",
            f"<td>{call.duration:.2f}</td>",
            f'<td class="l">{esc(call.ended or "-")}</td>',
            f"<td>{len(call.findings()) or '-'}</td>",
        ]
        for d in DIRECTIONS:
            stats = call.dirs[d].stats
            cells += [f"<td>{esc(cell(stats))}</td>" for _, cell in CALLS_TABLE_ROWS]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    rows.append("</table></div>")
    return "\n".join(rows)


def _call_section(
    call: CallData, out: Path, tmp: Path, embed_seconds: float, audio_files: list[Path]
) -> str:
    esc = html.escape
    parts = [f'<section id="{call.anchor}">', f"<h2>Call {esc(call.call_id)}</h2>"]
    facts: list[tuple[str, str]] = [
        ("uuid", call.uuid or "- (no UUID message)"),
        ("input", f"{call.source}, connection #{call.conn}"),
    ]
    for key in ("peer", "server", "upstream"):
        if call.start_fields.get(key):
            facts.append((key, str(call.start_fields[key])))
    if call.start_ts:
        started = datetime.datetime.fromtimestamp(call.start_ts, datetime.timezone.utc)
        facts.append(("started", f"{started:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC"))
    facts.append(("duration", f"{call.duration:.3f} s"))
    rates = sorted(set(call.dirs[">"].stats.rates) | set(call.dirs["<"].stats.rates))
    facts.append(("rates", ", ".join(f"{r} Hz" for r in rates) or "-"))
    ended = call.ended or ("-" if not call.end_fields else "")
    detail = call.end_fields.get("detail")
    if detail:
        ended += f" ({detail})"
    elif call.end_text and not call.ended:
        ended = call.end_text
    facts.append(("ended", ended or "- (no call-end in the input)"))
    for d in DIRECTIONS:
        facts.append((f"{d} {DIR_NAMES[d]}", call.dirs[d].stats.summary()))
    if call.warnings:
        facts.append(("warnings", str(call.warnings)))
    parts.append(
        "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl>"
    )
    parts.append("<h3>Diagnoses</h3>")
    findings = call.findings()
    if not findings:
        parts.append('<p class="none">None: nothing known to go wrong was seen.</p>')
    for finding in findings:
        when = f" at {finding.t:.3f} s" if finding.t is not None else ""
        evidence = (
            f'<br><span class="muted">evidence: {esc(finding.evidence)}</span>'
            if finding.evidence
            else ""
        )
        parts.append(
            f'<p class="finding"><span class="code">{esc(finding.code)}</span> '
            f'<span class="muted">({esc(finding.source)}{when})</span>: '
            f"{esc(finding.text)}{evidence}</p>"
        )
    parts.append("<h3>Timeline</h3>")
    parts.append(timeline_svg(call, f"c{call.number}t-"))
    if call.dropped_markers:
        parts.append(f'<p class="muted">{call.dropped_markers} more events not drawn.</p>')
    parts.append("<h3>Jitter and frame sizes</h3>")
    parts.append(histograms_svg(call, f"c{call.number}h-"))
    parts.append("<h3>Audio</h3>")
    parts.append(_audio_html(call, out, embed_seconds, audio_files))
    parts.append(_summary_table(call))
    parts.append("</section>")
    return "\n".join(parts)


def _audio_html(call: CallData, out: Path, embed_seconds: float, audio_files: list[Path]) -> str:
    esc = html.escape
    lines = []
    for d in DIRECTIONS:
        data = call.dirs[d]
        if not data.wavs:
            lines.append(
                f'<p><span class="{DIR_SIDES[d]}">{esc(d)} {DIR_NAMES[d]}</span>: no audio</p>'
            )
            continue
        for rate, writer in data.wavs.items():
            seconds = writer.samples / rate
            side = f'<span class="{DIR_SIDES[d]}">{esc(d)} {DIR_NAMES[d]}</span>'
            what = f"{side}, {rate} Hz, {seconds:.2f} s"
            if seconds <= embed_seconds:
                encoded = base64.b64encode(writer.path.read_bytes()).decode("ascii")
                lines.append(
                    f'<p>{what}: <audio controls preload="metadata" '
                    f'src="data:audio/wav;base64,{encoded}"></audio></p>'
                )
                continue
            folder = out.parent / f"{out.stem}-audio"
            try:
                folder.mkdir(exist_ok=True)
                target = (
                    folder
                    / f"{call.call_id.replace('#', 'conn')}.{writer.path.name.split('.', 1)[1]}"
                )
                os.replace(writer.path, target)
            except OSError as exc:
                raise ReportError(f"{folder}: cannot write: {exc.strerror or exc}") from None
            audio_files.append(target)
            href = f"{folder.name}/{target.name}"
            lines.append(
                f"<p>{what}: longer than {embed_seconds:g} s, so beside the page: "
                f'<a href="{esc(href)}">{esc(href)}</a> '
                f'<audio controls preload="none" src="{esc(href)}"></audio></p>'
            )
    return "\n".join(lines)


def _summary_table(call: CallData) -> str:
    esc = html.escape
    rows = [
        "<h3>Summary</h3><table>",
        '<tr><th></th><th class="in">&gt; to application</th>'
        '<th class="out">&lt; to Asterisk</th></tr>',
    ]
    for label, cell in SUMMARY_ROWS:
        a, b = (cell(call.dirs[d].stats) for d in DIRECTIONS)
        rows.append(f'<tr><th class="l">{esc(label)}</th><td>{esc(a)}</td><td>{esc(b)}</td></tr>')
    rows.append("</table>")
    return "\n".join(rows)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
