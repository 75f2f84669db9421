"""Time-stepped SNNs (issue 10): real snnTorch, SpikingJelly and sinabs modules enter without
rewriting, and the simulator's spike trains equal the model's own forward step by step."""

import numpy as np
import pytest
import torch
from torch import nn

from neurodeploy import ir, ops
from neurodeploy.converters.neurons import from_timestepped, model_spike_trains
from neurodeploy.errors import NeurodeployError
from neurodeploy.simulator import simulate
from neurodeploy.verify_timestepped import format_report, verify_timestepped
from timestepped_helpers import Repeat, assert_simulator_matches_model, scale_weights

snn = pytest.importorskip("snntorch")
sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
sj_layer = pytest.importorskip("spikingjelly.activation_based.layer")
sinabs_layers = pytest.importorskip("sinabs.layers")

T = 6


def assert_exact(model, graph, x, **kw):
    report = verify_timestepped(model, graph, x, **kw)
    assert report["exact"], format_report(report)
    assert sum(r["spikes_model"] for r in report["layers"].values()) > 0  # something fired
    return report


class SnnTorchMLP(nn.Module):
    """As snnTorch's tutorials write it: a loop over T calling the layers, membranes from init_leaky."""

    def __init__(self, T=T, **leaky):
        super().__init__()
        self.T = T
        self.fc1, self.lif1 = nn.Linear(10, 24), snn.Leaky(beta=0.85, **leaky)
        self.fc2, self.lif2 = nn.Linear(24, 5), snn.Leaky(beta=torch.full((5,), 0.7), **leaky)

    def forward(self, x):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        out = []
        for _ in range(self.T):
            spk1, mem1 = self.lif1(self.fc1(x), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            out.append(spk2)
        return torch.stack(out)


@pytest.mark.parametrize("leaky", [{}, {"reset_mechanism": "zero"}, {"reset_delay": False},
                                   {"threshold": 0.6, "reset_mechanism": "zero", "reset_delay": False}])
def test_snntorch_leaky_loop_matches_per_step(leaky):
    torch.manual_seed(1)
    net = SnnTorchMLP(**leaky)
    x = torch.rand(16, 10) * 1.5
    g = from_timestepped(net, x, T)
    lif = g.nodes["lif1"]
    assert (lif.firing, lif.reset, lif.beta) == ("strict", leaky.get("reset_mechanism", "subtract"),
                                                  pytest.approx(0.85))
    assert lif.reset_timing == ("next_step" if leaky.get("reset_delay", True) else "same_step")
    assert_exact(net, g, x)


def test_snntorch_beta_one_is_not_leaky_and_alpha_is_refused():  # Synaptic enters: test_timestepped_cuba.py
    net = SnnTorchMLP()
    net.lif1 = snn.Leaky(beta=1.0)
    g = from_timestepped(net, torch.rand(4, 10), T)
    assert not g.nodes["lif1"].leaky and g.nodes["lif2"].leaky

    class Syn(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.syn = nn.Linear(3, 3), snn.Alpha(alpha=0.9, beta=0.8)

        def forward(self, x):
            return self.syn(self.fc(x))[0]

    with pytest.raises(NeurodeployError, match=r"(?s)layer 'syn'.*Alpha.*nearest supported form: snntorch.Leaky"):
        from_timestepped(Syn(), torch.rand(2, 3), 1)


def sj_convnet(node_cls, step_mode, **kw):
    net = nn.Sequential(
        sj_layer.Conv2d(2, 6, 3, padding=1, step_mode=step_mode), node_cls(step_mode=step_mode, **kw),
        sj_layer.AvgPool2d(2, step_mode=step_mode),
        sj_layer.Flatten(step_mode=step_mode), sj_layer.Linear(6 * 4 * 4, 7, step_mode=step_mode),
        node_cls(step_mode=step_mode, **kw))
    torch.manual_seed(2)
    scale_weights(net, 3.0)
    return net


@pytest.mark.parametrize("node_cls,kw", [(sj_neuron.IFNode, {"v_reset": None}), (sj_neuron.IFNode, {}),
                                         (sj_neuron.LIFNode, {"tau": 2.0, "v_reset": None}),
                                         (sj_neuron.LIFNode, {"tau": 3.0, "decay_input": False})])
def test_spikingjelly_multistep_event_input(node_cls, kw):
    net = sj_convnet(node_cls, "m", **kw)
    torch.manual_seed(3)
    x = (torch.rand(5, T, 2, 8, 8) < 0.4).float()  # graph data [N, T, ...]
    g = from_timestepped(net, x.transpose(0, 1).contiguous(), T, input_layout="TN")
    assert g.metadata["step_mode"] == "multi" and ir.timesteps(g) == T
    assert g.nodes[g.of_type(ir.LIFNeuron)[0]].firing == "non_strict"
    assert_exact(net, g, x)


def test_spikingjelly_single_step_loop():
    body = sj_convnet(sj_neuron.LIFNode, "s", tau=2.0)

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self, x):  # x: [T, N, ...], one call per step, as SpikingJelly's single-step examples
            return torch.stack([self.body(x[t]) for t in range(x.shape[0])])

    net = Loop()
    x = (torch.rand(4, T, 2, 8, 8) < 0.4).float()
    g = from_timestepped(net, x.transpose(0, 1).contiguous(), T, input_layout="TN")
    assert g.metadata["step_mode"] == "step"
    assert_exact(net, g, x)


def sinabs_net(squeeze: bool, leaky: bool, **kw):
    if squeeze:
        cls = sinabs_layers.LIFSqueeze if leaky else sinabs_layers.IAFSqueeze
        extra = dict(batch_size=4, **({"tau_mem": 4.0} if leaky else {}))
        net = nn.Sequential(nn.Conv2d(1, 4, 3), cls(**extra, **kw), sinabs_layers.SumPool2d(2),
                            nn.Flatten(), nn.Linear(4 * 3 * 3, 6), cls(**extra, **kw))
    else:
        cls = sinabs_layers.LIF if leaky else sinabs_layers.IAF
        extra = {"tau_mem": 4.0} if leaky else {}
        net = nn.Sequential(nn.Linear(12, 20), cls(**extra, **kw), nn.Linear(20, 6), cls(**extra, **kw))
    torch.manual_seed(4)
    scale_weights(net, 4.0)
    return net


@pytest.mark.parametrize("leaky", [False, True])
@pytest.mark.parametrize("kw", [{}, {"min_v_mem": -1.0}])
def test_sinabs_iaf_lif_multispike(leaky, kw):
    net = sinabs_net(False, leaky, **kw)
    x = torch.rand(4, T, 12) * 2
    g = from_timestepped(net, x, T, input_layout="NT")
    assert g.nodes[g.of_type(ir.LIFNeuron)[0]].firing == "multi"
    report = assert_exact(net, g, x)
    trains = simulate(g, x.double()).trains
    assert max(int(t.max()) for t in trains.values()) > 1  # several spikes in one step (MultiSpike)
    assert report["layers"]


@pytest.mark.parametrize("leaky", [False, True])
def test_sinabs_squeeze_conv(leaky):
    net = sinabs_net(True, leaky)
    x = torch.rand(4, T, 1, 8, 8) * 2
    g = from_timestepped(net, x.reshape(4 * T, 1, 8, 8), T, input_layout="N*T")
    assert [n.kind for n in g.nodes.values()][:4] == ["Input", "Conv2d", "LIFNeuron", "SumPool2d"]
    assert_exact(net, g, x)


def test_first_divergence_is_located_and_classified():
    torch.manual_seed(5)
    net = SnnTorchMLP()
    x = torch.rand(8, 10) * 1.5
    g = from_timestepped(net, x, T)
    g.nodes["lif2"].threshold = 0.7  # a conversion error in the second layer only
    report = verify_timestepped(net, g, x)
    f = report["first_divergence"]
    assert not report["exact"] and f["layer"] == "lif2" and f["kind"] == "conversion"
    assert report["layers"]["lif1"]["train_mismatches"] == 0
    ref = model_spike_trains(net, g, x)["lif2"]
    assert (ref[:, :f["step"]] == simulate(g, x.double()).trains["lif2"][:, :f["step"]]).all()
    assert "first divergence: layer 'lif2'" in format_report(report)


def test_float_rounding_divergence_is_classified_as_rounding():
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.1)
    net = nn.Sequential(lin, sj_neuron.IFNode(v_threshold=float(np.float32(0.3)), v_reset=None,
                                                        step_mode="m"))
    x = torch.ones(1, T, 1)
    g = from_timestepped(net, x.transpose(0, 1).contiguous(), T, input_layout="TN")
    # the model sums 0.1f three times in float32 and lands exactly on 0.3f (fires, >=); the simulator's
    # float64 sum of the same weights, 0.30000000447, stays below 0.30000001192 = 0.3f
    report = verify_timestepped(net, g, x)
    f = report["first_divergence"]
    assert (f["layer"], f["step"], f["sample"], f["neuron"]) == ("1", 2, 0, (0,))
    assert f["kind"] == "float rounding" and f["model_spikes"] == 1 and f["our_spikes"] == 0
    assert f["distance_to_boundary"] < 1e-7


def test_unsupported_forms_are_refused_by_name():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = nn.Linear(4, 4), snn.Leaky(beta=0.9, init_hidden=True)

        def forward(self, x):
            return self.lif(self.fc(x) + x)

    with pytest.raises(NeurodeployError, match="between 'fc' and 'lif' outside any module"):
        from_timestepped(Residual(), torch.rand(2, 4), 1)
    net = nn.Sequential(nn.Linear(4, 4), sj_neuron.LIFNode(v_reset=-0.5))
    with pytest.raises(NeurodeployError, match=r"(?s)v_reset=-0.5.*LIFNode\(v_reset=0.0\)"):
        from_timestepped(net, torch.rand(2, 4), 1)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), sinabs_layers.IAFSqueeze(batch_size=2))
    with pytest.raises(NeurodeployError, match="max-pooling.*"):
        from_timestepped(net, torch.rand(2, 1, 6, 6), 1, input_layout="N*T")


def test_static_and_event_input_and_mixed_graph():
    g = ir.Graph(metadata={"timesteps": 3})
    g.add("in", ir.Input(input_shape=(2,)))
    g.add("fc", ir.Linear(weight=np.eye(2), bias=None), ["in"])
    g.add("lif", ir.LIFNeuron(beta=0.5, threshold=1.0, reset="zero", firing="non_strict"), ["fc"])
    g.add("sfa", ir.IFNeuron(threshold=1.0, max_spikes=4, v_init=0.5), ["lif"])
    g.add("out", ir.Output(), ["sfa"])
    ir.infer_shapes(g)
    static = ops.evaluate(g, torch.tensor([[0.6, 2.0]]))
    event = ops.evaluate(g, torch.tensor([[[0.6, 2.0]] * 3]))
    # v: 0.6 -> 0.9 -> 1.05 (fires, reset to 0); 2.0 fires every step
    assert static["lif"][0, :, 0].tolist() == [0, 0, 1] and static["lif"][0, :, 1].tolist() == [1, 1, 1]
    assert torch.equal(static["lif"], event["lif"]) and torch.equal(static["sfa"], event["lif"])
    with pytest.raises(NeurodeployError, match="has 2 timesteps, the graph 3"):
        ops.evaluate(g, torch.zeros(1, 2, 2))


# -- NIR: what snnTorch's export_to_nir and sinabs.to_nir write ------------------------------------

def test_nir_from_snntorch_export_matches_the_model_per_step():
    import warnings

    from snntorch.export_nir import export_to_nir

    from neurodeploy.nir_io import from_nir

    torch.manual_seed(6)
    net = nn.Sequential(  # nir 1.0.8 needs per-neuron beta/threshold tensors (REFERENCE §6)
        nn.Linear(10, 24), snn.Leaky(beta=torch.full((24,), 0.85), threshold=torch.ones(24), init_hidden=True),
        nn.Linear(24, 5), snn.Leaky(beta=torch.ones(5), threshold=torch.ones(5), init_hidden=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ng = export_to_nir(net, torch.rand(1, 10), ignore_dims=[0])
    with pytest.raises(NeurodeployError, match=r"(?s)layer '1': NIR node is a leaky LIF.*timesteps=T"):
        from_nir(ng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if_only = export_to_nir(nn.Sequential(nn.Linear(3, 2), snn.Leaky(beta=torch.ones(2), threshold=torch.ones(2),
                                                                         init_hidden=True)), torch.rand(1, 3),
                                ignore_dims=[0])
    with pytest.raises(NeurodeployError, match=r"(?s)non-leaky \(tau = inf\) LIF.*timesteps=T"):
        from_nir(if_only)
    g = from_nir(ng, timesteps=T)
    lifs = [g.nodes[n] for n in g.of_type(ir.LIFNeuron)]
    assert lifs[0].beta == np.float32(0.85) and lifs[0].leaky and not lifs[1].leaky  # beta=1: tau = inf, an IF

    x = torch.rand(12, 10) * 1.5
    assert_simulator_matches_model(g, Repeat(net, T), x, T)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_nir_from_sinabs_to_nir_matches_sinabs_from_nir_per_step():
    import sinabs

    from neurodeploy.nir_io import from_nir

    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(12, 20), sinabs_layers.IAF(), nn.Linear(20, 6), sinabs_layers.LIF(tau_mem=5.0))
    scale_weights(net, 4.0)
    N = 4
    x = torch.rand(N, T, 12) * 2
    net(x)  # sinabs.to_nir reads the state shapes
    ng = sinabs.to_nir(net, torch.rand(N, T, 12))
    g = from_nir(ng, timesteps=T, convention="auto")
    assert {g.nodes[n].meta["nir_convention"] for n in g.of_type(ir.LIFNeuron)} == {"sinabs"}
    rebuilt = sinabs.from_nir(ng, batch_size=N, num_timesteps=T)
    with torch.no_grad():
        out = rebuilt(x.reshape(N * T, 12))
        out = out[0] if isinstance(out, tuple) else out  # nirtorch executors return (output, state)
        theirs = out.reshape(N, T, 6).double().numpy()
    ours = simulate(g, x.double()).trains[g.of_type(ir.LIFNeuron)[-1]]
    assert ours.sum() > 0 and np.array_equal(ours, theirs)


def test_time_stepped_graph_round_trips_through_the_ir_file(tmp_path):
    from neurodeploy.ir_io import load_graph, save_graph

    g = ir.Graph(metadata={"timesteps": 3})
    g.add("in", ir.Input(input_shape=(2,)))
    g.add("fc", ir.Linear(weight=np.eye(2), bias=None), ["in"])
    g.add("lif", ir.LIFNeuron(beta=np.array([0.5, 0.9]), threshold=1.0, reset="zero", firing="non_strict",
                              v_min=-1.0), ["fc"])
    g.add("out", ir.Output(), ["lif"])
    ir.infer_shapes(g)
    save_graph(g, tmp_path / "g.ir.npz")
    h = load_graph(tmp_path / "g.ir.npz")
    assert ir.timesteps(h) == 3 and np.array_equal(h.nodes["lif"].beta, [0.5, 0.9])
    x = torch.rand(4, 2) * 2
    assert torch.equal(ops.evaluate(g, x)["lif"], ops.evaluate(h, x)["lif"])
    with pytest.raises(NeurodeployError, match="unknown reset 'soft'"):
        ir.LIFNeuron(reset="soft")


def test_profile_per_timestep_counts_synops_from_spike_trains(tmp_path):
    from neurodeploy.profile_timestepped import format_timestepped, plot_timestepped, profile_timestepped

    torch.manual_seed(8)
    net = SnnTorchMLP()
    x = torch.rand(6, 10) * 1.5
    g = from_timestepped(net, x, T)
    rep = profile_timestepped(g, x.double())
    ref = model_spike_trains(net, g, x)
    # fc2 is fed by lif1: SynOps at step t = lif1's spikes at t × fan-out 5 (Linear 24 -> 5)
    assert rep["layers"]["fc2"]["synops"] == pytest.approx((ref["lif1"].sum(2).mean(0) * 5).tolist())
    assert rep["layers"]["fc1"]["macs"] == [10 * 24] * T and rep["layers"]["fc1"]["synops"] == [0.0] * T
    assert rep["total"]["synops"] == pytest.approx(ref["lif1"].sum() / 6 * 5)
    assert rep["total"]["neuron_updates"] == (24 + 5) * T
    assert len(format_timestepped(rep).splitlines()) == T + 2
    assert plot_timestepped(rep, tmp_path / "t.png").stat().st_size > 1000


def test_speck_time_bins_equal_sinabs_iafsqueeze_bin_for_bin():
    import warnings

    from neurodeploy.targets import get_target
    from neurodeploy.targets.speck.quantize import quantize
    from neurodeploy.targets.speck.timestepped import speck_graph

    N = 3
    net = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), sinabs_layers.IAFSqueeze(batch_size=N, spike_threshold=4.0),
                        sinabs_layers.SumPool2d(2), nn.Conv2d(4, 3, 3, bias=False),
                        sinabs_layers.IAFSqueeze(batch_size=N, spike_threshold=5.0))
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():  # integer weights: the Speck quantiser's scale 1 keeps them exact
        for m in net:
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randint(-2, 4, m.weight.shape, generator=gen).float())
    x = torch.randint(0, 2, (N, T, 2, 12, 12), generator=gen).float()  # DVS-like events per bin
    g = from_timestepped(net, x.reshape(N * T, 2, 12, 12), T, input_layout="N*T")
    sg = speck_graph(g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qg = quantize(sg, scales={n: 1.0 for n in sg.of_type(ir.Conv2d)})
    ours = get_target("speck").simulate(qg, x.double().numpy(), mode="binned")
    theirs = model_spike_trains(net, g, x.reshape(N * T, 2, 12, 12))
    for name, train in theirs.items():
        assert train.sum() > 0 and np.array_equal(ours.per_bin[name].numpy(), train), name


def test_speck_refuses_leaky_and_single_spike_layers_by_name():
    from neurodeploy.errors import DesignRuleError
    from neurodeploy.targets.speck.timestepped import speck_graph

    net = SnnTorchMLP()  # beta 0.85 / 0.7, strict firing, delayed subtraction
    g = from_timestepped(net, torch.rand(2, 10), T)
    with pytest.raises(DesignRuleError) as err:
        speck_graph(g)
    text = str(err.value)
    assert "layer 'lif1': leaky neuron (beta = 0.85" in text and "layer 'lif2': leaky" in text
    assert "firing 'strict'" in text and "next_step" in text


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_nir_export_of_time_stepped_graph_runs_in_sinabs_from_nir(tmp_path):
    import nir
    import sinabs

    from neurodeploy.nir_io import from_nir, write_nir

    torch.manual_seed(10)
    net = nn.Sequential(nn.Linear(12, 20), sinabs_layers.IAF(min_v_mem=-1.0), nn.Linear(20, 6),
                        sinabs_layers.LIF(tau_mem=5.0, norm_input=False))
    scale_weights(net, 4.0)
    N = 4
    x = torch.rand(N, T, 12) * 2
    g = from_timestepped(net, x, T, input_layout="NT")
    path = write_nir(g, tmp_path / "ts.nir")
    back = from_nir(path)  # our own file: exact, time axis kept
    assert ir.timesteps(back) == T
    for name in g.of_type(ir.LIFNeuron):
        a, b = g.nodes[name], back.nodes[name]
        assert (a.firing, a.reset, a.reset_timing, a.v_min, a.threshold) == \
               (b.firing, b.reset, b.reset_timing, b.v_min, b.threshold)
        assert np.array_equal(np.asarray(a.beta), np.asarray(b.beta))
    rebuilt = sinabs.from_nir(nir.read(path), batch_size=N, num_timesteps=T)
    with torch.no_grad():
        out = rebuilt(x.reshape(N * T, 12))
    out = (out[0] if isinstance(out, tuple) else out).reshape(N, T, 6).double().numpy()
    ours = simulate(g, x.double()).trains[g.of_type(ir.LIFNeuron)[-1]]
    assert ours.sum() > 0 and np.array_equal(ours, out)


def test_a_recurrent_graph_names_the_nodes_of_its_cycle():
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(2,)))
    g.add("fc", ir.Linear(weight=np.eye(2)), ["in"])
    g.add("lif", ir.LIFNeuron(), ["fc"])
    g.add("rec", ir.Linear(weight=np.eye(2)), ["lif"])
    g.edges.append(("rec", "fc"))
    with pytest.raises(NeurodeployError, match=r"layer 'fc': graph has a cycle .* through fc, lif, rec"):
        g.topo_order()


def test_spikingjelly_seq_to_ann_container_with_batchnorm():
    torch.manual_seed(12)
    net = nn.Sequential(
        sj_layer.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)),
        sj_neuron.LIFNode(tau=2.0, step_mode="m"),
        sj_layer.SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 6 * 6, 5)),
        sj_neuron.IFNode(step_mode="m"))
    with torch.no_grad():
        net[0][1].running_mean.uniform_(-0.2, 0.2)
        net[0][1].running_var.uniform_(0.5, 1.5)
        net[0][0].weight.mul_(3.0)
    x = (torch.rand(3, T, 2, 6, 6) < 0.5).float()
    g = from_timestepped(net, x.transpose(0, 1).contiguous(), T, input_layout="TN")
    assert "BatchNorm" in [n.kind for n in g.nodes.values()]
    assert_exact(net, g, x)
