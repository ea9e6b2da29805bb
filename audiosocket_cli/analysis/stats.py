"""What a call did, counted per direction, and the diagnoses drawn from it.

Every command that runs or reads calls keeps one :class:`DirectionStats` per
direction, fed each message with its arrival time; the end-of-call summary
and the diagnoses of the known pitfalls (docs/protocol.md, "Common mistakes") are
measured from these counts, not guessed.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from audiosocket_cli.protocol.wire import AUDIO_RATES, Kind, Message, frame_bytes

BURST_WINDOW = 0.020  # seconds
BURST_AUDIO = 0.100  # more audio than this within the window is a burst
ENCODING_SAMPLE_EVERY = 5  # analyse one audio frame in five
ENCODING_MAX_FRAMES = 60
ENCODING_MAX_TRIES = 600  # a silent caller gives no verdict; stop trying after this many
ENCODING_MIN_FRAMES = 8


@dataclass
class DirectionStats:
    messages: int = 0
    wire_bytes: int = 0
    kinds: Counter = field(default_factory=Counter)
    audio_messages: int = 0
    audio_seconds: float = 0.0
    rates: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    first_audio: float | None = None
    last_audio: float | None = None
    last_audio_duration: float = 0.0
    max_gap: float = 0.0
    digits: str = ""
    problems: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    bursts: int = 0
    max_window_audio: float = 0.0
    _window: deque = field(default_factory=deque, repr=False)
    _window_audio: float = 0.0
    _in_burst: bool = False
    encoding_votes: Counter = field(default_factory=Counter)
    _encoding_frames: int = 0
    _encoding_tries: int = 0
    # False skips the encoding analysis (numpy, the costly part of add()) where
    # nobody reads likely_encoding, e.g. what a server sends itself.
    analyse_encoding: bool = True
    # Which audio messages are analysed (one in ENCODING_SAMPLE_EVERY, shifted by
    # this): a server gives each call its own shift, so that calls started
    # together do not all pay for the analysis in the same 20 ms.
    encoding_offset: int = 0
    # Asked before each analysis; False skips that frame. A server with many
    # calls uses it to spread the analyses' cost over time (a budget per second).
    encoding_gate: Callable[[], bool] | None = field(default=None, repr=False, compare=False)

    def add(self, t: float, message: Message) -> None:
        # The hot path of every server: well-formed audio skips the general checks.
        kind, payload = message
        size = len(payload)
        self.messages += 1
        self.wire_bytes += 3 + size
        rate = AUDIO_RATES.get(kind)
        if rate is not None and size and not size & 1:
            self.kinds["audio"] += 1
            self._add_audio(t, rate, payload)
            return
        self.kinds[message.name] += 1
        problem = message.problem
        if problem:
            self.problems[problem] += 1
        if rate is not None:
            self._add_audio(t, rate, payload)
        elif kind == Kind.DTMF and message.digit:
            self.digits += message.digit

    def note_refused(self, message: Message) -> None:
        what = message.problem or f"{message.name} message"
        self.refused[what] += 1

    def _add_audio(self, t: float, rate: int, payload: bytes) -> None:
        size = len(payload)
        duration = size / (2 * rate)
        self.audio_messages += 1
        self.audio_seconds += duration
        self.rates[rate] += 1
        self.sizes[size] += 1
        last = self.last_audio
        if last is None:
            self.first_audio = t
        elif t - last > self.max_gap:
            self.max_gap = t - last
        self.last_audio = t
        self.last_audio_duration = duration
        # Bursts: audio that arrived within the last 20 ms.
        window = self._window
        window.append((t, duration))
        in_window = self._window_audio + duration
        oldest = t - BURST_WINDOW
        while window[0][0] < oldest:
            in_window -= window.popleft()[1]
        self._window_audio = in_window
        if in_window > self.max_window_audio:
            self.max_window_audio = in_window
        if in_window > BURST_AUDIO:
            if not self._in_burst:
                self.bursts += 1
                self._in_burst = True
        else:
            self._in_burst = False
        if (
            self.analyse_encoding
            and (self.audio_messages + self.encoding_offset) % ENCODING_SAMPLE_EVERY == 1
            and self._encoding_frames < ENCODING_MAX_FRAMES
            and self._encoding_tries < ENCODING_MAX_TRIES
            and size >= 64
            and (self.encoding_gate is None or self.encoding_gate())
        ):
            self._encoding_tries += 1
            verdict = guess_encoding(payload)
            if verdict:
                self._encoding_frames += 1
                self.encoding_votes[verdict] += 1

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
        mean = self.mean_gap
        if mean is None:
            return "-"
        return f"mean {mean * 1000:.1f}ms worst {self.max_gap * 1000:.1f}ms"

    def as_dict(self) -> dict:
        return {
            "messages": self.messages,
            "bytes": self.wire_bytes,
            "kinds": dict(self.kinds),
            "audio_messages": self.audio_messages,
            "audio_seconds": round(self.audio_seconds, 6),
            "rates": {str(k): v for k, v in self.rates.items()},
            "dtmf": self.digits,
            "mean_gap_ms": None if self.mean_gap is None else round(self.mean_gap * 1000, 3),
            "max_gap_ms": round(self.max_gap * 1000, 3),
            "realtime_ratio": None
            if self.realtime_ratio is None
            else round(self.realtime_ratio, 3),
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
    ("gaps", lambda s: s.pacing()),
    ("realtime ratio", lambda s: "-" if s.realtime_ratio is None else f"{s.realtime_ratio:.3f}"),
    ("bursts", lambda s: str(s.bursts)),
    ("problems", lambda s: "; ".join(f"{n}x {p}" for p, n in s.problems.items()) or "-"),
]


def guess_encoding(payload: bytes) -> str | None:
    """Which reading of these bytes looks like sound: s16le, s16be or ulaw.

    In 16-bit PCM the high byte of each sample clusters (near 0x00 and 0xff
    at speech levels) while the low byte is spread; in mu-law every byte is a
    sample, so even and odd bytes look alike. A smoothness check (real audio
    has close neighbouring samples, bytes read the wrong way look like noise)
    confirms the verdict. None for near-silence.
    """
    import numpy as np

    raw = np.frombuffer(payload, dtype=np.uint8, count=len(payload) - len(payload) % 2)
    le = raw.view("<i2").astype(np.float64)
    ulaw_silence = ((raw == 0xFF) | (raw == 0x7F)).mean()
    if np.abs(le).mean() < 64 and ulaw_silence < 0.5:
        return None  # silence as PCM (mu-law silence is 0xff/0x7f bytes)
    even = np.bincount(raw[0::2] >> 4, minlength=16) / (len(raw) // 2)
    odd = np.bincount(raw[1::2] >> 4, minlength=16) / (len(raw) // 2)
    alike = 0.5 * np.abs(even - odd).sum() < 0.25
    rough_le = _roughness(le)
    if alike:
        if ulaw_silence > 0.9:
            return None  # mu-law silence
        if _roughness(ULAW_TABLE()[raw]) < rough_le:
            return "ulaw"
        return "s16le"
    # The high byte is the concentrated one: less spread over its 16 nibbles.
    if _spread(even) < _spread(odd) and _roughness(raw.view(">i2").astype(np.float64)) < rough_le:
        return "s16be"
    return "s16le"


def _spread(histogram: object) -> float:
    """Entropy of a nibble histogram, in bits."""
    import numpy as np

    p = np.asarray(histogram)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _roughness(x: object) -> float:
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    spread = np.abs(x - x.mean()).mean()
    if spread == 0:
        return 0.0
    return float(np.abs(np.diff(x)).mean() / spread)


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

    def __init__(self, per_second: float = 1000.0, burst: float = 10.0) -> None:
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


@dataclass
class Diagnosis:
    code: str
    text: str


def diagnose_application(
    app: DirectionStats, asterisk: DirectionStats, frame_ms: float = 20
) -> list[Diagnosis]:
    """The pitfalls of what an application sent toward Asterisk ('<')."""
    found: list[Diagnosis] = []
    ratio = app.realtime_ratio
    if app.bursts:
        found.append(
            Diagnosis(
                "burst",
                f"application audio came in {app.bursts} burst(s), up to "
                f"{app.max_window_audio * 1000:.0f} ms of audio within 20 ms: Asterisk "
                "plays what arrives at once, so it sounds choppy or is lost "
                "(send one 20 ms frame every 20 ms)",
            )
        )
    elif ratio is not None and ratio > 1.25:
        found.append(
            Diagnosis(
                "pacing",
                f"application audio came at {ratio:.1f}x real time: Asterisk does not "
                "buffer it (send one 20 ms frame every 20 ms)",
            )
        )
    if asterisk.audio_messages and not app.audio_messages:
        found.append(
            Diagnosis(
                "one-way-audio",
                "one-way audio: the application sent no audio back",
            )
        )
    found.extend(_encoding_diagnoses(app, "application"))
    if app.sizes and app.rates:
        rate = app.rates.most_common(1)[0][0]
        expected = frame_bytes(rate, frame_ms)
        odd = {size: n for size, n in app.sizes.items() if size != expected}
        # One short message is how a file ends; more is a framing habit.
        if sum(odd.values()) > 1:
            sizes = ", ".join(f"{n}x{size}" for size, n in sorted(odd.items())[:5])
            found.append(
                Diagnosis(
                    "frame-size",
                    f"application audio messages of other sizes than {expected} bytes "
                    f"({frame_ms:g} ms at {rate} Hz): {sizes}",
                )
            )
    for what, n in app.refused.items():
        found.append(
            Diagnosis("refused", f"application sent {n}x {what}: Asterisk ends the session")
        )
    return found


def diagnose_asterisk(asterisk: DirectionStats) -> list[Diagnosis]:
    """The pitfalls of what Asterisk (or a stand-in) sent toward the application."""
    return _encoding_diagnoses(asterisk, "caller")


def _encoding_diagnoses(stats: DirectionStats, who: str) -> list[Diagnosis]:
    encoding = stats.likely_encoding
    if encoding == "ulaw":
        return [
            Diagnosis(
                "ulaw",
                f"{who} audio looks like mu-law bytes labelled as slin: with the "
                "channel driver, add c(slin) (or c(slin16)...) to the Dial string",
            )
        ]
    if encoding == "s16be":
        return [
            Diagnosis(
                "byte-order",
                f"{who} audio looks like big-endian samples: AudioSocket audio is "
                "16-bit little-endian",
            )
        ]
    return []
