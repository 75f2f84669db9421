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
    if ir.is_time_stepped(graph):
        return evaluate_timestepped(graph, x, quantized)
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


# -- time-stepped graphs (LIF / IF neurons over T timesteps) ----------------------------------------

def _per_sample(a) -> torch.Tensor:
    t = as_tensor(a)
    return t.unsqueeze(0)  # broadcast over the batch dimension


def lif_fire(node: ir.LIFNeuron, v: torch.Tensor) -> torch.Tensor:
    """Spikes of a :class:`ir.LIFNeuron` with membrane ``v`` (see its docstring)."""
    theta = float(node.threshold)
    if node.firing == "strict":
        return (v > theta).to(v.dtype)
    if node.firing == "non_strict":
        return (v >= theta).to(v.dtype)
    return torch.where(v >= theta, torch.floor(v / theta), torch.zeros_like(v))


def lif_step(node: ir.LIFNeuron, v: torch.Tensor, current: torch.Tensor,
             fired_on: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One timestep of a :class:`ir.LIFNeuron`: (spikes, new membrane). ``fired_on`` (a list), if
    given, receives the membrane the firing rule looked at (before the same-step reset)."""
    theta = float(node.threshold)
    beta, gain = _per_sample(node.beta), _per_sample(node.gain)
    r = lif_fire(node, v) if node.reset_timing == "next_step" and node.reset != "none" else None
    zero_first = node.reset == "zero" and r is not None
    if zero_first and not node.synaptic:
        v = v * (1 - (r > 0).to(v.dtype))
    v = beta * v + gain * current
    if zero_first and node.synaptic:  # snnTorch Synaptic._base_zero zeroes the whole update
        v = v * (1 - (r > 0).to(v.dtype))
    if node.reset == "subtract" and r is not None:
        v = v - r * theta
    s = lif_fire(node, v)
    if fired_on is not None:
        fired_on.append(v)
    if node.reset_timing == "same_step":
        if node.reset == "subtract":
            v = v - s * theta
        elif node.reset == "zero":
            v = torch.where(s > 0, torch.zeros_like(v), v)
    if node.v_min is not None:
        v = v.clamp(min=float(node.v_min))
    return s, v


def time_major_input(graph: ir.Graph, x) -> torch.Tensor:
    """The input as [B, T, *input_shape]: event data already has its T axis; a static input
    ([B, *input_shape]) is repeated for T steps."""
    node = graph.nodes[graph.input_names()[0]]
    x = as_tensor(x)
    T = ir.timesteps(graph) or 1
    per_sample = len(node.input_shape)
    if x.dim() == per_sample + 2:
        if x.shape[1] != T:
            raise NeurodeployError(f"input has {x.shape[1]} timesteps, the graph {T}", layer=node.source,
                                   fix=f"give x as [N, {T}, ...] or a static [N, ...] (repeated {T} times)")
        return x
    if x.dim() == per_sample + 1:
        return x.unsqueeze(1).expand((x.shape[0], T) + tuple(x.shape[1:]))
    raise NeurodeployError(f"input of shape {tuple(x.shape)} fits neither [N, T, *{tuple(node.input_shape)}] "
                           f"nor [N, *{tuple(node.input_shape)}]", layer=node.source,
                           fix="give event data as [N, T, ...] or a static input as [N, ...]")


def evaluate_timestepped(graph: ir.Graph, x, quantized: bool = False,
                         membranes: dict | None = None) -> dict[str, torch.Tensor]:
    """Evaluate a time-stepped graph for T steps; every node's value is ``[B, T, *shape]``.

    Within a step the layers run in topological order with no synaptic delay (the frameworks'
    forward: ``fc1 -> lif1 -> fc2 -> lif2`` in one step). LIF neurons give their spike trains; an
    SFA IF neuron in the same graph applies its closed-form count to each step's input.
    ``membranes`` (a dict), if given, receives each LIF layer's membranes ``[B, T, *shape]`` as the
    firing rule saw them (before the same-step reset)."""
    if quantized:
        raise NeurodeployError("time-stepped (LIF) graphs run in float64 only; integer LIF is not built yet",
                               fix="simulate the unquantised graph (ops.evaluate_timestepped / simulate)")
    xs = time_major_input(graph, x)
    order = graph.topo_order()
    state: dict[str, torch.Tensor] = {}
    steps: dict[str, list] = {n: [] for n in order}
    for t in range(xs.shape[1]):
        values: dict[str, torch.Tensor] = {}
        for name in order:
            node = graph.nodes[name]
            srcs = graph.inputs_of(name)
            ins = [neuron_output(graph.nodes[i], values[i], False) if isinstance(graph.nodes[i], ir.IFNeuron)
                   else values[i] for i in srcs]
            if isinstance(node, ir.Input):
                values[name] = xs[:, t]
            elif isinstance(node, ir.LIFNeuron):
                v = state.get(name)
                if v is None:
                    v = torch.full_like(ins[0], float(node.v_init))
                current = ins[0]
                if node.synaptic:  # the synaptic current decays and integrates the input first
                    syn = state.get(name + "/syn", torch.zeros_like(current))
                    current = state[name + "/syn"] = _per_sample(node.alpha) * syn + current
                values[name], state[name] = lif_step(node, v, current, membranes.setdefault(name, [])
                                                     if membranes is not None else None)
            elif isinstance(node, ir.IFNeuron):
                values[name] = spike_count(node, ins[0], False)
            else:
                values[name] = linear_op(node, ins, False)
            steps[name].append(values[name])
    if membranes is not None:
        for k in list(membranes):
            membranes[k] = torch.stack(membranes[k], 1)
    return {n: torch.stack(v, 1) for n, v in steps.items()}
