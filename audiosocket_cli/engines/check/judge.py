"""How a call is judged, the same way by every case that places one."""

from __future__ import annotations

from audiosocket_cli.engines.check.probe import (
    CaseRun,
    Probe,
    Run,
    audio_frames,
    hexdump,
    tone,
)
from audiosocket_cli.engines.check.results import PASS, Outcome, failed, passed, warned

RATE_GRACE = 0.5  # s after our first audio before the application must answer at its rate


def kept_and_answered(run: Run, p: Probe, after: float, what: str, until: float) -> Outcome:
    """The framing verdict: the application kept the call and, if it answers at all,
    sent audio after `after`: waited for (the call going on) up to --answer-timeout,
    so that a slow speaker is judged by its own first-audio time, not ours."""
    if run.answers and p.app_ended(until) is None:
        p.await_answer(after)
        until = max(until, p.now())
    ended = p.app_ended(until)
    if ended is not None:
        return failed(
            f"the application ended the call after {what}: {ended}",
            f"our last bytes before it at {after:.3f}s",
            p.gone_at if p.gone_at is not None else p.now(),
        )
    if run.answers:
        n = p.audio_after(after)
        if not n:
            return failed(
                f"the application stopped answering after {what}: no audio from "
                f"{after:.3f}s to {until:.3f}s (--answer-timeout {run.answer_timeout:g} s)",
                f"{p.stats['<'].audio_messages} audio messages before it",
                after,
            )
        return passed(f"kept the call and answered ({n} audio messages after it)", t=after)
    return passed("kept the call (the application sends no audio back)", t=after)


def reference_call(
    cr: CaseRun, rate: int = 8000, seconds: float = 2.0, linger: float = 0.3
) -> tuple[Probe, Outcome]:
    """An ordinary call: UUID, `seconds` of a tone at `rate` in 20 ms frames, linger, close."""
    p = cr.probe(rate=rate)
    p.send_uuid()
    p.play(audio_frames(tone(rate, seconds), rate))
    p.pause(linger)
    outcome = kept_and_answered(cr.run, p, 0.0, "the call started", p.now())
    if outcome.verdict == PASS and cr.run.answers:
        mismatch = rate_mismatch(p, rate)
        if mismatch is not None:
            outcome.evidence = mismatch.reason
    p.close()
    return p, outcome


def rate_mismatch(p: Probe, rate: int) -> Outcome | None:
    """A warn if the application answered at another rate than the caller's, else None.
    Asterisk accepts and transcodes it (the `rate-mismatch` diagnosis of dial): one
    finding, in 3.3, never a failure of the call."""
    if p.first_audio_sent is None:
        return None
    after = p.first_audio_sent + RATE_GRACE
    rates = p.rates_after(after)
    wrong = {r: n for r, n in rates.items() if r != rate}
    if not wrong:
        return None
    at, message = next(
        (at, m)
        for at, m in p.received
        if at > after and m.is_audio and m.payload and m.rate != rate
    )
    shown = ", ".join(f"{n}x {r} Hz" for r, n in sorted(wrong.items()))
    return warned(
        f"the application answered a {rate} Hz call at another rate ({shown}): Asterisk "
        "transcodes it, so nothing fails, but the caller's band is thrown away",
        f"first at {at:.3f}s: {hexdump(message.encode(), 6)}",
        at,
    )


def normal_call_after(cr: CaseRun, what: str) -> Outcome:
    """Section 4's test of survival: an ordinary 0.5 s call must still work."""
    try:
        p = cr.probe(keep=False)
    except OSError as exc:
        return failed(f"after {what}, a normal call could not connect: {exc}")
    p.send_uuid()
    p.play(audio_frames(tone(8000, 0.5), 8000))
    p.pause(0.2)
    outcome = kept_and_answered(cr.run, p, 0.0, "the call started", p.now())
    p.close()
    if outcome.verdict != PASS:
        return failed(f"after {what}, a normal call failed: {outcome.reason}", outcome.evidence)
    return passed(f"survived {what}: a normal call afterwards {outcome.reason}")
