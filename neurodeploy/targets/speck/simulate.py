"""Bit-accurate Speck simulation of a Speck-quantised graph.

Two modes:

``simulate_events`` (the chip: asynchronous, event by event)
    Input events come from the integer input raster (``events.raster_to_events``: round-robin,
    deterministic). Every core integrates each event at once (8-bit weights into the 16-bit state),
    then each touched neuron fires **at most one spike per input event** when v >= threshold_high
    (rule='single'), subtracts θ (return_to_zero=False), and the state saturates at threshold_low
    and at the 16-bit range (saturate=True). Spikes travel to the destinations (sum-pooled) and are
    processed **depth first**. The bias is folded into ``neurons_initial_value`` (v_init_q + b_q, no
    leak / slow clock: the artefact's ``bias_mode='initial'``), so a neuron only ever fires on an
    input event. There is no spike budget D on the chip (budget=False). The knobs ``rule``
    ('single' | 'multi'), ``order`` ('depth' | 'breadth'), ``saturate`` and ``budget`` give the
    configurations of verify's ladder.

    It runs on the shared event engine (``neurodeploy.engine.run_events_batch`` with rule='single',
    order='depth', start_tick=False, no budget).

``simulate_binned`` (what sinabs' time-binned simulation computes)
    Input given per time bin ``[B, T, *input_shape]``; per bin every layer computes
    ``I = conv(x_t, w_q) + b_q`` (sinabs applies the bias in every bin), ``v += I``,
    ``n = (v > 0)·trunc(v/θ)`` (``MultiSpike``: several spikes per bin), ``v -= n·θ``
    (``MembraneSubtract``), ``v = max(v, low)`` (``min_v_mem``); v starts at v_init_q. No 16-bit
    clamp (sinabs has none) unless ``saturate16=True``. Equal to sinabs' ``IAFSqueeze`` layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ... import ir, ops
from ...errors import NeurodeployError
from .events import as_counts
from .layers import extract


@dataclass
class SpeckSimResult:
    counts: dict  # neuron name -> int64 tensor [B, *neuron shape]
    synops: dict  # layer name -> int64 array [B] (synaptic operations, exact)
    input_events: np.ndarray  # [B]
    spikes: dict  # neuron name -> [B] total spikes
    settings: dict = field(default_factory=dict)
    engine: str = "neurodeploy.engine"
    schedule: str = "speck"  # the name the caller asked for (SimResult compatibility)
    timesteps: int = 0  # rounds of the round-robin input (no clock on the chip)
    near_ties: dict | None = None
    saturations: int | None = None  # membrane updates clipped (shared engine only)

    def total_spikes(self) -> dict:
        return {k: int(v.sum()) for k, v in self.counts.items()}


def input_counts(graph: ir.Graph, x) -> np.ndarray:
    """The integer input raster of each sample (rate coded if the input is real-valued)."""
    inp = graph.nodes[graph.input_names()[0]]
    xq = ops.quantize_input(inp, ops.as_tensor(x), quantized=True).numpy()
    return as_counts(xq)


def simulate_events(graph: ir.Graph, x, *, rule: str = "single", order: str = "depth", saturate: bool = True,
                    budget: bool = False) -> SpeckSimResult:
    """Event-driven simulation on the shared engine (see module docstring). ``x``: a batch [B, *input_shape]."""
    if rule not in ("single", "multi") or order not in ("depth", "breadth"):
        raise NeurodeployError(f"unknown rule/order {rule!r}/{order!r}", fix="rule: single|multi, order: depth|breadth")
    return _run_shared(graph, x, dict(rule=rule, order=order, saturate=saturate, budget=budget))


def speck_engine_graph(graph: ir.Graph) -> ir.Graph:
    """The quantised graph as the chip sees it: the input is events (the rate-coded integer raster)."""
    g = graph.copy()
    inp = g.nodes[g.input_names()[0]]
    inp.is_spikes, inp.scale_q = True, None
    return g


def _run_shared(graph: ir.Graph, x, settings: dict) -> SpeckSimResult:
    """Run on ``neurodeploy.engine``: start_tick=False (a Speck neuron only fires on an input
    event; the bias sits in the initial value), no spike budget unless ``budget``."""
    from ...engine import run_events_batch, stack_counts
    net = extract(graph)
    g = speck_engine_graph(graph)
    raster = input_counts(graph, x)
    bound = None
    if not settings["budget"]:
        # the chip has no budget; the engine needs a bound: count <= events a neuron receives,
        # so take a generous one and grow it if any neuron reaches it
        bound = max(64, 4 * max(int(g.nodes[n].max_spikes) for n in g.neurons()))
    while True:
        res = run_events_batch(g, raster, rule=settings["rule"], order=settings["order"],
                               saturate=settings["saturate"], max_spikes=bound, start_tick=False)
        c = stack_counts(res)
        if bound is None or max(int(np.max(c[n], initial=0)) for n in g.neurons()) < bound:
            break
        bound *= 4
    counts = {n: torch.as_tensor(c[n]).to(torch.int64) for n in g.neurons()}
    spikes = {n: v.reshape(v.shape[0], -1).sum(1).numpy() for n, v in counts.items()}
    synops = {l: np.array([r.synops.get(l, 0) for r in res], dtype=np.int64) for l in net.layers}
    nin = np.array([r.input_events for r in res], dtype=np.int64)
    return SpeckSimResult(counts, synops, nin, spikes, settings, "neurodeploy.engine",
                          timesteps=int(raster.max(initial=0)), saturations=int(sum(r.saturations for r in res)))


def simulate_barrier(graph: ir.Graph, x, *, artefact: dict | None = None, seed: int | None = None,
                     saturate: bool = True, **plan_options) -> SpeckSimResult:
    """The chip running the layer-barrier artefact (``host.barrier_artefact``): per sample the
    stream of ``host.sample_event_stream`` (input events, then each layer's gate events; held
    initial values from the artefact's ``neurons_initial_value``), rule 'single', depth first, no
    budget, saturating. ``seed``: another interleaving of the input and of each release round."""
    from ...engine import EventEngine
    from .host import barrier_artefact, engine_gates, sample_event_stream, stream_to_engine
    from .layers import bias_vec
    art = artefact or barrier_artefact(graph, **plan_options)
    conf = art["config"]
    g = speck_engine_graph(graph)
    gates, gate_ids = engine_gates(art)
    offsets = {}
    for core in conf["cores"].values():  # held values as written, relative to v_init + bias
        held = np.asarray(core["neurons_initial_value"], np.int64).transpose(0, 2, 1)
        v0 = int(graph.nodes[core["neuron"]].v_init_q or 0) + bias_vec(graph.nodes[core["layer"]], quantized=True)
        offsets[core["neuron"]] = (held - np.asarray(v0, np.int64)[:, None, None]).reshape(-1)
    raster = input_counts(graph, x)
    streams = [stream_to_engine(sample_event_stream(art, raster[b], seed=None if seed is None else seed + b),
                                art, gate_ids) for b in range(raster.shape[0])]
    rounds = max(len(ph["rounds"]) for ph in art["host_program"]["release"])
    bound = max(64, 2 * rounds)
    eng = EventEngine(g, rule="single", order="depth", saturate=saturate, max_spikes=bound, start_tick=False,
                      gates=gates)
    res = [eng.run(None, stream=s, offsets=offsets) for s in streams]
    from ...engine import stack_counts
    c = stack_counts(res)
    counts = {n: torch.as_tensor(c[n]).to(torch.int64) for n in g.neurons()}
    spikes = {n: v.reshape(v.shape[0], -1).sum(1).numpy() for n, v in counts.items()}
    net = extract(graph)
    synops = {l: np.array([r.synops.get(l, 0) for r in res], dtype=np.int64) for l in net.layers}
    nin = np.array([int((s[0] >= 0).sum()) for s in streams], dtype=np.int64)
    settings = dict(rule="single", order="depth", saturate=saturate, budget=False, barrier=True, seed=seed,
                    host_events=int(art["host_program"]["host_events_per_sample"]),
                    cost=art["host_program"].get("cost") or _barrier_cost(net, art))
    return SpeckSimResult(counts, synops, nin, spikes, settings, "neurodeploy.engine", schedule="barrier",
                          timesteps=int(raster.max(initial=0)), saturations=int(sum(r.saturations for r in res)))


def _barrier_cost(net, art: dict) -> dict | None:
    if "plan" not in art:
        return None
    from .barrier import barrier_cost
    return barrier_cost(net, art["config"]["layer_to_core"], art["plan"])


# -- time-binned multi-spike mode (sinabs) --------------------------------------------------------

@dataclass
class BinnedResult:
    counts: dict  # neuron -> [B, *shape] total over bins
    per_bin: dict  # neuron -> [B, T, *shape]


def simulate_binned(graph: ir.Graph, x_bins, *, saturate16: bool = False) -> BinnedResult:
    """sinabs' time-binned simulation of the quantised network; ``x_bins`` [B, T, *input_shape]."""
    if not graph.is_quantized:
        raise NeurodeployError("simulate_binned needs a quantised graph")
    xb = ops.as_tensor(x_bins)
    B, T = xb.shape[:2]
    order = graph.topo_order()
    state: dict[str, torch.Tensor] = {}
    per_bin: dict[str, list] = {n: [] for n in graph.neurons()}
    for t in range(T):
        vals: dict[str, torch.Tensor] = {}
        for name in order:
            node = graph.nodes[name]
            ins = [vals[i] for i in graph.inputs_of(name)]
            if isinstance(node, ir.Input):
                vals[name] = ops.quantize_input(node, xb[:, t], True)
            elif isinstance(node, ir.IFNeuron):
                cur = ins[0]
                if name not in state:
                    state[name] = torch.full_like(cur, float(node.v_init_q or 0))
                v = state[name] + cur
                if saturate16:
                    v = v.clamp(-(2 ** 15), 2 ** 15 - 1)
                theta = float(node.threshold_q)
                n = (v > 0) * torch.div(v, theta, rounding_mode="trunc")
                v = v - n * theta
                if node.low_threshold_q is not None:
                    v = torch.clamp(v, min=float(node.low_threshold_q))
                state[name] = v
                vals[name] = n
                per_bin[name].append(n)
            else:
                vals[name] = ops.linear_op(node, ins, quantized=True)
    pb = {n: torch.stack(v, 1) for n, v in per_bin.items()}
    return BinnedResult({n: v.sum(1) for n, v in pb.items()}, pb)


def spread_counts(raster, T: int) -> torch.Tensor:
    """[B, *shape] counts -> [B, T, *shape]: the r-th unit of each pixel in bin r (mod T)."""
    r = ops.as_tensor(raster)
    bins = [torch.clamp(r - t, min=0) - torch.clamp(r - t - 1, min=0) for t in range(T)]
    out = torch.stack(bins, 1)
    rest = torch.clamp(r - T, min=0)
    out[:, -1] += rest
    return out
