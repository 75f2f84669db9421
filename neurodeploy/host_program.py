"""The host part of a partitioned graph as a runnable program (``torch.export``, ``.pt2``).

:class:`HostProgram` computes every host node of a *quantised* graph (see
:mod:`neurodeploy.passes.partition`) with the same integer semantics as :mod:`neurodeploy.ops`:
host permutes and products (times ``2**shift_q``), reshapes, and the IF neurons fed by host
values (spike counts ``clip(floor((x + v_init_q) / θ_q), 0, D)``, one fewer on a half-even tie).
Inputs are the ``to_host`` cut tensors, outputs the ``from_host`` ones, batched, float64 holding
integers (exact: the quantiser keeps every value below 2**50).

``write_host_program(graph, folder)`` writes ``host_program.pt2`` and ``host_interface.json`` (the
cut tensors: names, module paths, shapes, what they hold, in argument / result order).
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import ir, ops
from .artifacts import atomic_path, atomic_write, dumps_json
from .errors import NeurodeployError
from .passes.partition import Partition, interface, partition

PROGRAM_FILE = "host_program.pt2"
INTERFACE_FILE = "host_interface.json"


class HostProgram(torch.nn.Module):
    def __init__(self, graph: ir.Graph, part: Partition):
        super().__init__()
        if not graph.is_quantized:
            raise NeurodeployError("the host program needs a quantised graph", fix="quantise for a target first")
        self.graph = graph
        self.part = part

    def forward(self, *cut: torch.Tensor):
        return self.run_host(dict(zip(self.part.to_host, cut)))

    def run_host(self, vals: dict) -> tuple:
        """Compute the host nodes from the crossing values ``vals`` (name -> tensor); the results."""
        g = self.graph
        for name in self.part.host:
            node = g.nodes[name]
            ins = [vals[i] for i in g.inputs_of(name)]
            if isinstance(node, ir.IFNeuron):
                vals[name] = ops.spike_count(node, ins[0], quantized=True)
            else:
                vals[name] = ops.linear_op(node, ins, quantized=True)
        return tuple(vals[n] for n in self.part.from_host)


def host_inputs(graph: ir.Graph, part: Partition, values: dict) -> tuple:
    """The host program's arguments from per-node values (e.g. ``ops.evaluate``)."""
    return tuple(torch.as_tensor(values[n], dtype=torch.float64) for n in part.to_host)


def export_host_program(graph: ir.Graph, part: Partition | None = None):
    part = part or partition(graph)
    if part.empty:
        raise NeurodeployError("the graph has no host ops")
    example = tuple(torch.zeros((2,) + tuple(graph.nodes[n].shape), dtype=torch.float64) for n in part.to_host)
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        return torch.export.export(HostProgram(graph, part), example,
                                   dynamic_shapes=(tuple({0: batch} for _ in example),))


def write_host_program(graph: ir.Graph, folder) -> dict[str, Path]:
    """Write the host program and its tensor interface into ``folder``; {} when there is no host part."""
    part = partition(graph)
    if part.empty:
        return {}
    folder = Path(folder)
    ep = export_host_program(graph, part)
    with atomic_path(folder / PROGRAM_FILE) as tmp, open(tmp, "wb") as f:
        torch.export.save(ep, f)  # a file object: torch warns about a temp name not ending in .pt2
    desc = {"program": PROGRAM_FILE, "format": "torch.export (torch.export.load(path).module()(*to_host))",
            "dtype": "float64 tensors holding integers, batch dimension first",
            "semantics": "exact integer host ops (permute, matmul/mul times 2**shift_q), reshapes and the IF "
                         "neurons fed by them (spike counts)",
            **interface(graph, part)}
    return {"host_program": folder / PROGRAM_FILE,
            "host_interface": atomic_write(folder / INTERFACE_FILE, dumps_json(desc))}


def load_host_program(path):
    """The runnable module of a written ``host_program.pt2``."""
    return torch.export.load(str(path)).module()
