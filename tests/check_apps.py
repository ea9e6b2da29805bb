"""Deliberately broken AudioSocket applications, one per fault, for `check`'s own tests.

Each is an echo application (every audio message straight back, the socket
closed when the caller closes) with exactly one thing wrong, built on
tests/app_server.py. `check` run against one must fail the cases about its
fault, and only those.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from app_server import AppServer, ServerCall

from audiosocket_cli.protocol.wire import HEADER, Kind, Message

OnMessage = Callable[[ServerCall, float, Message], None]


def closing_handler(close: bool = True) -> Callable[[ServerCall], None]:
    """Per call: wait for the caller's end, then close our side (or never, if not `close`)."""

    def handler(call: ServerCall) -> None:
        call.ended.wait()
        if close:
            call.close()

    return handler


def echo_app(on_message: OnMessage | None = None, close: bool = True) -> AppServer:
    def echo(call: ServerCall, t: float, message: Message) -> None:
        if message.is_audio and message.payload:
            call.send_message(message)

    return AppServer(handler=closing_handler(close), on_message=on_message or echo)


def good() -> AppServer:
    """No fault: the reference the others differ from."""
    return echo_app()


def bursts() -> AppServer:
    """Each caller frame answered with ten, in one write: audio at 10x real time."""

    def on_message(call: ServerCall, t: float, message: Message) -> None:
        if message.is_audio and message.payload:
            call.send(message.encode() * 10)

    return echo_app(on_message)


def always_8k() -> AppServer:
    """Answers every call at 8 kHz: the caller's audio decimated and labelled 0x10."""

    def on_message(call: ServerCall, t: float, message: Message) -> None:
        if message.is_audio and message.payload and message.rate:
            step = message.rate // 8000 or 1
            samples = message.payload[: len(message.payload) // 2 * 2]
            pcm = b"".join(samples[i : i + 2] for i in range(0, len(samples), 2 * step))
            call.send_message(Message(Kind.AUDIO_8K, pcm))

    return echo_app(on_message)


def never_closes() -> AppServer:
    """Echoes, and never closes its side after the caller hangs up (CLOSE-WAIT)."""
    return echo_app(close=False)


def dies_on_dtmf() -> AppServer:
    """The call's handler dies on a DTMF message: the connection is closed at once."""

    def on_message(call: ServerCall, t: float, message: Message) -> None:
        if message.kind == Kind.DTMF:
            call.close()
        elif message.is_audio and message.payload:
            call.send_message(message)

    return echo_app(on_message)


def dtmf_back() -> AppServer:
    """Echoes DTMF back too: Asterisk ends the session on it."""

    def on_message(call: ServerCall, t: float, message: Message) -> None:
        if message.kind == Kind.DTMF or (message.is_audio and message.payload):
            call.send_message(message)

    return echo_app(on_message)


def uuid_back() -> AppServer:
    """Echoes the UUID back (the commonest refused message)."""

    def on_message(call: ServerCall, t: float, message: Message) -> None:
        if message.kind == Kind.UUID or (message.is_audio and message.payload):
            call.send_message(message)

    return echo_app(on_message)


def split_writes(gap: float = 0.020) -> AppServer:
    """Writes each header, then its payload `gap` later (Asterisk's window is about 5 ms).

    A sender thread per call, so that reading is never held up by the gaps.
    """
    queues: dict[int, list[Message]] = {}
    lock = threading.Condition()

    def on_message(call: ServerCall, t: float, message: Message) -> None:
        if message.is_audio and message.payload:
            with lock:
                queues.setdefault(id(call), []).append(message)
                lock.notify_all()

    def handler(call: ServerCall) -> None:
        key = id(call)
        while not call.ended.is_set():
            with lock:
                lock.wait_for(lambda: queues.get(key) or call.ended.is_set(), timeout=0.1)
                batch, queues[key] = queues.get(key, []), []
            for message in batch:
                if call.ended.is_set():
                    break
                call.send(HEADER.pack(message.kind, len(message.payload)))
                time.sleep(gap)
                call.send(message.payload)
        call.close()

    return AppServer(handler=handler, on_message=on_message)


def big_endian() -> AppServer:
    """Echoes with every sample's bytes swapped: big-endian PCM."""

    def on_message(call: ServerCall, t: float, message: Message) -> None:
        if message.is_audio and message.payload:
            data = message.payload
            swapped = bytearray(len(data))
            swapped[0::2], swapped[1::2] = data[1::2], data[0::2][: len(data[1::2])]
            call.send_message(Message(message.kind, bytes(swapped[: len(data) // 2 * 2])))

    return echo_app(on_message)


def dies_on_unassigned() -> AppServer:
    """The whole application dies (stops listening, drops every call) on an unassigned kind."""
    server: list[AppServer] = []

    def on_message(call: ServerCall, t: float, message: Message) -> None:
        if message.name == "unknown":
            # shutdown wakes the accept() blocked in the server's thread; close alone does not.
            try:
                server[0].listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            server[0].close()
        elif message.is_audio and message.payload:
            call.send_message(message)

    app = echo_app(on_message)
    server.append(app)
    return app


APPS: dict[str, Callable[[], AppServer]] = {
    "good": good,
    "bursts": bursts,
    "always-8k": always_8k,
    "never-closes": never_closes,
    "dies-on-dtmf": dies_on_dtmf,
    "dtmf-back": dtmf_back,
    "uuid-back": uuid_back,
    "split-writes": split_writes,
    "big-endian": big_endian,
    "dies-on-unassigned": dies_on_unassigned,
}
