"""nola_mix and nola_project as Triton kernels: the flat positions of the (rows, cols) matrix are
cut into blocks and the basis indices into splits; each program generates its block of U_i for
its split of i once, in registers, and never writes the basis. The official CUDA layout
families (nola_kernels/official_rng.py) have kernels of their own: each entry is its own Philox
call, at a flat basis index li = i * numel + n."""

import torch
import triton
import triton.language as tl

from nola_kernels.official_rng import parse_official

from .launch import (
    BLOCK_I,
    GRID_TARGET_WARPS,
    INTERPRETED,
    MIN_SPLIT_INDICES,
    MIX_WARPS,
    PROJECT_WARPS,
    ceil_div,
    flat_block,
    on_device,
    output_buffer,
    seed_words,
)
from .philox_tiles import (
    _words,
    call_shift,
    flip_sign,
    is_rademacher,
    official_entries,
    word_entries,
    word_entry,
)


@triton.jit
def _flat_words(seed, indices, call, stream_lo, stream_hi, DISTRIBUTION: tl.constexpr):
    """The words of calls `call` (CALLS,) of basis matrices `indices` (BLOCK_I,), each of shape
    (BLOCK_I, 1, CALLS): the call axis last, so that each thread makes whole calls."""
    return _words(seed, call[None, None, :], indices[:, None, None], stream_lo, stream_hi, DISTRIBUTION)


@triton.jit
def _flat_entries(z, coeffs, lanes, DISTRIBUTION: tl.constexpr):
    """coeffs (BLOCK_I, 1, 1) times the entries of word z (BLOCK_I, 1, CALLS): (BLOCK_I, E, CALLS)
    for the word's E entries (entry `lane` in row lane, within the thread; lanes: (1, E, 1))."""
    if is_rademacher(DISTRIBUTION):
        return flip_sign(coeffs, z, lanes)
    else:
        return coeffs * word_entry(z, lanes, DISTRIBUTION)


@triton.jit
def _word_positions(call, word, DISTRIBUTION: tl.constexpr):
    """Flat positions of word `word`'s entries of calls `call` (CALLS,), in _flat_entries' shape
    without its leading axis."""
    E: tl.constexpr = word_entries(DISTRIBUTION)
    return (call[None, :] << call_shift(DISTRIBUTION)) + E * word + tl.arange(0, E)[:, None]


@triton.jit
def _mix_kernel(
    coeffs_ptr, out_ptr, numel, k, per_split, scale, seed, stream_lo, stream_hi,
    BLOCK: tl.constexpr, BLOCK_I: tl.constexpr, DISTRIBUTION: tl.constexpr,
):  # fmt: skip
    """out[split, n] = scale * sum over the split's i of coeffs[i] * U_i[n], for the block of n
    (BLOCK: whole Philox calls). One accumulator per Philox word; each thread keeps the calls it
    makes, so nothing moves between threads in the loop."""
    SHIFT: tl.constexpr = call_shift(DISTRIBUTION)
    call = tl.program_id(0).to(tl.int64) * (BLOCK >> SHIFT) + tl.arange(0, BLOCK >> SHIFT)
    split = tl.program_id(1).to(tl.int64)  # split * per_split passes 2^31 for k up to 2^32
    i_start = split * per_split
    i_stop = tl.minimum(i_start + per_split, k)
    lanes = tl.arange(0, word_entries(DISTRIBUTION))[None, :, None]
    acc0 = tl.zeros(_word_positions(call, 0, DISTRIBUTION).shape, tl.float32)
    acc1, acc2, acc3 = acc0, acc0, acc0
    for first in range(i_start, i_stop, BLOCK_I):
        indices = first + tl.arange(0, BLOCK_I)
        coeffs = tl.load(coeffs_ptr + indices, mask=indices < i_stop, other=0.0)[:, None, None]
        z0, z1, z2, z3 = _flat_words(seed, indices, call, stream_lo, stream_hi, DISTRIBUTION)
        acc0 += tl.sum(_flat_entries(z0, coeffs, lanes, DISTRIBUTION), axis=0)
        acc1 += tl.sum(_flat_entries(z1, coeffs, lanes, DISTRIBUTION), axis=0)
        acc2 += tl.sum(_flat_entries(z2, coeffs, lanes, DISTRIBUTION), axis=0)
        acc3 += tl.sum(_flat_entries(z3, coeffs, lanes, DISTRIBUTION), axis=0)
    out_ptr += split * numel
    _store_word(out_ptr, acc0 * scale, call, 0, numel, DISTRIBUTION)
    _store_word(out_ptr, acc1 * scale, call, 1, numel, DISTRIBUTION)
    _store_word(out_ptr, acc2 * scale, call, 2, numel, DISTRIBUTION)
    _store_word(out_ptr, acc3 * scale, call, 3, numel, DISTRIBUTION)


@triton.jit
def _store_word(out_ptr, value, call, word, numel, DISTRIBUTION: tl.constexpr):
    positions = _word_positions(call, word, DISTRIBUTION)
    tl.store(out_ptr + positions, value, mask=positions < numel)


@triton.jit
def _load_word(grad_ptr, call, word, numel, DISTRIBUTION: tl.constexpr):
    positions = _word_positions(call, word, DISTRIBUTION)
    return tl.load(grad_ptr + positions, mask=positions < numel, other=0.0).to(tl.float32)[None, :, :]


@triton.jit
def _project_kernel(
    grad_ptr, partial_ptr, numel, k, per_split, blocks_per_group, seed, stream_lo, stream_hi,
    BLOCK: tl.constexpr, BLOCK_I: tl.constexpr, DISTRIBUTION: tl.constexpr,
):  # fmt: skip
    """partial[group, i] = <grad, U_i> over the positions of the group's blocks, for the split's i,
    the blocks summed in order. A block's gradient is loaded once for the whole walk over i; the
    sums over the block are one per basis index (a warp's shuffles when the launch gives one warp)
    and accumulate in the partial, which only this program writes."""
    SHIFT: tl.constexpr = call_shift(DISTRIBUTION)
    group = tl.program_id(0).to(tl.int64)
    first_block = group * blocks_per_group
    stop_block = tl.minimum(first_block + blocks_per_group, tl.cdiv(numel, BLOCK))
    i_start = tl.program_id(1).to(tl.int64) * per_split
    i_stop = tl.minimum(i_start + per_split, k)
    lanes = tl.arange(0, word_entries(DISTRIBUTION))[None, :, None]
    partial_ptr += group * k
    for block in range(first_block, stop_block):
        call = block * (BLOCK >> SHIFT) + tl.arange(0, BLOCK >> SHIFT)
        g0 = _load_word(grad_ptr, call, 0, numel, DISTRIBUTION)
        g1 = _load_word(grad_ptr, call, 1, numel, DISTRIBUTION)
        g2 = _load_word(grad_ptr, call, 2, numel, DISTRIBUTION)
        g3 = _load_word(grad_ptr, call, 3, numel, DISTRIBUTION)
        for first in range(i_start, i_stop, BLOCK_I):
            indices = first + tl.arange(0, BLOCK_I)
            live = indices < i_stop
            z0, z1, z2, z3 = _flat_words(seed, indices, call, stream_lo, stream_hi, DISTRIBUTION)
            dots = _flat_entries(z0, g0, lanes, DISTRIBUTION) + _flat_entries(z1, g1, lanes, DISTRIBUTION)
            dots += _flat_entries(z2, g2, lanes, DISTRIBUTION) + _flat_entries(z3, g3, lanes, DISTRIBUTION)
            projected = tl.sum(tl.sum(dots, axis=1), axis=1)  # a thread's entries, then the warp's calls
            if block > first_block:
                projected += tl.load(partial_ptr + indices, mask=live)
            tl.store(partial_ptr + indices, projected, mask=live)
        tl.debug_barrier()  # the next block reads these partials, maybe in other threads


@triton.jit
def _official_mix_kernel(
    coeffs_ptr, out_ptr, numel, k, per_split, scale, seed, threads,
    BLOCK: tl.constexpr, BLOCK_I: tl.constexpr, DTYPE: tl.constexpr, LEGACY: tl.constexpr,
):  # fmt: skip
    """_mix_kernel for an official family of `threads` threads: out[split, n] = scale * sum over
    the split's i of coeffs[i] * U_i[n] for the block of n."""
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    split = tl.program_id(1).to(tl.int64)
    i_start = split * per_split
    i_stop = tl.minimum(i_start + per_split, k)
    acc = tl.zeros((BLOCK,), tl.float32)
    for first in range(i_start, i_stop, BLOCK_I):
        indices = first + tl.arange(0, BLOCK_I)
        coeffs = tl.load(coeffs_ptr + indices, mask=indices < i_stop, other=0.0)
        entries = official_entries(seed, indices[:, None] * numel + n[None, :], threads, DTYPE, LEGACY)
        acc += tl.sum(coeffs[:, None] * entries, axis=0)
    tl.store(out_ptr + split * numel + n, acc * scale, mask=n < numel)


@triton.jit
def _official_project_kernel(
    grad_ptr, partial_ptr, numel, k, per_split, blocks_per_group, seed, threads,
    BLOCK: tl.constexpr, BLOCK_I: tl.constexpr, DTYPE: tl.constexpr, LEGACY: tl.constexpr,
):  # fmt: skip
    """_project_kernel for an official family of `threads` threads: partial[group, i] = <grad, U_i>
    over the positions of the group's blocks, for the split's i, the blocks summed in order."""
    group = tl.program_id(0).to(tl.int64)
    first_block = group * blocks_per_group
    stop_block = tl.minimum(first_block + blocks_per_group, tl.cdiv(numel, BLOCK))
    i_start = tl.program_id(1).to(tl.int64) * per_split
    i_stop = tl.minimum(i_start + per_split, k)
    partial_ptr += group * k
    for block in range(first_block, stop_block):
        n = block * BLOCK + tl.arange(0, BLOCK)
        grad = tl.load(grad_ptr + n, mask=n < numel, other=0.0).to(tl.float32)
        for first in range(i_start, i_stop, BLOCK_I):
            indices = first + tl.arange(0, BLOCK_I)
            live = indices < i_stop
            entries = official_entries(seed, indices[:, None] * numel + n[None, :], threads, DTYPE, LEGACY)
            projected = tl.sum(entries * grad[None, :], axis=1)
            if block > first_block:
                projected += tl.load(partial_ptr + indices, mask=live)
            tl.store(partial_ptr + indices, projected, mask=live)
        tl.debug_barrier()  # the next block reads these partials, maybe in other threads


# Entries per thread of the official kernels on a GPU: each is a Philox call of its own, so four
# give independent chains to hide the multiply latency, as the uniform kernels' four calls do.
OFFICIAL_ENTRIES_PER_THREAD = 4


def _generator(distribution, seed, stream, k, numel, warps):
    """How the flat kernels generate a family: (official, entries per program, the generator's
    kernel arguments, its compile-time parameters)."""
    family = parse_official(distribution)
    if family is None:
        return False, flat_block(numel, distribution, warps), seed_words(seed, stream), dict(DISTRIBUTION=distribution)
    # Interpreted blocks do not depend on the distribution.
    block = flat_block(numel, "uniform", warps) if INTERPRETED else OFFICIAL_ENTRIES_PER_THREAD * 32 * warps
    constants = dict(DTYPE=str(family.dtype).removeprefix("torch."), LEGACY=family.uniform_rule == "legacy")
    return True, block, (seed, family.threads(k * numel)), constants


def _splits(blocks, warps, k, max_splits):
    """(splits, indices per split): enough warps for the GPU, at least MIN_SPLIT_INDICES basis
    indices per split (whole BLOCK_I steps), at most max_splits splits."""
    wanted = ceil_div(GRID_TARGET_WARPS, blocks * warps)
    splits = max(1, min(wanted, ceil_div(k, MIN_SPLIT_INDICES), max_splits))
    per_split = ceil_div(ceil_div(k, splits), BLOCK_I) * BLOCK_I
    return ceil_div(k, per_split), per_split


# Bound on the mix partials (splits x positions) and the project partials (position groups x k),
# float32: 16 MiB each. Past it the mix splits k less and each project program sums several
# position blocks, rather than the partials growing with the matrix.
MIX_PARTIAL_ENTRIES = 1 << 22
PROJECT_PARTIAL_ENTRIES = 1 << 22


def mix(coeffs, seed, stream, rows, cols, scale, distribution):
    """scale * sum_i coeffs[i] * U_i as (rows, cols) float32; coeffs: float32 (k,)."""
    numel, k = rows * cols, coeffs.numel()
    official, block, generator_args, constants = _generator(distribution, seed, stream, k, numel, MIX_WARPS)
    blocks = ceil_div(numel, block)
    splits, per_split = _splits(blocks, MIX_WARPS, k, max(1, MIX_PARTIAL_ENTRIES // max(1, numel)))
    partial = output_buffer((splits, numel), torch.float32, coeffs.device)
    kernel = _official_mix_kernel if official else _mix_kernel
    with on_device(coeffs):
        kernel[(blocks, splits)](
            coeffs.contiguous(), partial, numel, k, per_split, scale, *generator_args,
            BLOCK=block, BLOCK_I=BLOCK_I, num_warps=MIX_WARPS, **constants,
        )  # fmt: skip
        return (partial[0] if splits == 1 else partial.sum(0)).view(rows, cols)


def project_grid(numel, k, distribution, block=None):
    """(block, groups, blocks per group, splits, indices per split) of a projection: the position
    blocks (of `block` entries, flat_block's by default) in groups of whole blocks, at most
    PROJECT_PARTIAL_ENTRIES // k groups."""
    block = block or flat_block(numel, distribution, PROJECT_WARPS)
    blocks = ceil_div(numel, block)
    blocks_per_group = ceil_div(blocks, max(1, PROJECT_PARTIAL_ENTRIES // k))
    groups = ceil_div(blocks, blocks_per_group)
    splits, per_split = _splits(groups, PROJECT_WARPS, k, k)
    return block, groups, blocks_per_group, splits, per_split


def project(grad, seed, stream, k, scale, distribution):
    """scale * <grad, U_i> for i < k as a (k,) float32 tensor; grad: any float dtype but float64."""
    flat = grad.reshape(-1).contiguous()
    numel = flat.numel()
    official, block, generator_args, constants = _generator(distribution, seed, stream, k, numel, PROJECT_WARPS)
    block, groups, blocks_per_group, splits, per_split = project_grid(numel, k, distribution, block)
    partial = output_buffer((groups, k), torch.float32, grad.device)
    kernel = _official_project_kernel if official else _project_kernel
    with on_device(grad):
        kernel[(groups, splits)](
            flat, partial, numel, k, per_split, blocks_per_group, *generator_args,
            BLOCK=block, BLOCK_I=BLOCK_I, num_warps=PROJECT_WARPS, **constants,
        )  # fmt: skip
        return partial.sum(0).mul_(scale)
