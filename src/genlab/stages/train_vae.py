"""Stage `train_vae`: convolutional VAE, loss = reconstruction + beta * KL(q(z|x) || N(0, I)).

Writes the snapshot, the latent scale factor (1 / std of the latents, read by `train_ldm`) and the
latent-space pictures: reconstructions, samples decoded from N(0, I), linear and spherical
interpolations, traversals along the principal latent directions, and class arithmetic
z - mean(a) + mean(b). With `ae_baseline`, a plain autoencoder of the same architecture (no KL, no
sampling) is trained too, and random latents of both are decoded and scored side by side: the
VAE's latent space is complete (random points decode to digits), the plain AE's is not.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from genlab import inputs
from genlab import latent_tools as lt
from genlab.compute import adam, autocast
from genlab.config import VAEConfig, latent_side
from genlab.data.store import Batches, training_images
from genlab.device import inference_batch
from genlab.distributed import World, no_sync
from genlab.images import save_grid
from genlab.latent_cache import Moments, encode_batches, spread_rows
from genlab.metrics import fid
from genlab.models.vae import VAE, kl_to_standard_normal, reparameterize, vae_loss
from genlab.paths import atomic_write, staged_dir
from genlab.randomness import generator, seeded
from genlab.stages.common import (
    Context,
    Data,
    drop_checkpoint,
    finish_training,
    load_data,
    save_training,
    stage_run,
)
from genlab.stages.train_fid import train_scores
from genlab.tracking import StageRun
from genlab.training import FiniteCheck, Losses, Trainable, apply_gradients, train

STAGE = "train_vae"


def beta_at(cfg: VAEConfig, images_seen: int) -> float:
    """KL warm-up: beta grows linearly from 0 to cfg.beta over kl_warmup_images."""
    if cfg.kl_warmup_images == 0:
        return cfg.beta
    return cfg.beta * min(1.0, images_seen / cfg.kl_warmup_images)


def encode(vae: VAE, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior parameters (mean, logvar) of every image: each (N, latent, s, s) on CPU. For small sets (a test
    split); a train split streams through `encode_batches`."""
    parts = list(encode_batches(vae, images, device))
    return torch.cat([m for m, _ in parts]), torch.cat([lv for _, lv in parts])


@torch.no_grad()
def decode(vae: VAE, z: torch.Tensor, device: torch.device) -> torch.Tensor:
    vae.eval()
    b = inference_batch(z.shape[-1] * 2**vae.downsample)
    return torch.cat([vae.decode(z[i : i + b].to(device)).clamp(-1, 1).cpu() for i in range(0, len(z), b)])


# rows of train posterior means kept for the latent pictures (PCA directions, class means): bounded, spread over
# the split (every row of a smaller one)
PICTURE_ROWS = 8192


def train_latents(vae: VAE, data: Data, device: torch.device, seed: int) -> tuple[float, torch.Tensor]:
    """One pass over the train split: the latent scale, 1 / std of latents z ~ q(z|x) (so the diffusion model sees
    unit variance), and the posterior means of `PICTURE_ROWS` rows spread over the split."""
    g, moments = generator(seed, "latent-scale"), Moments()
    keep, kept, start = spread_rows(len(data.train), PICTURE_ROWS), None, 0
    for mean, logvar in encode_batches(vae, data.train.images, device):
        moments.add(reparameterize(mean, logvar, torch.randn(mean.shape, generator=g)))
        if kept is None:  # one buffer: thousands of small kept pieces would fragment the heap
            kept = torch.empty((len(keep), *mean.shape[1:]))
        mask = (keep >= start) & (keep < start + len(mean))
        kept[mask] = mean[keep[mask] - start]
        start += len(mean)
    return 1.0 / moments.std(), kept


def mean_std(vae: VAE, data: Data, device: torch.device) -> float:
    """Std of the train split's posterior means (a plain autoencoder's latents), in one pass."""
    moments = Moments()
    for mean, _ in encode_batches(vae, data.train.images, device):
        moments.add(mean)
    return moments.std()


def vae_step(vae: VAE, opt: torch.optim.Optimizer, x_all: torch.Tensor, idx: torch.Tensor,
             eps: torch.Tensor | None, beta: float, sigma: float, micro: int, device: torch.device,
             name: str = "vae", *, net: torch.nn.Module | None = None, world: World = World(),  # noqa: B008
             check: FiniteCheck | None = None, amp: Callable[[], AbstractContextManager] = contextlib.nullcontext,
             ) -> Losses:
    """One optimizer step on the batch mean of `vae_loss` (eps None: a plain autoencoder, z = mean), its gradient
    accumulated over micro-batches of `micro` rows: d/dθ mean_B(ℓ) = Σ_parts (|part| / B) d/dθ mean_part(ℓ), exact
    as the VAE has no batch statistics, while activation memory follows `micro`, not the batch. `idx` and `eps`
    are the global batch's; this rank computes on its rows of them through `net` (its DDP wrapper, which
    averages the rank means into the global mean: gradients stay local until the last micro-batch). `amp()`: the
    context of the forward pass and loss (compute.autocast)."""
    net = net or vae
    vae.train()
    opt.zero_grad(set_to_none=True)
    totals = torch.zeros(3, device=device)
    mine = torch.arange(len(idx))[world.rows(len(idx))]
    parts = mine.split(micro)
    for i, rows in enumerate(parts):
        x = x_all[idx[rows]].to(device)
        with no_sync(net) if i < len(parts) - 1 else contextlib.nullcontext():
            with amp():
                x_hat, mean, logvar = net(x, None if eps is None else eps[rows].to(device))
                losses = torch.stack(vae_loss(x, x_hat, mean, logvar, beta, sigma)) * (len(rows) / len(mine))
            losses[0].backward()
        totals += losses.detach()
    apply_gradients(vae, opt, totals[0], loss_name="loss", module_name=name, check=check)
    return dict(zip(("loss", "recon", "kl"), totals, strict=True))


def vae_network(cfg: VAEConfig, channels: int, side: int) -> dict:
    """The VAE's constructor arguments for (channels, side, side) images: `latent_side` sets the downsampling."""
    return {"in_channels": channels, "base_channels": cfg.base_channels, "latent_channels": cfg.latent_channels,
            "downsample": (side // latent_side(side, cfg.downsample)).bit_length() - 1}


@dataclass
class VAEStep:
    """What VAE (or plain autoencoder) training steps: the model with its optimizer (in `trainable`) and
    `step(idx, g)`, one update on the global batch `idx`."""

    trainable: Trainable
    step: Callable[[torch.Tensor, torch.Generator], Losses]


def build_step(cfg: VAEConfig, ctx: Context, network: dict, x_all: Batches, plain: bool) -> VAEStep:
    """The one builder of the VAE's training step (the stage, under DDP too, and the benches): the network
    initialised from (ctx.seed, stage key), Adam, β warm-up, `vae_step`'s micro-batched update, `ctx.compute`'s
    settings; plain: the deterministic autoencoder baseline (no KL, z = mean). The step reads its position from
    `trainable.step`."""
    key = f"{STAGE}.ae" if plain else STAGE
    with seeded(ctx.seed, key, "init"):
        vae = ctx.place(VAE(**network))
    opt = adam(vae.parameters(), ctx.device, lr=cfg.lr)
    trainable = Trainable({"vae": vae}, {"opt": opt})
    net = ctx.train_net(vae)
    side = x_all.shape[-1]
    latent = (network["latent_channels"], side >> network["downsample"], side >> network["downsample"])
    # rows per backward: 16 at 64 px, where a 64-row VAE step peaks 1.24 GB above the imports, 16-row parts 0.41 GB;
    # no split up to 32 px at the default batch (the same bits as one backward)
    micro = inference_batch(side) // 2

    def step(idx: torch.Tensor, g: torch.Generator) -> Losses:
        beta = 0.0 if plain else beta_at(cfg, trainable.step * cfg.batch_size)
        # drawn for the whole batch, whatever the split (the plain AE draws nothing)
        eps = None if plain else torch.randn((len(idx), *latent), generator=g)
        out = vae_step(vae, opt, x_all, idx, eps, beta, cfg.recon_sigma, micro, ctx.device,
                       "ae" if plain else "vae", net=net, world=ctx.world, check=trainable.check,
                       amp=lambda: autocast(ctx.device, ctx.compute))
        return {**out, "beta": beta}

    return VAEStep(trainable, step)


def fit(cfg: VAEConfig, ctx: Context, data: Data, x_all: Batches, network: dict, plain: bool,
        mlrun: StageRun) -> Trainable:
    """Train a VAE (plain=False) or a deterministic autoencoder (plain=True: no KL, z = mean) on `x_all`, the
    train split as `training_images` gives it."""
    key = f"{STAGE}.ae" if plain else STAGE
    built = build_step(cfg, ctx, network, x_all, plain)
    trainable, step = built.trainable, built.step
    train_cfg = cfg.model_copy(update={"train_images": cfg.ae_train_images}) if plain else cfg
    prefix = "ae_" if plain else ""
    train(key, train_cfg, trainable, step, seed=ctx.seed, n_train=len(data.train), ckpt=ctx.paths.checkpoint(key),
          fingerprint=ctx.fingerprint(key, cfg, data.hash),
          on_log=lambda m, s: mlrun.log_metrics({prefix + k: v for k, v in m.items()}, s) or {}, run_id=mlrun.run_id,
          world=ctx.world)
    return trainable


def scored(images: torch.Tensor, data: Data, ctx: Context) -> dict[str, float]:
    """FID and friends against the train split, with the evaluate stage's protocol."""
    m = train_scores(ctx, data, images, kid_subset_size=100)
    return {"fid": m["fid"], "precision": m["precision"], "recall": m["recall"]}


def latent_pictures(vae: VAE, cfg: VAEConfig, ctx: Context, data: Data, train_mean: torch.Tensor,
                    t_mean: torch.Tensor, out: Path) -> dict | None:
    """Interpolations, traversals and (labelled data) class arithmetic from the test posterior means and train
    posterior means (`train_mean`: rows `PICTURE_ROWS` spread over the split); returns the arithmetic's images and
    target attributes, None on unlabelled data."""
    dev, n = ctx.device, cfg.interpolation_steps
    pairs = [(i, i + 1) for i in range(0, min(16, len(t_mean) - 1), 2)]
    for name, path in (("interpolation_linear", lt.lerp), ("interpolation_spherical", lt.slerp)):
        strips = torch.cat([path(t_mean[a], t_mean[b], n) for a, b in pairs])
        save_grid(decode(vae, strips, dev), out / f"{name}.png", nrow=n)
    dirs, stds = lt.principal_directions(train_mean, cfg.traversal_directions)
    knobs = lt.traversal(t_mean[0], dirs, stds, steps=9, span=3.0).flatten(0, 1)
    save_grid(decode(vae, knobs, dev), out / "traversal.png", nrow=9)
    if not data.train.attributes.shape[1]:
        return None
    # the concept is the first attribute: the digit, or a shape's colour
    concept = data.train.attributes[spread_rows(len(data.train), PICTURE_ROWS), 0]
    test_concept = data.test.attributes[:, 0]
    means = lt.class_means(train_mean, concept)
    k = means.shape[0]
    sources = torch.tensor([int((test_concept == c).nonzero()[0, 0]) for c in range(k)])
    grid = torch.stack([lt.concept_arithmetic(t_mean[i], means, int(test_concept[i]), b)
                        for i in sources for b in range(k)])
    images = decode(vae, grid, dev)
    save_grid(torch.cat([data.test.images[sources][:, None], images.view(k, k, *images.shape[1:])], 1).flatten(0, 1),
              out / "arithmetic.png", nrow=k + 1)
    # targets: attribute rows whose first column is the target concept (other columns: the source's)
    targets = data.test.attributes[sources].repeat_interleave(k, 0).clone()
    targets[:, 0] = torch.arange(k).repeat(k)
    return {"images": images, "targets": targets}


def run(cfg: VAEConfig, ctx: Context) -> dict:
    data = load_data(ctx)
    c, s = data.manifest["image_shape"][0], data.manifest["image_shape"][1]
    evaluator = inputs.evaluator(ctx.paths, data.manifest)  # checked before any training
    network = vae_network(cfg, c, s)
    n_eval = len(data.test)
    keys = (STAGE, f"{STAGE}.ae")
    resume = tuple((ctx.paths.checkpoint(k), ctx.fingerprint(k, cfg, data.hash)) for k in keys)
    with stage_run(ctx, STAGE, cfg, data.hash, resume=resume) as mlrun:
        x_all = training_images(data.train.images, ctx.device)  # on CUDA copied to the GPU once, for both models
        trainable = fit(cfg, ctx, data, x_all, network, plain=False, mlrun=mlrun)
        ae = fit(cfg, ctx, data, x_all, network, plain=True, mlrun=mlrun).modules["vae"] if cfg.ae_baseline else None
        if not ctx.world.main:
            return {}
        vae = trainable.modules["vae"]
        scale, train_mean = train_latents(vae, data, ctx.device, ctx.seed)
        t_mean, t_logvar = encode(vae, data.test.images, ctx.device)
        latent_shape = list(t_mean.shape[1:])
        test_rec = decode(vae, t_mean, ctx.device)
        test_images = data.test.images.all()  # read once: both reconstruction errors compare against it
        prior = torch.randn((n_eval, *latent_shape), generator=generator(ctx.seed, "vae-prior"))
        vae_prior = decode(vae, prior, ctx.device)
        metrics: dict = {
            "test_mse": float(F.mse_loss(test_rec, test_images)),
            "test_kl": float(kl_to_standard_normal(t_mean, t_logvar).mean()),
            "latent_scale": scale,
            "rfid": scored(test_rec, data, ctx)["fid"],
            **{f"prior_{k}": v for k, v in scored(vae_prior, data, ctx).items()},
        }
        if data.manifest["num_classes"]:
            # the evaluator on the reconstructions of the test split: about the most an LDM on these latents can score
            metrics["recon_class_accuracy"] = fid.class_accuracy(evaluator, test_rec, data.test.attributes)
        snapshot_cfg = {"network": network, "latent_shape": latent_shape, "latent_scale": scale, "image_size": s}
        out_dir = ctx.paths.model("vae")
        with staged_dir(out_dir) as out:
            history = save_training(out, STAGE, cfg, trainable, vae, snapshot_cfg,
                                    ctx.fingerprint(STAGE, cfg, data.hash))
            atomic_write(out / "latent_scale.json", json.dumps({"latent_scale": scale,
                                                               "latent_shape": latent_shape}) + "\n")
            pairs = torch.stack([data.test.images[:50], test_rec[:50]], 1).flatten(0, 1)
            save_grid(pairs, out / "reconstructions.png", nrow=10)
            save_grid(vae_prior[:64], out / "prior_samples.png", nrow=8)
            arith = latent_pictures(vae, cfg, ctx, data, train_mean, t_mean, out)
            if arith is not None:
                first = fid.attribute_accuracy(evaluator, arith["images"], arith["targets"])
                metrics["arithmetic_accuracy"] = next(iter(first.values()))  # the concept attribute's accuracy
            if ae is not None:
                # random latents at the AE's own scale: N(0, std^2 I), std of its training latents
                ae_prior = decode(ae, prior * mean_std(ae, data, ctx.device), ctx.device)
                ae_rec = decode(ae, encode(ae, data.test.images, ctx.device)[0], ctx.device)
                metrics["ae_test_mse"] = float(F.mse_loss(ae_rec, test_images))
                metrics.update({f"ae_prior_{k}": v for k, v in scored(ae_prior, data, ctx).items()})
                save_grid(ae_prior[:64], out / "ae_prior_samples.png", nrow=8)
                save_grid(torch.cat([vae_prior[:32], ae_prior[:32]]), out / "prior_vae_vs_ae.png", nrow=8)
        finish_training(ctx, STAGE, mlrun, out_dir, history, metrics, trainable)
        drop_checkpoint(ctx, f"{STAGE}.ae", mlrun)
    return metrics
