"""genlab.metrics.fid: torch-fidelity with genlab's evaluator as feature extractor, against a numpy/scipy FID."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.nn import functional as F

from genlab.checkpoint import save_snapshot
from genlab.data.store import to_uint8
from genlab.metrics.fid import ImageSet, class_accuracy, compute_tier, make_extractor
from genlab.models.evaluator import Evaluator

CONFIG = {"network": {"in_channels": 1, "num_classes": 10, "width": 8}, "image_size": 16}


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> tuple[Evaluator, Path]:
    torch.manual_seed(0)
    net = Evaluator(in_channels=1, num_classes=10, width=8)
    with torch.no_grad():  # non-trivial BatchNorm statistics (eval mode matters); positive shifts: no dead ReLUs
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(0.1, 0.3)
    net.eval()
    path = tmp_path_factory.mktemp("evaluator") / "model.safetensors"
    save_snapshot(net, path, CONFIG)
    return net, path


def _images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Smooth random images in [-1, 1]: low-frequency noise varies the features more than pixel noise does."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 1, 4, 4, generator=g)
    return torch.tanh(F.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False) + shift)


@torch.no_grad()
def _features(net: Evaluator, images: torch.Tensor) -> np.ndarray:
    """What torch-fidelity feeds the evaluator: uint8, 3 identical channels, back to [-1, 1], channel mean."""
    u8 = to_uint8(images).expand(-1, 3, -1, -1)
    x = (u8.float() / 127.5 - 1.0).mean(1, keepdim=True)
    return net.eval().features(x).double().numpy()


def _reference_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.fixture(scope="module")
def sets() -> tuple[torch.Tensor, torch.Tensor]:
    return _images(200, 1, shift=0.3), _images(200, 2)


@pytest.fixture(scope="module")
def metrics(evaluator: tuple[Evaluator, Path], sets: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    gen, ref = sets
    return compute_tier(gen, ref, make_extractor(evaluator[1], None), kid_subset_size=50, pr_neighbourhood=3,
                        batch_size=64)


def test_image_set_is_uint8_rgb() -> None:
    images = torch.tensor([-1.0, -0.5, 0.0, 1.0, 2.0]).view(5, 1, 1, 1)
    ds = ImageSet(images)
    assert len(ds) == 5 and ds[0].shape == (3, 1, 1) and ds[0].dtype == torch.uint8
    assert [ds[i][0, 0, 0].item() for i in range(5)] == [0, 64, 128, 255, 255]
    assert all(torch.equal(ds[i][0], ds[i][2]) for i in range(5))


def test_compute_keys_and_ranges(metrics: dict[str, float]) -> None:
    assert set(metrics) == {"fid", "kid_mean", "kid_std", "precision", "recall"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert metrics["fid"] > 0 and metrics["kid_std"] >= 0
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1


def test_fid_matches_numpy_reference(evaluator: tuple[Evaluator, Path], sets: tuple[torch.Tensor, torch.Tensor],
                                     metrics: dict[str, float]) -> None:
    net, _ = evaluator
    gen, ref = sets
    f_gen, f_ref = _features(net, gen), _features(net, ref)
    assert np.linalg.matrix_rank(np.cov(f_gen, rowvar=False)) == f_gen.shape[1] == 32  # well-posed sqrtm
    expected = _reference_fid(f_gen, f_ref)
    assert expected > 0.1 * np.trace(np.cov(f_ref, rowvar=False))  # the two sets really differ in feature space
    assert metrics["fid"] == pytest.approx(expected, rel=1e-3)


def test_fid_of_a_set_against_itself_is_zero(evaluator: tuple[Evaluator, Path],
                                             sets: tuple[torch.Tensor, torch.Tensor],
                                             metrics: dict[str, float]) -> None:
    gen, _ = sets
    same = compute_tier(gen, gen, make_extractor(evaluator[1], None), kid_subset_size=50, pr_neighbourhood=3)
    assert abs(same["fid"]) < 1e-3 * metrics["fid"]
    assert abs(same["kid_mean"]) < abs(metrics["kid_mean"])
    assert same["precision"] == pytest.approx(1.0) and same["recall"] == pytest.approx(1.0)


def test_kid_subset_is_clipped_to_sample_count(evaluator: tuple[Evaluator, Path]) -> None:
    out = compute_tier(_images(30, 3), _images(40, 4), make_extractor(evaluator[1], None), kid_subset_size=1000,
                       pr_neighbourhood=3)
    assert np.isfinite(out["kid_mean"]) and np.isfinite(out["fid"])


def test_class_accuracy(evaluator: tuple[Evaluator, Path]) -> None:
    net, path = evaluator
    images = _images(64, 5)
    with torch.no_grad():
        pred = net.eval()(images).argmax(1)
    assert class_accuracy(path, images, pred) == 1.0
    assert class_accuracy(path, images, (pred + 1) % 10) == 0.0
    half = torch.where(torch.arange(64) < 16, pred, (pred + 1) % 10)
    assert class_accuracy(path, images, half) == pytest.approx(0.25)
