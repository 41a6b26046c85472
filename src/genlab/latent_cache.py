"""A VAE's posterior over a whole split, computed in batches so memory does not grow with the data.

`encode_batches` yields q(z|x) = N(mean, exp(logvar)) one inference batch at a time; `Moments` accumulates the
std of whatever streams through it; `posterior_cache` writes (mean, logvar) of every image to a float32 file
that training reads back through a memory map, a batch of rows per step (100,000 64x64 images make 4x16x16
latents of 0.8 GB: on disk, not in memory).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from genlab.data import store
from genlab.device import PROGRESS_FROM, inference_batch
from genlab.distributed import World
from genlab.memory import heap_for_steps
from genlab.models.vae import VAE


@torch.no_grad()
def encode_batches(vae: VAE, images: store.Images | torch.Tensor,
                   device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(mean, logvar) on CPU for consecutive batches of `images` (the batches `inference_batch` sizes). The heap
    serves the batches (`memory.heap_for_steps`): what callers keep across a whole split is one preallocated
    buffer or a file, so it cannot fragment."""
    vae.eval()
    b = inference_batch(images.shape[-1])
    with heap_for_steps(), tqdm(total=len(images), unit="img", desc="latents",
                                disable=len(images) < PROGRESS_FROM) as bar:
        for i in range(0, len(images), b):
            mean, logvar = vae.encode(images[i : i + b].to(device))
            bar.update(len(mean))
            yield mean.cpu(), logvar.cpu()


class Moments:
    """Running count, sum and sum of squares (float64) of every element added; `std` is the unbiased
    std = sqrt((Σx² - (Σx)²/n) / (n - 1)), the same statistic as torch.std over all elements at once."""

    def __init__(self) -> None:
        self.n, self.sum, self.sumsq = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        self.n += x.numel()
        self.sum += float(x.sum())
        self.sumsq += float((x * x).sum())

    def std(self) -> float:
        if self.n < 2:
            raise ValueError(f"std needs at least 2 elements, got {self.n}")
        return math.sqrt(max(0.0, (self.sumsq - self.sum**2 / self.n) / (self.n - 1)))


def spread_rows(n: int, k: int) -> torch.Tensor:
    """min(n, k) row indices spread evenly over 0..n-1 (every row when n <= k): a sample that covers a split
    stored in class order."""
    return torch.arange(n) if n <= k else torch.linspace(0, n - 1, k).round().long()


@contextlib.contextmanager
def posterior_cache(vae: VAE, images: store.Images, device: torch.device, path: Path,
                    world: World = World()) -> Iterator[store.Rows]:  # noqa: B008 (frozen)
    """Encode every image once into `path` as (N, 2 * latent_channels, s, s) float32 rows, mean then logvar along
    the channels; yields the rows (read per batch through a memory map) and deletes the file on exit. Under
    torchrun rank 0 writes it, the others read it once it is written, and rank 0 deletes it when it is done:
    after every rank's last read, as each training step's gradient average waits for every rank's step."""
    n, side = len(images), images.shape[-1] >> vae.downsample
    shape = (n, 2 * vae.latent_channels, side, side)
    chunks = (torch.cat([m, lv], 1).numpy() for m, lv in encode_batches(vae, images, device))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if world.main:
            store.write(path, [store.Entry("posterior", "F32", shape, chunks)])
        world.barrier()
        yield store.rows_of(path, "posterior", "F32")
    finally:
        if world.main:
            path.unlink(missing_ok=True)
