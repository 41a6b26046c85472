"""Two kinds of checkpoint, as in EDM: a *snapshot* (weights to sample from, safetensors) and a
*training state* (everything needed to resume: weights, optimizer, EMA, step, images seen).

The training state holds only tensors and plain numbers, so it loads with `weights_only=True`:
no pickle from disk is ever executed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save

from genlab.errors import GenlabError
from genlab.paths import atomic_write


def save_snapshot(module: torch.nn.Module, path: Path, config: dict[str, Any] | None = None) -> None:
    """Weights (contiguous CPU tensors) with the config that rebuilds the network in the header."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    metadata = {"config": json.dumps(config or {}, sort_keys=True)}
    atomic_write(path, save(state, metadata=metadata))


def load_snapshot(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise GenlabError(f"{path}: snapshot not found (run the stage that writes it first)")
    with safe_open(str(path), framework="pt") as f:
        config = json.loads((f.metadata() or {}).get("config", "{}"))
    return load_file(str(path)), config


def save_train_state(state: dict[str, Any], path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def load_train_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
