"""genlab.data.formats: the user's own image files (folder, MNIST IDX, CIFAR-10 binary, .npz) read exactly."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genlab.data import formats
from genlab.data.formats import SOURCES, fit, scan
from genlab.errors import GenlabError


def refused(call, *needles: str) -> str:
    """`call()` raises GenlabError with a one-line message containing every needle."""
    with pytest.raises(GenlabError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def collect(s: formats.Scan, channels: int, size: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(s.decode(channels, size, **kw))
    return np.concatenate([i for i, _ in chunks]), np.concatenate([x for _, x in chunks])


# ---------------------------------------------------------------------------------------------------- fit


def test_fit_rgba_and_la_composite_over_black():
    rgba = Image.new("RGBA", (1, 1), (200, 100, 50, 128))
    assert fit(rgba, 3, 1)[:, 0, 0].tolist() == [round(v * 128 / 255) for v in (200, 100, 50)] == [100, 50, 25]
    # grey from colour: ITU-R 601-2 luma of the composited pixel, (R*19595 + G*38470 + B*7471 + 2**15) >> 16
    assert fit(rgba, 1, 1).tolist() == [[[(100 * 19595 + 50 * 38470 + 25 * 7471 + 2**15) >> 16]]] == [[[62]]]
    la = Image.new("LA", (1, 1), (100, 128))
    assert fit(la, 1, 1).tolist() == [[[50]]]
    assert fit(la, 3, 1)[:, 0, 0].tolist() == [50, 50, 50]
    assert fit(Image.new("RGBA", (1, 1), (9, 9, 9, 0)), 3, 1).sum() == 0


def test_fit_l_rgb_1_cmyk():
    assert fit(Image.new("L", (2, 2), 77), 1, 2).tolist() == [[[77, 77], [77, 77]]]
    grey3 = fit(Image.new("L", (2, 2), 77), 3, 2)
    assert grey3.shape == (3, 2, 2) and (grey3 == 77).all()
    rgb = Image.new("RGB", (1, 1), (10, 20, 30))
    assert fit(rgb, 3, 1)[:, 0, 0].tolist() == [10, 20, 30]
    assert fit(rgb, 1, 1).item() == (10 * 19595 + 20 * 38470 + 30 * 7471 + 2**15) >> 16 == 18
    one = Image.new("1", (2, 2), 0)
    one.putpixel((0, 0), 1)
    assert fit(one, 1, 2).tolist() == [[[255, 0], [0, 0]]]
    assert fit(Image.new("CMYK", (1, 1), (255, 0, 0, 0)), 3, 1)[:, 0, 0].tolist() == [0, 255, 255]
    assert fit(Image.new("CMYK", (1, 1), (0, 0, 0, 0)), 3, 1)[:, 0, 0].tolist() == [255, 255, 255]


def test_fit_palette_with_and_without_transparency():
    p = Image.new("P", (2, 2), 0)
    p.putpalette([255, 0, 0, 0, 255, 0])
    p.putpixel((1, 0), 1)
    p.putpixel((0, 1), 1)
    assert fit(p, 3, 2)[:, 0].tolist() == [[255, 0], [0, 255], [0, 0]]
    p.info["transparency"] = 1  # index 1 fully transparent -> black
    assert fit(p, 3, 2)[:, 0].tolist() == [[255, 0], [0, 0], [0, 0]]
    p.info["transparency"] = b"\xff\x80"  # per-index alpha: index 1 at 128 -> round(255 * 128 / 255)
    assert fit(p, 3, 2)[:, 0].tolist() == [[255, 0], [0, 128], [0, 0]]
    buf = io.BytesIO()
    p.save(buf, "PNG")  # the same through a real PNG (tRNS chunk)
    with Image.open(buf) as again:
        assert again.mode == "P"
        assert fit(again, 3, 2)[:, 0].tolist() == [[255, 0], [0, 128], [0, 0]]


def test_fit_16_bit_int_and_float_grey():
    i16 = Image.fromarray(np.array([[0, 257], [65535, 32768]], np.uint16))
    assert i16.mode == "I;16"
    assert fit(i16, 1, 2).tolist() == [[[0, 1], [255, 128]]]
    i16b = Image.frombytes("I;16B", (2, 1), np.array([257, 65535], ">u2").tobytes())
    assert fit(i16b, 1, 1).item() == 1  # centre crop of 2x1 keeps the left pixel
    assert fit(i16b.transpose(Image.Transpose.ROTATE_90), 3, 1)[:, 0, 0].tolist() == [255, 255, 255]
    i32 = Image.fromarray(np.array([[-5, 257], [70000, 65535]], np.int32))
    assert i32.mode == "I"
    assert fit(i32, 1, 2).tolist() == [[[0, 1], [255, 255]]]
    buf = io.BytesIO()
    Image.fromarray(np.array([[257, 65535], [0, 514]], np.uint16)).save(buf, "PNG")  # a 16-bit grey PNG
    with Image.open(buf) as png16:
        assert png16.mode.startswith("I")
        assert fit(png16, 1, 2).tolist() == [[[1, 255], [0, 2]]]
    f = Image.fromarray(np.array([[257.0, 65535.0], [np.nan, 1e9]], np.float32))
    assert f.mode == "F"
    assert fit(f, 1, 2).tolist() == [[[1, 255], [0, 255]]]


def test_fit_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (3, 2), (0, 0, 0))  # landscape, red top-left
    img.putpixel((0, 0), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # orientation 6: shown rotated 90 degrees clockwise
    img.save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as stored:
        assert stored.size == (3, 2)
        out = fit(stored, 3, 2)  # upright: 2 wide, 3 tall; the red pixel is now top-right; crop keeps rows 0..1
    assert out[:, 0, 1].tolist() == [255, 0, 0]
    assert int(out.sum()) == 255


def test_fit_centre_crop_and_resize():
    cols = np.tile(np.arange(6, dtype=np.uint8) * 10, (4, 1))  # 6 wide, 4 tall: pixel = 10 * column
    assert fit(Image.fromarray(cols), 1, 4)[0, 0].tolist() == [10, 20, 30, 40]
    cols7 = np.tile(np.arange(7, dtype=np.uint8) * 10, (4, 1))  # odd remainder: the extra column is on the right
    assert fit(Image.fromarray(cols7), 1, 4)[0, 0].tolist() == [10, 20, 30, 40]
    rows = np.tile(np.arange(7, dtype=np.uint8)[:, None] * 10, (1, 4))  # 4 wide, 7 tall
    assert fit(Image.fromarray(rows), 1, 4)[0, :, 0].tolist() == [10, 20, 30, 40]
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (6, 10, 3), dtype=np.uint8))
    out = fit(photo, 3, 4)
    assert out.shape == (3, 4, 4) and out.dtype == np.uint8
    want = photo.crop((2, 0, 8, 6)).resize((4, 4), Image.Resampling.BILINEAR, reducing_gap=None)
    assert (out.transpose(1, 2, 0) == np.asarray(want)).all()
    assert (fit(Image.new("RGB", (9, 13), (1, 2, 3)), 3, 5)[:, 2, 2] == [1, 2, 3]).all()
    assert fit(photo, 1, 16).shape == (1, 16, 16)
    refused(lambda: fit(photo, 2, 4), "channels 2")


# ---------------------------------------------------------------------------------------------------- image_folder

COLOURS = {"cat": [(255, 0, 0), (0, 255, 0), (0, 0, 255)], "dog": [(10, 20, 30), (40, 50, 60), (70, 80, 90)]}


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    for cls, colours in COLOURS.items():
        for name, c in zip(("a.png", "b.png", "more/c.png"), colours, strict=True):
            (root / cls / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (5, 5), c).save(root / cls / name)
    noisy = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (root / "cat" / "trunc.png").write_bytes(noisy[: len(noisy) // 2])
    (root / "cat" / "zero.png").write_bytes(b"")
    (root / "cat" / "notes.txt").write_text("not an image\n")
    (root / "cat" / ".DS_Store").write_bytes(b"junk")
    (root / "dog" / ".cache").mkdir()
    Image.new("RGB", (5, 5)).save(root / "dog" / ".cache" / "x.png")
    (root / ".hidden").mkdir()
    return root


def test_image_folder_classes_and_bad_files(folder, caplog):
    s = scan("image_folder", folder)
    assert (s.source, s.count, s.class_names, s.native_channels) == ("image_folder", 9, ["cat", "dog"], 3)
    assert [f.relative_to(folder).as_posix() for f in s.files] == [
        "cat/a.png", "cat/b.png", "cat/more/c.png", "cat/notes.txt", "cat/trunc.png", "cat/zero.png",
        "dog/a.png", "dog/b.png", "dog/more/c.png"]
    assert s.labels.dtype == np.int64 and s.labels.tolist() == [0] * 6 + [1] * 3
    idx, images = collect(s, 3, 5)
    assert idx.tolist() == [0, 1, 2, 6, 7, 8]
    assert images.shape == (6, 3, 5, 5)
    assert images[:, :, 0, 0].tolist() == [list(c) for c in COLOURS["cat"] + COLOURS["dog"]]
    assert (images == images[:, :, :1, :1]).all()
    reasons = dict(s.skipped)
    assert sorted(Path(f).name for f in reasons) == ["notes.txt", "trunc.png", "zero.png"]
    assert reasons[str(folder / "cat" / "zero.png")] == "empty file (0 bytes)"
    assert reasons[str(folder / "cat" / "notes.txt")] == "not an image file PIL can identify"
    assert "truncated" in reasons[str(folder / "cat" / "trunc.png")]
    assert sum("trunc.png" in r.getMessage() for r in caplog.records) == 1
    assert s.skipped == list(reasons.items()) and len(collect(s, 1, 2)[0]) == 6 and len(s.skipped) == 3  # reset
    grey = collect(s, 1, 5)[1]
    assert grey[:, 0, 0, 0].tolist() == [(r * 19595 + g * 38470 + b * 7471 + 2**15) >> 16
                                         for r, g, b in COLOURS["cat"] + COLOURS["dog"]]
    refused(lambda: collect(s, 3, 5, on_bad_file="error"), "notes.txt", "not an image file PIL can identify")
    refused(lambda: s.decode(3, 5, on_bad_file="ignore"), "on_bad_file")


def test_image_folder_decompression_bomb_is_a_bad_file(tmp_path, monkeypatch):
    Image.new("L", (8, 8), 3).save(tmp_path / "big.png")
    Image.new("L", (2, 2), 4).save(tmp_path / "small.png")
    s = scan("image_folder", tmp_path)
    for limit in (10, 40):  # 64 pixels: over twice the limit (an error in PIL), or over it (a warning in PIL)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        idx, images = collect(s, 1, 2)
        assert idx.tolist() == [1] and images[0, 0].tolist() == [[4, 4], [4, 4]]
        assert [Path(f).name for f, _ in s.skipped] == ["big.png"] and "DecompressionBomb" in s.skipped[0][1]


def test_image_folder_flat_mixed_hidden_missing(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (3, 3), (1, 2, 3)).save(flat / "x.png")
    Image.new("L", (4, 2), 9).save(flat / "y.weird", format="PNG")  # the extension is not checked
    (flat / ".thumbs").write_bytes(b"")
    s = scan("image_folder", str(flat))
    assert (s.count, s.labels, s.class_names) == (2, None, None)
    idx, images = collect(s, 3, 2)
    assert idx.tolist() == [0, 1] and images[0, :, 0, 0].tolist() == [1, 2, 3] and (images[1] == 9).all()
    (flat / "sub").mkdir()
    refused(lambda: scan("image_folder", flat), str(flat), "x.png", "sub")
    refused(lambda: scan("image_folder", tmp_path / "nope"), str(tmp_path / "nope"), "not found", "image_folder")
    refused(lambda: scan("image_folder", flat / "x.png"), "not a directory", "image_folder")
    (tmp_path / "empty" / ".git").mkdir(parents=True)
    refused(lambda: scan("image_folder", tmp_path / "empty"), "no files", "image_folder")
    (tmp_path / "cls" / "a").mkdir(parents=True)
    refused(lambda: scan("image_folder", tmp_path / "cls"), str(tmp_path / "cls" / "a"), "no files")
    refused(lambda: scan("folder", flat), "'folder'", ", ".join(SOURCES))


# ---------------------------------------------------------------------------------------------------- mnist


def idx_bytes(magic: int, arr: np.ndarray) -> bytes:
    return np.array([magic, *arr.shape], ">u4").tobytes() + arr.astype(np.uint8).tobytes()


def mnist_arrays() -> dict[str, np.ndarray]:
    train = ((np.arange(5)[:, None, None] * 7 + np.arange(28 * 28).reshape(28, 28)) % 256).astype(np.uint8)
    test = (255 - (np.arange(3)[:, None, None] * 11 + np.arange(28 * 28).reshape(28, 28)) % 256).astype(np.uint8)
    return {"train-images-idx3-ubyte": train, "train-labels-idx1-ubyte": np.array([3, 1, 4, 1, 5], np.uint8),
            "t10k-images-idx3-ubyte": test, "t10k-labels-idx1-ubyte": np.array([9, 2, 6], np.uint8)}


def write_mnist(d: Path, gz: bool = False, parts: dict[str, np.ndarray] | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in (parts or mnist_arrays()).items():
        data = idx_bytes(0x803 if "images" in name else 0x801, arr)
        if gz:
            (d / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)
    return d


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_train_then_t10k(tmp_path, gz):
    a = mnist_arrays()
    s = scan("mnist", write_mnist(tmp_path / "m", gz))
    assert (s.count, s.native_channels, s.class_names) == (8, 1, [str(i) for i in range(10)])
    assert s.labels.dtype == np.int64 and s.labels.tolist() == [3, 1, 4, 1, 5, 9, 2, 6]
    rows = np.concatenate([a["train-images-idx3-ubyte"], a["t10k-images-idx3-ubyte"]])
    idx, images = collect(s, 1, 28)
    assert idx.tolist() == list(range(8)) and (images == rows[:, None]).all()
    for channels, size in ((3, 28), (1, 32), (3, 32), (1, 14)):  # the fast path and the PIL path agree with fit
        images = collect(s, channels, size)[1]
        assert images.shape == (8, channels, size, size)
        assert all((images[i] == fit(Image.fromarray(rows[i]), channels, size)).all() for i in range(8))


def test_mnist_train_only_and_missing_files(tmp_path):
    a = mnist_arrays()
    d = write_mnist(tmp_path / "m", parts={k: v for k, v in a.items() if k.startswith("train")})
    s = scan("mnist", d)
    assert s.count == 5 and s.class_names == [str(i) for i in range(6)]
    (d / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(0x803, a["t10k-images-idx3-ubyte"]))
    refused(lambda: scan("mnist", d), "t10k-labels-idx1-ubyte", "mnist expects")
    refused(lambda: scan("mnist", tmp_path / "none"), "not found", "train-images-idx3-ubyte", "mnist")
    (tmp_path / "e").mkdir()
    refused(lambda: scan("mnist", tmp_path / "e"), "no train-images-idx3-ubyte")


def test_mnist_refuses_bad_headers_and_sizes(tmp_path):
    a = mnist_arrays()
    d = write_mnist(tmp_path / "m")
    images = d / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(idx_bytes(0x801, a["train-images-idx3-ubyte"]))
    refused(lambda: scan("mnist", d), str(images), "expected IDX magic 0x00000803", "found 0x00000801")
    images.write_bytes(good[:-10])
    refused(lambda: scan("mnist", d), str(images), "truncated", f"expected {16 + 5 * 784} bytes", "found 3926")
    images.write_bytes(good + b"\0")
    refused(lambda: scan("mnist", d), str(images), "longer than its header says")
    images.write_bytes(good[:6])
    refused(lambda: scan("mnist", d), str(images), "truncated: 6 bytes")
    images.write_bytes(good)
    labels = d / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(0x801, np.array([1, 2, 3, 4], np.uint8)))
    refused(lambda: scan("mnist", d), str(labels), "4 labels", "(5)")
    labels.unlink()
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(0x801, np.arange(5)))[:-12])
    refused(lambda: scan("mnist", d), "train-labels-idx1-ubyte.gz", "not a readable gzip file")


# ---------------------------------------------------------------------------------------------------- cifar10


def cifar_records(n: int, seed: int) -> np.ndarray:
    rec = np.random.default_rng(seed).integers(0, 256, (n, 3073), dtype=np.uint8)
    rec[:, 0] = (np.arange(n) + seed) % 10
    return rec


def write_cifar(d: Path) -> list[np.ndarray]:
    d.mkdir(parents=True, exist_ok=True)
    recs = [cifar_records(4, 1), cifar_records(4, 2), cifar_records(2, 3)]
    for name, rec in zip(("data_batch_1.bin", "data_batch_2.bin", "test_batch.bin"), recs, strict=True):
        (d / name).write_bytes(rec.tobytes())
    return recs


def test_cifar10_reads_records_rgb_planes(tmp_path):
    rec = np.concatenate(write_cifar(tmp_path / "c"))
    s = scan("cifar10", tmp_path / "c")
    assert (s.count, s.native_channels, s.class_names) == (10, 3, formats.CIFAR10_CLASSES)
    assert s.labels.tolist() == [1, 2, 3, 4, 2, 3, 4, 5, 3, 4]
    idx, images = collect(s, 3, 32)
    assert idx.tolist() == list(range(10))
    assert (images == rec[:, 1:].reshape(10, 3, 32, 32)).all()  # 1024 R, then G, then B, row-major
    assert images[7, 1, 0, 5] == rec[7, 1 + 1024 + 5] and images[2, 2, 31, 31] == rec[2, 3072]
    hwc = rec[:, 1:].reshape(10, 3, 32, 32).transpose(0, 2, 3, 1)
    for channels, size in ((1, 32), (3, 16)):
        out = collect(s, channels, size)[1]
        assert all((out[i] == fit(Image.fromarray(np.ascontiguousarray(hwc[i])), channels, size)).all()
                   for i in range(10))


def test_cifar10_subfolder_and_meta(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-bin")
    names = [f"class{i}" for i in range(10)]
    meta = tmp_path / "cifar-10-batches-bin" / "batches.meta.txt"
    meta.write_text("\n".join(names[:5] + [""] + names[5:]) + "\n\n")
    s = scan("cifar10", tmp_path)
    assert s.count == 10 and s.class_names == names
    meta.write_text("a\nb\n")
    assert scan("cifar10", tmp_path).class_names == formats.CIFAR10_CLASSES


def test_cifar10_refusals(tmp_path):
    d = tmp_path / "c"
    write_cifar(d)
    (d / "data_batch_2.bin").write_bytes(cifar_records(4, 2).tobytes()[:-5])
    refused(lambda: scan("cifar10", d), str(d / "data_batch_2.bin"),
            "truncated: 12287 bytes is not a whole number of 3073-byte records")
    (d / "data_batch_2.bin").write_bytes(b"")
    refused(lambda: scan("cifar10", d), "truncated: 0 bytes")
    bad = cifar_records(4, 2)
    bad[2, 0] = 10
    (d / "data_batch_2.bin").write_bytes(bad.tobytes())
    refused(lambda: scan("cifar10", d), str(d / "data_batch_2.bin"), "record 2", "label 10")
    (d / "data_batch_1.bin").unlink()
    (d / "data_batch_2.bin").unlink()
    refused(lambda: scan("cifar10", d), "no data_batch_*.bin", "binary version")
    refused(lambda: scan("cifar10", tmp_path / "x"), "not found", "cifar10 expects the binary version")
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    (py / "data_batch_1").write_bytes(b"\x80\x04")
    for where in (py, tmp_path):
        refused(lambda w=where: scan("cifar10", w), "python version", "pickle", "binary version")


# ---------------------------------------------------------------------------------------------------- npz


def test_npz_grey_and_colour(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", images=grey)
    s = scan("npz", tmp_path / "g.npz")
    assert (s.count, s.labels, s.class_names, s.native_channels) == (5, None, None, 1)
    assert (collect(s, 1, 6)[1] == grey[:, None]).all()
    assert (collect(s, 3, 6)[1] == grey[:, None].repeat(3, 1)).all()
    rgb = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "c.npz", images=rgb, labels=np.array([2, 0, 1, 2]),
                        class_names=np.array(["cat", "dog", "eel"]))
    s = scan("npz", tmp_path / "c.npz")
    assert (s.count, s.labels.tolist(), s.class_names, s.native_channels) == (4, [2, 0, 1, 2], ["cat", "dog", "eel"], 3)
    assert s.labels.dtype == np.int64
    assert (collect(s, 3, 8)[1] == rgb.transpose(0, 3, 1, 2)).all()
    for channels, size in ((1, 8), (3, 5)):
        out = collect(s, channels, size)[1]
        assert all((out[i] == fit(Image.fromarray(rgb[i]), channels, size)).all() for i in range(4))
    rgba = rng.integers(0, 256, (2, 4, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=rgba, labels=np.array([0, 3], np.uint8))
    s = scan("npz", tmp_path / "a.npz")
    assert s.class_names == ["0", "1", "2", "3"] and s.native_channels == 3
    out = collect(s, 3, 4)[1]
    want = (rgba[..., :3].astype(int) * rgba[..., 3:] / 255).round().transpose(0, 3, 1, 2)
    assert (out == want).all()
    np.savez(tmp_path / "one.npz", images=grey[..., None])
    assert (collect(scan("npz", tmp_path / "one.npz"), 1, 6)[1] == grey[:, None]).all()


def test_npz_refusals(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, images=np.zeros((2, 4, 4), np.float32))
    refused(lambda: scan("npz", p), str(p), "images", "uint8", "found dtype float32 shape (2, 4, 4)")
    np.savez(p, images=np.zeros((2, 4, 4, 2), np.uint8))
    refused(lambda: scan("npz", p), "images", "found dtype uint8 shape (2, 4, 4, 2)")
    np.savez(p, images=np.array([b"x", 1], dtype=object))
    refused(lambda: scan("npz", p), "images", "found dtype object")
    np.savez(p, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([1, "a"], dtype=object))
    refused(lambda: scan("npz", p), "labels", "pickle")
    np.savez(p, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, -1]))
    refused(lambda: scan("npz", p), "labels", "min -1")
    np.savez(p, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1, 1]))
    refused(lambda: scan("npz", p), "labels", "shape (2,)", "found dtype int64 shape (3,)")
    np.savez(p, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0.0, 1.0]))
    refused(lambda: scan("npz", p), "labels", "float64")
    np.savez(p, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 2]), class_names=np.array(["a", "b"]))
    refused(lambda: scan("npz", p), "class_names", "more than 2")
    np.savez(p, images=np.zeros((2, 4, 4), np.uint8), class_names=np.array(["a", "b"]))
    refused(lambda: scan("npz", p), "class_names given without labels")
    np.savez(p, pictures=np.zeros((2, 4, 4), np.uint8))
    refused(lambda: scan("npz", p), "no array 'images'", "pictures")
    p.write_bytes(b"hello, not a zip")
    refused(lambda: scan("npz", p), str(p), "not a .npz (zip) archive")
    np.save(tmp_path / "y.npy", np.zeros((2, 4, 4), np.uint8))
    refused(lambda: scan("npz", tmp_path / "y.npy"), "not a .npz (zip) archive")
    refused(lambda: scan("npz", tmp_path / "nope.npz"), "not found", "npz expects a .npz file")


# ---------------------------------------------------------------------------------------------------- chunking


def test_chunks_concatenate_to_the_same_result(tmp_path, folder):
    np.savez(tmp_path / "n.npz", images=np.random.default_rng(1).integers(0, 256, (5, 3, 3, 3), dtype=np.uint8))
    for s in (scan("image_folder", folder), scan("mnist", write_mnist(tmp_path / "m")),
              scan("npz", tmp_path / "n.npz")):
        small = list(s.decode(3, 4, chunk=2))
        assert all(len(i) == len(x) <= 2 and x.shape[1:] == (3, 4, 4) for i, x in small)
        idx, images = collect(s, 3, 4)
        assert (np.concatenate([i for i, _ in small]) == idx).all()
        assert (np.concatenate([x for _, x in small]) == images).all()
