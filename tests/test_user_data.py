"""The user's own data through `genlab prepare`: every format (pixels, labels, class names, skipped files), the
refusals (one line, exit 2, nothing written, no MLflow run), the image-size checks and the presets.

`tests/test_user_data_pipeline.py` runs `dvc repro` end to end on such data and the DVC push/pull round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open

from genlab.config import load_params
from genlab.data import splits, store, synthetic
from genlab.data.formats import fit
from tests.conftest import tiny_params
from tests.test_bad_files import assert_refused, outputs, run_in_process


def write_params(root: Path, data: dict, **sections: dict) -> None:
    p = tiny_params()
    p["data"] = {**p["data"], **data}
    for key, value in sections.items():
        p[key] = {**p[key], **value}
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def prepare(root: Path, data: dict, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> dict:
    """`genlab prepare` in `root` with `data` over the tiny params; the manifest, metrics and the splits."""
    write_params(root, data)
    code, err = run_in_process(root, ["prepare"], monkeypatch, capfd)
    assert code == 0, err[-3000:]
    parts, manifest = splits.read_all(root / "data" / "prepared")
    return {"manifest": manifest, "splits": parts, "metrics": json.loads((root / "metrics/prepare.json").read_text())}


def all_rows(parts: dict[str, splits.Split]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every prepared image (uint8) and label, all splits."""
    images = torch.cat([parts[n].images.uint8(slice(None)) for n in splits.SPLITS])
    return images, torch.cat([parts[n].labels for n in splits.SPLITS])


def test_image_folder_with_bad_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    """Class sub-folders, non-square images in four modes, and three bad files: skipped, counted, named."""
    raw = tmp_path / "project" / "data" / "raw" / "shapes"
    files = synthetic.write_image_folder(raw, 60, (40, 30), seed=0, classes=3, modes=("RGB", "L", "RGBA", "P"))
    (raw / "class_0" / "empty.png").write_bytes(b"")
    (raw / "class_1" / "notes.txt").write_text("not an image")
    (raw / "class_2" / "cut.png").write_bytes(files[2].read_bytes()[:60])
    out = prepare(tmp_path / "project", {"source": "image_folder", "path": "data/raw/shapes", "image_size": 16,
                                         "channels": 3}, monkeypatch, capfd)
    m = out["manifest"]
    assert (m["num_classes"], m["labelled"], m["class_names"]) == (3, True, ["class_0", "class_1", "class_2"])
    assert m["image_shape"] == [3, 16, 16] and sum(m["counts"].values()) == 60
    assert m["class_counts"]["test"] == [4, 4, 4]  # stratified: 20% of 20 per class
    assert out["metrics"]["n_skipped"] == 3
    assert sorted(Path(s["file"]).name for s in m["skipped"]) == ["cut.png", "empty.png", "notes.txt"]
    # the prepared pixels are exactly `fit` of the files (centre crop, resize, mode conversion), labels by folder
    images, labels = all_rows(out["splits"])
    expected = {tuple(fit(Image.open(f), 3, 16).flatten()): int(f.parent.name[-1]) for f in files}
    got = {tuple(x.flatten().tolist()): int(y) for x, y in zip(images, labels, strict=True)}
    assert got == expected


def test_flat_folder_is_unlabelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capfd: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "project" / "data" / "raw" / "flat"
    synthetic.write_image_folder(raw, 40, 20, seed=1, flat=True)
    out = prepare(tmp_path / "project", {"source": "image_folder", "path": "data/raw/flat"}, monkeypatch, capfd)
    m = out["manifest"]
    assert (m["num_classes"], m["labelled"], m["class_names"], m["attributes"]) == \
        (0, False, [], {"names": [], "num_classes": []})
    assert m["image_shape"] == [3, 16, 16] and m["counts"] == {"train": 28, "val": 4, "test": 8}
    assert splits.evaluator_task(m) == (["rotation"], [4])
    assert all(p.attributes.shape == (len(p), 0) and not p.labels.any() for p in out["splits"].values())


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path: Path, gz: bool, monkeypatch: pytest.MonkeyPatch,
                   capfd: pytest.CaptureFixture[str]) -> None:
    """28 -> 32 px grey: train then t10k rows, labels from the label files."""
    raw = tmp_path / "project" / "data" / "raw" / "mnist"
    synthetic.write_mnist(raw, 100, 20, seed=2, gz=gz)
    out = prepare(tmp_path / "project", {"source": "mnist", "path": "data/raw/mnist", "image_size": 32},
                  monkeypatch, capfd)
    m = out["manifest"]
    assert (m["num_classes"], m["image_shape"], sum(m["counts"].values())) == (10, [1, 32, 32], 120)
    assert m["class_names"] == [str(i) for i in range(10)]
    rgb, labels = synthetic.draw(100, 28, 2)
    grey = np.asarray(Image.fromarray(rgb.reshape(-1, 28, 3), "RGB").convert("L")).reshape(100, 28, 28)
    images, got_labels = all_rows(out["splits"])
    want = {tuple(fit(Image.fromarray(x, "L"), 1, 32).flatten()): int(y) for x, y in zip(grey, labels, strict=True)}
    got = {tuple(x.flatten().tolist()): int(y) for x, y in zip(images, got_labels, strict=True)}
    assert want.items() <= got.items()  # every train-file image, with its label (the t10k ones besides)


def test_cifar10_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "project" / "data" / "raw" / "cifar10"
    synthetic.write_cifar10(raw, 100, 20, seed=3, batches=2)
    out = prepare(tmp_path / "project", {"source": "cifar10", "path": "data/raw/cifar10", "image_size": 32},
                  monkeypatch, capfd)
    m = out["manifest"]
    assert (m["num_classes"], m["image_shape"], sum(m["counts"].values())) == (10, [3, 32, 32], 120)
    assert m["class_names"][0] == "airplane"
    rgb, labels = synthetic.draw(120, 32, 3)
    images, got = all_rows(out["splits"])
    # 32x32 RGB: stored as is, CHW
    want = sorted(zip((x.transpose(2, 0, 1).tobytes() for x in rgb), labels.tolist(), strict=True))
    assert sorted(zip((x.numpy().tobytes() for x in images), got.tolist(), strict=True)) == want


def test_npz_grey_to_rgb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "project" / "data" / "raw" / "arrays.npz"
    synthetic.write_npz(raw, 48, 16, seed=4, classes=4, grey=True)
    out = prepare(tmp_path / "project", {"source": "npz", "path": "data/raw/arrays.npz", "channels": 3},
                  monkeypatch, capfd)
    m = out["manifest"]
    assert (m["num_classes"], m["class_names"], m["image_shape"]) == (4, [f"kind {c}" for c in range(4)], [3, 16, 16])
    images, _ = all_rows(out["splits"])
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])  # grey, replicated


# ------------------------------------------------------------------------------------------------ refusals


def refused(root: Path, data: dict, expect: tuple[str, ...], monkeypatch: pytest.MonkeyPatch,
            capfd: pytest.CaptureFixture[str]) -> str:
    write_params(root, data)
    before = outputs(root)
    code, err = run_in_process(root, ["prepare"], monkeypatch, capfd)
    line = assert_refused(code, err, expect, root, before)
    assert not list((root / "data").glob(".prepared.*")), "a staged folder was left behind"
    return line


def test_missing_path_says_where_and_what(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    refused(tmp_path / "project", {"source": "mnist", "path": "data/raw/nothing"},
            ("data/raw/nothing", "not found", "train-images-idx3-ubyte"), monkeypatch, capfd)


def test_wrong_idx_magic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "project" / "data" / "raw" / "mnist"
    synthetic.write_mnist(raw, 20, 0, seed=0)
    f = raw / "train-images-idx3-ubyte"
    f.write_bytes(b"\x00\x00\x08\x01" + f.read_bytes()[4:])
    refused(tmp_path / "project", {"source": "mnist", "path": "data/raw/mnist"},
            (str(f), "magic 0x00000803", "0x00000801"), monkeypatch, capfd)


def test_truncated_cifar_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capfd: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "project" / "data" / "raw" / "cifar10"
    synthetic.write_cifar10(raw, 40, 0, seed=0, batches=2)
    f = raw / "data_batch_2.bin"
    f.write_bytes(f.read_bytes()[:-100])
    refused(tmp_path / "project", {"source": "cifar10", "path": "data/raw/cifar10"},
            (str(f), "truncated", "3073-byte records"), monkeypatch, capfd)


def test_bad_file_refused_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "project" / "data" / "raw" / "imgs"
    synthetic.write_image_folder(raw, 30, 16, seed=0, classes=2)
    (raw / "class_1" / "zero.png").write_bytes(b"")
    refused(tmp_path / "project", {"source": "image_folder", "path": "data/raw/imgs", "on_bad_file": "error"},
            (str(raw / "class_1" / "zero.png"),), monkeypatch, capfd)


def test_too_few_images_in_a_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capfd: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "project" / "data" / "raw" / "imgs"
    synthetic.write_image_folder(raw, 40, 16, seed=0, classes=2)
    for f in sorted((raw / "class_1").iterdir())[1:]:
        f.unlink()
    refused(tmp_path / "project", {"source": "image_folder", "path": "data/raw/imgs"},
            ("class_1' (1)", "at least 2"), monkeypatch, capfd)


def test_split_the_fractions_cannot_make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    """10 classes, 30 images, 10% test: 3 test images cannot hold a stratified 10 classes."""
    raw = tmp_path / "project" / "data" / "raw" / "imgs"
    synthetic.write_image_folder(raw, 30, 16, seed=0, classes=10)
    refused(tmp_path / "project", {"source": "image_folder", "path": "data/raw/imgs", "test_fraction": 0.1},
            ("data: cannot split 30 images of 10 classes", "test_fraction 0.1"), monkeypatch, capfd)


@pytest.mark.parametrize(("data", "sections", "expect"), [
    ({"image_size": 64}, {"pixel": {"channel_mults": [1, 2, 2, 2, 2, 2, 2]}},
     ("pixel.channel_mults", "7 levels", "64x64", "at most 6")),
    ({"image_size": 32}, {"vae": {"downsample": 2}, "ldm": {"channel_mults": [1, 2, 2, 2]}},
     ("ldm.channel_mults", "8x8", "at most 3")),
    ({"image_size": 8}, {"vae": {"downsample": 3}}, ("vae.downsample 3", "data.image_size 8")),
    ({"image_size": 32}, {"ldm": {"channel_mults": None, "attention_levels": [3]}},
     ("ldm.attention_levels", "[3]", "8x8 input", "[1, 2, 2]")),
    ({"image_size": 28}, {}, ("data: image_size must be a power of two", "28")),
    ({"source": "mnist"}, {}, ("data", "set data.path")),
])
def test_sizes_the_networks_cannot_take_are_refused_up_front(tmp_path: Path, data: dict, sections: dict,
                                                            expect: tuple[str, ...], monkeypatch: pytest.MonkeyPatch,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "project"
    write_params(root, data, **sections)
    before = outputs(root)
    code, err = run_in_process(root, ["prepare"], monkeypatch, capfd)
    assert_refused(code, err, ("params.yaml", *expect), root, before)


def test_networks_follow_the_image_size() -> None:
    """null downsample and channel_mults: 16 -> 8x8 latents, 32 -> 8x8, 64 -> 16x16; U-Nets down to 2x2 or 4x4."""
    from genlab.config import DiffusionConfig, latent_side, unet_levels

    assert [latent_side(s, None) for s in (8, 16, 32, 64)] == [8, 8, 8, 16]
    auto = DiffusionConfig(channel_mults=None)
    assert [unet_levels(auto, s) for s in (8, 16, 32, 64)] == [(1, 2, 2), (1, 2, 2), (1, 2, 2, 2), (1, 2, 2, 2, 2)]


# ------------------------------------------------------------------------------------------------ presets


@pytest.mark.parametrize("name", ["mnist", "cifar10", "folder64", "shapes"])
def test_preset_switches_the_whole_params_set(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    from genlab.cli import main

    (tmp_path / "params.yaml").write_text("seed: 0\n")
    monkeypatch.chdir(tmp_path)
    assert main(["preset", name]) == 0
    assert "dvc repro" in capfd.readouterr().out
    p = load_params(tmp_path / "params.yaml")
    want = {"mnist": ("mnist", 32, 1), "cifar10": ("cifar10", 32, 3), "folder64": ("image_folder", 64, 3),
            "shapes": ("shapes", 16, None)}[name]
    assert (p.data.source, p.data.image_size, p.data.channels) == want
    # every key is spelled out, so DVC sees every key a stage reads and `git diff params.yaml` shows each switch
    def keys(tree: dict, prefix: str = "") -> set[str]:
        return {k for name, v in tree.items() for k in
                {prefix + name} | (keys(v, f"{prefix}{name}.") if isinstance(v, dict) else set())}
    assert keys(yaml.safe_load((tmp_path / "params.yaml").read_text())) == keys(yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "params.yaml").read_text()))


# ------------------------------------------------------------------------------------------------ storage


def test_streamed_safetensors_round_trip(tmp_path: Path) -> None:
    """The streamed writer's files are valid safetensors (read back by the library itself), int64 tensors 8-byte
    aligned, and `Images` reads any rows of them exactly."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 3, 5, 5), dtype=np.uint8)
    labels = rng.integers(0, 9, 37).astype(np.int64)
    path = tmp_path / "x.safetensors"
    store.write(path, [store.Entry("labels", "I64", (37,), [labels[:10], labels[10:]]),
                       store.Entry("images", "U8", images.shape, [images[i:i + 8] for i in range(0, 37, 8)])],
                {"b": "2", "a": "1"})
    with safe_open(str(path), framework="np") as f:
        assert np.array_equal(f.get_tensor("images"), images) and np.array_equal(f.get_tensor("labels"), labels)
        assert f.metadata() == {"a": "1", "b": "2"}
    table, start = store.read_header(path)
    assert start % 8 == 0 and table["labels"]["data_offsets"][0] == 0
    x = store.images_of(path)
    assert np.array_equal(x.uint8(torch.tensor([36, 0, 5])).numpy(), images[[36, 0, 5]])
    assert np.array_equal(x.uint8(slice(3, 9)).numpy(), images[3:9])
    assert np.array_equal(x.uint8(np.arange(37) % 2 == 1).numpy(), images[1::2])
    assert torch.equal(store.to_uint8(x[:]), torch.from_numpy(images))  # float view inverts exactly
    many = tmp_path / "many.safetensors"  # more scattered rows than one map reads (store.MAP_ROWS)
    big = rng.integers(0, 256, (3 * store.MAP_ROWS, 1, 2, 2), dtype=np.uint8)
    store.write(many, [store.Entry("images", "U8", big.shape, [big])])
    order = rng.permutation(len(big))
    assert np.array_equal(store.images_of(many).uint8(order).numpy(), big[order])
    # the GPU path's device-resident copy (here on the CPU, in chunks smaller than the split): the same batches
    resident = store.ResidentImages(store.images_of(many), torch.device("cpu"), chunk=100)
    idx = torch.from_numpy(order[:64])
    assert len(resident) == len(big) and torch.equal(resident[idx], store.images_of(many)[idx])
    assert store.training_images(x, torch.device("cpu")) is x  # on CPU the memory map (flat RSS)
    with pytest.raises(ValueError, match="got 8 bytes"):
        store.write(tmp_path / "y.safetensors", [store.Entry("labels", "I64", (2,), [labels[:1]])])
