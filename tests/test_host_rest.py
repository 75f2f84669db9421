"""Issue 9, part 2 on chips: ``--host-rest`` deploys the furthest prefix of E-SpikeFormer (tiny) that
passes the Speck / Loihi design rules and writes the rest as a host program fed by the chip's counts."""
import json
import os

import numpy as np
import pytest
import torch
from demo_helpers import EX, load_example

import neurodeploy.api as nd
from neurodeploy import ir, ops
from neurodeploy.errors import DesignRuleError
from neurodeploy.passes.cut import furthest_until
from neurodeploy.split import evaluate_given, host_neurons, run_host_program, split_for_target
from neurodeploy.targets import get_target

E = load_example("espikeformer.py", "espikeformer_example_host_rest")
ARCH = os.path.join(EX, "espikeformer.py") + ":build_model"
SHAPE = (3, E.TINY["img"], E.TINY["img"])


def _arch_kwargs():
    return {k: list(v) if isinstance(v, tuple) else v for k, v in E.TINY.items()}


@pytest.fixture(scope="module")
def x():
    return np.abs(E.random_images(2, E.TINY["img"], seed=1))  # Speck input events carry no sign


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, x):
    d = tmp_path_factory.mktemp("host_rest")
    torch.save({"model": E.build_tiny_model().state_dict(), "input_shape": list(SHAPE)}, d / "esf.pt")
    np.savez(d / "data.npz", x=x)
    return d


@pytest.fixture(scope="module")
def prepared(checkpoint):
    return nd.prepare(checkpoint / "esf.pt", arch=ARCH, arch_kwargs=_arch_kwargs())


@pytest.fixture(scope="module")
def compiled(checkpoint):
    out = checkpoint / "speck_out"
    res = nd.compile(checkpoint / "esf.pt", arch=ARCH, arch_kwargs=_arch_kwargs(), target="speck", out_dir=out,
                     data=checkpoint / "data.npz", verify=True, profile=False, host_rest=True)
    return out, res


@pytest.mark.parametrize("target", ["speck", "loihi"])
def test_split_point_is_the_furthest_passing_until(prepared, target, x):
    tgt, c = get_target(target), prepared.canonical
    split = split_for_target(tgt, c, x)
    assert split.cut == furthest_until(c, accept=lambda p: not tgt.check(p))
    assert tgt.check(split.chip) == []
    chip = {n for n, node in split.chip.nodes.items() if not isinstance(node, ir.Output)}
    assert chip <= set(c.nodes)
    outputs = [n for n, node in c.nodes.items() if isinstance(node, ir.Output)]
    assert outputs and set(outputs) <= set(split.part.host) and set(outputs) <= set(split.part.from_host)
    # every node runs somewhere; the host reads chip spike counts (or the input), never a chip current
    assert chip | set(split.part.host) >= set(c.nodes) - {n for n in c.nodes if isinstance(c.nodes[n], ir.Input)}
    g = split.host_graph
    assert all(isinstance(g.nodes[n], (ir.IFNeuron, ir.Input)) for n in split.part.to_host)
    assert split.cut in split.part.to_host
    assert all(n in chip for n in split.recomputed)       # chip weight layers whose currents feed residuals
    assert set(host_neurons(split)) == set(g.neurons()) - set(split.chip.neurons())


def test_no_split_without_the_flag(checkpoint):
    with pytest.raises(DesignRuleError) as e:
        nd.compile(checkpoint / "esf.pt", arch=ARCH, arch_kwargs=_arch_kwargs(), target="loihi",
                   out_dir=checkpoint / "refused")
    assert "--host-rest" in str(e.value) and f"--until {e.value.until}" in str(e.value)
    assert not (checkpoint / "refused").exists()


def test_artefacts_for_chip_and_host(compiled):
    out, res = compiled
    for name in ("speck_config.json", "core_map.json", "graph.ir.npz", "network.nir", "host_program.pt2",
                 "host_interface.json", "host_graph.ir.npz", "verify.json", "manifest.json"):
        assert (out / name).is_file(), name
    desc = json.loads((out / "host_interface.json").read_text())
    assert desc["chip_target"] == "speck" and desc["chip_until"] == res.quantized.neurons()[-1]
    crossing = {t["name"]: t for t in desc["to_host"]}
    cut = crossing[desc["chip_until"]]
    assert cut["kind"] == "spike counts" and cut["produced_by"].startswith("speck chip layer")
    core_map = json.loads((out / "core_map.json").read_text())["layer_to_core"]
    assert cut["core"] == core_map[res.quantized.inputs_of(desc["chip_until"])[0]]
    assert cut["max_value"] == E.D and cut["shape"] == list(res.quantized.nodes[desc["chip_until"]].shape)
    assert "chip part:" in res.split_note and "host part:" in res.split_note
    assert json.loads((out / "manifest.json").read_text())["options"]["host_rest"] is True


def test_host_program_from_disk_equals_evaluate_of_the_host_part(compiled, x):
    from neurodeploy.host_program import load_host_program
    from neurodeploy.ir_io import load_graph

    out, res = compiled
    desc = json.loads((out / "host_interface.json").read_text())
    chip = get_target("speck").simulate(res.quantized, x, schedule="speck").counts   # the deployed schedule
    program = load_host_program(out / "host_program.pt2")
    got = run_host_program(None, desc, chip, x, program)
    host_graph = load_graph(out / "host_graph.ir.npz")
    # the independent side: the whole host-quantised graph, only the chip's counts given
    want = evaluate_given(host_graph, x, {t["name"]: chip[t["name"]] for t in desc["to_host"]
                                          if t["name"] in chip})
    assert set(got) == set(desc["from_host"][i]["name"] for i in range(len(desc["from_host"])))
    for name, v in got.items():
        assert np.array_equal(v, want[name].numpy()), name
    # with the integer reference's own chip counts, the composition is ops.evaluate of the whole graph
    full = ops.evaluate(host_graph, x)
    ref_chip = {n: full[n] for n in chip}
    again = run_host_program(None, desc, ref_chip, x, program)
    for name, v in again.items():
        assert np.array_equal(v, full[name].numpy()), name
    assert sum(float(got[n].sum()) for n in got if isinstance(host_graph.nodes[n], ir.IFNeuron)) > 0
    assert [n for n in got if isinstance(host_graph.nodes[n], ir.Output)]   # the model's output comes back


def test_verify_of_the_composed_system_reports_both_parts(compiled):
    out, res = compiled
    rep = res.verify
    assert rep.ok() and rep.host_exact
    assert rep.chip_schedule == "speck"
    from neurodeploy.ir_io import load_graph
    host_graph = load_graph(out / "host_graph.ir.npz")
    assert {r.layer for r in rep.host} == set(host_graph.neurons()) - set(res.quantized.neurons())
    assert len(rep.host) > 10 and all(r.vs_reference == 0 for r in rep.host)
    assert all(r.vs_model >= 0 and r.vs_model_host_only >= 0 for r in rep.host)
    # fed with the model's own counts, the host deviates no more than fed with the chip's
    assert sum(r.vs_model_host_only for r in rep.host) <= sum(r.vs_model for r in rep.host)
    # and every such deviation is classified by the sim precision analysis (none unexplained)
    prec = rep.host_precision
    assert prec.ok and {lr.layer for lr in prec.layers} == {r.layer for r in rep.host}
    assert prec.total("mismatches") == sum(r.vs_model_host_only for r in rep.host)
    assert rep.top1_agreement is not None and rep.top1_agreement[1] == 2
    text = rep.format_table()
    assert "chip part (speck" in text and "host part" in text and "EXACT" in text
    saved = json.loads((out / "verify.json").read_text())
    assert saved["host"]["exact"] and saved["split"]["chip_until"] == rep.cut
    assert saved["host"]["precision"]["unexplained"] == 0


def test_cli_verify_host_rest_on_loihi(checkpoint):
    from click.testing import CliRunner

    from neurodeploy.cli import main

    args = ["verify", str(checkpoint / "esf.pt"), "--arch", ARCH, "--arch-kwargs", json.dumps(_arch_kwargs()),
            "--data", str(checkpoint / "data.npz"), "--target", "loihi"]
    res = CliRunner().invoke(main, args + ["--host-rest", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output[res.output.index("{"):])
    assert rep["ok"] and rep["host"]["exact"] and rep["split"]["chip_schedule"] == "sync"
    assert rep["chip"]["exactness"]["ok"] and len(rep["host"]["layers"]) > 10


def test_no_prefix_passes_names_the_first_layers_violation():
    from neurodeploy.converters import from_torch
    from neurodeploy.errors import NeurodeployError
    from neurodeploy.passes import canonicalize

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), E.MultiSpike(),
                                torch.nn.Conv2d(4, 4, 3, padding=1), E.MultiSpike()).eval()
    c = canonicalize(from_torch(model, (3, 130, 130)))      # Speck's input array is <= 128x128
    with pytest.raises(NeurodeployError) as e:
        split_for_target(get_target("speck"), c)
    assert "no prefix" in str(e.value) and "130x130" in str(e.value)
    assert split_for_target(get_target("loihi"), c) is None   # Loihi takes it whole: nothing to split


def test_cli_compile_and_run_the_composed_loihi_artefact(checkpoint, x):
    from click.testing import CliRunner

    from neurodeploy.cli import main
    from neurodeploy.ir_io import load_graph
    from neurodeploy.targets.loihi import run_artifact

    out = checkpoint / "loihi_out"
    model = [str(checkpoint / "esf.pt"), "--arch", ARCH, "--arch-kwargs", json.dumps(_arch_kwargs())]
    res = CliRunner().invoke(main, ["compile", *model, "-t", "loihi", "-o", str(out), "--host-rest",
                                    "--data", str(checkpoint / "data.npz"), "--no-profile"])
    assert res.exit_code == 0, res.output
    assert "chip part:" in res.output and "host_program.pt2" in res.output
    run = CliRunner().invoke(main, ["run", str(out), "--data", str(checkpoint / "data.npz"), "--runtime", "sim",
                                    "--json"])
    assert run.exit_code == 0, run.output
    got = json.loads(run.output[run.output.index("{"):])["host"]["values"]
    chip = run_artifact(out, x, runtime="sim").counts
    host_graph = load_graph(out / "host_graph.ir.npz")
    want = evaluate_given(host_graph, x, chip)
    assert got and got == {n: int(want[n].sum()) for n in got}
    assert "output" in got and sum(got[n] for n in host_neurons_of(host_graph, got)) > 0


def host_neurons_of(graph, names):
    return [n for n in names if isinstance(graph.nodes[n], ir.IFNeuron)]


def test_host_rest_is_for_chip_targets_only(prepared):
    from neurodeploy.errors import NeurodeployError

    with pytest.raises(NeurodeployError, match="--host-rest applies to --target speck or loihi"):
        nd._host_rest_split(get_target("sim"), prepared.canonical, None)
