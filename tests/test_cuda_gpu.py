"""The CUDA backend on a GPU: the basis bit for bit, mix and project (and their grouped forms) against
the materialized basis, the official CUDA layout families' mix and project (and their grouped forms) against their
entries bit for bit and against float64, the fused low-rank kernels against float64 and against the naive path on the
same GPU, determinism, and compute-sanitizer on a small case. Skipped without CUDA or without the built extension."""

import math
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from numerics import rel_err, rounding_bound

from nola_kernels import (
    available_backends,
    nola_basis,
    nola_mix,
    nola_mix_grouped,
    nola_project,
    nola_project_grouped,
)
from nola_kernels.backends import cuda_backend
from nola_kernels.basis import DISTRIBUTIONS, V1_DISTRIBUTIONS
from nola_kernels.lowrank import LowRankSpec
from nola_kernels.official_rng import CudaLayout, official_block, official_distribution, parse_official
from nola_kernels.reference import naive_matmul

_UNAVAILABLE = cuda_backend.unavailable_reason(torch.device("cuda")) if torch.cuda.is_available() else None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"the cuda backend cannot run: {_UNAVAILABLE}"),
]

FAMILIES = [
    # seed, stream, k, shape, distribution
    (3, 0, 5, (1, 1), "uniform"),
    (2**32 + 7, 1, 37, (33, 17), "uniform"),
    (11, 0, 2048, (3, 4), "uniform"),
    (2**62, 2**40, 65, (64, 1000), "rademacher"),
    (5, 0, 600, (8, 1024), "rademacher"),
    # v1.1: 8 uniform16 entries per call (odd widths end inside a call), rademacher with 7 rounds
    (3, 0, 5, (1, 1), "uniform16_philox7"),
    (2**32 + 7, 1, 37, (33, 17), "uniform16_philox7"),
    (11, 0, 2048, (3, 5), "uniform16_philox7"),
    (2**62, 2**40, 65, (64, 1000), "rademacher_philox7"),
]


def _bits(t):
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("seed, stream, k, shape, distribution", FAMILIES)
def test_mixing_one_hot_coefficients_gives_the_basis_bit_for_bit(seed, stream, k, shape, distribution):
    # 1 * U_i plus signed zeros from the other indices is U_i exactly, so this reads the kernel's basis.
    expected = nola_basis(seed, k, shape, stream=stream, distribution=distribution, device="cuda")
    # v1.1's distributions against the reference alone: the other backends' own tests cover them.
    others = [name for name in available_backends(torch.device("cuda")) if name != "cuda"]
    backends = others if distribution in V1_DISTRIBUTIONS else []
    for i in sorted({0, k // 2, k - 1}):
        one_hot = torch.zeros(k, device="cuda")
        one_hot[i] = 1.0
        for backend in ["cuda", *backends]:
            mixed = nola_mix(
                one_hot, seed, shape, scale=1.0, stream=stream, distribution=distribution, backend=backend
            )
            assert torch.equal(_bits(mixed), _bits(expected[i])), (backend, i)


@pytest.mark.parametrize("seed, stream, k, shape, distribution", FAMILIES)
def test_mix_and_project_match_the_materialized_basis(seed, stream, k, shape, distribution):
    basis = nola_basis(seed, k, shape, stream=stream, distribution=distribution, device="cuda").double()
    coeffs, grad = torch.randn(k, device="cuda"), torch.randn(shape, device="cuda")
    mixed = nola_mix(coeffs, seed, shape, stream=stream, distribution=distribution, backend="cuda")
    projected = nola_project(
        grad, seed, k, scale=0.25, stream=stream, distribution=distribution, backend="cuda"
    )
    assert mixed.dtype == projected.dtype == torch.float32
    assert rel_err(mixed, torch.einsum("k,krc->rc", coeffs.double(), basis) / math.sqrt(k)) <= 1e-5
    assert rel_err(projected, torch.einsum("krc,rc->k", basis, grad.double()) * 0.25) <= 1e-5


def test_empty_matrices_and_out_of_range_arguments():
    ops, x = torch.ops.nola_kernels_cuda, torch.randn(4, 6, device="cuda")
    alpha, beta = torch.randn(3, device="cuda"), torch.randn(2, device="cuda")
    assert ops.mix(torch.randn(5, device="cuda"), 1, 0, 0, 5, 1.0, "uniform").shape == (0, 5)
    # No positions: every projection is an empty sum, written as zeros.
    assert torch.equal(
        ops.project(torch.empty(0, 5, device="cuda"), 1, 0, 3, 1.0, "uniform"), torch.zeros(3, device="cuda")
    )
    with pytest.raises(RuntimeError, match="rows \\* cols <= 2\\^34"):
        ops.mix(alpha, 1, 0, 2**20, 2**15, 1.0, "uniform")
    with pytest.raises(RuntimeError, match="k must be in \\[0, 2\\^32\\]"):
        ops.project(x, 1, 0, 2**32 + 1, 1.0, "uniform")
    for rank, out_features in [(0, 5), (2, 0)]:
        with pytest.raises(RuntimeError, match="must be in \\[1, 2\\^31\\)"):
            ops.lowrank_forward(x, alpha, beta, None, None, 1, 2, rank, out_features, 1.0, "uniform")
    with pytest.raises(RuntimeError, match=r"distribution must be .*'rademacher_philox7', got 'uniform16'"):
        ops.mix(alpha, 1, 0, 2, 2, 1.0, "uniform16")
    with pytest.raises(RuntimeError, match="alpha must be on cuda"):
        ops.lowrank_forward(x, alpha.cpu(), beta, None, None, 1, 2, 2, 5, 1.0, "uniform")


# -- the official CUDA layout families (csrc/official.cu) -------------------------------------------

OFFICIAL_DTYPE_RULES = [
    (torch.float32, "current"), (torch.bfloat16, "current"), (torch.bfloat16, "legacy"),
    (torch.float16, "current"), (torch.float16, "legacy"),
]  # fmt: skip
# seed, layout, k, shape: T covering the basis, T capping it (every word and several loop steps),
# a k-split of a small matrix, and a long matrix of few indices.
OFFICIAL_CASES = [
    (42, "H200", 5, (12, 37)),
    (7, CudaLayout(1, 256), 5, (12, 37)),
    (2**40 + 3, CudaLayout(3, 1024), 600, (24, 24)),
    (8_765_432_109, "H200", 3, (700, 900)),
]


def _official(layout, dtype, rule, seed, k, shape):
    name = official_distribution(layout, dtype, rule)
    family = parse_official(name)
    numel = shape[0] * shape[1]
    return name, official_block(family, seed, k, numel, 0, k, 0, numel, device="cuda")


@pytest.mark.parametrize("dtype, rule", OFFICIAL_DTYPE_RULES, ids=lambda v: str(v).removeprefix("torch."))
@pytest.mark.parametrize("seed, layout, k, shape", OFFICIAL_CASES)
def test_official_one_hot_mix_and_project_are_the_entries_bit_for_bit(seed, layout, k, shape, dtype, rule):
    name, entries = _official(layout, dtype, rule, seed, k, shape)
    numel = entries.shape[1]
    for i in sorted({0, k // 2, k - 1}):
        one_hot = torch.zeros(k, device="cuda")
        one_hot[i] = 1.0
        _poison_allocator()
        mixed = cuda_backend.mix(one_hot, seed, 0, *shape, 1.0, name)
        assert torch.equal(_bits(mixed.view(-1)), _bits(entries[i])), i
    for n in sorted({0, numel // 3, numel - 1}):
        one_hot = torch.zeros(shape, device="cuda")
        one_hot.view(-1)[n] = 1.0
        _poison_allocator()
        projected = cuda_backend.project(one_hot, seed, 0, k, 1.0, name)
        assert torch.equal(_bits(projected), _bits(entries[:, n])), n


@pytest.mark.parametrize("dtype, rule", OFFICIAL_DTYPE_RULES, ids=lambda v: str(v).removeprefix("torch."))
@pytest.mark.parametrize("seed, layout, k, shape", OFFICIAL_CASES)
def test_official_mix_and_project_match_float64_and_the_torch_backend(seed, layout, k, shape, dtype, rule):
    name, entries = _official(layout, dtype, rule, seed, k, shape)
    basis = entries.double().view(k, *shape)
    coeffs, grad = torch.randn(k, device="cuda"), torch.randn(shape, device="cuda")
    mixed = nola_mix(coeffs, seed, shape, distribution=name, backend="cuda")
    projected = nola_project(grad, seed, k, scale=0.25, distribution=name, backend="cuda")
    assert rel_err(mixed, torch.einsum("k,krc->rc", coeffs.double(), basis) / math.sqrt(k)) <= 1e-5
    assert rel_err(projected, torch.einsum("krc,rc->k", basis, grad.double()) * 0.25) <= 1e-5
    # The torch backend orders its sums otherwise: the two float32 results differ by both errors.
    assert rel_err(mixed, nola_mix(coeffs, seed, shape, distribution=name, backend="torch")) <= 2e-5
    assert rel_err(projected, nola_project(grad, seed, k, scale=0.25, distribution=name, backend="torch")) <= 2e-5
    # The sums' order is fixed by the shapes and the GPU: a rerun gives the same bits.
    assert torch.equal(mixed, nola_mix(coeffs, seed, shape, distribution=name, backend="cuda"))
    assert torch.equal(projected, nola_project(grad, seed, k, scale=0.25, distribution=name, backend="cuda"))


def test_official_nan_propagates_and_the_ops_differentiate():
    name, k, shape = official_distribution("H200", torch.bfloat16, "legacy"), 7, (9, 31)
    coeffs = torch.randn(k, device="cuda")
    coeffs[2] = float("nan")
    assert torch.isnan(cuda_backend.mix(coeffs, 3, 0, *shape, 0.5, name)).all()
    grad = torch.randn(shape, device="cuda")
    grad[4, 5] = float("nan")
    assert torch.isnan(cuda_backend.project(grad, 3, 0, k, 0.5, name)).all()
    coeffs = torch.randn(k, device="cuda", requires_grad=True)
    mixed = nola_mix(coeffs, 3, shape, distribution=name, backend="cuda")
    weights = torch.randn_like(mixed)
    mixed.backward(weights)
    assert torch.equal(coeffs.grad, cuda_backend.project(weights, 3, 0, k, 1 / math.sqrt(k), name))


def test_official_empty_shapes_and_bad_arguments():
    ops, name = torch.ops.nola_kernels_cuda, official_distribution("H200")
    assert ops.mix(torch.randn(5, device="cuda"), 1, 0, 0, 5, 1.0, name).shape == (0, 5)
    assert torch.equal(ops.mix(torch.empty(0, device="cuda"), 1, 0, 3, 4, 1.0, name), torch.zeros(3, 4, device="cuda"))
    assert torch.equal(ops.project(torch.empty(0, 5, device="cuda"), 1, 0, 3, 1.0, name), torch.zeros(3, device="cuda"))
    for bad in ["official:float64:current:270336", "official:float32:legacy:270336", "official:bfloat16:old:256",
                "official:float16:current:300", "official:float16:current:0256", "official:float16:current:2147483648",
                "official:float16:current", "official:float16:current:256:1"]:  # fmt: skip
        with pytest.raises(RuntimeError, match=f"distribution '{bad}' is not an official family's name"):
            ops.mix(torch.randn(3, device="cuda"), 1, 0, 2, 2, 1.0, bad)
    with pytest.raises(RuntimeError, match="stream must be 0 for an official family"):
        ops.project(torch.randn(2, 2, device="cuda"), 1, 1, 3, 1.0, name)
    with pytest.raises(RuntimeError, match="at most 2\\*\\*40 entries"):
        ops.project(torch.randn(2**10, device="cuda"), 1, 0, 2**31, 1.0, name)


GROUPED = [
    # seed, stream, G, k, shape, distribution: one row and a partial chunk of rows, rows past a
    # chunk of 16 (uniform) or of 2 and 4 (rademacher), k-splits, odd sizes, the GPT-2 medium factor
    (3, 0, 1, 5, (1, 1), "uniform"),
    (2**32 + 7, 1, 3, 37, (33, 17), "uniform"),
    (11, 0, 37, 2048, (3, 5), "uniform"),
    (5, 0, 12, 512, (8, 1024), "uniform"),
    (2**62, 2**40, 37, 65, (64, 100), "rademacher"),
    (7, 3, 5, 600, (8, 1024), "rademacher"),
    # v1.1: rows past a uniform16 mix chunk of 8, odd widths inside a call of 8, 7-round rademacher
    (2**32 + 7, 1, 3, 37, (33, 17), "uniform16_philox7"),
    (11, 0, 37, 2048, (3, 5), "uniform16_philox7"),
    (5, 0, 12, 512, (8, 1024), "uniform16_philox7"),
    (7, 3, 5, 600, (8, 1024), "rademacher_philox7"),
]


def _poison_allocator():
    # The ops allocate their outputs and workspace: NaN in the blocks the caching allocator hands
    # out next shows any element a kernel leaves unwritten.
    torch.full((1 << 26,), float("nan"), device="cuda")
    torch.cuda.synchronize()


def _grouped(seed, stream, G, k, shape, distribution, scale=0.25):
    coeffs, grads = torch.randn(G, k, device="cuda"), torch.randn(G, *shape, device="cuda")
    _poison_allocator()
    mixed = cuda_backend.mix_grouped(coeffs, seed, stream, *shape, scale, distribution)
    _poison_allocator()
    projected = cuda_backend.project_grouped(grads, seed, stream, k, scale, distribution)
    return coeffs, grads, mixed, projected


@pytest.mark.parametrize("seed, stream, G, k, shape, distribution", GROUPED)
def test_grouped_mix_and_project_match_float64_and_the_torch_backend(seed, stream, G, k, shape, distribution):
    coeffs, grads, mixed, projected = _grouped(seed, stream, G, k, shape, distribution)
    basis = nola_basis(seed, k, shape, stream=stream, distribution=distribution, device="cuda").double()
    assert mixed.shape == (G, *shape) and projected.shape == (G, k)
    assert rel_err(mixed, torch.einsum("gk,krc->grc", coeffs.double(), basis) * 0.25) <= 1e-5
    assert rel_err(projected, torch.einsum("krc,grc->gk", basis, grads.double()) * 0.25) <= 1e-5
    # The torch backend orders its sums otherwise: the two float32 results differ by both errors.
    family = dict(scale=0.25, stream=stream, distribution=distribution, backend="torch")
    assert rel_err(mixed, nola_mix_grouped(coeffs, seed, shape, **family)) <= 2e-5
    assert rel_err(projected, nola_project_grouped(grads, seed, k, **family)) <= 2e-5


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_grouped_mix_of_one_hot_rows_is_the_basis_bit_for_bit(distribution):
    # Row g of the identity mixes U_g alone (plus signed zeros), so the result reads the kernel's basis.
    k, shape = 40, (33, 70)
    mixed = cuda_backend.mix_grouped(torch.eye(k, device="cuda"), 9, 2, *shape, 1.0, distribution)
    expected = nola_basis(9, k, shape, stream=2, distribution=distribution, device="cuda")
    assert torch.equal(_bits(mixed), _bits(expected))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_grouped_results_are_deterministic(distribution):
    first = _grouped(1, 0, 24, 512, (16, 4096), distribution)
    second = _grouped(1, 0, 24, 512, (16, 4096), distribution)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])


def test_grouped_ops_route_to_the_cuda_kernels_and_differentiate():
    coeffs = torch.randn(13, 70, device="cuda", requires_grad=True)
    mixed = nola_mix_grouped(coeffs, 4, (9, 31), backend="cuda")
    weights = torch.randn_like(mixed)
    mixed.backward(weights)
    assert torch.equal(mixed, cuda_backend.mix_grouped(coeffs.detach(), 4, 0, 9, 31, 1 / math.sqrt(70), "uniform"))
    assert torch.equal(coeffs.grad, cuda_backend.project_grouped(weights, 4, 0, 70, 1 / math.sqrt(70), "uniform"))


def test_grouped_empty_shapes_and_bad_arguments():
    ops = torch.ops.nola_kernels_cuda
    assert ops.mix_grouped(torch.randn(3, 5, device="cuda"), 1, 0, 0, 4, 1.0, "uniform").shape == (3, 0, 4)
    assert torch.equal(ops.mix_grouped(torch.empty(2, 0, device="cuda"), 1, 0, 3, 4, 1.0, "uniform"),
                       torch.zeros(2, 3, 4, device="cuda"))  # fmt: skip
    # No positions: every projection is an empty sum, written as zeros.
    assert torch.equal(
        ops.project_grouped(torch.empty(2, 0, 5, device="cuda"), 1, 0, 3, 1.0, "rademacher"),
        torch.zeros(2, 3, device="cuda"),
    )
    assert ops.project_grouped(torch.randn(0, 3, 4, device="cuda"), 1, 0, 6, 1.0, "uniform").shape == (0, 6)
    with pytest.raises(RuntimeError, match="coeffs must be 2-D"):
        ops.mix_grouped(torch.randn(5, device="cuda"), 1, 0, 2, 2, 1.0, "uniform")
    with pytest.raises(RuntimeError, match="grads must be 3-D"):
        ops.project_grouped(torch.randn(4, 6, device="cuda"), 1, 0, 3, 1.0, "uniform")
    with pytest.raises(RuntimeError, match="k must be in \\[0, 2\\^32\\]"):
        ops.project_grouped(torch.randn(1, 4, 6, device="cuda"), 1, 0, 2**32 + 1, 1.0, "uniform")



# -- the official families in the grouped ops (csrc/grouped.cu) -------------------------------------

# G rows: one, a partial chunk, past a chunk of 16.
OFFICIAL_GROUPS = (1, 3, 37)


@pytest.mark.parametrize("dtype, rule", OFFICIAL_DTYPE_RULES, ids=lambda v: str(v).removeprefix("torch."))
@pytest.mark.parametrize("seed, layout, k, shape", OFFICIAL_CASES)
def test_official_grouped_one_hot_rows_are_the_entries_bit_for_bit(seed, layout, k, shape, dtype, rule):
    # Row g picks basis index picked[g] (mix) or position positions[g] (project); every other term
    # is a signed zero, so each row reads the kernels' entries.
    name, entries = _official(layout, dtype, rule, seed, k, shape)
    numel = entries.shape[1]
    picked = torch.randint(k, (37,), device="cuda")
    _poison_allocator()
    mixed = cuda_backend.mix_grouped(torch.eye(k, device="cuda")[picked], seed, 0, *shape, 1.0, name)
    assert torch.equal(_bits(mixed.view(37, numel)), _bits(entries[picked]))
    positions = torch.randint(numel, (37,), device="cuda")
    grads = torch.zeros(37, numel, device="cuda")
    grads[torch.arange(37, device="cuda"), positions] = 1.0
    grads = grads.view(37, *shape)
    _poison_allocator()
    projected = cuda_backend.project_grouped(grads, seed, 0, k, 1.0, name)
    assert torch.equal(_bits(projected), _bits(entries[:, positions].T.contiguous()))


@pytest.mark.parametrize("groups", OFFICIAL_GROUPS)
@pytest.mark.parametrize("dtype, rule", OFFICIAL_DTYPE_RULES, ids=lambda v: str(v).removeprefix("torch."))
@pytest.mark.parametrize("seed, layout, k, shape", OFFICIAL_CASES)
def test_official_grouped_rows_match_float64_and_the_single_calls(seed, layout, k, shape, dtype, rule, groups):
    name, entries = _official(layout, dtype, rule, seed, k, shape)
    basis = entries.double().view(k, *shape)
    coeffs, grads = torch.randn(groups, k, device="cuda"), torch.randn(groups, *shape, device="cuda")
    _poison_allocator()
    mixed = cuda_backend.mix_grouped(coeffs, seed, 0, *shape, 0.25, name)
    _poison_allocator()
    projected = cuda_backend.project_grouped(grads, seed, 0, k, 0.25, name)
    expected_mix = torch.einsum("gk,krc->grc", coeffs.double(), basis) * 0.25
    expected_project = torch.einsum("krc,grc->gk", basis, grads.double()) * 0.25
    for g in range(groups):
        # docs/spec.md, "Grouped mixing and projection": twice the float32 per-row path's bound.
        assert rel_err(mixed[g], expected_mix[g]) <= 2 * rounding_bound(torch.float32, k), g
        assert rel_err(projected[g], expected_project[g]) <= 2 * rounding_bound(torch.float32, grads[g].numel()), g
        # The single calls order their sums otherwise (csrc/official.cu): both errors apart.
        single_mix = cuda_backend.mix(coeffs[g], seed, 0, *shape, 0.25, name)
        single_project = cuda_backend.project(grads[g], seed, 0, k, 0.25, name)
        assert rel_err(mixed[g], single_mix) <= 4 * rounding_bound(torch.float32, k), g
        assert rel_err(projected[g], single_project) <= 4 * rounding_bound(torch.float32, grads[g].numel()), g
    assert torch.equal(mixed, cuda_backend.mix_grouped(coeffs, seed, 0, *shape, 0.25, name))
    assert torch.equal(projected, cuda_backend.project_grouped(grads, seed, 0, k, 0.25, name))


def test_official_grouped_nan_stays_in_its_row_and_the_ops_differentiate():
    name, k, shape = official_distribution(CudaLayout(1, 256), torch.float16, "legacy"), 7, (9, 31)
    coeffs, grads = torch.randn(20, k, device="cuda"), torch.randn(20, *shape, device="cuda")
    coeffs[17, 2] = float("nan")
    grads[3, 4, 5] = float("nan")
    mixed = cuda_backend.mix_grouped(coeffs, 3, 0, *shape, 0.5, name)
    projected = cuda_backend.project_grouped(grads, 3, 0, k, 0.5, name)
    others = [g for g in range(20) if g != 17]
    assert torch.isnan(mixed[17]).all() and torch.isfinite(mixed[others]).all()
    others = [g for g in range(20) if g != 3]
    assert torch.isnan(projected[3]).all() and torch.isfinite(projected[others]).all()
    coeffs = torch.randn(5, k, device="cuda", requires_grad=True)
    mixed = nola_mix_grouped(coeffs, 3, shape, distribution=name, backend="cuda")
    weights = torch.randn_like(mixed)
    mixed.backward(weights)
    assert torch.equal(coeffs.grad, cuda_backend.project_grouped(weights, 3, 0, k, 1 / math.sqrt(k), name))


def test_official_grouped_empty_shapes_and_bad_arguments():
    ops, name = torch.ops.nola_kernels_cuda, official_distribution("H200")
    assert ops.mix_grouped(torch.randn(3, 5, device="cuda"), 1, 0, 0, 4, 1.0, name).shape == (3, 0, 4)
    assert torch.equal(ops.mix_grouped(torch.empty(2, 0, device="cuda"), 1, 0, 3, 4, 1.0, name),
                       torch.zeros(2, 3, 4, device="cuda"))  # fmt: skip
    assert torch.equal(ops.project_grouped(torch.empty(2, 0, 5, device="cuda"), 1, 0, 3, 1.0, name),
                       torch.zeros(2, 3, device="cuda"))  # fmt: skip
    bad = "official:bfloat16:old:256"
    with pytest.raises(RuntimeError, match=f"distribution '{bad}' is not an official family's name"):
        ops.mix_grouped(torch.randn(2, 3, device="cuda"), 1, 0, 2, 2, 1.0, bad)
    with pytest.raises(RuntimeError, match=f"distribution '{bad}' is not an official family's name"):
        ops.project_grouped(torch.randn(2, 2, 2, device="cuda"), 1, 0, 3, 1.0, bad)
    with pytest.raises(RuntimeError, match="stream must be 0 for an official family"):
        ops.mix_grouped(torch.randn(2, 3, device="cuda"), 1, 1, 2, 2, 1.0, name)
    with pytest.raises(RuntimeError, match="stream must be 0 for an official family"):
        ops.project_grouped(torch.randn(2, 2, 2, device="cuda"), 1, 2, 3, 1.0, name)
    with pytest.raises(RuntimeError, match="at most 2\\*\\*40 entries"):
        ops.project_grouped(torch.randn(1, 1, 2**10, device="cuda"), 1, 0, 2**31, 1.0, name)

def _factor64(coeffs, seed, shape, offset, distribution):
    basis = nola_basis(seed, coeffs.numel(), shape, distribution=distribution).double()
    mixed = torch.einsum("k,krc->rc", coeffs, basis) / math.sqrt(coeffs.numel())
    return mixed if offset is None else mixed + offset


def _reference(inputs, grad, kw):
    """h, delta and every gradient in float64 on the CPU, with the whole basis materialized."""
    leaves = {
        n: t.detach().cpu().double().requires_grad_() if t is not None else None for n, t in inputs.items()
    }
    a = _factor64(
        leaves["alpha"], kw["seed_a"], (kw["rank"], leaves["x"].shape[1]), leaves["a0"], kw["distribution"]
    )
    b = _factor64(
        leaves["beta"], kw["seed_b"], (kw["out_features"], kw["rank"]), leaves["b0"], kw["distribution"]
    )
    h = leaves["x"] @ a.T
    delta = kw["scaling"] * h @ b.T
    delta.backward(grad.cpu().double())
    return h.detach(), delta.detach(), {n: t.grad for n, t in leaves.items() if t is not None}


def _inputs(tokens, in_f, out_f, rank, k_a, k_b, dtype, offsets=True):
    return dict(
        x=torch.randn(tokens, in_f, device="cuda").to(dtype),
        alpha=torch.randn(k_a, device="cuda"),
        beta=torch.randn(k_b, device="cuda"),
        a0=torch.randn(rank, in_f, device="cuda") / in_f**0.5 if offsets else None,
        b0=torch.randn(out_f, rank, device="cuda") if offsets else None,
    )


def _fused(inputs, grad, kw):
    spec = LowRankSpec(**kw)
    x, alpha, beta, a0, b0 = inputs.values()
    delta, h = cuda_backend.lowrank_forward(x, alpha, beta, a0, b0, spec)
    grads = cuda_backend.lowrank_backward(grad.to(x.dtype), x, h, alpha, beta, a0, b0, spec)
    return delta, h, dict(zip(("x", "alpha", "beta", "a0", "b0"), grads, strict=True))


SHAPES = [
    # tokens, in, out, rank, k, l (k_a, k_b), distribution, offsets
    (64, 256, 192, 8, 96, 80, "uniform", True),
    (130, 1024, 1024, 16, 512, 512, "uniform", True),
    (3, 1, 3, 1, 2048, 7, "uniform", False),
    (257, 300, 500, 31, 33, 40, "rademacher", True),
    (0, 64, 32, 4, 8, 8, "uniform", True),
    (130, 1024, 1024, 16, 512, 512, "uniform16_philox7", True),
    (3, 1, 3, 1, 2048, 7, "uniform16_philox7", False),
    (257, 300, 500, 31, 33, 40, "rademacher_philox7", True),
]


@pytest.mark.parametrize("tokens, in_f, out_f, rank, k_a, k_b, distribution, offsets", SHAPES)
def test_fused_float32_matches_float64(tokens, in_f, out_f, rank, k_a, k_b, distribution, offsets):
    inputs = _inputs(tokens, in_f, out_f, rank, k_a, k_b, torch.float32, offsets)
    kw = dict(
        seed_a=2**40 + 11,
        seed_b=12345,
        rank=rank,
        out_features=out_f,
        scaling=0.75,
        distribution=distribution,
    )
    grad = torch.randn(tokens, out_f, device="cuda")
    delta, h, grads = _fused(inputs, grad, kw)
    ref_h, ref_delta, ref_grads = _reference(inputs, grad, kw)
    assert delta.dtype == torch.float32 and h.dtype == torch.float32
    if tokens:
        assert rel_err(delta.cpu(), ref_delta) <= 1e-5 and rel_err(h.cpu(), ref_h) <= 1e-5
        assert rel_err(grads["x"].cpu(), ref_grads["x"]) <= 1e-5
    for name in ("alpha", "beta", "a0", "b0"):
        if name in ref_grads:
            assert rel_err(grads[name].cpu(), ref_grads[name]) <= 1e-5, name  # exact zeros when tokens = 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_half_precision_error_at_most_twice_naive(dtype):
    tokens, in_f, out_f, rank, k_a, k_b = 64, 256, 192, 8, 96, 80
    inputs = _inputs(tokens, in_f, out_f, rank, k_a, k_b, dtype)
    kw = dict(seed_a=3, seed_b=4, rank=rank, out_features=out_f, scaling=2.0, distribution="uniform")
    grad = torch.randn(tokens, out_f, device="cuda")
    delta, _, grads = _fused(inputs, grad, kw)
    _, ref_delta, ref_grads = _reference(inputs, grad, kw)
    leaves = {n: t.detach().clone().requires_grad_() for n, t in inputs.items()}
    naive = naive_matmul(**leaves, **{n: v for n, v in kw.items()})
    naive.backward(grad.to(dtype))
    assert delta.dtype == dtype and grads["x"].dtype == dtype
    assert rel_err(delta.cpu(), ref_delta) <= 2 * rel_err(naive.detach().cpu(), ref_delta)
    for name, grad_value in grads.items():
        bound = 2 * rel_err(leaves[name].grad.cpu(), ref_grads[name])
        assert rel_err(grad_value.cpu(), ref_grads[name]) <= bound, name


def test_results_are_deterministic():
    inputs = _inputs(300, 512, 384, 16, 700, 500, torch.float32)
    kw = dict(seed_a=1, seed_b=2, rank=16, out_features=384, scaling=1.0, distribution="uniform")
    grad = torch.randn(300, 384, device="cuda")
    first, second = _fused(inputs, grad, kw), _fused(inputs, grad, kw)
    assert torch.equal(first[0], second[0])
    for name in first[2]:
        assert torch.equal(first[2][name], second[2][name]), name


def test_philox_only_kernel_sums_the_basis():
    calls = 100_000
    sums = cuda_backend.philox_rate(torch.empty(0, device="cuda"), calls, 9)
    expected = nola_basis(9, 1, (1, 4 * calls), device="cuda").double().sum()
    assert abs(sums.double().sum().item() - expected.item()) <= 1e-3


SANITIZED = textwrap.dedent(
    """
    import torch
    from nola_kernels.backends import cuda_backend as c
    from nola_kernels.lowrank import LowRankSpec
    from nola_kernels.official_rng import official_distribution
    x, alpha, beta = torch.randn(5, 37, device="cuda"), torch.randn(9, device="cuda"), torch.randn(6, device="cuda")
    a0 = torch.randn(3, 37, device="cuda")
    for distribution in ("uniform", "rademacher", "uniform16_philox7", "rademacher_philox7"):
        c.mix(alpha, 1, 0, 7, 13, 0.5, distribution)
        c.project(torch.randn(7, 13, device="cuda"), 1, 0, 9, 0.5, distribution)
        c.mix_grouped(torch.randn(19, 9, device="cuda"), 1, 0, 7, 13, 0.5, distribution)
        c.project_grouped(torch.randn(19, 7, 13, device="cuda"), 1, 0, 9, 0.5, distribution)
        spec = LowRankSpec(1, 2, 3, 11, 0.5, distribution)
        delta, h = c.lowrank_forward(x.half(), alpha, beta, a0, None, spec)
        c.lowrank_backward(torch.randn(5, 11, device="cuda").half(), x.half(), h, alpha, beta, a0, None, spec)
    # An official family: slices cut, the basis indices split, tails masked.
    official = official_distribution("H200", torch.bfloat16, "legacy")
    c.mix(torch.randn(40, device="cuda"), 3, 0, 300, 70, 0.5, official)
    c.project(torch.randn(300, 70, device="cuda"), 3, 0, 40, 0.5, official)
    c.mix_grouped(torch.randn(19, 40, device="cuda"), 3, 0, 30, 7, 0.5, official)
    c.project_grouped(torch.randn(19, 30, 7, device="cuda"), 3, 0, 40, 0.5, official)
    torch.cuda.synchronize()
    """
)


@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer_finds_nothing(tool):
    sanitizer = shutil.which("compute-sanitizer")
    if sanitizer is None:
        pytest.skip("needs compute-sanitizer")
    result = subprocess.run(
        [sanitizer, f"--tool={tool}", "--error-exitcode=1", sys.executable, "-c", SANITIZED],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
