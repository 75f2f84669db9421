"""Profiler: exact SynOps (value x fan-out) vs brute-force loops, MACs, energy, output formats."""

from __future__ import annotations

import csv
import io
import json
import itertools

import numpy as np
import pytest
import torch

from neurodeploy import ir, ops
from neurodeploy.errors import NeurodeployError
from neurodeploy.profile import fanout_map, profile


def brute_fanout_conv2d(in_shape, c_out, k, stride=1, padding=0, dilation=1, groups=1):
    """Explicit loops over output neurons and kernel taps: how many synapses leave each input."""
    c_in, h, w = in_shape
    fan = np.zeros(in_shape, dtype=np.int64)
    oh = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    ow = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    cin_g, cout_g = c_in // groups, c_out // groups
    for o, i, j in itertools.product(range(c_out), range(oh), range(ow)):
        grp = o // cout_g
        for cl, ki, kj in itertools.product(range(cin_g), range(k), range(k)):
            y, x = i * stride - padding + ki * dilation, j * stride - padding + kj * dilation
            if 0 <= y < h and 0 <= x < w:
                fan[grp * cin_g + cl, y, x] += 1
    return fan


def conv_graph(in_shape, c_out, k, spikes_in=True, **kw):
    rng = np.random.default_rng(0)
    groups = kw.get("groups", 1)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=in_shape, is_spikes=spikes_in))
    g.add("conv", ir.Conv2d(weight=rng.normal(size=(c_out, in_shape[0] // groups, k, k)), **kw), "in")
    g.add("n", ir.IFNeuron(threshold=1.0, max_spikes=4), "conv")
    g.add("out", ir.Output(), "n")
    return ir.infer_shapes(g)


def test_single_spike_corner_and_middle_padded_3x3():
    c_out = 5
    g = conv_graph((1, 6, 6), c_out, 3, padding=1)
    for pos, expected in (((0, 0), 4 * c_out), ((3, 2), 9 * c_out), ((0, 3), 6 * c_out)):
        x = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
        x[0, 0, pos[0], pos[1]] = 1
        rep = profile(g, ops.evaluate(g, x))
        assert rep.row("conv").synops == expected
        assert rep.row("conv").input_spikes == 1
    fan = brute_fanout_conv2d((1, 6, 6), c_out, 3, padding=1)
    assert fan[0, 0, 0] == 4 * c_out and fan[0, 3, 2] == 9 * c_out
    assert rep.row("conv").synapses == int(fan.sum())


@pytest.mark.parametrize("kw", [
    dict(padding=1),
    dict(stride=2, padding=1),
    dict(stride=2),
    dict(dilation=2, padding=2),
    dict(groups=2, padding=1),
    dict(groups=4, padding=1, stride=2),  # depthwise
    dict(padding=3, dilation=2, stride=3),
])
def test_fanout_matches_brute_force(kw):
    in_shape, c_out, k = (4, 7, 9), 8, 3
    g = conv_graph(in_shape, c_out, k, **kw)
    fmap = fanout_map(g, "conv")["in"].numpy()
    brute = brute_fanout_conv2d(in_shape, c_out, k, kw.get("stride", 1), kw.get("padding", 0),
                                kw.get("dilation", 1), kw.get("groups", 1))
    assert np.array_equal(fmap, brute)
    # integer inputs > 1: SynOps = sum(value x fan-out), per sample mean
    counts = torch.randint(0, 5, (3,) + in_shape, generator=torch.Generator().manual_seed(1)).double()
    rep = profile(g, ops.evaluate(g, counts))
    expected = np.mean([(counts[b].numpy() * brute).sum() for b in range(3)])
    assert rep.row("conv").synops == pytest.approx(expected, rel=0, abs=1e-9)
    assert rep.row("conv").macs == 0 and rep.row("conv").input == "spikes"
    assert rep.row("conv").synapses == int(brute.sum())


def test_value_times_fanout_not_one_per_nonzero():
    g = conv_graph((1, 5, 5), 2, 3, padding=1)
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = 3  # SFA: three spikes from one neuron
    assert profile(g, ops.evaluate(g, x)).row("conv").synops == 3 * 9 * 2


def test_linear_and_if_rows():
    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(6,), is_spikes=True))
    g.add("fc", ir.Linear(weight=rng.normal(size=(4, 6)), bias=np.zeros(4)), "in")
    g.add("n", ir.IFNeuron(threshold=0.5, max_spikes=8), "fc")
    g.add("out", ir.Output(), "n")
    x = torch.tensor([[1, 0, 2, 0, 0, 3], [0, 0, 0, 0, 0, 1]], dtype=torch.float64)
    vals = ops.evaluate(g, x)
    rep = profile(g, vals)
    fc = rep.row("fc")
    assert fc.synops == (6 * 4 + 1 * 4) / 2 and fc.synapses == 24 and fc.input_spikes == 3.5
    n = rep.row("n")
    spikes = float(vals["n"].sum(1).mean())
    assert n.neurons == 4 and n.timesteps == 8 and n.neuron_updates == 32
    assert n.spikes == spikes and n.firing_rate == spikes / 32
    assert rep.totals.neurons == 4 and rep.totals.firing_rate == spikes / 32
    # numpy values, without batch dim, work too
    rep2 = profile(g, {k: v[0].numpy() for k, v in vals.items()})
    assert rep2.row("fc").synops == 24 and rep2.n_samples == 1


def test_sumpool_before_conv_multiplies_fanout():
    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(2, 8, 8), is_spikes=True))
    g.add("c0", ir.Conv2d(weight=rng.normal(size=(2, 2, 1, 1)) + 2.0), "in")
    g.add("n0", ir.IFNeuron(threshold=0.5, max_spikes=4), "c0")
    g.add("pool", ir.SumPool2d(kernel=2), "n0")
    g.add("conv", ir.Conv2d(weight=rng.normal(size=(3, 2, 3, 3)), padding=1), "pool")
    g.add("n1", ir.IFNeuron(threshold=1.0, max_spikes=4), "conv")
    g.add("out", ir.Output(), "n1")
    ir.infer_shapes(g)
    x = torch.randint(0, 3, (4, 2, 8, 8), generator=torch.Generator().manual_seed(0)).double()
    vals = ops.evaluate(g, x)
    rep = profile(g, vals)
    row = rep.row("conv")
    assert row.source == "n0"
    fan_pooled = brute_fanout_conv2d((2, 4, 4), 3, 3, padding=1)
    # brute force per source spike: each source neuron's spikes go to its pooling window's position
    counts = vals["n0"].numpy()
    per_sample = []
    for b in range(4):
        tot = 0.0
        for c, i, j in itertools.product(range(2), range(8), range(8)):
            tot += counts[b, c, i, j] * fan_pooled[c, i // 2, j // 2]
        per_sample.append(tot)
    assert row.synops == pytest.approx(np.mean(per_sample), rel=0, abs=1e-9)
    assert row.input_spikes == pytest.approx(counts.reshape(4, -1).sum(1).mean())
    assert row.synapses == int(fan_pooled.sum())


def test_walks_back_through_flatten_and_add():
    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(2, 3), is_spikes=True))
    g.add("a", ir.IFNeuron(threshold=0.5, max_spikes=4), "in")
    g.add("b", ir.IFNeuron(threshold=0.25, max_spikes=4), "in")
    g.add("add", ir.Add(), ["a", "b"])
    g.add("f", ir.Flatten(), "add")
    g.add("fc", ir.Linear(weight=rng.normal(size=(5, 6))), "f")
    g.add("n", ir.IFNeuron(), "fc")
    g.add("out", ir.Output(), "n")
    x = torch.tensor([[[1.0, 0, 2], [0, 1, 0]]], dtype=torch.float64)
    vals = ops.evaluate(g, x)
    row = profile(g, vals).row("fc")
    assert row.source == "a,b"
    assert row.synops == float((vals["a"].sum() + vals["b"].sum()) * 5)


def test_first_layer_macs_and_energy():
    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(3, 8, 8)))  # real-valued input: MACs
    g.add("c1", ir.Conv2d(weight=rng.normal(size=(6, 3, 3, 3)), padding=1, stride=2), "in")
    g.add("n1", ir.IFNeuron(threshold=0.5, max_spikes=4), "c1")
    g.add("c2", ir.Conv2d(weight=rng.normal(size=(4, 3, 3, 3)), groups=2), "n1")
    g.add("n2", ir.IFNeuron(threshold=0.5, max_spikes=2), "c2")
    g.add("out", ir.Output(), "n2")
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vals = ops.evaluate(g, x)
    rep = profile(g, vals)
    c1 = rep.row("c1")
    assert c1.input == "dense" and c1.synops == 0 and c1.input_spikes is None
    assert c1.macs == 6 * 4 * 4 * (3 * 3 * 3)  # out positions x fan-in
    c2 = rep.row("c2")
    fan = brute_fanout_conv2d((6, 4, 4), 4, 3, groups=2)
    expect = np.mean([(vals["n1"][b].numpy() * fan).sum() for b in range(5)])
    assert c2.synops == pytest.approx(expect, rel=0, abs=1e-9) and c2.macs == 0
    assert c1.energy_pj == pytest.approx(4.6 * c1.macs)
    assert c2.energy_pj == pytest.approx(0.9 * c2.synops)
    assert rep.totals.energy_pj == pytest.approx(4.6 * c1.macs + 0.9 * c2.synops)
    assert rep.totals.neuron_updates == 6 * 16 * 4 + 4 * 2 * 2 * 2
    rep2 = profile(g, vals, e_mac_pj=2.0, e_ac_pj=0.5)
    assert rep2.totals.energy_pj == pytest.approx(2.0 * c1.macs + 0.5 * c2.synops)


def _small_report():
    g = conv_graph((2, 6, 6), 3, 3, spikes_in=False, padding=1)
    x = torch.rand(2, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    return profile(g, ops.evaluate(g, x))


def test_formats_parse_and_are_deterministic():
    rep = _small_report()
    d = json.loads(rep.format("json"))
    assert [r["name"] for r in d["layers"]] == ["conv", "n"] and d["totals"]["name"] == "TOTAL"
    assert d["params"]["e_mac_pj"] == 4.6
    rows = list(csv.DictReader(io.StringIO(rep.format("csv"))))
    assert [r["name"] for r in rows] == ["conv", "n", "TOTAL"]
    assert float(rows[0]["macs"]) == rep.row("conv").macs
    table = rep.format("table")
    assert "conv" in table and "TOTAL" in table and "SynOps" in table
    assert rep.format("table") == _small_report().format("table")
    assert rep.format("json") == _small_report().format("json")
    assert rep.to_dict()["totals"]["energy_pj"] == rep.totals.energy_pj
    with pytest.raises(NeurodeployError):
        rep.format("xml")


def test_plot_writes_png(tmp_path):
    path = _small_report().plot(tmp_path / "sub" / "profile.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["profile.png"]  # atomic, no temp left


def test_missing_values_name_the_layer():
    g = conv_graph((1, 4, 4), 2, 3, padding=1)
    vals = ops.evaluate(g, torch.ones(1, 1, 4, 4, dtype=torch.float64))
    del vals["in"]
    with pytest.raises(NeurodeployError, match="'in'"):
        profile(g, vals)
