"""Per-node tensor semantics of the IR, batched (leading batch dimension), in torch float64.

Two modes:

* ``quantized=False``: real-valued semantics with the float parameters (the IR's meaning).
* ``quantized=True``: the target's integer arithmetic with the ``*_q`` parameters. Values are
  held in float64 tensors but are integers; every accumulation stays below 2**53 (the quantiser
  guarantees it), so float64 sums are exact whatever the summation order.

:func:`spike_count` is THE definition of how many spikes an IF neuron fires for a given input
current when it integrates all of its input before firing (layer-synchronous schedule).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import ir
from .errors import NeurodeployError

DTYPE = torch.float64


def as_tensor(a) -> torch.Tensor | None:
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return a.to(DTYPE)
    return torch.as_tensor(np.asarray(a), dtype=DTYPE)


def _params(node, quantized: bool):
    if quantized:
        if node.weight_q is None:
            raise NeurodeployError("weight layer has no quantised weights", layer=node.source,
                                   fix="run neurodeploy.passes.quantize for a target first")
        return as_tensor(node.weight_q), as_tensor(node.bias_q)
    return as_tensor(node.weight), as_tensor(node.bias)


def linear_op(node: ir.Node, inputs: list[torch.Tensor], quantized: bool = False) -> torch.Tensor:
    """Apply a non-neuron node to batched inputs."""
    x = inputs[0] if inputs else None
    if isinstance(node, ir.Conv2d):
        w, b = _params(node, quantized)
        return F.conv2d(x, w, b, node.stride, node.padding, node.dilation, node.groups)
    if isinstance(node, ir.Conv1d):
        w, b = _params(node, quantized)
        return F.conv1d(x, w, b, node.stride, node.padding, node.dilation, node.groups)
    if isinstance(node, ir.Linear):
        w, b = _params(node, quantized)
        return F.linear(x, w, b)
    if isinstance(node, ir.AvgPool2d):
        return F.avg_pool2d(x, node.kernel, node.stride, node.padding, count_include_pad=True)
    if isinstance(node, ir.SumPool2d):
        k = node.kernel[0] * node.kernel[1]
        out = F.avg_pool2d(x, node.kernel, node.stride, node.padding, count_include_pad=True) * k
        return torch.round(out) if quantized else out
    if isinstance(node, ir.BatchNorm):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        inv = 1.0 / torch.sqrt(as_tensor(node.var) + node.eps)
        gamma = as_tensor(node.weight) if node.weight is not None else torch.ones_like(inv)
        beta = as_tensor(node.bias) if node.bias is not None else torch.zeros_like(inv)
        return (x - as_tensor(node.mean).view(shape)) * (inv * gamma).view(shape) + beta.view(shape)
    if isinstance(node, ir.Scale):
        if quantized:
            raise NeurodeployError("Scale node left in a quantised graph", layer=node.source,
                                   fix="run passes.fold_scales before quantising")
        s = as_tensor(node.scale)
        if s.dim() == 1:
            s = s.view((1, -1) + (1,) * (x.dim() - 2))
        return x * s
    if isinstance(node, ir.Flatten):
        return x.flatten(node.start_dim + 1)
    if isinstance(node, ir.Reshape):
        return x.reshape((x.shape[0],) + tuple(node.target_shape))
    if isinstance(node, ir.Add):
        out = inputs[0]
        for other in inputs[1:]:
            out = out + other
        return out
    if isinstance(node, ir.Output):
        return x
    if isinstance(node, ir.HostOp):
        return host_op(node, inputs, quantized)
    raise NeurodeployError(f"no semantics for node type {node.kind}", layer=node.source)


def host_op(node: ir.HostOp, inputs: list[torch.Tensor], quantized: bool = False) -> torch.Tensor:
    """The host's exact semantics of a :class:`ir.HostOp` on batched inputs (see its docstring).
    Products are taken in float64: the quantiser keeps every integer below 2**50, so they are exact."""
    if node.op == "permute":
        return inputs[0].permute(0, *[d + 1 for d in node.dims])
    if node.op in ("matmul", "mul"):
        a, b = (as_tensor(v) for v in inputs)
        out = torch.matmul(a, b) if node.op == "matmul" else a * b
        if quantized and node.shift_q:
            out = out * float(2 ** int(node.shift_q))
        return out
    raise NeurodeployError(f"'{node.op}' must run on the host, and neurodeploy knows no exact semantics for it: "
                           f"{node.reason}", layer=node.source,
                           fix="deploy the part before it (--until) and run the rest on the host")


def spike_count(node: ir.IFNeuron, current: torch.Tensor, quantized: bool = False) -> torch.Tensor:
    """Spike count of an IF neuron (subtractive reset, budget D) that integrates ``current`` at once.

    n = clip(floor((current + v_init) / θ), 0, D), minus one on an exact tie under half-even.
    """
    if quantized:
        theta, v0 = float(node.threshold_q), float(node.v_init_q or 0)
        v = current + v0
        if node.state_bits is not None:  # membrane saturates at the target's state width
            hi = float(2 ** (node.state_bits - 1) - 1)
            v = v.clamp(max=hi)
        n = torch.div(v, theta, rounding_mode="floor")
        exact = (v - n * theta) == 0
    else:
        u = (current + node.v_init) / node.threshold
        n = torch.floor(u)
        exact = u == n
    if node.rounding == "half_even":
        n = n - (exact & (torch.remainder(n, 2) == 1)).to(n.dtype)
    return n.clamp(0, node.max_spikes)


def neuron_output(node: ir.IFNeuron, counts: torch.Tensor, quantized: bool = False) -> torch.Tensor:
    """The value an IF layer passes on: counts in a quantised graph (norms are folded), else n/norm."""
    return counts if quantized else counts / node.norm


def quantize_input(node: ir.Input, x: torch.Tensor, quantized: bool) -> torch.Tensor:
    """Input values as the graph sees them: fixed-point integers when quantised."""
    x = as_tensor(x)
    if quantized and not node.is_spikes:
        if node.scale_q is None:
            raise NeurodeployError("quantised graph has an Input without scale_q", layer=node.source)
        return torch.round(x * node.scale_q)
    return x


def evaluate(graph: ir.Graph, x, quantized: bool | None = None) -> dict[str, torch.Tensor]:
    """Layer-synchronous evaluation of the whole graph on a batch ``x`` (single-input graphs).

    Returns every node's value; for IF neurons the value is the **spike count** (not n/norm).
    This is the closed form of the layer-synchronous schedule and the reference the simulators
    are tested against.
    """
    quantized = graph.is_quantized if quantized is None else quantized
    values: dict[str, torch.Tensor] = {}
    for name in graph.topo_order():
        node = graph.nodes[name]
        ins = [values[i] for i in graph.inputs_of(name)]
        ins = [neuron_output(graph.nodes[i], v, quantized) if isinstance(graph.nodes[i], ir.IFNeuron) else v
               for i, v in zip(graph.inputs_of(name), ins)]
        if isinstance(node, ir.Input):
            values[name] = quantize_input(node, x, quantized)
        elif isinstance(node, ir.IFNeuron):
            values[name] = spike_count(node, ins[0], quantized)
        else:
            values[name] = linear_op(node, ins, quantized)
    return values
