"""The neurodeploy intermediate representation.

Plain dataclasses, one per node type, NIR-like, plus deployment annotations. A :class:`Graph`
holds named nodes and directed edges; a node with several incoming edges is an :class:`Add` (fan-in
is always explicit here, unlike NIR where fan-in edges are summed implicitly).

Conventions
-----------
* Shapes are **per sample** (no batch dimension): ``(C, H, W)`` for images, ``(C, L)`` for
  Conv1d, ``(N,)`` for vectors. ``node.shape`` is the node's *output* shape, filled in by
  :func:`infer_shapes`.
* Float parameters are ``numpy.float64`` arrays. Convolution weights are ``[out, in/groups, kH, kW]``
  (PyTorch layout), Linear weights ``[out, in]``.
* Every node has ``source``: the module path (or ATen node) in the user's model it came from,
  used in error messages and by ``verify`` to find the model's own activation.
* Quantisation annotations (filled in by ``neurodeploy.passes.quantize`` for a target) live in the
  ``*_q`` fields: integers (stored as int64 arrays / Python ints). A graph is *quantised* when
  ``graph.metadata['quantization']`` is set; simulators then use only the ``*_q`` fields.

Semantics of :class:`IFNeuron` (integrate-and-fire, subtractive reset, spike budget D)
--------------------------------------------------------------------------------------
Given its whole input current ``x`` (layer-synchronous schedule), the neuron starts at
``v = v_init + x`` and, over ``max_spikes`` (= D) timesteps, fires whenever ``v >= threshold``,
subtracting ``threshold`` at each spike. Its spike count is therefore::

    n = clip(floor((x + v_init) / threshold), 0, D)

which, with ``v_init = threshold / 2``, is SFA's round-half-up ``clip(floor(x/θ + 0.5), 0, D)``
(Proposition 1 of Yao et al.). For ``rounding == 'half_even'`` (``torch.round``) an exact tie
(``x + v_init`` an exact odd multiple of θ) fires one spike fewer, so half-even models stay exact.
The value the neuron passes on is ``n / norm``; ``passes.fold_norms`` moves ``1/norm`` into the
next weights so that spike *counts* flow between layers.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .errors import NeurodeployError
from .limits import MAX_SPIKE_BUDGET

ROUNDING_RULES = ("half_up", "half_even", "floor")


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


@dataclass(eq=False)
class Node:
    """Base class. ``shape`` is the per-sample output shape (set by :func:`infer_shapes`)."""

    source: str = field(default="", kw_only=True)
    shape: tuple | None = field(default=None, kw_only=True)
    meta: dict = field(default_factory=dict, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    @property
    def user_kind(self) -> str:
        """The kind the user wrote, for messages: a pass that rewrites a node (AvgPool2d -> SumPool2d
        + Scale) records it in ``meta['user_kind']``."""
        return self.meta.get("user_kind", self.kind)


@dataclass(eq=False)
class Input(Node):
    """Real-valued network input. ``input_shape`` per sample.

    ``scale_q``: fixed-point scale of the input in a quantised graph (x_int = round(x * scale_q));
    the first weight layer multiplies these real values (MAC work, not synaptic ACs).
    ``is_spikes``: True if the input is already spike counts (event data), so layer 1 costs ACs.
    """

    input_shape: tuple = ()
    is_spikes: bool = False
    scale_q: int | None = None


@dataclass(eq=False)
class Output(Node):
    """Network output (the value of its single input)."""


@dataclass(eq=False)
class Conv2d(Node):
    weight: np.ndarray = None  # [out, in/groups, kH, kW]
    bias: np.ndarray | None = None
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    weight_q: np.ndarray | None = None
    bias_q: np.ndarray | None = None

    def __post_init__(self):
        self.stride, self.padding, self.dilation = map(_pair, (self.stride, self.padding, self.dilation))


@dataclass(eq=False)
class Conv1d(Node):
    weight: np.ndarray = None  # [out, in/groups, k]
    bias: np.ndarray | None = None
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    weight_q: np.ndarray | None = None
    bias_q: np.ndarray | None = None


@dataclass(eq=False)
class Linear(Node):
    weight: np.ndarray = None  # [out, in]
    bias: np.ndarray | None = None
    weight_q: np.ndarray | None = None
    bias_q: np.ndarray | None = None


@dataclass(eq=False)
class BatchNorm(Node):
    """Inference-mode batch norm over dim 0 of the per-sample tensor. Removed by ``fold_batchnorm``."""

    mean: np.ndarray = None
    var: np.ndarray = None
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    eps: float = 1e-5


@dataclass(eq=False)
class SumPool2d(Node):
    kernel: tuple = (2, 2)
    stride: tuple | None = None  # None: equal to kernel
    padding: tuple = (0, 0)

    def __post_init__(self):
        self.kernel = _pair(self.kernel)
        self.stride = self.kernel if self.stride is None else _pair(self.stride)
        self.padding = _pair(self.padding)


@dataclass(eq=False)
class AvgPool2d(SumPool2d):
    """Average pooling (zero padding counted, as ``count_include_pad=True``). ``fold_avgpool``
    turns it into SumPool2d + Scale(1/k²)."""


@dataclass(eq=False)
class Scale(Node):
    """Multiply by a positive scalar (or per-channel vector over dim 0)."""

    scale: Any = 1.0


@dataclass(eq=False)
class Flatten(Node):
    """Flatten per-sample dims ``start_dim..end`` (0 = flatten everything, as NIR intends)."""

    start_dim: int = 0


@dataclass(eq=False)
class Reshape(Node):
    """Reshape (or permute-free view) of the per-sample tensor to ``target_shape``."""

    target_shape: tuple = ()


@dataclass(eq=False)
class Add(Node):
    """Element-wise sum of all inputs (residual / membrane shortcut)."""


@dataclass(eq=False)
class IFNeuron(Node):
    """Integrate-and-fire with subtractive reset; see the module docstring for exact semantics.

    ``threshold_q`` / ``v_init_q``: integer threshold and initial membrane in a quantised graph
    (same units as the integer input current). ``state_bits``: membrane width of the target (None:
    unbounded). ``low_threshold_q``: saturation floor of the membrane (Speck), None for none.
    """

    threshold: float = 1.0
    max_spikes: int = 4
    rounding: str = "half_up"
    v_init: float = 0.5
    norm: float = 1.0
    reset: str = "subtract"
    threshold_q: int | None = None
    v_init_q: int | None = None
    low_threshold_q: int | None = None
    state_bits: int | None = None

    def __post_init__(self):
        if self.rounding not in ROUNDING_RULES:
            raise NeurodeployError(
                f"unknown rounding rule {self.rounding!r}", layer=self.source or None,
                fix=f"use one of {', '.join(ROUNDING_RULES)}",
            )
        if not 1 <= self.max_spikes <= MAX_SPIKE_BUDGET:
            raise NeurodeployError(f"spike budget D={self.max_spikes} is outside 1..{MAX_SPIKE_BUDGET}",
                                   layer=self.source or None,
                                   fix="D is the activation's clamp maximum (SFA uses 4..16); each layer "
                                       "takes D timesteps")


LIF_RESETS = ("subtract", "zero", "none")
LIF_FIRING = ("strict", "non_strict", "multi")
LIF_RESET_TIMING = ("same_step", "next_step")


@dataclass(eq=False)
class LIFNeuron(Node):
    """A time-stepped leaky (or, with ``beta = 1``, non-leaky) integrate-and-fire neuron, stepped
    once per timestep of the graph's time axis (``graph.metadata['timesteps']`` = T).

    Per timestep t, with ``I`` the neuron's input current at t (after its weight layer), ``v`` the
    stored membrane (``v_init`` before step 0), θ = ``threshold``::

        r = fire(v)            if reset_timing == 'next_step'  (snnTorch reset_delay=True) else 0
        v = beta·v + gain·I − r·θ              (reset 'subtract')
        v = beta·(1 − r)·v + gain·I            (reset 'zero')
        s = fire(v)            'strict': v > θ;  'non_strict': v >= θ;
                               'multi': floor(v/θ) spikes if v >= θ (sinabs MultiSpike), else 0
        if reset_timing == 'same_step':  v = v − s·θ ('subtract'),  v = 0 where s > 0 ('zero')
        v = max(v, v_min)      if v_min is not None (sinabs min_v_mem)

    and the neuron passes ``s`` on. ``beta`` and ``gain`` are scalars or arrays that broadcast
    against the per-sample shape (per channel: shape ``(C, 1, 1)`` / ``(C,)``). Where each
    framework's module lands (read from its source; the converters in
    :mod:`neurodeploy.converters.neurons` cite the lines):

    * snnTorch 1.0 ``Leaky`` (``snntorch/_neurons/leaky.py``: ``mem_reset`` before
      ``state_function``, ``_base_state_function = beta.clamp(0, 1) * mem + input_``, ``_base_sub``
      subtracts ``reset * threshold``, ``fire`` = ``spike_grad(mem - threshold)`` = H(>0)):
      beta = clamp(β, 0, 1), gain 1, 'strict', 'next_step' (``reset_delay=False``: 'same_step').
    * SpikingJelly ``IFNode`` / ``LIFNode`` (``neuronal_charge``: ``v = v + x`` /
      ``v = v + (x - (v - v_reset)) / tau`` with decay_input; ``neuronal_fire`` =
      ``heaviside(v - v_threshold)`` = H(>=0); ``v_reset=None`` subtracts): beta = 1 − 1/τ, gain
      1/τ (decay_input) or 1, 'non_strict', 'same_step', reset 'subtract' or 'zero' (v_reset = 0).
    * sinabs ``IAF`` / ``LIF`` (``layers/functional/lif.py`` ``lif_forward_single``:
      ``v_mem = alpha_mem * v_mem + (1 - alpha_mem) * i`` with norm_input, ``MultiSpike``:
      ``(v > 0) * trunc(v / θ)``, ``MembraneSubtract``, ``min_v_mem`` floor): beta = α =
      exp(−1/τ) (IAF: 1), gain 1 − α (norm_input) or 1, 'multi' (or 'non_strict' for
      SingleSpike), 'same_step'.

    **Synaptic current** (``alpha`` not None; current-based LIF): the input first feeds a current
    state ``i`` (0 before step 0) with its own decay α, and the membrane integrates ``i``::

        i = alpha·i + I                       (before the membrane update, every step)
        v = beta·v + gain·i − r·θ              (reset 'subtract'; fire / same-step reset as above)
        v = (1 − r)·(beta·v + gain·i)           (reset 'zero' with 'next_step': the whole update is zeroed)

    The current is never reset. Where it lands:

    * snnTorch 1.0 ``Synaptic`` (``snntorch/_neurons/synaptic.py``: ``forward`` computes
      ``self.reset = self.mem_reset(self.mem)`` then ``self.syn, self.mem = self.state_function(input_)``;
      ``_base_state_function``: ``syn = alpha.clamp(0, 1) * syn + input_``, ``mem = beta.clamp(0, 1)
      * mem + syn``; ``_base_sub``: ``mem - reset * threshold``; ``_base_zero``: ``mem -= mem2 *
      reset`` with ``mem2`` the updated membrane; ``fire`` H(mem − θ > 0)): alpha = clamp(α, 0, 1),
      beta = clamp(β, 0, 1), gain 1, 'strict', reset timing as ``Leaky``.
    * NIR ``CubaLIF`` (``nir/ir/neuron.py``: τ_syn·dI/dt = −I + w_in·S, τ_mem·dv/dt = (v_leak − v) +
      R·I, z = H(v > v_threshold)), Euler with dt = 1e-4 as snnTorch writes and reads it
      (``snntorch/export_nir.py``: ``tau_syn = dt/(1 - alpha)``, ``tau_mem = dt/(1 - beta)``,
      ``r = tau_mem/dt``, ``w_in = tau_syn/dt``; ``import_nir.py``: ``alpha = 1 - dt/tau_syn``,
      ``beta = 1 - dt/tau_mem``, input scale ``w_in·dt/tau_syn``): alpha = 1 − dt/τ_syn, beta =
      1 − dt/τ_mem, gain = (w_in·dt/τ_syn)·(R·dt/τ_mem) (the two input scales folded into one,
      the current scaled by 1/(w_in·dt/τ_syn)), v_leak = 0 only.
    """

    beta: Any = 1.0
    gain: Any = 1.0
    threshold: float = 1.0
    reset: str = "subtract"
    firing: str = "strict"
    reset_timing: str = "same_step"
    v_init: float = 0.0
    v_min: float | None = None
    alpha: Any = None  # decay of a synaptic current (current-based LIF); None: no current state

    def __post_init__(self):
        for value, allowed, what in ((self.reset, LIF_RESETS, "reset"), (self.firing, LIF_FIRING, "firing"),
                                     (self.reset_timing, LIF_RESET_TIMING, "reset_timing")):
            if value not in allowed:
                raise NeurodeployError(f"unknown {what} {value!r} of a time-stepped neuron",
                                       layer=self.source or None, fix=f"use one of {', '.join(allowed)}")
        if not np.isfinite(self.threshold) or self.threshold <= 0:
            raise NeurodeployError(f"threshold {self.threshold!r} of a time-stepped neuron is not positive",
                                   layer=self.source or None, fix="use a finite threshold > 0")
        if self.alpha is not None:
            a = np.asarray(self.alpha, dtype=np.float64)
            if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a > 1):
                raise NeurodeployError("synaptic decay alpha of a time-stepped neuron is not in [0, 1]",
                                       layer=self.source or None, fix="use 0 <= alpha <= 1 (None: no current)")

    @property
    def synaptic(self) -> bool:
        """Whether the neuron has a synaptic current state (current-based LIF)."""
        return self.alpha is not None

    @property
    def leaky(self) -> bool:
        return bool(np.any(np.asarray(self.beta, dtype=np.float64) != 1.0))


def timesteps(graph: "Graph") -> int | None:
    """The graph's time axis T (``metadata['timesteps']``), None for a graph without one (SFA)."""
    t = graph.metadata.get("timesteps")
    return int(t) if t is not None else None


def is_time_stepped(graph: "Graph") -> bool:
    return timesteps(graph) is not None or any(isinstance(n, LIFNeuron) for n in graph.nodes.values())


HOST_OPS = ("permute", "matmul", "mul")


@dataclass(eq=False)
class HostOp(Node):
    """An operation that cannot run on synaptic cores (e.g. spike × spike attention); it runs on
    the host, exactly, on the integers it receives (spike counts or products of them).

    ``op`` (per-sample tensors, batch dim not counted):

    * ``'permute'`` (1 input): ``x.permute(dims)`` (transposes in the model);
    * ``'matmul'`` (2 inputs a, b): ``a @ b`` over the last two dims (batch dims equal);
    * ``'mul'`` (2 inputs of equal shape): element-wise ``a * b``.

    Integer semantics in a quantised graph: the exact integer result times ``2**shift_q``
    (``shift_q >= 0`` moves the product into its scale domain; None or 0 for ``permute``). Scalar
    factors (the model's ``* scale``, the inputs' 1/norm) are not part of the op: the folding
    passes move them into the next neuron's threshold or the next weights.
    """

    op: str = ""
    reason: str = ""
    dims: tuple = ()
    shift_q: int | None = None

    @property
    def bilinear(self) -> bool:
        return self.op in ("matmul", "mul")


WEIGHT_NODES = (Conv2d, Conv1d, Linear)
NODE_TYPES = {cls.__name__: cls for cls in (Input, Output, Conv2d, Conv1d, Linear, BatchNorm, SumPool2d,
                                            AvgPool2d, Scale, Flatten, Reshape, Add, IFNeuron, HostOp,
                                            LIFNeuron)}


def topological_order(names: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """Kahn's algorithm, stable in the order of ``names``; a cycle is an error."""
    indeg = {n: 0 for n in names}
    consumers: dict[str, list[str]] = {n: [] for n in names}
    for a, b in edges:
        indeg[b] += 1
        consumers[a].append(b)
    order, ready = [], [n for n in names if indeg[n] == 0]
    while ready:
        n = ready.pop(0)
        order.append(n)
        for c in consumers[n]:
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    if len(order) != len(names):
        stuck = [n for n in names if indeg[n] > 0]
        raise NeurodeployError(f"graph has a cycle (recurrent connections) through {', '.join(stuck[:8])}"
                               + (" ..." if len(stuck) > 8 else ""), layer=stuck[0],
                               fix="neurodeploy supports feed-forward graphs only (recurrent neurons such as "
                                   "snnTorch RLeaky: use Leaky)")
    return order


@dataclass
class Graph:
    """Named nodes (insertion order is kept) and directed edges ``(src, dst)``.

    Edge order matters for nodes with several inputs only through :meth:`inputs_of` (stable).
    """

    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    # -- construction -------------------------------------------------------------------------
    def add(self, name: str, node: Node, inputs: tuple | list | str = ()) -> str:
        if name in self.nodes:
            raise NeurodeployError(f"duplicate node name {name!r}", layer=name)
        if isinstance(inputs, str):
            inputs = (inputs,)
        for src in inputs:
            if src not in self.nodes:
                raise NeurodeployError(f"input {src!r} of node {name!r} does not exist", layer=name)
        self.nodes[name] = node
        self.edges.extend((src, name) for src in inputs)
        return name

    def unique_name(self, base: str) -> str:
        base = base or "node"
        if base not in self.nodes:
            return base
        i = 1
        while f"{base}_{i}" in self.nodes:
            i += 1
        return f"{base}_{i}"

    def remove(self, name: str) -> None:
        """Remove a single-input node, connecting its input to all its consumers."""
        ins = self.inputs_of(name)
        if len(ins) != 1:
            raise NeurodeployError(f"cannot splice out node with {len(ins)} inputs", layer=name)
        src = ins[0]
        new_edges = []
        for a, b in self.edges:
            if b == name:
                continue
            new_edges.append((src, b) if a == name else (a, b))
        self.edges = new_edges
        del self.nodes[name]

    def insert_after(self, name: str, new_name: str, node: Node) -> str:
        """Insert ``node`` between ``name`` and all of its consumers."""
        self.edges = [(new_name, b) if a == name else (a, b) for a, b in self.edges]
        self.nodes[new_name] = node
        self.edges.append((name, new_name))
        return new_name

    def prune_to_outputs(self) -> None:
        """Drop every node (and edge) that no Output depends on."""
        keep, todo = set(), list(self.output_names())
        while todo:
            m = todo.pop()
            if m not in keep:
                keep.add(m)
                todo.extend(self.inputs_of(m))
        for n in list(self.nodes):
            if n not in keep:
                del self.nodes[n]
        self.edges = [(a, b) for a, b in self.edges if a in keep and b in keep]

    # -- queries ------------------------------------------------------------------------------
    def inputs_of(self, name: str) -> list[str]:
        return [a for a, b in self.edges if b == name]

    def consumers_of(self, name: str) -> list[str]:
        return [b for a, b in self.edges if a == name]

    def behind_views(self, name: str) -> str:
        """The node whose values ``name`` carries: ``name``, or the node before its chain of
        Flatten / Reshape views (e.g. the IF layer behind a flattened spike tensor)."""
        while isinstance(self.nodes[name], (Flatten, Reshape)) and self.inputs_of(name):
            name = self.inputs_of(name)[0]
        return name

    def input_names(self) -> list[str]:
        return [n for n, node in self.nodes.items() if isinstance(node, Input)]

    def output_names(self) -> list[str]:
        return [n for n, node in self.nodes.items() if isinstance(node, Output)]

    def of_type(self, *types) -> list[str]:
        return [n for n in self.topo_order() if isinstance(self.nodes[n], types)]

    def neurons(self) -> list[str]:
        return self.of_type(IFNeuron)

    def topo_order(self) -> list[str]:
        return topological_order(list(self.nodes), self.edges)

    def __iter__(self) -> Iterator[tuple[str, Node]]:
        for n in self.topo_order():
            yield n, self.nodes[n]

    def copy(self) -> "Graph":
        return copy.deepcopy(self)

    @property
    def is_quantized(self) -> bool:
        return bool(self.metadata.get("quantization"))

    def summary(self) -> str:
        lines = []
        for name, node in self:
            ins = ",".join(self.inputs_of(name))
            extra = ""
            if isinstance(node, IFNeuron):
                extra = f" θ={node.threshold:g} D={node.max_spikes} {node.rounding}"
            lines.append(f"{name:<28} {node.kind:<10} {str(node.shape):<18} <- {ins}{extra}")
        return "\n".join(lines)

    def validate(self) -> None:
        """Structural checks: edges name nodes, inputs/outputs exist, fan-in only on Add."""
        for a, b in self.edges:
            for n in (a, b):
                if n not in self.nodes:
                    raise NeurodeployError(f"edge names unknown node {n!r}")
        if not self.input_names():
            raise NeurodeployError("graph has no Input node")
        if not self.output_names():
            raise NeurodeployError("graph has no Output node")
        for name, node in self.nodes.items():
            n_in = len(self.inputs_of(name))
            if isinstance(node, Input):
                if n_in:
                    raise NeurodeployError("Input node has inputs", layer=name)
            elif isinstance(node, Add):
                if n_in < 2:
                    raise NeurodeployError(f"Add node has {n_in} input(s), needs >= 2", layer=name)
            elif isinstance(node, HostOp) and node.bilinear:
                if n_in != 2:
                    raise NeurodeployError(f"host {node.op} has {n_in} input(s), needs 2", layer=name)
            elif n_in != 1:
                raise NeurodeployError(f"{node.kind} node has {n_in} inputs, expected 1", layer=name)
        self.topo_order()


# -- shape inference ------------------------------------------------------------------------------

def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def output_shape(node: Node, in_shapes: list[tuple]) -> tuple:
    """Per-sample output shape of ``node`` given its input shapes."""
    if isinstance(node, Input):
        return tuple(node.input_shape)
    s = tuple(in_shapes[0]) if in_shapes else None
    if isinstance(node, Conv2d):
        c, h, w = s
        kh, kw = node.weight.shape[2:]
        if c != node.weight.shape[1] * node.groups:
            raise NeurodeployError(
                f"Conv2d expects {node.weight.shape[1] * node.groups} input channels, gets {c}",
                layer=node.source)
        return (node.weight.shape[0],
                _conv_out(h, kh, node.stride[0], node.padding[0], node.dilation[0]),
                _conv_out(w, kw, node.stride[1], node.padding[1], node.dilation[1]))
    if isinstance(node, Conv1d):
        c, length = s
        return (node.weight.shape[0], _conv_out(length, node.weight.shape[2], node.stride, node.padding, node.dilation))
    if isinstance(node, Linear):
        if s[-1] != node.weight.shape[1]:
            raise NeurodeployError(f"Linear expects {node.weight.shape[1]} inputs, gets {s[-1]}", layer=node.source)
        return s[:-1] + (node.weight.shape[0],)
    if isinstance(node, SumPool2d):  # includes AvgPool2d
        c, h, w = s
        return (c,
                _conv_out(h, node.kernel[0], node.stride[0], node.padding[0], 1),
                _conv_out(w, node.kernel[1], node.stride[1], node.padding[1], 1))
    if isinstance(node, Flatten):
        sd = node.start_dim
        return s[:sd] + (int(np.prod(s[sd:])),)
    if isinstance(node, Reshape):
        tgt = tuple(node.target_shape)
        if int(np.prod(tgt)) != int(np.prod(s)):
            raise NeurodeployError(f"cannot reshape {s} to {tgt}", layer=node.source)
        return tgt
    if isinstance(node, Add):
        for other in in_shapes[1:]:
            if tuple(other) != s:
                raise NeurodeployError(f"Add of mismatched shapes {in_shapes}", layer=node.source)
        return s
    if isinstance(node, HostOp):
        return _host_op_shape(node, [tuple(i) for i in in_shapes])
    # BatchNorm, Scale, IFNeuron, Output keep the shape
    return s


def _host_op_shape(node: HostOp, in_shapes: list[tuple]) -> tuple:
    s = in_shapes[0]
    if node.op == "permute":
        if sorted(node.dims) != list(range(len(s))):
            raise NeurodeployError(f"permute dims {tuple(node.dims)} do not fit shape {s}", layer=node.source)
        return tuple(s[d] for d in node.dims)
    if node.op == "matmul":
        a, b = in_shapes
        if len(a) < 2 or a[:-2] != b[:-2] or a[-1] != b[-2]:
            raise NeurodeployError(f"matmul of shapes {a} and {b}", layer=node.source)
        return a[:-1] + (b[-1],)
    if node.op == "mul":
        if any(t != s for t in in_shapes):
            raise NeurodeployError(f"element-wise product of shapes {in_shapes}", layer=node.source)
        return s
    return s  # an op without known semantics keeps its shape (refused when canonicalised)


def infer_shapes(graph: Graph) -> Graph:
    """Fill in ``node.shape`` for every node (in place; returns the graph)."""
    for name in graph.topo_order():
        node = graph.nodes[name]
        node.shape = output_shape(node, [graph.nodes[i].shape for i in graph.inputs_of(name)])
    return graph


def node_fields(node: Node) -> dict:
    """The dataclass fields of ``node`` as a dict (arrays kept as arrays)."""
    return {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
