"""Prepared splits on disk: one safetensors file per split and a manifest with a content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from genlab.errors import GenlabError

SPLITS = ("train", "val", "test")


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
        (out / f"{name}.safetensors").write_bytes(save(tensors))
    manifest = {
        **extra,
        "content_hash": content_hash(splits),
        "image_shape": list(splits["train"].images.shape[1:]),
        "counts": {name: len(s) for name, s in splits.items()},
        "class_counts": {name: torch.bincount(s.labels, minlength=extra["num_classes"]).tolist()
                         for name, s in splits.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.is_file():
        raise GenlabError(f"{path}: not found (run `genlab prepare` first)")
    return json.loads(path.read_text())


def read(root: Path, name: str) -> Split:
    if name not in SPLITS:
        raise GenlabError(f"split {name!r}: expected one of {SPLITS}")
    path = root / f"{name}.safetensors"
    if not path.is_file():
        raise GenlabError(f"{path}: not found (run `genlab prepare` first)")
    t = load_file(str(path))
    return Split(t["images"], t["labels"], t["attributes"])
