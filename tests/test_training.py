"""genlab.training.train: a run that crashes and resumes from its checkpoint ends bit-identical to one that didn't."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from genlab.checkpoint import load_train_state, save_train_state
from genlab.config import EvaluatorConfig
from genlab.distributed import World
from genlab.errors import TrainingDiverged
from genlab.training import FiniteCheck, NonFinite, Trainable, optimizer_step, train

N = 40
X = torch.randn(N, 4, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
# 160 images / batch 8 = 20 steps over 4 epochs of 5 steps; log every 2 steps, checkpoint every 4
CFG = EvaluatorConfig(train_images=160, batch_size=8, log_every_images=16, checkpoint_every_images=32)
TOTAL = 20
SEED, FP = 3, "fingerprint-a"


class Crash(RuntimeError):
    pass


class Run:
    """A fresh model + optimizer and a step function that records every step it executes."""

    def __init__(self, crash_at: int | None = None) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.trainable = Trainable({"model": self.model}, {"opt": self.opt})
        self.crash_at = crash_at
        self.calls: list[torch.Tensor] = []
        self.logged: list[tuple[dict[str, float], int]] = []
        self.losses: list[float] = []

    def step_fn(self, idx: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        if self.crash_at is not None and len(self.calls) == self.crash_at:
            raise Crash("simulated crash")
        self.calls.append(idx.clone())
        x = X[idx] + 0.3 * torch.randn(idx.shape[0], 4, generator=g)  # per-step randomness from g
        loss = F.mse_loss(self.model(x), Y[idx])
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.losses.append(loss.item())
        return {"loss": loss.item()}

    def train(self, ckpt: Path, cfg: EvaluatorConfig = CFG, fingerprint: str = FP) -> Trainable:
        return train("unit", cfg, self.trainable, self.step_fn, seed=SEED, n_train=N, ckpt=ckpt,
                     fingerprint=fingerprint, on_log=lambda m, n: self.logged.append((m, n)))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = Run()
    run.train(tmp_path_factory.mktemp("ref") / "ckpt.pt")
    return run


def test_uninterrupted_run(reference: Run, tmp_path: Path) -> None:
    assert reference.trainable.step == TOTAL and len(reference.calls) == TOTAL
    assert [row["images_seen"] for row in reference.trainable.history] == [16.0 * k for k in range(1, 11)]
    assert [n for _, n in reference.logged] == [16 * k for k in range(1, 11)]
    # each logged loss is the mean over the 2 steps since the previous log
    means = [(a + b) / 2 for a, b in zip(reference.losses[::2], reference.losses[1::2], strict=True)]
    assert [row["loss"] for row in reference.trainable.history] == pytest.approx(means, rel=1e-12)
    assert [m["loss"] for m, _ in reference.logged] == pytest.approx(means, rel=1e-12)
    torch.manual_seed(0)
    assert not _same(_weights(reference.model), _weights(nn.Linear(4, 1)))  # it did train


def test_crash_and_resume_is_exact(reference: Run, tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints" / "unit.pt"
    crashed = Run(crash_at=10)  # checkpoints were written after steps 4 and 8
    with pytest.raises(Crash):
        crashed.train(ckpt)
    state = load_train_state(ckpt)
    assert state["step"] == 8 and state["images_seen"] == 64 and state["fingerprint"] == FP
    assert not _same(_weights(crashed.model), _weights(reference.model))

    resumed = Run()  # a fresh process: new model and optimizer, resumes from the checkpoint
    out = resumed.train(ckpt)
    assert len(resumed.calls) == TOTAL - 8  # it resumed at step 8 instead of starting over
    assert out.step == reference.trainable.step == TOTAL
    assert _same(_weights(resumed.model), _weights(reference.model))
    assert all(torch.equal(a, b) for a, b in zip(resumed.calls, reference.calls[8:], strict=True))
    assert resumed.trainable.history == reference.trainable.history
    ref_opt, res_opt = reference.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert all(torch.equal(res_opt[i][k], ref_opt[i][k]) for i in ref_opt for k in ref_opt[i])


def test_resume_is_exact_with_checkpoint_interval_not_a_multiple_of_log_interval(reference: Run,
                                                                                  tmp_path: Path) -> None:
    # With the default params (batch 64: log every 32 steps, checkpoint every 312) the two intervals are not
    # aligned. Weights still resume exactly; the logged loss history must too, as it is part of the resume state
    # and becomes the stage's DVC plot and final_loss metric.
    cfg = EvaluatorConfig(train_images=160, batch_size=8, log_every_images=24, checkpoint_every_images=32)
    full = Run()
    full.train(tmp_path / "full.pt", cfg)
    ckpt = tmp_path / "resume.pt"
    with pytest.raises(Crash):
        Run(crash_at=10).train(ckpt, cfg)
    resumed = Run()
    resumed.train(ckpt, cfg)
    assert _same(_weights(resumed.model), _weights(full.model))
    assert [r["images_seen"] for r in resumed.trainable.history] == [r["images_seen"] for r in full.trainable.history]
    assert resumed.trainable.history == full.trainable.history


def test_other_fingerprint_is_ignored(reference: Run, tmp_path: Path) -> None:
    ckpt = tmp_path / "unit.pt"
    with pytest.raises(Crash):
        Run(crash_at=6).train(ckpt, fingerprint="fingerprint-b")
    assert load_train_state(ckpt)["step"] == 4
    fresh = Run()
    fresh.train(ckpt)  # fingerprint-a: the checkpoint of run b must not be resumed
    assert len(fresh.calls) == TOTAL and fresh.trainable.step == TOTAL
    assert _same(_weights(fresh.model), _weights(reference.model))
    assert fresh.trainable.history == reference.trainable.history


def test_foreign_state_with_other_fingerprint_is_not_loaded(reference: Run, tmp_path: Path) -> None:
    ckpt = tmp_path / "unit.pt"
    bogus = Run()
    with torch.no_grad():
        bogus.model.weight.fill_(100.0)
    save_train_state(bogus.trainable.state_dict("something-else", 8) | {"step": 15}, ckpt)
    fresh = Run()
    fresh.train(ckpt)
    assert len(fresh.calls) == TOTAL
    assert _same(_weights(fresh.model), _weights(reference.model))


def test_batch_larger_than_dataset_is_clipped(tmp_path: Path) -> None:
    cfg = EvaluatorConfig(train_images=80, batch_size=64, log_every_images=40, checkpoint_every_images=10**6)
    run = Run()
    run.train(tmp_path / "c.pt", cfg)
    assert len(run.calls) == 2 and all(c.shape == (N,) for c in run.calls)  # batch = min(64, 40), 80 // 40 steps
    assert not (tmp_path / "c.pt").exists()  # no checkpoint interval reached, none written at the end


# ---------------------------------------------------------------------------------------------- NaN / Inf


def test_optimizer_step_refuses_a_non_finite_loss_and_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    before = _weights(model)
    with pytest.raises(NonFinite, match=r"loss_d \(nan\)"):
        optimizer_step(model, opt, model(torch.tensor([[float("nan"), 0.0]])).sum(), loss_name="loss_d",
                       module_name="D")
    # a finite loss whose gradient is infinite: d/dw sqrt(w - w) at 0
    w = model.weight
    with pytest.raises(NonFinite, match=r"the gradient of D\.weight"):
        optimizer_step(model, opt, torch.sqrt(w - w.detach()).sum(), loss_name="loss_d", module_name="D")
    assert _same(_weights(model), before) and opt.state_dict()["state"] == {}  # nothing was applied
    norm = optimizer_step(model, opt, model(torch.ones(1, 2)).sum(), loss_name="loss", module_name="D")
    assert torch.isfinite(norm) and not _same(_weights(model), before)


def test_nan_stops_training_and_keeps_the_last_good_state(tmp_path: Path) -> None:
    ckpt = tmp_path / "unit.pt"
    run = Run()
    poison = 13  # checkpoints were written after steps 4, 8 and 12

    def step_fn(idx: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        if len(run.calls) == poison:
            loss = run.model(torch.full((1, 4), float("inf"))).sum() * 0.0  # inf * 0 = nan
            optimizer_step(run.model, run.opt, loss, loss_name="loss", module_name="model")
        return Run.step_fn(run, idx, g)

    run.step_fn = step_fn  # type: ignore[method-assign]
    with pytest.raises(TrainingDiverged) as info:
        run.train(ckpt)
    msg = str(info.value)
    assert msg.startswith("unit: step 13 (104 images seen): loss (nan) is NaN or Inf")
    assert f"{ckpt} (step 12)" in msg and "\n" not in msg and info.value.exit_code == 3
    state = load_train_state(ckpt)
    assert state["step"] == 12 and all(torch.isfinite(v).all() for v in state["modules"]["model"].values())
    # the kept state resumes exactly like an uninterrupted run
    resumed = Run()
    resumed.train(ckpt)
    reference = Run()
    reference.train(tmp_path / "ref.pt")
    assert _same(_weights(resumed.model), _weights(reference.model))


def test_non_finite_reported_loss_also_stops(tmp_path: Path) -> None:
    run = Run()

    def step_fn(idx: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        out = Run.step_fn(run, idx, g)
        return {**out, "kl": float("inf")} if len(run.calls) == 3 else out

    run.step_fn = step_fn  # type: ignore[method-assign]
    with pytest.raises(TrainingDiverged, match=r"step 2 \(16 images seen\): kl \(inf\) is NaN or Inf.*no training"):
        run.train(tmp_path / "c.pt")


def test_deferred_checks_stop_at_the_next_boundary_naming_the_first_bad_step(tmp_path: Path) -> None:
    """CUDA's path, run on CPU: no host read per step; a NaN at step 13 is found at the next log boundary (step 14),
    reported as step 13 with the loss's name and value, and nothing after it reaches a checkpoint."""
    ckpt = tmp_path / "unit.pt"
    run = Run()
    run.trainable.check = FiniteCheck(deferred=True)
    reads: list[int] = []

    def step_fn(idx: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        out = Run.step_fn(run, idx, g)
        loss = torch.tensor(float("nan") if len(run.calls) == 14 else out["loss"])  # the 14th call is step 13
        norm = torch.tensor(1.0)
        run.trainable.check.value("loss", loss)  # what optimizer_step does
        run.trainable.check.gradient("model", run.model, norm)
        reads.append(len(run.calls))
        return {"loss": loss}

    run.step_fn = step_fn  # type: ignore[method-assign]
    original = FiniteCheck.raise_if_any
    boundary: list[int] = []

    def spy(self: FiniteCheck, world: object) -> None:
        boundary.append(len(run.calls))
        original(self, world)  # type: ignore[arg-type]

    FiniteCheck.raise_if_any = spy  # type: ignore[method-assign]
    try:
        with pytest.raises(TrainingDiverged) as info:
            train("unit", CFG, run.trainable, run.step_fn, seed=SEED, n_train=N, ckpt=ckpt, fingerprint=FP)
    finally:
        FiniteCheck.raise_if_any = original  # type: ignore[method-assign]
    assert boundary == [2, 4, 6, 8, 10, 12, 14]  # read at log/checkpoint boundaries only, not every step
    assert str(info.value).startswith("unit: step 13 (104 images seen): loss (nan) is NaN or Inf")
    assert f"{ckpt} (step 12)" in str(info.value)
    assert load_train_state(ckpt)["step"] == 12


def test_deferred_gradient_check_names_the_module() -> None:
    check = FiniteCheck(deferred=True)
    model = nn.Linear(2, 1)
    check.step = 4
    check.gradient("D", model, torch.tensor(1.0))
    check.step = 5
    check.gradient("D", model, torch.tensor(float("inf")))
    check.step = 6
    check.value("loss_g", torch.tensor(float("nan")))  # later: the first bad one is reported
    with pytest.raises(NonFinite, match=r"^the gradient of D$") as info:
        check.raise_if_any(World())
    assert info.value.step == 5
