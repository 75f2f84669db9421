"""Pre-train the time-stepped LIF encoder of ``digits_lif.py`` with SimCLR (NT-Xent) on sklearn's
8x8 digits, fit a linear probe on the spike counts with 20% of the training labels, and write
``examples/digits_lif.pt`` (encoder weights, probe, accuracy).

    .venv/bin/python examples/train_digits_lif_simclr.py
    .venv/bin/python examples/train_digits_lif_simclr.py --variant iaf   # Speck: digits_iaf.pt

``--variant iaf``: IAF neurons (β = 1, sinabs MultiSpike, same-step subtraction) on event frames
(``digits_lif.events``: a thermometer code, round(x·T) events per pixel); also writes
``digits_events_test.npz`` (the test split as events [N, T, 1, 8, 8], with y).

Plain torch (the LIF neuron is snnTorch ``Leaky``'s equations written out, surrogate gradient),
CPU, 2 threads, deterministic; 100 epochs, about 20 s on an idle 2-core machine. Data: the same split as the SFA demo
(``digits_test.npz`` is its test split, ``digits_calib.npz`` 64 training images).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digits_lif as dl  # noqa: E402
import digits_sfa as ds  # noqa: E402
from train_digits_simclr import augment, nt_xent, set_determinism  # noqa: E402


@torch.no_grad()
def spike_counts(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    encoder.eval()
    return encoder(dl.events(x, encoder.timesteps) if encoder.iaf else x).sum(1)


def probe(encoder, x_tr, y_tr, lab_idx, x_te, y_te):
    f_tr, f_te = spike_counts(encoder, x_tr), spike_counts(encoder, x_te)
    w, b = ds.fit_probe(f_tr[lab_idx], y_tr[lab_idx])
    return w, b, ds.probe_accuracy(f_tr, y_tr, w, b), ds.probe_accuracy(f_te, y_te, w, b), f_te


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", choices=("lif", "iaf"), default="lif")
    p.add_argument("--out", default=None, help="default examples/digits_lif.pt (iaf: digits_iaf.pt)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--feat-dim", type=int, default=64)
    p.add_argument("--beta", type=float, default=0.9)
    p.add_argument("--timesteps", type=int, default=dl.TIMESTEPS)
    p.add_argument("--label-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    if a.out is None:
        a.out = os.path.join(here, f"digits_{a.variant}.pt")

    t0 = time.time()
    set_determinism(a.seed)
    x_tr_np, y_tr_np, x_te_np, y_te_np = ds.load_digits_split(a.seed)
    x_tr, y_tr = torch.from_numpy(x_tr_np), torch.from_numpy(y_tr_np)
    x_te, y_te = torch.from_numpy(x_te_np), torch.from_numpy(y_te_np)
    lab_idx = torch.from_numpy(ds.labelled_subset(y_tr_np, a.label_fraction, a.seed))
    arch = dict(hidden=a.hidden, feat_dim=a.feat_dim, beta=a.beta, timesteps=a.timesteps, iaf=a.variant == "iaf")
    encoder = dl.build_encoder(**arch)
    head = nn.Sequential(nn.Linear(a.feat_dim, 128), nn.ReLU(), nn.Linear(128, 64))
    *_, r_te, _ = probe(encoder, x_tr, y_tr, lab_idx, x_te, y_te)
    print(f"random-init LIF encoder: probe acc test {r_te:.4f}")

    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=a.lr)
    steps = math.ceil(len(x_tr) / a.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.epochs * steps)
    g = torch.Generator().manual_seed(a.seed)
    aug = dict(shift=1.0, rot_deg=10.0, scale=0.1, noise=0.05, erase_p=0.5)
    for epoch in range(a.epochs):
        encoder.train()
        perm = torch.randperm(len(x_tr), generator=g)
        total = 0.0
        for i in range(steps):
            xb = x_tr[perm[i * a.batch_size:(i + 1) * a.batch_size]]
            v = torch.cat([augment(xb, g, **aug), augment(xb, g, **aug)])
            z = head(encoder(dl.events(v, a.timesteps) if encoder.iaf else v).mean(1))  # firing rates over T -> projection
            loss = nt_xent(z[:len(xb)], z[len(xb):], a.temperature)  # the two views of each image
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        if epoch % 5 == 4 or epoch == a.epochs - 1:
            print(f"epoch {epoch + 1:3d}  NT-Xent {total / steps:.4f}")
    w, b, t_tr, t_te, f_te = probe(encoder, x_tr, y_tr, lab_idx, x_te, y_te)
    elapsed = time.time() - t0
    rate = float(f_te.mean() / a.timesteps)
    print(f"SimCLR LIF encoder: probe acc train {t_tr:.4f} test {t_te:.4f} (output firing rate {rate:.3f}); "
          f"{elapsed:.0f} s")
    ckpt = {"model": {k: v.detach().clone() for k, v in encoder.state_dict().items()},
            "args": {**vars(a), "out": os.path.basename(a.out), "random_init_probe_accuracy_test": r_te,
                     "probe_accuracy_train": t_tr, "train_seconds": round(elapsed, 1),
                     "torch_version": str(torch.__version__)},
            "arch_kwargs": arch, "input_shape": [1, 8, 8], "timesteps": a.timesteps,
            "input_layout": "NT" if encoder.iaf else "static",
            "probe": {"weight": w, "bias": b}, "probe_accuracy_test": float(t_te)}
    torch.save(ckpt, a.out)
    torch.load(a.out, weights_only=True)  # must load without pickles
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 1024:.0f} KiB)")
    if encoder.iaf:
        np.savez_compressed(os.path.join(os.path.dirname(os.path.abspath(a.out)), "digits_events_test.npz"),
                            x=dl.events(x_te, a.timesteps).numpy().astype(np.float32), y=y_te_np)
    return t_te


if __name__ == "__main__":
    main()
