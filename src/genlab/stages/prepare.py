"""Stage `prepare`: load the source, scale to [-1, 1], resize, seeded stratified train/val/test split."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from genlab.config import DataConfig, to_json
from genlab.data import shapes, sources, splits
from genlab.images import save_grid
from genlab.paths import atomic_write, staged_dir
from genlab.stages.common import Context, stage_run, write_metrics

STAGE = "prepare"


def split_indices(labels: np.ndarray, val: float, test: float, seed: int) -> dict[str, np.ndarray]:
    """Stratified split: test first, then val from the rest; sorted indices within each split."""
    idx = np.arange(len(labels))
    rest, test_idx = train_test_split(idx, test_size=test, stratify=labels, random_state=seed)
    train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), stratify=labels[rest],
                                          random_state=seed)
    return {"train": np.sort(train_idx), "val": np.sort(val_idx), "test": np.sort(test_idx)}


def run(cfg: DataConfig, ctx: Context) -> dict:
    src = sources.load(cfg.source, cfg.image_size, cfg.shapes_count, ctx.seed)
    parts = split_indices(src.labels.numpy(), cfg.val_fraction, cfg.test_fraction, ctx.seed)
    held_out = 0
    if cfg.source == "shapes" and cfg.holdout:
        # combinations never seen together in training: dropped from train and val, kept in test
        keep = shapes.split_holdout_combinations(src.attributes, list(cfg.holdout)).numpy()
        held_out = int((~keep[parts["train"]]).sum() + (~keep[parts["val"]]).sum())
        parts = {k: (v[keep[v]] if k != "test" else v) for k, v in parts.items()}
    data = {name: splits.Split(src.images[i], src.labels[i], src.attributes[i]) for name, i in parts.items()}
    extra = {"source": cfg.source, "seed": ctx.seed, "num_classes": src.num_classes,
             "attributes": {"names": list(src.attribute_names), "num_classes": list(src.attribute_classes)},
             "holdout": [dict(h) for h in cfg.holdout] if cfg.source == "shapes" else [],
             "held_out_from_training": held_out}
    with staged_dir(ctx.paths.prepared) as out:
        manifest = splits.write(data, out, extra)
        atomic_write(out / "config.json", to_json(cfg) + "\n")
        save_grid(data["train"].images[:100], out / "examples.png", nrow=10)
    metrics = {"data_hash": manifest["content_hash"], **{f"n_{k}": v for k, v in manifest["counts"].items()}}
    with stage_run(ctx, STAGE, cfg, manifest["content_hash"]) as run:
        run.log_metrics({k: v for k, v in metrics.items() if k != "data_hash"})
        run.log_artifact(ctx.paths.prepared / "manifest.json")
        run.log_artifact(ctx.paths.prepared / "examples.png")
    write_metrics(ctx, STAGE, metrics)
    return manifest
