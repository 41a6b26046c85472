"""The train split's posterior streamed in batches: its std, its cache file, the rows kept for pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.data import store
from genlab.latent_cache import Moments, encode_batches, posterior_cache, spread_rows
from genlab.models.vae import VAE
from genlab.stages.diffusion_training import latent_x0


def _images(tmp_path: Path, n: int, side: int = 16) -> store.Images:
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (n, 1, side, side), dtype=np.uint8)
    path = tmp_path / "split.safetensors"
    store.write(path, [store.Entry("images", "U8", u8.shape, [u8[:7], u8[7:]])])
    return store.images_of(path)


def _vae() -> VAE:
    torch.manual_seed(0)
    return VAE(in_channels=1, base_channels=8, latent_channels=4, downsample=1)


def test_moments_std_equals_torch_std_over_all_elements() -> None:
    x = torch.randn(1000, 4, 3, 3, generator=torch.Generator().manual_seed(1)) * 2.5 + 0.7
    m = Moments()
    for part in x.split(77):
        m.add(part)
    assert m.n == x.numel()
    assert m.std() == pytest.approx(float(x.double().std()), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        Moments().std()


def test_spread_rows_cover_the_split() -> None:
    assert spread_rows(5, 8).tolist() == [0, 1, 2, 3, 4]
    rows = spread_rows(100_000, 8192)
    assert len(rows) == 8192 and rows[0] == 0 and rows[-1] == 99_999 and bool((rows.diff() > 0).all())


def test_posterior_cache_holds_what_encode_gives_and_is_deleted(tmp_path: Path) -> None:
    images, vae = _images(tmp_path, 600), _vae()  # 600 > one 16-px inference batch (512): two batches
    parts = list(encode_batches(vae, images, torch.device("cpu")))
    assert [len(m) for m, _ in parts] == [512, 88]
    mean, logvar = torch.cat([m for m, _ in parts]), torch.cat([lv for _, lv in parts])
    with torch.no_grad():
        direct_mean, direct_logvar = vae.encode(images[:])
    torch.testing.assert_close(mean, direct_mean, rtol=1e-5, atol=1e-6)
    path = tmp_path / "cache" / "train_ldm.latents"
    with posterior_cache(vae, images, torch.device("cpu"), path) as rows:
        assert rows.shape == (600, 8, 8, 8) and path.is_file()
        idx = torch.tensor([599, 3, 512, 511, 3])
        m, lv = rows.read(idx).chunk(2, dim=1)
        assert torch.equal(m, mean[idx]) and torch.equal(lv, logvar[idx])  # the bytes encode_batches gave
        assert torch.equal(torch.cat(list(rows.chunks(256)))[:, :4], mean)
    assert not path.exists()


def test_posterior_cache_is_deleted_when_training_fails(tmp_path: Path) -> None:
    path = tmp_path / "train_ldm.latents"
    with pytest.raises(RuntimeError, match="boom"), posterior_cache(_vae(), _images(tmp_path, 20), torch.device("cpu"),
                                                                    path):
        raise RuntimeError("boom")
    assert not path.exists()


def test_train_latents_keeps_spread_rows_across_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With more rows than PICTURE_ROWS and several encode batches, the kept means are exactly those of the spread
    rows, and the latent scale is 1 / std of one posterior draw per element."""
    import types

    import genlab.latent_cache as lc
    import genlab.stages.train_vae as tv
    from genlab.randomness import generator

    monkeypatch.setattr(lc, "inference_batch", lambda side: 6)  # 40 rows: batches of 6 (the last of 4)
    monkeypatch.setattr(tv, "PICTURE_ROWS", 7)
    images, vae = _images(tmp_path, 40), _vae()

    class Train:
        def __init__(self) -> None:
            self.images = images

        def __len__(self) -> int:
            return 40

    scale, kept = tv.train_latents(vae, types.SimpleNamespace(train=Train()), torch.device("cpu"), seed=3)
    mean, logvar = (torch.cat(p) for p in zip(*encode_batches(vae, images, torch.device("cpu")), strict=True))
    rows = spread_rows(40, 7)
    assert rows.tolist() == [0, 6, 13, 20, 26, 32, 39] and torch.equal(kept, mean[rows])
    g = generator(3, "latent-scale")
    z = torch.cat([m + torch.exp(0.5 * lv) * torch.randn(m.shape, generator=g) for m, lv in
                   zip(mean.split(6), logvar.split(6), strict=True)])
    assert scale == pytest.approx(1 / float(z.double().std()), rel=1e-9)


def test_latent_x0_draws_from_the_posterior_or_takes_its_mean() -> None:
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(9000, 2, 2, 2, generator=g) * 0.4 + 0.1  # > 8192 rows: the means' std in two chunks
    logvar = torch.randn(9000, 2, 2, 2, generator=g) - 1.0
    read = lambda idx: (mean[idx], logvar[idx])  # noqa: E731
    idx = torch.tensor([5, 8999, 0])
    scale, x0 = latent_x0("sample", read, len(mean), 0.8)
    eps = torch.randn((3, 2, 2, 2), generator=torch.Generator().manual_seed(7))
    want = (mean[idx] + (0.5 * logvar[idx]).exp() * eps) * 0.8
    assert scale == 0.8
    torch.testing.assert_close(x0(idx, torch.Generator().manual_seed(7)), want)
    scale, x0 = latent_x0("mean", read, len(mean), 0.8)
    assert scale == pytest.approx(1.0 / float(mean.double().std()), rel=1e-9)
    torch.testing.assert_close(x0(idx, torch.Generator().manual_seed(7)), mean[idx] * scale)  # no draw
    assert float((mean * scale).std()) == pytest.approx(1.0, rel=1e-6)
