"""Noise-prediction U-Net (Ho et al. 2020; Rombach et al. 2022) with class-label conditioning.

The class embedding is added to the time embedding; label `num_classes` is the learned null label
used for classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

import torch
from torch import nn

from genlab.models.layers import ResBlock, SelfAttention, norm, timestep_embedding


class Level(nn.Module):
    """`n` residual blocks at one resolution, each optionally followed by self-attention."""

    def __init__(self, c_in: int, c_out: int, n: int, emb: int, attention: bool, skip_channels: list[int]
                 | None = None) -> None:
        super().__init__()
        ins = [c_in] + [c_out] * (n - 1)
        if skip_channels is not None:  # decoder: each block also takes one skip connection
            ins = [c + s for c, s in zip(ins, skip_channels, strict=True)]
        self.blocks = nn.ModuleList(ResBlock(c, c_out, emb) for c in ins)
        self.attns = nn.ModuleList(SelfAttention(c_out) if attention else nn.Identity() for _ in range(n))


class UNet(nn.Module):
    """eps_theta(x_t, t, y): (B, C, S, S), (B,), (B,) -> (B, C, S, S)."""

    def __init__(self, in_channels: int = 4, base_channels: int = 64, channel_mults: tuple[int, ...] = (1, 2),
                 num_res_blocks: int = 2, attention_levels: tuple[int, ...] = (1,), num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        emb = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label_emb = nn.Embedding(num_classes + 1, emb)  # index num_classes = null label
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        chans = [base_channels * m for m in channel_mults]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [base_channels], base_channels
        for i, c_out in enumerate(chans):
            self.down.append(Level(c, c_out, num_res_blocks, emb, i in attention_levels))
            skips += [c_out] * num_res_blocks
            c = c_out
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            if not last:
                skips.append(c)
        self.mid1, self.mid_attn, self.mid2 = ResBlock(c, c, emb), SelfAttention(c), ResBlock(c, c, emb)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, c_out in reversed(list(enumerate(chans))):
            n = num_res_blocks + 1
            level_skips = [skips.pop() for _ in range(n)]
            self.up.append(Level(c, c_out, n, emb, i in attention_levels, level_skips))
            c = c_out
            self.upsample.append(nn.Identity() if i == 0 else nn.Upsample(scale_factor=2, mode="nearest"))
        self.out = nn.Sequential(norm(c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))
        self.base_channels = base_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.base_channels)) + self.label_emb(y)
        h = self.stem(x)
        hs = [h]
        for level, down in zip(self.down, self.downsample, strict=True):
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(h, emb))
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level, up in zip(self.up, self.upsample, strict=True):
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            if not isinstance(up, nn.Identity):
                h = up(h)
        return self.out(h)
