"""What a standard NIR reader computes when it runs our SFA ``network.nir`` for T steps.

Our SFA file holds IF neurons that, in neurodeploy's semantics, integrate a layer's whole input
once and then fire at most D spikes (count = clip(floor((x + v_init)/θ), 0, D)). A standard reader
knows none of that: it feeds the (static) input every step and adds every Affine/Conv bias every
step. This script runs the demo chain encoder's file for T steps through

* ``sinabs.from_nir`` (IAF, MultiSpike, subtractive reset: what sinabs users get), and
* ``nirtorch.nir_to_torch`` with NIR's own IF definition (v += r·I; spike when v > θ; v = v_reset),
  mapped by hand (nirtorch has no IF entry), Flatten mapped to ``nn.Flatten(start_dim + 1)``,

and compares the spike counts per layer with ours (``ops.evaluate``, the closed form the simulator
equals). Measured (64 test digits, T = 17): sinabs.from_nir 16.2-17.5x ours per layer,
nirtorch with NIR's IF 7.3-12.4x (README, "NIR export: what other readers see"); the pulse
encoding (``--emit nir-pulse``, ``nir_pulse.py``) through sinabs.from_nir: 0 mismatches.

    .venv/bin/python benchmarks/bench_nir_sfa_readers.py [--timesteps 17] [--samples 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from neurodeploy import api, ir, ops  # noqa: E402
from neurodeploy.nir_io import to_nir  # noqa: E402


class NirIF(torch.nn.Module):
    """NIR's IF: v += r·I; z = v > θ; v = v_reset where z (hard reset)."""

    def __init__(self, node):
        super().__init__()
        self.r = torch.as_tensor(np.asarray(node.r), dtype=torch.float32)
        self.th = torch.as_tensor(np.asarray(node.v_threshold), dtype=torch.float32)
        self.v_reset = torch.as_tensor(np.asarray(node.v_reset), dtype=torch.float32)

    def forward(self, x, state=None):
        v = torch.zeros_like(x) if state is None else state
        v = v + self.r.reshape(self.r.shape) * x
        z = (v > self.th).to(x.dtype)
        return z, torch.where(z > 0, self.v_reset.expand_as(v), v)


def run_sinabs(ng, x, T: int) -> dict[str, float]:
    import sinabs

    N = x.shape[0]
    net = sinabs.from_nir(ng, batch_size=N, num_timesteps=T)
    counts: dict[str, float] = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: counts.__setitem__(n, float((o[0] if isinstance(o, tuple)
                                                                                      else o).sum())))
             for n, m in net.named_modules() if type(m).__name__ in ("IAFSqueeze", "IAF")]
    with torch.no_grad():
        net(x.unsqueeze(1).expand((N, T) + tuple(x.shape[1:])).reshape((N * T,) + tuple(x.shape[1:])))
    for h in hooks:
        h.remove()
    return counts


def run_nirtorch(ng, x, T: int) -> dict[str, float]:
    import nir
    import nirtorch

    flat = lambda n: torch.nn.Flatten(int(n.start_dim) + 1, int(n.end_dim) if int(n.end_dim) < 0 else int(n.end_dim) + 1)  # noqa: E731
    gm = nirtorch.nir_to_torch(ng, {nir.IF: NirIF, nir.Flatten: flat})
    ifs = {n for n, m in gm.named_modules() if isinstance(m, NirIF)}
    counts = {n: 0.0 for n in ifs}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: counts.__setitem__(n, counts[n] + float(o[0].sum())))
             for n, m in gm.named_modules() if n in ifs]
    state = None
    with torch.no_grad():
        for _ in range(T):
            _, state = gm(x, state) if state is not None else gm(x)
    for h in hooks:
        h.remove()
    return counts


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--timesteps", type=int, default=17)
    p.add_argument("--samples", type=int, default=64)
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    prepared = api.prepare(os.path.join(ROOT, "examples/digits_chain.pt"),
                           arch=os.path.join(ROOT, "examples/digits_chain.py") + ":build_model")
    g = prepared.canonical
    with np.load(os.path.join(ROOT, "examples/digits_test.npz")) as f:
        x = torch.as_tensor(f["x"][:a.samples])
    ours = {n: float(v.sum()) for n, v in ops.evaluate(g, x.double()).items() if isinstance(g.nodes[n], ir.IFNeuron)}
    ng = to_nir(g)
    theirs = {"sinabs.from_nir": run_sinabs(ng, x, a.timesteps), "nirtorch (NIR IF)": run_nirtorch(ng, x, a.timesteps)}
    print(f"SFA demo chain encoder, {a.samples} samples, T = {a.timesteps}: spikes per layer, reader / ours")
    for reader, c in theirs.items():
        ratios = []
        for n in g.of_type(ir.IFNeuron):
            key = next((k for k in c if k.replace("_", ".").endswith(n.replace("_", ".")) or k == n
                        or k.replace(".", "_") == n.replace(".", "_")), None)
            if key is not None and ours[n]:
                ratios.append(c[key] / ours[n])
                print(f"  {reader:<18} {n:<22} ours {ours[n]:>9.0f}  reader {c[key]:>9.0f}  x{c[key] / ours[n]:.2f}")
        if ratios:
            print(f"  {reader}: {min(ratios):.1f}-{max(ratios):.1f} x ours")
    import sinabs

    from neurodeploy.nir_pulse import pulse_input, to_nir_pulse

    N, T = x.shape[0], a.timesteps
    net = sinabs.from_nir(to_nir_pulse(g), batch_size=N, num_timesteps=T)
    with torch.no_grad():
        out = net(torch.as_tensor(pulse_input(x.numpy(), T), dtype=torch.float32).reshape((N * T, 2) + tuple(x.shape[2:])))
    out = (out[0] if isinstance(out, tuple) else out).reshape(N, T, -1).sum(1).double().numpy()
    want = ops.evaluate(g, x.double())[g.output_names()[0]].numpy().reshape(N, -1)
    print(f"  pulse encoding (--emit nir-pulse) through sinabs.from_nir, T = {T}: output {int((out != want).sum())} "
          f"mismatches of {want.size} (sum {out.sum():.1f} vs ours {want.sum():.1f})")


if __name__ == "__main__":
    main()
