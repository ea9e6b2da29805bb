"""Section 1 of `check`: framing. Pass: the application keeps the call and keeps answering."""

from __future__ import annotations

import time
from collections.abc import Callable

from audiosocket_cli.engines.check.judge import kept_and_answered
from audiosocket_cli.engines.check.probe import (
    FRAME,
    CaseRun,
    Probe,
    audio_frames,
    hexdump,
    tone,
)
from audiosocket_cli.engines.check.results import FAIL, Outcome, warned
from audiosocket_cli.net.pacing import sleep_until
from audiosocket_cli.protocol.wire import Message


def framing_call(
    cr: CaseRun, special: Callable[[Probe], str], what: str, uuid_first: bool = True
) -> Outcome:
    p = cr.probe()
    if uuid_first:
        p.send_uuid()
        p.play(audio_frames(tone(8000, 0.1), 8000))
    evidence = special(p)
    after = p.now()
    p.play(audio_frames(tone(8000, 0.5), 8000))
    p.pause(0.2)
    outcome = kept_and_answered(cr.run, p, after, what, p.now())
    outcome.evidence = f"{evidence}; {outcome.evidence}".strip("; ")
    p.close()
    return outcome


def case_uuid_one_write(cr: CaseRun) -> Outcome:
    def special(p: Probe) -> str:
        message = Message.for_uuid(p.uuid)
        p.send(message)
        return f"one write at {p.now():.3f}s: {hexdump(message.encode(), 19)}"

    return framing_call(cr, special, "the UUID in one write", uuid_first=False)


def case_split_header(cr: CaseRun) -> Outcome:
    worst = [0.0]

    def special(p: Probe) -> str:
        start = time.monotonic()
        for k, message in enumerate(audio_frames(tone(8000, 0.2), 8000)):
            data = message.encode()
            p.wait_until(start + k * FRAME)
            p.write(data[:3])
            sent = time.monotonic()
            sleep_until(sent + 0.002)
            p.write(data[3:])
            worst[0] = max(worst[0], time.monotonic() - sent)
        return (
            f"10 messages from {p.now() - 0.2:.3f}s, each header then payload in two "
            f"segments, up to {worst[0] * 1000:.1f} ms apart"
        )

    outcome = framing_call(cr, special, "headers and payloads in separate segments")
    if outcome.verdict == FAIL and worst[0] >= 0.005:
        return warned(f"measurement disturbed: {outcome.reason}", outcome.evidence, outcome.t)
    return outcome


def case_bytewise(cr: CaseRun) -> Outcome:
    def special(p: Probe) -> str:
        messages = [Message.for_uuid(p.uuid), *audio_frames(tone(8000, 0.1), 8000)]
        total = 0
        for message in messages:
            data = message.encode()
            total += len(data)
            for i in range(len(data)):
                p.write(data[i : i + 1])
                if i in (0, 2) or i % 16 == 15:
                    # Pause after the kind byte, after the header, and every 16 bytes,
                    # so that the application reads each of those pieces on its own.
                    sleep_until(time.monotonic() + 0.001)
        return f"{total} bytes (the UUID and 5 messages), one write per byte"

    return framing_call(cr, special, "every message byte by byte", uuid_first=False)


def case_coalesced(cr: CaseRun) -> Outcome:
    def special(p: Probe) -> str:
        data = b"".join(m.encode() for m in audio_frames(tone(8000, 1.0), 8000))
        p.write(data)
        return f"50 messages ({len(data)} bytes) in one write at {p.now():.3f}s"

    return framing_call(cr, special, "50 messages in one segment")


def one_message_call(cr: CaseRun, message: Message, what: str) -> Outcome:
    """A framing call with one unusual message in it, shown in the evidence."""

    def special(p: Probe) -> str:
        p.send(message)
        return f"at {p.now():.3f}s: {hexdump(message.encode(), 8)}"

    return framing_call(cr, special, what)


def case_odd_length(cr: CaseRun) -> Outcome:
    message = Message.audio(tone(8000, 0.0201)[:161], 8000)
    return one_message_call(cr, message, "an odd-length (161-byte) audio payload")


def case_max_payload(cr: CaseRun) -> Outcome:
    message = Message.audio(tone(8000, 4.2)[:65535], 8000)
    return one_message_call(cr, message, "a 65535-byte audio payload")
