"""Audio in and out: files read and resampled, sources of frames, WAV recording.

numpy, soundfile and soxr are imported inside functions: start-up must not
pay for them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

SFC_UPDATE_HEADER_NOW = 0x1060  # libsndfile: rewrite the WAV header in place
HEADER_UPDATE_INTERVAL = 1.0
TONE_AMPLITUDE = 0.5  # -6 dBFS


class AudioFileError(Exception):
    """A file that cannot be read as audio; the message names it."""


def read_audio(path: str | os.PathLike) -> tuple[Any, int]:
    """(float32 mono samples, rate) of any file libsndfile reads."""
    import numpy as np
    import soundfile as sf

    try:
        data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioFileError(f"{path}: no such file") from None
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioFileError(f"{path}: cannot read audio: {exc}") from None
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(mono), int(rate)


def resample(samples: Any, from_rate: int, to_rate: int) -> Any:
    """Float samples at another rate, through soxr (a real resampler)."""
    if from_rate == to_rate:
        return samples
    import soxr

    return soxr.resample(samples, from_rate, to_rate, quality="HQ")


def to_pcm16(samples: Any) -> bytes:
    """Float samples (-1..1) as 16-bit little-endian PCM bytes."""
    import numpy as np

    scaled = np.clip(np.round(samples * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def load_pcm(path: str | os.PathLike, rate: int) -> bytes:
    """A file as 16-bit mono PCM at `rate`."""
    samples, file_rate = read_audio(path)
    return to_pcm16(resample(samples, file_rate, rate))


class FrameSource(Protocol):
    """Where paced audio comes from; None means it has ended."""

    def next_frame(self, rate: int, samples: int) -> bytes | None: ...


class FileSource:
    """A file's audio, resampled to whatever rate the call asks for.

    The position is kept in seconds so that a call that changes rate
    carries on where it was.
    """

    def __init__(self, path: str | os.PathLike, loop: bool = False) -> None:
        self.samples, self.rate = read_audio(path)
        self.loop = loop
        self.position = 0.0
        self._pcm: dict[int, bytes] = {}

    @property
    def duration(self) -> float:
        return len(self.samples) / self.rate

    def pcm(self, rate: int) -> bytes:
        if rate not in self._pcm:
            self._pcm[rate] = to_pcm16(resample(self.samples, self.rate, rate))
        return self._pcm[rate]

    def next_frame(self, rate: int, samples: int) -> bytes | None:
        pcm = self.pcm(rate)
        if not pcm:
            return None
        start = round(self.position * rate) * 2
        if start >= len(pcm):
            if not self.loop:
                return None
            start = 0
        chunk = pcm[start : start + samples * 2]
        if self.loop and len(chunk) < samples * 2:
            chunk += pcm[: samples * 2 - len(chunk)]
            self.position = (samples * 2 - (len(pcm) - start)) / 2 / rate
        else:
            self.position = (start + len(chunk)) / 2 / rate
        return chunk


class ToneSource:
    """A sine wave at -6 dBFS, continuous across frames and rate changes."""

    def __init__(self, hz: float) -> None:
        self.hz = hz
        self.position = 0.0

    def next_frame(self, rate: int, samples: int) -> bytes | None:
        import numpy as np

        t = self.position + np.arange(samples) / rate
        self.position += samples / rate
        return to_pcm16(TONE_AMPLITUDE * np.sin(2 * np.pi * self.hz * t))


class SilenceSource:
    """Digital silence, as a quiet phone line sends."""

    def next_frame(self, rate: int, samples: int) -> bytes | None:
        return bytes(samples * 2)


def unique_path(directory: str | os.PathLike, stem: str, suffix: str) -> Path:
    """DIR/stem.suffix, or DIR/stem-2.suffix, -3, ... if that exists."""
    directory = Path(directory)
    path = directory / f"{stem}{suffix}"
    n = 2
    while path.exists():
        path = directory / f"{stem}-{n}{suffix}"
        n += 1
    return path


class WavWriter:
    """16-bit mono WAV written as audio arrives; memory does not grow.

    The header is rewritten about once a second, so even a killed process
    leaves a file that plays up to the last second; close() makes it exact.
    """

    def __init__(self, path: str | os.PathLike, rate: int) -> None:
        import soundfile as sf

        self.path = Path(path)
        self.rate = rate
        self.samples = 0
        self._odd = b""
        try:
            self._file = sf.SoundFile(
                os.fspath(path), "w", samplerate=rate, channels=1, subtype="PCM_16", format="WAV"
            )
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise AudioFileError(f"{path}: cannot write: {exc}") from None
        self._header_written = time.monotonic()

    def write(self, pcm: bytes) -> None:
        """Append 16-bit little-endian samples (an odd trailing byte is dropped)."""
        usable = len(pcm) - len(pcm) % 2
        if not usable:
            return
        self._file.buffer_write(pcm[:usable] if usable != len(pcm) else pcm, dtype="int16")
        self.samples += usable // 2
        now = time.monotonic()
        if now - self._header_written >= HEADER_UPDATE_INTERVAL:
            self.update_header()
            self._header_written = now

    def update_header(self) -> None:
        import soundfile as sf

        sf._snd.sf_command(self._file._file, SFC_UPDATE_HEADER_NOW, sf._ffi.NULL, 0)

    @property
    def duration(self) -> float:
        return self.samples / self.rate

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class RateSplitRecording:
    """One stream's audio as WAVs, a file per rate, so every sample keeps its own rate.

    The first rate heard goes to `first_path()`, each other rate to
    `other_path(first, rate)`; a file opens at its first audio.
    """

    def __init__(
        self, first_path: Callable[[], Path], other_path: Callable[[Path, int], Path]
    ) -> None:
        self._first_path = first_path
        self._other_path = other_path
        self.writers: dict[int, WavWriter] = {}

    @property
    def paths(self) -> list[Path]:
        return [writer.path for writer in self.writers.values()]

    def write(self, rate: int, pcm: bytes) -> Path | None:
        """Append audio; the path of the file this write opened, if it opened one."""
        writer = self.writers.get(rate)
        opened = None
        if writer is None:
            if self.writers:
                opened = self._other_path(next(iter(self.writers.values())).path, rate)
            else:
                opened = self._first_path()
            writer = self.writers[rate] = WavWriter(opened, rate)
        writer.write(pcm)
        return opened

    def close(self) -> None:
        for writer in self.writers.values():
            try:
                writer.close()
            except Exception:  # a full disk must not stop the other files closing
                pass
