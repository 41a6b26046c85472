"""The user's own image files as uint8 arrays: an image folder, MNIST-style IDX files, CIFAR-10 (binary) and .npz.

`scan` checks a source's files (headers, sizes, magic numbers, labels) without decoding every image;
`Scan.decode` streams (indices, images) chunks, every image made by `fit`: one crop/resize path for all sources.
No network, no pickle: CIFAR-10's python version is refused and .npz arrays are read with allow_pickle=False.
"""

from __future__ import annotations

import gzip
import logging
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from genlab.errors import GenlabError

log = logging.getLogger(__name__)

SOURCES = ("image_folder", "mnist", "cifar10", "npz")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
EXPECTS = {
    "image_folder": "image_folder expects a directory of images, one sub-folder per class (or flat: unlabelled)",
    "mnist": "mnist expects a directory with train-images-idx3-ubyte and train-labels-idx1-ubyte (optionally "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte), each possibly gzipped (.gz)",
    "cifar10": "cifar10 expects the binary version: a directory with data_batch_1.bin ... data_batch_5.bin and "
    "test_batch.bin (or its cifar-10-batches-bin/ sub-folder)",
    "npz": "npz expects a .npz file with a uint8 array images (N,H,W) or (N,H,W,C), C in 1, 3, 4, optional "
    "integer labels (N,) and string class_names",
}
_IMAGES_WANTED = "expected dtype uint8 with shape (N,H,W) or (N,H,W,C), C in 1, 3, 4"

Reader = Callable[[int], Iterator[np.ndarray]]  # chunk -> consecutive (n <= chunk, H, W[, C]) uint8 row blocks


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _composite(px: np.ndarray) -> np.ndarray:
    """(..., K+1) uint8 with alpha last -> (..., K) over black: round(v * a / 255), exact (255 is odd: no ties)."""
    v = px[..., :-1].astype(np.uint32) * px[..., -1:].astype(np.uint32)
    return ((v + 127) // 255).astype(np.uint8)


def _grey_or_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 'L' or 'RGB'; alpha (or palette/tRNS transparency) is composited over black."""
    mode = img.mode
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        # 16-bit grey (I;16, I;16B, ...), 32-bit int 'I' and float 'F' all read as 0..65535: round(v * 255 / 65535)
        v = np.nan_to_num(np.asarray(img).astype(np.float64), nan=0.0)
        return Image.fromarray(np.floor(np.clip(v, 0, 65535) / 257 + 0.5).astype(np.uint8))
    if "A" in mode or "a" in mode or "transparency" in img.info:
        if mode in ("L", "LA", "La"):
            return Image.fromarray(np.ascontiguousarray(_composite(np.asarray(img.convert("LA")))[..., 0]))
        return Image.fromarray(_composite(np.asarray(img.convert("RGBA"))))
    return img if mode in ("L", "RGB") else img.convert("RGB")  # P, CMYK, YCbCr, RGBX, ...: PIL's conversion


def fit(img: Image.Image, channels: int, size: int) -> np.ndarray:
    """(channels, size, size) uint8: EXIF orientation applied, grey or RGB (alpha over black), centre-cropped to a
    square (left = (w - s) // 2: an odd extra pixel stays right/bottom), PIL bilinear (antialiased) resize to size."""
    if channels not in (1, 3) or size < 1:
        raise GenlabError(f"channels {channels}, size {size}: expected channels 1 or 3 and size >= 1")
    img = _grey_or_rgb(ImageOps.exif_transpose(img))
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)  # RGB -> L: ITU-R 601-2 luma; L -> RGB: replicated
    w, h = img.size
    s = min(w, h)
    if (w, h) != (s, s):
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if s != size:
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    px = np.asarray(img)
    return np.ascontiguousarray(px[None] if channels == 1 else px.transpose(2, 0, 1))


def _fit_rows(rows: np.ndarray, channels: int, size: int) -> np.ndarray:
    """(n, H, W[, C]) uint8 rows -> (n, channels, size, size) through `fit` (skipped when it would change nothing)."""
    if rows.ndim == 4 and rows.shape[3] == 1:
        rows = rows[..., 0]
    n, h, w = rows.shape[:3]
    if h == w == size and (rows.ndim == 3 or (rows.shape[3] == 3 and channels == 3)):
        same = rows[:, None] if rows.ndim == 3 else rows.transpose(0, 3, 1, 2)  # identical to fit: no crop/resize
        return np.ascontiguousarray(np.broadcast_to(same, (n, channels, size, size)))
    out = np.empty((n, channels, size, size), np.uint8)
    for i in range(n):
        out[i] = fit(Image.fromarray(np.ascontiguousarray(rows[i])), channels, size)  # L, RGB or RGBA
    return out


def _load(path: Path, channels: int, size: int) -> np.ndarray:
    with warnings.catch_warnings():  # a decompression bomb (over PIL's MAX_IMAGE_PIXELS) is a bad file, not a warning
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            return fit(img, channels, size)


def _reason(path: Path, exc: Exception) -> str:
    if path.is_file() and path.stat().st_size == 0:
        return "empty file (0 bytes)"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can identify"
    return _one_line(f"{type(exc).__name__}: {exc}")


@dataclass
class Scan:
    source: str
    path: Path
    count: int  # items found (files, or rows of the arrays)
    labels: np.ndarray | None  # (count,) int64 in [0, len(class_names)), or None: unlabelled
    class_names: list[str] | None  # None when unlabelled
    native_channels: int  # 1 or 3: what the data itself has
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason), filled by `decode`
    files: list[Path] = field(default_factory=list, repr=False)  # image_folder: the file of each item
    reader: Reader | None = field(default=None, repr=False)  # array sources: streams their rows

    def decode(self, channels: int, size: int, on_bad_file: str = "skip", chunk: int = 1024
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (indices (n,) int64, images (n, channels, size, size) uint8) chunks in index order.

        image_folder: a file PIL cannot open or fully load is logged, appended to `skipped` (reset per decode) and
        never yielded; with on_bad_file="error" it raises GenlabError instead."""
        if channels not in (1, 3) or size < 1 or chunk < 1:
            raise GenlabError(f"channels {channels}, size {size}, chunk {chunk}: expected channels 1 or 3, "
                              "size >= 1 and chunk >= 1")
        if on_bad_file not in ("skip", "error"):
            raise GenlabError(f"on_bad_file {on_bad_file!r}: expected 'skip' or 'error'")
        self.skipped.clear()  # in place: callers may hold this list
        if self.reader is not None:
            return self._decode_rows(self.reader, channels, size, chunk)
        return self._decode_files(channels, size, on_bad_file, chunk)

    def _decode_rows(self, reader: Reader, channels: int, size: int, chunk: int
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        start = 0
        for rows in reader(chunk):
            yield np.arange(start, start + len(rows), dtype=np.int64), _fit_rows(rows, channels, size)
            start += len(rows)

    def _decode_files(self, channels: int, size: int, on_bad_file: str, chunk: int
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for a in range(0, self.count, chunk):
            b = min(a + chunk, self.count)
            images, good = np.empty((b - a, channels, size, size), np.uint8), []
            for i in range(a, b):
                f = self.files[i]
                try:
                    images[len(good)] = _load(f, channels, size)
                except MemoryError:
                    raise
                except Exception as exc:  # PIL raises many types for a malformed file
                    reason = _reason(f, exc)
                    if on_bad_file == "error":
                        raise GenlabError(f"{f}: not a readable image ({reason}); on_bad_file 'skip' skips such "
                                          "files") from exc
                    log.warning("%s: skipped: %s", f, reason)
                    self.skipped.append((str(f), reason))
                    continue
                good.append(i)
            if good:
                yield np.array(good, np.int64), images[: len(good)]


def _missing(source: str, p: Path, what: str = "not found") -> GenlabError:
    return GenlabError(f"data.path {p}: {what}; {EXPECTS[source]}")


def _files_under(d: Path) -> list[Path]:
    """Regular, non-hidden files under `d` (recursively, hidden folders skipped), sorted by relative path."""
    out = []
    for root, dirs, names in os.walk(d):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        out += [Path(root, n) for n in names if not n.startswith(".") and Path(root, n).is_file()]
    return sorted(out, key=lambda f: f.relative_to(d).as_posix())


def _scan_folder(p: Path) -> Scan:
    if not p.is_dir():
        raise _missing("image_folder", p, "not a directory" if p.exists() else "not found")
    entries = sorted((e for e in p.iterdir() if not e.name.startswith(".")), key=lambda e: e.name)
    dirs, files = [e for e in entries if e.is_dir()], [e for e in entries if e.is_file()]
    if dirs and files:
        raise GenlabError(f"data.path {p}: has both files (e.g. {files[0].name}) and sub-folders (e.g. "
                          f"{dirs[0].name}); image_folder expects either one sub-folder per class or only images")
    if files:
        return Scan("image_folder", p, len(files), None, None, 3, files=files)
    if not dirs:
        raise _missing("image_folder", p, "no files")
    items: list[Path] = []
    labels: list[int] = []
    for k, d in enumerate(dirs):
        found = _files_under(d)
        if not found:
            raise GenlabError(f"{d}: class folder has no files; {EXPECTS['image_folder']}")
        items += found
        labels += [k] * len(found)
    return Scan("image_folder", p, len(items), np.array(labels, np.int64), [d.name for d in dirs], 3, files=items)


def _read_idx(f: Path, magic: int, dims: int, what: str) -> np.ndarray:
    """IDX: big-endian >u4 magic, then `dims` >u4 sizes, then uint8 data -> (n, ...) uint8 (memmap unless .gz)."""
    hlen = 4 + 4 * dims
    raw = b""
    if f.suffix == ".gz":
        try:
            with gzip.open(f) as g:
                raw = g.read()
        except (OSError, EOFError, zlib.error) as exc:
            raise GenlabError(f"{f}: not a readable gzip file ({_one_line(exc)})") from exc
        head, total = raw[:hlen], len(raw)
    else:
        with open(f, "rb") as fh:
            head, total = fh.read(hlen), f.stat().st_size
    found = int.from_bytes(head[:4], "big")
    if len(head) >= 4 and found != magic:
        raise GenlabError(f"{f}: expected IDX magic 0x{magic:08x} ({what}), found 0x{found:08x}")
    if len(head) < hlen:
        raise GenlabError(f"{f}: truncated: {total} bytes, expected at least the {hlen}-byte IDX header")
    shape = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    need = hlen + int(np.prod(shape))
    said = f"header says {what} of shape {shape}"
    if int(np.prod(shape)) == 0:
        raise GenlabError(f"{f}: {said}: no data; expected at least one {what[:-1]}")
    if total != need:
        kind = "truncated" if total < need else "longer than its header says"
        raise GenlabError(f"{f}: {kind}: expected {need} bytes ({said}), found {total}")
    if raw:
        return np.frombuffer(raw, np.uint8, count=need - hlen, offset=hlen).reshape(shape)
    return np.memmap(f, np.uint8, "r", offset=hlen, shape=shape)


def _blocks(blocks: list[np.ndarray]) -> Reader:
    def read(chunk: int) -> Iterator[np.ndarray]:
        for block in blocks:
            for a in range(0, len(block), chunk):
                yield block[a: a + chunk]
    return read


def _scan_mnist(p: Path) -> Scan:
    if not p.is_dir():
        raise _missing("mnist", p, "not a directory" if p.exists() else "not found")

    def find(name: str) -> Path | None:
        return next((c for c in (p / name, p / f"{name}.gz") if c.is_file()), None)

    blocks, labels = [], []
    for split in ("train", "t10k"):
        fi, fl = find(f"{split}-images-idx3-ubyte"), find(f"{split}-labels-idx1-ubyte")
        if split == "t10k" and fi is None and fl is None:
            break
        if fi is None or fl is None:
            raise _missing("mnist", p, f"no {split}-{'images-idx3' if fi is None else 'labels-idx1'}-ubyte[.gz]")
        images, lab = _read_idx(fi, 0x803, 3, "images"), _read_idx(fl, 0x801, 1, "labels")
        if len(lab) != len(images):
            raise GenlabError(f"{fl}: {len(lab)} labels, expected one per image of {fi} ({len(images)})")
        blocks.append(images)
        labels.append(np.asarray(lab).astype(np.int64))
    y = np.concatenate(labels)
    names = [str(i) for i in range(int(y.max()) + 1)]
    return Scan("mnist", p, len(y), y, names, 1, reader=_blocks(blocks))


def _scan_cifar(p: Path) -> Scan:
    if not p.is_dir():
        raise _missing("cifar10", p, "not a directory" if p.exists() else "not found")
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    d = next((x for x in (p, p / "cifar-10-batches-bin") if any((x / n).is_file() for n in names[:5])), None)
    if d is None:
        py = [p, p / "cifar-10-batches-py"]
        if p.name == "cifar-10-batches-py" or any((x / "data_batch_1").is_file() for x in py) or py[1].is_dir():
            raise GenlabError(f"data.path {p}: this is CIFAR-10's python version, a pickle that genlab never loads; "
                              "use the binary version (cifar-10-binary.tar.gz: data_batch_1.bin ... test_batch.bin)")
        raise _missing("cifar10", p, "no data_batch_*.bin")
    blocks, labels = [], []
    for f in (d / n for n in names if (d / n).is_file()):
        size = f.stat().st_size
        if size == 0 or size % 3073:
            raise GenlabError(f"{f}: truncated: {size} bytes is not a whole number of 3073-byte records")
        rec = np.memmap(f, np.uint8, "r", shape=(size // 3073, 3073))  # label byte, 1024 R, 1024 G, 1024 B
        lab = np.asarray(rec[:, 0]).astype(np.int64)
        bad = np.flatnonzero(lab >= 10)
        if bad.size:
            raise GenlabError(f"{f}: record {bad[0]} has label {lab[bad[0]]}; expected a label in 0..9")
        blocks.append(rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # views: (n, 32, 32, 3)
        labels.append(lab)
    meta = d / "batches.meta.txt"
    given = [s.strip() for s in meta.read_text().splitlines() if s.strip()] if meta.is_file() else []
    y = np.concatenate(labels)
    return Scan("cifar10", p, len(y), y, given if len(given) == 10 else list(CIFAR10_CLASSES), 3,
                reader=_blocks(blocks))


def _npy_header(fh: IO[bytes], p: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse a .npy member's header only (nothing is unpickled): shape, fortran order, dtype."""
    try:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read(fh)
    except (ValueError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        raise GenlabError(f"{p}: images: not a readable .npy array ({_one_line(exc)})") from exc


def _npz_reader(p: Path, shape: tuple[int, ...], fortran: bool) -> Reader:
    def read(chunk: int) -> Iterator[np.ndarray]:
        if fortran:  # rows are not contiguous on disk: load the array whole
            with np.load(p, allow_pickle=False) as z:
                images = z["images"]
            yield from _blocks([images])(chunk)
            return
        row = int(np.prod(shape[1:]))
        with zipfile.ZipFile(p) as zf, zf.open("images.npy") as fh:  # streamed: one chunk of rows in memory
            _npy_header(fh, p)
            for a in range(0, shape[0], chunk):
                n = min(chunk, shape[0] - a)
                try:
                    buf = fh.read(n * row)
                except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise GenlabError(f"{p}: images: unreadable at row {a} ({_one_line(exc)})") from exc
                if len(buf) != n * row:
                    raise GenlabError(f"{p}: images: truncated at row {a}: expected {shape[0]} rows of {row} bytes")
                yield np.frombuffer(buf, np.uint8).reshape((n, *shape[1:]))
    return read


def _scan_npz(p: Path) -> Scan:
    if not p.is_file():
        raise _missing("npz", p, "not a file" if p.exists() else "not found")
    try:
        with zipfile.ZipFile(p) as zf:
            keys = [n.removesuffix(".npy") for n in zf.namelist()]
            if "images" not in keys:
                raise GenlabError(f"{p}: no array 'images' (found: {', '.join(keys) or 'none'}); {EXPECTS['npz']}")
            info = zf.getinfo("images.npy")
            with zf.open(info) as fh:
                shape, fortran, dtype = _npy_header(fh, p)
                offset = fh.tell()
    except (zipfile.BadZipFile, OSError) as exc:
        raise GenlabError(f"{p}: not a .npz (zip) archive ({_one_line(exc)}); {EXPECTS['npz']}") from exc
    if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)) or \
            0 in shape:
        raise GenlabError(f"{p}: images: {_IMAGES_WANTED} (N, H, W >= 1); found dtype {dtype} shape {shape}")
    if info.file_size != offset + int(np.prod(shape)):
        raise GenlabError(f"{p}: images: expected {offset + int(np.prod(shape))} bytes for shape {shape}, "
                          f"found {info.file_size}")
    got: dict[str, np.ndarray] = {}
    with np.load(p, allow_pickle=False) as z:
        for key in ("labels", "class_names"):
            try:
                if key in z:
                    got[key] = z[key]
            except ValueError as exc:  # e.g. an object array: it would need pickle
                raise GenlabError(f"{p}: {key}: {_one_line(exc)}; genlab never loads pickled arrays") from exc
    labels, names = got.get("labels"), got.get("class_names")
    if labels is not None:
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (shape[0],) or labels.min() < 0:
            low = f", min {labels.min()}" if np.issubdtype(labels.dtype, np.integer) and labels.size else ""
            raise GenlabError(f"{p}: labels: expected integers >= 0 of shape ({shape[0]},); found dtype "
                              f"{labels.dtype} shape {labels.shape}{low}")
        labels = labels.astype(np.int64)
        top = int(labels.max())
        if names is None:
            names = np.array([str(i) for i in range(top + 1)])
        elif names.ndim != 1 or names.dtype.kind != "U" or len(names) <= top:
            raise GenlabError(f"{p}: class_names: expected a 1-D string array of more than {top} names (the largest "
                              f"label); found dtype {names.dtype} shape {names.shape}")
    elif names is not None:
        raise GenlabError(f"{p}: class_names given without labels; expected labels (N,) with them")
    channels = 1 if len(shape) == 3 or shape[3] == 1 else 3
    return Scan("npz", p, shape[0], labels, None if names is None else [str(s) for s in names], channels,
                reader=_npz_reader(p, shape, fortran))


def scan(source: str, path: str | Path) -> Scan:
    """Find and check the files of `source` under `path` without decoding every image; refusals are one line."""
    scanners = {"image_folder": _scan_folder, "mnist": _scan_mnist, "cifar10": _scan_cifar, "npz": _scan_npz}
    if source not in scanners:
        raise GenlabError(f"data.source {source!r}: unknown; expected one of {', '.join(SOURCES)}")
    return scanners[source](Path(path))
