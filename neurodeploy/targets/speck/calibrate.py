"""Calibration rules for Speck (what :func:`neurodeploy.calibration.layerwise.calibrate_graph` may
change), on top of the quantiser the deployment uses: ``barrier.quantize_for_barrier`` (the layer
barrier, bias in the initial value) or ``quantize.quantize`` (``barrier=False``).

* weights: 8-bit signed, [−128, 127], one scale per layer shared with θ;
* bias: per neuron through the 16-bit initial value (``bias_mode='initial'`` only: a leak bias is
  8 bits on every slow-clock tick, which calibration does not model, so it is refused);
* threshold: 16-bit, [1, 32767];
* the 16-bit state must still hold the layer barrier (``plan_barrier`` finds no violation), and
  v_init + b must fit the initial value; a calibrated layer that breaks either is not used.
"""

from __future__ import annotations

import numpy as np

from ... import ir
from ...calibration.layerwise import Rules, calibrate_graph
from ...errors import NeurodeployError
from .quantize import S_MAX, S_MIN, W_MAX, W_MIN


def _barrier_kw(options: dict) -> dict:
    from .target import _barrier_options
    return _barrier_options(options)


def _quantize_kw(options: dict) -> dict:
    from .target import _quantize_options
    return _quantize_options(options)


def _uses_barrier(options: dict) -> bool:
    from .target import _uses_barrier as uses
    return uses(options)


def rules(g: ir.Graph, options: dict | None = None) -> Rules:
    options = dict(options or {})
    barrier = _uses_barrier(options) and "barrier" in g.metadata

    def accept(graph, wname, nname):
        node, nrn = graph.nodes[wname], graph.nodes[nname]
        b = np.asarray(node.bias_q if node.bias_q is not None else [0], dtype=np.int64)
        v0 = int(nrn.v_init_q or 0)
        if v0 + b.max() > S_MAX or v0 + b.min() < S_MIN:
            return "v_init + bias outside the 16-bit initial value"
        if barrier:
            from .barrier import plan_barrier
            plan = plan_barrier(graph, strict=False, **_barrier_kw(options))
            if plan.violations:
                return f"the 16-bit state cannot hold the barrier of {sorted(plan.violations)}"
        return None

    return Rules(weight_range=lambda name, node: (W_MIN, W_MAX), threshold_range=lambda nrn: (1, S_MAX),
                 accept=accept, per_neuron_bias=True)


def input_scale_options(choice) -> dict:
    """The recorded input choice as quantiser/barrier options ({} for the configured rate code)."""
    return dict(choice or {})


def _input_choices(x, options: dict) -> list[dict]:
    """The configured rate code, and for dyadic inputs (multiples of 2^-k, |x| <= 1) the exact one:
    2^k events per unit (at most 16 events per pixel), with the barrier's input bound to match."""
    from ...calibration import dyadic_bits, input_peak

    choices = [{}]
    if x is None or any(k in options for k in ("input_scale", "max_input_events", "barrier_input_bound")):
        return choices
    k, peak = dyadic_bits(x), input_peak(x)
    if k is not None and peak and float(np.min(x)) >= 0 and 2 ** k * peak <= 16:
        events = int(round(2 ** k * peak))
        if events != 8:
            choices.append({"input_scale": float(2 ** k), "max_input_events": events,
                            "barrier_input_bound": events})
    return choices


def quantize_base(graph: ir.Graph, x, **options) -> ir.Graph:
    if options.get("bias_mode", "initial") != "initial":
        raise NeurodeployError("calibration changes biases, which bias_mode='leak' puts in the 8-bit leak "
                               "register (applied every slow-clock tick: not modelled)",
                               fix="use --bias-mode initial (the default) to calibrate for Speck")
    if _uses_barrier(options):
        from .barrier import quantize_for_barrier
        return quantize_for_barrier(graph, x, **_barrier_kw(options), **_quantize_kw(options))[0]
    from .quantize import quantize
    return quantize(graph, x, **_quantize_kw(options))


def calibrate(graph: ir.Graph, x, **options):
    """(calibrated graph, per-layer results, input choice) for a canonical ``graph`` and inputs
    ``x``; the input choice (rate code) with the best final-layer agreement on ``x`` is kept."""
    from ...calibration.layerwise import final_layer_equal, significant_gain

    import warnings

    best = None
    for choice in _input_choices(x, options):
        with warnings.catch_warnings(record=True) as caught:  # only the chosen quantisation's warnings
            warnings.simplefilter("always")
            q = quantize_base(graph, x, **options, **choice)
        eq = final_layer_equal(q, x)  # the configured code unless another is significantly better
        if best is None or significant_gain(eq, best[0]):
            best = (eq, q, choice, caught)
    _, q, choice, caught = best
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    g, results = calibrate_graph(q, x, rules(q, {**options, **choice}))
    refresh_report(g)
    if choice:
        g.metadata["quantization"].setdefault("notes", []).append(
            f"calibration: exact input rate code, {choice['max_input_events']} events per unit of input "
            "(the barrier's input bound follows)")
    return g, results, choice or None


def refresh_report(g: ir.Graph) -> None:
    layers = (g.metadata.get("quantization") or {}).get("layers", {})
    from ...calibration.layerwise import weight_neuron_pairs
    for wname, nname in weight_neuron_pairs(g):
        rep, nrn, node = layers.get(wname), g.nodes[nname], g.nodes[wname]
        if rep is None:
            continue
        rep.update(threshold_q=int(nrn.threshold_q), v_init_q=int(nrn.v_init_q or 0),
                   max_abs_weight_q=int(np.abs(node.weight_q).max(initial=0)),
                   zeroed_weights=int(np.count_nonzero((np.asarray(node.weight) != 0) & (np.asarray(node.weight_q) == 0))))
