"""Training objective: the simple epsilon-prediction loss (Ho et al. 2020, eq. 14)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps  (eq. 4): (B,C,H,W)."""
    ab = alpha_bar.to(x0.device)[t].view(-1, 1, 1, 1)  # float64: 1 - ab_t is exact near t = 0
    return (ab.sqrt() * x0 + (1 - ab).sqrt() * noise).to(x0.dtype)


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, g: torch.Generator) -> torch.Tensor:
    """Classifier-free guidance training: replace each label by the null label with probability p."""
    drop = torch.rand(y.shape[0], generator=g) < p_uncond
    return torch.where(drop.to(y.device), torch.full_like(y, null_label), y)


def eps_loss(model: Denoiser, x0: torch.Tensor, y: torch.Tensor, alpha_bar: torch.Tensor,
             g: torch.Generator) -> torch.Tensor:
    """E_{t, eps} ||eps - eps_theta(x_t, t, y)||^2 with t ~ U{0..T-1}, eps ~ N(0, I) drawn from `g`."""
    T = alpha_bar.shape[0]
    t = torch.randint(0, T, (x0.shape[0],), generator=g).to(x0.device)
    noise = torch.randn(x0.shape, generator=g).to(x0.device)
    return F.mse_loss(model(q_sample(x0, t, noise, alpha_bar), t, y), noise)
