"""The official CUDA layout as basis families of the ops (docs/spec.md, "Official CUDA layout
families"): the names, the known answers against the scalar oracle, the bits of the entries
against official_rng.official_basis on every backend that implements them, mix and project and
their grouped forms against a float64 reference, their autograd, nola_matmul (composed of them)
with its gradients, and the refusals."""

import math
import struct

import pytest
import torch
from numerics import rel_err, rounding_bound
from philox_oracle import official_element

from nola_kernels import (
    nola_basis,
    nola_matmul,
    nola_mix,
    nola_mix_grouped,
    nola_project,
    nola_project_grouped,
)
from nola_kernels.backends import available_backends, check_implemented, get_backend, implements
from nola_kernels.lowrank import LowRankSpec
from nola_kernels.memory import peak_memory
from nola_kernels.official_rng import (
    GPU_LAYOUTS,
    CudaLayout,
    OfficialFamily,
    official_basis,
    official_block,
    official_distribution,
    parse_official,
)
from nola_kernels.reference import naive_matmul
from nola_kernels.routing import lowrank_path, runs_fused

H200_THREADS = 270336
DTYPE_RULES = [
    (torch.float32, "current"),
    (torch.bfloat16, "current"),
    (torch.bfloat16, "legacy"),
    (torch.float16, "current"),
    (torch.float16, "legacy"),
]
# seed, layout, k, shape. The H200 case is small enough that T covers it (word 0 of step 0
# only); the two small layouts cap T below the basis's size, so every word and several loop steps
# occur. Each case has bfloat16 entries that round to 1, and the last float16 ones as well, so
# the rules differ (test_the_rules_differ_in_every_case checks that).
CASES = [
    (42, "H200", 5, (12, 37)),
    (7, CudaLayout(1, 256), 5, (12, 37)),
    (2**40 + 3, CudaLayout(3, 1024), 40, (24, 24)),
]
CASE_IDS = ["H200", "256-threads", "3072-threads"]
# cpu runs the PyTorch backend's code for these families (backends/cpu_backend.py).
OFFICIAL_BACKENDS = [name for name in ("torch", "cpu", "triton") if name in available_backends(torch.device("cpu"))]


def _name(dtype):
    return str(dtype).removeprefix("torch.")


def _bits(tensor):
    return tensor.contiguous().view(torch.int16 if tensor.element_size() == 2 else torch.int32)


# -- names ---------------------------------------------------------------------------------------


def test_names_of_the_gpu_layouts():
    assert official_distribution("H200") == f"official:float32:current:{H200_THREADS}"
    assert official_distribution("A100", torch.bfloat16, "legacy") == "official:bfloat16:legacy:221184"
    assert official_distribution(CudaLayout(82, 1536), torch.float16) == "official:float16:current:125952"
    # float32 values are the same under both rules: one name.
    assert official_distribution("V100", torch.float32, "legacy") == "official:float32:current:163840"
    for layout in GPU_LAYOUTS.values():
        assert layout.total_threads(1 << 40) == layout.resident_threads


@pytest.mark.parametrize("dtype, rule", DTYPE_RULES)
def test_names_parse_back(dtype, rule):
    name = official_distribution("H100 SXM", dtype, rule)
    assert parse_official(name) == OfficialFamily(H200_THREADS, dtype, rule)
    assert parse_official(name).name == name


@pytest.mark.parametrize("name", ["uniform", "rademacher_philox7", "", "officia", None, 3])
def test_other_names_are_not_official(name):
    assert parse_official(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "official:",
        "official:float32:current",
        "official:float32:current:270336:0",
        "official:float64:current:270336",
        "official:bf16:current:270336",
        "official:bfloat16:newest:270336",
        "official:float32:legacy:270336",  # float32 has the one name
        "official:float32:current:270337",
        "official:float32:current:0",
        "official:float32:current:0270336",
        "official:float32:current:+270336",
        "official:float32:current:27033\u00b2",  # a digit to str.isdigit, not to int
        "official:float32:current:2147483648",
    ],
)
def test_malformed_official_names_are_refused_naming_distribution(name):
    with pytest.raises(ValueError, match="distribution"):
        parse_official(name)
    with pytest.raises(ValueError, match="distribution"):
        nola_mix(torch.randn(3), 1, (2, 2), distribution=name, backend="torch")


@pytest.mark.parametrize(
    "layout, dtype, rule, match",
    [
        ("generator", torch.float32, "current", "layout"),
        ("B200", torch.float32, "current", "layout"),
        ("H200", torch.float64, "current", "dtype"),
        ("H200", torch.bfloat16, "old", "uniform_rule"),
    ],
)
def test_bad_builder_arguments_are_refused(layout, dtype, rule, match):
    with pytest.raises(ValueError, match=match):
        official_distribution(layout, dtype, rule)


# -- known answers (docs/spec.md) ------------------------------------------------------------------

# Seed 42 on an H200 (T = 270,336), a (8, 512, 512) basis: (i, n) -> float32 bits, bfloat16
# ("current", "legacy"), float16. The last entry's bfloat16 value rounds to 1.
KNOWN_ANSWERS = {
    (0, 0): (0x3E675780, 0.2255859375, 0.2255859375, 0.2259521484375),
    (0, 270336): (0xBD80AB70, -0.06298828125, -0.06298828125, -0.06280517578125),
    (1, 0): (0x3E046078, 0.12890625, 0.12890625, 0.1292724609375),
    (4, 0): (0x3EF283C0, 0.474609375, 0.474609375, 0.4736328125),
    (5, 0): (0xBBCA9380, -0.006195068359375, -0.006195068359375, -0.006183624267578125),
    (7, 262143): (0x3F18A928, 0.59765625, 0.59765625, 0.59619140625),
    (0, 493): (0x3F7FDC24, -1.0, 1.0, 0.99951171875),
}
KNOWN_K, KNOWN_NUMEL = 8, 512 * 512


def _float32_of_bits(bits):
    return struct.unpack("<f", struct.pack("<I", bits))[0]


@pytest.mark.parametrize("position", list(KNOWN_ANSWERS))
def test_known_answers_match_the_oracle_and_the_reference(position):
    i, n = position
    bits, bf16_current, bf16_legacy, fp16 = KNOWN_ANSWERS[position]
    expected = {
        (torch.float32, "current"): _float32_of_bits(bits),
        (torch.bfloat16, "current"): bf16_current,
        (torch.bfloat16, "legacy"): bf16_legacy,
        (torch.float16, "current"): fp16,
        (torch.float16, "legacy"): fp16,
    }
    for (dtype, rule), value in expected.items():
        oracle = official_element(42, H200_THREADS, KNOWN_K, KNOWN_NUMEL, i, n, _name(dtype), rule)
        family = OfficialFamily(H200_THREADS, dtype, rule)
        reference = official_block(family, 42, KNOWN_K, KNOWN_NUMEL, i, i + 1, n, n + 1)
        assert oracle == value, (dtype, rule)
        assert reference.item() == value, (dtype, rule)


# -- the entries' bits ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed, layout, k, shape", CASES, ids=CASE_IDS)
def test_the_rules_differ_in_every_case(seed, layout, k, shape):
    for dtype in (torch.bfloat16,) + ((torch.float16,) if k == 40 else ()):
        current = official_basis(seed, k, shape, layout=layout, dtype=dtype, uniform_rule="current")
        legacy = official_basis(seed, k, shape, layout=layout, dtype=dtype, uniform_rule="legacy")
        assert not torch.equal(current, legacy), dtype


@pytest.mark.parametrize("dtype, rule", DTYPE_RULES)
@pytest.mark.parametrize("seed, layout, k, shape", CASES, ids=CASE_IDS)
def test_reference_entries_match_the_oracle_and_official_basis(seed, layout, k, shape, dtype, rule):
    name = official_distribution(layout, dtype, rule)
    entries = nola_basis(seed, k, shape, distribution=name)
    assert entries.dtype == torch.float32 and entries.shape == (k, *shape)
    # The ops' default scale times the entries, rounded once to the dtype, is the official basis.
    scale = torch.tensor(1 / math.sqrt(k), dtype=torch.float32)
    expected = official_basis(seed, k, shape, layout=layout, dtype=dtype, uniform_rule=rule)
    assert torch.equal(_bits((entries * scale).to(dtype)), _bits(expected))
    threads = parse_official(name).resident_threads
    flat = entries.view(k, -1)
    for i, n in [(0, 0), (k - 1, flat.shape[1] - 1), (k // 2, 123)]:
        oracle = official_element(seed, threads, k, flat.shape[1], i, n, _name(dtype), rule)
        assert flat[i, n].item() == oracle, (i, n)


def _one_hot(size, index, *shape):
    one_hot = torch.zeros(size, *shape)
    one_hot.view(size, -1)[index] = 1.0
    return one_hot


@pytest.mark.parametrize("backend", OFFICIAL_BACKENDS)
@pytest.mark.parametrize("dtype, rule", DTYPE_RULES)
@pytest.mark.parametrize("seed, layout, k, shape", CASES, ids=CASE_IDS)
def test_mix_of_one_hot_coefficients_is_the_official_basis(backend, seed, layout, k, shape, dtype, rule):
    # One coefficient 1, the others 0: every other term is a signed zero, so the mix is the
    # scaled entry bit for bit, whatever the order of the sums.
    name = official_distribution(layout, dtype, rule)
    expected = official_basis(seed, k, shape, layout=layout, dtype=dtype, uniform_rule=rule)
    for i in sorted({0, 1, k - 1}):
        mixed = nola_mix(_one_hot(k, i), seed, shape, distribution=name, backend=backend)
        assert mixed.dtype == torch.float32 and mixed.shape == shape
        assert torch.equal(_bits(mixed.to(dtype)), _bits(expected[i])), i


@pytest.mark.parametrize("backend", OFFICIAL_BACKENDS)
@pytest.mark.parametrize("dtype, rule", [(torch.float32, "current"), (torch.bfloat16, "legacy")])
@pytest.mark.parametrize("seed, layout, k, shape", CASES, ids=CASE_IDS)
def test_project_of_a_one_hot_gradient_is_the_entries(backend, seed, layout, k, shape, dtype, rule):
    name = official_distribution(layout, dtype, rule)
    entries = nola_basis(seed, k, shape, distribution=name).view(k, -1)
    numel = entries.shape[1]
    for n in sorted({0, numel // 3, numel - 1}):
        projected = nola_project(_one_hot(numel, n).view(shape), seed, k, scale=1.0, distribution=name, backend=backend)
        assert projected.shape == (k,)
        assert torch.equal(_bits(projected), _bits(entries[:, n])), n


# -- mix and project against float64 -------------------------------------------------------------


def _reference_basis(seed, k, shape, name):
    return nola_basis(seed, k, shape, distribution=name).double()


@pytest.mark.parametrize("backend", OFFICIAL_BACKENDS)
@pytest.mark.parametrize("dtype, rule", [(torch.float32, "current"), (torch.bfloat16, "current"), (torch.float16, "legacy")])
@pytest.mark.parametrize("seed, layout, k, shape", CASES, ids=CASE_IDS)
def test_mix_and_project_match_float64(backend, seed, layout, k, shape, dtype, rule):
    name = official_distribution(layout, dtype, rule)
    basis = _reference_basis(seed, k, shape, name)
    coeffs, grad = torch.randn(k), torch.randn(shape)
    mixed = nola_mix(coeffs, seed, shape, distribution=name, backend=backend)
    expected_mix = torch.einsum("k,krc->rc", coeffs.double(), basis) / math.sqrt(k)
    assert rel_err(mixed, expected_mix) <= rounding_bound(torch.float32, k)
    projected = nola_project(grad, seed, k, scale=0.5, distribution=name, backend=backend)
    expected_project = torch.einsum("krc,rc->k", basis, grad.double()) * 0.5
    assert rel_err(projected, expected_project) <= rounding_bound(torch.float32, grad.numel())


def test_float64_work_is_float64_exact_to_a_tight_bound():
    seed, layout, k, shape = CASES[1]
    name = official_distribution(layout, torch.bfloat16, "legacy")
    basis = _reference_basis(seed, k, shape, name)
    coeffs = torch.randn(k, dtype=torch.float64)
    expected = torch.einsum("k,krc->rc", coeffs, basis) * 0.25
    mixed = nola_mix(coeffs, seed, shape, scale=0.25, distribution=name)
    assert mixed.dtype == torch.float64
    assert rel_err(mixed, expected) <= rounding_bound(torch.float64, k)


@pytest.mark.parametrize("backend", OFFICIAL_BACKENDS)
def test_nan_propagates(backend):
    seed, layout, k, shape = CASES[1]
    name = official_distribution(layout)
    coeffs = torch.randn(k)
    coeffs[2] = float("nan")
    assert torch.isnan(nola_mix(coeffs, seed, shape, distribution=name, backend=backend)).all()
    grad = torch.randn(shape)
    grad[3, 4] = float("nan")
    assert torch.isnan(nola_project(grad, seed, k, distribution=name, backend=backend)).all()


# -- grouped -------------------------------------------------------------------------------------

# More rows than a Triton program takes (64): two row blocks.
MANY_ROWS = 70


def _check_grouped_one_hot_rows(backend, dtype, rule, device):
    # Row g of the mix picks basis matrix g mod k, row g of the projection position positions[g]:
    # every other term is a signed zero, so the results are the entries bit for bit. On a GPU
    # this checks the float32 values' split for TF32 products too, which the interpreter's
    # float32 products do not.
    seed, layout, k, shape = CASES[2]
    name = official_distribution(layout, dtype, rule)
    entries = nola_basis(seed, k, shape, distribution=name)
    picked = torch.arange(MANY_ROWS) % k
    coeffs = torch.eye(k)[picked].to(device)
    mixed = nola_mix_grouped(coeffs, seed, shape, scale=1.0, distribution=name, backend=backend)
    assert mixed.shape == (MANY_ROWS, *shape)
    assert torch.equal(_bits(mixed.cpu()), _bits(entries[picked]))
    numel = entries[0].numel()
    positions = torch.randperm(numel)[:MANY_ROWS]
    grads = torch.eye(numel)[positions].view(MANY_ROWS, *shape).to(device)
    projected = nola_project_grouped(grads, seed, k, scale=1.0, distribution=name, backend=backend)
    assert projected.shape == (MANY_ROWS, k)
    assert torch.equal(_bits(projected.cpu()), _bits(entries.view(k, numel)[:, positions].T.contiguous()))


@pytest.mark.parametrize("backend", OFFICIAL_BACKENDS)
@pytest.mark.parametrize("dtype, rule", DTYPE_RULES)
def test_grouped_one_hot_rows_are_the_entries(backend, dtype, rule):
    _check_grouped_one_hot_rows(backend, dtype, rule, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, rule", DTYPE_RULES)
def test_on_a_gpu_grouped_one_hot_rows_are_the_entries(gpu_backend, dtype, rule):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if not implements(gpu_backend, "mix_grouped", official_distribution("H200", dtype, rule)):
        pytest.skip(f"the {gpu_backend} backend does not run the family's grouped ops")
    _check_grouped_one_hot_rows(gpu_backend, dtype, rule, "cuda")


def _check_grouped_against_float64(backend, seed, k, shape, name, groups):
    """Each row of the grouped ops within twice the bound of the float32 per-row path (docs/spec.md:
    the grouped ops' precision)."""
    basis = _reference_basis(seed, k, shape, name)
    coeffs, grads = torch.randn(groups, k), torch.randn(groups, *shape)
    family = dict(distribution=name, backend=backend)
    mixed = nola_mix_grouped(coeffs, seed, shape, **family)
    projected = nola_project_grouped(grads, seed, k, scale=0.5, **family)
    expected_mix = torch.einsum("gk,krc->grc", coeffs.double(), basis) / math.sqrt(k)
    expected_project = torch.einsum("krc,grc->gk", basis, grads.double()) * 0.5
    assert mixed.dtype == projected.dtype == torch.float32
    for g in range(groups):
        assert rel_err(mixed[g], expected_mix[g]) <= 2 * rounding_bound(torch.float32, k), g
        assert rel_err(projected[g], expected_project[g]) <= 2 * rounding_bound(torch.float32, grads[g].numel()), g


@pytest.mark.parametrize("backend", OFFICIAL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=_name)
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_grouped_ops_match_float64_row_by_row(backend, case, dtype):
    seed, layout, k, shape = CASES[case]
    rule = "legacy" if dtype == torch.bfloat16 else "current"
    _check_grouped_against_float64(backend, seed, k, shape, official_distribution(layout, dtype, rule), 3)


@pytest.mark.skipif("triton" not in available_backends(torch.device("cpu")), reason="needs Triton's interpreter")
def test_triton_grouped_rows_in_two_row_blocks_match_float64():
    seed, layout, k, shape = CASES[1]
    name = official_distribution(layout, torch.bfloat16, "current")
    _check_grouped_against_float64("triton", seed, k, shape, name, MANY_ROWS)


@pytest.mark.parametrize("backend", [name for name in OFFICIAL_BACKENDS if name in ("torch", "cpu")])
def test_grouped_rows_have_the_bits_of_single_calls(backend):
    seed, layout, k, shape = CASES[2]
    name = official_distribution(layout, torch.bfloat16, "legacy")
    coeffs, grads = torch.randn(3, k), torch.randn(3, *shape)
    family = dict(distribution=name, backend=backend)
    mixed = nola_mix_grouped(coeffs, seed, shape, **family)
    projected = nola_project_grouped(grads, seed, k, **family)
    for g in range(3):
        assert torch.equal(mixed[g], nola_mix(coeffs[g], seed, shape, distribution=name, backend="torch"))
        assert torch.equal(projected[g], nola_project(grads[g], seed, k, distribution=name, backend="torch"))
    assert torch.equal(mixed, nola_mix_grouped(coeffs, seed, shape, distribution=name))


@pytest.mark.parametrize("backend", OFFICIAL_BACKENDS)
def test_grouped_nan_stays_in_its_row(backend):
    seed, layout, k, shape = CASES[1]
    name = official_distribution(layout, torch.float16, "legacy")
    coeffs, grads = torch.randn(3, k), torch.randn(3, *shape)
    coeffs[1, 2] = float("nan")
    grads[2, 3, 4] = float("nan")
    mixed = nola_mix_grouped(coeffs, seed, shape, distribution=name, backend=backend)
    projected = nola_project_grouped(grads, seed, k, distribution=name, backend=backend)
    assert torch.isnan(mixed[1]).all() and torch.isfinite(mixed[[0, 2]]).all()
    assert torch.isnan(projected[2]).all() and torch.isfinite(projected[:2]).all()


def test_auto_runs_every_op_on_the_cpu():
    seed, layout, k, shape = CASES[0]
    name = official_distribution(layout)
    coeffs, grad = torch.randn(k), torch.randn(shape)
    for op, args in [(nola_mix, (coeffs, seed, shape)), (nola_project, (grad, seed, k))]:
        assert torch.equal(op(*args, distribution=name), op(*args, distribution=name, backend="torch"))


@pytest.mark.parametrize("dtype, k, shape", [(torch.float32, 3, (600, 700)), (torch.float64, 5000, (16, 16))])
def test_the_pytorch_path_stays_under_its_budget(set_budget, dtype, k, shape):
    # As tests/test_memory.py for the NOLA-Philox distributions: a matrix larger than the budget,
    # and many small ones.
    budget = 1 << 20
    set_budget(budget)
    name = official_distribution("H200", torch.bfloat16, "legacy")
    coeffs, grad = torch.randn(k, dtype=dtype), torch.randn(shape, dtype=dtype)
    family = dict(distribution=name, backend="torch")
    _, mix_peak = peak_memory(lambda: nola_mix(coeffs, 1, shape, **family), "cpu")
    _, project_peak = peak_memory(lambda: nola_project(grad, 1, k, **family), "cpu")
    assert mix_peak <= budget + shape[0] * shape[1] * dtype.itemsize + k * dtype.itemsize, mix_peak
    assert project_peak <= budget + 2 * k * dtype.itemsize, project_peak


# -- autograd: mix and project are each other's backward --------------------------------------------


def test_gradcheck_in_float64():
    seed, layout, k, shape = CASES[1]
    name = official_distribution(layout, torch.float16, "current")
    coeffs = torch.randn(k, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    family = dict(distribution=name, backend="torch")
    assert torch.autograd.gradcheck(lambda c: nola_mix(c, seed, shape, **family), (coeffs,))
    assert torch.autograd.gradgradcheck(lambda c: nola_mix(c, seed, shape, **family), (coeffs,))
    assert torch.autograd.gradcheck(lambda g: nola_project(g, seed, k, **family), (grad,))
    grouped = torch.randn(2, k, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: nola_mix_grouped(c, seed, shape, **family), (grouped,))


@pytest.mark.parametrize("backend", OFFICIAL_BACKENDS)
def test_backward_of_mix_is_project(backend):
    seed, layout, k, shape = CASES[2]
    name = official_distribution(layout, torch.bfloat16, "current")
    coeffs = torch.randn(k, requires_grad=True)
    upstream = torch.randn(shape)
    nola_mix(coeffs, seed, shape, distribution=name, backend=backend).backward(upstream)
    projected = nola_project(upstream, seed, k, distribution=name, backend=backend)
    assert torch.equal(coeffs.grad, projected)
    expected = torch.einsum("krc,rc->k", _reference_basis(seed, k, shape, name), upstream.double()) / math.sqrt(k)
    assert rel_err(coeffs.grad, expected) <= rounding_bound(torch.float32, upstream.numel())


# -- the low-rank products: composed of each backend's mix and project and torch's matmul ---------


def _lowrank_inputs(x_dtype, name, lead=(2, 5)):
    rank, in_features, out_features, k, l = 3, 24, 20, 40, 7  # noqa: E741 (NOLA's name)
    tensors = dict(
        x=torch.randn(*lead, in_features).to(x_dtype),
        alpha=torch.randn(k),
        beta=torch.randn(l),
        a0=torch.randn(rank, in_features) / math.sqrt(in_features),
        b0=torch.randn(out_features, rank),
    )
    kwargs = dict(seed_a=2**40 + 11, seed_b=12345, rank=rank, out_features=out_features, scaling=0.75, distribution=name)
    return tensors, kwargs


def _forward_backward(fn, tensors, kwargs, grad_out, **extra):
    leaves = {name: t.detach().clone().requires_grad_() for name, t in tensors.items()}
    out = fn(**leaves, **kwargs, **extra)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), {name: t.grad for name, t in leaves.items()}


def _float64(tensors):
    return {name: t.double() for name, t in tensors.items()}


# Every reduction of the product and its gradients: k, l, in, rank, out and the tokens.
LOWRANK_BOUND = rounding_bound(torch.float32, 40, 7, 24, 3, 20, 10)


@pytest.mark.parametrize("backend", OFFICIAL_BACKENDS)
@pytest.mark.parametrize("path", ["auto", "fused"])
@pytest.mark.parametrize("dtype, rule", [(torch.float32, "current"), (torch.bfloat16, "legacy")])
def test_nola_matmul_and_its_gradients_match_float64(backend, path, dtype, rule):
    # "fused" reaches the fused ops, which compose the family on a backend that has them.
    name = official_distribution(CASES[2][1], dtype, rule)
    tensors, kwargs = _lowrank_inputs(torch.float32, name)
    grad_out = torch.randn(2, 5, kwargs["out_features"], dtype=torch.float64)
    with lowrank_path(path):
        out, grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out, backend=backend)
    ref_out, ref_grads = _forward_backward(naive_matmul, _float64(tensors), kwargs, grad_out)
    assert out.dtype == torch.float32 and out.shape == ref_out.shape
    assert rel_err(out, ref_out) <= LOWRANK_BOUND
    for key, grad in grads.items():
        assert grad.dtype == torch.float32, key
        assert rel_err(grad, ref_grads[key]) <= LOWRANK_BOUND, key


@pytest.mark.parametrize("backend", OFFICIAL_BACKENDS)
@pytest.mark.parametrize("path", ["auto", "fused"])
def test_low_precision_error_at_most_twice_naive(backend, path):
    name = official_distribution(CASES[1][1], torch.bfloat16, "current")
    tensors, kwargs = _lowrank_inputs(torch.bfloat16, name, lead=(4, 16))
    grad_out = torch.randn(4, 16, kwargs["out_features"], dtype=torch.float64)
    with lowrank_path(path):
        out, grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out, backend=backend)
    naive_out, naive_grads = _forward_backward(naive_matmul, tensors, kwargs, grad_out)
    ref_out, ref_grads = _forward_backward(naive_matmul, _float64(tensors), kwargs, grad_out)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref_out) <= 2 * rel_err(naive_out, ref_out)
    for key, grad in grads.items():
        assert grad.dtype == tensors[key].dtype, key
        assert rel_err(grad, ref_grads[key]) <= 2 * rel_err(naive_grads[key], ref_grads[key]), key


@pytest.mark.skipif("triton" not in available_backends(torch.device("cpu")), reason="needs Triton's interpreter")
def test_triton_lowrank_ops_meet_the_fused_contract():
    # delta and h = x A^T (float32) forward; the factors' gradients (float32) and those of x and
    # the coefficients backward, against float64 (nola_kernels/ops.py states the contract).
    name = official_distribution(CASES[0][1], torch.float16, "legacy")
    tensors, kwargs = _lowrank_inputs(torch.float32, name, lead=(10,))
    spec = LowRankSpec(kwargs["seed_a"], kwargs["seed_b"], kwargs["rank"], kwargs["out_features"], kwargs["scaling"], name)
    x, alpha, beta, a0, b0 = tensors.values()
    triton_backend = get_backend("triton")
    delta, h = triton_backend.lowrank_forward(x, alpha, beta, a0, b0, spec)
    grad = torch.randn_like(delta)
    grad_x, grad_alpha, grad_beta, grad_a, grad_b = triton_backend.lowrank_backward(grad, x, h, alpha, beta, a0, b0, spec)
    a_basis = _reference_basis(spec.seed_a, 40, (3, 24), name)
    b_basis = _reference_basis(spec.seed_b, 7, (20, 3), name)
    a = a0.double() + torch.einsum("k,krc->rc", alpha.double(), a_basis) / math.sqrt(40)
    b = b0.double() + torch.einsum("k,krc->rc", beta.double(), b_basis) / math.sqrt(7)
    x64, grad64 = x.double(), grad.double()
    h64 = x64 @ a.T
    grad_h = spec.scaling * grad64 @ b
    grad_a64, grad_b64 = grad_h.T @ x64, spec.scaling * grad64.T @ h64
    expected = dict(
        delta=(delta, spec.scaling * h64 @ b.T), h=(h, h64), grad_x=(grad_x, grad_h @ a), grad_a=(grad_a, grad_a64),
        grad_b=(grad_b, grad_b64), grad_alpha=(grad_alpha, torch.einsum("krc,rc->k", a_basis, grad_a64) / math.sqrt(40)),
        grad_beta=(grad_beta, torch.einsum("krc,rc->k", b_basis, grad_b64) / math.sqrt(7)),
    )  # fmt: skip
    for key, (value, reference) in expected.items():
        assert value.dtype == torch.float32 and value.shape == reference.shape, key
        assert rel_err(value, reference) <= LOWRANK_BOUND, key


@pytest.mark.skipif("triton" not in available_backends(torch.device("cpu")), reason="needs Triton's interpreter")
def test_auto_routes_the_family_to_the_composed_path():
    tensors, kwargs = _lowrank_inputs(torch.float32, NAME)
    spec = LowRankSpec(*(kwargs[key] for key in ("seed_a", "seed_b", "rank", "out_features", "scaling", "distribution")))
    args = (get_backend("triton"), *tensors.values(), spec)
    assert not runs_fused(*args)
    with lowrank_path("fused"):
        assert runs_fused(*args)


def test_nola_matmul_gradcheck_in_float64():
    name = official_distribution(CASES[1][1], torch.bfloat16, "legacy")
    tensors, kwargs = _lowrank_inputs(torch.float64, name, lead=(2, 3))
    leaves = [t.double().requires_grad_() for t in tensors.values()]

    def delta(x, alpha, beta, a0, b0):
        return nola_matmul(x, alpha, beta, a0=a0, b0=b0, **kwargs, backend="torch")

    assert torch.autograd.gradcheck(delta, leaves)
    assert torch.autograd.gradgradcheck(delta, leaves)


# -- refusals ------------------------------------------------------------------------------------

NAME = f"official:float32:current:{H200_THREADS}"


def test_a_stream_is_refused():
    with pytest.raises(ValueError, match="stream must be 0"):
        nola_mix(torch.randn(4), 1, (3, 3), stream=1, distribution=NAME)
    with pytest.raises(ValueError, match="stream must be 0"):
        nola_basis(1, 4, (3, 3), stream=2, distribution=NAME)


def test_a_basis_past_2_40_entries_is_refused_before_any_work():
    grad = torch.randn(1, 1024)
    with pytest.raises(ValueError, match=r"2\*\*40 entries"):
        nola_project(grad, 1, 2**32, distribution=NAME, backend="torch")


@pytest.mark.skipif("cpu" not in available_backends(torch.device("cpu")), reason="needs the CPU library")
def test_the_cpu_kernels_refuse_the_family_by_name():
    # The ops run the PyTorch backend's code for these families; the kernels' own basis refuses.
    with pytest.raises(ValueError, match=r"not in basis_block \(distribution='official:float32"):
        get_backend("cpu").basis_block(1, 0, 0, 1, 0, 4, NAME)


@pytest.mark.parametrize("name", OFFICIAL_BACKENDS)
def test_the_backends_that_run_the_family_run_every_op(name):
    for op in ("mix", "project", "mix_grouped", "project_grouped", "nola_matmul"):
        assert implements(name, op, NAME), op
        check_implemented(name, op, NAME)


def test_nola_matmul_refuses_a_basis_past_2_40_entries_naming_distribution():
    # A: 1024 x 2^20 entries a matrix, 2048 matrices: 2^41 entries.
    with pytest.raises(ValueError, match=r"2\*\*40 entries \(distribution=.*\): A's basis \(alpha\) has"):
        nola_matmul(torch.randn(1, 1 << 20), torch.randn(2048), torch.randn(4), seed_a=1, seed_b=2, rank=1024,
                    out_features=3, distribution=NAME)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=_name)
def test_on_a_gpu_the_entries_are_torchs_own_draw(gpu_backend, dtype):
    # 1.26M entries: past 4T on every GPU of GPU_LAYOUTS, so every word and two loop steps occur.
    # The installed torch (>= 2.1) draws under the current rule.
    seed, k, shape = 8_765_432_109, 6, (300, 700)
    name = official_distribution(CudaLayout.of_device(), dtype)
    if not implements(gpu_backend, "mix", name):
        pytest.skip(f"the {gpu_backend} backend does not implement the official families' mix")
    torch.manual_seed(seed)
    drawn = torch.empty(k, *shape, device="cuda", dtype=dtype).uniform_(-1, 1)
    for i in (0, 3, k - 1):
        one_hot = _one_hot(k, i).cuda()
        mixed = nola_mix(one_hot, seed, shape, scale=1.0, distribution=name, backend=gpu_backend)
        assert torch.equal(_bits(mixed.to(dtype)), _bits(drawn[i])), i
