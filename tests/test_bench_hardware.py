"""bench/hardware.py's orchestration measurement: DVC's overhead is the median of paired rounds taken in turns, so a
machine whose speed drifts between the runs does not move it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
import hardware  # noqa: E402


def test_dvc_overhead_is_the_median_of_abba_rounds_under_drift(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "train_vae.json").write_text(json.dumps({"train_seconds": 150.0}))
    (tmp_path / "metrics" / "train_ldm.json").write_text(json.dumps({"train_seconds": 250.0}))
    calls: list[str] = []

    def fake_timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:  # the machine slows 1 s every run
        drift = float(len(calls))
        kind = ("noop" if cmd == ["dvc", "repro"] else "direct" if cmd[0] == "genlab"
                else "dvc" if cmd[0] == "dvc" else "flow")
        calls.append(kind)
        return {"noop": 2.0, "direct": 40.0, "dvc": 42.0, "flow": 30.0}[kind] + drift

    monkeypatch.setattr(hardware, "timed", fake_timed)
    out = hardware.orchestration(tmp_path, rounds=4)
    assert calls == ["noop"] * 6 + ["direct", "dvc", "dvc", "direct", "direct", "dvc", "dvc", "direct", "flow"]
    # the rounds' differences: +2+1, +2-1, +2+1, +2-1: the drift cancels in the median, not in any one pair
    assert out["dvc_overhead_s"] == 2.0 and out["dvc_overhead_range_s"] == [1.0, 3.0]
    assert out["noop_dvc_repro_s"] == 4.5 and out["noop_dvc_repro_range_s"] == [2.0, 7.0]
    assert out["direct_train_evaluator_s"] == 49.5  # 46, 49, 50, 53
    assert out["dvc_overhead_pct"] == round(100 * 2.0 / 49.5, 2)
    assert out["pipeline_train_seconds"] == 400.0 and out["prefect_overhead_pct_of_training"] == round(
        100 * (30.0 + 14) / 400.0, 2)
    assert out["dvc_lock_present"] is False


def test_one_round_is_one_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "metrics").mkdir()
    monkeypatch.setattr(hardware, "timed", lambda cmd, cwd, env: 10.0 if cmd[0] == "genlab" else 11.0)
    out = hardware.orchestration(tmp_path)
    assert out["rounds"] == 1 and out["dvc_overhead_s"] == 1.0 and out["dvc_overhead_pct"] == 10.0
    assert "prefect_overhead_pct_of_training" not in out
