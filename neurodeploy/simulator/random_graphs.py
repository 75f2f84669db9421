"""Random IR graphs for tests and benchmarks (conv chains, residual Adds, depthwise convs, sum pools,
mixed-sign weights, half-even/half-up neurons, several spike budgets)."""

from __future__ import annotations

import numpy as np

from .. import ir


def _nrn(rng, D=None, rounding=None, threshold=None):
    D = int(rng.choice([1, 2, 4, 8])) if D is None else D
    rounding = rng.choice(["half_up", "half_even"]) if rounding is None else rounding
    th = float(rng.choice([1.0, 0.5, 2.0, 0.75])) if threshold is None else threshold
    return ir.IFNeuron(threshold=th, v_init=th / 2, max_spikes=D, rounding=str(rounding))


def random_conv_graph(seed: int = 0, *, channels: int = 4, size: int = 8, D: int | None = None,
                      residual: bool = True, depthwise: bool = True, pool: bool = True,
                      integer_weights: bool = False, head: bool = True) -> ir.Graph:
    """Input -> conv -> IF -> [depthwise conv + residual Add] -> IF -> sumpool -> conv -> IF -> flatten
    -> linear -> IF -> Output. With ``integer_weights`` weights are multiples of 1/4 so that many
    currents hit exact ties (to exercise half-even rounding)."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.6):
        a = rng.normal(0, scale, shape)
        return np.round(a * 4) / 4 if integer_weights else a

    C = channels
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(1, size, size)))
    g.add("c1", ir.Conv2d(weight=w(C, 1, 3, 3, scale=1.0), bias=w(C, scale=0.3), padding=1), "x")
    g.add("n1", _nrn(rng, D), "c1")
    last = "n1"
    if depthwise or residual:
        g.add("c2", ir.Conv2d(weight=w(C, C, 1, 1), bias=w(C, scale=0.2)), last)
        pre = "c2"
        if depthwise:
            g.add("dw", ir.Conv2d(weight=w(C, 1, 3, 3), bias=None, padding=1, groups=C), last)
            g.add("add", ir.Add(), ("c2", "dw"))
            pre = "add"
        if residual:
            g.add("n2a", _nrn(rng, D), pre)
            g.add("c3", ir.Conv2d(weight=w(C, C, 3, 3, scale=0.4), bias=w(C, scale=0.2), padding=1), "n2a")
            g.add("add2", ir.Add(), (pre, "c3"))  # membrane shortcut: pre-activation feeds two neuron layers
            pre = "add2"
        g.add("n2", _nrn(rng, D), pre)
        last = "n2"
    if pool:
        g.add("pool", ir.SumPool2d(kernel=2), last)
        last = "pool"
    g.add("c4", ir.Conv2d(weight=w(2 * C, C, 3, 3, scale=0.5), bias=w(2 * C, scale=0.2), stride=1), last)
    g.add("n4", _nrn(rng, D), "c4")
    ir.infer_shapes(g)
    if head:
        g.add("flat", ir.Flatten(), "n4")
        ir.infer_shapes(g)
        F = g.nodes["flat"].shape[0]
        g.add("fc", ir.Linear(weight=w(10, F, scale=0.3), bias=w(10, scale=0.1)), "flat")
        g.add("n5", _nrn(rng, D), "fc")
        g.add("out", ir.Output(), "n5")
    else:
        g.add("out", ir.Output(), "n4")
    ir.infer_shapes(g)
    return g


def random_input(graph: ir.Graph, n: int, seed: int = 0, scale: float = 1.0, integer: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    shape = tuple(graph.nodes[graph.input_names()[0]].input_shape)
    x = rng.normal(0, scale, (n,) + shape)
    return np.round(x * 4) / 4 if integer else x
