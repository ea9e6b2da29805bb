"""Section 2 of `check`: a real Asterisk call, as Asterisk places and ends it."""

from __future__ import annotations

import threading
import uuid as uuid_lib
from collections.abc import Callable

from audiosocket_cli.analysis.diagnoses import diagnose_asterisk
from audiosocket_cli.engines.check.judge import kept_and_answered, reference_call
from audiosocket_cli.engines.check.probe import (
    CLOSE_LIMIT,
    CaseRun,
    Probe,
    audio_frames,
    hexdump,
    to_ulaw,
    tone,
)
from audiosocket_cli.engines.check.results import PASS, Outcome, failed, passed, warned
from audiosocket_cli.protocol.wire import Kind, Message

CaseFunc = Callable[[CaseRun], Outcome]
QUEUE_SLACK = 0.5  # s beyond the reference call's answer time that a caller waited: queued


def rate_case(rate: int, seconds: float = 2.0) -> CaseFunc:
    def case(cr: CaseRun) -> Outcome:
        return reference_call(cr, rate, seconds)[1]

    return case


def case_dtmf(cr: CaseRun) -> Outcome:
    p = cr.probe()
    p.send_uuid()
    p.play(audio_frames(tone(8000, 0.5), 8000))
    p.send(Message.dtmf("5"))
    after = p.now()
    p.play(audio_frames(tone(8000, 0.6), 8000))
    p.pause(0.2)
    outcome = kept_and_answered(cr.run, p, after, f"the DTMF digit 5 at {after:.3f}s", p.now())
    outcome.evidence = f"03 00 01 35 at {after:.3f}s; {outcome.evidence}".strip("; ")
    p.close()
    return outcome


def case_silence(cr: CaseRun) -> Outcome:
    p = cr.probe()
    p.send_uuid()
    p.play(audio_frames(tone(8000, 0.4), 8000))
    quiet = p.now()
    p.pause(2.0)  # Asterisk sends nothing while its side is silent
    resumed = p.now()
    p.play(audio_frames(tone(8000, 0.4), 8000))
    p.pause(0.2)
    outcome = kept_and_answered(cr.run, p, resumed, "2 s with no messages", p.now())
    outcome.evidence = f"nothing sent from {quiet:.3f}s to {resumed:.3f}s; {outcome.evidence}"
    p.close()
    return outcome


def case_short_last(cr: CaseRun) -> Outcome:
    p = cr.probe()
    p.send_uuid()
    pcm = tone(8000, 0.5)[: 24 * 320 + 224]  # a file's end: 224 bytes, as observed
    p.play(audio_frames(pcm, 8000))
    after = p.now()
    p.pause(0.4)
    outcome = kept_and_answered(cr.run, p, 0.0, "a short last frame", p.now())
    outcome.evidence = f"a 224-byte last frame at {after:.3f}s; {outcome.evidence}".strip("; ")
    p.close()
    return outcome


def closing_case(hangup_first: bool) -> CaseFunc:
    def case(cr: CaseRun) -> Outcome:
        p = cr.probe()
        p.send_uuid()
        p.play(audio_frames(tone(8000, 0.5), 8000))
        ended = p.app_ended()
        if ended is not None:
            p.close()
            return failed(f"the application ended the call first: {ended}", t=p.gone_at)
        p.quiet()  # what it sends in answer to our last frames, read: our close is a FIN
        if hangup_first:
            p.send(Message.hangup())
        p.close()  # as Asterisk does: close(), no shutdown; the application's next write resets
        fin = p.fin_at or 0.0
        how = "0x00 then close" if hangup_first else "close, no 0x00"
        closed, after = p.closed_by_app(CLOSE_LIMIT)
        if closed is None:
            return warned(
                "cannot tell whether the application closed its side: this system does not "
                "show the kernel's TCP table (/proc/net/tcp)",
                f"{how} at {fin:.3f}s",
                fin,
            )
        if not closed:
            return failed(
                f"the application did not close its side within {CLOSE_LIMIT:g} s of "
                "Asterisk's close (a socket left in CLOSE-WAIT)",
                f"{how} at {fin:.3f}s; our end still waited for its FIN at "
                f"{fin + CLOSE_LIMIT:.3f}s",
                fin,
            )
        return passed(
            f"closed its side {after * 1000:.0f} ms after Asterisk's close",
            f"{how} at {fin:.3f}s; the application's end seen at {fin + after:.3f}s",
            fin + after,
        )

    return case


def case_ulaw(cr: CaseRun) -> Outcome:
    p = cr.probe()
    p.send_uuid()
    ulaw = to_ulaw(tone(8000, 1.0))
    p.play(Message(Kind.AUDIO_8K, ulaw[i : i + 160]) for i in range(0, len(ulaw), 160))
    p.pause(0.2)
    outcome = kept_and_answered(cr.run, p, 0.0, "mu-law labelled as slin", p.now())
    ours = [d.code for d in diagnose_asterisk(p.stats[">"])]
    outcome.evidence = (
        f"50 messages of 160 bytes, kind 0x10, mu-law (the tool's own diagnosis of them: "
        f"{', '.join(ours) or 'none'}); {outcome.evidence}"
    ).strip("; ")
    p.close()
    return outcome


def case_second_uuid(cr: CaseRun) -> Outcome:
    p = cr.probe()
    p.send_uuid()
    p.play(audio_frames(tone(8000, 0.4), 8000))
    second = Message.for_uuid(str(uuid_lib.uuid4()))
    p.send(second)
    after = p.now()
    p.play(audio_frames(tone(8000, 0.4), 8000))
    p.pause(0.2)
    outcome = kept_and_answered(cr.run, p, after, "a second UUID", p.now())
    outcome.evidence = f"at {after:.3f}s: {hexdump(second.encode(), 8)}; {outcome.evidence}"
    p.close()
    return outcome


def case_many_calls(cr: CaseRun) -> Outcome:
    """20 calls one after another, then 20 at once. Each is waited for up to
    --answer-timeout (an application may serve a few calls at a time: callers then
    wait, which is a warn with its figures, not a failure); every socket must be
    closed by the application within CLOSE_LIMIT of ours (a leak: CLOSE-WAIT)."""
    run = cr.run
    probes: list[tuple[int, Probe]] = []
    problems: list[str] = []
    lock = threading.Lock()

    def one(k: int, seconds: float) -> None:
        try:
            p = cr.probe()
        except OSError as exc:
            with lock:
                problems.append(f"call {k}: could not connect: {exc}")
            return
        with lock:
            probes.append((k, p))
        p.send_uuid()
        p.play(audio_frames(tone(8000, seconds), 8000))
        p.pause(0.1)
        outcome = kept_and_answered(run, p, 0.0, "the call started", p.now())
        if outcome.verdict != PASS:
            with lock:
                problems.append(f"call {k}: {outcome.reason}")
        p.close()

    for k in range(1, 21):
        one(k, 0.2)
    threads = [threading.Thread(target=one, args=(k, 0.5), daemon=True) for k in range(21, 41)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(run.timeout + run.answer_timeout + 2)
    leaked = []
    for k, p in sorted(probes, key=lambda kp: kp[0]):
        closed, _ = p.closed_by_app(CLOSE_LIMIT)
        if closed is False:
            leaked.append(k)
    if problems:
        return failed(
            f"{len(problems)} of 40 calls were not answered: {problems[0]}",
            "; ".join(sorted(problems)[:5]),
        )
    if leaked:
        return failed(
            f"{len(leaked)} of {len(probes)} calls were not closed by the application "
            f"within {CLOSE_LIMIT:g} s of Asterisk's close: it leaks connections",
            f"calls {', '.join(map(str, leaked[:10]))} (1-20 one after another, 21-40 at once)",
        )
    # How long the simultaneous callers waited for their answer, against the reference.
    waits = {
        k: first - (p.first_audio_sent or 0.0)
        for k, p in probes
        if k > 20 and (first := p.stats["<"].first_audio) is not None
    }
    usual = (run.reference_first_audio or 0.0) + QUEUE_SLACK
    queued = {k: w for k, w in waits.items() if w > usual}
    if run.answers and queued:
        served = most_at_once(
            [
                (p.started + first, p.started + (p.fin_at if p.fin_at is not None else p.now()))
                for k, p in probes
                if k > 20 and (first := p.stats["<"].first_audio) is not None
            ]
        )
        worst = max(queued.values())
        return warned(
            f"of 20 calls at once, {len(queued)} waited up to {worst:.1f} s for an answer: "
            f"the application answered at most {served} calls at the same time, and the "
            "others heard silence",
            f"the reference call was answered {usual - QUEUE_SLACK:.2f} s after its first "
            f"audio; waits beyond {usual:.2f} s: "
            + ", ".join(f"call {k} {w:.2f} s" for k, w in sorted(queued.items())[:5]),
        )
    return passed(
        "40 calls answered; the application closed every socket after Asterisk's close",
        f"{len(probes)} calls",
    )


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most (start, end) spans that overlap at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most
