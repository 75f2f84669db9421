"""E-SpikeFormer-style test model (Spike-Driven Transformer V3 / SFA), written the way the public
code is written, so that the converter is exercised on real model structure.

* integer activation ``MultiSpike``: ``Quant.apply`` = ``torch.round(torch.clamp(x, 0, D))`` (an
  autograd Function with a straight-through gradient), divided by ``norm`` (= D);
* MetaFormer stages: the activation sits *before* each conv (``bn(conv(spike(x)))``) and
  residuals add pre-activation currents (membrane shortcut, ``x = x + block(x)``);
* downsampling convs with BatchNorm (the first one sees the real-valued image);
* separable-conv blocks (pointwise / depthwise / pointwise, each + BN), conv MLP blocks;
* in stages 3 and 4 (``attention=True``) spike-driven self-attention: q, k, v spike tensors from
  1×1 conv + BN + MultiSpike, ``(q @ k.transpose(-2, -1)) @ v * scale``, MultiSpike, 1×1 projection
  conv + BN, and a token MLP of Conv1d layers on ``x.flatten(2)``;
* head: ``x.flatten(2).mean(2)`` on the last residual sum, MultiSpike, Linear.

Module paths (``build_model(depths=(1, 1, 1, 1))``)::

    downsample1_1                 conv 7x7 s2 + BN     (real-valued input: MACs)
    block1_1.0.conv / .mlp        SepConv / conv MLP   (x = x + f(x))
    downsample1_2                 spike, conv 3x3 s2 + BN
    block1_2.N, downsample2, block2.N, downsample3
    block3.N.conv / .attn / .mlp  SepConv, attention (host part: q·kᵀ·v), token MLP (Conv1d)
    downsample4, block4.N
    head_spike, head              MultiSpike, Linear

``randomize_bn(model, seed)`` gives every BatchNorm random (fixed-seed) statistics and affine
parameters, so an untrained model has realistic firing; ``build_model`` calls it by default.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

__all__ = ["Quant", "MultiSpike", "SepConv", "ConvMLP", "TokenMLP", "SpikeAttention", "ConvBlock",
           "TransformerBlock", "ESpikeFormer", "build_model", "build_tiny_model", "randomize_bn",
           "random_images", "TINY", "D"]

D = 4  # max integer (spikes per neuron per sample)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

    def __init__(self, min_value=0, max_value=D, norm=None):
        super().__init__()
        self.min_value = min_value
        self.max_value = max_value
        self.norm = max_value if norm is None else norm

    def forward(self, x):
        return Quant.apply(x, self.min_value, self.max_value) / self.norm


def _conv_bn(cin, cout, k=1, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class SepConv(nn.Module):
    """SepConv_Spike: spike, pointwise (expand), spike, depthwise, spike, pointwise."""

    def __init__(self, dim, expansion=2, kernel_size=7):
        super().__init__()
        med = dim * expansion
        self.spike1 = MultiSpike()
        self.pwconv1 = _conv_bn(dim, med, 1)
        self.spike2 = MultiSpike()
        self.dwconv = _conv_bn(med, med, kernel_size, groups=med)
        self.spike3 = MultiSpike()
        self.pwconv2 = _conv_bn(med, dim, 1)

    def forward(self, x):
        x = self.pwconv1(self.spike1(x))
        x = self.dwconv(self.spike2(x))
        return self.pwconv2(self.spike3(x))


class ConvMLP(nn.Module):
    """The conv part of MS_ConvBlock: spike, 3x3 conv + BN (expand), spike, 3x3 conv + BN."""

    def __init__(self, dim, ratio=2):
        super().__init__()
        self.spike1 = MultiSpike()
        self.conv1 = nn.Conv2d(dim, dim * ratio, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(dim * ratio)
        self.spike2 = MultiSpike()
        self.conv2 = nn.Conv2d(dim * ratio, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x):
        x = self.bn1(self.conv1(self.spike1(x)))
        return self.bn2(self.conv2(self.spike2(x)))


class TokenMLP(nn.Module):
    """MS_MLP: Conv1d on the flattened tokens, then back to an image."""

    def __init__(self, dim, ratio=2):
        super().__init__()
        self.fc1_spike = MultiSpike()
        self.fc1_conv = nn.Conv1d(dim, dim * ratio, 1)
        self.fc1_bn = nn.BatchNorm1d(dim * ratio)
        self.fc2_spike = MultiSpike()
        self.fc2_conv = nn.Conv1d(dim * ratio, dim, 1)
        self.fc2_bn = nn.BatchNorm1d(dim)

    def forward(self, x):
        B, C, H, W = x.shape
        x = x.flatten(2)
        x = self.fc1_bn(self.fc1_conv(self.fc1_spike(x)))
        x = self.fc2_bn(self.fc2_conv(self.fc2_spike(x)))
        return x.reshape(B, C, H, W)


def attention_scale(tokens: int, head_dim: int) -> float:
    """A power of two (as E-SpikeFormer's 0.125 at 224x224) that keeps q·kᵀ·v of random spikes
    near the activation's range; dyadic, so the float forward computes it exactly."""
    return float(2.0 ** round(np.log2(784.0 / (tokens * head_dim))))


class SpikeAttention(nn.Module):
    """Spike-driven self-attention (MS_Attention of E-SpikeFormer, without the time dim)."""

    def __init__(self, dim, num_heads=4, scale=0.125):
        super().__init__()
        assert dim % num_heads == 0
        self.num_heads = num_heads
        self.scale = scale
        self.head_spike = MultiSpike()
        self.q_conv = _conv_bn(dim, dim, 1)
        self.q_spike = MultiSpike()
        self.k_conv = _conv_bn(dim, dim, 1)
        self.k_spike = MultiSpike()
        self.v_conv = _conv_bn(dim, dim, 1)
        self.v_spike = MultiSpike()
        self.attn_spike = MultiSpike()
        self.proj_conv = _conv_bn(dim, dim, 1)

    def _heads(self, t, B, C, N):
        h = self.num_heads
        return t.flatten(2).transpose(-1, -2).reshape(B, N, h, C // h).permute(0, 2, 1, 3)

    def forward(self, x):
        B, C, H, W = x.shape
        N = H * W
        x = self.head_spike(x)
        q = self._heads(self.q_spike(self.q_conv(x)), B, C, N)
        k = self._heads(self.k_spike(self.k_conv(x)), B, C, N)
        v = self._heads(self.v_spike(self.v_conv(x)), B, C, N)
        x = q @ k.transpose(-2, -1)
        x = (x @ v) * self.scale
        x = x.transpose(2, 3).reshape(B, C, N)
        x = self.attn_spike(x)
        x = x.reshape(B, C, H, W)
        return self.proj_conv(x)


class ConvBlock(nn.Module):
    """MS_ConvBlock: x = x + SepConv(x); x = x + ConvMLP(x)."""

    def __init__(self, dim, mlp_ratio=2):
        super().__init__()
        self.conv = SepConv(dim)
        self.mlp = ConvMLP(dim, mlp_ratio)

    def forward(self, x):
        x = x + self.conv(x)
        return x + self.mlp(x)


class TransformerBlock(nn.Module):
    """MS_Block: x = x + SepConv(x); x = x + attn(x); x = x + mlp(x)."""

    def __init__(self, dim, num_heads=4, mlp_ratio=2, attention=True, tokens=196):
        super().__init__()
        self.conv = SepConv(dim)
        self.attn = SpikeAttention(dim, num_heads, attention_scale(tokens, dim // num_heads)) \
            if attention else None
        self.mlp = TokenMLP(dim, mlp_ratio)

    def forward(self, x):
        x = x + self.conv(x)
        if self.attn is not None:
            x = x + self.attn(x)
        return x + self.mlp(x)


class Downsample(nn.Module):
    """MS_DownSampling: (spike), conv, BN. The first one sees the image and has no spike."""

    def __init__(self, cin, cout, k=3, stride=2, first_layer=False):
        super().__init__()
        self.spike = None if first_layer else MultiSpike()
        self.encode_conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.encode_bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        if self.spike is not None:
            x = self.spike(x)
        return self.encode_bn(self.encode_conv(x))


class ESpikeFormer(nn.Module):
    def __init__(self, in_channels=3, width=(32, 64, 128, 192), depths=(1, 2, 2, 1), num_heads=4,
                 mlp_ratio=2, num_classes=10, attention=True, img=224):
        super().__init__()
        w0, w1, w2, w3 = width
        tokens = (img // 16) ** 2
        self.downsample1_1 = Downsample(in_channels, w0 // 2, 7, 2, first_layer=True)
        self.block1_1 = nn.Sequential(ConvBlock(w0 // 2, mlp_ratio))
        self.downsample1_2 = Downsample(w0 // 2, w0)
        self.block1_2 = nn.Sequential(*[ConvBlock(w0, mlp_ratio) for _ in range(depths[0])])
        self.downsample2 = Downsample(w0, w1)
        self.block2 = nn.Sequential(*[ConvBlock(w1, mlp_ratio) for _ in range(depths[1])])
        self.downsample3 = Downsample(w1, w2)
        self.block3 = nn.Sequential(*[TransformerBlock(w2, num_heads, mlp_ratio, attention, tokens)
                                      for _ in range(depths[2])])
        self.downsample4 = Downsample(w2, w3, stride=1)
        self.block4 = nn.Sequential(*[TransformerBlock(w3, num_heads, mlp_ratio, attention, tokens)
                                      for _ in range(depths[3])])
        self.head_spike = MultiSpike()
        self.head = nn.Linear(w3, num_classes)

    def forward_features(self, x):
        x = self.block1_1(self.downsample1_1(x))
        x = self.block1_2(self.downsample1_2(x))
        x = self.block2(self.downsample2(x))
        x = self.block3(self.downsample3(x))
        return self.block4(self.downsample4(x))

    def forward(self, x):
        x = self.forward_features(x)
        x = x.flatten(2).mean(2)          # global average pool on the last residual sum
        return self.head(self.head_spike(x))


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random (fixed-seed) running statistics and affine parameters for every BatchNorm, in
    module order; the ranges keep an untrained model firing at realistic rates."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.1)
            m.weight.copy_(torch.rand(c, generator=g) * 0.8 + 0.6)
            m.bias.copy_(torch.randn(c, generator=g) * 0.3 + 0.3)
    return model


def build_model(width=(32, 64, 128, 192), depths=(1, 2, 2, 1), attention=True, img=224, D=4,
                num_heads=4, num_classes=10, seed=0) -> ESpikeFormer:
    """An E-SpikeFormer-style model with random weights (torch seed ``seed``) and random BatchNorm
    statistics, in eval mode. ``img`` (64 or 224) is the input size the model is meant for (it
    sets only the attention scale); ``D`` the spike budget of every MultiSpike."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ESpikeFormer(3, tuple(width), tuple(depths), num_heads, 2, num_classes, attention,
                             int(img))
    for m in model.modules():
        if isinstance(m, MultiSpike):
            m.max_value = m.norm = int(D)
    return randomize_bn(model, seed).eval()


TINY = dict(width=(8, 16, 16, 16), depths=(1, 1, 1, 1), img=64, num_heads=2)


def build_tiny_model(attention=True, **kw) -> ESpikeFormer:
    """Small widths for fast tests (input 3×64×64, 4×4 tokens in the attention stages)."""
    return build_model(**{**TINY, "attention": attention, **kw})


def random_images(n: int, img: int = 224, seed: int = 0) -> np.ndarray:
    """ImageNet-normalised float32 images [n, 3, img, img] of smooth random content."""
    rng = np.random.default_rng(seed)
    low = rng.random((n, 3, max(2, img // 16), max(2, img // 16)), dtype=np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(low), size=(img, img), mode="bilinear",
                                        align_corners=False)
    x = x + 0.1 * torch.from_numpy(rng.standard_normal((n, 3, img, img), dtype=np.float32))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x.clamp(0, 1) - mean) / std).numpy().astype(np.float32)
