"""Live monitoring: tcpdump's capture piped, as it is written, into a reader.

`tcpdump -i lo -U -w - 'tcp port P' | audiosocket trace -` (plain and --json, and
through jq where it is installed) and `| tshark -X lua_script:... -i -`, run for real
while `audiosocket dial` calls `audiosocket listen`. Each must show a call's lines
while tcpdump is still running, not when its pipe closes. No clock is read for the
verdict: the test waits for lines, and looks at whether tcpdump is still there when
they have come.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from conftest import PYTHON, ROOT

LUA = ROOT / "audiosocket_cli" / "files" / "dissector.lua"
UUIDS = ("40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01", "5e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b")
# Limit on waiting for a line; reached only when something is broken.
DEADLINE = 30.0


def need_tcpdump() -> None:
    """Skipped without tcpdump and root, except in CI, which has them."""
    if shutil.which("tcpdump") is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("tcpdump and root are needed, and CI has them")
        pytest.skip("tcpdump is not installed or not root")


class Lines:
    """A pipe read as it is written: each whole line kept, waited for by content."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.lines: list[str] = []
        self.partial = b""
        self.ended = False

    def wait_for(self, wanted: Callable[[str], bool]) -> str:
        """The first line (already read or still to come) for which wanted() is true."""
        seen = 0
        deadline = time.monotonic() + DEADLINE
        with selectors.DefaultSelector() as selector:
            selector.register(self.fd, selectors.EVENT_READ)
            while True:
                for line in self.lines[seen:]:
                    if wanted(line):
                        return line
                seen = len(self.lines)
                if self.ended:
                    raise AssertionError(f"{self.name} ended without the line: {self.lines}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"no such line from {self.name}: {self.lines}")
                if selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    self._read()

    def rest(self) -> list[str]:
        """Every line, once the writer has closed the pipe."""
        while not self.ended:
            self._read()
        return self.lines

    def _read(self) -> None:
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.ended = True
            return
        *whole, self.partial = (self.partial + chunk).split(b"\n")
        self.lines += [line.decode(errors="replace") for line in whole]


def _stderr_line(proc: subprocess.Popen[bytes], wanted: str) -> str:
    assert proc.stderr is not None
    return Lines(proc.stderr.fileno(), str(proc.args)).wait_for(lambda line: wanted in line)


class Live:
    """The running pipe: the port `listen` answers on, tcpdump, and the readers."""

    def __init__(
        self,
        port: int,
        dump: subprocess.Popen[bytes],
        readers: list[subprocess.Popen[bytes]],
        env: dict[str, str],
    ) -> None:
        self.port = port
        self.dump = dump
        self.readers = readers
        self.env = env

    def call(self, uuid: str, digits: str) -> None:
        """One call from `dial`: a tone for 1 s, DTMF at 0.5 s, then it closes."""
        proc = subprocess.run(
            [PYTHON, "-m", "audiosocket_cli", "dial", f"127.0.0.1:{self.port}", uuid,
             "--tone", "440", "--duration", "1", "--dtmf", f"{digits}@0.5", "-q"],
            capture_output=True, text=True, timeout=60, env=self.env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    def still_running(self) -> bool:
        return self.dump.poll() is None and all(r.poll() is None for r in self.readers)

    def stop(self) -> None:
        """Ctrl-C to tcpdump: its pipe closes, and each reader ends at that end of input."""
        self.dump.send_signal(signal.SIGINT)
        assert self.dump.wait(timeout=DEADLINE) == 0


@contextmanager
def live_pipe(*readers: list[str], env: dict[str, str]) -> Iterator[tuple[Live, list[Lines]]]:
    """`listen --echo` on a free port, tcpdump on lo for that port writing to its
    stdout, piped into each reader command in turn; the last one's stdout is read."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        listen = subprocess.Popen(
            [PYTHON, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--echo", "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        procs.append(listen)
        port = int(_stderr_line(listen, "listening on ").split()[-1].rsplit(":", 1)[1])
        # As the docs have it (-U: each packet written at once), on lo.
        dump = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-U", "-w", "-", f"tcp port {port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        procs.append(dump)
        upstream = dump.stdout
        for command in readers:
            stage = subprocess.Popen(
                [arg.replace("{port}", str(port)) for arg in command],
                stdin=upstream, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            )  # fmt: skip
            procs.append(stage)
            assert upstream is not None
            upstream.close()  # the stage holds it now: its end is the writer's end
            upstream = stage.stdout
        assert upstream is not None
        # tcpdump says so once its filter is on the socket: every packet after is captured.
        if "listening on" not in _stderr_line(dump, "listening on"):
            pytest.skip("tcpdump cannot capture on lo")
        yield Live(port, dump, procs[2:], env), [Lines(upstream.fileno(), str(readers[-1]))]
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)


def test_trace_shows_calls_while_tcpdump_runs(cli_env: dict[str, str]) -> None:
    """tcpdump ... -w - | audiosocket trace -"""
    need_tcpdump()
    trace = [PYTHON, "-m", "audiosocket_cli", "trace", "-"]
    with live_pipe(trace, env=cli_env) as (live, (lines,)):
        for uuid, digits in zip(UUIDS, ("12", "3"), strict=True):
            live.call(uuid, digits)
            end = lines.wait_for(lambda line, u=uuid: f" {u[:8]} - call-end " in line)
            # The call's last line came through the pipe, and tcpdump still captures.
            assert live.still_running(), end
            assert "caller-close" in end
        live.stop()
        everything = lines.rest()
        assert live.readers[0].wait(timeout=DEADLINE) == 0
    for uuid, digits in zip(UUIDS, ("12", "3"), strict=True):
        assert sum(f" > uuid 16 uuid={uuid}" in line for line in everything) == 1
        mine = [line for line in everything if f" {uuid[:8]} " in line]
        assert [line.split()[-1] for line in mine if " > dtmf " in line] == [
            f"digit={d}" for d in digits
        ]
        assert sum(" > audio " in line for line in mine) >= 40
        assert sum(" < audio " in line for line in mine) >= 40


def test_trace_json_shows_calls_while_tcpdump_runs(cli_env: dict[str, str]) -> None:
    """tcpdump ... -w - | audiosocket trace --json -"""
    need_tcpdump()
    trace = [PYTHON, "-m", "audiosocket_cli", "trace", "--json", "-"]
    with live_pipe(trace, env=cli_env) as (live, (lines,)):
        live.call(UUIDS[0], "12")

        def call_end(line: str) -> bool:
            record = json.loads(line)
            return record.get("event") == "call-end" and record["call"] == UUIDS[0]

        end = json.loads(lines.wait_for(call_end))
        assert live.still_running()
        assert end["ended"] == "caller-close" and end[">"]["dtmf"] == "12"
        live.stop()
        records = [json.loads(line) for line in lines.rest()]
    assert [r["digit"] for r in records if r.get("kind") == "dtmf"] == ["1", "2"]


def test_trace_json_through_jq_while_tcpdump_runs(cli_env: dict[str, str]) -> None:
    """tcpdump ... -w - | audiosocket trace --json - | jq --unbuffered -c 'select(...)'"""
    need_tcpdump()
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed")
    trace = [PYTHON, "-m", "audiosocket_cli", "trace", "--json", "-"]
    select = [jq, "--unbuffered", "-c", 'select(.kind == "dtmf") | {call, t, digit}']
    with live_pipe(trace, select, env=cli_env) as (live, (lines,)):
        live.call(UUIDS[0], "12")
        second = json.loads(lines.wait_for(lambda line: '"digit":"2"' in line))
        assert live.still_running()
        assert second["call"] == UUIDS[0]
        live.stop()
        digits = [json.loads(line)["digit"] for line in lines.rest()]
    assert digits == ["1", "2"]


def test_tshark_with_the_dissector_shows_calls_while_tcpdump_runs(
    cli_env: dict[str, str],
) -> None:
    """tcpdump ... -w - | tshark -X lua_script:audiosocket.lua -l -i - -Y audiosocket"""
    need_tcpdump()
    tshark = shutil.which("tshark")
    if tshark is None:
        if os.environ.get("CI"):
            pytest.fail("tshark is not installed, and CI should have installed it")
        pytest.skip("tshark is not installed (apt-get install tshark)")
    command = [
        tshark, "-n", "-l", "-X", f"lua_script:{LUA}", "-o", "audiosocket.port:{port}",
        "-i", "-", "-Y", "audiosocket",
    ]  # fmt: skip
    with live_pipe(command, env=cli_env) as (live, (lines,)):
        live.call(UUIDS[0], "12")
        digit = lines.wait_for(lambda line: "> dtmf 2" in line)
        assert live.still_running(), digit
        assert lines.wait_for(lambda line: f"> uuid {UUIDS[0]}" in line)

        def echoed(_: str) -> bool:
            # The Info column folds a packet's equal messages: "..., 160 samples x2".
            found = re.findall(r"< audio 8000 Hz, 160 samples(?: x(\d+))?", "\n".join(lines.lines))
            return sum(int(n or 1) for n in found) >= 40

        lines.wait_for(echoed)
        assert live.still_running()
        live.stop()


def test_docs_show_the_live_commands() -> None:
    """The commands these tests run are the ones the README and docs/wireshark.md give."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    guide = (ROOT / "docs" / "wireshark.md").read_text(encoding="utf-8")
    pipe = "tcpdump -i any -U -w - 'tcp port 9092' | audiosocket trace -"
    for text in (readme, guide):
        assert pipe in text
        assert "audiosocket trace --json - | jq --unbuffered" in text
    assert "| wireshark -X lua_script:audiosocket.lua -k -i -" in guide
    assert "| tshark -X lua_script:audiosocket.lua -l -i - -Y audiosocket" in guide
