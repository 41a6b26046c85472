"""Stage `train_ldm`: a conditional noise-prediction U-Net on the frozen VAE's scaled latents
(Rombach et al. 2022), trained by `diffusion_training.train_diffusion`."""

from __future__ import annotations

from genlab.config import LDMConfig
from genlab.stages.common import Context
from genlab.stages.diffusion_training import train_diffusion

STAGE = "train_ldm"


def run(cfg: LDMConfig, ctx: Context) -> dict:
    return train_diffusion(STAGE, "ldm", cfg, ctx, space="latent")
