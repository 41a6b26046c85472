"""Samplers: free functions over a denoiser and a list of time steps (as in EDM).

A guided sampler is the same sampler given a denoiser wrapped by `guided`, which mixes
conditional and unconditional predictions (classifier-free guidance, Ho & Salimans 2022, eq. 6).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> eps_hat


def guide(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_hat = eps_u + w (eps_c - eps_u): w = 1 is the conditional model, w = 0 the unconditional."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided(model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], y: torch.Tensor,
           null_label: int, scale: float) -> Denoiser:
    """A denoiser eps(x_t, t) for labels y under guidance scale w, batched as one forward pass."""
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if scale == 1.0:
            return model(x, t, y)
        eps = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
        eps_c, eps_u = eps.chunk(2)
        return guide(eps_c, eps_u, scale)
    return denoise


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """`steps` evenly spaced steps from T-1 downwards ("trailing" spacing, Lin et al. 2024, table 2)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    return [round(T - i * T / steps) - 1 for i in range(steps)]


@torch.no_grad()
def ddim_sample(denoise: Denoiser, noise: torch.Tensor, alpha_bar: torch.Tensor, timesteps: list[int],
                eta: float = 0.0, step_noise: Callable[[int], torch.Tensor] | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12), from x_T = noise:

    x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)
    sigma_t = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)
    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma_t^2) eps + sigma_t z
    `step_noise(i)` supplies z at step i (per-image seeded noise); required when eta > 0.
    """
    ab = alpha_bar.to(noise.device, torch.float64)
    x = noise
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        ab_t = ab[t]
        ab_prev = ab[t_prev] if t_prev >= 0 else ab.new_tensor(1.0)
        eps = denoise(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).double()
        x0 = (x.double() - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
        sigma = eta * ((1 - ab_prev) / (1 - ab_t)).sqrt() * (1 - ab_t / ab_prev).sqrt()
        x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and t_prev >= 0:
            if step_noise is None:
                raise ValueError("ddim_sample: eta > 0 needs step_noise")
            x_prev = x_prev + sigma * step_noise(i).to(x.device, torch.float64)
        x = x_prev.to(noise.dtype)
    return x
