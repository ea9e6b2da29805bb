"""Section 3 of `check`: what the application sends back, measured on the calls of
sections 1 and 2 (3.1, 3.2, 3.3, 3.6 and 3.7 on 2.1 to 2.3)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from audiosocket_cli.analysis.diagnoses import diagnose_application
from audiosocket_cli.analysis.pacing import PACE_BLOCK, PACE_TOLERANCE
from audiosocket_cli.analysis.stats import BURST_AUDIO
from audiosocket_cli.engines.check.judge import rate_mismatch
from audiosocket_cli.engines.check.probe import FRAME, CaseRun, Probe, percentile
from audiosocket_cli.engines.check.results import Outcome, failed, passed, warned

DISTURBED = 0.015  # s: our own sends later than this make a timing measurement unreliable
RATIO_TOLERANCE = 0.05  # the whole call's real-time ratio within 5%, or fail
JITTER_WARN = 0.020  # s: p99 gap deviation above this (plus our own) is worth a warning
FIRST_ANSWER_WARN = 1.0  # s from our first audio to the application's first speech

RATE_CALLS = ("2.1", "2.2", "2.3")
CALL_RATES = {"2.1": 8000, "2.2": 16000, "2.3": 48000}


def measured(cr: CaseRun, ids: Iterable[str] = RATE_CALLS) -> list[tuple[str, Probe]]:
    return [(cid, p) for cid in ids for p in cr.run.calls.get(cid, [])]


def no_audio(cr: CaseRun, what: str) -> Outcome | None:
    calls = measured(cr)
    if not calls:
        return warned(f"no call to measure {what} on (2.1 to 2.3 did not run)")
    if not any(p.stats["<"].audio_messages >= 10 for _, p in calls):
        return warned(
            f"the application sent (almost) no audio back: no {what} to measure "
            "(one-way audio, docs/protocol.md, 'Common mistakes', item 6)"
        )
    return None


def case_pacing(cr: CaseRun) -> Outcome:
    empty = no_audio(cr, "pacing")
    if empty is not None:
        return empty
    notes: list[str] = []
    fails: list[str] = []
    disturbed: list[str] = []
    off_blocks: list[str] = []
    jittery: list[str] = []
    for cid, p in measured(cr):
        app = p.stats["<"]
        ratio = app.realtime_ratio
        if ratio is None or app.audio_messages < 10:
            continue
        ours = p.disturbed
        jitter = percentile(p.gaps_jitter(), 0.99)
        own = percentile(p.lags, 0.99)
        figure = (
            f"{cid}: ratio {ratio:.3f}, {app.bursts} burst(s) (up to "
            f"{app.max_window_audio * 1000:.0f} ms of audio within 20 ms), jitter p99 "
            f"{jitter * 1000:.1f} ms; our sends up to {ours * 1000:.1f} ms late"
        )
        notes.append(figure)
        # What our own lateness can explain: an echo of sends that were L late comes
        # back as L of audio at once, and moves the ratio by about L over the span.
        span = app.audio_seconds / ratio if ratio else 0.0
        excused_ratio = RATIO_TOLERANCE + (2 * ours / span if span else 0.0)
        burst = app.bursts > 0
        off = abs(ratio - 1) > RATIO_TOLERANCE
        block = app.pace.worst() if app.pace is not None else None
        if (burst and app.max_window_audio > BURST_AUDIO + ours + FRAME) or (
            off and abs(ratio - 1) > excused_ratio
        ):
            fails.append(figure)
        elif burst or off:
            disturbed.append(figure)
        elif block is not None:
            excused = PACE_TOLERANCE + 2 * ours / max(block.end - block.start, PACE_BLOCK)
            if abs(block.ratio - 1) > excused:
                off_blocks.append(f"{cid}: {block.describe()}")
            else:
                disturbed.append(
                    f"{cid}: {block.describe()}; our sends up to {ours * 1000:.1f} ms late"
                )
        elif jitter > JITTER_WARN + own:
            # Beyond even our worst lateness, with our sends on time enough to judge:
            # the application's. Otherwise a stall of ours could have made it.
            if ours <= DISTURBED and jitter > JITTER_WARN + ours:
                jittery.append(figure)
            else:
                disturbed.append(figure)
    if fails:
        return failed(
            "the application's audio is not paced at real time (Asterisk plays what arrives "
            "at once: choppy or lost audio; send one 20 ms frame every 20 ms)",
            "; ".join(fails),
        )
    if off_blocks:
        return warned(
            f"the application's audio is off real time by more than {PACE_TOLERANCE:.0%} "
            f"over {PACE_BLOCK:g} s or more: {off_blocks[0].split(': ', 1)[1]}",
            "; ".join(off_blocks),
        )
    if disturbed:
        return warned(
            "measurement disturbed: the application's pacing looked wrong by no more than "
            "our own sends were late",
            "; ".join(disturbed),
        )
    if jittery:
        return warned(
            f"audio paced with jitter p99 above {JITTER_WARN * 1000:.0f} ms beyond our own",
            "; ".join(jittery),
        )
    return passed(
        f"real time within {PACE_TOLERANCE:.0%} over every {PACE_BLOCK:g} s, no bursts",
        "; ".join(notes),
    )


def case_frame_size(cr: CaseRun) -> Outcome:
    empty = no_audio(cr, "frame size")
    if empty is not None:
        return empty
    for cid, p in measured(cr):
        for d in diagnose_application(p.stats["<"], p.stats[">"], 20):
            if d.code == "frame-size":
                return warned(f"not 20 ms frames in call {cid}", d.text)
    sizes = {
        cid: ",".join(str(s) for s, _ in p.stats["<"].sizes.most_common(2))
        for cid, p in measured(cr)
    }
    return passed("20 ms frames", "; ".join(f"{cid}: {s} bytes" for cid, s in sizes.items() if s))


def case_rate_follows(cr: CaseRun) -> Outcome:
    empty = no_audio(cr, "rate")
    if empty is not None:
        return empty
    found = []
    for cid, p in measured(cr):
        outcome = rate_mismatch(p, CALL_RATES[cid])
        if outcome is not None:
            found.append((cid, outcome))
    if found:
        cid, first = found[0]
        return warned(
            f"call {cid}: {first.reason}"
            + (f" (and in {', '.join(c for c, _ in found[1:])})" if len(found) > 1 else ""),
            "; ".join(f"{c}: {o.evidence}" for c, o in found),
            first.t,
        )
    rates = "; ".join(
        f"{cid}: {','.join(str(r) for r in p.rates_after(0))} Hz" for cid, p in measured(cr)
    )
    return passed("answered each call at its own rate", rates)


def all_calls(cr: CaseRun) -> list[tuple[str, Probe]]:
    return [
        (cid, p)
        for cid, probes in sorted(cr.run.calls.items())
        if cid.split(".")[0] in ("1", "2")
        for p in probes
    ]


def case_kinds(cr: CaseRun) -> Outcome:
    calls = all_calls(cr)
    for cid, p in calls:
        for problem, shown in p.problems:
            if problem.code == "refused":
                return failed(f"call {cid}: {problem.text}", shown, problem.t)
        ended = p.session.ended
        if ended is not None and ended.ended in ("garbage", "truncated"):
            return failed(f"call {cid}: {ended.ended}: {ended.detail}", t=ended.t)
    kinds: dict[str, int] = {}
    for _, p in calls:
        for kind, n in p.stats["<"].kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
    shown = ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())) or "nothing"
    return passed(f"only hangup and non-empty audio, in {len(calls)} calls", shown)


def case_payload_window(cr: CaseRun) -> Outcome:
    calls = all_calls(cr)
    window = cr.run.rules.payload_window
    for cid, p in calls:
        for problem, shown in p.problems:
            if problem.code == "stall":
                return failed(
                    f"call {cid}: a payload came more than {(window or 0) * 1000:g} ms after "
                    "its header (Asterisk ends the session; write header and payload in one "
                    "send)",
                    f"header {shown} at {problem.t:.3f}s; {problem.text}",
                    problem.t,
                )
    return passed(f"every payload followed its header at once, in {len(calls)} calls")


def case_encoding(cr: CaseRun) -> Outcome:
    empty = no_audio(cr, "encoding")
    if empty is not None:
        return empty
    verdicts = []
    for cid, p in measured(cr):
        for d in diagnose_application(p.stats["<"], p.stats[">"], 20):
            if d.code in ("ulaw", "byte-order"):
                return failed(f"call {cid}: {d.text}", f"diagnosis {d.code}")
        verdicts.append(f"{cid}: {p.stats['<'].likely_encoding or 's16le or too quiet to tell'}")
    return passed("looks like 16-bit little-endian PCM", "; ".join(verdicts))


def case_first_audio(cr: CaseRun) -> Outcome:
    empty = no_audio(cr, "first audio")
    if empty is not None:
        return empty
    figures: list[str] = []
    numbers: dict[str, dict[str, float | None]] = {}
    worst = -math.inf
    for cid, p in measured(cr):
        first = p.stats["<"].first_audio
        if first is None or p.first_audio_sent is None:
            continue
        audio = first - p.first_audio_sent
        speech_at = p.first_speech
        speech = None if speech_at is None else speech_at - p.first_audio_sent
        # The caller waits for words, not for a silent pre-roll.
        worst = max(worst, audio if speech is None else speech)
        numbers[cid] = {
            "first_audio_ms": round(audio * 1000, 1),
            "first_speech_ms": None if speech is None else round(speech * 1000, 1),
        }
        spoken = "no speech detected" if speech is None else f"first speech {speech * 1000:+.0f} ms"
        figures.append(f"{cid}: first audio {audio * 1000:+.0f} ms (at {first:.3f}s), {spoken}")
    if worst > FIRST_ANSWER_WARN:
        outcome = warned(
            f"the first answer came {worst:.2f} s after the caller's first audio "
            "(callers hear dead air)",
            "; ".join(figures),
        )
    else:
        outcome = passed(f"first answer within {max(worst, 0) * 1000:.0f} ms", "; ".join(figures))
    outcome.figures = numbers
    return outcome
