"""What each call of a load run sends: its frames, each marked so that its echo is
known, made from parts computed once."""

from __future__ import annotations

import math

from audiosocket_cli.engines.load.plan import LoadPlan


def frames_for(plan: LoadPlan) -> list[bytes]:
    """The payloads a call cycles through (silence, tone), or sends once (a file)."""
    samples = plan.frame_samples
    if plan.source == "none":
        return []
    if plan.source == "file":
        size = samples * 2
        pcm = plan.pcm
        return [pcm[i : i + size] for i in range(0, len(pcm), size)]
    if plan.source == "tone":
        from audiosocket_cli.media.audio import ToneSource

        tone = ToneSource(plan.tone_hz)
        # One second of tone: seamless when looped for a whole number of hertz.
        count = max(1, round(1.0 / plan.frame_seconds))
        return [tone.next_frame(plan.sample_rate, samples) or b"" for _ in range(count)]
    return [bytes(samples * 2)]


def mark(payload: bytes, k: int, nonce: int) -> bytes:
    """The payload with a mark no audio carries by chance: the call's nonce (12 bits, never
    0) and frame number k (mod 4096) in the low nibbles of its first six little-endian
    samples (at most 15 LSB, inaudible). Every frame of a call is then distinct, and none
    is digital silence, so an application that sends silence (or anything but our own
    frames back) is never taken for an echo."""
    if len(payload) < 12:
        return payload
    b = bytearray(payload)
    b[0] = (b[0] & 0xF0) | (k & 0xF)
    b[2] = (b[2] & 0xF0) | (k >> 4 & 0xF)
    b[4] = (b[4] & 0xF0) | (k >> 8 & 0xF)
    b[6] = (b[6] & 0xF0) | (nonce & 0xF)
    b[8] = (b[8] & 0xF0) | (nonce >> 4 & 0xF)
    b[10] = (b[10] & 0xF0) | (nonce >> 8 & 0xF)
    return bytes(b)


# The mark's bits, as a little-endian integer over the payload's first 12 bytes: frame
# number k's (k & 0xFFF) and a call's nonce's, in the low nibbles of bytes 0, 2, 4 and
# 6, 8, 10 as mark() puts them; KEEP clears those nibbles in a frame's own bytes.
KEEP = int.from_bytes(bytes((0xF0, 0xFF) * 6), "little")
K_BITS = [(k & 0xF) | (k >> 4 & 0xF) << 16 | (k >> 8 & 0xF) << 32 for k in range(4096)]
N_BITS = [(n & 0xF) << 48 | (n >> 4 & 0xF) << 64 | (n >> 8 & 0xF) << 80 for n in range(4096)]


def frames_until(duration: float, frame_s: float) -> float:
    """The first frame number k with k x frame_s >= duration (to 1e-9 s, as media time
    is compared): the call has lasted `duration` then. Infinite for an endless call."""
    limit = duration - 1e-9
    if math.isinf(limit):
        return math.inf
    k = max(0, int(limit / frame_s))
    while k * frame_s < limit:
        k += 1
    while k and (k - 1) * frame_s >= limit:
        k -= 1
    return k


class Wire:
    """A worker's frames as they go out, from parts computed once: for frame f, its
    first 12 bytes without the mark (an integer), the rest (bytes) and the header, so
    that a marked payload is one integer OR and one concatenation, the same bytes as
    mark() gives; and the frame number at which a call has lasted --duration."""

    __slots__ = ("frames", "count", "finite", "kind", "parts", "k_end")

    def __init__(self, frames: list[bytes], finite: bool, kind: int, k_end: float) -> None:
        self.frames = frames
        self.count = len(frames)
        self.finite = finite
        self.kind = kind
        # A looped source's parts are kept (one frame, or a second of tone); a file's
        # are made as they are sent, not kept (it may be long).
        self.parts: dict[int, tuple[int | None, bytes, bytes]] = {}
        self.k_end = k_end

    def part(self, frames: list[bytes], f: int) -> tuple[int | None, bytes, bytes]:
        payload = frames[f]
        size = len(payload)
        header = bytes((self.kind, size >> 8, size & 0xFF))
        if size < 12:
            made: tuple[int | None, bytes, bytes] = (None, payload, header)
        else:
            made = (int.from_bytes(payload[:12], "little") & KEEP, payload[12:], header)
        if not self.finite:
            self.parts[f] = made
        return made
