"""Stage `train_pixel`: the same diffusion model and U-Net code in pixel space, for the comparison of
latent against pixel diffusion (quality and training cost) in one table."""

from __future__ import annotations

from genlab.config import PixelConfig
from genlab.stages.common import Context
from genlab.stages.diffusion_training import train_diffusion

STAGE = "train_pixel"


def run(cfg: PixelConfig, ctx: Context) -> dict:
    return train_diffusion(STAGE, "pixel", cfg, ctx, space="pixel")
