"""The forward-process posterior q(x_prev | x_t, x_0) between two steps of a (possibly respaced) schedule.

With ab_t = alpha_bar at step t and ab_prev = alpha_bar at the previous listed step (1 before the first step),
alpha_t = ab_t / ab_prev and beta_t = 1 - alpha_t (Ho et al. 2020, eq. 6-7):
  mu_tilde = sqrt(ab_prev) beta_t / (1 - ab_t) x_0 + sqrt(alpha_t) (1 - ab_prev) / (1 - ab_t) x_t
  beta_tilde = (1 - ab_prev) / (1 - ab_t) beta_t
For consecutive steps of the full schedule this is DDPM's posterior; for respaced steps it is the posterior of
the respaced chain (Nichol & Dhariwal 2021, sec. 4).
"""

from __future__ import annotations

import torch


def posterior_mean(x0: torch.Tensor, x_t: torch.Tensor, ab_t: torch.Tensor, ab_prev: torch.Tensor) -> torch.Tensor:
    """mu_tilde(x_t, x_0)  (eq. 7): (B, ...); ab_t, ab_prev broadcastable against x."""
    beta_t = 1 - ab_t / ab_prev
    return (ab_prev.sqrt() * beta_t / (1 - ab_t)) * x0 + ((1 - beta_t).sqrt() * (1 - ab_prev) / (1 - ab_t)) * x_t


def posterior_variance(ab_t: torch.Tensor, ab_prev: torch.Tensor) -> torch.Tensor:
    """beta_tilde = (1 - ab_prev) / (1 - ab_t) beta_t  (eq. 7): shape of ab_t; 0 when ab_prev = 1."""
    return (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
