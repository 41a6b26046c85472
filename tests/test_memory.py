"""genlab.memory: a streaming pass (batch-sized buffers freed every batch, a small result kept from each) keeps
RSS flat once glibc's mmap threshold is fixed; with glibc's dynamic threshold the same loop grows (the negative
control that shows the loop measures the effect)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from genlab.memory import fix_mmap_threshold

LOOP = """
import sys
from genlab.memory import fix_mmap_threshold
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
import torch

def rss_mb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024

import numpy as np

stored = np.random.default_rng(0).integers(0, 256, (1024, 3, 64, 64), dtype=np.uint8)  # a split's bytes
kept, start = [], None
for i in range(300):  # 9,600 64x64 RGB images in batches of 32, as a feature extraction reads them
    rows = (np.arange(32) + 32 * i) % len(stored)
    u8 = torch.from_numpy(np.array(stored[rows]))  # what store.Rows.read returns: a copy
    x = u8.float() / 127.5 - 1
    kept.append(x.mean((2, 3)))  # a small result per batch, kept
    if i == 10:
        start = rss_mb()
print(rss_mb() - start)
"""


def growth(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not fix_mmap_threshold(), reason="no glibc")
def test_fixed_mmap_threshold_keeps_a_streaming_pass_flat() -> None:
    dynamic, fixed = growth("dynamic"), growth("fixed")
    assert fixed < 40, f"RSS grew {fixed} MB over the pass with the threshold fixed"
    assert dynamic > 4 * max(fixed, 10), f"negative control: dynamic threshold grew only {dynamic} MB"
