"""Typed, validated configuration: one class per `params.yaml` section.

Validation happens at the edge, before any work starts: an unknown key, a wrong type or an
out-of-range value raises `ConfigError` with one line naming the key and what was expected.
Defaults are documented once, next to each field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genlab.errors import ConfigError

# compute.precision and every training section's own (src/genlab/compute.py): fp32 | tf32 (CUDA matmuls and
# convolutions in TF32) | bf16 (forward and loss under bfloat16 autocast; weights and optimizer states stay
# float32) | auto (bf16 where the device has bf16 units: CUDA with native bf16, a CPU with AMX or
# AVX512-BF16; else fp32)
Precision = Literal["fp32", "tf32", "bf16", "auto"]
# the training networks' memory layout: channels_last (NHWC: every 4-D weight, so every convolution's activations) |
# contiguous (NCHW) | auto (channels_last on CUDA, where cuDNN's tensor-core convolutions run NHWC; contiguous on
# CPU, where it paid for the evaluator alone: bench/README.md, "channels_last")
MemoryFormat = Literal["channels_last", "contiguous", "auto"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    # digits: scikit-learn's, shipped; shapes: procedural, captioned; the user's files (data.path):
    # image_folder (one sub-folder per class, or flat: unlabelled), mnist (IDX files), cifar10 (binary version),
    # npz (arrays `images`, optional `labels`, `class_names`)
    source: Literal["digits", "shapes", "image_folder", "mnist", "cifar10", "npz"] = "digits"
    path: str | None = None  # the user's files (relative to the project root, e.g. data/raw/mnist); built-ins: null
    channels: Literal[1, 3] | None = None  # grey or RGB; null: the source's own (digits, mnist: 1; others: 3)
    on_bad_file: Literal["skip", "error"] = "skip"  # an unreadable file in a folder: skipped and counted, or refused
    shapes_count: int = Field(6000, ge=100)  # shapes only: how many images to generate
    # shapes only: attribute combinations kept out of train/val (they appear in test and in prompts only)
    holdout: tuple[dict[str, str], ...] = ({"colour": "red", "shape": "triangle"},)
    # every source: centre-cropped to a square, then resized to this with PIL's antialiased bilinear filter
    image_size: int = Field(16, ge=8, le=64)  # a power of two
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)  # also the sample count of every FID in `evaluate`

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two, got {self.image_size}")
        if self.source in ("digits", "shapes") and self.path is not None:
            raise ValueError(f"path must be null for the built-in source {self.source!r}, got {self.path!r}")
        if self.source not in ("digits", "shapes") and not self.path:
            raise ValueError(f"source {self.source!r} reads the user's files: set data.path (e.g. data/raw/...)")
        return self


class TrainConfig(Section):
    """Keys every training stage shares. Progress is counted in images seen, not epochs."""

    train_images: int = Field(ge=1)  # total training images seen (steps = train_images // batch_size)
    batch_size: int = Field(64, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0, le=1.0)
    log_every_images: int = Field(2048, ge=1)  # loss curve / MLflow metric interval
    checkpoint_every_images: int = Field(20000, ge=1)  # training-state interval (resume point)
    precision: Precision | None = None  # this stage's precision; null: compute.precision's


class EvaluatorConfig(TrainConfig):
    train_images: int = Field(40000, ge=1)
    width: int = Field(32, ge=4, le=512)  # channels of the first conv; features are 4*width wide
    noise_std: float = Field(0.0, ge=0, le=1)  # training noise: per-image std ~ U(0, noise_std) (0: none)


class VAEConfig(TrainConfig):
    train_images: int = Field(80000, ge=1)
    # auto: bf16 where the device has bf16 units (1.45-2.0x the step on an AMX CPU, the same rFID), else fp32
    precision: Precision | None = "auto"
    base_channels: int = Field(32, ge=4, le=512)
    latent_channels: int = Field(4, ge=1, le=64)
    # number of 2x downsamplings: latents are size / 2**downsample; null: follows the image size (`latent_side`)
    downsample: int | None = Field(None, ge=0, le=4)
    beta: float = Field(1.0, ge=0)  # weight of KL(q(z|x) || N(0, I)) in the loss
    kl_warmup_images: int = Field(20000, ge=0)  # beta ramps linearly from 0 over this many images
    recon_sigma: float = Field(0.05, gt=0)  # std of the Gaussian decoder: recon = ||x - x_hat||^2 / (2 sigma^2)
    ae_baseline: bool = True  # also train a plain autoencoder (no KL, no sampling) to show what the KL buys
    ae_train_images: int = Field(20000, ge=1)
    traversal_directions: int = Field(6, ge=1, le=32)  # principal latent directions shown as "knobs"
    interpolation_steps: int = Field(10, ge=2, le=64)


# DiffusionConfig's keys that only sampling reads (`sample`, `guidance_sweep`, `evaluate`): every other key of a
# training section is a parameter of its training stage in dvc.yaml (tests/test_stage_deps.py)
SAMPLING_KEYS = ("sampler", "sample_steps", "eta", "guidance_scale")


class DiffusionConfig(TrainConfig):
    """A diffusion model: noise-prediction U-Net, schedule, objective, conditioning and sampler."""

    train_images: int = Field(240000, ge=1)
    batch_size: int = Field(64, ge=1, le=4096)
    lr: float = Field(5e-4, gt=0, le=1.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: annealed to 0 over train_images
    base_channels: int = Field(48, ge=8, le=1024)
    # one U-Net level each, level i at input side / 2**i; null: follows the input size (`unet_levels`)
    channel_mults: tuple[int, ...] | None = (1, 2, 2)
    num_res_blocks: int = Field(1, ge=1, le=8)
    attention_levels: tuple[int, ...] = (2,)  # indices into channel_mults that get self-attention
    timesteps: int = Field(1000, ge=2, le=10000)
    schedule: Literal["linear", "cosine"] = "linear"
    prediction: Literal["eps", "v"] = "eps"  # what the network predicts (v: Salimans & Ho 2022)
    min_snr_gamma: float | None = Field(None, gt=0)  # Min-SNR-gamma loss weighting (Hang et al. 2023); null: off
    # class labels; text prompts through a frozen MiniLM; or class+text: one model that takes either (each
    # training image is conditioned on its label or on a prompt, half and half)
    conditioning: Literal["class", "text", "class+text"] = "class"
    cross_attention_levels: tuple[int, ...] = (1, 2)  # text only: levels that attend to the prompt tokens
    p_uncond: float = Field(0.1, ge=0, lt=1)  # probability a condition is replaced by the null condition
    ema_halflife_images: int = Field(20000, ge=1)  # EMA half-life in images, ramped up as 0.1 * images seen
    nll_timesteps: int = Field(20, ge=1)  # Monte-Carlo steps per sample for the bits/dim bound on the test split
    fid_every_images: int = Field(60000, ge=0)  # cheap FID during training at this interval (0: off)
    fid_samples: int = Field(200, ge=10)  # samples per cheap FID (20 DDIM steps, guidance 1)
    # sampling (read by `sample`, `guidance_sweep` and `evaluate`, not by training)
    sampler: Literal["ddim", "ddpm"] = "ddim"
    sample_steps: int = Field(50, ge=1)  # denoising steps at sampling time (respaced, trailing)
    eta: float = Field(0.0, ge=0, le=1)  # DDIM eta: 0 deterministic, 1 DDPM-like
    guidance_scale: float = Field(2.0, ge=0)  # eps = eps_u + w (eps_c - eps_u); 1 = no guidance

    @property
    def uses_text(self) -> bool:
        return "text" in self.conditioning

    @property
    def uses_class(self) -> bool:
        return "class" in self.conditioning

    @model_validator(mode="after")
    def _levels(self) -> DiffusionConfig:
        if self.channel_mults is not None and not self.channel_mults:
            raise ValueError("channel_mults must not be empty (null: follows the input size)")
        if self.sample_steps > self.timesteps:
            raise ValueError(f"sample_steps ({self.sample_steps}) must be <= timesteps ({self.timesteps})")
        return self


class LDMConfig(DiffusionConfig):
    """Latent diffusion: the U-Net runs on the VAE's scaled latents."""

    # 128: 1.2-1.3x the images/s of 64 on 2 CPU cores; after 240,000 images 0.99x the data floor over 3 sample
    # sets (64: 0.86x): less per image seen, more per second, and the floor is the bar
    batch_size: int = Field(128, ge=1, le=4096)
    lr: float = Field(7e-4, gt=0, le=1.0)  # batch 64's 5e-4 times sqrt(2)

    guidance_scale: float = Field(1.25, ge=0)  # best mean FID over sample seeds on digits (class accuracy >= 99%)
    # 25: half of 50's sampling time at the same FID (paired sample sets: 0.99x vs 1.09x the floor on one machine,
    # 0.91x vs 0.89x on another; bench/results/ldm_sample_steps.json); the pixel model loses 7% at 25 and keeps 50
    sample_steps: int = Field(25, ge=1)
    conditioning: Literal["class", "text", "class+text"] = "class+text"  # labels or held-out prompts, one model
    cross_attention_levels: tuple[int, ...] = ()  # text: the middle block (2x2) cross-attends; +8% time per level
    # x_0, the latent the U-Net learns to generate: "sample", z ~ q(z|x) drawn each step; "mean", the posterior mean
    # (decoded sharper: the posterior's noise decodes to blur, shapes' test split 1.85-1.94x the floor from samples
    # and 1.24x from means with the 320,000-image VAE; bench/README.md)
    latents: Literal["sample", "mean"] = "sample"


class PixelConfig(DiffusionConfig):
    """Pixel-space diffusion with the same U-Net code, for the latent-vs-pixel comparison."""

    train_images: int = Field(20000, ge=1)
    base_channels: int = Field(32, ge=8, le=1024)
    fid_every_images: int = Field(10000, ge=0)
    # v: 8.8x the data floor, 100% class accuracy on digits after 20,000 images, where eps was at 427x and 17%
    prediction: Literal["eps", "v"] = "v"


class GANConfig(TrainConfig):
    train_images: int = Field(150000, ge=1)
    # auto: bf16 where the device has bf16 units (1.5x the step on an AMX CPU, FID 2.50x the floor vs 2.58x)
    precision: Precision | None = "auto"
    lr: float = Field(2e-4, gt=0, le=1.0)
    z_dim: int = Field(64, ge=1, le=1024)
    base_channels: int = Field(32, ge=4, le=1024)
    ema_halflife_images: int = Field(2000, ge=1)  # EMA half-life of the generator, in images
    r1_gamma: float = Field(0.0, ge=0)  # R1 penalty weight (Mescheder et al. 2018) on real images; 0: off
    fid_every_images: int = Field(30000, ge=0)  # cheap FID during training at this interval (0: off)
    fid_samples: int = Field(200, ge=10)


class SampleConfig(Section):
    n_per_class: int = Field(36, ge=1)  # conditional models: n_per_class images of each class
    seed: int = Field(1234, ge=0)  # image i of family f has its own seed derived from (seed, f, i)
    batch_size: int = Field(256, ge=1)
    guidance_sweep: tuple[float, ...] = (0.0, 1.0, 1.25, 2.0)  # LDM scales scored by `guidance_sweep`

    @model_validator(mode="after")
    def _sweep(self) -> SampleConfig:
        if any(w < 0 for w in self.guidance_sweep):
            raise ValueError(f"guidance_sweep scales must be >= 0, got {list(self.guidance_sweep)}")
        return self


class EvaluateConfig(Section):
    kid_subset_size: int = Field(100, ge=2)  # clipped to the sample count
    pr_neighbourhood: int = Field(3, ge=1)  # k of the k-NN manifolds of precision/recall
    feature_extractor_weights_path: str | None = None  # an Inception-v3 weights file: standard FID tier
    per_class_fid: bool = True  # FID of each class's samples against that class's reference images
    batch_size: int = Field(256, ge=1)


class DistConfig(Section):
    # processes per machine for the training stages: > 1 runs each under `torchrun --nproc-per-node N`
    # (DistributedDataParallel: gloo on CPU, nccl on CUDA, one GPU per process); every batch_size is then global
    nproc_per_node: int = Field(1, ge=1, le=1024)


class ComputeConfig(Section):
    precision: Precision = "fp32"  # how the training stages use the device (`Precision` above)
    compile: bool = False  # torch.compile the training networks (pays after its compile time, on long runs)
    memory_format: MemoryFormat = "auto"  # the training networks' layout (`MemoryFormat` above)
    # torch's CPU threads in every stage; null: torch's default (OMP_NUM_THREADS, else the cores). The count changes
    # a CPU step's reduction order, so the bits: set it to get the same bits on machines with other core counts
    threads: int | None = Field(None, ge=1)

    def fingerprint_extra(self) -> tuple[str, ...]:
        """What a resumable checkpoint must match besides the stage's own section: nothing at the defaults."""
        return () if self == ComputeConfig() else (self.model_dump_json(),)


TRAINING_SECTIONS = ("evaluator", "vae", "ldm", "pixel", "gan")
FAMILIES = ("vae", "ldm", "pixel", "gan")  # the generative model families, in the order reports list them


class Params(Section):
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present, else CPU
    dist: DistConfig = DistConfig()
    compute: ComputeConfig = ComputeConfig()
    data: DataConfig = DataConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    vae: VAEConfig = VAEConfig()
    ldm: LDMConfig = LDMConfig()
    pixel: PixelConfig = PixelConfig()
    gan: GANConfig = GANConfig()
    sample: SampleConfig = SampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    def compute_for(self, section: str) -> ComputeConfig:
        """The compute settings the training stage of `section` runs with: `compute`'s, with the section's own
        `precision` when it sets one."""
        precision = getattr(self, section).precision
        return self.compute if precision is None else self.compute.model_copy(update={"precision": precision})

    @model_validator(mode="after")
    def _sizes(self) -> Params:
        check_sizes(self)
        check_world(self, self.dist.nproc_per_node)
        return self


def latent_side(image_size: int, downsample: int | None) -> int:
    """The VAE's latent side: image_size / 2**downsample; null downsample: 8 up to 32-pixel images (16 -> 8x8,
    32 -> 8x8), image_size / 4 above (64 -> 16x16), never more than the image."""
    if downsample is not None:
        return image_size // 2**downsample
    return min(image_size, max(8, image_size // 4))


def unet_levels(cfg: DiffusionConfig, side: int) -> tuple[int, ...]:
    """channel_mults, or when null one level per halving down to 2x2 (inputs up to 8) or 4x4 (larger inputs):
    8 -> (1, 2, 2), 16 -> (1, 2, 2), 32 -> (1, 2, 2, 2), 64 -> (1, 2, 2, 2, 2)."""
    if cfg.channel_mults is not None:
        return tuple(cfg.channel_mults)
    deepest = 2 if side <= 8 else 4
    return (1,) + (2,) * (max(side // deepest, 1).bit_length() - 1)


def check_sizes(p: Params) -> None:
    """Every network can take `data.image_size` (and the VAE's latents): raises ValueError naming the key."""
    size = p.data.image_size
    if p.vae.downsample is not None and size // 2**p.vae.downsample < 2:
        raise ValueError(f"vae.downsample {p.vae.downsample} leaves {size / 2**p.vae.downsample:g}-pixel latents "
                         f"from data.image_size {size}; at most {size.bit_length() - 2} (or null: follows the size)")
    for name, side in (("ldm", latent_side(size, p.vae.downsample)), ("pixel", size)):
        cfg: DiffusionConfig = getattr(p, name)
        levels = unet_levels(cfg, side)
        deepest = side / 2 ** (len(levels) - 1)
        if deepest < 2:
            raise ValueError(f"{name}.channel_mults: {len(levels)} levels halve the {side}x{side} input to "
                             f"{deepest:g}x{deepest:g}; at most {side.bit_length() - 1} levels (null: follows size)")
        keys = ("attention_levels", "cross_attention_levels") if cfg.uses_text else ("attention_levels",)
        for key in keys:
            bad = [i for i in getattr(cfg, key) if not 0 <= i < len(levels)]
            if bad:
                raise ValueError(f"{name}.{key}: {bad} outside the U-Net's levels 0..{len(levels) - 1} "
                                 f"({side}x{side} input, channel_mults {list(levels)})")


def check_world(p: Params, world_size: int) -> None:
    """Every training stage's global batch splits evenly over `world_size` processes: raises ValueError naming
    the key."""
    for name in TRAINING_SECTIONS:
        batch = getattr(p, name).batch_size
        if batch % world_size:
            raise ValueError(f"{name}.batch_size {batch} does not split over {world_size} processes "
                             f"(dist.nproc_per_node x nodes): use a multiple of {world_size}")


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if err["type"] == "value_error":  # a cross-field rule: its message names the key and the value
        msg = err["msg"].removeprefix("Value error, ")
        return f"{key}: {msg}" if key else msg  # a rule across sections names its keys itself
    return f"{key}: {err['msg']}, got {err.get('input')!r}"


def validate(raw: Any, source: str = "params") -> Params:
    """Validate a parsed params mapping; raise ConfigError naming the first bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more)" if more else ""
        raise ConfigError(f"{source}: {_describe(first)}{suffix}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return validate(raw or {}, str(path))


def to_json(section: BaseModel) -> str:
    return json.dumps(section.model_dump(mode="json"), indent=2, sort_keys=True)


def flatten(section: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flat {"a.b": value} view of a config, for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in section.model_dump(mode="json").items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            out[name] = value
    return out
