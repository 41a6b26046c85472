"""Faults around a training stage, as a user meets them through the CLI: the disk fills up while a checkpoint
or the final output is written, and a NaN appears in training. Each stops the stage with one line, keeps every
finished output and the last good checkpoint, and leaves no temporary file behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import yaml

import genlab.paths as paths
from genlab.checkpoint import load_train_state, save_train_state
from genlab.cli import main
from tests.conftest import tiny_params
from tests.test_reproducibility import copy_outputs, files

REAL_WRITE = paths._write_all
GAN = {"train_images": 1280, "checkpoint_every_images": 320, "fid_every_images": 0}  # checkpoints at steps 5, 10, 15


@pytest.fixture
def gan_project(repro: tuple[Path, dict[str, str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the tiny project with a finished models/gan (the previous output) and a GAN config that
    checkpoints every 5 steps; the CLI runs in-process in it."""
    root = tmp_path / "project"
    copy_outputs(repro[0], root, ("models/evaluator", "models/gan"))
    params = tiny_params()
    params["gan"] = {**params["gan"], **GAN}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return root


def disk_full_at(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The n-th file genlab writes from now on (1-based) hits ENOSPC after part of its bytes went out."""
    calls = [0]

    def write(fd: int, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == n:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        REAL_WRITE(fd, data)

    monkeypatch.setattr(paths, "_write_all", write)


def outputs(root: Path) -> dict[str, bytes]:
    return {f"{d}/{k}": v for d in ("models", "metrics", "plots", "checkpoints") for k, v in files(root / d).items()}


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name not in (".dvc",) and ".dvc" not in p.parts]


def error_line(capfd: pytest.CaptureFixture) -> str:
    err = capfd.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("genlab: error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0]
    return lines[0]


def test_disk_full_during_a_checkpoint_write(gan_project: Path, monkeypatch: pytest.MonkeyPatch,
                                             capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = gan_project / "checkpoints" / "train_gan.pt"
    before = outputs(gan_project)
    disk_full_at(monkeypatch, 2)  # the first checkpoint (step 5) is written, the second (step 10) is not
    assert main(["train_gan"]) == 1
    line = error_line(capfd)
    assert str(ckpt) in line and "No space left on device" in line and "intact" in line
    assert load_train_state(ckpt)["step"] == 5, "the last good checkpoint survives the failed write"
    after = outputs(gan_project)
    assert {k: v for k, v in after.items() if not k.startswith("checkpoints/")} == before  # finished outputs kept
    assert temporaries(gan_project) == []
    monkeypatch.undo()  # disk space again: the re-run resumes from step 5 and finishes
    monkeypatch.chdir(gan_project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{gan_project.parent / 'mlflow.db'}")
    caplog.set_level("INFO", logger="genlab")
    assert main(["train_gan"]) == 0
    assert f"resumed {ckpt} at step 5" in caplog.text and not ckpt.exists()


def test_disk_full_during_the_output_write(gan_project: Path, monkeypatch: pytest.MonkeyPatch,
                                           capfd: pytest.CaptureFixture) -> None:
    before = outputs(gan_project)
    disk_full_at(monkeypatch, 5)  # three checkpoints, then the snapshot lands, then train_state.pt fails
    assert main(["train_gan"]) == 1
    line = error_line(capfd)
    assert f"{gan_project / 'models' / 'gan'}: its new version could not be written" in line
    assert "No space left on device" in line and "previous gan is intact" in line
    after = outputs(gan_project)
    assert {k: v for k, v in after.items() if k.startswith("models/")} == \
        {k: v for k, v in before.items() if k.startswith("models/")}
    assert load_train_state(gan_project / "checkpoints" / "train_gan.pt")["step"] == 15
    assert temporaries(gan_project) == []


def test_nan_stops_the_stage_and_keeps_the_checkpoint(gan_project: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capfd: pytest.CaptureFixture) -> None:
    ckpt = gan_project / "checkpoints" / "train_gan.pt"
    disk_full_at(monkeypatch, 2)  # leaves the step-5 checkpoint
    assert main(["train_gan"]) == 1
    capfd.readouterr()
    monkeypatch.setattr(paths, "_write_all", REAL_WRITE)
    state = load_train_state(ckpt)
    state["modules"]["G"]["fc.weight"][0, 0] = float("nan")  # a weight went bad before the checkpoint
    save_train_state(state, ckpt)
    poisoned = ckpt.read_bytes()
    before = outputs(gan_project)
    assert main(["train_gan"]) == 3
    line = error_line(capfd)
    assert line.startswith("genlab: error: train_gan: step 5 (320 images seen): loss_d (nan) is NaN or Inf")
    assert f"{ckpt} (step 5)" in line
    assert ckpt.read_bytes() == poisoned and outputs(gan_project) == before
    assert torch.isnan(load_train_state(ckpt)["modules"]["G"]["fc.weight"][0, 0])
