"""Folding passes: each is ``Graph -> Graph`` and returns a modified *copy*.

* :func:`fold_batchnorm` — BatchNorm after a weight layer (its sole consumer) into weights/bias.
* :func:`fold_avgpool`   — AvgPool2d -> SumPool2d + Scale(1/k²).
* :func:`fold_scales`    — Scale nodes into the next weight layer(s), the preceding weight layer,
  or the following IF neuron (threshold/s, v_init/s).
* :func:`fold_norms`     — IF neuron output norms (value = count/norm) into downstream weights.
* :func:`canonicalize`   — all of the above + shape inference + validation.

Scales are handled as *element-wise* factor tensors of the per-sample shape, so a scalar, a
per-channel vector (dim 0) or any broadcastable factor moves through SumPool2d (needs it constant
over each pooling window, i.e. per channel), Flatten and Reshape exactly.
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import HostOpError, NeurodeployError, UnsupportedOpError
from .check import check_finite_parameters

PASS_THROUGH = (ir.SumPool2d, ir.Flatten, ir.Reshape)  # linear, commute with per-channel scales
CANONICAL_TYPES = (ir.Input, ir.Conv2d, ir.Conv1d, ir.Linear, ir.SumPool2d, ir.Flatten, ir.Reshape,
                   ir.Add, ir.IFNeuron, ir.Output)


def _name(graph: ir.Graph, name: str) -> str:
    return graph.nodes[name].source or name


def _shapes(graph: ir.Graph) -> ir.Graph:
    try:
        ir.infer_shapes(graph)
    except NeurodeployError:
        raise
    except Exception as e:  # pragma: no cover - defensive
        raise NeurodeployError(f"shape inference failed: {e}") from e
    return graph


# -- BatchNorm -------------------------------------------------------------------------------------

def fold_batchnorm(graph: ir.Graph) -> ir.Graph:
    """Fold every BatchNorm into the Conv2d/Conv1d/Linear it follows (the BN must be its sole consumer)."""
    g = graph.copy()
    for name in g.of_type(ir.BatchNorm):
        bn = g.nodes[name]
        ins = g.inputs_of(name)
        src = ins[0] if len(ins) == 1 else None
        w = g.nodes.get(src) if src else None
        if not isinstance(w, ir.WEIGHT_NODES):
            what = w.kind if w is not None else "nothing"
            raise UnsupportedOpError(
                f"BatchNorm follows {what} ({src!r}), not a Conv2d/Conv1d/Linear; it cannot be folded",
                layer=bn.source or name,
                fix="place BatchNorm directly after a convolution or linear layer (or fold it yourself)")
        if g.consumers_of(src) != [name]:
            raise UnsupportedOpError(
                f"weight layer {src!r} feeds BatchNorm {name!r} and other nodes; folding would change them",
                layer=bn.source or name, fix="give the BatchNorm its own weight layer")
        n_out = w.weight.shape[0]
        mean = np.asarray(bn.mean, dtype=np.float64).reshape(-1)
        if mean.size != n_out:
            raise UnsupportedOpError(f"BatchNorm has {mean.size} channels, preceding layer {n_out} outputs",
                                     layer=bn.source or name)
        if isinstance(w, ir.Linear) and w.shape is not None and len(w.shape) > 1:
            raise UnsupportedOpError("BatchNorm over dim 0 after a Linear applied to a multi-dim tensor "
                                     "normalises rows, not features", layer=bn.source or name,
                                     fix="use BatchNorm over the feature dimension")
        inv = 1.0 / np.sqrt(np.asarray(bn.var, dtype=np.float64).reshape(-1) + bn.eps)
        gamma = np.ones(n_out) if bn.weight is None else np.asarray(bn.weight, dtype=np.float64).reshape(-1)
        beta = np.zeros(n_out) if bn.bias is None else np.asarray(bn.bias, dtype=np.float64).reshape(-1)
        f = gamma * inv
        b = np.zeros(n_out) if w.bias is None else np.asarray(w.bias, dtype=np.float64)
        w.weight = np.asarray(w.weight, dtype=np.float64) * f.reshape((-1,) + (1,) * (w.weight.ndim - 1))
        w.bias = (b - mean) * f + beta
        w.meta.setdefault("folded", []).append(f"batchnorm:{name}")
        g.remove(name)
    return g


# -- AvgPool ---------------------------------------------------------------------------------------

def fold_avgpool(graph: ir.Graph) -> ir.Graph:
    """AvgPool2d -> SumPool2d followed by Scale(1/(kH·kW)) (zero padding counted, as in the IR)."""
    g = graph.copy()
    for name in g.of_type(ir.AvgPool2d):
        ap = g.nodes[name]
        sp = ir.SumPool2d(kernel=ap.kernel, stride=ap.stride, padding=ap.padding, source=ap.source,
                          shape=ap.shape, meta={**ap.meta, "user_kind": ap.meta.get("user_kind", "AvgPool2d")})
        g.nodes[name] = sp  # keeps insertion position and edges
        k = ap.kernel[0] * ap.kernel[1]
        g.insert_after(name, g.unique_name(f"{name}_scale"), ir.Scale(scale=1.0 / k, source=ap.source,
                                                                       shape=ap.shape))
    return g


# -- Scale machinery -------------------------------------------------------------------------------

def _factor(scale, shape: tuple) -> np.ndarray:
    """Element-wise factor tensor of ``shape`` for a Scale's ``scale`` (scalar or per-channel)."""
    s = np.asarray(scale, dtype=np.float64)
    if s.ndim == 0 or s.size == 1:
        return np.full(shape, float(s.reshape(-1)[0]))
    if s.ndim == 1:
        if s.size != shape[0]:
            raise NeurodeployError(f"per-channel scale of length {s.size} for a tensor of shape {shape}")
        return np.broadcast_to(s.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()
    return np.broadcast_to(s, shape).copy()


def _per_channel(f: np.ndarray) -> np.ndarray | None:
    """The per-channel (dim 0) vector if ``f`` is constant over all other dims, else None."""
    flat = f.reshape(f.shape[0], -1)
    if np.all(flat == flat[:, :1]):
        return flat[:, 0].copy()
    return None


def _scale_weight_inputs(node, f: np.ndarray) -> bool:
    """Multiply the weights of ``node`` so that it behaves as if its input were multiplied by ``f``
    (element-wise factor of the node's input shape). Returns False when impossible."""
    if isinstance(node, (ir.Conv2d, ir.Conv1d)):
        pc = _per_channel(f)
        if pc is None:
            return False
        w = np.asarray(node.weight, dtype=np.float64)
        cin_g = w.shape[1]
        out_per_g = w.shape[0] // node.groups
        fac = np.empty(w.shape[:2])
        for o in range(w.shape[0]):
            grp = o // out_per_g
            fac[o] = pc[grp * cin_g:(grp + 1) * cin_g]
        node.weight = w * fac.reshape(fac.shape + (1,) * (w.ndim - 2))
        return True
    if isinstance(node, ir.Linear):
        w = np.asarray(node.weight, dtype=np.float64)
        flat = f.reshape(-1, f.shape[-1])
        if not np.all(flat == flat[:1]):
            return False
        node.weight = w * flat[0][None, :]
        return True
    return False


def _push_forward(g: ir.Graph, start: str, f: np.ndarray, dry: bool) -> str | None:
    """Push the factor ``f`` (shape of ``start``'s output) from ``start`` into all downstream weight
    layers through SumPool/Flatten/Reshape. Returns None on success, else the reason it cannot.
    ``dry``: only check. Output consumers are reported as a reason ('output')."""
    for c in g.consumers_of(start):
        node = g.nodes[c]
        if isinstance(node, ir.WEIGHT_NODES):
            if dry:
                probe = node.__class__.__new__(node.__class__)
                probe.__dict__.update(node.__dict__)
                ok = _scale_weight_inputs(probe, f)
            else:
                ok = _scale_weight_inputs(node, f)
            if not ok:
                return f"{c} ({node.kind}) cannot absorb a factor varying inside a channel"
        elif isinstance(node, ir.SumPool2d) and not isinstance(node, ir.AvgPool2d):
            pc = _per_channel(f)
            if pc is None:
                return f"{c} ({node.user_kind}) needs a per-channel factor"
            why = _push_forward(g, c, _factor(pc, node.shape), dry)
            if why:
                return why
        elif isinstance(node, (ir.Flatten, ir.Reshape)):
            why = _push_forward(g, c, f.reshape(node.shape), dry)
            if why:
                return why
        elif isinstance(node, ir.HostOp) and node.op in ir.HOST_OPS:
            why = _push_through_host(g, c, node, f, dry)
            if why:
                return why
        elif isinstance(node, ir.Scale):  # merge into a later scaling (folded after this one)
            if not dry:
                node.scale = _factor(node.scale, node.shape) * f
        elif isinstance(node, ir.IFNeuron) and _uniform(f):
            # a neuron's single input scaled by s: the same spikes with threshold and v_init / s
            if not dry:
                _scale_neuron_input(node, float(f.reshape(-1)[0]), start)
        elif isinstance(node, ir.Output):
            return "output"
        else:
            return f"{c} ({node.kind})"
    return None


def _uniform(f: np.ndarray) -> bool:
    return f.size > 0 and bool(np.all(f == f.reshape(-1)[0]))


def _scale_neuron_input(nrn: ir.IFNeuron, s: float, what: str) -> None:
    nrn.threshold = nrn.threshold / s
    nrn.v_init = nrn.v_init / s
    nrn.meta.setdefault("folded", []).append(f"scale:{what}={s!r}")


def _push_through_host(g: ir.Graph, name: str, node: ir.HostOp, f: np.ndarray, dry: bool) -> str | None:
    """Host ops are linear in each input: a permute permutes the factor, a product passes a scalar
    factor of either input on to its output."""
    if node.op == "permute":
        return _push_forward(g, name, np.transpose(f, node.dims), dry)
    if not _uniform(f):
        return f"{name} (host {node.op}) needs a scalar factor"
    return _push_forward(g, name, np.full(node.shape, float(f.reshape(-1)[0])), dry)


def _push_backward(g: ir.Graph, name: str, f: np.ndarray, dry: bool = False) -> str | None:
    """Push factor ``f`` (shape of ``name``'s input) into the preceding weight layer, through
    SumPool/Flatten/Reshape, each of which must have the previous node as sole consumer."""
    src = g.inputs_of(name)
    if len(src) != 1:
        return "not a single input"
    src = src[0]
    if g.consumers_of(src) != [name]:
        return f"{src} has other consumers"
    node = g.nodes[src]
    if isinstance(node, ir.WEIGHT_NODES):
        if isinstance(node, ir.Linear):
            flat = f.reshape(-1, f.shape[-1])
            if not np.all(flat == flat[:1]):
                return "factor varies across rows of a Linear output"
            vec = flat[0]
        else:
            vec = _per_channel(f)
            if vec is None:
                return "factor varies inside an output channel"
        if dry:
            return None
        node.weight = np.asarray(node.weight, dtype=np.float64) * vec.reshape((-1,) + (1,) * (node.weight.ndim - 1))
        if node.bias is not None:
            node.bias = np.asarray(node.bias, dtype=np.float64) * vec
        return None
    if isinstance(node, ir.SumPool2d) and not isinstance(node, ir.AvgPool2d):
        pc = _per_channel(f)
        if pc is None:
            return f"factor varies inside a channel after {src} ({node.user_kind})"
        in_shape = g.nodes[g.inputs_of(src)[0]].shape
        return _push_backward(g, src, _factor(pc, in_shape), dry)
    if isinstance(node, (ir.Flatten, ir.Reshape)):
        in_shape = g.nodes[g.inputs_of(src)[0]].shape
        return _push_backward(g, src, f.reshape(in_shape), dry)
    return f"{src} is a {node.kind}"


def fold_scales(graph: ir.Graph) -> ir.Graph:
    """Remove every Scale node by folding its factor into neighbouring parameters.

    Tried in order: (1) the next weight layer(s), through SumPool2d/Flatten/Reshape; (2) the
    preceding weight layer when the Scale (path) is its sole consumer; (3) the IF neuron it feeds
    (sole consumer; scalar factor s > 0): threshold/s and v_init/s. Otherwise an error.
    """
    g = _shapes(graph.copy())
    for name in g.of_type(ir.Scale):
        node = g.nodes[name]
        s = np.asarray(node.scale, dtype=np.float64)
        if np.any(s <= 0):
            raise UnsupportedOpError("Scale with a non-positive factor cannot be folded", layer=node.source or name,
                                     fix="only positive scales (means, average pools, norms) are supported")
        f = _factor(s, node.shape)
        # (0) Scale -> Scale: merge
        cons = g.consumers_of(name)
        if len(cons) == 1 and isinstance(g.nodes[cons[0]], ir.Scale):
            nxt = g.nodes[cons[0]]
            nxt.scale = _factor(nxt.scale, nxt.shape) * f
            g.remove(name)
            continue
        # (1) forward into the next weight layers
        if _push_forward(g, name, f, dry=True) is None:
            _push_forward(g, name, f, dry=False)
            g.remove(name)
            continue
        # (2) backward into the preceding weight layer
        if _push_backward(g, name, f, dry=True) is None:
            _push_backward(g, name, f)
            g.remove(name)
            continue
        # (3) into the IF neuron it feeds
        if len(cons) == 1 and isinstance(g.nodes[cons[0]], ir.IFNeuron) and np.all(f == f.reshape(-1)[0]):
            sv = float(f.reshape(-1)[0])
            nrn = g.nodes[cons[0]]
            nrn.threshold = nrn.threshold / sv
            nrn.v_init = nrn.v_init / sv
            nrn.meta.setdefault("folded", []).append(f"scale:{name}={sv!r}")
            g.remove(name)
            continue
        if cons and all(isinstance(g.nodes[c], ir.Output) for c in cons) and np.all(f == f.reshape(-1)[0]):
            for o in cons:  # a scale right before the output: keep it as an output scale
                g.metadata.setdefault("output_scales", {})[o] = (
                    g.metadata.get("output_scales", {}).get(o, 1.0) * float(f.reshape(-1)[0]))
            g.remove(name)
            continue
        raise UnsupportedOpError(
            "Scale cannot be folded: it does not lead (through SumPool/Flatten/Reshape) only to weight layers, "
            "is not the sole consumer of a weight layer, and does not feed a single IF neuron with a scalar factor",
            layer=node.source or name,
            fix="move the scaling next to a convolution/linear layer or directly before an activation")
    return g


# -- activation norms ------------------------------------------------------------------------------

def fold_norms(graph: ir.Graph) -> ir.Graph:
    """Move each IF neuron's output ``1/norm`` into all downstream weight layers so that spike counts
    flow between layers; set ``norm = 1``. A path reaching an Output directly keeps the factor as
    ``graph.metadata['output_scales'][output] = 1/norm``. Original norms are recorded in
    ``graph.metadata['neuron_norms']``."""
    g = _shapes(graph.copy())
    for name in g.neurons():
        nrn = g.nodes[name]
        if nrn.norm == 1:
            continue
        inv = 1.0 / float(nrn.norm)
        out_paths = []

        def visit(start, dry):
            for c in g.consumers_of(start):
                node = g.nodes[c]
                if isinstance(node, ir.WEIGHT_NODES):
                    if not dry:
                        _scale_weight_inputs(node, np.full(g.nodes[start].shape, inv))
                elif isinstance(node, (ir.SumPool2d, ir.Flatten, ir.Reshape, ir.Scale)):  # linear: commute
                    visit(c, dry)
                elif isinstance(node, ir.HostOp) and node.op in ir.HOST_OPS:  # linear in each input
                    visit(c, dry)
                elif isinstance(node, ir.IFNeuron):
                    # reached through host ops / reshapes (no Add): its whole input carries 1/norm
                    if not dry:
                        _scale_neuron_input(node, inv, f"norm:{name}")
                elif isinstance(node, ir.Output):
                    if not dry:
                        out_paths.append(c)
                else:
                    raise UnsupportedOpError(
                        f"activation norm {nrn.norm:g} cannot be folded: the neuron's output reaches "
                        f"{node.kind} {c!r} without a weight layer in between",
                        layer=nrn.source or name,
                        fix="use norm 1 for activations feeding residual adds / other activations, "
                            "or put a weight layer in between")

        visit(name, True)   # check every path first: no partial modification on error
        visit(name, False)
        for o in out_paths:
            g.metadata.setdefault("output_scales", {})[o] = g.metadata.get("output_scales", {}).get(o, 1.0) * inv
        g.metadata.setdefault("neuron_norms", {})[name] = float(nrn.norm)
        nrn.norm = 1.0
    return g


# -- canonicalize ----------------------------------------------------------------------------------

def check_canonical(graph: ir.Graph) -> None:
    for name, node in graph.nodes.items():
        if isinstance(node, ir.HostOp) and node.op not in ir.HOST_OPS:
            raise HostOpError(f"'{node.op}' must run on the host: {node.reason}", layer=node.source or name,
                              fix="deploy the part before it (--until) and run the rest on the host")
        if not isinstance(node, CANONICAL_TYPES + (ir.HostOp,)) or isinstance(node, ir.AvgPool2d):
            raise UnsupportedOpError(f"{node.kind} left after canonicalisation", layer=node.source or name)
        if isinstance(node, ir.IFNeuron):
            if node.norm != 1:
                raise NeurodeployError(f"activation norm {node.norm} not folded", layer=node.source or name,
                                       fix="run passes.fold_norms")
            if node.threshold <= 0:
                raise NeurodeployError(f"threshold {node.threshold} must be > 0", layer=node.source or name)


def canonicalize(graph: ir.Graph) -> ir.Graph:
    """fold_batchnorm, fold_avgpool, fold_scales, fold_norms, infer_shapes and validate.

    Afterwards only Input, Conv2d, Conv1d, Linear, SumPool2d, Flatten, Reshape, Add, IFNeuron and
    Output remain (HostOp raises :class:`~neurodeploy.errors.HostOpError`). Non-finite parameters
    are refused first (:func:`.check.check_finite_parameters`)."""
    graph.validate()
    check_finite_parameters(graph)
    g = _shapes(graph.copy())
    g = fold_batchnorm(g)
    g = fold_avgpool(g)
    g = fold_scales(g)
    g = fold_norms(g)
    ir.infer_shapes(g)
    g.validate()
    check_canonical(g)
    g.metadata["canonical"] = True
    return g
