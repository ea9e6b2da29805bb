"""A worker's side of `--workers N`: its one sink (ForwardSink), which makes what its
server reports into records for the parent, and its end of the socket pair (Link),
which sends them in frames without ever blocking and hears the parent's word."""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import selectors
import socket
import struct
import sys
import time
from typing import Any

from audiosocket_cli.files.trace import TraceWriter
from audiosocket_cli.net.reactor import Reactor
from audiosocket_cli.output.sinks import (
    ECHOED,
    JsonSink,
    Output,
    PlainSink,
    TraceSink,
    noter,
)
from audiosocket_cli.protocol.events import CallInfo, Event
from audiosocket_cli.protocol.wire import Message

MARK_INTERVAL = 0.05  # s: a worker sends what it has, and how far it got, this often
FRAME_RECORDS = 2048  # records per frame at most
MAX_BACKLOG = 8 << 20  # bytes of frames a worker keeps while its parent does not read
FINAL_FLUSH = 0.5  # s: a worker's last frames, after its calls have ended
HEADER = struct.Struct("!I")
# What the parent asks of a worker, one byte; an end of file means the parent is gone.
STOP = {b"q": None, b"i": ("interrupted", "Ctrl-C"), b"t": ("terminated", "SIGTERM")}
PARENT_GONE = ("terminated", "the parent process ended")


class _Lines:
    """A stream that keeps what is written, for TraceWriter to write into."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.write = self.parts.append

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts.clear()
        return text

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Forms:
    """What the parent's output shows, which is what a worker must send it."""

    def __init__(self, output: Output) -> None:
        self.display = ""  # "plain", "json", "human", or "" (-q: no message lines)
        self.trace = False
        for sink in output.sinks:
            if isinstance(sink, TraceSink):
                self.trace = True
            elif not sink.shows_messages:
                continue  # -q, or the warnings on stderr
            elif isinstance(sink, JsonSink):
                self.display = "json"
            elif isinstance(sink, PlainSink):
                self.display = "plain"
            else:
                self.display = "human"


class ForwardSink:
    """A worker's one sink: what its server reports, as records for the parent.

    Records are ("m", at, display line, trace line) for a message whose lines are
    made here (plain or JSON, and the trace's), ("o", at, call, t, direction,
    message) for one the parent's display makes itself (human), and ("e", at,
    call, event) for an event; `at` is the monotonic time it happened, by which
    the parent merges. They go out with the next mark (Link.tick).
    """

    takes_echoes = True  # an ECHOED entry is made into its two lines here
    batch = True

    def __init__(self, link: Link, forms: Forms) -> None:
        self.link = link
        self.objects = forms.display == "human"
        self.shows_messages = bool(forms.display) or forms.trace
        self.needs_level = not self.objects and self.shows_messages
        self.line = {"plain": PlainSink.line, "json": JsonSink.line}.get(forms.display)
        self.trace: TraceWriter | None = None
        self._trace_lines = _Lines()
        if forms.trace and not self.objects:
            # The trace file's own writer makes each line, into memory.
            self.trace = TraceWriter(os.devnull)
            self.trace.stream.close()
            self.trace.stream = self._trace_lines  # type: ignore[assignment]
        self.records: list[tuple[Any, ...]] = []
        self.mark: float | None = None  # set by Link.tick: how far the next frame reaches

    def message(
        self, call: CallInfo, t: float, direction: str, message: Message, level: float | None
    ) -> None:
        self.messages([(call, t, direction, message)], [level])

    def messages(self, batch: list[Any], levels: list[float | None]) -> None:
        append = self.records.append
        if self.objects:
            for call, t, direction, message in batch:
                if call.uuid is None:
                    call = copy.copy(call)  # its line says #N, even once the UUID is known
                for one in (">", "<") if direction == ECHOED else (direction,):
                    append(("o", call.started + t, call, t, one, message))
        else:
            line, trace, lines = self.line, self.trace, self._trace_lines
            for (call, t, direction, message), level in zip(batch, levels, strict=True):
                shown = None
                both = (">", "<") if direction == ECHOED else (direction,)
                if line is not None:
                    shown = "".join([line(call, t, one, message, level) for one in both])
                traced = None
                if trace is not None:
                    for one in both:
                        trace.message(call, t, one, message, level)
                    traced = lines.take()
                append(("m", call.started + t, shown, traced))
        if len(self.records) >= FRAME_RECORDS:
            self.flush()

    def event(self, call: CallInfo, event: Event) -> None:
        self.records.append(("e", call.started + event.t, copy.copy(call), event))
        if len(self.records) >= FRAME_RECORDS:
            self.flush()

    def flush(self) -> None:
        mark, self.mark = self.mark, None
        if self.records or mark is not None:
            records, self.records = self.records, []
            self.link.send(("out", mark, records))

    def close(self) -> None:
        self.flush()


class Link:
    """A worker's end of its socket pair: frames out without ever blocking, and the
    parent's word (or its end of file) in, on the worker's reactor."""

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        sock.setblocking(False)
        self.reactor: Reactor | None = None
        self.pending = bytearray()
        self.closed = False
        self.dropped = 0
        self.stopped: tuple[str, str] | None = None  # (ending, detail) the parent asked for
        self.asked = False  # the parent asked this worker to stop (any way)
        self.parent_gone = False
        self.output: Output | None = None
        self.sink: ForwardSink | None = None
        self.next_mark = 0.0

    def attach(self, reactor: Reactor, output: Output, sink: ForwardSink) -> None:
        """Watch the parent on `reactor`; send `output`'s records every MARK_INTERVAL."""
        self.reactor, self.output, self.sink = reactor, output, sink
        reactor.add_reader(self.sock, self.on_control)
        reactor.after_turn = self.tick

    def tick(self) -> float | None:
        """After each turn of the loop: everything shown so far goes out, with how far it
        reaches, every MARK_INTERVAL (the parent merges by it)."""
        assert self.output is not None and self.sink is not None
        now = time.monotonic()
        if now >= self.next_mark:
            self.next_mark = now + MARK_INTERVAL
            self.sink.mark = now
            self.output.flush()
            return MARK_INTERVAL
        again = self.output.tick()
        wait = self.next_mark - now
        return wait if again is None else min(again, wait)

    def send(self, obj: Any) -> None:
        if self.closed:
            return
        try:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # a bug: the output is lost, never the calls
            noter(sys.stderr)(f"worker {self.index}: output lost: {type(exc).__name__}: {exc}")
            return
        frame = HEADER.pack(len(data)) + data
        if self.pending:
            if len(self.pending) + len(frame) > MAX_BACKLOG:
                self._drop()
            else:
                self.pending += frame
            return
        try:
            sent = self.sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._gone()
            return
        if sent < len(frame):
            self.pending += frame[sent:]
            if self.reactor is not None:
                self.reactor.add_writer(self.sock, self.on_writable)

    def _drop(self) -> None:
        if not self.dropped:
            noter(sys.stderr)(
                f"worker {self.index}: the parent process is not reading its output; "
                "output lines are dropped until it does (calls and recordings go on)"
            )
        self.dropped += 1

    def on_writable(self) -> None:
        try:
            sent = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._gone()
            return
        del self.pending[:sent]
        if not self.pending and self.reactor is not None:
            self.reactor.remove_writer(self.sock)

    def on_control(self) -> None:
        try:
            data = self.sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._gone()
            return
        for byte in data:
            self.stop(STOP.get(bytes([byte])))

    def stop(self, how: tuple[str, str] | None) -> None:
        """The parent asks this worker to end: (ending, detail) for the calls still
        going, or None when none is (--max-calls have ended)."""
        self.asked = True
        if self.stopped is None and how is not None:
            self.stopped = how
        if self.reactor is not None:
            self.reactor.stop()

    def _gone(self) -> None:
        """The parent has died (or closed its end): end every call, and exit."""
        self.parent_gone = True
        self.pending.clear()
        if not self.closed:
            self.closed = True
            if self.reactor is not None:
                self.reactor.forget(self.sock)
        self.stop(PARENT_GONE)
        self.stopped = self.stopped or PARENT_GONE

    def finish(self, timeout: float = FINAL_FLUSH) -> None:
        """The last frames, waiting for the parent a little (the calls are over), then
        the end of file it waits for."""
        if self.reactor is not None and not self.closed:
            self.reactor.forget(self.sock)
        deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError):
            poller = selectors.DefaultSelector()
            poller.register(self.sock, selectors.EVENT_WRITE)
            while self.pending and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0 or not poller.select(left):
                    break
                try:
                    sent = self.sock.send(self.pending)
                except (BlockingIOError, InterruptedError):
                    continue
                del self.pending[:sent]
            poller.close()
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
