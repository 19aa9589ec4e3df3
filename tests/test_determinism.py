"""What docs/spec.md ("Determinism") promises about bits. The PyTorch path's mix and project sum in
the order the spec gives, so their bits do not depend on the chunk budget, the thread count or
the device; nola_matmul on that path adds torch's GEMMs: bit-identical across budgets, within
rounding across thread counts."""

import numpy as np
import pytest
import torch
from numerics import rel_err, rounding_bound

from nola_kernels import nola_basis, nola_matmul, nola_mix, nola_project
from nola_kernels.backends.torch_backend import BASIS_BLOCK, POSITION_BLOCK
from nola_kernels.basis import iter_blocks

CASES = [
    # k, shape: single entries; 3 basis blocks (the last short) and 4 position blocks (the last
    # short); one short basis block and 7 position blocks; 7 basis blocks, one position block
    (1, (1, 1)),
    (37, (70, 100)),
    (5, (130, 103)),
    (100, (17, 45)),
]
BUDGETS = [None, 1, 5000, 1 << 16]  # None: the default; 1: the smallest blocks
SCALE = 0.25  # a power of 2: the scaled coefficients are exact, so only the order of the sums counts


def _fold(terms):
    """The spec's fold along axis 0, in NumPy: the upper half added onto the lower half (the
    middle row of an odd count waits) until one row is left."""
    terms = terms.copy()
    count = len(terms)
    while count > 1:
        half = (count + 1) // 2
        terms[: count - half] += terms[half:count]
        count = half
    return terms[0]


def _blocks(array, size):
    return [array[start : start + size] for start in range(0, len(array), size)]


def _mix_in_spec_order(coeffs, basis):
    """Blocks of BASIS_BLOCK indices, each folded, the block sums added in order."""
    terms = basis * (coeffs * SCALE)[:, None]
    out = np.zeros_like(terms[0])
    for block in _blocks(terms, BASIS_BLOCK):
        out += _fold(block)
    return out


def _project_in_spec_order(grad, basis):
    """Blocks of POSITION_BLOCK positions, each folded, the block sums folded."""
    terms = (basis * grad[None, :]).T  # positions first
    return _fold(np.stack([_fold(block) for block in _blocks(terms, POSITION_BLOCK)])) * SCALE


def _with_threads(threads, fn):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("distribution", ["uniform", "rademacher", "uniform16_philox7"])
@pytest.mark.parametrize("k, shape", CASES, ids=lambda case: str(case))
def test_mix_and_project_sum_in_the_spec_order(set_budget, dtype, distribution, k, shape):
    coeffs, grad = torch.randn(k, dtype=dtype), torch.randn(shape, dtype=dtype)
    basis = nola_basis(6, k, shape, stream=1, distribution=distribution).reshape(k, -1).to(dtype).numpy()
    expected_mix = torch.from_numpy(_mix_in_spec_order(coeffs.numpy(), basis)).view(shape)
    expected_project = torch.from_numpy(_project_in_spec_order(grad.reshape(-1).numpy(), basis))
    family = dict(scale=SCALE, stream=1, distribution=distribution, backend="torch")
    threads = torch.get_num_threads()
    for budget, thread_count in [(None, 1), (None, threads + 2), *((budget, threads) for budget in BUDGETS[1:])]:
        set_budget(budget)
        mixed = _with_threads(thread_count, lambda: nola_mix(coeffs, 6, shape, **family))
        projected = _with_threads(thread_count, lambda: nola_project(grad, 6, k, **family))
        assert torch.equal(mixed, expected_mix), (budget, thread_count)
        assert torch.equal(projected, expected_project), (budget, thread_count)


@pytest.mark.parametrize("row_step, col_step", [(1, 128), (BASIS_BLOCK, 128), (1, POSITION_BLOCK)])
@pytest.mark.parametrize("k, numel", [(37, 7000), (300, 765), (3, 420_000), (20_000, 3)])
@pytest.mark.parametrize("budget", [1, 5000, 1 << 20])
def test_blocks_keep_the_fixed_groups_whole(row_step, col_step, k, numel, budget):
    # Each fixed group of row_step indices or col_step positions lies in one block, and blocks
    # of the same rows come in order of n (project folds a row's position sums when it ends).
    covered = np.zeros((k, numel), dtype=np.int64) if k * numel <= 10**6 else None
    last_stop = {}
    for i0, i1, n0, n1 in iter_blocks(k, numel, "uniform", budget, row_step=row_step, col_step=col_step):
        assert i0 % row_step == 0 and (i1 % row_step == 0 or i1 == k)
        assert n0 % col_step == 0 and (n1 % col_step == 0 or n1 == numel)
        assert last_stop.get(i0, 0) == n0
        last_stop[i0] = n1
        if covered is not None:
            covered[i0:i1, n0:n1] += 1
    assert covered is None or (covered == 1).all()


@pytest.mark.parametrize("k, numel", [(0, 7000), (37, 0), (0, 0)])
def test_no_work_gives_no_blocks(k, numel):
    assert list(iter_blocks(k, numel, "uniform", 1 << 20)) == []


TOKENS, IN, OUT, RANK, K, L = 9, 300, 70, 4, 37, 20


def _matmul_case():
    tensors = dict(
        x=torch.randn(TOKENS, IN),
        alpha=torch.randn(K),
        beta=torch.randn(L),
        a0=torch.randn(RANK, IN) / IN**0.5,
        b0=torch.randn(OUT, RANK),
    )
    kwargs = dict(seed_a=3, seed_b=4, rank=RANK, out_features=OUT, scaling=0.5, backend="torch")
    return tensors, kwargs, torch.randn(TOKENS, OUT)


def _forward_backward(tensors, kwargs, grad_out):
    leaves = {name: t.clone().requires_grad_() for name, t in tensors.items()}
    out = nola_matmul(**leaves, **kwargs)
    out.backward(grad_out)
    return {"out": out.detach(), **{name: t.grad for name, t in leaves.items()}}


def test_matmul_on_the_torch_path_does_not_depend_on_the_budget(set_budget):
    # The factors and the projections have the same bits under every budget, so torch's GEMMs
    # get the same operands in the same shapes.
    case = _matmul_case()
    expected = _forward_backward(*case)
    for budget in BUDGETS[1:]:
        set_budget(budget)
        for name, value in _forward_backward(*case).items():
            assert torch.equal(value, expected[name]), (budget, name)


def test_matmul_on_the_torch_path_is_within_rounding_across_thread_counts():
    # torch's CPU GEMM may split its sums by thread: the results agree to rounding of the
    # reductions each passes through (x A^T over in, h B^T over rank, grad_h = grad B over out,
    # then over rank, the tokens and the projections' positions).
    case = _matmul_case()
    results = [_with_threads(threads, lambda: _forward_backward(*case)) for threads in (1, 4)]
    lengths = {
        "out": (IN, RANK),
        "x": (OUT, RANK),
        "a0": (OUT, TOKENS),
        "alpha": (OUT, TOKENS, RANK * IN),
        "b0": (IN, TOKENS),
        "beta": (IN, TOKENS, OUT * RANK),
    }
    for name, reductions in lengths.items():
        assert rel_err(results[1][name], results[0][name]) <= 2 * rounding_bound(torch.float32, *reductions), name


@pytest.mark.gpu
@pytest.mark.parametrize("distribution", ["uniform", "rademacher", "uniform16_philox7"])
def test_mix_and_project_on_cuda_have_the_cpu_bits(distribution):
    k, shape = 300, (70, 100)
    coeffs, grad = torch.randn(k), torch.randn(shape)
    family = dict(distribution=distribution, backend="torch")
    mixed, projected = nola_mix(coeffs, 6, shape, **family), nola_project(grad, 6, k, **family)
    assert torch.equal(nola_mix(coeffs.cuda(), 6, shape, **family).cpu(), mixed)
    assert torch.equal(nola_project(grad.cuda(), 6, k, **family).cpu(), projected)
