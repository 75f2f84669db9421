"""The torch.export tracer (converters/torch_export.py) and reference capture (converters/capture.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import models_for_tests as M
from neurodeploy import ir, ops
from neurodeploy.converters import capture_counts, capture_outputs, from_torch
from neurodeploy.errors import HostOpError, NeurodeployError, UnsupportedOpError

CASES = {
    "metaspikeformer": ((2, 16, 16), {}),
    "smallmix": ((1, 12, 12), {}),
    "simclr": ((2, 16, 16), {"until": "encoder"}),
    "scriptable": ((1, 8, 8), {}),
}


@pytest.fixture(scope="module")
def converted():
    out = {}
    for name, (shape, kw) in CASES.items():
        model = M.build_model(name)
        out[name] = (model, shape, from_torch(model, shape, **kw))
    return out


def _x(shape, n=6, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n,) + tuple(shape), generator=g, dtype=torch.float64) * scale


@pytest.mark.parametrize("name", list(CASES))
def test_counts_and_output_match_the_model(converted, name):
    model, shape, g = converted[name]
    x = _x(shape)
    vals = ops.evaluate(g, x, quantized=False)
    ref = capture_counts(model, g, x)
    assert set(ref) == set(g.neurons()) and ref
    for n in g.neurons():
        assert ref[n].dtype == np.int64
        np.testing.assert_array_equal(vals[n].numpy().astype(np.int64), ref[n], err_msg=n)
    outs = capture_outputs(model, g, x)
    for n in g.neurons():  # counts / norm are the model's own activation values
        torch.testing.assert_close(vals[n] / g.nodes[n].norm, outs[n].to(torch.float64), rtol=0, atol=0)
    if "until" not in CASES[name][1]:
        with torch.no_grad():
            y = model.double()(x)
        torch.testing.assert_close(vals[g.output_names()[0]], y, rtol=1e-10, atol=1e-10)
    # some activity, or the test would be vacuous
    assert sum(int(v.sum()) for v in ref.values()) > 0


def test_structure_of_metaformer(converted):
    _, _, g = converted["metaspikeformer"]
    kinds = {n: g.nodes[n].kind for n in g.nodes}
    assert kinds["encoder.stem"] == "Conv2d"
    assert kinds["encoder.stem_bn"] == "BatchNorm"  # not folded here
    assert kinds["encoder.blocks.0.conv.dwconv"] == "Conv2d"
    assert g.nodes["encoder.blocks.0.conv.dwconv"].groups == 16
    assert kinds["encoder.blocks.0.mlp.fc1"] == "Conv1d"
    assert kinds["encoder.blocks.0.add"] == "Add"
    assert len(g.inputs_of("encoder.blocks.0.add")) == 2
    assert g.nodes["encoder.down"].stride == (2, 2)
    # x.flatten(2).mean(2) → global AvgPool2d over (H, W), then a flatten
    pools = [n for n in g.nodes if g.nodes[n].kind == "AvgPool2d"]
    assert len(pools) == 1 and g.nodes[pools[0]].kernel == (4, 4)
    assert kinds["head"] == "Linear"
    inp = g.nodes["input"]
    assert inp.input_shape == (2, 16, 16) and inp.is_spikes is False
    assert len(g.output_names()) == 1
    assert len(set(g.nodes)) == len(g.nodes)


def test_neuron_attributes(converted):
    _, _, g = converted["metaspikeformer"]
    n = g.nodes["encoder.blocks.0.conv.spike1"]
    assert (n.threshold, n.max_spikes, n.rounding, n.v_init, n.norm) == (1.0, 4, "half_even", 0.5, 4.0)
    assert n.source == "encoder.blocks.0.conv.spike1"
    assert n.meta["aten"] and n.meta["hook"] is True
    # Multispike: multispike.apply(4*x)/4 → Scale(4) then half-up neuron with norm 4
    m = g.nodes["encoder.blocks.0.mlp.spike1"]
    assert (m.rounding, m.v_init, m.norm) == ("half_up", 0.5, 4.0)
    (pre,) = g.inputs_of("encoder.blocks.0.mlp.spike1")
    assert g.nodes[pre].kind == "Scale" and g.nodes[pre].scale == 4.0
    h = g.nodes["head_spike"]
    assert h.norm == 1.0

    _, _, g2 = converted["smallmix"]
    f = g2.nodes["act2"]  # relu → clamp_max(3) → floor → * 0.5
    assert (f.rounding, f.v_init, f.max_spikes, f.norm) == ("floor", 0.0, 3, 2.0)
    assert g2.nodes["pool"].kind == "SumPool2d"  # avg_pool × k²
    assert g2.nodes["bn_fc"].kind == "BatchNorm"  # BatchNorm1d after Linear
    assert g2.nodes["gap"].kind == "AvgPool2d" and g2.nodes["gap"].kernel == (3, 3)
    inline = [n for n in g2.neurons() if g2.nodes[n].meta["hook"] is False]
    assert inline  # hardtanh module + an inline round: captured via the ATen graph


class _Tie(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.act(x)


@pytest.mark.parametrize("act, rule", [(M.MultiSpike(4, norm=1), "half_even"),
                                       (M.Multispike(), "half_up"),
                                       (M.FloorSpike(3), "floor")])
def test_rounding_rules_exact_on_ties(act, rule):
    model = _Tie(act).eval()
    g = from_torch(model, (12,))
    (n,) = g.neurons()
    assert g.nodes[n].rounding == rule
    x = torch.tensor([[-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.5, 3.5, 4.5, 5.0, 0.125]], dtype=torch.float64)
    vals = ops.evaluate(g, x)
    ref = capture_counts(model, g, x)
    np.testing.assert_array_equal(vals[n].numpy(), ref[n])


def test_until_drops_projection_head(converted):
    _, _, g = converted["simclr"]
    assert not any(n.startswith("projector") for n in g.nodes)
    (out,) = g.output_names()
    assert g.inputs_of(out) == ["encoder.down_bn"]
    assert g.metadata["until"] == "encoder"
    # without until the head's plain ReLU is reported, naming its module
    with pytest.raises(UnsupportedOpError) as e:
        from_torch(M.build_model("simclr"), (2, 16, 16))
    assert e.value.layer == "projector.2"


def test_until_ir_node_name_and_bad_name():
    model = M.build_model("simclr")
    g = from_torch(model, (2, 16, 16), until="encoder.blocks.0.add")
    (out,) = g.output_names()
    assert g.inputs_of(out) == ["encoder.blocks.0.add"]
    assert "encoder.down" not in g.nodes
    g2 = from_torch(model, (2, 16, 16), until="encoder.blocks.0.mlp.spike1")
    assert g2.inputs_of(g2.output_names()[0]) == ["encoder.blocks.0.mlp.spike1"]
    with pytest.raises(NeurodeployError) as e:
        from_torch(model, (2, 16, 16), until="encoder.nope")
    assert "encoder.blocks.0" in str(e.value) and "encoder.nope" in str(e.value)


def test_maxpool_rejected_with_module_path():
    with pytest.raises(UnsupportedOpError) as e:
        from_torch(M.WithMaxPool().eval(), (1, 6, 6))
    assert e.value.layer == "features.0"
    assert "max pool" in str(e.value).lower()
    assert "AvgPool2d" in e.value.fix and "stride-2" in e.value.fix


def test_attention_becomes_host_ops():
    # issue 9: activation × activation products are host ops in the IR, not an error
    model = M.AttnNet().eval()
    g = from_torch(model, (1, 4, 4))
    host = {n: node for n, node in g.nodes.items() if isinstance(node, ir.HostOp)}
    assert sorted(node.op for node in host.values() if node.op != "permute") == ["matmul", "matmul"]
    assert all(node.source.startswith("attn") for node in host.values())
    g = from_torch(model, (1, 4, 4), until="patch_embed")
    assert g.neurons() == ["patch_embed.2"]


def test_clamp_without_rounding_needs_spike_settings():
    model = M.ClampOnly().eval()
    with pytest.raises(UnsupportedOpError) as e:
        from_torch(model, (1, 6, 6))
    assert e.value.layer == "act" and "spike" in e.value.fix
    g = from_torch(model, (1, 6, 6), spike={"act": {"rounding": "half_up", "norm": 2}})
    n = g.nodes["act"]
    assert (n.max_spikes, n.rounding, n.norm, n.v_init) == (2, "half_up", 2.0, 0.5)
    assert n.meta["user_settings"] is True
    # a global override of D
    g = from_torch(M.build_model("scriptable"), (1, 8, 8), spike={"D": 8})
    assert {g.nodes[n].max_spikes for n in g.neurons()} == {8}


def test_bad_spike_settings():
    with pytest.raises(NeurodeployError):
        from_torch(M.ClampOnly().eval(), (1, 6, 6), spike={"act": {"rounding": "stochastic"}})
    with pytest.raises(NeurodeployError):
        from_torch(M.ClampOnly().eval(), (1, 6, 6), spike={"act": {"bogus": 1}})


class _Odd(nn.Module):
    def __init__(self, what):
        super().__init__()
        self.what = what
        self.conv = nn.Conv2d(1, 2, 3)
        self.spike = M.MultiSpike()

    def forward(self, x):
        y = self.spike(self.conv(x))
        if self.what == "softmax":
            return torch.softmax(y.flatten(1), dim=1)
        if self.what == "const_add":
            return self.spike(self.conv(x) + 0.25)
        if self.what == "scalar_after_act":
            return y + 1.0
        if self.what == "mean_hw":
            return y.mean(dim=(2, 3))
        if self.what == "adaptive":
            return nn.functional.adaptive_avg_pool2d(y, 2)
        if self.what == "sub_act":
            return y - y
        raise AssertionError


def test_misc_ops():
    x = _x((1, 6, 6))
    # constant added after a conv folds into its bias
    m = _Odd("const_add").eval()
    g = from_torch(m, (1, 6, 6))
    torch.testing.assert_close(ops.evaluate(g, x)[g.output_names()[0]], m.double()(x))
    for what in ("mean_hw", "adaptive"):
        m = _Odd(what).eval()
        g = from_torch(m, (1, 6, 6))
        assert any(g.nodes[n].kind == "AvgPool2d" for n in g.nodes)
        torch.testing.assert_close(ops.evaluate(g, x)[g.output_names()[0]], m.double()(x))
    with pytest.raises(UnsupportedOpError) as e:
        from_torch(_Odd("softmax").eval(), (1, 6, 6))
    assert "softmax" in str(e.value)
    with pytest.raises(UnsupportedOpError):
        from_torch(_Odd("scalar_after_act").eval(), (1, 6, 6))
    with pytest.raises(UnsupportedOpError):
        from_torch(_Odd("sub_act").eval(), (1, 6, 6))


def test_exported_program_and_torchscript_inputs(tmp_path):
    model = M.build_model("smallmix")
    ep = torch.export.export(model, (torch.randn(2, 1, 12, 12),))
    p = tmp_path / "m.pt2"
    torch.export.save(ep, p)
    ep = torch.export.load(p)
    g = from_torch(ep, (1, 12, 12))
    x = _x((1, 12, 12), n=5)  # not a multiple of the exported batch size (2)
    ref = capture_counts(ep, g, x)
    assert all(v.shape[0] == 5 for v in ref.values())
    vals = ops.evaluate(g, x)
    for n in g.neurons():
        np.testing.assert_array_equal(vals[n].numpy(), ref[n])

    sm = M.build_model("scriptable")
    ts = torch.jit.script(sm)
    g = from_torch(ts, (1, 8, 8))
    x = _x((1, 8, 8), n=3)
    ref = capture_counts(ts, g, x)
    vals = ops.evaluate(g, x)
    assert len(g.neurons()) == 2
    for n in g.neurons():
        np.testing.assert_array_equal(vals[n].numpy(), ref[n])


def test_missing_input_shape_and_wrong_shape():
    with pytest.raises(NeurodeployError) as e:
        from_torch(M.build_model("smallmix"), None)
    assert "--input-shape" in e.value.fix
    with pytest.raises(UnsupportedOpError) as e:
        from_torch(M.build_model("smallmix"), (3, 12, 12))
    assert "--input-shape" in e.value.fix


def test_graph_is_valid_ir(converted):
    for _, _, g in converted.values():
        g.validate()
        for name, node in g.nodes.items():
            assert node.shape is not None
            if isinstance(node, ir.IFNeuron):
                assert node.source


def test_shared_activation_module_and_inplace_round():
    torch.manual_seed(3)
    model = M.SharedAct().eval()
    g = from_torch(model, (1, 6, 6))
    neurons = g.neurons()
    assert len(neurons) == 2 and all(g.nodes[n].source == "spike" for n in neurons)
    assert len(set(neurons)) == 2
    x = _x((1, 6, 6), n=4)
    ref = capture_counts(model, g, x)
    vals = ops.evaluate(g, x)
    for n in neurons:
        np.testing.assert_array_equal(vals[n].numpy(), ref[n])
    torch.testing.assert_close(vals[g.output_names()[0]], model.double()(x))


def test_token_major_linear_becomes_conv1d():
    torch.manual_seed(4)
    model = M.randomize_bn(M.TokenMLP())
    g = from_torch(model, (1, 4, 4))
    assert g.nodes["fc1"].kind == "Conv1d" and g.nodes["fc2"].kind == "Conv1d"
    assert len(g.output_names()) == 2
    x = _x((1, 4, 4), n=4)
    vals = ops.evaluate(g, x)
    ref = capture_counts(model, g, x)
    for n in g.neurons():
        np.testing.assert_array_equal(vals[n].numpy(), ref[n])
    with torch.no_grad():
        logits, y = model.double()(x)
    o1, o2 = g.output_names()
    torch.testing.assert_close(vals[o1], logits)
    torch.testing.assert_close(vals[o2], y)
