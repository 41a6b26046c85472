"""Latent-space tools for a VAE: interpolation paths, principal "knobs", class means and concept arithmetic.

Pure functions over tensors. A latent `z` is one sample of any shape (e.g. (C, h, w) for genlab's VAE);
paths and traversals put their new axes in front, so `decode_batched` (or the caller) can decode them
in one go and `genlab.images.save_grid` can lay them out row by row.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _ts(n: int, like: torch.Tensor) -> torch.Tensor:
    """t_i = i / (n - 1), i = 0..n-1, shaped (n, 1, ..., 1) to broadcast against a sample of `like`'s shape."""
    if n < 2:
        raise ValueError(f"a path needs n >= 2 points (both endpoints), got {n}")
    t = torch.arange(n, dtype=torch.float64, device=like.device) / (n - 1)
    return t.view(n, *([1] * like.dim()))


def _check_pair(z0: torch.Tensor, z1: torch.Tensor) -> None:
    if z0.shape != z1.shape:
        raise ValueError(f"endpoints differ in shape: {tuple(z0.shape)} vs {tuple(z1.shape)}")


def lerp(z0: torch.Tensor, z1: torch.Tensor, n: int) -> torch.Tensor:
    """Straight line z(t) = (1 - t) z0 + t z1 at n evenly spaced t in [0, 1]: (n, *z0.shape), endpoints exact."""
    _check_pair(z0, z1)
    t = _ts(n, z0)
    path = ((1 - t) * z0.double() + t * z1.double()).to(z0.dtype)
    path[0], path[-1] = z0, z1
    return path


def slerp(z0: torch.Tensor, z1: torch.Tensor, n: int, eps: float = 1e-6) -> torch.Tensor:
    """Great-circle path (Shoemake 1985) over the flattened vectors: (n, *z0.shape), endpoints exact.

    cos θ = <z0, z1> / (|z0| |z1|),  z(t) = sin((1 - t) θ) / sin θ · z0 + sin(t θ) / sin θ · z1.
    For equal-norm endpoints every point keeps that norm (a Gaussian prior's typical shell), where the
    straight line cuts inside it. Falls back to `lerp` when sin θ < eps (parallel or antipodal endpoints,
    where the great circle is undefined).
    """
    _check_pair(z0, z1)
    a, b = z0.double().flatten(), z1.double().flatten()
    cos = (a @ b / (a.norm() * b.norm()).clamp_min(1e-300)).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    if sin.item() < eps:
        return lerp(z0, z1, n)
    t = _ts(n, z0)
    path = (torch.sin((1 - t) * theta) / sin * z0.double() + torch.sin(t * theta) / sin * z1.double()).to(z0.dtype)
    path[0], path[-1] = z0, z1
    return path


def principal_directions(latents: torch.Tensor, k: int, block: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of flattened latents (N, *shape): the top-k unit directions (k, *shape) and their std devs (k,).

    From the covariance, accumulated in float64 over blocks of `block` rows (memory O(D²), not O(N·D): an SVD of the
    8,192 x 1,024 latents of 64-px images took `train_vae` 0.18 GiB over the rest of its run):
    C = (XᵀX − N μμᵀ) / (N − 1) = V Λ Vᵀ;  direction_i = V[:, i],  std_i = √λ_i, for the k largest λ
    (the same as X − μ = U Σ Vᵀ with std_i = Σ_ii / √(N − 1)).
    Signs are fixed so each direction's largest-magnitude component is positive (the eigenvectors' sign is arbitrary).
    """
    n, shape = latents.shape[0], latents.shape[1:]
    d = math.prod(shape)
    if n < 2 or not 1 <= k <= min(n, d):
        raise ValueError(f"need N >= 2 and 1 <= k <= min(N, D); got N={n}, D={d}, k={k}")
    total, gram = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    for rows in latents.flatten(1).split(block):
        rows = rows.double()
        total += rows.sum(0)
        gram += rows.T @ rows
    mu = total / n
    cov = (gram - n * torch.outer(mu, mu)) / (n - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    top = evals.argsort(descending=True)[:k]
    dirs = evecs[:, top].T  # (k, D), orthonormal rows
    pivot = dirs.abs().argmax(1, keepdim=True)
    dirs = dirs * torch.sign(dirs.gather(1, pivot))
    stds = evals[top].clamp(min=0).sqrt()
    return dirs.to(latents.dtype).view(k, *shape), stds.to(latents.dtype)


def traversal(z: torch.Tensor, directions: torch.Tensor, stds: torch.Tensor, steps: int,
              span: float = 3.0) -> torch.Tensor:
    """One knob at a time: out[i, j] = z + a_j · std_i · direction_i, a_j evenly in [-span, +span].

    z (*shape), directions (k, *shape), stds (k,) -> (k, steps, *shape). With odd `steps` the centre
    column a = 0 is exactly z.
    """
    if steps < 2:
        raise ValueError(f"a traversal needs steps >= 2, got {steps}")
    k = directions.shape[0]
    if directions.shape[1:] != z.shape or stds.shape != (k,):
        raise ValueError(f"shapes disagree: z {tuple(z.shape)}, directions {tuple(directions.shape)}, "
                         f"stds {tuple(stds.shape)}")
    # a_j = span · (2j - (steps - 1)) / (steps - 1): symmetric, and exactly 0 in the middle for odd steps.
    a = span * (2 * torch.arange(steps, dtype=z.dtype, device=z.device) - (steps - 1)) / (steps - 1)
    ones = [1] * z.dim()
    step = stds.view(k, 1, *ones) * a.view(1, steps, *ones) * directions.unsqueeze(1)  # (k, steps, *shape)
    return z + step


def class_means(latents: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """mean_c = (1 / |{i: y_i = c}|) Σ_{i: y_i = c} z_i for latents (N, *shape), labels (N,): (C, *shape).

    C defaults to max(label) + 1; every class must have at least one sample.
    """
    if labels.dim() != 1 or labels.shape[0] != latents.shape[0]:
        raise ValueError(f"labels must be (N,) with N = {latents.shape[0]}, got {tuple(labels.shape)}")
    c = num_classes if num_classes is not None else int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=c)
    if counts.shape[0] > c or (counts == 0).any():
        raise ValueError(f"every class in 0..{c - 1} needs samples (and no label beyond); counts {counts.tolist()}")
    x = latents.double().flatten(1)
    sums = torch.zeros(c, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, labels, x)
    return (sums / counts.unsqueeze(1)).to(latents.dtype).view(c, *latents.shape[1:])


def concept_arithmetic(z: torch.Tensor, means: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Swap concept a for concept b: z' = z - mean_a + mean_b (z (*shape) or (B, *shape), means (C, *shape))."""
    return z - means[a] + means[b]


def decode_batched(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, sample_dims: int,
                   batch_size: int = 256) -> torch.Tensor:
    """Decode latents with any leading axes: z (*lead, *shape), len(shape) = sample_dims -> (*lead, *image).

    Runs `decode` under no_grad on chunks of at most `batch_size` samples.
    """
    lead = z.shape[: z.dim() - sample_dims]
    flat = z.reshape(-1, *z.shape[z.dim() - sample_dims:])
    with torch.no_grad():
        out = torch.cat([decode(chunk) for chunk in flat.split(batch_size)])
    return out.view(*lead, *out.shape[1:])
