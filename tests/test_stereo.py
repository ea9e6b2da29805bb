"""media.stereo: both sides of a call in one stereo WAV, each where it plays.

Real WAV files read back through libsndfile. The helpers at the top find each
message of a trace in a stereo file, sample for sample, and say how far it
lies from where the trace's times put it: test_dial and test_capture use them
on real calls.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiosocket_cli.media.stereo import HOLD_MESSAGES, CallStereo, StereoRecording

# Finding a trace's messages in a stereo file.


def trace_audio(path: Path) -> dict[str, list[tuple[float, bytes]]]:
    """Each direction's audio messages in a trace file: (t, payload), in order."""
    found: dict[str, list[tuple[float, bytes]]] = {">": [], "<": []}
    for line in path.read_text().splitlines()[1:]:
        record = json.loads(line)
        if record.get("kind") == "audio" and record.get("dir") in found:
            found[record["dir"]].append((record["t"], base64.b64decode(record["data"])))
    return found


def playout(messages: list[tuple[float, bytes]], rate: int) -> list[tuple[float, bytes]]:
    """The messages at their playout times: each from max(its arrival, the previous end)."""
    end = float("-inf")
    placed = []
    for t, pcm in messages:
        start = max(t, end)
        end = start + len(pcm) // 2 / rate
        placed.append((start, pcm))
    return placed


def offsets(
    channel: np.ndarray, rate: int, messages: list[tuple[float, bytes]], window: float
) -> list[float]:
    """For each message, where its samples are in `channel` less where it was said to be
    (seconds): the nearest exact copy within `window` of that place. A message not found
    there fails the test."""
    found = []
    for at, pcm in messages:
        samples = np.frombuffer(pcm, dtype="<i2")
        expected, reach = round(at * rate), round(window * rate)
        low = max(0, expected - reach)
        stretch = channel[low : expected + reach + samples.size]
        assert stretch.size >= samples.size, f"the message at {at:.3f}s is past the file's end"
        views = np.lib.stride_tricks.sliding_window_view(stretch, samples.size)
        hits = np.flatnonzero((views == samples).all(axis=1)) + low - expected
        assert hits.size, f"the message at {at:.3f}s is not within {window * 1000:.0f} ms"
        found.append(float(hits[np.argmin(np.abs(hits))]) / rate)
    return found


def noise(seed: int, seconds: float, rate: int) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, round(seconds * rate), dtype="<i2").tobytes()


def chunks(pcm: bytes, rate: int, ms: float = 20) -> list[bytes]:
    size = round(rate * ms / 1000) * 2
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


# StereoRecording: the file.


def test_samples_land_at_their_time_with_silence_between(tmp_path: Path) -> None:
    path = tmp_path / "s.wav"
    stereo = StereoRecording(path, 8000)
    left, right = noise(1, 0.1, 8000), noise(2, 0.05, 8000)
    stereo.add("caller", 0.5, left, 8000)
    stereo.add(">", 0.0, left, 8000)
    stereo.add("agent", 0.25, right, 8000)
    stereo.close()
    audio, rate = sf.read(path, dtype="int16")
    assert rate == 8000 and audio.shape == (round(0.6 * 8000), 2)
    assert audio[4000:4800, 0].tobytes() == left and audio[:800, 0].tobytes() == left
    assert not audio[800:4000, 0].any()
    assert audio[2000:2400, 1].tobytes() == right
    assert not audio[:2000, 1].any() and not audio[2400:, 1].any()
    assert stereo.paths == [path] and not stereo.partial


def test_another_rate_is_resampled_in_place(tmp_path: Path) -> None:
    path = tmp_path / "s.wav"
    stereo = StereoRecording(path, 16000)
    tone = (np.sin(2 * np.pi * 440 * np.arange(800) / 8000) * 8000).astype("<i2")
    stereo.add(1, 0.2, tone.tobytes(), 8000)
    stereo.close()
    audio, _ = sf.read(path, dtype="int16")
    loud = np.flatnonzero(np.abs(audio[:, 1]) > 2000)
    # 0.1 s of 8 kHz audio at 0.2 s: 1600 samples at 16 kHz from sample 3200.
    assert abs(loud[0] - 3200) <= 16 and abs(loud[-1] - 4800) <= 16


def test_a_flush_writes_what_lies_before_it_and_late_audio_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "s.wav"
    stereo = StereoRecording(path, 8000)
    stereo.add(0, 0.0, noise(3, 1.0, 8000), 8000)
    stereo.flush(0.5)
    assert stereo.written == 4000
    stereo.add(1, 0.25, noise(4, 0.5, 8000), 8000)  # half of it lies in the written part
    assert stereo.late_samples == 2000
    stereo.close()
    audio, _ = sf.read(path, dtype="int16")
    assert not audio[:4000, 1].any() and audio[4000:6000, 1].tobytes() == noise(4, 0.5, 8000)[4000:]


# CallStereo: one call, both sides, on their clocks.


def test_heard_audio_plays_from_its_arrival_end_to_end(tmp_path: Path) -> None:
    """A burst is laid end to end from its arrival; paced audio lands on its arrival
    times; a gap in what came stays silence."""
    path = tmp_path / "call.wav"
    stereo = CallStereo(lambda: path, rate=8000)
    burst = chunks(noise(5, 0.2, 8000), 8000)  # 10 frames at once at 0.1 s
    paced = chunks(noise(6, 0.2, 8000), 8000)  # 10 frames from 1.0 s, 20 ms apart
    messages = [(0.1, f) for f in burst] + [(1.0 + 0.02 * k, f) for k, f in enumerate(paced)]
    for t, pcm in messages:
        assert stereo.heard("<", t, pcm, 8000) is None
    ours = chunks(noise(7, 0.4, 8000), 8000)
    for k, pcm in enumerate(ours):
        stereo.sent(">", 0.3 + 0.02 * k, pcm, 8000)
    assert stereo.end() is None
    audio, rate = sf.read(path, dtype="int16")
    assert offsets(audio[:, 1], rate, playout(messages, rate), 0.001) == [0.0] * 20
    assert (
        offsets(audio[:, 0], rate, [(0.3 + 0.02 * k, f) for k, f in enumerate(ours)], 0)
        == [0.0] * 20
    )
    assert not audio[round(0.3 * 8000) : 8000, 1].any()  # between the burst and the paced
    assert stereo.paths == [path] and not stereo.partial


def test_held_audio_goes_to_the_file_named_at_release(tmp_path: Path) -> None:
    name = ["conn-1"]
    stereo = CallStereo(lambda: tmp_path / f"{name[0]}.stereo.wav", hold=True)
    app = noise(8, 0.1, 16000)
    stereo.heard("<", 0.0, app, 16000)  # before the call's name: held
    stereo.heard(">", 0.01, noise(9, 0.02, 8000), 8000)
    assert list(tmp_path.iterdir()) == []
    name[0] = "40325ec2-5a6f-4f4e-9b7a-1c2d3e4f5a6b"
    stereo.release()
    stereo.close()
    (path,) = tmp_path.iterdir()
    assert path.name == f"{name[0]}.stereo.wav" and stereo.paths == [path]
    audio, rate = sf.read(path, dtype="int16")
    assert rate == 8000  # the caller's rate, though the application spoke first


def test_hold_is_bounded(tmp_path: Path) -> None:
    stereo = CallStereo(lambda: tmp_path / "conn-1.stereo.wav", hold=True)
    frame = noise(10, 0.02, 8000)
    for k in range(HOLD_MESSAGES):
        stereo.heard("<", 0.02 * k, frame, 8000)
    assert stereo.paths == [tmp_path / "conn-1.stereo.wav"]  # named as it was, then
    stereo.close()
    assert sf.info(tmp_path / "conn-1.stereo.wav").frames == HOLD_MESSAGES * 160


def test_a_call_without_audio_leaves_an_empty_file_only_when_asked(tmp_path: Path) -> None:
    empty = CallStereo(lambda: tmp_path / "dial.wav", rate=16000, empty=True)
    empty.close()
    info = sf.info(tmp_path / "dial.wav")
    assert (info.samplerate, info.channels, info.frames) == (16000, 2, 0)
    none = CallStereo(lambda: tmp_path / "capture.wav", hold=True)
    none.release()
    none.close()
    assert not (tmp_path / "capture.wav").exists() and none.paths == []


def test_a_file_that_cannot_be_opened_warns_once_and_is_partial(tmp_path: Path) -> None:
    stereo = CallStereo(lambda: tmp_path / "missing" / "call.wav", rate=8000)
    note = stereo.heard("<", 0.0, noise(11, 0.02, 8000), 8000)
    assert note is not None and note.startswith("recording stopped: ")
    assert str(tmp_path / "missing" / "call.wav") in note
    assert stereo.heard("<", 0.02, noise(11, 0.02, 8000), 8000) is None  # once
    assert stereo.end() is None
    assert stereo.partial and stereo.paths == []


def test_audio_after_close_is_ignored(tmp_path: Path) -> None:
    stereo = CallStereo(lambda: tmp_path / "c.wav", rate=8000)
    stereo.heard("<", 0.0, noise(12, 0.02, 8000), 8000)
    stereo.close()
    stereo.heard("<", 0.02, noise(12, 0.02, 8000), 8000)  # a receiver thread, late
    stereo.close()
    assert sf.info(tmp_path / "c.wav").frames == 160


def test_a_channel_is_named_or_numbered() -> None:
    stereo = CallStereo(lambda: Path("/nonexistent/x.wav"), rate=8000)
    with pytest.raises(ValueError, match="no such channel"):
        stereo.heard("both", 0.0, b"\0\0", 8000)
