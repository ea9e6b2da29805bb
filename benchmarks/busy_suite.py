"""The test suite, several times in a row, with another process keeping one core busy.

    python benchmarks/busy_suite.py            # 5 runs
    python benchmarks/busy_suite.py --runs 3 -- -x tests/test_listen.py
    python benchmarks/busy_suite.py --keep /tmp/busy   # failed runs' output kept there

CI machines have two cores and are often busy; a test that passes only on a
quiet machine is a flaky test. This is how the suite is shown not to be one:
every run must pass, each within --limit seconds (90 by default). Exit status
0 when they all did, 1 otherwise.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spin(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    """Keep one core busy until told to stop."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--limit", type=float, default=90.0, help="seconds a run may take")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="write each failed run's whole output here"
    )
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args()
    stop = multiprocessing.Event()
    busy = multiprocessing.Process(target=spin, args=(stop,), daemon=True)
    busy.start()
    results = []
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            took = time.monotonic() - started
            tail = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
            ok = proc.returncode == 0 and took <= args.limit
            results.append(ok)
            print(f"run {run}/{args.runs}: {'ok' if ok else 'FAILED'} in {took:.1f} s: {tail}")
            if proc.returncode != 0:
                failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
                print("\n".join(f"    {line}" for line in failed[:20]))
                if args.keep is not None:
                    # The whole output of a failed run: a flaky test's assertion, to read.
                    args.keep.mkdir(parents=True, exist_ok=True)
                    kept = args.keep / f"run{run}.txt"
                    kept.write_text(proc.stdout + proc.stderr)
                    print(f"    output: {kept}")
            sys.stdout.flush()
    finally:
        stop.set()
        busy.join(5)
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
