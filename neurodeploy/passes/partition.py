"""Chip / host partition of a canonical graph with host ops (spike-driven attention).

The host runs every :class:`ir.HostOp` (activation × activation products and the transposes
around them), the reshapes that only rearrange host values, and the IF neurons fed by host values
(the attention's activation): so the tensors crossing the interface are spike counts wherever the
model has an activation there. Everything else runs on the chip (or in the chip simulator).

``partition(graph)`` returns the host node names and the *cut tensors*: chip values the host reads
(``to_host``) and host values the chip reads (``from_host``), each with its per-sample shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import ir

_HOST_FOLLOWERS = (ir.Flatten, ir.Reshape, ir.Scale, ir.HostOp)


@dataclass
class Partition:
    host: list[str] = field(default_factory=list)        # in topological order
    to_host: list[str] = field(default_factory=list)     # chip nodes read by the host
    from_host: list[str] = field(default_factory=list)   # host nodes read by the chip (or outputs)

    @property
    def empty(self) -> bool:
        return not self.host


def partition(graph: ir.Graph) -> Partition:
    host: set[str] = set()
    order = graph.topo_order()
    for name in order:
        node = graph.nodes[name]
        ins = graph.inputs_of(name)
        if isinstance(node, ir.HostOp):
            host.add(name)
        elif ins and all(i in host for i in ins) and isinstance(node, _HOST_FOLLOWERS + (ir.IFNeuron,)):
            host.add(name)
    for name in reversed(order):  # layout changes that only feed the host run there too
        cons = graph.consumers_of(name)
        if isinstance(graph.nodes[name], (ir.Flatten, ir.Reshape)) and cons and all(c in host for c in cons):
            host.add(name)
    part = Partition(host=[n for n in order if n in host])
    for name in order:
        if name in host:
            if any(c not in host for c in graph.consumers_of(name)):
                part.from_host.append(name)
        elif any(c in host for c in graph.consumers_of(name)):
            part.to_host.append(name)
    return part


def host_macs(graph: ir.Graph, name: str) -> int:
    """Multiply-accumulates per sample of a host product (0 for layout ops)."""
    node = graph.nodes[name]
    if not (isinstance(node, ir.HostOp) and node.bilinear):
        return 0
    out = int(np.prod(node.shape))
    if node.op == "matmul":
        return out * int(graph.nodes[graph.inputs_of(name)[0]].shape[-1])
    return out


def interface(graph: ir.Graph, part: Partition) -> dict:
    """JSON description of the cut tensors (what crosses chip <-> host per sample)."""
    def tensor(n):
        node = graph.nodes[n]
        kind = "spike counts" if isinstance(node, ir.IFNeuron) else "integers"
        src = graph.behind_views(n)
        if isinstance(graph.nodes[src], ir.IFNeuron):
            kind = "spike counts"
        return {"name": n, "source": node.source, "shape": list(node.shape), "values": int(np.prod(node.shape)),
                "kind": kind, "max_value": int(graph.nodes[src].max_spikes)
                if isinstance(graph.nodes[src], ir.IFNeuron) else None}
    return {"to_host": [tensor(n) for n in part.to_host],
            "from_host": [tensor(n) for n in part.from_host],
            "host_nodes": list(part.host),
            "host_macs_per_sample": int(sum(host_macs(graph, n) for n in part.host))}
