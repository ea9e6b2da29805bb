"""AudioSocket applications that behave like real voice agents, each a real process.

Most AudioSocket applications are voice agents (speech-to-text, an LLM,
text-to-speech): slow to speak, serving a few calls at a time, needing their
call registered before Asterisk connects, pacing their speech imperfectly, and
sometimes crashing. `check` and `load` are tested against these. Each runs as
its own process, so that a crash is a real process exit: the listening socket
gone, the connections closed by the kernel.

Run one:

    python tests/real_apps.py NAME [--options]

It listens on 127.0.0.1 port 0, prints ``listening on 127.0.0.1:PORT`` as its
first line on stderr, then serves until killed (SIGTERM ends it at once). Its
events follow on stderr, one line each; a call's lines end with ``call=N``
(the connection's number, from 1, in accept order); times ``T`` are seconds
since the call's UUID arrived, unless a line says otherwise:

- every app: ``accepted call=N``, ``uuid U call=N``, ``caller closed call=N``
  (or ``caller reset``), ``closed call=N``; ``no uuid first: ...`` (the first
  message was not a UUID: the call is closed, except by ``gated``);
- ``slow-greeter``: ``greeting at T``, ``greeting done at T``, ``turn end at T``
  (the caller finished speaking), ``reply at T``, ``reply done at T``;
- ``tts``: ``first audio at T``, ``stall at T`` (each synthesis stall);
- ``limited``: ``waiting for a slot``, ``serving``, ``discarded N messages
  (B bytes)``, ``slot freed``;
- ``crashy``: ``died: REASON`` (and the process exits with status 1);
- ``gated``: a second line ``http on 127.0.0.1:PORT``, then ``registered U``,
  ``serving U``, ``not served: ...; not closed (leak)``;
- ``preroll``: ``speech at T``, T in seconds since its own first audio frame;
- ``silent-echo``: ``first audio at T``.

The applications (options are flags here, keyword arguments of
:func:`real_app`):

- ``slow-greeter`` (``--greet-after 1.2``, ``--greeting TEXT``,
  ``--reply-after 0.8``, ``--reply TEXT``): a spoken greeting (espeak-ng)
  S seconds after the UUID, then a half-duplex turn-taker: after at least
  300 ms of caller audio above -40 dBFS followed by 600 ms without any, a
  spoken reply, ``--reply-after`` later. Caller audio counts only while it
  listens (not while it speaks, nor while it thinks);
- ``tts`` (``--slow 0.04``, ``--stall-every 1.5``, ``--stall 0.15``,
  ``--first-after 0.3``): speech streamed for the whole call, one 20 ms frame
  every 20 ms x (1 + slow), and ``--stall`` seconds of nothing after every
  ``--stall-every`` seconds of audio (never caught up);
- ``limited`` (``--max 4``, ``--serve-delay 0.05``): an echo bot serving at most
  N calls at once; the others are accepted and left unread until a slot frees;
  what they buffered meanwhile is discarded (but the UUID);
- ``crashy`` (``--die-on 16k|dtmf|reset|never``): an echo bot whose process
  dies on the first 16 kHz audio, the first DTMF, or a reset by the caller;
- ``gated`` (``--http-port 0``): ``POST /calls/<uuid>`` registers a call
  (201; anything else 404); a registered call is echoed (the registration is
  used once); any other connection is never read again and never closed;
- ``preroll`` (``--preroll 0.7``, ``--noise DBFS``): at once, ``--preroll``
  seconds of digital silence (or noise at DBFS), one utterance, then silence,
  for the whole call;
- ``silent-echo``: digital silence at real time for the whole call (a bot with
  nothing to say).

Every app answers at 8 kHz until the caller's audio arrives, then at the
caller's rate; paces its audio on a drift-free clock (frame k at start +
k x interval); sends each message, header and payload, in one send, with
TCP_NODELAY; and closes its side when the caller closes (EOF or reset), but
for ``gated``'s leaks. Speech is generated with espeak-ng at start-up (before
the listening line); without espeak-ng the apps that speak exit with an
``error:`` line and status 1.
"""

from __future__ import annotations

import argparse
import collections
import functools
import http.server
import os
import queue
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuid_lib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from audiosocket_cli.net.address import Address
from audiosocket_cli.protocol.wire import Decoder, Kind, Message

SCRIPT = Path(__file__).resolve()
FRAME = 0.020  # seconds of audio per message
START_TIMEOUT = 10.0
VOICED_DBFS = -40.0  # caller audio above this is speech
TURN_MIN_VOICED = 0.300  # seconds of caller speech that make a turn
TURN_QUIET = 0.600  # seconds without caller speech that end it
TTS_PAUSE = 0.300  # between the tts app's sentences
ONSET_WINDOW = 0.010  # the preroll app's speech onset: first 10 ms window above -40 dBFS

GREETING = "Hello, thanks for calling."
REPLY = "Sure, one moment."
TTS_TEXT = "Your order has shipped and should arrive on Tuesday."
PREROLL_TEXT = "Hello, how can I help you?"


# Logging: one line per event, on stderr, flushed.

_say_lock = threading.Lock()


def say(line: str) -> None:
    with _say_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def die(reason: str) -> None:
    """The whole process, at once: the kernel closes every socket."""
    say(f"died: {reason}")
    os._exit(1)


# Speech.


class Clip:
    """A mono clip (an espeak-ng WAV), as 16-bit PCM 20 ms frames at any call rate.

    Resampled once per rate (soxr), so that a call whose rate changes goes on
    from the same moment of the clip at the new rate.
    """

    def __init__(self, samples: Any, rate: int) -> None:
        self.samples = samples
        self.rate = rate
        self.seconds = len(samples) / rate
        self.frames = max(1, -int(-self.seconds // FRAME))  # ceil
        self._pcm: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def pcm(self, rate: int) -> bytes:
        with self._lock:
            if rate not in self._pcm:
                import numpy as np
                import soxr

                samples = self.samples
                if rate != self.rate:
                    samples = soxr.resample(samples, self.rate, rate, quality="HQ")
                scaled = np.clip(np.round(samples * 32768.0), -32768, 32767)
                self._pcm[rate] = scaled.astype("<i2").tobytes()
            return self._pcm[rate]

    def frame(self, k: int, rate: int) -> bytes:
        """Frame k (20 ms) at `rate`; the last one padded with silence to 20 ms."""
        size = rate // 50 * 2
        chunk = self.pcm(rate)[k * size : (k + 1) * size]
        return chunk + bytes(size - len(chunk))

    def onset(self) -> float:
        """Seconds into the clip of the first 10 ms window above -40 dBFS RMS (at its own rate)."""
        import numpy as np

        threshold = 10 ** (VOICED_DBFS / 20)
        windows = int(self.seconds / ONSET_WINDOW)
        for j in range(windows):
            lo, hi = j * self.rate // 100, (j + 1) * self.rate // 100
            window = self.samples[lo:hi].astype(np.float64)
            if window.size and np.sqrt(np.mean(window * window)) > threshold:
                return lo / self.rate
        return 0.0


def espeak(texts: list[str]) -> list[Clip]:
    """Each text spoken by espeak-ng (-s 160), or exit with an error line if it is missing."""
    program = shutil.which("espeak-ng")
    if program is None:
        say("error: espeak-ng is not installed: this app speaks (apt-get install espeak-ng)")
        sys.exit(1)
    import soundfile

    clips = []
    with tempfile.TemporaryDirectory(prefix="real-apps-") as tmp:
        for i, text in enumerate(texts):
            path = os.path.join(tmp, f"speech-{i}.wav")
            done = subprocess.run(
                [program, "-w", path, "-s", "160", text], capture_output=True, text=True
            )
            if done.returncode != 0:
                say(f"error: espeak-ng failed: {done.stderr.strip()}")
                sys.exit(1)
            samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
            clip = Clip(samples[:, 0].copy(), int(rate))
            clip.pcm(8000)  # the usual rate ready before the first call
            clips.append(clip)
    return clips


def noise_frame(rate: int, dbfs: float) -> bytes:
    """20 ms of white noise at `dbfs` RMS."""
    import numpy as np

    sigma = 32768.0 * 10 ** (dbfs / 20)
    samples = np.random.default_rng().normal(0.0, sigma, rate // 50)
    return np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()


# One call.


class Call:
    """One accepted connection: buffered message reads, one-send writes, one close."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.uuid: str | None = None
        self.uuid_at = time.monotonic()
        self.rate = 8000  # the caller's audio rate, once audio came
        self.ended = threading.Event()  # the caller closed or reset (or a read failed)
        self.end_how = ""  # eof, reset, or the read's error
        self.send_error: OSError | None = None
        self._decoder = Decoder()
        self._pending: collections.deque[Message] = collections.deque()
        self._closed = False

    def log(self, text: str) -> None:
        say(f"{text} call={self.number}")

    def since_uuid(self, t: float | None = None) -> str:
        return f"{(time.monotonic() if t is None else t) - self.uuid_at:.3f}"

    # Reading.

    def next_message(self) -> Message | None:
        """The next whole message (blocking); None once the caller closed or reset."""
        while not self._pending:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                self._end("reset")
                return None
            except OSError as exc:
                self._end(f"error {exc.strerror or exc}")
                return None
            if not data:
                self._end("eof")
                return None
            self._feed(data)
        return self._pending.popleft()

    def _feed(self, data: bytes) -> None:
        self._decoder.feed(data)
        self._pending.extend(self._decoder.messages())

    def _end(self, how: str) -> None:
        if not self.end_how:
            self.end_how = how
            if how == "reset":
                self.log("caller reset")
            elif how == "eof":
                self.log("caller closed")
            else:
                self.log(f"caller gone ({how})")
        self.ended.set()

    def read_uuid(self) -> bool:
        """The caller's first message, which must be its UUID: logged; False otherwise."""
        message = self.next_message()
        if message is None:
            return False
        if message.kind != Kind.UUID or message.uuid is None:
            self.log(f"no uuid first: kind 0x{message.kind:02x}, {len(message.payload)} bytes")
            return False
        self.uuid_at = time.monotonic()
        self.uuid = str(message.uuid)
        self.log(f"uuid {self.uuid}")
        return True

    def drain(self) -> tuple[list[Message], int]:
        """Whatever the socket holds now, without waiting: (whole messages, bytes)."""
        messages = list(self._pending)
        self._pending.clear()
        total = 0
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionResetError:
                    self._end("reset")
                    break
                except OSError as exc:
                    self._end(f"error {exc.strerror or exc}")
                    break
                if not data:
                    self._end("eof")
                    break
                total += len(data)
                self._decoder.feed(data)
                messages.extend(self._decoder.messages())
        finally:
            self.sock.setblocking(True)
        return messages, total

    def start_reader(
        self,
        on_message: Callable[[float, Message], None] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """Read the rest of the call in a thread: the caller's rate followed, `ended` set."""

        def read() -> None:
            while (message := self.next_message()) is not None:
                if message.is_audio and message.payload and message.rate:
                    self.rate = message.rate
                if on_message is not None:
                    on_message(time.monotonic(), message)
            if on_end is not None:
                on_end()

        threading.Thread(target=read, daemon=True).start()

    # Writing and closing.

    def send(self, data: bytes) -> bool:
        """One message, header and payload, in one send; False if the connection is gone."""
        try:
            self.sock.sendall(data)
            return True
        except OSError as exc:
            self.send_error = exc
            return False

    def send_audio(self, pcm: bytes, rate: int) -> bool:
        return self.send(Message.audio(pcm, rate).encode())

    def wait_until(self, due: float) -> bool:
        """Sleep until `due` (monotonic); False at once if the caller ended the call."""
        delay = due - time.monotonic()
        if delay > 0:
            return not self.ended.wait(delay)
        return not self.ended.is_set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.ended.is_set():
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv
            except OSError:
                pass
        self.sock.close()
        self.log("closed")


class Talker:
    """Paced audio for one call: frame k at start + k x interval (a drift-free clock)."""

    def __init__(self, call: Call, start: float) -> None:
        self.call = call
        self.start = start
        self.k = 0  # frames sent so far from `start`

    def send(self, make: Callable[[int], bytes], due: float | None = None) -> bool:
        """The next frame (`make(rate)`), at `due` or at start + k x 20 ms."""
        call = self.call
        if not call.wait_until(self.start + self.k * FRAME if due is None else due):
            return False
        rate = call.rate
        self.k += 1
        return call.send_audio(make(rate), rate)

    def play(self, clip: Clip) -> bool:
        """The whole clip at real time, at the caller's rate as it is at each frame."""
        return all(self.send(functools.partial(clip.frame, j)) for j in range(clip.frames))


# The applications. Each is a class built once from its options; serve(call)
# runs in the call's own thread and closes the call (or leaks it, on purpose).


class App:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options

    def after_listening(self) -> None:
        """Lines printed after the listening line (the gated app's HTTP port)."""

    def serve(self, call: Call) -> None:
        raise NotImplementedError


class SlowGreeter(App):
    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__(options)
        self.greeting, self.reply = espeak([options.greeting, options.reply])

    def serve(self, call: Call) -> None:
        from audiosocket_cli.analysis.levels import level_dbfs

        if not call.read_uuid():
            call.close()
            return
        lock = threading.Lock()
        turn = {"listening": False, "voiced": 0.0, "last": 0.0}

        def on_message(t: float, message: Message) -> None:
            if not (message.is_audio and message.payload):
                return
            level = level_dbfs(message.payload)
            with lock:
                if turn["listening"] and level is not None and level > VOICED_DBFS:
                    turn["voiced"] += message.duration
                    turn["last"] = t

        call.start_reader(on_message)
        opts = self.options
        if call.wait_until(call.uuid_at + opts.greet_after):
            call.log(f"greeting at {call.since_uuid()}")
            if Talker(call, time.monotonic()).play(self.greeting):
                call.log(f"greeting done at {call.since_uuid()}")
                self._converse(call, lock, turn)
        call.close()

    def _converse(self, call: Call, lock: threading.Lock, turn: dict[str, Any]) -> None:
        """Listen (sending nothing) until the caller has spoken and gone quiet; reply; again."""
        while True:
            with lock:
                turn.update(listening=True, voiced=0.0, last=0.0)
            while True:
                if call.ended.wait(0.010):
                    return
                now = time.monotonic()
                with lock:
                    if turn["voiced"] >= TURN_MIN_VOICED and now - turn["last"] >= TURN_QUIET:
                        turn["listening"] = False
                        break
            call.log(f"turn end at {call.since_uuid()}")
            if not call.wait_until(time.monotonic() + self.options.reply_after):
                return
            call.log(f"reply at {call.since_uuid()}")
            if not Talker(call, time.monotonic()).play(self.reply):
                return
            call.log(f"reply done at {call.since_uuid()}")


class Tts(App):
    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__(options)
        (self.speech,) = espeak([TTS_TEXT])

    def serve(self, call: Call) -> None:
        if not call.read_uuid():
            call.close()
            return
        call.start_reader()
        opts = self.options
        interval = FRAME * (1 + opts.slow)
        stalling = opts.stall > 0 and opts.stall_every > 0
        per_stall = round(opts.stall_every / FRAME) if stalling else 0
        pause = round(TTS_PAUSE / FRAME)
        loop = self.speech.frames + pause
        talker = Talker(call, call.uuid_at + opts.first_after)
        # A sender whose timer wakes late by up to --jitter, frame by frame (never
        # early, never piling up): real time on average, uneven frame to frame.
        late = random.Random(call.number).uniform if opts.jitter > 0 else None
        k = 0
        while True:
            stalls = k // per_stall if per_stall else 0
            due = talker.start + k * interval + stalls * opts.stall
            if late is not None:
                due += late(0, opts.jitter)
            if per_stall and k and k % per_stall == 0:
                call.log(f"stall at {call.since_uuid(due - opts.stall)}")
            j = k % loop

            def make(rate: int, j: int = j) -> bytes:
                speaking = j < self.speech.frames
                return self.speech.frame(j, rate) if speaking else bytes(rate // 50 * 2)

            if not talker.send(make, due):
                break
            if k == 0:
                call.log(f"first audio at {call.since_uuid()}")
            k += 1
        call.close()


class Preroll(App):
    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__(options)
        (self.speech,) = espeak([PREROLL_TEXT])
        self.onset = self.speech.onset()

    def serve(self, call: Call) -> None:
        if not call.read_uuid():
            call.close()
            return
        call.start_reader()
        opts = self.options
        pre = round(opts.preroll / FRAME)
        talker = Talker(call, time.monotonic())
        call.log(f"speech at {pre * FRAME + self.onset:.3f}")

        def filler(rate: int) -> bytes:
            return bytes(rate // 50 * 2) if opts.noise is None else noise_frame(rate, opts.noise)

        k = 0
        while True:
            j = k - pre
            if 0 <= j < self.speech.frames:
                sent = talker.send(functools.partial(self.speech.frame, j))
            else:
                sent = talker.send(filler)
            if not sent:
                break
            k += 1
        call.close()


class SilentEcho(App):
    def serve(self, call: Call) -> None:
        if not call.read_uuid():
            call.close()
            return
        call.start_reader()
        talker = Talker(call, time.monotonic())
        call.log(f"first audio at {call.since_uuid()}")
        while talker.send(lambda rate: bytes(rate // 50 * 2)):
            pass
        call.close()


class Limited(App):
    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__(options)
        self.slots = threading.BoundedSemaphore(options.max)

    def serve(self, call: Call) -> None:
        waited = not self.slots.acquire(blocking=False)
        if waited:
            call.log("waiting for a slot")
            self.slots.acquire()
        try:
            self._serve(call, waited)
        finally:
            call.close()
            self.slots.release()
            call.log("slot freed")

    def _serve(self, call: Call, waited: bool) -> None:
        call.log("serving")
        # A call that waited: what its socket buffered meanwhile is dropped, but for the UUID.
        buffered, _ = call.drain() if waited else ([], 0)
        if buffered:
            first, dropped = buffered[0], buffered[1:]
            if first.kind != Kind.UUID or first.uuid is None:
                call.log(f"no uuid first: kind 0x{first.kind:02x}, {len(first.payload)} bytes")
                return
            call.uuid_at, call.uuid = time.monotonic(), str(first.uuid)
            call.log(f"uuid {call.uuid}")
            dropped_bytes = sum(3 + len(m.payload) for m in dropped)
            call.log(f"discarded {len(dropped)} messages ({dropped_bytes} bytes)")
        elif call.ended.is_set() or not call.read_uuid():
            return
        if call.ended.is_set():
            return
        delay = self.options.serve_delay
        echoes: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()

        def on_message(t: float, message: Message) -> None:
            if message.is_audio and message.payload:
                echoes.put((t + delay, message.encode()))

        call.start_reader(on_message, on_end=lambda: echoes.put(None))
        while (item := echoes.get()) is not None:
            due, data = item
            if not call.wait_until(due) or not call.send(data):
                return


class Crashy(App):
    def serve(self, call: Call) -> None:
        die_on = self.options.die_on
        if call.read_uuid():
            while (message := call.next_message()) is not None:
                if die_on == "16k" and message.kind == Kind.AUDIO_16K:
                    die("16 kHz audio")
                if die_on == "dtmf" and message.kind == Kind.DTMF:
                    die(f"dtmf {message.digit or message.payload.hex()}")
                if message.is_audio and message.payload and not call.send(message.encode()):
                    if isinstance(call.send_error, ConnectionResetError) and die_on == "reset":
                        die("connection reset by the caller (on send)")
                    break
        if call.end_how == "reset" and die_on == "reset":
            die("connection reset by the caller")
        call.close()


class Gated(App):
    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__(options)
        self.registered: set[str] = set()
        self.lock = threading.Lock()
        self.leaked: list[socket.socket] = []  # kept, so that they are never closed
        self.http = http.server.ThreadingHTTPServer(
            ("127.0.0.1", options.http_port), self._handler_class()
        )
        self.http.daemon_threads = True

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, status: int, body: bytes) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 (http.server's names)
                match = re.fullmatch(r"/calls/([0-9A-Fa-f-]{32,36})", self.path)
                try:
                    value = str(uuid_lib.UUID(match.group(1))) if match else None
                except ValueError:
                    value = None
                if value is None:
                    self._answer(404, b"not found\n")
                    return
                with app.lock:
                    app.registered.add(value)
                say(f"registered {value}")
                self._answer(201, b"registered\n")

            def _not_found(self) -> None:
                self._answer(404, b"not found\n")

            do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_found  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the events above are the log

        return Handler

    def after_listening(self) -> None:
        say(f"http on 127.0.0.1:{self.http.server_address[1]}")
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def serve(self, call: Call) -> None:
        message = call.next_message()
        if message is None:
            self._leak(call, "ended before a uuid")
            return
        if message.kind != Kind.UUID or message.uuid is None:
            self._leak(call, f"no uuid first (kind 0x{message.kind:02x})")
            return
        call.uuid_at, call.uuid = time.monotonic(), str(message.uuid)
        call.log(f"uuid {call.uuid}")
        with self.lock:
            known = call.uuid in self.registered
            self.registered.discard(call.uuid)  # a registration is used once
        if not known:
            self._leak(call, f"unregistered {call.uuid}")
            return
        call.log(f"serving {call.uuid}")
        while (message := call.next_message()) is not None:
            if message.is_audio and message.payload and not call.send(message.encode()):
                break
        call.close()

    def _leak(self, call: Call, why: str) -> None:
        """Stop reading and never close: the socket stays in CLOSE-WAIT once the caller closes."""
        self.leaked.append(call.sock)
        call.log(f"not served: {why}; not closed (leak)")


APPS: dict[str, type[App]] = {
    "slow-greeter": SlowGreeter,
    "tts": Tts,
    "limited": Limited,
    "crashy": Crashy,
    "gated": Gated,
    "preroll": Preroll,
    "silent-echo": SilentEcho,
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    apps = top.add_subparsers(dest="name", required=True, metavar="NAME")
    p = apps.add_parser("slow-greeter", help="a spoken greeting after a delay, then turn-taking")
    p.add_argument("--greet-after", type=float, default=1.2, metavar="S")
    p.add_argument("--greeting", default=GREETING, metavar="TEXT")
    p.add_argument("--reply-after", type=float, default=0.8, metavar="S")
    p.add_argument("--reply", default=REPLY, metavar="TEXT")
    p = apps.add_parser("tts", help="speech streamed slightly slow, with synthesis stalls")
    p.add_argument("--slow", type=float, default=0.04, metavar="FRACTION")
    p.add_argument("--stall-every", type=float, default=1.5, metavar="S")
    p.add_argument("--stall", type=float, default=0.15, metavar="S")
    p.add_argument("--first-after", type=float, default=0.3, metavar="S")
    p.add_argument("--jitter", type=float, default=0.0, metavar="S")
    p = apps.add_parser("limited", help="an echo bot serving at most N calls at once")
    p.add_argument("--max", type=int, default=4, metavar="N")
    p.add_argument("--serve-delay", type=float, default=0.05, metavar="S")
    p = apps.add_parser("crashy", help="an echo bot whose process dies on a trigger")
    p.add_argument("--die-on", choices=["16k", "dtmf", "reset", "never"], default="never")
    p = apps.add_parser("gated", help="an echo bot for calls registered by HTTP first")
    p.add_argument("--http-port", type=int, default=0, metavar="PORT")
    p = apps.add_parser("preroll", help="silence (or noise), one utterance, silence")
    p.add_argument("--preroll", type=float, default=0.7, metavar="S")
    p.add_argument("--noise", type=float, default=None, metavar="DBFS")
    apps.add_parser("silent-echo", help="digital silence at real time")
    return top


def main(argv: list[str] | None = None) -> None:
    options = parser().parse_args(argv)
    app = APPS[options.name](options)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    say(f"listening on 127.0.0.1:{listener.getsockname()[1]}")
    app.after_listening()
    number = 0
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        number += 1
        call = Call(sock, number)
        call.log("accepted")
        threading.Thread(target=_serve, args=(app, call), daemon=True).start()


def _serve(app: App, call: Call) -> None:
    try:
        app.serve(call)
    except Exception as exc:  # a bug here, not a behaviour: say so, and end the call
        call.log(f"error: {type(exc).__name__}: {exc}")
        call.close()


# For the tests: each app as a real process.


class RealApp:
    """A running app: its process, address, and what it wrote on stderr."""

    def __init__(self, name: str, proc: subprocess.Popen[str]) -> None:
        self.name = name
        self.proc = proc
        self.address = Address("127.0.0.1", 0)
        self.http_port: int | None = None
        self._lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    @property
    def port(self) -> int:
        return self.address.port

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """Everything the app wrote on stderr so far."""
        with self._changed:
            return "".join(line + "\n" for line in self._lines)

    def lines(self, prefix: str = "") -> list[str]:
        with self._changed:
            return [line for line in self._lines if line.startswith(prefix)]

    def wait_line(self, prefix: str, timeout: float = 5.0, count: int = 1) -> str | None:
        """The `count`-th line starting with `prefix`, waiting for it; None if it did not come."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self._lines if line.startswith(prefix)]
                if len(found) >= count:
                    return found[count - 1]
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()


@contextmanager
def real_app(name: str, **options: Any) -> Iterator[RealApp]:
    """Start `python tests/real_apps.py NAME --option=value ...`; killed and reaped on exit.

    Raises RuntimeError (with the app's stderr) if it does not print its
    listening line within 10 s.
    """
    if name not in APPS:
        raise ValueError(f"no app {name!r} (one of {', '.join(APPS)})")
    args = [sys.executable, str(SCRIPT), name]
    for key, value in options.items():
        if value is not None:
            args.append(f"--{key.replace('_', '-')}={value}")
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    app = RealApp(name, proc)
    try:
        line = app.wait_line("listening on ", START_TIMEOUT)
        first = app.lines()[:1]
        if line is None or first != [line]:
            raise RuntimeError(f"{name} did not start (status {proc.poll()}):\n{app.log()}")
        host, _, port = line.removeprefix("listening on ").rpartition(":")
        app.address = Address(host, int(port))
        if name == "gated":
            http_line = app.wait_line("http on ", START_TIMEOUT)
            if http_line is None:
                raise RuntimeError(f"{name} did not start its HTTP server:\n{app.log()}")
            app.http_port = int(http_line.rpartition(":")[2])
        yield app
    finally:
        proc.kill()
        proc.wait()
        app._reader.join(5)  # the rest of its stderr, up to the pipe's end
        if proc.stderr is not None:
            proc.stderr.close()


if __name__ == "__main__":
    main()
