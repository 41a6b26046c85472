"""Exact after a crash, across processes: `genlab train_gan` is killed with SIGKILL at random points (some
while it writes a checkpoint), re-run until it finishes, and its snapshot and training state must equal, tensor
for tensor and byte for byte, those of an uninterrupted run in another process. Each re-run must really resume
(determinism alone would hide a silent restart), the MLflow run must be one run with every metric step logged
once, and a negative control (a resume with the optimizer state dropped) must end elsewhere.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from genlab.checkpoint import load_train_state, save_train_state
from tests.conftest import BIN, tiny_params
from tests.test_reproducibility import copy_outputs

STAGE = "train_gan"
# batch 64, a checkpoint every 5 steps and a logged row every 2; the cheap FID twice (it is part of the history)
GAN = {"base_channels": 16, "checkpoint_every_images": 320, "log_every_images": 128, "fid_every_images": 2560,
       "fid_samples": 20}


@dataclass
class Attempt:
    killed: bool
    during_write: bool = False  # a temporary checkpoint file was left behind by the kill
    resumed_from: int | None = None  # the step this attempt resumed at (None: started fresh)
    checkpoint_after: int | None = None  # the checkpoint's step after the attempt ended


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def ckpt(self) -> Path:
        return self.root / "checkpoints" / f"{STAGE}.pt"

    def temporaries(self) -> list[Path]:
        return sorted(self.ckpt.parent.glob(f".{self.ckpt.name}.*")) if self.ckpt.parent.is_dir() else []

    def start(self, n: int) -> tuple[subprocess.Popen, Path]:
        log = self.root / f"attempt-{n}.log"
        with log.open("w") as f:
            proc = subprocess.Popen([str(BIN / "genlab"), STAGE], cwd=self.root, env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT)
        return proc, log

    def inode(self) -> int | None:
        try:
            return self.ckpt.stat().st_ino  # os.replace gives the checkpoint a new inode
        except FileNotFoundError:
            return None

    def step_of_checkpoint(self) -> int | None:
        return int(load_train_state(self.ckpt)["step"]) if self.ckpt.is_file() else None

    def attempt(self, kill: str | None, rng: random.Random, timeout: float = 300) -> Attempt:
        """Run the stage once; `kill`: None (to the end), "random" (SIGKILL a random 0-1 s after this attempt
        wrote its first checkpoint) or "write" (SIGKILL as soon as a checkpoint write is seen in progress)."""
        before = self.step_of_checkpoint()
        proc, log = self.start(len(self.attempts))
        deadline = time.monotonic() + timeout
        killed = False
        if kill is not None:
            started = False
            while proc.poll() is None and time.monotonic() < deadline:
                text = log.read_text()
                # training has begun once this attempt resumed, or (fresh) once its first checkpoint exists
                started = "resumed" in text if before is not None else self.ckpt.is_file()
                if started:
                    break
                time.sleep(0.005)
            if started and kill == "random":  # once this attempt wrote a checkpoint of its own: it progressed
                first = self.ckpt.stat().st_ino
                while proc.poll() is None and time.monotonic() < deadline and self.inode() == first:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 1.0))
            elif started:  # "write": watch for the temporary file of a checkpoint being written
                while proc.poll() is None and time.monotonic() < deadline and not self.temporaries():
                    pass
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        text = log.read_text()
        if not killed:
            assert proc.returncode == 0, text[-3000:]
        result = Attempt(killed=killed, during_write=killed and bool(self.temporaries()),
                         checkpoint_after=self.step_of_checkpoint())
        if before is not None:
            # it really resumed, at the checkpoint it found: not a silent restart from step 0
            assert re.search(rf"resumed \S*{STAGE}\.pt at step {before} \(", text), text[-3000:]
            result.resumed_from = before
        self.attempts.append(result)
        return result


def gan_project(repro: tuple[Path, dict[str, str], str], folder: Path, train_images: int) -> Project:
    root, env = repro[0], dict(repro[1])
    copy_outputs(root, folder, ("models/evaluator",))
    params = tiny_params()
    params["gan"] = {**params["gan"], **GAN, "train_images": train_images}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    return Project(folder, env)


def tensors(root: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the final snapshot and of the final training state, flattened by key path."""
    out = {f"snapshot/{k}": v for k, v in load_file(str(root / "models/gan/model.safetensors")).items()}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, torch.Tensor):
            out[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}", v)
    walk("state", load_train_state(root / "models/gan/train_state.pt"))
    return out


def differing(a: Path, b: Path) -> list[str]:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    return [k for k in ta if not torch.equal(ta[k], tb[k])]


def metric_steps(project: Project) -> dict[str, list[int]]:
    mlflow.set_tracking_uri(project.env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["genlab"], output_format="pandas")
    assert len(runs) == 1, "every attempt continued the one MLflow run of the stage"
    client = MlflowClient()
    run_id = runs.run_id.item()
    return {k: [m.step for m in client.get_metric_history(run_id, k)] for k in ("loss_d", "loss_g", "cheap_fid")}


def kill_and_resume(repro: tuple[Path, dict[str, str], str], tmp_path: Path, kills: list[str],
                    train_images: int, seed: int) -> list[Attempt]:
    rng = random.Random(seed)
    reference = gan_project(repro, tmp_path / "reference", train_images)
    reference.attempt(None, rng)
    crashed = gan_project(repro, tmp_path / "crashed", train_images)
    for kill in kills:
        crashed.attempt(kill, rng)
    while not crashed.attempts or crashed.attempts[-1].killed:
        crashed.attempt(None, rng)
    killed = [a for a in crashed.attempts if a.killed]
    resumed = [a for a in crashed.attempts if a.resumed_from]
    print(f"\n{len(killed)} kills ({sum(a.during_write for a in killed)} during a checkpoint write), "
          f"{len(resumed)} resumes at steps {[a.resumed_from for a in resumed]}")
    assert len(killed) >= len(kills) // 2 and resumed, "the kills landed in training and the re-runs resumed"
    assert not crashed.temporaries() and not crashed.ckpt.exists(), "no temporary or stale checkpoint is left"
    assert differing(reference.root, crashed.root) == []
    for name in ("model.safetensors", "train_state.pt"):
        assert (reference.root / "models/gan" / name).read_bytes() == (crashed.root / "models/gan" / name).read_bytes()
    steps, ref_steps = metric_steps(crashed), metric_steps(reference)
    assert steps == ref_steps and all(len(s) == len(set(s)) for s in steps.values()), "each step logged once"
    return killed


def test_sigkill_at_random_points_resumes_bit_identically(repro: tuple[Path, dict[str, str], str],
                                                          tmp_path: Path) -> None:
    kill_and_resume(repro, tmp_path, ["write", "random", "write", "random"], train_images=6400, seed=1)


@pytest.mark.slow
def test_sigkill_at_twenty_four_points_resumes_bit_identically(repro: tuple[Path, dict[str, str], str],
                                                              tmp_path: Path) -> None:
    killed = kill_and_resume(repro, tmp_path, ["write", "random", "random"] * 8, train_images=19200, seed=2)
    assert len(killed) >= 20 and sum(a.during_write for a in killed) >= 3


@pytest.mark.slow
def test_negative_control_resume_without_optimizer_state_differs(repro: tuple[Path, dict[str, str], str],
                                                                 tmp_path: Path) -> None:
    """The comparison can fail: a resume whose checkpoint lost the Adam moments ends with other weights."""
    rng = random.Random(3)
    reference = gan_project(repro, tmp_path / "reference", 3200)
    reference.attempt(None, rng)
    broken = gan_project(repro, tmp_path / "broken", 3200)
    attempt = broken.attempt("write", rng)
    assert attempt.killed and attempt.checkpoint_after, "killed after a checkpoint"
    state = load_train_state(broken.ckpt)
    for opt in state["optimizers"].values():
        opt["state"] = {}  # drop Adam's first and second moments
    save_train_state(state, broken.ckpt)
    assert broken.attempt(None, rng).resumed_from == attempt.checkpoint_after
    assert differing(reference.root, broken.root), "dropping the optimizer state must change the result"
