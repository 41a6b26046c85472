"""bench/vae_recon_errors.py's pixel kinds: a partition of every pixel into background, edge and interior, placed
where a drawn square puts them."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
from vae_recon_errors import pixel_kinds  # noqa: E402


def test_pixel_kinds_partition_a_drawn_square() -> None:
    x = -torch.ones(2, 3, 16, 16)
    x[0, 0, 4:10, 4:10] = 1.0  # a red 6x6 square: its 4x4 core is interior, its outer ring and the ring
    kinds = pixel_kinds(x)       # around it are edges; image 1 is all background
    total = sum(m.long() for m in kinds.values())
    assert torch.equal(total, torch.ones_like(total))  # every pixel of every channel in exactly one kind
    edge, interior, background = kinds["edge"][0, 0], kinds["interior"][0, 0], kinds["background"][0, 0]
    assert interior.sum() == 16 and interior[5:9, 5:9].all()
    assert edge.sum() == 8 * 8 - 16 and edge[3:11, 3:11].sum() == 8 * 8 - 16
    assert background.sum() == 16 * 16 - 8 * 8
    assert kinds["background"][1].all() and not kinds["edge"][1].any()
    # the mask is per pixel, not per channel: the square's green and blue (at -1) share the red channel's kinds
    assert torch.equal(kinds["interior"][0, 1], interior) and torch.equal(kinds["edge"][0, 2], edge)
