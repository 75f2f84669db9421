"""ONNX import (converters/onnx_import.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models_for_tests as M
from neurodeploy import ops
from neurodeploy.converters import capture_counts, from_onnx, from_torch
from neurodeploy.errors import HostOpError, LoadError, NeurodeployError, UnsupportedOpError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _export(model, shape, path, **kw):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn((1,) + shape),), str(path), dynamo=False, **kw)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"torch.onnx.export unavailable here: {e}")


@pytest.mark.parametrize("name, shape", [("metaspikeformer", (2, 16, 16)), ("smallmix", (1, 12, 12))])
def test_torch_onnx_export_matches_model(tmp_path, name, shape):
    model = M.build_model(name, **({"depth": 1} if name == "metaspikeformer" else {}))
    p = tmp_path / f"{name}.onnx"
    _export(model, shape, p, training=torch.onnx.TrainingMode.PRESERVE)  # keep BatchNormalization
    g = from_onnx(p)
    assert g.metadata["source_format"] == "onnx"
    assert any(g.nodes[n].kind == "BatchNorm" for n in g.nodes)
    x = torch.randn((5,) + shape, dtype=torch.float64) * 3
    vals = ops.evaluate(g, x)
    with torch.no_grad():
        y = model.double()(x)
    torch.testing.assert_close(vals[g.output_names()[0]], y, rtol=1e-9, atol=1e-9)
    # the same neurons (same names) and the same spike counts as the PyTorch front end
    gt = from_torch(model, shape)
    ref = capture_counts(model, gt, x)
    assert set(g.neurons()) == set(gt.neurons())
    for n in g.neurons():
        assert g.nodes[n].rounding == gt.nodes[n].rounding and g.nodes[n].norm == gt.nodes[n].norm
        np.testing.assert_array_equal(vals[n].numpy(), ref[n], err_msg=n)


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _const(name, arr, dtype=np.float32):
    return helper.make_node("Constant", [], [name], name=f"/{name}/Constant",
                            value=numpy_helper.from_array(np.asarray(arr, dtype=dtype), name + "_v"))


def _handmade(rng, tail="gemm"):
    """Conv → BN → Relu → Clip(max 3) → Add .5 → Floor → Mul .25 → [residual 1x1 conv + Add] →
    AveragePool 2 → Reshape(Shape-subgraph) → Gemm → Clip(0,4) → Round → Div 4 → MatMul + Add bias."""
    W1 = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    b1 = rng.normal(size=3).astype(np.float32)
    bn = [rng.uniform(0.5, 1.5, 3), rng.normal(size=3), rng.normal(size=3) * 0.1, rng.uniform(0.5, 1.5, 3)]
    W2 = rng.normal(size=(3, 3, 1, 1)).astype(np.float32)
    Wg = rng.normal(size=(5, 27)).astype(np.float32)
    bg = rng.normal(size=5).astype(np.float32) + 1
    Wm = rng.normal(size=(5, 4)).astype(np.float32)
    bm = rng.normal(size=4).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], name="/stem/conv/Conv", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn"], name="/stem/bn/Bn",
                         epsilon=1e-5),
        helper.make_node("Relu", ["bn"], ["r"], name="/act1/Relu"),
        _const("three", 3.0), _const("half", 0.5), _const("quarter", 0.25),
        helper.make_node("Clip", ["r", "", "three"], ["cl"], name="/act1/Clip"),
        helper.make_node("Add", ["cl", "half"], ["ad"], name="/act1/Add"),
        helper.make_node("Floor", ["ad"], ["fl"], name="/act1/Floor"),
        helper.make_node("Mul", ["fl", "quarter"], ["a1"], name="/act1/Mul"),
        helper.make_node("Conv", ["a1", "W2"], ["c2"], name="/res/conv/Conv", kernel_shape=[1, 1]),
        helper.make_node("Add", ["c2", "bn"], ["s"], name="/res/Add"),
        helper.make_node("Identity", ["s"], ["s2"], name="/res/Identity"),
        helper.make_node("Dropout", ["s2"], ["s3"], name="/res/Dropout"),
        helper.make_node("AveragePool", ["s3"], ["p"], name="/pool/AveragePool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Shape", ["p"], ["shp"], name="/Shape"),
        _const("zero_i", [0], np.int64), _const("minus1", [-1], np.int64),
        helper.make_node("Gather", ["shp", "zero_i"], ["bdim"], name="/Gather", axis=0),
        helper.make_node("Concat", ["bdim", "minus1"], ["newshape"], name="/Concat", axis=0),
        helper.make_node("Reshape", ["p", "newshape"], ["flat"], name="/Reshape"),
        helper.make_node("Gemm", ["flat", "Wg", "bg"], ["gm"], name="/fc/Gemm", transB=1),
        _const("zero", 0.0), _const("four", 4.0),
        helper.make_node("Clip", ["gm", "zero", "four"], ["c4"], name="/act2/Clip"),
        helper.make_node("Round", ["c4"], ["rd"], name="/act2/Round"),
        helper.make_node("Div", ["rd", "four"], ["a2"], name="/act2/Div"),
    ]
    if tail == "gemm":
        nodes += [helper.make_node("MatMul", ["a2", "Wm"], ["mm"], name="/head/MatMul"),
                  helper.make_node("Add", ["mm", "bm"], ["y"], name="/head/Add")]
    elif tail == "attention":
        nodes += [helper.make_node("MatMul", ["a2", "a2T"], ["y"], name="/attn/MatMul"),
                  helper.make_node("Transpose", ["a2"], ["a2T"], name="/attn/Transpose", perm=[1, 0])]
        nodes[-1], nodes[-2] = nodes[-2], nodes[-1]
    out_dim = 4 if tail == "gemm" else 1
    graph = helper.make_graph(
        nodes, "handmade",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_dim])],
        initializer=[_init("W1", W1), _init("b1", b1), _init("g", bn[0]), _init("beta", bn[1]),
                     _init("mean", bn[2]), _init("var", bn[3]), _init("W2", W2), _init("Wg", Wg),
                     _init("bg", bg), _init("Wm", Wm), _init("bm", bm)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    params = dict(W1=W1, b1=b1, bn=bn, W2=W2, Wg=Wg, bg=bg, Wm=Wm, bm=bm)
    return model, {k: (torch.as_tensor(np.asarray(v, dtype=np.float32), dtype=torch.float64)
                       if k != "bn" else [torch.as_tensor(np.asarray(t, dtype=np.float32), dtype=torch.float64)
                                          for t in v]) for k, v in params.items()}


def _reference(P, x):
    c1 = F.conv2d(x, P["W1"], P["b1"], padding=1)
    g, beta, mean, var = P["bn"]
    bn = (c1 - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5) * g.view(1, -1, 1, 1) \
        + beta.view(1, -1, 1, 1)
    a1 = torch.floor(torch.clamp(torch.relu(bn), max=3.0) + 0.5) * 0.25
    s = F.conv2d(a1, P["W2"]) + bn
    p = F.avg_pool2d(s, 2)
    gm = F.linear(p.flatten(1), P["Wg"], P["bg"])
    n2 = torch.round(torch.clamp(gm, 0, 4))
    return {"act1": torch.floor(torch.clamp(torch.relu(bn), max=3.0) + 0.5), "act2": n2,
            "y": (n2 / 4) @ P["Wm"] + P["bm"]}


def test_handmade_graph(tmp_path):
    rng = np.random.default_rng(0)
    model, P = _handmade(rng)
    onnx.checker.check_model(model)
    path = tmp_path / "hand.onnx"
    onnx.save(model, path)
    g = from_onnx(path)
    kinds = {n: g.nodes[n].kind for n in g.nodes}
    assert kinds["stem.conv"] == "Conv2d" and kinds["stem.bn"] == "BatchNorm"
    assert kinds["act1"] == "IFNeuron" and kinds["act2"] == "IFNeuron"
    assert kinds["res.add"] == "Add" and kinds["pool"] == "AvgPool2d"
    a1, a2 = g.nodes["act1"], g.nodes["act2"]
    assert (a1.rounding, a1.max_spikes, a1.norm, a1.v_init) == ("half_up", 3, 4.0, 0.5)
    assert (a2.rounding, a2.max_spikes, a2.norm) == ("half_even", 4, 4.0)
    assert kinds["head"] == "Linear" and np.allclose(g.nodes["head"].bias, P["bm"].numpy())  # Add folded
    x = torch.as_tensor(rng.normal(size=(7, 2, 6, 6)) * 2, dtype=torch.float64)
    vals = ops.evaluate(g, x)
    ref = _reference(P, x)
    torch.testing.assert_close(vals["act1"], ref["act1"], rtol=0, atol=0)
    torch.testing.assert_close(vals["act2"], ref["act2"], rtol=0, atol=0)
    torch.testing.assert_close(vals[g.output_names()[0]], ref["y"], rtol=1e-12, atol=1e-12)
    assert ref["act2"].sum() > 0 and ref["act1"].sum() > 0


def test_attention_and_until(tmp_path):
    rng = np.random.default_rng(1)
    model, _ = _handmade(rng, tail="attention")
    with pytest.raises((HostOpError, UnsupportedOpError)):
        from_onnx(model)
    g = from_onnx(model, until="act2")
    assert g.inputs_of(g.output_names()[0]) == ["act2"]
    with pytest.raises(NeurodeployError):
        from_onnx(model, until="nope")


def _tiny(op_nodes, out_shape, inits=()):
    graph = helper.make_graph(op_nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_pools_and_rejections():
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    g = from_onnx(_tiny([helper.make_node("GlobalAveragePool", ["x"], ["y"], name="/gap/GlobalAveragePool")],
                        [1, 2, 1, 1]))
    torch.testing.assert_close(ops.evaluate(g, x)[g.output_names()[0]], x.mean(dim=(2, 3), keepdim=True))
    g = from_onnx(_tiny([helper.make_node("ReduceMean", ["x"], ["y"], name="/rm/ReduceMean", axes=[2, 3],
                                          keepdims=0)], [1, 2]))
    torch.testing.assert_close(ops.evaluate(g, x)[g.output_names()[0]], x.mean(dim=(2, 3)))
    assert any(g.nodes[n].kind == "AvgPool2d" and g.nodes[n].kernel == (4, 4) for n in g.nodes)
    with pytest.raises(UnsupportedOpError) as e:
        from_onnx(_tiny([helper.make_node("MaxPool", ["x"], ["y"], name="/features/pool/MaxPool",
                                          kernel_shape=[2, 2], strides=[2, 2])], [1, 2, 2, 2]))
    assert "max pooling" in str(e.value) and "average" in e.value.fix
    with pytest.raises(UnsupportedOpError) as e:
        from_onnx(_tiny([helper.make_node("Softmax", ["x"], ["y"], name="/sm/Softmax")], [1, 2, 4, 4]))
    assert "Softmax" in str(e.value)


def test_corrupt_onnx(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"\x08\x07\x12\x05hello-not-really")
    with pytest.raises(LoadError) as e:
        from_onnx(p)
    assert str(p) in str(e.value)
