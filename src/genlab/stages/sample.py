"""Stage `sample FAMILY` (dvc.yaml: `sample_<family>`, one stage per family): N images from one trained family,
each with its own recorded seed.

Conditional families (LDM, pixel, GAN) are class-balanced (n_per_class of each class); the VAE samples
N(0, I) unconditionally. The LDM samples by DDIM with `ldm.sample_steps`, `ldm.eta` and
classifier-free guidance scale `ldm.guidance_scale`. One stage per family, so a change to one family's
sampling params (`dvc exp run -S ldm.guidance_scale=2`) re-samples that family alone.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import save

from genlab.checkpoint import read_safetensors
from genlab.config import DiffusionConfig, LDMConfig, PixelConfig, SampleConfig
from genlab.data.splits import describe, read_manifest
from genlab.errors import GenlabError
from genlab.images import save_class_grid
from genlab.paths import atomic_write
from genlab.sampling import DIFFUSION, generate, image_seeds, load_sampler
from genlab.stages.common import Context, stage_run, write_metrics

STAGE = "sample"
log = logging.getLogger(__name__)


def diffusion_settings(cfg: DiffusionConfig) -> dict:
    """The sampling settings of a diffusion family: they define its samples as much as its weights do."""
    return {"guidance_scale": cfg.guidance_scale, "steps": cfg.sample_steps, "eta": cfg.eta, "sampler": cfg.sampler}


def read_samples(ctx: Context, family: str, manifest: dict | None = None) -> dict[str, torch.Tensor]:
    """A family's samples, checked against the prepared data (`manifest`, read if not given): images (N, C, S, S)
    float32 of the data's image shape, finite; labels (N,) int64, -1 (unconditional) or a class; seeds (N,) int64.
    Anything else is refused with one line naming the file and the tensor."""
    manifest = read_manifest(ctx.paths.prepared) if manifest is None else manifest
    path = ctx.paths.samples / f"{family}.safetensors"
    t, _ = read_safetensors(path, "samples", f"{STAGE} {family}")
    for key in ("images", "labels", "seeds"):
        if key not in t:
            raise GenlabError(f"{path}: no tensor {key!r} (expected images, labels, seeds); "
                              f"rerun `genlab {STAGE} {family}`")
    images, k = t["images"], manifest["num_classes"]
    n = images.shape[0] if images.dim() else 0
    shape = (n, *manifest["image_shape"])
    why = {"images": f"the prepared data's image_shape {manifest['image_shape']}", "labels": "one per image",
           "seeds": "one per image"}
    expected = {"images": (torch.float32, shape), "labels": (torch.int64, (n,)), "seeds": (torch.int64, (n,))}
    for key, (dtype, want) in expected.items():
        if t[key].dtype != dtype or tuple(t[key].shape) != want:
            raise GenlabError(f"{path}: {key}: expected {describe(dtype, want)} ({why[key]}), got "
                              f"{describe(t[key].dtype, t[key].shape)}; rerun `genlab {STAGE} {family}`")
    if n < 2 or not bool(images.isfinite().all()):
        raise GenlabError(f"{path}: images: expected at least 2 images, all finite; "
                          f"rerun `genlab {STAGE} {family}`")
    labels = t["labels"]
    if not (bool((labels == -1).all()) or bool(((labels >= 0) & (labels < k)).all())):
        raise GenlabError(f"{path}: labels: expected all -1 (unconditional) or all in [0, {k}), got "
                          f"[{int(labels.min())}, {int(labels.max())}]; rerun `genlab {STAGE} {family}`")
    return t


def sample_labels(manifest: dict, cfg: SampleConfig) -> torch.Tensor:
    """n_per_class images of each class; unlabelled data: as many as the test split (the data floor's count),
    all label 0, which unconditional models ignore."""
    if manifest["num_classes"]:
        return torch.arange(manifest["num_classes"]).repeat_interleave(cfg.n_per_class)
    return torch.zeros(manifest["counts"]["test"], dtype=torch.long)


def sample_family(family: str, sampler: object, labels: torch.Tensor, cfg: SampleConfig, kwargs: dict,
                  out: Path) -> dict:
    """Generate, then write `<family>.safetensors` (images, labels, seeds) and a `<family>.png` grid."""
    start = time.perf_counter()
    seeds = image_seeds(cfg.seed, family, len(labels))
    images = generate(sampler, labels, seeds, cfg.batch_size, **kwargs)
    fam_labels = labels if sampler.conditional else torch.full_like(labels, -1)
    atomic_write(out / f"{family}.safetensors", save({
        "images": images.contiguous(), "labels": fam_labels.contiguous(),
        "seeds": torch.tensor(seeds, dtype=torch.int64)}))
    save_class_grid(images, labels, out / f"{family}.png", per_class=10)  # unlabelled data: the first 64
    seconds = time.perf_counter() - start
    log.info("sampled %d images from %s in %.1f s", len(seeds), family, seconds)
    return {"n": len(seeds), "conditional": sampler.conditional, "seconds": round(seconds, 3), **kwargs}


def run(cfg: SampleConfig, ldm: LDMConfig, pixel: PixelConfig, ctx: Context, family: str) -> dict:
    """Sample `family`: samples/<family>.safetensors (images, labels, seeds), <family>.png (a grid) and
    <family>.json (base seed, count, settings; the manifest `evaluate` reads), written in that order."""
    manifest = read_manifest(ctx.paths.prepared)
    labels = sample_labels(manifest, cfg)
    dirs = {f: ctx.paths.model(f) for f in ("vae", family)} if family == "ldm" else {family: ctx.paths.model(family)}
    # the snapshot is loaded (a missing or damaged one refused) before the run opens or anything is written
    sampler = load_sampler(family, dirs, ctx.device)
    kwargs = diffusion_settings({"ldm": ldm, "pixel": pixel}[family]) if family in DIFFUSION else {}
    stage = f"{STAGE}_{family}"
    with stage_run(ctx, stage, cfg, manifest["content_hash"]) as mlrun:
        ctx.paths.samples.mkdir(parents=True, exist_ok=True)
        summary = sample_family(family, sampler, labels, cfg, kwargs, ctx.paths.samples)
        # timings go to metrics/sample_<family>.json, not into the output: same params, same bytes
        record = {"base_seed": cfg.seed, **{k: v for k, v in summary.items() if k != "seconds"}}
        atomic_write(ctx.paths.samples / f"{family}.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        metrics = {"seconds": summary["seconds"], "n": summary["n"]}
        mlrun.log_metrics(metrics)
        mlrun.log_artifact(ctx.paths.samples / f"{family}.png", "grids")
    write_metrics(ctx, stage, metrics)
    return summary
