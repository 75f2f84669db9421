"""Compiler passes: each one alone, canonicalize, and fixed-point quantisation."""

import numpy as np
import pytest
import torch

from neurodeploy import ir, ops
from neurodeploy.errors import HostOpError, NeurodeployError
from neurodeploy.passes import (CANONICAL_TYPES, canonicalize, fold_avgpool, fold_batchnorm, fold_norms, fold_scales,
                                quantize_fixed_point, scale_domains)
from neurodeploy.simulator.random_graphs import random_conv_graph, random_input

RNG = np.random.default_rng(0)


def _bn(c, rng):
    return ir.BatchNorm(mean=rng.normal(size=c), var=rng.uniform(0.5, 2, c), weight=rng.normal(size=c),
                        bias=rng.normal(size=c), eps=1e-5)


def _values_equal(g1, g2, x, names, atol=1e-9):
    a, b = ops.evaluate(g1, x, quantized=False), ops.evaluate(g2, x, quantized=False)
    for n in names:
        np.testing.assert_allclose(a[n].numpy(), b[n].numpy(), atol=atol, rtol=1e-9, err_msg=n)


def _conv_bn_graph(rng, kind="conv2d"):
    g = ir.Graph()
    if kind == "conv2d":
        g.add("x", ir.Input(input_shape=(2, 6, 6)))
        g.add("c", ir.Conv2d(weight=rng.normal(size=(3, 2, 3, 3)), bias=rng.normal(size=3), padding=1), "x")
    elif kind == "conv1d":
        g.add("x", ir.Input(input_shape=(2, 7)))
        g.add("c", ir.Conv1d(weight=rng.normal(size=(3, 2, 3)), bias=None, padding=1), "x")
    else:
        g.add("x", ir.Input(input_shape=(5,)))
        g.add("c", ir.Linear(weight=rng.normal(size=(3, 5)), bias=rng.normal(size=3)), "x")
    g.add("bn", _bn(3, rng), "c")
    g.add("out", ir.Output(), "bn")
    return ir.infer_shapes(g)


@pytest.mark.parametrize("kind", ["conv2d", "conv1d", "linear"])
def test_fold_batchnorm_matches(kind):
    rng = np.random.default_rng(1)
    g = _conv_bn_graph(rng, kind)
    f = fold_batchnorm(g)
    assert "bn" in g.nodes and "bn" not in f.nodes  # returns a copy
    x = rng.normal(size=(4,) + g.nodes["x"].input_shape)
    np.testing.assert_allclose(ops.evaluate(g, x)["out"].numpy(), ops.evaluate(f, x)["out"].numpy(), atol=1e-10)


def test_fold_batchnorm_errors_name_layer():
    rng = np.random.default_rng(2)
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(3, 4, 4)))
    g.add("bn", _bn(3, rng).__class__(**{**ir.node_fields(_bn(3, rng)), "source": "model.bn0"}), "x")
    g.add("out", ir.Output(), "bn")
    with pytest.raises(NeurodeployError) as e:
        fold_batchnorm(g)
    assert e.value.layer == "model.bn0" and e.value.fix
    # weight layer with a second consumer
    g = _conv_bn_graph(rng)
    g.add("out2", ir.Output(), "c")
    with pytest.raises(NeurodeployError, match="other nodes"):
        fold_batchnorm(g)


def test_fold_avgpool():
    rng = np.random.default_rng(3)
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(2, 6, 6)))
    g.add("p", ir.AvgPool2d(kernel=3, stride=2, padding=1), "x")
    g.add("out", ir.Output(), "p")
    ir.infer_shapes(g)
    f = fold_avgpool(g)
    assert type(f.nodes["p"]) is ir.SumPool2d
    scales = f.of_type(ir.Scale)
    assert len(scales) == 1 and f.nodes[scales[0]].scale == pytest.approx(1 / 9)
    x = rng.normal(size=(2, 2, 6, 6))
    ir.infer_shapes(f)
    np.testing.assert_allclose(ops.evaluate(g, x)["out"].numpy(), ops.evaluate(f, x)["out"].numpy(), atol=1e-12)


def _nrn(**kw):
    return ir.IFNeuron(**{"threshold": 1.0, "v_init": 0.5, "max_spikes": 4, **kw})


def test_fold_scales_forward_backward_and_into_neuron():
    rng = np.random.default_rng(4)
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(2, 8, 8)))
    g.add("c1", ir.Conv2d(weight=rng.normal(size=(4, 2, 3, 3)), bias=rng.normal(size=4), padding=1), "x")
    g.add("n1", _nrn(), "c1")
    g.add("ap", ir.AvgPool2d(kernel=2), "n1")                      # -> forward into c2 (through flatten? no: conv)
    g.add("c2", ir.Conv2d(weight=rng.normal(size=(4, 4, 1, 1)), bias=rng.normal(size=4)), "ap")
    g.add("sc", ir.Scale(scale=rng.uniform(0.5, 2, 4)), "c2")     # per-channel, sole consumer -> backward into c2
    g.add("n2", _nrn(), "sc")
    g.add("c3", ir.Conv2d(weight=rng.normal(size=(4, 4, 3, 3)), bias=None, padding=1), "n2")
    g.add("add", ir.Add(), ("c3", "sc"))
    g.add("mean", ir.Scale(scale=0.25), "add")                     # before a neuron after a residual Add
    g.add("n3", _nrn(threshold=0.5, v_init=0.25), "mean")
    g.add("flat", ir.Flatten(), "n3")
    g.add("s2", ir.Scale(scale=0.5), "flat")                        # forward through Flatten into Linear
    g.add("fc", ir.Linear(weight=rng.normal(size=(3, 64)), bias=rng.normal(size=3)), "s2")
    g.add("n4", _nrn(), "fc")
    g.add("out", ir.Output(), "n4")
    ir.infer_shapes(g)
    f = fold_scales(fold_avgpool(g))
    assert not f.of_type(ir.Scale, ir.AvgPool2d)
    assert f.nodes["n3"].threshold == pytest.approx(2.0) and f.nodes["n3"].v_init == pytest.approx(1.0)
    x = rng.normal(size=(8, 2, 8, 8)) * 2
    a, b = ops.evaluate(g, x), ops.evaluate(ir.infer_shapes(f), x)
    for n in ("n1", "n2", "n3", "n4"):
        # identical up to float rounding at near-ties
        assert (a[n] != b[n]).float().mean() < 0.01, n


def test_fold_scales_error():
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(4,)))
    g.add("s", ir.Scale(scale=np.array([1.0, 2.0, 3.0, 4.0]), source="model.scale"), "x")
    g.add("n", _nrn(), "s")
    g.add("out", ir.Output(), "n")
    with pytest.raises(NeurodeployError) as e:
        fold_scales(g)
    assert e.value.layer == "model.scale"


def test_fold_norms_into_weights_and_output():
    rng = np.random.default_rng(5)
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(6,)))
    g.add("l1", ir.Linear(weight=rng.normal(size=(8, 6)) * 2, bias=rng.normal(size=8)), "x")
    g.add("n1", _nrn(norm=4.0), "l1")
    g.add("l2", ir.Linear(weight=rng.normal(size=(5, 8)) * 4, bias=rng.normal(size=5)), "n1")
    g.add("n2", _nrn(norm=4.0), "l2")
    g.add("out", ir.Output(), "n2")
    ir.infer_shapes(g)
    f = fold_norms(g)
    assert all(f.nodes[n].norm == 1 for n in f.neurons())
    assert f.metadata["output_scales"]["out"] == pytest.approx(0.25)
    assert f.metadata["neuron_norms"] == {"n1": 4.0, "n2": 4.0}
    x = rng.normal(size=(32, 6))
    a, b = ops.evaluate(g, x), ops.evaluate(f, x)
    for n in ("n1", "n2"):
        assert torch.equal(a[n], b[n]) or (a[n] != b[n]).float().mean() < 0.01
    np.testing.assert_allclose(a["out"].numpy(), b["out"].numpy() * 0.25)


def test_fold_norms_error_through_add():
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(4,)))
    g.add("l1", ir.Linear(weight=np.eye(4), bias=None), "x")
    g.add("n1", _nrn(norm=4.0, source="blk.act"), "l1")
    g.add("l2", ir.Linear(weight=np.eye(4), bias=None), "n1")
    g.add("add", ir.Add(), ("n1", "l2"))
    g.add("out", ir.Output(), "add")
    with pytest.raises(NeurodeployError) as e:
        fold_norms(g)
    assert e.value.layer == "blk.act"


def test_canonicalize_types_and_semantics():
    rng = np.random.default_rng(6)
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(1, 8, 8)))
    g.add("c1", ir.Conv2d(weight=rng.normal(size=(4, 1, 3, 3)), bias=None, padding=1), "x")
    g.add("bn1", _bn(4, rng), "c1")
    g.add("n1", _nrn(norm=4.0), "bn1")
    g.add("ap", ir.AvgPool2d(kernel=2), "n1")
    g.add("c2", ir.Conv2d(weight=rng.normal(size=(4, 4, 3, 3)), bias=rng.normal(size=4)), "ap")
    g.add("n2", _nrn(norm=4.0), "c2")
    g.add("flat", ir.Flatten(), "n2")
    g.add("fc", ir.Linear(weight=rng.normal(size=(3, 16)), bias=None), "flat")
    g.add("out", ir.Output(), "fc")
    c = canonicalize(g)
    assert all(isinstance(n, CANONICAL_TYPES) and not isinstance(n, ir.AvgPool2d) for n in c.nodes.values())
    x = rng.normal(size=(16, 1, 8, 8)) * 2
    a, b = ops.evaluate(g, x), ops.evaluate(c, x)
    for n in ("n1", "n2"):
        assert (a[n] != b[n]).float().mean() < 0.01
    np.testing.assert_allclose(a["out"].numpy(), b["out"].numpy(), atol=1e-9)
    g.add("attn", ir.HostOp(op="q@k.T", reason="spike x spike", source="blk.attn"), "out")
    with pytest.raises(HostOpError):
        canonicalize(g)


def test_scale_domains_union_residual():
    g = random_conv_graph(0)
    dom, members = scale_domains(g)
    assert dom["c2"] == dom["dw"] == dom["add"] == dom["c3"] == dom["add2"]
    assert dom["c1"] != dom["c2"] and dom["c4"] != dom["fc"]
    assert dom["n4"] != dom["c4"]  # neuron output (counts) is its own domain


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantize_counts_equal_float(seed):
    g = canonicalize(random_conv_graph(seed))
    x = random_input(g, 24, seed)
    q = quantize_fixed_point(g, calibration=x)
    meta = q.metadata["quantization"]
    assert meta["target"] == "sim" and meta["max_abs_int"] < 2 ** 52
    for grp in meta["groups"]:
        assert grp["max_abs_int"] < 2 ** 52
    # one scale per group: every weight layer and neuron of a group uses its frac bits
    add_grp = next(grp for grp in meta["groups"] if "c3" in grp["weight_layers"])
    assert set(add_grp["weight_layers"]) == {"c2", "dw", "c3"} and set(add_grp["neurons"]) == {"n2a", "n2"}
    for n in ("n2a", "n2"):  # both neurons use the group's scale 2**F
        assert q.nodes[n].threshold_q == int(round(q.nodes[n].threshold * 2.0 ** add_grp["frac_bits"]))
    for n in q.of_type(*ir.WEIGHT_NODES):
        assert q.nodes[n].weight_q.dtype == np.int64
    a, b = ops.evaluate(g, x), ops.evaluate(q, x)
    for n in g.neurons():
        assert torch.equal(a[n], b[n]), n
    assert g.metadata.get("quantization") is None  # input graph untouched


def test_quantize_exact_ties_half_even_and_dyadic_input():
    # integer-ish weights and inputs: many exact ties; the quantised program keeps them exact
    g = canonicalize(random_conv_graph(3, integer_weights=True))
    x = random_input(g, 24, 3, integer=True)
    q = quantize_fixed_point(g, calibration=x)
    assert q.metadata["quantization"]["input_frac_bits"] == 2  # multiples of 1/4 -> 2 bits, exact
    a, b = ops.evaluate(g, x), ops.evaluate(q, x)
    for n in g.neurons():
        assert torch.equal(a[n], b[n]), n


def test_quantize_requires_canonical_and_options():
    g = random_conv_graph(0)
    g.nodes["n1"].norm = 2.0
    with pytest.raises(NeurodeployError):
        quantize_fixed_point(g)
    q = quantize_fixed_point(canonicalize(random_conv_graph(0)), input_frac_bits=12, input_range=4.0,
                             accumulator_bits=24)
    m = q.metadata["quantization"]
    assert m["input_frac_bits"] == 12 and q.nodes["x"].scale_q == 2 ** 12 and m["max_abs_int"] < 2 ** 24
