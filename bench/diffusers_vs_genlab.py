"""genlab's diffusion vs a diffusers UNet2DModel + DDPMScheduler, at equal training wall-clock.

The claim measured: at equal training wall-clock on the same data and resolution, genlab's diffusion reaches at
most half the FID/floor ratio of a diffusers UNet2DModel trained by diffusers' standard recipe, i.e.
(best genlab arm FID/floor) / (diffusers FID/floor) <= 0.5.

Arms, trained one after another in this process, each for `--seconds` of wall-clock (the clock is read after
every optimizer step, so an arm overshoots by at most one step), with the same seed, the same batches of
genlab's prepared train split and torch threads fixed (`--threads`, 2):
  genlab-latent    genlab's LDM as params.yaml's `ldm` section configures it: genlab's U-Net on the VAE's scaled
                   latents (z ~ q(z|x) drawn fresh each step), genlab's loss, label dropout and EMA. The frozen
                   VAE's own training time is not in the budget; the JSON reports it (vae_train_seconds).
  genlab-pixel     the same on 16x16 pixels (`pixel` section).
  diffusers-pixel  diffusers' `train_unconditional` recipe, made class-conditional: UNet2DModel (DownBlock2D,
                   attention at the lowest resolution, layers_per_block 2), num_class_embeds = classes + 1 (the
                   last is the null label, dropped in with the same p_uncond), DDPMScheduler (1000 steps, linear),
                   AdamW (lr 1e-4, betas (0.95, 0.999), weight decay 1e-6), grad-norm clip 1, EMAModel (warm-up,
                   inv_gamma 1, power 3/4, max decay 0.9999), genlab's batch size (`pixel.batch_size`, 64). The
                   recipe's cosine schedule with 500 warm-up steps is left out: on a CPU the whole budget is a few
                   hundred steps, so the learning rate is the constant 1e-4.
Sampling: genlab arms save their EMA weights as a snapshot (the keys `train_diffusion` writes) and sample through
`genlab.sampling.DiffusionSampler`, exactly as the `sample` stage does (its sampler, eta and guidance scale from
params.yaml; `--steps` DDIM steps). The diffusers arm samples its EMA weights with DDIMScheduler (from the
training scheduler's config, diffusers' defaults: leading spacing, x0 clipped to [-1, 1]) with the same number of
steps and guidance eps_u + w (eps_c - eps_u), w = `pixel.guidance_scale`. Every arm draws n_per_class images of
each class, image i starting from the same per-image seeded noise (pixel arms share their starting noise).
Scoring is the `evaluate` stage's: `genlab.metrics.fid.compute_tier` against the train split in genlab-evaluator
features (`evaluate` section's KID subset and k), the data floor = FID(test split vs train split), and
`fid.class_accuracy` of the samples.

Run (needs a project where `dvc repro` has written data/prepared, models/evaluator and models/vae):
    .venv/bin/python bench/diffusers_vs_genlab.py --project . --seconds 180
It prints one markdown table (one row per arm and the data floor) and the ratio of ratios against the bar, and
writes the same numbers as JSON to --out. diffusers is a test-only dependency: only this bench imports it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from torch.nn import functional as F

from genlab.checkpoint import save_snapshot
from genlab.config import DiffusionConfig, Params, load_params
from genlab.data import splits
from genlab.diffusion.loss import drop_labels
from genlab.metrics import fid
from genlab.models.vae import reparameterize
from genlab.paths import Paths
from genlab.randomness import batch_indices, generator
from genlab.sampling import DiffusionSampler, generate, image_seeds, load_vae, seeded_normal
from genlab.stages.common import Context
from genlab.stages.diffusion_training import build_step
from genlab.stages.train_vae import encode

ARMS = ("genlab-latent", "genlab-pixel", "diffusers-pixel")
BAR = 0.5  # the claim: best genlab FID/floor <= BAR * diffusers FID/floor
log = logging.getLogger("bench")

StepFn = Callable[[torch.Tensor, torch.Generator], float]  # (batch indices, step generator) -> loss
Sample = Callable[[torch.Tensor, list[int]], torch.Tensor]  # (labels, seeds) -> images in [-1, 1]


@dataclass(frozen=True)
class Bench:
    """What every arm shares: the project, its params and data, the budget and the sampling request."""

    paths: Paths
    params: Params
    train: splits.Split
    test: splits.Split
    num_classes: int
    device: torch.device
    seconds: float
    steps: int
    threads: int
    labels: torch.Tensor  # (N,) class-balanced: n_per_class of each class
    seeds: list[int]  # (N,) per-image seeds, the same for every arm

    @property
    def evaluator(self) -> Path:
        return self.paths.model("evaluator") / "model.safetensors"


@dataclass(frozen=True)
class Budget:
    """What an arm did with its wall-clock budget."""

    images_seen: int
    train_seconds: float  # >= the budget: the clock is read after each step
    final_loss: float  # mean of the last 10 steps
    median_step_seconds: float  # robust to a slow first step and to other load on the machine
    first_step_seconds: float
    max_step_seconds: float
    load_average: float  # 1-minute load average when the arm started (this bench's own threads included)


@dataclass(frozen=True)
class Trained:
    """An arm after its budget: how much it trained and how it samples."""

    sample: Sample
    parameters: int
    budget: Budget
    settings: dict[str, Any]


def train_for(arm: str, step: StepFn, bench: Bench, batch_size: int) -> Budget:
    """Run `step` on genlab's batches (batch_indices / generator of (seed, "bench", step)) until `bench.seconds`
    of wall-clock have passed, checked after each optimizer step."""
    seed, n = bench.params.seed, len(bench.train)
    load = os.getloadavg()[0]
    if load > bench.threads + 0.5:  # the bench alone keeps it near its thread count
        log.warning("%s: load average %.1f with %d bench threads: other processes use the CPU, so the images "
                    "seen (and every ratio) will not match an idle run; on a shared machine try --threads 1",
                    arm, load, bench.threads)
    losses: list[float] = []
    times: list[float] = []
    start = last_log = time.perf_counter()
    while (now := time.perf_counter()) - start < bench.seconds:
        k = len(losses)
        losses.append(step(batch_indices(seed, k, n, batch_size), generator(seed, "bench", "step", k)))
        times.append(time.perf_counter() - now)
        if now - last_log >= 30:
            log.info("%s: %d images seen, %.0f s", arm, (k + 1) * batch_size, now - start)
            last_log = now
    tail = losses[-10:]
    b = Budget(images_seen=len(losses) * batch_size, train_seconds=time.perf_counter() - start,
               final_loss=sum(tail) / len(tail), median_step_seconds=sorted(times)[len(times) // 2],
               first_step_seconds=times[0], max_step_seconds=max(times), load_average=load)
    log.info("%s: trained on %d images in %.1f s (%.0f img/s; median step %.3f s), loss %.4f", arm, b.images_seen,
             b.train_seconds, b.images_seen / b.train_seconds, b.median_step_seconds, b.final_loss)
    return b


def genlab_arm(bench: Bench, space: str) -> Trained:
    """genlab's `train_diffusion` step for `space` ("latent" or "pixel"), under a wall-clock budget, sampled
    through `DiffusionSampler` from a snapshot with the config `train_diffusion` writes."""
    cfg: DiffusionConfig = bench.params.ldm if space == "latent" else bench.params.pixel
    device, train = bench.device, bench.train
    extra: dict[str, Any] = {"space": space}
    vae_dir = bench.paths.model("vae") if space == "latent" else None
    if vae_dir is not None:
        vae, vae_cfg = load_vae(vae_dir, device)
        scale = float(vae_cfg["latent_scale"])
        mean, logvar = encode(vae, train.images, device)
        extra["latent_scale"] = scale

        def x0_batch(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            eps = torch.randn(mean[idx].shape, generator=g)
            return reparameterize(mean[idx], logvar[idx], eps) * scale  # scaled latents, unit variance
        shape = list(mean.shape[1:])
    else:
        extra["latent_scale"] = 1.0

        def x0_batch(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return train.images[idx]
        shape = list(train.images.shape[1:])

    stage = "train_ldm" if space == "latent" else "train_pixel"
    # the stage's own builder: the same initialisation, optimizer, lr schedule, conditioning, loss, clipping and EMA
    ctx = Context(paths=bench.paths, seed=bench.params.seed, device=device, compute=bench.params.compute)
    run = build_step(stage, cfg, ctx, shape, bench.num_classes, "digits", [], x0_batch, train.labels)
    network, unet, ema = run.network, run.unet, run.ema
    batch = min(cfg.batch_size, len(train))

    def step(idx: torch.Tensor, g: torch.Generator) -> float:
        loss = run.step(idx, g)["loss"]
        run.trainable.step += 1  # what `training.train` does after each step
        return float(loss)

    budget = train_for(f"genlab-{space}", step, bench, batch)
    snapshot_cfg = {"network": network, "timesteps": cfg.timesteps, "schedule": cfg.schedule,
                    "prediction": cfg.prediction, "conditioning": cfg.conditioning, "latent_shape": shape,
                    "source": "digits", **extra}  # main() refuses any other data source
    with tempfile.TemporaryDirectory() as tmp:
        save_snapshot(ema, Path(tmp) / "model.safetensors", snapshot_cfg)
        sampler = DiffusionSampler(Path(tmp), vae_dir, device)
    settings = {"sampler": cfg.sampler, "steps": bench.steps, "eta": cfg.eta, "guidance_scale": cfg.guidance_scale}

    def sample(labels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        return generate(sampler, labels, seeds, bench.params.sample.batch_size, **settings)
    extra_cost = {"vae_train_seconds": vae_seconds(bench.paths.metrics("train_vae"))} if vae_dir is not None else {}
    return Trained(sample, sum(p.numel() for p in unet.parameters()), budget,
                   {**settings, "lr": cfg.lr, "batch_size": batch, "network": network, **extra_cost})


def vae_seconds(path: Path) -> float | None:
    """The frozen VAE's own training time (its stage's metrics file): spent before the latent arm's budget,
    and not counted in it."""
    return float(json.loads(path.read_text())["train_seconds"]) if path.is_file() else None


def diffusers_unet(bench: Bench, channels: tuple[int, ...], layers: int) -> UNet2DModel:
    """diffusers' train_unconditional U-Net shape cut to the image: DownBlock2D levels, attention at the lowest
    resolution (and UNetMidBlock2D's), class embeddings with one extra row for the null label."""
    c, size = bench.train.images.shape[1], bench.train.images.shape[-1]
    n = len(channels)
    return UNet2DModel(sample_size=size, in_channels=c, out_channels=c, layers_per_block=layers,
                       block_out_channels=channels,
                       down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
                       up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
                       num_class_embeds=bench.num_classes + 1)


@torch.no_grad()
def diffusers_ddim(model: UNet2DModel, scheduler: DDIMScheduler, labels: torch.Tensor, seeds: list[int],
                   steps: int, scale: float, null: int) -> torch.Tensor:
    """DDIM as diffusers' pipelines do it, with classifier-free guidance eps_u + w (eps_c - eps_u), starting
    from genlab's per-image seeded noise: (N, C, S, S) in [-1, 1]."""
    model.eval()
    device = next(model.parameters()).device
    shape = (model.config.in_channels, model.config.sample_size, model.config.sample_size)
    x = seeded_normal(seeds, shape, "latent").to(device)
    y = labels.to(device)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        tt = t.to(device).expand(len(x))
        if scale == 1.0:
            eps = model(x, tt, class_labels=y).sample
        else:
            out = model(torch.cat([x, x]), torch.cat([tt, tt]), class_labels=torch.cat([y, torch.full_like(y, null)]))
            eps_c, eps_u = out.sample.chunk(2)
            eps = eps_u + scale * (eps_c - eps_u)
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x.clamp(-1, 1).cpu()


def diffusers_arm(bench: Bench, channels: tuple[int, ...], layers: int) -> Trained:
    """diffusers' train_unconditional recipe (module docstring), class-conditional, under the same budget."""
    pixel, device, train = bench.params.pixel, bench.device, bench.train
    torch.manual_seed(bench.params.seed)
    model = diffusers_unet(bench, channels, layers).to(device)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    T = noise_scheduler.config.num_train_timesteps
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    null = bench.num_classes
    batch = min(pixel.batch_size, len(train))  # 64: genlab's

    def step(idx: torch.Tensor, g: torch.Generator) -> float:
        model.train()
        x0 = train.images[idx].to(device)
        y = drop_labels(train.labels[idx], pixel.p_uncond, null, g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, T, (len(x0),), generator=g).to(device)
        pred = model(noise_scheduler.add_noise(x0, noise, t), t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.step(model.parameters())
        return loss.item()

    budget = train_for("diffusers-pixel", step, bench, batch)
    ema_model = copy.deepcopy(model)
    ema.copy_to(ema_model.parameters())
    ddim = DDIMScheduler.from_config(noise_scheduler.config)
    w = pixel.guidance_scale

    def sample(labels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        b = bench.params.sample.batch_size
        return torch.cat([diffusers_ddim(ema_model, ddim, labels[i : i + b], seeds[i : i + b], bench.steps, w, null)
                          for i in range(0, len(seeds), b)])
    settings = {"sampler": "ddim (diffusers DDIMScheduler)", "steps": bench.steps, "eta": 0.0, "guidance_scale": w,
                "lr": 1e-4, "batch_size": batch, "block_out_channels": list(channels), "layers_per_block": layers,
                "ema_decay_final": ema.cur_decay_value}
    return Trained(sample, sum(p.numel() for p in model.parameters()), budget, settings)


def score(bench: Bench, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The evaluate stage's numbers: FID/KID/precision/recall vs the train split, and class accuracy."""
    ev = bench.params.evaluate
    m = fid.compute_tier(images, bench.train.images, fid.make_extractor(bench.evaluator, None),
                         kid_subset_size=ev.kid_subset_size, pr_neighbourhood=ev.pr_neighbourhood,
                         batch_size=ev.batch_size, cuda=bench.device.type == "cuda")
    m["class_accuracy"] = fid.class_accuracy(bench.evaluator, images, labels)
    m["n"] = len(images)
    return m


def run_arm(bench: Bench, arm: str, args: argparse.Namespace) -> dict[str, Any]:
    if arm == "diffusers-pixel":
        trained = diffusers_arm(bench, tuple(args.diffusers_channels), args.diffusers_layers)
    else:
        trained = genlab_arm(bench, arm.removeprefix("genlab-"))
    start = time.perf_counter()
    images = trained.sample(bench.labels, bench.seeds)
    sample_seconds = time.perf_counter() - start
    log.info("%s: sampled %d images in %.1f s", arm, len(images), sample_seconds)
    b = trained.budget
    return {**score(bench, images, bench.labels), **asdict(b), "images_per_second": b.images_seen / b.train_seconds,
            "parameters": trained.parameters, "sample_seconds": sample_seconds, "settings": trained.settings}


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ratio of ratios: best genlab arm's FID/floor over the diffusers arm's, against the bar."""
    genlab = {a: r["fid_ratio"] for a, r in results.items() if a.startswith("genlab-")}
    if not genlab or "diffusers-pixel" not in results:
        return {"best_genlab_arm": None, "ratio_of_ratios": None, "bar": BAR, "meets_bar": None}
    best = min(genlab, key=genlab.__getitem__)
    ratio = genlab[best] / results["diffusers-pixel"]["fid_ratio"]
    return {"best_genlab_arm": best, "ratio_of_ratios": ratio, "bar": BAR, "meets_bar": bool(ratio <= BAR)}


def table(floor: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    """One markdown row per arm and the floor; counts as integers with thousands separators."""
    floats = ["fid", "fid_ratio", "kid_mean", "precision", "recall", "class_accuracy"]
    counts = {"n": ",.0f", "images_seen": ",.0f", "images_per_second": ",.1f", "parameters": ",.0f",
              "train_seconds": ".1f", "sample_seconds": ".1f"}
    rows = {"data floor (test vs train)": floor, **results}
    df = pd.DataFrame([{**{c: r.get(c) for c in floats},
                        **{c: "" if r.get(c) is None else format(r[c], f) for c, f in counts.items()}}
                       for r in rows.values()], index=list(rows))
    return df.to_markdown(floatfmt=".4g", colalign=("left",) + ("right",) * len(df.columns))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, default=Path("."), help="a genlab project where `dvc repro` has run")
    p.add_argument("--seconds", type=float, default=180.0, help="training wall-clock budget per arm")
    p.add_argument("--steps", type=int, default=50, help="DDIM sampling steps, every arm")
    p.add_argument("--n-per-class", type=int, default=36, help="samples of each class scored per arm")
    p.add_argument("--out", type=Path, default=Path("bench/diffusers_vs_genlab.json"), help="JSON results")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for the whole run")
    p.add_argument("--diffusers-channels", type=lambda s: [int(c) for c in s.split(",")], default=[64, 128, 128],
                   help="UNet2DModel block_out_channels; the last level gets attention")
    p.add_argument("--diffusers-layers", type=int, default=2, help="UNet2DModel layers_per_block")
    args = p.parse_args(argv)
    if args.seconds <= 0 or min(args.steps, args.n_per_class, args.threads) < 1:
        p.error("--seconds must be > 0; --steps, --n-per-class and --threads >= 1")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        p.error(f"unknown arms {unknown}: expected a subset of {list(ARMS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    paths = Paths(args.project.resolve())
    params = load_params(paths.root / "params.yaml")
    manifest = splits.read_manifest(paths.prepared)
    if manifest.get("source", "digits") != "digits":  # one label per image: the diffusers arm's class embedding
        raise SystemExit(f"{paths.prepared}: source {manifest['source']!r}; this bench compares on digits only")
    k = int(manifest["num_classes"])
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    labels = torch.arange(k).repeat_interleave(args.n_per_class)
    bench = Bench(paths=paths, params=params, train=splits.read(paths.prepared, "train"),
                  test=splits.read(paths.prepared, "test"), num_classes=k, device=device, seconds=args.seconds,
                  steps=args.steps, threads=args.threads, labels=labels,
                  seeds=image_seeds(params.sample.seed, "bench", len(labels)))
    log.info("budget %.0f s per arm, %d DDIM steps, %d samples per arm, arms %s, device %s, %d threads",
             args.seconds, args.steps, len(labels), args.arms, device, args.threads)

    floor = score(bench, bench.test.images, bench.test.labels)
    floor["fid_ratio"] = 1.0
    results: dict[str, dict[str, Any]] = {}
    for arm in args.arms:
        r = run_arm(bench, arm, args)
        r["fid_ratio"] = r["fid"] / floor["fid"] if floor["fid"] > 0 else float("nan")
        results[arm] = r
        log.info("%s: FID %.3f (%.2fx floor), class accuracy %.3f", arm, r["fid"], r["fid_ratio"],
                 r["class_accuracy"])

    summary = summarize(results)
    print(table(floor, results))
    if summary["ratio_of_ratios"] is not None:
        verdict = "meets" if summary["meets_bar"] else "misses"
        print(f"\n(best genlab FID/floor: {summary['best_genlab_arm']}) / (diffusers FID/floor) = "
              f"{summary['ratio_of_ratios']:.3f}: {verdict} the bar (<= {BAR})")
    out = {"project": str(paths.root), "seconds_per_arm": args.seconds, "steps": args.steps,
           "n_per_class": args.n_per_class, "threads": args.threads, "device": str(device), "seed": params.seed,
           "sample_seed": params.sample.seed, "floor": floor, "arms": results, **summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    log.info("wrote %s", args.out)
    return out


if __name__ == "__main__":
    main()
