"""Calibration records: the parameters a calibration chose, saved so that a compile can reuse them
without searching again (``neurodeploy calibrate`` writes one, ``compile --calibration-record``
reads it).

A record is versioned JSON: the target, the calibration data's sha256 and sample count, the input
scale, and per calibrated layer its integer weights, biases, threshold and initial membrane plus a
fingerprint of the model's float weights (shape and sha256). Applying a record to a model whose
layers, shapes or weights differ is refused, naming the first difference.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .. import ir
from ..errors import NeurodeployError

FORMAT = "neurodeploy-calibration/1"


def weight_fingerprint(node) -> str:
    w = np.ascontiguousarray(np.asarray(node.weight, dtype=np.float64))
    return hashlib.sha256(w.tobytes()).hexdigest()


def make_record(g: ir.Graph, target: str, results, *, data_sha256: str | None, n_samples: int,
                input_scale: float | None, quantizer_options: dict | None = None) -> dict:
    layers = []
    for r in results:
        node, nrn = g.nodes[r.weight_layer], g.nodes[r.neuron]
        layers.append({
            "weight_layer": r.weight_layer, "neuron": r.neuron,
            "weight_shape": list(np.asarray(node.weight).shape), "weight_sha256": weight_fingerprint(node),
            "weight_q": np.asarray(node.weight_q).astype(np.int64).reshape(-1).tolist(),
            "bias_q": None if node.bias_q is None else np.asarray(node.bias_q).astype(np.int64).tolist(),
            "threshold_q": int(nrn.threshold_q), "v_init_q": int(nrn.v_init_q or 0),
            "choice": "; ".join(r.steps), "calibration_agreement": [r.agree_before, r.agree_after]})
    return {"format": FORMAT, "target": target, "data_sha256": data_sha256, "data_samples": int(n_samples),
            "input_scale": input_scale, "quantizer_options": dict(quantizer_options or {}), "layers": layers}


def read_record(path: str | Path) -> dict:
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NeurodeployError(f"cannot read calibration record {path.name}: {e}",
                               fix="pass a file written by 'neurodeploy calibrate'") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        found = rec.get("format") if isinstance(rec, dict) else type(rec).__name__
        raise NeurodeployError(f"{path.name} is not a calibration record (format {found!r}, expected {FORMAT!r})",
                               fix="pass a file written by 'neurodeploy calibrate'")
    return rec


def check_record(rec: dict, g: ir.Graph, target: str) -> None:
    """Refuse a record made for another target or model (layer names, shapes, float weights)."""
    fix = "re-run 'neurodeploy calibrate' for this model and target"
    if rec.get("target") != target:
        raise NeurodeployError(f"calibration record is for target '{rec.get('target')}', not '{target}'", fix=fix)
    for lr in rec.get("layers", []):
        name = lr.get("weight_layer")
        node = g.nodes.get(name)
        if node is None or not isinstance(node, ir.WEIGHT_NODES):
            raise NeurodeployError("calibration record names a weight layer this model does not have",
                                   layer=name, fix=fix)
        if list(np.asarray(node.weight).shape) != list(lr.get("weight_shape", [])):
            raise NeurodeployError(f"calibration record has weight shape {lr.get('weight_shape')}, the model "
                                   f"{list(np.asarray(node.weight).shape)}", layer=name, fix=fix)
        if weight_fingerprint(node) != lr.get("weight_sha256"):
            raise NeurodeployError("the model's weights differ from those the calibration record was made for",
                                   layer=name, fix=fix)
        if lr.get("neuron") not in g.nodes:
            raise NeurodeployError("calibration record names a neuron layer this model does not have",
                                   layer=lr.get("neuron"), fix=fix)


def apply_record(rec: dict, g: ir.Graph) -> None:
    """Set the recorded integer parameters on the quantised graph ``g`` (checked with :func:`check_record`)."""
    try:
        _apply(rec, g)
    except (KeyError, TypeError, ValueError) as e:
        raise NeurodeployError(f"calibration record is incomplete or malformed ({type(e).__name__}: {e})",
                               fix="re-run 'neurodeploy calibrate'") from None


def _apply(rec: dict, g: ir.Graph) -> None:
    for lr in rec["layers"]:
        node, nrn = g.nodes[lr["weight_layer"]], g.nodes[lr["neuron"]]
        node.weight_q = np.asarray(lr["weight_q"], dtype=np.int64).reshape(lr["weight_shape"])
        if lr.get("bias_q") is not None:
            node.bias_q = np.asarray(lr["bias_q"], dtype=np.int64)
            if node.bias is None:
                node.bias = np.zeros(len(node.bias_q))
        nrn.threshold_q, nrn.v_init_q = int(lr["threshold_q"]), int(lr["v_init_q"])
