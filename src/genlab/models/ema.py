"""Exponential moving average of weights: theta_ema <- d * theta_ema + (1 - d) * theta."""

from __future__ import annotations

import copy

import torch


def ema_copy(module: torch.nn.Module) -> torch.nn.Module:
    ema = copy.deepcopy(module).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: torch.nn.Module, module: torch.nn.Module, decay: float) -> None:
    ema_params, params = list(ema.parameters()), list(module.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"EMA copy has {len(ema_params)} parameters, the module {len(params)}")
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)  # one pass over all tensors, not a loop of small ops
    for b_ema, b in zip(ema.buffers(), module.buffers(), strict=True):
        b_ema.copy_(b)


def ema_decay(images_seen: int, batch_size: int, halflife_images: float, rampup: float = 0.1) -> float:
    """Per-step decay for an EMA with a half-life counted in images (Karras et al. 2022, EDM, app. F.3):
    d = 0.5 ** (B / h), h = min(halflife, rampup * images_seen), so early weights are forgotten fast."""
    h = min(halflife_images, rampup * images_seen) if rampup > 0 else halflife_images
    return 0.5 ** (batch_size / max(h, 1e-8))
