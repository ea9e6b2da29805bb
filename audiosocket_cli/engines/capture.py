"""The capture proxy: bytes forwarded both ways at once, decoded on the side.

For each connection Asterisk makes, a connection to the upstream application.
Whatever one side sends is passed to the other in the same chunk it arrived
in, the moment it arrives, so that the timing faults being debugged are not
hidden by the tool: nothing is re-framed or held back to be decoded. The
chunks are decoded afterwards (shown, counted, recorded, checked against what
Asterisk accepts), in short slices between polls of the sockets, so that
forwarding always comes first. All calls run on one :class:`Reactor` thread.

If a destination's kernel buffer is full, the rest of the chunk waits and its
source is not read until it has drained: one chunk per direction at most.
Chunks not yet decoded are bounded too (DECODE_BACKLOG). An end of stream is
passed on as a half-close, a reset as a reset.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections import deque
from pathlib import Path
from typing import Any

from audiosocket_cli.analysis.stats import (
    AnalysisBudget,
    DirectionStats,
    diagnose_application,
    diagnose_asterisk,
)
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.reactor import Reactor, Timer
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.events import CallInfo
from audiosocket_cli.protocol.wire import Decoder, Kind, Message, TruncatedMessage
from audiosocket_cli.status import ExitStatus

RECV_SIZE = 65536
CONNECT_TIMEOUT = 2.0  # what Asterisk allows
ACCEPT_BATCH = 64
ACCEPT_PAUSE = 0.1  # out of file descriptors: wait before accepting again
WHO = {">": "caller", "<": "application"}
SIDE = {">": "in", "<": "out"}
IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, errno.EINTR)
LINGER_RESET = struct.pack("ii", 1, 0)  # close() then sends RST, not FIN
DECODE_SLICE = 0.0005  # seconds of decoding between two polls of the sockets
DECODE_BACKLOG = 8 << 20  # bytes forwarded but not yet decoded, at most
HOLD_MESSAGES = 500  # application audio held until the caller's first message names the call


def resolve(address: Address) -> list[tuple[int, tuple]]:
    """(family, sockaddr) for each address of the upstream; raises OSError."""
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def _nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def _error_text(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class Recorder:
    """One direction's audio as WAVs: `<stem>.<side>.wav`, then one file per new rate."""

    def __init__(self, directory: Path, side: str) -> None:
        self.directory = directory
        self.side = side
        self.files: Any = None  # audio.RateSplitRecording, made at the first audio
        self.rate: int | None = None
        self.failed = False

    def write(self, stem: str, message: Message) -> str | None:
        """Record one audio message; returns a line to warn with, or None."""
        from audiosocket_cli.media.audio import AudioFileError, RateSplitRecording, unique_path

        rate = message.rate
        assert rate is not None
        if self.files is None:
            directory, side = self.directory, self.side
            self.files = RateSplitRecording(
                lambda: unique_path(directory, stem, f".{side}.wav"),
                lambda first, rate: unique_path(directory, stem, f".{side}.{rate}.wav"),
            )
        try:
            opened = self.files.write(rate, message.payload)
        except AudioFileError as exc:
            self.failed = True
            return f"recording stopped: {exc}"
        previous, self.rate = self.rate, rate
        if previous is None or rate == previous:
            return None
        if opened is not None:
            return f"audio rate changed from {previous} to {rate} Hz: recording into {opened}"
        return f"audio rate changed from {previous} to {rate} Hz"

    @property
    def paths(self) -> list[Path]:
        return self.files.paths if self.files is not None else []

    def close(self) -> None:
        if self.files is not None:
            self.files.close()


class Pipe:
    """One direction of a call: what `src` sends goes to `dst` at once."""

    def __init__(self, call: ProxyCall, direction: str) -> None:
        self.call = call
        self.reactor = call.proxy.reactor
        self.direction = direction
        self.who = WHO[direction]
        self.src: socket.socket | None = None
        self.dst: socket.socket | None = None
        self.pending: deque[bytes] = deque()  # read, not yet taken by dst's kernel
        self.held: list[tuple[float, Message]] = []  # audio to record once the call has a name
        self.forwarded = 0
        self.eof = False  # the source ended its stream
        self.done = False  # ... and that was passed on
        self.decoder = Decoder()
        # The encoding analysis (numpy) is spread: calls that start together
        # analyse different frames, within one budget for all calls.
        self.stats = DirectionStats(
            encoding_offset=call.info.conn, encoding_gate=call.proxy.analysis_budget
        )
        self.hung_up = False
        self.first_message = True
        self.warned: set[str] = set()
        record_dir = call.proxy.record_dir
        self.recorder = Recorder(record_dir, SIDE[direction]) if record_dir else None

    @property
    def other(self) -> Pipe:
        call = self.call
        return call.outbound if self is call.inbound else call.inbound

    # Forwarding: the hot path.

    def on_readable(self) -> None:
        try:
            data = self.src.recv(RECV_SIZE)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.call.reset(self.who, exc)
            return
        now = time.monotonic()
        if not data:
            self.eof = True
            self.reactor.remove_reader(self.src)  # type: ignore[arg-type]
            self.call.proxy.decode_later(self, now, None)
            if self.call.first_close is None:
                self.call.first_close = self.direction
            if not self.pending and self.call.connected:
                self.pass_on_eof()
            return
        self.forwarded += len(data)
        # Queued before sending, so that a call ended by a failed send still shows it.
        self.call.proxy.decode_later(self, now, data)
        if self.pending or not self.call.connected:
            self.pending.append(data)
            self.reactor.remove_reader(self.src)  # type: ignore[arg-type]
            return
        try:
            sent = self.dst.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.call.reset(self.other.who, exc)
            return
        if sent < len(data):
            # Backpressure: hold the rest, stop reading until dst drains.
            self.pending.append(data[sent:])
            self.reactor.remove_reader(self.src)  # type: ignore[arg-type]
            self.reactor.add_writer(self.dst, self.on_writable)  # type: ignore[arg-type]

    def on_writable(self) -> None:
        """Send what is held back; then read again, or pass on the end of stream."""
        pending = self.pending
        while pending:
            chunk = pending[0]
            try:
                sent = self.dst.send(chunk)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.call.reset(self.other.who, exc)
                return
            if sent < len(chunk):
                pending[0] = chunk[sent:]
                self.reactor.add_writer(self.dst, self.on_writable)  # type: ignore[arg-type]
                return
            pending.popleft()
        self.reactor.remove_writer(self.dst)  # type: ignore[arg-type]
        if self.eof:
            if not self.done:
                self.pass_on_eof()
        else:
            self.reactor.add_reader(self.src, self.on_readable)  # type: ignore[arg-type]

    def pass_on_eof(self) -> None:
        self.done = True
        try:
            self.dst.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        except OSError:
            pass  # dst is gone already; its own direction reports that
        self.call.check_done()

    # Decoding: on the side, after forwarding.

    def decode(self, t: float, data: bytes | None) -> None:
        call, proxy = self.call, self.call.proxy
        info = call.info
        ct = t - info.started
        if data is None:
            try:
                self.decoder.end_of_stream()
            except TruncatedMessage as exc:
                call.malformed = True
                proxy.output.event(
                    info,
                    ct,
                    "warning",
                    f"{self.who}'s stream ended inside a message: {exc.have} bytes "
                    f"received, {exc.missing} missing (forwarded as they were)",
                    missing=exc.missing,
                    dir=self.direction,
                )
            return
        self.decoder.feed(data)
        for message in self.decoder.messages():
            self.on_message(ct, message)

    def on_message(self, ct: float, message: Message) -> None:
        call, proxy = self.call, self.call.proxy
        info, output = call.info, proxy.output
        self.stats.add(ct, message)
        first, self.first_message = self.first_message, False
        if first and self.direction == ">":
            uuid = message.uuid
            if uuid is not None:
                info.uuid = str(uuid)
        output.message(info, ct, self.direction, message)
        kind = message[0]
        if kind == Kind.HANGUP:
            self.hung_up = True
        problem = message.problem
        if problem:
            call.malformed = True
        if self.direction == "<" and message.refused_by_asterisk:
            self.stats.note_refused(message)
            what = problem or f"{message.name} message"
            self._warn_once(
                ct, what, f"application sent {what}: Asterisk would end the session (forwarded)"
            )
        elif problem:
            self._warn_once(ct, problem, f"{self.who} sent {problem} (forwarded)")
        elif first and self.direction == ">" and kind != Kind.UUID:
            self._warn_once(
                ct, "first", f"caller's first message is {message.name}, not a UUID (forwarded)"
            )
        if first and self.direction == ">":
            call.outbound.record_held()  # the call has its name now
        if self.recorder is not None and message.payload and message.is_audio:
            if self.direction == "<" and call.inbound.first_message:
                # The application spoke before the caller's first message named the
                # call: hold its audio (bounded) so that its file gets the UUID.
                self.held.append((ct, message))
                if len(self.held) < HOLD_MESSAGES:
                    return
                self.record_held()
            else:
                self.record(ct, message)

    def record(self, ct: float, message: Message) -> None:
        recorder, info = self.recorder, self.call.info
        if recorder is None or recorder.failed:
            return
        # The name comes only from a validated UUID (Message.uuid), never raw bytes.
        warning = recorder.write(info.uuid or f"conn-{info.conn}", message)
        if warning:
            self.call.proxy.output.event(info, ct, "warning", f"{self.who} {warning}")

    def record_held(self) -> None:
        held, self.held = self.held, []
        for ct, message in held:
            self.record(ct, message)

    def close_recording(self) -> None:
        if self.recorder is not None:
            self.record_held()
            self.recorder.close()

    def _warn_once(self, ct: float, key: str, text: str) -> None:
        """The first of each problem as it passes; the call-end line counts the rest."""
        if key not in self.warned:
            self.warned.add(key)
            self.call.proxy.output.event(self.call.info, ct, "warning", text, dir=self.direction)


class ProxyCall:
    """One call: the caller's connection, the upstream connection, two pipes."""

    def __init__(self, proxy: Proxy, conn: int, caller: socket.socket, peer: Address) -> None:
        self.proxy = proxy
        self.info = CallInfo(conn=conn, peer=peer)
        self.caller = caller
        self.upstream: socket.socket | None = None
        self.connected = False
        self.ended = False
        self.malformed = False
        self.upstream_failed = False
        self.first_close: str | None = None
        self.inbound = Pipe(self, ">")
        self.outbound = Pipe(self, "<")
        self.inbound.src = caller
        self.outbound.dst = caller
        self._addresses = list(proxy.upstream_addresses)
        self._timer: Timer | None = None

    def start(self) -> None:
        proxy = self.proxy
        proxy.output.event(
            self.info,
            0.0,
            "call-start",
            f"from {self.info.peer} to upstream {proxy.upstream}",
            peer=str(self.info.peer),
            upstream=str(proxy.upstream),
        )
        # Read the caller at once: its first chunk (the UUID) waits for the upstream.
        proxy.reactor.add_reader(self.caller, self.inbound.on_readable)
        self._connect_next()

    # Connecting to the upstream, without blocking, as Asterisk would.

    def _connect_next(self) -> None:
        family, sockaddr = self._addresses.pop(0)
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            self._connect_failed(_error_text(exc))
            return
        sock.setblocking(False)
        self.upstream = self.inbound.dst = self.outbound.src = sock
        err = sock.connect_ex(sockaddr)
        if err == 0:
            self._connected()
        elif err in IN_PROGRESS:
            reactor = self.proxy.reactor
            reactor.add_writer(sock, self._on_connect_ready)
            self._timer = reactor.call_later(self.proxy.connect_timeout, self._on_connect_timeout)
        else:
            self._connect_failed(os.strerror(err))

    def _on_connect_ready(self) -> None:
        sock = self.upstream
        assert sock is not None
        self.proxy.reactor.remove_writer(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err in IN_PROGRESS:
            self.proxy.reactor.add_writer(sock, self._on_connect_ready)
            return
        if self._timer:
            self._timer.cancel()
            self._timer = None
        if err:
            self._connect_failed(os.strerror(err))
        else:
            self._connected()

    def _on_connect_timeout(self) -> None:
        self._timer = None
        self._connect_failed(f"timed out after {self.proxy.connect_timeout:g} s")

    def _connect_failed(self, reason: str) -> None:
        sock, self.upstream = self.upstream, None
        if sock is not None:
            self.proxy.reactor.forget(sock)
            sock.close()
        if self._addresses:
            self._connect_next()
            return
        self.upstream_failed = True
        text = f"cannot connect to upstream {self.proxy.upstream}: {reason}"
        self.proxy.flush_decode()
        self.proxy.output.event(
            self.info,
            self.info.elapsed(),
            "warning",
            f"{text}; closing the caller's connection",
            upstream=str(self.proxy.upstream),
            error=reason,
        )
        self.end("upstream-unreachable", text)

    def _connected(self) -> None:
        sock = self.upstream
        assert sock is not None
        self.connected = True
        _nodelay(sock)
        self.proxy.reactor.add_reader(sock, self.outbound.on_readable)
        self.inbound.on_writable()  # what the caller sent meanwhile, and its EOF

    # Ending.

    def check_done(self) -> None:
        if self.inbound.done and self.outbound.done:
            self.end(*self._first_ending())

    def _first_ending(self) -> tuple[str, str]:
        """How the side that ended first ended: ('caller-close', 'caller closed'), ..."""
        self.proxy.flush_decode()  # its hangup message may still be queued
        pipe = self.outbound if self.first_close == "<" else self.inbound
        if pipe.hung_up:
            return f"{pipe.who}-hangup", f"{pipe.who} hung up"
        return f"{pipe.who}-close", f"{pipe.who} closed"

    def reset(self, who: str, exc: OSError) -> None:
        """A socket error on one side: the other side is reset too, as it would be."""
        if self.ended:
            return
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            how, text = f"{who}-reset", f"{who} reset the connection"
        else:
            how, text = f"{who}-error", f"{who} connection failed: {_error_text(exc)}"
        if self.first_close is not None:
            # One side ended first; the reset is what the other's late bytes met.
            how, first = self._first_ending()
            text = f"{first}, then {text}"
        self.end(how, text, reset=True)

    def end(self, code: str, text: str, reset: bool = False) -> None:
        if self.ended:
            return
        proxy = self.proxy
        proxy.flush_decode()  # everything forwarded is shown and recorded first
        self.ended = True
        if self._timer:
            self._timer.cancel()
            self._timer = None
        for sock in (self.caller, self.upstream):
            if sock is None:
                continue
            proxy.reactor.forget(sock)
            if reset:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                except OSError:
                    pass
            sock.close()
        for pipe in (self.inbound, self.outbound):
            pipe.close_recording()
        proxy.call_ended(self, code, text)

    def report(self, how: str, reason: str) -> None:
        """Diagnoses, then the call-end line with the summary of both directions."""
        info, output = self.info, self.proxy.output
        t = info.elapsed()
        asterisk, app = self.inbound.stats, self.outbound.stats
        diagnoses = []
        if self.connected:
            diagnoses = diagnose_application(app, asterisk) + diagnose_asterisk(asterisk)
        for found in diagnoses:
            output.event(info, t, "diagnosis", found.text, code=found.code)
        paths = [
            str(path)
            for pipe in (self.inbound, self.outbound)
            if pipe.recorder
            for path in pipe.recorder.paths
        ]
        text = f"{reason} after {t:.2f}s; > {asterisk.summary()}; < {app.summary()}"
        if app.mean_gap is not None:
            text += f"; < gaps {app.pacing()}"
        if paths:
            text += f"; recorded {', '.join(paths)}"
        output.event(
            info,
            t,
            "call-end",
            text,
            how=how,
            reason=reason,
            duration=round(t, 6),
            peer=str(info.peer),
            upstream=str(self.proxy.upstream),
            messages_in=asterisk.messages,
            bytes_in=self.inbound.forwarded,
            messages_out=app.messages,
            bytes_out=self.outbound.forwarded,
            inbound=asterisk.as_dict(),
            outbound=app.as_dict(),
            diagnoses=[found.code for found in diagnoses],
            recordings=paths,
        )


class Proxy:
    """Accepts callers on `server` and runs a ProxyCall for each."""

    def __init__(
        self,
        reactor: Reactor,
        server: socket.socket,
        upstream: Address,
        upstream_addresses: list[tuple[int, tuple]],
        output: Output,
        *,
        record_dir: Path | None = None,
        max_concurrent: int = 1000,
        max_calls: int | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.server = server
        self.upstream = upstream
        self.upstream_addresses = upstream_addresses
        self.output = output
        self.record_dir = record_dir
        self.max_concurrent = max_concurrent
        self.max_calls = max_calls
        self.connect_timeout = connect_timeout
        self.calls: dict[int, ProxyCall] = {}
        self.analysis_budget = AnalysisBudget()
        self.accepted = 0
        self.connections = 0
        self.ended = 0
        self.upstream_failures = 0
        self.malformed_calls = 0
        self._queue: deque[tuple[Pipe, float, bytes | None]] = deque()
        self._queued_bytes = 0
        self._decode_timer: Timer | None = None
        self._accepting = False

    def start(self) -> None:
        self.server.setblocking(False)
        self._accepting = True
        self.reactor.add_reader(self.server, self._on_accept)

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            self.reactor.forget(self.server)

    def _on_accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors, say: the backlog keeps callers; try again soon.
                self._stop_accepting()
                self.reactor.call_later(ACCEPT_PAUSE, self._resume_accepting)
                self.output.event(
                    CallInfo(conn=0), 0.0, "warning", f"cannot accept: {_error_text(exc)}"
                )
                return
            self.connections += 1
            sock.setblocking(False)
            _nodelay(sock)
            address = Address(peer[0], peer[1])
            if len(self.calls) >= self.max_concurrent:
                info = CallInfo(conn=self.connections, peer=address)
                sock.close()
                self.output.event(
                    info,
                    0.0,
                    "warning",
                    f"connection from {address} closed at once: {len(self.calls)} calls "
                    f"already (--max-concurrent {self.max_concurrent})",
                )
                continue
            self.accepted += 1
            call = ProxyCall(self, self.connections, sock, address)
            self.calls[call.info.conn] = call
            call.start()
            if self.max_calls is not None and self.accepted >= self.max_calls:
                self._stop_accepting()  # no call is started only to be cut off
                return

    def _resume_accepting(self) -> None:
        if not self.reactor.stopped and (self.max_calls is None or self.accepted < self.max_calls):
            self.start()

    # Decoding after forwarding, in slices between the reactor's polls, so
    # that a chunk arriving meanwhile waits for one slice at most.

    def decode_later(self, pipe: Pipe, t: float, data: bytes | None) -> None:
        self._queue.append((pipe, t, data))
        if data:
            self._queued_bytes += len(data)
            if self._queued_bytes > DECODE_BACKLOG:
                # Decoding cannot keep up: it may slow forwarding, not eat memory.
                self.flush_decode()
                return
        if self._decode_timer is None:
            self._decode_timer = self.reactor.call_at(0.0, self._decode_slice)

    def _decode_slice(self) -> None:
        self._decode_timer = None
        queue = self._queue
        stop = time.monotonic() + DECODE_SLICE
        while queue:
            pipe, t, data = queue.popleft()
            if data:
                self._queued_bytes -= len(data)
            pipe.decode(t, data)
            if time.monotonic() > stop:
                break
        if queue:
            # Due now, which is later than the time the reactor's timer pass
            # started from: it polls the sockets before running this again.
            self._decode_timer = self.reactor.call_at(time.monotonic(), self._decode_slice)

    def flush_decode(self) -> None:
        """Decode everything forwarded so far (a call ends, the proxy stops)."""
        if self._decode_timer is not None:
            self._decode_timer.cancel()
            self._decode_timer = None
        queue = self._queue
        while queue:
            pipe, t, data = queue.popleft()
            pipe.decode(t, data)
        self._queued_bytes = 0

    def call_ended(self, call: ProxyCall, code: str, text: str) -> None:
        self.calls.pop(call.info.conn, None)
        self.ended += 1
        if call.upstream_failed:
            self.upstream_failures += 1
        if call.malformed:
            self.malformed_calls += 1
        call.report(code, text)
        if self.max_calls is not None and self.ended >= self.max_calls:
            self.reactor.stop()

    def close(self, code: str = "interrupted") -> None:
        """End every open call (Ctrl-C, SIGTERM): recordings are closed whole."""
        self._stop_accepting()
        try:
            self.flush_decode()
        finally:
            for call in list(self.calls.values()):
                try:
                    call.end(code, f"capture {code}")
                except Exception:
                    # Whatever state an interrupt left, the WAVs must be closed.
                    for pipe in (call.inbound, call.outbound):
                        pipe.close_recording()
            self.server.close()

    @property
    def exit_status(self) -> ExitStatus:
        if self.upstream_failures:
            return ExitStatus.FAILED
        if self.malformed_calls:
            return ExitStatus.PROTOCOL
        return ExitStatus.OK
