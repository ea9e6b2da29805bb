"""The diagnoses of the known pitfalls (docs/protocol.md, "Common mistakes"), drawn
from a call's statistics (analysis.stats), each with the evidence that names it."""

from __future__ import annotations

from dataclasses import dataclass

from audiosocket_cli.analysis.pacing import PACE_TOLERANCE
from audiosocket_cli.analysis.stats import DirectionStats
from audiosocket_cli.protocol.session import Ended
from audiosocket_cli.protocol.wire import frame_bytes

HANGUP_AFTER_DTMF = 1.0  # seconds
APP_ENDINGS = ("app-hangup", "app-close", "app-reset")


@dataclass
class Diagnosis:
    code: str
    text: str


def diagnose_application(
    app: DirectionStats,
    asterisk: DirectionStats,
    frame_ms: float = 20,
    ended: Ended | None = None,
) -> list[Diagnosis]:
    """The pitfalls of what an application sent toward Asterisk ('<').

    `ended`, how the call ended, lets an application's hang-up be related to
    the caller's last DTMF digit (`hangup-after-dtmf`).
    """
    found: list[Diagnosis] = []
    caller_frame, app_frame = asterisk.frame_seconds, app.frame_seconds
    # An echo of the caller's frames comes as the caller sent them: a 1 s frame
    # echoed is 1 s of audio at once, the caller's framing, not the application's
    # pacing. So where the application's frames mirror the caller's, a burst is
    # more audio at once than one of the caller's frames.
    echoed = (
        caller_frame is not None
        and app_frame is not None
        and abs(app_frame - caller_frame) <= 0.001 * caller_frame
        and app.max_window_audio <= caller_frame * 1.001
    )
    if app.bursts and not echoed:
        found.append(
            Diagnosis(
                "burst",
                f"application audio came in {app.bursts} burst(s), up to "
                f"{app.max_window_audio * 1000:.0f} ms of audio within 20 ms: Asterisk "
                "plays what arrives at once, so it sounds choppy or is lost "
                "(send one 20 ms frame every 20 ms)",
            )
        )
    else:
        found.extend(_pace_diagnoses(app))
    if asterisk.audio_messages and not app.audio_messages:
        found.append(
            Diagnosis(
                "one-way-audio",
                "one-way audio: the application sent no audio back",
            )
        )
    found.extend(_encoding_diagnoses(app, "application"))
    app_rates, caller_rates = app.rates, asterisk.rates
    if app_rates and caller_rates:
        app_rate = app_rates.most_common(1)[0][0]
        caller_rate = caller_rates.most_common(1)[0][0]
        if app_rate != caller_rate:
            found.append(
                Diagnosis(
                    "rate-mismatch",
                    f"application audio is at {app_rate} Hz, the caller's at "
                    f"{caller_rate} Hz: Asterisk transcodes it, so nothing fails, but "
                    "it is usually unintended (send audio at the caller's rate)",
                )
            )
    found.extend(_frame_size_diagnoses(app, frame_ms))
    for what, n in app.refused.items():
        found.append(
            Diagnosis("refused", f"application sent {n}x {what}: Asterisk ends the session")
        )
    dtmf = asterisk.last_dtmf
    if (
        ended is not None
        and ended.ended in APP_ENDINGS
        and dtmf is not None
        and 0 <= ended.t - dtmf <= HANGUP_AFTER_DTMF
    ):
        found.append(
            Diagnosis(
                "hangup-after-dtmf",
                f"the application ended the call ({ended.ended}) "
                f"{(ended.t - dtmf) * 1000:.0f} ms after the caller's DTMF digit "
                f"{asterisk.digits[-1]!r}: unless that digit means hang up, the "
                "application does not handle DTMF messages (kind 0x03, sent by "
                "Asterisk 20.14, 21.9, 22.4 and later)",
            )
        )
    return found


def _pace_diagnoses(app: DirectionStats) -> list[Diagnosis]:
    """`slow` or `pacing`: off real time by more than PACE_TOLERANCE over a block of
    audio (analysis.pacing), named by its pattern."""
    block = app.pace.worst() if app.pace is not None else None
    if block is None:
        return []
    if block.slow:
        return [
            Diagnosis(
                "slow",
                f"application audio came at {block.describe()}: Asterisk runs short of "
                "audio and the caller hears gaps (time each frame from the start, start + "
                "n x 20 ms, and render ahead of the send)",
            )
        ]
    return [
        Diagnosis(
            "pacing",
            f"application audio came at {block.describe()}: Asterisk does not buffer, "
            f"so audio faster than real time by more than {PACE_TOLERANCE:.0%} is choppy "
            "or lost (send one 20 ms frame every 20 ms)",
        )
    ]


def _frame_size_diagnoses(app: DirectionStats, frame_ms: float) -> list[Diagnosis]:
    """Messages that are not one frame long at their own rate."""
    frames = app.frames
    if not frames:
        return []
    odd = {
        (rate, size): n for (rate, size), n in frames.items() if size != frame_bytes(rate, frame_ms)
    }
    # One short message is how a file ends; more is a framing habit.
    if sum(odd.values()) <= 1:
        return []
    rates = sorted({rate for rate, _ in frames})
    expected = ", ".join(f"{frame_bytes(rate, frame_ms)} bytes at {rate} Hz" for rate in rates)
    several = len(rates) > 1
    sizes = ", ".join(
        f"{n}x{size}" + (f" at {rate} Hz" if several else "")
        for (rate, size), n in sorted(odd.items())[:5]
    )
    return [
        Diagnosis(
            "frame-size",
            f"application audio messages of other sizes than one {frame_ms:g} ms frame "
            f"({expected}): {sizes}",
        )
    ]


def diagnose_asterisk(asterisk: DirectionStats) -> list[Diagnosis]:
    """The pitfalls of what Asterisk (or a stand-in) sent toward the application."""
    return _encoding_diagnoses(asterisk, "caller")


# What to do about each encoding, by who sent it: the caller's audio comes from
# Asterisk's channel (its Dial string), the application's from its own code.
ENCODING_FIXES = {
    ("ulaw", "caller"): "with the channel driver, add c(slin) (or c(slin16)...) to the Dial string",
    ("ulaw", "application"): "the application must send 16-bit signed little-endian PCM "
    "(decode its mu-law first)",
    ("s16be", "caller"): "AudioSocket audio is 16-bit little-endian; whatever produces the "
    "caller's audio swaps its bytes",
    ("s16be", "application"): "the application must send 16-bit signed little-endian PCM "
    "(swap each sample's two bytes)",
}


def _encoding_diagnoses(stats: DirectionStats, who: str) -> list[Diagnosis]:
    encoding = stats.likely_encoding
    if encoding == "ulaw":
        return [
            Diagnosis(
                "ulaw",
                f"{who} audio looks like mu-law bytes labelled as slin: "
                + ENCODING_FIXES["ulaw", who],
            )
        ]
    if encoding == "s16be":
        return [
            Diagnosis(
                "byte-order",
                f"{who} audio looks like big-endian samples: " + ENCODING_FIXES["s16be", who],
            )
        ]
    return []
