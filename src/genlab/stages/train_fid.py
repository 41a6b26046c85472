"""Scores against the train split while a stage runs: FID and friends in evaluator features, and the cheap FID
curve of a training stage."""

from __future__ import annotations

from collections.abc import Callable

import torch

from genlab.config import TrainConfig
from genlab.metrics import fid
from genlab.metrics.reference import reference_in_process, score_against
from genlab.randomness import derive_seed
from genlab.stages.common import Context, Data


def train_scores(ctx: Context, data: Data, images: torch.Tensor, kid_subset_size: int, pr_neighbourhood: int,
                 batch_size: int = 256) -> dict[str, float]:
    """FID, KID and precision/recall of `images` against the train split in evaluator features (offline tier), the
    train features extracted once per process (`reference_in_process`)."""
    cuda = ctx.device.type == "cuda"
    extractor = fid.make_extractor(ctx.paths.model("evaluator") / "model.safetensors", None)
    ref = reference_in_process(data.train.images, extractor, data.hash, batch_size, cuda)
    return score_against(images, ref, extractor, kid_subset_size, pr_neighbourhood, batch_size, cuda)


class CheapFID:
    """FID of a few samples during training (evaluator features vs the train split), logged as a curve.

    Meant to show the trend, not to rank models: small sample counts bias FID upwards. The `evaluate`
    stage computes the full-size FID.
    """

    def __init__(self, ctx: Context, data: Data, cfg: TrainConfig, every_images: int, n: int,
                 sample: Callable[[torch.Tensor, list[int]], torch.Tensor]) -> None:
        self.ctx, self.data, self.every, self.sample = ctx, data, every_images, sample
        batch = min(cfg.batch_size, len(data.train))
        self.spacing = max(1, cfg.log_every_images // batch) * batch  # images between two logged rows
        k = data.manifest["num_classes"]
        self.labels = torch.arange(n) % max(k, 1)  # k = 0 (unlabelled): all 0, ignored by unconditional models
        self.seeds = [derive_seed(ctx.seed, "cheap-fid", i) for i in range(n)]

    def __call__(self, images_seen: int) -> dict[str, float]:
        """Due on the first logged row at or past each multiple of `every` (stateless: resumes exactly)."""
        if self.every <= 0 or images_seen // self.every == (images_seen - self.spacing) // self.every:
            return {}
        images = self.sample(self.labels, self.seeds)
        m = train_scores(self.ctx, self.data, images, kid_subset_size=50, pr_neighbourhood=3)
        return {"cheap_fid": m["fid"]}
