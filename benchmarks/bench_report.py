"""`audiosocket report` on a one-hour call: seconds taken and page size.

The call is a trace file written here (in a temporary folder): one hour both
ways at 8 kHz, 20 ms frames, 360,000 audio messages in all, with a little
arrival jitter, a few DTMF digits, one 600 ms gap and one burst. For scale,
the same file is also read by a bare loop over `read_records` (the floor:
no report can be faster than reading its input), and the report's time is
given as a ratio to it.

    python benchmarks/bench_report.py [--minutes M] [--keep DIR]

It prints figures and asserts nothing: the targets (under 15 s, a page under
10 MB) are read off the output, not enforced, because shared machines are
noisy. The long audio goes to WAV files beside the page, which are not
counted in its size.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audiosocket_cli.files.trace import read_records  # noqa: E402

UUID = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
RATE = 8000
FRAME = 0.020
TARGET_SECONDS = 15.0
TARGET_BYTES = 10_000_000


def frames(pitch: float, count: int = 50) -> list[str]:
    """Base64 payloads of a tone that swells and fades over `count` frames (one second)."""
    out = []
    n = int(RATE * FRAME)
    for f in range(count):
        amplitude = 8000 * (0.2 + 0.8 * math.sin(math.pi * f / count) ** 2)
        samples = [
            int(amplitude * math.sin(2 * math.pi * pitch * (f * n + i) / RATE)) for i in range(n)
        ]
        pcm = b"".join(s.to_bytes(2, "little", signed=True) for s in samples)
        out.append(base64.b64encode(pcm).decode("ascii"))
    return out


def write_call(path: Path, minutes: float) -> int:
    """A trace file of one call, both directions; returns its count of audio messages."""
    rng = random.Random(7)
    per_dir = int(minutes * 60 / FRAME)
    tones = {">": frames(440.0), "<": frames(660.0)}
    ts0 = 1_764_000_000.0
    audio = 0
    with open(path, "w", encoding="ascii") as f:
        header = {"format": "audiosocket-trace", "version": 1, "tool": "bench", "command": "bench"}
        f.write(json.dumps(header) + "\n")

        def line(t: float, call: str, **fields: object) -> None:
            record = {"t": round(t, 6), "conn": 1, "call": call, **fields, "ts": round(ts0 + t, 6)}
            f.write(json.dumps(record) + "\n")

        line(0.0, "#1", dir="-", event="call-start", text="peer", peer="127.0.0.1:40000")
        uuid_b64 = base64.b64encode(bytes.fromhex(UUID.replace("-", ""))).decode()
        line(0.0004, "#1", dir=">", kind="uuid", type=1, len=16, data=uuid_b64)
        gap_at = per_dir // 3  # the application stalls 600 ms here ...
        burst_at = 2 * per_dir // 3  # ... and sends 10 frames at once here
        for i in range(per_dir):
            t = (i + 1) * FRAME
            for d in (">", "<"):
                jitter = rng.uniform(0, 0.004) if d == ">" else rng.uniform(0, 0.008)
                when = t + jitter
                if d == "<" and gap_at <= i < gap_at + 30:
                    when = (gap_at + 30) * FRAME + 0.001 * (i - gap_at)
                if d == "<" and burst_at <= i < burst_at + 10:
                    when = (burst_at + 10) * FRAME + 0.0001 * (i - burst_at)
                data = tones[d][i % 50]
                line(when, UUID, dir=d, kind="audio", type=16, len=320, rate=RATE, data=data)
                audio += 1
            if i % 30_000 == 15_000:
                line(t + 0.001, UUID, dir=">", kind="dtmf", type=3, len=1, data="NQ==")
        end = (per_dir + 1) * FRAME
        line(end, UUID, dir="<", kind="hangup", type=0, len=0, data="")
        line(end, UUID, dir="-", event="call-end", text="ended=app-hangup", ended="app-hangup")
    return audio


def floor_seconds(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb") as stream:
        for _ in read_records(stream, str(path)):
            pass
    return time.perf_counter() - start


def report_seconds(path: Path, page: Path) -> float:
    """The command as a user runs it, in a fresh interpreter (imports included)."""
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(
        [sys.executable, "-m", "audiosocket_cli", "report", str(path), "-o", str(page)],
        check=True,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument(
        "--keep", type=Path, help="Write the trace and the page here and keep them."
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        trace = folder / "hour.trace"
        page = folder / "hour.html"
        audio = write_call(trace, args.minutes)
        floor = floor_seconds(trace)
        seconds = report_seconds(trace, page)
        size = page.stat().st_size
        wavs = sorted((folder / "hour-audio").glob("*.wav"))
        print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus")
        print(
            f"input: {args.minutes:g} min call, {audio} audio messages, "
            f"trace file {trace.stat().st_size / 1e6:.0f} MB"
        )
        print(f"floor (bare read_records loop): {floor:.2f} s")
        verdict = "ok" if seconds < TARGET_SECONDS else "OVER"
        print(
            f"report: {seconds:.2f} s (target < {TARGET_SECONDS:g} s: {verdict}), "
            f"{seconds / floor:.2f}x the floor"
        )
        verdict = "ok" if size < TARGET_BYTES else "OVER"
        print(f"page: {size / 1e6:.2f} MB (target < {TARGET_BYTES / 1e6:g} MB: {verdict})")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak memory of the report process: {peak:.0f} MB")
        print(f"audio beside it: {', '.join(p.name for p in wavs) or 'none'}")


if __name__ == "__main__":
    main()
