"""Messages name the pooling the user wrote: an AvgPool2d stays 'AvgPool2d' after canonicalize turned it
into SumPool2d + Scale."""

import numpy as np
import pytest

from neurodeploy import ir
from neurodeploy.passes import canonicalize
from neurodeploy.targets.speck import drc


def pool_before_neuron(pool):
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(2, 8, 8), is_spikes=True))
    g.add("conv", ir.Conv2d(weight=np.ones((4, 2, 3, 3)), padding=1), "input")
    g.add("pool", pool, "conv")
    g.add("if", ir.IFNeuron(threshold=1.0, max_spikes=4, v_init=0.5), "pool")
    g.add("output", ir.Output(), "if")
    return g


def pool_between_layers(pool):
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(2, 8, 8), is_spikes=True))
    g.add("conv", ir.Conv2d(weight=np.ones((4, 2, 3, 3)), padding=1), "input")
    g.add("if", ir.IFNeuron(threshold=1.0, max_spikes=4, v_init=0.5), "conv")
    g.add("pool", pool, "if")
    g.add("conv2", ir.Conv2d(weight=np.ones((4, 4, 3, 3)), padding=1), "pool")
    g.add("if2", ir.IFNeuron(threshold=1.0, max_spikes=4, v_init=0.5), "conv2")
    g.add("output", ir.Output(), "if2")
    return g


@pytest.mark.parametrize("cls", [ir.AvgPool2d, ir.SumPool2d])
def test_messages_name_the_users_pooling(cls):
    kind = cls.__name__
    canon = canonicalize(pool_before_neuron(cls(kernel=2)))
    assert canon.nodes["pool"].kind == "SumPool2d" and canon.nodes["pool"].user_kind == kind
    msgs = drc.check(canon)
    assert msgs and all(f"pool ({kind})" in m for m in msgs), msgs
    msgs = drc.check(canonicalize(pool_between_layers(cls(kernel=2, stride=1))))
    assert any(f"is {kind} kernel (2, 2), stride (1, 1)" in m and f"use {kind}(k)" in m for m in msgs), msgs
    if kind == "AvgPool2d":
        assert not any("SumPool2d" in m for m in msgs)
