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
    count = len(payloads)
    sizes = list(map(len, payloads))
    first = sizes[0] if sizes else 0
    if count >= BATCH_MIN and first >= 2 and not first & 1 and sizes.count(first) == count:
        # One length for every payload, the usual batch: no sorting by length.
        return _levels_of_rows(b"".join(payloads), count, first // 2)
    levels: list[float | None] = [None] * count
    by_length: dict[int, list[int]] = {}
    for i, size in enumerate(sizes):
        if size >= 2:
            by_length.setdefault(size // 2, []).append(i)
    for samples, where in by_length.items():
        if len(where) < BATCH_MIN:
            for i in where:
                levels[i] = level_dbfs(payloads[i])
            continue
        even = 2 * samples  # an odd payload's last byte is left out
        joined = b"".join(payloads[i] if sizes[i] == even else payloads[i][:even] for i in where)
        for i, level in zip(where, _levels_of_rows(joined, len(where), samples), strict=True):
            levels[i] = level
    return levels


def _levels_of_rows(joined: bytes, rows: int, samples: int) -> list[float | None]:
    """level_dbfs of each of `rows` payloads of `samples` samples, joined."""
    import numpy as np

    block = np.frombuffer(joined, dtype="<i2").reshape(rows, samples).astype(np.int64)
    power = np.einsum("ij,ij->i", block, block).astype(np.float64) / samples
    with np.errstate(divide="ignore", invalid="ignore"):  # silence: -inf, None below
        tenths = 100.0 * np.log10(power / FULL_SCALE_POWER)
        rounded = np.rint(tenths)
        near = np.abs(np.abs(tenths - rounded) - 0.5) < 1e-6  # a hair from x.x5
    found: list[float | None] = (rounded / 10.0 + 0.0).tolist()
    # The few that need a second look: silence (None) and a hair from a boundary.
    for j in np.flatnonzero((power <= 0) | near).tolist():
        found[j] = _dbfs(float(power[j])) if power[j] > 0 else None
    return found


def _dbfs(power: float) -> float | None:
    if power <= 0:
        return None
    # `or 0.0`: a level that rounds to zero from below is 0.0, not -0.0.
    return round(10 * math.log10(power / FULL_SCALE_POWER), 1) or 0.0


def format_level(level: float | None) -> str:
    return "silent" if level is None else f"{level:.1f}dBFS"
