"""The one place that talks to MLflow: runs, params, metrics, artifacts, models and the registry.

Tracking URI: `MLFLOW_TRACKING_URI`, else `sqlite:///<root>/mlflow.db`. Artifacts of the `genlab`
experiment go to `<root>/mlartifacts` (fixed, whatever the working directory). A stage run whose
environment has `GENLAB_PARENT_RUN_ID` (set by the Prefect flow) is that run's child.

An unreachable store stops the run before any work with one line naming the URI: `setup` (hence every stage
run and the flow's parent run) first calls `preflight.check_tracking`, which also bounds MLflow's HTTP
retries and timeouts (values and reasons in `genlab/preflight.py`).

Registered versions are keyed by content: `log_model` tags each version with `genlab.content_sha256`,
a sha256 over the files the model ships (weights, configs, serving code, names included) and its
model_config (sampling settings), and reuses the version with the same hash instead of adding another.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

from genlab.checkpoint import load_train_state
from genlab.preflight import check_tracking, tracking_uri, uri_scheme

log = logging.getLogger(__name__)

EXPERIMENT = "genlab"
PARENT_ENV = "GENLAB_PARENT_RUN_ID"
SERVING_CODE = Path(__file__).with_name("serving.py")
CONTENT_TAG = "genlab.content_sha256"
PIP_REQUIREMENTS = ["torch==2.14.1", "safetensors", "pandas", "numpy"]
# the MLflow 3 UI opens an experiment by its kind: model training runs, not GenAI traces
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def setup(root: Path) -> str:
    """Point MLflow at the project's store and experiment; return the experiment id."""
    uri = check_tracking(root)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        # a local store keeps artifacts beside the project; a tracking server chooses (proxied: clients upload)
        local = not uri_scheme(uri).startswith(("http", "databricks"))
        location = (root / "mlartifacts").resolve().as_uri() if local else None
        exp_id = mlflow.create_experiment(EXPERIMENT, artifact_location=location, tags=EXPERIMENT_TAGS)
    else:
        exp_id = exp.experiment_id
        for key, value in EXPERIMENT_TAGS.items():  # experiments made before the tag existed
            if exp.tags.get(key) != value:
                MlflowClient().set_experiment_tag(exp_id, key, value)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class StageRun:
    """Handle on an active stage run.

    `logged` maps each metric key to the last step an earlier attempt of this run logged it at (a resumed
    stage): those points are not logged again, so every step of a metric is in the run exactly once."""

    def __init__(self, run: mlflow.ActiveRun, logged: dict[str, int] | None = None) -> None:
        self.run = run
        self.run_id = run.info.run_id
        self.logged = logged or {}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        at = step or 0  # MLflow's step when none is given
        fresh = {k: float(v) for k, v in metrics.items() if at > self.logged.get(k, -1)}
        if fresh:
            mlflow.log_metrics(fresh, step=step)

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
        safetensors artifacts and `serving.py` rebuilds the network), register it, tag the version.

        A version with the same content (`content_sha256`) is reused instead: nothing is logged and the
        returned reference has `"reused": True`."""
        model_config = {"family": family, **settings}
        content = content_sha256(artifacts, model_config)
        client = MlflowClient()
        existing = find_version(registered_name, content)
        if existing is not None:
            for k, v in tags.items():
                client.set_model_version_tag(registered_name, existing.version, k, v)
            log.info("%s v%s has the same content (sha256 %s): reused, nothing registered",
                     registered_name, existing.version, content[:12])
            return {"registered_model": registered_name, "version": str(existing.version),
                    "model_uri": f"models:/{registered_name}/{existing.version}", "run_id": existing.run_id,
                    "reused": True}
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
                model_config=model_config,
                signature=signature,
                input_example=example,  # MLflow checks that the logged model loads and predicts on it
                registered_model_name=registered_name,
                pip_requirements=PIP_REQUIREMENTS,
                await_registration_for=60,
            )
        version = str(info.registered_model_version)
        for k, v in {**tags, CONTENT_TAG: content}.items():
            client.set_model_version_tag(registered_name, version, k, v)
        return {"registered_model": registered_name, "version": version, "model_uri": info.model_uri,
                "run_id": child.info.run_id, "reused": False}


def content_sha256(artifacts: dict[str, Path], model_config: dict[str, Any]) -> str:
    """What a registered model serves, as one sha256: every file it ships (artifact name and relative path,
    size and bytes, in sorted order), the serving code, its requirements and the model_config (sampling
    settings) it is logged with. Equal hashes mean the same served model."""
    files = [(f"artifacts/{name}/{f.relative_to(path).as_posix()}" if path.is_dir() else f"artifacts/{name}", f)
             for name, path in artifacts.items()
             for f in (sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path])]
    h = hashlib.sha256()
    for rel, f in sorted([*files, ("code/serving.py", SERVING_CODE)]):
        data = f.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    h.update(json.dumps({"model_config": model_config, "pip_requirements": PIP_REQUIREMENTS},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def find_version(name: str, content: str) -> ModelVersion | None:
    """The earliest ready version of registered model `name` tagged with this content hash, if any."""
    found = MlflowClient().search_model_versions(f"name = '{name}' and tags.`{CONTENT_TAG}` = '{content}'")
    ready = [v for v in found if v.status == "READY" and v.tags.get(CONTENT_TAG) == content]
    return min(ready, key=lambda v: int(v.version), default=None)


def logged_steps(run_id: str) -> dict[str, int]:
    """The last step at which each metric of a run was logged."""
    client = MlflowClient()
    keys = client.get_run(run_id).data.metrics
    return {k: max(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


def existing_run(run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        return MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException:
        return False


SERVER_SCHEMES = ("http", "https")
TRAIN_STATE_DIR = "train_state"  # a training stage's in-progress checkpoint, in its run on a tracking server


def train_state_tag(ckpt: Path) -> str:
    """The run tag naming the fingerprint of the training state `ckpt` that the run holds on the server."""
    return f"genlab.train_state.{ckpt.stem}"


def shares_train_state() -> bool:
    """Training states are shared through the tracking store only when it is a server (other machines see it)."""
    return uri_scheme(mlflow.get_tracking_uri()) in SERVER_SCHEMES


def share_train_state(run_id: str, ckpt: Path, fingerprint: str) -> None:
    """Upload the checkpoint just written to the stage's run on the tracking server, so that a stage killed on this
    machine resumes on any other (`fetch_train_state`); nothing without a server."""
    if not shares_train_state():
        return
    client = MlflowClient()
    client.log_artifact(run_id, str(ckpt), TRAIN_STATE_DIR)
    client.set_tag(run_id, train_state_tag(ckpt), fingerprint)


def fetch_train_state(root: Path, ckpt: Path, fingerprint: str) -> str | None:
    """Without a local checkpoint of this exact run (`fingerprint`), the newest one an unfinished run of it shared on
    the tracking server (a stage killed on another machine) is downloaded to `ckpt`; returns that run's id."""
    if uri_scheme(tracking_uri(root)) not in SERVER_SCHEMES:
        return None
    if ckpt.is_file() and load_train_state(ckpt).get("fingerprint") == fingerprint:
        return None  # this machine has its own resume point for this run
    mlflow.set_tracking_uri(check_tracking(root))
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return None
    runs = MlflowClient().search_runs(
        [exp.experiment_id], f"tags.`{train_state_tag(ckpt)}` = '{fingerprint}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run_id = runs[0].info.run_id
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ckpt.parent) as tmp:  # same file system: the move is a rename
        got = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{TRAIN_STATE_DIR}/{ckpt.name}",
                                                       dst_path=tmp))
        if state_run_id(got, fingerprint) != run_id:
            log.warning("%s of MLflow run %s is not that run's training state; not resumed", got.name, run_id)
            return None
        os.replace(got, ckpt)
    log.info("fetched %s from MLflow run %s on %s (a stage killed elsewhere): resuming it", ckpt.name, run_id,
             mlflow.get_tracking_uri())
    return run_id


def state_run_id(ckpt: Path, fingerprint: str) -> str | None:
    """The MLflow run a checkpoint of this exact run (`fingerprint`) belongs to, if `ckpt` is one (loaded as every
    training state is: weights only, a damaged or unsafe file refused)."""
    if not ckpt.is_file():
        return None
    state = load_train_state(ckpt)
    return (state.get("mlflow_run_id") or None) if state.get("fingerprint") == fingerprint else None


def drop_train_state(run_id: str, ckpt: Path) -> None:
    """A finished stage's shared training state is deleted from its run (the final state is in DVC's cache)."""
    if not shares_train_state():
        return
    client = MlflowClient()
    run = client.get_run(run_id)
    if train_state_tag(ckpt) not in run.data.tags:
        return
    get_artifact_repository(run.info.artifact_uri).delete_artifacts(f"{TRAIN_STATE_DIR}/{ckpt.name}")
    client.delete_tag(run_id, train_state_tag(ckpt))


def dvc_remote_url(root: Path) -> str | None:
    """The URL of the project's default DVC remote (`.dvc/config`, then `.dvc/config.local`), if one is set."""
    config = configparser.ConfigParser()
    config.read([root / ".dvc" / "config", root / ".dvc" / "config.local"])
    name = config.get("core", "remote", fallback=None)
    # DVC writes the section as ['remote "name"'], quotes included; hand-written files often drop the outer ones
    sections = [s for s in (f"'remote \"{name}\"'", f'remote "{name}"') if name and config.has_section(s)]
    return config.get(sections[0], "url", fallback=None) if sections else None


def prepared_dataset(root: Path, data_hash: str, source: str) -> MetaDataset:
    """The prepared data as an MLflow dataset: its name, genlab's content hash as the digest (the first 36 hex
    digits: MLflow's limit; the whole hash is the run's `genlab.data_hash` tag), its DVC path (and the default
    remote's URL, where the bytes are shared) as the source."""
    remote = dvc_remote_url(root)
    uri = (root / "data" / "prepared").resolve().as_uri() + (f"?dvc_remote={remote}" if remote else "")
    return MetaDataset(LocalArtifactDatasetSource(uri), name=f"genlab-prepared-{source}", digest=data_hash[:36])


@contextmanager
def stage_run(root: Path, stage: str, config: dict[str, Any], tags: dict[str, str],
              resume_run_id: str | None = None, dataset: MetaDataset | None = None) -> Iterator[StageRun]:
    """An MLflow run for one stage: tagged with stage, git commit and data hash; config as params.

    With `resume_run_id` (the run recorded in a resumed training checkpoint) the stage continues that run:
    its params stay, metric points it already has are not logged twice, `genlab.resumes` counts the resumes."""
    setup(root)
    all_tags = {"genlab.stage": stage, "genlab.git_commit": git_commit(root), **tags}
    parent = os.environ.get(PARENT_ENV)
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    if existing_run(resume_run_id):
        resumes = int(MlflowClient().get_run(resume_run_id).data.tags.get("genlab.resumes", "0")) + 1
        logged = logged_steps(resume_run_id)
        with mlflow.start_run(run_id=resume_run_id) as run:
            mlflow.set_tags({**all_tags, "genlab.resumes": str(resumes)})
            log.info("continuing MLflow run %s (resume %d)", resume_run_id, resumes)
            yield StageRun(run, logged)
        return
    if resume_run_id:
        log.warning("MLflow run %s of the resumed checkpoint is not in %s; logging to a new run", resume_run_id,
                    mlflow.get_tracking_uri())
    with mlflow.start_run(run_name=stage, tags=all_tags) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in config.items()})
        if dataset is not None:  # the UI's Dataset column: what this run saw
            mlflow.log_input(dataset, context="training")
        yield StageRun(run)


@contextmanager
def parent_run(root: Path, name: str, tags: dict[str, str]) -> Iterator[str]:
    """A flow-level run; its id goes to the stage processes through GENLAB_PARENT_RUN_ID. `setup` checks the
    store first and bounds MLflow's HTTP client, for this process and the stage processes it starts."""
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
    # repr: the exact float, so that a re-scored model compares equal (a 6-digit tag let FID 2.1112076 "beat" 2.11121)
    for k, v in {"fid": repr(float(score)), **protocol}.items():
        client.set_model_version_tag(name, version, k, v)
    try:
        champ = client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        champ = None
    same = champ is not None and str(champ.version) == str(version)  # stores differ: int or str versions
    if same:
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
    if decision["promoted"] and not same:
        if champ is not None:
            client.set_registered_model_alias(name, "previous", champ.version)
        client.set_registered_model_alias(name, "champion", version)
    client.set_model_version_tag(name, version, "promotion", json.dumps(decision))
    log.info("%s v%s: %s (%s)", name, version, "promoted" if decision["promoted"] else "kept", decision["reason"])
    return decision


def search_runs(root: Path, experiments: list[str] | None, filter_string: str = "") -> pd.DataFrame:
    """Runs of the given experiments (default: genlab's) as a DataFrame, newest first."""
    mlflow.set_tracking_uri(check_tracking(root))
    return mlflow.search_runs(experiment_names=experiments or [EXPERIMENT], filter_string=filter_string,
                              output_format="pandas", order_by=["attributes.start_time DESC"])


def experiment_names(ids: list[str]) -> dict[str, str]:
    client = MlflowClient()
    return {i: client.get_experiment(i).name for i in ids}
