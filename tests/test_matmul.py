"""nola_matmul forward and every gradient against the float64 naive reference (the whole basis
materialized, then einsum), over a seeded sweep of shapes, dtypes and input layouts."""

import random

import pytest
import torch
from numerics import rel_err

from nola_kernels import nola_matmul
from nola_kernels.backends import get_backend, torch_backend
from nola_kernels.reference import naive_matmul
from nola_kernels.routing import lowrank_path


def _random_case(rng):
    """A random shape with rank 1..64, k and l 1..2048, in/out up to 4096, kept to at most ~1M
    basis entries per factor so that the float64 reference stays quick."""
    while True:
        rank = rng.choice([1, 2, 3, 8, 16, 31, 64])
        k_a, k_b = (int(2 ** rng.uniform(0, 11)) for _ in range(2))
        in_f, out_f = (int(2 ** rng.uniform(0, 12)) for _ in range(2))
        if k_a * rank * in_f <= 1 << 20 and k_b * rank * out_f <= 1 << 20:
            return dict(rank=rank, k=k_a, l=k_b, in_features=in_f, out_features=out_f)


EDGE_CASES = [
    dict(rank=64, k=1, l=1, in_features=4096, out_features=3),
    dict(rank=1, k=2048, l=2048, in_features=300, out_features=500),
    dict(rank=16, k=7, l=512, in_features=1, out_features=1),
]
SWEEP = EDGE_CASES + [_random_case(random.Random(seed)) for seed in range(12)]


def _inputs(case, dtype=torch.float32, lead=(5,), offsets=True, noncontiguous=False, seed=0, device="cpu"):
    """The same values on every device: drawn on the CPU, then moved (and then strided)."""
    gen = torch.Generator().manual_seed(seed)
    rank, in_f, out_f = case["rank"], case["in_features"], case["out_features"]
    if noncontiguous:
        x = torch.randn(*lead, 2 * in_f, generator=gen).to(device)[..., ::2]
    else:
        x = torch.randn(*lead, in_f, generator=gen).to(device)
    tensors = dict(
        x=x.to(dtype),
        alpha=torch.randn(case["k"], generator=gen),
        beta=torch.randn(case["l"], generator=gen),
        a0=torch.randn(rank, in_f, generator=gen) / in_f**0.5 if offsets else None,
        b0=torch.randn(out_f, rank, generator=gen) if offsets else None,
    )
    tensors.update({name: t.to(device) for name, t in tensors.items() if name != "x" and t is not None})
    kwargs = dict(seed_a=2**40 + 11, seed_b=12345, rank=rank, out_features=out_f, scaling=0.75)
    return tensors, kwargs


def _forward_backward(fn, tensors, kwargs, grad_out, **extra):
    leaves = {
        name: t.detach().clone().requires_grad_() if t is not None else None for name, t in tensors.items()
    }
    out = fn(**leaves, **kwargs, **extra)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), {name: t.grad for name, t in leaves.items() if t is not None}


def _float64(tensors):
    """The reference's inputs: float64 on the CPU."""
    return {name: t.cpu().double() if t is not None else None for name, t in tensors.items()}


@pytest.mark.parametrize(
    "case", SWEEP, ids=lambda c: "r{rank}-k{k}-l{l}-{in_features}x{out_features}".format(**c)
)
def test_forward_and_gradients_match_float64_reference(device_backend, case):
    device, backend = device_backend
    lead = (3, 4) if case["in_features"] % 2 else (6,)  # 2-D and 3-D x across the sweep
    tensors, kwargs = _inputs(case, lead=lead, noncontiguous=case["rank"] % 2 == 1, device=device)
    grad_out = torch.randn(*lead, case["out_features"], dtype=torch.float64)
    out, grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out.to(device), backend=backend)
    ref_out, ref_grads = _forward_backward(naive_matmul, _float64(tensors), kwargs, grad_out)
    assert out.dtype == torch.float32 and out.shape == ref_out.shape and out.device == device
    assert rel_err(out.cpu(), ref_out) <= 1e-5
    for name, grad in grads.items():
        assert grad.dtype == tensors[name].dtype, name
        assert rel_err(grad.cpu(), ref_grads[name]) <= 1e-5, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("distribution", ["uniform", "rademacher"])
def test_low_precision_error_at_most_twice_naive(device_backend, dtype, distribution):
    device, backend = device_backend
    case = dict(rank=8, k=96, l=80, in_features=256, out_features=192)
    tensors, kwargs = _inputs(case, dtype=dtype, lead=(4, 16), seed=1, device=device)
    kwargs["distribution"] = distribution
    grad_out = torch.randn(4, 16, case["out_features"], dtype=torch.float64)
    out, grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out.to(device), backend=backend)
    # The naive path in the same dtype on the same device sets the bound.
    naive_out, naive_grads = _forward_backward(naive_matmul, tensors, kwargs, grad_out.to(device))
    ref_out, ref_grads = _forward_backward(naive_matmul, _float64(tensors), kwargs, grad_out)
    assert out.dtype == dtype
    assert rel_err(out.cpu(), ref_out) <= 2 * rel_err(naive_out.cpu(), ref_out)
    for name, grad in grads.items():
        assert grad.dtype == tensors[name].dtype, name
        bound = 2 * rel_err(naive_grads[name].cpu(), ref_grads[name])
        assert rel_err(grad.cpu(), ref_grads[name]) <= bound, name


def test_gradcheck_float64(device_backend):
    device, backend = device_backend
    case = dict(rank=3, k=4, l=5, in_features=6, out_features=7)
    tensors, kwargs = _inputs(case, lead=(2, 3), device=device)
    leaves = [t.double().requires_grad_() for t in tensors.values()]

    def fn(x, alpha, beta, a0, b0):
        return nola_matmul(x, alpha, beta, a0=a0, b0=b0, **kwargs, backend=backend)

    assert torch.autograd.gradcheck(fn, leaves)


def test_zero_coefficients_give_zero_update_and_beta_moves_first(device_backend):
    # NOLA's start: alpha = beta = 0 with b0 = 0 gives a zero update; with a0 set, beta moves first.
    device, backend = device_backend
    case = dict(rank=4, k=10, l=12, in_features=9, out_features=8)
    tensors, kwargs = _inputs(case, device=device)
    tensors.update(alpha=torch.zeros(10, device=device), beta=torch.zeros(12, device=device), b0=None)
    grad_out = torch.randn(5, 8, device=device)
    out, grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out, backend=backend)
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(grads["alpha"]) == 0 and torch.count_nonzero(grads["beta"]) == 12


def test_one_dimensional_and_empty_inputs(device_backend):
    device, backend = device_backend
    case = dict(rank=2, k=3, l=4, in_features=5, out_features=6)
    tensors, kwargs = _inputs(case, device=device)
    single = tensors["x"][0]
    expected = naive_matmul(**_float64({**tensors, "x": single}), **kwargs)
    got = nola_matmul(**{**tensors, "x": single}, **kwargs, backend=backend)
    assert rel_err(got.cpu(), expected) <= 1e-5
    empty = nola_matmul(**{**tensors, "x": torch.randn(0, 3, 5, device=device)}, **kwargs, backend=backend)
    assert empty.shape == (0, 3, 6)


def test_nan_and_inf_propagate(device_backend):
    device, backend = device_backend
    case = dict(rank=2, k=3, l=4, in_features=5, out_features=6)
    tensors, kwargs = _inputs(case, device=device)
    tensors["x"][1, 2] = float("nan")
    tensors["x"][3, 0] = float("inf")
    out = nola_matmul(**tensors, **kwargs, backend=backend)
    assert torch.isnan(out[1]).all() and not torch.isfinite(out[3]).any()
    assert torch.isfinite(out[[0, 2, 4]]).all()
    tensors["x"][1, 2], tensors["x"][3, 0] = 0.5, 0.5
    tensors["alpha"][0] = float("nan")
    assert torch.isnan(nola_matmul(**tensors, **kwargs, backend=backend)).all()


def test_rademacher_matches_reference(device_backend):
    device, backend = device_backend
    case = dict(rank=5, k=33, l=40, in_features=130, out_features=70)
    tensors, kwargs = _inputs(case, device=device)
    kwargs["distribution"] = "rademacher"
    grad_out = torch.randn(5, 70, dtype=torch.float64)
    out, grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out.to(device), backend=backend)
    ref_out, ref_grads = _forward_backward(naive_matmul, _float64(tensors), kwargs, grad_out)
    assert rel_err(out.cpu(), ref_out) <= 1e-5
    for name, grad in grads.items():
        assert rel_err(grad.cpu(), ref_grads[name]) <= 1e-5, name


@pytest.fixture(params=["auto", "fused", "composed"])
def path(request, device_backend):
    """The paths of nola_matmul, chosen (auto) or forced (routing.lowrank_path); "fused" only on
    backends with fused kernels."""
    return _path(request.param, device_backend.backend)


@pytest.fixture(params=["auto", "fused", "composed"])
def gpu_path(request, gpu_backend):
    return _path(request.param, gpu_backend)


def _path(path, backend):
    if path == "fused" and not hasattr(get_backend(backend), "lowrank_forward"):
        pytest.skip(f"backend {backend!r} has no fused kernels")
    return path


def _second_order(tensors, kwargs, probes, fn, **extra):
    """The gradients of <probes, d loss / d (x, alpha, beta)>, loss = <weights, delta>: double
    backward through every input."""
    leaves = {name: t.detach().clone().requires_grad_() for name, t in tensors.items()}
    delta = fn(**leaves, **kwargs, **extra)
    loss = (delta * probes["weights"].to(delta.dtype)).sum()
    first = torch.autograd.grad(loss, [leaves[n] for n in ("x", "alpha", "beta")], create_graph=True)
    sum((g * probes[n].to(g.dtype)).sum() for g, n in zip(first, ("x", "alpha", "beta"), strict=True)).backward()
    return [g.detach() for g in first], {name: t.grad for name, t in leaves.items()}


def test_double_backward_matches_float64_reference(device_backend, path):
    device, backend = device_backend
    case = dict(rank=3, k=5, l=4, in_features=7, out_features=6)
    tensors, kwargs = _inputs(case, lead=(4,), device=device)
    probes = {name: torch.randn(tensors[name].shape, dtype=torch.float64) for name in ("x", "alpha", "beta")}
    probes["weights"] = torch.randn(4, case["out_features"], dtype=torch.float64)
    with lowrank_path(path):
        first, second = _second_order(
            tensors, kwargs, {n: p.to(device) for n, p in probes.items()}, nola_matmul, backend=backend
        )
    ref_first, ref_second = _second_order(_float64(tensors), kwargs, probes, naive_matmul)
    for got, ref in zip(first, ref_first, strict=True):
        assert rel_err(got.cpu(), ref) <= 1e-5
    for name, grad in second.items():
        assert grad.dtype == tensors[name].dtype, name
        assert rel_err(grad.cpu(), ref_second[name]) <= 1e-5, name


def test_infinite_scaling_gives_the_references_inf_and_nan(device_backend, path):
    # B * inf is +-inf, so each output sums infinities of both signs (NaN) or of one (+-inf).
    device, backend = device_backend
    case = dict(rank=2, k=3, l=4, in_features=5, out_features=40)
    tensors, kwargs = _inputs(case, device=device)
    for scaling in (float("inf"), float("-inf")):
        kwargs["scaling"] = scaling
        with lowrank_path(path):
            out = nola_matmul(**tensors, **kwargs, backend=backend).cpu()
        ref = naive_matmul(**_float64(tensors), **kwargs)
        assert ref.isnan().any() and ref.isinf().any()  # both in the pattern
        assert torch.equal(out.isnan(), ref.isnan())
        assert torch.equal(out.isinf() & (out > 0), ref.isinf() & (ref > 0))


def test_add_to_is_the_base_output_plus_delta(device_backend, path):
    device, backend = device_backend
    case = dict(rank=4, k=10, l=12, in_features=9, out_features=8)
    tensors, kwargs = _inputs(case, lead=(3, 5), device=device)
    tensors["add_to"] = torch.randn(3, 5, 8, device=device)
    grad_out = torch.randn(3, 5, 8, dtype=torch.float64, device=device)
    with lowrank_path(path):
        out, grads = _forward_backward(nola_matmul, tensors, kwargs, grad_out, backend=backend)
    ref_tensors = _float64({name: t for name, t in tensors.items() if name != "add_to"})
    ref = tensors["add_to"].cpu().double() + naive_matmul(**ref_tensors, **kwargs)
    assert rel_err(out.cpu(), ref) <= 1e-5
    assert torch.equal(grads["add_to"], grad_out.float())  # the add passes the gradient on as it is
    with pytest.raises(ValueError, match="add_to must have shape \\(3, 5, 8\\)"):
        nola_matmul(**{**tensors, "add_to": torch.randn(3, 8, device=device)}, **kwargs, backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_float64_reference(gpu_backend, gpu_path, dtype):
    case = dict(rank=16, k=512, l=512, in_features=1024, out_features=1024)
    tensors, kwargs = _inputs(case, dtype=dtype, lead=(2, 64))
    grad_out = torch.randn(2, 64, 1024, dtype=torch.float64)
    cuda = {name: t.cuda() for name, t in tensors.items()}
    with lowrank_path(gpu_path):
        out, grads = _forward_backward(nola_matmul, cuda, kwargs, grad_out.cuda(), backend=gpu_backend)
    naive_out, naive_grads = _forward_backward(naive_matmul, cuda, kwargs, grad_out.cuda())
    ref_out, ref_grads = _forward_backward(naive_matmul, _float64(tensors), kwargs, grad_out)

    # float32 (no TF32 unless asked for) meets 1e-5; half precision, twice the naive path's error.
    def bound(naive, ref):
        return 1e-5 if dtype == torch.float32 else 2 * rel_err(naive.cpu(), ref)

    assert rel_err(out.cpu(), ref_out) <= bound(naive_out, ref_out)
    for name, grad in grads.items():
        assert rel_err(grad.cpu(), ref_grads[name]) <= bound(naive_grads[name], ref_grads[name]), name


def test_the_routing_sees_whether_the_product_adds_into_a_layer(monkeypatch):
    # nola_matmul(add_to=...) asks the backend about the whole layer (LowRankShape.adds).
    seen = []
    monkeypatch.setattr(torch_backend, "lowrank_forward", lambda *args: None, raising=False)
    monkeypatch.setattr(torch_backend, "prefers_fused", lambda shape: seen.append(shape.adds) or False, raising=False)
    x, alpha, beta = torch.randn(5, 12), torch.randn(6), torch.randn(4)
    params = dict(seed_a=3, seed_b=4, rank=2, out_features=7, backend="torch")
    nola_matmul(x, alpha, beta, **params)
    nola_matmul(x, alpha, beta, **params, add_to=torch.randn(5, 7))
    assert seen == [False, True]
