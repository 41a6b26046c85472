"""Champion promotion against a real (temporary, sqlite) MLflow model registry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from genlab.tracking import promote_if_better

NAME = "genlab-ldm"
PROTOCOL = {"data_hash": "abc123", "feature_extractor": "genlab-evaluator@0123456789ab"}


@pytest.fixture()
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    client.create_registered_model(NAME)
    return client


def new_version(client: MlflowClient, tmp_path: Path) -> dict:
    exp = client.get_experiment_by_name("Default") or client.get_experiment("0")
    run = client.create_run(exp.experiment_id)
    v = client.create_model_version(NAME, source=str(tmp_path), run_id=run.info.run_id)
    return {"registered_model": NAME, "version": v.version}


def aliases(client: MlflowClient) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}


def test_better_model_is_promoted_and_old_champion_kept_as_previous(registry: MlflowClient, tmp_path: Path) -> None:
    first = promote_if_better(new_version(registry, tmp_path), 5.0, PROTOCOL)
    assert first["promoted"] and first["reason"] == "no champion yet"
    assert aliases(registry) == {"champion": "1"}
    second = promote_if_better(new_version(registry, tmp_path), 3.0, PROTOCOL)
    assert second["promoted"]
    assert aliases(registry) == {"champion": "2", "previous": "1"}
    tag = json.loads(registry.get_model_version(NAME, "2").tags["promotion"])
    assert tag["promoted"] is True and "3" in tag["reason"]


def test_worse_model_is_not_promoted(registry: MlflowClient, tmp_path: Path) -> None:
    promote_if_better(new_version(registry, tmp_path), 3.0, PROTOCOL)
    decision = promote_if_better(new_version(registry, tmp_path), 4.0, PROTOCOL)
    assert not decision["promoted"]
    assert ">=" in decision["reason"]
    assert aliases(registry) == {"champion": "1"}
    assert json.loads(registry.get_model_version(NAME, "2").tags["promotion"])["promoted"] is False
    assert registry.get_model_version(NAME, "2").tags["fid"] == "4.0"


def test_an_equal_fid_does_not_take_the_champion(registry: MlflowClient, tmp_path: Path) -> None:
    """The FID tag holds the exact float: a 6-digit tag ("2.11121") once let another version with the very same
    FID, 2.11120763698, be promoted over the champion."""
    fid = 2.11120763698
    promote_if_better(new_version(registry, tmp_path), fid, PROTOCOL)
    tie = promote_if_better(new_version(registry, tmp_path), fid, PROTOCOL)
    assert not tie["promoted"] and aliases(registry) == {"champion": "1"}
    assert float(registry.get_model_version(NAME, "1").tags["fid"]) == fid
    better = promote_if_better(new_version(registry, tmp_path), math.nextafter(fid, 0.0), PROTOCOL)  # next float down
    assert better["promoted"] and aliases(registry) == {"champion": "3", "previous": "1"}


def test_other_protocol_is_not_comparable(registry: MlflowClient, tmp_path: Path) -> None:
    promote_if_better(new_version(registry, tmp_path), 3.0, PROTOCOL)
    other = {**PROTOCOL, "data_hash": "fff999"}
    decision = promote_if_better(new_version(registry, tmp_path), 0.5, other)  # lower FID, other data
    assert not decision["promoted"] and "another protocol" in decision["reason"]
    assert aliases(registry) == {"champion": "1"}


def test_missing_version_is_reported_not_raised(registry: MlflowClient) -> None:
    decision = promote_if_better({"registered_model": NAME, "version": "42"}, 1.0, PROTOCOL)
    assert decision == {"promoted": False, "reason": f"{NAME} v42 is not in this registry"}


def test_current_champion_scored_again_stays_champion(registry: MlflowClient, tmp_path: Path) -> None:
    """A reused version (same content, re-evaluated) that is already champion: no alias moves."""
    ref = new_version(registry, tmp_path)
    promote_if_better(ref, 5.0, PROTOCOL)
    decision = promote_if_better(ref, 4.0, PROTOCOL)  # the sqlite store returns int versions, refs carry str
    assert decision == {"promoted": True, "reason": "already champion"}
    assert aliases(registry) == {"champion": "1"}  # no `previous` pointing at the champion itself
