"""Audio levels of 16-bit little-endian PCM payloads, in dBFS."""

from __future__ import annotations

import math


def level_dbfs(payload: bytes) -> float | None:
    """RMS level in dBFS (0 is a full-scale square wave); None for silence."""
    import numpy as np  # lazily: start-up must not pay for numpy

    samples = np.frombuffer(payload, dtype="<i2", count=len(payload) // 2)
    if not samples.size:
        return None
    power = float(np.dot(samples, samples.astype(np.float64))) / samples.size
    if power <= 0:
        return None
    # `or 0.0`: a level that rounds to zero from below is 0.0, not -0.0.
    return round(10 * math.log10(power / (32768.0 * 32768.0)), 1) or 0.0


def format_level(level: float | None) -> str:
    return "silent" if level is None else f"{level:.1f}dBFS"
