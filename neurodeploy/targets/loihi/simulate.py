"""Loihi mode of the simulator: Lava's fixed-point arithmetic, bit for bit, vectorised over a batch.

It runs a :class:`~.program.Program` (what the ``.net`` file holds) on the same timestep grid as
Lava (local step τ = 1..period per sample) and reproduces, per step:

* synapses, one timestep of delay each: the synapse output at τ is computed from the spikes of
  τ − 1 (the graded input is sent at τ = 1);
  - ``dense``: NetX ``optimize_weight_bits`` + Lava ``clip_weights``/``truncate_weights`` on the
    stored weights, ``a = (stored @ s) >> −weight_exp`` (arithmetic shift; ``<<`` if positive);
  - ``conv``: ``conv2d`` of the file weights, then Lava's 24-bit signed wrap
    (``(x + 2^23) mod 2^24 − 2^23``). Lava computes it in float32 (exact while |sums| < 2^24,
    which the quantiser's bounds guarantee); here it is exact integer arithmetic.
* the neuron (``lava_models.PySfaIfModel``): at τ = 1 ``u = 0``, ``v = clip((v_init + bias) << 6)``;
  then every step ``u = wrap24(sign(u)·((|u|·(4096 − iDecay)) >> 12) + (a << 6))``,
  ``v = clip(sign(v)·((|v|·(4096 − vDecay)) >> 12) + u, ±(2^23 − 1))``; inside the layer's window
  it fires when ``v > vThMant << 6`` (strict) and subtracts ``(vThMant + 1) << 6``; for a
  half-even model (``torch.round``) a membrane exactly at ``θ << 6`` fires only if the neuron has
  fired an odd number of times (an exact tie then ends one spike short, as ``ops`` counts it).

Returns per-layer spike counts (IR layout: (C,H,W) / (N,)) and the full spike rasters
(spike times, τ relative to the sample start).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .program import Program, LayerSpec
from .quantize import netx_dense_weights

MAX_UV = 1 << 23


@dataclass
class LoihiSimResult:
    counts: dict                  # layer name -> int64 tensor [B, *shape]
    spikes: dict = field(default_factory=dict)   # layer name -> bool tensor [B, period, *shape]
    period: int = 0
    runtime: str = "sim"
    mode: str = "spikes"          # 'graded': ``spikes`` holds the payloads (counts) instead

    @property
    def timesteps(self) -> int:
        return self.period

    def total_spikes(self) -> dict:
        return {k: int(v.sum()) for k, v in self.counts.items()}

    def spike_times(self, layer: str, sample: int = 0):
        """List of (τ, flat neuron index) of one sample's spikes in ``layer``."""
        r = self.spikes[layer][sample].reshape(self.period, -1)
        t, n = torch.nonzero(r, as_tuple=True)
        return list(zip((t + 1).tolist(), n.tolist()))


def _wrap24_u(x: torch.Tensor) -> torch.Tensor:
    # exactly Lava's AbstractPyLifModelFixed.subthr_dynamics wrap (including its quirk)
    w = torch.where(x > MAX_UV, x - 2 * MAX_UV, x)
    return torch.where(w <= -MAX_UV, x + 2 * MAX_UV, w)


def _decay(x: torch.Tensor, d: int) -> torch.Tensor:
    if d == 0:
        return x
    y = x * (4096 - d)
    return torch.sign(y) * (torch.abs(y) >> 12)


def _signed_wrap(x: torch.Tensor, bits: int) -> torch.Tensor:
    base = 1 << bits
    return torch.remainder(x + base // 2, base) - base // 2


class _Synapse:
    def __init__(self, spec: LayerSpec):
        self.spec = spec
        if spec.kind == "dense":
            d = netx_dense_weights(spec.weight)
            self.stored = torch.as_tensor(d["stored"], dtype=torch.float64)
            self.wexp = d["weight_exp"]
        else:
            self.w = torch.as_tensor(spec.weight, dtype=torch.float64)

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        """s: [B, *in_shape] int64 -> a: [B, *out_shape] int64."""
        sp = self.spec
        if sp.kind == "dense":
            a = (s.reshape(s.shape[0], -1).to(torch.float64) @ self.stored.T).round().to(torch.int64)
            return a << self.wexp if self.wexp > 0 else a >> (-self.wexp)
        a = F.conv2d(s.to(torch.float64), self.w, None, sp.stride, sp.padding, sp.dilation, sp.groups)
        return _signed_wrap(a.round().to(torch.int64), 24)


def simulate_program(program: Program, x_int, record: bool = True) -> LoihiSimResult:
    """Run ``program`` on a batch of integer inputs ``x_int`` [B, *input_shape]."""
    x = torch.as_tensor(np.asarray(x_int), dtype=torch.int64)
    B, P = x.shape[0], program.period
    # input spike train: graded payload at τ = 1, nothing else
    prev = torch.zeros((B, P) + tuple(program.input_shape), dtype=torch.int64)
    prev[:, 0] = x
    counts, rasters = {}, {}
    lo, hi = -(MAX_UV - 1), MAX_UV - 1
    for spec in program.layers:
        syn = _Synapse(spec)
        shape = tuple(spec.out_shape)
        du = spec.i_decay - 1 + 1      # NetX: du = iDecay − 1; Lava adds ds_offset 1
        dv = spec.v_decay
        bias = 0 if spec.bias is None else torch.as_tensor(spec.bias, dtype=torch.int64).reshape(
            (-1,) + (1,) * (len(shape) - 1))
        v0 = torch.clamp(((spec.v_init + bias) * torch.ones((B,) + shape, dtype=torch.int64)) << 6,
                         lo, hi)
        u = torch.zeros((B,) + shape, dtype=torch.int64)
        v = v0.clone()
        out = torch.zeros((B, P) + shape, dtype=torch.int64)
        graded = program.mode == "graded"
        f0, f1 = spec.window_start, spec.window_start + program.window_len(spec) - 1
        vth = spec.vth << 6
        sub = (spec.vth + 1) << 6
        zero_in = (prev.reshape(B, P, -1) == 0).all(dim=2).all(dim=0)   # [P]
        fired = torch.zeros((B,) + shape, dtype=torch.int64)
        for tau in range(1, P + 1):
            if tau >= 2 and not bool(zero_in[tau - 2]):
                a = syn(prev[:, tau - 2])
                u = _wrap24_u(_decay(u, du) + (a << 6))
            else:
                u = _wrap24_u(_decay(u, du))
            v = torch.clamp(_decay(v, dv) + u, lo, hi)
            if f0 <= tau <= f1:
                for _ in range(spec.D if graded else 1):   # graded: D iterations in one step
                    s = v > vth
                    if spec.half_even:  # exact tie fires only after an odd number of spikes
                        s &= ~((v == sub) & (torch.remainder(fired, 2) == 0))
                        fired += s.to(torch.int64)
                    v = torch.where(s, v - sub, v)
                    out[:, tau - 1] += s.to(torch.int64)
        counts[spec.name] = out.sum(dim=1)
        if record:
            rasters[spec.name] = out if graded else out.to(torch.bool)
        prev = out
    return LoihiSimResult(counts=counts, spikes=rasters, period=P, mode=program.mode)


def integer_model(program: Program, x_int) -> dict:
    """Closed-form layer-synchronous IF counts of the program's integer parameters (no 24-bit
    limits): ``n = clip(floor((W·n_prev + b + v_init) / θ), 0, D)`` per layer (one fewer on an
    exact tie with odd n for half-even layers), with the file weights as the intended weights."""
    prev = torch.as_tensor(np.asarray(x_int), dtype=torch.float64)
    counts = {}
    for spec in program.layers:
        w = torch.as_tensor(spec.weight, dtype=torch.float64)
        if spec.kind == "dense":
            cur = prev.reshape(prev.shape[0], -1) @ w.T
        else:
            cur = F.conv2d(prev, w, None, spec.stride, spec.padding, spec.dilation, spec.groups)
        if spec.bias is not None:
            b = torch.as_tensor(spec.bias, dtype=torch.float64)
            cur = cur + b.reshape((-1,) + (1,) * (cur.dim() - 2))
        v = cur + spec.v_init
        n = torch.div(v, spec.threshold, rounding_mode="floor")
        if spec.half_even:
            n = n - (((v - n * spec.threshold) == 0) & (torch.remainder(n, 2) == 1)).to(n.dtype)
        n = n.clamp(0, spec.D)
        counts[spec.name] = n.to(torch.int64)
        prev = n
    return counts


def fanout(spec: LayerSpec) -> torch.Tensor:
    """Per presynaptic neuron of ``spec``'s input: the number of non-zero synapses it drives
    (exact at borders and with padding/stride), flat in IR order."""
    if spec.kind == "dense":
        return torch.as_tensor((np.asarray(spec.weight) != 0).sum(axis=0), dtype=torch.float64)
    x = torch.zeros((1,) + tuple(spec.in_shape), dtype=torch.float64, requires_grad=True)
    w = torch.as_tensor(np.asarray(spec.weight) != 0, dtype=torch.float64)
    F.conv2d(x, w, None, spec.stride, spec.padding, spec.dilation, spec.groups).sum().backward()
    return x.grad.reshape(-1)


def traffic(program: Program, result: LoihiSimResult, input_is_graded: bool = True) -> dict:
    """Messages and synaptic operations per sample (averaged over the batch), per layer input.

    Unary spikes: every spike is one message and costs ``fan-out`` synaptic ops. Graded spikes:
    one message per neuron with a non-zero count, costing ``fan-out`` multiply-accumulates.
    The graded real-valued input (one message per input element) is counted as MACs in both.
    """
    B = next(iter(result.counts.values())).shape[0]
    rows, prev_counts = {}, None
    tot = {"spike_messages": 0.0, "spike_synops": 0.0, "graded_messages": 0.0, "graded_synops": 0.0}
    for spec in program.layers:
        fo = fanout(spec)
        if prev_counts is not None:
            c = prev_counts.reshape(B, -1).to(torch.float64)
            row = {"spike_messages": float(c.sum() / B),
                   "spike_synops": float((c @ fo).sum() / B),
                   "graded_messages": float((c > 0).sum() / B),
                   "graded_synops": float(((c > 0).to(torch.float64) @ fo).sum() / B)}
            rows[spec.name] = row
            for k in tot:
                tot[k] += row[k]
        prev_counts = result.counts[spec.name]
    tot["message_ratio_spikes_over_graded"] = tot["spike_messages"] / max(tot["graded_messages"], 1e-9)
    tot["synop_ratio_spikes_over_graded"] = tot["spike_synops"] / max(tot["graded_synops"], 1e-9)
    return {"per_layer_input": rows, "total": tot,
            "timesteps_per_sample": {"spikes": 1 + sum(l.D for l in program.layers),
                                     "graded": 1 + len(program.layers)}}
