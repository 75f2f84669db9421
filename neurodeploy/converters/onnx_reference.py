"""Reference spike counts of an ONNX model from ``onnx.reference`` (the ONNX reference evaluator).

An ONNX file has no PyTorch forward, but ``onnx`` ships a reference implementation of every
operator. :func:`onnx_capture_counts` runs the model with it in float64 (float initializers,
constants, casts and the graph's inputs/outputs are switched from FLOAT to DOUBLE, so that the
reference rounds as little as the PyTorch path does) and reads, for each IF neuron of the IR
graph, the output of the ONNX node it came from (``node.meta['onnx']``): ``n = round(a · norm)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import ir
from ..errors import NeurodeployError
from .capture import INTEGER_TOL


def _as_double(model):
    """A copy of ``model`` computing in float64."""
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float64),
                                                        attr.t.name))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
    return m


def onnx_capture_counts(path: str | Path, graph: ir.Graph, x) -> dict[str, np.ndarray]:
    """Spike counts (int64 ``[B, *shape]``) of every IF neuron of ``graph`` (imported from the ONNX
    file ``path``), computed by ``onnx.reference.ReferenceEvaluator`` in float64."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = _as_double(onnx.load(str(path)))
    by_name = {n.name: n for n in model.graph.node}
    wanted: dict[str, str] = {}
    for name in graph.neurons():
        onnx_node = by_name.get(graph.nodes[name].meta.get("onnx", ""))
        if onnx_node is None:
            raise NeurodeployError("cannot find this neuron's ONNX node for the reference forward", layer=name,
                                   fix="import the ONNX file with neurodeploy (from_onnx) so that neurons "
                                       "record their ONNX node")
        wanted[name] = onnx_node.output[0]
    initializers = {i.name for i in model.graph.initializer}
    feeds = [i.name for i in model.graph.input if i.name not in initializers]
    if len(feeds) != 1:
        raise NeurodeployError(f"the ONNX model has {len(feeds)} inputs; verify supports one")
    evaluator = ReferenceEvaluator(model)
    x = np.asarray(x, dtype=np.float64)
    batch = _fixed_batch(model, feeds[0]) or len(x)
    parts = []
    for i in range(0, len(x), batch):  # a model exported with a fixed batch size: run in chunks of it
        chunk = x[i:i + batch]
        real = len(chunk)
        if real < batch:  # pad the last chunk with copies of its last sample
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        parts.append([np.asarray(a)[:real] for a in evaluator.run(list(wanted.values()), {feeds[0]: chunk})])
    outs = [np.concatenate([p[k] for p in parts]) for k in range(len(wanted))]
    counts = {}
    for (name, _), a in zip(wanted.items(), outs):
        node = graph.nodes[name]
        a = np.swapaxes(a, -1, -2) if node.meta.get("transposed") else a  # the IR's token-major layout
        scaled = np.asarray(a, dtype=np.float64) * float(node.norm)
        n = np.rint(scaled)
        err = float(np.max(np.abs(scaled - n))) if scaled.size else 0.0
        if err > INTEGER_TOL:
            raise NeurodeployError(f"the ONNX activation output is not an integer multiple of 1/norm "
                                   f"(norm={node.norm:g}; max deviation {err:.3g})", layer=name)
        counts[name] = n.astype(np.int64)
    return counts


def _fixed_batch(model, input_name: str) -> int | None:
    """The input's batch dimension when the file fixes it (torch.onnx.export does by default)."""
    for vi in model.graph.input:
        if vi.name == input_name:
            dims = vi.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return int(dims[0].dim_value)
    return None
