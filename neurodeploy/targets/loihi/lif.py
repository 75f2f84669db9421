"""Time-stepped LIF graphs (:class:`ir.LIFNeuron`) on Loihi 2's CUBA neuron, in Lava fixed_pt.

Lowering (a chain of ``Conv2d -> LIFNeuron`` and ``[Flatten] -> Linear -> LIFNeuron`` layers;
anything else, pooling included, is refused by name): per layer, integer weights ``w_q = round(gain·W·s_w)`` (even, 8-bit mixed sign, so Lava's
Dense stores them unchanged), the current in membrane units ``a·64`` (Lava's ``act_shift``), bias
``round(gain·b·s)`` added to ``a`` every step, as the model adds its Linear bias every step: not
as the LIF's ``bias_mant``, which Lava adds from its very first timestep, k + 1 steps before layer
k's first input arrives through the synapses (measured: 1–3 spike mismatches per net), but as a
graded input of its own (a ring buffer and an identity synapse) that starts with the layer's
first input; ``dv = round(4096·(1 − β))`` (12-bit decay: β is rounded to a
multiple of 1/4096), ``du = 4095`` (u does not persist: u = a_in·64 each step, plus the |u| >> 12
Lava keeps) or, for a synaptic current (snnTorch ``Synaptic`` / NIR ``CubaLIF``: CUBA's u *is* that
current, in the same order), ``du = round(4096·(1 − alpha))``, the scales chosen so that the
current's sum a/(1 − alpha) stays within 24 bits, and
``vth = round(θ·s)`` where ``s`` is the layer's current scale (input scale × weight scale for the
first layer, the weight scale after it: spikes are 0/1).

Which neuron runs it: **reset to zero + strict firing** (snnTorch ``Leaky(reset_mechanism='zero')``;
the reset timing does not matter for reset to zero) runs on Lava's **stock** LIF process model
(``PyLifModelBitAcc``), i.e. on stock Loihi 2 neurons. Reset by subtraction or non-strict firing
runs on :class:`~.lava_lif_models.PyTimeSteppedLifModel` (Lava CPU simulation; on hardware it
needs neuron microcode). MultiSpike (several spikes per step) has no Loihi form: refused.

Timing: every synapse (Dense / Conv) adds one Lava timestep, so layer k's spikes for model step t
appear at Lava step t + k; :func:`run_lif_lava` runs ``T + L`` steps and re-aligns them. Samples run
side by side, so their states never mix: dense layers with block-diagonal weights, conv layers with
the samples stacked along Lava's feature axis (``groups = N·g``; images live in Lava's (x, y, f) =
(W, H, N·C)); Lava's conv is a true convolution, so the PyTorch kernel is flipped. :func:`simulate_lif` is the same integer
arithmetic in numpy; tests check it equals Lava with 0 spike-time mismatches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import ir
from ...errors import NeurodeployError, UnsupportedOpError

DECAY_UNITY = 4096
MAX_UV = 2 ** 23
VTH_MAX = (1 << 17) - 1
BIAS_MAX = (1 << 12) - 1
A_IN_MAX = (1 << 15) - 1


@dataclass
class LifLayer:
    name: str
    weight: np.ndarray        # int64 [O, I], what Lava's Dense stores (even, |w| <= 254)
    bias_mant: np.ndarray     # int64 [O], bias_exp = 6
    dv: int
    vth: int
    reset: str
    reset_timing: str
    firing: str
    kind: str = "dense"       # 'dense' (weight [O, I], I = the PyTorch-flattened input) | 'conv' [O, I/g, kH, kW]
    in_shape: tuple = ()
    out_shape: tuple = ()
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    du: int = DECAY_UNITY - 1  # 4095: the current does not persist (u keeps |u| >> 12 only, as Lava computes)

    @property
    def stock(self) -> bool:
        return self.reset == "zero" and self.firing == "strict"


@dataclass
class LifProgram:
    input_scale: float
    input_shape: tuple
    timesteps: int
    layers: list


def _chain(graph: ir.Graph) -> list[tuple[str, str]]:
    pairs, pending = [], None
    for name in graph.topo_order():
        node = graph.nodes[name]
        if isinstance(node, (ir.Input, ir.Output, ir.Flatten)):
            continue
        if isinstance(node, (ir.Linear, ir.Conv2d)) and pending is None:
            pending = name
        elif isinstance(node, ir.LIFNeuron) and pending is not None:
            pairs.append((pending, name))
            pending = None
        else:
            raise UnsupportedOpError(f"{node.kind} is not supported by the Loihi LIF lowering", layer=node.source or name,
                                     fix="a chain of Linear / Conv2d -> LIF layers (pooling: not built yet)")
    if pending is not None or not pairs:
        raise UnsupportedOpError("every Linear must feed a LIF layer", fix="end the network with a LIF layer")
    return pairs


def _pow2_scale(max_abs: float, limit: float) -> float:
    return 2.0 ** np.floor(np.log2(limit / max_abs)) if max_abs > 0 else 1.0


def lower_lif(graph: ir.Graph, x_calib, *, input_bits: int = 8) -> LifProgram:
    """Quantise and lower a time-stepped graph for Loihi (see the module docstring)."""
    x = np.asarray(x_calib, dtype=np.float64)
    if np.min(x) < 0:
        raise NeurodeployError("the Loihi LIF lowering takes non-negative inputs", fix="shift the input to >= 0")
    s_in = _pow2_scale(float(np.max(np.abs(x))), 2 ** input_bits - 1)
    layers, s_prev, in_max = [], s_in, float(np.max(np.abs(x))) * s_in
    for lin_name, lif_name in _chain(graph):
        lin, lif = graph.nodes[lin_name], graph.nodes[lif_name]
        where = lif.source or lif_name
        if lif.firing == "multi":
            raise UnsupportedOpError("several spikes per step (sinabs MultiSpike) have no Loihi form", layer=where,
                                     fix="use SingleSpike (one spike per step) for Loihi")
        du = _current_decay(lif, where)
        if lif.reset == "none" or lif.v_min is not None or np.ndim(lif.beta) or np.ndim(lif.gain) or lif.v_init:
            raise UnsupportedOpError("per-neuron beta/gain, v_min, v_init or no reset are not lowered to Loihi yet",
                                     layer=where, fix="one beta per layer, reset 'zero' or 'subtract'")
        gain = float(lif.gain)
        w = gain * np.asarray(lin.weight, dtype=np.float64)
        rows = np.abs(w).reshape(w.shape[0], -1).sum(1)
        # 8-bit weights, and the synaptic input a = Σ w·s within Lava's 16-bit a_in (so u = a·64
        # never wraps at 24 bits): max row sum of |w_q| · max input < 2**15; a persistent current
        # (du < 4095) sums up to a/(1 - alpha_q): that sum too within 24 bits
        persist = DECAY_UNITY / du if du < DECAY_UNITY - 1 else 1.0
        s_w = min(_pow2_scale(float(np.max(np.abs(w))), 254.0),
                  _pow2_scale(float(np.max(rows)) * max(in_max, 1.0),
                              min(A_IN_MAX, (MAX_UV >> 6) / persist - 1) - 254.0))
        w_q = 2 * np.rint(w * s_w / 2)
        s = s_prev * s_w
        b = np.zeros(w.shape[0]) if lin.bias is None else gain * np.asarray(lin.bias, dtype=np.float64)
        bias = np.rint(b * s)
        vth = int(round(float(lif.threshold) * s))
        a_max = float(np.max(np.abs(w_q).reshape(w.shape[0], -1).sum(1))) * max(in_max, 1.0) + \
            np.max(np.abs(bias), initial=0)
        if a_max > A_IN_MAX or a_max * persist * 64 >= MAX_UV:
            raise NeurodeployError("the synaptic input plus bias does not fit Lava's 16-bit a_in", layer=where,
                                   fix="use a smaller input range (input_bits) or smaller biases")
        if vth > VTH_MAX or np.max(np.abs(bias), initial=0) > BIAS_MAX:
            raise NeurodeployError(f"threshold {vth} or bias does not fit Loihi's 17-bit vth / 13-bit bias",
                                   layer=where, fix="use a smaller input range (input_bits)")
        dv = int(round(DECAY_UNITY * (1.0 - float(lif.beta))))
        conv = {}
        if isinstance(lin, ir.Conv2d):
            conv = dict(kind="conv", stride=lin.stride, padding=lin.padding, dilation=lin.dilation, groups=lin.groups)
        # the population the synapse reads (a Flatten in between only changes the view)
        in_shape = tuple(layers[-1].out_shape) if layers else tuple(graph.nodes[graph.input_names()[0]].shape)
        layers.append(LifLayer(name=lif_name, weight=w_q.astype(np.int64), bias_mant=bias.astype(np.int64),
                               dv=dv, du=du, vth=vth, reset=lif.reset, reset_timing=lif.reset_timing, firing=lif.firing,
                               in_shape=in_shape, out_shape=tuple(lif.shape), **conv))
        s_prev, in_max = 1.0, 1.0
    node = graph.nodes[graph.input_names()[0]]
    return LifProgram(input_scale=s_in, input_shape=tuple(node.input_shape), timesteps=ir.timesteps(graph) or 1,
                      layers=layers)


def _current_decay(lif: ir.LIFNeuron, where: str) -> int:
    """Lava's du for the layer: 4095 without a synaptic current, else round(4096·(1 − alpha))
    (CUBA's u is the current: u = u·(4096 − du)/4096 + a_in·64, then v = v·(4096 − dv)/4096 + u)."""
    if not lif.synaptic:
        return DECAY_UNITY - 1
    if np.ndim(lif.alpha):
        raise UnsupportedOpError("per-neuron synaptic decay alpha is not lowered to Loihi", layer=where,
                                 fix="one alpha per layer")
    if lif.reset == "zero" and lif.reset_timing == "next_step":
        raise UnsupportedOpError("reset to zero one step later with a synaptic current (snnTorch Synaptic "
                                 "zeroes that whole step's update) has no CUBA form", layer=where,
                                 fix="Synaptic(reset_mechanism='subtract') or reset_delay=False")
    du = int(round(DECAY_UNITY * (1.0 - float(lif.alpha))))
    if du < 1:
        raise UnsupportedOpError(f"synaptic decay alpha = {float(lif.alpha):.6g} rounds to no decay (du = 0): the "
                                 "current would grow without bound in 24 bits", layer=where,
                                 fix="alpha <= 1 - 1/4096")
    return du


def quantize_lif_input(prog: LifProgram, x) -> np.ndarray:
    """[N, T, *input_shape] (or static [N, *input_shape]) real input -> integer payloads [N, T, ...]."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == len(prog.input_shape) + 1:
        x = np.repeat(x[:, None], prog.timesteps, axis=1)
    return np.rint(x * prog.input_scale).astype(np.int64)


def synaptic_input(L: LifLayer, s: np.ndarray) -> np.ndarray:
    """Σ w·s of one step for a batch ``s`` [N, *in_shape] (exact integers)."""
    if L.kind == "dense":
        return s.reshape(s.shape[0], -1) @ L.weight.T
    import torch
    import torch.nn.functional as F

    a = F.conv2d(torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(L.weight, dtype=torch.float64), None,
                 L.stride, L.padding, L.dilation, L.groups)  # integers far below 2**53: exact
    return np.rint(a.numpy()).astype(np.int64)


def _decay(a: np.ndarray, d: int) -> np.ndarray:
    return np.sign(a) * ((np.abs(a) * (DECAY_UNITY - d)) >> 12)


def simulate_lif(prog: LifProgram, x_int: np.ndarray) -> dict[str, np.ndarray]:
    """Lava's fixed-point CUBA arithmetic, per model step: trains [N, T, F] per layer."""
    s = np.asarray(x_int, dtype=np.int64)
    out = {}
    for L in prog.layers:
        v = np.zeros((s.shape[0],) + tuple(L.out_shape), dtype=np.int64)
        u, pending = np.zeros_like(v), np.zeros_like(v)
        theta = np.int64(L.vth) << 6
        train = np.zeros((s.shape[0], s.shape[1]) + tuple(L.out_shape), dtype=np.int64)
        bias = (L.bias_mant << 6).reshape((1, -1) + (1,) * (len(L.out_shape) - 1))
        for t in range(s.shape[1]):
            # the bias reaches u through its own synapse (run_lif_lava); no 24-bit wrap (lower_lif)
            u = _decay(u, L.du) + (synaptic_input(L, s[:, t]) << 6) + bias
            b = -pending * theta if L.reset == "subtract" and L.reset_timing == "next_step" else 0
            v = np.clip(_decay(v, L.dv) + u + b, -MAX_UV + 1, MAX_UV - 1)
            spk = v >= theta if L.firing == "non_strict" else v > theta
            if L.reset == "zero":
                v = np.where(spk, 0, v)
            elif L.reset_timing == "same_step":
                v = v - spk * theta
            pending = spk.astype(np.int64)
            train[:, t] = spk
        out[L.name] = train
        s = train
    return out


def lava_shape(shape: tuple, N: int) -> tuple:
    """Where N samples of a population live side by side in Lava: vectors (F,) as (N·F,) with
    sample-major order; images (C, H, W) in Lava's (x, y, f) = (W, H, N·C), samples along f."""
    return (N * shape[0],) if len(shape) == 1 else (shape[2], shape[1], N * shape[0])


def to_lava(a: np.ndarray) -> np.ndarray:
    """[N, *shape] -> the Lava array of :func:`lava_shape`."""
    if a.ndim == 2:
        return a.reshape(-1)
    N, C, H, W = a.shape
    return a.transpose(3, 2, 0, 1).reshape(W, H, N * C)


def from_lava(a: np.ndarray, N: int, shape: tuple) -> np.ndarray:
    if len(shape) == 1:
        return a.reshape(N, shape[0])
    C, H, W = shape
    return a.reshape(W, H, N, C).transpose(2, 3, 1, 0)


def _dense_weights(L: LifLayer, N: int) -> np.ndarray:
    """[N·O, |Lava input|]: sample n's rows read sample n's inputs at their Lava positions."""
    shape = tuple(L.in_shape)
    pos = from_lava(np.arange(int(np.prod(lava_shape(shape, N)))), N, shape).reshape(N, -1)
    O = L.weight.shape[0]
    w = np.zeros((N * O, pos.size), dtype=np.int64)
    for n in range(N):
        w[n * O:(n + 1) * O, pos[n]] = L.weight
    return w


def _synapse(L: LifLayer, N: int, first: bool, Dense, Conv, in_shape_lava: tuple):
    bits = 8 if first else 0
    if L.kind == "dense":
        return Dense(weights=_dense_weights(L, N), num_message_bits=bits)
    # Lava's conv (lava/proc/conv/utils.py) is a true convolution: flip the kernel of PyTorch's
    # cross-correlation; [N·O, kW, kH, I/g] in Lava's (x, y) order
    w = np.tile(np.ascontiguousarray(L.weight[:, :, ::-1, ::-1].transpose(0, 3, 2, 1)), (N, 1, 1, 1))
    sw = lambda v: (int(v[1]), int(v[0]))  # noqa: E731  (H, W) -> Lava (x, y)
    return Conv(weight=w, input_shape=in_shape_lava, padding=sw(L.padding), stride=sw(L.stride),
                dilation=sw(L.dilation), groups=N * L.groups, num_message_bits=bits)


def run_lif_lava(prog: LifProgram, x_int: np.ndarray, timeout: float | None = 300.0) -> dict[str, np.ndarray]:
    """Run the program in Lava fixed_pt (Dense / Conv + LIF processes, the N samples side by side);
    trains [N, T, *shape] per layer, re-aligned to model steps (layer k's spikes for step t come at
    Lava step t + k + 1)."""
    from .runner import import_lava

    import_lava()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import Dense
    from lava.proc.lif.process import LIF

    from .lava_lif_models import LIF_KEY, PyTimeSteppedLifModel

    x = np.asarray(x_int, dtype=np.int64)
    N, T = x.shape[:2]
    steps = T + len(prog.layers)
    in_lava = lava_shape(tuple(prog.input_shape), N)
    data = np.zeros(in_lava + (steps,), dtype=np.int32)
    for t in range(T):
        data[..., t] = to_lava(x[:, t])
    src = io.source.RingBuffer(data=data)
    prev_port, sinks = src.s_out, []
    for k, L in enumerate(prog.layers):
        syn = _synapse(L, N, k == 0, Dense, Conv, in_lava)
        (prev_port.flatten() if L.kind == "dense" and len(in_lava) > 1 else prev_port).connect(syn.s_in)
        out_lava = lava_shape(tuple(L.out_shape), N)
        if tuple(syn.a_out.shape) != out_lava:
            raise NeurodeployError(f"Lava synapse gives shape {tuple(syn.a_out.shape)}, expected {out_lava}",
                                   layer=L.name)
        lif = LIF(shape=out_lava, du=L.du, dv=L.dv, vth=L.vth)
        syn.a_out.connect(lif.a_in)
        if np.any(L.bias_mant):  # the bias as synaptic input from the layer's first step on (see module doc)
            per_sample = np.broadcast_to(L.bias_mant.reshape((-1,) + (1,) * (len(L.out_shape) - 1)),
                                         L.out_shape)
            bias_data = np.zeros(out_lava + (steps,), dtype=np.int32)
            bias_data[..., k:k + T] = to_lava(np.broadcast_to(per_sample, (N,) + tuple(L.out_shape)))[..., None]
            bias_src = io.source.RingBuffer(data=bias_data)
            if len(out_lava) == 1:
                bias_syn = Dense(weights=np.eye(out_lava[0], dtype=np.int64), num_message_bits=16)
            else:  # depthwise 1x1 conv of weight 1: one bias input per neuron
                bias_syn = Conv(weight=np.ones((out_lava[2], 1, 1, 1), dtype=np.int64), input_shape=out_lava,
                                groups=out_lava[2], num_message_bits=16)
            bias_src.s_out.connect(bias_syn.s_in)
            bias_syn.a_out.connect(lif.a_in)
        if not L.stock:
            lif.proc_params.overwrite(LIF_KEY, {"reset_timing": L.reset_timing, "firing": L.firing})
        sink = io.sink.RingBuffer(shape=out_lava, buffer=steps)
        lif.s_out.connect(sink.a_in)
        sinks.append(sink)
        prev_port, in_lava = lif.s_out, out_lava
    custom = {LIF: PyTimeSteppedLifModel} if not all(L.stock for L in prog.layers) else {}
    cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=custom)
    try:
        src.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
        outs = [s.data.get() for s in sinks]
    finally:
        try:
            src.stop()
        except Exception:
            pass
    trains = {}
    for k, (L, arr) in enumerate(zip(prog.layers, outs)):
        arr = np.asarray(arr)
        per_step = [from_lava(arr[..., k + 1 + t], N, tuple(L.out_shape)) for t in range(T)]
        trains[L.name] = (np.stack(per_step, 1) != 0).astype(np.int64)
    return trains
