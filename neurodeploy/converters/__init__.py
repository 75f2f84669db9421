"""Front end: model files → neurodeploy IR.

* :func:`load_model` (``load.py``): detect and load checkpoints, state dicts (+ ``arch``),
  TorchScript, ``torch.export`` archives, NIR and ONNX files, refusing unsafe pickles.
* :func:`from_torch` (``torch_export.py``): trace a PyTorch model with ``torch.export`` and build
  the IR, recognising SFA integer activations by pattern.
* :func:`from_onnx` (``onnx_import.py``): the same for ONNX graphs.
* :func:`capture_counts` (``capture.py``): spike counts from the model's own forward pass.
* :func:`to_graph`: one call from a :class:`LoadedModel` to an IR graph.
"""

from __future__ import annotations

from .. import ir
from ..errors import NeurodeployError
from .capture import capture_counts, capture_outputs
from .load import LoadedModel, build_arch, detect_format, load_model, resolve_arch
from .onnx_import import from_onnx
from .torch_export import from_torch, normalize_spike_config




def parse_shape(text) -> tuple[int, ...]:
    """'2,34,34' / '2x34x34' / (2, 34, 34) → (2, 34, 34)."""
    if isinstance(text, (tuple, list)):
        return tuple(int(s) for s in text)
    parts = str(text).replace("x", ",").replace("(", "").replace(")", "").split(",")
    try:
        return tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise NeurodeployError(f"cannot read input shape {text!r}",
                               fix="pass --input-shape C,H,W (per sample, no batch dimension)") from None


def to_graph(loaded: LoadedModel, input_shape=None, *, until=None, spike=None) -> ir.Graph:
    """IR graph of a loaded model.

    ``input_shape`` (per sample, no batch dim) may come from ``loaded.extras['input_shape']``; it is
    required for PyTorch models. For NIR/ONNX inputs the graph is already built; ``until`` then
    cuts it at the named IR node.
    """
    if loaded.format == "onnx" and (loaded.graph is None or until is not None):
        if until is None and loaded.extras.get("deferred_error") is not None:
            raise loaded.extras["deferred_error"]
        g = from_onnx(loaded.path, until=until)
        if spike:
            _apply_spike_to_graph(g, spike)
        return g
    if loaded.graph is not None:
        g = loaded.graph
        if until is not None:
            g = cut_graph(g, until)
        if spike:
            _apply_spike_to_graph(g, spike)
        return g
    if loaded.module is None:
        raise NeurodeployError("the loaded model has neither a module nor a graph")
    if input_shape is None:
        input_shape = loaded.extras.get("input_shape")
    if input_shape is None:
        raise NeurodeployError("the input shape of the model is unknown",
                               fix="pass --input-shape C,H,W (per sample, no batch dimension), e.g. "
                                   "--input-shape 2,34,34")
    return from_torch(loaded.module, parse_shape(input_shape), until=until, spike=spike)


def cut_graph(graph: ir.Graph, until: str) -> ir.Graph:
    """A copy of ``graph`` whose output is node ``until``; nodes it does not need are dropped."""
    if until not in graph.nodes:
        names = [n for n in graph.nodes if not isinstance(graph.nodes[n], (ir.Input, ir.Output))]
        raise NeurodeployError(f"--until {until!r} is not a node of the graph",
                               fix="use one of: " + ", ".join(names[:60]) + (" ..." if len(names) > 60 else ""))
    g = graph.copy()
    for o in g.output_names():
        del g.nodes[o]
        g.edges = [(a, b) for a, b in g.edges if b != o]
    g.add(g.unique_name("output"), ir.Output(source="output"), [until])
    g.prune_to_outputs()
    ir.infer_shapes(g)
    g.validate()
    return g


def _apply_spike_to_graph(g: ir.Graph, spike) -> None:
    from .torch_export import _lookup_spike
    cfg = normalize_spike_config(spike)
    for name in g.neurons():
        node = g.nodes[name]
        c = _lookup_spike(cfg, node.source or name)
        c.update(cfg.get(name, {}))
        if "max_spikes" in c:
            node.max_spikes = int(c["max_spikes"])
        if "norm" in c:
            node.norm = float(c["norm"])
        if "rounding" in c:
            node.rounding = c["rounding"]
            node.v_init = 0.0 if c["rounding"] == "floor" else 0.5 * node.threshold


__all__ = ["LoadedModel", "load_model", "from_torch", "from_onnx", "to_graph", "capture_counts",
           "capture_outputs", "cut_graph", "parse_shape", "detect_format", "resolve_arch", "build_arch",
           "normalize_spike_config"]
