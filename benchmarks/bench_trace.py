"""How fast `audiosocket trace` reads, as a ratio against a bare decoding loop.

    python benchmarks/bench_trace.py [--messages 200000] [--repeat 3]

A raw dump of 200,000 audio messages (320 bytes, 20 ms at 8 kHz) plus three
DTMF digits is read by: a bare loop (`struct.unpack_from` over the file, 64
KiB reads: the floor), then `trace --kind dtmf`, `trace` (plain lines to a
file), `trace --json` and `trace --summary`, each in a fresh process whose
start-up (imports) is not counted: the clock starts when the command is
invoked. Machines differ 2-4x; the ratio to the floor measured in the same
run is what stays true. Also `Decoder.messages()` against the bare loop.

Targets (issue: fast where users feel it): --kind dtmf within 5x, plain
within 12x, --json within 16x, --summary within 6x; the decoder at least 0.6x
the bare loop.
"""

from __future__ import annotations

import argparse
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"--kind dtmf": 5.0, "plain": 12.0, "--json": 16.0, "--summary": 6.0}
RUNNER = """
import sys, time
from audiosocket_cli.cli import cli
import audiosocket_cli.commands.trace, numpy, rich.console, rich.table  # start-up, not counted
args = sys.argv[1:]
started = time.perf_counter()
try:
    cli.main(args, prog_name="audiosocket", standalone_mode=False)
finally:
    sys.stdout.flush()
    print(f"{time.perf_counter() - started:.6f}", file=sys.stderr)
"""


def make_dump(path: Path, messages: int) -> None:
    audio = bytes([0x10, 0x01, 0x40]) + os.urandom(320)
    uuid = bytes([0x01, 0x00, 0x10]) + os.urandom(16)
    digit = bytes([0x03, 0x00, 0x01])
    third = messages // 3
    with open(path, "wb") as out:
        out.write(uuid)
        for part, d in ((third, b"1"), (third, b"2"), (messages - 2 * third, b"#")):
            out.write(audio * part + digit + d)


def bare_loop(path: Path) -> float:
    """The floor: read the file in 64 KiB chunks and walk its headers."""
    unpack = struct.Struct(">BH").unpack_from
    started = time.perf_counter()
    count = 0
    buffer = b""
    with open(path, "rb") as f:
        while chunk := f.read(65536):
            buffer += chunk
            pos, end = 0, len(buffer)
            while end - pos >= 3:
                _, length = unpack(buffer, pos)
                if pos + 3 + length > end:
                    break
                pos += 3 + length
                count += 1
            buffer = buffer[pos:]
    return time.perf_counter() - started


def decoder_loop(path: Path) -> float:
    from audiosocket_cli.protocol.wire import Decoder

    decoder = Decoder()
    started = time.perf_counter()
    count = 0
    with open(path, "rb") as f:
        while chunk := f.read(65536):
            decoder.feed(chunk)
            count += len(decoder.messages())
    return time.perf_counter() - started


def run_trace(path: Path, flags: list[str], out: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(out, "w") as stdout:
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, "trace", *flags, str(path)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            check=False,
        )
    return float(proc.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best is shown)")
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory() as tmp:
        dump, out = Path(tmp) / "dump.raw", Path(tmp) / "out.txt"
        make_dump(dump, args.messages)
        print(f"input: {args.messages} audio messages + 3 dtmf, {dump.stat().st_size} bytes")
        floor = min(bare_loop(dump) for _ in range(args.repeat))
        print(f"floor (bare struct.unpack_from loop): {floor:.3f} s")
        decoder = min(decoder_loop(dump) for _ in range(args.repeat))
        print(
            f"Decoder.messages(): {decoder:.3f} s, {floor / decoder:.2f}x the floor's speed "
            "(target at least 0.6x)"
        )
        failed = 0
        for name, target in TARGETS.items():
            flags = [] if name == "plain" else name.split()
            took = min(run_trace(dump, flags, out) for _ in range(args.repeat))
            ratio = took / floor
            ok = ratio <= target
            failed += not ok
            print(
                f"trace {name:12} {took:7.3f} s  {ratio:5.1f}x the floor "
                f"(target {target:g}x: {'ok' if ok else 'MISSED'})"
            )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
