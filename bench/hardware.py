"""genlab against the hardware: training-step throughput and achieved FLOP/s as a share of a large matmul's, sampling
throughput, peak memory, and what DVC and Prefect add to a run.

Every training step is built by its stage's own builder (`build_step` in genlab.stages.train_evaluator, train_vae,
diffusion_training and train_gan) with the default params, on random data of the default shapes (1x16x16 images,
10 classes; 4x8x8 latents): the stage's code, not a copy. Its FLOPs are counted once with torch's FlopCounterMode
(forward and backward matmuls, convolutions and attention; elementwise ops are not counted, so the fraction is a
lower bound), then it is timed for --seconds. The reference is a large matmul on the same device, dtype and
threads, timed in the same run: "% of matmul" is the fraction of what this device does at its most regular work.

Sampling: DDIM with the default LDM's U-Net at 25 and 50 steps, guided (scale 1.25: two U-Net passes per step)
and unguided, on a batch of --sample-batch latents, then the VAE's decoder on them (images/s).

With --project (a project where `dvc repro` has run): the orchestration overhead, measured on that project:
`genlab train_evaluator` run directly, through `dvc repro --force --single-item`, and the Prefect flow over the
up-to-date pipeline (what the flow adds to a run: its server, its tasks, DVC's checks), and a no-op `dvc repro`;
with --rounds N, the direct and DVC runs take turns N times (ABBA) and the overhead is their differences' median.

Usage: .venv/bin/python bench/hardware.py [--device auto] [--seconds 8] [--project PATH] [--bf16 vae,gan]
       [--compile latent_unet] [--compile-bf16 latent_unet] [--channels-last evaluator]
       [--bf16-channels-last evaluator] [--batch latent_unet=64] [--rounds 3]
Results: bench/results/hardware.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from genlab.config import Params
from genlab.device import describe, resolve
from genlab.diffusion.sample import ddim_sample, ddim_timesteps, guided
from genlab.distributed import World
from genlab.memory import fix_mmap_threshold, heap_for_steps
from genlab.paths import Paths
from genlab.randomness import batch_indices, generator
from genlab.stages import diffusion_training, train_evaluator, train_gan, train_vae
from genlab.stages.common import Context

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.hardware")
N_TRAIN, SIDE, CLASSES = 2048, 16, 10


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    """FLOP/s of an n x n matmul (n = 2048 on CPU, 8192 on CUDA), the median of repeated runs."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def step_flops(step: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


@heap_for_steps()  # as `training.train` runs its steps (genlab.memory)
def time_steps(step: Callable[[], object], device: torch.device, seconds: float) -> list[float]:
    for _ in range(2):  # warm-up: allocator, kernel selection
        step()
    sync(device)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def workloads(params: Params, ctx: Context) -> dict[str, tuple[int, Callable[[], object]]]:
    """name -> (batch size, one training step of that stage on random data), each from its stage's builder."""
    g = torch.Generator().manual_seed(0)
    x_all = torch.rand(N_TRAIN, 1, SIDE, SIDE, generator=g) * 2 - 1
    labels = torch.arange(N_TRAIN) % CLASSES
    latents = torch.randn(N_TRAIN, 4, 8, 8, generator=g)
    vae_net = train_vae.vae_network(params.vae, 1, SIDE)
    built = {
        "evaluator": (params.evaluator.batch_size,
                      train_evaluator.build_step(params.evaluator, ctx, 1, [CLASSES], x_all, labels[:, None])),
        "vae": (params.vae.batch_size, train_vae.build_step(params.vae, ctx, vae_net, x_all, plain=False)),
        "latent_unet": (params.ldm.batch_size, diffusion_training.build_step(
            "train_ldm", params.ldm, ctx, [4, 8, 8], CLASSES, "digits", [], lambda idx, _g: latents[idx], labels)),
        "pixel_unet": (params.pixel.batch_size, diffusion_training.build_step(
            "train_pixel", params.pixel, ctx, [1, SIDE, SIDE], CLASSES, "digits", [], lambda idx, _g: x_all[idx],
            labels)),
        "gan": (params.gan.batch_size, train_gan.build_step(params.gan, ctx, 1, SIDE, CLASSES, x_all, labels)),
    }
    out = {}
    for name, (batch, b) in built.items():
        def step(b=b, batch=batch) -> object:  # noqa: ANN001 (bound per workload)
            k = b.trainable.step
            losses = b.step(batch_indices(0, k, N_TRAIN, batch), generator(0, "bench", k))
            b.trainable.step += 1
            return losses
        out[name] = (batch, step)
    return out


VARIANTS = {"compiled": {"compile": True}, "bf16": {"precision": "bf16"},
            "compiled bf16": {"compile": True, "precision": "bf16"},
            "channels_last": {"memory_format": "channels_last"},
            "bf16 channels_last": {"precision": "bf16", "memory_format": "channels_last"}}  # row suffix -> compute
BF16_VARIANTS = {v for v, c in VARIANTS.items() if c.get("precision") == "bf16"}  # read against the bf16 matmul
SECTIONS = {"evaluator": "evaluator", "vae": "vae", "latent_unet": "ldm", "pixel_unet": "pixel", "gan": "gan"}


def with_batch(params: Params, name: str, batch: int) -> Params:
    """`params` with workload `name`'s section at another batch size (the `--batch` rows)."""
    section = SECTIONS[name]
    return params.model_copy(update={section: getattr(params, section).model_copy(update={"batch_size": batch})})


def train_rows(params: Params, ctx: Context, seconds: float, peaks: dict[str, float],
               variants: dict[str, tuple[str, ...]] | None = None,
               batches: dict[str, int] | None = None, rounds: int = 1) -> dict[str, dict[str, float]]:
    """A row per workload, against `peaks["fp32"]`; for each workload named in `variants[v]` also "<name> (v)": the
    same step with VARIANTS[v]'s compute params, e.g. under `compute.compile` (compile time: the first two steps,
    `warmup_s`) or bf16 autocast (against `peaks["bf16"]`, a bf16 matmul's). FLOPs are the eager fp32 step's:
    FlopCounterMode does not see inside compiled kernels, and autocast changes no op's count. For each workload in
    `batches` also "<name> (batch B)": the same step at another batch size, with its own FLOP count. With `rounds`
    > 1 the rows take turns, `seconds / rounds` each per round, so a machine whose speed drifts moves every row alike
    and their ratios hold (one after another, the same step read 0.95x and 1.15x in two runs)."""
    rows = {}
    proc = psutil.Process()
    built = {"": workloads(params, ctx)}
    for v, names in (variants or {}).items():
        if names:
            built[v] = workloads(params, replace(ctx, compute=params.compute.model_copy(update=VARIANTS[v])))
    for name, b in (batches or {}).items():
        built[f"batch {b}"] = {name: workloads(with_batch(params, name, b), ctx)[name]}
    eager_flops: dict[tuple[str, int], int] = {}  # (workload, batch) -> its eager fp32 step's FLOPs
    runs = [(name, "", step) for name, (_, step) in built[""].items()]
    runs += [(name, v, built[v][name][1]) for v, names in (variants or {}).items() for name in names]
    runs += [(name, f"batch {b}", built[f"batch {b}"][name][1]) for name, b in (batches or {}).items()]
    times: dict[str, list[float]] = {}
    first: dict[str, dict[str, float]] = {}  # what the first round measures: warm-up, flops, memory
    for r in range(rounds):  # rounds > 1: every row timed in turn, `seconds / rounds` at a time (drift hits all)
        for base, v, step in runs:
            name = f"{base} ({v})" if v else base
            batch = built[v or ""][base][0]
            if r == 0:
                if ctx.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(ctx.device)
                flops = eager_flops[base, batch] if v in VARIANTS else eager_flops.setdefault(
                    (base, batch), step_flops(step))
            t0 = time.perf_counter()
            times.setdefault(name, []).extend(ts := time_steps(step, ctx.device, seconds / rounds))
            if r == 0:
                first[name] = {"batch": batch, "flops": flops, "warmup_s": time.perf_counter() - t0 - sum(ts),
                               "bf16": v in BF16_VARIANTS}
                if ctx.device.type == "cuda":  # this workload's peak; on CPU the process's RSS so far (the
                    first[name]["peak_allocated_gb"] = torch.cuda.max_memory_allocated(ctx.device) / 1024**3
                else:  # stages' own per-process peaks are bench/prepare_memory.py's)
                    first[name]["process_rss_gb"] = proc.memory_info().rss / 1024**3
    for name, f in first.items():
        med, batch, flops = statistics.median(times[name]), f["batch"], f["flops"]
        peak = peaks["bf16" if f["bf16"] else "fp32"]
        rows[name] = {"batch": batch, "images_per_s": round(batch / med, 1), "step_ms": round(1000 * med, 2),
                      "gflop_per_step": round(flops / 1e9, 3), "achieved_gflops": round(flops / med / 1e9, 2),
                      "pct_of_matmul": round(100 * flops / med / peak, 1), "warmup_s": round(f["warmup_s"], 1)}
        if f["bf16"]:
            rows[name]["matmul_dtype"] = "bf16"
        for key in ("peak_allocated_gb", "process_rss_gb"):
            if key in f:
                rows[name][key] = round(f[key], 3)
        log.info("train %s: %s", name, rows[name])
    return rows


@torch.no_grad()
def sampling_rows(params: Params, ctx: Context, batch: int) -> dict[str, dict[str, float]]:
    """DDIM latents/s with the default LDM's U-Net (class-conditioned), guided and not, and decoded images/s."""
    unet = diffusion_training.build_step("train_ldm", params.ldm, ctx, [4, 8, 8], CLASSES, "digits", [],
                                         lambda idx, _g: idx, torch.zeros(1, dtype=torch.long)).ema.eval()
    vae_net = train_vae.vae_network(params.vae, 1, SIDE)
    vae = train_vae.build_step(params.vae, ctx, vae_net, torch.zeros(1, 1, SIDE, SIDE), False).trainable.modules["vae"]
    vae.eval()
    from genlab.diffusion.schedules import alpha_bar

    ab = alpha_bar(params.ldm.timesteps, params.ldm.schedule)
    y = (torch.arange(batch) % CLASSES).to(ctx.device)
    noise = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(1)).to(ctx.device)
    rows = {}
    for steps in (25, 50):
        for scale in (1.0, params.ldm.guidance_scale):
            denoise = guided(unet, y, CLASSES, scale)
            sync(ctx.device)
            t0 = time.perf_counter()
            z = ddim_sample(denoise, noise, ab, ddim_timesteps(params.ldm.timesteps, steps))
            sync(ctx.device)
            t1 = time.perf_counter()
            vae.decode(z)
            sync(ctx.device)
            t2 = time.perf_counter()
            key = f"ddim{steps}_{'guided' if scale != 1.0 else 'unguided'}"
            rows[key] = {"batch": batch, "latents_per_s": round(batch / (t1 - t0), 1),
                         "decoded_images_per_s": round(batch / (t2 - t0), 1), "guidance_scale": scale}
            log.info("sample %s: %s", key, rows[key])
    return rows


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def orchestration(project: Path, rounds: int = 1) -> dict[str, Any]:
    """One stage directly and through DVC, the Prefect flow's cost on the up-to-date pipeline, a no-op `dvc repro`.

    DVC's overhead is a few seconds around a stage that takes tens, and one pair of runs on a drifting machine read
    -2.8% and +6.3%: with `rounds` > 1 the two take turns (ABBA: direct first in rounds 1, 3, ..., DVC first in
    rounds 2, 4, ..., as the log numbers them), and the overhead is the median of the rounds' differences, with their
    range. The no-op `dvc repro` is timed `rounds` + 2 times (median and range)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    noop = [timed(["dvc", "repro"], project, env) for _ in range(rounds + 2)]
    direct_cmd = ["genlab", "train_evaluator"]
    dvc_cmd = ["dvc", "repro", "--force", "--single-item", "train_evaluator"]
    direct, via_dvc = [], []
    for r in range(rounds):
        for cmd in (direct_cmd, dvc_cmd) if r % 2 == 0 else (dvc_cmd, direct_cmd):
            (direct if cmd is direct_cmd else via_dvc).append(timed(cmd, project, env))
        log.info("orchestration round %d: direct %.2f s, through DVC %.2f s", r + 1, direct[-1], via_dvc[-1])
    diffs = [d - t for d, t in zip(via_dvc, direct, strict=True)]
    out: dict[str, Any] = {
        "rounds": rounds, "noop_dvc_repro_s": statistics.median(noop), "noop_dvc_repro_range_s": [min(noop), max(noop)],
        "direct_train_evaluator_s": statistics.median(direct), "dvc_train_evaluator_s": statistics.median(via_dvc),
        "dvc_overhead_s": statistics.median(diffs), "dvc_overhead_range_s": [min(diffs), max(diffs)]}
    out["dvc_overhead_pct"] = 100 * out["dvc_overhead_s"] / out["direct_train_evaluator_s"]
    out["prefect_flow_up_to_date_s"] = timed([str(bin_dir / "python"), str(project / "flows" / "pipeline.py")],
                                             project, env)
    lock = project / "dvc.lock"
    metrics = [json.loads(p.read_text()) for p in (project / "metrics").glob("*.json")]
    stage_seconds = sum(float(m.get("train_seconds", 0) or 0) for m in metrics)
    out["pipeline_train_seconds"] = stage_seconds
    if stage_seconds:
        out["prefect_overhead_pct_of_training"] = 100 * out["prefect_flow_up_to_date_s"] / stage_seconds
    out["dvc_lock_present"] = lock.is_file()
    return {k: rounded(v) for k, v in out.items()}


def rounded(v: Any) -> Any:  # noqa: ANN401 (a result value: float, list of floats or anything else)
    if isinstance(v, float):
        return round(v, 2)
    return [rounded(x) for x in v] if isinstance(v, list) else v


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seconds", type=float, default=8.0, help="timing per training workload")
    ap.add_argument("--sample-batch", type=int, default=None, help="latents per DDIM batch (CPU 360, CUDA 1024)")
    ap.add_argument("--project", type=Path, default=None, help="a project after `dvc repro`: orchestration overhead")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hardware.json")
    ap.add_argument("--compile", default="", help="workloads also timed under torch.compile, e.g. latent_unet")
    ap.add_argument("--bf16", default="", help="workloads also timed under bf16 autocast, e.g. latent_unet")
    ap.add_argument("--compile-bf16", default="", help="workloads also timed compiled under bf16 autocast")
    ap.add_argument("--channels-last", default="", help="workloads also timed with channels_last weights")
    ap.add_argument("--bf16-channels-last", default="", help="workloads also timed channels_last under bf16 autocast")
    ap.add_argument("--rounds", type=int, default=1, help="rounds the rows take turns in (ratios immune to drift)")
    ap.add_argument("--batch", default="", help="workloads also timed at another batch size, e.g. latent_unet=64")
    args = ap.parse_args()
    known = tuple(SECTIONS)
    variants = {}
    for v, flag, names in (("compiled", "--compile", args.compile), ("bf16", "--bf16", args.bf16),
                           ("compiled bf16", "--compile-bf16", args.compile_bf16),
                           ("channels_last", "--channels-last", args.channels_last),
                           ("bf16 channels_last", "--bf16-channels-last", args.bf16_channels_last)):
        variants[v] = tuple(n.strip() for n in names.split(",") if n.strip())
        if set(variants[v]) - set(known):
            ap.error(f"{flag}: expected some of {', '.join(known)}, got {names!r}")
    batches = {}
    for item in (x.strip() for x in args.batch.split(",") if x.strip()):
        name, _, b = item.partition("=")
        if name not in known or not b.isdigit() or int(b) < 1:
            ap.error(f"--batch: expected NAME=BATCH with NAME one of {', '.join(known)}, got {item!r}")
        batches[name] = int(b)
    fix_mmap_threshold()  # the allocator settings of a `genlab` stage process (cli.run_stage)
    device = resolve(args.device)
    params = Params()  # the defaults; compute.precision fp32
    ctx = Context(paths=Paths(Path("/nonexistent")), seed=0, device=device, world=World(), compute=params.compute)
    torch.manual_seed(0)
    peak = matmul_peak(device, torch.float32, 3.0)
    log.info("matmul peak (float32): %.1f GFLOP/s with %d threads", peak / 1e9, torch.get_num_threads())
    result: dict[str, Any] = {
        "device": describe(device),
        "threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg()[0],
        "matmul_peak_gflops_fp32": round(peak / 1e9, 1)}
    peaks = {"fp32": peak}
    if device.type == "cuda" or any(variants[v] for v in BF16_VARIANTS):
        peaks["bf16"] = matmul_peak(device, torch.bfloat16, 3.0)
        result["matmul_peak_gflops_bf16"] = round(peaks["bf16"] / 1e9, 1)
        log.info("matmul peak (bfloat16): %.1f GFLOP/s", peaks["bf16"] / 1e9)
    if args.rounds < 1:
        ap.error(f"--rounds: expected an integer >= 1, got {args.rounds}")
    result["rounds"] = args.rounds
    result["train"] = train_rows(params, ctx, args.seconds, peaks, variants, batches, args.rounds)
    batch = args.sample_batch or (1024 if device.type == "cuda" else 360)
    result["sampling"] = sampling_rows(params, ctx, batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")  # kept if the orchestration's runs fail
    if args.project is not None:
        result["orchestration"] = orchestration(args.project.resolve(), args.rounds)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{result['device']}, {result['threads']} threads; matmul {result['matmul_peak_gflops_fp32']} GFLOP/s fp32")
    print(f"{'train step':34s} {'batch':>5s} {'img/s':>9s} {'GFLOP/step':>11s} {'GFLOP/s':>9s} {'% matmul':>9s}")
    for name, r in result["train"].items():
        print(f"{name:34s} {r['batch']:5d} {r['images_per_s']:9.1f} {r['gflop_per_step']:11.3f} "
              f"{r['achieved_gflops']:9.2f} {r['pct_of_matmul']:9.1f}")
    for name, r in result["sampling"].items():
        print(f"{name:18s} batch {r['batch']}: {r['latents_per_s']:.0f} latents/s, "
              f"{r['decoded_images_per_s']:.0f} decoded images/s")
    for k, v in result.get("orchestration", {}).items():
        print(f"{k}: {v}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
