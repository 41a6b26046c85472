"""Many processes, one training run: `torchrun` starts N copies of a training stage, and they train as one.

Data parallelism with the one-process semantics kept: every rank draws the *global* batch's indices and
randomness from (seed, step) exactly as one process would, and computes on its own contiguous rows of it
(`World.rows`). DistributedDataParallel averages the gradients, so with equal shards the update is that of
the global batch mean: (1/W) sum_r (W/B) sum_{i in r} grad l_i = (1/B) sum_i grad l_i. Batch norm computes
its statistics over the global batch too (`GlobalBatchNorm`). Only rank 0 logs, checkpoints and writes
outputs; the others train and exit. gloo on CPU, nccl on CUDA (one device per process, LOCAL_RANK).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import os
import signal
from dataclasses import dataclass

import torch
from torch import nn

from genlab.errors import ConfigError

# rank 0 does the stage's single-process work (FIDs, pictures) while the others wait at the next collective
TIMEOUT = datetime.timedelta(hours=4)


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank `rank` of `size` (one process: 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs, checkpoints and writes the stage's outputs."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's contiguous rows of a global batch of n (n divisible by size; one process: all of them)."""
        if n % self.size:
            raise ConfigError(f"a global batch of {n} does not split over {self.size} processes: "
                              f"set batch_size to a multiple of {self.size}")
        k = n // self.size
        return slice(self.rank * k, (self.rank + 1) * k)

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module training calls: DDP over it (batch norms made global) when there are several processes,
        the module itself otherwise. Buffers are not broadcast: they stay equal on every rank by construction
        (global batch statistics; spectral norm's power iteration depends on the weights only)."""
        if self.size == 1:
            return module
        global_batch_norms(module)
        device = next(module.parameters()).device
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                                   else None, broadcast_buffers=False)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of `values` over the ranks (one process: `values`)."""
        if self.size == 1:
            return values
        out = values.clone()
        torch.distributed.all_reduce(out)
        return out / self.size

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()


def join(device: torch.device) -> tuple[World, torch.device]:
    """This process's World from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK), its process group
    opened, and the device it computes on (CUDA: the LOCAL_RANK-th card). Without torchrun: World() and
    `device`."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    die_with_launcher()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return World(rank, size), device


def die_with_launcher() -> None:
    """Linux: this rank is killed when its launcher dies (prctl PR_SET_PDEATHSIG). torch's launcher starts each
    rank in a session of its own, so a SIGKILL of the stage's process group (a supervisor's, an OOM kill) would
    leave the ranks training on, and their end would delete the checkpoint the re-run must resume from."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux
        return


def leave(world: World) -> None:
    if world.size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (Ioffe & Szegedy 2015, Alg. 1-2).

    Each rank's per-channel count n_r, mean m_r and sum of squared deviations M2_r are gathered (differentiably:
    torch.distributed.nn's all_gather sends the gradients back) and merged as in Chan et al. (1979):
    N = sum n_r, mean = sum n_r m_r / N, M2 = sum (M2_r + n_r (m_r - mean)^2), var = M2 / N (biased, to
    normalise); the running variance takes the unbiased M2 / (N - 1). Not sum(x^2)/N - mean^2: on images whose
    background is constant, var << mean^2 and that difference cancels. CPU and CUDA alike (torch's SyncBatchNorm
    is CUDA only). Same parameters and buffers as BatchNorm2d: checkpoints and snapshots are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not torch.distributed.is_initialized():
            return super().forward(x)
        from torch.distributed.nn.functional import all_gather

        c = x.shape[1]
        n = torch.full((1,), float(x.shape[0] * x.shape[2] * x.shape[3]), device=x.device, dtype=torch.float64)
        local_mean = x.mean((0, 2, 3))
        local_m2 = (x - local_mean.view(1, c, 1, 1)).pow(2).sum((0, 2, 3))
        parts = torch.stack(all_gather(torch.cat([n, local_mean.double(), local_m2.double()])))  # (W, 1 + 2C)
        counts, means, m2s = parts[:, :1], parts[:, 1 : 1 + c], parts[:, 1 + c :]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        m2 = (m2s + counts * (means - mean).pow(2)).sum(0)
        var = m2 / total
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.to(x.dtype))
            self.running_var.mul_(1 - m).add_(m * (m2 / (total - 1)).to(x.dtype))
        shape = (1, c, 1, 1)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype).view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def global_batch_norms(module: nn.Module) -> None:
    """Make every BatchNorm2d in `module` a GlobalBatchNorm, in place (same state, same results in one
    process)."""
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            if not (m.track_running_stats and m.momentum is not None):
                raise ValueError("GlobalBatchNorm needs running statistics with a momentum")
            m.__class__ = GlobalBatchNorm


def no_sync(net: nn.Module) -> contextlib.AbstractContextManager:
    """Inside: backward passes through `net` keep their gradients local (DDP's no_sync; one process: no-op),
    for micro-batches before the last one, or gradients that are never applied."""
    return net.no_sync() if isinstance(net, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()
