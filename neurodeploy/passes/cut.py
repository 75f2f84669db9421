"""The furthest ``--until`` that works: for a refusal, the last node (in topological order) whose
prefix graph is accepted (it canonicalises; for a target, it also passes the design rules), so the
error can propose a cut that is known to work.

Search: candidates from the last node backwards, each checked for real, within a time budget
(refusals near the end, the usual case, take a few tries); past the budget, a bisection over the
remaining earlier candidates (assuming that a prefix of a refused prefix is accepted), whose answer
is checked too.
"""

from __future__ import annotations

import time

from .. import ir
from ..errors import NeurodeployError

SEARCH_BUDGET_S = 5.0


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


def canonicalises(prefix: ir.Graph) -> bool:
    from .fold import canonicalize

    canonicalize(prefix)
    return True


def _works(graph: ir.Graph, name: str, accept) -> bool:
    try:
        return bool(accept(prefix_graph(graph, name)))
    except NeurodeployError:
        return False
    except Exception:  # noqa: BLE001 - a candidate that breaks anything else does not work either
        return False


def furthest_until(graph: ir.Graph, accept=canonicalises, budget_s: float = SEARCH_BUDGET_S) -> str | None:
    """The last node whose prefix ``accept`` takes (see the module docstring), or None."""
    order = [n for n in graph.topo_order() if not isinstance(graph.nodes[n], (ir.Input, ir.Output))]
    t0 = time.monotonic()
    i = len(order)
    while i > 0 and time.monotonic() - t0 < budget_s:
        i -= 1
        if _works(graph, order[i], accept):
            return order[i]
    lo, hi = -1, i  # bisection over order[:i]: order[hi] and later are refused
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _works(graph, order[mid], accept):
            lo = mid
        else:
            hi = mid
    return order[lo] if lo >= 0 else None


def with_until_proposal(err: NeurodeployError, graph: ir.Graph, accept=canonicalises) -> NeurodeployError:
    """``err`` with the furthest working ``--until`` added to its fix (and as ``err.until``)."""
    if getattr(err, "until", None) or not isinstance(err, NeurodeployError) or not graph.nodes:
        return err
    cut = furthest_until(graph, accept)
    err.until = cut
    hint = (f"or deploy up to the furthest node that works: --until {cut}" if cut
            else "no prefix of the model works either (no --until helps)")
    err.fix = f"{err.fix}; {hint}" if err.fix else hint
    err.args = (err._format(),)
    return err
