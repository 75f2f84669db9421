"""Loihi --synapse-groups 2 (issue 11): every conv weight as two 8-bit synapse groups hi*2^k + lo.

Checked against things we did not write: Lava's own fixed-point Conv/LIF run of the emitted .net
equals the simulator and the integer model of the quantised graph; the split is checked by
arithmetic on random integers; the precision gain is measured against the float model's counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from neurodeploy import api, ops
from neurodeploy.calibration.layerwise import weight_neuron_pairs
from neurodeploy.cli import main
from neurodeploy.errors import NeurodeployError
from neurodeploy.targets.loihi import LoihiTarget, run_artifact
from neurodeploy.targets.loihi import calibrate as loihi_cal
from neurodeploy.targets.loihi.quantize import (STATE_LIMIT, group_exponent, group_max, quantize,
                                                split_groups)
from neurodeploy.targets.loihi.testnets import digits_net

EX = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("M", [127, 255])
def test_split_is_exact_and_each_group_fits_8_bits(M):
    rng = np.random.default_rng(0)
    for k in range(0, 9):
        top = group_max(M, k)
        w = rng.integers(-top if M == 127 else 0, top + 1, size=2000)
        w[:2] = [top, -top if M == 127 else 0]
        assert group_exponent(w, M) == k  # w holds group_max(M, k) itself: k is the smallest exponent
        hi, lo = split_groups(w, k)
        assert np.array_equal((hi << k) + lo, w)
        assert np.abs(hi).max() <= M
        if k:
            assert lo.min() >= -(1 << (k - 1)) and lo.max() < (1 << (k - 1))
        else:
            assert not lo.any()
    # the smallest exponent: one weight above group_max(M, 3) needs k = 4
    assert group_exponent(np.array([group_max(M, 3) + 1]), M) == 4
    with pytest.raises(NeurodeployError):
        group_exponent(np.array([group_max(M, 8) + 1]), M)


def test_two_groups_widen_conv_weights_within_the_state_bound():
    g = digits_net(seed=0)
    x = np.random.default_rng(0).uniform(0, 1, (16, 1, 8, 8))
    one, two = quantize(g, calibration=x), quantize(g, calibration=x, synapse_groups=2)
    layers = two.metadata["quantization"]["layers"]
    for name in ("conv1", "conv2", "conv3"):
        rep, wq = layers[name], np.asarray(two.nodes[name].weight_q)
        assert int(np.abs(wq).max()) > int(np.abs(np.asarray(one.nodes[name].weight_q)).max())
        k = rep["group_exp"]
        hi, lo = split_groups(wq, k)
        assert rep["synapse_groups"][0] == {"weight_exp": k, "mantissa_range": [int(hi.min()), int(hi.max())]}
        assert np.abs(hi).max() <= 255 and np.abs(lo).max() <= 128
        assert max(rep["worst_case_membrane"], rep["worst_case_step_input"]) < STATE_LIMIT
    assert "group_exp" not in layers["fc"]          # dense layers keep one group (Lava's Dense clips)
    with pytest.raises(NeurodeployError, match="synapse-groups"):
        quantize(g, calibration=x, synapse_groups=3)


@pytest.mark.lava
def test_lava_runs_the_two_group_net_exactly(tmp_path):
    from neurodeploy.targets.loihi.runner import import_lava
    import_lava()
    g = digits_net(seed=2)
    x = np.random.default_rng(5).uniform(0, 1, (4, 1, 8, 8))
    t = LoihiTarget()
    q = t.quantize(g, x, synapse_groups=2)
    assert max(int(np.abs(np.asarray(q.nodes[n].weight_q)).max()) for n in ("conv1", "conv2")) > 255
    t.emit(q, tmp_path)
    side = json.loads((tmp_path / "loihi.json").read_text())
    assert side["quantization"]["layers"]["conv2"]["synapse_groups"][1]["weight_exp"] == 0
    lava = run_artifact(tmp_path, x, runtime="lava")
    sim = run_artifact(tmp_path, x, runtime="sim")
    ref = ops.evaluate(q, x, quantized=True)
    for k in sim.counts:
        assert torch.equal(lava.counts[k], sim.counts[k]), k
        assert torch.equal(lava.spikes[k], sim.spikes[k]), k
    for k in ("if1", "if2", "if3"):
        assert torch.equal(lava.counts[k].reshape(ref[k].shape).to(ref[k].dtype), ref[k]), k
    assert sum(int(v.sum()) for v in lava.counts.values()) > 0


def _final_agreement(q, x) -> float:
    last = weight_neuron_pairs(q)[-1][1]
    with torch.inference_mode():
        return float((ops.evaluate(q, x, quantized=True)[last] == ops.evaluate(q, x, quantized=False)[last])
                     .double().mean())


def _probe_agreement(q, x) -> float:
    """verify's end task: the checkpoint's linear probe on features = counts / norm, program vs model."""
    from neurodeploy.verify import end_task_agreement

    probe = torch.load(EX / "digits_chain.pt", weights_only=True)["probe"]
    last = weight_neuron_pairs(q)[-1][1]
    norm = q.metadata["neuron_norms"][last]  # the model's features are counts / 4 (the norm folds away in the graph)
    with torch.inference_mode():
        ref, got = (ops.evaluate(q, x, quantized=k)[last] / norm for k in (False, True))
    return end_task_agreement(ref.numpy(), got.numpy(), probe)["agreement"]


def test_digits_train_is_the_training_split():
    import sys
    sys.path.insert(0, str(EX))
    from digits_sfa import load_digits_split

    assert np.array_equal(np.load(EX / "digits_train.npz")["x"], load_digits_split()[0])


def test_digits_chain_two_groups_reach_the_issue_goal_on_held_out_images():
    """Issue 11's goal on Loihi: calibrated on the training images (digits_train, no labels), >= 97% of
    the final layer's counts on digits_test (360, never seen) equal the model's and the end task agrees
    on >= 99.5%; one group stays near 93% (the 8-bit limit)."""
    p = api.prepare(EX / "digits_chain.pt", arch=f"{EX / 'digits_chain.py'}:build_model")
    xc, xt = np.load(EX / "digits_train.npz")["x"], np.load(EX / "digits_test.npz")["x"]
    two, _, scale = loihi_cal.calibrate(p.canonical, xc, synapse_groups=2)
    one, _, _ = loihi_cal.calibrate(p.canonical, xc)
    assert scale == 16.0                                  # the digits' exact input scale (x * 16 integers)
    assert _final_agreement(two, xt) >= 0.97
    assert _probe_agreement(two, xt) >= 0.995
    assert _final_agreement(one, xt) < 0.95


def test_cli_synapse_groups(tmp_path):
    args = [str(EX / "digits_chain.pt"), "--arch", f"{EX / 'digits_chain.py'}:build_model"]
    r = CliRunner().invoke(main, ["compile", *args, "--target", "sim", "--synapse-groups", "2",
                                  "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--synapse-groups applies to --target loihi only" in r.output
    assert not (tmp_path / "o").exists()
    rec = tmp_path / "rec.json"
    r = CliRunner().invoke(main, ["calibrate", *args, "--target", "loihi", "--synapse-groups", "2",
                                  "--calibration", str(EX / "digits_calib.npz"), "-o", str(rec)])
    assert r.exit_code == 0, r.output
    assert json.loads(rec.read_text())["quantizer_options"] == {"synapse_groups": 2}
    r = CliRunner().invoke(main, ["compile", *args, "--target", "loihi", "--calibration-record", str(rec),
                                  "-o", str(tmp_path / "o1")])   # without the record's options: refused
    assert r.exit_code == 2 and "quantiser options" in r.output
    r = CliRunner().invoke(main, ["compile", *args, "--target", "loihi", "--synapse-groups", "2",
                                  "--calibration-record", str(rec), "-o", str(tmp_path / "o2")])
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "o2" / "loihi.json").read_text())
    assert side["quantization"]["layers"]["encoder.conv1"]["synapse_groups"][0]["weight_exp"] >= 1


def test_count_target_options_are_refused_for_time_stepped_models(tmp_path):
    """--synapse-groups (and Speck's bias/barrier options) mean nothing for a LIF model: refused, not ignored."""
    args = [str(EX / "digits_lif.pt"), "--arch", f"{EX / 'digits_lif.py'}:build_encoder", "--timesteps", "6",
            "--input-layout", "static", "--data", str(EX / "digits_test.npz")]
    r = CliRunner().invoke(main, ["compile", *args, "--target", "loihi", "--synapse-groups", "2",
                                  "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--synapse-groups" in r.output and "time-stepped" in r.output
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(main, ["verify", *args, "--target", "speck", "--bias-mode", "initial"])
    assert r.exit_code == 2 and "--bias-mode" in r.output
