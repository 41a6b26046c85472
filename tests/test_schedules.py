"""genlab.diffusion: noise schedules, the forward process, guidance and the DDIM sampler."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.diffusion.loss import drop_labels, eps_loss, q_sample
from genlab.diffusion.sample import ddim_sample, ddim_timesteps, guide, guided
from genlab.diffusion.schedules import alpha_bar, betas_from_alpha_bar, cosine_alpha_bar, linear_betas

# ---------------------------------------------------------------------------------------------- schedules


def test_linear_schedule_reference_values() -> None:
    betas = linear_betas(1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert torch.allclose(betas[1] - betas[0], torch.tensor((0.02 - 1e-4) / 999, dtype=torch.float64))
    ab = alpha_bar(1000, "linear")
    assert torch.equal(ab, torch.cumprod(1 - betas, 0))
    assert (ab[1:] < ab[:-1]).all()
    assert ab[0].item() == pytest.approx(1 - 1e-4, rel=1e-12)
    assert 3.5e-5 < ab[-1].item() < 4.5e-5  # the well-known ~4.0e-5 of DDPM's schedule
    assert ab[-1].item() == pytest.approx(math.prod(1 - b for b in betas.tolist()), rel=1e-9)


def test_linear_schedule_scales_with_T() -> None:
    betas = linear_betas(100)
    assert betas[0].item() == pytest.approx(1e-3) and betas[-1].item() == pytest.approx(0.2)


def _f(t: float, T: int, s: float = 0.008) -> float:
    return math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2


@pytest.mark.parametrize("T", [10, 1000])
def test_cosine_alpha_bar_matches_formula(T: int) -> None:
    ab = alpha_bar(T, "cosine")
    assert ab.dtype == torch.float64 and ab.shape == (T,)
    betas = betas_from_alpha_bar(ab)
    unclipped = betas < 0.999 - 1e-12
    assert unclipped[: T - 1].all()  # only the last step (f(T) = 0) reaches the clip
    expected = torch.tensor([_f(t, T) / _f(0, T) for t in range(1, T + 1)], dtype=torch.float64)
    assert torch.allclose(ab[unclipped], expected[unclipped], rtol=0, atol=1e-10)
    assert betas[-1].item() == pytest.approx(0.999)
    assert (ab[1:] < ab[:-1]).all()


def test_cosine_is_default_of_cosine_alpha_bar() -> None:
    assert torch.equal(cosine_alpha_bar(50), alpha_bar(50, "cosine"))


def test_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="quadratic"):
        alpha_bar(10, "quadratic")


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_betas_from_alpha_bar_inverts_cumprod(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    betas = torch.rand(50, generator=g, dtype=torch.float64) * 0.5 + 0.01
    assert torch.allclose(betas_from_alpha_bar(torch.cumprod(1 - betas, 0)), betas, rtol=0, atol=1e-12)
    ab = alpha_bar(200, kind)
    assert torch.allclose(torch.cumprod(1 - betas_from_alpha_bar(ab), 0), ab, rtol=1e-10, atol=0)
    if kind == "linear":
        assert torch.allclose(betas_from_alpha_bar(ab), linear_betas(200), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- loss


def _ab() -> torch.Tensor:
    return alpha_bar(1000, "linear")


def test_q_sample_without_noise_scales_x0() -> None:
    ab = _ab()
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 500, 999])
    out = q_sample(x0, t, torch.zeros_like(x0), ab)
    for i in range(3):
        assert torch.allclose(out[i], math.sqrt(ab[t[i]].item()) * x0[i], rtol=1e-6, atol=0)


def test_q_sample_of_zero_is_scaled_noise() -> None:
    ab = _ab()
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 10, 999])
    out = q_sample(torch.zeros_like(noise), t, noise, ab)
    for i in range(3):
        # rtol 1e-3: q_sample forms 1 - alpha_bar in float32, which loses ~4 digits at t=0 (ab = 0.9999)
        assert torch.allclose(out[i], math.sqrt(1 - ab[t[i]].item()) * noise[i], rtol=1e-3, atol=0)


def test_q_sample_preserves_unit_variance() -> None:
    # Var(x_t) = ab + (1 - ab) = 1 for unit-variance x0 and noise (the "variance preserving" process).
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(20000, 1, 1, 1, generator=g), torch.randn(20000, 1, 1, 1, generator=g)
    out = q_sample(x0, torch.full((20000,), 300), noise, _ab())
    assert out.var().item() == pytest.approx(1.0, abs=0.05)


def test_drop_labels_probability_and_values() -> None:
    y = torch.arange(10).repeat(1000)
    dropped = drop_labels(y, 0.3, 10, torch.Generator().manual_seed(0))
    is_null = dropped == 10
    assert is_null.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert torch.equal(dropped[~is_null], y[~is_null])
    assert torch.equal(drop_labels(y, 0.0, 10, torch.Generator().manual_seed(0)), y)


def test_eps_loss_of_oracle_is_zero() -> None:
    # A denoiser that knows x0 recovers the noise exactly: loss 0; a zero predictor scores E[eps^2] ~= 1.
    ab = _ab()
    x0 = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(4))

    def oracle(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = ab.float()[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    assert eps_loss(oracle, x0, torch.zeros(64), ab, torch.Generator().manual_seed(5)).item() < 1e-6
    zero_loss = eps_loss(lambda x, t, y: torch.zeros_like(x), x0, torch.zeros(64), ab, torch.Generator().manual_seed(5))
    assert zero_loss.item() == pytest.approx(1.0, abs=0.15)


# ---------------------------------------------------------------------------------------------- guidance


def test_guide_reference_values() -> None:
    c, u = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, 1.0, -1.0])
    assert torch.equal(guide(c, u, 1.0), c)
    assert torch.equal(guide(c, u, 0.0), u)
    assert torch.allclose(guide(c, u, 3.0), u + 3 * (c - u))
    assert torch.allclose(guide(c, u, 3.0), torch.tensor([2.0, -8.0, 11.0]))


def test_guided_batches_cond_and_null() -> None:
    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x * 0 + y.view(-1, 1).float()  # eps = the label

    y = torch.tensor([2, 5])
    x = torch.zeros(2, 3)
    t = torch.zeros(2, dtype=torch.long)
    out = guided(model, y, null_label=10, scale=2.0)(x, t)
    # u + 2 (c - u) = 10 + 2 (y - 10)
    assert torch.allclose(out, (10 + 2 * (y - 10)).view(-1, 1).float().expand(2, 3))
    assert torch.equal(guided(model, y, 10, 1.0)(x, t), y.view(-1, 1).float().expand(2, 3))
    assert torch.equal(guided(model, y, 10, 0.0)(x, t), torch.full((2, 3), 10.0))  # w = 0: the null label only


# ---------------------------------------------------------------------------------------------- DDIM


def test_ddim_timesteps_reference() -> None:
    assert ddim_timesteps(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ddim_timesteps(10, 10) == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert ddim_timesteps(1000, 1) == [999]
    steps = ddim_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 999 and all(a > b for a, b in zip(steps, steps[1:], strict=False))
    for bad in (0, 11):
        with pytest.raises(ValueError):
            ddim_timesteps(10, bad)


def _point_mass_oracle(x_star: torch.Tensor, ab: torch.Tensor):
    """The exact eps-predictor when the data distribution is the single point x_star."""
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ab[t].view(-1, *([1] * (x.dim() - 1)))
        return (x - a.sqrt() * x_star) / (1 - a).sqrt()
    return denoise


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 10, 50])
def test_ddim_eta0_with_oracle_returns_the_data_point(kind: str, steps: int) -> None:
    ab = alpha_bar(1000, kind)
    g = torch.Generator().manual_seed(6)
    x_star = torch.rand(4, 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 2, 4, 4, generator=g, dtype=torch.float64) * 3
    out = ddim_sample(_point_mass_oracle(x_star, ab), noise, ab, ddim_timesteps(1000, steps), eta=0.0)
    assert out.dtype == torch.float64 and out.shape == noise.shape
    assert torch.allclose(out, x_star, rtol=0, atol=1e-5)


def test_ddim_eta1_with_step_noise_returns_the_data_point() -> None:
    ab = alpha_bar(1000, "linear")
    g = torch.Generator().manual_seed(7)
    x_star = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    calls: list[int] = []

    def step_noise(i: int) -> torch.Tensor:
        calls.append(i)
        return torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(100 + i), dtype=torch.float64)

    steps = ddim_timesteps(1000, 20)
    out = ddim_sample(_point_mass_oracle(x_star, ab), noise, ab, steps, eta=1.0, step_noise=step_noise)
    assert torch.allclose(out, x_star, rtol=0, atol=1e-5)
    assert calls == list(range(len(steps) - 1))  # fresh noise at every step but the last


def test_ddim_eta1_intermediate_marginal_is_q() -> None:
    # For the point-mass oracle, one DDPM-like (eta=1) step from x_t lands on sqrt(ab_prev) x* + sqrt(1-ab_prev) z':
    # the deviation from sqrt(ab_prev) x* has exactly std sqrt(1 - ab_prev).
    ab = alpha_bar(1000, "linear")
    n = 20000
    x_star = torch.full((n, 1), 0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(8)
    t, t_prev = 999, 499
    x_t = ab[t].sqrt() * x_star + (1 - ab[t]).sqrt() * torch.randn(n, 1, generator=g, dtype=torch.float64)
    z = torch.randn(n, 1, generator=g, dtype=torch.float64)
    denoise = _point_mass_oracle(x_star, ab)

    # Two steps [t, t_prev]: stop after the first by reading what the denoiser sees at t_prev.
    seen: list[torch.Tensor] = []

    def spy(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return denoise(x, tt)

    ddim_sample(spy, x_t, ab, [t, t_prev], eta=1.0, step_noise=lambda i: z)
    dev = seen[1] - ab[t_prev].sqrt() * x_star
    assert dev.std().item() == pytest.approx((1 - ab[t_prev]).sqrt().item(), rel=0.03)
    # ... and the injected noise enters with weight sigma_t of Song et al. (eq. 16, eta = 1).
    sigma = ((1 - ab[t_prev]) / (1 - ab[t])).sqrt() * (1 - ab[t] / ab[t_prev]).sqrt()
    assert sigma.item() > 0.1
    assert (dev * z).mean().item() == pytest.approx(sigma.item(), abs=0.03)


def test_ddim_eta_positive_requires_step_noise() -> None:
    ab = alpha_bar(100, "linear")
    with pytest.raises(ValueError, match="step_noise"):
        ddim_sample(lambda x, t: torch.zeros_like(x), torch.zeros(1, 1), ab, [99, 49], eta=0.5)


def test_ddim_eta0_is_deterministic_and_float32_close() -> None:
    ab = alpha_bar(1000, "cosine")
    x_star = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    noise = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    oracle = _point_mass_oracle(x_star.double(), ab)

    def denoise32(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return oracle(x.double(), t).float()

    a = ddim_sample(denoise32, noise, ab, ddim_timesteps(1000, 25))
    b = ddim_sample(denoise32, noise, ab, ddim_timesteps(1000, 25))
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert torch.allclose(a, x_star, atol=1e-3)
