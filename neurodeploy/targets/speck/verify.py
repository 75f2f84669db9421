"""``verify --target speck``: where do Speck's spike counts leave the integer (SFA) model, and why.

The reference is the integer model: ``ops.evaluate`` of the float canonical graph (layer-synchronous
closed form, counts clip(round(x), 0, D)). A ladder of configurations changes one thing at a time,
so that the deviation each step adds is attributed to one cause:

====  ====================================================  =====================================
rung  configuration                                          cause it adds
====  ====================================================  =====================================
R0    float closed form (``ops.evaluate``)                  reference (the SFA integer model)
R1    quantised closed form                                  quantisation (8-bit w, shared scale)
R2    events: multi, breadth (layer barrier), budget D       event engine itself (should add 0)
R3    events: multi, depth-first, budget D                   order: firing before all input is in
R4    events: multi, depth, no budget                        no spike budget D on the chip
R5    events: single, depth, no budget                       one spike per neuron per input event
R6    events: single, depth, no budget, saturation           16-bit / threshold_low saturation
====  ====================================================  =====================================

R6 is the chip (``simulate_events`` defaults). R2–R5 run without saturation. Per layer: fraction
of neurons whose count differs from R0, mean |Δcount| and total spikes; per rung: SynOps.
End-task agreement: a probe (weight [K, F], bias [K]) on the final layer's values (counts / the
activation norm, which ``fold_norms`` recorded: the probe was trained on the model's values); argmax
agreement with R0 (and accuracy when labels are given; R0's equals the PyTorch probe's).

Remedy (``remedy=True``): when some layer's weights exceed its threshold, one event would need
several output spikes and the chip emits one. ``split_neurons`` gives each such layer m =
⌈max|W|/θ⌉ copies of every neuron, copy k with weights W/m, bias b/m and initial value
θ(k+½)/m (v_init 0): by Hermite's identity Σ_k ⌊x + k/m⌋ = ⌊m·x⌋, the copies' summed counts equal
the original round-half-up counts in the closed form, while no single event can lift a copy by
more than one threshold. The next layer sees m× the input channels (weights repeated). Cost: m× the
neurons and the SynOps of that layer, m× the kernel memory of the next; its spikes (and so the
next layer's SynOps) are unchanged. Budget per copy: ⌈D/m⌉ (exact when m divides D; the chip has
no budget anyway). The remedied network is quantised, simulated and reported like the original.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ... import ir, ops
from ...precision import percent
from .layers import extract
from .barrier import quantize_for_barrier
from .quantize import SpeckQuantizationWarning, quantize
from .simulate import simulate_barrier, simulate_events

RUNGS = [
    ("R1", "quantised closed form", "quantisation", None),
    ("R2", "events multi/breadth/budget", "event engine (layer barrier)", dict(rule="multi", order="breadth",
                                                                             saturate=False, budget=True)),
    ("R3", "events multi/depth/budget", "order (depth-first vs barrier)", dict(rule="multi", order="depth",
                                                                               saturate=False, budget=True)),
    ("R4", "events multi/depth", "no spike budget D", dict(rule="multi", order="depth", saturate=False,
                                                         budget=False)),
    ("R5", "events single/depth", "one spike per input event", dict(rule="single", order="depth", saturate=False,
                                                                   budget=False)),
    ("R6", "Speck (single/depth/saturating)", "saturation (16-bit, threshold_low)",
     dict(rule="single", order="depth", saturate=True, budget=False)),
    ("R7", "Speck with layer barrier (deployed)", "R6 + hold/gate release (step vs R2)", "barrier"),
]


@dataclass
class VerifyReport:
    layers: list  # neuron names in order
    rungs: list  # [(id, name, cause)]
    mismatch: dict  # rung -> {neuron: fraction of neurons whose count != R0}
    mean_abs: dict  # rung -> {neuron: mean |count - R0|}
    step_mismatch: dict  # rung -> {neuron: fraction != previous rung}
    spikes: dict  # rung -> {neuron: total spikes}
    synops: dict  # rung -> total SynOps (event rungs)
    task: dict = field(default_factory=dict)  # rung -> {'agreement':, 'accuracy':}
    remedy: dict | None = None
    engine: str = ""
    barrier: dict | None = None  # R7: plan, host events, per-layer check against the layer's own input

    def to_dict(self) -> dict:
        return {"engine": self.engine, "layers": self.layers,
                "rungs": [{"id": r, "configuration": n, "cause": c, "mismatch": self.mismatch[r],
                           "step_mismatch": self.step_mismatch[r], "mean_abs": self.mean_abs[r],
                           "spikes": self.spikes[r], "synops": self.synops.get(r), "task": self.task.get(r)}
                          for r, n, c in self.rungs],
                "remedy": self.remedy, "barrier": self.barrier}

    def table(self) -> str:
        lines = [f"Speck verify (reference R0 = integer model, ops.evaluate of the float graph; engine: {self.engine})",
                 "per layer: mismatch vs R0 % (step vs previous rung %) [mean |Δn|]"]
        hdr = f"{'rung':<5}{'cause added':<38}" + "".join(f"{n:>26}" for n in self.layers) + f"{'SynOps':>12}"
        acc = bool(self.task) and all("accuracy" in t for t in self.task.values())
        if self.task:
            hdr += f"{'task agree':>12}" + (f"{'accuracy':>10}" if acc else "")
        lines += [hdr, "-" * len(hdr)]
        for rid, name, cause in self.rungs:
            row = f"{rid:<5}{cause:<38}"
            for n in self.layers:
                row += f"{percent(self.mismatch[rid][n]):>10} ({percent(self.step_mismatch[rid][n]):>7}) " \
                       f"[{self.mean_abs[rid][n]:.3f}]"
            s = self.synops.get(rid)
            row += f"{(s if s is not None else '-'):>12}"
            if self.task:
                row += f"{percent(self.task[rid]['agreement'], 1):>12}"
                row += f"{100 * self.task[rid]['accuracy']:>9.1f}%" if acc else ""
            lines.append(row)
        if self.barrier:
            lines += [""] + barrier_lines(self.barrier, self.mismatch, self.step_mismatch, self.layers)
        if self.remedy and not self.remedy["copies"]:
            lines += ["", "remedy: " + "; ".join(self.remedy["notes"])]
        elif self.remedy:
            r = self.remedy
            lines += ["", f"remedy (neuron splitting so that no event needs 2 spikes): copies {r['copies']}",
                      f"  Speck mismatch of the final layer: {100 * r['final_mismatch']:.2f}% (was "
                      f"{100 * self.mismatch['R6'][self.layers[-1]]:.2f}%)",
                      f"  counts changed by the one-spike rule (single vs multi, mean over layers): "
                      f"{100 * r['one_spike_loss']:.2f}% (was {100 * r['one_spike_loss_before']:.2f}%)",
                      f"  SynOps: {r['synops']} (was {self.synops['R6']}, x{r['synops_ratio']:.2f})"]
            if "agreement" in r:
                lines.append(f"  task agreement: {100 * r['agreement']:.1f}% (was {100 * self.task['R6']['agreement']:.1f}%)")
            for note in r.get("notes", []):
                lines.append(f"  note: {note}")
        return "\n".join(lines) + "\n"


def _final_neuron(graph: ir.Graph) -> str:
    net = extract(graph)
    last = [l.neuron for l in net.layers.values() if l.exits]
    return last[-1] if last else graph.neurons()[-1]


def _feature_norm(graph: ir.Graph, neuron: str) -> float:
    """The activation norm of ``neuron`` (value = count / norm), as the model had it before
    ``fold_norms`` moved it into the next weights: the probe was trained on values, not counts."""
    norms = graph.metadata.get("neuron_norms") or {}
    return float(norms.get(neuron, getattr(graph.nodes[neuron], "norm", 1.0)) or 1.0)


def _probe(counts: torch.Tensor, probe, norm: float = 1.0) -> torch.Tensor:
    w, b = probe
    feats = counts.reshape(counts.shape[0], -1).to(torch.float64) / norm
    logits = feats @ ops.as_tensor(w).T
    if b is not None:
        logits = logits + ops.as_tensor(b)
    return logits.argmax(1)


def verify(graph: ir.Graph, x, *, qgraph: ir.Graph | None = None, probe=None, labels=None, remedy: bool = True,
           calibration=None, barrier: bool = True, **qopts) -> VerifyReport:
    """Run the ladder on batch ``x`` (see module docstring). ``graph`` is the float canonical graph.
    ``barrier``: quantise so that the layer barrier fits (``barrier.quantize_for_barrier``) and add
    rung R7 (the deployed Speck artefact: hold + gate release)."""
    g = graph.copy()
    ir.infer_shapes(g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        if qgraph is not None:
            qg = qgraph
            barrier = barrier and "barrier" in qg.metadata  # quantised for the barrier (quantize_for_barrier)
        elif barrier:
            qg = quantize_for_barrier(g, calibration, **qopts)[0]
        else:
            qg = quantize(g, calibration, **qopts)
    xt = ops.as_tensor(x)
    neurons = g.neurons()
    ref = ops.evaluate(g, xt, quantized=False)
    results: dict[str, dict] = {"R0": {n: ref[n] for n in neurons}}
    synops: dict[str, int | None] = {"R0": None}
    eng = ""
    barrier_info = None
    for rid, _, _, cfg in RUNGS:
        if cfg == "barrier":
            if not barrier:
                continue
            r = simulate_barrier(qg, x)
            results[rid] = {n: r.counts[n].to(torch.float64) for n in neurons}
            synops[rid] = int(sum(int(np.sum(v)) for v in r.synops.values() if v is not None))
            barrier_info = _barrier_info(qg, x, r)
            barrier_info["synops_vs_no_barrier"] = synops[rid] / max(synops.get("R6") or 1, 1)
        elif cfg is None:
            q = ops.evaluate(qg, xt, quantized=True)
            results[rid] = {n: q[n] for n in neurons}
            synops[rid] = None
        else:
            r = simulate_events(qg, x, **cfg)
            eng = r.engine
            results[rid] = {n: r.counts[n].to(torch.float64) for n in neurons}
            synops[rid] = int(sum(int(np.sum(v)) for v in r.synops.values() if v is not None))
    rungs = [("R0", "float closed form", "reference")] + [(a, b, c) for a, b, c, _ in RUNGS if a in results]
    mismatch, mean_abs, step, spikes, task = {}, {}, {}, {}, {}
    prev = "R0"
    final = _final_neuron(g)
    norm = _feature_norm(g, final)
    ref_pred = _probe(ref[final], probe, norm) if probe is not None else None
    for rid, _, _ in rungs:
        res = results[rid]
        mismatch[rid] = {n: float((res[n] != ref[n]).double().mean()) for n in neurons}
        mean_abs[rid] = {n: float((res[n] - ref[n]).abs().mean()) for n in neurons}
        prev = "R2" if rid == "R7" else prev  # the barrier is compared with the layer-barrier rung
        step[rid] = {n: float((res[n] != results[prev][n]).double().mean()) for n in neurons}
        spikes[rid] = {n: int(res[n].sum()) for n in neurons}
        if probe is not None:
            pred = _probe(res[final], probe, norm)
            t = {"agreement": float((pred == ref_pred).double().mean())}
            if labels is not None:
                t["accuracy"] = float((pred == torch.as_tensor(np.asarray(labels))).double().mean())
            task[rid] = t
        prev = rid
    rep = VerifyReport(neurons, rungs, mismatch, mean_abs, step, spikes, synops, task, None, eng, barrier_info)
    if remedy:
        rep.remedy = _remedy(g, x, ref, final, probe, ref_pred, calibration, qopts,
                             {"single": results["R5"], "multi": results["R4"], "synops": synops["R6"]})
    return rep


def _barrier_info(qg: ir.Graph, x, r) -> dict:
    from .barrier import check_against_own_input
    return {"host_events_per_sample": r.settings["host_events"], "saturations": r.saturations,
            "cost": r.settings.get("cost"), "scale_notes": (qg.metadata["quantization"].get("barrier_scales") or {}),
            "own_input": check_against_own_input(qg, x, r.counts)}


def barrier_lines(b: dict, mismatch: dict, step: dict, layers: list) -> list:
    """The barrier's per-layer report: counts equal to R2, and the guarantee checked per neuron."""
    lines = [f"layer barrier (R7): {b['host_events_per_sample']} host gate events per sample; per layer, given "
             "its actual input: neurons with n <= D wrong (must be 0), over budget n > D (not capped: Claim 3), "
             "excess spikes above D, half-even ties (the chip rounds them up)"]
    if b.get("synops_vs_no_barrier") is not None:
        lines.append(f"  SynOps x{b['synops_vs_no_barrier']:.2f} of the chip without the barrier (R6)")
    if b.get("cost"):
        from .barrier import cost_text
        lines += ["  " + ln for ln in cost_text(b["cost"]).rstrip().splitlines()]
    if b["scale_notes"]:
        lines.append("  scales shrunk so that the 16-bit state holds the barrier: " +
                     ", ".join(f"{k} x{v:.3f}" for k, v in b["scale_notes"].items()))
    for n in layers:
        o = b["own_input"][n]
        lines.append(f"  {n:<24} = R2 {percent(1 - step['R7'][n], 3):>8}   in-budget wrong {o['in_budget_wrong']}   "
                     f"over budget {o['over_budget']} ({100 * o['over_budget'] / max(o['neurons'], 1):.3f}%, "
                     f"+{o['excess']} spikes)   ties {o['ties']}")
    return lines


def required_copies(graph: ir.Graph) -> dict:
    """{layer: m} with m = ⌈max|W|/θ⌉ > 1 for layers whose weights exceed the threshold."""
    net = extract(graph)
    out = {}
    for lname, l in net.layers.items():
        w = np.abs(np.asarray(graph.nodes[lname].weight)).max(initial=0)
        m = math.ceil(w / graph.nodes[l.neuron].threshold - 1e-12)
        if m > 1:
            out[lname] = m
    return out


def split_neurons(graph: ir.Graph, copies: dict) -> tuple[ir.Graph, dict, list]:
    """Apply the neuron-splitting remedy; returns (graph, {neuron: m} applied, notes)."""
    g = graph.copy()
    ir.infer_shapes(g)
    net = extract(g)
    applied, notes = {}, []
    for lname, m in copies.items():
        l = net.layers[lname]
        node, neuron = g.nodes[lname], g.nodes[l.neuron]
        path_ok = all(not isinstance(g.nodes[c], ir.Add) for c in _downstream_pass(g, l.neuron))
        if not path_ok:
            notes.append(f"layer '{lname}': not split (its spikes are merged with another branch)")
            continue
        if m * l.features > 1024:
            notes.append(f"layer '{lname}': not split ({m}x{l.features} channels > 1024)")
            continue
        th, v0, f = neuron.threshold, neuron.v_init, l.features
        w = np.asarray(node.weight, dtype=np.float64)
        b = np.zeros(f) if node.bias is None else np.asarray(node.bias, dtype=np.float64)
        node.weight = np.concatenate([w / m] * m, axis=0)
        # copy k: initial offset (v_init + kθ)/m (= θ(k+½)/m for v_init = θ/2), carried by the bias
        # (a bias acts once); v_init = 0
        node.bias = np.concatenate([b / m + (v0 + k * th) / m for k in range(m)])
        neuron.v_init = 0.0
        neuron.max_spikes = int(math.ceil(neuron.max_spikes / m))
        for d in l.destinations:
            dn = g.nodes[d.layer]
            wd = np.asarray(dn.weight, dtype=np.float64)
            if isinstance(dn, ir.Linear):
                dl = net.layers[d.layer]
                w4 = wd.reshape((wd.shape[0],) + tuple(dl.in_shape))
                dn.weight = np.concatenate([w4] * m, axis=1).reshape(wd.shape[0], -1)
            else:
                dn.weight = np.concatenate([wd] * m, axis=1)
        applied[l.neuron] = m
        if l.exits:
            notes.append(f"layer '{lname}' is an output: the host sums its {m} copies (channel blocks)")
    ir.infer_shapes(g)
    g.metadata.setdefault("speck", {})["split_neurons"] = applied
    return g, applied, notes


def _downstream_pass(g: ir.Graph, start: str) -> list:
    out, stack = [], list(g.consumers_of(start))
    while stack:
        c = stack.pop()
        out.append(c)
        if isinstance(g.nodes[c], (ir.SumPool2d, ir.Flatten, ir.Add)):
            stack.extend(g.consumers_of(c))
    return out


def merge_copies(counts: torch.Tensor, m: int) -> torch.Tensor:
    """Sum the m channel blocks of a split layer's counts back to the original channels."""
    B = counts.shape[0]
    f = counts.shape[1] // m
    return counts.reshape((B, m, f) + tuple(counts.shape[2:])).sum(1)


def _one_spike_loss(single: dict, multi: dict, neurons) -> float:
    """Fraction of counts the single rule changes vs multi (depth, no budget), mean over layers."""
    return float(np.mean([float((single[n] != multi[n]).double().mean()) for n in neurons]))


def _remedy(g, x, ref, final, probe, ref_pred, calibration, qopts, before: dict) -> dict:
    """``before``: the original's R4/R5 counts and R6 SynOps (already computed by the ladder)."""
    copies = required_copies(g)
    if not copies:
        return {"copies": {}, "notes": ["no layer has a weight above its threshold: nothing to do"]}
    rg, applied, notes = split_neurons(g, copies)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        opts = dict(qopts)
        opts["bias_mode"] = "initial"  # the split initial values ride on the bias (folded into the 16-bit state)
        opts.pop("bias_bits", None)
        rq = quantize(rg, calibration, **opts)
    r = simulate_events(rq, x)
    s1 = simulate_events(rq, x, rule="single", saturate=False)
    s2 = simulate_events(rq, x, rule="multi", saturate=False)

    def original_units(counts: torch.Tensor) -> torch.Tensor:
        counts = counts.to(torch.float64)
        return merge_copies(counts, applied[final]) if final in applied else counts

    counts = original_units(r.counts[final])
    syn = int(sum(int(np.sum(v)) for v in r.synops.values()))
    out = {"copies": applied, "notes": notes,
           "final_mismatch": float((counts != ref[final]).double().mean()),
           "synops": syn, "synops_before": before["synops"], "synops_ratio": syn / max(before["synops"], 1),
           "one_spike_loss": _one_spike_loss(s1.counts, s2.counts, rq.neurons()),
           "one_spike_loss_before": _one_spike_loss(before["single"], before["multi"], g.neurons()),
           "closed_form_mismatch": float(original_units(ops.evaluate(rq, ops.as_tensor(x), True)[final])
                                         .ne(ref[final]).double().mean())}
    if probe is not None:
        out["agreement"] = float((_probe(counts, probe, _feature_norm(g, final)) == ref_pred).double().mean())
    return out
