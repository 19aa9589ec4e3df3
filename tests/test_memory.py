"""The PyTorch path never holds the basis: its peak extra memory stays under the chunk budget
whatever k is, while the naive path's grows with k."""

import pytest
import torch

from nola_kernels import nola_matmul, nola_mix, nola_project
from nola_kernels.memory import peak_memory
from nola_kernels.reference import naive_matmul

BUDGET = 1 << 20
# Everything else the calls hold at these shapes (output, factors, x A^T, gradients) is < 0.5 MiB.
SLACK = 1 << 19
SHAPE = dict(rank=8, out_features=512, seed_a=3, seed_b=4)


@pytest.fixture
def budget(set_budget, backend):
    if backend == "triton":
        # On the CPU it runs in Triton's interpreter, whose temporaries are NumPy arrays that the
        # profiler does not see; the chunk budget is the PyTorch path's anyway.
        pytest.skip("Triton's CPU interpreter: its memory is not the kernels'")
    set_budget(BUDGET)
    return BUDGET


def _forward_backward_peak(fn, k, **kwargs):
    x = torch.randn(64, 512)
    alpha, beta = torch.randn(k, requires_grad=True), torch.randn(k, requires_grad=True)
    return peak_memory(lambda: fn(x, alpha, beta, **SHAPE, **kwargs).sum().backward(), "cpu")[1]


@pytest.mark.parametrize("distribution", ["uniform", "rademacher"])
def test_peak_stays_under_budget_while_naive_grows_with_k(backend, budget, distribution):
    ours = {
        k: _forward_backward_peak(nola_matmul, k, distribution=distribution, backend=backend)
        for k in (64, 1024)
    }
    naive = {k: _forward_backward_peak(naive_matmul, k, distribution=distribution) for k in (64, 1024)}
    for k, peak in ours.items():
        assert peak <= budget + SLACK, (k, peak)
    basis_bytes = 2 * 1024 * 8 * 512 * 4  # the two (k, 8, 512) and (k, 512, 8) float32 bases at k = 1024
    assert naive[1024] >= basis_bytes
    assert naive[1024] - naive[64] >= 0.9 * basis_bytes * (1 - 64 / 1024)
    assert ours[1024] <= 0.1 * naive[1024]


# uniform16_philox7 checks its own _GENERATION_BYTES, which float64 blocks outgrow with their copy
# (rademacher_philox7 generates as rademacher does).
DTYPE_DISTRIBUTIONS = [
    *((dtype, distribution) for dtype in (torch.float32, torch.float64) for distribution in ("uniform", "rademacher")),
    (torch.float32, "uniform16_philox7"),
]


@pytest.mark.parametrize("dtype, distribution", DTYPE_DISTRIBUTIONS)
# A matrix larger than the budget (cut along n), and many small ones (grouped along i), also
# smaller than one Philox call, whose unused entries are generated all the same.
@pytest.mark.parametrize("k, shape", [(3, (600, 700)), (5000, (16, 16)), (20000, (1, 3))])
def test_mix_and_project_peaks_stay_under_budget(backend, budget, dtype, distribution, k, shape):
    coeffs, grad = torch.randn(k, dtype=dtype), torch.randn(shape, dtype=dtype)
    output_bytes = shape[0] * shape[1] * dtype.itemsize
    _, mix_peak = peak_memory(
        lambda: nola_mix(coeffs, 1, shape, distribution=distribution, backend=backend), "cpu"
    )
    _, project_peak = peak_memory(
        lambda: nola_project(grad, 1, k, distribution=distribution, backend=backend), "cpu"
    )
    assert mix_peak <= budget + output_bytes + k * dtype.itemsize, mix_peak
    assert project_peak <= budget + 2 * k * dtype.itemsize, project_peak


def test_peak_memory_counts_what_a_call_holds():
    _, peak = peak_memory(lambda: torch.ones(1 << 20).sum(), "cpu")
    assert 4 << 20 <= peak <= (4 << 20) + 4096
