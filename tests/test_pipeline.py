"""End to end: `dvc repro` on the tiny params in a temporary copy, then the no-op repro, an
experiment, and the Prefect flow. Tests run in order within this module on one shared project
(the session's `repro` fixture, tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors import safe_open
from safetensors.torch import load_file

from genlab.data import splits
from genlab.data.prompts import all_train_prompts, heldout_prompts
from genlab.data.store import images_of
from genlab.device import describe
from genlab.metrics.fid import class_accuracy, extract_features, make_extractor
from genlab.metrics.reference import load_reference, reference_key
from genlab.sampling import PROMPT_TABLE, load_vae
from genlab.stages import train_vae
from tests.conftest import sh

FAMILIES = ("vae", "ldm", "pixel", "gan")
STAGES = ("prepare", "train_evaluator", "train_vae", "train_ldm", "train_pixel", "train_gan", "sample_vae",
          "sample_ldm", "sample_pixel", "sample_gan", "guidance_sweep", "reference_stats", "evaluate")


def test_repro_writes_every_output(repro: tuple[Path, dict[str, str], str]) -> None:
    root, _, stdout = repro
    for stage in STAGES:
        assert f"Running stage '{stage}'" in stdout
        assert (root / "metrics" / f"{stage}.json").is_file()
    manifest = json.loads((root / "data/prepared/manifest.json").read_text())
    assert manifest["counts"] == {"train": 1257, "val": 180, "test": 360}
    assert sum(manifest["counts"].values()) == 1797
    for name in ("evaluator", *FAMILIES):
        d = root / "models" / name
        for f in ("model.safetensors", "train_state.pt", "config.json", "loss.png"):
            assert (d / f).is_file(), d / f
        state = torch.load(d / "train_state.pt", weights_only=True)
        assert state["images_seen"] > 0 and state["step"] > 0
    for fam in FAMILIES:
        s = load_file(str(root / "samples" / f"{fam}.safetensors"))
        assert s["images"].shape == (40, 1, 16, 16)
        assert s["images"].min() >= -1 and s["images"].max() <= 1
        assert len(set(s["seeds"].tolist())) == 40  # every image has its own seed
        assert (root / "samples" / f"{fam}.png").stat().st_size > 0
    assert (root / "plots" / "train_ldm.csv").is_file()
    assert not (root / "checkpoints" / "train_ldm.pt").exists()  # in-progress state dropped once finished


def test_train_features_are_extracted_once_by_the_evaluator_stage(repro: tuple[Path, dict[str, str], str]) -> None:
    """train_evaluator keeps the train split's features (and k-NN radii) next to the evaluator; in the offline tier
    reference_stats' file holds the same numbers under the same key, and they are the features of the split."""
    root = repro[0]
    ex = make_extractor(root / "models" / "evaluator" / "model.safetensors", None)
    data_hash = json.loads((root / "data/prepared/manifest.json").read_text())["content_hash"]
    kept = load_reference(root / "models" / "evaluator" / "train_reference.safetensors", reference_key(data_hash, ex))
    stats = load_reference(root / "stats" / "reference.safetensors", kept.key)
    assert kept.n == 1257 and torch.equal(kept.features, stats.features) and torch.equal(kept.radii, stats.radii)
    train = images_of(root / "data" / "prepared" / "train.safetensors")
    assert torch.equal(kept.features.float(), extract_features(train, ex))


def test_evaluate_metrics_are_sane(repro: tuple[Path, dict[str, str], str]) -> None:
    root = repro[0]
    m = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert "not Inception" in m["feature_extractor"]
    floor = m["floor"]["fid"]
    assert floor >= 0
    for fam in FAMILIES:
        assert np.isfinite(m[fam]["fid"]) and m[fam]["fid"] > floor  # tiny models cannot beat held-out data
        assert m[fam]["fid_ratio"] == pytest.approx(m[fam]["fid"] / floor)
        assert 0 <= m[fam]["precision"] <= 1 and 0 <= m[fam]["recall"] <= 1
        # data copying: tiny models' samples sit farther from the train split than held-out images (Z_U > 0)
        assert m[fam]["copy_z"] > 0 and m[fam]["nn_ratio"] > 1, (fam, m[fam]["copy_z"], m[fam]["nn_ratio"])
    assert "copy_z" not in m["floor"]
    assert 0 <= m["ldm"]["class_accuracy"] <= 1 and "class_accuracy" not in m["vae"]
    table = pd.read_csv(root / "reports" / "comparison.csv")
    assert table["copy_z"].notna().sum() == len(FAMILIES)
    assert list(table["family"]) == ["data floor (test vs train)", *FAMILIES, "ldm_prompts (held-out phrasings)"]
    # the class+text LDM prompted with held-out phrasings at the default scale: the sweep's row at w = 2
    sweep = {r["guidance_scale"]: r for r in json.loads((root / "metrics" / "guidance_sweep.json").read_text())["rows"]}
    prompts = m["ldm_prompts"]
    assert prompts["fid"] == sweep[2.0]["prompt_fid"] and prompts["class_accuracy"] == sweep[2.0]["prompt_accuracy"]
    assert prompts["fid_ratio"] == pytest.approx(prompts["fid"] / floor) and prompts["n"] == 40
    assert table.loc[table.family == "ldm", "fid"].item() == pytest.approx(m["ldm"]["fid"])
    acc = json.loads((root / "metrics" / "train_evaluator.json").read_text())["test_accuracy"]
    assert acc > 0.8


def test_mlflow_runs_and_registry(repro: tuple[Path, dict[str, str], str]) -> None:
    root, env = repro[0], repro[1]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    runs = mlflow.search_runs(experiment_names=["genlab"], output_format="pandas")
    data_hash = json.loads((root / "data/prepared/manifest.json").read_text())["content_hash"]
    head = sh(["git", "rev-parse", "HEAD"], root, env).stdout.strip()
    for stage in STAGES:
        row = runs[runs["tags.genlab.stage"] == stage]
        assert len(row) == 1, stage
        assert row["tags.genlab.data_hash"].item() == data_hash
        assert row["tags.genlab.git_commit"].item() == head
        assert row["tags.genlab.device_name"].item() == describe(torch.device("cpu"))  # where its timings hold
        assert row["tags.genlab.memory_format"].item() == "contiguous"  # `auto` on CPU, resolved
    ldm_run = runs[runs["tags.genlab.stage"] == "train_ldm"].iloc[0]
    assert ldm_run["params.cfg.guidance_scale"] == "2.0"
    history = client.get_metric_history(ldm_run.run_id, "loss")
    assert len(history) >= 3 and history[-1].step == 1984  # logged per step, counted in images seen
    for fam in FAMILIES:
        champion = client.get_model_version_by_alias(f"genlab-{fam}", "champion")
        assert float(champion.tags["fid"]) > 0 and champion.tags["data_hash"] == data_hash


def test_champion_ldm_loads_and_reproduces_samples(repro: tuple[Path, dict[str, str], str]) -> None:
    root, env = repro[0], repro[1]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model("models:/genlab-ldm@champion")
    s = load_file(str(root / "samples" / "ldm.safetensors"))
    pick = [0, 13, 39]
    inp = pd.DataFrame({"label": s["labels"][pick].numpy(), "seed": s["seeds"][pick].numpy()})
    out = model.predict(inp)
    assert out.shape == (3, 1, 16, 16) and out.dtype == np.float32
    # the served model regenerates the sample stage's images from (label, seed) alone
    np.testing.assert_allclose(out, s["images"][pick].numpy(), atol=1e-4)
    other = model.predict(inp, params={"guidance_scale": 0.0})
    assert not np.allclose(other, out, atol=1e-3)
    # class+text: a prompt column switches to the text path (held-out wording), same seeds, other images
    prompts = ["a scanned 3", "an image of the numeral seven", "nine, written by hand"]
    by_prompt = model.predict(inp.assign(prompt=prompts))
    assert by_prompt.shape == out.shape and not np.allclose(by_prompt, out, atol=1e-3)
    # those are the model's held-out phrasings: answered from the prompt table logged with it, no transformer loaded
    assert not model.unwrap_python_model().sampler.text.loaded
    with safe_open(str(root / "models" / "ldm" / PROMPT_TABLE), framework="pt") as f:
        table = json.loads(f.metadata()["prompts"])
    assert table == [p for c in range(10) for p in all_train_prompts(c)] + [
        p for c in range(10) for p in heldout_prompts(c)]


def test_second_repro_does_nothing(repro: tuple[Path, dict[str, str], str]) -> None:
    root, env = repro[0], repro[1]
    before = {p: p.stat().st_mtime_ns for p in (root / "models").rglob("*.safetensors")}
    out = sh(["dvc", "repro"], root, env).stdout
    assert "Running stage" not in out
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_param_change_reruns_only_dependents_through_prefect(repro: tuple[Path, dict[str, str], str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root, env = repro[0], repro[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ldm"]["guidance_scale"] = 3.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_HOME", "PATH"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.syspath_prepend(str(root / "flows"))
    sys.modules.pop("pipeline", None)
    import pipeline as flow_module
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        results = flow_module.pipeline(root=str(root))
    assert set(results) == set(STAGES)
    # one family's sampling params moved: its sample stage and evaluate re-run, not the other families' or the sweep
    assert {s for s, status in results.items() if status == "ran"} == {"sample_ldm", "evaluate"}
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["genlab"], output_format="pandas")
    parent = runs[runs["tags.genlab.stage"] == "pipeline"]
    assert len(parent) == 1 and parent["status"].item() == "FINISHED"
    children = runs[runs["tags.mlflow.parentRunId"] == parent.run_id.item()]
    assert set(children["tags.genlab.stage"]) == {"sample_ldm", "evaluate"}
    m = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert m["registry"]["ldm"]["version"] == "2"


def test_generative_depth_outputs(repro: tuple[Path, dict[str, str], str]) -> None:
    root = repro[0]
    vae = root / "models" / "vae"
    for name in ("reconstructions", "prior_samples", "ae_prior_samples", "prior_vae_vs_ae", "interpolation_linear",
                 "interpolation_spherical", "traversal", "arithmetic"):
        assert (vae / f"{name}.png").stat().st_size > 0, name
    m = json.loads((root / "metrics" / "train_vae.json").read_text())
    assert m["rfid"] > 0 and m["prior_fid"] > 0 and m["ae_prior_fid"] > 0 and 0 <= m["arithmetic_accuracy"] <= 1
    # the LDM's ceiling: the evaluator on the VAE's reconstructions of the test split (means, not samples)
    test = splits.read_all(root / "data" / "prepared")[0]["test"]
    net, _ = load_vae(vae, torch.device("cpu"))
    with torch.no_grad():  # the stage's own batching, so the same bits
        rec = train_vae.decode(net, train_vae.encode(net, test.images, torch.device("cpu"))[0], torch.device("cpu"))
    evaluator = root / "models" / "evaluator" / "model.safetensors"
    assert m["recon_class_accuracy"] == pytest.approx(class_accuracy(evaluator, rec, test.attributes), abs=1e-6)
    for stage in ("train_ldm", "train_pixel"):
        bpd = json.loads((root / "metrics" / f"{stage}.json").read_text())["test_bits_per_dim"]
        assert np.isfinite(bpd)
    sweep = json.loads((root / "metrics" / "guidance_sweep.json").read_text())
    assert [r["guidance_scale"] for r in sweep["rows"]] == [1.0, 2.0, 3.0]
    assert "guidance_scale" not in sweep and sweep["steps"] == 5  # its scales are the rows'; not a dvc.yaml param
    for r in sweep["rows"]:  # class+text: scored through the labels and through held-out phrasings
        assert 0 <= r["class_accuracy"] <= 1 and 0 <= r["prompt_accuracy"] <= 1 and r["prompt_fid"] > 0
    assert (root / "reports" / "guidance" / "fid_vs_accuracy.png").is_file()
    assert list(pd.read_csv(root / "plots" / "guidance_sweep.csv")["guidance_scale"]) == [1.0, 2.0, 3.0]
    page = (root / "reports" / "report.html").read_text()
    assert "data:image/png;base64" in page and "not Inception" in page and "pixel" in page
    snap = json.loads((root / "models" / "pixel" / "config.json").read_text())
    assert snap["prediction"] == "v" and snap["sampler"] == "ddpm"


def test_compare_lists_every_family(repro: tuple[Path, dict[str, str], str], monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    root, env = repro[0], repro[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    monkeypatch.chdir(root)
    from genlab.cli import main

    assert main(["compare", "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(table["family"]) == set(FAMILIES)
    assert table["fid"].is_monotonic_increasing
    ldm = table[table.family == "ldm"]
    # one row per evaluate run: the first repro (w = 2) and the Prefect run after the guidance change (w = 3)
    assert sorted(ldm["guidance_scale"]) == [2.0, 3.0]
    assert (ldm["images_seen"] == 1984).all() and (ldm["sample_steps"] == 5).all()
    assert main(["compare", "--sort", "nonsense"]) == 2


def test_stale_reference_statistics_are_refused(repro: tuple[Path, dict[str, str], str]) -> None:
    """Statistics keyed by another data version must never score this one: evaluate stops, exit 2."""
    from genlab.metrics.reference import load_reference, save_reference

    root, env = repro[0], repro[1]
    path = root / "stats" / "reference.safetensors"
    original = path.read_bytes()
    before = (root / "metrics" / "evaluate.json").read_bytes()
    stats = load_reference(path)
    stale = dataclasses.replace(stats, key="0" * 64)  # as if computed from another data version
    try:
        save_reference(stale, path)
        proc = sh(["genlab", "evaluate"], root, env, check=False)
        assert proc.returncode == 2
        err = proc.stderr.strip().splitlines()[-1]
        assert err.startswith("genlab: error:") and "stats/reference.safetensors" in err and "stale" in err
        assert (root / "metrics" / "evaluate.json").read_bytes() == before  # nothing written
    finally:
        path.write_bytes(original)
