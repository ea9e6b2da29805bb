"""The latency `audiosocket capture` adds per message, with 1 and 200 calls at once.

A caller (one selector loop in its own process) and an application (likewise)
exchange 8 kHz calls: the caller sends the UUID, then one 320-byte audio
message every 20 ms per call on a drift-free clock, call starts staggered
over the first 20 ms; the application sends each message straight back. Every
message carries its call, its index and the monotonic time it was sent
(CLOCK_MONOTONIC is one clock for every process on the machine), so each
receiver knows how long each message took: caller -> application (`>`) and
application -> caller (`<`), one way each.

Each call count runs twice: direct, then with `audiosocket capture -q`
(a subprocess) between the two. The first 0.5 s of each call is not counted
(connections settling). Prints both distributions (median, p99, max) and the
difference; the target (issue 5) is under 1 ms median and under 5 ms p99
added. Loopback only; every process is ended in `finally`. Exits non-zero only
when the benchmark could not run.

`--floor` runs a trivial selector proxy (`_client.py proxy-server`: every byte
on to the other side with recv and sendall, no decoding, no output: the
syscalls alone) and then capture with every line in plain form to a file, at
the same N and placed alike, and prints capture's CPU over the send window as
a ratio of the trivial proxy's, with both latencies. The pair runs three times
(`--repeat`), alternating, and the figure is the median ratio: a shared
machine moves single runs by tens of percent. The ratio has no target: it is
informational (the guide's aim is that capture costs little more than a
trivial proxy).

Placement matters as much as the code (see bench_listen_echo.py), so
`--placement` pins both proxies alike, and the caller and the application
with them: `shared` (caller, application and proxy all on CPU 0: the proxy's
own cost, with no cross-core wake-ups; but the three share that core, and a
saturated core makes messages wait and arrive in batches, cheaper per message
for any proxy, so the `CPU 0 busy` and `caller sends late` figures say whether
the ratio is a fair one), `split` (caller and application on CPU 0, the proxy
on CPU 1, a core of its own, as beside Asterisk and an application: every
message wakes it across cores, in both runs alike), or `free` (the OS decides;
a ratio then says as much about the scheduler as about the proxy). `--floor`
runs shared and split by default; without it the placement is free, as before.

    python benchmarks/bench_proxy_latency.py                  # 1 and 200 calls, 5 s each
    python benchmarks/bench_proxy_latency.py --calls 1,50,200 --seconds 10
    python benchmarks/bench_proxy_latency.py --floor --calls 400 --seconds 5
    python benchmarks/bench_proxy_latency.py --calls 400 --output file --record --trace --rounds 5

`--record` has capture also record each call (`--record DIR`, both directions),
`--trace` keep a trace of every message (`--trace FILE`), in a folder of the run's
own (removed when the benchmark ends): what recording and tracing add to the
latency, and that nothing is lost.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import multiprocessing.connection
import os
import selectors
import socket
import struct
import sys
import time
import uuid
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _client

FRAME = 0.020
PAYLOAD = 320
AUDIO_HEADER = bytes([0x10, 0x01, 0x40])  # kind 0x10, 320 bytes
STAMP = struct.Struct("<IId")  # call index, message index, monotonic send time
# The rest of each payload: a 400 Hz tone, so that the proxy's encoding check
# sees slin that looks like slin (random bytes look like mu-law to it).
TONE = b"".join(
    struct.pack("<h", round(8000 * math.sin(2 * math.pi * 400 * n / 8000)))
    for n in range(PAYLOAD // 2)
)
PADDING = TONE[STAMP.size :]
WARMUP = 0.5  # seconds of each call not counted
DRAIN = 1.0  # after the last send, how long the last messages may take
TIMEOUT = 30.0


@dataclass
class Latencies:
    """One receiver's one-way latencies (seconds) and counts."""

    samples: array = field(default_factory=lambda: array("d"))
    received: int = 0
    corrupted: int = 0
    error: str = ""


def _stamped(index: int, seq: int) -> bytes:
    return AUDIO_HEADER + STAMP.pack(index, seq, time.monotonic()) + PADDING


def _take(data: bytes, decoder: object, result: Latencies, arrived: float, skip: int) -> list:
    """Messages of `data`; their latencies counted. Returns (index, seq) of each audio message."""
    decoder.feed(data)  # type: ignore[attr-defined]
    seen = []
    for kind, payload in decoder.messages():  # type: ignore[attr-defined]
        if kind != 0x10:
            continue
        if len(payload) != PAYLOAD or payload[STAMP.size :] != PADDING:
            result.corrupted += 1
            continue
        index, seq, stamp = STAMP.unpack_from(payload)
        result.received += 1
        if seq >= skip:
            result.samples.append(arrived - stamp)
        seen.append((index, seq))
    return seen


def application(
    pipe: multiprocessing.connection.Connection, skip: int, cpus: set[int] | None = None
) -> None:
    """Accept calls; time each message's arrival; send it straight back, stamped anew."""
    from audiosocket_cli.protocol.wire import Decoder

    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    result = Latencies()
    server = socket.create_server(("127.0.0.1", 0), backlog=4096)
    server.setblocking(False)
    pipe.send(server.getsockname()[1])
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ, "accept")
    selector.register(pipe, selectors.EVENT_READ, "stop")
    decoders: dict[socket.socket, Decoder] = {}
    try:
        running = True
        while running:
            for key, _ in selector.select():
                if key.data == "stop":
                    pipe.recv()
                    running = False
                    break
                if key.data == "accept":
                    try:
                        sock, _ = server.accept()
                    except BlockingIOError:
                        continue
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.setblocking(False)
                    decoders[sock] = Decoder()
                    selector.register(sock, selectors.EVENT_READ, "call")
                    continue
                sock = key.fileobj
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                arrived = time.monotonic()
                if not data:
                    selector.unregister(sock)
                    sock.close()
                    continue
                for index, seq in _take(data, decoders[sock], result, arrived, skip):
                    try:
                        _send(sock, _stamped(index, seq))
                    except OSError:
                        pass  # the caller has gone; its EOF follows
    except Exception as exc:
        result.error = f"application: {type(exc).__name__}: {exc}"
    pipe.send(result)


def caller(
    pipe: multiprocessing.connection.Connection,
    port: int,
    calls: int,
    seconds: float,
    skip: int,
    cpus: set[int] | None = None,
) -> None:
    """Connect the calls, then send every call's messages on time and time the replies."""
    from audiosocket_cli.protocol.wire import Decoder, Message

    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    result = Latencies()
    lateness = array("d")
    socks: list[socket.socket] = []
    try:
        for _ in range(calls):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(Message.for_uuid(uuid.uuid4()).encode())
            sock.setblocking(False)
            socks.append(sock)
        pipe.send("ready")
        start = pipe.recv()
        selector = selectors.DefaultSelector()
        decoders = {}
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
            decoders[sock.fileno()] = Decoder()
        messages = round(seconds / FRAME)
        offsets = [i * FRAME / calls for i in range(calls)]
        k = i = 0
        end = None
        while True:
            now = time.monotonic()
            while k < messages:
                due = start + offsets[i] + k * FRAME
                if due > now:
                    now = time.monotonic()
                    if due > now:
                        break
                _send(socks[i], _stamped(i, k))
                lateness.append(time.monotonic() - due)
                i += 1
                if i == calls:
                    i, k = 0, k + 1
            if k >= messages:
                end = end or time.monotonic() + DRAIN
                timeout = end - time.monotonic()
                if timeout <= 0 or result.received >= calls * messages:
                    break
            else:
                timeout = max(0.0, start + offsets[i] + k * FRAME - time.monotonic())
            for key, _ in selector.select(timeout):
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                arrived = time.monotonic()
                if data:
                    _take(data, decoders[key.fd], result, arrived, skip)
                else:
                    selector.unregister(key.fileobj)
    except Exception as exc:
        result.error = f"caller: {type(exc).__name__}: {exc}"
        try:
            pipe.send("ready")
        except OSError:
            pass
    finally:
        for sock in socks:
            sock.close()  # as Asterisk ends a call
    pipe.send((result, lateness))


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):  # paced traffic: a full buffer is rare
        sock.setblocking(True)
        sock.sendall(data[sent:])
        sock.setblocking(False)


def _percentiles(samples: array) -> tuple[float, float, float]:
    ordered = sorted(samples)
    if not ordered:
        return (math.nan,) * 3

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return at(0.50), at(0.99), ordered[-1]


def where(placement: str) -> str:
    return _client.describe_placement(placement, "caller and application", "proxy")


def proxy_argv(
    kind: str,
    upstream: int,
    calls: int,
    output: Any,
    folder: str | None = None,
    keep: tuple[str, ...] = (),
) -> list[str]:
    """capture (-q, or every line when `output` takes its stdout; with "record" in `keep`
    each call recorded, with "trace" every message traced, into `folder`), or the
    trivial proxy."""
    if kind == "trivial":
        return [
            sys.executable,
            str(Path(_client.__file__)),
            "proxy-server",
            "127.0.0.1:0",
            f"127.0.0.1:{upstream}",
        ]
    quiet = [] if output is not None else ["-q"]
    kept = []
    if folder and "record" in keep:
        kept += ["--record", folder]
    if folder and "trace" in keep:
        kept += ["--trace", str(Path(folder) / "calls.trace")]
    return _client.cli_command(
        "capture",
        *quiet,
        *kept,
        *CAPTURE_WORKERS,
        "--upstream",
        f"127.0.0.1:{upstream}",
        "--max-concurrent",
        str(calls + 10),
        "127.0.0.1:0",
    )


def run(
    calls: int,
    seconds: float,
    proxy_kind: str | None,
    placement: str = "free",
    output: Any = None,
    keep: tuple[str, ...] = (),
) -> dict:
    """One measurement: latencies each way, lateness of the caller, proxy CPU.

    `proxy_kind`: None (the caller straight to the application), "capture" or
    "trivial"; `output`: capture's stdout (every line), or None for -q; `keep`:
    "record" and/or "trace", what capture also keeps, in a folder of the run's own."""
    ends_cpus, proxy_cpus = _client.placement_cpus(placement)
    folder = _client.scratch_folder("capture-") if keep and proxy_kind == "capture" else None
    ctx = multiprocessing.get_context("fork")
    skip = round(WARMUP / FRAME)
    app_pipe, app_end = ctx.Pipe()
    call_pipe, call_end = ctx.Pipe()
    app = ctx.Process(target=application, args=(app_end, skip, ends_cpus), daemon=True)
    proxy = None
    processes = [app]
    try:
        app.start()
        if not app_pipe.poll(TIMEOUT):
            raise RuntimeError("the application did not start")
        port = app_pipe.recv()
        if proxy_kind is not None:
            proxy = _client.ServerProcess(
                proxy_argv(proxy_kind, port, calls, output, folder, keep),
                stdout=output,
                cpus=proxy_cpus,
            )
            port = proxy.port
        dialer = ctx.Process(
            target=caller, args=(call_end, port, calls, seconds, skip, ends_cpus), daemon=True
        )
        processes.append(dialer)
        dialer.start()
        if not call_pipe.poll(TIMEOUT) or call_pipe.recv() != "ready":
            raise RuntimeError("the caller did not connect")
        time.sleep(0.3)  # every call's UUID through, before the clock starts
        cpu_before = proxy.cpu_seconds() if proxy else (0.0, 0.0)
        start = time.monotonic() + 0.2
        call_pipe.send(start)
        # The send window too, from the first message due to the end of the last
        # frame: the proxy's CPU and the two ends', without the calls' set-up and ends.
        # (Per process, not /proc/stat per core: that samples busy time on timer ticks,
        # and misses most of a core that keeps waking briefly from idle.)
        time.sleep(max(0.0, start - time.monotonic()))
        window_before = proxy.cpu_seconds() if proxy else (0.0, 0.0)
        ends_before = _ends_cpu(app, dialer)
        time.sleep(max(0.0, start + round(seconds / FRAME) * FRAME - time.monotonic()))
        window_after = proxy.cpu_seconds() if proxy else (0.0, 0.0)
        ends_after = _ends_cpu(app, dialer)
        if not call_pipe.poll(DRAIN + TIMEOUT):
            raise RuntimeError("the caller did not finish")
        back, lateness = call_pipe.recv()
        cpu_after = proxy.cpu_seconds() if proxy else (0.0, 0.0)
        app_pipe.send("stop")
        if not app_pipe.poll(TIMEOUT):
            raise RuntimeError("the application did not report")
        forth = app_pipe.recv()
        for result in (forth, back):
            if result.error:
                raise RuntimeError(result.error)
        return {
            "forth": forth,
            "back": back,
            "lateness": lateness,
            "sent": calls * round(seconds / FRAME),
            "proxy_cpu": sum(cpu_after) - sum(cpu_before),
            "window_cpu": sum(window_after) - sum(window_before),
            "ends_cpu": ends_after - ends_before,
            "proxy_notes": proxy.notable[:5] if proxy else [],
            "folder": folder,
        }
    finally:
        if proxy is not None:
            proxy.stop()
        if folder is not None:
            written = sum(f.stat().st_size for f in Path(folder).iterdir())
            print(f"        capture wrote {written / 1e6:.1f} MB ({' and '.join(keep)})")
        for process in processes:
            process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)


def _ends_cpu(*processes: Any) -> float:
    """CPU seconds (user + sys) of the caller and the application so far."""
    return sum(sum(_client.process_cpu(process.pid)) for process in processes)


def _ms(value: float) -> str:
    return f"{value * 1000:6.3f}"


def measure(
    calls: int,
    seconds: float,
    proxy_kind: str | None,
    placement: str = "free",
    output: Any = None,
    window: bool = False,
    keep: tuple[str, ...] = (),
) -> dict:
    """One run, printed; its figures: "latency" (median, p99, max) of both directions
    together, "cpu" (the proxy's), "lost". `window`: the proxy's CPU over the send
    window only (as --floor compares), rather than from set-up to the caller's end."""
    label = proxy_kind or "direct"
    result = run(calls, seconds, proxy_kind, placement, output, keep)
    both = result["forth"].samples + result["back"].samples
    figures = _percentiles(both)
    lost = 2 * result["sent"] - result["forth"].received - result["back"].received
    corrupted = result["forth"].corrupted + result["back"].corrupted
    print(
        f"{calls:4d} calls {label:8s} median {_ms(figures[0])} ms  p99 {_ms(figures[1])} ms  "
        f"max {_ms(figures[2])} ms  ({len(both)} messages, lost {lost}, corrupted {corrupted})"
    )
    for name, one in (("> caller->app", result["forth"]), ("< app->caller", result["back"])):
        p50, p99, worst = _percentiles(one.samples)
        print(f"        {name}  median {_ms(p50)} ms  p99 {_ms(p99)} ms  max {_ms(worst)} ms")
    late = _percentiles(result["lateness"])
    extra = f"caller sends late by p99 {_ms(late[1])} ms, max {_ms(late[2])} ms"
    cpu = result["window_cpu"] if window else result["proxy_cpu"]
    if proxy_kind is not None:
        over = " in the send window" if window else ""
        extra += f"; {label} CPU {cpu:.2f} s{over} = {100 * cpu / seconds:.0f}% of one core"
    print(f"        {extra}")
    if window or placement != "free":
        ends = result["ends_cpu"]
        load = f"caller and application CPU {ends:.2f} s in the send window"
        ends_cpus, proxy_cpus = _client.placement_cpus(placement)
        if ends_cpus is not None:
            where = ",".join(map(str, sorted(ends_cpus)))
            if proxy_kind is not None and ends_cpus == proxy_cpus:
                ends += result["window_cpu"]
                load += f"; CPU {where} busy {100 * ends / seconds:.0f}% with the proxy"
            else:
                load += f" = CPU {where} busy {100 * ends / seconds:.0f}%"
        print(f"        {load}")
    for note in result["proxy_notes"]:
        print(f"        {label} said: {note}")
    return {"latency": figures, "cpu": cpu, "lost": lost + corrupted}


class FULL_OUTPUT:  # noqa: N801 - a setting of this run
    """--output file: capture writes every line, in plain form, to a file."""

    file: object = None


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def floor_run(args: argparse.Namespace) -> int:
    """The trivial proxy, then capture with its full plain output to a file, at the
    same N and placed alike: capture's CPU as a ratio of the trivial proxy's, measured
    in this run, for each call count and placement asked for. With --repeat, the pairs
    run that many times, alternating, and the figure is the median ratio (a shared
    machine moves single runs by tens of percent). Informational: no target."""
    import tempfile

    verdicts = []
    for calls in args.counts:
        for placement in args.placements:
            print(f"placement      {where(placement)}")
            print()
            pairs = []
            for round_ in range(1, args.repeat + 1):
                of = f", round {round_} of {args.repeat}" if args.repeat > 1 else ""
                waited = _client.wait_until_quiet(args.wait_quiet)
                if waited:
                    print(f"({waited})")
                print(f"== trivial proxy, {placement}{of}: recv and sendall, nothing else ==")
                floor = measure(calls, args.seconds, "trivial", placement, window=True)
                print()
                print(f"== audiosocket capture, {placement}{of}: every line to a file ==")
                with tempfile.TemporaryFile(mode="w") as out:
                    capture = measure(
                        calls, args.seconds, "capture", placement, out, True, args.keep
                    )
                    out.flush()
                    capture["bytes"] = os.fstat(out.fileno()).st_size
                print()
                ratio = capture["cpu"] / floor["cpu"] if floor["cpu"] else float("inf")
                pairs.append((ratio, floor, capture))
                print(
                    f"pair           {placement}: capture CPU {capture['cpu']:.2f} s ="
                    f" {ratio:.2f}x the trivial proxy's {floor['cpu']:.2f} s"
                )
                print()
            pairs.sort(key=lambda pair: pair[0])
            cpu_ratio, floor, capture = pairs[len(pairs) // 2]
            spread = (
                f" (each: {', '.join(f'{r:.2f}x' for r, _, _ in pairs)})" if len(pairs) > 1 else ""
            )
            capture_p50 = _median([pair[2]["latency"][0] for pair in pairs])
            capture_p99 = _median([pair[2]["latency"][1] for pair in pairs])
            floor_p50 = _median([pair[1]["latency"][0] for pair in pairs])
            floor_p99 = _median([pair[1]["latency"][1] for pair in pairs])
            lost = sum(pair[2]["lost"] for pair in pairs)
            floor_lost = sum(pair[1]["lost"] for pair in pairs)
            written = _median([pair[2]["bytes"] for pair in pairs])
            median = "median " if len(pairs) > 1 else ""
            verdicts.append(
                f"ratio          {placement}: {median}capture CPU {capture['cpu']:.2f} s ="
                f" {cpu_ratio:.2f}x the trivial proxy's {floor['cpu']:.2f} s{spread}"
                f" at {calls} calls (informational, no target); {median}latency through"
                f" capture median {_ms(capture_p50).strip()} ms, p99 {_ms(capture_p99).strip()}"
                f" ms, through the trivial proxy median {_ms(floor_p50).strip()} ms, p99"
                f" {_ms(floor_p99).strip()} ms; lost {lost} (trivial proxy {floor_lost});"
                f" capture wrote {written / 1e6:.1f} MB of plain lines a run"
                + (f" (and kept: {', '.join(args.keep)})" if args.keep else "")
            )
            print(verdicts[-1])
            print()
    print(f"load after: {_client.loadavg()}")
    print("\n".join(verdicts))
    return 0


CAPTURE_WORKERS: list[str] = []  # ["--workers", "N"] with --workers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--calls", default=None, help="call counts, comma-separated (1,200; with --floor 400)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each call")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="direct/capture pairs per call count; the median round is the result "
        "(other work on the machine makes single runs noisy). Not with --floor: see --repeat",
    )
    parser.add_argument(
        "--output",
        choices=["quiet", "file"],
        default="quiet",
        help="capture with -q (quiet, the default) or every line in plain form to a file"
        " (always a file with --floor)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="run a trivial proxy, then capture with full plain output to a file, and print"
        " capture's CPU as a ratio of the trivial proxy's, with both latencies",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="capture also records each call (--record DIR, in a folder of the run's own)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="capture also traces every message (--trace FILE, in a folder of the run's own)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="capture --workers N: N processes on one port (their CPU is counted together)",
    )
    _client.add_placement_arguments(parser, clients="caller and application", server="proxy")
    args = parser.parse_args(argv)
    if args.workers > 1:
        CAPTURE_WORKERS[:] = ["--workers", str(args.workers)]
    args.keep = tuple(k for k in ("record", "trace") if getattr(args, k))
    _client.placement_arguments(parser, args)
    try:
        args.counts = [
            int(c) for c in (args.calls or ("400" if args.floor else "1,200")).split(",")
        ]
    except ValueError:
        parser.error("--calls: call counts, comma-separated")
    if not all(1 <= c <= 10000 for c in args.counts):
        parser.error("--calls: each 1..10000")
    return args


def main() -> int:
    args = parse_args()
    print(f"load before: {_client.loadavg()} (/proc/loadavg); 8 kHz, 20 ms, {args.seconds:g} s")
    if args.nice:
        print(f"nice {args.nice}, every process of the benchmark")
    if args.floor:
        try:
            return floor_run(args)
        except (RuntimeError, OSError) as exc:
            print(f"bench_proxy_latency: could not run: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    if args.output == "file":
        import tempfile

        FULL_OUTPUT.file = tempfile.TemporaryFile(mode="w")  # noqa: SIM115 - for the run
    if args.placement != "free":
        print(f"placement: {where(args.placement)}")
    summary = []
    for calls in args.counts:
        added = []
        lost = 0
        for _ in range(args.rounds):
            waited = _client.wait_until_quiet(args.wait_quiet)
            if waited:
                print(f"({waited})")
            try:
                direct = measure(calls, args.seconds, None, args.placement)["latency"]
                through = measure(
                    calls,
                    args.seconds,
                    "capture",
                    args.placement,
                    FULL_OUTPUT.file,
                    keep=args.keep,
                )
                proxied = through["latency"]
                lost += through["lost"]
            except RuntimeError as exc:
                print(f"{calls} calls: could not run: {exc}", file=sys.stderr)
                return 1
            added.append((proxied[0] - direct[0], proxied[1] - direct[1]))
            print(
                f"{calls:4d} calls added    median {_ms(added[-1][0])} ms  "
                f"p99 {_ms(added[-1][1])} ms"
            )
        median_added = (
            sorted(a[0] for a in added)[len(added) // 2],
            sorted(a[1] for a in added)[len(added) // 2],
        )
        ok = median_added[0] < 0.001 and median_added[1] < 0.005 and lost == 0
        spread = ", ".join(_ms(a[1]).strip() for a in added)
        summary.append((calls, median_added, ok, spread, lost))
    print(f"load after: {_client.loadavg()}")
    print(
        f"added by capture (median of {args.rounds} round(s)); target <1 ms median, <5 ms p99,"
        " nothing lost:"
    )
    for calls, (p50, p99), ok, spread, lost in summary:
        print(
            f"  {calls:4d} calls: median {_ms(p50)} ms  p99 {_ms(p99)} ms (each round: {spread})"
            f"  lost {lost}  {_client.met(ok)}"
        )
    all_met = all(ok for _, _, ok, _, _ in summary)
    print(f"target {'met' if all_met else 'NOT met'} for every call count")
    return 0


if __name__ == "__main__":
    sys.exit(main())
