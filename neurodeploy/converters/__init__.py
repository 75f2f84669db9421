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


def to_graph(loaded: LoadedModel, input_shape=None, *, until=None, spike=None,
             override_activation: bool = False) -> ir.Graph:
    """IR graph of a loaded model.

    ``input_shape`` (per sample, no batch dim) may come from ``loaded.extras['input_shape']``; it is
    required for PyTorch models. For NIR/ONNX inputs the graph is already built; ``until`` then
    cuts it at the named IR node. ``spike`` settings that contradict what the model's code (or
    file) states are refused unless ``override_activation`` (see :func:`check_activation_overrides`).
    """
    g = _to_graph(loaded, input_shape, until=until, spike=spike)
    if spike:
        check_activation_overrides(g, override_activation)
    return g


def activation_overrides(graph: ir.Graph) -> list[dict]:
    """Neurons whose D / rounding / norm differ from what the model's code states
    (``meta['code_settings']``, recorded by the converters)."""
    out = []
    for name in graph.neurons():
        node = graph.nodes[name]
        for key, stated in (node.meta.get("code_settings") or {}).items():
            used = getattr(node, key)
            same = abs(float(used) - float(stated)) <= 1e-9 * max(1.0, abs(float(stated))) \
                if key == "norm" else used == stated
            if not same:
                out.append({"layer": name, "source": node.source, "setting": key, "code": stated, "used": used})
    return out


OPTION_OF = {"max_spikes": "--spike-d", "rounding": "--rounding", "norm": "--norm"}
SETTING_NAME = {"max_spikes": "D", "rounding": "rounding", "norm": "norm"}


def check_activation_overrides(graph: ir.Graph, override: bool) -> None:
    """Refuse spike settings that contradict the model's code, naming the layer and both values;
    with ``override`` record them in ``graph.metadata['activation_overrides']`` and warn."""
    import warnings

    found = activation_overrides(graph)
    if not found:
        return
    text = [f"layer '{o['source'] or o['layer']}' uses {SETTING_NAME[o['setting']]} = {o['used']!r} "
            f"({OPTION_OF[o['setting']]}) instead of the model's own {o['code']!r}" for o in found]
    if not override:
        first = found[0]
        more = f" (and {len(found) - 1} more setting(s) in other layers)" if len(found) > 1 else ""
        raise NeurodeployError(
            f"{OPTION_OF[first['setting']]} {first['used']} contradicts the model's own "
            f"{SETTING_NAME[first['setting']]} = {first['code']!r} (stated by its code or file){more}",
            layer=first["source"] or first["layer"],
            fix=f"drop {OPTION_OF[first['setting']]} (it is for activations whose code hides the value), or "
                "pass --override-activation (override_activation=True) to deploy it anyway")
    graph.metadata["activation_overrides"] = found
    for line in text:
        warnings.warn(f"activation override: {line}", stacklevel=2)


def _to_graph(loaded: LoadedModel, input_shape=None, *, until=None, spike=None) -> ir.Graph:
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
    from .trace_cache import cached_from_torch

    return cached_from_torch(loaded.module, check_input_shape(parse_shape(input_shape)), until=until, spike=spike)


def _memory_bytes() -> int | None:
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_input_shape(shape: tuple[int, ...], memory: int | None = None) -> tuple[int, ...]:
    """Refuse per-sample shapes with a dimension < 1, or whose traced example batch alone cannot
    fit in this machine's memory (the estimate is a lower bound: activations come on top)."""
    import math

    from .torch_export import EXPORT_BATCH

    if not shape or any(int(s) < 1 for s in shape):
        raise NeurodeployError(f"input shape {tuple(shape)} has a dimension below 1",
                               fix="pass --input-shape C,H,W with every dimension >= 1, e.g. 1,8,8")
    memory = _memory_bytes() if memory is None else memory
    need = EXPORT_BATCH * math.prod(int(s) for s in shape) * 4  # float32 example batch
    if memory and need > memory:
        raise NeurodeployError(
            f"input shape {tuple(shape)} needs at least {_size(need)} for the traced example batch "
            f"({EXPORT_BATCH} x {math.prod(shape):,} float32 values), more than this machine's "
            f"{_size(memory)} of memory", fix="check --input-shape (per sample: C,H,W, no batch dimension)")
    return tuple(int(s) for s in shape)


def _size(n: int) -> str:
    for unit, bits in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 2 ** bits:
            return f"{n / 2 ** bits:.1f} {unit}"
    return f"{n} bytes"


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
           "capture_outputs", "cut_graph", "parse_shape", "check_input_shape", "activation_overrides",
           "check_activation_overrides", "detect_format", "resolve_arch", "build_arch",
           "normalize_spike_config"]
