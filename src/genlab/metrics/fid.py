"""FID, KID and precision/recall through torch-fidelity's API, in one of two feature spaces (tiers).

- Tier "offline": genlab registers its own evaluator (trained inside the pipeline) as a torch-fidelity
  feature extractor, since torch-fidelity's Inception weights cannot be downloaded offline. The numbers
  are FID *in genlab-evaluator features*: comparable across genlab runs that share the evaluator, not
  with published Inception FIDs.
- Tier "standard": torch-fidelity's own Inception-v3 (`inception-v3-compat`, 2048-d pool features) with
  weights from a file the user supplies; genlab never downloads it. Comparable with published FIDs when
  the file holds torch-fidelity's converted TF-Inception weights.

An `Extractor` names the tier and the *content* (sha256) of its weights. torch-fidelity names its
result keys "inception" whatever the extractor; `compute_tier` relabels them.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch_fidelity
from torch.nn import functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor
from tqdm import tqdm

from genlab.checkpoint import load_network
from genlab.data.store import Images, to_uint8
from genlab.device import PROGRESS_FROM, inference_batch
from genlab.errors import GenlabError
from genlab.memory import heap_for_steps
from genlab.models.evaluator import Evaluator

EXTRACTOR = "genlab-evaluator"
EXTRACTOR_NOTE = ("offline FID: features of genlab's evaluator (trained in this pipeline), "
                  "not Inception-v3; comparable only across runs with the same evaluator")
STANDARD_EXTRACTOR = "inception-v3-compat"

Tier = Literal["offline", "standard"]


class EvaluatorFeatures(FeatureExtractorBase):
    """torch-fidelity extractor: uint8 (B, 3, H, W) -> penultimate evaluator features and logits."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: object) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{EXTRACTOR} needs feature_extractor_weights_path (the evaluator snapshot)")
        self.net, cfg = load_evaluator(Path(feature_extractor_weights_path))
        self.in_channels, self.image_size = cfg["network"]["in_channels"], cfg["image_size"]

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 16, 16, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.float() / 127.5 - 1.0
        x = x.mean(1, keepdim=True) if self.in_channels == 1 else x
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        feats = self.net.features(x)
        out = {"features": feats, "logits": self.net.head(feats)}
        return tuple(out[name] for name in self.features_list)


def load_evaluator(path: Path) -> tuple[Evaluator, dict[str, Any]]:
    """The evaluator snapshot as a network in eval mode, and its config (refused in one line if it is not one)."""
    net, cfg = load_network(path, Evaluator, "an evaluator", "train_evaluator", keys=("image_size",))
    return net.eval(), cfg


if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(EXTRACTOR, EvaluatorFeatures)


@dataclass(frozen=True)
class Extractor:
    """Which feature space a metric is computed in: the tier, torch-fidelity's extractor name, the weights
    file and its sha256 (what identifies the space: a copy elsewhere is the same extractor), the feature
    layer (used for FID, KID and precision/recall alike) and a sentence for reports."""

    tier: Tier
    name: str
    weights_path: str
    sha256: str
    note: str
    feature_layer: str

    @property
    def label(self) -> str:
        """Short protocol tag, e.g. `genlab-evaluator@1a2b3c4d5e6f`."""
        return f"{self.name}@{self.sha256[:12]}"

    def fidelity_kwargs(self) -> dict[str, Any]:
        """The torch-fidelity keyword arguments that select this extractor and layer for every metric."""
        return {"feature_extractor": self.name, "feature_extractor_weights_path": self.weights_path,
                **{f"feature_layer_{m}": self.feature_layer for m in ("fid", "kid", "prc")}}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_extractor(evaluator_path: Path | str, inception_weights: Path | str | None) -> Extractor:
    """Tier "standard" when `inception_weights` is given (a torch-fidelity Inception-v3 state dict, never
    downloaded), else tier "offline" with the evaluator snapshot at `evaluator_path`."""
    if inception_weights is None:
        path, tier, name, what = Path(evaluator_path), "offline", EXTRACTOR, "evaluator snapshot"
    else:
        path, tier, name, what = Path(inception_weights), "standard", STANDARD_EXTRACTOR, "Inception-v3 weights file"
    if not path.is_file():
        hint = ("run `genlab train_evaluator` first" if tier == "offline" else
                f"a {STANDARD_EXTRACTOR} state dict for torch-fidelity; genlab never downloads it")
        raise GenlabError(f"{path}: {what} not found ({hint})")
    sha = file_sha256(path)
    layer = FEATURE_EXTRACTORS_REGISTRY[name].get_default_feature_layer_for_metric("fid")
    note = EXTRACTOR_NOTE if tier == "offline" else (
        f"standard FID: torch-fidelity Inception-v3 ({STANDARD_EXTRACTOR}, 2048-d pool features) "
        f"from {path.name} (sha256 {sha[:12]})")
    return Extractor(tier=tier, name=name, weights_path=str(path), sha256=sha, note=note, feature_layer=layer)


class ImageSet(torch.utils.data.Dataset):
    """Images in [-1, 1] (N, C, S, S) -> the uint8 3-channel images torch-fidelity expects. A float tensor is
    converted whole; a prepared split's `Images` is read from its memory map one image at a time (its bytes are
    already the uint8 the float form rounds back to)."""

    def __init__(self, images: torch.Tensor | Images) -> None:
        self.images = images if isinstance(images, Images) else to_uint8(images)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        u8 = self.images.uint8(i) if isinstance(self.images, Images) else self.images[i]
        return u8.expand(3, -1, -1) if u8.shape[0] == 1 else u8


# Precision/recall compares every generated feature with every reference feature in blocks of `prc_batch_size`
# rows; torch-fidelity's default (10,000) makes a 10,000 x N float32 block, 3.9 GB against 98,000 reference
# images. `prc_batch_size` keeps a block near PRC_BLOCK floats: torch-fidelity's `calc_cdist_part` holds a block's
# pieces and their concatenation at once, so 128-MB blocks took `train_vae`'s scores against 98,000 train images to
# 1.53 GiB. Scoring 1,000 features against those 98,000 peaks at 0.96 GiB with 32-MB blocks, 1.23 with 128-MB ones
# (measured, one process each). Below 2,896 images every set is one block, as with torch-fidelity's default (the
# same numbers); above, blocks move a distance by float rounding only.
PRC_BLOCK = 2**23  # 32 MB of float32 distances


def prc_batch_size(*counts: int) -> int:
    """Rows per precision/recall distance block for feature sets of these sizes: at most 10,000 (torch-fidelity's
    default) and at most PRC_BLOCK / max(counts), at least 64."""
    return max(64, min(10_000, PRC_BLOCK // max(1, *counts)))


def feature_batch(batch_size: int, side: int) -> int:
    """Images per feature-extraction batch: `batch_size`, at most `inference_batch(side)` (256 stays 256 up to
    22 px; 32 at 64 px, where 256 images took a stage 0.7 GB past its training peak)."""
    return min(batch_size, inference_batch(side))


def relabel(m: dict[str, float]) -> dict[str, float]:
    """torch-fidelity's "inception" keys -> genlab's neutral names (whatever the extractor)."""
    return {
        "fid": float(m["frechet_inception_distance"]),
        "kid_mean": float(m["kernel_inception_distance_mean"]),
        "kid_std": float(m["kernel_inception_distance_std"]),
        "precision": float(m["precision"]),
        "recall": float(m["recall"]),
    }


def compute_tier(generated: torch.Tensor, reference: torch.Tensor, extractor: Extractor, kid_subset_size: int,
                 pr_neighbourhood: int, batch_size: int = 256, cuda: bool = False) -> dict[str, float]:
    """FID, KID (mean, std) and precision/recall of `generated` against `reference` in `extractor`'s features
    (one torch_fidelity.calculate_metrics call; KID subsets clipped to the smaller set)."""
    subset = min(kid_subset_size, len(generated), len(reference))
    batch_size = feature_batch(batch_size, generated.shape[-1])
    m = torch_fidelity.calculate_metrics(
        input1=ImageSet(generated), input2=ImageSet(reference), cuda=cuda, batch_size=batch_size,
        fid=True, kid=True, prc=True, **extractor.fidelity_kwargs(), kid_subset_size=subset,
        prc_neighborhood=pr_neighbourhood, prc_batch_size=prc_batch_size(len(generated), len(reference)), cache=False,
        verbose=False, save_cpu_ram=True,
    )
    return relabel(m)


@functools.lru_cache(maxsize=2)
def _feature_extractor(extractor: Extractor, cuda: bool) -> FeatureExtractorBase:
    """Built once per (extractor content, device): loading Inception weights is not free."""
    return create_feature_extractor(extractor.name, [extractor.feature_layer], cuda=cuda, verbose=False,
                                    feature_extractor_weights_path=extractor.weights_path)


def uint8_batch(images: torch.Tensor | Images, rows: slice) -> torch.Tensor:
    """The uint8 3-channel images torch-fidelity's extractors take, for `rows` of a split or a float tensor: a
    batch of `ImageSet` items as its DataLoader stacks them."""
    u8 = images.uint8(rows) if isinstance(images, Images) else to_uint8(images[rows])
    return u8.expand(-1, 3, -1, -1).contiguous() if u8.shape[1] == 1 else u8


@torch.no_grad()
def extract_features(images: torch.Tensor | Images, extractor: Extractor, batch_size: int = 256,
                     cuda: bool = False) -> torch.Tensor:
    """(N, C, S, S) in [-1, 1], or a prepared split, -> (N, D) float32 CPU features.

    torch-fidelity's own loop (`get_featuresdict_from_dataset`, which `compute_tier` runs) on the same uint8 batches,
    so the same features bit for bit; but a split is read a batch per map (not an image per map), and the features
    go into one preallocated output, so the heap can serve the batches (`memory.heap_for_steps`) without growing.
    At 64 px that is 1.6x faster than the threshold's fresh mappings (57 against 36 images/s, one thread)."""
    if not len(images):
        raise GenlabError("feature extraction: no images")
    fe = _feature_extractor(extractor, cuda)
    n, batch = len(images), feature_batch(batch_size, images.shape[-1])
    out = None
    with heap_for_steps(), tqdm(total=n, unit="img", desc="features", disable=n < PROGRESS_FROM) as bar:
        for start in range(0, n, batch):
            u8 = uint8_batch(images, slice(start, start + batch))
            (f,) = fe(u8.cuda(non_blocking=True) if cuda else u8)
            out = torch.empty(n, f.shape[1], dtype=f.dtype) if out is None else out
            out[start:start + len(f)] = f.cpu()
            bar.update(len(f))
    return out


def fid_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """FID of two (N, D) feature sets with torch-fidelity's statistics functions."""
    s1, s2 = fid_features_to_statistics(f1), fid_features_to_statistics(f2)
    return float(fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID])


def per_class_fid(gen_images: torch.Tensor, gen_labels: torch.Tensor, ref_features: torch.Tensor,
                  ref_labels: torch.Tensor, extractor: Extractor, batch_size: int = 256,
                  cuda: bool = False) -> dict[int, float]:
    """FID of each generated class against the same class of the reference (its (N, D) features, extracted once
    by `extract_features`)."""
    gen = extract_features(gen_images, extractor, batch_size, cuda)
    ref = ref_features.to(gen.dtype)
    gen_labels, ref_labels = gen_labels.cpu(), ref_labels.cpu()
    out = {}
    for c in sorted(set(gen_labels.tolist())):
        g, r = gen[gen_labels == c], ref[ref_labels == c]
        if min(len(g), len(r)) < 2:
            raise GenlabError(f"per-class FID: class {c} needs at least 2 images on each side "
                              f"(generated {len(g)}, reference {len(r)})")
        out[int(c)] = fid_from_features(g, r)
    return out


@torch.no_grad()
def attribute_accuracy(evaluator_path: Path, images: torch.Tensor, attributes: torch.Tensor) -> dict[str, float]:
    """Accuracy of the evaluator's prediction of every attribute (N, A), and of all of them at once."""
    net, cfg = load_evaluator(evaluator_path)
    names = cfg.get("attribute_names") or [f"head{i}" for i in range(len(net.heads))]
    b = inference_batch(images.shape[-1])
    pred = torch.cat([net.predict(images[i : i + b]) for i in range(0, len(images), b)])
    hit = pred == attributes
    per = {n: float(hit[:, i].float().mean()) for i, n in enumerate(names)}
    return {**per, "all": float(hit.all(1).float().mean())}


def class_accuracy(evaluator_path: Path, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose every predicted attribute is right; (N,) labels mean one attribute."""
    return attribute_accuracy(evaluator_path, images, labels[:, None] if labels.dim() == 1 else labels)["all"]
