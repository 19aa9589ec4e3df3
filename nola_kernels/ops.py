"""The torch.library ops and their autograd: the one layer shared by every backend.

`nola_kernels::mix` and `nola_kernels::project` are adjoint linear maps between coefficients and
a matrix, so each one's backward is the other: gradients regenerate the basis instead of saving
it. Each op takes a resolved backend name and hands the work to that backend's module.
"""

import torch

from .backends import get_backend
from .dtypes import accumulation_dtype


@torch.library.custom_op("nola_kernels::mix", mutates_args=())
def mix(
    coeffs: torch.Tensor,
    seed: int,
    stream: int,
    rows: int,
    cols: int,
    scale: float,
    distribution: str,
    backend: str,
) -> torch.Tensor:
    return get_backend(backend).mix(coeffs, seed, stream, rows, cols, scale, distribution)


@mix.register_fake
def _(coeffs, seed, stream, rows, cols, scale, distribution, backend):
    return coeffs.new_empty((rows, cols), dtype=accumulation_dtype(coeffs))


@torch.library.custom_op("nola_kernels::project", mutates_args=())
def project(
    grad: torch.Tensor, seed: int, stream: int, k: int, scale: float, distribution: str, backend: str
) -> torch.Tensor:
    return get_backend(backend).project(grad, seed, stream, k, scale, distribution)


@project.register_fake
def _(grad, seed, stream, k, scale, distribution, backend):
    return grad.new_empty((k,), dtype=accumulation_dtype(grad))


def _setup_mix(ctx, inputs, output):
    coeffs, ctx.seed, ctx.stream, _, _, ctx.scale, ctx.distribution, ctx.backend = inputs
    ctx.k, ctx.coeffs_dtype = coeffs.numel(), coeffs.dtype


def _mix_backward(ctx, grad):
    grad_coeffs = project(grad, ctx.seed, ctx.stream, ctx.k, ctx.scale, ctx.distribution, ctx.backend)
    return grad_coeffs.to(ctx.coeffs_dtype), None, None, None, None, None, None, None


def _setup_project(ctx, inputs, output):
    grad_in, ctx.seed, ctx.stream, _, ctx.scale, ctx.distribution, ctx.backend = inputs
    ctx.shape, ctx.grad_dtype = grad_in.shape, grad_in.dtype


def _project_backward(ctx, grad):
    rows, cols = ctx.shape
    grad_in = mix(grad, ctx.seed, ctx.stream, rows, cols, ctx.scale, ctx.distribution, ctx.backend)
    return grad_in.to(ctx.grad_dtype), None, None, None, None, None, None


torch.library.register_autograd("nola_kernels::mix", _mix_backward, setup_context=_setup_mix)
torch.library.register_autograd("nola_kernels::project", _project_backward, setup_context=_setup_project)


# The fused low-rank product, for backends with fused kernels. x: (tokens, in) contiguous,
# float16/bfloat16/float32 (float64 takes the composed path); alpha (k,), beta (l,) float32.
# A = a0 + mix(alpha, seed_a) (rank x in), B = b0 + mix(beta, seed_b) (out x rank), both stream 0
# with scales 1/sqrt(k) and 1/sqrt(l). Returns delta = scaling * h B^T in x's dtype and
# h = x A^T in float32, which the backward reuses.
@torch.library.custom_op("nola_kernels::lowrank_forward", mutates_args=())
def lowrank_forward(
    x: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    a0: torch.Tensor | None,
    b0: torch.Tensor | None,
    seed_a: int,
    seed_b: int,
    rank: int,
    out_features: int,
    scaling: float,
    distribution: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return get_backend(backend).lowrank_forward(
        x, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution
    )


@lowrank_forward.register_fake
def _(x, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution, backend):
    tokens = x.shape[0]
    return x.new_empty((tokens, out_features)), x.new_empty((tokens, rank), dtype=torch.float32)


# grad_b = scaling * grad^T h, grad_beta = project(grad_b), grad_h = scaling * grad B,
# grad_a = grad_h^T x, grad_alpha = project(grad_a), grad_x = grad_h A (x's dtype); the factor
# gradients (float32) are also those of the offsets a0 and b0.
@torch.library.custom_op("nola_kernels::lowrank_backward", mutates_args=())
def lowrank_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    h: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    a0: torch.Tensor | None,
    b0: torch.Tensor | None,
    seed_a: int,
    seed_b: int,
    rank: int,
    out_features: int,
    scaling: float,
    distribution: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return get_backend(backend).lowrank_backward(
        grad, x, h, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution
    )


@lowrank_backward.register_fake
def _(grad, x, h, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution, backend):
    def float32(*shape):
        return x.new_empty(shape, dtype=torch.float32)

    return (
        torch.empty_like(x),
        float32(alpha.numel()),
        float32(beta.numel()),
        float32(rank, x.shape[1]),
        float32(out_features, rank),
    )


def _setup_lowrank(ctx, inputs, output):
    x, alpha, beta, a0, b0, *ctx.constants = inputs
    ctx.save_for_backward(x, output[1], alpha, beta, a0, b0)
    ctx.mark_non_differentiable(output[1])


def _lowrank_backward(ctx, grad_delta, _grad_h):
    x, h, alpha, beta, a0, b0 = ctx.saved_tensors
    grad_x, grad_alpha, grad_beta, grad_a, grad_b = lowrank_backward(
        grad_delta.contiguous(), x, h, alpha, beta, a0, b0, *ctx.constants
    )
    grad_a0 = None if a0 is None else grad_a.to(a0.dtype)
    grad_b0 = None if b0 is None else grad_b.to(b0.dtype)
    return (grad_x, grad_alpha, grad_beta, grad_a0, grad_b0, *[None] * len(ctx.constants))


torch.library.register_autograd(
    "nola_kernels::lowrank_forward", _lowrank_backward, setup_context=_setup_lowrank
)
