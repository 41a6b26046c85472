"""One code path for CPU and CUDA: `device: auto` picks CUDA when present."""

from __future__ import annotations

import torch

from genlab.errors import ConfigError

PIXELS_PER_BATCH = 512 * 16 * 16  # inference batches: 512 images at 16x16 (activation memory grows with pixels)
PROGRESS_FROM = 10_000  # images: a whole-split pass over this many shows a progress bar (minutes on CPU)


def inference_batch(side: int) -> int:
    """Images per inference batch (encode, decode, classify) for side x side inputs: 512 at 16, 128 at 32, 32 at
    64, so a batch's activations take the same memory at every size (~1 GB at 64 px with 512 would double a
    stage's peak)."""
    return max(8, PIXELS_PER_BATCH // (side * side))


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(device)
