"""A test AudioSocket application server: what `dial` calls in the tests.

It listens on 127.0.0.1 port 0, keeps every byte of every connection with the
monotonic time it arrived, decodes the messages with their completion times,
and sends back what a test tells it to: a `handler(call)` runs in its own
thread for each connection (see the handlers at the end), and an optional
`on_message(call, t, message)` runs in the reader thread for each message
(for echo).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from audiosocket_cli.protocol.wire import HEADER, Decoder, Kind, Message, frame_bytes

Handler = Callable[["ServerCall"], None]
OnMessage = Callable[["ServerCall", float, Message], None]


class ServerCall:
    """One accepted connection: what arrived, when, and a way to answer."""

    def __init__(self, sock: socket.socket, on_message: OnMessage | None) -> None:
        self.sock = sock
        self.accepted = time.monotonic()
        self.chunks: list[tuple[float, bytes]] = []
        self.received: list[tuple[float, Message]] = []
        self.sent: list[tuple[float, bytes]] = []
        self.ended = threading.Event()  # the peer closed (or reset)
        self.end_how = ""  # "eof" or "reset"
        self.ended_at: float | None = None
        self._on_message = on_message
        self._changed = threading.Condition()
        self._send_lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    # What arrived.

    def _read(self) -> None:
        decoder = Decoder()
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                self.end_how = "reset"
                break
            except OSError:
                self.end_how = self.end_how or "closed-here"
                break
            now = time.monotonic()
            if not data:
                self.end_how = "eof"
                break
            decoder.feed(data)
            messages = decoder.messages()
            with self._changed:
                self.chunks.append((now, data))
                self.received.extend((now, m) for m in messages)
                self._changed.notify_all()
            if self._on_message is not None:
                for message in messages:
                    try:
                        self._on_message(self, now, message)
                    except OSError:
                        pass
        self.ended_at = time.monotonic()
        with self._changed:
            self.ended.set()
            self._changed.notify_all()

    @property
    def data(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)

    @property
    def messages(self) -> list[Message]:
        return [m for _, m in self.received]

    def audio_messages(self) -> list[tuple[float, Message]]:
        return [(t, m) for t, m in self.received if m.is_audio]

    def audio(self) -> bytes:
        return b"".join(m.payload for m in self.messages if m.is_audio)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def wait_messages(self, n: int, timeout: float = 5.0) -> bool:
        return self.wait_for(lambda: len(self.received) >= n or self.ended.is_set(), timeout)

    def wait_uuid(self, timeout: float = 5.0) -> bool:
        return self.wait_messages(1, timeout) and bool(self.received)

    def wait_ended(self, timeout: float = 10.0) -> bool:
        return self.ended.wait(timeout)

    # Answering.

    def send(self, data: bytes) -> None:
        with self._send_lock:
            started = time.monotonic()  # when the write began: what the peer could see
            self.sock.sendall(data)
        with self._changed:
            self.sent.append((started, data))
            self._changed.notify_all()

    def send_message(self, message: Message) -> None:
        self.send(message.encode())

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class AppServer:
    """Listens on 127.0.0.1:0; one ServerCall per connection, in `calls`."""

    def __init__(self, handler: Handler | None = None, on_message: OnMessage | None = None) -> None:
        self.handler = handler
        self.on_message = on_message
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port: int = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.calls: list[ServerCall] = []
        self.errors: list[BaseException] = []
        self._new_call = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            call = ServerCall(sock, self.on_message)
            with self._new_call:
                self.calls.append(call)
                self._new_call.notify_all()
            if self.handler is not None:
                threading.Thread(target=self._run_handler, args=(call,), daemon=True).start()

    def _run_handler(self, call: ServerCall) -> None:
        assert self.handler is not None
        try:
            self.handler(call)
        except OSError:
            pass  # the caller went away: that is the caller's business, tests check it
        except BaseException as exc:  # surfaced by the test through `errors`
            self.errors.append(exc)

    def wait_call(self, timeout: float = 5.0) -> ServerCall:
        deadline = time.monotonic() + timeout
        with self._new_call:
            while not self.calls:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no connection arrived")
                self._new_call.wait(remaining)
            return self.calls[0]

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for call in self.calls:
            call.close()

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# Handlers: what the application does once the caller's UUID has arrived.


def frames(pcm: bytes, rate: int, frame_ms: float = 20) -> list[bytes]:
    size = frame_bytes(rate, frame_ms)
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def after_uuid(*writes: bytes, delay: float = 0.0, then: str | None = None) -> Handler:
    """Send each write (one sendall each) after the UUID, then 'hangup', 'close' or nothing."""

    def handler(call: ServerCall) -> None:
        call.wait_uuid()
        time.sleep(delay)
        for data in writes:
            call.send(data)
        finish(call, then)

    return handler


def paced_audio(pcm: bytes, rate: int = 8000, then: str | None = "hangup") -> Handler:
    """Send audio back at real time, 20 ms frames on a drift-free clock."""

    def handler(call: ServerCall) -> None:
        call.wait_uuid()
        start = time.monotonic()
        for k, frame in enumerate(frames(pcm, rate)):
            delay = start + k * 0.020 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if call.ended.is_set():
                return
            call.send_message(Message.audio(frame, rate))
        finish(call, then)

    return handler


def burst_audio(pcm: bytes, rate: int = 8000, then: str | None = "hangup") -> Handler:
    """Send all the audio at once, one message per 20 ms frame, back to back."""

    def handler(call: ServerCall) -> None:
        call.wait_uuid()
        call.send(b"".join(Message.audio(f, rate).encode() for f in frames(pcm, rate)))
        finish(call, then)

    return handler


def split_message(message: Message, gap: float, then: str | None = "hangup") -> Handler:
    """Send a message's header, wait `gap` seconds, then its payload."""

    def handler(call: ServerCall) -> None:
        call.wait_uuid()
        call.send(HEADER.pack(message.kind, len(message.payload)))
        time.sleep(gap)
        call.send(message.payload)
        time.sleep(0.1)
        finish(call, then)

    return handler


def finish(call: ServerCall, then: str | None) -> None:
    if then == "hangup":
        time.sleep(0.05)
        if not call.ended.is_set():
            call.send_message(Message.hangup())
    elif then == "close":
        time.sleep(0.05)
        call.close()


def echo(call: ServerCall, t: float, message: Message) -> None:
    """on_message: every audio message straight back."""
    if message.kind in (Kind.AUDIO_8K, Kind.AUDIO_16K) or message.is_audio:
        call.send_message(message)
