"""Loihi target against Lava's own fixed-point CPU simulation (lava-nc 0.10.0 / lava-dl 0.6.0,
patched by scripts/install_lava.py). Not skipped in CI: Lava is part of the install. Lava runs are
kept short (few samples, few timesteps): the whole file takes ~30 s on 2 cores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neurodeploy import ir
from neurodeploy.errors import NeurodeployError
from neurodeploy.targets.loihi import LoihiTarget, run_artifact, verify_lava
from neurodeploy.targets.loihi.program import lower, quantize_input
from neurodeploy.targets.loihi.quantize import (dense_synapse, lava_clip_truncate,
                                                netx_dense_weights)
from neurodeploy.targets.loihi.simulate import _Synapse, simulate_program
from neurodeploy.targets.loihi.testnets import digits_net, half_even_net, strided_net

pytestmark = pytest.mark.lava


@pytest.fixture(autouse=True)
def _lava_imported():
    """Import Lava through the runner (tolerates a multiprocessing context set by earlier tests,
    which makes a plain `import lava...` fail with "context has already been set")."""
    from neurodeploy.targets.loihi.runner import import_lava
    import_lava()


def _assert_exact(rep):
    assert rep["exact"], {k: (v["count_mismatches"], v["spike_time_mismatches"])
                          for k, v in rep["layers"].items()}
    for name, lay in rep["layers"].items():
        assert lay["count_mismatches"] == 0 and lay["spike_time_mismatches"] == 0, name
        assert lay["spikes_lava"] == lay["spikes_sim"]


def test_digits_net_lava_equals_simulator():
    g = digits_net(seed=0)
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 8, 8))
    rep = verify_lava(g, x)
    _assert_exact(rep)
    assert rep["timesteps_per_sample"] == 1 + 4 * 4
    # every layer actually spikes (the comparison is not vacuous)
    assert all(lay["spikes_lava"] > 0 for lay in rep["layers"].values())
    # with no saturation the chip arithmetic equals the quantised integer model exactly
    for lay in rep["layers"].values():
        assert lay["vs_integer_model_quantized"]["mismatches"] == 0
        assert lay["vs_quantized_closed_form"]["mismatches"] == 0
        assert "lava_vs_integer_model" in lay


def test_strided_net_artifact_lava_and_sim(tmp_path):
    g = strided_net(seed=1)
    x = np.random.default_rng(3).normal(0, 1, (3, 2, 9, 9))
    t = LoihiTarget()
    assert t.check(g) == []
    q = t.quantize(g, x)
    paths = t.emit(q, tmp_path)
    assert (tmp_path / "network.net").is_file() and (tmp_path / "loihi.json").is_file()
    side = json.loads((tmp_path / "loihi.json").read_text())
    assert side["schedule"]["timesteps_per_sample"] == 1 + 4 + 3 + 12 + 4 + 4 + 4
    assert side["neuron_model"]["name"] == "sfa_if_subtractive_layer_sync"
    assert any(l["passthrough_pool"] for l in side["layers"])  # SumPool lowered to a fixed conv
    assert set(paths) == {"netx", "loihi_sidecar"}
    lava = run_artifact(tmp_path, x, runtime="lava")
    sim = run_artifact(tmp_path, x, runtime="sim")
    assert set(lava.counts) == set(sim.counts)
    for k in sim.counts:
        assert torch.equal(lava.counts[k], sim.counts[k]), k
        assert torch.equal(lava.spikes[k], sim.spikes[k]), k
    assert sum(int(v.sum()) for v in lava.counts.values()) > 0
    # the target's simulate() is the same simulator on the same quantised graph
    direct = t.simulate(q, x)
    for k in sim.counts:
        assert torch.equal(direct.counts[k], sim.counts[k])
    # the .net is a plain NetX file: NetX builds it (stock models) without neurodeploy
    from lava.lib.dl import netx
    net = netx.hdf5.Network(net_config=str(tmp_path / "network.net"), input_message_bits=8)
    assert len(net.layers) == len(side["layers"])


# -- quantisation edge cases against Lava's own Dense / Conv processes ---------------------------

_DENSE_CASES = {
    "odd_mixed_netx": (np.array([[-127, 125, 3, -1, 0, 99], [1, -3, 5, -7, 9, -11],
                                 [127, -128, 1, 1, -1, 63], [0, 0, 0, 0, 0, 1]]), "netx"),
    "odd_mixed_plain_dense": (np.array([[-127, 125, 3, -1, 0, 99], [1, -3, 5, -7, 9, -11],
                                        [127, -128, 1, 1, -1, 63], [0, 0, 0, 0, 0, 1]]), "plain"),
    "mixed_gt127": (np.array([[200, -5, 3, -1, 7, 1], [-9, 11, 13, 15, -17, 19],
                              [1, 1, 1, 1, 1, -1], [-128, 0, 0, 0, 5, 0]]), "netx"),
    "mixed_gt254_clipped": (np.array([[300, -5, 3, -1, 7, 1], [-9, 11, 13, 15, -300, 19],
                                      [1, 1, 1, 1, 1, -1], [3, 0, 0, 0, 5, 0]]), "netx"),
    "excitatory_255": (np.array([[255, 3, 1, 0, 7, 1], [9, 11, 13, 15, 17, 19],
                                 [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 5, 0]]), "netx"),
    "nonpositive_min_-128": (np.array([[-128, -5, -3, 0, -7, -1], [-9, -11, -13, -15, -17, -19],
                                       [0, 0, 0, 0, -1, 0], [-1, -1, -1, -1, -1, -1]]), "netx"),
    "inhibitory_-256": (np.array([[-256, -5, -3, -2, -7, -1], [-9, -11, -13, -15, -17, -19],
                                  [-2, -3, -4, -5, -1, -6], [-1, -1, -1, -1, -1, -1]]), "netx"),
    "excitatory_gt255": (np.array([[300, 3, 1, 0, 7, 1], [9, 11, 13, 15, 17, 19],
                                   [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 5, 0]]), "netx"),
}


def test_dense_weight_edge_cases_match_lava():
    """Dense synapses built exactly as NetX builds them (lava-dl's optimize_weight_bits ->
    Lava Dense(weights, weight_exp, num_weight_bits)), plus a plain Dense that loses the LSB of
    odd mixed-sign weights, all fed the same binary spike trains in one Lava run; Lava's a_out
    must equal the emulation used by the simulator, step by step."""
    from lava.lib.dl.netx.utils import optimize_weight_bits
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io
    from lava.proc.dense.process import Dense

    T, n_in = 8, 6
    rng = np.random.default_rng(5)
    spikes = (rng.random((n_in, T)) < 0.6).astype(np.int32)
    spikes[:, 1] = 1  # one step with every input active (largest sums)
    src = io.source.RingBuffer(data=spikes)
    probes = {}
    for name, (w, mode) in _DENSE_CASES.items():
        if mode == "netx":
            with np.errstate(all="ignore"):
                ws, nwb, wexp, _ = optimize_weight_bits(w.copy())
            proc = Dense(weights=ws, weight_exp=wexp, num_weight_bits=nwb)
            emu = netx_dense_weights(w)
            stored, e = emu["stored"], emu["weight_exp"]
        else:
            proc = Dense(weights=w)
            stored, e = lava_clip_truncate(w, 8), 0
        sink = io.sink.RingBuffer(shape=(w.shape[0],), buffer=T)
        src.s_out.connect(proc.s_in)
        proc.a_out.connect(sink.a_in)
        probes[name] = (sink, stored, e, w)
    try:
        src.run(condition=RunSteps(num_steps=T), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        got = {k: p[0].data.get().astype(np.int64) for k, p in probes.items()}
    finally:
        src.stop()
    for name, (_, stored, e, w) in probes.items():
        want = np.zeros((w.shape[0], T), dtype=np.int64)
        want[:, 1:] = dense_synapse(stored, e, spikes.T[:-1]).numpy().T  # one step of delay
        assert np.array_equal(got[name], want), (name, got[name], want)
    # the documented quirks, as Lava shows them
    plain = got["odd_mixed_plain_dense"][:, 1:]
    exact = (spikes.T[:-1] @ _DENSE_CASES["odd_mixed_plain_dense"][0].T).T
    assert not np.array_equal(plain, exact)               # plain Dense loses the LSB
    assert np.array_equal(got["odd_mixed_netx"][:, 1:], exact)   # NetX's weight_exp keeps it
    assert np.array_equal(got["mixed_gt127"][:, 1:],
                          (spikes.T[:-1] @ _DENSE_CASES["mixed_gt127"][0].T).T)
    assert not netx_dense_weights(_DENSE_CASES["excitatory_gt255"][0])["exact"]
    assert not netx_dense_weights(_DENSE_CASES["nonpositive_min_-128"][0])["exact"]


def test_conv_edge_cases_match_lava():
    """Lava Conv process (fixed_pt) with odd mixed-sign weights > 127 and graded input: equals
    the simulator's conv synapse (file weights, 24-bit wrap), stride 2 and padding included."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io
    from lava.proc.conv.process import Conv

    from neurodeploy.targets.loihi.program import LayerSpec

    rng = np.random.default_rng(7)
    w = rng.integers(-300, 301, (3, 2, 3, 3)) | 1          # odd, some beyond 8 bits
    w[0, 0, 0, 0] = 4000                                    # large enough to exercise the wrap
    T = 4
    x = rng.integers(-128, 128, (T, 2, 7, 6))
    spec = LayerSpec(name="c", kind="conv", in_shape=(2, 7, 6), out_shape=(3, 4, 3), weight=w,
                     bias=None, vth=0, v_init=0, D=1, stride=(2, 2), padding=(1, 1))
    lava_w = w[:, :, ::-1, ::-1].transpose(0, 3, 2, 1)      # NetX's layout (C_out, W, H, C_in)
    conv = Conv(weight=lava_w, input_shape=(6, 7, 2), stride=(2, 2), padding=(1, 1),
                num_message_bits=16)
    src = io.source.RingBuffer(data=x.transpose(3, 2, 1, 0).astype(np.int32))  # (W,H,C,T)
    sink = io.sink.RingBuffer(shape=conv.a_out.shape, buffer=T)
    src.s_out.connect(conv.s_in)
    conv.a_out.connect(sink.a_in)
    try:
        src.run(condition=RunSteps(num_steps=T), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        got = sink.data.get().astype(np.int64).transpose(3, 2, 1, 0)  # (T, C, H, W)
    finally:
        src.stop()
    want = _Synapse(spec)(torch.as_tensor(x[:-1])).numpy()
    assert np.array_equal(got[1:], want)
    assert np.array_equal(got[0], np.zeros_like(got[0]))


def _hand_quantized(wq, theta_q, v_init_q=0, bias_q=None, D=4, n_in=None):
    """A quantised 1-layer dense graph with given integer parameters (spike-count input)."""
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(wq.shape[1],), is_spikes=True, scale_q=1))
    g.add("fc", ir.Linear(weight=wq.astype(float), weight_q=wq, bias_q=bias_q), "input")
    g.add("if", ir.IFNeuron(threshold=float(theta_q), max_spikes=D, threshold_q=theta_q,
                            v_init_q=v_init_q), "fc")
    g.add("output", ir.Output(), "if")
    g.metadata["quantization"] = {"target": "loihi", "input_message_bits": 16}
    return ir.infer_shapes(g)


def test_threshold_at_bit_limit_and_saturation_match_lava(tmp_path):
    """vThMant at its 17-bit limit (131071) and membranes driven into 24-bit saturation: Lava and
    the simulator agree bit for bit (and both deviate from the unbounded integer model where v
    saturates, which the quantisation report flags)."""
    wq = np.array([[127, -3, 5, 1], [127, 127, 127, 127], [-127, 1, 1, 1], [64, 64, 64, 64]])
    g = _hand_quantized(wq, theta_q=131072, v_init_q=65536, bias_q=np.array([0, 4095, 0, -4096]))
    x = np.array([[300, 10, 10, 10], [1000, 1000, 1000, 1000], [0, 0, 0, 0],
                  [2000, -50, 7, 900]])
    t = LoihiTarget()
    t.emit(g, tmp_path)
    lava = run_artifact(tmp_path, x, runtime="lava")
    sim = run_artifact(tmp_path, x, runtime="sim")
    assert torch.equal(lava.spikes["if"], sim.spikes["if"])
    assert torch.equal(lava.counts["if"], sim.counts["if"])
    assert int(sim.counts["if"].sum()) > 0
    prog = lower(g)
    assert prog.layers[0].vth == 131071


def test_half_even_ties_match_lava(tmp_path):
    g = half_even_net(1)
    x = np.random.default_rng(1).integers(0, 5, (4, 10))
    LoihiTarget().emit(g, tmp_path)
    lava = run_artifact(tmp_path, x, runtime="lava")
    sim = run_artifact(tmp_path, x, runtime="sim")
    from neurodeploy import ops
    ref = ops.evaluate(g, torch.as_tensor(x, dtype=torch.float64), quantized=True)
    for k in ("if1", "if2"):
        assert torch.equal(lava.spikes[k], sim.spikes[k]), k
        assert torch.equal(lava.counts[k], ref[k].to(torch.int64)), k


def test_graded_spike_mode_matches_lava_and_spike_mode():
    g = digits_net(seed=4)
    x = np.random.default_rng(4).uniform(0, 1, (3, 1, 8, 8))
    rep = verify_lava(g, x, mode="graded")
    _assert_exact(rep)
    assert rep["mode"] == "graded" and rep["timesteps_per_sample"] == 1 + 4
    for lay in rep["layers"].values():      # same counts as the unary-spike schedule
        assert lay["vs_integer_model_quantized"]["mismatches"] == 0


def test_lava_import_after_multiprocessing_context_was_set():
    import subprocess
    import sys
    code = ("import multiprocessing as mp; mp.get_start_method()\n"   # sets the context
            "from neurodeploy.targets.loihi.runner import import_lava; import_lava(); print('OK')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_lava_worker_error_is_surfaced(tmp_path):
    g = digits_net(seed=2)
    x = np.random.default_rng(0).uniform(0, 1, (1, 1, 8, 8))
    t = LoihiTarget()
    t.emit(t.quantize(g, x), tmp_path)
    from neurodeploy.targets.loihi import load_artifact
    from neurodeploy.targets.loihi.runner import run_lava

    prog, _ = load_artifact(tmp_path)
    prog.layers[1].window_start = "not-a-number"  # breaks inside the Lava worker process
    with pytest.raises(NeurodeployError) as ei:
        run_lava(tmp_path / "network.net", prog, quantize_input(prog, x))
    msg = str(ei.value)
    assert "Lava run failed" in msg
    assert "invalid literal for int()" in msg and "Traceback" in msg
