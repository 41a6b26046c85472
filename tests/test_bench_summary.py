"""The diffusers bench's verdicts: time to the floor, its bound when only genlab gets there, the excess at 300 s,
per-arm budgets, and which samples a grid shows. Synthetic curves stand in for trained arms, so the arithmetic is
checked, not the models."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("diffusers")
sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
import diffusers_vs_genlab as bench  # noqa: E402


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
    assert out["time_ratio"] is None and out["time_ratio_below"] == pytest.approx(866 / 1800)
    assert out["excess_ratio"] == pytest.approx(5.0 / 20.7)  # read at 300 s in all, not 300 s of its own


def test_marks_fall_on_the_total_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # a fake clock: every step takes 10 s; marks every 50 s of total time, the budget 100 s of the arm's own
    now = itertools.count(0, 10)  # perf_counter is read before and after each step: 10 s a step
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(now)))
    fake = SimpleNamespace(params=SimpleNamespace(seed=0), train=range(100), threads=64, seconds=100.0, every=50.0)

    def own_marks(offset: float) -> list[float]:
        _, marks = bench.train_for("arm", lambda idx, g: 0.0, dict, fake, 10, offset=offset)
        return [m.seconds for m in marks]

    assert own_marks(0.0) == [50.0, 100.0]
    assert own_marks(35.0) == [20.0, 70.0, 100.0]  # totals 55 and 105 (the first at or after 50 and 100), then the end
    assert own_marks(160.0) == [40.0, 90.0, 100.0]  # the VAE alone took it past 150: the first mark is at 200


def test_the_best_peer_is_the_smallest_excess_at_300_s_and_gives_a_plain_ratio() -> None:
    genlab = curve([(300, 2.0), (600, 1.05)])
    slow = curve([(300, 30.0), (600, 1.09)])  # reaches the floor, but further from it at 300 s
    fast = curve([(300, 11.0), (1200, 1.1)])
    out = bench.summarize(results(genlab, {"peer:a": slow, "peer:b": fast}))
    assert out["best_peer"] == "peer:b (ema 0.99)"
    assert out["time_ratio"] == pytest.approx(600 / 1200) and out["time_ratio_below"] is None
    assert out["excess_ratio"] == pytest.approx(1.0 / 10.0)


def test_budgets_per_arm() -> None:
    args = bench.parse_args(["--arms", "genlab-latent,peer:v", "--seconds", "1050", "--every", "150",
                             "--budget", "peer:v=1800/300"])
    assert args.budgets == {"genlab-latent": (1050.0, 150.0), "peer:v": (1800.0, 300.0)}
    for bad in ("peer:wide=600", "peer:v=ten", "peer:v=1800/120", "peer:v=-5"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--arms", "genlab-latent,peer:v", "--every", "100", "--budget", bad])
