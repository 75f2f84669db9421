"""Per-layer work and energy of a deployed graph: SynOps, MACs, spikes, neuron updates.

``profile(graph, values)`` takes the per-node values of one batch (``ops.evaluate(graph, x)``, or a
simulator's per-layer spike counts: the IF neuron values must be spike **counts** per sample and
the Input value the real-valued input) and returns a :class:`ProfileReport` with one row per weight
layer (Conv2d / Conv1d / Linear) and one per IF layer, plus totals. All numbers are per-sample
means over the batch.

Counting rules
--------------
* A weight layer's *source* is found by walking back from its input through SumPool2d /
  AvgPool2d / Flatten / Reshape / Add / Scale (structural nodes: spikes pass through them as events;
  an AvgPool or Scale before a weight layer folds into its weights on chip, so events are counted
  as for a sum-pool) to the spike layers (IF neurons, or an Input with ``is_spikes``) that feed it.
* **SynOps** (spike-driven layer) = Σ over source neurons of spike count × exact fan-out of that
  neuron, i.e. the number of synapses its spikes reach, summed over the spikes. Fan-outs are exact
  at borders and with padding, stride, dilation and groups: they are the gradient of
  ``sum(layer_with_all_ones_weights(path(x)))`` with respect to the source ``x`` (the adjoint /
  ``conv_transpose`` of the layer applied to a map of ones), taken through the structural path,
  so a sum-pool in between multiplies by its window membership. This is how sinabs'
  ``SNNAnalyzer`` counts (value × fan-out for an integer input).
  Note: NeuroBench 2.3 ``SynapticOperations`` counts a non-binary input as one op per non-zero
  value (MAC style), which under-counts SFA's multi-spike (integer) activations; our numbers are
  not comparable with NeuroBench's for SFA models.
* **MACs** for a layer whose input is real-valued (the network Input without ``is_spikes``, or any
  non-spiking source): dense ``out positions × fan-in`` (``fan-in = in_channels/groups × kernel``
  or ``in_features``), as a dense accelerator computes it (padded zeros included).
* **synapses**: connections (input position, output neuron) actually present, borders and padding
  counted exactly (Σ of the fan-out map at the layer input; ``in × out`` for Linear).
* **input spikes**: Σ of the integer values at the layer's input (after the structural path).
* IF rows: **neurons**, output **spikes**, **timesteps** = D (the layer's spike budget, its share of
  the layer-synchronous schedule), **neuron updates** = neurons × D, **firing rate** =
  spikes / (neurons × D).
* **energy** (pJ) = E_MAC·MACs + E_AC·SynOps (Horowitz 45 nm: 4.6 pJ and 0.9 pJ by default;
  settable), as the SFA paper computes it. Neuron updates are reported but not priced.
* Totals: neurons / spikes / neuron updates over IF rows, synapses / SynOps / MACs / energy over
  weight rows, firing rate = total spikes / total neuron updates. A weight row's ``neurons`` is the
  number of neurons it drives (its output size) and is not added to the total.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import ir, ops
from .artifacts import atomic_path, dumps_json
from .errors import NeurodeployError

__all__ = ["LayerProfile", "ProfileReport", "profile", "fanout_map"]

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
# Speck's per-core SynOps/s bandwidth is not published (REFERENCE §3): an assumed figure, as in
# benchmarks/bench_speck_barrier.py, used only for the barrier's latency estimate.
SPECK_SYNOPS_PER_S = 1e8

_STRUCTURAL = (ir.SumPool2d, ir.Flatten, ir.Reshape, ir.Add, ir.Scale)  # SumPool2d covers AvgPool2d

COLUMNS = ("name", "kind", "source", "input", "neurons", "synapses", "input_spikes", "synops", "macs",
           "timesteps", "neuron_updates", "spikes", "firing_rate", "energy_pj", "host_macs")


@dataclass
class LayerProfile:
    """One row. ``None`` marks a number that does not apply to the row's kind."""

    name: str
    kind: str
    source: str = ""            # spike layers (or Input) feeding a weight layer, comma-separated
    input: str = ""             # 'spikes' | 'dense' for weight layers, '' for IF layers
    neurons: int = 0
    synapses: int | None = None
    input_spikes: float | None = None
    synops: float | None = None
    macs: float | None = None
    timesteps: int | None = None
    neuron_updates: int | None = None
    spikes: float | None = None
    firing_rate: float | None = None
    energy_pj: float | None = None
    host_macs: float | None = None   # host products (spike-driven attention), not chip work


@dataclass
class ProfileReport:
    layers: list[LayerProfile]
    totals: LayerProfile
    e_mac_pj: float = E_MAC_PJ
    e_ac_pj: float = E_AC_PJ
    n_samples: int = 1
    notes: list[str] = field(default_factory=list)
    host: dict | None = None  # host work and the values crossing chip <-> host (None: no host ops)
    barrier: dict | None = None  # Speck's layer barrier cost (targets.speck.barrier.barrier_cost), if deployed

    def barrier_summary(self, synops_per_s: float = SPECK_SYNOPS_PER_S) -> dict | None:
        """The barrier's cost against the layer-synchronous profile: host gate events, gate SynOps and
        the SynOps factor, extra kernel memory, and a latency estimate. The barrier releases one layer
        after the other, so its latency is the sum over layers of (data + gate SynOps) / the per-core
        SynOps/s bandwidth (an assumed figure: SynSense does not publish it)."""
        if not self.barrier:
            return None
        data = {r.name: float(r.synops or 0) for r in self.layers}
        gate = {c["layer"]: float(c["gate_synops"]) for c in self.barrier["layers"]}
        total_data = sum(data.values())
        total_gate = sum(gate.values())
        serial = sum(data.get(n, 0.0) + g for n, g in gate.items())
        return {"host_gate_events": int(self.barrier["host_events_per_sample"]),
                "sequence_points": int(self.barrier["sequence_points_per_sample"]),
                "gate_synops": total_gate,
                "synops_factor": (total_data + total_gate) / total_data if total_data else None,
                "extra_features": {c["layer"]: c["extra_features"] for c in self.barrier["layers"]},
                "kernel_memory_extra": {c["layer"]: c["kernel_memory_extra"] for c in self.barrier["layers"]},
                "latency_s": serial / synops_per_s, "assumed_synops_per_s_per_core": synops_per_s}

    def row(self, name: str) -> LayerProfile:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "layers": [asdict(r) for r in self.layers],
            "totals": asdict(self.totals),
            "params": {"e_mac_pj": self.e_mac_pj, "e_ac_pj": self.e_ac_pj, "n_samples": self.n_samples,
                       "per": "sample (mean over the batch)", "energy": "E_MAC*MACs + E_AC*SynOps (pJ)",
                       "synops": "sum over input spikes of exact fan-out (value x fan-out)"},
            "notes": list(self.notes),
            **({"host": self.host} if self.host else {}),
            **({"speck_barrier": {"cost": self.barrier, "summary": self.barrier_summary()}} if self.barrier else {}),
        }

    def format(self, fmt: str = "table") -> str:
        """Deterministic text: ``'table'`` (aligned columns), ``'json'`` or ``'csv'``."""
        if fmt == "json":
            return dumps_json(self.to_dict())
        rows = self.layers + [self.totals]
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(COLUMNS)
            for r in rows:
                w.writerow(["" if getattr(r, c) is None else _csv_cell(getattr(r, c)) for c in COLUMNS])
            return buf.getvalue()
        if fmt == "table":
            head = ("layer", "kind", "source", "input", "neurons", "synapses", "in_spikes", "SynOps",
                    "MACs", "D", "updates", "spikes", "rate", "energy_pJ", "host_MACs")
            cells = [list(head)] + [[_cell(getattr(r, c)) for c in COLUMNS] for r in rows]
            widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
            left = {0, 1, 2, 3}

            def line(row):
                return "  ".join(v.ljust(widths[i]) if i in left else v.rjust(widths[i])
                                 for i, v in enumerate(row)).rstrip()

            out = [line(cells[0]), "-" * len(line(cells[0]))]
            out += [line(r) for r in cells[1:-1]]
            out += ["-" * len(line(cells[0])), line(cells[-1])]
            out.append(f"per sample (mean of {self.n_samples}); E_MAC={self.e_mac_pj:g} pJ, "
                       f"E_AC={self.e_ac_pj:g} pJ; energy = E_MAC*MACs + E_AC*SynOps")
            out += [f"note: {n}" for n in self.notes]
            if self.host:
                h = self.host
                out.append(f"host (not in SynOps/energy): {_cell(h['macs'])} MACs in {h['products']} products; "
                           f"chip -> host {_cell(h['to_host_values'])} values ({_cell(h['to_host_spikes'])} spikes), "
                           f"host -> chip {_cell(h['from_host_values'])} values ({_cell(h['from_host_spikes'])} "
                           f"spikes) per sample")
            b = self.barrier_summary()
            if b:
                mem = ", ".join(f"{k} +{v}" for k, v in b["kernel_memory_extra"].items())
                factor = f"{b['synops_factor']:.2f}x" if b["synops_factor"] else "n/a"
                out.append(f"Speck layer barrier: {b['host_gate_events']} host gate events and {b['sequence_points']} "
                           f"sequence points per sample; gate SynOps {_cell(b['gate_synops'])} (total SynOps {factor} the "
                           f"table's); "
                           f"extra kernel words per layer: {mem}; latency ~{1e3 * b['latency_s']:.3g} ms at an "
                           f"assumed {b['assumed_synops_per_s_per_core']:.0e} SynOps/s per core")
            return "\n".join(out) + "\n"
        raise NeurodeployError(f"unknown profile format {fmt!r}", fix="use 'table', 'json' or 'csv'")

    def plot(self, path: str | os.PathLike) -> Path:
        """PNG bar charts of per-layer SynOps (and MACs) and energy, written atomically."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = [r for r in self.layers if r.kind in ("Conv2d", "Conv1d", "Linear")]
        names = [r.name for r in rows]
        x = np.arange(len(rows))
        fig = Figure(figsize=(max(6.0, 0.6 * len(rows) + 2), 6.0), dpi=100)
        FigureCanvasAgg(fig)
        ax1, ax2 = fig.subplots(2, 1, sharex=True)
        ax1.bar(x - 0.2, [r.synops or 0 for r in rows], 0.4, label="SynOps (AC)")
        ax1.bar(x + 0.2, [r.macs or 0 for r in rows], 0.4, label="MACs")
        ax1.set_ylabel("ops / sample")
        ax1.legend(loc="upper right")
        ax1.set_title("per-layer work")
        ax2.bar(x, [r.energy_pj or 0 for r in rows], 0.6, color="tab:red")
        ax2.set_ylabel("energy (pJ / sample)")
        ax2.set_title(f"energy: E_MAC={self.e_mac_pj:g} pJ, E_AC={self.e_ac_pj:g} pJ; "
                      f"total {self.totals.energy_pj or 0:.4g} pJ")
        ax2.set_xticks(x)
        ax2.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
        return Path(path)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.6g}"


def _csv_cell(v):
    if isinstance(v, float):
        return repr(v)
    return v


# -- fan-out computation --------------------------------------------------------------------------

def _ones_layer(node: ir.Node, x: torch.Tensor) -> torch.Tensor:
    """The weight layer with all-ones weights and no bias (its connectivity)."""
    w = torch.ones(tuple(np.shape(node.weight if node.weight is not None else node.weight_q)),
                   dtype=torch.float64)
    if isinstance(node, ir.Conv2d):
        return F.conv2d(x, w, None, node.stride, node.padding, node.dilation, node.groups)
    if isinstance(node, ir.Conv1d):
        return F.conv1d(x, w, None, node.stride, node.padding, node.dilation, node.groups)
    return F.linear(x, w)


def _struct_op(node: ir.Node, ins: list[torch.Tensor]) -> torch.Tensor:
    if isinstance(node, ir.Scale):
        return ins[0]  # events are unchanged; the scale folds into the next weights
    if isinstance(node, ir.AvgPool2d):  # counted as its sum-pool events
        node = ir.SumPool2d(kernel=node.kernel, stride=node.stride, padding=node.padding)
    return ops.linear_op(node, ins)


def _is_spike_leaf(node: ir.Node) -> bool:
    return isinstance(node, ir.IFNeuron) or (isinstance(node, ir.Input) and node.is_spikes)


def _leaves(graph: ir.Graph, name: str) -> list[str]:
    """Nodes feeding ``name`` through structural nodes (``name`` itself if it is not structural)."""
    node = graph.nodes[name]
    if isinstance(node, _STRUCTURAL):
        out: list[str] = []
        for i in graph.inputs_of(name):
            for leaf in _leaves(graph, i):
                if leaf not in out:
                    out.append(leaf)
        return out
    return [name]


def _path_value(graph: ir.Graph, name: str, leaf_values: dict, memo: dict) -> torch.Tensor:
    if name in leaf_values:
        return leaf_values[name]
    if name not in memo:
        node = graph.nodes[name]
        memo[name] = _struct_op(node, [_path_value(graph, i, leaf_values, memo) for i in graph.inputs_of(name)])
    return memo[name]


def fanout_map(graph: ir.Graph, layer: str) -> dict[str, torch.Tensor]:
    """Exact fan-out (synapses reached per unit of value) of every source position of weight layer
    ``layer``, per source node (shape = the source's per-sample shape), through the structural path.
    Requires ``node.shape`` to be set (``ir.infer_shapes``)."""
    node = graph.nodes[layer]
    src = graph.inputs_of(layer)[0]
    leaves = _leaves(graph, src)
    xs = {leaf: torch.ones((1,) + tuple(graph.nodes[leaf].shape), dtype=torch.float64, requires_grad=True)
          for leaf in leaves}
    y = _ones_layer(node, _path_value(graph, src, xs, {}))
    grads = torch.autograd.grad(y.sum(), [xs[leaf] for leaf in leaves], allow_unused=True)
    return {leaf: (g[0].detach() if g is not None else torch.zeros(tuple(graph.nodes[leaf].shape), dtype=torch.float64))
            for leaf, g in zip(leaves, grads)}


def _fan_in(node: ir.Node) -> int:
    shape = np.shape(node.weight if node.weight is not None else node.weight_q)
    return int(np.prod(shape[1:]))


# -- main entry -----------------------------------------------------------------------------------

def profile(graph: ir.Graph, values: dict, *, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ) -> ProfileReport:
    """Profile ``graph`` on one batch of per-node ``values`` (see the module docstring)."""
    g = graph
    if any(node.shape is None for node in g.nodes.values()):
        g = ir.infer_shapes(graph.copy())

    cache: dict[str, torch.Tensor] = {}

    def val(name: str) -> torch.Tensor:
        if name not in cache:
            if name not in values:
                raise NeurodeployError(
                    f"no value for '{name}' in the values given to profile()", layer=name,
                    fix="pass ops.evaluate(graph, x) or a simulator's per-layer spike counts "
                        "(every IF layer and the Input)")
            v = values[name]
            t = v.detach().to(torch.float64) if isinstance(v, torch.Tensor) else torch.as_tensor(
                np.asarray(v), dtype=torch.float64)
            shape = tuple(g.nodes[name].shape)
            if tuple(t.shape) == shape:
                t = t.unsqueeze(0)
            if tuple(t.shape[1:]) != shape:
                raise NeurodeployError(f"value of shape {tuple(t.shape)} does not match the layer's "
                                       f"per-sample shape {shape}", layer=name)
            cache[name] = t
        return cache[name]

    rows: list[LayerProfile] = []
    notes: list[str] = []
    n_samples = None
    for name in g.topo_order():
        node = g.nodes[name]
        if isinstance(node, ir.WEIGHT_NODES):
            src = g.inputs_of(name)[0]
            leaves = _leaves(g, src)
            spiking = all(_is_spike_leaf(g.nodes[leaf]) for leaf in leaves)
            out_n = int(np.prod(node.shape))
            row = LayerProfile(name=name, kind=node.kind, source=",".join(leaves),
                               input="spikes" if spiking else "dense", neurons=out_n)
            # connectivity: fan-out map at the layer's own input
            x_in = torch.ones((1,) + tuple(g.nodes[src].shape), dtype=torch.float64, requires_grad=True)
            (fo_in,) = torch.autograd.grad(_ones_layer(node, x_in).sum(), [x_in])
            row.synapses = int(round(float(fo_in.sum())))
            if spiking:
                fmap = fanout_map(g, name)
                counts = {leaf: val(leaf) for leaf in leaves}
                n_samples = n_samples or next(iter(counts.values())).shape[0]
                synops = sum((counts[leaf] * fmap[leaf]).flatten(1).sum(1) for leaf in leaves)
                x_counts = _path_value(g, src, counts, {})
                row.synops = float(synops.mean())
                row.input_spikes = float(x_counts.flatten(1).sum(1).mean())
                row.macs = 0.0
                if any(not torch.equal(c, torch.round(c)) for c in counts.values()):
                    notes.append(f"{name}: source values are not integer spike counts")
            else:
                row.macs = float(out_n * _fan_in(node))
                row.synops = 0.0
                dense = [leaf for leaf in leaves if not _is_spike_leaf(g.nodes[leaf])]
                if any(not isinstance(g.nodes[leaf], ir.Input) for leaf in dense):
                    notes.append(f"{name}: real-valued input from {','.join(dense)} counted as dense MACs")
            row.energy_pj = e_mac_pj * row.macs + e_ac_pj * row.synops
            rows.append(row)
        elif isinstance(node, ir.IFNeuron):
            counts = val(name)
            n_samples = n_samples or counts.shape[0]
            neurons = int(np.prod(node.shape))
            spikes = float(counts.flatten(1).sum(1).mean())
            upd = neurons * int(node.max_spikes)
            rows.append(LayerProfile(
                name=name, kind="IFNeuron", source=",".join(g.inputs_of(name)), neurons=neurons,
                timesteps=int(node.max_spikes), neuron_updates=upd, spikes=spikes,
                firing_rate=spikes / upd if upd else 0.0))

    host = _host_summary(g, val, rows)
    w_rows = [r for r in rows if r.kind not in ("IFNeuron", "HostOp")]
    n_rows = [r for r in rows if r.kind == "IFNeuron"]
    tot_upd = sum(r.neuron_updates for r in n_rows)
    tot_spk = math.fsum(r.spikes for r in n_rows)
    totals = LayerProfile(
        name="TOTAL", kind="", neurons=sum(r.neurons for r in n_rows),
        synapses=sum(r.synapses for r in w_rows),
        input_spikes=math.fsum(r.input_spikes or 0.0 for r in w_rows),
        synops=math.fsum(r.synops for r in w_rows), macs=math.fsum(r.macs for r in w_rows),
        neuron_updates=tot_upd, spikes=tot_spk, firing_rate=tot_spk / tot_upd if tot_upd else None,
        energy_pj=math.fsum(r.energy_pj for r in w_rows))
    if host:
        totals.host_macs = host["macs"]
    return ProfileReport(layers=rows, totals=totals, e_mac_pj=float(e_mac_pj), e_ac_pj=float(e_ac_pj),
                         n_samples=int(n_samples or 1), notes=notes, host=host)


def _host_summary(g: ir.Graph, val, rows: list) -> dict | None:
    """Host rows (one per product, after the chip rows) and the cut tensors."""
    from .passes.partition import host_macs, partition

    part = partition(g)
    if part.empty:
        return None
    products = [n for n in part.host if isinstance(g.nodes[n], ir.HostOp) and g.nodes[n].bilinear]
    for n in products:
        rows.append(LayerProfile(name=n, kind="HostOp", source=",".join(g.inputs_of(n)), input="host",
                                 neurons=0, host_macs=float(host_macs(g, n))))

    def crossing(names):
        values = sum(int(np.prod(g.nodes[n].shape)) for n in names)
        spikes = 0.0
        for n in names:
            src = g.behind_views(n)
            if isinstance(g.nodes[src], ir.IFNeuron):
                spikes += float(val(src).flatten(1).sum(1).mean())
        return values, spikes

    to_v, to_s = crossing(part.to_host)
    from_v, from_s = crossing(part.from_host)
    return {"macs": float(sum(host_macs(g, n) for n in products)), "products": len(products),
            "host_nodes": list(part.host), "to_host": list(part.to_host), "from_host": list(part.from_host),
            "to_host_values": to_v, "to_host_spikes": to_s, "from_host_values": from_v,
            "from_host_spikes": from_s}
