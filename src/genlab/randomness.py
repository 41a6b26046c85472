"""Counter-based randomness: every random draw is a pure function of (seed, stream, counter).

As in EDM2, a training step's randomness (batch order, noise, timesteps, label dropout) is derived
from (seed, step) instead of carried generator state, so a resumed run draws exactly what an
uninterrupted run would have drawn. Module initialisation draws from torch's global generator, so
every network is built under `seeded(seed, stage, "init", ...)`; and `seed_process` seeds the global
generators from (seed, stage) at process start, so nothing in a stage can depend on the process's
default seed (which this torch build picks at random in every process).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints and strings (stable across processes and platforms)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*parts: int | str) -> torch.Generator:
    """A CPU generator for the stream named by `parts`. Draw on CPU, then move: device-independent."""
    return torch.Generator().manual_seed(derive_seed(*parts))


@contextmanager
def seeded(*parts: int | str) -> Iterator[None]:
    """Inside the block torch's global (CPU) generator is seeded from the stream `parts`; outside, its
    state is what it was. Build networks (on CPU, then move them) inside: their initial weights are then
    a function of `parts` alone, whatever ran before in the process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*parts))
        yield


def seed_process(seed: int, stage: str) -> None:
    """Seed torch's, numpy's and Python's global generators from (seed, stage), once at process start."""
    s = derive_seed(seed, stage, "process")
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def deterministic(device: torch.device) -> None:
    """The settings under which the same params give the same bits on `device`.

    CPU: kernels are deterministic for a fixed torch build and thread count; nothing to set. CUDA:
    cuDNN's deterministic algorithms without autotuning, cuBLAS with a fixed workspace, and PyTorch's
    deterministic mode, which warns (naming the op) where no deterministic kernel exists.
    """
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read at the first cuBLAS call
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> torch.Tensor:
    """Indices of training step `step`: epoch e = step // (n // B) uses permutation P_e(seed), drop-last."""
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the training set ({n})")
    steps_per_epoch = n // batch_size
    epoch, k = divmod(step, steps_per_epoch)
    perm = torch.randperm(n, generator=generator(seed, "epoch", epoch))
    return perm[k * batch_size : (k + 1) * batch_size]
