"""Memory and throughput of `prepare` on 100,000 64x64 RGB images, and of training on what it wrote.

The claims measured:
  1. `genlab prepare` of an image folder of 100,000 64x64 RGB PNGs, then `genlab train_evaluator`,
     `train_vae`, `train_ldm` and `train_gan` for one step each on the prepared data, each run with peak RSS
     <= 1.5 GB (the float32 images alone would be 4.9 GB; the uint8 ones 1.2 GB), with the `folder64` preset's
     params (its batch sizes: a step's activations, not the data, set what a stage holds). One step, but each
     stage's whole-split work runs in full: train_vae's latent statistics over every train image and its FIDs against
     the train split, train_ldm's latents of every train image (a 0.8 GB cache file), train_gan's FID curve
     point (200 samples against the 98,000 train images: their features and k-NN radii);
  2. prepare's throughput (images/s, the whole stage: decode, resize, split, hash, write) next to plain PIL
     decoding of the same files (Image.open + convert("RGB") + np.asarray, one process), measured in this run.

Data: 100,000 PNGs in 10 class folders, written once into --work (kept for the next run): class c is a shape in
a colour (genlab.data.synthetic) on a noisy background (Gaussian, std 24 grey levels), so the files are the size of
photos of that size (about 10 KB), not of flat synthetic images (about 0.5 KB) that decode unrealistically fast.

Each stage runs as `genlab <stage>` in its own process (as `dvc repro` runs it); its peak RSS is the process's own
high-water mark (VmHWM), printed by a wrapper when it exits. The same stages also run on --n-small images: a peak
that does not grow with the data is the point. The PIL baseline and prepare both read the files from the page
cache (the baseline runs first and warms it), so neither pays for the disk.

    .venv/bin/python bench/prepare_memory.py --work /tmp/genlab-bench-100k
Prints a markdown table and writes JSON to --out (bench/results/prepare_memory.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LIMIT_GB = 1.5
STAGES = ("prepare", "train_evaluator", "train_vae", "train_ldm", "train_gan")
# VmHWM (/proc/self/status): the peak RSS of this process's own address space, which exec starts afresh.
# Not ru_maxrss: Linux carries the parent's high-water mark into a forked child's ru_maxrss, so a child of this
# bench (whose data generation peaks near 2 GB) would report the bench's peak, not its own.
WRAPPER = """
import re, runpy, sys
sys.argv = ["genlab", *sys.argv[1:]]
try:
    runpy.run_module("genlab.cli", run_name="__main__")
finally:
    hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
    print(f"GENLAB_BENCH_MAXRSS_KB {hwm}", file=sys.stderr)
"""


def write_data(root: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """n PNGs in 10 class folders (written once; a marker file records a finished set)."""
    from genlab.data import synthetic

    marker = root / f".complete-{n}-{size}"
    if not marker.is_file():
        rng = np.random.default_rng(seed)
        base, labels = synthetic.draw(1000, size, seed)
        t0 = time.perf_counter()
        for i in range(n):
            img = base[i % 1000].astype(np.int16) + rng.normal(0, 24, (size, size, 3)).astype(np.int16)
            folder = root / f"class_{labels[i % 1000]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB").save(folder / f"{i:06d}.png")
            if i % 10000 == 9999:
                print(f"wrote {i + 1} images ({time.perf_counter() - t0:.0f} s)", flush=True)
        marker.write_text("ok\n")
    return sorted(root.glob("class_*/*.png"))


def pil_decode(files: list[Path]) -> float:
    """Seconds to decode every file with plain PIL, as RGB arrays."""
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as img:
            np.asarray(img.convert("RGB"))
    return time.perf_counter() - t0


def run_stage(project: Path, stage: str, env: dict[str, str]) -> dict:
    """`genlab <stage>` in its own process: wall seconds and peak RSS (its own VmHWM), in GB (10^9 bytes, the
    limit's unit) and GiB."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, stage], cwd=project, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"genlab {stage} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    kb = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("GENLAB_BENCH_MAXRSS_KB"))
    (project / f"{stage}.log").write_text(proc.stderr)  # the stage's own log, for a look at a peak
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(kb * 1024 / 1e9, 3),
            "peak_rss_gib": round(kb / 1024**2, 3)}


def project_params(data_dir: Path, size: int) -> dict:
    """The `folder64` preset (genlab's params for 64 px RGB folders) on `data_dir`, one step per training stage."""
    params = yaml.safe_load((REPO / "src" / "genlab" / "presets" / "folder64.yaml").read_text())
    params["device"] = "cpu"
    params["data"].update(source="image_folder", path=str(data_dir), image_size=size, channels=3,
                          val_fraction=0.01, test_fraction=0.01)
    for section in ("evaluator", "vae", "ldm", "gan"):  # one step at the preset's batch size
        b = params[section]["batch_size"]
        params[section].update(train_images=b, log_every_images=b, checkpoint_every_images=b)
    params["vae"].update(ae_baseline=False, kl_warmup_images=0)
    params["ldm"].update(fid_every_images=10**9)
    params["gan"].update(fid_every_images=params["gan"]["batch_size"])  # one cheap FID: 200 samples vs the train split
    return params


def stages(work: Path, images: Path, size: int, env: dict[str, str]) -> dict[str, dict]:
    """prepare, then one step of each training stage in STAGES, each in its own process, in a project under
    `work` reading `images`."""
    project = work / "project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(project_params(images, size)))
    rows = {}
    for stage in STAGES:
        rows[stage] = run_stage(project, stage, {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"})
        print(work.name, stage, rows[stage], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/genlab-bench-100k"))
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--n-small", type=int, default=10_000, help="the same stages on this many: memory vs data size")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prepare_memory.json")
    args = ap.parse_args()

    env = {**os.environ, "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO / "src")}
    files = write_data(args.work / "images", args.n, args.size)
    small = write_data(args.work / f"images-{args.n_small}", args.n_small, args.size)
    pil_decode(files[: min(len(files), 5000)])  # warm the page cache and PIL's imports, untimed
    pil_s = pil_decode(files)
    big = stages(args.work / f"run-{args.n}", args.work / "images", args.size, env)
    little = stages(args.work / f"run-{args.n_small}", args.work / f"images-{args.n_small}", args.size, env)
    prep = big["prepare"]
    result = {
        "images": len(files), "image_size": args.size, "files_bytes": sum(f.stat().st_size for f in files),
        "pil_decode": {"seconds": round(pil_s, 1), "images_per_second": round(len(files) / pil_s)},
        "prepare_images_per_second": round(len(files) / prep["seconds"]),
        "stages": {str(len(files)): big, str(len(small)): little}, "limit_gb": LIMIT_GB,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()[0]},
    }
    result["prepare_vs_pil_throughput"] = round(result["prepare_images_per_second"] / (len(files) / pil_s), 3)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n| stage | {len(files):,} images: seconds | peak RSS (GB) | {len(small):,} images: seconds | "
          "peak RSS (GB) |\n|---|---:|---:|---:|---:|")
    for stage in big:
        print(f"| {stage} | {big[stage]['seconds']} | {big[stage]['peak_rss_gb']} | {little[stage]['seconds']} | "
              f"{little[stage]['peak_rss_gb']} |")
    print(f"\nPIL decode of the {len(files):,} files: {result['pil_decode']['images_per_second']} images/s; genlab "
          f"prepare (the whole stage): {result['prepare_images_per_second']} images/s = "
          f"{result['prepare_vs_pil_throughput']:.2f}x")
    for stage, r in big.items():
        print(f"{stage}: peak RSS {r['peak_rss_gb']} GB vs limit {LIMIT_GB} GB: "
              f"{'PASS' if r['peak_rss_gb'] <= LIMIT_GB else 'FAIL'}")


if __name__ == "__main__":
    main()
