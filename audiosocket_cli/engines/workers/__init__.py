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

Modules: budget (the shared budget), link (a worker's side: its sink, its end of
the socket pair), merger (the parent's merge), pool (the parent's side: the workers
started and awaited, signals deferred, the exit status). Whether this system can run
workers at all (unavailable) is answered here, before any of them is needed.
"""

from __future__ import annotations

import multiprocessing

from audiosocket_cli.engines.workers.budget import Budget, SharedRefusals
from audiosocket_cli.engines.workers.link import (
    FINAL_FLUSH,
    FRAME_RECORDS,
    HEADER,
    MARK_INTERVAL,
    MAX_BACKLOG,
    PARENT_GONE,
    STOP,
    Forms,
    ForwardSink,
    Link,
)
from audiosocket_cli.engines.workers.merger import STALE, Merger
from audiosocket_cli.engines.workers.pool import (
    READY_TIMEOUT,
    STOP_GRACE,
    MakeService,
    Pool,
    Service,
    WorkerFailed,
    serve,
    signals_deferred,
)
from audiosocket_cli.net.transport import reuseport_available

__all__ = [
    "FINAL_FLUSH",
    "FRAME_RECORDS",
    "HEADER",
    "MARK_INTERVAL",
    "MAX_BACKLOG",
    "PARENT_GONE",
    "READY_TIMEOUT",
    "STALE",
    "STOP",
    "STOP_GRACE",
    "Budget",
    "Forms",
    "ForwardSink",
    "Link",
    "MakeService",
    "Merger",
    "Pool",
    "Service",
    "SharedRefusals",
    "WorkerFailed",
    "serve",
    "signals_deferred",
    "unavailable",
]


def unavailable() -> str:
    """Why worker processes cannot run here ("" when they can)."""
    if not reuseport_available():
        return "SO_REUSEPORT is not available on this system"
    if "fork" not in multiprocessing.get_all_start_methods():
        return "worker processes need fork(), which this system does not have"
    return ""
