"""The public API. Each function validates its arguments, resolves the backend, then calls the
torch.library ops (nola_kernels/ops.py), which carry the autograd."""

import torch

from . import ops
from .backends import get_backend, resolve_family_backend
from .basis import chunk_budget
from .dtypes import COEFF_DTYPES
from .families import family_block, family_blocks
from .lowrank import LowRankSpec, default_scale
from .routing import runs_fused
from .validation import (
    check_basis_count,
    check_coeffs,
    check_device,
    check_family,
    check_float_tensor,
    check_int,
    check_offset,
    check_real,
    check_same_device,
    check_seed,
    check_shape,
)


def nola_basis(seed, k, shape, *, stream=0, distribution="uniform", device=None):
    """Materialize basis matrices 0..k-1 of family (seed, stream) as a (k, R, C) float32 tensor
    (unscaled: the ops' scale multiplies these entries). For tests, inspection and compatibility
    only: nothing else holds the whole basis."""
    k = check_basis_count(k)
    rows, cols = check_shape("shape", shape)
    seed, stream, distribution = check_family(seed, stream, distribution, k, rows * cols)
    numel = rows * cols
    out = torch.empty(k, numel, dtype=torch.float32, device=check_device(device))
    for i0, i1, n0, n1 in family_blocks(k, numel, distribution, chunk_budget(out.device)):
        out[i0:i1, n0:n1] = family_block(seed, stream, k, numel, i0, i1, n0, n1, distribution, out.device)
    return out.view(k, rows, cols)


def _mix_scale(scale, k):
    return default_scale(k) if scale is None else check_real("scale", scale)


def nola_mix(coeffs, seed, shape, *, scale=None, stream=0, distribution="uniform", backend="auto"):
    """scale * sum_i coeffs[i] * U_i as an (R, C) tensor, scale defaulting to 1/sqrt(len(coeffs)).
    float32 (float64 for float64 coeffs); differentiable in coeffs; never materializes the basis."""
    check_coeffs("coeffs", coeffs)
    rows, cols = check_shape("shape", shape)
    seed, stream, distribution = check_family(seed, stream, distribution, coeffs.numel(), rows * cols)
    scale = _mix_scale(scale, coeffs.numel())
    backend = resolve_family_backend(backend, coeffs.device, "mix", distribution)
    return ops.mix(coeffs, seed, stream, rows, cols, scale, distribution, backend)


def nola_project(grad, seed, k, *, scale=None, stream=0, distribution="uniform", backend="auto"):
    """The adjoint of nola_mix: out[i] = scale * <grad, U_i> for i < k, scale defaulting to
    1/sqrt(k). A (k,) float32 tensor (float64 for float64 grad); differentiable in grad."""
    check_float_tensor("grad", grad)
    if grad.dim() != 2:
        raise ValueError(f"grad must be 2-D (rows, cols), got shape {tuple(grad.shape)}")
    check_shape("grad.shape", grad.shape)
    k = check_basis_count(k)
    seed, stream, distribution = check_family(seed, stream, distribution, k, grad.numel())
    scale = _mix_scale(scale, k)
    backend = resolve_family_backend(backend, grad.device, "project", distribution)
    return ops.project(grad, seed, stream, k, scale, distribution, backend)


def nola_mix_grouped(coeffs, seed, shape, *, scale=None, stream=0, distribution="uniform", backend="auto"):
    """Row g of the (G, R, C) result is nola_mix(coeffs[g], seed, shape, ...) for (G, k) coeffs:
    G matrices mixed from one family, scale defaulting to 1/sqrt(k). float32 (float64 for
    float64 coeffs); differentiable in coeffs; each basis entry is generated once for all rows."""
    check_float_tensor("coeffs", coeffs, COEFF_DTYPES)
    _check_groups("coeffs", coeffs, ("G", "k"))
    check_coeffs("coeffs[0]", coeffs[0])
    rows, cols = check_shape("shape", shape)
    seed, stream, distribution = check_family(seed, stream, distribution, coeffs.shape[1], rows * cols)
    scale = _mix_scale(scale, coeffs.shape[1])
    backend = resolve_family_backend(backend, coeffs.device, "mix_grouped", distribution)
    return ops.mix_grouped(coeffs, seed, stream, rows, cols, scale, distribution, backend)


def nola_project_grouped(grads, seed, k, *, scale=None, stream=0, distribution="uniform", backend="auto"):
    """Row g of the (G, k) result is nola_project(grads[g], seed, k, ...) for (G, R, C) grads: the
    adjoint of nola_mix_grouped. float32 (float64 for float64 grads); differentiable in grads."""
    check_float_tensor("grads", grads)
    _check_groups("grads", grads, ("G", "rows", "cols"))
    if 0 in grads.shape[1:]:
        raise ValueError(f"grads must have rows >= 1 and cols >= 1, got shape {tuple(grads.shape)}")
    check_shape("grads.shape[1:]", grads.shape[1:])
    k = check_basis_count(k)
    seed, stream, distribution = check_family(seed, stream, distribution, k, grads[0].numel())
    scale = _mix_scale(scale, k)
    backend = resolve_family_backend(backend, grads.device, "project_grouped", distribution)
    return ops.project_grouped(grads, seed, stream, k, scale, distribution, backend)


def _check_groups(name, tensor, dims):
    """A grouped operand: one dimension per name in `dims`, the first (G) at least 1."""
    if tensor.dim() != len(dims):
        raise ValueError(f"{name} must be {len(dims)}-D ({', '.join(dims)}), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row (G >= 1), got shape {tuple(tensor.shape)}")


def nola_matmul(
    x,
    alpha,
    beta,
    *,
    seed_a,
    seed_b,
    rank,
    out_features,
    scaling=1.0,
    a0=None,
    b0=None,
    distribution="uniform",
    backend="auto",
    add_to=None,
):
    """delta(x) = scaling * (x A^T) B^T with A = a0 + mix(alpha) (rank x in) and
    B = b0 + mix(beta) (out x rank); returns (..., out_features) in x.dtype, or add_to + delta
    when `add_to` (a layer's base output, (..., out_features)) is given: the composed path then
    adds it inside the last GEMM. Differentiable in x, alpha, beta, a0, b0 and add_to."""
    check_float_tensor("x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have shape (..., in_features) with in_features >= 1, got {tuple(x.shape)}")
    check_coeffs("alpha", alpha)
    check_coeffs("beta", beta)
    rank = check_int("rank", rank, 1)
    out_features = check_int("out_features", out_features, 1)
    in_features = a0.shape[-1] if isinstance(a0, torch.Tensor) and a0.dim() == 2 else x.shape[-1]
    if x.shape[-1] != in_features:
        raise ValueError(
            f"x must have last dimension in_features = {in_features} (from a0), got {x.shape[-1]}"
        )
    a_shape = check_shape("(rank, in_features)", (rank, in_features))
    b_shape = check_shape("(out_features, rank)", (out_features, rank))
    check_offset("a0", a0, a_shape)
    check_offset("b0", b0, b_shape)
    check_same_device(x=x, alpha=alpha, beta=beta, a0=a0, b0=b0)
    seed_a, seed_b = check_seed("seed_a", seed_a), check_seed("seed_b", seed_b)
    scaling = check_real("scaling", scaling)
    _, _, distribution = check_family(seed_a, 0, distribution, alpha.numel(), a_shape[0] * a_shape[1], "A's basis (alpha)")
    check_family(seed_b, 0, distribution, beta.numel(), b_shape[0] * b_shape[1], "B's basis (beta)")
    backend = resolve_family_backend(backend, x.device, "nola_matmul", distribution)
    _check_add_to(add_to, x, out_features)

    spec = LowRankSpec(seed_a, seed_b, rank, out_features, scaling, distribution)
    if not runs_fused(get_backend(backend), x, alpha, beta, a0, b0, spec, adds=add_to is not None):
        return ops.composed_delta(x, alpha, beta, a0, b0, spec, backend, add_to)
    flat = _autocast_operand(x).reshape(-1, in_features).contiguous()
    delta, _ = ops.lowrank_forward(flat, alpha, beta, a0, b0, *spec.schema_args(), backend)
    delta = delta.view(*x.shape[:-1], out_features)
    return delta if add_to is None else add_to + delta


def _check_add_to(add_to, x, out_features):
    if add_to is None:
        return
    check_float_tensor("add_to", add_to)
    expected = (*x.shape[:-1], out_features)
    if tuple(add_to.shape) != expected:
        raise ValueError(f"add_to must have shape {expected} (x's leading dimensions, out_features), got {tuple(add_to.shape)}")
    check_same_device(x=x, add_to=add_to)


def _autocast_operand(x):
    """x as autocast would cast a matmul's operand, which it does not do for the fused op: so that
    the fused path returns the composed path's dtype. alpha and beta stay as they are, as the
    composed path's mix keeps them."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return x.to(torch.get_autocast_dtype(device_type))
    return x
