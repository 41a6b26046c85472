"""The diffusers bench end to end on the tiny `dvc repro` project: genlab's latent arm from the project, the same arm
from a tuned copy of it (@PROJECT), and a peer, each trained for two seconds, then sampled and scored."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, sh

pytest.importorskip("diffusers")


def test_the_bench_runs_a_tuned_genlab_beside_the_default_and_a_peer(repro: tuple[Path, dict[str, str], str],
                                                                     tmp_path: Path) -> None:
    root, env, _ = repro
    tuned = tmp_path / "tuned"  # what an arm from another project needs: its params, data, VAE and the VAE's time
    for rel in ("params.yaml", "data/prepared", "models/vae", "metrics/train_vae.json"):
        (tuned / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (root / rel).is_dir() else shutil.copy2)(root / rel, tuned / rel)
    params = yaml.safe_load((tuned / "params.yaml").read_text())
    params["ldm"]["lr"] *= 2
    (tuned / "params.yaml").write_text(yaml.safe_dump(params))
    vae_metrics = json.loads((tuned / "metrics/train_vae.json").read_text())
    vae_metrics["train_seconds"] = 1.5  # the copy's VAE time: the offset its arm's marks must carry
    (tuned / "metrics/train_vae.json").write_text(json.dumps(vae_metrics))

    out = tmp_path / "bench.json"
    arms = ["genlab-latent", f"genlab-latent@{tuned}", "peer:v-lr-2e-3-cos-noclip"]
    sh([sys.executable, "bench/diffusers_vs_genlab.py", "--project", str(root), "--seconds", "2", "--every", "2",
        "--steps", "2", "--n-per-class", "3", "--sample-seeds", "1", "--device", "cpu", "--arms", ",".join(arms),
        "--budget", "peer:v-lr-2e-3-cos-noclip=2@1", "--out", str(out)], REPO, env)
    res = json.loads(out.read_text())

    assert res["complete"] and list(res["arms"]) == arms
    default, mine, peer = (res["arms"][a] for a in arms)
    assert default["settings"]["params_overrides"] == {}
    assert mine["settings"]["params_overrides"] == {"ldm.lr": params["ldm"]["lr"]}
    assert default["extra_seconds"] == json.loads((root / "metrics/train_vae.json").read_text())["train_seconds"]
    assert mine["extra_seconds"] == 1.5
    assert peer["at"] == [1.0] and all(r["seconds"] >= 1.0 for r in peer["curves"]["ema 0.99"])
    # the recipe's lr annealed over its 2-s budget: every step after the first runs below the recipe's 2e-3 (a
    # constant lr would end at 2e-3); two marks at different images mean two steps or more (a slow first step under
    # load can spend the whole budget)
    assert peer["settings"]["lr_schedule"] == "cosine"
    if len({r["images_seen"] for r in peer["curves"]["ema 0.99"]}) > 1:
        assert 0.0 <= peer["settings"]["final_lr"] < 2e-3
    for arm in (default, mine, peer):
        for curve in arm["curves"].values():
            assert curve and curve[-1]["seconds"] >= 2.0  # the end of the budget always marks
            for row in curve:
                assert row["total_seconds"] == pytest.approx(row["seconds"] + arm["extra_seconds"])
                assert math.isfinite(row["fid_ratio"]) and row["fid_ratio"] > 0
                assert 0.0 <= row["class_accuracy"] <= 1.0
    assert res["claims"] == {}  # no peer reached 300 s, so there is no best peer to hold genlab against
    grids = sorted(p.name for p in out.with_suffix("").glob("*.png"))
    assert "data_test.png" in grids and len(grids) >= 1 + 3
    assert all(re.fullmatch(r"[\w.-]+\.png", g) for g in grids)  # the @PROJECT path flattened into one name
    assert any(g.startswith("genlab-latent_") and "tuned" in g for g in grids)


def test_sample_seeds_scores_the_sample_stage_as_evaluate_does(repro: tuple[Path, dict[str, str], str],
                                                               tmp_path: Path) -> None:
    """bench/sample_seeds.py: its first set is the sample stage's own images, so its FID is evaluate's."""
    root, env, _ = repro
    out = tmp_path / "seeds.json"
    sh([sys.executable, "bench/sample_seeds.py", "--project", str(root), "--sets", "2", "--families", "ldm,pixel",
        "--out", str(out)], REPO, env)
    res = json.loads(out.read_text())
    evaluated = json.loads((root / "metrics" / "evaluate.json").read_text())
    for family in ("ldm", "pixel"):
        first, second = res["families"][family]["per_set"]
        assert first["fid"] == pytest.approx(evaluated[family]["fid"], rel=1e-4)
        assert first["class_accuracy"] == pytest.approx(evaluated[family]["class_accuracy"])
        assert second["fid"] != first["fid"]  # fresh noise
        assert res["families"][family]["sets"] == 2
    assert {p.name for p in (tmp_path / "seeds").glob("*.png")} == {"data_test.png", "ldm.png", "pixel.png"}
