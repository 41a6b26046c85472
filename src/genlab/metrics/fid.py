"""FID, KID and precision/recall through torch-fidelity's API, in the evaluator's feature space.

Offline, torch-fidelity's Inception weights cannot be downloaded, so genlab registers its own
evaluator (trained inside the pipeline) as a torch-fidelity feature extractor. The numbers are
therefore FID *in genlab-evaluator features*: comparable across genlab runs that share the
evaluator, not with published Inception FIDs. torch-fidelity names its result keys "inception"
whatever the extractor; `compute` relabels them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch_fidelity
from torch.nn import functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from genlab.checkpoint import load_snapshot
from genlab.images import to_uint8
from genlab.models.evaluator import Evaluator

EXTRACTOR = "genlab-evaluator"
EXTRACTOR_NOTE = ("offline FID: features of genlab's evaluator (trained in this pipeline), "
                  "not Inception-v3; comparable only across runs with the same evaluator")


class EvaluatorFeatures(FeatureExtractorBase):
    """torch-fidelity extractor: uint8 (B, 3, H, W) -> penultimate evaluator features and logits."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: object) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{EXTRACTOR} needs feature_extractor_weights_path (the evaluator snapshot)")
        state, cfg = load_snapshot(Path(feature_extractor_weights_path))
        self.net = Evaluator(**cfg["network"])
        self.net.load_state_dict(state)
        self.net.eval()
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


if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(EXTRACTOR, EvaluatorFeatures)


class ImageSet(torch.utils.data.Dataset):
    """float images in [-1, 1] (N, C, S, S) -> the uint8 3-channel images torch-fidelity expects."""

    def __init__(self, images: torch.Tensor) -> None:
        u8 = to_uint8(images)
        self.images = u8.expand(-1, 3, -1, -1).contiguous() if u8.shape[1] == 1 else u8

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def compute(generated: torch.Tensor, reference: torch.Tensor, evaluator_path: Path, kid_subset_size: int,
            pr_neighbourhood: int, batch_size: int = 256, cuda: bool = False) -> dict[str, float]:
    """FID, KID (mean, std) and precision/recall of `generated` against `reference`."""
    subset = min(kid_subset_size, len(generated), len(reference))
    m = torch_fidelity.calculate_metrics(
        input1=ImageSet(generated), input2=ImageSet(reference), cuda=cuda, batch_size=batch_size,
        fid=True, kid=True, prc=True, feature_extractor=EXTRACTOR,
        feature_extractor_weights_path=str(evaluator_path), kid_subset_size=subset,
        prc_neighborhood=pr_neighbourhood, cache=False, verbose=False, save_cpu_ram=True,
    )
    return {
        "fid": float(m["frechet_inception_distance"]),
        "kid_mean": float(m["kernel_inception_distance_mean"]),
        "kid_std": float(m["kernel_inception_distance_std"]),
        "precision": float(m["precision"]),
        "recall": float(m["recall"]),
    }


@torch.no_grad()
def class_accuracy(evaluator_path: Path, images: torch.Tensor, labels: torch.Tensor) -> float:
    state, cfg = load_snapshot(evaluator_path)
    net = Evaluator(**cfg["network"])
    net.load_state_dict(state)
    net.eval()
    pred = torch.cat([net(images[i : i + 512]).argmax(1) for i in range(0, len(images), 512)])
    return float((pred == labels).float().mean())
