"""Time-stepped LIF graphs (:class:`ir.LIFNeuron`) on Loihi 2's CUBA neuron, in Lava fixed_pt.

Lowering (a chain ``[Flatten] -> Linear -> LIFNeuron -> ... -> Output``; anything else is refused
by name): per layer, integer weights ``w_q = round(gain·W·s_w)`` (even, 8-bit mixed sign, so Lava's
Dense stores them unchanged), the current in membrane units ``a·64`` (Lava's ``act_shift``), bias
``round(gain·b·s)`` added to ``a`` every step, as the model adds its Linear bias every step: not
as the LIF's ``bias_mant``, which Lava adds from its very first timestep, k + 1 steps before layer
k's first input arrives through the synapses (measured: 1–3 spike mismatches per net), but as a
graded input of its own (a ring buffer and an identity synapse) that starts with the layer's
first input; ``dv = round(4096·(1 − β))`` (12-bit decay: β is rounded to a
multiple of 1/4096), ``du = 4095`` (u does not persist: u = a_in·64 each step), and
``vth = round(θ·s)`` where ``s`` is the layer's current scale (input scale × weight scale for the
first layer, the weight scale after it: spikes are 0/1).

Which neuron runs it: **reset to zero + strict firing** (snnTorch ``Leaky(reset_mechanism='zero')``;
the reset timing does not matter for reset to zero) runs on Lava's **stock** LIF process model
(``PyLifModelBitAcc``), i.e. on stock Loihi 2 neurons. Reset by subtraction or non-strict firing
runs on :class:`~.lava_lif_models.PyTimeSteppedLifModel` (Lava CPU simulation; on hardware it
needs neuron microcode). MultiSpike (several spikes per step) has no Loihi form: refused.

Timing: every Dense synapse adds one Lava timestep, so layer k's spikes for model step t appear at
Lava step t + k; :func:`run_lif_lava` runs ``T + L`` steps and re-aligns them. Samples run side by
side (block-diagonal weights), so their states never mix. :func:`simulate_lif` is the same integer
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
        if isinstance(node, ir.Linear) and pending is None:
            pending = name
        elif isinstance(node, ir.LIFNeuron) and pending is not None:
            pairs.append((pending, name))
            pending = None
        else:
            raise UnsupportedOpError(f"{node.kind} is not supported by the Loihi LIF lowering", layer=node.source or name,
                                     fix="a chain of Linear -> LIF layers (Conv2d/pooling: not built yet)")
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
        if lif.reset == "none" or lif.v_min is not None or np.ndim(lif.beta) or np.ndim(lif.gain) or lif.v_init:
            raise UnsupportedOpError("per-neuron beta/gain, v_min, v_init or no reset are not lowered to Loihi yet",
                                     layer=where, fix="one beta per layer, reset 'zero' or 'subtract'")
        gain = float(lif.gain)
        w = gain * np.asarray(lin.weight, dtype=np.float64)
        # 8-bit weights, and the synaptic input a = Σ w·s within Lava's 16-bit a_in (so u = a·64
        # never wraps at 24 bits): max row sum of |w_q| · max input < 2**15
        s_w = min(_pow2_scale(float(np.max(np.abs(w))), 254.0),
                  _pow2_scale(float(np.max(np.abs(w).sum(1))) * max(in_max, 1.0), A_IN_MAX - 254.0))
        w_q = 2 * np.rint(w * s_w / 2)
        s = s_prev * s_w
        b = np.zeros(w.shape[0]) if lin.bias is None else gain * np.asarray(lin.bias, dtype=np.float64)
        bias = np.rint(b * s)
        vth = int(round(float(lif.threshold) * s))
        if float(np.max(np.abs(w_q).sum(1))) * max(in_max, 1.0) + np.max(np.abs(bias), initial=0) > A_IN_MAX:
            raise NeurodeployError("the synaptic input plus bias does not fit Lava's 16-bit a_in", layer=where,
                                   fix="use a smaller input range (input_bits) or smaller biases")
        if vth > VTH_MAX or np.max(np.abs(bias), initial=0) > BIAS_MAX:
            raise NeurodeployError(f"threshold {vth} or bias does not fit Loihi's 17-bit vth / 13-bit bias",
                                   layer=where, fix="use a smaller input range (input_bits)")
        dv = int(round(DECAY_UNITY * (1.0 - float(lif.beta))))
        layers.append(LifLayer(name=lif_name, weight=w_q.astype(np.int64), bias_mant=bias.astype(np.int64),
                               dv=dv, vth=vth, reset=lif.reset, reset_timing=lif.reset_timing, firing=lif.firing))
        s_prev, in_max = 1.0, 1.0
    node = graph.nodes[graph.input_names()[0]]
    return LifProgram(input_scale=s_in, input_shape=tuple(node.input_shape), timesteps=ir.timesteps(graph) or 1,
                      layers=layers)


def quantize_lif_input(prog: LifProgram, x) -> np.ndarray:
    """[N, T, F] (or static [N, F]) real input -> integer payloads [N, T, F]."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == len(prog.input_shape) + 1:
        x = np.repeat(x[:, None], prog.timesteps, axis=1)
    return np.rint(x * prog.input_scale).reshape(x.shape[0], x.shape[1], -1).astype(np.int64)


def _decay(a: np.ndarray, d: int) -> np.ndarray:
    return np.sign(a) * ((np.abs(a) * (DECAY_UNITY - d)) >> 12)


def simulate_lif(prog: LifProgram, x_int: np.ndarray) -> dict[str, np.ndarray]:
    """Lava's fixed-point CUBA arithmetic, per model step: trains [N, T, F] per layer."""
    s = np.asarray(x_int, dtype=np.int64)
    out = {}
    for L in prog.layers:
        v = np.zeros((s.shape[0], L.weight.shape[0]), dtype=np.int64)
        pending = np.zeros_like(v)
        theta = np.int64(L.vth) << 6
        train = np.zeros((s.shape[0], s.shape[1], L.weight.shape[0]), dtype=np.int64)
        for t in range(s.shape[1]):
            u = (s[:, t] @ L.weight.T) << 6
            u = np.where(u >= MAX_UV, u - 2 * MAX_UV, np.where(u <= -MAX_UV, u + 2 * MAX_UV, u))
            bias = (L.bias_mant << 6)[None, :]
            if L.reset == "subtract" and L.reset_timing == "next_step":
                bias = bias - pending * theta
            v = np.clip(_decay(v, L.dv) + u + bias, -MAX_UV + 1, MAX_UV - 1)
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


def run_lif_lava(prog: LifProgram, x_int: np.ndarray, timeout: float | None = 300.0) -> dict[str, np.ndarray]:
    """Run the program in Lava fixed_pt (Dense + LIF processes); trains [N, T, F] per layer,
    re-aligned to model steps (layer k's spikes for step t come at Lava step t + k)."""
    from .runner import import_lava

    import_lava()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io
    from lava.proc.dense.process import Dense
    from lava.proc.lif.process import LIF

    from .lava_lif_models import LIF_KEY, PyTimeSteppedLifModel

    x = np.asarray(x_int, dtype=np.int64)
    N, T, F = x.shape
    steps = T + len(prog.layers)
    data = np.zeros((N * F, steps), dtype=np.int32)
    data[:, :T] = x.transpose(0, 2, 1).reshape(N * F, T)
    src = io.source.RingBuffer(data=data)
    prev_port, procs, sinks = src.s_out, [], []
    for k, L in enumerate(prog.layers):
        w = np.kron(np.eye(N, dtype=np.int64), L.weight)  # samples side by side: block-diagonal
        dense = Dense(weights=w, num_message_bits=8 if k == 0 else 0)
        n_out = w.shape[0]
        lif = LIF(shape=(n_out,), du=4095, dv=L.dv, vth=L.vth)
        if np.any(L.bias_mant):  # the bias as synaptic input from the layer's first step on (see module doc)
            bias_data = np.zeros((n_out, steps), dtype=np.int32)
            bias_data[:, k:k + T] = np.tile(L.bias_mant, N)[:, None]
            bias_src = io.source.RingBuffer(data=bias_data)
            bias_syn = Dense(weights=np.eye(n_out, dtype=np.int64), num_message_bits=16)
            bias_src.s_out.connect(bias_syn.s_in)
            bias_syn.a_out.connect(lif.a_in)
        if not L.stock:
            lif.proc_params.overwrite(LIF_KEY, {"reset_timing": L.reset_timing, "firing": L.firing})
        prev_port.connect(dense.s_in)
        dense.a_out.connect(lif.a_in)
        sink = io.sink.RingBuffer(shape=(n_out,), buffer=steps)
        lif.s_out.connect(sink.a_in)
        procs.append(lif)
        sinks.append(sink)
        prev_port = lif.s_out
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
        a = np.asarray(arr).reshape(N, L.weight.shape[0], steps)[:, :, k + 1:k + 1 + T]
        trains[L.name] = (a.transpose(0, 2, 1) != 0).astype(np.int64)
    return trains
