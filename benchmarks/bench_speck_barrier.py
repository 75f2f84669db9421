"""Speck on the chain demo (examples/digits_chain): does the deployed chip compute the model?

One table, the same test images, side by side:

* no barrier      the plain artefact on the chip (one spike per event, depth first, no budget)
* barrier         the deployed artefact: held initial values + gate release (bounds='budget')
* barrier (weights) the guaranteed hold bound (sources may exceed D under the barrier)
* barrier (calibration) the hold from the calibration batch's largest partial sums x2 (assumed)
* barrier (θ_q < 127) scales lowered so that θ_q ≈ 120: lift events of 127 > θ (two gate features)
* barrier + host clip the monitored final layer clipped at D by the host
* rate xR         no barrier, every input event sent R times (bias xR), counts / R (R = 1, 4, 16)
* splitting       no barrier, neurons split so that no weight exceeds θ (verify's remedy)

Columns: counts equal to the layer-barrier rung R2 of the same quantisation (all layers / final
layer), end-task agreement with the float integer model R0 and accuracy (probe on counts / norm),
chip SynOps per sample, host events per sample (input + gate), extra kernel memory, and latency
from SynOps: cores run in parallel without a barrier (max over cores), one layer after the other
with it (sum), at an assumed per-core bandwidth (``--synops-per-s``: SynSense does not publish it
in the sources we have; REFERENCE §3 only says it exists).

Run: python benchmarks/bench_speck_barrier.py [--limit N]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch

from neurodeploy import api, ops
from neurodeploy.data import load_data
from neurodeploy.engine import run_events_batch, stack_counts
from neurodeploy.targets.speck.barrier import barrier_cost, check_against_own_input, quantize_for_barrier
from neurodeploy.targets.speck.layers import extract
from neurodeploy.targets.speck.quantize import SpeckQuantizationWarning, quantize
from neurodeploy.targets.speck.simulate import input_counts, simulate_barrier, simulate_events, speck_engine_graph
from neurodeploy.targets.speck.verify import merge_copies, required_copies, split_neurons

MODEL, ARCH = "examples/digits_chain.pt", "examples/digits_chain.py:build_model"


def probe_pred(counts, probe, norm):
    feats = torch.as_tensor(counts).reshape(counts.shape[0], -1).double() / norm
    return (feats @ torch.as_tensor(probe["weight"]).T + torch.as_tensor(probe["bias"])).argmax(1)


def rate_repeated(qg, x, R):
    """The plain chip with every input event sent R times and the initial bias R times."""
    g = speck_engine_graph(qg)
    for l in extract(qg).layers:
        if g.nodes[l].bias_q is not None:
            g.nodes[l].bias_q = g.nodes[l].bias_q * R
    raster = input_counts(qg, x) * R
    bound = 64 * R
    res = run_events_batch(g, raster, rule="single", order="depth", saturate=True, max_spikes=bound, start_tick=False)
    c = stack_counts(res)
    syn = np.array([sum(r.synops.values()) for r in res])
    per_core = {l: np.mean([r.synops.get(l, 0) for r in res]) for l in extract(qg).layers}
    return {n: torch.as_tensor(c[n]) for n in g.neurons()}, syn, per_core, raster


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=360)
    ap.add_argument("--synops-per-s", type=float, default=1e8, help="assumed per-core SynOps/s")
    a = ap.parse_args()
    warnings.simplefilter("ignore", SpeckQuantizationWarning)
    p = api.prepare(MODEL, arch=ARCH)
    g, probe = p.canonical, p.probe
    calib = load_data("examples/digits_calib.npz").x
    d = load_data("examples/digits_test.npz", a.limit)
    x, y = d.x, torch.as_tensor(np.asarray(d.y))
    final = g.neurons()[-1]
    norm = float((g.metadata.get("neuron_norms") or {}).get(final, 1.0) or 1.0)
    r0 = ops.evaluate(g, ops.as_tensor(x), quantized=False)
    ref_pred = probe_pred(r0[final], probe, norm)
    B = a.synops_per_s
    rows = []

    def add(name, counts, r2, syn_per_core, host_events, extra_mem, serial, note="", scale=1):
        layers = [n for n in r2 if n in counts] if len(r2) > 1 else []  # splitting: final layer only
        eq_all = np.mean(np.concatenate([(torch.round(counts[n].double() / scale) == r2[n].double()).numpy().ravel()
                                         for n in layers])) if layers else float("nan")
        fin = counts[final].double() / scale
        eq_fin = float((torch.round(fin) == r2[final].double()).double().mean())
        pred = probe_pred(fin, probe, norm)
        syn = sum(syn_per_core.values())
        lat = (sum(syn_per_core.values()) if serial else max(syn_per_core.values())) / B
        rows.append((name, 100 * eq_all, 100 * eq_fin, 100 * float((pred == ref_pred).double().mean()),
                     100 * float((pred == y).double().mean()), syn, host_events, extra_mem, 1e3 * lat, note))

    def per_core(res):
        return {l: float(np.mean(v)) for l, v in res.synops.items()}

    t0 = time.time()
    qp = quantize(g, calib)
    r2p = simulate_events(qp, x, rule="multi", order="breadth", saturate=False, budget=True).counts
    nin = float(np.mean(input_counts(qp, x).reshape(len(x), -1).sum(1)))
    plain = simulate_events(qp, x)
    add("no barrier (today)", plain.counts, r2p, per_core(plain), nin, 0, False)
    small_theta = {l: r["scale"] * 120 / r["threshold_q"] for l, r in qp.metadata["quantization"]["layers"].items()}
    variants = [("budget", "budget", {}), ("weights", "weights", {}), ("calibration", "calibration", {}),
                ("budget, θ_q < 127", "budget", {"scales": small_theta})]
    for label, bounds, qopts in variants:
        try:
            qb, plan = quantize_for_barrier(g, calib, bounds=bounds, **qopts)  # calibration: margin x2
        except Exception as e:  # noqa: BLE001 - reported in the table
            rows.append((f"barrier ({label})", *[float("nan")] * 8, "infeasible: " + str(e).splitlines()[0][:90]))
            continue
        r2b = simulate_events(qb, x, rule="multi", order="breadth", saturate=False, budget=True).counts
        rb = simulate_barrier(qb, x, plan=plan)
        net = extract(qb)
        cost = barrier_cost(net, {l: i for i, l in enumerate(net.layers)}, plan)
        own = check_against_own_input(qb, x, rb.counts)
        shr = qb.metadata["quantization"].get("barrier_scales") or {}
        note = (f"in-budget wrong {sum(o['in_budget_wrong'] for o in own.values())}, over budget "
                f"{sum(o['over_budget'] for o in own.values())} (+{sum(o['excess'] for o in own.values())} spikes), "
                f"ties {sum(o['ties'] for o in own.values())}"
                + (f"; scale " + ", ".join(f"{k.split('.')[-1]} x{v:.2f}" for k, v in shr.items()) if shr else ""))
        add(f"barrier ({label})", rb.counts, r2b, per_core(rb), nin + plan.host_events(),
            sum(c["kernel_memory_extra"] for c in cost["layers"]), True, note)
        if label == "budget":  # the host reads the monitored final layer and may clip it at D itself
            clipped = dict(rb.counts)
            clipped[final] = rb.counts[final].clamp(max=int(qb.nodes[final].max_spikes))
            add("barrier (budget) + host clip", clipped, r2b, per_core(rb), nin + plan.host_events(),
                sum(c["kernel_memory_extra"] for c in cost["layers"]), True, "final layer clipped at D on the host")
    for R in (1, 4, 16):
        c, syn, pc, raster = rate_repeated(qp, x, R)
        add(f"rate x{R} (counts / R)", c, r2p, pc, nin * R, 0, False, scale=R)
    copies = required_copies(g)
    if copies:
        rg, applied, notes = split_neurons(g, copies)
        rq = quantize(rg, calib, bias_bits=16)
        rs = simulate_events(rq, x)
        counts = {n: (merge_copies(v, applied[n]) if n in applied else v) for n, v in rs.counts.items()}
        counts = {final: counts[final]}
        add(f"splitting {applied}", counts, {final: r2p[final]}, per_core(rs), nin, 0, False,
            "final layer only (hidden layers are split)")
    print(f"Speck on digits_chain, {len(x)} test images ({time.time() - t0:.0f} s); reference R2 = layer barrier "
          f"(same quantisation), R0 = float integer model; latency at an assumed {B:.0e} SynOps/s per core")
    hdr = (f"{'configuration':<30}{'=R2 all':>9}{'=R2 final':>10}{'agree R0':>10}{'accuracy':>9}{'SynOps':>10}"
           f"{'host ev':>9}{'+kernel':>8}{'latency':>10}  note")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        name, ea, ef, ag, acc, syn, hev, mem, lat, note = r
        f = (lambda v, w, p=1: f"{v:>{w}.{p}f}" if isinstance(v, (int, float)) and not math.isnan(v) else f"{'-':>{w}}")
        print(f"{name:<30}{f(ea, 8, 2)}%{f(ef, 9, 2)}%{f(ag, 9, 1)}%{f(acc, 8, 1)}%{f(syn, 10, 0)}{f(hev, 9, 0)}"
              f"{f(mem, 8, 0)}{f(lat, 8, 3)}ms  {note}")


if __name__ == "__main__":
    main()
