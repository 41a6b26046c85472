"""Stage `train_ldm`: a class-conditional noise-prediction U-Net on the frozen VAE's scaled latents.

Labels are replaced by the null label with probability p_uncond (classifier-free guidance); the
snapshot holds the EMA weights.
"""

from __future__ import annotations

import hashlib

import torch

from genlab.config import LDMConfig
from genlab.diffusion.loss import drop_labels, eps_loss
from genlab.diffusion.schedules import alpha_bar
from genlab.models.ema import ema_copy, ema_decay, ema_update
from genlab.models.unet import UNet
from genlab.models.vae import reparameterize
from genlab.paths import staged_dir
from genlab.sampling import load_vae
from genlab.stages.common import Context, fingerprint, finish_training, load_data, save_training, stage_run
from genlab.stages.train_vae import encode
from genlab.training import Trainable, train

STAGE = "train_ldm"


def unet_network(cfg: LDMConfig, latent_channels: int, num_classes: int) -> dict:
    return {"in_channels": latent_channels, "base_channels": cfg.base_channels,
            "channel_mults": list(cfg.channel_mults), "num_res_blocks": cfg.num_res_blocks,
            "attention_levels": list(cfg.attention_levels), "num_classes": num_classes}


def run(cfg: LDMConfig, ctx: Context) -> dict:
    data = load_data(ctx)
    vae_dir = ctx.paths.model("vae")
    vae, vae_cfg = load_vae(vae_dir, ctx.device)
    scale = float(vae_cfg["latent_scale"])
    mean, logvar = encode(vae, data.train.images, ctx.device)
    num_classes = data.manifest["num_classes"]
    network = unet_network(cfg, mean.shape[1], num_classes)
    unet = UNet(**network).to(ctx.device)
    ema = ema_copy(unet)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    trainable = Trainable({"unet": unet, "ema": ema}, {"opt": opt})
    ab = alpha_bar(cfg.timesteps, cfg.schedule)
    y_all = data.train.labels

    def step(idx: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        unet.train()
        eps = torch.randn(mean[idx].shape, generator=g)
        z0 = (reparameterize(mean[idx], logvar[idx], eps) * scale).to(ctx.device)  # scaled latents
        y = drop_labels(y_all[idx], cfg.p_uncond, num_classes, g).to(ctx.device)
        loss = eps_loss(unet, z0, y, ab, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema_update(ema, unet, ema_decay(trainable.step * cfg.batch_size, cfg.batch_size, cfg.ema_halflife_images))
        return {"loss": loss.item()}

    vae_hash = hashlib.sha256((vae_dir / "model.safetensors").read_bytes()).hexdigest()
    fp = fingerprint(STAGE, cfg, ctx.seed, data.hash, vae_hash)
    with stage_run(ctx, STAGE, cfg, data.hash) as mlrun:
        train(STAGE, cfg, trainable, step, seed=ctx.seed, n_train=len(data.train),
              ckpt=ctx.paths.checkpoint(STAGE), fingerprint=fp, on_log=mlrun.log_metrics)
        metrics = {"final_loss": trainable.history[-1]["loss"], "parameters": sum(p.numel() for p in unet.parameters())}
        snapshot_cfg = {"network": network, "timesteps": cfg.timesteps, "schedule": cfg.schedule,
                        "latent_shape": list(mean.shape[1:]), "latent_scale": scale, "vae_sha256": vae_hash}
        out_dir = ctx.paths.model("ldm")
        with staged_dir(out_dir) as out:
            history = save_training(out, STAGE, cfg, trainable, ema, snapshot_cfg, fp)
        finish_training(ctx, STAGE, mlrun, out_dir, history, metrics)
    return metrics
