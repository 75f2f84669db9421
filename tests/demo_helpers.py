"""Shared loading for the tests of the bundled demo models (examples/)."""

import importlib.util
import os
import sys

import numpy as np
import torch

EX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
TEST_NPZ = os.path.join(EX, "digits_test.npz")
CALIB_NPZ = os.path.join(EX, "digits_calib.npz")


def load_example(filename: str, module_name: str):
    """Import examples/<filename> (with examples/ on sys.path: digits_chain imports digits_sfa)."""
    sys.path.insert(0, EX)
    try:
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(EX, filename))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(EX)
    return mod


def write_digits_data(root, n: int, splits) -> tuple:
    """The first ``n`` test digits as ``root/all.npz``, ``root/all.npy`` (inputs) and ``.npz`` shards
    ``root/shards/partNN.npz`` over the sample ranges ``splits``. Returns (x, y)."""
    d = np.load(TEST_NPZ)
    x, y = d["x"][:n], d["y"][:n]
    np.savez(root / "all.npz", x=x, y=y)
    (root / "shards").mkdir()
    for i, (a, b) in enumerate(splits):
        np.savez(root / "shards" / f"part{i:02d}.npz", x=x[a:b], y=y[a:b])
    np.save(root / "all.npy", x)
    return x, y


def load_checkpoint(path: str) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def strict_model(example, ckpt: dict):
    m = example.build_model(**ckpt["args"])
    m.load_state_dict(ckpt["model"], strict=True)
    return m.eval()


def load_test_split():
    d = np.load(TEST_NPZ, allow_pickle=False)
    return d["x"], d["y"]
