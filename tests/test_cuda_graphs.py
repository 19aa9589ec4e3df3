"""nola_matmul's forward and backward captured in a CUDA graph and replayed: nothing in a call
tunes, allocates outside the graph's pool or synchronizes, and every reduction has a fixed order,
so each replay gives the eager call's bits. GPU only."""

import pytest
import torch

from nola_kernels import nola_matmul

pytestmark = pytest.mark.gpu


def _inputs():
    generator = torch.Generator(device="cuda").manual_seed(7)
    x = torch.randn(3, 64, 256, device="cuda", generator=generator)
    leaves = dict(
        alpha=torch.randn(96, device="cuda", generator=generator),
        beta=torch.randn(80, device="cuda", generator=generator),
    )
    grad_out = torch.randn(3, 64, 192, device="cuda", generator=generator)
    return x, leaves, grad_out


def _step(x, leaves, grad_out, backend):
    params = {name: t.detach().requires_grad_() for name, t in leaves.items()}
    out = nola_matmul(
        x, **params, seed_a=2**40 + 1, seed_b=5, rank=8, out_features=192, scaling=0.5, backend=backend
    )
    grads = torch.autograd.grad(out, list(params.values()), grad_out)
    return [out.detach(), *grads]


def test_forward_backward_replays_bit_identically(gpu_backend):
    x, leaves, grad_out = _inputs()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compiles and caches every kernel before capture
        eager = _step(x, leaves, grad_out, gpu_backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _step(x, leaves, grad_out, gpu_backend)
    for _ in range(2):
        for t in captured:
            t.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for name, got, want in zip(["out", *leaves], captured, eager, strict=True):
            assert torch.equal(got, want), name
