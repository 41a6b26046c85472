"""Stage `prepare`: decode the source to uint8 at `data.image_size`, then a seeded train/val/test split
(stratified by class when labelled), written one chunk at a time: memory does not grow with the dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from genlab.config import DataConfig, to_json
from genlab.data import shapes, sources, splits
from genlab.data.store import Images
from genlab.errors import GenlabError, StorageError
from genlab.images import save_grid
from genlab.paths import atomic_write, staged_dir
from genlab.stages.common import Context, stage_run, write_metrics

STAGE = "prepare"
log = logging.getLogger(__name__)


def split_indices(labels: np.ndarray | None, n: int, val: float, test: float, seed: int) -> dict[str, np.ndarray]:
    """Test first, then val from the rest, stratified by `labels` (None: unlabelled, a plain seeded shuffle);
    sorted indices within each split."""
    idx = np.arange(n)
    rest, test_idx = train_test_split(idx, test_size=test, stratify=labels, random_state=seed)
    train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test),
                                          stratify=None if labels is None else labels[rest], random_state=seed)
    return {"train": np.sort(train_idx), "val": np.sort(val_idx), "test": np.sort(test_idx)}


def check_counts(labels: np.ndarray | None, names: list[str], cfg: DataConfig, n: int) -> None:
    """At least 2 readable images in every class (a stratified split needs them) and some in all: else one line."""
    if n < 3:
        raise GenlabError(f"data.path {cfg.path}: {n} readable image(s); a train/val/test split needs more")
    if labels is None:
        return
    counts = np.bincount(labels, minlength=len(names))
    small = [(names[c] if c < len(names) else str(c), int(k)) for c, k in enumerate(counts) if k < 2]
    if small:
        which = ", ".join(f"{name!r} ({k})" for name, k in small[:5]) + (" ..." if len(small) > 5 else "")
        raise GenlabError(f"data.source {cfg.source}: too few readable images in class(es) {which}: each class needs "
                          "at least 2 for a stratified split")


def split_or_refuse(labels: np.ndarray | None, n: int, cfg: DataConfig, seed: int) -> dict[str, np.ndarray]:
    """`split_indices`, with a split the fractions cannot make (e.g. fewer test images than classes) refused in one
    line naming the keys."""
    try:
        return split_indices(labels, n, cfg.val_fraction, cfg.test_fraction, seed)
    except ValueError as e:
        k = "" if labels is None else f" of {len(np.unique(labels))} classes"
        raise GenlabError(f"data: cannot split {n} images{k} with val_fraction {cfg.val_fraction} and test_fraction "
                          f"{cfg.test_fraction} ({' '.join(str(e).split())}); use more images or larger fractions") \
            from None


def decode(src: sources.Source, path: Path, image_size: int) -> np.ndarray:
    """Decode every readable item into `path` as raw (n, C, S, S) uint8 rows; the item indices written."""
    good: list[np.ndarray] = []
    try:
        with open(path, "wb") as f, tqdm(total=src.count, unit="img", desc=STAGE, mininterval=2.0,
                                         unit_scale=True, dynamic_ncols=True) as bar:
            for idx, images in src.chunks():
                assert images.shape[1:] == (src.channels, image_size, image_size), images.shape
                f.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
                good.append(idx)
                bar.update(len(idx))
    except OSError as e:
        raise StorageError(f"{path}: cannot write ({e.strerror or e})") from e
    return np.concatenate(good) if good else np.zeros(0, dtype=np.int64)


def run(cfg: DataConfig, ctx: Context) -> dict:
    path = None if cfg.path is None else str(Path(ctx.paths.root, cfg.path))
    src = sources.load(cfg.source, cfg.image_size, cfg.shapes_count, ctx.seed, path, cfg.channels, cfg.on_bad_file)
    with staged_dir(ctx.paths.prepared) as out:
        scratch = out / "decoded.u8"  # every readable image, in item order; removed before the output is swapped in
        good = decode(src, scratch, cfg.image_size)
        if src.skipped:
            log.warning("%s: skipped %d unreadable file(s), e.g. %s (%s)", STAGE, len(src.skipped), *src.skipped[0])
        labelled = src.num_classes > 0
        labels, attributes = src.labels[good], src.attributes[good]
        check_counts(labels if labelled else None, src.class_names, cfg, len(good))
        parts = split_or_refuse(labels if labelled else None, len(good), cfg, ctx.seed)
        held_out = 0
        if cfg.source == "shapes" and cfg.holdout:
            # combinations never seen together in training: dropped from train and val, kept in test
            keep = shapes.split_holdout_combinations(torch.from_numpy(attributes), list(cfg.holdout)).numpy()
            held_out = int((~keep[parts["train"]]).sum() + (~keep[parts["val"]]).sum())
            parts = {k: (v[keep[v]] if k != "test" else v) for k, v in parts.items()}
        extra = {"source": cfg.source, "seed": ctx.seed, "num_classes": src.num_classes, "labelled": labelled,
                 "class_names": src.class_names,
                 "attributes": {"names": list(src.attribute_names), "num_classes": list(src.attribute_classes)},
                 "holdout": [dict(h) for h in cfg.holdout] if cfg.source == "shapes" else [],
                 "held_out_from_training": held_out,
                 "skipped": [{"file": f, "reason": r} for f, r in src.skipped]}
        decoded = Images(scratch, 0, (len(good), src.channels, cfg.image_size, cfg.image_size))
        manifest = splits.write(out, parts, decoded, labels, attributes, extra)
        scratch.unlink()
        atomic_write(out / "config.json", to_json(cfg) + "\n")
        save_grid(splits.read(out, "train", manifest).images[:100], out / "examples.png", nrow=10)
    metrics = {"data_hash": manifest["content_hash"], **{f"n_{k}": v for k, v in manifest["counts"].items()},
               "n_skipped": len(src.skipped)}
    with stage_run(ctx, STAGE, cfg, manifest["content_hash"]) as run:
        run.log_metrics({k: v for k, v in metrics.items() if k != "data_hash"})
        run.log_artifact(ctx.paths.prepared / "manifest.json")
        run.log_artifact(ctx.paths.prepared / "examples.png")
    write_metrics(ctx, STAGE, metrics)
    return manifest
