"""Time-stepped IAF graphs on Speck, as sinabs deploys them: input in T time bins.

Speck's neuron is an integrate-and-fire neuron with subtractive reset and no leak (a bias driven
by a slow clock is the only leak-like term). A time-stepped graph whose neurons are all IAF —
``beta = 1``, ``gain = 1``, reset by subtraction in the same step, firing ``'multi'`` (sinabs
``IAF`` / ``IAFSqueeze`` with MultiSpike, what sinabs' time-binned simulation computes) — becomes
the Speck graph of :class:`ir.IFNeuron` layers (``v_init = 0``, floor rounding, the largest spike
budget: time bins, not a budget, bound the spikes) and runs through the Speck quantiser and
``simulate(..., mode='binned')`` bin for bin. Everything else is a design-rule error naming every
offending layer: leaky neurons, reset to zero, single-spike firing (the binned mode is
MultiSpike; the chip itself fires one spike per input event, see the Speck section), snnTorch's
delayed subtraction, per-layer ``min_v_mem`` (give one ``low_threshold`` to the quantiser).
"""

from __future__ import annotations

import numpy as np

from ... import ir
from ...errors import DesignRuleError
from ...limits import MAX_SPIKE_BUDGET


def iaf_violations(graph: ir.Graph) -> list[str]:
    out = []
    for name in graph.of_type(ir.LIFNeuron):
        n = graph.nodes[name]
        where = f"layer '{n.source or name}'"
        if n.leaky:
            beta = np.asarray(n.beta).reshape(-1)
            out.append(f"{where}: leaky neuron (beta = {beta[0]:.6g}{'...' if beta.size > 1 else ''}): Speck neurons "
                       "have no leak; fix: use IAF neurons (sinabs IAF, SpikingJelly IFNode, snnTorch Leaky(beta=1))")
        if n.synaptic:
            out.append(f"{where}: synaptic current (current-based LIF, snnTorch Synaptic / NIR CubaLIF): Speck "
                       "neurons integrate their input directly; fix: use IAF neurons without a current state")
        if np.any(np.asarray(n.gain) != 1.0):
            out.append(f"{where}: input gain {np.asarray(n.gain).reshape(-1)[0]:.6g} != 1; fix: fold it into the weights")
        if n.reset != "subtract" or n.reset_timing != "same_step":
            out.append(f"{where}: reset '{n.reset}' ({n.reset_timing}); fix: Speck resets by subtraction in the "
                       "same step (sinabs MembraneSubtract)")
        if n.firing != "multi":
            out.append(f"{where}: firing '{n.firing}'; fix: the time-binned mode is sinabs MultiSpike (spike_fn=MultiSpike)")
        if n.v_init:
            out.append(f"{where}: initial membrane {n.v_init:g}; fix: start at 0 as sinabs does")
    return out


def speck_graph(graph: ir.Graph, *, input_is_spikes: bool = True) -> ir.Graph:
    """The Speck (IFNeuron) graph of a time-stepped IAF graph; ``metadata['time_bins'] = T``."""
    bad = iaf_violations(graph)
    if bad:
        raise DesignRuleError(bad, "speck")
    g = graph.copy()
    for name in g.of_type(ir.LIFNeuron):
        n = g.nodes[name]
        g.nodes[name] = ir.IFNeuron(threshold=float(n.threshold), max_spikes=MAX_SPIKE_BUDGET, rounding="floor",
                                    v_init=0.0, norm=1.0, source=n.source, shape=n.shape,
                                    meta={**n.meta, "time_stepped": True})
    T = g.metadata.pop("timesteps", None)
    g.metadata["time_bins"] = T
    for name in g.input_names():
        g.nodes[name].is_spikes = bool(input_is_spikes)
    return g
