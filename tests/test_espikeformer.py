"""Issue 9: real E-SpikeFormer code (examples/espikeformer.py, tiny widths) compiles as written:
pooled heads on residual sums, spike-driven attention as exact host ops."""
import json
import os

import numpy as np
import pytest
import torch
from demo_helpers import EX, load_example

import neurodeploy.api as nd
from neurodeploy import ir, ops
from neurodeploy.converters import capture_counts, from_torch
from neurodeploy.passes import canonicalize
from neurodeploy.passes.partition import partition
from neurodeploy.targets import get_target

E = load_example("espikeformer.py", "espikeformer_example")
ARCH = os.path.join(EX, "espikeformer.py") + ":build_model"
SHAPE = (3, E.TINY["img"], E.TINY["img"])


@pytest.fixture(scope="module")
def model():
    return E.build_tiny_model()


@pytest.fixture(scope="module")
def x():
    return E.random_images(4, E.TINY["img"], seed=1)


@pytest.fixture(scope="module")
def graphs(checkpoint):
    prepared = nd.prepare(checkpoint / "esf.pt", arch=ARCH, arch_kwargs=_arch_kwargs())
    return prepared.graph, prepared.canonical


@pytest.fixture(scope="module")
def quantized(graphs, x):
    return get_target("sim").quantize(graphs[1], calibration=x)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model, x):
    d = tmp_path_factory.mktemp("esf")
    torch.save({"model": model.state_dict(), "input_shape": list(SHAPE)}, d / "esf.pt")
    np.savez(d / "data.npz", x=x[:2])  # verify runs several full evaluations: keep it small
    return d


def _arch_kwargs():
    return {k: list(v) if isinstance(v, tuple) else v for k, v in E.TINY.items()}


@pytest.fixture(scope="module")
def compiled(checkpoint):
    out = checkpoint / "out"
    res = nd.compile(checkpoint / "esf.pt", arch=ARCH, arch_kwargs=_arch_kwargs(), target="sim", out_dir=out,
                     data=checkpoint / "data.npz", verify=True)
    return out, res


def test_pooled_head_on_residual_sum_folds_into_the_activation(graphs):
    g, c = graphs
    head = c.nodes["head_spike"]
    n_tokens = (E.TINY["img"] // 16) ** 2
    # mean over tokens (1/N) and the MultiSpike norm of the sum are in the threshold / next weights
    assert head.threshold == pytest.approx(n_tokens)
    assert not any(isinstance(n, ir.Scale) for n in c.nodes.values())
    assert isinstance(c.nodes[c.inputs_of(c.inputs_of("head_spike")[0])[0]], ir.SumPool2d)


def test_attention_products_are_host_ops_with_module_sources(graphs):
    g, c = graphs
    host = [n for n in c.nodes.values() if isinstance(n, ir.HostOp)]
    assert sorted({n.op for n in host}) == ["matmul", "permute"]
    assert sum(n.op == "matmul" for n in host) == 4   # q·kᵀ and ·v in block3.0 and block4.0
    assert {n.source for n in host} == {"block3.0.attn", "block4.0.attn"}
    part = partition(c)
    assert "block3.0.attn.attn_spike" in part.host    # the host applies the attention's activation
    assert {c.nodes[n].source for n in part.to_host} >= {"block3.0.attn.q_spike", "block3.0.attn.k_spike",
                                                         "block3.0.attn.v_spike"}


def test_sim_counts_equal_the_model_layer_by_layer(model, graphs, compiled, x):
    res = compiled[1]
    sync = res.verify["sync"]
    assert res.verify.exactness is None or res.verify.exactness.ok   # program == integer reference
    assert sync.exact and {lr.layer for lr in sync.layers} == set(res.quantized.neurons())
    # the attention activations fire (the comparison is not vacuous)
    ref = capture_counts(model, graphs[0], x)
    assert ref["block3.0.attn.attn_spike"].sum() > 0 and ref["block4.0.attn.attn_spike"].sum() > 0


def test_host_product_equals_torch_on_integer_counts(model, quantized, x):
    vals = ops.evaluate(quantized, x)
    q, k, v = (vals[f"block3.0.attn.{s}_spike"] for s in "qkv")     # integer counts (B, C, H, W)
    heads = E.TINY["num_heads"]
    B, C = q.shape[:2]

    def split(t):  # the model's own head split, on the integer counts
        return t.flatten(2).transpose(-1, -2).reshape(B, -1, heads, C // heads).permute(0, 2, 1, 3)

    want = (split(q) @ split(k).transpose(-2, -1)) @ split(v)
    node = quantized.nodes["block3.0.attn.matmul_1"]
    got = vals["block3.0.attn.matmul_1"] / 2.0 ** node.shift_q
    assert torch.equal(got, want.to(got.dtype))
    assert torch.equal(got, torch.round(got))


def test_compile_sim_end_to_end_with_verify_and_host_profile(compiled):
    out, res = compiled
    assert res.verify.ok()
    assert "streaming" not in res.verify.schedules   # spike trains cannot be multiplied
    host = res.profile.host
    assert host["products"] == 4 and host["macs"] > 0
    assert host["to_host_values"] > 0 and host["from_host_values"] > 0
    assert "host (not in SynOps/energy)" in res.profile.format("table")
    prof = json.loads((out / "profile.json").read_text())
    assert prof["host"]["macs"] == host["macs"]


def test_exported_host_program_reproduces_the_host_part(compiled, x):
    from neurodeploy.host_program import load_host_program
    from neurodeploy.ir_io import load_graph

    out, res = compiled
    g = load_graph(out / "graph.ir.npz")
    desc = json.loads((out / "host_interface.json").read_text())
    vals = ops.evaluate(g, x)
    args = [vals[t["name"]].to(torch.float64) for t in desc["to_host"]]
    got = load_host_program(out / desc["program"])(*args)
    assert len(got) == len(desc["from_host"]) > 0
    for t, v in zip(desc["from_host"], got):
        assert list(v.shape[1:]) == t["shape"]
        assert torch.equal(v, vals[t["name"]].to(torch.float64)), t["name"]
    assert any(t["kind"] == "spike counts" for t in desc["from_host"])


class _MaxHead(E.ESpikeFormer):
    """Not deployable after the stages: a max over tokens."""

    def forward(self, x):
        x = self.forward_features(x)
        return self.head(self.head_spike(x.flatten(2).amax(2)))


class _ScaledResidual(E.ESpikeFormer):
    """A scaling that cannot be folded: it feeds a residual add whose other branch is unscaled."""

    def forward(self, x):
        x = self.forward_features(x)
        x = x * 0.5 + x
        return self.head(self.head_spike(x.flatten(2).mean(2)))


def _tiny(cls):
    kw = dict(E.TINY)
    img = kw.pop("img")
    return E.randomize_bn(cls(width=kw["width"], depths=kw["depths"], num_heads=kw["num_heads"], img=img)).eval()


@pytest.mark.parametrize("cls,where", [(_MaxHead, "amax(2)"), (_ScaledResidual, "x * 0.5 + x")])
def test_refusal_names_the_code_and_proposes_a_working_until(cls, where, x):
    from neurodeploy.errors import NeurodeployError

    model = _tiny(cls)
    with pytest.raises(NeurodeployError) as e:
        nd.canonical_with_cut(from_torch(model, SHAPE))
    err = e.value
    assert "aten." not in err.layer and f"{cls.__name__}.forward" in err.layer and where in err.layer
    assert err.until and f"--until {err.until}" in err.fix
    if cls is _ScaledResidual:
        return  # (the scaling itself: its prefix ends in an output scale)
    # the proposal compiles, and it is past every residual stage (the furthest that works)
    g = from_torch(model, SHAPE, until=err.until)
    q = get_target("sim").quantize(canonicalize(g), calibration=x)
    assert "block4.0.mlp.fc2_spike" in q.neurons()
    assert get_target("sim").simulate(q, x[:2]).counts


def test_inspect_without_canonical_shows_the_raw_graph(checkpoint):
    from click.testing import CliRunner

    from neurodeploy.cli import main

    prepared = nd.prepare(checkpoint / "esf.pt", arch=ARCH, arch_kwargs=_arch_kwargs(), fold=False)
    assert prepared.canonical is None
    kinds = {n.kind for n in prepared.graph.nodes.values()}
    assert {"BatchNorm", "Scale", "AvgPool2d"} <= kinds     # nothing folded
    res = CliRunner().invoke(main, ["inspect", str(checkpoint / "esf.pt"), "--arch", ARCH,
                                    "--arch-kwargs", json.dumps(_arch_kwargs())])
    assert res.exit_code == 0, res.output
    assert "BatchNorm" in res.output and "HostOp" in res.output


def test_design_rule_refusal_proposes_the_furthest_cut_that_passes(graphs):
    from neurodeploy.errors import DesignRuleError
    from neurodeploy.passes.cut import prefix_graph

    c = graphs[1]
    speck = get_target("speck")
    with pytest.raises(DesignRuleError) as e:
        nd._check(speck, c)
    cut = e.value.until
    assert cut and f"--until {cut}" in str(e.value)
    assert speck.check(prefix_graph(c, cut)) == []
    later = c.topo_order()[c.topo_order().index(cut) + 1:]
    assert all(speck.check(prefix_graph(c, n)) for n in later[:5])   # the next ones do not pass


class _SpikeGate(torch.nn.Module):
    """An element-wise product of two spike tensors (a gate), then a conv."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.spike_a, self.spike_b, self.spike_out = E.MultiSpike(), E.MultiSpike(), E.MultiSpike()
        self.out = torch.nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.a.bias.fill_(1.5)
            self.b.bias.fill_(1.5)

    def forward(self, x):
        g = self.spike_a(self.a(x)) * self.spike_b(self.b(x))
        return self.out(self.spike_out(g * 6.0))


def test_elementwise_spike_product_is_an_exact_host_mul():
    torch.manual_seed(0)
    model = _SpikeGate().eval()
    x = E.random_images(3, 8, seed=2)
    g = from_torch(model, (3, 8, 8))
    (mul,) = [n for n, node in g.nodes.items() if isinstance(node, ir.HostOp)]
    assert g.nodes[mul].op == "mul"
    q = get_target("sim").quantize(canonicalize(g), calibration=x)
    counts = get_target("sim").simulate(q, x).counts
    ref = capture_counts(model, g, x)
    for name in q.neurons():
        assert np.array_equal(np.asarray(counts[name]).astype(np.int64), ref[name]), name
    assert ref["spike_out"].sum() > 0


class _EinsumAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = torch.nn.Conv1d(3, 4, 1), torch.nn.Conv1d(3, 4, 1)
        self.q_spike, self.k_spike = E.MultiSpike(), E.MultiSpike()

    def forward(self, x):
        x = x.flatten(2)
        q, k = self.q_spike(self.q(x)), self.k_spike(self.k(x))
        return torch.einsum("bcn,bdn->bcd", q, k)


def test_unsupported_product_is_refused_with_a_working_until():
    from neurodeploy.errors import HostOpError

    model = _EinsumAttention().eval()
    with pytest.raises(HostOpError) as e:
        from_torch(model, (3, 4, 4))
    assert "einsum" in str(e.value) and e.value.until in ("q_spike", "k_spike")
    g = from_torch(model, (3, 4, 4), until=e.value.until)
    assert g.neurons() == [e.value.until]


class _TokenHead(torch.nn.Module):
    """Mean over tokens of a residual sum on (C, N) tokens, then reshapes and a scaling."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.s1, self.s2 = E.MultiSpike(), E.MultiSpike()
        self.fc = torch.nn.Conv1d(8, 8, 1)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        B = x.shape[0]
        x = self.conv(x).reshape(B, 8, -1)
        x = x + self.fc(self.s1(x))
        x = x.mean(-1).reshape(B, 8, 1).flatten(1)
        return self.head(self.s2(x * 2.0))


def test_mean_over_tokens_through_reshapes_folds_exactly():
    torch.manual_seed(0)
    model = _TokenHead().eval()
    x = E.random_images(4, 8, seed=0)
    g = from_torch(model, (3, 8, 8))
    c = canonicalize(g)
    assert c.nodes["s2"].threshold == pytest.approx(64 / 2.0)   # 1/N and * 2 in the threshold
    q = get_target("sim").quantize(c, calibration=x)
    counts, ref = get_target("sim").simulate(q, x).counts, capture_counts(model, g, x)
    for name in q.neurons():
        assert np.array_equal(np.asarray(counts[name]).astype(np.int64), ref[name]), name
    assert ref["s2"].sum() > 0
