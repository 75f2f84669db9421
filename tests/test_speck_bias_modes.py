"""Speck quantisation defects of issue 13 (part 6): where the bias lives decides what limits the scale."""

import json
import warnings

import numpy as np
import pytest

from neurodeploy.errors import NeurodeployError
from neurodeploy.targets import get_target
from neurodeploy.targets.speck import examples
from neurodeploy.targets.speck.quantize import SpeckQuantizationWarning, _pick_calibrated_scale, quantize


def q(g, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        return quantize(g, *a, **k)


def big_bias_chain():
    """One layer whose bias (±3) is 6x its largest weight (0.5): the old 8-bit bias rule gave S = 127/3."""
    g = examples.chain([np.array([[0.5, -0.25, 0.1], [0.2, 0.3, -0.4]])], in_shape=(3,))
    g.nodes["fc0"].bias = np.array([3.0, -3.0])
    return g


def test_initial_mode_bias_does_not_limit_the_weights():
    qg = q(big_bias_chain())
    rep = qg.metadata["quantization"]["layers"]["fc0"]
    assert qg.metadata["quantization"]["bias_mode"] == "initial"
    assert "bias" not in rep["limits"]  # the bias lives in the 16-bit initial value ...
    assert rep["limited_by"] == "weights" and rep["max_abs_weight_q"] == 127
    S = rep["scale"]
    assert S == pytest.approx(127 / 0.5)
    # ... which must still fit: v_init + b in 16 bits
    init = qg.nodes["if0"].v_init_q + qg.nodes["fc0"].bias_q
    assert np.all(np.abs(init) <= 32767)
    assert rep["limits"]["initial_value"] == pytest.approx(32767 / (0.5 + 3.0))


def test_initial_value_limit_binds_and_is_reported():
    g = big_bias_chain()
    g.nodes["fc0"].bias = np.array([200.0, -3.0])  # v_init + b = 200.5: 16 bits allow S <= 163
    rep = q(g).metadata["quantization"]["layers"]["fc0"]
    assert rep["limited_by"] == "initial_value"
    assert rep["scale"] == pytest.approx(32767 / 200.5)


def test_leak_mode_keeps_the_8_bit_bias_rule():
    qg = q(big_bias_chain(), bias_mode="leak")
    rep = qg.metadata["quantization"]["layers"]["fc0"]
    assert rep["limited_by"] == "bias" and rep["scale"] == pytest.approx(127 / 3.0)
    assert np.abs(qg.nodes["fc0"].bias_q).max() <= 128
    assert qg.metadata["quantization"]["bias_bits"] == 8


@pytest.mark.parametrize("mode,bits", [("leak", 16), ("leak", 9), ("initial", 17), ("initial", 1)])
def test_bias_wider_than_its_register_is_refused(mode, bits):
    with pytest.raises(NeurodeployError, match=f"bias_bits={bits}") as e:
        quantize(big_bias_chain(), bias_mode=mode, bias_bits=bits)
    assert e.value.fix


def test_unknown_bias_mode_is_refused():
    with pytest.raises(NeurodeployError, match="bias_mode"):
        quantize(big_bias_chain(), bias_mode="slow")


def test_forced_scale_cannot_overflow_a_leak_bias():
    with pytest.raises(NeurodeployError, match=r"8-bit bias is \[-300, 300\]"):
        q(big_bias_chain(), bias_mode="leak", scales={"fc0": 100.0})
    assert q(big_bias_chain(), scales={"fc0": 100.0}).nodes["fc0"].bias_q.tolist() == [300, -300]  # initial: fits


def test_leak_config_refuses_a_graph_quantised_for_initial_values(tmp_path):
    qg = q(big_bias_chain())  # bias_q = ±762: fine in the initial value, not in an 8-bit chip bias
    with pytest.raises(NeurodeployError, match="chip biases of 8 bits"):
        get_target("speck").emit(qg, tmp_path / "out", bias_mode="leak")
    assert not (tmp_path / "out").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        get_target("speck").emit(big_bias_chain(), tmp_path / "leak", bias_mode="leak")  # quantised for leak
    c = json.loads((tmp_path / "leak" / "speck_config.json").read_text())
    core = next(iter(c["cores"].values()))
    assert c["bias_mode"] == "leak" and max(abs(b) for b in core["biases"]) <= 128 and core["leak_enable"]


def test_calibration_keeps_full_scale_unless_a_smaller_one_is_clearly_better():
    rng = np.random.default_rng(0)
    e0 = rng.uniform(0.10, 0.12, 64)
    noise = [(100.0, e0), (84.0, e0 - 0.001), (70.0, e0 + 0.002)]  # 1% better: rounding noise
    assert _pick_calibrated_scale(noise, 100.0) == (100.0, "")
    saturating = [(100.0, e0), (84.0, e0 * 0.5 + rng.normal(0, 0.001, 64))]  # halves the error
    S, why = _pick_calibrated_scale(saturating, 100.0)
    assert S == 84.0 and "full-range scale 100" in why


def test_leak_mode_says_the_simulator_does_not_model_the_leak():
    with pytest.warns(SpeckQuantizationWarning, match="slow-clock tick"):
        qg = quantize(big_bias_chain(), bias_mode="leak")
    assert any("slow-clock" in m for m in qg.metadata["quantization"]["warnings"])


def test_a_layer_using_few_weight_bits_says_which_limit_binds():
    qg = q(big_bias_chain(), bias_mode="leak")  # 8-bit bias of 3 vs weights of 0.5: max |w_q| = 21
    assert qg.metadata["quantization"]["layers"]["fc0"]["max_abs_weight_q"] == 21
    msg = [m for m in qg.metadata["quantization"]["warnings"] if "max |w_q| = 21" in m]
    assert msg and "limited by bias" in msg[0] and "bias allows scale 42.33" in msg[0]
    assert not any("max |w_q|" in m for m in q(big_bias_chain()).metadata["quantization"]["warnings"])
