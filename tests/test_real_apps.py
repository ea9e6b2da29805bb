"""The voice-agent-like applications of tests/real_apps.py behave as they say.

Each app is a real process; each test calls it with a tiny raw-socket caller
(connect, the UUID in one write, 20 ms frames on a drift-free clock) and
reads what comes back, and the app's own stderr lines. Timing assertions are
on figures that do not depend on a quiet machine: the app's frame count over
a long span, the median of many gaps, or a delay against a bound far from it.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from real_apps import RealApp, real_app

from audiosocket_cli.analysis.levels import level_dbfs
from audiosocket_cli.protocol.wire import Decoder, Kind, Message

FRAME = 0.020

pytestmark = pytest.mark.timeout(60)

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None and not os.environ.get("CI"),
    reason="espeak-ng is not installed (apt-get install espeak-ng)",
)


def tone(k: int, rate: int = 8000, dbfs: float = -20.0) -> bytes:
    """Frame k of a 440 Hz tone at `dbfs` RMS; its first sample is k, to know an echo by."""
    n = rate // 50
    t = (k * n + np.arange(n)) / rate
    samples = np.round(10 ** (dbfs / 20) * 32768 * np.sqrt(2) * np.sin(2 * np.pi * 440 * t))
    samples[0] = k % 32768
    return samples.astype("<i2").tobytes()


def mark(message: Message) -> int:
    """The frame number a `tone` frame carries."""
    return int(struct.unpack_from("<h", message.payload)[0])


class Caller:
    """A tiny Asterisk: connects, sends the UUID in one write, reads in a thread."""

    def __init__(self, app: RealApp, call_uuid: uuid.UUID | None = None, send_uuid: bool = True):
        self.uuid = call_uuid or uuid.uuid4()
        self.sock = socket.create_connection((app.address.host, app.port), timeout=2)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_port: int = self.sock.getsockname()[1]
        self.received: list[tuple[float, Message]] = []
        self.sent_at: list[float] = []  # when each streamed frame k was sent
        self.ended = threading.Event()
        self.end_how = ""
        self._stop = threading.Event()
        self._closing = False
        self.started = time.monotonic()
        if send_uuid:
            self.send(Message.for_uuid(self.uuid))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def send(self, message: Message) -> None:
        self.sock.sendall(message.encode())

    def _read(self) -> None:
        decoder = Decoder()
        while not self._closing:
            # Never blocked in recv when close() runs: a socket closed under a blocked recv is
            # released (its FIN or RST sent) only once that recv returns.
            if not select.select([self.sock], [], [], 0.02)[0]:
                continue
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                self.end_how = "reset"
                break
            except OSError:
                self.end_how = self.end_how or "closed-here"
                break
            if not data:
                self.end_how = "eof"
                break
            now = time.monotonic()
            decoder.feed(data)
            self.received.extend((now, m) for m in decoder.messages())
        self.ended.set()

    def stream(self, source: Callable[[int], Message]) -> None:
        """source(k) at start + k x 20 ms, in a thread, until stop() or the connection fails."""

        def run() -> None:
            start = time.monotonic()
            k = 0
            while not self._stop.wait(max(0.0, start + k * FRAME - time.monotonic())):
                message = source(k)
                try:
                    sent = time.monotonic()
                    self.send(message)
                except OSError:
                    return
                self.sent_at.append(sent)
                k += 1

        threading.Thread(target=run, daemon=True).start()

    def audio(self) -> list[tuple[float, Message]]:
        return [(t, m) for t, m in list(self.received) if m.is_audio]

    def half_close(self) -> None:
        """FIN, as Asterisk's close, keeping our socket to see what the app does."""
        self._stop.set()
        self.sock.shutdown(socket.SHUT_WR)

    def close(self, reset: bool = False) -> None:
        self._stop.set()
        self._closing = True
        self._reader.join(1)
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def reset(self) -> None:
        """Close with a real RST (SO_LINGER 0)."""
        self.close(reset=True)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def seconds_at(line: str | None) -> float:
    """T of a line `... at T call=N`."""
    assert line is not None
    found = re.search(r" at (\d+\.\d+)", line)
    assert found, line
    return float(found.group(1))


def tcp_state(local_port: int, remote_port: int) -> str | None:
    """The state (hex, as /proc/net/tcp shows it) of the connection between these ports."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if int(local, 16) == local_port and int(remote, 16) == remote_port:
            return fields[3]
    return None


def http(app: RealApp, method: str, path: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{app.http_port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_started_as_a_command_and_ended_by_sigterm() -> None:
    with real_app("crashy") as app:
        assert re.fullmatch(r"listening on 127\.0\.0\.1:\d+", app.lines()[0])
        assert app.port > 0 and app.alive()
        caller = Caller(app)
        assert app.wait_line("uuid ", 2) == f"uuid {caller.uuid} call=1"
        app.proc.terminate()
        assert app.proc.wait(2) == -signal.SIGTERM
        assert caller.ended.wait(2)  # the kernel closed the connection


@needs_espeak
def test_slow_greeter_greets_late_then_takes_turns() -> None:
    with real_app("slow-greeter", greet_after=0.6, reply_after=0.3) as app:
        caller = Caller(app)
        talking = {"until": 0.0}
        tone_sent: list[float] = []

        def source(k: int) -> Message:  # 16 kHz, silent but for our turn
            if time.monotonic() < talking["until"]:
                tone_sent.append(time.monotonic())
                return Message.audio(tone(k, 16000), 16000)
            return Message.audio(bytes(640), 16000)

        caller.stream(source)
        assert app.wait_line("greeting done", 5), app.log()
        time.sleep(0.1)
        greeting = caller.audio()
        assert 0.6 <= greeting[0][0] - caller.started < 1.2
        assert 1.5 <= sum(m.duration for _, m in greeting) <= 2.5
        assert {m.kind for _, m in greeting} == {Kind.AUDIO_16K}  # the caller's rate
        assert max(level_dbfs(m.payload) or -99 for _, m in greeting) > -30  # speech

        talking["until"] = time.monotonic() + 0.5  # our turn: 0.5 s of a -20 dBFS tone
        assert wait_for(lambda: len(caller.audio()) > len(greeting), 4), app.log()
        reply_at = caller.audio()[len(greeting)][0]
        # Silent while we spoke; the reply 600 ms (quiet) + 300 ms (thinking) after our turn.
        assert 0.85 <= reply_at - tone_sent[-1] <= 1.8
        assert app.wait_line("turn end at", 1) and app.wait_line("reply at", 1)


def pacing(audio: list[tuple[float, Message]]) -> tuple[float, list[tuple[int, float]], float]:
    """(the median gap between frames, [(frame index, gap)] of gaps over 100 ms, and audio
    seconds per wall second over the whole span).

    The median is the sender's interval whatever a busy machine does to a few gaps (a late
    frame, then a drift-free sender's catching up); the span holds the time really lost.
    """
    times = [t for t, _ in audio]
    gaps = np.diff(times)
    stalls = [(i + 1, float(g)) for i, g in enumerate(gaps) if g > 0.1]
    return float(np.median(gaps)), stalls, (len(times) - 1) * FRAME / (times[-1] - times[0])


@needs_espeak
def test_tts_is_slow_and_stalls_unless_told_not_to() -> None:
    with real_app("tts") as slow, real_app("tts", slow=0, stall=0) as steady:
        late, even = Caller(slow), Caller(steady)
        time.sleep(3.2)
        late_audio, even_audio = late.audio(), even.audio()

    assert 0.3 <= late_audio[0][0] - late.started < 0.8  # --first-after
    interval, stalls, ratio = pacing(late_audio)
    assert 0.0204 <= interval <= 0.0212  # 20 ms x 1.04
    stall = dict(stalls).get(75)  # after 1.5 s of audio: 150 ms lost, never caught up
    assert stall is not None and 0.14 <= stall <= 0.4, stalls
    assert 0.80 <= ratio <= 0.95  # 1 / 1.04, less the stall
    levels = [level_dbfs(m.payload) for _, m in late_audio]
    assert any(v is not None and v > -30 for v in levels) and None in levels  # speech, pauses

    interval, stalls, ratio = pacing(even_audio)
    assert 0.0196 <= interval <= 0.0204
    assert 0.95 <= ratio <= 1.05


def test_limited_serves_four_calls_at_once() -> None:
    with real_app("limited", max=4, serve_delay=0.05) as app:
        callers = [Caller(app) for _ in range(6)]
        for caller in callers:
            caller.stream(lambda k: Message.audio(tone(k), 8000))
        assert wait_for(lambda: sum(bool(c.audio()) for c in callers) >= 4, 3), app.log()
        time.sleep(0.3)
        served = [c for c in callers if c.audio()]
        waiting = [c for c in callers if not c.audio()]
        assert len(served) == 4 and len(waiting) == 2
        assert len(app.lines("waiting for a slot")) == 2
        for caller in served:
            trips = [t - caller.sent_at[mark(m)] for t, m in caller.audio()]
            assert 0.045 <= statistics.median(trips) <= 0.2  # --serve-delay

        sent_before = {id(c): len(c.sent_at) for c in waiting}
        served[0].close()  # a slot frees: one waiting call is served from then on
        assert wait_for(lambda: any(c.audio() for c in waiting), 2), app.log()
        time.sleep(0.3)
        now_served = [c for c in waiting if c.audio()]
        assert len(now_served) == 1
        newcomer = now_served[0]
        assert mark(newcomer.audio()[0][1]) >= sent_before[id(newcomer)]  # the backlog dropped
        assert app.wait_line("discarded ", 1)
        assert app.wait_line(f"uuid {newcomer.uuid}", 1)


@pytest.mark.parametrize("die_on", ["16k", "dtmf", "reset", "never"])
def test_crashy_dies_on_its_trigger(die_on: str) -> None:
    with real_app("crashy", die_on=die_on) as app:
        caller = Caller(app)
        caller.stream(lambda k: Message.audio(tone(k), 8000))
        assert wait_for(lambda: len(caller.audio()) >= 5, 2)  # a well-behaved echo so far
        if die_on == "reset":
            caller.reset()
        else:
            caller.send(Message.audio(bytes(640), 16000))
            caller.send(Message.dtmf("5"))
        if die_on == "never":
            caller.reset()
            time.sleep(0.3)
            assert app.alive()
            after = Caller(app)
            after.stream(lambda k: Message.audio(tone(k), 8000))
            assert wait_for(lambda: len(after.audio()) >= 3, 2)
            return
        assert app.proc.wait(3) == 1
        assert app.wait_line("died: ", 1)
        if die_on != "reset":
            assert caller.ended.wait(2)  # the kernel closed our connection
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", app.port), timeout=1).close()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_gated_serves_registered_calls_and_leaks_the_others() -> None:
    with real_app("gated") as app:
        assert app.http_port
        known = uuid.uuid4()
        assert http(app, "POST", f"/calls/{known}") == 201
        assert http(app, "GET", f"/calls/{known}") == 404
        assert http(app, "POST", "/calls/not-a-uuid") == 404
        assert http(app, "POST", "/other") == 404
        served = Caller(app, known)
        assert wait_for(lambda: app.lines(f"serving {known}") != [], 2)
        again = Caller(app, known)  # a registration is used once
        stranger = Caller(app)
        no_uuid = Caller(app, send_uuid=False)
        callers = [served, again, stranger, no_uuid]
        for caller in callers:
            caller.stream(lambda k: Message.audio(tone(k), 8000))
        assert wait_for(lambda: len(served.audio()) >= 5, 2), app.log()
        assert wait_for(lambda: len(app.lines("not served: ")) == 3, 2), app.log()
        for caller in callers:
            caller.half_close()
        assert served.ended.wait(1) and served.end_how == "eof"
        time.sleep(1.0)
        for caller in (again, stranger, no_uuid):
            assert not caller.audio()
            assert not caller.ended.is_set()  # never closed by the app
            assert tcp_state(caller.local_port, app.port) == "05"  # ours: FIN_WAIT2
            assert tcp_state(app.port, caller.local_port) == "08"  # the app's: CLOSE_WAIT
        assert app.alive()


@needs_espeak
def test_preroll_says_when_its_speech_starts() -> None:
    with (
        real_app("preroll", preroll=0.5) as quiet,
        real_app("preroll", preroll=0.3, noise=-70) as noisy,
    ):
        calls = [Caller(quiet), Caller(noisy)]
        time.sleep(1.5)
        truths = [seconds_at(app.wait_line("speech at", 1)) for app in (quiet, noisy)]

    for pre, call, truth in zip((0.5, 0.3), calls, truths, strict=True):
        assert pre <= truth < pre + 0.1
        audio = [m for _, m in call.audio()]
        levels = [level_dbfs(m.payload) for m in audio]
        first = next(i for i, v in enumerate(levels) if v is not None and v > -40)
        assert abs(first * FRAME - truth) <= 0.03
        before = levels[: round(pre / FRAME)]
        if call is calls[0]:
            assert all(m.payload == bytes(320) for m in audio[: round(pre / FRAME)])
        else:
            assert all(v is not None and -74 <= v <= -66 for v in before)


def test_silent_echo_sends_only_silence() -> None:
    with real_app("silent-echo") as app:
        caller = Caller(app)
        caller.stream(lambda k: Message.audio(tone(k), 8000))
        time.sleep(0.6)
        audio = caller.audio()
        assert len(audio) >= 20
        assert all(m.kind == Kind.AUDIO_8K and m.payload == bytes(320) for _, m in audio)
