"""Stage `train_gan`: class-conditional GAN baseline in image space, hinge loss, EMA generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genlab import inputs
from genlab.compute import adam, autocast
from genlab.config import GANConfig
from genlab.data.store import Batches, training_images
from genlab.distributed import no_sync
from genlab.models.ema import ema_copy, ema_decay, ema_update
from genlab.models.gan import Discriminator, Generator, d_hinge_loss, g_hinge_loss, r1_penalty
from genlab.paths import staged_dir
from genlab.randomness import seeded
from genlab.sampling import seeded_normal
from genlab.stages.common import (
    Context,
    finish_training,
    load_data,
    logger,
    save_training,
    stage_run,
)
from genlab.stages.train_fid import CheapFID
from genlab.training import Losses, Trainable, optimizer_step, train

STAGE = "train_gan"


@dataclass
class GANStep:
    """What GAN training steps: the networks' arguments, G, D and the EMA generator with their optimizers (in
    `trainable`), and `step(idx, g)`, one discriminator and one generator update on the global batch `idx`."""

    network: dict
    trainable: Trainable
    step: Callable[[torch.Tensor, torch.Generator], Losses]


def build_step(cfg: GANConfig, ctx: Context, channels: int, side: int, num_classes: int, x_all: Batches,
               y_all: torch.Tensor) -> GANStep:
    """The one builder of the GAN's training step (the stage, under DDP too, and the benches): G and D initialised
    from (ctx.seed, STAGE), Adam (0, 0.9), hinge losses with R1 on real images, the generator's EMA with a half-life
    in images, `ctx.compute`'s settings. `x_all[idx]`: train images; `y_all`: their labels (num_classes 0:
    unconditional). The step reads its position from `trainable.step`."""
    k = num_classes
    g_net = {"z_dim": cfg.z_dim, "num_classes": k, "base": cfg.base_channels, "image_size": side,
             "channels": channels}
    with seeded(ctx.seed, STAGE, "init"):
        G = ctx.place(Generator(**g_net))
        D = ctx.place(Discriminator(num_classes=k, base=cfg.base_channels, image_size=side, channels=channels))
    G_ema = ema_copy(G)
    opt_g = adam(G.parameters(), ctx.device, lr=cfg.lr, betas=(0.0, 0.9))
    opt_d = adam(D.parameters(), ctx.device, lr=cfg.lr, betas=(0.0, 0.9))
    trainable = Trainable({"G": G, "D": D, "G_ema": G_ema}, {"opt_g": opt_g, "opt_d": opt_d})

    # torch.compile does not take the double backward of R1: only the generator is compiled
    G_net, D_net = ctx.train_net(G), ctx.world.wrap(D)

    def step(idx: torch.Tensor, g: torch.Generator) -> Losses:
        G.train()
        D.train()
        # z and fake labels drawn for the global batch; this rank computes on `rows` of it
        z = torch.randn((len(idx), cfg.z_dim), generator=g)
        y_fake = torch.randint(0, max(k, 1), (len(idx),), generator=g)  # k = 0: unconditional
        rows = ctx.world.rows(len(idx))
        x, y = x_all[idx[rows]].to(ctx.device), y_all[idx[rows]].to(ctx.device)
        z, y_fake = z[rows].to(ctx.device), y_fake[rows].to(ctx.device)
        with autocast(ctx.device, ctx.compute):
            fake = G_net(z, y_fake)
            x.requires_grad_(cfg.r1_gamma > 0)
            real_scores, fake_scores = D_net(x, y), D_net(fake.detach(), y_fake)
            loss_d = d_hinge_loss(real_scores, fake_scores)
            r1 = r1_penalty(real_scores, x) if cfg.r1_gamma > 0 else torch.zeros((), device=ctx.device)
            loss_d = loss_d + 0.5 * cfg.r1_gamma * r1
        optimizer_step(D, opt_d, loss_d, loss_name="loss_d", module_name="D", check=trainable.check)
        with no_sync(D_net), autocast(ctx.device, ctx.compute):  # D's gradients of G's loss: never applied
            g_scores = D_net(fake, y_fake)
            loss_g = g_hinge_loss(g_scores)
        optimizer_step(G, opt_g, loss_g, loss_name="loss_g", module_name="G", check=trainable.check)
        ema_update(G_ema, G, ema_decay(trainable.step * cfg.batch_size, cfg.batch_size, cfg.ema_halflife_images))
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "d_real": real_scores.detach().mean(),
                "d_fake": fake_scores.detach().mean(), "r1": r1.detach()}

    return GANStep(g_net, trainable, step)


def run(cfg: GANConfig, ctx: Context) -> dict:
    data = load_data(ctx)
    inputs.evaluator(ctx.paths, data.manifest)  # the cheap FID's: checked before any training
    c, s = data.manifest["image_shape"][0], data.manifest["image_shape"][1]
    built = build_step(cfg, ctx, c, s, data.manifest["num_classes"], training_images(data.train.images, ctx.device),
                       data.train.labels)
    g_net, trainable, step = built.network, built.trainable, built.step
    G_ema = trainable.modules["G_ema"]

    @torch.no_grad()
    def cheap_sample(labels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        G_ema.eval()
        return G_ema(seeded_normal(seeds, (cfg.z_dim,), "z").to(ctx.device), labels.to(ctx.device)).cpu()

    fp = ctx.fingerprint(STAGE, cfg, data.hash)
    ckpt = ctx.paths.checkpoint(STAGE)
    with stage_run(ctx, STAGE, cfg, data.hash, resume=((ckpt, fp),)) as mlrun:
        cheap = CheapFID(ctx, data, cfg, cfg.fid_every_images, cfg.fid_samples, cheap_sample)
        train(STAGE, cfg, trainable, step, seed=ctx.seed, n_train=len(data.train),
              ckpt=ckpt, fingerprint=fp, on_log=logger(mlrun, cheap), run_id=mlrun.run_id, world=ctx.world)
        if not ctx.world.main:
            return {}
        last = trainable.history[-1]
        metrics = {"final_loss_d": last["loss_d"], "final_loss_g": last["loss_g"]}
        out_dir = ctx.paths.model("gan")
        with staged_dir(out_dir) as out:
            history = save_training(out, STAGE, cfg, trainable, G_ema, {"network": g_net, "image_size": s}, fp)
        finish_training(ctx, STAGE, mlrun, out_dir, history, metrics, trainable)
    return metrics
