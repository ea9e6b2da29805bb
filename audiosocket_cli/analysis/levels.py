"""Audio levels of 16-bit little-endian PCM payloads, in dBFS."""

from __future__ import annotations

import math

FULL_SCALE_POWER = 32768.0 * 32768.0
BATCH_MIN = 4  # fewer frames of a length: one at a time costs less


def level_dbfs(payload: bytes) -> float | None:
    """RMS level in dBFS (0 is a full-scale square wave); None for silence."""
    import numpy as np  # lazily: start-up must not pay for numpy

    samples = np.frombuffer(payload, dtype="<i2", count=len(payload) // 2)
    if not samples.size:
        return None
    power = float(np.dot(samples, samples.astype(np.float64))) / samples.size
    return _dbfs(power)


def levels_dbfs(payloads: list[bytes]) -> list[float | None]:
    """level_dbfs of each payload, the same figures, in one numpy pass per length.

    Payloads of one length are stacked into one array and their powers summed
    row by row. The sums of squares are exact in int64 (and in level_dbfs's
    float64: under 2**53 for any payload below 16 MB), so the order of
    summation cannot change a power; numpy's log10 may differ from math's in
    the last bit, so a level within a hair of a rounding boundary is computed
    as level_dbfs does.
    """
    import numpy as np

    levels: list[float | None] = [None] * len(payloads)
    by_length: dict[int, list[int]] = {}
    repeats: list[int] = []  # the same payload object as the one before (an echo)
    previous = None
    for i, payload in enumerate(payloads):
        if payload is previous:
            repeats.append(i)
            continue
        previous = payload
        samples = len(payload) // 2
        if samples:
            by_length.setdefault(samples, []).append(i)
    for samples, where in by_length.items():
        if len(where) < BATCH_MIN:
            for i in where:
                levels[i] = level_dbfs(payloads[i])
            continue
        size = 2 * samples
        joined = b"".join(
            payloads[i] if len(payloads[i]) == size else payloads[i][:size] for i in where
        )
        block = np.frombuffer(joined, dtype="<i2").reshape(len(where), samples).astype(np.int64)
        power = np.einsum("ij,ij->i", block, block).astype(np.float64) / samples
        with np.errstate(divide="ignore", invalid="ignore"):  # silence: -inf, None below
            tenths = 100.0 * np.log10(power / FULL_SCALE_POWER)
            rounded = np.rint(tenths)
            near = np.abs(np.abs(tenths - rounded) - 0.5) < 1e-6  # a hair from x.x5
        found = (rounded / 10.0 + 0.0).tolist()
        # The few that need a second look: silence (None) and a hair from a boundary.
        for j in np.flatnonzero((power <= 0) | near).tolist():
            found[j] = _dbfs(float(power[j])) if power[j] > 0 else None
        if len(where) == len(payloads):
            levels = found  # one length for every payload, the usual batch
        else:
            for i, level in zip(where, found, strict=True):
                levels[i] = level
    for i in repeats:
        levels[i] = levels[i - 1]
    return levels


def _dbfs(power: float) -> float | None:
    if power <= 0:
        return None
    # `or 0.0`: a level that rounds to zero from below is 0.0, not -0.0.
    return round(10 * math.log10(power / FULL_SCALE_POWER), 1) or 0.0


def format_level(level: float | None) -> str:
    return "silent" if level is None else f"{level:.1f}dBFS"
