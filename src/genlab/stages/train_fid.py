"""Scores against the train split while a stage runs: FID and friends in evaluator features, and the cheap FID
curve of a training stage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from genlab.config import TrainConfig
from genlab.device import inference_batch
from genlab.metrics import fid
from genlab.metrics.reference import (
    ReferenceStats,
    compute_reference,
    reference_key,
    save_reference,
    score_against,
    stored_reference,
)
from genlab.randomness import derive_seed
from genlab.stages.common import Context, Data

TRAIN_REFERENCE = "train_reference.safetensors"  # in models/evaluator: the train split in the evaluator's features
PR_NEIGHBOURHOOD = 3  # k of precision/recall during training; the file keeps the train features' radii for it


def write_train_reference(out: Path, ctx: Context, data: Data) -> None:
    """The train split's features in the evaluator snapshot `out/model.safetensors` (offline tier), their FID
    statistics and k-NN radii, saved next to it: every later stage scores against them without re-extracting (one
    pass over 98,000 64-px images takes about 15 min on 2 CPU cores)."""
    extractor = fid.make_extractor(out / "model.safetensors", None)
    stats = compute_reference(data.train.images, extractor, reference_key(data.hash, extractor),
                              cuda=ctx.device.type == "cuda", radii_k=PR_NEIGHBOURHOOD)
    save_reference(stats, out / TRAIN_REFERENCE)


def train_reference(ctx: Context, data: Data) -> tuple[fid.Extractor, ReferenceStats]:
    """The offline extractor and the train split's reference written by `train_evaluator`, refused when stale."""
    extractor = fid.make_extractor(ctx.paths.model("evaluator") / "model.safetensors", None)
    path = ctx.paths.model("evaluator") / TRAIN_REFERENCE
    return extractor, stored_reference(path, reference_key(data.hash, extractor), "train_evaluator")


def train_scores(ctx: Context, data: Data, images: torch.Tensor, kid_subset_size: int,
                 pr_neighbourhood: int = PR_NEIGHBOURHOOD, batch_size: int = 256) -> dict[str, float]:
    """FID, KID and precision/recall of `images` against the train split in evaluator features (offline tier),
    the train features read from the evaluator's folder (`train_reference`)."""
    extractor, ref = train_reference(ctx, data)
    return score_against(images, ref, extractor, kid_subset_size, pr_neighbourhood, batch_size,
                         ctx.device.type == "cuda")


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
        # in inference batches: 200 samples of a 64-px GAN in one forward raised train_gan's peak by 0.26 GiB
        b, n = inference_batch(self.data.train.images.shape[-1]), len(self.seeds)
        images = torch.cat([self.sample(self.labels[i : i + b], self.seeds[i : i + b]) for i in range(0, n, b)])
        m = train_scores(self.ctx, self.data, images, kid_subset_size=50)
        return {"cheap_fid": m["fid"]}
