"""genlab.diffusion against Hugging Face diffusers' schedulers, used as a reference implementation.

diffusers is a test-only dependency (the `test` extra); genlab never imports it, and this module is skipped
without it. diffusers builds its schedules in float32, so schedule comparisons use float32 tolerances; the
step comparisons give diffusers genlab's float64 alpha_bar so that they test the update formulas to float64
precision, plus one run with diffusers' own float32 schedule as shipped.
"""

from __future__ import annotations

import pytest

diffusers = pytest.importorskip("diffusers")

import torch  # noqa: E402
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

from genlab.diffusion.loss import q_sample  # noqa: E402
from genlab.diffusion.objectives import target  # noqa: E402
from genlab.diffusion.sample import as_eps_denoiser, ddim_sample, ddim_timesteps, ddpm_sample  # noqa: E402
from genlab.diffusion.schedules import alpha_bar, betas_from_alpha_bar, linear_betas  # noqa: E402

T = 1000
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}  # genlab kind -> diffusers beta_schedule
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}  # genlab kind -> diffusers prediction_type
SHAPE = (2, 3, 4, 4)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


_AB = alpha_bar(T, "linear")


def _model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed, nonlinear, t-dependent stand-in for a network, read as eps or as v: near the exact eps of
    N(0, I) data, sqrt(1 - ab_t) x_t, so that samples stay O(1) and tolerances mean what they say."""
    s = (1 - _AB[t]).sqrt().view(-1, 1, 1, 1).to(x.dtype)
    return s * x + 0.2 * torch.tanh(x) + 0.1 * torch.sin(3 * x) + (t.to(x.dtype) / (10 * T)).view(-1, 1, 1, 1)


def _t(t: int | torch.Tensor) -> torch.Tensor:
    return torch.full((SHAPE[0],), int(t), dtype=torch.long)


def _use_float64(sched: DDPMScheduler | DDIMScheduler, ab: torch.Tensor) -> None:
    """Give diffusers genlab's float64 alpha_bar, so only the update formulas are compared."""
    sched.alphas_cumprod = ab.clone()
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)  # set_alpha_to_one=True
    sched.one = torch.tensor(1.0, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- (a) schedules


def test_linear_schedule_matches_ddpm_scheduler() -> None:
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    assert torch.allclose(linear_betas(T), ref.betas.double(), rtol=2e-7, atol=0)  # float32 linspace
    assert torch.allclose(alpha_bar(T, "linear"), ref.alphas_cumprod.double(), rtol=1e-6, atol=0)  # float32 cumprod


def test_cosine_schedule_matches_squaredcos_cap_v2() -> None:
    # diffusers: beta_i = min(1 - f((i+1)/T) / f(i/T), 0.999), f(t) = cos((t + 0.008)/1.008 pi/2)^2, i = 0..T-1;
    # genlab's cosine_alpha_bar builds the same betas, so alpha_bar[k] = f((k+1)/T)/f(0) in both, with no
    # index shift (the shifted comparison below is far off). Only float32 rounding separates them.
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    ab = alpha_bar(T, "cosine")
    assert torch.allclose(betas_from_alpha_bar(ab), ref.betas.double(), rtol=2e-7, atol=0)
    assert ref.betas[-1].item() == pytest.approx(0.999) and betas_from_alpha_bar(ab)[-1].item() == pytest.approx(0.999)
    # alpha_bar[-1] ~ 2.4e-9 carries float32's relative error of the 1000-term product (~1e-5), hence atol
    assert torch.allclose(ab, ref.alphas_cumprod.double(), rtol=1e-6, atol=1e-12)
    assert (ab[1:] - ref.alphas_cumprod.double()[:-1]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_forward_process_and_velocity_match(kind: str) -> None:
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=SCHEDULES[kind])
    ab = alpha_bar(T, kind)
    _use_float64(ref, ab)
    x0, noise, t = _randn(*SHAPE, seed=0), _randn(*SHAPE, seed=1), torch.tensor([3, 998])
    assert torch.allclose(q_sample(x0, t, noise, ab), ref.add_noise(x0, noise, t), rtol=0, atol=1e-12)
    v = target("v", x0, noise, ab[t].view(-1, 1, 1, 1))
    assert torch.allclose(v, ref.get_velocity(x0, noise, t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 50, 999, 1000])
def test_ddim_timesteps_are_diffusers_trailing(steps: int) -> None:
    ref = DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    ref.set_timesteps(steps)
    assert ddim_timesteps(T, steps) == ref.timesteps.tolist()


# ---------------------------------------------------------------------------------------------- (b) DDIM


def _recording(denoise):
    """Wrap a denoiser to record the x_t it is called with: the sampler's state before each step."""
    seen: list[torch.Tensor] = []

    def wrapped(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return denoise(x, t)
    return wrapped, seen


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("kind", ["eps", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_steps_match_ddim_scheduler(schedule: str, kind: str, eta: float) -> None:
    ab = alpha_bar(T, schedule)
    ref = DDIMScheduler(num_train_timesteps=T, beta_schedule=SCHEDULES[schedule], clip_sample=False,
                        set_alpha_to_one=True, timestep_spacing="trailing", prediction_type=PREDICTION_TYPES[kind])
    _use_float64(ref, ab)
    ref.set_timesteps(2)  # [999, 499]
    x_T, zs = _randn(*SHAPE, seed=2), [_randn(*SHAPE, seed=3 + i) for i in range(2)]

    x, ref_states = x_T, []
    for i, t in enumerate(ref.timesteps):
        ref_states.append(x)
        x = ref.step(_model(x, _t(t)), int(t), x, eta=eta, variance_noise=zs[i] if eta > 0 else None).prev_sample

    denoise, states = _recording(as_eps_denoiser(_model, kind, ab))
    out = ddim_sample(denoise, x_T, ab, ddim_timesteps(T, 2), eta=eta, step_noise=zs.__getitem__)
    assert len(states) == 2
    assert torch.allclose(states[1], ref_states[1], rtol=1e-10, atol=1e-10)  # one step: 999 -> 499
    assert torch.allclose(out, x, rtol=1e-10, atol=1e-10)  # and the last: 499 -> x_0 (ab_prev = 1)
    assert (states[1] - x_T).abs().mean() > 0.1


def test_ddim_matches_ddim_scheduler_as_shipped_float32() -> None:
    # diffusers' own float32 alphas_cumprod and float32 tensors: agreement to float32 precision.
    ref = DDIMScheduler(num_train_timesteps=T, clip_sample=False, timestep_spacing="trailing")
    ref.set_timesteps(10)
    x_T = _randn(*SHAPE, seed=4).float()
    x = x_T
    for t in ref.timesteps:
        x = ref.step(_model(x, _t(t)), int(t), x).prev_sample
    out = ddim_sample(_model, x_T, alpha_bar(T, "linear"), ddim_timesteps(T, 10))
    assert out.dtype == x.dtype == torch.float32
    assert torch.allclose(out, x, rtol=1e-5, atol=1e-5)  # measured: max |diff| 1.7e-6 on samples of size ~1


# ---------------------------------------------------------------------------------------------- (c) DDPM


@pytest.mark.parametrize("kind", ["eps", "v"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddpm_steps_match_ddpm_scheduler(kind: str, clip: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    # DDPMScheduler.step draws its variance noise itself through `randn_tensor`. Rather than relying on how it
    # consumes a torch.Generator, we replace that function in its module by one that hands out the same z_i that
    # genlab's step_noise(i) gets: the noise is then identical by construction, so prev_sample (mean + sigma z)
    # is compared whole, and a wrong mean or a wrong sigma both show.
    # One known difference: diffusers adds noise whenever t > 0, also on the last step to x_0, with its variance
    # clamped to 1e-20 (sigma = 1e-10); genlab adds none there. That is the 1e-9 atol below.
    ab = alpha_bar(T, "cosine")
    steps = [999, 700, 420, 123, 40, 3]
    zs = [_randn(*SHAPE, seed=10 + i) for i in range(len(steps))]
    calls: list[int] = []

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):  # noqa: ANN001, ANN202
        calls.append(len(calls))
        return zs[len(calls) - 1].to(dtype).reshape(shape)

    monkeypatch.setattr("diffusers.schedulers.scheduling_ddpm.randn_tensor", fake_randn)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", variance_type="fixed_small",
                        clip_sample=clip is not None, clip_sample_range=clip or 1.0,
                        prediction_type=PREDICTION_TYPES[kind])
    _use_float64(ref, ab)
    ref.set_timesteps(timesteps=steps)
    x_T = _randn(*SHAPE, seed=5)
    x, ref_states = x_T, []
    for t in ref.timesteps:
        ref_states.append(x)
        x = ref.step(_model(x, _t(t)), int(t), x).prev_sample
    assert len(calls) == len(steps)

    denoise, states = _recording(as_eps_denoiser(_model, kind, ab))
    out = ddpm_sample(denoise, x_T, ab, steps, zs.__getitem__, clip_x0=clip)
    assert torch.allclose(states[1], ref_states[1], rtol=1e-10, atol=1e-10)  # one step: 999 -> 700
    for mine, theirs in zip(states, ref_states, strict=True):
        assert torch.allclose(mine, theirs, rtol=1e-10, atol=1e-10)
    assert torch.allclose(out, x, rtol=0, atol=1e-9)
