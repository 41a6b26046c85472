"""The variational bound: diffusion as a hierarchical VAE (Sohl-Dickstein et al. 2015; Ho et al. 2020, eq. 5).

Index convention. genlab's alpha_bar[k], k = 0..T-1, is the signal left at model step k; write the latent at
step k as z_k = sqrt(ab[k]) x_0 + sqrt(1 - ab[k]) eps (the denoiser is called with t = k). Ho et al. number
the latents x_1..x_T, so their x_t is z_{t-1}: z_0 is the least noisy latent (their x_1), z_{T-1} the last
(their x_T), and their beta_1 is 1 - ab[0].

The negative ELBO of one sample x_0, in nats (eq. 5):
  L   = L_T + sum_{k=1}^{T-1} L_k + L_0
  L_T = KL(q(z_{T-1} | x_0) || N(0, I))                                       closed form
  L_k = KL(q(z_{k-1} | z_k, x_0) || p(z_{k-1} | z_k)), p = N(mu_theta, beta_tilde_k I)
      = ||mu_tilde(z_k, x_0) - mu_theta(z_k)||^2 / (2 beta_tilde_k)            (the variances cancel)
  L_0 = -log N(x_0; mu_theta(z_0), beta_1 I), mu_theta(z_0) = x0_hat(z_0)     Gaussian decoder
where mu_theta = mu_tilde(z_k, x0_hat) (`posterior`) and z_k ~ q(z_k | x_0) is drawn once per term.

Continuous data: L_0 is a density, not a probability, so the bound is in "bits" of a continuous density. It
can be negative (a point mass has no finite density; L_0 -> -inf as beta_1 -> 0), and it compares only
models of the same data representation (same scaling, same latent space), never with discrete-data bits/dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from genlab.diffusion.objectives import per_sample, to_x0
from genlab.diffusion.posterior import posterior_mean, posterior_variance

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> eps_hat


def prior_kl(x0: torch.Tensor, ab_last: torch.Tensor) -> torch.Tensor:
    """L_T = KL(N(sqrt(ab) x_0, (1 - ab) I) || N(0, I)) = 1/2 sum_d (ab x_0^2 - ab - log(1 - ab)): (B, ...) -> (B,)."""
    x = x0.double().flatten(1)
    ab = ab_last.double()
    return 0.5 * (ab * x.pow(2) - ab - torch.log1p(-ab)).sum(1)


def _latent(x0: torch.Tensor, k: torch.Tensor, alpha_bar: torch.Tensor,
            noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z_k = sqrt(ab[k]) x_0 + sqrt(1 - ab[k]) eps  (Ho et al., eq. 4), in float64: (B, ...), and ab[k]: (B, 1, ..)."""
    ab_k = per_sample(alpha_bar.to(x0.device, torch.float64)[k], x0)
    return ab_k.sqrt() * x0.double() + (1 - ab_k).sqrt() * noise.double(), ab_k


def _x0_hat(denoise_eps: Denoiser, z: torch.Tensor, k: torch.Tensor, ab_k: torch.Tensor,
            dtype: torch.dtype) -> torch.Tensor:
    """x0_hat = (z_k - sqrt(1 - ab) eps_theta(z_k, k)) / sqrt(ab)  (eq. 15); the denoiser sees z in x_0's dtype."""
    eps = denoise_eps(z.to(dtype), k).double()
    return to_x0("eps", eps, z, ab_k)


def posterior_kl(denoise_eps: Denoiser, x0: torch.Tensor, alpha_bar: torch.Tensor, k: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
    """L_k = ||mu_tilde(z_k, x_0) - mu_theta(z_k)||^2 / (2 beta_tilde_k) at per-sample steps k >= 1 (Ho et al.,
    eq. 5 and 8, with Sigma_theta = beta_tilde): x_0 (B, ...), k (B,), noise (B, ...) -> nats (B,)."""
    z, ab_k = _latent(x0, k, alpha_bar, noise)
    ab_prev = per_sample(alpha_bar.to(x0.device, torch.float64)[k - 1], x0)
    x0_hat = _x0_hat(denoise_eps, z, k, ab_k, x0.dtype)
    diff = posterior_mean(x0.double(), z, ab_k, ab_prev) - posterior_mean(x0_hat, z, ab_k, ab_prev)
    return diff.pow(2).flatten(1).sum(1) / (2 * posterior_variance(ab_k, ab_prev).flatten())


def decoder_nll(denoise_eps: Denoiser, x0: torch.Tensor, alpha_bar: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
    """L_0 = -log N(x_0; x0_hat(z_0), beta_1 I), beta_1 = 1 - ab[0] (continuous Gaussian decoder in place of
    Ho et al.'s discretized one, eq. 13): x_0 (B, ...), noise (B, ...) -> nats (B,)."""
    k = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
    z, ab_0 = _latent(x0, k, alpha_bar, noise)
    beta_1 = 1 - ab_0.flatten()  # (B,)
    sq = (x0.double() - _x0_hat(denoise_eps, z, k, ab_0, x0.dtype)).pow(2).flatten(1).sum(1)
    return 0.5 * (x0[0].numel() * torch.log(2 * math.pi * beta_1) + sq / beta_1)


def nll_bound_bits_per_dim(denoise_eps: Denoiser, x0: torch.Tensor, alpha_bar: torch.Tensor, g: torch.Generator,
                           n_t: int | None = None) -> torch.Tensor:
    """The negative ELBO L = L_T + sum_{k=1}^{T-1} L_k + L_0 of each sample, in bits per dimension:
    nats / (D ln 2), D = x_0[0].numel(). x_0 (B, ...) -> (B,), float64. See the module docstring for the
    index convention and why continuous bits/dim can be negative.

    n_t = None sums L_k over every k = 1..T-1 (T - 1 denoiser calls); otherwise the sum is estimated without
    bias by (T - 1)/n_t times the sum over n_t steps k ~ U{1..T-1} drawn per sample. Everything random comes
    from `g` on the CPU, in this order: the decoder's eps; then (Monte Carlo only) k of shape (n_t, B); then one
    eps per term. Call under torch.no_grad() unless it is a training loss.
    """
    if n_t is not None and n_t < 1:
        raise ValueError(f"n_t must be >= 1 or None, got {n_t}")
    T, B = alpha_bar.shape[0], x0.shape[0]

    def randn() -> torch.Tensor:
        return torch.randn(x0.shape, generator=g, dtype=torch.float64).to(x0.device)

    nats = prior_kl(x0, alpha_bar.to(x0.device, torch.float64)[-1]) + decoder_nll(denoise_eps, x0, alpha_bar, randn())
    if T > 1:
        if n_t is None:
            steps, scale = torch.arange(1, T).view(-1, 1).expand(T - 1, B), 1.0
        else:
            steps, scale = torch.randint(1, T, (n_t, B), generator=g), (T - 1) / n_t
        for k in steps.to(x0.device):
            nats = nats + scale * posterior_kl(denoise_eps, x0, alpha_bar, k, randn())
    return nats / (x0[0].numel() * math.log(2))
