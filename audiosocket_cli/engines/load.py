"""Many Asterisk-side calls at once, with SIPp-style statistics per period: the `load` engine.

Each call is a `dial` call: the UUID first, then frames on a drift-free clock
(frame k due at the call's first tick + k x 20 ms, a file's last frame
short), closed without a hangup message, and judged by an Asterisk-side
protocol.session.Session through engines.call.CallReport, as every engine
judges a call. What differs is the scale: a :class:`Worker` runs all its
calls on ONE net.reactor.Reactor (one selector, one timer heap). Calls are
grouped by the millisecond of the 20 ms grid they started on; each group is
one timer, and its tick sends every member's frame in one pass. A thread or
a greenlet per call would cost far more per frame.

Several workers (processes) share the calls; each sends a per-period
aggregate (counters and mergeable histograms, never per-frame data) to the
controller (:func:`run_load`), which merges the workers' periods into one
:class:`PeriodRow` per period, with the totals so far.

What is measured, per period:

- our own send lateness (proves the generator is not the bottleneck);
- the application's time to first audio, its real-time ratio, inter-arrival
  jitter, bursts (DirectionStats' 100 ms within 20 ms) and gaps (200 ms
  without audio once it had been talking);
- the echo round trip, when the application echoes: every frame we send
  carries a 12-bit counter in the low bits of its first three samples (at
  most 15 LSB, inaudible), so each payload is distinct and the application's
  copy is recognised by its hash, without any cooperation from it;
- how calls ended (the `ended` tokens of protocol.events.ENDINGS, plus the
  connect failures) and the diagnoses of each call's end.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import time
import uuid as uuid_lib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiosocket_cli.analysis.stats import AnalysisBudget
from audiosocket_cli.engines.call import CallReport, SessionClock
from audiosocket_cli.media.recorder import Recording, call_recording
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.reactor import Reactor, Timer
from audiosocket_cli.net.transport import CONNECT_TIMEOUT, set_nodelay
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.events import ENDINGS, CallEnd, CallInfo
from audiosocket_cli.protocol.session import Ended, Problem, Received, Role, Rules, Session
from audiosocket_cli.protocol.wire import AUDIO_RATES, RATE_KINDS, Message, frame_bytes
from audiosocket_cli.status import ExitStatus, Terminated

FRAME_MS = 20.0
SLOT_SECONDS = 0.001  # calls starting within the same millisecond of the grid share a tick
RECV_SIZE = 65536  # a load call's read; small enough never to need a fresh mmap
GAP = 0.200  # s without audio, once the application had been talking, is a gap
LATE_WARNING = 0.005  # s: our p99 send lateness above this means the generator is the limit
ECHO_WINDOW = 100  # frames (2 s) remembered per call for matching echoes
# How a call may end and still be a normal call: our --duration, the end of the
# file, or the application's hangup or close.
NORMAL_ENDINGS = frozenset({"caller-close", "caller-hangup", "app-hangup", "app-close"})
# A call stopped by Ctrl-C or SIGTERM is neither normal nor failed.
STOPPED_ENDINGS = frozenset({"interrupted", "terminated"})
CONNECT_FAILURES = {
    "connect-refused": "the application refused the connection",
    "connect-timeout": f"the connection did not complete within {CONNECT_TIMEOUT:g} s",
    "connect-failed": "the connection failed otherwise (unreachable, no route...)",
}
# Every failure reason: the ENDINGS that are not normal, then the connect failures.
FAILURE_REASONS = [
    *(token for token in ENDINGS if token not in NORMAL_ENDINGS | STOPPED_ENDINGS),
    *CONNECT_FAILURES,
]
DIAGNOSES = ["burst", "pacing", "one-way-audio", "ulaw", "byte-order", "frame-size", "refused"]


# Mergeable percentiles.


class Histogram:
    """Durations in log buckets 1% wide: cheap to add, exact to merge across workers."""

    LOG_BASE = math.log(1.01)
    __slots__ = ("counts", "n", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        us = seconds * 1e6
        i = int(math.log1p(us) / self.LOG_BASE) if us > 0 else 0
        counts = self.counts
        counts[i] = counts.get(i, 0) + 1
        self.n += 1
        if seconds > self.max:
            self.max = seconds

    def state(self) -> tuple[dict[int, int], int, float]:
        return dict(self.counts), self.n, self.max

    def merge(self, state: tuple[dict[int, int], int, float]) -> None:
        counts, n, peak = state
        mine = self.counts
        for i, k in counts.items():
            mine[i] = mine.get(i, 0) + k
        self.n += n
        if peak > self.max:
            self.max = peak

    def percentile(self, p: float) -> float | None:
        """Seconds, to 0.5%; None when empty."""
        if not self.n:
            return None
        rank = max(1, math.ceil(self.n * p / 100))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                value = math.expm1((i + 0.5) * self.LOG_BASE) / 1e6
                return min(value, self.max)
        return self.max


HISTOGRAMS = ("late", "ttfa", "jitter", "echo")


class PeriodStats:
    """What one worker saw in one period: counters and histograms."""

    COUNTERS = (
        "started",
        "up",
        "ended",
        "violations",
        "stopped",
        "msgs_out",
        "bytes_out",
        "msgs_in",
        "bytes_in",
        "bursts",
        "gaps",
    )

    def __init__(self) -> None:
        self.started = self.up = self.ended = self.violations = self.stopped = 0
        self.msgs_out = self.bytes_out = self.msgs_in = self.bytes_in = 0
        self.bursts = self.gaps = 0
        self.audio_s = 0.0  # seconds of application audio received
        self.talk_s = 0.0  # seconds of calls' time since their first application audio
        self.failed: Counter[str] = Counter()
        self.diagnoses: Counter[str] = Counter()
        self.late = Histogram()
        self.ttfa = Histogram()
        self.jitter = Histogram()
        self.echo = Histogram()

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
        out["audio_s"] = self.audio_s
        out["talk_s"] = self.talk_s
        out["failed"] = dict(self.failed)
        out["diagnoses"] = dict(self.diagnoses)
        for name in HISTOGRAMS:
            out[name] = getattr(self, name).state()
        return out

    def merge(self, record: dict[str, Any]) -> None:
        for name in self.COUNTERS:
            setattr(self, name, getattr(self, name) + record[name])
        self.audio_s += record["audio_s"]
        self.talk_s += record["talk_s"]
        self.failed.update(record["failed"])
        self.diagnoses.update(record["diagnoses"])
        for name in HISTOGRAMS:
            getattr(self, name).merge(record[name])


# The plan.


@dataclass
class LoadPlan:
    """Everything decided before the first call; picklable, for worker processes."""

    address: Address
    calls: int = 10  # at once, at most
    rate: float = 10.0  # new calls per second
    duration: float = 10.0  # each call's length, seconds
    total: int | None = None  # calls in all; None: until stopped
    sample_rate: int = 8000
    source: str = "silence"  # silence | tone | file | none
    tone_hz: float = 440.0
    pcm: bytes = b""  # the file's audio at sample_rate (source "file")
    source_name: str = "silence"
    dtmf: list[tuple[float, list[Message]]] = field(default_factory=list)  # (at, messages)
    uuid_pattern: str | None = None
    rules: Rules = field(default_factory=Rules)
    period: float = 1.0
    record_dir: Path | None = None

    @property
    def frame_samples(self) -> int:
        return frame_bytes(self.sample_rate, FRAME_MS) // 2

    @property
    def frame_seconds(self) -> float:
        return self.frame_samples / self.sample_rate


def check_uuid_pattern(pattern: str) -> str | None:
    """Why `pattern` does not make a UUID for every call number, or None."""
    for n in (0, 1, 999_999):
        try:
            text = pattern.format(n=n)
        except (KeyError, IndexError, ValueError) as exc:
            return f"{pattern!r}: {exc!r} (the one field is {{n}}, e.g. {{n:012d}})"
        try:
            uuid_lib.UUID(text)
        except ValueError:
            return f"{pattern!r} gives {text!r} for call {n}, which is not a UUID"
    return None


def make_uuid(pattern: str | None, n: int) -> str:
    if pattern is None:
        return str(uuid_lib.uuid4())
    return str(uuid_lib.UUID(pattern.format(n=n)))


def _frames(plan: LoadPlan) -> list[bytes]:
    """The payloads a call cycles through (silence, tone), or sends once (a file)."""
    samples = plan.frame_samples
    if plan.source == "none":
        return []
    if plan.source == "file":
        size = samples * 2
        pcm = plan.pcm
        return [pcm[i : i + size] for i in range(0, len(pcm), size)]
    if plan.source == "tone":
        from audiosocket_cli.media.audio import ToneSource

        tone = ToneSource(plan.tone_hz)
        # One second of tone: seamless when looped for a whole number of hertz.
        count = max(1, round(1.0 / plan.frame_seconds))
        return [tone.next_frame(plan.sample_rate, samples) or b"" for _ in range(count)]
    return [bytes(samples * 2)]


def _mark(payload: bytes, k: int) -> bytes:
    """The payload with frame number k (mod 4096) in the low nibbles of its first three
    little-endian samples: at most 15 LSB, and every frame of a call distinct."""
    if len(payload) < 6:
        return payload
    b = bytearray(payload)
    b[0] = (b[0] & 0xF0) | (k & 0xF)
    b[2] = (b[2] & 0xF0) | (k >> 4 & 0xF)
    b[4] = (b[4] & 0xF0) | (k >> 8 & 0xF)
    return bytes(b)


# One call.


class _Call:
    __slots__ = (
        "n",
        "uuid",
        "sock",
        "state",
        "connect_timer",
        "launched",
        "up_at",
        "info",
        "session",
        "report",
        "clock",
        "slot",
        "k",
        "dtmf_i",
        "outbox",
        "sent",
        "first_audio",
        "last_audio",
        "last_dur",
        "acct_at",
        "ours",
        "max_late",
    )

    def __init__(self, n: int, uuid: str, sock: socket.socket, now: float) -> None:
        self.n = n
        self.uuid = uuid
        self.sock = sock
        self.state = "connecting"
        self.connect_timer: Timer | None = None
        self.launched = now
        self.up_at = now
        self.info: CallInfo | None = None
        self.session: Session | None = None
        self.report: CallReport | None = None
        self.clock: SessionClock | None = None
        self.slot: _Slot | None = None
        self.k = 0
        self.dtmf_i = 0
        self.outbox = bytearray()
        self.sent: dict[int, float] = {}  # hash of a payload sent -> when
        self.first_audio: float | None = None
        self.last_audio = 0.0
        self.last_dur = 0.0
        self.acct_at = 0.0
        self.ours: Callable[[float, Message], None] = _ignore
        self.max_late = 0.0


def _ignore(t: float, message: Message) -> None:
    pass


class _Slot:
    """The calls whose frames are due on the same millisecond of the 20 ms grid."""

    __slots__ = ("calls", "timer", "due")

    def __init__(self) -> None:
        self.calls: dict[int, _Call] = {}
        self.timer: Timer | None = None
        self.due = 0.0


# A worker: a share of the calls on one loop.

OnPeriod = Callable[[dict[str, Any]], None]
OnCallEnd = Callable[[CallEnd | None, str, float], None]  # (end, reason, call seconds)


class Worker:
    """A share of the calls, on one reactor; reports each period through `on_period`.

    Worker `index` of `count` launches calls number index+1, index+1+count, ...
    at rate/count per second (offset so that the workers interleave), at most
    ceil-share of `calls` at once, and its share of `total`.
    """

    def __init__(
        self,
        plan: LoadPlan,
        *,
        index: int = 0,
        count: int = 1,
        epoch: float | None = None,
        on_period: OnPeriod | None = None,
        on_call_end: OnCallEnd | None = None,
        on_ttfa: Callable[[float], None] | None = None,
        control: Any = None,
    ) -> None:
        self.plan = plan
        self.index = index
        self.count = count
        self.epoch = time.monotonic() if epoch is None else epoch
        self.on_period = on_period
        self.on_call_end = on_call_end
        self.on_ttfa = on_ttfa
        self.control = control  # a multiprocessing connection: "stop" arrives on it
        self.max_calls = plan.calls // count + (index < plan.calls % count)
        self.total = (
            None if plan.total is None else plan.total // count + (index < plan.total % count)
        )
        self.interval = count / plan.rate if plan.rate > 0 else 0.0
        self.reactor = Reactor()
        self.output = Output([])  # per-call events are not shown: the periods are the output
        self.budget = AnalysisBudget(per_second=200.0)
        self.frames = _frames(plan)
        self.finite = plan.source == "file"
        self.kind = RATE_KINDS[plan.sample_rate]
        self.frame_s = plan.frame_seconds
        self.slot_count = max(1, round(self.frame_s / SLOT_SECONDS))
        self.slots = [_Slot() for _ in range(self.slot_count)]
        self.calls: dict[int, _Call] = {}
        self.launched = 0
        self.next_launch = self.epoch + index * (1.0 / plan.rate if plan.rate > 0 else 0.0)
        self.launch_timer: Timer | None = None
        self.stats = PeriodStats()
        self.period_index = 0
        self.stopping = ""  # "interrupted" or "terminated" once asked to stop
        self.finished = False
        self._sockaddr: tuple[int, Any] | None = None

    # Running.

    def run(self) -> str:
        """Run every call; returns "" when done, or "interrupted"/"terminated"."""
        plan = self.plan
        infos = socket.getaddrinfo(plan.address.host, plan.address.port, type=socket.SOCK_STREAM)
        family, _, _, _, sockaddr = infos[0]
        self._sockaddr = (family, sockaddr)
        reactor = self.reactor
        if self.control is not None:
            reactor.add_reader(self.control, self._control)
        self._schedule_launch(self.next_launch)
        reactor.call_at(self.epoch + plan.period, self._period)
        try:
            reactor.run()
        except KeyboardInterrupt:
            self.stop("interrupted")
        except Terminated:
            self.stop("terminated")
        if not self.finished:
            self._finish()
        return self.stopping

    def stop(self, how: str = "interrupted") -> None:
        """End every call now (cleanly, as Ctrl-C does) and report the last period."""
        if not self.stopping:
            self.stopping = how
        if self.launch_timer is not None:
            self.launch_timer.cancel()
        for call in list(self.calls.values()):
            if call.session is None:
                self._connect_ended(call, None)
            else:
                assert call.session is not None
                self._end(call, call.session.close(how, "stopped", time.monotonic()))
        self._finish()

    def _control(self) -> None:
        try:
            message = self.control.recv()
        except (EOFError, OSError):
            message = "stop"  # the controller is gone: stop
        if message == "stop":
            self.stop("interrupted")

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._emit(final=True)
        self.reactor.stop()
        if self.control is not None:
            self.reactor.forget(self.control)

    def _period(self) -> None:
        if self.finished:
            return
        self._emit(final=False)
        self.period_index += 1
        self.reactor.call_at(self.epoch + (self.period_index + 1) * self.plan.period, self._period)

    def _emit(self, final: bool) -> None:
        now = time.monotonic()
        stats = self.stats
        for call in self.calls.values():
            if call.first_audio is not None:
                stats.talk_s += now - call.acct_at
                call.acct_at = now
        record = stats.record()
        record.update(
            worker=self.index,
            period=self.period_index,
            final=final,
            at=now,
            active=sum(1 for c in self.calls.values() if c.state == "up"),
            connecting=sum(1 for c in self.calls.values() if c.state == "connecting"),
        )
        self.stats = PeriodStats()
        if self.on_period is not None:
            self.on_period(record)

    # Launching calls.

    def _schedule_launch(self, when: float) -> None:
        if self.launch_timer is not None:
            self.launch_timer.cancel()
        self.launch_timer = self.reactor.call_at(when, self._launch_due)

    def _launch_due(self) -> None:
        self.launch_timer = None
        if self.stopping:
            return
        if self.total is not None and self.launched >= self.total:
            self._maybe_done()
            return
        if len(self.calls) >= self.max_calls:
            return  # a call's end launches the next
        now = time.monotonic()
        self._launch(now)
        # A rate the loop could not keep is not made up for with a burst later.
        self.next_launch = max(self.next_launch + self.interval, now - self.interval)
        self._schedule_launch(self.next_launch)

    def _launch(self, now: float) -> None:
        assert self._sockaddr is not None
        family, sockaddr = self._sockaddr
        n = self.index + self.launched * self.count + 1
        self.launched += 1
        self.stats.started += 1
        uuid = make_uuid(self.plan.uuid_pattern, n)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        set_nodelay(sock)
        call = _Call(n, uuid, sock, now)
        self.calls[n] = call
        err = sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            self._connect_ended(call, _connect_reason(err))
            return
        self.reactor.add_writer(sock, lambda: self._connected(call))
        call.connect_timer = self.reactor.call_at(
            now + CONNECT_TIMEOUT, lambda: self._connect_ended(call, "connect-timeout")
        )

    def _connect_ended(self, call: _Call, reason: str | None) -> None:
        """A call that never came up: failed with `reason`, or stopped (None)."""
        if call.state == "done":
            return
        call.state = "done"
        if call.connect_timer is not None:
            call.connect_timer.cancel()
        self.reactor.forget(call.sock)
        call.sock.close()
        self.calls.pop(call.n, None)
        if reason is None:
            self.stats.stopped += 1
        else:
            self.stats.failed[reason] += 1
        if self.on_call_end is not None:
            self.on_call_end(None, reason or self.stopping or "interrupted", 0.0)
        self._after_end()

    def _connected(self, call: _Call) -> None:
        err = call.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.reactor.remove_writer(call.sock)
        if err:
            self._connect_ended(call, _connect_reason(err))
            return
        if call.connect_timer is not None:
            call.connect_timer.cancel()
            call.connect_timer = None
        now = time.monotonic()
        plan = self.plan
        call.state = "up"
        call.up_at = now
        self.stats.up += 1
        info = call.info = CallInfo(conn=call.n, uuid=call.uuid, peer=plan.address)
        info.started = now
        session = call.session = Session(Role.ASTERISK, plan.rules, started=now)
        recordings: dict[str, Recording] = {}
        if plan.record_dir is not None:
            uuid = call.uuid
            recordings["<"] = call_recording(plan.record_dir, lambda: uuid)
        call.report = CallReport(
            self.output,
            info,
            recordings=recordings,
            diagnose=("<",),
            encoding_gate=self.budget,
            frame_ms=FRAME_MS,
        )
        call.clock = SessionClock(self.reactor, session, lambda: self._check(call))
        self.reactor.add_reader(call.sock, lambda: self._readable(call))
        call.ours = call.report.stats[">"].add
        uuid_message = Message.for_uuid(call.uuid)
        self._send(call, uuid_message.encode(), now)
        session.sent(uuid_message, now)
        call.ours(0.0, uuid_message)
        if call.state != "up":
            return
        # The first frame goes on the next millisecond of the grid; the call's media
        # clock starts there, and its slot's tick sends it every 20 ms after.
        step = math.ceil((now - self.epoch) / SLOT_SECONDS)
        slot = self.slots[step % self.slot_count]
        call.slot = slot
        slot.calls[call.n] = call
        if slot.timer is None:
            slot.due = self.epoch + step * SLOT_SECONDS
            slot.timer = self.reactor.call_at(slot.due, lambda: self._tick(slot))
        call.clock.arm()

    # Sending: one pass over a slot's calls per tick.

    def _tick(self, slot: _Slot) -> None:
        due = slot.due
        stats = self.stats
        late_add = stats.late.add
        plan = self.plan
        frames, nframes, finite = self.frames, len(self.frames), self.finite
        frame_s, duration = self.frame_s, plan.duration
        header_kind = self.kind
        monotonic = time.monotonic
        for call in list(slot.calls.values()):
            media = call.k * frame_s
            if media >= duration - 1e-9:
                assert call.session is not None
                self._end(
                    call,
                    call.session.close("caller-close", f"--duration {duration:g} passed", due),
                )
                continue
            if call.dtmf_i < len(plan.dtmf) and plan.dtmf[call.dtmf_i][0] <= media + 1e-9:
                self._send_dtmf(call, media)
                if call.state != "up":
                    continue
            k = call.k
            call.k = k + 1
            if not nframes or (finite and k >= nframes):
                continue
            payload = _mark(frames[k % nframes], k)
            size = len(payload)
            now = monotonic()
            late = now - due
            late_add(late if late > 0 else 0.0)
            if late > call.max_late:
                call.max_late = late
            sent = call.sent
            sent[hash(payload)] = now
            if len(sent) > ECHO_WINDOW:
                del sent[next(iter(sent))]
            self._send(call, bytes((header_kind, size >> 8, size & 0xFF)) + payload, now)
            if not k:
                # Only our first frame goes into the call's '>' statistics: load shows
                # no per-call counts, and the diagnoses need only know we sent audio
                # (one-way audio). A DirectionStats.add per frame would be the
                # hot path's largest cost after the send itself.
                call.ours(now - call.up_at, Message(header_kind, payload))
        if slot.calls:
            slot.due = due + frame_s
            slot.timer = self.reactor.call_at(slot.due, lambda: self._tick(slot))
        else:
            slot.timer = None

    def _send_dtmf(self, call: _Call, media: float) -> None:
        plan = self.plan
        assert call.session is not None
        while call.dtmf_i < len(plan.dtmf) and plan.dtmf[call.dtmf_i][0] <= media + 1e-9:
            for message in plan.dtmf[call.dtmf_i][1]:
                now = time.monotonic()
                self._send(call, message.encode(), now)
                if call.state != "up":
                    return
                call.session.sent(message, now)
                call.ours(now - call.up_at, message)
            call.dtmf_i += 1

    def _send(self, call: _Call, data: bytes, now: float) -> None:
        """Write one whole message; what the socket does not take waits in the outbox."""
        stats = self.stats
        stats.msgs_out += 1
        stats.bytes_out += len(data)
        if call.outbox:
            call.outbox += data
            return
        try:
            n = call.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._write_failed(call, exc)
            return
        if n < len(data):
            call.outbox += data[n:]
            self.reactor.add_writer(call.sock, lambda: self._flush(call))

    def _flush(self, call: _Call) -> None:
        try:
            n = call.sock.send(call.outbox)
        except BlockingIOError:
            return
        except OSError as exc:
            self._write_failed(call, exc)
            return
        del call.outbox[:n]
        if not call.outbox:
            self.reactor.remove_writer(call.sock)

    def _write_failed(self, call: _Call, exc: OSError) -> None:
        # Its close or reset is in the socket: reading tells the truer story.
        self._readable(call)
        if call.state == "up" and call.session is not None:
            now = time.monotonic()
            events = call.session.reset(now, str(exc))
            ended = next((e for e in events if isinstance(e, Ended)), None)
            self._end(call, ended or call.session.close("app-reset", str(exc), now))

    # Receiving.

    def _readable(self, call: _Call) -> None:
        if call.state != "up":
            return
        session = call.session
        assert session is not None
        try:
            data: bytes | None = call.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            data = None
        except OSError as exc:
            events = session.reset(time.monotonic(), str(exc))
            self._handle(call, events)
            return
        now = time.monotonic()
        events = session.reset(now) if data is None else session.receive(data, now)
        self._handle(call, events)

    def _check(self, call: _Call) -> None:
        """The session's deadline passed: read what came first, then tick."""
        if call.state != "up":
            return
        self._readable(call)
        if call.state == "up" and call.session is not None:
            self._handle(call, call.session.tick(time.monotonic()))

    def _handle(self, call: _Call, events: list[Any]) -> None:
        report, stats = call.report, self.stats
        assert report is not None
        app = report.stats["<"]
        ended = None
        for event in events:
            if type(event) is Received:
                message = event.message
                kind, payload = message
                size = len(payload)
                stats.msgs_in += 1
                stats.bytes_in += size + 3
                rate = AUDIO_RATES.get(kind)
                if rate is not None and size:
                    now = call.up_at + event.t
                    duration = size / (2 * rate)
                    stats.audio_s += duration
                    if call.first_audio is None:
                        call.first_audio = call.acct_at = now
                        stats.ttfa.add(now - call.up_at)
                        if self.on_ttfa is not None:
                            self.on_ttfa(now - call.up_at)
                    else:
                        gap = now - call.last_audio
                        stats.jitter.add(abs(gap - call.last_dur))
                        if gap > GAP:
                            stats.gaps += 1
                    call.last_audio, call.last_dur = now, duration
                    at = call.sent.pop(hash(payload), None)
                    if at is not None:
                        stats.echo.add(now - at)
                    bursts = app.bursts
                    report.message(event.t, "<", message)
                    if app.bursts != bursts:
                        stats.bursts += 1
                else:
                    report.message(event.t, "<", message)
            elif isinstance(event, Problem):
                report.problem(event, "<")
            elif isinstance(event, Ended):
                ended = event
        if ended is not None:
            self._end(call, ended)
        elif call.clock is not None:
            call.clock.arm()

    # Ending.

    def _end(self, call: _Call, ended: Ended) -> None:
        if call.state != "up":
            return
        call.state = "done"
        session, report = call.session, call.report
        assert session is not None and report is not None
        if call.slot is not None:
            call.slot.calls.pop(call.n, None)
        if call.clock is not None:
            call.clock.cancel()
        self.reactor.forget(call.sock)
        try:
            call.sock.close()  # as Asterisk ends a call: no hangup message
        except OSError:
            pass
        self.calls.pop(call.n, None)
        now = time.monotonic()
        stats = self.stats
        if call.first_audio is not None:
            stats.talk_s += now - call.acct_at
        end = report.finish(
            ended,
            session.violations,
            drop=("refused",) if ended.ended in ("refused", "stall") else (),
            max_send_lag_ms=round(call.max_late * 1000, 3),
        )
        stats.diagnoses.update(end.diagnoses)
        if end.broke_protocol:
            stats.violations += 1
        reason = end.ended
        if reason in STOPPED_ENDINGS:
            stats.stopped += 1
        elif reason in NORMAL_ENDINGS:
            stats.ended += 1
        else:
            stats.failed[reason] += 1
        if self.on_call_end is not None:
            self.on_call_end(end, reason, end.t)
        self._after_end()

    def _after_end(self) -> None:
        if self.stopping:
            return
        if self.total is not None and self.launched >= self.total:
            self._maybe_done()
        elif self.launch_timer is None:
            self._schedule_launch(max(self.next_launch, time.monotonic()))

    def _maybe_done(self) -> None:
        if not self.calls and self.total is not None and self.launched >= self.total:
            self._finish()


def _connect_reason(err: int) -> str:
    if err == errno.ECONNREFUSED:
        return "connect-refused"
    if err == errno.ETIMEDOUT:
        return "connect-timeout"
    return "connect-failed"


# The controller: merging the workers' periods.


@dataclass
class PeriodRow:
    """One period of the whole run, and the totals so far."""

    index: int
    t: float  # seconds since the run started, at the period's end
    seconds: float  # the period's length (the last may be short)
    period: PeriodStats
    totals: PeriodStats
    active: int
    connecting: int
    final: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The JSON line and the CSV row (docs/load.md lists the fields)."""
        p, tot, s = self.period, self.totals, max(self.seconds, 1e-9)

        def ms(h: Histogram, q: float) -> float | None:
            value = h.percentile(q)
            return None if value is None else round(value * 1000, 3)

        ratio = round(p.audio_s / p.talk_s, 3) if p.talk_s > 0 else None
        failed = sum(p.failed.values())
        return {
            "type": "total" if self.final else "period",
            "period": self.index,
            "t": round(self.t, 3),
            "seconds": round(self.seconds, 3),
            "active": self.active,
            "connecting": self.connecting,
            "started": p.started,
            "up": p.up,
            "ended": p.ended,
            "failed": failed,
            "violations": p.violations,
            "total_started": tot.started,
            "total_up": tot.up,
            "total_ended": tot.ended,
            "total_failed": sum(tot.failed.values()),
            "total_violations": tot.violations,
            "total_stopped": tot.stopped,
            "total_msgs_out": tot.msgs_out,
            "total_msgs_in": tot.msgs_in,
            "msgs_out_per_s": round(p.msgs_out / s, 1),
            "bytes_out_per_s": round(p.bytes_out / s, 1),
            "msgs_in_per_s": round(p.msgs_in / s, 1),
            "bytes_in_per_s": round(p.bytes_in / s, 1),
            "send_late_p50_ms": ms(p.late, 50),
            "send_late_p99_ms": ms(p.late, 99),
            "send_late_max_ms": round(p.late.max * 1000, 3) if p.late.n else None,
            "generator_late": bool(p.late.n and (p.late.percentile(99) or 0.0) > LATE_WARNING),
            "ttfa_p50_ms": ms(p.ttfa, 50),
            "ttfa_p99_ms": ms(p.ttfa, 99),
            "total_ttfa_p50_ms": ms(tot.ttfa, 50),
            "total_ttfa_p99_ms": ms(tot.ttfa, 99),
            "realtime_ratio": ratio,
            "jitter_p99_ms": ms(p.jitter, 99),
            "bursts": p.bursts,
            "gaps": p.gaps,
            "total_bursts": tot.bursts,
            "total_gaps": tot.gaps,
            "echo_p50_ms": ms(p.echo, 50),
            "echo_p99_ms": ms(p.echo, 99),
            "echo_frames": p.echo.n,
            "total_echo_p50_ms": ms(tot.echo, 50),
            "total_echo_p99_ms": ms(tot.echo, 99),
            "total_send_late_p99_ms": ms(tot.late, 99),
            "total_send_late_max_ms": round(tot.late.max * 1000, 3) if tot.late.n else None,
            "failed_by": dict(sorted(p.failed.items())),
            "total_failed_by": dict(sorted(tot.failed.items())),
            "diagnoses": dict(sorted(p.diagnoses.items())),
            "total_diagnoses": dict(sorted(tot.diagnoses.items())),
        }


CSV_COLUMNS = [
    "period",
    "t",
    "seconds",
    "active",
    "connecting",
    "started",
    "up",
    "ended",
    "failed",
    "violations",
    "total_started",
    "total_up",
    "total_ended",
    "total_failed",
    "total_violations",
    "msgs_out_per_s",
    "bytes_out_per_s",
    "msgs_in_per_s",
    "bytes_in_per_s",
    "send_late_p50_ms",
    "send_late_p99_ms",
    "send_late_max_ms",
    "ttfa_p50_ms",
    "ttfa_p99_ms",
    "realtime_ratio",
    "jitter_p99_ms",
    "bursts",
    "gaps",
    "echo_p50_ms",
    "echo_p99_ms",
    "echo_frames",
    *(f"failed_{reason}" for reason in FAILURE_REASONS),
    *(f"diag_{code}" for code in DIAGNOSES),
]


def csv_row(row: dict[str, Any]) -> list[Any]:
    """A period's dict as the CSV columns: empty for no figure, 0 for no count."""
    out: list[Any] = []
    for column in CSV_COLUMNS:
        if column.startswith("failed_"):
            out.append(row["failed_by"].get(column[7:], 0))
        elif column.startswith("diag_"):
            out.append(row["diagnoses"].get(column[5:], 0))
        else:
            value = row[column]
            out.append("" if value is None else value)
    return out


class Aggregator:
    """Merges the workers' period records into rows, in order, as they complete."""

    def __init__(self, workers: int, epoch: float, on_row: Callable[[PeriodRow], None]) -> None:
        self.workers = workers
        self.epoch = epoch
        self.on_row = on_row
        self.totals = PeriodStats()
        self.pending: dict[int, list[dict[str, Any]]] = {}
        self.done: dict[int, int] = {}  # worker -> its final period
        self.next_index = 0
        self.last_at = epoch
        self.rows = 0

    def add(self, record: dict[str, Any]) -> None:
        self.pending.setdefault(record["period"], []).append(record)
        if record["final"]:
            self.done[record["worker"]] = record["period"]
        self._drain()

    @property
    def finished(self) -> bool:
        return len(self.done) == self.workers

    def _expected(self, index: int) -> int:
        return self.workers - sum(1 for final in self.done.values() if final < index)

    def _drain(self) -> None:
        while True:
            index = self.next_index
            expected = self._expected(index)
            records = self.pending.get(index, [])
            if expected == 0 or len(records) < expected:
                return
            del self.pending[index]
            self.next_index += 1
            period = PeriodStats()
            for record in records:
                period.merge(record)
            self.totals.merge(period.record())
            at = max((r["at"] for r in records), default=self.last_at)
            seconds, self.last_at = at - self.last_at, at
            final = self.finished and index >= max(self.done.values())
            self.rows += 1
            self.on_row(
                PeriodRow(
                    index=index,
                    t=at - self.epoch,
                    seconds=seconds,
                    period=period,
                    totals=self.totals,
                    active=sum(r["active"] for r in records),
                    connecting=sum(r["connecting"] for r in records),
                    final=final,
                )
            )
            if final:
                return


# Lines and the dashboard.


def plain_line(row: dict[str, Any]) -> str:
    """`t=3.0 active=100 started=10 up=10 ended=10 failed=0 ...`: one period, key=value."""

    def f(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    def counts(values: dict[str, int]) -> str:
        return ",".join(f"{k}:{n}" for k, n in values.items()) or "-"

    return (
        f"{row['type']} t={row['t']:.1f} active={row['active']} "
        f"started={row['started']}/{row['total_started']} up={row['up']}/{row['total_up']} "
        f"ended={row['ended']}/{row['total_ended']} failed={row['failed']}/{row['total_failed']} "
        f"violations={row['violations']}/{row['total_violations']} "
        f"out={row['msgs_out_per_s']:g}msg/s,{row['bytes_out_per_s']:g}B/s "
        f"in={row['msgs_in_per_s']:g}msg/s,{row['bytes_in_per_s']:g}B/s "
        f"late_ms={f(row['send_late_p50_ms'])}/{f(row['send_late_p99_ms'])}/"
        f"{f(row['send_late_max_ms'])} "
        f"ttfa_ms={f(row['ttfa_p50_ms'])}/{f(row['ttfa_p99_ms'])} "
        f"rt={f(row['realtime_ratio'])} jitter_p99_ms={f(row['jitter_p99_ms'])} "
        f"bursts={row['bursts']}/{row['total_bursts']} gaps={row['gaps']}/{row['total_gaps']} "
        f"echo_ms={f(row['echo_p50_ms'])}/{f(row['echo_p99_ms'])} "
        f"failed_by={counts(row['total_failed_by'])} "
        f"diagnoses={counts(row['total_diagnoses'])}"
    )


class Dashboard:
    """A live rich table on a terminal (rich imported only here, only then)."""

    def __init__(self, stream: Any) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def update(self, row: dict[str, Any]) -> None:
        from rich.table import Table

        def f(value: Any, unit: str = "") -> str:
            return "-" if value is None else f"{value:g}{unit}"

        table = Table(title=f"audiosocket load  t={row['t']:.1f}s", show_header=True)
        table.add_column("")
        table.add_column("this period", justify="right")
        table.add_column("total", justify="right")
        table.add_row("active / connecting", f"{row['active']} / {row['connecting']}", "")
        for name in ("started", "up", "ended", "failed", "violations"):
            table.add_row(name, str(row[name]), str(row[f"total_{name}"]))
        table.add_row(
            "messages out / in per s",
            f"{row['msgs_out_per_s']:g} / {row['msgs_in_per_s']:g}",
            "",
        )
        table.add_row(
            "bytes out / in per s", f"{row['bytes_out_per_s']:g} / {row['bytes_in_per_s']:g}", ""
        )
        late = (
            f"{f(row['send_late_p50_ms'])} / {f(row['send_late_p99_ms'])} / "
            f"{f(row['send_late_max_ms'])} ms"
        )
        if row["generator_late"]:
            late = f"[red]{late}[/]"
        table.add_row(
            "our send lateness p50/p99/max", late, f(row["total_send_late_p99_ms"], " ms")
        )
        table.add_row(
            "time to first audio p50/p99",
            f"{f(row['ttfa_p50_ms'])} / {f(row['ttfa_p99_ms'])} ms",
            f"{f(row['total_ttfa_p50_ms'])} / {f(row['total_ttfa_p99_ms'])} ms",
        )
        table.add_row("real-time ratio", f(row["realtime_ratio"]), "")
        table.add_row("jitter p99", f(row["jitter_p99_ms"], " ms"), "")
        table.add_row("bursts / gaps", f"{row['bursts']} / {row['gaps']}", "")
        table.add_row(
            "echo round trip p50/p99",
            f"{f(row['echo_p50_ms'])} / {f(row['echo_p99_ms'])} ms",
            f"{f(row['total_echo_p50_ms'])} / {f(row['total_echo_p99_ms'])} ms",
        )
        for reason, n in row["total_failed_by"].items():
            table.add_row(f"failed: {reason}", str(row["failed_by"].get(reason, 0)), str(n))
        for code, n in row["total_diagnoses"].items():
            table.add_row(f"diagnosis: {code}", str(row["diagnoses"].get(code, 0)), str(n))
        self.live.update(table, refresh=True)

    def close(self) -> None:
        self.live.stop()


# The whole run.


@dataclass
class LoadResult:
    totals: PeriodStats
    last: dict[str, Any] | None
    stopped: str  # "", "interrupted" or "terminated"

    def status(self, max_failed: int | None = 0, max_failed_share: float | None = None) -> int:
        """0, 1 (more calls failed than tolerated), 3 (a protocol violation), 130, 143."""
        if self.stopped == "interrupted":
            return ExitStatus.INTERRUPTED
        if self.stopped == "terminated":
            return ExitStatus.TERMINATED
        if self.totals.violations:
            return ExitStatus.PROTOCOL
        failed = sum(self.totals.failed.values())
        allowed = max_failed or 0
        if max_failed_share is not None:
            allowed = math.floor(self.totals.started * max_failed_share)
        return ExitStatus.FAILED if failed > allowed else ExitStatus.OK


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def run_load(
    plan: LoadPlan,
    *,
    workers: int = 1,
    on_row: Callable[[PeriodRow], None] | None = None,
) -> LoadResult:
    """Run the plan on `workers` processes (1: in this one); rows come through `on_row`."""
    from audiosocket_cli.net.transport import raise_fd_limit

    raise_fd_limit()
    caps = [plan.calls] + ([plan.total] if plan.total is not None else [])
    workers = max(1, min(workers, *caps))
    epoch = time.monotonic()
    last: dict[str, Any] = {}

    def got_row(row: PeriodRow) -> None:
        last["row"] = row.as_dict()
        if on_row is not None:
            on_row(row)

    aggregator = Aggregator(workers, epoch, got_row)
    if workers == 1:
        worker = Worker(plan, epoch=epoch, on_period=aggregator.add)
        stopped = worker.run()
    else:
        stopped = _run_processes(plan, workers, epoch, aggregator)
    return LoadResult(aggregator.totals, last.get("row"), stopped)


def _worker_main(plan: LoadPlan, index: int, count: int, epoch: float, conn: Any) -> None:
    import signal

    # The controller decides: it asks each worker to stop through the pipe, so that a
    # terminal's Ctrl-C (sent to every process) does not stop a worker half-way twice.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = Worker(plan, index=index, count=count, epoch=epoch, on_period=conn.send, control=conn)
    try:
        worker.run()
    finally:
        conn.close()


def _run_processes(plan: LoadPlan, workers: int, epoch: float, aggregator: Aggregator) -> str:
    import multiprocessing
    import multiprocessing.connection
    import signal

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    stopped: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        stopped.append("terminated" if signum == signal.SIGTERM else "interrupted")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    conns: list[Any] = []
    processes: list[Any] = []
    try:
        for index in range(workers):
            ours, theirs = context.Pipe()
            process = context.Process(  # type: ignore[attr-defined]
                target=_worker_main,
                args=(plan, index, workers, epoch, theirs),
                daemon=True,
                name=f"audiosocket-load-{index}",
            )
            process.start()
            theirs.close()
            conns.append(ours)
            processes.append(process)
        live = list(conns)
        asked = False
        while live:
            if stopped and not asked:
                asked = True
                for conn in live:
                    try:
                        conn.send("stop")
                    except OSError:
                        pass
            ready: list[Any] = multiprocessing.connection.wait(live, timeout=0.1)
            for conn in ready:
                try:
                    record = conn.recv()
                except (EOFError, OSError):
                    live.remove(conn)
                    continue
                aggregator.add(record)
                if record["final"]:
                    live.remove(conn)
        for index, process in enumerate(processes):
            process.join(timeout=5)
            if index not in aggregator.done:
                # A worker died without its last word: its calls count as failed.
                aggregator.add(_lost_worker(index, aggregator.next_index))
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for process in processes:
            if process.is_alive():
                process.kill()
    return stopped[0] if stopped else ""


def _lost_worker(index: int, period: int) -> dict[str, Any]:
    record = PeriodStats().record()
    record["failed"] = {"internal-error": 1}
    record.update(
        worker=index, period=period, final=True, at=time.monotonic(), active=0, connecting=0
    )
    return record


def dtmf_schedule(injections: Iterable[Any]) -> list[tuple[float, list[Message]]]:
    """--dtmf DIGITS@SECONDS (protocol.inject.Injection) as (seconds, messages), in order."""
    return sorted(((i.at, list(i.messages)) for i in injections), key=lambda x: x[0])
