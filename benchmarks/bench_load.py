"""How many calls `audiosocket load` generates on this machine, how precisely, and flat memory.

Starts a trivial echo server (one selector loop in its own process, no
decoding: it skips each connection's first 19 bytes, the UUID message, and
writes back every byte that follows, at once or `--delay` ms later), then runs
`python -m audiosocket_cli load` against it as a subprocess, and reads the
tool's own --json figures.

Prints, per run: calls up / ended normally / failed, our send lateness
p50/p99/max (target p99 < 5 ms: the generator is not the bottleneck), messages
sent and echoed and the difference (lost; a call closes with its last frames
still in flight, about round trip / 20 ms of them per call), and the echo
round trip p50/p99 (target 50 ms +- 2 ms against --delay 50).

    python benchmarks/bench_load.py                         # 1000 calls, 10 s, both runs
    python benchmarks/bench_load.py --calls 500 --duration 5
    python benchmarks/bench_load.py --soak 120              # 500 calls, RSS every 5 s

Traffic goes to 127.0.0.1 only. Exits non-zero only when a run could not be made.
"""

from __future__ import annotations

import argparse
import heapq
import json
import multiprocessing
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UUID_MESSAGE = 19  # kind, length, 16 bytes


def echo_server(port_out: Any, delay: float) -> None:
    """Echo every byte after each connection's first 19, `delay` seconds later."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    server.setblocking(False)
    port_out.send(server.getsockname()[1])
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ, None)
    skip: dict[socket.socket, int] = {}
    queue: list[tuple[float, int, socket.socket, bytes]] = []
    seq = 0
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        for key, _ in selector.select(timeout):
            if key.data is None:
                try:
                    sock, _ = server.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                skip[sock] = UUID_MESSAGE
                selector.register(sock, selectors.EVENT_READ, sock)
                continue
            sock = key.data
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                skip.pop(sock, None)
                sock.close()
                continue
            left = skip[sock]
            if left:
                skip[sock] = max(0, left - len(data))
                data = data[left:]
                if not data:
                    continue
            if delay:
                seq += 1
                heapq.heappush(queue, (time.monotonic() + delay, seq, sock, data))
            else:
                try:
                    sock.send(data)
                except OSError:
                    pass
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, sock, data = heapq.heappop(queue)
            if sock.fileno() >= 0:
                try:
                    sock.send(data)
                except OSError:
                    pass


def start_server(delay: float) -> tuple[multiprocessing.Process, int]:
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.Process(target=echo_server, args=(theirs, delay), daemon=True)
    process.start()
    return process, ours.recv()


def load_command(port: int, args: argparse.Namespace, calls: int, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "audiosocket_cli",
        "load",
        f"127.0.0.1:{port}",
        "--calls",
        str(calls),
        "--rate",
        str(args.rate),
        "--json",
        *(["--workers", str(args.workers)] if args.workers else []),
        *extra,
    ]


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    return out


def run(args: argparse.Namespace, delay: float) -> dict[str, Any]:
    server, port = start_server(delay)
    try:
        extra = ["--total", str(args.calls), "--duration", str(args.duration)]
        started = time.monotonic()
        done = subprocess.run(
            load_command(port, args, args.calls, extra),
            capture_output=True,
            text=True,
            env=env(),
            timeout=args.duration + 120,
        )
        wall = time.monotonic() - started
    finally:
        server.kill()
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if not rows:
        sys.exit(f"load gave no figures (exit {done.returncode}): {done.stderr[-2000:]}")
    last = rows[-1]
    worst_p99 = max((r["send_late_p99_ms"] or 0.0) for r in rows)
    uuids = last["total_up"]
    lost = last["total_msgs_out"] - uuids - last["total_msgs_in"]
    return {
        "delay_ms": delay * 1000,
        "exit": done.returncode,
        "wall_s": round(wall, 1),
        "up": last["total_up"],
        "ended": last["total_ended"],
        "failed": last["total_failed_by"],
        "violations": last["total_violations"],
        "send_late_p99_ms_run": last["total_send_late_p99_ms"],
        "send_late_p99_ms_worst_period": worst_p99,
        "send_late_max_ms": last["total_send_late_max_ms"],
        "msgs_out": last["total_msgs_out"],
        "msgs_in": last["total_msgs_in"],
        "not_echoed": lost,
        "not_echoed_per_call": round(lost / max(1, uuids), 2),
        "echo_p50_ms": last["total_echo_p50_ms"],
        "echo_p99_ms": last["total_echo_p99_ms"],
        "stderr": done.stderr.strip()[-500:],
    }


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its children, in kB (from /proc)."""
    total = 0
    pids = {pid}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    pids.add(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def soak(args: argparse.Namespace) -> None:
    server, port = start_server(0.0)
    calls = args.soak_calls
    extra = ["--duration", "20"]  # calls end and new ones start all the while
    process = subprocess.Popen(
        load_command(port, args, calls, extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.soak:
            time.sleep(5)
            samples.append((time.monotonic() - started, tree_rss(process.pid)))
            print(f"  t={samples[-1][0]:5.0f}s  rss={samples[-1][1] / 1024:7.1f} MB", flush=True)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        server.kill()
        if process.poll() is None:
            process.kill()
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    last = rows[-1] if rows else {}
    warm = [rss for t, rss in samples if t >= 30] or [rss for _, rss in samples]
    print(
        f"soak: {calls} calls at once for {args.soak:g} s, {last.get('total_started')} calls "
        f"started, {last.get('total_failed')} failed; RSS after the ramp "
        f"{warm[0] / 1024:.1f} MB -> end {warm[-1] / 1024:.1f} MB "
        f"({(warm[-1] - warm[0]) / 1024:+.1f} MB), exit {process.returncode}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0, help="new calls per second")
    parser.add_argument("--workers", type=int, default=0, help="default: load's own (per core)")
    parser.add_argument("--delay-only", action="store_true", help="only the 50 ms echo run")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--soak-calls", type=int, default=500)
    args = parser.parse_args()
    if args.soak:
        soak(args)
        return
    print(f"{args.calls} calls of 8 kHz for {args.duration:g} s, {os.cpu_count()} cores")
    delays = [0.050] if args.delay_only else [0.0, 0.050]
    for delay in delays:
        result = run(args, delay)
        for key, value in result.items():
            print(f"  {key:32} {value}")
        if delay:
            echo = result["echo_p50_ms"]
            print(f"  echo p50 / 50 ms: {echo / 50:.3f}" if echo else "  no echo measured")
        late = result["send_late_p99_ms_run"] or 0.0
        print(f"  send lateness p99 / 5 ms target: {late / 5:.2f}")


if __name__ == "__main__":
    main()
