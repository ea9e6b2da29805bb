"""Several processes on one port: `listen --workers N` and `capture --workers N`.

One reactor serves every call of a process, and one process is one core: past
a few hundred calls a core is full. So N worker processes each listen on the
same port (SO_REUSEPORT: the kernel spreads new connections over them) and run
a server of their own, and the parent process only coordinates:

- **One output.** A worker shows nothing itself: its one sink (ForwardSink)
  hands what the server reports to the parent, through a socket pair, in
  frames: message lines already made (plain or JSON, and the trace file's
  line), or the objects themselves where the parent's display needs them (the
  human display), and every event. The parent merges the workers' streams in
  time order (Merger: each frame carries the time up to which its worker has
  sent everything, and a line goes out once every worker has passed its time)
  and writes them through the command's one Output: the same stdout, stderr
  and trace file a single process writes, whole lines only.
- **One budget.** Connection numbers and --max-calls / --max-concurrent are
  counted in shared memory under one lock (Budget), so a caller beyond the
  limit is refused by whichever worker took it, with the usual line.
- **One exit status.** Each worker exits with its own (0, 1, 3); the parent
  exits with the worst, or 130/143 when it was interrupted or terminated.

A worker never waits for its parent: its frames are sent without blocking, and
while the parent does not read them they are dropped (said once on stderr),
never the calls. A worker ends with its parent: PR_SET_PDEATHSIG (Linux) sends
it SIGTERM the moment the parent dies, and the end of file on its socket pair,
watched by its reactor, tells it everywhere; either way it ends its calls
(recordings closed whole) and exits.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import math
import multiprocessing
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from audiosocket_cli.engines.call import Refusals
from audiosocket_cli.files.trace import TraceWriter
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.reactor import Reactor
from audiosocket_cli.net.transport import (
    ConnectError,
    bound_address,
    listen_reuseport,
    reuseport_available,
)
from audiosocket_cli.output.sinks import (
    ECHOED,
    JsonSink,
    Output,
    PlainSink,
    TraceSink,
    noter,
)
from audiosocket_cli.protocol.events import CallEnd, CallInfo, CallStart, Event
from audiosocket_cli.protocol.wire import Message
from audiosocket_cli.status import ExitStatus, Terminated, die_with_parent

MARK_INTERVAL = 0.05  # s: a worker sends what it has, and how far it got, this often
STALE = 0.5  # s: a worker not heard from for this long no longer holds the merge back
FRAME_RECORDS = 2048  # records per frame at most
MAX_BACKLOG = 8 << 20  # bytes of frames a worker keeps while its parent does not read
FINAL_FLUSH = 0.5  # s: a worker's last frames, after its calls have ended
READY_TIMEOUT = 30.0  # s: every worker listening, or the command fails
STOP_GRACE = 10.0  # s: asked to stop, a worker that has not ended by then is killed
HEADER = struct.Struct("!I")
# What the parent asks of a worker, one byte; an end of file means the parent is gone.
STOP = {b"q": None, b"i": ("interrupted", "Ctrl-C"), b"t": ("terminated", "SIGTERM")}
PARENT_GONE = ("terminated", "the parent process ended")


def signals_deferred() -> contextlib.AbstractContextManager[None]:
    """Hold Ctrl-C and SIGTERM while recordings are being closed; they are
    delivered (and end the command) right after."""
    return _signals_deferred()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def unavailable() -> str:
    """Why worker processes cannot run here ("" when they can)."""
    if not reuseport_available():
        return "SO_REUSEPORT is not available on this system"
    if "fork" not in multiprocessing.get_all_start_methods():
        return "worker processes need fork(), which this system does not have"
    return ""


# The shared budget


_CONN, _STARTED, _ACTIVE, _ENDED, _WORKERS = range(5)  # then each worker's calls going


class Budget:
    """Connections numbered, and calls admitted against --max-calls and
    --max-concurrent: in this process, or (`shared`, for `workers` processes)
    across worker processes, in shared memory under one lock."""

    def __init__(
        self,
        max_calls: int | None = None,
        max_concurrent: int = 1000,
        shared: bool = False,
        workers: int = 1,
    ) -> None:
        self.max_calls = max_calls
        self.max_concurrent = max_concurrent
        self.worker = 0  # whose calls admit() and ended() count: 1... in each worker
        self._lock: contextlib.AbstractContextManager[Any]
        self._values: Any
        size = _WORKERS + 1 + workers
        if shared:
            context = multiprocessing.get_context("fork")
            self._lock = context.Lock()
            self._values = context.RawArray("q", size)
        else:
            self._lock = contextlib.nullcontext()
            self._values = [0] * size

    def admit(self) -> tuple[int, int, str]:
        """A new connection: its number, the calls going at that moment, and "" if
        its call may start, else the limit that refuses it (`--max-calls 5`)."""
        with self._lock:
            values = self._values
            values[_CONN] += 1
            active = values[_ACTIVE]
            if active >= self.max_concurrent:
                limit = f"--max-concurrent {self.max_concurrent}"
            elif self.max_calls is not None and values[_STARTED] >= self.max_calls:
                limit = f"--max-calls {self.max_calls}"
            else:
                values[_STARTED] += 1
                values[_ACTIVE] = active + 1
                values[_WORKERS + self.worker] += 1
                limit = ""
            return values[_CONN], active, limit

    def ended(self) -> bool:
        """A call has ended; True once --max-calls calls have."""
        with self._lock:
            values = self._values
            values[_ACTIVE] -= 1
            values[_ENDED] += 1
            values[_WORKERS + self.worker] -= 1
            return self.max_calls is not None and values[_ENDED] >= self.max_calls

    def lost(self, worker: int) -> int:
        """A worker died without ending its calls (killed): they count as ended, so
        that the limits go on counting right. How many there were."""
        with self._lock:
            values = self._values
            going = values[_WORKERS + worker]
            values[_WORKERS + worker] = 0
            values[_ACTIVE] -= going
            values[_ENDED] += going
            return int(going)

    @property
    def refused(self) -> int:
        """Callers turned away so far, by every worker."""
        with self._lock:
            return int(self._values[_CONN] - self._values[_STARTED])

    def refusals(self, output: Output, reactor: Reactor) -> Refusals:
        """The Refusals of a server on this budget: its "in all" counts every worker's."""
        return (
            Refusals(output, reactor) if self.worker == 0 else SharedRefusals(output, reactor, self)
        )

    @property
    def full(self) -> bool:
        """--max-calls calls have started: no more will."""
        with self._lock:
            return self.max_calls is not None and self._values[_STARTED] >= self.max_calls

    @property
    def done(self) -> bool:
        """--max-calls calls have ended."""
        with self._lock:
            return self.max_calls is not None and self._values[_ENDED] >= self.max_calls


class SharedRefusals(Refusals):
    """Refusals whose "in all" is every worker's (the budget counts them)."""

    def __init__(self, output: Output, reactor: Reactor, budget: Budget) -> None:
        self._budget = budget
        super().__init__(output, reactor)

    @property
    def total(self) -> int:
        return self._budget.refused

    @total.setter
    def total(self, value: int) -> None:
        pass  # counted by the budget, as the caller was refused


# A worker's side


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


class Service(Protocol):
    """What a worker runs: a server of one command (listen's Server, capture's Proxy)."""

    reactor: Reactor

    def run(self) -> ExitStatus: ...

    def close(self, ended: str = "interrupted", detail: str = "") -> None: ...


# make(listener, output, budget, worker number): the server a worker runs.
MakeService = Callable[[socket.socket, Output, Budget, int], Service]


class WorkerFailed(Exception):
    """A worker could not start (its port, its files): the command fails with this."""


class Pool:
    """The parent's side: N workers started, their output merged, their end awaited."""

    def __init__(
        self,
        count: int,
        listener: socket.socket,
        make: MakeService,
        output: Output,
        budget: Budget,
    ) -> None:
        self.count = count
        self.listener = listener
        self.address: Address = bound_address(listener)
        self.make = make
        self.output = output
        self.budget = budget
        self.forms = Forms(output)
        self.processes: list[Any] = []
        self.ends: list[socket.socket] = []  # the parent's end of each socket pair
        self._theirs: list[socket.socket] = []
        self._buffers: list[bytearray] = []
        self.live: set[int] = set()
        self.ready: set[int] = set()
        self.pids: dict[int, int] = {}
        self.failure = ""
        self.merger = Merger(output, count)
        self.signals: list[int] = []
        self.asked = ""
        self._kill_at = math.inf

    # Starting

    def start(self) -> None:
        """Fork the workers; return once every one listens (WorkerFailed if one cannot)."""
        context = multiprocessing.get_context("fork")
        for _ in range(self.count):
            ours, theirs = socket.socketpair()
            for sock in (ours, theirs):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.ends.append(ours)
            self._theirs.append(theirs)
            self._buffers.append(bytearray())
        self.output.flush()  # nothing buffered is written twice, by a worker's copy too
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        parent = os.getpid()
        for index in range(self.count):
            process = context.Process(
                target=self._worker,
                args=(index, parent),
                daemon=True,
                name=f"audiosocket-worker-{index + 1}",
            )
            process.start()
            self.processes.append(process)
            self.pids[index] = process.pid or 0
            self.live.add(index)
        for theirs in self._theirs:
            theirs.close()
        self.listener.close()  # the first worker has it now
        for sock in self.ends:
            sock.setblocking(False)
        deadline = time.monotonic() + READY_TIMEOUT
        self._selector = selectors.DefaultSelector()
        for index, sock in enumerate(self.ends):
            self._selector.register(sock, selectors.EVENT_READ, index)
        while len(self.ready) < self.count and not self.failure:
            left = deadline - time.monotonic()
            if left <= 0:
                self.failure = f"the workers did not start within {READY_TIMEOUT:g} s"
                break
            for key, _ in self._selector.select(min(left, 0.1)):
                self._read(key.data)
            if self.live != set(range(self.count)) and not self.failure:
                self.failure = "a worker process ended as it started"
        if self.failure:
            self._ask(b"q")
            self._wait_all(STOP_GRACE)
            self.close()
            raise WorkerFailed(self.failure)

    def _worker(self, index: int, parent: int) -> None:
        """A worker process's life, after the fork."""
        die_with_parent(parent)
        for sock in self.ends:
            sock.close()  # else a worker would hold another's pair open past the parent
        mine = self._theirs[index]
        for number, sock in enumerate(self._theirs):
            if number != index:
                sock.close()
        try:  # stdout is the parent's: a worker writes none, nor holds the pipe open
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        link = Link(mine, index + 1)
        if index == 0:
            listener = self.listener
        else:
            self.listener.close()
            try:
                listener = listen_reuseport(self.address, join=True)
            except ConnectError as exc:
                link.send(("fail", str(exc)))
                link.finish()
                sys.exit(ExitStatus.FAILED)
        self.budget.worker = index + 1
        sink = ForwardSink(link, self.forms)
        output = Output([sink], sys.stderr)
        output.outlive_stdout = True
        service = self.make(listener, output, self.budget, index + 1)
        link.attach(service.reactor, output, sink)
        link.send(("ready", os.getpid()))
        status = ExitStatus.FAILED
        ended, detail = "interrupted", "the tool stopped"
        try:
            status = service.run()
            if link.stopped is not None:
                ended, detail = link.stopped
                status = _signal_status(ended)
        except KeyboardInterrupt:
            ended, detail = "interrupted", "Ctrl-C"
            status = ExitStatus.INTERRUPTED
        except Terminated:
            ended, detail = "terminated", "SIGTERM"
            if link.parent_gone or os.getppid() != parent:
                ended, detail = PARENT_GONE
            status = ExitStatus.TERMINATED
        finally:
            with signals_deferred():
                try:
                    service.close(ended, detail)
                finally:
                    output.close()
                    link.finish(0.0 if link.parent_gone else FINAL_FLUSH)
        sys.exit(int(status))

    # Running

    def run(self) -> ExitStatus:
        """Merge the workers' output until every one has ended; the exit status.

        Ctrl-C or SIGTERM here ask every worker to end its calls, and are raised
        (KeyboardInterrupt, Terminated) once they all have and their output is out.
        """
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._selector.register(wake_r, selectors.EVENT_READ, -1)

        def on_signal(signum: int, frame: object) -> None:
            self.signals.append(signum)

        old_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._loop(wake_r)
        finally:
            for signum, handler in old.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(old_fd)
            self._selector.unregister(wake_r)
            wake_r.close()
            wake_w.close()
        self.merger.release(math.inf)
        self.output.flush()
        statuses = self._wait_all(STOP_GRACE)
        if self.signals:
            if self.signals[0] == signal.SIGINT:
                raise KeyboardInterrupt
            raise Terminated
        return _worst(statuses)

    def _loop(self, wake: socket.socket) -> None:
        again: float | None = None
        while self.live:
            now = time.monotonic()
            if self.signals and self.asked not in ("i", "t"):
                self._ask(b"i" if self.signals[0] == signal.SIGINT else b"t")
            elif not self.asked and self.budget.done:
                self._ask(b"q")
            if now > self._kill_at:
                self._kill_live()
                break
            timeout = MARK_INTERVAL / 2 if again is None else min(again, MARK_INTERVAL / 2)
            for key, _ in self._selector.select(timeout):
                if key.data < 0:
                    with contextlib.suppress(OSError):
                        while wake.recv(512):
                            pass
                    continue
                self._read(key.data)
            self.merger.release(time.monotonic())
            again = self.output.tick()

    def _ask(self, what: bytes) -> None:
        """Ask every worker to stop: q (nothing to end), i (Ctrl-C), t (SIGTERM)."""
        self.asked = what.decode()
        self._kill_at = min(self._kill_at, time.monotonic() + STOP_GRACE)
        for index in self.live:
            try:
                self.ends[index].send(what)
            except OSError:
                pass

    def _read(self, index: int) -> None:
        sock = self.ends[index]
        buffer = self._buffers[index]
        try:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    self._ended(index)
                    break
                buffer += data
                if len(data) < 1 << 20:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._ended(index)
        offset = 0
        while len(buffer) - offset >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, offset)
            if len(buffer) - offset - HEADER.size < size:
                break
            start = offset + HEADER.size
            frame = pickle.loads(buffer[start : start + size])
            offset = start + size
            self._frame(index, frame)
        del buffer[:offset]

    def _frame(self, index: int, frame: tuple[Any, ...]) -> None:
        kind = frame[0]
        if kind == "out":
            self.merger.add(index, frame[1], frame[2])
        elif kind == "ready":
            self.ready.add(index)
        elif kind == "fail":
            self.failure = self.failure or frame[1]

    def _ended(self, index: int) -> None:
        if index not in self.live:
            return
        self.live.discard(index)
        self.merger.gone(index)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self.ends[index])
        process = self.processes[index]
        process.join(1.0)
        if process.exitcode is None or process.exitcode < 0:
            self.budget.lost(index + 1)  # killed: its calls never said they ended
        if not self.asked and index in self.ready and not self.budget.done:
            how = _exit_text(process.exitcode)
            others = len(self.live)
            self.output.note(
                f"worker {index + 1} (pid {process.pid}) {how}; "
                f"{others} worker{'' if others == 1 else 's'} go{'es' if others == 1 else ''} on"
            )

    def _kill_live(self) -> None:
        for index in list(self.live):
            process = self.processes[index]
            if process.is_alive():
                self.output.note(
                    f"worker {index + 1} (pid {process.pid}) did not end within "
                    f"{STOP_GRACE:g} s: killed"
                )
                process.kill()
            self._ended(index)

    def _wait_all(self, timeout: float) -> list[int | None]:
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)
        return [process.exitcode for process in self.processes]

    def close(self) -> None:
        """Nothing left behind: every worker ended (killed if it must be), every socket closed."""
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join(1.0)
        for sock in self.ends:
            with contextlib.suppress(OSError):
                sock.close()
        selector = getattr(self, "_selector", None)
        if selector is not None:
            selector.close()


def _signal_status(ended: str) -> ExitStatus:
    if ended == "interrupted":
        return ExitStatus.INTERRUPTED
    return ExitStatus.TERMINATED


def _exit_text(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed ({name}): its calls were cut off"
    if code == ExitStatus.TERMINATED:
        return "was terminated (SIGTERM): its calls ended"
    if code == ExitStatus.INTERRUPTED:
        return "was interrupted (SIGINT): its calls ended"
    return f"ended with status {code}"


def _worst(codes: list[int | None]) -> ExitStatus:
    """The exit status of the workers together: 3 if a call broke the protocol in any,
    else a worker's signal status, else 1 if any failed, else 0."""
    if ExitStatus.PROTOCOL in codes:
        return ExitStatus.PROTOCOL
    for code in codes:
        if code in (ExitStatus.TERMINATED, ExitStatus.INTERRUPTED):
            return ExitStatus(code)
    if any(code != ExitStatus.OK for code in codes):
        return ExitStatus.FAILED
    return ExitStatus.OK


# The parent's merge


class Merger:
    """The workers' records to the one Output, in time order.

    Each worker's records keep their own order (a call's lines as one process
    would write them); between workers, the earliest goes first, once every
    live worker has said it has sent everything up to its time (its mark), or
    has not been heard from for STALE seconds.
    """

    def __init__(self, output: Output, count: int) -> None:
        self.output = output
        self.queues: list[deque[tuple[Any, ...]]] = [deque() for _ in range(count)]
        self.marks = [-math.inf] * count
        self.heard = [time.monotonic()] * count
        self.live = set(range(count))
        # Each call going, as one CallInfo that learns its UUID as its records go by:
        # what a sink keeps of a call (the human display's folded audio line) then
        # names it as it would in one process, where there is one CallInfo per call.
        self.calls: dict[int, CallInfo] = {}

    def add(self, index: int, mark: float | None, records: list[tuple[Any, ...]]) -> None:
        self.queues[index].extend(records)
        self.heard[index] = time.monotonic()
        if mark is not None:
            self.marks[index] = mark

    def gone(self, index: int) -> None:
        self.live.discard(index)

    def _call(self, call: CallInfo) -> CallInfo:
        known = self.calls.get(call.conn)
        if known is None:
            return call
        if known.uuid is None and call.uuid is not None:
            known.uuid = call.uuid
        return known

    def release(self, now: float) -> None:
        """Everything up to the time every live worker has reached (math.inf: all)."""
        cutoff = now
        if now != math.inf:
            for index in self.live:
                mark = self.marks[index]
                if now - self.heard[index] >= STALE:
                    mark = max(mark, now - STALE)
                cutoff = min(cutoff, mark)
        queues = self.queues
        heads = [(queue[0][1], index) for index, queue in enumerate(queues) if queue]
        heads = [head for head in heads if head[0] <= cutoff]
        if not heads:
            return
        heapq.heapify(heads)
        output = self.output
        lines: list[tuple[str | None, str | None]] = []
        while heads:
            _, index = heads[0]
            queue = queues[index]
            record = queue.popleft()
            if queue and queue[0][1] <= cutoff:
                heapq.heapreplace(heads, (queue[0][1], index))
            else:
                heapq.heappop(heads)
            kind = record[0]
            if kind == "m":
                lines.append((record[2], record[3]))
                continue
            if lines:
                output.lines(lines)
                lines = []
            call = self._call(record[2])
            if kind == "e":
                event = record[3]
                if isinstance(event, CallStart):
                    self.calls[call.conn] = call
                output.emit(call, event)
                if isinstance(event, CallEnd):
                    self.calls.pop(call.conn, None)
            else:
                output.message(call, *record[3:])
        if lines:
            output.lines(lines)


def serve(
    listener: socket.socket,
    make: MakeService,
    output: Output,
    budget: Budget,
    count: int,
    stderr: Any,
) -> ExitStatus:
    """Run `count` workers on `listener`'s port until they have all ended: `listening
    on HOST:PORT` on stderr once they all listen; the exit status (KeyboardInterrupt
    or Terminated once a signal's calls have all ended). WorkerFailed if one cannot
    start."""
    pool = Pool(count, listener, make, output, budget)
    try:
        pool.start()
        stderr.write(f"listening on {pool.address}\n")  # always the first line
        stderr.flush()
        return pool.run()
    finally:
        pool.close()
