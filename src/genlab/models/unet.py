"""Noise-prediction U-Net (Ho et al. 2020; Rombach et al. 2022) with class-label and/or text conditioning.

Class conditioning (num_classes > 0): the class embedding is added to the time embedding; label
`num_classes` is the learned null label used for classifier-free guidance (Ho & Salimans 2022).
num_classes = 0 builds no class embedding.

Text conditioning (context_dim set), as in Imagen (Saharia et al. 2022, sec. 2.1 and app. F):
  - blocks at `cross_attention_levels` and the middle block attend to the context tokens (B, L, context_dim),
    e.g. `genlab.models.text.TextEncoder` token embeddings, projected once to the U-Net's deepest width;
  - the pooled prompt vector (mean of the unmasked tokens, L2-normalised: the sentence embedding) is
    projected and added to the time embedding, like a class embedding.
The null
condition is one learned token, `null_context` (1, 1, context_dim). It is always appended to the
context as an extra key and is visible only to null samples, whose own tokens are all masked out:
  - `context=None` makes the whole batch null (the unconditional model);
  - `drop` (B,) bool makes the marked samples null (CFG training dropout, or the null half of a
    doubled guidance batch);
  - a sample whose `context_mask` row is all False is null too (it has nothing else to attend to).
The null condition never depends on the text encoder's encoding of "": that is an ordinary prompt.
"""

from __future__ import annotations

import torch
from torch import nn

from genlab.models.layers import CrossAttention, ResBlock, SelfAttention, Upsample2x, norm, timestep_embedding
from genlab.models.text import pooled

Context = tuple[torch.Tensor, torch.Tensor]  # tokens (B, L, D), mask (B, L) bool, True = attend


class Level(nn.Module):
    """`n` residual blocks at one resolution, each optionally followed by self- and cross-attention."""

    def __init__(self, c_in: int, c_out: int, n: int, emb: int, attention: bool, skip_channels: list[int]
                 | None = None, context_dim: int | None = None) -> None:
        super().__init__()
        ins = [c_in] + [c_out] * (n - 1)
        if skip_channels is not None:  # decoder: each block also takes one skip connection
            ins = [c + s for c, s in zip(ins, skip_channels, strict=True)]
        self.blocks = nn.ModuleList(ResBlock(c, c_out, emb) for c in ins)
        self.attns = nn.ModuleList(SelfAttention(c_out) if attention else nn.Identity() for _ in range(n))
        # None (no state_dict keys) unless this level cross-attends
        self.xattns = nn.ModuleList(CrossAttention(c_out, context_dim) for _ in range(n)) if context_dim else None

    def block(self, j: int, h: torch.Tensor, emb: torch.Tensor, context: Context | None) -> torch.Tensor:
        """Block j: ResBlock, then self-attention, then cross-attention to `context`: (B, C, S, S)."""
        h = self.attns[j](self.blocks[j](h, emb))
        if self.xattns is not None and context is not None:
            h = self.xattns[j](h, *context)
        return h


class UNet(nn.Module):
    """eps_theta(x_t, t, y, context): (B, C, S, S), (B,), (B,), (B, L, D) -> (B, C, S, S)."""

    def __init__(self, in_channels: int = 4, base_channels: int = 64, channel_mults: tuple[int, ...] = (1, 2),
                 num_res_blocks: int = 2, attention_levels: tuple[int, ...] = (1,), num_classes: int = 10,
                 context_dim: int | None = None, cross_attention_levels: tuple[int, ...] = ()) -> None:
        super().__init__()
        if cross_attention_levels and not context_dim:
            raise ValueError("UNet: cross_attention_levels needs context_dim")
        if any(not 0 <= i < len(channel_mults) for i in cross_attention_levels):
            raise ValueError(f"UNet: cross_attention_levels {tuple(cross_attention_levels)} must index "
                             f"channel_mults (0..{len(channel_mults) - 1})")
        self.num_classes = num_classes
        self.context_dim = context_dim
        emb = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        # index num_classes = null label; num_classes = 0: no class embedding at all
        self.label_emb = nn.Embedding(num_classes + 1, emb) if num_classes > 0 else None
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        chans = [base_channels * m for m in channel_mults]
        if context_dim:
            # tokens are projected once (not once per attention layer) to the deepest width
            self.context_proj = nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, chans[-1]))
            self.pooled_emb = nn.Linear(context_dim, emb)

        def ctx_dim(i: int) -> int | None:
            return chans[-1] if i in cross_attention_levels else None

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [base_channels], base_channels
        for i, c_out in enumerate(chans):
            self.down.append(Level(c, c_out, num_res_blocks, emb, i in attention_levels, context_dim=ctx_dim(i)))
            skips += [c_out] * num_res_blocks
            c = c_out
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            if not last:
                skips.append(c)
        self.mid1, self.mid_attn, self.mid2 = ResBlock(c, c, emb), SelfAttention(c), ResBlock(c, c, emb)
        self.mid_xattn = CrossAttention(c, chans[-1]) if context_dim else None
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, c_out in reversed(list(enumerate(chans))):
            n = num_res_blocks + 1
            level_skips = [skips.pop() for _ in range(n)]
            self.up.append(Level(c, c_out, n, emb, i in attention_levels, level_skips, ctx_dim(i)))
            c = c_out
            self.upsample.append(nn.Identity() if i == 0 else Upsample2x())
        self.out = nn.Sequential(norm(c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))
        self.base_channels = base_channels
        # the learned null condition for classifier-free guidance (module docstring)
        self.null_context = nn.Parameter(torch.randn(1, 1, context_dim)) if context_dim else None

    def null_condition(self, batch: int) -> Context:
        """The learned null condition for `batch` samples: tokens (B, 1, D) and an all-True mask (B, 1)."""
        if self.null_context is None:
            raise ValueError("UNet: null_condition needs context_dim")
        tokens = self.null_context.expand(batch, -1, -1)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def condition(self, batch: int, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                  drop: torch.Tensor | None = None) -> Context:
        """The keys cross-attention sees: `context` with the null token appended, (B, L+1, D), (B, L+1).

        Sample b sees its own unmasked tokens, or only the null token when it is null (module docstring).
        """
        null, null_mask = self.null_condition(batch)
        if context is None:
            return null, null_mask
        mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device) \
            if context_mask is None else context_mask.to(context.device, torch.bool)
        is_null = ~mask.any(dim=1)
        if drop is not None:
            is_null = is_null | drop.to(context.device, torch.bool)
        keep = ~is_null[:, None]
        return (torch.cat([context, null.to(context.dtype)], dim=1),
                torch.cat([mask & keep, null_mask & ~keep], dim=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, S, S), t (B,), y (B,) labels (None: the null label), context (B, L, context_dim)
        with context_mask (B, L) bool (True = real token; None: all real), drop (B,) bool (True: null)."""
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.label_emb is not None:
            emb = emb + self.label_emb(torch.full_like(t, self.num_classes, dtype=torch.long) if y is None else y)
        elif y is not None:
            raise ValueError("UNet: labels given to a model built with num_classes=0")
        if self.context_dim:
            tokens, mask = self.condition(x.shape[0], context, context_mask, drop)
            emb = emb + self.pooled_emb(pooled(tokens, mask))  # null samples pool the null token alone
            ctx = (self.context_proj(tokens), mask)
        elif context is not None or drop is not None:
            raise ValueError("UNet: context given to a model built without context_dim")
        else:
            ctx = None
        h = self.stem(x)
        hs = [h]
        for level, down in zip(self.down, self.downsample, strict=True):
            for j in range(len(level.blocks)):
                h = level.block(j, h, emb, ctx)
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        h = self.mid_attn(self.mid1(h, emb))
        if self.mid_xattn is not None and ctx is not None:
            h = self.mid_xattn(h, *ctx)
        h = self.mid2(h, emb)
        for level, up in zip(self.up, self.upsample, strict=True):
            for j in range(len(level.blocks)):
                h = level.block(j, torch.cat([h, hs.pop()], dim=1), emb, ctx)
            if not isinstance(up, nn.Identity):
                h = up(h)
        return self.out(h)
