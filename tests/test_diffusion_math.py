"""genlab.diffusion math against reference values: eps/v objectives, Min-SNR weights, the DDPM sampler and the
variational bound. Everything here is float64 and closed-form, so tolerances are tight."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from genlab.diffusion.bound import decoder_nll, nll_bound_bits_per_dim, posterior_kl, prior_kl
from genlab.diffusion.loss import diffusion_loss, eps_loss, q_sample
from genlab.diffusion.objectives import min_snr_weight, snr, target, to_eps, to_x0
from genlab.diffusion.posterior import posterior_mean, posterior_variance
from genlab.diffusion.sample import as_eps_denoiser, ddim_sample, ddim_timesteps, ddpm_sample, guide, guided
from genlab.diffusion.schedules import alpha_bar, betas_from_alpha_bar

KINDS = ["eps", "v"]


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _point_oracle(point: torch.Tensor, ab: torch.Tensor):
    """The exact eps-denoiser of the point mass at `point`: eps = (x_t - sqrt(ab_t) x*) / sqrt(1 - ab_t)."""
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ab[t].view(-1, *([1] * (x.dim() - 1)))
        return (x - a.sqrt() * point) / (1 - a).sqrt()
    return denoise


def _smooth(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed, nonlinear, t-dependent stand-in for a network."""
    return 0.7 * torch.tanh(x) + 0.2 * torch.sin(3 * x) + (t.double() / 1000).view(-1, *([1] * (x.dim() - 1)))


# ---------------------------------------------------------------------------------------------- objectives


@pytest.mark.parametrize("kind", KINDS)
def test_target_round_trips(kind: str) -> None:
    x0, eps = _randn(5, 2, 3, 3, seed=0), _randn(5, 2, 3, 3, seed=1)
    ab = torch.tensor([0.9999, 0.9, 0.5, 0.1, 4e-5], dtype=torch.float64).view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    out = target(kind, x0, eps, ab)
    assert torch.allclose(to_eps(kind, out, x_t, ab), eps, rtol=0, atol=1e-9)
    assert torch.allclose(to_x0(kind, out, x_t, ab), x0, rtol=0, atol=1e-9 / math.sqrt(4e-5))


def test_v_reference_values() -> None:
    # ab = 0.64: sqrt(ab) = 0.8, sqrt(1 - ab) = 0.6; x0 = 2, eps = 1 -> x_t = 2.2, v = 0.8 - 1.2 = -0.4
    ab, x0, eps = (torch.tensor([v], dtype=torch.float64) for v in (0.64, 2.0, 1.0))
    x_t = torch.tensor([2.2], dtype=torch.float64)
    assert target("v", x0, eps, ab).item() == pytest.approx(-0.4, abs=1e-12)
    assert target("eps", x0, eps, ab) is eps
    assert to_eps("v", torch.tensor([-0.4], dtype=torch.float64), x_t, ab).item() == pytest.approx(1.0, abs=1e-12)
    assert to_x0("v", torch.tensor([-0.4], dtype=torch.float64), x_t, ab).item() == pytest.approx(2.0, abs=1e-12)
    assert to_x0("eps", eps, x_t, ab).item() == pytest.approx(2.0, abs=1e-12)  # (2.2 - 0.6) / 0.8


def test_unknown_prediction_raises() -> None:
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="x0"):
        target("x0", x, x, x)
    with pytest.raises(ValueError, match="sample"):
        as_eps_denoiser(_smooth, "sample", alpha_bar(10, "cosine"))


def test_min_snr_weight_reference_values() -> None:
    ab = torch.tensor([0.5, 0.8, 0.95], dtype=torch.float64)  # SNR = 1, 4, 19
    assert torch.allclose(snr(ab), torch.tensor([1.0, 4.0, 19.0], dtype=torch.float64))
    assert torch.allclose(min_snr_weight("eps", ab, 5.0), torch.tensor([1.0, 1.0, 5 / 19], dtype=torch.float64))
    assert torch.allclose(min_snr_weight("v", ab, 5.0), torch.tensor([0.5, 0.8, 0.25], dtype=torch.float64))
    assert torch.allclose(min_snr_weight("eps", ab, 1.0), torch.tensor([1.0, 0.25, 1 / 19], dtype=torch.float64))


def test_min_snr_weights_are_the_same_x0_weight_for_both_kinds() -> None:
    # Hang et al.: both weights equal min(SNR, gamma) ||x0 - x0_hat||^2 for the same (wrong) prediction.
    x0, eps, x_t_noise = _randn(4, 8, seed=2), _randn(4, 8, seed=3), _randn(4, 8, seed=4)
    ab = torch.tensor([0.99, 0.7, 0.3, 0.01], dtype=torch.float64).view(-1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    x0_hat = x0 + 0.1 * x_t_noise
    eps_hat = (x_t - ab.sqrt() * x0_hat) / (1 - ab).sqrt()
    v_hat = target("v", x0_hat, eps_hat, ab)
    x0_err = (x0 - x0_hat).pow(2).sum(1)
    expected = snr(ab.flatten()).clamp(max=5.0) * x0_err
    for kind, pred in (("eps", eps_hat), ("v", v_hat)):
        err = (target(kind, x0, eps, ab) - pred).pow(2).sum(1)
        assert torch.allclose(min_snr_weight(kind, ab.flatten(), 5.0) * err, expected, rtol=1e-10, atol=0)


def _linear_model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * x + (t.float() / 1000 + y.float()).view(-1, 1, 1, 1)


def test_diffusion_loss_eps_unweighted_is_eps_loss() -> None:
    ab = alpha_bar(1000, "linear")
    x0, y = torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    new = diffusion_loss(_linear_model, x0, y, ab, torch.Generator().manual_seed(7))
    assert torch.equal(new, eps_loss(_linear_model, x0, y, ab, torch.Generator().manual_seed(7)))
    # the historical eps_loss body, inlined
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (6,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    old = F.mse_loss(_linear_model(q_sample(x0, t, noise, ab), t, y), noise)
    assert torch.equal(new, old) and new.item() > 0.1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_diffusion_loss_matches_manual(kind: str, gamma: float | None) -> None:
    ab = alpha_bar(1000, "cosine")
    x0, y = torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(1)), torch.zeros(8, dtype=torch.long)
    loss = diffusion_loss(_linear_model, x0, y, ab, torch.Generator().manual_seed(3), kind, gamma)
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (8,), generator=g)  # t first, then the noise
    noise = torch.randn(x0.shape, generator=g)
    a = ab[t].view(-1, 1, 1, 1)
    x_t = (a.sqrt() * x0 + (1 - a).sqrt() * noise).float()
    tgt = noise if kind == "eps" else (a.sqrt() * noise - (1 - a).sqrt() * x0).float()
    mse = (_linear_model(x_t, t, y) - tgt).pow(2).mean((1, 2, 3))
    s = ab[t] / (1 - ab[t])
    w = torch.ones(8) if gamma is None else (s.clamp(max=gamma) / (s if kind == "eps" else s + 1)).float()
    assert loss.item() == pytest.approx((w * mse).mean().item(), rel=1e-5)


@pytest.mark.parametrize("gamma", [None, 5.0])
def test_diffusion_loss_v_oracle_is_zero(gamma: float | None) -> None:
    ab = alpha_bar(1000, "linear")
    x0 = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(4))

    def v_oracle(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = ab[t].view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).float()

    y = torch.zeros(16)
    assert diffusion_loss(v_oracle, x0, y, ab, torch.Generator().manual_seed(5), "v", gamma).item() < 1e-5
    assert diffusion_loss(v_oracle, x0, y, ab, torch.Generator().manual_seed(5), "eps", gamma).item() > 0.05


# ---------------------------------------------------------------------------------------------- samplers


def test_as_eps_denoiser_converts_v_and_commutes_with_guidance() -> None:
    ab = alpha_bar(100, "cosine")
    x, t = _randn(3, 2, 4, 4, seed=5), torch.tensor([0, 50, 99])
    a = ab[t].view(-1, 1, 1, 1)
    v = _smooth(x, t)
    assert torch.allclose(as_eps_denoiser(_smooth, "v", ab)(x, t), a.sqrt() * v + (1 - a).sqrt() * x, atol=1e-12)
    assert as_eps_denoiser(_smooth, "eps", ab) is _smooth

    def v_model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _smooth(x, t) * (1 + y.view(-1, 1, 1, 1))

    y = torch.tensor([1, 2, 3])
    guided_then_eps = as_eps_denoiser(guided(v_model, y, 0, 3.0), "v", ab)(x, t)
    cond = as_eps_denoiser(lambda x, t: v_model(x, t, y), "v", ab)(x, t)
    uncond = as_eps_denoiser(lambda x, t: v_model(x, t, torch.zeros_like(y)), "v", ab)(x, t)
    assert torch.allclose(guided_then_eps, guide(cond, uncond, 3.0), atol=1e-12)


def _noises(n: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    return [_randn(*shape, seed=100 + i) for i in range(n)]


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_ddpm_point_mass_oracle_returns_the_point(steps: int) -> None:
    ab = alpha_bar(1000, "linear")
    point = _randn(1, 2, 4, 4, seed=6).clamp(-1, 1)
    zs = _noises(steps, (3, 2, 4, 4))
    out = ddpm_sample(_point_oracle(point, ab), _randn(3, 2, 4, 4, seed=7), ab, ddim_timesteps(1000, steps),
                      zs.__getitem__)
    assert torch.allclose(out, point.expand(3, -1, -1, -1), rtol=0, atol=1e-4)
    assert (out - point).abs().max().item() < 1e-9  # the last step returns x0_hat, which the oracle gets exactly


def _algorithm_2(denoise, x: torch.Tensor, ab: torch.Tensor, zs: list[torch.Tensor]) -> torch.Tensor:
    """Ho et al. 2020, Algorithm 2 over every step, written in the eq. 11 form with the schedule's own betas."""
    betas = betas_from_alpha_bar(ab)
    T = ab.shape[0]
    for i, t in enumerate(range(T - 1, -1, -1)):
        eps = denoise(x, torch.full((x.shape[0],), t))
        mean = (x - betas[t] / (1 - ab[t]).sqrt() * eps) / (1 - betas[t]).sqrt()
        sigma2 = (1 - ab[t - 1]) / (1 - ab[t]) * betas[t] if t > 0 else 0.0  # beta_tilde; z = 0 at the last step
        x = mean + math.sqrt(sigma2) * zs[i]
    return x


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddpm_full_list_is_algorithm_2(kind: str) -> None:
    T = 100
    ab = alpha_bar(T, kind)
    x_T, zs = _randn(2, 3, 4, 4, seed=8), _noises(T, (2, 3, 4, 4))
    expected = _algorithm_2(_smooth, x_T, ab, zs)
    assert ddim_timesteps(T, T) == list(range(T - 1, -1, -1))
    out = ddpm_sample(_smooth, x_T, ab, ddim_timesteps(T, T), zs.__getitem__)
    assert torch.allclose(out, expected, rtol=1e-9, atol=1e-9)
    assert (out - x_T).abs().mean() > 0.1


def test_ddpm_equals_ddim_with_eta_one() -> None:
    # With sigma_t^2 = beta_tilde (eta = 1), DDIM's update is the DDPM posterior mean plus the same noise
    # (Song et al. 2021, sec. 4.1): a respaced check of mu_tilde and beta_tilde, independent of eq. 7's form.
    ab = alpha_bar(1000, "cosine")
    steps = [999, 700, 420, 123, 40, 3]
    x_T, zs = _randn(2, 1, 5, 5, seed=9), _noises(len(steps), (2, 1, 5, 5))
    out = ddpm_sample(_smooth, x_T, ab, steps, zs.__getitem__)
    ref = ddim_sample(_smooth, x_T, ab, steps, eta=1.0, step_noise=zs.__getitem__)
    assert torch.allclose(out, ref, rtol=0, atol=1e-10)
    assert not torch.allclose(out, ddim_sample(_smooth, x_T, ab, steps), atol=1e-2)


def test_ddpm_noise_calls_and_clipping() -> None:
    ab = alpha_bar(1000, "linear")
    calls: list[int] = []

    def step_noise(i: int) -> torch.Tensor:
        calls.append(i)
        return _randn(2, 4, seed=i)

    point = torch.tensor([[2.0, -3.0, 0.5, 0.0]], dtype=torch.float64)
    out = ddpm_sample(_point_oracle(point, ab), _randn(2, 4, seed=1), ab, [999, 500, 10], step_noise, clip_x0=1.0)
    assert calls == [0, 1]  # no noise after the last step
    assert torch.allclose(out, torch.tensor([[1.0, -1.0, 0.5, 0.0]], dtype=torch.float64).expand(2, 4), atol=1e-12)


def test_posterior_reference_values() -> None:
    # ab_t = 0.5, ab_prev = 0.8: alpha = 0.625, beta = 0.375; beta_tilde = 0.2/0.5 * 0.375 = 0.15
    # mu = sqrt(0.8) 0.375/0.5 x0 + sqrt(0.625) 0.2/0.5 x_t
    ab_t, ab_prev = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    assert posterior_variance(ab_t, ab_prev).item() == pytest.approx(0.15, abs=1e-15)
    mu = posterior_mean(torch.tensor(1.0), torch.tensor(2.0), ab_t, ab_prev).item()
    assert mu == pytest.approx(math.sqrt(0.8) * 0.75 + math.sqrt(0.625) * 0.8, abs=1e-14)
    assert posterior_variance(ab_t, torch.tensor(1.0, dtype=torch.float64)).item() == 0.0


# ---------------------------------------------------------------------------------------------- variational bound


def test_prior_kl_matches_torch_distributions() -> None:
    ab = alpha_bar(1000, "linear")[-1]
    x0 = _randn(3, 2, 4, 4, seed=10)
    q = torch.distributions.Normal(ab.sqrt() * x0, (1 - ab).sqrt())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(prior_kl(x0, ab), expected, rtol=1e-10, atol=1e-12)
    assert prior_kl(x0, ab).min() > 0
    # ab = 0.1, x0 = 1: (ab x0^2 - ab - log(1 - ab)) / 2 = -log(0.9) / 2 per dim, for 3 dims
    one, ab_01 = torch.ones(1, 3, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64)
    assert prior_kl(one, ab_01).item() == pytest.approx(-1.5 * math.log(0.9), rel=1e-12)


def test_bound_index_convention() -> None:
    # z_k = sqrt(ab[k]) x0 + sqrt(1 - ab[k]) eps, k = 0..T-1: the decoder is called at k = 0, the KL terms at
    # k = 1..T-1, each once, and nothing at k = T (which does not exist).
    T = 6
    ab = alpha_bar(T, "cosine")
    seen: list[int] = []

    def record(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert (t == t[0]).all()
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    nll_bound_bits_per_dim(record, _randn(2, 3, seed=0), ab, torch.Generator().manual_seed(0))
    assert seen == [0, 1, 2, 3, 4, 5]


def _oracle_bits(point: torch.Tensor, ab: torch.Tensor) -> float:
    """A perfect denoiser of a point mass makes every L_k vanish: L = L_T + D/2 log(2 pi beta_1)."""
    D, a = point.numel(), ab[-1].item()
    l_T = 0.5 * sum(a * v * v - a - math.log(1 - a) for v in point.flatten().tolist())
    return (l_T + 0.5 * D * math.log(2 * math.pi * (1 - ab[0].item()))) / (D * math.log(2))


@pytest.mark.parametrize(("T", "kind"), [(6, "cosine"), (50, "linear"), (1000, "linear")])
def test_bound_of_point_mass_oracle_reference_value(T: int, kind: str) -> None:
    ab = alpha_bar(T, kind)
    point = _randn(1, 2, 3, 3, seed=11)
    bits = nll_bound_bits_per_dim(_point_oracle(point, ab), point.expand(4, -1, -1, -1), ab,
                                  torch.Generator().manual_seed(0))
    assert bits.shape == (4,) and bits.dtype == torch.float64
    assert torch.allclose(bits, torch.full((4,), _oracle_bits(point, ab), dtype=torch.float64), rtol=0, atol=1e-9)


def test_bound_of_point_mass_oracle_decreases_with_T() -> None:
    # beta_1 = 0.1/T for the scaled linear schedule, so L_0 = D/2 log(2 pi beta_1) falls as T grows; the
    # bound goes negative because a point mass has no finite density (see genlab.diffusion.bound).
    point = torch.full((1, 8), 0.3, dtype=torch.float64)
    bits = []
    for T in (50, 200, 1000):
        ab = alpha_bar(T, "linear")
        bits.append(nll_bound_bits_per_dim(_point_oracle(point, ab), point, ab, torch.Generator().manual_seed(0)))
    assert bits[0] > bits[1] > bits[2]
    assert bits[1].item() - bits[2].item() == pytest.approx(0.5 * math.log2(5), abs=1e-3)  # beta_1 ratio 5
    assert bits[2].item() < -5


def test_bound_oracle_is_below_zero_denoiser() -> None:
    ab = alpha_bar(50, "linear")
    point = _randn(1, 16, seed=12)
    x0 = point.expand(8, -1)
    oracle = nll_bound_bits_per_dim(_point_oracle(point, ab), x0, ab, torch.Generator().manual_seed(1))
    zero = nll_bound_bits_per_dim(lambda x, t: torch.zeros_like(x), x0, ab, torch.Generator().manual_seed(1))
    assert (zero > oracle + 10).all()


def _kl_weights(ab: torch.Tensor) -> torch.Tensor:
    """w_k = beta_k^2 / (2 beta_tilde_k alpha_k (1 - ab_k)), k = 1..T-1: L_k = w_k ||eps - eps_hat||^2 (Ho et al.,
    eq. 12, written with the schedule's betas rather than through mu_tilde); w[0] = 0 is unused."""
    b = betas_from_alpha_bar(ab)
    beta_tilde = (1 - ab[:-1]) / (1 - ab[1:]) * b[1:]
    return torch.cat([ab.new_zeros(1), b[1:] ** 2 / (2 * beta_tilde * (1 - b[1:]) * (1 - ab[1:]))])


def _biased_exact_nats(point: torch.Tensor, ab: torch.Tensor, c: torch.Tensor) -> float:
    """eps_hat = eps + c[k] makes every term deterministic: L_k = w_k D c_k^2 for k >= 1, and
    x0 - x0_hat = sqrt((1 - ab_0)/ab_0) c_0 in L_0 = D/2 log(2 pi beta_1) + D c_0^2 / (2 ab_0)."""
    D, a, beta_1 = point.numel(), ab[-1].item(), 1 - ab[0].item()
    l_T = 0.5 * sum(a * v * v - a - math.log(1 - a) for v in point.flatten().tolist())
    l_k = D * (_kl_weights(ab)[1:] * c[1:] ** 2).sum().item()
    l_0 = 0.5 * D * math.log(2 * math.pi * beta_1) + D * c[0].item() ** 2 / (2 * ab[0].item())
    return l_T + l_k + l_0


def _biased(point: torch.Tensor, ab: torch.Tensor, c: torch.Tensor):
    oracle = _point_oracle(point, ab)
    return lambda x, t: oracle(x, t) + c[t].view(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize(("T", "kind"), [(20, "cosine"), (50, "linear")])
def test_bound_of_biased_denoiser_reference_value(T: int, kind: str) -> None:
    ab = alpha_bar(T, kind)
    c = 0.1 + 0.4 * torch.rand(T, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    point = _randn(1, 5, seed=13)
    bits = nll_bound_bits_per_dim(_biased(point, ab, c), point.expand(3, -1), ab, torch.Generator().manual_seed(2))
    expected = _biased_exact_nats(point, ab, c) / (5 * math.log(2))
    assert torch.allclose(bits, torch.full((3,), expected, dtype=torch.float64), rtol=1e-9, atol=0)


@pytest.mark.parametrize("n_t", [1, 3, 40])
def test_bound_monte_carlo_scale_is_exact_when_terms_are_equal(n_t: int) -> None:
    # c_k = 1/sqrt(w_k) makes every L_k = D, so any draw of k gives sum_k L_k = (T - 1) D exactly.
    T = 20
    ab = alpha_bar(T, "cosine")
    w = _kl_weights(ab)
    c = torch.cat([ab.new_zeros(1), w[1:].rsqrt()])
    point = _randn(1, 3, seed=17)
    bits = nll_bound_bits_per_dim(_biased(point, ab, c), point.expand(4, -1), ab, torch.Generator().manual_seed(n_t),
                                  n_t=n_t)
    expected = _biased_exact_nats(point, ab, c) / (3 * math.log(2))
    assert _biased_exact_nats(point, ab, c) == pytest.approx(_oracle_bits(point, ab) * 3 * math.log(2) + 19 * 3)
    assert torch.allclose(bits, torch.full((4,), expected, dtype=torch.float64), rtol=1e-9, atol=0)


def test_bound_monte_carlo_is_unbiased() -> None:
    T, B = 50, 5000
    ab = alpha_bar(T, "linear")
    c = torch.full((T,), 0.3, dtype=torch.float64)
    point = _randn(1, 2, seed=14)
    expected = _biased_exact_nats(point, ab, c) / (2 * math.log(2))
    mc = nll_bound_bits_per_dim(_biased(point, ab, c), point.expand(B, -1), ab, torch.Generator().manual_seed(3),
                                n_t=4)
    assert mc.std() > 0.1  # it does sample k
    assert mc.mean().item() == pytest.approx(expected, abs=4 * mc.std().item() / math.sqrt(B))
    again = nll_bound_bits_per_dim(_biased(point, ab, c), point.expand(B, -1), ab, torch.Generator().manual_seed(3),
                                   n_t=4)
    assert torch.equal(mc, again)
    with pytest.raises(ValueError, match="n_t"):
        nll_bound_bits_per_dim(_biased(point, ab, c), point, ab, torch.Generator(), n_t=0)


def test_bound_of_gaussian_data_is_entropy_plus_fixed_variance_gap() -> None:
    # x0 ~ N(0, I): every z_k ~ N(0, I), the exact denoiser is eps_hat = sqrt(1 - ab_k) z_k, the true reverse
    # step is N(sqrt(alpha_k) z_k, beta_k) and p matches its mean but uses beta_tilde_k. So
    # E[L] / D = H(N(0,1)) + sum_k KL(N(0, beta_k) || N(0, beta_tilde_k)), r_k = (1 - ab_k)/(1 - ab_{k-1}):
    # E[L] / D = 1/2 log(2 pi e) + sum_{k>=1} 1/2 (r_k - 1 - log r_k); L_T and L_0 add nothing on average.
    T = 100
    ab = alpha_bar(T, "linear")
    x0 = _randn(512, 64, seed=15)
    bits = nll_bound_bits_per_dim(lambda x, t: (1 - ab[t]).sqrt().view(-1, 1) * x, x0, ab,
                                  torch.Generator().manual_seed(4))
    r = (1 - ab[1:]) / (1 - ab[:-1])
    expected = (0.5 * math.log(2 * math.pi * math.e) + 0.5 * (r - 1 - r.log()).sum().item()) / math.log(2)
    assert expected - 0.5 * math.log2(2 * math.pi * math.e) > 1.0  # the gap is large enough to see
    assert bits.mean().item() == pytest.approx(expected, abs=4 * bits.std().item() / math.sqrt(512))


def test_bound_terms_are_consistent() -> None:
    # The bound is exactly the sum of its public terms, drawn in the documented order.
    T = 5
    ab = alpha_bar(T, "cosine")
    x0 = _randn(3, 4, seed=16)
    bits = nll_bound_bits_per_dim(_smooth, x0, ab, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    nats = prior_kl(x0, ab[-1]) + decoder_nll(_smooth, x0, ab, torch.randn(3, 4, generator=g, dtype=torch.float64))
    for k in range(1, T):
        noise = torch.randn(3, 4, generator=g, dtype=torch.float64)
        nats = nats + posterior_kl(_smooth, x0, ab, torch.full((3,), k), noise)
    assert torch.allclose(bits, nats / (4 * math.log(2)), rtol=1e-12, atol=0)
