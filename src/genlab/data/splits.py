"""Prepared splits on disk: one safetensors file per split (uint8 images, memory-mapped when read) and a
manifest with a content hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.checkpoint import read_safetensors
from genlab.data import store
from genlab.data.store import Images
from genlab.errors import GenlabError
from genlab.paths import atomic_write, read_json

SPLITS = ("train", "val", "test")
ROTATIONS = ("0", "90", "180", "270")  # the self-supervised evaluator's classes on unlabelled data
MANIFEST_KEYS = ("source", "num_classes", "attributes", "content_hash", "image_shape", "counts")
CHUNK = 2048  # images per read or write when streaming a split


@dataclass(frozen=True)
class Split:
    images: Images  # (N, C, S, S) uint8 on disk; indexing gives float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64: the class a conditional model is given (all 0 when unlabelled)
    attributes: torch.Tensor  # (N, A) int64: what the evaluator predicts (digits: the label itself)

    def __len__(self) -> int:
        return self.labels.shape[0]


def _hash_tensor(h: hashlib._Hash, name: str, shape: tuple[int, ...], dtype: str, chunks: Iterator[bytes]) -> None:
    h.update(f"{name}:{shape}:{dtype}".encode())
    for chunk in chunks:
        h.update(chunk)


def content_hash(splits: dict[str, Split]) -> str:
    """sha256 over every split's tensors (name, shape, dtype, bytes): the data version. Images are read
    `CHUNK` at a time."""
    h = hashlib.sha256()
    for name in SPLITS:
        s = splits[name]
        _hash_tensor(h, name, s.images.shape, "torch.uint8", (c.numpy().tobytes() for c in s.images.chunks(CHUNK)))
        for t in (s.labels, s.attributes):
            _hash_tensor(h, name, tuple(t.shape), str(t.dtype), iter([t.contiguous().numpy().tobytes()]))
    return h.hexdigest()


def write(out: Path, parts: dict[str, np.ndarray], images: Images, labels: np.ndarray, attributes: np.ndarray,
          extra: dict) -> dict:
    """Write each split of `parts` (sorted row indices into `images`, `labels`, `attributes`) as a safetensors
    file, streaming its images `CHUNK` rows at a time, then the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    for name, idx in parts.items():
        rows = (images.uint8(idx[i:i + CHUNK]).numpy() for i in range(0, len(idx), CHUNK))
        store.write(out / f"{name}.safetensors", [
            store.Entry("labels", "I64", (len(idx),), [labels[idx]]),
            store.Entry("attributes", "I64", (len(idx), attributes.shape[1]), [attributes[idx]]),
            store.Entry("images", "U8", (len(idx), *images.shape[1:]), rows)])
    written = {name: read(out, name, {**extra, "counts": {n: len(i) for n, i in parts.items()},
                                      "image_shape": list(images.shape[1:])}) for name in SPLITS}
    manifest = {
        **extra,
        "content_hash": content_hash(written),
        "image_shape": list(images.shape[1:]),
        "counts": {name: len(s) for name, s in written.items()},
        "class_counts": {name: torch.bincount(s.labels, minlength=max(1, extra["num_classes"])).tolist()
                         for name, s in written.items()},
    }
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def evaluator_task(manifest: dict) -> tuple[list[str], list[int]]:
    """The evaluator's heads (names, classes of each): the data's attributes when labelled; on unlabelled data one
    self-supervised head that predicts which of 4 rotations was applied (Gidaris et al. 2018)."""
    attrs = manifest["attributes"]
    if attrs["names"]:
        return list(attrs["names"]), list(attrs["num_classes"])
    return ["rotation"], [len(ROTATIONS)]


def read_manifest(root: Path) -> dict:
    """The manifest `write` wrote; one that is missing, not JSON, or lacks a key or has one of the wrong form is
    refused with one line naming the file and the key."""
    path = root / "manifest.json"
    manifest = read_json(path, tuple(MANIFEST_KEYS), "prepare")

    def ints(value: object, n: int | None = None, minimum: int = 1) -> bool:
        items = value if isinstance(value, list) else []
        return (n is None or len(items) == n) and bool(items) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in items)

    attrs, shape, counts = manifest["attributes"], manifest["image_shape"], manifest["counts"]
    checks = {
        "num_classes": ("a positive integer (0: unlabelled)", ints([manifest["num_classes"]], minimum=0)),
        "image_shape": ("[channels, size, size] of positive integers", ints(shape, 3) and shape[1] == shape[2]),
        "counts": (f"a count for each of {', '.join(SPLITS)}",
                   isinstance(counts, dict) and ints([counts.get(n) for n in SPLITS], minimum=0)),
        "attributes": ("{names: [...], num_classes: [...]} of one length (empty: unlabelled)", isinstance(attrs, dict)
                       and isinstance(attrs.get("names"), list) and isinstance(attrs.get("num_classes"), list)
                       and (ints(attrs["num_classes"]) or not attrs["num_classes"])
                       and len(attrs["names"]) == len(attrs["num_classes"])),
        "content_hash": ("a sha256 hex digest", isinstance(manifest["content_hash"], str)
                         and len(manifest["content_hash"]) == 64),
    }
    for key, (expected, ok) in checks.items():
        if not ok:
            raise GenlabError(f"{path}: {key}: expected {expected}, got {manifest[key]!r:.80}; rerun `genlab prepare`")
    return manifest


def read(root: Path, name: str, manifest: dict | None = None) -> Split:
    """One split, checked against the manifest: images (N, C, S, S) uint8 (memory-mapped, not loaded); labels (N,)
    int64 in [0, num_classes); attributes (N, A) int64, each column within its number of classes; N = counts[name].
    Anything else is refused with one line naming the file and the tensor."""
    if name not in SPLITS:
        raise GenlabError(f"split {name!r}: expected one of {SPLITS}")
    manifest = read_manifest(root) if manifest is None else manifest
    path = root / f"{name}.safetensors"
    t, _ = read_safetensors(path, "prepared split", "prepare", keys=("labels", "attributes"))
    n, attrs = manifest["counts"][name], manifest["attributes"]["num_classes"]
    table, _ = store.read_header(path)
    found = {k: (v.get("dtype"), tuple(v.get("shape", ()))) for k, v in table.items() if k != "__metadata__"}
    expected = {"images": ("U8", (n, *manifest["image_shape"]), f"counts.{name}, image_shape"),
                "labels": ("I64", (n,), f"counts.{name}"),
                "attributes": ("I64", (n, len(attrs)), f"counts.{name}, attributes")}
    for key, (dtype, shape, source) in expected.items():
        if key not in found:
            raise GenlabError(f"{path}: no tensor {key!r} (expected {', '.join(expected)}); rerun `genlab prepare`")
        if found[key] != (dtype, shape):
            raise GenlabError(f"{path}: {key}: expected {describe(dtype, shape)} (manifest.json: {source}), got "
                              f"{describe(*found[key])}; rerun `genlab prepare`")
    labels, attributes = t["labels"], t["attributes"]
    k = max(1, manifest["num_classes"])
    ranges = [("labels", labels, 0, k - 1, f"values in [0, {k}) (manifest.json: num_classes)"),
              *((f"attributes[:, {i}]", attributes[:, i], 0, c - 1,
                 f"values in [0, {c}) (manifest.json: attributes.num_classes)") for i, c in enumerate(attrs))]
    for key, x, lo, hi, what in ranges:
        got = outside(x, lo, hi)
        if got:
            raise GenlabError(f"{path}: {key}: expected {what}, got {got}; rerun `genlab prepare`")
    return Split(store.images_of(path), labels, attributes)


def describe(dtype: torch.dtype | str, shape: tuple[int, ...] | torch.Size) -> str:
    """e.g. `float32 (1257, 1, 16, 16)`; safetensors codes read as torch's names (U8: uint8)."""
    codes = {"U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "F16": "float16",
             "BF16": "bfloat16", "F32": "float32", "F64": "float64", "BOOL": "bool"}
    name = codes.get(str(dtype), str(dtype).removeprefix("torch."))
    return f"{name} {tuple(shape)}"


def outside(x: torch.Tensor, lo: float, hi: float) -> str:
    """"" when every value of x is finite and in [lo, hi]; else its range (and how many are NaN or Inf)."""
    bad = int((~x.isfinite()).sum()) if x.is_floating_point() else 0
    finite = x[x.isfinite()] if bad else x
    if not bad and (not x.numel() or (float(x.min()) >= lo and float(x.max()) <= hi)):
        return ""
    span = f"[{float(finite.min()):.4g}, {float(finite.max()):.4g}]" if finite.numel() else "no finite values"
    return span + (f" and {bad} NaN or Inf" if bad else "")


def read_all(root: Path) -> tuple[dict[str, Split], dict]:
    """Every split and the manifest, checked; the manifest's content_hash must match the tensors, so data changed
    behind DVC's back (or a manifest from other data) is refused instead of being trained or scored on."""
    manifest = read_manifest(root)
    data = {name: read(root, name, manifest) for name in SPLITS}
    found = content_hash(data)
    if found != manifest["content_hash"]:
        raise GenlabError(f"{root / 'manifest.json'}: content_hash {manifest['content_hash'][:12]} does not match "
                          f"the tensors' {found[:12]}: the prepared data changed outside `genlab prepare`; restore "
                          "it (`dvc checkout data/prepared`) or rerun `genlab prepare`")
    return data, manifest
