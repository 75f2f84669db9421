"""Small canonical graphs for tests, docs and smoke runs of the Speck backend."""

from __future__ import annotations

import numpy as np

from ... import ir


def conv_net(seed: int = 0, *, in_shape=(2, 16, 16), channels=(4, 8), n_out: int = 10, D: int = 4,
             is_spikes: bool = True, pool: int = 2, bias: bool = True, weight_scale: float = 0.5) -> ir.Graph:
    """Input -> conv3x3 -> IF -> sumpool -> conv3x3/s2 -> IF -> flatten -> linear -> IF -> Output."""
    rng = np.random.default_rng(seed)
    g = ir.Graph()
    c0, h, w = in_shape
    g.add("input", ir.Input(input_shape=tuple(in_shape), is_spikes=is_spikes))
    g.add("conv1", ir.Conv2d(weight=rng.normal(0, weight_scale, (channels[0], c0, 3, 3)),
                             bias=rng.normal(0, 0.1, channels[0]) if bias else None, padding=1), "input")
    g.add("if1", ir.IFNeuron(threshold=1.0, max_spikes=D, v_init=0.5), "conv1")
    g.add("pool1", ir.SumPool2d(kernel=pool), "if1")
    g.add("conv2", ir.Conv2d(weight=rng.normal(0, weight_scale / 2, (channels[1], channels[0], 3, 3)),
                             bias=rng.normal(0, 0.1, channels[1]) if bias else None, stride=2, padding=1), "pool1")
    g.add("if2", ir.IFNeuron(threshold=1.0, max_spikes=D, v_init=0.5), "conv2")
    g.add("flat", ir.Flatten(start_dim=0), "if2")
    ir.infer_shapes(g)
    nin = int(np.prod(g.nodes["flat"].shape))
    g.add("fc", ir.Linear(weight=rng.normal(0, 1.5 / np.sqrt(nin), (n_out, nin)),
                          bias=rng.normal(0, 0.1, n_out) if bias else None), "flat")
    g.add("if3", ir.IFNeuron(threshold=1.0, max_spikes=D, v_init=0.5), "fc")
    g.add("output", ir.Output(), "if3")
    ir.infer_shapes(g)
    return g


def chain(weights: list, *, in_shape, thresholds=None, D: int = 4, v_init=None, is_spikes=True) -> ir.Graph:
    """A chain of 1x1-input Linear layers (vectors) with given weight matrices."""
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=tuple(in_shape), is_spikes=is_spikes))
    prev = "input"
    for i, w in enumerate(weights):
        w = np.asarray(w, dtype=np.float64)
        th = 1.0 if thresholds is None else thresholds[i]
        vi = th / 2 if v_init is None else v_init[i]
        g.add(f"fc{i}", ir.Linear(weight=w), prev)
        g.add(f"if{i}", ir.IFNeuron(threshold=th, max_spikes=D, v_init=vi), f"fc{i}")
        prev = f"if{i}"
    g.add("output", ir.Output(), prev)
    ir.infer_shapes(g)
    return g


def random_counts(graph: ir.Graph, n: int, seed: int = 0, high: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = graph.nodes[graph.input_names()[0]].input_shape
    return rng.integers(0, high + 1, size=(n,) + tuple(shape)).astype(np.float64)
