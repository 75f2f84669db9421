"""Speck bias memory is counted only for a layer that has a bias (sinabs' DynapcnnLayer.memory_summary:
``"bias": 0 if self.conv_layer.bias is None else len(self.conv_layer.bias)``)."""

import numpy as np

from neurodeploy import ir
from neurodeploy.targets.speck import drc, examples
from neurodeploy.targets.speck.layers import extract
from neurodeploy.targets.speck.mapping import CoreMapping, layer_memory, memory_report


def wide_layer(bias: bool, features: int = 1100) -> ir.Graph:
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(2, 4, 4), is_spikes=True))
    g.add("conv", ir.Conv2d(weight=np.ones((features, 2, 1, 1)), bias=np.zeros(features) if bias else None), "input")
    g.add("if", ir.IFNeuron(threshold=1.0, max_spikes=4, v_init=0.5), "conv")
    g.add("output", ir.Output(), "if")
    ir.infer_shapes(g)
    return g


def test_no_bias_memory_without_a_bias():
    for bias, expected in ((False, 0), (True, 8)):
        net = extract(examples.conv_net(channels=(4, 8), bias=bias))
        assert layer_memory(net.layers["conv2"])["bias"] == expected
        assert layer_memory(net.layers["conv2"])["kernel"] == 4 * 2 ** (4 + 3)  # unchanged: c·2^(⌈log2 9⌉+⌈log2 8⌉)


def test_no_spurious_core_memory_violation_for_a_wide_layer_without_bias():
    without = drc.check(wide_layer(bias=False))
    assert any("output channels" in v for v in without)  # 1100 > 1024 is still reported, once
    assert not any("core memory" in v for v in without)
    with_bias = drc.check(wide_layer(bias=True))
    assert any("core memory" in v and "bias 1100" in v for v in with_bias)  # 1100 bias words > 1024


def test_memory_report_shows_zero_bias_words():
    g = examples.conv_net(bias=False)
    rep = drc.run_drc(g)
    m = CoreMapping(rep.layer_to_core, {n: layer_memory(l) for n, l in rep.net.layers.items()})
    text = memory_report(rep.net.layers, m)
    assert "0/1024" in text.split("conv1")[1].splitlines()[0]
