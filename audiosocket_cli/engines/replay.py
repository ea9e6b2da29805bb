"""Replaying one call of a trace, raw dump or capture: the engine behind `audiosocket replay`.

The input is read twice: once to list its calls and count what the
application sent originally (scan, pick), once to stream the chosen call's
`>` messages out. The call itself is engines.dial's Caller, given those
messages with their times: the same session, pacing and rules as `dial`.
What comes back is compared with the original at the end.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from audiosocket_cli.analysis.stats import DirectionStats
from audiosocket_cli.engines.call import CallReport
from audiosocket_cli.engines.dial import Caller, CallPlan
from audiosocket_cli.files.trace import (
    Record,
    TraceFormatError,
    open_input,
    read_records,
    sniff,
    v1_ending,
)
from audiosocket_cli.media.recorder import Recording
from audiosocket_cli.net.address import Address
from audiosocket_cli.output.sinks import Output
from audiosocket_cli.protocol.events import CallEnd, CallInfo
from audiosocket_cli.protocol.session import Ended, Rules
from audiosocket_cli.protocol.wire import Kind, Message, ProtocolError

AUDIO_TOLERANCE = 0.0005  # s: audio durations this close are the same


class ReplayError(Exception):
    """The input cannot be replayed; `usage` when the user must choose (--call)."""

    def __init__(self, text: str, usage: bool = False, param: str | None = None) -> None:
        super().__init__(text)
        self.usage = usage
        self.param = param


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
        return CallInfo(self.conn, self.uuid).call_id

    def ending(self) -> tuple[str, float]:
        """How the original call ended, and when."""
        if self.first_hangup is not None:
            t, direction = self.first_hangup
            return ("caller-hangup" if direction == ">" else "app-hangup"), t
        when = self.end_t if self.end_t is not None else self.last_t
        for key in ("ended", "how", "reason"):
            value = self.end_fields.get(key)
            if isinstance(value, str):
                name = v1_ending(value)
                if name:
                    return name, when
        return "unknown", when


# Reading the input.


class ReplayInput:
    """The TRACE argument as a file that can be read twice."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.label = "<stdin>" if name == "-" else name
        self._spool: BinaryIO | None = None
        if name == "-":
            spool: Any = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            shutil.copyfileobj(sys.stdin.buffer, spool)
            self._spool = spool

    def open(self) -> BinaryIO:
        if self._spool is not None:
            self._spool.seek(0)
            return self._spool
        try:
            return open_input(self.name)[0]
        except TraceFormatError as exc:
            raise ReplayError(str(exc)) from None

    def records(self, port: int | None) -> Iterator[Record]:
        stream = self.open()
        try:
            yield from read_records(stream, self.label, ">", port=port)
        except (TraceFormatError, ProtocolError) as exc:
            raise ReplayError(str(exc)) from None
        except OSError as exc:
            raise ReplayError(f"{self.label}: cannot read: {exc.strerror or exc}") from None
        finally:
            if stream is not self._spool:
                stream.close()

    def kind(self) -> tuple[str, bytes]:
        stream = self.open()
        try:
            head = stream.read(256)
        except OSError as exc:
            raise ReplayError(f"{self.label}: cannot read: {exc.strerror or exc}") from None
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
        first = False
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
        raise ReplayError(f"{source.label}: empty: nothing to replay")
    return calls, kind


def pick(calls: dict[int, CallScan], wanted: str | None, label: str) -> CallScan:
    playable = [c for c in calls.values() if c.to_app]
    if wanted is None:
        if not playable:
            raise ReplayError(f"{label}: no messages toward the application to replay")
        if len(playable) > 1:
            raise ReplayError(
                f"{label} holds {len(playable)} calls; pick one with --call: {_listing(playable)}",
                usage=True,
            )
        return playable[0]
    text = wanted.strip().lower()
    if text.startswith("#"):
        found = [c for c in calls.values() if f"#{c.conn}" == text]
    else:
        found = [c for c in calls.values() if c.uuid and c.uuid.lower().startswith(text)]
    if not found:
        raise ReplayError(
            f"no call {wanted!r} in {label} (calls: {_listing(list(calls.values()))})",
            usage=True,
            param="--call",
        )
    if len(found) > 1:
        raise ReplayError(
            f"{wanted!r} matches {len(found)} calls: {_listing(found)}", usage=True, param="--call"
        )
    if not found[0].to_app:
        raise ReplayError(f"call {found[0].call_id} has no messages toward the application")
    return found[0]


def _listing(calls: list[CallScan]) -> str:
    return ", ".join(
        f"{c.call_id} (#{c.conn}, {c.to_app} message{'s' if c.to_app != 1 else ''} "
        "to the application)"
        for c in calls
    )


# The replay.


def replay(
    source: ReplayInput,
    original: CallScan,
    port: int | None,
    address: Address,
    *,
    speed: float,
    linger: float,
    rules: Rules,
    output: Output,
    recording: Recording | None,
    comparable: bool = True,
    pcap: Any = None,
) -> CallEnd:
    """Send one call's `>` side with its timing; the CallEnd of the call made."""
    if original.first_t is None:
        raise ReplayError(f"call {original.call_id} has no messages toward the application")
    first_t = original.first_t

    def messages() -> Iterator[tuple[float, Message]]:
        # As they were, the UUID message included; the clock starts with the first.
        for record in source.records(port):
            if record.conn == original.conn and record.dir == ">" and record.message is not None:
                yield record.t - first_t, record.message

    def before_start(report: CallReport) -> None:
        for t, text in original.warnings:
            report.warning(0.0, f"in the trace at {t:.3f}s: {text}")

    def end_fields(report: CallReport, ended: Ended) -> dict[str, Any]:
        same = _compare(report, ended, original) if comparable else None
        if not comparable:
            report.output.diagnosis(
                report.info,
                ended.t,
                "compare",
                "nothing to compare with: a raw dump holds only what Asterisk sent",
                item="overall",
                same=None,
            )
        return {
            "original": original.app.as_dict() if comparable else None,
            "original_ending": original.ending()[0] if comparable else None,
            "same": same,
        }

    plan = CallPlan(
        address=address,
        uuid=original.uuid or _fresh_uuid(),
        rate=original.rate or 8000,
        source=None,
        source_name=f"trace:{source.label}",
        messages=messages(),
        send_uuid=False,
        linger=linger,
        speed=speed,
        rules=rules,
    )
    caller = Caller(
        plan,
        output,
        recording=recording,
        start_text=f"replaying {original.call_id} from {source.label} to {address} speed={speed:g}",
        start_fields={
            "peer": str(address),
            "source": source.label,
            "original_call": original.call_id,
            "speed": speed,
        },
        end_fields=end_fields,
        before_start=before_start,
        pcap_file=pcap,
    )
    return caller.run()


def _fresh_uuid() -> str:
    import uuid

    return str(uuid.uuid4())


def _compare(report: CallReport, ended: Ended, original: CallScan) -> bool:
    """This time beside the original, a line per item and one overall; True if alike."""
    differences = []
    output, info, t = report.output, report.info, ended.t
    for item, now_text, then_text, same, extra in compare(
        report.stats["<"], original.app, (ended.ended, ended.t), original.ending()
    ):
        if not same:
            differences.append(item)
        output.diagnosis(
            info,
            t,
            "compare",
            f"compare {item}: this time {now_text}; originally {then_text}",
            item=item,
            same=same,
            **extra,
        )
    if differences:
        text = f"the application differs from the original in: {', '.join(differences)}"
    else:
        text = "the application answered as in the original"
    output.diagnosis(
        info, t, "compare", text, item="overall", same=not differences, differences=differences
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
