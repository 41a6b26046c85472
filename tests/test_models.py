"""genlab.models: shapes, determinism and the closed-form losses of the VAE, U-Net, GAN, evaluator and EMA."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from genlab.config import ComputeConfig, EvaluatorConfig
from genlab.models.ema import ema_copy, ema_decay, ema_update
from genlab.models.evaluator import Evaluator, random_noise, random_shift, stem_stride_for
from genlab.models.gan import ConditionalBatchNorm2d, Discriminator, Generator, d_hinge_loss, g_hinge_loss
from genlab.models.layers import norm, norm_groups, timestep_embedding
from genlab.models.unet import UNet
from genlab.models.vae import VAE, kl_to_standard_normal, reparameterize, vae_loss
from genlab.paths import Paths
from genlab.randomness import batch_indices, generator
from genlab.stages.common import Context
from genlab.stages.train_evaluator import build_step


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------- VAE


@pytest.mark.parametrize(("downsample", "latent_size"), [(0, 16), (1, 8), (2, 4)])
def test_vae_shapes(downsample: int, latent_size: int) -> None:
    torch.manual_seed(0)
    vae = VAE(in_channels=1, base_channels=8, latent_channels=4, downsample=downsample)
    mean, logvar = vae.encode(_x(2, 1, 16, 16))
    assert mean.shape == logvar.shape == (2, 4, latent_size, latent_size)
    assert vae.decode(mean).shape == (2, 1, 16, 16)


def test_kl_reference_values() -> None:
    D = 4 * 8 * 8
    zeros = torch.zeros(2, 4, 8, 8)
    assert torch.equal(kl_to_standard_normal(zeros, zeros), torch.zeros(2))
    assert torch.allclose(kl_to_standard_normal(torch.ones(2, 4, 8, 8), zeros), torch.full((2,), 0.5 * D))
    log4 = torch.full((3, 5), math.log(4.0))
    expected = 5 * 0.5 * (4 - 1 - math.log(4.0))
    assert torch.allclose(kl_to_standard_normal(torch.zeros(3, 5), log4), torch.full((3,), expected))
    # per sample: a different mean per row gives a different KL per row
    kl = kl_to_standard_normal(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.zeros(2, 2))
    assert torch.allclose(kl, torch.tensor([0.0, 2.0]))


def test_kl_is_nonnegative_and_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(1)
    mean, logvar = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    ref = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    kl = kl_to_standard_normal(mean, logvar)
    assert kl.shape == (4,) and (kl >= 0).all()
    assert torch.allclose(kl, ref, rtol=1e-5)


def test_vae_loss_perfect_reconstruction() -> None:
    x = _x(3, 1, 4, 4)
    mean, logvar = torch.ones(3, 2, 2, 2), torch.zeros(3, 2, 2, 2)
    loss, recon, kl = vae_loss(x, x.clone(), mean, logvar, beta=0.7, sigma=0.1)
    assert recon.item() == 0.0
    assert kl.item() == pytest.approx(0.5 * 8)
    assert loss.item() == pytest.approx(0.7 * 0.5 * 8)


def test_vae_loss_gaussian_recon_term() -> None:
    x = torch.zeros(2, 1, 4, 4)
    zeros = torch.zeros(2, 1, 2, 2)
    loss, recon, kl = vae_loss(x, x + 0.1, zeros, zeros, beta=1.0, sigma=0.1)
    # ||x - x_hat||^2 / (2 sigma^2) = 16 * 0.01 / 0.02 = 8 per sample
    assert recon.item() == pytest.approx(8.0, rel=1e-5)
    assert kl.item() == 0.0 and loss.item() == pytest.approx(8.0, rel=1e-5)


def test_reparameterize() -> None:
    mean, logvar = _x(2, 3), torch.full((2, 3), math.log(9.0))
    assert torch.equal(reparameterize(mean, logvar, torch.zeros(2, 3)), mean)
    assert torch.allclose(reparameterize(mean, logvar, torch.ones(2, 3)), mean + 3.0)


def test_vae_logvar_is_clamped() -> None:
    vae = VAE(in_channels=1, base_channels=8, latent_channels=2, downsample=1)
    with torch.no_grad():
        vae.encoder.net[-1].bias.fill_(1e4)  # every output huge: logvar must still be <= 20
    _, logvar = vae.encode(_x(1, 1, 8, 8))
    assert logvar.max().item() == 20.0


# ---------------------------------------------------------------------------------------------- U-Net


def _unet() -> UNet:
    return UNet(in_channels=4, base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
                attention_levels=(2,), num_classes=10)


def test_unet_shape_and_conditioning() -> None:
    torch.manual_seed(0)
    net = _unet().eval()
    x = _x(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    y_null = torch.full((3,), 10)
    with torch.no_grad():
        out = net(x, t, y_null)
        assert out.shape == (3, 4, 8, 8) and torch.isfinite(out).all()
        # the output depends on the label and on the time step
        assert not torch.allclose(out, net(x, t, torch.tensor([1, 2, 3])))
        assert not torch.allclose(out, net(x, torch.tensor([1, 1, 1]), y_null))
        # each sample is processed independently (no batch coupling)
        assert torch.allclose(net(x[:1], t[:1], y_null[:1]), out[:1], atol=1e-5)


def test_unet_two_levels() -> None:
    torch.manual_seed(0)
    net = UNet(in_channels=2, base_channels=8, channel_mults=(1, 2), num_res_blocks=2, attention_levels=(0, 1))
    assert net(_x(2, 2, 8, 8), torch.tensor([3, 4]), torch.tensor([0, 10])).shape == (2, 2, 8, 8)


def test_unet_same_seed_same_weights_and_output() -> None:
    torch.manual_seed(0)
    a = _unet()
    torch.manual_seed(0)
    b = _unet()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x, t, y = _x(2, 4, 8, 8), torch.tensor([5, 7]), torch.tensor([3, 10])
    with torch.no_grad():
        assert torch.equal(a(x, t, y), b(x, t, y))
    torch.manual_seed(1)
    c = _unet()
    assert not all(torch.equal(sa[k], c.state_dict()[k]) for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize(("channels", "groups"), [((64,), 32), ((256, 32), 32), ((48,), 16), ((24,), 8),
                                                   ((8, 16, 16), 8), ((4, 8, 8), 4), ((3,), 1), ((96, 24), 8)])
def test_norm_groups_is_32_or_the_largest_count_every_width_divides_into(channels: tuple[int, ...],
                                                                       groups: int) -> None:
    assert norm_groups(*channels) == groups
    assert all(c % groups == 0 for c in channels)
    gn = norm(channels[0])
    assert (gn.num_groups, gn.num_channels) == (norm_groups(channels[0]), channels[0])


def test_timestep_embedding() -> None:
    emb = timestep_embedding(torch.tensor([0, 1, 10]), 8)
    assert emb.shape == (3, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # cos(0) = 1, sin(0) = 0
    assert emb[1, 0].item() == pytest.approx(math.cos(1.0)) and emb[1, 4].item() == pytest.approx(math.sin(1.0))


# ---------------------------------------------------------------------------------------------- GAN


def test_gan_shapes_and_range() -> None:
    torch.manual_seed(0)
    gen = Generator(z_dim=16, num_classes=10, base=8, image_size=16, channels=1)
    disc = Discriminator(num_classes=10, base=8, image_size=16, channels=1)
    z = torch.randn(5, 16) * 10  # large inputs saturate tanh: still within [-1, 1]
    y = torch.arange(5)
    imgs = gen(z, y)
    assert imgs.shape == (5, 1, 16, 16)
    assert imgs.min().item() >= -1.0 and imgs.max().item() <= 1.0
    scores = disc(imgs, y)
    assert scores.shape == (5,) and torch.isfinite(scores).all()


def test_gan_generator_other_size() -> None:
    gen = Generator(z_dim=4, base=8, image_size=32, channels=3)
    assert gen(torch.randn(2, 4), torch.tensor([0, 9])).shape == (2, 3, 32, 32)


def test_conditional_batch_norm_reference_values() -> None:
    """BN(h) * gamma_y + beta_y per row's class; plain batch norm at initialisation; num_classes 0: nn.BatchNorm2d."""
    torch.manual_seed(0)
    h, y = torch.randn(6, 3, 4, 4) * 3 + 1, torch.tensor([0, 1, 2, 0, 1, 2])
    cbn = ConditionalBatchNorm2d(3, num_classes=3)
    normed = torch.nn.functional.batch_norm(h, None, None, training=True, eps=1e-5)
    assert torch.allclose(cbn(h, y), normed, atol=1e-6)  # gains 1, biases 0
    with torch.no_grad():
        cbn.gain.weight.copy_(torch.tensor([[1.0] * 3, [2.0] * 3, [0.5, 1.0, 3.0]]))
        cbn.bias.weight.copy_(torch.tensor([[0.0] * 3, [-1.0] * 3, [0.25, 0.0, 1.0]]))
    out = cbn(h, y)
    assert torch.allclose(out[1], normed[1] * 2.0 - 1.0, atol=1e-6)
    assert torch.allclose(out[2, 2], normed[2, 2] * 3.0 + 1.0, atol=1e-6)
    assert torch.allclose(out[3], normed[3], atol=1e-6)
    plain = ConditionalBatchNorm2d(3, num_classes=0)
    assert plain.gain is None and plain.bn.affine
    assert torch.allclose(plain(h, y), normed, atol=1e-6)


def test_gan_generator_label_enters_only_through_batch_norm() -> None:
    """z alone feeds the first layer (a label beside z let the generator ignore z: README "The GAN's
    conditioning"); with every class's gains and biases equal, the label no longer changes the image, with them
    apart it does."""
    torch.manual_seed(0)
    gen = Generator(z_dim=16, num_classes=10, base=8, image_size=16, channels=1).eval()
    assert gen.fc.in_features == 16
    z = torch.randn(4, 16)
    a, b = gen(z, torch.tensor([0, 1, 2, 3])), gen(z, torch.tensor([9, 8, 7, 6]))
    assert torch.equal(a, b)  # at initialisation every class's gain is 1 and bias 0
    with torch.no_grad():
        for cbn in gen.norms:
            cbn.bias.weight[9].fill_(0.5)
    c = gen(z, torch.tensor([9, 8, 7, 6]))
    assert not torch.allclose(a[0], c[0]) and torch.equal(a[1:], c[1:])
    assert not torch.allclose(gen(z[:1], torch.tensor([3])), gen(z[1:2], torch.tensor([3])))  # z matters


def test_hinge_loss_reference_values() -> None:
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0])
    # mean(relu(1 - [2, 0])) + mean(relu(1 + [-2, 0])) = 0.5 + 0.5
    assert d_hinge_loss(real, fake).item() == pytest.approx(1.0)
    assert d_hinge_loss(torch.tensor([-1.0, 3.0]), torch.tensor([1.0, -5.0])).item() == pytest.approx(1.0 + 1.0)
    assert d_hinge_loss(torch.tensor([1.5]), torch.tensor([-1.5])).item() == 0.0  # beyond the margins
    assert g_hinge_loss(fake).item() == pytest.approx(1.0)
    assert g_hinge_loss(torch.tensor([3.0, 1.0])).item() == pytest.approx(-2.0)


# ---------------------------------------------------------------------------------------------- evaluator


def test_evaluator_shapes() -> None:
    torch.manual_seed(0)
    net = Evaluator(in_channels=1, num_classes=10, width=8).eval()
    x = _x(6, 1, 16, 16)
    assert net.feature_dim == 32
    feats = net.features(x)
    assert feats.shape == (6, 32)
    logits = net(x)
    assert logits.shape == (6, 10)
    assert torch.allclose(logits, net.head(feats))


@pytest.mark.parametrize(("size", "stride"), [(8, 1), (16, 1), (32, 1), (33, 2), (64, 2), (65, 4), (128, 4)])
def test_the_evaluator_stem_reaches_32_px_or_less(size: int, stride: int) -> None:
    assert stem_stride_for(size) == stride
    net = Evaluator(in_channels=3, num_classes=10, width=8, stem_stride=stride)
    maps = net.body[0](_x(2, 3, size, size))
    assert maps.shape[-1] == -(-size // stride) <= 32


def test_random_shift_is_a_translation() -> None:
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    out = random_shift(x, torch.Generator().manual_seed(0), max_shift=1)
    assert out.shape == x.shape
    # the centre 3x3 of every output is a 3x3 window of the input shifted by at most one pixel
    for i in range(2):
        windows = [x[i, :, 1 + dy : 4 + dy, 1 + dx : 4 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(torch.equal(out[i, :, 1:4, 1:4], w) for w in windows)
    assert torch.equal(out, random_shift(x, torch.Generator().manual_seed(0), max_shift=1))


def test_random_noise_has_a_per_image_std_up_to_the_maximum() -> None:
    x = torch.zeros(64, 1, 32, 32)  # mid-grey: no clamping, so the residual is the noise itself
    out = random_noise(x, torch.Generator().manual_seed(0), max_std=0.05)
    std = (out - x).flatten(1).std(1)
    assert std.max() <= 0.05 * 1.1 and std.min() < 0.01 < 0.04 < std.max()  # sigma ~ U(0, 0.05), one per image
    assert torch.equal(out, random_noise(x, torch.Generator().manual_seed(0), max_std=0.05))
    black = random_noise(-torch.ones(4, 3, 8, 8), torch.Generator().manual_seed(1), max_std=0.5)
    assert black.min() == -1 and black.max() <= 1 and (black > -1).any()  # clamped to the pixel range


# ---------------------------------------------------------------------------------------------- EMA


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ema_copy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(5.0)
    return ema, model


def test_ema_copy_is_frozen_eval_copy() -> None:
    ema, model = _pair()
    assert not ema.training and all(not p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_ema_update_decay_0_copies() -> None:
    ema, model = _pair()
    ema_update(ema, model, 0.0)
    for a, b in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_ema_update_decay_1_keeps_params_and_copies_buffers() -> None:
    ema, model = _pair()
    before = [p.clone() for p in ema.parameters()]
    ema_update(ema, model, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), before, strict=True))
    assert torch.equal(ema[1].running_mean, torch.full((2,), 5.0))


def test_ema_update_interpolates() -> None:
    ema, model = _pair()
    before = [p.clone() for p in ema.parameters()]
    ema_update(ema, model, 0.25)
    for e, b, m in zip(ema.parameters(), before, model.parameters(), strict=True):
        assert torch.allclose(e, 0.25 * b + 0.75 * m)


def test_ema_decay_schedule() -> None:
    assert ema_decay(images_seen=0, batch_size=64, halflife_images=20000) == 0.0
    assert ema_decay(10**9, 64, 20000) == pytest.approx(0.5 ** (64 / 20000), rel=1e-12)
    # ramp-up: h = 0.1 * images_seen while that is below the half-life
    assert ema_decay(1000, 64, 20000) == pytest.approx(0.5 ** (64 / 100), rel=1e-12)
    assert ema_decay(0, 64, 20000, rampup=0) == pytest.approx(0.5 ** (64 / 20000))
    decays = [ema_decay(n, 64, 20000) for n in (0, 1000, 10000, 100000, 200000, 400000)]
    assert decays == sorted(decays) and decays[-2] == decays[-1]


def test_evaluator_step_adds_noise_only_when_asked() -> None:
    """The stage's step: noise_std > 0 changes what the evaluator sees; with or without, the same bits each time."""
    g0 = torch.Generator().manual_seed(0)
    x_all, labels = torch.rand(64, 1, 16, 16, generator=g0) * 2 - 1, (torch.arange(64) % 10)[:, None]
    ctx = Context(paths=Paths(Path("/nonexistent")), seed=0, device=torch.device("cpu"), compute=ComputeConfig())

    def first_loss(noise_std: float) -> torch.Tensor:
        b = build_step(EvaluatorConfig(batch_size=16, noise_std=noise_std), ctx, 1, [10], x_all, labels)
        return b.step(batch_indices(0, 0, 64, 16), generator(0, "test", 0))["loss"]

    assert torch.equal(first_loss(0.0), first_loss(0.0))
    assert torch.equal(first_loss(0.1), first_loss(0.1))
    assert not torch.equal(first_loss(0.0), first_loss(0.1))
