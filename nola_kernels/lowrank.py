"""The low-rank product shared by nola_matmul and the naive baselines, so all compute alike, and
the named objects that describe one product below the op schema."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .official_rng import parse_official


@dataclass(frozen=True)
class LowRankSpec:
    """The constants of one NOLA delta: A = a0 + mix(alpha, seed_a) (rank x in) and
    B = b0 + mix(beta, seed_b) (out_features x rank), both basis stream 0 with scales 1/sqrt(k)
    and 1/sqrt(l); delta = scaling * (x A^T) B^T. The torch.library schemas take these as flat
    scalars (`schema_args`, in field order); everything below the ops takes the object."""

    seed_a: int
    seed_b: int
    rank: int
    out_features: int
    scaling: float
    distribution: str

    def schema_args(self):
        return (self.seed_a, self.seed_b, self.rank, self.out_features, self.scaling, self.distribution)


@dataclass(frozen=True)
class LowRankShape:
    """The sizes of one product, as the routing (`prefers_fused`) and the performance model see it."""

    tokens: int
    in_features: int
    out_features: int
    rank: int
    k: int
    l: int  # noqa: E741 (NOLA's name for B's basis size)
    dtype: torch.dtype
    distribution: str = "uniform"
    # The product adds into a layer's output (nola_matmul's add_to), which the composed path
    # does inside its last GEMM and the fused path after its op.
    adds: bool = False


def default_scale(k):
    """A basis of k matrices is mixed with scale 1/sqrt(k) unless told otherwise (docs/spec.md)."""
    return 1.0 / math.sqrt(k)


def with_offset(mixed, offset):
    """A factor: the mixed basis plus its optional fixed offset (a0 or b0)."""
    return mixed if offset is None else mixed + offset


def factors(mix, in_features, alpha, beta, a0, b0, spec):
    """(A, scaling * B) in float32 from `mix`, called as a backend's mix (coeffs, seed, stream,
    rows, cols, scale, distribution). scaling multiplies B (out x rank, small) before the
    products, as the reference does; as addmm's alpha it would turn an infinite scaling's
    inf/NaN pattern into another."""
    a = mix(alpha, spec.seed_a, 0, spec.rank, in_features, default_scale(alpha.numel()), spec.distribution)
    b = mix(beta, spec.seed_b, 0, spec.out_features, spec.rank, default_scale(beta.numel()), spec.distribution)
    return with_offset(a, a0), with_offset(b, b0) * spec.scaling


@dataclass(frozen=True)
class ComposedProducts:
    """The fused ops' contract (nola_kernels/ops.py: lowrank_forward, lowrank_backward) met by a
    backend's `mix` and `project` kernels and torch's matmul, with the composed path's products
    (lowrank_delta) and the gradients autograd takes through them: the factors and their
    gradients in float32, the products in x's dtype, the coefficient gradients by `project`
    (called as a backend's project: grad, seed, stream, k, scale, distribution)."""

    mix: Callable
    project: Callable

    def forward(self, x, alpha, beta, a0, b0, spec):
        """(delta, h): h = x A^T as float32 (tokens, rank), delta = h (scaling B)^T in x's dtype."""
        a, b = factors(self.mix, x.shape[-1], alpha, beta, a0, b0, spec)
        h = x @ a.to(x.dtype).T
        return h @ b.to(h.dtype).T, h.float()

    def backward(self, grad, x, h, alpha, beta, a0, b0, spec):
        """(grad_x, grad_alpha, grad_beta, grad_a, grad_b) of forward: grad_a and grad_b are the
        gradients of the factors A and B (float32), those of a0 and b0 too."""
        a, b = factors(self.mix, x.shape[-1], alpha, beta, a0, b0, spec)
        dtype = x.dtype
        grad, h = grad.to(dtype), h.to(dtype)
        grad_h = grad @ b.to(dtype)
        grad_b = (grad.T @ h).float() * spec.scaling
        grad_a = (grad_h.T @ x).float()
        grad_x = grad_h @ a.to(dtype)
        grad_alpha = self.project(grad_a, spec.seed_a, 0, alpha.numel(), default_scale(alpha.numel()), spec.distribution)
        grad_beta = self.project(grad_b, spec.seed_b, 0, beta.numel(), default_scale(beta.numel()), spec.distribution)
        return grad_x, grad_alpha, grad_beta, grad_a, grad_b


def composed_for_official(forward, backward, mix, project):
    """A backend's (lowrank_forward, lowrank_backward): its fused `forward` and `backward` for the
    NOLA-Philox distributions and, for the official CUDA layout families, whose layout the fused
    kernels do not generate, ComposedProducts of its `mix` and `project`."""
    composed = ComposedProducts(mix, project)

    def routed(fused, composed_op):
        def op(*args):
            spec = args[-1]
            return (fused if parse_official(spec.distribution) is None else composed_op)(*args)

        return op

    return routed(forward, composed.forward), routed(backward, composed.backward)


def lowrank_delta(x, a, b, add_to=None):
    """(x a^T) b^T with both factors cast to x's dtype: two skinny products, so autograd saves
    only x, the small factors and x a^T. With `add_to` (..., out) in the product's dtype, returns
    add_to + delta with the add done by the second GEMM (addmm's beta = 1), which saves a pass over
    the output; any other add_to is added after."""
    h = x @ a.to(x.dtype).T
    b = b.to(h.dtype)
    if add_to is None:
        return h @ b.T
    if add_to.shape != (*h.shape[:-1], b.shape[0]) or add_to.dtype != _product_dtype(h):
        return add_to + h @ b.T
    flat = torch.addmm(add_to.reshape(-1, b.shape[0]), h.reshape(-1, h.shape[-1]), b.T)
    return flat.view(add_to.shape)


def _product_dtype(h):
    """The dtype torch's matmul returns for h: autocast's where it is on."""
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return h.dtype
