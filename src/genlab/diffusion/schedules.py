"""Noise schedules as pure functions of (T, kind) returning float64 tensors of length T.

alpha_bar[t] is the fraction of the original signal left at step t (t = 0 .. T-1):
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps  (Ho et al. 2020, eq. 4).
"""

from __future__ import annotations

import math

import torch


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule, scaled so that any T keeps the T=1000 endpoints' shape."""
    scale = 1000.0 / T
    return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)


def cosine_alpha_bar(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
    with betas clipped at max_beta (their eq. 17 note)."""
    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - f(t + 1) / f(t), max_beta) for t in range(T)], dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def alpha_bar(T: int, kind: str = "linear") -> torch.Tensor:
    if kind == "linear":
        return torch.cumprod(1 - linear_betas(T), dim=0)
    if kind == "cosine":
        return cosine_alpha_bar(T)
    raise ValueError(f"unknown schedule {kind!r}: expected 'linear' or 'cosine'")


def betas_from_alpha_bar(ab: torch.Tensor) -> torch.Tensor:
    """beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, with alpha_bar_{-1} = 1."""
    prev = torch.cat([ab.new_ones(1), ab[:-1]])
    return 1 - ab / prev
