"""Benchmark networks: plain PyTorch modules with SFA activations ``round(clamp(x, 0, D))`` and a
small, self-contained converter to the neurodeploy IR (Sequential-style nets only), so that the
benchmarks do not depend on the full converter.

* :class:`DigitsConvNet`  — 1×8×8 input (sklearn-digits size), 3 SFA conv layers + SFA linear, D=4.
* :class:`LargeConvNet`   — 3×64×64 input, 6 SFA conv layers (+ avg pool) + SFA linear, D=4.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from neurodeploy import ir


class SFA(nn.Module):
    """Integer activation of SFA training: ``round(clamp(x, 0, D)) / norm`` (torch.round: half-even)."""

    def __init__(self, D: int = 4, norm: float = 1.0):
        super().__init__()
        self.D, self.norm = D, norm

    def forward(self, x):
        return torch.round(torch.clamp(x, 0, self.D)) / self.norm


class DigitsConvNet(nn.Module):
    """The demo-sized net: 1×8×8 -> conv16 -> conv32 (s2) -> conv32 -> fc 10, SFA after each."""

    input_shape = (1, 8, 8)

    def __init__(self, D: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), SFA(D),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), SFA(D),
            nn.Conv2d(32, 32, 3, padding=1), SFA(D),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 10), SFA(D),
        )
        _init_sfa(self, gain=1.0)

    def forward(self, x):
        return self.net(x)


class LargeConvNet(nn.Module):
    """A larger conv net: 3×64×64 -> 6 SFA conv layers (strides 1,2,1,2,1,2), avg pool, fc -> SFA."""

    input_shape = (3, 64, 64)

    def __init__(self, D: int = 4, width: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), SFA(D),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), SFA(D),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), SFA(D),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), SFA(D),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), SFA(D),
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), SFA(D),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * w * 4 * 4, 10), SFA(D),
        )
        _init_sfa(self, gain=1.0)

    def forward(self, x):
        return self.net(x)


def _init_sfa(model: nn.Module, gain: float = 1.0) -> None:
    """Mixed-sign weights scaled so that each layer's pre-activations are O(1..D) (many spikes)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * gain * 2.0 / np.sqrt(fan_in))
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.5)


def to_graph(model: nn.Module, input_shape: tuple | None = None) -> ir.Graph:
    """Convert a Sequential-style SFA net (Conv2d, Linear, SFA, AvgPool2d, Flatten) to the IR."""
    input_shape = tuple(input_shape or model.input_shape)
    g = ir.Graph()
    last = g.add("input", ir.Input(input_shape=input_shape))
    seq = model.net if hasattr(model, "net") else model
    for i, m in enumerate(seq):
        name, src = f"l{i}", f"net.{i}"
        t = lambda a: a.detach().double().numpy().copy()  # noqa: E731
        if isinstance(m, nn.Conv2d):
            node = ir.Conv2d(weight=t(m.weight), bias=None if m.bias is None else t(m.bias), stride=m.stride,
                             padding=m.padding, dilation=m.dilation, groups=m.groups, source=src)
        elif isinstance(m, nn.Linear):
            node = ir.Linear(weight=t(m.weight), bias=None if m.bias is None else t(m.bias), source=src)
        elif isinstance(m, SFA):
            node = ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=m.D, rounding="half_even", norm=m.norm,
                               source=src)
        elif isinstance(m, nn.AvgPool2d):
            node = ir.AvgPool2d(kernel=m.kernel_size, stride=m.stride, padding=m.padding, source=src)
        elif isinstance(m, nn.Flatten):
            node = ir.Flatten(start_dim=0, source=src)
        else:
            raise TypeError(f"unsupported module {type(m).__name__}")
        last = g.add(name, node, last)
    g.add("output", ir.Output(), last)
    return ir.infer_shapes(g)


def activation_counts(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Counts (activation × norm) of every SFA layer in the model's own forward, keyed by IR name."""
    out, h = {}, x
    seq = model.net if hasattr(model, "net") else model
    with torch.inference_mode():
        for i, m in enumerate(seq):
            h = m(h)
            if isinstance(m, SFA):
                out[f"l{i}"] = (h * m.norm).double().numpy()
    return out


def digits_like_input(n: int, seed: int = 0) -> np.ndarray:
    """Random 8×8 'digit' images with integer pixel values 0..16 (like sklearn's digits)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 17, size=(n, 1, 8, 8)).astype(np.float64) / 16.0


def image_input(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """Random 3×size×size images with 8-bit pixel values (multiples of 1/256)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3, size, size)).astype(np.float64) / 256.0
