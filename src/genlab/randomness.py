"""Counter-based randomness: every random draw is a pure function of (seed, stream, counter).

As in EDM2, a training step's randomness (batch order, noise, timesteps, label dropout) is derived
from (seed, step) instead of carried generator state, so a resumed run draws exactly what an
uninterrupted run would have drawn.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints and strings (stable across processes and platforms)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*parts: int | str) -> torch.Generator:
    """A CPU generator for the stream named by `parts`. Draw on CPU, then move: device-independent."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> torch.Tensor:
    """Indices of training step `step`: epoch e = step // (n // B) uses permutation P_e(seed), drop-last."""
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the training set ({n})")
    steps_per_epoch = n // batch_size
    epoch, k = divmod(step, steps_per_epoch)
    perm = torch.randperm(n, generator=generator(seed, "epoch", epoch))
    return perm[k * batch_size : (k + 1) * batch_size]
