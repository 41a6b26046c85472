"""What a loaded machine costs genlab's torch steps, and what OpenMP's wait policy does about it.

Each arm runs in its own process (libgomp reads OMP_WAIT_POLICY and OMP_NUM_THREADS when torch loads it) and times
two of genlab's real workloads: the latent U-Net's training step (the `ldm` section's network, AdamW, batch 64 of
4x8x8 latents) and guided DDIM sampling (10 steps, 360 latents, two U-Net passes per step). Every arm runs on an
otherwise idle machine and again beside a competing single-threaded process that keeps one core busy (another
user's job), in one run, interleaved, so the ratios compare like with like:

    arm            torch threads  OMP_WAIT_POLICY
    2-active       2              unset (libgomp spins, then sleeps)
    2-passive      2              PASSIVE (a waiting thread sleeps at once)
    1-thread       1              unset

Usage: .venv/bin/python bench/threads.py [--rounds 2] [--out bench/results/threads.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = {"2-active": {"threads": 2, "env": {}}, "2-passive": {"threads": 2, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
        "1-thread": {"threads": 1, "env": {}}}

WORKLOAD = r"""
import json, sys, time, torch
from genlab.config import LDMConfig
from genlab.diffusion.sample import ddim_sample, ddim_timesteps, guided
from genlab.diffusion.schedules import alpha_bar
from genlab.models.unet import UNet
torch.set_num_threads(int(sys.argv[1]))
cfg = LDMConfig()
torch.manual_seed(0)
net = UNet(4, cfg.base_channels, tuple(cfg.channel_mults), cfg.num_res_blocks, tuple(cfg.attention_levels), 10)
opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
g = torch.Generator().manual_seed(0)
x, t, y = torch.randn(64, 4, 8, 8, generator=g), torch.randint(0, 1000, (64,), generator=g), torch.arange(64) % 10

def train_step():
    loss = (net(x, t, y) - x).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

def sample(steps=10):
    with torch.no_grad():
        denoise = guided(net.eval(), torch.arange(360) % 10, 10, 1.25)
        ddim_sample(denoise, torch.randn(360, 4, 8, 8, generator=g), alpha_bar(1000), ddim_timesteps(1000, steps))
    net.train()

out = {}
for name, fn, warm, reps in (("train_step", train_step, train_step, 30), ("ddim10_360", sample, lambda: sample(1), 2)):
    warm()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    out[name] = times
print(json.dumps(out))
"""

HOG = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"


def run_arm(arm: str) -> dict[str, list[float]]:
    spec = ARMS[arm]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(spec["env"], OMP_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, "-c", WORKLOAD, str(spec["threads"])], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="each (arm, load) pair runs this many times, interleaved")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "threads.json")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.1f} at start: the 'idle' rows are not idle", file=sys.stderr)
    raw: dict[str, dict[str, list[dict]]] = {arm: {"idle": [], "loaded": []} for arm in ARMS}
    for r in range(args.rounds):
        for condition in ("idle", "loaded"):
            hog = subprocess.Popen([sys.executable, "-c", HOG]) if condition == "loaded" else None
            try:
                for arm in ARMS:
                    raw[arm][condition].append(run_arm(arm))
                    print(f"round {r} {condition:6s} {arm}: done", flush=True)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    rows = {}
    for arm in ARMS:
        rows[arm] = {}
        for work in ("train_step", "ddim10_360"):
            med = {c: statistics.median(t for run in raw[arm][c] for t in run[work]) for c in ("idle", "loaded")}
            rows[arm][work] = {"idle_s": round(med["idle"], 4), "loaded_s": round(med["loaded"], 4),
                               "loaded_over_idle": round(med["loaded"] / med["idle"], 2)}
    base = rows["2-active"]
    print(f"\n{cores} cores; medians per call; ratios within one run")
    print(f"{'arm':10s} {'work':11s} {'idle s':>8s} {'loaded s':>9s} {'loaded/idle':>12s} {'idle vs 2-active':>17s}")
    for arm, works in rows.items():
        for work, m in works.items():
            rel = m["idle_s"] / base[work]["idle_s"]
            print(f"{arm:10s} {work:11s} {m['idle_s']:8.4f} {m['loaded_s']:9.4f} {m['loaded_over_idle']:12.2f} "
                  f"{rel:17.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cores": cores, "load_at_start": load, "rounds": args.rounds, "rows": rows,
                                    "raw": raw, "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
