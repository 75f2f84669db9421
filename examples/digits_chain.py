"""Second bundled demo model: a *chain-shaped* SFA encoder that fits Speck and Loihi 2 (NetX),
pre-trained with SimCLR on scikit-learn's 8x8 digits exactly like ``digits_sfa.py``.

``digits_sfa.py``'s MetaFormer encoder is right for the ``sim`` target, but the hardware targets
reject it: Speck cannot add pre-activation currents (residual Add of two conv outputs) and needs
every weight layer followed directly by a spiking layer (pooling only after spikes); NetX files are
chains of (conv | dense + IF neuron) with sum-pool / flatten in between. This encoder is such a
chain. It uses the same SFA code style and the same activation modules (imported from
``digits_sfa.py``): integer activations a = clip(round(x), 0, D) / norm with D = norm = 4 in both
rounding forms (``MultiSpike``: round half to even, ``Multispike``: round half up), the activation
*before* each conv, BatchNorm after it.

Encoder (input [B, 1, 8, 8]) -- module paths relative to ``ChainEncoder``:

    stem_conv  Conv2d(1, c1, 3, pad 1) + stem_bn             -> [c1, 8, 8] (real-valued input)
    spike1     Multispike(lens=4)            (half up)
    conv1      Conv2d(c1, c2, 3, stride 2, pad 1) + bn1       -> [c2, 4, 4]
    spike2     MultiSpike(max_value=4, norm=4) (half even)
    conv2      Conv2d(c2, c3, 3, stride 2, pad 1) + bn2       -> [c3, 2, 2]
    spike3     Multispike(lens=4)            (half up)
    pool       AvgPool2d(2) on the spikes (a sum-pool; its 1/4 folds into head) -> [c3, 1, 1]
    head       Conv2d(c3, feat_dim, 1) + head_bn              -> [feat_dim, 1, 1]
    spike_out  MultiSpike(max_value=4, norm=4) (half even)    -> count / 4
    flatten(1)                                               -> features [feat_dim]

Every weight layer is followed directly (after its BN, which folds into it) by an activation;
pooling comes only directly after an activation; no residual, no global mean of pre-activations.
4 weight layers (Speck: <= 9), channels <= 1024, kernels <= 16, strides 1/2, padding <= 7.

SimCLR model: ``encoder`` + ``projector = Sequential(Linear(feat_dim, 128), BatchNorm1d(128),
MultiSpike(4, 4), Linear(128, 64))``; the checkpoint (``digits_chain.pt``) holds the whole SimCLR
model's state_dict and ``'until': 'encoder'`` (the projector is training-only).
"""
from __future__ import annotations

import importlib.util
import os
import sys

import torch
import torch.nn as nn

try:  # the sibling file; `neurodeploy compile --arch examples/digits_chain.py:...` puts its folder
    import digits_sfa  # noqa: F401  (on sys.path while importing this file)
except ImportError:  # imported by path from elsewhere: load the sibling by path
    _spec = importlib.util.spec_from_file_location(
        "digits_sfa", os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_sfa.py"))
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["digits_sfa"] = _mod
    _spec.loader.exec_module(_mod)

from digits_sfa import (D, Multispike, MultiSpike, encode, fit_probe,  # noqa: E402,F401
                        labelled_subset, load_digits_split, probe_accuracy)

__all__ = ["ChainEncoder", "SimCLRChainModel", "build_model", "build_encoder", "D",
           "MultiSpike", "Multispike", "load_digits_split", "labelled_subset", "fit_probe",
           "encode", "probe_accuracy"]


class ChainEncoder(nn.Module):
    def __init__(self, in_channels=1, c1=16, c2=32, c3=64, feat_dim=64):
        super().__init__()
        # stem: the first layer sees the real-valued image
        self.stem_conv = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(c1)
        self.spike1 = Multispike(lens=D)
        self.conv1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)   # 8x8 -> 4x4
        self.bn1 = nn.BatchNorm2d(c2)
        self.spike2 = MultiSpike(max_value=D, norm=D)
        self.conv2 = nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False)   # 4x4 -> 2x2
        self.bn2 = nn.BatchNorm2d(c3)
        self.spike3 = Multispike(lens=D)
        self.pool = nn.AvgPool2d(2)                                          # 2x2 -> 1x1 (spikes)
        self.head = nn.Conv2d(c3, feat_dim, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(feat_dim)
        self.spike_out = MultiSpike(max_value=D, norm=D)
        self.feat_dim = feat_dim

    def forward(self, x):
        x = self.stem_bn(self.stem_conv(x))
        x = self.bn1(self.conv1(self.spike1(x)))
        x = self.bn2(self.conv2(self.spike2(x)))
        x = self.head_bn(self.head(self.pool(self.spike3(x))))
        return self.spike_out(x).flatten(1)      # features = spike count / 4, [B, feat_dim]


class SimCLRChainModel(nn.Module):
    def __init__(self, in_channels=1, c1=16, c2=32, c3=64, feat_dim=64, proj_hidden=128,
                 proj_dim=64):
        super().__init__()
        self.encoder = ChainEncoder(in_channels, c1, c2, c3, feat_dim)
        self.projector = nn.Sequential(
            nn.Linear(feat_dim, proj_hidden),
            nn.BatchNorm1d(proj_hidden),
            MultiSpike(max_value=D, norm=D),
            nn.Linear(proj_hidden, proj_dim),
        )

    def forward(self, x):
        return self.projector(self.encoder(x))


_ENC_KEYS = ("in_channels", "c1", "c2", "c3", "feat_dim")
_ALL_KEYS = _ENC_KEYS + ("proj_hidden", "proj_dim")


def build_model(**kw) -> SimCLRChainModel:
    """The full SimCLR model; ``digits_chain.pt``'s state_dict matches it (strict)."""
    return SimCLRChainModel(**{k: v for k, v in kw.items() if k in _ALL_KEYS})


def build_encoder(**kw) -> ChainEncoder:
    """The encoder only (what gets deployed; its state_dict is the 'encoder.' part)."""
    return ChainEncoder(**{k: v for k, v in kw.items() if k in _ENC_KEYS})

