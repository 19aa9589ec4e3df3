"""The NOLA-Philox generator (docs/spec.md: every distribution of nola_kernels.basis) inside
Triton kernels: tiles of basis entries made in registers, bit-identical to
nola_kernels.basis.basis_block.

A kernel takes the distribution's name as a compile-time parameter (DISTRIBUTION); its counter
shift and Philox rounds come from nola_kernels.basis. A tile is ROWS x WIDTH entries of one basis
matrix; row r holds the flat positions row_start[r] + j, j < WIDTH. When every row starts on a
Philox call boundary (ALIGNED), each call feeds its 4, 8 or 128 adjacent entries; otherwise each
entry computes its own call and keeps one word (same values, up to 128x the Philox work).
mixed_tile mixes (and projects) such tiles over a range of basis indices; its walks over tiles of
whole calls make each call once per basis index, in one thread.
"""

import triton
import triton.language as tl

from nola_kernels.basis import COUNTER_SHIFT, PHILOX_ROUNDS

from .launch import INTERPRETED


@triton.constexpr_function
def call_shift(distribution):
    """Counter word 0 of entry n is n >> call_shift: log2 of the entries per Philox call."""
    return COUNTER_SHIFT[distribution]


@triton.constexpr_function
def philox_rounds(distribution):
    return PHILOX_ROUNDS[distribution]


@triton.constexpr_function
def word_entries(distribution):
    """Entries per Philox word (4 words a call): 1 uniform, 2 uniform16 (the 16-bit halves, low
    first), 32 rademacher (the bits, bit 0 first)."""
    return (1 << COUNTER_SHIFT[distribution]) // 4


@triton.constexpr_function
def is_rademacher(distribution):
    return (1 << COUNTER_SHIFT[distribution]) // 4 == 32


@triton.jit
def _words(seed, call, index, stream_lo, stream_hi, DISTRIBUTION: tl.constexpr):
    """The distribution's Philox4x32 (philox_rounds rounds) of counter (call, index, stream_lo,
    stream_hi) under key seed."""
    zero = tl.zeros(call.shape, tl.int64)  # broadcasts the scalar words, ints or tensors alike
    return tl.philox(
        seed,
        call.to(tl.uint32),
        (zero + index).to(tl.uint32),
        (zero + stream_lo).to(tl.uint32),
        (zero + stream_hi).to(tl.uint32),
        philox_rounds(DISTRIBUTION),
    )


@triton.jit
def _uniform(word):
    # (m - 2^23) * 2^-23 with m = (word >> 8) | 1, i.e. (word >> 9) * 2^-22 - 1 + 2^-23: the float
    # 2 + (word >> 9) * 2^-22 (exponent bits of 2.0) less 3, plus 2^-23, both steps exact in
    # float32, as the contract requires, and no int-to-float conversion.
    two_plus = ((word >> 9) | 0x40000000).to(tl.float32, bitcast=True)
    return (two_plus - 3.0) + 1.0 / 8388608


@triton.jit
def _uniform16(word, half):
    # (m - 2^15) * 2^-15 with m = (16-bit half `half` of word) | 1: the float 2 + m * 2^-22
    # (exponent bits of 2.0, m in the low mantissa bits) times 2^7, less 257. The product is
    # exact and so is the result, fused into one FMA or not, as the contract requires.
    bits = ((word >> (16 * half).to(tl.uint32)) & 0xFFFF) | 0x40000001
    return bits.to(tl.float32, bitcast=True) * 128.0 - 257.0


@triton.jit
def word_entry(word, lane, DISTRIBUTION: tl.constexpr):
    """Entry `lane` (< word_entries) of a Philox word's entries (docs/spec.md, Distributions)."""
    if is_rademacher(DISTRIBUTION):
        return _sign(word, lane)
    elif word_entries(DISTRIBUTION) == 2:
        return _uniform16(word, lane)
    else:
        return _uniform(word)


@triton.jit
def _sign(word, bit):
    # +1 where the bit is 0, -1 where it is 1: the bit moved to the sign of 1.0's bits.
    return (((word << (31 - bit).to(tl.uint32)) & 0x80000000) | 0x3F800000).to(tl.float32, bitcast=True)


@triton.jit
def flip_sign(value, word, bit):
    """value times the rademacher sign of bit `bit` of `word` (-1 where it is set), as a flip of
    the float's sign bit: the same bits as the product, NaN included."""
    sign = (word << (31 - bit).to(tl.uint32)) & 0x80000000
    return (value.to(tl.uint32, bitcast=True) ^ sign).to(tl.float32, bitcast=True)


@triton.jit
def _select(which, z0, z1, z2, z3):
    return tl.where(which == 0, z0, tl.where(which == 1, z1, tl.where(which == 2, z2, z3)))


@triton.jit
def call_entries(z0, z1, z2, z3, entry, DISTRIBUTION: tl.constexpr):
    """Entry `entry` (< 4 word_entries) of the calls whose words are z0..z3: entry
    word_entries * w + lane is entry `lane` of word w."""
    E: tl.constexpr = word_entries(DISTRIBUTION)
    return word_entry(_select(entry // E, z0, z1, z2, z3), entry % E, DISTRIBUTION)


@triton.jit
def basis_tile(
    seed,
    stream_lo,
    stream_hi,
    index,
    row_start,
    WIDTH: tl.constexpr,
    DISTRIBUTION: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """Row r: entries of basis matrix index[r] at flat positions row_start[r] + j, j < WIDTH
    (index and row_start: int64 of shape (ROWS,)); a (ROWS, WIDTH) float32 tile. ALIGNED
    promises that every row_start and WIDTH are multiples of the entries per Philox call."""
    ROWS: tl.constexpr = row_start.shape[0]
    SHIFT: tl.constexpr = call_shift(DISTRIBUTION)
    index = index[:, None]
    if ALIGNED:
        CALLS: tl.constexpr = WIDTH >> SHIFT
        call = (row_start[:, None] >> SHIFT) + tl.arange(0, CALLS)[None, :]
        z0, z1, z2, z3 = _words(seed, call, index, stream_lo, stream_hi, DISTRIBUTION)
        if word_entries(DISTRIBUTION) == 1:
            # This nesting puts word w at column 4q + w after the reshape.
            quads = tl.join(tl.join(_uniform(z0), _uniform(z2)), tl.join(_uniform(z1), _uniform(z3)))
            return tl.reshape(quads, (ROWS, WIDTH))
        else:
            entry = tl.arange(0, 1 << SHIFT)[None, None, :]
            values = call_entries(z0[:, :, None], z1[:, :, None], z2[:, :, None], z3[:, :, None], entry, DISTRIBUTION)
            return tl.reshape(values, (ROWS, WIDTH))
    else:
        n = row_start[:, None] + tl.arange(0, WIDTH)[None, :]
        z0, z1, z2, z3 = _words(seed, n >> SHIFT, index, stream_lo, stream_hi, DISTRIBUTION)
        return call_entries(z0, z1, z2, z3, n & ((1 << SHIFT) - 1), DISTRIBUTION)


@triton.jit
def basis_block(
    seed,
    stream_lo,
    stream_hi,
    indices,
    row_start,
    WIDTH: tl.constexpr,
    DISTRIBUTION: tl.constexpr,
):
    """The same rows (row_start: (ROWS,)) of several basis matrices (indices: (BLOCK_I,)): a
    (BLOCK_I, ROWS, WIDTH) float32 block, one entry-wise basis_tile call for all of them (the
    path of factor tiles that are not whole calls)."""
    BLOCK_I: tl.constexpr = indices.shape[0]
    ROWS: tl.constexpr = row_start.shape[0]
    grid = tl.zeros((BLOCK_I, ROWS), tl.int64)
    flat_index = tl.reshape(grid + indices[:, None], (BLOCK_I * ROWS,))
    flat_start = tl.reshape(grid + row_start[None, :], (BLOCK_I * ROWS,))
    tile = basis_tile(seed, stream_lo, stream_hi, flat_index, flat_start, WIDTH, DISTRIBUTION, False)
    return tl.reshape(tile, (BLOCK_I, ROWS, WIDTH))


# Philox calls per thread per basis index in mixed_tile's walk over rows of whole calls (fewer
# where a row has fewer): a row's calls sit 4 to a thread, so its projection on a basis index is
# mostly summed within threads, and the few threads that share a row add theirs with 2 or 3
# shuffles.
_THREAD_CALLS: tl.constexpr = tl.constexpr(4)


@triton.constexpr_function
def _spread_indices(threads, groups, block_i):
    """Basis indices of a step that the walk spreads over the threads: as many as `threads` have
    room for beside the `groups` of calls per index (at least 1, at most block_i). The others
    are unrolled, each thread accumulating them in turn. All of them in the interpreter, whose
    cost is per operation."""
    return block_i if INTERPRETED else max(1, min(block_i, threads // groups))


@triton.jit
def _word_values(word, DISTRIBUTION: tl.constexpr):
    """A uniform or uniform16 word's entries on a new first axis (its word_entries). First, so
    that the layout of a step's blocks keeps them in the thread that made the word."""
    lanes = tl.arange(0, word_entries(DISTRIBUTION))[:, None, None, None, None]
    return word_entry(tl.expand_dims(word, 0), lanes, DISTRIBUTION)


@triton.jit
def _by_word(tile, C: tl.constexpr, E: tl.constexpr):
    """tile (ROWS, WIDTH) of whole calls as four (E, C, 1, ROWS, WIDTH // (4 C E)) tensors, one per
    Philox word: [e, c, 0, r, s] holds entry E w + e of call s C + c of row r."""
    ROWS: tl.constexpr = tile.shape[0]
    CC: tl.constexpr = tile.shape[1] // (4 * C * E)
    words = tl.permute(tl.reshape(tile, (ROWS, CC, C, 2, 2, E)), (5, 2, 0, 1, 3, 4))
    even, odd = tl.split(words)  # word 2a + b: b, then a
    w0, w2 = tl.split(even)
    w1, w3 = tl.split(odd)
    return tl.expand_dims(w0, 2), tl.expand_dims(w1, 2), tl.expand_dims(w2, 2), tl.expand_dims(w3, 2)


@triton.jit
def _from_words(w0, w1, w2, w3):
    """The inverse of _by_word, the basis axis (of size 1) dropped: (E, C, ROWS, CC) tensors as
    one (ROWS, WIDTH) tile."""
    E: tl.constexpr = w0.shape[0]
    C: tl.constexpr = w0.shape[1]
    ROWS: tl.constexpr = w0.shape[2]
    CC: tl.constexpr = w0.shape[3]
    # This nesting puts word w at index 2a + b of the last two axes (a, b).
    words = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), (E, C, ROWS, CC, 4))
    return tl.reshape(tl.permute(words, (2, 3, 1, 4, 0)), (ROWS, CC * C * 4 * E))


@triton.jit
def _store_row_sums(projection_ptr, indices, live, products):
    """products (BLOCK_I, ROWS, C) summed over C, row r's at projection_ptr[r] + i."""
    tl.store(projection_ptr[None, :] + indices[:, None], tl.sum(products, axis=2), mask=live[:, None])


@triton.jit
def _mixed_calls(
    coeffs_ptr, i_start, i_stop, seed, stream_lo, stream_hi, row_start, grad, projection_ptr,
    WIDTH: tl.constexpr, BLOCK_I: tl.constexpr, DISTRIBUTION: tl.constexpr, PROJECT: tl.constexpr,
    THREADS: tl.constexpr,
):  # fmt: skip
    """mixed_tile's walk for uniform or uniform16 rows of whole calls, unscaled and unmasked. A
    step's blocks are (E, C, SPREAD, ROWS, CC): the E entries of one Philox word of call s C + c
    of each row for SPREAD basis indices, one block per word. No data moves between threads
    within a step but the last levels of each row's projection sum: each thread keeps its calls'
    words, and the mix keeps one accumulator per spread index, added together once after the
    walk."""
    ROWS: tl.constexpr = row_start.shape[0]
    CALLS: tl.constexpr = WIDTH >> call_shift(DISTRIBUTION)
    C: tl.constexpr = min(_THREAD_CALLS, CALLS)
    CC: tl.constexpr = CALLS // C
    E: tl.constexpr = word_entries(DISTRIBUTION)
    SPREAD: tl.constexpr = _spread_indices(THREADS, ROWS * CC, BLOCK_I)
    c = tl.arange(0, C)[:, None, None, None]
    s = tl.arange(0, CC)[None, None, None, :]
    call = (row_start[None, None, :, None] >> call_shift(DISTRIBUTION)) + s * C + c
    g0, g1, g2, g3 = _by_word(grad, C, E)
    acc0 = tl.zeros((E, C, SPREAD, ROWS, CC), tl.float32)
    acc1, acc2, acc3 = acc0, acc0, acc0
    for first in range(i_start, i_stop, BLOCK_I):
        for unrolled in tl.static_range(0, BLOCK_I, SPREAD):
            indices = first + unrolled + tl.arange(0, SPREAD)
            live = indices < i_stop
            z0, z1, z2, z3 = _words(seed, call, indices[None, :, None, None], stream_lo, stream_hi, DISTRIBUTION)
            u0, u1 = _word_values(z0, DISTRIBUTION), _word_values(z1, DISTRIBUTION)
            u2, u3 = _word_values(z2, DISTRIBUTION), _word_values(z3, DISTRIBUTION)
            coeffs = tl.load(coeffs_ptr + indices, mask=live, other=0.0)[None, None, :, None, None]
            acc0 += coeffs * u0
            acc1 += coeffs * u1
            acc2 += coeffs * u2
            acc3 += coeffs * u3
            if PROJECT:
                dots = u0 * g0 + u1 * g1 + u2 * g2 + u3 * g3
                _store_row_sums(projection_ptr, indices, live, tl.sum(tl.sum(dots, axis=0), axis=0))
    return _from_words(tl.sum(acc0, axis=2), tl.sum(acc1, axis=2), tl.sum(acc2, axis=2), tl.sum(acc3, axis=2))


@triton.constexpr_function
def projection_units(rows, width, distribution, aligned):
    """Projection partials a (rows, width) factor tile stores per basis index: one per row, or
    one per Philox call where the rademacher walk takes it (aligned rademacher tiles)."""
    call = 1 << COUNTER_SHIFT[distribution]
    return rows * width // call if aligned and call == 128 else rows


@triton.jit
def _tile_calls(row_start, WIDTH: tl.constexpr, DISTRIBUTION: tl.constexpr):
    """The Philox calls of a tile of whole calls, in the tile's order of entries."""
    ROWS: tl.constexpr = row_start.shape[0]
    SHIFT: tl.constexpr = call_shift(DISTRIBUTION)
    CALLS: tl.constexpr = (ROWS * WIDTH) >> SHIFT
    if WIDTH >> SHIFT > 0:
        calls = (row_start[:, None] >> SHIFT) + tl.arange(0, WIDTH >> SHIFT)[None, :]
        return tl.reshape(calls, (CALLS,))
    else:
        # A call's (1 << SHIFT) // WIDTH rows are one run, the first on the call's boundary.
        return tl.max(tl.reshape(row_start >> SHIFT, (CALLS, (1 << SHIFT) // WIDTH)), axis=1)


@triton.jit
def _call_parts(tile, SPLIT: tl.constexpr):
    """tile (ROWS, WIDTH) of whole rademacher calls as a (32, 4 // SPLIT, SPLIT, CALLS) tensor:
    [b, q, h, c] holds bit b of word SPLIT q + h of call c."""
    CALLS: tl.constexpr = tile.shape[0] * tile.shape[1] // 128
    return tl.permute(tl.reshape(tile, (CALLS, 4 // SPLIT, SPLIT, 32)), (3, 1, 2, 0))


@triton.jit
def _from_call_parts(parts, ROWS: tl.constexpr):
    """The inverse of _call_parts: a (32, 4 // SPLIT, SPLIT, CALLS) tensor as one (ROWS, WIDTH) tile."""
    CALLS: tl.constexpr = parts.shape[3]
    return tl.reshape(tl.permute(parts, (3, 1, 2, 0)), (ROWS, CALLS * 128 // ROWS))


@triton.jit
def _rademacher_calls(
    coeffs_ptr, i_start, i_stop, seed, stream_lo, stream_hi, row_start, grad, projection_ptr,
    WIDTH: tl.constexpr, BLOCK_I: tl.constexpr, DISTRIBUTION: tl.constexpr, PROJECT: tl.constexpr,
):  # fmt: skip
    """mixed_tile's walk for rademacher tiles of whole calls, unscaled and unmasked. A step's
    block is (32, SPLIT, 4 // SPLIT, SPLIT, BLOCK_I // SPLIT, CALLS): [b, p, q, h, s, c] is bit b
    of word SPLIT q + h of call c of basis index first + p BLOCK_I // SPLIT + s. Each thread makes
    one call per step (of one p) and keeps the entries of its words in its registers. Projecting,
    the SPLIT = 2 threads of an s trade words once per step, so that each keeps part h of both
    p's calls: 64 accumulators and 64 gradient entries, where a whole call's 128 of each would
    spill. The mix keeps one accumulator per s, added together once after the walk; the
    projection is stored per call, the parts' sums added with one shuffle."""
    ROWS: tl.constexpr = row_start.shape[0]
    SPLIT: tl.constexpr = 2 if PROJECT else 1
    tl.static_assert(BLOCK_I % SPLIT == 0, "a projecting walk takes an even BLOCK_I")
    SPREAD: tl.constexpr = BLOCK_I // SPLIT
    bits = tl.arange(0, 32)[:, None, None, None, None, None]
    p = tl.arange(0, SPLIT)[None, :, None, None, None, None]
    s = tl.arange(0, SPREAD)[None, None, None, None, :, None]
    call = _tile_calls(row_start, WIDTH, DISTRIBUTION)[None, None, None, None, None, :]
    CALLS: tl.constexpr = call.shape[5]
    g = tl.expand_dims(tl.expand_dims(_call_parts(grad, SPLIT), 1), 4)
    acc = tl.zeros((32, 4 // SPLIT, SPLIT, SPREAD, CALLS), tl.float32)
    for first in range(i_start, i_stop, BLOCK_I):
        indices = first + p * SPREAD + s
        z0, z1, z2, z3 = _words(seed, call, indices, stream_lo, stream_hi, DISTRIBUTION)
        # The words joined in the thread that made them ([..., a, b]: word 2 a + b), then put on
        # the block's axes: one exchange for all four.
        both = tl.join(tl.join(z0, z2), tl.join(z1, z3))
        words = tl.reshape(tl.permute(both, (0, 1, 6, 7, 2, 3, 4, 5)), (1, SPLIT, 4 // SPLIT, SPLIT, SPREAD, CALLS))
        coeffs = tl.load(coeffs_ptr + indices, mask=indices < i_stop, other=0.0)
        acc += tl.sum(flip_sign(coeffs, words, bits), axis=1)
        if PROJECT:
            dots = tl.sum(tl.sum(tl.sum(flip_sign(g, words, bits), axis=0), axis=1), axis=1)
            at = first + tl.arange(0, SPLIT)[:, None, None] * SPREAD + tl.arange(0, SPREAD)[None, :, None]
            tl.store(projection_ptr[None, None, :] + at, dots, mask=at < i_stop)
    return _from_call_parts(tl.sum(acc, axis=3), ROWS)


@triton.jit
def mixed_tile(
    coeffs_ptr,
    i_start,
    i_stop,
    scale,
    seed,
    stream_lo,
    stream_hi,
    row_start,
    valid,
    grad,
    projection_ptr,
    WIDTH: tl.constexpr,
    BLOCK_I: tl.constexpr,
    DISTRIBUTION: tl.constexpr,
    ALIGNED: tl.constexpr,
    PROJECT: tl.constexpr,
    THREADS: tl.constexpr,
):
    """scale * sum_{i_start<=i<i_stop} coeffs[i] * U_i over the tile of basis_tile's positions,
    0 where not `valid`, walking BLOCK_I matrices at a time. ALIGNED promises that the tile is
    whole Philox calls: every row_start and WIDTH are multiples of the entries per call, or
    (rademacher) WIDTH divides them and each call's rows are one run, the first on the call's
    boundary. With PROJECT, the same walk stores unit u's share of <grad, U_i> at
    projection_ptr[u] + i (projection_ptr: (projection_units,) pointers: the rows, or the calls
    of an aligned rademacher tile), so each U_i is generated once for both; `grad` (a tile, or a
    scalar 0 without PROJECT) must be 0 where not valid. THREADS: the program's, which the walk
    over uniform rows of whole calls lays a step's basis indices out for."""
    if ALIGNED and is_rademacher(DISTRIBUTION):
        acc = _rademacher_calls(
            coeffs_ptr, i_start, i_stop, seed, stream_lo, stream_hi, row_start, grad + tl.zeros(valid.shape, tl.float32),
            projection_ptr, WIDTH, BLOCK_I, DISTRIBUTION, PROJECT,
        )  # fmt: skip
    elif ALIGNED:
        acc = _mixed_calls(
            coeffs_ptr, i_start, i_stop, seed, stream_lo, stream_hi, row_start, grad + tl.zeros(valid.shape, tl.float32),
            projection_ptr, WIDTH, BLOCK_I, DISTRIBUTION, PROJECT, THREADS,
        )  # fmt: skip
    else:
        acc = tl.zeros(valid.shape, tl.float32)
        for first in range(i_start, i_stop, BLOCK_I):
            indices = first + tl.arange(0, BLOCK_I)
            live = indices < i_stop
            u = basis_block(seed, stream_lo, stream_hi, indices, row_start, WIDTH, DISTRIBUTION)
            coeffs = tl.load(coeffs_ptr + indices, mask=live, other=0.0)
            acc += tl.sum(coeffs[:, None, None] * u, axis=0)
            if PROJECT:
                _store_row_sums(projection_ptr, indices, live, u * grad[None, :, :])
    return tl.where(valid, acc * scale, 0.0)


@triton.jit
def official_entries(seed, index, threads, DTYPE: tl.constexpr, LEGACY: tl.constexpr):
    """The official CUDA layout's values (docs/spec.md, "Official CUDA layout families") at the
    flat basis indices `index` (int64, any shape) of a basis drawn by `threads` threads (T < 2^31),
    in DTYPE ("float32", "bfloat16" or "float16"; LEGACY: a half-precision value that rounds to 1
    stays 1), as float32. Each entry is its own Philox4x32-10 call: a call's four words lie T
    entries apart."""
    # The stripe of T entries that li lies in, li div T, is 4 loop steps + word: one 64-bit
    # division gives the step li div 4T, the word (li mod 4T) div T and the thread li mod T.
    stripe = index // threads.to(tl.int64)
    thread = index - stripe * threads
    zero = tl.zeros(index.shape, tl.uint32)
    z0, z1, z2, z3 = tl.philox(seed, (stripe >> 2).to(tl.uint32), zero, thread.to(tl.uint32), zero, 10)
    word = _select(stripe & 3, z0, z1, z2, z3)
    # fl32(word) * 2^-32 and 2u are exact, so a fused multiply-add rounds as the two steps do.
    u = word.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
    value = u * 2.0 - 1.0
    value = tl.where(value == 1.0, -1.0, value)
    if DTYPE == "bfloat16":
        # To nearest even on the bits (the values are finite), the same on a GPU and in the
        # interpreter, whose cast truncates.
        bits = value.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        value = bits.to(tl.float32, bitcast=True)
    elif DTYPE == "float16":
        value = value.to(tl.float16).to(tl.float32)
    if not LEGACY:
        value = tl.where(value == 1.0, -1.0, value)
    return value
