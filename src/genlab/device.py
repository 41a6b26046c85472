"""One code path for CPU and CUDA: `device: auto` picks CUDA when present."""

from __future__ import annotations

import torch

from genlab.errors import ConfigError


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(device)
