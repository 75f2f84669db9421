"""Calibration data: what quantisers learn from a batch of representative inputs.

Every target's ``quantize(graph, calibration=x)`` takes ``x`` [N, *input_shape] (an ``.npz`` given
to ``--calibration``). The sim target uses it to size and, for dyadic data, represent the input
exactly; Speck and Loihi to choose the input's rate-coding / 8-bit scale (Speck also searches
per-layer scales that minimise the spike-count error on it).
"""

from __future__ import annotations

import numpy as np


def as_array(calibration) -> np.ndarray | None:
    """Calibration data as a float64 array, or None when none (or an empty batch) was given."""
    if calibration is None:
        return None
    if hasattr(calibration, "detach"):
        calibration = calibration.detach().cpu().numpy()
    x = np.asarray(calibration, dtype=np.float64)
    return x if x.size else None


def input_peak(calibration) -> float | None:
    """max |x| over the calibration data (None without data)."""
    x = as_array(calibration)
    return None if x is None else float(np.max(np.abs(x)))


def is_signed(calibration) -> bool | None:
    x = as_array(calibration)
    return None if x is None else bool(np.min(x) < 0)


def dyadic_bits(calibration, max_bits: int = 16) -> int | None:
    """Smallest k <= max_bits such that every value is a multiple of 2^-k (e.g. integer pixels,
    x/16, x/256: then a fixed-point input with k fractional bits is exact), else None."""
    x = as_array(calibration)
    if x is None:
        return None
    x = x.reshape(-1)[: 1 << 20]  # a sample is enough
    for k in range(max_bits + 1):
        y = np.ldexp(x, k)
        if np.all(y == np.rint(y)):
            return k
    return None
