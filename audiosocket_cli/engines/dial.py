"""One outgoing call placed as Asterisk places it: the engine of `dial`, `play` and `replay`.

Two threads share the connection. The main thread sends, on a drift-free
clock (the message due at media time m leaves at start + m / speed, whatever
the previous send cost): the UUID message, then audio frames from a source,
timed messages (a replayed trace), and each injection at its moment. It
stays the main thread so that Ctrl-C and SIGTERM land in it and unwind
through its `finally`. A receiver thread reads what the application sends
and feeds it to an Asterisk-side protocol.session.Session, which judges it
as Asterisk would; the first ending either thread finds is the call's.

Everything is ordered by media time (seconds into the call): at `--speed 0`
nothing waits, but an injection at 1 s still goes after the frames before
1 s and before the ones after.

A stereo recording of the call (media.stereo.CallStereo, `--record-stereo`)
gets each frame we send at its due time on the drift-free clock (the left
channel) and the application's audio at its playout time (the right); it is
one of the call's recordings, closed, listed and marked partial with them.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from audiosocket_cli.engines.call import CallReport
from audiosocket_cli.media.audio import FrameSource
from audiosocket_cli.media.recorder import Recording
from audiosocket_cli.media.stereo import CallStereo
from audiosocket_cli.net.address import Address
from audiosocket_cli.net.pacing import Pacer, sleep_until
from audiosocket_cli.net.transport import connect, read_for_session
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.events import CallEnd, CallInfo
from audiosocket_cli.protocol.inject import Injection
from audiosocket_cli.protocol.session import Ended, Role, Rules, Session
from audiosocket_cli.protocol.wire import Kind, Message, frame_bytes
from audiosocket_cli.status import Terminated

# Diagnoses drawn from the application's timing, which follows ours at another --speed.
TIMED_DIAGNOSES = frozenset({"burst", "pacing", "slow", "hangup-after-dtmf"})
SEND_FAILURE_GRACE = 0.5  # after a failed send, how long the receiver may take to say why


@dataclass
class CallPlan:
    """Everything decided before connecting: what to send, and when the call ends."""

    address: Address
    uuid: str
    rate: int = 8000
    frame_ms: float = 20.0
    source: FrameSource | None = None  # frames every frame_ms; None: none (--no-audio)
    source_name: str = "silence"
    finite_source: bool = False  # a file: the call ends once it was sent and linger passed
    messages: Iterable[tuple[float, Message]] | None = None  # timed messages (replay)
    injections: list[Injection] = field(default_factory=list)
    duration: float | None = None
    linger: float = 1.0
    end: str = "close"  # or "hangup": how our side ends the call
    speed: float = 1.0
    rules: Rules = field(default_factory=Rules)
    send_uuid: bool = True  # False: the timed messages bring their own (a replayed trace)

    @property
    def frame_samples(self) -> int:
        return frame_bytes(self.rate, self.frame_ms) // 2

    @property
    def frame_seconds(self) -> float:
        return self.frame_samples / self.rate


class _PeerGone(Exception):
    """Writing to the application failed: it closed or reset the connection."""


class Caller:
    """Runs one call; `run()` returns its CallEnd or raises net.transport.ConnectError."""

    def __init__(
        self,
        plan: CallPlan,
        output: Output,
        *,
        recording: Recording | None = None,
        stereo: CallStereo | None = None,
        monitor: Any = None,
        on_progress: Callable[[float], None] | None = None,
        on_connected: Callable[[], None] | None = None,
        start_text: str = "",
        start_fields: dict[str, Any] | None = None,
        end_fields: Callable[[CallReport, Ended], dict[str, Any]] | None = None,
        before_start: Callable[[CallReport], None] | None = None,
        pcap_file: Any = None,
    ) -> None:
        self.plan = plan
        self.output = output
        self.recording = recording
        self.stereo = stereo
        self.monitor = monitor
        self.on_progress = on_progress
        self.on_connected = on_connected
        self.start_text = start_text
        self.start_fields = start_fields or {}
        self.end_fields = end_fields
        self.before_start = before_start
        self.pcap_file = pcap_file  # an engines.pcap_tap.PcapFile (--pcap), or None
        self.pcap: Any = None  # this call's PcapTap in it
        self.info: CallInfo | None = None
        self.report: CallReport | None = None
        self.session: Session | None = None
        self.sock: socket.socket | None = None
        self.max_send_lag = 0.0
        self.sent_hangup = False
        self._source_done = False
        self._ending = threading.Event()
        self._lock = threading.Lock()  # the session, shared by both threads
        self._receiver: threading.Thread | None = None

    # Ending, from either thread: the first reason given wins.

    def _end(self, ended: str, detail: str) -> bool:
        """Our side ends the call; False if it had ended already."""
        assert self.session is not None
        with self._lock:
            first = self.session.ended is None
            self.session.close(ended, detail, time.monotonic())
        self._ending.set()
        return first

    def _drop_connection(self) -> None:
        """Close at once, as Asterisk does; wakes the receiver and any blocked send."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # The call.

    def run(self) -> CallEnd:
        plan = self.plan
        self.sock = connect(plan.address)
        if self.pcap_file is not None:
            self.pcap = self.pcap_file.tap(self.sock, ">")
        self.info = info = CallInfo(conn=1, uuid=plan.uuid, peer=plan.address)
        self.session = Session(Role.ASTERISK, plan.rules, started=info.started)
        recordings = {"<": self.recording} if self.recording is not None else {}
        self.report = report = CallReport(
            self.output, info, recordings=recordings, diagnose=("<",), frame_ms=plan.frame_ms
        )
        if self.stereo is not None:
            # One of the call's recordings: closed, listed and marked partial with the others.
            report.recordings["stereo"] = cast(Recording, self.stereo)
        try:
            if self.on_connected is not None:
                self.on_connected()
            report.start(
                self.start_text
                or (
                    f"to {plan.address} rate={plan.rate} frame={plan.frame_ms:g}ms "
                    f"source={plan.source_name}"
                ),
                **(
                    self.start_fields
                    or {
                        "uuid": plan.uuid,
                        "peer": str(plan.address),
                        "rate": plan.rate,
                        "frame_ms": plan.frame_ms,
                        "source": plan.source_name,
                    }
                ),
            )
            if self.before_start is not None:
                self.before_start(report)
            if plan.send_uuid:
                self._send(Message.for_uuid(plan.uuid))
            self._receiver = threading.Thread(
                target=self._receive_guarded, name="audiosocket-receiver", daemon=True
            )
            self._receiver.start()
            self._send_loop()
        except KeyboardInterrupt:
            self._end("interrupted", "Ctrl-C")
            raise
        except Terminated:
            self._end("terminated", "SIGTERM")
            raise
        except BrokenPipeError:
            self._end("output-closed", "the output was closed")
            raise
        except _PeerGone as exc:
            self._send_failed(exc.args[0])
        finally:
            self._finish()
        assert report.end is not None
        return report.end

    def _write(self, data: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.sendall(data)
        except OSError as exc:  # only the socket's: output errors are not the peer's doing
            raise _PeerGone(exc) from None
        if self.pcap is not None:
            self.pcap.sent(data)

    def _send(self, message: Message) -> None:
        assert self.session is not None and self.report is not None and self.info is not None
        self._write(message.encode())
        now = time.monotonic()
        with self._lock:
            self.session.sent(message, now)
        self.report.message(now - self.info.started, ">", message)
        if message.kind == Kind.HANGUP:
            self.sent_hangup = True

    def _send_failed(self, exc: OSError) -> None:
        # The application went away while we wrote; its hangup or close may be
        # in flight to the receiver, which tells the truer story.
        if not self._ending.wait(SEND_FAILURE_GRACE):
            if isinstance(exc, ConnectionResetError):
                self._end("app-reset", "the application reset the connection")
            else:
                self._end("app-close", "the application closed the connection")

    def _finish(self) -> None:
        """Close the connection, stop the receiver, report how the call went."""
        plan, session, report = self.plan, self.session, self.report
        assert session is not None and report is not None and self.sock is not None
        if session.ended is None:  # an unexpected exception: still close cleanly
            self._end("internal-error", "ended by an internal error")
        assert session.ended is not None
        ours = session.ended.ended in ("caller-close", "interrupted", "terminated")
        if ours and plan.end == "hangup" and not self.sent_hangup:
            try:
                self._send(Message.hangup())
            except _PeerGone:
                pass
        self._ending.set()
        self._drop_connection()
        if self._receiver is not None:
            self._receiver.join(timeout=2.0)
        try:
            self.sock.close()
        except OSError:
            pass
        ended = session.ended
        if self.sent_hangup and ended.ended in ("caller-close", "app-close", "app-reset"):
            # After our hangup, the application closing is the answer, not the cause.
            ended = Ended(ended.t, "caller-hangup", f"we hung up; {ended.detail}")
        if self.pcap is not None:
            self.pcap.ended(session.ended)  # how the connection ended, before the hangup's naming
        speed = plan.speed

        def annotate(code: str, text: str) -> str:
            if code in TIMED_DIAGNOSES and speed != 1:
                # An application that echoes follows our pace, not its own.
                return f"{text} (this call ran at --speed {speed:g})"
            return text

        drop = {"refused"} if ended.ended in ("refused", "stall") else set()
        if speed == 0:
            drop |= TIMED_DIAGNOSES  # everything was sent at once: no timing to judge

        if self.stereo is not None:
            self._stereo_note(self.stereo.end())  # a last write that failed is said too
        extra = self.end_fields(report, ended) if self.end_fields is not None else {}
        report.finish(
            ended,
            session.violations,
            annotate=annotate,
            drop=drop,
            max_send_lag_ms=round(self.max_send_lag * 1000, 3),
            **extra,
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

    def _timeline(self) -> Iterator[tuple[float, int, Any]]:
        """What to send, in media-time order: (seconds, order, injection | message | frame)."""
        plan = self.plan
        streams: list[Iterator[tuple[float, int, Any]]] = []
        if plan.source is not None:
            frame_s = plan.frame_seconds

            def frames() -> Iterator[tuple[float, int, Any]]:
                for k in itertools.count():
                    if self._source_done:
                        return  # merge asks for the next frame only after this one was sent
                    yield k * frame_s, 2, k

            streams.append(frames())
        if plan.messages is not None:
            streams.append(((t, 1, message) for t, message in plan.messages))
        injections = sorted(plan.injections, key=lambda i: i.at)
        # At the same moment, an injection goes before the frame.
        streams.append((i.at, 0, i) for i in injections)
        return heapq.merge(*streams, key=lambda step: step[:2])

    def _send_loop(self) -> None:
        plan = self.plan
        assert self.info is not None
        pacer = Pacer(plan.frame_seconds, plan.speed, start=self.info.started)
        timeline = self._timeline()
        finite = plan.finite_source or plan.messages is not None
        done_at: float | None = None  # when the last finite thing was sent
        for media, order, item in timeline:
            if plan.duration is not None and media >= plan.duration - 1e-9:
                break
            due = pacer.at(media)
            if self._wait_until(due):
                return
            if order == 0:
                if self._inject(item):
                    return
                if done_at is not None:
                    done_at = time.monotonic()  # --linger counts from the last
                continue
            if order == 1:
                self._lag(due)
                self._send(item)
                if self.stereo is not None and item.is_audio and item.payload and item.rate:
                    self._stereo_sent(due, item.payload, item.rate)
                continue
            self._lag(due)
            pcm = plan.source.next_frame(plan.rate, plan.frame_samples) if plan.source else None
            if not pcm:
                self._source_done = True
                if plan.finite_source:
                    done_at = max(time.monotonic(), due)
                continue
            self._send(Message.audio(pcm, plan.rate))
            if self.stereo is not None:
                self._stereo_sent(due, pcm, plan.rate)
            if self.on_progress is not None:
                self.on_progress((item + 1) * plan.frame_seconds)
        # Everything planned was sent: the call's own end.
        if plan.duration is not None:
            if self._wait_until(pacer.at(plan.duration)):
                return
            self._end("caller-close", f"--duration {plan.duration:g} passed")
            return
        if finite:
            start = done_at if done_at is not None else time.monotonic()
            if self._wait_until(start + plan.linger):
                return
            what = "the file was sent" if plan.finite_source else "all was sent"
            self._end("caller-close", f"{what} and --linger {plan.linger:g} passed")
            return
        self._wait_until(None)  # until the application ends it, or a signal

    def _stereo_sent(self, due: float, pcm: bytes, rate: int) -> None:
        """A message we sent, in the stereo file at its due time on the send clock."""
        assert self.stereo is not None and self.info is not None
        self._stereo_note(self.stereo.sent(">", max(0.0, due - self.info.started), pcm, rate))

    def _stereo_note(self, note: str | None) -> None:
        if note and self.report is not None and self.info is not None:
            self.report.warning(self.info.elapsed(), f"stereo {note}")

    def _lag(self, due: float) -> None:
        lag = time.monotonic() - due
        if lag > self.max_send_lag and self.plan.speed:
            self.max_send_lag = lag

    def _inject(self, injection: Injection) -> bool:
        """Send (or do) one injection; True if it ended the call."""
        assert self.session is not None and self.report is not None and self.info is not None
        for message in injection.messages:
            self._send(message)
        if injection.raw:
            self._write(injection.raw)
            now = time.monotonic()
            with self._lock:
                messages, problems = self.session.sent_raw(
                    injection.raw, now, f" (--inject {injection.what}@{injection.at:g})"
                )
            for message in messages:
                self.report.message(now - self.info.started, ">", message)
            for problem in problems:
                self.report.problem(problem, ">")
        spec = f"--inject {injection.what}@{injection.at:g}"
        if injection.close:
            return self._end("caller-close", spec)
        if injection.ends_call:
            return self._end("caller-hangup", spec)
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
                self._end("internal-error", f"receiving failed: {type(exc).__name__}: {exc}")
                self._drop_connection()

    def _receive(self) -> None:
        assert self.sock is not None and self.session is not None and self.report is not None
        session, report = self.session, self.report

        def on_events(events: list[Any], now: float, ended_stream: str | None) -> bool:
            if ended_stream is None and not events:
                self.output.flush()  # a quiet moment: batched lines out
            if self.monitor is not None:
                for event in events:
                    message = getattr(event, "message", None)
                    if message is not None and message.is_audio and message.payload:
                        self.monitor.play(message.payload, message.rate)
            if self.stereo is not None:
                for event in events:
                    message = getattr(event, "message", None)
                    if message is not None and message.payload and message.rate:
                        note = self.stereo.heard("<", event.t, message.payload, message.rate)
                        self._stereo_note(note)
            if report.received("<", events) is not None or session.ended is not None:
                self._ending.set()
                self._drop_connection()
                return True
            return False

        on_data = self.pcap.received if self.pcap is not None else None
        read_for_session(self.sock, session, self._lock, self._ending, on_events, on_data)
