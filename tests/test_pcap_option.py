"""--pcap on listen, dial, play, capture and replay: real calls written as captures.

Each pcap is checked four ways: `audiosocket trace --json` reads back the
messages the command itself showed (its own --json); tshark with the
dissector lists the same, field by field; tshark's TCP analysis finds
nothing wrong, with one TCP connection per call from SYN to FIN or RST; and
`audiosocket replay FILE.pcap` runs the call again against `listen --echo`.
Also: a reset written as an RST, a bad target (one line, exit 1, no call),
and a write error mid-call (one warning, the call goes on).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dpkt
import pytest
from asterisk_client import AsteriskClient
from conftest import PYTHON, ROOT, SAMPLES
from test_dissector import LUA, _wait_for_line, assert_same_messages, dissected, need_tshark
from test_pcap_writer import FIN, PROBLEMS, RST, SYN, Packet, check_connection, packets

from audiosocket_cli.protocol.wire import Message

UUID = "40325ec2-5bd7-4a4e-9a2c-6a4f6d3b1c01"
TIMEOUT = 30
# What a message is, in a command's --json and in trace --json alike (not its time).
FIELDS = ("dir", "kind", "type", "len", "uuid", "digit", "rate", "code", "level_dbfs")
# Ephemeral ports may be claimed by some Wireshark dissector: the UUID heuristic first.
HEURISTIC_FIRST = ("-o", "tcp.try_heuristic_first:TRUE")


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "audiosocket_cli", *args],
        capture_output=True, text=True, timeout=TIMEOUT, env=env,
    )  # fmt: skip


def records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def messages(recs: list[dict[str, Any]], conn: int | None = None) -> list[dict[str, Any]]:
    return [r for r in recs if "kind" in r and (conn is None or r["conn"] == conn)]


def ends(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in recs if r.get("event") == "call-end"]


def essence(message: dict[str, Any]) -> dict[str, Any]:
    return {k: message[k] for k in FIELDS if k in message}


class Started:
    """A `listen` or `capture` subprocess, its port once it says it listens."""

    def __init__(self, *args: str, env: dict[str, str], stdout: Any = subprocess.PIPE) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "audiosocket_cli", *args],
            stdout=stdout, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        line = _wait_for_line(self.proc, "listening on ")
        assert line.startswith("listening on "), (line, self.proc.args)
        self.port = int(line.rsplit(":", 1)[1])
        self.address = f"127.0.0.1:{self.port}"

    def result(self) -> tuple[int, list[dict[str, Any]], str]:
        """Once it ended by itself (--max-calls): exit status, --json records, stderr."""
        out, err = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode, records(out.decode()), err.decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def echo() -> Iterator[Started]:
    """`listen --echo`, the application every pcap here is replayed against."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    server = Started("listen", "127.0.0.1:0", "--echo", "-q", env=env, stdout=subprocess.DEVNULL)
    yield server
    server.stop()


def streams(path: Path) -> list[list[Packet]]:
    """The file's packets, one list per TCP connection, in the order they started."""
    out: dict[frozenset[tuple[str, int]], list[Packet]] = {}
    for p in packets(path):
        out.setdefault(frozenset((p.src, p.dst)), []).append(p)
    return list(out.values())


def check_pcap(
    path: Path,
    shown: list[dict[str, Any]],
    cli_env: dict[str, str],
    *,
    calls: int = 1,
    ended: list[str | tuple[str, ...]] | None = None,
    warnings: int = 0,
    status: int = 0,
) -> list[dict[str, Any]]:
    """The four-way check of a --pcap file against what its command showed (--json
    records of all its calls); returns trace --json's records of the file."""
    # 1. trace reads the same calls back: the same messages each way, the same endings.
    proc = run("trace", "--json", str(path), env=cli_env)
    assert proc.returncode == status, proc.stderr
    traced = records(proc.stdout)
    assert len([r for r in traced if r.get("event") == "warning"]) == warnings, traced
    assert len(ends(traced)) == calls
    for conn in range(1, calls + 1):
        for direction in "><":
            want = [essence(m) for m in messages(shown, conn) if m["dir"] == direction]
            got = [essence(m) for m in messages(traced, conn) if m["dir"] == direction]
            assert got == want, f"call {conn} {direction}"
            # Real times: each packet's, from the SYN, is within a blink of the command's own.
            times = [
                (m["t"], n["t"])
                for m, n in zip(messages(shown, conn), messages(traced, conn), strict=True)
            ]
            assert max(abs(a - b) for a, b in times) < 0.5, times
        end, original = ends(traced)[conn - 1], ends(shown)[conn - 1]
        for direction in "><":
            for key in ("messages", "bytes", "kinds", "audio_seconds", "rates", "dtmf"):
                assert end[direction][key] == original[direction][key], (conn, direction, key)
    if ended is not None:
        for end, wanted in zip(ends(traced), ended, strict=True):
            assert end["ended"] in ((wanted,) if isinstance(wanted, str) else wanted)
    # 2. tshark and the dissector list the same messages, field by field.
    need_tshark()
    dissection = dissected(path, *HEURISTIC_FIRST)
    for direction in "><":
        assert_same_messages(
            [m for m in dissection if m["dir"] == direction],
            [m for m in messages(shown) if m["dir"] == direction],
        )
    assert [m for m in dissection if "malformed" in m["experts"]] == []
    # 3. TCP as it should be: nothing flagged, one connection per call, SYN to FIN or RST.
    assert tshark_problems(path) == ""
    connections = streams(path)
    assert len(connections) == calls
    for pkts in connections:
        check_connection(pkts)
        assert pkts[0].flags == SYN
        if not pkts[-1].flags & RST:  # else both FINs, then the last ACK
            assert [p.flags & (FIN | RST) for p in pkts[-3:]] == [FIN, FIN, 0]
    return traced


def tshark_problems(path: Path) -> str:
    """What tshark's two-pass TCP analysis (checksums too) finds wrong, AudioSocket decoded.

    As test_pcap_writer's, with the dissector: otherwise a dissector that claims an
    ephemeral port (Q.931...) may warn about bytes that are not its protocol.
    """
    proc = subprocess.run(
        [need_tshark(), "-n", "-2", "-X", f"lua_script:{LUA}", *HEURISTIC_FIRST, "-r", str(path),
         "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
         "-o", "tcp.analyze_sequence_numbers:TRUE", "-Y", PROBLEMS],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def replays(path: Path, echo: Started, cli_env: dict[str, str], *args: str) -> dict[str, Any]:
    """4. `replay FILE.pcap` against listen --echo: exit 0; its call-end."""
    proc = run("replay", str(path), echo.address, "--speed", "0", "--linger", "0.3",
               "--json", *args, env=cli_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (end,) = ends(records(proc.stdout))
    return end


def test_listen(tmp_path: Path, cli_env: dict[str, str], echo: Started) -> None:
    pcap = tmp_path / "listen.pcap"
    listen = Started("listen", "127.0.0.1:0", "--echo", "--max-calls", "2", "--json",
                     "--pcap", str(pcap), env=cli_env)  # fmt: skip
    try:
        call = run("dial", listen.address, UUID, "--tone", "440", "--duration", "0.4",
                   "--dtmf", "12#@0.2", "-q", env=cli_env)  # fmt: skip
        assert call.returncode == 0, call.stderr
        with AsteriskClient(("127.0.0.1", listen.port)) as client:
            client.send_uuid()
            client.send_audio(bytes(960), paced=False)
            client.hangup()
        status, shown, err = listen.result()
    finally:
        listen.stop()
    assert status == 0, err
    assert [e["ended"] for e in ends(shown)] == ["caller-close", "caller-hangup"]
    # A capture ends as TCP did: after the caller's hangup, listen closed first.
    traced = check_pcap(pcap, shown, cli_env, calls=2, ended=["caller-close", "caller-hangup"])
    assert messages(traced, 1)[0]["uuid"] == UUID
    assert "".join(m.get("digit", "") for m in messages(traced, 1)) == "12#"
    # The caller closed first: its FIN opens the close. A hangup: listen closes first.
    first, second = streams(pcap)
    client = first[0].src
    assert (first[-3].src, first[-3].flags & FIN) == (client, FIN)
    assert (second[-3].src, second[-3].flags & FIN) == (second[0].dst, FIN)
    # The real connection: the peer and port listen itself showed.
    assert f"{client[0]}:{client[1]}" == ends(shown)[0]["peer"]
    assert first[0].dst == ("127.0.0.1", listen.port)
    end = replays(pcap, echo, cli_env, "--call", "#1")
    assert end["same"] is True and end[">"]["dtmf"] == "12#"


def test_dial_and_play(tmp_path: Path, cli_env: dict[str, str], echo: Started) -> None:
    dial_pcap, play_pcap = tmp_path / "dial.pcap", tmp_path / "play.pcap"
    dial = run("dial", echo.address, UUID, "--tone", "440", "--duration", "0.4", "--rate", "16000",
               "--dtmf", "7@0.1", "--json", "--pcap", str(dial_pcap), env=cli_env)  # fmt: skip
    assert dial.returncode == 0, dial.stderr
    shown = records(dial.stdout)
    check_pcap(dial_pcap, shown, cli_env, ended=["caller-close"])
    # Each send is its own packet: every packet dial sent is one whole message.
    (pkts,) = streams(dial_pcap)
    ours = [p.data for p in pkts if p.src == pkts[0].src and p.data]
    assert [3 + m["len"] for m in messages(shown) if m["dir"] == ">"] == [len(d) for d in ours]
    times = [p.ts - pkts[0].ts for p in pkts if p.src == pkts[0].src and p.data]
    assert all(b >= a for a, b in zip(times, times[1:], strict=False))
    end = replays(dial_pcap, echo, cli_env)
    assert end["same"] is True and end[">"]["rates"] == {"16000": 20}

    play = run("play", str(SAMPLES / "hello-8k.wav"), echo.address, "--speed", "0",
               "--linger", "0.3", "--end", "hangup", "--json", "--pcap", str(play_pcap),
               env=cli_env)  # fmt: skip
    assert play.returncode == 0, play.stderr
    shown = records(play.stdout)
    check_pcap(play_pcap, shown, cli_env, ended=["caller-hangup"])  # our hangup, then our FIN
    end = replays(play_pcap, echo, cli_env)
    assert end["same"] is True and end["ended"] == "caller-hangup"


def test_capture_keeps_the_leg_asterisk_saw(
    tmp_path: Path, cli_env: dict[str, str], echo: Started
) -> None:
    pcap = tmp_path / "capture.pcap"
    capture = Started("capture", "127.0.0.1:0", "--upstream", echo.address, "--max-calls", "1",
                      "--json", "--pcap", str(pcap), env=cli_env)  # fmt: skip
    try:
        call = run("dial", capture.address, UUID, "--tone", "300", "--duration", "0.4",
                   "--dtmf", "9@0.2", "--json", env=cli_env)  # fmt: skip
        assert call.returncode == 0, call.stderr
        status, shown, err = capture.result()
    finally:
        capture.stop()
    assert status == 0, err
    check_pcap(pcap, shown, cli_env, ended=["caller-close"])
    # Asterisk's side of the connection, as dial (Asterisk here) saw it.
    (pkts,) = streams(pcap)
    assert pkts[0].dst == ("127.0.0.1", capture.port) and pkts[0].src[1] != echo.port
    called = [essence(m) for m in messages(records(call.stdout))]
    assert [essence(m) for m in messages(shown)] != [] and sorted(
        called, key=lambda m: m["dir"]
    ) == sorted((essence(m) for m in messages(shown)), key=lambda m: m["dir"])
    end = replays(pcap, echo, cli_env)
    assert end["same"] is True


def test_replay(tmp_path: Path, cli_env: dict[str, str], echo: Started) -> None:
    pcap = tmp_path / "replay.pcap"
    proc = run("replay", str(SAMPLES / "call.trace"), echo.address, "--speed", "0",
               "--linger", "0.3", "--json", "--pcap", str(pcap), env=cli_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    shown = records(proc.stdout)
    check_pcap(pcap, shown, cli_env)
    end = replays(pcap, echo, cli_env)
    assert end["same"] is True
    # Writing over the file being replayed is refused before anything happens.
    again = run("replay", str(pcap), echo.address, "--pcap", str(pcap), env=cli_env)
    assert again.returncode == 2 and "--pcap would overwrite TRACE" in again.stderr


def test_resets_are_written_as_rst(tmp_path: Path, cli_env: dict[str, str]) -> None:
    pcap = tmp_path / "reset.pcap"
    listen = Started("listen", "127.0.0.1:0", "--max-calls", "2", "--json",
                     "--pcap", str(pcap), env=cli_env)  # fmt: skip
    try:
        for cut in (False, True):
            client = AsteriskClient(("127.0.0.1", listen.port), receive=False)
            client.send_uuid()
            client.send_audio(bytes(640), paced=False)
            if cut:
                client.send_raw(Message.audio(bytes(320)).encode()[:100])  # inside a message
            client.reset()
        status, shown, err = listen.result()
    finally:
        listen.stop()
    assert status == 3, err  # a stream cut inside a message broke the protocol
    endings = [e["ended"] for e in ends(shown)]
    assert endings == ["caller-reset", "truncated"]
    # The file's reader names it as listen did, warns of the cut, and exits 3 for it.
    check_pcap(
        pcap, shown, cli_env, calls=2, ended=["caller-reset", "truncated"], warnings=1, status=3
    )
    for pkts in streams(pcap):
        # The caller's RST ends each connection, and nothing follows it.
        assert (pkts[-1].src, pkts[-1].flags & RST) == (pkts[0].src, RST)
        assert not any(p.flags & FIN for p in pkts)


@pytest.mark.parametrize(
    ("target", "words"),
    [("/dev/full", "No space left on device"), ("/no/such/dir/x.pcap", "No such file")],
)
def test_bad_target_is_one_line_and_no_call(
    target: str, words: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as app:
        port = str(app.getsockname()[1])
        commands = [
            ["dial", port, "--no-audio"],
            ["play", str(SAMPLES / "hello-8k.wav"), port],
            ["replay", str(SAMPLES / "call.trace"), port],
            ["listen", "127.0.0.1:0", "--max-calls", "1"],
            ["capture", "127.0.0.1:0", "--upstream", port, "--max-calls", "1"],
        ]
        for command in commands:
            proc = run(*command, "--pcap", target, env=cli_env)
            assert proc.returncode == 1, (command, proc.stderr)
            assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("audiosocket: error:")
            assert target in proc.stderr and words in proc.stderr, proc.stderr
            assert "listening on" not in proc.stderr
        app.settimeout(0.01)
        with pytest.raises(TimeoutError):
            app.accept()  # no call was made


def _limit_files(size: int):  # type: ignore[no-untyped-def]
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


def test_a_write_error_warns_once_and_the_call_goes_on(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    pcap = tmp_path / "full.pcap"
    limit = 20_000
    proc = subprocess.Popen(
        [PYTHON, "-m", "audiosocket_cli", "listen", "127.0.0.1:0", "--echo", "--max-calls", "1",
         "--json", "--pcap", str(pcap)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env,
        preexec_fn=_limit_files(limit),
    )  # fmt: skip
    try:
        line = _wait_for_line(proc, "listening on ")
        port = int(line.rsplit(":", 1)[1])
        with AsteriskClient(("127.0.0.1", port)) as client:
            client.send_uuid()
            client.send_audio(bytes(320), paced=False)
            assert client.wait_for(1, "audio", timeout=TIMEOUT)  # in the file, before the limit
            client.send_audio(bytes(32000), paced=False)  # 2 s more, 100 messages each way
            client.close()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, err
    text = err.decode()
    assert text.count("cannot write") == 1, text
    assert f"warning: {pcap}: cannot write: " in text
    # The OS's reason, or (pcap_writer: a write the limit cut short) how short it was.
    assert "File too large" in text or "short write" in text
    (end,) = ends(records(out.decode()))
    assert end["ended"] == "caller-close" and end[">"]["audio_seconds"] == 2.02
    # Whole packets up to the limit; trace reads it (the call's end is not in it).
    pkts = packets(pcap)
    assert pcap.stat().st_size <= limit
    check_connection(pkts)
    assert [len(p.data) for p in pkts[3:5]] == [19 + 323, 323] or [
        len(p.data) for p in pkts[3:6]
    ] == [19, 323, 323]
    with open(pcap, "rb") as stream:
        assert len(list(dpkt.pcap.Reader(stream))) == len(pkts)
