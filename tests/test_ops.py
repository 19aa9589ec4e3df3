"""The torch.library ops: opcheck (schema, fake tensors, autograd registration) and
torch.compile(fullgraph=True) through nola_matmul, forward and backward."""

import pytest
import torch
from numerics import rel_err

from nola_kernels import available_backends, nola_matmul, ops
from nola_kernels.backends import get_backend

FUSED_BACKENDS = [name for name in available_backends("cpu") if hasattr(get_backend(name), "lowrank_forward")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_mix(backend, dtype):
    for requires_grad in (False, True):
        coeffs = torch.randn(9, dtype=dtype, requires_grad=requires_grad)
        torch.library.opcheck(ops.mix, (coeffs, 2**40, 1, 4, 6, 0.3, "uniform", backend))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_project(backend, dtype):
    for requires_grad in (False, True):
        grad = torch.randn(4, 6, dtype=dtype, requires_grad=requires_grad)
        torch.library.opcheck(ops.project, (grad, 5, 0, 9, 0.3, "rademacher", backend))


def _lowrank_arguments(offsets, requires_grad):
    tokens, in_f, out_f, rank = 5, 20, 12, 3
    x = torch.randn(tokens, in_f, requires_grad=requires_grad)
    alpha, beta = torch.randn(7, requires_grad=requires_grad), torch.randn(6, requires_grad=requires_grad)
    a0 = torch.randn(rank, in_f, requires_grad=requires_grad) if offsets else None
    b0 = torch.randn(out_f, rank, requires_grad=requires_grad) if offsets else None
    return x, alpha, beta, a0, b0, 2**40, 3, rank, out_f, 0.5


@pytest.mark.skipif(not FUSED_BACKENDS, reason="no backend with fused kernels runs on the CPU here")
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("offsets", [False, True])
def test_opcheck_lowrank(backend, offsets):
    for requires_grad in (False, True):
        arguments = (*_lowrank_arguments(offsets, requires_grad), "rademacher", backend)
        torch.library.opcheck(ops.lowrank_forward, arguments)
    x, alpha, beta, a0, b0, *constants = _lowrank_arguments(offsets, False)
    _, h = ops.lowrank_forward(x, alpha, beta, a0, b0, *constants, "uniform", backend)
    grad = torch.randn(x.shape[0], constants[3])
    torch.library.opcheck(ops.lowrank_backward, (grad, x, h, alpha, beta, a0, b0, *constants, "uniform", backend))


# aot_eager checks tracing and the fake implementations; inductor also compiles (about 30 s on CPU).
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph_forward_and_backward(backend, compiler):
    x = torch.randn(3, 8, 20)
    alpha, beta = torch.randn(16), torch.randn(24)
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
