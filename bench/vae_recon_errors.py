"""Where a trained VAE's reconstructions lose FID: the test split's reconstruction error split by pixel kind
(background, edges, shape interiors), and the FID/floor of the real test images with the reconstruction pasted in on
one kind of pixel only.

The latent arm's samples are decoded by the VAE, so its reconstructions show how near the floor the LDM can be
expected to get, though not as a strict bound (bench/README.md, "The latent arm's ceiling on shapes"). Pixel kinds,
per image and pixel: background where every channel is at -1, edge where the 3x3 neighbourhood differs from the
pixel by more than 0.05 (summed), the rest interior. Reconstructions decode the posterior means, clamped, as
`train_vae` scores its rFID. Beside them, the FID/floor of decodes of draws z ~ q(z|x) (three seeded draws): what an
LDM trained on draws (`ldm.latents: sample`) learns to generate, against the means (`ldm.latents: mean`).

    .venv/bin/python bench/vae_recon_errors.py --project .
Prints a table and writes JSON to --out (bench/results/vae_recon_errors.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab import inputs
from genlab.device import describe
from genlab.paths import Paths
from genlab.randomness import generator
from genlab.stages.common import Context, load_data
from genlab.stages.train_vae import decode, encode, scored

DRAWS = 3  # seeded draws z ~ q(z|x) of the whole test split


def pixel_kinds(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boolean masks of x's shape (N, C, H, W), each pixel in exactly one: background, edge, interior."""
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    change = sum((pad[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] - x).abs()
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    edge = (change.sum(1, keepdim=True) > 0.05).expand_as(x)
    background = (x <= -0.99).all(dim=1, keepdim=True).expand_as(x) & ~edge
    return {"background": background, "edge": edge, "interior": ~background & ~edge}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=Path("."), help="a project where `train_vae` has run")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vae_recon_errors.json")
    args = ap.parse_args()
    ctx = Context(paths=Paths(args.project.resolve()), seed=0, device=torch.device("cpu"))
    data = load_data(ctx)
    vae, _ = inputs.vae(ctx.paths, data.manifest, ctx.device)
    x = data.test.images.all()
    mean, logvar = encode(vae, x, ctx.device)
    r = decode(vae, mean, ctx.device)
    floor = scored(x, data, ctx)["fid"]
    rows = {}
    for kind, mask in {**pixel_kinds(x), "all": torch.ones_like(x, dtype=torch.bool)}.items():
        e = (r - x)[mask]
        rows[kind] = {"fraction": float(mask.float().mean()), "rmse": float(e.pow(2).mean().sqrt()),
                      "mean_error": float(e.mean()), "max_abs_error": float(e.abs().max()),
                      "fid_ratio_with_only_this_error": scored(torch.where(mask, r, x), data, ctx)["fid"] / floor}
    std = (0.5 * logvar).exp()
    draws = [scored(decode(vae, mean + std * torch.randn(mean.shape, generator=generator(0, "recon-draw", k)),
                           ctx.device), data, ctx)["fid"] / floor for k in range(DRAWS)]
    result = {"project": str(args.project.resolve()), "device": describe(ctx.device), "source": data.manifest["source"],
              "floor_fid": floor, "kinds": rows, "fid_ratio_from_draws": draws,
              "posterior_std_mean": float(std.mean()), "posterior_mean_std": float(mean.std())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"floor FID {floor:.4f} ({data.manifest['source']}, {len(x)} test images)")
    print(f"{'pixels':12s} {'fraction':>8s} {'rmse':>7s} {'mean':>8s} {'FID/floor, only this error':>27s}")
    for kind, m in rows.items():
        print(f"{kind:12s} {m['fraction']:8.3f} {m['rmse']:7.4f} {m['mean_error']:+8.4f} "
              f"{m['fid_ratio_with_only_this_error']:27.2f}")
    print(f"decoded from draws z ~ q(z|x), not the means: FID/floor {min(draws):.2f}-{max(draws):.2f} over {DRAWS} "
          f"draws (posterior std {result['posterior_std_mean']:.3f} on average; the means' std "
          f"{result['posterior_mean_std']:.3f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
