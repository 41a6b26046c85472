"""How torch's CPU threads wait for each other, chosen from the machine's load before torch is imported.

libgomp (torch's OpenMP) reads `OMP_WAIT_POLICY` once, when torch loads it. By default a thread that finishes its
share of a parallel region spins before it sleeps; when another process holds a core, the spinning thread and the
one that shares a core with that process stall each other. Measured by `bench/threads.py` (2 cores, 2 threads, a
busy single-threaded process beside it): a latent U-Net training step took 4.1x its idle time with the default
policy and 1.24x with `PASSIVE` (a waiting thread sleeps at once), which costs 8-19% when the machine is idle.

So a stage process asks for `PASSIVE` when other processes keep at least half a core busy as it starts, and leaves
libgomp's default otherwise. The policy changes when threads sleep, never what they compute: the bits are the same
either way (the thread count, which does change them, is the `compute.threads` param). A user's own
`OMP_WAIT_POLICY` always wins.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path

BUSY_CORES = 0.5  # other processes' load, in cores, from which threads sleep instead of spinning
STAT = Path("/proc/stat")


def busy_cores(interval: float = 0.2, stat: Path = STAT) -> float | None:
    """The cores kept busy by other processes over `interval` seconds (this one sleeps meanwhile): the machine's
    non-idle CPU time over wall time, from /proc/stat's `cpu` line; None where there is no /proc/stat."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # user nice system idle iowait irq softirq steal (guest is in user)

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def choose_wait_policy(env: MutableMapping[str, str] = os.environ, busy: float | None = None,
                       torch_loaded: bool | None = None) -> str:
    """Set `OMP_WAIT_POLICY=PASSIVE` in `env` when the machine is busy and the user has not chosen a policy; the
    policy in force, for the log ("default": libgomp's spin-then-sleep)."""
    if "OMP_WAIT_POLICY" in env:
        return env["OMP_WAIT_POLICY"]
    if "torch" in sys.modules if torch_loaded is None else torch_loaded:
        return "default"  # too late: libgomp has read the environment (a stage run inside another process)
    busy = busy_cores() if busy is None else busy
    if busy is not None and busy >= BUSY_CORES:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        return "PASSIVE"
    return "default"
