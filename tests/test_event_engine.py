"""Event-driven engine: exact against the layer-synchronous reference where it must be, and
hand-checked cases where the firing rule or the processing order matters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurodeploy import ir, ops
from neurodeploy.engine import (EVENT_DTYPE, EventEngine, events_from_raster, run_events, run_events_batch,
                                stack_counts)
from neurodeploy.errors import NeurodeployError
from neurodeploy.routing import build_routing, load_routing, routing_profile, save_routing

ORDERS_RULES = [("multi", "breadth"), ("single", "breadth"), ("multi", "depth"), ("single", "depth")]


# -- graph builders ---------------------------------------------------------------------------------

class _B:
    """Builds random canonical graphs, quantised (integers) or float (dyadic values: exact sums)."""

    def __init__(self, rng, quantized):
        self.rng, self.q = rng, quantized
        self.g = ir.Graph()
        self.n = 0

    def _w(self, shape, lo=-3, hi=5):
        w = self.rng.integers(lo, hi + 1, shape)
        return (w.astype(np.int64), w.astype(np.float64)) if self.q else (None, w / 4.0)

    def _name(self, base):
        self.n += 1
        return f"{base}{self.n}"

    def conv(self, src, cin, cout, k, s=1, p=0, d=1, groups=1, bias=True, lo=-3, hi=5):
        wq, w = self._w((cout, cin // groups, k, k), lo, hi)
        bq, b = self._w((cout,), -2, 2) if bias else (None, None)
        node = ir.Conv2d(weight=w, bias=b, stride=s, padding=p, dilation=d, groups=groups, weight_q=wq, bias_q=bq)
        return self.g.add(self._name("conv"), node, src)

    def linear(self, src, nin, nout, bias=True):
        wq, w = self._w((nout, nin))
        bq, b = self._w((nout,), -2, 2) if bias else (None, None)
        return self.g.add(self._name("fc"), ir.Linear(weight=w, bias=b, weight_q=wq, bias_q=bq), src)

    def neuron(self, src, D=None, rounding=None, state_bits=None, low=None):
        rng = self.rng
        D = int(rng.integers(1, 6)) if D is None else D
        rounding = rounding or str(rng.choice(["half_up", "half_even", "floor"]))
        if self.q:
            th = int(rng.integers(3, 9))
            node = ir.IFNeuron(threshold=1.0, max_spikes=D, rounding=rounding, threshold_q=th,
                               v_init_q=int(rng.integers(0, th)), state_bits=state_bits, low_threshold_q=low)
        else:
            node = ir.IFNeuron(threshold=float(rng.choice([1.0, 2.0])), max_spikes=D, rounding=rounding,
                               v_init=float(rng.choice([0.0, 0.5, 0.25])), norm=float(rng.choice([1.0, 2.0])))
        return self.g.add(self._name("if"), node, src)

    def done(self, src, sink=False):
        self.g.add("out", ir.Output(), src)
        if self.q:
            self.g.metadata["quantization"] = {"test": True}
        ir.infer_shapes(self.g)
        self.g.validate()
        return self.g


def random_graph(seed, quantized=True):
    """Input -> conv (random stride/padding/dilation/groups) -> IF -> [sum-pool] -> conv -> IF
    -> residual block (conv + Add with a conv or identity shortcut) -> IF -> flatten -> linear ->
    IF -> linear -> Output (a sink: the output current)."""
    rng = np.random.default_rng(seed)
    b = _B(rng, quantized)
    C0 = int(rng.integers(1, 3))
    H, W = int(rng.integers(7, 12)), int(rng.integers(7, 12))
    b.g.add("in", ir.Input(input_shape=(C0, H, W), is_spikes=True))
    g1 = int(rng.choice([1, C0]))
    c1 = 2 * g1
    x = b.conv("in", C0, c1, int(rng.integers(1, 4)), s=int(rng.integers(1, 3)), p=int(rng.integers(0, 2)),
               d=int(rng.integers(1, 3)), groups=g1)
    x = b.neuron(x)
    if rng.random() < 0.5 and min(b.g.nodes[x].shape if b.g.nodes[x].shape else (0, 0, 0)) == 0:
        pass
    ir.infer_shapes(b.g)
    if rng.random() < 0.6 and min(b.g.nodes[x].shape[1:]) >= 4:
        x = b.g.add("pool", ir.SumPool2d(kernel=2, stride=2 if quantized else 2), x)
    groups = int(rng.choice([1, 2]))
    c2 = 4
    x = b.conv(x, c1, c2, 3, s=1, p=1, groups=groups)
    a = b.neuron(x)
    # residual block: Add(conv(a), shortcut) with shortcut = a (identity) or conv(a)
    y = b.conv(a, c2, c2, 3, p=1, groups=int(rng.choice([1, 2, 4])))
    sc = a if rng.random() < 0.5 else b.conv(a, c2, c2, 1)
    add = b.g.add("add", ir.Add(), [y, sc])
    z = b.neuron(add)
    ir.infer_shapes(b.g)
    f = b.g.add("flat", ir.Flatten(), z)
    n = int(np.prod(b.g.nodes[z].shape))
    h = b.neuron(b.linear(f, n, 6))
    return b.done(b.linear(h, 6, 3))


def _ref(graph, raster):
    return ops.evaluate(graph, torch.as_tensor(np.asarray(raster)[None], dtype=torch.float64))


def _assert_counts_equal(res, ref, graph, names=None):
    for name in names or (graph.neurons() + graph.output_names()):
        np.testing.assert_array_equal(res.counts[name], ref[name][0].numpy(), err_msg=name)


# -- exactness ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_breadth_first_is_exact_on_random_quantised_graphs(seed):
    g = random_graph(seed, quantized=True)
    rng = np.random.default_rng(100 + seed)
    x = rng.integers(0, 4, g.nodes["in"].input_shape)
    ref = _ref(g, x)
    for rule in ("multi", "single"):
        res = run_events(g, x, rule=rule, order="breadth")
        assert res.saturations == 0
        _assert_counts_equal(res, ref, g)
        assert res.counts["out"].dtype == np.int64


def test_random_graphs_exercise_clipping_and_activity():
    clipped = active = 0
    for seed in range(8):
        g = random_graph(seed, quantized=True)
        x = np.random.default_rng(100 + seed).integers(0, 4, g.nodes["in"].input_shape)
        ref = _ref(g, x)
        clipped += any(bool((ref[n] == g.nodes[n].max_spikes).any()) for n in g.neurons())
        active += all(bool(ref[n].sum() > 0) for n in g.neurons()[:3])
    assert clipped >= 4 and active >= 4


@pytest.mark.parametrize("seed", range(4))
def test_breadth_first_is_exact_on_float_graphs(seed):
    g = random_graph(50 + seed, quantized=False)
    x = np.random.default_rng(seed).integers(0, 4, g.nodes["in"].input_shape)
    ref = _ref(g, x)
    res = run_events(g, x, rule="multi", order="breadth")
    _assert_counts_equal(res, ref, g, g.neurons())
    np.testing.assert_allclose(res.counts["out"], ref["out"][0].numpy(), rtol=0, atol=1e-9)


def test_depth_first_multi_is_exact_with_non_negative_weights():
    rng = np.random.default_rng(7)
    b = _B(rng, True)
    b.g.add("in", ir.Input(input_shape=(2, 9, 9), is_spikes=True))
    x = b.neuron(b.conv("in", 2, 4, 3, s=2, p=1, lo=0, hi=5), rounding="half_up")
    x = b.g.add("pool", ir.SumPool2d(kernel=2), x)
    y = b.neuron(b.conv(x, 4, 4, 3, p=1, groups=2, lo=0, hi=5), rounding="half_up")
    add = b.g.add("add", ir.Add(), [b.conv(y, 4, 4, 3, p=1, lo=0, hi=5), y])
    z = b.neuron(add, rounding="floor")
    for name in list(b.g.nodes):
        if getattr(b.g.nodes[name], "bias_q", None) is not None:
            b.g.nodes[name].bias_q = np.abs(b.g.nodes[name].bias_q)
    g = b.done(z)
    x = rng.integers(0, 4, (2, 9, 9))
    ref = _ref(g, x)
    _assert_counts_equal(run_events(g, x, rule="multi", order="depth"), ref, g)
    # and 'single' fires at most as many spikes as 'multi', per neuron
    single = run_events(g, x, rule="single", order="depth")
    for n in g.neurons():
        assert (single.counts[n] <= ref[n][0].numpy()).all()


def test_dense_input_layer_is_integer_quantised_and_exact():
    rng = np.random.default_rng(8)
    b = _B(rng, True)
    b.g.add("in", ir.Input(input_shape=(1, 8, 8), is_spikes=False, scale_q=16))
    x = b.neuron(b.conv("in", 1, 4, 3, p=1), rounding="half_up")
    x = b.neuron(b.conv(x, 4, 4, 3, s=2, p=1))
    g = b.done(x)
    first = g.neurons()[0]
    xr = rng.normal(size=(1, 8, 8))
    ref = _ref(g, xr)
    for rule, order in (("multi", "breadth"), ("single", "breadth"), ("multi", "depth")):
        res = run_events(g, xr, rule=rule, order=order)
        assert res.input_events == 0
        np.testing.assert_array_equal(res.counts["in"], np.round(xr * 16))
        if order == "breadth":
            _assert_counts_equal(res, ref, g)
        else:  # first layer: whole current at once, like the reference; later layers may differ
            np.testing.assert_array_equal(res.counts[first], ref[first][0].numpy())
    # single rule: the dense current is one input event -> at most one spike per neuron
    single = run_events(g, xr, rule="single", order="depth")
    np.testing.assert_array_equal(single.counts[first], np.minimum(ref[first][0].numpy(), 1))


def test_reshape_conv1d_and_sink_output():
    rng = np.random.default_rng(9)
    b = _B(rng, True)
    b.g.add("in", ir.Input(input_shape=(2, 6, 6), is_spikes=True))
    x = b.neuron(b.conv("in", 2, 4, 3, p=1))
    r = b.g.add("rs", ir.Reshape(target_shape=(4, 36)), x)
    wq = rng.integers(-3, 5, (6, 2, 3))
    c1 = b.g.add("c1d", ir.Conv1d(weight=wq.astype(float), weight_q=wq, bias_q=rng.integers(-2, 3, 6),
                                  stride=2, padding=1, groups=2), r)
    y = b.neuron(c1)
    g = b.done(b.linear(y, 18, 5))  # Linear over the last axis of (6, 18): a sink Output
    x = rng.integers(0, 4, (2, 6, 6))
    ref = _ref(g, x)
    for rule, order in (("multi", "breadth"), ("single", "breadth")):
        _assert_counts_equal(run_events(g, x, rule=rule, order=order), ref, g)


# -- where the rule / order matters (hand-checked) --------------------------------------------------------

def _tiny(weight, theta, D=8, v_init=0, state_bits=None, low=None, n_in=1):
    """n_in spiking inputs -> Linear(weight) -> one IF neuron."""
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(n_in,), is_spikes=True))
    w = np.array([weight], np.int64).reshape(1, n_in)
    g.add("fc", ir.Linear(weight=w.astype(float), weight_q=w), "in")
    g.add("n", ir.IFNeuron(max_spikes=D, threshold_q=theta, v_init_q=v_init, state_bits=state_bits,
                           low_threshold_q=low), "fc")
    g.add("o", ir.Output(), "n")
    g.metadata["quantization"] = {"test": True}
    return ir.infer_shapes(g)


def _events(addrs):
    ev = np.zeros(len(addrs), [("x", np.int64), ("t", np.int64)])
    ev["x"], ev["t"] = addrs, np.arange(len(addrs)) * 10
    return ev


def test_multi_vs_single_spike_per_event():
    # one input event of weight 10 into θ = 4: v = 10 -> multi fires floor(10/4) = 2 at once (v = 2);
    # single fires once (v = 6) and stays silent (no further input event). Reference: 2.
    g = _tiny(10, 4)
    ev = _events([0])
    assert run_events(g, ev, rule="multi", order="depth").counts["n"].tolist() == [2]
    res = run_events(g, ev, rule="single", order="depth", record_events=True)
    assert res.counts["n"].tolist() == [1]
    assert res.events["n"]["t"].tolist() == [0] and res.events["in"]["x"].tolist() == [0]
    # a second event of weight 10: single: v = 6 + 10 = 16 -> one spike (v = 12); multi: 2 + 10 -> 3
    ev2 = _events([0, 0])
    assert run_events(g, ev2, rule="single", order="depth").counts["n"].tolist() == [2]
    assert run_events(g, ev2, rule="multi", order="depth").counts["n"].tolist() == [5]
    assert _ref(g, np.array([2]))["n"][0].tolist() == [5]
    # breadth-first (barrier): both rules give the reference count
    for rule in ("multi", "single"):
        assert run_events(g, ev2, rule=rule, order="breadth").counts["n"].tolist() == [5]


def test_depth_vs_breadth_under_state_saturation():
    # 8-bit membrane (max 127), θ = 50, two events of +100:
    # depth: 100 -> 2 spikes (v = 0); 100 -> 2 spikes: 4 in all.
    # breadth: 100 + 100 = 200 clips to 127 -> 2 spikes (as ops.evaluate, which clips the sum).
    g = _tiny(100, 50, state_bits=8)
    ev = _events([0, 0])
    depth = run_events(g, ev, rule="multi", order="depth")
    breadth = run_events(g, ev, rule="multi", order="breadth")
    assert depth.counts["n"].tolist() == [4] and depth.saturations == 0
    assert breadth.counts["n"].tolist() == [2] and breadth.saturations == 1
    assert _ref(g, np.array([2]))["n"][0].tolist() == [2]


def test_low_threshold_floor_and_event_order():
    # input 0 has weight +60, input 1 weight -100; θ = 50, membrane floor (low threshold) -20.
    g = _tiny([60, -100], 50, low=-20, n_in=2)
    # +60 first: depth fires 1 (v = 10), then -100 -> -90 floors at -20: 1 spike.
    assert run_events(g, _events([0, 1]), rule="single", order="depth").counts["n"].tolist() == [1]
    # -100 first: v floors at -20, +60 -> 40 < 50: no spike. Order matters.
    assert run_events(g, _events([1, 0]), rule="single", order="depth").counts["n"].tolist() == [0]
    # breadth: -100 + 60 = -40 (floored at -20 after the -100): 0 spikes, as the reference
    assert run_events(g, _events([0, 1]), order="breadth").counts["n"].tolist() == [0]
    assert _ref(g, np.array([1, 1]))["n"][0].tolist() == [0]


def test_mixed_sign_depth_first_is_not_layer_synchronous():
    # +θ then -θ into one neuron: depth-first fires on the first event; the barrier sees 0 in all.
    g = _tiny([8, -8], 8, n_in=2)
    assert run_events(g, _events([0, 1]), order="depth").counts["n"].tolist() == [1]
    assert run_events(g, _events([0, 1]), order="breadth").counts["n"].tolist() == [0]


def test_half_even_ties_at_the_barrier():
    # x = 1 with v_init = θ/2 = 1, θ = 2: v = 2, an exact tie (x/θ + 0.5 = 1.0? no: (x + v0)/θ = 1).
    g = _tiny(1, 2, v_init=1)
    g.nodes["n"].rounding = "half_even"
    for k in range(6):  # k events of weight 1: (k+1)/2 -> half-even rounding of k/2
        res = run_events(g, _events([0] * k), order="breadth")
        assert res.counts["n"].tolist() == _ref(g, np.array([k]))["n"][0].tolist()
        assert res.counts["n"].tolist() == [min(int(np.round(k / 2)), 8)]


# -- inputs, outputs, determinism -------------------------------------------------------------------------

def test_event_stream_matches_raster_and_records_events():
    g = random_graph(3, quantized=True)
    C, H, W = g.nodes["in"].input_shape
    rng = np.random.default_rng(11)
    n = 300
    ev = np.zeros(n, [("x", np.int16), ("y", np.int16), ("p", np.int8), ("t", np.int64)])
    ev["x"], ev["y"], ev["p"] = rng.integers(0, W, n), rng.integers(0, H, n), rng.integers(0, C, n)
    ev["t"] = np.sort(rng.integers(0, 10_000, n))
    raster = np.zeros((C, H, W), np.int64)
    np.add.at(raster, (ev["p"].astype(int), ev["y"].astype(int), ev["x"].astype(int)), 1)
    ref = _ref(g, raster)
    res = run_events(g, ev, order="breadth", record_events=True)
    _assert_counts_equal(res, ref, g)
    np.testing.assert_array_equal(res.counts["in"], raster)
    assert res.input_events == n
    for name in g.neurons():
        e = res.events[name]
        assert e.dtype == EVENT_DTYPE and len(e) == res.counts[name].sum()
        shape = g.nodes[name].shape
        if len(shape) == 3:
            back = np.zeros(shape, np.int64)
            np.add.at(back, (e["c"], e["y"], e["x"]), 1)
        else:
            back = np.bincount(e["c"], minlength=shape[0])
        np.testing.assert_array_equal(back, res.counts[name])
    seqs = np.concatenate([res.events[n]["seq"] for n in g.neurons()])
    assert sorted(seqs.tolist()) == list(range(len(seqs)))
    # depth-first: each output event carries the timestamp of the input event that caused it
    dep = run_events(g, ev, rule="single", order="depth", record_events=True)
    first = g.neurons()[0]
    assert set(dep.events[first]["t"].tolist()) <= set(ev["t"].tolist()) | {-1}
    assert np.all(np.diff(dep.events[first]["seq"]) > 0)
    # the raster -> events conversion is timestep-major
    assert events_from_raster(np.array([[2, 0, 1]])).tolist() == [0, 2, 0]


@pytest.mark.parametrize("rule,order", ORDERS_RULES)
def test_deterministic_for_a_given_order(rule, order):
    g = random_graph(5, quantized=True)
    x = np.random.default_rng(12).integers(0, 4, g.nodes["in"].input_shape)
    eng = EventEngine(g, rule=rule, order=order)
    a, b = eng.run(x, record_events=True), eng.run(x, record_events=True)
    c = run_events(g, x, rule=rule, order=order, record_events=True)
    for name in a.events:
        np.testing.assert_array_equal(a.events[name], b.events[name])
        np.testing.assert_array_equal(a.events[name], c.events[name])
    assert a.synaptic_events == b.synaptic_events == c.synaptic_events


def test_batch_helper_progress_and_saved_routing(tmp_path, capsys):
    g = random_graph(6, quantized=True)
    xs = np.random.default_rng(13).integers(0, 3, (3,) + tuple(g.nodes["in"].input_shape))
    save_routing(build_routing(g), tmp_path / "routing.npz")
    results = run_events_batch(g, xs, routing=load_routing(tmp_path), progress=True)
    counts = stack_counts(results)
    ref = ops.evaluate(g, torch.as_tensor(xs, dtype=torch.float64))
    for n in g.neurons():
        np.testing.assert_array_equal(counts[n], ref[n].numpy())
    r = run_events(g, xs[0], progress=True, order="depth")
    assert r.synaptic_events == sum(r.synops.values())


def test_engine_synops_agree_with_routing_profile():
    g = random_graph(2, quantized=True)
    x = np.random.default_rng(14).integers(0, 4, g.nodes["in"].input_shape)
    routing = build_routing(g)
    res = run_events(g, x, routing=routing, order="breadth")
    prof = routing_profile(routing, res.counts)
    for t in routing:
        assert prof[t.name]["synops"] == res.synops[t.name], t.name


def test_sparse_conv_engine_equals_masked_conv():
    rng = np.random.default_rng(15)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(2, 8, 8), is_spikes=True))
    w = rng.integers(-2, 5, (4, 2, 3, 3))
    g.add("conv", ir.Conv2d(weight=w.astype(float), weight_q=w, padding=1), "in")
    g.add("n", ir.IFNeuron(max_spikes=4, threshold_q=4, v_init_q=2), "conv")
    g.add("o", ir.Output(), "n")
    g.metadata["quantization"] = {"test": True}
    ir.infer_shapes(g)
    mask = rng.random((8, 8)) < 0.5
    x = rng.integers(0, 3, (2, 8, 8)) * mask
    res = run_events(g, x, sparse_conv_masks={"conv": mask})
    cur = ops.linear_op(g.nodes["conv"], [torch.as_tensor(x[None], dtype=torch.float64)], True) \
        * torch.as_tensor(mask, dtype=torch.float64)
    expect = ops.spike_count(g.nodes["n"], cur, True)[0].numpy()
    np.testing.assert_array_equal(res.counts["n"], expect)
    assert res.counts["n"][:, ~mask].sum() == 0 or g.nodes["n"].v_init_q >= 4


def test_errors_name_the_problem():
    g = _tiny(3, 4)
    with pytest.raises(NeurodeployError, match="outside the input"):
        run_events(g, _events([1]))
    with pytest.raises(NeurodeployError, match="rule"):
        run_events(g, _events([0]), rule="burst")
    with pytest.raises(NeurodeployError, match="order"):
        run_events(g, _events([0]), order="random")
    with pytest.raises(NeurodeployError, match="non-negative integer"):
        run_events(g, np.array([0.5]))
    g2 = g.copy()
    g2.insert_after("fc", "bn", ir.BatchNorm(mean=np.zeros(1), var=np.ones(1)))
    with pytest.raises(NeurodeployError, match="canonical"):
        run_events(g2, _events([0]))


def test_route_cli(tmp_path):
    from click.testing import CliRunner

    from neurodeploy.engine.cli import route_cmd

    g = random_graph(1, quantized=True)
    routing = build_routing(g)
    save_routing(routing, tmp_path / "routing.npz")
    name = routing.layer(1).name
    res = CliRunner().invoke(route_cmd, [str(tmp_path), "--layer", "1", "--address", "0,1,1", "--no-verify-manifest"])
    assert res.exit_code == 0, res.output
    assert name in res.output and "weight_index" in res.output
    n = len(routing.destinations(1, (0, 1, 1)))
    assert f"{n} destination(s)" in res.output
    res = CliRunner().invoke(route_cmd, [str(tmp_path), "--layer", name, "--address", "0,1,1", "--json",
                                         "--no-verify-manifest"])
    assert res.exit_code == 0 and f'"layer": "{name}"' in res.output
    res = CliRunner().invoke(route_cmd, [str(tmp_path), "--layer", "99", "--address", "0,0,0", "--no-verify-manifest"])
    assert res.exit_code != 0


def test_simulate_cli_event_engine(tmp_path):
    import json

    from click.testing import CliRunner

    from neurodeploy.engine.cli import simulate_cmd, simulate_events_cli
    from neurodeploy.ir_io import save_graph

    g = random_graph(4, quantized=True)
    xs = np.random.default_rng(16).integers(0, 3, (2,) + tuple(g.nodes["in"].input_shape))
    lines = []
    rep = simulate_events_cli(g, xs, progress=False, echo=lines.append)
    assert all(row["mismatches"] == 0 for row in rep["layers"].values())
    assert rep["synaptic_events"] > 0 and any("0 differing" in ln for ln in lines)
    save_graph(g, tmp_path / "graph.ir.npz")
    np.savez(tmp_path / "data.npz", x=xs)
    res = CliRunner().invoke(simulate_cmd, [str(tmp_path), "--data", str(tmp_path / "data.npz"), "--json",
                                            "--no-progress", "--order", "depth", "--rule", "single",
                                            "--no-verify-manifest"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # the --no-verify-manifest warning goes to stderr
    assert out["order"] == "depth" and set(out["layers"]) == set(g.neurons())


@pytest.mark.parametrize("quantized", [True, False])
def test_shared_preactivation_and_conv_pool_chain(quantized):
    """One conv output feeding two IF layers (and an Output sink); conv -> sum-pool -> IF with no
    neuron in between (weighted events pass through the pool)."""
    rng = np.random.default_rng(17)
    b = _B(rng, quantized)
    b.g.add("in", ir.Input(input_shape=(2, 8, 8), is_spikes=True))
    c = b.conv("in", 2, 4, 3, p=1)
    n1 = b.neuron(c, rounding="half_up")
    n2 = b.neuron(c, rounding="half_up")
    pool = b.g.add("pool", ir.SumPool2d(kernel=2), b.conv(n1, 4, 3, 3, p=1))
    n3 = b.neuron(pool)
    b.g.add("out2", ir.Output(), c)
    b.g.add("out3", ir.Output(), n2)
    g = b.done(n3)
    x = rng.integers(0, 4, (2, 8, 8))
    ref = _ref(g, x)
    for rule, order in ORDERS_RULES:
        res = run_events(g, x, rule=rule, order=order)
        np.testing.assert_allclose(res.counts["out2"], ref["out2"][0].numpy(), rtol=0, atol=1e-9)
        # the shared conv updates three targets per synapse (two IF layers and the Output sink)
        assert res.synops[c] == 3 * routing_profile(build_routing(g), res.counts)[c]["synops"]
        if order == "breadth":
            _assert_counts_equal(res, ref, g, g.neurons())
