"""Where every stage reads and writes, relative to the project root (where dvc.yaml lives)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def metrics(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}.json"

    def plot(self, stage: str) -> Path:
        return self.root / "plots" / f"{stage}.csv"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def checkpoint(self, stage: str) -> Path:
        """In-progress training state: survives a crash, outside DVC's outputs (which repro deletes)."""
        return self.root / "checkpoints" / f"{stage}.pt"


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Write a directory output into a temporary sibling, then swap it in whole.

    A failure leaves no partial output behind and never deletes the previous finished one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
