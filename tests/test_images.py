"""The class-row grid: which images a sample picture shows, for blocked, interleaved and many-class labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genlab.data.store import to_uint8
from genlab.images import class_rows, save_class_grid


def test_blocked_labels_give_each_class_first_images_in_order() -> None:
    # the layout the sample and guidance_sweep stages always used: class c's images at c*n .. c*n+per-1
    n, per = 36, 10
    labels = torch.arange(10).repeat_interleave(n)
    expected = torch.cat([torch.arange(c * n, c * n + per) for c in range(10)])
    assert torch.equal(class_rows(labels, per), expected)


def test_interleaved_labels_still_give_one_class_a_row() -> None:
    labels = torch.arange(10).repeat(36)
    idx = class_rows(labels, 8)
    assert labels[idx].view(10, 8).eq(torch.arange(10)[:, None]).all()
    assert idx[:2].tolist() == [0, 10]  # a class's first samples, in order


def test_many_classes_are_spread_over_all() -> None:
    labels = torch.arange(144).repeat_interleave(3)  # shapes: 144 classes, 3 samples each
    rows = labels[class_rows(labels, 3, max_classes=12)].view(12, 3)
    assert (rows == rows[:, :1]).all()
    assert rows[0, 0] == 0 and rows[-1, 0] == 143 and len(rows[:, 0].unique()) == 12


def test_grid_picture_has_a_row_per_class_and_unlabelled_sets_show_the_first_64(tmp_path: Path) -> None:
    # image i is one grey level, its own: the picture's pixels say which images it shows, and where
    labels = torch.arange(3).repeat_interleave(5)
    images = (torch.arange(15, dtype=torch.float32) / 50 - 1).view(15, 1, 1, 1).expand(15, 1, 4, 4)
    save_class_grid(images, labels, tmp_path / "g.png", per_class=2, max_classes=2)
    grid = np.asarray(Image.open(tmp_path / "g.png"))[::4, ::4]  # undo the 4x upscale
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1)
    shown = grid[1::5, 1::5]
    level = to_uint8(images[:, 0, 0, 0]).numpy()  # each image's grey level, all distinct
    assert len(set(level)) == 15
    assert np.array_equal(shown, level[[[0, 1], [10, 11]]])  # classes 0 and 2, their first two images
    save_class_grid(images.repeat(5, 1, 1, 1), torch.zeros(75, dtype=torch.long), tmp_path / "u.png", per_class=2)
    assert np.asarray(Image.open(tmp_path / "u.png")).shape == (4 * (8 * 5 + 1), 4 * (8 * 5 + 1))
