"""Small SFA models written the way the public SFA code writes them (used as test fixtures).

Activation forms: ``Quant``/``MultiSpike`` (round-half-even, straight-through), ``multispike``/
``Multispike`` (floor(x + 0.5), half-up, with the ``4*x ... /4`` form of the public code), inline
``relu().clamp_max()`` + floor, and MetaFormer-style blocks (``x = bn(conv(spike(x)))``,
``x = block(x) + x``, separable convs, ``x.flatten(2).mean(2)`` before the last activation).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Quant(torch.autograd.Function):
    """round-half-even integer activation with a straight-through gradient."""

    @staticmethod
    def forward(ctx, i, min_value=0, max_value=4):
        ctx.min = min_value
        ctx.max = max_value
        ctx.save_for_backward(i)
        return torch.round(torch.clamp(i, min=min_value, max=max_value))

    @staticmethod
    def backward(ctx, g):
        (i,) = ctx.saved_tensors
        g = g.clone()
        g[i < ctx.min] = 0
        g[i > ctx.max] = 0
        return g, None, None


class MultiSpike(nn.Module):
    def __init__(self, max_value=4, norm=None):
        super().__init__()
        self.max_value = max_value
        self.norm = max_value if norm is None else norm

    def forward(self, x):
        return Quant.apply(x, 0, self.max_value) / self.norm


class multispike(torch.autograd.Function):
    """floor(clamp(x, 0, lens) + 0.5): round half up."""

    @staticmethod
    def forward(ctx, x, lens=4):
        ctx.save_for_backward(x)
        ctx.lens = lens
        return torch.floor(torch.clamp(x, 0, lens) + 0.5)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        g = g.clone()
        g[x < 0] = 0
        g[x > ctx.lens] = 0
        return g, None


class Multispike(nn.Module):
    def __init__(self, lens=4):
        super().__init__()
        self.lens = lens

    def forward(self, x):
        return multispike.apply(4 * x, self.lens) / 4


class FloorSpike(nn.Module):
    """Inline relu → clamp_max → floor → mul(1/norm) (floor rounding, norm 2)."""

    def __init__(self, D=3):
        super().__init__()
        self.D = D

    def forward(self, x):
        return torch.floor(torch.relu(x).clamp_max(self.D)) * 0.5


# -- models -------------------------------------------------------------------------------------------

class SepConv(nn.Module):
    """MetaFormer separable conv: spike → pw → bn → spike → dw(groups=C) → bn → spike → pw → bn."""

    def __init__(self, dim, expand=2, k=3):
        super().__init__()
        mid = dim * expand
        self.spike1 = MultiSpike()
        self.pwconv1 = nn.Conv2d(dim, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.spike2 = MultiSpike()
        self.dwconv = nn.Conv2d(mid, mid, k, padding=k // 2, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.spike3 = MultiSpike()
        self.pwconv2 = nn.Conv2d(mid, dim, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(dim)

    def forward(self, x):
        x = self.bn1(self.pwconv1(self.spike1(x)))
        x = self.bn2(self.dwconv(self.spike2(x)))
        x = self.bn3(self.pwconv2(self.spike3(x)))
        return x


class MLP(nn.Module):
    """Conv1d MLP after a reshape (B, C, H, W) → (B, C, N)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.spike1 = Multispike()
        self.fc1 = nn.Conv1d(dim, hidden, 1)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.spike2 = Multispike()
        self.fc2 = nn.Conv1d(hidden, dim, 1)
        self.bn2 = nn.BatchNorm1d(dim)

    def forward(self, x):
        B, C, H, W = x.shape
        x = x.flatten(2)
        x = self.bn1(self.fc1(self.spike1(x)))
        x = self.bn2(self.fc2(self.spike2(x)))
        return x.reshape(B, C, H, W)


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv = SepConv(dim)
        self.mlp = MLP(dim, 2 * dim)

    def forward(self, x):
        x = self.conv(x) + x
        x = self.mlp(x) + x
        return x


class Encoder(nn.Module):
    def __init__(self, in_ch=2, dim=8, depth=2):
        super().__init__()
        self.stem = nn.Conv2d(in_ch, dim, 3, stride=2, padding=1)
        self.stem_bn = nn.BatchNorm2d(dim)
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.down_spike = MultiSpike()
        self.down = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, dilation=1)
        self.down_bn = nn.BatchNorm2d(2 * dim)

    def forward(self, x):
        x = self.stem_bn(self.stem(x))
        for blk in self.blocks:
            x = blk(x)
        x = self.down_bn(self.down(self.down_spike(x)))
        return x


class MetaSpikeFormer(nn.Module):
    """Encoder + global average pool (flatten(2).mean(2)) + last spike + Linear head."""

    def __init__(self, in_ch=2, dim=8, depth=2, classes=5):
        super().__init__()
        self.encoder = Encoder(in_ch, dim, depth)
        self.head_spike = MultiSpike(norm=1)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, x):
        x = self.encoder(x)
        x = x.flatten(2).mean(2)
        return self.head(self.head_spike(x))


class SimCLRNet(nn.Module):
    """Encoder + projection head (dropped with until='encoder')."""

    def __init__(self, in_ch=2, dim=8):
        super().__init__()
        self.encoder = Encoder(in_ch, dim, depth=1)
        self.projector = nn.Sequential(nn.Linear(2 * dim, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, x):
        h = self.encoder(x).mean(dim=(2, 3))
        z = self.projector(h)
        return nn.functional.normalize(z, dim=1)


class SmallMix(nn.Module):
    """Various forms: Multispike (4x/4), FloorSpike, avg-pool×4 (sum pool), adaptive pool, BN1d after
    Linear, dropout, scalar scale, conv with dilation and padding."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=2, dilation=2)
        self.bn1 = nn.BatchNorm2d(4)
        self.act1 = Multispike()
        self.pool = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.act2 = FloorSpike()
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.drop = nn.Dropout(0.2)
        self.fc1 = nn.Linear(6, 10)
        self.bn_fc = nn.BatchNorm1d(10)
        self.act3 = nn.Hardtanh(0.0, 4.0)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.pool(x) * 4
        x = self.act2(self.conv2(x) * 2.0)
        x = torch.flatten(self.gap(x), 1)
        x = self.bn_fc(self.fc1(self.drop(x)))
        x = torch.round(self.act3(x))
        return self.fc2(x)


class WithMaxPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.spike = MultiSpike()
        self.features = nn.Sequential(nn.MaxPool2d(2))
        self.fc = nn.Linear(4 * 2 * 2, 2)

    def forward(self, x):
        x = self.features(self.spike(self.conv(x)))
        return self.fc(x.flatten(1))


class SpikeAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q = nn.Conv1d(dim, dim, 1)
        self.k = nn.Conv1d(dim, dim, 1)
        self.v = nn.Conv1d(dim, dim, 1)
        self.q_spike = MultiSpike()
        self.k_spike = MultiSpike()
        self.v_spike = MultiSpike()
        self.proj = nn.Conv1d(dim, dim, 1)

    def forward(self, x):
        B, C, N = x.shape
        q = self.q_spike(self.q(x)).transpose(-2, -1)
        k = self.k_spike(self.k(x)).transpose(-2, -1)
        v = self.v_spike(self.v(x)).transpose(-2, -1)
        attn = q @ k.transpose(-2, -1)
        x = (attn @ v) * 0.125
        return self.proj(x.transpose(1, 2))


class AttnNet(nn.Module):
    def __init__(self, dim=4):
        super().__init__()
        self.patch_embed = nn.Sequential(nn.Conv2d(1, dim, 3, padding=1), nn.BatchNorm2d(dim), MultiSpike())
        self.attn = SpikeAttention(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        x = self.patch_embed(x)
        B, C, H, W = x.shape
        x = x.flatten(2)
        x = self.attn(x) + x
        return self.head(x.mean(2))


class ClampOnly(nn.Module):
    """clamp without rounding: needs spike settings."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.act = nn.Hardtanh(0.0, 2.0)
        self.fc = nn.Linear(2 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch-norm layers non-trivial statistics (so that activations are not all zero)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 1.0 + 0.3)
    return model.eval()


def build_model(name: str = "metaspikeformer", **kwargs) -> nn.Module:
    """Factory used by ``--arch tests/models_for_tests.py:build_model``."""
    torch.manual_seed(kwargs.pop("seed", 0))
    cls = {"metaspikeformer": MetaSpikeFormer, "simclr": SimCLRNet, "smallmix": SmallMix,
           "scriptable": ScriptableNet}[name]
    return randomize_bn(cls(**kwargs))


class InlineQuant(nn.Module):
    """round(clamp(x, 0, D)) / norm without an autograd.Function (TorchScript-able)."""

    def __init__(self, D: int = 4, norm: float = 4.0):
        super().__init__()
        self.D = D
        self.norm = norm

    def forward(self, x):
        return torch.round(torch.clamp(x, 0.0, float(self.D))) / self.norm


class ScriptableNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.spike = InlineQuant()
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.spike2 = InlineQuant(D=2, norm=1.0)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = self.spike(self.bn(self.conv(x)))
        x = self.spike2(self.conv2(x))
        return self.fc(x.flatten(1))


class MultiSpikeNorm4(nn.Module):
    """Like the public ``MultiSpike_norm4``: autograd Function in training, in-place round_ in eval."""

    def __init__(self, T=4.0):
        super().__init__()
        self.T = T

    def forward(self, x):
        if self.training:
            return Quant.apply(x, 0, 4) / self.T
        return torch.clamp(x, min=0, max=4).round_() / self.T


class SharedAct(nn.Module):
    """One activation module called at two places (hooks see it twice)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.spike = MultiSpikeNorm4()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = self.spike(self.conv1(x))
        x = self.spike(self.conv2(x) + 0.5)
        return self.fc(x.mean((2, 3)))


class TokenMLP(nn.Module):
    """Spikformer-style token-major MLP: (B,C,H,W) → (B,N,C) → Linear/spike/Linear → back."""

    def __init__(self, dim=4, hidden=8):
        super().__init__()
        self.conv = nn.Conv2d(1, dim, 3, padding=1)
        self.bn = nn.BatchNorm2d(dim)
        self.spike1 = MultiSpike()
        self.fc1 = nn.Linear(dim, hidden)
        self.spike2 = Multispike()
        self.fc2 = nn.Linear(hidden, dim)
        self.fc3_weight = nn.Parameter(torch.randn(dim, dim) * 0.5)
        self.head_spike = MultiSpike(norm=1)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.bn(self.conv(x))
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)               # (B, N, C)
        t = self.fc2(self.spike2(self.fc1(self.spike1(t)))) * 0.5 + t
        t = self.spike1(t) @ self.fc3_weight.t() + t
        y = t.transpose(1, 2).reshape(B, C, H, W)      # back to channel-first
        feat = t.mean(1)                               # token mean
        return self.head(self.head_spike(feat)), y
