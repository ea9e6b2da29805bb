"""Audio in and out: files read and resampled, sources of frames, WAV recording.

numpy, soundfile and soxr are imported inside functions: start-up must not
pay for them.
"""

from __future__ import annotations

import os
import time
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
        if os.path.getsize(path) == 0:
            raise AudioFileError(f"{path}: empty file")
        data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioFileError(f"{path}: no such file") from None
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioFileError(f"{path}: cannot read audio: {exc}") from None
    if not len(data):
        raise AudioFileError(f"{path}: no audio in it (a header and no samples)")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(mono), int(rate)


def cut_short(path: str | os.PathLike[str], frames: int, rate: int) -> str | None:
    """For a WAV whose data chunk promises more than the file holds (a copy cut
    short, a recording still being written): a line saying so, else None."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, width = 12, 0
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if chunk == b"fmt ":
            channels, bits = struct.unpack_from("<H", head, pos + 10)[0], head[pos + 22]
            width = max(1, channels * bits // 8)
        elif chunk == b"data":
            promised = size // width if width else 0
            if size != 0xFFFFFFFF and promised > frames:
                return (
                    f"{path}: the file is cut short: its header promises "
                    f"{promised / rate:.2f} s of audio and it holds {frames / rate:.2f} s; "
                    "sending what is there"
                )
            return None
        pos += 8 + size + (size & 1)
    return None


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
        self.note = cut_short(path, len(self.samples), self.rate)  # a warning, or None
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


# The formats a recording may take, by extension, and the sample encoding of each.
FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".oga": ("OGG", "VORBIS"),
    ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".aiff": ("AIFF", "PCM_16"),
    ".aif": ("AIFF", "PCM_16"),
    ".au": ("AU", "PCM_16"),
    ".caf": ("CAF", "PCM_16"),
    ".w64": ("W64", "PCM_16"),
    ".rf64": ("RF64", "PCM_16"),
    ".raw": ("RAW", "PCM_16"),
}


def audio_format(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(libsndfile format, subtype) that a file's extension names; WAV without one."""
    suffix = Path(path).suffix.lower()
    if not suffix:
        return FORMATS[".wav"]
    return FORMATS.get(suffix)


def _sf_reason(sf: Any, handle: Any, exc: Exception) -> str:
    """libsndfile's own words, with the OS reason ("No space left on device") in them."""
    try:
        text = sf._ffi.string(sf._snd.sf_strerror(handle)).decode("utf-8", "replace")
    except Exception:
        text = ""
    return text.replace("System error : ", "").rstrip(".") or str(exc)


class AudioWriter:
    """16-bit mono audio written as it arrives, in the format the extension names.

    Memory does not grow. A WAV's header is rewritten about once a second, so
    even a killed process leaves a file that plays up to the last second;
    close() makes it exact.
    """

    def __init__(self, path: str | os.PathLike[str], rate: int) -> None:
        import soundfile as sf

        self.path = Path(path)
        self.rate = rate
        self.samples = 0
        kind = audio_format(path) or FORMATS[".wav"]
        self._wav = kind[0] in ("WAV", "RF64", "W64")
        try:
            self._file = sf.SoundFile(
                os.fspath(path), "w", samplerate=rate, channels=1, subtype=kind[1], format=kind[0]
            )
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            reason = _sf_reason(sf, sf._ffi.NULL, exc) if isinstance(exc, RuntimeError) else exc
            raise AudioFileError(f"{path}: cannot write: {reason}") from None
        self._header_written = time.monotonic()

    def write(self, pcm: bytes) -> None:
        """Append 16-bit little-endian samples (an odd trailing byte is dropped)."""
        usable = len(pcm) - len(pcm) % 2
        if not usable:
            return
        try:
            self._file.buffer_write(pcm[:usable] if usable != len(pcm) else pcm, dtype="int16")
        except RuntimeError as exc:
            import soundfile as sf

            raise AudioFileError(
                f"{self.path}: cannot write: {_sf_reason(sf, self._file._file, exc)}"
            ) from None
        self.samples += usable // 2
        if self._wav:
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
