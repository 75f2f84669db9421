"""Chip probes (python -m neurodeploy.targets.speck.probe): the outcomes our Speck simulator expects for each
probe equal the ones derived by hand below, and the files carry what a user with a chip needs."""

import json

import numpy as np
import pytest

from neurodeploy.targets.speck import probe as pr

# Hand-derived: (layer's core, feature) of each output spike and the index of the input event causing it.
# θ = 10 everywhere; v is the membrane after the event (after the spike's subtraction).
HAND = {
    # w = 1 for 3 neurons with initial values 9, 5, -5; 15 events (both samples, the host rewrites the state):
    # n0: 10 at e0 -> spike, 0 -> 10 at e10 -> spike; n1: 10 at e4, again at e14; n2: -5 + 15 = 10 at e14
    "initial_value_kept": [[(0, 0, 0), (0, 1, 4), (0, 0, 10), (0, 1, 14), (0, 2, 14)]] * 2,
    # w = 25: e0 v=25 -> one spike -> 15 (above θ, silent); e1 v=40 -> one spike -> 30. MultiSpike would give 2+3.
    "one_spike_per_event": [[(0, 0, 0), (0, 0, 1)]],
    # w = 6: 6, 12->2 (e1), 8, 14->4 (e3), 10->0 (e4); reset to zero would give 6, 12->0, 6, 12->0, 6: 2 spikes
    "subtractive_reset": [[(0, 0, 1), (0, 0, 3), (0, 0, 4)]],
    # w = 5: 5, 10 -> fires at equality (e1)
    "fires_at_threshold": [[(0, 0, 1)]],
    # w = -15, -15, +15, +15 with threshold_low -20: -15, -20 (floor), -5, 10 -> spike at e3 (no floor: -15,-30,-15,0)
    "threshold_low_saturation": [[(0, 0, 3)]],
    # w = 127, θ = 32767: 258 events -> 32766; e258 -> 32893, saturates at 32767 -> spike -> 0; 258 more -> 32766,
    # silent. A wrapping state (-32643 after e258) gives 0 spikes, a wider one (126 left, 32892 at e516) gives 2
    "state_saturates_at_16_bits": [[(0, 0, 258)]],
    # core 1 (w = 5 from core 0's neuron, 10 on the host-only feature 1): e0 f1 -> 10 spike; e1, e2 f0 -> 5, 10
    # spike at e2; e3 to core 0 (w = 1): v = 1, nothing
    "host_event_to_any_core": [[(1, 0, 0), (1, 0, 2)]],
    # initial value 15 >= θ, silent until an event: f1 (w=-3) -> 12 -> spike; f0 (w=0) -> 15 -> spike; no event: none
    "zero_and_negative_weight_events": [[(0, 0, 0)], [(0, 0, 0)], []],
    # +15 then -15: spike at e0 (15 -> 5), then -10; -15 then +15: -15, 0, no spike
    "events_in_order": [[(0, 0, 0)], []],
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("probes")
    assert pr.main([str(out)]) == 0
    return out


def test_every_probe_has_a_hand_derived_expectation():
    assert {p.name for p in pr.probes()} == set(HAND)


@pytest.mark.parametrize("p", pr.probes(), ids=lambda p: p.name)
def test_simulator_expectation_equals_the_hand_derivation(p):
    sim = pr.simulate_probe(p)
    assert [[(core, f, cause) for core, x, y, f, cause in s] for s in sim] == HAND[p.name]
    assert all(x == 0 and y == 0 for s in sim for _, x, y, _, _ in s)


def test_probe_files(written):
    index = json.loads((written / "probes.json").read_text())
    assert [e["name"] for e in index["probes"]] == [p.name for p in pr.probes()]
    assert {e["status"] for e in index["probes"]} == {"documented", "assumed"}
    for entry in index["probes"]:
        doc = json.loads((written / entry["file"]).read_text())
        assert doc["format"] == pr.FORMAT and doc["format_version"] == 1
        assert doc["source"] and doc["if_the_chip_differs"] and doc["barrier_relies_on_it_for"]
        conf = doc["config"]
        assert conf["format"] == "neurodeploy.speck.config" and conf["bias_mode"] == "initial"
        assert all(c["monitor_enable"] and not c["leak_enable"] and not c["return_to_zero"]
                   for c in conf["cores"].values())
        for s, hand in zip(doc["samples"], HAND[doc["name"]]):
            assert all(len(e) == 5 and e[4] >= 1000 for e in s["events"])  # (core, x, y, feature, t_us)
            assert [e[4] for e in s["events"]] == sorted(e[4] for e in s["events"])
            assert [(c, f, k) for c, _, _, f, k in s["expected_output"]] == hand
            assert sum(s["expected_counts"].values()) == len(hand)


def test_configs_carry_the_probes_integers(written):
    doc = json.loads((written / "probe_initial_value_kept.json").read_text())
    core = doc["config"]["cores"]["0"]
    assert np.asarray(core["neurons_initial_value"]).reshape(-1).tolist() == [9, 5, -5]
    assert core["threshold_high"] == 10 and np.asarray(core["weights"]).reshape(-1).tolist() == [1, 1, 1]
    assert doc["samples"][0]["events"][0][4] == 1_000_000  # first event 1 s after applying the configuration
    low = json.loads((written / "probe_threshold_low_saturation.json").read_text())["config"]["cores"]["0"]
    assert low["threshold_low"] == -20
    host = json.loads((written / "probe_host_event_to_any_core.json").read_text())
    c1 = host["config"]["cores"]["1"]
    assert c1["dimensions"]["input_shape"]["feature_count"] == 2  # core 0's neuron + the host-only feature
    assert np.asarray(c1["weights"]).reshape(-1).tolist() == [5, 10]
    assert [e[0] for e in host["samples"][0]["events"]] == [1, 1, 1, 0]


def test_run_without_real_samna_exits_2_without_importing_it(written, monkeypatch, capsys):
    from neurodeploy.targets.speck import config

    monkeypatch.setattr(config, "samna_available", lambda: (False, "samna is not installed"))
    assert pr.main([str(written), "--run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot run the probes on a chip: samna is not installed") and "fix:" in err
