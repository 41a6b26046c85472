"""Registered versions keyed by content, against a real (temporary, sqlite) MLflow registry: re-running
`evaluate` on the same model reuses its version; new weights or new sampling settings add one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from genlab import tracking
from genlab.checkpoint import save_snapshot
from genlab.models.gan import Generator
from genlab.preflight import HTTP_DEFAULTS

NAME = "genlab-gan"
PROTOCOL = {"data_hash": "abc123", "feature_extractor": "genlab-evaluator@0123456789ab"}
SETTINGS = {"guidance_scale": 2.0, "steps": 5, "eta": 0.0, "sampler": "ddim"}
NETWORK = {"z_dim": 4, "num_classes": 10, "base": 4, "image_size": 8, "channels": 1}


@pytest.fixture()
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for key in HTTP_DEFAULTS:  # the preflight sets these; undo it after the test
        monkeypatch.setenv(key, HTTP_DEFAULTS[key])
    mlflow.set_tracking_uri(uri)
    return MlflowClient()


def snapshot(root: Path, seed: int) -> Path:
    """A tiny GAN generator snapshot laid out as `evaluate.model_files` ships it."""
    out = root / f"gan-{seed}" / "gan"
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    save_snapshot(Generator(**NETWORK), out / "model.safetensors", {"network": NETWORK, "image_size": 8})
    (out / "config.json").write_text(json.dumps({"seed": seed}) + "\n")
    return out


def register(root: Path, gan_dir: Path, fid: float, settings: dict = SETTINGS) -> dict:
    """What `evaluate.register_and_promote` does for one family."""
    example = pd.DataFrame({"label": np.arange(2, dtype=np.int64), "seed": np.arange(2, dtype=np.int64)})
    output = np.zeros((2, 1, 8, 8), dtype=np.float32)
    params = {"guidance_scale": settings["guidance_scale"], "sample_steps": settings["steps"]}
    with tracking.stage_run(root, "evaluate", {}, {}) as run:
        ref = run.log_model("gan", NAME, {"gan": gan_dir}, example, output, params, settings, tags={"family": "gan"})
        return {**ref, **tracking.promote_if_better(ref, fid, PROTOCOL)}


def versions(client: MlflowClient) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))


def aliases(client: MlflowClient) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}


def register_runs(root: Path) -> int:
    runs = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT], output_format="pandas")
    return int((runs["tags.genlab.stage"] == "register").sum())


def test_content_hash_covers_bytes_names_and_settings(tmp_path: Path) -> None:
    a = snapshot(tmp_path, 0)
    base = tracking.content_sha256({"gan": a}, SETTINGS)
    assert base == tracking.content_sha256({"gan": a}, dict(reversed(SETTINGS.items())))  # key order: same
    copy = tmp_path / "copy" / "gan"
    shutil.copytree(a, copy)
    assert tracking.content_sha256({"gan": copy}, SETTINGS) == base  # same bytes elsewhere: same model
    assert tracking.content_sha256({"gan": snapshot(tmp_path, 1)}, SETTINGS) != base
    assert tracking.content_sha256({"gan": a}, {**SETTINGS, "guidance_scale": 3.0}) != base
    assert tracking.content_sha256({"other": a}, SETTINGS) != base  # artifact names are part of it
    (copy / "config.json").rename(copy / "config2.json")
    assert tracking.content_sha256({"gan": copy}, SETTINGS) != base  # file names too


def test_same_content_twice_is_one_version(registry: MlflowClient, tmp_path: Path) -> None:
    gan = snapshot(tmp_path, 0)
    first = register(tmp_path, gan, 5.0)
    second = register(tmp_path, snapshot(tmp_path / "rerun", 0), 5.0)  # the same bytes, copied again
    assert first["version"] == second["version"] == "1"
    assert first["reused"] is False and second["reused"] is True
    assert second["run_id"] == first["run_id"] and second["model_uri"] == f"models:/{NAME}/1"
    assert versions(registry) == ["1"]
    assert register_runs(tmp_path) == 1  # nothing logged the second time
    tag = registry.get_model_version(NAME, "1").tags[tracking.CONTENT_TAG]
    assert tag == tracking.content_sha256({"gan": gan}, {"family": "gan", **SETTINGS})
    assert second["promoted"] and second["reason"] == "already champion"
    assert aliases(registry) == {"champion": "1"}


def test_changed_weights_are_a_new_version(registry: MlflowClient, tmp_path: Path) -> None:
    register(tmp_path, snapshot(tmp_path, 0), 5.0)
    retrained = register(tmp_path, snapshot(tmp_path, 1), 6.0)
    assert retrained["version"] == "2" and retrained["reused"] is False
    assert versions(registry) == ["1", "2"]
    assert not retrained["promoted"] and aliases(registry) == {"champion": "1"}


def test_changed_guidance_is_a_new_version_and_reused_versions_follow_the_champion_rule(
        registry: MlflowClient, tmp_path: Path) -> None:
    gan = snapshot(tmp_path, 0)
    register(tmp_path, gan, 5.0)                                                    # v1 at w = 2: champion
    w3 = register(tmp_path, gan, 4.0, {**SETTINGS, "guidance_scale": 3.0})          # same weights, w = 3
    assert w3["version"] == "2" and w3["reused"] is False and w3["promoted"]
    assert aliases(registry) == {"champion": "2", "previous": "1"}
    again = register(tmp_path, gan, 4.0, {**SETTINGS, "guidance_scale": 3.0})       # nightly re-run: kept
    assert again["version"] == "2" and again["reused"] is True and again["reason"] == "already champion"
    back = register(tmp_path, gan, 5.0)                                             # back to w = 2: v1, worse
    assert back["version"] == "1" and back["reused"] is True and not back["promoted"]
    assert aliases(registry) == {"champion": "2", "previous": "1"}
    better = register(tmp_path, gan, 3.0)           # v1 scored better (as if v2's score were beaten): promoted
    assert better["version"] == "1" and better["reused"] is True and better["promoted"]
    assert aliases(registry) == {"champion": "1", "previous": "2"}
    assert versions(registry) == ["1", "2"] and register_runs(tmp_path) == 2
    assert json.loads(registry.get_model_version(NAME, "1").tags["promotion"])["promoted"] is True


def test_experiment_carries_the_kind_the_mlflow_ui_reads(registry: MlflowClient, tmp_path: Path) -> None:
    """New experiments are made with the tag; one made before it existed gets it at the next setup."""
    tracking.setup(tmp_path)
    exp = registry.get_experiment_by_name(tracking.EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    registry.delete_experiment_tag(exp.experiment_id, "mlflow.experimentKind")
    assert "mlflow.experimentKind" not in registry.get_experiment(exp.experiment_id).tags
    tracking.setup(tmp_path)
    assert registry.get_experiment(exp.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_stage_runs_log_the_prepared_data_as_their_dataset(registry: MlflowClient, tmp_path: Path) -> None:
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    remote = shared\n['remote \"shared\"']\n"
                                              "    url = /srv/dvc-store\n")
    data_hash = "ab" * 32
    dataset = tracking.prepared_dataset(tmp_path, data_hash, "mnist")
    with tracking.stage_run(tmp_path, "train_vae", {"cfg.lr": 1e-3}, {"genlab.data_hash": data_hash},
                            dataset=dataset) as run:
        run_id = run.run_id
    (inp,) = registry.get_run(run_id).inputs.dataset_inputs
    assert inp.dataset.name == "genlab-prepared-mnist" and inp.dataset.digest == data_hash[:36]
    source = json.loads(inp.dataset.source)["uri"]
    assert source.endswith("/data/prepared?dvc_remote=/srv/dvc-store") and source.startswith("file://")
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    (tmp_path / ".dvc" / "config").write_text("[core]\n    analytics = false\n")  # no remote: the path alone
    assert json.loads(tracking.prepared_dataset(tmp_path, data_hash, "mnist").source.to_json())["uri"].endswith(
        "/data/prepared")
