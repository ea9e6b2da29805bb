"""Two sides of a call on one timeline: a 16-bit stereo WAV, caller left, agent right.

Each side's audio is placed at its own time (seconds since the connection):
what we sent at the moment it was sent, what the application sent at its
playout time (messages laid end to end from their arrival, as the speech
detector sees them). Silence fills wherever a side sent nothing, so the two
channels line up sample for sample with the call's trace; DeepEval's audio
metrics and any editor read the file as it is.

The file is written as the call goes (everything older than the `flush`
watermark), its header rewritten about once a second, so it plays up to the
last second however the tool ends; close() makes it exact. A write error
never ends the call: `error` says why, `partial` is set, the file stays valid.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

LEFT, RIGHT = 0, 1  # the caller, the agent
CHANNELS = {"caller": LEFT, "agent": RIGHT, ">": LEFT, "<": RIGHT}
HEADER_UPDATE_INTERVAL = 1.0
SFC_UPDATE_HEADER_NOW = 0x1060


class StereoRecording:
    """`add(channel, t, pcm, rate)` places 16-bit mono samples at `t` seconds on a
    channel (0 or "caller": left; 1 or "agent": right), resampled to the file's rate
    when theirs differs; `flush(upto)` writes everything before `upto`; `close()`."""

    def __init__(self, path: str | os.PathLike[str], rate: int) -> None:
        import soundfile as sf

        self.path = Path(path)
        self.rate = rate
        self.error: str | None = None
        self.late_samples = 0  # placed before the written part: dropped
        self.written = 0  # frames (sample pairs) in the file
        self._pending: list[list[tuple[int, Any]]] = [[], []]
        try:
            self._file = sf.SoundFile(
                os.fspath(path), "w", samplerate=rate, channels=2, subtype="PCM_16", format="WAV"
            )
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise OSError(f"{path}: cannot write: {exc}") from None
        self._header_written = time.monotonic()

    @property
    def partial(self) -> bool:
        return self.error is not None

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

        if self.error is not None:
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
        try:
            self._file.buffer_write(block.tobytes(), dtype="int16")
        except RuntimeError as exc:
            self._failed(exc)
            return
        self.written = stop
        now = time.monotonic()
        if now - self._header_written >= HEADER_UPDATE_INTERVAL:
            self._update_header()
            self._header_written = now

    def _update_header(self) -> None:
        import soundfile as sf

        sf._snd.sf_command(self._file._file, SFC_UPDATE_HEADER_NOW, sf._ffi.NULL, 0)

    def _failed(self, exc: Exception) -> None:
        self.error = f"{self.path}: cannot write: {exc}"
        try:
            self._file.close()
        except Exception:
            pass

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if not self._file.closed:
                try:
                    self._file.close()
                except Exception as exc:
                    self.error = self.error or f"{self.path}: cannot write: {exc}"
