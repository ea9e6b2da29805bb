"""The engine of `audiosocket listen`: many AudioSocket calls on one selector loop.

Accepts connections, decodes what each caller sends, shows and records it,
and answers (echo, paced audio, injections) without ever blocking the loop.
One thread serves every call: a thread per call cannot keep echo latency low
at hundreds of calls under the GIL.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import gc
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiosocket_cli.analysis.stats import AnalysisBudget, DirectionStats, diagnose_asterisk
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.reactor import Reactor, Timer
from audiosocket_cli.net.transport import accept, bound_address, listen
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.events import CallInfo
from audiosocket_cli.protocol.inject import Injection
from audiosocket_cli.protocol.wire import (
    AUDIO_RATES,
    KIND_NAMES,
    RATE_KINDS,
    Decoder,
    Kind,
    Message,
    TruncatedMessage,
    encode,
)
from audiosocket_cli.status import ExitStatus, Terminated

FRAME_INTERVAL = 0.020  # replies go out in 20 ms messages, as Asterisk sends
FIRST_RATE = 8000  # the dialplan application always talks 8 kHz
RECV_SIZE = 256 * 1024
MESSAGE_STALL = 5.0  # a message begun and unfinished this long: not a working client
LATE_LIMIT = 0.100  # paced sends this late (a stalled process) restart the schedule
MAX_UNSENT = 1 << 20  # bytes queued for a peer that does not read, before we give up
DRAIN_LIMIT = 2.0  # seconds a closing call may take to hand over what it queued
ACCEPT_BATCH = 128  # callers accepted per wake-up, so running calls are not starved
# The encoding analysis (mu-law labelled as slin...) costs ~40 us a frame: a budget
# across all calls keeps it under ~4% of a core; with few calls it never binds.

# How a call ended (the call-end event's `how`).
ENDINGS = (
    "peer-hangup",
    "peer-close",
    "peer-reset",
    "our-hangup",
    "our-close",
    "timeout",
    "protocol-error",
    "interrupted",
    "terminated",
    "internal-error",
)

SourceFactory = Callable[[], Any]  # returns an audio FrameSource (next_frame(rate, samples))


@dataclass
class ListenConfig:
    """What `listen` does with each call; built from the command line."""

    echo: bool = False
    source_factory: SourceFactory | None = None  # --play/--tone/--silence
    injections: tuple[Injection, ...] = ()
    record_dir: Path | None = None
    timeout: float | None = None
    max_calls: int | None = None
    max_concurrent: int = 1000
    monitor: Any = None  # a monitor.Monitor, or None


def file_source_factory(template: Any) -> SourceFactory:
    """Per-call copies of one loaded FileSource: the file is read (and each
    rate resampled) once, not once per call."""

    def make() -> Any:
        source = copy.copy(template)
        source.position = 0.0
        return source

    return make


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while recordings are being closed; they are
    delivered (and end the command) right after."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _raise_fd_limit() -> None:
    # A thousand calls need more descriptors than the usual soft limit of 1024.
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def call_recording(directory: Path, stem: str) -> Any:
    """A call's inbound audio: DIR/<stem>.wav (or <stem>-2.wav for a second call
    with the same UUID), and DIR/<stem>.<rate>.wav for each rate the caller
    switches to, so every sample is kept at its own rate."""
    from audiosocket_cli.media.audio import RateSplitRecording, unique_path

    return RateSplitRecording(
        lambda: unique_path(directory, stem, ".wav"),
        lambda first, rate: unique_path(directory, f"{first.stem}.{rate}", ".wav"),
    )


class Call:
    """One connection: its decoder, statistics, recording and replies."""

    def __init__(self, server: Server, sock: socket.socket, info: CallInfo) -> None:
        self.server = server
        self.reactor = server.reactor
        self.output = server.output
        self.sock = sock
        self.info = info
        self.config = server.config
        self.decoder = Decoder()
        self.inbound = DirectionStats(
            encoding_offset=info.conn, encoding_gate=server.analysis_allowed
        )
        self.outbound = DirectionStats(analyse_encoding=False)  # what we send ourselves
        self.ended = False
        self.closed = False
        self.how = ""
        self.reason = ""
        self.first_message = True
        self.last_rx = info.started
        self.partial_since: float | None = None
        self.unsent = bytearray()
        self.batch: list[bytes] | None = None
        self.timers: list[Timer] = []  # the injections'
        self.idle_timer: Timer | None = None
        self.stall_timer: Timer | None = None
        self.frame_timer: Timer | None = None
        self.recorder: Any = None  # audio.RateSplitRecording, made at the first audio
        self.recording = self.config.record_dir is not None
        self.rate_in = 0  # rate of the caller's latest audio
        self.reply_rate = FIRST_RATE
        self.source = config_source(self.config)
        self.frame = 0
        self.pace_start = info.started
        self.warned: set[str] = set()
        self.drain_timer: Timer | None = None

    # Start

    def start(self) -> None:
        started = self.info.started
        self.reactor.add_reader(self.sock, self.guarded(self.on_readable))
        self.output.event(
            self.info, 0.0, "call-start", f"from {self.info.peer}", peer=str(self.info.peer)
        )
        for injection in self.config.injections:
            self.timers.append(
                self.reactor.call_at(
                    started + injection.at, self.guarded(lambda i=injection: self.inject(i))
                )
            )
        if self.config.timeout:
            self.idle_timer = self.reactor.call_at(
                started + self.config.timeout, self.guarded(self.check_idle)
            )
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
                if self.ended:
                    self.close_socket()
                else:
                    self.end("internal-error", f"{type(exc).__name__}: {exc}")

        return run

    # Receiving

    def on_readable(self) -> None:
        try:
            n = self.sock.recv_into(self.server.recv_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.end("peer-reset", _os_reason(exc))
            return
        now = time.monotonic()
        decoder = self.decoder
        if not n:
            try:
                decoder.end_of_stream()
            except TruncatedMessage as exc:
                # Whole messages before the cut still count.
                self.handle_all(now, decoder.messages())
                self.end("protocol-error", str(exc))
                return
            self.handle_all(now, decoder.messages())
            self.end("peer-close")
            return
        self.last_rx = now
        data = self.server.recv_view[:n]
        if self.first_message and data[0] not in KIND_NAMES and not decoder.buffered:
            # The first byte of a stream is a message kind: garbage shows at once.
            self.end(
                "protocol-error",
                f"not AudioSocket: first byte 0x{data[0]:02x} is not a message kind "
                f"(data {bytes(data[:16]).hex()})",
            )
            return
        decoder.feed(data)
        messages = decoder.messages()
        if len(messages) == 1:
            self.handle(now, messages[0])  # the usual read: one message, nothing to batch
            if self.ended:
                return
        elif messages:
            self.handle_all(now, messages)
            if self.ended:
                return
        if decoder.buffered:
            if messages or self.partial_since is None:
                self.partial_since = now
                if self.stall_timer is None:
                    self.stall_timer = self.reactor.call_at(
                        now + MESSAGE_STALL, self.guarded(self.check_stall)
                    )
        else:
            self.partial_since = None

    def handle_all(self, now: float, messages: list[Message]) -> None:
        # Replies to one read leave in one send.
        self.batch = []
        try:
            for message in messages:
                self.handle(now, message)
                if self.ended:
                    break
        finally:
            batch, self.batch = self.batch, None
            if batch and not self.closed:
                self.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def handle(self, now: float, message: Message) -> None:
        kind, payload = message
        t = now - self.info.started
        rate = AUDIO_RATES.get(kind)
        if rate == self.rate_in and payload and not len(payload) & 1 and not self.first_message:
            # The fast path: audio as Asterisk sends it, 50 times a second per call.
            if self.recording:
                self.record(t, rate, payload)  # before it is shown: what was shown is in the file
            self.inbound.add(t, message)
            if self.server.show_messages:
                self.output.message(self.info, t, ">", message)
            if self.config.echo:
                self.outbound.add(t, message)
                if self.server.show_messages:
                    self.output.message(self.info, t, "<", message)
                self.write(encode(message))
            if self.server.monitor is not None:
                self.monitor(t, rate, payload)
            return
        if rate is not None:
            if self.recording:
                self.record(t, rate, payload)
            if rate != self.rate_in:
                self.rate_changed(t, rate)
        elif kind == Kind.UUID and self.info.uuid is None and len(payload) == 16:
            # Known from its own line on: the uuid message shows the call's UUID.
            self.info.uuid = str(message.uuid)
        self.inbound.add(t, message)
        if self.server.show_messages:
            self.output.message(self.info, t, ">", message)
        if self.first_message:
            self.first_message = False
            if kind != Kind.UUID:
                self.warn(
                    t,
                    f"first message is {message.name} (kind 0x{kind:02x}, {len(payload)} "
                    "bytes), not a uuid: Asterisk always sends the UUID first",
                )
        problem = message.problem
        if problem and problem not in self.warned:
            self.warned.add(problem)
            self.warn(t, f"the caller sent a malformed message: {problem}")
        if rate is not None:
            if payload:
                if self.config.echo:
                    self.send(message, t)  # odd lengths too: Asterisk takes them
                if self.server.monitor is not None:
                    self.monitor(t, rate, payload)
        elif kind == Kind.UUID:
            uuid = message.uuid
            if uuid is not None and str(uuid) != self.info.uuid:
                self.warn(t, f"a second uuid {uuid} in the call; it stays {self.info.uuid}")
        elif kind == Kind.HANGUP:
            self.end("peer-hangup")

    def monitor(self, t: float, rate: int, payload: bytes) -> None:
        server = self.server
        if server.monitor_call is None:
            server.monitor_call = self
        elif server.monitor_call is not self:
            return
        server.monitor.play(payload, rate)
        if server.monitor.error and not server.monitor_warned:
            server.monitor_warned = True
            self.warn(t, f"--monitor: {server.monitor.error}")

    def rate_changed(self, t: float, rate: int) -> None:
        previous, self.rate_in = self.rate_in, rate
        self.reply_rate = rate
        if not previous:
            return
        text = f"the caller's audio changed from {previous} Hz to {rate} Hz"
        recorder = self.recorder
        if recorder is not None and self.recording:
            path = recorder.writers.get(rate)
            text += f"; recording it in {path.path if path else 'a second file'}"
        self.warn(t, text)

    def record(self, t: float, rate: int, payload: bytes) -> None:
        recorder = self.recorder
        if recorder is None:
            stem = self.info.uuid or f"conn-{self.info.conn}"
            recorder = self.recorder = call_recording(self.config.record_dir, stem)  # type: ignore[arg-type]
        try:
            recorder.write(rate, payload)
        except Exception as exc:  # AudioFileError, a full disk: the call goes on unrecorded
            self.recording = False
            self.warn(t, f"cannot record this call: {exc}")

    def check_idle(self) -> None:
        if self.ended:
            return
        timeout = self.config.timeout or 0.0
        due = self.last_rx + timeout
        if time.monotonic() >= due - 0.0005:
            self.end("timeout", f"nothing received for {timeout:g} s")
        else:
            self.idle_timer = self.reactor.call_at(due, self.guarded(self.check_idle))

    def check_stall(self) -> None:
        self.stall_timer = None
        since = self.partial_since
        if self.ended or since is None:
            return
        due = since + MESSAGE_STALL
        if time.monotonic() < due - 0.0005:
            self.stall_timer = self.reactor.call_at(due, self.guarded(self.check_stall))
        else:
            self.end(
                "protocol-error",
                f"a message stayed incomplete for {MESSAGE_STALL:g} s "
                f"({self.decoder.buffered} bytes of it arrived)",
            )

    # Sending

    def send(self, message: Message, t: float) -> None:
        """Show, count and write one message (in one send)."""
        if self.closed:
            return
        self.outbound.add(t, message)
        if self.server.show_messages:
            self.output.message(self.info, t, "<", message)
        if message.refused_by_asterisk:
            self.refused(t, message, "")
        self.write(encode(message))

    def refused(self, t: float, message: Message, why: str) -> None:
        self.outbound.note_refused(message)
        name = message.name
        what = f"{'an' if name[0] in 'aeiou' else 'a'} {name} message"
        if message.problem:
            what += f" ({message.problem})"
        self.warn(t, f"we sent {what}{why}: Asterisk would end the session on it")

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.batch is not None:
            self.batch.append(data)
            return
        if self.unsent:
            self.unsent += data
            if len(self.unsent) > MAX_UNSENT:
                self.end("our-close", f"the caller reads nothing: {len(self.unsent)} bytes unsent")
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.end("peer-reset", _os_reason(exc))
            return
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
                self.end("peer-reset", _os_reason(exc))
            return
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
        t = time.monotonic() - self.info.started
        for message in injection.messages:
            # One send per message, as wire_writes() says.
            self.outbound.add(t, message)
            self.output.message(self.info, t, "<", message)
            if message.refused_by_asterisk:
                self.refused(t, message, f" (--inject {injection.what}@{injection.at:g})")
            self.write(encode(message))
        if injection.raw:
            self.inject_raw(t, injection)
        if self.ended:
            return
        if injection.close:
            self.end("our-close", f"--inject {injection.what}@{injection.at:g}")
        elif any(m.kind == Kind.HANGUP for m in injection.messages):
            self.end("our-hangup", f"--inject {injection.what}@{injection.at:g}")

    def inject_raw(self, t: float, injection: Injection) -> None:
        """Raw bytes: shown as the messages they make, warned about as Asterisk sees them."""
        decoder = Decoder()
        decoder.feed(injection.raw)
        for message in decoder.messages():
            self.outbound.add(t, message)
            self.output.message(self.info, t, "<", message)
            if message.refused_by_asterisk:
                self.refused(t, message, f" (--inject {injection.what}@{injection.at:g})")
        if decoder.buffered:
            self.outbound.wire_bytes += decoder.buffered
            self.warn(
                t,
                f"we sent {decoder.buffered} bytes of an unfinished message (--inject "
                f"{injection.what}@{injection.at:g}): Asterisk waits for the rest, and ends "
                "the session when a payload stalls for more than about 5 ms",
            )
        self.write(injection.raw)

    # Ending

    def warn(self, t: float, text: str) -> None:
        self.output.event(self.info, t, "warning", text)

    def end(self, how: str, reason: str = "") -> None:
        """End the call: recordings closed first, then the summary, then the socket."""
        if self.ended:
            return
        self.ended = True
        self.how, self.reason = how, reason
        t = time.monotonic() - self.info.started
        for timer in (*self.timers, self.idle_timer, self.stall_timer, self.frame_timer):
            if timer is not None:
                timer.cancel()
        self.timers.clear()
        paths: list[str] = []
        if self.recorder is not None:
            self.recorder.close()
            paths = [str(p) for p in self.recorder.paths]
        if not self.closed:
            self.reactor.remove_reader(self.sock)
            if self.unsent and how not in ("peer-reset", "protocol-error"):
                # Let our last messages (a hangup) reach the peer, within reason.
                self.drain_timer = self.reactor.call_later(DRAIN_LIMIT, self.close_socket)
                self.server.draining.add(self)
            else:
                self.close_socket()
        try:
            for diagnosis in diagnose_asterisk(self.inbound):
                self.output.event(self.info, t, "diagnosis", diagnosis.text, code=diagnosis.code)
        except Exception:  # a diagnosis is a nicety; the summary must come out
            pass
        self.output.event(
            self.info,
            t,
            "call-end",
            self.summary(t, paths),
            how=how,
            reason=reason,
            duration=round(t, 6),
            peer=str(self.info.peer),
            inbound=self.inbound.as_dict(),
            outbound=self.outbound.as_dict(),
            recordings=paths,
        )
        self.server.call_ended(self)

    def summary(self, t: float, paths: list[str]) -> str:
        how = f"{self.how} ({self.reason})" if self.reason else self.how
        text = (
            f"{how} duration {t:.3f}s; > {self.inbound.summary()}; "
            f"< {self.outbound.summary()}; > gaps {self.inbound.pacing()}"
        )
        if paths:
            text += f"; recorded {', '.join(paths)}"
        return text

    def close_socket(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.server.draining.discard(self)
        self.unsent.clear()
        self.reactor.forget(self.sock)
        try:
            self.sock.close()
        except OSError:
            pass


def shows_messages(output: Output) -> bool:
    """Does any sink use messages? Not when every one is quiet plain/JSON (-q),
    which spares 25,000 calls a second into Output at 500 echoed calls."""
    from audiosocket_cli.output.sinks import JsonSink, PlainSink, StderrEventSink

    for sink in output.sinks:
        if isinstance(sink, StderrEventSink):
            continue
        if isinstance(sink, (PlainSink, JsonSink)) and sink.quiet:
            continue
        return True
    return False


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
    reactor: Reactor = field(default_factory=Reactor)
    calls: dict[int, Call] = field(default_factory=dict)
    connections: int = 0
    started_calls: int = 0
    ended_calls: int = 0
    protocol_errors: int = 0
    monitor_call: Call | None = None
    draining: set[Call] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.recv_buffer = bytearray(RECV_SIZE)
        self.recv_view = memoryview(self.recv_buffer)
        self.monitor = self.config.monitor
        self.monitor_warned = False
        self.show_messages = shows_messages(self.output)
        # Shared by every call: the encoding analysis stays a small share of a core.
        self.analysis_allowed = AnalysisBudget()
        self.address: Address = bound_address(self.listener)
        self.listener.setblocking(False)

    @classmethod
    def bind(cls, address: Address, output: Output, config: ListenConfig) -> Server:
        """Listen on `address` (transport.ConnectError if it cannot)."""
        _raise_fd_limit()
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
            self.connections += 1
            info = CallInfo(conn=self.connections, peer=peer)
            max_calls = self.config.max_calls
            if len(self.calls) >= self.config.max_concurrent:
                self.refuse(sock, info, f"--max-concurrent {self.config.max_concurrent}")
            elif max_calls is not None and self.started_calls >= max_calls:
                self.refuse(sock, info, f"--max-calls {max_calls}")
            else:
                self.started_calls += 1
                call = self.calls[info.conn] = Call(self, sock, info)
                call.guarded(call.start)()

    def refuse(self, sock: socket.socket, info: CallInfo, limit: str) -> None:
        sock.close()
        self.output.event(
            info,
            0.0,
            "warning",
            f"refused a caller from {info.peer}: {len(self.calls)} calls already ({limit})",
            peer=str(info.peer),
        )

    def accept_failed(self, exc: OSError) -> None:
        # Out of descriptors: the listener stays readable, so pause rather than spin.
        self.reactor.remove_reader(self.listener)
        self.reactor.call_later(0.1, self.start)
        self.output.event(
            CallInfo(conn=self.connections + 1),
            0.0,
            "warning",
            f"cannot accept a caller: {exc.strerror or exc}",
        )

    # Running

    def call_ended(self, call: Call) -> None:
        self.calls.pop(call.info.conn, None)
        self.ended_calls += 1
        if call.how == "protocol-error":
            self.protocol_errors += 1
        if self.monitor_call is call:
            self.monitor_call = None  # the next call whose audio arrives is heard
        max_calls = self.config.max_calls
        if max_calls is not None and self.ended_calls >= max_calls:
            self.reactor.stop()

    def run(self) -> ExitStatus:
        """Serve until --max-calls calls have ended (or a signal); the exit status."""
        self.start()
        # What exists now (modules, config) lives as long as the process: keep
        # the collector from walking it again and again, a pause of many ms.
        gc.collect()
        gc.freeze()
        self.reactor.run()
        return ExitStatus.PROTOCOL if self.protocol_errors else ExitStatus.OK

    def close(self, how: str = "our-close", reason: str = "") -> None:
        """End every call still going (recordings first) and stop listening."""
        for call in list(self.calls.values()):
            if call.recorder is not None:
                call.recorder.close()  # before anything that could fail (stdout gone)
        for call in list(self.calls.values()):
            try:
                call.end(how, reason)
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
