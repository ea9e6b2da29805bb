"""The `--mic` source: frames of the local microphone, for a paced sender.

A sounddevice input stream feeds a bounded queue from PortAudio's thread;
:meth:`MicSource.next_frame` takes exactly one frame from it, like
audio.FileSource. The sender's clock, not the sound card's, decides when
frames leave, so the two are decoupled: a late microphone gives a frame
padded with silence (never a stalled call), and one that runs ahead (a
sound card's clock drifting, or ALSA's null device, which captures as
fast as it can) has its oldest audio dropped so latency stays bounded.

sounddevice (and with it PortAudio) is imported on first use only.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

MAX_LATENCY = 0.2  # seconds of captured audio kept waiting at most
UNDERRUN_WAIT = 0.5  # fraction of a frame to wait for late audio before padding


class MicUnavailable(Exception):
    """No PortAudio, no input device, or the device refused; one line."""


class MicSource:
    """The default (or a named) input device as mono 16-bit frames.

    The stream opens at the rate asked for; a device that refuses that rate
    is opened at its own default rate and resampled with soxr.
    """

    def __init__(self, device: str | int | None = None) -> None:
        self.device = device
        self.rate: int | None = None
        self.overruns = 0  # blocks dropped because the sender was not taking them
        self.underruns = 0  # frames padded with silence because audio was late
        self._stream: Any = None
        self._resampler: Any = None
        self._queue: queue.Queue[bytes] = queue.Queue()
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._max_bytes = 0

    def start(self, rate: int, samples: int) -> None:
        """Open the device now (so that a missing one fails before a call starts)."""
        self.close()
        try:
            import sounddevice as sd
        except ImportError:
            raise MicUnavailable(
                "no sound input: the sounddevice module is missing (pip install sounddevice)"
            ) from None
        except OSError:  # the PortAudio library is not there
            raise MicUnavailable(
                "no sound input: the PortAudio library is missing (apt-get install libportaudio2)"
            ) from None
        self.rate = rate
        self._buffer.clear()
        self._queue = queue.Queue()
        self._max_bytes = max(int(MAX_LATENCY * rate) * 2, samples * 4)
        try:
            self._stream = self._open(sd, rate, samples)
            self._resampler = None
        except sd.PortAudioError:
            # The device does not do this rate: capture at its own and resample.
            try:
                info = sd.query_devices(self.device, "input")
                device_rate = int(info["default_samplerate"])
                self._stream = self._open(sd, device_rate, int(device_rate * samples / rate))
            except (sd.PortAudioError, ValueError) as exc:
                raise MicUnavailable(_device_problem(exc)) from None
            import soxr

            self._resampler = soxr.ResampleStream(device_rate, rate, 1, dtype="int16")
        except ValueError as exc:  # no such device
            raise MicUnavailable(_device_problem(exc)) from None
        try:
            self._stream.start()
        except sd.PortAudioError as exc:
            self.close()
            raise MicUnavailable(f"cannot start the microphone: {_one_line(exc)}") from None

    def _open(self, sd: Any, rate: int, blocksize: int) -> Any:
        max_blocks = max(4, int(MAX_LATENCY * rate / max(blocksize, 1)) + 2)
        self._queue = queue.Queue(maxsize=max_blocks)

        def callback(indata: Any, frames: int, time_info: Any, status: Any) -> None:
            try:
                self._queue.put_nowait(bytes(indata))
            except queue.Full:
                self.overruns += 1

        return sd.RawInputStream(
            samplerate=rate,
            channels=1,
            dtype="int16",
            blocksize=blocksize,
            device=self.device,
            callback=callback,
        )

    def _convert(self, block: bytes) -> bytes:
        if self._resampler is None:
            return block
        import numpy as np

        samples = np.frombuffer(block, dtype="<i2")
        return self._resampler.resample_chunk(samples).astype("<i2").tobytes()

    def next_frame(self, rate: int, samples: int) -> bytes | None:
        """Exactly `samples` samples at `rate`: what the microphone has, padded if late."""
        if self._stream is None or rate != self.rate:
            self.start(rate, samples)
        need = samples * 2
        buffer = self._buffer
        wait = UNDERRUN_WAIT * samples / rate
        while len(buffer) < need:
            try:
                block = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
            except queue.Empty:
                break
            buffer += self._convert(block)
            wait = 0.0
        # Drain what is already captured, then keep only the newest MAX_LATENCY.
        while True:
            try:
                buffer += self._convert(self._queue.get_nowait())
            except queue.Empty:
                break
        excess = len(buffer) - self._max_bytes
        if excess > 0:
            del buffer[: excess - excess % 2]
            self.overruns += 1
        if len(buffer) < need:
            self.underruns += 1
            frame = bytes(buffer) + bytes(need - len(buffer))
            buffer.clear()
            return frame
        frame = bytes(buffer[:need])
        del buffer[:need]
        return frame

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception:  # closing a dead device must not hide why the call ended
                pass


def _device_problem(exc: BaseException) -> str:
    """PortAudio's words for a missing device ("Error querying device -1") in a user's."""
    text = _one_line(exc)
    if "-1" in text or "no input" in text.lower() or "invalid device" in text.lower():
        return (
            "no microphone: PortAudio finds no sound input device (connect one, or install "
            "and start PulseAudio or PipeWire: apt-get install pulseaudio)"
        )
    return f"cannot open the microphone: {text}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
