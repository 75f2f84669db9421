"""The ``sim`` target: a bit-accurate integer simulator (no hardware limits).

* ``quantize``: :func:`neurodeploy.passes.quantize_fixed_point` (power-of-two scale per scale
  group, every accumulation < 2**52, so float64 sums of the integers are exact).
* ``emit``: the *simulator program* — ``graph.ir.npz`` (the quantised graph, deterministic bytes,
  :mod:`neurodeploy.ir_io`; the same file ``compile`` writes for every target, so there is one copy)
  and ``sim_program.json`` (a human-readable description: layers, integer parameters' ranges, scale
  groups, schedules and their latency).
* ``simulate``: :func:`neurodeploy.simulator.simulate` (``schedule='sync'|'streaming'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import ir
from ..artifacts import atomic_write, dumps_json
from ..errors import NeurodeployError
from .base import Target


def sync_latency(graph: ir.Graph) -> int:
    """Timesteps of the layer-synchronous schedule (sum of D along the longest neuron chain)."""
    ready: dict[str, int] = {}
    for name in graph.topo_order():
        node = graph.nodes[name]
        t0 = max([ready[i] for i in graph.inputs_of(name)] + [0])
        ready[name] = t0 + (node.max_spikes if isinstance(node, ir.IFNeuron) else 0)
    return max(ready.values(), default=0)


def describe(graph: ir.Graph) -> dict:
    """JSON description of a quantised graph for the simulator program."""
    layers = []
    for name, node in graph:
        d = {"name": name, "kind": node.kind, "source": node.source, "inputs": graph.inputs_of(name),
             "shape": list(node.shape) if node.shape is not None else None}
        if isinstance(node, ir.WEIGHT_NODES) and node.weight_q is not None:
            d["weight_shape"] = list(node.weight_q.shape)
            d["weight_q_absmax"] = int(np.max(np.abs(node.weight_q))) if node.weight_q.size else 0
            d["bias_q_absmax"] = int(np.max(np.abs(node.bias_q))) if node.bias_q is not None and node.bias_q.size else 0
            for k in ("stride", "padding", "dilation", "groups"):
                if hasattr(node, k):
                    v = getattr(node, k)
                    d[k] = list(v) if isinstance(v, tuple) else v
        if isinstance(node, ir.IFNeuron):
            d.update(threshold_q=node.threshold_q, v_init_q=node.v_init_q, max_spikes=node.max_spikes,
                     rounding=node.rounding, reset="subtract")
        if isinstance(node, ir.SumPool2d):
            d.update(kernel=list(node.kernel), stride=list(node.stride), padding=list(node.padding))
        if isinstance(node, ir.Input):
            d.update(scale_q=node.scale_q, is_spikes=node.is_spikes)
        layers.append(d)
    return {
        "program": "neurodeploy sim",
        "semantics": "integer IF neurons, subtractive reset, <= 1 spike per neuron per step, <= D spikes; "
                     "values are integers (held in float64, every sum < 2**52)",
        "schedules": {
            "sync": {"latency_steps": sync_latency(graph),
                     "rule": "a layer integrates its whole input, then steps D timesteps (barrier)"},
            "streaming": {"rule": "all layers step together, one timestep per synapse; input and biases at step 0"},
        },
        "quantization": graph.metadata.get("quantization"),
        "layers": layers,
    }


PROGRAM_FILE = "graph.ir.npz"  # the quantised graph is the program: no second copy under another name


class SimTarget(Target):
    name = "sim"

    def check(self, graph: ir.Graph) -> list[str]:
        from ..passes.fold import CANONICAL_TYPES

        out = []
        for name, node in graph.nodes.items():
            if isinstance(node, ir.HostOp) and node.op not in ir.HOST_OPS:
                out.append(f"layer '{node.source or name}': '{node.op}' must run on the host ({node.reason}); "
                           "fix: deploy the part before it (--until)")
            elif not isinstance(node, CANONICAL_TYPES + (ir.HostOp,)) or isinstance(node, ir.AvgPool2d):
                out.append(f"layer '{node.source or name}': {node.kind} is not canonical; "
                           "fix: run neurodeploy.passes.canonicalize")
            elif isinstance(node, ir.IFNeuron) and node.norm != 1:
                out.append(f"layer '{node.source or name}': activation norm {node.norm:g} not folded; "
                           "fix: run neurodeploy.passes.fold_norms")
        if len(graph.input_names()) != 1:
            out.append(f"graph has {len(graph.input_names())} inputs; the sim target supports exactly one")
        return out

    def quantize(self, graph: ir.Graph, calibration=None, **options) -> ir.Graph:
        from ..passes.quantize import quantize_fixed_point

        keys = ("input_frac_bits", "input_range", "accumulator_bits", "max_frac_bits")
        return quantize_fixed_point(graph, calibration, **{k: v for k, v in options.items() if k in keys})

    def emit(self, graph: ir.Graph, out_dir: Path, **options) -> dict[str, Path]:
        from ..ir_io import save_graph

        if not graph.is_quantized:
            raise NeurodeployError("the sim program needs a quantised graph", fix="call SimTarget().quantize first")
        out_dir = Path(out_dir)
        prog = save_graph(graph, out_dir / PROGRAM_FILE)
        desc = atomic_write(out_dir / "sim_program.json", dumps_json({"program_file": PROGRAM_FILE, **describe(graph)}))
        return {"sim_program": prog, "sim_program_description": desc}

    def simulate(self, graph: ir.Graph, x, **options):
        from ..simulator import simulate

        return simulate(graph, x, **options)
