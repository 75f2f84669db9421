"""Time-stepped LIF graphs on Loihi (issue 10): the integer CUBA simulation equals Lava fixed_pt
spike for spike; reset-to-zero + strict layers run on Lava's stock LIF process model."""

import numpy as np
import pytest
import torch
from torch import nn

from neurodeploy import ir
from neurodeploy.converters.neurons import from_timestepped, model_spike_trains
from neurodeploy.errors import NeurodeployError
from neurodeploy.targets.loihi.lif import lower_lif, quantize_lif_input, run_lif_lava, simulate_lif

snn = pytest.importorskip("snntorch")
sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
sinabs_layers = pytest.importorskip("sinabs.layers")
pytest.importorskip("lava.proc.lif.models")

T = 6


class Loop(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return torch.stack([self.body(x) for _ in range(T)], 1)


def snntorch_body(**leaky):
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(12, 16), snn.Leaky(beta=0.9, init_hidden=True, **leaky),
                         nn.Linear(16, 4), snn.Leaky(beta=0.8, init_hidden=True, **leaky))


def lava_check(model, x_model, x):
    g = from_timestepped(model, x_model, T)
    prog = lower_lif(g, x)
    xi = quantize_lif_input(prog, x)
    ours, lava = simulate_lif(prog, xi), run_lif_lava(prog, xi)
    for name in ours:
        assert np.array_equal(ours[name], lava[name]), name  # 0 spike-time mismatches
    assert sum(int(a.sum()) for a in ours.values()) > 0
    ref = model_spike_trains(model, g, x_model)
    agree = {n: float((ours[n] == ref[n]).mean()) for n in ours}
    return prog, agree


def test_reset_to_zero_strict_runs_on_stock_lava_lif():
    model = Loop(snntorch_body(reset_mechanism="zero"))
    x = torch.rand(5, 12) * 2
    prog, agree = lava_check(model, x, x.numpy())
    assert all(L.stock for L in prog.layers)
    assert min(agree.values()) > 0.9  # integer weights / 12-bit decay vs the float model


@pytest.mark.parametrize("make", [lambda: Loop(snntorch_body()),  # subtract, one step later
                                  lambda: Loop(nn.Sequential(nn.Linear(12, 16), sj_neuron.IFNode(v_reset=None),
                                                             nn.Linear(16, 4), sj_neuron.IFNode(v_reset=None)))])
def test_subtractive_reset_runs_on_our_process_model(make):
    model = make()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(2.0)
    x = torch.rand(5, 12) * 2
    prog, agree = lava_check(model, x, x.numpy())
    assert not any(L.stock for L in prog.layers)
    assert min(agree.values()) > 0.85


def test_multispike_is_refused_for_loihi():
    net = nn.Sequential(nn.Linear(4, 3), sinabs_layers.IAF())
    g = from_timestepped(net, torch.rand(2, T, 4), T, input_layout="NT")
    with pytest.raises(NeurodeployError, match="MultiSpike.*no Loihi form"):
        lower_lif(g, np.ones((2, T, 4)))


@pytest.mark.parametrize("leaky", [{"reset_mechanism": "zero"}, {}])
def test_conv_layers_run_in_lava_side_by_side(leaky):
    torch.manual_seed(13)
    body = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, stride=2), snn.Leaky(beta=0.9, init_hidden=True, **leaky),
                         nn.Conv2d(4, 3, 3), snn.Leaky(beta=0.95, init_hidden=True, **leaky),
                         nn.Flatten(), nn.Linear(3 * 2 * 2, 5), snn.Leaky(beta=0.8, init_hidden=True, **leaky))
    with torch.no_grad():
        for m in body:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(2.5)
    model = Loop(body)
    x = torch.rand(4, 2, 8, 7) * 2  # H != W: catches an x/y transpose
    prog, agree = lava_check(model, x, x.numpy())
    assert [L.kind for L in prog.layers] == ["conv", "conv", "dense"]
    assert min(agree.values()) > 0.8
