"""Time-stepped simulator (sync == ops.evaluate exactly; streaming shows the real deviation) and the
sim target (quantise, emit deterministic program, simulate)."""

import hashlib

import numpy as np
import pytest
import torch

from neurodeploy import ir, ops
from neurodeploy.errors import NeurodeployError
from neurodeploy.ir_io import load_graph, save_graph
from neurodeploy.passes import canonicalize, quantize_fixed_point
from neurodeploy.simulator import SimResult, simulate
from neurodeploy.simulator.random_graphs import random_conv_graph, random_input
from neurodeploy.targets import get_target


def _assert_counts_equal(res: SimResult, ref: dict, graph):
    for n in graph.neurons():
        np.testing.assert_array_equal(res.counts[n], ref[n].numpy().astype(np.int64), err_msg=n)


CASES = [(0, False, 1.0), (1, True, 1.0), (2, False, 3.0), (3, True, 2.0), (4, False, 0.3)]


@pytest.mark.parametrize("seed,integer,scale", CASES)
def test_sync_equals_closed_form_float_and_quantized(seed, integer, scale):
    # residual Adds, depthwise conv, sum-pool, mixed-sign (negative) currents, half-even/half-up,
    # D in {1,2,4,8}; large inputs (scale 3) clip at D, integer weights give exact ties
    g = random_conv_graph(seed, integer_weights=integer)
    x = random_input(g, 12, seed, scale=scale, integer=integer)
    res = simulate(g, x)
    _assert_counts_equal(res, ops.evaluate(g, x), g)
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    resq = simulate(q, x)
    _assert_counts_equal(resq, ops.evaluate(q, x), q)
    # the integer program reproduces the float model's counts (no near-ties in these data)
    for n in g.neurons():
        np.testing.assert_array_equal(resq.counts[n], res.counts[n])


def test_sync_clipping_and_negative_currents_exercised():
    g = random_conv_graph(2)
    x = random_input(g, 12, 2, scale=3.0)
    res = simulate(g, x)
    D = {n: g.nodes[n].max_spikes for n in g.neurons()}
    assert any((res.counts[n] == D[n]).any() for n in g.neurons())
    assert all((res.counts[n] == 0).any() for n in g.neurons())
    cur = ops.evaluate(g, x)["c2"]
    assert (cur < 0).any()


@pytest.mark.parametrize("rounding", ["half_up", "half_even", "floor"])
def test_single_neuron_ties(rounding):
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(1,)))
    v0 = 0.0 if rounding == "floor" else 0.5
    g.add("n", ir.IFNeuron(threshold=1.0, v_init=v0, max_spikes=4, rounding=rounding), "x")
    g.add("out", ir.Output(), "n")
    x = np.arange(-2, 12).reshape(-1, 1) / 2.0  # -1, -0.5, 0, 0.5, ..., 5.5 (exact ties)
    res = simulate(g, x, record_trains=True)
    if rounding == "half_up":
        expect = np.clip(np.floor(x + 0.5), 0, 4)
    elif rounding == "half_even":
        expect = np.clip(np.round(x), 0, 4)  # numpy rounds half to even, as torch.round
    else:
        expect = np.clip(np.floor(x), 0, 4)
    np.testing.assert_array_equal(res.counts["n"], expect.astype(np.int64))
    _assert_counts_equal(res, ops.evaluate(g, x), g)
    q = quantize_fixed_point(g, calibration=x)
    np.testing.assert_array_equal(simulate(q, x).counts["n"], expect.astype(np.int64))
    if rounding != "floor":
        assert simulate(q, x).near_ties["n"] > 0


def test_trains_timing_and_latency():
    g = random_conv_graph(1)
    x = random_input(g, 6, 1)
    res = simulate(g, x, record_trains=True)
    assert res.schedule == "sync"
    plain = simulate(g, x)  # the blocked kernel (no trains) steps identically
    for n in g.neurons():
        np.testing.assert_array_equal(plain.counts[n], res.counts[n])
    # latency: sum of D along the longest neuron chain (n1 -> n2a -> n2 -> n4 -> n5)
    chain = ["n1", "n2a", "n2", "n4", "n5"]
    assert res.timesteps == sum(g.nodes[n].max_spikes for n in chain)
    t = 0
    for n in chain:
        assert res.start_step[n] == t
        tr = res.trains[n]
        assert tr.dtype == np.uint8 and tr.shape == (6, res.timesteps) + g.nodes[n].shape
        assert tr.max() <= 1
        np.testing.assert_array_equal(tr.sum(1), res.counts[n])
        D = g.nodes[n].max_spikes
        assert tr[:, :t].sum() == 0 and tr[:, t + D:].sum() == 0  # fires only inside its window
        t += D


def test_batching_and_input_checks():
    g = random_conv_graph(0)
    x = random_input(g, 10, 0)
    a = simulate(g, x)
    b = simulate(g, x, batch_size=3, schedule="sync")
    for n in g.neurons():
        np.testing.assert_array_equal(a.counts[n], b.counts[n])
    s1 = simulate(g, x, schedule="streaming")
    s2 = simulate(g, x, schedule="streaming", batch_size=4, record_trains=True)
    for n in g.neurons():
        np.testing.assert_array_equal(s1.counts[n], s2.counts[n])
    with pytest.raises(NeurodeployError):
        simulate(g, x, schedule="async")
    with pytest.raises(NeurodeployError):
        simulate(g, x[:, :, :4])
    q = quantize_fixed_point(canonicalize(g), input_range=1.0)
    with pytest.raises(NeurodeployError, match="range"):
        simulate(q, x * 10)


def test_outputs_dequantised():
    g = random_conv_graph(0, head=False)  # the Output reads n4's counts
    x = random_input(g, 5, 0)
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    r = simulate(q, x)
    np.testing.assert_array_equal(r.outputs["out"], r.counts["n4"].astype(np.float64))


def test_streaming_layer1_exact_and_budget():
    g = random_conv_graph(3)
    x = random_input(g, 8, 3, scale=2.0)
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    sync = simulate(q, x)
    st = simulate(q, x, schedule="streaming", record_trains=True)
    assert st.schedule == "streaming" and st.near_ties is None
    np.testing.assert_array_equal(st.counts["n1"], sync.counts["n1"])  # Prop. 1: all input at step 0
    for n in q.neurons():
        tr = st.trains[n]
        assert tr.max() <= 1  # one spike per neuron per timestep
        np.testing.assert_array_equal(tr.sum(1), st.counts[n])
        assert st.counts[n].max() <= q.nodes[n].max_spikes
    # quiescent at the end: a fixed horizon beyond it changes nothing
    longer = simulate(q, x, schedule="streaming", horizon=st.timesteps + 5)
    for n in q.neurons():
        np.testing.assert_array_equal(longer.counts[n], st.counts[n])
    # mixed-sign weights: the deeper layers deviate from the layer-synchronous counts
    dev = np.mean(st.counts["n2"] != sync.counts["n2"])
    assert 0.01 < dev < 0.6


def test_streaming_one_step_per_synapse():
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(1,)))
    g.add("l1", ir.Linear(weight=np.array([[1.0]]), bias=None), "x")
    g.add("n1", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=4), "l1")
    g.add("l2", ir.Linear(weight=np.array([[1.0]]), bias=None), "n1")
    g.add("n2", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=4), "l2")
    g.add("out", ir.Output(), "n2")
    x = np.array([[3.2]])
    st = simulate(g, x, schedule="streaming", record_trains=True)
    np.testing.assert_array_equal(st.trains["n1"][0, :, 0][:4], [1, 1, 1, 0])
    np.testing.assert_array_equal(st.trains["n2"][0, :, 0][:5], [0, 1, 1, 1, 0])  # one step later
    sy = simulate(g, x, record_trains=True)
    assert sy.timesteps == 8
    np.testing.assert_array_equal(sy.trains["n2"][0, :, 0], [0, 0, 0, 0, 1, 1, 1, 0])


def test_streaming_equals_sync_without_negative_weights():
    g = random_conv_graph(5)
    for n in g.of_type(*ir.WEIGHT_NODES):
        g.nodes[n].weight = np.abs(g.nodes[n].weight)
        if g.nodes[n].bias is not None:
            g.nodes[n].bias = np.abs(g.nodes[n].bias)
    x = np.abs(random_input(g, 6, 5))
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    a, b = simulate(q, x), simulate(q, x, schedule="streaming")
    for n in q.neurons():
        np.testing.assert_array_equal(a.counts[n], b.counts[n])


def test_float32_program_exact():
    g = canonicalize(random_conv_graph(1))
    x = random_input(g, 8, 1)
    q = quantize_fixed_point(g, calibration=x, accumulator_bits=24)
    _assert_counts_equal(simulate(q, x), ops.evaluate(q, x), q)


def test_sim_target_emit_deterministic_and_roundtrip(tmp_path):
    t = get_target("sim")
    g = canonicalize(random_conv_graph(2))
    x = random_input(g, 6, 2)
    assert t.check(g) == []
    q = t.quantize(g, calibration=x)
    q2 = t.quantize(g, calibration=x)
    hashes = []
    for i, qq in enumerate((q, q2)):
        arts = t.emit(qq, tmp_path / f"o{i}", mapping={})
        assert set(arts) == {"sim_program", "sim_program_description"}
        hashes.append({k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in arts.items()})
    assert hashes[0] == hashes[1]
    # the program is the quantised graph, written once (no byte-identical sim_program.npz beside it)
    assert sorted(p.name for p in (tmp_path / "o0").iterdir()) == ["graph.ir.npz", "sim_program.json"]
    back = load_graph(tmp_path / "o0" / "graph.ir.npz")
    assert back.is_quantized and list(back.nodes) == list(q.nodes) and back.edges == q.edges
    a, b = t.simulate(q, x), t.simulate(back, x, schedule="sync")
    for n in q.neurons():
        np.testing.assert_array_equal(a.counts[n], b.counts[n])
    # numpy can read the arrays directly
    with np.load(tmp_path / "o0" / "graph.ir.npz") as z:
        assert "c1/weight_q.npy" in z.files or any(f.startswith("c1/") for f in z.files)
    p = save_graph(q, tmp_path / "g.npz")
    assert p.read_bytes() == (tmp_path / "o0" / "graph.ir.npz").read_bytes()


def test_sim_target_check_reports_non_canonical():
    g = random_conv_graph(0)
    g.add("ap", ir.AvgPool2d(kernel=2, source="m.pool"), "n4")
    g.add("o2", ir.Output(), "ap")
    v = get_target("sim").check(g)
    assert len(v) == 1 and "m.pool" in v[0]
    with pytest.raises(NeurodeployError):
        get_target("sim").emit(g, "/tmp/never")


def test_conv1d_reshape_linear_chain_and_grouped_conv1d():
    rng = np.random.default_rng(7)
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(2, 4, 4)))
    g.add("c", ir.Conv2d(weight=rng.normal(size=(4, 2, 3, 3)), bias=rng.normal(size=4) * 0.3, padding=1), "x")
    g.add("n", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=4, rounding="half_even"), "c")
    g.add("r", ir.Reshape(target_shape=(4, 16)), "n")
    g.add("c1", ir.Conv1d(weight=rng.normal(size=(4, 2, 3)) * 0.5, bias=None, padding=1, groups=2), "r")
    g.add("lin_chain", ir.Conv1d(weight=rng.normal(size=(6, 4, 1)) * 0.5, bias=rng.normal(size=6)), "c1")
    g.add("n1", ir.IFNeuron(threshold=0.5, v_init=0.25, max_spikes=2), "lin_chain")  # conv -> conv chain
    g.add("f", ir.Flatten(), "n1")
    g.add("fc", ir.Linear(weight=rng.normal(size=(5, 96)) * 0.3, bias=rng.normal(size=5)), "f")
    g.add("n2", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=8), "fc")
    g.add("out", ir.Output(), "n2")
    ir.infer_shapes(g)
    x = rng.normal(size=(16, 2, 4, 4)) * 2
    _assert_counts_equal(simulate(g, x), ops.evaluate(g, x), g)
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    r = simulate(q, x)
    _assert_counts_equal(r, ops.evaluate(q, x), q)
    f = ops.evaluate(g, x)
    for n in g.neurons():
        np.testing.assert_array_equal(r.counts[n], f[n].numpy())  # conv->conv chain keeps precision too
    st = simulate(q, x, schedule="streaming")
    np.testing.assert_array_equal(st.counts["n"], r.counts["n"])


# -- fast exact sync path (float32 filter + exact refinement) ---------------------------------------

def _fast_layers(q):
    from neurodeploy.simulator.core import _Exec
    return set(_Exec(q, True, fast=True).fast)


@pytest.mark.parametrize("seed,integer,scale", CASES + [(6, True, 3.0), (7, False, 1.5)])
def test_fast_sync_equals_time_stepped_path(seed, integer, scale):
    g = random_conv_graph(seed, integer_weights=integer)
    x = random_input(g, 16, seed, scale=scale, integer=integer)
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    assert _fast_layers(q)  # the path is exercised (c1, c4, fc: read only by IF neurons)
    fast = simulate(q, x)
    stepped = simulate(q, x, fast_sync=False)
    trains = simulate(q, x, record_trains=True)  # the time-stepped kernels with recorded trains
    ref = ops.evaluate(q, x)
    _assert_counts_equal(fast, ref, q)
    for n in q.neurons():
        np.testing.assert_array_equal(fast.counts[n], stepped.counts[n])
        np.testing.assert_array_equal(fast.counts[n], trains.counts[n])
        assert fast.counts[n].dtype == np.int64
    assert fast.near_ties == stepped.near_ties == trains.near_ties
    for o in fast.outputs:
        np.testing.assert_array_equal(fast.outputs[o], stepped.outputs[o])


@pytest.mark.parametrize("seed,integer,scale", CASES[:3])
def test_fast_sync_float64_filter_variant(monkeypatch, seed, integer, scale):
    # the float64 closed-form/filter kernel (the float32 one is the default) is exact as well
    import neurodeploy.simulator.core as core
    g = random_conv_graph(seed, integer_weights=integer)
    x = random_input(g, 16, seed, scale=scale, integer=integer)
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    monkeypatch.setattr(core, "_CLOSED_FORM_F32", False)
    r = simulate(q, x)
    _assert_counts_equal(r, ops.evaluate(q, x), q)
    assert r.near_ties == simulate(q, x, fast_sync=False).near_ties


@pytest.mark.parametrize("seed,integer", [(1, True), (2, False), (3, True)])
def test_fast_sync_refinement_alone_is_exact(monkeypatch, seed, integer):
    # every neuron of the fast layers goes through the exact refinement (integer conv/linear at
    # gathered indices + time-stepped kernel)
    import neurodeploy.simulator.core as core
    g = random_conv_graph(seed, integer_weights=integer)
    x = random_input(g, 9, seed, scale=2.0, integer=integer)
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    monkeypatch.setattr(core, "_REFINE_ALL", True)
    r = simulate(q, x)
    monkeypatch.setattr(core, "_REFINE_ALL", False)
    s = simulate(q, x, fast_sync=False)
    _assert_counts_equal(r, ops.evaluate(q, x), q)
    assert r.near_ties == s.near_ties


def test_fast_sync_conv_geometries_and_saturation(monkeypatch):
    # strides, dilation, padding, groups, Conv1d, a Linear on a 3-d input; membrane saturation
    # (state_bits) so that the clamp at hi matters; with and without forced refinement
    import neurodeploy.simulator.core as core
    rng = np.random.default_rng(11)
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(2, 9, 7)))
    g.add("c", ir.Conv2d(weight=rng.normal(size=(6, 2, 3, 2)), bias=rng.normal(size=6) * 0.3, stride=(2, 1),
                         padding=(1, 2), dilation=(1, 2)), "x")
    g.add("n", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=4, rounding="half_even"), "c")
    g.add("g", ir.Conv2d(weight=rng.normal(size=(6, 3, 3, 3)), bias=None, padding=2, dilation=2, groups=2), "n")
    g.add("n2", ir.IFNeuron(threshold=0.5, v_init=0.25, max_spikes=3), "g")
    g.add("r", ir.Reshape(target_shape=(6, 45)), "n2")
    g.add("c1", ir.Conv1d(weight=rng.normal(size=(4, 3, 3)) * 0.5, bias=rng.normal(size=4), stride=2, padding=2,
                          dilation=2, groups=2), "r")
    g.add("n3", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=8), "c1")
    g.add("fc", ir.Linear(weight=rng.normal(size=(5, 23)) * 0.4, bias=rng.normal(size=5)), "n3")
    g.add("n4", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=2, rounding="half_even"), "fc")
    g.add("out", ir.Output(), "n4")
    ir.infer_shapes(g)
    assert g.nodes["r"].shape == (6, 45) and g.nodes["n4"].shape == (4, 5)
    x = np.round(rng.normal(size=(24, 2, 9, 7)) * 32) / 16  # dyadic: 4 fractional bits, fast first layer
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    assert _fast_layers(q) == {"c", "g", "c1", "fc"}
    for refine_all in (False, True):
        monkeypatch.setattr(core, "_REFINE_ALL", refine_all)
        _assert_counts_equal(simulate(q, x), ops.evaluate(q, x), q)
    monkeypatch.setattr(core, "_REFINE_ALL", False)
    # saturating membranes: hi = 2**(bits-1) - 1 below D·θ
    for n in q.neurons():
        node = q.nodes[n]
        node.state_bits = int(np.log2(node.threshold_q * node.max_spikes)) + 1
    ref = ops.evaluate(q, x)
    sat = simulate(q, x)
    _assert_counts_equal(sat, ref, q)
    for n in q.neurons():
        np.testing.assert_array_equal(sat.counts[n], simulate(q, x, fast_sync=False).counts[n])


def test_fast_sync_many_exact_ties():
    # integer weights and inputs: a large share of the currents hit a firing boundary exactly
    rng = np.random.default_rng(5)
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(3, 6, 6)))
    g.add("c", ir.Conv2d(weight=rng.integers(-3, 4, size=(8, 3, 3, 3)).astype(float),
                         bias=rng.integers(-2, 3, size=8).astype(float), padding=1), "x")
    g.add("n", ir.IFNeuron(threshold=1.0, v_init=0.0, max_spikes=4, rounding="half_even"), "c")
    g.add("f", ir.Flatten(), "n")
    g.add("fc", ir.Linear(weight=rng.integers(-2, 3, size=(7, 288)).astype(float) / 2, bias=None), "f")
    g.add("n2", ir.IFNeuron(threshold=2.0, v_init=1.0, max_spikes=4, rounding="half_up"), "fc")
    g.add("out", ir.Output(), "n2")
    ir.infer_shapes(g)
    x = rng.integers(0, 3, size=(50, 3, 6, 6)).astype(float)
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    assert _fast_layers(q) == {"c", "fc"}
    r = simulate(q, x)
    _assert_counts_equal(r, ops.evaluate(q, x), q)
    assert r.near_ties["n"] > 100  # exact ties are refined, counted and rounded half-even
    assert r.near_ties == simulate(q, x, fast_sync=False).near_ties


def test_fast_sync_off_for_reduced_precision_and_limb_layers():
    g = canonicalize(random_conv_graph(0))
    x = random_input(g, 6, 0)
    q = quantize_fixed_point(g, calibration=x)
    fast = _fast_layers(q)
    # c2/dw/c3 feed Adds (exact values needed); c1 reads real-valued inputs quantised with more than
    # 24 bits (not exact in float32): those use the exact limb convolutions
    assert fast == {"c4", "fc"}
    prev = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # TF32/bf16 allowed: no float32 error bound
        assert _fast_layers(q) == set()
        _assert_counts_equal(simulate(q, x), ops.evaluate(q, x), q)
    finally:
        torch.set_float32_matmul_precision(prev)


def test_fast_sync_batches_and_threads():
    # chunked batches and several PyTorch threads give the same (exact) result
    g = random_conv_graph(4, size=16, channels=8)
    x = random_input(g, 160, 4, scale=1.5)
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = simulate(q, x)
        b = simulate(q, x, batch_size=37)
    finally:
        torch.set_num_threads(prev)
    ref = ops.evaluate(q, x)
    _assert_counts_equal(a, ref, q)
    _assert_counts_equal(b, ref, q)
    assert a.near_ties == b.near_ties


@pytest.mark.parametrize("C,O,H,W,KH,KW,s,p,d,g", [
    (4, 8, 9, 7, 3, 3, 1, 1, 1, 1), (4, 8, 9, 7, 3, 2, 2, 1, 1, 2), (6, 6, 10, 10, 3, 3, 1, 2, 2, 6),
    (3, 5, 5, 6, 1, 1, 1, 0, 1, 1), (2, 4, 8, 8, 5, 3, 3, 2, 1, 2), (4, 4, 3, 3, 3, 3, 1, 3, 2, 1)])
def test_exact_conv_kernels_at_indices(C, O, H, W, KH, KW, s, p, d, g):
    from neurodeploy.simulator import kernels
    rng = np.random.default_rng(C * 100 + O)
    x = rng.integers(0, 5, (3, C, H, W)).astype(np.float32)
    w = rng.integers(-2 ** 40, 2 ** 40, (O, C // g, KH, KW)).astype(np.float64)
    ref = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64), torch.tensor(w), None, s, p, d, g).numpy()
    Ho, Wo = ref.shape[2:]
    idx = rng.permutation(ref.size)[: max(1, ref.size // 2)].astype(np.int64)
    a, b = np.empty(idx.size), np.empty(idx.size)
    kernels.conv2d_exact_at_nchw(x, w, idx, idx.size, O, Ho, Wo, s, s, p, p, d, d, g, a)
    xl, wl = (np.ascontiguousarray(t.transpose(0, 2, 3, 1)) for t in (x, w))  # channels-last
    kernels.conv2d_exact_at(xl, wl, idx, idx.size, O, Ho, Wo, s, s, p, p, d, d, g, b)
    np.testing.assert_array_equal(a, ref.reshape(-1)[idx])
    np.testing.assert_array_equal(b, ref.reshape(-1)[idx])


def test_simulate_again_after_in_place_edits():
    # the per-graph cache of converted weights must notice edits made in place
    g = random_conv_graph(2)
    x = random_input(g, 8, 2)
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    _assert_counts_equal(simulate(q, x), ops.evaluate(q, x), q)
    q.nodes["c4"].weight_q[0] //= 2  # same array object, new values
    q.nodes["fc"].bias_q[:] = q.nodes["fc"].bias_q[::-1].copy()
    q.nodes["n4"].max_spikes = 2  # a field (the fc layer's input bound changes)
    q.nodes["c1"].weight_q = q.nodes["c1"].weight_q * 0 + 1  # a new array
    _assert_counts_equal(simulate(q, x), ops.evaluate(q, x), q)
