"""The parent's merge of `--workers N`: the workers' records to the command's one
Output, in time order, whole lines only."""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from typing import Any

from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.events import CallEnd, CallInfo, CallStart

STALE = 0.5  # s: a worker not heard from for this long no longer holds the merge back


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
