"""The torch.library ops and their autograd: the one layer shared by every backend.

`nola_kernels::mix` and `nola_kernels::project` are adjoint linear maps between coefficients and
a matrix, so each one's backward is the other: gradients regenerate the basis instead of saving
it. Their grouped forms, `mix_grouped` and `project_grouped` (G rows over one family), are
adjoint in the same way. Each op takes a resolved backend name and hands the work to that
backend's module; float64 work goes to the PyTorch backend (the dtype rule,
nola_kernels/dtypes.py). The low-rank ops' schemas take the LowRankSpec's fields as flat
scalars; backends receive the LowRankSpec.
"""

import torch

from .backends import get_backend
from .dtypes import accumulation_dtype
from .lowrank import LowRankSpec, factors, lowrank_delta


def _backend_for(tensor, backend):
    return get_backend("torch" if accumulation_dtype(tensor) == torch.float64 else backend)


def _as_given(tensor):
    return tensor


def _grouped_operand(tensor):
    """The grouped ops' backend functions take contiguous float32 operands ("torch" takes
    float64 too, and float64 work goes there)."""
    return tensor.to(accumulation_dtype(tensor)).contiguous()


def _mix_op(name, operand):
    """nola_kernels::<name>, run by the backend function of that name on operand(coeffs)."""

    @torch.library.custom_op(f"nola_kernels::{name}", mutates_args=())
    def op(
        coeffs: torch.Tensor,
        seed: int,
        stream: int,
        rows: int,
        cols: int,
        scale: float,
        distribution: str,
        backend: str,
    ) -> torch.Tensor:
        kernel = getattr(_backend_for(coeffs, backend), name)
        return kernel(operand(coeffs), seed, stream, rows, cols, scale, distribution)

    return op


def _project_op(name, operand):
    """nola_kernels::<name>, run by the backend function of that name on operand(grad)."""

    @torch.library.custom_op(f"nola_kernels::{name}", mutates_args=())
    def op(
        grad: torch.Tensor, seed: int, stream: int, k: int, scale: float, distribution: str, backend: str
    ) -> torch.Tensor:
        return getattr(_backend_for(grad, backend), name)(operand(grad), seed, stream, k, scale, distribution)

    return op


mix = _mix_op("mix", _as_given)
project = _project_op("project", _as_given)
# G rows of mix (or project) over one family, each generated basis entry used by all rows.
mix_grouped = _mix_op("mix_grouped", _grouped_operand)
project_grouped = _project_op("project_grouped", _grouped_operand)


# The fakes and the autograd serve both forms: the leading dimension G, where there is one, passes
# through (coeffs (..., k) <-> matrices (..., rows, cols)).
def _mix_fake(coeffs, seed, stream, rows, cols, scale, distribution, backend):
    return coeffs.new_empty((*coeffs.shape[:-1], rows, cols), dtype=accumulation_dtype(coeffs))


def _project_fake(grad, seed, stream, k, scale, distribution, backend):
    return grad.new_empty((*grad.shape[:-2], k), dtype=accumulation_dtype(grad))


def _register_adjoints(mix_op, project_op):
    """Each op's backward is the other op, so gradients of any order regenerate the basis."""

    def setup_mix(ctx, inputs, output):
        coeffs, ctx.seed, ctx.stream, _, _, ctx.scale, ctx.distribution, ctx.backend = inputs
        ctx.k, ctx.coeffs_dtype = coeffs.shape[-1], coeffs.dtype

    def mix_backward(ctx, grad):
        grad_coeffs = project_op(grad, ctx.seed, ctx.stream, ctx.k, ctx.scale, ctx.distribution, ctx.backend)
        return grad_coeffs.to(ctx.coeffs_dtype), None, None, None, None, None, None, None

    def setup_project(ctx, inputs, output):
        grad_in, ctx.seed, ctx.stream, _, ctx.scale, ctx.distribution, ctx.backend = inputs
        ctx.shape, ctx.grad_dtype = grad_in.shape, grad_in.dtype

    def project_backward(ctx, grad):
        rows, cols = ctx.shape[-2:]
        grad_in = mix_op(grad, ctx.seed, ctx.stream, rows, cols, ctx.scale, ctx.distribution, ctx.backend)
        return grad_in.to(ctx.grad_dtype), None, None, None, None, None, None

    mix_op.register_fake(_mix_fake)
    project_op.register_fake(_project_fake)
    mix_op.register_autograd(mix_backward, setup_context=setup_mix)
    project_op.register_autograd(project_backward, setup_context=setup_project)


_register_adjoints(mix, project)
_register_adjoints(mix_grouped, project_grouped)


def composed_delta(x, alpha, beta, a0, b0, spec, backend, add_to=None):
    """The composed path: A and B from two mix ops, then torch's matmuls (lowrank_delta), every
    step differentiable to any order."""

    def mix_op(*args):
        return mix(*args, backend)

    return lowrank_delta(x, *factors(mix_op, x.shape[-1], alpha, beta, a0, b0, spec), add_to)


# The fused low-rank product, for backends with fused kernels. x: (tokens, in) contiguous,
# float16/bfloat16/float32 (float64 takes the composed path); alpha (k,), beta (l,) float32.
# Returns delta = scaling * h B^T in x's dtype and h = x A^T in float32, which the backward reuses.
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
    spec = LowRankSpec(seed_a, seed_b, rank, out_features, scaling, distribution)
    return get_backend(backend).lowrank_forward(x, alpha, beta, a0, b0, spec)


@lowrank_forward.register_fake
def _(x, alpha, beta, a0, b0, *constants):
    spec = LowRankSpec(*constants[:-1])
    tokens = x.shape[0]
    return x.new_empty((tokens, spec.out_features)), x.new_empty((tokens, spec.rank), dtype=torch.float32)


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
    spec = LowRankSpec(seed_a, seed_b, rank, out_features, scaling, distribution)
    return get_backend(backend).lowrank_backward(grad, x, h, alpha, beta, a0, b0, spec)


@lowrank_backward.register_fake
def _(grad, x, h, alpha, beta, a0, b0, *constants):
    spec = LowRankSpec(*constants[:-1])

    def float32(*shape):
        return x.new_empty(shape, dtype=torch.float32)

    return (
        torch.empty_like(x),
        float32(alpha.numel()),
        float32(beta.numel()),
        float32(spec.rank, x.shape[1]),
        float32(spec.out_features, spec.rank),
    )


def _setup_lowrank(ctx, inputs, output):
    x, alpha, beta, a0, b0, *constants, ctx.backend = inputs
    ctx.spec = LowRankSpec(*constants)
    ctx.save_for_backward(x, output[1], alpha, beta, a0, b0)
    ctx.mark_non_differentiable(output[1])


_NO_CONSTANT_GRADS = (None,) * (len(LowRankSpec.__dataclass_fields__) + 1)  # and the backend


def _lowrank_backward(ctx, grad_delta, _grad_h):
    x, h, alpha, beta, a0, b0 = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
        return (*_composed_gradients(ctx, grad_delta, (x, alpha, beta, a0, b0)), *_NO_CONSTANT_GRADS)
    grad_x, grad_alpha, grad_beta, grad_a, grad_b = lowrank_backward(
        grad_delta.contiguous(), x, h, alpha, beta, a0, b0, *ctx.spec.schema_args(), ctx.backend
    )
    grad_a0 = None if a0 is None else grad_a.to(a0.dtype)
    grad_b0 = None if b0 is None else grad_b.to(b0.dtype)
    return (grad_x, grad_alpha, grad_beta, grad_a0, grad_b0, *_NO_CONSTANT_GRADS)


def _composed_gradients(ctx, grad_delta, inputs):
    """The gradients of the same delta through the composed ops, whose backward is itself
    differentiable (mix and project are each other's), as a graph for double backward."""
    needed = ctx.needs_input_grad[: len(inputs)]
    wanted = [t for t, need in zip(inputs, needed, strict=True) if need]
    delta = composed_delta(*inputs, ctx.spec, ctx.backend)
    grads = iter(torch.autograd.grad(delta, wanted, grad_delta, create_graph=True))
    return [next(grads) if need else None for need in needed]


torch.library.register_autograd(
    "nola_kernels::lowrank_forward", _lowrank_backward, setup_context=_setup_lowrank
)
