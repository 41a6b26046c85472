"""The evaluator: a small digit classifier whose penultimate features are the offline FID space."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Evaluator(nn.Module):
    """(B, C, S, S) in [-1, 1] -> logits (B, sum(heads)); `features` is the 4*width-d penultimate layer.

    One softmax head per attribute (`heads`: classes of each; digits: one head of 10): `split` cuts the
    logits into per-head pieces. `stem_stride` (see `stem_stride_for`): the first convolution's stride, so
    images over 32 px reach the layers at 32 px or less.
    """

    def __init__(self, in_channels: int = 1, num_classes: int | list[int] = 10, width: int = 32,
                 stem_stride: int = 1) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, stride=stem_stride, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.heads = [num_classes] if isinstance(num_classes, int) else list(num_classes)
        self.head = nn.Linear(4 * w, sum(self.heads))
        self.feature_dim = 4 * w

    def split(self, logits: torch.Tensor) -> list[torch.Tensor]:
        return list(logits.split(self.heads, dim=1))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, A) predicted class of every attribute."""
        return torch.stack([part.argmax(1) for part in self.split(self(x))], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def stem_stride_for(image_size: int) -> int:
    """The stem's stride for `image_size`-px images: 1 up to 32 px (the features of every size up to 32 px are
    unchanged), 2 at 33-64 px, 4 at 65-128 px. At 64 px a 64-image batch of the full-resolution maps (32 and 64
    channels of 64x64, 34 and 67 MB each) put a stage's training step 0.5 GiB over its imports (measured)."""
    stride = 1
    while image_size > 32 * stride:
        stride *= 2
    return stride


def attribute_loss(model: Evaluator, logits: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """Sum over heads of the cross-entropy of each attribute: (B, sum(heads)), (B, A) -> scalar."""
    return sum(F.cross_entropy(part, attributes[:, i]) for i, part in enumerate(model.split(logits)))


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image i of (B, C, S, S) by k[i] * 90 degrees counter-clockwise (k in 0..3)."""
    out = x.clone()
    for r in range(1, 4):
        sel = (k == r).nonzero().flatten().to(x.device)
        if len(sel):
            out[sel] = torch.rot90(x[sel], r, dims=(2, 3))
    return out


def random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Augmentation: translate each image by up to `max_shift` pixels (edge-padded), drawn from `g`."""
    b = x.shape[0]
    pad = F.pad(x, [max_shift] * 4, mode="replicate")
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (2, b), generator=g)).tolist()
    s = x.shape[-1]
    return torch.stack([pad[i, :, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(b)])


def random_noise(x: torch.Tensor, g: torch.Generator, max_std: float) -> torch.Tensor:
    """Augmentation: x + sigma * n, n ~ N(0, I), sigma ~ U(0, max_std) per image, drawn from `g`, clamped to [-1, 1].
    Without it an evaluator trained on clean synthetic images flips on noise a person cannot see (README)."""
    sigma = max_std * torch.rand(x.shape[0], *[1] * (x.dim() - 1), generator=g)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)
