"""compile/verify --bias-mode / --bias-bits (Speck): reach the quantiser and the artefact; bad values exit 2."""

import json

import numpy as np
from click.testing import CliRunner

from neurodeploy.cli import main
from neurodeploy.nir_io import write_nir
from neurodeploy.targets.speck import examples


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def big_bias_model(tmp_path):
    """Two Linear layers, the first with biases of ±3 (6x its largest weight): the 8-bit bias rule would
    bind in leak mode."""
    rng = np.random.default_rng(0)
    g = examples.chain([rng.normal(0, 0.2, (6, 4)), rng.normal(0, 0.3, (3, 6))], in_shape=(4,))
    g.nodes["fc0"].weight[0, 0] = 0.5
    g.nodes["fc0"].bias = np.array([3.0, -3.0, 1.0, 0.0, 2.0, -1.0])
    path = tmp_path / "net.nir"
    write_nir(g, path)
    return path


def test_bias_mode_and_bits_reach_the_speck_artefact(tmp_path):
    model = big_bias_model(tmp_path)
    res = run("compile", model, "--target", "speck", "-o", tmp_path / "initial")
    assert res.exit_code == 0, res.output
    conf = json.loads((tmp_path / "initial" / "speck_config.json").read_text())
    assert conf["bias_mode"] == "initial" and conf["quantization"]["bias_bits"] == 16
    assert conf["quantization"]["layers"]["fc0"]["limited_by"] == "weights"
    assert "limited by" in (tmp_path / "initial" / "memory_report.txt").read_text()

    res = run("compile", model, "--target", "speck", "-o", tmp_path / "leak", "--bias-mode", "leak", "--bias-bits", 6)
    assert res.exit_code == 0, res.output
    conf = json.loads((tmp_path / "leak" / "speck_config.json").read_text())
    layer = conf["quantization"]["layers"]["fc0"]
    assert conf["bias_mode"] == "leak" and conf["quantization"]["bias_bits"] == 6 and layer["limited_by"] == "bias"
    core = conf["cores"][str(conf["layer_to_core"]["fc0"])]
    assert max(abs(b) for b in core["biases"]) <= 32 and core["leak_enable"] is True
    manifest = json.loads((tmp_path / "leak" / "manifest.json").read_text())
    assert manifest["options"]["target_options"] == {"bias_mode": "leak", "bias_bits": 6}


def test_bad_bias_options_exit_2_and_leave_nothing(tmp_path):
    model = big_bias_model(tmp_path)
    res = run("compile", model, "--target", "speck", "-o", tmp_path / "out", "--bias-mode", "leak", "--bias-bits", 16)
    assert res.exit_code == 2
    assert "bias_bits=16" in res.output and "8 bits" in res.output
    assert not (tmp_path / "out").exists()
    res = run("compile", model, "--target", "sim", "-o", tmp_path / "out", "--bias-mode", "leak")
    assert res.exit_code == 2 and "--target speck only" in res.output
    assert not (tmp_path / "out").exists()
    assert "--bias-mode" in run("verify", "--help").output
