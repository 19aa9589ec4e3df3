"""The grouped ops' contract on every backend and device this machine has: nola_mix_grouped and
nola_project_grouped against the float64 reference built from nola_basis, row g against the
backend's own nola_mix / nola_project (bit for bit where docs/spec.md promises it), their
autograd (each the other's backward, to any order), the torch.library registration, and the
refusals of bad arguments."""

import math

import pytest
import torch
from numerics import rel_err, rounding_bound
from test_cpu_backend import CODE_PATHS, built, set_threads  # noqa: F401 (set_threads: a fixture)

from nola_kernels import (
    BackendUnavailableError,
    available_backends,
    nola_basis,
    nola_mix,
    nola_mix_grouped,
    nola_project,
    nola_project_grouped,
    ops,
)
from nola_kernels.backends import cpu_backend, torch_backend
from nola_kernels.basis import DISTRIBUTIONS

# Backends whose row g has the bits of their own per-row mix/project (docs/spec.md, Determinism).
ROW_EXACT_BACKENDS = ("torch", "cpu")

CASES = [
    # seed, G, k, shape, stream, distribution: k and the shapes cut no block evenly (16 basis
    # indices, 128 or 2048 positions, 4, 8 or 128 entries per Philox call)
    (3, 1, 1, (1, 1), 0, "uniform"),
    (2**33 + 7, 3, 37, (7, 13), 1, "uniform"),
    (11, 17, 300, (33, 130), 0, "uniform"),
    (2**62, 3, 65, (5, 211), 2**40, "rademacher"),
    (5, 17, 21, (129, 3), 0, "rademacher"),
    (2**33 + 7, 3, 37, (7, 13), 1, "uniform16_philox7"),
    (2**62, 3, 65, (5, 211), 2**40, "rademacher_philox7"),
]


def _float32_bound(length):
    """Twice the bound of the float32 per-row path (docs/spec.md: the grouped ops' precision)."""
    return 2 * rounding_bound(torch.float32, length)


def _reference_basis(seed, k, shape, stream, distribution, device):
    return nola_basis(seed, k, shape, stream=stream, distribution=distribution, device=device).double()


@pytest.mark.parametrize("seed, groups, k, shape, stream, distribution", CASES)
def test_mix_grouped_matches_the_reference_and_the_rows(
    device_backend, seed, groups, k, shape, stream, distribution
):
    device, backend = device_backend
    coeffs = torch.randn(groups, k, device=device)
    family = dict(stream=stream, distribution=distribution, backend=backend)
    expected = torch.einsum(
        "gk,krc->grc", coeffs.double(), _reference_basis(seed, k, shape, stream, distribution, device)
    )
    mixed = nola_mix_grouped(coeffs, seed, shape, **family)
    assert mixed.shape == (groups, *shape) and mixed.dtype == torch.float32 and mixed.device == device
    assert rel_err(mixed, expected / math.sqrt(k)) <= _float32_bound(k)
    rows = torch.stack([nola_mix(row, seed, shape, **family) for row in coeffs])
    if backend in ROW_EXACT_BACKENDS:
        assert torch.equal(mixed, rows)
    else:
        assert rel_err(mixed, rows) <= 2 * _float32_bound(k)


@pytest.mark.parametrize("seed, groups, k, shape, stream, distribution", CASES)
def test_project_grouped_matches_the_reference_and_the_rows(
    device_backend, seed, groups, k, shape, stream, distribution
):
    device, backend = device_backend
    grads = torch.randn(groups, *shape, device=device)
    family = dict(scale=0.3, stream=stream, distribution=distribution, backend=backend)
    basis = _reference_basis(seed, k, shape, stream, distribution, device)
    expected = torch.einsum("grc,krc->gk", grads.double(), basis) * 0.3
    projected = nola_project_grouped(grads, seed, k, **family)
    assert projected.shape == (groups, k) and projected.dtype == torch.float32 and projected.device == device
    numel = shape[0] * shape[1]
    assert rel_err(projected, expected) <= _float32_bound(numel)
    rows = torch.stack([nola_project(grad, seed, k, **family) for grad in grads])
    if backend in ROW_EXACT_BACKENDS:
        assert torch.equal(projected, rows)
    else:
        assert rel_err(projected, rows) <= 2 * _float32_bound(numel)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_grouped_ops_are_adjoint(device_backend, distribution):
    device, backend = device_backend
    groups, k, shape = 3, 37, (19, 23)
    coeffs, grads = (
        torch.randn(groups, k, dtype=torch.float64, device=device),
        torch.randn(groups, *shape, dtype=torch.float64, device=device),
    )
    family = dict(stream=2, distribution=distribution, backend=backend)
    lhs = (nola_mix_grouped(coeffs, 9, shape, **family) * grads).sum().item()
    rhs = (coeffs * nola_project_grouped(grads, 9, k, **family)).sum().item()
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


def test_float64_is_computed_in_float64_row_by_row(device_backend):
    device, backend = device_backend
    coeffs = torch.randn(3, 6, dtype=torch.float64, device=device)
    grads = torch.randn(3, 4, 5, dtype=torch.float64, device=device)
    mixed = nola_mix_grouped(coeffs, 2, (4, 5), backend=backend)
    projected = nola_project_grouped(grads, 2, 6, backend=backend)
    assert mixed.dtype == projected.dtype == torch.float64
    # float64 work runs on the PyTorch backend, whose rows are exact.
    assert torch.equal(
        mixed, torch.stack([nola_mix(row, 2, (4, 5), backend=backend) for row in coeffs])
    )
    assert torch.equal(
        projected, torch.stack([nola_project(g, 2, 6, backend=backend) for g in grads])
    )


def test_low_precision_grads_are_projected_in_float32(device_backend):
    device, backend = device_backend
    grads = torch.randn(3, 9, 10, device=device).bfloat16()
    projected = nola_project_grouped(grads, 1, 8, backend=backend)
    assert projected.dtype == torch.float32
    assert torch.equal(projected, nola_project_grouped(grads.float(), 1, 8, backend=backend))


def test_strided_inputs_give_the_contiguous_results(device_backend):
    device, backend = device_backend
    coeffs, grads = torch.randn(7, 4, device=device).t(), torch.randn(5, 6, 3, device=device).permute(2, 0, 1)
    assert torch.equal(
        nola_mix_grouped(coeffs, 4, (5, 6), backend=backend),
        nola_mix_grouped(coeffs.contiguous(), 4, (5, 6), backend=backend),
    )
    assert torch.equal(
        nola_project_grouped(grads, 4, 7, backend=backend),
        nola_project_grouped(grads.contiguous(), 4, 7, backend=backend),
    )


def test_nan_stays_in_its_row(device_backend):
    device, backend = device_backend
    coeffs = torch.randn(3, 4, device=device)
    coeffs[1, 2] = float("nan")
    mixed = nola_mix_grouped(coeffs, 1, (3, 3), backend=backend)
    assert torch.isnan(mixed[1]).all() and torch.isfinite(mixed[[0, 2]]).all()
    grads = torch.randn(3, 3, 3, device=device)
    grads[2, 1, 1] = float("inf")
    projected = nola_project_grouped(grads, 1, 4, backend=backend)
    assert not torch.isfinite(projected[2]).any() and torch.isfinite(projected[:2]).all()


@pytest.mark.parametrize("budget", [64, 5000, 1 << 20])
def test_chunking_does_not_change_results(device_backend, set_budget, budget):
    device, backend = device_backend
    coeffs, grads = torch.randn(3, 300, device=device), torch.randn(3, 17, 45, device=device)
    mixed = nola_mix_grouped(coeffs, 4, (17, 45), backend=backend)
    projected = nola_project_grouped(grads, 4, 300, backend=backend)
    set_budget(budget)
    assert torch.equal(nola_mix_grouped(coeffs, 4, (17, 45), backend=backend), mixed)
    assert torch.equal(nola_project_grouped(grads, 4, 300, backend=backend), projected)


def test_gradcheck_in_float64(device_backend):
    device, backend = device_backend
    coeffs = torch.randn(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    grads = torch.randn(2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)

    def mixed(c):
        return nola_mix_grouped(c, 7, (3, 4), stream=1, backend=backend)

    def projected(g):
        return nola_project_grouped(g, 7, 5, scale=0.3, distribution="rademacher", backend=backend)

    for fn, inputs in ((mixed, (coeffs,)), (projected, (grads,))):
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


def test_each_op_is_the_others_backward(device_backend):
    device, backend = device_backend
    groups, k, shape = 3, 21, (6, 7)
    family = dict(scale=0.7, stream=3, distribution="uniform", backend=backend)
    coeffs = torch.randn(groups, k, device=device, requires_grad=True)
    grads = torch.randn(groups, *shape, device=device, requires_grad=True)
    upstream_matrices = torch.randn(groups, *shape, device=device)
    upstream_coeffs = torch.randn(groups, k, device=device)

    mixed = nola_mix_grouped(coeffs, 5, shape, **family)
    (grad_coeffs,) = torch.autograd.grad(mixed, coeffs, upstream_matrices, create_graph=True)
    assert torch.equal(grad_coeffs, nola_project_grouped(upstream_matrices, 5, k, **family))
    projected = nola_project_grouped(grads, 5, k, **family)
    (grad_grads,) = torch.autograd.grad(projected, grads, upstream_coeffs, create_graph=True)
    assert torch.equal(grad_grads, nola_mix_grouped(upstream_coeffs, 5, shape, **family))

    # Double backward: grad_coeffs = project(upstream) is linear in upstream, not in coeffs.
    upstream = upstream_matrices.clone().requires_grad_()
    (grad_coeffs,) = torch.autograd.grad(
        nola_mix_grouped(coeffs, 5, shape, **family), coeffs, upstream, create_graph=True
    )
    (second,) = torch.autograd.grad(grad_coeffs, upstream, upstream_coeffs)
    assert torch.equal(second, nola_mix_grouped(upstream_coeffs, 5, shape, **family))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_mix_grouped(device_backend, dtype):
    device, backend = device_backend
    for requires_grad in (False, True):
        coeffs = torch.randn(3, 9, dtype=dtype, device=device, requires_grad=requires_grad)
        torch.library.opcheck(ops.mix_grouped, (coeffs, 2**40, 1, 4, 6, 0.3, "uniform", backend))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_project_grouped(device_backend, dtype):
    device, backend = device_backend
    for requires_grad in (False, True):
        grads = torch.randn(3, 4, 6, dtype=dtype, device=device, requires_grad=requires_grad)
        torch.library.opcheck(ops.project_grouped, (grads, 5, 0, 9, 0.3, "rademacher", backend))


def test_compile_fullgraph_forward_and_backward(device_backend):
    device, backend = device_backend
    coeffs = torch.randn(4, 24, device=device, requires_grad=True)

    def step(coeffs):
        mixed = nola_mix_grouped(coeffs, 1, (5, 12), backend=backend)
        return nola_project_grouped(mixed.square(), 2, 3, backend=backend).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    (eager,) = torch.autograd.grad(step(coeffs), coeffs)
    (traced,) = torch.autograd.grad(compiled(coeffs), coeffs)
    assert torch.equal(traced, eager)


def _refusals():
    coeffs, grads = torch.randn(3, 5), torch.randn(3, 4, 6)
    mix = lambda coeffs=coeffs, seed=1, shape=(4, 6), **kw: nola_mix_grouped(coeffs, seed, shape, **kw)  # noqa: E731
    project = lambda grads=grads, seed=1, k=5, **kw: nola_project_grouped(grads, seed, k, **kw)  # noqa: E731
    return [
        (lambda: mix(coeffs=[[1.0, 2.0]]), TypeError, "coeffs must be a torch.Tensor"),
        (
            lambda: mix(coeffs=torch.ones(3, 5, dtype=torch.int64)),
            TypeError,
            "coeffs must have dtype float32, float64",
        ),
        (lambda: mix(coeffs=coeffs.half()), TypeError, "coeffs must have dtype float32, float64"),
        (lambda: mix(coeffs=torch.randn(5)), ValueError, r"coeffs must be 2-D \(G, k\), got shape \(5,\)"),
        (lambda: mix(coeffs=torch.randn(2, 3, 5)), ValueError, r"coeffs must be 2-D \(G, k\)"),
        (lambda: mix(coeffs=torch.randn(0, 5)), ValueError, r"coeffs must have at least one row \(G >= 1\)"),
        (lambda: mix(coeffs=torch.randn(3, 0)), ValueError, r"coeffs\[0\] must not be empty"),
        (
            lambda: mix(coeffs=torch.zeros(1, 1).expand(2, 2**32 + 1)),  # a view: nothing allocated
            ValueError,
            r"coeffs\[0\] may hold at most 2\*\*32 coefficients",
        ),
        (lambda: mix(shape=(4, 0)), ValueError, r"shape\[1\] must be an int >= 1"),
        (lambda: mix(shape=(4,)), ValueError, "shape must be a pair"),
        (lambda: mix(shape=(2**17, 2**18)), ValueError, r"shape must have at most 2\*\*34 entries"),
        (lambda: mix(seed=-1), ValueError, "seed must be an int in"),
        (lambda: mix(seed=1.5), TypeError, "seed must be an int"),
        (lambda: mix(stream=2**63), ValueError, "stream must be an int in"),
        (lambda: mix(scale="big"), TypeError, "scale must be a real number"),
        (lambda: mix(distribution="gauss"), ValueError, "distribution must be one of"),
        (lambda: mix(backend="tpu"), ValueError, "backend must be 'auto' or one of"),
        (lambda: project(grads=grads.numpy()), TypeError, "grads must be a torch.Tensor"),
        (lambda: project(grads=grads.int()), TypeError, "grads must have dtype"),
        (
            lambda: project(grads=torch.randn(4, 6)),
            ValueError,
            r"grads must be 3-D \(G, rows, cols\), got shape \(4, 6\)",
        ),
        (
            lambda: project(grads=torch.randn(0, 4, 6)),
            ValueError,
            r"grads must have at least one row \(G >= 1\)",
        ),
        (lambda: project(grads=torch.randn(3, 0, 6)), ValueError, "grads must have rows >= 1 and cols >= 1"),
        (
            lambda: project(grads=torch.zeros(1, 1, 1).expand(2, 2**17, 2**18)),
            ValueError,
            r"grads.shape\[1:\] must have at most 2\*\*34 entries",
        ),
        (lambda: project(k=0), ValueError, r"k must be an int in \[1, 4294967297\), got 0"),
        (lambda: project(k=2**32 + 1), ValueError, "k must be an int in"),
        (lambda: project(k=5.0), TypeError, "k must be an int"),
        (lambda: project(k=True), TypeError, "k must be an int, got bool"),
        (lambda: project(seed=2**63), ValueError, "seed must be an int in"),
        (lambda: project(stream=-1), ValueError, "stream must be an int in"),
        (lambda: project(scale=None, distribution="normal"), ValueError, "distribution must be one of"),
        (lambda: project(scale=10**400), ValueError, "scale is out of float range"),
        (lambda: project(backend=None), ValueError, "backend must be 'auto' or one of"),
    ]


@pytest.mark.parametrize("call, error, match", _refusals())
def test_bad_arguments_are_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.skipif("cuda" in available_backends("cpu"), reason="the CUDA backend runs here")
def test_unavailable_backend_says_why():
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run on cpu"):
        nola_mix_grouped(torch.randn(2, 3), 1, (2, 2), backend="cuda")
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run on cpu"):
        nola_project_grouped(torch.randn(2, 2, 2), 1, 3, backend="cuda")


@pytest.mark.parametrize("backend_module", [torch_backend, pytest.param(cpu_backend, marks=built)], ids=["torch", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "count, k, shape", [(0, 5, (2, 3)), (0, 0, (0, 0)), (2, 0, (2, 3)), (2, 5, (0, 3)), (2, 5, (3, 0))]
)
def test_empty_operands_give_empty_results_or_zeros(backend_module, dtype, count, k, shape):
    """No rows (G = 0), no basis matrix or no positions, called on the backend itself (the API
    refuses them): an empty result, or zeros (sums over nothing), as the Triton backend gives."""
    coeffs, grads = torch.randn(count, k, dtype=dtype), torch.randn(count, *shape, dtype=dtype)
    mixed = backend_module.mix_grouped(coeffs, 9, 0, *shape, 1.0, "uniform")
    projected = backend_module.project_grouped(grads, 9, 0, k, 1.0, "uniform")
    assert torch.equal(mixed, torch.zeros(count, *shape, dtype=dtype))
    assert torch.equal(projected, torch.zeros(count, k, dtype=dtype))


@built
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_cpu_same_bits_for_any_thread_count_and_instruction_set(request, distribution):
    set_thread_count = request.getfixturevalue("set_threads")
    coeffs, grads = torch.randn(5, 40), torch.randn(5, 33, 257)  # enough entries for several threads
    results = {}
    for code_path in CODE_PATHS:
        for threads in (1, 2, 3):
            set_thread_count(threads)
            with cpu_backend.instruction_set(code_path):
                mixed = cpu_backend.mix_grouped(coeffs, 5, 1, 33, 257, 0.3, distribution)
                projected = cpu_backend.project_grouped(grads, 5, 1, 40, 0.3, distribution)
            results[code_path, threads] = (mixed, projected)
    first = next(iter(results.values()))
    for key, (mixed, projected) in results.items():
        assert torch.equal(mixed, first[0]) and torch.equal(projected, first[1]), key


@built
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_cpu_kernels_write_every_output_and_partial(distribution):
    groups, k, numel = 3, 37, 5003
    problem = cpu_backend._problem(3, 0, k, numel, distribution, 0.5, groups=groups)
    single = cpu_backend._problem(3, 0, k, numel, distribution, 0.5)
    library = cpu_backend._library
    assert library.nola_cpu_project_partials(problem) == groups * library.nola_cpu_project_partials(single)
    coeffs, grads = torch.randn(groups, k), torch.randn(groups, numel)
    mixed = torch.full((groups, numel), float("nan"))
    cpu_backend._run(library.nola_cpu_mix_f32, problem, coeffs, mixed)
    partials = torch.full((library.nola_cpu_project_partials(problem),), float("nan"))
    projected = torch.full((groups, k), float("nan"))
    cpu_backend._run(library.nola_cpu_project_f32, problem, grads, partials, projected)
    assert torch.isfinite(mixed).all() and torch.isfinite(partials).all() and torch.isfinite(projected).all()
