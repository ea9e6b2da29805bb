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

    python benchmarks/bench_proxy_latency.py                  # 1 and 200 calls, 5 s each
    python benchmarks/bench_proxy_latency.py --calls 1,50,200 --seconds 10
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import multiprocessing.connection
import selectors
import socket
import struct
import sys
import time
import uuid
from array import array
from dataclasses import dataclass, field

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


def application(pipe: multiprocessing.connection.Connection, skip: int) -> None:
    """Accept calls; time each message's arrival; send it straight back, stamped anew."""
    from audiosocket_cli.protocol.wire import Decoder

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
    pipe: multiprocessing.connection.Connection, port: int, calls: int, seconds: float, skip: int
) -> None:
    """Connect the calls, then send every call's messages on time and time the replies."""
    from audiosocket_cli.protocol.wire import Decoder, Message

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


def run(calls: int, seconds: float, through_proxy: bool) -> dict:
    """One measurement: latencies each way, lateness of the caller, proxy CPU."""
    ctx = multiprocessing.get_context("fork")
    skip = round(WARMUP / FRAME)
    app_pipe, app_end = ctx.Pipe()
    call_pipe, call_end = ctx.Pipe()
    app = ctx.Process(target=application, args=(app_end, skip), daemon=True)
    proxy = None
    processes = [app]
    try:
        app.start()
        if not app_pipe.poll(TIMEOUT):
            raise RuntimeError("the application did not start")
        port = app_pipe.recv()
        if through_proxy:
            quiet = [] if FULL_OUTPUT.file is not None else ["-q"]
            proxy = _client.ServerProcess(
                _client.cli_command(
                    "capture",
                    *quiet,
                    "--upstream",
                    f"127.0.0.1:{port}",
                    "--max-concurrent",
                    str(calls + 10),
                    "127.0.0.1:0",
                ),
                stdout=FULL_OUTPUT.file,
            )
            port = proxy.port
        dialer = ctx.Process(
            target=caller, args=(call_end, port, calls, seconds, skip), daemon=True
        )
        processes.append(dialer)
        dialer.start()
        if not call_pipe.poll(TIMEOUT) or call_pipe.recv() != "ready":
            raise RuntimeError("the caller did not connect")
        time.sleep(0.3)  # every call's UUID through, before the clock starts
        cpu_before = proxy.cpu_seconds() if proxy else (0.0, 0.0)
        call_pipe.send(time.monotonic() + 0.2)
        if not call_pipe.poll(seconds + DRAIN + TIMEOUT):
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
            "proxy_notes": proxy.notable[:5] if proxy else [],
        }
    finally:
        if proxy is not None:
            proxy.stop()
        for process in processes:
            process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)


def _ms(value: float) -> str:
    return f"{value * 1000:6.3f}"


def measure(calls: int, seconds: float, through_proxy: bool) -> tuple[float, float, float]:
    """One run, printed; (median, p99, max) of both directions together."""
    label = "capture" if through_proxy else "direct"
    result = run(calls, seconds, through_proxy)
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
    if through_proxy:
        cpu = result["proxy_cpu"]
        extra += f"; capture CPU {cpu:.2f} s = {100 * cpu / seconds:.0f}% of one core"
    print(f"        {extra}")
    for note in result["proxy_notes"]:
        print(f"        capture said: {note}")
    return figures


class FULL_OUTPUT:  # noqa: N801 - a setting of this run
    """--output file: capture writes every line, in plain form, to a file."""

    file: object = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", default="1,200", help="call counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each call")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="direct/capture pairs per call count; the median round is the result "
        "(other work on the machine makes single runs noisy)",
    )
    parser.add_argument(
        "--output",
        choices=["quiet", "file"],
        default="quiet",
        help="capture with -q (quiet, the default) or every line in plain form to a file",
    )
    args = parser.parse_args()
    if args.output == "file":
        import tempfile

        FULL_OUTPUT.file = tempfile.TemporaryFile(mode="w")  # noqa: SIM115 - for the run
    counts = [int(c) for c in args.calls.split(",")]
    print(f"load before: {_client.loadavg()} (/proc/loadavg); 8 kHz, 20 ms, {args.seconds:g} s")
    summary = []
    for calls in counts:
        added = []
        for _ in range(args.rounds):
            try:
                direct = measure(calls, args.seconds, through_proxy=False)
                proxied = measure(calls, args.seconds, through_proxy=True)
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
        ok = median_added[0] < 0.001 and median_added[1] < 0.005
        summary.append((calls, median_added, ok))
    print(f"load after: {_client.loadavg()}")
    print(f"added by capture (median of {args.rounds} round(s)); target <1 ms median, <5 ms p99:")
    for calls, (p50, p99), ok in summary:
        print(f"  {calls:4d} calls: median {_ms(p50)} ms  p99 {_ms(p99)} ms  {_client.met(ok)}")
    all_met = all(ok for _, _, ok in summary)
    print(f"target {'met' if all_met else 'NOT met'} for every call count")
    return 0


if __name__ == "__main__":
    sys.exit(main())
