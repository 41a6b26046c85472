"""Class-conditional DCGAN-style baseline (Radford et al. 2016): a generator conditioned through per-class batch
norm, a projection discriminator (Miyato & Koyama 2018), spectral norm (Miyato et al. 2018) and the hinge loss."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from genlab.models.layers import Upsample2x


class ConditionalBatchNorm2d(nn.Module):
    """BN(h) * gamma_y + beta_y: batch norm without its own affine, then a gain and a bias per class (conditional
    batch norm, de Vries et al. 2017; the generator's conditioning in Miyato & Koyama 2018, sec. 4). Gains start
    at 1 and biases at 0, so at initialisation it is plain batch norm. num_classes = 0: `nn.BatchNorm2d`."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0)
        self.gain = nn.Embedding(num_classes, channels) if num_classes > 0 else None
        self.bias = nn.Embedding(num_classes, channels) if num_classes > 0 else None
        if self.gain is not None and self.bias is not None:
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.bn(h)
        if self.gain is None or self.bias is None:
            return h
        return h * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class Generator(nn.Module):
    """(z (B, z_dim), y (B,)) -> images (B, C, S, S) in [-1, 1]. z alone enters the network; the label y enters
    through every batch norm's per-class gain and bias (`ConditionalBatchNorm2d`). num_classes = 0:
    unconditional, y is ignored.

    The label is not concatenated to z: with a label embedding beside z, the generator learned to ignore z (on
    32-px shapes every sample of a class was the same image from 5,000 images on; on the digits a third of the
    data's within-class spread, recall 0.22); with conditional batch norm it keeps z's variety (README "The
    GAN's conditioning")."""

    def __init__(self, z_dim: int = 64, num_classes: int = 10, base: int = 64, image_size: int = 16,
                 channels: int = 1) -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.start = z_dim, num_classes, 4
        ups = int(math.log2(image_size // self.start))
        c = self.c0 = base * 2**ups
        self.fc = nn.Linear(z_dim, c * self.start * self.start)
        self.norms = nn.ModuleList([ConditionalBatchNorm2d(c, num_classes)])
        self.convs = nn.ModuleList()
        for _ in range(ups):
            self.convs.append(nn.Conv2d(c, c // 2, 3, padding=1))
            c //= 2
            self.norms.append(ConditionalBatchNorm2d(c, num_classes))
        self.up = Upsample2x()
        self.out = nn.Conv2d(c, channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.c0, self.start, self.start)
        h = F.relu(self.norms[0](h, y))
        for conv, cbn in zip(self.convs, self.norms[1:], strict=True):
            h = F.relu(cbn(conv(self.up(h)), y))
        return torch.tanh(self.out(h))


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
