"""Training stages under torchrun: 2 gloo processes on CPU take the step one process takes on the same global
batch, only rank 0 logs and writes, and a killed 2-process stage resumes exactly.

What is compared: after one training step, each optimizer's first moment is (1 - beta1) * the gradient it applied
(Adam's m_1), so the train state holds the global batch's gradient, which DDP must reproduce to float tolerance
(reduction order only). Weights are not compared after many steps: Adam divides each element's update by its own
RMS, so elements whose true gradient is ~0 (a bias before a normalisation) turn float noise into +-lr steps, in
one process as in two.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
import yaml

from genlab.checkpoint import load_train_state
from genlab.config import ComputeConfig
from genlab.distributed import GlobalBatchNorm, World, leave
from tests.conftest import make_project, sh, tiny_params
from tests.test_compute import small_ldm_run

STAGES = {"train_evaluator": "evaluator", "train_vae": "vae", "train_ldm": "ldm", "train_gan": "gan"}
ONE_STEP = {"train_images": 64, "batch_size": 64, "log_every_images": 64}


def params(nproc: int, **gan: int) -> dict:
    """The tiny 16-pixel config, one step per stage, no cheap FID; the VAE's batch of 1,024 gives each rank 512 rows,
    2 micro-batches of 256 (DDP's no_sync path); r1 on (the GAN's double backward under DDP)."""
    p = tiny_params()
    for section in STAGES.values():
        p[section] = {**p[section], **ONE_STEP}
    p["vae"] = {**p["vae"], "train_images": 1024, "batch_size": 1024, "log_every_images": 1024,
                "ae_train_images": 1024}
    p["ldm"]["fid_every_images"] = p["gan"]["fid_every_images"] = 0
    p["gan"] = {**p["gan"], **gan}
    p["dist"] = {"nproc_per_node": nproc}
    return p


def state(root: Path, family: str) -> dict:
    return load_train_state(root / "models" / family / "train_state.pt")


def mlflow_runs(env: dict[str, str]) -> list:
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=["genlab"], output_format="list")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, dict]]:
    """Each training stage once in one process, then in 2 processes on the same inputs (the one-process run's
    models): {stage: (its one-process train state, its 2-process train state)}, plus the 2-process MLflow runs."""
    root, env = make_project(tmp_path_factory.mktemp("ddp"), params(1))
    ref = root / "one-process"
    sh(["genlab", "prepare"], root, env)
    for stage, family in STAGES.items():
        sh(["genlab", stage], root, env)
        shutil.copytree(root / "models" / family, ref / family)
    one = {stage: state(root, family) for stage, family in STAGES.items()}
    (root / "params.yaml").write_text(yaml.safe_dump(params(2)))
    before = len(mlflow_runs(env))
    out = {}
    for stage, family in STAGES.items():
        log = sh(["genlab", stage], root, env).stderr
        assert "2 processes" in log
        out[stage] = (one[stage], state(root, family))
        seen = json.loads((root / "metrics" / f"{stage}.json").read_text())["images_seen"]
        assert seen == (1024 if family == "vae" else 64)
        shutil.rmtree(root / "models" / family)
        shutil.copytree(ref / family, root / "models" / family)  # the next stage's input: the one-process model
    new = mlflow_runs(env)[: len(mlflow_runs(env)) - before]
    out["mlflow"] = ({}, {"world_sizes": sorted(r.data.params.get("world_size") for r in new),
                          "checkpoints": sorted(p.name for p in (root / "checkpoints").glob("*"))})
    out["root"] = root
    return out


@pytest.mark.slow  # the `runs` fixture: 12 stage processes, 185 s
@pytest.mark.parametrize("stage", list(STAGES))
def test_two_gloo_processes_apply_the_global_batch_gradient(runs: dict, stage: str) -> None:
    one, two = runs[stage]
    for name, opt in one["optimizers"].items():
        # float error is relative to the network's gradient, not to each tensor's: a bias before a normalisation
        # has a true gradient of 0 and float noise for a value, in one process as in two
        scale = max(float(s["exp_avg"].abs().max()) for s in opt["state"].values())
        # the GAN's generator step follows its discriminator's update, whose +-lr noise (see the docstring)
        # reaches the generator's gradient: a looser bound there
        # float32 sums of ~10^4 terms: ~1e-5 relative error (sqrt(n) * eps), 1e-4 allowed
        atol = (1e-3 if name == "opt_g" else 1e-4) * scale
        assert scale > 0
        for i, s in opt["state"].items():
            a, b = s["exp_avg"], two["optimizers"][name]["state"][i]["exp_avg"]
            torch.testing.assert_close(b, a, rtol=1e-4, atol=atol, msg=lambda m, n=name, i=i: f"{stage} {n}[{i}]: {m}")
    # the logged row is the global batch's losses (the mean over the ranks)
    [ra], [rb] = one["history"], two["history"]
    assert rb == pytest.approx(ra, rel=1e-4, abs=1e-5)


@pytest.mark.slow  # the `runs` fixture
def test_only_rank_zero_logs_and_nothing_is_left_behind(runs: dict) -> None:
    _, seen = runs["mlflow"]
    assert seen["world_sizes"] == ["2"] * len(STAGES)  # one MLflow run per stage, rank 0's
    assert seen["checkpoints"] == []  # no checkpoint, no latent cache file


@pytest.mark.slow  # 75 s: two 40-step 2-process GAN runs
def test_a_killed_two_process_stage_resumes_exactly(runs: dict, tmp_path: Path) -> None:
    """SIGKILL the launcher after the first checkpoint: its ranks die with it (nothing trains on), and the re-run
    resumes from that checkpoint and ends with the bits of an uninterrupted 2-process run (gloo's reductions are
    deterministic)."""
    gan = {"train_images": 64 * 40, "checkpoint_every_images": 64 * 8, "log_every_images": 64 * 4}
    root, env = make_project(tmp_path, params(2, **gan))
    for d in ("data/prepared", "models/evaluator"):  # the one-process run's data and evaluator
        shutil.copytree(runs["root"] / d, root / d)
    sh(["genlab", "train_gan"], root, env)
    plain = state(root, "gan")
    shutil.rmtree(root / "models" / "gan")
    ckpt = root / "checkpoints" / "train_gan.pt"
    proc = subprocess.Popen(["genlab", "train_gan"], cwd=root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    while not ckpt.exists():
        assert proc.poll() is None and time.monotonic() - start < 300, "no checkpoint before the end"
        time.sleep(0.02)
    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "genlab.cli" in p.cmdline()]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(ranks) == 2
    _, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive, "a rank outlived its launcher"
    assert load_train_state(ckpt)["step"] in range(8, 40, 8) and not (root / "models" / "gan").exists()
    log = sh(["genlab", "train_gan"], root, env).stderr
    assert "resumed" in log
    resumed = state(root, "gan")
    assert plain["history"] == resumed["history"]
    assert all(torch.equal(plain["modules"][m][k], v) for m in plain["modules"]
               for k, v in resumed["modules"][m].items())


def ldm_first_moments(rank: int, size: int, init: str, out: str, memory_format: str = "contiguous") -> None:
    """Rank `rank` of `size` gloo processes (size 1: no process group) takes one step of test_compute's small
    class-conditional latent U-Net (the stage's own `build_step`, a global batch of 16) in `memory_format`; rank 0
    saves Adam's first moments, (1 - beta1) * the gradient it applied, contiguous."""
    torch.set_num_threads(1)
    if size > 1:
        torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    world = World(rank, size)
    run, _ = small_ldm_run(ComputeConfig(memory_format=memory_format), steps=1, world=world)
    if world.main:
        torch.save([s["exp_avg"].contiguous() for s in run.trainable.optimizers["opt"].state_dict()["state"].values()],
                   out)
    leave(world)


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_two_gloo_processes_take_the_one_process_step(tmp_path: Path, memory_format: str) -> None:
    """The default suite's check of the slow tests' claim, in seconds: the latent U-Net's step on 2 gloo processes
    (each its half of the global batch, DDP averaging the gradients) applies the gradient one process applies to the
    whole batch, to float tolerance (reduction order only); with NHWC weights too (CUDA's `auto` layout), against
    the one contiguous process."""
    ldm_first_moments(0, 1, "", str(tmp_path / "one.pt"))
    torch.multiprocessing.spawn(ldm_first_moments, args=(2, f"file://{tmp_path / 'rendezvous'}",
                                                         str(tmp_path / "two.pt"), memory_format), nprocs=2)
    one, two = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("one", "two"))
    scale = max(float(m.abs().max()) for m in one)
    assert len(one) == len(two) > 10 and scale > 0
    for i, (a, b) in enumerate(zip(one, two, strict=True)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * scale, msg=lambda m, i=i: f"exp_avg[{i}]: {m}")


def test_global_batch_norm_in_one_process_is_batch_norm() -> None:
    """Outside a process group GlobalBatchNorm is BatchNorm2d itself (same outputs, same running statistics)."""
    torch.manual_seed(0)
    bn, gbn = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    gbn.__class__ = GlobalBatchNorm
    x = torch.randn(8, 3, 5, 5)
    assert torch.equal(bn(x), gbn(x)) and torch.equal(bn.running_var, gbn.running_var)


def test_world_rows_split_the_global_batch() -> None:
    assert [World(r, 4).rows(64) for r in range(4)] == [slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 64)]
    assert World().rows(7) == slice(0, 7)
    with pytest.raises(Exception, match="batch of 10 does not split over 4 processes"):
        World(1, 4).rows(10)


def test_params_refuse_a_batch_that_does_not_split(tmp_path: Path) -> None:
    p = tiny_params()
    p["dist"] = {"nproc_per_node": 3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    proc = subprocess.run([sys.executable, "-m", "genlab.cli", "train_gan", "--params", "params.yaml"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("genlab: error: params.yaml: ")
    assert "evaluator.batch_size 64 does not split over 3 processes" in proc.stderr
