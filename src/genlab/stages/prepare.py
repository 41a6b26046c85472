"""Stage `prepare`: load the source, scale to [-1, 1], resize, seeded stratified train/val/test split."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from genlab.config import DataConfig, to_json
from genlab.data import digits, splits
from genlab.images import save_grid
from genlab.paths import staged_dir
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
    images, labels = digits.load(cfg.image_size)
    parts = split_indices(labels.numpy(), cfg.val_fraction, cfg.test_fraction, ctx.seed)
    data = {name: splits.Split(images[i], labels[i]) for name, i in parts.items()}
    with staged_dir(ctx.paths.prepared) as out:
        manifest = splits.write(data, out, {"source": cfg.source, "seed": ctx.seed})
        (out / "config.json").write_text(to_json(cfg) + "\n")
        save_grid(data["train"].images[:100], out / "examples.png", nrow=10)
    metrics = {"data_hash": manifest["content_hash"], **{f"n_{k}": v for k, v in manifest["counts"].items()}}
    with stage_run(ctx, STAGE, cfg, manifest["content_hash"]) as run:
        run.log_metrics({k: v for k, v in metrics.items() if k != "data_hash"})
        run.log_artifact(ctx.paths.prepared / "manifest.json")
        run.log_artifact(ctx.paths.prepared / "examples.png")
    write_metrics(ctx, STAGE, metrics)
    return manifest
