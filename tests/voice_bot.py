"""A fake voice bot with known truths: what `converse` is measured against in the tests.

A real AudioSocket server on 127.0.0.1 port 0, a thread per call. It talks
with espeak-ng speech, paced at 20 ms on its own drift-free clock, and
behaves as configured (BotConfig): greets G ms after the connection, answers
each caller utterance R ms after the caller's speech ends, stops B ms after
the caller barges in (or never), optionally interjects while the caller
speaks (talk-over), optionally leaves a silence inside its first answer
(dead air), optionally sends nothing at all while quiet.

It hears the caller by energy: a sample above SOUND is sound; an utterance
ends once HANGOVER of its audio has come without sound, at its last sound. Every time it
logs is on its own clock (seconds since it accepted the connection) and on
the playout clock `converse` uses (a frame plays from max(its send time, the
previous frame's end)): the truths the tests compare with `converse`'s own
figures.
"""

from __future__ import annotations

import functools
import io
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from audiosocket_cli.protocol.wire import AUDIO_RATES, Decoder, Message

FRAME = 0.02
SOUND = 100  # |sample| above this is sound (about -50 dBFS)
HANGOVER = 0.2  # s without sound: the caller's utterance has ended

GREETING = "Hello there."
SHORT_ANSWER = "We open at nine."
ANSWERS = ("Yes, we open at nine in the morning on weekdays, and at ten on Saturdays.",)
INTERJECTION = "Uh huh, right."
DEAD_AIR_LEAD = "Sure."


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=64)
def speech(text: str, rate: int) -> bytes:
    """`text` spoken by espeak-ng at `rate`, 16-bit mono PCM, silence trimmed off both
    ends so that speech is the first and the last sample."""
    import numpy as np
    import soundfile as sf
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "175", "--stdout", text],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    samples, file_rate = sf.read(io.BytesIO(wav), dtype="float32")
    samples = soxr.resample(samples, file_rate, rate)
    pcm = np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2")
    loud = np.flatnonzero(np.abs(pcm) > SOUND * 4)
    return pcm[loud[0] : loud[-1] + 1].tobytes()


def _pick(values: float | Sequence[float] | None, n: int) -> float | None:
    """The n-th of a sequence (its last for any later n), or a single value."""
    if values is None or isinstance(values, (int, float)):
        return values
    return values[min(n, len(values) - 1)]


@dataclass
class BotConfig:
    greet_ms: float | None = 300  # None: never greets
    reply_ms: float | Sequence[float] = 400  # per reply, in order
    stop_ms: float | Sequence[float] | None = 200  # per barge-in; None: never stops
    talk_over_ms: float | None = None  # interject this far into the caller's first utterance
    dead_air: float | None = None  # seconds of silence inside the first answer
    silence_frames: bool = True  # False: send nothing while quiet
    answers: Sequence[str] = ANSWERS  # in order, the last repeated
    hangup_after: int | None = None  # hang up (0x00, close) after this many answers
    crash_ms: float | None = None  # the process dies this long after the connection (a reset)


@dataclass
class Spoken:
    what: str  # greeting, answer, interjection
    start: float  # on the playout clock (s since accept)
    end: float | None = None  # the end of its last frame sent
    cut: bool = False  # stopped by a barge-in


@dataclass
class CallLog:
    """What the bot did and heard, in seconds since it accepted the call."""

    rate: int = 0
    spoken: list[Spoken] = field(default_factory=list)
    caller: list[tuple[float, float | None]] = field(default_factory=list)  # start, end
    replies: list[tuple[float, float]] = field(default_factory=list)  # caller end, answer began
    barge_ins: list[tuple[float, float]] = field(default_factory=list)  # caller start, speech end
    late: float = 0.0  # s: the latest it sent a frame after the frame was due (a busy machine)
    ended: threading.Event = field(default_factory=threading.Event)

    def first(self, what: str) -> Spoken:
        return next(s for s in self.spoken if s.what == what)


class _Call:
    def __init__(self, sock: socket.socket, config: BotConfig, log: CallLog) -> None:
        self.sock, self.config, self.log = sock, config, log
        self.t0 = time.monotonic()
        self.decoder = Decoder()
        self.rate = 0
        self.playing: Spoken | None = None
        self.pcm = b""
        self.position = 0
        self.queue: list[tuple[float, str, str]] = []  # (start at, what, text)
        self.stop_at: float | None = None
        self.barged_at = 0.0  # when the caller began the barge-in being answered
        self.play_end = 0.0
        self.caller_on = False
        self.caller_start = 0.0
        self.last_sound = 0.0
        self.quiet = 0.0  # s of the caller's audio without sound since its last sound
        self.utterances = 0  # the caller's
        self.answers = 0
        self.barge_ins = 0
        self.hangup = False
        self.reply_due: float | None = None  # the caller's end an answer is due for

    def now(self) -> float:
        return time.monotonic() - self.t0

    def run(self) -> None:
        try:
            self._loop()
        except OSError:
            pass
        finally:
            self.log.ended.set()
            try:
                self.sock.close()
            except OSError:
                pass

    def _loop(self) -> None:
        config = self.config
        if config.greet_ms is not None:
            self.queue.append((config.greet_ms / 1000, "greeting", GREETING))
        k = 0
        while True:
            due = k * FRAME
            while True:
                wait = due - self.now()
                ready, _, _ = select.select([self.sock], [], [], max(0.0, wait))
                if ready:
                    data = self.sock.recv(65536)
                    if not data:
                        return
                    self._heard(data, self.now())
                if self.now() >= due:
                    break
            k += 1
            if self.rate:
                self.log.late = max(self.log.late, self.now() - due)
                self._frame(due)
            if self.hangup:
                self.sock.sendall(Message.hangup().encode())
                return
            if config.crash_ms is not None and due >= config.crash_ms / 1000:
                # As a crashed process's socket with the caller's audio unread: a reset.
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                return

    # What the caller says.

    def _heard(self, data: bytes, t: float) -> None:
        import numpy as np

        self.decoder.feed(data)
        for message in self.decoder.messages():
            if message.kind not in AUDIO_RATES or not message.payload:
                continue
            rate = AUDIO_RATES[message.kind]
            if not self.rate:
                self.rate = self.log.rate = rate
            samples = np.frombuffer(message.payload, dtype="<i2")
            loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > SOUND)
            if len(loud):
                if not self.caller_on:
                    self._caller_began(t + loud[0] / rate)
                self.last_sound = t + (loud[-1] + 1) / rate
                self.quiet = (len(samples) - loud[-1] - 1) / rate
            else:
                # Counted in audio, not in arrival times: a late frame is no longer pause.
                self.quiet += len(samples) / rate
                if self.caller_on and self.quiet >= HANGOVER:
                    self._caller_ended()

    def _caller_began(self, t: float) -> None:
        self.caller_on, self.caller_start = True, t
        self.log.caller.append((t, None))
        config = self.config
        if (
            self.playing is not None
            and self.playing.what != "interjection"
            and (
                self.stop_at is None  # a barge-in already being answered is not a new one
            )
        ):
            stop = _pick(config.stop_ms, self.barge_ins)
            self.barge_ins += 1
            if stop is not None:
                self.stop_at, self.barged_at = t + stop / 1000, t
        if config.talk_over_ms is not None and self.utterances == 0:
            self.queue.append((t + config.talk_over_ms / 1000, "interjection", INTERJECTION))
        self.utterances += 1

    def _caller_ended(self) -> None:
        end = self.last_sound
        self.caller_on = False
        self.log.caller[-1] = (self.caller_start, end)
        if self.playing is not None or self.stop_at is not None:
            return  # still speaking (or stopping): no reply
        config = self.config
        at = end + (_pick(config.reply_ms, self.answers) or 0) / 1000
        text = config.answers[min(self.answers, len(config.answers) - 1)]
        if config.dead_air is not None and self.answers == 0:
            self.queue.append((at, "answer", DEAD_AIR_LEAD))
            self.queue.append((at + 0.01, "answer-rest", text))
        else:
            self.queue.append((at, "answer", text))
        self.reply_due = end  # logged with the answer's start, when it starts
        self.answers += 1

    # What the bot says.

    def _frame(self, due: float) -> None:
        size = int(self.rate * FRAME) * 2
        if self.stop_at is not None and due >= self.stop_at - 1e-9:
            self.stop_at = None
            if self.playing is not None:
                self.playing.cut = True
                self.log.barge_ins.append((self.barged_at, self.play_end))
                self.playing = None
        if self.playing is None:
            self._start_next(due)
        if self.playing is None:
            if self.config.silence_frames:
                self._send(bytes(size), speech=False)
            return
        chunk = self.pcm[self.position : self.position + size]
        self.position += len(chunk)
        self._send(chunk + bytes(size - len(chunk)), speech=True)
        self.playing.end = self.play_end - (size - len(chunk)) / 2 / self.rate
        if self.position >= len(self.pcm):
            self.playing = None
            if self.config.hangup_after is not None and self.answers >= self.config.hangup_after:
                self.hangup = not self.queue

    def _start_next(self, due: float) -> None:
        ready = [item for item in self.queue if item[0] <= due + 1e-9]
        if not ready:
            return
        item = min(ready)
        self.queue.remove(item)
        at, what, text = item
        if what == "answer-rest":  # after the dead air
            self.queue.append((due + (self.config.dead_air or 0), "answer", text))
            return
        self.pcm, self.position = speech(text, self.rate), 0
        self.playing = Spoken(what, start=-1.0)
        self.log.spoken.append(self.playing)

    def _send(self, pcm: bytes, speech: bool) -> None:
        sent = self.now()
        self.sock.sendall(Message.audio(pcm, self.rate).encode())
        play = max(sent, self.play_end)
        self.play_end = play + len(pcm) / 2 / self.rate
        if speech and self.playing is not None and self.playing.start < 0:
            self.playing.start = play
            if self.playing.what == "answer" and self.reply_due is not None:
                self.log.replies.append((self.reply_due, play))
                self.reply_due = None


class VoiceBot:
    """The server: `with VoiceBot(BotConfig(...)) as bot:` then call `bot.port`;
    `bot.calls` holds each call's CallLog."""

    def __init__(self, config: BotConfig | None = None, rates: Sequence[int] = (8000,)) -> None:
        self.config = config or BotConfig()
        for rate in rates:  # espeak-ng now, not while a frame is due
            for text in (GREETING, INTERJECTION, DEAD_AIR_LEAD, SHORT_ANSWER, *self.config.answers):
                speech(text, rate)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.calls: list[CallLog] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            log = CallLog()
            self.calls.append(log)
            thread = threading.Thread(
                target=_Call(sock, self.config, log).run, name="voice-bot", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def close(self) -> None:
        try:
            self.server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.server.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> VoiceBot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
