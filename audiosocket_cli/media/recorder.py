"""Recording a call's audio: one recorder, one policy for file errors.

A :class:`Recording` holds one direction of one call. Every sample keeps its
own rate: the first rate heard goes to the first file, each other rate to a
file of its own, so nothing is resampled or lost. The format is the one the
file's extension names (WAV written here; FLAC, OGG, MP3... through libsndfile).

Audio is held in memory and written in blocks (media.audio.AudioWriter): one
write() system call per 0.25 s of audio (a WAV's header, in place, one pwrite()
a second) instead of one per message, and the rest at the end of the call;
audio that comes slower than real time is written at the first message 0.25 s
after the previous block. Memory is one block per file at most. Whatever ends
the call (hangup, reset, timeout) or the tool (Ctrl-C, SIGTERM), close() writes
what is held and makes the header exact. A WAV's header is also brought up to
date about once a second while audio comes, so that a killed process (SIGKILL)
leaves a file that plays all but at most the last second of audio: the last
second before the kill, or, if the call's audio had stopped and nothing called
tick(), the last second before it stopped. The time comes from the caller
(`now`, time.monotonic() seconds) or is read once per write; nothing here runs a
timer: an engine that wants quiet calls' files up to date too calls tick()
every second or so.

A write error (a full disk, a file size limit, a vanished folder) never ends
a call or the process: the recording says why once, stops, keeps its file
valid up to the last good write, and reports itself partial. A block that
cannot be written at the end of the call (close) counts the same: partial, and
end(), which is close() with the line to warn with, returns it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from audiosocket_cli.media.audio import AudioFileError, AudioWriter

# path_for(rate, first): the file for audio at `rate`; `first` for the first file.
PathFor = Callable[[int, Path | None], Path]


class Recording:
    """One direction of one call, as audio files; `write` never raises."""

    def __init__(self, path_for: PathFor, empty_rate: int | None = None) -> None:
        self._path_for = path_for
        # A call that sent no audio still leaves an (empty) file at this rate, so
        # that a --record FILE always exists after a call that happened.
        self.empty_rate = empty_rate
        self.writers: dict[int, AudioWriter] = {}
        self.error: str | None = None
        self.failed_path: Path | None = None

    @property
    def paths(self) -> list[Path]:
        return [writer.path for writer in self.writers.values()]

    @property
    def partial(self) -> bool:
        """Some audio could not be written."""
        return self.error is not None

    def write(self, rate: int, pcm: bytes, now: float | None = None) -> str | None:
        """Append audio that arrived at `now` (time.monotonic(); read here if None); a
        line to warn with (a new file for a new rate, or a failure)."""
        if self.error is not None:
            return None
        writer = self.writers.get(rate)
        note = None
        try:
            if writer is None:
                first = next(iter(self.writers.values())).path if self.writers else None
                path = self._path_for(rate, first)
                writer = self.writers[rate] = AudioWriter(path, rate)
                if first is not None:
                    note = f"audio at {rate} Hz is recorded in {path}"
            writer.write(pcm, now)
        except (AudioFileError, OSError) as exc:
            return self._failed(writer, exc)
        return note

    def tick(self, now: float | None = None) -> str | None:
        """Write what is due though no audio came to bring it (see AudioWriter.tick);
        a line to warn with if that fails. For a timer, every second or so."""
        return self._each(lambda writer: writer.tick(now))

    def flush(self) -> str | None:
        """Write every file's audio held now; a line to warn with if that fails."""
        return self._each(lambda writer: writer.flush())

    def _each(self, act: Callable[[AudioWriter], None]) -> str | None:
        if self.error is not None:
            return None
        for writer in self.writers.values():
            try:
                act(writer)
            except (AudioFileError, OSError) as exc:
                return self._failed(writer, exc)
        return None

    def _failed(self, writer: AudioWriter | None, exc: Exception) -> str:
        self.error = str(exc)
        if writer is not None:
            self.failed_path = writer.path
            try:
                writer.close()  # the header then counts what was written
            except Exception:
                pass
        return f"recording stopped: {exc}; the file is valid up to the last sample written"

    def close(self) -> None:
        """Every file written out and closed, valid and exact, whatever fails."""
        self.end()

    def end(self) -> str | None:
        """close(), and a line to warn with if the audio held could not all be written
        (the recording is then partial); None when all went well, or on a second call."""
        if not self.writers and self.empty_rate is not None and self.error is None:
            try:
                self.write(self.empty_rate, b"")
            except Exception:
                pass
        note = None
        for writer in self.writers.values():
            try:
                writer.close()
            except (AudioFileError, OSError) as exc:
                if self.error is None:
                    note = self._failed(writer, exc)
            except Exception:  # a full disk must not stop the other files closing
                pass
        return note


def unique_path(directory: str | os.PathLike[str], stem: str, suffix: str) -> Path:
    """DIR/stem.suffix, or DIR/stem-2.suffix, -3, ... if that exists."""
    # os.path on strings: a call's start in a server starting hundreds at once.
    base = os.fspath(directory)
    name = os.path.join(base, f"{stem}{suffix}")
    n = 2
    while os.path.exists(name):
        name = os.path.join(base, f"{stem}-{n}{suffix}")
        n += 1
    return Path(name)


def call_recording(directory: Path, stem: Callable[[], str], side: str = "") -> Recording:
    """A call's audio in a folder (listen, capture): DIR/<uuid>[.side].wav, a second
    call with the same UUID <uuid>-2..., another rate <first stem>.<rate>.wav."""
    tail = f".{side}" if side else ""

    def path_for(rate: int, first: Path | None) -> Path:
        if first is None:
            return unique_path(directory, stem(), f"{tail}.wav")
        base = first.name[: -len(f"{tail}.wav")]
        return unique_path(directory, f"{base}{tail}.{rate}", ".wav")

    return Recording(path_for)


def file_recording(path: Path, call_rate: int) -> Recording:
    """What the application sends, in FILE (dial, replay): audio at a second rate
    goes to FILE's stem + .RATE + its suffix; no audio leaves an empty file."""

    def path_for(rate: int, first: Path | None) -> Path:
        if first is None:
            return path
        return first.with_name(f"{first.stem}.{rate}{first.suffix or '.wav'}")

    return Recording(path_for, empty_rate=call_rate)


def check_writable(path: Path) -> str | None:
    """Why audio cannot be written to `path` (its folder, its format), or None.

    Asked before the first call, so that a bad --record is one line at start
    and not a failure once audio flows.
    """
    from audiosocket_cli.media.audio import audio_format

    if path.is_dir():
        return f"{path}: is a directory"
    parent = path.parent
    if not parent.is_dir():
        return f"{path}: no such folder {str(parent)!r}"
    if audio_format(path) is None:
        return f"{path}: cannot tell the audio format from {path.suffix!r} (use .wav, .flac...)"
    if path.exists() and not path.is_file():
        # A device or a pipe (/dev/full...): only a real open and header write tells.
        try:
            AudioWriter(path, 8000).close()
        except (AudioFileError, OSError) as exc:
            return str(exc)
        return None
    existed = path.exists()
    try:
        with open(path, "ab") as probe:
            probe.write(b"")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return f"{path}: cannot write: {exc.strerror or exc}"
    if not existed:
        try:
            path.unlink()
        except OSError:
            pass
    return None


def check_writable_folder(directory: Path) -> str | None:
    """Why recordings cannot go into `directory` (made if missing), or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{directory}: cannot create: {exc.strerror or exc}"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory}: cannot write there"
    return None
