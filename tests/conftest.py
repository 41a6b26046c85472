"""Shared fixtures: a tiny CPU configuration and a hermetic copy of the project.

Hermetic: MLflow's store, PREFECT_HOME and every output live under pytest's tmp path. The shared tiny pipeline
(`repro`) logs to a team's setup: an MLflow tracking server on a throw-away PostgreSQL with a proxied artifact store
(`tracking_server`; sqlite where PostgreSQL is not installed, and the server tests skip). Other pipelines in the suite
log to sqlite, the single-user default.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests import servers

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small enough to run every stage on 2 CPU cores in about a minute, large enough to be real.
TINY_PARAMS = {
    "seed": 0,
    "device": "cpu",
    "data": {"image_size": 16},
    "evaluator": {"train_images": 8000, "batch_size": 64, "width": 16, "log_every_images": 2000},
    "vae": {"train_images": 3000, "batch_size": 64, "base_channels": 8, "kl_warmup_images": 1000,
            "log_every_images": 1000, "ae_train_images": 1000},
    "ldm": {"train_images": 2000, "batch_size": 64, "base_channels": 16, "channel_mults": [1, 2],
            "attention_levels": [1], "timesteps": 100, "sample_steps": 5, "log_every_images": 512,
            "ema_halflife_images": 500, "guidance_scale": 2.0, "nll_timesteps": 2,
            "fid_every_images": 1000, "fid_samples": 20},
    "pixel": {"train_images": 1000, "batch_size": 64, "base_channels": 16, "channel_mults": [1, 2],
              "attention_levels": [1], "timesteps": 100, "sample_steps": 5, "log_every_images": 512,
              "ema_halflife_images": 500, "nll_timesteps": 2, "prediction": "v", "min_snr_gamma": 5.0,
              "sampler": "ddpm"},
    "gan": {"train_images": 2000, "batch_size": 64, "base_channels": 8, "log_every_images": 512, "r1_gamma": 1.0,
            "fid_every_images": 1000, "fid_samples": 20},
    "sample": {"n_per_class": 4, "seed": 7, "guidance_sweep": [1.0, 2.0, 3.0]},
    "evaluate": {"kid_subset_size": 20},
}


def tiny_params() -> dict:
    """The project's params.yaml (every key DVC tracks must exist) with the tiny overrides."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in TINY_PARAMS.items():
        if isinstance(value, dict):
            params[key] = {**params[key], **value}
        else:
            params[key] = value
    return params


def hermetic_env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "PREFECT_HOME": str(tmp / "prefect"),
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GIT_AUTHOR_NAME": "genlab-test",
        "GIT_AUTHOR_EMAIL": "test@genlab.invalid",
        "GIT_COMMITTER_NAME": "genlab-test",
        "GIT_COMMITTER_EMAIL": "test@genlab.invalid",
    }


def sh(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        output = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")
    return proc


def make_project(tmp: Path, params: dict) -> tuple[Path, dict[str, str]]:
    """A git + DVC copy of the project under `tmp` with `params` as params.yaml, and its hermetic environment."""
    root = tmp / "project"
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", "flows", "prefect.yaml", "src", "data/README.md", "data/raw/README.md",
                 ".gitignore"):
        src = REPO / name
        dst = root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    (root / ".dvc").mkdir()
    shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copy2(REPO / ".dvc" / ".gitignore", root / ".dvc" / ".gitignore")
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # the offline plots template
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = hermetic_env(tmp)
    sh(["git", "init", "-q", "-b", "main"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-q", "-m", "tiny genlab project"], root, env)
    return root, env


@dataclass(frozen=True)
class TrackingServer:
    uri: str  # what clients set as MLFLOW_TRACKING_URI
    backend: str  # the server's backend store (a PostgreSQL URI)
    artifacts: Path  # where the server writes the artifacts clients upload through it


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer | None]:
    """`mlflow server` on a fresh PostgreSQL database (pytest-postgresql's executor and janitor), for the session;
    None where PostgreSQL is not installed."""
    if servers.pg_ctl() is None:
        yield None
        return
    from pytest_postgresql.janitor import DatabaseJanitor

    tmp = tmp_path_factory.mktemp("mlflow-server")
    with servers.postgres_cluster() as pg, DatabaseJanitor(user=pg.user, host=pg.host, port=pg.port,
                                                           dbname="mlflow", password=None):
        backend = f"postgresql://{pg.user}@{pg.host}:{pg.port}/mlflow"
        with servers.mlflow_server(backend, tmp / "artifacts", tmp / "server.log") as uri:
            yield TrackingServer(uri, backend, tmp / "artifacts")


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory, tracking_server: TrackingServer | None,
            ) -> tuple[Path, dict[str, str]]:
    """A git + DVC copy of the project with the tiny params, and its hermetic environment (logging to the tracking
    server when there is one)."""
    root, env = make_project(tmp_path_factory.mktemp("genlab"), tiny_params())
    if tracking_server is not None:
        env["MLFLOW_TRACKING_URI"] = tracking_server.uri
    return root, env


@pytest.fixture(scope="session")
def repro(project: tuple[Path, dict[str, str]]) -> tuple[Path, dict[str, str], str]:
    """`dvc repro` once on the tiny project: (root, env, its stdout), shared by the tests that need outputs."""
    root, env = project
    out = sh(["dvc", "repro"], root, env)
    return root, env, out.stdout
