"""Does `listen --workers 2` carry more calls than one worker, at the same echo latency?

Starts `audiosocket listen 127.0.0.1:0 --echo -q --workers N` and runs paced 8 kHz
calls against it with the echo benchmark's own load generator (imported from
bench_listen_echo: the UUID in one write, then a 320-byte audio message every
20 ms per call on a drift-free clock, each echo matched to what was sent), in
`--procs` client processes, since one process cannot drive 1600 calls.

Two things are measured:

1. `--calls` (1600) calls on `--workers` (2) workers: nothing lost, echo p99
   under `--p99` (20 ms).
2. Capacity: the most calls one worker carries with nothing lost and p99
   under the same bound, found by stepping up (x1.25 from `--start`) and then
   halving the last step, and the same for `--workers` workers; the target is
   a ratio of at least 1.6.

The machine's cores are shared by the server, the client processes and
whatever else runs here: on a 2-core machine the clients alone take most of a
core at 1600 calls, so a capacity found here is the machine's, not listen's
alone. Load averages before and after each run are printed to judge the
noise. Exits non-zero only when the benchmark could not run. Traffic goes to
127.0.0.1 only.

    python benchmarks/bench_listen_workers.py                  # both parts
    python benchmarks/bench_listen_workers.py --skip-capacity  # 1600 calls only
    python benchmarks/bench_listen_workers.py --calls 800 --seconds 5 --start 300
    python benchmarks/bench_listen_workers.py --server-cpus 0,1 --client-cpus 2,3,4,5
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import sys
import time
from typing import Any

import _client
import bench_listen_echo as echo

READY_TIMEOUT = 120.0


CPUS: dict[str, set[int] | None] = {"server": None, "client": None}  # --server-cpus...


def run(calls: int, workers: int, seconds: float, procs: int) -> dict[str, Any]:
    """`calls` paced calls for `seconds` against listen --workers `workers` (0: the trivial
    selector echo server of _client.py instead, the floor): the figures."""
    import numpy as np

    argv = _client.cli_command(
        "listen", "127.0.0.1:0", "--echo", "-q", "--workers", str(workers), "--max-concurrent",
        str(max(1000, calls)),
    )  # fmt: skip
    if workers == 0:
        argv = [sys.executable, _client.__file__, "echo-server", "127.0.0.1:0"]
    load_before = _client.loadavg()
    server = _client.ServerProcess(argv, cpus=CPUS["server"])
    context = multiprocessing.get_context("spawn")
    processes: list[Any] = []
    pipes: list[multiprocessing.connection.Connection] = []
    indexes = list(range(calls))
    offsets = [i * echo.FRAME / calls for i in indexes]  # starts spread over 20 ms
    try:
        for n in range(procs):
            mine = indexes[n::procs]
            ours, theirs = context.Pipe()
            process = context.Process(
                target=echo.worker,
                args=(
                    server.port,
                    mine,
                    [offsets[i] for i in mine],
                    seconds,
                    theirs,
                    CPUS["client"],
                ),
                daemon=True,
            )
            process.start()
            processes.append(process)
            pipes.append(ours)
        for pipe in pipes:
            if not pipe.poll(READY_TIMEOUT) or pipe.recv() != "ready":
                raise RuntimeError("a client process did not connect its calls")
        start = time.monotonic() + 0.5
        for pipe in pipes:
            pipe.send(start)
        time.sleep(max(0.0, start - time.monotonic()))
        cpu_before = sum(server.cpu_seconds())
        each_before = _each_cpu(server.pid)
        time.sleep(seconds)
        cpu = sum(server.cpu_seconds()) - cpu_before
        each = {pid: t - each_before.get(pid, 0.0) for pid, t in _each_cpu(server.pid).items()}
        results = []
        for pipe in pipes:
            if not pipe.poll(echo.DRAIN_SECONDS + 60):
                raise RuntimeError("a client process did not finish")
            results.append(pipe.recv())
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"client: {errors[0]}")
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
        status = server.stop()
    sent = sum(r.sent for r in results)
    received = sum(r.received for r in results)
    damaged = sum(r.reordered + r.duplicates + r.corrupted + r.closed_by_peer for r in results)
    latencies = np.frombuffer(b"".join(r.latencies for r in results), dtype=np.float64)
    lateness = np.frombuffer(b"".join(r.lateness for r in results), dtype=np.float64)
    p50, p99 = np.percentile(latencies, [50, 99]) if len(latencies) else (np.inf, np.inf)
    return {
        "calls": calls,
        "workers": workers,
        "sent": sent,
        "lost": sent - received + damaged,
        "p50": float(p50),
        "p99": float(p99),
        "client_late_p99": float(np.percentile(lateness, 99)) if len(lateness) else 0.0,
        "cpu": cpu / seconds,
        "each_cpu": [each[pid] / seconds for pid in sorted(each)],
        "client_cpu": sum(r.cpu_user + r.cpu_sys for r in results) / seconds,
        "load": f"{load_before} -> {_client.loadavg()}",
        "status": status,
        "notes": server.notable[:3],
    }


def _each_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of a process and of each of its children (the parent, the workers)."""
    pids = [pid, *_client._descendants(pid)]
    out = {}
    for one in pids:
        try:
            fields = _client._stat_fields(one)
        except (OSError, ValueError):
            continue
        out[one] = (int(fields[11]) + int(fields[12])) / _client.CLOCK_TICKS
    return out


def line(figures: dict[str, Any], bound: float) -> str:
    verdict = "ok" if good(figures, bound) else "NOT ok"
    who = f"{figures['workers']} worker(s)" if figures["workers"] else "trivial server"
    split = " + ".join(f"{100 * c:.0f}%" for c in figures["each_cpu"])
    return (
        f"{who}, {figures['calls']:5d} calls: sent {figures['sent']},"
        f" lost {figures['lost']}, echo median {1e3 * figures['p50']:.2f} ms,"
        f" p99 {1e3 * figures['p99']:.2f} ms, server CPU {100 * figures['cpu']:.0f}% of a core"
        f" ({split}),"
        f" client CPU {100 * figures['client_cpu']:.0f}%, client sends late p99"
        f" {1e3 * figures['client_late_p99']:.1f} ms, load {figures['load']}: {verdict}"
    )


def good(figures: dict[str, Any], bound: float) -> bool:
    return figures["lost"] == 0 and figures["p99"] < bound


def carried(calls: int, workers: int, args: argparse.Namespace) -> bool:
    """Whether `workers` carry `calls` within the bound, in one of --tries runs (other
    work on a shared machine spoils single runs; a failure is retried)."""
    for _ in range(args.tries):
        figures = run(calls, workers, args.seconds, args.procs)
        print("  " + line(figures, args.p99), flush=True)
        if good(figures, args.p99):
            return True
    return False


def capacity(workers: int, args: argparse.Namespace) -> int:
    """The most calls `workers` workers carry within the bound: up by x1.25, then halving."""
    best, calls, worst = 0, args.start, None
    while calls <= args.most:
        if not carried(calls, workers, args):
            worst = calls
            break
        best = calls
        calls = int(calls * 1.25)
    if worst is None:
        return best
    while worst - best > max(25, best // 20):
        calls = (best + worst) // 2
        if carried(calls, workers, args):
            best = calls
        else:
            worst = calls
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1600, help="calls at once (1600)")
    parser.add_argument("--workers", type=int, default=2, help="listen --workers (2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a run (10)")
    parser.add_argument("--procs", type=int, default=2, help="client processes (2)")
    parser.add_argument("--p99", type=float, default=0.020, help="echo p99 bound, s (0.020)")
    parser.add_argument("--start", type=int, default=400, help="capacity search start (400)")
    parser.add_argument("--most", type=int, default=4000, help="capacity search end (4000)")
    parser.add_argument("--skip-capacity", action="store_true", help="only the --calls run")
    parser.add_argument(
        "--tries", type=int, default=2, help="runs of a call count before it fails (2)"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="first run --calls against a trivial selector echo server (no decoding, no"
        " output): what this machine and client carry at all",
    )
    for who in ("server", "client"):
        parser.add_argument(
            f"--{who}-cpus",
            metavar="LIST",
            help=f"CPUs the {who} may run on, e.g. 0,1 (default: any); on a machine with"
            " cores to spare, give the load generator cores of its own",
        )
    args = parser.parse_args(argv)
    for who in ("server", "client"):
        chosen = getattr(args, f"{who}_cpus")
        CPUS[who] = {int(c) for c in chosen.split(",")} if chosen else None
    if not _client.command_works(_client.cli_command("listen", "--help")):
        print("bench_listen_workers: `audiosocket listen --help` fails", file=sys.stderr)
        return 1
    try:
        if args.floor:
            print(f"== {args.calls} calls on the trivial echo server, {args.seconds:g} s ==")
            print(line(run(args.calls, 0, args.seconds, args.procs), args.p99))
        print(f"== {args.calls} calls on {args.workers} workers, {args.seconds:g} s ==")
        figures = run(args.calls, args.workers, args.seconds, args.procs)
        print(line(figures, args.p99))
        for note in figures["notes"]:
            print(f"  listen said: {note}")
        print(
            f"target         nothing lost: {_client.met(figures['lost'] == 0)}; p99 under"
            f" {1e3 * args.p99:g} ms: {_client.met(figures['p99'] < args.p99)}"
        )
        if args.skip_capacity:
            return 0
        print(f"== capacity at p99 under {1e3 * args.p99:g} ms, nothing lost ==")
        one = capacity(1, args)
        print(f"1 worker carries {one} calls")
        many = capacity(args.workers, argparse.Namespace(**{**vars(args), "start": max(one, 1)}))
        print(f"{args.workers} workers carry {many} calls")
        ratio = many / one if one else float("inf")
        print(f"target         at least 1.6x one worker: {ratio:.2f}x: {_client.met(ratio >= 1.6)}")
    except (RuntimeError, OSError) as exc:
        print(f"bench_listen_workers: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
