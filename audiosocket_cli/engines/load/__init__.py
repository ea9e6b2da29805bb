"""Many Asterisk-side calls at once, with SIPp-style statistics per period: the `load` engine.

Each call is a `dial` call: the UUID first, then frames on a drift-free clock
(frame k due at the call's first tick + k x 20 ms, a file's last frame
short), closed without a hangup message, and judged by an Asterisk-side
protocol.session.Session through engines.call.CallReport, as every engine
judges a call. What differs is the scale: a :class:`Worker` runs all its
calls on ONE net.reactor.Reactor (one selector, one timer heap). Calls are
grouped by the millisecond of the 20 ms grid they started on; each group is
one timer, and its tick sends every member's frame in one pass. A thread or
a greenlet per call would cost far more per frame.

Several workers (processes) share the calls; each sends a per-period
aggregate (counters and mergeable histograms, never per-frame data) to the
controller (:func:`run_load`), which merges the workers' periods into one
:class:`PeriodRow` per period, with the totals so far.

What is measured, per period:

- our own send lateness (proves the generator is not the bottleneck);
- the application's time to first audio, its real-time ratio, inter-arrival
  jitter, bursts (DirectionStats' 100 ms within 20 ms) and gaps (200 ms
  without audio once it had been talking);
- the echo round trip, when the application echoes: every frame we send
  carries a 12-bit counter in the low bits of its first three samples (at
  most 15 LSB, inaudible), so each payload is distinct and the application's
  copy is recognised by its hash, without any cooperation from it;
- how calls ended (the `ended` tokens of protocol.events.ENDINGS, plus the
  connect failures) and the diagnoses of each call's end;
- with a scenario (`--scenario`), each call is a conversation: its frames come
  from an engines.conversation Script run on the worker's loop, the
  application's audio goes to the script's speech detector as it is read,
  and the call's end adds its response latencies, time to first response,
  barge-in stop times, talk-overs, dead air and failed expectations by kind.
"""

from audiosocket_cli.engines.load.display import Dashboard, plain_line
from audiosocket_cli.engines.load.periods import (
    CONNECT_FAILURES,
    CONVERSATION_CSV_COLUMNS,
    CSV_COLUMNS,
    DIAGNOSES,
    EXPECT_KINDS,
    FAILURE_REASONS,
    HISTOGRAMS,
    LATE_WARNING,
    NORMAL_ENDINGS,
    STOPPED_ENDINGS,
    Aggregator,
    Histogram,
    PeriodRow,
    PeriodStats,
    csv_columns,
    csv_row,
)
from audiosocket_cli.engines.load.plan import (
    FRAME_MS,
    LoadPlan,
    check_uuid_pattern,
    dtmf_schedule,
    make_uuid,
)
from audiosocket_cli.engines.load.run import LoadResult, default_workers, run_load
from audiosocket_cli.engines.load.worker import Worker

__all__ = [
    "CONNECT_FAILURES",
    "CONVERSATION_CSV_COLUMNS",
    "CSV_COLUMNS",
    "DIAGNOSES",
    "EXPECT_KINDS",
    "FAILURE_REASONS",
    "FRAME_MS",
    "HISTOGRAMS",
    "LATE_WARNING",
    "NORMAL_ENDINGS",
    "STOPPED_ENDINGS",
    "Aggregator",
    "Dashboard",
    "Histogram",
    "LoadPlan",
    "LoadResult",
    "PeriodRow",
    "PeriodStats",
    "Worker",
    "check_uuid_pattern",
    "csv_columns",
    "csv_row",
    "default_workers",
    "dtmf_schedule",
    "make_uuid",
    "plain_line",
    "run_load",
]
