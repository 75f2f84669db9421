"""The 'pulse' NIR encoding of SFA graphs (--emit nir-pulse): sinabs.from_nir, a standard reader,
runs the file to exactly our spike counts for any T, where it runs the standard file to 7-18x."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from neurodeploy import api, ir, ops
from neurodeploy.cli import main
from neurodeploy.errors import UnsupportedOpError
from neurodeploy.nir_pulse import pulse_input, to_nir_pulse

sinabs = pytest.importorskip("sinabs")
nir = pytest.importorskip("nir")
EX = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def run_sinabs(ng, x_steps: np.ndarray) -> np.ndarray:
    """Run a NIR graph through sinabs.from_nir on [N, T, ...]; the output summed over T."""
    N, T = x_steps.shape[:2]
    net = sinabs.from_nir(ng, batch_size=N, num_timesteps=T)
    with torch.no_grad():
        out = net(torch.as_tensor(x_steps, dtype=torch.float32).reshape((N * T,) + x_steps.shape[2:]))
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape((N, T) + tuple(out.shape[1:])).sum(1).double().numpy()


def test_emitted_pulse_file_runs_in_sinabs_to_our_counts(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["compile", str(EX / "digits_chain.pt"), "--arch",
                                    f"{EX / 'digits_chain.py'}:build_model", "-o", str(out), "--no-profile",
                                    "--emit", "nir-pulse"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    g = api.prepare(EX / "digits_chain.pt", arch=f"{EX / 'digits_chain.py'}:build_model").canonical
    with np.load(EX / "digits_test.npz") as f:
        x = f["x"][:48]
    ours = ops.evaluate(g, torch.as_tensor(x, dtype=torch.float64))[g.output_names()[0]].numpy()
    ng = nir.read(out / "network_pulse.nir")
    for T in (1, 5):
        theirs = run_sinabs(ng, pulse_input(x, T)).reshape(ours.shape)
        assert ours.sum() > 100 and np.array_equal(theirs, ours), T
    with warnings.catch_warnings():  # the standard file, static input every step: counts grow with T
        warnings.simplefilter("ignore")
        std = run_sinabs(nir.read(out / "network.nir"), np.repeat(x[:, None], 17, axis=1)).reshape(ours.shape)
    assert std.sum() > 5 * ours.sum()


def mlp(D: int = 2) -> ir.Graph:
    rng = np.random.default_rng(5)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(6,)))
    g.add("fc1", ir.Linear(weight=rng.normal(0, 1.5, (10, 6)), bias=rng.normal(0, 0.8, 10)), ["in"])
    g.add("if1", ir.IFNeuron(threshold=0.7, max_spikes=D, rounding="floor", v_init=0.0), ["fc1"])
    g.add("fc2", ir.Linear(weight=rng.normal(0, 1.0, (4, 10)), bias=rng.normal(0, 0.5, 4)), ["if1"])
    g.add("if2", ir.IFNeuron(threshold=0.5, max_spikes=D, rounding="half_up", v_init=0.25, norm=2.0), ["fc2"])
    g.add("out", ir.Output(), ["if2"])
    return ir.infer_shapes(g)


def test_dense_chain_with_the_budget_reached_and_negative_biases():
    g = mlp()
    x = np.random.default_rng(6).random((40, 6)) * 2
    vals = ops.evaluate(g, torch.as_tensor(x))
    assert (vals["if1"].numpy() == 2).any() and (vals["if1"].numpy() == 0).any()  # the clip at D is exercised
    theirs = run_sinabs(to_nir_pulse(g), pulse_input(x, 3))
    assert np.array_equal(theirs, vals["out"].numpy())


def test_what_the_encoding_cannot_take_is_refused_by_layer():
    g = mlp()
    g.add("skip", ir.Linear(weight=np.ones((4, 6))), ["in"])
    g.add("sum", ir.Add(), ["if2", "skip"])
    g.edges = [e for e in g.edges if e != ("if2", "out")] + [("sum", "out")]
    with pytest.raises(Exception, match="chain"):
        to_nir_pulse(ir.infer_shapes(g))
    h = mlp()
    h.nodes["if1"].reset = "zero"
    with pytest.raises(UnsupportedOpError, match="subtractive-reset"):
        to_nir_pulse(h)
