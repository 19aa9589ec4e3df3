"""The torch.library ops: opcheck (schema, fake tensors, autograd registration) and
torch.compile(fullgraph=True) through nola_matmul, forward and backward."""

import dataclasses

import pytest
import torch
from numerics import rel_err

from nola_kernels import nola_matmul, ops
from nola_kernels.backends import get_backend
from nola_kernels.lowrank import LowRankSpec
from nola_kernels.routing import lowrank_path


@pytest.mark.parametrize("distribution", ["uniform", "uniform16_philox7"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_mix(device_backend, dtype, distribution):
    device, backend = device_backend
    for requires_grad in (False, True):
        coeffs = torch.randn(9, dtype=dtype, device=device, requires_grad=requires_grad)
        torch.library.opcheck(ops.mix, (coeffs, 2**40, 1, 4, 6, 0.3, distribution, backend))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_project(device_backend, dtype):
    device, backend = device_backend
    for requires_grad in (False, True):
        grad = torch.randn(4, 6, dtype=dtype, device=device, requires_grad=requires_grad)
        torch.library.opcheck(ops.project, (grad, 5, 0, 9, 0.3, "rademacher", backend))


def _lowrank_tensors(spec, offsets, requires_grad, device):
    tokens, in_f = 5, 20
    options = dict(device=device, requires_grad=requires_grad)
    x = torch.randn(tokens, in_f, **options)
    alpha, beta = torch.randn(7, **options), torch.randn(6, **options)
    a0 = torch.randn(spec.rank, in_f, **options) if offsets else None
    b0 = torch.randn(spec.out_features, spec.rank, **options) if offsets else None
    return x, alpha, beta, a0, b0


@pytest.mark.parametrize("offsets", [False, True])
def test_opcheck_lowrank(device_backend, offsets):
    device, backend = device_backend
    if not hasattr(get_backend(backend), "lowrank_forward"):
        pytest.skip(f"backend {backend!r} has no fused kernels")
    spec = LowRankSpec(seed_a=2**40, seed_b=3, rank=3, out_features=12, scaling=0.5, distribution="rademacher")
    for requires_grad in (False, True):
        arguments = (*_lowrank_tensors(spec, offsets, requires_grad, device), *spec.schema_args(), backend)
        torch.library.opcheck(ops.lowrank_forward, arguments)
    spec = dataclasses.replace(spec, distribution="uniform")
    x, alpha, beta, a0, b0 = _lowrank_tensors(spec, offsets, False, device)
    _, h = ops.lowrank_forward(x, alpha, beta, a0, b0, *spec.schema_args(), backend)
    grad = torch.randn(x.shape[0], spec.out_features, device=device)
    torch.library.opcheck(ops.lowrank_backward, (grad, x, h, alpha, beta, a0, b0, *spec.schema_args(), backend))


def test_lowrank_path_forces_the_path_inside_its_block_only(monkeypatch, device_backend):
    device, backend = device_backend
    with pytest.raises(ValueError, match="path must be one of"), lowrank_path("fast"):
        pass
    module = get_backend(backend)
    if hasattr(module, "lowrank_forward"):
        monkeypatch.setattr(module, "prefers_fused", lambda shape: True)
    calls = []
    monkeypatch.setattr(
        ops, "composed_delta", lambda *args: calls.append("composed") or torch.zeros(2, 3, device=device)
    )
    x, alpha, beta = (torch.randn(n, device=device) for n in ((2, 5), 3, 4))
    kwargs = dict(seed_a=1, seed_b=2, rank=2, out_features=3, backend=backend)
    with lowrank_path("composed"):
        nola_matmul(x, alpha, beta, **kwargs)
        with lowrank_path("fused"):  # a backend without fused kernels composes, and float64 does
            nola_matmul(x, alpha, beta, **kwargs)
            nola_matmul(x.double(), alpha.double(), beta.double(), **kwargs)
    nola_matmul(x, alpha, beta, **kwargs)  # auto again: prefers_fused
    expected = ["composed"] * 4 if not hasattr(module, "lowrank_forward") else ["composed"] * 2
    assert calls == expected


# aot_eager checks tracing and the fake implementations; inductor also compiles (about 30 s on CPU).
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph_forward_and_backward(device_backend, compiler):
    device, backend = device_backend
    x = torch.randn(3, 8, 20, device=device)
    alpha, beta = torch.randn(16, device=device), torch.randn(24, device=device)
    kwargs = dict(seed_a=1, seed_b=2, rank=4, out_features=12, scaling=2.0, backend=backend)

    def step(x, alpha, beta):
        return nola_matmul(x, alpha, beta, **kwargs).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend=compiler)
    leaves = [t.clone().requires_grad_() for t in (x, alpha, beta)]
    compiled_leaves = [t.clone().requires_grad_() for t in (x, alpha, beta)]
    loss = step(*leaves)
    loss.backward()
    compiled_loss = compiled(*compiled_leaves)
    compiled_loss.backward()
    assert rel_err(compiled_loss.detach(), loss.detach()) <= 1e-6
    for eager, traced in zip(leaves, compiled_leaves, strict=True):
        assert rel_err(traced.grad, eager.grad) <= 1e-6
