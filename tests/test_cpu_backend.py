"""The compiled CPU backend (csrc/cpu/, backend "cpu") beyond the contract tests it runs through the
backend matrix: built wherever a C++ compiler is, its basis bit for bit against the reference
generator with every instruction set this processor runs, the same bits for any thread count and
instruction set, mix and project in their documented order, every output written, and how it
reports a missing or broken library."""

import importlib.machinery
import os
import shutil
import warnings

import pytest
import torch

from nola_kernels import nola_basis
from nola_kernels.backends import cpu_backend, resolve_backend
from nola_kernels.basis import DISTRIBUTIONS, basis_block

built = pytest.mark.skipif(cpu_backend._library is None, reason="the CPU library is not built here")
INSTRUCTION_SETS = [] if cpu_backend._library is None else cpu_backend.supported_instruction_sets()
CODE_PATHS = [name for name in INSTRUCTION_SETS if name != "best"]
LANES = 64  # projection lanes (csrc/cpu/generate.cpp)


def _bits(t):
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@pytest.fixture
def set_threads():
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


@pytest.mark.skipif(os.environ.get("NOLA_BUILD_CPU") == "0", reason="NOLA_BUILD_CPU=0 skips the library")
def test_built_wherever_a_compiler_is():
    # An optional extension that fails to build only warns during pip install: this says so.
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler here")
    assert cpu_backend.unavailable_reason(torch.device("cpu")) is None, cpu_backend._load_error
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"


@built
def test_the_portable_code_runs_everywhere():
    assert {"best", "generic"} <= set(INSTRUCTION_SETS)


@built
@pytest.mark.parametrize("code_path", CODE_PATHS)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize(
    "seed, stream, i_start, count, n_start, numel",
    [
        (0, 0, 0, 3, 0, 1),
        (2**32, 0, 0, 5, 0, 7 * 13),
        (2**32 + 12345, 1, 0, 4, 0, 3 * 131),
        (2**63 - 1, 2**40 + 3, 0, 2, 0, 129 * 5),
        (11, 2**62, 1, 2, 131, 3 * 2048 + 17),  # an odd start, several tiles, a ragged end
        (2**40 + 9, 1, 2**32 - 3, 3, 5, 4099),  # the last basis indices
        (2**40 + 9, 1, 7, 2, 2**34 - 5000, 5000),  # up to the last position
    ],
)
def test_basis_matches_the_reference_bit_for_bit(
    code_path, distribution, seed, stream, i_start, count, n_start, numel
):
    block = (seed, stream, i_start, i_start + count, n_start, n_start + numel, distribution)
    expected = basis_block(*block)
    with cpu_backend.instruction_set(code_path):
        got = cpu_backend.basis_block(*block)
    assert torch.equal(_bits(got), _bits(expected))


# Shapes with several mix tiles and projection chunks, all but the last with enough work (2^16
# entries) to run on several threads.
SHAPES = [
    (40, (33, 257), "uniform"),
    (600, (5, 300), "uniform"),
    (20, (70, 100), "rademacher"),
    (3, (1, 5), "uniform"),
    (40, (33, 257), "uniform16_philox7"),
    (20, (70, 100), "rademacher_philox7"),
]


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k, shape, distribution", SHAPES)
def test_same_bits_for_any_thread_count_and_instruction_set(set_threads, dtype, k, shape, distribution):
    coeffs, grad = torch.randn(k, dtype=dtype), torch.randn(shape, dtype=dtype)
    results = {}
    for code_path in CODE_PATHS:
        for threads in (1, 2, 3):
            set_threads(threads)
            with cpu_backend.instruction_set(code_path):
                mixed = cpu_backend.mix(coeffs, 5, 1, *shape, 0.3, distribution)
                projected = cpu_backend.project(grad, 5, 1, k, 0.3, distribution)
            results[code_path, threads] = (_bits(mixed), _bits(projected))
    first = next(iter(results.values()))
    for key, (mixed, projected) in results.items():
        assert torch.equal(mixed, first[0]) and torch.equal(projected, first[1]), key


def _float_scale(scale, dtype):
    return torch.tensor(scale, dtype=dtype)  # the kernels round the scale to the accumulation dtype


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_mix_sums_in_index_order(dtype, distribution):
    # sum = sum + (coeffs[i] * scale) * U_i[n] for i = 0, 1, ..., each product and sum rounded.
    k, shape, scale = 50, (7, 300), 0.37
    coeffs = torch.randn(k, dtype=dtype)
    basis = nola_basis(9, k, shape, stream=2, distribution=distribution).to(dtype)
    weights = coeffs * _float_scale(scale, dtype)
    expected = torch.zeros(shape, dtype=dtype)
    for i in range(k):
        expected = expected + weights[i] * basis[i]
    got = cpu_backend.mix(coeffs, 9, 2, *shape, scale, distribution)
    assert torch.equal(_bits(got), _bits(expected))


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "distribution, numel",
    [("uniform", 1000), ("rademacher", 4000), ("uniform16_philox7", 1000), ("rademacher_philox7", 4000)],
)
def test_project_sums_in_lanes_then_folds(dtype, distribution, numel):
    # One chunk at these sizes: lane l sums the positions n = l mod 64 in order, the lanes fold
    # pairwise, and the sum is scaled once.
    k, scale = 6, 0.37
    grad = torch.randn(numel, dtype=dtype)
    basis = nola_basis(4, k, (1, numel), distribution=distribution).to(dtype).view(k, numel)
    rows = -(-numel // LANES)
    products = torch.zeros(k, rows * LANES, dtype=dtype)
    products[:, :numel] = grad * basis
    lanes = torch.zeros(k, LANES, dtype=dtype)
    for row in products.view(k, rows, LANES).unbind(1):
        lanes = lanes + row
    width = LANES // 2
    while width:
        lanes = torch.cat([lanes[:, :width] + lanes[:, width : 2 * width], lanes[:, 2 * width :]], dim=1)
        width //= 2
    expected = lanes[:, 0] * _float_scale(scale, dtype)
    problem = cpu_backend._problem(4, 0, k, numel, distribution)
    assert cpu_backend._library.nola_cpu_project_partials(problem) == k  # one chunk
    got = cpu_backend.project(grad.view(1, numel), 4, 0, k, scale, distribution)
    assert torch.equal(_bits(got), _bits(expected))


@built
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_every_output_and_partial_is_written(distribution):
    k, numel = 37, 5003
    problem = cpu_backend._problem(3, 0, k, numel, distribution, 0.5)
    coeffs, grad = torch.randn(k), torch.randn(numel)
    mixed = torch.full((numel,), float("nan"))
    cpu_backend._run(cpu_backend._library.nola_cpu_mix_f32, problem, coeffs, mixed)
    partials = torch.full((cpu_backend._library.nola_cpu_project_partials(problem),), float("nan"))
    projected = torch.full((k,), float("nan"))
    cpu_backend._run(cpu_backend._library.nola_cpu_project_f32, problem, grad, partials, projected)
    assert torch.isfinite(mixed).all() and torch.isfinite(partials).all() and torch.isfinite(projected).all()


@built
def test_kernel_errors_name_the_problem():
    with pytest.raises(RuntimeError, match="nola_cpu_basis failed: k or the positions out of range"):
        cpu_backend.basis_block(1, 0, 0, 1, 2**34 - 1, 2**34 + 1, "uniform")
    with pytest.raises(RuntimeError, match="nola_cpu_basis failed: k or the positions out of range"):
        cpu_backend.basis_block(1, 0, 2**32 - 1, 2**32 + 1, 0, 4, "uniform")
    problem = cpu_backend._problem(1, 0, 2, 4, "uniform")
    problem.distribution = len(cpu_backend.DISTRIBUTION_CODES)
    assert cpu_backend._library.nola_cpu_project_partials(problem) == 0
    with pytest.raises(RuntimeError, match="unknown distribution"):
        cpu_backend._run(cpu_backend._library.nola_cpu_mix_f32, problem, torch.randn(2), torch.empty(4))


@built
def test_unknown_instruction_set_is_refused():
    with pytest.raises(ValueError, match=r"instruction set must be one of \['best', 'generic'"):
        with cpu_backend.instruction_set("avx512"):
            pass


def test_a_library_never_built_is_a_reason_not_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        library, reason = cpu_backend._load("nola_kernels._no_such_library")
    assert library is None and "not built" in reason


def test_a_library_that_fails_to_load_warns_once_with_the_error(tmp_path, monkeypatch):
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (tmp_path / f"broken_library{suffix}").write_bytes(b"not a shared library")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning, match="failed to load") as caught:
        library, reason = cpu_backend._load("broken_library")
    assert len(caught) == 1
    assert library is None and "OSError" in reason


@built
def test_unavailable_off_the_cpu():
    assert cpu_backend.unavailable_reason(torch.device("meta")) == "the CPU kernels run on CPU tensors only"
