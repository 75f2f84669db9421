"""Speck simulator: hand-checked event rules, the shared engine, and sinabs' time-binned layers."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from neurodeploy import ops
from neurodeploy.targets import get_target
from neurodeploy.targets.speck import examples, simulate as sim
from neurodeploy.targets.speck.quantize import SpeckQuantizationWarning, quantize


def hand(weights, thresholds, v_init, D=1000, **qopts):
    """A chain of Linear layers whose quantised values are exactly the given integers (scale 1)."""
    g = examples.chain(weights, in_shape=(np.asarray(weights[0]).shape[1],), thresholds=thresholds,
                       v_init=v_init, D=D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        return quantize(g, scales={f"fc{i}": 1.0 for i in range(len(weights))}, bias_bits=16, **qopts)


def counts(qg, x, layer, **kw):
    return sim.simulate_events(qg, np.asarray([x], dtype=float), **kw).counts[layer][0].tolist()


def test_one_spike_per_input_event():
    qg = hand([[[5]]], [2], [0])  # w = 5 > θ = 2
    assert counts(qg, [2], "if0") == [2]  # v: 5 -> 3 (stays above θ, silent), 8 -> 6
    assert counts(qg, [2], "if0", rule="multi") == [5]  # 5//2 = 2, then 6//2 = 3
    assert ops.evaluate(qg, torch.tensor([[2.0]]), quantized=True)["if0"].tolist() == [[5]]


def test_depth_first_fires_before_the_negative_input_arrives():
    qg = hand([[[2, 0], [0, 2]], [[2, -2]]], [2, 2], [0, 0])
    # events: feature 0 then feature 1. Depth first: n0 fires, layer 2 fires at once (+2 >= θ),
    # then n1's -2 arrives too late. The closed form nets 2 - 2 = 0.
    assert counts(qg, [1, 1], "if1") == [1]
    assert ops.evaluate(qg, torch.tensor([[1.0, 1.0]]), quantized=True)["if1"].tolist() == [[0]]
    assert counts(qg, [1, 1], "if1", order="breadth", rule="multi") == [0]  # layer barrier: exact


def test_saturation_at_threshold_low():
    qg = hand([[[-50, 35]]], [20], [0], low_threshold=-10.0)
    assert qg.nodes["if0"].low_threshold_q == -10
    assert counts(qg, [1, 1], "if0") == [1]  # -50 -> floor -10, +35 -> 25 >= 20
    assert counts(qg, [1, 1], "if0", saturate=False) == [0]  # -15


def test_saturation_at_16_bits():
    qg = hand([[[127]]], [32767], [32700])
    assert counts(qg, [259], "if0") == [1]  # 32827 clips to 32767 on the first event
    assert counts(qg, [259], "if0", saturate=False) == [2]  # floor((32700 + 259*127) / 32767)


def test_synops_count_fanout_per_event():
    g = examples.conv_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        qg = quantize(g)
    x = examples.random_counts(g, 3)
    a = sim.simulate_events(qg, x)
    # a Linear layer of f outputs does f synaptic operations per input event
    assert np.array_equal(a.synops["fc"], 10 * a.counts["if2"].reshape(3, -1).sum(1).numpy())
    assert np.array_equal(a.input_events, x.reshape(3, -1).sum(1))


def _sinabs_model(qg, B):
    import sinabs.layers as sl
    from sinabs.activation import MembraneSubtract, MultiSpike

    def iaf(neuron, shape):
        layer = sl.IAFSqueeze(batch_size=B, spike_threshold=float(neuron.threshold_q), spike_fn=MultiSpike,
                              reset_fn=MembraneSubtract(), min_v_mem=float(neuron.low_threshold_q))
        layer.init_state_with_shape((B,) + tuple(shape))
        layer.v_mem.data.fill_(float(neuron.v_init_q))
        return layer

    def conv(name, **kw):
        n = qg.nodes[name]
        c = nn.Conv2d(n.weight_q.shape[1], n.weight_q.shape[0], n.weight_q.shape[2], **kw)
        c.weight.data = torch.tensor(n.weight_q, dtype=torch.float32)
        c.bias.data = torch.tensor(n.bias_q, dtype=torch.float32)
        return c

    fc = nn.Linear(*qg.nodes["fc"].weight_q.shape[::-1])
    fc.weight.data = torch.tensor(qg.nodes["fc"].weight_q, dtype=torch.float32)
    fc.bias.data = torch.tensor(qg.nodes["fc"].bias_q, dtype=torch.float32)
    N = qg.nodes
    return [conv("conv1", padding=1), iaf(N["if1"], N["if1"].shape), sl.SumPool2d(2),
            conv("conv2", stride=2, padding=1), iaf(N["if2"], N["if2"].shape), nn.Flatten(), fc,
            iaf(N["if3"], N["if3"].shape)]


def test_time_binned_mode_equals_sinabs_iaf():
    g = examples.conv_net(weight_scale=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        qg = quantize(g, low_threshold=-2.0)  # a real floor, so that min_v_mem matters
    assert qg.nodes["if1"].low_threshold_q > -32768
    B, T = 3, 5
    x = np.random.default_rng(1).integers(0, 3, size=(B, T, 2, 16, 16)).astype(float)
    ours = get_target("speck").simulate(qg, x, mode="binned")
    layers = _sinabs_model(qg, B)
    h = torch.tensor(x.reshape(B * T, 2, 16, 16), dtype=torch.float32)
    got = {}
    with torch.no_grad():
        for i, layer in enumerate(layers):
            h = layer(h)
            if i in (1, 4, 7):
                got[{1: "if1", 4: "if2", 7: "if3"}[i]] = h
    for n, s in got.items():
        mine = ours.per_bin[n].reshape((B * T,) + tuple(s.shape[1:]))
        assert torch.equal(mine.to(torch.float32), s), n
        assert s.sum() > 0
    # with one bin, no floor and no budget the binned mode is the closed form
    g2 = examples.conv_net(D=2 ** 15)  # the largest budget allowed: no neuron reaches it (asserted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        q2 = quantize(g2)
    x1 = examples.random_counts(g2, 2)
    one = sim.simulate_binned(q2, x1[:, None])
    ref = ops.evaluate(q2, torch.as_tensor(x1), quantized=True)
    for n in q2.neurons():
        assert torch.equal(one.counts[n], ref[n])
        assert int(ref[n].max()) < 2 ** 15


def test_spread_counts():
    r = torch.tensor([[0.0, 1.0, 3.0, 7.0]])
    s = sim.spread_counts(r, 4)
    assert s.shape == (1, 4, 4) and torch.equal(s.sum(1), r)
    assert s[0, :, 2].tolist() == [1, 1, 1, 0] and s[0, :, 3].tolist() == [1, 1, 1, 4]
