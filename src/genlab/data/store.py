"""Arrays in safetensors files, written as a stream and read through a memory map: uint8 images, float32 latents.

A prepared split is one safetensors file (labels, attributes, images). Its images are never loaded whole:
`Images` maps the file for each read and copies out only the rows asked for, so a stage's memory does not
grow with the dataset (100,000 64x64 RGB images are 1.2 GB on disk, a batch of them 0.8 MB).

The file is written without holding the images in memory: the safetensors header (8-byte little-endian
length, a JSON header padded with spaces to a multiple of 8, then the tensors' bytes back to back) is
computed from the shapes, then every tensor's bytes are streamed after it. The int64 tensors come first, so
each stays 8-byte aligned, as safetensors itself orders them.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.errors import GenlabError, StorageError

DTYPES = {"U8": np.uint8, "I64": np.int64, "F32": np.float32}  # the safetensors dtype codes genlab writes
# Scattered rows read through one map. A fault on a mapped file maps the whole page-cache folio around it (up
# to 2 MB), and mapped pages count as resident: 2,048 scattered 12 KB rows of a 1.2 GB file raised a process's
# peak RSS by 1.07 GB (measured; MADV_RANDOM did not change it). 256 rows per map bound that to ~130 MB.
MAP_ROWS = 256


def to_float(u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]: x = u / 127.5 - 1 (`to_uint8` inverts it exactly)."""
    return u8.to(torch.float32) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> [0, 255] uint8, same shape: u = round((x + 1) * 127.5)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@dataclass(frozen=True)
class Entry:
    """One tensor to stream: its name, safetensors dtype code, shape and the bytes in row-major order."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: Iterable[np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(DTYPES[self.dtype]).itemsize


def header(entries: list[Entry], metadata: dict[str, str]) -> bytes:
    """The 8-byte length and the padded JSON header of a safetensors file holding `entries` in order."""
    table: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for e in entries:
        table[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    text = json.dumps(table, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text


def write(path: Path, entries: list[Entry], metadata: dict[str, str] | None = None) -> None:
    """Stream `entries` into a new safetensors file at `path` (inside a staged directory: the caller makes it
    atomic). Each entry must yield exactly its shape's bytes, as the dtype it names."""
    try:
        with open(path, "wb") as f:
            f.write(header(entries, metadata or {}))
            for e in entries:
                written = 0
                for chunk in e.chunks:
                    arr = np.ascontiguousarray(chunk, dtype=DTYPES[e.dtype])
                    f.write(arr.tobytes())
                    written += arr.nbytes
                if written != e.nbytes:
                    raise ValueError(f"{path}: tensor {e.name!r} got {written} bytes, its shape {e.shape} needs "
                                     f"{e.nbytes}")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise StorageError(f"{path}: cannot write ({e.strerror or e})") from e


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where its data starts."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        table = json.loads(f.read(n))
    return table, 8 + n


class Rows:
    """An (N, ...) array stored in a file at a byte offset, read through a memory map per access.

    `rows.read(idx)` (an int, a slice, or an index tensor/array) copies the rows asked for. Each read maps the
    file, copies the rows and closes the map, so no page of the file stays resident in the process; scattered
    rows are read `MAP_ROWS` per map."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: str = "U8") -> None:
        self.path, self.offset, self.shape, self.dtype = Path(path), offset, tuple(int(s) for s in shape), dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.name}, {self.shape}, {self.dtype})"

    def read(self, idx: int | slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        np_dtype = DTYPES[self.dtype]
        if isinstance(idx, torch.Tensor):
            idx = idx.numpy()
        if isinstance(idx, np.ndarray) and idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if not len(self):
            return torch.from_numpy(np.zeros((0, *self.shape[1:]), dtype=np_dtype)[idx])
        if isinstance(idx, np.ndarray) and len(idx) > MAP_ROWS:  # scattered rows: a bounded number per map
            return torch.cat([self.read(idx[i:i + MAP_ROWS]) for i in range(0, len(idx), MAP_ROWS)])
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = np.frombuffer(mm, np_dtype, count=math.prod(self.shape), offset=self.offset).reshape(self.shape)
            rows = np.array(view[idx])  # a copy
            del view  # the map's only export: closing it at the end of `with` unmaps it now (BufferError if not)
        return torch.from_numpy(rows)

    def chunks(self, size: int = 4096) -> Iterator[torch.Tensor]:
        """Every row in order, `size` at a time, as stored."""
        for start in range(0, len(self), size):
            yield self.read(slice(start, start + size))


class Images(Rows):
    """(N, C, S, S) uint8 images: `images[idx]` is float32 in [-1, 1], what the networks take; `images.uint8(idx)`
    the stored bytes."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...]) -> None:
        super().__init__(path, offset, shape, "U8")

    def uint8(self, idx: int | slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.read(idx)

    def __getitem__(self, idx: int | slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        return to_float(self.read(idx))

    def all(self) -> torch.Tensor:
        """Every image as one float tensor: for small splits only (a test split, a sample set)."""
        return self[:]


class ResidentImages:
    """A split's images held as one uint8 tensor on a device: `images[idx]` gathers and converts there (the same
    float32 values as `Images[idx]`), with no file read and no host-to-device copy per training step."""

    def __init__(self, images: Images, device: torch.device, chunk: int = 4096) -> None:
        self.shape = images.shape
        self.u8 = torch.empty(self.shape, dtype=torch.uint8, device=device)
        for start, rows in zip(range(0, len(images), chunk), images.chunks(chunk), strict=True):
            self.u8[start : start + len(rows)] = rows.to(device)  # copied in chunks: no full host copy

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: int | slice | torch.Tensor) -> torch.Tensor:
        if isinstance(idx, torch.Tensor):
            idx = idx.to(self.u8.device)
        return to_float(self.u8[idx])


Batches = Images | ResidentImages | torch.Tensor  # what a training step indexes for its images: x[idx] in [-1, 1]

RESIDENT_FRACTION = 0.25  # a split moves onto the GPU when its bytes take at most this share of free memory


def training_images(images: Images, device: torch.device) -> Images | ResidentImages:
    """What a training step reads its batches from: on CUDA the split resident on the GPU when it fits in
    RESIDENT_FRACTION of the free memory (98,000 64-px RGB images: 1.2 GB); otherwise (and on CPU, where the
    memory map keeps RSS flat) the memory-mapped split."""
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    return ResidentImages(images, device) if math.prod(images.shape) <= RESIDENT_FRACTION * free else images


def images_of(path: Path, key: str = "images") -> Images:
    """The uint8 (N, C, S, S) tensor `key` of a safetensors file, memory-mapped."""
    table, start = read_header(path)
    spec = table.get(key)
    if not isinstance(spec, dict) or spec.get("dtype") != "U8" or len(spec.get("shape", ())) != 4:
        raise GenlabError(f"{path}: {key}: expected a uint8 (N, C, S, S) tensor, got "
                          f"{spec.get('dtype') if isinstance(spec, dict) else 'none'} "
                          f"{tuple(spec.get('shape', ())) if isinstance(spec, dict) else ''}; rerun `genlab prepare`")
    return Images(path, start + spec["data_offsets"][0], tuple(spec["shape"]))


def rows_of(path: Path, key: str, dtype: str) -> Rows:
    """The tensor `key` (of safetensors dtype `dtype`) of a file written by `write`, memory-mapped."""
    table, start = read_header(path)
    spec = table[key]
    if spec["dtype"] != dtype:
        raise GenlabError(f"{path}: {key}: expected {dtype}, got {spec['dtype']}")
    return Rows(path, start + spec["data_offsets"][0], tuple(spec["shape"]), dtype)
