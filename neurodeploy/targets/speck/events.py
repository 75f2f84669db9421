"""Speck input/output events <-> integer count rasters.

An event is ``(core, x, y, feature, timestamp)`` (timestamp in µs), as samna's input events carry
(``layer``/core, x, y, feature, timestamp). A raster is ``(C, H, W)`` non-negative integer counts
(a vector ``(N,)`` is ``(N, 1, 1)``).

Deterministic order (``raster_to_events``): round-robin over the counts — round r holds one event
of every pixel whose count is > r, in raster order (feature, y, x); round r has timestamp
``t0_us + r·dt_us``. This spreads a count of n over n rounds (rate coding over time), as D time
steps of an SFA neuron would.
"""

from __future__ import annotations

import numpy as np

from ...errors import NeurodeployError

EVENT_DTYPE = np.dtype([("core", np.int16), ("x", np.int32), ("y", np.int32), ("feature", np.int32),
                        ("timestamp", np.int64)])


def _chw(raster: np.ndarray) -> np.ndarray:
    r = np.asarray(raster)
    if r.ndim == 1:
        return r.reshape(-1, 1, 1)
    if r.ndim != 3:
        raise NeurodeployError(f"raster must be (C, H, W) or (N,), got shape {r.shape}")
    return r


def as_counts(raster) -> np.ndarray:
    """Validate and convert to int64 counts (non-negative integers)."""
    r = np.asarray(raster, dtype=np.float64)
    if np.any(r < 0):
        raise NeurodeployError(f"{int((r < 0).sum())} negative values: Speck events carry no sign",
                               fix="shift/rectify the input, or split it into two polarity channels")
    if np.any(r != np.round(r)):
        raise NeurodeployError("event counts must be integers",
                               fix="rate code real values first: round(x * scale) (Input.scale_q)")
    return r.astype(np.int64)


def raster_to_events(raster, core: int = 0, *, dt_us: int = 1, t0_us: int = 0) -> np.ndarray:
    """Events (structured array of ``EVENT_DTYPE``) for one sample's count raster."""
    r = _chw(as_counts(raster))
    flat = r.ravel()
    nmax = int(flat.max(initial=0))
    idx_parts, round_parts = [], []
    for rnd in range(nmax):
        idx = np.flatnonzero(flat > rnd)
        idx_parts.append(idx)
        round_parts.append(np.full(idx.size, rnd, dtype=np.int64))
    idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64)
    rnd = np.concatenate(round_parts) if round_parts else np.zeros(0, dtype=np.int64)
    f, y, x = np.unravel_index(idx, r.shape)
    ev = np.empty(idx.size, dtype=EVENT_DTYPE)
    ev["core"] = core
    ev["x"] = x
    ev["y"] = y
    ev["feature"] = f
    ev["timestamp"] = t0_us + rnd * dt_us
    return ev


def events_to_raster(events: np.ndarray, shape, core: int | None = None) -> np.ndarray:
    """Count raster ``shape`` (C, H, W) or (N,) of the events (of one ``core`` if given)."""
    ev = np.asarray(events)
    if core is not None:
        ev = ev[ev["core"] == core]
    shape = tuple(int(s) for s in shape)
    chw = shape if len(shape) == 3 else (shape[0], 1, 1)
    out = np.zeros(chw, dtype=np.int64)
    f, y, x = ev["feature"], ev["y"], ev["x"]
    ok = (f >= 0) & (f < chw[0]) & (y >= 0) & (y < chw[1]) & (x >= 0) & (x < chw[2])
    if not np.all(ok):
        raise NeurodeployError(f"{int((~ok).sum())} events lie outside the raster shape {shape}")
    np.add.at(out, (f, y, x), 1)
    return out.reshape(shape)


def events_as_cyx(events: np.ndarray) -> np.ndarray:
    """int64 [N, 3] (feature, y, x) rows, in event order (the simulator's input format)."""
    ev = np.asarray(events)
    return np.stack([ev["feature"], ev["y"], ev["x"]], axis=1).astype(np.int64).reshape(-1, 3)
