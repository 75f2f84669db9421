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
    order='depth', start_tick=False, no budget) whenever that engine is importable; ``_kernel.py`` is
    a small local numba kernel with the same depth-first arithmetic (same event and kernel-tap order,
    tested equal) used only when the engine is missing or with ``engine='local'``; its 'breadth'
    order is a FIFO over the sample's events, not the engine's layer barrier.
    ``SpeckSimResult.engine`` says which one ran.

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
from . import _kernel
from .events import as_counts, events_as_cyx, raster_to_events
from .layers import extract


@dataclass
class SpeckSimResult:
    counts: dict  # neuron name -> int64 tensor [B, *neuron shape]
    synops: dict  # layer name -> int64 array [B] (synaptic operations, exact)
    input_events: np.ndarray  # [B]
    spikes: dict  # neuron name -> [B] total spikes
    settings: dict = field(default_factory=dict)
    engine: str = "local"
    schedule: str = "speck"  # the name the caller asked for (SimResult compatibility)
    timesteps: int = 0  # rounds of the round-robin input (no clock on the chip)
    near_ties: dict | None = None
    saturations: int | None = None  # membrane updates clipped (shared engine only)

    def total_spikes(self) -> dict:
        return {k: int(v.sum()) for k, v in self.counts.items()}


@dataclass
class _Compiled:
    names: list
    neurons: list
    P: np.ndarray
    wflat: np.ndarray
    vinit: np.ndarray
    dst: np.ndarray
    dpool: np.ndarray
    voff: list
    shapes: list


def compile_net(graph: ir.Graph) -> _Compiled:
    if not graph.is_quantized:
        raise NeurodeployError("simulate needs a Speck-quantised graph", fix="run SpeckTarget().quantize first")
    net = extract(graph)
    if net.violations:
        from ...errors import DesignRuleError
        raise DesignRuleError([str(v) for v in net.violations], "speck")
    from .layers import bias_vec, weight4
    names = list(net.layers)
    idx = {n: i for i, n in enumerate(names)}
    L = len(names)
    P = np.zeros((L, 16), dtype=np.int64)
    dst = -np.ones((L + 1, 2), dtype=np.int64)
    dpool = np.ones((L + 1, 2), dtype=np.int64)
    wparts, vparts, voff, shapes = [], [], [], []
    woff = 0
    vo = 0
    for i, n in enumerate(names):
        l = net.layers[n]
        node = graph.nodes[n]
        neuron = graph.nodes[l.neuron]
        w4 = weight4(node, l, quantized=True).astype(np.int64)
        f, c, kh, kw = w4.shape
        if kh != kw:
            raise NeurodeployError(f"non-square kernel {kh}x{kw}", layer=n)
        _, hin, win = l.in_shape
        _, ho, wo = l.out_shape
        b = bias_vec(node, quantized=True).astype(np.int64)
        v0 = int(neuron.v_init_q or 0)
        low = neuron.low_threshold_q if neuron.low_threshold_q is not None else -(2 ** 15)
        P[i] = [c, hin, win, f, ho, wo, kh, l.stride[0], l.stride[1], l.padding[0], l.padding[1],
                int(neuron.threshold_q), int(low), int(neuron.max_spikes), woff, vo]
        wparts.append(w4.ravel())
        vparts.append(np.repeat(v0 + b, ho * wo))
        voff.append(vo)
        shapes.append((f, ho, wo))
        woff += w4.size
        vo += f * ho * wo
        for j, d in enumerate(l.destinations):
            dst[i, j] = idx[d.layer]
            dpool[i, j] = d.pool
    for j, d in enumerate(net.input_destinations):
        dst[L, j] = idx[d.layer]
        dpool[L, j] = d.pool
    return _Compiled(names, [net.layers[n].neuron for n in names], P, np.concatenate(wparts),
                     np.concatenate(vparts).astype(np.int64), dst, dpool, voff, shapes)


def input_counts(graph: ir.Graph, x) -> np.ndarray:
    """The integer input raster of each sample (rate coded if the input is real-valued)."""
    inp = graph.nodes[graph.input_names()[0]]
    xq = ops.quantize_input(inp, ops.as_tensor(x), quantized=True).numpy()
    return as_counts(xq)


def simulate_events(graph: ir.Graph, x, *, rule: str = "single", order: str = "depth", saturate: bool = True,
                    budget: bool = False, engine: str = "auto") -> SpeckSimResult:
    """Event-driven simulation (see module docstring). ``x``: a batch [B, *input_shape].

    ``engine``: 'auto' (the shared ``neurodeploy.engine`` when importable, else local), 'shared'
    or 'local'. Note ``order='breadth'`` means a layer barrier on the shared engine but a FIFO
    over the sample's events on the local kernel; depth order is identical on both.
    """
    if rule not in ("single", "multi") or order not in ("depth", "breadth"):
        raise NeurodeployError(f"unknown rule/order {rule!r}/{order!r}", fix="rule: single|multi, order: depth|breadth")
    settings = dict(rule=rule, order=order, saturate=saturate, budget=budget)
    if engine in ("auto", "shared"):
        if _shared_engine() is not None:
            return _run_shared(graph, x, settings)
        if engine == "shared":
            raise NeurodeployError("the shared event engine (neurodeploy.engine) is not importable")
    return _run_local(graph, x, settings)


def _run_local(graph: ir.Graph, x, settings: dict) -> SpeckSimResult:
    cn = compile_net(graph)
    P = cn.P.copy()
    if not settings["budget"]:
        P[:, 13] = -1
    counts_in = input_counts(graph, x)
    B = counts_in.shape[0]
    evs = [events_as_cyx(raster_to_events(counts_in[b])) for b in range(B)]
    off = np.zeros(B + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(e) for e in evs])
    ev_all = np.concatenate(evs) if evs else np.zeros((0, 3), dtype=np.int64)
    counts = np.zeros((B, cn.vinit.shape[0]), dtype=np.int64)
    syn = np.zeros((B, len(cn.names)), dtype=np.int64)
    _kernel.run_batch(P, cn.wflat.astype(np.int64), cn.vinit, cn.dst, cn.dpool, ev_all.reshape(-1, 3), off,
                      0 if settings["rule"] == "single" else 1, 0 if settings["order"] == "depth" else 1,
                      bool(settings["saturate"]), counts, syn)
    out, spikes, synops = {}, {}, {}
    for i, (lname, nname) in enumerate(zip(cn.names, cn.neurons)):
        f, ho, wo = cn.shapes[i]
        c = counts[:, cn.voff[i]:cn.voff[i] + f * ho * wo]
        out[nname] = torch.from_numpy(c.reshape((B,) + tuple(graph.nodes[nname].shape)).copy())
        spikes[nname] = c.sum(axis=1)
        synops[lname] = syn[:, i].copy()
    return SpeckSimResult(out, synops, off[1:] - off[:-1], spikes, settings, "local",
                          timesteps=int(counts_in.max(initial=0)))


def _shared_engine():
    try:
        from ...engine import run_events_batch  # noqa: F401
        return run_events_batch
    except ImportError:
        return None


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
