"""Replaying one call of a trace, raw dump or capture: the engine behind `audiosocket replay`.

The input is read twice: once to list its calls and count what the
application sent originally (scan, pick), once to stream the chosen call's
`>` messages out on a drift-free clock (Replay). What comes back is shown,
checked as Asterisk would check it, recorded, and compared with the original.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import click

from audiosocket_cli.analysis.stats import DirectionStats, diagnose_application
from audiosocket_cli.commands.options import Failure
from audiosocket_cli.engines.dial import Recorder
from audiosocket_cli.files.trace import Record, TraceFormatError, read_records, sniff
from audiosocket_cli.net.pacing import Pacer, sleep_until
from audiosocket_cli.net.transport import ConnectError, Connection, PeerReset, connect
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.events import CallInfo
from audiosocket_cli.protocol.wire import Kind, Message, ProtocolError, TruncatedMessage
from audiosocket_cli.status import ExitStatus, Terminated

SEND_FAILURE_GRACE = 0.2  # s for the receiver to tell why a send failed
AUDIO_TOLERANCE = 0.0005  # s: audio durations this close are the same

# How a call ended, from each tool's call-end vocabulary, as replay compares them.
_SIDES = {
    "app": "app",
    "application": "app",
    "server": "app",
    "our": "app",  # listen speaks as the application
    "caller": "caller",
    "client": "caller",
    "peer": "caller",
}
_HOWS = {"hangup": "hangup", "close": "close", "closed": "close", "reset": "reset"}
_WHOLE = {
    "duration": "caller-close",
    "file-end": "caller-close",
    "timeout": "app-close",
    "refused": "refused",
    "stall": "refused",
    "truncated": "protocol-error",
    "protocol-error": "protocol-error",
    "capture-end": "capture-end",
}


@dataclass
class CallScan:
    """One call of the input, as the first reading found it."""

    conn: int
    uuid: str | None = None
    to_app: int = 0  # '>' messages: what replay sends
    first_t: float | None = None
    rate: int | None = None  # of the first '>' audio: the call's rate
    caller: DirectionStats = field(default_factory=DirectionStats)
    app: DirectionStats = field(default_factory=DirectionStats)
    first_hangup: tuple[float, str] | None = None
    end_t: float | None = None
    end_fields: dict[str, Any] = field(default_factory=dict)
    last_t: float = 0.0
    warnings: list[tuple[float, str]] = field(default_factory=list)

    @property
    def call_id(self) -> str:
        return self.uuid or f"#{self.conn}"

    @property
    def short_id(self) -> str:
        return self.uuid[:8] if self.uuid else f"#{self.conn}"

    def ending(self) -> tuple[str, float]:
        """How the original call ended, and when."""
        if self.first_hangup is not None:
            t, direction = self.first_hangup
            return ("caller-hangup" if direction == ">" else "app-hangup"), t
        when = self.end_t if self.end_t is not None else self.last_t
        for key in ("ended", "how", "reason"):
            value = self.end_fields.get(key)
            if isinstance(value, str):
                name = normalize_ending(value)
                if name:
                    return name, when
        return "unknown", when


def normalize_ending(value: str) -> str | None:
    """`peer-close` (listen), `client-reset` (pcap), `application-hangup` (capture)... ."""
    value = value.strip().lower()
    if value in _WHOLE:
        return _WHOLE[value]
    side, _, how = value.partition("-")
    if side in _SIDES and how in _HOWS:
        return f"{_SIDES[side]}-{_HOWS[how]}"
    return None


# Reading the input.


class ReplayInput:
    """The TRACE argument as a file that can be read twice."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.label = "<stdin>" if name == "-" else name
        self._spool: IO[bytes] | None = None
        if name == "-":
            spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            shutil.copyfileobj(sys.stdin.buffer, spool)
            self._spool = spool

    def open(self) -> IO[bytes]:
        if self._spool is not None:
            self._spool.seek(0)
            return self._spool
        try:
            return open(self.name, "rb")  # noqa: SIM115 - closed by the caller
        except FileNotFoundError:
            raise Failure(f"{self.name}: no such file") from None
        except IsADirectoryError:
            raise Failure(f"{self.name}: is a directory") from None
        except OSError as exc:
            raise Failure(f"{self.name}: cannot read: {exc.strerror}") from None

    def records(self, port: int | None) -> Iterator[Record]:
        stream = self.open()
        try:
            yield from read_records(stream, self.label, ">", port=port)
        except (TraceFormatError, ProtocolError) as exc:
            raise Failure(str(exc)) from None
        except OSError as exc:
            raise Failure(f"{self.label}: cannot read: {exc.strerror or exc}") from None
        finally:
            if stream is not self._spool:
                stream.close()

    def kind(self) -> tuple[str, bytes]:
        stream = self.open()
        try:
            head = stream.read(256)
        except OSError as exc:
            raise Failure(f"{self.label}: cannot read: {exc.strerror or exc}") from None
        finally:
            if stream is not self._spool:
                stream.close()
        return sniff(head), head

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()


def scan(source: ReplayInput, port: int | None) -> tuple[dict[int, CallScan], str]:
    """Every call of the input, with what the application sent in it."""
    kind, head = source.kind()
    calls: dict[int, CallScan] = {}
    first = True
    for record in source.records(port):
        if first:
            first = False
            if kind == "raw" and (record.message is None or record.message.name == "unknown"):
                raise Failure(
                    f"{source.label}: not a trace file, packet capture or AudioSocket "
                    f"byte dump (it begins {head[:8].hex(' ') or 'empty'})"
                )
        call = calls.get(record.conn)
        if call is None:
            call = calls[record.conn] = CallScan(record.conn)
        if not record.call.startswith("#"):
            call.uuid = call.uuid or record.call
        call.last_t = max(call.last_t, record.t)
        message = record.message
        if message is None:
            if record.event == "call-end":
                call.end_t, call.end_fields = record.t, dict(record.fields)
            elif record.event == "warning":
                call.warnings.append((record.t, record.text))
            continue
        if record.dir == ">":
            call.to_app += 1
            call.caller.add(record.t, message)
            if call.first_t is None:
                call.first_t = record.t
            if call.rate is None and message.is_audio:
                call.rate = message.rate
            if call.uuid is None and message.uuid is not None:
                call.uuid = str(message.uuid)
        elif record.dir == "<":
            call.app.add(record.t, message)
        if message.kind == Kind.HANGUP and call.first_hangup is None and record.dir in "<>":
            call.first_hangup = (record.t, record.dir)
    if first:
        raise Failure(f"{source.label}: empty: nothing to replay")
    return calls, kind


def pick(calls: dict[int, CallScan], wanted: str | None, label: str) -> CallScan:
    playable = [c for c in calls.values() if c.to_app]
    if wanted is None:
        if not playable:
            raise Failure(f"{label}: no messages toward the application to replay")
        if len(playable) > 1:
            raise click.UsageError(
                f"{label} holds {len(playable)} calls; pick one with --call: {_listing(playable)}"
            )
        return playable[0]
    text = wanted.strip().lower()
    if text.startswith("#"):
        found = [c for c in calls.values() if f"#{c.conn}" == text]
    else:
        found = [c for c in calls.values() if c.uuid and c.uuid.lower().startswith(text)]
    if not found:
        raise click.BadParameter(
            f"no call {wanted!r} in {label} (calls: {_listing(list(calls.values()))})",
            param_hint="--call",
        )
    if len(found) > 1:
        raise click.BadParameter(
            f"{wanted!r} matches {len(found)} calls: {_listing(found)}", param_hint="--call"
        )
    if not found[0].to_app:
        raise Failure(f"call {found[0].call_id} has no messages toward the application")
    return found[0]


def _listing(calls: list[CallScan]) -> str:
    return ", ".join(
        f"{c.call_id} (#{c.conn}, {c.to_app} message{'s' if c.to_app != 1 else ''} "
        "to the application)"
        for c in calls
    )


# Recording what comes back.


# The replay.


@dataclass
class _Ending:
    reason: str
    text: str
    status: ExitStatus = ExitStatus.OK
    t: float = 0.0


class Replay:
    """Sends one call's `>` side and watches what comes back."""

    def __init__(
        self,
        source: ReplayInput,
        original: CallScan,
        port: int | None,
        address: Any,
        speed: float,
        linger: float,
        strict: bool,
        output: Output,
        recording: Recorder | None,
        comparable: bool = True,
    ) -> None:
        self.source = source
        self.comparable = comparable  # the input holds what the application sent
        self.original = original
        self.port = port
        self.address = address
        self.speed = speed
        self.linger = linger
        self.strict = strict
        self.output = output
        self.recording = recording
        self.sent = DirectionStats()
        self.sent.analyse_encoding = False  # our own audio needs no diagnosis
        self.received = DirectionStats()
        self.call = CallInfo(conn=1, uuid=original.uuid, peer=address)
        self.conn: Connection | None = None
        self.max_lag = 0.0
        self.sent_hangup = False
        self._ending: _Ending | None = None
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._receiver: threading.Thread | None = None

    def t(self, now: float | None = None) -> float:
        return self.call.elapsed(now)

    def end(self, reason: str, text: str, status: ExitStatus = ExitStatus.OK) -> None:
        """The first reason given wins; either thread may call this."""
        with self._lock:
            if self._ending is None:
                self._ending = _Ending(reason, text, status, self.t())
        self._ended.set()

    def run(self) -> _Ending:
        try:
            sock = connect(self.address)
        except ConnectError as exc:
            raise Failure(str(exc)) from None
        self.conn = Connection(sock)
        if self.recording is not None:
            self.recording.connected = True
        self.call.started = time.monotonic()
        self.call.started_ts = time.time()
        original = self.original
        self.output.event(
            self.call,
            0.0,
            "call-start",
            f"replaying {original.call_id} from {self.source.label} to {self.address}"
            f" speed={self.speed:g}",
            peer=str(self.address),
            source=self.source.label,
            original_call=original.call_id,
            speed=self.speed,
        )
        for t, text in original.warnings:
            self.output.event(self.call, 0.0, "warning", f"in the trace at {t:.3f}s: {text}")
        try:
            self._receiver = threading.Thread(
                target=self._receive_guarded, name="replay-receiver", daemon=True
            )
            self._receiver.start()
            self._send_all()
        except KeyboardInterrupt:
            self.end("interrupted", "interrupted (Ctrl-C)", ExitStatus.INTERRUPTED)
            raise
        except Terminated:
            self.end("terminated", "terminated (SIGTERM)", ExitStatus.TERMINATED)
            raise
        finally:
            self._finish()
        assert self._ending is not None
        return self._ending

    # Sending (main thread).

    def _messages(self) -> Iterator[tuple[float, Message]]:
        conn = self.original.conn
        for record in self.source.records(self.port):
            if record.conn == conn and record.dir == ">" and record.message is not None:
                yield record.t, record.message

    def _wait_until(self, deadline: float) -> bool:
        """Sleep to a deadline; True if the call ended meanwhile."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining > 0.002:
                # Woken early when the application ends the call; the last
                # stretch is slept precisely.
                if self._ended.wait(min(remaining - 0.0015, 0.5)):
                    return True
                continue
            self.max_lag = max(self.max_lag, sleep_until(deadline))
            return self._ended.is_set()

    def _send_all(self) -> None:
        assert self.conn is not None and self.original.first_t is not None
        first_t = self.original.first_t
        pacer: Pacer | None = None
        for t, message in self._messages():
            if pacer is None:
                # The clock starts with the first message, once the file is open and
                # the trace read up to it: that work must not make every send late.
                pacer = Pacer(0.0, self.speed)
            if self._wait_until(pacer.at(t - first_t)):
                return
            try:
                self.conn.send(message)
            except OSError as exc:
                # The application went away; its hangup or close may be in flight
                # to the receiver, which tells the truer story.
                if not self._ended.wait(SEND_FAILURE_GRACE):
                    what = "reset" if isinstance(exc, ConnectionResetError) else "closed"
                    self.end(f"app-{what}", f"the application {what} the connection")
                return
            now = self.t()
            self.sent.add(now, message)
            self.output.message(self.call, now, ">", message)
            if message.kind == Kind.HANGUP:
                self.sent_hangup = True
        # All sent: wait for the application to end the call, or for --linger.
        if not self._ended.wait(self.linger):
            if self.sent_hangup:
                self.end("caller-hangup", "hung up as the original caller did")
            else:
                self.end("caller-close", f"all sent; closed after --linger {self.linger:g}s")

    # Receiving (its own thread).

    def _receive_guarded(self) -> None:
        try:
            self._receive()
        except BrokenPipeError:
            self.end("output-closed", "the output was closed")
            self._drop()
        except Exception as exc:  # never die silently: the call must still end
            if not self._ended.is_set():
                self.end("error", f"receiving failed: {exc}", ExitStatus.FAILED)
                self._drop()

    def _receive(self) -> None:
        assert self.conn is not None
        try:
            for now, message in self.conn.receive(None):
                if self._on_message(now, message):
                    self._drop()
                    return
        except PeerReset:
            if not self._ended.is_set():
                self._app_gone("app-reset", "the application reset the connection")
            return
        except TruncatedMessage as exc:
            if not self._ended.is_set():
                self.output.event(
                    self.call,
                    self.t(),
                    "warning",
                    f"the application's stream ended inside a message: {exc}",
                )
                self.end(
                    "protocol-error",
                    "the application closed inside a message",
                    ExitStatus.PROTOCOL,
                )
            return
        except OSError:
            if self._ended.is_set():
                return  # our own shutdown
            raise
        if not self._ended.is_set():
            self._app_gone("app-close", "the application closed the connection")

    def _app_gone(self, reason: str, text: str) -> None:
        if self.sent_hangup:
            # After our hangup, the application closing is the answer, not the cause.
            self.end("caller-hangup", f"hung up as the original caller did; {text.lower()}")
        else:
            self.end(reason, text)

    def _on_message(self, now: float, message: Message) -> bool:
        """One message from the application; True if it ends the call."""
        t = self.t(now)
        self.received.add(t, message)
        self.output.message(self.call, t, "<", message)
        if message.refused_by_asterisk:
            self.received.note_refused(message)
            what = message.problem or f"a {message.name} message (kind 0x{message.kind:02x})"
            text = (
                f"the application sent {what} at {t:.3f}s: Asterisk ends the session on "
                "anything but hangup and non-empty audio"
            )
            if self.strict:
                self.output.event(self.call, t, "warning", text)
                self.end("refused", text, ExitStatus.PROTOCOL)
                return True
            self.output.event(self.call, t, "warning", f"{text}; --lenient: carrying on")
            return False
        if message.kind == Kind.HANGUP:
            self._app_gone("app-hangup", "the application hung up")
            return True
        if message.is_audio and self.recording is not None and message.rate:
            started = self.recording.write(message.rate, message.payload)
            if started is not None:
                self.output.event(
                    self.call,
                    t,
                    "warning",
                    f"the application changed rate to {message.rate} Hz; that audio is "
                    f"recorded in {started}",
                    path=str(started),
                )
        return False

    def _drop(self) -> None:
        """Close at once, as Asterisk does; wakes the receiver."""
        if self.conn is not None:
            try:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _finish(self) -> None:
        if self._ending is None:
            self.end("error", "ended by an internal error", ExitStatus.FAILED)
        self._ended.set()
        self._drop()
        if self._receiver is not None:
            self._receiver.join(timeout=2.0)
        if self.conn is not None:
            self.conn.close()
        self._report()

    # The summary.

    def _report(self) -> None:
        assert self._ending is not None
        ending, original, t = self._ending, self.original, self.t()
        diagnoses = diagnose_application(self.received, self.sent)
        if ending.reason == "refused":
            diagnoses = [d for d in diagnoses if d.code != "refused"]
        for diagnosis in diagnoses:
            text = diagnosis.text
            if diagnosis.code in ("burst", "pacing") and self.speed != 1:
                text += f" (this replay ran at --speed {self.speed:g}; an echo follows it)"
            self.output.event(self.call, t, "diagnosis", text, code=diagnosis.code)
        same: bool | None = None
        if self.comparable:
            same = self._compare(t)
        else:
            self.output.event(
                self.call,
                t,
                "diagnosis",
                "nothing to compare with: a raw dump holds only what Asterisk sent",
                code="compare",
                item="overall",
                same=None,
            )
        self.output.event(
            self.call,
            t,
            "call-end",
            f"{ending.text}; after {ending.t:.2f}s; > {self.sent.summary()}; "
            f"< {self.received.summary()}",
            reason=ending.reason,
            duration=round(ending.t, 6),
            sent=self.sent.as_dict(),
            received=self.received.as_dict(),
            original=original.app.as_dict() if self.comparable else None,
            original_ending=original.ending()[0] if self.comparable else None,
            max_send_lag_ms=round(self.max_lag * 1000, 3),
            same=same,
        )

    def _compare(self, t: float) -> bool:
        """This time beside the original, a line per item and one overall; True if alike."""
        assert self._ending is not None
        differences = []
        for item, now_text, then_text, same, extra in compare(
            self.received,
            self.original.app,
            (self._ending.reason, self._ending.t),
            self.original.ending(),
        ):
            if not same:
                differences.append(item)
            self.output.event(
                self.call,
                t,
                "diagnosis",
                f"compare {item}: this time {now_text}; originally {then_text}",
                code="compare",
                item=item,
                same=same,
                **extra,
            )
        if differences:
            text = f"the application differs from the original in: {', '.join(differences)}"
        else:
            text = "the application answered as in the original"
        self.output.event(
            self.call,
            t,
            "diagnosis",
            text,
            code="compare",
            item="overall",
            same=not differences,
            differences=differences,
        )
        return not differences


def _kinds_text(stats: DirectionStats) -> str:
    if not stats.messages:
        return "0 messages"
    kinds = ", ".join(f"{name} {n}" for name, n in sorted(stats.kinds.items()))
    return f"{stats.messages} message{'s' if stats.messages != 1 else ''} ({kinds})"


def compare(
    now: DirectionStats,
    then: DirectionStats,
    now_end: tuple[str, float],
    then_end: tuple[str, float],
) -> list[tuple[str, str, str, bool, dict[str, Any]]]:
    """(item, this time, originally, same?, fields) for each thing compared."""

    def audio(stats: DirectionStats) -> str:
        if not stats.audio_messages:
            return "none"
        rates = "/".join(str(r) for r in sorted(stats.rates))
        return f"{stats.audio_seconds:.3f}s at {rates} Hz"

    return [
        (
            "messages",
            _kinds_text(now),
            _kinds_text(then),
            Counter(now.kinds) == Counter(then.kinds),
            {"now": dict(now.kinds), "original": dict(then.kinds)},
        ),
        (
            "audio",
            audio(now),
            audio(then),
            abs(now.audio_seconds - then.audio_seconds) <= AUDIO_TOLERANCE
            and set(now.rates) == set(then.rates),
            {"now": round(now.audio_seconds, 6), "original": round(then.audio_seconds, 6)},
        ),
        (
            "dtmf",
            now.digits or "none",
            then.digits or "none",
            now.digits == then.digits,
            {"now": now.digits, "original": then.digits},
        ),
        (
            "ending",
            f"{now_end[0]} after {now_end[1]:.2f}s",
            f"{then_end[0]} after {then_end[1]:.2f}s",
            now_end[0] == then_end[0],
            {"now": now_end[0], "original": then_end[0]},
        ),
    ]
