"""Calibration data: what quantisers learn from a batch of representative inputs.

Every target's ``quantize(graph, calibration=x)`` takes ``x`` [N, *input_shape] (an ``.npz`` given
to ``--calibration``). The sim target uses it to size and, for dyadic data, represent the input
exactly; Speck and Loihi to choose the input's rate-coding / 8-bit scale (Speck also searches
per-layer scales that minimise the spike-count error on it).

What they read of the inputs' values is an :class:`InputStatistics` (peak |x|, min, max, sign,
dyadic bits). It is computed batch by batch and merged exactly, so a source larger than memory is
described by all its samples while the search runs on a subsample: :func:`with_statistics` attaches
the whole source's statistics to the subsample, and :func:`input_peak` / :func:`is_signed` /
:func:`dyadic_bits` read them from there (or from a statistics object, or compute them from an array).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# dyadic inputs: at most this many fractional bits count as exact (x/256 needs 8, x/65536 16)
DYADIC_MAX_BITS = 16
_CHUNK = 1 << 20  # values per step of the dyadic scan (bounded temporaries)


@dataclass(frozen=True)
class InputStatistics:
    """What quantisers read of calibration inputs; :meth:`merge` of two batches' statistics equals
    the statistics of the two batches concatenated."""

    peak: float                 # max |x|
    min: float
    max: float
    signed: bool                # some value < 0
    dyadic_bits: int | None     # smallest k <= DYADIC_MAX_BITS with every value a multiple of 2^-k
    samples: int
    shards: int = 1             # batches merged (not recorded: a record is the same for any layout)

    @classmethod
    def of(cls, x) -> "InputStatistics":
        a = np.asarray(x, dtype=np.float64)
        if not a.size:
            raise ValueError("statistics of an empty batch")
        lo, hi = float(a.min()), float(a.max())
        return cls(peak=max(abs(lo), abs(hi)), min=lo, max=hi, signed=lo < 0,
                   dyadic_bits=fraction_bits(a), samples=len(a) if a.ndim else 1)

    def merge(self, other: "InputStatistics") -> "InputStatistics":
        k = None if self.dyadic_bits is None or other.dyadic_bits is None else max(self.dyadic_bits,
                                                                                     other.dyadic_bits)
        return InputStatistics(peak=max(self.peak, other.peak), min=min(self.min, other.min),
                               max=max(self.max, other.max), signed=self.signed or other.signed,
                               dyadic_bits=k, samples=self.samples + other.samples,
                               shards=self.shards + other.shards)

    def record_fields(self) -> dict:
        return {"peak": self.peak, "min": self.min, "max": self.max, "signed": self.signed,
                "dyadic_bits": self.dyadic_bits, "samples": self.samples}


def fraction_bits(x, max_bits: int = DYADIC_MAX_BITS) -> int | None:
    """Smallest k <= max_bits with every value of ``x`` a multiple of 2^-k, else None; every value is
    looked at. With v = m·2^e (frexp) the integer mantissa M = |m|·2^53 = odd·2^t, so v needs
    max(0, 53 − e − t) fractional bits."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    k = 0
    for start in range(0, flat.size, _CHUNK):
        v = flat[start:start + _CHUNK]
        if not np.all(np.isfinite(v)):
            return None
        v = v[v != np.rint(v)]  # integers need no fractional bit
        if not v.size:
            continue
        m, e = np.frexp(v)
        mant = np.abs(np.ldexp(m, 53)).astype(np.int64)
        trailing = np.frexp((mant & -mant).astype(np.float64))[1] - 1
        k = max(k, int(np.max(53 - e - trailing)))
        if k > max_bits:
            return None
    return k


class CalibrationInputs(np.ndarray):
    """Calibration inputs (the search's subsample) carrying the :class:`InputStatistics` of the whole
    source they were drawn from. Arrays derived from them (slices, arithmetic) do not carry them:
    those are described by their own values."""

    statistics: InputStatistics | None = None

    def __array_finalize__(self, obj) -> None:
        self.statistics = None

    def __reduce__(self):
        return _rebuild, (np.asarray(self), self.statistics)


def _rebuild(x, statistics):
    return with_statistics(x, statistics)


def with_statistics(x, statistics: InputStatistics | None) -> np.ndarray:
    """``x`` (float64) as :class:`CalibrationInputs` carrying ``statistics``."""
    out = np.asarray(x, dtype=np.float64).view(CalibrationInputs)
    out.statistics = statistics
    return out


def carried_statistics(calibration) -> InputStatistics | None:
    """The statistics object given, or the one calibration inputs carry (None for a plain array)."""
    if isinstance(calibration, InputStatistics):
        return calibration
    s = getattr(calibration, "statistics", None)
    return s if isinstance(s, InputStatistics) else None


def as_array(calibration) -> np.ndarray | None:
    """Calibration data as a float64 array, or None when none (or an empty batch) was given."""
    if calibration is None or isinstance(calibration, InputStatistics):
        return None
    if hasattr(calibration, "detach"):
        calibration = calibration.detach().cpu().numpy()
    x = np.asarray(calibration, dtype=np.float64)
    return x if x.size else None


def input_peak(calibration) -> float | None:
    """max |x| over the calibration data (None without data)."""
    if (s := carried_statistics(calibration)) is not None:
        return s.peak
    x = as_array(calibration)
    return None if x is None else float(np.max(np.abs(x)))


def is_signed(calibration) -> bool | None:
    if (s := carried_statistics(calibration)) is not None:
        return s.signed
    x = as_array(calibration)
    return None if x is None else bool(np.min(x) < 0)


def dyadic_bits(calibration, max_bits: int = DYADIC_MAX_BITS) -> int | None:
    """Smallest k <= max_bits such that every value is a multiple of 2^-k (e.g. integer pixels,
    x/16, x/256: then a fixed-point input with k fractional bits is exact), else None. Statistics
    know k up to :data:`DYADIC_MAX_BITS`."""
    if (s := carried_statistics(calibration)) is not None:
        return s.dyadic_bits if s.dyadic_bits is not None and s.dyadic_bits <= max_bits else None
    x = as_array(calibration)
    return None if x is None else fraction_bits(x, max_bits)
