"""Stage `guidance_sweep`: the LDM sampled at each classifier-free guidance scale, scored on the
quality/fidelity trade-off: FID (and precision/recall) against class accuracy.

The same seeds and labels at every scale, so the only thing that changes is w in
eps = eps_u + w (eps_c - eps_u). Writes a DVC plot (plots/guidance_sweep.csv), a picture of FID
against class accuracy, and one sample grid per scale.
"""

from __future__ import annotations

import json
import logging

import pandas as pd
import torch

from genlab.config import LDMConfig, SampleConfig
from genlab.data.sources import label_attributes
from genlab.images import save_grid, save_tradeoff
from genlab.metrics import fid
from genlab.paths import atomic_write, staged_dir
from genlab.sampling import DiffusionSampler, generate, image_seeds
from genlab.stages.common import Context, load_data, stage_run, write_metrics
from genlab.stages.sample import diffusion_settings

STAGE = "guidance_sweep"
log = logging.getLogger(__name__)


def run(cfg: SampleConfig, ldm: LDMConfig, ctx: Context) -> dict:
    data = load_data(ctx)
    evaluator = ctx.paths.model("evaluator") / "model.safetensors"
    k = data.manifest["num_classes"]
    labels = torch.arange(k).repeat_interleave(cfg.n_per_class)
    seeds = image_seeds(cfg.seed, "ldm", len(labels))
    sampler = DiffusionSampler(ctx.paths.model("ldm"), ctx.paths.model("vae"), ctx.device)
    rows = []
    with stage_run(ctx, STAGE, cfg, data.hash) as mlrun, staged_dir(ctx.paths.root / "reports" / "guidance") as out:
        for w in cfg.guidance_sweep:
            settings = {**diffusion_settings(ldm), "guidance_scale": w}
            images = generate(sampler, labels, seeds, cfg.batch_size, **settings)
            m = fid.compute(images, data.train.images, evaluator, kid_subset_size=100, pr_neighbourhood=3,
                            cuda=ctx.device.type == "cuda")
            row = {"guidance_scale": w, "fid": m["fid"], "precision": m["precision"], "recall": m["recall"],
                   "kid_mean": m["kid_mean"],
                   "class_accuracy": fid.class_accuracy(evaluator, images,
                                                        label_attributes(data.manifest["source"], labels))}
            rows.append(row)
            log.info("guidance %.2f: FID %.4g, class accuracy %.4f", w, row["fid"], row["class_accuracy"])
            per = min(8, cfg.n_per_class)
            idx = torch.cat([torch.arange(c * cfg.n_per_class, c * cfg.n_per_class + per) for c in range(k)])
            save_grid(images[idx], out / f"w{w:g}.png", nrow=per)
        table = pd.DataFrame(rows)
        save_tradeoff(table, out / "fid_vs_accuracy.png")
        atomic_write(ctx.paths.plot(STAGE), table.to_csv(index=False))
        for r in rows:
            # MLflow steps are integers: the scale in hundredths
            step = round(r["guidance_scale"] * 100)
            mlrun.log_metrics({"fid": r["fid"], "class_accuracy": r["class_accuracy"]}, step)
        mlrun.log_artifact(out / "fid_vs_accuracy.png", "guidance")
        mlrun.log_artifact(ctx.paths.plot(STAGE), "guidance")
    best = min(rows, key=lambda r: r["fid"])
    metrics = {"rows": rows, "best_fid_guidance_scale": best["guidance_scale"], **diffusion_settings(ldm),
               "n": len(labels)}
    write_metrics(ctx, STAGE, metrics)
    (ctx.paths.root / "reports" / "guidance" / "sweep.json").write_text(json.dumps(metrics, indent=2))
    return metrics
