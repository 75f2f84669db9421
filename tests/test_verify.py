"""verify: per-layer count comparison, mismatch reporting, near-ties and end-task agreement."""

import json

import numpy as np
import pytest

from neurodeploy import ir, ops
from neurodeploy.errors import NeurodeployError, VerificationError
from neurodeploy.passes import canonicalize, quantize_fixed_point
from neurodeploy.simulator import simulate
from neurodeploy.simulator.random_graphs import random_conv_graph, random_input
from neurodeploy.verify import build_report, end_task_agreement, feature_layer, verify_counts


@pytest.fixture(scope="module")
def setup():
    g = random_conv_graph(2)
    x = random_input(g, 20, 2)
    ref = {n: v.numpy() for n, v in ops.evaluate(g, x).items() if n in g.neurons()}
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    results = {s: simulate(q, x, schedule=s) for s in ("sync", "streaming")}
    rng = np.random.default_rng(0)
    probe = {"weight": rng.normal(size=(3, 10)), "bias": rng.normal(size=3)}
    labels = rng.integers(0, 3, 20)
    return g, x, ref, q, results, probe, labels


def test_exact_sync_report(setup):
    g, x, ref, q, results, probe, labels = setup
    layers = verify_counts(ref, results["sync"], q)
    assert [lr.layer for lr in layers] == q.neurons()
    assert all(lr.exact_fraction == 1.0 and lr.max_abs_diff == 0 and lr.first_mismatch is None for lr in layers)
    assert all(lr.near_ties == 0 for lr in layers)
    rep = build_report(ref, results, q, probe=probe, labels=labels)
    assert rep.ok() and rep.ok("sync") and rep.ok("streaming")
    assert rep["sync"].end_task["agreement"] == 1.0 and rep["sync"].end_task["layer"] == "n5"
    assert rep["sync"].end_task["accuracy_reference"] == rep["sync"].end_task["accuracy_simulated"]
    assert not rep["streaming"].exact  # the streaming deviation is visible ...
    assert rep.ok("streaming", min_agreement=1.01) is False  # ... and can be made a failure
    d = rep.to_dict()
    json.dumps(d)
    assert d["ok"] is True and d["schedules"]["sync"]["exact"] is True
    table = rep.format_table()
    assert "schedule sync" in table and "schedule streaming" in table and "argmax agreement" in table


def test_mismatch_reporting(setup):
    g, x, ref, q, results, probe, labels = setup
    bad = {k: v.copy() for k, v in ref.items()}
    bad["n2"][3, 1, 2, 2] += 2
    bad["n2"][7, 0, 0, 0] += 1
    rep = build_report(bad, results["sync"], q)
    lr = next(lr for lr in rep.layers if lr.layer == "n2")
    assert lr.first_mismatch == {"sample": 3, "index": [1, 2, 2], "expected": int(bad["n2"][3, 1, 2, 2]),
                                 "got": int(results["sync"].counts["n2"][3, 1, 2, 2])}
    assert lr.max_abs_diff == 2
    assert lr.exact_fraction == pytest.approx(1 - 2 / bad["n2"].size)
    assert lr.mean_abs_diff == pytest.approx(3 / bad["n2"].size)
    assert not rep.ok() and not rep.ok("sync")
    with pytest.raises(VerificationError) as e:
        rep.raise_if_failed()
    assert e.value.layer == "n2"
    assert "sample 3 idx (1, 2, 2)" in rep.format_table()


def test_end_task_disagreement_and_probe_shape():
    rng = np.random.default_rng(1)
    fr = rng.integers(0, 5, (50, 4)).astype(float)
    fs = fr.copy()
    fs[:10] = fs[:10][:, ::-1]
    probe = {"weight": np.eye(4), "bias": np.zeros(4)}
    e = end_task_agreement(fr, fs, probe, labels=np.argmax(fr, 1))
    assert e["accuracy_reference"] == 1.0 and e["agreement"] < 1.0 and e["agreement"] >= 0.8
    with pytest.raises(NeurodeployError):
        end_task_agreement(fr, fs, {"weight": np.eye(3), "bias": None})


def test_near_ties_counted_and_missing_layers():
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(3,)))
    g.add("n", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=4, rounding="half_even", source="act"), "x")
    g.add("out", ir.Output(), "n")
    x = np.array([[0.5, 1.5, 0.2], [2.5 + 1e-12, 7.0, -1.0]])
    q = quantize_fixed_point(g, input_frac_bits=40, input_range=8.0)
    res = simulate(q, x)
    # ties near 0.5, 1.5 and 2.5 (+1e-12); 7 is clipped (boundary > D), -1 and 0.2 are far
    assert res.near_ties["n"] == 3
    # a float32 model sees 2.5+1e-12 as the tie 2.5 and rounds it to 2; the exact program gives 3
    ref_by_source = {"act": np.round(np.clip(x.astype(np.float32), 0, 4)).astype(np.float64)}
    rep = build_report(ref_by_source, res, q)  # reference keyed by the model's module path
    assert rep.layers[0].layer == "n" and rep.layers[0].near_ties == 3
    assert rep.layers[0].first_mismatch == {"sample": 1, "index": [0], "expected": 2, "got": 3}
    assert "ties" in rep.format_table()
    rep2 = build_report({}, res, q)
    assert rep2.missing_layers == ["n"]


def test_feature_layer_through_flatten():
    g = random_conv_graph(0, head=False)
    assert feature_layer(g) == "n4"
    g2 = random_conv_graph(0)
    assert feature_layer(g2) == "n5"
