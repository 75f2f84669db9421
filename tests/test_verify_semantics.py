"""verify's two numbers: conversion exactness (program vs integer reference of the same quantised
parameters, must be 0) and precision (integer reference vs the model's float forward: every
mismatch explained by a rounding boundary within the error bound, or propagated, or unexplained)."""

import json

import numpy as np
import pytest

from neurodeploy import ops
from neurodeploy.passes import canonicalize, quantize_fixed_point
from neurodeploy.precision import (exactness, integer_reference, mismatch_text, precision,
                                   teacher_forced_currents)
from neurodeploy.simulator import simulate
from neurodeploy.simulator.random_graphs import random_conv_graph, random_input
from neurodeploy.verify import VerifyReport, build_report


def _float_counts(g, x):
    """The 'model': the float graph evaluated in float64 (independent of every quantised value)."""
    return {n: v.numpy().astype(np.int64) for n, v in ops.evaluate(g, x, quantized=False).items() if n in g.neurons()}


@pytest.fixture(scope="module")
def coarse():
    """A random conv graph quantised with only 5 input fractional bits: many boundary flips."""
    g = canonicalize(random_conv_graph(3))
    x = random_input(g, 24, 3)
    model = _float_counts(g, x)
    q = quantize_fixed_point(g, calibration=x, input_frac_bits=5)
    return g, x, model, q, integer_reference(q, x)


def test_integer_reference_equals_program_and_counts_are_shown(coarse):
    g, x, model, q, full = coarse
    ex = exactness(full, simulate(q, x).counts, q)
    assert ex.ok and ex.mismatches == 0 and ex.n_values == sum(v.size for v in full.values())
    bad = {k: v.copy() for k, v in simulate(q, x).counts.items()}
    name = q.neurons()[1]
    bad[name][2, 0, 1, 1] += 1
    ex_bad = exactness(full, bad, q)
    assert not ex_bad.ok and ex_bad.mismatches == 1
    layer = next(lr for lr in ex_bad.layers if lr.layer == name)
    assert layer.first_mismatch["sample"] == 2 and layer.first_mismatch["index"] == [0, 1, 1]
    table = ex_bad.table()
    assert f"1 / {full[name].size:,}" in table and "%" not in table and "conversion bug" in table


def test_bound_is_rigorous_and_flips_lie_within_it(coarse):
    g, x, model, q, full = coarse
    frac = q.metadata["quantization"]["frac_bits"]
    checked = 0
    for name, node, cur in teacher_forced_currents(q, x, model):
        f = frac[q.inputs_of(name)[0]]
        actual = (cur.q * 2.0 ** -f - cur.real).abs()
        err = 0.0 if cur.err is None else cur.err
        assert bool((actual <= err).all()), name  # the bound holds for every value
        checked += int(actual.numel())
    assert checked == sum(v.size for v in model.values())
    rep = precision(q, x, model, full)
    assert rep.total("at_boundary") > 0 and rep.total("unexplained") == 0 and rep.ok
    assert rep.total("mismatches") == sum(int((full[n] != model[n]).sum()) for n in model)
    for lr in rep.layers:
        if lr.example:
            assert lr.example["explained"] and lr.example["distance"] <= lr.example["bound"]
    # the first neuron layer reads only the input: none of its flips can be propagated
    assert rep.layers[0].propagated == 0
    json.dumps(rep.to_dict())


def test_fine_precision_has_no_mismatch(coarse):
    g, x, model, _, _ = coarse
    q = quantize_fixed_point(g, calibration=x)
    rep = precision(q, x, model, integer_reference(q, x))
    assert rep.total("mismatches") == 0 and rep.ok
    assert rep.layers[0].max_bound < 1e-4


def test_wrong_integer_weight_is_unexplained(coarse):
    """A conversion bug (an integer weight off by 1/4 of its scale) is not a precision effect."""
    g, x, model, _, _ = coarse
    q = quantize_fixed_point(g, calibration=x)
    conv = q.nodes[q.of_type(*__import__("neurodeploy.ir", fromlist=["x"]).WEIGHT_NODES)[0]]
    frac = q.metadata["quantization"]["frac_bits"]
    conv.weight_q = conv.weight_q.copy()
    conv.weight_q[0] += 2 ** (frac[q.topo_order()[1]] - frac[q.input_names()[0]] - 2)
    full = integer_reference(q, x)
    sim = simulate(q, x)
    assert exactness(full, sim.counts, q).ok  # program and reference agree with each other ...
    rep = precision(q, x, model, full)
    assert rep.total("unexplained") > 0 and not rep.ok  # ... but not with the model
    report = build_report(model, sim, q)
    report.exactness, report.precision, report.required_exact = exactness(full, sim.counts, q), rep, ()
    assert not report.ok()
    assert "UNEXPLAINED" in report.format_table()
    assert report.to_dict()["precision"]["unexplained"] == rep.total("unexplained")


def test_report_ok_needs_exactness_and_explained_precision(coarse):
    g, x, model, q, full = coarse
    sim = simulate(q, x)
    report = build_report(model, sim, q)
    assert not report.ok()  # old semantics: sync must equal the model exactly
    report.exactness, report.precision = exactness(full, sim.counts, q), precision(q, x, model, full)
    report.required_exact = ()
    assert report.ok()  # new: the program is exact and every flip is explained
    table = report.format_table()
    assert "conversion exactness" in table and "precision" in table and "100.000%" not in table
    lr = next(lr for lr in report.layers if lr.mismatches)
    assert mismatch_text(lr.mismatches, lr.n_values) in table


def test_mismatch_text_never_rounds():
    assert mismatch_text(1, 602112) == "1 / 602,112"
    assert mismatch_text(0, 5) == "0 / 5"
    assert VerifyReport().ok()


# -- smaller defects (issue 9, part 4) ----------------------------------------------------------------

def _speck_net(is_spikes=False, pre_activation_add=False):
    from neurodeploy import ir

    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(2, 8, 8), is_spikes=is_spikes))
    g.add("conv", ir.Conv2d(weight=rng.normal(0, 0.3, (4, 2, 3, 3)), padding=1, source="stem"), "input")
    prev = "conv"
    if pre_activation_add:
        g.add("conv2", ir.Conv2d(weight=rng.normal(0, 0.3, (4, 2, 3, 3)), padding=1), "input")
        g.add("add", ir.Add(), ["conv", "conv2"])
        prev = "add"
    g.add("if", ir.IFNeuron(), prev)
    g.add("output", ir.Output(), "if")
    ir.infer_shapes(g)
    return g


def test_speck_check_lists_negative_input_with_the_other_violations():
    from neurodeploy.targets import get_target

    speck = get_target("speck")
    g = _speck_net(pre_activation_add=True)
    x = np.random.default_rng(1).normal(size=(3, 2, 8, 8))
    without = speck.check(g)
    with_data = speck.check(g, inputs=x)
    assert len(with_data) == len(without) + 1
    neg = [v for v in with_data if "input values" in v]
    assert len(neg) == 1 and f"min {x.min():g}" in neg[0] and "fix:" in neg[0]
    assert speck.check(g, inputs=np.abs(x)) == without  # non-negative real input: rate coded (a warning)
    assert speck.check(_speck_net(is_spikes=True), inputs=x) == []  # spike input: not rate coded
    add = [v for v in without if "add" in v]
    assert add and all("is adds" not in v for v in without) and "(Conv2d), a pre-activation current" in add[0]


def test_loihi_lists_every_violation_with_limit_actual_and_fix():
    from neurodeploy import ir
    from neurodeploy.targets import get_target

    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(4,)))
    g.add("fc", ir.Linear(weight=rng.normal(size=(4, 4))), "input")
    g.add("if", ir.IFNeuron(), "fc")
    g.add("fc2", ir.Linear(weight=np.zeros((4, 4))), "if")  # numerical problem beside structural ones
    g.add("if2", ir.IFNeuron(), "fc2")
    g.add("add", ir.Add(), ("if", "if2"))
    g.add("fc3", ir.Linear(weight=rng.normal(size=(2, 4))), "add")
    g.add("output", ir.Output(), "fc3")
    ir.infer_shapes(g)
    probs = get_target("loihi").check(g)
    rules = {p.split(": ")[1] for p in probs}
    assert {"layer type", "fan-out", "weights", "weight layer without IF neuron"} <= rules, probs
    assert all(" is " in p and "allows" in p and "-- fix: " in p for p in probs), probs
    zero = next(p for p in probs if p.startswith("layer 'fc2'"))
    assert "all zero" in zero


def test_input_bits_balance_input_and_weight_rounding():
    """Real-valued calibration data: the automatic input fractional bits give a smaller actual
    first-layer error than one bit more or less (the same total bits split differently)."""
    g = canonicalize(random_conv_graph(4))
    x = random_input(g, 16, 4) + 0.3  # real-valued, not dyadic
    model = _float_counts(g, x)
    auto = quantize_fixed_point(g, calibration=x).metadata["quantization"]["input_frac_bits"]

    def first_layer_error(f):
        q = quantize_fixed_point(g, calibration=x, input_frac_bits=f)
        name, node, cur = next(teacher_forced_currents(q, x, model))
        frac = q.metadata["quantization"]["frac_bits"][q.inputs_of(name)[0]]
        return float((cur.q * 2.0 ** -frac - cur.real).abs().mean())

    errors = {f: first_layer_error(f) for f in (auto - 2, auto, auto + 2)}
    assert errors[auto] <= min(errors[auto - 2], errors[auto + 2]), errors


def test_verify_onnx_input_uses_onnx_reference(tmp_path):
    """--verify on an ONNX file: the reference forward is onnx.reference (float64), and it agrees
    with the PyTorch model the file was exported from."""
    import warnings

    import torch

    import models_for_tests as M
    from neurodeploy import api
    from neurodeploy.converters import capture_counts, from_onnx, from_torch
    from neurodeploy.converters.onnx_reference import onnx_capture_counts

    model, shape = M.build_model("metaspikeformer", dim=4, depth=1), (2, 8, 8)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn((1,) + shape),), str(path), dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE)
    x = np.random.default_rng(0).normal(size=(2,) + shape).astype(np.float32)
    onnx_counts = onnx_capture_counts(path, from_onnx(path), x)
    torch_counts = capture_counts(model, from_torch(model, shape), x)
    assert [int(v.sum()) for v in onnx_counts.values()] == [int(v.sum()) for v in torch_counts.values()]
    np.savez(tmp_path / "d.npz", x=x)
    report = api.verify(path, data=tmp_path / "d.npz")
    assert report.ok() and report.exactness.ok and report.precision.ok
    assert "the data double as calibration" in report.precision.calibration


def test_torchscript_takes_its_input_shape_from_data(tmp_path):
    import torch

    import models_for_tests as M
    from neurodeploy import api
    from neurodeploy.errors import NeurodeployError

    p = tmp_path / "model.ts"
    torch.jit.script(M.build_model("scriptable")).save(str(p))
    with pytest.raises(NeurodeployError, match="--input-shape"):
        api.prepare(p)  # no data: the shape is still needed
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8))
    np.savez(tmp_path / "d.npz", x=x)
    report = api.verify(p, data=tmp_path / "d.npz")  # no --input-shape: the data fix it
    assert report.ok() and report.n_samples == 4
    prof = api.profile(p, data=tmp_path / "d.npz", calibration=tmp_path / "d.npz")
    assert prof is not None
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 1, 9, 9)))
    with pytest.raises(NeurodeployError) as e:
        api.verify(p, data=tmp_path / "wrong.npz")
    assert "--data shape (1, 9, 9)" in str(e.value) and "--input-shape" in e.value.fix
    assert "\n" not in e.value.message


def test_cli_torchscript_one_sample_is_quiet(tmp_path):
    """TorchScript + one-sample data through the CLI: torch.export's 'Dim.AUTO ... 0/1 specialized'
    log records (emitted through logging, past Python's warnings filters) are never created."""
    import logging

    import torch
    from click.testing import CliRunner

    import models_for_tests as M
    from neurodeploy.cli import main

    p = tmp_path / "model.ts"
    torch.jit.script(M.build_model("scriptable")).save(str(p))
    np.savez(tmp_path / "one.npz", x=np.random.default_rng(0).normal(size=(1, 1, 8, 8)))
    seen = []

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("torch._export.non_strict_utils")
    handler = Catch(level=logging.DEBUG)
    logger.addHandler(handler)
    try:
        res = CliRunner().invoke(main, ["verify", str(p), "--data", str(tmp_path / "one.npz")])
    finally:
        logger.removeHandler(handler)
    assert res.exit_code == 0, res.output
    assert "conversion exactness" in res.output and "the data double as calibration" in res.output
    assert not [m for m in seen if "specialized" in m], seen


@pytest.mark.parametrize("target", ["loihi"])  # speck: the same path, exercised by test_targets_e2e (20 s)
def test_hardware_targets_check_their_simulator_against_the_integer_reference(target):
    from pathlib import Path

    from neurodeploy import api

    ex = Path(__file__).resolve().parents[1] / "examples"
    report = api.verify(ex / "digits_chain.pt", arch=f"{ex / 'digits_chain.py'}:build_model", target=target,
                        data=ex / "digits_test.npz", calibration=ex / "digits_calib.npz", limit=4,
                        schedules=("sync",))
    assert report.exactness is not None and report.exactness.ok and report.exactness.n_values > 0
    assert target in report.exactness.compared and report.ok()
    assert "calibration file digits_calib.npz" in report.format_table().splitlines()[0]
    assert report.to_dict()["exactness"]["mismatches"] == 0


def test_percent_never_rounds_a_mismatch_away():
    from neurodeploy.precision import percent

    assert percent(1 - 1 / 602112) == ">99.99%" and percent(1 / 602112) == "<0.01%"
    assert percent(1.0) == "100.00%" and percent(0.0) == "0.00%" and percent(0.5, 1) == "50.0%"
    assert percent(1 - 1e-7, 3) == ">99.999%"
