"""Naive baselines that materialize the whole k x R x C basis, the way the official NOLA code does.
Tests compare every backend against `naive_matmul` in float64; benchmarks time both.

- `naive_matmul`: the NOLA-Philox basis (nola_basis), then einsum; plain autograd keeps the
  basis alive between forward and backward.
- `official_matmul`: the official code's generator and cost: torch's own RNG seeded with the seed,
  `uniform_(-1, 1)` over the whole basis in forward and again in backward. Other numbers than the
  contract (and other numbers on every GPU model), the same work a NOLA user pays for today.
"""

import math

import torch

from .api import nola_basis
from .lowrank import lowrank_delta, with_offset
from .official_rng import GENERATOR, official_basis


def naive_matmul(
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
):
    """nola_matmul's math with the whole basis materialized; computes in the inputs' dtypes."""
    in_features = x.shape[-1]
    basis_a = nola_basis(
        seed_a, alpha.numel(), (rank, in_features), distribution=distribution, device=x.device
    )
    basis_b = nola_basis(
        seed_b, beta.numel(), (out_features, rank), distribution=distribution, device=x.device
    )
    a = with_offset(_mix_materialized(alpha, basis_a), a0)
    b = with_offset(_mix_materialized(beta, basis_b), b0) * scaling
    return lowrank_delta(x, a, b)


def _mix_materialized(coeffs, basis):
    return torch.einsum("k,krc->rc", coeffs, basis.to(coeffs.dtype)) / math.sqrt(coeffs.numel())


class _OfficialMix(torch.autograd.Function):
    """The official NOLA generation: seed a torch generator, draw the whole (k, R, C) basis with
    uniform_(-1, 1), scale by 1/sqrt(k), einsum; the backward draws it all again (its einsum
    also copies the basis once, as the official backward's permuted copy does). The generator is
    a private one instead of the official torch.manual_seed: the same stream and cost, without
    clobbering the caller's global RNG."""

    @staticmethod
    def forward(ctx, coeffs, seed, shape):
        ctx.seed, ctx.k, ctx.shape = seed, coeffs.numel(), shape
        basis = official_basis(seed, ctx.k, shape, layout=GENERATOR, device=coeffs.device, dtype=coeffs.dtype)
        return torch.einsum("k,krc->rc", coeffs, basis)

    @staticmethod
    def backward(ctx, grad):
        basis = official_basis(ctx.seed, ctx.k, ctx.shape, layout=GENERATOR, device=grad.device, dtype=grad.dtype)
        return torch.einsum("krc,rc->k", basis, grad), None, None


def official_matmul(x, alpha, beta, *, seed_a, seed_b, rank, out_features, scaling=1.0, a0=None, b0=None):
    """The official code's NOLA delta: bases from torch's RNG (not the NOLA-Philox contract)."""
    a = with_offset(_OfficialMix.apply(alpha, seed_a, (rank, x.shape[-1])), a0)
    b = with_offset(_OfficialMix.apply(beta, seed_b, (out_features, rank)), b0) * scaling
    return lowrank_delta(x, a, b)
