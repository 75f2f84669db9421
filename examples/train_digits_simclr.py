"""Pre-train the bundled SFA demo encoder with SimCLR (NT-Xent) on sklearn's 8x8 digits, fit a
linear probe on 20% of the training labels, and write the demo artefacts.

    .venv/bin/python examples/train_digits_simclr.py --out examples/digits_sfa.pt
    .venv/bin/python examples/train_digits_simclr.py --variant chain --out examples/digits_chain.pt

``--variant metaformer`` (default): the MetaFormer encoder of ``digits_sfa.py``; writes (next to
--out) the checkpoint, ``digits_test.npz`` (x, y of the test split) and ``digits_calib.npz`` (64
training images, no labels needed). ``--variant chain``: the chain-shaped encoder of
``digits_chain.py`` (fits Speck and Loihi); writes only the checkpoint (the two .npz files are the
same for both variants). CPU only, 2 threads, deterministic.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digits_sfa as ds  # noqa: E402

# per-variant defaults: (model module, checkpoint, encoder widths)
VARIANTS = {
    "metaformer": dict(module="digits_sfa", out="digits_sfa.pt", c1=16, c2=32, feat_dim=64),
    "chain": dict(module="digits_chain", out="digits_chain.pt", c1=16, c2=32, c3=64, feat_dim=64),
}


def set_determinism(seed: int):
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)


def augment(x: torch.Tensor, g: torch.Generator, shift: float, rot_deg: float,
            scale: float, noise: float, erase_p: float) -> torch.Tensor:
    """Random affine (shift +-`shift` px, rotation, zoom), intensity scaling, gaussian noise and
    random 3x3 erasing. Vectorised; all randomness from generator ``g``."""
    n = x.shape[0]
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    ang = (u(n) * 2 - 1) * math.radians(rot_deg)
    sc = 1 + (u(n) * 2 - 1) * scale
    t = (u(n, 2) * 2 - 1) * shift * (2.0 / 8.0)          # pixels -> normalised coordinates
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1),
                         torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x * (0.7 + 0.6 * u(n, 1, 1, 1))                  # contrast
    x = x + noise * torch.randn(x.shape, generator=g)
    # random erasing of one 3x3 patch with probability erase_p
    cy = torch.randint(0, 8, (n,), generator=g)
    cx = torch.randint(0, 8, (n,), generator=g)
    ar = torch.arange(8)
    my = ((ar[None] - cy[:, None]).abs() <= 1)
    mx = ((ar[None] - cx[:, None]).abs() <= 1)
    m = (my[:, :, None] & mx[:, None, :]) & (u(n) < erase_p)[:, None, None]
    x = x.masked_fill(m[:, None], 0.0)
    return x.clamp(0.0, 1.0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 512):
    """Re-estimate BatchNorm running statistics on clean (un-augmented) images: the exact
    population average over ``x`` (momentum=None), no labels used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def evaluate_probe(encoder, x_tr, y_tr, lab_idx, x_te, y_te):
    f_tr = ds.encode(encoder, x_tr)
    f_te = ds.encode(encoder, x_te)
    w, b = ds.fit_probe(f_tr[lab_idx], y_tr[lab_idx])
    acc_tr = ds.probe_accuracy(f_tr, y_tr, w, b)
    acc_te = ds.probe_accuracy(f_te, y_te, w, b)
    active = float((f_te > 0).float().mean())
    return w, b, acc_tr, acc_te, active, f_te


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", choices=sorted(VARIANTS), default="metaformer",
                   help="metaformer: digits_sfa.py (sim target); chain: digits_chain.py "
                        "(Speck / Loihi)")
    p.add_argument("--out", default=None, help="checkpoint (default: examples/digits_sfa.pt "
                                                "or examples/digits_chain.pt)")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--c1", type=int, default=None, help="default 16")
    p.add_argument("--c2", type=int, default=None, help="default 32")
    p.add_argument("--c3", type=int, default=None, help="chain only; default 64")
    p.add_argument("--feat-dim", type=int, default=None, help="default 64")
    p.add_argument("--proj-hidden", type=int, default=128)
    p.add_argument("--proj-dim", type=int, default=64)
    p.add_argument("--shift", type=float, default=1.0, help="max translation, pixels")
    p.add_argument("--rot-deg", type=float, default=10.0)
    p.add_argument("--scale", type=float, default=0.1)
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--erase-p", type=float, default=0.5)
    p.add_argument("--label-fraction", type=float, default=0.2)
    p.add_argument("--n-calib", type=int, default=64)
    a = p.parse_args(argv)
    variant = VARIANTS[a.variant]
    if a.out is None:
        a.out = os.path.join(os.path.dirname(__file__), variant["out"])
    for k in ("c1", "c2", "c3", "feat_dim"):
        if getattr(a, k) is None:
            setattr(a, k, variant.get(k))
    if a.variant == "metaformer":
        if a.c3 is not None:
            p.error("--c3 is for --variant chain only")
        del a.c3                        # keep the metaformer checkpoint's args as they were
    net = ds if a.variant == "metaformer" else __import__(variant["module"])

    t_start = time.time()
    set_determinism(a.seed)
    x_tr_np, y_tr_np, x_te_np, y_te_np = ds.load_digits_split(a.seed)
    x_tr, y_tr = torch.from_numpy(x_tr_np), torch.from_numpy(y_tr_np)
    x_te, y_te = torch.from_numpy(x_te_np), torch.from_numpy(y_te_np)
    lab_idx = torch.from_numpy(ds.labelled_subset(y_tr_np, a.label_fraction, a.seed))
    print(f"digits: train {len(x_tr)}, test {len(x_te)}, labelled for the probe {len(lab_idx)}")

    arch = dict(in_channels=1, c1=a.c1, c2=a.c2, feat_dim=a.feat_dim,
                proj_hidden=a.proj_hidden, proj_dim=a.proj_dim)
    if a.variant == "chain":
        arch["c3"] = a.c3
    model = net.build_model(**arch)

    # ---- baseline: random-init encoder (BN statistics estimated on the clean train images) ----
    rand_model = net.build_model(**arch)
    rand_model.load_state_dict(model.state_dict())
    recalibrate_bn(rand_model.encoder, x_tr)
    _, _, r_tr, r_te, r_act, _ = evaluate_probe(rand_model.encoder, x_tr, y_tr, lab_idx,
                                                x_te, y_te)
    print(f"random-init encoder: probe acc train {r_tr:.4f} test {r_te:.4f} "
          f"(active features {r_act:.2f})")
    del rand_model
    # reference: the same probe on the raw pixels (64 real values, not spikes)
    wp, bp = ds.fit_probe(x_tr[lab_idx].flatten(1), y_tr[lab_idx])
    px_te = ds.probe_accuracy(x_te.flatten(1), y_te, wp, bp)
    print(f"raw pixels (reference): probe acc test {px_te:.4f}")

    # ---- SimCLR pre-training ----
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    steps_per_epoch = math.ceil(len(x_tr) / a.batch_size)
    total = a.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    g = torch.Generator().manual_seed(a.seed + 1)
    aug = dict(shift=a.shift, rot_deg=a.rot_deg, scale=a.scale, noise=a.noise,
               erase_p=a.erase_p)
    for ep in range(a.epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=g)
        tot, nb = 0.0, 0
        for i in range(0, len(perm), a.batch_size):
            idx = perm[i:i + a.batch_size]
            if len(idx) < 32:           # avoid a tiny last batch (BatchNorm / contrastive)
                continue
            xb = x_tr[idx]
            v1, v2 = augment(xb, g, **aug), augment(xb, g, **aug)
            z = model(torch.cat([v1, v2]))
            loss = nt_xent(z[:len(idx)], z[len(idx):], a.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
            nb += 1
        if ep % 25 == 0 or ep == a.epochs - 1:
            print(f"epoch {ep:4d}  loss {tot / max(nb, 1):.4f}  ({time.time() - t_start:.0f} s)",
                  flush=True)

    # ---- linear probe on the encoder's integer features ----
    recalibrate_bn(model, x_tr)
    w, b, t_tr, t_te, t_act, f_te = evaluate_probe(model.encoder, x_tr, y_tr, lab_idx,
                                                   x_te, y_te)
    counts = f_te * ds.D
    assert torch.equal(counts, counts.round()) and counts.min() >= 0 and counts.max() <= ds.D
    elapsed = time.time() - t_start
    print(f"SimCLR encoder:      probe acc train {t_tr:.4f} test {t_te:.4f} "
          f"(active features {t_act:.2f})")
    print(f"training + probe took {elapsed:.1f} s")

    # ---- artefacts ----
    args = dict(vars(a))
    args.pop("out")
    if a.variant == "metaformer":
        args.pop("variant")             # the metaformer checkpoint's args as they were
    args.update(arch)
    args.update(D=ds.D, norm=ds.D, n_train=len(x_tr), n_test=len(x_te),
                n_labelled=int(len(lab_idx)), random_init_probe_accuracy_test=r_te,
                raw_pixel_probe_accuracy_test=px_te, probe_accuracy_train=t_tr,
                train_seconds=round(elapsed, 1), torch_version=str(torch.__version__))
    ckpt = {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "args": args,
        "input_shape": [1, 8, 8],
        "probe": {"weight": w, "bias": b},
        "probe_accuracy_test": float(t_te),
        "until": "encoder",
    }
    out_dir = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(out_dir, exist_ok=True)
    torch.save(ckpt, a.out)
    torch.load(a.out, weights_only=True)  # must load without pickles
    if a.variant != "metaformer":       # the .npz files are variant-independent: written once
        print(f"wrote {a.out} ({os.path.getsize(a.out) / 1024:.0f} KiB)")
        return t_te
    np.savez(os.path.join(out_dir, "digits_test.npz"), x=x_te_np.astype(np.float32),
             y=y_te_np.astype(np.int64))
    calib_idx = np.sort(np.random.default_rng(a.seed).permutation(len(x_tr_np))[:a.n_calib])
    np.savez(os.path.join(out_dir, "digits_calib.npz"), x=x_tr_np[calib_idx].astype(np.float32))
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 1024:.0f} KiB), digits_test.npz, "
          f"digits_calib.npz")
    return t_te


if __name__ == "__main__":
    main()
