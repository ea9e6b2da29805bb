"""Where messages begin again in bytes from the middle of a stream (after a gap, or a
capture that began mid-call): a run of well-formed messages one after another."""

from __future__ import annotations

from typing import Any

from audiosocket_cli.protocol.wire import DTMF_DIGITS, Kind

RESYNC_CHAIN = 4  # well-formed messages in a row, audio all one length, make a boundary
LOOSE_CHAIN = 8  # or this many of any plausible lengths, once LOOSE_AFTER bytes found none
LOOSE_AFTER = 1 << 16
RESYNC_MAX_AUDIO = 16384  # largest audio payload believed when looking for a boundary


def _split(buf: bytearray, times: list[tuple[int, float]]) -> list[tuple[float, bytes]]:
    """The searched bytes back as (time, chunk), as they came."""
    chunks = []
    for n, (start, when) in enumerate(times):
        stop = times[n + 1][0] if n + 1 < len(times) else len(buf)
        if stop > start:
            chunks.append((when, bytes(buf[start:stop])))
    return chunks or [(0.0, bytes(buf))]


def _chain(
    buf: bytearray, i: int, final: bool, kinds: Any, largest: int, strict: bool
) -> bool | None:
    """Do well-formed messages follow one another from buf[i]? None: cannot tell yet.

    Strict: RESYNC_CHAIN messages whose audio all has one kind and one length,
    as frames do (a shorter last one may end the stream). Loose: LOOSE_CHAIN messages of
    any plausible lengths. Zeros (silence) would read as endless hangups, so a
    hangup or error counts only as the very last message of a stream.
    """
    end = len(buf)
    pos = i
    count = 0
    frame = (0, 0)  # the kind and length every audio message of a strict run has
    need = RESYNC_CHAIN if strict else LOOSE_CHAIN
    while count < need:
        if pos == end:
            # The stream's exact end: a shorter run will do (one message alone is no proof).
            return (count > 1 or (count == 1 and not strict)) if final else None
        if end - pos < 3:
            return False if final else None
        kind = buf[pos]
        length = (buf[pos + 1] << 8) | buf[pos + 2]
        stop = pos + 3 + length
        if kind in kinds:
            ok = 0 < length <= largest and length % 2 == 0
            if ok and strict:
                if not frame[0]:
                    frame = (kind, length)
                elif (kind, length) != frame:
                    ok = kind == frame[0] and length < frame[1] and stop == end and final
        elif kind == Kind.DTMF:
            ok = length == 1 and (stop > end or buf[pos + 3] in DTMF_DIGITS)
        elif kind == Kind.UUID:
            ok = length == 16
        elif kind in (Kind.HANGUP, Kind.ERROR):
            if length > 1 or stop < end:
                return False
            if stop > end:
                return False if final else None
            return True if final else None
        else:
            ok = False
        if not ok:
            return False
        if stop > end:
            return False if final else None
        pos = stop
        count += 1
    return True
