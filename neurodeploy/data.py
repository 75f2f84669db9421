"""Input data for verify / profile / calibration: ``.npz`` files with ``x`` (and optionally ``y``)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NeurodeployError


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray | None = None
    path: str = ""

    def head(self, n: int | None) -> "Dataset":
        if n is None or n >= len(self.x):
            return self
        return Dataset(self.x[:n], None if self.y is None else self.y[:n], self.path)


def load_data(path: str | Path, limit: int | None = None) -> Dataset:
    """Load ``x`` [N, *input_shape] (and ``y`` [N]) from an ``.npz`` file, without pickles."""
    path = Path(path)
    if not path.exists():
        raise NeurodeployError(f"data file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files:
                raise NeurodeployError(f"data file {path} has arrays {f.files}, but no 'x'",
                                       fix="save inputs with np.savez(path, x=inputs, y=labels)")
            x = np.asarray(f["x"])
            y = np.asarray(f["y"]) if "y" in f.files else None
    except NeurodeployError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise NeurodeployError(f"cannot read data file {path}: {e}",
                               fix="pass an .npz written by numpy.savez with an 'x' array") from None
    if y is not None and len(y) != len(x):
        raise NeurodeployError(f"data file {path}: {len(x)} inputs but {len(y)} labels")
    return Dataset(x, y, str(path)).head(limit)
