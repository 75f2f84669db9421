"""Speck's in-network layer barrier: hold/release arithmetic against a brute-force per-neuron model,
the simulator on the shared event engine against the layer-barrier rung (R2), the artefact."""

import os
import warnings

import numpy as np
import pytest

from neurodeploy import ir
from neurodeploy.errors import NeurodeployError
from neurodeploy.simulator.random_graphs import random_conv_graph, random_input
from neurodeploy.targets.speck.barrier import (GATE_MAX, brute_force_release, check_against_own_input,
                                               plan_barrier, quantize_for_barrier, release_gates)
from neurodeploy.targets.speck.quantize import SpeckQuantizationWarning
from neurodeploy.targets.speck.simulate import simulate_barrier, simulate_events


def _schedule(gates):
    return [int(g.weights[0]) for g in gates for _ in range(g.events)]


@pytest.mark.parametrize("theta", [3, 7, 60, 127, 130, 300])
@pytest.mark.parametrize("D", [1, 4])
def test_release_counts_every_in_budget_neuron_exactly(theta, D):
    rng = np.random.default_rng(theta * 10 + D)
    P = int(rng.integers(theta, 40 * theta))  # largest positive partial sum the weights allow
    gates, hold = release_gates(np.array([P - theta + 1]), theta, D, channels_in=3)
    H = int(hold[0])
    sched = _schedule(gates)
    assert all(0 < c <= GATE_MAX for c in sched) and sum(sched) == H and H >= P - theta + 1
    for y in range(-2 * theta, min(P, (D + 3) * theta) + 1):
        for _ in range(3):  # random orders of the input: increments whose partial sums stay <= P
            parts = _random_parts(rng, y, P)
            s = brute_force_release(y, H, sched, theta, partial_order=parts)
            n = y // theta
            if n <= D:
                assert s == max(n, 0), (y, parts)
            else:  # over budget: never capped below D+1 and never more than floor(y/θ)
                assert D + 1 <= s <= n
                if y >= D * theta + max(theta, GATE_MAX):  # Claim 3: no schedule can cap these
                    assert s >= D + 1


def _random_parts(rng, y, P):
    """Increments summing to y, every prefix <= P (the hold's assumption)."""
    k = int(rng.integers(1, 6))
    parts = list(rng.integers(-P // 2, P // 2, k)) + [0]
    parts[-1] = y - sum(parts[:-1])
    for i in range(len(parts)):
        if sum(parts[:i + 1]) > P:
            return [y]
    return parts


def test_claim3_no_schedule_caps_large_over_budget_neurons():
    theta, D, H = 50, 2, 2000
    rng = np.random.default_rng(0)
    for _ in range(200):  # random schedules (|c| <= 127) that are exact for y' = Dθ
        sched = list(rng.integers(-40, GATE_MAX + 1, 60))
        if brute_force_release(D * theta, H, sched, theta) != D:
            continue
        for y in range(D * theta + GATE_MAX, D * theta + GATE_MAX + 3 * theta):
            assert brute_force_release(y, H, sched, theta) >= D + 1


def _speck_graph(seed):
    g = random_conv_graph(seed, channels=3, size=6, residual=False, depthwise=False, D=4)
    for n in g.neurons():
        g.nodes[n].rounding = "half_up"
    return g


@pytest.mark.parametrize("seed,bounds", [(0, "budget"), (1, "budget"), (2, "budget"), (2, "weights"),
                                         (3, "weights")])
def test_barrier_simulation_matches_layer_barrier_on_random_graphs(seed, bounds):
    g = _speck_graph(seed)
    x = np.abs(random_input(g, 6, seed=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        qg, plan = quantize_for_barrier(g, x, bounds=bounds)
    r2 = simulate_events(qg, x, rule="multi", order="breadth", saturate=False, budget=True)
    for interleaving in (None, 1, 2):
        r = simulate_barrier(qg, x, plan=plan, seed=interleaving)
        own = check_against_own_input(qg, x, r.counts)
        upstream_exact = True
        for n in qg.neurons():
            assert own[n]["over_budget_outside"] == 0
            if bounds == "weights" or upstream_exact:  # 'budget' assumes every source fires <= D
                assert own[n]["in_budget_wrong"] == 0, n
            if upstream_exact and own[n]["over_budget"] == 0:  # same input as R2: same counts
                assert np.array_equal(r.counts[n].numpy(), r2.counts[n].numpy()), n
            upstream_exact = upstream_exact and own[n]["over_budget"] == 0


def test_hold_that_does_not_fit_names_the_layer():
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(64,), is_spikes=True))
    w = np.concatenate([np.full((1, 32), 1.0), np.full((1, 32), -1.0)], 1)
    g.add("fc", ir.Linear(weight=w, bias=None), "x")
    g.add("n", ir.IFNeuron(threshold=0.1, v_init=0.05, max_spikes=4), "fc")
    g.add("out", ir.Output(), "n")
    ir.infer_shapes(g)
    from neurodeploy.targets.speck.quantize import quantize
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        qg = quantize(g)
    with pytest.raises(NeurodeployError, match="layer 'fc'.*16-bit state cannot hold"):
        plan_barrier(qg, input_bound=16)
    qg2, plan = quantize_for_barrier(g, input_bound=16)  # shrinks the scale until it fits
    assert plan.layers["fc"].hold.max() > 0 and qg2.metadata["quantization"]["barrier_scales"]["fc"] < 1


def test_artefact_carries_the_barrier_and_the_simulator_runs_its_files(tmp_path):
    import json

    from neurodeploy.targets import get_target
    from neurodeploy.targets.speck import examples
    from neurodeploy.targets.speck.host import load_artefact, sample_event_stream
    from neurodeploy.targets.speck.simulate import input_counts
    g = examples.conv_net(weight_scale=1.0)
    x = examples.random_counts(g, 4)
    t = get_target("speck")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        qg = t.quantize(g)
        paths = t.emit(qg, tmp_path)
    assert "speck_host_program" in paths
    art = load_artefact(tmp_path)
    plan = plan_barrier(qg)
    conf = art["config"]
    for lname, lb in plan.layers.items():
        core = conf["cores"][str(conf["layer_to_core"][lname])]
        w = np.array(core["weights"])  # [f][c][x][y]: the gate columns after the layer's own channels
        assert w.shape[1] == lb.channels_in + len(lb.gates)
        assert core["dimensions"]["input_shape"]["feature_count"] == w.shape[1]
        for gf in lb.gates:
            col = w[:, gf.feature]  # the same gate weight at every tap (see barrier.gate_cover)
            assert np.array_equal(col, np.broadcast_to(gf.weights[:, None, None], col.shape))
        init = np.array(core["neurons_initial_value"])  # [f][x][y]
        v0 = qg.nodes[lb.neuron].v_init_q + (qg.nodes[lname].bias_q if qg.nodes[lname].bias_q is not None else 0)
        assert np.array_equal(init[:, 0, 0], v0 - lb.hold)
    prog = art["host_program"]
    assert prog["format_version"] == 1 and prog["host_events_per_sample"] == plan.host_events()
    assert "reset_states" in prog["before_each_sample"]["why"]
    ev = sample_event_stream(art, input_counts(qg, x)[0])
    n_in = int(input_counts(qg, x)[0].sum())
    assert len(ev) == n_in + plan.host_events() and np.all(np.diff(ev["timestamp"]) >= 0)
    from_files = simulate_barrier(qg, x, artefact=art)
    direct = simulate_barrier(qg, x)
    for n in qg.neurons():
        assert np.array_equal(from_files.counts[n].numpy(), direct.counts[n].numpy())
    json.dumps(prog)


@pytest.mark.parametrize("n_in,k,s,p", [(8, 3, 1, 1), (8, 3, 2, 1), (4, 3, 2, 1), (7, 5, 1, 2), (9, 3, 3, 0),
                                        (1, 1, 1, 0), (16, 16, 1, 0), (6, 2, 2, 0)])
def test_gate_events_of_a_round_reach_every_output_exactly_once(n_in, k, s, p):
    from neurodeploy.targets.speck.barrier import gate_cover
    from neurodeploy.targets.speck.layers import SpeckLayer
    n_out = (n_in + 2 * p - k) // s + 1
    layer = SpeckLayer("c", "c", "n", "conv", (2, n_in, n_in), (3, n_out, n_out), (k, k), (s, s), (p, p))
    pos, cover = gate_cover(layer)
    hits = np.zeros(n_out * n_out, int)
    for (y, x), c in zip(pos, cover):
        assert 0 <= y < n_in and 0 <= x < n_in
        # brute force: the outputs an event at (y, x) reaches through an all-taps kernel
        reach = [oy * n_out + ox for oy in range(n_out) for ox in range(n_out)
                 if 0 <= y + p - oy * s < k and 0 <= x + p - ox * s < k]
        assert sorted(reach) == sorted(c.tolist())
        hits[c] += 1
    assert hits.tolist() == [1] * (n_out * n_out)
    assert len(pos) <= n_out * n_out


def test_cli_barrier_options_are_for_speck_only(tmp_path):
    from click.testing import CliRunner

    from neurodeploy.cli import main
    EX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    r = CliRunner().invoke(main, ["compile", f"{EX}/digits_chain.pt", "--arch", f"{EX}/digits_chain.py:build_model",
                                  "--target", "sim", "--no-barrier", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--target speck only" in r.output
    assert not (tmp_path / "o").exists()


def test_gate_feature_kernel_memory_moves_a_full_layer_to_a_larger_core():
    from neurodeploy.errors import DesignRuleError
    from neurodeploy.targets.speck.barrier import barrier_core_map
    from neurodeploy.targets.speck.layers import extract
    from neurodeploy.targets.speck.mapping import KERNEL_MEMORY, layer_memory
    rng = np.random.default_rng(0)
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(16, 4, 4), is_spikes=True))
    g.add("conv", ir.Conv2d(weight=rng.normal(0, 0.1, (64, 16, 3, 3)), bias=None, padding=1), "x")
    g.add("n", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=2), "conv")
    g.add("out", ir.Output(), "n")
    ir.infer_shapes(g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        qg, plan = quantize_for_barrier(g, input_bound=1)
    net = extract(qg)
    assert layer_memory(net.layers["conv"])["kernel"] == KERNEL_MEMORY[0]  # 16·16·64: exactly a 16Ki core
    core = barrier_core_map(net, plan)["conv"]
    assert KERNEL_MEMORY[core] > KERNEL_MEMORY[0]  # + the gate feature: 17·16·64 words
    with pytest.raises(DesignRuleError, match="core 0 of core_map cannot hold it"):
        barrier_core_map(net, plan, {"conv": 0})


def test_run_on_chip_needs_real_samna_and_input_raster_matches_the_simulator(tmp_path):
    from neurodeploy.targets import get_target
    from neurodeploy.targets.speck import examples
    from neurodeploy.targets.speck.host import input_raster, load_artefact, run_on_chip
    from neurodeploy.targets.speck.simulate import input_counts
    g = examples.conv_net(is_spikes=False)
    x = np.abs(examples.random_counts(g, 2)).astype(float) * 0.37
    t = get_target("speck")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        qg = t.quantize(g, x)
        t.emit(qg, tmp_path)
    art = load_artefact(tmp_path)
    assert np.array_equal(input_raster(art["config"], x[1]), input_counts(qg, x)[1])
    with pytest.raises(NeurodeployError, match="cannot run on a chip"):
        run_on_chip(tmp_path, x)
