"""Stage `evaluate`: FID, KID, precision/recall (torch-fidelity, evaluator features), the data floor,
class accuracy of conditional samples, the comparison table, model registration and promotion.

Every FID here uses the same reference (the train split) and the same sample count as the data
floor, which is the FID of the held-out test split against the train split: the best a model can
be expected to reach with this extractor. Each family's model is registered in MLflow as
`genlab-<family>` with the sampling settings it was evaluated with, and becomes `champion` only if
it beats the current champion on the same protocol (data hash and extractor).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from genlab import html_report, inputs
from genlab.config import DiffusionConfig, EvaluateConfig, LDMConfig, PixelConfig
from genlab.data import shapes, sources
from genlab.errors import GenlabError
from genlab.metrics import fid
from genlab.metrics.reference import (
    ReferenceStats,
    load_reference,
    nearest_distances,
    reference_key,
    score_against,
    score_features,
)
from genlab.paths import read_json
from genlab.report import comparison_table, write_comparison
from genlab.sampling import FAMILIES, PROMPT_TABLE
from genlab.stages.common import Context, Data, load_data, stage_run, training_summary, write_metrics
from genlab.stages.reference_stats import extractor_for, reference_path
from genlab.stages.sample import diffusion_settings, read_samples
from genlab.tracking import StageRun, promote_if_better

STAGE = "evaluate"
log = logging.getLogger(__name__)


def score(cfg: EvaluateConfig, ctx: Context, data: Data, extractor: fid.Extractor, ref: ReferenceStats,
          evaluator: Path, samples: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict]:
    """Every family and the data floor against the cached reference, one protocol for all."""
    cuda = ctx.device.type == "cuda"
    common = {"kid_subset_size": cfg.kid_subset_size, "pr_neighbourhood": cfg.pr_neighbourhood,
              "batch_size": cfg.batch_size, "cuda": cuda}
    # the test split's features, extracted once: its FID (the floor), and how close fresh images come to the train
    # split (what copying is measured against)
    test_features = fid.extract_features(data.test.images, extractor, cfg.batch_size, cuda)
    floor = score_features(test_features, ref, cfg.kid_subset_size, cfg.pr_neighbourhood)
    held_out_nn = nearest_distances(test_features, ref.features.float())
    if data.manifest["num_classes"]:  # unlabelled data: no class accuracy (absent, not zero)
        floor.update(accuracies(evaluator, data.test.images, data.test.labels, data.manifest))
    results = {"data floor (test vs train)": {**floor, "fid_ratio": 1.0, "n": len(data.test)}}
    for family in FAMILIES:
        s = samples[family]
        log.info("scoring %s (%d samples)", family, len(s["images"]))
        m = score_against(s["images"], ref, extractor, **common, held_out_nn=held_out_nn)
        m["fid_ratio"] = m["fid"] / floor["fid"] if floor["fid"] > 0 else float("nan")
        m["n"] = len(s["images"])
        training = training_summary(ctx, f"train_{family}")
        m.update(images_seen=training["images_seen"], train_seconds=training["train_seconds"],
                 train_run_id=training["mlflow_run_id"])
        if (s["labels"] >= 0).all():
            m.update(accuracies(evaluator, s["images"], s["labels"], data.manifest))
            if cfg.per_class_fid:
                per = fid.per_class_fid(s["images"], s["labels"], ref.features, data.train.labels, extractor,
                                        batch_size=cfg.batch_size, cuda=cuda)
                m["per_class_fid"] = {str(c): v for c, v in per.items()}
        results[family] = m
    return results


PROMPT_ROW = "ldm_prompts (held-out phrasings)"


def prompt_row(ctx: Context, ldm: LDMConfig, floor_fid: float, tier: str) -> dict[str, dict]:
    """A class+text LDM prompted with held-out phrasings at its default guidance scale, as scored by the
    guidance sweep (same seeds, labels, sample count, reference and metric settings, evaluator features);
    {} for the standard (Inception) tier, for a sweep without prompt columns (not a class+text model), or
    when the default scale is not in the sweep."""
    if tier != "offline":
        return {}
    sweep = read_json(sweep_path(ctx), ("rows", "n"), "guidance_sweep")
    if not any("prompt_fid" in r for r in sweep["rows"]):
        return {}
    row = next((r for r in sweep["rows"] if r["guidance_scale"] == ldm.guidance_scale), None)
    if row is None:
        log.warning("ldm.guidance_scale %g is not in sample.guidance_sweep: no held-out prompt row",
                    ldm.guidance_scale)
        return {}
    m = {k.removeprefix("prompt_"): v for k, v in row.items() if k.startswith("prompt_")}
    m["class_accuracy"] = m.pop("accuracy")
    return {PROMPT_ROW: {**m, "fid_ratio": m["fid"] / floor_fid, "n": sweep["n"]}}


def model_files(ctx: Context, family: str, tmp: Path) -> dict[str, Path]:
    """Only the snapshot files a sampler needs (not the training state) as MLflow model artifacts."""
    needed = {"vae": ["vae"], "ldm": ["ldm", "vae"], "pixel": ["pixel"], "gan": ["gan"]}[family]
    out = {}
    for name in needed:
        dst = tmp / family / name
        dst.mkdir(parents=True)
        src = ctx.paths.model(name)
        table = [PROMPT_TABLE] if (src / PROMPT_TABLE).is_file() else []  # text models only
        for f in ("model.safetensors", "config.json", *table):
            shutil.copy2(src / f, dst / f)
        out[name] = dst
    return out


def register_and_promote(ctx: Context, mlrun: StageRun, diffusion: dict[str, DiffusionConfig], results: dict,
                         protocol: dict, manifest: dict, samples: dict[str, dict[str, torch.Tensor]]) -> dict:
    """Register each family's sampler (with its evaluated sampling settings) and apply the champion rule.
    A version with the same content (weights, configs, settings) is reused, not registered again."""
    decisions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            settings = diffusion_settings(diffusion[family]) if family in diffusion else {}
            example = pd.DataFrame({"label": np.arange(2, dtype=np.int64), "seed": np.arange(2, dtype=np.int64)})
            if family in diffusion and diffusion[family].uses_text and manifest["num_classes"]:
                names = sources.class_names(manifest)
                example["prompt"] = [sources.heldout_prompts(manifest["source"], int(y), names)[0]
                                     for y in example["label"]]
            images = samples[family]["images"][:2].numpy()
            # steps as a float in the signature: MLflow would round 2.5 to 2 before `predict` could refuse it
            params = {"guidance_scale": settings["guidance_scale"], "sample_steps": float(settings["steps"])} \
                if family in diffusion else None
            ref = mlrun.log_model(family, f"genlab-{family}", model_files(ctx, family, Path(tmp)), example,
                                  images, params, {**settings, "num_classes": int(manifest["num_classes"])},
                                  tags={"family": family, **{k: str(v) for k, v in settings.items()}})
            decisions[family] = {**ref, **promote_if_better(ref, results[family]["fid"], protocol)}
    return decisions


def run(cfg: EvaluateConfig, ldm: LDMConfig, pixel: PixelConfig, ctx: Context) -> dict:
    data = load_data(ctx)
    evaluator = inputs.evaluator(ctx.paths, data.manifest)
    extractor = extractor_for(cfg, ctx)
    # stale statistics (other data or extractor) stop here with a one-line error naming the file
    ref = load_reference(reference_path(ctx), expected_key=reference_key(data.hash, extractor))
    samples = check_inputs(ctx, data, extractor.tier)
    protocol = {"data_hash": data.hash, "feature_extractor": extractor.label, "fid_tier": extractor.tier,
                "reference": "train", "reference_key": ref.key, "n_reference": str(ref.n),
                "n_samples": str(len(data.test))}
    note = f"FID tier: {extractor.note}."
    with stage_run(ctx, STAGE, cfg, data.hash) as mlrun:
        results = score(cfg, ctx, data, extractor, ref, evaluator, samples)
        results.update(prompt_row(ctx, ldm, results["data floor (test vs train)"]["fid"], extractor.tier))
        table = comparison_table(results)
        ctx.paths.reports.mkdir(parents=True, exist_ok=True)
        md, csv = write_comparison(table, ctx.paths.reports, note)
        for family, m in results.items():
            key = family.split(" ")[0].replace("data", "floor")
            mlrun.log_metrics({f"{key}_{k}": v for k, v in m.items()
                               if isinstance(v, int | float) and np.isfinite(v)})
            mlrun.log_metrics({f"{key}_fid_class_{c}": v for c, v in m.get("per_class_fid", {}).items()})
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
        decisions = register_and_promote(ctx, mlrun, diffusion, results, protocol, data.manifest, samples)
        page = html_report.build(ctx.paths.root, table, note, protocol, decisions,
                                 sources.class_names(data.manifest))
        mlrun.log_artifact(html_report.write(ctx.paths.reports / "report.html", page), "report")
        metrics = {"feature_extractor": extractor.note, "protocol": protocol,
                   "sampling": {"seed": sample_seed(ctx), **{f: diffusion_settings(c) for f, c in diffusion.items()}},
                   "floor": results["data floor (test vs train)"],
                   **{f: results[f] for f in FAMILIES}, "registry": decisions}
        if PROMPT_ROW in results:
            metrics["ldm_prompts"] = results[PROMPT_ROW]
        mlrun.log_dict(metrics, "evaluate.json")
    write_metrics(ctx, STAGE, metrics)
    return metrics


def check_inputs(ctx: Context, data: Data, tier: str) -> dict[str, dict[str, torch.Tensor]]:
    """What else `evaluate` reads, checked before its MLflow run opens: each family's samples (against the data),
    training summary and snapshot (registered), the samples' manifest and, in the offline tier, the sweep.
    Returns the samples, read once for scoring and registration."""
    samples = {family: read_samples(ctx, family, data.manifest) for family in FAMILIES}
    for family in FAMILIES:
        training_summary(ctx, f"train_{family}")
    inputs.snapshots(ctx.paths, FAMILIES)
    sample_seed(ctx)
    if tier == "offline":
        read_json(sweep_path(ctx), ("rows", "n"), "guidance_sweep")
    return samples


def sweep_path(ctx: Context) -> Path:
    return ctx.paths.root / "reports" / "guidance" / "sweep.json"


def sample_seed(ctx: Context) -> int:
    """The base seed every family's sample stage used (each image's own seed is derived from it); families
    sampled with different seeds are refused in one line (their samples would not be one comparison)."""
    seeds = {f: int(read_json(ctx.paths.samples / f"{f}.json", ("base_seed",), f"sample {f}")["base_seed"])
             for f in FAMILIES}
    if len(set(seeds.values())) > 1:
        raise GenlabError(f"{ctx.paths.samples}: the families were sampled with different sample.seed values "
                          f"({', '.join(f'{f} {s}' for f, s in seeds.items())}); rerun `dvc repro`")
    return next(iter(seeds.values()))


def accuracies(evaluator: Path, images: torch.Tensor, labels: torch.Tensor, manifest: dict) -> dict[str, float]:
    """class_accuracy (every attribute right); with several attributes also each one's accuracy and, where
    some combinations were held out of training, the accuracy on exactly those (prompt accuracy on unseen
    combinations)."""
    attrs = sources.label_attributes(manifest["source"], labels)
    acc = fid.attribute_accuracy(evaluator, images, attrs)
    out = {"class_accuracy": acc.pop("all")}
    if len(acc) > 1:
        out.update({f"accuracy_{k}": v for k, v in acc.items()})
    if manifest.get("holdout"):
        held = ~shapes.split_holdout_combinations(attrs, manifest["holdout"])
        if held.any():
            out["holdout_accuracy"] = fid.class_accuracy(evaluator, images[held], attrs[held])
    return out
