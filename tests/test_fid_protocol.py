"""FID protocol: two tiers (offline evaluator, standard Inception-v3 from a supplied file), reference
statistics cached by content, scoring from cached features == torch_fidelity.calculate_metrics, per-class FID.

No test downloads anything: the standard tier runs on a randomly initialised Inception-v3 written here in
the format torch-fidelity loads (`torch.save` of the state dict)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch_fidelity
from safetensors import safe_open
from torch import nn
from torch.nn import functional as F
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from genlab.checkpoint import save_snapshot
from genlab.errors import GenlabError
from genlab.metrics import reference as refstats
from genlab.metrics.fid import (
    EXTRACTOR_NOTE,
    Extractor,
    ImageSet,
    compute_tier,
    extract_features,
    make_extractor,
    per_class_fid,
    prc_batch_size,
)
from genlab.metrics.reference import (
    compute_reference,
    load_reference,
    reference_key,
    save_reference,
    score_against,
    stored_reference,
)
from genlab.models.evaluator import Evaluator

CONFIG = {"network": {"in_channels": 1, "num_classes": 10, "width": 8}, "image_size": 16}
DATA_HASH = "d" * 64
KID, PR = 20, 3  # kid_subset_size, pr_neighbourhood


def _save_evaluator(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    net = Evaluator(in_channels=1, num_classes=10, width=8)
    with torch.no_grad():  # non-trivial BatchNorm statistics; positive shifts: no dead ReLUs
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(0.1, 0.3)
    save_snapshot(net.eval(), path, CONFIG)
    return path


@pytest.fixture(scope="module")
def evaluators(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two evaluator snapshots with different weights."""
    d = tmp_path_factory.mktemp("evaluators")
    return _save_evaluator(d / "a.safetensors", 0), _save_evaluator(d / "b.safetensors", 1)


@pytest.fixture(scope="module")
def offline(evaluators: tuple[Path, Path]) -> Extractor:
    return make_extractor(evaluators[0], None)


class _RandomInception(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 architecture that keeps its random init: the constructor loads a state
    dict (from the URL when no path is given), so we give it a path to an empty dict and ignore it."""

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False) -> None:
        assert not state_dict


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init Inception-v3 state dict, saved as torch-fidelity loads it (torch.load -> load_state_dict)."""
    d = tmp_path_factory.mktemp("inception")
    torch.save({}, d / "empty.pth")
    torch.manual_seed(0)
    net = _RandomInception("random", ["2048"], feature_extractor_weights_path=str(d / "empty.pth"))
    with torch.no_grad():  # He init: PyTorch's default shrinks activations through ~90 layers to near-constants
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = d / "inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def _images(n: int, seed: int, shift: float = 0.0, channels: int = 1, size: int = 16) -> torch.Tensor:
    """Smooth random images in [-1, 1]: low-frequency noise varies the features more than pixel noise does."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, channels, 4, 4, generator=g)
    return torch.tanh(F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) + shift)


def _fidelity(gen: torch.Tensor, ref: torch.Tensor, feature_extractor: str, weights: Path, batch_size: int,
              **layers: str) -> dict[str, float]:
    """torch_fidelity.calculate_metrics called directly, with torch-fidelity's default layers unless given."""
    m = torch_fidelity.calculate_metrics(
        input1=ImageSet(gen), input2=ImageSet(ref), cuda=False, batch_size=batch_size, fid=True, kid=True,
        prc=True, feature_extractor=feature_extractor, feature_extractor_weights_path=str(weights),
        kid_subset_size=min(KID, len(gen), len(ref)), prc_neighborhood=PR, cache=False, verbose=False,
        save_cpu_ram=True, **layers)
    return {"fid": m["frechet_inception_distance"], "kid_mean": m["kernel_inception_distance_mean"],
            "kid_std": m["kernel_inception_distance_std"], "precision": m["precision"], "recall": m["recall"]}


def _assert_same(ours: dict[str, float], theirs: dict[str, float]) -> None:
    assert set(ours) == set(theirs)
    assert ours["fid"] == pytest.approx(theirs["fid"], rel=1e-6, abs=0)
    assert {k: ours[k] for k in ("kid_mean", "kid_std", "precision", "recall")} == \
        {k: theirs[k] for k in ("kid_mean", "kid_std", "precision", "recall")}  # same seed, same subsets


# ---- extractors and keys -------------------------------------------------------------------------------

def test_missing_inception_weights_names_the_path(evaluators: tuple[Path, Path], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-inception.pth"
    with pytest.raises(GenlabError, match=re.escape(str(missing))) as e:
        make_extractor(evaluators[0], str(missing))
    assert "\n" not in str(e.value)
    with pytest.raises(GenlabError, match=re.escape(str(tmp_path / "no-evaluator"))):
        make_extractor(tmp_path / "no-evaluator", None)


def test_extractor_descriptions(evaluators: tuple[Path, Path], offline: Extractor, inception_weights: Path) -> None:
    assert (offline.tier, offline.name, offline.feature_layer) == ("offline", "genlab-evaluator", "features")
    assert offline.note == EXTRACTOR_NOTE and offline.weights_path == str(evaluators[0])
    assert offline.sha256 == hashlib.sha256(evaluators[0].read_bytes()).hexdigest()
    std = make_extractor(evaluators[0], str(inception_weights))
    assert (std.tier, std.name, std.feature_layer) == ("standard", "inception-v3-compat", "2048")
    assert std.sha256 == hashlib.sha256(inception_weights.read_bytes()).hexdigest()
    assert std.note.startswith("standard FID: torch-fidelity Inception-v3 (inception-v3-compat, 2048-d pool "
                               f"features) from {inception_weights.name}")
    with pytest.raises(AttributeError):  # frozen
        std.tier = "offline"  # type: ignore[misc]


def test_reference_key_follows_content_not_names(evaluators: tuple[Path, Path], offline: Extractor,
                                                 inception_weights: Path, tmp_path: Path) -> None:
    key = reference_key(DATA_HASH, offline)
    copy = shutil.copy(evaluators[0], tmp_path / "renamed.safetensors")
    assert reference_key(DATA_HASH, make_extractor(copy, None)) == key  # same bytes elsewhere: same key
    assert reference_key(DATA_HASH, make_extractor(evaluators[0], None)) == key
    assert reference_key("e" * 64, offline) != key  # the data changed
    assert reference_key(DATA_HASH, make_extractor(evaluators[1], None)) != key  # other evaluator weights
    assert reference_key(DATA_HASH, make_extractor(evaluators[0], inception_weights)) != key  # other tier
    assert reference_key(DATA_HASH, replace(offline, feature_layer="logits")) != key
    assert reference_key(DATA_HASH, replace(offline, note="reworded", weights_path="x")) == key


# ---- offline tier: cached reference ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sets() -> tuple[torch.Tensor, torch.Tensor]:
    return _images(80, 1, shift=0.3), _images(100, 2)


@pytest.fixture(scope="module")
def saved_reference(tmp_path_factory: pytest.TempPathFactory, sets: tuple[torch.Tensor, torch.Tensor],
                    offline: Extractor) -> tuple[refstats.ReferenceStats, Path]:
    stats = compute_reference(sets[1], offline, reference_key(DATA_HASH, offline), batch_size=32, radii_k=PR)
    path = tmp_path_factory.mktemp("reference") / "train.safetensors"
    save_reference(stats, path)
    return stats, path


def test_reference_round_trips(saved_reference: tuple[refstats.ReferenceStats, Path], offline: Extractor) -> None:
    stats, path = saved_reference
    assert stats.features.shape == (100, 32) and stats.features.dtype == torch.float64 and stats.n == 100
    assert stats.mu.shape == (32,) and stats.sigma.shape == (32, 32)
    loaded = load_reference(path, reference_key(DATA_HASH, offline))
    assert torch.equal(loaded.features, stats.features)
    assert (loaded.mu == stats.mu).all() and (loaded.sigma == stats.sigma).all()
    assert loaded.key == stats.key and loaded.n == 100
    # the k-NN radii of precision/recall travel with the features: torch-fidelity's, for k = PR
    assert loaded.radii_k == PR and torch.equal(loaded.radii, stats.radii)
    assert torch.equal(loaded.radii, refstats.knn_radii(stats.features.float(), PR, prc_batch_size(100)))
    # the weights are named by content (sha256) and file name, not by where the project lives
    assert loaded.extractor == replace(offline, weights_path=Path(offline.weights_path).name)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["key"] == stats.key and json.loads(meta["extractor"])["sha256"] == offline.sha256


def test_stale_reference_is_refused(saved_reference: tuple[refstats.ReferenceStats, Path],
                                   evaluators: tuple[Path, Path], offline: Extractor) -> None:
    _, path = saved_reference
    for stale in (reference_key("e" * 64, offline), reference_key(DATA_HASH, make_extractor(evaluators[1], None))):
        with pytest.raises(GenlabError, match=re.escape(str(path))):
            load_reference(path, stale)


def test_score_against_cached_reference_equals_calculate_metrics(
        sets: tuple[torch.Tensor, torch.Tensor], saved_reference: tuple[refstats.ReferenceStats, Path],
        offline: Extractor, evaluators: tuple[Path, Path]) -> None:
    gen, ref = sets
    cached = load_reference(saved_reference[1], reference_key(DATA_HASH, offline))
    ours = score_against(gen, cached, offline, KID, PR, batch_size=32)
    theirs = _fidelity(gen, ref, "genlab-evaluator", evaluators[0], batch_size=32)
    _assert_same(ours, theirs)
    assert theirs["fid"] > 0 and 0 < theirs["precision"] < 1
    assert compute_tier(gen, ref, offline, KID, PR, batch_size=32) == ours


def test_score_against_refuses_another_extractor(saved_reference: tuple[refstats.ReferenceStats, Path],
                                                 evaluators: tuple[Path, Path]) -> None:
    with pytest.raises(GenlabError, match="genlab-evaluator@"):
        score_against(_images(10, 3), saved_reference[0], make_extractor(evaluators[1], None), KID, PR)


def test_stored_reference_loads_once_and_scores_with_its_radii(
        monkeypatch: pytest.MonkeyPatch, saved_reference: tuple[refstats.ReferenceStats, Path],
        offline: Extractor) -> None:
    path, key = saved_reference[1], reference_key(DATA_HASH, offline)
    loads = []
    real_load = refstats.load_reference
    monkeypatch.setattr(refstats, "load_reference", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    first = stored_reference(path, key, "train_evaluator")
    assert stored_reference(path, key, "train_evaluator") is first and len(loads) == 1
    with pytest.raises(GenlabError, match=r"stale reference statistics.*`genlab train_evaluator`"):
        stored_reference(path, reference_key("e" * 64, offline), "train_evaluator")
    # scoring uses the stored radii (no N² pass over the reference) and gives the numbers of computing them
    sizes = []
    real_radii = refstats.knn_radii
    monkeypatch.setattr(refstats, "knn_radii", lambda f, k, b: sizes.append(len(f)) or real_radii(f, k, b))
    gen = _images(12, 7)
    stored = score_against(gen, first, offline, KID, PR)
    assert sizes == [12]  # the generated features only
    bare = replace(first, radii=None, radii_k=0)
    assert score_against(gen, bare, offline, KID, PR) == stored and sizes == [12, 100, 12]
    # another k than the stored one: computed, once per reference
    score_against(gen, first, offline, KID, PR + 1)
    score_against(_images(12, 8), first, offline, KID, PR + 1)
    assert sizes == [12, 100, 12, 100, 12, 12]


def test_precision_recall_blocks_bound_memory_and_keep_the_numbers() -> None:
    """Blocks of prc_batch_size rows give torch-fidelity's numbers with its default 10,000-row block, and keep a
    block (rows x reference size) near PRC_BLOCK floats for a large reference."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    g = torch.Generator().manual_seed(0)
    gen, real = torch.randn(300, 16, generator=g), torch.randn(500, 16, generator=g) * 1.2
    default = prc_features_to_metric(gen, real, prc_neighborhood=3, save_cpu_ram=True, verbose=False)
    blocked = prc_features_to_metric(gen, real, prc_neighborhood=3, save_cpu_ram=True, verbose=False,
                                     prc_batch_size=37)
    assert blocked == default and 0 < default["precision"] < 1 and 0 < default["recall"] < 1
    assert prc_batch_size(360, 1437) >= 1437  # the default pipeline: one block, as torch-fidelity's own
    assert prc_batch_size(1000, 98_000) == 85 and 85 * 98_000 <= 2**23
    assert prc_batch_size(10, 10**9) == 64


def test_extract_features_equals_torch_fidelitys_own_loop(offline: Extractor, tmp_path: Path) -> None:
    """genlab's extraction loop (batch reads, preallocated output, heap-served batches) gives torch-fidelity's
    features bit for bit: from a float tensor and from a stored split, with a last batch shorter than the rest."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    from genlab.data import store
    from genlab.metrics.fid import _feature_extractor

    images = _images(77, 40)
    theirs = get_featuresdict_from_dataset(ImageSet(images), _feature_extractor(offline, False), 32, False, True,
                                           False)["features"]
    u8 = store.to_uint8(images).numpy()
    store.write(tmp_path / "split.safetensors", [store.Entry("images", "U8", u8.shape, [u8[:50], u8[50:]])])
    split = store.images_of(tmp_path / "split.safetensors")
    assert theirs.shape[0] == 77
    assert torch.equal(extract_features(images, offline, batch_size=32), theirs)
    assert torch.equal(extract_features(split, offline, batch_size=32), theirs)
    assert not torch.equal(extract_features(images.flip(0), offline, batch_size=32), theirs)  # the rows' order


# ---- per-class FID ---------------------------------------------------------------------------------------

def test_per_class_fid_equals_fid_of_each_class_subset(evaluators: tuple[Path, Path], offline: Extractor) -> None:
    gen_labels, ref_labels = torch.arange(3).repeat_interleave(20), torch.arange(75) % 3
    gen = torch.cat([_images(20, 10 + c, shift=0.2 * c) for c in range(3)])  # class c: shifted by 0.2 c
    ref = _images(75, 20)
    ref_features = extract_features(ref, offline, batch_size=32)
    per_class = per_class_fid(gen, gen_labels, ref_features, ref_labels, offline, batch_size=32)
    assert set(per_class) == {0, 1, 2}
    for c, value in per_class.items():
        direct = compute_tier(gen[gen_labels == c], ref[ref_labels == c], offline, KID, PR, batch_size=32)["fid"]
        assert value == pytest.approx(direct, rel=1e-6) and value > 0
    with pytest.raises(GenlabError, match="class 3"):
        per_class_fid(gen[:5], torch.tensor([0, 0, 1, 1, 3]), ref_features, ref_labels, offline)


# ---- standard tier: torch-fidelity's Inception-v3 from a supplied file -------------------------------------

def test_standard_tier_plumbing_equals_calculate_metrics_fast(evaluators: tuple[Path, Path],
                                                              inception_weights: Path) -> None:
    """Fast variant: the same file, extractor and calls, on Inception's first pooled layer (64-d)."""
    ex = replace(make_extractor(evaluators[0], str(inception_weights)), feature_layer="64")
    gen, ref = _images(16, 30, shift=0.5, channels=3, size=32), _images(16, 31, channels=3, size=32)
    theirs = _fidelity(gen, ref, "inception-v3-compat", inception_weights, batch_size=16,
                       feature_layer_fid="64", feature_layer_kid="64", feature_layer_prc="64")
    ours = score_against(gen, compute_reference(ref, ex, "k", batch_size=16), ex, KID, PR, batch_size=16)
    _assert_same(ours, theirs)
    assert compute_tier(gen, ref, ex, KID, PR, batch_size=16) == theirs
    assert theirs["fid"] > 0
    full = make_extractor(evaluators[0], str(inception_weights))  # the 2048-d layer, without the slow 2048² FID
    inception = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=str(inception_weights))
    with torch.no_grad():
        (expected,) = inception(ImageSet(gen[:4]).images)
    assert torch.equal(extract_features(gen[:4], full, batch_size=4), expected)


@pytest.mark.slow


def test_standard_tier_equals_calculate_metrics(evaluators: tuple[Path, Path], inception_weights: Path) -> None:
    """genlab's standard tier (2048-d Inception pool features) against calculate_metrics, 20 vs 20 images.

    Slow on CPU (~40-80 s on 2 cores) mostly in torch-fidelity's FID itself: np.linalg.eigvals of a 2048 x 2048
    product, once per side; the fast variant above covers the same calls on a 64-d layer."""
    ex = make_extractor(evaluators[0], str(inception_weights))
    gen, ref = _images(20, 40, shift=0.5, channels=3, size=32), _images(20, 41, channels=3, size=32)
    theirs = _fidelity(gen, ref, "inception-v3-compat", inception_weights, batch_size=20)
    stats = compute_reference(ref, ex, reference_key(DATA_HASH, ex), batch_size=20)
    assert stats.features.shape == (20, 2048)
    ours = score_against(gen, stats, ex, KID, PR, batch_size=20)
    _assert_same(ours, theirs)
    assert theirs["fid"] > 1.0  # well above the eigen-solver's noise (~1e-5)


def test_copying_z_is_the_standardised_mann_whitney_u() -> None:
    from scipy.stats import mannwhitneyu

    g = torch.Generator().manual_seed(3)
    gen, test = torch.rand(70, generator=g), torch.rand(50, generator=g)
    gen[:5] = test[:5]  # ties count one half
    u = mannwhitneyu(gen.numpy(), test.numpy()).statistic  # pairs gen > test, plus half the ties
    assert refstats.copying_z(gen, test) == pytest.approx((u - 70 * 50 / 2) / (70 * 50 * 121 / 12) ** 0.5, rel=1e-12)


def test_copying_z_flags_copies_and_not_fresh_samples() -> None:
    """Feature-space three-sample test: copies of training points sit much closer to the train split than held-out
    points do (Z_U << -3); fresh draws from the same distribution do not; an over-dispersed model sits farther."""
    g = torch.Generator().manual_seed(4)
    train, test = torch.randn(600, 8, generator=g), torch.randn(200, 8, generator=g)
    held_out = refstats.nearest_distances(test, train)
    assert torch.allclose(held_out, torch.cdist(test, train).min(dim=1).values, atol=1e-5)
    copies = train[:200] + 0.01 * torch.randn(200, 8, generator=g)
    fresh, wide = torch.randn(200, 8, generator=g), 1.6 * torch.randn(200, 8, generator=g)
    z = {k: refstats.copying_z(refstats.nearest_distances(x, train), held_out)
         for k, x in (("copies", copies), ("fresh", fresh), ("wide", wide))}
    assert z["copies"] < -10 and abs(z["fresh"]) < 3 and z["wide"] > 3, z
