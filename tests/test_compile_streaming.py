"""compile --data streams like verify / profile: a shard folder, a glob or a memory-mapped .npy
give the same profile.json and verify.json as one in-memory .npz, without loading the whole file."""

import json
from pathlib import Path

import pytest

from demo_helpers import write_digits_data
from neurodeploy import api

MODEL = "examples/digits_sfa.pt"
ARCH = "examples/digits_sfa.py:build_model"
N = 20


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("cdigits")
    write_digits_data(root, N, [(0, 6), (6, 13), (13, N)])
    return root


def _compiled(data, out, **kw):
    res = api.compile(MODEL, arch=ARCH, target="sim", out_dir=out, data=data, verify=True, **kw)
    profile = json.loads((out / "profile.json").read_text())
    verify = json.loads((out / "verify.json").read_text())
    verify.pop("calibration", None)
    verify.get("precision", {}).pop("calibration", None)
    return res, json.dumps(profile, sort_keys=True), json.dumps(verify, sort_keys=True)


def test_compile_on_shards_equals_one_npz_and_never_loads_the_whole_file(digits, tmp_path, monkeypatch):
    res, profile, verify = _compiled(str(digits / "all.npz"), tmp_path / "one")
    assert res.verify.ok() and res.manifest["data"]["sha256"]

    def whole_file(*a, **k):
        raise AssertionError("compile --data read the whole file into memory")

    monkeypatch.setattr(api, "load_data", whole_file)
    for data, name in [(str(digits / "shards"), "dir"), (str(digits / "shards" / "part*.npz"), "glob")]:
        res, p, v = _compiled(data, tmp_path / name)
        assert p == profile and v == verify
        assert res.manifest["data"] == {"path": Path(data).name, "sha256": None, "samples": N}


def test_compile_with_limit_streams_only_the_first_samples(digits, tmp_path):
    _, p_all, _ = _compiled(str(digits / "all.npz"), tmp_path / "one", limit=8)
    _, p_shards, _ = _compiled(str(digits / "shards"), tmp_path / "dir", limit=8)
    res, p_npy, _ = _compiled(str(digits / "all.npy"), tmp_path / "npy", limit=8)  # memory-mapped, no labels
    assert p_all == p_shards == p_npy and res.verify.ok()
