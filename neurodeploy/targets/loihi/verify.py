"""``verify_lava``: run a Loihi artefact in Lava's fixed_pt CPU simulation *and* in the
bit-accurate simulator on the same inputs; per-layer spike counts and spike times must be equal.
Also reports how far both are from the integer model (``ops.evaluate`` of the un-quantised
canonical graph when a graph is given; always: the closed form of the quantised program)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ... import ir, ops
from ...errors import VerificationError


def _dev(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a.to(torch.int64) - b.to(torch.int64)).abs()
    return {"mismatches": int((d != 0).sum()), "total": int(d.numel()),
            "mismatch_rate": float((d != 0).double().mean()) if d.numel() else 0.0,
            "mean_abs_diff": float(d.double().mean()) if d.numel() else 0.0,
            "max_abs_diff": int(d.max()) if d.numel() else 0}


def verify_lava(target, x, calibration=None, raise_on_mismatch: bool = False,
                mode: str = "spikes", **options) -> dict:
    """``target``: an artefact folder (``network.net`` + ``loihi.json``) or a canonical graph
    (quantised here with ``calibration``, default ``x``, and emitted in ``mode`` to a temp
    folder). Returns a report; ``report['exact']`` is True when Lava and the simulator agree on
    every layer's spike counts and spike times (payloads in graded mode)."""
    from . import LoihiTarget, load_artifact
    from .program import quantize_input
    from .runner import run_lava
    from .simulate import integer_model, simulate_program

    x_np = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    graph = target if isinstance(target, ir.Graph) else None
    tmp = None
    qgraph = None
    if graph is not None:
        tgt = LoihiTarget()
        qgraph = graph if graph.is_quantized else tgt.quantize(
            graph, x_np if calibration is None else calibration, **options)
        tmp = tempfile.TemporaryDirectory(prefix="nd-loihi-")
        out_dir = Path(tmp.name)
        tgt.emit(qgraph, out_dir, mode=mode)
    else:
        out_dir = Path(target)
    try:
        prog, side = load_artifact(out_dir)
        xi = quantize_input(prog, x_np)
        t0 = time.perf_counter()
        sim = simulate_program(prog, xi, record=True)
        t_sim = time.perf_counter() - t0
        t0 = time.perf_counter()
        lava = run_lava(out_dir / "network.net", prog, xi, record=True)
        t_lava = time.perf_counter() - t0
    finally:
        if tmp is not None:
            tmp.cleanup()
    closed = integer_model(prog, xi)
    ref_float = ref_q = None
    if graph is not None:
        ref_float = ops.evaluate(graph, torch.as_tensor(x_np), quantized=False) \
            if not graph.is_quantized else None
        ref_q = ops.evaluate(qgraph, torch.as_tensor(x_np), quantized=True)
    layers = {}
    exact = True
    for spec in prog.layers:
        n = spec.name
        cm = int((sim.counts[n] != lava.counts[n]).sum())
        tm = int((sim.spikes[n] != lava.spikes[n]).sum())
        exact &= cm == 0 and tm == 0
        entry = {"count_mismatches": cm, "spike_time_mismatches": tm,
                 "neurons": int(sim.counts[n][0].numel()), "samples": int(xi.shape[0]),
                 "spikes_lava": int(lava.counts[n].sum()), "spikes_sim": int(sim.counts[n].sum()),
                 "vs_quantized_closed_form": _dev(sim.counts[n], closed[n])}
        if ref_q is not None and n in ref_q:
            entry["vs_integer_model_quantized"] = _dev(sim.counts[n], ref_q[n])
        if ref_float is not None and n in ref_float:
            entry["sim_vs_integer_model"] = _dev(sim.counts[n], ref_float[n])
            entry["lava_vs_integer_model"] = _dev(lava.counts[n], ref_float[n])
        layers[n] = entry
    report = {"exact": exact, "layers": layers, "samples": int(xi.shape[0]),
              "timesteps_per_sample": prog.period, "lava_steps": prog.period * int(xi.shape[0]),
              "seconds": {"lava": t_lava, "sim": t_sim},
              "speedup_sim_over_lava": t_lava / max(t_sim, 1e-9),
              "neuron_model": side["neuron_model"]["name"], "mode": prog.mode}
    if raise_on_mismatch and not exact:
        bad = {k: (v["count_mismatches"], v["spike_time_mismatches"]) for k, v in layers.items()
               if v["count_mismatches"] or v["spike_time_mismatches"]}
        raise VerificationError(f"Lava and the simulator disagree: {bad} "
                                "(count, spike-time mismatches per layer)")
    return report
