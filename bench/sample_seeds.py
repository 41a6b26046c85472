"""A trained pipeline's diffusion models over several sample seeds: FID/floor, class accuracy and data copying, the
mean and the spread.

One FID of 360 samples carries about +-15% noise, so the claim on the default pipeline (issue 11: the LDM at
<= 1.1x the data floor with >= 99% class accuracy, no sign of copying) is read from the mean over sample sets.
Each set samples the family as its sample stage does (params.yaml's sampling settings, per-image seeded noise,
sample.n_per_class images of each class); the first set uses the sample stage's own seeds, the others fresh ones.
Each set is scored as `evaluate` scores it (bench/diffusers_vs_genlab.score).

    .venv/bin/python bench/sample_seeds.py --project . --sets 3 --families ldm,pixel
Prints a markdown table and writes JSON to --out (bench/results/sample_seeds.json).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from diffusers_vs_genlab import SPREAD, Bench, make_bench, score_sets, summarize_sets, write_json  # noqa: E402

from genlab.config import load_params  # noqa: E402
from genlab.device import describe  # noqa: E402
from genlab.memory import fix_mmap_threshold, set_steps_threshold  # noqa: E402
from genlab.sampling import DiffusionSampler, generate, image_seeds  # noqa: E402
from genlab.stages.sample import diffusion_settings  # noqa: E402

log = logging.getLogger("bench")


def family_sets(bench: Bench, family: str, sets: int) -> list[dict[str, Any]]:
    """`sets` sample sets of `family` scored: the sample stage's seeds first, then image_seeds(seed, f"{family}-k")."""
    paths, params = bench.paths, bench.params
    cfg = params.ldm if family == "ldm" else params.pixel
    sampler = DiffusionSampler(paths.model(family), paths.model("vae") if family == "ldm" else None, bench.device)
    seed_sets = [image_seeds(params.sample.seed, family if k == 0 else f"{family}-{k}", len(bench.labels))
                 for k in range(sets)]
    rows = score_sets(replace(bench, seed_sets=seed_sets), lambda labels, seeds: generate(
        sampler, labels, seeds, params.sample.batch_size, **diffusion_settings(cfg)), bench.grids / f"{family}.png")
    for k, m in enumerate(rows):
        log.info("%s set %d: FID/floor %.3f, accuracy %.4f, Z_U %.2f", family, k, m["fid_ratio"],
                 m["class_accuracy"], m["copy_z"])
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The diffusers bench's summary of sample sets, with the standard deviation of the headline numbers."""
    sd = {f"{k}_sd": statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0 for k in SPREAD}
    return {**summarize_sets(rows), **sd}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, default=Path("."), help="a genlab project where `dvc repro` has run")
    p.add_argument("--sets", type=int, default=3, help="sample sets per family (>= 2 for a spread)")
    p.add_argument("--families", default="ldm", help="comma-separated: ldm, pixel")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=Path("bench/results/sample_seeds.json"), help="JSON results")
    args = p.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if args.sets < 1 or not set(families) <= {"ldm", "pixel"}:
        p.error("--sets must be >= 1 and --families some of ldm, pixel")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    fix_mmap_threshold()  # as a stage process (genlab.cli.main)
    n_per_class = load_params(args.project / "params.yaml").sample.n_per_class  # the sample stages' request
    bench = make_bench(argparse.Namespace(project=args.project, device="auto", n_per_class=n_per_class,
                                          sample_seeds=1, seconds=1.0, every=1.0, steps=1, threads=args.threads,
                                          out=args.out))
    set_steps_threshold(bench.train.images.shape[-1])
    results = {f: {"per_set": (rows := family_sets(bench, f, args.sets)), **summary(rows)} for f in families}
    cols = ["sets", "fid_ratio", "fid_ratio_sd", "fid_ratio_min", "fid_ratio_max", "pixel_fid_ratio", "class_accuracy",
            "class_accuracy_min", "copy_z", "copy_z_min", "nn_ratio"]
    print(pd.DataFrame({f: {c: r[c] for c in cols} for f, r in results.items()}).T.to_markdown(floatfmt=".3g"))
    out = {"project": str(args.project.resolve()), "device": describe(bench.device), "floor": bench.floor,
           "feature_extractor": bench.extractor.note,
           "sample_seed": bench.params.sample.seed, "families": results}
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
