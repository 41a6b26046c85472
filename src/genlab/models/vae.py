"""Convolutional VAE: the encoder predicts mean and log-variance of q(z|x) = N(mu, diag(exp(logvar)))."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from genlab.models.layers import ResBlock, Upsample2x, norm


class Encoder(nn.Module):
    def __init__(self, in_channels: int, base: int, latent: int, downsample: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base, 3, padding=1), ResBlock(base, base)]
        c = base
        for _ in range(downsample):
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), ResBlock(2 * c, 2 * c)]
            c *= 2
        layers += [norm(c), nn.SiLU(), nn.Conv2d(c, 2 * latent, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.net(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


class Decoder(nn.Module):
    def __init__(self, out_channels: int, base: int, latent: int, downsample: int) -> None:
        super().__init__()
        c = base * 2**downsample
        layers: list[nn.Module] = [nn.Conv2d(latent, c, 3, padding=1), ResBlock(c, c)]
        for _ in range(downsample):
            layers += [Upsample2x(), nn.Conv2d(c, c // 2, 3, padding=1),
                       ResBlock(c // 2, c // 2)]
            c //= 2
        layers += [norm(c), nn.SiLU(), nn.Conv2d(c, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VAE(nn.Module):
    """x (B, C, S, S) in [-1, 1] <-> z (B, latent, S / 2**downsample, S / 2**downsample)."""

    def __init__(self, in_channels: int = 1, base_channels: int = 32, latent_channels: int = 4,
                 downsample: int = 1) -> None:
        super().__init__()
        self.downsample, self.latent_channels = downsample, latent_channels
        self.encoder = Encoder(in_channels, base_channels, latent_channels, downsample)
        self.decoder = Decoder(in_channels, base_channels, latent_channels, downsample)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The training pass, in one call (what DistributedDataParallel wraps): x -> (x_hat, mean, logvar),
        decoding z = reparameterize(mean, logvar, eps), or z = mean when eps is None (a plain autoencoder)."""
        mean, logvar = self.encode(x)
        z = mean if eps is None else reparameterize(mean, logvar, eps)
        return self.decode(z), mean, logvar


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014, eq. 10)."""
    return mean + torch.exp(0.5 * logvar) * eps


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2), per sample: (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def vae_loss(x: torch.Tensor, x_hat: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             beta: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Negative ELBO with a Gaussian decoder of fixed std sigma (constants dropped), batch means:

    recon = ||x - x_hat||^2 / (2 sigma^2),  loss = recon + beta * KL(q(z|x) || N(0, I)).
    Returns (loss, recon, kl).
    """
    recon = F.mse_loss(x_hat, x, reduction="none").flatten(1).sum(1) / (2 * sigma**2)
    kl = kl_to_standard_normal(mean, logvar)
    return (recon + beta * kl).mean(), recon.mean(), kl.mean()
