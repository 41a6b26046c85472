"""R1 penalty reference value and the cheap-FID schedule (stateless, so resumes see the same points)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from genlab.config import GANConfig
from genlab.models.gan import r1_penalty
from genlab.stages.train_fid import CheapFID
from genlab.training import learning_rate


def test_r1_of_a_linear_critic_is_its_squared_weight_norm() -> None:
    w = torch.tensor([[1.0, -2.0, 3.0]])
    x = torch.randn(5, 3, requires_grad=True)
    scores = (x * w).sum(1)  # D(x) = <w, x>: grad_x D = w for every sample
    assert r1_penalty(scores, x).item() == torch.tensor(14.0).item()


def test_cheap_fid_is_due_once_per_interval_on_the_logged_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    import genlab.stages.train_fid as train_fid

    monkeypatch.setattr(train_fid, "train_scores", lambda ctx, data, images, *a, **k: {"fid": float(images.sum())})
    class Train(list):  # 1000 training images of 64 px; CheapFID reads their count and size
        images = SimpleNamespace(shape=(1000, 3, 64, 64))

    data = SimpleNamespace(manifest={"num_classes": 10}, train=Train([0] * 1000))
    ctx = SimpleNamespace(seed=0, paths=SimpleNamespace(model=lambda name: Path(name)), device=torch.device("cpu"))
    cfg = GANConfig(batch_size=64, log_every_images=512)  # a logged row every 8 steps = 512 images
    sampled: list[int] = []

    def sample(labels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        sampled.append(len(seeds))
        return torch.ones(len(seeds))

    cheap = CheapFID(ctx, data, cfg, every_images=2000, n=70, sample=sample)
    results = {seen: cheap(seen) for seen in range(512, 10001, 512)}
    assert [seen for seen, r in results.items() if r] == [2048, 4096, 6144, 8192]
    assert all(r == {"cheap_fid": 70.0} for r in results.values() if r)
    assert sampled == [32, 32, 6] * 4  # inference batches of 64-px images: 32 at a time
    # stateless: a resumed run asking at 6144 gets the same answer as the uninterrupted one
    assert CheapFID(ctx, data, cfg, every_images=2000, n=70, sample=sample)(6144) == {"cheap_fid": 70.0}
    assert CheapFID(ctx, data, cfg, every_images=0, n=70, sample=sample)(6144) == {}


def test_cosine_learning_rate_reference_values() -> None:
    """SGDR eq. 5 with eta_min = 0: lr, lr/2 at the midpoint, lr (1 + cos(pi/4)) / 2 at a quarter, 0 at the end."""
    assert learning_rate(2e-3, "cosine", 0, 100) == 2e-3
    assert learning_rate(2e-3, "cosine", 50, 100) == pytest.approx(1e-3, abs=1e-15)
    assert learning_rate(2e-3, "cosine", 25, 100) == pytest.approx(1e-3 * (1 + 2 ** -0.5))
    assert learning_rate(2e-3, "cosine", 100, 100) == pytest.approx(0.0, abs=1e-18)
    assert learning_rate(2e-3, "cosine", 150, 100) == pytest.approx(0.0, abs=1e-18)  # clamped past the end
    assert learning_rate(2e-3, "constant", 77, 100) == 2e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate(1e-3, "step", 0, 10)



@pytest.mark.parametrize("plain", [False, True])
def test_vae_micro_batches_give_the_whole_batch_step(plain: bool) -> None:
    """Accumulating the batch-mean gradient over micro-batches of 5 rows (13 = 5 + 5 + 3) gives the gradient and
    the logged losses of one 13-row backward, to float tolerance."""
    from genlab.models.vae import VAE
    from genlab.stages.train_vae import vae_step

    g = torch.Generator().manual_seed(0)
    x_all = torch.rand(40, 1, 16, 16, generator=g) * 2 - 1
    idx = torch.tensor([3, 17, 0, 39, 8, 8, 21, 5, 30, 11, 2, 26, 14])
    eps = None if plain else torch.randn(13, 4, 8, 8, generator=g)
    after, logged = [], []
    for micro in (13, 5):
        torch.manual_seed(1)
        vae = VAE(in_channels=1, base_channels=8, latent_channels=4, downsample=1)
        opt = torch.optim.SGD(vae.parameters(), lr=0.1)
        logged.append({k: float(v) for k, v in vae_step(vae, opt, x_all, idx, eps, 0.5, 0.1, micro,
                                                        torch.device("cpu")).items()})
        after.append(torch.cat([p.grad.flatten() for p in vae.parameters()]))  # what the step applied
    whole, split = after
    # a real step: all but a few entries non-zero (a conv bias just before a GroupNorm has a zero gradient in exact
    # arithmetic, so a rounding-sized one that is exactly 0 on some CPUs)
    assert float((whole != 0).float().mean()) > 0.99
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-5 * float(whole.abs().max()))
    assert logged[1] == pytest.approx(logged[0], rel=1e-5)
