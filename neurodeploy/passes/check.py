"""Checks a graph must pass before any pass or quantiser runs on it."""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import ir
from ..errors import NeurodeployError

# IR field -> the name PyTorch gives the same tensor, so the message names what the user saved.
TORCH_NAMES = {"mean": "running_mean", "var": "running_var"}
SKIP_FIELDS = {"source", "shape", "meta"}


def check_finite_parameters(graph: ir.Graph) -> None:
    """Refuse NaN / infinite parameters (weights, biases, BN statistics, scales, thresholds, norms),
    naming the tensor; a quantiser would turn them into INT64_MIN or 'Infinity' silently."""
    for name, node in graph.nodes.items():
        for f in dataclasses.fields(node):
            if f.name in SKIP_FIELDS:
                continue
            value = getattr(node, f.name)
            problem = _non_finite(value)
            if problem:
                tensor = f"{node.source or name}.{TORCH_NAMES.get(f.name, f.name)}"
                raise NeurodeployError(f"parameter '{tensor}' has {problem}", layer=name,
                                       fix="the model file holds non-finite numbers (diverged training or a "
                                           "corrupt save): re-export it from a good checkpoint")
        if isinstance(node, ir.BatchNorm) and node.var is not None \
                and np.any(np.asarray(node.var, dtype=np.float64) + node.eps <= 0):
            raise NeurodeployError(f"parameter '{node.source or name}.running_var' has values <= -eps "
                                   "(a variance cannot be negative)", layer=name,
                                   fix="re-export the model from a good checkpoint")


def _non_finite(value) -> str | None:
    if isinstance(value, (bool, int, str)) or value is None:
        return None
    try:
        a = np.asarray(value)
    except Exception:  # noqa: BLE001 - not a numeric field
        return None
    if a.dtype.kind not in "fc" or a.size == 0:
        return None
    nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    if not nan and not inf:
        return None
    parts = ([f"{nan} NaN"] if nan else []) + ([f"{inf} infinite"] if inf else [])
    return " and ".join(parts) + f" value(s) (of {a.size})"
