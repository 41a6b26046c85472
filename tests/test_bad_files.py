"""Every bad input file is refused through the CLI: exit status 2, one line `genlab: error: <file>: <what was
expected>`, no traceback (unless `--debug`), before the stage opens its MLflow run, and every existing output
byte-identical.

Each case copies the tiny project's outputs (the session's `repro`, never modified) into its own folder, damages
one file and runs `genlab <stage>`: in this process through `genlab.cli.main` (a real CLI run minus the
interpreter start-up), or, for a few, as a subprocess of the venv's `genlab`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, safe_open, save

from genlab.cli import main
from genlab.metrics.fid import Extractor
from genlab.metrics.reference import reference_key
from genlab.models.evaluator import Evaluator
from genlab.models.vae import VAE
from genlab.preflight import HTTP_DEFAULTS
from tests.conftest import BIN

COPY = ("dvc.yaml", "params.yaml", "data/prepared", "models", "samples", "stats", "metrics", "plots",
        "reports/guidance")
OUTPUTS = ("data", "models", "samples", "stats", "metrics", "plots", "reports", "checkpoints")
MARKER = "pwned.txt"  # what the malicious training state would create if it were ever run

# ------------------------------------------------------------------------------------------------ damage


def tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return load_file(str(path)), f.metadata() or {}


def rewrite(rel: str, change: Callable[[dict[str, torch.Tensor]], None] = lambda t: None,
            header: Callable[[dict[str, str]], None] = lambda m: None) -> Callable[[Path], None]:
    """Change the tensors and the header metadata (in place); the file stays valid safetensors."""
    def damage(root: Path) -> None:
        t, meta = tensors(root / rel)
        change(t)
        header(meta)
        (root / rel).write_bytes(save({k: v.contiguous() for k, v in t.items()}, metadata=meta or None))
    return damage


def config(change: Callable[[dict], None]) -> Callable[[dict[str, str]], None]:
    """A header change for a snapshot: edit its JSON config."""
    def apply(meta: dict[str, str]) -> None:
        cfg = json.loads(meta["config"])
        change(cfg)
        meta["config"] = json.dumps(cfg)
    return apply


def other_extractor(meta: dict[str, str]) -> None:
    """Reference statistics as computed with another evaluator: its sha256, and the key that goes with it."""
    ext = json.loads(meta["extractor"])
    ext["sha256"] = "f" * 64
    data_hash = json.loads(Path("data/prepared/manifest.json").read_text())["content_hash"]
    meta["extractor"], meta["key"] = json.dumps(ext), reference_key(data_hash, Extractor(**ext))


def remove(rel: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def empty(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).write_bytes(b"")


def truncate(rel: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: len(data) // 2])
    return damage


def corrupt_header(rel: str) -> Callable[[Path], None]:
    """The JSON header of a safetensors file starts at byte 8 with '{': make it invalid JSON."""
    def damage(root: Path) -> None:
        data = bytearray((root / rel).read_bytes())
        assert data[8:9] == b"{"
        data[8:12] = b"\x00bad"
        (root / rel).write_bytes(bytes(data))
    return damage


def copy(src: str, dst: str) -> Callable[[Path], None]:
    return lambda root: shutil.copyfile(root / src, root / dst)


def manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / "data/prepared/manifest.json"
        m = json.loads(path.read_text())
        change(m)
        path.write_text(json.dumps(m))
    return damage


def snapshot_of(module: torch.nn.Module, config: dict, rel: str) -> Callable[[Path], None]:
    """A genuine snapshot of another network, as `save_snapshot` writes one."""
    def damage(root: Path) -> None:
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        (root / rel).write_bytes(save(state, metadata={"config": json.dumps(config)}))
    return damage


class Payload:
    """Unpickling this runs code: it creates the file `path`."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return exec, (f"open({self.path!r}, 'w').close()",)


def malicious_state(rel: str) -> Callable[[Path], None]:
    """A training state that is a pickle which would run code when loaded (a looks-valid dict around it)."""
    def damage(root: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"step": 1, "fingerprint": "x", "payload": Payload(root.parent / MARKER)}, path)
    return damage


def state_from(stage: str, rel: str, keep: float) -> Callable[[Path], None]:
    """The finished training state of `stage` put back as its in-progress checkpoint, cut to a fraction."""
    def damage(root: Path) -> None:
        data = (root / "models" / stage / "train_state.pt").read_bytes()
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data[: int(len(data) * keep)])
    return damage


def images(change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], None]:
    def apply(t: dict[str, torch.Tensor]) -> None:
        t["images"] = change(t["images"])
    return apply


def put(key: str, value: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[dict], None]:
    def apply(t: dict[str, torch.Tensor]) -> None:
        new = value(t[key])
        if new is None:
            del t[key]
        else:
            t[key] = new
    return apply


def set_value(index: tuple, value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def change(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[index] = value
        return x
    return change


# ------------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    damage: Callable[[Path], None]
    expect: tuple[str, ...]  # all in the error line: the file (or key) and what was expected


TRAIN, VAL, TEST = (f"data/prepared/{s}.safetensors" for s in ("train", "val", "test"))
MANIFEST = "data/prepared/manifest.json"
EVALUATOR, VAE_SNAP, LDM, PIXEL, GAN = (f"models/{m}/model.safetensors" for m in
                                        ("evaluator", "vae", "ldm", "pixel", "gan"))
REFERENCE = "stats/reference.safetensors"

CASES = [
    # prepared splits
    Case("split-missing", "train_evaluator", remove(TRAIN), (TRAIN, "not found", "genlab prepare")),
    Case("split-empty", "train_vae", empty(VAL), (VAL, "empty file", "prepared split")),
    Case("split-truncated", "train_gan", truncate(TEST), (TEST, "truncated or corrupt")),
    Case("split-corrupt-header", "reference_stats", corrupt_header(TRAIN), (TRAIN, "truncated or corrupt")),
    Case("split-no-attributes", "train_evaluator", rewrite(TRAIN, put("attributes", lambda x: None)),
         (TRAIN, "'attributes'", "expected images, labels, attributes")),
    Case("split-images-wrong-shape", "train_evaluator", rewrite(TRAIN, images(lambda x: x[:, :, ::2, ::2])),
         (TRAIN, "images: expected uint8", "16, 16)", "8, 8)")),
    Case("split-images-float64", "train_vae", rewrite(VAL, images(lambda x: x.double())),
         (VAL, "images: expected uint8", "got float64")),
    # a split of an older genlab (float images in [-1, 1]): refused, not misread
    Case("split-images-float32", "train_gan", rewrite(TRAIN, images(lambda x: x.float() / 127.5 - 1)),
         (TRAIN, "images: expected uint8 (1257, 1, 16, 16)", "got float32 (1257, 1, 16, 16)", "genlab prepare")),
    Case("split-labels-int32", "train_evaluator", rewrite(TRAIN, put("labels", lambda x: x.int())),
         (TRAIN, "labels: expected int64", "got int32")),
    Case("split-labels-wrong-length", "train_gan", rewrite(TEST, put("labels", lambda x: x[:-1])),
         (TEST, "labels: expected int64", "(359,)")),
    Case("split-label-out-of-range", "train_evaluator", rewrite(TRAIN, put("labels", set_value((0,), 10))),
         (TRAIN, "labels: expected values in [0, 10)", "got [0, 10]")),
    Case("split-label-negative", "train_ldm", rewrite(VAL, put("labels", set_value((3,), -1))),
         (VAL, "labels: expected values in [0, 10)", "got [-1, 9]")),
    Case("split-attribute-out-of-range", "train_evaluator", rewrite(TRAIN, put("attributes", set_value((5, 0), 12))),
         (TRAIN, "attributes[:, 0]: expected values in [0, 10)")),
    # the manifest
    Case("manifest-missing", "sample vae", remove(MANIFEST), (MANIFEST, "not found", "genlab prepare")),
    Case("manifest-not-json", "train_evaluator", lambda root: (root / MANIFEST).write_text("{'counts': "),
         (MANIFEST, "not valid JSON")),
    Case("manifest-no-image-shape", "train_vae", manifest(lambda m: m.pop("image_shape")),
         (MANIFEST, "missing key(s) image_shape")),
    Case("manifest-counts-disagree", "train_evaluator", manifest(lambda m: m["counts"].update(train=1000)),
         (TRAIN, "expected uint8 (1000, 1, 16, 16)", "got uint8 (1257, 1, 16, 16)")),
    Case("manifest-image-shape-disagrees", "reference_stats", manifest(lambda m: m.update(image_shape=[3, 16, 16])),
         (TRAIN, "images: expected uint8 (1257, 3, 16, 16)")),
    Case("manifest-hash-disagrees", "train_evaluator",
         rewrite(VAL, images(lambda x: torch.where(x > 250, x, x // 2))),
         (MANIFEST, "content_hash", "does not match the tensors", "dvc checkout")),
    # upstream models: missing
    Case("vae-missing-train_ldm", "train_ldm", remove("models/vae"), (VAE_SNAP, "not found", "genlab train_vae")),
    Case("vae-missing-sample", "sample ldm", remove("models/vae"), (VAE_SNAP, "not found", "genlab train_vae")),
    Case("evaluator-missing-train_vae", "train_vae", remove("models/evaluator"),
         (EVALUATOR, "not found", "genlab train_evaluator")),
    Case("evaluator-missing-train_ldm", "train_ldm", remove("models/evaluator"),
         (EVALUATOR, "not found", "genlab train_evaluator")),
    Case("evaluator-missing-train_gan", "train_gan", remove("models/evaluator"),
         (EVALUATOR, "not found", "genlab train_evaluator")),
    Case("evaluator-missing-reference_stats", "reference_stats", remove("models/evaluator"),
         (EVALUATOR, "not found", "genlab train_evaluator")),
    Case("evaluator-missing-evaluate", "evaluate", remove("models/evaluator"),
         (EVALUATOR, "not found", "genlab train_evaluator")),
    # snapshots: damaged, or of another architecture
    Case("snapshot-empty", "sample gan", empty(GAN), (GAN, "empty file", "snapshot", "genlab train_gan")),
    Case("snapshot-truncated", "sample ldm", truncate(LDM), (LDM, "truncated or corrupt", "genlab train_ldm")),
    Case("snapshot-corrupt-header", "evaluate", corrupt_header(EVALUATOR), (EVALUATOR, "truncated or corrupt")),
    Case("snapshot-no-config", "train_ldm", rewrite(VAE_SNAP, header=lambda m: m.pop("config")),
         (VAE_SNAP, "no 'config' in its safetensors header")),
    Case("snapshot-gan-as-vae", "train_ldm", copy(GAN, VAE_SNAP), (VAE_SNAP, "does not build a VAE", "z_dim")),
    Case("snapshot-evaluator-as-unet", "sample pixel", copy(EVALUATOR, PIXEL),
         (PIXEL, "does not build a diffusion U-Net", "expected a diffusion U-Net snapshot", "genlab train_pixel")),
    Case("snapshot-vae-as-evaluator", "guidance_sweep", copy(VAE_SNAP, EVALUATOR),
         (EVALUATOR, "expected an evaluator snapshot", "base_channels")),
    Case("snapshot-vae-other-widths", "sample vae",
         rewrite(VAE_SNAP, header=config(lambda c: c["network"].update(base_channels=16))),
         (VAE_SNAP, "not a VAE snapshot of this shape", "in the file")),
    Case("snapshot-vae-other-latents", "sample ldm",
         snapshot_of(VAE(1, 8, 8, 1), {"network": {"in_channels": 1, "base_channels": 8, "latent_channels": 8,
                                                   "downsample": 1}, "latent_shape": [8, 8, 8], "latent_scale": 1.0,
                                       "image_size": 16}, VAE_SNAP),
         (VAE_SNAP, "latents [8, 8, 8]", LDM, "expected the VAE it was trained with")),
    Case("snapshot-evaluator-of-rgb-data", "train_vae",
         snapshot_of(Evaluator(3, [3, 4], 8), {"network": {"in_channels": 3, "num_classes": [3, 4], "width": 8},
                                               "image_size": 32}, EVALUATOR),
         (EVALUATOR, "an evaluator of 3-channel 32x32 images", "expected one of 1-channel 16x16")),
    # training states (checkpoints/<stage>.pt, what a stage resumes from)
    Case("train-state-truncated", "train_evaluator", state_from("evaluator", "checkpoints/train_evaluator.pt", 0.5),
         ("checkpoints/train_evaluator.pt", "truncated or corrupt")),
    Case("train-state-malicious-second-checkpoint", "train_vae", malicious_state("checkpoints/train_vae.ae.pt"),
         ("checkpoints/train_vae.ae.pt", "refused", "nothing in it was run")),
    # samples
    Case("samples-missing", "evaluate", remove("samples/gan.safetensors"),
         ("samples/gan.safetensors", "not found", "genlab sample")),
    Case("samples-corrupt", "evaluate", truncate("samples/pixel.safetensors"),
         ("samples/pixel.safetensors", "truncated or corrupt")),
    Case("samples-wrong-image-shape", "evaluate",
         rewrite("samples/ldm.safetensors", images(lambda x: x[:, :, ::2, ::2].contiguous())),
         ("samples/ldm.safetensors", "images: expected float32 (40, 1, 16, 16)", "[1, 16, 16]")),
    Case("samples-float64", "evaluate", rewrite("samples/vae.safetensors", images(lambda x: x.double())),
         ("samples/vae.safetensors", "images: expected float32", "got float64")),
    Case("samples-seeds-other-length", "evaluate", rewrite("samples/gan.safetensors", put("seeds", lambda x: x[:5])),
         ("samples/gan.safetensors", "seeds: expected int64 (40,)", "got int64 (5,)")),
    Case("samples-labels-out-of-range", "evaluate",
         rewrite("samples/ldm.safetensors", put("labels", set_value((0,), 99))),
         ("samples/ldm.safetensors", "labels: expected all -1 (unconditional) or all in [0, 10)", "got [0, 99]")),
    # reference statistics
    Case("reference-corrupt-header", "evaluate", corrupt_header(REFERENCE), (REFERENCE, "truncated or corrupt")),
    Case("reference-other-extractor", "evaluate", rewrite(REFERENCE, header=other_extractor),
         (REFERENCE, "stale reference statistics", "genlab reference_stats")),
    Case("reference-missing", "evaluate", remove(REFERENCE), (REFERENCE, "not found", "genlab reference_stats")),
]


# ------------------------------------------------------------------------------------------------ running


@pytest.fixture()
def root(repro: tuple[Path, dict[str, str], str], tmp_path: Path) -> Path:
    """A copy of the tiny project's outputs (the shared `repro` itself is never touched)."""
    src, root = repro[0], tmp_path / "project"
    for name in COPY:
        if (src / name).is_dir():
            shutil.copytree(src / name, root / name)
        elif (src / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, root / name)
    return root


def outputs(root: Path) -> dict[str, str]:
    """sha256 of every file under the output folders (temporaries included)."""
    files = sorted(p for folder in OUTPUTS for p in (root / folder).rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_refused(code: int, stderr: str, expect: tuple[str, ...], root: Path, before: dict[str, str]) -> str:
    """Exit 2, the last stderr line is the only error line and names what it must, no traceback, nothing changed,
    no MLflow run opened (the store, a file next to the project, was never created). Returns the line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr[-3000:]
    assert lines and lines[-1].startswith("genlab: error: "), stderr[-3000:]
    assert sum(line.startswith("genlab: error:") for line in lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    missing = [s for s in expect if s not in lines[-1]]
    assert not missing, f"{missing} not in: {lines[-1]}"
    assert outputs(root) == before
    assert not (root.parent / "mlflow.db").exists(), "the stage opened an MLflow run before refusing its input"
    return lines[-1]


def run_in_process(root: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch,
                   capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`genlab <argv>` in this process, in `root`, with its own MLflow store: (exit status, stderr)."""
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root.parent / 'mlflow.db'}")
    for key, value in HTTP_DEFAULTS.items():  # the preflight sets these in the process: undone after the test
        monkeypatch.setenv(key, value)
    capfd.readouterr()
    code = main(argv)
    return code, capfd.readouterr().err


def run_subprocess(root: Path, env: dict[str, str], argv: list[str]) -> subprocess.CompletedProcess:
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root.parent / 'mlflow.db'}"}
    return subprocess.run([str(BIN / "genlab"), *argv], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_file_is_refused_in_one_line(case: Case, root: Path, monkeypatch: pytest.MonkeyPatch,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(root)  # some damages read the project's own files
    case.damage(root)
    before = outputs(root)
    code, stderr = run_in_process(root, case.stage.split(), monkeypatch, capfd)
    assert_refused(code, stderr, case.expect, root, before)
    assert len([line for line in stderr.splitlines() if line.strip()]) == 1, stderr  # nothing logged before it
    assert not (root.parent / MARKER).exists()


def test_malicious_training_state_is_refused_never_run(root: Path, repro: tuple[Path, dict[str, str], str]) -> None:
    """A checkpoint that would run code when unpickled: refused with one line, and the code never ran."""
    rel = "checkpoints/train_evaluator.pt"
    malicious_state(rel)(root)
    marker = root.parent / MARKER
    control = root.parent / "control.pt"
    shutil.copyfile(root / rel, control)
    before = outputs(root)
    proc = run_subprocess(root, repro[1], ["train_evaluator"])
    assert_refused(proc.returncode, proc.stderr, (rel, "refused", "nothing in it was run"), root, before)
    assert not marker.exists(), "the pickle's code ran"
    # control: the same bytes do run code when unpickled without weights_only, so the refusal above is what saved us
    torch.load(control, weights_only=False)
    assert marker.exists()


def test_bad_file_in_a_real_process(root: Path, repro: tuple[Path, dict[str, str], str]) -> None:
    """The same refusal from the installed `genlab` executable: one line on stderr, nothing logged before it."""
    rel = "samples/ldm.safetensors"
    rewrite(rel, images(lambda x: x[:, :, ::2, ::2].contiguous()))(root)
    before = outputs(root)
    proc = run_subprocess(root, repro[1], ["evaluate"])
    line = assert_refused(proc.returncode, proc.stderr, (rel, "images: expected float32"), root, before)
    assert proc.stderr.strip() == line, proc.stderr[-3000:]


def test_debug_shows_the_traceback(root: Path, repro: tuple[Path, dict[str, str], str]) -> None:
    """`--debug` re-raises: the traceback ends with the same GenlabError; still nothing changed."""
    remove("models/vae")(root)
    before = outputs(root)
    proc = run_subprocess(root, repro[1], ["train_ldm", "--debug"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback (most recent call last)" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("genlab.errors.GenlabError: ") and VAE_SNAP in last and "genlab train_vae" in last
    assert "genlab: error:" not in proc.stderr
    assert outputs(root) == before
    assert not (root.parent / "mlflow.db").exists()
