"""The Triton backend's grouped mix and projection (triton/kernels/grouped.py) against a float64
reference from nola_basis: row g of mix_grouped is coeffs[g] @ U, row g of project_grouped is
grads[g] @ U^T. On the CPU they run in Triton's interpreter, whose tl.dot is NumPy's BLAS: the
results are held to rounding bounds, and to their own bits run to run."""

import pytest
import torch
from numerics import rel_err, rounding_bound

from nola_kernels import available_backends, nola_basis
from nola_kernels.basis import DISTRIBUTIONS

pytest.importorskip("triton")
if "triton" not in available_backends("cpu"):
    pytest.skip("the Triton kernels run on the CPU only in the interpreter", allow_module_level=True)

import triton
import triton.language as tl

from nola_kernels.backends import get_backend, triton_backend
from nola_kernels.triton_kernels import grouped

ROW_COUNTS = [1, 3, 17]
# seed, stream, k, shape: positions and k not multiples of 4, 128 or a tile; fewer positions
# than one rademacher call; several splits of k and groups of positions in the interpreter's grid.
FAMILIES = [
    (2**40 + 5, 3, 45, (7, 37)),
    (9, 2**33 + 1, 70, (3, 5)),
]


def _basis(seed, stream, k, shape, distribution):
    """The family's basis in float64 as (k, rows * cols)."""
    return nola_basis(seed, k, shape, stream=stream, distribution=distribution).double().view(k, -1)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("count", ROW_COUNTS)
@pytest.mark.parametrize("seed, stream, k, shape", FAMILIES)
def test_mix_grouped_matches_float64(distribution, count, seed, stream, k, shape):
    coeffs = torch.randn(count, k)
    mixed = triton_backend.mix_grouped(coeffs, seed, stream, *shape, 0.5, distribution)
    expected = 0.5 * coeffs.double() @ _basis(seed, stream, k, shape, distribution)
    assert mixed.shape == (count, *shape) and mixed.dtype == torch.float32
    assert torch.isfinite(mixed).all()  # the partials start as NaN (NOLA_DEBUG_POISON)
    for g in range(count):
        assert rel_err(mixed[g].view(-1), expected[g]) <= rounding_bound(torch.float32, k)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("count", ROW_COUNTS)
@pytest.mark.parametrize("seed, stream, k, shape", FAMILIES)
def test_project_grouped_matches_float64(distribution, count, seed, stream, k, shape):
    grads = torch.randn(count, *shape)
    projected = triton_backend.project_grouped(grads, seed, stream, k, 0.25, distribution)
    expected = 0.25 * grads.double().view(count, -1) @ _basis(seed, stream, k, shape, distribution).T
    assert projected.shape == (count, k) and projected.dtype == torch.float32
    assert torch.isfinite(projected).all()
    numel = shape[0] * shape[1]
    for g in range(count):
        assert rel_err(projected[g], expected[g]) <= rounding_bound(torch.float32, numel)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_more_rows_than_a_program_holds(distribution):
    """Past MAX_ROWS rows the grid takes several row blocks; every row is still written."""
    seed, stream, k, shape = 17, 0, 5, (2, 9)
    count = grouped.MAX_ROWS + 3
    basis = _basis(seed, stream, k, shape, distribution)
    coeffs, grads = torch.randn(count, k), torch.randn(count, *shape)
    mixed = triton_backend.mix_grouped(coeffs, seed, stream, *shape, 1.0, distribution)
    projected = triton_backend.project_grouped(grads, seed, stream, k, 1.0, distribution)
    for g in (0, grouped.MAX_ROWS - 1, grouped.MAX_ROWS, count - 1):
        assert rel_err(mixed[g].view(-1), coeffs[g].double() @ basis) <= rounding_bound(torch.float32, k)
        assert rel_err(projected[g], basis @ grads[g].double().view(-1)) <= rounding_bound(
            torch.float32, shape[0] * shape[1]
        )


@pytest.mark.parametrize("count, k, shape", [(0, 5, (2, 3)), (2, 0, (2, 3)), (2, 5, (0, 3)), (2, 5, (3, 0))])
def test_empty_operands_give_empty_results_or_zeros(count, k, shape):
    """No rows, no basis matrix or no positions: an empty result, or zeros (sums over nothing)."""
    mixed = triton_backend.mix_grouped(torch.randn(count, k), 9, 0, *shape, 1.0, "uniform")
    projected = triton_backend.project_grouped(torch.randn(count, *shape), 9, 0, k, 1.0, "uniform")
    assert torch.equal(mixed, torch.zeros(count, *shape))
    assert torch.equal(projected, torch.zeros(count, k))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_grouped_is_deterministic(distribution):
    seed, stream, k, shape = FAMILIES[0]
    coeffs, grads = torch.randn(3, k), torch.randn(3, *shape)
    first = triton_backend.mix_grouped(coeffs, seed, stream, *shape, 0.5, distribution)
    again = triton_backend.mix_grouped(coeffs, seed, stream, *shape, 0.5, distribution)
    assert torch.equal(first, again)
    first = triton_backend.project_grouped(grads, seed, stream, k, 0.5, distribution)
    again = triton_backend.project_grouped(grads, seed, stream, k, 0.5, distribution)
    assert torch.equal(first, again)


def test_interpreted_grids_split_the_sums():
    """The test shapes run the partial sums: several splits of k (mix) and groups of positions
    (project)."""
    (_, _, mix_k, (rows, cols)), (_, _, project_k, (project_rows, project_cols)) = FAMILIES[1], FAMILIES[0]
    assert grouped.mix_plan(3, rows * cols, mix_k, "uniform").grid[1] > 1
    assert grouped.project_plan(3, project_rows * project_cols, project_k, "uniform").grid[1] > 1


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_nan_propagates(distribution):
    seed, stream, k, shape = FAMILIES[0]
    coeffs, grads = torch.randn(2, k), torch.randn(2, *shape)
    coeffs[1, 4] = float("nan")
    grads[0, 3, 5] = float("nan")
    mixed = triton_backend.mix_grouped(coeffs, seed, stream, *shape, 1.0, distribution)
    projected = triton_backend.project_grouped(grads, seed, stream, k, 1.0, distribution)
    assert mixed[1].isnan().all() and not mixed[0].isnan().any()
    assert projected[0].isnan().all() and not projected[1].isnan().any()


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_infinities_and_every_nan_propagate_as_in_float32(distribution):
    # The NaN GPU arithmetic makes (0x7FFFFFFF) once rounded to TF32 as -0.0; an infinity split
    # into inf + (inf - inf) made NaN: float32 arithmetic (the torch backend) says otherwise.
    seed, stream, k, shape = FAMILIES[0]
    coeffs, grads = torch.randn(4, k), torch.randn(4, *shape)
    gpu_nan = torch.tensor(0x7FFFFFFF, dtype=torch.int32).view(torch.float32)
    huge = torch.tensor(0x7F7FF800, dtype=torch.int32).view(torch.float32)  # rounds up to inf in TF32
    for rows, where in ((coeffs, (1, 4)), (grads, (1, 3, 5))):
        rows[1][where[1:]] = gpu_nan
        rows[2][where[1:]] = float("inf")
        rows[3][where[1:]] = huge
    family = (seed, stream)
    for op, dense, extra in (("mix_grouped", coeffs, shape), ("project_grouped", grads, (k,))):
        ours = getattr(triton_backend, op)(dense, *family, *extra, 1.0, distribution)
        expected = getattr(get_backend("torch"), op)(dense, *family, *extra, 1.0, distribution)
        assert torch.equal(ours.isnan(), expected.isnan()) and ours[1].isnan().all()
        assert torch.equal(ours.isinf(), expected.isinf()) and ours[2].isinf().all()
        assert torch.equal(torch.sign(ours[2]), torch.sign(expected[2]))
        assert ours[3].isfinite().all() and rel_err(ours[3], expected[3]) <= 2.0**-9


@triton.jit
def _store_parts(values_ptr, parts_ptr, count, BLOCK: tl.constexpr, TRUNCATED: tl.constexpr):
    """grouped's splits of an operand: high, the TF32 part of the rest, what that leaves, and the
    rest; by truncation (the rademacher products' dense operand) or by rounding (the uniform
    products' operands)."""
    n = tl.arange(0, BLOCK)
    live = n < count
    value = tl.load(values_ptr + n, mask=live)
    if TRUNCATED:
        high, rest = grouped._truncated_split(value)
        middle = grouped._truncated(rest)
    else:
        high, rest, _ = grouped._split(value)
        middle = grouped._tf32(rest)
    for part, part_value in enumerate((high, middle, rest - middle, rest)):
        tl.store(parts_ptr + part * count + n, part_value, mask=live)


def _split(values, truncated=False):
    parts = torch.full((4, values.numel()), float("nan"))
    _store_parts[(1,)](
        values, parts, values.numel(), BLOCK=triton.next_power_of_2(values.numel()), TRUNCATED=truncated
    )
    return parts.double()


def _is_tf32(parts):
    return ((parts.float().view(torch.int32) & 0x1FFF) == 0).all()


def _float32_bits(*bits):
    return torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)


def _wide_normals():
    return torch.randn(4096) * torch.exp2(torch.randint(-60, 60, (4096,)).float())


def test_truncated_dense_split_is_three_exact_tf32_parts():
    # With float32's largest values, which rounding to TF32 would make infinite.
    values = torch.cat((_wide_normals(), _float32_bits(0x7F7FFFFF, 0xFF7FF800, 0x7F7FF000, 0x7F7FEFFF)))
    high, middle, low, _ = _split(values, truncated=True)
    assert torch.equal(high + middle + low, values.double())
    assert _is_tf32(torch.stack((high, middle, low)))


def test_truncated_split_keeps_infinities_and_every_nan():
    """An infinity is its own high part with nothing left; a NaN leaves NaN below its high part
    (a NaN, or an infinity where its payload lies below TF32's bits)."""
    infinities = _float32_bits(0x7F800000, 0xFF800000)
    high, middle, low, _ = _split(infinities, truncated=True)
    assert torch.equal(high, infinities.double())
    assert torch.equal(middle, torch.zeros(2, dtype=torch.float64)) and torch.equal(low, middle)
    nans = _float32_bits(0x7FFFFFFF, 0x7FC00000, 0x7F800001, 0xFF800001, 0xFFFFFFFF)
    high, middle, low, _ = _split(nans, truncated=True)
    assert (high.isnan() | high.isinf()).all() and low.isnan().all()


def test_rounded_dense_split_is_within_a_unit_in_the_last_place():
    """The two TF32 parts the uniform products take of the dense operand."""
    values = _wide_normals()
    high, middle, _, _ = _split(values)
    assert _is_tf32(torch.stack((high, middle)))
    assert ((high + middle - values.double()).abs() <= 2.0**-23 * values.double().abs()).all()


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_basis_split_is_exact(distribution):
    """Every uniform entry (23 or 15 bits below the point) is its TF32 rounding plus a TF32 rest;
    +-1 is TF32 itself."""
    entries = nola_basis(5, 8, (16, 128), distribution=distribution).reshape(-1)
    high, _, _, rest = _split(entries)
    assert torch.equal(high + rest, entries.double())
    assert _is_tf32(torch.stack((high, rest)))
    if distribution.startswith("rademacher"):
        assert torch.equal(high, entries.double())
