"""When a side of a call speaks: segments of speech on the playout clock, from WebRTC's VAD.

One detector for every command that needs to know when the application (or
the caller) is speaking: time to first speech, response latency, barge-in,
talk-over, dead air. Feed it each audio message as it arrived; it lays the
audio on the clock Asterisk plays it by, cuts it into 20 ms frames, asks
WebRTC's voice activity detector (webrtcvad) about each, and turns the
answers into segments whose ends are corrected to the first and last speech
frame. docs/speech.md describes the timeline, the rules, the corrections, the
accuracy and the cost.

numpy, soxr and webrtcvad are imported inside functions: start-up must not pay
for them. The usual message (20 ms at 8, 16, 32 or 48 kHz, paced or not) takes a
path with no numpy and no copy of the audio.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FRAME_MS = 20
FRAME_SECONDS = FRAME_MS / 1000
VAD_RATES = (8000, 16000, 32000, 48000)  # what WebRTC's VAD takes as it is
RESAMPLE_RATE = 16000  # other rates are resampled to this (see _start_run)

# The silence gate: a frame whose every sample lies within -256..255 (each high
# byte 0x00 or 0xff: peak below -42 dBFS) is non-speech without asking the VAD.
SILENT_HIGH_BYTES = b"\x00\xff"
SILENCE_PEAK_DBFS = 20 * math.log10(256 / 32768)  # -42.1

DEFAULT_AGGRESSIVENESS = 2
DEFAULT_ONSET_MS = 100
DEFAULT_ONSET_WINDOW_MS = 200
DEFAULT_HANGOVER_MS = 300

# WebRTC's VAD keeps answering "speech" for a few frames after speech ends (its
# own hangover: at 20 ms frames, 7 frames in modes 0 and 1, 5 in modes 2 and 3,
# after a run longer than 6 frames). Those frames can only be the last of a run.
VAD_HANGOVER_FRAMES = (7, 7, 5, 5)
TRIM_EXTRA = 2  # and a frame or two of background it takes for speech as speech ends
# Unvoiced onsets (s, f, sh) often go unnoticed by the VAD for a few frames.
EXTEND_FRAMES = 5  # at most this many frames before the first speech frame join a segment
BACKGROUND_FRAMES = 5  # the frames beside a segment whose median level is its background
LEVEL_MARGIN_DB = 3.0  # louder than the background by this much is sound, not background
CONTIGUOUS = 1e-6  # seconds: frames closer than this are back to back

ChangeHook = Callable[[str, float], None]
_Frame = tuple[float, float, bytes, bool]  # start, end, samples, speech


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of speech, in seconds on the detector's timeline."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


class SpeechDetector:
    """Speech segments of one direction of a call, fed message by message.

    `feed(t, payload, rate)` takes each audio message with its arrival time.
    A message plays from max(its arrival, the previous message's play end), so
    paced audio lands on its arrival times and a burst is laid end to end.
    `on_change(what, t)`, if given, is called with ("start", segment start)
    when a segment is recognised and ("end", segment end) when it closes; the
    times are the corrected ones, so they lie before the moment of the call.
    """

    __slots__ = (
        "on_change",
        "aggressiveness",
        "onset_ms",
        "onset_window_ms",
        "hangover_ms",
        "_is_speech",
        "_onset_frames",
        "_window",
        "_hangover",
        "_vad_hangover",
        "_play_end",
        "_rate",
        "_fast_rate",
        "_vad_rate",
        "_frame_bytes",
        "_zeros",
        "_resampler",
        "_buf",
        "_buf_t0",
        "_anchors",
        "_in_pos",
        "_out_pos",
        "_vad_last",
        "_recent",
        "_onset",
        "_open",
        "_seg_start",
        "_last_speech_end",
        "_closed",
        "_audio_end",
        "_first",
    )

    def __init__(
        self,
        *,
        aggressiveness: int = DEFAULT_AGGRESSIVENESS,
        onset_ms: int = DEFAULT_ONSET_MS,
        onset_window_ms: int | None = None,
        hangover_ms: int = DEFAULT_HANGOVER_MS,
        on_change: ChangeHook | None = None,
    ) -> None:
        import webrtcvad  # type: ignore[import-untyped]  # lazily, and it has no type hints

        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, not {aggressiveness!r}")
        if onset_window_ms is None:
            onset_window_ms = max(onset_ms, DEFAULT_ONSET_WINDOW_MS)
        if onset_ms < FRAME_MS:
            raise ValueError(f"onset_ms must be at least one frame ({FRAME_MS} ms), not {onset_ms}")
        if onset_window_ms < onset_ms:
            raise ValueError(f"onset_window_ms ({onset_window_ms}) is shorter than onset_ms")
        if hangover_ms < FRAME_MS:
            raise ValueError(f"hangover_ms must be at least {FRAME_MS} ms, not {hangover_ms}")
        self.on_change = on_change
        self.aggressiveness = aggressiveness
        self.onset_ms = onset_ms
        self.onset_window_ms = onset_window_ms
        self.hangover_ms = hangover_ms
        self._is_speech = webrtcvad.Vad(aggressiveness).is_speech
        self._onset_frames = -(-onset_ms // FRAME_MS)
        # Frames are compared by their start times: a window of W ms holds the
        # frames starting less than W ms before the current frame's end.
        self._window = onset_window_ms / 1000 - CONTIGUOUS
        self._hangover = hangover_ms / 1000 - CONTIGUOUS
        self._vad_hangover = VAD_HANGOVER_FRAMES[aggressiveness]
        self._play_end = -math.inf
        self._rate = 0  # the current run's rate; 0: none
        self._fast_rate = 0  # the current run's rate if the VAD takes it as it is
        self._vad_rate = 0
        self._frame_bytes = 0
        self._zeros = b""
        self._resampler: Any = None
        self._buf = bytearray()  # audio at the VAD's rate, less than a frame (or not yet framed)
        self._buf_t0 = 0.0  # the time of the first sample in _buf (runs at the VAD's rates)
        self._anchors: deque[tuple[int, float]] = deque()  # resampled runs: (sample, play start)
        self._in_pos = 0  # resampled runs: samples fed to the resampler
        self._out_pos = 0  # resampled runs: resampled samples framed
        self._vad_last = False  # the VAD's last answer (its own hangover may be running)
        frames = max(
            self._onset_frames + EXTEND_FRAMES + BACKGROUND_FRAMES,
            -(-hangover_ms // FRAME_MS) + VAD_HANGOVER_FRAMES[0] + BACKGROUND_FRAMES,
            -(-onset_window_ms // FRAME_MS) + EXTEND_FRAMES + BACKGROUND_FRAMES,
        )
        # The last frames: (start, end, samples, speech), for the corrections.
        self._recent: deque[tuple[float, float, bytes, bool]] = deque(maxlen=frames + 2)
        self._onset: deque[float] = deque()  # starts of recent speech frames, outside a segment
        self._open = False
        self._seg_start = 0.0
        self._last_speech_end = 0.0
        self._closed: list[Segment] = []
        self._audio_end = -math.inf
        self._first: float | None = None

    # Feeding.

    def feed(self, t: float, payload: bytes, rate: int) -> None:
        """One audio message as it arrived: `t` its arrival time (s), `payload`
        16-bit little-endian mono PCM at `rate` (any length: a trailing odd byte
        is dropped), any rate (8000, 16000, 32000 and 48000 Hz as they are,
        others resampled)."""
        size = len(payload) & ~1
        if not size:
            return
        play = self._play_end
        if t > play:
            if t - play >= FRAME_SECONDS:
                self._gap(t - play)
            play = t
        if rate == self._fast_rate and len(payload) == self._frame_bytes and not self._buf:
            # The usual message: one whole frame at a rate the VAD takes.
            end = play + FRAME_SECONDS
            self._play_end = end
            self._frame(play, end, payload)
            return
        if rate != self._rate or rate <= 0:
            if rate <= 0:
                raise ValueError(f"rate must be positive, not {rate}")
            self._end_run()
            self._start_run(rate)
        self._play_end = play + (size >> 1) / rate
        data = payload if size == len(payload) else payload[:size]
        if self._resampler is None:
            self._feed_native(play, bytes(data), rate)
        else:
            self._feed_resampled(play, data, rate)

    def finish(self, t: float | None = None) -> None:
        """No more audio (the call ended). The last partial frame is classified
        (padded with silence), an open segment closes at its last speech frame,
        and if `t` (the call's end) is given, what would have played after it
        is cut off: segments are clipped at `t`."""
        self._end_run()
        if self._open:
            self._close(t)
        self._onset.clear()
        if t is not None:
            self._closed = [Segment(s.start, min(s.end, t)) for s in self._closed if s.start < t]
            self._first = self._closed[0].start if self._closed else None

    def advance(self, t: float) -> None:
        """The clock reached `t` and no more audio came: the silence since the
        audio's end counts as non-speech, so an open segment whose hangover has
        passed closes now (a live caller's way to see a side stop talking)."""
        if not self._open or t < self._play_end:
            return
        if t - self._last_speech_end < self._hangover:
            return
        self._end_run()  # the audio held back (a partial frame, the resampler's delay)
        if self._open and t - self._last_speech_end >= self._hangover:
            self._close()

    # What it found.

    @property
    def segments(self) -> list[Segment]:
        """The closed segments, then the open one (ending at the audio so far)."""
        if self._open:
            return [*self._closed, Segment(self._seg_start, self._audio_end)]
        return list(self._closed)

    @property
    def speaking(self) -> bool:
        """Inside a segment now (its hangover not yet passed)."""
        return self._open

    @property
    def first_speech(self) -> float | None:
        """The start of the first segment."""
        return self._first

    @property
    def audio_end(self) -> float | None:
        """The end of the audio classified so far, on the playout clock."""
        return None if self._audio_end == -math.inf else self._audio_end

    def speech_between(self, a: float, b: float) -> float:
        """Seconds of speech within [a, b]."""
        total = 0.0
        for segment in self.segments:
            overlap = min(segment.end, b) - max(segment.start, a)
            if overlap > 0:
                total += overlap
        return total

    # Runs: stretches of audio at one rate, without a gap of a frame or more.

    def _start_run(self, rate: int) -> None:
        self._rate = rate
        if rate in VAD_RATES:
            self._vad_rate = self._fast_rate = rate
        else:
            import soxr  # lazily: start-up must not pay for it

            self._vad_rate = RESAMPLE_RATE
            self._fast_rate = 0
            self._resampler = soxr.ResampleStream(rate, RESAMPLE_RATE, 1, dtype="int16")
        self._frame_bytes = self._vad_rate // 1000 * FRAME_MS * 2
        self._zeros = bytes(self._frame_bytes)

    def _end_run(self) -> None:
        """Classify what the run holds back; the next audio starts a new run."""
        if self._resampler is not None and self._anchors:
            import numpy as np

            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            self._take(tail.tobytes())
        buf = self._buf
        if buf:
            count = len(buf) >> 1
            start = self._buf_t0 if self._resampler is None else self._time_at(self._out_pos)
            end = (
                start + count / self._vad_rate
                if self._resampler is None
                else self._time_at(self._out_pos + count - 1) + 1 / self._vad_rate
            )
            end = min(end, self._play_end)  # the resampler's rounding: not past the input
            frame = bytes(buf) + self._zeros[len(buf) :]  # the caller hears silence after it
            buf.clear()
            self._frame(start, end, frame)
        self._rate = self._fast_rate = 0
        self._resampler = None
        self._anchors.clear()
        self._in_pos = self._out_pos = 0

    def _gap(self, seconds: float) -> None:
        """Nothing played for `seconds` (at least a frame): end the run there and let
        the VAD hear the silence, so its own hangover cannot reach past the gap."""
        if self._rate and (self._buf or self._resampler is not None):
            self._end_run()
        if self._vad_last and self._vad_rate:
            zeros, rate, is_speech = self._zeros, self._vad_rate, self._is_speech
            for _ in range(int(min(seconds / FRAME_SECONDS, VAD_HANGOVER_FRAMES[0] + 1))):
                if not is_speech(zeros, rate):
                    self._vad_last = False
                    break

    def _feed_native(self, play: float, data: bytes, rate: int) -> None:
        size, step, buf = len(data), self._frame_bytes, self._buf
        pos = 0
        if buf:
            need = step - len(buf)
            if size < need:
                buf += data
                return
            frame = bytes(buf) + data[:need]
            buf.clear()
            self._frame(self._buf_t0, play + (need >> 1) / rate, frame)
            pos = need
        while size - pos >= step:
            start = play + (pos >> 1) / rate
            self._frame(start, play + ((pos + step) >> 1) / rate, data[pos : pos + step])
            pos += step
        if pos < size:
            self._buf_t0 = play + (pos >> 1) / rate
            buf += data[pos:]

    def _feed_resampled(self, play: float, data: bytes, rate: int) -> None:
        import numpy as np

        samples = np.frombuffer(data, dtype="<i2")
        self._anchors.append((self._in_pos, play))
        self._in_pos += samples.size
        self._take(self._resampler.resample_chunk(samples).tobytes())

    def _take(self, out: bytes) -> None:
        """Resampled audio: frame it, each frame timed through the input's play starts."""
        buf = self._buf
        buf += out
        step, count = self._frame_bytes, self._frame_bytes >> 1
        pos = 0
        while len(buf) - pos >= step:
            first = self._out_pos
            start = self._time_at(first)
            end = min(self._time_at(first + count - 1) + 1 / self._vad_rate, self._play_end)
            self._out_pos = first + count
            self._frame(start, end, bytes(buf[pos : pos + step]))
            pos += step
        del buf[:pos]

    def _time_at(self, index: int) -> float:
        """The play time of resampled sample `index` of the run (queried in increasing order)."""
        pos = index * self._rate / self._vad_rate
        anchors = self._anchors
        while len(anchors) > 1 and anchors[1][0] <= pos:
            anchors.popleft()
        sample, play = anchors[0]
        return play + (pos - sample) / self._rate

    # Frames and segments.

    def _frame(self, start: float, end: float, frame: bytes) -> None:
        if frame == self._zeros or not frame[1::2].translate(None, SILENT_HIGH_BYTES):
            if self._vad_last:  # let the VAD's own hangover run down on what it hears
                self._vad_last = self._is_speech(frame, self._vad_rate)
            speech = False
        else:
            speech = self._vad_last = self._is_speech(frame, self._vad_rate)
        self._recent.append((start, end, frame, speech))
        self._audio_end = end
        if self._open:
            if speech:
                if start - self._last_speech_end < self._hangover:
                    self._last_speech_end = end
                    return
                self._close()  # after a gap longer than the hangover
            else:
                if end - self._last_speech_end >= self._hangover:
                    self._close()
                return
        if speech:
            onset = self._onset
            onset.append(start)
            while onset[0] < end - self._window:
                onset.popleft()
            if len(onset) >= self._onset_frames:
                self._begin(onset[0], end)

    def _begin(self, first: float, end: float) -> None:
        start = self._extend(first)
        self._onset.clear()
        self._open = True
        self._seg_start = start
        self._last_speech_end = end
        if self._first is None:
            self._first = start
        if self.on_change is not None:
            self.on_change("start", start)

    def _close(self, limit: float | None = None) -> None:
        end, kept = self._trim(self._last_speech_end)
        if limit is not None and end > limit:
            end = limit  # the call ended: nothing played after it
        self._open = False
        if kept < self._onset_frames or end <= self._seg_start:
            # What is left is shorter than an onset: the VAD took the start of a
            # steady sound for speech until it adapted. Not a segment; a live
            # caller is told it ended where it started.
            if self._first == self._seg_start:
                self._first = None
            end = self._seg_start
        else:
            self._closed.append(Segment(self._seg_start, end))
        if self.on_change is not None:
            self.on_change("end", end)

    def _extend(self, first: float) -> float:
        """The start of a segment whose first speech frame starts at `first`: earlier
        over the frames just before it that are louder than the background before
        them (at most EXTEND_FRAMES), then within the first frame, its first sample
        above the silence gate."""
        frames = list(self._recent)
        at = next((i for i in range(len(frames) - 1, -1, -1) if frames[i][0] <= first), None)
        if at is None:
            return first
        floor = self._closed[-1].end if self._closed else -math.inf
        # Back to back before it, not silent, after the last segment: nearest first.
        edge = at
        while at - edge < EXTEND_FRAMES and edge > 0:
            frame = frames[edge - 1]
            if abs(frame[1] - frames[edge][0]) > CONTIGUOUS or frame[0] < floor:
                break
            if _is_silent(frame[2]):
                break
            edge -= 1
        if edge < at:
            candidates = frames[edge:at][::-1]
            background = frames[max(0, edge - BACKGROUND_FRAMES) : edge]
            level = _Levels([f[2] for f in candidates], [f[2] for f in background])
            for i in range(len(candidates)):
                if not level.above(i):
                    break
                at -= 1
        return _first_sound(frames[at])

    def _trim(self, last_end: float) -> tuple[float, int]:
        """The end of a segment whose last speech frame ends at `last_end`, and how
        many frames it keeps. The background is the median level of the last
        non-speech frames after it (the furthest from the speech, up to
        BACKGROUND_FRAMES). The end moves later over the frames just after the last
        speech frame that are louder than the background (at most EXTEND_FRAMES,
        back to back, none below the silence gate: an unvoiced ending the VAD
        missed), or else earlier over its last frames that are not: the VAD's own
        hangover answers "speech" for a few frames after speech ends
        (VAD_HANGOVER_FRAMES, gated ones between them included), so at most that
        many and TRIM_EXTRA more are taken back, never the segment's first. Then,
        within the last frame, the end is that of its last sample above the
        silence gate. A segment nothing was taken from keeps all its frames."""
        frames = list(self._recent)
        at = next(
            (i for i in range(len(frames) - 1, -1, -1) if frames[i][1] <= last_end + CONTIGUOUS),
            None,
        )
        if at is None:
            return last_end, self._onset_frames
        far = [f[2] for f in frames[at + 1 :] if not f[3]][-BACKGROUND_FRAMES:]
        if not far:
            return _last_sound(frames[at]), self._onset_frames
        later = at
        while later - at < EXTEND_FRAMES and later + 1 < len(frames):
            frame = frames[later + 1]
            if abs(frame[0] - frames[later][1]) > CONTIGUOUS or _is_silent(frame[2]):
                break
            later += 1
        earlier = at
        while at - earlier < self._vad_hangover + TRIM_EXTRA and earlier > 0:
            if frames[earlier][0] <= self._seg_start + CONTIGUOUS:
                break
            earlier -= 1
        if later == at and earlier == at:
            return _last_sound(frames[at]), self._onset_frames
        after = frames[at + 1 : later + 1]
        before = frames[earlier + 1 : at + 1][::-1]  # nearest the end first
        level = _Levels([f[2] for f in after + before], far)
        extended = 0
        while extended < len(after) and level.above(extended):
            extended += 1
        if extended:
            return _last_sound(after[extended - 1]), self._onset_frames
        trimmed = 0
        while trimmed < len(before) and not level.above(len(after) + trimmed):
            trimmed += 1
        kept = self._onset_frames
        if trimmed:
            at -= trimmed
            kept = sum(1 for f in frames[: at + 1] if f[1] > self._seg_start + CONTIGUOUS)
        return _last_sound(frames[at]), kept


class _Levels:
    """Levels of a few frames against the median level of a few others."""

    def __init__(self, frames: list[bytes], background: list[bytes]) -> None:
        from audiosocket_cli.analysis.levels import levels_dbfs

        found = levels_dbfs(frames + background)
        self.levels = [-math.inf if x is None else x for x in found[: len(frames)]]
        behind = sorted(-math.inf if x is None else x for x in found[len(frames) :])
        self.background = behind[len(behind) // 2] if behind else -math.inf

    def above(self, i: int) -> bool:
        return self.levels[i] >= self.background + LEVEL_MARGIN_DB


def _is_silent(frame: bytes) -> bool:
    return not frame[1::2].translate(None, SILENT_HIGH_BYTES)


def _first_sound(frame: _Frame) -> float:
    """The time of a frame's first sample above the silence gate (its start if none)."""
    start, _, samples, _ = frame
    high = samples[1::2]
    quiet = len(high) - len(high.lstrip(SILENT_HIGH_BYTES))
    return start + quiet / (len(high) * 1000 // FRAME_MS) if quiet < len(high) else start


def _last_sound(frame: _Frame) -> float:
    """The end of a frame's last sample above the silence gate (its end if none)."""
    start, end, samples, _ = frame
    high = samples[1::2]
    sound = len(high.rstrip(SILENT_HIGH_BYTES))
    return min(end, start + sound / (len(high) * 1000 // FRAME_MS)) if sound else end


def speech_segments(pcm: bytes, rate: int, t0: float = 0.0, **options: Any) -> list[Segment]:
    """Offline: the segments of one continuous stretch of audio starting at `t0`.

    `options` are SpeechDetector's (aggressiveness, onset_ms, onset_window_ms,
    hangover_ms)."""
    detector = SpeechDetector(**options)
    detector.feed(t0, pcm, rate)
    detector.finish()
    return detector.segments
