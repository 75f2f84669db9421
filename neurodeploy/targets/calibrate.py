"""The calibration stage of a compile: per-target search (:mod:`neurodeploy.calibration`) or a
saved calibration record, applied to the target's quantised graph.

Runs only on an explicit ``--calibration`` file (never on ``--data``, which is what verify reports
on) or ``--calibration-record``. Targets without a calibration stage keep the quantiser's graph.
"""

from __future__ import annotations

from pathlib import Path

from .. import ir
from ..artifacts import sha256_file
from ..calibration.record import apply_record, check_record, make_record, read_record
from ..errors import NeurodeployError

CALIBRATED_TARGETS = ("loihi", "speck")


def supports(target: str) -> bool:
    return target in CALIBRATED_TARGETS


def _module(target: str):
    if target == "loihi":
        from .loihi import calibrate
        return calibrate
    if target == "speck":
        from .speck import calibrate
        return calibrate
    raise NeurodeployError(f"target '{target}' has no calibration stage",
                           fix=f"calibrate for one of: {', '.join(CALIBRATED_TARGETS)}")


def _summary(source: str, results) -> dict:
    return {"source": source, "layers": [
        {"weight_layer": r.weight_layer, "neuron": r.neuron, "choice": "; ".join(r.steps),
         "calibration_agreement_before": r.agree_before, "calibration_agreement_after": r.agree_after}
        for r in results]}


def run(target: str, canonical: ir.Graph, x, *, data_path: str | Path | None = None,
        target_options: dict | None = None, sample=None) -> tuple[ir.Graph, dict]:
    """(calibrated quantised graph, calibration record) for calibration inputs ``x``; ``sample`` (a
    ``calibration_sample.CalibrationSample`` of ``x``) records the data by content and how it was sampled."""
    mod = _module(target)
    options = dict(target_options or {})
    g, results, input_scale = mod.calibrate(canonical, x, **options)
    digest = sample.digest if sample is not None else sha256_file(data_path) if data_path and Path(data_path).is_file() else None
    record = make_record(g, target, results, data_sha256=digest,
                         n_samples=len(x), input_scale=input_scale, quantizer_options=options)
    if sample is not None:
        record.update(sample.record_fields())
    inp = (g.metadata.get("quantization") or {}).get("input")
    record["input"] = None if not inp else {"range": inp.get("range"), "signed": inp.get("signed")}
    g.metadata.setdefault("quantization", {})["calibration"] = _summary(
        f"searched on {Path(data_path).name if data_path else 'calibration inputs'}", results)
    return g, record


def _input_stub(rec: dict):
    """Two values with the recorded input range and sign: all a quantiser reads of calibration data
    besides the search, so a record reproduces the calibrated graph without the data."""
    import numpy as np

    inp = rec.get("input") or {}
    if not inp:
        return None
    rng = float(inp["range"])
    return np.array([rng, -rng if inp.get("signed") else 0.0])


def from_record(target: str, canonical: ir.Graph, record_path: str | Path,
                target_options: dict | None = None) -> ir.Graph:
    """The quantised graph with a saved record's parameters (no search); refuses a record made for
    another model, target or quantiser options."""
    mod = _module(target)
    rec = read_record(record_path)
    options = dict(target_options or {})
    if rec.get("quantizer_options", {}) != options:
        raise NeurodeployError(f"calibration record was made with quantiser options {rec.get('quantizer_options')}, "
                               f"this compile uses {options}",
                               fix="compile with the record's options or re-run 'neurodeploy calibrate'")
    g = mod.quantize_base(canonical, _input_stub(rec), **options,
                          **mod.input_scale_options(rec.get("input_scale")))
    check_record(rec, g, target)
    apply_record(rec, g)
    rules = mod.rules(g, {**options, **mod.input_scale_options(rec.get("input_scale"))})
    for lr in rec["layers"]:
        problem = rules.accept(g, lr["weight_layer"], lr["neuron"])
        if problem:
            raise NeurodeployError(f"calibration record breaks a {target} rule: {problem}",
                                   layer=lr["weight_layer"], fix="re-run 'neurodeploy calibrate'")
    mod.refresh_report(g)
    g.metadata["quantization"]["calibration"] = {
        "source": f"record {Path(record_path).name} (data sha256 {str(rec.get('data_sha256'))[:12]})",
        "layers": [{"weight_layer": lr["weight_layer"], "neuron": lr["neuron"], "choice": lr.get("choice", "")}
                   for lr in rec["layers"]]}
    return g
