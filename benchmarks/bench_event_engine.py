"""Benchmark of the event-driven engine (neurodeploy.engine) against the layer-synchronous
simulator (ops.evaluate) on the same quantised graph and input.

(a) a small digits-like conv net: 1x8x8 input, 3 conv layers, D=4, batch of samples;
(b) a 128x128 two-channel DVS-like stream (>= 100k events, random but reproducible, spatially
    clustered) through 2->8 k3s2, 8->16 k3s2, 16->32 k3s2 convs and a 32*16*16 -> 10 linear, D=8.

Prints synaptic events per second for each (rule, order), engine wall time (compile excluded,
numba caches it on disk) and the layer-synchronous time. Run: python benchmarks/bench_event_engine.py
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from neurodeploy import ir, ops
from neurodeploy.engine import EventEngine, stack_counts

GOAL = 20e6


def _q(rng, shape, lo, hi):
    w = rng.integers(lo, hi + 1, shape)
    return w.astype(np.float64), w.astype(np.int64)


def digits_net(rng) -> ir.Graph:
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(1, 8, 8), is_spikes=True))
    prev, cin = "input", 1
    for i, (cout, s) in enumerate([(16, 1), (32, 2), (10, 2)]):
        w, wq = _q(rng, (cout, cin, 3, 3), -3, 6)
        g.add(f"conv{i}", ir.Conv2d(weight=w, weight_q=wq, bias_q=np.zeros(cout, np.int64), stride=s, padding=1), prev)
        g.add(f"if{i}", ir.IFNeuron(threshold_q=16, v_init_q=8, max_spikes=4, state_bits=16), f"conv{i}")
        prev, cin = f"if{i}", cout
    g.add("out", ir.Output(), prev)
    g.metadata["quantization"] = {"target": "bench"}
    return ir.infer_shapes(g)


def dvs_net(rng) -> ir.Graph:
    g = ir.Graph()
    g.add("input", ir.Input(input_shape=(2, 128, 128), is_spikes=True))
    prev, cin = "input", 2
    for i, (cout, th) in enumerate([(8, 24), (16, 40), (32, 60)]):
        w, wq = _q(rng, (cout, cin, 3, 3), -2, 6)
        g.add(f"conv{i}", ir.Conv2d(weight=w, weight_q=wq, bias_q=np.zeros(cout, np.int64), stride=2, padding=1), prev)
        g.add(f"if{i}", ir.IFNeuron(threshold_q=th, v_init_q=th // 2, max_spikes=8, state_bits=16), f"conv{i}")
        prev, cin = f"if{i}", cout
    g.add("flat", ir.Flatten(), prev)
    w, wq = _q(rng, (10, 32 * 16 * 16), -2, 3)
    g.add("fc", ir.Linear(weight=w, weight_q=wq, bias_q=np.zeros(10, np.int64)), "flat")
    g.add("if_out", ir.IFNeuron(threshold_q=64, v_init_q=32, max_spikes=8, state_bits=16), "fc")
    g.add("out", ir.Output(), "if_out")
    g.metadata["quantization"] = {"target": "bench"}
    return ir.infer_shapes(g)


def dvs_events(rng, n=120_000, size=128, clusters=12) -> np.ndarray:
    """Spatially clustered events (Gaussian blobs drifting over time), sorted by timestamp."""
    centres = rng.uniform(16, size - 16, (clusters, 2))
    drift = rng.normal(0, 0.3, (clusters, 2))
    t = np.sort(rng.integers(0, 1_000_000, n))
    k = rng.integers(0, clusters, n)
    pos = centres[k] + drift[k] * (t[:, None] / 10_000) + rng.normal(0, 6, (n, 2))
    pos = np.clip(np.round(pos), 0, size - 1).astype(np.int64)
    ev = np.zeros(n, [("x", np.int16), ("y", np.int16), ("p", np.int8), ("t", np.int64)])
    ev["x"], ev["y"] = pos[:, 0], pos[:, 1]
    ev["p"] = rng.integers(0, 2, n)
    ev["t"] = t
    return ev


def _time(fn, repeat=3):
    best = np.inf
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench(name, graph, samples, rasters, rows):
    """samples: per-sample inputs for the engine; rasters: [B, ...] counts for ops.evaluate."""
    x = torch.as_tensor(rasters, dtype=torch.float64)
    t_sync, ref = _time(lambda: ops.evaluate(graph, x), 3)
    for rule, order in (("multi", "breadth"), ("single", "breadth"), ("multi", "depth"), ("single", "depth")):
        eng = EventEngine(graph, rule=rule, order=order)
        eng.run(samples[0])  # warm-up (compile or load the numba cache)
        t, res = _time(lambda: eng.run_batch(samples), 3)
        syn = sum(r.synaptic_events for r in res)
        nin = sum(r.input_events for r in res)
        counts = stack_counts(res)
        wrong = sum(int((counts[n] != ref[n].numpy().astype(np.int64)).sum()) for n in graph.neurons())
        total = sum(int(np.prod(ref[n].shape)) for n in graph.neurons())
        rows.append((name, f"{rule}/{order}", nin, syn, t, syn / t, t_sync, f"{wrong}/{total}"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=120_000)
    ap.add_argument("--digits", type=int, default=64, help="digits-like samples")
    a = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rng = np.random.default_rng(1234)
    rows = []
    g = digits_net(rng)
    rast = rng.integers(0, 5, (a.digits, 1, 8, 8))
    bench("digits 1x8x8", g, list(rast), rast, rows)
    g = dvs_net(rng)
    ev = dvs_events(rng, a.events)
    rast = np.zeros((1, 2, 128, 128), np.int64)
    np.add.at(rast[0], (ev["p"].astype(int), ev["y"].astype(int), ev["x"].astype(int)), 1)
    bench("dvs 2x128x128", g, [ev], rast, rows)
    head = f"{'net':<15} {'rule/order':<15} {'in events':>10} {'syn events':>11} {'engine s':>9} " \
           f"{'syn ev/s':>10} {'sync s':>8} {'≠ sync':>12}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r[0]:<15} {r[1]:<15} {r[2]:>10} {r[3]:>11} {r[4]:>9.4f} {r[5] / 1e6:>9.1f}M {r[6]:>8.4f} {r[7]:>12}")
    best = max(r[5] for r in rows if r[0].startswith("dvs"))
    print(f"\ngoal >= {GOAL / 1e6:.0f}M synaptic events/s on the DVS net: "
          f"{'met' if best >= GOAL else 'NOT met'} (best {best / 1e6:.1f}M/s); "
          "'≠ sync' = neurons whose spike count differs from ops.evaluate (layer-synchronous)")


if __name__ == "__main__":
    main()
