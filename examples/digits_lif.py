"""A time-stepped SNN encoder for the sklearn digits, in plain torch (no snnTorch needed).

``LIF`` computes exactly snnTorch ``Leaky(beta, threshold, init_hidden=True,
reset_mechanism='subtract')`` (its default ``reset_delay=True``): per step, with the stored
membrane ``mem`` (0 before the first step)::

    reset = (mem > threshold)                      # the previous step's spike, no gradient
    mem   = beta * mem + input - reset * threshold # soft reset, applied one step later
    spike = (mem > threshold)                      # strict firing; fast-sigmoid surrogate gradient

The class sets ``neurodeploy_lif = True`` and has ``beta``, ``threshold``, ``reset_mechanism``,
``reset_delay`` and ``reset_state()``: neurodeploy's converter reads it as that neuron
(``converters/neurons.py``), so ``neurodeploy compile ... --timesteps 6 --input-layout static``
takes the checkpoint as it is.

``Encoder``: Flatten -> Linear(64, h) -> LIF -> Linear(h, f) -> LIF, the forward looping over T
steps on the static image (rate-free: the image is the input current every step); it returns the
output spike trains ``[N, T, f]``; the representation is their count over T.
"""
from __future__ import annotations

import torch
from torch import nn

TIMESTEPS = 6


class SpikeFn(torch.autograd.Function):
    """Heaviside ``v > 0`` forward, fast-sigmoid derivative ``1 / (1 + k|v|)^2`` backward."""

    @staticmethod
    def forward(ctx, v, slope: float):
        ctx.save_for_backward(v)
        ctx.slope = slope
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad / (1.0 + ctx.slope * v.abs()) ** 2, None


class LIF(nn.Module):
    neurodeploy_lif = True

    def __init__(self, beta: float = 0.9, threshold: float = 1.0, reset_mechanism: str = "subtract",
                 reset_delay: bool = True, slope: float = 5.0, multi_spike: bool = False):
        super().__init__()
        self.beta, self.threshold = float(beta), float(threshold)
        self.reset_mechanism, self.reset_delay, self.slope = reset_mechanism, bool(reset_delay), float(slope)
        self.multi_spike = bool(multi_spike)
        self.mem = None

    def reset_state(self) -> None:
        self.mem = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multi_spike:
            return self._forward_multi(x)
        mem = torch.zeros_like(x) if self.mem is None else self.mem
        reset = (mem > self.threshold).to(x.dtype).detach()
        if self.reset_mechanism == "zero":
            mem = self.beta * (1.0 - reset) * mem + x
        else:
            mem = self.beta * mem + x - reset * self.threshold
        spike = SpikeFn.apply(mem - self.threshold, self.slope)
        self.mem = mem
        return spike

    def _forward_multi(self, x: torch.Tensor) -> torch.Tensor:
        """IAF as sinabs runs it (MultiSpike, subtractive reset in the same step): the Speck variant."""
        mem = (torch.zeros_like(x) if self.mem is None else self.mem) * self.beta + x
        count = torch.floor(torch.clamp(mem / self.threshold, min=0.0)).detach()
        surrogate = SpikeFn.apply(mem - self.threshold, self.slope)
        spike = count + surrogate - surrogate.detach()
        self.mem = mem - count * self.threshold
        return spike

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}, reset={self.reset_mechanism}, delay={self.reset_delay}"


class Encoder(nn.Module):
    """``iaf=True``: the Speck variant: IAF neurons (β = 1, MultiSpike, same-step subtraction) fed
    with event frames ``[N, T, 1, 8, 8]`` (:func:`events`), one per step."""

    def __init__(self, hidden: int = 128, feat_dim: int = 64, beta: float = 0.9, timesteps: int = TIMESTEPS,
                 iaf: bool = False):
        super().__init__()
        self.timesteps, self.iaf = timesteps, iaf
        neuron = dict(beta=1.0, reset_delay=False, multi_spike=True) if iaf else dict(beta=beta)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, hidden)
        self.lif1 = LIF(**neuron)
        self.fc2 = nn.Linear(hidden, feat_dim)
        self.lif2 = LIF(**neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.lif1.reset_state()
        self.lif2.reset_state()
        out = []
        for t in range(self.timesteps):
            xt = x[:, t] if self.iaf else x
            out.append(self.lif2(self.fc2(self.lif1(self.fc1(self.flatten(xt))))))
        return torch.stack(out, 1)


def events(x: torch.Tensor, timesteps: int = TIMESTEPS) -> torch.Tensor:
    """Deterministic event frames [N, T, ...] of images in [0, 1]: pixel x is on at step t when
    x > (t + 0.5)/T (a thermometer code: round(x·T) events per pixel)."""
    levels = (torch.arange(timesteps, dtype=x.dtype) + 0.5) / timesteps
    return (x.unsqueeze(1) > levels.reshape((1, -1) + (1,) * (x.dim() - 1))).to(x.dtype)


def build_encoder(hidden: int = 128, feat_dim: int = 64, beta: float = 0.9, timesteps: int = TIMESTEPS,
                  iaf: bool = False) -> Encoder:
    return Encoder(hidden, feat_dim, beta, timesteps, iaf)


def build_iaf_encoder(hidden: int = 128, feat_dim: int = 64, timesteps: int = TIMESTEPS) -> Encoder:
    """The Speck variant (``digits_iaf.pt``): IAF neurons on event frames [N, T, 1, 8, 8]."""
    return Encoder(hidden, feat_dim, 1.0, timesteps, iaf=True)
