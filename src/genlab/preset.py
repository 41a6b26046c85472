"""Presets: whole params sets for a data set and an image size (`src/genlab/presets/<name>.yaml`).

`genlab preset NAME` validates the preset and writes it over params.yaml (atomically); `dvc repro` then runs
what the change touches. `git diff params.yaml` shows what switched; `git checkout params.yaml` switches back.
"""

from __future__ import annotations

from pathlib import Path

from genlab.config import load_params
from genlab.errors import GenlabError
from genlab.paths import atomic_write

DIR = Path(__file__).parent / "presets"
PRESETS = ("mnist", "cifar10", "folder64", "shapes")


def path_of(name: str) -> Path:
    if name not in PRESETS:
        raise GenlabError(f"preset {name!r}: expected one of {', '.join(PRESETS)}")
    return DIR / f"{name}.yaml"


def apply(name: str, params_path: Path = Path("params.yaml")) -> str:
    """Write preset `name` to `params_path`; returns a one-line summary of what it now says."""
    source = path_of(name)
    params = load_params(source)  # a preset is validated like any params file before it replaces one
    atomic_write(params_path, source.read_text())
    d = params.data
    if d.path:
        where, then = f"data.path {d.path}", f"put the data at {d.path} (`dvc add` it), then `dvc repro`"
    else:  # a built-in source: nothing to put in place
        where, then = "built in", "`dvc repro`"
    return (f"{params_path}: preset {name} (data.source {d.source}, {where}, {d.image_size} px, "
            f"{d.channels or 'native'} channel(s)); {then}")
