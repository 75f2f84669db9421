"""Time-stepped LIF graphs on Loihi (issue 10): the integer CUBA simulation equals Lava fixed_pt
spike for spike; reset-to-zero + strict layers run on Lava's stock LIF process model."""

import numpy as np
import pytest
import torch
from torch import nn

from neurodeploy.converters.neurons import from_timestepped
from neurodeploy.errors import NeurodeployError
from neurodeploy.targets.loihi.lif import lower_lif
from timestepped_helpers import Repeat, lava_check, scale_weights

snn = pytest.importorskip("snntorch")
sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
sinabs_layers = pytest.importorskip("sinabs.layers")
pytest.importorskip("lava.proc.lif.models")

T = 6


def loop(body):
    return Repeat(body, T, dim=1)


def snntorch_body(**leaky):
    torch.manual_seed(11)
    return nn.Sequential(nn.Linear(12, 16), snn.Leaky(beta=0.9, init_hidden=True, **leaky),
                         nn.Linear(16, 4), snn.Leaky(beta=0.8, init_hidden=True, **leaky))


def test_reset_to_zero_strict_runs_on_stock_lava_lif():
    model = loop(snntorch_body(reset_mechanism="zero"))
    x = torch.rand(5, 12) * 2
    prog, agree = lava_check(model, x, x.numpy(), T)
    assert all(L.stock for L in prog.layers)
    assert min(agree.values()) > 0.9  # integer weights / 12-bit decay vs the float model


@pytest.mark.parametrize("make", [lambda: loop(snntorch_body()),  # subtract, one step later
                                  lambda: loop(nn.Sequential(nn.Linear(12, 16), sj_neuron.IFNode(v_reset=None),
                                                             nn.Linear(16, 4), sj_neuron.IFNode(v_reset=None)))])
def test_subtractive_reset_runs_on_our_process_model(make):
    model = make()
    scale_weights(model, 2.0)
    x = torch.rand(5, 12) * 2
    prog, agree = lava_check(model, x, x.numpy(), T)
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
    scale_weights(body, 2.5)
    model = loop(body)
    x = torch.rand(4, 2, 8, 7) * 2  # H != W: catches an x/y transpose
    prog, agree = lava_check(model, x, x.numpy(), T)
    assert [L.kind for L in prog.layers] == ["conv", "conv", "dense"]
    assert min(agree.values()) > 0.8
