"""AudioSocket applications with known faults, for `audiosocket load` to name.

Each :class:`FaultyApp` listens on 127.0.0.1 port 0 and serves every
connection with one behaviour (a thread per call: these serve a few calls,
and their timing is the application's own, which is what load measures):

- ``fast``: audio at 10x real time (10 frames every 20 ms);
- ``late``: the first audio 300 ms after the UUID, then real time;
- ``ulaw``: a mu-law tone labelled as slin, at real time;
- ``error``: real-time audio, then an error message (0xff) after 1 s;
- ``echo-late``: every message after the UUID echoed exactly 50 ms after it came;
- ``silent``: reads, sends nothing.

``max_accept`` closes the listening socket after that many connections, so
later calls are refused.
"""

from __future__ import annotations

import heapq
import math
import select
import socket
import struct
import threading
import time
from pathlib import Path

from audiosocket_cli.protocol.wire import Decoder, Kind, Message

HELLO = Path(__file__).resolve().parent.parent / "samples" / "hello-8k.wav"

FRAME = 0.020
SAMPLES = 160  # 20 ms at 8 kHz


def _tone_pcm() -> bytes:
    return b"".join(
        struct.pack("<h", round(8000 * math.sin(2 * math.pi * 400 * n / 8000)))
        for n in range(SAMPLES)
    )


def _ulaw(sample: int) -> int:
    """G.711 mu-law byte of a 16-bit sample."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), clip) + bias
    exponent = max(0, sample.bit_length() - 8)
    exponent = min(exponent, 7)
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _ulaw_frames() -> list[bytes]:
    """samples/hello-8k.wav as mu-law, in 320-byte messages labelled 8 kHz slin (speech:
    a pure tone's mu-law bytes do not tell themselves apart from slin)."""
    import soundfile

    data, _ = soundfile.read(str(HELLO), dtype="int16")
    ulaw = bytes(_ulaw(int(x)) for x in data)
    return [ulaw[i : i + 320] for i in range(0, len(ulaw) - 319, 320)]


TONE = Message.audio(_tone_pcm(), 8000).encode()


class FaultyApp:
    def __init__(self, behaviour: str, max_accept: int | None = None) -> None:
        self.behaviour = behaviour
        self.max_accept = max_accept
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(256)
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        try:
            self.server.close()
        except OSError:
            pass

    def __enter__(self) -> FaultyApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()
            if self.max_accept is not None and self.accepted >= self.max_accept:
                self.server.close()  # later connections are refused
                return

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self.behaviour == "echo-late":
                self._echo_late(sock)
                return
            gone = threading.Event()
            threading.Thread(target=_drain, args=(sock, gone), daemon=True).start()
            if self.behaviour != "silent":
                self._talk(sock, gone)
            gone.wait(30)
        except OSError:
            pass
        finally:
            sock.close()

    def _talk(self, sock: socket.socket, gone: threading.Event) -> None:
        start = time.monotonic()
        behaviour = self.behaviour
        if behaviour == "late":
            start += 0.300
        ulaw = _ulaw_frames() if behaviour == "ulaw" else []
        per_tick = 10 if behaviour == "fast" else 1
        k = 0
        while not gone.is_set():
            due = start + k * FRAME
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if behaviour == "error" and k * FRAME >= 1.0:
                sock.sendall(Message.error(0x02).encode())
                return
            frame = bytes([Kind.AUDIO_8K, 1, 0x40]) + ulaw[k % len(ulaw)] if ulaw else TONE
            sock.sendall(frame * per_tick)
            k += 1

    def _echo_late(self, sock: socket.socket) -> None:
        """Every message but the UUID back, exactly 50 ms after it came."""
        decoder = Decoder()
        queue: list[tuple[float, int, bytes]] = []
        seq = 0
        first = True
        while True:
            timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 0.05
            readable, _, _ = select.select([sock], [], [], timeout)
            if readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if data:
                    now = time.monotonic()
                    decoder.feed(data)
                    for message in decoder.messages():
                        if first:
                            first = False
                            continue
                        seq += 1
                        heapq.heappush(queue, (now + 0.050, seq, message.encode()))
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _, _, out = heapq.heappop(queue)
                try:
                    sock.sendall(out)
                except OSError:
                    return


def _drain(sock: socket.socket, gone: threading.Event) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    gone.set()
