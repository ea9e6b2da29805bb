"""The whole load run: one worker in this process, or several processes merged."""

from __future__ import annotations

import math
import os
import pickle
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audiosocket_cli.engines.load.periods import Aggregator, PeriodRow, PeriodStats
from audiosocket_cli.engines.load.plan import LoadPlan
from audiosocket_cli.engines.load.worker import Worker
from audiosocket_cli.status import ExitStatus, die_with_parent

# The whole run.


@dataclass
class LoadResult:
    totals: PeriodStats
    last: dict[str, Any] | None
    stopped: str  # "", "interrupted" or "terminated"

    def status(self, max_failed: int | None = 0, max_failed_share: float | None = None) -> int:
        """0, 1 (more calls failed than tolerated), 3 (a protocol violation, or more
        conversations failed an expectation than tolerated), 130, 143."""
        if self.stopped == "interrupted":
            return ExitStatus.INTERRUPTED
        if self.stopped == "terminated":
            return ExitStatus.TERMINATED
        if self.totals.violations:
            return ExitStatus.PROTOCOL
        # Calls accepted and never served count as failed: the application refused them.
        failed = sum(self.totals.failed.values()) + self.totals.unserved
        allowed = max_failed or 0
        if max_failed_share is not None:
            allowed = math.floor(self.totals.started * max_failed_share)
        if failed > allowed:
            return ExitStatus.FAILED
        # --scenario: a conversation with a failed expectation, as converse's exit 3.
        conversations = self.totals.conversations
        allowed = max_failed or 0
        if max_failed_share is not None:
            allowed = math.floor(conversations * max_failed_share)
        if self.totals.conversations_failed > allowed:
            return ExitStatus.PROTOCOL
        return ExitStatus.OK


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

    aggregator = Aggregator(workers, epoch, got_row, conversation=plan.scenario is not None)
    if workers == 1:
        worker = Worker(plan, epoch=epoch, on_period=aggregator.add)
        stopped = worker.run()
    else:
        stopped = _run_processes(plan, workers, epoch, aggregator)
    return LoadResult(aggregator.totals, last.get("row"), stopped)


class ControllerPipe:
    """A worker's end of its pipe to the controller. Records go out without ever
    blocking: while the controller has not read the last one, the next is dropped
    (said once on stderr): statistics are lost, never calls. The
    controller's word ("stop"), or its end of file when it died, comes in on the
    worker's reactor. Frames are multiprocessing's (a 4-byte big-endian length,
    then the pickle), so the controller reads them with Connection.recv()."""

    SEND_BUFFER = 32768
    FINAL_FLUSH = 0.5  # s the last record may wait for a controller that reads slowly

    def __init__(self, conn: Any, index: int) -> None:
        self.conn = conn
        self.fd: int = conn.fileno()
        self.index = index
        os.set_blocking(self.fd, False)
        try:
            # A few periods' records in flight at most: a controller that stopped
            # reading is noticed within seconds, not after megabytes.
            with socket.socket(fileno=os.dup(self.fd)) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.SEND_BUFFER)
        except OSError:
            pass
        self.pending = bytearray()
        self.dropped = 0
        self.gone = False

    def fileno(self) -> int:
        return self.fd

    def send(self, record: dict[str, Any]) -> None:
        if self.gone:
            return
        self._flush()
        if self.pending:
            self._drop()
            return
        data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        frame = struct.pack("!i", len(data)) + data
        try:
            sent = os.write(self.fd, frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.gone = True
            return
        if sent < len(frame):
            self.pending += frame[sent:]  # a frame begun must be finished

    def _flush(self) -> None:
        if not self.pending or self.gone:
            return
        try:
            sent = os.write(self.fd, self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.gone = True
            self.pending.clear()
            return
        del self.pending[:sent]

    def _drop(self) -> None:
        if not self.dropped:
            print(
                f"audiosocket: warning: load worker {self.index}: the controller is not "
                "reading; statistics are dropped until it does (the calls go on)",
                file=sys.stderr,
                flush=True,
            )
        self.dropped += 1

    def stop_asked(self) -> bool:
        """The pipe is readable: the controller asked us to stop, or it is gone."""
        try:
            data = os.read(self.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            self.gone = True
        return True

    def close(self) -> None:
        deadline = time.monotonic() + self.FINAL_FLUSH
        while self.pending and not self.gone and time.monotonic() < deadline:
            select.select([], [self.fd], [], max(0.0, deadline - time.monotonic()))
            self._flush()
        try:
            self.conn.close()
        except OSError:
            pass


def _worker_main(
    plan: LoadPlan,
    index: int,
    count: int,
    epoch: float,
    conn: Any,
    inherited: list[int],
    parent: int,
) -> None:
    # The parent's ends of every pipe, ours included, came with the fork: closed, so
    # that the parent's death is an end of file here (and no sibling keeps ours open).
    for fd in inherited:
        try:
            os.close(fd)
        except OSError:
            pass
    die_with_parent(parent)  # SIGTERM the moment it dies: the reactor ends every call
    pipe = ControllerPipe(conn, index)
    worker = Worker(plan, index=index, count=count, epoch=epoch, on_period=pipe.send, control=pipe)
    try:
        worker.run()
    finally:
        pipe.close()


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
            inherited = [c.fileno() for c in (*conns, ours)]
            process = context.Process(  # type: ignore[attr-defined]
                target=_worker_main,
                args=(plan, index, workers, epoch, theirs, inherited, os.getpid()),
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
