"""End-to-end: the CLI on the bundled demo model (compile, verify, profile, determinism, safety)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from neurodeploy.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_sfa.pt"
ARCH = f"{ROOT / 'examples' / 'digits_sfa.py'}:build_model"
TEST_DATA = ROOT / "examples" / "digits_test.npz"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "demo"
    res = run("compile", DEMO, "--arch", ARCH, "--target", "sim", "-o", out, "--data", TEST_DATA,
              "--limit", 120, "--verify")
    assert res.exit_code == 0, res.output
    return out, res.output


def test_compile_writes_every_artefact(compiled):
    out, output = compiled
    names = {p.name for p in out.iterdir()}
    for expected in ("manifest.json", "network.nir", "graph.ir.npz", "profile.json", "profile.csv",
                     "profile.png", "verify.json"):
        assert expected in names, f"{expected} missing from {sorted(names)}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "sim"
    assert manifest["input"]["format"] == "checkpoint"
    assert len(manifest["input"]["sha256"]) == 64
    assert set(manifest["artefacts"]) == names - {"manifest.json"}
    assert "SynOps" in output or "synops" in output.lower()


def test_verify_is_exact_in_sync_schedule(compiled):
    out, _ = compiled
    report = json.loads((out / "verify.json").read_text())
    sync_layers = report["schedules"]["sync"]["layers"]
    assert sync_layers, "no layers verified"
    for layer in sync_layers:
        assert layer["exact_fraction"] == 1.0, layer


def test_compile_is_deterministic(compiled, tmp_path):
    out, _ = compiled
    again = tmp_path / "again"
    res = run("compile", DEMO, "--arch", ARCH, "--target", "sim", "-o", again, "--data", TEST_DATA,
              "--limit", 120, "--verify")
    assert res.exit_code == 0, res.output
    for p in sorted(out.iterdir()):
        assert (again / p.name).read_bytes() == p.read_bytes(), f"{p.name} differs between two compiles"


def test_corrupt_model_gives_clear_error_and_no_output(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(DEMO.read_bytes()[: len(DEMO.read_bytes()) // 3])
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["compile", str(bad), "--arch", ARCH, "-o", str(out)])
    assert res.exit_code == 2
    assert "broken.pt" in res.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temp folder left behind"


def test_failed_compile_leaves_existing_output_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    # --force: keep.txt is not ours, so without it compile refuses before loading (tests/test_output_safety.py)
    res = CliRunner().invoke(main, ["compile", str(DEMO), "--arch", ARCH, "-o", str(out), "--force",
                                    "--until", "no.such.module"])
    assert res.exit_code == 2
    assert "no.such.module" in res.output
    assert (out / "keep.txt").read_text() == "old"


def test_help_teaches():
    res = run("--help")
    assert res.exit_code == 0
    for word in ("compile", "verify", "profile", "speck", "loihi", "Examples"):
        assert word in res.output
    res = run("compile", "--help")
    assert "--until" in res.output and "--trust" in res.output


def test_profile_formats(tmp_path):
    res = run("profile", DEMO, "--arch", ARCH, "--data", TEST_DATA, "--limit", 20, "--format", "json",
              "--plot", tmp_path / "p.png")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output.split("\nplot written")[0])
    assert payload
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_shows_recognised_neurons():
    res = run("inspect", DEMO, "--arch", ARCH)
    assert res.exit_code == 0, res.output
    assert "IFNeuron" in res.output
    assert "projector" not in res.output  # the SimCLR head is dropped (checkpoint says until=encoder)


def test_routing_route_and_event_engine_from_the_cli(tmp_path):
    out = tmp_path / "r"
    res = run("compile", DEMO, "--arch", ARCH, "-o", out, "--emit", "routing", "--no-profile")
    assert res.exit_code == 0, res.output
    assert (out / "routing.npz").exists()
    res = run("route", out, "--layer", "encoder.conv1", "--address", "0,0,0", "--json")
    assert res.exit_code == 0, res.output
    dests = json.loads(res.output)["destinations"]
    # a corner input of a 3x3 pad-1 conv reaches 2x2 output positions in each of the 32 channels
    assert len(dests) == 4 * 32
    res = run("simulate", out, "--data", TEST_DATA, "--limit", 10, "--engine", "event", "--no-progress", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["synaptic_events"] > 0
    assert all(row["mismatches"] == 0 for row in report["layers"].values())


def test_nir_artefact_reimports_to_identical_simulation(compiled):
    import numpy as np

    from neurodeploy.ir_io import load_graph
    from neurodeploy.nir_io import from_nir
    from neurodeploy.simulator import simulate

    out, _ = compiled
    x = np.load(TEST_DATA)["x"][:64]
    original = simulate(load_graph(out / "graph.ir.npz"), x)
    reimported = simulate(from_nir(out / "network.nir"), x)
    assert set(reimported.counts) == set(original.counts)
    for name, counts in original.counts.items():
        assert np.array_equal(reimported.counts[name], counts), name
    assert sum(int(c.sum()) for c in original.counts.values()) > 0


def test_compile_from_the_nir_file(compiled, tmp_path):
    out, _ = compiled
    res = run("compile", out / "network.nir", "--target", "sim", "-o", tmp_path / "again")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again" / "graph.ir.npz").exists()
