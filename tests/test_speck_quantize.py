"""Speck quantisation: one shared scale per layer, 8/16-bit ranges, no silently zeroed layers."""

import warnings

import numpy as np
import pytest
import torch

from neurodeploy import ops
from neurodeploy.errors import NeurodeployError
from neurodeploy.targets.speck import examples
from neurodeploy.targets.speck.quantize import SpeckQuantizationWarning, quantize


def q(g, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        return quantize(g, *a, **k)


def test_one_shared_scale_per_layer():
    g = examples.conv_net()
    qg = q(g)
    meta = qg.metadata["quantization"]
    assert meta["target"] == "speck" and meta["weight_bits"] == 8 and meta["state_bits"] == 16
    for lname, rep in meta["layers"].items():
        S = rep["scale"]
        w, wq = g.nodes[lname].weight, qg.nodes[lname].weight_q
        n = qg.nodes[rep["neuron"]]
        assert np.array_equal(wq, np.rint(w * S))  # weights
        assert np.array_equal(qg.nodes[lname].bias_q, np.rint(g.nodes[lname].bias * S))  # bias
        assert n.threshold_q == int(np.rint(1.0 * S)) and n.v_init_q == int(np.rint(0.5 * S))
        assert n.low_threshold_q == -32768 and n.state_bits == 16
        assert wq.min() >= -128 and wq.max() <= 127
        assert max(wq.max(), -wq.min() * 127 / 128) >= 126.5  # the full 8-bit range is used
        assert rep["limited_by"] == "weights"


def test_low_threshold_pitfall_is_not_silent():
    # sinabs' pitfall: min_v_mem = -32768 in *float* units forces the scale to 1 ...
    g = examples.chain([np.full((3, 4), 0.01), np.full((2, 3), 0.3)], in_shape=(4,))
    with pytest.warns(SpeckQuantizationWarning, match="low threshold"):
        with pytest.raises(NeurodeployError, match="round to 0"):
            quantize(g, low_threshold=-32768.0)
    # ... while the default (floor -32768 chosen after the scale) keeps every weight
    qg = q(g)
    assert np.all(qg.nodes["fc0"].weight_q != 0)
    assert qg.nodes["if0"].low_threshold_q == -32768


def test_weights_rounding_to_zero_warn_and_are_reported():
    w = np.array([[1.0, 0.001, -0.5, 0.0]])
    g = examples.chain([w], in_shape=(4,))
    with pytest.warns(SpeckQuantizationWarning, match="1 of 3 non-zero weights round to 0"):
        qg = quantize(g)
    assert qg.metadata["quantization"]["layers"]["fc0"]["zeroed_weights"] == 1
    assert any("round to 0" in m for m in qg.metadata["quantization"]["warnings"])


def test_all_zero_layer_is_an_error():
    g = examples.chain([np.full((2, 4), 1e-4)], in_shape=(4,), thresholds=[1.0])
    with pytest.raises(NeurodeployError, match="round to 0"):
        q(g, scales={"fc0": 100.0})


def test_calibration_never_worse_than_max_scale():
    g = examples.conv_net(weight_scale=0.05, D=8)  # small weights: scale limited by the threshold
    x = examples.random_counts(g, 16, high=8)
    ref = ops.evaluate(g, torch.as_tensor(x), quantized=False)
    q0, q1 = q(g), q(g, calibration=x)
    cal = q1.metadata["quantization"]["calibration"]
    assert set(cal) == {"conv1", "conv2", "fc"}
    e0 = ops.evaluate(q0, torch.as_tensor(x), quantized=True)
    e1 = ops.evaluate(q1, torch.as_tensor(x), quantized=True)
    first = "if1"
    assert (e1[first] - ref[first]).abs().mean() <= (e0[first] - ref[first]).abs().mean()
    for l, c in cal.items():
        assert c["chosen_scale"] <= c["max_scale"] + 1e-9


def test_real_valued_input_rate_code():
    g = examples.conv_net(is_spikes=False)
    x = np.random.default_rng(0).uniform(0, 1, (4, 2, 16, 16))
    qg = q(g, calibration=x, max_input_events=8)
    s_in = qg.nodes["input"].scale_q
    assert s_in == pytest.approx(8 / x.max())
    S = qg.metadata["quantization"]["layers"]["conv1"]["scale"]
    assert np.array_equal(qg.nodes["conv1"].weight_q, np.clip(np.rint(g.nodes["conv1"].weight * S / s_in), -128, 127))
    assert qg.metadata["quantization"]["layers"]["conv2"]["input_scale"] == 1.0
