"""The pure-PyTorch backend: runs on any device PyTorch supports and never holds more of the basis
than one block (nola_kernels.chunk_budget(device) bytes of temporaries), whatever k is.

Its sums run in an order this module fixes (docs/spec.md, "Determinism"), so that mix and project
give the same bits whatever the chunk budget, the thread count or the device:

- mix: the basis indices of an entry are summed in blocks of BASIS_BLOCK consecutive indices, each
  block by `_fold`, and the block sums are added to the entry in increasing order;
- project: the positions of a coefficient are summed in blocks of POSITION_BLOCK consecutive
  positions, each block by `_fold`, and the block sums are folded in turn.

Only elementwise multiplies and adds run (no matmul, no library reduction), and each rounds once
whatever the layout, so an entry is computed alike in any batch of blocks: the budget decides
only how many blocks are generated at once.
"""

import torch

from ..basis import basis_block, chunk_budget, iter_blocks
from ..dtypes import accumulation_dtype

BASIS_BLOCK = 16
POSITION_BLOCK = 2048  # a multiple of 128, one Philox call's entries, so blocks cut no call


def unavailable_reason(device):
    """The PyTorch path runs wherever PyTorch does."""
    return None


def _block(seed, stream, i0, i1, n0, n1, distribution, device, dtype):
    return basis_block(seed, stream, i0, i1, n0, n1, distribution, device).to(dtype)


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


def mix(coeffs, seed, stream, rows, cols, scale, distribution):
    """scale * sum_i coeffs[i] * U_i as a (rows, cols) tensor in float32 (float64 for float64 coeffs)."""
    dtype, device = accumulation_dtype(coeffs), coeffs.device
    numel = rows * cols
    weights = (coeffs.to(dtype) * scale).unsqueeze(1)
    out = torch.zeros(numel, dtype=dtype, device=device)
    blocks = iter_blocks(coeffs.numel(), numel, distribution, chunk_budget(device), dtype, row_step=BASIS_BLOCK)
    for i0, i1, n0, n1 in blocks:
        terms = _block(seed, stream, i0, i1, n0, n1, distribution, device, dtype).mul_(weights[i0:i1])
        _add_in_order(out[n0:n1], _block_sums(terms, BASIS_BLOCK, 0))
        del terms  # before the next block is generated
    return out.view(rows, cols)


def _add_in_order(out, rows):
    """out += rows[0], then rows[1], ... (a function, so that no row outlives the call)."""
    for row in rows:
        out.add_(row)


def project(grad, seed, stream, k, scale, distribution):
    """scale * <grad, U_i> for i < k: a (k,) tensor in float32 (float64 for float64 grad)."""
    dtype, device = accumulation_dtype(grad), grad.device
    flat = grad.reshape(-1).to(dtype)
    numel = flat.numel()
    out = torch.empty(k, dtype=dtype, device=device)
    blocks = iter_blocks(k, numel, distribution, chunk_budget(device), dtype, col_step=POSITION_BLOCK)
    for i0, i1, n0, n1 in blocks:  # the blocks of a row group come in order of n
        if n0 == 0:
            position_sums = torch.empty(i1 - i0, -(-numel // POSITION_BLOCK), dtype=dtype, device=device)
        terms = _block(seed, stream, i0, i1, n0, n1, distribution, device, dtype).mul_(flat[n0:n1])
        position_sums[:, n0 // POSITION_BLOCK : -(-n1 // POSITION_BLOCK)] = _block_sums(terms, POSITION_BLOCK, 1)
        del terms  # before the next block is generated
        if n1 == numel:
            out[i0:i1] = _fold(position_sums, 1)
    return out.mul_(scale)
