"""Samplers: free functions over a denoiser and a list of time steps (as in EDM).

A guided sampler is the same sampler given a denoiser wrapped by `guided`, which mixes
conditional and unconditional predictions (classifier-free guidance, Ho & Salimans 2022, eq. 6).
Samplers take eps-denoisers; `as_eps_denoiser` wraps a v-predicting network (guided or not) into one.
Time steps are genlab indices k = 0..T-1 into alpha_bar, listed in decreasing order; after the last listed
step the sampler returns x0 (alpha_bar = 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from genlab.diffusion.objectives import check_prediction, per_sample, to_eps, to_x0
from genlab.diffusion.posterior import posterior_mean, posterior_variance
from genlab.memory import heap_for_steps

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> eps_hat


def guide(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_hat = eps_u + w (eps_c - eps_u): w = 1 is the conditional model, w = 0 the unconditional."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided(model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], y: torch.Tensor,
           null_label: int, scale: float) -> Denoiser:
    """A denoiser eps(x_t, t) for labels y under guidance scale w, batched as one forward pass."""
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if scale == 1.0:  # eq. 6 reduces to one model: no doubled batch
            return model(x, t, y)
        if scale == 0.0:
            return model(x, t, torch.full_like(y, null_label))
        eps = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
        eps_c, eps_u = eps.chunk(2)
        return guide(eps_c, eps_u, scale)
    return denoise


def as_eps_denoiser(denoise_out: Denoiser, kind: str, alpha_bar: torch.Tensor) -> Denoiser:
    """An eps-denoiser from one that returns the network's raw output of kind "eps" or "v".

    eps = sqrt(ab_t) v + sqrt(1 - ab_t) x_t (Salimans & Ho 2022, sec. 4) is linear in v, so guiding v and then
    converting equals converting and then guiding eps: `as_eps_denoiser(guided(model, y, null, w), "v", ab)`.
    """
    check_prediction(kind)
    if kind == "eps":
        return denoise_out

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab_t = per_sample(alpha_bar.to(x.device, torch.float64)[t], x)  # (B, 1, ..., 1)
        return to_eps(kind, denoise_out(x, t).double(), x.double(), ab_t).to(x.dtype)
    return denoise


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """`steps` evenly spaced steps from T-1 downwards ("trailing" spacing, Lin et al. 2024, table 2)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    return [round(T - i * T / steps) - 1 for i in range(steps)]


def pairs(ab: torch.Tensor, timesteps: list[int]) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """(t, t_prev, ab_t, ab_prev) for each listed step; after the last step t_prev = -1 and ab_prev = 1."""
    prevs = [*timesteps[1:], -1]
    return [(t, p, ab[t], ab[p] if p >= 0 else ab.new_tensor(1.0)) for t, p in zip(timesteps, prevs, strict=True)]


@torch.no_grad()
@heap_for_steps()  # the same activations every step: from the heap, not fresh mappings (genlab.memory)
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
    for i, (t, t_prev, ab_t, ab_prev) in enumerate(pairs(ab, timesteps)):
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


@torch.no_grad()
@heap_for_steps()
def ddpm_sample(denoise: Denoiser, noise: torch.Tensor, alpha_bar: torch.Tensor, timesteps: list[int],
                step_noise: Callable[[int], torch.Tensor], clip_x0: float | None = None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) over a decreasing list of steps, from x_T = noise.

    Between listed steps t > t_prev (ab_prev = 1 after the last one), with alpha_t = ab_t / ab_prev:
    x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t), clipped to [-clip_x0, clip_x0] if given  (eq. 15)
    x_prev = mu_tilde(x_t, x0_hat) + sqrt(beta_tilde) z  (eq. 6-7, `posterior`), z = step_noise(i)
    No noise is added at the last step. With every step listed this is Algorithm 2 exactly (eq. 11 form).
    """
    ab = alpha_bar.to(noise.device, torch.float64)
    x = noise
    for i, (t, t_prev, ab_t, ab_prev) in enumerate(pairs(ab, timesteps)):
        eps = denoise(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).double()
        x0 = to_x0("eps", eps, x.double(), ab_t)  # eq. 15: (B, ...)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        x_prev = posterior_mean(x0, x.double(), ab_t, ab_prev)  # eq. 7: (B, ...)
        if t_prev >= 0:
            x_prev = x_prev + posterior_variance(ab_t, ab_prev).sqrt() * step_noise(i).to(x.device, torch.float64)
        x = x_prev.to(noise.dtype)
    return x
