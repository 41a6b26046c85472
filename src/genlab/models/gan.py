"""Class-conditional DCGAN-style baseline (Radford et al. 2016) with a projection discriminator
(Miyato & Koyama 2018), spectral norm (Miyato et al. 2018) and the hinge loss."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from genlab.models.layers import Upsample2x


class Generator(nn.Module):
    """(z (B, z_dim), y (B,)) -> images (B, C, S, S) in [-1, 1]; a label embedding is concatenated to z
    (num_classes = 0: unconditional, z alone; y is ignored)."""

    def __init__(self, z_dim: int = 64, num_classes: int = 10, base: int = 64, image_size: int = 16,
                 channels: int = 1) -> None:
        super().__init__()
        self.z_dim, self.start = z_dim, 4
        ups = int(math.log2(image_size // self.start))
        c = base * 2**ups
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes > 0 else None
        self.fc = nn.Linear((2 if num_classes > 0 else 1) * z_dim, c * self.start * self.start)
        layers: list[nn.Module] = [nn.BatchNorm2d(c), nn.ReLU()]
        for _ in range(ups):
            layers += [Upsample2x(), nn.Conv2d(c, c // 2, 3, padding=1), nn.BatchNorm2d(c // 2),
                       nn.ReLU()]
            c //= 2
        layers += [nn.Conv2d(c, channels, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.c0 = base * 2**ups

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(z if self.embed is None else torch.cat([z, self.embed(y)], dim=1))
        h = h.view(-1, self.c0, self.start, self.start)
        return self.net(h)


class Discriminator(nn.Module):
    """D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (projection discriminator, eq. 3); num_classes = 0:
    unconditional, D(x) = psi(phi(x)) without the projection term."""

    def __init__(self, num_classes: int = 10, base: int = 64, image_size: int = 16, channels: int = 1) -> None:
        super().__init__()
        downs = int(math.log2(image_size // 4))
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(channels, base, 3, padding=1)), nn.LeakyReLU(0.2)]
        c = base
        for _ in range(downs):
            layers += [spectral_norm(nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c *= 2
        self.phi = nn.Sequential(*layers, nn.Flatten())
        feat = c * 16
        self.psi = spectral_norm(nn.Linear(feat, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, feat)) if num_classes > 0 else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.phi(x)
        score = self.psi(h).squeeze(1)
        return score if self.embed is None else score + (self.embed(y) * h).sum(1)


def d_hinge_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))] (Lim & Ye 2017)."""
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def g_hinge_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z))]."""
    return -fake_scores.mean()


def r1_penalty(real_scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 = E ||grad_x D(x)||^2 on real data (Mescheder et al. 2018, eq. 9); the loss adds gamma/2 * R1.
    `real` must require grad and `real_scores` be computed from it."""
    (grad,) = torch.autograd.grad(real_scores.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()
