"""The speech detector (analysis/speech.py) on real speech, fed as calls deliver it.

The speech is espeak-ng's, resampled with soxr to each rate and embedded at a
known offset after digital silence or after low noise (white, -50 dBFS RMS,
from a seeded generator), two utterances 800 ms apart. Where speech starts and
ends inside espeak's own WAV is measured here, independently of the detector:
the first and last 5 ms window above -50 dBFS RMS (espeak's WAV has its own
silence at both ends). Every time is on the playout clock, which the tests
compute on their own from the messages: a message plays from max(its arrival,
the previous message's play end). The detector must find each start and end
within one frame (20 ms) of the truth. No test reads a clock.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import sys
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_cli.analysis.speech import (
    FRAME_SECONDS,
    Segment,
    SpeechDetector,
    speech_segments,
)
from tests.conftest import ROOT

TOLERANCE = 0.020  # one frame
FIRST = "Welcome to the bank"
SECOND = "How can I help you"
PAUSE = 0.8  # seconds of silence between the utterances
LEAD = 0.737  # before the first: not a whole number of frames
TAIL = 0.6
NOISE_DBFS = -50.0
TRUTH_WINDOW = 0.005
TRUTH_DBFS = -50.0
ALL_RATES = (8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000)

Messages = list[tuple[float, bytes]]


# Speech, and where it really is.


@pytest.fixture(scope="session")
def espeak_wavs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """espeak-ng's WAV of a phrase, made once per session."""
    if shutil.which("espeak-ng") is None:
        if os.environ.get("CI"):
            pytest.fail("espeak-ng is missing in CI")
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("espeak")
    made: dict[str, Path] = {}

    def make(text: str) -> Path:
        if text not in made:
            path = folder / f"{len(made)}.wav"
            subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
            made[text] = path
        return made[text]

    return make


def to_pcm(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples), -32768, 32767).astype("<i2")


def spoken(path: Path, rate: int) -> np.ndarray:
    """espeak's WAV at `rate` (soxr), as 16-bit samples."""
    import soundfile
    import soxr

    audio, file_rate = soundfile.read(str(path), dtype="float64")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    return to_pcm(soxr.resample(audio, file_rate, rate) * 32767)


def truth(samples: np.ndarray, rate: int) -> tuple[int, int]:
    """The first sample of the first, and the end of the last, 5 ms window above -50 dBFS RMS."""
    width = round(rate * TRUTH_WINDOW)
    count = len(samples) // width
    blocks = samples[: count * width].astype(np.float64).reshape(count, width)
    loud = np.flatnonzero((blocks**2).mean(axis=1) > 32768.0**2 * 10 ** (TRUTH_DBFS / 10))
    return int(loud[0]) * width, (int(loud[-1]) + 1) * width


@dataclass
class Scene:
    """Audio of a call's direction, and the sample spans where speech really is."""

    pcm: bytes
    rate: int
    speech: list[tuple[int, int]]  # [start, end) in samples of `pcm`


def scene(
    make: Callable[[str], Path],
    rate: int,
    *,
    texts: tuple[str, ...] = (FIRST, SECOND),
    noise: bool = False,
    lead: float = LEAD,
    seed: int = 1,
) -> Scene:
    parts: list[np.ndarray] = [np.zeros(round(lead * rate), dtype="<i2")]
    speech = []
    at = len(parts[0])
    for i, text in enumerate(texts):
        if i:
            parts.append(np.zeros(round(PAUSE * rate), dtype="<i2"))
            at += len(parts[-1])
        samples = spoken(make(text), rate)
        start, end = truth(samples, rate)
        speech.append((at + start, at + end))
        parts.append(samples)
        at += len(samples)
    parts.append(np.zeros(round(TAIL * rate), dtype="<i2"))
    audio = np.concatenate(parts).astype(np.float64)
    if noise:
        sigma = 32768 * 10 ** (NOISE_DBFS / 20)
        audio += np.random.default_rng(seed).normal(0.0, sigma, len(audio))
    return Scene(to_pcm(audio).tobytes(), rate, speech)


# How calls deliver audio, and the playout clock the tests expect.


def paced(
    pcm: bytes, rate: int, *, ms: float = 20, jitter: float = 0.006, seed: int = 3
) -> Messages:
    """Messages of `ms` ms, each arriving at its nominal time +-`jitter` (Asterisk's gaps
    range 8-32 ms)."""
    rnd = random.Random(seed)
    size = 2 * round(rate * ms / 1000)
    return [
        (0.25 + (i // 2) / rate + rnd.uniform(-jitter, jitter), pcm[i : i + size])
        for i in range(0, len(pcm), size)
    ]


def burst(pcm: bytes, rate: int, *, ms: float = 20, t0: float = 0.25) -> Messages:
    """Every message at once: laid end to end from t0."""
    size = 2 * round(rate * ms / 1000)
    return [(t0, pcm[i : i + size]) for i in range(0, len(pcm), size)]


def odd_lengths(pcm: bytes, rate: int, *, seed: int = 5) -> Messages:
    """Messages of random lengths, each an odd number of bytes: whole samples plus one
    stray byte, which the detector drops (as a 161-byte message holds 80 samples)."""
    rnd = random.Random(seed)
    out: Messages = []
    i = 0
    while i < len(pcm):
        size = 2 * rnd.randint(1, rate // 40)  # up to 50 ms
        chunk = pcm[i : i + size]
        out.append((0.25 + (i // 2) / rate + rnd.uniform(0, 0.004), chunk + b"\x7f"))
        i += size
    return out


class Playout:
    """The play time of each sample of a list of messages: a message plays from
    max(its arrival, the previous message's play end)."""

    def __init__(self, messages: Messages, rate: int) -> None:
        self.rate = rate
        self.first: list[int] = []  # the index of each message's first sample
        self.starts: list[float] = []
        end, count = -math.inf, 0
        for t, payload in messages:
            samples = len(payload) // 2
            start = max(t, end)
            self.first.append(count)
            self.starts.append(start)
            end = start + samples / rate
            count += samples

    def time(self, sample: int) -> float:
        i = bisect_right(self.first, sample) - 1
        return self.starts[i] + (sample - self.first[i]) / self.rate

    def span(self, start: int, end: int) -> tuple[float, float]:
        """The time of sample `start`, and the end of sample `end - 1`."""
        return self.time(start), self.time(end - 1) + 1 / self.rate


def feed_all(messages: Messages, rate: int, **options: Any) -> SpeechDetector:
    detector = SpeechDetector(**options)
    for t, payload in messages:
        detector.feed(t, payload, rate)
    detector.finish()
    return detector


def assert_found(found: list[Segment], expected: list[tuple[float, float]]) -> None:
    spans = [(round(s.start, 4), round(s.end, 4)) for s in found]
    want = [(round(a, 4), round(b, 4)) for a, b in expected]
    assert len(found) == len(expected), f"found {spans}, expected {want}"
    for segment, (start, end) in zip(found, expected, strict=True):
        assert abs(segment.start - start) <= TOLERANCE, f"start: found {spans}, expected {want}"
        assert abs(segment.end - end) <= TOLERANCE, f"end: found {spans}, expected {want}"


def same(found: list[Segment], reference: list[Segment]) -> bool:
    """The same segments, but for the last bits of floating point."""
    flat = [x for s in found for x in (s.start, s.end)]
    return flat == pytest.approx([x for s in reference for x in (s.start, s.end)], abs=1e-9)


FEEDS: dict[str, Callable[[bytes, int], Messages]] = {
    "paced-20ms-jitter": paced,
    "burst": burst,
    "odd-lengths": odd_lengths,
}


# Accuracy.


@pytest.mark.parametrize("background", ["silence", "noise"])
@pytest.mark.parametrize("feed", sorted(FEEDS))
@pytest.mark.parametrize("rate", [8000, 16000])
def test_speech_is_found_within_a_frame(
    espeak_wavs: Callable[[str], Path], rate: int, feed: str, background: str
) -> None:
    audio = scene(espeak_wavs, rate, noise=background == "noise")
    messages = FEEDS[feed](audio.pcm, rate)
    playout = Playout([(t, p[: len(p) & ~1]) for t, p in messages], rate)
    detector = feed_all(messages, rate)
    expected = [playout.span(a, b) for a, b in audio.speech]
    assert_found(detector.segments, expected)
    assert detector.first_speech == detector.segments[0].start
    assert not detector.speaking


@pytest.mark.parametrize("background", ["silence", "noise"])
@pytest.mark.parametrize("rate", [8000, 16000])
def test_offline_segments_of_one_stretch(
    espeak_wavs: Callable[[str], Path], rate: int, background: str
) -> None:
    audio = scene(espeak_wavs, rate, noise=background == "noise")
    t0 = 12.5
    found = speech_segments(audio.pcm, rate, t0)
    assert_found(found, [(t0 + a / rate, t0 + b / rate) for a, b in audio.speech])


@pytest.mark.parametrize("background", ["silence", "noise"])
@pytest.mark.parametrize("rate", [r for r in ALL_RATES if r not in (8000, 16000)])
def test_every_audiosocket_rate(
    espeak_wavs: Callable[[str], Path], rate: int, background: str
) -> None:
    """12, 24, 44.1, 96 and 192 kHz go through the resampler; 32 and 48 kHz do not."""
    audio = scene(espeak_wavs, rate, noise=background == "noise")
    messages = paced(audio.pcm, rate)
    playout = Playout(messages, rate)
    detector = feed_all(messages, rate)
    assert_found(detector.segments, [playout.span(a, b) for a, b in audio.speech])


@pytest.mark.parametrize("ms", [10, 30, 7.5, 100])
def test_any_message_size_gives_the_same_frames(
    espeak_wavs: Callable[[str], Path], ms: float
) -> None:
    """Back to back, messages of any size are cut into the same 20 ms frames as
    20 ms messages are: the same segments, not merely close ones."""
    audio = scene(espeak_wavs, 16000, noise=True)
    reference = feed_all(burst(audio.pcm, 16000), 16000).segments
    found = feed_all(burst(audio.pcm, 16000, ms=ms), 16000).segments
    assert same(found, reference)


@pytest.mark.parametrize(
    ("first_rate", "second_rate"), [(8000, 16000), (16000, 24000), (48000, 8000)]
)
def test_a_rate_change_mid_stream(
    espeak_wavs: Callable[[str], Path], first_rate: int, second_rate: int
) -> None:
    """The first utterance at one rate, the second at another, in one call, paced."""
    one = scene(espeak_wavs, first_rate, texts=(FIRST,), noise=True, seed=7)
    two = scene(espeak_wavs, second_rate, texts=(SECOND,), noise=True, seed=8, lead=0.2)
    first = paced(one.pcm, first_rate)
    end = Playout(first, first_rate)
    last_end = end.time(len(one.pcm) // 2 - 1) + 1 / first_rate
    second = [(t + last_end - 0.25, p) for t, p in paced(two.pcm, second_rate, seed=9)]
    detector = SpeechDetector()
    for t, payload in first:
        detector.feed(t, payload, first_rate)
    for t, payload in second:
        detector.feed(t, payload, second_rate)
    detector.finish()
    expected = [
        end.span(*one.speech[0]),
        Playout(second, second_rate).span(*two.speech[0]),
    ]
    assert_found(detector.segments, expected)


def test_a_side_that_stops_sending_is_silent(espeak_wavs: Callable[[str], Path]) -> None:
    """An application sends nothing between utterances (no silent frames): the gap in
    the playout is silence, and the VAD's own hangover does not reach past it."""
    rate = 8000
    one = spoken(espeak_wavs(FIRST), rate)
    two = spoken(espeak_wavs(SECOND), rate)
    first = paced(one.tobytes(), rate)
    resume = first[-1][0] + 1.0
    second = [(t + resume - 0.25, p) for t, p in paced(two.tobytes(), rate, seed=4)]
    detector = feed_all(first + second, rate)
    expected = [
        Playout(first, rate).span(*truth(one, rate)),
        Playout(second, rate).span(*truth(two, rate)),
    ]
    assert_found(detector.segments, expected)


# What is not speech.


@pytest.mark.parametrize("rate", ALL_RATES)
def test_digital_silence_is_no_speech(rate: int) -> None:
    size = 2 * rate // 50
    detector = feed_all([(0.02 * i, bytes(size)) for i in range(500)], rate)
    assert detector.segments == []
    assert detector.first_speech is None
    assert detector.audio_end == pytest.approx(10.0)


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_low_noise_alone_is_no_speech(rate: int) -> None:
    sigma = 32768 * 10 ** (NOISE_DBFS / 20)
    noise = to_pcm(np.random.default_rng(11).normal(0.0, sigma, 10 * rate))
    silence = bytes(2 * rate)  # noise that starts after digital silence
    assert speech_segments(silence + noise.tobytes(), rate) == []


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_steady_tone_is_taken_for_speech(rate: int) -> None:
    """WebRTC's VAD calls a steady tone speech: a -20 dBFS 440 Hz tone of 2 s is one
    segment, the whole tone (docs/speech.md, "Limits")."""
    t = np.arange(2 * rate) / rate
    tone = to_pcm(np.sin(2 * np.pi * 440 * t) * 32768 * 10 ** (-20 / 20) * math.sqrt(2))
    pcm = bytes(rate) + tone.tobytes() + bytes(rate)  # 0.5 s of silence either side
    assert_found(speech_segments(pcm, rate), [(0.5, 2.5)])


# The live interface.


def test_events_follow_the_segments(espeak_wavs: Callable[[str], Path]) -> None:
    rate = 16000
    audio = scene(espeak_wavs, rate, noise=True)
    events: list[tuple[str, float, float]] = []
    detector = SpeechDetector()
    detector.on_change = lambda what, t: events.append((what, t, detector.audio_end or 0.0))
    states = []
    for t, payload in paced(audio.pcm, rate, jitter=0.0):
        detector.feed(t, payload, rate)
        states.append((t, detector.speaking))
    detector.finish()
    segments = detector.segments
    assert [what for what, _, _ in events] == ["start", "end", "start", "end"]
    assert [t for _, t, _ in events] == [x for s in segments for x in (s.start, s.end)]
    # Each event comes after the time it reports: after the onset (5 speech frames
    # from the first, whose first sound may lie up to a frame into it), after the
    # hangover (300 ms from the last speech frame, which the end may follow by up
    # to 5 frames of an unvoiced ending).
    for what, t, heard in events:
        assert heard >= t + (0.08 if what == "start" else 0.2)
    assert detector.first_speech == segments[0].start
    assert detector.speech_between(0, 100) == pytest.approx(sum(s.duration for s in segments))
    assert detector.speech_between(segments[0].end, segments[1].start) == 0.0
    middle = (segments[0].start + segments[0].end) / 2
    assert detector.speech_between(middle, middle + 0.1) == pytest.approx(0.1)
    assert any(speaking for _, speaking in states) and not states[-1][1]


def test_the_open_segment_reaches_the_audio_so_far(espeak_wavs: Callable[[str], Path]) -> None:
    rate = 8000
    audio = scene(espeak_wavs, rate, texts=(FIRST,))
    messages = paced(audio.pcm, rate, jitter=0.0)
    detector = SpeechDetector()
    middle = Playout(messages, rate).time((audio.speech[0][0] + audio.speech[0][1]) // 2)
    for t, payload in messages:
        detector.feed(t, payload, rate)
        if t >= middle:
            break
    assert detector.speaking
    (segment,) = detector.segments
    assert segment.end == detector.audio_end
    assert detector.speech_between(0, 100) == pytest.approx(segment.duration)


def test_advance_closes_a_segment_when_the_audio_stops(espeak_wavs: Callable[[str], Path]) -> None:
    """A bot that stops talking (barge-in) often stops sending: the clock, not more
    audio, closes its segment, at its last speech frame."""
    rate = 8000
    speech = spoken(espeak_wavs(FIRST), rate)
    start, end = truth(speech, rate)
    cut = (start + end) // 2  # stop mid-utterance, as at a barge-in
    pcm = speech[:cut].tobytes()
    messages = paced(pcm, rate, jitter=0.0)
    events: list[tuple[str, float]] = []
    detector = SpeechDetector(on_change=lambda what, t: events.append((what, t)))
    for t, payload in messages:
        detector.feed(t, payload, rate)
    stopped = Playout(messages, rate).span(0, cut)[1]
    detector.advance(stopped + 0.1)
    assert detector.speaking and [e for e, _ in events] == ["start"]
    detector.advance(stopped + 0.3)
    assert not detector.speaking
    assert [e for e, _ in events] == ["start", "end"]
    assert events[1][1] == pytest.approx(stopped, abs=TOLERANCE)
    assert detector.segments[0].end == events[1][1]


def test_finish_cuts_off_what_would_have_played_after_the_call(
    espeak_wavs: Callable[[str], Path],
) -> None:
    """A burst is laid end to end on the playout clock; the call ending at `t` cuts it."""
    rate = 8000
    audio = scene(espeak_wavs, rate)
    whole = speech_segments(audio.pcm, rate)
    hang_up = (whole[1].start + whole[1].end) / 2
    detector = SpeechDetector()
    for t, payload in burst(audio.pcm, rate, t0=0.0):
        detector.feed(t, payload, rate)
    detector.finish(hang_up)
    assert same(detector.segments, [whole[0], Segment(whole[1].start, hang_up)])
    # Sent up to 0.1 s past the hangup: the open segment's end is reported at the hangup.
    events: list[tuple[str, float]] = []
    cut = SpeechDetector(on_change=lambda what, t: events.append((what, t)))
    for t, payload in burst(audio.pcm[: round((hang_up + 0.1) * rate) * 2], rate, t0=0.0):
        cut.feed(t, payload, rate)
    assert cut.speaking
    cut.finish(hang_up)
    assert events[-1] == ("end", hang_up)
    assert same(cut.segments, detector.segments)
    early = SpeechDetector()
    for t, payload in burst(audio.pcm, rate, t0=0.0):
        early.feed(t, payload, rate)
    early.finish(whole[0].start - 0.1)
    assert early.segments == [] and early.first_speech is None


# Odds and ends.


def test_odd_bytes_and_empty_payloads() -> None:
    detector = SpeechDetector()
    detector.feed(0.0, b"", 8000)
    detector.feed(0.0, b"\x01", 8000)
    assert detector.audio_end is None
    detector.feed(1.0, bytes(321), 8000)  # 160 samples and a stray byte: one frame
    assert detector.audio_end == pytest.approx(1.0 + FRAME_SECONDS)
    detector.feed(1.02, bytes(320), 8000)
    detector.feed(1.04, bytes(321), 8000)  # the same, on the way of whole frames
    assert detector.audio_end == pytest.approx(1.0 + 3 * FRAME_SECONDS)
    detector.finish()
    assert detector.segments == []


@pytest.mark.parametrize(
    "options",
    [
        {"aggressiveness": 4},
        {"aggressiveness": -1},
        {"onset_ms": 0},
        {"onset_ms": 100, "onset_window_ms": 60},
        {"hangover_ms": 10},
    ],
)
def test_bad_options(options: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SpeechDetector(**options)


def test_bad_rate() -> None:
    with pytest.raises(ValueError):
        SpeechDetector().feed(0.0, bytes(320), 0)


@st.composite
def hostile_calls(draw: st.DrawFn) -> list[tuple[float, bytes, int]]:
    """Messages of any length, content, rate and arrival (rates may change, times
    may go back), with loud stretches so that segments open and close."""
    rates = st.sampled_from(ALL_RATES)
    out = []
    t = 0.0
    for _ in range(draw(st.integers(1, 40))):
        t = max(0.0, t + draw(st.floats(-0.05, 0.5)))
        size = draw(st.integers(0, 2000))
        fill = draw(st.sampled_from(["zeros", "loud", "random"]))
        if fill == "zeros":
            payload = bytes(size)
        elif fill == "loud":
            payload = bytes([0x00, 0x40, 0x00, 0xC0] * (size // 4 + 1))[:size]
        else:
            payload = draw(st.binary(min_size=size, max_size=size))
        out.append((t, payload, draw(rates)))
    return out


@settings(max_examples=150, deadline=None)
@given(hostile_calls(), st.booleans(), st.floats(0.0, 30.0))
def test_any_input_gives_ordered_segments(
    messages: list[tuple[float, bytes, int]], ends_at: bool, end: float
) -> None:
    detector = SpeechDetector()
    for t, payload, rate in messages:
        detector.feed(t, payload, rate)
        detector.advance(t + 0.4)
    detector.finish(end if ends_at else None)
    segments = detector.segments
    for segment in segments:
        assert segment.start < segment.end
    for a, b in zip(segments, segments[1:], strict=False):
        assert a.end <= b.start
    assert detector.first_speech == (segments[0].start if segments else None)
    assert not detector.speaking


def test_importing_it_loads_no_numpy_soxr_or_webrtcvad() -> None:
    code = (
        "import sys, audiosocket_cli.analysis.speech; "
        "print(sorted({'numpy', 'soxr', 'webrtcvad'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
