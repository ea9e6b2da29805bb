"""`load --workers`: workers end with their parent, and never block on it.

A load generator that keeps loading a production bot after its controller
died is a hazard. These kill the controller for real (SIGKILL, as a CI
timeout or the OOM killer does), or stop it (SIGSTOP: a controller that no
longer reads), and look at the processes and connections that remain.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from audiosocket_cli.net.tcpstate import connection_states

PYTHON = sys.executable


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(predicate())  # type: ignore[operator]


@pytest.fixture
def echo(cli_env: dict[str, str]) -> Iterator[int]:
    """`audiosocket listen --echo` on a free port: its port."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--echo", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
        cwd=ROOT,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert first.startswith("listening on "), first
    yield int(first.split(":")[-1])
    proc.terminate()
    proc.wait(10)


def start_load(port: int, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "audiosocket_cli",
            "load",
            f"127.0.0.1:{port}",
            "--calls",
            "20",
            "--rate",
            "200",
            "--duration",
            "60",
            "--workers",
            "2",
            "--json",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # the tool's own count: wait until all 20 calls are up
        if '"active": 20' in line:
            return proc
    raise AssertionError(f"load never had 20 calls up: {proc.stderr.read() if proc.stderr else ''}")


def established(port: int) -> int:
    states = connection_states(port) or {}
    return sum(1 for state in states.values() if state == "ESTABLISHED")


def test_kill_9_of_the_controller_ends_its_workers_and_their_calls(echo: int) -> None:
    proc = start_load(echo)
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    assert established(echo) >= 20
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    assert wait_for(lambda: not any(running(pid) for pid in workers), 2.0), [
        pid for pid in workers if running(pid)
    ]
    assert wait_for(lambda: established(echo) == 0, 2.0), connection_states(echo)


def test_sigterm_ends_a_worker_whose_controller_stopped_reading(echo: int) -> None:
    proc = start_load(echo, "--period", "0.1")
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(proc.pid, signal.SIGSTOP)  # alive, holding its pipes, reading nothing
    try:
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        os.set_blocking(fd, False)
        said = ""
        deadline = time.monotonic() + 30
        while "the controller is not reading" not in said and time.monotonic() < deadline:
            try:
                said += os.read(fd, 65536).decode()
            except BlockingIOError:
                time.sleep(0.05)
        assert "the controller is not reading" in said, said
        os.kill(workers[0], signal.SIGTERM)
        assert wait_for(lambda: not running(workers[0]), 1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(5)
