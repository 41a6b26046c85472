"""Where every stage reads and writes, relative to the project root (where dvc.yaml lives)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from genlab.errors import GenlabError, StorageError


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


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write a file durably and atomically: readers see the old or the new content, never half of it,
    and once this returns the new content survives a crash or power cut.

    The temporary sibling has a unique name (two writers never collide) and is fsynced before
    `os.replace`; the directory is fsynced after. A failed write (e.g. ENOSPC) removes the temporary
    file, leaves the previous content in place and raises `StorageError` naming the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        try:
            _write_all(fd, data.encode() if isinstance(data, str) else data)
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"{path}: cannot write ({e.strerror or e}); the previous {path.name}, if any, "
                           "is intact") from e
    fsync_dir(path.parent)


def stale_temporaries(path: Path) -> list[Path]:
    """Temporary siblings of `path` that a killed writer left behind (see `atomic_write`, `staged_dir`)."""
    return sorted(path.parent.glob(f".{path.name}.*")) if path.parent.is_dir() else []


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Write a directory output into a temporary sibling, then swap it in whole.

    A failure leaves no partial output behind and never deletes the previous finished one; a process
    killed between the two renames of the swap leaves the previous output as `.<name>.old`, which the
    next call puts back. Files written with `atomic_write` are durable; the swap is fsynced too. The
    caller owns `final` (DVC's lock): temporaries left by a killed writer are removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.old")
    if old.is_dir() and not final.exists():
        old.rename(final)  # a swap interrupted between its two renames: the previous output comes back
    for stale in stale_temporaries(final):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
    except StorageError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(e.__cause__, "strerror", None) or e
        raise StorageError(f"{final}: its new version could not be written ({reason}); the previous {final.name} "
                           "is intact") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(tmp)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def read_json(path: Path, keys: tuple[str, ...], stage: str) -> dict:
    """A JSON object that stage `stage` wrote, with at least `keys`; anything else is refused with one line
    naming the file (and the missing keys) and the stage to re-run."""
    if not path.is_file():
        raise GenlabError(f"{path}: not found (run `genlab {stage}` first)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GenlabError(f"{path}: not valid JSON ({e}); rerun `genlab {stage}`") from None
    if not isinstance(data, dict):
        raise GenlabError(f"{path}: expected a JSON object; rerun `genlab {stage}`")
    missing = [k for k in keys if k not in data]
    if missing:
        raise GenlabError(f"{path}: missing key(s) {', '.join(missing)}; rerun `genlab {stage}`")
    return data
