"""Data sources behind `data.source`: each gives uint8 images in chunks, one class label per image (or none:
unlabelled), the attributes an evaluator predicts (digits: the digit; shapes: colour, shape, size, position;
the user's data: its class), and the prompts used for text conditioning (training and held-out phrasings).

`digits` and `shapes` are built in; `image_folder`, `mnist`, `cifar10` and `npz` read the user's files
(`genlab.data.formats`), decoded and resized one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from genlab.data import digits, formats, prompts, shapes
from genlab.data.store import to_uint8

# text prompts for a class of the user's data, by its name: training phrasings and held-out ones
TRAIN_TEMPLATES = ("{name}", "a {name}", "an image of a {name}", "a picture of a {name}", "class {name}")
HELD_OUT_TEMPLATES = ("a photo showing a {name}", "{name}, in a small image")


@dataclass
class Source:
    count: int  # items found: images, or files some of which may turn out unreadable
    labels: np.ndarray  # (count,) int64: the class a conditional model is given (all 0 when unlabelled)
    attributes: np.ndarray  # (count, A) int64: what the evaluator predicts, one head per column
    attribute_names: tuple[str, ...]
    attribute_classes: tuple[int, ...]
    num_classes: int  # distinct labels (10 digits, 144 shape combinations); 0: unlabelled
    class_names: list[str]
    channels: int
    chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # -> (indices, (n, C, S, S) uint8) of good items
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason), filled while decoding


def in_chunks(images: np.ndarray, size: int = 2048) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(images), size):
            yield np.arange(start, min(start + size, len(images))), images[start:start + size]
    return chunks


def load(source: str, image_size: int, count: int, seed: int, path: str | None = None, channels: int | None = None,
         on_bad_file: str = "skip") -> Source:
    """Open `source`; its images are decoded when `chunks()` is iterated."""
    if source == "digits":
        values, labels = digits.load()  # 0..16 grey levels -> uint8, then the one resize path of every source
        u8 = np.rint(values * (255 / 16)).astype(np.uint8)
        c = channels or 1
        images = np.stack([formats.fit(Image.fromarray(x, mode="L"), c, image_size) for x in u8])
        y = labels.astype(np.int64)
        return Source(len(y), y, y[:, None].copy(), ("digit",), (10,), 10, [str(i) for i in range(10)], c,
                      in_chunks(images))
    if source == "shapes":
        images, attrs = shapes.load(count, image_size, seed)  # rendered at image_size, antialiased
        u8 = to_uint8(images).numpy()
        if channels == 1:
            u8 = np.stack([formats.fit(Image.fromarray(x.transpose(1, 2, 0), mode="RGB"), 1, image_size) for x in u8])
        k = int(torch.tensor(shapes.NUM_CLASSES).prod())
        y = shapes.class_index(attrs).numpy()
        return Source(len(y), y, attrs.numpy(), shapes.NAMES, shapes.NUM_CLASSES, k,
                      [shapes.caption(shapes.attrs_of(attributes_of("shapes", c))) for c in range(k)],
                      channels or 3, in_chunks(u8))
    scan = formats.scan(source, path or "")
    c = channels or scan.native_channels
    if scan.labels is None:
        y, names = np.zeros(scan.count, dtype=np.int64), []
    else:
        y, names = scan.labels.astype(np.int64), list(scan.class_names or [])
    # labelled: the evaluator predicts the class; unlabelled: no attributes (its evaluator is self-supervised)
    attrs, attr_names, attr_classes = (y[:, None].copy(), ("class",), (len(names),)) if names else \
        (np.zeros((scan.count, 0), dtype=np.int64), (), ())
    return Source(scan.count, y, attrs, attr_names, attr_classes, len(names), names, c,
                  lambda: scan.decode(c, image_size, on_bad_file), scan.skipped)


def class_names(manifest: dict) -> list[str]:
    """The class names a prepared data set's manifest records (none before they were recorded: built-ins)."""
    return list(manifest.get("class_names") or [])


def attributes_of(source: str, label: int) -> list[int]:
    """The attribute row of class `label` (inverse of the class index)."""
    if source != "shapes":
        return [label]
    out = []
    for k in reversed(shapes.NUM_CLASSES):  # mixed radix, last attribute varies fastest
        label, r = divmod(label, k)
        out.append(r)
    return out[::-1]


def train_prompts(source: str, label: int, class_names: list[str]) -> list[str]:
    """Every training phrasing of class `label`."""
    if source == "digits":
        return prompts.all_train_prompts(label)
    if source == "shapes":
        return shapes.caption_variants(shapes.attrs_of(attributes_of(source, label)))[:2]
    return [t.format(name=class_names[label]) for t in TRAIN_TEMPLATES]


def heldout_prompts(source: str, label: int, class_names: list[str]) -> list[str]:
    """Phrasings never seen in training, for sampling: unseen wording must still work."""
    if source == "digits":
        return prompts.heldout_prompts(label)
    if source == "shapes":
        return shapes.caption_variants(shapes.attrs_of(attributes_of(source, label)))[2:]
    return [t.format(name=class_names[label]) for t in HELD_OUT_TEMPLATES]


def label_attributes(source: str, labels: torch.Tensor) -> torch.Tensor:
    """(N,) class labels -> (N, A) attribute rows."""
    rows = [attributes_of(source, int(y)) for y in labels]
    return torch.tensor(rows, dtype=torch.long).view(len(labels), -1)
