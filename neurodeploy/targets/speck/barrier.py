"""The in-network layer barrier on Speck: hold every neuron below threshold until its layer's input
is complete, then release it with host-injected "gate" events.

Notation (one neuron of a layer, all integers of the quantised layer): θ = ``threshold_q``, D the
spike budget, v0 = ``v_init_q`` + b_q (the initial value without hold), x the total synaptic input of
the sample, y = x + v0. The layer-barrier model (the ladder's R2) gives n = clip(floor(y/θ), 0, D)
(one fewer on an exact half-even tie). Speck fires when v >= θ, at most once per input event that
reaches the neuron, and subtracts θ.

Hold
----
The neuron starts at v0 - H. Let P = Σ_j max(w_j, 0)·c_j and N = Σ_j max(-w_j, 0)·c_j, where c_j
bounds the number of events input j can carry in one sample. Every partial sum s of the input
(any order, any prefix) satisfies -N <= s <= P. With **H >= P + v0 - θ + 1** the state
v0 - H + s <= θ - 1 never fires during the input, and with **v0 - H - N >= threshold_low**
(and >= -32768) the floor never clips it, so when the input is complete v = y - H exactly,
in every interleaving. (``plan_barrier`` raises, naming the layer, when the 16-bit state cannot hold
it.) The bound c_j: the input's events per pixel (``input_bound``), times pool² for a pooled
destination; for a layer source either its budget D (``bounds='budget'``: *assumed*, true when no
source neuron is over budget) or the most spikes the barrier can make it fire (``bounds='weights'``:
*guaranteed*, min(release events, floor(y_max/θ)) of the source). ``bounds='calibration'``
(*assumed*) takes P and N as ``margin`` × the largest partial sums a calibration batch produces
(never above the 'budget' bound).

Release (after the layer's input is complete; the next layer is still held)
----------------------------------------------------------------------------
Gate features are extra input features of the core whose k×k kernel is g_f at every tap
(|g_f| <= 127, per output channel f). An event at input position (y, x) reaches output (oy, ox)
through the one tap (y + p - oy·s, x + p - ox·s) when that lies in the kernel, so it adds g_f to
every neuron of the outputs it covers. ``gate_cover`` picks, per axis, input positions whose
covers partition the outputs (e.g. y = 1, 4, 7 for 8 outputs, k = 3, s = 1, p = 1; one event for
a Linear layer): one round = one event per cell of that partition, and it adds g_f exactly once to
every neuron. The
release (``release_gates``) is, for θ < 127: k "lift" events of weight a_f (θ < a_f <= 127 allowed),
then m = D "unit" events of weight u = θ, H_f = k·a_f + Dθ (two gate features); for θ >= 127: r
"release" events of weight a_f <= 127 <= θ, H_f = r·a_f (one gate feature: Claim 1 applies to every
event, and a lift could not cap anything anyway, by Claim 3). Claim 2 below is stated with m events
of u <= θ, m·u >= Dθ.

**Claim 1** (chunks <= θ are exact, no cap). If from v = y - H < θ a neuron receives events of
weights e_1..e_r >= 0, each <= θ, summing to H, it fires exactly max(floor(y/θ), 0) times.
*Proof.* Invariant v < θ before every event: after adding e <= θ, v < 2θ, one spike brings it
below θ. Spikes only happen at v >= θ, leaving v >= 0, and later events only add, so if the
neuron fired at all its final value lies in [0, θ). The final value is y - sθ (s spikes), so
s = floor(y/θ); if it never fired, y < θ and floor(y/θ) <= 0 = s. ∎

**Claim 2** (lift, then units: exact for n <= D). For a neuron with n = floor(y/θ) <= D, i.e.
y < (D+1)θ, during the lift v rises monotonically to at most y - H + k·a_f = y - m·u <= y - Dθ < θ:
it never fires during the lift (whatever a_f <= 127, even a_f > θ). It then gets m events each
<= θ summing to m·u, from v = y - m·u < θ: by Claim 1 it fires max(floor(y/θ), 0) = clip(floor(y/θ),
0, D) times. Ties: exact ties fire (v >= θ), so half-up and floor rounding are exact; the
half-even rule (one fewer on an exact odd tie) cannot be made by an input-independent schedule
and is counted (``tie`` neurons) instead.

**Claim 3** (no cap for large y). Let a gate schedule (increments c_t with |c_t| <= c_max <= 127,
each event reaching the neuron; the same for every input, since the host does not know y) start
from a hold H >= Dθ + c_max and be exact for y' = Dθ (D spikes). Then every y'' >= Dθ + max(θ, c_max)
fires at least D + 1 times. *Proof.* Run both values through the schedule; d = v'' - v' starts at
d0 = y'' - y' >= max(θ, c_max) and changes only when one of them fires alone: by -θ when y'' does
(possible only if d > 0), by +θ when y' does (possible only if d < 0, as v' >= θ > v''). Let t be
the first event at which y' fires; t >= 2, since after one event v' <= Dθ - H + c_max < θ. After
event t-1, v' >= θ - c_t >= θ - c_max. If y'' has not fired alone before t, d = d0 then and
v'' = v' + d0 >= θ: y'' fires alone at t-1, a contradiction. So d reaches d0 - θ >= 0 before y'
first fires; to come back to d0 it would need a lone y' spike at d = d0 - θ >= 0, impossible. So
d <= d0 - θ at the end, i.e. s'' - s' = (d0 - d)/θ >= 1 and s'' >= D + 1. ∎
With θ >= c_max (the 8-bit gate is at most 127) this covers every over-budget neuron; with θ < 127
the neurons with (D+1)θ <= y < Dθ + 127 are not covered by the proof either, and the plan does not
cap them (the lift releases in chunks as large as possible, so they cross at most once or twice).
Hence over-budget neurons (n > D) cannot all be capped at D by any input-independent gate
schedule; the plan minimises their excess (lift chunks as large as 127, the fewest lift events:
an over-budget neuron fires at most once per lift event after it crosses θ, and never more than
floor(y/θ) times) and the simulator counts and reports them per layer.

State width: v stays in [v0 - H - N, max(y, θ - 1)] and y <= P + v0 <= H + θ - 1, so the 16-bit
state needs v0 - H - N >= max(threshold_low, -32768) and H + θ - 1 <= 32767 (checked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ... import ir
from ...errors import NeurodeployError
from .layers import INPUT, SpeckNet, bias_vec, extract, weight4

GATE_MAX = 127  # 8-bit weights: the largest increment one gate event can add
STATE_MIN, STATE_MAX = -(2 ** 15), 2 ** 15 - 1
BOUNDS = ("weights", "budget", "calibration")
DEFAULT_INPUT_BOUND = 8  # quantize's max_input_events: the calibration peak is coded as 8 events
DEFAULT_MARGIN = 2.0  # bounds='calibration': hold for twice the largest partial sums seen


@dataclass
class GateFeature:
    """One extra input feature of a core: ``weights[f]`` per output channel, sent ``events`` rounds."""

    name: str  # 'lift' | 'unit'
    feature: int  # input feature index on the core (C_in, C_in + 1)
    weights: np.ndarray  # [F] int64, 0 < g <= 127
    events: int  # rounds (one host event per output position per round)


@dataclass
class LayerBarrier:
    layer: str
    neuron: str
    theta: int
    budget: int
    channels_in: int
    out_shape: tuple  # (F, Ho, Wo)
    hold: np.ndarray  # [F] H_f
    positive: np.ndarray  # [F] P_f
    negative: np.ndarray  # [F] N_f
    input_bound: np.ndarray  # [C_in] c_j used
    gates: list  # [GateFeature] in release order
    gate_positions: np.ndarray  # [E, 2] input (y, x) of the E gate events of one round
    coverage: list  # [E] arrays of the flat output positions (oy·Wo + ox) each of them reaches
    count_bound: int  # most spikes a neuron of this layer can fire under the barrier

    @property
    def rounds(self) -> int:
        return sum(g.events for g in self.gates)

    @property
    def host_events(self) -> int:
        return self.rounds * int(self.gate_positions.shape[0])

    def schedule(self) -> list:
        """[(gate feature, weights)] one entry per round, in release order."""
        return [(g.feature, g.weights) for g in self.gates for _ in range(g.events)]


@dataclass
class BarrierPlan:
    layers: dict  # layer name -> LayerBarrier, topological order
    bounds: str
    input_bound: int
    notes: list = field(default_factory=list)
    violations: dict = field(default_factory=dict)  # layer -> headroom ratio (< 1: does not fit)

    def held_initial_values(self, graph: ir.Graph, name: str) -> np.ndarray:
        """[F, Ho, Wo] neurons_initial_value of layer ``name``: v_init_q + b_q - H_f."""
        lb = self.layers[name]
        node, neuron = graph.nodes[name], graph.nodes[lb.neuron]
        v0 = int(neuron.v_init_q or 0) + bias_vec(node, quantized=True).astype(np.int64) - lb.hold
        return np.broadcast_to(v0[:, None, None], lb.out_shape).copy()

    def host_events(self) -> int:
        return sum(lb.host_events for lb in self.layers.values())

    def summary(self) -> list:
        return [{"layer": n, "theta": lb.theta, "D": lb.budget, "hold_max": int(lb.hold.max()),
                 "P_max": int(lb.positive.max()), "N_max": int(lb.negative.max()),
                 "gates": [{"name": g.name, "feature": g.feature, "events": g.events,
                            "weight_max": int(g.weights.max())} for g in lb.gates],
                 "host_events": lb.host_events, "count_bound": lb.count_bound}
                for n, lb in self.layers.items()]


def release_gates(hold_min: np.ndarray, theta: int, budget: int, channels_in: int) -> tuple[list, np.ndarray]:
    """Gate features and the hold H_f >= hold_min_f they release (see Claim 2)."""
    if theta >= GATE_MAX:  # every chunk <= 127 <= θ: one feature, exact for all n <= D by Claim 1
        need = np.maximum(np.asarray(hold_min, np.int64), 1)
        r = int(math.ceil(int(need.max()) / GATE_MAX))
        a = -(-need // r)
        return [GateFeature("release", channels_in, a.astype(np.int64), r)], r * a
    u = theta
    m = budget
    lift_min = np.maximum(np.asarray(hold_min, np.int64) - m * u, 0)
    k = int(math.ceil(int(lift_min.max(initial=0)) / GATE_MAX))
    gates = []
    hold = np.full(lift_min.shape, m * u, np.int64)
    if k > 0:
        a = np.maximum(-(-lift_min // k), 1)  # ceil, >= 1 so that every gate weight is a real synapse
        gates.append(GateFeature("lift", channels_in, a.astype(np.int64), k))
        hold += k * a
    gates.append(GateFeature("unit", channels_in + len(gates), np.full(lift_min.shape, u, np.int64), m))
    return gates, hold


def _axis_cover(n_in: int, n_out: int, k: int, s: int, p: int, name: str) -> list:
    """The fewest [(input index, [output indices it reaches])] whose output sets partition
    range(n_out) (each set is a run of consecutive outputs: dynamic programme from the right)."""
    best: list = [None] * n_out + [(0, None)]  # best[o] = (events to cover o.., first (y, outs))
    for o in range(n_out - 1, -1, -1):
        for t in range(k):
            y = o * s - p + t
            if not 0 <= y < n_in:
                continue
            outs = sorted((y + p - t2) // s for t2 in range(k)
                          if (y + p - t2) % s == 0 and 0 <= (y + p - t2) // s < n_out)
            nxt = outs[-1] + 1
            if outs[0] == o and best[nxt] is not None and (best[o] is None or best[nxt][0] + 1 < best[o][0]):
                best[o] = (best[nxt][0] + 1, (y, outs))
    if best[0] is None:
        raise NeurodeployError("no set of gate events reaches every output exactly once (padding too large "
                               "for a gate feature)", layer=name, fix="use padding <= (kernel-1)/2 on this layer")
    events, o = [], 0
    while o < n_out:
        y, outs = best[o][1]
        events.append((y, outs))
        o = outs[-1] + 1
    return events


def gate_cover(layer) -> tuple[np.ndarray, list]:
    """Input positions [E, 2] (y, x) of one release round and the flat output positions each reaches."""
    _, H, W = layer.in_shape
    _, Ho, Wo = layer.out_shape
    ys = _axis_cover(H, Ho, layer.kernel[0], layer.stride[0], layer.padding[0], layer.name)
    xs = _axis_cover(W, Wo, layer.kernel[1], layer.stride[1], layer.padding[1], layer.name)
    pos = np.array([[y, x] for y, _ in ys for x, _ in xs], np.int64).reshape(-1, 2)
    cover = [np.array([oy * Wo + ox for oy in oys for ox in oxs], np.int64) for _, oys in ys for _, oxs in xs]
    return pos, cover


def _input_bounds(net: SpeckNet, l, graph: ir.Graph, done: dict, input_bound: int, bounds: str) -> np.ndarray:
    """c_j per input channel of layer ``l`` (events one input position can carry in a sample)."""
    c = np.zeros(l.channels_in, np.int64)
    for src in l.sources:
        if src == INPUT:
            pool = next((d.pool for d in net.input_destinations if d.layer == l.name), 1)
            c += input_bound * pool * pool
            continue
        s = net.layers[src]
        pool = next(d.pool for d in s.destinations if d.layer == l.name)
        per = graph.nodes[s.neuron].max_spikes if bounds == "budget" else done[src].count_bound
        c += int(per) * pool * pool
    return c


def plan_barrier(graph: ir.Graph, *, bounds: str | None = None, input_bound: int | None = None,
                 strict: bool = True, calibration=None, margin: float | None = None) -> BarrierPlan:
    """The barrier of every layer of a Speck-quantised graph (see the module docstring).
    ``strict=False``: record layers whose state cannot hold it in ``plan.violations`` (headroom
    ratio) instead of raising. ``bounds='calibration'`` (*assumed*): P and N are ``margin`` × the
    largest partial sums the calibration batch produces (capped by the 'budget' bound); a sample
    beyond them can fire early (the simulator then shows in-budget neurons wrong). Options left None
    are those ``quantize_for_barrier`` recorded in ``graph.metadata['barrier']`` (else 'budget', 8, 2)."""
    chosen = graph.metadata.get("barrier") or {}
    bounds = bounds or chosen.get("bounds", "budget")
    input_bound = input_bound if input_bound is not None else chosen.get("input_bound")
    margin = margin if margin is not None else chosen.get("margin", DEFAULT_MARGIN)
    if bounds not in BOUNDS:
        raise NeurodeployError(f"unknown barrier bound {bounds!r}", fix=f"use one of {BOUNDS}")
    if not graph.is_quantized:
        raise NeurodeployError("the barrier is planned on the Speck-quantised graph", fix="quantize first")
    net = extract(graph)
    inp = graph.nodes[net.input_name]
    if input_bound is None:
        input_bound = DEFAULT_INPUT_BOUND
    plan = BarrierPlan({}, bounds, int(input_bound))
    observed = None
    if bounds == "calibration":
        stored = graph.metadata.get("barrier_observed")  # written by quantize_for_barrier
        if calibration is not None:
            observed = observed_partial_sums(graph, calibration)
        elif stored:
            observed = {k: (np.asarray(v[0], np.int64), np.asarray(v[1], np.int64)) for k, v in stored.items()}
        else:
            raise NeurodeployError("bounds='calibration' needs a calibration batch", fix="pass calibration=x")
        plan.notes.append(f"hold from the calibration batch's largest partial sums x{margin:g} (assumed)")
    if inp.is_spikes:
        plan.notes.append(f"spiking input: assumed <= {input_bound} events per pixel per sample (input_bound)")
    for lname, l in net.layers.items():
        node, neuron = graph.nodes[lname], graph.nodes[l.neuron]
        theta, D = int(neuron.threshold_q), int(neuron.max_spikes)
        w = weight4(node, l, quantized=True).astype(np.int64)  # [F, C, kh, kw]
        cb = _input_bounds(net, l, graph, plan.layers, int(input_bound), "weights" if bounds == "weights" else "budget")
        P = (np.clip(w, 0, None) * cb[None, :, None, None]).sum((1, 2, 3))
        N = (np.clip(-w, 0, None) * cb[None, :, None, None]).sum((1, 2, 3))
        if observed is not None:
            P = np.minimum(P, np.ceil(margin * observed[lname][0]).astype(np.int64))
            N = np.minimum(N, np.ceil(margin * observed[lname][1]).astype(np.int64))
        v0 = int(neuron.v_init_q or 0) + bias_vec(node, quantized=True).astype(np.int64)
        gates, hold = release_gates(P + v0 - theta + 1, theta, D, l.channels_in)
        low = max(STATE_MIN, int(neuron.low_threshold_q if neuron.low_threshold_q is not None else STATE_MIN))
        floor_ = v0 - hold - N
        if floor_.min() < low or int(hold.max()) + theta - 1 > STATE_MAX:
            f = int(np.argmin(floor_))
            if not strict:
                span = int((hold + N - v0).max())
                plan.violations[lname] = min(-low / max(span, 1), STATE_MAX / (int(hold.max()) + theta))
            else:
                raise NeurodeployError(
                    f"the 16-bit state cannot hold the barrier: channel {f} needs hold {int(hold[f])} "
                    f"(positive partial sums up to {int(P[f])}) and reaches {int(floor_[f])} with its negative "
                    f"partial sums ({int(N[f])}), below threshold_low {low}", layer=lname,
                    fix="lower this layer's scale (quantize_for_barrier does) or bound the input events "
                        "(input_bound); bounds='budget' assumes each source fires at most D spikes")
        pos, cover = gate_cover(l)
        ymax = int((P + v0).max())
        rounds = sum(g.events for g in gates)
        count_bound = max(0, min(rounds, ymax // theta))
        plan.layers[lname] = LayerBarrier(lname, l.neuron, theta, D, l.channels_in, tuple(l.out_shape), hold, P, N,
                                          cb, gates, pos, cover, count_bound)
    return plan


def observed_partial_sums(graph: ir.Graph, x) -> dict:
    """{layer: (P[f], N[f])}: the largest positive / negative partial sums Σ max(±w, 0)·c over the
    batch ``x`` and the output positions, with the layer-barrier counts (the closed form) as input."""
    import copy

    import torch

    from ... import ops
    counts = ops.evaluate(graph, ops.as_tensor(x), quantized=True)
    net = extract(graph)
    vals, out = {}, {}
    with torch.no_grad():
        for name in graph.topo_order():
            node = graph.nodes[name]
            ins = [vals[i] for i in graph.inputs_of(name)]
            if isinstance(node, ir.Input):
                vals[name] = ops.quantize_input(node, ops.as_tensor(x), True)
            elif isinstance(node, ir.IFNeuron):
                vals[name] = counts[name].to(ops.DTYPE)
            else:
                if name in net.layers:
                    sums = []
                    for sign in (1, -1):
                        part = copy.copy(node)
                        part.weight_q, part.bias_q = np.clip(sign * np.asarray(node.weight_q), 0, None), None
                        s = ops.linear_op(part, ins, True)
                        sums.append(s.reshape(s.shape[0], s.shape[1], -1).amax((0, 2)).numpy().astype(np.int64))
                    out[name] = tuple(sums)
                vals[name] = ops.linear_op(node, ins, True)
    return out


def quantize_for_barrier(graph: ir.Graph, calibration=None, *, bounds: str = "budget",
                         input_bound: int | None = None, margin: float = DEFAULT_MARGIN, **qopts) -> tuple:
    """Speck quantisation whose layers the barrier fits into the 16-bit state: the quantiser's scales,
    shrunk for each layer whose hold + negative partial sums exceed the state (reported in
    ``metadata['quantization']['barrier_scales']``). Returns (quantised graph, plan)."""
    import warnings

    from .quantize import SpeckQuantizationWarning, quantize
    def quantize_quietly(**opts):  # the warnings of the final quantisation only are re-emitted
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SpeckQuantizationWarning)
            out = quantize(graph, calibration, **opts)
        return out, caught

    qg, caught = quantize_quietly(**qopts)
    limited_by = {l: r.get("limited_by") for l, r in qg.metadata["quantization"]["layers"].items()}
    shrunk = {}
    for _ in range(40):
        plan = plan_barrier(qg, bounds=bounds, input_bound=input_bound, strict=False, calibration=calibration,
                            margin=margin)
        if not plan.violations:
            qg.metadata["quantization"]["barrier_scales"] = shrunk
            for l, r in qg.metadata["quantization"]["layers"].items():
                r["limited_by"] = "barrier (16-bit hold)" if l in shrunk else limited_by[l]
            plan.notes += [f"layer '{l}': scale x{f:.3f} so that the 16-bit state holds the barrier"
                           for l, f in shrunk.items()]
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            qg.metadata["barrier"] = {"bounds": bounds, "input_bound": input_bound, "margin": margin}
            if bounds == "calibration":
                obs = observed_partial_sums(qg, calibration)
                qg.metadata["barrier_observed"] = {k: [v[0].tolist(), v[1].tolist()] for k, v in obs.items()}
            return qg, plan
        scales = {l: r["scale"] for l, r in qg.metadata["quantization"]["layers"].items()}
        for l, ratio in plan.violations.items():
            f = min(ratio, 1.0) * 0.98
            scales[l] *= f
            shrunk[l] = shrunk.get(l, 1.0) * f
        qg, caught = quantize_quietly(**{**qopts, "scales": scales})
    plan_barrier(qg, bounds=bounds, input_bound=input_bound, calibration=calibration, margin=margin)  # raises
    raise NeurodeployError("the barrier does not fit after shrinking the scales")


def brute_force_release(y: int, hold: int, schedule, theta: int, *, low: int = STATE_MIN,
                        partial_order=None) -> int:
    """Reference per-neuron integer model of one neuron through hold and release (used by tests):
    starts at -hold + the partial sums in ``partial_order`` (a list of increments summing to y,
    one firing check per increment), then the release ``schedule`` (list of gate increments)."""
    v, s = -hold, 0
    for inc in list(partial_order if partial_order is not None else [y]) + list(schedule):
        v = min(max(v + int(inc), low), STATE_MAX)
        if v >= theta:
            v -= theta
            s += 1
    return s


def check_against_own_input(graph: ir.Graph, x, counts: dict) -> dict:
    """Per IF layer of a quantised graph, the simulated ``counts`` ({neuron: [B, ...]}) against the
    barrier's guarantee computed from the layer's *actual* input (its sources' simulated counts):
    y = x + v0, n = floor(y/θ). Returns {neuron: {'neurons', 'in_budget_wrong' (n <= D but count !=
    clip(n, 0, D)), 'over_budget' (n > D), 'excess' (spikes above D), 'over_budget_outside' (count
    outside [D+1, n]), 'ties' (half-even exact ties, which the chip rounds up)}}."""
    import torch

    from ... import ops
    vals, out = {}, {}
    with torch.no_grad():
        for name in graph.topo_order():
            node = graph.nodes[name]
            ins = [vals[i] for i in graph.inputs_of(name)]
            if isinstance(node, ir.Input):
                vals[name] = ops.quantize_input(node, ops.as_tensor(x), True)
            elif isinstance(node, ir.IFNeuron):
                y = ins[0].to(torch.int64) + int(node.v_init_q or 0)
                th, D = int(node.threshold_q), int(node.max_spikes)
                n = torch.div(y, th, rounding_mode="floor")
                c = torch.as_tensor(counts[name]).to(torch.int64)
                inb = n <= D
                tie = inb & (node.rounding == "half_even") & (y - n * th == 0) & (n % 2 == 1)
                want = n.clamp(0, D)
                over = ~inb
                out[name] = {"neurons": int(c.numel()), "in_budget_wrong": int(((c != want) & inb & ~tie).sum()),
                             "over_budget": int(over.sum()), "excess": int((c - D).clamp(min=0).sum()),
                             "over_budget_outside": int((over & ((c <= D) | (c > n))).sum()),
                             "ties": int(tie.sum())}
                vals[name] = c.to(ops.DTYPE)
            else:
                vals[name] = ops.linear_op(node, ins, True)
    return out


def _layer_with_gates(layer, lb: LayerBarrier):
    import dataclasses
    c, h, w = layer.in_shape
    return dataclasses.replace(layer, in_shape=(c + len(lb.gates), h, w))


def barrier_core_map(net: SpeckNet, plan: BarrierPlan, core_map: dict | None = None) -> dict:
    """Layer -> core with the gate features' kernel memory counted (sinabs' bipartite matching over
    the per-core limits); ``core_map``: the user's fixed placements, kept."""
    from ...errors import DesignRuleError
    from .mapping import _match, candidate_cores, layer_memory
    mem = {n: layer_memory(_layer_with_gates(l, plan.layers[n])) for n, l in net.layers.items()}
    cands = {n: candidate_cores(m) for n, m in mem.items()}
    taken = {n: c for n, c in (core_map or {}).items() if n in cands}
    bad = [f"layer '{n}': core memory with {len(plan.layers[n].gates)} gate feature(s): kernel {mem[n]['kernel']}, "
           f"neuron {mem[n]['neuron']}: no core holds it -- fix: fewer input channels or a smaller kernel"
           for n, c in cands.items() if not c]
    bad += [f"layer '{n}': core {c} of core_map cannot hold it with the gate feature(s) (kernel {mem[n]['kernel']}) "
            f"-- fix: give it one of the cores {cands[n]}" for n, c in taken.items() if c not in cands[n]]
    match = None if bad else _match(cands, taken)
    if match is None:
        raise DesignRuleError(bad or ["the layers with their gate features do not fit on the 9 cores at once -- fix: "
                                      "reduce channels, or compile with barrier=False (not exact on the chip)"], "speck")
    return match


def barrier_cost(net: SpeckNet, layer_to_core: dict, plan: BarrierPlan) -> dict:
    """Per core: extra input features, extra kernel memory (words), gate events and gate SynOps per
    sample (each gate event reaches the F neurons of one output position)."""
    from .mapping import layer_memory
    cores = []  # in layer (release) order
    for lname, lb in plan.layers.items():
        l = net.layers[lname]
        k0 = layer_memory(l)["kernel"]
        k1 = layer_memory(_layer_with_gates(l, lb))["kernel"]
        cores.append({"layer": lname, "core": int(layer_to_core[lname]), "extra_features": len(lb.gates),
                      "kernel_memory": k1, "kernel_memory_extra": k1 - k0, "gate_events": lb.host_events,
                      "gate_synops": lb.rounds * int(np.prod(lb.out_shape)), "rounds": lb.rounds,
                      "hold_max": int(lb.hold.max())})
    return {"host_events_per_sample": plan.host_events(), "layers": cores, "bounds": plan.bounds,
            "sequence_points_per_sample": len(plan.layers)}


def cost_text(cost: dict) -> str:
    lines = [f"layer barrier: {cost['host_events_per_sample']} host gate events per sample, "
             f"{cost['sequence_points_per_sample']} sequence points (hold bound: {cost['bounds']})",
             f"{'core':>4}  {'layer':<24} {'+features':>9} {'kernel mem':>11} {'(+words)':>9} {'gate events':>11} "
             f"{'gate SynOps':>11} {'hold':>6}"]
    for c in cost["layers"]:
        lines.append(f"{c['core']:>4}  {c['layer']:<24} {c['extra_features']:>9} {c['kernel_memory']:>11} "
                     f"{c['kernel_memory_extra']:>9} {c['gate_events']:>11} {c['gate_synops']:>11} {c['hold_max']:>6}")
    return "\n".join(lines) + "\n"
