"""Loading model files (converters/load.py) and the dispatcher (converters.to_graph)."""

from __future__ import annotations

import argparse
import hashlib
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import models_for_tests as M
from neurodeploy import ir, ops
from neurodeploy.converters import LoadedModel, load_model, to_graph
from neurodeploy.errors import LoadError, NeurodeployError

HERE = Path(__file__).resolve().parent
ARCH = f"{HERE / 'models_for_tests.py'}:build_model"


class Evil:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def smallmix():
    return M.build_model("smallmix")


def test_checkpoint_with_arch_file(tmp_path, smallmix):
    p = tmp_path / "ckpt.pth"
    args = argparse.Namespace(lr=0.1, model="smallmix")
    torch.save({"model": smallmix.state_dict(), "optimizer": {"lr": 0.1}, "epoch": 3, "args": args,
                "input_shape": (1, 12, 12), "probe": {"weight": torch.ones(3, 2)}}, p)
    lm = load_model(p, arch=ARCH, arch_kwargs={"name": "smallmix", "seed": 5})
    assert isinstance(lm, LoadedModel)
    assert lm.format == "checkpoint" and lm.graph is None
    assert lm.sha256 == _sha(p)
    assert lm.extras["epoch"] == 3 and lm.extras["args"].lr == 0.1
    assert tuple(lm.extras["input_shape"]) == (1, 12, 12) and "probe" in lm.extras
    for k, v in smallmix.state_dict().items():
        assert torch.equal(lm.module.state_dict()[k], v)
    assert not lm.module.training
    g = to_graph(lm)  # input shape from the checkpoint
    assert g.nodes["input"].input_shape == (1, 12, 12)
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(ops.evaluate(g, x)[g.output_names()[0]], smallmix.double()(x))
    smallmix.float()


def test_bare_state_dict_with_dotted_arch(tmp_path):
    lin = torch.nn.Linear(4, 3)
    p = tmp_path / "sd.pt"
    torch.save(lin.state_dict(), p)
    lm = load_model(p, arch="torch.nn:Linear", arch_kwargs={"in_features": 4, "out_features": 3})
    assert lm.format == "state_dict"
    assert torch.equal(lm.module.weight, lin.weight)
    # DataParallel 'module.' prefixes are stripped
    torch.save({"model": {f"module.{k}": v for k, v in lin.state_dict().items()}}, p)
    lm = load_model(p, arch="torch.nn:Linear", arch_kwargs={"in_features": 4, "out_features": 3})
    assert lm.format == "checkpoint" and torch.equal(lm.module.bias, lin.bias)


def test_state_dict_errors(tmp_path, smallmix):
    p = tmp_path / "sd.pth"
    sd = dict(smallmix.state_dict())
    sd.pop("conv1.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"model": sd}, p)
    with pytest.raises(LoadError) as e:
        load_model(p, arch=ARCH, arch_kwargs={"name": "smallmix"})
    msg = str(e.value)
    assert "missing keys: conv1.weight" in msg and "unexpected keys: extra.weight" in msg
    with pytest.raises(LoadError) as e:
        load_model(p)
    assert "--arch" in e.value.fix
    torch.save({"model": smallmix.state_dict()}, p)
    with pytest.raises(LoadError) as e:
        load_model(p, arch=ARCH, arch_kwargs={"name": "metaspikeformer"})
    assert "missing keys" in str(e.value)
    with pytest.raises(LoadError):
        load_model(p, arch="no_such_module_xyz:build")
    with pytest.raises(LoadError):
        load_model(p, arch=f"{HERE / 'models_for_tests.py'}:no_such_factory")
    with pytest.raises(LoadError):
        load_model(p, arch="tests/does_not_exist.py:build")


def test_pickled_module_needs_trust(tmp_path, smallmix):
    p = tmp_path / "full.pt"
    torch.save(smallmix, p)
    with pytest.raises(LoadError) as e:
        load_model(p)
    assert "--trust" in e.value.fix
    assert "SmallMix" in str(e.value)  # says what was refused
    lm = load_model(p, trust=True)
    assert lm.format == "pickled_module" and isinstance(lm.module, M.SmallMix)
    torch.save({"model": smallmix, "input_shape": (1, 12, 12)}, p)
    lm = load_model(p, trust=True)
    assert lm.format == "pickled_module" and lm.extras["input_shape"] == (1, 12, 12)


@pytest.mark.parametrize("how", ["zip", "legacy", "raw"])
def test_malicious_pickle_is_not_executed(tmp_path, how):
    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.pth"
    evil = Evil(marker)
    if how == "zip":
        torch.save({"model": evil}, p)
    elif how == "legacy":
        torch.save({"model": evil}, p, _use_new_zipfile_serialization=False)
    else:
        with open(p, "wb") as f:
            pickle.dump(evil, f)
    assert not marker.exists()
    with pytest.raises(LoadError) as e:
        load_model(p)
    assert not marker.exists()
    assert "refused" in str(e.value) and "--trust" in e.value.fix
    assert str(p) in str(e.value)


def test_torchscript_and_exported(tmp_path):
    model = M.build_model("scriptable")
    p = tmp_path / "model.ts"
    torch.jit.script(model).save(str(p))
    lm = load_model(p)
    assert lm.format == "torchscript" and lm.module is not None
    g = to_graph(lm, "1,8,8")
    assert len(g.neurons()) == 2
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(ops.evaluate(g, x)[g.output_names()[0]], model.double()(x))

    model = M.build_model("smallmix")
    ep = torch.export.export(model, (torch.randn(2, 1, 12, 12),))
    p2 = tmp_path / "model.bin"  # extension does not matter
    torch.export.save(ep, p2)
    lm = load_model(p2)
    assert lm.format == "exported"
    assert lm.extras["input_shape"] == (1, 12, 12)
    g = to_graph(lm)
    assert [g.nodes[n].rounding for n in g.neurons()] == ["half_up", "floor", "half_even"]


def test_missing_input_shape_message(tmp_path):
    model = M.build_model("scriptable")
    p = tmp_path / "m.pt"
    torch.save(model.state_dict(), p)
    lm = load_model(p, arch=ARCH, arch_kwargs={"name": "scriptable"})
    with pytest.raises(NeurodeployError) as e:
        to_graph(lm)
    assert "--input-shape C,H,W" in e.value.fix


def test_truncated_and_corrupt_files(tmp_path, smallmix):
    good = tmp_path / "good.pth"
    torch.save({"model": smallmix.state_dict()}, good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError) as e:
        load_model(trunc, arch=ARCH, arch_kwargs={"name": "smallmix"})
    assert str(trunc) in str(e.value) and "truncated" in str(e.value)

    # flip bytes inside a stored tensor: CRC check
    corrupt = tmp_path / "corrupt.pth"
    b = bytearray(data)
    i = b.find(b"data/0") + 200
    for j in range(i, i + 16):
        b[j] ^= 0xFF
    corrupt.write_bytes(bytes(b))
    with pytest.raises(LoadError) as e:
        load_model(corrupt, arch=ARCH, arch_kwargs={"name": "smallmix"})
    assert str(corrupt) in str(e.value)

    legacy = tmp_path / "legacy.pth"
    torch.save({"model": smallmix.state_dict()}, legacy, _use_new_zipfile_serialization=False)
    lt = tmp_path / "legacy_trunc.pth"
    lt.write_bytes(legacy.read_bytes()[:300])
    with pytest.raises(LoadError) as e:
        load_model(lt, arch=ARCH, arch_kwargs={"name": "smallmix"})
    assert str(lt) in str(e.value)

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(LoadError, match="empty"):
        load_model(empty)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, this is not a model" * 10)
    with pytest.raises(LoadError, match="not a recognised model file"):
        load_model(junk)
    with pytest.raises(LoadError, match="no such file"):
        load_model(tmp_path / "missing.pt")


def test_hdf5_detected_and_delegated_to_nir_io(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "model.data"  # detected by the HDF5 signature, not the extension
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.arange(3))
    calls = []
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(3,)))
    g.add("output", ir.Output(), ["input"])
    fake = types.ModuleType("neurodeploy.nir_io")

    def from_nir(path):
        calls.append(Path(path))
        return g

    fake.from_nir = from_nir
    monkeypatch.setitem(sys.modules, "neurodeploy.nir_io", fake)
    lm = load_model(p)
    assert lm.format == "nir" and lm.graph is g and lm.module is None and calls == [p]
    assert to_graph(lm) is g

    trunc = tmp_path / "trunc.nir"
    trunc.write_bytes(p.read_bytes()[:100])
    with pytest.raises(LoadError) as e:
        load_model(trunc)
    assert str(trunc) in str(e.value)


def test_onnx_detected_by_content(tmp_path):
    import warnings
    model = M.build_model("smallmix")
    p = tmp_path / "model.weights"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 1, 12, 12),), str(p), dynamo=False)
    lm = load_model(p)
    assert lm.format == "onnx" and lm.graph is not None and lm.sha256 == _sha(p)
    g = to_graph(lm)
    assert len(g.neurons()) == 3
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(p.read_bytes()[:-300])
    with pytest.raises(LoadError) as e:
        load_model(trunc)
    assert str(trunc) in str(e.value)
