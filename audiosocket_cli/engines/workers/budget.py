"""The shared budget of `--workers N`: connections numbered, and calls admitted
against --max-calls and --max-concurrent, in shared memory under one lock, so that a
caller beyond a limit is refused by whichever worker took it, with the usual line."""

from __future__ import annotations

import contextlib
import multiprocessing
from typing import Any

from audiosocket_cli.engines.call import Refusals
from audiosocket_cli.net.reactor import Reactor
from audiosocket_cli.output.sinks import Output

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
