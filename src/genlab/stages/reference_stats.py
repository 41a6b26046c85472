"""Stage `reference_stats`: features (and mean, covariance) of the reference split, computed once.

The file is keyed by content, never by name: its header holds sha256(data hash, extractor tier,
extractor weights sha256, feature layer). `evaluate` refuses statistics whose key does not match
the data and extractor it is scoring with, so changed data can never be scored against stale
statistics. The extractor is genlab's evaluator (offline tier) unless
`evaluate.feature_extractor_weights_path` names an Inception-v3 weights file (standard tier). In the offline
tier the features are those `train_evaluator` extracted once next to the evaluator (every training stage's
FID reads them too); in the standard tier they are extracted here, with their precision/recall radii.
"""

from __future__ import annotations

import json
from pathlib import Path

from genlab import inputs
from genlab.config import EvaluateConfig
from genlab.metrics import fid
from genlab.metrics.reference import compute_reference, reference_key, save_reference
from genlab.paths import atomic_write
from genlab.stages.common import Context, load_data, stage_run, write_metrics
from genlab.stages.train_fid import train_reference

STAGE = "reference_stats"


def reference_path(ctx: Context) -> Path:
    return ctx.paths.root / "stats" / "reference.safetensors"


def extractor_for(cfg: EvaluateConfig, ctx: Context) -> fid.Extractor:
    return fid.make_extractor(ctx.paths.model("evaluator") / "model.safetensors", cfg.feature_extractor_weights_path)


def run(cfg: EvaluateConfig, ctx: Context) -> dict:
    data = load_data(ctx)
    if cfg.feature_extractor_weights_path is None:  # offline tier: the evaluator's features
        inputs.evaluator(ctx.paths, data.manifest)
    extractor = extractor_for(cfg, ctx)
    key = reference_key(data.hash, extractor)
    with stage_run(ctx, STAGE, cfg, data.hash) as mlrun:
        if extractor.tier == "offline":  # the evaluator's features of the train split, written by its stage
            stats = train_reference(ctx, data)[1]
        else:
            stats = compute_reference(data.train.images, extractor, key, batch_size=cfg.batch_size,
                                      cuda=ctx.device.type == "cuda", radii_k=cfg.pr_neighbourhood)
        save_reference(stats, reference_path(ctx))
        info = {"key": key, "tier": extractor.tier, "extractor": extractor.label, "note": extractor.note,
                "reference_split": "train", "n": stats.n, "data_hash": data.hash, "dims": int(stats.mu.shape[0])}
        atomic_write(reference_path(ctx).with_suffix(".json"), json.dumps(info, indent=2) + "\n")
        mlrun.set_tags({"genlab.reference_key": key, "genlab.fid_tier": extractor.tier})
        mlrun.log_metrics({"n": stats.n, "dims": info["dims"]})
    write_metrics(ctx, STAGE, {"n": stats.n, "dims": info["dims"], "key": key, "tier": extractor.tier})
    return info
