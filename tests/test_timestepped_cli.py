"""`neurodeploy compile|verify|profile|inspect --timesteps T` on time-stepped SNNs (issue 10):
a real snnTorch checkpoint + --arch, and a real sinabs.to_nir file, through the CLI in-process."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from neurodeploy.artifacts import sha256_file
from neurodeploy.cli import main
from timestepped_helpers import scale_weights

snn = pytest.importorskip("snntorch")
sinabs = pytest.importorskip("sinabs")

T = 6
ARCH = '''
import torch
from torch import nn
import snntorch as snn


class Net(nn.Module):
    def __init__(self, steps=6):
        super().__init__()
        self.steps = steps
        self.fc1 = nn.Linear(12, 16)
        self.lif1 = snn.Leaky(beta=0.9, init_hidden=True)
        self.fc2 = nn.Linear(16, 4)
        self.lif2 = snn.Leaky(beta=0.8, init_hidden=True, reset_mechanism="zero")

    def forward(self, x):
        return torch.stack([self.lif2(self.fc2(self.lif1(self.fc1(x)))) for _ in range(self.steps)], 1)


def build_model(steps=6):
    return Net(steps)
'''


def write_arch(path, text: str, module_name: str):
    """Write an --arch file and import it, as the CLI will."""
    import importlib.util

    path.write_text(text)
    spec = importlib.util.spec_from_file_location(module_name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def snntorch_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ts_cli")
    mod = write_arch(d / "arch.py", ARCH, "ts_cli_arch")
    torch.manual_seed(0)
    net = mod.build_model()
    with torch.no_grad():
        net.fc1.weight.mul_(3.0)
        net.fc2.weight.mul_(3.0)
    torch.save(net.state_dict(), d / "net.pt")
    x = (np.random.default_rng(1).random((16, 12)) * 2).astype(np.float32)
    np.savez(d / "x.npz", x=x)
    return d, net, x


def _args(d, *extra):
    return [str(d / "net.pt"), "--arch", f"{d / 'arch.py'}:build_model", "--input-shape", "12", *extra]


def run(args, code=0):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.output


def test_verify_sim_compares_spike_trains_with_the_model(snntorch_files):
    d, net, x = snntorch_files
    out = run(["verify", *_args(d, "--timesteps", str(T), "--input-layout", "static", "--data", str(d / "x.npz"),
                                "--json")])
    rep = json.loads(out)
    with torch.no_grad():  # the model's own spike counts, computed here independently
        net.lif1.reset_hidden()
        net.lif2.reset_hidden()
        spk2 = net(torch.as_tensor(x))
    assert rep["ok"] and rep["conversion"]["first_divergence"] is None
    assert rep["conversion"]["layers"]["lif2"]["spikes_model"] == int(spk2.sum()) > 0
    assert rep["conversion"]["layers"]["lif1"]["train_mismatches"] == 0


def test_verify_loihi_reports_conversion_and_precision(snntorch_files):
    d, _, _ = snntorch_files
    out = run(["verify", *_args(d, "--timesteps", str(T), "--input-layout", "static", "--data", str(d / "x.npz"),
                                "-t", "loihi")])
    assert "spike trains identical at every step" in out
    assert "precision (loihi integer program vs model forward" in out and "neuron-steps agreeing" in out


def test_compile_loihi_writes_lava_program_profile_and_manifest(snntorch_files):
    d, _, _ = snntorch_files
    out_dir = d / "out_loihi"
    out = run(["compile", *_args(d, "--timesteps", str(T), "--input-layout", "static", "--data", str(d / "x.npz"),
                                 "-t", "loihi", "-o", str(out_dir), "--verify")])
    assert "compiled time-stepped model (T = 6) for 'loihi'" in out
    manifest = json.loads((out_dir / "manifest.json").read_text())
    for name in ("graph.ir.npz", "network.nir", "loihi_lif.json", "loihi_lif.npz", "profile_timestepped.json",
                 "profile_timestepped.png", "verify.json"):
        assert manifest["artefacts"][name] == sha256_file(out_dir / name)
    desc = json.loads((out_dir / "loihi_lif.json").read_text())
    assert [L["process_model"].split()[0] for L in desc["layers"]] == ["neurodeploy", "lava"]  # subtract / zero
    with np.load(out_dir / "loihi_lif.npz") as f:
        assert f["layer0_weight"].shape == (16, 12) and np.all(f["layer0_weight"] % 2 == 0)
    prof = json.loads((out_dir / "profile_timestepped.json").read_text())
    assert prof["timesteps"] == T and len(prof["per_step"]) == T
    assert manifest["options"]["timesteps"] == T and manifest["options"]["input_layout"] == "static"


def test_profile_csv_and_inspect(snntorch_files, tmp_path):
    d, _, _ = snntorch_files
    out = run(["profile", *_args(d, "--timesteps", str(T), "--input-layout", "static", "--data", str(d / "x.npz"),
                                 "--format", "csv", "--plot", str(tmp_path / "p.png"))])
    rows = [r for r in out.strip().splitlines() if not r.startswith("plot written")]
    assert rows[0] == "step,synops,macs,spikes,energy_pj" and len(rows) == T + 2 and rows[-1].startswith("all,")
    assert (tmp_path / "p.png").stat().st_size > 0
    out = run(["inspect", *_args(d, "--timesteps", str(T), "--input-layout", "static")])
    assert "T = 6" in out and "LIFNeuron" in out


@pytest.mark.parametrize("extra, text", [
    ((), "is a time-stepped SNN (Leaky at 'lif1'"),
    (("--timesteps", "6"), "needs --input-layout"),
    (("--timesteps", "4", "--input-layout", "static"), "did not call its layers 4 times"),
])
def test_missing_or_wrong_time_options_are_refused(snntorch_files, extra, text):
    d, _, _ = snntorch_files
    out = run(["verify", *_args(d, "--data", str(d / "x.npz"), *extra)], code=2)
    assert text in out and "fix:" in out


def test_input_layout_without_timesteps_is_a_usage_error(snntorch_files):
    d, _, _ = snntorch_files
    out = run(["inspect", *_args(d, "--input-layout", "NT")], code=2)
    assert "pass --timesteps T" in out


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_sinabs_to_nir_file_compiles_for_speck(tmp_path):
    import nir
    import sinabs.layers as sl

    torch.manual_seed(3)
    N, steps = 5, 4
    net = torch.nn.Sequential(torch.nn.Linear(12, 20), sl.IAF(), torch.nn.Linear(20, 6), sl.IAF())
    scale_weights(net, 3.0)
    x = (torch.rand(N, steps, 12) * 2).round()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net(x)  # sinabs.to_nir reads the state shapes
        nir.write(tmp_path / "iaf.nir", sinabs.to_nir(net, x))
    np.savez(tmp_path / "x.npz", x=x.numpy())
    out_dir = tmp_path / "out"
    out = run(["compile", str(tmp_path / "iaf.nir"), "--timesteps", str(steps), "--data", str(tmp_path / "x.npz"),
               "-t", "speck", "-o", str(out_dir), "--verify"])
    assert "for 'speck'" in out and "precision (speck integer program vs sinabs.from_nir module" in out
    assert "float64 IR simulation vs sinabs.from_nir module" in out and "spike trains identical at every step" in out
    assert (out_dir / "speck_config.json").is_file() and (out_dir / "network.nir").is_file()
    out = run(["verify", str(tmp_path / "iaf.nir"), "--data", str(tmp_path / "x.npz")], code=2)
    assert "--timesteps T" in out


# -- the contrastive LIF demo (examples/digits_lif.py, trained by train_digits_lif_simclr.py) ---------------

EX = Path(__file__).resolve().parent.parent / "examples"
DEMO = [str(EX / "digits_lif.pt"), "--arch", f"{EX / 'digits_lif.py'}:build_encoder", "--timesteps", "6",
        "--input-layout", "static"]


def test_plain_torch_lif_equals_snntorch_leaky_spike_for_spike():
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_lif_demo", EX / "digits_lif.py")
    dl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dl)
    torch.manual_seed(4)
    for reset in ("subtract", "zero"):
        ours, theirs = dl.LIF(0.85, 1.0, reset), snn.Leaky(beta=0.85, threshold=1.0, init_hidden=True,
                                                          reset_mechanism=reset)
        theirs.reset_mem()
        cur = torch.rand(50, 4, 20) * 1.5
        with torch.no_grad():
            a = torch.stack([ours(cur[t]) for t in range(50)])
            b = torch.stack([theirs(cur[t]) for t in range(50)])
        assert a.sum() > 100 and torch.equal(a, b)


def test_demo_verifies_exactly_on_sim_with_its_probe():
    rep = json.loads(run(["verify", *DEMO, "--data", str(EX / "digits_test.npz"), "--limit", "64", "--json"]))
    assert rep["ok"] and rep["conversion"]["first_divergence"] is None
    assert rep["conversion"]["layers"]["lif2"]["spikes_model"] > 1000
    assert rep["end_task"]["model"] > 0.85


def test_demo_on_loihi_reports_precision_and_probe_accuracy():
    rep = json.loads(run(["verify", *DEMO, "--data", str(EX / "digits_test.npz"), "--limit", "64", "-t", "loihi",
                          "--calibration", str(EX / "digits_calib.npz"), "--json"]))
    assert rep["ok"] and all(r["train_agreement"] > 0.8 for r in rep["precision"].values())
    assert rep["end_task"]["loihi"] > 0.8


def test_demo_iaf_variant_on_speck_with_event_frames():
    iaf = [str(EX / "digits_iaf.pt"), "--arch", f"{EX / 'digits_lif.py'}:build_iaf_encoder", "--timesteps", "6",
           "--input-layout", "NT", "--data", str(EX / "digits_events_test.npz"), "--limit", "48"]
    rep = json.loads(run(["verify", *iaf, "-t", "speck", "--json"]))
    assert rep["ok"] and rep["conversion"]["first_divergence"] is None
    assert all(r["train_agreement"] > 0.9 for r in rep["precision"].values())
    assert rep["end_task"]["speck"] > 0.8
    out = run(["inspect", *iaf[:-4]])
    assert "LIFNeuron" in out
    prof = json.loads(run(["profile", *iaf, "--format", "json"]))  # event frames are spikes: SynOps, no MACs
    assert prof["total"]["macs"] == 0 and prof["layers"]["fc1"]["input"] == "spikes" and prof["total"]["synops"] > 0
    out = run(["verify", *iaf[:2], f"{EX / 'digits_lif.py'}:build_encoder", *iaf[3:]], code=2)
    assert "the model's forward fails on an input of shape" in out and "--arch-kwargs" in out


def test_plain_lif_multi_spike_with_delayed_reset_is_refused():
    import importlib.util

    from neurodeploy.converters.neurons import from_timestepped
    from neurodeploy.errors import UnsupportedOpError

    spec = importlib.util.spec_from_file_location("digits_lif_demo2", EX / "digits_lif.py")
    dl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dl)
    enc = dl.build_encoder(timesteps=3)
    enc.lif1.multi_spike = True  # with reset_delay=True: no such neuron in any framework
    with pytest.raises(UnsupportedOpError, match="multi_spike"):
        from_timestepped(enc, torch.rand(2, 1, 8, 8), 3)


SJ_ARCH = """
from torch import nn
from spikingjelly.activation_based import neuron


def build_model():
    return nn.Sequential(nn.Flatten(2), nn.Linear(12, 16), neuron.LIFNode(tau=2.0, step_mode="m"),
                         nn.Linear(16, 4), neuron.IFNode(step_mode="m", v_reset=None))
"""


def test_spikingjelly_multi_step_checkpoint_with_event_data_tn_layout(tmp_path):
    sj = pytest.importorskip("spikingjelly.activation_based.neuron")  # noqa: F841
    mod = write_arch(tmp_path / "sj.py", SJ_ARCH, "sj_cli_arch")
    torch.manual_seed(2)
    net = mod.build_model()
    with torch.no_grad():
        net[1].weight.mul_(3.0)
        net[3].weight.abs_().mul_(3.0)
    torch.save(net.state_dict(), tmp_path / "sj.pt")
    x = (np.random.default_rng(3).random((7, 5, 3, 4)) < 0.6).astype(np.float32)  # [N, T, 3, 4] events
    np.savez(tmp_path / "x.npz", x=x)
    args = [str(tmp_path / "sj.pt"), "--arch", f"{tmp_path / 'sj.py'}:build_model", "--timesteps", "5",
            "--input-layout", "TN", "--input-shape", "3,4", "--data", str(tmp_path / "x.npz")]
    rep = json.loads(run(["verify", *args, "--json"]))
    with torch.no_grad():  # the model's own output spikes, run here on [T, N, ...]
        from spikingjelly.activation_based import functional
        functional.reset_net(net)
        want = net(torch.as_tensor(x).transpose(0, 1)).sum()
    assert rep["ok"] and rep["conversion"]["layers"]["4"]["spikes_model"] == int(want) > 0


LYING_ARCH = '''
import sys
sys.path.insert(0, {ex!r})
import digits_lif as dl


def build_model():
    enc = dl.build_encoder(timesteps=4)  # lif1.beta = 0.9
    real_forward = enc.lif1.forward

    def forward(x):  # computes with beta 0.5 while its attribute says 0.9: a conversion divergence
        enc.lif1.beta = 0.5
        try:
            return real_forward(x)
        finally:
            enc.lif1.beta = 0.9
    enc.lif1.forward = forward
    return enc
'''


def test_a_conversion_divergence_fails_verify_and_compile_writes_nothing(tmp_path):
    (tmp_path / "lying.py").write_text(LYING_ARCH.format(ex=str(EX)))
    sd = torch.load(EX / "digits_lif.pt", weights_only=True)["model"]
    torch.save(sd, tmp_path / "w.pt")
    args = [str(tmp_path / "w.pt"), "--arch", f"{tmp_path / 'lying.py'}:build_model", "--timesteps", "4",
            "--input-layout", "static", "--data", str(EX / "digits_test.npz"), "--limit", "16"]
    out = run(["verify", *args], code=1)
    assert "first divergence: layer 'lif1' step 1" in out and ": conversion" in out and "FAILED" in out
    res = CliRunner().invoke(main, ["compile", *args, "-o", str(tmp_path / "out"), "--verify"])
    assert res.exit_code == 1 and not (tmp_path / "out").exists()
