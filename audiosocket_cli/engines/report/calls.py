"""The calls of the report: each call's records streamed once into bounded aggregates
(DirectionData per direction, CallData per call), and its findings measured from them.

Memory is bounded for any call length: audio becomes a min/max envelope in
10 ms bins and energy in 100 ms bins as it streams (numpy, in batches); only
the arrival time and duration of each audio message are kept (two floats),
and the audio itself goes straight to a WAV file on disk.
"""

from __future__ import annotations

import itertools
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiosocket_cli.analysis.diagnoses import Diagnosis, diagnose_application, diagnose_asterisk
from audiosocket_cli.analysis.stats import BURST_AUDIO, BURST_WINDOW, DirectionStats
from audiosocket_cli.engines.report.common import DIR_NAMES, DIR_SIDES, DIRECTIONS, ReportError
from audiosocket_cli.engines.report.conversation import EVENTS, ConversationData
from audiosocket_cli.files.trace import Record
from audiosocket_cli.protocol.wire import Kind, Message, describe_error_code

FINE = 0.01  # s per envelope bin
COARSE_BINS = 10  # envelope bins per level/count bin (100 ms)
COARSE = FINE * COARSE_BINS
MAX_BINS = 24 * 3600 * 100  # envelope bins: a day; later audio is drawn at the last bin
FLUSH_SAMPLES = 1 << 18  # samples buffered per direction before a numpy batch
GAP_MARK = 0.200  # s: a gap longer than this is marked (a jitter buffer cannot hide it)
FRAME_MS = 20.0
MAX_MARKERS = 400  # events drawn per call; the rest are counted


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
        self.conversation: ConversationData | None = None  # a `converse` call's
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
                if self.conversation is not None and message.rate and message.payload:
                    self.conversation.audio(t, message.payload, message.rate)
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
            if self.start_fields.get("scenario") is not None and self.conversation is None:
                # converse's call: its agent's speech is measured from its audio.
                self.conversation = ConversationData(scenario=str(self.start_fields["scenario"]))
        elif event in EVENTS:
            if self.conversation is None:
                self.conversation = ConversationData(detect=False)
            self.conversation.event(event, record.text, dict(record.fields))
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
        if self.conversation is not None:
            self.conversation.close()

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


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
