"""Shared pieces of the time-stepped tests: a model run for T steps, and its spike trains compared
with the simulator's (and with Lava's fixed-point run on Loihi)."""

import numpy as np
import torch
from torch import nn

from neurodeploy import ir
from neurodeploy.converters.neurons import from_timestepped, model_spike_trains
from neurodeploy.simulator import simulate


def scale_weights(net: nn.Module, factor: float) -> nn.Module:
    """Every convolution / linear weight times ``factor`` (so that the neurons fire within T steps)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(factor)
    return net


class Repeat(nn.Module):
    """``body`` on the same input at each of ``T`` steps, the outputs stacked along ``dim`` (0: [T, N,
    ...], as snnTorch's loops return them; 1: [N, T, ...])."""

    def __init__(self, body, T: int, dim: int = 0):
        super().__init__()
        self.body, self.T, self.dim = body, T, dim

    def forward(self, x):
        return torch.stack([self.body(x) for _ in range(self.T)], self.dim)


class StatefulRepeat(nn.Module):
    """A module called as ``m(x, state) -> (out, state)`` (snnTorch's ``import_from_nir`` graphs),
    run for ``T`` steps on the same input; outputs stacked as [T, N, ...]."""

    def __init__(self, m, T: int):
        super().__init__()
        self.m, self.T = m, T

    def forward(self, x):
        outs, state = [], None
        for _ in range(self.T):
            o, state = self.m(x, state)
            outs.append(o)
        return torch.stack(outs)


def assert_simulator_matches_model(g: ir.Graph, model: nn.Module, x: torch.Tensor, T: int, *,
                                   every_layer_fires: bool = False) -> None:
    """The simulator's spike trains of ``g`` equal ``model``'s own (read with hooks on its neuron
    modules), layer by layer and step by step; some layer fires (every layer, if asked)."""
    reference = from_timestepped(model, x, T)
    ref = model_spike_trains(model, reference, x)
    ours = simulate(g, x.double()).trains
    for ours_name, theirs_name in zip(g.of_type(ir.LIFNeuron), reference.of_type(ir.LIFNeuron)):
        assert np.array_equal(ours[ours_name], ref[theirs_name]), ours_name
        if every_layer_fires:
            assert ours[ours_name].sum() > 0, ours_name
    assert sum(int(t.sum()) for t in ours.values()) > 0


def lava_check(model: nn.Module, x_model: torch.Tensor, x: np.ndarray, T: int, *,
               every_layer_fires: bool = False):
    """Lower the model's time-stepped graph to Loihi; our integer CUBA simulation must equal Lava's
    fixed-point run spike for spike. Returns the program and each layer's agreement with the model's
    float forward."""
    from neurodeploy.targets.loihi.lif import lower_lif, quantize_lif_input, run_lif_lava, simulate_lif

    g = from_timestepped(model, x_model, T)
    prog = lower_lif(g, x)
    xi = quantize_lif_input(prog, x)
    ours, lava = simulate_lif(prog, xi), run_lif_lava(prog, xi)
    for name in ours:
        assert np.array_equal(ours[name], lava[name]), name  # 0 spike-time mismatches
        if every_layer_fires:
            assert ours[name].sum() > 0, name
    assert sum(int(a.sum()) for a in ours.values()) > 0
    ref = model_spike_trains(model, g, x_model)
    agree = {n: float((ours[n] == ref[n]).mean()) for n in ours}
    return prog, agree
