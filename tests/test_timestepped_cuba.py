"""Current-based LIF (issue 10): snnTorch ``Synaptic`` and NIR ``CubaLIF`` enter as an
:class:`ir.LIFNeuron` with a synaptic current (``alpha``), and the simulator's spike trains equal
snnTorch's own forward, and snnTorch's own NIR reader, step by step."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from neurodeploy import ir, ir_io
from neurodeploy.converters.neurons import from_timestepped
from neurodeploy.errors import NeurodeployError
from neurodeploy.nir_io import from_nir, to_nir
from neurodeploy.simulator import simulate
from neurodeploy.verify_timestepped import format_report, verify_timestepped
from timestepped_helpers import Repeat, StatefulRepeat, assert_simulator_matches_model, lava_check

snn = pytest.importorskip("snntorch")

T = 8


class SynapticMLP(nn.Module):
    """As snnTorch's tutorials write it: a loop over T, states from init_synaptic."""

    def __init__(self, **kw):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(10, 24), snn.Synaptic(alpha=0.8, beta=0.85, **kw)
        self.fc2, self.lif2 = nn.Linear(24, 5), snn.Synaptic(alpha=torch.full((5,), 0.6), beta=0.7, **kw)

    def forward(self, x):
        syn1, mem1 = self.lif1.init_synaptic()
        syn2, mem2 = self.lif2.init_synaptic()
        out = []
        for _ in range(T):
            spk1, syn1, mem1 = self.lif1(self.fc1(x), syn1, mem1)
            spk2, syn2, mem2 = self.lif2(self.fc2(spk1), syn2, mem2)
            out.append(spk2)
        return torch.stack(out)


@pytest.mark.parametrize("kw", [{}, {"reset_mechanism": "zero"}, {"reset_delay": False},
                                {"threshold": 0.7, "reset_mechanism": "zero", "reset_delay": False}])
def test_snntorch_synaptic_matches_its_forward_per_step(kw):
    torch.manual_seed(1)
    net = SynapticMLP(**kw)
    x = torch.rand(32, 10)
    g = from_timestepped(net, x, T)
    lif = g.nodes["lif1"]
    assert lif.synaptic and lif.alpha == pytest.approx(0.8) and lif.beta == pytest.approx(0.85)
    assert lif.reset == kw.get("reset_mechanism", "subtract")
    assert lif.reset_timing == ("next_step" if kw.get("reset_delay", True) else "same_step")
    report = verify_timestepped(net, g, x)
    assert report["exact"], format_report(report)
    assert all(r["spikes_model"] > 0 for r in report["layers"].values())
    # without the current (alpha = 0: syn = input) the neuron is a Leaky: the trains differ
    leaky = from_timestepped(net, x, T)
    for n in leaky.of_type(ir.LIFNeuron):
        leaky.nodes[n].alpha = None
    assert not np.array_equal(simulate(leaky, x.double()).trains["lif1"], simulate(g, x.double()).trains["lif1"])


def test_synaptic_graph_ir_and_nir_file_round_trip(tmp_path):
    from neurodeploy.nir_io import write_nir

    torch.manual_seed(2)
    net = SynapticMLP()
    x = torch.rand(8, 10)
    g = from_timestepped(net, x, T)
    for back in (ir_io.graph_from_bytes(ir_io.graph_to_bytes(g)),
                 from_nir(write_nir(g, tmp_path / "syn.nir"), timesteps=T)):
        assert back.nodes["lif1"].alpha == g.nodes["lif1"].alpha
        assert np.array_equal(back.nodes["lif2"].alpha, g.nodes["lif2"].alpha)
        assert np.array_equal(simulate(back, x.double()).trains["lif2"], simulate(g, x.double()).trains["lif2"])
    with pytest.raises(NeurodeployError, match=r"alpha .* not in \[0, 1\]"):
        ir.LIFNeuron(alpha=1.5)


def test_nir_cubalif_from_snntorch_export_matches_the_synaptic_model():
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(6)
    net = nn.Sequential(  # nir 1.0.8 needs per-neuron parameter tensors (REFERENCE §6)
        nn.Linear(10, 24), snn.Synaptic(alpha=torch.full((24,), 0.8), beta=torch.full((24,), 0.85),
                                        threshold=torch.ones(24), init_hidden=True),
        nn.Linear(24, 5), snn.Synaptic(alpha=torch.full((5,), 0.5), beta=torch.ones(5), threshold=torch.ones(5),
                                       init_hidden=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ng = export_to_nir(net, torch.rand(1, 10), ignore_dims=[0])
    assert [type(n).__name__ for n in ng.nodes.values()].count("CubaLIF") == 2
    with pytest.raises(NeurodeployError, match=r"(?s)layer '1': NIR node is a leaky CubaLIF.*timesteps=T"):
        from_nir(ng)
    with pytest.raises(NeurodeployError, match=r"(?s)layer '1'.*CubaLIF in the sinabs convention.*snntorch"):
        from_nir(ng, timesteps=T, convention="sinabs")
    g = from_nir(ng, timesteps=T)
    lifs = [g.nodes[n] for n in g.of_type(ir.LIFNeuron)]
    assert [n.meta["nir_convention"] for n in lifs] == ["snntorch"] * 2
    assert lifs[0].alpha == np.float32(0.8) and lifs[0].beta == np.float32(0.85) and lifs[0].gain == 1.0
    assert not lifs[1].leaky and lifs[1].alpha == 0.5

    x = torch.rand(32, 10) * 1.5
    assert_simulator_matches_model(g, Repeat(net, T), x, T, every_layer_fires=True)


def test_our_cubalif_file_runs_the_same_in_snntorch_import_from_nir():
    """snnTorch's import_from_nir runs a CubaLIF as Synaptic(reset_mechanism='zero',
    reset_delay=False), threshold divided by the input scale w_in·dt/tau_syn: a graph of that
    kind, written by to_nir with a gain of 2 in w_in, spikes the same in snnTorch."""
    from snntorch.import_nir import import_from_nir

    torch.manual_seed(3)
    net = SynapticMLP(threshold=0.7, reset_mechanism="zero", reset_delay=False)
    x = torch.rand(32, 10) * 1.5
    g = from_timestepped(net, x, T)
    g.nodes["lif1"].gain = 2.0
    ng = to_nir(g)
    assert type(ng.nodes["lif1"]).__name__ == "CubaLIF"
    back = from_nir(ng, timesteps=T)  # our own metadata: exact
    assert (back.nodes["lif1"].alpha, back.nodes["lif1"].gain) == (g.nodes["lif1"].alpha, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imported = import_from_nir(ng)

    assert float(imported.lif1.threshold) == pytest.approx(0.35)  # 0.7 / w_scale 2
    assert_simulator_matches_model(g, StatefulRepeat(imported, T), x, T, every_layer_fires=True)


@pytest.mark.parametrize("neuron", ["Synaptic", "Leaky"])
def test_snntorch_export_read_as_snntorch_import_from_nir_runs_it(neuron):
    """convention='snntorch-import': the file as snnTorch's own import_from_nir rebuilds it (reset
    to zero in the same step), spike for spike against that module run for T steps."""
    from snntorch.export_nir import export_to_nir
    from snntorch.import_nir import import_from_nir

    torch.manual_seed(4)

    def neuron_of(n, beta):
        extra = {"alpha": torch.full((n,), 0.75)} if neuron == "Synaptic" else {}
        return getattr(snn, neuron)(beta=torch.full((n,), beta), threshold=torch.full((n,), 0.8),
                                    init_hidden=True, **extra)

    net = nn.Sequential(nn.Linear(10, 24), neuron_of(24, 0.85), nn.Linear(24, 5), neuron_of(5, 0.9))
    with torch.no_grad():
        net[2].weight.mul_(2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ng = export_to_nir(net, torch.rand(1, 10), ignore_dims=[0])
        imported = import_from_nir(ng)
    g = from_nir(ng, timesteps=T, convention="snntorch-import")
    lifs = [g.nodes[n] for n in g.of_type(ir.LIFNeuron)]
    assert all((n.reset, n.reset_timing, n.synaptic) == ("zero", "same_step", neuron == "Synaptic") for n in lifs)

    x = torch.rand(32, 10) * 1.5
    assert_simulator_matches_model(g, StatefulRepeat(imported, T), x, T, every_layer_fires=True)


def test_other_current_based_snntorch_neurons_are_refused_by_name():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.rsyn = nn.Linear(3, 3), snn.RSynaptic(alpha=0.9, beta=0.8, linear_features=3)

        def forward(self, x):
            return self.rsyn(self.fc(x))[0]

    with pytest.raises(NeurodeployError, match=r"(?s)layer 'rsyn'.*RSynaptic.*nearest supported form: "
                                               r"snntorch.Leaky or Synaptic"):
        from_timestepped(Net(), torch.rand(2, 3), 1)


def test_speck_refuses_a_synaptic_current_by_layer():
    from neurodeploy.targets.speck.timestepped import iaf_violations

    g = from_timestepped(SynapticMLP(), torch.rand(2, 10), T)
    bad = iaf_violations(g)
    assert any("layer 'lif1': synaptic current" in b for b in bad)


# -- Loihi: CUBA's u is the synaptic current (du from alpha) -------------------------------------

def synaptic_body(**kw):
    torch.manual_seed(11)
    body = nn.Sequential(nn.Linear(12, 16), snn.Synaptic(alpha=0.7, beta=0.9, init_hidden=True, **kw),
                         nn.Linear(16, 4), snn.Synaptic(alpha=0.5, beta=0.8, init_hidden=True, **kw))
    with torch.no_grad():
        body[2].weight.mul_(2.0)
    return Repeat(body, T, dim=1)


@pytest.mark.parametrize("kw,stock", [({}, False), ({"reset_mechanism": "zero", "reset_delay": False}, True)])
def test_synaptic_on_loihi_equals_lava_fixed_pt(kw, stock):
    pytest.importorskip("lava.proc.lif.models")
    x = torch.rand(5, 12) * 2
    prog, agree = lava_check(synaptic_body(**kw), x, x.numpy(), T, every_layer_fires=True)
    assert [L.du for L in prog.layers] == [round(4096 * 0.3), 2048]
    assert all(L.stock == stock for L in prog.layers)
    # measured 0.90-0.91 (layer 1) and 0.82-0.83 (layer 2): 8-bit input x weights, 12-bit decays
    assert min(agree.values()) > 0.8


def test_loihi_artefact_describes_each_layers_current_decay():
    from neurodeploy.api_timestepped import loihi_description
    from neurodeploy.targets.loihi.lif import lower_lif

    model = synaptic_body()
    x = torch.rand(5, 12) * 2
    prog = lower_lif(from_timestepped(model, x, T), x.numpy())
    desc, _ = loihi_description(prog)
    assert [layer["du"] for layer in desc["layers"]] == [L.du for L in prog.layers] == [round(4096 * 0.3), 2048]


def test_synaptic_zero_reset_one_step_later_is_refused_for_loihi():
    from neurodeploy.targets.loihi.lif import lower_lif

    g = from_timestepped(synaptic_body(reset_mechanism="zero"), torch.rand(2, 12), T)
    with pytest.raises(NeurodeployError, match=r"(?s)layer 'body.1'.*reset to zero one step later with a synaptic"):
        lower_lif(g, np.ones((2, 12)))


# -- command line: a Synaptic checkpoint and an exported CubaLIF file ----------------------------

SYN_ARCH = '''
import torch
from torch import nn
import snntorch as snn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(12, 16), snn.Synaptic(alpha=0.7, beta=0.9, init_hidden=True)
        self.fc2, self.lif2 = nn.Linear(16, 4), snn.Synaptic(alpha=0.5, beta=0.8, init_hidden=True)

    def forward(self, x):
        return torch.stack([self.lif2(self.fc2(self.lif1(self.fc1(x)))) for _ in range(6)], 1)


def build_model():
    return Net()
'''


def test_cli_verify_a_synaptic_checkpoint_on_sim_and_loihi(tmp_path):
    import json

    from click.testing import CliRunner

    from neurodeploy.cli import main

    (tmp_path / "arch.py").write_text(SYN_ARCH)
    torch.manual_seed(0)
    import importlib.util
    spec = importlib.util.spec_from_file_location("cuba_cli_arch", tmp_path / "arch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.build_model()
    with torch.no_grad():
        net.fc2.weight.mul_(3.0)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    np.savez(tmp_path / "x.npz", x=(np.random.default_rng(1).random((16, 12)) * 2).astype(np.float32))
    common = [str(tmp_path / "net.pt"), "--arch", f"{tmp_path / 'arch.py'}:build_model", "--input-shape", "12",
              "--timesteps", "6", "--input-layout", "static", "--data", str(tmp_path / "x.npz")]
    res = CliRunner().invoke(main, ["verify", *common, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["ok"] and rep["conversion"]["first_divergence"] is None
    assert rep["conversion"]["layers"]["lif2"]["spikes_model"] > 0
    res = CliRunner().invoke(main, ["verify", *common, "-t", "loihi"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "spike trains identical at every step" in res.output
