"""What `train_ldm` and `train_pixel` share: one diffusion training run over a data space.

Space "latent": x_0 = z * latent_scale with z ~ q(z|x) drawn fresh each step from the frozen VAE's
posterior. Space "pixel": x_0 = the image. Conditioning "class": labels (null label = num_classes);
"text": MiniLM token embeddings of prompts generated from the labels (learned null token);
"class+text": each image is conditioned on its label or (probability P_TEXT) on a prompt, the other
condition null, so one model takes either. The condition is dropped with probability p_uncond for
classifier-free guidance; the snapshot holds the EMA weights; the bits/dim bound of the EMA model is
measured on the test split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from genlab import inputs
from genlab.compute import adam, autocast
from genlab.config import DiffusionConfig, unet_levels
from genlab.data import sources
from genlab.data.store import Rows, training_images
from genlab.device import inference_batch
from genlab.diffusion.bound import nll_bound_bits_per_dim
from genlab.diffusion.loss import diffusion_loss, drop_labels
from genlab.diffusion.sample import as_eps_denoiser, ddim_sample, ddim_timesteps
from genlab.diffusion.schedules import alpha_bar
from genlab.latent_cache import Moments, posterior_cache
from genlab.models.ema import ema_copy, ema_decay, ema_update
from genlab.models.unet import UNet
from genlab.models.vae import VAE, reparameterize
from genlab.paths import staged_dir
from genlab.randomness import generator, seeded
from genlab.sampling import PROMPT_TABLE, seeded_normal
from genlab.stages.common import (
    Context,
    Data,
    finish_training,
    load_data,
    logger,
    save_training,
    stage_run,
)
from genlab.stages.train_fid import CheapFID
from genlab.stages.train_vae import encode
from genlab.training import Losses, Trainable, learning_rate, optimizer_step, train

P_TEXT = 0.5  # class+text: the fraction of training images conditioned on a prompt rather than a label


def conditioning(cfg: DiffusionConfig, num_classes: int) -> str:
    """cfg.conditioning, or "none" on unlabelled data (num_classes 0): there is nothing to condition on."""
    return cfg.conditioning if num_classes > 0 else "none"


def unet_network(cfg: DiffusionConfig, channels: int, num_classes: int, side: int) -> dict:
    """The U-Net's constructor arguments for (channels, side, side) inputs (`unet_levels`: null channel_mults);
    num_classes 0: unconditional, neither labels nor text."""
    text = cfg.uses_text and num_classes > 0
    return {"in_channels": channels, "base_channels": cfg.base_channels, "channel_mults": list(unet_levels(cfg, side)),
            "num_res_blocks": cfg.num_res_blocks, "attention_levels": list(cfg.attention_levels),
            "num_classes": num_classes if cfg.uses_class else 0, "context_dim": 384 if text else None,
            "cross_attention_levels": list(cfg.cross_attention_levels) if text else []}


class Conditioner:
    """Builds model(x_t, t, y) -> output for a batch of labels, with the condition dropped at rate p."""

    def __init__(self, cfg: DiffusionConfig, num_classes: int, device: torch.device, source: str = "digits",
                 names: list[str] | None = None) -> None:
        self.cfg, self.k, self.device = cfg, num_classes, device
        self.conditioning = conditioning(cfg, num_classes)
        self.text = None
        if "text" in self.conditioning:
            from genlab.models.text import TextEncoder, trim

            names = names or []
            # every training phrasing of every label, encoded once: (K * P, L, 384)
            self.table = [sources.train_prompts(source, c, names) for c in range(num_classes)]
            flat = [p for ps in self.table for p in ps]
            self.text = TextEncoder()
            tokens, mask = trim(*self.text.encode(flat))
            self.tokens, self.mask = tokens.to(device), mask.to(device)
            # what samplers of this model ask for: these and the held-out phrasings (`save_prompts`)
            self.phrasings = flat + [p for c in range(num_classes) for p in sources.heldout_prompts(source, c, names)]

    def save_prompts(self, path: Path) -> None:
        """The training and held-out phrasings' encodings, for the samplers of this model (a text model only)."""
        if self.text is not None:
            self.text.save(path, self.phrasings)

    def model(self, unet: torch.nn.Module, y: torch.Tensor, g: torch.Generator | None, p_drop: float,  # noqa: ANN201
              rows: slice = slice(None)):
        """The network (x_t, t, _) -> output for labels y; with g, a random phrasing and condition dropout
        are drawn from it (and, for class+text, which condition each image gets); without g the label
        (class, class+text) or the first phrasing (text), and no dropout. Drawn for every label of `y` (the
        global batch), the network conditioned on `rows` of them (one rank's share; default all)."""
        if self.conditioning == "none":
            return lambda x, t, _y: unet(x, t)
        if self.conditioning == "class" or (g is None and self.cfg.uses_class):
            y = drop_labels(y, p_drop, self.k, g) if g is not None else y
            y = y[rows].to(self.device)
            return lambda x, t, _y: unet(x, t, y)
        per = len(self.table[0])
        pick = torch.randint(0, per, (len(y),), generator=g) if g is not None else torch.zeros(len(y), dtype=torch.long)
        phrase = (y * per + pick)[rows].to(self.device)
        drop = (torch.rand(len(y), generator=g) < p_drop) if g is not None else torch.zeros(len(y), dtype=torch.bool)
        if self.conditioning == "text":
            drop = drop[rows].to(self.device)
            return lambda x, t, _y: unet(x, t, context=self.tokens[phrase], context_mask=self.mask[phrase], drop=drop)
        # class+text: the label or the prompt, the other one null; both null when dropped
        text = torch.rand(len(y), generator=g) < P_TEXT
        labels = torch.where(text | drop, self.k, y)[rows].to(self.device)
        text_null = (~text | drop)[rows].to(self.device)
        return lambda x, t, _y: unet(x, t, labels, context=self.tokens[phrase], context_mask=self.mask[phrase],
                                     drop=text_null)


X0Batch = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (train rows, generator) -> clean inputs x_0


@dataclass
class DiffusionStep:
    """What a diffusion training run steps: the U-Net, its EMA copy, the optimizer (in `trainable`), the
    conditioner, the schedule ᾱ and `step(idx, g)`, one optimizer step on the global batch `idx`."""

    network: dict
    unet: UNet
    ema: UNet
    trainable: Trainable
    cond: Conditioner
    ab: torch.Tensor
    step: Callable[[torch.Tensor, torch.Generator], Losses]


def build_step(stage: str, cfg: DiffusionConfig, ctx: Context, shape: list[int], num_classes: int, source: str,
               names: list[str], x0_batch: X0Batch, labels: torch.Tensor) -> DiffusionStep:
    """The one builder of a diffusion training step, used by `train_ldm`/`train_pixel` (in one process or under
    DDP) and by the benches: the U-Net for `shape` inputs initialised from (ctx.seed, stage), AdamW, the
    learning-rate schedule, condition dropout, `diffusion_loss`, gradient clipping and the EMA with a half-life in
    images, with `ctx.compute`'s settings on `ctx.world`. `x0_batch(idx, g)` gives the clean inputs of the train
    rows `idx`; `labels` all train labels. The step reads its position from `trainable.step` (the caller advances
    it, as `training.train` does)."""
    device, world = ctx.device, ctx.world
    network = unet_network(cfg, shape[0], num_classes, shape[-1])
    with seeded(ctx.seed, stage, "init"):
        unet = ctx.place(UNet(**network))
    ema = ema_copy(unet)
    opt = adam(unet.parameters(), device, decoupled=True, lr=cfg.lr, weight_decay=0.0)
    trainable = Trainable({"unet": unet, "ema": ema}, {"opt": opt})
    ab = alpha_bar(cfg.timesteps, cfg.schedule)
    cond = Conditioner(cfg, num_classes, device, source, names)
    total_steps = max(1, cfg.train_images // cfg.batch_size)
    net = ctx.train_net(unet)

    def step(idx: torch.Tensor, g: torch.Generator) -> Losses:
        unet.train()
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg.lr, cfg.lr_schedule, trainable.step, total_steps)
        # every draw is the global batch's; this rank computes on `rows` of it
        rows = world.rows(len(idx))
        x0 = x0_batch(idx, g).to(device)
        model = cond.model(net, labels[idx], g, cfg.p_uncond, rows)
        with autocast(device, ctx.compute):
            loss = diffusion_loss(model, x0, None, ab, g, prediction=cfg.prediction, min_snr_gamma=cfg.min_snr_gamma,
                                  rows=rows)
        optimizer_step(unet, opt, loss, loss_name="loss", module_name="unet", max_norm=1.0, check=trainable.check)
        images = trainable.step * cfg.batch_size
        ema_update(ema, unet, ema_decay(images, cfg.batch_size, cfg.ema_halflife_images))
        return {"loss": loss.detach()}

    return DiffusionStep(network, unet, ema, trainable, cond, ab, step)


def train_diffusion(stage: str, name: str, cfg: DiffusionConfig, ctx: Context, space: str) -> dict:
    data: Data = load_data(ctx)
    inputs.evaluator(ctx.paths, data.manifest)  # the cheap FID's: checked before any training
    if space != "latent":
        return _train(stage, name, cfg, ctx, data, space, vae=None, posterior=None, vae_scale=1.0)
    vae, vae_cfg = inputs.vae(ctx.paths, data.manifest, ctx.device)
    # the train split's q(z|x), encoded once into a file next to the checkpoint and read per batch
    with posterior_cache(vae, data.train.images, ctx.device, ctx.paths.checkpoint(stage).with_suffix(".latents"),
                         ctx.world) as posterior:
        return _train(stage, name, cfg, ctx, data, space, vae, posterior, float(vae_cfg["latent_scale"]))


Posterior = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # row indices -> (mean, logvar)


def latent_x0(latents: str, posterior: Posterior, n: int, vae_scale: float) -> tuple[float, X0Batch]:
    """The latent space's x_0 for rows of a split of `n` images, and its scale (x_0 of unit variance, as the
    schedule assumes). latents "sample": z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) drawn each step (the
    reparameterisation, Kingma & Welling 2014 eq. 10), times the VAE's 1 / std(z); "mean": the posterior mean times
    1 / std of the split's means (one pass over the rows)."""
    if latents == "mean":
        moments = Moments()
        for i in range(0, n, 8192):
            moments.add(posterior(torch.arange(i, min(n, i + 8192)))[0])
        scale = 1.0 / moments.std()

        def x0_mean(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return posterior(idx)[0] * scale
        return scale, x0_mean

    def x0_sample(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        mean, logvar = posterior(idx)
        return reparameterize(mean, logvar, torch.randn(mean.shape, generator=g)) * vae_scale
    return vae_scale, x0_sample


def _train(stage: str, name: str, cfg: DiffusionConfig, ctx: Context, data: Data, space: str, vae: VAE | None,
           posterior: Rows | None, vae_scale: float) -> dict:
    """Train in `space`: "latent" (x_0 from the `posterior` rows of `vae`, `latent_x0`) or "pixel"."""
    num_classes = data.manifest["num_classes"]
    extra: dict = {"space": space}
    if vae is not None and posterior is not None:
        vae_dir = ctx.paths.model("vae")
        cache = posterior

        def read(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mean, logvar = cache.read(idx).chunk(2, dim=1)
            return mean, logvar
        scale, x0_batch = latent_x0(cfg.latents, read, len(data.train), vae_scale)
        t_mean, _ = encode(vae, data.test.images, ctx.device)
        test_x0 = t_mean * scale
        vae_hash = hashlib.sha256((vae_dir / "model.safetensors").read_bytes()).hexdigest()
        extra.update(latent_scale=scale, vae_sha256=vae_hash)
        shape = list(t_mean.shape[1:])
    else:
        test_x0 = data.test.images.all()
        extra["latent_scale"] = 1.0
        vae_hash = ""
        pixels = training_images(data.train.images, ctx.device)

        def x0_batch(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return pixels[idx]
        shape = list(data.train.images.shape[1:])
    source = data.manifest["source"]
    names = sources.class_names(data.manifest)
    run = build_step(stage, cfg, ctx, shape, num_classes, source, names, x0_batch, data.train.labels)
    network, unet, ema, trainable, cond, ab = run.network, run.unet, run.ema, run.trainable, run.cond, run.ab

    @torch.no_grad()
    def cheap_sample(labels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """EMA model, 20 DDIM steps, no guidance: the training curve's sampler."""
        ema.eval()
        model = cond.model(ema, labels, None, 0.0)
        denoise = as_eps_denoiser(lambda x, t: model(x, t, None), cfg.prediction, ab)
        noise = seeded_normal(seeds, tuple(shape), "latent").to(ctx.device)
        x = ddim_sample(denoise, noise, ab, ddim_timesteps(cfg.timesteps, min(20, cfg.timesteps)))
        x = x / extra["latent_scale"]
        return (vae.decode(x) if space == "latent" else x).clamp(-1, 1).cpu()

    fp = ctx.fingerprint(stage, cfg, data.hash, vae_hash)
    ckpt = ctx.paths.checkpoint(stage)
    with stage_run(ctx, stage, cfg, data.hash, resume=((ckpt, fp),)) as mlrun:
        cheap = CheapFID(ctx, data, cfg, cfg.fid_every_images, cfg.fid_samples, cheap_sample)
        train(stage, cfg, trainable, run.step, seed=ctx.seed, n_train=len(data.train), ckpt=ckpt, fingerprint=fp,
              on_log=logger(mlrun, cheap), run_id=mlrun.run_id, world=ctx.world)
        if not ctx.world.main:
            return {}
        metrics = {"final_loss": trainable.history[-1]["loss"], "parameters": sum(p.numel() for p in unet.parameters()),
                   "test_bits_per_dim": bits_per_dim(cfg, ema, cond, test_x0, data.test.labels, ab, ctx)}
        snapshot_cfg = {"network": network, "timesteps": cfg.timesteps, "schedule": cfg.schedule,
                        "prediction": cfg.prediction, "conditioning": cond.conditioning, "latent_shape": shape,
                        "source": source, "class_names": names, **extra}
        out_dir = ctx.paths.model(name)
        with staged_dir(out_dir) as out:
            history = save_training(out, stage, cfg, trainable, ema, snapshot_cfg, fp)
            cond.save_prompts(out / PROMPT_TABLE)
        finish_training(ctx, stage, mlrun, out_dir, history, metrics, trainable)
    return metrics


@torch.no_grad()
def bits_per_dim(cfg: DiffusionConfig, ema: UNet, cond: Conditioner, x0: torch.Tensor, labels: torch.Tensor,
                 ab: torch.Tensor, ctx: Context) -> float:
    """Mean negative ELBO (Ho et al. eq. 5) of the test split under the conditional EMA model, in bits per
    dimension of the space it models (continuous density: compare only within one space)."""
    ema.eval()
    g = generator(ctx.seed, "nll")
    b = min(256, inference_batch(x0.shape[-1]))  # 256 up to 22 px (latents, 16-px images); 32 at 64 px
    total = []
    for i in range(0, len(x0), b):
        model = cond.model(ema, labels[i : i + b], None, 0.0)
        denoise = as_eps_denoiser(lambda x, t, m=model: m(x, t, None), cfg.prediction, ab)
        total.append(nll_bound_bits_per_dim(denoise, x0[i : i + b].to(ctx.device), ab, g, n_t=cfg.nll_timesteps))
    return float(torch.cat(total).mean())
