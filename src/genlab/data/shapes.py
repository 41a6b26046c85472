"""Procedural shapes: one coloured shape on black, with captions, generated from (seed, index) alone.

Each image is RGB (3, S, S) in [-1, 1]: background -1 (black), the shape painted in one of six
saturated colours. Attributes and their class layout (labels (N, 4) int64, one column per attribute,
in this order; an evaluator predicts each with its own softmax head of len(values) classes):

    column 0  colour    0 red, 1 green, 2 blue, 3 yellow, 4 magenta, 5 cyan     (6 classes)
    column 1  shape     0 circle, 1 square, 2 triangle                          (3 classes)
    column 2  size      0 small, 1 large                                        (2 classes)
    column 3  position  0 left, 1 right, 2 top, 3 bottom                        (4 classes)

`class_index` folds a row into one mixed-radix class (144 in all) for code that wants (N,) labels.

Geometry, in pixels of an S x S image: the shape's bounding square has half-side r = 0.12 S (small)
or 0.19 S (large), times a size jitter in [0.92, 1.08]; its centre sits 0.23 S from the image centre
towards the named side (left/right: x = 0.27 S / 0.73 S, y = S / 2; top/bottom likewise in y), plus
a position jitter of up to ±S/16 px in x and y (±1 px at 16, ±2 px at 32); even at the extremes
the shape stays inside the image, never clipped. The circle is inscribed in the square (area π/4
of it); the triangle points up, apex at the top centre and base along the bottom edge (area 1/2
of it). Pixels are the coverage of a 4 x 4 grid of sub-samples (supersampled anti-aliasing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.nn import functional as F

from genlab.randomness import generator

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue", "yellow", "magenta", "cyan"),
    "shape": ("circle", "square", "triangle"),
    "size": ("small", "large"),
    "position": ("left", "right", "top", "bottom"),
}
NAMES: tuple[str, ...] = tuple(ATTRIBUTES)
NUM_CLASSES: tuple[int, ...] = tuple(len(v) for v in ATTRIBUTES.values())  # (6, 3, 2, 4): one head each

# RGB in [0, 1] per colour, same order as ATTRIBUTES["colour"].
RGB = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.float32)
HALF_SIDE = (0.12, 0.19)  # r / S for small, large
OFFSET = 0.23  # centre's distance from the image centre, / S
# Unit step from the image centre for left, right, top, bottom (x to the right, y down).
DIRECTION = ((-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0))
POSITION_JITTER = 1 / 16  # max |dx|, |dy| / S
SIZE_JITTER = 0.08  # scale in [1 - 0.08, 1 + 0.08]
SUPERSAMPLE = 4
PLACE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}


# ---------------------------------------------------------------------------------------------- rendering


def _coverage(kind: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, r: torch.Tensor, size: int) -> torch.Tensor:
    """Fraction of each pixel inside the shape: kind, cx, cy, r (B,) in pixels -> (B, S, S) in [0, 1].

    Sub-sample centres u = (j + 1/2) / k for j = 0..kS-1 (k = SUPERSAMPLE), then a k x k average pool.
    circle: (x-cx)² + (y-cy)² ≤ r²;  square: |x-cx| ≤ r and |y-cy| ≤ r;
    triangle (apex (cx, cy-r), base y = cy+r): y ≤ cy+r and |x-cx| ≤ (y - (cy-r)) / 2.
    """
    k = SUPERSAMPLE
    u = (torch.arange(k * size, dtype=torch.float32) + 0.5) / k
    dx = u.view(1, 1, -1) - cx.view(-1, 1, 1)  # (B, 1, kS)
    dy = u.view(1, -1, 1) - cy.view(-1, 1, 1)  # (B, kS, 1)
    r = r.view(-1, 1, 1)
    circle = dx.square() + dy.square() <= r.square()
    square = (dx.abs() <= r) & (dy.abs() <= r)
    triangle = (dy <= r) & (dx.abs() <= (dy + r) / 2)
    kind = kind.view(-1, 1, 1)
    inside = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))
    return F.avg_pool2d(inside.float().unsqueeze(1), k).squeeze(1)


def paint(attrs: torch.Tensor, jitter: torch.Tensor, size: int) -> torch.Tensor:
    """attrs (B, 4) int64, jitter (B, 3) = (dx, dy, scale) -> images (B, 3, S, S) in [-1, 1]."""
    direction = torch.tensor(DIRECTION)[attrs[:, 3]]  # (B, 2)
    cx = size / 2 + (OFFSET * direction[:, 0] + jitter[:, 0]) * size
    cy = size / 2 + (OFFSET * direction[:, 1] + jitter[:, 1]) * size
    r = torch.tensor(HALF_SIDE)[attrs[:, 2]] * jitter[:, 2] * size
    cover = _coverage(attrs[:, 1], cx, cy, r, size)  # (B, S, S)
    # pixel = coverage · rgb in [0, 1], then x ↦ 2x - 1 (black background = -1)
    return (cover.unsqueeze(1) * RGB[attrs[:, 0]].view(-1, 3, 1, 1)) * 2 - 1


def _as_row(attrs: Mapping[str, int]) -> torch.Tensor:
    if set(attrs) != set(NAMES):
        raise ValueError(f"attributes must be exactly {NAMES}, got {sorted(attrs)}")
    for name, n in zip(NAMES, NUM_CLASSES, strict=True):
        if not 0 <= int(attrs[name]) < n:
            raise ValueError(f"{name}={attrs[name]}: expected 0..{n - 1} ({', '.join(ATTRIBUTES[name])})")
    return torch.tensor([[int(attrs[name]) for name in NAMES]])


def render(attrs: Mapping[str, int], size: int, dx: float = 0.0, dy: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """One image (3, S, S) in [-1, 1]; dx, dy shift the centre by a fraction of S, `scale` multiplies r."""
    return paint(_as_row(attrs), torch.tensor([[dx, dy, scale]]), size)[0]


# ---------------------------------------------------------------------------------------------- captions


def attrs_of(row: torch.Tensor | Sequence[int]) -> dict[str, int]:
    """A labels row (4,) -> {"colour": i, "shape": j, "size": k, "position": l}."""
    return {name: int(v) for name, v in zip(NAMES, row, strict=True)}


def _words(attrs: Mapping[str, int]) -> dict[str, str]:
    return {name: ATTRIBUTES[name][int(attrs[name])] for name in NAMES}


def caption(attrs: Mapping[str, int]) -> str:
    """E.g. "a small red circle on the left"."""
    w = _words(attrs)
    return f"a {w['size']} {w['colour']} {w['shape']} {PLACE[w['position']]}"


def caption_variants(attrs: Mapping[str, int]) -> list[str]:
    """Three phrasings of the same content, the canonical `caption` first; each names every attribute."""
    w = _words(attrs)
    return [
        caption(attrs),
        f"{w['size']} {w['colour']} {w['shape']}, {w['position']}",
        f"a {w['colour']} {w['shape']}, {w['size']}, {PLACE[w['position']]} of the image",
    ]


def captions(labels: torch.Tensor) -> list[str]:
    """Canonical caption of every row of labels (N, 4)."""
    return [caption(attrs_of(row)) for row in labels.tolist()]


# ---------------------------------------------------------------------------------------------- dataset


def draw(seed: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `index`'s attributes (4,) int64 and jitter (3,) = (dx, dy, scale), from its own stream.

    Stream genlab.randomness.generator(seed, "shapes", index): attributes uniform over each value set,
    dx, dy ~ U[-1/16, 1/16] (fractions of S), scale ~ U[0.92, 1.08].
    """
    g = generator(seed, "shapes", index)
    attrs = torch.stack([torch.randint(n, (), generator=g) for n in NUM_CLASSES])
    u = torch.rand(3, generator=g) * 2 - 1  # U[-1, 1]
    jitter = torch.stack([u[0] * POSITION_JITTER, u[1] * POSITION_JITTER, 1 + u[2] * SIZE_JITTER])
    return attrs, jitter


def load(n: int, image_size: int, seed: int, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, S, S) float32 in [-1, 1] and labels (N, 4) int64 (columns as in the module docstring).

    Sample i depends on (seed, i) only, so it is the same whether drawn among 10 or 10,000.
    """
    params = [draw(seed, i) for i in range(n)]
    attrs = torch.stack([a for a, _ in params]) if n else torch.zeros(0, len(NAMES), dtype=torch.long)
    jitter = torch.stack([j for _, j in params]) if n else torch.zeros(0, 3)
    images = [paint(a, j, image_size) for a, j in zip(attrs.split(chunk), jitter.split(chunk), strict=True)]
    out = torch.cat(images) if images else torch.zeros(0, 3, image_size, image_size)
    return out.contiguous(), attrs


def class_index(labels: torch.Tensor) -> torch.Tensor:
    """Labels (N, 4) -> one class (N,) in 0..143: ((colour · 3 + shape) · 2 + size) · 4 + position."""
    index = torch.zeros(labels.shape[0], dtype=torch.long)
    for j, n in enumerate(NUM_CLASSES):
        index = index * n + labels[:, j]
    return index


def split_holdout_combinations(labels: torch.Tensor, holdout: Sequence[Mapping[str, str | int]]) -> torch.Tensor:
    """Training mask (N,) bool: False for every sample matching any holdout combination, True otherwise.

    A combination names some attributes by value name or index, e.g. {"colour": "red", "shape": "triangle"}
    holds out every red triangle (any size, any position); `~mask` selects the held-out samples, so a
    text-conditioned model can be tested on combinations it never saw.
    """
    held = torch.zeros(labels.shape[0], dtype=torch.bool)
    for combo in holdout:
        if not combo:
            raise ValueError("an empty holdout combination would hold out everything")
        match = torch.ones_like(held)
        for name, value in combo.items():
            if name not in ATTRIBUTES:
                raise ValueError(f"unknown attribute {name!r}: expected one of {NAMES}")
            values = ATTRIBUTES[name]
            if isinstance(value, str):
                if value not in values:
                    raise ValueError(f"{name}={value!r}: expected one of {values}")
                value = values.index(value)
            elif not 0 <= value < len(values):
                raise ValueError(f"{name}={value}: expected 0..{len(values) - 1}")
            match &= labels[:, NAMES.index(name)] == value
        held |= match
    return ~held
