"""nola_mix and nola_project on every backend and device against the materialized basis in
float64, their adjointness, and their autograd (each is the other's backward)."""

import math

import pytest
import torch
from numerics import rel_err, rounding_bound

from nola_kernels import nola_basis, nola_mix, nola_project
from nola_kernels.basis import DISTRIBUTIONS

CASES = [
    # seed, k, shape, stream, distribution
    (3, 1, (1, 1), 0, "uniform"),
    (2**33 + 7, 7, (3, 5), 1, "uniform"),
    (11, 512, (8, 96), 0, "uniform"),
    (2**62, 65, (33, 17), 2**40, "rademacher"),
    (5, 2048, (3, 4), 0, "rademacher"),
    (3, 300, (40, 33), 0, "uniform"),
    (2**33 + 7, 7, (3, 5), 1, "uniform16_philox7"),
    (3, 300, (40, 33), 0, "uniform16_philox7"),
    (2**62, 65, (33, 17), 2**40, "rademacher_philox7"),
]


@pytest.mark.parametrize("seed, k, shape, stream, distribution", CASES)
def test_mix_matches_materialized_basis(device_backend, seed, k, shape, stream, distribution):
    device, backend = device_backend
    coeffs = torch.randn(k, device=device)
    basis = nola_basis(seed, k, shape, stream=stream, distribution=distribution, device=device).double()
    expected = torch.einsum("k,krc->rc", coeffs.double(), basis) / math.sqrt(k)
    mixed = nola_mix(coeffs, seed, shape, stream=stream, distribution=distribution, backend=backend)
    assert mixed.shape == shape and mixed.dtype == torch.float32 and mixed.device == device
    assert rel_err(mixed, expected) <= 1e-5


@pytest.mark.parametrize("seed, k, shape, stream, distribution", CASES)
def test_project_matches_materialized_basis(device_backend, seed, k, shape, stream, distribution):
    device, backend = device_backend
    grad = torch.randn(shape, device=device)
    basis = nola_basis(seed, k, shape, stream=stream, distribution=distribution, device=device).double()
    expected = torch.einsum("krc,rc->k", basis, grad.double()) * 0.25
    projected = nola_project(
        grad, seed, k, scale=0.25, stream=stream, distribution=distribution, backend=backend
    )
    assert projected.shape == (k,) and projected.dtype == torch.float32 and projected.device == device
    assert rel_err(projected, expected) <= 1e-5


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_mix_of_one_hot_coefficients_is_the_basis_matrix(device_backend, distribution):
    # Scale 1 and a single coefficient 1: every other term is a signed zero, so the sum is U_i
    # bit for bit, whatever the order of the sums.
    device, backend = device_backend
    k, shape = 9, (13, 301)
    basis = nola_basis(2**40 + 1, k, shape, stream=3, distribution=distribution, device=device)
    for i in (0, 4, k - 1):
        one_hot = torch.zeros(k, device=device)
        one_hot[i] = 1.0
        family = dict(scale=1.0, stream=3, distribution=distribution, backend=backend)
        mixed = nola_mix(one_hot, 2**40 + 1, shape, **family)
        assert torch.equal(mixed.view(torch.int32), basis[i].view(torch.int32)), i


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_mix_and_project_are_adjoint(device_backend, distribution):
    device, backend = device_backend
    k, shape = 37, (19, 23)
    coeffs = torch.randn(k, dtype=torch.float64, device=device)
    grad = torch.randn(shape, dtype=torch.float64, device=device)
    lhs = (nola_mix(coeffs, 9, shape, distribution=distribution, backend=backend) * grad).sum()
    rhs = (coeffs * nola_project(grad, 9, k, distribution=distribution, backend=backend)).sum()
    assert abs(lhs.item() - rhs.item()) <= 1e-12 * max(1.0, abs(lhs.item()))


@pytest.mark.parametrize("budget", [64, 5000, 1 << 20])
def test_chunking_does_not_change_results(device_backend, set_budget, budget):
    device, backend = device_backend
    coeffs, grad = torch.randn(300, device=device), torch.randn(17, 45, device=device)
    mixed, projected = (
        nola_mix(coeffs, 4, (17, 45), backend=backend),
        nola_project(grad, 4, 300, backend=backend),
    )
    set_budget(budget)
    # The budget only sets how many of its fixed blocks the PyTorch path generates at once.
    assert torch.equal(nola_mix(coeffs, 4, (17, 45), backend=backend), mixed)
    assert torch.equal(nola_project(grad, 4, 300, backend=backend), projected)


def test_float64_inputs_compute_in_float64(device_backend):
    device, backend = device_backend
    coeffs = torch.randn(6, dtype=torch.float64, device=device)
    basis = nola_basis(2, 6, (4, 5), device=device).double()
    mixed = nola_mix(coeffs, 2, (4, 5), backend=backend)
    assert mixed.dtype == torch.float64
    expected = torch.einsum("k,krc->rc", coeffs, basis) / math.sqrt(6)
    assert rel_err(mixed, expected) <= 2 * rounding_bound(torch.float64, 6)
    projected = nola_project(torch.randn(4, 5, dtype=torch.float64, device=device), 2, 6, backend=backend)
    assert projected.dtype == torch.float64


def test_gradcheck_mix_and_project(device_backend):
    device, backend = device_backend
    coeffs = torch.randn(5, dtype=torch.float64, device=device, requires_grad=True)
    grad = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: nola_mix(c, 7, (3, 4), stream=1, backend=backend), (coeffs,))
    assert torch.autograd.gradcheck(lambda g: nola_project(g, 7, 5, scale=0.3, backend=backend), (grad,))


def test_low_precision_grad_is_projected_in_float32(device_backend):
    device, backend = device_backend
    grad = torch.randn(9, 10, device=device)
    projected = nola_project(grad.bfloat16(), 1, 8, backend=backend)
    assert projected.dtype == torch.float32
    assert rel_err(projected, nola_project(grad.bfloat16().float(), 1, 8, backend=backend)) <= 1e-6


def test_nan_propagates(device_backend):
    device, backend = device_backend
    coeffs = torch.randn(4, device=device)
    coeffs[2] = float("nan")
    assert torch.isnan(nola_mix(coeffs, 1, (3, 3), backend=backend)).all()
    grad = torch.randn(3, 3, device=device)
    grad[1, 1] = float("inf")
    assert not torch.isfinite(nola_project(grad, 1, 4, backend=backend)).any()
