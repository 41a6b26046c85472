"""Training objectives: the simple eps loss (Ho et al. 2020, eq. 14), v-prediction (Salimans & Ho 2022) and
Min-SNR-gamma weighting (Hang et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from genlab.diffusion.objectives import min_snr_weight, per_sample, target

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps  (eq. 4): (B,C,H,W), or any (B, ...)."""
    ab = per_sample(alpha_bar.to(x0.device)[t], x0)  # float64: 1 - ab_t is exact near t = 0
    return (ab.sqrt() * x0 + (1 - ab).sqrt() * noise).to(x0.dtype)


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, g: torch.Generator) -> torch.Tensor:
    """Classifier-free guidance training: replace each label by the null label with probability p."""
    drop = torch.rand(y.shape[0], generator=g) < p_uncond
    return torch.where(drop.to(y.device), torch.full_like(y, null_label), y)


def diffusion_loss(model: Denoiser, x0: torch.Tensor, y: torch.Tensor, alpha_bar: torch.Tensor, g: torch.Generator,
                   prediction: str = "eps", min_snr_gamma: float | None = None,
                   rows: slice = slice(None)) -> torch.Tensor:
    """E_{t, eps} w_t ||target - f_theta(x_t, t, y)||^2 / D, t ~ U{0..T-1} then eps ~ N(0, I), both drawn from `g`
    on the CPU; target is eps or v (`prediction`), w_t the Min-SNR-gamma weight (None: w_t = 1). Returns a scalar:
    the batch mean of the per-sample weighted MSE. t and eps are drawn for every row of `x0` (the global batch),
    the loss computed on `rows` of it (one rank's share; default all)."""
    T = alpha_bar.shape[0]
    t = torch.randint(0, T, (x0.shape[0],), generator=g)[rows].to(x0.device)  # (B,)
    noise = torch.randn(x0.shape, generator=g)[rows].to(x0.device)  # (B, ...)
    x0 = x0[rows]
    ab_t = per_sample(alpha_bar.to(x0.device, torch.float64)[t], x0)  # (B, 1, ..., 1)
    tgt = target(prediction, x0, noise, ab_t)  # (B, ...); raises on an unknown `prediction` before the forward pass
    out = model(q_sample(x0, t, noise, alpha_bar), t, y)
    tgt = tgt.to(out.dtype)
    if min_snr_gamma is None:
        # equal D per sample: the mean of per-sample MSEs is the MSE over all entries (eq. 14, bit-identical to
        # the historical eps_loss)
        return F.mse_loss(out, tgt)
    mse = (out - tgt).pow(2).flatten(1).mean(1)  # (B,)
    w = min_snr_weight(prediction, ab_t.flatten(), min_snr_gamma).to(mse.dtype)  # (B,)
    return (w * mse).mean()


def eps_loss(model: Denoiser, x0: torch.Tensor, y: torch.Tensor, alpha_bar: torch.Tensor,
             g: torch.Generator) -> torch.Tensor:
    """E_{t, eps} ||eps - eps_theta(x_t, t, y)||^2 with t ~ U{0..T-1}, eps ~ N(0, I) drawn from `g` (eq. 14)."""
    return diffusion_loss(model, x0, y, alpha_bar, g, prediction="eps", min_snr_gamma=None)
