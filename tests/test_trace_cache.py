"""The trace cache: a second compile of the same model reads the traced graph back instead of running
torch.export, gives byte-identical artefacts, and anything that could change the trace changes the key."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest
import torch

from neurodeploy import api
from neurodeploy.converters import torch_export
from neurodeploy.converters import trace_cache as tc

from demo_helpers import EX

MODEL_SRC = '''
import torch
import torch.nn as nn

D = 4


class Net(nn.Module):
    def __init__(self, max_value=D):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.max_value = max_value

    def forward(self, x):
        return torch.round(torch.clamp(self.conv(x), 0, self.max_value)) / D
'''


def _import(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "tc_model.py"
    p.write_text(MODEL_SRC)
    return p


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NEURODEPLOY_CACHE_DIR", str(folder))
    monkeypatch.delenv("NEURODEPLOY_CACHE", raising=False)
    return folder


def _net(mod, seed=0):
    torch.manual_seed(seed)
    return mod.Net().eval()


def test_key_is_stable_and_follows_everything_that_changes_the_trace(model_file, tmp_path):
    mod = _import(model_file, "tc_model_a")
    net = _net(mod)
    key = tc.trace_key(net, (1, 6, 6), None, None)
    assert key is not None and key == tc.trace_key(_net(mod), (1, 6, 6), None, None)
    assert tc.trace_key(_net(mod, seed=1), (1, 6, 6), None, None) != key  # weights
    assert tc.trace_key(net, (1, 7, 7), None, None) != key  # input shape
    assert tc.trace_key(net, (1, 6, 6), "conv", None) != key  # until
    assert tc.trace_key(net, (1, 6, 6), None, {"max_spikes": 3}) != key  # spike settings
    net.max_value = 3  # a plain attribute of a module
    assert tc.trace_key(net, (1, 6, 6), None, None) != key
    net.max_value = 4
    mod.D = 8  # a global the forward reads, changed at run time
    assert tc.trace_key(net, (1, 6, 6), None, None) != key
    mod.D = 4
    assert tc.trace_key(net, (1, 6, 6), None, None) == key
    edited = tmp_path / "tc_model_b.py"  # the same code with one more line: another source file digest
    edited.write_text(MODEL_SRC + "\n# edited\n")
    assert tc.trace_key(_net(_import(edited, "tc_model_b")), (1, 6, 6), None, None) != key


def test_models_whose_code_cannot_be_pinned_down_are_not_cached(model_file):
    mod = _import(model_file, "tc_model_c")
    hooked = _net(mod)
    hooked.conv.register_forward_hook(lambda m, i, o: o * 2)
    assert tc.trace_key(hooked, (1, 6, 6), None, None) is None
    patched = _net(mod)
    patched.forward = lambda x: x
    assert tc.trace_key(patched, (1, 6, 6), None, None) is None
    ns = {}
    exec(textwrap.dedent(MODEL_SRC), ns)  # code without a source file
    assert tc.trace_key(ns["Net"]().eval(), (1, 6, 6), None, None) is None


def test_second_trace_is_read_back_identical_without_torch_export(model_file, cache, monkeypatch):
    net = _net(_import(model_file, "tc_model_d"))
    first = tc.cached_from_torch(net, (1, 6, 6))
    assert len(list((cache / "trace").glob("*.ir.npz"))) == 1

    def no_export(*_a, **_k):
        raise AssertionError("torch.export ran on a cache hit")

    monkeypatch.setattr(torch_export, "_export", no_export)
    second = tc.cached_from_torch(net, (1, 6, 6))
    assert tc.same_graph(first, second) and second is not first


def test_damaged_entry_is_traced_again_and_cache_can_be_turned_off(model_file, cache, monkeypatch):
    net = _net(_import(model_file, "tc_model_e"))
    first = tc.cached_from_torch(net, (1, 6, 6))
    (entry,) = (cache / "trace").glob("*.ir.npz")
    entry.write_bytes(b"not a zip")
    assert tc.same_graph(first, tc.cached_from_torch(net, (1, 6, 6)))
    assert entry.read_bytes()[:2] == b"PK"  # rewritten
    monkeypatch.setenv("NEURODEPLOY_CACHE", "0")
    assert tc.cache_dir() is None
    other = _net(_import(model_file, "tc_model_f"), seed=5)
    tc.cached_from_torch(other, (1, 6, 6))
    assert len(list((cache / "trace").glob("*.ir.npz"))) == 1


def test_prune_keeps_the_most_recent_entries_and_only_removes_its_own_files(tmp_path):
    import os

    for i in range(5):
        p = tmp_path / f"{i:064x}.ir.npz"
        p.write_bytes(b"x")
        os.utime(p, (i, i))
    foreign = tmp_path / "notes.ir.npz"
    foreign.write_bytes(b"mine")
    tc._prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{3:064x}.ir.npz", f"{4:064x}.ir.npz", "notes.ir.npz"])


def test_demo_compile_is_byte_identical_with_and_without_the_cache(cache, tmp_path, monkeypatch):
    model, arch = f"{EX}/digits_sfa.pt", f"{EX}/digits_sfa.py:build_model"
    monkeypatch.setenv("NEURODEPLOY_CACHE", "0")
    api.compile(model, arch=arch, out_dir=tmp_path / "off")
    monkeypatch.setenv("NEURODEPLOY_CACHE", "1")
    api.compile(model, arch=arch, out_dir=tmp_path / "miss")
    monkeypatch.setattr(torch_export, "_export", lambda *a, **k: (_ for _ in ()).throw(AssertionError("traced")))
    api.compile(model, arch=arch, out_dir=tmp_path / "hit")
    names = sorted(p.name for p in (tmp_path / "off").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "hit").iterdir())
    for name in names:
        off = (tmp_path / "off" / name).read_bytes()
        assert off == (tmp_path / "miss" / name).read_bytes() == (tmp_path / "hit" / name).read_bytes(), name


def test_settings_objects_read_by_the_forward_are_part_of_the_key(model_file):
    import argparse

    mod = _import(model_file, "tc_model_g")
    net = _net(mod)
    net.cfg = argparse.Namespace(D=4)  # a library object holding settings
    key = tc.trace_key(net, (1, 6, 6), None, None)
    net.cfg.D = 8
    assert key is not None and tc.trace_key(net, (1, 6, 6), None, None) != key
    net.cfg = _Settings(4)  # an instance of user code: by its class and attributes
    k1 = tc.trace_key(net, (1, 6, 6), None, None)
    net.cfg.d = 8
    assert k1 is not None and tc.trace_key(net, (1, 6, 6), None, None) != k1


class _Settings:
    def __init__(self, d):
        self.d = d


def test_a_hit_leaves_the_module_in_eval_mode_like_a_trace(model_file, cache):
    mod = _import(model_file, "tc_model_h")
    tc.cached_from_torch(_net(mod), (1, 6, 6))
    net = _net(mod).train()
    tc.cached_from_torch(net, (1, 6, 6))  # a hit: same weights, traced in eval mode either way
    assert not net.training
    assert len(list((cache / "trace").glob("*.ir.npz"))) == 1
