"""Per-timestep verification of a time-stepped graph against the model's own forward.

Compares spike *trains* (every neuron, every step), not only counts, layer by layer. The first
divergence (earliest step; at that step the first layer in topological order) is reported with
its layer, step, sample and neuron and classified: upstream of it every spike agreed, so both
sides integrated the same input spikes, and the difference is either

* ``float rounding``: our float64 membrane lies within ``tolerance`` (relative) of a firing
  boundary, where the model's float32 arithmetic (other summation order) may land on the other
  side; or
* ``conversion``: the membrane is clearly on one side: the converted semantics differ from the
  model's (a bug or an unsupported setting) — this must never happen.

Later mismatches are consequences of the first (a changed spike changes everything downstream).
"""

from __future__ import annotations

import numpy as np
import torch

from . import ir
from .converters.neurons import model_input_from_x, model_spike_trains
from .simulator.timestepped import simulate_timestepped

ROUNDING_TOLERANCE = 1e-4  # relative to max(|θ|, |v|): float32 has 2**-24 ≈ 6e-8 per operation


def boundary_distance(node: ir.LIFNeuron, v: float) -> float:
    """Distance of membrane ``v`` from the nearest value where the neuron's spike output changes."""
    theta = float(node.threshold)
    if node.firing == "multi" and v >= theta:
        return abs(v / theta - round(v / theta)) * theta
    return abs(v - theta)


def verify_timestepped(model: torch.nn.Module, graph: ir.Graph, x, *, model_input=None,
                       tolerance: float = ROUNDING_TOLERANCE) -> dict:
    """Run ``graph`` (simulator) and ``model`` on the same data and compare spike trains.

    ``x``: graph data (``[N, T, ...]`` or static ``[N, ...]``); ``model_input``: the same batch as
    the model's forward takes it (default: from ``x`` by the graph's ``model_input_layout``)."""
    T = ir.timesteps(graph)
    x = torch.as_tensor(x)
    if model_input is None:
        model_input = model_input_from_x(x.float(), T, graph.metadata.get("model_input_layout", "static"))
    sim = simulate_timestepped(graph, x.double(), membranes=True)
    ref = model_spike_trains(model, graph, model_input)
    order = graph.of_type(ir.LIFNeuron)
    layers, first = {}, None
    for name in order:
        ours, theirs = sim.trains[name].astype(np.float64), ref[name]
        bad = ours != theirs
        layers[name] = {"source": graph.nodes[name].source, "spikes_model": int(theirs.sum()),
                        "spikes_ours": int(ours.sum()), "train_mismatches": int(bad.sum()),
                        "count_mismatches": int((ours.sum(1) != theirs.sum(1)).sum()),
                        "neuron_steps": int(bad.size)}
        if bad.any():
            t = int(np.nonzero(bad.any(axis=tuple(i for i in range(bad.ndim) if i != 1)))[0][0])
            if first is None or t < first["step"]:
                first = _divergence(graph, name, t, bad, ours, theirs, sim.membranes[name], tolerance)
    return {"timesteps": T, "samples": int(x.shape[0]), "layers": layers, "first_divergence": first,
            "exact": first is None}


def _divergence(graph, name, t, bad, ours, theirs, membranes, tolerance) -> dict:
    node = graph.nodes[name]
    idx = np.argwhere(bad[:, t])[0]
    b, neuron = int(idx[0]), tuple(int(i) for i in idx[1:])
    v = float(membranes[(b, t) + neuron])
    dist = boundary_distance(node, v)
    near = dist <= tolerance * max(abs(float(node.threshold)), abs(v), 1e-30)
    return {"layer": name, "source": node.source, "step": t, "sample": b, "neuron": neuron,
            "model_spikes": float(theirs[(b, t) + neuron]), "our_spikes": float(ours[(b, t) + neuron]),
            "membrane": v, "threshold": float(node.threshold), "distance_to_boundary": dist,
            "kind": "float rounding" if near else "conversion"}


def format_report(report: dict) -> str:
    lines = [f"time-stepped verification: T = {report['timesteps']}, {report['samples']} samples"]
    for name, r in report["layers"].items():
        lines.append(f"  {name:<20} spikes model {r['spikes_model']:>8} ours {r['spikes_ours']:>8}  "
                     f"train mismatches {r['train_mismatches']}/{r['neuron_steps']}  "
                     f"count mismatches {r['count_mismatches']}")
    f = report["first_divergence"]
    if f is None:
        lines.append("  spike trains identical at every step")
    else:
        lines.append(f"  first divergence: layer '{f['source']}' step {f['step']} sample {f['sample']} neuron "
                     f"{f['neuron']}: model {f['model_spikes']:g} ours {f['our_spikes']:g}, membrane {f['membrane']:.9g} "
                     f"(threshold {f['threshold']:g}, {f['distance_to_boundary']:.3g} from the boundary): {f['kind']}")
    return "\n".join(lines)
