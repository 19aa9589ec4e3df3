"""The pure-PyTorch backend: runs on any device PyTorch supports and never holds more of the basis
than one block (nola_kernels.chunk_budget(device) bytes of temporaries), whatever k is.

Its sums run in an order this module fixes (docs/spec.md, "Determinism"), so that mix and project
give the same bits whatever the chunk budget, the thread count or the device:

- mix: the basis indices of an entry are summed in blocks of BASIS_BLOCK consecutive indices, each
  block by `_fold`, and the block sums are added to the entry in increasing order;
- project: the positions of a coefficient are summed in blocks of POSITION_BLOCK consecutive
  positions, each block by `_fold`, and the block sums are folded in turn.

mix and project are the grouped ops at G = 1: the G rows of a grouped call run the same
elementwise steps side by side, so row g has the bits of the single call on that row.

Only elementwise multiplies and adds run (no matmul, no library reduction), and each rounds once
whatever the layout, so an entry is computed alike in any batch of blocks: the budget decides
only how many blocks are generated at once.
"""

import torch

from ..basis import chunk_budget
from ..dtypes import accumulation_dtype
from ..families import family_block, family_blocks

BASIS_BLOCK = 16
POSITION_BLOCK = 2048  # a multiple of 128, one Philox call's entries, so blocks cut no call
# Every op runs the official CUDA layout families too (nola_kernels/families.py).
OFFICIAL_OPS = ("mix", "project", "mix_grouped", "project_grouped")


def unavailable_reason(device):
    """The PyTorch path runs wherever PyTorch does."""
    return None


def _block(seed, stream, k, numel, i0, i1, n0, n1, distribution, device, dtype):
    return family_block(seed, stream, k, numel, i0, i1, n0, n1, distribution, device).to(dtype)


def _products(block, factors):
    """block * factors, with a leading dimension of G rows: in place for one row, so that a
    single call holds no more than the block, as the chunk budget counts."""
    block = block.unsqueeze(0)
    return block.mul_(factors) if factors.shape[0] == 1 else block * factors


def _fold(x, dim):
    """The sum of x along dim, in place: the upper half is added onto the lower half (the middle
    slice of an odd length waits) until one slice is left. The order depends on x.shape[dim] only."""
    length = x.shape[dim]
    while length > 1:
        half = (length + 1) // 2
        x.narrow(dim, 0, length - half).add_(x.narrow(dim, half, length - half))
        length = half
    return x.select(dim, 0)


def _block_sums(terms, size, dim):
    """The sums of consecutive blocks of `size` along dim (the last block may be shorter), each by
    _fold, stacked along dim. Destroys terms."""
    length = terms.shape[dim]
    full = length // size * size
    sums = []
    if full:
        sums.append(_fold(terms.narrow(dim, 0, full).unflatten(dim, (full // size, size)), dim + 1))
    if full < length:
        sums.append(_fold(terms.narrow(dim, full, length - full), dim).unsqueeze(dim))
    return sums[0] if len(sums) == 1 else torch.cat(sums, dim)


def no_work(groups, k, numel):
    """No rows, no basis matrix or no positions: each result is empty or a sum over nothing (0),
    given without a launch (and without the per-row budget, which G = 0 would divide by)."""
    return groups * k * numel == 0


def _group_budget(device, groups):
    """The chunk budget shared by the G rows of a grouped call: a block's products are G times
    its entries."""
    return max(chunk_budget(device) // groups, 1)


def mix(coeffs, seed, stream, rows, cols, scale, distribution):
    """scale * sum_i coeffs[i] * U_i as a (rows, cols) tensor in float32 (float64 for float64 coeffs)."""
    return mix_grouped(coeffs.unsqueeze(0), seed, stream, rows, cols, scale, distribution)[0]


def mix_grouped(coeffs, seed, stream, rows, cols, scale, distribution):
    """Row g is mix(coeffs[g]) bit for bit: a (G, rows, cols) tensor from (G, k) coeffs, each
    block of the basis generated once for all G rows."""
    dtype, device = accumulation_dtype(coeffs), coeffs.device
    groups, k = coeffs.shape
    numel = rows * cols
    out = torch.zeros(groups, numel, dtype=dtype, device=device)
    if no_work(groups, k, numel):
        return out.view(groups, rows, cols)
    weights = (coeffs.to(dtype) * scale).unsqueeze(2)
    budget = _group_budget(device, groups)
    for i0, i1, n0, n1 in family_blocks(k, numel, distribution, budget, dtype, row_step=BASIS_BLOCK):
        block = _block(seed, stream, k, numel, i0, i1, n0, n1, distribution, device, dtype)
        terms = _products(block, weights[:, i0:i1])
        _add_in_order(out[:, n0:n1], _block_sums(terms, BASIS_BLOCK, 1).unbind(1))
        del block, terms  # before the next block is generated
    return out.view(groups, rows, cols)


def _add_in_order(out, rows):
    """out += rows[0], then rows[1], ... (a function, so that no row outlives the call)."""
    for row in rows:
        out.add_(row)


def project(grad, seed, stream, k, scale, distribution):
    """scale * <grad, U_i> for i < k: a (k,) tensor in float32 (float64 for float64 grad)."""
    return project_grouped(grad.unsqueeze(0), seed, stream, k, scale, distribution)[0]


def project_grouped(grads, seed, stream, k, scale, distribution):
    """Row g is project(grads[g]) bit for bit: a (G, k) tensor from (G, rows, cols) grads, each
    block of the basis generated once for all G rows."""
    dtype, device = accumulation_dtype(grads), grads.device
    groups, numel = grads.shape[0], grads.shape[1:].numel()
    if no_work(groups, k, numel):
        return torch.zeros(groups, k, dtype=dtype, device=device)
    flat = grads.reshape(groups, numel).to(dtype)
    out = torch.empty(groups, k, dtype=dtype, device=device)
    budget = _group_budget(device, groups)
    for i0, i1, n0, n1 in family_blocks(k, numel, distribution, budget, dtype, col_step=POSITION_BLOCK):
        if n0 == 0:  # the blocks of a row group come in order of n
            position_blocks = -(-numel // POSITION_BLOCK)
            position_sums = torch.empty(groups, i1 - i0, position_blocks, dtype=dtype, device=device)
        block = _block(seed, stream, k, numel, i0, i1, n0, n1, distribution, device, dtype)
        terms = _products(block, flat[:, None, n0:n1])
        these_blocks = slice(n0 // POSITION_BLOCK, -(-n1 // POSITION_BLOCK))
        position_sums[:, :, these_blocks] = _block_sums(terms, POSITION_BLOCK, 2)
        del block, terms  # before the next block is generated
        if n1 == numel:
            out[:, i0:i1] = _fold(position_sums, 2)
    return out.mul_(scale)
