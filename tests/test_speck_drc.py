"""Speck design rules: each rule passes on a legal graph and fails (one message, all at once)."""

import numpy as np
import pytest

from neurodeploy import ir
from neurodeploy.errors import DesignRuleError
from neurodeploy.targets import get_target
from neurodeploy.targets.speck import drc, examples


def net(in_shape=(2, 8, 8), convs=((4, 3, 1, 1),), pools=None, linear=None, is_spikes=True):
    """Input -> [conv(f, k, stride, pad) -> IF (-> SumPool)]* (-> Flatten -> Linear -> IF) -> Output."""
    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=in_shape, is_spikes=is_spikes))
    prev, c = "input", in_shape[0]
    for i, (f, k, s, p) in enumerate(convs):
        kh, kw = (k, k) if isinstance(k, int) else k
        g.add(f"conv{i}", ir.Conv2d(weight=rng.normal(0, 0.3, (f, c, kh, kw)), stride=s, padding=p), prev)
        g.add(f"if{i}", ir.IFNeuron(), f"conv{i}")
        prev, c = f"if{i}", f
        if pools and pools[i]:
            for j, pk in enumerate(pools[i] if isinstance(pools[i], tuple) else (pools[i],)):
                g.add(f"pool{i}_{j}", ir.SumPool2d(kernel=pk), prev)
                prev = f"pool{i}_{j}"
    if linear:
        g.add("flat", ir.Flatten(), prev)
        ir.infer_shapes(g)
        g.add("fc", ir.Linear(weight=rng.normal(0, 0.1, (linear, int(np.prod(g.nodes["flat"].shape))))), "flat")
        g.add("iffc", ir.IFNeuron(), "fc")
        prev = "iffc"
    g.add("output", ir.Output(), prev)
    ir.infer_shapes(g)
    return g


def rules(g, **kw):
    return [v.rule for v in drc.run_drc(g, **kw).violations]


def test_legal_graphs_pass():
    assert drc.check(examples.conv_net()) == []
    assert drc.check(net(in_shape=(2, 128, 128), convs=((4, 3, 2, 1),))) == []  # 64x64 output: at the limit
    assert drc.check(net(convs=((4, 16, 1, 7),))) == []  # kernel 16, padding 7
    assert drc.check(net(convs=((4, 3, 8, 1),))) == []  # stride 8
    assert drc.check(net(convs=((4, 3, 1, 1), (4, 3, 1, 1)), pools=(4, None))) == []  # pool 4
    assert drc.check(net(convs=((4, 3, 1, 1),), pools=((2, 2),))) == []  # 2 then 2 = 4
    assert drc.check(net(convs=((4, 3, 2, 1),), linear=10)) == []  # Linear on a 4x4 map


def test_input_size():
    assert "input size" in rules(net(in_shape=(2, 130, 130), convs=((2, 3, 4, 1),)))


def test_output_feature_map():
    r = drc.run_drc(net(in_shape=(2, 100, 100), convs=((2, 3, 1, 1),)))
    v = [v for v in r.violations if v.rule == "output feature map"][0]
    assert v.layer == "conv0" and v.actual == "100x100" and "64x64" in v.limit and "stride" in v.fix


def test_channels():
    assert "output channels" in rules(net(in_shape=(2, 2, 2), convs=((1030, 1, 1, 0),)))
    assert "input channels" in rules(net(in_shape=(1100, 2, 2), convs=((2, 1, 1, 0),)))


def test_kernel_rules():
    assert "kernel shape" in rules(net(convs=((4, (3, 5), 1, 1),)))
    assert "kernel size" in rules(net(in_shape=(2, 20, 20), convs=((4, 17, 1, 0),)))


def test_stride_and_padding():
    assert "stride" in rules(net(convs=((4, 3, 3, 1),)))
    assert "padding" in rules(net(in_shape=(2, 4, 4), convs=((4, 3, 8, 8),)))


def test_pooling():
    assert "sum-pooling size" in rules(net(convs=((4, 3, 1, 1), (4, 1, 1, 0)), pools=((2, 4), None)))  # 8
    g = net(convs=((4, 3, 1, 1),))
    g.insert_after("if0", "p", ir.SumPool2d(kernel=2, stride=1))
    ir.infer_shapes(g)
    assert "sum-pooling shape" in rules(g)


def test_max_and_avg_pool():
    g = net(convs=((4, 3, 1, 1),))
    g.insert_after("if0", "mp", ir.HostOp(op="max_pool2d", reason="max"))
    assert "pooling type" in rules(g)
    g = net(convs=((4, 3, 1, 1),))
    g.insert_after("if0", "ap", ir.AvgPool2d(kernel=2))
    ir.infer_shapes(g)
    assert "pooling type" in rules(g)


def test_fan_out():
    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(2, 4, 4), is_spikes=True))
    g.add("c0", ir.Conv2d(weight=rng.normal(size=(2, 2, 1, 1))), "input")
    g.add("i0", ir.IFNeuron(), "c0")
    for k in range(3):
        g.add(f"c{k + 1}", ir.Conv2d(weight=rng.normal(size=(2, 2, 1, 1))), "i0")
        g.add(f"i{k + 1}", ir.IFNeuron(), f"c{k + 1}")
    g.add("sum", ir.Add(), ["i1", "i2", "i3"])
    g.add("out", ir.Output(), "sum")
    ir.infer_shapes(g)
    v = [v for v in drc.run_drc(g).violations if v.rule.startswith("destinations")]
    assert len(v) == 1 and v[0].layer == "c0" and v[0].actual.startswith("3")
    # two destinations + a merge of spikes is legal
    g2 = ir.Graph()
    for n, node in g.nodes.items():
        if n not in ("c3", "i3", "sum", "out"):
            g2.add(n, node, [a for a, b in g.edges if b == n])
    g2.add("sum", ir.Add(), ["i1", "i2"])
    g2.add("out", ir.Output(), "sum")
    ir.infer_shapes(g2)
    assert drc.check(g2) == []


def test_weight_must_be_followed_by_spiking_layer():
    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(2, 4, 4), is_spikes=True))
    g.add("c0", ir.Conv2d(weight=rng.normal(size=(2, 2, 1, 1))), "input")
    g.add("c1", ir.Conv2d(weight=rng.normal(size=(2, 2, 1, 1))), "c0")
    g.add("i1", ir.IFNeuron(), "c1")
    g.add("out", ir.Output(), "i1")
    ir.infer_shapes(g)
    assert "weight layer must be followed by a spiking layer" in rules(g)


def test_preactivation_add_is_refused():
    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(2, 4, 4), is_spikes=True))
    g.add("c0", ir.Conv2d(weight=rng.normal(size=(2, 2, 1, 1))), "input")
    g.add("c1", ir.Conv2d(weight=rng.normal(size=(2, 2, 1, 1))), "input")
    g.add("sum", ir.Add(), ["c0", "c1"])
    g.add("i", ir.IFNeuron(), "sum")
    g.add("out", ir.Output(), "i")
    ir.infer_shapes(g)
    r = drc.run_drc(g).violations
    assert sorted(v.rule for v in r) == ["sum of tensors", "sum of tensors"]  # one per pre-activation input
    assert {v.layer for v in r} == {"sum"} and "own IF neuron" in r[0].fix


def test_final_weight_layer_without_neuron_points_to_the_host():
    rng = np.random.default_rng(0)
    g = examples.chain([rng.normal(size=(4, 4))], in_shape=(4,))
    g.add("head", ir.Linear(weight=rng.normal(size=(3, 4))), "if0")
    g.edges = [(a, b) for a, b in g.edges if (a, b) != ("if0", "output")] + [("head", "output")]
    ir.infer_shapes(g)
    v = [v for v in drc.run_drc(g).violations if v.layer == "head"][0]
    assert "host" in v.fix


def test_layer_count():
    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(4,), is_spikes=True))
    prev = "input"
    for i in range(10):
        g.add(f"fc{i}", ir.Linear(weight=rng.normal(size=(4, 4))), prev)
        g.add(f"if{i}", ir.IFNeuron(), f"fc{i}")
        prev = f"if{i}"
    g.add("out", ir.Output(), prev)
    ir.infer_shapes(g)
    assert "number of layers (cores)" in rules(g)
    assert drc.check(examples.chain([rng.normal(size=(4, 4))] * 9, in_shape=(4,))) == []


def test_linear_is_a_conv_over_its_whole_input():
    r = drc.run_drc(net(convs=((4, 3, 2, 1),), linear=10))
    fc = r.net.layers["fc"]
    assert fc.in_shape == (4, 4, 4) and fc.kernel == (4, 4) and fc.out_shape == (10, 1, 1)
    assert "Linear input must be square (kernel = input H×W)" in rules(net(in_shape=(2, 8, 12), convs=((4, 3, 2, 1),),
                                                                          linear=10))
    assert "kernel size" in rules(net(in_shape=(2, 40, 40), convs=((2, 3, 2, 1),), linear=10))  # 20x20 kernel
    assert drc.check(examples.chain([np.ones((4, 2000))], in_shape=(2000,))) != []  # 2000 input channels


def test_all_violations_at_once_and_messages():
    g = net(in_shape=(2, 130, 130), convs=((4, (3, 5), 3, 9),))
    with pytest.raises(DesignRuleError) as e:
        drc.run_drc(g).raise_if_failed()
    msgs = e.value.violations
    assert len(msgs) >= 4
    for m in msgs:
        assert "conv0" in m or "input" in m
        assert "Speck allows" in m and "fix:" in m
    assert get_target("speck").check(g) == msgs


def test_real_valued_input_warns():
    r = drc.run_drc(net(is_spikes=False))
    assert r.ok and any("rate coded" in w for w in r.warnings)
