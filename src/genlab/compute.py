"""How the training stages use the device: precision, fused optimizers and torch.compile (`compute` params).

- precision `fp32`: every op in float32 (the default; on CPU the only setting whose bits tests pin).
- precision `tf32`: float32 weights and activations, matmuls and convolutions on CUDA tensor cores in TF32
  (10-bit mantissa products, float32 accumulation); on CPU the same as fp32.
- precision `bf16`: the forward pass and loss under `torch.autocast(dtype=bfloat16)` (matmuls, convolutions and
  attention in bf16; reductions, norms and the loss in float32, by autocast's op lists); weights, gradients and
  optimizer states stay float32, so no loss scaling is needed (bf16 has float32's exponent range). CUDA, and CPU
  where bf16 kernels exist.
- Adam/AdamW run fused (one kernel over all parameters), on CPU as on CUDA: with the foreach EMA and clipping, the
  latent U-Net's CPU step is 1.09x as fast as with torch's per-parameter CPU defaults (README "Precision"), the
  same update to float rounding.
- precision `auto`: `bf16` where the device computes bfloat16 in hardware units (a CUDA GPU with native bf16; a CPU
  with AMX, Intel Sapphire Rapids and later, or with AVX512-BF16 dot products, e.g. AMD Zen 4 and later), else
  `fp32`. Resolved once per stage (`resolve_precision`); the stage's MLflow run, fingerprint and metrics record the
  precision it ran with, never "auto". Measured with `bench/hardware.py --bf16`: on a 2-core Zen 5 EPYC
  (AVX512-BF16, no AMX) bf16 made the VAE's step 1.73x and the GAN's 1.13x as fast (README "Precision"); on a CPU
  with neither unit autocast runs bf16 in emulation, slower than fp32, which is why `auto` does not pick it there.
- memory_format: the training networks' layout. `channels_last` stores every 4-D weight NHWC, so convolutions
  run and return NHWC activations (norms and attention take either); `auto` is channels_last on CUDA (cuDNN's
  tensor-core convolutions are NHWC kernels) and contiguous on CPU, where `bench/hardware.py --channels-last`
  measured it on a 2-core Zen 5 (`--rounds 3`, one process): the evaluator's step 1.29x (1.33x under bf16), the
  VAE's, latent U-Net's, pixel U-Net's and GAN's 0.90-0.99x at fp32 and 0.31-0.91x under bf16. Snapshots are
  written contiguous (`save_snapshot`), so a layout never changes a model file's format.
- compile: the training networks' forward under `torch.compile` (inductor); the first steps pay the compile time.
- threads: torch's intra-op CPU threads (`torch.set_num_threads`). A param, not picked from the machine's load:
  the count changes the bits of CPU results (measured: one U-Net step's gradients differ between 1 and 2 threads).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

from genlab.config import ComputeConfig
from genlab.device import cpu_bf16_unit


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matmuls and convolutions in hardware: CUDA with native bf16 (compute
    capability 8.0 and up), or a CPU with AMX-BF16 tiles or AVX512-BF16 dot products (oneDNN's bf16 kernels use
    either; both accumulate in float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_bf16_unit() is not None
    return False


def resolve_precision(device: torch.device, compute: ComputeConfig) -> ComputeConfig:
    """`compute` with precision `auto` replaced by what it means on `device` (module docstring)."""
    if compute.precision != "auto":
        return compute
    return compute.model_copy(update={"precision": "bf16" if native_bf16(device) else "fp32"})


def layout(device: torch.device, compute: ComputeConfig) -> str:
    """The training networks' layout, "channels_last" or "contiguous" (the module docstring): `compute.memory_format`,
    `auto` being channels_last on CUDA and contiguous elsewhere. Resolved where it is used, so `auto` leaves a CPU
    run's fingerprint as it was; the stage's MLflow run records the layout (tag `genlab.memory_format`)."""
    if compute.memory_format != "auto":
        return compute.memory_format
    return "channels_last" if device.type == "cuda" else "contiguous"


def place(module: nn.Module, device: torch.device, compute: ComputeConfig) -> nn.Module:
    """`module` moved to `device` in the training layout: its 4-D weights NHWC under channels_last (the same
    parameter objects, so an optimizer built on them sees the same tensors)."""
    fmt = torch.channels_last if layout(device, compute) == "channels_last" else torch.contiguous_format
    return module.to(device, memory_format=fmt)


def configure(device: torch.device, compute: ComputeConfig) -> None:
    """Process-wide settings: the CPU thread count when set; TF32 for CUDA matmuls and convolutions unless
    precision is fp32."""
    if compute.threads is not None:
        torch.set_num_threads(compute.threads)
    if device.type == "cuda":
        fast = resolve_precision(device, compute).precision != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast


def autocast(device: torch.device, compute: ComputeConfig) -> contextlib.AbstractContextManager:
    """The context a training step's forward pass and loss run in: bf16 autocast, or nothing."""
    if resolve_precision(device, compute).precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def adam(params: Iterable[nn.Parameter], device: torch.device, *, decoupled: bool = False, **kwargs: object,
         ) -> torch.optim.Optimizer:
    """Adam (or AdamW with `decoupled`), fused: the same update, one kernel for all parameters (CPU and CUDA)."""
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, fused=device.type in ("cpu", "cuda"), **kwargs)


def compiled(module: nn.Module, compute: ComputeConfig) -> nn.Module:
    """The module training calls, under torch.compile when `compute.compile` (the parameters stay shared with
    `module`, which checkpoints and EMA keep using)."""
    return torch.compile(module) if compute.compile else module
