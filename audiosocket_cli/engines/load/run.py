"""The whole load run: one worker in this process, or several processes merged."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audiosocket_cli.engines.load.periods import Aggregator, PeriodRow, PeriodStats
from audiosocket_cli.engines.load.plan import LoadPlan
from audiosocket_cli.engines.load.worker import Worker
from audiosocket_cli.status import ExitStatus

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
        # Calls accepted and never served count as failed: the application refused them.
        failed = sum(self.totals.failed.values()) + self.totals.unserved
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
