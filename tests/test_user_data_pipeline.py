"""`dvc repro` end to end on the user's own data, tracked by DVC in data/raw: every stage runs, the comparison
table and report are written, champions are registered and the served LDM regenerates the sample stage's
images. Then the data version travels: `dvc push` to a local remote, `git clone` + `dvc pull` elsewhere, and
`dvc repro` there prepares the same content hash. A new data version re-runs `prepare` and what follows it.

By default: MNIST IDX files, prepared and read by a training stage, and their version's round trip. `-m slow`:
every stage on MNIST IDX files, CIFAR-10's binary batches, an npz, a labelled image folder and a flat one
(unlabelled: unconditional models, a self-supervised evaluator); about 5 minutes each on 2 cores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from genlab.checkpoint import load_snapshot
from genlab.data import synthetic
from genlab.sampling import FAMILIES
from tests.conftest import make_project, sh, tiny_params

# 16 px keeps each run to a couple of minutes on 2 cores; the presets' 32 and 64 px sizes are checked up front
# by test_user_data.py and run by `bench/` and the closing notes' real-size runs
SMALL = {"evaluator": {"train_images": 3000}, "vae": {"train_images": 2000, "ae_train_images": 500},
         "ldm": {"train_images": 1500, "fid_every_images": 0}, "pixel": {"train_images": 500, "fid_every_images": 0},
         "gan": {"train_images": 1500, "fid_every_images": 0}}


def project_with(tmp: Path, data: dict, write: Callable[[Path], None], **sections: dict) -> tuple[Path, dict]:
    """A tiny project whose data/raw/<name> holds data written by `write`, added to DVC and committed."""
    p = tiny_params()
    p["data"] = {**p["data"], **data}
    for key, value in {**SMALL, **sections}.items():
        p[key] = {**p[key], **value}
    root, env = make_project(tmp, p)
    write(root / data["path"])
    target = Path(data["path"]).parts[:3]  # data/raw/<name>: the folder (or file) `dvc add` tracks
    sh(["dvc", "add", str(Path(*target))], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-q", "-m", "raw data"], root, env)
    return root, env


def check_run(root: Path, env: dict, labelled: bool) -> dict:
    """Every stage ran; report, champions and the served LDM as they should be. Returns evaluate's metrics."""
    out = sh(["dvc", "repro"], root, env).stdout
    for stage in ("prepare", "train_evaluator", "train_vae", "train_ldm", "train_pixel", "train_gan", "sample_vae",
                  "sample_ldm", "sample_pixel", "sample_gan", "guidance_sweep", "reference_stats", "evaluate"):
        assert f"Running stage '{stage}'" in out, stage
    m = json.loads((root / "metrics" / "evaluate.json").read_text())
    table = pd.read_csv(root / "reports" / "comparison.csv")
    assert {"data floor (test vs train)", *FAMILIES} <= set(table["family"])
    assert (root / "reports" / "report.html").is_file() and (root / "reports" / "comparison.md").is_file()
    for fam in FAMILIES:
        assert np.isfinite(m[fam]["fid"]) and m[fam]["fid"] > 0
    vae = json.loads((root / "metrics" / "train_vae.json").read_text())
    if labelled:
        assert 0 <= m["ldm"]["class_accuracy"] <= 1 and "per_class_fid" in m["gan"]
        assert 0 <= vae["recon_class_accuracy"] <= 1
    else:  # absent, not zero
        assert all("class_accuracy" not in m[f] and "per_class_fid" not in m[f] for f in (*FAMILIES, "floor"))
        assert "recon_class_accuracy" not in vae
        assert table["class_accuracy"].isna().all() if "class_accuracy" in table else True
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    data_hash = json.loads((root / "data/prepared/manifest.json").read_text())["content_hash"]
    for fam in FAMILIES:
        assert client.get_model_version_by_alias(f"genlab-{fam}", "champion").tags["data_hash"] == data_hash
    model = mlflow.pyfunc.load_model("models:/genlab-ldm@champion")
    s = load_file(str(root / "samples" / "ldm.safetensors"))
    pick = [0, 5, len(s["seeds"]) - 1]
    labels = s["labels"][pick].clamp(min=0).numpy()  # -1 (unconditional) is sent as label 0, which it ignores
    got = model.predict(pd.DataFrame({"label": labels, "seed": s["seeds"][pick].numpy()}))
    np.testing.assert_allclose(got, s["images"][pick].numpy(), atol=1e-4)
    return m


def prepared_hash(root: Path) -> str:
    """DVC's hash of data/prepared in dvc.lock."""
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]["prepare"]["outs"][0]["md5"]


def test_mnist_idx_data_version_and_dvc_remote_round_trip(tmp_path: Path) -> None:
    """The data version's life in DVC; every stage on MNIST files: `test_other_formats_end_to_end` (slow)."""
    root, env = project_with(tmp_path / "a", {"source": "mnist", "path": "data/raw/mnist"},
                             lambda d: synthetic.write_mnist(d, 130, 30, seed=0))
    out = sh(["dvc", "repro", "train_vae"], root, env).stdout  # prepare, then a stage that reads its output
    assert "Running stage 'prepare'" in out and "Running stage 'train_vae'" in out
    prepared = json.loads((root / "data/prepared/manifest.json").read_text())
    assert prepared["source"] == "mnist" and prepared["image_shape"] == [1, 16, 16]

    # the data version travels: push to a local remote, clone, pull the raw data, reproduce `prepare`
    remote = tmp_path / "remote"
    sh(["dvc", "remote", "add", "-d", "local", str(remote)], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-q", "-m", "remote; lock"], root, env)
    assert "files pushed" in sh(["dvc", "push"], root, env).stdout
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    assert not (clone / "data/raw/mnist").exists()
    sh(["dvc", "pull", "data/raw/mnist.dvc"], clone, env)
    assert sorted(p.name for p in (clone / "data/raw/mnist").iterdir()) == sorted(
        p.name for p in (root / "data/raw/mnist").iterdir())
    sh(["dvc", "repro", "prepare"], clone, {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'clone.db'}"})
    again = json.loads((clone / "data/prepared/manifest.json").read_text())
    assert again["content_hash"] == prepared["content_hash"]
    assert prepared_hash(clone) == prepared_hash(root)  # the same bytes, file for file
    assert "up to date" in sh(["dvc", "status", "prepare"], clone, env).stdout

    # a new data version: `prepare` (and what follows it) is out of date, nothing else re-runs on its own
    synthetic.write_mnist(root / "data/raw/mnist", 140, 30, seed=5)
    sh(["dvc", "add", "data/raw/mnist"], root, env)
    status = sh(["dvc", "status"], root, env).stdout
    assert "prepare:" in status and "modified:           data/raw" in status
    assert "train_vae:" not in status  # its own deps are unchanged until prepare writes new data
    sh(["dvc", "repro", "prepare"], root, env)
    assert "train_vae:" in sh(["dvc", "status", "train_vae"], root, env).stdout  # now they are not


@pytest.mark.slow  # ~5 min on 2 cores each: the default suite's one whole run is the shared `repro` fixture's
def test_unlabelled_folder_end_to_end(tmp_path: Path) -> None:
    root, env = project_with(tmp_path, {"source": "image_folder", "path": "data/raw/flat"},
                             lambda d: synthetic.write_image_folder(d, 100, 24, seed=1, flat=True))
    m = check_run(root, env, labelled=False)
    ev = json.loads((root / "metrics" / "train_evaluator.json").read_text())
    assert ev["task"] == "rotation" and 0 <= ev["test_accuracy_rotation"] <= 1
    ldm = json.loads((root / "models/ldm/config.json").read_text())
    assert ldm["conditioning"] == "class+text"  # the configured one; the model itself is unconditional:
    _, cfg = load_snapshot(root / "models/ldm/model.safetensors")
    assert cfg["conditioning"] == "none" and cfg["network"]["num_classes"] == 0
    assert cfg["network"]["context_dim"] is None
    _, gan = load_snapshot(root / "models/gan/model.safetensors")
    assert gan["network"]["num_classes"] == 0
    assert m["ldm"]["n"] == json.loads((root / "data/prepared/manifest.json").read_text())["counts"]["test"]
    sweep = json.loads((root / "metrics" / "guidance_sweep.json").read_text())
    assert [r["guidance_scale"] for r in sweep["rows"]] == [1.0] and "class_accuracy" not in sweep["rows"][0]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["mnist", "cifar10", "npz", "image_folder"])
def test_other_formats_end_to_end(fmt: str, tmp_path: Path) -> None:
    data, write = {
        "mnist": ({"source": "mnist", "path": "data/raw/mnist"}, lambda d: synthetic.write_mnist(d, 130, 30, seed=0)),
        "cifar10": ({"source": "cifar10", "path": "data/raw/cifar10"},
                    lambda d: synthetic.write_cifar10(d, 130, 30, seed=2, batches=2)),
        "npz": ({"source": "npz", "path": "data/raw/arrays/data.npz"},
                lambda d: synthetic.write_npz(d, 120, 24, seed=3, classes=4)),
        "image_folder": ({"source": "image_folder", "path": "data/raw/shapes", "channels": 1},
                         lambda d: synthetic.write_image_folder(d, 90, (30, 20), seed=4, classes=3,
                                                                modes=("RGB", "L", "RGBA", "P"))),
    }[fmt]
    root, env = project_with(tmp_path, data, write)
    check_run(root, env, labelled=True)
