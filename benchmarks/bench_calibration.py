"""Calibration (issue 11): time and per-layer counts equal to the model, before -> after, on data
the calibration never saw.

* digits_chain on loihi and speck (layer barrier): calibrated on examples/digits_calib.npz (64
  training images) and on examples/digits_train.npz (all 1,437 training images), measured on
  examples/digits_test.npz (360 images), with the end task of the checkpoint's linear probe;
* the 3x64x64 benchmark net (benchmarks/nets.py LargeConvNet, random weights) on loihi: calibrated
  on 64 random 8-bit images, measured on 64 others, with the class agreement of its 10 outputs;
* digits_chain on loihi with ``--synapse-groups 2`` (conv weights as two 8-bit synapse groups);
* Speck's 16-bit state headroom under the layer barrier (why finer weights cannot help there);
* the weight-bit study (sim) on digits_chain: final-layer agreement vs N;
* the E-SpikeFormer-style test model (conv stages, sim: residual sums share one scale): 8 bits.

Run: python benchmarks/bench_calibration.py [--skip-large] [--bits 4 6 8 10 12]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from neurodeploy import api, ops  # noqa: E402
from neurodeploy.calibration.effect import measure  # noqa: E402
from neurodeploy.calibration.layerwise import weight_neuron_pairs  # noqa: E402
from neurodeploy.calibration.study import study, study_table  # noqa: E402
from neurodeploy.targets.loihi import calibrate as loihi_cal  # noqa: E402
from neurodeploy.targets.speck import calibrate as speck_cal  # noqa: E402

EX = ROOT / "examples"


def end_task(before, after, x) -> tuple[float, float]:
    """argmax agreement of the final layer's counts with the model's, before and after."""
    last = weight_neuron_pairs(before)[-1][1]
    with torch.inference_mode():
        ref = ops.evaluate(before, x, quantized=False)[last].flatten(1)
        b = ops.evaluate(before, x, quantized=True)[last].flatten(1)
        a = ops.evaluate(after, x, quantized=True)[last].flatten(1)
    # ties in the counts: count agreement as the model's argmax being among the program's maxima
    def agree(q):
        top = ref.argmax(1)
        return float((q.gather(1, top[:, None]).squeeze(1) == q.max(1).values).double().mean())
    return agree(b), agree(a)


def probe_end_task(before, after, x, probe) -> tuple[float, float]:
    """The checkpoint's linear probe on the final layer's features (verify's end task): argmax of the
    program's features vs the model's, before and after calibration."""
    from neurodeploy.verify import end_task_agreement

    last = weight_neuron_pairs(before)[-1][1]
    norm = float((before.metadata.get("neuron_norms") or {}).get(last, before.nodes[last].norm) or 1.0)
    with torch.inference_mode():  # features as the model outputs them: counts / norm (as verify does)
        ref = ops.evaluate(before, x, quantized=False)[last] / norm
        b, a = (ops.evaluate(q, x, quantized=True)[last] / norm for q in (before, after))
    return tuple(end_task_agreement(ref.numpy(), q.numpy(), probe)["agreement"] for q in (b, a))


def run(name, mod, canonical, xc, xt, data_name, classifier: bool = False, probe=None, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = mod.quantize_base(canonical, xc, **options)
        t0 = time.perf_counter()
        after, results, choice = mod.calibrate(canonical, xc, **options)
        dt = time.perf_counter() - t0
    eff = measure(before, after, xt, data_name)
    print(f"\n== {name}: calibration {dt:.1f} s on {len(xc)} samples" + (f", input choice {choice}" if choice else ""))
    print(eff.table())
    if probe is not None:
        tb, ta = probe_end_task(before, after, xt, probe)
        print(f"  end task (the checkpoint's probe, argmax = model's): {100 * tb:.2f}% -> {100 * ta:.2f}%")
    if classifier:  # the digits encoder's features are SimCLR features: its end task is verify's probe
        tb, ta = end_task(before, after, xt)
        print(f"  end task (the model's class is among the program's top counts): {100 * tb:.2f}% -> {100 * ta:.2f}%")
    return dt, eff


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--skip-espikeformer", action="store_true")
    ap.add_argument("--bits", type=int, nargs="*", default=[4, 6, 8, 10, 12])
    args = ap.parse_args()
    torch.set_num_threads(2)
    p = api.prepare(EX / "digits_chain.pt", arch=f"{EX / 'digits_chain.py'}:build_model")
    xc = np.load(EX / "digits_calib.npz")["x"]
    xt = np.load(EX / "digits_test.npz")["x"]
    probe = torch.load(EX / "digits_chain.pt", weights_only=True)["probe"]
    for calib in ("digits_calib.npz", "digits_train.npz"):  # 64 training images; all 1,437 of them
        xk = np.load(EX / calib)["x"]
        print(f"\n######## calibration data: {calib} ({len(xk)} training images, no labels)")
        run("digits_chain, loihi", loihi_cal, p.canonical, xk, xt, "digits_test.npz (360)", probe=probe)
        run("digits_chain, loihi --synapse-groups 2", loihi_cal, p.canonical, xk, xt, "digits_test.npz (360)",
            probe=probe, synapse_groups=2)
        run("digits_chain, speck (layer barrier)", speck_cal, p.canonical, xk, xt, "digits_test.npz (360)",
            probe=probe)
    speck_state_headroom(p.canonical, xc)
    if args.bits:
        rows = study(p.canonical, xc, xt, args.bits, "digits_test.npz (360)")
        print()
        print(study_table(rows, "digits_test.npz (360)"))
    if not args.skip_large:
        from nets import LargeConvNet, image_input, to_graph

        from neurodeploy.passes.fold import canonicalize
        g = canonicalize(to_graph(LargeConvNet()))
        run("3x64x64 bench net (LargeConvNet), loihi", loihi_cal, g, image_input(64, 0), image_input(64, 1),
            "64 held-out random images", classifier=True)
        run("3x64x64 bench net (LargeConvNet), loihi --synapse-groups 2", loihi_cal, g, image_input(64, 0),
            image_input(64, 1), "64 held-out random images", classifier=True, synapse_groups=2)
    if not args.skip_espikeformer:
        espikeformer_study()


def speck_state_headroom(canonical, xc) -> None:
    """Why Speck's barrier schedule cannot take finer weights: per layer, the 16-bit state over what
    the barrier needs (hold H + worst negative partial sum N + θ, all at the layer's scale). A finer
    weight scale (more bits, e.g. by splitting channels) multiplies H, N and θ alike."""
    from neurodeploy.targets.speck.barrier import quantize_for_barrier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q, plan = quantize_for_barrier(canonical, xc, input_bound=16, input_scale=16.0, max_input_events=16)
    print("\n== speck layer barrier: 16-bit state headroom at the calibrated input code (x finer scale that fits)")
    for name, lb in plan.layers.items():  # plan_barrier's own test: v0 - H - N >= -32768, H + θ - 1 <= 32767
        held = plan.held_initial_values(q, name)[:, 0, 0]
        room = min(32768 / max(int((lb.negative - held).max()), 1), 32767 / (int(lb.hold.max()) + lb.theta - 1))
        print(f"  {name:<22} θ_q {lb.theta:>5}  H {int(lb.hold.max()):>6}  N {int(lb.negative.max()):>6}  "
              f"headroom x{room:.2f} (+{max(0.0, float(np.log2(room))):.1f} bits)")
    shrunk = q.metadata["quantization"].get("barrier_scales") or {}
    for layer, f in shrunk.items():
        print(f"  {layer}: scale already x{f:.3f} below its 8-bit weights so that the barrier fits")


def espikeformer_study() -> None:
    """The E-SpikeFormer-style test model (tiny widths, conv stages: attention=False, 3x64x64, random
    weights): sim only (residual sums), so the 8-bit weight study, every neuron layer listed."""
    import tempfile

    sys.path.insert(0, str(EX))
    import espikeformer as E

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "esf.pt"
        torch.save({"model": E.build_tiny_model(attention=False).state_dict()}, path)
        p = api.prepare(path, arch=f"{EX / 'espikeformer.py'}:build_tiny_model", arch_kwargs={"attention": False},
                        input_shape=(3, 64, 64))
    xc, xt = E.random_images(32, 64, seed=0), E.random_images(32, 64, seed=1)
    rows = study(p.canonical, xc, xt, [8], "32 held-out random images")
    print()
    print(study_table(rows, "32 held-out random images (E-SpikeFormer-style, conv stages, sim)"))
    lay = rows[0].layers
    print(f"  all {len(lay)} neuron layers, before -> after: "
          + ", ".join(f"{r['pct_before']:.1f}->{r['pct_after']:.1f}" for r in lay))


if __name__ == "__main__":
    main()
