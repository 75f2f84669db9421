"""Lowering of a canonical (quantised) graph to a *Loihi program*: the list of NetX layers exactly
as they are written to the ``.net`` file, plus the layer-synchronous schedule.

No Lava import here: the program is shared by the HDF5 writer (:mod:`.netx`), the bit-accurate
simulator (:mod:`.simulate`) and the Lava runner (:mod:`.runner`).

Lowering rules (a chain network; anything else is rejected with the layer named):

* ``Conv2d -> IFNeuron``  -> NetX ``conv`` layer (CUBA neuron).
* ``[Flatten] -> Linear -> IFNeuron`` -> NetX ``flatten`` + ``dense`` layer.
* ``SumPool2d [-> Flatten] -> Linear`` -> the pooling is folded into the dense weights
  (``W' = W · P``, integer and exact).
* any other ``SumPool2d`` (before a conv, or before the output) -> a *fixed conv*: a depthwise
  conv with all-ones kernel and a pass-through IF neuron (θ = 1, v_init = 0, budget k·k·D_prev,
  so its spike count equals the pooled sum exactly).
* Add (residuals), fan-out, Conv1d, HostOp, Reshape, a weight layer without an IF neuron after it
  -> :class:`~neurodeploy.errors.UnsupportedOpError` naming the layer (NetX ``.net`` is a chain of
  synapse+neuron blocks).

Schedule (layer-synchronous, one sample = ``period`` Lava timesteps, local step τ = 1..period):
the input is sent as one graded spike per pixel at τ = 1; layer 1 receives it at τ = 2 (every
synapse adds one timestep) and fires in its window ``[2, 2 + D_1 − 1]``; layer l+1 receives layer
l's spikes one step later, so its last input arrives exactly at ``f_{l+1} = f_l + D_l``, where its
own window starts. ``period = 1 + Σ_l D_l``. All state is re-initialised at τ = 1.

Graded mode (``mode='graded'``, Loihi 2 graded spikes): a layer integrates its whole input in one
timestep, runs its D compare-and-subtract iterations within that step and sends the count n as
one graded message (payload n, ``messageBits`` = bits of D); the next synapse multiplies the
payload by the weight. Every layer's window is one step: ``period = 1 + L``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ... import ir
from ...errors import NeurodeployError, UnsupportedOpError

V_BITS = 24                      # u and v are 24-bit on Loihi
VTH_MAX = (1 << 17) - 1          # vThMant is 17-bit unsigned
STATE_MAX_INT = (1 << 17) - 1    # |v| in input-current units before saturation (v = 64·V)
MODES = ("spikes", "graded")
I_DECAY_NONE = 4096              # iDecay 4096: u does not persist (u = a_in << 6 each step)
V_DECAY_NONE = 0                 # vDecay 0: the membrane v integrates (IF)


@dataclass
class LayerSpec:
    """One NetX layer (synapse + neuron), values exactly as written to the .net file."""

    name: str                     # IR name of the layer's IF neuron (or '<pool>:name')
    kind: str                     # 'conv' | 'dense'
    in_shape: tuple               # (C, H, W) or (N,)
    out_shape: tuple              # (C, H, W) or (N,)
    weight: np.ndarray            # int64; conv [O, I/g, kH, kW], dense [O, I]
    bias: np.ndarray | None       # int64 [O] or None
    vth: int                      # vThMant (spike when v > vth << 6): θ_q − 1
    v_init: int                   # initial membrane (current units), set at τ = 1
    D: int                        # spike budget (window length)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    flatten_before: bool = False
    i_decay: int = I_DECAY_NONE
    v_decay: int = V_DECAY_NONE
    sources: list = field(default_factory=list)  # IR nodes folded into this layer
    passthrough: bool = False     # a lowered SumPool2d
    window_start: int = 0         # local step τ of the first firing step (set by schedule)
    half_even: bool = False       # torch.round model: an exact tie V == θ fires only after an odd count

    @property
    def threshold(self) -> int:
        return self.vth + 1


@dataclass
class Program:
    input_name: str
    input_shape: tuple            # (C, H, W) or (N,)
    input_scale: float | None     # x_int = round(x * scale); None if the input is spike counts
    input_is_spikes: bool
    input_message_bits: int
    layers: list
    output_name: str
    mode: str = "spikes"          # 'spikes' (unary, D steps per layer) | 'graded' (one message)

    def window_len(self, l: LayerSpec) -> int:
        return 1 if self.mode == "graded" else l.D

    @property
    def period(self) -> int:
        return 1 + sum(self.window_len(l) for l in self.layers)

    def schedule(self) -> "Program":
        if self.mode not in MODES:
            raise NeurodeployError(f"unknown Loihi mode {self.mode!r}", fix=f"use one of {MODES}")
        f = 2
        for l in self.layers:
            l.window_start = f
            f += self.window_len(l)
        return self

    def describe_schedule(self) -> dict:
        return {
            "mode": self.mode,
            "timesteps_per_sample": self.period,
            "input_step": 1,
            "windows": {l.name: [l.window_start, l.window_start + self.window_len(l) - 1]
                        for l in self.layers},
        }


def _prod(s) -> int:
    return int(np.prod(s))


def sumpool_matrix(pool: ir.SumPool2d, in_shape: tuple) -> np.ndarray:
    """Integer matrix P [out_flat, in_flat] of a SumPool2d on (C,H,W) (PyTorch flatten order)."""
    import torch
    import torch.nn.functional as F

    n = _prod(in_shape)
    eye = torch.eye(n, dtype=torch.float64).reshape((n,) + tuple(in_shape))
    k = pool.kernel[0] * pool.kernel[1]
    out = F.avg_pool2d(eye, pool.kernel, pool.stride, pool.padding, count_include_pad=True) * k
    return np.rint(out.reshape(n, -1).T.numpy()).astype(np.int64)


def _reject(name: str, node: ir.Node, why: str, fix: str | None = None):
    raise UnsupportedOpError(f"{node.kind} cannot be deployed to Loihi 2 / NetX: {why}",
                             layer=name, fix=fix)


def _chain(graph: ir.Graph) -> list[str]:
    graph.validate()
    ins = graph.input_names()
    if len(ins) != 1:
        raise UnsupportedOpError(f"Loihi target needs exactly one Input, got {len(ins)}")
    order, cur = [ins[0]], ins[0]
    while True:
        cons = graph.consumers_of(cur)
        if not cons:
            break
        if len(cons) > 1:
            raise UnsupportedOpError(
                f"fan-out to {cons}: a NetX .net is a chain of layers (no branches/residuals)",
                layer=cur, fix="deploy a chain network, or use the 'sim' target")
        cur = cons[0]
        order.append(cur)
    if len(order) != len(graph.nodes):
        extra = [n for n in graph.nodes if n not in order]
        raise UnsupportedOpError(f"nodes off the main chain: {extra}", layer=extra[0])
    return order


def lower(graph: ir.Graph, mode: str = "spikes") -> Program:
    """Lower a *quantised* canonical graph to a :class:`Program` (see module docstring)."""
    if not graph.is_quantized:
        raise NeurodeployError("graph is not quantised for Loihi",
                               fix="call LoihiTarget().quantize(graph) first")
    if graph.nodes[next(iter(graph.input_names()))].shape is None:
        ir.infer_shapes(graph)
    order = _chain(graph)
    inp: ir.Input = graph.nodes[order[0]]
    layers: list[LayerSpec] = []
    pending: list[str] = []        # SumPool2d / Flatten names since the last spiking layer
    cur_shape = tuple(inp.input_shape)
    prev_D = None                  # spike budget of the previous spiking layer (None: input)
    i = 1
    meta = graph.metadata.get("quantization", {})
    msg_bits = int(meta.get("input_message_bits", 8)) if isinstance(meta, dict) else 8

    def flush_pools_as_layers():
        nonlocal cur_shape, prev_D
        new_pending = []
        for pn in pending:
            node = graph.nodes[pn]
            if isinstance(node, ir.SumPool2d):
                if prev_D is None:
                    _reject(pn, node, "sum-pooling of the real-valued input has no spiking layer "
                            "to run on", "put the pooling after the first spiking layer")
                if len(cur_shape) != 3:
                    _reject(pn, node, f"pooling a {cur_shape} tensor")
                c = cur_shape[0]
                kh, kw = node.kernel
                D = kh * kw * prev_D
                w = np.ones((c, 1, kh, kw), dtype=np.int64)
                layers.append(LayerSpec(
                    name=f"{pn}", kind="conv", in_shape=cur_shape, out_shape=tuple(node.shape),
                    weight=w, bias=None, vth=0, v_init=0, D=D, stride=node.stride,
                    padding=node.padding, groups=c, sources=[pn], passthrough=True))
                cur_shape, prev_D = tuple(node.shape), D
            else:
                new_pending.append(pn)
        pending[:] = new_pending

    while i < len(order):
        name = order[i]
        node = graph.nodes[name]
        if isinstance(node, (ir.SumPool2d,)) and not isinstance(node, ir.AvgPool2d):
            pending.append(name)
            i += 1
            continue
        if isinstance(node, ir.Flatten):
            pending.append(name)
            i += 1
            continue
        if isinstance(node, (ir.Conv2d, ir.Linear)):
            if node.weight_q is None:
                raise NeurodeployError("weight layer has no quantised weights", layer=name,
                                       fix="quantise the graph for Loihi first")
            nxt = order[i + 1] if i + 1 < len(order) else None
            if nxt is None or not isinstance(graph.nodes[nxt], ir.IFNeuron):
                what = graph.nodes[nxt].kind if nxt else "nothing"
                _reject(name, node, f"it feeds {what}, but every NetX layer is synapse + spiking "
                        "neuron", "end the network with an IF neuron layer (spike-count readout)")
            neuron: ir.IFNeuron = graph.nodes[nxt]
            sources = list(pending) + [name, nxt]
            wq = np.asarray(node.weight_q).astype(np.int64)
            bq = None if node.bias_q is None else np.asarray(node.bias_q).astype(np.int64)
            flatten_before = False
            if isinstance(node, ir.Conv2d):
                if any(isinstance(graph.nodes[p], ir.Flatten) for p in pending):
                    _reject(name, node, "a Flatten before a convolution")
                flush_pools_as_layers()
                spec = LayerSpec(name=nxt, kind="conv", in_shape=cur_shape,
                                 out_shape=tuple(node.shape), weight=wq, bias=bq, vth=0, v_init=0,
                                 D=neuron.max_spikes, stride=node.stride, padding=node.padding,
                                 dilation=node.dilation, groups=node.groups, sources=sources)
            else:
                # fold pools (and flattens) in front of the Linear into its weights
                shape = cur_shape
                mat = None
                for pn in pending:
                    pnode = graph.nodes[pn]
                    if isinstance(pnode, ir.SumPool2d):
                        if len(shape) != 3:
                            _reject(pn, pnode, f"pooling a {shape} tensor")
                        P = sumpool_matrix(pnode, shape)
                        mat = P if mat is None else P @ mat
                        shape = tuple(pnode.shape)
                    else:
                        shape = tuple(pnode.shape)
                if mat is not None:
                    wq = wq @ mat
                flatten_before = len(cur_shape) > 1
                spec = LayerSpec(name=nxt, kind="dense", in_shape=(_prod(cur_shape),),
                                 out_shape=(wq.shape[0],), weight=wq, bias=bq, vth=0, v_init=0,
                                 D=neuron.max_spikes, flatten_before=flatten_before,
                                 sources=sources)
                spec.in_shape_unflat = cur_shape
            if neuron.threshold_q is None:
                raise NeurodeployError("IF neuron has no quantised threshold", layer=nxt)
            theta = int(neuron.threshold_q)
            if theta < 1:
                raise NeurodeployError(f"quantised threshold {theta} < 1", layer=nxt)
            spec.vth = theta - 1
            spec.v_init = int(neuron.v_init_q or 0)
            spec.half_even = neuron.rounding == "half_even"
            pending.clear()
            layers.append(spec)
            cur_shape, prev_D = tuple(spec.out_shape), spec.D
            i += 2
            continue
        if isinstance(node, ir.Output):
            flush_pools_as_layers()
            if any(isinstance(graph.nodes[p], ir.Flatten) for p in pending):
                pending.clear()  # a flatten before the output only changes the view
            i += 1
            continue
        if isinstance(node, ir.IFNeuron):
            _reject(name, node, "an IF neuron without a weight layer in front of it")
        _reject(name, node, f"node type {node.kind} is not supported by the Loihi/NetX lowering "
                "(canonical graphs only: Conv2d, Linear, SumPool2d, Flatten, IFNeuron)",
                "run neurodeploy.passes.canonicalize first; residual Adds need the 'sim' target")
    if not layers:
        raise UnsupportedOpError("network has no spiking layer to deploy")
    scale = None if inp.is_spikes else float(inp.scale_q)
    return Program(input_name=order[0], input_shape=tuple(inp.input_shape), input_scale=scale,
                   input_is_spikes=bool(inp.is_spikes), input_message_bits=msg_bits,
                   layers=layers, output_name=order[-1], mode=mode).schedule()


def quantize_input(program: Program, x) -> np.ndarray:
    """Batch of real inputs -> integer graded-spike payloads (round half to even, as ops does)."""
    import torch

    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = x.astype(np.float64)
    if x.shape[1:] != tuple(program.input_shape):
        raise NeurodeployError(f"input batch has per-sample shape {x.shape[1:]}, the network "
                               f"expects {tuple(program.input_shape)}", layer=program.input_name)
    if program.input_scale is None:
        xi = np.rint(x)
    else:
        xi = np.rint(x * program.input_scale)
    limit = 2 ** int(program.input_message_bits)
    if xi.size and not np.all(np.abs(xi) < limit):  # also catches NaN / inf
        first = int(np.argmax(~(np.abs(xi.reshape(len(xi), -1)) < limit).all(axis=1)))
        raise NeurodeployError(f"input sample {first} does not fit the {program.input_message_bits}-bit input "
                               f"messages (payload round(x * {program.input_scale}) must stay below {limit} "
                               "in magnitude)", layer=program.input_name,
                               fix="pass inputs inside the range the network was quantised for "
                                   "(or compile with calibration data that covers them)")
    return xi.astype(np.int64)
