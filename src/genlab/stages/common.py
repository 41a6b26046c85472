"""What every stage shares: its context, output writing and the training-stage epilogue."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import BaseModel

from genlab import tracking
from genlab.checkpoint import load_train_state, save_snapshot, save_train_state
from genlab.config import TrainConfig, flatten, to_json
from genlab.data import splits
from genlab.images import save_curves
from genlab.metrics import fid
from genlab.metrics.reference import reference_in_process, score_against
from genlab.paths import Paths, atomic_write, read_json
from genlab.randomness import derive_seed
from genlab.training import Trainable, checkpoint_run_id, final_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    paths: Paths
    seed: int
    device: torch.device


@dataclass(frozen=True)
class Data:
    train: splits.Split
    val: splits.Split
    test: splits.Split
    manifest: dict

    @property
    def hash(self) -> str:
        return self.manifest["content_hash"]


def load_data(ctx: Context) -> Data:
    """Every split, checked against the manifest and its content hash (`splits.read_all`)."""
    data, manifest = splits.read_all(ctx.paths.prepared)
    return Data(*(data[name] for name in splits.SPLITS), manifest=manifest)


def fingerprint(stage: str, cfg: BaseModel, seed: int, data_hash: str, *extra: str) -> str:
    """Identity of a training run: a checkpoint with another fingerprint is never resumed."""
    return hashlib.sha256("|".join([stage, to_json(cfg), str(seed), data_hash, *extra]).encode()).hexdigest()


def stage_run(ctx: Context, stage: str, cfg: BaseModel, data_hash: str,  # noqa: ANN201 (context manager)
              resume: tuple[tuple[Path, str], ...] = ()):
    """The stage's MLflow run. `resume`: (checkpoint, fingerprint) pairs of the stage's training runs; when one
    of them is resumed, the stage continues the MLflow run its checkpoint records instead of opening a new one."""
    # every checkpoint is read (a damaged or unsafe one is refused) before the MLflow run opens
    run_id = next((r for r in [checkpoint_run_id(ckpt, fp) for ckpt, fp in resume] if r), None)
    return tracking.stage_run(ctx.paths.root, stage, {"seed": ctx.seed, "device": str(ctx.device),
                                                      **flatten(cfg, "cfg.")}, {"genlab.data_hash": data_hash},
                              resume_run_id=run_id)


def write_metrics(ctx: Context, stage: str, metrics: dict[str, Any]) -> None:
    atomic_write(ctx.paths.metrics(stage), json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def save_training(out: Path, stage: str, cfg: BaseModel, trainable: Trainable, snapshot: torch.nn.Module,
                  snapshot_config: dict[str, Any], fp: str) -> pd.DataFrame:
    """Snapshot (sampling weights), training state (resume), resolved config and loss curve into `out`."""
    save_snapshot(snapshot, out / "model.safetensors", snapshot_config)
    save_train_state(final_state(trainable.state_dict(fp, cfg.batch_size)), out / "train_state.pt")
    atomic_write(out / "config.json", to_json(cfg) + "\n")
    history = pd.DataFrame(trainable.history)
    save_curves(history, out / "loss.png", stage)
    return history


def finish_training(ctx: Context, stage: str, run: tracking.StageRun, out: Path, history: pd.DataFrame,
                    metrics: dict[str, Any], trainable: Trainable) -> None:
    """After the outputs are in place: metrics JSON (with the MLflow run and the training time, which stay out
    of the model folder so that it is the same bytes in every run), loss-curve CSV (DVC plot), MLflow, and the
    in-progress checkpoint dropped."""
    state = load_train_state(out / "train_state.pt")
    metrics = {**metrics, "images_seen": state["images_seen"], "train_seconds": round(trainable.seconds, 2),
               "mlflow_run_id": run.run_id}
    write_metrics(ctx, stage, metrics)
    atomic_write(ctx.paths.plot(stage), history.to_csv(index=False))
    run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    for path in sorted(out.iterdir()):
        if path.name != "train_state.pt":  # resume state stays in DVC's cache, not in every MLflow run
            run.log_artifact(path, "outputs")
    ctx.paths.checkpoint(stage).unlink(missing_ok=True)


def training_summary(ctx: Context, stage: str) -> dict[str, Any]:
    """images_seen, train_seconds and mlflow_run_id of a finished training stage (its metrics file)."""
    return read_json(ctx.paths.metrics(stage), ("images_seen", "train_seconds", "mlflow_run_id"), stage)


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


def logger(run: tracking.StageRun, cheap: CheapFID | None = None) -> Callable[[dict[str, float], int], dict]:
    """on_log for `train`: metrics to MLflow (step = images seen), plus the cheap FID when it is due."""
    def on_log(metrics: dict[str, float], images_seen: int) -> dict[str, float]:
        extra = cheap(images_seen) if cheap is not None else {}
        run.log_metrics({**metrics, **extra}, images_seen)
        return extra
    return on_log
