"""Loihi target without Lava: quantisation rules, lowering, NetX file layout, and the simulator's
Loihi mode against the closed-form integer model."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from neurodeploy import ir, ops
from neurodeploy.errors import NeurodeployError, UnsupportedOpError
from neurodeploy.targets import get_target
from neurodeploy.targets.loihi import LoihiTarget, run_artifact
from neurodeploy.targets.loihi.netx import read_net, write_net
from neurodeploy.targets.loihi.program import lower, quantize_input
from neurodeploy.targets.loihi.quantize import netx_dense_weights
from neurodeploy.targets.loihi.simulate import integer_model, simulate_program
from neurodeploy.targets.loihi.testnets import digits_net, half_even_net, strided_net


def test_package_works_without_lava():
    code = (
        "import sys; sys.modules['lava'] = None\n"
        "import numpy as np\n"
        "from neurodeploy.targets import get_target\n"
        "from neurodeploy.targets.loihi.testnets import digits_net\n"
        "from neurodeploy.errors import NeurodeployError\n"
        "t = get_target('loihi'); g = digits_net()\n"
        "x = np.random.default_rng(0).uniform(0, 1, (2, 1, 8, 8))\n"
        "r = t.simulate(g, x); assert sum(int(v.sum()) for v in r.counts.values()) > 0\n"
        "import tempfile, pathlib\n"
        "d = pathlib.Path(tempfile.mkdtemp()); t.emit(t.quantize(g, x), d)\n"
        "try:\n    t.run_artifact(d, x, runtime='lava')\nexcept NeurodeployError as e:\n"
        "    assert 'install_lava.py' in str(e); print('OK')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("make,seed", [(digits_net, 0), (digits_net, 7), (strided_net, 1),
                                       (strided_net, 4)])
def test_simulator_equals_integer_model(make, seed):
    g = make(seed)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (16,) + tuple(g.nodes["input"].input_shape))
    q = LoihiTarget().quantize(g, x)
    rep = q.metadata["quantization"]
    assert not any(l.get("may_wrap") or l.get("may_saturate") for l in rep["layers"].values())
    prog = lower(q)
    xi = quantize_input(prog, x)
    sim = simulate_program(prog, xi)
    ref = ops.evaluate(q, torch.as_tensor(x), quantized=True)
    closed = integer_model(prog, xi)
    for spec in prog.layers:
        assert torch.equal(sim.counts[spec.name], closed[spec.name]), spec.name
        assert torch.equal(sim.counts[spec.name], ref[spec.name].to(torch.int64)), spec.name
        # spikes only inside the layer's window, as a burst from the window start
        r = sim.spikes[spec.name].reshape(16, prog.period, -1)
        lo, hi = spec.window_start - 1, spec.window_start - 1 + spec.D
        assert not r[:, :lo].any() and not r[:, hi:].any()
        n = r.sum(dim=1)
        expect = torch.arange(prog.period).view(1, -1, 1) - lo < n.unsqueeze(1)
        expect &= torch.arange(prog.period).view(1, -1, 1) >= lo
        assert torch.equal(r, expect)
    assert prog.period == 1 + sum(s.D for s in prog.layers)


def test_quantisation_rules_and_report():
    g = digits_net(0)
    x = np.random.default_rng(0).uniform(0, 1, (8, 1, 8, 8))
    q = LoihiTarget().quantize(g, x)
    rep = q.metadata["quantization"]
    assert round(x.max() * q.nodes["input"].scale_q) == 255      # non-negative input: 8-bit
    for name in ("conv1", "conv2", "conv3", "fc"):
        wq = q.nodes[name].weight_q
        # mixed sign: ±127 mantissa (the first layer's is lowered so 8-bit input × weights fits)
        assert np.abs(wq).max() == 127 or "state_guard_scale" in rep["layers"][name]
        assert np.abs(wq).max() <= 127
        lay = rep["layers"][name]
        for k in ("scale", "weights_rounded_to_zero", "weights_clipped", "threshold_q", "vThMant",
                  "worst_case_membrane", "weight_exp", "mantissa_range"):
            assert k in lay, (name, k)
        assert lay["vThMant"] == lay["threshold_q"] - 1
    assert rep["layers"]["fc"]["netx_exact"] is True
    assert rep["layers"]["fc"]["weight_exp"] == -1                # NetX's LSB-preserving shift
    assert rep["timesteps_per_sample"] == 17
    # tiny weights next to a big threshold: threshold at the 17-bit limit, weights scaled down
    g2 = digits_net(0)
    g2.nodes["fc"].weight = g2.nodes["fc"].weight * 1e-4
    q2 = LoihiTarget().quantize(g2, x)
    l2 = q2.metadata["quantization"]["layers"]["fc"]
    assert l2["threshold_at_limit"] and l2["vThMant"] == 131071
    assert np.abs(q2.nodes["fc"].weight_q).max() < 127
    # weights that round to zero are counted
    g3 = digits_net(0)
    g3.nodes["conv2"].weight[0, 0, 0, 0] = 1e-6
    q3 = LoihiTarget().quantize(g3, x)
    assert q3.metadata["quantization"]["layers"]["conv2"]["weights_rounded_to_zero"] >= 1


def test_netx_weight_emulation():
    w = np.array([[-127, 3, 5], [1, -1, 127]])
    d = netx_dense_weights(w)
    assert d["exact"] and d["weight_exp"] == -1 and d["num_weight_bits"] == 8
    assert np.array_equal(d["stored"] >> 1, w)
    assert netx_dense_weights(np.array([[255, 1], [3, 0]]))["exact"]
    assert netx_dense_weights(np.array([[200, -1], [3, 0]]))["exact"]        # > 127 still exact
    assert not netx_dense_weights(np.array([[300, -1], [3, 0]]))["exact"]    # NetX clips to 254
    assert not netx_dense_weights(np.array([[-128, 0], [-3, -1]]))["exact"]  # sign-mode mismatch
    with pytest.raises(NeurodeployError, match="all weights"):
        netx_dense_weights(np.zeros((2, 2), dtype=int))


def test_netx_file_layout_and_roundtrip(tmp_path):
    g = strided_net(1)
    x = np.random.default_rng(1).normal(0, 1, (4, 2, 9, 9))
    q = LoihiTarget().quantize(g, x)
    prog = lower(q)
    write_net(prog, tmp_path / "n.net")
    with h5py.File(tmp_path / "n.net") as f:
        types = [f["layer"][k]["type"][0].decode() for k in sorted(f["layer"], key=int)]
        assert types == ["input", "conv", "conv", "conv", "conv", "flatten", "dense", "dense"]
        c1 = f["layer/1"]
        assert tuple(c1["shape"][()]) == (6, 5, 5) and tuple(c1["stride"][()]) == (2, 2)
        assert c1["neuron/type"][0] == b"CUBA" and int(c1["neuron/iDecay"][()]) == 4096
        assert int(c1["neuron/vDecay"][()]) == 0
    back = read_net(tmp_path / "n.net")
    assert back.period == prog.period
    xi = quantize_input(prog, x)
    a, b = simulate_program(prog, xi), simulate_program(back, xi)
    for k in a.counts:
        assert torch.equal(a.counts[k], b.counts[k])


def test_emit_and_run_artifact_sim(tmp_path):
    g = digits_net(3)
    x = np.random.default_rng(3).uniform(0, 1, (3, 1, 8, 8))
    t = get_target("loihi")
    out = tmp_path / "art"
    paths = t.emit(g, out, calibration=x)
    side = json.loads(paths["loihi_sidecar"].read_text())
    assert side["schedule"]["timesteps_per_sample"] == 17
    assert side["schedule"]["windows"]["if1"] == [2, 5]
    assert side["neuron_model"]["hardware"].startswith("CPU simulation only")
    assert "quantization" in side and side["input"]["message_bits"] == 8
    r = run_artifact(out, x, runtime="sim")
    direct = t.simulate(g, x, calibration=x)
    for k in direct.counts:
        assert torch.equal(r.counts[k], direct.counts[k])
    assert r.spike_times("if1")[0][0] >= 2
    with pytest.raises(NeurodeployError, match="runtime"):
        run_artifact(out, x, runtime="speck")


def test_rejections_name_the_layer():
    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(4,)))
    g.add("fc", ir.Linear(weight=rng.normal(size=(3, 4))), "input")
    g.add("if", ir.IFNeuron(), "fc")
    g.add("fc2", ir.Linear(weight=rng.normal(size=(2, 3))), "if")
    g.add("output", ir.Output(), "fc2")
    ir.infer_shapes(g)
    t = LoihiTarget()
    probs = t.check(g)
    assert any("fc2" in p and "IF neuron" in p for p in probs)
    with pytest.raises(UnsupportedOpError, match="fc2"):
        t.emit(g, "/tmp/never-written-loihi")
    # a residual Add
    g2 = ir.Graph()
    g2.add("input", ir.Input(input_shape=(4,)))
    g2.add("fc", ir.Linear(weight=rng.normal(size=(4, 4))), "input")
    g2.add("if", ir.IFNeuron(), "fc")
    g2.add("fc2", ir.Linear(weight=rng.normal(size=(4, 4))), "if")
    g2.add("if2", ir.IFNeuron(), "fc2")
    g2.add("add", ir.Add(), ("if", "if2"))
    g2.add("output", ir.Output(), "add")
    ir.infer_shapes(g2)
    probs = t.check(g2)
    assert any("'add'" in p and "Add" in p for p in probs)
    assert any("fan-out" in p for p in probs)


def test_half_even_rounding_is_reported():
    g = digits_net(0)
    g.nodes["if2"].rounding = "half_even"
    q = LoihiTarget().quantize(g, np.random.default_rng(0).uniform(0, 1, (2, 1, 8, 8)))
    assert any("half" in w and "if2" in w for w in q.metadata["quantization"]["warnings"])


def test_half_even_ties_exact_in_loihi_mode():
    g = half_even_net(0)
    x = np.random.default_rng(0).integers(0, 5, (64, 10))
    prog = lower(g)
    assert all(s.half_even for s in prog.layers)
    sim = simulate_program(prog, quantize_input(prog, x))
    ref = ops.evaluate(g, torch.as_tensor(x, dtype=torch.float64), quantized=True)
    cur = ops.evaluate(g, torch.as_tensor(x, dtype=torch.float64), quantized=True)["fc1"]
    assert int(((cur + 2) % 4 == 0).sum()) > 10            # the test really has exact ties
    for k in ("if1", "if2"):
        assert torch.equal(sim.counts[k], ref[k].to(torch.int64)), k


def test_graded_mode_counts_and_traffic():
    from neurodeploy.targets.loihi.simulate import traffic
    g = digits_net(0)
    x = np.random.default_rng(0).uniform(0, 1, (8, 1, 8, 8))
    t = LoihiTarget()
    q = t.quantize(g, x)
    a, b = t.simulate(q, x), t.simulate(q, x, mode="graded")
    assert b.period == 5 and a.period == 17
    for k in a.counts:
        assert torch.equal(a.counts[k], b.counts[k])
        assert torch.equal(b.spikes[k].sum(dim=1), b.counts[k])   # payload = count, one message
    tr = traffic(lower(q), a)["total"]
    assert tr["spike_messages"] >= tr["graded_messages"] > 0
    assert tr["spike_synops"] >= tr["graded_synops"] > 0
