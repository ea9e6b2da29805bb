"""Audio in and out: files read and resampled, sources of frames, WAV recording.

numpy, soundfile and soxr are imported inside functions: start-up must not
pay for them.
"""

from __future__ import annotations

import errno
import math
import os
import struct
from pathlib import Path
from time import monotonic
from typing import Any, Protocol

SFC_UPDATE_HEADER_NOW = 0x1060  # libsndfile: rewrite the WAV header in place
# A recording's audio is held in memory and written in blocks (AudioWriter): a block
# at most this much audio, held at most this long, and the header that counts it
# brought up to date at most this often.
BLOCK_SECONDS = 0.25
FLUSH_INTERVAL = 0.25
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


# The 44-byte header of a 16-bit mono PCM WAV file, as libsndfile writes it too: RIFF size,
# format chunk (PCM, channels, rate, bytes a second, block align, bits), data size.
WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
WAV_MAX_DATA = 0xFFFFFFFF - (WAV_HEADER.size - 8)  # what 32-bit sizes can count: 4 GB


def wav_header(rate: int, data_bytes: int, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV's 44-byte header."""
    frame = 2 * channels
    return WAV_HEADER.pack(
        b"RIFF", WAV_HEADER.size - 8 + data_bytes, b"WAVE", b"fmt ", 16, 1, channels, rate,
        rate * frame, frame, 16, b"data", data_bytes,
    )  # fmt: skip


def open_wav(path: str | os.PathLike[str], rate: int, channels: int = 1) -> int:
    """A new WAV file's descriptor, its header written (to be rewritten in place),
    positioned after it; AudioFileError naming the file and the reason."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise AudioFileError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        header = wav_header(rate, 0, channels)
        if os.pwrite(fd, header, 0) != len(header):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.lseek(fd, len(header), os.SEEK_SET)
    except OSError as exc:
        os.close(fd)
        reason = (
            "a WAV file must be one that can be rewritten in place, not a pipe"
            if exc.errno == errno.ESPIPE
            else exc.strerror or str(exc)
        )
        raise AudioFileError(f"{path}: cannot write: {reason}") from None
    return fd


_FILE_MAKER: tuple[int, Any] | None = None


def _file_maker() -> Any:
    """The thread that makes WAV files (a ThreadPoolExecutor of one), this process's:
    a forked worker makes its own."""
    global _FILE_MAKER
    pid = os.getpid()
    if _FILE_MAKER is None or _FILE_MAKER[0] != pid:
        from concurrent.futures import ThreadPoolExecutor

        _FILE_MAKER = (pid, ThreadPoolExecutor(1, thread_name_prefix="audiosocket-files"))
    return _FILE_MAKER[1]


class AudioWriter:
    """16-bit mono audio written as it arrives, in the format the extension names.

    Audio is held in memory and written in blocks, one system call each: when
    the buffer holds BLOCK_SECONDS (0.25 s) of audio, at the first write
    FLUSH_INTERVAL (0.25 s) after the previous block (audio that comes slowly),
    when tick() finds it due, and at flush() and close(). Memory does not grow:
    one block per file at most.

    A WAV (16-bit PCM, the default) is written here, with plain system calls:
    its 44-byte header first (the file made by a thread of its own, off the
    caller's loop), then each block with one write(), and the header again, in
    place, with one pwrite(). Other formats (FLAC, OGG, MP3, W64...) go
    through libsndfile, block by block alike.

    A WAV's header (W64, RF64 alike) is rewritten by the first write at least
    HEADER_UPDATE_INTERVAL (1 s) after its previous update, with the audio held
    written first, and made exact by close(). A killed process (SIGKILL) leaves a
    file that plays every sample up to the header's last update. While audio comes,
    that update is never more than 1 s old: a kill loses at most the audio of the
    last second (and of the message in flight). If the audio had stopped before the
    kill, the loss is the last second before it stopped, unless tick() ran in the
    meantime (it writes what is due without a write to bring it). The samples past
    the header are in the file, but readers go by the header. Other formats (FLAC,
    OGG...) are only complete once closed. A WAV holds at most 4 GB of audio (74
    hours at 8 kHz): past that, writing fails as on a full disk.

    `now` (time.monotonic(), which write() reads itself when not given) is when the
    audio arrived; write(), flush() and close() raise AudioFileError when the file
    cannot be written, and the audio held is then dropped: the file stays valid up
    to the last block written.
    """

    def __init__(
        self, path: str | os.PathLike[str], rate: int, block_seconds: float = BLOCK_SECONDS
    ) -> None:
        self.path = Path(path)
        self.rate = rate
        self.written = 0  # the samples in the file
        kind = audio_format(path) or FORMATS[".wav"]
        self._fd = -1  # a WAV written here, once opened
        self._opening: Any = None  # ... being opened: a Future of its descriptor
        self._here = kind == FORMATS[".wav"]
        self._file: Any = None  # any other format, through libsndfile
        if self._here:
            self._open_wav()
        else:
            self._open_sndfile(kind)
        self._wav = kind[0] in ("WAV", "RF64", "W64")
        self._held = bytearray()
        self._block = max(2, round(rate * block_seconds) * 2)  # bytes
        self._header_counts = 0  # the samples the header on disk counts
        now = monotonic()
        self._header_due = now + HEADER_UPDATE_INTERVAL if self._wav else math.inf
        self._due = min(now + FLUSH_INTERVAL, self._header_due)  # when a write flushes
        self._closed = False

    def _open_wav(self) -> None:
        # Made by a thread of its own: a server starting hundreds of recorded calls at
        # once would otherwise spend tens of milliseconds creating files in the loop
        # that forwards every call's audio. The first block is written 0.25 s later;
        # an error (AudioFileError) comes then, from the write that needs the file.
        self._opening = _file_maker().submit(open_wav, self.path, self.rate)

    def _ready(self) -> int:
        """The WAV's descriptor, once its file is made (AudioFileError if it cannot be)."""
        opening = self._opening
        if opening is not None:
            self._opening = None
            self._fd = opening.result()
        return self._fd

    def _open_sndfile(self, kind: tuple[str, str]) -> None:
        import soundfile as sf

        try:
            self._file = sf.SoundFile(
                os.fspath(self.path),
                "w",
                samplerate=self.rate,
                channels=1,
                subtype=kind[1],
                format=kind[0],
            )
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            reason = _sf_reason(sf, sf._ffi.NULL, exc) if isinstance(exc, RuntimeError) else exc
            raise AudioFileError(f"{self.path}: cannot write: {reason}") from None

    def write(self, pcm: bytes, now: float | None = None) -> None:
        """Append 16-bit little-endian samples (an odd trailing byte is dropped)."""
        if len(pcm) & 1:
            pcm = pcm[:-1]
        held = self._held
        held += pcm
        if len(held) >= self._block or (monotonic() if now is None else now) >= self._due:
            self.flush(now)

    def tick(self, now: float | None = None) -> None:
        """What is due without a write to bring it (a call gone quiet): the audio held
        past FLUSH_INTERVAL, a header behind the file past HEADER_UPDATE_INTERVAL."""
        if now is None:
            now = monotonic()
        if (self._held and now >= self._due) or (
            now >= self._header_due and self._header_counts != self.written
        ):
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Write the audio held now, in one block; the header too if it is due."""
        held = self._held
        if held:
            self._held = bytearray()
            if self._here:
                self._write_wav(held)
            else:
                self._write_sndfile(held)
        if now is None:
            now = monotonic()
        if self._header_counts != self.written and now >= self._header_due:
            self.update_header()
            self._header_due = now + HEADER_UPDATE_INTERVAL
        self._due = min(now + FLUSH_INTERVAL, self._header_due)

    def _write_wav(self, data: bytearray) -> None:
        fd = self._ready()
        fits = min(len(data), WAV_MAX_DATA - 2 * self.written)
        done = 0
        reason = "a WAV file holds at most 4 GB of audio"
        try:
            done = os.write(fd, data if fits == len(data) else data[:fits])
            while 0 < done < fits:  # a short write: the rest, or why it cannot go
                more = os.write(fd, data[done:fits])
                if not more:
                    reason = "the file takes no more"
                    break
                done += more
        except OSError as exc:
            reason = exc.strerror or str(exc)
        self.written += done >> 1  # whole samples: the header never counts half of one
        if done < len(data):
            raise AudioFileError(f"{self.path}: cannot write: {reason}")

    def _write_sndfile(self, data: bytearray) -> None:
        import soundfile as sf

        frames = len(data) >> 1
        # libsndfile itself, without SoundFile.buffer_write's checks and seeks around it
        # (half the cost of a block): 16-bit samples in the machine's order, which is the
        # wire's little-endian order on every machine this runs on.
        handle = self._file._file
        done = sf._snd.sf_write_short(handle, sf._ffi.from_buffer("short[]", data), frames)
        self.written += max(0, done)
        if done != frames:
            short = OSError(f"wrote {done} of {frames} samples")
            raise AudioFileError(f"{self.path}: cannot write: {_sf_reason(sf, handle, short)}")

    def update_header(self) -> None:
        """The header made to count every sample written (a WAV's, in place)."""
        if self._here:
            fd = self._ready()
            header = wav_header(self.rate, 2 * self.written)
            try:
                os.pwrite(fd, header, 0)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise AudioFileError(f"{self.path}: cannot write: {reason}") from None
        elif self._file is not None and not self._file.closed:
            import soundfile as sf

            sf._snd.sf_command(self._file._file, SFC_UPDATE_HEADER_NOW, sf._ffi.NULL, 0)
        self._header_counts = self.written

    @property
    def samples(self) -> int:
        """Every sample given to write(), written or held (not those dropped by a failure)."""
        return self.written + (len(self._held) >> 1)

    @property
    def held(self) -> int:
        """Samples in memory, not yet in the file."""
        return len(self._held) >> 1

    @property
    def duration(self) -> float:
        return self.samples / self.rate

    def close(self) -> None:
        """The audio held written, the header made exact, the file closed (even when the
        last block cannot be written: AudioFileError then, after closing).

        Without fsync: SoundFile.close() would sync the file to the disk first, a wait
        of milliseconds (tens on a busy disk) for every call that ends, in the one
        thread that serves every other call. The file is complete for any reader once
        closed, whatever becomes of the process; only a power cut before the kernel
        writes it out (within 30 s by default) could lose it, as for any program that
        does not sync."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(-math.inf)  # no header update here: the one below is exact
        finally:
            if self._here:
                try:
                    self._ready()  # the file exists, whole, even with no audio in it
                    if self._header_counts != self.written:
                        self.update_header()
                finally:
                    if self._fd >= 0:
                        fd, self._fd = self._fd, -1
                        os.close(fd)
            else:
                self._close_sndfile()

    def _close_sndfile(self) -> None:
        import soundfile as sf

        handle, self._file._file = self._file._file, None  # closed for SoundFile too
        error = sf._snd.sf_close(handle)  # rewrites a WAV-like header, exact
        if error:
            reason = sf._ffi.string(sf._snd.sf_error_number(error)).decode("utf-8", "replace")
            raise AudioFileError(f"{self.path}: cannot write: {reason}")
