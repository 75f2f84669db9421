"""Small canonical IR graphs (random weights) used by the Loihi tests and benchmark."""

from __future__ import annotations

import numpy as np

from ... import ir


def digits_net(seed: int = 0, D: int = 4) -> ir.Graph:
    """1×8×8 input, 3 conv layers (D=4), global sum-pool, linear head with IF readout."""
    rng = np.random.default_rng(seed)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(1, 8, 8)))
    g.add("conv1", ir.Conv2d(weight=rng.normal(0, 0.6, (4, 1, 3, 3)),
                             bias=rng.normal(0.2, 0.2, 4), padding=1), "input")
    g.add("if1", ir.IFNeuron(threshold=1.0, max_spikes=D), "conv1")
    g.add("conv2", ir.Conv2d(weight=rng.normal(0, 0.3, (6, 4, 3, 3)),
                             bias=rng.normal(0.2, 0.2, 6), padding=1), "if1")
    g.add("if2", ir.IFNeuron(threshold=1.0, max_spikes=D), "conv2")
    g.add("conv3", ir.Conv2d(weight=rng.normal(0, 0.25, (8, 6, 3, 3)),
                             bias=rng.normal(0.2, 0.2, 8), stride=2, padding=1), "if2")
    g.add("if3", ir.IFNeuron(threshold=1.0, max_spikes=D), "conv3")
    g.add("gpool", ir.SumPool2d(kernel=4), "if3")
    g.add("flat", ir.Flatten(), "gpool")
    g.add("fc", ir.Linear(weight=rng.normal(0, 0.1, (10, 8)), bias=rng.normal(0, 0.1, 10)), "flat")
    g.add("if4", ir.IFNeuron(threshold=1.0, max_spikes=D), "fc")
    g.add("output", ir.Output(), "if4")
    return ir.infer_shapes(g)


def strided_net(seed: int = 1) -> ir.Graph:
    """2×9×9 input, conv (padding 1, stride 2), conv (padding 2, stride 2, groups 2),
    a 2×2 sum-pool lowered to a fixed conv, then a dense head (flatten + 2 linear layers)."""
    rng = np.random.default_rng(seed)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(2, 9, 9)))
    g.add("conv1", ir.Conv2d(weight=rng.normal(0, 0.5, (6, 2, 3, 3)), bias=rng.normal(0.1, 0.2, 6),
                             stride=2, padding=1), "input")
    g.add("if1", ir.IFNeuron(threshold=1.0, max_spikes=4), "conv1")
    g.add("conv2", ir.Conv2d(weight=rng.normal(0, 0.4, (8, 3, 3, 3)), bias=rng.normal(0.1, 0.2, 8),
                             stride=2, padding=2, groups=2), "if1")
    g.add("if2", ir.IFNeuron(threshold=1.0, max_spikes=3), "conv2")
    g.add("pool", ir.SumPool2d(kernel=2), "if2")
    g.add("conv3", ir.Conv2d(weight=rng.normal(0, 0.3, (5, 8, 1, 1)), bias=rng.normal(0.1, 0.2, 5)),
          "pool")
    g.add("if3", ir.IFNeuron(threshold=2.0, v_init=1.0, max_spikes=4), "conv3")
    g.add("flat", ir.Flatten(), "if3")
    g.add("fc1", ir.Linear(weight=rng.normal(0, 0.3, (12, 20)), bias=rng.normal(0.1, 0.1, 12)), "flat")
    g.add("if4", ir.IFNeuron(threshold=1.0, max_spikes=4), "fc1")
    g.add("fc2", ir.Linear(weight=rng.normal(0, 0.4, (5, 12)), bias=rng.normal(0.6, 0.2, 5)), "if4")
    g.add("if5", ir.IFNeuron(threshold=1.0, max_spikes=4), "fc2")
    g.add("output", ir.Output(), "if5")
    return ir.infer_shapes(g)


def hand_quantized_dense(layers, n_in: int, message_bits: int = 16) -> ir.Graph:
    """An already-quantised chain of dense IF layers with given integer parameters; spike-count
    (integer) input. ``layers``: dicts with ``w`` (int [out, in]), ``theta``, optional ``v_init``,
    ``bias``, ``D`` (4), ``rounding`` ('half_up')."""
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(n_in,), is_spikes=True, scale_q=1))
    prev = "input"
    for i, l in enumerate(layers, 1):
        w = np.asarray(l["w"], dtype=np.int64)
        b = None if l.get("bias") is None else np.asarray(l["bias"], dtype=np.int64)
        g.add(f"fc{i}", ir.Linear(weight=w.astype(float), weight_q=w, bias_q=b), prev)
        g.add(f"if{i}", ir.IFNeuron(threshold=float(l["theta"]), max_spikes=l.get("D", 4),
                                    rounding=l.get("rounding", "half_up"),
                                    threshold_q=int(l["theta"]), v_init_q=int(l.get("v_init", 0))),
              f"fc{i}")
        prev = f"if{i}"
    g.add("output", ir.Output(), prev)
    g.metadata["quantization"] = {"target": "loihi", "input_message_bits": message_bits}
    return ir.infer_shapes(g)


def half_even_net(seed: int = 0) -> ir.Graph:
    """Two dense layers with θ_q = 4, v_init_q = 2 and small integer weights: many exact ties."""
    rng = np.random.default_rng(seed)
    return hand_quantized_dense([
        {"w": rng.integers(-3, 4, (12, 10)), "theta": 4, "v_init": 2, "D": 4, "rounding": "half_even"},
        {"w": rng.integers(-2, 4, (6, 12)), "theta": 4, "v_init": 2, "bias": rng.integers(-2, 3, 6),
         "D": 5, "rounding": "half_even"},
    ], n_in=10)
