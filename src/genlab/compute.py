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
