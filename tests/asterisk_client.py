"""A test client that sends bytes the way Asterisk does, and the ways broken clients do.

Like Asterisk: the UUID in one write, then 20 ms audio messages (320 bytes at
8 kHz) on a drift-free clock, or as fast as possible; the end is a close
without a hangup message. Like broken clients: header and payload in
separate writes, every byte its own write, garbage, a stream cut inside a
message, a connection that says nothing, a reset (SO_LINGER 0).

What comes back is decoded by a reader thread into `received`.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
import uuid as uuid_lib
from collections.abc import Iterator

from audiosocket_cli.net.pacing import sleep_until
from audiosocket_cli.protocol.wire import Decoder, Message, frame_bytes


def frames(pcm: bytes, rate: int = 8000, frame_ms: float = 20) -> Iterator[bytes]:
    """PCM cut into frames; the last one short, as Asterisk sends a file's end."""
    size = frame_bytes(rate, frame_ms)
    for start in range(0, len(pcm), size):
        yield pcm[start : start + size]


class AsteriskClient:
    def __init__(
        self,
        address: tuple[str, int],
        *,
        nodelay: bool = True,
        receive: bool = True,
        timeout: float = 5.0,
    ) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.settimeout(timeout)
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.started = time.monotonic()
        self.received: list[tuple[float, Message]] = []
        self.peer_closed = threading.Event()  # the server closed (EOF or reset)
        self.peer_reset = False
        self._stop = threading.Event()
        self._decoder = Decoder()
        self._reader: threading.Thread | None = None
        if receive:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    # What Asterisk sends

    def send_uuid(self, value: str | uuid_lib.UUID | None = None) -> str:
        value = uuid_lib.UUID(str(value)) if value is not None else uuid_lib.uuid4()
        self.send(Message.for_uuid(value))
        return str(value)

    def send(self, message: Message) -> None:
        """One message in one write."""
        self.sock.sendall(message.encode())

    def send_audio(
        self, pcm: bytes, rate: int = 8000, *, paced: bool = True, frame_ms: float = 20
    ) -> int:
        """Audio in frames; paced: frame k leaves at start + k x frame_ms. Returns frames sent."""
        start = time.monotonic()
        count = 0
        for k, frame in enumerate(frames(pcm, rate, frame_ms)):
            if paced:
                sleep_until(start + k * frame_ms / 1000)
            self.send(Message.audio(frame, rate))
            count += 1
        return count

    def close(self, wait: float = 2.0) -> None:
        """End the call as Asterisk does: close, no hangup message.

        The write side is shut first and what the server still sends is
        read, so the close is a clean FIN rather than a reset.
        """
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if self._reader is not None:
            self.peer_closed.wait(wait)
        self._finish()

    def hangup(self) -> None:
        self.send(Message.hangup())
        self.close()

    # What broken clients send

    def send_split(self, message: Message, gap: float = 0.001) -> None:
        """Header and payload in two writes."""
        data = message.encode()
        self.sock.sendall(data[:3])
        time.sleep(gap)
        self.sock.sendall(data[3:])

    def send_bytewise(self, data: bytes, gap: float = 0.0) -> None:
        """Every byte its own write."""
        for i in range(len(data)):
            self.sock.sendall(data[i : i + 1])
            if gap:
                time.sleep(gap)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reset(self) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send a RST."""
        self._stop_reader()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def abandon(self) -> None:
        """Close at once (whatever is unread): the end of a connection that said nothing."""
        self._finish()

    # What came back

    def messages(self, name: str | None = None) -> list[Message]:
        return [m for _, m in list(self.received) if name is None or m.name == name]

    def wait_for(self, count: int, name: str | None = None, timeout: float = 5.0) -> bool:
        """Wait until `count` messages (of kind `name`) have come back."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.messages(name)) >= count:
                return True
            if self.peer_closed.is_set():
                return len(self.messages(name)) >= count
            time.sleep(0.005)
        return False

    def _read(self) -> None:
        sock = self.sock
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([sock], [], [], 0.05)
                if not ready:
                    continue
                data = sock.recv(65536)
            except ConnectionResetError:
                self.peer_reset = True
                break
            except (OSError, ValueError):
                break
            now = time.monotonic() - self.started
            if not data:
                break
            self._decoder.feed(data)
            for message in self._decoder.messages():
                self.received.append((now, message))
        if not self._stop.is_set():
            self.peer_closed.set()

    def _stop_reader(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=1.0)

    def _finish(self) -> None:
        self._stop_reader()
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> AsteriskClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()
