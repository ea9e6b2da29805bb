"""The conformance and robustness suite of `audiosocket check`: cases, runner, verdicts.

Each case is one short call (or a few) placed as Asterisk places it, on a
socket of its own: a :class:`Probe` writes the bytes the case calls for, at
the moments it calls for, and a receiver thread feeds what the application
sends to an Asterisk-side protocol.session.Session and to
analysis.stats.DirectionStats. Every verdict about what the application sent
is read off those two (refusals, stalls, how the call ended, rates, bursts,
the real-time ratio, the encoding guess); this module re-states no protocol
rule, it only decides which of them a case is about.

The sessions run in lenient mode: a refused message or a stalled payload is
recorded and the call goes on, so that each fault is reported once, by the
case that is about it (section 3), and the other cases still say whether
the application kept the call.

Timing is never trusted blindly: each probe measures how late its own paced
sends were, and a timing verdict that would fail while our own lateness was
above DISTURBED says "measurement disturbed" (warn) instead.

Independent cases of a section run at once, each in a thread with its own
sockets; hostile cases (section 4) run one at a time, each followed by an
ordinary call. Every wait has a bound, and the runner abandons a case that
outlives its plan by --timeout, closing its sockets.
"""

from __future__ import annotations

import json
import math
import random
import select
import socket
import struct
import threading
import time
import uuid as uuid_lib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

from audiosocket_cli.analysis.stats import (
    BURST_AUDIO,
    DirectionStats,
    diagnose_application,
    diagnose_asterisk,
)
from audiosocket_cli.media.audio import to_pcm16
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.pacing import sleep_until
from audiosocket_cli.net.transport import (
    CONNECT_TIMEOUT,
    connect,
    raise_fd_limit,
    read_for_session,
    shut_and_close,
)
from audiosocket_cli.protocol.session import Mode, Problem, Received, Role, Rules, Session
from audiosocket_cli.protocol.wire import HEADER, Decoder, Kind, Message, frame_bytes

PASS, WARN, FAIL = "pass", "warn", "fail"
VERDICTS = (PASS, WARN, FAIL)
SECTIONS = {
    1: "Framing",
    2: "A real Asterisk call",
    3: "What the application sends back",
    4: "Hostile peer (robustness)",
}
ROBUSTNESS = 4  # the section counted apart in the summary

FRAME = 0.020  # s: Asterisk's frames (docs/protocol.md, "Frame sizes")
DEFAULT_TIMEOUT = 5.0  # s a case may outlive its plan before it is abandoned
CLOSE_LIMIT = 1.0  # s the application has to close its side after Asterisk closes
WRITE_GRACE = 0.25  # s after our close in which a message already on its way is forgiven
RATE_GRACE = 0.5  # s after our first audio before the application must answer at its rate
DISTURBED = 0.015  # s: our own sends later than this make a timing measurement unreliable
RATIO_TOLERANCE = 0.05  # real-time ratio within 5%
JITTER_WARN = 0.020  # s: p99 gap deviation above this (plus our own) is worth a warning
FIRST_AUDIO_WARN = 1.0  # s from our first audio to the application's
POLL = 0.05  # s the receiver looks up from the socket at least this often
TONE_HZ = 440.0
TONE_LEVEL = 0.1  # -20 dBFS


# Results.


@dataclass
class Outcome:
    """What a case found: a verdict, a one-line reason, the evidence and its moment."""

    verdict: str
    reason: str
    evidence: str = ""
    t: float | None = None  # seconds into the case's call at which the evidence was seen


def passed(reason: str, evidence: str = "", t: float | None = None) -> Outcome:
    return Outcome(PASS, reason, evidence, t)


def warned(reason: str, evidence: str = "", t: float | None = None) -> Outcome:
    return Outcome(WARN, reason, evidence, t)


def failed(reason: str, evidence: str = "", t: float | None = None) -> Outcome:
    return Outcome(FAIL, reason, evidence, t)


@dataclass
class Result:
    id: str
    section: int
    name: str
    verdict: str
    reason: str
    evidence: str
    t: float | None
    duration: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "section": self.section,
            "section_name": SECTIONS[self.section],
            "name": self.name,
            "verdict": self.verdict,
            "reason": self.reason,
            "evidence": self.evidence,
            "t": None if self.t is None else round(self.t, 6),
            "duration": round(self.duration, 3),
        }


class Unreachable(Exception):
    """The application could not be reached at all: nothing was checked."""


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


# One connection, as Asterisk makes it.


class Probe:
    """One call to the application: our writes, its answers judged by a Session.

    The receiver thread feeds every byte to an Asterisk-side Session (and asks
    it to tick when its deadline passes), counts the application's messages in
    a DirectionStats, and notes when the application closed or reset.
    """

    def __init__(self, run: Run, label: str) -> None:
        self.run = run
        self.label = label
        self.sock = connect(run.address, timeout=min(CONNECT_TIMEOUT, run.timeout))
        self.started = time.monotonic()
        self.session = Session(Role.ASTERISK, run.rules, started=self.started)
        self.stats = {">": DirectionStats(analyse_encoding=True), "<": DirectionStats()}
        self.received: list[tuple[float, Message]] = []
        self.problems: list[tuple[Problem, str]] = []  # with the bytes that show it
        self.raw = bytearray()  # everything the application sent
        self.lags: list[float] = []  # how late each paced send of ours was
        self.first_audio_sent: float | None = None
        self.fin_at: float | None = None  # when we closed our side
        self.gone = threading.Event()  # the application closed or reset
        self.gone_at: float | None = None
        self.gone_how = ""
        self.send_error = ""
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
        if self.send_error:
            return False
        if due is not None:
            self.lags.append(max(0.0, time.monotonic() - due))
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.send_error = exc.strerror or type(exc).__name__
            return False
        now = time.monotonic()
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
        return self.send(Message.for_uuid(uuid_lib.uuid4()))

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

    def half_close(self) -> None:
        """Close our side as Asterisk does (FIN), and keep reading for the answer."""
        self.fin_at = self.now()
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def reset(self) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send a RST."""
        self._stop.set()
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        self._stop.set()
        shut_and_close(self.sock)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=1.0)

    def hang_up(self, wait: float = CLOSE_LIMIT) -> None:
        """The end of an ordinary call: our FIN, a bounded wait for the application's, close."""
        self.half_close()
        self.gone.wait(wait)
        self.close()

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
                self.stats["<"].add(event.t, event.message)
                self.received.append((event.t, event.message))
                self._last = event.message
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


# The run.


@dataclass
class Run:
    """What every case shares: where the application is, its rules, and the calls made."""

    address: Address
    rules: Rules
    timeout: float = DEFAULT_TIMEOUT
    answers: bool = True  # the reference call got audio back
    calls: dict[str, list[Probe]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def keep(self, case_id: str, probe: Probe) -> None:
        with self._lock:
            self.calls.setdefault(case_id, []).append(probe)


class CaseRun:
    """One case's sockets, so that the runner can close them if the case overruns."""

    def __init__(self, run: Run, case_id: str) -> None:
        self.run = run
        self.case_id = case_id
        self.probes: list[Probe] = []
        self.aborted = False

    def probe(self, keep: bool = True) -> Probe:
        if self.aborted:
            raise ConnectionAbortedError("the case was abandoned")
        probe = Probe(self.run, self.case_id)
        self.probes.append(probe)
        if keep:
            self.run.keep(self.case_id, probe)
        return probe

    def abort(self) -> None:
        self.aborted = True
        for probe in list(self.probes):
            probe.close()


CaseFunc = Callable[[CaseRun], Outcome]


@dataclass(frozen=True)
class Case:
    id: str
    name: str
    why: str  # one line: what it checks and the protocol fact behind it
    func: CaseFunc
    planned: float  # seconds it takes when the application behaves
    needs: tuple[str, ...] = ()  # calls (case ids) whose measurements it reads

    @property
    def section(self) -> int:
        return int(self.id.split(".")[0])


# Judging a call.


def kept_and_answered(run: Run, p: Probe, after: float, what: str, until: float) -> Outcome:
    """The framing verdict: the application kept the call until `until` and, if it
    answers at all, sent audio after `after`."""
    ended = p.app_ended(until)
    if ended is not None:
        return failed(
            f"the application ended the call after {what}: {ended}",
            f"our last bytes before it at {after:.3f}s",
            p.gone_at if p.gone_at is not None else p.now(),
        )
    if run.answers:
        n = p.audio_after(after)
        if not n:
            return failed(
                f"the application stopped answering after {what}: no audio from "
                f"{after:.3f}s to {until:.3f}s",
                f"{p.stats['<'].audio_messages} audio messages before it",
                after,
            )
        return passed(f"kept the call and answered ({n} audio messages after it)", t=after)
    return passed("kept the call (the application sends no audio back)", t=after)


def reference_call(
    cr: CaseRun, rate: int = 8000, seconds: float = 2.0, linger: float = 0.3
) -> tuple[Probe, Outcome]:
    """An ordinary call: UUID, `seconds` of a tone at `rate` in 20 ms frames, linger, close."""
    p = cr.probe()
    p.send_uuid()
    p.play(audio_frames(tone(rate, seconds), rate))
    p.pause(linger)
    until = p.now()
    outcome = kept_and_answered(cr.run, p, 0.0, "the call started", until)
    if outcome.verdict == PASS and cr.run.answers:
        outcome = judge_rate(p, rate) or outcome
    p.hang_up()
    return p, outcome


def judge_rate(p: Probe, rate: int) -> Outcome | None:
    """A fail if the application answered at another rate than the caller's, else None."""
    if p.first_audio_sent is None:
        return None
    after = p.first_audio_sent + RATE_GRACE
    rates = p.rates_after(after)
    wrong = {r: n for r, n in rates.items() if r != rate}
    if not wrong:
        return None
    at, message = next(
        (at, m)
        for at, m in p.received
        if at > after and m.is_audio and m.payload and m.rate != rate
    )
    shown = ", ".join(f"{n}x {r} Hz" for r, n in sorted(wrong.items()))
    return failed(
        f"the application answered a {rate} Hz call at another rate ({shown}) "
        f"more than {RATE_GRACE:g} s after the caller's first audio",
        f"first at {at:.3f}s: {hexdump(message.encode(), 6)}",
        at,
    )


def normal_call_after(cr: CaseRun, what: str) -> Outcome:
    """Section 4's test of survival: an ordinary 0.5 s call must still work."""
    try:
        p = cr.probe(keep=False)
    except OSError as exc:
        return failed(f"after {what}, a normal call could not connect: {exc}")
    p.send_uuid()
    p.play(audio_frames(tone(8000, 0.5), 8000))
    p.pause(0.2)
    outcome = kept_and_answered(cr.run, p, 0.0, "the call started", p.now())
    p.hang_up()
    if outcome.verdict != PASS:
        return failed(f"after {what}, a normal call failed: {outcome.reason}", outcome.evidence)
    return passed(f"survived {what}: a normal call afterwards {outcome.reason}")


# Section 1: framing. Pass: the application keeps the call and keeps answering.


def framing_call(
    cr: CaseRun, special: Callable[[Probe], str], what: str, uuid_first: bool = True
) -> Outcome:
    p = cr.probe()
    if uuid_first:
        p.send_uuid()
        p.play(audio_frames(tone(8000, 0.1), 8000))
    evidence = special(p)
    after = p.now()
    p.play(audio_frames(tone(8000, 0.5), 8000))
    p.pause(0.2)
    outcome = kept_and_answered(cr.run, p, after, what, p.now())
    outcome.evidence = f"{evidence}; {outcome.evidence}".strip("; ")
    p.hang_up()
    return outcome


def case_uuid_one_write(cr: CaseRun) -> Outcome:
    def special(p: Probe) -> str:
        message = Message.for_uuid(uuid_lib.uuid4())
        p.send(message)
        return f"one write at {p.now():.3f}s: {hexdump(message.encode(), 19)}"

    return framing_call(cr, special, "the UUID in one write", uuid_first=False)


def case_split_header(cr: CaseRun) -> Outcome:
    worst = [0.0]

    def special(p: Probe) -> str:
        start = time.monotonic()
        for k, message in enumerate(audio_frames(tone(8000, 0.2), 8000)):
            data = message.encode()
            p.wait_until(start + k * FRAME)
            p.write(data[:3])
            sent = time.monotonic()
            sleep_until(sent + 0.002)
            p.write(data[3:])
            worst[0] = max(worst[0], time.monotonic() - sent)
        return (
            f"10 messages from {p.now() - 0.2:.3f}s, each header then payload in two "
            f"segments, up to {worst[0] * 1000:.1f} ms apart"
        )

    outcome = framing_call(cr, special, "headers and payloads in separate segments")
    if outcome.verdict == FAIL and worst[0] >= 0.005:
        return warned(f"measurement disturbed: {outcome.reason}", outcome.evidence, outcome.t)
    return outcome


def case_bytewise(cr: CaseRun) -> Outcome:
    def special(p: Probe) -> str:
        messages = [Message.for_uuid(uuid_lib.uuid4()), *audio_frames(tone(8000, 0.1), 8000)]
        total = 0
        for message in messages:
            data = message.encode()
            total += len(data)
            for i in range(len(data)):
                p.write(data[i : i + 1])
                if i in (0, 2) or i % 16 == 15:
                    # Pause after the kind byte, after the header, and every 16 bytes,
                    # so that the application reads each of those pieces on its own.
                    sleep_until(time.monotonic() + 0.001)
        return f"{total} bytes (the UUID and 5 messages), one write per byte"

    return framing_call(cr, special, "every message byte by byte", uuid_first=False)


def case_coalesced(cr: CaseRun) -> Outcome:
    def special(p: Probe) -> str:
        data = b"".join(m.encode() for m in audio_frames(tone(8000, 1.0), 8000))
        p.write(data)
        return f"50 messages ({len(data)} bytes) in one write at {p.now():.3f}s"

    return framing_call(cr, special, "50 messages in one segment")


def one_message_call(cr: CaseRun, message: Message, what: str) -> Outcome:
    """A framing call with one unusual message in it, shown in the evidence."""

    def special(p: Probe) -> str:
        p.send(message)
        return f"at {p.now():.3f}s: {hexdump(message.encode(), 8)}"

    return framing_call(cr, special, what)


def case_odd_length(cr: CaseRun) -> Outcome:
    message = Message.audio(tone(8000, 0.0201)[:161], 8000)
    return one_message_call(cr, message, "an odd-length (161-byte) audio payload")


def case_max_payload(cr: CaseRun) -> Outcome:
    message = Message.audio(tone(8000, 4.2)[:65535], 8000)
    return one_message_call(cr, message, "a 65535-byte audio payload")


# Section 2: a real Asterisk call.


def rate_case(rate: int) -> CaseFunc:
    def case(cr: CaseRun) -> Outcome:
        return reference_call(cr, rate)[1]

    return case


def case_dtmf(cr: CaseRun) -> Outcome:
    p = cr.probe()
    p.send_uuid()
    p.play(audio_frames(tone(8000, 0.5), 8000))
    p.send(Message.dtmf("5"))
    after = p.now()
    p.play(audio_frames(tone(8000, 0.6), 8000))
    p.pause(0.2)
    outcome = kept_and_answered(cr.run, p, after, f"the DTMF digit 5 at {after:.3f}s", p.now())
    outcome.evidence = f"03 00 01 35 at {after:.3f}s; {outcome.evidence}".strip("; ")
    p.hang_up()
    return outcome


def case_silence(cr: CaseRun) -> Outcome:
    p = cr.probe()
    p.send_uuid()
    p.play(audio_frames(tone(8000, 0.4), 8000))
    quiet = p.now()
    p.pause(2.0)  # Asterisk sends nothing while its side is silent
    resumed = p.now()
    p.play(audio_frames(tone(8000, 0.4), 8000))
    p.pause(0.2)
    outcome = kept_and_answered(cr.run, p, resumed, "2 s with no messages", p.now())
    outcome.evidence = f"nothing sent from {quiet:.3f}s to {resumed:.3f}s; {outcome.evidence}"
    p.hang_up()
    return outcome


def case_short_last(cr: CaseRun) -> Outcome:
    p = cr.probe()
    p.send_uuid()
    pcm = tone(8000, 0.5)[: 24 * 320 + 224]  # a file's end: 224 bytes, as observed
    p.play(audio_frames(pcm, 8000))
    after = p.now()
    p.pause(0.4)
    outcome = kept_and_answered(cr.run, p, 0.0, "a short last frame", p.now())
    outcome.evidence = f"a 224-byte last frame at {after:.3f}s; {outcome.evidence}".strip("; ")
    p.hang_up()
    return outcome


def closing_case(hangup_first: bool) -> CaseFunc:
    def case(cr: CaseRun) -> Outcome:
        p = cr.probe()
        p.send_uuid()
        p.play(audio_frames(tone(8000, 0.5), 8000))
        ended = p.app_ended()
        if ended is not None:
            p.close()
            return failed(f"the application ended the call first: {ended}", t=p.gone_at)
        if hangup_first:
            p.send(Message.hangup())
        p.half_close()
        fin = p.fin_at or 0.0
        closed = p.gone.wait(CLOSE_LIMIT + WRITE_GRACE)
        p.close()
        late = [(at, m) for at, m in p.received if at > fin + WRITE_GRACE]
        how = "0x00 then FIN" if hangup_first else "FIN, no 0x00"
        if late:
            at, message = late[0]
            return failed(
                f"the application wrote {len(late)} message(s) more than "
                f"{WRITE_GRACE * 1000:.0f} ms after Asterisk closed",
                f"{how} at {fin:.3f}s; first late message at {at:.3f}s: "
                f"{hexdump(message.encode(), 8)}",
                at,
            )
        if not closed or p.gone_at is None or p.gone_at - fin > CLOSE_LIMIT:
            return failed(
                f"the application did not close its side within {CLOSE_LIMIT:g} s of "
                "Asterisk's close (a socket left in CLOSE-WAIT)",
                f"{how} at {fin:.3f}s; no FIN or RST from the application by "
                f"{fin + CLOSE_LIMIT + WRITE_GRACE:.3f}s",
                fin,
            )
        after = max(0.0, p.gone_at - fin)
        return passed(
            f"closed its side {after * 1000:.0f} ms after Asterisk's close ({p.gone_how})",
            f"{how} at {fin:.3f}s; the application's {p.gone_how} at {p.gone_at:.3f}s",
            p.gone_at,
        )

    return case


def case_ulaw(cr: CaseRun) -> Outcome:
    p = cr.probe()
    p.send_uuid()
    ulaw = to_ulaw(tone(8000, 1.0))
    p.play(Message(Kind.AUDIO_8K, ulaw[i : i + 160]) for i in range(0, len(ulaw), 160))
    p.pause(0.2)
    outcome = kept_and_answered(cr.run, p, 0.0, "mu-law labelled as slin", p.now())
    ours = [d.code for d in diagnose_asterisk(p.stats[">"])]
    outcome.evidence = (
        f"50 messages of 160 bytes, kind 0x10, mu-law (the tool's own diagnosis of them: "
        f"{', '.join(ours) or 'none'}); {outcome.evidence}"
    ).strip("; ")
    p.hang_up()
    return outcome


def case_second_uuid(cr: CaseRun) -> Outcome:
    p = cr.probe()
    p.send_uuid()
    p.play(audio_frames(tone(8000, 0.4), 8000))
    second = Message.for_uuid(uuid_lib.uuid4())
    p.send(second)
    after = p.now()
    p.play(audio_frames(tone(8000, 0.4), 8000))
    p.pause(0.2)
    outcome = kept_and_answered(cr.run, p, after, "a second UUID", p.now())
    outcome.evidence = f"at {after:.3f}s: {hexdump(second.encode(), 8)}; {outcome.evidence}"
    p.hang_up()
    return outcome


def case_many_calls(cr: CaseRun) -> Outcome:
    """20 calls one after another, then 20 at once; every socket must be closed by the
    application within CLOSE_LIMIT of ours (a leak is a socket left in CLOSE-WAIT)."""
    run = cr.run
    probes: list[Probe] = []
    problems: list[str] = []

    def one(k: int, seconds: float) -> None:
        try:
            p = cr.probe()
        except OSError as exc:
            problems.append(f"call {k}: could not connect: {exc}")
            return
        probes.append(p)
        p.send_uuid()
        p.play(audio_frames(tone(8000, seconds), 8000))
        p.pause(0.1)
        outcome = kept_and_answered(run, p, 0.0, "the call started", p.now())
        if outcome.verdict != PASS:
            problems.append(f"call {k}: {outcome.reason}")
        p.half_close()

    for k in range(1, 21):
        one(k, 0.2)
    threads = [threading.Thread(target=one, args=(k, 0.5), daemon=True) for k in range(21, 41)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(run.timeout + 2)
    leaked = []
    for k, p in enumerate(probes, 1):
        fin = p.fin_at if p.fin_at is not None else p.now()
        remaining = p.started + fin + CLOSE_LIMIT - time.monotonic()
        if not p.gone.wait(max(0.0, remaining)) or (p.gone_at or 0) - fin > CLOSE_LIMIT:
            leaked.append(k)
        p.close()
    if problems:
        return failed(
            f"{len(problems)} of 40 calls were not answered: {problems[0]}",
            "; ".join(problems[:5]),
        )
    if leaked:
        return failed(
            f"{len(leaked)} of {len(probes)} calls were not closed by the application "
            f"within {CLOSE_LIMIT:g} s of Asterisk's close: it leaks connections",
            f"calls {', '.join(map(str, leaked[:10]))} (1-20 one after another, 21-40 at once)",
        )
    return passed(
        "40 calls answered; the application closed every socket after Asterisk's close",
        f"slowest close {max(((p.gone_at or 0) - (p.fin_at or 0)) for p in probes) * 1000:.0f} ms",
    )


# Section 3: what the application sends back, measured on the calls above.

RATE_CALLS = ("2.1", "2.2", "2.3")
CALL_RATES = {"2.1": 8000, "2.2": 16000, "2.3": 48000}


def measured(cr: CaseRun, ids: Iterable[str] = RATE_CALLS) -> list[tuple[str, Probe]]:
    return [(cid, p) for cid in ids for p in cr.run.calls.get(cid, [])]


def no_audio(cr: CaseRun, what: str) -> Outcome | None:
    calls = measured(cr)
    if not calls:
        return warned(f"no call to measure {what} on (2.1 to 2.3 did not run)")
    if not any(p.stats["<"].audio_messages >= 10 for _, p in calls):
        return warned(
            f"the application sent (almost) no audio back: no {what} to measure "
            "(one-way audio, docs/protocol.md, 'Common mistakes', item 6)"
        )
    return None


def case_pacing(cr: CaseRun) -> Outcome:
    empty = no_audio(cr, "pacing")
    if empty is not None:
        return empty
    notes: list[str] = []
    fails: list[str] = []
    disturbed: list[str] = []
    jittery: list[str] = []
    for cid, p in measured(cr):
        app = p.stats["<"]
        ratio = app.realtime_ratio
        if ratio is None or app.audio_messages < 10:
            continue
        ours = p.disturbed
        jitter = percentile(p.gaps_jitter(), 0.99)
        own = percentile(p.lags, 0.99)
        figure = (
            f"{cid}: ratio {ratio:.3f}, {app.bursts} burst(s) (up to "
            f"{app.max_window_audio * 1000:.0f} ms of audio within 20 ms), jitter p99 "
            f"{jitter * 1000:.1f} ms; our sends up to {ours * 1000:.1f} ms late"
        )
        notes.append(figure)
        # What our own lateness can explain: an echo of sends that were L late comes
        # back as L of audio at once, and moves the ratio by about L over the span.
        span = app.audio_seconds / ratio if ratio else 0.0
        excused_ratio = RATIO_TOLERANCE + (2 * ours / span if span else 0.0)
        burst = app.bursts > 0
        off = abs(ratio - 1) > RATIO_TOLERANCE
        if (burst and app.max_window_audio > BURST_AUDIO + ours + FRAME) or (
            off and abs(ratio - 1) > excused_ratio
        ):
            fails.append(figure)
        elif burst or off:
            disturbed.append(figure)
        elif jitter > JITTER_WARN + own and ours <= DISTURBED:
            jittery.append(figure)
    if fails:
        return failed(
            "the application's audio is not paced at real time (Asterisk plays what arrives "
            "at once: choppy or lost audio; send one 20 ms frame every 20 ms)",
            "; ".join(fails),
        )
    if disturbed:
        return warned(
            "measurement disturbed: the application's pacing looked wrong by no more than "
            "our own sends were late",
            "; ".join(disturbed),
        )
    if jittery:
        return warned(
            f"audio paced with jitter p99 above {JITTER_WARN * 1000:.0f} ms beyond our own",
            "; ".join(jittery),
        )
    return passed("real time within 5%, no bursts", "; ".join(notes))


def case_frame_size(cr: CaseRun) -> Outcome:
    empty = no_audio(cr, "frame size")
    if empty is not None:
        return empty
    for cid, p in measured(cr):
        for d in diagnose_application(p.stats["<"], p.stats[">"], 20):
            if d.code == "frame-size":
                return warned(f"not 20 ms frames in call {cid}", d.text)
    sizes = {
        cid: ",".join(str(s) for s, _ in p.stats["<"].sizes.most_common(2))
        for cid, p in measured(cr)
    }
    return passed("20 ms frames", "; ".join(f"{cid}: {s} bytes" for cid, s in sizes.items() if s))


def case_rate_follows(cr: CaseRun) -> Outcome:
    empty = no_audio(cr, "rate")
    if empty is not None:
        return empty
    for cid, p in measured(cr):
        outcome = judge_rate(p, CALL_RATES[cid])
        if outcome is not None:
            outcome.reason = f"call {cid}: {outcome.reason}"
            return outcome
    rates = "; ".join(
        f"{cid}: {','.join(str(r) for r in p.rates_after(0))} Hz" for cid, p in measured(cr)
    )
    return passed("answered each call at its own rate", rates)


def all_calls(cr: CaseRun) -> list[tuple[str, Probe]]:
    return [
        (cid, p)
        for cid, probes in sorted(cr.run.calls.items())
        if cid.split(".")[0] in ("1", "2")
        for p in probes
    ]


def case_kinds(cr: CaseRun) -> Outcome:
    calls = all_calls(cr)
    for cid, p in calls:
        for problem, shown in p.problems:
            if problem.code == "refused":
                return failed(f"call {cid}: {problem.text}", shown, problem.t)
        ended = p.session.ended
        if ended is not None and ended.ended in ("garbage", "truncated"):
            return failed(f"call {cid}: {ended.ended}: {ended.detail}", t=ended.t)
    kinds: dict[str, int] = {}
    for _, p in calls:
        for kind, n in p.stats["<"].kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
    shown = ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())) or "nothing"
    return passed(f"only hangup and non-empty audio, in {len(calls)} calls", shown)


def case_payload_window(cr: CaseRun) -> Outcome:
    calls = all_calls(cr)
    window = cr.run.rules.payload_window
    for cid, p in calls:
        for problem, shown in p.problems:
            if problem.code == "stall":
                return failed(
                    f"call {cid}: a payload came more than {(window or 0) * 1000:g} ms after "
                    "its header (Asterisk ends the session; write header and payload in one "
                    "send)",
                    f"header {shown} at {problem.t:.3f}s; {problem.text}",
                    problem.t,
                )
    return passed(f"every payload followed its header at once, in {len(calls)} calls")


def case_encoding(cr: CaseRun) -> Outcome:
    empty = no_audio(cr, "encoding")
    if empty is not None:
        return empty
    verdicts = []
    for cid, p in measured(cr):
        for d in diagnose_application(p.stats["<"], p.stats[">"], 20):
            if d.code in ("ulaw", "byte-order"):
                return failed(f"call {cid}: {d.text}", f"diagnosis {d.code}")
        verdicts.append(f"{cid}: {p.stats['<'].likely_encoding or 's16le or too quiet to tell'}")
    return passed("looks like 16-bit little-endian PCM", "; ".join(verdicts))


def case_first_audio(cr: CaseRun) -> Outcome:
    empty = no_audio(cr, "first audio")
    if empty is not None:
        return empty
    figures, worst = [], -math.inf
    for cid, p in measured(cr):
        first = p.stats["<"].first_audio
        if first is None or p.first_audio_sent is None:
            continue
        delay = first - p.first_audio_sent
        worst = max(worst, delay)
        figures.append(f"{cid}: {delay * 1000:+.0f} ms (at {first:.3f}s)")
    if worst > FIRST_AUDIO_WARN:
        return warned(
            f"the first audio came {worst:.2f} s after the caller's (callers hear dead air)",
            "; ".join(figures),
        )
    return passed(f"first audio within {max(worst, 0) * 1000:.0f} ms", "; ".join(figures))


# Section 4: hostile peer. Pass: the application survives, and answers a normal call.


def hostile(cr: CaseRun, what: str, act: Callable[[Probe], str]) -> Outcome:
    try:
        p = cr.probe(keep=False)
    except OSError as exc:
        return failed(f"could not connect: {exc}")
    evidence = act(p)
    reaction = (
        f"the application's {p.gone_how} at {p.gone_at:.3f}s"
        if p.gone_at is not None
        else "the application kept the connection"
    )
    p.close()
    outcome = normal_call_after(cr, what)
    outcome.evidence = f"{evidence}; {reaction}"
    return outcome


def case_unassigned(cr: CaseRun) -> Outcome:
    def act(p: Probe) -> str:
        p.send_uuid()
        p.play(audio_frames(tone(8000, 0.1), 8000))
        data = Message(0x42, b"\xde\xad\xbe\xef").encode()
        p.write(data)
        at = p.now()
        p.play(audio_frames(tone(8000, 0.2), 8000))
        p.pause(0.1)
        return f"at {at:.3f}s: {hexdump(data)}"

    return hostile(cr, "an unassigned kind", act)


def case_garbage(cr: CaseRun) -> Outcome:
    def act(p: Probe) -> str:
        p.send_uuid()
        p.play(audio_frames(tone(8000, 0.1), 8000))
        data = random.Random(4).randbytes(512)  # the same bytes every run
        p.write(data)
        at = p.now()
        p.pause(0.3)
        return f"512 random bytes at {at:.3f}s: {hexdump(data, 12)}"

    return hostile(cr, "garbage bytes", act)


def case_promise_reset(cr: CaseRun) -> Outcome:
    def act(p: Probe) -> str:
        p.send_uuid()
        data = HEADER.pack(Kind.AUDIO_8K, 0xFFFF) + bytes(1024)
        p.write(data)
        at = p.now()
        p.pause(0.1)
        p.reset()
        return f"at {at:.3f}s: {hexdump(data, 3)} (then 1024 of 65535 bytes), then RST"

    return hostile(cr, "a 64 KiB promise and a reset", act)


def case_header_silence(cr: CaseRun) -> Outcome:
    try:
        p = cr.probe(keep=False)
    except OSError as exc:
        return failed(f"could not connect: {exc}")
    p.send_uuid()
    data = HEADER.pack(Kind.AUDIO_8K, 320)
    p.write(data)
    at = p.now()
    # The ordinary call runs while the stalled one is still open: one connection
    # waiting for a payload must not hold up the others.
    outcome = normal_call_after(cr, "a header followed by silence (still open)")
    p.pause(0.1)
    reaction = (
        f"the application's {p.gone_how} at {p.gone_at:.3f}s"
        if p.gone_at is not None
        else f"still open at {p.now():.3f}s"
    )
    p.close()
    outcome.evidence = f"at {at:.3f}s: {hexdump(data)} then nothing; {reaction}"
    return outcome


def case_flood(cr: CaseRun, count: int = 200) -> Outcome:
    raise_fd_limit()
    run = cr.run
    socks: list[socket.socket] = []
    started = time.monotonic()
    try:
        for _ in range(count):
            sock = socket.socket(
                socket.AF_INET6 if ":" in run.address.host else socket.AF_INET,
                socket.SOCK_STREAM,
            )
            sock.setblocking(False)
            socks.append(sock)
            try:
                sock.connect((run.address.host, run.address.port))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass
        deadline = time.monotonic() + min(2.0, run.timeout)
        pending = list(socks)
        connected = 0
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], pending[:500], [], 0.05)
            for sock in writable:
                pending.remove(sock)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected += 1
    finally:
        for k, sock in enumerate(socks):
            try:
                if k % 2:  # half of them reset, half closed
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass
    took = time.monotonic() - started
    outcome = normal_call_after(cr, f"{count} connections opened and dropped")
    outcome.evidence = (
        f"{connected} of {count} connected within {took:.2f}s, then all dropped "
        "(half closed, half reset) without a byte"
    )
    return outcome


# The suite.

CASES: list[Case] = [
    Case(
        "1.1",
        "the UUID in one write",
        "the baseline: Asterisk's first message, one 19-byte write",
        case_uuid_one_write,
        0.8,
    ),
    Case(
        "1.2",
        "header and payload in separate segments",
        "a reader must buffer a header until its payload comes (less than 5 ms later)",
        case_split_header,
        1.0,
    ),
    Case("1.3", "every message byte by byte", "one recv is not one message", case_bytewise, 0.9),
    Case(
        "1.4", "50 messages in one segment", "one recv can hold many messages", case_coalesced, 0.9
    ),
    Case(
        "1.5",
        "an odd-length audio payload",
        "Asterisk sends and accepts any length (161 bytes observed)",
        case_odd_length,
        0.9,
    ),
    Case(
        "1.6",
        "a maximal (65535-byte) audio payload",
        "the length field's largest value",
        case_max_payload,
        0.9,
    ),
    Case(
        "2.1",
        "an 8 kHz call (kind 0x10)",
        "the dialplan application's call; answered at 8 kHz",
        rate_case(8000),
        2.6,
    ),
    Case(
        "2.2",
        "a 16 kHz call (kind 0x12)",
        "the channel driver with c(slin16); answered at 16 kHz",
        rate_case(16000),
        2.6,
    ),
    Case(
        "2.3",
        "a 48 kHz call (kind 0x16)",
        "the channel driver with c(slin48); answered at 48 kHz",
        rate_case(48000),
        2.6,
    ),
    Case(
        "2.4",
        "DTMF in the middle of audio",
        "Asterisk sends a digit as its own 0x03 message between frames",
        case_dtmf,
        1.6,
    ),
    Case(
        "2.5",
        "2 s of silence",
        "Asterisk sends no messages while its side is silent",
        case_silence,
        3.3,
    ),
    Case(
        "2.6",
        "a short last frame",
        "a played file's last frame is sent short (224 bytes observed)",
        case_short_last,
        1.2,
    ),
    Case(
        "2.7",
        "Asterisk closes without 0x00",
        "Asterisk ends a call by closing; the application must close within 1 s and stop writing",
        closing_case(False),
        1.8,
    ),
    Case(
        "2.8",
        "Asterisk sends 0x00 then closes",
        "a hangup message, then the close",
        closing_case(True),
        1.8,
    ),
    Case(
        "2.9",
        "mu-law labelled as slin",
        "the channel driver without c(slin) sends 160-byte mu-law frames as 0x10",
        case_ulaw,
        1.5,
    ),
    Case("2.10", "a second UUID", "a UUID message in the middle of a call", case_second_uuid, 1.3),
    Case(
        "2.11",
        "20 calls in a row, then 20 at once",
        "every call answered; every socket closed by the application",
        case_many_calls,
        7.0,
    ),
    Case(
        "3.1",
        "pacing",
        "real time within 5%, no bursts, jitter p99 (Asterisk does not buffer)",
        case_pacing,
        0,
        RATE_CALLS,
    ),
    Case("3.2", "frame size", "20 ms frames, as Asterisk sends", case_frame_size, 0, RATE_CALLS),
    Case(
        "3.3",
        "the rate follows the caller",
        "answers at the rate of the caller's audio",
        case_rate_follows,
        0,
        RATE_CALLS,
    ),
    Case(
        "3.4",
        "only messages Asterisk accepts",
        "no UUID, DTMF, error, unassigned kind or empty audio",
        case_kinds,
        0,
        RATE_CALLS,
    ),
    Case(
        "3.5",
        "no payload more than 5 ms after its header",
        "Asterisk's payload window",
        case_payload_window,
        0,
        RATE_CALLS,
    ),
    Case(
        "3.6",
        "16-bit little-endian PCM",
        "not mu-law, not big-endian",
        case_encoding,
        0,
        RATE_CALLS,
    ),
    Case(
        "3.7",
        "time to first audio",
        "from the caller's first audio to the application's",
        case_first_audio,
        0,
        RATE_CALLS,
    ),
    Case("4.1", "an unassigned kind", "a peer may send anything", case_unassigned, 1.2),
    Case("4.2", "garbage bytes", "a peer may send anything", case_garbage, 1.2),
    Case(
        "4.3",
        "a header promising 64 KiB, then a reset",
        "a stream cut inside a message",
        case_promise_reset,
        1.0,
    ),
    Case(
        "4.4",
        "a header, then silence",
        "a stalled connection must not hold up the others",
        case_header_silence,
        1.0,
    ),
    Case(
        "4.5",
        "200 connections opened and dropped at once",
        "a port scan, a load balancer's health checks",
        case_flood,
        2.0,
    ),
]
BY_ID = {case.id: case for case in CASES}


def select_cases(ids: Iterable[str]) -> list[Case]:
    """The cases named (in suite order); ValueError naming an unknown id. A section
    number alone (`2`) names the whole section."""
    wanted: set[str] = set()
    for text in ids:
        text = text.strip()
        if text in BY_ID:
            wanted.add(text)
        elif text.isdigit() and int(text) in SECTIONS:
            wanted.update(c.id for c in CASES if c.section == int(text))
        else:
            raise ValueError(f"no case {text!r} (see --list)")
    return [case for case in CASES if case.id in wanted]


def case_list() -> list[str]:
    return [f"{case.id} {case.name}: {case.why}" for case in CASES]


@dataclass
class Report:
    address: Address
    results: list[Result]
    answers: bool
    duration: float

    def counts(self, robustness: bool | None = None) -> dict[str, int]:
        out = dict.fromkeys(VERDICTS, 0)
        for r in self.results:
            if robustness is None or (r.section == ROBUSTNESS) == robustness:
                out[r.verdict] += 1
        return out

    def failed(self, strict: bool = False) -> bool:
        bad = (FAIL, WARN) if strict else (FAIL,)
        return any(r.verdict in bad for r in self.results)

    def summary(self) -> str:
        def tally(counts: dict[str, int]) -> str:
            return ", ".join(f"{n} {v}" for v, n in counts.items())

        main = self.counts(False)
        text = f"{sum(main.values())} cases: {tally(main)}"
        hostile = self.counts(True)
        if sum(hostile.values()):
            text += f"; robustness {sum(hostile.values())} cases: {tally(hostile)}"
        answer = "answers with audio" if self.answers else "sends no audio back"
        return f"{text}; in {self.duration:.1f}s against {self.address} (it {answer})"


def reach(run: Run) -> bool:
    """The reference call, before anything else: can the application be reached at
    all (Unreachable if not), and does it answer with audio?"""
    try:
        p = Probe(run, "reach")
    except OSError as exc:
        raise Unreachable(str(exc)) from None
    p.send_uuid()
    p.play(audio_frames(tone(8000, 0.4), 8000))
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline and not p.audio_after(0) and not p.gone.is_set():
        time.sleep(0.01)
    answers = p.audio_after(0) > 0
    p.hang_up()
    return answers


def run_case(run: Run, case: Case) -> Result:
    """One case in a thread of its own, abandoned if it outlives its plan by --timeout."""
    cr = CaseRun(run, case.id)
    box: dict[str, Outcome] = {}
    started = time.monotonic()

    def body() -> None:
        try:
            box["outcome"] = case.func(cr)
        except OSError as exc:
            if cr.aborted:
                return
            box["outcome"] = failed(f"the connection failed: {exc.strerror or exc}")
        except Exception as exc:  # a bug of ours is reported, not hidden in a pass
            box["outcome"] = failed(f"the check itself failed: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=body, name=f"case-{case.id}", daemon=True)
    thread.start()
    thread.join(case.planned + run.timeout)
    if thread.is_alive():
        cr.abort()
        thread.join(1.0)
        outcome = failed(
            f"the case did not finish within {case.planned + run.timeout:.1f} s "
            f"(its plan {case.planned:g} s + --timeout {run.timeout:g} s)"
        )
    else:
        outcome = box.get("outcome") or failed("the case was abandoned")
    for probe in cr.probes:  # whatever the case left open
        probe.close()
    return Result(
        case.id,
        case.section,
        case.name,
        outcome.verdict,
        outcome.reason,
        outcome.evidence,
        outcome.t,
        time.monotonic() - started,
    )


def run_check(
    address: Address,
    cases: list[Case],
    *,
    rules: Rules | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    on_result: Callable[[Result], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> Report:
    """Run the cases (and the calls they read) against the application at `address`.

    Raises Unreachable, before any case, if it cannot be reached at all.
    """
    rules = rules or Rules(mode=Mode.LENIENT, inactivity=None)
    run = Run(address, rules, timeout)
    started = time.monotonic()
    run.answers = reach(run)
    chosen = {case.id for case in cases}
    needed = {n for case in cases for n in case.needs} - chosen
    results: dict[str, Result] = {}

    def report(result: Result) -> None:
        if result.id in chosen:
            results[result.id] = result
            if on_result is not None:
                on_result(result)

    def phase(name: str, batch: list[Case], parallel: bool) -> None:
        if not batch:
            return
        if on_phase is not None:
            on_phase(name)
        if parallel and len(batch) > 1:
            with ThreadPoolExecutor(max_workers=len(batch)) as pool:
                done = list(pool.map(lambda c: run_case(run, c), batch))
        else:
            done = [run_case(run, c) for c in batch]
        for result in sorted(done, key=lambda r: CASES.index(BY_ID[r.id])):
            report(result)

    def take(
        section: int, *, only: set[str] | None = None, skip: tuple[str, ...] = ()
    ) -> list[Case]:
        return [
            c
            for c in CASES
            if c.section == section
            and (c.id in chosen or c.id in needed)
            and (only is None or c.id in only)
            and c.id not in skip
        ]

    phase(SECTIONS[1], take(1), parallel=True)
    phase(SECTIONS[2], take(2, skip=("2.11",)), parallel=True)
    phase(SECTIONS[2], take(2, only={"2.11"}), parallel=False)
    phase(SECTIONS[3], take(3), parallel=False)
    phase(SECTIONS[4], take(4), parallel=False)  # one at a time: each may hurt the application
    ordered = [results[c.id] for c in CASES if c.id in results]
    return Report(address, ordered, run.answers, time.monotonic() - started)


# Rendering (no click here; rich only when a terminal asks for it).


def plain_line(result: Result) -> str:
    return f"{result.id} {result.verdict.upper()} {result.name}: {result.reason}"


def json_line(result: Result) -> str:
    return json.dumps(result.as_dict(), ensure_ascii=False)


def junit_xml(report: Report, strict: bool = False) -> bytes:
    """JUnit XML: a testsuite per section, a testcase per case. fail is a <failure>;
    warn is a property and a system-out line (a <failure> too with --strict)."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="audiosocket check")
    total = {"tests": 0, "failures": 0, "time": 0.0}
    for section, title in SECTIONS.items():
        results = [r for r in report.results if r.section == section]
        if not results:
            continue
        suite = ET.SubElement(root, "testsuite", name=f"{section}. {title}")
        failures = 0
        for r in results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"audiosocket.check.section{section}",
                name=f"{r.id} {r.name}",
                time=f"{r.duration:.3f}",
            )
            props = ET.SubElement(case, "properties")
            ET.SubElement(props, "property", name="verdict", value=r.verdict)
            if r.t is not None:
                ET.SubElement(props, "property", name="t", value=f"{r.t:.6f}")
            detail = f"{r.reason}\n{r.evidence}".strip()
            if r.verdict == FAIL or (strict and r.verdict == WARN):
                failures += 1
                failure = ET.SubElement(case, "failure", message=r.reason, type=r.verdict)
                failure.text = detail
            elif r.verdict == WARN:
                out = ET.SubElement(case, "system-out")
                out.text = f"WARN: {detail}"
            else:
                out = ET.SubElement(case, "system-out")
                out.text = f"PASS: {detail}"
        duration = sum(r.duration for r in results)
        suite.set("tests", str(len(results)))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("skipped", "0")
        suite.set("time", f"{duration:.3f}")
        total["tests"] += len(results)
        total["failures"] += failures
        total["time"] += duration
    root.set("tests", str(total["tests"]))
    root.set("failures", str(total["failures"]))
    root.set("errors", "0")
    root.set("time", f"{report.duration:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


STYLES = {PASS: "green", WARN: "yellow", FAIL: "bold red"}


def print_table(report: Report, stream: TextIO, color: bool = True) -> None:
    """The terminal form: a table per section, then the summary."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, no_color=not color, highlight=False)
    for section, title in SECTIONS.items():
        results = [r for r in report.results if r.section == section]
        if not results:
            continue
        table = Table(title=f"{section}. {title}", title_justify="left", expand=True)
        table.add_column("case", no_wrap=True)
        table.add_column("verdict", no_wrap=True)
        table.add_column("name")
        table.add_column("reason and evidence", ratio=3)
        for r in results:
            text = _escape(r.reason)
            if r.evidence:
                text += f"\n[dim]{_escape(r.evidence)}[/dim]"
            table.add_row(r.id, f"[{STYLES[r.verdict]}]{r.verdict}[/]", _escape(r.name), text)
        console.print(table)
    failed_any = report.failed()
    style = "bold red" if failed_any else "green"
    console.print(f"[{style}]{_escape(report.summary())}[/]")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
