"""NIR export and import (nir 1.0.x files, HDF5).

Public API
----------
* :func:`to_nir` ``(graph) -> nir.NIRGraph``
* :func:`write_nir` ``(graph, path) -> Path`` (atomic: temp file + rename)
* :func:`from_nir` ``(obj_or_path, *, default_max_spikes=1) -> ir.Graph``

Mapping (IR -> NIR)
-------------------
=================  ==============================================================================
IR node            NIR node
=================  ==============================================================================
Input              ``nir.Input`` (per-sample shape; ``is_spikes``/``scale_q`` in metadata)
Output             ``nir.Output``
Conv2d / Conv1d    ``nir.Conv2d`` / ``nir.Conv1d`` with ``input_shape`` set (a missing bias is
                   written as zeros and ``has_bias=False`` is recorded in metadata). Grouped /
                   depthwise convs are written as the equivalent dense block-diagonal conv
                   with ``groups=1`` (nir 1.0 types a conv's input as ``weight.shape[1]``
                   channels, so a grouped conv fails ``nir.read``'s type check); the real
                   ``groups`` is in metadata and our reader restores it exactly.
Linear             ``nir.Affine`` (with bias) or ``nir.Linear`` (without); 1-D input only
SumPool2d          ``nir.SumPool2d``
AvgPool2d          ``nir.AvgPool2d`` (NIR does not say whether padding is counted; we mean
                   ``count_include_pad=True``)
Scale              ``nir.Scale`` (broadcast to the full per-sample shape, as NIR requires)
Flatten            ``nir.Flatten(start_dim, end_dim=-1, input_type=...)``. NIR dims are
                   **per sample** (no batch dim), exactly like the IR's ``start_dim``:
                   ``start_dim=0`` flattens the whole sample (nir's own type inference
                   applies ``start_dim`` to the per-sample ``input_type``; sinabs exports
                   ``nn.Flatten(start_dim=1)`` as ``start_dim=0`` and adds 1 back on import).
Reshape            no NIR node: written as ``nir.Flatten`` when the target shape is a flatten
                   of trailing dims (``target == shape[:k] + (prod(shape[k:]),)``), else
                   :class:`~neurodeploy.errors.UnsupportedOpError`.
Add                no node: NIR sums all edges entering a node, so the Add's input edges are
                   connected straight to its consumers. On import, every node with several
                   incoming edges becomes ``ir.Add`` followed by the node (named as the
                   original Add). Nested Adds are flattened into one fan-in (summation order
                   kept as a left fold); an Add feeding several nodes becomes one Add per
                   consumer on import; ``x + x`` (same edge twice) is refused.
BatchNorm          refused: fold it first (``passes.fold_batchnorm``).
IFNeuron           ``nir.IF(r=1, v_threshold=θ, v_reset=0)``; when ``norm != 1`` it is followed
                   by a ``nir.Scale(1/norm)`` tagged ``neurodeploy_kind='IFNorm'`` so that NIR
                   readers see the value the IR passes on (n/norm); our reader folds it back.
HostOp             refused (it has no NIR equivalent).
=================  ==============================================================================

Every exported node carries ``metadata['neurodeploy_kind']`` (the IR class) plus what NIR cannot
hold: for IF neurons ``reset='subtract'``, ``max_spikes`` (D), ``rounding``, ``v_init``, ``norm``,
``threshold``, and in quantised graphs ``threshold_q``, ``v_init_q``, ``low_threshold_q``,
``state_bits`` and ``threshold_scale`` (= threshold_q / threshold); for weight layers the integer
``weight_q`` / ``bias_q``. Integers are stored as int64, floats as float64, so reading our own
file back gives an IR graph whose ``ops.evaluate`` is bit-for-bit the original's. The graph-level
``metadata`` (quantisation settings, ...) is written twice: in the NIRGraph's metadata and, because
graph metadata may not survive other tools, as JSON on every Input node; the reader prefers the
copy on the Input node.

What other NIR readers see
--------------------------
neurodeploy writes standard NIR 1.0 HDF5 files that ``nir.read`` loads and type-checks. A reader
that does not know our metadata sees plain ``IF`` neurons with ``r=1``, ``v_threshold=θ`` and
``v_reset=0``, which NIR defines as a **hard reset to zero** after each spike: NIR cannot express
the subtractive (soft) reset our neurons use, so such a reader will fire fewer spikes for inputs
above threshold. The spike budget D (``max_spikes``), the rounding rule, the initial membrane
``v_init`` (θ/2 for round-half-up; NIR has no initial state, readers start at 0) and the integer
``*_q`` parameters of a quantised graph live only in node ``metadata``; NIR also fires on
``v > θ`` where we fire on ``v ≥ θ``. ``norm`` is visible, as a ``Scale(1/norm)`` node after the
neuron. Residual sums are implicit fan-in edges (NIR sums them). Flatten uses NIR's per-sample
dims (``start_dim=0`` = whole sample); nirtorch's default map turns that into
``torch.nn.Flatten(0)``, which also flattens the batch dimension, so a batched run of a
nirtorch-built module breaks there unless you map ``nir.Flatten`` to ``nn.Flatten(start_dim + 1)``
yourself. nirtorch's default map also has no entry for ``IF`` or ``Scale`` (pass your own), its
``Affine`` mapping (nirtorch 2.6) leaves the bias at its random initial value, and the module it
builds computes in float32. Grouped / depthwise convolutions appear as the equivalent dense
(block-diagonal, ``groups=1``) convolution, because nir 1.0's type check mis-types grouped convs.

Reading foreign NIR files
-------------------------
* ``nir.IF`` without our metadata becomes an ``IFNeuron`` with a :class:`UserWarning`: NIR only
  has hard reset, but the reader assumes **subtractive** reset (what sinabs' ``IAF`` does, and
  sinabs exports it as plain ``nir.IF``), ``v_init=0`` (so ``rounding='floor'``), ``norm=1``,
  threshold ``v_threshold / r`` (both must be uniform), and D = ``default_max_spikes`` (default
  1: one input step of a NIR IF emits at most one spike; pass the model's D when you know it).
* Leaky or current-based neurons (``LIF``, ``CubaLIF``, ``LI``, ``CubaLI``, ``I``), ``Threshold``,
  ``Delay`` and nested graphs raise (with ``timesteps=T``, ``LIF`` / ``IF`` / ``CubaLIF`` enter as
  time-stepped neurons: see :func:`from_nir`) :class:`~neurodeploy.errors.UnsupportedOpError`.
* ``Affine``/``Linear``/``Conv*`` weights become float64; ``padding='same'|'valid'`` is resolved.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from . import ir
from .artifacts import atomic_path, dumps_json
from .errors import LoadError, NeurodeployError, UnsupportedOpError

__all__ = ["to_nir", "write_nir", "from_nir"]

KIND_KEY = "neurodeploy_kind"
NORM_KIND = "IFNorm"
GRAPH_META_KEY = "neurodeploy_graph_metadata"
VERSION_KEY = "neurodeploy_version"


def _nir():
    import nir  # local import: nir is only needed for this module

    return nir


# -- metadata helpers -----------------------------------------------------------------------------

def _meta_put(meta: dict, key: str, value) -> None:
    """Store ``value`` in a NIR metadata dict in an HDF5-friendly, exactly-round-tripping form."""
    if value is None:
        return  # absent means None
    if isinstance(value, (bool, np.bool_)):
        meta[key] = np.int64(int(value))
    elif isinstance(value, (int, np.integer)):
        meta[key] = np.int64(value)
    elif isinstance(value, (float, np.floating)):
        meta[key] = np.float64(value)
    elif isinstance(value, str):
        meta[key] = value
    elif isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.integer):
            meta[key] = np.ascontiguousarray(value, dtype=np.int64)
        else:
            meta[key] = np.ascontiguousarray(value, dtype=np.float64)
    elif isinstance(value, (tuple, list)):
        meta[key] = np.asarray(value, dtype=np.int64)
    else:
        raise TypeError(f"cannot store metadata {key}={value!r}")


def _as_str(v):
    if isinstance(v, bytes):
        return v.decode("utf8")
    if isinstance(v, np.ndarray) and v.dtype.kind in "SO" and v.ndim == 0:
        return _as_str(v[()])
    return v if isinstance(v, str) else str(v)


def _m_int(meta: dict, key: str, default=None):
    return int(np.asarray(meta[key]).item()) if key in meta else default


def _m_float(meta: dict, key: str, default=None):
    return float(np.asarray(meta[key]).item()) if key in meta else default


def _m_str(meta: dict, key: str, default=None):
    return _as_str(meta[key]) if key in meta else default


def _m_bool(meta: dict, key: str, default=False):
    return bool(np.asarray(meta[key]).item()) if key in meta else default


def _m_tuple(meta: dict, key: str, default=None):
    return tuple(int(v) for v in np.asarray(meta[key]).reshape(-1)) if key in meta else default


def _m_array(meta: dict, key: str):
    return np.array(np.asarray(meta[key]), copy=True) if key in meta else None


def _np(a, dtype=np.float64) -> np.ndarray | None:
    """numpy array from numpy / torch / python data."""
    if a is None:
        return None
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.array(a, dtype=dtype, copy=True)


def _ints(a) -> tuple:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return tuple(int(v) for v in np.asarray(a).reshape(-1))


# -- export ---------------------------------------------------------------------------------------

def _reshape_as_flatten(in_shape: tuple, target: tuple) -> int | None:
    """``k`` such that ``target == in_shape[:k] + (prod(in_shape[k:]),)``, or None."""
    for k in range(len(in_shape)):
        if tuple(in_shape[:k]) + (int(np.prod(in_shape[k:])),) == tuple(target):
            return k
    return None


def _dense_from_grouped(w: np.ndarray, groups: int) -> np.ndarray:
    """[out, in/groups, *k] grouped weight -> equivalent dense [out, in, *k] (block diagonal)."""
    out, cin_g = w.shape[:2]
    dense = np.zeros((out, cin_g * groups) + w.shape[2:], dtype=w.dtype)
    out_g = out // groups
    for o in range(out):
        gi = o // out_g
        dense[o, gi * cin_g:(gi + 1) * cin_g] = w[o]
    return dense


def _grouped_from_dense(w: np.ndarray, groups: int) -> np.ndarray:
    """Inverse of :func:`_dense_from_grouped` (exact: copies the diagonal blocks)."""
    out, cin = w.shape[:2]
    cin_g, out_g = cin // groups, out // groups
    return np.stack([w[o, (o // out_g) * cin_g:(o // out_g + 1) * cin_g] for o in range(out)])


def _nir_name(name: str) -> str:
    # HDF5 group names cannot contain '/'; '.' is fine.
    return name.replace("/", "|")


def to_nir(graph: ir.Graph) -> "nir.NIRGraph":
    """Convert an IR graph to a type-checked ``nir.NIRGraph`` (see the module docstring)."""
    nir = _nir()
    graph.validate()
    g = ir.infer_shapes(graph.copy())
    quantized = g.is_quantized
    try:
        graph_meta_json = dumps_json(g.metadata)
    except TypeError:
        keep = {}
        for k, v in g.metadata.items():
            try:
                dumps_json({k: v})
                keep[k] = v
            except TypeError:
                warnings.warn(f"graph.metadata[{k!r}] is not JSON-serialisable; not written to NIR",
                              UserWarning, stacklevel=2)
        graph_meta_json = dumps_json(keep)

    nodes: dict = {}
    edges: list = []
    # NIR names that carry a node's value downstream; for an Add, the flattened fan-in list.
    carriers: dict[str, list[str]] = {}
    add_name_of: dict[str, str] = {}
    used = {_nir_name(n) for n in g.nodes}
    if len(used) != len(g.nodes):
        raise NeurodeployError("node names collide after replacing '/' with '|'",
                               fix="rename nodes so that names differ in more than '/' vs '|'")

    def fresh(base: str) -> str:
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        return name

    for name in g.topo_order():
        node = g.nodes[name]
        ins = g.inputs_of(name)
        in_shape = tuple(g.nodes[ins[0]].shape) if ins else None
        nname = _nir_name(name)
        meta: dict = {KIND_KEY: node.kind}
        _meta_put(meta, "source", node.source or None)
        if nname != name:
            _meta_put(meta, "ir_name", name)
        if node.meta:
            try:
                _meta_put(meta, "meta_json", json.dumps(node.meta, sort_keys=True,
                                                        default=lambda o: o.tolist()))
            except (TypeError, AttributeError):
                pass  # node.meta is informational; skip what is not JSON-able

        if isinstance(node, ir.Add):
            flat: list[str] = []
            for i in ins:
                flat.extend(carriers[i])
            if len(set(flat)) != len(flat):
                raise UnsupportedOpError(
                    "Add has the same tensor on two of its inputs; NIR fan-in edges are a set, so "
                    "x + x cannot be written", layer=name,
                    fix="replace x + x by Scale(2) (or a weight layer with doubled weights) first")
            carriers[name] = flat
            add_name_of[name] = name
            continue

        if isinstance(node, ir.BatchNorm):
            raise UnsupportedOpError(
                "BatchNorm has no NIR equivalent", layer=name,
                fix="fold it into the previous weight layer first: neurodeploy.passes.fold_batchnorm(graph)")
        if isinstance(node, ir.HostOp):
            raise UnsupportedOpError(
                f"host operation '{node.op}' has no NIR equivalent ({node.reason})", layer=name,
                fix="export only the part that runs on synaptic cores")

        if isinstance(node, ir.Input):
            _meta_put(meta, "is_spikes", node.is_spikes)
            _meta_put(meta, "scale_q", node.scale_q)
            _meta_put(meta, GRAPH_META_KEY, graph_meta_json)
            nn = nir.Input(input_type={"input": np.array(node.shape, dtype=np.int64)}, metadata=meta)
        elif isinstance(node, ir.Output):
            nn = nir.Output(output_type={"output": np.array(node.shape, dtype=np.int64)}, metadata=meta)
        elif isinstance(node, (ir.Conv2d, ir.Conv1d)):
            w = _np(node.weight if node.weight is not None else node.weight_q)
            has_bias = node.bias is not None
            b = _np(node.bias) if has_bias else np.zeros(w.shape[0], dtype=np.float64)
            _meta_put(meta, "has_bias", has_bias)
            groups = int(node.groups)
            if groups > 1:
                # nir 1.0 types a conv's input as weight.shape[1] channels, which is wrong for
                # groups > 1 (torch layout: in/groups), so type checks fail. Write the equivalent
                # dense block-diagonal weight with groups=1; our reader restores the groups.
                _meta_put(meta, "groups", groups)
                w = _dense_from_grouped(w, groups)
            _meta_put(meta, "weight_q", node.weight_q)
            _meta_put(meta, "bias_q", node.bias_q)
            if isinstance(node, ir.Conv2d):
                nn = nir.Conv2d(input_shape=tuple(int(v) for v in in_shape[1:]), weight=w,
                                stride=np.array(node.stride, dtype=np.int64),
                                padding=np.array(node.padding, dtype=np.int64),
                                dilation=np.array(node.dilation, dtype=np.int64),
                                groups=1, bias=b, metadata=meta)
            else:
                nn = nir.Conv1d(input_shape=int(in_shape[1]), weight=w, stride=int(node.stride),
                                padding=int(node.padding), dilation=int(node.dilation),
                                groups=1, bias=b, metadata=meta)
        elif isinstance(node, ir.Linear):
            if len(in_shape) != 1:
                raise UnsupportedOpError(
                    f"Linear on a {len(in_shape)}-D input {in_shape}: NIR Affine/Linear take a "
                    "1-D input", layer=name,
                    fix="flatten before the Linear, or express it as a Conv1d with kernel size 1")
            w = _np(node.weight if node.weight is not None else node.weight_q)
            _meta_put(meta, "weight_q", node.weight_q)
            _meta_put(meta, "bias_q", node.bias_q)
            if node.bias is not None:
                nn = nir.Affine(weight=w, bias=_np(node.bias), metadata=meta)
            else:
                nn = nir.Linear(weight=w, metadata=meta)
        elif isinstance(node, ir.SumPool2d):  # AvgPool2d too
            cls = nir.AvgPool2d if isinstance(node, ir.AvgPool2d) else nir.SumPool2d
            nn = cls(kernel_size=np.array(node.kernel, dtype=np.int64),
                     stride=np.array(node.stride, dtype=np.int64),
                     padding=np.array(node.padding, dtype=np.int64), metadata=meta)
        elif isinstance(node, ir.Scale):
            s = _np(node.scale)
            _meta_put(meta, "scale", s if s.ndim else float(s))
            full = s.reshape((-1,) + (1,) * (len(in_shape) - 1)) if s.ndim == 1 else s
            nn = nir.Scale(scale=np.ascontiguousarray(np.broadcast_to(full, in_shape), dtype=np.float64),
                           metadata=meta)
        elif isinstance(node, (ir.Flatten, ir.Reshape)):
            if isinstance(node, ir.Flatten):
                start = node.start_dim
            else:
                start = _reshape_as_flatten(in_shape, tuple(node.target_shape))
                if start is None:
                    raise UnsupportedOpError(
                        f"Reshape {in_shape} -> {tuple(node.target_shape)} is not a flatten of "
                        "trailing dims, and NIR has no Reshape node", layer=name,
                        fix="keep this reshape out of the exported graph (or restructure the model "
                            "so that only flattens remain)")
                _meta_put(meta, "target_shape", tuple(node.target_shape))
            nn = nir.Flatten(input_type={"input": np.array(in_shape, dtype=np.int64)},
                             start_dim=int(start), end_dim=-1, metadata=meta)
        elif isinstance(node, ir.IFNeuron):
            shape = tuple(node.shape)
            _meta_put(meta, "reset", node.reset)
            _meta_put(meta, "max_spikes", int(node.max_spikes))
            _meta_put(meta, "rounding", node.rounding)
            _meta_put(meta, "v_init", float(node.v_init))
            _meta_put(meta, "norm", float(node.norm))
            _meta_put(meta, "threshold", float(node.threshold))
            for key in ("threshold_q", "v_init_q", "low_threshold_q", "state_bits"):
                _meta_put(meta, key, getattr(node, key))
            if node.threshold_q is not None and node.threshold:
                _meta_put(meta, "threshold_scale", float(node.threshold_q) / float(node.threshold))
            nn = nir.IF(r=np.ones(shape, dtype=np.float64),
                        v_threshold=np.full(shape, float(node.threshold), dtype=np.float64),
                        v_reset=np.zeros(shape, dtype=np.float64), metadata=meta)
        elif isinstance(node, ir.LIFNeuron):
            nn = _lif_to_nir(node, meta)
        else:
            raise UnsupportedOpError(f"no NIR mapping for {node.kind}", layer=name)

        nodes[nname] = nn
        for i in ins:
            if isinstance(g.nodes[i], ir.Add):
                nn.metadata["fan_in_add"] = i
                if g.nodes[i].source:
                    nn.metadata["fan_in_add_source"] = g.nodes[i].source
            for src in carriers[i]:
                edges.append((src, nname))
        carriers[name] = [nname]

        if isinstance(node, ir.IFNeuron) and float(node.norm) != 1.0:
            sname = fresh(f"{nname}.norm")
            smeta = {KIND_KEY: NORM_KIND, "neuron": nname}
            nodes[sname] = nir.Scale(scale=np.full(tuple(node.shape), 1.0 / float(node.norm)),
                                     metadata=smeta)
            edges.append((nname, sname))
            carriers[name] = [sname]

    gmeta = {GRAPH_META_KEY: graph_meta_json}
    try:
        from . import __version__
        gmeta[VERSION_KEY] = __version__
    except ImportError:  # pragma: no cover
        pass
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=gmeta, type_check=True)
    except (ValueError, AssertionError) as e:  # pragma: no cover - means a mapping bug
        raise NeurodeployError(f"NIR type check of the exported graph failed: {e}") from e


def write_nir(graph: ir.Graph, path: str | os.PathLike) -> Path:
    """Export ``graph`` to a NIR HDF5 file at ``path`` (atomically)."""
    nir = _nir()
    ng = to_nir(graph)
    with atomic_path(path) as tmp:
        nir.write(tmp, ng)
    return Path(path)


# -- import ---------------------------------------------------------------------------------------

def _padding(pad, kernel: tuple, dilation: tuple, stride: tuple, name: str) -> tuple:
    if isinstance(pad, (str, bytes)):
        pad = _as_str(pad)
        if pad == "valid":
            return (0,) * len(kernel)
        if pad == "same":
            out = []
            for k, d, s in zip(kernel, dilation, stride):
                total = d * (k - 1)
                if s != 1 or total % 2:
                    raise UnsupportedOpError(
                        "padding='same' needs stride 1 and a symmetric padding", layer=name,
                        fix="export the model with explicit integer padding")
                out.append(total // 2)
            return tuple(out)
        raise UnsupportedOpError(f"unknown padding {pad!r}", layer=name)
    p = _ints(pad)
    return p * len(kernel) if len(p) == 1 else p


def _uniform(a, what: str, name: str) -> float:
    a = _np(a)
    if a.size == 0:
        raise UnsupportedOpError(f"empty {what}", layer=name)
    if not np.all(a == a.reshape(-1)[0]):
        raise UnsupportedOpError(
            f"per-neuron {what} values are not supported (IR neurons share one value per layer)",
            layer=name, fix="use one value per layer, or fold per-channel factors into the weights")
    return float(a.reshape(-1)[0])


def _scale_value(s: np.ndarray, name: str):
    if s.ndim == 0 or np.all(s == s.reshape(-1)[0]):
        return float(s.reshape(-1)[0])
    per_c = s.reshape(s.shape[0], -1)
    if s.ndim >= 1 and np.all(per_c == per_c[:, :1]):
        return per_c[:, 0].copy()
    raise UnsupportedOpError("element-wise Scale (not uniform or per-channel) is not supported",
                             layer=name, fix="fold the scale into the neighbouring weights")


_LEAKY = ("LIF", "CubaLIF", "LI", "CubaLI", "I")


def _node_from_nir(name: str, nn, meta: dict, in_shape: tuple | None, default_max_spikes: int,
                   foreign_if: list[str], convention: str | None = None) -> ir.Node:
    nir = _nir()
    kind = _m_str(meta, KIND_KEY)
    source = _m_str(meta, "source", "") if kind else f"nir:{name}"
    tname = type(nn).__name__
    if kind == "LIFNeuron":  # our own file: exact
        return _lif_from_meta(meta, source)
    if convention is not None and tname in ("IF", "LIF", "CubaLIF") and kind != "IFNeuron":
        return _lif_from_nir(name, nn, source, convention)

    if isinstance(nn, nir.Input):
        shape = _ints(nn.input_type["input"])
        return ir.Input(input_shape=shape, is_spikes=_m_bool(meta, "is_spikes"),
                        scale_q=_m_int(meta, "scale_q"), source=source)
    if isinstance(nn, nir.Output):
        return ir.Output(source=source)
    if isinstance(nn, (nir.Conv2d, nir.Conv1d)):
        w = _np(nn.weight)
        groups = int(np.asarray(nn.groups).item())
        if kind and "groups" in meta and groups == 1:
            groups = _m_int(meta, "groups")
            w = _grouped_from_dense(w, groups)
        bias = _np(nn.bias) if nn.bias is not None else None
        if kind and not _m_bool(meta, "has_bias", True):
            bias = None
        common = dict(weight=w, bias=bias, groups=groups,
                      weight_q=_m_array(meta, "weight_q"), bias_q=_m_array(meta, "bias_q"),
                      source=source)
        if isinstance(nn, nir.Conv2d):
            stride, dil = _ints(nn.stride), _ints(nn.dilation)
            stride = stride * 2 if len(stride) == 1 else stride
            dil = dil * 2 if len(dil) == 1 else dil
            pad = _padding(nn.padding, tuple(w.shape[2:]), dil, stride, name)
            return ir.Conv2d(stride=stride, padding=pad, dilation=dil, **common)
        stride, dil = _ints(nn.stride)[0], _ints(nn.dilation)[0]
        pad = _padding(nn.padding, tuple(w.shape[2:]), (dil,), (stride,), name)[0]
        return ir.Conv1d(stride=stride, padding=pad, dilation=dil, **common)
    if isinstance(nn, (nir.Affine, nir.Linear)):
        w = _np(nn.weight)
        if w.ndim != 2:
            raise UnsupportedOpError(f"{tname} with a {w.ndim}-D weight is not supported", layer=name)
        bias = _np(nn.bias) if isinstance(nn, nir.Affine) else None
        return ir.Linear(weight=w, bias=bias, weight_q=_m_array(meta, "weight_q"),
                         bias_q=_m_array(meta, "bias_q"), source=source)
    if isinstance(nn, (nir.SumPool2d, nir.AvgPool2d)):
        cls = ir.AvgPool2d if isinstance(nn, nir.AvgPool2d) else ir.SumPool2d
        k = _ints(nn.kernel_size)
        s = _ints(nn.stride)
        p = _ints(nn.padding) if nn.padding is not None else (0,)
        return cls(kernel=k * 2 if len(k) == 1 else k, stride=s * 2 if len(s) == 1 else s,
                   padding=p * 2 if len(p) == 1 else p, source=source)
    if isinstance(nn, nir.Scale):
        if "scale" in meta:
            s = np.asarray(meta["scale"])
            return ir.Scale(scale=float(s) if s.ndim == 0 else s.astype(np.float64), source=source)
        return ir.Scale(scale=_scale_value(_np(nn.scale), name), source=source)
    if isinstance(nn, nir.Flatten):
        if kind == "Reshape" and "target_shape" in meta:
            return ir.Reshape(target_shape=_m_tuple(meta, "target_shape"), source=source)
        start, end = int(np.asarray(nn.start_dim).item()), int(np.asarray(nn.end_dim).item())
        nd = len(in_shape) if in_shape is not None else None
        if nd is None:
            if start < 0 or end != -1:
                raise UnsupportedOpError("Flatten with unknown input shape and negative start_dim "
                                         "or end_dim != -1", layer=name)
            return ir.Flatten(start_dim=start, source=source)
        start = start + nd if start < 0 else start
        end = end + nd if end < 0 else end
        if end == nd - 1:
            return ir.Flatten(start_dim=start, source=source)
        target = tuple(in_shape[:start]) + (int(np.prod(in_shape[start:end + 1])),) + tuple(in_shape[end + 1:])
        return ir.Reshape(target_shape=target, source=source)
    if isinstance(nn, nir.IF):
        if kind == "IFNeuron":
            return ir.IFNeuron(
                threshold=_m_float(meta, "threshold"), max_spikes=_m_int(meta, "max_spikes"),
                rounding=_m_str(meta, "rounding"), v_init=_m_float(meta, "v_init"),
                norm=_m_float(meta, "norm", 1.0), reset=_m_str(meta, "reset", "subtract"),
                threshold_q=_m_int(meta, "threshold_q"), v_init_q=_m_int(meta, "v_init_q"),
                low_threshold_q=_m_int(meta, "low_threshold_q"),
                state_bits=_m_int(meta, "state_bits"), source=source)
        r = _uniform(nn.r, "r", name)
        thr = _uniform(nn.v_threshold, "v_threshold", name)
        if r <= 0 or thr <= 0:
            raise UnsupportedOpError(f"IF with r={r}, v_threshold={thr}: both must be > 0", layer=name)
        foreign_if.append(name)
        return ir.IFNeuron(threshold=thr / r, max_spikes=int(default_max_spikes), rounding="floor",
                           v_init=0.0, norm=1.0, reset="subtract", source=source)
    if tname in ("LIF", "CubaLIF"):
        tau = _np(nn.tau if tname == "LIF" else nn.tau_mem).reshape(-1)
        what = "a non-leaky (tau = inf) LIF" if np.all(np.isinf(tau)) else f"a leaky {tname} (tau={tau[:4].tolist()}...)"
        raise UnsupportedOpError(
            f"NIR node is {what}, a time-stepped neuron; without a time axis neurodeploy reads only SFA IF "
            "neurons", layer=name,
            fix="read it as a time-stepped SNN: --timesteps T on the command line, "
                "neurodeploy.nir_io.from_nir(path, timesteps=T) in Python")
    if tname in _LEAKY:
        tau = getattr(nn, "tau", getattr(nn, "tau_mem", None))
        raise UnsupportedOpError(
            f"NIR {tname} is a leaky/current-based neuron (tau={_np(tau).reshape(-1)[:4].tolist()}...); "
            "neurodeploy deploys integrate-and-fire neurons (no leak) only", layer=name,
            fix="convert/retrain the model with IF neurons (e.g. sinabs IAF) and export nir.IF")
    if isinstance(nn, nir.NIRGraph):
        raise UnsupportedOpError("nested NIR graphs are not supported", layer=name,
                                 fix="flatten the subgraph into the top-level graph before export")
    raise UnsupportedOpError(f"NIR node type {tname} is not supported", layer=name,
                             fix="supported: Input, Output, Affine, Linear, Conv1d, Conv2d, SumPool2d, "
                                 "AvgPool2d, Scale, Flatten, IF")


NIR_CONVENTIONS = ("auto", "snntorch", "sinabs", "snntorch-import")
SNNTORCH_DT = 1e-4  # snntorch/export_nir.py and import_nir.py: dt = 1e-4


def _nir_convention(ng, convention: str) -> str:
    """Which writer's discretisation a file follows. snnTorch's export_to_nir writes LIF with
    tau = dt/(1 - beta) and r = tau/dt (dt = 1e-4); sinabs.to_nir writes tau in timesteps and r = 1."""
    if convention not in NIR_CONVENTIONS:
        raise NeurodeployError(f"unknown NIR convention {convention!r}", fix=f"use one of {', '.join(NIR_CONVENTIONS)}")
    if convention != "auto":
        return convention
    nir = _nir()
    lifs = [n for n in ng.nodes.values() if isinstance(n, (nir.LIF, nir.CubaLIF))]
    taus = [_np(n.tau if isinstance(n, nir.LIF) else n.tau_mem) for n in lifs]
    if lifs and all(np.allclose(_np(n.r), tau / SNNTORCH_DT, rtol=1e-5)
                    or np.all(np.isinf(tau)) for n, tau in zip(lifs, taus)):
        return "snntorch"
    return "sinabs"


def _drop_time_from_input_shapes(ng, edges, g: ir.Graph, T: int) -> None:
    """sinabs.to_nir writes the Input's shape with the time axis ((T, F) for a [N, T, F] sample)
    while its consumers declare (F,): the per-sample shape is the consumers' one."""
    for n in g.input_names():
        shape = tuple(g.nodes[n].input_shape)
        consumers = [b for a, b in edges if a == n]
        declared = [tuple(_ints(next(iter(ng.nodes[c].input_type.values()), ())))
                    for c in consumers if getattr(ng.nodes[c], "input_type", None)]
        if len(shape) >= 2 and shape[0] == T and declared and all(d == shape[1:] for d in declared):
            g.nodes[n].input_shape = shape[1:]


def _lif_param(a) -> float | np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return float(a.reshape(-1)[0]) if a.size and np.all(a == a.reshape(-1)[0]) else a


def _lif_from_nir(name: str, nn, source: str, convention: str) -> ir.LIFNeuron:
    """A NIR IF / LIF as the time-stepped neuron the writer's framework runs (see from_nir)."""
    tname = type(nn).__name__
    if convention == "snntorch-import":
        return _snntorch_import_lif(name, nn, source)
    if tname == "CubaLIF":
        return _cubalif_from_nir(name, nn, source, convention)
    theta = _uniform(nn.v_threshold, "v_threshold", name)
    if tname == "LIF" and np.any(_np(nn.v_leak) != 0):
        raise UnsupportedOpError("NIR LIF with v_leak != 0", layer=name, fix="nearest supported form: v_leak = 0")
    meta = {"nir_convention": convention, "nir_type": tname}
    if convention == "sinabs":  # sinabs.from_nir: IAFSqueeze(min_v_mem=-θ) / LIFSqueeze(norm_input=False)
        if tname == "IF":
            return ir.LIFNeuron(beta=1.0, gain=1.0, threshold=theta, reset="subtract", firing="multi",
                                v_min=-theta, source=source, meta=meta)
        return ir.LIFNeuron(beta=_lif_param(np.exp(-1.0 / _np(nn.tau))), gain=1.0, threshold=theta,
                            reset="subtract", firing="multi", source=source, meta=meta)
    if tname == "IF":
        beta, gain = 1.0, _lif_param(_np(nn.r))
    else:  # snnTorch: beta = 1 - dt/tau, input scale r*dt/tau (tau = inf: beta = 1, the IF limit)
        tau, r = _np(nn.tau), _np(nn.r)
        inf = np.isinf(tau)
        with np.errstate(invalid="ignore", divide="ignore"):
            beta = np.where(inf, 1.0, 1.0 - SNNTORCH_DT / tau)
            gain = np.where(inf, 1.0, r * SNNTORCH_DT / tau)
        if np.asarray(nn.tau).dtype == np.float32:  # the writer's float32 beta, recovered exactly
            beta, gain = beta.astype(np.float32), gain.astype(np.float32)
        beta, gain = _lif_param(beta), _lif_param(gain)
    return ir.LIFNeuron(beta=beta, gain=gain, threshold=theta, reset="subtract", firing="strict",
                        reset_timing="next_step", source=source, meta=meta)


def _snntorch_import_lif(name: str, nn, source: str) -> ir.LIFNeuron:
    """What snnTorch's ``import_from_nir`` builds (``snntorch/import_nir.py``
    ``_nir_to_snntorch_module``, dt = 1e-4, in the file's dtype): ``IF`` -> ``Leaky(beta=0.9,
    threshold=v_threshold·r, reset_delay=False)`` (r = 1 only; subtract), ``LIF`` -> ``Leaky(beta=1 -
    dt/tau, reset_mechanism='zero', reset_delay=False)``, ``CubaLIF`` -> ``Synaptic(alpha=1 -
    dt/tau_syn, beta=1 - dt/tau_mem, reset_mechanism='zero', reset_delay=False)`` (r = tau_mem/dt
    only), the threshold divided by the input scale (``r·dt/tau`` / ``w_in·dt/tau_syn``) unless
    that is close to 1 (``hack_w_scale``); gain 1, strict firing, same-step reset."""
    tname = type(nn).__name__
    raw = lambda a: np.asarray(a)  # noqa: E731  (snnTorch computes in the file's dtype)
    theta = _uniform(nn.v_threshold, "v_threshold", name)
    if np.any(_np(getattr(nn, "v_leak", 0.0)) != 0):
        raise UnsupportedOpError(f"NIR {tname} with v_leak != 0", layer=name, fix="nearest supported form: v_leak = 0")
    meta = {"nir_convention": "snntorch-import", "nir_type": tname}
    if tname == "IF":
        if _uniform(nn.r, "r", name) != 1.0:
            raise UnsupportedOpError("NIR IF with r != 1: snnTorch's import_from_nir refuses it", layer=name,
                                     fix="r = 1, or convention='snntorch'")
        return ir.LIFNeuron(beta=0.9, gain=1.0, threshold=theta, reset="subtract", firing="strict",
                            reset_timing="same_step", source=source, meta=meta)
    alpha = None
    if tname == "LIF":
        beta, scale = 1 - (SNNTORCH_DT / raw(nn.tau)), raw(nn.r) * SNNTORCH_DT / raw(nn.tau)
    else:
        if not np.allclose(raw(nn.r), raw(nn.tau_mem) / SNNTORCH_DT):
            raise UnsupportedOpError("NIR CubaLIF with r != tau_mem/dt: snnTorch's import_from_nir refuses it",
                                     layer=name, fix="r = tau_mem / 1e-4, or convention='snntorch'")
        alpha, beta = 1 - (SNNTORCH_DT / raw(nn.tau_syn)), 1 - (SNNTORCH_DT / raw(nn.tau_mem))
        scale = raw(nn.w_in) * (SNNTORCH_DT / raw(nn.tau_syn))
    if not np.allclose(scale, 1.0):
        theta = _uniform(raw(nn.v_threshold) / _uniform(scale, "input scale", name), "v_threshold", name)
    f32 = lambda a: _lif_param(np.asarray(a, dtype=np.float32))  # noqa: E731  (torch keeps float32)
    return ir.LIFNeuron(beta=f32(beta), gain=1.0, threshold=float(np.float32(theta)), reset="zero",
                        firing="strict", reset_timing="same_step", alpha=None if alpha is None else f32(alpha),
                        source=source, meta=meta)


def _snap_one(scale: np.ndarray) -> np.ndarray:
    """An input scale the writer meant as 1 (export_to_nir: w_in = tau_syn/dt, r = tau_mem/dt, in
    float32) is 1; snnTorch's import_from_nir treats it so too (``np.allclose(w_scale, 1.0)``)."""
    return np.where(np.abs(scale - 1.0) <= 4 * np.finfo(np.float32).eps, 1.0, scale)


def _cubalif_from_nir(name: str, nn, source: str, convention: str) -> ir.LIFNeuron:
    """A NIR CubaLIF as snnTorch's Synaptic that export_to_nir wrote it from (Euler, dt = 1e-4; see
    :class:`ir.LIFNeuron`, "Synaptic current"): strict firing, subtraction one step later."""
    if convention != "snntorch":
        raise UnsupportedOpError("NIR CubaLIF in the sinabs convention: sinabs.to_nir / from_nir have no "
                                 "current-based LIF", layer=name,
                                 fix="read it with convention='snntorch' (--nir-convention snntorch)")
    if np.any(_np(nn.v_leak) != 0):
        raise UnsupportedOpError("NIR CubaLIF with v_leak != 0", layer=name, fix="nearest supported form: v_leak = 0")
    theta = _uniform(nn.v_threshold, "v_threshold", name)
    tau_syn, tau_mem, r, w_in = (_np(a) for a in (nn.tau_syn, nn.tau_mem, nn.r, nn.w_in))
    if np.any(np.isinf(tau_syn)) or np.any(tau_syn <= 0) or np.any(tau_mem <= 0):
        raise UnsupportedOpError("NIR CubaLIF with tau_syn = inf or a time constant <= 0", layer=name,
                                 fix="finite tau_syn > 0 and tau_mem > 0 (tau_mem = inf: no leak)")
    inf = np.isinf(tau_mem)
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = 1.0 - SNNTORCH_DT / tau_syn
        beta = np.where(inf, 1.0, 1.0 - SNNTORCH_DT / tau_mem)
        gain = _snap_one(w_in * SNNTORCH_DT / tau_syn) * _snap_one(np.where(inf, 1.0, r * SNNTORCH_DT / tau_mem))
    if np.asarray(nn.tau_mem).dtype == np.float32:  # the writer's float32 alpha/beta, recovered exactly
        alpha, beta, gain = alpha.astype(np.float32), beta.astype(np.float32), gain.astype(np.float32)
    return ir.LIFNeuron(beta=_lif_param(beta), gain=_lif_param(gain), threshold=theta, reset="subtract",
                        firing="strict", reset_timing="next_step", alpha=_lif_param(alpha), source=source,
                        meta={"nir_convention": convention, "nir_type": "CubaLIF"})


_LIF_FIELDS = ("threshold", "reset", "firing", "reset_timing", "v_init", "v_min")


def _lif_to_nir(node: ir.LIFNeuron, meta: dict):
    """A time-stepped neuron as the node sinabs.from_nir runs the same way when it is IAF/LIF with
    MultiSpike and subtractive reset (IF: beta = 1; LIF: tau = -1/ln(beta), r = 1, i.e. sinabs'
    alpha = exp(-1/tau) = beta); every field is kept in the metadata for our own reader."""
    nir = _nir()
    shape = tuple(node.shape)
    for key in _LIF_FIELDS:
        v = getattr(node, key)
        _meta_put(meta, key, float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
    for key in ("beta", "gain", "alpha"):
        v = getattr(node, key)
        if v is not None:
            _meta_put(meta, key, float(v) if np.ndim(v) == 0 else np.asarray(v, dtype=np.float64))
    theta = np.full(shape, float(node.threshold), dtype=np.float64)
    if node.synaptic:
        return _cubalif_to_nir(node, shape, theta, meta)
    if not node.leaky:
        return nir.IF(r=np.ones(shape), v_threshold=theta, v_reset=np.zeros(shape), metadata=meta)
    beta = np.broadcast_to(np.asarray(node.beta, dtype=np.float64), shape)
    with np.errstate(divide="ignore"):
        tau = -1.0 / np.log(beta)
    return nir.LIF(tau=np.array(tau), r=np.ones(shape), v_leak=np.zeros(shape), v_threshold=theta,
                   v_reset=np.zeros(shape), metadata=meta)


def _cubalif_to_nir(node: ir.LIFNeuron, shape: tuple, theta: np.ndarray, meta: dict):
    """A current-based neuron as snnTorch's export_to_nir writes Synaptic (dt = 1e-4, r = tau_mem/dt),
    the gain carried by w_in (snnTorch's import_from_nir divides the threshold by it)."""
    nir = _nir()
    alpha, beta, gain = (np.broadcast_to(np.asarray(v, dtype=np.float64), shape)
                         for v in (node.alpha, node.beta, node.gain))
    with np.errstate(divide="ignore"):
        tau_syn, tau_mem = SNNTORCH_DT / (1.0 - alpha), SNNTORCH_DT / (1.0 - beta)
    return nir.CubaLIF(tau_syn=np.array(tau_syn), tau_mem=np.array(tau_mem), r=tau_mem / SNNTORCH_DT,
                       v_leak=np.zeros(shape), v_threshold=theta, v_reset=np.zeros(shape),
                       w_in=gain * tau_syn / SNNTORCH_DT, metadata=meta)


def _lif_from_meta(meta: dict, source: str) -> ir.LIFNeuron:
    def arr(key):
        a = np.asarray(meta[key], dtype=np.float64)
        return float(a.reshape(-1)[0]) if a.size == 1 else a.copy()  # HDF5 keeps scalars as (1,)

    return ir.LIFNeuron(beta=arr("beta"), gain=arr("gain"), threshold=_m_float(meta, "threshold"),
                        reset=_m_str(meta, "reset"), firing=_m_str(meta, "firing"),
                        reset_timing=_m_str(meta, "reset_timing"), v_init=_m_float(meta, "v_init"),
                        v_min=_m_float(meta, "v_min"), alpha=arr("alpha") if "alpha" in meta else None,
                        source=source)


def from_nir(obj_or_path, *, default_max_spikes: int = 1, timesteps: int | None = None,
             convention: str = "auto") -> ir.Graph:
    """Import a NIR graph (``nir.NIRGraph`` or a file path) as an IR graph.

    Files written by :func:`write_nir` round-trip exactly. For foreign files see the module
    docstring: ``nir.IF`` is read as a subtractive-reset IF neuron with
    D = ``default_max_spikes`` (with a warning), leaky neurons are refused.

    ``timesteps=T`` reads the file as a *time-stepped* SNN (graph time axis T): ``IF`` / ``LIF``
    become :class:`ir.LIFNeuron` as the writer's framework runs them (NIR states neither reset by
    subtraction nor the time step): ``convention='sinabs'`` (``sinabs.from_nir``: MultiSpike,
    subtractive reset, alpha = exp(-1/tau), IF with min_v_mem = -θ), ``'snntorch'`` (Leaky:
    beta = 1 - dt/tau, dt = 1e-4, input scale r·dt/tau, strict firing, subtraction one step
    later; tau = inf is beta = 1), ``'auto'``: snnTorch when every LIF has r = tau/1e-4.
    ``CubaLIF`` (snnTorch convention only; sinabs has none) is snnTorch's ``Synaptic`` as
    export_to_nir wrote it: alpha = 1 - dt/tau_syn, beta = 1 - dt/tau_mem, input scale
    (w_in·dt/tau_syn)·(r·dt/tau_mem), subtractive reset one step later (snnTorch's own
    import_from_nir instead rebuilds it as ``Synaptic(reset_mechanism='zero', reset_delay=False)``).
    ``'snntorch-import'`` (never picked by 'auto'): what snnTorch's ``import_from_nir`` builds and
    runs, see :func:`_snntorch_import_lif`.
    """
    nir = _nir()
    if isinstance(obj_or_path, (str, os.PathLike)):
        path = Path(obj_or_path)
        if not path.is_file():
            raise LoadError(f"NIR file {path} does not exist")
        try:
            # sinabs.to_nir types a time-stepped input [T, ...] but its first layer [...]: NIR's own
            # type check refuses what sinabs.from_nir reads; the time axis is dropped below
            ng = nir.read(path, type_check=timesteps is None)
        except Exception as e:  # corrupt / not HDF5 / unknown node type
            fix = "check that the file was written by nir.write (NIR 1.0 HDF5)"
            if "Type inference" in str(e):
                fix = ("a time-stepped SNN from sinabs.to_nir types its input [T, ...]: read it with --timesteps T "
                       "(from_nir(path, timesteps=T)); otherwise " + fix)
            raise LoadError(f"cannot read NIR file {path}: {type(e).__name__}: {e}", fix=fix) from e
    else:
        ng = obj_or_path
    if not isinstance(ng, nir.NIRGraph):
        raise LoadError(f"expected a nir.NIRGraph, got {type(ng).__name__}")

    names = list(ng.nodes)
    edges = [(_as_str(a), _as_str(b)) for a, b in ng.edges]
    metas = {n: dict(getattr(ng.nodes[n], "metadata", None) or {}) for n in names}
    convention = None if timesteps is None else _nir_convention(ng, convention)

    # Drop our IFNorm scales: the neuron's metadata already has `norm`.
    for n in list(names):
        if _m_str(metas[n], KIND_KEY) == NORM_KIND:
            ins = [a for a, b in edges if b == n]
            if len(ins) != 1:
                raise LoadError(f"IFNorm node {n!r} has {len(ins)} inputs, expected 1")
            edges = [(ins[0] if a == n else a, b) for a, b in edges if b != n]
            names.remove(n)

    order = ir.topological_order(names, edges)
    inputs_of: dict[str, list[str]] = {n: [] for n in names}
    for a, b in edges:
        inputs_of[b].append(a)

    g = ir.Graph()
    final_name = {n: (_m_str(metas[n], "ir_name") or n) for n in names}
    taken = set(final_name.values())
    shapes: dict[str, tuple] = {}
    foreign_if: list[str] = []
    for n in order:
        nn, meta = ng.nodes[n], metas[n]
        srcs = [final_name[s] for s in inputs_of[n]]
        if len(srcs) > 1:
            add_name = _m_str(meta, "fan_in_add") or f"{final_name[n]}_add"
            base, i = add_name, 1
            while add_name in g.nodes or add_name in taken:
                add_name, i = f"{base}_{i}", i + 1
            add_src = (_m_str(meta, "fan_in_add_source", "") if KIND_KEY in meta
                       else f"nir:fan-in of {n}")
            g.add(add_name, ir.Add(source=add_src), srcs)
            shapes[add_name] = shapes.get(srcs[0])
            srcs = [add_name]
        in_shape = shapes.get(srcs[0]) if srcs else None
        node = _node_from_nir(n, nn, meta, in_shape, default_max_spikes, foreign_if, convention)
        if "meta_json" in meta:
            try:
                node.meta = json.loads(_m_str(meta, "meta_json"))
            except ValueError:
                pass
        if isinstance(node, ir.IFNeuron) and n not in foreign_if:  # the file states D, rounding, norm
            node.meta["code_settings"] = {"max_spikes": node.max_spikes, "rounding": node.rounding,
                                          "norm": node.norm}
        g.add(final_name[n], node, srcs)
        in_shapes = [shapes.get(s) for s in srcs]
        # a shape mismatch raises NeurodeployError naming the layer
        shapes[final_name[n]] = (ir.output_shape(node, in_shapes)
                                 if all(s is not None for s in in_shapes) else None)

    # graph metadata: prefer the copy on an Input node, then the NIRGraph's own.
    gm = None
    for n in names:
        if isinstance(ng.nodes[n], nir.Input) and GRAPH_META_KEY in metas[n]:
            gm = _m_str(metas[n], GRAPH_META_KEY)
            break
    if gm is None and isinstance(getattr(ng, "metadata", None), dict) and GRAPH_META_KEY in ng.metadata:
        gm = _m_str(ng.metadata, GRAPH_META_KEY)
    if gm is not None:
        g.metadata = json.loads(gm)
    else:
        g.metadata = {"imported_from": "nir"}
    if timesteps is not None:
        g.metadata["timesteps"] = int(timesteps)
        _drop_time_from_input_shapes(ng, edges, g, int(timesteps))

    if foreign_if:
        warnings.warn(
            f"NIR IF neuron(s) {', '.join(foreign_if)} carry no neurodeploy metadata. NIR cannot "
            "express subtractive reset (NIR IF resets to v_reset); the reader assumes subtractive "
            "reset (what sinabs IAF does), v_init=0 (rounding 'floor'), norm=1, and the spike budget "
            f"D is unknown: using default_max_spikes={int(default_max_spikes)}. Pass "
            "from_nir(..., default_max_spikes=D) with your model's D.",
            UserWarning, stacklevel=2)

    g.validate()
    ir.infer_shapes(g)
    return g
