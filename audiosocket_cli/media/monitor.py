"""Hearing a call: inbound audio played on the local sound device (`--monitor`).

sounddevice is imported when a Monitor is made, never at start-up. The
caller (the reactor thread) only copies audio into a small buffer; a worker
thread opens and reopens the output stream, and PortAudio's own thread pulls
from the buffer. Audio that would make the buffer lag is dropped, so what
is heard stays close to live.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

MAX_BUFFERED = 0.25  # seconds of audio held; more is dropped rather than played late
PRIME = 0.04  # seconds buffered before playing (again), to ride over network jitter


class MonitorUnavailable(Exception):
    """One line: what is missing and what to install."""


class Monitor:
    def __init__(self) -> None:
        """Check that audio can be played; open nothing yet."""
        try:
            import sounddevice as sd
        except ImportError:
            raise MonitorUnavailable(
                "cannot play audio: the sounddevice module is missing (pip install sounddevice)"
            ) from None
        except Exception:  # OSError: PortAudio library not found
            raise MonitorUnavailable(
                "cannot play audio: the PortAudio library is missing "
                "(apt-get install libportaudio2)"
            ) from None
        try:
            sd.query_devices(kind="output")
        except Exception:  # PortAudioError, ValueError: no default output device
            raise MonitorUnavailable(
                "cannot play audio: no sound output device (connect one, or install "
                "and start PulseAudio or PipeWire: apt-get install pulseaudio)"
            ) from None
        self._sd: Any = sd
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._buffer = bytearray()
        self._rate = 0  # the rate play() was last given
        self._priming = True
        self._thread: threading.Thread | None = None
        self._closed = False
        self.error: str | None = None  # the last failure to open the device, for a warning
        self.played_bytes = 0  # audio handed to the device (not counting silence)
        self.dropped_bytes = 0
        self.stream_rate = 0  # the rate of the open stream (0: none)

    def play(self, pcm: bytes, rate: int) -> None:
        """Queue 16-bit mono audio at `rate`; never blocks, drops rather than lag."""
        if self._closed:
            return
        with self._lock:
            if rate != self._rate:
                # A new rate: what is queued at the old one is not worth a glitch.
                self._rate = rate
                self._buffer.clear()
                self._priming = True
                self._wake.set()
            room = int(rate * MAX_BUFFERED) * 2 - len(self._buffer)
            if room < len(pcm):
                keep = max(room - room % 2, 0)
                self.dropped_bytes += len(pcm) - keep
                pcm = pcm[:keep]
            self._buffer += pcm
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """Open the stream at the wanted rate, again whenever that changes."""
        sd = self._sd
        stream = None
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                break
            rate = self._rate
            if stream is not None and self.stream_rate == rate:
                continue
            if stream is not None:
                _close_stream(stream)
                stream, self.stream_rate = None, 0
            try:
                stream = sd.RawOutputStream(
                    samplerate=rate,
                    channels=1,
                    dtype="int16",
                    callback=functools.partial(self._callback, rate),
                    latency="low",
                )
                stream.start()
                self.stream_rate = rate
                self.error = None
            except Exception as exc:  # a device that cannot take this rate, or vanished
                self.error = f"cannot play audio at {rate} Hz: {exc}"
                if stream is not None:
                    _close_stream(stream)
                stream = None
        if stream is not None:
            _close_stream(stream)
        self.stream_rate = 0

    def _callback(self, rate: int, outdata: Any, frames: int, time: Any, status: Any) -> None:
        need = len(outdata)
        with self._lock:
            buffer = self._buffer
            if rate != self._rate:
                chunk = b""  # the audio waiting is at another rate: for the next stream
            elif self._priming and len(buffer) < int(rate * PRIME) * 2:
                chunk = b""
            else:
                self._priming = False
                chunk = bytes(buffer[:need])
                del buffer[:need]
                if len(chunk) < need:
                    self._priming = True  # ran dry: wait for some audio before going on
        self.played_bytes += len(chunk)
        outdata[: len(chunk)] = chunk
        if len(chunk) < need:
            outdata[len(chunk) :] = bytes(need - len(chunk))

    def close(self) -> None:
        """Stop playing and release the device (waits for the worker briefly)."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)


def _close_stream(stream: Any) -> None:
    try:
        stream.abort()
        stream.close()
    except Exception:
        pass
