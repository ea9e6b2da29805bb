"""A fake voice bot for many calls at once, with known truths: one process, one thread.

tests/voice_bot.py holds a call per thread, which two cores cannot do for
hundreds of calls. This is the same bot for the default conversation (greet,
answer, stop when barged into) on one event loop (epoll, non-blocking
sockets), so that `audiosocket load --scenario` can be measured against it at
scale (benchmarks/bench_load_converse.py):

- it greets `--greet-ms` after accepting a call, answers each caller utterance
  `--reply-ms` after the caller's speech ended, and stops speaking `--stop-ms`
  after the caller barges in; each of the three takes a comma-separated list,
  cycled by call number (the order of acceptance, from 0), so that calls differ;
- it speaks espeak-ng speech (as voice_bot.speech(): espeak-ng, soundfile,
  soxr, 16-bit, trimmed to its first and last loud sample) in 20 ms frames,
  and silence frames while quiet, from the caller's first audio on, at the
  caller's rate; the frames are paced on a drift-free clock, one timer per
  millisecond slot of the 20 ms cycle (a call joins the slot of the
  millisecond after its acceptance), as calls are spread over the cycle;
- it hears the caller by energy as voice_bot does: a sample whose magnitude is
  above SOUND is sound; an utterance ends once HANGOVER of its audio has come
  without sound, at its last sound.

Its truths are voice_bot's, in seconds since it accepted the connection, on
the playout clock (a frame plays from max(its send time, the previous frame's
end)). At each call's end it writes one JSON line to `--log`: `uuid` (of the
call's first message, kind 0x01), `n` (call number), `rate`, `greeting` (its
start), `replies` ([caller end, reply start], ...), `barge_ins` ([caller's
barge-in start, speech end, play end], ...), `caller` (the caller's
utterances as heard), `late` (s: the latest a frame was sent after it was
due), `frames`, `duration`, and the delays it used. On SIGTERM or SIGINT it
prints a summary line (JSON) on stderr and exits 0.

A barge-in's speech end is where the last sound it sent before stopping ends
(the last sample above SOUND, on the playout clock): when its audio went
silent, which is what `converse` measures. voice_bot logs the play end of its
last frame instead (also logged here, third); the two differ when the bot
stops inside a pause between words, by the pause: the default scenario's
barge-in, 500 ms into the answer, with a 250 ms stop, cuts the answer right
after a 20 ms frame of digital silence, and the play end reads 30 ms late.

    python benchmarks/voice_bot_fleet.py --port 0 --log truth.jsonl
    python benchmarks/voice_bot_fleet.py --port 0 --log truth.jsonl --rates 16000 \\
        --greet-ms 500 --reply-ms 300,600,900,1200 --stop-ms 250

The first line on stdout is the port it listens on (127.0.0.1), once its
speech is rendered and it accepts calls.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import math
import os
import resource
import select
import signal
import socket
import sys
import time
import uuid as uuid_lib
from pathlib import Path
from typing import Any, TextIO

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's voice bot: its speech and rules

from voice_bot import ANSWERS, GREETING, HANGOVER, SOUND, speech  # noqa: E402

from audiosocket_cli.protocol.wire import AUDIO_RATES, RATE_KINDS, Decoder  # noqa: E402

FRAME = 0.02
SLOT = 0.001  # the timers: one per millisecond of the 20 ms cycle
SLOTS = 20
ANSWER = ANSWERS[0]
UUID_KIND = 0x01
LATE_BUCKETS = 2000  # 0.1 ms each: up to 200 ms


class Voice:
    """One utterance at one rate as whole messages of 20 ms (the last padded with zeros)."""

    def __init__(self, pcm: bytes, rate: int) -> None:
        size = int(rate * FRAME) * 2
        header = bytes((RATE_KINDS[rate], size >> 8, size & 0xFF))
        self.frames = [
            header + pcm[i : i + size].ljust(size, b"\0") for i in range(0, len(pcm), size)
        ]
        # Per frame: where its last sound ends, in s from the frame's start (None: silent).
        samples = np.frombuffer(pcm, dtype="<i2")
        self.sound_ends: list[float | None] = []
        for i in range(0, len(samples), size // 2):
            loud = np.flatnonzero(np.abs(samples[i : i + size // 2].astype(np.int32)) > SOUND)
            self.sound_ends.append(None if not len(loud) else (int(loud[-1]) + 1) / rate)


class Speech:
    """The bot's voices at each rate, and a silence message."""

    def __init__(self, rates: list[int]) -> None:
        self.voices: dict[tuple[str, int], Voice] = {}
        self.silence: dict[int, bytes] = {}
        for rate in rates:
            for what, text in (("greeting", GREETING), ("answer", ANSWER)):
                self.voices[what, rate] = Voice(speech(text, rate), rate)
        for kind, rate in AUDIO_RATES.items():
            size = int(rate * FRAME) * 2
            self.silence[rate] = bytes((kind, size >> 8, size & 0xFF)) + bytes(size)

    def voice(self, what: str, rate: int) -> Voice:
        """A voice rendered at start-up; at a rate not given to --rates, rendered now (once,
        while the loop waits: frames of every call run late meanwhile)."""
        voice = self.voices.get((what, rate))
        if voice is None:
            text = GREETING if what == "greeting" else ANSWER
            voice = self.voices[what, rate] = Voice(speech(text, rate), rate)
        return voice


@functools.lru_cache(maxsize=16)
def zeros(size: int) -> bytes:
    return bytes(size)


def cycled(values: list[float], n: int) -> float:
    return values[n % len(values)]


class Call:
    """One call: voice_bot's _Call, its frames given by the fleet's slot timers."""

    __slots__ = (
        "sock",
        "fd",
        "n",
        "t0",
        "uuid",
        "decoder",
        "rate",
        "greet",
        "reply",
        "stop",
        "queue",
        "voice",
        "what",
        "position",
        "start",
        "stop_at",
        "barged_at",
        "play_end",
        "sound_end",
        "caller_on",
        "caller_start",
        "last_sound",
        "quiet",
        "reply_due",
        "greeting",
        "replies",
        "barge_ins",
        "caller",
        "late",
        "frames",
        "pending",
        "slot",
    )

    def __init__(self, sock: socket.socket, n: int, t0: float, config: argparse.Namespace) -> None:
        self.sock, self.fd, self.n, self.t0 = sock, sock.fileno(), n, t0
        self.uuid: str | None = None
        self.decoder = Decoder()
        self.rate = 0
        self.greet = cycled(config.greet_ms, n) / 1000
        self.reply = cycled(config.reply_ms, n) / 1000
        self.stop = cycled(config.stop_ms, n) / 1000
        self.queue: list[tuple[float, str]] = [(self.greet, "greeting")]  # (start at, what)
        self.voice: Voice | None = None  # what it is saying now
        self.what = ""
        self.position = 0
        self.start = -1.0  # the playout start of what it is saying (-1: not yet)
        self.stop_at: float | None = None
        self.barged_at = 0.0
        self.play_end = 0.0
        self.sound_end = 0.0  # the playout time its last sound sent ended
        self.caller_on = False
        self.caller_start = 0.0
        self.last_sound = 0.0
        self.quiet = 0.0
        self.reply_due: float | None = None
        self.greeting: float | None = None
        self.replies: list[tuple[float, float]] = []
        self.barge_ins: list[tuple[float, float, float]] = []
        self.caller: list[list[float | None]] = []
        self.late = 0.0
        self.frames = 0
        self.pending = b""  # what a full socket buffer did not take
        self.slot = -1

    # What the caller says (voice_bot._heard, _caller_began, _caller_ended).

    def heard(self, t: float) -> None:
        for kind, payload in self.decoder.messages():
            rate = AUDIO_RATES.get(kind)
            if rate is None or not payload:
                if kind == UUID_KIND and self.uuid is None and len(payload) == 16:
                    self.uuid = str(uuid_lib.UUID(bytes=payload))
                continue
            if not self.rate:
                self.rate = rate
            if payload == zeros(len(payload)):  # digital silence: no numpy
                self.quiet += len(payload) / 2 / rate
                if self.caller_on and self.quiet >= HANGOVER:
                    self.caller_ended()
                continue
            samples = np.frombuffer(payload, dtype="<i2", count=len(payload) // 2)
            loud = np.flatnonzero((samples > SOUND) | (samples < -SOUND))
            if not len(loud):
                # Counted in audio, not in arrival times: a late frame is no longer pause.
                self.quiet += len(samples) / rate
                if self.caller_on and self.quiet >= HANGOVER:
                    self.caller_ended()
                continue
            if not self.caller_on:
                self.caller_began(t + int(loud[0]) / rate)
            last = int(loud[-1])
            self.last_sound = t + (last + 1) / rate
            self.quiet = (len(samples) - last - 1) / rate

    def caller_began(self, t: float) -> None:
        self.caller_on, self.caller_start = True, t
        self.caller.append([round(t, 4), None])
        if self.voice is not None and self.stop_at is None:
            self.stop_at, self.barged_at = t + self.stop, t

    def caller_ended(self) -> None:
        end = self.last_sound
        self.caller_on = False
        self.caller[-1][1] = round(end, 4)
        if self.voice is not None or self.stop_at is not None:
            return  # still speaking (or stopping): no reply
        self.queue.append((end + self.reply, "answer"))
        self.reply_due = end

    # What the bot says (voice_bot._frame, _start_next, _send).

    def frame(self, due: float, speech: Speech, monotonic: Any) -> bool:
        """Send the frame due at `due` (s since accept); False if the connection broke."""
        if self.stop_at is not None and due >= self.stop_at - 1e-9:
            self.stop_at = None
            if self.voice is not None:
                self.barge_ins.append((self.barged_at, self.sound_end, self.play_end))
                self.voice = None
        if self.voice is None and self.queue:
            ready = [item for item in self.queue if item[0] <= due + 1e-9]
            if ready:
                item = min(ready)
                self.queue.remove(item)
                self.what = item[1]
                self.voice, self.position, self.start = speech.voice(item[1], self.rate), 0, -1.0
        voice = self.voice
        message = speech.silence[self.rate] if voice is None else voice.frames[self.position]
        sent = monotonic() - self.t0
        if not self.send(message):
            return False
        self.frames += 1
        self.late = max(self.late, sent - due)
        play = max(sent, self.play_end)
        self.play_end = play + FRAME
        if voice is not None:
            if self.start < 0:
                self.start = play
                if self.what == "greeting" and self.greeting is None:
                    self.greeting = play
                elif self.what == "answer" and self.reply_due is not None:
                    self.replies.append((self.reply_due, play))
                    self.reply_due = None
            sound_end = voice.sound_ends[self.position]
            if sound_end is not None:
                self.sound_end = play + sound_end
            self.position += 1
            if self.position >= len(voice.frames):
                self.voice = None
        return True

    def send(self, message: bytes) -> bool:
        if self.pending:
            message = self.pending + message
        try:
            sent = self.sock.send(message)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return False
        self.pending = message[sent:]
        return True

    def truth(self, ended: float) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "n": self.n,
            "rate": self.rate,
            "greet_ms": round(self.greet * 1000, 3),
            "reply_ms": round(self.reply * 1000, 3),
            "stop_ms": round(self.stop * 1000, 3),
            "greeting": _r(self.greeting),
            "replies": [[_r(a), _r(b)] for a, b in self.replies],
            "barge_ins": [[_r(a), _r(b), _r(c)] for a, b, c in self.barge_ins],
            "caller": self.caller,
            "late": _r(self.late),
            "frames": self.frames,
            "duration": _r(ended - self.t0),
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class Fleet:
    """The listening socket, the calls, the 20 slot timers, on one epoll loop."""

    def __init__(self, args: argparse.Namespace, speech: Speech, log: TextIO) -> None:
        self.args, self.speech, self.log = args, speech, log
        self.server = socket.create_server(("127.0.0.1", args.port), backlog=4096)
        self.server.setblocking(False)
        self.port = self.server.getsockname()[1]
        self.epoll = select.epoll()
        self.epoll.register(self.server.fileno(), select.EPOLLIN)
        self.calls: dict[int, Call] = {}
        self.members: list[list[Call]] = [[] for _ in range(SLOTS)]
        self.heap: list[tuple[float, int]] = []  # (due, slot) of the slots with members
        self.epoch = time.monotonic()
        self.accepted = self.ended = 0
        self.late = [0] * LATE_BUCKETS
        self.running = True

    def serve(self) -> None:
        monotonic, poll = time.monotonic, self.epoll.poll
        server_fd, heap = self.server.fileno(), self.heap
        while self.running:
            timeout = max(0.0, heap[0][0] - monotonic()) if heap else 0.2
            try:
                events = poll(timeout)
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == server_fd:
                    self.accept()
                    continue
                call = self.calls.get(fd)
                if call is None:
                    continue
                try:
                    data = call.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.finish(call)
                    continue
                call.decoder.feed(data)
                call.heard(monotonic() - call.t0)
            now = monotonic()
            while heap and heap[0][0] <= now:
                due, slot = heapq.heappop(heap)
                self.fire(slot, due)
                if self.members[slot]:
                    heapq.heappush(heap, (due + FRAME, slot))
                now = monotonic()

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return
            t0 = time.monotonic()
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            call = Call(sock, self.accepted, t0, self.args)
            self.accepted += 1
            self.calls[call.fd] = call
            self.epoll.register(call.fd, select.EPOLLIN)
            # The slot of the millisecond after its acceptance.
            step = math.ceil((t0 - self.epoch) / SLOT)
            call.slot = step % SLOTS
            if not self.members[call.slot]:
                heapq.heappush(self.heap, (self.epoch + step * SLOT, call.slot))
            self.members[call.slot].append(call)

    def fire(self, slot: int, due: float) -> None:
        """Each call of the slot sends its frame due at `due` (once it knows its rate)."""
        monotonic, speech, late = time.monotonic, self.speech, self.late
        broken = []
        for call in self.members[slot]:
            if not call.rate:
                continue
            if not call.frame(due - call.t0, speech, monotonic):
                broken.append(call)
                continue
            late[min(LATE_BUCKETS - 1, int((monotonic() - due) * 1e4))] += 1
        for call in broken:
            self.finish(call)

    def finish(self, call: Call) -> None:
        ended = time.monotonic()
        if self.calls.pop(call.fd, None) is None:
            return
        try:
            self.epoll.unregister(call.fd)
        except OSError:
            pass
        call.sock.close()
        members = self.members[call.slot]
        members.remove(call)
        self.ended += 1
        self.log.write(json.dumps(call.truth(ended)) + "\n")
        self.log.flush()

    def summary(self) -> dict[str, Any]:
        frames = sum(self.late)
        out: dict[str, Any] = {"accepted": self.accepted, "ended": self.ended, "frames": frames}
        for name, q in (("late_p50_ms", 0.5), ("late_p99_ms", 0.99)):
            rank, seen = math.ceil(frames * q), 0
            out[name] = None
            for bucket, k in enumerate(self.late):
                seen += k
                if frames and seen >= rank:
                    out[name] = (bucket + 1) / 10
                    break
        top = max((b for b, k in enumerate(self.late) if k), default=None)
        out["late_max_ms"] = None if top is None else (top + 1) / 10
        user, system = os.times()[:2]
        out["cpu_s"] = round(user + system, 3)
        return out


def ms_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of milliseconds: {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"not a list of milliseconds: {text!r}")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0, help="on 127.0.0.1 (0: any free one)")
    parser.add_argument("--log", type=Path, required=True, help="the truths, a JSON line per call")
    parser.add_argument("--rates", default="8000", help="rates to render speech for: 8000,16000")
    parser.add_argument("--greet-ms", type=ms_list, default=[500.0], help="greets this late")
    parser.add_argument("--reply-ms", type=ms_list, default=[600.0], help="answers this late")
    parser.add_argument("--stop-ms", type=ms_list, default=[250.0], help="stops this late")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    unknown = [r for r in rates if r not in RATE_KINDS]
    if unknown:
        parser.error(f"no AudioSocket kind for {unknown}")
    speech = Speech(rates)  # espeak-ng now, not while a frame is due
    with open(args.log, "w") as log:
        fleet = Fleet(args, speech, log)

        def stop(signum: int, frame: Any) -> None:
            fleet.running = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(fleet.port, flush=True)
        fleet.serve()
        for call in list(fleet.calls.values()):
            fleet.finish(call)
    print(json.dumps(fleet.summary()), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
