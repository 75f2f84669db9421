"""End-to-end: the chain-shaped demo through the CLI for the Speck and Loihi targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from neurodeploy.cli import main

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ROOT / "examples" / "digits_chain.pt"
CHAIN_ARCH = f"{ROOT / 'examples' / 'digits_chain.py'}:build_model"
METAFORMER = ROOT / "examples" / "digits_sfa.pt"
METAFORMER_ARCH = f"{ROOT / 'examples' / 'digits_sfa.py'}:build_model"
TEST_DATA = ROOT / "examples" / "digits_test.npz"
CALIB = ROOT / "examples" / "digits_calib.npz"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_speck_compile_writes_config_mapping_and_memory_report(tmp_path):
    out = tmp_path / "speck"
    res = invoke("compile", CHAIN, "--arch", CHAIN_ARCH, "--target", "speck", "-o", out,
                 "--calibration", CALIB)
    assert res.exit_code == 0, res.output
    config = json.loads((out / "speck_config.json").read_text())
    core_map = json.loads((out / "core_map.json").read_text())
    assert (out / "memory_report.txt").read_text().strip()
    layer_to_core = core_map["layer_to_core"]
    assert set(layer_to_core) == {"encoder.stem_conv", "encoder.conv1", "encoder.conv2", "encoder.head"}
    assert len(set(layer_to_core.values())) == 4 and all(0 <= c <= 8 for c in layer_to_core.values())
    text = json.dumps(config)
    for key in ("threshold_high", "threshold_low", "neurons_initial_value", "destinations"):
        assert key in text, f"{key} missing from the Speck configuration"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "speck"


def test_speck_rejects_metaformer_with_every_violation_and_no_output(tmp_path):
    out = tmp_path / "speck"
    res = CliRunner().invoke(main, ["compile", str(METAFORMER), "--arch", METAFORMER_ARCH, "--target", "speck",
                                    "-o", str(out)])
    assert res.exit_code == 2
    assert "design-rule violation" in res.output
    # the residual Add of pre-activations and the pool before the last activation are both named
    assert "encoder.add" in res.output and "encoder.spike_out" in res.output
    assert res.output.count("fix:") >= 3
    assert not out.exists()


def test_speck_verify_separates_causes(tmp_path):
    res = invoke("verify", CHAIN, "--arch", CHAIN_ARCH, "--target", "speck", "--data", TEST_DATA,
                 "--calibration", CALIB, "--limit", 16, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    ladder = next(c for c in report["checks"] if c["name"] == "speck_ladder")["data"]
    causes = [r["cause"] for r in ladder["rungs"]]
    for cause in ("quantisation", "one spike per input event"):
        assert any(cause in c for c in causes), causes


@pytest.mark.lava
def test_loihi_artefact_runs_in_lava_and_equals_simulator(tmp_path):
    out = tmp_path / "loihi"
    res = invoke("compile", CHAIN, "--arch", CHAIN_ARCH, "--target", "loihi", "-o", out)
    assert res.exit_code == 0, res.output
    assert (out / "network.net").exists()
    runs = {}
    for runtime in ("lava", "sim"):
        r = invoke("run", out, "--data", TEST_DATA, "--limit", 3, "--runtime", runtime, "--json")
        assert r.exit_code == 0, r.output
        runs[runtime] = json.loads(r.output[r.output.index("{"):])["spikes"]
    assert runs["lava"] == runs["sim"]
    assert sum(runs["sim"].values()) > 0


@pytest.mark.lava
def test_verify_loihi_against_lava_is_exact():
    res = invoke("verify", CHAIN, "--arch", CHAIN_ARCH, "--target", "loihi", "--runtime", "lava",
                 "--data", TEST_DATA, "--limit", 4, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    lava = next(c for c in report["checks"] if c["name"] == "lava_vs_simulator")
    assert lava["ok"] is True
    for row in lava["data"]["layers"].values():
        assert row["count_mismatches"] == 0 and row["spike_time_mismatches"] == 0
