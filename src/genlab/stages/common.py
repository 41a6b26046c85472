"""What every stage shares: its context, output writing and the training-stage epilogue."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import BaseModel
from torch import nn

from genlab import tracking
from genlab.checkpoint import load_train_state, save_snapshot, save_train_state
from genlab.compute import compiled, layout, place
from genlab.config import ComputeConfig, flatten, to_json
from genlab.data import splits
from genlab.device import describe
from genlab.distributed import World
from genlab.images import save_curves
from genlab.paths import Paths, atomic_write, read_json
from genlab.training import Trainable, final_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    paths: Paths
    seed: int
    device: torch.device
    world: World = field(default_factory=World)  # under torchrun: this process's rank of the run
    compute: ComputeConfig = field(default_factory=ComputeConfig)  # precision, fused optimizers, compile

    def fingerprint(self, stage: str, cfg: BaseModel, data_hash: str, *extra: str) -> str:
        """`fingerprint` of a training run in this context (the compute settings count when not the defaults)."""
        return fingerprint(stage, cfg, self.seed, data_hash, *extra, *self.compute.fingerprint_extra())

    def place(self, module: nn.Module) -> nn.Module:
        """A training network on the device in the training layout (`compute.memory_format`)."""
        return place(module, self.device, self.compute)

    def train_net(self, module: nn.Module) -> nn.Module:
        """The module a training step calls: DDP over it under torchrun, compiled with `compute.compile`."""
        return compiled(self.world.wrap(module), self.compute)


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


def dataset_source(manifest: Path) -> str:
    """The prepared data's source name for the MLflow dataset input ("data" when the manifest cannot tell: the
    stage that reads it refuses a bad one with its own message)."""
    try:
        m = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return "data"
    return str(m.get("source", "data")) if isinstance(m, dict) else "data"


def stage_run(ctx: Context, stage: str, cfg: BaseModel, data_hash: str,  # noqa: ANN201 (context manager)
              resume: tuple[tuple[Path, str], ...] = ()):
    """The stage's MLflow run. `resume`: (checkpoint, fingerprint) pairs of the stage's training runs; when one
    of them is resumed, the stage continues the MLflow run its checkpoint records instead of opening a new one."""
    for ckpt, fp in resume:  # a run of this stage killed on another machine left its state on the tracking server
        tracking.fetch_train_state(ctx.paths.root, ckpt, fp)
    # every checkpoint is read (a damaged or unsafe one is refused) before the MLflow run opens
    run_id = next((r for r in [tracking.state_run_id(ckpt, fp) for ckpt, fp in resume] if r), None)
    if not ctx.world.main:
        return contextlib.nullcontext(RankRun())
    source = dataset_source(ctx.paths.prepared / "manifest.json")
    threads, policy = torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY", "default")
    machine = describe(ctx.device)
    log.info("%s: %s, %d CPU threads, OpenMP wait policy %s", stage, machine, threads, policy)
    return tracking.stage_run(ctx.paths.root, stage, {"seed": ctx.seed, "device": str(ctx.device),
                                                      "world_size": ctx.world.size, **flatten(ctx.compute, "compute."),
                                                      **flatten(cfg, "cfg.")},
                              {"genlab.data_hash": data_hash, "genlab.torch_threads": str(threads),
                               "genlab.omp_wait_policy": policy, "genlab.device_name": machine,
                               "genlab.memory_format": layout(ctx.device, ctx.compute)},
                              resume_run_id=run_id,
                              dataset=tracking.prepared_dataset(ctx.paths.root, data_hash, source))


class RankRun:
    """The stage run of a rank other than 0: rank 0 logs for the whole run, this one logs nothing."""

    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass


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
    """After the outputs are in place: metrics JSON (with the MLflow run, the training time and the precision it
    ran at, which stay out of the model folder so that it is the same bytes in every run), loss-curve CSV (DVC
    plot), MLflow, and the in-progress checkpoint dropped."""
    state = load_train_state(out / "train_state.pt")
    metrics = {**metrics, "images_seen": state["images_seen"], "train_seconds": round(trainable.seconds, 2),
               "compute_precision": ctx.compute.precision, "mlflow_run_id": run.run_id}
    write_metrics(ctx, stage, metrics)
    atomic_write(ctx.paths.plot(stage), history.to_csv(index=False))
    run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    for path in sorted(out.iterdir()):
        if path.name != "train_state.pt":  # resume state stays in DVC's cache, not in every MLflow run
            run.log_artifact(path, "outputs")
    drop_checkpoint(ctx, stage, run)


def drop_checkpoint(ctx: Context, key: str, run: tracking.StageRun) -> None:
    """A finished training's in-progress state: its file, and its copy on the tracking server."""
    ckpt = ctx.paths.checkpoint(key)
    ckpt.unlink(missing_ok=True)
    tracking.drop_train_state(run.run_id, ckpt)


def training_summary(ctx: Context, stage: str) -> dict[str, Any]:
    """images_seen, train_seconds and mlflow_run_id of a finished training stage (its metrics file)."""
    return read_json(ctx.paths.metrics(stage), ("images_seen", "train_seconds", "mlflow_run_id"), stage)


def logger(run: tracking.StageRun,
           cheap: Callable[[int], dict[str, float]] | None = None) -> Callable[[dict[str, float], int], dict]:
    """on_log for `train`: metrics to MLflow (step = images seen), plus the cheap FID when it is due."""
    def on_log(metrics: dict[str, float], images_seen: int) -> dict[str, float]:
        extra = cheap(images_seen) if cheap is not None else {}
        run.log_metrics({**metrics, **extra}, images_seen)
        return extra
    return on_log
