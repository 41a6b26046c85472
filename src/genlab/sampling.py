"""Samplers for every trained family, rebuilt from snapshots alone.

Image i of a request has its own seed: its starting noise (and any per-step noise) is drawn from
`randomness.generator(seed, ...)`, so any image can be regenerated alone, in any batch.
Used by the `sample` stage and by the MLflow serving model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from genlab.checkpoint import load_network, rerun
from genlab.config import FAMILIES
from genlab.data.sources import heldout_prompts
from genlab.diffusion.sample import (
    Denoiser,
    as_eps_denoiser,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    guide,
    guided,
)
from genlab.diffusion.schedules import alpha_bar
from genlab.errors import GenlabError
from genlab.models.gan import Generator
from genlab.models.text import trim
from genlab.models.unet import UNet
from genlab.models.vae import VAE
from genlab.randomness import derive_seed, generator

DIFFUSION = ("ldm", "pixel")
PROMPT_TABLE = "prompts.safetensors"  # a text model's training and held-out phrasings, encoded (models/text.py)


def image_seeds(base_seed: int, family: str, n: int) -> list[int]:
    return [derive_seed(base_seed, family, i) for i in range(n)]


def seeded_normal(seeds: list[int], shape: tuple[int, ...], *stream: int | str) -> torch.Tensor:
    """(len(seeds), *shape): row i drawn from the generator of (seeds[i], *stream)."""
    return torch.stack([torch.randn(shape, generator=generator(s, *stream)) for s in seeds])


def load_vae(model_dir: Path, device: torch.device) -> tuple[VAE, dict]:
    vae, cfg = load_network(model_dir / "model.safetensors", VAE, "a VAE", "train_vae",
                            keys=("latent_shape", "latent_scale"))
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


class DiffusionSampler:
    """DDIM or DDPM from pure noise with classifier-free guidance; in latent space (decoded by the VAE)
    or pixel space, for a class-, text- or class+text-conditional U-Net predicting eps or v.

    A class+text model is guided by the labels unless prompts are given; a text model always by
    prompts (held-out phrasings of the labels when none are given, see `prompts_for`)."""

    def __init__(self, model_dir: Path, vae_dir: Path | None, device: torch.device) -> None:
        path = model_dir / "model.safetensors"
        stage = f"train_{model_dir.name}" if model_dir.name in DIFFUSION else None  # for messages
        self.unet, cfg = load_network(path, UNet, "a diffusion U-Net", stage,
                                      keys=("timesteps", "schedule", "latent_shape", "latent_scale"))
        self.unet.to(device).eval()
        self.vae = None
        if cfg.get("space", "latent") == "latent":
            self.vae, vae_cfg = load_vae(vae_dir, device)
            if list(vae_cfg["latent_shape"]) != list(cfg["latent_shape"]):
                raise GenlabError(f"{vae_dir / 'model.safetensors'}: a VAE with latents {vae_cfg['latent_shape']}, "
                                  f"but {path} was trained on latents {cfg['latent_shape']}: expected the VAE it was "
                                  f"trained with; {rerun(stage)}")
        self.cfg, self.device, self.timesteps = cfg, device, cfg["timesteps"]
        self.alpha_bar = alpha_bar(cfg["timesteps"], cfg["schedule"])
        self.text = None
        self.conditioning = cfg.get("conditioning", "class")  # "none": trained on unlabelled data
        self.conditional = self.conditioning != "none"
        if "text" in self.conditioning:
            from genlab.models.text import TextEncoder

            table = model_dir / PROMPT_TABLE  # absent in snapshots written before it was: prompts are encoded
            self.text = TextEncoder(device=str(device), table=table if table.is_file() else None)

    def prompts_for(self, labels: torch.Tensor, seeds: list[int]) -> list[str]:
        """Unseen phrasings by default: image i gets held-out template seeds[i] mod P of its label, so its
        prompt, like its noise, depends on (label, seed) alone and not on its place in a batch."""
        source, names = self.cfg.get("source", "digits"), self.cfg.get("class_names", [])
        return [cycle(heldout_prompts(source, int(y), names), s) for y, s in zip(labels, seeds, strict=True)]

    def denoiser(self, labels: torch.Tensor, guidance_scale: float, prompts: list[str] | None) -> Denoiser:
        if self.conditioning == "none":  # unconditional: labels and guidance do not apply
            out = lambda x, t: self.unet(x, t)  # noqa: E731
        elif prompts is None:
            out = guided(self.unet, labels.to(self.device), self.cfg["network"]["num_classes"], guidance_scale)
        else:
            tokens, mask = trim(*self.text.encode(prompts))
            out = guided_text(self.unet, tokens.to(self.device), mask.to(self.device), guidance_scale)
        return as_eps_denoiser(out, self.cfg.get("prediction", "eps"), self.alpha_bar)

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, seeds: list[int], *, guidance_scale: float, steps: int,
                 eta: float = 0.0, sampler: str = "ddim", prompts: list[str] | None = None) -> torch.Tensor:
        c = self.cfg
        ts = ddim_timesteps(c["timesteps"], steps)
        shape = tuple(c["latent_shape"])
        noise = seeded_normal(seeds, shape, "latent").to(self.device)
        if prompts is not None and self.text is None:
            raise ValueError(f"prompts given to a {self.conditioning}-conditional model")
        if prompts is None and self.conditioning == "text":
            prompts = self.prompts_for(labels, seeds)
        denoise = self.denoiser(labels, guidance_scale, prompts)

        def step_noise(i: int) -> torch.Tensor:
            return seeded_normal(seeds, shape, "ddim", i)

        if sampler == "ddpm":
            x = ddpm_sample(denoise, noise, self.alpha_bar, ts, step_noise)
        else:
            x = ddim_sample(denoise, noise, self.alpha_bar, ts, eta, step_noise=step_noise)
        x = x / c["latent_scale"]
        return (self.vae.decode(x) if self.vae is not None else x).clamp(-1, 1).cpu()


def cycle(options: list[str], i: int) -> str:
    return options[i % len(options)]


def guided_text(unet: UNet, tokens: torch.Tensor, mask: torch.Tensor, scale: float) -> Denoiser:
    """Classifier-free guidance for prompts: the unconditional half uses the learned null token."""
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if scale == 1.0:  # eq. 6 reduces to one model: no doubled batch
            return unet(x, t, context=tokens, context_mask=mask)
        b = x.shape[0]
        if scale == 0.0:
            return unet(x, t, context=tokens, context_mask=mask, drop=torch.ones(b, dtype=torch.bool, device=x.device))
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        out = unet(torch.cat([x, x]), torch.cat([t, t]), context=torch.cat([tokens, tokens]),
                   context_mask=torch.cat([mask, mask]), drop=drop)
        eps_c, eps_u = out.chunk(2)
        return guide(eps_c, eps_u, scale)
    return denoise


class GANSampler:
    def __init__(self, gan_dir: Path, device: torch.device) -> None:
        self.g, cfg = load_network(gan_dir / "model.safetensors", Generator, "a GAN generator", "train_gan")
        self.g.to(device).eval()
        self.conditional = self.g.num_classes > 0
        self.z_dim, self.device = cfg["network"]["z_dim"], device

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, seeds: list[int], **_: object) -> torch.Tensor:
        z = seeded_normal(seeds, (self.z_dim,), "z").to(self.device)
        return self.g(z, labels.to(self.device)).clamp(-1, 1).cpu()


Sampler = VAESampler | DiffusionSampler | GANSampler


def load_sampler(family: str, dirs: dict[str, Path], device: torch.device) -> Sampler:
    """`dirs` maps family names to snapshot folders; the LDM also needs the VAE's."""
    if family == "vae":
        return VAESampler(dirs["vae"], device)
    if family in DIFFUSION:
        return DiffusionSampler(dirs[family], dirs.get("vae"), device)
    if family == "gan":
        return GANSampler(dirs["gan"], device)
    raise ValueError(f"unknown family {family!r}: expected one of {FAMILIES}")


def generate(model: Sampler, labels: torch.Tensor, seeds: list[int], batch_size: int,
             prompts: list[str] | None = None, **kwargs: object) -> torch.Tensor:
    """Sample in batches; the result does not depend on batch_size (per-image seeds and prompts). More than one
    batch shows a progress bar (a diffusion model's 1,400 samples at 32 px take minutes on a CPU)."""
    def batch(i: int) -> dict:
        return {**kwargs, "prompts": prompts[i : i + batch_size]} if prompts is not None else kwargs
    out = []
    with tqdm(total=len(seeds), unit="img", desc=f"sampling {type(model).__name__}",
              disable=len(seeds) <= batch_size) as bar:
        for i in range(0, len(seeds), batch_size):
            out.append(model(labels[i : i + batch_size], seeds[i : i + batch_size], **batch(i)))
            bar.update(len(out[-1]))
    return torch.cat(out)
