"""`listen --workers N` and `capture --workers N`: N processes on one port, one output.

Real sockets on 127.0.0.1 and real processes. Nothing waits on a guessed time:
each step waits for a line of the tool's own, a socket's end, or a process's
exit; order is judged on the tool's own timestamps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from asterisk_client import AsteriskClient
from click.testing import CliRunner
from test_listen import ROOT, Listen, pcm_for, wav_bytes

from audiosocket_cli.cli import cli
from audiosocket_cli.engines import workers
from audiosocket_cli.protocol.wire import Message

LINGER = 10.0  # s: a worker still there (or a call still open) after this lingers

pytestmark = pytest.mark.skipif(
    bool(workers.unavailable()), reason=f"no worker processes here: {workers.unavailable()}"
)


@pytest.fixture
def listen_procs():
    made: list[Listen] = []

    def make(*args: str, **kwargs) -> Listen:  # type: ignore[no-untyped-def]
        proc = Listen(*args, **kwargs)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        for pid in children(proc.proc.pid):
            _kill(pid)
        proc.kill()


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (its workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _stat(pid: int) -> list[str] | None:
    """A process's state and parent (then the rest of /proc/PID/stat), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def running(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.01)


def records(proc: Listen) -> list[dict]:
    return [json.loads(line) for line in proc.stdout]


def events(proc: Listen, name: str) -> list[dict]:
    return [r for r in records(proc) if r.get("event") == name]


def call_with_audio(address: tuple[str, int], seed: int, seconds: float) -> tuple[str, bytes]:
    """One call: its UUID, unpaced audio, then a close (as Asterisk ends)."""
    pcm = pcm_for(seed, seconds)
    with AsteriskClient(address, receive=False) as client:
        uuid = client.send_uuid()
        client.send_audio(pcm, paced=False)
        client.close()
    return uuid, pcm


# Sharing the port


def test_two_workers_share_one_port_and_every_call_is_recorded(tmp_path, listen_procs):
    proc = listen_procs("--workers", "2", "--json", "--record", str(tmp_path), "--max-calls", "20")
    sent = dict(call_with_audio(proc.address, 100 + i, 0.2) for i in range(20))
    assert proc.wait() == 0
    # `listening on` once, the first line, though two processes listen.
    assert sum("listening on" in line for line in proc.stderr) == 1
    starts = events(proc, "call-start")
    assert len(starts) == 20 and sorted(r["conn"] for r in starts) == list(range(1, 21))
    # The kernel spreads the connections: both workers served calls (each has
    # 1 chance in 2^20 of taking all twenty).
    assert {r["worker"] for r in starts} == {1, 2}
    ends = events(proc, "call-end")
    assert len(ends) == 20 and {r["ended"] for r in ends} == {"caller-close"}
    for uuid, pcm in sent.items():
        assert wav_bytes(tmp_path / f"{uuid}.wav") == (pcm, 8000)


def test_merged_output_is_whole_lines_in_time_order(tmp_path, listen_procs):
    """Eight calls at once over two workers, every message echoed: stdout and the trace
    are whole lines, each message once, in the order of the tool's own timestamps."""
    from audiosocket_cli.files.trace import read_records

    trace = tmp_path / "calls.trace"
    proc = listen_procs(
        "--workers", "2", "--json", "--echo", "--trace", str(trace), "--max-calls", "8"
    )
    frames = 40
    clients = [AsteriskClient(proc.address) for _ in range(8)]
    try:
        uuids = [client.send_uuid() for client in clients]
        for k in range(frames):  # round robin: every call has a message in every moment
            for n, client in enumerate(clients):
                client.send(Message.audio(pcm_for(n * 1000 + k, 0.02)))
        for client in clients:
            assert client.wait_for(frames, "audio")
            client.close()
    finally:
        for client in clients:
            client.abandon()
    assert proc.wait() == 0
    lines = proc.stdout
    parsed = [json.loads(line) for line in lines]  # each line whole: one object
    for uuid in uuids:
        mine = [r for r in parsed if r["call"] == uuid and "kind" in r]
        assert [(r["dir"], r["kind"]) for r in mine] == [(">", "uuid")] + [
            (">", "audio"),
            ("<", "audio"),
        ] * frames
    # Each call's own lines in the order it had them: its start first, its end last.
    for conn in {r["conn"] for r in parsed}:
        mine = [r for r in parsed if r["conn"] == conn]
        assert mine[0]["event"] == "call-start" and mine[-1]["event"] == "call-end"
        assert [r["t"] for r in mine] == sorted(r["t"] for r in mine)
    # Across calls and workers: the trace's Unix times (the same lines) never go back.
    with open(trace, "rb") as stream:
        kept = [r for r in read_records(stream, str(trace)) if r.message is not None]
    assert len(kept) == 8 * (1 + 2 * frames)
    stamps = [r.ts for r in kept]
    late = [(a, b) for a, b in zip(stamps, stamps[1:], strict=False) if b < a - 0.001]
    assert not late, late[:3]
    assert {r["worker"] for r in events(proc, "call-start")} <= {1, 2}


def test_human_display_on_a_terminal_shows_every_worker_s_calls(cli_env):
    """stdout a terminal: the parent's rich display, fed by both workers (each call's
    lines, its folded audio named by its UUID, as one process shows them)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--workers", "2"]
        + ["--echo", "--max-calls", "6"],
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**cli_env, "NO_COLOR": "1", "COLUMNS": "200"},
        text=True,
    )
    os.close(slave)
    shown = bytearray()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            shown.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert proc.stderr is not None
        port = int(proc.stderr.readline().rsplit(":", 1)[1])
        uuids = []
        for n in range(6):
            with AsteriskClient(("127.0.0.1", port)) as client:
                uuids.append(client.send_uuid())
                client.send_audio(pcm_for(600 + n, 0.1), paced=False)
                client.send(Message.dtmf("7"))
                assert client.wait_for(5, "audio")
                client.close()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        reader.join(5)
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    for uuid in uuids:
        short = uuid[:8]
        assert f"{short} > dtmf" in text and f"{short} - call-end caller-close" in text
        assert f"{short} - audio   > 5 frames  < 5 frames  8000 Hz" in text


# One budget


def test_max_calls_is_counted_across_workers(listen_procs):
    proc = listen_procs("--workers", "2", "--json", "--max-calls", "3")
    calls = [AsteriskClient(proc.address) for _ in range(3)]
    try:
        for client in calls:
            client.send_uuid()
        proc.wait_line(lambda line: proc.count(lambda x: '"kind": "uuid"' in x) == 3)
        extras = [AsteriskClient(proc.address) for _ in range(4)]
        for extra in extras:  # whichever worker took it, each refused at once
            assert extra.peer_closed.wait(5)
            extra.close()
        line = proc.wait_line(lambda x: "refused a caller" in x)
        assert "3 calls already (--max-calls 3)" in line
        for client in calls:
            client.close()
    finally:
        for client in calls:
            client.abandon()
    assert proc.wait() == 0
    assert len(events(proc, "call-start")) == 3 and len(events(proc, "call-end")) == 3


def test_max_concurrent_is_counted_across_workers(listen_procs):
    proc = listen_procs("--workers", "2", "--json", "--max-concurrent", "2", "--max-calls", "3")
    first = [AsteriskClient(proc.address) for _ in range(2)]
    try:
        for client in first:
            client.send_uuid()
        proc.wait_line(lambda line: proc.count(lambda x: '"kind": "uuid"' in x) == 2)
        for _ in range(6):
            with AsteriskClient(proc.address) as extra:
                assert extra.peer_closed.wait(5)  # closed at once, by either worker
        line = proc.wait_line(lambda x: "refused a caller" in x)
        assert "2 calls already (--max-concurrent 2)" in line
        first[0].close()
        proc.wait_line(lambda line: proc.count(lambda x: '"call-end"' in x) == 1)
        with AsteriskClient(proc.address) as third:  # room again, whichever worker
            third.send_uuid()
            proc.wait_line(lambda line: proc.count(lambda x: '"kind": "uuid"' in x) == 3)
            third.close()
        first[1].close()
    finally:
        for client in first:
            client.abandon()
    assert proc.wait() == 0
    assert len(events(proc, "call-end")) == 3


def test_one_exit_status_a_broken_call_in_either_worker_is_3(listen_procs):
    """Plain lines this time: whole ones, each call's in its order."""
    proc = listen_procs("--workers", "2", "--max-calls", "6")
    for i in range(5):
        call_with_audio(proc.address, 200 + i, 0.1)
    with socket.create_connection(proc.address) as garbage:
        garbage.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert proc.wait() == 3
    fields = [line.split(" ") for line in proc.stdout]
    assert all(float(f[0]) >= 0 and f[2] in "<>-" and len(f) >= 5 for f in fields)
    assert sum(f[2:4] == [">", "audio"] for f in fields) == 5 * 5
    ends = [f for f in fields if f[3] == "call-end"]
    assert len(ends) == 6 and sum(f[5] == "garbage" for f in ends) == 1


# Ends


@pytest.mark.parametrize(
    ("sig", "status", "how"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_signal_ends_every_call_with_whole_recordings(tmp_path, listen_procs, sig, status, how):
    proc = listen_procs("--workers", "2", "--json", "--record", str(tmp_path))
    clients = [AsteriskClient(proc.address) for _ in range(6)]
    sent = {}
    try:
        for n, client in enumerate(clients):
            uuid = client.send_uuid()
            sent[uuid] = pcm_for(300 + n, 0.3)
            client.send_audio(sent[uuid], paced=False)
        proc.wait_line(lambda line: proc.count(lambda x: '"kind": "audio"' in x) == 6 * 15)
        proc.proc.send_signal(sig)
        assert proc.wait() == status
        for client in clients:
            assert client.peer_closed.wait(5)
    finally:
        for client in clients:
            client.abandon()
    ends = events(proc, "call-end")
    assert len(ends) == 6 and {r["ended"] for r in ends} == {how}
    for uuid, pcm in sent.items():
        assert wav_bytes(tmp_path / f"{uuid}.wav") == (pcm, 8000)


def test_ctrl_c_on_a_terminal_reaches_every_process_and_ends_once(tmp_path, cli_env):
    """A terminal's Ctrl-C is sent to the whole process group: parent and workers get it
    at once. Each call ends once, `interrupted`, its recording whole; status 130."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--workers", "2"]
        + ["--json", "--record", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env,
        text=True,
        start_new_session=True,  # a group of its own, as a shell gives a foreground job
    )
    sent = {}
    clients = []
    try:
        assert proc.stderr is not None and proc.stdout is not None
        port = int(proc.stderr.readline().rsplit(":", 1)[1])
        for n in range(6):
            client = AsteriskClient(("127.0.0.1", port))
            clients.append(client)
            uuid = client.send_uuid()
            sent[uuid] = pcm_for(700 + n, 0.2)
            client.send_audio(sent[uuid], paced=False)
        seen = 0
        while seen < 6 * 10:  # every message shown: every call is going
            seen += '"kind": "audio"' in proc.stdout.readline()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        for client in clients:
            client.abandon()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert proc.returncode == 130, err
    ends = [json.loads(line) for line in out.splitlines() if '"call-end"' in line]
    assert sorted(e["call"] for e in ends) == sorted(sent)
    assert {e["ended"] for e in ends} == {"interrupted"}
    assert err.count("interrupted") == 1 and "Traceback" not in err
    for uuid, pcm in sent.items():
        assert wav_bytes(tmp_path / f"{uuid}.wav") == (pcm, 8000)


def test_parent_killed_ends_its_workers_and_their_calls(tmp_path, listen_procs):
    proc = listen_procs("--workers", "2", "--json", "--record", str(tmp_path))
    parent = proc.proc.pid
    pids = children(parent)
    assert len(pids) == 2
    clients = [AsteriskClient(proc.address) for _ in range(6)]
    sent = {}
    try:
        for n, client in enumerate(clients):
            uuid = client.send_uuid()
            sent[uuid] = pcm_for(400 + n, 0.2)
            client.send_audio(sent[uuid], paced=False)
        proc.wait_line(lambda line: proc.count(lambda x: '"kind": "audio"' in x) == 6 * 10)
        os.kill(parent, signal.SIGKILL)
        # The bounds tell "ends with its parent" from "lingers", generously: a busy
        # machine may take seconds to schedule the workers' exit.
        wait_until(lambda: not any(running(pid) for pid in pids), LINGER, "the workers end")
        for client in clients:  # no connection remains
            assert client.peer_closed.wait(LINGER)
    finally:
        for client in clients:
            client.abandon()
    with socket.socket() as probe:  # nor the port: nothing listens there any more
        assert probe.connect_ex(proc.address) != 0
    for uuid, pcm in sent.items():  # each call ended, its recording closed whole
        assert wav_bytes(tmp_path / f"{uuid}.wav") == (pcm, 8000)


def test_sigterm_to_a_worker_ends_it_and_its_calls(listen_procs):
    proc = listen_procs("--workers", "2", "--json", "--echo")
    pids = children(proc.proc.pid)
    with AsteriskClient(proc.address) as client:
        client.send_uuid()
        proc.wait_line(lambda line: '"kind": "uuid"' in line)
        worker = next(r["worker"] for r in events(proc, "call-start"))
        # Which process is worker 1 and which 2: the order they were started.
        victim = sorted(pids)[worker - 1]
        os.kill(victim, signal.SIGTERM)
        wait_until(lambda: not running(victim), LINGER, "the worker ends")
        assert client.peer_closed.wait(LINGER)
    end = proc.wait_line(lambda line: '"call-end"' in line)
    assert json.loads(end)["ended"] == "terminated"
    wait_until(lambda: any("worker" in line and "terminated" in line for line in proc.stderr), 5,
               "the parent says so")  # fmt: skip
    # The other worker goes on: calls are still served (the kernel sends them all to it).
    for _ in range(3):
        with AsteriskClient(proc.address) as client:
            client.send_uuid()
            client.send(Message.audio(bytes(320)))
            assert client.wait_for(1, "audio")
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 143


def test_a_worker_never_waits_for_a_parent_that_does_not_read(tmp_path, listen_procs):
    """The parent stopped (SIGSTOP): the workers drop output, said once on stderr, and
    the calls go on; once it reads again, the rest of the output comes."""
    trace = tmp_path / "calls.trace"
    proc = listen_procs("--workers", "2", "--json", "--echo", "--trace", str(trace))
    os.kill(proc.proc.pid, signal.SIGSTOP)
    try:
        with AsteriskClient(proc.address) as client:
            client.send_uuid()
            # Megabytes of output lines, far more than the pipe holds: the worker keeps
            # 8 MB of them (about 11,000 frames' worth), then drops and says so.
            for k in range(0, 40000, 500):
                client.send_audio(bytes(320 * 500), paced=False)
                assert client.wait_for(k + 500, "audio", timeout=10)  # echoed all the same
                if any("is not reading" in line for line in proc.stderr):
                    break
            client.send_audio(bytes(320 * 500), paced=False)  # and after the drop began
            assert client.wait_for(k + 1000, "audio", timeout=10)
            client.close()
        wait_until(lambda: any("is not reading" in line for line in proc.stderr), 5,
                   "a worker says it drops output")  # fmt: skip
    finally:
        os.kill(proc.proc.pid, signal.SIGCONT)
    # Reading again: the output comes again (what was dropped meanwhile is lost).
    with AsteriskClient(proc.address) as client:
        uuid = client.send_uuid()
        client.close()
    proc.wait_line(lambda line: '"call-end"' in line and uuid in line, timeout=10)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 143
    assert sum("is not reading" in line for line in proc.stderr) == 1


# Capture


def test_capture_with_two_workers_forwards_and_records(tmp_path, cli_env):
    from test_capture import Application, frames, wav_pcm

    def echo(sock: socket.socket) -> None:
        """Audio straight back; the caller's UUID message (19 bytes) is not."""
        head = b""
        while len(head) < 19 and (data := sock.recv(19 - len(head))):
            head += data
        while data := sock.recv(65536):
            sock.sendall(data)

    app = Application(echo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "audiosocket_cli", "capture", "127.0.0.1:0", "--upstream"]
        + [str(app.port), "--workers", "2", "--record", str(tmp_path), "--json"]
        + ["--max-calls", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("listening on 127.0.0.1:"), first
        port = int(first.rsplit(":", 1)[1])
        sent = {}
        for n in range(8):
            audio = frames(500 + n, 10)
            with AsteriskClient(("127.0.0.1", port)) as client:
                uuid = client.send_uuid()
                for frame in audio:
                    client.send(Message.audio(frame))
                assert client.wait_for(10, "audio")  # forwarded, and back
                assert [m.payload for m in client.messages("audio")] == audio
                client.close()
            sent[uuid] = b"".join(audio)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        app.join()
    assert proc.returncode == 0, err
    ends = [json.loads(line) for line in out.splitlines() if '"call-end"' in line]
    assert len(ends) == 8 and {e["ended"] for e in ends} == {"caller-close"}
    for uuid, pcm in sent.items():
        assert wav_pcm(tmp_path / f"{uuid}.in.wav") == (pcm, 8000)
        assert wav_pcm(tmp_path / f"{uuid}.out.wav") == (pcm, 8000)


# Where there are no worker processes, and what does not go with them


def test_without_so_reuseport_one_worker_serves_and_says_so(monkeypatch):
    monkeypatch.setattr(workers, "reuseport_available", lambda: False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def call() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with AsteriskClient(("127.0.0.1", port)) as client:
                    client.send_uuid()
                    client.close()
                return
            except OSError:
                time.sleep(0.02)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    result = CliRunner().invoke(
        cli, ["listen", f"127.0.0.1:{port}", "--workers", "2", "--max-calls", "1"]
    )
    caller.join(5)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == f"listening on 127.0.0.1:{port}"
    assert lines[1] == (
        "audiosocket: warning: --workers 2: SO_REUSEPORT is not available on this system;"
        " running one worker"
    )


@pytest.mark.parametrize("flag", [["--monitor"], ["--pcap", "x.pcap"]])
def test_one_worker_flags_are_refused_with_workers(flag):
    result = CliRunner().invoke(cli, ["listen", "--workers", "2", *flag])
    assert result.exit_code == 2
    assert f"{flag[0]} goes with one worker, not --workers 2" in result.stderr


def test_port_taken_is_exit_1_with_workers():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["listen", f"127.0.0.1:{port}", "--workers", "2"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"audiosocket: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_help_says_when_to_raise_workers():
    out = subprocess.run(
        [sys.executable, "-m", "audiosocket_cli", "listen", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    ).stdout
    words = " ".join(out.split())
    assert "--workers N" in words and "past a few hundred calls at once" in words


def test_budget_in_one_process_is_the_old_rule():
    budget = workers.Budget(max_calls=2, max_concurrent=1)
    assert budget.admit() == (1, 0, "")
    assert budget.admit() == (2, 1, "--max-concurrent 1")
    assert not budget.ended()
    assert budget.admit() == (3, 0, "")
    assert budget.full and budget.admit() == (4, 1, "--max-concurrent 1")
    assert budget.ended() and budget.done
    assert budget.refused == 2


def test_a_killed_workers_calls_count_as_ended():
    budget = workers.Budget(max_calls=3, max_concurrent=2, shared=True, workers=2)
    budget.worker = 1
    assert budget.admit()[2] == "" and budget.admit()[2] == ""
    budget.worker = 2
    assert budget.admit()[2] == "--max-concurrent 2"
    assert budget.lost(1) == 2  # worker 1 was killed with both its calls
    assert budget.admit() == (4, 0, "")
    assert budget.ended() and budget.done
