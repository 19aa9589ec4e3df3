"""nola_mix and nola_project as Triton kernels: the flat positions of the (rows, cols) matrix are
cut into blocks and the basis indices into splits; each program generates its block of U_i for
its split of i once, in registers, and never writes the basis."""

import torch
import triton
import triton.language as tl

from .launch import BLOCK_I, SPLIT_TARGET_PROGRAMS, ceil_div, flat_block, seed_words
from .philox_tiles import basis_block, mixed_tile


@triton.jit
def _mix_kernel(
    coeffs_ptr, out_ptr, numel, k, per_split, scale, seed, stream_lo, stream_hi,
    BLOCK: tl.constexpr, BLOCK_I: tl.constexpr, RADEMACHER: tl.constexpr, ROUNDS: tl.constexpr,
):  # fmt: skip
    """out[split, n] = scale * sum over the split's i of coeffs[i] * U_i[n], for the block of n."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    split = tl.program_id(1)
    positions = start + tl.arange(0, BLOCK)[None, :]
    valid = positions < numel
    i_start = split * per_split
    i_stop = tl.minimum(i_start + per_split, k)
    row_start = tl.zeros((1,), tl.int64) + start
    mixed = mixed_tile(
        coeffs_ptr, i_start, i_stop, scale, seed, stream_lo, stream_hi, row_start, valid, 0.0, out_ptr,
        BLOCK, BLOCK_I, RADEMACHER, True, ROUNDS, False,
    )  # fmt: skip
    tl.store(out_ptr + split.to(tl.int64) * numel + positions, mixed, mask=valid)


@triton.jit
def _project_kernel(
    grad_ptr, partial_ptr, numel, k, per_split, seed, stream_lo, stream_hi,
    BLOCK: tl.constexpr, BLOCK_I: tl.constexpr, RADEMACHER: tl.constexpr, ROUNDS: tl.constexpr,
):  # fmt: skip
    """partial[block, i] = <grad, U_i> over the block's positions, for the split's i."""
    block = tl.program_id(0)
    start = block.to(tl.int64) * BLOCK
    positions = start + tl.arange(0, BLOCK)[None, :]
    grad = tl.load(grad_ptr + positions, mask=positions < numel, other=0.0).to(tl.float32)
    i_start = tl.program_id(1) * per_split
    i_stop = tl.minimum(i_start + per_split, k)
    row_start = tl.zeros((1,), tl.int64) + start
    for first in range(i_start, i_stop, BLOCK_I):
        indices = first + tl.arange(0, BLOCK_I)
        u = basis_block(seed, stream_lo, stream_hi, indices, row_start, BLOCK, RADEMACHER, True, ROUNDS)
        projected = tl.sum(tl.sum(u * grad[None, :, :], axis=2), axis=1)
        tl.store(partial_ptr + block.to(tl.int64) * k + indices, projected, mask=indices < i_stop)


def _splits(blocks, k):
    """(splits, indices per split): enough programs for the grid, each split whole BLOCK_I steps."""
    splits = min(k, max(1, ceil_div(SPLIT_TARGET_PROGRAMS, blocks)))
    per_split = ceil_div(ceil_div(k, splits), BLOCK_I) * BLOCK_I
    return ceil_div(k, per_split), per_split


def mix(coeffs, seed, stream, rows, cols, scale, distribution, rounds):
    """scale * sum_i coeffs[i] * U_i as (rows, cols) float32; coeffs: float32 (k,)."""
    numel, k = rows * cols, coeffs.numel()
    block = flat_block(numel)
    blocks = ceil_div(numel, block)
    splits, per_split = _splits(blocks, k)
    # Poisoned, so a position no program wrote shows as NaN.
    partial = torch.full((splits, numel), float("nan"), dtype=torch.float32, device=coeffs.device)
    _mix_kernel[(blocks, splits)](
        coeffs.contiguous(), partial, numel, k, per_split, scale, *seed_words(seed, stream),
        BLOCK=block, BLOCK_I=BLOCK_I, RADEMACHER=distribution == "rademacher", ROUNDS=rounds,
    )  # fmt: skip
    return (partial[0] if splits == 1 else partial.sum(0)).view(rows, cols)


def project(grad, seed, stream, k, scale, distribution, rounds):
    """scale * <grad, U_i> for i < k as a (k,) float32 tensor; grad: any float dtype but float64."""
    flat = grad.reshape(-1).contiguous()
    numel = flat.numel()
    block = flat_block(numel)
    blocks = ceil_div(numel, block)
    _, per_split = _splits(blocks, k)
    partial = torch.full((blocks, k), float("nan"), dtype=torch.float32, device=grad.device)
    _project_kernel[(blocks, ceil_div(k, per_split))](
        flat, partial, numel, k, per_split, *seed_words(seed, stream),
        BLOCK=block, BLOCK_I=BLOCK_I, RADEMACHER=distribution == "rademacher", ROUNDS=rounds,
    )  # fmt: skip
    return partial.sum(0).mul_(scale)
