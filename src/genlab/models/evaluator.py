"""The evaluator: a small digit classifier whose penultimate features are the offline FID space."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Evaluator(nn.Module):
    """(B, C, S, S) in [-1, 1] -> logits (B, classes); `features` is the 4*width-d penultimate layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, num_classes)
        self.feature_dim = 4 * w

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Augmentation: translate each image by up to `max_shift` pixels (edge-padded), drawn from `g`."""
    b = x.shape[0]
    pad = F.pad(x, [max_shift] * 4, mode="replicate")
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (2, b), generator=g)).tolist()
    s = x.shape[-1]
    return torch.stack([pad[i, :, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(b)])
