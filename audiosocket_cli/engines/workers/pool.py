"""The parent's side of `--workers N`: the workers forked (Pool), each running its
command's server on the shared port; their output merged while they run; their end
awaited, and their exit statuses made into the command's one (serve)."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import pickle
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from audiosocket_cli.engines.workers.budget import Budget
from audiosocket_cli.engines.workers.link import (
    FINAL_FLUSH,
    HEADER,
    MARK_INTERVAL,
    PARENT_GONE,
    Forms,
    ForwardSink,
    Link,
)
from audiosocket_cli.engines.workers.merger import Merger
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.reactor import Reactor
from audiosocket_cli.net.transport import ConnectError, bound_address, listen_reuseport
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.status import ExitStatus, Terminated, die_with_parent

READY_TIMEOUT = 30.0  # s: every worker listening, or the command fails
STOP_GRACE = 10.0  # s: asked to stop, a worker that has not ended by then is killed


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
