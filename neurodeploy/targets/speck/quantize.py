"""Speck quantisation: 8-bit weights, 16-bit state, ONE scale per layer (REFERENCE §3, exact).

For a layer (weight node W, b feeding IF neuron θ, v_init) a single scale S gives::

    w_q = rint(W · S / s_in)   in [-128, 127]      (s_in: input rate-code scale, 1 for spike inputs)
    b_q = rint(b · S)          where the bias lives (``bias_mode``, see below)
    θ_q = rint(θ · S)          in [1, 32767]        -> threshold_high
    v_init_q = rint(v_init·S)                       -> neurons_initial_value (the +θ/2 of round-half-up)
    low_q = -32768 (default) or rint(low · S)       -> threshold_low (membrane floor)

Where the bias lives decides its range (``bias_bits``): with ``bias_mode='initial'`` (the default,
what ``config.build_config`` writes) it is added once through ``neurons_initial_value``, a 16-bit
state word, so only ``v_init + b`` must fit 16 bits (the "initial_value" limit) and the bias does
not limit the weights' 8 bits. With ``bias_mode='leak'`` it is written to the chip's bias register,
which sinabs 3.1.3 discretises to 8 bits like the weights (``sinabs/backend/dynapcnn/discretize.py``
scales ``conv_bias`` with ``DYNAPCNN_WEIGHT_PRECISION_BITS = 8``): then ``bias_bits`` ≤ 8 (default 8)
limits S, and wider is refused.

``rint`` rounds half to even (what ``torch.round`` in sinabs' ``discretize`` does). S is the largest
scale that keeps every value in range (sinabs' rule, with the asymmetric int8 range), so the
weights use the full 8 bits. The low threshold does NOT take part in choosing S by default: it is
set to the most negative 16-bit state (-32768) *after* S is chosen. sinabs' pitfall — leaving
``min_v_mem`` unset makes it -32768 in *float* units, which forces S ≤ 1 and rounds small weights
to 0 — cannot happen silently: a user-given ``low_threshold`` that limits S is reported, weights
that round to 0 are warned about (Python warning + report entry) and an all-zero layer is an error.

With ``calibration=x`` (a batch) the scale of each layer is chosen, layer by layer in topological
order, among candidates S_max·2^(-j/4) (j = 0..12): the largest, unless a smaller one lowers the
mean absolute spike-count error of that layer (quantised closed form, ``ops.evaluate``, with the
16-bit state clamp, against the float graph) by ≥ 5% and by more than three standard errors of the
paired per-sample difference (then that one, reported as ``limited_by: calibration`` with the
numbers in ``calibration_reason``).
Smaller scales trade weight resolution for state headroom.
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
BIAS_MODES = ("initial", "leak")
# widest bias per bias_mode: the 16-bit initial value, or the chip's bias register (8 bits in sinabs 3.1.3)
MAX_BIAS_BITS = {"initial": STATE_BITS, "leak": WEIGHT_BITS}


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


def check_bias_options(bias_mode: str, bias_bits: int | None) -> int:
    """The bias width for ``bias_mode`` (default: the widest the bias's home allows); refuses wider."""
    if bias_mode not in BIAS_MODES:
        raise NeurodeployError(f"bias_mode must be 'initial' or 'leak', not {bias_mode!r}",
                               fix="use 'initial' (bias added once through the 16-bit initial value) or 'leak' "
                                   "(chip bias register, acts on every slow-clock tick)")
    widest = MAX_BIAS_BITS[bias_mode]
    if bias_bits is None:
        return widest
    if not 2 <= int(bias_bits) <= widest:
        where = ("the chip's bias register is 8 bits (sinabs 3.1.3 discretises biases to 8 bits)"
                 if bias_mode == "leak" else "the bias is added to the 16-bit initial value")
        raise NeurodeployError(f"bias_bits={bias_bits} does not fit bias_mode='{bias_mode}': {where}",
                               fix=f"use bias_bits between 2 and {widest}, or bias_mode='initial' for a bias "
                                   f"that shares the 16-bit state")
    return int(bias_bits)


def layer_scale_limits(w_eff: np.ndarray, b: np.ndarray, theta: float, v_init: float,
                       low: float | None, bias_bits: int, bias_mode: str = "initial") -> dict:
    """Each constraint's largest admissible scale. A bias in the initial value is limited by the
    "initial_value" entry (v_init + b in 16 bits); a separate "bias" entry only when it is narrower."""
    lim = {
        "weights": _range_scale(w_eff, WEIGHT_BITS),
        "threshold": S_MAX / theta,
        "initial_value": _range_scale(np.array([v_init, v_init + b.max(initial=0), v_init + b.min(initial=0)]),
                                      STATE_BITS),
    }
    if bias_mode == "leak" or bias_bits < STATE_BITS:
        lim["bias"] = _range_scale(b, bias_bits)
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


def _limit_reason(rep: dict) -> str:
    if rep.get("calibration_reason"):
        return rep["calibration_reason"]
    lim = rep["limits"]
    return ", ".join(f"{k} allows scale {v:.4g}" for k, v in sorted(lim.items(), key=lambda kv: kv[1])[:2])


def _check_bias_range(g: ir.Graph, lname: str, rep: dict, bias_mode: str, bias_bits: int) -> None:
    """The bias where the artefact stores it must fit (reachable with user-forced ``scales``)."""
    bq = g.nodes[lname].bias_q
    if bq is None or not len(bq):
        return
    blo, bhi = -(2 ** (bias_bits - 1)), 2 ** (bias_bits - 1) - 1
    checks = [(bq, blo, bhi, f"{bias_bits}-bit bias")]
    if bias_mode == "initial":
        checks.append((bq + rep["v_init_q"], S_MIN, S_MAX, "16-bit initial value (v_init + bias)"))
    for values, lo, hi, what in checks:
        if values.min() < lo or values.max() > hi:
            raise NeurodeployError(f"the {what} is [{int(values.min())}, {int(values.max())}] at scale "
                                   f"{rep['scale']:.4g}, outside [{lo}, {hi}]", layer=lname,
                                   fix="leave the scale to the quantiser (drop 'scales' for this layer) or use "
                                       "bias_mode='initial' (the bias joins the 16-bit initial value)")


CALIBRATION_MIN_GAIN = 0.05  # relative error reduction a smaller scale must bring
CALIBRATION_Z = 3.0  # standard errors (≈ Bonferroni over the 12 smaller candidates at 5%)


def _pick_calibrated_scale(per_sample: list, s_max: float) -> tuple[float, str]:
    """The largest scale (full weight precision) unless a smaller one lowers the mean |Δcount| by at
    least 5% and by more than 3 standard errors of the paired per-sample difference. With a few
    dozen calibration samples the differences between candidates are mostly rounding noise (the
    minimum of 13 noisy values is biased low), and noise must not cost weight bits; what a smaller
    scale really buys — 16-bit state headroom against saturation — shows as a large gain."""
    if not per_sample:
        return s_max, ""
    s0, e0 = per_sample[0]
    s_best, e_best = min(per_sample, key=lambda c: c[1].mean())
    d = e_best - e0
    if s_best == s0 or len(d) < 2:
        return s0, ""
    gain = -d.mean()
    if gain < CALIBRATION_MIN_GAIN * e0.mean() or gain <= CALIBRATION_Z * d.std(ddof=1) / np.sqrt(len(d)):
        return s0, ""
    return s_best, (f"scale {s_best:.4g} has mean |Δcount| {e_best.mean():.4g} on the calibration data vs "
                    f"{e0.mean():.4g} at the weights' full-range scale {s0:.4g}")


def quantize(graph: ir.Graph, calibration=None, *, input_scale: float | None = None,
             max_input_events: int = 8, low_threshold: float | dict | None = None, bias_bits: int | None = None,
             scales: dict | None = None, bias_mode: str = "initial") -> ir.Graph:
    """Return a quantised copy of a canonical graph for Speck.

    ``bias_mode``: where the artefact puts the bias ('initial': the 16-bit initial value, 'leak': the
    chip's 8-bit bias register); ``bias_bits``: its width (default and maximum: 16 resp. 8).

    ``low_threshold``: membrane floor in float units (one value or {layer: value}); None = the 16-bit
    floor -32768 chosen after the scale. ``scales``: {layer: S} to force a layer's scale.
    ``input_scale``: rate-code scale for a real-valued input (events = round(x·scale)); default from
    ``calibration`` (max |x| -> ``max_input_events``) or 1.0.
    """
    bias_bits = check_bias_options(bias_mode, bias_bits)
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
        lim = layer_scale_limits(w / lin, b, neuron.threshold, neuron.v_init, low, bias_bits, bias_mode)
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

    if bias_mode == "leak" and any(g.nodes[l].bias is not None and np.any(g.nodes[l].bias) for l in net.layers):
        warn("bias_mode='leak': the biases act on every slow-clock tick on the chip; the simulator and verify add "
             "them once (as bias_mode='initial' does), so their results do not show the leak")
    g.metadata["quantization"] = {"target": "speck"}  # mark quantised for ops.evaluate

    calib_info = None
    if calibration is not None and not scales:
        calib_info = {}
        x = ops.as_tensor(calibration)
        ref = ops.evaluate(g, x, quantized=False)
        for lname, layer in net.layers.items():
            low = low_threshold.get(lname) if isinstance(low_threshold, dict) else low_threshold
            lin = per_layer[lname]["input_scale"]
            errs, per_sample = [], []
            for j in range(N_CANDIDATES):
                S = smax[lname] * 2.0 ** (-j / 4)
                if np.rint(g.nodes[layer.neuron].threshold * S) < 1:
                    break
                _apply_scale(g, lname, layer.neuron, S, lin, low, {})
                if not np.any(g.nodes[lname].weight_q):
                    break
                q = ops.evaluate(g, x, quantized=True)
                e = (q[layer.neuron] - ref[layer.neuron]).abs().reshape(len(x), -1).mean(1).double().numpy()
                errs.append((round(S, 6), float(e.mean())))
                per_sample.append((S, e))
            S, reason = _pick_calibrated_scale(per_sample, smax[lname])
            _apply_scale(g, lname, layer.neuron, S, lin, low, per_layer[lname])
            if S != smax[lname]:
                per_layer[lname]["limited_by"] = "calibration"
                per_layer[lname]["calibration_reason"] = reason
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
        _check_bias_range(g, lname, rep, bias_mode, bias_bits)
        if rep["threshold_q"] < 1:
            raise NeurodeployError(f"threshold rounds to {rep['threshold_q']} at scale {rep['scale']:.4g}",
                                   layer=rep["neuron"], fix="the threshold must be >= 1 after scaling")
        if 0 < rep["max_abs_weight_q"] < 64:
            msgs.append(f"layer '{lname}': max |w_q| = {rep['max_abs_weight_q']} uses less than 7 of the 8 weight bits "
                        f"(limited by {rep['limited_by']}: {_limit_reason(rep)})")
        if rep["weights_above_threshold"]:
            msgs.append(f"layer '{lname}': {rep['weights_above_threshold']} weights exceed the threshold "
                        f"({rep['max_abs_weight_q']} > {rep['threshold_q']}): one input event may need several "
                        f"output spikes, but Speck emits at most one (see verify's remedy)")

    g.metadata["quantization"] = {
        "target": "speck", "weight_bits": WEIGHT_BITS, "state_bits": STATE_BITS, "bias_bits": bias_bits,
        "bias_mode": bias_mode,
        "rounding": "half_even (numpy.rint, as torch.round in sinabs)",
        "input_scale": s_in if not inp.is_spikes else None,
        "layers": per_layer, "warnings": msgs, "calibration": calib_info,
    }
    return g


def quantization_report(meta: dict) -> str:
    """Per layer: scale, weight bits used, weights rounded to 0, and the limit that binds (and why)."""
    lines = [f"quantisation (bias_mode {meta.get('bias_mode', 'initial')}, bias {meta.get('bias_bits')} bits; "
             f"the scale is the smallest of the limits, each the largest scale its values allow):",
             f"  {'layer':<24} {'scale':>9} {'max|w_q|':>8} {'zeroed':>8} {'θ_q':>6}  limited by"]
    for lname, rep in meta.get("layers", {}).items():
        nz = max(rep.get("nonzero_weights", 0), 1)
        limits = ", ".join(f"{k} {v:.4g}" for k, v in sorted(rep["limits"].items(), key=lambda kv: kv[1]))
        why = f" ({rep['calibration_reason']})" if rep.get("calibration_reason") else ""
        lines.append(f"  {lname:<24} {rep['scale']:>9.4g} {rep['max_abs_weight_q']:>8} "
                     f"{100 * rep['zeroed_weights'] / nz:>7.2f}% {rep['threshold_q']:>6}  {rep['limited_by']}{why}"
                     f" [limits: {limits}]")
    return "\n".join(lines) + "\n"
