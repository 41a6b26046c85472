"""Samplers for every trained family, rebuilt from snapshots alone.

Image i of a request has its own seed: its starting noise (and any per-step noise) is drawn from
`randomness.generator(seed, ...)`, so any image can be regenerated alone, in any batch.
Used by the `sample` stage and by the MLflow serving model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genlab.checkpoint import load_snapshot
from genlab.diffusion.sample import ddim_sample, ddim_timesteps, guided
from genlab.diffusion.schedules import alpha_bar
from genlab.models.gan import Generator
from genlab.models.unet import UNet
from genlab.models.vae import VAE
from genlab.randomness import derive_seed, generator

FAMILIES = ("vae", "ldm", "gan")


def image_seeds(base_seed: int, family: str, n: int) -> list[int]:
    return [derive_seed(base_seed, family, i) for i in range(n)]


def seeded_normal(seeds: list[int], shape: tuple[int, ...], *stream: int | str) -> torch.Tensor:
    """(len(seeds), *shape): row i drawn from the generator of (seeds[i], *stream)."""
    return torch.stack([torch.randn(shape, generator=generator(s, *stream)) for s in seeds])


def load_vae(model_dir: Path, device: torch.device) -> tuple[VAE, dict]:
    state, cfg = load_snapshot(model_dir / "model.safetensors")
    vae = VAE(**cfg["network"])
    vae.load_state_dict(state)
    return vae.to(device).eval(), cfg


class VAESampler:
    """Decode z ~ N(0, I): unconditional, labels are ignored."""

    conditional = False

    def __init__(self, vae_dir: Path, device: torch.device) -> None:
        self.vae, cfg = load_vae(vae_dir, device)
        self.latent_shape, self.device = tuple(cfg["latent_shape"]), device

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, seeds: list[int], **_: object) -> torch.Tensor:
        z = seeded_normal(seeds, self.latent_shape, "latent").to(self.device)
        return self.vae.decode(z).clamp(-1, 1).cpu()


class LDMSampler:
    """DDIM in the VAE's latent space with classifier-free guidance, decoded by the VAE."""

    conditional = True

    def __init__(self, ldm_dir: Path, vae_dir: Path, device: torch.device) -> None:
        state, cfg = load_snapshot(ldm_dir / "model.safetensors")
        self.unet = UNet(**cfg["network"])
        self.unet.load_state_dict(state)
        self.unet.to(device).eval()
        self.vae, _ = load_vae(vae_dir, device)
        self.cfg, self.device = cfg, device
        self.alpha_bar = alpha_bar(cfg["timesteps"], cfg["schedule"])

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, seeds: list[int], *, guidance_scale: float, steps: int,
                 eta: float = 0.0) -> torch.Tensor:
        c = self.cfg
        ts = ddim_timesteps(c["timesteps"], steps)
        shape = tuple(c["latent_shape"])
        noise = seeded_normal(seeds, shape, "latent").to(self.device)
        denoise = guided(self.unet, labels.to(self.device), c["network"]["num_classes"], guidance_scale)
        z = ddim_sample(denoise, noise, self.alpha_bar, ts, eta,
                        step_noise=lambda i: seeded_normal(seeds, shape, "ddim", i))
        return self.vae.decode(z / c["latent_scale"]).clamp(-1, 1).cpu()


class GANSampler:
    conditional = True

    def __init__(self, gan_dir: Path, device: torch.device) -> None:
        state, cfg = load_snapshot(gan_dir / "model.safetensors")
        self.g = Generator(**cfg["network"])
        self.g.load_state_dict(state)
        self.g.to(device).eval()
        self.z_dim, self.device = cfg["network"]["z_dim"], device

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, seeds: list[int], **_: object) -> torch.Tensor:
        z = seeded_normal(seeds, (self.z_dim,), "z").to(self.device)
        return self.g(z, labels.to(self.device)).clamp(-1, 1).cpu()


Sampler = VAESampler | LDMSampler | GANSampler


def load_sampler(family: str, dirs: dict[str, Path], device: torch.device) -> Sampler:
    """`dirs` maps family names to snapshot folders; the LDM also needs the VAE's."""
    if family == "vae":
        return VAESampler(dirs["vae"], device)
    if family == "ldm":
        return LDMSampler(dirs["ldm"], dirs["vae"], device)
    if family == "gan":
        return GANSampler(dirs["gan"], device)
    raise ValueError(f"unknown family {family!r}: expected one of {FAMILIES}")


def generate(sampler: Sampler, labels: torch.Tensor, seeds: list[int], batch_size: int,
             **kwargs: object) -> torch.Tensor:
    """Sample in batches; the result does not depend on batch_size (per-image seeds)."""
    out = [sampler(labels[i : i + batch_size], seeds[i : i + batch_size], **kwargs)
           for i in range(0, len(seeds), batch_size)]
    return torch.cat(out)
