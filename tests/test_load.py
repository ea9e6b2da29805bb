"""`audiosocket load`: many calls at once, and each statistic naming the fault it measures.

The applications are real sockets on 127.0.0.1 port 0 (tests/load_apps.py,
and `audiosocket listen --echo` as a subprocess). Assertions read the tool's
own figures (its --json lines and --stats CSV), never the test's clock.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ROOT
from load_apps import FaultyApp

from audiosocket_cli.commands.load import load
from audiosocket_cli.engines.load import CSV_COLUMNS, Histogram, check_uuid_pattern

PYTHON = sys.executable


def run_load(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run `load ... --json` in this process: (exit status, the JSON lines, stderr)."""
    result = CliRunner().invoke(load, [*args, "--json"], catch_exceptions=False)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, rows, result.stderr


def total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert rows and rows[-1]["type"] == "total", rows
    return rows[-1]


@pytest.fixture
def echo_listener(cli_env: dict[str, str]) -> Any:
    """`audiosocket listen 127.0.0.1:0 --echo -q`, its address read from its first stderr line."""
    process = subprocess.Popen(
        [PYTHON, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--echo", "-q"],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    assert line.startswith("listening on "), line
    yield line.split()[-1]
    process.terminate()
    process.wait(10)


def test_against_listen_echo_every_call_ends_normally(
    echo_listener: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    stats = tmp_path / "run.csv"
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "audiosocket_cli",
            "load",
            echo_listener,
            "--calls",
            "4",
            "--rate",
            "20",
            "--duration",
            "1",
            "--total",
            "6",
            "--workers",
            "2",
            "--period",
            "0.5",
            "--json",
            "--stats",
            str(stats),
        ],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    last = total(rows)
    assert last["total_started"] == last["total_up"] == last["total_ended"] == 6
    assert last["total_failed"] == 0 and last["total_violations"] == 0
    assert last["total_echo_p50_ms"] is not None  # listen echoes: frames recognised
    with stats.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == CSV_COLUMNS
    assert len(table) == len(rows)
    assert sum(int(r["ended"]) for r in table) == 6
    assert all(r["failed_connect-refused"] == "0" for r in table)


def test_ten_times_real_time_shows_bursts_and_the_ratio() -> None:
    with FaultyApp("fast") as app:
        status, rows, _ = run_load(
            app.address, "--calls", "2", "--total", "2", "--rate", "50", "--duration", "1.2",
            "--workers", "1", "--period", "0.5",
        )  # fmt: skip
    assert status == 0
    last = total(rows)
    assert last["total_bursts"] >= 2
    assert "burst" in last["total_diagnoses"]
    ratios = [r["realtime_ratio"] for r in rows[:-1] if r["realtime_ratio"] is not None]
    assert ratios and 7 <= sorted(ratios)[len(ratios) // 2] <= 12, ratios


def test_time_to_first_audio_uuid_pattern_and_recordings(tmp_path: Path) -> None:
    record = tmp_path / "calls"
    with FaultyApp("late") as app:
        status, rows, _ = run_load(
            app.address, "--calls", "2", "--total", "2", "--rate", "50", "--duration", "1",
            "--workers", "1", "--uuid-pattern", "00000000-0000-4000-8000-{n:012d}",
            "--record", str(record),
        )  # fmt: skip
    assert status == 0
    last = total(rows)
    assert 290 <= last["total_ttfa_p50_ms"] <= 400, last
    names = sorted(p.name for p in record.iterdir())
    assert names == [
        "00000000-0000-4000-8000-000000000001.wav",
        "00000000-0000-4000-8000-000000000002.wav",
    ]


def test_mu_law_is_diagnosed() -> None:
    with FaultyApp("ulaw") as app:
        status, rows, _ = run_load(
            app.address, "--calls", "1", "--total", "1", "--duration", "1.5", "--workers", "1",
        )  # fmt: skip
    assert status == 0
    assert total(rows)["total_diagnoses"].get("ulaw") == 1


def test_an_error_message_is_a_protocol_failure() -> None:
    with FaultyApp("error") as app:
        status, rows, stderr = run_load(
            app.address, "--calls", "2", "--total", "2", "--rate", "50", "--duration", "3",
            "--workers", "1",
        )  # fmt: skip
    assert status == 3, stderr
    last = total(rows)
    assert last["total_failed_by"] == {"refused": 2}
    assert last["total_violations"] == 2
    assert "broke the protocol" in stderr


def test_an_application_that_stops_accepting() -> None:
    with FaultyApp("silent", max_accept=50) as app:
        status, rows, stderr = run_load(
            app.address, "--calls", "60", "--total", "60", "--rate", "200", "--duration", "1",
            "--workers", "1", "--max-failed", "9",
        )  # fmt: skip
    assert status == 1, stderr
    last = total(rows)
    assert last["total_ended"] == 50  # the 50 accepted calls ran to their end
    assert last["total_failed"] == 10
    assert "10 of 60 calls failed" in stderr
    failed = last["total_failed_by"]
    # A connection that completed its handshake in the listen backlog before the
    # application closed its listening socket is reset by the kernel: app-reset if load
    # had seen it up first, connect-refused if the reset came first (how many of each
    # depends on how busy the machine is); never connect-failed.
    assert set(failed) <= {"connect-refused", "app-reset"}, failed
    assert sum(failed.values()) == 10
    assert last["total_up"] == 50 + failed.get("app-reset", 0)


def test_a_connection_reset_before_it_was_seen_complete_is_refused() -> None:
    """The handshake completed in the backlog of an application that then closed its
    listening socket: the kernel resets it, and a busy load sees the reset as the
    connect's own error. Refused, as the ones after the close are; never 'failed'."""
    import errno
    import select
    import socket

    from audiosocket_cli.engines.load.worker import _connect_reason

    app = socket.create_server(("127.0.0.1", 0))
    ours = socket.socket()
    ours.setblocking(False)
    assert ours.connect_ex(app.getsockname()) == errno.EINPROGRESS
    # Complete (writable), waiting in the backlog, unaccepted; then the application's
    # listening socket closes and the kernel resets it (readable: the reset came).
    assert select.select([], [ours], [], 5)[1]
    app.close()
    assert select.select([ours], [], [], 5)[0]
    err = ours.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # what _connected reads
    ours.close()
    assert err == errno.ECONNRESET
    assert _connect_reason(err) == "connect-refused"
    assert _connect_reason(errno.ECONNREFUSED) == "connect-refused"
    assert _connect_reason(errno.EHOSTUNREACH) == "connect-failed"


def test_echo_round_trip_of_an_application_50_ms_late() -> None:
    with FaultyApp("echo-late") as app:
        status, rows, _ = run_load(
            app.address, "--calls", "2", "--total", "2", "--rate", "50", "--duration", "1.5",
            "--workers", "1",
        )  # fmt: skip
    assert status == 0
    last = total(rows)
    assert 49 <= last["total_echo_p50_ms"] <= 55, last


def test_ctrl_c_finishes_cleanly_with_the_totals(echo_listener: str, cli_env: dict) -> None:
    process = subprocess.Popen(
        [PYTHON, "-m", "audiosocket_cli", "load", echo_listener, "--calls", "3", "--rate", "30",
         "--workers", "2", "--period", "0.2", "--json"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())  # a period came: the calls are running
    assert first["type"] == "period"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    last = json.loads(out.splitlines()[-1])
    assert last["type"] == "total"
    assert last["total_started"] >= 1
    assert last["total_failed"] == 0 and last["active"] == 0
    assert last["total_stopped"] + last["total_ended"] == last["total_started"]


def test_usage_errors() -> None:
    assert check_uuid_pattern("00000000-0000-4000-8000-{n:012d}") is None
    assert "not a UUID" in (check_uuid_pattern("call-{n}") or "")
    result = CliRunner().invoke(load, ["9", "--uuid-pattern", "{x}"])
    assert result.exit_code == 2
    result = CliRunner().invoke(load, ["9", "--tone", "440", "--silence"])
    assert result.exit_code == 2
    result = CliRunner().invoke(load, ["9", "--max-failed", "5x"])
    assert result.exit_code == 2


def test_histogram_merges_and_reads_percentiles() -> None:
    a, b = Histogram(), Histogram()
    for ms in range(1, 51):
        a.add(ms / 1000)
    for ms in range(51, 101):
        b.add(ms / 1000)
    a.merge(b.state())
    assert a.n == 100 and a.max == 0.1
    assert abs((a.percentile(50) or 0) - 0.050) < 0.0005
    assert abs((a.percentile(99) or 0) - 0.099) < 0.001


def test_histogram_noted_values_bin_as_added_ones() -> None:
    import random

    rng = random.Random(7)
    values = [rng.uniform(-0.5, 0.5) for _ in range(2000)]
    values += [0.0, 1e-7, -1e-7, -1e-6, 1e-6, 0.02, 0.02, 12.5, -3.0]
    added, noted = Histogram(), Histogram()
    for v in values:
        added.add(v)
        noted.pending.append(v)
    assert noted.percentile(50) == added.percentile(50)  # settles first
    assert noted.state() == added.state()
    assert not noted.pending
    noted.pending.append(0.75)  # a merge settles what is pending too
    noted.merge(added.state())
    assert noted.n == 2 * len(values) + 1 and noted.max == 12.5


def test_histogram_add_many_counts_as_many_adds() -> None:
    one_by_one, at_once = Histogram(), Histogram()
    for value, count in ((0.0021, 25), (-0.0004, 3), (0.0, 2), (0.0305, 1)):
        for _ in range(count):
            one_by_one.add(value)
        at_once.add_many(value, count)
    at_once.add_many(0.5, 0)  # a pass that sent nothing adds nothing
    assert at_once.state() == one_by_one.state()
    assert at_once.n == 31 and at_once.max == 0.0305


def test_locust_headless_with_two_processes(
    echo_listener: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    if importlib.util.find_spec("locust") is None:
        if os.environ.get("CI"):
            pytest.fail("locust is not installed (pip install 'audiosocket-cli[locust]')")
        pytest.skip("locust is not installed (pip install 'audiosocket-cli[locust]')")
    # Short calls, a run long enough for several of them even on a busy machine.
    env = dict(cli_env, AUDIOSOCKET_LOAD_CALLS="3", AUDIOSOCKET_LOAD_DURATION="0.5")
    prefix = tmp_path / "run"
    done = subprocess.run(
        [PYTHON, "-m", "locust", "-f", str(ROOT / "examples" / "locustfile.py"), "--headless",
         "--processes", "2", "-u", "2", "-r", "2", "--run-time", "7s", "--stop-timeout", "10",
         "--host", echo_listener, "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"],
        env=env, capture_output=True, text=True, timeout=90, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(rows["call"]["Request Count"]) >= 2
    assert int(rows["call"]["Failure Count"]) == 0
    assert int(rows["time to first audio"]["Request Count"]) >= 2
    assert int(rows["echo round trip"]["Request Count"]) >= 1
    assert rows["Aggregated"]["Failure Count"] == "0"


def test_a_reset_our_send_finds_first_is_a_reset_not_a_close() -> None:
    """An application that dies resets the connection. When our frame's send() meets
    the reset before a read does, the send takes the socket's error, and a read then
    finds only the end of the stream: the call is still the application's reset
    (a crashed bot must not pass for one that hung up)."""
    import select
    import socket
    import time

    from audiosocket_cli.engines.load.plan import LoadPlan
    from audiosocket_cli.engines.load.worker import Worker
    from audiosocket_cli.net.address import Address

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        endings: list[str] = []
        plan = LoadPlan(address=Address("127.0.0.1", port), calls=1, duration=60.0, total=1)
        worker = Worker(plan, on_call_end=lambda end, reason, t: endings.append(reason))
        family, _, _, _, sockaddr = socket.getaddrinfo("127.0.0.1", port)[0]
        worker._sockaddr = (family, sockaddr)
        worker._launch(time.monotonic())
        app, _ = listener.accept()
        (call,) = worker.calls.values()
        select.select([], [call.sock], [], 5.0)  # connected
        worker._connected(call)
        assert app.recv(19)  # our UUID message
        # The application dies: SO_LINGER 0 makes its close a reset.
        app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        app.close()
        assert select.select([call.sock], [], [], 5.0)[0]  # the reset is in our socket
        slot = call.slot
        assert slot is not None and slot.timer is not None
        slot.timer.cancel()
        worker._tick(slot)  # our next frame's send() meets it before any read
        for _ in range(3):  # the kernel may take the first send and refuse the next
            if endings:
                break
            slot.timer.cancel()
            worker._tick(slot)
        assert endings == ["app-reset"]
        worker.reactor.close()


def test_a_frame_from_its_parts_is_the_marked_frame() -> None:
    """load's hot path makes each frame from parts computed once (frames.Wire): the same
    bytes as mark() gives, for every frame number's mark and any call's nonce."""
    from audiosocket_cli.engines.load.frames import K_BITS, N_BITS, Wire, mark

    payloads = [bytes(range(256)) + bytes(64), b"\x01\x02" * 80, b"\x05\x00"]
    wire = Wire(payloads, finite=False, kind=0x10, k_end=float("inf"))
    for f, payload in enumerate(payloads):
        base, tail, header = wire.part(payloads, f)
        assert header == bytes((0x10, len(payload) >> 8, len(payload) & 0xFF))
        for k, nonce in ((0, 1), (17, 4095), (4095, 2048), (5000, 7)):
            if base is None:  # too short to carry the mark: sent as it is
                assert tail == payload
                continue
            made = (base | K_BITS[k & 0xFFF] | N_BITS[nonce]).to_bytes(12, "little") + tail
            assert made == mark(payload, k, nonce)
            assert made != payload  # never the payload itself: an echo is told apart


def test_run_messages_taken_in_batches_give_the_figures_of_one_at_a_time() -> None:
    """A plain call's run messages wait for the period's batch (analysis.runs); a call
    that is recorded or shown takes each as it comes. The same application, heard by
    one of each: the same call statistics, and the same jitter, gaps and echo round
    trips in the period. The application echoes our frames, with jitter, pauses,
    bursts (several in one read) and a frame of another size; the clock is the
    test's, so both calls hear every message at the same instant."""
    import random
    import socket
    import types

    from audiosocket_cli.analysis.stats import AnalysisBudget
    from audiosocket_cli.engines.load import worker as worker_module
    from audiosocket_cli.engines.load.calls import Call
    from audiosocket_cli.engines.load.heard import take_runs
    from audiosocket_cli.engines.load.plan import LoadPlan
    from audiosocket_cli.engines.load.worker import Worker
    from audiosocket_cli.net.address import Address
    from audiosocket_cli.protocol.wire import Kind, Message
    from tests.test_runs import state

    clock = types.SimpleNamespace(now=1000.0)
    fake_time = types.SimpleNamespace(monotonic=lambda: clock.now)
    original = worker_module.time
    worker_module.time = fake_time  # type: ignore[assignment]
    plan = LoadPlan(address=Address("127.0.0.1", 1), calls=1, duration=3600.0, total=1)
    sides = []
    try:
        for batched in (True, False):
            worker = Worker(plan)
            worker.budget = AnalysisBudget(per_second=1e9, burst=1e9)  # no clock in the way
            ours, app = socket.socketpair()
            ours.setblocking(False)
            call = Call(1, "00000000-0000-4000-8000-000000000001", ours, clock.now)
            worker.calls[1] = call
            worker._connected(call)
            assert app.recv(65536)  # the UUID
            assert call.batched
            call.batched = batched
            sides.append((worker, call, app))
        rnd = random.Random(5)
        for step in range(610):  # ends with run messages held for a batch
            r = rnd.random()
            clock.now += rnd.uniform(0.6, 3.0) if r < 0.01 else 0.020 + rnd.gauss(0, 0.002)
            for worker, call, app in sides:
                slot = call.slot
                assert slot is not None and slot.timer is not None
                slot.timer.cancel()
                worker._tick(slot)  # our frame goes out
                frame = app.recv(65536)
                if r < 0.03:
                    frame *= 6  # six at once (120 ms of audio): one read, one time
                elif r < 0.05:
                    frame = Message(Kind.AUDIO_8K, bytes(160)).encode()
                app.sendall(frame)
                worker._readable(call)
            if step % 50 == 49:
                for worker, _, _ in sides:
                    take_runs(worker, worker.calls.values())  # as a slot's tick does
        for worker, call, _ in sides:
            assert call.session is not None
            # The call's end takes what its batch still held, before its report.
            assert call.runs or not call.batched
            worker._end(call, call.session.close("caller-close", "the test", clock.now))
            assert call.state == "done" and not call.runs
    finally:
        worker_module.time = original  # type: ignore[assignment]
        for worker, call, app in sides:
            call.sock.close()
            app.close()
            worker.reactor.close()
    (batched_worker, batched_call, _), (single_worker, single_call, _) = sides
    assert batched_call.app.audio_messages > 500
    assert state(batched_call.app) == state(single_call.app)
    assert batched_call.app.bursts >= 1
    batched_stats, single_stats = batched_worker.stats, single_worker.stats
    assert batched_stats.gaps == single_stats.gaps >= 1
    assert sorted(batched_stats.echo.pending) == sorted(single_stats.echo.pending)
    assert len(batched_stats.echo.pending) > 500
    assert sorted(batched_stats.jitter.pending) == pytest.approx(
        sorted(single_stats.jitter.pending)
    )
    assert (batched_call.last_audio, batched_call.last_dur) == pytest.approx(
        (single_call.last_audio, single_call.last_dur)
    )
