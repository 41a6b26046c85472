"""Reference statistics: the reference set's features, computed once and cached by content.

A reference file is keyed by what determines its numbers — the data hash, the FID tier, the sha256 of
the extractor weights and the feature layer — never by a file or run name, so a stale file (the data or
the extractor changed) is detected instead of silently reused. It keeps the (N, D) features, not only
(mu, sigma): KID and precision/recall need the samples themselves.

`score_against` scores generated images against a cached reference with torch-fidelity's own metric
functions, in the order and with the defaults `torch_fidelity.calculate_metrics` uses (input1 =
generated, input2 = reference), so it gives the same numbers as `fid.compute_tier` on the same images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import safe_open
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import calc_cdist_part

from genlab.checkpoint import first_line, read_safetensors, safetensors_bytes
from genlab.errors import GenlabError
from genlab.metrics.fid import Extractor, extract_features, prc_batch_size, relabel
from genlab.paths import atomic_write

log = logging.getLogger(__name__)


def reference_key(data_hash: str, extractor: Extractor) -> str:
    """sha256 over (data hash, tier, weights sha256, feature layer): the content the statistics depend on."""
    parts = [data_hash, extractor.tier, extractor.sha256, extractor.feature_layer]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


@dataclass(frozen=True)
class ReferenceStats:
    """Reference features (N, D) and their FID statistics mu (D,), sigma (D, D), all float64.

    The extractors emit float32; the float64 values here are exact copies, and `score_against` casts them
    back, so torch-fidelity sees bit-for-bit what `calculate_metrics` would."""

    features: torch.Tensor
    mu: np.ndarray
    sigma: np.ndarray
    key: str
    extractor: Extractor
    radii: torch.Tensor | None = None  # each feature's k-NN radius for precision/recall, k = radii_k
    radii_k: int = 0

    @property
    def n(self) -> int:
        return self.features.shape[0]


def compute_reference(images: torch.Tensor, extractor: Extractor, key: str, batch_size: int = 256,
                      cuda: bool = False, radii_k: int = 0) -> ReferenceStats:
    """Extract the reference features once; mu and sigma with torch-fidelity's `fid_features_to_statistics`; with
    `radii_k`, also the features' k-NN radii of precision/recall (N² distances: worth keeping for a large split)."""
    t0 = time.perf_counter()
    log.info("extracting %s features of %d reference images", extractor.label, len(images))
    feats = extract_features(images, extractor, batch_size, cuda)
    stats = fid_features_to_statistics(feats)
    radii = knn_radii(feats, radii_k, prc_batch_size(len(feats))) if radii_k else None
    log.info("reference features (%d x %d) in %.0f s", *feats.shape, time.perf_counter() - t0)
    return ReferenceStats(features=feats.double(), mu=stats["mu"].astype(np.float64),
                          sigma=stats["sigma"].astype(np.float64), key=key, extractor=extractor, radii=radii,
                          radii_k=radii_k)


def save_reference(stats: ReferenceStats, path: Path) -> None:
    """safetensors: features, mu, sigma; the key and the extractor description in the header."""
    tensors = {"features": stats.features.contiguous(), "mu": torch.from_numpy(np.ascontiguousarray(stats.mu)),
               "sigma": torch.from_numpy(np.ascontiguousarray(stats.sigma))}
    if stats.radii is not None:
        tensors["radii"] = stats.radii.contiguous()
    # the weights are identified by their sha256; only the file's name is kept, so the bytes do not depend on
    # where the project lives
    extractor = {**asdict(stats.extractor), "weights_path": Path(stats.extractor.weights_path).name}
    metadata = {"key": stats.key, "n": str(stats.n), "extractor": json.dumps(extractor, sort_keys=True),
                "radii_k": str(stats.radii_k if stats.radii is not None else 0)}
    atomic_write(Path(path), safetensors_bytes(tensors, metadata))


def _header(path: Path, producer: str) -> dict[str, str]:
    if not path.is_file():
        raise GenlabError(f"{path}: reference statistics not found (run `genlab {producer}` first)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # noqa: BLE001 (SafetensorError for a damaged file; others for bytes of another format)
        raise GenlabError(f"{path}: not a reference statistics file ({first_line(e)}): truncated or corrupt; "
                          f"rerun `genlab {producer}`") from None


def load_reference(path: Path, expected_key: str | None = None, producer: str = "reference_stats") -> ReferenceStats:
    """Load a reference file; with `expected_key`, refuse a stale one (the data or the extractor changed).
    `producer`: the stage that writes the file, named in the errors."""
    path = Path(path)
    meta = _header(path, producer)
    if "key" not in meta or "extractor" not in meta:
        raise GenlabError(f"{path}: not a reference statistics file (no key/extractor in its header); "
                          f"rerun `genlab {producer}`")
    if expected_key is not None and meta["key"] != expected_key:
        raise GenlabError(f"{path}: stale reference statistics (key {meta['key'][:12]}, expected "
                          f"{expected_key[:12]}): the data or the feature extractor changed; recompute them "
                          f"(`genlab {producer}`)")
    t, _ = read_safetensors(path, "reference statistics", producer)
    try:
        extractor = Extractor(**json.loads(meta["extractor"]))
    except (ValueError, TypeError) as e:
        raise GenlabError(f"{path}: the 'extractor' in its header is not an extractor description ({first_line(e)}); "
                          f"rerun `genlab {producer}`") from None
    mu = t.get("mu")
    d = mu.shape[0] if mu is not None and mu.dim() == 1 else -1
    for key, shape in {"features": (None, d), "mu": (d,), "sigma": (d, d)}.items():
        x = t.get(key)
        if x is None or not x.is_floating_point() or x.dim() != len(shape) or any(
                e is not None and e != n for e, n in zip(shape, x.shape, strict=True)):
            got = "missing" if x is None else f"{x.dtype} {tuple(x.shape)}"
            raise GenlabError(f"{path}: {key}: expected features (N, D), mu (D,), sigma (D, D) as floats, got {got}; "
                              f"rerun `genlab {producer}`")
    radii, radii_k = t.get("radii"), int(meta.get("radii_k", "0") or 0)
    if radii is not None and (radii.dim() != 1 or len(radii) != len(t["features"]) or radii_k < 1):
        raise GenlabError(f"{path}: radii: expected one k-NN radius per feature (k >= 1 in the header), got "
                          f"{tuple(radii.shape)} with k = {radii_k}; rerun `genlab {producer}`")
    return ReferenceStats(features=t["features"], mu=t["mu"].numpy(), sigma=t["sigma"].numpy(), key=meta["key"],
                          extractor=extractor, radii=radii, radii_k=radii_k if radii is not None else 0)


_LOADED: dict[tuple[str, str], ReferenceStats] = {}


def stored_reference(path: Path, key: str, producer: str) -> ReferenceStats:
    """`load_reference(path, key)`, once per process: a training stage scores against the train split many times
    (its FID curve), and the file holds the split's features (98,000 x D floats for a 100,000-image folder)."""
    memo = (str(Path(path).resolve()), key)
    if memo not in _LOADED:
        _LOADED.clear()  # one reference at a time
        _LOADED[memo] = load_reference(path, key, producer)
    return _LOADED[memo]


def score_against(generated_images: torch.Tensor, ref: ReferenceStats, extractor: Extractor, kid_subset_size: int,
                  pr_neighbourhood: int, batch_size: int = 256, cuda: bool = False,
                  held_out_nn: torch.Tensor | None = None) -> dict[str, float]:
    """FID, KID (mean, std) and precision/recall of `generated_images` against cached reference features; with
    `held_out_nn` (held-out images' distances to their nearest reference feature, `nearest_distances`), also the
    data-copying statistic `copy_z` and the ratio of median nearest-neighbour distances `nn_ratio`."""
    same = (ref.extractor.tier, ref.extractor.sha256, ref.extractor.feature_layer)
    if same != (extractor.tier, extractor.sha256, extractor.feature_layer):
        raise GenlabError(f"reference statistics were computed with {ref.extractor.label} "
                          f"({ref.extractor.feature_layer}), not {extractor.label} ({extractor.feature_layer})")
    gen = extract_features(generated_images, extractor, batch_size, cuda)
    return score_features(gen, ref, kid_subset_size, pr_neighbourhood, held_out_nn)


def score_features(gen: torch.Tensor, ref: ReferenceStats, kid_subset_size: int, pr_neighbourhood: int,
                   held_out_nn: torch.Tensor | None = None) -> dict[str, float]:
    """`score_against` for features `gen` (N, D) already extracted in the reference's feature space."""
    real = ref.features.to(gen.dtype)  # exact: float32 values held as float64
    gen_stats = fid_features_to_statistics(gen)
    ref_stats = {k: v.astype(gen_stats[k].dtype) for k, v in (("mu", ref.mu), ("sigma", ref.sigma))}
    subset = min(kid_subset_size, len(gen), len(real))
    precision, recall = precision_recall(gen, real, reference_radii(ref, pr_neighbourhood), pr_neighbourhood)
    m = {**fid_statistics_to_metric(gen_stats, ref_stats, verbose=False),
         **kid_features_to_metric(gen, real, kid_subset_size=subset, verbose=False),
         "precision": precision, "recall": recall}
    out = relabel(m)
    if held_out_nn is not None:
        gen_nn = nearest_distances(gen, real.float())
        out["copy_z"] = copying_z(gen_nn, held_out_nn)
        out["nn_ratio"] = float(gen_nn.median() / held_out_nn.median())
    return out


def nearest_distances(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each row of `x`'s Euclidean distance to its nearest row of `reference` (blocks of `prc_batch_size` rows)."""
    batch = prc_batch_size(len(x), len(reference))
    return torch.cat([calc_cdist_part(b, reference, batch).min(dim=1).values for b in x.split(batch)])


def copying_z(gen_nn: torch.Tensor, held_out_nn: torch.Tensor) -> float:
    """The data-copying statistic Z_U of Meehan et al. 2020 (the three-sample test, with one cell): the
    Mann-Whitney U of the generated samples' distances to their nearest training image (m of them) against the
    held-out images' (n), standardised:

        U = #{(i, j): d_gen_i > d_test_j} + 1/2 #{(i, j): d_gen_i = d_test_j},   Z_U = (U - mn/2) / sqrt(mn(m+n+1)/12)

    Z_U well below 0 (Meehan et al. flag < -3): the samples sit closer to training images than fresh images do, the
    mark of copying; above 0, farther (under-fitting); about 0, as close as new data."""
    ranked = held_out_nn.double().sort().values
    d = gen_nn.double()
    below = torch.searchsorted(ranked, d, right=False).double()
    ties = torch.searchsorted(ranked, d, right=True).double() - below
    m, n = len(d), len(ranked)
    u = float((below + 0.5 * ties).sum())
    return (u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12)


def knn_radii(features: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Each feature's distance to its k-th nearest other feature (the (k+1)-th smallest distance, itself being
    the first): the radius of its ball in improved precision/recall (Kynkäänniemi et al. 2019, eq. 1-2)."""
    return torch.cat([calc_cdist_part(b, features, batch).kthvalue(k + 1).values for b in features.split(batch)])


_RADII: dict[str, object] = {}


def reference_radii(ref: ReferenceStats, k: int) -> torch.Tensor:
    """`knn_radii` of the reference features, computed once per process for the reference last asked about: they
    cost N² distances (98,000 train images: 10^10), and every score against the same reference reuses them."""
    if ref.radii is not None and ref.radii_k == k:  # stored with the features
        return ref.radii
    if _RADII.get("features") is not ref.features or _RADII.get("k") != k:
        real = ref.features.float()
        _RADII.update(features=ref.features, k=k, radii=knn_radii(real, k, prc_batch_size(len(real))))
    return _RADII["radii"]  # type: ignore[return-value]


def precision_recall(gen: torch.Tensor, real: torch.Tensor, real_radii: torch.Tensor, k: int) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision = the fraction of generated features
    inside some real feature's k-NN ball, recall = the fraction of real features inside some generated one's.
    torch-fidelity's `calculate_precision_recall_part`, step for step, with the real radii passed in."""
    batch = prc_batch_size(len(gen), len(real))
    gen_radii = knn_radii(gen, k, batch)
    recall = torch.cat([(calc_cdist_part(b, gen, batch) <= gen_radii).any(dim=1).float()
                        for b in real.split(batch)]).mean().item()
    precision = torch.cat([(calc_cdist_part(b, real, batch) <= real_radii).any(dim=1).float()
                           for b in gen.split(batch)]).mean().item()
    return precision, recall
