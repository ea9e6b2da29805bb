"""The recorder: audio held in memory and written in blocks, headers kept honest.

Arrival times are given (`now`), so these tests hold on a busy machine: what
is checked is what is on disk after each write, after a SIGKILL, after a full
disk, never how long anything took.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from audiosocket_cli.media.audio import (
    BLOCK_SECONDS,
    FLUSH_INTERVAL,
    HEADER_UPDATE_INTERVAL,
    AudioWriter,
)
from audiosocket_cli.media.recorder import Recording, call_recording, file_recording

FRAME = 320  # 20 ms at 8 kHz
HEADER = 44  # libsndfile's WAV header for 16-bit mono PCM


def pcm(seconds: float, seed: int = 1, rate: int = 8000) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(-12000, 12000, round(seconds * rate), dtype="<i2").tobytes()


def frames(audio: bytes, size: int = FRAME) -> list[bytes]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


def header_counts(path: Path) -> int:
    """The bytes of audio the WAV's data chunk says it holds (the header on disk)."""
    head = path.read_bytes()[:HEADER]
    assert head[:4] == b"RIFF" and head[36:40] == b"data"
    return int(struct.unpack_from("<I", head, 40)[0])


def test_audio_goes_to_the_file_in_blocks_not_message_by_message(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    writer = AudioWriter(path, 8000)
    writer._ready()  # its file made (by the thread that makes them)
    block = round(8000 * BLOCK_SECONDS) * 2
    audio = pcm(1.0)
    t = 0.0
    sizes = []
    for frame in frames(audio):
        writer.write(frame, t)  # all at once: only the block size decides
        sizes.append(path.stat().st_size - HEADER)
    # Nothing until a whole block is held (13 messages of 20 ms), then that much at a
    # time: 3 writes for 50 messages, and the rest at close.
    per = -(-block // FRAME)
    assert per == 13 and sizes[: per - 1] == [0] * (per - 1)
    assert sorted(set(sizes)) == [n * per * FRAME for n in range(len(audio) // FRAME // per + 1)]
    assert writer.held == 11 * FRAME // 2 and writer.written + writer.held == writer.samples == 8000
    writer.close()
    assert sf.read(path, dtype="int16")[0].astype("<i2").tobytes() == audio


def test_audio_that_comes_slowly_is_written_within_a_quarter_second(tmp_path: Path) -> None:
    path = tmp_path / "slow.wav"
    writer = AudioWriter(path, 8000)
    writer._ready()  # its file made (by the thread that makes them)
    t0 = writer._due - FLUSH_INTERVAL  # when it opened (no header update is due before)
    writer.write(bytes(FRAME), t0)
    writer.write(bytes(FRAME), t0 + FLUSH_INTERVAL - 0.01)
    assert path.stat().st_size == HEADER and writer.held == FRAME  # samples: two frames
    writer.write(bytes(FRAME), t0 + FLUSH_INTERVAL)  # a quarter second since the last block
    assert path.stat().st_size == HEADER + 3 * FRAME and writer.held == 0
    t1 = t0 + FLUSH_INTERVAL
    writer.write(bytes(FRAME), t1 + 0.1)
    writer.write(bytes(FRAME), t1 + FLUSH_INTERVAL - 0.01)
    assert writer.held == FRAME
    writer.write(bytes(FRAME), t1 + FLUSH_INTERVAL)
    assert path.stat().st_size == HEADER + 6 * FRAME and writer.held == 0
    writer.close()


def test_the_header_follows_about_once_a_second_and_close_makes_it_exact(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.wav"
    writer = AudioWriter(path, 8000)
    writer._ready()  # its file made (by the thread that makes them)
    start = writer._header_due - HEADER_UPDATE_INTERVAL  # its first second counts from opening
    counted = []
    audio = pcm(3.1, 2)
    for k, frame in enumerate(frames(audio)):
        now = start + k * 0.02
        writer.write(frame, now)
        counted.append((now - start, header_counts(path), (k + 1) * FRAME))
    for elapsed, in_header, arrived in counted:
        # Never more than a second (and the frame in flight) behind what arrived...
        assert arrived - in_header <= (HEADER_UPDATE_INTERVAL + 0.02) * 16000
        # ...and brought up to date with all of it once a second, not more often.
        if in_header:
            assert elapsed >= HEADER_UPDATE_INTERVAL - 1e-9
    assert len({in_header for _, in_header, _ in counted}) == 4  # 0, then at 1, 2 and 3 s
    writer.close()
    assert header_counts(path) == len(audio)


def test_a_quiet_call_is_brought_up_to_date_by_tick(tmp_path: Path) -> None:
    path = tmp_path / "q.wav"
    writer = AudioWriter(path, 8000)
    writer._ready()  # its file made (by the thread that makes them)
    now = writer._due - FLUSH_INTERVAL  # when it opened
    audio = pcm(0.5, 3)
    for frame in frames(audio):
        writer.write(frame, now)
    assert header_counts(path) == 0
    writer.tick(now + 0.1)  # nothing due yet
    assert writer.held and header_counts(path) == 0
    writer.tick(now + HEADER_UPDATE_INTERVAL + 0.1)  # the audio stopped: tick writes it all
    assert writer.held == 0 and header_counts(path) == len(audio)
    written = path.stat().st_size
    writer.tick(now + 5 * HEADER_UPDATE_INTERVAL)  # nothing new: nothing written
    assert path.stat().st_size == written
    writer.close()


def test_memory_stays_one_block_per_file_over_a_long_call(tmp_path: Path) -> None:
    writer = AudioWriter(tmp_path / "long.wav", 16000)
    block = round(16000 * BLOCK_SECONDS)
    frame = bytes(640)
    most = 0
    for k in range(60 * 50):  # a minute of 16 kHz audio
        writer.write(frame, k * 0.02)
        most = max(most, writer.held)
    assert most < block and writer.written + writer.held == 60 * 16000
    writer.close()
    assert sf.info(str(tmp_path / "long.wav")).frames == 60 * 16000


def test_every_rate_and_direction_keeps_its_own_blocks(tmp_path: Path) -> None:
    stem = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
    into, out = (
        call_recording(tmp_path, lambda: stem, "in"),
        call_recording(tmp_path, lambda: stem, "out"),
    )
    low, high, back = pcm(0.3, 4), pcm(0.3, 5, 16000), pcm(0.7, 6)
    for frame in frames(low):
        assert into.write(8000, frame, 0.0) is None
    notes = [into.write(16000, frame, 0.0) for frame in frames(high, 640)]
    note = notes[0]
    assert notes[1:] == [None] * (len(notes) - 1)  # said once
    for frame in frames(back):
        out.write(8000, frame, 0.0)
    assert note == f"audio at 16000 Hz is recorded in {tmp_path / (stem + '.in.16000.wav')}"
    assert into.end() is None and out.end() is None
    assert not into.partial and not out.partial

    def read(name: str) -> bytes:
        return sf.read(tmp_path / name, dtype="int16")[0].astype("<i2").tobytes()

    assert read(f"{stem}.in.wav") == low
    assert read(f"{stem}.in.16000.wav") == high
    assert read(f"{stem}.out.wav") == back


def test_other_formats_go_through_libsndfile_in_blocks_alike(tmp_path: Path) -> None:
    audio = pcm(1.3, 8)
    for name in ("a.flac", "a.w64", "a.au"):
        writer = AudioWriter(tmp_path / name, 8000)
        start = writer._due - FLUSH_INTERVAL
        for k, frame in enumerate(frames(audio)):
            writer.write(frame, start + k * 0.02)
        assert writer.held < 2 * FRAME * 13 and writer.samples == len(audio) // 2
        writer.close()
        data, rate = sf.read(tmp_path / name, dtype="int16")
        assert rate == 8000 and data.astype("<i2").tobytes() == audio, name


def test_a_wav_stops_at_4_gb_as_on_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    from audiosocket_cli.media import audio as module

    monkeypatch.setattr(module, "WAV_MAX_DATA", 1000)  # 4 GB, scaled down
    recording = file_recording(tmp_path / "long.wav", 8000)
    notes = [recording.write(8000, frame, 0.0) for frame in frames(pcm(0.5, 9))]
    warned = [note for note in notes if note]
    assert len(warned) == 1 and "holds at most 4 GB" in warned[0] and recording.partial
    assert sf.info(str(tmp_path / "long.wav")).frames == 500  # all that fits, and valid


def test_a_call_with_no_audio_still_leaves_its_empty_file(tmp_path: Path) -> None:
    recording = file_recording(tmp_path / "answer.wav", 8000)
    recording.close()
    assert sf.info(str(tmp_path / "answer.wav")).frames == 0
    recording.close()  # a second close does nothing


KILLED = """
import os, signal, sys, time
import numpy as np
from pathlib import Path
from audiosocket_cli.media.recorder import call_recording

folder, seconds = Path(sys.argv[1]), float(sys.argv[2])
recording = call_recording(folder, lambda: "killed")
rng = np.random.default_rng(7)
audio = rng.integers(-12000, 12000, round(seconds * 8000), dtype="<i2").tobytes()
(folder / "sent.raw").write_bytes(audio)
start = time.monotonic()
for k in range(0, len(audio), 320):
    # Paced as a call is, on given times: 20 ms apart from the writer's opening.
    assert recording.write(8000, audio[k : k + 320], start + k / 16000) is None
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_process_loses_at_most_the_last_second(tmp_path: Path, cli_env: dict) -> None:
    for seconds in (0.5, 2.5, 3.01):
        folder = tmp_path / str(seconds)
        folder.mkdir()
        done = subprocess.run(
            [sys.executable, "-c", KILLED, str(folder), str(seconds)],
            env=cli_env,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == -signal.SIGKILL, done.stderr
        sent = (folder / "sent.raw").read_bytes()
        data, rate = sf.read(folder / "killed.wav", dtype="int16")  # a valid WAV
        kept = data.astype("<i2").tobytes()
        assert rate == 8000 and sent.startswith(kept)  # every sample it has is right
        lost = (len(sent) - len(kept)) / 16000
        assert lost <= HEADER_UPDATE_INTERVAL + 0.02, (seconds, lost)


FULL = """
import resource, signal, sys
from pathlib import Path
from audiosocket_cli.media.recorder import file_recording

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
recording = file_recording(Path(sys.argv[1]), 8000)
notes = [recording.write(8000, bytes(320), 0.0) for _ in range(int(sys.argv[3]))]
print([n for n in notes if n])
print(recording.end(), recording.partial)
"""


def full_disk(path: Path, limit: int, messages: int, cli_env: dict) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", FULL, str(path), str(limit), str(messages)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_a_full_disk_mid_call_warns_once_and_keeps_the_file_valid(
    tmp_path: Path, cli_env: dict
) -> None:
    path = tmp_path / "full.wav"
    during, at_end = full_disk(path, 10_000, 100, cli_env)  # 2 s into 0.6 s of room
    assert during.count("File too large") == 1 and "recording stopped" in during
    assert at_end == "None True"  # partial; nothing more to say at the end
    assert 0.4 < sf.info(str(path)).duration <= (10_000 - HEADER) / 16000


def test_a_full_disk_at_the_end_of_the_call_makes_it_partial_with_a_warning(
    tmp_path: Path, cli_env: dict
) -> None:
    path = tmp_path / "end.wav"
    block = round(8000 * BLOCK_SECONDS) * 2
    # Room for the header and one block: the second block, held to the end, does not fit.
    during, at_end = full_disk(path, HEADER + block + 1000, 2 * block // FRAME - 1, cli_env)
    assert during == "[]"
    assert "File too large" in at_end and at_end.endswith("True")
    info = sf.info(str(path))  # closed whole all the same
    assert block // 2 <= info.frames <= (block + 1000) // 2


def test_writes_after_a_failure_are_dropped_quietly(tmp_path: Path) -> None:
    recording = Recording(lambda rate, first: tmp_path / "gone" / "x.wav")  # no such folder
    # The file is made off the caller's loop: that it cannot be is said by the first
    # write that needs it (the first block's, or this flush), once.
    assert recording.write(8000, bytes(FRAME), 0.0) is None
    note = recording.flush()
    assert note is not None and "recording stopped" in note and "gone" in note
    assert recording.partial
    assert recording.write(8000, bytes(FRAME), 0.0) is None
    assert recording.tick(10.0) is None and recording.flush() is None and recording.end() is None
