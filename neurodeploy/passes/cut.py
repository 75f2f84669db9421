"""The furthest ``--until`` that works: for a refusal, the last node (in topological order) whose
prefix graph converts and canonicalises, so the error can propose a cut that is known to work.

Search: first the nodes that do not depend on the refused node, latest first (their prefix does
not contain it, so the first one usually works); then, for a better answer, the nodes after that
one which do depend on it (a refusal can disappear when its consumers are cut off, e.g. a scaling
that then reaches the output), within a small budget of tries.
"""

from __future__ import annotations

from .. import ir
from ..errors import NeurodeployError

MAX_LATER_TRIES = 12


def prefix_graph(graph: ir.Graph, name: str) -> ir.Graph:
    """``name`` and everything it depends on, with an Output after ``name``."""
    keep, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m not in keep:
            keep.add(m)
            todo.extend(graph.inputs_of(m))
    g = ir.Graph(metadata=dict(graph.metadata))
    g.nodes = {n: node for n, node in graph.nodes.items() if n in keep}
    g.edges = [(a, b) for a, b in graph.edges if a in keep and b in keep]
    g = g.copy()
    g.add(g.unique_name("output"), ir.Output(source="output"), [name])
    return g


def _works(graph: ir.Graph, name: str) -> bool:
    from .fold import canonicalize

    try:
        canonicalize(prefix_graph(graph, name))
        return True
    except NeurodeployError:
        return False
    except Exception:  # noqa: BLE001 - a candidate that breaks anything else does not work either
        return False


def _descendants(graph: ir.Graph, names) -> set[str]:
    out, todo = set(), list(names)
    while todo:
        m = todo.pop()
        for c in graph.consumers_of(m):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def refused_nodes(graph: ir.Graph, err: NeurodeployError) -> list[str]:
    """IR nodes an error is about (by node name or by the user's module/source)."""
    layer = getattr(err, "layer", None)
    if not layer:
        return []
    return [n for n, node in graph.nodes.items() if n == layer or node.source == layer]


def furthest_until(graph: ir.Graph, refused: list[str] | None = None) -> str | None:
    """The last node whose prefix canonicalises (see the module docstring), or None."""
    order = [n for n in graph.topo_order()
             if not isinstance(graph.nodes[n], (ir.Input, ir.Output))]
    bad = set(refused or []) | _descendants(graph, refused or [])
    best = None
    for n in reversed(order):
        if n not in bad and _works(graph, n):
            best = n
            break
    later = [n for n in order if n in bad and (best is None or order.index(n) > order.index(best))]
    for n in list(reversed(later))[:MAX_LATER_TRIES]:
        if _works(graph, n):
            return n
    return best


def with_until_proposal(err: NeurodeployError, graph: ir.Graph) -> NeurodeployError:
    """``err`` with the furthest working ``--until`` added to its fix (and as ``err.until``)."""
    if getattr(err, "until", None) or not isinstance(err, NeurodeployError) or not graph.nodes:
        return err
    cut = furthest_until(graph, refused_nodes(graph, err))
    err.until = cut
    if cut:
        hint = f"or deploy the part that converts with --until {cut} (the furthest node that works)"
        err.fix = f"{err.fix}; {hint}" if err.fix else hint
        err.args = (err._format(),)
    return err
