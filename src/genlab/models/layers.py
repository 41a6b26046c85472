"""Building blocks shared by the networks."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def norm_groups(*channels: int) -> int:
    """GroupNorm's group count for layers of these widths: 32 groups (Wu & He 2018's default) where every width
    allows it, else the largest count that divides them all, so a narrow network still normalises."""
    return math.gcd(32, *channels)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels)


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x upsampling (B, C, H, W) -> (B, C, 2H, 2W), equal to `nn.Upsample(scale_factor=2)`,
    written as broadcast + reshape so its backward is a plain sum: deterministic on CUDA, where the
    backward of `F.interpolate(mode="nearest")` is not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with an optional embedding applied as scale and shift (FiLM)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int | None = None) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out) if emb_dim else None
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None and emb is not None:
            scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, residual."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        out, _ = self.attn(t, t, t, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017, as in DDPM): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


class CrossAttention(nn.Module):
    """Multi-head attention from the H*W positions of a feature map to context tokens, residual.

    Queries are the GroupNormed feature map (B, HW, C); keys and values are the LayerNormed context
    (B, L, context_dim), projected to C inside the attention (kdim = vdim = context_dim).
    `mask` (B, L) is True for tokens to attend to; False positions get no weight at all.
    """

    def __init__(self, channels: int, context_dim: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.context_norm = nn.LayerNorm(context_dim)
        self.attn = nn.MultiheadAttention(channels, heads, kdim=context_dim, vdim=context_dim, batch_first=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        kv = self.context_norm(context)  # (B, L, context_dim)
        padding = None if mask is None else ~mask  # key_padding_mask: True = ignore
        out, _ = self.attn(q, kv, kv, key_padding_mask=padding, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)
