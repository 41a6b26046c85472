"""`genlab compare`: models across runs and experiments, from MLflow, as one pandas table.

One row per (evaluate run, family): family, key params, FID / KID / FID-to-floor ratio, class
accuracy, train time, images seen, data hash, git commit.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from genlab import tracking
from genlab.errors import GenlabError

FAMILIES = ("vae", "ldm", "pixel", "gan")
METRICS = ("fid", "fid_ratio", "kid_mean", "precision", "recall", "class_accuracy", "images_seen", "train_seconds")
COLUMNS = ["run_id", "experiment", "start", "family", *METRICS, "sample_steps", "guidance_scale", "floor_fid",
           "extractor", "data_hash", "git_commit"]


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index)


def table(runs: pd.DataFrame, experiment_names: dict[str, str]) -> pd.DataFrame:
    """Reshape evaluate runs (one row each, metrics `<family>_<metric>`) into one row per family."""
    rows = []
    for family in FAMILIES:
        part = pd.DataFrame({
            "run_id": runs["run_id"],
            "experiment": runs["experiment_id"].map(experiment_names),
            "start": runs["start_time"],
            "family": family,
            **{m: _col(runs, f"metrics.{family}_{m}") for m in METRICS},
            "sample_steps": _col(runs, f"metrics.{family}_steps") if family in ("ldm", "pixel") else None,
            "floor_fid": _col(runs, "metrics.floor_fid"),
            "extractor": _col(runs, "tags.genlab.protocol.feature_extractor"),
            "data_hash": _col(runs, "tags.genlab.data_hash").str[:12],
            "git_commit": _col(runs, "tags.genlab.git_commit").str[:10],
        })
        part["guidance_scale"] = _col(runs, f"metrics.{family}_guidance_scale") if family in ("ldm", "pixel") else None
        rows.append(part[part["fid"].notna()])
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=COLUMNS)
    return out.reindex(columns=COLUMNS)


def compare(root: Path, experiments: list[str] | None = None, family: str | None = None, data_hash: str | None = None,
            sort: str = "fid", descending: bool = False, limit: int | None = None) -> pd.DataFrame:
    runs = tracking.search_runs(root, experiments, "tags.`genlab.stage` = 'evaluate'")
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    names = tracking.experiment_names(runs["experiment_id"].unique().tolist())
    out = table(runs, names)
    if family:
        out = out[out["family"] == family]
    if data_hash:
        out = out[out["data_hash"].fillna("").str.startswith(data_hash[:12])]
    if sort not in out.columns:
        raise GenlabError(f"--sort {sort!r}: expected one of {', '.join(COLUMNS)}")
    out = out.sort_values(sort, ascending=not descending, na_position="last")
    return out.head(limit) if limit else out


def render(df: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return df.to_csv(index=False)
    return df.to_markdown(index=False, floatfmt=".4g")
