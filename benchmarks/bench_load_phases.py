"""Are `audiosocket load`'s frames spread across the 20 ms cycle, as Asterisk sends them?

Asterisk's per-channel timers give each channel its own phase of the 20 ms
cycle, so an application never sees all its calls' frames in the same
millisecond; `load` gives each call its own phase (docs/load.md, "Scale"). This
checks it on the wire, whatever `--rate`: calls started a whole number of
frames apart (a rate that divides 50) would otherwise all send together.

For each `--rates` value it starts bench_load's trivial echo server, captures
`lo` with tcpdump (the packets to the server's port), runs `load` with
`--calls` calls (400) at that rate, each `--seconds` long, reads the capture
with dpkt, and takes, for every packet from the generator to the server that
carries audio (a segment whose payload starts with an audio kind, 0x10 to
0x18), its capture time modulo 20 ms. It prints the share of those sends in each
2 ms slot of the cycle, and load's own send lateness (late sends bunch up
whatever the phases).

Target: no 2 ms slot holds more than 20% of the sends (10% each if perfectly
even), at every rate. Exit status 0 when met, 1 when not, 2 when a run could
not be made; where tcpdump is not installed or may not capture on `lo` (it needs
root or CAP_NET_RAW), it prints a line starting `skipped:` and exits 0.

    python benchmarks/bench_load_phases.py                        # rates 50, 100, 400
    python benchmarks/bench_load_phases.py --rates 25,50 --seconds 3

Traffic goes to 127.0.0.1 only; each run is bounded by --calls and --seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_load  # noqa: E402

CYCLE = 0.020  # s
SLOT = 0.002  # s
SLOTS = round(CYCLE / SLOT)
SHARE_LIMIT = 0.20
AUDIO_KINDS = range(0x10, 0x19)


class Skip(Exception):
    """tcpdump cannot capture here."""


def start_capture(path: Path, port: int) -> subprocess.Popen[bytes]:
    """tcpdump on lo, packets to `port` only, headers and a few payload bytes each; once
    it says it is listening (its filter is on the socket), or Skip."""
    if shutil.which("tcpdump") is None:
        raise Skip("tcpdump is not installed")
    dump = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-n", "-s", "128", "-B", "32768", "-w", str(path),
         f"tcp and dst port {port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    assert dump.stderr is not None
    first = dump.stderr.readline().decode(errors="replace").strip()
    if "listening on" not in first:
        dump.kill()
        rest = dump.communicate(timeout=10)[1].decode(errors="replace").strip()
        raise Skip(f"tcpdump cannot capture on lo: {first} {rest}".strip())
    return dump


def stop_capture(dump: subprocess.Popen[bytes], settle: float = 0.5) -> str:
    """SIGINT, as Ctrl-C, after `settle` s for the last packets to reach the file; its
    closing counts ("... dropped by kernel")."""
    time.sleep(settle)
    dump.send_signal(signal.SIGINT)
    try:
        _, err = dump.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        dump.kill()
        _, err = dump.communicate()
    lines = err.decode(errors="replace").splitlines()
    return "; ".join(line.strip() for line in lines if "dropped" in line)


def audio_times(path: Path, port: int) -> list[tuple[float, int]]:
    """(capture time, audio messages) of each segment to `port` whose payload begins
    with an audio kind: one message, or several when a socket's backlog left together."""
    import dpkt

    times = []
    with path.open("rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        link = reader.datalink()
        for ts, raw in reader:
            try:
                if link == dpkt.pcap.DLT_EN10MB:
                    ip = dpkt.ethernet.Ethernet(raw).data
                elif link == dpkt.pcap.DLT_LINUX_SLL:
                    ip = dpkt.sll.SLL(raw).data
                else:
                    ip = dpkt.ip.IP(raw)
            except (dpkt.UnpackError, ValueError):
                continue
            tcp = getattr(ip, "data", None)
            if not isinstance(tcp, dpkt.tcp.TCP) or tcp.dport != port:
                continue
            # The snapshot is short: the segment's length comes from the IP header.
            header = ip.hl * 4 if isinstance(ip, dpkt.ip.IP) else 40
            size = ip.len - header - tcp.off * 4 if isinstance(ip, dpkt.ip.IP) else ip.plen
            head = bytes(tcp.data[:3])
            if size > 0 and len(head) == 3 and head[0] in AUDIO_KINDS:
                message = 3 + (head[1] << 8 | head[2])
                times.append((float(ts), max(1, size // message)))
    return times


def slot_shares(times: list[tuple[float, int]]) -> list[float]:
    counts = [0] * SLOTS
    for t, messages in times:
        counts[min(SLOTS - 1, int((t % CYCLE) / SLOT))] += messages
    total = max(1, sum(counts))
    return [k / total for k in counts]


def run_rate(args: argparse.Namespace, rate: float, workdir: Path) -> dict[str, Any]:
    server, port = bench_load.start_server(0.0)
    capture = workdir / f"rate-{rate:g}.pcap"
    try:
        dump = start_capture(capture, port)
        try:
            command = [
                sys.executable, "-m", "audiosocket_cli", "load", f"127.0.0.1:{port}",
                "--calls", str(args.calls), "--rate", f"{rate:g}",
                "--duration", f"{args.seconds:g}", "--total", str(args.calls), "--json",
                *(["--workers", str(args.workers)] if args.workers else []),
            ]  # fmt: skip
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=bench_load.env(),
                timeout=args.calls / rate + args.seconds + 60,
            )
        finally:
            drops = stop_capture(dump)
    finally:
        server.kill()
        server.join()
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if not rows:
        raise RuntimeError(f"load gave no figures (exit {done.returncode}): {done.stderr[-500:]}")
    times = audio_times(capture, port)
    capture.unlink()
    last = rows[-1]
    return {
        "shares": slot_shares(times),
        "sends": sum(messages for _, messages in times),
        "frames": last["total_msgs_out"] - last["total_up"],
        "late_p99_ms": last["total_send_late_p99_ms"],
        "drops": drops,
        "up": last["total_up"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rates", default="50,100,400", help="load --rate values, calls/s")
    parser.add_argument("--seconds", type=float, default=4.0, help="each call's length")
    parser.add_argument("--workers", type=int, default=0, help="default: load's own")
    args = parser.parse_args()
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error("--rates: numbers, comma-separated")
    if not rates or min(rates) <= 0:
        parser.error("--rates: positive numbers")
    with tempfile.TemporaryDirectory(prefix="bench-phases-") as tmp:
        try:
            stop_capture(start_capture(Path(tmp) / "probe.pcap", 9), settle=0.0)
        except Skip as why:
            print(f"skipped: {why}")
            return 0
    print(
        f"load, {args.calls} calls of {args.seconds:g} s at each --rate; sends per 2 ms slot"
        f" of the 20 ms cycle (capture time mod 20 ms); target: none above"
        f" {SHARE_LIMIT:.0%}"
    )
    print(f"{'rate':>6} " + " ".join(f"{i * 2:>2}-{i * 2 + 2:<2}ms" for i in range(SLOTS)))
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-phases-") as tmp:
        for rate in rates:
            try:
                got = run_rate(args, rate, Path(tmp))
            except Skip as why:
                print(f"skipped: {why}")
                return 0
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                print(f"rate {rate:g}: the run could not be made: {exc}", file=sys.stderr)
                return 2
            shares = got["shares"]
            top = max(shares)
            worst = max(worst, top)
            print(
                f"{rate:>6g} "
                + " ".join(f"{s:>7.1%}" for s in shares)
                + f"  max {top:.1%}: {'ok' if top <= SHARE_LIMIT else 'OVER'};"
                f" {got['sends']} frames captured of {got['frames']} sent, {got['up']} calls,"
                f" load's send lateness p99 {got['late_p99_ms']} ms"
                + (f"; tcpdump: {got['drops']}" if got["drops"] else ""),
                flush=True,
            )
    ok = worst <= SHARE_LIMIT
    print(
        f"target  no 2 ms slot above {SHARE_LIMIT:.0%} of the sends, at every rate"
        f" (worst {worst:.1%}): {'met' if ok else 'NOT met'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
