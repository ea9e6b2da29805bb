"""`audiosocket load --scenario` at scale: 200 conversations at once against a bot whose truths
are known. How late load sends, how right its figures are, what it costs.

Starts the fleet voice bot (benchmarks/voice_bot_fleet.py: one process, one
event loop, espeak-ng speech; it greets 500 ms after a connection, answers
each caller utterance 300 to 1400 ms after the caller's speech ended, a
different delay per call, and stops 250 ms after a barge-in; at each call's
end it logs its own times, on the playout clock), then runs

    python -m audiosocket_cli load 127.0.0.1:PORT --scenario f.toml --calls N \\
        --rate RAMP --total N --sample-rate RATE --json --conversations out.jsonl

with the built-in scenario (`converse --print-scenario`: wait for the
greeting, wait 0.7 s of quiet, say "question", barge in with "interrupt"
500 ms into the answer, close). Prints:

- our send lateness p99: load's own `total_send_late_p99_ms`, and the worst
  period's `send_late_p99_ms` (target under 5 ms);
- the conversation figures per call against the bot's truth, paired by UUID
  (time to first response against the greeting's start; each turn's response
  latency, in order, against reply start - caller end; each barge-in's stop
  time against the bot's speech end - the caller's barge-in start): the
  median, p95 and max of |load - bot| in ms and how many are over 30 ms
  (target: none);
- the response latency p50/p95/p99 load reported, beside the bot's truth;
- load's CPU (user + sys of load and its workers) per call: in CPU ms per
  call (start-up included), in millicores per call held over the whole run
  (CPU over the sum of the calls' durations) and while every call was up
  (from /proc, between the first and the last period with all calls up);
  the bot's CPU (cores, over load's run) and its own send lateness, to show
  that it was not the limit;
- the speech detector's cost: benchmarks/bench_speech.py's worst 8 kHz figure
  (µs per 20 ms frame, target at most 5), run after the calls.

`--baseline` then runs the same number of plain load calls (silence, as long
as the conversations were) against the same bot: what the conversations add
to load's send lateness and CPU. `--pin` puts the bot on the last CPU and
load on the others (by default the kernel places both); `--workers` is load's.

    python benchmarks/bench_load_converse.py                  # 200 calls, 8 kHz, 50 calls/s
    python benchmarks/bench_load_converse.py --calls 200 --rate 16000 --ramp 50
    python benchmarks/bench_load_converse.py --baseline       # and plain load calls
    python benchmarks/bench_load_converse.py --converse 3     # 3 `converse` calls, no load

Without `load --scenario` (or with `--converse K`) it holds K calls with
`audiosocket converse` instead (each its own process, K at once) and compares
those with the truths the same way: the bot and the comparison, checked.
About 20 s on two cores (the calls 12 s, the detector 5 s); --baseline adds 10 s.

Traffic goes to 127.0.0.1 only. It prints figures and asserts nothing: exit 0
unless a run could not be made (the bot did not start, load gave no figures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid as uuid_lib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _client  # noqa: E402
from bench_load import tree_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "benchmarks" / "voice_bot_fleet.py"
SPEECH_BENCH = ROOT / "benchmarks" / "bench_speech.py"
LATE_TARGET_MS = 5.0  # our send lateness p99
ERROR_TARGET_MS = 30.0  # |load's figure - the bot's truth|, every figure
VAD_TARGET_US = 5.0  # the speech detector, per 20 ms frame at 8 kHz
GREET_MS = "500"
REPLY_MS = ",".join(str(ms) for ms in range(300, 1401, 100))  # under --max-response 1.5 s
STOP_MS = "250"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "audiosocket_cli", *args]


def load_has_scenario() -> bool:
    done = subprocess.run(
        cli("load", "--help"), capture_output=True, text=True, env=_client.cli_env(), timeout=60
    )
    return "--scenario" in done.stdout


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def nearest_rank(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), nearest rank, as the tool computes its own."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def key(value: str | None) -> str | None:
    try:
        return str(uuid_lib.UUID(str(value)))
    except ValueError:
        return None


# The bot.


class Bot:
    """voice_bot_fleet.py as a subprocess: its port, its CPU, its truths, its summary."""

    def __init__(self, folder: Path, rate: int, cpus: set[int] | None = None) -> None:
        self.log = folder / "truth.jsonl"
        self.errors = folder / "bot.err"
        with open(self.errors, "w") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(BOT),
                    "--port",
                    "0",
                    "--log",
                    str(self.log),
                    "--rates",
                    str(rate),
                    "--greet-ms",
                    GREET_MS,
                    "--reply-ms",
                    REPLY_MS,
                    "--stop-ms",
                    STOP_MS,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=_client.cli_env(),
                preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.proc.kill()
            self.proc.wait()
            sys.exit(f"the bot did not start: {self.errors.read_text()[-2000:]}")
        self.port = int(line)

    def cpu(self) -> float:
        return sum(_client.process_cpu(self.proc.pid))

    def truths(self, want: int, patience: float = 10.0) -> dict[str, dict[str, Any]]:
        """The calls' truths by UUID, once `want` calls have ended (or after `patience` s)."""
        deadline = time.monotonic() + patience
        while True:
            lines = self.log.read_text().splitlines() if self.log.exists() else []
            if len(lines) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        out = {}
        for line in lines:
            try:
                truth = json.loads(line)
            except ValueError:  # the line being written
                continue
            uuid = key(truth.get("uuid"))
            if uuid:
                out[uuid] = truth
        return out

    def stop(self) -> dict[str, Any]:
        """Ended; its summary line (accepted, ended, frames, its lateness, CPU)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for line in reversed(self.errors.read_text().splitlines()):
            if line.startswith("{"):
                return dict(json.loads(line))
        return {}


# The callers: load --scenario, or converse calls.


def run_load(
    args: argparse.Namespace, port: int, mode: list[str], folder: Path, name: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run load (`mode`: `--scenario FILE` or a plain call's options): (its totals line, with
    `cpu` (s, load and its workers, start-up included), `steady_cpu_per_call` (cores per
    call while every call was up, from /proc), `periods` ([(active, send lateness p99)])
    and `worst_period_send_late_p99_ms` added; the conversations, if any)."""
    conversations = folder / f"{name}.jsonl"
    argv = cli(
        "load",
        f"127.0.0.1:{port}",
        *mode,
        "--calls",
        str(args.calls),
        "--total",
        str(args.calls),
        "--rate",
        str(args.ramp),
        "--sample-rate",
        str(args.rate),
        "--json",
        *(["--conversations", str(conversations)] if "--scenario" in mode else []),
        *(["--workers", str(args.workers)] if args.workers else []),
    )
    print("$ audiosocket " + " ".join(argv[3:]), flush=True)
    cpus = load_cpus() if args.pin else None
    before = children_cpu()
    rows: list[dict[str, Any]] = []
    steady: list[tuple[float, float]] = []  # (when, load's CPU) at each period all were up
    with open(folder / f"{name}.err", "w+") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=_client.cli_env(),
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            rows.append(json.loads(line))
            if rows[-1].get("type") != "total" and rows[-1].get("active") == args.calls:
                steady.append((time.monotonic(), tree_cpu(proc.pid)))
        proc.wait(timeout=60)
        err.seek(0)
        stderr = err.read().strip()
    cpu = children_cpu() - before
    totals = [r for r in rows if r.get("type") == "total"]
    if not totals:
        sys.exit(f"load gave no totals (exit {proc.returncode}): {stderr[-2000:]}")
    total = dict(totals[-1])
    periods = [r for r in rows if r.get("type") != "total"]
    total["periods"] = [(r.get("active"), r.get("send_late_p99_ms")) for r in periods]
    total["worst_period_send_late_p99_ms"] = max(
        (r["send_late_p99_ms"] for r in periods if r.get("send_late_p99_ms") is not None),
        default=None,
    )
    total["cpu"] = cpu
    total["steady_cpu_per_call"] = None
    if len(steady) >= 2:
        (t0, c0), (t1, c1) = steady[0], steady[-1]
        total["steady_cpu_per_call"] = (c1 - c0) / (t1 - t0) / args.calls
    total["exit"] = proc.returncode
    total["stderr"] = stderr
    records = []
    if conversations.exists():
        records = [json.loads(line) for line in conversations.read_text().splitlines() if line]
    return total, records


def load_cpus() -> set[int] | None:
    """With --pin: every CPU but the last (the bot's)."""
    cpus = sorted(os.sched_getaffinity(0))
    return set(cpus[:-1]) if len(cpus) > 1 else None


def bot_cpus() -> set[int] | None:
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[-1]} if len(cpus) > 1 else None


def run_converse(
    args: argparse.Namespace, port: int, scenario: Path, calls: int, folder: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`calls` converse calls at once, in the shape of load's figures and conversations.
    Each writes to a file: --json is a line per message, which would fill a pipe."""
    before = children_cpu()
    procs = []
    for i in range(calls):
        argv = cli("converse", f"127.0.0.1:{port}", str(scenario), "--json")
        argv += ["--rate", str(args.rate), "--uuid", str(uuid_lib.uuid4())]
        if i == 0:
            print("$ audiosocket " + " ".join(argv[3:]), flush=True)
        out = folder / f"converse-{i}.jsonl"
        with open(out, "w") as fh, open(folder / f"converse-{i}.err", "w") as err:
            procs.append(
                (out, subprocess.Popen(argv, stdout=fh, stderr=err, env=_client.cli_env()))
            )
        time.sleep(1 / args.ramp)
    records: list[dict[str, Any]] = []
    lags: list[float] = []
    failed = 0
    for out, proc in procs:
        failed += proc.wait(timeout=120) != 0
        text = out.read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        events: dict[str, list[dict[str, Any]]] = {}
        for line in lines:
            events.setdefault(line.get("event", ""), []).append(line)
        ends = events.get("call-end", [])
        if not ends:
            continue
        end = ends[-1]
        lags.append(end.get("max_send_lag_ms") or 0.0)
        conversation = end.get("conversation") or (events.get("conversation") or [{}])[-1]
        records.append(
            {
                "uuid": end.get("call"),
                "conversation": conversation,
                "first_response": conversation.get("first_response"),
                "turns": events.get("turn", []),
                "barge_ins": events.get("barge-in", []),
            }
        )
    cpu = children_cpu() - before
    latencies = [t["latency"] for r in records for t in r["turns"] if t["latency"] is not None]
    figures = {
        "total_conversations": len(records),
        "total_conversations_failed": failed,
        "total_send_late_max_ms": max(lags, default=None),
        "total_response_p50_ms": ms(nearest_rank(latencies, 50)),
        "total_response_p95_ms": ms(nearest_rank(latencies, 95)),
        "total_response_p99_ms": ms(nearest_rank(latencies, 99)),
        "cpu": cpu,
    }
    return figures, records


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


# The comparison.


def against_truth(
    records: list[dict[str, Any]], truths: dict[str, dict[str, Any]]
) -> tuple[list[tuple[str, str, float, float]], list[str]]:
    """(kind, uuid, load's figure, the bot's truth) for every figure that pairs, in s;
    and what did not pair."""
    pairs: list[tuple[str, str, float, float]] = []
    problems: list[str] = []
    for record in records:
        uuid = key(record.get("uuid"))
        truth = truths.get(uuid or "")
        if truth is None:
            problems.append(f"{record.get('uuid')}: no truth from the bot")
            continue
        conversation = record.get("conversation") or {}
        first = record.get("first_response", conversation.get("first_response"))
        if first is not None and truth["greeting"] is not None:
            pairs.append(("first response", uuid or "", first, truth["greeting"]))
        elif (first is None) != (truth["greeting"] is None):
            problems.append(f"{uuid}: first response {first}, greeting {truth['greeting']}")
        turns = [t for t in record.get("turns", []) if t.get("latency") is not None]
        if len(turns) != len(truth["replies"]):
            problems.append(f"{uuid}: {len(turns)} latencies, {len(truth['replies'])} replies")
        for turn, (caller_end, start) in zip(turns, truth["replies"], strict=False):
            pairs.append(("response latency", uuid or "", turn["latency"], start - caller_end))
        stops = [b for b in record.get("barge_ins", []) if b.get("stopped")]
        if len(stops) != len(truth["barge_ins"]):
            problems.append(f"{uuid}: {len(stops)} stops, {len(truth['barge_ins'])} in truth")
        for barge_in, (caller_start, speech_end, _play_end) in zip(
            stops, truth["barge_ins"], strict=False
        ):
            pairs.append(
                ("barge-in stop", uuid or "", barge_in["stop_time"], speech_end - caller_start)
            )
    seen = {key(r.get("uuid")) for r in records}
    missing = [u for u in truths if u not in seen]
    if missing:
        problems.append(f"{len(missing)} call(s) the bot served with no conversation from load")
    return pairs, problems


def error_rows(pairs: list[tuple[str, str, float, float]]) -> list[tuple[str, list[float]]]:
    kinds = ["first response", "response latency", "barge-in stop"]
    rows = [(kind, [abs(a - b) * 1000 for k, _, a, b in pairs if k == kind]) for kind in kinds]
    rows.append(("all", [abs(a - b) * 1000 for _, _, a, b in pairs]))
    return rows


# The speech detector's cost.


def vad_cost(frames: int, repeat: int) -> tuple[float | None, str]:
    """bench_speech.py's worst 8 kHz figure (µs per frame), and its table's lines."""
    done = subprocess.run(
        [sys.executable, str(SPEECH_BENCH), "--frames", str(frames), "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        env=_client.cli_env(),
        timeout=600,
    )
    found = re.search(r"detector at 8 kHz: at most ([\d.]+) µs", done.stdout)
    table = "\n".join(line for line in done.stdout.splitlines() if re.match(r"\d+ kHz ", line))
    return (float(found.group(1)) if found else None), table


# The report.


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def row(name: str, value: str, target: str = "", verdict: str = "") -> None:
    print(f"  {name:<46} {value:>15}  {target:<6} {verdict}".rstrip())


def verdict(ok: bool | None) -> str:
    return "" if ok is None else _client.met(ok)


def report(
    who: str,
    figures: dict[str, Any],
    records: list[dict[str, Any]],
    truths: dict[str, dict[str, Any]],
    pairs: list[tuple[str, str, float, float]],
    wall: float,
    bot_cpu: float,
    summary: dict[str, Any],
) -> None:
    calls = max(1, len(records))
    held = sum(t["duration"] for t in truths.values())
    cpu = figures["cpu"]
    print()
    row("", "measured", "target")
    failed = figures.get("total_conversations_failed")
    row("conversations / failed an expectation", f"{len(records)} / {fmt(failed, 'd')}")
    if who == "load":
        lateness(figures, "load")
    else:
        late = figures.get("total_send_late_max_ms")
        row("converse send lateness, max of the calls (ms)", fmt(late, ".2f"))
    row(f"{who} CPU per call, start-up included (CPU ms)", fmt(cpu / calls * 1000))
    row(f"{who} CPU per call held, whole run (millicores)", fmt(cpu / held * 1000, ".2f"))
    steady = figures.get("steady_cpu_per_call")
    if who == "load":
        row("load CPU per call, all calls up (millicores)", fmt(ms(steady), ".2f"))
    row(
        f"{who} / bot cores over the run's {wall:.1f} s", f"{cpu / wall:.2f} / {bot_cpu / wall:.2f}"
    )
    bot_late = f"{fmt(summary.get('late_p99_ms'))} / {fmt(summary.get('late_max_ms'))}"
    row("bot send lateness p99 / max (ms)", bot_late)
    truth = [(b - a) * 1000 for t in truths.values() for a, b in t["replies"]]
    measured = "/".join(fmt(figures.get(f"total_response_{q}_ms"), ".0f") for q in QUANTILES)
    row(f"response latency p50/p95/p99, {who} (ms)", measured)
    known = "/".join(fmt(nearest_rank(truth, float(q[1:])), ".0f") for q in QUANTILES)
    row("response latency p50/p95/p99, bot's truth (ms)", known)
    if who == "load":
        row("first response p50, load (ms)", fmt(figures.get("total_first_response_p50_ms"), ".0f"))
        row("barge-in stop p95, load (ms)", fmt(figures.get("total_barge_in_stop_p95_ms"), ".0f"))
        row("failed expectations by kind, load", json.dumps(figures.get("total_failed_expect")))
    print()
    head = f"|{who} - bot| (ms)"
    print(f"  {head:<24} count  median     p95     max  over {ERROR_TARGET_MS:g} ms (target 0)")
    for kind, errors in error_rows(pairs):
        over = sum(e > ERROR_TARGET_MS for e in errors)
        med = statistics.median(errors) if errors else None
        p95, top = nearest_rank(errors, 95), max(errors, default=None)
        print(
            f"  {kind:<24} {len(errors):5d} {fmt(med):>7} {fmt(p95):>7} {fmt(top):>7}"
            f" {over:11d}  {verdict(over == 0 if errors else None)}"
        )


QUANTILES = ("p50", "p95", "p99")


def lateness(figures: dict[str, Any], label: str) -> None:
    late = figures.get("total_send_late_p99_ms")
    target = f"< {LATE_TARGET_MS:g}"
    ok = None if late is None else late < LATE_TARGET_MS
    row(f"{label} send lateness p99, whole run (ms)", fmt(late, ".2f"), target, verdict(ok))
    worst = figures.get("worst_period_send_late_p99_ms")
    ok = None if worst is None else worst < LATE_TARGET_MS
    row(f"{label} send lateness p99, worst period (ms)", fmt(worst, ".2f"), target, verdict(ok))
    row(f"{label} send lateness max (ms)", fmt(figures.get("total_send_late_max_ms"), ".2f"))
    periods = ", ".join(f"{a}: {fmt(p, '.1f')}" for a, p in figures.get("periods", []))
    print(f"    per period (calls up: p99 ms): {periods}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=200, help="conversations, all at once")
    parser.add_argument("--rate", type=int, default=8000, choices=[8000, 16000], help="audio")
    parser.add_argument("--ramp", type=float, default=50.0, help="new calls per second")
    parser.add_argument("--workers", type=int, default=0, help="load's (default: load's own)")
    parser.add_argument(
        "--pin", action="store_true", help="the bot on the last CPU, load on the others"
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="then plain load calls (silence, as long as the conversations) against the bot",
    )
    parser.add_argument(
        "--converse",
        type=int,
        default=0,
        metavar="K",
        help="K `converse` calls instead of load (the default when load has no --scenario)",
    )
    parser.add_argument("--vad-frames", type=int, default=50_000, help="bench_speech --frames")
    parser.add_argument("--vad-repeat", type=int, default=3, help="bench_speech --repeat")
    args = parser.parse_args()

    folder = Path(_client.scratch_folder("converse-"))
    scenario = folder / "scenario.toml"
    printed = subprocess.run(
        cli("converse", "--print-scenario"),
        capture_output=True,
        text=True,
        env=_client.cli_env(),
    )
    if printed.returncode:
        sys.exit(f"converse --print-scenario: {printed.stderr.strip()}")
    scenario.write_text(printed.stdout)
    use_load = not args.converse and load_has_scenario()
    who = "load" if use_load else "converse"
    calls = args.calls if use_load else (args.converse or min(args.calls, 3))
    replies = REPLY_MS.split(",")
    print(
        f"{calls} conversations ({'load --scenario' if use_load else 'converse, one process each'})"
        f" at {args.rate} Hz, {args.ramp:g} new calls/s, the built-in scenario; the bot greets"
        f" at {GREET_MS} ms, replies in {replies[0]}..{replies[-1]} ms (by call), stops in"
        f" {STOP_MS} ms; {os.cpu_count()} cores{', pinned' if args.pin else ''}, load average"
        f" {_client.loadavg()}"
    )
    if not use_load and not args.converse:
        print("  (load has no --scenario yet: converse calls instead)")

    bot = Bot(folder, args.rate, bot_cpus() if args.pin else None)
    baseline: dict[str, Any] = {}
    try:
        bot_before = bot.cpu()
        started = time.monotonic()
        if use_load:
            figures, records = run_load(args, bot.port, ["--scenario", str(scenario)], folder, who)
        else:
            figures, records = run_converse(args, bot.port, scenario, calls, folder)
        wall = time.monotonic() - started
        truths = bot.truths(len(records))
        bot_cpu = bot.cpu() - bot_before
        if args.baseline and use_load and truths:
            length = statistics.mean(t["duration"] for t in truths.values())
            plain = ["--silence", "--duration", f"{length:.1f}"]
            baseline, _ = run_load(args, bot.port, plain, folder, "plain")
    finally:
        summary = bot.stop()
    vad_us, vad_table = vad_cost(args.vad_frames, args.vad_repeat)

    pairs, problems = against_truth(records, truths)
    report(who, figures, records, truths, pairs, wall, bot_cpu, summary)
    if baseline:
        print()
        print("  the same calls without the scenario (plain load, silence, as long):")
        lateness(baseline, "plain load")
        steady = ms(baseline.get("steady_cpu_per_call"))
        row("plain load CPU per call, all calls up (millicores)", fmt(steady, ".2f"))
    print()
    row(
        "speech detector, worst 8 kHz (µs per 20 ms frame)",
        fmt(vad_us, ".2f"),
        f"<= {VAD_TARGET_US:g}",
        verdict(None if vad_us is None else vad_us <= VAD_TARGET_US),
    )
    print("  bench_speech.py, best of runs (detector, floor, ratio):")
    print("\n".join("    " + line for line in vad_table.splitlines()))
    worst = sorted(pairs, key=lambda p: -abs(p[2] - p[3]))[:5]
    if worst:
        print()
        print(
            f"largest differences ({who} - bot, ms):",
            ", ".join(f"{kind} {uuid[:8]} {(a - b) * 1000:+.0f}" for kind, uuid, a, b in worst),
        )
    if problems:
        print(f"not paired ({len(problems)}):", "; ".join(problems[:10]))
    if use_load and figures.get("exit"):
        print(f"load exit status {figures['exit']}: {figures.get('stderr', '')[-500:]}")
    if not records:
        print("no conversation came back")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
