"""Two versions of `audiosocket load`, one against the other: which costs less CPU?

A change to load's hot path moves its CPU by a few percent; other work on a
shared machine moves single runs by ten or twenty. So this alternates: each
round runs every version once, in turn (the order flips each round), against
bench_load's trivial echo server, and prints the median. To take the
scheduler out of it, the echo server runs on CPU 1 and load (one worker) on
CPU 0: the figure is load's own CPU, user and system, from /proc over
`--seconds` of the steady part (every call up, none ended).

A version is a source tree (a checkout, or `git archive REV | tar -x -C DIR`):

    python benchmarks/bench_load_ab.py before=/tmp/before after=.
    python benchmarks/bench_load_ab.py before=/tmp/before after=. --rounds 10 --calls 400

`floor` as a version runs bench_load's floor (the simplest loop that sends the
same frames) in the same place, and prints each version's ratio against it:

    python benchmarks/bench_load_ab.py floor now=. --calls 1000

Needs 2 CPUs (it says so and exits 2 otherwise). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_load  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system seconds of one process."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def one_run(tree: Path | None, args: argparse.Namespace) -> tuple[float, float]:
    """(user, system) cores of load from `tree` (None: bench_load's floor, the simplest
    loop that sends the same frames) over the steady part of one run."""
    server, port = bench_load.start_server(0.0)
    try:
        os.sched_setaffinity(server.pid or 0, {1})
        duration = args.ramp + args.seconds + 2.0
        rate = args.calls / (args.ramp / 2)
        if tree is None:
            floor = argparse.Namespace(calls=args.calls, rate=rate, duration=duration, workers=1)
            command = bench_load.floor_command(port, floor)
            env = bench_load.env()
        else:
            command = [
                sys.executable, "-m", "audiosocket_cli", "load", f"127.0.0.1:{port}",
                "--calls", str(args.calls), "--rate", str(rate),
                "--duration", f"{duration:g}", "--total", str(args.calls), "--json",
                "--workers", "1",
            ]  # fmt: skip
            env = dict(os.environ, PYTHONPATH=str(tree))
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd="/",  # not a tree: `python -m` would find the package there first
            preexec_fn=lambda: os.sched_setaffinity(0, {0}),
        )
        time.sleep(args.ramp)
        pids = [proc.pid, *bench_load.descendants(proc.pid)]
        before = [cpu_times(pid) for pid in pids]
        start = time.monotonic()
        time.sleep(args.seconds)
        after = [cpu_times(pid) for pid in pids]
        took = time.monotonic() - start
        proc.wait()
        user = sum(b[0] - a[0] for a, b in zip(before, after, strict=True)) / took
        system = sum(b[1] - a[1] for a, b in zip(before, after, strict=True)) / took
        return user, system
    finally:
        server.terminate()
        server.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "versions", nargs="+", metavar="NAME=TREE", help="two or more (`floor`: the floor)"
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=400, help="at once, one worker")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured, each run")
    parser.add_argument("--ramp", type=float, default=2.5, help="s before measuring")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("bench_load_ab: needs 2 CPUs (the echo server on one, load on the other)")
        return 2
    trees: dict[str, Path | None] = {}
    for item in args.versions:
        if item == "floor":
            trees["floor"] = None
            continue
        name, _, path = item.partition("=")
        tree = Path(path).resolve()
        if not name or not (tree / "audiosocket_cli").is_dir():
            print(f"bench_load_ab: {item!r} is not NAME=TREE with audiosocket_cli/ in TREE")
            return 2
        trees[name] = tree
    got: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    names = list(trees)
    for i in range(args.rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            user, system = one_run(trees[name], args)
            got[name].append((user, system))
            print(f"round {i + 1}: {name}: user {user:.3f} + system {system:.3f} cores")
    medians = {}
    for name, runs in got.items():
        totals = [u + s for u, s in runs]
        medians[name] = statistics.median(totals)
        print(
            f"{name}: median {medians[name]:.3f} cores ({min(totals):.3f}-"
            f"{max(totals):.3f}); user {statistics.median(u for u, _ in runs):.3f}, "
            f"system {statistics.median(s for _, s in runs):.3f}; {args.calls} calls"
        )
    if "floor" in got:
        # Each round's ratio against the floor's run of the same round.
        for name, runs in got.items():
            if name != "floor":
                ratios = [
                    (u + s) / (fu + fs) for (u, s), (fu, fs) in zip(runs, got["floor"], strict=True)
                ]
                print(
                    f"{name} against the floor: median {statistics.median(ratios):.2f}x "
                    f"({min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} rounds)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
