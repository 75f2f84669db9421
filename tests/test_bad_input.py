"""Bad input gets exit status 2 and a one-line message naming the problem, and writes nothing:
data files, numeric options, non-finite parameters, inputs outside the quantised range,
activation settings that contradict the model's code, and --arch factories that call sys.exit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nir
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import models_for_tests as M
from neurodeploy.cli import main
from neurodeploy.converters import activation_overrides, check_activation_overrides, check_input_shape, from_torch
from neurodeploy.data import load_data, validate_inputs
from neurodeploy.errors import NeurodeployError

ROOT = Path(__file__).resolve().parents[1]
ARCH = ["--arch", f"{ROOT / 'tests' / 'models_for_tests.py'}:build_model", "--arch-kwargs", '{"name": "scriptable"}']
SHAPE = (1, 8, 8)  # ScriptableNet: conv -> BN -> round(clamp(0, 4))/4 -> conv -> round(clamp(0, 2)) -> fc


def invoke(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception  # a traceback is a failure of this test, whatever the exit code
    return res


def refused(res, *words):
    """Exit 2, no traceback, and the message's first line names every one of ``words``."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [l for l in res.output.splitlines() if l.startswith(("error:", "Error:"))]
    assert lines, res.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def tiny_checkpoint(path: Path, edit=None) -> Path:
    model = M.build_model("scriptable")
    state = model.state_dict()
    if edit:
        edit(state)
    torch.save({"model": state, "input_shape": list(SHAPE), "until": "spike2"}, path)
    return path


def inputs(n=4, scale=1.0):
    return np.random.default_rng(0).uniform(0, 1, (n,) + SHAPE) * scale


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_input")
    model = tiny_checkpoint(d / "tiny.pt")
    np.savez(d / "good.npz", x=inputs())
    sim = d / "sim_out"
    loihi = d / "loihi_out"
    for target, out in (("sim", sim), ("loihi", loihi)):
        res = invoke("compile", model, *ARCH, "--target", target, "-o", out, "--no-profile")
        assert res.exit_code == 0, res.output
    return {"dir": d, "model": model, "good": d / "good.npz", "sim": sim, "loihi": loihi}


# -- data files ------------------------------------------------------------------------------------

def _nan_in_sample_2():
    x = inputs()
    x[2, 0, 3, 3] = np.nan
    return {"x": x}


DATA_FAULTS = {
    "nan": (_nan_in_sample_2, ["sample 2", "NaN"]),
    "inf": (lambda: {"x": inputs() * np.array([1, np.inf, 1, 1])[:, None, None, None]}, ["sample 1", "infinite"]),
    "complex": (lambda: {"x": inputs().astype(np.complex128)}, ["complex"]),
    "strings": (lambda: {"x": np.array(["a", "b"])}, ["not numbers"]),
    "scalar": (lambda: {"x": np.float64(3.0)}, ["scalar"]),
    "zero_samples": (lambda: {"x": inputs()[:0]}, ["zero samples"]),
    "channels": (lambda: {"x": np.repeat(inputs(), 3, axis=1)}, ["3 channels instead of 1", "(1, 8, 8)"]),
    "shape": (lambda: {"x": inputs()[:, :, :5]}, ["(1, 5, 8)", "(1, 8, 8)"]),
    "no_batch_dim": (lambda: {"x": inputs()[0]}, ["without a batch dimension"]),
    "labels": (lambda: {"x": inputs(), "y": np.array(["a"] * 4)}, ["labels"]),
    "no_x": (lambda: {"inputs": inputs()}, ["no 'x'"]),
}


@pytest.mark.parametrize("fault", sorted(DATA_FAULTS))
def test_bad_data_file_is_refused_naming_file_and_sample(work, fault):
    make, words = DATA_FAULTS[fault]
    path = work["dir"] / f"{fault}.npz"
    np.savez(path, **make())
    refused(invoke("simulate", work["sim"], "--data", path), path.name, *words)


def test_plain_npy_is_read_as_inputs(work, tmp_path):
    np.save(tmp_path / "x.npy", inputs())
    res = invoke("simulate", work["sim"], "--data", tmp_path / "x.npy", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["samples"] == 4
    np.save(tmp_path / "bad.npy", np.full((2,) + SHAPE, np.nan))
    refused(invoke("simulate", work["sim"], "--data", tmp_path / "bad.npy"), "bad.npy", "sample 0", "NaN")


def test_compile_with_nan_data_writes_nothing(work, tmp_path):
    np.savez(tmp_path / "nan.npz", **_nan_in_sample_2())
    out = tmp_path / "out"
    refused(invoke("compile", work["model"], *ARCH, "-o", out, "--data", tmp_path / "nan.npz", "--verify"),
            "nan.npz", "sample 2")
    assert list(tmp_path.iterdir()) == [tmp_path / "nan.npz"]  # no output, no temp folder


def test_verify_and_run_use_the_same_data_check(work, tmp_path):
    np.savez(tmp_path / "nan.npz", **_nan_in_sample_2())
    refused(invoke("verify", work["model"], *ARCH, "--data", tmp_path / "nan.npz"), "sample 2", "NaN")
    refused(invoke("run", work["loihi"], "--runtime", "sim", "--data", tmp_path / "nan.npz"), "sample 2", "NaN")


def test_load_data_limit_and_validation_directly(work):
    assert len(load_data(work["good"], 2).x) == 2
    with pytest.raises(NeurodeployError, match="selects no samples"):
        load_data(work["good"], 0)
    x = validate_inputs(np.ones((2,) + SHAPE, dtype=np.uint8), input_shape=SHAPE)
    assert x.dtype == np.float64 and x.shape == (2,) + SHAPE


# -- inputs outside the quantised range: simulate and run refuse alike ---------------------------

@pytest.mark.parametrize("scale", [2.0, 1e30])
def test_inputs_outside_the_quantised_range(work, tmp_path, scale):
    path = tmp_path / "big.npz"
    np.savez(path, x=inputs(scale=scale))
    refused(invoke("run", work["loihi"], "--runtime", "sim", "--data", path), "exceeds the range 1", "sample 0")
    refused(invoke("simulate", work["loihi"], "--data", path), "exceeds the range 1")
    refused(invoke("simulate", work["loihi"], "--data", path, "--engine", "sync"), "exceeds the range 1")
    res = invoke("run", work["loihi"], "--runtime", "sim", "--data", work["good"])
    assert res.exit_code == 0, res.output


# -- numeric options -------------------------------------------------------------------------------

OPTION_FAULTS = [
    (["--spike-d", "1000000000000"], "--spike-d"),
    (["--spike-d", "0"], "--spike-d"),
    (["--limit", "0"], "--limit"),
    (["--limit", "-5"], "--limit"),
    (["--norm", "nan"], "--norm"),
    (["--norm", "0"], "--norm"),
    (["--norm", "-inf"], "--norm"),
    (["--input-shape", "1,-8,8"], "--input-shape"),
    (["--input-shape", "1,0,8"], "--input-shape"),
]


@pytest.mark.parametrize("opts,name", OPTION_FAULTS, ids=[" ".join(o) for o, _ in OPTION_FAULTS])
def test_numeric_option_bounds(work, opts, name):
    refused(invoke("verify", work["model"], *ARCH, "--data", work["good"], *opts), name)


@pytest.mark.parametrize("opts", [["--e-mac", "nan"], ["--e-ac", "-5"], ["--e-mac", "inf"]])
def test_energy_options_must_be_finite_and_non_negative(work, opts):
    refused(invoke("profile", work["model"], *ARCH, "--data", work["good"], *opts), opts[0])


def test_simulate_and_run_limit_bounds(work):
    refused(invoke("simulate", work["sim"], "--data", work["good"], "--limit", "0"), "--limit")
    refused(invoke("run", work["loihi"], "--data", work["good"], "--limit", "-1"), "--limit")


def test_input_shape_that_cannot_fit_names_the_estimate(work):
    line = refused(invoke("inspect", work["model"], *ARCH, "--input-shape", "1,100000,100000"), "GiB")
    assert "(1, 100000, 100000)" in line
    assert check_input_shape((1, 8, 8), memory=10**9) == (1, 8, 8)
    with pytest.raises(NeurodeployError, match=r"needs at least 512 bytes .*\(2 x 64 float32.* 100 bytes of memory"):
        check_input_shape((1, 8, 8), memory=100)  # 2 x 64 x 4 bytes = 512 > 100


def test_spike_budget_bound_in_the_python_api():
    with pytest.raises(NeurodeployError, match="outside 1..32768"):
        from_torch(M.build_model("scriptable"), SHAPE, spike={"D": 10**12})
    with pytest.raises(NeurodeployError, match="finite number > 0"):
        from_torch(M.build_model("scriptable"), SHAPE, spike={"norm": math.nan})


# -- non-finite parameters -------------------------------------------------------------------------

def _poison(key, value, n=3):
    def edit(state):
        state[key].view(-1)[:n] = value
    return edit


@pytest.mark.parametrize("target", ["sim", "speck", "loihi"])
def test_nan_weights_are_refused_naming_the_tensor(work, tmp_path, target):
    model = tiny_checkpoint(tmp_path / "nan.pt", _poison("conv.weight", float("nan")))
    out = tmp_path / "out"
    refused(invoke("compile", model, *ARCH, "--target", target, "-o", out),
            "parameter 'conv.weight' has 3 NaN value(s)")
    assert not out.exists()


def test_inf_batchnorm_statistics_are_refused(work, tmp_path):
    model = tiny_checkpoint(tmp_path / "inf.pt", _poison("bn.running_var", float("inf"), n=1))
    refused(invoke("verify", model, *ARCH, "--data", work["good"], "--target", "loihi"),
            "parameter 'bn.running_var' has 1 infinite value(s)")


def test_nan_weights_in_a_nir_file_are_refused(work, tmp_path):
    graph = nir.read(work["sim"] / "network.nir")
    name = next(n for n, node in graph.nodes.items() if isinstance(node, nir.Conv2d))
    graph.nodes[name].weight[0, 0, 0, 0] = np.nan
    nir.write(tmp_path / "nan.nir", graph)
    refused(invoke("compile", tmp_path / "nan.nir", "-o", tmp_path / "out"), "has 1 NaN value(s)")
    assert not (tmp_path / "out").exists()


def test_non_finite_norm_in_the_model_code_is_named():
    from neurodeploy.passes import canonicalize

    model = M.build_model("scriptable")
    model.spike.norm = float("nan")  # InlineQuant: round(clamp(x, 0, D)) / norm
    with pytest.raises(NeurodeployError, match="parameter 'spike.norm' has 1 NaN"):
        canonicalize(from_torch(model, SHAPE))


# -- activation settings that contradict the model's code ------------------------------------------

@pytest.mark.parametrize("opts,words", [
    (["--spike-d", "3"], ["--spike-d 3", "D = 4", "layer 'spike'"]),
    (["--rounding", "floor"], ["--rounding floor", "'half_even'", "layer 'spike'"]),
    (["--norm", "2"], ["--norm 2.0", "norm = 4.0", "layer 'spike'"]),
])
def test_contradicting_activation_settings_are_refused(work, opts, words):
    refused(invoke("inspect", work["model"], *ARCH, *opts), *words)


def test_settings_equal_to_the_code_are_accepted(work):
    res = invoke("inspect", work["model"], *ARCH, "--rounding", "half_even")
    assert res.exit_code == 0, res.output


def test_override_is_warned_about_and_recorded(work, tmp_path):
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"activation override: layer 'spike' uses D = 3 \(--spike-d\) instead of the model's own 4"):
        res = invoke("compile", work["model"], *ARCH, "-o", out, "--spike-d", "3", "--override-activation")
    assert res.exit_code == 0, res.output
    options = json.loads((out / "manifest.json").read_text())["options"]
    assert options["override_activation"] is True
    assert {(o["layer"], o["code"], o["used"]) for o in options["activation_overrides"]} == {
        ("spike", 4, 3), ("spike2", 2, 3)}
    with pytest.warns(UserWarning, match="activation override"):
        res = invoke("verify", work["model"], *ARCH, "--data", work["good"], "--spike-d", "3",
                     "--override-activation", "--json")
    assert res.exit_code in (0, 1), res.output  # 1: the model's own forward may now differ
    checks = json.loads(res.output[res.output.index("{"):])["checks"]
    assert [c["data"]["overrides"][0]["used"] for c in checks if c["name"] == "activation_overrides"] == [3]


def test_a_nir_file_states_its_settings_unless_foreign(work, tmp_path):
    refused(invoke("inspect", work["sim"] / "network.nir", "--spike-d", "3"), "--spike-d 3", "D = 4")
    foreign = nir.NIRGraph(  # a plain nir.IF, as sinabs writes it: D is not stated, --spike-d supplies it
        nodes={"input": nir.Input(input_type={"input": np.array([4])}), "fc": nir.Linear(weight=np.ones((3, 4))),
               "lif": nir.IF(r=np.ones(3), v_threshold=np.ones(3), v_reset=np.zeros(3)),
               "output": nir.Output(output_type={"output": np.array([3])})},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
    nir.write(tmp_path / "foreign.nir", foreign)
    res = invoke("inspect", tmp_path / "foreign.nir", "--spike-d", "3")
    assert res.exit_code == 0 and "D=3" in res.output, res.output


def test_settings_the_code_hides_are_not_overrides():
    g = from_torch(M.ClampOnly().eval(), (1, 6, 6), spike={"rounding": "half_up", "norm": 2})
    assert activation_overrides(g) == []  # Hardtanh(0, 2) states D only; rounding/norm come from the user
    check_activation_overrides(g, override=False)
    g = from_torch(M.ClampOnly().eval(), (1, 6, 6), spike={"rounding": "half_up", "D": 3})
    assert [(o["setting"], o["code"], o["used"]) for o in activation_overrides(g)] == [("max_spikes", 2, 3)]


# -- --arch factories that end the process ---------------------------------------------------------

def test_arch_factory_calling_sys_exit(work, tmp_path):
    (tmp_path / "exits.py").write_text("import sys\n\ndef build():\n    sys.exit(3)\n")
    refused(invoke("inspect", work["model"], "--arch", f"{tmp_path / 'exits.py'}:build"),
            "exits.py:build", "sys.exit(3)")
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(4)\n")
    refused(invoke("inspect", work["model"], "--arch", f"{tmp_path / 'exits_on_import.py'}:build"),
            "exits_on_import.py", "sys.exit(4)")
