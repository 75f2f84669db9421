"""NIR export/import: exact round trips, foreign (sinabs) files, what nir/nirtorch make of ours."""

from __future__ import annotations

import warnings

import nir
import numpy as np
import pytest
import torch

from neurodeploy import ir, ops
from neurodeploy.errors import LoadError, UnsupportedOpError
from neurodeploy.nir_io import from_nir, to_nir, write_nir


def _float_graph(seed: int = 0) -> ir.Graph:
    """Conv -> IF(norm 4) -> SumPool -> three convs (dilated depthwise, bias-free 1x1) -> 3-way Add
    -> IF(half_even) -> AvgPool -> Reshape-as-flatten -> Scale -> Linear (no bias) -> IF -> Output."""
    rng = np.random.default_rng(seed)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(2, 8, 8)))
    g.add("c1", ir.Conv2d(weight=rng.normal(size=(4, 2, 3, 3)), bias=rng.normal(size=4), padding=1,
                          source="stem.conv"), "in")
    g.add("n1", ir.IFNeuron(threshold=0.7, max_spikes=4, norm=4.0, source="stem.act"), "c1")
    g.add("p1", ir.SumPool2d(kernel=2), "n1")
    g.add("c2", ir.Conv2d(weight=rng.normal(size=(4, 4, 3, 3)), padding=1, dilation=1), "p1")
    g.add("c3", ir.Conv2d(weight=rng.normal(size=(4, 1, 3, 3)), bias=rng.normal(size=4), padding=2,
                          dilation=2, groups=4), "p1")
    g.add("c4", ir.Conv2d(weight=rng.normal(size=(4, 4, 1, 1))), "p1")
    g.add("add", ir.Add(), ["c2", "c3", "c4"])
    g.add("n2", ir.IFNeuron(threshold=1.1, max_spikes=8, rounding="half_even", v_init=0.55), "add")
    g.add("ap", ir.AvgPool2d(kernel=2), "n2")
    g.add("fl", ir.Reshape(target_shape=(16,)), "ap")
    g.add("sc", ir.Scale(scale=0.5), "fl")
    g.add("fc", ir.Linear(weight=rng.normal(size=(5, 16))), "sc")
    g.add("n3", ir.IFNeuron(threshold=0.9, max_spikes=2, rounding="floor", v_init=0.0), "fc")
    g.add("out", ir.Output(), "n3")
    g.metadata = {"model": "toy", "D": 4}
    return g


def _conv1d_graph(seed: int = 1) -> ir.Graph:
    rng = np.random.default_rng(seed)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(3, 10)))
    g.add("c", ir.Conv1d(weight=rng.normal(size=(6, 3, 3)), bias=rng.normal(size=6), stride=2, padding=1), "in")
    g.add("s", ir.Scale(scale=rng.uniform(0.5, 2.0, size=6)), "c")
    g.add("n", ir.IFNeuron(threshold=0.8, max_spikes=4), "s")
    g.add("f", ir.Flatten(start_dim=0), "n")
    g.add("fc", ir.Linear(weight=rng.normal(size=(4, 30)), bias=rng.normal(size=4)), "f")
    g.add("out", ir.Output(), "fc")
    return g


def _quantized_graph(seed: int = 2) -> ir.Graph:
    rng = np.random.default_rng(seed)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(1, 6, 6), scale_q=16))
    w1 = rng.integers(-20, 21, size=(3, 1, 3, 3))
    g.add("c1", ir.Conv2d(weight=w1 / 64.0, bias=np.zeros(3), padding=1,
                          weight_q=w1.astype(np.int64), bias_q=rng.integers(-50, 50, size=3)), "in")
    g.add("n1", ir.IFNeuron(threshold=1.0, max_spikes=4, threshold_q=1024, v_init_q=512, state_bits=16,
                            low_threshold_q=-2048), "c1")
    g.add("p", ir.SumPool2d(kernel=2), "n1")
    w2 = rng.integers(-100, 101, size=(2, 3, 3, 3))
    g.add("c2", ir.Conv2d(weight=w2 / 128.0, padding=1, weight_q=w2.astype(np.int64)), "p")
    g.add("c3", ir.Conv2d(weight=w2[:, :, :1, :1] / 128.0, weight_q=w2[:, :, :1, :1].astype(np.int64)), "p")
    g.add("add", ir.Add(), ["c2", "c3"])
    g.add("n2", ir.IFNeuron(threshold=1.0, max_spikes=8, rounding="half_even", threshold_q=128,
                            v_init_q=64), "add")
    g.add("f", ir.Flatten(), "n2")
    w3 = rng.integers(-100, 101, size=(4, 18))
    g.add("fc", ir.Linear(weight=w3 / 128.0, bias=np.ones(4), weight_q=w3.astype(np.int64),
                          bias_q=np.full(4, 7, dtype=np.int64)), "f")
    g.add("out", ir.Output(), "fc")
    g.metadata["quantization"] = {"target": "sim"}
    return g


def _assert_same_eval(g1: ir.Graph, g2: ir.Graph, x: torch.Tensor, quantized=None) -> None:
    a = ops.evaluate(g1, x, quantized)
    b = ops.evaluate(g2, x, quantized)
    for name in g1.nodes:
        assert name in b, name
        assert a[name].dtype == b[name].dtype
        assert torch.equal(a[name], b[name]), name  # bit for bit


@pytest.mark.parametrize("make,shape", [(_float_graph, (2, 8, 8)), (_conv1d_graph, (3, 10))])
def test_float_roundtrip_file_exact(tmp_path, make, shape):
    g = make()
    path = write_nir(g, tmp_path / "m.nir")
    assert path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic, nothing left over
    g2 = from_nir(path)
    x = torch.randn((16,) + shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    _assert_same_eval(g, g2, x)
    assert set(g2.nodes) == set(g.nodes)
    for name, node in g.nodes.items():
        other = g2.nodes[name]
        assert other.kind == node.kind, name  # Add rebuilt, Reshape restored
        if isinstance(node, ir.IFNeuron):
            for f in ("threshold", "max_spikes", "rounding", "v_init", "norm", "reset"):
                assert getattr(other, f) == getattr(node, f)
        assert other.source == node.source
        if isinstance(node, ir.WEIGHT_NODES):
            assert (other.bias is None) == (node.bias is None)
        assert g2.inputs_of(name) == g.inputs_of(name)  # incl. Add input order
    assert g2.metadata == g.metadata


def test_quantized_roundtrip_exact(tmp_path):
    g = _quantized_graph()
    g2 = from_nir(write_nir(g, tmp_path / "q.nir"))
    assert g2.is_quantized and g2.metadata == {"quantization": {"target": "sim"}}
    x = torch.rand((32, 1, 6, 6), dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    _assert_same_eval(g, g2, x)               # integer arithmetic
    _assert_same_eval(g, g2, x, quantized=False)  # float semantics too
    for name, node in g.nodes.items():
        for f in ("weight_q", "bias_q"):
            if getattr(node, f, None) is not None:
                got = getattr(g2.nodes[name], f)
                assert got.dtype == np.int64 and np.array_equal(got, getattr(node, f))
        if isinstance(node, ir.IFNeuron):
            for f in ("threshold_q", "v_init_q", "low_threshold_q", "state_bits"):
                assert getattr(g2.nodes[name], f) == getattr(node, f)
                assert type(getattr(g2.nodes[name], f)) is type(getattr(node, f))
    assert g2.nodes["in"].scale_q == 16


def test_graph_metadata_survives_loss_of_graph_level_block():
    g = _quantized_graph()
    ng = to_nir(g)
    ng.metadata = {}  # other tools may drop it: the copy on the Input node is used
    assert from_nir(ng).is_quantized


def test_nir_read_type_checks_and_nodes(tmp_path):
    g = _float_graph()
    path = write_nir(g, tmp_path / "m.nir")
    ng = nir.read(path, type_check=True)
    assert isinstance(ng.nodes["c1"], nir.Conv2d)
    assert tuple(ng.nodes["c1"].input_shape) == (8, 8)
    assert isinstance(ng.nodes["fc"], nir.Linear) and isinstance(ng.nodes["in"], nir.Input)
    n1 = ng.nodes["n1"]
    assert isinstance(n1, nir.IF)
    assert np.all(n1.v_reset == 0) and np.all(n1.r == 1) and np.all(n1.v_threshold == 0.7)
    md = n1.metadata
    assert md["reset"] == "subtract" and int(md["max_spikes"]) == 4 and md["rounding"] == "half_up"
    assert float(md["v_init"]) == 0.5 and float(md["norm"]) == 4.0
    # norm visible to other readers as a Scale(1/norm) after the neuron
    assert ("n1", "n1.norm") in ng.edges and np.all(ng.nodes["n1.norm"].scale == 0.25)
    # Add is implicit fan-in
    assert {a for a, b in ng.edges if b == "n2"} == {"c2", "c3", "c4"}
    assert "add" not in ng.nodes
    c3 = ng.nodes["c3"]  # depthwise conv written as its dense block-diagonal equivalent
    assert int(c3.groups) == 1 and c3.weight.shape == (4, 4, 3, 3) and int(c3.metadata["groups"]) == 4
    fl = ng.nodes["fl"]
    assert isinstance(fl, nir.Flatten) and int(fl.start_dim) == 0
    assert tuple(fl.output_type["output"]) == (16,)


def test_unsupported_exports_raise():
    g = _conv1d_graph()
    g.insert_after("c", "bn", ir.BatchNorm(mean=np.zeros(6), var=np.ones(6)))
    with pytest.raises(UnsupportedOpError, match="fold_batchnorm"):
        to_nir(g)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(2, 6)))
    g.add("r", ir.Reshape(target_shape=(6, 2)), "in")
    g.add("out", ir.Output(), "r")
    with pytest.raises(UnsupportedOpError, match="Reshape"):
        to_nir(g)


def _sinabs_net():
    sl = pytest.importorskip("sinabs.layers")
    from sinabs.activation import MembraneSubtract

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1, bias=False),
        sl.IAFSqueeze(batch_size=1, spike_threshold=1.0, reset_fn=MembraneSubtract()),
        sl.SumPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 3),
        sl.IAFSqueeze(batch_size=1, spike_threshold=2.0, reset_fn=MembraneSubtract()),
    )
    net(torch.rand(1, 1, 8, 8))  # sinabs needs a forward pass to know the neuron shapes
    return net


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_import_sinabs_file(tmp_path):
    import sinabs.nir

    net = _sinabs_net()
    ng = sinabs.nir.to_nir(net, torch.rand(1, 1, 8, 8))
    # sinabs leaves Conv2d.input_shape / Flatten.input_type unset, which nir.write rejects
    ng.infer_types()
    nir.write(tmp_path / "sinabs.nir", ng)

    with pytest.warns(UserWarning, match="subtractive reset"):
        g = from_nir(tmp_path / "sinabs.nir", default_max_spikes=6)
    kinds = [g.nodes[n].kind for n in g.topo_order()]
    assert kinds == ["Input", "Conv2d", "IFNeuron", "SumPool2d", "Flatten", "Linear", "IFNeuron", "Output"]
    neurons = [g.nodes[n] for n in g.neurons()]
    assert [n.threshold for n in neurons] == [1.0, 2.0]
    assert all(n.max_spikes == 6 and n.reset == "subtract" and n.v_init == 0.0 for n in neurons)

    # evaluate == the closed form of subtractive-reset IF with the sinabs weights
    x = torch.rand((8, 1, 8, 8), dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 4
    v = ops.evaluate(g, x)
    conv, lin = net[0], net[4]
    c = torch.nn.functional.conv2d(x, conv.weight.detach().double(), None, padding=1)
    n1 = torch.floor(c / 1.0).clamp(0, 6)
    h = torch.nn.functional.avg_pool2d(n1, 2) * 4
    f = torch.nn.functional.linear(h.flatten(1), lin.weight.detach().double(), lin.bias.detach().double())
    n2 = torch.floor(f / 2.0).clamp(0, 6)
    assert torch.equal(v[g.neurons()[0]], n1) and torch.equal(v[g.neurons()[1]], n2)

    # the in-memory sinabs graph (torch tensors, no input_shape) imports too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g_mem = from_nir(sinabs.nir.to_nir(net, torch.rand(1, 1, 8, 8)))
    assert g_mem.nodes[g_mem.neurons()[0]].max_spikes == 1  # the documented default D


def test_leaky_neuron_refused():
    ng = nir.NIRGraph(
        nodes={"in": nir.Input(input_type={"input": np.array([3])}),
               "fc": nir.Affine(weight=np.ones((2, 3)), bias=np.zeros(2)),
               "lif": nir.LIF(tau=np.full(2, 10.0), r=np.ones(2), v_leak=np.zeros(2),
                              v_threshold=np.ones(2)),
               "out": nir.Output(output_type={"output": np.array([2])})},
        edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")])
    with pytest.raises(UnsupportedOpError, match="leaky") as e:
        from_nir(ng)
    assert "fix:" in str(e.value)


def test_foreign_fan_in_becomes_add():
    ng = nir.NIRGraph(
        nodes={"in": nir.Input(input_type={"input": np.array([3])}),
               "a": nir.Affine(weight=np.ones((2, 3)), bias=np.zeros(2)),
               "b": nir.Linear(weight=2 * np.ones((2, 3))),
               "if": nir.IF(r=np.full(2, 2.0), v_threshold=np.full(2, 1.0)),
               "out": nir.Output(output_type={"output": np.array([2])})},
        edges=[("in", "a"), ("in", "b"), ("a", "if"), ("b", "if"), ("if", "out")])
    with pytest.warns(UserWarning, match="default_max_spikes=1"):
        g = from_nir(ng)
    assert g.nodes["if_add"].kind == "Add" and g.inputs_of("if_add") == ["a", "b"]
    assert g.inputs_of("if") == ["if_add"]
    assert g.nodes["if"].threshold == 0.5  # v_threshold / r


def test_corrupt_file_is_load_error(tmp_path):
    p = tmp_path / "bad.nir"
    p.write_bytes(b"not hdf5")
    with pytest.raises(LoadError):
        from_nir(p)


def test_nirtorch_builds_module_from_our_file(tmp_path):
    nirtorch = pytest.importorskip("nirtorch")
    from nirtorch.nir_interpreter import DEFAULT_MAP

    class IFStep(torch.nn.Module):  # nirtorch has no default IF / Scale mapping
        def __init__(self, node):
            super().__init__()
            self.register_buffer("thr", torch.as_tensor(np.asarray(node.v_threshold), dtype=torch.float32))

        def forward(self, x):
            return (x >= self.thr).float()

    class ScaleMod(torch.nn.Module):
        def __init__(self, node):
            super().__init__()
            self.register_buffer("s", torch.as_tensor(np.asarray(node.scale), dtype=torch.float32))

        def forward(self, x):
            return x * self.s

    g = _float_graph()
    ng = nir.read(write_nir(g, tmp_path / "m.nir"))
    node_map = dict(DEFAULT_MAP)
    node_map[nir.IF] = IFStep
    node_map[nir.Scale] = ScaleMod
    module = nirtorch.nir_to_torch(ng, node_map)
    assert isinstance(module, torch.nn.Module)
    out = module(torch.rand(1, 2, 8, 8))
    out = out[0] if isinstance(out, tuple) else out
    # Flatten(start_dim=0) becomes nn.Flatten(0): the batch dim is flattened away (pitfall)
    assert tuple(out.shape) == (5,)
