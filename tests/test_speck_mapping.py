"""Speck core mapping: memory formulas (hand-computed), per-core limits, matching, overrides."""


import numpy as np
import pytest

from neurodeploy import ir
from neurodeploy.errors import DesignRuleError
from neurodeploy.targets import get_target
from neurodeploy.targets.speck import drc, examples, mapping as mp
from neurodeploy.targets.speck.layers import SpeckLayer


def layer(c, k, f, h, w, name="l"):
    return SpeckLayer(name, name, "n", "conv", (c, 2 * h, 2 * w), (f, h, w), (k, k), (1, 1), (0, 0))


def sinabs_formula(c, k, f, h, w):  # the text of sinabs' DynapcnnLayer.memory_summary
    return (c * pow(2, np.ceil(np.log2(k * k)) + np.ceil(np.log2(f))),
            f * pow(2, np.ceil(np.log2(h)) + np.ceil(np.log2(w))))


def test_memory_formulas_hand_computed():
    # c=2, k=3 (9 -> 2^4), f=4 (2^2): kernel 2*2^6 = 128; neuron 4 * 2^(4+4) = 1024 for 16x16
    assert mp.layer_memory(layer(2, 3, 4, 16, 16)) == {"kernel": 128, "neuron": 1024, "bias": 4}
    # c=3, k=5 (25 -> 2^5), f=6 (2^3): 3*2^8 = 768; neuron 6 * 2^(4+3) = 768 for 10x7
    assert mp.layer_memory(layer(3, 5, 6, 10, 7)) == {"kernel": 768, "neuron": 768, "bias": 6}
    # k=1, f=1: no rounding up at all
    assert mp.layer_memory(layer(5, 1, 1, 1, 1)) == {"kernel": 5, "neuron": 1, "bias": 1}
    # Linear on (8, 4, 4) -> 10: a 4x4 kernel: 8 * 2^(4+4) = 2048; neuron 10 * 1
    r = drc.run_drc(examples.conv_net())
    assert mp.layer_memory(r.net.layers["fc"]) == {"kernel": 2048, "neuron": 10, "bias": 10}
    rng = np.random.default_rng(0)
    for _ in range(200):
        c, k, f, h, w = (int(rng.integers(1, 300)), int(rng.integers(1, 17)), int(rng.integers(1, 1025)),
                         int(rng.integers(1, 65)), int(rng.integers(1, 65)))
        m = mp.layer_memory(layer(c, k, f, h, w))
        assert (m["kernel"], m["neuron"]) == sinabs_formula(c, k, f, h, w)


def test_core_limits():
    assert mp.KERNEL_MEMORY == [16384] * 3 + [32768] * 2 + [65536] * 2 + [16384] * 2
    assert mp.NEURON_MEMORY == [65536] * 3 + [32768] * 2 + [16384] * 2 + [16384] * 2
    big_kernel = layer(64, 3, 64, 8, 8)  # kernel 64*2^(4+6) = 65536 -> cores 5, 6 only
    assert mp.candidate_cores(mp.layer_memory(big_kernel)) == [5, 6]
    big_neurons = layer(2, 3, 16, 64, 64)  # neuron 16*2^12 = 65536 -> cores 0-2
    assert mp.candidate_cores(mp.layer_memory(big_neurons)) == [0, 1, 2]


def test_bipartite_matching_needs_augmenting():
    layers = {"a": layer(16, 3, 32, 8, 8, "a"),  # kernel 16*2^9 = 8192: fits everywhere
              "b": layer(64, 3, 64, 8, 8, "b"),  # 65536: only 5, 6
              "c": layer(64, 3, 64, 8, 8, "c")}
    m = mp.map_layers(layers)
    assert sorted([m.layer_to_core["b"], m.layer_to_core["c"]]) == [5, 6]
    layers["d"] = layer(64, 3, 64, 8, 8, "d")
    with pytest.raises(DesignRuleError, match="no assignment exists"):
        mp.map_layers(layers)


def test_override_validated():
    t = get_target("speck")
    g = examples.conv_net()
    assert t.map(g, core_map={"conv1": 5})["layer_to_core"]["conv1"] == 5
    with pytest.raises(DesignRuleError) as e:
        t.map(g, core_map={"conv1": 12, "nope": 1, "conv2": 3, "fc": 3})
    msg = str(e.value)
    assert "core 0..8" in msg and "unknown layer" in msg and "also given to 'conv2'" in msg
    layers = {"b": layer(64, 3, 64, 8, 8, "b")}
    with pytest.raises(DesignRuleError, match="use one of the cores it fits: \\[5, 6\\]"):
        mp.map_layers(layers, core_map={"b": 0})


def test_layer_too_big_for_any_core():
    v = drc.run_drc(ir.infer_shapes(_big()))
    assert any(x.rule == "core memory" for x in v.violations)


def _big():
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(128, 8, 8), is_spikes=True))
    g.add("c", ir.Conv2d(weight=np.ones((128, 128, 3, 3))), "input")  # 128*2^(4+7) = 262144 words
    g.add("i", ir.IFNeuron(), "c")
    g.add("o", ir.Output(), "i")
    return g


def test_reports():
    t = get_target("speck")
    g = examples.conv_net()
    rep = t.map(g)["report"]
    assert "128/16384" in rep and "(free)" in rep and rep.count("\n") > 10
    r = drc.run_drc(g)
    m = mp.map_layers(r.net.layers)
    text, rates = mp.bandwidth_report(r.net.layers, m, {"conv1": 1000.0, "conv2": 10.0}, synops_limit_per_core=1e4)
    assert rates["conv1"] == 1000.0 * 4 * 9  # C_out * k^2 / stride^2 (same-size output)
    assert rates["conv2"] == 10.0 * 8 * 9 / 4
    assert "OVER" in text and mp.synops_per_event(r.net.layers["fc"]) == 10  # one position per event
