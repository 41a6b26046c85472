"""Stage `guidance_sweep`: the LDM sampled at each classifier-free guidance scale, scored on the
quality/fidelity trade-off: FID (and precision/recall) against class accuracy.

The same seeds and labels at every scale, so the only thing that changes is w in
eps = eps_u + w (eps_c - eps_u). A class+text model is scored twice per scale: guided by the labels
(columns fid, class_accuracy, ...) and by held-out phrasings of the same labels (prompt_fid,
prompt_accuracy, ...). For a text model the main columns already come from held-out phrasings.
Writes a DVC plot (plots/guidance_sweep.csv), a picture of FID against accuracy, and one sample grid
per scale.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import torch

from genlab import inputs
from genlab.config import EvaluateConfig, LDMConfig, SampleConfig
from genlab.data.sources import label_attributes
from genlab.images import save_class_grid, save_tradeoff
from genlab.metrics import fid
from genlab.paths import atomic_write, staged_dir
from genlab.sampling import DiffusionSampler, generate, image_seeds
from genlab.stages.common import Context, Data, load_data, stage_run, write_metrics
from genlab.stages.sample import diffusion_settings, sample_labels
from genlab.stages.train_fid import train_scores

STAGE = "guidance_sweep"
log = logging.getLogger(__name__)


def score(images: torch.Tensor, labels: torch.Tensor, data: Data, evaluator: Path, ev: EvaluateConfig,
          ctx: Context) -> dict:
    """FID, precision/recall and KID with the `evaluate` stage's settings (its table shows the prompt row),
    and class accuracy."""
    m = train_scores(ctx, data, images, ev.kid_subset_size, ev.pr_neighbourhood, ev.batch_size)
    out = {"fid": m["fid"], "precision": m["precision"], "recall": m["recall"], "kid_mean": m["kid_mean"]}
    if data.manifest["num_classes"]:  # unlabelled data: no class accuracy
        out["class_accuracy"] = fid.class_accuracy(evaluator, images, label_attributes(data.manifest["source"], labels))
    return out


def run(cfg: SampleConfig, ldm: LDMConfig, ev: EvaluateConfig, ctx: Context) -> dict:
    data = load_data(ctx)
    evaluator = inputs.evaluator(ctx.paths, data.manifest)
    k = data.manifest["num_classes"]
    labels = sample_labels(data.manifest, cfg)
    seeds = image_seeds(cfg.seed, "ldm", len(labels))
    sampler = DiffusionSampler(ctx.paths.model("ldm"), ctx.paths.model("vae"), ctx.device)
    # a class+text model is also scored through its prompts: held-out phrasings, chosen per image by its seed
    prompts = sampler.prompts_for(labels, seeds) if sampler.conditioning == "class+text" else None
    # an unconditional model (unlabelled data) has no guidance: one row, at scale 1, to record its FID
    scales = cfg.guidance_sweep if sampler.conditional else (1.0,)
    rows = []
    with stage_run(ctx, STAGE, cfg, data.hash) as mlrun, staged_dir(ctx.paths.root / "reports" / "guidance") as out:
        for w in scales:
            settings = {**diffusion_settings(ldm), "guidance_scale": w}
            images = generate(sampler, labels, seeds, cfg.batch_size, **settings)
            row = {"guidance_scale": w, **score(images, labels, data, evaluator, ev, ctx)}
            if prompts is not None:
                # w = 0 is the unconditional model whatever the condition: the same images, not sampled twice
                m = dict(row) if w == 0 else \
                    score(generate(sampler, labels, seeds, cfg.batch_size, prompts=prompts, **settings), labels, data,
                          evaluator, ev, ctx)
                m["accuracy"] = m.pop("class_accuracy")  # prompt accuracy: every attribute the prompt names
                row.update({f"prompt_{key}": v for key, v in m.items() if key != "guidance_scale"})
            rows.append(row)
            log.info("guidance %.2f: %s", w, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "guidance_scale"))
            save_class_grid(images, labels, out / f"w{w:g}.png", per_class=8)
        table = pd.DataFrame(rows)
        if k:
            save_tradeoff(table, out / "fid_vs_accuracy.png")
            mlrun.log_artifact(out / "fid_vs_accuracy.png", "guidance")
        atomic_write(ctx.paths.plot(STAGE), table.to_csv(index=False))
        for r in rows:
            # MLflow steps are integers: the scale in hundredths
            step = round(r["guidance_scale"] * 100)
            mlrun.log_metrics({k: r[k] for k in ("fid", "class_accuracy", "prompt_fid", "prompt_accuracy") if k in r},
                              step)
        mlrun.log_artifact(ctx.paths.plot(STAGE), "guidance")
    best = min(rows, key=lambda r: r["fid"])
    # the sampler settings it ran with; not params' guidance_scale, which it neither reads nor re-runs for
    settings = {k: v for k, v in diffusion_settings(ldm).items() if k != "guidance_scale"}
    metrics = {"rows": rows, "best_fid_guidance_scale": best["guidance_scale"], **settings, "n": len(labels)}
    write_metrics(ctx, STAGE, metrics)
    atomic_write(ctx.paths.root / "reports" / "guidance" / "sweep.json", json.dumps(metrics, indent=2))
    return metrics
