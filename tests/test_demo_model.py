"""The bundled demo model (examples/digits_sfa.py + digits_sfa.pt): loads safely and strictly,
has integer activations, and its stored probe reproduces the stored test accuracy."""
import os

import numpy as np
import pytest
import torch
from demo_helpers import CALIB_NPZ, EX, load_checkpoint, load_example, strict_model, load_test_split

CKPT = os.path.join(EX, "digits_sfa.pt")


ds = load_example("digits_sfa.py", "digits_sfa_demo")


@pytest.fixture(scope="module")
def ckpt():
    return load_checkpoint(CKPT)


@pytest.fixture(scope="module")
def model(ckpt):
    return strict_model(ds, ckpt)


@pytest.fixture(scope="module")
def test_data():
    return load_test_split()


def _spike_modules(root):
    return [(n, m) for n, m in root.named_modules() if isinstance(m, (ds.MultiSpike, ds.Multispike))]


def test_checkpoint_format(ckpt):
    assert os.path.getsize(CKPT) < 5 * 1024 * 1024
    assert set(ckpt) >= {"model", "args", "input_shape", "probe", "probe_accuracy_test", "until"}
    assert ckpt["until"] == "encoder"
    assert list(ckpt["input_shape"]) == [1, 8, 8]
    assert ckpt["args"]["D"] == 4
    w, b = ckpt["probe"]["weight"], ckpt["probe"]["bias"]
    assert w.shape == (10, ckpt["args"]["feat_dim"]) and b.shape == (10,)
    assert ckpt["probe_accuracy_test"] > 0.85
    assert all(k.startswith(("encoder.", "projector.")) for k in ckpt["model"])


def test_build_encoder_loads_encoder_part(ckpt, model):
    enc = ds.build_encoder(**ckpt["args"])
    sd = {k[len("encoder."):]: v for k, v in ckpt["model"].items() if k.startswith("encoder.")}
    enc.load_state_dict(sd, strict=True)
    enc.eval()
    x = torch.from_numpy(np.load(CALIB_NPZ)["x"])
    assert x.shape[1:] == (1, 8, 8)
    with torch.no_grad():
        assert torch.equal(enc(x), model.encoder(x))


def test_both_rounding_forms_present_and_correct(model):
    kinds = {type(m).__name__ for _, m in _spike_modules(model.encoder)}
    assert kinds == {"MultiSpike", "Multispike"}
    x = torch.tensor([-1.0, 0.5, 1.5, 2.5, 3.49, 3.5, 9.0])
    assert torch.equal(ds.MultiSpike(max_value=4, norm=4)(x) * 4,
                       torch.tensor([0.0, 0.0, 2.0, 2.0, 3.0, 4.0, 4.0]))   # half to even
    assert torch.equal(ds.Multispike(lens=4)(x) * 4,
                       torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0, 4.0, 4.0]))   # half up
    # straight-through gradient inside [0, D], zero outside
    xg = torch.tensor([-1.0, 1.2, 5.0], requires_grad=True)
    ds.MultiSpike(max_value=4, norm=4)(xg).sum().backward()
    assert torch.allclose(xg.grad, torch.tensor([0.0, 0.25, 0.0]))


def test_encoder_activations_are_integer_counts(model, test_data):
    x = torch.from_numpy(test_data[0])
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o.detach()))
             for n, m in _spike_modules(model.encoder)]
    try:
        with torch.no_grad():
            feats = model.encoder(x)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == 6 and "spike_out" in seen
    assert torch.equal(seen["spike_out"], feats)
    for name, out in seen.items():
        c = out * 4
        assert torch.equal(c, c.round()), name
        assert c.min() >= 0 and c.max() <= 4, name
    assert feats.shape == (len(x), 64)
    assert 0.05 < float((feats > 0).float().mean()) < 0.95   # neither dead nor saturated


def test_probe_reproduces_stored_accuracy(ckpt, model, test_data):
    x, y = test_data
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape[1:] == (1, 8, 8)
    feats = ds.encode(model.encoder, x)
    acc = ds.probe_accuracy(feats, torch.from_numpy(y), ckpt["probe"]["weight"],
                            ckpt["probe"]["bias"])
    assert acc == pytest.approx(ckpt["probe_accuracy_test"], abs=1e-9)


def test_load_digits_split_deterministic(test_data):
    a = ds.load_digits_split(0)
    b = ds.load_digits_split(0)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
    x_tr, y_tr, x_te, y_te = a
    assert x_tr.shape == (1437, 1, 8, 8) and x_te.shape == (360, 1, 8, 8)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    # the bundled test split is exactly this split's test part
    assert np.array_equal(x_te, test_data[0]) and np.array_equal(y_te, test_data[1])
    assert not np.array_equal(ds.load_digits_split(1)[3], y_te)
