"""Keep the C heap from growing with the data a stage streams through.

glibc's malloc serves an allocation above its mmap threshold with a fresh mapping, returned to the system when
freed, but raises that threshold to the size of every such block freed (up to 32 MB): after the first one, the
batch-sized buffers of a streaming pass (a 32-image float batch at 64 px is 1.5 MB) come from the heap instead,
between small long-lived allocations (each batch's features), and the freed holes are not reused well enough.
Measured: extracting evaluator features of 98,000 64-px images grew RSS by ~60 KB per image, 6 GB in all; the
same loop over 3,200 images grew 393 MB with the dynamic threshold, 14 MB with it fixed, and ran no slower.

A loop that repeats the same large allocations (a training step, a sampler step) is the opposite case: each
activation above the threshold is a fresh mapping whose pages fault in again every step. Measured on 2 cores with the
threshold fixed at 128 KiB: the 32-px evaluator's training loop 1.72x slower (127 against 219 images/s), guided DDIM
1.54x slower. Those loops run under `heap_for_steps`, which lets blocks up to 32 MB come from the heap, where the
next step reuses them.

Above 32 px the heap costs more memory than it saves time: freed activations of 8 to 32 MB (a 32-image batch of
32 maps of 64x64 is 17 MB) fragment it. Measured on one step of each model at 64 px, against 8 MB: peak RSS
+0.05 to +0.09 GiB (train_gan 1.43 against 1.34 GiB, over the 1.5 GB bar), for 1.3x (VAE) to 1.55x (evaluator)
faster steps. A stage on images over 32 px (`set_steps_threshold`) takes blocks up to 8 MB from the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")  # NVIDIA, AMD ROCm, WSL's GPU
M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value; setting it explicitly turns off its dynamic adjustment
STEPS_THRESHOLD = 32 * 1024 * 1024  # the ceiling of glibc's dynamic threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
LARGE_STEPS_THRESHOLD = 8 * 1024 * 1024  # images over LARGE_OVER px
LARGE_OVER = 32
_steps_threshold = STEPS_THRESHOLD
_depth = 0  # heap_for_steps nests (a sampler inside a training loop's cheap FID): only the outermost restores


def set_mmap_threshold(size: int) -> bool:
    """glibc's mmap threshold for this process, fixed at `size` bytes; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        return False


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at 128 KiB for this process (call it early); False where there is no glibc."""
    return set_mmap_threshold(MMAP_THRESHOLD)


def set_steps_threshold(image_size: int) -> int:
    """The largest block `heap_for_steps` takes from the heap in this process, for a stage on `image_size`-px
    images: 32 MB, or 8 MB over 32 px (the module's docstring). Changes speed and memory, never a result."""
    global _steps_threshold
    _steps_threshold = LARGE_STEPS_THRESHOLD if image_size > LARGE_OVER else STEPS_THRESHOLD
    return _steps_threshold


@contextmanager
def heap_for_steps() -> Iterator[None]:
    """Blocks up to 32 MB (8 MB for images over 32 px: `set_steps_threshold`) from the heap for the duration of a
    loop of identical steps (training, sampling); the 128 KiB threshold again when the outermost such loop ends."""
    global _depth
    if _depth == 0:
        set_mmap_threshold(_steps_threshold)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            fix_mmap_threshold()


def skip_gpu_compiler() -> bool:
    """On a machine without a GPU, keep triton from loading (call it before torch is imported): triton compiles
    GPU kernels only (torch.compile on CPU generates C++), but `torchvision.ops` imports `torch._dynamo`, which
    imports it: 77 MB of every stage's resident memory (measured on 2 cores). False where a GPU device file
    exists or triton is already loaded."""
    if "triton" in sys.modules or any(Path(f).exists() for f in GPU_DEVICE_FILES):
        return False
    sys.modules["triton"] = None  # `import triton` raises ImportError; importlib.util.find_spec gives None
    return True
