"""Layer-by-layer calibration of a quantised graph: choose the integer parameters that keep spike
counts equal to the float (integer-activation) model on calibration data.

For every weight layer followed by an IF neuron, in topological order, the layer sees the
*quantised* previous layers' actual values (so it can compensate their errors) and the float
model's pre-activation as the target. Steps (a candidate replaces the current choice only when its
gain in counts equal to the model on the calibration data passes a sign test, :func:`significant_gain`):

1. adaptive rounding of the weights (:mod:`.rounding`), each weight at floor or ceil of ``s·w``;
2. bias / initial-value correction: a per-neuron integer offset that makes the boundary-weighted
   mean of the integer current match the float one (in θ_q/θ units);
3. threshold tuning: θ_q ± a few LSB (a per-layer value on every target), re-running 1-2.

What the target allows comes from a :class:`Rules` object (weight range, per-neuron bias, threshold
range, a final state-bound check). The result is a new graph (the input is not changed) and a
record of the choices (:mod:`.record`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .. import ir, ops
from .rounding import RoundingProblem, boundary_weights


MAX_ROWS = 4096  # calibration rows the adaptive-rounding fit of one layer uses (a seeded sample beyond)


@dataclass
class Rules:
    """What a target lets calibration change. ``weight_range(name, node)`` -> (lo, hi) integers;
    ``threshold_range`` -> (lo, hi) for θ_q; ``accept(graph, wname, nname)`` -> None or a reason the
    calibrated layer breaks a target rule (then the layer keeps its uncalibrated parameters)."""

    weight_range: callable
    threshold_range: callable = lambda node: (1, 2 ** 31 - 1)
    accept: callable = lambda g, w, n: None
    per_neuron_bias: bool = True
    threshold_search: tuple = (-1, 1)
    gains: tuple = (1.0, 1.1)          # weight-scale factors tried (> 1 clips the largest weights)


@dataclass
class LayerResult:
    weight_layer: str
    neuron: str
    agree_before: float          # fraction of counts equal to the float model (calibration data)
    agree_after: float
    steps: list = field(default_factory=list)
    note: str = ""


def weight_neuron_pairs(g: ir.Graph) -> list[tuple[str, str]]:
    pairs = []
    for name in g.topo_order():
        node = g.nodes[name]
        if isinstance(node, ir.WEIGHT_NODES) and getattr(node, "weight_q", None) is not None:
            cons = g.consumers_of(name)
            if len(cons) == 1 and isinstance(g.nodes[cons[0]], ir.IFNeuron):
                pairs.append((name, cons[0]))
    return pairs


def _input_value(g: ir.Graph, name: str, values: dict, quantized: bool) -> torch.Tensor:
    src = g.inputs_of(name)[0]
    v = values[src]
    return ops.neuron_output(g.nodes[src], v, quantized) if isinstance(g.nodes[src], ir.IFNeuron) else v


def _rows(node, xin: torch.Tensor) -> tuple[torch.Tensor, callable] | None:
    """Calibration rows X [R, F] of a weight layer (None when it has no row form here: grouped
    convolutions) and a function mapping the layer's output [N, O, ...] to [R, O]."""
    if isinstance(node, ir.Conv2d) and node.groups == 1:
        kh, kw = np.asarray(node.weight).shape[2:]
        cols = F.unfold(xin, (kh, kw), dilation=node.dilation, padding=node.padding, stride=node.stride)
        X = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        return X, lambda z: z.flatten(2).transpose(1, 2).reshape(-1, z.shape[1])
    if isinstance(node, ir.Linear):
        return xin.reshape(-1, xin.shape[-1]), lambda z: z.reshape(-1, z.shape[-1])
    return None


def _to_rows(z: torch.Tensor) -> torch.Tensor:
    """[N, O, ...] or [N, ..., O] (Linear) outputs as [R, O] without a row form of the input."""
    return z.flatten(2).transpose(1, 2).reshape(-1, z.shape[1]) if z.dim() > 2 else z


def weight_scale(node, quant_layer: dict | None) -> float:
    """s with weight_q ≈ s·weight: the quantiser's own value when it reports it, else least squares."""
    if quant_layer and quant_layer.get("weight_scale"):
        return float(quant_layer["weight_scale"])
    W = np.asarray(node.weight, dtype=np.float64)
    Wq = np.asarray(node.weight_q, dtype=np.float64)
    return float((W * Wq).sum() / max((W * W).sum(), 1e-300))


class _Layer:
    """One weight layer + neuron under calibration: its rows, target and count function."""

    def __init__(self, g, wname, nname, xin_q, z_ref, s_w):
        self.node, self.neuron = g.nodes[wname], g.nodes[nname]
        self.xin_q, self.s_w = xin_q, s_w
        nrn = self.neuron
        self.u = (z_ref + nrn.v_init) / nrn.threshold                  # float pre-activation / θ
        self.n_ref = ops.spike_count(nrn, z_ref, quantized=False)
        self.rows = _rows(self.node, xin_q)
        self.h = boundary_weights(_to_rows(self.u), nrn.max_spikes)
        self.sample = None
        if self.rows is not None and len(self.rows[0]) > MAX_ROWS:  # the rounding fit needs a sample only
            self.sample = torch.randperm(len(self.rows[0]), generator=torch.Generator().manual_seed(0))[:MAX_ROWS]
        self.problem = None
        if self.rows is not None:
            pick = slice(None) if self.sample is None else self.sample
            self.problem = RoundingProblem(self.rows[0][pick], self.h[pick])

    def current(self, wq, bq) -> torch.Tensor:
        node = self.node.__class__.__new__(self.node.__class__)
        node.__dict__.update(self.node.__dict__)
        node.weight_q, node.bias_q = wq, bq
        return ops.linear_op(node, [self.xin_q], quantized=True)

    def counts(self, wq, bq, theta_q, v0_q) -> torch.Tensor:
        nrn = self.neuron.__class__.__new__(self.neuron.__class__)
        nrn.__dict__.update(self.neuron.__dict__)
        nrn.threshold_q, nrn.v_init_q = theta_q, v0_q
        return ops.spike_count(nrn, self.current(wq, bq), quantized=True)

    def equal(self, wq, bq, theta_q, v0_q) -> torch.Tensor:
        """Per value: the count equals the float model's (bool, flattened)."""
        return (self.counts(wq, bq, theta_q, v0_q) == self.n_ref).flatten()

    def propose(self, theta_q: int, v0_q: int, lo, hi, adaptive: bool, per_neuron_bias: bool,
                gain: float = 1.0):
        """(weight_q, bias_q) for threshold θ_q and weight scale ``gain``·s (weights clip to
        ``lo``/``hi``): adaptive or nearest rounding, then the bias that matches the float mean."""
        nrn = self.neuron
        k = theta_q / nrn.threshold                                     # integer units per real unit
        target = k * self.u * nrn.threshold - v0_q                      # wanted current (bias incl.)
        Y = _to_rows(target)
        h = self.h
        W = ops.as_tensor(self.node.weight)
        wq = torch.clamp(torch.round(W * self.s_w * gain), lo, hi)
        if adaptive and self.problem is not None:
            shape = wq.shape
            ws = (W * self.s_w * gain).reshape(shape[0], -1)
            wq = self.problem.solve(Y if self.sample is None else Y[self.sample], ws, lo, hi).reshape(shape)
        a = _to_rows(self.current(wq, None))
        off = ((h * (Y - a)).sum(0) / h.sum(0).clamp_min(1e-12))
        if not per_neuron_bias:
            off = torch.full_like(off, float((h * (Y - a)).sum() / h.sum().clamp_min(1e-12)))
        return wq, torch.round(off)


def significant_gain(new: torch.Tensor, old: torch.Tensor) -> bool:
    """A sign test on the values a choice changes: ``g`` counts it fixes, ``l`` it breaks; kept only
    when g − l ≥ 2·sqrt(g + l) (one-sided p ≈ 0.02), so that gains that are noise on a small calibration
    set (which then lose on other data) are not taken."""
    g = int((new & ~old).sum())
    lost = int((old & ~new).sum())
    return g - lost > 0 and g - lost >= 2.0 * (g + lost) ** 0.5


def final_layer_equal(q: ir.Graph, x) -> torch.Tensor:
    """Per value of the last calibrated neuron layer: the quantised count equals the model's."""
    ref, got = ops.evaluate(q, x, quantized=False), ops.evaluate(q, x, quantized=True)
    last = weight_neuron_pairs(q)[-1][1]
    return (got[last] == ref[last]).flatten()


def _set(g, wname, nname, wq, bq, theta_q, v0_q):
    node, nrn = g.nodes[wname], g.nodes[nname]
    node.weight_q = np.asarray(wq).astype(np.int64)
    if bq is not None:
        node.bias_q = np.asarray(bq).astype(np.int64)
        if node.bias is None:
            node.bias = np.zeros(len(node.bias_q))
    nrn.threshold_q, nrn.v_init_q = int(theta_q), int(v0_q)


def calibrate_graph(qgraph: ir.Graph, x, rules: Rules, *, adaptive: bool = True,
                    bias: bool = True, thresholds: bool = True) -> tuple[ir.Graph, list[LayerResult]]:
    """Calibrated copy of the quantised graph ``qgraph`` on calibration inputs ``x``."""
    g = qgraph.copy()
    x = ops.as_tensor(x)
    quant_layers = (g.metadata.get("quantization") or {}).get("layers", {})
    with torch.inference_mode():
        ref = ops.evaluate(g, x, quantized=False)
        results = []
        for wname, nname in weight_neuron_pairs(g):
            t0 = time.perf_counter()
            cur = ops.evaluate(g, x, quantized=True)                     # earlier layers as calibrated
            xin_q = _input_value(g, wname, cur, True)
            layer = _Layer(g, wname, nname, xin_q, ref[wname], weight_scale(g.nodes[wname], quant_layers.get(wname)))
            node, nrn = layer.node, layer.neuron
            wq0 = ops.as_tensor(node.weight_q)
            bq0 = ops.as_tensor(node.bias_q) if node.bias_q is not None else torch.zeros(wq0.shape[0], dtype=torch.float64)
            th0, v00 = int(nrn.threshold_q), int(nrn.v_init_q or 0)
            best_eq = layer.equal(wq0, bq0, th0, v00)
            before = float(best_eq.double().mean())
            best = (before, wq0, bq0, th0, v00, "uncalibrated")
            lo, hi = (ops.as_tensor(np.asarray(v)) for v in rules.weight_range(wname, node))
            saved = (node.weight_q, node.bias_q, node.bias, nrn.threshold_q, nrn.v_init_q)
            tlo, thi = rules.threshold_range(nrn)
            for gain in (rules.gains if thresholds else (1.0,)):
                th_g = int(round(th0 * gain))
                thetas = [th_g] + ([th_g + d for d in rules.threshold_search] if thresholds else [])
                for th in [t for t in thetas if tlo <= t <= thi]:
                    v0 = int(round(nrn.v_init * th / nrn.threshold))
                    for ada in ([True, False] if adaptive else [False]):
                        wq, off = layer.propose(th, v0, lo, hi, ada, rules.per_neuron_bias, gain)
                        bq = off if bias else torch.round(bq0 * th / th0)
                        eq = layer.equal(wq, bq, th, v0)
                        if not significant_gain(eq, best_eq):
                            continue
                        score = float(eq.double().mean())
                        _set(g, wname, nname, wq, bq, th, v0)
                        if rules.accept(g, wname, nname) is None:
                            best_eq = eq
                            best = (score, wq, bq, th, v0, f"weight scale x{gain:g}, θ_q {th}, "
                                    f"{'adaptive' if ada else 'nearest'} rounding")
            node.weight_q, node.bias_q, node.bias, nrn.threshold_q, nrn.v_init_q = saved
            score, wq, bq, th, v0, how = best
            if how != "uncalibrated":
                _set(g, wname, nname, wq, bq, th, v0)
            results.append(LayerResult(wname, nname, before, score, [how],
                                       f"{time.perf_counter() - t0:.2f} s"))
    return g, results
