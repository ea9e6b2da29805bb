"""Per-period statistics of a load run: mergeable histograms, counters, rows, CSV."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audiosocket_cli.net.transport import CONNECT_TIMEOUT
from audiosocket_cli.protocol.events import ENDINGS

LATE_WARNING = 0.005  # s: our p99 send lateness above this means the generator is the limit
# How a call may end and still be a normal call: our --duration, the end of the
# file, or the application's hangup or close.
NORMAL_ENDINGS = frozenset({"caller-close", "caller-hangup", "app-hangup", "app-close"})
# A call stopped by Ctrl-C or SIGTERM is neither normal nor failed.
STOPPED_ENDINGS = frozenset({"interrupted", "terminated"})
CONNECT_FAILURES = {
    "connect-refused": "the application refused the connection (or reset it unused)",
    "connect-timeout": f"the connection did not complete within {CONNECT_TIMEOUT:g} s",
    "connect-failed": "the connection failed otherwise (unreachable, no route...)",
    "before-call-failed": "--before-call did not exit 0 in time: the call was not placed",
}
# Every failure reason: the ENDINGS that are not normal, then the connect failures.
FAILURE_REASONS = [
    *(token for token in ENDINGS if token not in NORMAL_ENDINGS | STOPPED_ENDINGS),
    *CONNECT_FAILURES,
]
DIAGNOSES = [
    "burst",
    "pacing",
    "slow",
    "rate-mismatch",
    "one-way-audio",
    "ulaw",
    "byte-order",
    "frame-size",
    "refused",
]


# Mergeable percentiles.

_log1p = math.log1p
_LOG_BASE = math.log(1.01)


class Histogram:
    """Durations in log buckets 1% wide: cheap to add, exact to merge across workers.
    A negative value (a reply begun before the caller's speech ended) has a bucket of
    its own sign: bucket -1 - i holds what bucket i holds, negated."""

    __slots__ = ("counts", "n", "max", "pending")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max = 0.0
        # Values noted by a hot path (pending.append: tens of nanoseconds against add()'s
        # hundreds), binned together by settle(); state(), merge() and percentile() settle
        # first, and so must anyone reading n or max directly.
        self.pending = array("d")

    def add(self, seconds: float) -> None:
        self.add_many(seconds, 1)

    def add_many(self, seconds: float, count: int) -> None:
        """`count` values of `seconds` (a bound for each of them) at the cost of one."""
        if count <= 0:
            return
        us = seconds * 1e6
        if us > 0:
            i = int(_log1p(us) / _LOG_BASE)
        elif us > -1:
            i = 0
        else:
            i = -1 - int(_log1p(-us) / _LOG_BASE)
        counts = self.counts
        counts[i] = counts.get(i, 0) + count
        if seconds > self.max or not self.n:
            self.max = seconds
        self.n += count

    def settle(self) -> None:
        """Bin the values noted in `pending`, all at once (numpy), as add() bins each."""
        pending = self.pending
        if not pending:
            return
        import numpy as np

        values = np.array(pending, dtype=np.float64)
        del pending[:]
        us = values * 1e6
        index = np.zeros(len(values), dtype=np.int64)
        positive = us > 0
        index[positive] = (np.log1p(us[positive]) / _LOG_BASE).astype(np.int64)
        negative = us <= -1
        index[negative] = -1 - (np.log1p(-us[negative]) / _LOG_BASE).astype(np.int64)
        keys, counts = np.unique(index, return_counts=True)
        mine = self.counts
        for i, k in zip(keys.tolist(), counts.tolist(), strict=True):
            mine[i] = mine.get(i, 0) + k
        peak = float(values.max())
        if peak > self.max or not self.n:
            self.max = peak
        self.n += len(values)

    def state(self) -> tuple[dict[int, int], int, float]:
        self.settle()
        return dict(self.counts), self.n, self.max

    def merge(self, state: tuple[dict[int, int], int, float]) -> None:
        self.settle()
        counts, n, peak = state
        mine = self.counts
        for i, k in counts.items():
            mine[i] = mine.get(i, 0) + k
        if n and (not self.n or peak > self.max):
            self.max = peak
        self.n += n

    def percentile(self, p: float) -> float | None:
        """Seconds, to 0.5%; None when empty."""
        self.settle()
        if not self.n:
            return None
        rank = max(1, math.ceil(self.n * p / 100))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                if i >= 0:
                    value = math.expm1((i + 0.5) * _LOG_BASE) / 1e6
                else:
                    value = -math.expm1((-1 - i + 0.5) * _LOG_BASE) / 1e6
                return min(value, self.max)
        return self.max


def ms(h: Histogram, q: float) -> float | None:
    """Percentile q of a histogram in milliseconds (3 decimals), None when empty."""
    value = h.percentile(q)
    return None if value is None else round(value * 1000, 3)


HISTOGRAMS = ("late", "ttfa", "jitter", "echo", "response", "first_response", "barge_in_stop")
# Expectation kinds (engines.conversation.verdicts), each a column of failed ones.
EXPECT_KINDS = ("first-response", "answer", "stop", "hangup", "wait", "no-talk-over", "no-dead-air")


class PeriodStats:
    """What one worker saw in one period: counters and histograms."""

    COUNTERS = (
        "started",
        "up",
        "ended",
        "violations",
        "stopped",
        "msgs_out",
        "bytes_out",
        "msgs_in",
        "bytes_in",
        "bursts",
        "gaps",
        "unserved",
        "left_open",
        "conversations",
        "conversations_failed",
        "talk_overs",
        "dead_air",
    )

    def __init__(self) -> None:
        self.started = self.up = self.ended = self.violations = self.stopped = 0
        self.msgs_out = self.bytes_out = self.msgs_in = self.bytes_in = 0
        self.bursts = self.gaps = 0
        self.unserved = 0  # calls the application accepted but never served (nor closed)
        self.left_open = 0  # calls whose socket it left open after our close (CLOSE-WAIT)
        # --scenario: conversations concluded (at their call's end), those with a failed
        # expectation, the agent's talk-overs and stretches of dead air in them.
        self.conversations = self.conversations_failed = self.talk_overs = self.dead_air = 0
        self.failed_expect: Counter[str] = Counter()  # by expectation kind
        self.audio_s = 0.0  # seconds of application audio received
        self.talk_s = 0.0  # seconds of calls' time since their first application audio
        self.failed: Counter[str] = Counter()
        self.diagnoses: Counter[str] = Counter()
        self.late = Histogram()
        self.ttfa = Histogram()
        self.jitter = Histogram()
        self.echo = Histogram()
        self.response = Histogram()  # each turn's response latency (negative: talk-over)
        self.first_response = Histogram()
        self.barge_in_stop = Histogram()

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
        out["audio_s"] = self.audio_s
        out["talk_s"] = self.talk_s
        out["failed"] = dict(self.failed)
        out["diagnoses"] = dict(self.diagnoses)
        out["failed_expect"] = dict(self.failed_expect)
        for name in HISTOGRAMS:
            out[name] = getattr(self, name).state()
        return out

    def merge(self, record: dict[str, Any]) -> None:
        for name in self.COUNTERS:
            setattr(self, name, getattr(self, name) + record[name])
        self.audio_s += record["audio_s"]
        self.talk_s += record["talk_s"]
        self.failed.update(record["failed"])
        self.diagnoses.update(record["diagnoses"])
        self.failed_expect.update(record["failed_expect"])
        for name in HISTOGRAMS:
            getattr(self, name).merge(record[name])


# The controller: merging the workers' periods.


@dataclass
class PeriodRow:
    """One period of the whole run, and the totals so far."""

    index: int
    t: float  # seconds since the run started, at the period's end
    seconds: float  # the period's length (the last may be short)
    period: PeriodStats
    totals: PeriodStats
    active: int
    connecting: int
    final: bool = False
    conversation: bool = False  # a --scenario run: the conversation fields too

    def as_dict(self) -> dict[str, Any]:
        """The JSON line and the CSV row (docs/load.md lists the fields)."""
        p, tot, s = self.period, self.totals, max(self.seconds, 1e-9)

        ratio = round(p.audio_s / p.talk_s, 3) if p.talk_s > 0 else None
        failed = sum(p.failed.values())
        row = {
            "type": "total" if self.final else "period",
            "period": self.index,
            "t": round(self.t, 3),
            "seconds": round(self.seconds, 3),
            "active": self.active,
            "connecting": self.connecting,
            "started": p.started,
            "up": p.up,
            "ended": p.ended,
            "failed": failed,
            "violations": p.violations,
            "total_started": tot.started,
            "total_up": tot.up,
            "total_ended": tot.ended,
            "total_failed": sum(tot.failed.values()),
            "total_violations": tot.violations,
            "unserved": p.unserved,
            "left_open": p.left_open,
            "total_unserved": tot.unserved,
            "total_left_open": tot.left_open,
            "total_stopped": tot.stopped,
            "total_msgs_out": tot.msgs_out,
            "total_msgs_in": tot.msgs_in,
            "msgs_out_per_s": round(p.msgs_out / s, 1),
            "bytes_out_per_s": round(p.bytes_out / s, 1),
            "msgs_in_per_s": round(p.msgs_in / s, 1),
            "bytes_in_per_s": round(p.bytes_in / s, 1),
            "send_late_p50_ms": ms(p.late, 50),
            "send_late_p99_ms": ms(p.late, 99),
            "send_late_max_ms": round(p.late.max * 1000, 3) if p.late.n else None,
            "generator_late": bool(p.late.n and (p.late.percentile(99) or 0.0) > LATE_WARNING),
            "ttfa_p50_ms": ms(p.ttfa, 50),
            "ttfa_p99_ms": ms(p.ttfa, 99),
            "total_ttfa_p50_ms": ms(tot.ttfa, 50),
            "total_ttfa_p99_ms": ms(tot.ttfa, 99),
            "realtime_ratio": ratio,
            "jitter_p99_ms": ms(p.jitter, 99),
            "bursts": p.bursts,
            "gaps": p.gaps,
            "total_bursts": tot.bursts,
            "total_gaps": tot.gaps,
            "echo_p50_ms": ms(p.echo, 50),
            "echo_p99_ms": ms(p.echo, 99),
            "echo_frames": p.echo.n,
            "total_echo_p50_ms": ms(tot.echo, 50),
            "total_echo_p99_ms": ms(tot.echo, 99),
            "total_send_late_p99_ms": ms(tot.late, 99),
            "total_send_late_max_ms": round(tot.late.max * 1000, 3) if tot.late.n else None,
            "failed_by": dict(sorted(p.failed.items())),
            "total_failed_by": dict(sorted(tot.failed.items())),
            "diagnoses": dict(sorted(p.diagnoses.items())),
            "total_diagnoses": dict(sorted(tot.diagnoses.items())),
        }
        if self.conversation:
            row.update(conversation_fields(p, tot))
        return row


def conversation_fields(p: PeriodStats, tot: PeriodStats) -> dict[str, Any]:
    """A --scenario run's figures: the period's, and the totals' (`total_` ...)."""

    out: dict[str, Any] = {}
    for prefix, stats in (("", p), ("total_", tot)):
        out[f"{prefix}conversations"] = stats.conversations
        out[f"{prefix}conversations_failed"] = stats.conversations_failed
        for name in ("response", "first_response", "barge_in_stop"):
            h = getattr(stats, name)
            for q in (50, 95, 99):
                out[f"{prefix}{name}_p{q}_ms"] = ms(h, q)
            out[f"{prefix}{name}_max_ms"] = round(h.max * 1000, 3) if h.n else None
        out[f"{prefix}responses"] = stats.response.n
        out[f"{prefix}talk_overs"] = stats.talk_overs
        out[f"{prefix}dead_air"] = stats.dead_air
        out[f"{prefix}failed_expect"] = dict(sorted(stats.failed_expect.items()))
    return out


CSV_COLUMNS = [
    "period",
    "t",
    "seconds",
    "active",
    "connecting",
    "started",
    "up",
    "ended",
    "failed",
    "violations",
    "total_started",
    "total_up",
    "total_ended",
    "total_failed",
    "total_violations",
    "unserved",
    "left_open",
    "msgs_out_per_s",
    "bytes_out_per_s",
    "msgs_in_per_s",
    "bytes_in_per_s",
    "send_late_p50_ms",
    "send_late_p99_ms",
    "send_late_max_ms",
    "ttfa_p50_ms",
    "ttfa_p99_ms",
    "realtime_ratio",
    "jitter_p99_ms",
    "bursts",
    "gaps",
    "echo_p50_ms",
    "echo_p99_ms",
    "echo_frames",
    *(f"failed_{reason}" for reason in FAILURE_REASONS),
    *(f"diag_{code}" for code in DIAGNOSES),
]


# A --scenario run's columns, after load's own.
CONVERSATION_CSV_COLUMNS = [
    "conversations",
    "conversations_failed",
    *(f"{name}_{stat}_ms" for name in ("response", "first_response", "barge_in_stop")
      for stat in ("p50", "p95", "p99", "max")),
    "responses",
    "talk_overs",
    "dead_air",
    *(f"failed_expect_{kind}" for kind in EXPECT_KINDS),
]  # fmt: skip


def csv_columns(conversation: bool = False) -> list[str]:
    """The CSV's header: load's columns, and a --scenario run's after them."""
    return CSV_COLUMNS + CONVERSATION_CSV_COLUMNS if conversation else list(CSV_COLUMNS)


def csv_row(row: dict[str, Any], columns: list[str] | None = None) -> list[Any]:
    """A period's dict as the CSV columns: empty for no figure, 0 for no count."""
    out: list[Any] = []
    for column in columns or CSV_COLUMNS:
        if column.startswith("failed_expect_"):
            out.append(row["failed_expect"].get(column[14:], 0))
        elif column.startswith("failed_"):
            out.append(row["failed_by"].get(column[7:], 0))
        elif column.startswith("diag_"):
            out.append(row["diagnoses"].get(column[5:], 0))
        else:
            value = row[column]
            out.append("" if value is None else value)
    return out


class Aggregator:
    """Merges the workers' period records into rows, in order, as they complete."""

    def __init__(
        self,
        workers: int,
        epoch: float,
        on_row: Callable[[PeriodRow], None],
        conversation: bool = False,
    ) -> None:
        self.workers = workers
        self.conversation = conversation
        self.epoch = epoch
        self.on_row = on_row
        self.totals = PeriodStats()
        self.pending: dict[int, list[dict[str, Any]]] = {}
        self.done: dict[int, int] = {}  # worker -> its final period
        self.next_index = 0
        self.last_at = epoch
        self.rows = 0

    def add(self, record: dict[str, Any]) -> None:
        self.pending.setdefault(record["period"], []).append(record)
        if record["final"]:
            self.done[record["worker"]] = record["period"]
        self._drain()

    @property
    def finished(self) -> bool:
        return len(self.done) == self.workers

    def _expected(self, index: int) -> int:
        return self.workers - sum(1 for final in self.done.values() if final < index)

    def _drain(self) -> None:
        while True:
            index = self.next_index
            expected = self._expected(index)
            records = self.pending.get(index, [])
            if expected == 0 or len(records) < expected:
                return
            del self.pending[index]
            self.next_index += 1
            period = PeriodStats()
            for record in records:
                period.merge(record)
            self.totals.merge(period.record())
            at = max((r["at"] for r in records), default=self.last_at)
            seconds, self.last_at = at - self.last_at, at
            final = self.finished and index >= max(self.done.values())
            self.rows += 1
            self.on_row(
                PeriodRow(
                    index=index,
                    t=at - self.epoch,
                    seconds=seconds,
                    period=period,
                    totals=self.totals,
                    active=sum(r["active"] for r in records),
                    connecting=sum(r["connecting"] for r in records),
                    final=final,
                    conversation=self.conversation,
                )
            )
            if final:
                return
