"""Stage `evaluate`: FID, KID, precision/recall (torch-fidelity, evaluator features), the data floor,
class accuracy of conditional samples, the comparison table, model registration and promotion.

Every FID here uses the same reference (the train split) and the same sample count as the data
floor, which is the FID of the held-out test split against the train split: the best a model can
be expected to reach with this extractor. Each family's model is registered in MLflow as
`genlab-<family>` with the sampling settings it was evaluated with, and becomes `champion` only if
it beats the current champion on the same protocol (data hash and extractor).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from genlab import html_report
from genlab.config import DiffusionConfig, EvaluateConfig, LDMConfig, PixelConfig
from genlab.metrics import fid
from genlab.report import comparison_table, write_comparison
from genlab.sampling import FAMILIES
from genlab.stages.common import Context, Data, load_data, stage_run, write_metrics
from genlab.stages.sample import diffusion_settings, read_samples
from genlab.tracking import StageRun, promote_if_better

STAGE = "evaluate"
log = logging.getLogger(__name__)


def score(cfg: EvaluateConfig, ctx: Context, data: Data, evaluator: Path) -> dict[str, dict]:
    cuda = ctx.device.type == "cuda"
    common = {"evaluator_path": evaluator, "kid_subset_size": cfg.kid_subset_size,
              "pr_neighbourhood": cfg.pr_neighbourhood, "batch_size": cfg.batch_size, "cuda": cuda}
    floor = fid.compute(data.test.images, data.train.images, **common)
    floor["class_accuracy"] = fid.class_accuracy(evaluator, data.test.images, data.test.labels)
    results = {"data floor (test vs train)": {**floor, "fid_ratio": 1.0, "n": len(data.test)}}
    for family in FAMILIES:
        s = read_samples(ctx, family)
        log.info("scoring %s (%d samples)", family, len(s["images"]))
        m = fid.compute(s["images"], data.train.images, **common)
        m["fid_ratio"] = m["fid"] / floor["fid"] if floor["fid"] > 0 else float("nan")
        m["n"] = len(s["images"])
        training = json.loads((ctx.paths.model(family) / "training.json").read_text())
        m.update(images_seen=training["images_seen"], train_seconds=training["train_seconds"],
                 train_run_id=training["run_id"])
        if (s["labels"] >= 0).all():
            m["class_accuracy"] = fid.class_accuracy(evaluator, s["images"], s["labels"])
        results[family] = m
    return results


def model_files(ctx: Context, family: str, tmp: Path) -> dict[str, Path]:
    """Only the snapshot files a sampler needs (not the training state) as MLflow model artifacts."""
    needed = {"vae": ["vae"], "ldm": ["ldm", "vae"], "pixel": ["pixel"], "gan": ["gan"]}[family]
    out = {}
    for name in needed:
        dst = tmp / family / name
        dst.mkdir(parents=True)
        for f in ("model.safetensors", "config.json"):
            shutil.copy2(ctx.paths.model(name) / f, dst / f)
        out[name] = dst
    return out


def register_and_promote(ctx: Context, mlrun: StageRun, diffusion: dict[str, DiffusionConfig], results: dict,
                         protocol: dict) -> dict:
    """Register each family's sampler (with its evaluated sampling settings) and apply the champion rule."""
    decisions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            settings = diffusion_settings(diffusion[family]) if family in diffusion else {}
            example = pd.DataFrame({"label": np.arange(2, dtype=np.int64), "seed": np.arange(2, dtype=np.int64)})
            images = read_samples(ctx, family)["images"][:2].numpy()
            params = {"guidance_scale": settings["guidance_scale"], "sample_steps": settings["steps"]} \
                if family in diffusion else None
            ref = mlrun.log_model(family, f"genlab-{family}", model_files(ctx, family, Path(tmp)), example,
                                  images, params, settings,
                                  tags={"family": family, **{k: str(v) for k, v in settings.items()}})
            decisions[family] = {**ref, **promote_if_better(ref, results[family]["fid"], protocol)}
    return decisions


def run(cfg: EvaluateConfig, ldm: LDMConfig, pixel: PixelConfig, ctx: Context) -> dict:
    data = load_data(ctx)
    evaluator = ctx.paths.model("evaluator") / "model.safetensors"
    evaluator_sha = hashlib.sha256(evaluator.read_bytes()).hexdigest()
    protocol = {"data_hash": data.hash, "feature_extractor": f"{fid.EXTRACTOR}@{evaluator_sha[:12]}",
                "reference": "train", "n_samples": str(len(data.test))}
    with stage_run(ctx, STAGE, cfg, data.hash) as mlrun:
        results = score(cfg, ctx, data, evaluator)
        table = comparison_table(results)
        ctx.paths.reports.mkdir(parents=True, exist_ok=True)
        md, csv = write_comparison(table, ctx.paths.reports, f"FID tier: {fid.EXTRACTOR_NOTE}.")
        for family, m in results.items():
            key = family.split(" ")[0].replace("data", "floor")
            mlrun.log_metrics({f"{key}_{k}": v for k, v in m.items()
                               if isinstance(v, int | float) and np.isfinite(v)})
            if "train_run_id" in m:
                mlrun.set_tags({f"genlab.{key}.train_run_id": m["train_run_id"]})
        mlrun.set_tags({f"genlab.protocol.{k}": v for k, v in protocol.items()})
        diffusion = {"ldm": ldm, "pixel": pixel}
        for family, c in diffusion.items():
            settings = diffusion_settings(c)
            mlrun.log_metrics({f"{family}_{k}": v for k, v in settings.items() if k != "sampler"})
            mlrun.set_tags({f"genlab.{family}.sampler": settings["sampler"]})
        mlrun.log_artifact(md, "report")
        mlrun.log_artifact(csv, "report")
        decisions = register_and_promote(ctx, mlrun, diffusion, results, protocol)
        page = html_report.build(ctx.paths.root, table, f"FID tier: {fid.EXTRACTOR_NOTE}.", protocol, decisions)
        mlrun.log_artifact(html_report.write(ctx.paths.reports / "report.html", page), "report")
        metrics = {"feature_extractor": fid.EXTRACTOR_NOTE, "protocol": protocol,
                   "floor": results["data floor (test vs train)"],
                   **{f: results[f] for f in FAMILIES}, "registry": decisions}
        mlrun.log_dict(metrics, "evaluate.json")
    write_metrics(ctx, STAGE, metrics)
    return metrics
