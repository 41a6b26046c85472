"""`genlab <stage>`: what dvc.yaml runs. Thin: parse arguments, validate params, call the stage."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from genlab.config import load_params
from genlab.device import resolve
from genlab.errors import GenlabError
from genlab.paths import Paths

# stage name -> the params sections its `run` takes (dvc.yaml lists the exact keys it reads)
STAGES = {
    "prepare": ("data",),
    "train_evaluator": ("evaluator",),
    "train_vae": ("vae",),
    "train_ldm": ("ldm",),
    "train_gan": ("gan",),
    "sample": ("sample", "ldm"),
    "evaluate": ("evaluate", "ldm"),
}


def run_stage(stage: str, params_path: Path = Path("params.yaml"), root: Path | None = None) -> object:
    """Validate the whole params file first (nothing is written on bad input), then run one stage."""
    params = load_params(params_path)
    from genlab.stages.common import Context

    ctx = Context(paths=Paths((root or Path.cwd()).resolve()), seed=params.seed, device=resolve(params.device))
    module = importlib.import_module(f"genlab.stages.{stage}")
    return module.run(*(getattr(params, section) for section in STAGES[stage]), ctx)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genlab", description=__doc__)
    parser.add_argument("stage", choices=sorted(STAGES), help="pipeline stage to run")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        run_stage(args.stage, args.params)
    except GenlabError as exc:
        print(f"genlab: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
