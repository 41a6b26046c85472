"""The one place that talks to MLflow: runs, params, metrics, artifacts, models and the registry.

Tracking URI: `MLFLOW_TRACKING_URI`, else `sqlite:///<root>/mlflow.db`. Artifacts of the `genlab`
experiment go to `<root>/mlartifacts` (fixed, whatever the working directory). A stage run whose
environment has `GENLAB_PARENT_RUN_ID` (set by the Prefect flow) is that run's child.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

log = logging.getLogger(__name__)

EXPERIMENT = "genlab"
PARENT_ENV = "GENLAB_PARENT_RUN_ID"
SERVING_CODE = Path(__file__).with_name("serving.py")


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def setup(root: Path) -> str:
    """Point MLflow at the project's store and experiment; return the experiment id."""
    mlflow.set_tracking_uri(tracking_uri(root))
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        exp_id = mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").resolve().as_uri())
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class StageRun:
    """Handle on an active stage run."""

    def __init__(self, run: mlflow.ActiveRun) -> None:
        self.run = run
        self.run_id = run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        mlflow.log_dict(data, name)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path)

    def log_model(self, family: str, registered_name: str, artifacts: dict[str, Path], example: pd.DataFrame,
                  output: np.ndarray, params: dict[str, Any] | None, settings: dict[str, Any],
                  tags: dict[str, str]) -> dict[str, Any]:
        """Log a sampler as an MLflow pyfunc model from code (no pickled Python objects: the weights are
        safetensors artifacts and `serving.py` rebuilds the network), register it, tag the version."""
        with warnings.catch_warnings():  # label and seed are integers on purpose: no missing values
            warnings.filterwarnings("ignore", message=".*integer column.*")
            signature = infer_signature(example, output, params=params)
        # a `prompt` column (text-conditional models) may be left out: the model then picks held-out phrasings
        signature.inputs = Schema([ColSpec(c.type, c.name, required=c.name != "prompt")
                                   for c in signature.inputs.inputs])
        # one child run per model: each model's config is logged as that run's params
        with mlflow.start_run(run_name=f"register {registered_name}", nested=True,
                              tags={"genlab.stage": "register", "genlab.family": family}) as child:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(SERVING_CODE),
                artifacts={k: str(v) for k, v in artifacts.items()},
                model_config={"family": family, **settings},
                signature=signature,
                input_example=example,  # MLflow checks that the logged model loads and predicts on it
                registered_model_name=registered_name,
                pip_requirements=["torch==2.14.1", "safetensors", "pandas", "numpy"],
                await_registration_for=60,
            )
        version = str(info.registered_model_version)
        client = MlflowClient()
        for k, v in tags.items():
            client.set_model_version_tag(registered_name, version, k, v)
        return {"registered_model": registered_name, "version": version, "model_uri": info.model_uri,
                "run_id": child.info.run_id}


@contextmanager
def stage_run(root: Path, stage: str, config: dict[str, Any], tags: dict[str, str]) -> Iterator[StageRun]:
    """An MLflow run for one stage: tagged with stage, git commit and data hash; config as params."""
    setup(root)
    all_tags = {"genlab.stage": stage, "genlab.git_commit": git_commit(root), **tags}
    parent = os.environ.get(PARENT_ENV)
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=stage, tags=all_tags) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in config.items()})
        yield StageRun(run)


@contextmanager
def parent_run(root: Path, name: str, tags: dict[str, str]) -> Iterator[str]:
    """A flow-level run; its id goes to the stage processes through GENLAB_PARENT_RUN_ID."""
    setup(root)
    client = MlflowClient()
    run = client.create_run(mlflow.get_experiment_by_name(EXPERIMENT).experiment_id, run_name=name,
                            tags={"genlab.stage": "pipeline", "genlab.git_commit": git_commit(root), **tags})
    status = "FAILED"
    try:
        yield run.info.run_id
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status)


def log_to_run(run_id: str, artifact: Path | None = None, metrics: dict[str, float] | None = None) -> None:
    client = MlflowClient()
    if artifact is not None:
        client.log_artifact(run_id, str(artifact))
    for k, v in (metrics or {}).items():
        client.log_metric(run_id, k, float(v))


def promote_if_better(ref: dict[str, Any], score: float, protocol: dict[str, str]) -> dict[str, Any]:
    """Champion rule: `ref`'s version becomes `champion` if it has a lower FID than the current champion
    on the same protocol (data hash and feature extractor); the old champion becomes `previous`.

    Returns the decision and its reason; both are also written to the version's tags.
    """
    client = MlflowClient()
    name, version = ref["registered_model"], ref["version"]
    try:
        client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        return {"promoted": False, "reason": f"{name} v{version} is not in this registry"}
    for k, v in {"fid": f"{score:.6g}", **protocol}.items():
        client.set_model_version_tag(name, version, k, v)
    try:
        champ = client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        champ = None
    if champ is not None and champ.version == version:
        decision = {"promoted": True, "reason": "already champion"}
    elif champ is None:
        decision = {"promoted": True, "reason": "no champion yet"}
    elif any(champ.tags.get(k) != v for k, v in protocol.items()):
        decision = {"promoted": False, "reason": f"champion v{champ.version} was scored on another protocol "
                    f"({ {k: champ.tags.get(k) for k in protocol} }); not comparable"}
    elif "fid" not in champ.tags or score < float(champ.tags["fid"]):
        decision = {"promoted": True, "reason": f"FID {score:.4g} < champion v{champ.version} FID "
                    f"{champ.tags.get('fid', 'none')}"}
    else:
        decision = {"promoted": False, "reason": f"FID {score:.4g} >= champion v{champ.version} FID "
                    f"{champ.tags['fid']}"}
    if decision["promoted"] and (champ is None or champ.version != version):
        if champ is not None:
            client.set_registered_model_alias(name, "previous", champ.version)
        client.set_registered_model_alias(name, "champion", version)
    client.set_model_version_tag(name, version, "promotion", json.dumps(decision))
    log.info("%s v%s: %s (%s)", name, version, "promoted" if decision["promoted"] else "kept", decision["reason"])
    return decision


def search_runs(root: Path, experiments: list[str] | None, filter_string: str = "") -> pd.DataFrame:
    """Runs of the given experiments (default: genlab's) as a DataFrame, newest first."""
    mlflow.set_tracking_uri(tracking_uri(root))
    return mlflow.search_runs(experiment_names=experiments or [EXPERIMENT], filter_string=filter_string,
                              output_format="pandas", order_by=["attributes.start_time DESC"])


def experiment_names(ids: list[str]) -> dict[str, str]:
    client = MlflowClient()
    return {i: client.get_experiment(i).name for i in ids}
