"""Input data for verify / profile / calibration / run / simulate: ``.npz`` files with ``x`` (and
optionally ``y``), or a plain ``.npy`` array of inputs.

:func:`load_data` is the one place a dataset is checked before anything runs on it: at least one
sample, real finite numbers, the model's per-sample input shape. :func:`check_input_range` is the
one check that inputs lie inside the range a quantised program was built for.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NeurodeployError

SAVE_FIX = "save inputs with np.savez(path, x=inputs, y=labels), x shaped [N, *input_shape]"


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray | None = None
    path: str = ""

    def head(self, n: int | None) -> "Dataset":
        if n is None or n >= len(self.x):
            return self
        return Dataset(self.x[:n], None if self.y is None else self.y[:n], self.path)


def check_limit(limit: int | None) -> None:
    if limit is not None and int(limit) < 1:
        raise NeurodeployError(f"--limit {limit} selects no samples", fix="pass --limit N with N >= 1")


def read_arrays(path: str | Path) -> Dataset:
    """``x`` (and ``y``) of an ``.npz`` (or ``x`` of an ``.npy``) file, without pickles, checked
    sample-wise (at least one sample, numeric, real; labels 1-D integers) but not yet validated as
    model inputs."""
    path = Path(path)
    if not path.exists():
        raise NeurodeployError(f"data file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            loaded = np.load(fh, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                x, y = loaded, None
            else:
                with loaded as f:
                    if "x" not in f.files:
                        raise NeurodeployError(f"data file {path} has arrays {f.files}, but no 'x'", fix=SAVE_FIX)
                    x = np.asarray(f["x"])
                    y = np.asarray(f["y"]) if "y" in f.files else None
    except NeurodeployError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise NeurodeployError(f"cannot read data file {path}: {e}",
                               fix="pass an .npz written by numpy.savez with an 'x' array") from None
    ds = Dataset(x, y, str(path))
    _check_samples(ds)
    return ds


def load_data(path: str | Path, limit: int | None = None, *, input_shape=None) -> Dataset:
    """Load ``x`` [N, *input_shape] (and ``y`` [N]) from an ``.npz`` (or ``x`` from an ``.npy``)
    file, without pickles, and validate the first ``limit`` samples (see :func:`validate_inputs`)."""
    check_limit(limit)
    ds = read_arrays(path).head(limit)
    ds.x = validate_inputs(ds.x, where=f"data file {path}, array 'x'", input_shape=input_shape)
    return ds


def _check_samples(ds: Dataset) -> None:
    where = f"data file {ds.path}"
    if ds.x.ndim == 0:
        raise NeurodeployError(f"{where}: 'x' is a scalar, not a batch of inputs", fix=SAVE_FIX)
    if len(ds.x) == 0:
        raise NeurodeployError(f"{where}: 'x' has zero samples", fix=SAVE_FIX)
    if ds.y is None:
        return
    if ds.y.ndim != 1 or ds.y.dtype.kind not in "biu":
        raise NeurodeployError(f"{where}: labels 'y' must be a 1-D integer array, got {ds.y.dtype} "
                               f"of shape {ds.y.shape}", fix=SAVE_FIX)
    if len(ds.y) != len(ds.x):
        raise NeurodeployError(f"{where}: {len(ds.x)} inputs but {len(ds.y)} labels")


def validate_inputs(x, *, where: str = "inputs", input_shape=None, first_index: int = 0) -> np.ndarray:
    """``x`` as float64 after checking: numeric and real, at least one sample, per-sample shape
    ``input_shape`` (when given), every value finite. Errors name ``where`` and the first bad sample
    (numbered from ``first_index``: a batch read from the middle of a file names the file's index)."""
    x = np.asarray(x)
    if x.dtype.kind == "c":
        raise NeurodeployError(f"{where} holds complex numbers ({x.dtype})",
                               fix="pass real-valued inputs (e.g. x.real, or np.abs(x))")
    if x.dtype.kind not in "biuf":
        raise NeurodeployError(f"{where} holds {x.dtype} values, not numbers", fix=SAVE_FIX)
    if x.ndim == 0 or len(x) == 0:
        raise NeurodeployError(f"{where} has no samples (shape {x.shape})", fix=SAVE_FIX)
    if input_shape is not None:
        _check_shape(x, tuple(int(s) for s in input_shape), where)
    x = x.astype(np.float64, copy=False)
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if bad.any():
        rows = bad.any(axis=1)
        first = int(np.argmax(rows))
        kinds = "NaN" if np.isnan(x[first]).any() else "infinite"
        raise NeurodeployError(f"{where}: sample {first + first_index} has {int(bad[first].sum())} {kinds} value(s) "
                               f"({int(rows.sum())} of {len(x)} samples are not finite)",
                               fix="remove or repair those samples; every input must be a finite number")
    return x


def _check_shape(x: np.ndarray, shape: tuple, where: str) -> None:
    got = tuple(x.shape[1:])
    if got == shape:
        return
    if tuple(x.shape) == shape:
        raise NeurodeployError(f"{where} has shape {tuple(x.shape)}: one sample without a batch dimension",
                               fix=f"save it as x[None] (shape [1, {', '.join(map(str, shape))}])")
    channels = ""
    if len(got) == len(shape) and len(shape) > 1 and got[1:] == shape[1:]:
        channels = f" ({got[0]} channels instead of {shape[0]})"
    raise NeurodeployError(f"{where} has per-sample shape {got}{channels}, the model takes {shape}",
                           fix=f"pass x shaped [N, {', '.join(map(str, shape))}]")


def quantized_input_range(quantization) -> float | None:
    """max |x| a quantised program was built for, from ``graph.metadata['quantization']`` (the sim
    quantiser's ``input_range``, Loihi's ``input.range``); None when it states none (spike inputs)."""
    if not isinstance(quantization, dict):
        return None
    rng = quantization.get("input_range")
    if rng is None and isinstance(quantization.get("input"), dict):
        rng = quantization["input"].get("range")
    return None if rng is None else float(rng)


def check_input_range(x, limit: float, *, layer: str | None = None,
                      fix: str = "re-quantise with input_range >= max |x| (or calibration data)") -> None:
    """Refuse inputs outside the magnitude ``limit`` a quantised program was built for (exact
    integer arithmetic is only guaranteed inside it); names the first sample outside."""
    x = np.asarray(x, dtype=np.float64)
    if not x.size:
        return
    mag = np.abs(x.reshape(len(x), -1) if x.ndim > 1 else x.reshape(1, -1))
    peaks = np.where(np.isnan(mag), np.inf, mag).max(axis=1)
    if peaks.max() > limit:
        first = int(np.argmax(peaks > limit))
        raise NeurodeployError(
            f"input magnitude {float(peaks.max()):g} (first in sample {first}) exceeds the range {limit:g} "
            "the program was quantised for (exact integer arithmetic is only guaranteed inside it)",
            layer=layer, fix=fix)
