"""The engine of `audiosocket listen`: many AudioSocket calls on one selector loop.

Accepts connections, decodes what each caller sends, shows and records it,
and answers (echo, paced audio, injections) without ever blocking the loop.
One thread serves every call: a thread per call cannot keep echo latency low
at hundreds of calls under the GIL.
"""

from __future__ import annotations

import copy
import errno
import functools
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiosocket_cli.analysis.stats import AnalysisBudget
from audiosocket_cli.engines.call import CallReport, SessionClock, Tally
from audiosocket_cli.engines.workers import Budget
from audiosocket_cli.engines.workers import signals_deferred as signals_deferred
from audiosocket_cli.media.recorder import call_recording
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.reactor import COALESCE, Reactor, Timer, frozen_heap
from audiosocket_cli.net.transport import RECV_SIZE, accept, bound_address, listen, raise_fd_limit
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.events import CallEnd, CallInfo
from audiosocket_cli.protocol.inject import Injection
from audiosocket_cli.protocol.session import (
    Ended,
    Mode,
    Problem,
    Received,
    Role,
    Rules,
    Session,
    SessionEvent,
)
from audiosocket_cli.protocol.wire import AUDIO_RATES, RATE_KINDS, Kind, Message, encode
from audiosocket_cli.status import ExitStatus, Terminated

FRAME_INTERVAL = 0.020  # replies go out in 20 ms messages, as Asterisk sends
FIRST_RATE = 8000  # the dialplan application always talks 8 kHz
LATE_LIMIT = 0.100  # paced sends this late (a stalled process) restart the schedule
MAX_UNSENT = 1 << 20  # bytes queued for a peer that does not read, before we give up
DRAIN_LIMIT = 2.0  # seconds a closing call may take to hand over what it queued
ACCEPT_BATCH = 128  # callers accepted per wake-up, so running calls are not starved

SourceFactory = Callable[[], Any]  # returns an audio FrameSource (next_frame(rate, samples))


@dataclass
class ListenConfig:
    """What `listen` does with each call; built from the command line."""

    echo: bool = False
    source_factory: SourceFactory | None = None  # --play/--tone/--silence
    injections: tuple[Injection, ...] = ()
    record_dir: Path | None = None
    rules: Rules = field(default_factory=lambda: Rules(mode=Mode.STRICT))
    max_calls: int | None = None
    max_concurrent: int = 1000
    monitor: Any = None  # a media.monitor.Monitor, or None
    pcap: Any = None  # an engines.pcap_tap.PcapFile (--pcap), or None


def file_source_factory(template: Any) -> SourceFactory:
    """Per-call copies of one loaded FileSource: the file is read (and each
    rate resampled) once, not once per call."""

    def make() -> Any:
        source = copy.copy(template)
        source.position = 0.0
        return source

    return make


class Call:
    """One connection: its session, its report, its replies."""

    def __init__(self, server: Server, sock: socket.socket, info: CallInfo) -> None:
        self.server = server
        self.reactor = server.reactor
        self.sock = sock
        self.info = info
        self.config = server.config
        self.session = Session(Role.APPLICATION, self.config.rules, started=info.started)
        recordings = {}
        if self.config.record_dir is not None:
            recordings[">"] = call_recording(self.config.record_dir, self._stem)
        self.report = CallReport(
            server.output,
            info,
            recordings=recordings,
            diagnose=(">",),  # what we send ourselves needs no diagnosis
            encoding_gate=server.analysis_allowed,
        )
        self.ended = False
        self.closed = False
        self.echoing = self.config.echo  # until the socket closes
        # What every read uses, looked up once.
        self._recv_into = sock.recv_into
        self._recv_buffer, self._recv_view = server.recv_buffer, server.recv_view
        self._whole_audio = self.session.whole_audio
        self._started = info.started
        self.unsent = bytearray()
        self.batch: list[bytes] | None = None
        self.timers: list[Timer] = []  # the injections'
        self.clock = SessionClock(self.reactor, self.session, self.guarded(self.on_deadline))
        self.frame_timer: Timer | None = None
        self.rate_in = 0  # rate of the caller's latest audio
        self.kind_in = -1  # ... and its kind byte
        self.reply_rate = FIRST_RATE
        self.source = config_source(self.config)
        self.frame = 0
        self.pace_start = info.started
        self.drain_timer: Timer | None = None
        pcap = self.config.pcap
        self.pcap = pcap.tap(sock, "<", info.peer) if pcap is not None else None

    def _stem(self) -> str:
        return self.info.uuid or f"conn-{self.info.conn}"

    # Start

    def start(self) -> None:
        started = self.info.started
        self.reactor.add_reader(self.sock, self.on_readable)
        worker = self.server.worker
        self.report.start(f"from {self.info.peer}", **({"worker": worker} if worker else {}))
        for injection in self.config.injections:
            fire = functools.partial(self.inject, injection)
            self.timers.append(self.reactor.call_at(started + injection.at, self.guarded(fire)))
        self.clock.arm()
        if self.source is not None:
            self._send_frame = self.guarded(self.send_frame)
            self.frame_timer = self.reactor.call_at(started, self._send_frame)

    def guarded(self, func: Callable[[], None]) -> Callable[[], None]:
        """`func` for the reactor: a bug in one call ends that call, not the others."""

        def run() -> None:
            try:
                func()
            except (BrokenPipeError, KeyboardInterrupt, Terminated):
                raise  # stdout went away, or a signal: the whole command ends
            except Exception as exc:
                self.failed(exc)

        return run

    def failed(self, exc: Exception) -> None:
        """A bug met while serving this call: the call ends, and only this call."""
        if self.ended:
            self.close_socket()
        else:
            self.end("internal-error", f"{type(exc).__name__}: {exc}")

    # Receiving

    def on_readable(self) -> None:
        """The reactor's callback, guarded as guarded() does but inline: it runs for
        every message, and a wrapper's call is a share of its cost."""
        try:
            try:
                n = self._recv_into(self._recv_buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.take(self.session.reset(time.monotonic(), _os_reason(exc)))
                return
            now = time.monotonic()
            data = bytes(self._recv_view[:n])
            if self.pcap is not None:
                self.pcap.received(data)
            message = self._whole_audio(data, now)
            if message is not None and data[0] == self.kind_in:
                # The usual read, 50 times a second per call: one whole audio message
                # at the call's rate, and nothing else (so no timer to move, and the
                # read's bytes are that message's encoding).
                t = now - self._started
                if self.echoing:
                    # Straight back, shown and counted both ways in one go.
                    self.report.echoed(t, message)
                    self.write(data)
                else:
                    self.report.message(t, ">", message)
                if self.server.monitor is not None:
                    self.monitor(t, message)
                return
            if message is None:
                self.take(self.session.receive(data, now))
            else:
                self.take([Received(now - self._started, message)])
            if not self.ended:
                self.clock.arm()
        except (BrokenPipeError, KeyboardInterrupt, Terminated):
            raise
        except Exception as exc:
            self.failed(exc)

    def take(self, events: list[SessionEvent]) -> None:
        """The session's verdicts on what the caller sent; replies to one read in one send."""
        self.batch = []
        ended = None
        try:
            for event in events:
                if type(event) is Received:
                    self.handle(event.t, event.message)
                elif isinstance(event, Problem):
                    self.report.problem(event, ">")
                elif isinstance(event, Ended):
                    ended = event
        finally:
            batch, self.batch = self.batch, None
            if batch and not self.closed:
                self.write(batch[0] if len(batch) == 1 else b"".join(batch))
        if ended is not None:
            self.finish(ended)

    def handle(self, t: float, message: Message) -> None:
        kind, payload = message
        rate = AUDIO_RATES.get(kind)
        if rate is not None and payload:
            if rate != self.rate_in:
                self.rate_changed(t, rate)
            self.audio(t, message)
            return
        if kind == Kind.UUID and self.info.uuid is None and self.session.uuid is not None:
            # Known from its own line on: the uuid message shows the call's UUID.
            self.info.uuid = self.session.uuid
        self.report.message(t, ">", message)

    def audio(self, t: float, message: Message) -> None:
        self.report.message(t, ">", message)
        if self.config.echo:
            self.send(message, t)  # odd lengths too: Asterisk takes them
        if self.server.monitor is not None:
            self.monitor(t, message)

    def monitor(self, t: float, message: Message) -> None:
        server = self.server
        if server.monitor_call is None:
            server.monitor_call = self
        elif server.monitor_call is not self:
            return
        server.monitor.play(message.payload, message.rate)
        if server.monitor.error and not server.monitor_warned:
            server.monitor_warned = True
            self.report.warning(t, f"--monitor: {server.monitor.error}")

    def rate_changed(self, t: float, rate: int) -> None:
        previous, self.rate_in = self.rate_in, rate
        self.kind_in = RATE_KINDS[rate]
        self.reply_rate = rate
        if previous:
            self.report.warning(t, f"the caller's audio changed from {previous} Hz to {rate} Hz")

    def on_deadline(self) -> None:
        if self.ended:
            return
        self.on_readable()  # what did arrive counts first
        if not self.ended:
            self.take(self.session.tick(time.monotonic()))

    # Sending

    def send(self, message: Message, t: float) -> None:
        """Show, count and write one message (in one send)."""
        if self.closed:
            return
        self.report.message(t, "<", message)
        if message.refused_by_asterisk:
            for problem in self.session.sent(message, self.info.started + t):
                self.report.problem(problem)
        self.write(encode(message))

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.batch is not None:
            self.batch.append(data)
            return
        if self.unsent:
            self.unsent += data
            if len(self.unsent) > MAX_UNSENT:
                self.end("app-close", f"the caller reads nothing: {len(self.unsent)} bytes unsent")
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.take(self.session.reset(time.monotonic(), _os_reason(exc)))
            return
        if self.pcap is not None:
            self.pcap.sent(data[:sent])
        if sent < len(data):
            self.unsent += data[sent:]
            self.reactor.add_writer(self.sock, self.on_writable)

    def on_writable(self) -> None:
        try:
            sent = self.sock.send(self.unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.unsent.clear()
            if self.ended:
                self.close_socket()
            else:
                self.take(self.session.reset(time.monotonic(), _os_reason(exc)))
            return
        if self.pcap is not None:
            self.pcap.sent(bytes(self.unsent[:sent]))
        del self.unsent[:sent]
        if not self.unsent:
            self.reactor.remove_writer(self.sock)
            if self.ended:
                self.close_socket()

    def send_frame(self) -> None:
        """The k-th paced frame, due at start + k x 20 ms (no drift)."""
        if self.ended or self.source is None:
            return
        now = time.monotonic()
        due = self.pace_start + self.frame * FRAME_INTERVAL
        if now - due > LATE_LIMIT:
            # The process was stalled: restart the schedule rather than burst.
            self.pace_start += now - due
        rate = self.reply_rate
        pcm = self.source.next_frame(rate, rate // 50)
        if pcm is None:
            self.source = None  # the file has been played; the call goes on
            return
        if pcm:
            self.send(Message(RATE_KINDS[rate], pcm), now - self.info.started)
        self.frame += 1
        self.frame_timer = self.reactor.call_at(
            self.pace_start + self.frame * FRAME_INTERVAL, self._send_frame
        )

    def inject(self, injection: Injection) -> None:
        if self.ended:
            return
        now = time.monotonic()
        t = now - self.info.started
        why = f" by --inject {injection.what}@{injection.at:g}"
        for message in injection.messages:
            # One send per message, as Injection.wire_writes() says.
            self.report.message(t, "<", message)
            for problem in self.session.sent(message, now, why):
                self.report.problem(problem)
            self.write(encode(message))
        if injection.raw:
            messages, problems = self.session.sent_raw(injection.raw, now, why)
            for message in messages:
                self.report.message(t, "<", message)
            for problem in problems:
                self.report.problem(problem)
            self.write(injection.raw)
        if self.ended:
            return
        if injection.close:
            self.end("app-close", f"--inject {injection.what}@{injection.at:g}")
        elif any(m.kind == Kind.HANGUP for m in injection.messages):
            self.end("app-hangup", f"--inject {injection.what}@{injection.at:g}")

    # Ending

    def end(self, ended: str, detail: str = "") -> None:
        """We end the call (or the tool stops)."""
        self.finish(self.session.close(ended, detail, time.monotonic()))

    def finish(self, ended: Ended) -> None:
        """Recordings closed first, then the summary, then the socket."""
        if self.ended:
            return
        self.ended = True
        self.clock.cancel()
        for timer in (*self.timers, self.frame_timer):
            if timer is not None:
                timer.cancel()
        self.timers.clear()
        if not self.closed:
            self.reactor.remove_reader(self.sock)
            if self.unsent and ended.ended not in ("caller-reset", "truncated", "garbage"):
                # Let our last messages (a hangup) reach the peer, within reason.
                self.drain_timer = self.reactor.call_later(DRAIN_LIMIT, self.close_socket)
                self.server.draining.add(self)
            else:
                self.close_socket()
        end = self.report.finish(ended, self.session.violations, t=ended.t)
        self.server.call_ended(self, end)

    def close_socket(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.echoing = False
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.server.draining.discard(self)
        self.unsent.clear()
        self.reactor.forget(self.sock)
        try:
            self.sock.close()
        except OSError:
            pass
        if self.pcap is not None:
            self.pcap.ended(self.session.ended)


def config_source(config: ListenConfig) -> Any:
    return config.source_factory() if config.source_factory is not None else None


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection reset by peer"
    return exc.strerror or str(exc)


@dataclass
class Server:
    """Accepts callers on `listener` and runs their calls on `reactor`."""

    listener: socket.socket
    output: Output
    config: ListenConfig
    reactor: Reactor = field(default_factory=lambda: Reactor(coalesce=COALESCE))
    calls: dict[int, Call] = field(default_factory=dict)
    connections: int = 0
    started_calls: int = 0
    ended_calls: int = 0
    tally: Tally = field(default_factory=Tally)
    monitor_call: Call | None = None
    draining: set[Call] = field(default_factory=set)
    # Connection numbers and the call limits; shared by the processes of --workers.
    budget: Budget | None = None
    worker: int = 0  # which of the --workers processes this is (1...), 0 without

    def __post_init__(self) -> None:
        if self.budget is None:
            self.budget = Budget(self.config.max_calls, self.config.max_concurrent)
        self._budget: Budget = self.budget
        self.recv_buffer = bytearray(RECV_SIZE)
        self.recv_view = memoryview(self.recv_buffer)
        self.monitor = self.config.monitor
        self.monitor_warned = False
        # Shared by every call: the encoding analysis stays a small share of a core.
        self.analysis_allowed = AnalysisBudget()
        self.address: Address = bound_address(self.listener)
        self.listener.setblocking(False)
        self.reactor.after_turn = self.output.tick
        self.refusals = self._budget.refusals(self.output, self.reactor)

    @classmethod
    def bind(cls, address: Address, output: Output, config: ListenConfig) -> Server:
        """Listen on `address` (transport.ConnectError if it cannot)."""
        raise_fd_limit()
        return cls(listen(address), output, config)

    # Accepting

    def start(self) -> None:
        self.reactor.add_reader(self.listener, self.on_accept)

    def on_accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = accept(self.listener)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the caller left before we took it
                self.accept_failed(exc)
                return
            sock.setblocking(False)
            self.connections, going, limit = self._budget.admit()
            info = CallInfo(conn=self.connections, peer=peer)
            if limit:
                self.refuse(sock, info, limit, going)
            else:
                self.started_calls += 1
                call = self.calls[info.conn] = Call(self, sock, info)
                call.guarded(call.start)()

    def refuse(self, sock: socket.socket, info: CallInfo, limit: str, going: int) -> None:
        sock.close()
        self.refusals.refused(info, going, limit)

    def accept_failed(self, exc: OSError) -> None:
        # Out of descriptors: the listener stays readable, so pause rather than spin.
        self.reactor.remove_reader(self.listener)
        self.reactor.call_later(0.1, self.start)
        text = f"cannot accept a caller: {exc.strerror or exc}"
        self.output.warning(CallInfo(conn=self.connections + 1), 0.0, text)

    # Running

    def call_ended(self, call: Call, end: CallEnd) -> None:
        self.calls.pop(call.info.conn, None)
        self.ended_calls += 1
        self.tally.add(end)
        if self.monitor_call is call:
            self.monitor_call = None  # the next call whose audio arrives is heard
        if self._budget.ended():  # --max-calls calls have ended, in every worker
            self.reactor.stop()

    def run(self) -> ExitStatus:
        """Serve until --max-calls calls have ended (or a signal); the exit status."""
        self.start()
        with frozen_heap():
            self.reactor.run()
        return self.tally.status

    def close(self, ended: str = "interrupted", detail: str = "") -> None:
        """End every call still going (recordings first) and stop listening."""
        self.refusals.close()
        for call in list(self.calls.values()):
            for recording in call.report.recordings.values():
                recording.close()  # before anything that could fail (stdout gone)
        for call in list(self.calls.values()):
            try:
                call.end(ended, detail)
            except Exception:
                call.close_socket()
        for call in [*self.calls.values(), *self.draining]:
            call.close_socket()
        try:
            self.reactor.forget(self.listener)
            self.listener.close()
        except OSError:
            pass
        self.reactor.close()


def worker_server(config: ListenConfig) -> Callable[[socket.socket, Output, Budget, int], Server]:
    """How each process of `listen --workers N` makes its Server (engines.workers)."""

    def make(listener: socket.socket, output: Output, budget: Budget, worker: int) -> Server:
        raise_fd_limit()
        return Server(listener, output, config, budget=budget, worker=worker)

    return make
