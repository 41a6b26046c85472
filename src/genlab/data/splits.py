"""Prepared splits on disk: one safetensors file per split and a manifest with a content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

from genlab.checkpoint import read_safetensors
from genlab.errors import GenlabError
from genlab.paths import atomic_write, read_json

SPLITS = ("train", "val", "test")
MANIFEST_KEYS = ("source", "num_classes", "attributes", "content_hash", "image_shape", "counts")


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, C, S, S) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64: the class a conditional model is given
    attributes: torch.Tensor  # (N, A) int64: what the evaluator predicts (digits: the label itself)

    def __len__(self) -> int:
        return self.labels.shape[0]


def content_hash(splits: dict[str, Split]) -> str:
    """sha256 over every split's tensors (name, shape, dtype, bytes): the data version."""
    h = hashlib.sha256()
    for name in SPLITS:
        for t in (splits[name].images, splits[name].labels, splits[name].attributes):
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def write(splits: dict[str, Split], out: Path, extra: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for name, s in splits.items():
        tensors = {"images": s.images.contiguous(), "labels": s.labels.contiguous(),
                   "attributes": s.attributes.contiguous()}
        atomic_write(out / f"{name}.safetensors", save(tensors))
    manifest = {
        **extra,
        "content_hash": content_hash(splits),
        "image_shape": list(splits["train"].images.shape[1:]),
        "counts": {name: len(s) for name, s in splits.items()},
        "class_counts": {name: torch.bincount(s.labels, minlength=extra["num_classes"]).tolist()
                         for name, s in splits.items()},
    }
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


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
        "num_classes": ("a positive integer", ints([manifest["num_classes"]])),
        "image_shape": ("[channels, size, size] of positive integers", ints(shape, 3) and shape[1] == shape[2]),
        "counts": (f"a count for each of {', '.join(SPLITS)}",
                   isinstance(counts, dict) and ints([counts.get(n) for n in SPLITS], minimum=0)),
        "attributes": ("{names: [...], num_classes: [...]} of one length", isinstance(attrs, dict)
                       and isinstance(attrs.get("names"), list) and ints(attrs.get("num_classes"))
                       and len(attrs["names"]) == len(attrs["num_classes"])),
        "content_hash": ("a sha256 hex digest", isinstance(manifest["content_hash"], str)
                         and len(manifest["content_hash"]) == 64),
    }
    for key, (expected, ok) in checks.items():
        if not ok:
            raise GenlabError(f"{path}: {key}: expected {expected}, got {manifest[key]!r:.80}; rerun `genlab prepare`")
    return manifest


def read(root: Path, name: str, manifest: dict | None = None) -> Split:
    """One split, checked against the manifest: images (N, C, S, S) float32, finite, in [-1, 1]; labels (N,) int64
    in [0, num_classes); attributes (N, A) int64, each column within its number of classes; N = counts[name].
    Anything else is refused with one line naming the file and the tensor."""
    if name not in SPLITS:
        raise GenlabError(f"split {name!r}: expected one of {SPLITS}")
    manifest = read_manifest(root) if manifest is None else manifest
    path = root / f"{name}.safetensors"
    t, _ = read_safetensors(path, "prepared split", "prepare")
    n, attrs = manifest["counts"][name], manifest["attributes"]["num_classes"]
    expected = {"images": (torch.float32, (n, *manifest["image_shape"]), f"counts.{name}, image_shape"),
                "labels": (torch.int64, (n,), f"counts.{name}"),
                "attributes": (torch.int64, (n, len(attrs)), f"counts.{name}, attributes")}
    for key, (dtype, shape, source) in expected.items():
        if key not in t:
            raise GenlabError(f"{path}: no tensor {key!r} (expected {', '.join(expected)}); rerun `genlab prepare`")
        if t[key].dtype != dtype or tuple(t[key].shape) != shape:
            raise GenlabError(f"{path}: {key}: expected {describe(dtype, shape)} (manifest.json: {source}), got "
                              f"{describe(t[key].dtype, t[key].shape)}; rerun `genlab prepare`")
    images, labels, attributes = t["images"], t["labels"], t["attributes"]
    k = manifest["num_classes"]
    ranges = [("images", images, -1.0, 1.0, "finite values in [-1, 1]"),
              ("labels", labels, 0, k - 1, f"values in [0, {k}) (manifest.json: num_classes)"),
              *((f"attributes[:, {i}]", attributes[:, i], 0, c - 1,
                 f"values in [0, {c}) (manifest.json: attributes.num_classes)") for i, c in enumerate(attrs))]
    for key, x, lo, hi, what in ranges:
        got = outside(x, lo, hi)
        if got:
            raise GenlabError(f"{path}: {key}: expected {what}, got {got}; rerun `genlab prepare`")
    return Split(images, labels, attributes)


def describe(dtype: torch.dtype, shape: tuple[int, ...] | torch.Size) -> str:
    """e.g. `float32 (1257, 1, 16, 16)`."""
    return f"{str(dtype).removeprefix('torch.')} {tuple(shape)}"


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
