"""genlab.data.shapes: seeded procedural shapes with attributes, captions and held-out combinations."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.data import shapes
from genlab.data.shapes import ATTRIBUTES, NAMES, caption, caption_variants, load, render


def _attrs(colour: str = "red", shape: str = "square", size: str = "large", position: str = "left") -> dict[str, int]:
    return {"colour": ATTRIBUTES["colour"].index(colour), "shape": ATTRIBUTES["shape"].index(shape),
            "size": ATTRIBUTES["size"].index(size), "position": ATTRIBUTES["position"].index(position)}


def _coverage(img: torch.Tensor) -> torch.Tensor:
    """(3, S, S) in [-1, 1] -> (S, S) in [0, 1]: the brightest channel is the shape's coverage."""
    return (img.amax(0) + 1) / 2


def _centroid(img: torch.Tensor) -> tuple[float, float]:
    w = _coverage(img)
    idx = torch.arange(w.shape[0], dtype=torch.float32) + 0.5
    return (w.sum(0) @ idx / w.sum()).item(), (w.sum(1) @ idx / w.sum()).item()  # (x, y)


# ---------------------------------------------------------------------------------------------- dataset


def test_attribute_layout() -> None:
    assert NAMES == ("colour", "shape", "size", "position")
    assert shapes.NUM_CLASSES == (6, 3, 2, 4)
    assert all(len(v) <= 6 for v in ATTRIBUTES.values())


def test_load_shape_range_and_dtype() -> None:
    images, labels = load(50, 16, seed=0)
    assert images.shape == (50, 3, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (50, 4) and labels.dtype == torch.int64
    assert images.min().item() == -1.0 and images.max().item() <= 1.0
    for j, n in enumerate(shapes.NUM_CLASSES):
        assert labels[:, j].min() >= 0 and labels[:, j].max() < n


def test_load_is_deterministic_and_per_sample() -> None:
    a_img, a_lab = load(100, 16, seed=3)
    b_img, b_lab = load(100, 16, seed=3)
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    c_img, c_lab = load(10, 16, seed=3)
    assert torch.equal(a_img[:10], c_img) and torch.equal(a_lab[:10], c_lab)  # sample i alone
    d_img, _ = load(100, 16, seed=3, chunk=7)  # rendering in other batch sizes changes nothing
    assert torch.equal(a_img, d_img)
    e_img, e_lab = load(100, 16, seed=4)
    assert not torch.equal(a_img, e_img) and not torch.equal(a_lab, e_lab)


def test_every_attribute_value_appears() -> None:
    _, labels = load(400, 8, seed=0)
    for j, n in enumerate(shapes.NUM_CLASSES):
        counts = torch.bincount(labels[:, j], minlength=n)
        assert (counts > 400 / n / 2).all(), (NAMES[j], counts.tolist())


def test_jitter_varies_identical_attributes() -> None:
    images, labels = load(400, 16, seed=0)
    key = shapes.class_index(labels)
    same = (key == key[0]).nonzero().flatten()
    assert len(same) >= 2 and not torch.equal(images[same[0]], images[same[1]])


# ---------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("colour", ATTRIBUTES["colour"])
def test_colour_of_the_foreground(colour: str) -> None:
    img = render(_attrs(colour=colour), 32)
    fg = _coverage(img) > 0.5
    assert fg.sum() > 20
    mean = (img[:, fg].mean(1) + 1) / 2  # mean RGB in [0, 1]
    on = shapes.RGB[ATTRIBUTES["colour"].index(colour)].bool()
    assert (mean[on] > 0.9).all() and (mean[~on] < 0.1).all(), (colour, mean.tolist())
    background = _coverage(img) == 0
    assert (img[:, background] == -1).all()


def test_shape_kinds_fill_their_bounding_square_as_expected() -> None:
    # circle / square = π/4, triangle / square = 1/2, at the same size and place
    area = {k: _coverage(render(_attrs(shape=k), 64)).sum().item() for k in ATTRIBUTES["shape"]}
    r = shapes.HALF_SIDE[1] * 64
    assert area["square"] == pytest.approx((2 * r) ** 2, rel=0.03)
    assert area["circle"] / area["square"] == pytest.approx(math.pi / 4, rel=0.03)
    assert area["triangle"] / area["square"] == pytest.approx(0.5, rel=0.03)


def test_anti_aliasing_leaves_partial_edge_pixels() -> None:
    cover = _coverage(render(_attrs(shape="circle"), 32))
    partial = (cover > 0) & (cover < 1)
    assert partial.sum() > 10


def test_position_moves_the_centroid() -> None:
    c = {p: _centroid(render(_attrs(position=p), 32)) for p in ATTRIBUTES["position"]}
    assert c["left"][0] < 16 - 4 < 16 + 4 < c["right"][0]
    assert c["top"][1] < 16 - 4 < 16 + 4 < c["bottom"][1]
    assert c["left"][1] == pytest.approx(16, abs=0.5) and c["top"][0] == pytest.approx(16, abs=0.5)


def test_jitter_arguments_shift_and_scale() -> None:
    x0, y0 = _centroid(render(_attrs(), 32))
    x1, y1 = _centroid(render(_attrs(), 32, dx=2 / 32, dy=-1 / 32))
    assert x1 - x0 == pytest.approx(2, abs=0.1) and y1 - y0 == pytest.approx(-1, abs=0.1)
    a0, a1 = _coverage(render(_attrs(), 32)).sum(), _coverage(render(_attrs(), 32, scale=1.1)).sum()
    assert (a1 / a0).item() == pytest.approx(1.21, rel=0.05)


@pytest.mark.parametrize("shape", ATTRIBUTES["shape"])
def test_small_and_large_area_ratio(shape: str) -> None:
    small = _coverage(render(_attrs(shape=shape, size="small"), 64)).sum()
    large = _coverage(render(_attrs(shape=shape, size="large"), 64)).sum()
    expected = (shapes.HALF_SIDE[1] / shapes.HALF_SIDE[0]) ** 2  # area ∝ r²
    assert (large / small).item() == pytest.approx(expected, rel=0.05)
    assert (large / small).item() > 2


def test_shapes_are_never_clipped_by_the_border() -> None:
    # each sample's painted area is its full area (circle π r², square 4 r², triangle 2 r²): nothing is cut off
    images, labels = load(100, 64, seed=1)
    scale = torch.stack([shapes.draw(1, i)[1][2] for i in range(100)])
    r = torch.tensor(shapes.HALF_SIDE)[labels[:, 2]] * scale * 64
    full = torch.tensor([math.pi, 4.0, 2.0])[labels[:, 1]] * r.square()
    painted = ((images.amax(1) + 1) / 2).sum((1, 2))
    assert torch.allclose(painted, full, rtol=0.04)


def test_render_rejects_bad_attributes() -> None:
    with pytest.raises(ValueError):
        render({"colour": 0, "shape": 0, "size": 0}, 16)
    with pytest.raises(ValueError):
        render(_attrs() | {"colour": 6}, 16)


# ---------------------------------------------------------------------------------------------- captions


def test_caption_names_every_attribute() -> None:
    attrs = _attrs("magenta", "triangle", "small", "bottom")
    assert caption(attrs) == "a small magenta triangle at the bottom"
    assert caption(_attrs()) == "a large red square on the left"
    variants = caption_variants(attrs)
    assert 2 <= len(variants) <= 3 and variants[0] == caption(attrs) and len(set(variants)) == len(variants)
    for text in variants:
        for word in ("magenta", "triangle", "small", "bottom"):
            assert word in text


def test_captions_of_loaded_labels() -> None:
    _, labels = load(20, 8, seed=0)
    texts = shapes.captions(labels)
    for text, row in zip(texts, labels.tolist(), strict=True):
        for name, value in zip(NAMES, row, strict=True):
            assert ATTRIBUTES[name][value] in text


def test_class_index_is_a_bijection() -> None:
    grids = torch.cartesian_prod(*[torch.arange(n) for n in shapes.NUM_CLASSES])
    index = shapes.class_index(grids)
    assert torch.equal(index, torch.arange(144))


# ---------------------------------------------------------------------------------------------- holdout


def test_holdout_mask_excludes_exactly_the_given_combinations() -> None:
    _, labels = load(600, 8, seed=0)
    holdout = [{"colour": "red", "shape": "triangle"}, {"colour": 5, "size": "large", "position": "top"}]
    mask = shapes.split_holdout_combinations(labels, holdout)
    assert mask.shape == (600,) and mask.dtype == torch.bool
    red_triangle = (labels[:, 0] == 0) & (labels[:, 1] == 2)
    large_cyan_top = (labels[:, 0] == 5) & (labels[:, 2] == 1) & (labels[:, 3] == 2)
    assert red_triangle.any() and large_cyan_top.any()
    assert torch.equal(mask, ~(red_triangle | large_cyan_top))
    # the held-out attributes still appear in training, only not together
    train = labels[mask]
    assert (train[:, 0] == 0).any() and (train[:, 1] == 2).any()


def test_holdout_validates_its_combinations() -> None:
    labels = torch.zeros(3, 4, dtype=torch.long)
    assert shapes.split_holdout_combinations(labels, []).all()
    for bad in ({"colour": "purple"}, {"texture": "smooth"}, {"size": 2}, {}):
        with pytest.raises(ValueError):
            shapes.split_holdout_combinations(labels, [bad])
