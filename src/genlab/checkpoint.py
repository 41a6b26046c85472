"""Two kinds of checkpoint, as in EDM: a *snapshot* (weights to sample from, safetensors) and a
*training state* (everything needed to resume: weights, optimizer, EMA, step, images seen).

The training state holds only tensors and plain numbers, so it loads with `weights_only=True`:
no pickle from disk is ever executed.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import safe_open, save

from genlab.errors import GenlabError
from genlab.paths import atomic_write


def save_snapshot(module: torch.nn.Module, path: Path, config: dict[str, Any] | None = None) -> None:
    """Weights (contiguous CPU tensors) with the config that rebuilds the network in the header."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    metadata = {"config": json.dumps(config or {}, sort_keys=True)}
    atomic_write(path, safetensors_bytes(state, metadata))


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """`safetensors.torch.save` with the header metadata in sorted key order: safetensors writes it from a hash
    map, in an order that changes from process to process, so equal content would not give equal bytes."""
    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the tensor data stays 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def rerun(stage: str | None, first: bool = False) -> str:
    """What to do about a missing or bad input: (re)run the stage that writes it."""
    cmd = f"`genlab {stage}`" if stage else "the stage that writes it"
    return f"run {cmd} first" if first else f"rerun {cmd}"


def read_safetensors(path: Path, what: str, stage: str | None = None, keys: tuple[str, ...] | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (only those of `keys` that exist, if given) and header metadata of a safetensors file. A
    missing, empty, truncated or corrupt file is refused with one line naming it, `what` it should be and the
    stage (`genlab <stage>`) that writes it. safe_open checks the whole file's layout, loaded tensors or not."""
    path = Path(path)
    if not path.is_file():
        raise GenlabError(f"{path}: {what} not found ({rerun(stage, first=True)})")
    if path.stat().st_size == 0:
        raise GenlabError(f"{path}: empty file (0 bytes), expected {what}; {rerun(stage)}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys() if keys is None or k in keys}  # noqa: SIM118
    except Exception as e:  # noqa: BLE001 (SafetensorError for a damaged file; others for bytes of another format)
        raise GenlabError(f"{path}: unreadable {what} ({first_line(e)}): truncated or corrupt; {rerun(stage)}") \
            from None
    return tensors, metadata


def load_snapshot(path: Path, stage: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and the config in the header. A missing, empty, truncated or corrupt file, or one without a
    valid genlab config in its header, is refused with one line naming the file."""
    state, metadata = read_safetensors(path, "snapshot", stage)
    if "config" not in metadata:
        raise GenlabError(f"{path}: not a genlab snapshot (no 'config' in its safetensors header); {rerun(stage)}")
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError as e:
        raise GenlabError(f"{path}: the snapshot's 'config' header is not valid JSON ({e}); {rerun(stage)}") \
            from None
    if not isinstance(config, dict):
        raise GenlabError(f"{path}: the snapshot's 'config' header is not a JSON object; {rerun(stage)}")
    return state, config


M = TypeVar("M", bound=torch.nn.Module)


def load_network(path: Path, build: Callable[..., M], what: str, stage: str | None = None,
                 keys: tuple[str, ...] = ()) -> tuple[M, dict[str, Any]]:
    """`build(**config["network"])` with the snapshot's weights loaded (CPU, train mode): the one way a network is
    rebuilt from a snapshot. A snapshot of another architecture or shape (e.g. a GAN where a VAE is expected),
    or one whose config lacks `keys`, is refused with one line naming the file and what was expected."""
    state, config = load_snapshot(path, stage)
    expected = f"expected {what} snapshot; {rerun(stage)}"
    network = config.get("network")
    if not isinstance(network, dict):
        raise GenlabError(f"{path}: no 'network' in the snapshot's config, {expected}")
    try:
        module = build(**network)
    except Exception as e:  # noqa: BLE001 (TypeError for another architecture's keys, others for bad values)
        raise GenlabError(f"{path}: its network config ({', '.join(sorted(network))}) does not build "
                          f"{what} ({first_line(e)}): {expected}") from None
    mismatch = state_mismatch(module.state_dict(), state)
    if mismatch:
        raise GenlabError(f"{path}: not {what} snapshot of this shape ({mismatch}); {rerun(stage)}")
    missing = [k for k in keys if k not in config]
    if missing:
        raise GenlabError(f"{path}: the snapshot's config lacks {', '.join(missing)}, {expected}")
    module.load_state_dict(state)
    return module, config


def state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """What differs between a network's state dict and a snapshot's tensors, in a few words ("" if nothing)."""
    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    shapes = [f"{k} {tuple(found[k].shape)} in the file, {tuple(expected[k].shape)} expected"
              for k in sorted(expected.keys() & found.keys()) if found[k].shape != expected[k].shape]
    parts = [f"missing keys {some(missing)}" if missing else "",
             f"unexpected keys {some(unexpected)}" if unexpected else "",
             f"shape of {some(shapes)}" if shapes else ""]
    return "; ".join(p for p in parts if p)


def save_train_state(state: dict[str, Any], path: Path) -> None:
    """Save `state` in a canonical form, so equal content gives equal bytes (see `canonical`)."""
    buffer = io.BytesIO()
    torch.save(canonical(state), buffer)
    atomic_write(path, buffer.getvalue())


def canonical(value: Any) -> Any:  # noqa: ANN401 (any nesting of containers)
    """A fresh copy of nested dicts/lists/tuples with every string interned and no container shared.

    The pickler memoises objects by identity: a state built in-process (where `"step"` is one interned
    string) and the same state after a resume (strings unpickled one by one) would otherwise pickle to
    different bytes for equal content."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, OrderedDict):  # a module's state_dict, with its version `_metadata`
        out = OrderedDict((canonical(k), canonical(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):
            out._metadata = canonical(value._metadata)  # type: ignore[attr-defined]
        return out
    if isinstance(value, dict):
        return {canonical(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, tuple):
        return tuple(canonical(v) for v in value)
    return value


def load_train_state(path: Path) -> dict[str, Any]:
    """A training state, loaded with `weights_only=True`: a file holding anything but tensors and plain
    containers (e.g. a pickle that would run code) is refused, never executed; a truncated or corrupt one
    is refused too. Either way one line names the file and what to do."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise GenlabError(f"{path}: refused: it holds Python objects, not only tensors and plain containers (a "
                          "pickle that could run code); nothing in it was run. Delete it to start the stage afresh"
                          ) from e
    except Exception as e:  # noqa: BLE001 (torch raises RuntimeError, EOFError, ... for a damaged archive)
        raise GenlabError(f"{path}: unreadable training state ({type(e).__name__}: {first_line(e)}): truncated or "
                          "corrupt; delete it to start the stage afresh") from None
    if not isinstance(state, dict) or "step" not in state:
        raise GenlabError(f"{path}: not a genlab training state (expected a dict with a 'step'); delete it")
    return state


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, without terminal colour codes, at most 200 characters."""
    return (re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines() or [""])[0][:200]
