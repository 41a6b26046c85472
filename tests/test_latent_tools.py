"""genlab.latent_tools: interpolation paths, principal knobs, class means and concept arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.latent_tools import (
    class_means,
    concept_arithmetic,
    decode_batched,
    lerp,
    principal_directions,
    slerp,
    traversal,
)


def _unit(*shape: int, seed: int) -> torch.Tensor:
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return z / z.norm()


# ---------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize("path_fn", [lerp, slerp])
def test_paths_have_exact_endpoints_and_shape(path_fn) -> None:
    z0, z1 = torch.randn(4, 3, 3), torch.randn(4, 3, 3) * 2
    path = path_fn(z0, z1, 7)
    assert path.shape == (7, 4, 3, 3) and path.dtype == z0.dtype
    assert torch.equal(path[0], z0) and torch.equal(path[-1], z1)


def test_lerp_reference_values() -> None:
    path = lerp(torch.tensor([0.0, 2.0]), torch.tensor([4.0, -2.0]), 5)
    assert torch.allclose(path, torch.tensor([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0], [3.0, -1.0], [4.0, -2.0]]))


def test_slerp_keeps_unit_norm_where_lerp_cuts_inside() -> None:
    z0, z1 = _unit(4, 2, 2, seed=0), _unit(4, 2, 2, seed=1)
    norms = slerp(z0, z1, 9).flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(9), atol=1e-5)
    mid = lerp(z0, z1, 9)[4].norm()
    cos = (z0.flatten() @ z1.flatten()).item()
    assert mid.item() < 0.999
    assert mid.item() == pytest.approx(math.sqrt((1 + cos) / 2), rel=1e-5)  # |(z0 + z1) / 2| for unit z0, z1


def test_slerp_reference_on_a_quarter_circle() -> None:
    path = slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 3)
    s = math.sqrt(0.5)
    assert torch.allclose(path, torch.tensor([[1.0, 0.0], [s, s], [0.0, 1.0]]), atol=1e-6)


def test_slerp_keeps_the_angle_steps_equal() -> None:
    z0, z1 = _unit(16, seed=2), _unit(16, seed=3)
    path = slerp(z0, z1, 6)
    angles = torch.arccos((path[:-1] * path[1:]).sum(1).clamp(-1, 1))
    assert torch.allclose(angles, angles.mean().expand(5), atol=1e-4)


def test_slerp_of_identical_vectors_returns_them() -> None:
    z = torch.randn(4, 2, 2)
    path = slerp(z, z.clone(), 5)
    assert torch.isfinite(path).all()
    assert torch.allclose(path, z.expand(5, 4, 2, 2), atol=1e-6)


def test_paths_reject_bad_arguments() -> None:
    with pytest.raises(ValueError):
        lerp(torch.zeros(3), torch.zeros(4), 5)
    with pytest.raises(ValueError):
        slerp(torch.zeros(3), torch.ones(3), 1)


# ---------------------------------------------------------------------------------------------- PCA knobs


def _anisotropic(n: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (n, 2, 3, 3) with std 5 along a known unit axis and std ~0.3 elsewhere, plus that axis."""
    g = torch.Generator().manual_seed(0)
    axis = torch.randn(18, generator=g)
    axis = axis / axis.norm()
    x = 0.3 * torch.randn(n, 18, generator=g) + 5.0 * torch.randn(n, 1, generator=g) * axis + 2.0
    return x.view(n, 2, 3, 3), axis.view(2, 3, 3)


def test_principal_directions_recover_the_dominant_axis() -> None:
    latents, axis = _anisotropic()
    dirs, stds = principal_directions(latents, 3)
    assert dirs.shape == (3, 2, 3, 3) and stds.shape == (3,)
    assert abs((dirs[0].flatten() @ axis.flatten()).item()) > 0.99
    assert stds[0].item() == pytest.approx(5.0, rel=0.1)
    assert (stds[:-1] >= stds[1:]).all() and stds[1].item() < 0.5


def test_principal_directions_are_orthonormal_and_match_the_covariance() -> None:
    latents, _ = _anisotropic()
    dirs, stds = principal_directions(latents, 5)
    flat = dirs.flatten(1)
    assert torch.allclose(flat @ flat.T, torch.eye(5), atol=1e-5)
    x = latents.flatten(1)
    var_along = ((x - x.mean(0)) @ flat.T).var(0)  # Var(<x, d_i>) = std_i²
    assert torch.allclose(var_along, stds.square(), rtol=1e-4)


def test_principal_directions_in_blocks_equal_the_svd_of_the_centred_latents() -> None:
    latents, _ = _anisotropic()
    x = latents.double().flatten(1)
    _, sv, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)  # X − μ = U Σ Vᵀ
    for block in (7, len(latents)):
        dirs, stds = principal_directions(latents, 3, block=block)
        for i in range(3):
            assert abs(float(dirs[i].flatten().double() @ vh[i])) == pytest.approx(1.0, abs=1e-5)
        assert torch.allclose(stds.double(), sv[:3] / (len(latents) - 1) ** 0.5, rtol=1e-5)


def test_traversal_centre_is_z_and_moves_along_one_direction() -> None:
    latents, _ = _anisotropic()
    dirs, stds = principal_directions(latents, 3)
    z = latents[0]
    grid = traversal(z, dirs, stds, steps=7, span=3.0)
    assert grid.shape == (3, 7, 2, 3, 3)
    for i in range(3):
        assert torch.equal(grid[i, 3], z)
        diff = (grid[i] - z).flatten(1)  # (steps, D)
        d = dirs[i].flatten()
        # parallel: the residual after projecting onto d vanishes
        assert torch.allclose(diff - (diff @ d)[:, None] * d, torch.zeros_like(diff), atol=1e-5)
        assert (diff @ d)[0].item() == pytest.approx(-3.0 * stds[i].item(), rel=1e-5)
        assert (diff @ d)[-1].item() == pytest.approx(3.0 * stds[i].item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- class arithmetic


def test_class_means_equal_manual_per_class_means() -> None:
    g = torch.Generator().manual_seed(1)
    latents, labels = torch.randn(40, 2, 2, 2, generator=g), torch.randint(0, 4, (40,), generator=g)
    labels[:4] = torch.arange(4)  # every class present
    means = class_means(latents, labels)
    assert means.shape == (4, 2, 2, 2)
    for c in range(4):
        assert torch.allclose(means[c], latents[labels == c].mean(0), atol=1e-6)


def test_class_means_refuses_an_empty_class() -> None:
    with pytest.raises(ValueError):
        class_means(torch.zeros(3, 2), torch.tensor([0, 0, 2]))


def test_concept_arithmetic_reference_value() -> None:
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    z = torch.tensor([3.0, 4.0])
    assert torch.equal(concept_arithmetic(z, means, 0, 2), torch.tensor([4.0, 6.0]))  # z - (1,0) + (2,2)
    batch = torch.stack([z, z])
    assert torch.equal(concept_arithmetic(batch, means, 1, 0), torch.tensor([[4.0, 3.0], [4.0, 3.0]]))


def test_concept_arithmetic_maps_a_class_mean_to_the_other() -> None:
    latents = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 14.0]])
    means = class_means(latents, torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(concept_arithmetic(means[0], means, 0, 1), means[1])


def test_decode_batched_keeps_leading_axes() -> None:
    z = torch.randn(3, 5, 4, 2, 2)
    calls: list[int] = []

    def decode(x: torch.Tensor) -> torch.Tensor:  # (B, 4, 2, 2) -> (B, 1, 4, 4)
        calls.append(x.shape[0])
        return x.sum(1, keepdim=True).repeat_interleave(2, 2).repeat_interleave(2, 3)

    out = decode_batched(decode, z, sample_dims=3, batch_size=4)
    assert out.shape == (3, 5, 1, 4, 4) and sum(calls) == 15 and max(calls) == 4
    assert torch.allclose(out[2, 1], decode(z[2, 1:2])[0])
