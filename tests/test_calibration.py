"""Calibration stage (issue 11): adaptive rounding, layer-wise search, Loihi rules, records, CLI.

Small nets and data; every calibrated graph is checked against an independent integer forward of
its own parameters (numpy, written here), and on held-out inputs the calibrated counts must agree
with the float model at least as often as the uncalibrated ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from neurodeploy import ir, ops
from neurodeploy.calibration.layerwise import weight_neuron_pairs
from neurodeploy.calibration.record import check_record, make_record
from neurodeploy.calibration.rounding import RoundingProblem, boundary_weights
from neurodeploy.cli import main
from neurodeploy.errors import NeurodeployError
from neurodeploy.targets import calibrate as stage
from neurodeploy.targets.loihi import calibrate as loihi_cal
from neurodeploy.targets.loihi.quantize import quantize
from neurodeploy.targets.loihi.testnets import strided_net

EX = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples"


def dense_net(seed: int = 0, n_in: int = 24) -> ir.Graph:
    rng = np.random.default_rng(seed)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(n_in,)))
    g.add("fc1", ir.Linear(weight=rng.normal(0, 0.4, (32, n_in)), bias=rng.normal(0.2, 0.2, 32)), "input")
    g.add("if1", ir.IFNeuron(threshold=1.0, max_spikes=4), "fc1")
    g.add("fc2", ir.Linear(weight=rng.normal(0, 0.3, (16, 32)), bias=rng.normal(0.3, 0.2, 16)), "if1")
    g.add("if2", ir.IFNeuron(threshold=1.0, max_spikes=4, rounding="half_even"), "fc2")
    g.add("fc3", ir.Linear(weight=rng.normal(0, 0.3, (10, 16)), bias=rng.normal(0.5, 0.2, 10)), "if2")
    g.add("if3", ir.IFNeuron(threshold=1.5, v_init=0.75, max_spikes=4), "fc3")
    g.add("output", ir.Output(), "if3")
    return ir.infer_shapes(g)


def inputs(n: int, shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, (n, *shape)) / 16.0   # dyadic, like the digits


def numpy_dense_counts(g: ir.Graph, x: np.ndarray) -> np.ndarray:
    """Independent integer forward of a quantised dense chain (numpy int64, no ops.evaluate)."""
    v = np.rint(x * g.nodes["input"].scale_q).astype(np.int64)
    for wname, nname in (("fc1", "if1"), ("fc2", "if2"), ("fc3", "if3")):
        node, nrn = g.nodes[wname], g.nodes[nname]
        cur = v @ np.asarray(node.weight_q, dtype=np.int64).T + np.asarray(node.bias_q, dtype=np.int64)
        cur = cur + int(nrn.v_init_q)
        n = np.floor_divide(cur, int(nrn.threshold_q))
        if nrn.rounding == "half_even":
            n = n - ((cur % int(nrn.threshold_q) == 0) & (n % 2 == 1))
        v = np.clip(n, 0, nrn.max_spikes)
    return v


def agree_last(g: ir.Graph, x) -> float:
    ref, got = ops.evaluate(g, x, quantized=False), ops.evaluate(g, x, quantized=True)
    last = weight_neuron_pairs(g)[-1][1]
    return float((ref[last] == got[last]).double().mean())


# -- adaptive rounding -----------------------------------------------------------------------------

def test_adaptive_rounding_lowers_its_objective_towards_the_brute_force_optimum():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 5, (300, 3))
    X = torch.as_tensor(np.concatenate([base, base + rng.integers(0, 2, (300, 3)), rng.integers(0, 5, (300, 2))], 1),
                        dtype=torch.float64)                                  # correlated columns
    w = torch.as_tensor(rng.normal(0, 6, (4, 8)))
    y = X @ w.T
    prob = RoundingProblem(X, torch.ones(300, 4, dtype=torch.float64), ridge=0.0)
    q = prob.solve(y, w, -1000, 1000)
    assert torch.all((q == torch.floor(w)) | (q == torch.ceil(w)))

    def loss(qq, o):  # channel o's least squares with a free offset, computed directly: [K] for qq [K, F]
        r = X @ qq.T - y[:, o:o + 1]
        return ((r - r.mean(0)) ** 2).sum(0)
    bits = torch.as_tensor(np.array(np.meshgrid(*[[0, 1]] * 8)).reshape(8, -1).T, dtype=torch.float64)
    best = torch.stack([loss(torch.floor(w[o]) + bits, o).min() for o in range(4)])   # all 256 roundings
    near = torch.stack([loss(torch.round(w[o])[None], o)[0] for o in range(4)])
    got = torch.stack([loss(q[o][None], o)[0] for o in range(4)])
    assert torch.all(got <= near + 1e-9)
    assert float((got - best).sum()) <= 0.5 * float((near - best).sum())


def test_boundary_weights_peak_at_count_boundaries():
    u = torch.tensor([0.0, 0.5, 1.0, 2.5, 4.0, 9.0], dtype=torch.float64)
    h = boundary_weights(u, max_spikes=4)
    assert h[2] > 0.99 and h[4] > 0.99 and h[1] < 0.1 and h[5] < 0.1


# -- layer-wise calibration for loihi ------------------------------------------------------------

def test_loihi_calibration_matches_integer_forward_and_helps_on_held_out_data():
    g = dense_net()
    xc, xt = inputs(256, (24,), 1), inputs(512, (24,), 2)
    base = quantize(g, calibration=xc)
    cal, results, _ = loihi_cal.calibrate(g, xc)
    got = ops.evaluate(cal, xt, quantized=True)["if3"].numpy()
    assert np.array_equal(got, numpy_dense_counts(cal, xt))          # an independent integer forward
    assert agree_last(cal, xt) >= agree_last(base, xt)               # held-out: not worse
    assert [r.weight_layer for r in results] == ["fc1", "fc2", "fc3"]
    assert all(r.agree_after >= r.agree_before for r in results)
    for wname, nname in weight_neuron_pairs(cal):                     # loihi rules still hold
        assert loihi_cal.state_violation(cal, wname, nname) is None
        assert np.abs(cal.nodes[wname].weight_q).max() <= 127


def test_loihi_calibration_on_a_conv_net_with_groups_and_pools_stays_exact_in_the_simulator():
    from neurodeploy.targets.loihi import LoihiTarget

    g = strided_net()
    xc, xt = inputs(64, (2, 9, 9), 4), inputs(64, (2, 9, 9), 5)
    cal, results, _ = loihi_cal.calibrate(g, xc)
    sim = LoihiTarget().simulate(cal, xt)
    ref = ops.evaluate(cal, xt, quantized=True)
    for n in cal.neurons():
        assert np.array_equal(np.asarray(sim.counts[n]), ref[n].numpy()), n
    assert agree_last(cal, xt) >= agree_last(quantize(g, calibration=xc), xt)


def test_exact_input_scale_is_tried_for_dyadic_data():
    scales = loihi_cal._input_scales(inputs(8, (4,), 0))
    assert scales == [None, 16.0, 240.0]


# -- records -------------------------------------------------------------------------------------

def test_record_reproduces_the_calibrated_graph_and_refuses_another_model(tmp_path):
    g = dense_net()
    xc = inputs(128, (24,), 1)
    cal, rec = stage.run("loihi", g, xc)
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(rec))
    again = stage.from_record("loihi", g, path)
    for name in ("fc1", "fc2", "fc3"):
        assert np.array_equal(again.nodes[name].weight_q, cal.nodes[name].weight_q)
        assert np.array_equal(again.nodes[name].bias_q, cal.nodes[name].bias_q)
    xt = inputs(64, (24,), 9)
    assert np.array_equal(numpy_dense_counts(again, xt), numpy_dense_counts(cal, xt))
    other = dense_net(seed=5)
    with pytest.raises(NeurodeployError, match="layer 'fc1'.*weights differ"):
        stage.from_record("loihi", other, path)
    with pytest.raises(NeurodeployError, match="target 'loihi', not 'speck'"):
        check_record(rec, g, "speck")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(NeurodeployError, match="not a calibration record"):
        stage.from_record("loihi", g, bad)


def test_make_record_is_json_and_names_the_data(tmp_path):
    g = dense_net()
    xc = inputs(64, (24,), 1)
    cal, results, s = loihi_cal.calibrate(g, xc)
    rec = make_record(cal, "loihi", results, data_sha256="ab" * 32, n_samples=64, input_scale=s)
    json.dumps(rec)
    assert rec["format"] == "neurodeploy-calibration/1" and rec["data_sha256"] == "ab" * 32


# -- CLI -----------------------------------------------------------------------------------------

def test_cli_calibrate_then_compile_with_the_record(tmp_path):
    model = [str(EX / "digits_chain.pt"), "--arch", f"{EX / 'digits_chain.py'}:build_model"]
    rec = tmp_path / "rec.json"
    r = CliRunner().invoke(main, ["calibrate", *model, "-t", "loihi", "--calibration",
                                  str(EX / "digits_calib.npz"), "-o", str(rec)])
    assert r.exit_code == 0, r.output
    assert "encoder.spike_out" in r.output and rec.exists()
    data = json.loads(rec.read_text())
    assert data["target"] == "loihi" and len(data["layers"]) == 4 and data["data_samples"] == 64
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["compile", *model, "-t", "loihi", "--calibration-record", str(rec),
                                  "--data", str(EX / "digits_test.npz"), "--limit", "8", "--no-profile",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "scales from calibration record rec.json" in r.output and "before -> after calibration" in r.output
    calib = json.loads((out / "loihi.json").read_text())["quantization"]["calibration"]
    assert calib["source"].startswith("record rec.json")
    effect = json.loads((out / "calibration_effect.json").read_text())
    assert [lr["layer"] for lr in effect["layers"]][-1] == "encoder.spike_out" and not effect["note"]
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert {"calibration.png", "calibration_effect.json"} <= set(json.loads((out / "manifest.json").read_text())["artefacts"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "target": "speck"}))
    r = CliRunner().invoke(main, ["compile", *model, "-t", "loihi", "--calibration-record", str(bad),
                                  "--no-profile", "-o", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "calibration record is for target 'speck'" in r.output
    assert not (tmp_path / "o2").exists()


# -- before / after report -------------------------------------------------------------------------

def test_effect_counts_equal_values_per_layer():
    from neurodeploy.calibration.effect import measure

    g = dense_net()
    xc, xt = inputs(128, (24,), 1), inputs(200, (24,), 3)
    base = quantize(g, calibration=xc)
    cal, _, _ = loihi_cal.calibrate(g, xc)
    eff = measure(base, cal, xt, "held-out")
    ref = ops.evaluate(g, xt, quantized=False)["if3"].numpy()
    row = eff.rows[-1]
    assert row.layer == "if3" and row.n_values == ref.size
    assert row.equal_after == int((numpy_dense_counts(cal, xt) == ref).sum())
    assert "if3" in eff.table() and eff.to_dict()["layers"][-1]["pct_after"] == row.pct("after")


def test_cli_verify_reports_before_after_on_held_out_data_and_plots(tmp_path):
    model = [str(EX / "digits_chain.pt"), "--arch", f"{EX / 'digits_chain.py'}:build_model"]
    png = tmp_path / "cal.png"
    r = CliRunner().invoke(main, ["verify", *model, "-t", "loihi", "--calibration", str(EX / "digits_calib.npz"),
                                  "--data", str(EX / "digits_test.npz"), "--limit", "24",
                                  "--calibration-plot", str(png)])
    assert r.exit_code == 0, r.output
    assert "before -> after calibration" in r.output and "digits_test.npz (24 samples)" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_effect_on_the_calibration_file_itself_has_no_rows():
    from neurodeploy import api
    from neurodeploy.data import load_data

    g = quantize(dense_net(), calibration=inputs(8, (24,), 1))
    path = EX / "digits_calib.npz"
    eff = api.calibration_effect(g, g, load_data(path), path, path)
    assert not eff.rows and "no held-out data" in eff.table()


# -- speck -----------------------------------------------------------------------------------------

def speck_net(seed: int = 0) -> ir.Graph:
    rng = np.random.default_rng(seed)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(1, 8, 8)))
    g.add("conv1", ir.Conv2d(weight=rng.normal(0, 0.5, (6, 1, 3, 3)), bias=rng.normal(0.2, 0.1, 6), padding=1),
          "input")
    g.add("if1", ir.IFNeuron(threshold=1.0, max_spikes=4), "conv1")
    g.add("conv2", ir.Conv2d(weight=rng.normal(0, 0.25, (8, 6, 3, 3)), bias=rng.normal(0.3, 0.1, 8), stride=2,
                             padding=1), "if1")
    g.add("if2", ir.IFNeuron(threshold=1.0, max_spikes=4), "conv2")
    g.add("output", ir.Output(), "if2")
    return ir.infer_shapes(g)


def test_speck_calibration_keeps_the_barrier_and_helps_on_held_out_data():
    import warnings

    from neurodeploy.targets.speck import calibrate as speck_cal
    from neurodeploy.targets.speck.barrier import plan_barrier

    g = speck_net()
    xc, xt = inputs(64, (1, 8, 8), 1), inputs(128, (1, 8, 8), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = speck_cal.quantize_base(g, xc)
        cal, results, choice = speck_cal.calibrate(g, xc)
    assert choice == {"input_scale": 16.0, "max_input_events": 16, "barrier_input_bound": 16}  # exact input
    assert not plan_barrier(cal).violations
    for w in ("conv1", "conv2"):
        wq = np.asarray(cal.nodes[w].weight_q)
        assert wq.min() >= -128 and wq.max() <= 127
    assert agree_last(cal, xt) >= agree_last(base, xt)
    # an independent integer forward of the first layer (numpy, 16-bit state clamp)
    x_int = np.rint(xt * cal.nodes["input"].scale_q)
    w1 = torch.as_tensor(np.asarray(cal.nodes["conv1"].weight_q, dtype=np.float64))
    cur = torch.nn.functional.conv2d(torch.as_tensor(x_int), w1, padding=1).numpy()
    cur = cur + np.asarray(cal.nodes["conv1"].bias_q)[None, :, None, None] + cal.nodes["if1"].v_init_q
    n = np.clip(np.floor(np.minimum(cur, 32767) / cal.nodes["if1"].threshold_q), 0, 4)
    assert np.array_equal(n, ops.evaluate(cal, xt, quantized=True)["if1"].numpy())


def test_speck_leak_bias_mode_is_refused():
    from neurodeploy.targets.speck import calibrate as speck_cal
    with pytest.raises(NeurodeployError, match="bias-mode initial"):
        speck_cal.calibrate(speck_net(), inputs(8, (1, 8, 8), 1), bias_mode="leak")


# -- weight-bit study ------------------------------------------------------------------------------

def test_weight_bit_study_quantiser_and_rows():
    from neurodeploy.calibration.study import quantize_weight_bits, study

    g = dense_net()
    xc, xt = inputs(128, (24,), 1), inputs(256, (24,), 2)
    q = quantize_weight_bits(g, xc, 5)
    assert np.abs(q.nodes["fc1"].weight_q).max() == 15 and q.nodes["input"].scale_q == 16.0
    assert np.array_equal(ops.evaluate(q, xt, quantized=True)["if3"].numpy(), numpy_dense_counts(q, xt))
    rows = study(g, xc, xt, [3, 10])
    assert [r.bits for r in rows] == [3, 10] and rows[0].final_layer == "if3"
    assert rows[1].pct_before > rows[0].pct_before                 # more bits, fewer count errors


def test_cli_study_refuses_the_calibration_file_as_data(tmp_path):
    model = [str(EX / "digits_chain.pt"), "--arch", f"{EX / 'digits_chain.py'}:build_model"]
    r = CliRunner().invoke(main, ["study", *model, "--weight-bits", "6", "--calibration", str(EX / "digits_calib.npz"),
                                  "--data", str(EX / "digits_calib.npz")])
    assert r.exit_code == 2 and "held-out data" in r.output


def test_weight_bit_study_gives_a_residual_sum_one_scale():
    from neurodeploy.calibration.study import quantize_weight_bits

    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(6,)))
    g.add("fc1", ir.Linear(weight=rng.normal(0, 1, (8, 6)), bias=rng.normal(0, 0.1, 8)), "input")
    g.add("if1", ir.IFNeuron(threshold=1.0, max_spikes=4), "fc1")
    g.add("fc2", ir.Linear(weight=rng.normal(0, 1, (5, 8)), bias=None), "if1")
    g.add("fc3", ir.Linear(weight=rng.normal(0, 0.2, (5, 8)), bias=rng.normal(0, 0.1, 5)), "if1")
    g.add("sum", ir.Add(), ["fc2", "fc3"])
    g.add("if2", ir.IFNeuron(threshold=1.0, max_spikes=4), "sum")
    g.add("output", ir.Output(), "if2")
    ir.infer_shapes(g)
    q = quantize_weight_bits(g, inputs(16, (6,), 0), 6)
    rep = q.metadata["quantization"]["layers"]
    assert rep["fc2"]["scale"] == rep["fc3"]["scale"]
    assert np.abs(q.nodes["fc2"].weight_q).max() == 31 and np.abs(q.nodes["fc3"].weight_q).max() < 31
    x = inputs(32, (6,), 1)
    c1 = ops.evaluate(q, x, quantized=True)["if1"].numpy()
    cur = c1 @ q.nodes["fc2"].weight_q.T + c1 @ q.nodes["fc3"].weight_q.T + q.nodes["fc3"].bias_q
    n = np.clip(np.floor_divide(cur + q.nodes["if2"].v_init_q, q.nodes["if2"].threshold_q), 0, 4)
    assert np.array_equal(n, ops.evaluate(q, x, quantized=True)["if2"].numpy())


def test_a_malformed_record_is_one_clear_error(tmp_path):
    g = dense_net()
    _, rec = stage.run("loihi", g, inputs(32, (24,), 1))
    del rec["layers"][1]["weight_q"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(NeurodeployError, match="incomplete or malformed"):
        stage.from_record("loihi", g, path)
