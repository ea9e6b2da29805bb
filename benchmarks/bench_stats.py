"""The per-message cost of counting a call, and of many frames' levels at once.

`DirectionStats.add()` runs for every message of every call, so its cost is
measured here against a floor measured in the same run: a bare method doing
the attribute increments any counter must do (messages, bytes, audio count and
seconds, the last arrival). The stream is 1,000,000 well-formed 320-byte audio
messages (20 ms at 8 kHz) arriving every 20 ms with up to 1 ms of jitter, the
steady state of every call; the encoding analysis runs as in a server (one
frame in five, at most 60 frames), so after the first few seconds of audio it
costs nothing.

The second figure is the level of a frame: `levels_dbfs` over a batch against
`level_dbfs` one frame at a time.

    python benchmarks/bench_stats.py [--messages N] [--repeat R] [--stats-module FILE]

`--stats-module` loads another implementation of analysis/stats.py (for
example the previous one, copied aside) to compare before and after. It prints
figures and asserts nothing; the best of R runs is reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audiosocket_cli.analysis import levels  # noqa: E402
from audiosocket_cli.protocol.wire import Kind, Message  # noqa: E402

HELLO = ROOT / "samples" / "hello-8k.wav"


class Floor:
    """What any per-direction counter must do per message, and nothing else."""

    def __init__(self) -> None:
        self.messages = 0
        self.wire_bytes = 0
        self.audio_messages = 0
        self.audio_seconds = 0.0
        self.last_audio = 0.0

    def add(self, t: float, message: Message) -> None:
        kind, payload = message
        self.messages += 1
        self.wire_bytes += 3 + len(payload)
        self.audio_messages += 1
        self.audio_seconds += 0.02
        self.last_audio = t


def load_stats(path: str | None) -> ModuleType:
    if path is None:
        from audiosocket_cli.analysis import stats

        return stats
    spec = importlib.util.spec_from_file_location("bench_stats_module", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def stream(count: int) -> tuple[list[float], list[Message]]:
    """Arrival times (20 ms apart, +-0.5 ms jitter) and a pool of real speech frames."""
    with wave.open(str(HELLO)) as w:
        pcm = w.readframes(w.getnframes())
    pool = [Message(Kind.AUDIO_8K, pcm[i : i + 320]) for i in range(0, len(pcm) - 320, 320)]
    rnd = random.Random(1)
    times = [i * 0.020 + (rnd.random() - 0.5) * 0.001 for i in range(count)]
    return times, pool


def per_message(make: Callable[[], Any], times: list[float], pool: list[Message]) -> float:
    """Seconds per add() over the whole stream."""
    counter = make()
    add = counter.add
    n = len(pool)
    messages = [pool[i % n] for i in range(len(times))]
    pairs = list(zip(times, messages, strict=True))
    start = time.perf_counter()
    for t, message in pairs:
        add(t, message)
    return (time.perf_counter() - start) / len(times)


def level_figures(frames: int, repeat: int) -> tuple[float, float | None]:
    """Seconds per frame: level_dbfs one at a time, levels_dbfs over the batch."""
    rnd = random.Random(2)
    with wave.open(str(HELLO)) as w:
        pcm = w.readframes(w.getnframes())
    payloads = []
    for i in range(frames):
        at = rnd.randrange(0, len(pcm) - 640) & ~1
        payloads.append(pcm[at : at + (640 if i % 10 == 0 else 320)])
    one = batch = float("inf")
    many = getattr(levels, "levels_dbfs", None)
    for _ in range(repeat):
        start = time.perf_counter()
        expected = [levels.level_dbfs(p) for p in payloads]
        one = min(one, (time.perf_counter() - start) / frames)
        if many is not None:
            start = time.perf_counter()
            got = many(payloads)
            batch = min(batch, (time.perf_counter() - start) / frames)
            assert got == expected, "levels_dbfs differs from level_dbfs"
    return one, (batch if many is not None else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--frames", type=int, default=20_000, help="frames for the levels figure")
    parser.add_argument("--stats-module", help="another analysis/stats.py to measure")
    args = parser.parse_args()

    stats = load_stats(args.stats_module)
    times, pool = stream(args.messages)
    floor = add = float("inf")
    for _ in range(args.repeat):
        floor = min(floor, per_message(Floor, times, pool))
        add = min(add, per_message(stats.DirectionStats, times, pool))
    print(f"python {sys.version.split()[0]}, {args.messages} messages, best of {args.repeat}")
    print(f"stats module: {args.stats_module or stats.__file__}")
    print(f"floor (bare increments) {floor * 1e9:8.0f} ns/msg")
    print(f"DirectionStats.add()    {add * 1e9:8.0f} ns/msg  ({add / floor:.2f}x the floor)")
    print(f"  above the floor       {(add - floor) * 1e9:8.0f} ns/msg")

    one, batch = level_figures(args.frames, args.repeat)
    print(f"level_dbfs, one frame   {one * 1e9:8.0f} ns/frame")
    if batch is None:
        print("levels_dbfs             n/a (not in this version)")
    else:
        print(f"levels_dbfs, batch      {batch * 1e9:8.0f} ns/frame  ({one / batch:.1f}x faster)")


if __name__ == "__main__":
    main()
