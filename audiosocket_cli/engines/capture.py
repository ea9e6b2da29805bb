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

`--record-stereo DIR` gives each call a stereo WAV (media.stereo.CallStereo):
what Asterisk sent on the left, what the application sent on the right, each
message where it plays on its side, from its arrival at the proxy.
"""

from __future__ import annotations

import errno
import gc
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from audiosocket_cli.analysis.stats import AnalysisBudget
from audiosocket_cli.engines.call import CallReport, SessionClock, Tally
from audiosocket_cli.engines.workers import Budget
from audiosocket_cli.media.recorder import Recording, call_recording, unique_path
from audiosocket_cli.media.stereo import CallStereo
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.reactor import Reactor, Timer, frozen_heap
from audiosocket_cli.net.transport import (
    CONNECT_TIMEOUT,
    RECV_SIZE,
    raise_fd_limit,
    set_nodelay,
)
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.events import CallEnd, CallInfo
from audiosocket_cli.protocol.session import Ended, Problem, Received, Role, Rules, Session
from audiosocket_cli.protocol.wire import Message
from audiosocket_cli.status import ExitStatus

ACCEPT_BATCH = 64
ACCEPT_PAUSE = 0.1  # out of file descriptors: wait before accepting again
WHO = {">": "caller", "<": "application"}
IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, errno.EINTR)
LINGER_RESET = struct.pack("ii", 1, 0)  # close() then sends RST, not FIN
DECODE_SLICE = 0.0005  # seconds of decoding between two polls of the sockets
DECODE_BACKLOG = 8 << 20  # bytes forwarded but not yet decoded, at most

# s between a busy proxy's polls (net.reactor's coalesce): half of listen's, so that
# what capture adds to each message stays under a millisecond at hundreds of calls.
COALESCE = 0.0005


def resolve(address: Address) -> list[tuple[int, tuple]]:
    """(family, sockaddr) for each address of the upstream; raises OSError."""
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def _error_text(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


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
        self.forwarded = 0
        self.eof = False  # the source ended its stream
        self.done = False  # ... and that was passed on
        # --pcap, Asterisk's leg: (chunk read, bytes of it sent on at once), and the
        # rest of a held-back chunk sent later (ProxyCall sets them; None: no --pcap).
        self.pcap: Callable[[bytes, int], None] | None = None
        self.pcap_drained: Callable[[bytes, int], None] | None = None
        # What the caller sends is judged as the application would, what the
        # application sends as Asterisk would; neither ends a call (we forward).
        proxy = call.proxy
        if direction == ">":
            self.session = Session(Role.APPLICATION, proxy.caller_rules, started=call.info.started)
        else:
            self.session = Session(Role.ASTERISK, proxy.app_rules, started=call.info.started)
        self.clock = SessionClock(proxy.reactor, self.session, self.on_deadline)

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
            if self.pcap is not None:
                self.pcap(data, 0)
            self.pending.append(data)
            self.reactor.remove_reader(self.src)  # type: ignore[arg-type]
            return
        try:
            sent = self.dst.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            if self.pcap is not None:
                self.pcap(data, 0)
            self.call.reset(self.other.who, exc)
            return
        if self.pcap is not None:
            self.pcap(data, sent)
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
            if self.pcap_drained is not None:
                self.pcap_drained(chunk, sent)
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
        call = self.call
        if data:
            message = self.session.whole_audio(data, t)
            if message is not None:
                # The usual chunk: one whole audio message, no rule to apply, no timer
                # to move (and not the call's first message, which names it).
                call.report.message(t - call.info.started, self.direction, message)
                if call.stereo is not None:
                    call.stereo_heard(t - call.info.started, self.direction, message)
                return
        events = self.session.receive(data or b"", t)
        report = call.report
        for event in events:
            if type(event) is Received:
                if self.direction == ">" and call.info.uuid is None and self.session.uuid:
                    call.info.uuid = self.session.uuid  # named from its uuid message on
                report.message(event.t, self.direction, event.message)
                if call.stereo is not None:
                    call.stereo_heard(event.t, self.direction, event.message)
                if self.direction == ">":
                    report.release_recordings()  # the call has its name now
                    if call.stereo is not None:
                        call.stereo_note(event.t, call.stereo.release())
            elif isinstance(event, Problem):
                report.problem(event, self.direction)
            elif isinstance(event, Ended) and call.first_end is None:
                call.first_end = event
        if data is not None:
            self.clock.arm()

    def on_deadline(self) -> None:
        """The session's deadline (a payload late after its header): judged on
        everything forwarded so far."""
        call = self.call
        call.proxy.flush_decode()
        if call.ended:
            return
        for event in self.session.tick(time.monotonic()):
            if isinstance(event, Problem):
                call.report.problem(event, self.direction)
            elif isinstance(event, Ended):  # --timeout: the one rule that ends a proxied call
                call.first_end = call.first_end or event
                call.end(reset=False)


class ProxyCall:
    """One call: the caller's connection, the upstream connection, two pipes."""

    def __init__(self, proxy: Proxy, conn: int, caller: socket.socket, peer: Address) -> None:
        self.proxy = proxy
        self.info = CallInfo(conn=conn, peer=peer)
        self.caller = caller
        self.upstream: socket.socket | None = None
        self.connected = False
        self.ended = False
        self.first_close: str | None = None
        self.first_end: Ended | None = None  # the first ending either session saw
        recordings = {}
        if proxy.record_dir is not None:
            stem = self._stem
            recordings = {
                ">": call_recording(proxy.record_dir, stem, "in"),
                "<": call_recording(proxy.record_dir, stem, "out"),
            }
        self.report = CallReport(
            proxy.output, self.info, recordings=recordings, encoding_gate=proxy.analysis_budget
        )
        # Both sides in one file, named as the others, held (bounded) as they are.
        self.stereo: CallStereo | None = None
        if proxy.stereo_dir is not None:
            directory, stem = proxy.stereo_dir, self._stem
            self.stereo = CallStereo(
                lambda: unique_path(directory, stem(), ".stereo.wav"), hold=True
            )
            self.report.recordings["stereo"] = cast(Recording, self.stereo)
        # The application may speak before the caller's first message names the
        # call: its audio waits (bounded) so that its file gets the UUID.
        self.report.hold_recordings()
        self.inbound = Pipe(self, ">")
        self.outbound = Pipe(self, "<")
        self.inbound.src = caller
        self.outbound.dst = caller
        # --pcap holds Asterisk's leg only: the connection as Asterisk saw it.
        self.pcap = proxy.pcap.tap(caller, "<", peer) if proxy.pcap is not None else None
        if self.pcap is not None:
            self.inbound.pcap = self.pcap.received_chunk
            self.outbound.pcap = self.outbound.pcap_drained = self.pcap.sent_chunk
        self._addresses = list(proxy.upstream_addresses)
        self._timer: Timer | None = None

    def _stem(self) -> str:
        return self.info.uuid or f"conn-{self.info.conn}"

    def stereo_heard(self, t: float, direction: str, message: Message) -> None:
        """An audio message into the stereo file, where it plays on its side."""
        assert self.stereo is not None
        if message.payload and message.rate:
            self.stereo_note(t, self.stereo.heard(direction, t, message.payload, message.rate))

    def stereo_note(self, t: float, note: str | None) -> None:
        if note:
            self.report.warning(t, f"stereo {note}")

    def start(self) -> None:
        proxy = self.proxy
        worker = {"worker": proxy.worker} if proxy.worker else {}
        self.report.start(
            f"from {self.info.peer} to upstream {proxy.upstream}",
            peer=str(self.info.peer),
            upstream=str(proxy.upstream),
            **worker,
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
        text = f"cannot connect to upstream {self.proxy.upstream}: {reason}"
        self.proxy.flush_decode()
        self.report.warning(
            self.info.elapsed(),
            f"{text}; closing the caller's connection",
            upstream=str(self.proxy.upstream),
            error=reason,
        )
        self.end("upstream-unreachable", text)

    def _connected(self) -> None:
        sock = self.upstream
        assert sock is not None
        self.connected = True
        set_nodelay(sock)
        self.proxy.reactor.add_reader(sock, self.outbound.on_readable)
        self.inbound.on_writable()  # what the caller sent meanwhile, and its EOF

    # Ending.

    def check_done(self) -> None:
        if self.inbound.done and self.outbound.done:
            self.proxy.flush_decode()  # a hangup message may still be queued
            self.end()

    def reset(self, who: str, exc: OSError) -> None:
        """A socket error on one side: the other side is reset too, as it would be."""
        if self.ended:
            return
        self.proxy.flush_decode()
        pipe = self.inbound if who == "caller" else self.outbound
        reason = _error_text(exc)
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            reason = "connection reset by peer"
        for event in pipe.session.reset(time.monotonic(), reason):
            if isinstance(event, Ended) and self.first_end is None:
                self.first_end = event
        self.end(reset=True)

    def end(self, ended: str | None = None, detail: str = "", reset: bool = False) -> None:
        """The call is over: the first ending either side gave, or `ended`."""
        if self.ended:
            return
        proxy = self.proxy
        proxy.flush_decode()  # everything forwarded is shown and recorded first
        self.ended = True
        if self._timer:
            self._timer.cancel()
            self._timer = None
        for pipe in (self.inbound, self.outbound):
            pipe.clock.cancel()
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
        now = time.monotonic()
        if ended is not None:
            final = self.inbound.session.close(ended, detail, now)
        else:
            final = self.first_end or self.inbound.session.close(
                "caller-close", "the connection ended", now
            )
        if self.pcap is not None:
            self.pcap.ended(final, self.first_close or "<")
        if self.stereo is not None:
            self.stereo_note(self.info.elapsed(), self.stereo.end())  # its last write too
        violations = [*self.inbound.session.violations, *self.outbound.session.violations]
        end = self.report.finish(
            final,
            violations,
            upstream=str(proxy.upstream),
            bytes_in=self.inbound.forwarded,
            bytes_out=self.outbound.forwarded,
        )
        proxy.call_ended(self, end)


@dataclass(eq=False)
class Proxy:
    """Accepts callers on `server` and runs a ProxyCall for each."""

    reactor: Reactor
    server: socket.socket
    upstream: Address
    upstream_addresses: list[tuple[int, tuple]]
    output: Output
    record_dir: Path | None = None
    stereo_dir: Path | None = None  # --record-stereo: DIR/<uuid>.stereo.wav per call
    max_concurrent: int = 1000
    max_calls: int | None = None
    connect_timeout: float = CONNECT_TIMEOUT
    caller_rules: Rules | None = None
    app_rules: Rules | None = None
    pcap: Any = None  # an engines.pcap_tap.PcapFile (--pcap), or None
    calls: dict[int, ProxyCall] = field(default_factory=dict)
    analysis_budget: AnalysisBudget = field(default_factory=AnalysisBudget)
    accepted: int = 0
    connections: int = 0
    ended: int = 0
    tally: Tally = field(default_factory=Tally)
    # Connection numbers and the call limits; shared by the processes of --workers.
    budget: Budget | None = None
    worker: int = 0  # which of the --workers processes this is (1...), 0 without

    def __post_init__(self) -> None:
        if self.budget is None:
            self.budget = Budget(self.max_calls, self.max_concurrent)
        self._budget: Budget = self.budget
        self._queue: deque[tuple[Pipe, float, bytes | None]] = deque()
        self.reactor.after_turn = self.output.tick
        self.refusals = self._budget.refusals(self.output, self.reactor)
        self._queued_bytes = 0
        self._decode_timer: Timer | None = None
        self._accepting = False

    def start(self) -> None:
        # What exists now (modules, config) lives as long as the process: keep the
        # collector from walking it again and again, a pause of many ms (as listen).
        gc.collect()
        gc.freeze()
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
                self.output.warning(CallInfo(conn=0), 0.0, f"cannot accept: {_error_text(exc)}")
                return
            self.connections, going, limit = self._budget.admit()
            sock.setblocking(False)
            set_nodelay(sock)
            address = Address(peer[0], peer[1])
            if limit:
                # --max-calls only with --workers: another worker started the last call.
                info = CallInfo(conn=self.connections, peer=address)
                sock.close()
                self.refusals.refused(info, going, limit)
                if self._budget.full:
                    self._stop_accepting()
                    return
                continue
            self.accepted += 1
            call = ProxyCall(self, self.connections, sock, address)
            self.calls[call.info.conn] = call
            call.start()
            if self._budget.full:
                self._stop_accepting()  # no call is started only to be cut off
                return

    def _resume_accepting(self) -> None:
        if not self.reactor.stopped and not self._budget.full:
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

    def call_ended(self, call: ProxyCall, end: CallEnd) -> None:
        self.calls.pop(call.info.conn, None)
        self.ended += 1
        self.tally.add(end)
        if self._budget.ended():  # --max-calls calls have ended, in every worker
            self.reactor.stop()

    def close(self, ended: str = "interrupted", detail: str = "") -> None:
        """End every open call (Ctrl-C, SIGTERM): recordings are closed whole."""
        self.refusals.close()
        self._stop_accepting()
        try:
            self.flush_decode()
        finally:
            for call in list(self.calls.values()):
                try:
                    call.end(ended, detail)
                except Exception:
                    # Whatever state an interrupt left, the recordings must be closed.
                    for recording in call.report.recordings.values():
                        recording.close()
            self.server.close()

    def run(self) -> ExitStatus:
        """Serve until --max-calls calls have ended (or a signal); the exit status."""
        self.start()
        with frozen_heap():
            self.reactor.run()
        return self.exit_status

    @property
    def exit_status(self) -> ExitStatus:
        return self.tally.status


def worker_proxy(**settings: Any) -> Callable[[socket.socket, Output, Budget, int], Proxy]:
    """How each process of `capture --workers N` makes its Proxy (engines.workers):
    `settings` are Proxy's, but for its reactor, socket, output and budget."""

    def make(listener: socket.socket, output: Output, budget: Budget, worker: int) -> Proxy:
        raise_fd_limit()
        return Proxy(
            Reactor(coalesce=COALESCE),
            listener,
            output=output,
            budget=budget,
            worker=worker,
            **settings,
        )

    return make
