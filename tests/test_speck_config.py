"""Speck artefact: events <-> raster, the JSON configuration, samna detection, no partial artefact."""

import json
import sys
import warnings

import numpy as np
import pytest

from neurodeploy.errors import DesignRuleError, NeurodeployError
from neurodeploy.targets import get_target
from neurodeploy.targets.speck import config as cfg, examples
from neurodeploy.targets.speck.events import events_to_raster, raster_to_events
from neurodeploy.targets.speck.quantize import SpeckQuantizationWarning, quantize


def test_events_raster_round_trip():
    rng = np.random.default_rng(0)
    r = rng.integers(0, 5, size=(3, 7, 5))
    ev = raster_to_events(r, core=4, dt_us=10)
    assert len(ev) == r.sum() and np.all(ev["core"] == 4)
    assert np.array_equal(events_to_raster(ev, r.shape), r)
    assert np.array_equal(events_to_raster(ev, r.shape, core=4), r)
    assert events_to_raster(ev, r.shape, core=1).sum() == 0
    assert np.all(np.diff(ev["timestamp"]) >= 0)  # time-ordered
    v = rng.integers(0, 3, size=(11,))
    assert np.array_equal(events_to_raster(raster_to_events(v), (11,)), v)


def test_event_order_is_round_robin_and_deterministic():
    r = np.zeros((2, 1, 2), dtype=int)
    r[0, 0, 1], r[1, 0, 0] = 2, 1
    ev = raster_to_events(r, dt_us=5)
    got = [(int(e["feature"]), int(e["y"]), int(e["x"]), int(e["timestamp"])) for e in ev]
    assert got == [(0, 0, 1, 0), (1, 0, 0, 0), (0, 0, 1, 5)]
    assert np.array_equal(raster_to_events(r), raster_to_events(r))


def test_events_refuse_negative_or_fractional():
    with pytest.raises(NeurodeployError, match="negative"):
        raster_to_events(-np.ones((1, 2, 2)))
    with pytest.raises(NeurodeployError, match="integers"):
        raster_to_events(np.full((1, 2, 2), 0.5))


def test_emit_configuration(tmp_path):
    g = examples.conv_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        qg = quantize(g)
        paths = get_target("speck").emit(qg, tmp_path, core_map={"fc": 7}, barrier=False)  # the plain config
    assert {p.name for p in paths.values()} == {"speck_config.json", "core_map.json", "memory_report.txt"}
    c = json.loads((tmp_path / "speck_config.json").read_text())
    assert c["format"] == cfg.FORMAT and c["format_version"] == 1
    assert c["layer_to_core"] == {"conv1": 0, "conv2": 1, "fc": 7}
    core = c["cores"]["0"]
    wq = qg.nodes["conv1"].weight_q
    w = np.array(core["weights"])
    assert w.shape == (4, 2, 3, 3) and np.array_equal(w, wq.transpose(0, 1, 3, 2))  # [f][c][x][y]
    assert w[0, 1, 2, 0] == wq[0, 1, 0, 2]
    n1 = qg.nodes["if1"]
    init = np.array(core["neurons_initial_value"])  # [f][x][y], bias folded in
    assert init.shape == (4, 16, 16)
    assert np.array_equal(init[:, 0, 0], n1.v_init_q + qg.nodes["conv1"].bias_q)
    assert core["biases"] == [0, 0, 0, 0] and core["leak_enable"] is False
    assert core["threshold_high"] == n1.threshold_q and core["threshold_low"] == -32768
    assert core["return_to_zero"] is False and core["monitor_enable"] is False
    assert core["destinations"] == [{"layer": 1, "enable": True, "pooling": 2}]
    assert c["cores"]["1"]["destinations"] == [{"layer": 7, "enable": True, "pooling": 1}]
    assert c["cores"]["7"]["monitor_enable"] is True and c["output"]["monitored_cores"] == [7]
    assert c["cores"]["1"]["dimensions"] == {"input_shape": {"size": {"x": 8, "y": 8}, "feature_count": 4},
                                             "output_shape": {"size": {"x": 4, "y": 4}, "feature_count": 8},
                                             "padding": {"x": 1, "y": 1}, "stride": {"x": 2, "y": 2},
                                             "kernel_size": 3}
    fc = np.array(c["cores"]["7"]["weights"])
    assert fc.shape == (10, 8, 4, 4)  # Linear as a conv over its whole (8, 4, 4) input
    assert c["input"]["destinations"] == [{"core": 0, "layer": "conv1", "pooling": 1}]
    st = c["samna_status"]
    assert st["samna_available"] is False and "speck_flash.bin" in st["not_produced"]
    assert "no flash binary" in (tmp_path / "memory_report.txt").read_text()
    # leak mode: biases on the chip, initial value without them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        get_target("speck").emit(qg, tmp_path / "leak", bias_mode="leak")
    c2 = json.loads((tmp_path / "leak" / "speck_config.json").read_text())
    assert c2["cores"]["0"]["biases"] == qg.nodes["conv1"].bias_q.tolist() and c2["cores"]["0"]["leak_enable"]


def test_network_that_does_not_fit_leaves_no_artefact(tmp_path):
    g = examples.conv_net(in_shape=(2, 130, 130))
    with pytest.raises(DesignRuleError) as e:
        get_target("speck").emit(g, tmp_path / "out")
    assert len(e.value.violations) >= 2  # input size + output map (+ memory ...)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _fake_samna(root, with_so: bool):
    pkg = root / "samna"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('samna must not be imported')\n")
    if with_so:
        (pkg / "samna.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")


@pytest.mark.parametrize("with_so", [False, True])
def test_samna_detection_without_import(tmp_path, monkeypatch, with_so):
    _fake_samna(tmp_path, with_so)
    monkeypatch.syspath_prepend(str(tmp_path))
    ok, why = cfg.samna_available()
    assert ok is with_so
    assert "samna" not in sys.modules
    if not with_so:
        assert "stub" in why


def test_samna_branch_with_a_fake_samna(tmp_path, monkeypatch):
    """The samna code path (config object, validation, flash binary) with a stand-in module."""
    import types

    class Layer:
        def __init__(self):
            self.destinations = [types.SimpleNamespace(layer=0, enable=False, pooling=1) for _ in range(2)]

    class SpeckConfiguration:
        def __init__(self):
            self.cnn_layers = [Layer() for _ in range(9)]
            self.dvs_layer = types.SimpleNamespace(pass_sensor_events=True)

        def to_json(self):
            return json.dumps({"cores": [getattr(l, "threshold_high", None) for l in self.cnn_layers]})

    samna = types.ModuleType("samna")
    speck2f = types.ModuleType("samna.speck2f")
    conf = types.ModuleType("samna.speck2f.configuration")
    conf.SpeckConfiguration = SpeckConfiguration
    speck2f.configuration = conf
    speck2f.validate_configuration = lambda c: (c.cnn_layers[0].return_to_zero is False, "ok")
    speck2f.configuration_to_flash_binary = lambda c: [1, 2, 3]
    samna.speck2f = speck2f
    for name, mod in (("samna", samna), ("samna.speck2f", speck2f), ("samna.speck2f.configuration", conf)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(cfg, "samna_available", lambda: (True, "fake samna"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        paths = get_target("speck").emit(examples.conv_net(), tmp_path)
    assert (tmp_path / "speck_flash.bin").read_bytes() == bytes([1, 2, 3])
    assert "samna_config.json" in {p.name for p in paths.values()}
    st = json.loads((tmp_path / "speck_config.json").read_text())["samna_status"]
    assert st["samna_available"] and st["validated"] and st["produced"] == ["samna_config.json", "speck_flash.bin"]
