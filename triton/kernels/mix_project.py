"""nola_mix and nola_project as Triton kernels: the flat positions of the (rows, cols) matrix are
cut into blocks and the basis indices into splits; each program generates its block of U_i for
its split of i once, in registers, and never writes the basis."""

import torch
import triton
import triton.language as tl

from .launch import BLOCK_I, SPLIT_TARGET_PROGRAMS, ceil_div, flat_block, on_device, seed_words
from .philox_tiles import basis_block, mixed_tile


@triton.jit
def _mix_kernel(
    coeffs_ptr, out_ptr, numel, k, per_split, scale, seed, stream_lo, stream_hi,
    BLOCK: tl.constexpr, BLOCK_I: tl.constexpr, RADEMACHER: tl.constexpr, ROUNDS: tl.constexpr,
):  # fmt: skip
    """out[split, n] = scale * sum over the split's i of coeffs[i] * U_i[n], for the block of n."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    split = tl.program_id(1).to(tl.int64)  # split * per_split passes 2^31 for k up to 2^32
    positions = start + tl.arange(0, BLOCK)[None, :]
    valid = positions < numel
    i_start = split * per_split
    i_stop = tl.minimum(i_start + per_split, k)
    row_start = tl.zeros((1,), tl.int64) + start
    mixed = mixed_tile(
        coeffs_ptr, i_start, i_stop, scale, seed, stream_lo, stream_hi, row_start, valid, 0.0, out_ptr,
        BLOCK, BLOCK_I, RADEMACHER, True, ROUNDS, False,
    )  # fmt: skip
    tl.store(out_ptr + split * numel + positions, mixed, mask=valid)


@triton.jit
def _project_kernel(
    grad_ptr, partial_ptr, numel, k, per_split, blocks_per_group, seed, stream_lo, stream_hi,
    BLOCK: tl.constexpr, BLOCK_I: tl.constexpr, RADEMACHER: tl.constexpr, ROUNDS: tl.constexpr,
):  # fmt: skip
    """partial[group, i] = <grad, U_i> over the positions of the group's blocks, for the split's i,
    the blocks summed in order."""
    group = tl.program_id(0).to(tl.int64)
    first_block = group * blocks_per_group
    stop_block = tl.minimum(first_block + blocks_per_group, tl.cdiv(numel, BLOCK))
    i_start = tl.program_id(1).to(tl.int64) * per_split
    i_stop = tl.minimum(i_start + per_split, k)
    for first in range(i_start, i_stop, BLOCK_I):
        indices = first + tl.arange(0, BLOCK_I)
        projected = tl.zeros((BLOCK_I,), tl.float32)
        for block in range(first_block, stop_block):
            start = block * BLOCK
            positions = start + tl.arange(0, BLOCK)[None, :]
            grad = tl.load(grad_ptr + positions, mask=positions < numel, other=0.0).to(tl.float32)
            row_start = tl.zeros((1,), tl.int64) + start
            u = basis_block(seed, stream_lo, stream_hi, indices, row_start, BLOCK, RADEMACHER, True, ROUNDS)
            projected += tl.sum(tl.sum(u * grad[None, :, :], axis=2), axis=1)
        tl.store(partial_ptr + group * k + indices, projected, mask=indices < i_stop)


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
    with on_device(coeffs):
        _mix_kernel[(blocks, splits)](
            coeffs.contiguous(), partial, numel, k, per_split, scale, *seed_words(seed, stream),
            BLOCK=block, BLOCK_I=BLOCK_I, RADEMACHER=distribution == "rademacher", ROUNDS=rounds,
        )  # fmt: skip
        return (partial[0] if splits == 1 else partial.sum(0)).view(rows, cols)


# Bound on the project partials (position groups x k float32): 16 MiB. Past it each program sums
# several position blocks, rather than the partials growing with the gradient.
PROJECT_PARTIAL_ENTRIES = 1 << 22


def project_grid(numel, k):
    """(block, groups, blocks per group, splits, indices per split) of a projection: the position
    blocks in groups of whole blocks, at most PROJECT_PARTIAL_ENTRIES // k groups."""
    block = flat_block(numel)
    blocks = ceil_div(numel, block)
    blocks_per_group = ceil_div(blocks, max(1, PROJECT_PARTIAL_ENTRIES // k))
    groups = ceil_div(blocks, blocks_per_group)
    splits, per_split = _splits(groups, k)
    return block, groups, blocks_per_group, splits, per_split


def project(grad, seed, stream, k, scale, distribution, rounds):
    """scale * <grad, U_i> for i < k as a (k,) float32 tensor; grad: any float dtype but float64."""
    flat = grad.reshape(-1).contiguous()
    numel = flat.numel()
    block, groups, blocks_per_group, splits, per_split = project_grid(numel, k)
    partial = torch.full((groups, k), float("nan"), dtype=torch.float32, device=grad.device)
    with on_device(grad):
        _project_kernel[(groups, splits)](
            flat, partial, numel, k, per_split, blocks_per_group, *seed_words(seed, stream),
            BLOCK=block, BLOCK_I=BLOCK_I, RADEMACHER=distribution == "rademacher", ROUNDS=rounds,
        )  # fmt: skip
        return partial.sum(0).mul_(scale)
