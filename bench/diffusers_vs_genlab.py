"""genlab's diffusion vs a fairly tuned diffusers UNet2DModel: FID over training wall-clock, and time to the floor.

The claims measured (issue 11):
  - time to the floor: the training wall-clock at which a model's FID first reaches 1.1x the data floor (mean over
    --sample-seeds sample sets), genlab's latent arm (its VAE's training time included) against the best tuned
    peer: genlab <= 0.5x the peer's time;
  - at 300 s, genlab's excess over the floor (FID/floor - 1) <= 0.25x the best tuned peer's.
The data floor is FID(test split vs train split): real held-out images, the limit. Below it FID cannot rank
models, and a ratio under 1 can mean copied training images, so every row carries the data-copying statistic Z_U
(Meehan et al. 2020; < -3 flags copying) and the median nearest-neighbour distance ratio to the train split.
Every FID is also taken by a second judge with no network in it: FID on the raw pixels (each image a vector of its
uint8 values / 255, images of at most PIXEL_JUDGE_DIMS values), over its own floor. A model the evaluator's features
favour or penalise for reasons of their own would show a different ratio there.

Arms, trained one after another in this process on the same prepared data, each for `--seconds` of wall-clock
(the clock is read after every optimizer step), torch threads fixed (`--threads`):
  genlab-latent   genlab's LDM as params.yaml's `ldm` section configures it, built by the stage's own builder
                  (`diffusion_training.build_step`): its U-Net on the VAE's scaled latents, its loss, lr schedule,
                  condition dropout and EMA.
  genlab-pixel    the same on pixels (`pixel` section).
  genlab-<space>@PROJECT  the same with the params (and VAE, and its training time) of another project on the same
                  prepared data: genlab tuned for a budget in a copy of the project (`dvc exp run -S ...` there) runs
                  beside the default and the peers in one process; its row records the params it overrides.
  peer:<recipe>   a class-conditional diffusers UNet2DModel (DownBlock2D levels, attention at the lowest,
                  num_class_embeds = classes + 1, the last the null label dropped in with `pixel.p_uncond`),
                  trained as diffusers' examples train it (DDPMScheduler noise, MSE on eps or on v as the
                  scheduler's `prediction_type` says, AdamW, grad-norm clip 1, EMAModel), with one of RECIPES. A
                  recipe's EMA decays are kept side by side in one run (each its own shadow copy): the EMA is tuned
                  without retraining. One EMA update per step is on the clock, the other decays' off it.
RECIPES: `example` is diffusers' train_unconditional recipe (6.5 M parameters, lr 1e-4, EMA 0.9999 with warm-up:
made for GPUs and long runs, kept for reference); `new-user` the setting a new user finds in an afternoon (1.1 M
parameters, AdamW lr 1e-3, cosine schedule, batch 128, short EMA); the others move one of its knobs (lr, width,
depth, noise schedule, batch, prediction target, lr schedule): the sweep; `-cos` recipes anneal the lr to 0 over
the arm's time budget (the cosine of genlab's `lr_schedule`, on the arm's own training clock). `v` trains
diffusers' v-prediction (Salimans & Ho 2022), the setting that took genlab's own pixel U-Net from 427x to 8.8x the
floor at the same 20,000 images. The
`<recipe>-noclip` twin of each turns off DDIMScheduler's default `clip_sample` (it clips the predicted x0 but steps
with the unclipped eps; genlab's DDIM does not clip): on digits it takes v recipes 3x closer to the floor and
leaves eps recipes at 196-264x (clipped, earlier runs: 22-31x; their x0 is unbounded near t = T on the cosine
schedule), so the fair peer is the better of the pair. `v-genlab` is genlab's pixel settings on diffusers' U-Net.
Each peer recipe gets the same treatment as genlab's params: the best of the sweep at the budget is the peer the
claims compare with.

Every `--every` seconds of total training time (and at the end) an arm's EMA weights are copied (off the clock);
the latent arm's total includes its VAE's training, so its marks fall at the same total times as a peer's, and the
300-s excess of every arm is read at 300 s of total training. After
training, each copy samples `--sample-seeds` sets of n_per_class images of each class (per-image seeded noise,
the same for every arm), with DDIM (`--steps`, eta 0, guidance `w` of the arm's section, diffusers' DDIMScheduler
for the peer), and each set is scored as the `evaluate` stage scores: FID, KID, precision/recall against the train
split in genlab-evaluator features, Z_U, and the evaluator's class accuracy. The first set of each mark is saved as
a grid (a row per class) in the folder named after --out, beside the test split's (`data_test.png`).

Run (a project where `dvc repro` has written data/prepared, models/evaluator and models/vae):
    .venv/bin/python bench/diffusers_vs_genlab.py --project . --seconds 600 --every 60 \
        --arms genlab-latent,peer:new-user,peer:lr-2e-3,...
`--budget ARM=SECONDS[/EVERY]` gives one arm its own budget and mark interval (a slow peer trained long enough to
reach the floor), `ARM=SECONDS@T1,T2,...` marks at those total times instead (fewer marks on a long run: each costs
minutes of sampling). It prints one markdown row per arm and mark, and the time-to-floor and 300-s excess claims of
each genlab-latent arm against the best peer (a bound when only genlab reaches the floor: "below" genlab's time over
the peer's last mark), and writes JSON to --out, after every arm as well (`"complete": false` until the last).
diffusers is a test-only dependency: only this bench imports it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from torch.nn import functional as F

from genlab.checkpoint import save_snapshot
from genlab.compute import adam, resolve_precision
from genlab.config import DiffusionConfig, Params, flatten, load_params
from genlab.data import sources, splits
from genlab.data.store import to_uint8
from genlab.device import describe
from genlab.diffusion.loss import drop_labels
from genlab.errors import GenlabError
from genlab.images import save_class_grid
from genlab.memory import fix_mmap_threshold, heap_for_steps, set_steps_threshold
from genlab.metrics import fid
from genlab.metrics.reference import ReferenceStats, compute_reference, nearest_distances, score_against
from genlab.models import layers
from genlab.paths import Paths
from genlab.randomness import batch_indices, generator
from genlab.sampling import DiffusionSampler, generate, image_seeds, load_vae, seeded_normal
from genlab.stages.common import Context
from genlab.stages.diffusion_training import build_step, latent_x0
from genlab.stages.evaluate import accuracies
from genlab.stages.train_vae import encode
from genlab.training import learning_rate

GENLAB_ARMS = ("genlab-latent", "genlab-pixel")
FLOOR_FACTOR = 1.1  # "reaches the floor": mean FID <= 1.1x the data floor
EXCESS_AT = 300.0  # seconds: the excess claim's budget
TIME_BAR, EXCESS_BAR = 0.5, 0.25  # genlab's time to the floor <= 0.5x the peer's; its excess at 300 s <= 0.25x
GRID_CLASSES, GRID_PER_CLASS = 12, 8  # a mark's sample grid: a row per class, up to 12 classes spread over all
PIXEL_JUDGE_DIMS = 4096  # the pixel judge's largest image (C*S*S values; a 64x64 grey image): its covariance is D x D
log = logging.getLogger("bench")

StepFn = Callable[[torch.Tensor, torch.Generator, float], float]  # (batch indices, step generator, progress) -> loss
Sample = Callable[[torch.Tensor, list[int]], torch.Tensor]  # (labels, seeds) -> images in [-1, 1]
Snapshot = Callable[[], dict[str, Any]]  # -> {variant: a copy of the weights that variant samples with}
Load = Callable[[str, Any], Sample]  # (variant, weights) -> how that copy samples


@dataclass(frozen=True)
class Recipe:
    """A diffusers peer's training setting: UNet2DModel shape, AdamW, noise schedule, batch and EMA decays."""

    channels: tuple[int, ...] = (32, 64, 64)
    layers: int = 1
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine: annealed to 0 over the arm's time budget (genlab's formula)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2  # torch's AdamW default
    schedule: str = "squaredcos_cap_v2"  # diffusers' name for the cosine schedule of alpha_bar
    batch_size: int = 128
    emas: tuple[float, ...] = (0.99, 0.995, 0.999)  # per-step decays, kept side by side
    ema_warmup: bool = False  # diffusers' EMA warm-up (inv_gamma 1, power 3/4), as its examples use
    prediction: str = "epsilon"  # the schedulers' prediction_type: epsilon | v_prediction
    film: bool = False  # the embedding as scale and shift of each ResNet block's norm (genlab's FiLM), not a bias
    clip_sample: bool = True  # DDIMScheduler's default: clips predicted x0 to [-1, 1], but not the eps it steps with


NEW_USER = Recipe()
V_LR_2E3_COS = replace(NEW_USER, prediction="v_prediction", lr=2e-3, lr_schedule="cosine")  # the lr sweep's best
# genlab's pixel settings on diffusers' U-Net: v, linear schedule, batch 64, lr 5e-4 without weight decay,
# FiLM, no clipping (genlab's DDIM does not clip), EMA decays about its 20,000-image half-life (0.998 at 64)
V_GENLAB = Recipe(prediction="v_prediction", schedule="linear", batch_size=64, lr=5e-4, weight_decay=0.0,
                  film=True, clip_sample=False, emas=(0.995, 0.998, 0.999))
RECIPES = {
    "example": Recipe(channels=(64, 128, 128), layers=2, lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6,
                      schedule="linear", batch_size=64, emas=(0.9999,), ema_warmup=True),
    "new-user": NEW_USER,
    "lr-5e-4": replace(NEW_USER, lr=5e-4),
    "lr-2e-3": replace(NEW_USER, lr=2e-3),
    "wide": replace(NEW_USER, channels=(64, 128, 128)),
    "deep": replace(NEW_USER, layers=2),
    "linear": replace(NEW_USER, schedule="linear"),
    "batch-64": replace(NEW_USER, batch_size=64),
    "v": replace(NEW_USER, prediction="v_prediction"),
    "v-lr-2e-3": replace(NEW_USER, prediction="v_prediction", lr=2e-3),  # v with the best eps peer's lr
    "v-linear": replace(NEW_USER, prediction="v_prediction", schedule="linear"),  # genlab pixel's schedule
    "v-film": replace(NEW_USER, prediction="v_prediction", film=True),
    "v-batch-64": replace(NEW_USER, prediction="v_prediction", batch_size=64),  # v with the best eps peer's batch
    # v annealed over the budget, as genlab's ldm.lr_schedule cosine anneals over its train_images (the lr a short
    # run can afford is higher when it decays: 2e-3 as well)
    "v-cos": replace(NEW_USER, prediction="v_prediction", lr_schedule="cosine"),
    "v-lr-2e-3-cos": V_LR_2E3_COS,
    # width and depth around the best of the lr sweep (v, lr 2e-3 annealed): at 300 s a narrower U-Net sees more
    # images, a wider or deeper one learns more from each
    "v-lr-2e-3-cos-narrow": replace(V_LR_2E3_COS, channels=(16, 32, 32)),
    "v-lr-2e-3-cos-narrower": replace(V_LR_2E3_COS, channels=(8, 16, 16)),
    "v-lr-2e-3-cos-narrowest": replace(V_LR_2E3_COS, channels=(4, 8, 8)),
    "v-lr-4e-3-cos-narrower": replace(V_LR_2E3_COS, channels=(8, 16, 16), lr=4e-3),  # a small U-Net, a larger lr
    "v-lr-2e-3-cos-wide": replace(V_LR_2E3_COS, channels=(64, 128, 128)),
    "v-lr-2e-3-cos-deep": replace(V_LR_2E3_COS, layers=2),
    "v-genlab": V_GENLAB,  # the best shapes peer at 300 s; flat from 900 s at a constant lr
    # the same annealed to 0 over a long budget from twice its lr (the digits sweep's annealed best doubled it too)
    "v-genlab-cos": replace(V_GENLAB, lr=1e-3, lr_schedule="cosine"),
}
# every recipe with the sampler's x0 clipping off (`<recipe>-noclip`): it takes v recipes 3x closer to the floor and
# eps recipes (unbounded x0 near t = T on the cosine schedule) far away, so the fair peer is the better of each pair
RECIPES |= {f"{name}-noclip": replace(r, clip_sample=False) for name, r in list(RECIPES.items()) if r.clip_sample}


@dataclass(frozen=True)
class ArmBudget:
    """An arm's training budget (seconds of its own) and its marks: every `every` s of total training, or at the
    total times `at`."""

    seconds: float
    every: float
    at: tuple[float, ...] = ()

    def mark_after(self, total: float) -> float:
        """The first mark strictly after `total` seconds of total training: the next of `at` when given, else the
        next multiple of `every`; inf when `at` has none left (the end of the budget still marks)."""
        if self.at:
            return min((t for t in self.at if t > total), default=math.inf)
        return self.every * (math.floor(total / self.every) + 1)


@dataclass(frozen=True)
class Bench:
    """What every arm shares: the project, its params and data, the sampling request and the scoring
    reference (the train split's features and radii, the test split's nearest-neighbour distances, the floor); each
    arm brings its own `ArmBudget`."""

    paths: Paths
    params: Params
    train: splits.Split
    test: splits.Split
    manifest: dict[str, Any]  # the prepared data's: its source and class names
    num_classes: int
    device: torch.device
    steps: int
    threads: int
    labels: torch.Tensor  # (N,) class-balanced: n_per_class of each class
    seed_sets: list[list[int]]  # --sample-seeds lists of N per-image seeds, the same for every arm
    extractor: fid.Extractor
    ref: ReferenceStats
    held_out_nn: torch.Tensor
    floor: dict[str, Any]
    pixel_ref: torch.Tensor | None  # the train split as pixel vectors (the pixel judge's reference); None: too large
    grids: Path  # the folder of sample grids: the test split's, and each arm's per variant and mark

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
    load_average: float  # 1-minute load average when the arm started (this bench's own threads included)


@dataclass
class Mark:
    """The arm's weights after `seconds` of training (`images_seen` images)."""

    seconds: float
    images_seen: int
    weights: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Trained:
    """An arm after its budget: how much it trained, its marks, and how a mark's weights sample."""

    load: Load
    parameters: int
    budget: Budget
    marks: list[Mark]
    settings: dict[str, Any]
    extra_seconds: float = 0.0  # training time spent before the budget (genlab-latent: its VAE's)


def train_for(arm: str, step: StepFn, snapshot: Snapshot, bench: Bench, budget: ArmBudget, batch_size: int,
              off_clock: Callable[[], None] | None = None, offset: float = 0.0) -> tuple[Budget, list[Mark]]:
    """Run `step` on genlab's batches (batch_indices / generator of (seed, "bench", step)) and its progress (the
    fraction of `budget.seconds` spent before it: what a time-annealed lr reads) until `budget.seconds`
    of wall-clock have passed, checked after each optimizer step; `snapshot` at each mark (`budget.mark_after`) on the
    total clock (`offset`, the training spent before this arm's budget, plus this arm's) and at the end,
    so every arm has a mark at the same total times; `off_clock` after every step (the bench's own extra work),
    with the clock stopped."""
    seed, n = bench.params.seed, len(bench.train)
    load = os.getloadavg()[0]
    if load > bench.threads + 0.5:  # the bench alone keeps it near its thread count
        log.warning("%s: load average %.1f with %d bench threads: other processes use the CPU, so the images "
                    "seen (and every time) will not match an idle run", arm, load, bench.threads)
    losses: list[float] = []
    times: list[float] = []
    marks: list[Mark] = []
    clock = 0.0  # training seconds, snapshots excluded
    next_mark = budget.mark_after(offset)  # on the total clock
    with heap_for_steps():  # every arm's steps as `training.train` runs genlab's (genlab.memory)
        while clock < budget.seconds:
            k, t0 = len(losses), time.perf_counter()
            losses.append(step(batch_indices(seed, k, n, batch_size), generator(seed, "bench", "step", k),
                               clock / budget.seconds))
            times.append(time.perf_counter() - t0)
            clock += times[-1]
            if off_clock is not None:
                off_clock()
            if clock + offset >= next_mark or clock >= budget.seconds:
                next_mark = budget.mark_after(clock + offset)
                marks.append(Mark(clock, len(losses) * batch_size, snapshot()))
                log.info("%s: %d images seen, %.0f s, loss %.4f", arm, len(losses) * batch_size, clock,
                         sum(losses[-10:]) / len(losses[-10:]))
    tail = losses[-10:]
    b = Budget(images_seen=len(losses) * batch_size, train_seconds=clock, final_loss=sum(tail) / len(tail),
               median_step_seconds=sorted(times)[len(times) // 2], load_average=load)
    log.info("%s: trained on %d images in %.1f s (%.0f img/s; median step %.3f s), loss %.4f", arm, b.images_seen,
             b.train_seconds, b.images_seen / b.train_seconds, b.median_step_seconds, b.final_loss)
    return b, marks


def arm_project(bench: Bench, arm: str) -> tuple[Paths, Params]:
    """The project whose params (and, for the latent arm, VAE) a genlab arm trains with: the bench's own, or the one
    after the arm's "@" (genlab-latent@PATH: genlab tuned in a copy of the project, e.g. `dvc exp run -S ...`
    there), which must hold the same prepared data as the bench's."""
    _, _, where = arm.partition("@")
    if not where:
        return bench.paths, bench.params
    paths = Paths(Path(where).resolve())
    try:
        params = load_params(paths.root / "params.yaml")
        manifest = splits.read_manifest(paths.prepared)
    except GenlabError as exc:
        raise GenlabError(f"{arm}: {exc}") from None
    if manifest["content_hash"] != bench.manifest["content_hash"]:
        raise GenlabError(f"{arm}: {paths.prepared} holds other data (content_hash {manifest['content_hash']:.12}) "
                         f"than {bench.paths.prepared} ({bench.manifest['content_hash']:.12}): every arm trains on "
                         "the same prepared data")
    return paths, params


def params_overrides(params: Params, base: Params) -> dict[str, Any]:
    """{"section.key": value} where `params` differ from `base`: the `dvc exp run -S` settings of a tuned arm."""
    mine, theirs = flatten(params), flatten(base)
    return {k: v for k, v in mine.items() if theirs.get(k) != v}


def genlab_arm(bench: Bench, arm: str, budget: ArmBudget, paths: Paths, params: Params) -> Trained:
    """genlab's training step for `arm`'s space ("genlab-latent" or "genlab-pixel", @PROJECT or not) from the
    stage's own builder, with the `params` of the project at `paths` (its VAE for the latent arm), under a wall-clock
    budget; each mark's EMA weights sample through `DiffusionSampler` from a snapshot with the config the stage
    writes."""
    space = arm.partition("@")[0].removeprefix("genlab-")  # latent | pixel
    section = "ldm" if space == "latent" else "pixel"  # the params section, and train_<section> its stage
    cfg: DiffusionConfig = getattr(params, section)
    device, train = bench.device, bench.train
    extra: dict[str, Any] = {"space": space}
    vae_dir = paths.model("vae") if space == "latent" else None
    if vae_dir is not None:
        vae, vae_cfg = load_vae(vae_dir, device)
        mean, logvar = encode(vae, train.images, device)
        extra["latent_scale"], x0_batch = latent_x0(cfg.latents, lambda idx: (mean[idx], logvar[idx]), len(mean),
                                                    float(vae_cfg["latent_scale"]))  # the stage's x_0 and scale
        shape = list(mean.shape[1:])
    else:
        extra["latent_scale"] = 1.0

        def x0_batch(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return train.images[idx]
        shape = list(train.images.shape[1:])

    source, names = bench.manifest["source"], sources.class_names(bench.manifest)
    # the stage's compute settings: `compute`, with the section's own precision when it sets one (cli.run_stage)
    ctx = Context(paths=paths, seed=params.seed, device=device,
                  compute=resolve_precision(device, params.compute_for(section)))
    run = build_step(f"train_{section}", cfg, ctx, shape, bench.num_classes, source, names, x0_batch, train.labels)
    batch = min(cfg.batch_size, len(train))

    def step(idx: torch.Tensor, g: torch.Generator, progress: float) -> float:
        loss = run.step(idx, g)["loss"]  # its lr schedule runs over train_images (the stage's), not the clock
        run.trainable.step += 1  # what `training.train` does after each step
        return float(loss)

    def snapshot() -> dict[str, Any]:
        return {"ema": copy.deepcopy(run.ema.state_dict())}

    vae_s = vae_seconds(paths.metrics("train_vae")) if vae_dir is not None else 0.0
    done, marks = train_for(arm, step, snapshot, bench, budget, batch, offset=vae_s)
    snapshot_cfg = {"network": run.network, "timesteps": cfg.timesteps, "schedule": cfg.schedule,
                    "prediction": cfg.prediction, "conditioning": cfg.conditioning, "latent_shape": shape,
                    "source": source, "class_names": names, **extra}  # the config train_diffusion writes
    settings = {"sampler": cfg.sampler, "steps": bench.steps, "eta": cfg.eta, "guidance_scale": cfg.guidance_scale}

    def load(variant: str, weights: Any) -> Sample:
        run.ema.load_state_dict(weights)
        with tempfile.TemporaryDirectory() as tmp:
            save_snapshot(run.ema, Path(tmp) / "model.safetensors", snapshot_cfg)
            sampler = DiffusionSampler(Path(tmp), vae_dir, device)
        return lambda labels, seeds: generate(sampler, labels, seeds, bench.params.sample.batch_size, **settings)

    return Trained(load, sum(p.numel() for p in run.unet.parameters()), done, marks,
                   {**settings, "lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "batch_size": batch,
                    "ema_halflife_images": cfg.ema_halflife_images, "network": run.network, "project": str(paths.root),
                    "params_overrides": params_overrides(params, bench.params)}, extra_seconds=vae_s)


def vae_seconds(path: Path) -> float:
    """The frozen VAE's own training time (its stage's metrics file), spent before the latent arm's budget: time to
    the floor counts it. It was timed when the VAE was trained: retrain it on the bench's machine (`dvc repro
    train_vae --force`) for a total that is fair to the peers, since machines here differ up to 1.8x."""
    if not path.is_file():
        raise GenlabError(f"{path}: not found; the latent arm needs `dvc repro train_vae` first")
    return float(json.loads(path.read_text())["train_seconds"])


def diffusers_unet(bench: Bench, recipe: Recipe) -> UNet2DModel:
    """diffusers' train_unconditional U-Net shape cut to the image: DownBlock2D levels, attention at the lowest
    resolution (and UNetMidBlock2D's), class embeddings with one extra row for the null label; GroupNorm's 32 groups
    (diffusers' default) or fewer where a level is narrower (4 channels: 4 groups)."""
    c, size = bench.train.images.shape[1], bench.train.images.shape[-1]
    n = len(recipe.channels)
    return UNet2DModel(sample_size=size, in_channels=c, out_channels=c, layers_per_block=recipe.layers,
                       block_out_channels=recipe.channels, norm_num_groups=layers.norm_groups(*recipe.channels),
                       resnet_time_scale_shift="scale_shift" if recipe.film else "default",
                       down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
                       up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
                       num_class_embeds=bench.num_classes + 1)


@torch.no_grad()
def diffusers_ddim(model: UNet2DModel, scheduler: DDIMScheduler, labels: torch.Tensor, seeds: list[int],
                   steps: int, scale: float, null: int) -> torch.Tensor:
    """DDIM as diffusers' pipelines do it, with classifier-free guidance eps_u + w (eps_c - eps_u) on the model's
    output (eps, or v for a v-prediction scheduler: the same combination, both are linear in x0 and eps), starting
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


def peer_arm(bench: Bench, name: str, recipe: Recipe, budget: ArmBudget) -> Trained:
    """A diffusers UNet2DModel trained by `recipe` (module docstring), class-conditional, under the budget."""
    pixel, device, train = bench.params.pixel, bench.device, bench.train
    torch.manual_seed(bench.params.seed)
    model = diffusers_unet(bench, recipe).to(device)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=recipe.schedule,
                                    prediction_type=recipe.prediction)
    T = noise_scheduler.config.num_train_timesteps
    # genlab's optimizer builder (fused AdamW), foreach EMA and clipping: the implementations genlab's step uses
    opt = adam(model.parameters(), device, decoupled=True, lr=recipe.lr, betas=recipe.betas,
               weight_decay=recipe.weight_decay)
    warmup = {"use_ema_warmup": True, "inv_gamma": 1.0, "power": 3 / 4} if recipe.ema_warmup else {}
    emas = {f"ema {d:g}": EMAModel(model.parameters(), decay=d, foreach=True, **warmup) for d in recipe.emas}
    first, *others = emas.values()
    null = bench.num_classes
    batch = min(recipe.batch_size, len(train))

    def step(idx: torch.Tensor, g: torch.Generator, progress: float) -> float:
        for group in opt.param_groups:  # a cosine recipe anneals over the time budget, in thousandths of it
            group["lr"] = learning_rate(recipe.lr, recipe.lr_schedule, int(1000 * progress), 1000)
        model.train()
        x0 = train.images[idx].to(device)
        y = drop_labels(train.labels[idx], pixel.p_uncond, null, g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, T, (len(x0),), generator=g).to(device)
        pred = model(noise_scheduler.add_noise(x0, noise, t), t, class_labels=y).sample
        # v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, sec. 4): diffusers' get_velocity
        target = noise if recipe.prediction == "epsilon" else noise_scheduler.get_velocity(x0, noise, t)
        loss = F.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        first.step(model.parameters())  # one EMA on the clock, as a run of this recipe keeps one
        return loss.item()

    def other_emas() -> None:  # the sweep's other decays: the bench's extra work, off the clock
        for ema in others:
            ema.step(model.parameters())

    def snapshot() -> dict[str, Any]:
        return {v: [p.detach().clone() for p in ema.shadow_params] for v, ema in emas.items()}

    done, marks = train_for(f"peer:{name}", step, snapshot, bench, budget, batch, other_emas)
    ddim = DDIMScheduler.from_config(noise_scheduler.config, clip_sample=recipe.clip_sample)
    ema_model, w = copy.deepcopy(model), pixel.guidance_scale

    def load(variant: str, weights: Any) -> Sample:
        with torch.no_grad():
            for p, shadow in zip(ema_model.parameters(), weights, strict=True):
                p.copy_(shadow)
        b = bench.params.sample.batch_size

        @heap_for_steps()  # as genlab's samplers run (genlab.memory)
        def sample(labels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
            return torch.cat([diffusers_ddim(ema_model, ddim, labels[i : i + b], seeds[i : i + b], bench.steps, w,
                                             null) for i in range(0, len(seeds), b)])
        return sample

    settings = {"sampler": "ddim (diffusers DDIMScheduler)", "steps": bench.steps, "eta": 0.0, "guidance_scale": w,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(recipe).items()},
                "final_lr": opt.param_groups[0]["lr"]}  # the last step's: near 0 after a cosine recipe's budget
    return Trained(load, sum(p.numel() for p in model.parameters()), done, marks, settings)


def pixel_vectors(images: torch.Tensor) -> torch.Tensor:
    """The pixel judge's features: (N, C*S*S) float64, each image's uint8 values / 255."""
    return to_uint8(images).flatten(1).double() / 255


def score(bench: Bench, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The evaluate stage's numbers against the train split (FID, KID, precision/recall, copying), its class accuracy
    (every attribute right; with several attributes also each one's, and on shapes the held-out combinations'), and
    the pixel judge's FID."""
    ev = bench.params.evaluate
    m = score_against(images, bench.ref, bench.extractor, kid_subset_size=ev.kid_subset_size,
                      pr_neighbourhood=ev.pr_neighbourhood, batch_size=ev.batch_size,
                      cuda=bench.device.type == "cuda", held_out_nn=bench.held_out_nn)
    m.update(accuracies(bench.evaluator, images, labels, bench.manifest))  # every attribute right (shapes: 4)
    if bench.pixel_ref is not None:
        m["pixel_fid"] = fid.fid_from_features(pixel_vectors(images), bench.pixel_ref)
    return m


SPREAD = ("fid_ratio", "pixel_fid_ratio", "class_accuracy", "copy_z", "nn_ratio", "precision", "recall")


def score_sets(bench: Bench, sample: Sample, grid: Path) -> list[dict[str, Any]]:
    """Each of `bench.seed_sets` sampled and scored, with its FID/floor; the first set's grid saved at `grid`."""
    sets = []
    for i, seeds in enumerate(bench.seed_sets):
        images = sample(bench.labels, seeds)
        if i == 0:
            save_class_grid(images, bench.labels, grid, GRID_PER_CLASS, GRID_CLASSES)
        m = score(bench, images, bench.labels)
        m["fid_ratio"] = m["fid"] / bench.floor["fid"]
        m["pixel_fid_ratio"] = m["pixel_fid"] / bench.floor["pixel_fid"] if "pixel_fid" in m else float("nan")
        sets.append(m)
    return sets


def summarize_sets(sets: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each number over the sets, and min and max of the headline ones."""
    out: dict[str, Any] = {k: statistics.fmean(s[k] for s in sets) for k in sets[0]}
    for k in SPREAD:
        out[f"{k}_min"], out[f"{k}_max"] = min(s[k] for s in sets), max(s[k] for s in sets)
    out["sets"] = len(sets)
    return out


def score_mark(bench: Bench, sample: Sample, grid: Path) -> dict[str, Any]:
    """Every sample set of one mark scored and summarized, the first set's grid saved at `grid`."""
    return summarize_sets(score_sets(bench, sample, grid))


def grid_paths(bench: Bench, arm: str, variant: str, marks: list[Mark]) -> list[Path]:
    """Where an arm's grid for a variant goes at each of `marks`: e.g. <grids>/peer_v_ema_0.99_300s.png (an
    @PROJECT arm's path in the name, every run of characters other than letters, digits, "." and "-" one "_"). Marks
    in the same whole second also carry their images seen (..._171s_41344img.png), so no grid overwrites another."""
    seconds = [f"{m.seconds:.0f}s" for m in marks]
    tags = [t if seconds.count(t) == 1 else f"{t}_{m.images_seen}img" for t, m in zip(seconds, marks, strict=True)]
    return [bench.grids / (re.sub(r"[^\w.-]+", "_", f"{arm}_{variant}_{t}") + ".png") for t in tags]


def run_arm(bench: Bench, arm: str, budget: ArmBudget, project: tuple[Paths, Params] | None = None) -> dict[str, Any]:
    """Train an arm for `budget`'s seconds and marks (a genlab arm with `project`'s params: `arm_project`), then
    score each mark of each of its weight variants: {variant: [row per mark]}."""
    if arm.startswith("peer:"):
        trained = peer_arm(bench, arm.removeprefix("peer:"), RECIPES[arm.removeprefix("peer:")], budget)
    else:
        assert project is not None, f"{arm}: a genlab arm trains with a project's params"
        trained = genlab_arm(bench, arm, budget, *project)
    curves: dict[str, list[dict[str, Any]]] = {}
    grids = {v: grid_paths(bench, arm, v, trained.marks) for v in trained.marks[0].weights}  # every mark's variants
    for i, mark in enumerate(trained.marks):
        scored: list[tuple[Any, dict[str, Any]]] = []  # (weights, row) of this mark's variants scored so far
        for variant, weights in mark.weights.items():
            t0 = time.perf_counter()
            # equal weights sample equal images: diffusers' EMAModel uses min(decay, n / (9 + n)) at its n-th
            # update, so decays d1 < d2 hold the same weights for the first 9 d1 / (1 - d1) steps (0.995: 1,791)
            same = next((r for w, r in scored if same_weights(w, weights)), None)
            row = dict(same) if same is not None else score_mark(bench, trained.load(variant, weights),
                                                                 grids[variant][i])
            scored.append((weights, row))
            row.update(seconds=mark.seconds, total_seconds=mark.seconds + trained.extra_seconds,
                       images_seen=mark.images_seen, score_seconds=time.perf_counter() - t0,
                       same_weights_as_earlier_variant=same is not None)
            curves.setdefault(variant, []).append(row)
            log.info("%s %s at %.0f s: FID/floor %.3f (%.3f-%.3f), accuracy %.3f, Z_U %.1f", arm, variant,
                     mark.seconds, row["fid_ratio"], row["fid_ratio_min"], row["fid_ratio_max"],
                     row["class_accuracy"], row["copy_z"])
    b = trained.budget
    return {"parameters": trained.parameters, "settings": trained.settings, "extra_seconds": trained.extra_seconds,
            "budget_seconds": budget.seconds, "every": budget.every, "at": list(budget.at), **asdict(b),
            "images_per_second": b.images_seen / b.train_seconds, "curves": curves}


def same_weights(a: Any, b: Any) -> bool:
    """Two weight copies (a state dict, or a list of tensors) equal bit for bit."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_weights(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_weights(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def time_to_level(curve: list[dict[str, Any]], level: float) -> float | None:
    """Total training seconds (extra time included) at the first mark whose mean FID/floor <= `level`."""
    return next((r["total_seconds"] for r in curve if r["fid_ratio"] <= level), None)


def time_to_floor(curve: list[dict[str, Any]]) -> float | None:
    """Time to FLOOR_FACTOR x the floor: the claim's level."""
    return time_to_level(curve, FLOOR_FACTOR)


def at_seconds(curve: list[dict[str, Any]], seconds: float) -> dict[str, Any] | None:
    """The mark taken at `seconds` of total training time (the arm's own plus what it was trained on before, e.g.
    the latent arm's VAE): the first at or after it, as the clock is read per step; None when the budget ended
    before."""
    return next((r for r in curve if r["total_seconds"] >= seconds), None)


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per arm and variant: time to the floor and the excess at EXCESS_AT s. The best peer (and variant) is the one
    with the smallest excess at EXCESS_AT s; the claims compare each genlab-latent arm (@PROJECT ones too) with it:
    {"rows", "best_peer", "claims": {arm: {time_ratio, time_ratio_below, excess_ratio}}}; when genlab did not reach
    the floor (whether the peer did or not), a claim also holds the race to the nearest level both reached:
    common_level, common_time_ratio and common_times (genlab's, the peer's)."""
    rows = {}
    for arm, r in results.items():
        for variant, curve in r["curves"].items():
            at = at_seconds(curve, EXCESS_AT)
            rows[f"{arm} ({variant})"] = {"arm": arm, "variant": variant, "time_to_floor": time_to_floor(curve),
                                          "excess_at": None if at is None else at["fid_ratio"] - 1}
    peers = {k: v for k, v in rows.items() if v["arm"].startswith("peer:") and v["excess_at"] is not None}
    best = min(peers, key=lambda k: peers[k]["excess_at"]) if peers else None
    claims: dict[str, dict[str, Any]] = {}
    for g in rows.values():
        if not (best and g["arm"].partition("@")[0] == "genlab-latent" and g["variant"] == "ema"):
            continue
        p, c = peers[best], {"time_ratio": None, "time_ratio_below": None, "excess_ratio": None}
        gc, pc = results[g["arm"]]["curves"][g["variant"]], results[p["arm"]]["curves"][p["variant"]]
        if g["time_to_floor"] is not None and p["time_to_floor"] is not None:
            c["time_ratio"] = g["time_to_floor"] / p["time_to_floor"]
        elif g["time_to_floor"] is not None:  # the peer's time is beyond its last mark: a bound, not a ratio
            c["time_ratio_below"] = g["time_to_floor"] / pc[-1]["total_seconds"]
        if g["excess_at"] is not None and p["excess_at"] > 0:
            c["excess_ratio"] = g["excess_at"] / p["excess_at"]
        if c["time_ratio"] is None and c["time_ratio_below"] is None:
            # genlab did not reach the floor: the same race to the nearest level both reached (the worse of their
            # best marks), a ratio measured side by side but not the claim's, which is at FLOOR_FACTOR
            level = max(min(r["fid_ratio"] for r in gc), min(r["fid_ratio"] for r in pc))
            tg, tp = time_to_level(gc, level), time_to_level(pc, level)
            c |= {"common_level": level, "common_time_ratio": tg / tp, "common_times": [tg, tp]}
        claims[g["arm"]] = c
    return {"rows": rows, "best_peer": best, "claims": claims}


def table(bench: Bench, results: dict[str, dict[str, Any]]) -> str:
    """One markdown row per arm, variant and mark, after the floor."""
    cols = ["seconds", "total_seconds", "images_seen", "fid_ratio", "fid_ratio_min", "fid_ratio_max",
            "pixel_fid_ratio", "class_accuracy", "copy_z", "nn_ratio", "precision", "recall"]
    rows = {"data floor (test vs train)": {**bench.floor, "fid_ratio": 1.0, "pixel_fid_ratio": 1.0}}
    for arm, r in results.items():
        for variant, curve in r["curves"].items():
            rows |= {f"{arm} ({variant}) @{c['seconds']:.0f}s": c for c in curve}
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows.values()], index=list(rows))
    return df.to_markdown(floatfmt=".3g", colalign=("left",) + ("right",) * len(df.columns))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, default=Path("."), help="a genlab project where `dvc repro` has run")
    p.add_argument("--seconds", type=float, default=600.0, help="training wall-clock budget per arm")
    p.add_argument("--every", type=float, default=60.0, help="seconds of training between scored marks")
    p.add_argument("--steps", type=int, default=50, help="DDIM sampling steps, every arm")
    p.add_argument("--n-per-class", type=int, default=36, help="samples of each class in one sample set")
    p.add_argument("--sample-seeds", type=int, default=3, help="sample sets scored per mark (different noise)")
    p.add_argument("--out", type=Path, default=Path("bench/results/diffusers_vs_genlab.json"), help="JSON results")
    p.add_argument("--arms", default="genlab-latent,peer:new-user",
                   help=f"comma-separated: {', '.join(GENLAB_ARMS)} (each optionally @PROJECT: that project's "
                        f"params and VAE) and peer:<recipe>, recipes {', '.join(RECIPES)}")
    p.add_argument("--budget", action="append", default=[], metavar="ARM=SECONDS[/EVERY|@T1,T2,...]",
                   help="one arm's own budget and marks (repeatable): every EVERY s, or at the total times T1,T2,..., "
                        "e.g. peer:v=2400@300,600,1200,2400: a slow arm trained long enough to reach the floor, "
                        "scored at fewer marks")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for the whole run")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.every <= 0 or min(args.steps, args.n_per_class, args.threads, args.sample_seeds) < 1:
        p.error("--seconds and --every must be > 0; --steps, --n-per-class, --sample-seeds and --threads >= 1")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    known = {*GENLAB_ARMS, *(f"peer:{r}" for r in RECIPES)}
    unknown = sorted(a for a in args.arms if a.partition("@")[0] not in GENLAB_ARMS and a not in known)
    if unknown:
        p.error(f"unknown arms {unknown}: expected some of {sorted(known)} (a genlab arm may add @PROJECT)")
    budgets = {arm: ArmBudget(args.seconds, args.every) for arm in args.arms}
    for spec in args.budget:
        arm, _, rest = spec.partition("=")
        seconds, sep, marks = rest.partition("@") if "@" in rest else rest.partition("/")
        try:
            if sep == "@":
                at = tuple(sorted(float(t) for t in marks.split(",")))
                budget = ArmBudget(float(seconds), args.every, at)
            else:
                budget = ArmBudget(float(seconds), float(marks or args.every))
        except ValueError:
            p.error(f"--budget {spec!r}: expected ARM=SECONDS, ARM=SECONDS/EVERY or ARM=SECONDS@T1,T2,..., e.g. "
                    "peer:v=1800/300")
        if arm not in budgets:
            p.error(f"--budget {spec!r}: {arm!r} is not one of --arms {args.arms}")
        if min(budget.seconds, budget.every, *budget.at) <= 0:
            p.error(f"--budget {spec!r}: seconds, every and mark times must be > 0")
        budgets[arm] = budget
    for arm, b in budgets.items():
        if b.at and max(b.at) >= EXCESS_AT and EXCESS_AT not in b.at:
            p.error(f"{arm}: its marks {list(b.at)} pass {EXCESS_AT:.0f} s without one at it: the excess claim reads "
                    f"the mark at {EXCESS_AT:.0f} s")
        if not b.at and b.seconds >= EXCESS_AT and EXCESS_AT % b.every:
            p.error(f"{arm}: its mark interval {b.every:g} s must divide {EXCESS_AT:.0f}: the excess claim reads the "
                    f"mark at {EXCESS_AT:.0f} s")
    args.budgets = budgets
    return args


def write_json(path: Path, out: dict[str, Any]) -> None:
    """A bench's results, as JSON, at `path` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    log.info("wrote %s", path)


def make_bench(args: argparse.Namespace) -> Bench:
    """The shared data, the sampling request and the scoring reference (the train split's features, extracted once)."""
    paths = Paths(args.project.resolve())
    params = load_params(paths.root / "params.yaml")
    manifest = splits.read_manifest(paths.prepared)
    k = int(manifest["num_classes"])
    if not k:
        raise GenlabError(f"{paths.prepared}: unlabelled data; this bench compares class-conditional models")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    train, test = splits.read(paths.prepared, "train"), splits.read(paths.prepared, "test")
    ev, evaluator = params.evaluate, paths.model("evaluator") / "model.safetensors"
    extractor = fid.make_extractor(evaluator, None)
    cuda = device.type == "cuda"
    ref = compute_reference(train.images, extractor, "bench", ev.batch_size, cuda, radii_k=ev.pr_neighbourhood)
    test_features = fid.extract_features(test.images, extractor, ev.batch_size, cuda)
    held_out_nn = nearest_distances(test_features, ref.features.float())
    labels = torch.arange(k).repeat_interleave(args.n_per_class)
    seed_sets = [image_seeds(params.sample.seed, f"bench-{s}", len(labels)) for s in range(args.sample_seeds)]
    pixel_ref = pixel_vectors(train.images.all()) if math.prod(train.images.shape[1:]) <= PIXEL_JUDGE_DIMS else None
    bench = Bench(paths=paths, params=params, train=train, test=test, manifest=manifest, num_classes=k, device=device,
                  steps=args.steps, threads=args.threads, labels=labels,
                  seed_sets=seed_sets, extractor=extractor, ref=ref, held_out_nn=held_out_nn, floor={},
                  pixel_ref=pixel_ref, grids=args.out.with_suffix(""))
    floor = score(bench, test.images.all(), test.labels)
    save_class_grid(test.images.all(), test.labels, bench.grids / "data_test.png", GRID_PER_CLASS, GRID_CLASSES)
    return replace(bench, floor={**floor, "n": len(test)})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    fix_mmap_threshold()  # the process set up as a stage's (genlab.cli.main, run_stage): 128 KiB outside loops of
    bench = make_bench(args)  # steps, which take heap blocks up to set_steps_threshold's ceiling
    set_steps_threshold(bench.train.images.shape[-1])
    plan = "; ".join(f"{arm} {b.seconds:.0f} s, marks " + (f"at {', '.join(f'{t:g}' for t in b.at)}" if b.at else
                     f"every {b.every:g}") + " s in all" for arm, b in args.budgets.items())
    log.info("%s; %d DDIM steps, %d sets of %d samples per mark, device %s, %d threads; floor FID %.3f", plan,
             args.steps, args.sample_seeds, len(bench.labels), bench.device, args.threads, bench.floor["fid"])
    # every genlab arm's project (an @PROJECT arm's params and data checked) before any arm trains
    projects = {arm: arm_project(bench, arm) for arm in args.arms if not arm.startswith("peer:")}
    head = {"project": str(bench.paths.root), "seconds_per_arm": args.seconds, "every": args.every,
            "steps": args.steps, "n_per_class": args.n_per_class, "sample_seeds": args.sample_seeds,
            "threads": args.threads, "device": describe(bench.device), "seed": bench.params.seed,
            "sample_seed": bench.params.sample.seed, "feature_extractor": bench.extractor.note, "floor": bench.floor}
    results: dict[str, dict[str, Any]] = {}
    for arm in args.arms:
        results[arm] = run_arm(bench, arm, args.budgets[arm], projects.get(arm))
        if len(results) < len(args.arms):  # the arms done so far, kept should a later one fail or be stopped
            write_json(args.out, {**head, "arms": results, "complete": False})
    summary = summarize(results)
    print(table(bench, results))
    print()
    print(pd.DataFrame(summary["rows"]).T.to_markdown(floatfmt=".3g"))
    if summary["best_peer"]:
        print(f"\nbest tuned peer at {EXCESS_AT:.0f} s: {summary['best_peer']}")
    for arm, claim in summary["claims"].items():
        for key, bar, what in (("time_ratio", TIME_BAR, "time to the floor"),
                               ("excess_ratio", EXCESS_BAR, f"excess at {EXCESS_AT:.0f} s")):
            v, below = claim[key], claim.get(f"{key}_below")
            if v is None and below is not None:  # only genlab reached the floor: the peer's time is longer than its run
                print(f"{arm} / best peer, {what}: below {below:.3f} (the peer did not reach the floor in its budget; "
                      f"{'meets' if below <= bar else 'cannot show'} the bar <= {bar})")
                continue
            print(f"{arm} / best peer, {what}: " + ("not reached by both" if v is None else
                  f"{v:.3f} ({'meets' if v <= bar else 'misses'} the bar <= {bar})"))
        if "common_level" in claim:
            tg, tp = claim["common_times"]
            print(f"{arm} / best peer, time to {claim['common_level']:.3g}x the floor (the nearest level both "
                  f"reached): {claim['common_time_ratio']:.3f} ({tg:.0f} s against {tp:.0f} s; not the claim's "
                  f"{FLOOR_FACTOR}x)")
    out = {**head, "arms": results, "complete": True, **summary}
    write_json(args.out, out)
    return out


def cli(argv: list[str] | None = None) -> int:
    """`main` as a command: bad input (a project, an @PROJECT arm, a file) is one line on stderr and exit status 2,
    as genlab's own commands do."""
    try:
        main(argv)
    except GenlabError as exc:
        print(f"diffusers_vs_genlab: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(cli())
