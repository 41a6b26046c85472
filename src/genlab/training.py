"""The one training loop every stage uses: counted in images seen, resumable exactly.

Each step's randomness comes from `randomness.generator(seed, stage, "step", step)` and its batch
from `randomness.batch_indices(seed, step, ...)`, so the training state needs no RNG state: the
modules, optimizers, step and loss history (tensors and plain numbers) are enough to resume.

A step whose loss or gradient is NaN or Inf stops the stage (`TrainingDiverged`, naming the stage,
step and tensor) before the optimizer applies it; the last checkpoint, written from finite steps
only, stays the resume point.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from genlab.checkpoint import load_train_state, save_train_state
from genlab.config import TrainConfig
from genlab.errors import TrainingDiverged
from genlab.paths import stale_temporaries
from genlab.randomness import batch_indices, generator

log = logging.getLogger(__name__)

StepFn = Callable[[torch.Tensor, torch.Generator], dict[str, float]]
LogFn = Callable[[dict[str, float], int], dict[str, float] | None]  # (metrics, images seen) -> extra columns


@dataclass
class Trainable:
    """What a training state holds: named modules (EMA copies included) and optimizers."""

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    sums: dict[str, float] = field(default_factory=dict)  # losses summed since the last logged row
    count: int = 0  # steps summed in `sums`
    seconds: float = 0.0  # wall time spent in training steps, summed across resumes

    def state_dict(self, fingerprint: str, batch_size: int, run_id: str | None = None) -> dict[str, Any]:
        """Everything a resume needs. `seconds` and `mlflow_run_id` belong to the process history, not to
        the result: `final_state` drops them, so a finished stage's training state is the same bytes in
        every run of the same params."""
        return {
            "fingerprint": fingerprint,
            "step": self.step,
            "images_seen": self.step * batch_size,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "history": self.history,
            "pending": {"sums": dict(self.sums), "count": self.count},
            "seconds": self.seconds,
            "mlflow_run_id": run_id or "",
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.history = list(state["history"])
        self.step = int(state["step"])
        self.sums, self.count = dict(state["pending"]["sums"]), int(state["pending"]["count"])
        self.seconds = float(state.get("seconds", 0.0))


VOLATILE = ("seconds", "mlflow_run_id")  # per-process facts in a resume checkpoint, not in a stage output


def final_state(state: dict[str, Any]) -> dict[str, Any]:
    """A training state without its per-process facts: what a finished stage keeps next to its snapshot."""
    return {k: v for k, v in state.items() if k not in VOLATILE}


class NonFinite(Exception):
    """A loss or gradient that is NaN or Inf; the message names the tensor."""


def optimizer_step(module: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, *, loss_name: str,
                   module_name: str, max_norm: float | None = None) -> torch.Tensor:
    """Backpropagate `loss` and step `opt` (clipping `module`'s gradient norm to `max_norm` if given), unless
    the loss or the gradient is NaN or Inf: then raise `NonFinite` naming it, the weights and the optimizer
    state untouched. One host sync. Returns the gradient norm before clipping."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return apply_gradients(module, opt, loss.detach(), loss_name=loss_name, module_name=module_name,
                           max_norm=max_norm)


def apply_gradients(module: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, *, loss_name: str,
                    module_name: str, max_norm: float | None = None) -> torch.Tensor:
    """`optimizer_step` after its backward: for gradients accumulated over micro-batches, `loss` their total."""
    params = [p for p in module.parameters() if p.grad is not None]
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if not bool(torch.isfinite(loss) & torch.isfinite(norm)):
        if not torch.isfinite(loss):
            raise NonFinite(f"{loss_name} ({loss.item()})")
        bad = next(n for n, p in module.named_parameters() if p.grad is not None and not p.grad.isfinite().all())
        raise NonFinite(f"the gradient of {module_name}.{bad}")
    opt.step()
    return norm


def checkpoint_run_id(ckpt: Path, fingerprint: str) -> str | None:
    """The MLflow run a resumable checkpoint of this exact run belongs to, if there is one."""
    if not ckpt.is_file():
        return None
    state = load_train_state(ckpt)
    return (state.get("mlflow_run_id") or None) if state.get("fingerprint") == fingerprint else None


def try_resume(trainable: Trainable, ckpt: Path, fingerprint: str) -> bool:
    """Load `ckpt` if it belongs to this exact run (same config and data); otherwise start fresh."""
    if not ckpt.is_file():
        return False
    state = load_train_state(ckpt)
    if state.get("fingerprint") != fingerprint:
        log.warning("%s: training state is from another config or data; starting fresh", ckpt)
        return False
    trainable.load_state_dict(state)
    log.info("resumed %s at step %d (%d images seen)", ckpt, state["step"], state["images_seen"])
    return True


def train(
    stage: str,
    cfg: TrainConfig,
    trainable: Trainable,
    step_fn: StepFn,
    *,
    seed: int,
    n_train: int,
    ckpt: Path,
    fingerprint: str,
    on_log: LogFn | None = None,
    run_id: str | None = None,
) -> Trainable:
    """Run `step_fn` until `cfg.train_images` images are seen; checkpoint and log at fixed intervals.

    The checkpoint records `run_id` (the stage's MLflow run), so a resumed stage continues that run."""
    batch = min(cfg.batch_size, n_train)
    total_steps = max(1, cfg.train_images // batch)
    log_every = max(1, cfg.log_every_images // batch)
    ckpt_every = max(1, cfg.checkpoint_every_images // batch)
    t = trainable
    for stale in stale_temporaries(ckpt):  # a write cut short by a kill: never the checkpoint itself
        stale.unlink(missing_ok=True)
    try_resume(t, ckpt, fingerprint)
    saved = t.step  # the step of the last good checkpoint (0: none yet)
    with tqdm(total=total_steps * batch, initial=t.step * batch, unit="img", desc=stage, mininterval=2.0,
              unit_scale=True, dynamic_ncols=True) as bar:  # closed on any exit: an error starts its own line
        while t.step < total_steps:
            start = time.perf_counter()
            step = t.step
            try:
                losses = step_fn(batch_indices(seed, step, n_train, batch), generator(seed, stage, "step", step))
                bad = next((f"{k} ({v})" for k, v in losses.items() if not math.isfinite(v)), None)
                if bad is not None:
                    raise NonFinite(bad)
            except NonFinite as e:
                kept = f"the last good training state is {ckpt} (step {saved})" if saved else \
                    f"no training state was saved yet (every {ckpt_every} steps)"
                raise TrainingDiverged(f"{stage}: step {step} ({step * batch} images seen): {e} is NaN or Inf; "
                                       f"training stopped, {kept}") from None
            t.step = step + 1
            t.seconds += time.perf_counter() - start
            for k, v in losses.items():
                t.sums[k] = t.sums.get(k, 0.0) + v
            t.count += 1
            bar.update(batch)
            if t.step % log_every == 0 or t.step == total_steps:
                row = {"images_seen": float(t.step * batch), **{k: v / t.count for k, v in t.sums.items()}}
                if on_log is not None:  # it may add columns to the row, e.g. a cheap FID
                    row.update(on_log({k: v for k, v in row.items() if k != "images_seen"}, t.step * batch) or {})
                t.history.append(row)
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "images_seen"}, refresh=False)
                t.sums, t.count = {}, 0
            if t.step % ckpt_every == 0 and t.step < total_steps:
                save_train_state(t.state_dict(fingerprint, batch, run_id), ckpt)
                saved = t.step
    return t


def learning_rate(base: float, schedule: str, step: int, total_steps: int) -> float:
    """The learning rate of `step`: constant, or cosine annealing to zero (Loshchilov & Hutter 2017,
    eq. 5 with eta_min = 0, one cycle): base * (1 + cos(pi * step / total_steps)) / 2."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    raise ValueError(f"unknown lr_schedule {schedule!r}: expected 'constant' or 'cosine'")

