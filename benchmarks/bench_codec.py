"""Codec throughput: messages per second decoded and encoded, on one core.

The stream is what Asterisk sends in a call: 320-byte audio messages (20 ms
at 8 kHz), fed to the decoder in 64 KiB chunks as a socket's recv() would
return them. For scale, the same stream is also walked by a bare loop over
`struct.unpack_from`, the floor of what a Python decoder can do.

    python benchmarks/bench_codec.py [--messages N] [--repeat R]

It prints figures and asserts nothing: the target (1,000,000 decoded
messages per second) is read off the output, not enforced, because shared
machines are noisy. The best of R runs is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audiosocket_cli.protocol.wire import Decoder, Message, encode  # noqa: E402

CHUNK = 64 * 1024
PAYLOAD = 320
TARGET = 1_000_000


def make_stream(count: int) -> bytes:
    frame = bytes(range(256)) + bytes(range(64))  # 320 bytes, not all zero
    return Message.audio(frame, 8000).encode() * count


def chunks(stream: bytes) -> list[bytes]:
    return [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]


def decode_messages(parts: list[bytes]) -> int:
    """The fast path every command uses: feed a chunk, take a list."""
    decoder = Decoder()
    count = 0
    for part in parts:
        decoder.feed(part)
        count += len(decoder.messages())
    decoder.end_of_stream()
    return count


def decode_next_message(parts: list[bytes]) -> int:
    """The one-at-a-time path (h11 style)."""
    decoder = Decoder()
    count = 0
    for part in parts:
        decoder.feed(part)
        next_message = decoder.next_message
        while next_message() is not None:
            count += 1
    decoder.end_of_stream()
    return count


def bare_unpack(parts: list[bytes]) -> int:
    """No decoder: a struct.unpack_from loop collecting (kind, payload) tuples."""
    unpack_from = struct.Struct(">BH").unpack_from
    buffer = b""
    count = 0
    for part in parts:
        buffer = buffer + part if buffer else part
        pos, end = 0, len(buffer)
        out: list[tuple[int, bytes]] = []
        while end - pos >= 3:
            kind, length = unpack_from(buffer, pos)
            stop = pos + 3 + length
            if stop > end:
                break
            out.append((kind, buffer[pos + 3 : stop]))
            pos = stop
        buffer = buffer[pos:]
        count += len(out)
    return count


def encode_messages(messages: list[Message]) -> int:
    for message in messages:
        encode(message)
    return len(messages)


def best_rate(run: Callable[[], int], repeat: int) -> tuple[float, int]:
    """Messages per second of the fastest of `repeat` runs."""
    best = float("inf")
    count = 0
    for _ in range(repeat):
        start = time.perf_counter()
        count = run()
        best = min(best, time.perf_counter() - start)
    return count / best, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500_000, help="messages in the stream")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (best is shown)")
    args = parser.parse_args()

    stream = make_stream(args.messages)
    parts = chunks(stream)
    messages = [Message.audio(stream[3 : 3 + PAYLOAD], 8000)] * args.messages

    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} cpus (shared machines are noisy: best of {args.repeat} runs)"
    )
    print(
        f"stream: {args.messages:,} audio messages of {PAYLOAD} bytes "
        f"({len(stream) / 1e6:.1f} MB) in {len(parts):,} chunks of {CHUNK // 1024} KiB"
    )
    print()
    rows = [
        ("decode, Decoder.messages()", lambda: decode_messages(parts)),
        ("decode, Decoder.next_message()", lambda: decode_next_message(parts)),
        ("bare struct.unpack_from loop", lambda: bare_unpack(parts)),
        ("encode, encode(message)", lambda: encode_messages(messages)),
    ]
    figures = {}
    for label, run in rows:
        rate, count = best_rate(run, args.repeat)
        if count != args.messages:
            raise SystemExit(f"{label}: counted {count} messages, expected {args.messages}")
        figures[label] = rate
        print(f"{label:<34} {rate / 1e6:6.2f} M msgs/s  ({rate * PAYLOAD / 1e6:7.1f} MB/s payload)")
    decoded = figures["decode, Decoder.messages()"]
    bare = figures["bare struct.unpack_from loop"]
    print()
    verdict = "meets" if decoded >= TARGET else "BELOW"
    print(
        f"decoder: {decoded / 1e6:.2f} M msgs/s, {verdict} the target of {TARGET / 1e6:.0f} M/s; "
        f"{decoded / bare:.2f}x the bare loop"
    )


if __name__ == "__main__":
    main()
