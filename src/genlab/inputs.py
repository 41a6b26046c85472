"""The upstream models a stage reads, checked when it starts: before it opens its MLflow run or trains, so a
missing or damaged evaluator is found in seconds, not after the VAE has trained for minutes.

Each check loads the snapshot the stage will use, through `checkpoint.load_network` (the one way a network is
rebuilt from a snapshot), and compares it with the prepared data. A failure is one line naming the file, what was
expected and the stage to run (`genlab.errors.GenlabError`, exit status 2).
"""

from __future__ import annotations

from pathlib import Path

import torch

from genlab.checkpoint import load_snapshot
from genlab.data.splits import evaluator_task
from genlab.errors import GenlabError
from genlab.metrics.fid import load_evaluator
from genlab.models.vae import VAE
from genlab.paths import Paths
from genlab.sampling import load_vae

STAGE_OF = {"evaluator": "train_evaluator", "vae": "train_vae", "ldm": "train_ldm", "pixel": "train_pixel",
            "gan": "train_gan"}


def snapshot_path(paths: Paths, name: str) -> Path:
    return paths.model(name) / "model.safetensors"


def evaluator(paths: Paths, manifest: dict) -> Path:
    """The evaluator snapshot (FID features, class accuracy), checked: an evaluator of the prepared data's image
    shape and attributes. Returns its path."""
    path = snapshot_path(paths, "evaluator")
    _, cfg = load_evaluator(path)
    heads = cfg["network"].get("num_classes", 10)
    found = (cfg["network"].get("in_channels", 1), cfg["image_size"], [heads] if isinstance(heads, int) else heads)
    c, s = manifest["image_shape"][:2]
    want = (c, s, evaluator_task(manifest)[1])
    if found != want:
        raise GenlabError(f"{path}: an evaluator of {describe(*found)}, expected one of {describe(*want)} (the "
                          f"prepared data's manifest.json); rerun `genlab {STAGE_OF['evaluator']}`")
    return path


def vae(paths: Paths, manifest: dict, device: torch.device) -> tuple[VAE, dict]:
    """The VAE (the latent space of `train_ldm`), checked: a VAE of the prepared data's image channels."""
    net, cfg = load_vae(paths.model("vae"), device)
    channels = cfg["network"].get("in_channels", 1)
    if channels != manifest["image_shape"][0]:
        raise GenlabError(f"{snapshot_path(paths, 'vae')}: a VAE of {channels}-channel images, expected "
                          f"{manifest['image_shape'][0]}-channel ones (the prepared data's manifest.json); "
                          f"rerun `genlab {STAGE_OF['vae']}`")
    return net, cfg


def snapshots(paths: Paths, names: tuple[str, ...]) -> None:
    """Each named model's snapshot is present and readable (a safetensors file with a genlab config)."""
    for name in names:
        load_snapshot(snapshot_path(paths, name), STAGE_OF[name])


def describe(channels: int, size: int, classes: list[int]) -> str:
    return f"{channels}-channel {size}x{size} images with attribute classes {list(classes)}"
