"""Stage `train_vae`: convolutional VAE, loss = reconstruction + beta * KL(q(z|x) || N(0, I)).

Writes the snapshot, the latent scale factor (1 / std of the latents, read by `train_ldm`),
a reconstruction grid and a grid of samples decoded from N(0, I).
"""

from __future__ import annotations

import json

import torch
from torch.nn import functional as F

from genlab.config import VAEConfig
from genlab.images import save_grid
from genlab.models.vae import VAE, reparameterize, vae_loss
from genlab.paths import staged_dir
from genlab.randomness import generator
from genlab.stages.common import Context, fingerprint, finish_training, load_data, save_training, stage_run
from genlab.training import Trainable, train

STAGE = "train_vae"


def beta_at(cfg: VAEConfig, images_seen: int) -> float:
    """KL warm-up: beta grows linearly from 0 to cfg.beta over kl_warmup_images."""
    if cfg.plain_autoencoder:
        return 0.0
    if cfg.kl_warmup_images == 0:
        return cfg.beta
    return cfg.beta * min(1.0, images_seen / cfg.kl_warmup_images)


@torch.no_grad()
def encode(vae: VAE, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior parameters (mean, logvar) of every image, batched: each (N, latent, s, s) on CPU."""
    vae.eval()
    parts = [vae.encode(images[i : i + 512].to(device)) for i in range(0, len(images), 512)]
    return torch.cat([m.cpu() for m, _ in parts]), torch.cat([lv.cpu() for _, lv in parts])


@torch.no_grad()
def reconstruct(vae: VAE, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    mean, _ = encode(vae, images, device)
    return torch.cat([vae.decode(mean[i : i + 512].to(device)).cpu() for i in range(0, len(mean), 512)])


def latent_scale(mean: torch.Tensor, logvar: torch.Tensor, seed: int) -> float:
    """1 / std of latents z ~ q(z|x) over the training set, so the diffusion model sees unit variance."""
    z = reparameterize(mean, logvar, torch.randn(mean.shape, generator=generator(seed, "latent-scale")))
    return float(1.0 / z.std())


def run(cfg: VAEConfig, ctx: Context) -> dict:
    data = load_data(ctx)
    c, s = data.manifest["image_shape"][0], data.manifest["image_shape"][1]
    network = {"in_channels": c, "base_channels": cfg.base_channels, "latent_channels": cfg.latent_channels,
               "downsample": cfg.downsample}
    vae = VAE(**network).to(ctx.device)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    trainable = Trainable({"vae": vae}, {"opt": opt})
    x_all = data.train.images

    def step(idx: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        vae.train()
        x = x_all[idx].to(ctx.device)
        mean, logvar = vae.encode(x)
        eps = torch.randn(mean.shape, generator=g).to(ctx.device)
        z = mean if cfg.plain_autoencoder else reparameterize(mean, logvar, eps)
        beta = beta_at(cfg, trainable.step * cfg.batch_size)
        loss, recon, kl = vae_loss(x, vae.decode(z), mean, logvar, beta, cfg.recon_sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "recon": recon.item(), "kl": kl.item(), "beta": beta}

    fp = fingerprint(STAGE, cfg, ctx.seed, data.hash)
    with stage_run(ctx, STAGE, cfg, data.hash) as mlrun:
        train(STAGE, cfg, trainable, step, seed=ctx.seed, n_train=len(data.train),
              ckpt=ctx.paths.checkpoint(STAGE), fingerprint=fp, on_log=mlrun.log_metrics)
        mean, logvar = encode(vae, x_all, ctx.device)
        scale = latent_scale(mean, logvar, ctx.seed)
        test_rec = reconstruct(vae, data.test.images, ctx.device)
        t_mean, t_logvar = encode(vae, data.test.images, ctx.device)
        metrics = {
            "test_mse": float(F.mse_loss(test_rec, data.test.images)),
            "test_kl": float(0.5 * (t_mean.pow(2) + t_logvar.exp() - 1 - t_logvar).flatten(1).sum(1).mean()),
            "latent_scale": scale,
            "images_seen": trainable.step * cfg.batch_size,
        }
        latent_shape = list(mean.shape[1:])
        snapshot_cfg = {"network": network, "latent_shape": latent_shape, "latent_scale": scale, "image_size": s}
        out_dir = ctx.paths.model("vae")
        with staged_dir(out_dir) as out:
            history = save_training(out, STAGE, cfg, trainable, vae, snapshot_cfg, fp)
            (out / "latent_scale.json").write_text(json.dumps({"latent_scale": scale,
                                                               "latent_shape": latent_shape}) + "\n")
            pairs = torch.stack([data.test.images[:50], test_rec[:50]], 1).flatten(0, 1)
            save_grid(pairs, out / "reconstructions.png", nrow=10)
            with torch.no_grad():
                prior = torch.randn((64, *latent_shape), generator=generator(ctx.seed, "vae-prior-grid"))
                save_grid(vae.decode(prior.to(ctx.device)).clamp(-1, 1).cpu(), out / "prior_samples.png", nrow=8)
        finish_training(ctx, STAGE, mlrun, out_dir, history, metrics)
    return metrics
