"""IR serialisation: one deterministic ``.npz`` holding every array plus the graph as JSON.

``save_graph(graph, path)`` writes a zip (numpy ``.npz`` layout) whose entries are, in sorted order,
``graph.json`` (nodes in order with their scalar fields, edges, metadata; arrays referenced by
entry name) and one ``.npy`` per array (``<node>/<field>.npy``). Entries have a fixed timestamp and
permissions, so the same graph always gives the same bytes. ``numpy.load`` can read the arrays
directly; :func:`load_graph` rebuilds the :class:`~neurodeploy.ir.Graph`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from . import ir
from .artifacts import _jsonable, atomic_write
from .errors import LoadError, NeurodeployError

FORMAT = "neurodeploy-ir"
VERSION = 1
_DATE = (1980, 1, 1, 0, 0, 0)
_TUPLE_FIELDS = {"shape", "input_shape", "target_shape", "stride", "padding", "dilation", "kernel", "dims"}


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _jsonify(v):
    if isinstance(v, dict):
        return {str(k): _jsonify(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonify(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def graph_to_dict(graph: ir.Graph) -> tuple[dict, dict[str, np.ndarray]]:
    """JSON-able description of ``graph`` and its arrays (entry name -> array)."""
    arrays: dict[str, np.ndarray] = {}
    nodes = []
    for name, node in graph.nodes.items():
        fields = {}
        for k, v in ir.node_fields(node).items():
            if isinstance(v, np.ndarray):
                key = f"{name}/{k}.npy"
                arrays[key] = v
                fields[k] = {"__array__": key, "dtype": str(v.dtype), "shape": list(v.shape)}
            else:
                fields[k] = _jsonify(v)
        nodes.append({"name": name, "kind": node.kind, "fields": fields})
    desc = {"format": FORMAT, "version": VERSION, "nodes": nodes,
            "edges": [list(e) for e in graph.edges], "metadata": _jsonify(graph.metadata)}
    return desc, arrays


def graph_to_bytes(graph: ir.Graph) -> bytes:
    desc, arrays = graph_to_dict(graph)
    text = json.dumps(desc, indent=1, sort_keys=True, default=_jsonable) + "\n"
    entries = {"graph.json": text.encode()}
    entries.update({k: _npy_bytes(a) for k, a in arrays.items()})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, entries[name], compresslevel=6)
    return buf.getvalue()


def save_graph(graph: ir.Graph, path) -> Path:
    """Write ``graph`` to ``path`` (an ``.npz``) atomically and deterministically."""
    return atomic_write(path, graph_to_bytes(graph))


def _restore(v, arrays, key):
    if isinstance(v, dict) and "__array__" in v:
        return arrays[v["__array__"]]
    if key in _TUPLE_FIELDS and isinstance(v, list):
        return tuple(v)
    return v


def graph_from_bytes(data: bytes) -> ir.Graph:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            desc = json.loads(zf.read("graph.json"))
            arrays = {n: np.lib.format.read_array(io.BytesIO(zf.read(n)), allow_pickle=False)
                      for n in zf.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise LoadError(f"not a neurodeploy IR file: {e}", fix="pass a graph.ir.npz written by neurodeploy") from e
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise LoadError("not a neurodeploy IR file (format tag missing)")
    try:
        g = _graph_from_desc(desc, arrays)
        check_loaded_graph(g)
    except LoadError:
        raise
    except (NeurodeployError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise LoadError(f"the graph in this IR file is damaged: {type(e).__name__}: {e}",
                        fix="re-run `neurodeploy compile` to write it again") from None
    return g


def _graph_from_desc(desc: dict, arrays: dict) -> ir.Graph:
    g = ir.Graph(metadata=desc.get("metadata", {}))
    for nd in desc["nodes"]:
        cls = ir.NODE_TYPES.get(nd["kind"])
        if cls is None:
            raise LoadError(f"unknown node kind {nd['kind']!r}", layer=nd["name"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(nd["fields"]) - known)
        if unknown:
            raise LoadError(f"{nd['kind']} has unknown field(s) {', '.join(map(repr, unknown))}", layer=nd["name"],
                            fix="the IR file was edited or written by another neurodeploy version; compile again")
        kwargs = {k: _restore(v, arrays, k) for k, v in nd["fields"].items()}
        g.nodes[nd["name"]] = cls(**kwargs)
    g.edges = [tuple(e) for e in desc["edges"]]
    if any(len(e) != 2 for e in g.edges):
        raise LoadError("an edge is not a pair of node names")
    return g


def check_loaded_graph(g: ir.Graph) -> None:
    """What the simulators rely on and a damaged file can break: edges between known nodes, and
    every weight array's shape agreeing with the shapes recorded at compile time."""
    g.validate()
    for name, node in g.nodes.items():
        _check_values(name, node)
        if isinstance(node, ir.WEIGHT_NODES):
            _check_weight_arrays(name, node)
    recorded = {name: node.shape for name, node in g.nodes.items()}
    ir.infer_shapes(g)
    for name, node in g.nodes.items():
        if recorded[name] is not None and tuple(recorded[name]) != tuple(node.shape):
            raise LoadError(f"shape {tuple(node.shape)} from the weights differs from the recorded "
                            f"{tuple(recorded[name])}", layer=name)
    for name, node in g.nodes.items():
        node.shape = recorded[name]  # the graph comes back exactly as written


_NUMBER_FIELDS = {"threshold", "v_init", "norm", "eps", "threshold_q", "v_init_q", "low_threshold_q", "scale_q"}


def _check_values(name: str, node) -> None:
    """Arrays real and finite, numeric parameters numbers: what a simulator would otherwise choke on."""
    for key, v in ir.node_fields(node).items():
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf":
                raise LoadError(f"{key} has dtype {v.dtype}, not a real number type", layer=name)
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                raise LoadError(f"{key} holds NaN or infinite values", layer=name)
        elif key in _NUMBER_FIELDS and v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise LoadError(f"{key} is {v!r}, not a finite number", layer=name)


def _check_weight_arrays(name: str, node) -> None:
    w = node.weight if node.weight is not None else node.weight_q
    if w is None:
        raise LoadError(f"{node.kind} has no weight", layer=name)
    if node.weight_q is not None and node.weight is not None and node.weight_q.shape != node.weight.shape:
        raise LoadError(f"weight_q shape {node.weight_q.shape} differs from weight shape {node.weight.shape}",
                        layer=name)
    for key in ("bias", "bias_q"):
        b = getattr(node, key)
        if b is not None and np.shape(b) != (w.shape[0],):
            raise LoadError(f"{key} shape {np.shape(b)} does not match {w.shape[0]} output channels", layer=name)


def load_graph(path) -> ir.Graph:
    """Read a graph written by :func:`save_graph`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise LoadError(f"cannot read {path}: {e}") from e
    try:
        return graph_from_bytes(data)
    except LoadError as e:
        where = f"layer '{e.layer}': " if e.layer else ""
        raise LoadError(f"{path}: {where}{e.message}", fix=e.fix) from None
