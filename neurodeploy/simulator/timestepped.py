"""Simulation of time-stepped graphs (:class:`ir.LIFNeuron` layers over the graph's T steps).

The dynamics are :func:`neurodeploy.ops.evaluate_timestepped` (one definition of the semantics),
batched over samples in float64; this module packages them as a :class:`SimResult`: spike counts
and trains ``[B, T, *shape]`` (uint8 for single-spike neurons; sinabs MultiSpike layers may fire
several spikes per step, so their trains hold counts), outputs, and optionally membranes.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import ir, ops
from ..errors import NeurodeployError


def simulate_timestepped(graph: ir.Graph, x, *, batch_size: int | None = None, membranes: bool = False):
    from .core import SimResult

    if graph.is_quantized:
        raise NeurodeployError("integer simulation of time-stepped (LIF) graphs is not built yet",
                               fix="simulate the unquantised graph (float64)")
    xs = ops.as_tensor(x)
    bs = int(batch_size) if batch_size else max(xs.shape[0], 1)
    lif = graph.of_type(ir.LIFNeuron)
    trains: dict[str, list] = {n: [] for n in lif}
    outs: dict[str, list] = {o: [] for o in graph.output_names()}
    mems: dict[str, list] = {n: [] for n in lif}
    with torch.inference_mode():
        for i in range(0, max(xs.shape[0], 1), bs):
            m: dict = {} if membranes else None
            values = ops.evaluate_timestepped(graph, xs[i:i + bs], membranes=m)
            for n in lif:
                trains[n].append(values[n].numpy())
                if membranes:
                    mems[n].append(m[n].numpy())
            for o in outs:
                outs[o].append(values[o].numpy())
    cat = {n: np.concatenate(v) for n, v in trains.items()}
    multi = {n for n in lif if graph.nodes[n].firing == "multi"}
    res = SimResult(counts={n: a.sum(1).astype(np.int64) for n, a in cat.items()},
                    trains={n: (a.astype(np.int64) if n in multi else a.astype(np.uint8)) for n, a in cat.items()},
                    outputs={o: np.concatenate(v) for o, v in outs.items()},
                    timesteps=ir.timesteps(graph) or 1, schedule="timestepped", quantized=False)
    if membranes:
        res.membranes = {n: np.concatenate(v) for n, v in mems.items()}
    return res
