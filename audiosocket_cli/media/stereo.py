"""Two sides of a call on one timeline: a 16-bit stereo WAV, caller left, application right.

:class:`StereoRecording` is the file: samples placed at their own times
(seconds since the connection) on either channel, silence wherever a side
placed nothing, so that the two channels line up sample for sample with the
call's trace. DeepEval's audio metrics and any editor read it as it is.

:class:`CallStereo` records one call into it, as `dial --record-stereo` and
`capture --record-stereo` do: what we send is placed at its send time on the
call's drift-free clock (`sent`), what a peer sends at its **playout time**
(`heard`): a message plays from max(its arrival, the previous message's play
end) on its side, as Asterisk plays it and as the speech detector times it
(docs/speech.md). It keeps the recording guarantees of media.recorder: opened
when the first audio comes (or held until the call has its name), valid
however the call ends, a write error said once (the line to warn with is
returned) and the recording then partial. It has what a call report asks of
a recording (`paths`, `partial`, `error`, `close`). Thread-safe: a caller's
two threads may feed it.

The file is written as the call goes (everything older than the `flush`
watermark, one second behind the call), its header rewritten about once a
second, so it plays up to the last second however the tool ends; close()
makes it exact. A write error never ends the call: `error` says why,
`partial` is set, the file stays valid.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audiosocket_cli.media.audio import WAV_MAX_DATA, AudioFileError, open_wav, wav_header

LEFT, RIGHT = 0, 1  # the caller (Asterisk's side), the agent (the application)
CHANNELS = {"caller": LEFT, "agent": RIGHT, "application": RIGHT, ">": LEFT, "<": RIGHT}
HEADER_UPDATE_INTERVAL = 1.0
FLUSH_LAG = 1.0  # s: the file is written up to this far behind the call's clock
FLUSH_EVERY = 0.5  # s of the call's clock between two writes
HOLD_MESSAGES = 500  # audio held at most until the call has its name (as CallReport)


class StereoRecording:
    """`add(channel, t, pcm, rate)` places 16-bit mono samples at `t` seconds on a
    channel (0 or "caller": left; 1 or "agent": right), resampled to the file's rate
    when theirs differs; `flush(upto)` writes everything before `upto`; `close()`.

    The WAV is written with plain system calls, as media.audio.AudioWriter writes
    its own: the 44-byte header, each block with one write(), the header again in
    place (one pwrite()) about once a second and at close. A write that fails
    (a full disk, a file size limit) sets `error` with the system's reason and
    leaves the header counting every whole frame written."""

    def __init__(self, path: str | os.PathLike[str], rate: int) -> None:
        self.path = Path(path)
        self.rate = rate
        self.error: str | None = None
        self.late_samples = 0  # placed before the written part: dropped
        self.written = 0  # frames (sample pairs) in the file
        self._pending: list[list[tuple[int, Any]]] = [[], []]
        self._header_counts = 0
        try:
            fd = open_wav(self.path, rate, channels=2)
        except AudioFileError as exc:
            raise OSError(str(exc)) from None
        self._fd = fd
        self._header_written = time.monotonic()

    @property
    def partial(self) -> bool:
        return self.error is not None

    @property
    def paths(self) -> list[Path]:
        return [self.path]

    @property
    def end(self) -> float:
        """Seconds of audio placed so far, on the later channel."""
        last = self.written
        for chunks in self._pending:
            for start, samples in chunks:
                last = max(last, start + len(samples))
        return last / self.rate

    def add(self, channel: int | str, t: float, pcm: bytes, rate: int) -> None:
        import numpy as np

        side = CHANNELS.get(channel, channel) if isinstance(channel, str) else channel
        if side not in (LEFT, RIGHT) or self.error is not None:
            return
        usable = len(pcm) - len(pcm) % 2
        if not usable:
            return
        samples = np.frombuffer(pcm[:usable], dtype="<i2")
        if rate != self.rate:
            from audiosocket_cli.media.audio import resample

            floats = resample(samples.astype(np.float32) / 32768.0, rate, self.rate)
            samples = np.clip(np.round(floats * 32768.0), -32768, 32767).astype("<i2")
        start = round(t * self.rate)
        if start < self.written:
            cut = min(len(samples), self.written - start)
            self.late_samples += cut
            samples, start = samples[cut:], start + cut
            if not len(samples):
                return
        self._pending[side].append((start, samples))

    def flush(self, upto: float | None = None) -> None:
        """Write everything placed before `upto` seconds (None: everything), silence
        where nothing was placed."""
        import numpy as np

        if self.error is not None or self._fd < 0:
            return
        stop = round(self.end * self.rate) if upto is None else round(upto * self.rate)
        count = stop - self.written
        if count <= 0:
            return
        block = np.zeros((count, 2), dtype="<i2")
        for side, chunks in enumerate(self._pending):
            keep = []
            for start, samples in chunks:
                a, b = max(start, self.written), min(start + len(samples), stop)
                if a < b:
                    block[a - self.written : b - self.written, side] = samples[
                        a - start : b - start
                    ]
                if start + len(samples) > stop:
                    offset = max(0, stop - start)
                    keep.append((start + offset, samples[offset:]))
            self._pending[side] = keep
        if not self._write(block.tobytes()):
            return
        now = time.monotonic()
        if now - self._header_written >= HEADER_UPDATE_INTERVAL:
            self._update_header()
            self._header_written = now

    def _write(self, data: bytes) -> bool:
        """One block, whole frames counted; False (and the file closed) if it failed."""
        fits = min(len(data), (WAV_MAX_DATA - 4 * self.written) // 4 * 4)
        done = 0
        reason = "a WAV file holds at most 4 GB of audio"
        try:
            view = memoryview(data)[:fits]
            while done < fits:
                more = os.write(self._fd, view[done:])
                if not more:
                    reason = "the file takes no more"
                    break
                done += more
        except OSError as exc:
            reason = exc.strerror or str(exc)
        self.written += done // 4
        if done < len(data):
            self._failed(reason)
            return False
        return True

    def _update_header(self) -> None:
        try:
            os.pwrite(self._fd, _header(self.rate, 4 * self.written), 0)
        except OSError as exc:
            self._failed(exc.strerror or str(exc))
            return
        self._header_counts = self.written

    def _failed(self, reason: str) -> None:
        """The file stays valid up to the last whole frame written, and is closed."""
        self.error = f"{self.path}: cannot write: {reason}"
        self._pending = [[], []]
        if self._fd >= 0:
            try:
                if self._header_counts != self.written:
                    os.pwrite(self._fd, _header(self.rate, 4 * self.written), 0)
            except OSError:
                pass
            finally:
                fd, self._fd = self._fd, -1
                os.close(fd)

    def close(self) -> None:
        """The rest written, the header made exact, the file closed, whatever fails."""
        if self._fd < 0:
            return
        try:
            self.flush()
            if self._fd >= 0 and self._header_counts != self.written:
                self._update_header()
        finally:
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)


def _header(rate: int, data_bytes: int) -> bytes:
    return wav_header(rate, data_bytes, channels=2)


def _side(channel: int | str) -> int:
    side = CHANNELS.get(channel, -1) if isinstance(channel, str) else channel
    if side not in (LEFT, RIGHT):
        raise ValueError(f"no such channel {channel!r}: 0, 1, '>', '<', 'caller' or 'agent'")
    return side


class CallStereo:
    """One call's two sides in one StereoRecording, opened at `path_for()` when the first
    audio comes (`hold`: not before `release()`, the call's naming).

    `rate`: the file's rate; None takes the rate of the first audio (the caller's,
    if it held some). `empty`: a call without audio still leaves an empty file at
    `rate`, as `dial --record` does. `sent(side, at, ...)` places audio at `at`,
    `heard(side, t, ...)` at its playout time from its arrival `t` (seconds since
    the connection); both return a line to warn with, once, if the file failed.
    """

    def __init__(
        self,
        path_for: Callable[[], Path],
        *,
        rate: int | None = None,
        hold: bool = False,
        empty: bool = False,
    ) -> None:
        self._path_for = path_for
        self.rate = rate
        self.empty = empty
        self.recording: StereoRecording | None = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._play_end = [float("-inf"), float("-inf")]
        self._held: list[tuple[int, float, bytes, int]] | None = [] if hold else None
        self._clock = 0.0  # the latest arrival or send time seen
        self._flushed = 0.0  # the clock at the last write
        self._warned = False
        self._closed = False

    @property
    def error(self) -> str | None:
        if self._error is not None:
            return self._error
        return self.recording.error if self.recording is not None else None

    @property
    def partial(self) -> bool:
        return self.error is not None

    @property
    def paths(self) -> list[Path]:
        return [self.recording.path] if self.recording is not None else []

    def sent(self, side: int | str, at: float, pcm: bytes, rate: int) -> str | None:
        """Audio we sent, placed at `at` (its send time on the call's clock)."""
        channel = _side(side)
        with self._lock:
            self._play_end[channel] = max(self._play_end[channel], at + len(pcm) // 2 / rate)
            return self._guarded(self._place, channel, at, at, pcm, rate)

    def heard(self, side: int | str, t: float, pcm: bytes, rate: int) -> str | None:
        """Audio that arrived at `t`, placed where it plays: from max(t, the end of the
        side's previous audio)."""
        channel = _side(side)
        with self._lock:
            play = max(t, self._play_end[channel])
            self._play_end[channel] = play + len(pcm) // 2 / rate
            return self._guarded(self._place, channel, t, play, pcm, rate)

    def release(self) -> str | None:
        """The call has its name: the held audio goes to its file."""
        with self._lock:
            return self._guarded(self._release)

    def _guarded(self, act: Callable[..., str | None], *args: Any) -> str | None:
        """Whatever goes wrong in here stops the recording, never the call."""
        try:
            return act(*args)
        except Exception as exc:  # a bug or no memory: said once, as a write error
            reason = f"{type(exc).__name__}: {exc}"
            if self.recording is not None:
                if self.recording.error is None:
                    self.recording._failed(reason)  # closed, valid up to what was written
            elif self._error is None:
                self._error = f"the stereo recording: cannot write: {reason}"
            return self._check()

    def _release(self) -> str | None:
        held, self._held = self._held, None
        if not held or self._closed:
            return None
        if self.rate is None:
            self.rate = next((r for side, _, _, r in held if side == LEFT), held[0][3])
        for channel, at, pcm, rate in held:
            self._add(channel, at, pcm, rate)
        return self._check()

    def _place(self, channel: int, t: float, at: float, pcm: bytes, rate: int) -> str | None:
        if self._closed or len(pcm) < 2 or self.error is not None:
            return None
        self._clock = max(self._clock, t)
        if self._held is not None:
            self._held.append((channel, at, pcm, rate))
            return self._release() if len(self._held) >= HOLD_MESSAGES else None
        if self.rate is None:
            self.rate = rate
        self._add(channel, at, pcm, rate)
        if self.recording is not None and self._clock - self._flushed >= FLUSH_EVERY:
            self._flushed = self._clock
            self.recording.flush(self._clock - FLUSH_LAG)
        return self._check()

    def _add(self, channel: int, at: float, pcm: bytes, rate: int) -> None:
        if self.recording is None and not self._open():
            return
        assert self.recording is not None
        self.recording.add(channel, at, pcm, rate)

    def _open(self) -> bool:
        if self._error is not None:
            return False
        assert self.rate is not None
        path = None
        try:
            path = self._path_for()
            self.recording = StereoRecording(path, self.rate)
        except OSError as exc:
            self._error = str(exc) if path is not None else f"cannot record: {exc}"
            return False
        return True

    def _check(self) -> str | None:
        """The line to warn with, the first time the file failed."""
        error = self.error
        if error is None or self._warned:
            return None
        self._warned = True
        return f"recording stopped: {error}; the file is valid up to the last sample written"

    def end(self) -> str | None:
        """close(), and the line to warn with if the file failed and that was not said
        yet (the recording is then partial); None otherwise, or on a second call."""
        with self._lock:
            if self._closed:
                return None
            try:
                return self._guarded(self._end)
            finally:
                self._closed = True

    def _end(self) -> str | None:
        self._release()
        if self.recording is None and self.empty and self.rate is not None:
            self._open()
        if self.recording is not None:
            self.recording.close()
        return self._check()

    def close(self) -> None:
        """Every sample written, the file closed, valid and exact, whatever fails."""
        try:
            self.end()
        except Exception:
            pass
