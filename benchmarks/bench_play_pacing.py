"""How evenly `audiosocket listen --play FILE` paces its audio (or `dial --play FILE`).

Makes a WAV of `--seconds` (60) of tone in a temporary directory, starts
`audiosocket listen 127.0.0.1:0 --play THAT.wav -q` as a subprocess, and calls
it once the way Asterisk does: the UUID in one write, then nothing (a channel
producing no audio) or, with `--send silence`, silent 20 ms frames. A thread
doing blocking reads notes the arrival time (time.monotonic right after recv)
of every audio message that comes back.

Prints: messages received (and expected), the drift of the last message from
its ideal time (first arrival plus the audio duration of everything before
it: k x 20 ms for 20 ms frames), the deviation of the inter-arrival gaps from
each message's duration (median, p99, max), the worst distance of any message
from its ideal time, and messages that arrived together in one read.
Targets (issue 3), on an idle machine: drift under 5 ms, p99 gap deviation
under 2 ms.

`--dial` measures `audiosocket dial 127.0.0.1:PORT --play THAT.wav -q`
instead, with this script as the application it calls. `--self-test` runs
against stand-ins in benchmarks/_client.py, to check the measurement itself.
Exits non-zero only when the benchmark could not run, not when a target is
missed. Traffic goes to 127.0.0.1 only.

    python benchmarks/bench_play_pacing.py                 # listen --play, 60 s
    python benchmarks/bench_play_pacing.py --dial          # dial --play, 60 s
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _client

FRAME = 0.020
RATE = 8000  # the dialplan application's rate, and what listen replies with first
LINGER = 0.5  # after the expected count, wait this long for anything extra


class Receiver(threading.Thread):
    """Blocking reads on one socket; the arrival time of every audio message."""

    def __init__(self, sock: socket.socket, expected: int | None, deadline: float) -> None:
        """Read until `expected` audio messages (and LINGER more), a close, or `deadline`."""
        super().__init__(daemon=True)
        from audiosocket_cli.protocol.wire import Decoder

        self.sock = sock
        self.decoder = Decoder()
        self.expected = expected
        self.deadline = deadline
        self.times: list[float] = []
        self.durations: list[float] = []
        self.rates: set[int] = set()
        self.other: list[str] = []  # kinds other than audio, in order
        self.reads = 0
        self.together = 0  # messages that arrived in the same read as the one before
        self.ended = ""  # why reading stopped
        self.stop = threading.Event()

    def run(self) -> None:
        from audiosocket_cli.protocol.wire import RemoteProtocolError

        sock, decoder = self.sock, self.decoder
        monotonic = time.monotonic
        sock.settimeout(0.2)  # to notice stop and the deadline
        done_at: float | None = None
        try:
            while not self.stop.is_set():
                now = monotonic()
                if now > self.deadline:
                    self.ended = "time limit"
                    return
                if done_at is not None and now > done_at:
                    self.ended = "expected count received"
                    return
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                arrived = monotonic()
                if not data:
                    decoder.end_of_stream()
                    self.ended = "peer closed"
                    return
                self.reads += 1
                decoder.feed(data)
                first = True
                for message in decoder.messages():
                    if message.rate is None:
                        self.other.append(message.name)
                        continue
                    if not first:
                        self.together += 1
                    first = False
                    self.times.append(arrived)
                    self.durations.append(message.duration)
                    self.rates.add(message.rate)
                if done_at is None and self.expected and len(self.times) >= self.expected:
                    done_at = arrived + LINGER
        except (OSError, RemoteProtocolError) as exc:
            self.ended = f"{type(exc).__name__}: {exc}"


def make_wav(directory: Path, seconds: float, rate: int, hz: float) -> Path:
    import numpy as np
    import soundfile as sf

    t = np.arange(round(seconds * rate)) / rate
    path = directory / f"tone-{hz:g}hz-{rate}.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * hz * t), rate, subtype="PCM_16")
    return path


def send_silence(sock: socket.socket, receiver: Receiver) -> None:
    """Silent 8 kHz frames every 20 ms on a drift-free clock, as a quiet line sends."""
    from audiosocket_cli.net.pacing import Pacer
    from audiosocket_cli.protocol.wire import Message

    frame = Message.audio(bytes(320), RATE).encode()
    pacer = Pacer(FRAME)
    k = 0
    while receiver.is_alive():
        pacer.wait(k)
        try:
            sock.sendall(frame)
        except OSError:
            return
        k += 1


def _busy_since(info: dict[str, Any]) -> None:
    """The machine's CPU use over the run: pacing on a busy machine is not pacing idle."""
    info["busy"] = _client.machine_busy() - info["busy"]
    info["elapsed"] = time.monotonic() - info["start"]


def run_listen(args: argparse.Namespace, wav: Path, expected: int) -> dict[str, Any]:
    from audiosocket_cli.protocol.wire import Message

    if args.self_test:
        argv = [sys.executable, str(Path(_client.__file__)), "play-server", "127.0.0.1:0", str(wav)]
    else:
        argv = _client.cli_command("listen", "127.0.0.1:0", "--play", str(wav), "-q")
    server = _client.ServerProcess(argv)
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        receiver = Receiver(sock, expected, time.monotonic() + args.seconds * 1.2 + 15)
        receiver.start()
        load_before = _client.loadavg()
        busy = _client.machine_busy()
        uuid_sent = time.monotonic()
        sock.sendall(Message.for_uuid("40325ec2-7d4b-4b4f-9d7c-3e2a0c6b1f00").encode())
        if args.send == "silence":
            send_silence(sock, receiver)
        receiver.join()
        sock.close()
        info = {
            "command": " ".join(argv[1:]),
            "receiver": receiver,
            "start": uuid_sent,
            "start_what": "the UUID was sent",
            "load_before": load_before,
            "busy": busy,
            "notes": server.notable,
            "status": None,
        }
        _busy_since(info)
        return info
    finally:
        server.stop()


def run_dial(args: argparse.Namespace, wav: Path, expected: int) -> dict[str, Any]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(20)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        if args.self_test:
            argv = [sys.executable, str(Path(_client.__file__)), "dial-client", address, str(wav)]
        else:
            argv = _client.cli_command("dial", address, "--play", str(wav), "-q")
        load_before = _client.loadavg()
        busy = _client.machine_busy()
        dial = _client.ServerProcess(argv, listens=False)
        try:
            try:
                sock, _ = server.accept()
            except TimeoutError:
                raise RuntimeError(f"{' '.join(argv[1:])} did not connect in 20 s") from None
            connected = time.monotonic()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # dial ends the call itself (file sent, then --linger): read until it closes.
            receiver = Receiver(sock, None, connected + args.seconds * 1.2 + 15)
            receiver.run()  # nothing else to do meanwhile: read in this thread
            sock.close()
            try:
                status = dial.proc.wait(10)
            except Exception:
                status = None
            info = {
                "command": " ".join(argv[1:]),
                "receiver": receiver,
                "start": connected,
                "start_what": "the connection was accepted",
                "load_before": load_before,
                "busy": busy,
                "notes": dial.notable,
                "status": status,
            }
            _busy_since(info)
            return info
        finally:
            dial.stop()
    finally:
        server.close()


def _ms(value: float) -> str:
    return f"{value * 1000:.2f}"


def report(args: argparse.Namespace, info: dict[str, Any], expected: int) -> None:
    import numpy as np

    receiver: Receiver = info["receiver"]
    times = np.array(receiver.times)
    durations = np.array(receiver.durations)
    print(f"command        {info['command']}")
    print(f"file           {args.seconds:g} s tone at {args.file_rate} Hz, replies at 8 kHz")
    print(f"load before    {info['load_before']}   after {_client.loadavg()} (/proc/loadavg)")
    print(
        f"machine CPU    {100 * info['busy'] / info['elapsed']:.0f}% busy of"
        f" {100 * (os.cpu_count() or 1)}% during the run"
    )
    print(f"reading ended  {receiver.ended or 'stopped'}")
    if info["status"] is not None:
        print(f"dial exit      {info['status']}")
    rates = ",".join(str(r) for r in sorted(receiver.rates)) or "-"
    print(
        f"received       {len(times)} audio messages (expected {expected}), rate {rates} Hz,"
        f" {durations.sum():.3f} s of audio"
    )
    if receiver.other:
        print(f"other messages {' '.join(receiver.other[:10])}")
    if len(times) < 2:
        print("too few messages to measure pacing")
        return
    print(f"first audio    {_ms(times[0] - info['start'])} ms after {info['start_what']}")
    ideal = times[0] + np.concatenate(([0.0], np.cumsum(durations[:-1])))
    error = times - ideal
    drift = float(error[-1])
    gaps = np.diff(times)
    deviation = np.abs(gaps - durations[:-1])
    p50, p99 = np.percentile(deviation, [50, 99])
    worst = float(deviation.max())
    over = int((deviation > 0.002).sum())
    print(f"drift          {_ms(drift)} ms (last message vs first arrival + audio before it)")
    print(
        f"gap deviation  median {_ms(p50)} ms, p99 {_ms(p99)} ms, max {_ms(worst)} ms"
        f" (from each message's duration); {over} of {len(gaps)} gaps off by over 2 ms"
    )
    print(
        f"schedule error from {error.min() * 1000:+.2f} to {error.max() * 1000:+.2f} ms"
        f" (any message vs its ideal time)"
    )
    print(f"first gaps     {', '.join(_ms(g) for g in gaps[:6])} ms")
    late = np.argsort(deviation)[::-1][:3]
    print(
        "worst gaps     "
        + ", ".join(f"{_ms(gaps[i])} ms before message {i + 1}" for i in sorted(late))
    )
    print(f"together       {receiver.together} messages arrived in the same read as the one before")
    for line in info["notes"][:5]:
        print(f"command said   {line}")
    drift_ok = abs(drift) < 0.005
    p99_ok = p99 < 0.002
    print(f"target         drift under 5 ms: {_client.met(drift_ok)}")
    print(f"target         p99 gap deviation under 2 ms: {_client.met(p99_ok)}")
    what = "dial --play" if args.dial else "listen --play"
    flags = "".join(
        [
            " --dial" if args.dial else "",
            f" --file-rate {args.file_rate}" if args.file_rate != RATE else "",
            f" --send {args.send}" if args.send != "nothing" else "",
            " --self-test" if args.self_test else "",
        ]
    )
    print(
        f"README row     | {what} pacing, {args.seconds:g} s |"
        f" `python benchmarks/bench_play_pacing.py --seconds {args.seconds:g}{flags}` |"
        f" drift {_ms(drift)} ms, gap deviation p99 {_ms(p99)} ms, max {_ms(worst)} ms |"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the pacing of `audiosocket listen --play FILE`"
        " (or `dial --play FILE` with --dial): drift and gap deviation.",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the file (60)")
    parser.add_argument(
        "--file-rate", type=int, default=8000, help="sample rate of the WAV made (8000)"
    )
    parser.add_argument("--tone", type=float, default=440.0, help="tone frequency, Hz (440)")
    parser.add_argument(
        "--send",
        choices=("nothing", "silence"),
        default="nothing",
        help="what the caller sends after its UUID, for listen (nothing)",
    )
    parser.add_argument(
        "--dial", action="store_true", help="measure `dial --play` instead of `listen --play`"
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="run against a stand-in in benchmarks/_client.py, to check the measurement",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 3600:
        parser.error("--seconds must be 1..3600")
    if not 1000 <= args.file_rate <= 192000:
        parser.error("--file-rate must be 1000..192000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "dial" if args.dial else "listen"
    if not args.self_test and not _client.command_works(_client.cli_command(command, "--help")):
        print(
            f"bench_play_pacing: `audiosocket {command} --help` fails: no {command} command yet"
            " (try --self-test)",
            file=sys.stderr,
        )
        return 1
    expected = math.ceil(round(args.seconds * RATE) / (RATE * FRAME))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pacing-") as tmp:
            wav = make_wav(Path(tmp), args.seconds, args.file_rate, args.tone)
            run = run_dial if args.dial else run_listen
            info = run(args, wav, expected)
        report(args, info, expected)
    except (RuntimeError, OSError) as exc:
        print(f"bench_play_pacing: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
