"""The second bundled demo model (examples/digits_chain.py + digits_chain.pt): a chain-shaped SFA
encoder that passes the hardware targets' design rules. Loads safely and strictly, has integer
activations in both rounding forms, its stored probe reproduces the stored test accuracy, and the
Speck design-rule check passes on its canonical graph."""
import os

import numpy as np
import pytest
import torch
from demo_helpers import CALIB_NPZ, EX, load_checkpoint, load_example, strict_model, load_test_split

CKPT = os.path.join(EX, "digits_chain.pt")
ARCH = os.path.join(EX, "digits_chain.py") + ":build_model"


dc = load_example("digits_chain.py", "digits_chain_demo")


@pytest.fixture(scope="module")
def ckpt():
    return load_checkpoint(CKPT)


@pytest.fixture(scope="module")
def model(ckpt):
    return strict_model(dc, ckpt)


@pytest.fixture(scope="module")
def test_data():
    return load_test_split()


def _spike_modules(root):
    return [(n, m) for n, m in root.named_modules()
            if isinstance(m, (dc.MultiSpike, dc.Multispike))]


def test_checkpoint_format(ckpt):
    assert os.path.getsize(CKPT) < 1024 * 1024
    assert set(ckpt) >= {"model", "args", "input_shape", "probe", "probe_accuracy_test", "until"}
    assert ckpt["until"] == "encoder"
    assert list(ckpt["input_shape"]) == [1, 8, 8]
    assert ckpt["args"]["D"] == 4 and ckpt["args"]["norm"] == 4
    assert ckpt["args"]["variant"] == "chain"
    w, b = ckpt["probe"]["weight"], ckpt["probe"]["bias"]
    assert w.shape == (10, ckpt["args"]["feat_dim"]) and b.shape == (10,)
    assert ckpt["probe_accuracy_test"] > 0.9
    assert all(k.startswith(("encoder.", "projector.")) for k in ckpt["model"])


def test_build_encoder_loads_encoder_part(ckpt, model):
    enc = dc.build_encoder(**ckpt["args"])
    sd = {k[len("encoder."):]: v for k, v in ckpt["model"].items() if k.startswith("encoder.")}
    enc.load_state_dict(sd, strict=True)
    enc.eval()
    x = torch.from_numpy(np.load(CALIB_NPZ)["x"])
    with torch.no_grad():
        assert torch.equal(enc(x), model.encoder(x))


def test_chain_shape_and_integer_activations(model, test_data):
    enc = model.encoder
    kinds = {type(m).__name__ for _, m in _spike_modules(enc)}
    assert kinds == {"MultiSpike", "Multispike"}           # both rounding forms
    weights = [m for m in enc.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weights) <= 9                                # Speck: 9 cores
    for c in weights:
        assert max(c.in_channels, c.out_channels) <= 1024
        assert max(c.kernel_size) <= 16 and set(c.stride) <= {1, 2} and max(c.padding) <= 7
    x = torch.from_numpy(test_data[0])
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o.detach()))
             for n, m in _spike_modules(enc)]
    try:
        with torch.no_grad():
            feats = enc(x)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == 4
    assert torch.equal(seen["spike_out"].flatten(1), feats)
    for name, out in seen.items():
        c = out * 4
        assert torch.equal(c, c.round()), name
        assert c.min() >= 0 and c.max() <= 4, name
    assert feats.shape == (len(x), enc.feat_dim)
    assert 0.05 < float((feats > 0).float().mean()) < 0.95


def test_probe_reproduces_stored_accuracy(ckpt, model, test_data):
    x, y = test_data
    feats = dc.encode(model.encoder, x)
    acc = dc.probe_accuracy(feats, torch.from_numpy(y), ckpt["probe"]["weight"],
                            ckpt["probe"]["bias"])
    assert acc == pytest.approx(ckpt["probe_accuracy_test"], abs=1e-9)


@pytest.fixture(scope="module")
def prepared():
    from neurodeploy import api
    return api.prepare(CKPT, arch=ARCH)


def test_speck_design_rules_pass(prepared):
    from neurodeploy.targets import get_target
    assert get_target("speck").check(prepared.canonical) == []


def test_canonical_graph_is_the_encoder_only(prepared):
    from neurodeploy import ir
    g = prepared.canonical
    names = list(g.nodes)
    assert not any(n.startswith("projector") for n in names)
    assert not any(isinstance(n, (ir.Add, ir.AvgPool2d)) for n in g.nodes.values())
    assert sum(isinstance(n, ir.IFNeuron) for n in g.nodes.values()) == 4
