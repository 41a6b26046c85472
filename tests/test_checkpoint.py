"""genlab.checkpoint, genlab.paths and genlab.randomness: round-trips, atomic outputs, counter-based seeds."""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import nn

from genlab.checkpoint import load_snapshot, load_train_state, save_snapshot, save_train_state
from genlab.errors import GenlabError
from genlab.paths import Paths, atomic_write, staged_dir
from genlab.randomness import batch_indices, derive_seed, generator

# ---------------------------------------------------------------------------------------------- snapshots


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_snapshot_round_trip(tmp_path: Path) -> None:
    net = _net()
    net[1].running_mean.fill_(0.25)
    net[1].num_batches_tracked.fill_(7)
    config = {"network": {"in_channels": 1, "width": 8, "mults": [1, 2]}, "image_size": 16, "name": "x"}
    path = tmp_path / "sub" / "model.safetensors"
    save_snapshot(net, path, config)
    state, cfg = load_snapshot(path)
    assert cfg == config
    ref = net.state_dict()
    assert state.keys() == ref.keys()
    for k, v in ref.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    fresh = _net()
    fresh.load_state_dict(state)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(fresh.eval()(x), net.eval()(x))
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temp file left


def test_snapshot_without_config(tmp_path: Path) -> None:
    save_snapshot(nn.Linear(2, 2), tmp_path / "m.safetensors")
    assert load_snapshot(tmp_path / "m.safetensors")[1] == {}


def test_snapshot_of_non_contiguous_weights(tmp_path: Path) -> None:
    lin = nn.Linear(3, 4)
    lin.weight = nn.Parameter(torch.randn(3, 4).t())  # a transposed (non-contiguous) view
    save_snapshot(lin, tmp_path / "m.safetensors")
    assert torch.equal(load_snapshot(tmp_path / "m.safetensors")[0]["weight"], lin.weight.detach())


def test_load_snapshot_missing(tmp_path: Path) -> None:
    path = tmp_path / "models" / "absent.safetensors"
    with pytest.raises(GenlabError) as info:
        load_snapshot(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------- train state


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_train_state_round_trip(tmp_path: Path) -> None:
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    net(torch.randn(2, 1, 8, 8)).sum().backward()
    opt.step()
    state = {
        "fingerprint": "abc123",
        "step": 17,
        "images_seen": 17 * 64,
        "modules": {"net": net.state_dict()},
        "optimizers": {"adam": opt.state_dict()},
        "history": [{"images_seen": 64.0, "loss": 0.5}, {"images_seen": 128.0, "loss": 0.25}],
    }
    path = tmp_path / "checkpoints" / "stage.pt"
    save_train_state(state, path)
    loaded = load_train_state(path)
    assert _equal(state, loaded)
    assert len(loaded["optimizers"]["adam"]["state"]) == len(list(net.parameters()))
    assert not _equal(state, {**loaded, "step": 18})  # the comparison itself can fail

    # the loaded optimizer continues exactly like the original
    net2 = _net()
    net2.load_state_dict(loaded["modules"]["net"])
    opt2 = torch.optim.Adam(net2.parameters(), lr=1.0)
    opt2.load_state_dict(loaded["optimizers"]["adam"])
    x = torch.randn(2, 1, 8, 8)
    for n, o in ((net, opt), (net2, opt2)):
        o.zero_grad()
        n(x).sum().backward()
        o.step()
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_train_state_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    # weights_only=True: an object that is not a tensor or plain container must not be unpickled.
    path = tmp_path / "state.pt"
    save_train_state({"step": 1, "odd": Fraction(1, 3)}, path)
    with pytest.raises(GenlabError, match="refused"):
        load_train_state(path)


def test_train_state_overwrite_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    save_train_state({"step": 1}, path)
    save_train_state({"step": 2}, path)
    assert load_train_state(path) == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_atomic_write_text_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.txt"
    atomic_write(path, "hello")
    assert path.read_text() == "hello"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]


# ---------------------------------------------------------------------------------------------- staged_dir


def test_staged_dir_failure_keeps_previous_output(tmp_path: Path) -> None:
    final = tmp_path / "out" / "prepared"
    final.mkdir(parents=True)
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), staged_dir(final) as tmp:
        assert tmp != final and tmp.parent == final.parent
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    assert (final / "old.txt").read_text() == "old"
    assert [p.name for p in final.parent.iterdir()] == ["prepared"]  # no temp dirs left


def test_staged_dir_failure_without_previous_output(tmp_path: Path) -> None:
    final = tmp_path / "prepared"
    with pytest.raises(KeyboardInterrupt), staged_dir(final) as tmp:
        (tmp / "x").write_text("x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_staged_dir_success_replaces_content(tmp_path: Path) -> None:
    final = tmp_path / "prepared"
    final.mkdir()
    (final / "old.txt").write_text("old")
    (final / "sub").mkdir()
    with staged_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (final / "old.txt").exists()  # the old output is visible until the swap
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert (final / "new.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]
    with staged_dir(final) as tmp:  # and again, over the output it just wrote
        (tmp / "third.txt").write_text("3")
    assert [p.name for p in final.iterdir()] == ["third.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_paths_layout(tmp_path: Path) -> None:
    p = Paths(tmp_path)
    assert p.prepared == tmp_path / "data" / "prepared"
    assert p.model("vae") == tmp_path / "models" / "vae"
    assert p.metrics("train_vae") == tmp_path / "metrics" / "train_vae.json"
    assert p.checkpoint("train_ldm") == tmp_path / "checkpoints" / "train_ldm.pt"


# ---------------------------------------------------------------------------------------------- randomness


def test_derive_seed_is_deterministic_and_separates_streams() -> None:
    s = derive_seed(0, "train_vae", "step", 3)
    assert s == derive_seed(0, "train_vae", "step", 3)
    assert 0 <= s < 2**63
    others = {derive_seed(1, "train_vae", "step", 3), derive_seed(0, "train_gan", "step", 3),
              derive_seed(0, "train_vae", "step", 4), derive_seed(0, "train_vae", "epoch", 3)}
    assert s not in others and len(others) == 4
    # a fixed reference: the derivation is stable across processes and platforms (blake2b, not hash())
    expected = int.from_bytes(hashlib.blake2b(b"0:train_vae:step:3", digest_size=8).digest(), "little") & (2**63 - 1)
    assert s == expected


def test_generator_streams() -> None:
    a = torch.rand(5, generator=generator(1, "x"))
    assert torch.equal(a, torch.rand(5, generator=generator(1, "x")))
    assert not torch.equal(a, torch.rand(5, generator=generator(1, "y")))


def test_batch_indices_epoch_is_a_partition() -> None:
    n, B = 103, 10
    spe = n // B
    batches = [batch_indices(7, step, n, B) for step in range(spe)]
    assert all(b.shape == (B,) for b in batches)
    everything = torch.cat(batches)
    assert len(set(everything.tolist())) == spe * B  # disjoint steps
    assert everything.min() >= 0 and everything.max() < n
    # same arguments -> same indices; the next epoch is a fresh permutation; another seed differs
    assert all(torch.equal(batch_indices(7, s, n, B), batches[s]) for s in range(spe))
    next_epoch = torch.cat([batch_indices(7, spe + s, n, B) for s in range(spe)])
    assert len(set(next_epoch.tolist())) == spe * B
    assert not torch.equal(next_epoch, everything)
    assert not torch.equal(batch_indices(8, 0, n, B), batches[0])


def test_batch_indices_full_batch_and_too_large() -> None:
    assert sorted(batch_indices(0, 5, 8, 8).tolist()) == list(range(8))
    with pytest.raises(ValueError):
        batch_indices(0, 0, 8, 9)


# ---------------------------------------------------------------------------------------------- durability


def test_atomic_write_fsyncs_file_then_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import genlab.paths as paths

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(a: object, b: object) -> None:
        events.append("replace")
        real_replace(a, b)

    monkeypatch.setattr(paths.os, "fsync", fsync)
    monkeypatch.setattr(paths.os, "replace", replace)
    atomic_write(tmp_path / "f.bin", b"data")
    assert events == ["fsync file", "replace", "fsync dir"]


def test_concurrent_writers_never_collide(tmp_path: Path) -> None:
    """Unique temporary names: many threads writing one path leave one whole version and no temporaries."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "shared.bin"
    payloads = [bytes([i]) * 200_000 for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: atomic_write(path, p), payloads))
    assert path.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


def test_write_failure_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import genlab.paths as paths

    path = tmp_path / "model.safetensors"
    atomic_write(path, b"old")

    def full(fd: int, data: bytes) -> None:
        os_write(fd, data[:3])  # part of it made it to the disk, then the disk was full
        raise OSError(errno.ENOSPC, "No space left on device")

    os_write = __import__("os").write
    monkeypatch.setattr(paths, "_write_all", full)
    with pytest.raises(GenlabError) as info:
        atomic_write(path, b"new content")
    assert str(path) in str(info.value) and "No space left on device" in str(info.value)
    assert info.value.exit_code == 1
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_staged_dir_restores_a_swap_cut_between_its_renames(tmp_path: Path) -> None:
    final = tmp_path / "gan"
    old = tmp_path / ".gan.old"
    old.mkdir()
    (old / "model.safetensors").write_text("finished")  # killed after `final -> old`, before `tmp -> final`
    (tmp_path / ".gan.x1y2").mkdir()  # and a half-written staging folder
    with pytest.raises(RuntimeError), staged_dir(final):
        assert (final / "model.safetensors").read_text() == "finished"  # put back before anything else
        raise RuntimeError("fails again")
    assert (final / "model.safetensors").read_text() == "finished"
    assert [p.name for p in tmp_path.iterdir()] == ["gan"]
