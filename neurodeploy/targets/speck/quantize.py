"""Speck quantisation: 8-bit weights, 16-bit state, ONE scale per layer (REFERENCE §3, exact).

For a layer (weight node W, b feeding IF neuron θ, v_init) a single scale S gives::

    w_q = rint(W · S / s_in)   in [-128, 127]      (s_in: input rate-code scale, 1 for spike inputs)
    b_q = rint(b · S)          in [-2^(bias_bits-1), 2^(bias_bits-1) - 1]   (bias_bits = 8, as sinabs)
    θ_q = rint(θ · S)          in [1, 32767]        -> threshold_high
    v_init_q = rint(v_init·S)                       -> neurons_initial_value (the +θ/2 of round-half-up)
    low_q = -32768 (default) or rint(low · S)       -> threshold_low (membrane floor)

``rint`` rounds half to even (what ``torch.round`` in sinabs' ``discretize`` does). S is the largest
scale that keeps every value in range (sinabs' rule, with the asymmetric int8 range), so the
weights use the full 8 bits. The low threshold does NOT take part in choosing S by default: it is
set to the most negative 16-bit state (-32768) *after* S is chosen. sinabs' pitfall — leaving
``min_v_mem`` unset makes it -32768 in *float* units, which forces S ≤ 1 and rounds small weights
to 0 — cannot happen silently: a user-given ``low_threshold`` that limits S is reported, weights
that round to 0 are warned about (Python warning + report entry) and an all-zero layer is an error.

With ``calibration=x`` (a batch) the scale of each layer is chosen, layer by layer in topological
order, among candidates S_max·2^(-j/4) (j = 0..12) as the one that minimises the mean absolute
spike-count error of that layer, quantised closed form (``ops.evaluate``, with the 16-bit state
clamp) against the float graph. Smaller scales trade weight resolution for state headroom.
"""

from __future__ import annotations

import warnings

import numpy as np

from ... import ir, ops
from ...calibration import input_peak
from ...errors import NeurodeployError
from .layers import INPUT, extract

WEIGHT_BITS = 8
STATE_BITS = 16
W_MIN, W_MAX = -(2 ** (WEIGHT_BITS - 1)), 2 ** (WEIGHT_BITS - 1) - 1
S_MIN, S_MAX = -(2 ** (STATE_BITS - 1)), 2 ** (STATE_BITS - 1) - 1
N_CANDIDATES = 13


class SpeckQuantizationWarning(UserWarning):
    """Weights that round to zero, a low threshold that collapses the scale, rate-coded input."""


def _range_scale(values: np.ndarray, bits: int) -> float:
    """Largest s with rint(values·s) inside the signed ``bits`` range (sinabs' rule); inf if all 0."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return np.inf
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    vmax, vmin = float(values.max()), float(values.min())
    s = np.inf
    if vmax > 0:
        s = min(s, hi / vmax)
    if vmin < 0:
        s = min(s, lo / vmin)
    return s


def layer_scale_limits(w_eff: np.ndarray, b: np.ndarray, theta: float, v_init: float,
                       low: float | None, bias_bits: int) -> dict:
    """Each constraint's largest admissible scale."""
    lim = {
        "weights": _range_scale(w_eff, WEIGHT_BITS),
        "bias": _range_scale(b, bias_bits),
        "threshold": S_MAX / theta,
        "initial_value": _range_scale(np.array([v_init, v_init + b.max(initial=0), v_init + b.min(initial=0)]),
                                      STATE_BITS),
    }
    if low is not None:
        lim["low_threshold"] = _range_scale(np.array([low]), STATE_BITS)
    return lim


def _apply_scale(graph: ir.Graph, lname: str, nname: str, S: float, s_in: float, low: float | None,
                 report: dict) -> None:
    wnode = graph.nodes[lname]
    neuron = graph.nodes[nname]
    w = np.asarray(wnode.weight, dtype=np.float64)
    wq = np.rint(w * S / s_in).astype(np.int64)
    wnode.weight_q = np.clip(wq, W_MIN, W_MAX)
    wnode.bias_q = None if wnode.bias is None else np.rint(np.asarray(wnode.bias, dtype=np.float64) * S).astype(np.int64)
    neuron.threshold_q = int(np.rint(neuron.threshold * S))
    neuron.v_init_q = int(np.clip(np.rint(neuron.v_init * S), S_MIN, S_MAX))
    neuron.low_threshold_q = S_MIN if low is None else int(np.clip(np.rint(low * S), S_MIN, S_MAX))
    neuron.state_bits = STATE_BITS
    nz = w != 0
    zeroed = int(np.count_nonzero(nz & (wnode.weight_q == 0)))
    report.update(scale=float(S), threshold_q=neuron.threshold_q, v_init_q=neuron.v_init_q,
                  low_threshold_q=neuron.low_threshold_q, nonzero_weights=int(nz.sum()), zeroed_weights=zeroed,
                  max_abs_weight_q=int(np.abs(wnode.weight_q).max(initial=0)),
                  weights_above_threshold=int(np.count_nonzero(np.abs(wnode.weight_q) > neuron.threshold_q)))


def quantize(graph: ir.Graph, calibration=None, *, input_scale: float | None = None,
             max_input_events: int = 8, low_threshold: float | dict | None = None, bias_bits: int = WEIGHT_BITS,
             scales: dict | None = None) -> ir.Graph:
    """Return a quantised copy of a canonical graph for Speck.

    ``low_threshold``: membrane floor in float units (one value or {layer: value}); None = the 16-bit
    floor -32768 chosen after the scale. ``scales``: {layer: S} to force a layer's scale.
    ``input_scale``: rate-code scale for a real-valued input (events = round(x·scale)); default from
    ``calibration`` (max |x| -> ``max_input_events``) or 1.0.
    """
    g = graph.copy()
    ir.infer_shapes(g)
    net = extract(g)
    if net.violations:
        from ...errors import DesignRuleError
        raise DesignRuleError([str(v) for v in net.violations], "speck")
    msgs: list[str] = []

    def warn(msg: str) -> None:
        msgs.append(msg)
        warnings.warn(msg, SpeckQuantizationWarning, stacklevel=3)

    inp = g.nodes[net.input_name]
    s_in = 1.0
    if not inp.is_spikes:
        if input_scale is None:
            if (peak := input_peak(calibration)) is not None:
                input_scale = max_input_events / peak if peak > 0 else 1.0
            else:
                input_scale = 1.0
                warn(f"input '{net.input_name}' is real-valued and no input_scale/calibration was given: it is "
                     f"rate coded as round(x) events per pixel")
        inp.scale_q = input_scale
        s_in = float(input_scale)

    per_layer: dict[str, dict] = {}
    smax: dict[str, float] = {}
    for lname, layer in net.layers.items():
        wnode = g.nodes[lname]
        neuron = g.nodes[layer.neuron]
        if neuron.threshold <= 0:
            raise NeurodeployError(f"threshold {neuron.threshold} must be > 0", layer=layer.neuron)
        lin = s_in if INPUT in layer.sources else 1.0
        w = np.asarray(wnode.weight, dtype=np.float64)
        b = np.zeros(w.shape[0]) if wnode.bias is None else np.asarray(wnode.bias, dtype=np.float64)
        low = low_threshold.get(lname) if isinstance(low_threshold, dict) else low_threshold
        lim = layer_scale_limits(w / lin, b, neuron.threshold, neuron.v_init, low, bias_bits)
        S = min(lim.values())
        limited_by = min(lim, key=lim.get)
        if scales and lname in scales:
            S, limited_by = float(scales[lname]), "user"
        if not np.isfinite(S) or S <= 0:
            raise NeurodeployError("cannot choose a scale (all parameters zero?)", layer=lname)
        smax[lname] = S
        per_layer[lname] = {"limits": {k: float(v) for k, v in lim.items()}, "limited_by": limited_by,
                            "input_scale": lin, "neuron": layer.neuron}
        if limited_by == "low_threshold":
            warn(f"layer '{lname}': the low threshold {low} limits the shared scale to {S:.4g} (weights alone "
                 f"allow {lim['weights']:.4g}); small weights lose precision — leave low_threshold unset "
                 f"(-32768 after scaling) or raise it")
        _apply_scale(g, lname, layer.neuron, S, lin, low, per_layer[lname])

    g.metadata["quantization"] = {"target": "speck"}  # mark quantised for ops.evaluate

    calib_info = None
    if calibration is not None and not scales:
        calib_info = {}
        x = ops.as_tensor(calibration)
        ref = ops.evaluate(g, x, quantized=False)
        for lname, layer in net.layers.items():
            low = low_threshold.get(lname) if isinstance(low_threshold, dict) else low_threshold
            lin = per_layer[lname]["input_scale"]
            best = None
            errs = []
            for j in range(N_CANDIDATES):
                S = smax[lname] * 2.0 ** (-j / 4)
                if np.rint(g.nodes[layer.neuron].threshold * S) < 1:
                    break
                _apply_scale(g, lname, layer.neuron, S, lin, low, {})
                if not np.any(g.nodes[lname].weight_q):
                    break
                q = ops.evaluate(g, x, quantized=True)
                err = float((q[layer.neuron] - ref[layer.neuron]).abs().mean())
                errs.append((round(S, 6), err))
                if best is None or err < best[1] - 1e-12:
                    best = (S, err)
            S = best[0] if best else smax[lname]
            _apply_scale(g, lname, layer.neuron, S, lin, low, per_layer[lname])
            if S != smax[lname]:
                per_layer[lname]["limited_by"] = "calibration"
            calib_info[lname] = {"chosen_scale": S, "max_scale": smax[lname], "candidates": errs}

    for lname, rep in per_layer.items():
        wq = g.nodes[lname].weight_q
        if rep["nonzero_weights"] and not np.any(wq):
            raise NeurodeployError(
                f"all {rep['nonzero_weights']} non-zero weights round to 0 at scale {rep['scale']:.4g} "
                f"(limited by {rep['limited_by']})", layer=lname,
                fix="raise the low threshold / leave it unset, lower the threshold relative to the weights, or "
                    "rescale the layer (weights are 8-bit and share one scale with the threshold)")
        if rep["zeroed_weights"]:
            warn(f"layer '{lname}': {rep['zeroed_weights']} of {rep['nonzero_weights']} non-zero weights round to 0 "
                 f"at scale {rep['scale']:.4g} (8-bit weights sharing the scale with θ)")
        if rep["threshold_q"] < 1:
            raise NeurodeployError(f"threshold rounds to {rep['threshold_q']} at scale {rep['scale']:.4g}",
                                   layer=rep["neuron"], fix="the threshold must be >= 1 after scaling")
        if rep["weights_above_threshold"]:
            msgs.append(f"layer '{lname}': {rep['weights_above_threshold']} weights exceed the threshold "
                        f"({rep['max_abs_weight_q']} > {rep['threshold_q']}): one input event may need several "
                        f"output spikes, but Speck emits at most one (see verify's remedy)")

    g.metadata["quantization"] = {
        "target": "speck", "weight_bits": WEIGHT_BITS, "state_bits": STATE_BITS, "bias_bits": bias_bits,
        "rounding": "half_even (numpy.rint, as torch.round in sinabs)",
        "input_scale": s_in if not inp.is_spikes else None,
        "layers": per_layer, "warnings": msgs, "calibration": calib_info,
    }
    return g
