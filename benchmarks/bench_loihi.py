"""Speed of the simulator's Loihi mode relative to Lava's fixed_pt CPU simulation, same network,
same inputs; also checks that the per-layer spike counts (and spike times) agree exactly.

    .venv/bin/python benchmarks/bench_loihi.py [--samples 32] [--net digits|strided] [--repeat 3]

Lava time is reported with and without compilation (the run itself: ``net.run`` of
samples × timesteps steps); the simulator time is one batched call (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--net", choices=("digits", "strided"), default="digits")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from neurodeploy.targets.loihi import LoihiTarget, load_artifact
    from neurodeploy.targets.loihi.program import quantize_input
    from neurodeploy.targets.loihi.runner import run_lava
    from neurodeploy.targets.loihi.simulate import simulate_program
    from neurodeploy.targets.loihi.testnets import digits_net, strided_net

    g = digits_net(0) if args.net == "digits" else strided_net(1)
    shape = tuple(g.nodes["input"].input_shape)
    x = np.random.default_rng(0).uniform(0, 1, (args.samples,) + shape)
    t = LoihiTarget()
    with tempfile.TemporaryDirectory() as d:
        t.emit(t.quantize(g, x), Path(d))
        prog, _ = load_artifact(d)
        xi = quantize_input(prog, x)
        t0 = time.perf_counter()
        lava = run_lava(Path(d) / "network.net", prog, xi, record=True)
        lava_total = time.perf_counter() - t0
    lava_run = lava.run_seconds
    sim_best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        sim = simulate_program(prog, xi, record=True)
        sim_best = min(sim_best, time.perf_counter() - t0)
    counts_equal = all(torch.equal(sim.counts[k], lava.counts[k]) for k in sim.counts)
    times_equal = all(torch.equal(sim.spikes[k], lava.spikes[k]) for k in sim.spikes)
    steps = prog.period * args.samples
    print(f"network: {args.net}, {len(prog.layers)} NetX layers, {args.samples} samples × "
          f"{prog.period} timesteps = {steps} Lava steps")
    print(f"lava fixed_pt: {lava_total:.3f} s total (incl. compile), {lava_run:.3f} s run "
          f"({1e3 * lava_run / steps:.2f} ms/step)")
    print(f"simulator    : {sim_best * 1e3:.2f} ms (batched, 1 thread)")
    print(f"speed-up     : {lava_run / sim_best:.0f}x vs Lava run, {lava_total / sim_best:.0f}x vs "
          f"Lava incl. compile (goal >= 100x)")
    print(f"spike counts agree: {counts_equal}; spike times agree: {times_equal}")
    from neurodeploy.targets.loihi.simulate import traffic
    tr = traffic(prog, sim)
    tot = tr["total"]
    print(f"graded-spike mode (one message carrying the count): "
          f"{tr['timesteps_per_sample']['graded']} vs {tr['timesteps_per_sample']['spikes']} "
          f"timesteps/sample; messages/sample {tot['graded_messages']:.0f} vs "
          f"{tot['spike_messages']:.0f} ({tot['message_ratio_spikes_over_graded']:.2f}x fewer); "
          f"synaptic ops/sample {tot['graded_synops']:.0f} MAC vs {tot['spike_synops']:.0f} AC")
    return 0 if counts_equal and times_equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
