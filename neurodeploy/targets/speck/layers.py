"""From a canonical IR graph to Speck "layers" (one per core): weight node + IF neuron + destinations.

A Speck core computes ``conv -> IAF -> (sum-pool per destination)``. In a canonical graph a core is
a weight node (Conv2d or Linear) whose single consumer is an IFNeuron; the neuron's spikes travel
through pass-through nodes (SumPool2d, Flatten, Add = event merge) to the weight nodes of other
cores (destinations) or to an Output (monitored: read out by the host, not a destination).

A Linear layer is placed as a convolution whose kernel covers its whole input, as sinabs does
(``convert_linear_to_conv``): input ``(C, H, W)`` (the shape before a Flatten) or ``(N, 1, 1)``
for a vector input, weight reshaped to ``[out, C, H, W]`` (PyTorch flatten order).

Structural problems found while walking the graph are returned as violations (never raised
here) so that the DRC can report all of them at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ... import ir

INPUT = "__input__"  # source id of the host / DVS input


@dataclass
class Violation:
    """One design-rule violation: layer, rule, Speck's limit, the actual value and a fix."""

    layer: str
    rule: str
    limit: str
    actual: str
    fix: str

    def __str__(self) -> str:
        return (f"layer '{self.layer}': {self.rule}: is {self.actual}, Speck allows {self.limit}"
                f" -- fix: {self.fix}")


@dataclass
class Destination:
    layer: str  # name of the destination SpeckLayer (its weight node)
    pool: int = 1  # square sum-pooling applied to events on the way (1, 2 or 4)
    pool_chain: tuple = ()  # (kernel, stride, padding) of each SumPool2d on the path


@dataclass
class SpeckLayer:
    name: str  # the weight node's name (the layer's id everywhere in the Speck backend)
    weight_node: str
    neuron: str | None  # IFNeuron node name
    kind: str  # 'conv' | 'linear'
    in_shape: tuple  # (C, H, W) as the core sees it
    out_shape: tuple  # (F, Ho, Wo) of the neurons (before any pooling)
    kernel: tuple  # (kH, kW)
    stride: tuple
    padding: tuple
    dilation: tuple = (1, 1)
    groups: int = 1
    destinations: list = field(default_factory=list)  # [Destination]
    exits: list = field(default_factory=list)  # [(output node name, pool)]
    sources: list = field(default_factory=list)  # [source layer name or INPUT]
    has_bias: bool = True  # the weight node has a bias (sinabs counts bias memory only then)

    @property
    def channels_in(self) -> int:
        return int(self.in_shape[0])

    @property
    def features(self) -> int:
        return int(self.out_shape[0])


def weight4(node, layer: SpeckLayer, quantized: bool = False) -> np.ndarray:
    """Weights as a dense ``[F, C, kH, kW]`` kernel (Linear reshaped, groups expanded)."""
    w = np.asarray(node.weight_q if quantized else node.weight)
    if isinstance(node, ir.Linear):
        return w.reshape((w.shape[0],) + tuple(layer.in_shape))
    if layer.groups > 1:  # grouped conv -> dense kernel with zeros outside each group
        f, cg, kh, kw = w.shape
        dense = np.zeros((f, cg * layer.groups, kh, kw), dtype=w.dtype)
        fg = f // layer.groups
        for g in range(layer.groups):
            dense[g * fg:(g + 1) * fg, g * cg:(g + 1) * cg] = w[g * fg:(g + 1) * fg]
        return dense
    return w


def bias_vec(node, quantized: bool = False) -> np.ndarray:
    b = node.bias_q if quantized else node.bias
    f = np.asarray(node.weight).shape[0]
    return np.zeros(f) if b is None else np.asarray(b)


def _as_chw(shape) -> tuple:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return shape
    if len(shape) == 1:
        return (shape[0], 1, 1)
    if len(shape) == 2:
        return (shape[0], shape[1], 1)
    return shape


@dataclass
class SpeckNet:
    layers: dict  # name -> SpeckLayer, in topological order
    input_name: str | None
    input_shape: tuple | None  # (C, H, W)
    input_destinations: list  # [Destination]
    violations: list  # [Violation] found while extracting
    warnings: list  # [str]


PASS_THROUGH = (ir.SumPool2d, ir.Flatten, ir.Add)


def extract(graph: ir.Graph) -> SpeckNet:
    """Group the canonical graph into Speck layers; structural violations are collected."""
    if any(n.shape is None for n in graph.nodes.values()):
        ir.infer_shapes(graph)
    V: list[Violation] = []
    W: list[str] = []
    nodes = graph.nodes
    order = graph.topo_order()

    inputs = graph.input_names()
    if len(inputs) != 1:
        V.append(Violation("<graph>", "number of inputs", "exactly 1 input (one event stream)",
                           str(len(inputs)), "deploy a single-input network"))
    input_name = inputs[0] if inputs else None

    # -- nodes Speck cannot run at all --------------------------------------------------------
    supported = (ir.Input, ir.Output, ir.Conv2d, ir.Linear, ir.SumPool2d, ir.Flatten, ir.Add, ir.IFNeuron)
    for name in order:
        node = nodes[name]
        if isinstance(node, ir.AvgPool2d):
            V.append(Violation(name, "pooling type", "sum-pooling only (no average/max pool)", "AvgPool2d",
                               "run passes.canonicalize: avg-pool folds into SumPool2d + next weights ×1/k²"))
        elif isinstance(node, ir.HostOp):
            if "max" in node.op.lower() and "pool" in node.op.lower():
                V.append(Violation(name, "pooling type", "sum-pooling 1/2/4 only: Speck has no max-pool",
                                   node.op, "replace max-pool by average pooling in the model and retrain "
                                   "(avg-pool folds into sum-pool + weights)"))
            else:
                V.append(Violation(name, "operation", "weight×spike synapses only", f"host op '{node.op}'",
                                   f"run it on the host ({node.reason}); deploy the part before it"))
        elif isinstance(node, ir.Reshape):
            V.append(Violation(name, "reshape", "no reshapes: events keep their (c, y, x) address (a Flatten "
                               "is allowed only before a Linear)", f"Reshape to {tuple(node.target_shape)}",
                               "write flatten -> Conv1d(k=1) -> reshape blocks as 1x1 Conv2d on the (C, H, W) map"))
        elif not isinstance(node, supported + (ir.Conv1d,)):  # Conv1d: reported as a layer type below
            V.append(Violation(name, "node type", "Conv2d/Linear + IF neuron, SumPool2d, Flatten, Add",
                               node.kind, "run passes.canonicalize first (folds BN/Scale/AvgPool)"))

    # -- weight layers ------------------------------------------------------------------------
    layers: dict[str, SpeckLayer] = {}
    neuron_to_layer: dict[str, str] = {}
    for name in order:
        node = nodes[name]
        if not isinstance(node, (ir.Conv2d, ir.Linear, ir.Conv1d)):
            continue
        if isinstance(node, ir.Conv1d):
            V.append(Violation(name, "layer type", "Conv2d or Linear", "Conv1d",
                               "a kernel-1 Conv1d over a flattened map is a 1x1 Conv2d on the (C, H, W) map: write it so "
                               "(Speck kernels are square, k×k)"))
            continue
        cons = graph.consumers_of(name)
        neuron = None
        if len(cons) == 1 and isinstance(nodes[cons[0]], ir.IFNeuron):
            neuron = cons[0]
        elif cons and all(isinstance(nodes[c], ir.Output) for c in cons):
            V.append(Violation(name, "weight layer must be followed by a spiking layer",
                               "weight -> IF neuron", "a real-valued output (no neuron: e.g. a classifier head)",
                               "run this layer on the host: deploy up to its input (--until) and apply it to "
                               "the output spike counts"))
        elif not any(isinstance(nodes[c], ir.Add) for c in cons):  # Adds are reported on the Add node
            kinds = ", ".join(f"{c} ({nodes[c].user_kind})" for c in cons) or "nothing"
            fix = ("pool after the neuron (Speck sum-pools spikes per destination), e.g. move the global "
                   "average pool after the activation" if any(isinstance(nodes[c], ir.SumPool2d) for c in cons)
                   else "add an IF neuron after this layer")
            V.append(Violation(name, "weight layer must be followed by a spiking layer",
                               "weight -> IF neuron (its only consumer)", f"followed by {kinds}", fix))
        ins = graph.inputs_of(name)
        src_shape = nodes[ins[0]].shape if ins else None
        if isinstance(node, ir.Linear):
            # kernel = the whole input: the shape before a Flatten, or (N, 1, 1)
            pre = ins[0] if ins else None
            if pre is not None and isinstance(nodes[pre], ir.Flatten):
                fin = graph.inputs_of(pre)
                src_shape = nodes[fin[0]].shape if fin else src_shape
            elif src_shape is not None and len(tuple(src_shape)) != 1:
                V.append(Violation(name, "linear layer input", "a vector or a Flatten of (C, H, W)",
                                   f"shape {tuple(src_shape)} (Linear acts on the last dim only)",
                                   "flatten before the Linear, or use a 1x1 Conv2d"))
            in_shape = _as_chw(src_shape)
            kernel = (in_shape[1], in_shape[2])
            layer = SpeckLayer(name, name, neuron, "linear", in_shape, (node.weight.shape[0], 1, 1), kernel,
                               (1, 1), (0, 0))
        else:
            in_shape = _as_chw(src_shape)
            layer = SpeckLayer(name, name, neuron, "conv", in_shape, tuple(node.shape),
                               tuple(node.weight.shape[2:]), tuple(node.stride), tuple(node.padding),
                               tuple(node.dilation), int(node.groups))
            if node.groups > 1:
                W.append(f"layer '{name}': grouped conv (groups={node.groups}) is placed as a dense kernel "
                         f"with zeros outside the groups (kernel memory as for a dense conv)")
        layer.has_bias = node.bias is not None
        layers[name] = layer
        if neuron is not None:
            neuron_to_layer[neuron] = name

    # IF neurons that do not follow a weight layer
    for name in order:
        node = nodes[name]
        if isinstance(node, ir.IFNeuron):
            ins = graph.inputs_of(name)
            # a neuron fed by an Add / Conv1d / Reshape / shared weight output: reported on that node
            reported = ins and isinstance(nodes[ins[0]], (ir.Add, ir.Conv1d, ir.Reshape, ir.Conv2d, ir.Linear))
            if name not in neuron_to_layer and not reported:
                what = f"{ins[0]} ({nodes[ins[0]].user_kind})" if ins else "nothing"
                V.append(Violation(name, "spiking layer must follow a weight layer",
                                   "weight -> IF neuron", f"IF neuron fed by {what}",
                                   "merge spike tensors (Add) only before a weight layer, and pool only "
                                   "after a neuron"))
            if node.reset != "subtract":
                V.append(Violation(name, "reset mode", "subtractive reset (return_to_zero=False)",
                                   f"reset='{node.reset}'", "use subtractive (soft) reset, as SFA does"))

    # -- walk from each spike source to destinations -------------------------------------------
    def walk(start: str, owner: str):
        """Follow spikes from ``start`` through pass-through nodes. Returns (dests, exits)."""
        dests, exits = [], []
        stack = [(c, ()) for c in graph.consumers_of(start)]
        while stack:
            cur, chain = stack.pop(0)
            node = nodes[cur]
            if isinstance(node, (ir.Conv2d, ir.Linear)):
                dests.append((cur, chain))
            elif isinstance(node, ir.Output):
                exits.append((cur, chain))
            elif isinstance(node, ir.SumPool2d) and not isinstance(node, ir.AvgPool2d):
                stack.extend((c, chain + ((node.kernel, node.stride, node.padding, cur),))
                             for c in graph.consumers_of(cur))
            elif isinstance(node, (ir.Flatten, ir.Add)):
                stack.extend((c, chain) for c in graph.consumers_of(cur))
            elif isinstance(node, ir.IFNeuron):
                V.append(Violation(cur, "spiking layer must follow a weight layer", "weight -> IF neuron",
                                   f"fed by the spikes of '{owner}'", "insert a weight layer in between"))
            # other kinds were reported above
        return dests, exits

    def pool_of(layer_name: str, chain) -> int:
        total = 1
        for (k, s, p, pname) in chain:
            if k[0] != k[1] or s != k or p != (0, 0):
                kind = nodes[pname].user_kind
                V.append(Violation(pname, "sum-pooling shape", "square, stride = kernel, no padding",
                                   f"{kind} kernel {k}, stride {s}, padding {p}",
                                   f"use {kind}(k) with k in 1, 2, 4 (stride = kernel)"))
                return 1
            total *= k[0]
        if total not in (1, 2, 4):
            V.append(Violation(layer_name, "sum-pooling size", "1, 2 or 4 (per destination)",
                               str(total), "pool by at most 4 per layer; move the rest of the pooling into "
                               "a stride of the next conv"))
        return total

    sources = {}
    if input_name is not None:
        sources[INPUT] = input_name
    for lname, layer in layers.items():
        if layer.neuron is not None:
            sources[lname] = layer.neuron
    input_dests: list[Destination] = []
    for sid, start in sources.items():
        dests, exits = walk(start, sid)
        seen = set()
        out = []
        for dname, chain in dests:
            if dname in seen:
                V.append(Violation(sid, "destinations", "one path per destination layer",
                                   f"two paths to '{dname}'", "merge the paths before the destination"))
                continue
            seen.add(dname)
            out.append(Destination(dname, pool_of(sid, chain), tuple(chain)))
            layers[dname].sources.append(sid)
        if sid == INPUT:
            input_dests = out
            if exits:
                W.append("the input is connected directly to an Output (passed through by the host)")
        else:
            layers[sid].destinations = out
            layers[sid].exits = [(o, pool_of(sid, chain)) for o, chain in exits]
            if not out and not exits:
                W.append(f"layer '{sid}': its spikes reach no destination and no Output")

    # Add nodes must merge spike tensors only (inputs come from neurons/pools/flatten/input)
    for name in order:
        node = nodes[name]
        if isinstance(node, ir.Add):
            for src in graph.inputs_of(name):
                s = src
                while isinstance(nodes[s], (ir.SumPool2d, ir.Flatten)) and graph.inputs_of(s):
                    s = graph.inputs_of(s)[0]
                if not isinstance(nodes[s], (ir.IFNeuron, ir.Input, ir.Add)):
                    V.append(Violation(name, "sum of tensors", "merge of spike tensors (events) only",
                                       f"'{s}' ({nodes[s].user_kind}), a pre-activation current",
                                       "Speck cores cannot add pre-activation currents: give each branch its "
                                       "own IF neuron and merge the spikes, or fold the branches into one conv"))
        if isinstance(node, ir.Flatten):
            for c in graph.consumers_of(name):
                if isinstance(nodes[c], ir.Conv2d):
                    V.append(Violation(name, "flatten", "flatten only before a Linear layer or an Output",
                                       f"feeds Conv2d '{c}'", "remove the Flatten / reshape in the model"))

    in_shape = _as_chw(nodes[input_name].shape) if input_name is not None else None
    return SpeckNet(layers, input_name, in_shape, input_dests, V, W)
