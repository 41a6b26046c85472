"""Data sources behind `data.source`: each gives images, one class label per image, and the
attributes an evaluator predicts (digits: the digit; shapes: colour, shape, size, position), plus
the prompts used for text conditioning (training phrasings and held-out phrasings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genlab.data import digits, prompts, shapes


@dataclass(frozen=True)
class Source:
    images: torch.Tensor  # (N, C, S, S) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64: the class a conditional model is given
    attributes: torch.Tensor  # (N, A) int64: what the evaluator predicts, one head per column
    attribute_names: tuple[str, ...]
    attribute_classes: tuple[int, ...]
    num_classes: int  # distinct labels: 10 digits, 144 shape combinations


def load(source: str, image_size: int, count: int, seed: int) -> Source:
    if source == "digits":
        images, labels = digits.load(image_size)
        return Source(images, labels, labels[:, None].clone(), ("digit",), (10,), 10)
    if source == "shapes":
        images, attrs = shapes.load(count, image_size, seed)
        return Source(images, shapes.class_index(attrs), attrs, shapes.NAMES, shapes.NUM_CLASSES,
                      int(torch.tensor(shapes.NUM_CLASSES).prod()))
    raise ValueError(f"unknown data source {source!r}: expected 'digits' or 'shapes'")


def attributes_of(source: str, label: int) -> list[int]:
    """The attribute row of class `label` (inverse of the class index)."""
    if source == "digits":
        return [label]
    out = []
    for k in reversed(shapes.NUM_CLASSES):  # mixed radix, last attribute varies fastest
        label, r = divmod(label, k)
        out.append(r)
    return out[::-1]


def train_prompts(source: str, label: int) -> list[str]:
    """Every training phrasing of class `label`."""
    if source == "digits":
        return prompts.all_train_prompts(label)
    return shapes.caption_variants(shapes.attrs_of(attributes_of(source, label)))[:2]


def heldout_prompts(source: str, label: int) -> list[str]:
    """Phrasings never seen in training, for sampling: unseen wording must still work."""
    if source == "digits":
        return prompts.heldout_prompts(label)
    return shapes.caption_variants(shapes.attrs_of(attributes_of(source, label)))[2:]


def label_attributes(source: str, labels: torch.Tensor) -> torch.Tensor:
    """(N,) class labels -> (N, A) attribute rows."""
    return torch.tensor([attributes_of(source, int(y)) for y in labels], dtype=torch.long).view(len(labels), -1)
