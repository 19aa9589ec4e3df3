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
