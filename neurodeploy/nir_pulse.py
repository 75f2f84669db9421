"""NIR 'pulse' encoding of an SFA graph: a file that ``sinabs.from_nir`` runs to our spike counts.

Our SFA IF neuron integrates a layer's whole input once, then fires at most D spikes:
``n = clip(floor((W·s + b + v_init)/θ), 0, D)``. A standard reader feeds the input and re-adds
every bias at each step and has no budget (its counts grow with T, see the README). This
encoding states the SFA computation in what such a reader runs (sinabs' reading of ``nir.IF``:
MultiSpike ``floor(v/θ)`` for v > 0, subtractive reset, no synaptic delay), for any T >= 1:

* the input is a **pulse**: the real input at step 0 and zeros after, with one extra **pulse
  channel** (ones at step 0) appended: ``[N, C+1, H, W]`` or ``[N, F+1]``;
* every weight layer has no bias; the bias plus ``v_init`` is the weight from the pulse channel,
  which each layer relays with one extra neuron ``P`` (threshold θ, input 1.5·θ: exactly one spike at
  step 0); behind a SumPool the pulse arrives k·k-fold and its weights are divided by that;
* each SFA layer becomes two populations with threshold θ: ``A`` fed by ``x = W·n + b + v_init``
  fires ``max(0, floor(x/θ))``, ``B`` fed by ``x − D·θ`` fires ``max(0, floor(x/θ) − D)``, so
  ``A − B = clip(floor(x/θ), 0, D) = n``: the next layer weighs ``A`` with ``W`` and ``B`` with ``−W``;
* a final readout (``nir.Affine`` with zero bias / 1×1 ``nir.Conv2d``) gives ``(A − B)/norm`` of the last layer,
  so the reader's output summed over the steps is our output (all of it arrives at step 0).

After step 0 no input arrives and every membrane is below θ: later steps add nothing. Not
reproduced: exact ties of half-even layers (our reader fires one spike fewer there) and float32
rounding of the reader (``W·A − W·B`` vs our ``W·n``; measured on the demo, see the README).
Supported: chains of Conv2d (groups 1) / Linear → IFNeuron, SumPool2d (no padding) after a neuron,
Flatten; everything else is refused by name.
"""

from __future__ import annotations

import os

import numpy as np

from . import ir
from .errors import NeurodeployError, UnsupportedOpError

# P's input in units of θ: one spike (floor(1.5) = 1), 0.5·θ left, far from both boundaries, so a
# reader's float32 θ vs float64 weights cannot make it 0 or 2 spikes
PULSE_DRIVE = 1.5


def _refuse(name: str, node, why: str):
    raise UnsupportedOpError(f"the pulse NIR encoding {why}", layer=node.source or name,
                             fix="export the standard NIR file (read by neurodeploy) instead")


def _pulse_tap(n_in: int, n_out: int, k: int, s: int, p: int, d: int, name, node) -> int:
    """A kernel tap that reads a real (not padded) input position for every output position."""
    for t in range(k):
        pos = np.arange(n_out) * s - p + t * d
        if pos.min() >= 0 and pos.max() < n_in:
            return t
    _refuse(name, node, "needs a kernel tap inside the input for every output position")


class _State:
    """The current tensor as blocks: channels (or flat entries) of A, B (after a neuron) and P."""

    def __init__(self, shape: tuple):
        self.shape = tuple(shape)  # per-sample shape of the real values (A)
        self.has_b = False
        self.pulse = 1.0           # value the P channel holds at every position
        self.flat = len(shape) == 1

    def channels(self) -> int:
        return self.shape[0] * (2 if self.has_b else 1) + 1


def _in_weight(w: np.ndarray, st: _State) -> np.ndarray:
    """The real weight applied to [A, (B), ...]: W on A, −W on B (along the input axis 1)."""
    return np.concatenate([w, -w], axis=1) if st.has_b else w


def _dense(name, node, st: _State, neuron: ir.IFNeuron) -> np.ndarray:
    w = np.asarray(node.weight, dtype=np.float64)
    b = np.zeros(w.shape[0]) if node.bias is None else np.asarray(node.bias, dtype=np.float64)
    theta = float(neuron.threshold)
    spatial = 1 if not st.flat or st.p_entries is None else st.p_entries
    pw = np.zeros((w.shape[0], spatial))
    a = np.concatenate([_in_weight(w, st), pw + 0], axis=1)
    a[:, a.shape[1] - spatial] = (b + float(neuron.v_init)) / st.pulse
    bb = a.copy()
    bb[:, a.shape[1] - spatial] = (b + float(neuron.v_init) - neuron.max_spikes * theta) / st.pulse
    p = np.zeros((1, a.shape[1]))
    p[0, a.shape[1] - spatial] = PULSE_DRIVE * theta / st.pulse
    return np.concatenate([a, bb, p], axis=0)


def _conv(name, node, st: _State, neuron: ir.IFNeuron, out_hw: tuple) -> np.ndarray:
    if node.groups != 1:
        _refuse(name, node, "takes convolutions with groups = 1")
    w = np.asarray(node.weight, dtype=np.float64)
    O, _, kh, kw = w.shape
    b = np.zeros(O) if node.bias is None else np.asarray(node.bias, dtype=np.float64)
    theta = float(neuron.threshold)
    th = _pulse_tap(st.shape[1], out_hw[0], kh, node.stride[0], node.padding[0], node.dilation[0], name, node)
    tw = _pulse_tap(st.shape[2], out_hw[1], kw, node.stride[1], node.padding[1], node.dilation[1], name, node)
    real = _in_weight(w, st)
    cin = real.shape[1] + 1
    out = np.zeros((2 * O + 1, cin, kh, kw))
    out[:O, :-1] = real
    out[O:2 * O, :-1] = real
    out[:O, -1, th, tw] = (b + float(neuron.v_init)) / st.pulse
    out[O:2 * O, -1, th, tw] = (b + float(neuron.v_init) - neuron.max_spikes * theta) / st.pulse
    out[2 * O, -1, th, tw] = PULSE_DRIVE * theta / st.pulse
    return out


def to_nir_pulse(graph: ir.Graph):
    """The pulse-encoded ``nir.NIRGraph`` of a float canonical SFA chain (module docstring)."""
    import nir

    if graph.is_quantized:
        raise NeurodeployError("the pulse NIR encoding takes the float graph", fix="pass the canonical graph")
    g = ir.infer_shapes(graph.copy())
    order = g.topo_order()
    inputs = g.input_names()
    if len(inputs) != 1 or any(len(g.inputs_of(n)) > 1 for n in order):
        raise NeurodeployError("the pulse NIR encoding takes a chain (one input, no fan-in)",
                               fix="export the standard NIR file instead")
    in_shape = tuple(g.nodes[inputs[0]].input_shape)
    st = _State(in_shape)
    st.p_entries = None
    nodes = {"input": nir.Input(input_type={"input": np.array((in_shape[0] + 1,) + in_shape[1:], dtype=np.int64)})}
    edges, prev, pending, last_norm = [], "input", None, 1.0
    for name in order:
        node = g.nodes[name]
        if isinstance(node, (ir.Input, ir.Output)):
            continue
        if isinstance(node, (ir.Conv2d, ir.Linear)):
            pending = (name, node)
            continue
        if isinstance(node, ir.IFNeuron):
            if pending is None:
                _refuse(name, node, "needs a weight layer before every neuron")
            lname, lin = pending
            if node.reset != "subtract":
                _refuse(name, node, f"takes subtractive-reset neurons, not {node.reset!r}")
            out_shape = tuple(node.shape)
            if isinstance(lin, ir.Conv2d):
                if st.flat:
                    _refuse(lname, lin, "needs a convolution's input to be an image")
                w = _conv(lname, lin, st, node, out_shape[1:])
                nn = nir.Conv2d(input_shape=tuple(int(v) for v in st.shape[1:]), weight=w,
                                stride=np.array(lin.stride, dtype=np.int64), padding=np.array(lin.padding, dtype=np.int64),
                                dilation=np.array(lin.dilation, dtype=np.int64), groups=1, bias=np.zeros(w.shape[0]))
                new_shape = (2 * out_shape[0] + 1,) + out_shape[1:]
            else:
                if not st.flat:
                    _refuse(lname, lin, "needs a Flatten before a Linear layer")
                w = _dense(lname, lin, st, node)
                nn = nir.Affine(weight=w, bias=np.zeros(w.shape[0]))  # sinabs.from_nir maps Affine, not Linear
                new_shape = (w.shape[0],)
            nodes[lname] = nn
            edges.append((prev, lname))
            nodes[name] = nir.IF(r=np.ones(new_shape), v_threshold=np.full(new_shape, float(node.threshold)),
                                 v_reset=np.zeros(new_shape))
            edges.append((lname, name))
            prev, pending, last_norm = name, None, float(node.norm)
            st.shape, st.has_b, st.pulse, st.flat, st.p_entries = out_shape, True, 1.0, len(out_shape) == 1, \
                (1 if len(out_shape) == 1 else None)
            continue
        if pending is not None:
            _refuse(name, node, "needs every weight layer followed directly by a neuron")
        if isinstance(node, ir.SumPool2d) and not isinstance(node, ir.AvgPool2d):
            if any(node.padding) or st.flat:
                _refuse(name, node, "takes sum-pooling without padding, on images")
            nodes[name] = nir.SumPool2d(kernel_size=np.array(node.kernel, dtype=np.int64),
                                        stride=np.array(node.stride, dtype=np.int64), padding=np.zeros(2, dtype=np.int64))
            st.pulse *= float(node.kernel[0] * node.kernel[1])
            st.shape = tuple(node.shape)
        elif isinstance(node, ir.Flatten) and not st.flat:
            full = (st.channels(),) + st.shape[1:]
            nodes[name] = nir.Flatten(input_type={"input": np.array(full, dtype=np.int64)}, start_dim=0, end_dim=-1)
            hw = int(np.prod(st.shape[1:]))
            st.p_entries, st.flat = hw, True
            st.shape = (st.shape[0] * hw,)
        else:
            _refuse(name, node, f"does not take {node.kind} nodes")
        edges.append((prev, name))
        prev = name
    if not st.has_b:
        raise NeurodeployError("the graph has no neuron to encode", fix="export the standard NIR file instead")
    C = st.shape[0]
    if st.flat:
        extra = st.p_entries or 1
        w = np.concatenate([np.eye(C), -np.eye(C), np.zeros((C, extra))], axis=1) / last_norm
        nodes["pulse_readout"] = nir.Affine(weight=w, bias=np.zeros(C))
        out = (C,)
    else:
        w = np.concatenate([np.eye(C), -np.eye(C), np.zeros((C, 1))], axis=1)[:, :, None, None] / last_norm
        nodes["pulse_readout"] = nir.Conv2d(input_shape=tuple(int(v) for v in st.shape[1:]), weight=w,
                                            stride=np.ones(2, dtype=np.int64), padding=np.zeros(2, dtype=np.int64),
                                            dilation=np.ones(2, dtype=np.int64), groups=1, bias=np.zeros(C))
        out = st.shape
    edges += [(prev, "pulse_readout"), ("pulse_readout", "output")]
    nodes["output"] = nir.Output(output_type={"output": np.array(out, dtype=np.int64)})
    meta = {"neurodeploy_encoding": "sfa-pulse", "input": "x at step 0 with a pulse channel of ones appended "
            "(channel/feature axis), zeros after", "output": "(A - B)/norm of the last layer, summed over steps"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)


def pulse_input(x: np.ndarray, timesteps: int) -> np.ndarray:
    """[N, T, C+1, ...]: ``x`` [N, C, ...] with a pulse channel of ones at step 0, zeros after."""
    x = np.asarray(x, dtype=np.float64)
    ones = np.ones((x.shape[0], 1) + x.shape[2:])
    out = np.zeros((x.shape[0], int(timesteps), x.shape[1] + 1) + x.shape[2:])
    out[:, 0] = np.concatenate([x, ones], axis=1)
    return out


def write_nir_pulse(graph: ir.Graph, path: str | os.PathLike):
    import nir

    from .artifacts import atomic_path

    with atomic_path(path) as tmp:
        nir.write(str(tmp), to_nir_pulse(graph))
    return path
