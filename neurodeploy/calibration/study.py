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

from .. import ir, ops
from ..errors import NeurodeployError
from . import dyadic_bits, input_peak
from .effect import measure
from .layerwise import Rules, calibrate_graph

_PASS = (ir.SumPool2d, ir.Flatten, ir.Reshape, ir.Output)


def _input_scale(x) -> float:
    peak = input_peak(x) or 1.0
    qmax = 127 if float(np.min(x)) < 0 else 255
    k = dyadic_bits(x)
    if k is not None and 2 ** k * peak <= qmax:
        return float(2 ** k)
    return qmax / peak


def quantize_weight_bits(graph: ir.Graph, x, bits: int) -> ir.Graph:
    """N-bit integer copy of a canonical graph (see the module docstring)."""
    if not 2 <= bits <= 16:
        raise NeurodeployError(f"--weight-bits {bits} is outside 2..16", fix="choose 2 to 16 bits")
    g = graph.copy()
    ir.infer_shapes(g)
    M = 2 ** (bits - 1) - 1
    scale: dict[str, float] = {}
    layers: dict[str, dict] = {}
    for name in g.topo_order():
        node = g.nodes[name]
        ins = [scale[i] for i in g.inputs_of(name)]
        if isinstance(node, ir.Input):
            node.scale_q = 1 if node.is_spikes else _input_scale(x)
            scale[name] = float(node.scale_q)
        elif isinstance(node, ir.IFNeuron):
            S = ins[0]
            node.threshold_q = max(1, int(round(node.threshold * S)))
            node.v_init_q = int(round(node.v_init * S))
            scale[name] = 1.0
        elif isinstance(node, ir.WEIGHT_NODES):
            W = np.asarray(node.weight, dtype=np.float64)
            s = M / max(float(np.abs(W).max()), 1e-300)
            node.weight_q = np.rint(W * s).astype(np.int64)
            node.bias_q = None if node.bias is None else np.rint(np.asarray(node.bias) * s * ins[0]).astype(np.int64)
            scale[name] = s * ins[0]
            layers[name] = {"weight_scale": s, "scale": scale[name]}
        elif isinstance(node, _PASS) or (isinstance(node, ir.Add) and len(set(ins)) == 1):
            scale[name] = ins[0]
        else:
            raise NeurodeployError(f"the weight-bit study handles chains of weight layers, IF neurons, sum-pools "
                                   f"and flattens, not {node.kind}", layer=name,
                                   fix="study the part before it (--until)")
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
