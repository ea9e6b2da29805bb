"""What a call did, counted per direction.

Every command that runs or reads calls keeps one :class:`DirectionStats` per
direction, fed each message with its arrival time (or, for many calls' runs
at once, analysis.runs); the end-of-call summary and the diagnoses of the
known pitfalls (analysis.diagnoses) are measured from these counts, not
guessed.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter
from collections.abc import Callable
from itertools import compress
from typing import Any

from audiosocket_cli.analysis.pacing import PaceTracker
from audiosocket_cli.protocol.wire import AUDIO_RATES, Kind, Message

BURST_WINDOW = 0.020  # seconds
BURST_AUDIO = 0.100  # more audio than this within the window is a burst
ENCODING_SAMPLE_EVERY = 5  # analyse one audio frame in five
ENCODING_BACKOFF = 10  # ... and after a closed gate, one in fifty
ENCODING_MAX_FRAMES = 60
ENCODING_MAX_TRIES = 600  # a silent caller gives no verdict; stop trying after this many
ENCODING_MIN_FRAMES = 8
ENCODING_SETTLED = 16  # frames that all read the same way settle the guess

# Audio is counted in integer units, 1/UNITS_PER_SECOND s, so that sums over a
# window or a whole call are exact (no float drift at the burst threshold):
# every rate's byte is a whole number of units.
UNITS_PER_SECOND = math.lcm(*(2 * rate for rate in AUDIO_RATES.values()))
UNITS_PER_BYTE = {kind: UNITS_PER_SECOND // (2 * rate) for kind, rate in AUDIO_RATES.items()}
BURST_UNITS = round(BURST_AUDIO * UNITS_PER_SECOND)

# Jitter (an audio message's arrival gap less the audio of the message before,
# so 0 is perfect pacing) goes into a fixed histogram of 0.1 ms bins over
# -25.6..+25.6 ms (a list: its increments cost less than an array's); what falls
# outside goes into coarse logarithmic bins, 10% wide.
JITTER_BIN = 0.0001  # seconds
JITTER_BINS = 512
JITTER_ZERO = JITTER_BINS // 2  # the bin of jitter 0..0.1 ms
JITTER_LIMIT = JITTER_ZERO * JITTER_BIN  # 25.6 ms
JITTER_LOG_STEP = math.log(1.1)
JITTER_LOG_BINS = 64  # 25.6 ms x 1.1^63: 10 s; beyond goes into the last
NO_RUN = -1  # no kind byte is -1: the next audio message takes the general path


class DirectionStats:
    """One direction of a call: counts, gaps, bursts, jitter, an encoding guess.

    `add()` runs for every message of every call, so the common case, an audio
    message of the same kind and size as the one before (a "run"), only bumps
    integers and floats; counts by kind, rate and size are folded into
    Counters when read.
    """

    __slots__ = (
        "analyse_encoding",
        "encoding_offset",
        "encoding_gate",
        "first_audio",
        "last_audio",
        "max_gap",
        "digits",
        "last_dtmf",
        "problems",
        "refused",
        "bursts",
        "encoding_votes",
        "_encoding_frames",
        "_encoding_tries",
        "_messages",
        "_bytes",
        "_kinds",
        "_audio",
        "_units",
        "_frames",
        "_last_units",
        "_before_last",
        "_before_last_units",
        "_kind",
        "run_shape",
        "_size",
        "_rate",
        "_run",
        "_run_units",
        "_run_jitter_base",
        "_run_pair",
        "_enc_next",
        "_in_burst",
        "_window_open",
        "_window_t",
        "_window_units",
        "_window_head",
        "_max_window_units",
        "_jitter",
        "_jitter_log",
        "_bins_memo",
        "pace",
        "_run_seconds",
    )

    def __init__(
        self,
        analyse_encoding: bool = True,
        encoding_offset: int = 0,
        encoding_gate: Callable[[], bool] | None = None,
        analyse_pacing: bool = False,
    ) -> None:
        # Pacing judged block by block (analysis.pacing), where someone diagnoses it.
        self.pace = PaceTracker() if analyse_pacing else None
        # False skips the encoding analysis (numpy, the costly part of add()) where
        # nobody reads likely_encoding, e.g. what a server sends itself.
        self.analyse_encoding = analyse_encoding
        # Which audio messages are analysed (one in ENCODING_SAMPLE_EVERY, shifted by
        # this): a server gives each call its own shift, so that calls started
        # together do not all pay for the analysis in the same 20 ms.
        self.encoding_offset = encoding_offset
        # Asked before each analysis; False skips that frame. A server with many
        # calls uses it to spread the analyses' cost over time (a budget per second).
        self.encoding_gate = encoding_gate
        self.first_audio: float | None = None
        self.last_audio: float | None = None
        self.max_gap = 0.0
        self.digits = ""
        self.last_dtmf: float | None = None  # when the last DTMF digit came
        self.problems: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # counted by engines.call
        self.bursts = 0
        self.encoding_votes: Counter[str] = Counter()
        self._encoding_frames = 0
        self._encoding_tries = 0
        # Counted so far, the current run excepted.
        self._messages = 0
        self._bytes = 0
        self._kinds: Counter[str] = Counter()
        self._audio = 0
        self._units = 0
        self._frames: Counter[tuple[int, int]] = Counter()  # (rate, size): messages
        self._last_units = 0
        # The audio message before the last one: with the last, all the burst window
        # can hold while the window list is closed.
        self._before_last = -math.inf
        self._before_last_units = 0
        # The current run: audio messages of this kind and size after its first.
        self._kind = NO_RUN
        # (kind, size) of the current run, None between runs: a message of this shape
        # takes add()'s hot path, or a batch of them analysis.runs.add_runs().
        self.run_shape: tuple[int, int] | None = None
        self._size = 0
        self._rate = 0
        self._run = 0
        self._run_units = 0
        self._run_seconds = 0.0
        self._run_jitter_base = 0.0
        self._run_pair = 0  # two of the run's messages, in units
        self._enc_next = 0  # the run's message to analyse next; 0: none
        # The burst window: arrival times and the audio before each, from _window_head
        # on, once more than two messages may be within BURST_WINDOW ("open").
        self._in_burst = False
        self._window_open = False
        self._window_t: list[float] = []
        self._window_units: list[int] = []
        self._window_head = 0
        self._max_window_units = 0
        self._jitter = [0] * JITTER_BINS
        self._jitter_log = array("Q", bytes(8 * 2 * JITTER_LOG_BINS))  # below, then above
        self._bins_memo: tuple[int, list[tuple[float, float, int]]] | None = None

    def add(self, t: float, message: Message) -> None:
        kind, payload = message
        if kind == self._kind and len(payload) == self._size:
            # The hot path of every server: one more message of the current run.
            run = self._run + 1
            self._run = run
            last: float = self.last_audio  # type: ignore[assignment]  # set by the run's first
            gap = t - last
            if gap > self.max_gap:
                self.max_gap = gap
            # The jitter's 0.1 ms bin (int() is floor here but for jitter a hair under
            # -25.6 ms, which lands in the lowest bin instead of the coarse ones).
            b = int(gap * 10000.0 - self._run_jitter_base)
            if 0 <= b < JITTER_BINS:
                self._jitter[b] += 1
            else:
                self._jitter_outside(gap - self._run_units / UNITS_PER_SECOND)
            if gap <= BURST_WINDOW:
                if (
                    self._window_open
                    or t - self._before_last <= BURST_WINDOW
                    or self._run_pair > BURST_UNITS
                ):
                    units = self._run_units
                    self._window_add(t, self._units + (run - 1) * units, units)
                elif self._run_pair > self._max_window_units:
                    # Paced frames: this one and the last, the most common window.
                    self._max_window_units = self._run_pair
            elif self._window_open:
                # Alone in its window again; a run's frames are never a burst alone.
                self._window_open = self._in_burst = False
            self._before_last = last
            self.last_audio = t
            if self.pace is not None:
                self.pace.add(t, self._run_seconds)
            if run == self._enc_next:
                self._sample(payload)
            return
        self._add_general(t, message)

    def note_refused(self, message: Message) -> None:
        what = message.problem or f"{message.name} message"
        self.refused[what] += 1

    # The general path: anything but one more message of the current run.

    def _add_general(self, t: float, message: Message) -> None:
        kind, payload = message
        size = len(payload)
        per_byte = UNITS_PER_BYTE.get(kind)
        if per_byte is None:
            self._messages += 1
            self._bytes += 3 + size
            self._kinds[message.name] += 1
            problem = message.problem
            if problem:
                self.problems[problem] += 1
            if kind == Kind.DTMF:
                digit = message.digit
                if digit:
                    self.digits += digit
                    self.last_dtmf = t
            return
        self._fold_run()
        self._messages += 1
        self._bytes += 3 + size
        self._kinds["audio"] += 1
        self._audio += 1
        rate = AUDIO_RATES[kind]
        units = size * per_byte
        before = self._units
        self._units = before + units
        self._frames[(rate, size)] += 1
        if not size or size & 1:
            self.problems[message.problem or "malformed audio"] += 1
        last = self.last_audio
        if last is None:
            self.first_audio = t
            self._window_open = False
            self._judge_window(units)
        else:
            gap = t - last
            if gap > self.max_gap:
                self.max_gap = gap
            self._jitter_add(gap - self._last_units / UNITS_PER_SECOND)
            if gap <= BURST_WINDOW:
                self._window_add(t, before, units)
            else:
                self._window_open = False
                self._judge_window(units)
        self._before_last = last if last is not None else -math.inf
        self._before_last_units = self._last_units
        self.last_audio = t
        self._last_units = units
        if self.pace is not None and size:
            self.pace.add(t, units / UNITS_PER_SECOND)
        if (
            self.analyse_encoding
            and (self._audio + self.encoding_offset) % ENCODING_SAMPLE_EVERY == 1
            and size >= 64
            and self._may_analyse()
        ):
            self._analyse(payload)
        if size and not size & 1 and units <= BURST_UNITS:
            # A run starts: the same kind and size again takes the hot path. Frames
            # over 100 ms do not: each is a burst on its own, judged in full.
            self._kind = kind
            self.run_shape = (kind, size)
            self._size = size
            self._rate = rate
            self._run_units = units
            self._run_seconds = units / UNITS_PER_SECOND
            self._run_pair = 2 * units
            # b = floor(jitter / JITTER_BIN) + JITTER_ZERO = int(gap * 10000 - base)
            self._run_jitter_base = units / UNITS_PER_SECOND * 10000.0 - JITTER_ZERO
            self._enc_next = self._next_sample(0)
        else:
            self._kind = NO_RUN
            self.run_shape = None

    def _fold_run(self) -> None:
        run = self._run
        if run:
            self._messages += run
            self._bytes += run * (3 + self._size)
            self._kinds["audio"] += run
            self._audio += run
            self._units += run * self._run_units
            self._frames[(self._rate, self._size)] += run
            # The message before the last is of the run too (or its first, the same).
            self._before_last_units = self._run_units
            self._run = 0
        self._kind = NO_RUN
        self.run_shape = None

    # Bursts: more than BURST_AUDIO of audio arrived within BURST_WINDOW.

    def _window_add(self, t: float, before: int, units: int) -> None:
        """A message `units` long, with `before` units of audio before it, came at t
        within BURST_WINDOW of the previous one."""
        times, totals = self._window_t, self._window_units
        if not self._window_open:
            # The window held the last two messages at most: start the list from them.
            # The one before the last is of the run unless the run has just begun.
            before_last = self._run_units if self._run > 1 else self._before_last_units
            last_before = before - self._last_units
            del times[:], totals[:]
            times += (self._before_last, self.last_audio)  # type: ignore[arg-type]
            totals += (last_before - before_last, last_before)
            self._window_head = 0
            self._window_open = True
        times.append(t)
        totals.append(before)
        head = self._window_head
        while t - times[head] > BURST_WINDOW:
            head += 1
        if head > 64 and 2 * head > len(times):
            del times[:head], totals[:head]
            head = 0
        self._window_head = head
        self._judge_window(before + units - totals[head])

    def _judge_window(self, in_window: int) -> None:
        if in_window > self._max_window_units:
            self._max_window_units = in_window
        if in_window > BURST_UNITS:
            if not self._in_burst:
                self.bursts += 1
                self._in_burst = True
        else:
            self._in_burst = False

    # Jitter.

    def _jitter_add(self, jitter: float) -> None:
        b = math.floor(jitter / JITTER_BIN) + JITTER_ZERO
        if 0 <= b < JITTER_BINS:
            self._jitter[b] += 1
        else:
            self._jitter_outside(jitter)

    def _jitter_outside(self, jitter: float) -> None:
        size = abs(jitter)
        b = int(math.log(size / JITTER_LIMIT) / JITTER_LOG_STEP) if size > JITTER_LIMIT else 0
        b = min(b, JITTER_LOG_BINS - 1)
        self._jitter_log[b if jitter < 0 else JITTER_LOG_BINS + b] += 1

    def _jitter_bins(self) -> list[tuple[float, float, int]]:
        """(low, high, count) of each non-empty jitter bin, in seconds, ascending."""
        # Asked for several figures at a call's end: made once per audio message count.
        audio = self._audio + self._run
        memo = self._bins_memo
        if memo is not None and memo[0] == audio:
            return memo[1]
        bins = self._make_jitter_bins()
        self._bins_memo = (audio, bins)
        return bins

    def _make_jitter_bins(self) -> list[tuple[float, float, int]]:
        # Most bins are empty: compress() finds the others in C (a call's end in a
        # server ending hundreds at once would otherwise loop over 640 bins, twice).
        bins = []
        log = self._jitter_log
        below, above = log[:JITTER_LOG_BINS], log[JITTER_LOG_BINS:]
        for b in reversed(list(compress(range(JITTER_LOG_BINS), below))):
            high = JITTER_LIMIT * 1.1**b
            bins.append((-high * 1.1, -high, below[b]))
        jitter = self._jitter
        for b in compress(range(JITTER_BINS), jitter):
            low = (b - JITTER_ZERO) * JITTER_BIN
            bins.append((low, low + JITTER_BIN, jitter[b]))
        for b in compress(range(JITTER_LOG_BINS), above):
            low = JITTER_LIMIT * 1.1**b
            bins.append((low, low * 1.1, above[b]))
        return bins

    @property
    def jitter_p99(self) -> float | None:
        """Seconds: 99% of audio messages came within this of the previous one's
        audio (the upper edge of the histogram bin holding the 99th percentile)."""
        # Fold the signed bins onto |jitter|, keeping the upper edge of each.
        sizes = sorted((max(abs(low), abs(high)), n) for low, high, n in self._jitter_bins())
        total = sum(n for _, n in sizes)
        if not total:
            return None
        wanted = math.ceil(0.99 * total)
        seen = 0
        for edge, n in sizes:
            seen += n
            if seen >= wanted:
                return edge
        return sizes[-1][0]  # pragma: no cover - the loop always returns

    @property
    def median_jitter(self) -> float | None:
        """Seconds, signed: the middle of the jitter histogram (bin centre)."""
        bins = self._jitter_bins()
        total = sum(n for _, _, n in bins)
        if not total:
            return None
        seen = 0
        for low, high, n in bins:
            seen += n
            if 2 * seen >= total:
                return (low + high) / 2
        return None  # pragma: no cover

    # Encoding analysis: sampled, limited, and gated by a shared budget.

    def _next_sample(self, run: int) -> int:
        """The run's next message (after `run`) to analyse, or 0 for none."""
        if not self.analyse_encoding or self._size < 64 or not self._may_try():
            return 0
        # Sampled are the audio messages whose count (from 1, with the offset) is
        # 1 modulo ENCODING_SAMPLE_EVERY.
        index = self._audio + run + 1
        return run + 1 + (1 - index - self.encoding_offset) % ENCODING_SAMPLE_EVERY

    def _may_try(self) -> bool:
        frames = self._encoding_frames
        return (
            frames < ENCODING_MAX_FRAMES
            and self._encoding_tries < ENCODING_MAX_TRIES
            # Unanimous after this many: a stream's encoding does not change, so
            # more frames would only cost time.
            and not (frames >= ENCODING_SETTLED and len(self.encoding_votes) == 1)
        )

    def _may_analyse(self) -> bool:
        return self._may_try() and (self.encoding_gate is None or self.encoding_gate())

    def _sample(self, payload: bytes) -> None:
        run = self._run
        if self.encoding_gate is None or self.encoding_gate():
            self._analyse(payload)
        else:
            # The shared budget is spent (many calls at once): this call looks again
            # ENCODING_BACKOFF samples later, rather than asking at every one.
            run += ENCODING_SAMPLE_EVERY * (ENCODING_BACKOFF - 1)
        self._enc_next = self._next_sample(run)

    def _analyse(self, payload: bytes) -> None:
        self._encoding_tries += 1
        verdict = guess_encoding(payload)
        if verdict:
            self._encoding_frames += 1
            self.encoding_votes[verdict] += 1

    # Figures, folded as they are read.

    @property
    def messages(self) -> int:
        return self._messages + self._run

    @property
    def wire_bytes(self) -> int:
        return self._bytes + self._run * (3 + self._size)

    @property
    def audio_messages(self) -> int:
        return self._audio + self._run

    @property
    def audio_seconds(self) -> float:
        return (self._units + self._run * self._run_units) / UNITS_PER_SECOND

    @property
    def last_audio_duration(self) -> float:
        return self._last_units / UNITS_PER_SECOND

    @property
    def max_window_audio(self) -> float:
        """Seconds: the most audio that arrived within one BURST_WINDOW."""
        return self._max_window_units / UNITS_PER_SECOND

    @property
    def kinds(self) -> Counter[str]:
        kinds = Counter(self._kinds)
        if self._run:
            kinds["audio"] += self._run
        return kinds

    @property
    def frames(self) -> Counter[tuple[int, int]]:
        """Audio messages by (rate, size), in the order first seen."""
        frames = Counter(self._frames)
        if self._run:
            frames[(self._rate, self._size)] += self._run
        return frames

    @property
    def rates(self) -> Counter[int]:
        rates: Counter[int] = Counter()
        for (rate, _), n in self.frames.items():
            rates[rate] += n
        return rates

    @property
    def sizes(self) -> Counter[int]:
        sizes: Counter[int] = Counter()
        for (_, size), n in self.frames.items():
            sizes[size] += n
        return sizes

    @property
    def frame_seconds(self) -> float | None:
        """The duration of the most common audio message (the frame size in time)."""
        frames = self.frames
        if not frames:
            return None
        (rate, size), _ = frames.most_common(1)[0]
        return size / (2 * rate)

    @property
    def mean_gap(self) -> float | None:
        if self.audio_messages < 2 or self.first_audio is None or self.last_audio is None:
            return None
        return (self.last_audio - self.first_audio) / (self.audio_messages - 1)

    @property
    def realtime_ratio(self) -> float | None:
        """Audio seconds per wall-clock second over the span audio arrived in."""
        if self.audio_messages < 2 or self.first_audio is None or self.last_audio is None:
            return None
        span = self.last_audio - self.first_audio + self.last_audio_duration
        return self.audio_seconds / span if span > 0 else None

    @property
    def paced_ratio(self) -> float | None:
        """Real time per frame from the median gap: a pause or a burst does not move it."""
        frame, median = self.frame_seconds, self.median_jitter
        if frame is None or median is None or frame + median <= 0:
            return None
        return frame / (frame + median)

    @property
    def likely_encoding(self) -> str | None:
        """'ulaw' or 's16be' when most analysed frames look like that."""
        if self._encoding_frames < ENCODING_MIN_FRAMES:
            return None
        verdict, votes = self.encoding_votes.most_common(1)[0]
        if verdict != "s16le" and votes > 0.5 * self._encoding_frames:
            return verdict
        return None

    def summary(self) -> str:
        """`12 msgs 3876 B audio 1.20s dtmf=12#`: one direction, for the call-end line."""
        text = f"{self.messages} msgs {self.wire_bytes} B"
        if self.audio_messages:
            text += f" audio {self.audio_seconds:.2f}s"
        if self.digits:
            text += f" dtmf={self.digits}"
        return text

    def pacing(self) -> str:
        """`1.00x real time, jitter p99 0.4ms, worst gap 21.1ms`, or '-' without audio."""
        ratio, jitter = self.realtime_ratio, self.jitter_p99
        if ratio is None or jitter is None:
            return "-"
        return (
            f"{ratio:.2f}x real time, jitter p99 {jitter * 1000:.1f}ms, "
            f"worst gap {self.max_gap * 1000:.1f}ms"
        )

    def gaps(self) -> str:
        """`mean 20.0ms worst 21.1ms`: time between audio messages."""
        mean = self.mean_gap
        if mean is None:
            return "-"
        return f"mean {mean * 1000:.1f}ms worst {self.max_gap * 1000:.1f}ms"

    def as_dict(self) -> dict:
        mean, ratio, jitter = self.mean_gap, self.realtime_ratio, self.jitter_p99
        return {
            "messages": self.messages,
            "bytes": self.wire_bytes,
            "kinds": dict(self.kinds),
            "audio_messages": self.audio_messages,
            "audio_seconds": round(self.audio_seconds, 6),
            "rates": {str(k): v for k, v in self.rates.items()},
            "dtmf": self.digits,
            "mean_gap_ms": None if mean is None else round(mean * 1000, 3),
            "max_gap_ms": round(self.max_gap * 1000, 3),
            "realtime_ratio": None if ratio is None else round(ratio, 3),
            "jitter_p99_ms": None if jitter is None else round(jitter * 1000, 1),
            "bursts": self.bursts,
            "problems": dict(self.problems),
        }


# A call's summary, a row per figure, one cell per direction (`trace --summary`, report).
SUMMARY_ROWS: list[tuple[str, Callable[[DirectionStats], str]]] = [
    ("messages", lambda s: str(s.messages)),
    ("bytes", lambda s: str(s.wire_bytes)),
    ("audio messages", lambda s: str(s.audio_messages)),
    ("audio seconds", lambda s: f"{s.audio_seconds:.3f}"),
    ("rates", lambda s: ",".join(str(r) for r in s.rates) or "-"),
    ("dtmf", lambda s: s.digits or "-"),
    ("kinds", lambda s: " ".join(f"{k}={n}" for k, n in sorted(s.kinds.items())) or "-"),
    ("gaps", lambda s: s.gaps()),
    ("realtime ratio", lambda s: "-" if s.realtime_ratio is None else f"{s.realtime_ratio:.3f}"),
    ("jitter p99", lambda s: "-" if s.jitter_p99 is None else f"{s.jitter_p99 * 1000:.1f}ms"),
    ("bursts", lambda s: str(s.bursts)),
    ("problems", lambda s: "; ".join(f"{n}x {p}" for p, n in s.problems.items()) or "-"),
]


# Mean |sample| of a reading below this is silence: no verdict.
SILENCE_LEVEL = 64
# Another reading must be this many times quieter than little-endian PCM to win.
ENCODING_MARGIN = 4.0


def guess_encoding(payload: bytes) -> str | None:
    """Which reading of these bytes looks like sound: s16le, s16be or ulaw.

    Read the wrong way, audio turns loud: a byte that carries a sample's low
    bits (spread over 0..255) lands in a high byte, or the near-0x00/0xff high
    bytes of quiet PCM read as loud mu-law samples, while quiet mu-law (bytes
    near 0x7f and 0xff) read as PCM puts 0x7f.. in the high bytes. So the
    reading with by far the smallest mean magnitude is the right one; that
    holds for speech, for the pauses between words, and for low-level noise,
    where comparing smoothness does not. None when the bytes read as PCM are
    silence, which every encoding can look like (0xffff is -1 in PCM and
    0 in mu-law).
    """
    import numpy as np

    samples = len(payload) >> 1
    if not samples:
        return None
    # Each reading's magnitude summed over the frame, from one lookup per 16-bit
    # word: all three are 2 x samples x their mean magnitude, so they compare as
    # the means do.
    words = np.frombuffer(payload, dtype="<u2", count=samples)
    le, be, ulaw = _magnitudes_by_word().take(words, axis=1).sum(axis=1).tolist()
    if le < 2 * SILENCE_LEVEL * samples:
        return None
    if ulaw * ENCODING_MARGIN < le and ulaw < be:
        return "ulaw"
    if be * ENCODING_MARGIN < le and be <= ulaw:
        return "s16be"
    return "s16le"


_magnitudes = None


def _magnitudes_by_word() -> Any:
    """For each 16-bit word as it lies in memory (bytes b0 b1): twice |sample| read
    little-endian, twice |sample| read big-endian, and |b0| + |b1| read as mu-law;
    a 3 x 65536 table, built on first use."""
    global _magnitudes
    if _magnitudes is None:
        import numpy as np

        word = np.arange(65536, dtype=np.uint32)
        low, high = word & 0xFF, word >> 8

        def magnitude(value: Any) -> Any:
            return np.abs(value.astype(np.uint16).view(np.int16).astype(np.int64))

        ulaw = np.abs(ULAW_TABLE()).astype(np.int64)
        _magnitudes = np.stack(
            [2 * magnitude(word), 2 * magnitude(low << 8 | high), ulaw[low] + ulaw[high]]
        ).astype(np.int32)
    return _magnitudes


_ulaw_table = None


def ULAW_TABLE() -> Any:  # noqa: N802 - a constant, built on first use
    """G.711 mu-law byte to linear sample."""
    global _ulaw_table
    if _ulaw_table is None:
        import numpy as np

        u = ~np.arange(256, dtype=np.int32) & 0xFF
        magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
        _ulaw_table = np.where(u & 0x80, -(magnitude - 0x84), magnitude - 0x84).astype(np.float64)
    return _ulaw_table


class AnalysisBudget:
    """A token bucket for many calls' encoding analyses (their `encoding_gate`).

    Each analysis costs tens of microseconds of numpy; shared by every call of
    a server or proxy, the budget keeps that a small share of a core however
    many calls run, and never binds with few calls.
    """

    def __init__(self, per_second: float = 250.0, burst: float = 10.0) -> None:
        self.per_second = per_second
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    def __call__(self) -> bool:
        now = time.monotonic()
        tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
        self._at = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False
