"""nola_mix_grouped and nola_project_grouped as Triton kernels: matmuls whose basis operand is
generated inside the tile loop, once per launch for all G rows.

  mix:     out[g, n] = scale * sum_i coeffs[g, i] U_i[n]     (coeffs[G x k] @ U[k x numel])
  project: out[g, i] = scale * sum_n grads[g, n] U_i[n]      (grads[G x numel] @ U^T[numel x k])

A program generates tiles of (indices x positions) entries of U in registers, each thread making
whole Philox calls, and multiplies them with the G rows (padded to tl.dot's 16) on tensor cores.
Precision (float32 results as accurate as float32 FMAs): TF32 products on operand parts that are
exact in TF32, split by hand (Triton's tf32x3 does the same split with inf checks on every
element, which cost more SASS per entry).
- uniform: an entry (an odd multiple of 2^-23, or 2^-15 for uniform16, below 1) is its TF32
  rounding plus a rest exact in TF32 (at most 11 significant bits); the dense operand is its TF32
  rounding plus the TF32 rounding of its rest (within one float32 ulp of it). Three products, the
  two rests' product dropped (each rest is within 2^-11 of its value, so within 2^-22 of the
  whole): a few float32 roundings per product, of random sign.
- rademacher: +-1 is exact in TF32, and the dense operand is split by truncation into three TF32
  parts that add up to it exactly (11 + 11 + the last 2 significant bits, normal values), so every
  product is exact and only the float32 accumulation rounds.
- the official CUDA layout families (nola_kernels/official_rng.py): each entry its own Philox
  call (philox_tiles.official_entries) at flat basis index i * numel + n, in uniform's tiles.
  bfloat16 and float16 values are exact in TF32: rademacher's products. A float32 value is a
  multiple of 2^-24 of magnitude at most 1, whose rest after the TF32 rounding may have 12
  significant bits: the rest is split again (its TF32 rounding and one bit), four products.
Sums over the split dimension (k for mix, positions for project) are per-program partials in
fixed-size steps, added afterwards by torch.sum: no float atomics, the same bits run to run.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from nola_kernels.official_rng import OFFICIAL_PREFIX

from .launch import GRID_TARGET_WARPS, INTERPRETED, ceil_div, on_device, output_buffer, seed_words
from .philox_tiles import (
    _words,
    basis_tile,
    call_shift,
    is_rademacher,
    official_entries,
    word_entries,
    word_entry,
)

GROUPED_WARPS = 4
# Two stages of the pipelined loads: three would take 256 KiB of shared memory for the 64-row
# rademacher projection, past Hopper's 227 KiB.
GROUPED_STAGES = 2
# Rows per program: tl.dot's minimum of 16 up to 64 (the accumulator's registers); past 64 rows
# the grid takes a third axis of row blocks, each generating the tiles again.
MIN_ROWS, MAX_ROWS = 16, 64
# (basis indices, positions) of a generated tile: whole Philox calls along the positions, at
# least one call per thread (uniform: 8 calls a thread in mix, 8 in project; uniform16: 4 and 4;
# rademacher: one call of 128 entries).
MIX_TILE = {"uniform": (32, 128), "uniform16_philox7": (32, 128), "rademacher": (64, 256), "rademacher_philox7": (64, 256)}
PROJECT_TILE = {"uniform": (64, 64), "uniform16_philox7": (64, 64), "rademacher": (64, 256), "rademacher_philox7": (64, 256)}
# Programs a launch aims at: as many warps as the flat kernels (launch.py), or a few in the
# interpreter so that the partial sums run in CPU tests; splits of the reduced dimension are whole
# tiles, and the partials stay within PARTIAL_ENTRIES floats (16 MiB) or the output's size.
TARGET_PROGRAMS = 4 if INTERPRETED else GRID_TARGET_WARPS // GROUPED_WARPS
PARTIAL_ENTRIES = 1 << 22


def tile_distribution(distribution):
    """The NOLA-Philox distribution whose tiles and products a family takes: its own, or uniform's
    for an official family (one float32 value per generated entry, at most 1 in magnitude)."""
    return "uniform" if distribution.startswith(OFFICIAL_PREFIX + ":") else distribution


# A kernel's DISTRIBUTION names the family, official ones included ("official:<dtype>:<rule>:
# <resident threads>", checked by parse_official before any launch); these read it at compile
# time, with string operations only (Triton's compiler runs no other Python function there).
layout_of = triton.constexpr_function(tile_distribution)


@triton.constexpr_function
def is_official(distribution):
    return distribution.startswith(OFFICIAL_PREFIX + ":")


@triton.constexpr_function
def official_dtype(distribution):
    return distribution.split(":")[1]


@triton.constexpr_function
def official_legacy(distribution):
    return distribution.split(":")[2] == "legacy"


@triton.constexpr_function
def resident_threads(distribution):
    return int(distribution.split(":")[3])


@triton.jit
def _official_threads(k, numel, DISTRIBUTION: tl.constexpr):
    """T of an official family's basis of k * numel entries (CudaLayout.total_threads: whole
    blocks of 256 threads, at most the resident threads); 0 for NOLA-Philox, which has no T."""
    if is_official(DISTRIBUTION):
        blocks = (tl.cast(k, tl.int64) * numel + 255) // 256  # k may be a constant 1 (Triton specializes 1)
        return tl.minimum(blocks * 256, resident_threads(DISTRIBUTION))
    else:
        return 0


@triton.jit
def _columns(w0, w1, w2, w3):
    """Four (E, I, C) tensors (one per Philox word, entry e of the word in row e) as one
    (I, 4 E C) tile. The column order is _offsets'; each thread keeps its calls' entries."""
    ENTRIES: tl.constexpr = w0.shape[0]
    INDICES: tl.constexpr = w0.shape[1]
    CALLS: tl.constexpr = w0.shape[2]
    joined = tl.permute(tl.join(tl.join(w0, w1), tl.join(w2, w3)), (1, 0, 2, 3, 4))
    return tl.reshape(joined, (INDICES, 4 * ENTRIES * CALLS))


@triton.jit
def _offsets(WIDTH: tl.constexpr, DISTRIBUTION: tl.constexpr):
    """The position, from the tile's first, of each tile column (WIDTH,)."""
    if word_entries(DISTRIBUTION) > 1:
        E: tl.constexpr = word_entries(DISTRIBUTION)
        CALL: tl.constexpr = 1 << call_shift(DISTRIBUTION)
        entry = CALL * tl.arange(0, WIDTH // CALL)[None, None, :] + tl.arange(0, E)[:, None, None]
        return tl.reshape(_columns(entry, entry + E, entry + 2 * E, entry + 3 * E), (WIDTH,))
    else:
        return tl.arange(0, WIDTH)


@triton.jit
def _tile(seed, stream_lo, stream_hi, threads, indices, first, numel, WIDTH: tl.constexpr, DISTRIBUTION: tl.constexpr):
    """(I, WIDTH) float32: entry [r, j] is U_{indices[r]} at flat position first + _offsets[j]
    (first: a multiple of WIDTH, itself whole Philox calls); threads: T of an official family."""
    if is_official(DISTRIBUTION):
        positions = first + tl.arange(0, WIDTH)
        index = indices[:, None] * numel + positions[None, :]
        return official_entries(seed, index, threads, official_dtype(DISTRIBUTION), official_legacy(DISTRIBUTION))
    elif word_entries(DISTRIBUTION) > 1:
        SHIFT: tl.constexpr = call_shift(DISTRIBUTION)
        call = (first >> SHIFT) + tl.arange(0, WIDTH >> SHIFT)
        # Calls along the last axis and indices along the middle one, the entries of a word along
        # the first: threads split the calls, and each keeps the entries of its own.
        z0, z1, z2, z3 = _words(seed, call[None, None, :], indices[None, :, None], stream_lo, stream_hi, DISTRIBUTION)
        lanes = tl.arange(0, word_entries(DISTRIBUTION))[:, None, None]
        return _columns(word_entry(z0, lanes, DISTRIBUTION), word_entry(z1, lanes, DISTRIBUTION),
                        word_entry(z2, lanes, DISTRIBUTION), word_entry(z3, lanes, DISTRIBUTION))  # fmt: skip
    else:
        return basis_tile(seed, stream_lo, stream_hi, indices, tl.zeros_like(indices) + first, WIDTH, DISTRIBUTION, True)


@triton.jit
def _tf32(value):
    """value rounded to TF32's 11 significant bits, to nearest (ties away from 0), in float32."""
    return ((value.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _split(value):
    """(high, rest, special): value = high + rest, high exact in TF32. Infinities, NaN and the
    finite values whose rounding would reach infinity (within 2^-12 of float32's largest) are
    `special`: their own high part (NaN made canonical by the add, since TF32 reads only a NaN's
    top bits) and rest 0, so they propagate as float32 arithmetic has them."""
    special = (value.to(tl.uint32, bitcast=True) & 0x7FFFFFFF) >= 0x7F7FF000
    high = tl.where(special, value + 0.0, _tf32(value))
    return high, tl.where(special, 0.0, value - high), special


@triton.jit
def _truncated(value):
    """value cut to TF32's 11 significant bits (toward 0), in float32: its exponent unchanged."""
    return (value.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def _truncated_split(value):
    """(high, rest): value = high + rest exactly, high its truncation to TF32 and rest the 13 bits
    below (TF32's truncation of rest and what that leaves make two more exact TF32 parts).
    Truncation keeps the exponent, so no finite value becomes infinite. A NaN leaves a NaN rest,
    which makes the sum NaN even where its high part (a NaN whose payload lies below TF32's bits)
    reads as infinite; an infinity is its own high part, with rest 0."""
    high = _truncated(value)
    return high, tl.where(high == value, 0.0, value - high)


@triton.jit
def _dot(basis, dense, acc, DISTRIBUTION: tl.constexpr):
    """acc + basis @ dense on tensor cores, as precise as float32 (module docstring): TF32
    products of operand parts that are exact in TF32. The generated tile is the left operand,
    which Hopper's wgmma takes at 64 rows and more. Each step's products start from zero and are
    added to acc in float32 (rounded to nearest): tensor cores truncate their own sums, which
    over a whole reduction would drift one way."""
    if is_official(DISTRIBUTION):
        if official_dtype(DISTRIBUTION) == "float32":
            return _rounded_basis_dot(basis, dense, acc, True)
        else:
            return _exact_basis_dot(basis, dense, acc)
    elif is_rademacher(DISTRIBUTION):
        return _exact_basis_dot(basis, dense, acc)
    else:
        return _rounded_basis_dot(basis, dense, acc, False)


@triton.jit
def _exact_basis_dot(basis, dense, acc):
    """_dot of entries exact in TF32 (+-1, bfloat16 and float16 values): the dense operand in
    three exact parts, so every product is exact."""
    high, rest = _truncated_split(dense)
    middle = _truncated(rest)
    step = tl.dot(basis, high, input_precision="tf32")
    step = tl.dot(basis, middle, step, input_precision="tf32")
    return acc + tl.dot(basis, rest - middle, step, input_precision="tf32")


@triton.jit
def _rounded_basis_dot(basis, dense, acc, REST_SPLIT: tl.constexpr):
    """_dot of entries that are their TF32 rounding plus a rest exact in TF32 or, REST_SPLIT
    (official float32 values, with a rest of up to 12 significant bits), the rest's own TF32
    rounding plus one bit: the rests' product with the dense rest is dropped."""
    high, rest, special = _split(dense)
    middle = _tf32(rest)
    basis_high = _tf32(basis)
    step = tl.dot(basis_high, middle, input_precision="tf32")
    # A special value's high part meets only basis_high, which is 0 only where the entry is (an
    # official value): inf times a rest of 0 would be NaN where float32 gives an infinity.
    finite_high = tl.where(special, 0.0, high)
    basis_rest = basis - basis_high
    if REST_SPLIT:
        rest_high = _tf32(basis_rest)
        step = tl.dot(basis_rest - rest_high, finite_high, step, input_precision="tf32")
        basis_rest = rest_high
    step = tl.dot(basis_rest, finite_high, step, input_precision="tf32")
    return acc + tl.dot(basis_high, high, step, input_precision="tf32")


@triton.jit
def _mix_kernel(
    coeffs_ptr, partial_ptr, rows, numel, k, per_split, scale, seed, stream_lo, stream_hi,
    ROWS: tl.constexpr, BLOCK_I: tl.constexpr, WIDTH: tl.constexpr, DISTRIBUTION: tl.constexpr,
):  # fmt: skip
    """partial[split, g, n] = scale * sum over the split's i of coeffs[g, i] U_i[n], for the
    program's WIDTH positions n and ROWS rows g, BLOCK_I basis indices per step, as U^T coeffs^T."""
    LAYOUT: tl.constexpr = layout_of(DISTRIBUTION)
    threads = _official_threads(k, numel, DISTRIBUTION)
    first = tl.program_id(0).to(tl.int64) * WIDTH
    split = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2) * ROWS + tl.arange(0, ROWS)
    i_start = split * per_split
    i_stop = tl.minimum(i_start + per_split, k)
    acc = tl.zeros((WIDTH, ROWS), tl.float32)
    for i0 in range(i_start, i_stop, BLOCK_I):
        indices = i0 + tl.arange(0, BLOCK_I)
        live = (indices[:, None] < i_stop) & (g[None, :] < rows)
        coeffs = tl.load(coeffs_ptr + g[None, :].to(tl.int64) * k + indices[:, None], mask=live, other=0.0)
        basis = _tile(seed, stream_lo, stream_hi, threads, indices, first, numel, WIDTH, DISTRIBUTION)
        acc = _dot(tl.trans(basis), coeffs, acc, DISTRIBUTION)
    n = first + _offsets(WIDTH, LAYOUT)
    out = partial_ptr + (split * rows + g[None, :]) * numel + n[:, None]
    tl.store(out, acc * scale, mask=(n[:, None] < numel) & (g[None, :] < rows))


@triton.jit
def _project_kernel(
    grads_ptr, partial_ptr, rows, numel, k, blocks_per_group, seed, stream_lo, stream_hi,
    ROWS: tl.constexpr, BLOCK_I: tl.constexpr, WIDTH: tl.constexpr, DISTRIBUTION: tl.constexpr,
):  # fmt: skip
    """partial[group, g, i] = sum over the group's positions n of grads[g, n] U_i[n], for the
    program's BLOCK_I basis indices i and ROWS rows g, WIDTH positions per step in order, as
    U grads^T."""
    LAYOUT: tl.constexpr = layout_of(DISTRIBUTION)
    threads = _official_threads(k, numel, DISTRIBUTION)
    indices = tl.program_id(0).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    group = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2) * ROWS + tl.arange(0, ROWS)
    offsets = _offsets(WIDTH, LAYOUT)
    rows_ptr = grads_ptr + g[None, :].to(tl.int64) * numel
    acc = tl.zeros((BLOCK_I, ROWS), tl.float32)
    first_block = group * blocks_per_group
    stop_block = tl.minimum(first_block + blocks_per_group, tl.cdiv(numel, WIDTH))
    for block in range(first_block, stop_block):
        first = block * WIDTH
        # 32-bit offsets from the block's first position: half the registers of 64-bit ones.
        left = tl.minimum(numel - first, WIDTH).to(tl.int32)
        live = (offsets[:, None] < left) & (g[None, :] < rows)
        grads = tl.load(rows_ptr + first + offsets[:, None], mask=live, other=0.0)
        basis = _tile(seed, stream_lo, stream_hi, threads, indices, first, numel, WIDTH, DISTRIBUTION)
        acc = _dot(basis, grads, acc, DISTRIBUTION)
    out = partial_ptr + (group * rows + g[None, :]) * k + indices[:, None]
    tl.store(out, acc, mask=(indices[:, None] < k) & (g[None, :] < rows))


class Plan(NamedTuple):
    """A grouped launch: rows per program, basis indices and positions of a generated tile, the
    grid, and the reduced dimension's share of a program (mix: basis indices per split; project:
    position blocks per group)."""

    rows: int
    block_i: int
    width: int
    grid: tuple
    share: int


def rows_per_program(rows):
    """Rows per program for `rows` rows: a power of 2 from MIN_ROWS to MAX_ROWS."""
    return min(MAX_ROWS, max(MIN_ROWS, triton.next_power_of_2(rows)))


def mix_plan(rows, numel, k, distribution):
    """Splits of k (whole steps) until the grid of (position blocks,
    splits, row blocks) reaches TARGET_PROGRAMS, within the partials' bound."""
    block_i, width = MIX_TILE[tile_distribution(distribution)]
    row_block = rows_per_program(rows)
    blocks, row_blocks = ceil_div(numel, width), ceil_div(rows, row_block)
    most_splits = min(ceil_div(k, block_i), max(1, PARTIAL_ENTRIES // (rows * numel)))
    splits = max(1, min(ceil_div(TARGET_PROGRAMS, blocks * row_blocks), most_splits))
    per_split = ceil_div(ceil_div(k, splits), block_i) * block_i
    return Plan(row_block, block_i, width, (blocks, ceil_div(k, per_split), row_blocks), per_split)


def project_plan(rows, numel, k, distribution):
    """Position blocks in groups of whole blocks until the grid of (index
    blocks, groups, row blocks) reaches TARGET_PROGRAMS, within the partials' bound."""
    block_i, width = PROJECT_TILE[tile_distribution(distribution)]
    row_block = rows_per_program(rows)
    index_blocks, blocks, row_blocks = ceil_div(k, block_i), ceil_div(numel, width), ceil_div(rows, row_block)
    most_groups = min(blocks, max(1, PARTIAL_ENTRIES // (rows * k)))
    groups = max(1, min(ceil_div(TARGET_PROGRAMS, index_blocks * row_blocks), most_groups))
    per_group = ceil_div(blocks, groups)
    return Plan(row_block, block_i, width, (index_blocks, ceil_div(blocks, per_group), row_blocks), per_group)


def _sum_partials(partial):
    return partial[0] if partial.shape[0] == 1 else partial.sum(0)


def mix_grouped(coeffs, seed, stream, rows, cols, scale, distribution):
    """(G, rows, cols) float32: row g is scale * sum_i coeffs[g, i] U_i; coeffs: contiguous
    float32 (G, k)."""
    count, k = coeffs.shape
    numel = rows * cols
    if count * numel * k == 0:  # no rows, no positions, or sums over no basis matrix
        return torch.zeros((count, rows, cols), dtype=torch.float32, device=coeffs.device)
    plan = mix_plan(count, numel, k, distribution)
    partial = output_buffer((plan.grid[1], count, numel), torch.float32, coeffs.device)
    with on_device(coeffs):
        _mix_kernel[plan.grid](
            coeffs, partial, count, numel, k, plan.share, scale, *seed_words(seed, stream),
            ROWS=plan.rows, BLOCK_I=plan.block_i, WIDTH=plan.width, DISTRIBUTION=distribution,
            num_warps=GROUPED_WARPS, num_stages=GROUPED_STAGES,
        )  # fmt: skip
        return _sum_partials(partial).view(count, rows, cols)


def project_grouped(grads, seed, stream, k, scale, distribution):
    """(G, k) float32: row g is scale * <grads[g], U_i> for i < k; grads: contiguous float32
    (G, rows, cols)."""
    count = grads.shape[0]
    numel = grads.shape[1:].numel()
    if count * numel * k == 0:  # no rows, no basis matrix, or sums over no position
        return torch.zeros((count, k), dtype=torch.float32, device=grads.device)
    plan = project_plan(count, numel, k, distribution)
    partial = output_buffer((plan.grid[1], count, k), torch.float32, grads.device)
    with on_device(grads):
        _project_kernel[plan.grid](
            grads, partial, count, numel, k, plan.share, *seed_words(seed, stream),
            ROWS=plan.rows, BLOCK_I=plan.block_i, WIDTH=plan.width, DISTRIBUTION=distribution,
            num_warps=GROUPED_WARPS, num_stages=GROUPED_STAGES,
        )  # fmt: skip
        return _sum_partials(partial).mul_(scale)
