"""The diffusers bench's verdicts: time to the floor, its bound when only genlab gets there, the excess at 300 s,
per-arm budgets and marks, and genlab arms from another project (@PROJECT). Synthetic curves stand in for trained
arms, so the arithmetic is checked, not the models."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytest.importorskip("diffusers")
sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
import diffusers_vs_genlab as bench  # noqa: E402

from genlab.config import load_params  # noqa: E402
from genlab.data import splits  # noqa: E402
from genlab.errors import GenlabError  # noqa: E402
from genlab.paths import Paths  # noqa: E402
from tests.conftest import tiny_params  # noqa: E402


def curve(points: list[tuple[float, float]], extra: float = 0.0) -> list[dict]:
    """Marks at (seconds, FID/floor)."""
    return [{"seconds": s, "total_seconds": s + extra, "fid_ratio": r} for s, r in points]


def results(genlab: list[dict], peers: dict[str, list[dict]]) -> dict:
    return {"genlab-latent": {"curves": {"ema": genlab}},
            **{arm: {"curves": {"ema 0.99": c}} for arm, c in peers.items()}}


def test_the_time_ratio_is_a_bound_when_only_genlab_reaches_the_floor() -> None:
    # the latent arm's marks fall on the total clock: its VAE trained 116 s, so its own 184 s is 300 s in all
    genlab = curve([(184, 6.0), (300, 4.0), (600, 1.2), (750, 1.08), (900, 1.05)], extra=116)
    peer = curve([(300, 21.7), (900, 37.5), (1800, 35.8)])
    out = bench.summarize(results(genlab, {"peer:v": peer}))
    assert out["rows"]["genlab-latent (ema)"]["time_to_floor"] == 866  # the first mark <= 1.1x, the VAE counted
    claim = out["claims"]["genlab-latent"]
    assert claim["time_ratio"] is None and claim["time_ratio_below"] == pytest.approx(866 / 1800)
    assert claim["excess_ratio"] == pytest.approx(5.0 / 20.7)  # read at 300 s in all, not 300 s of its own


def test_when_neither_reaches_the_floor_the_race_is_to_the_nearest_level_both_reached() -> None:
    # genlab's best is 1.8x, the peer's 6.0x: both reached 6.0x, genlab at 600 s in all, the peer at 1500 s
    genlab = curve([(184, 9.0), (484, 5.5), (784, 2.1), (1084, 1.8)], extra=116)
    peer = curve([(300, 22.0), (900, 7.0), (1500, 6.0)])
    claim = bench.summarize(results(genlab, {"peer:v": peer}))["claims"]["genlab-latent"]
    assert claim["time_ratio"] is None and claim["time_ratio_below"] is None
    assert claim["common_level"] == 6.0 and claim["common_times"] == [600, 1500]
    assert claim["common_time_ratio"] == pytest.approx(0.4)
    # the other way round: the level is genlab's best, and the peer got there first
    claim = bench.summarize(results(curve([(300, 9.0), (1200, 3.0)]), {"peer:v": curve([(300, 2.5)])}))["claims"]
    assert claim["genlab-latent"]["common_level"] == 3.0
    assert claim["genlab-latent"]["common_time_ratio"] == pytest.approx(1200 / 300)
    # a reached floor is the claim itself: no common level then
    claim = bench.summarize(results(curve([(300, 1.05)]), {"peer:v": curve([(300, 2.5)])}))["claims"]
    assert "common_level" not in claim["genlab-latent"]


def test_marks_fall_on_the_total_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # a fake clock: every step takes 10 s; marks every 50 s of total time, the budget 100 s of the arm's own
    now = itertools.count(0, 10)  # perf_counter is read before and after each step: 10 s a step
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(now)))
    fake = SimpleNamespace(params=SimpleNamespace(seed=0), train=range(100), threads=64)
    budget = bench.ArmBudget(100.0, 50.0)

    progress: list[float] = []  # what each step was told of its budget spent (a time-annealed lr reads it)

    def own_marks(offset: float) -> list[float]:
        progress.clear()
        _, marks = bench.train_for("arm", lambda idx, g, p: progress.append(p) or 0.0, dict, fake, budget, 10,
                                   offset=offset)
        return [m.seconds for m in marks]

    assert own_marks(0.0) == [50.0, 100.0]
    # progress is the arm's own clock over its budget: the VAE's seconds before it (offset) do not anneal its lr
    assert progress == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert own_marks(35.0) == [20.0, 70.0, 100.0]  # totals 55 and 105 (the first at or after 50 and 100), then the end
    assert progress[0] == 0.0 and progress[-1] == pytest.approx(0.9)
    assert own_marks(160.0) == [40.0, 90.0, 100.0]  # the VAE alone took it past 150: the first mark is at 200
    budget = bench.ArmBudget(100.0, 50.0, (30.0, 60.0, 130.0))  # explicit total times instead of every 50 s
    assert own_marks(0.0) == [30.0, 60.0, 100.0]  # 130 is past the budget: the end marks
    assert own_marks(35.0) == [30.0, 100.0]  # totals 65 (the first at or after 60; 30 passed during the VAE), 135


def test_the_best_peer_is_the_smallest_excess_at_300_s_and_gives_a_plain_ratio() -> None:
    genlab = curve([(300, 2.0), (600, 1.05)])
    slow = curve([(300, 30.0), (600, 1.09)])  # reaches the floor, but further from it at 300 s
    fast = curve([(300, 11.0), (1200, 1.1)])
    out = bench.summarize(results(genlab, {"peer:a": slow, "peer:b": fast}))
    assert out["best_peer"] == "peer:b (ema 0.99)"
    claim = out["claims"]["genlab-latent"]
    assert claim["time_ratio"] == pytest.approx(600 / 1200) and claim["time_ratio_below"] is None
    assert claim["excess_ratio"] == pytest.approx(1.0 / 10.0)


def test_every_genlab_latent_arm_is_compared_with_the_best_peer() -> None:
    # the default project's arm and one tuned in another project (@PATH), against one peer; the pixel arm makes no
    # claim, and a peer is never a genlab arm
    res = results(curve([(300, 46.0), (1200, 1.08)]), {"peer:v": curve([(300, 9.0), (2400, 7.5)])})
    res["genlab-latent@/tmp/tuned"] = {"curves": {"ema": curve([(300, 3.0), (600, 1.3)])}}
    res["genlab-pixel"] = {"curves": {"ema": curve([(300, 2.0)])}}
    claims = bench.summarize(res)["claims"]
    assert set(claims) == {"genlab-latent", "genlab-latent@/tmp/tuned"}
    assert claims["genlab-latent"]["time_ratio_below"] == pytest.approx(1200 / 2400)
    assert claims["genlab-latent"]["excess_ratio"] == pytest.approx(45.0 / 8.0)
    assert claims["genlab-latent@/tmp/tuned"]["excess_ratio"] == pytest.approx(2.0 / 8.0)
    assert claims["genlab-latent@/tmp/tuned"]["time_ratio"] is None  # neither reached the floor
    assert claims["genlab-latent@/tmp/tuned"]["time_ratio_below"] is None


def test_budgets_per_arm() -> None:
    with pytest.raises(SystemExit):  # only a genlab arm takes @PROJECT
        bench.parse_args(["--arms", "peer:v@../tuned"])
    args = bench.parse_args(["--arms", "genlab-latent,peer:v", "--seconds", "1050", "--every", "150",
                             "--budget", "peer:v=1800/300"])
    assert args.budgets == {"genlab-latent": bench.ArmBudget(1050.0, 150.0), "peer:v": bench.ArmBudget(1800.0, 300.0)}
    args = bench.parse_args(["--arms", "genlab-latent@../tuned,peer:v", "--every", "150",
                             "--budget", "peer:v=2400@2400,300,600", "--budget", "genlab-latent@../tuned=200"])
    assert args.budgets == {"genlab-latent@../tuned": bench.ArmBudget(200.0, 150.0),
                            "peer:v": bench.ArmBudget(2400.0, 150.0, (300.0, 600.0, 2400.0))}
    for bad in ("peer:wide=600", "peer:v=ten", "peer:v=1800/120", "peer:v=-5", "peer:v=2400@600,1200",
                "peer:v=600@300,x"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--arms", "genlab-latent,peer:v", "--every", "100", "--budget", bad])


def test_an_arm_from_another_project_must_hold_the_same_data(tmp_path: Path) -> None:

    def project(name: str, content_hash: str, lr: float) -> Path:
        root = tmp_path / name
        (root / "data" / "prepared").mkdir(parents=True)
        params = tiny_params()
        params["ldm"]["lr"] = lr
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        manifest = {"source": "digits", "num_classes": 10, "attributes": {"names": [], "num_classes": []},
                    "content_hash": content_hash, "image_shape": [1, 8, 8], "counts": {"train": 5, "val": 1, "test": 1}}
        (root / "data" / "prepared" / "manifest.json").write_text(json.dumps(manifest))
        return root

    home = Paths(project("home", "a" * 64, 1e-3))
    fake = SimpleNamespace(paths=home, params=load_params(home.root / "params.yaml"),
                           manifest=splits.read_manifest(home.prepared))
    tuned = project("tuned", "a" * 64, 2e-3)
    paths, params = bench.arm_project(fake, f"genlab-latent@{tuned}")
    assert paths.root == tuned and params.ldm.lr == 2e-3
    assert bench.params_overrides(params, fake.params) == {"ldm.lr": 2e-3}
    assert bench.arm_project(fake, "genlab-latent") == (home, fake.params)
    other = project("other", "b" * 64, 1e-3)
    with pytest.raises(GenlabError, match=r"other/data/prepared holds other data \(content_hash bbbbbbbbbbbb\)"):
        bench.arm_project(fake, f"genlab-latent@{other}")
    with pytest.raises(GenlabError, match=r"genlab-latent@.*missing.*params\.yaml"):
        bench.arm_project(fake, f"genlab-latent@{tmp_path / 'missing'}")


def test_bad_input_is_one_line_and_exit_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert bench.cli(["--project", str(missing), "--arms", "genlab-latent"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing / "params.yaml") in err, err


def test_marks_in_one_second_get_grids_of_their_own(tmp_path: Path) -> None:
    fake = SimpleNamespace(grids=tmp_path)
    marks = [bench.Mark(170.6, 41216, {}), bench.Mark(171.1, 41344, {}), bench.Mark(300.2, 72000, {})]
    paths = bench.grid_paths(fake, "genlab-latent@/tmp/p12v40", "ema", marks)
    assert [p.name for p in paths] == ["genlab-latent_tmp_p12v40_ema_171s_41216img.png",
                                       "genlab-latent_tmp_p12v40_ema_171s_41344img.png",
                                       "genlab-latent_tmp_p12v40_ema_300s.png"]


@pytest.mark.parametrize("name", sorted(bench.RECIPES))
def test_every_recipe_builds_a_unet_that_denoises_the_image_shape(name: str) -> None:
    recipe = bench.RECIPES[name]
    fake = SimpleNamespace(train=SimpleNamespace(images=bench.torch.zeros(2, 1, 16, 16)), num_classes=10)
    unet = bench.diffusers_unet(fake, recipe)
    assert unet.config.block_out_channels == tuple(recipe.channels)
    assert unet.config.layers_per_block == recipe.layers
    groups = {m.num_groups for m in unet.modules() if isinstance(m, bench.torch.nn.GroupNorm)}
    assert groups == {32 if min(recipe.channels) >= 32 else min(recipe.channels)}  # widths are powers of two
    x = bench.torch.randn(2, 1, 16, 16)
    out = unet(x, bench.torch.tensor([10, 500]), class_labels=bench.torch.tensor([3, 10])).sample  # 10: the null label
    assert out.shape == x.shape
