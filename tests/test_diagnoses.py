"""The diagnoses of docs/protocol.md, "Common mistakes", from timed messages.

DirectionStats is driven directly with messages and arrival times. The
encoding cases use real audio encoded by sox (installed here and in CI), not
an encoder written for the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable

import pytest

from audiosocket_cli.analysis.diagnoses import Diagnosis, diagnose_application, diagnose_asterisk
from audiosocket_cli.analysis.stats import DirectionStats
from audiosocket_cli.protocol.session import Ended
from audiosocket_cli.protocol.wire import RATE_KINDS, Kind, Message
from tests.conftest import SAMPLES

HELLO = SAMPLES / "hello-8k.wav"


def feed(
    stats: DirectionStats,
    audio: bytes,
    size: int,
    *,
    rate: int = 8000,
    start: float = 0.0,
    every: float | None = None,
) -> float:
    """`audio` in messages of `size` bytes, one every `every` seconds (their own
    duration by default); the time after the last."""
    every = size / (2 * rate) if every is None else every
    t = start
    for at in range(0, len(audio) - size + 1, size):
        stats.add(t, Message(RATE_KINDS[rate], audio[at : at + size]))
        t += every
    return t


def codes(found: Iterable[Diagnosis]) -> list[str]:
    return [d.code for d in found]


def text(found: Iterable[Diagnosis], code: str) -> str:
    return next(d.text for d in found if d.code == code)


def caller(seconds: float, rate: int = 8000, frame_ms: float = 20) -> DirectionStats:
    """A well-behaved caller: paced frames of quiet PCM noise."""
    stats = DirectionStats()
    size = int(rate * frame_ms / 1000) * 2
    frame = (b"\x10\x00\xf0\xff" * size)[:size]
    feed(stats, frame * int(seconds * 1000 / frame_ms), size, rate=rate)
    return stats


# Pacing: slow, burst, echoed frames.


def paced_app() -> DirectionStats:
    """The application's side, as every engine that diagnoses it counts it."""
    return DirectionStats(analyse_pacing=True)


def test_audio_slower_than_real_time_is_diagnosed() -> None:
    """A pacer that loses ~0.9 ms a frame: 20.9 ms between 20 ms frames."""
    app = paced_app()
    feed(app, bytes(320) * 350, 320, every=0.0209)  # 7 s of audio
    found = diagnose_application(app, caller(7.3))
    assert codes(found) == ["slow"]
    assert "0.957x real time over 4.0 s of audio from 3.13s" in text(found, "slow")
    assert "a steady slow clock (a message every 20.9 ms for 20.0 ms of audio)" in text(
        found, "slow"
    )
    assert app.pacing().startswith("0.96x real time, jitter p99 1.0ms, worst gap 20.9ms")


def test_slow_needs_three_seconds_of_audio() -> None:
    app = paced_app()
    feed(app, bytes(320) * 145, 320, every=0.0209)  # 2.9 s
    assert codes(diagnose_application(app, caller(3))) == []
    app = paced_app()
    feed(app, bytes(320) * 225, 320, every=0.0209)  # a 4.5 s prompt: one block and the rest
    found = diagnose_application(app, caller(4.5))
    assert codes(found) == ["slow"]
    assert "over 4.5 s of audio" in text(found, "slow")


def test_synthesis_stalls_are_named() -> None:
    """Real-time frames, but 120 ms lost every second: a TTS engine that stalls."""
    app = paced_app()
    t = 0.0
    for k in range(300):
        app.add(t, Message(Kind.AUDIO_8K, bytes(320)))
        t += 0.02 + (0.12 if k % 50 == 49 else 0.0)
    found = diagnose_application(app, caller(6))
    assert codes(found) == ["slow"]
    assert (
        "0.893x real time over 3.0 s of audio from 3.24s to 6.60s: "
        "synthesis stalls (3 gaps, 360 ms of silence in all)" in text(found, "slow")
    )


def test_a_steady_fast_clock_is_pacing() -> None:
    app = paced_app()
    feed(app, bytes(320) * 200, 320, every=0.0194)  # 3% fast: no burst, still too fast
    found = diagnose_application(app, caller(4))
    assert codes(found) == ["pacing"]
    assert "a steady fast clock" in text(found, "pacing")


def test_pauses_between_utterances_are_not_slow() -> None:
    """Paced audio with a 3 s pause: the ratio over the span drops, the pacing is right."""
    app = paced_app()
    t = feed(app, bytes(320) * 200, 320)
    feed(app, bytes(320) * 200, 320, start=t + 3.0)
    assert app.realtime_ratio is not None and app.realtime_ratio < 0.75
    assert codes(diagnose_application(app, caller(11))) == []


def test_real_time_audio_is_not_slow() -> None:
    app = paced_app()
    feed(app, bytes(320) * 500, 320, every=0.0201)  # 0.5% slow: within what clocks do
    assert codes(diagnose_application(app, caller(10))) == []
    assert app.as_dict()["realtime_ratio"] == pytest.approx(0.995, abs=0.001)


def test_a_burst_is_still_diagnosed() -> None:
    app = DirectionStats()
    feed(app, bytes(320) * 250, 320, every=0.0)  # 5 s at once
    found = diagnose_application(app, caller(5))
    assert codes(found) == ["burst"]
    assert "5000 ms of audio within 20 ms" in text(found, "burst")


def test_echoed_large_frames_are_not_a_burst() -> None:
    """dial --frame-ms 1000 against an echo: each 1 s frame comes back as it went."""
    asterisk, app = DirectionStats(), DirectionStats()
    second = bytes(16000)
    for i in range(5):
        asterisk.add(float(i), Message(Kind.AUDIO_8K, second))
        app.add(i + 0.004, Message(Kind.AUDIO_8K, second))
    assert app.bursts == 1  # counted, as any 1 s of audio within 20 ms
    assert codes(diagnose_application(app, asterisk, frame_ms=1000)) == []


def test_large_frames_to_a_20ms_caller_are_a_burst() -> None:
    app = DirectionStats()
    feed(app, bytes(16000) * 5, 16000)  # 1 s messages, one a second
    assert codes(diagnose_application(app, caller(5))) == ["burst", "frame-size"]


def test_two_echoed_frames_at_once_are_a_burst() -> None:
    """Mirroring the caller's frame size excuses one frame at a time, not two."""
    asterisk, app = DirectionStats(), DirectionStats()
    second = bytes(16000)
    for i in range(4):
        asterisk.add(float(i), Message(Kind.AUDIO_8K, second))
    for i in range(2):
        app.add(2 * i + 0.001, Message(Kind.AUDIO_8K, second))
        app.add(2 * i + 0.002, Message(Kind.AUDIO_8K, second))
    assert codes(diagnose_application(app, asterisk, frame_ms=1000)) == ["burst"]


# Rates and frame sizes.


def test_rate_mismatch_is_diagnosed() -> None:
    """8 kHz answers to a 16 kHz call: each message one 20 ms frame at its rate."""
    app = DirectionStats()
    feed(app, bytes(320) * 100, 320)
    found = diagnose_application(app, caller(2, rate=16000))
    assert codes(found) == ["rate-mismatch"]
    assert "application audio is at 8000 Hz, the caller's at 16000 Hz" in text(
        found, "rate-mismatch"
    )


def test_same_rate_is_no_mismatch() -> None:
    app = DirectionStats()
    feed(app, bytes(640) * 100, 640, rate=16000)
    assert codes(diagnose_application(app, caller(2, rate=16000))) == []


def test_frame_size_is_judged_at_the_applications_rate() -> None:
    """640-byte messages are 20 ms at 16 kHz; 320-byte ones at 16 kHz are 10 ms."""
    good = DirectionStats()
    feed(good, bytes(640) * 100, 640, rate=16000)
    assert codes(diagnose_application(good, caller(2, rate=16000))) == []
    short = DirectionStats()
    feed(short, bytes(320) * 200, 320, rate=16000)
    found = diagnose_application(short, caller(2, rate=16000))
    assert codes(found) == ["frame-size"]
    assert text(found, "frame-size") == (
        "application audio messages of other sizes than one 20 ms frame "
        "(640 bytes at 16000 Hz): 200x320"
    )


def test_one_short_last_message_is_no_frame_size_problem() -> None:
    app = DirectionStats()
    t = feed(app, bytes(320) * 100, 320)
    app.add(t, Message(Kind.AUDIO_8K, bytes(100)))
    assert codes(diagnose_application(app, caller(2))) == []


# Hang-up after a DTMF digit.


def dtmf_call(digit_at: float) -> tuple[DirectionStats, DirectionStats]:
    asterisk, app = caller(5), DirectionStats()
    feed(app, bytes(320) * 250, 320)
    asterisk.add(digit_at, Message.dtmf("5"))
    return app, asterisk


@pytest.mark.parametrize("ending", ["app-close", "app-hangup", "app-reset"])
def test_hangup_right_after_a_dtmf_digit_is_diagnosed(ending: str) -> None:
    app, asterisk = dtmf_call(3.0)
    found = diagnose_application(app, asterisk, ended=Ended(3.25, ending, "closed"))
    assert codes(found) == ["hangup-after-dtmf"]
    assert f"ended the call ({ending}) 250 ms after the caller's DTMF digit '5'" in text(
        found, "hangup-after-dtmf"
    )


@pytest.mark.parametrize(
    ("ended", "why"),
    [
        (Ended(4.5, "app-close", "closed"), "1.5 s later"),
        (Ended(3.25, "caller-close", "closed"), "the caller ended it"),
        (Ended(2.5, "app-close", "closed"), "before the digit"),
        (None, "the ending not given"),
    ],
)
def test_other_endings_are_no_hangup_after_dtmf(ended: Ended | None, why: str) -> None:
    app, asterisk = dtmf_call(3.0)
    assert codes(diagnose_application(app, asterisk, ended=ended)) == [], why


def test_no_digit_no_hangup_after_dtmf() -> None:
    asterisk, app = caller(5), DirectionStats()
    feed(app, bytes(320) * 250, 320)
    assert codes(diagnose_application(app, asterisk, ended=Ended(3.0, "app-close", ""))) == []


# Encodings, from real sox output.


def sox(*args: str) -> bytes:
    if shutil.which("sox") is None and not os.environ.get("CI"):
        pytest.skip("sox is not installed (apt-get install sox)")
    # -R: the same dither and noise on every run, so every run tests the same bytes.
    return subprocess.run(["sox", "-R", *args], check=True, capture_output=True).stdout


SPEECH = [str(HELLO)]
SILENCE = ["-n", "-r", "8000", "-c", "1"]  # with "trim 0 3"
ENCODINGS = {"ulaw": ["-t", "ul"], "s16be": ["-t", "s16", "-B"], "s16le": ["-t", "s16", "-L"]}


def sox_audio(source: str, encoding: str) -> bytes:
    """hello-8k.wav, 3 s of silence, or 3 s of low-level white noise, as `encoding`."""
    out = [*ENCODINGS[encoding], "-"]
    if source == "speech":
        return sox(*SPEECH, *out)
    effect = ["trim", "0", "3"] if source == "silence" else ["synth", "3", "whitenoise"]
    level = {"silence": [], "noise": ["vol", "0.002"], "faint": ["vol", "0.0003"]}[source]
    return sox(*SILENCE, *out, *effect, *level)


def labelled_slin(audio: bytes, size: int) -> DirectionStats:
    """The bytes sent as kind 0x10 messages of `size` bytes, one every 20 ms."""
    stats = DirectionStats()
    feed(stats, audio, size, every=0.02)
    return stats


@pytest.mark.parametrize("size", [160, 320])
@pytest.mark.parametrize("source", ["speech", "silence", "noise", "faint"])
def test_mu_law_is_diagnosed_for_the_side_that_sent_it(source: str, size: int) -> None:
    """What the channel driver sends without c(slin): speech and the quiet between."""
    ulaw = sox_audio(source, "ulaw")
    stats = labelled_slin(ulaw, size)
    assert stats.likely_encoding == "ulaw", dict(stats.encoding_votes)
    found = diagnose_asterisk(stats)
    assert codes(found) == ["ulaw"]
    assert "add c(slin)" in text(found, "ulaw") and "Dial string" in text(found, "ulaw")
    app = labelled_slin(ulaw, size)
    found = diagnose_application(app, labelled_slin(ulaw, size))
    assert "ulaw" in codes(found)
    advice = text(found, "ulaw")
    assert advice.startswith("application audio looks like mu-law")
    assert "must send 16-bit signed little-endian PCM" in advice
    assert "Dial" not in advice


@pytest.mark.parametrize("size", [160, 320])
@pytest.mark.parametrize("source", ["speech", "noise"])
def test_byte_swapped_pcm_is_diagnosed(source: str, size: int) -> None:
    stats = labelled_slin(sox_audio(source, "s16be"), size)
    assert stats.likely_encoding == "s16be", dict(stats.encoding_votes)
    assert codes(diagnose_asterisk(stats)) == ["byte-order"]
    found = diagnose_application(stats, caller(3))
    assert "byte-order" in codes(found)
    assert "must send 16-bit signed little-endian PCM" in text(found, "byte-order")


@pytest.mark.parametrize("size", [160, 320, 640])
@pytest.mark.parametrize("source", ["speech", "silence", "noise", "faint"])
def test_plain_pcm_is_not_diagnosed(source: str, size: int) -> None:
    stats = labelled_slin(sox_audio(source, "s16le"), size)
    assert stats.likely_encoding is None, dict(stats.encoding_votes)
    assert codes(diagnose_asterisk(stats)) == []


@pytest.mark.parametrize("level", ["0.05", "0.3", "1.0"])
def test_loud_pcm_noise_is_not_diagnosed(level: str) -> None:
    noise = sox(*SILENCE, "-t", "s16", "-L", "-", "synth", "3", "whitenoise", "vol", level)
    for size in (160, 320):
        assert labelled_slin(noise, size).likely_encoding is None


# The old diagnoses, unchanged.


def test_one_way_audio_and_refused() -> None:
    app = DirectionStats()
    app.refused["dtmf message"] += 2
    found = diagnose_application(app, caller(2))
    assert codes(found) == ["one-way-audio", "refused"]
    assert text(found, "refused") == ("application sent 2x dtmf message: Asterisk ends the session")


def test_audio_faster_than_real_time_is_pacing() -> None:
    app = paced_app()
    feed(app, bytes(320) * 200, 320, every=0.012)  # 1.7x, never 100 ms within 20 ms
    found = diagnose_application(app, caller(4))
    assert codes(found) == ["pacing"]
    assert "1.661x real time" in text(found, "pacing")


def test_smaller_frames_in_bursts_to_a_large_frame_caller_are_a_burst() -> None:
    """Not an echo: 200 ms frames four at a time, though less than one 1 s caller frame."""
    asterisk, app = DirectionStats(), DirectionStats()
    for i in range(4):
        asterisk.add(float(i), Message(Kind.AUDIO_8K, bytes(16000)))
        for j in range(4):
            app.add(i + 0.001 * j, Message(Kind.AUDIO_8K, bytes(3200)))
    assert app.max_window_audio == pytest.approx(0.8)
    assert codes(diagnose_application(app, asterisk, frame_ms=200)) == ["burst"]


def test_small_bursts_fast_on_average_are_pacing_named_bursts() -> None:
    """Four frames at once every 78 ms: never 100 ms within 20 ms, but 4% fast."""
    app = paced_app()
    t = 0.0
    for k in range(200):
        app.add(t, Message(Kind.AUDIO_8K, bytes(320)))
        if k % 4 == 3:
            t += 0.078
    found = diagnose_application(app, caller(4))
    assert codes(found) == ["pacing"]
    assert "1.041x real time over 4.0 s of audio" in text(found, "pacing")
    assert "bursts (150 of 200 messages came ahead of time)" in text(found, "pacing")
