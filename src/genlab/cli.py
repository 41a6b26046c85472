"""`genlab <stage>` (what dvc.yaml runs), `genlab compare`, `genlab preset` and `genlab synth`. Thin: parse,
validate, call."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from genlab.config import FAMILIES, TRAINING_SECTIONS, load_params
from genlab.cpu_wait import choose_wait_policy
from genlab.errors import ConfigError, GenlabError, StageFailed
from genlab.memory import fix_mmap_threshold, set_steps_threshold, skip_gpu_compiler
from genlab.paths import Paths
from genlab.preflight import check_tracking

# stage name -> the params sections its `run` takes (dvc.yaml lists the exact keys it reads)
STAGES = {
    "prepare": ("data",),
    "train_evaluator": ("evaluator",),
    "train_vae": ("vae",),
    "train_ldm": ("ldm",),
    "train_pixel": ("pixel",),
    "train_gan": ("gan",),
    "sample": ("sample", "ldm", "pixel"),
    "guidance_sweep": ("sample", "ldm", "evaluate"),
    "reference_stats": ("evaluate",),
    "evaluate": ("evaluate", "ldm", "pixel"),
}


TRAINING = tuple(f"train_{section}" for section in TRAINING_SECTIONS)  # the stages torchrun can run


def run_stage(stage: str, params_path: Path = Path("params.yaml"), root: Path | None = None,
              family: str | None = None) -> object:
    """Validate the whole params file first (nothing is written on bad input), then run one stage: a training
    stage with `dist.nproc_per_node` > 1 under torchrun, unless this process is already one of its ranks."""
    params = load_params(params_path)
    set_steps_threshold(params.data.image_size)
    check_tracking((root or Path.cwd()).resolve())  # MLflow down: stop before importing torch, in seconds
    choose_wait_policy()  # before torch loads libgomp; the stage's MLflow run records the policy in force
    if stage in TRAINING and params.dist.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        return launch(stage, params_path, params.dist.nproc_per_node)
    from genlab.compute import configure, resolve_precision
    from genlab.device import resolve
    from genlab.distributed import join, leave
    from genlab.randomness import deterministic, seed_process
    from genlab.stages.common import Context

    world, device = join(resolve(params.device))
    try:
        if world.size > 1:
            check_world_size(params, world.size)
        compute = resolve_precision(device, params.compute_for(STAGES[stage][0]) if stage in TRAINING
                                    else params.compute)
        ctx = Context(paths=Paths((root or Path.cwd()).resolve()), seed=params.seed, device=device, world=world,
                      compute=compute)
        seed_process(params.seed, stage)  # nothing may depend on the process's default seed
        deterministic(ctx.device)
        configure(ctx.device, compute)
        module = importlib.import_module(f"genlab.stages.{stage}")
        extra = (family,) if stage == "sample" else ()  # one family per sample stage
        return module.run(*(getattr(params, section) for section in STAGES[stage]), ctx, *extra)
    finally:
        leave(world)


def check_world_size(params: object, size: int) -> None:
    """Under torchrun (`--nnodes` included): every global batch splits over the ranks, or one line, exit 2."""
    from genlab.config import check_world

    try:
        check_world(params, size)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(f"params: {e}") from None


def launch(stage: str, params_path: Path, nproc: int) -> None:
    """`stage` as `torchrun --standalone --nproc-per-node nproc` would run it (torch's elastic launcher, in this
    process); a failed rank, whose own error is printed above, fails the stage with that rank's exit status (the
    launcher stops the others)."""
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # each rank's CPU threads: the cores shared out (torchrun's CLI would set 1), unless the user set it
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=1)
    logging.getLogger("genlab").info("%s: %d processes (torchrun --standalone --nproc-per-node %d)", stage, nproc,
                                     nproc)
    try:
        elastic_launch(config, sys.executable)("-m", "genlab.cli", stage, "--params", str(params_path))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise StageFailed(f"{stage}: rank {rank} of {nproc} failed (exit {failure.exitcode}); its error is above",
                          failure.exitcode) from None


def run_compare(args: argparse.Namespace) -> None:
    from genlab.compare import compare, render

    df = compare(Path.cwd(), args.experiment, args.family, args.data_hash, args.sort, args.descending, args.limit)
    print(render(df, args.format))


def run_preset(args: argparse.Namespace) -> None:
    from genlab.preset import apply

    print(apply(args.name, args.params))


def run_generate(args: argparse.Namespace) -> None:
    from genlab.generate import generate

    print(generate(args.model, args.n, args.seed, args.out, label=args.label, prompt=args.prompt,
                   guidance=args.guidance, steps=args.steps))


def run_synth(args: argparse.Namespace) -> None:
    from genlab.data import synthetic

    synthetic.write(args.format, args.out, args.count, args.size, args.seed, args.classes)
    print(f"wrote {args.count} synthetic {args.format} images to {args.out}")


def parser() -> argparse.ArgumentParser:
    from genlab.preset import PRESETS  # no torch: `genlab <stage>` imports it after its checks

    p = argparse.ArgumentParser(prog="genlab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="{stage,compare,preset,synth}")
    for stage in STAGES:
        s = sub.add_parser(stage, help=f"run the {stage} stage")
        if stage == "sample":
            s.add_argument("family", choices=FAMILIES, help="the model family to sample")
        s.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
        s.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    c = sub.add_parser("compare", help="models across MLflow runs and experiments, as one table")
    c.add_argument("--experiment", action="append", help="experiment name (repeatable; default: genlab)")
    c.add_argument("--family", choices=("vae", "ldm", "pixel", "gan"), help="only this model family")
    c.add_argument("--data-hash", help="only runs on data whose hash starts with this")
    c.add_argument("--sort", default="fid", help="column to sort by (default: %(default)s)")
    c.add_argument("--descending", action="store_true", help="sort descending")
    c.add_argument("--limit", type=int, help="at most this many rows")
    c.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    s = sub.add_parser("preset", help="switch params.yaml to a preset's whole params set (presets/NAME.yaml)")
    s.add_argument("name", choices=PRESETS)
    s.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    g = sub.add_parser("generate", help="images from a registered model (MLflow) as a grid PNG")
    g.add_argument("--model", default="models:/genlab-ldm@champion",
                   help="MLflow model URI, from MLFLOW_TRACKING_URI's registry (default: %(default)s)")
    g.add_argument("--label", type=int, help="class to draw (default: 0, or ignored with --prompt)")
    g.add_argument("--prompt", help="text prompt (text-conditional diffusion models)")
    g.add_argument("-n", type=int, default=16, help="images (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="image i gets seed SEED + i (default: %(default)s)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    g.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    g.add_argument("-o", "--out", type=Path, default=Path("grid.png"), help="PNG to write (default: %(default)s)")
    s = sub.add_parser("synth", help="write a synthetic data set in one of the formats genlab reads")
    s.add_argument("format", help="image_folder | image_folder_flat | mnist | cifar10 | npz")
    s.add_argument("out", type=Path, help="directory to write (npz: DIR/data.npz)")
    s.add_argument("--count", type=int, default=1000, help="images (default: %(default)s)")
    s.add_argument("--size", type=int, default=64, help="image side, image_folder and npz (default: %(default)s)")
    s.add_argument("--classes", type=int, default=10, help="classes, image_folder and npz (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    fix_mmap_threshold()  # before any large allocation: memory stays flat over a streaming pass
    skip_gpu_compiler()  # before torch is imported
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        if args.command == "compare":
            run_compare(args)
        elif args.command in ("preset", "synth", "generate"):
            {"preset": run_preset, "synth": run_synth, "generate": run_generate}[args.command](args)
        else:
            run_stage(args.command, args.params, family=getattr(args, "family", None))
    except GenlabError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"genlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the disk, not the input: e.g. ENOSPC while writing an output
        if getattr(args, "debug", False) or exc.filename is None:
            raise
        print(f"genlab: error: {args.command}: {exc.filename}: {exc.strerror}; previous outputs are intact",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
