"""Synthetic data sets written in the formats users bring (`data.source`): an image folder, MNIST's IDX files,
CIFAR-10's binary batches, an npz. Class c is one shape in one colour (colour c mod 6, shape c div 6 mod 3, from
`genlab.data.shapes`), at a random size and position, so a model has something to learn. For tests, benchmarks and
trying the pipeline at a real data set's size without that data set: `genlab synth FORMAT DIR --count N`.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genlab.data import shapes
from genlab.data.formats import CIFAR10_CLASSES
from genlab.data.store import to_uint8
from genlab.errors import GenlabError

FORMATS = ("image_folder", "image_folder_flat", "mnist", "cifar10", "npz")


def draw(n: int, size: int, seed: int, classes: int = 10, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """n RGB images (n, size, size, 3) uint8 and their labels (n,) int64 in [0, classes), balanced."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % classes
    rng.shuffle(labels)
    attrs = np.stack([labels % 6, labels // 6 % 3, rng.integers(0, 2, n), rng.integers(0, 4, n)], axis=1)
    jitter = np.stack([rng.uniform(-1, 1, n) / 16, rng.uniform(-1, 1, n) / 16, 1 + rng.uniform(-1, 1, n) * 0.08], 1)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(0, n, chunk):
        a = torch.from_numpy(attrs[i:i + chunk]).long()
        j = torch.from_numpy(jitter[i:i + chunk]).float()
        out[i:i + chunk] = to_uint8(shapes.paint(a, j, size)).permute(0, 2, 3, 1).numpy()
    return out, labels


def write_image_folder(root: Path, n: int, size: int | tuple[int, int], seed: int, classes: int = 3,
                       flat: bool = False, modes: tuple[str, ...] = ("RGB",), suffix: str = ".png") -> list[Path]:
    """PNG (or `suffix`) files, one sub-folder per class named class_<c> (flat: all in `root`, unlabelled).
    `size` (w, h) may be non-square; image i is saved in modes[i % len(modes)]. Returns the files in order."""
    w, h = (size, size) if isinstance(size, int) else size
    images, labels = draw(n, max(w, h), seed, classes)
    files = []
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        folder = root if flat else root / f"class_{y}"
        folder.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray(img, "RGB").crop((0, 0, w, h)) if (w, h) != (max(w, h),) * 2 else \
            Image.fromarray(img, "RGB")
        path = folder / f"{i:06d}{suffix}"
        pil.convert(modes[i % len(modes)]).save(path)
        files.append(path)
    return files


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dimensions, then the bytes."""
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(root: Path, n_train: int, n_test: int, seed: int, gz: bool = False) -> None:
    """train-/t10k- images (N, 28, 28) and labels (N,) IDX files, grey, 10 classes (gzipped with gz)."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        if n == 0:
            continue
        rgb, labels = draw(n, 28, s)
        grey = np.asarray(Image.fromarray(rgb.reshape(-1, 28, 3), "RGB").convert("L")).reshape(n, 28, 28)
        for kind, array in (("images-idx3", grey), ("labels-idx1", labels.astype(np.uint8))):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            (root / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data, mtime=0) if gz else data)


def write_cifar10(root: Path, n_train: int, n_test: int, seed: int, batches: int = 5) -> None:
    """data_batch_1..`batches`.bin and test_batch.bin: records of 1 label byte + 3072 bytes (R, G, B planes)."""
    root.mkdir(parents=True, exist_ok=True)
    rgb, labels = draw(n_train + n_test, 32, seed)
    records = np.concatenate([labels[:, None].astype(np.uint8), rgb.transpose(0, 3, 1, 2).reshape(-1, 3072)], 1)
    for b, part in enumerate(np.array_split(records[:n_train], batches), start=1):
        (root / f"data_batch_{b}.bin").write_bytes(part.tobytes())
    if n_test:
        (root / "test_batch.bin").write_bytes(records[n_train:].tobytes())
    (root / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n")


def write_npz(path: Path, n: int, size: int, seed: int, classes: int = 4, grey: bool = False,
              labelled: bool = True) -> None:
    """`images` (N, S, S, 3) or (N, S, S) uint8, `labels` and `class_names` when labelled."""
    rgb, labels = draw(n, size, seed, classes)
    images = np.asarray(Image.fromarray(rgb.reshape(-1, size, 3), "RGB").convert("L")).reshape(n, size, size) \
        if grey else rgb
    arrays = {"images": images}
    if labelled:
        arrays.update(labels=labels, class_names=np.array([f"kind {c}" for c in range(classes)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def write(fmt: str, out: Path, count: int, size: int, seed: int, classes: int = 10) -> None:
    """One data set of `count` images in format `fmt` (see FORMATS) under `out`."""
    if fmt == "mnist":
        write_mnist(out, count - count // 7, count // 7, seed)
    elif fmt == "cifar10":
        write_cifar10(out, count - count // 6, count // 6, seed)
    elif fmt == "npz":
        write_npz(out / "data.npz", count, size, seed, classes)
    elif fmt in ("image_folder", "image_folder_flat"):
        write_image_folder(out, count, size, seed, classes, flat=fmt == "image_folder_flat")
    else:
        raise GenlabError(f"synthetic format {fmt!r}: expected one of {', '.join(FORMATS)}")
