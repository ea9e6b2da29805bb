"""What each call of a load run hears from the application: its echoes timed, its
audio counted into the call report's statistics and the period's.

The application's run messages (the same kind and size as the one before,
nearly every frame) are only noted as they come, and taken together about once
a second (analysis.runs); the others are taken one at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from audiosocket_cli.analysis.runs import add_runs
from audiosocket_cli.protocol.wire import AUDIO_RATES, Message

if TYPE_CHECKING:
    from audiosocket_cli.engines.load.calls import Call
    from audiosocket_cli.engines.load.worker import Worker

GAP = 0.200  # s without audio, once the application had been talking, is a gap


def heard(worker: Worker, call: Call, t: float, message: Message) -> None:
    """One message from the application, `t` s into the call: timed against our frame
    it echoes (if it does) and given to the call report, whose statistics the
    period's counts are taken from (count_in)."""
    kind, payload = message
    size = len(payload)
    if call.batched:
        if call.app.run_shape == (kind, size):
            # One more of the application's run: noted for its slot's next batch
            # (take_runs), its echo matched now.
            call.runs.append(t)
            call.run_payload = payload
            at = call.sent.pop(hash(payload), None)
            if at is not None:
                worker.stats.echo.pending.append(call.up_at + t - at)
            return
        if call.runs:
            take_runs(worker, (call,))  # in order: the batch before this message
    report, stats = call.report, worker.stats
    assert report is not None
    rate = AUDIO_RATES.get(kind)
    if rate is None or not size:
        report.message(t, "<", message)
        return
    now = call.up_at + t
    duration = size / (2 * rate)
    if call.first_audio is None:
        call.first_audio = call.acct_at = now
        stats.ttfa.add(now - call.up_at)
        if worker.on_ttfa is not None:
            worker.on_ttfa(now - call.up_at)
    else:
        gap = now - call.last_audio
        stats.jitter.pending.append(abs(gap - call.last_dur))
        if gap > GAP:
            stats.gaps += 1
    call.last_audio, call.last_dur = now, duration
    talk = call.talk
    if talk is not None:
        talk.ear.heard(t, payload, rate)
    at = call.sent.pop(hash(payload), None)
    if at is not None:
        stats.echo.pending.append(now - at)
    if call.plain:
        call.app.add(t, message)  # all report.message() would do: nothing recorded or shown
    else:
        report.message(t, "<", message)


def take_runs(worker: Worker, calls: Iterable[Call]) -> None:
    """The run messages the calls heard since their last batch, into their statistics
    (analysis.runs) and the period's jitter and gaps, as heard() takes the others."""
    taking = [call for call in calls if call.runs]
    if not taking:
        return
    gaps, jitter = add_runs([(call.app, call.runs, call.run_payload) for call in taking])
    stats = worker.stats
    stats.jitter.pending.frombytes(abs(jitter).tobytes())
    stats.gaps += int((gaps > GAP).sum())
    for call in taking:
        kind, size = call.app.run_shape
        call.last_audio = call.up_at + call.runs[-1]
        call.last_dur = size / (2 * AUDIO_RATES[kind])
        call.runs = []


def count_in(worker: Worker, call: Call) -> None:
    """The period's share of what the application sent: counted once a period (and
    at the call's end) from the call report's statistics, not once a message."""
    app = call.app
    if app is None:
        return
    messages, wire, audio = app.messages, app.wire_bytes, app.audio_seconds
    held = len(call.runs)
    if held:
        # Run messages not yet taken into the statistics count in this period all
        # the same (their jitter, gaps and bursts come with their batch).
        kind, size = app.run_shape
        messages += held
        wire += held * (3 + size)
        audio += held * size / (2 * AUDIO_RATES[kind])
    now = (messages, wire, audio, app.bursts)
    before = call.counted
    stats = worker.stats
    stats.msgs_in += now[0] - before[0]
    stats.bytes_in += now[1] - before[1]
    stats.audio_s += now[2] - before[2]
    stats.bursts += now[3] - before[3]
    call.counted = now
