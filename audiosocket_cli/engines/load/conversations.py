"""`load --scenario`: every call holds a conversation, on the worker's loop.

Each call gets a conversation.script.Script (the scenario as a frame source)
and its AgentEar. The slot's tick asks each member's script for its frame at
the frame's moment, as dial's sending thread does for `converse`; the
application's audio goes to the ear as it is read, stamped as the call
report stamps it (seconds since the connection). A script's DTMF and hangup
go out at once; its end (the last step, a hangup, a close) is taken after the
tick's pass, as --duration's ends are, so that no member's frame waits for a
conclusion. At the call's end the script measures and judges, and the figures
go into the period's statistics (and a JSON line per conversation with
--conversations).
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from audiosocket_cli.engines.conversation.results import BargeInResult, TurnResult, call_fields
from audiosocket_cli.engines.conversation.script import AgentEar, Script
from audiosocket_cli.engines.conversation.verdicts import Thresholds
from audiosocket_cli.protocol.session import Ended
from audiosocket_cli.protocol.wire import Message

if TYPE_CHECKING:
    from audiosocket_cli.engines.load.calls import Call, Slot
    from audiosocket_cli.engines.load.worker import Worker


class Talk:
    """One call's conversation: its script, its ear, and the Line the script acts on."""

    __slots__ = ("worker", "call", "script", "ear", "ending")

    def __init__(self, worker: Worker, call: Call, start: float) -> None:
        plan = worker.plan
        self.worker = worker
        self.call = call
        self.ear = AgentEar()
        self.script = Script(plan.scenario, plan.utterances, self.ear, worker.frame_s, start=start)
        self.script.caller = self
        self.ending: tuple[str, str] | None = None

    # The Line.

    def send_now(self, message: Message) -> None:
        call = self.call
        if call.state != "up" or call.session is None:
            return
        now = time.monotonic()
        self.worker._send(call, message.encode(), now)
        if call.state == "up":
            call.session.sent(message, now)
            call.ours(now - call.up_at, message)

    def end_call(self, ended: str, detail: str) -> None:
        if self.ending is None:
            self.ending = (ended, detail)


def tick(worker: Worker, slot: Slot) -> None:
    """A slot's frames when its calls hold conversations: each member's script gives its
    frame; the sends are load's own (lateness, outbox, write failures)."""
    due = slot.due
    stats = worker.stats
    late_add = stats.late.add
    rate, samples, frame_s = worker.plan.sample_rate, worker.plan.frame_samples, worker.frame_s
    kind = worker.kind
    k_end = worker.k_end
    monotonic = time.monotonic
    ending: list[tuple[Any, str, str]] = []
    for call in list(slot.calls.values()):
        talk = call.talk
        k = call.k
        if k >= k_end:
            ending.append((call, "caller-close", f"--duration {worker.plan.duration:g} passed"))
            continue
        call.k = k + 1
        pcm = talk.script.next_frame(rate, samples)
        if call.state != "up":
            continue  # its DTMF or hangup could not be written: ended already
        if pcm is None:
            ended, detail = talk.ending or ("caller-close", "the scenario ended")
            ending.append((call, ended, detail))
            continue
        size = len(pcm)
        data = bytes((kind, size >> 8, size & 0xFF)) + pcm
        now = monotonic()
        late = now - due
        late_add(late if late > 0 else 0.0)
        if late > call.max_late:
            call.max_late = late
        call.last_sent = now
        worker._send(call, data, now)
        if not k and call.state == "up":
            call.ours(now - call.up_at, Message(kind, pcm))
    for call, ended, detail in ending:
        if call.state == "up":
            worker._end(call, call.session.close(ended, detail, due))
    if slot.calls:
        slot.due = due + frame_s
        slot.timer = worker.reactor.call_at(slot.due, lambda: worker._tick(slot))
    else:
        slot.timer = None


class ConversationLog:
    """--conversations FILE: a JSON line per concluded conversation, appended with one
    write each (O_APPEND: the workers' lines never interleave)."""

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.error: str | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self.error is not None:
            return
        try:
            os.write(self.fd, (json.dumps(record) + "\n").encode())
        except OSError as exc:
            self.error = exc.strerror or str(exc)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def conclude(worker: Worker, call: Call, ended: Ended) -> None:
    """The call has ended: its conversation measured and judged into the period's
    statistics. A failure here is a bug: it is said once, and the call still ends."""
    talk = call.talk
    if talk is None:
        return
    thresholds = worker.plan.thresholds or Thresholds()
    stats = worker.stats
    try:
        done = talk.script.conclude(ended.t, ended.ended, thresholds)
    except Exception as exc:
        stats.conversations += 1
        stats.conversations_failed += 1
        stats.failed_expect["measures"] += 1
        worker.say_once("converse-failed", f"a conversation could not be measured: {exc!r}")
        return
    measures, expectations = done.measures, done.expectations
    stats.conversations += 1
    failed = [e for e in expectations if not e.passed]
    if failed:
        stats.conversations_failed += 1
        stats.failed_expect.update(e.expect for e in failed)
    if measures.first_response is not None:
        stats.first_response.add(measures.first_response)
    for turn in measures.turns:
        if turn.latency is not None:
            stats.response.add(turn.latency)
    for barge_in in measures.barge_ins:
        if barge_in.stop_time is not None and barge_in.stopped:
            stats.barge_in_stop.add(barge_in.stop_time)
    stats.talk_overs += len(measures.talk_overs)
    stats.dead_air += len(measures.dead_air)
    log = worker.conversation_log
    if log is not None:
        log.write(
            {
                "n": call.n,
                "uuid": call.uuid,
                "ended": ended.ended,
                "detail": ended.detail,
                "duration": round(ended.t, 3),
                "first_response": (
                    None if measures.first_response is None else round(measures.first_response, 3)
                ),
                "conversation": call_fields(measures, expectations, worker.plan.scenario.name),
                "turns": [TurnResult.of(m).fields() for m in measures.turns],
                "barge_ins": [BargeInResult.of(b).fields() for b in measures.barge_ins],
                "expectations": [e.fields() for e in expectations],
                "max_send_lag_ms": round(call.max_late * 1000, 3),
            }
        )
        if log.error is not None:
            worker.say_once("conversations", f"--conversations: cannot write: {log.error}")
