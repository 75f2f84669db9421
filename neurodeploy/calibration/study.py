"""Weight-bit study (``neurodeploy study --weight-bits N``): how far the spike counts of an N-bit
integer version of the model stay from the model, before and after calibration.

The study quantiser is the plain rule of the hardware targets without their other limits: per weight
layer one scale ``s = (2^(N-1) − 1) / max|W|`` (signed N-bit weights), the layer's integer current
in units ``S = s · (scale of its input)`` (the input's scale, or 1 for spike counts), ``θ_q``,
``v_init_q`` and ``b_q`` rounded at ``S``, no state limit. The input is exact for dyadic data that
fit 8 bits, else 8-bit. Calibration (:mod:`.layerwise`) then searches each layer as for a target.
Errors are measured on held-out data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .. import ir
from ..errors import NeurodeployError
from . import dyadic_bits, input_peak
from .effect import measure
from .layerwise import Rules, calibrate_graph

_PASS = (ir.SumPool2d, ir.Flatten, ir.Reshape, ir.Output)  # values pass with their scale


def _input_scale(x) -> float:
    peak = input_peak(x) or 1.0
    qmax = 127 if float(np.min(x)) < 0 else 255
    k = dyadic_bits(x)
    if k is not None and 2 ** k * peak <= qmax:
        return float(2 ** k)
    return qmax / peak


def _current_groups(g: ir.Graph) -> dict[str, str]:
    """Nodes whose integer currents must share one scale (the inputs of a residual Add, and what
    passes through unchanged), as {node: representative}; neurons and the input start their own."""
    parent: dict[str, str] = {}

    def find(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for name in g.topo_order():
        node, ins = g.nodes[name], g.inputs_of(name)
        parent[name] = name
        if isinstance(node, _PASS) or isinstance(node, ir.Add):
            for i in ins:
                parent[find(i)] = find(name)
        elif not isinstance(node, (ir.Input, ir.IFNeuron) + ir.WEIGHT_NODES):
            raise NeurodeployError(f"the weight-bit study handles weight layers, IF neurons, residual sums, "
                                   f"sum-pools, flattens and reshapes, not {node.kind}", layer=name,
                                   fix="study the part before it (--until)")
    return {n: find(n) for n in parent}


def quantize_weight_bits(graph: ir.Graph, x, bits: int) -> ir.Graph:
    """N-bit integer copy of a canonical graph (see the module docstring). Weight layers whose
    currents are summed (residual streams) share the scale their largest weight allows."""
    if not 2 <= bits <= 16:
        raise NeurodeployError(f"--weight-bits {bits} is outside 2..16", fix="choose 2 to 16 bits")
    g = graph.copy()
    ir.infer_shapes(g)
    M = 2 ** (bits - 1) - 1
    group = _current_groups(g)
    members: dict[str, list[str]] = {}
    for n, r in group.items():
        members.setdefault(r, []).append(n)
    scale: dict[str, float] = {}

    def value_scale(name: str) -> float:  # integer units per real unit of a node's value
        if name in scale:
            return scale[name]
        node = g.nodes[name]
        if isinstance(node, ir.Input):
            node.scale_q = 1 if node.is_spikes else _input_scale(x)
            S = float(node.scale_q)
        elif isinstance(node, ir.IFNeuron):
            S = 1.0
        else:
            weights = [m for m in members[group[name]] if isinstance(g.nodes[m], ir.WEIGHT_NODES)]
            fixed = [m for m in members[group[name]] if isinstance(g.nodes[m], (ir.Input, ir.IFNeuron))]
            if fixed and not weights:  # counts or the input passing on (flatten, pool, output)
                fixed_scales = {value_scale(m) for m in fixed}
                if len(fixed_scales) == 1:
                    scale[name] = fixed_scales.pop()
                    return scale[name]
            if fixed or not weights:
                raise NeurodeployError("a residual sum mixes a weight layer's current with spike counts or the "
                                       "input: no single integer scale", layer=name, fix="study the part before it")
            S = min(M / max(float(np.abs(np.asarray(g.nodes[m].weight)).max()), 1e-300)
                    * value_scale(g.inputs_of(m)[0]) for m in weights)
            for m in members[group[name]]:
                scale[m] = S
        scale[name] = S
        return S

    layers: dict[str, dict] = {}
    for name in g.topo_order():
        node = g.nodes[name]
        if isinstance(node, ir.IFNeuron):
            S = value_scale(g.inputs_of(name)[0])
            node.threshold_q = max(1, int(round(node.threshold * S)))
            node.v_init_q = int(round(node.v_init * S))
        elif isinstance(node, ir.WEIGHT_NODES):
            S, d = value_scale(name), value_scale(g.inputs_of(name)[0])
            W = np.asarray(node.weight, dtype=np.float64)
            node.weight_q = np.rint(W * S / d).astype(np.int64)
            node.bias_q = None if node.bias is None else np.rint(np.asarray(node.bias) * S).astype(np.int64)
            layers[name] = {"weight_scale": S / d, "scale": S}
        value_scale(name)
    g.metadata["quantization"] = {"target": "study", "weight_bits": bits, "layers": layers}
    return g


@dataclass
class StudyRow:
    bits: int
    final_layer: str
    pct_before: float
    pct_after: float
    seconds: float
    layers: list


def study(graph: ir.Graph, calibration, data, bits_list, data_name: str = "held-out data") -> list[StudyRow]:
    rows = []
    for bits in bits_list:
        q = quantize_weight_bits(graph, calibration, bits)
        M = 2 ** (bits - 1) - 1
        t0 = time.perf_counter()
        cal, _ = calibrate_graph(q, calibration, Rules(weight_range=lambda n, node: (-M, M)))
        dt = time.perf_counter() - t0
        eff = measure(q, cal, data, data_name)
        last = eff.rows[-1]
        rows.append(StudyRow(bits, last.layer, last.pct("before"), last.pct("after"), dt, eff.to_dict()["layers"]))
    return rows


def study_table(rows: list[StudyRow], data_name: str) -> str:
    lines = [f"weight-bit study — final-layer counts equal to the model on {data_name} (N-bit weights, "
             "one scale per layer), before -> after calibration",
             f"  {'bits':>4} {'layer':<24} {'before':>8} {'after':>8} {'calibration':>12}"]
    for r in rows:
        lines.append(f"  {r.bits:>4} {r.final_layer:<24} {r.pct_before:>7.2f}% {r.pct_after:>7.2f}% {r.seconds:>10.1f} s")
    return "\n".join(lines)
