"""verify --target speck: the ladder separates the causes; the remedy; NIR written by sinabs."""

import os
import warnings

import numpy as np
import pytest
import torch

from neurodeploy import ops
from neurodeploy.targets import get_target
from neurodeploy.targets.speck import examples, simulate as sim
from neurodeploy.targets.speck.verify import merge_copies, required_copies, split_neurons, verify


def test_ladder_attributes_each_cause():
    g = examples.conv_net(weight_scale=1.0)
    x = examples.random_counts(g, 6)
    probe = (np.random.default_rng(0).normal(size=(3, 10)), np.zeros(3))
    rep = verify(g, x, probe=probe, remedy=False)
    ids = [r[0] for r in rep.rungs]
    assert ids == ["R0", "R1", "R2", "R3", "R4", "R5", "R6", "R7"]  # R7: the deployed barrier artefact
    assert all(o["in_budget_wrong"] == 0 for o in rep.barrier["own_input"].values())
    assert all(v == 0 for v in rep.mismatch["R0"].values())
    ref = ops.evaluate(g, torch.as_tensor(x))
    assert rep.spikes["R0"]["if1"] == int(ref["if1"].sum())
    if rep.engine == "neurodeploy.engine":  # the layer barrier reproduces the quantised closed form
        assert all(v == 0 for v in rep.step_mismatch["R2"].values())
    assert rep.step_mismatch["R3"]["if2"] > 0  # depth-first order changes counts (mixed-sign weights)
    assert rep.step_mismatch["R5"]["if1"] > 0  # weights above θ: the one-spike rule loses spikes
    assert rep.task["R0"]["agreement"] == 1.0 and 0 <= rep.task["R6"]["agreement"] <= 1
    import json
    d = json.loads(json.dumps(rep.to_dict()))
    assert [r["id"] for r in d["rungs"]] == ids
    text = rep.table()
    assert "one spike per input event" in text and "saturation" in text and "SynOps" in text


def test_neuron_splitting_is_exact_in_closed_form_and_removes_one_spike_loss():
    g = examples.conv_net(weight_scale=1.0, D=4)
    copies = required_copies(g)
    assert copies and all(m > 1 for m in copies.values())
    sg, applied, notes = split_neurons(g, {"conv1": 2, "conv2": 2})
    x = torch.as_tensor(examples.random_counts(g, 8))
    a, b = ops.evaluate(g, x), ops.evaluate(sg, x)
    assert torch.equal(merge_copies(b["if1"], 2), a["if1"])  # Hermite: sum of copies = round-half-up
    assert torch.equal(merge_copies(b["if2"], 2), a["if2"])
    assert torch.equal(b["if3"], a["if3"])
    rep = verify(g, x.numpy())
    r = rep.remedy
    assert r["one_spike_loss"] == 0.0 < r["one_spike_loss_before"]
    assert r["synops_ratio"] > 1.0  # the cost, in SynOps
    assert "remedy" in rep.table()


def test_nir_written_by_sinabs_compiles_to_speck(tmp_path):
    try:
        from neurodeploy import nir_io
    except ImportError:
        pytest.skip("neurodeploy.nir_io (from_nir) is not in this checkout")
    import nir
    import sinabs
    import sinabs.layers as sl
    import torch.nn as nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), sl.IAFSqueeze(batch_size=1),
                      sl.SumPool2d(2), nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False),
                      sl.IAFSqueeze(batch_size=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 10, bias=False),
                      sl.IAFSqueeze(batch_size=1))
    ng = sinabs.to_nir(m, torch.zeros(1, 2, 16, 16))
    # nir.write needs these set (REFERENCE §2 pitfall); sinabs leaves them None
    ng.nodes["0"].input_shape = np.array([16, 16])
    ng.nodes["3"].input_shape = np.array([8, 8])
    ng.nodes["5"].input_type = {"input": np.array([8, 4, 4])}
    path = os.path.join(tmp_path, "model.nir")
    nir.write(path, ng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = nir_io.from_nir(path, default_max_spikes=4)
        g.nodes[g.input_names()[0]].is_spikes = True
        t = get_target("speck")
        assert t.check(g) == []
        paths = t.emit(g, tmp_path / "speck")
        qg = t.quantize(g)
    assert (tmp_path / "speck" / "speck_config.json").exists() and "core_map" in paths
    x = np.random.default_rng(0).integers(0, 3, size=(2, 2, 16, 16)).astype(float)
    res = sim.simulate_events(qg, x)
    assert np.array_equal(res.input_events, x.reshape(2, -1).sum(1))
    assert {n: tuple(c.shape[1:]) for n, c in res.counts.items()} == {n: qg.nodes[n].shape for n in qg.neurons()}
