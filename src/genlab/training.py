"""The one training loop every stage uses: counted in images seen, resumable exactly.

Each step's randomness comes from `randomness.generator(seed, stage, "step", step)` and its batch
from `randomness.batch_indices(seed, step, ...)`, so the training state needs no RNG state: the
modules, optimizers, step and loss history (tensors and plain numbers) are enough to resume.

A step whose loss or gradient is NaN or Inf stops the stage (`TrainingDiverged`, naming the stage,
step and tensor); the last checkpoint, written from finite steps only, stays the resume point
(`FiniteCheck`: at once on CPU, at the next log or checkpoint boundary on CUDA, where a step then issues
no host sync: its losses are summed on the device and read once per log interval).

Under torchrun (`genlab.distributed`) every rank runs this loop on its rows of the same global batches;
the logged losses are means over the ranks, and only rank 0 logs and checkpoints.
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
from genlab.distributed import World
from genlab.errors import TrainingDiverged
from genlab.memory import heap_for_steps
from genlab.paths import stale_temporaries
from genlab.randomness import batch_indices, generator
from genlab.tracking import share_train_state

log = logging.getLogger(__name__)

Losses = dict[str, torch.Tensor | float]  # a step's losses: 0-dim tensors on the device (or plain numbers)
StepFn = Callable[[torch.Tensor, torch.Generator], Losses]
LogFn = Callable[[dict[str, float], int], dict[str, float] | None]  # (metrics, images seen) -> extra columns


class NonFinite(Exception):
    """A loss or gradient that is NaN or Inf; the message names the tensor."""

    def __init__(self, what: str, step: int | None = None) -> None:
        super().__init__(what)
        self.step = step  # the step it happened at, when found after it (deferred checks)


class FiniteCheck:
    """Losses and gradient norms checked for NaN and Inf.

    Eager (CPU, where kernels run synchronously and reading a value costs nothing): a bad value raises
    `NonFinite` at once, before the optimizer applies it, naming the tensor (a gradient: its parameter).
    Deferred (CUDA, where a read is a host sync that stalls the queue of kernels): each check only records on
    the device the first step and name whose value was not finite; `raise_if_any`, called at log and
    checkpoint boundaries, reads it once and raises there. Every step after the bad one is dropped with it:
    nothing computed after it is logged or saved, and the last checkpoint is the resume point either way."""

    def __init__(self, deferred: bool | None = None) -> None:
        self.deferred = deferred  # None: `train` decides (deferred when the modules are on CUDA)
        self.step = 0  # set by `train` before each step
        self.names: list[str] = []
        self.first: torch.Tensor | None = None  # (step, name index, value) of the first bad value; step -1: none

    def value(self, name: str, v: torch.Tensor | float) -> None:
        """Check one loss (a 0-dim tensor or a number) named `name`."""
        if not self.deferred:
            f = float(v)
            if not math.isfinite(f):
                raise NonFinite(f"{name} ({f})")
            return
        self._record(name, torch.as_tensor(v))

    def gradient(self, module_name: str, module: torch.nn.Module, norm: torch.Tensor) -> None:
        """Check the total gradient norm of `module` (eager: name the first parameter whose gradient is bad)."""
        if self.deferred:
            self._record(f"the gradient of {module_name}", norm)
        elif not bool(torch.isfinite(norm)):
            bad = next(n for n, p in module.named_parameters() if p.grad is not None and not p.grad.isfinite().all())
            raise NonFinite(f"the gradient of {module_name}.{bad}")

    def _record(self, name: str, v: torch.Tensor) -> None:
        if name not in self.names:
            self.names.append(name)
        v = v.detach().to(torch.float64)
        if self.first is None:  # once: later updates pass the step and name as kernel scalars, no host copy
            self.first = torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64, device=v.device)
        bad = (self.first[0] < 0) & ~torch.isfinite(v)
        self.first = torch.stack([torch.where(bad, float(self.step), self.first[0]),
                                  torch.where(bad, float(self.names.index(name)), self.first[1]),
                                  torch.where(bad, v, self.first[2])])

    def raise_if_any(self, world: World) -> None:
        """Deferred: raise `NonFinite` for the first bad value recorded (on any rank); one host sync."""
        if not self.deferred or self.first is None and world.size == 1:
            return
        first = self.first if self.first is not None else torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64)
        if world.size > 1:  # the earliest bad step on any rank: min over ranks of (step, or +inf for none)
            key = torch.where(first[0] < 0, math.inf, first[0])
            earliest = key.clone()
            torch.distributed.all_reduce(earliest, op=torch.distributed.ReduceOp.MIN)
            if math.isinf(float(earliest)):
                return
            if float(key) != float(earliest):
                raise NonFinite("a loss or gradient on another rank", int(earliest))
        step, index, value = first.tolist()
        if step >= 0:
            name = self.names[int(index)]
            raise NonFinite(name if name.startswith("the gradient") else f"{name} ({value})", int(step))


@dataclass
class Trainable:
    """What a training state holds: named modules (EMA copies included) and optimizers."""

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    sums: dict[str, float | torch.Tensor] = field(default_factory=dict)  # losses summed since the last logged row
    count: int = 0  # steps summed in `sums`
    seconds: float = 0.0  # wall time spent in training steps, summed across resumes
    check: FiniteCheck = field(default_factory=FiniteCheck)

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
            "pending": {"sums": {k: float(v) for k, v in self.sums.items()}, "count": self.count},
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


def optimizer_step(module: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, *, loss_name: str,
                   module_name: str, max_norm: float | None = None, check: FiniteCheck | None = None) -> torch.Tensor:
    """Backpropagate `loss` and step `opt` (clipping `module`'s gradient norm to `max_norm` if given), the loss
    and the gradient norm checked by `check` (None: eagerly, so a NaN or Inf raises `NonFinite` naming it with
    the weights and the optimizer state untouched). Returns the gradient norm before clipping."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return apply_gradients(module, opt, loss.detach(), loss_name=loss_name, module_name=module_name,
                           max_norm=max_norm, check=check)


def apply_gradients(module: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, *, loss_name: str,
                    module_name: str, max_norm: float | None = None, check: FiniteCheck | None = None) -> torch.Tensor:
    """`optimizer_step` after its backward: for gradients accumulated over micro-batches, `loss` their total."""
    check = check or FiniteCheck()
    params = [p for p in module.parameters() if p.grad is not None]
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)  # foreach: on CPU too
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    check.value(loss_name, loss)
    check.gradient(module_name, module, norm)
    opt.step()
    return norm


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
    world: World = World(),  # noqa: B008 (frozen)
) -> Trainable:
    """Run `step_fn` until `cfg.train_images` images are seen; checkpoint and log at fixed intervals.

    The checkpoint records `run_id` (the stage's MLflow run), so a resumed stage continues that run. Checks
    are deferred (no host sync per step) when the modules are on CUDA."""
    batch = min(cfg.batch_size, n_train)
    total_steps = max(1, cfg.train_images // batch)
    log_every = max(1, cfg.log_every_images // batch)
    ckpt_every = max(1, cfg.checkpoint_every_images // batch)
    t = trainable
    if t.check.deferred is None:
        t.check.deferred = any(p.is_cuda for m in t.modules.values() for p in m.parameters())
    if world.main:
        for stale in stale_temporaries(ckpt):  # a write cut short by a kill: never the checkpoint itself
            stale.unlink(missing_ok=True)
    try_resume(t, ckpt, fingerprint)
    saved = t.step  # the step of the last good checkpoint (0: none yet)

    def diverged(e: NonFinite, step: int) -> TrainingDiverged:
        step = e.step if e.step is not None else step
        kept = f"the last good training state is {ckpt} (step {saved})" if saved else \
            f"no training state was saved yet (every {ckpt_every} steps)"
        return TrainingDiverged(f"{stage}: step {step} ({step * batch} images seen): {e} is NaN or Inf; "
                                f"training stopped, {kept}")

    with heap_for_steps(), tqdm(total=total_steps * batch, initial=t.step * batch, unit="img", desc=stage,
                                mininterval=2.0, unit_scale=True, dynamic_ncols=True, disable=not world.main) as bar:
        while t.step < total_steps:
            start = time.perf_counter()
            step = t.step
            t.check.step = step
            try:
                losses = step_fn(batch_indices(seed, step, n_train, batch), generator(seed, stage, "step", step))
                for k, v in losses.items():
                    t.check.value(k, v)
            except NonFinite as e:
                raise diverged(e, step) from None
            t.step = step + 1
            t.seconds += time.perf_counter() - start
            for k, v in losses.items():  # float64 on the device: no host sync until the row is logged
                t.sums[k] = t.sums.get(k, 0.0) + (v.detach().double() if isinstance(v, torch.Tensor) else v)
            t.count += 1
            bar.update(batch)
            logged = t.step % log_every == 0 or t.step == total_steps
            saving = t.step % ckpt_every == 0 and t.step < total_steps
            if logged or saving:
                try:
                    t.check.raise_if_any(world)
                except NonFinite as e:
                    raise diverged(e, step) from None
            if logged:
                means = (world.mean(_stacked(t)) / t.count).tolist()
                row = {"images_seen": float(t.step * batch), **dict(zip(t.sums, means, strict=True))}
                if on_log is not None and world.main:  # it may add columns to the row, e.g. a cheap FID
                    row.update(on_log({k: v for k, v in row.items() if k != "images_seen"}, t.step * batch) or {})
                t.history.append(row)
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "images_seen"}, refresh=False)
                t.sums, t.count = {}, 0
            if saving and world.size > 1 and t.sums:  # every rank resumes with the ranks' mean sums
                t.sums = dict(zip(t.sums, world.mean(_stacked(t)), strict=True))
            if saving and world.main:
                save_train_state(t.state_dict(fingerprint, batch, run_id), ckpt)
                if run_id is not None:  # with a tracking server, for a resume on another machine
                    share_train_state(run_id, ckpt, fingerprint)
            if saving:
                saved = t.step
    return t


def _stacked(t: Trainable) -> torch.Tensor:
    """The pending loss sums as one float64 vector on the training device (its first parameter's)."""
    device = next(p.device for m in t.modules.values() for p in m.parameters())
    return torch.stack([torch.as_tensor(v, dtype=torch.float64).to(device) for v in t.sums.values()])


def learning_rate(base: float, schedule: str, step: int, total_steps: int) -> float:
    """The learning rate of `step`: constant, or cosine annealing to zero (Loshchilov & Hutter 2017,
    eq. 5 with eta_min = 0, one cycle): base * (1 + cos(pi * step / total_steps)) / 2."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    raise ValueError(f"unknown lr_schedule {schedule!r}: expected 'constant' or 'cosine'")

