"""Calibration rules for Loihi 2 (NetX): what :func:`.layerwise.calibrate_graph` may change.

* weights: 8-bit mantissas, one shared exponent per layer: integers in [−M, M] (M = 127 for a
  mixed-sign layer, [0, 255] for an all-non-negative one), the ranges the loihi quantiser uses;
* bias: per neuron (it is added once, with the initial membrane, at the sample's first step);
* threshold: one vThMant per layer, 17 bits;
* state: the worst-case membrane and per-timestep input must stay below 2^17 (24-bit state), the
  same bound the quantiser guarantees; a calibrated layer that breaks it is not used.

Input scale: for dyadic calibration inputs (every value a multiple of 2^-k), the scales that keep
the input exact (2^k and the largest multiple of 2^k within the input bits) are tried beside the
quantiser's full-range scale; the one with the best count agreement on the calibration data wins.
"""

from __future__ import annotations

import numpy as np

from ... import ir
from ...calibration import dyadic_bits, input_peak, is_signed
from ...calibration.layerwise import (Rules, calibrate_graph, final_layer_equal, significant_gain,
                                       weight_neuron_pairs)
from .quantize import STATE_LIMIT, THETA_MAX, VTH_MAX, describe_groups, fan_bound, netx_dense_weights


def _mantissa_max(g: ir.Graph, wname: str) -> int:
    rep = ((g.metadata.get("quantization") or {}).get("layers") or {}).get(wname) or {}
    return int(rep.get("mantissa_max") or (255 if np.asarray(g.nodes[wname].weight).min() >= 0 else 127))


def weight_range(g: ir.Graph):
    def rng(wname, node):
        M = _mantissa_max(g, wname)
        return (0 if np.asarray(node.weight).min() >= 0 else -M), M
    return rng


def _feed(g: ir.Graph, wname: str) -> tuple[int | None, int]:
    """(spike budget D of the neuron layer feeding ``wname`` or None for the graph input, product of
    the sum-pool kernels in between)."""
    gain, name = 1, g.inputs_of(wname)[0]
    while True:
        node = g.nodes[name]
        if isinstance(node, ir.IFNeuron):
            return node.max_spikes, gain
        if isinstance(node, ir.Input):
            return None, gain
        if isinstance(node, ir.SumPool2d):
            gain *= node.kernel[0] * node.kernel[1]
        name = g.inputs_of(name)[0]


def state_violation(g: ir.Graph, wname: str, nname: str) -> str | None:
    """The loihi quantiser's state bound for one calibrated layer (None when it holds)."""
    node, nrn = g.nodes[wname], g.nodes[nname]
    wq = np.asarray(node.weight_q)
    D, pool = _feed(g, wname)
    inp = (g.metadata.get("quantization") or {}).get("input") or {}
    fan = fan_bound(wq, nonnegative_input=D is not None or not inp.get("signed", False))
    if D is None:
        max_in = inp.get("max_int", 1)
        per_step = total = fan * max_in
    else:
        per_step, total = fan * pool, fan * D * pool
    total += (float(np.abs(node.bias_q).max()) if node.bias_q is not None else 0.0) + abs(nrn.v_init_q or 0)
    if max(total, per_step) >= STATE_LIMIT:
        return f"worst-case membrane {max(total, per_step):.0f} >= 2^17"
    if not 1 <= nrn.threshold_q <= VTH_MAX + 1:
        return f"threshold {nrn.threshold_q} outside the 17-bit vThMant"
    return None


def rules(g: ir.Graph, options: dict | None = None) -> Rules:
    return Rules(weight_range=weight_range(g), threshold_range=lambda nrn: (1, THETA_MAX),
                 accept=state_violation, per_neuron_bias=True)


def quantize_base(graph: ir.Graph, x, **options) -> ir.Graph:
    from .quantize import quantize
    return quantize(graph, calibration=x, **options)


def input_scale_options(input_scale) -> dict:
    return {} if input_scale is None else {"input_scale": float(input_scale)}


def _input_scales(x, input_bits: int = 8) -> list[float | None]:
    """None (the quantiser's own full-range scale) and the exact scales for dyadic inputs."""
    k, peak = dyadic_bits(x), input_peak(x)
    if k is None or not peak:
        return [None]
    qmax = 2 ** (input_bits - 1) - 1 if is_signed(x) else 2 ** input_bits - 1
    step = 2.0 ** k
    top = step * np.floor(qmax / peak / step)
    return [None] + sorted({s for s in (step, top) if s > 0 and s * peak <= qmax})


def calibrate(graph: ir.Graph, x, **options):
    """(calibrated graph, per-layer results, chosen input scale) for a canonical ``graph`` and
    calibration inputs ``x``; ``options`` are the loihi quantiser's."""
    from .quantize import quantize

    best = None
    if "input_scale" in options or any(isinstance(n, ir.Input) and n.is_spikes for n in graph.nodes.values()):
        scales = [options.pop("input_scale", None)]
    else:
        scales = _input_scales(x, options.get("input_bits", 8))
    for s in scales:  # the first (the quantiser's own) unless another is significantly better
        q = quantize(graph, calibration=x, **options, **({} if s is None else {"input_scale": s}))
        eq = final_layer_equal(q, x)
        if best is None or significant_gain(eq, best[0]):
            best = (eq, q, s)
    _, q, s = best
    g, results = calibrate_graph(q, x, rules(q))
    refresh_report(g)
    return g, results, s


def refresh_report(g: ir.Graph) -> None:
    """Update the quantisation report's threshold / bias / NetX fields after calibration."""
    from .program import lower

    report = g.metadata.get("quantization") or {}
    layers = report.get("layers", {})
    for wname, nname in weight_neuron_pairs(g):
        rep, nrn = layers.setdefault(wname, {}), g.nodes[nname]
        if "group_exp" in rep:
            rep["synapse_groups"] = describe_groups(g.nodes[wname].weight_q, rep["group_exp"])
        rep.update({"threshold_q": int(nrn.threshold_q), "vThMant": int(nrn.threshold_q) - 1,
                    "v_init_q": int(nrn.v_init_q or 0),
                    "weights_rounded_to_zero": int(np.sum((np.asarray(g.nodes[wname].weight_q) == 0)
                                                          & (np.asarray(g.nodes[wname].weight) != 0)))})
    for spec in lower(g).layers:
        if spec.kind == "dense":
            d = netx_dense_weights(spec.weight)
            entry = layers.get(spec.sources[-2], {})
            entry.update({"weight_exp": d["weight_exp"], "num_weight_bits": d["num_weight_bits"],
                          "mantissa_range": [int(d["stored"].min()), int(d["stored"].max())],
                          "netx_exact": d["exact"]})
