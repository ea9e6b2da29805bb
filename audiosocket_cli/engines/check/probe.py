"""One call to the application, placed as Asterisk places it, and what every case shares.

A :class:`Probe` writes the bytes a case calls for, at the moments it calls
for, and a receiver thread feeds what the application sends to an
Asterisk-side protocol.session.Session, to analysis.stats.DirectionStats and
to the speech detector (analysis.speech). Every verdict about what the
application sent is read off those; this package re-states no protocol rule.

Ending is Asterisk's: close(), never a shutdown first (a close with unread
data is a reset, as the kernel makes it); what the application then does is
read off the kernel's table (net.tcpstate), since a closed socket reads
nothing more.
"""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from audiosocket_cli.analysis.stats import DirectionStats
from audiosocket_cli.engines.before_call import CallUUIDs, run_before_call
from audiosocket_cli.media.audio import to_pcm16
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.pacing import sleep_until
from audiosocket_cli.net.tcpstate import left_open
from audiosocket_cli.net.transport import CONNECT_TIMEOUT, connect, read_for_session
from audiosocket_cli.protocol.session import Problem, Received, Role, Rules, Session
from audiosocket_cli.protocol.wire import Decoder, Message, frame_bytes

FRAME = 0.020  # s: Asterisk's frames (docs/protocol.md, "Frame sizes")
DEFAULT_TIMEOUT = 5.0  # s a case may outlive its plan before it is abandoned
DEFAULT_ANSWER_TIMEOUT = 5.0  # s an application may take to answer a call
CLOSE_LIMIT = 1.0  # s the application has to close its side after Asterisk closes
TONE_HZ = 440.0
TONE_LEVEL = 0.1  # -20 dBFS


# Audio.


def tone(rate: int, seconds: float, hz: float = TONE_HZ) -> bytes:
    """A sine at -20 dBFS (a speech level, at which the encoding guess of
    analysis.stats can tell PCM from mu-law and byte order) as 16-bit LE PCM."""
    import numpy as np

    t = np.arange(int(rate * seconds)) / rate
    return to_pcm16(TONE_LEVEL * np.sin(2 * np.pi * hz * t))


def audio_frames(pcm: bytes, rate: int, frame_ms: float = 20) -> list[Message]:
    """PCM cut into audio messages; the last one short, as Asterisk sends a file's end."""
    size = frame_bytes(rate, frame_ms)
    return [Message.audio(pcm[i : i + size], rate) for i in range(0, len(pcm), size)]


def to_ulaw(pcm: bytes) -> bytes:
    """G.711 mu-law bytes of 16-bit PCM: what the channel driver sends without c(slin)."""
    import numpy as np

    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    sign = (x < 0).astype(np.int32) << 7
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def hexdump(data: bytes, limit: int = 24) -> str:
    """`10 01 40 00 00 …` (the first `limit` bytes)."""
    text = data[:limit].hex(" ")
    return f"{text} … ({len(data)} bytes)" if len(data) > limit else text


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


# The run.


@dataclass
class Run:
    """What every case shares: where the application is, its rules, how calls are
    named, what the reference call learnt, and the calls made."""

    address: Address
    rules: Rules
    timeout: float = DEFAULT_TIMEOUT
    answer_timeout: float = DEFAULT_ANSWER_TIMEOUT
    uuids: CallUUIDs = field(default_factory=CallUUIDs)
    before_call: str | None = None
    answers: bool = True  # the reference call got audio back
    reference_first_audio: float | None = None  # s from our first audio to its answer
    calls: dict[str, list[Probe]] = field(default_factory=dict)
    placed: int = 0  # calls placed so far: the next call's number is placed + 1
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def keep(self, case_id: str, probe: Probe) -> None:
        with self._lock:
            self.calls.setdefault(case_id, []).append(probe)

    def next_call(self) -> tuple[int, str]:
        """The next call's number and UUID; its --before-call has run when this returns
        (BeforeCallFailed if it failed)."""
        with self._lock:
            self.placed += 1
            n = self.placed
        uuid = self.uuids(n)
        if self.before_call is not None:
            run_before_call(self.before_call, uuid, n, self.address)
        return n, uuid


class Probe:
    """One call to the application: our writes, its answers judged by a Session.

    The receiver thread feeds every byte to an Asterisk-side Session (and asks
    it to tick when its deadline passes), counts the application's messages in
    a DirectionStats, detects its speech, and notes when it closed or reset.
    """

    def __init__(self, run: Run, label: str, rate: int = 8000) -> None:
        self.run = run
        self.label = label
        self.rate = rate  # of the frames await_answer() sends
        self.n, self.uuid = run.next_call()
        self.sock = connect(run.address, timeout=min(CONNECT_TIMEOUT, run.timeout))
        self.local_port = self.sock.getsockname()[1]
        self.started = time.monotonic()
        self.session = Session(Role.ASTERISK, run.rules, started=self.started)
        self.stats = {
            ">": DirectionStats(analyse_encoding=True),
            "<": DirectionStats(analyse_pacing=True),
        }
        self.speech = _speech_detector()
        self.received: list[tuple[float, Message]] = []
        self.problems: list[tuple[Problem, str]] = []  # with the bytes that show it
        self.raw = bytearray()  # everything the application sent
        self.lags: list[float] = []  # how late each paced send of ours was
        self.first_audio_sent: float | None = None
        self.fin_at: float | None = None  # when we closed
        self.gone = threading.Event()  # the application closed or reset
        self.gone_at: float | None = None
        self.gone_how = ""
        self.send_error = ""
        self.closed = False
        self._out = Decoder()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last: Message | None = None
        self._thread = threading.Thread(target=self._guarded, name=f"check-{label}", daemon=True)
        self._thread.start()

    def now(self) -> float:
        return time.monotonic() - self.started

    # Sending (the case's thread).

    def write(self, data: bytes, due: float | None = None) -> bool:
        """One write of these bytes; False once the application has gone."""
        if self.send_error or self.closed:
            return False
        now = time.monotonic()  # stamped before the write: the bytes left no earlier
        if due is not None:
            self.lags.append(max(0.0, now - due))
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.send_error = exc.strerror or type(exc).__name__
            return False
        t = now - self.started
        with self._lock:
            self.session.sent_raw(data, now)
        self._out.feed(data)
        for message in self._out.messages():
            self.stats[">"].add(t, message)
            if message.is_audio and self.first_audio_sent is None:
                self.first_audio_sent = t
        return True

    def send(self, message: Message, due: float | None = None) -> bool:
        return self.write(message.encode(), due)

    def send_uuid(self) -> bool:
        return self.send(Message.for_uuid(self.uuid))

    def wait_until(self, deadline: float) -> bool:
        """Sleep to a monotonic deadline; False if the application went away meanwhile."""
        remaining = deadline - time.monotonic()
        if remaining > 0.003 and self.gone.wait(remaining - 0.002):
            return False
        sleep_until(deadline)
        return not self.gone.is_set() and not self.send_error

    def play(self, messages: Iterable[Message], interval: float = FRAME) -> bool:
        """Messages on a drift-free clock, one every `interval`; False if cut short."""
        start = time.monotonic()
        for k, message in enumerate(messages):
            due = start + k * interval
            if not self.wait_until(due) or not self.send(message, due):
                return False
        return True

    def pause(self, seconds: float) -> bool:
        """Wait, listening; False if the application went away meanwhile."""
        return not self.gone.wait(seconds)

    def await_answer(self, after: float) -> None:
        """The call goes on (frames of a tone at our rate, as a caller still talking)
        until the application sends audio after `after`, goes away, or has taken
        --answer-timeout: a slow speaker is waited for, not judged silent."""
        limit = self.run.answer_timeout
        if self.audio_after(after):
            return
        # Its first answer in this call counts from the call's start; a later one from `after`.
        deadline = (after if self.stats["<"].first_audio is not None else 0.0) + limit
        frame = audio_frames(tone(self.rate, FRAME), self.rate)[0]
        start = time.monotonic()
        k = 0
        while not self.audio_after(after) and self.now() < deadline:
            due = start + k * FRAME
            if not self.wait_until(due) or not self.send(frame, due):
                return
            k += 1

    def quiet(self, gap: float = 0.1, limit: float = 0.6) -> None:
        """Wait (at most `limit`) until nothing has come for `gap`: a close with unread
        data is a reset, and a case about how the application answers a close wants
        the close itself, a FIN."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not self.gone.is_set():
            with self._lock:
                last = self.received[-1][0] if self.received else 0.0
            wait = last + gap - self.now()
            if wait <= 0:
                return
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        """End the call as Asterisk does: close(), no shutdown first. Unread data
        makes it a reset, as the kernel decides."""
        if self.closed:
            return
        self.closed = True
        self.fin_at = self.now()
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=1.0)
        if self.speech is not None:
            with self._lock:
                self.speech.finish()

    def reset(self) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send a RST (no FIN first)."""
        if not self.closed:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.close()

    def closed_by_app(self, limit: float = CLOSE_LIMIT) -> tuple[bool | None, float]:
        """After our close: did the application close its side (or reset) within
        `limit`? (True/False, or None where the kernel's table cannot be read), and
        when, in seconds after our close."""
        assert self.fin_at is not None
        if self.gone_at is not None and self.gone_at <= self.fin_at:
            return True, 0.0
        deadline = self.started + self.fin_at + limit
        while True:
            still = left_open(self.local_port, self.run.address.port)
            now = time.monotonic()
            if still is None:
                return None, 0.0
            if not still:
                return True, max(0.0, now - self.started - self.fin_at)
            if now >= deadline:
                return False, limit
            time.sleep(0.01)

    # Receiving (the receiver thread).

    def _guarded(self) -> None:
        try:
            self._receive()
        except Exception as exc:  # never die silently: the case must still see an end
            if not self._stop.is_set():
                self._gone(time.monotonic(), f"receiver failed: {type(exc).__name__}: {exc}")

    def _receive(self) -> None:
        def on_data(data: bytes | None) -> None:
            if data:
                self.raw += data

        def on_events(events: list[Any], now: float, ended_stream: str | None) -> bool:
            with self._lock:
                self._take(events)
            if ended_stream is not None:
                self._gone(now, ended_stream)
            return False

        read_for_session(self.sock, self.session, self._lock, self._stop, on_events, on_data)

    def _take(self, events: list[Any]) -> None:
        """The session's verdicts on what the application sent (the lock is held)."""
        for event in events:
            if type(event) is Received:
                message = event.message
                self.stats["<"].add(event.t, message)
                self.received.append((event.t, message))
                self._last = message
                if self.speech is not None and message.is_audio and message.payload:
                    self.speech.feed(event.t, message.payload, message.rate or 8000)
            elif isinstance(event, Problem):
                if event.what:
                    self.stats["<"].refused[event.what] += 1
                shown = ""
                if event.code == "refused" and self._last is not None:
                    shown = hexdump(self._last.encode())
                elif event.code == "stall":
                    pending = self.session.decoder.buffered
                    shown = hexdump(bytes(self.raw[len(self.raw) - pending :]), 8)
                self.problems.append((event, shown))
            # An Ended stays in session.ended.

    def _gone(self, now: float, how: str) -> None:
        self.gone_at = now - self.started
        self.gone_how = how
        self.gone.set()

    # What happened.

    @property
    def disturbed(self) -> float:
        """How late our latest-sent paced message was (s)."""
        return max(self.lags, default=0.0)

    @property
    def first_speech(self) -> float | None:
        """When the application's speech began (s into the call), if it spoke."""
        if self.speech is None:
            return None
        with self._lock:
            return self.speech.first_speech

    def audio_after(self, t: float) -> int:
        return sum(1 for at, m in self.received if at > t and m.is_audio and m.payload)

    def app_ended(self, before: float | None = None) -> str | None:
        """How the application ended the call before `before` (or at all), in words."""
        ended = self.session.ended
        if (
            ended is not None
            and ended.ended.startswith(("app-", "garbage", "truncated"))
            and (before is None or ended.t < before)
        ):
            return f"{ended.ended} at {ended.t:.3f}s ({ended.detail})"
        if self.send_error and (before is None or self.now() < before + 1):
            return f"our write failed: {self.send_error}"
        return None

    def rates_after(self, t: float) -> dict[int, int]:
        out: dict[int, int] = {}
        for at, message in self.received:
            if at > t and message.is_audio and message.payload:
                rate = message.rate or 0
                out[rate] = out.get(rate, 0) + 1
        return out

    def gaps_jitter(self) -> list[float]:
        """|gap - the previous message's duration| between the application's audio messages."""
        out = []
        previous: tuple[float, Message] | None = None
        for at, message in self.received:
            if not (message.is_audio and message.payload):
                continue
            if previous is not None:
                out.append(abs(at - previous[0] - previous[1].duration))
            previous = (at, message)
        return out


def _speech_detector() -> Any:
    from audiosocket_cli.analysis.speech import SpeechDetector

    return SpeechDetector()


class CaseRun:
    """One case's calls, so that the runner can close them if the case overruns."""

    def __init__(self, run: Run, case_id: str) -> None:
        self.run = run
        self.case_id = case_id
        self.probes: list[Probe] = []
        self.aborted = False

    def probe(self, keep: bool = True, rate: int = 8000) -> Probe:
        if self.aborted:
            raise ConnectionAbortedError("the case was abandoned")
        probe = Probe(self.run, self.case_id, rate)
        self.probes.append(probe)
        if keep:
            self.run.keep(self.case_id, probe)
        return probe

    def abort(self) -> None:
        self.aborted = True
        for probe in list(self.probes):
            probe.close()


@dataclass(frozen=True)
class Case:
    id: str
    name: str
    why: str  # one line: what it checks and the protocol fact behind it
    func: Callable[[CaseRun], Any]
    planned: float  # seconds it takes when the application behaves (answer waits aside)
    needs: tuple[str, ...] = ()  # calls (case ids) whose measurements it reads

    @property
    def section(self) -> int:
        return int(self.id.split(".")[0])

    @property
    def places_calls(self) -> bool:
        return self.section != 3
