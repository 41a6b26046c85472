"""One code path for CPU and CUDA: `device: auto` picks CUDA when present."""

from __future__ import annotations

import torch

from genlab.errors import ConfigError

PIXELS_PER_BATCH = 512 * 16 * 16  # inference batches: 512 images at 16x16 (activation memory grows with pixels)
PROGRESS_FROM = 10_000  # images: a whole-split pass over this many shows a progress bar (minutes on CPU)


def inference_batch(side: int) -> int:
    """Images per inference batch (encode, decode, classify) for side x side inputs: 512 at 16, 128 at 32, 32 at
    64, so a batch's activations take the same memory at every size (~1 GB at 64 px with 512 would double a
    stage's peak)."""
    return max(8, PIXELS_PER_BATCH // (side * side))


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(device)


def cpu_bf16_unit() -> str | None:
    """The CPU's bfloat16 hardware unit, the widest first: "AMX-BF16" (tiles), "AVX512-BF16" (dot products), or
    None (torch's bf16 then runs in emulation). `compute.native_bf16` and `describe` both read it."""
    caps = torch.cpu.get_capabilities()
    return "AMX-BF16" if caps.get("amx_bf16") else "AVX512-BF16" if caps.get("avx512_bf16") else None


def describe(device: torch.device) -> str:
    """The device in words, recorded with every stage run and bench result, since timings hold only for the
    machine they were taken on: the GPU's name, or the CPU's model, its cores and the widest vector unit torch
    uses on it (AVX2, AVX512; AMX-BF16, or else AVX512-BF16, where present), e.g. "AMD EPYC (2 cores, AVX2)"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    caps, bf16 = torch.cpu.get_capabilities(), cpu_bf16_unit()
    units = torch.backends.cpu.get_cpu_capability() + (f", {bf16}" if bf16 else "")
    return f"{caps.get('cpu_name') or 'CPU'} ({caps.get('num_logical_cores')} cores, {units})"
