"""Per-timestep work of a time-stepped graph: SynOps, MACs, spikes, firing rates and energy per
step and in total, and a plot over time.

Counting follows :mod:`neurodeploy.profile` (exact fan-outs through the structural path, E_MAC and
E_AC from Horowitz 45 nm by default), applied to each step's values: a weight layer fed by spike
layers (LIF / IF neurons, or an Input with ``is_spikes``) costs Σ spikes × fan-out SynOps at that
step; one fed by real values (the network input) costs its dense MACs *every step*, as the
frameworks recompute it each step; a LIF layer does ``neurons`` updates per step. All numbers
are per-sample means over the batch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import ir, ops
from .artifacts import atomic_path
from .profile import E_AC_PJ, E_MAC_PJ, _fan_in, _leaves, fanout_map


def _is_spikes(node: ir.Node) -> bool:
    return isinstance(node, (ir.LIFNeuron, ir.IFNeuron)) or (isinstance(node, ir.Input) and node.is_spikes)


def profile_timestepped(graph: ir.Graph, x, *, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ) -> dict:
    """Per-step and total profile of ``graph`` on the batch ``x`` (see the module docstring)."""
    g = graph if all(n.shape is not None for n in graph.nodes.values()) else ir.infer_shapes(graph.copy())
    values = ops.evaluate_timestepped(g, x)
    T = next(iter(values.values())).shape[1]
    layers: dict[str, dict] = {}
    for name in g.topo_order():
        node = g.nodes[name]
        if isinstance(node, ir.WEIGHT_NODES):
            leaves = _leaves(g, g.inputs_of(name)[0])
            if all(_is_spikes(g.nodes[leaf]) for leaf in leaves):
                fmap = fanout_map(g, name)
                per_step = sum((values[leaf] * fmap[leaf].unsqueeze(0)).flatten(2).sum(2) for leaf in leaves)
                layers[name] = {"kind": node.kind, "input": "spikes", "synops": per_step.mean(0).tolist(),
                                "macs": [0.0] * T}
            else:
                macs = float(np.prod(node.shape) * _fan_in(node))
                layers[name] = {"kind": node.kind, "input": "dense", "synops": [0.0] * T, "macs": [macs] * T}
        elif isinstance(node, (ir.LIFNeuron, ir.IFNeuron)):
            neurons = int(np.prod(node.shape))
            spikes = values[name].flatten(2).sum(2).mean(0)
            layers[name] = {"kind": node.kind, "neurons": neurons, "spikes": spikes.tolist(),
                            "firing_rate": (spikes / neurons).tolist()}
    steps = []
    for t in range(T):
        synops = sum(r["synops"][t] for r in layers.values() if "synops" in r)
        macs = sum(r["macs"][t] for r in layers.values() if "macs" in r)
        spikes = sum(r["spikes"][t] for r in layers.values() if "spikes" in r)
        steps.append({"step": t, "synops": synops, "macs": macs, "spikes": spikes,
                      "energy_pj": e_mac_pj * macs + e_ac_pj * synops})
    total = {k: float(sum(s[k] for s in steps)) for k in ("synops", "macs", "spikes", "energy_pj")}
    neurons = sum(r["neurons"] for r in layers.values() if "neurons" in r)
    total["neuron_updates"] = neurons * T
    total["firing_rate"] = total["spikes"] / (neurons * T) if neurons else None
    return {"timesteps": T, "samples": int(torch.as_tensor(x).shape[0]), "e_mac_pj": e_mac_pj, "e_ac_pj": e_ac_pj,
            "per_step": steps, "layers": layers, "total": total}


def format_timestepped(report: dict) -> str:
    lines = [f"{'step':>4} {'SynOps':>12} {'MACs':>12} {'spikes':>10} {'energy pJ':>12}"]
    for s in report["per_step"]:
        lines.append(f"{s['step']:>4} {s['synops']:>12.1f} {s['macs']:>12.0f} {s['spikes']:>10.2f} {s['energy_pj']:>12.1f}")
    t = report["total"]
    lines.append(f"{'all':>4} {t['synops']:>12.1f} {t['macs']:>12.0f} {t['spikes']:>10.2f} {t['energy_pj']:>12.1f}"
                 f"   firing rate {t['firing_rate'] if t['firing_rate'] is None else round(t['firing_rate'], 4)}")
    return "\n".join(lines)


def plot_timestepped(report: dict, path: str | os.PathLike) -> Path:
    """PNG of SynOps and spikes per step (per layer), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    steps = np.arange(report["timesteps"])
    for name, r in report["layers"].items():
        if r.get("input") == "spikes":
            ax1.plot(steps, r["synops"], marker="o", label=name)
        if "spikes" in r:
            ax2.plot(steps, r["spikes"], marker="o", label=name)
    ax1.set_ylabel("SynOps / sample")
    ax1.set_title(f"per timestep; total {report['total']['energy_pj']:.4g} pJ / sample")
    ax2.set_ylabel("spikes / sample")
    ax2.set_xlabel("timestep")
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return Path(path)
