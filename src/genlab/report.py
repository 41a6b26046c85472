"""The cross-family comparison table (pandas), written as Markdown and CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from genlab.paths import atomic_write

# copy_z: the data-copying statistic (Meehan et al. 2020; < -3: samples closer to training images than new data is)
COLUMNS = ["family", "fid", "fid_ratio", "kid_mean", "kid_std", "precision", "recall", "copy_z", "nn_ratio",
           "class_accuracy", "n", "images_seen", "train_seconds"]


def comparison_table(results: dict[str, dict]) -> pd.DataFrame:
    """One row per family (the data floor first); `fid_ratio` = FID / data-floor FID."""
    rows = [{"family": name, **values} for name, values in results.items()]
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def write_comparison(table: pd.DataFrame, out_dir: Path, note: str) -> tuple[Path, Path]:
    md, csv = out_dir / "comparison.md", out_dir / "comparison.csv"
    text = "# genlab: model comparison\n\n" + table.to_markdown(index=False, floatfmt=".4g") + f"\n\n{note}\n"
    atomic_write(md, text)
    atomic_write(csv, table.to_csv(index=False))
    return md, csv
