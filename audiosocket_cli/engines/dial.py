"""One outgoing call placed as Asterisk places it: the engine of `dial` and `play`.

Two threads share the connection. The main thread sends: the UUID message,
then audio frames on a drift-free clock (frame k leaves at start + k x frame,
whatever the previous send cost), and each injection at its moment. It stays
the main thread so that Ctrl-C and SIGTERM land in it and unwind through its
`finally`. A receiver thread reads what the application sends, records and
shows it, and judges it as Asterisk would (PROTOCOL.md, "What Asterisk
accepts"). Whichever thread ends the call records why, once; the other sees
it at once.

Everything is ordered by media time (seconds into the call): at `--speed 0`
nothing waits, but an injection at 1 s still goes after the frames before
1 s and before the ones after.
"""

from __future__ import annotations

import errno
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiosocket_cli.analysis.stats import DirectionStats, diagnose_application
from audiosocket_cli.media.audio import FrameSource, RateSplitRecording
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.pacing import Pacer, sleep_until
from audiosocket_cli.net.transport import RECV_SIZE, Connection, connect
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.events import CallInfo
from audiosocket_cli.protocol.inject import Injection
from audiosocket_cli.protocol.wire import Decoder, Kind, Message, TruncatedMessage, frame_bytes
from audiosocket_cli.status import ExitStatus, Terminated

# Asterisk waits for a payload about 5 ms after its header (PROTOCOL.md).
PAYLOAD_STALL = 0.005
# Never give a payload less than this once we get round to looking, so that our
# own scheduling delays cannot be blamed on the application.
STALL_FLOOR = 0.001
POLL_INTERVAL = 0.1  # the receiver checks for the end of the call this often
SEND_FAILURE_GRACE = 0.5  # after a failed send, how long the receiver may take to say why


@dataclass
class CallPlan:
    """Everything `dial` decided before connecting."""

    address: Address
    uuid: str
    rate: int = 8000
    frame_ms: float = 20.0
    source: FrameSource | None = None  # None: no audio at all (--no-audio)
    source_name: str = "silence"
    source_duration: float | None = None  # seconds, for a file
    injections: list[Injection] = field(default_factory=list)
    duration: float | None = None
    linger: float = 1.0
    end: str = "close"  # or "hangup"
    speed: float = 1.0
    strict: bool = True

    @property
    def frame_samples(self) -> int:
        return frame_bytes(self.rate, self.frame_ms) // 2

    @property
    def frame_seconds(self) -> float:
        return self.frame_samples / self.rate


class _PeerGone(Exception):
    """Writing to the application failed: it closed or reset the connection."""


@dataclass
class CallResult:
    """How the call ended: a reason code, a line of text, and the exit status."""

    reason: str
    text: str
    status: ExitStatus = ExitStatus.OK
    duration: float = 0.0
    diagnoses: list[str] = field(default_factory=list)

    @property
    def broke_protocol(self) -> bool:
        return self.status == ExitStatus.PROTOCOL


class Recorder:
    """What the application sends, as WAVs at the rate of its messages.

    The first audio message fixes the main file's rate; audio at another rate
    goes to FILE stem + `.RATE.wav` (a warning says so), so no sample is
    resampled or lost. A call with no audio leaves an empty WAV at the call's
    rate, so that FILE always exists and is valid after the call.
    """

    def __init__(self, path: str | Path, call_rate: int) -> None:
        self.path = Path(path)
        self.call_rate = call_rate
        self.files = RateSplitRecording(
            lambda: self.path,
            lambda first, rate: first.with_name(f"{first.stem}.{rate}{first.suffix or '.wav'}"),
        )
        self.connected = False  # no call, no file: an empty WAV only for a call that happened
        self._lock = threading.Lock()

    def write(self, rate: int, pcm: bytes) -> Path | None:
        """Append audio; return the new file's path when this rate starts a second one."""
        with self._lock:
            opened = self.files.write(rate, pcm)
            return opened if opened is not None and len(self.files.writers) > 1 else None

    @property
    def paths(self) -> list[Path]:
        return self.files.paths

    def close(self) -> None:
        with self._lock:
            if not self.files.writers and self.connected:
                self.files.write(self.call_rate, b"")
            self.files.close()


def describe_message(message: Message) -> str:
    """`an error message (kind 0xff, 1 byte, code 0x02)`: a message named for a user."""
    kind, size = message.kind, len(message.payload)
    name = message.name
    if name == "unknown":
        what = f"a message of unassigned kind 0x{kind:02x}"
    elif name == "audio" and not size:
        what = "an empty audio message"
    else:
        what = f"{'an' if name in ('audio', 'error') else 'a'} {name} message"
    detail = f"kind 0x{kind:02x}, {size} byte{'' if size == 1 else 's'}"
    if message.code is not None:
        detail += f", code 0x{message.code:02x}"
    elif name == "uuid" and message.uuid:
        detail += f", {message.uuid}"
    elif name == "dtmf" and message.digit:
        detail += f", digit {message.digit}"
    return f"{what} ({detail})"


class Caller:
    """Runs one call; `run()` returns a CallResult or raises ConnectError."""

    def __init__(
        self,
        plan: CallPlan,
        output: Output,
        *,
        recorder: Recorder | None = None,
        monitor: Any = None,
        on_progress: Callable[[float], None] | None = None,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.plan = plan
        self.output = output
        self.recorder = recorder
        self.monitor = monitor
        self.on_progress = on_progress
        self.on_connected = on_connected
        self.sent = DirectionStats()  # '>' toward the application
        # Only the application's audio is diagnosed; analysing our own costs time
        # on the sending thread for nothing.
        self.sent.analyse_encoding = False
        self.received = DirectionStats()  # '<' from the application
        self.call: CallInfo | None = None
        self.conn: Connection | None = None
        self.max_send_lag = 0.0
        self._ending = threading.Event()
        self._end_lock = threading.Lock()
        self._result: CallResult | None = None
        self._receiver: threading.Thread | None = None

    # Ending, from either thread: the first reason given wins.

    def _end(self, reason: str, text: str, status: ExitStatus = ExitStatus.OK) -> bool:
        with self._end_lock:
            if self._result is not None:
                return False
            self._result = CallResult(reason, text, status)
        self._ending.set()
        return True

    def _drop_connection(self) -> None:
        """Close at once, as Asterisk does; wakes the receiver and any blocked send."""
        conn = self.conn
        if conn is None:
            return
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _t(self, now: float | None = None) -> float:
        assert self.call is not None
        return self.call.elapsed(now)

    # The call.

    def run(self) -> CallResult:
        plan = self.plan
        sock = connect(plan.address)
        self.conn = Connection(sock)
        if self.recorder is not None:
            self.recorder.connected = True
        self.call = CallInfo(conn=1, uuid=plan.uuid, peer=plan.address)
        try:
            if self.on_connected is not None:
                self.on_connected()
            self.output.event(
                self.call,
                0.0,
                "call-start",
                f"to {plan.address} rate={plan.rate} frame={plan.frame_ms:g}ms "
                f"source={plan.source_name}",
                uuid=plan.uuid,
                peer=str(plan.address),
                rate=plan.rate,
                frame_ms=plan.frame_ms,
                source=plan.source_name,
            )
            self._send(Message.for_uuid(plan.uuid))
            self._receiver = threading.Thread(
                target=self._receive_guarded, name="audiosocket-receiver", daemon=True
            )
            self._receiver.start()
            self._send_loop()
        except KeyboardInterrupt:
            self._end("interrupted", "interrupted (Ctrl-C)", ExitStatus.INTERRUPTED)
            raise
        except Terminated:
            self._end("terminated", "terminated (SIGTERM)", ExitStatus.TERMINATED)
            raise
        except _PeerGone as exc:
            self._send_failed(exc.args[0])
        finally:
            self._finish()
        assert self._result is not None
        return self._result

    def _write(self, data: bytes) -> None:
        assert self.conn is not None
        try:
            self.conn.send_raw(data)
        except OSError as exc:  # only the socket's: output errors are not the peer's doing
            raise _PeerGone(exc) from None

    def _send(self, message: Message) -> None:
        self._write(message.encode())
        t = self._t()
        self.sent.add(t, message)
        self.output.message(self.call, t, ">", message)  # type: ignore[arg-type]

    def _send_failed(self, exc: OSError) -> None:
        # The application went away while we wrote; its hangup or close may be
        # in flight to the receiver, which tells the truer story.
        if not self._ending.wait(SEND_FAILURE_GRACE):
            what = "reset" if isinstance(exc, ConnectionResetError) else "closed"
            self._end("app-close", f"the application {what} the connection")

    def _finish(self) -> None:
        """Close the connection, stop the receiver, report how the call went."""
        plan, conn = self.plan, self.conn
        assert conn is not None and self.call is not None
        ours = self._result is not None and self._result.reason in (
            "duration",
            "file-end",
            "interrupted",
            "terminated",
        )
        if self._result is None:  # an unexpected exception: still close cleanly
            self._end("error", "ended by an internal error", ExitStatus.FAILED)
        if ours and plan.end == "hangup":
            try:
                self._send(Message.hangup())
            except _PeerGone:
                pass
        self._ending.set()
        self._drop_connection()
        if self._receiver is not None:
            self._receiver.join(timeout=2.0)
        conn.close()
        self._report()

    def _report(self) -> None:
        assert self._result is not None and self.call is not None
        result = self._result
        t = self._t()
        result.duration = t
        diagnoses = diagnose_application(self.received, self.sent, self.plan.frame_ms)
        if result.reason in ("refused", "stall"):
            # The call ended on that very message, and result.text already says so.
            diagnoses = [d for d in diagnoses if d.code != "refused"]
        for diagnosis in diagnoses:
            text = diagnosis.text
            if diagnosis.code in ("burst", "pacing") and self.plan.speed != 1:
                # An application that echoes follows our pace, not its own.
                text += f" (this call ran at --speed {self.plan.speed:g})"
            self.output.event(self.call, t, "diagnosis", text, code=diagnosis.code)
        result.diagnoses = [d.code for d in diagnoses]
        self.output.event(
            self.call,
            t,
            "call-end",
            f"{result.text}; after {t:.2f}s; > {self.sent.summary()}; < {self.received.summary()}",
            reason=result.reason,
            duration=round(t, 6),
            sent=self.sent.as_dict(),
            received=self.received.as_dict(),
            max_send_lag_ms=round(self.max_send_lag * 1000, 3),
            diagnoses=result.diagnoses,
        )

    # Sending (main thread).

    def _wait_until(self, deadline: float | None) -> bool:
        """Sleep to a monotonic deadline (None: for ever); True if the call ended meanwhile."""
        ending = self._ending
        while True:
            if deadline is None:
                if ending.wait(0.5):
                    return True
                continue
            remaining = deadline - time.monotonic()
            if remaining > 0.002:
                # Event.wait returns early when the receiver ends the call; the
                # last stretch is slept precisely by sleep_until.
                if ending.wait(min(remaining - 0.001, 0.5)):
                    return True
                continue
            sleep_until(deadline)
            return ending.is_set()

    def _send_loop(self) -> None:
        plan = self.plan
        assert self.call is not None
        frame_s, samples = plan.frame_seconds, plan.frame_samples
        pacer = Pacer(frame_s, plan.speed, start=self.call.started)
        injections = sorted(plan.injections, key=lambda i: i.at)
        source = plan.source
        k = 0  # the next frame's number
        source_done = source is None
        file_end_wall: float | None = None  # when a played file was all sent
        if plan.duration is not None:
            injections = [i for i in injections if i.at <= plan.duration]
        while True:
            frame_at = None if source_done else k * frame_s
            if (
                frame_at is not None
                and plan.duration is not None
                and frame_at >= plan.duration - 1e-9
            ):
                source_done, frame_at = True, None
            inject_at = injections[0].at if injections else None
            # The call's own end: --duration, or a played file sent plus --linger.
            end_wall: float | None = None
            if plan.duration is not None:
                end_wall = pacer.at(plan.duration)
            elif file_end_wall is not None and not injections:
                end_wall = file_end_wall + plan.linger
            candidates = [m for m in (frame_at, inject_at) if m is not None]
            if not candidates:
                if self._wait_until(end_wall):
                    return
                self._end(
                    "duration" if plan.duration is not None else "file-end",
                    "the call's --duration passed"
                    if plan.duration is not None
                    else "the file was sent and --linger passed",
                )
                return
            media = min(candidates)
            due = pacer.at(media)
            if end_wall is not None and end_wall < due:
                if self._wait_until(end_wall):
                    return
                self._end("duration", "the call's --duration passed")
                return
            if self._wait_until(due):
                return
            if inject_at is not None and inject_at <= media:
                if self._inject(injections.pop(0)):
                    return
                if file_end_wall is not None:
                    # Injections after the file's end: --linger counts from the last.
                    file_end_wall = max(file_end_wall, time.monotonic())
                continue
            lag = time.monotonic() - due
            if lag > self.max_send_lag and plan.speed:
                self.max_send_lag = lag
            pcm = source.next_frame(plan.rate, samples) if source else None
            if not pcm:
                source_done = True
                file_end_wall = max(time.monotonic(), pacer.at(k * frame_s))
                continue
            self._send(Message.audio(pcm, plan.rate))
            k += 1
            if self.on_progress is not None:
                self.on_progress(k * frame_s)

    def _inject(self, injection: Injection) -> bool:
        """Send (or do) one injection; True if it ended the call."""
        assert self.conn is not None and self.call is not None
        for message in injection.messages:
            self._send(message)
        if injection.raw:
            self._write(injection.raw)
            t = self._t()
            # Show whatever whole messages the raw bytes make; the rest as a note.
            decoder = Decoder()
            decoder.feed(injection.raw)
            for message in decoder.messages():
                self.sent.add(t, message)
                self.output.message(self.call, t, ">", message)
            if decoder.buffered:
                self.output.event(
                    self.call,
                    t,
                    "warning",
                    f"injected {decoder.buffered} raw bytes that are not a whole message",
                    raw=injection.raw.hex(),
                )
        if injection.close:
            return self._end(
                "inject-close", f"closed by --inject {injection.what}@{injection.at:g}"
            )
        if injection.ends_call:
            return self._end(
                "inject-hangup", f"hung up by --inject {injection.what}@{injection.at:g}"
            )
        return False

    # Receiving (receiver thread).

    def _receive_guarded(self) -> None:
        try:
            self._receive()
        except BrokenPipeError:
            # stdout's reader left (`dial ... | head`): end quietly, as the cli does.
            self._end("output-closed", "the output was closed")
            self._drop_connection()
        except Exception as exc:  # never die silently: the call must still end
            if not self._ending.is_set():
                self._end("error", f"receiving failed: {exc}", ExitStatus.FAILED)
                self._drop_connection()

    def _receive(self) -> None:
        assert self.conn is not None
        sock, decoder = self.conn.sock, self.conn.decoder
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        header_at: float | None = None  # when the header of an incomplete message arrived
        stall_warned = False
        while not self._ending.is_set():
            if header_at is not None and not stall_warned:
                wait = max(header_at + PAYLOAD_STALL - time.monotonic(), STALL_FLOOR)
            else:
                wait = POLL_INTERVAL
            if not poller.poll(wait * 1000):
                if header_at is not None and not stall_warned:
                    # The kernel saw nothing arrive in the window: a real stall.
                    stall_warned = True
                    if self._payload_stalled(header_at, decoder):
                        return
                continue
            try:
                data = sock.recv(RECV_SIZE)
            except ConnectionResetError:
                self._end("app-close", "the application reset the connection")
                return
            except OSError as exc:
                if self._ending.is_set() or exc.errno in (errno.EBADF, errno.ENOTCONN):
                    return
                raise
            now = time.monotonic()
            if not data:
                if self._ending.is_set():
                    return  # our own shutdown
                try:
                    decoder.end_of_stream()
                except TruncatedMessage as exc:
                    self._violation("truncated", f"the application closed the connection: {exc}")
                    return
                self._end("app-close", "the application closed the connection")
                return
            decoder.feed(data)
            messages = decoder.messages()
            for message in messages:
                if self._on_message(now, message):
                    self._drop_connection()
                    return
            if not decoder.header_complete:
                header_at, stall_warned = None, False
            elif messages or header_at is None:
                header_at, stall_warned = now, False

    def _payload_stalled(self, header_at: float, decoder: Decoder) -> bool:
        buffered = decoder.buffered
        text = (
            f"the application sent a header and then stalled: {buffered} bytes of a message "
            f"arrived and its payload was not complete {PAYLOAD_STALL * 1000:g} ms later "
            "(Asterisk ends the session; write header and payload in one send)"
        )
        t = self._t(header_at)
        if self.plan.strict:
            self.received.refused["payload stalled after its header"] += 1
            self._violation("stall", text)
            self._drop_connection()
            return True
        self.received.refused["payload stalled after its header"] += 1
        assert self.call is not None
        self.output.event(self.call, t, "warning", f"{text}; --lenient: carrying on")
        return False

    def _violation(self, reason: str, text: str) -> None:
        self._end(reason, text, ExitStatus.PROTOCOL)

    def _on_message(self, now: float, message: Message) -> bool:
        """Take one message from the application; True if it ends the call."""
        assert self.call is not None
        t = self._t(now)
        self.received.add(t, message)
        self.output.message(self.call, t, "<", message)
        if message.refused_by_asterisk:
            self.received.note_refused(message)
            text = (
                f"the application sent {describe_message(message)} at {t:.3f}s: "
                "Asterisk ends the session on anything but hangup and non-empty audio"
            )
            if self.plan.strict:
                self._violation("refused", text)
                return True
            self.output.event(self.call, t, "warning", f"{text}; --lenient: carrying on")
            return False
        if message.kind == Kind.HANGUP:
            self._end("app-hangup", "the application hung up")
            return True
        if message.is_audio:
            rate = message.rate
            assert rate is not None
            if self.recorder is not None:
                started = self.recorder.write(rate, message.payload)
                if started is not None:
                    self.output.event(
                        self.call,
                        t,
                        "warning",
                        f"the application changed rate to {rate} Hz mid-call; "
                        f"that audio is recorded in {started}",
                        path=str(started),
                        rate=rate,
                    )
            if self.monitor is not None:
                self.monitor.play(message.payload, rate)
        return False
