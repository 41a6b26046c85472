"""Stage `sample`: N images from every trained family, each with its own recorded seed.

Conditional families (LDM, GAN) are class-balanced (n_per_class of each class); the VAE samples
N(0, I) unconditionally. The LDM samples by DDIM with `ldm.sample_steps`, `ldm.eta` and
classifier-free guidance scale `ldm.guidance_scale`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from genlab.config import DiffusionConfig, LDMConfig, PixelConfig, SampleConfig
from genlab.data.splits import read_manifest
from genlab.errors import GenlabError
from genlab.images import save_grid
from genlab.paths import staged_dir
from genlab.sampling import DIFFUSION, FAMILIES, generate, image_seeds, load_sampler
from genlab.stages.common import Context, stage_run, write_metrics

STAGE = "sample"
log = logging.getLogger(__name__)


def diffusion_settings(cfg: DiffusionConfig) -> dict:
    """The sampling settings of a diffusion family: they define its samples as much as its weights do."""
    return {"guidance_scale": cfg.guidance_scale, "steps": cfg.sample_steps, "eta": cfg.eta, "sampler": cfg.sampler}


def read_samples(ctx: Context, family: str) -> dict[str, torch.Tensor]:
    path = ctx.paths.samples / f"{family}.safetensors"
    if not path.is_file():
        raise GenlabError(f"{path}: not found (run `genlab sample` first)")
    return load_file(str(path))


def sample_family(family: str, sampler: object, labels: torch.Tensor, cfg: SampleConfig, kwargs: dict,
                  out: Path, per_class: int) -> dict:
    """Generate, then write `<family>.safetensors` (images, labels, seeds) and a `<family>.png` grid."""
    start = time.perf_counter()
    seeds = image_seeds(cfg.seed, family, len(labels))
    images = generate(sampler, labels, seeds, cfg.batch_size, **kwargs)
    fam_labels = labels if sampler.conditional else torch.full_like(labels, -1)
    (out / f"{family}.safetensors").write_bytes(save({
        "images": images.contiguous(), "labels": fam_labels.contiguous(),
        "seeds": torch.tensor(seeds, dtype=torch.int64)}))
    # grid: one row per class with its first 10 images
    k = int(labels.max()) + 1
    grid_idx = torch.cat([torch.arange(c * per_class, c * per_class + min(10, per_class)) for c in range(k)])
    save_grid(images[grid_idx], out / f"{family}.png", nrow=min(10, per_class))
    seconds = time.perf_counter() - start
    log.info("sampled %d images from %s in %.1f s", len(seeds), family, seconds)
    return {"n": len(seeds), "conditional": sampler.conditional, "seconds": round(seconds, 3), **kwargs}


def run(cfg: SampleConfig, ldm: LDMConfig, pixel: PixelConfig, ctx: Context) -> dict:
    manifest = read_manifest(ctx.paths.prepared)
    labels = torch.arange(manifest["num_classes"]).repeat_interleave(cfg.n_per_class)
    dirs = {f: ctx.paths.model(f) for f in FAMILIES}
    summary: dict[str, dict] = {}
    with stage_run(ctx, STAGE, cfg, manifest["content_hash"]) as mlrun:
        with staged_dir(ctx.paths.samples) as out:
            for family in FAMILIES:
                sampler = load_sampler(family, dirs, ctx.device)
                kwargs = diffusion_settings({"ldm": ldm, "pixel": pixel}[family]) if family in DIFFUSION else {}
                summary[family] = sample_family(family, sampler, labels, cfg, kwargs, out, cfg.n_per_class)
            (out / "manifest.json").write_text(json.dumps({"base_seed": cfg.seed, "families": summary}, indent=2))
        metrics = {**{f"{f}_seconds": s["seconds"] for f, s in summary.items()}, "n_per_family": len(labels)}
        mlrun.log_metrics(metrics)
        for f in FAMILIES:
            mlrun.log_artifact(ctx.paths.samples / f"{f}.png", "grids")
    write_metrics(ctx, STAGE, metrics)
    return summary
