"""What the network predicts, and how to convert its output: eps or v (Salimans & Ho 2022, sec. 4 and app. D).

With x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps (Ho et al. 2020, eq. 4), the velocity is
v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0, so (x_t, v) is a rotation of (x_0, eps) and each pair gives the other.
`ab_t` is alpha_bar at each sample's step, broadcastable against x: a scalar or (B, 1, ..., 1).
All functions are pure torch and work for any data shape (B, ...).
"""

from __future__ import annotations

from typing import Literal

import torch

Prediction = Literal["eps", "v"]
PREDICTIONS: tuple[str, ...] = ("eps", "v")


def check_prediction(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction {kind!r}: expected one of {PREDICTIONS}")


def per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1), to broadcast a per-sample scalar against x of shape (B, ...)."""
    return values.view(-1, *([1] * (x.dim() - 1)))


def target(kind: str, x0: torch.Tensor, noise: torch.Tensor, ab_t: torch.Tensor) -> torch.Tensor:
    """The regression target: eps itself, or v = sqrt(ab) eps - sqrt(1 - ab) x_0 (Salimans & Ho, sec. 4): (B, ...)."""
    check_prediction(kind)
    if kind == "eps":
        return noise
    return ab_t.sqrt() * noise - (1 - ab_t).sqrt() * x0


def to_eps(kind: str, out: torch.Tensor, x_t: torch.Tensor, ab_t: torch.Tensor) -> torch.Tensor:
    """eps_hat from the network output: eps = sqrt(ab) v + sqrt(1 - ab) x_t for v-prediction: (B, ...)."""
    check_prediction(kind)
    if kind == "eps":
        return out
    return ab_t.sqrt() * out + (1 - ab_t).sqrt() * x_t


def to_x0(kind: str, out: torch.Tensor, x_t: torch.Tensor, ab_t: torch.Tensor) -> torch.Tensor:
    """x0_hat from the network output: (x_t - sqrt(1 - ab) eps) / sqrt(ab) (Ho et al., eq. 15),
    or sqrt(ab) x_t - sqrt(1 - ab) v for v-prediction: (B, ...)."""
    check_prediction(kind)
    if kind == "eps":
        return (x_t - (1 - ab_t).sqrt() * out) / ab_t.sqrt()
    return ab_t.sqrt() * x_t - (1 - ab_t).sqrt() * out


def snr(ab_t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio SNR_t = ab_t / (1 - ab_t) (Kingma et al. 2021, sec. 2): same shape as ab_t."""
    return ab_t / (1 - ab_t)


def min_snr_weight(kind: str, ab_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023, sec. 3.4): min(SNR, gamma) / SNR on the eps loss,
    min(SNR, gamma) / (SNR + 1) on the v loss; both weigh the implied x0 error by min(SNR, gamma). Shape of ab_t."""
    check_prediction(kind)
    s = snr(ab_t)
    return s.clamp(max=gamma) / (s if kind == "eps" else s + 1)
