"""scikit-learn's digits: 1,797 real 8x8 handwritten digits (10 classes), shipped inside the package."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def load(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, S, S) float32 in [-1, 1] and labels (N,) int64.

    Pixel values 0..16 are scaled to [-1, 1]; 8x8 is bilinearly resized to `image_size`
    (16 by default: two 2x downsamplings in the networks still leave a 4x4 map).
    """
    from sklearn.datasets import load_digits  # imported here: only `prepare` loads the data (1 s)

    x, y = load_digits(return_X_y=True)
    images = torch.from_numpy(x).float().view(-1, 1, 8, 8) / 16.0 * 2.0 - 1.0
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.clamp(-1, 1).contiguous(), torch.from_numpy(y).long()
