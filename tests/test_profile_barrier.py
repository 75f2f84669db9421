"""The profile of a Speck deployment shows what the layer barrier adds (issue 13, part 4)."""

import json

import numpy as np
import pytest

from neurodeploy import api
from neurodeploy.targets import get_target

MODEL, ARCH = "examples/digits_chain.pt", "examples/digits_chain.py:build_model"


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    data = tmp_path_factory.mktemp("d") / "few.npz"
    with np.load("examples/digits_test.npz") as f:
        np.savez(data, x=f["x"][:12], y=f["y"][:12])
    return api.profile(MODEL, arch=ARCH, data=data, target="speck"), data


def test_profile_reports_the_barrier_cost_from_the_deployed_plan(profiled):
    report, _ = profiled
    s = report.barrier_summary()
    assert s is not None
    gate_synops = sum(c["gate_synops"] for c in report.barrier["layers"])
    data_synops = sum(r.synops or 0 for r in report.layers)
    assert s["gate_synops"] == gate_synops > 0
    assert s["synops_factor"] == pytest.approx((data_synops + gate_synops) / data_synops)
    assert s["host_gate_events"] == report.barrier["host_events_per_sample"] > 0
    assert all(v > 0 for v in s["kernel_memory_extra"].values())  # the gate feature takes kernel memory
    text = report.format("table")
    assert "Speck layer barrier" in text and f"{s['host_gate_events']} host gate events" in text
    assert json.loads(report.format("json"))["speck_barrier"]["summary"]["host_gate_events"] == s["host_gate_events"]


def test_profile_cost_equals_the_compiled_host_program(profiled, tmp_path):
    report, data = profiled
    res = api.compile(MODEL, arch=ARCH, target="speck", out_dir=tmp_path / "out", data=data)
    program = json.loads((tmp_path / "out" / "speck_host_program.json").read_text())
    assert res.profile.barrier == program["cost"] == report.barrier
    assert json.loads((tmp_path / "out" / "profile.json").read_text())["speck_barrier"]["cost"] == program["cost"]


def test_no_barrier_means_no_barrier_section(profiled):
    _, data = profiled
    tgt = get_target("speck")
    g = api.prepare(MODEL, arch=ARCH).canonical
    assert tgt.barrier_cost(tgt.quantize(g, barrier=False), barrier=False) is None
    sim = api.profile(MODEL, arch=ARCH, data=data, target="sim")
    assert sim.barrier is None and sim.barrier_summary() is None
    assert "Speck layer barrier" not in sim.format("table") and "speck_barrier" not in sim.to_dict()
