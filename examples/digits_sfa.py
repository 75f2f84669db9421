"""Bundled demo model: a small SFA (Spike Firing Approximation) encoder pre-trained with SimCLR on
scikit-learn's 8x8 digits.

The code is written the way public SFA code (Yao et al., E-SpikeFormer / SpikeYOLO) is written, so
that the converter is exercised on realistic model code:

* integer activations a = clip(round(x), 0, D) / norm as ``torch.autograd.Function`` subclasses
  with a straight-through gradient, in BOTH rounding forms:
  ``Quant`` / ``MultiSpike``   -> ``torch.round(torch.clamp(x, 0, D))``   (round half to even)
  ``multispike`` / ``Multispike`` -> ``torch.floor(torch.clamp(x, 0, D) + 0.5)`` (round half up)
* the activation sits *before* each conv (``x = bn(conv(spike(x)))``),
* a pre-activation (membrane-shortcut) residual ``x = block(x) + x``,
* global average pooling ``x.flatten(2).mean(2)`` before the last activation.

D = 4 and norm = 4 everywhere: each activation outputs (integer spike count in [0, 4]) / 4.

Encoder (input [B, 1, 8, 8]) -- module paths relative to ``SFAEncoder``:

    stem_conv  Conv2d(1, 16, 3, pad 1) + stem_bn        -> [16, 8, 8]  (real-valued input: MACs)
    spike1     Multispike(lens=4)        (floor form)
    conv1      Conv2d(16, 32, 3, pad 1) + bn1           -> [32, 8, 8]
    spike2     MultiSpike(max_value=4, norm=4) (round form)
    conv2      Conv2d(32, 32, 3, stride 2, pad 1) + bn2 -> [32, 4, 4]
    block      SepConv (residual, x = block(x) + x):
      block.spike_dw  MultiSpike                         (round form)
      block.dw        Conv2d(32, 32, 3, pad 1, groups=32) + block.bn_dw
      block.spike_pw  Multispike                         (floor form)
      block.pw        Conv2d(32, 32, 1) + block.bn_pw     -> [32, 4, 4]
    spike3     Multispike                (floor form)
    pool       AvgPool2d(2)  (on spikes: a sum-pool folded as 1/4 into conv3) -> [32, 2, 2]
    conv3      Conv2d(32, 64, 1) + bn3                  -> [64, 2, 2]
    x.flatten(2).mean(2)                                -> [64]
    spike_out  MultiSpike(max_value=4, norm=4) (round form) -> features [64] in {0, .25, ..., 1}

SimCLR model: ``encoder`` + ``projector = Sequential(Linear(64, 128), BatchNorm1d(128),
MultiSpike(4, 4), Linear(128, 64))``. The checkpoint (``digits_sfa.pt``) holds the whole SimCLR
model's state_dict and ``'until': 'encoder'``: deploy the encoder, the projector is training-only.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

__all__ = ["Quant", "MultiSpike", "multispike", "Multispike", "SepConv", "SFAEncoder",
           "SimCLRModel", "build_model", "build_encoder", "load_digits_split", "fit_probe",
           "D"]

D = 4  # max integer (spikes per neuron per sample)


# --------------------------------------------------------------------------------------------
# Integer activations (both forms found in the public SFA code)
# --------------------------------------------------------------------------------------------
class Quant(torch.autograd.Function):
    """round(clamp(x, min, max)) -- torch.round rounds half to even. Straight-through gradient."""

    @staticmethod
    def forward(ctx, i, min_value, max_value):
        ctx.min = min_value
        ctx.max = max_value
        ctx.save_for_backward(i)
        return torch.round(torch.clamp(i, min=min_value, max=max_value))

    @staticmethod
    def backward(ctx, grad_output):
        grad_input = grad_output.clone()
        i, = ctx.saved_tensors
        grad_input[i < ctx.min] = 0
        grad_input[i > ctx.max] = 0
        return grad_input, None, None


class MultiSpike(nn.Module):
    """Integer spike count clip(round_half_even(x), 0, max_value), divided by ``norm``."""

    def __init__(self, min_value=0, max_value=4, norm=None):
        super().__init__()
        self.min_value = min_value
        self.max_value = max_value
        self.norm = max_value if norm is None else norm

    def forward(self, x):
        return Quant.apply(x, self.min_value, self.max_value) / self.norm

    def extra_repr(self):
        return f"min_value={self.min_value}, max_value={self.max_value}, norm={self.norm}"


class multispike(torch.autograd.Function):
    """floor(clamp(x, 0, lens) + 0.5) -- rounds half up. Straight-through gradient."""

    @staticmethod
    def forward(ctx, input, lens):
        ctx.save_for_backward(input)
        ctx.lens = lens
        return torch.floor(torch.clamp(input, 0, lens) + 0.5)

    @staticmethod
    def backward(ctx, grad_output):
        input, = ctx.saved_tensors
        grad_input = grad_output.clone()
        temp1 = 0 < input
        temp2 = input < ctx.lens
        return grad_input * temp1.float() * temp2.float(), None


class Multispike(nn.Module):
    """Integer spike count floor(clamp(x, 0, lens) + 0.5), divided by ``lens``."""

    def __init__(self, lens=4, spike=multispike):
        super().__init__()
        self.lens = lens
        self.spike = spike

    def forward(self, inputs):
        return self.spike.apply(inputs, self.lens) / self.lens

    def extra_repr(self):
        return f"lens={self.lens}"


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------
class SepConv(nn.Module):
    """Depthwise-separable branch (MetaFormer style); the caller adds the shortcut."""

    def __init__(self, dim, kernel_size=3):
        super().__init__()
        self.spike_dw = MultiSpike(max_value=D, norm=D)
        self.dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim,
                            bias=False)
        self.bn_dw = nn.BatchNorm2d(dim)
        self.spike_pw = Multispike(lens=D)
        self.pw = nn.Conv2d(dim, dim, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(dim)

    def forward(self, x):
        x = self.bn_dw(self.dw(self.spike_dw(x)))
        x = self.bn_pw(self.pw(self.spike_pw(x)))
        return x


class SFAEncoder(nn.Module):
    def __init__(self, in_channels=1, c1=16, c2=32, feat_dim=64):
        super().__init__()
        # stem: the first layer sees the real-valued image
        self.stem_conv = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(c1)
        self.spike1 = Multispike(lens=D)
        self.conv1 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c2)
        self.spike2 = MultiSpike(max_value=D, norm=D)
        self.conv2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1, bias=False)   # 8x8 -> 4x4
        self.bn2 = nn.BatchNorm2d(c2)
        self.block = SepConv(c2)
        self.spike3 = Multispike(lens=D)
        self.pool = nn.AvgPool2d(2)                                          # 4x4 -> 2x2
        self.conv3 = nn.Conv2d(c2, feat_dim, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(feat_dim)
        self.spike_out = MultiSpike(max_value=D, norm=D)
        self.feat_dim = feat_dim

    def forward(self, x):
        x = self.stem_bn(self.stem_conv(x))
        x = self.bn1(self.conv1(self.spike1(x)))
        x = self.bn2(self.conv2(self.spike2(x)))
        x = self.block(x) + x                    # membrane shortcut: pre-activation residual
        x = self.bn3(self.conv3(self.pool(self.spike3(x))))
        x = x.flatten(2).mean(2)                 # global average pool before the last activation
        return self.spike_out(x)                 # features = spike count / 4


class SimCLRModel(nn.Module):
    def __init__(self, in_channels=1, c1=16, c2=32, feat_dim=64, proj_hidden=128, proj_dim=64):
        super().__init__()
        self.encoder = SFAEncoder(in_channels, c1, c2, feat_dim)
        self.projector = nn.Sequential(
            nn.Linear(feat_dim, proj_hidden),
            nn.BatchNorm1d(proj_hidden),
            MultiSpike(max_value=D, norm=D),
            nn.Linear(proj_hidden, proj_dim),
        )

    def forward(self, x):
        return self.projector(self.encoder(x))


_ENC_KEYS = ("in_channels", "c1", "c2", "feat_dim")
_ALL_KEYS = _ENC_KEYS + ("proj_hidden", "proj_dim")


def build_model(**kw) -> SimCLRModel:
    """The full SimCLR model; ``digits_sfa.pt``'s state_dict matches it (strict)."""
    return SimCLRModel(**{k: v for k, v in kw.items() if k in _ALL_KEYS})


def build_encoder(**kw) -> SFAEncoder:
    """The encoder only (what gets deployed; its state_dict is the 'encoder.' part)."""
    return SFAEncoder(**{k: v for k, v in kw.items() if k in _ENC_KEYS})


# --------------------------------------------------------------------------------------------
# Data and linear probe
# --------------------------------------------------------------------------------------------
def load_digits_split(seed: int = 0):
    """sklearn digits (1797 images, bundled, no download), pixels /16 -> [0, 1] float32,
    shape [N, 1, 8, 8]; deterministic stratified 80/20 split. Returns numpy arrays
    (x_train, y_train, x_test, y_test) with y as int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed,
                                              stratify=y)
    return (np.ascontiguousarray(x_tr), np.ascontiguousarray(y_tr),
            np.ascontiguousarray(x_te), np.ascontiguousarray(y_te))


def labelled_subset(y_train, fraction: float = 0.2, seed: int = 0):
    """Indices of the labelled fraction of the training set (stratified, deterministic)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y_train))
    lab, _ = train_test_split(idx, train_size=fraction, random_state=seed, stratify=y_train)
    return np.sort(lab)


def fit_probe(features, labels, Cs=(0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)):
    """Multinomial logistic regression on (integer) features; C chosen by 5-fold CV on the
    given (labelled) samples only. Returns (weight [10, F], bias [10]) as float32 tensors;
    predict with ``argmax(features @ weight.T + bias)``."""
    import warnings

    from sklearn.linear_model import LogisticRegressionCV

    f = np.asarray(features.detach().cpu() if torch.is_tensor(features) else features,
                   dtype=np.float64)
    y = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
    clf = LogisticRegressionCV(Cs=list(Cs), cv=5, max_iter=5000, scoring="accuracy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # sklearn 1.9 attribute deprecations
        clf.fit(f, y)
    return (torch.tensor(clf.coef_, dtype=torch.float32),
            torch.tensor(clf.intercept_, dtype=torch.float32))


@torch.no_grad()
def encode(encoder: nn.Module, x, batch_size: int = 512) -> torch.Tensor:
    """Encoder features (eval mode) for numpy/tensor images [N, 1, 8, 8]."""
    encoder.eval()
    x = torch.as_tensor(x, dtype=torch.float32)
    return torch.cat([encoder(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def probe_accuracy(features: torch.Tensor, labels, weight, bias) -> float:
    pred = (features.float() @ weight.T + bias).argmax(1)
    return float((pred == torch.as_tensor(labels)).float().mean())
