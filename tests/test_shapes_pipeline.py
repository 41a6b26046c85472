"""The `shapes` source through every stage (CLI, no DVC): text conditioning on captions, an evaluator
with one head per attribute, and prompt accuracy on attribute combinations held out of training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from genlab import inputs
from genlab.checkpoint import load_snapshot
from genlab.cli import main
from genlab.data import shapes
from genlab.paths import Paths
from genlab.stages.common import Context, load_data
from genlab.stages.train_vae import encode
from tests.conftest import tiny_params

STAGES = ("prepare", "train_evaluator", "train_vae", "train_ldm", "train_pixel", "train_gan", "sample_vae",
          "sample_ldm", "sample_pixel", "sample_gan", "guidance_sweep", "reference_stats", "evaluate")


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    params = tiny_params()
    params["data"].update(source="shapes", shapes_count=1500, test_fraction=0.1)
    for family in ("ldm", "pixel"):
        params[family].update(conditioning="text", cross_attention_levels=[1], fid_every_images=0)
    params["ldm"]["latents"] = "mean"
    params["sample"].update(n_per_class=1)
    params["evaluate"].update(per_class_fid=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    try:
        for stage in STAGES:  # dvc.yaml's sample_<family> runs `genlab sample <family>`
            assert main(stage.replace("sample_", "sample ").split()) == 0, stage
    finally:
        mp.undo()
    return root


def test_held_out_combinations_never_reach_training(shapes_run: Path) -> None:
    prepared = shapes_run / "data" / "prepared"
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["attributes"]["names"] == list(shapes.NAMES) and manifest["num_classes"] == 144
    held = manifest["holdout"]
    assert held == [{"colour": "red", "shape": "triangle"}] and manifest["held_out_from_training"] > 0
    for split, expected_any in (("train", False), ("val", False), ("test", True)):
        attrs = load_file(str(prepared / f"{split}.safetensors"))["attributes"]
        unseen = ~shapes.split_holdout_combinations(attrs, held)
        assert bool(unseen.any()) is expected_any, split


def test_text_conditioned_models_and_attribute_metrics(shapes_run: Path) -> None:
    _, evaluator = load_snapshot(shapes_run / "models" / "evaluator" / "model.safetensors")
    assert evaluator["network"]["num_classes"] == list(shapes.NUM_CLASSES)
    for family in ("ldm", "pixel"):
        _, cfg = load_snapshot(shapes_run / "models" / family / "model.safetensors")
        assert cfg["conditioning"] == "text" and cfg["source"] == "shapes" and cfg["network"]["num_classes"] == 0
    m = json.loads((shapes_run / "metrics" / "evaluate.json").read_text())
    for family in ("ldm", "pixel", "gan"):
        for key in ("accuracy_colour", "accuracy_shape", "accuracy_size", "accuracy_position", "holdout_accuracy"):
            assert 0.0 <= m[family][key] <= 1.0, (family, key)
        assert m[family]["n"] == 144
    # the floor's accuracies are the evaluator's own on real test images: colour is trivially learnable
    assert m["floor"]["accuracy_colour"] > 0.9
    ev = json.loads((shapes_run / "metrics" / "train_evaluator.json").read_text())
    assert ev["test_accuracy_colour"] > 0.9


def test_an_ldm_on_posterior_means_is_scaled_to_their_unit_variance(shapes_run: Path) -> None:
    ctx = Context(paths=Paths(shapes_run), seed=0, device=torch.device("cpu"))
    data = load_data(ctx)
    vae, vae_cfg = inputs.vae(ctx.paths, data.manifest, ctx.device)
    mean, _ = encode(vae, data.train.images, ctx.device)
    _, cfg = load_snapshot(shapes_run / "models" / "ldm" / "model.safetensors")
    assert cfg["latent_scale"] == pytest.approx(1.0 / float(mean.double().std()), rel=1e-6)
    assert cfg["latent_scale"] > vae_cfg["latent_scale"]  # the means vary less than draws z ~ q(z|x)


def test_registered_text_ldm_takes_an_optional_prompt_column(shapes_run: Path) -> None:
    import mlflow
    import numpy as np
    import pandas as pd

    from genlab.data import sources

    mlflow.set_tracking_uri(f"sqlite:///{shapes_run / 'mlflow.db'}")
    version = max(int(v.version) for v in mlflow.MlflowClient().search_model_versions("name='genlab-ldm'"))
    model = mlflow.pyfunc.load_model(f"models:/genlab-ldm/{version}")
    s = load_file(str(shapes_run / "samples" / "ldm.safetensors"))
    pick = [0, 57, 143]
    inp = pd.DataFrame({"label": s["labels"][pick].numpy(), "seed": s["seeds"][pick].numpy()})
    # no prompt: the held-out phrasing chosen by each image's seed, so the sample stage's images come back
    np.testing.assert_allclose(model.predict(inp), s["images"][pick].numpy(), atol=1e-4)
    held = [sources.heldout_prompts("shapes", int(y), []) for y in inp["label"]]
    chosen = [h[int(sd) % len(h)] for h, sd in zip(held, inp["seed"], strict=True)]
    np.testing.assert_allclose(model.predict(inp.assign(prompt=chosen)), s["images"][pick].numpy(), atol=1e-4)
    # another prompt for the same (label, seed) is another image
    other = model.predict(inp.assign(prompt=["a big blue circle at the top left"] * 3))
    assert not np.allclose(other, s["images"][pick].numpy(), atol=1e-2)
