"""Reference loops for the SASS budget, in Triton: per basis index, the Philox calls of the
entries one program owns (the contract's minimum: one call per 4 uniform, 8 uniform16 or 128
rademacher entries, each thread making whole calls, with the distribution's rounds), the
entries' values, and one FMA (mix) or one multiply-add into a running sum (projection) per
entry; nothing else. They compute nothing useful (the projection sums run over every basis index
together) and are never launched. The values are written out here in their cheapest exact form,
apart from the kernels' own code, so that a costlier kernel shows against them."""

import triton
import triton.language as tl

from nola_kernels.triton_kernels.philox_tiles import call_shift, is_rademacher, philox_rounds, word_entries


@triton.jit
def _uniform_value(word):
    # Exponent bits of 2.0 under the word's top 23 bits, less 3, plus 2^-23.
    return ((word >> 9) | 0x40000000).to(tl.float32, bitcast=True) - 3.0 + 1.0 / 8388608


@triton.jit
def _uniform16_value(word, half):
    # The half word, ored with 1, in the low mantissa bits of 2.0, times 2^7, less 257.
    return (((word >> (16 * half).to(tl.uint32)) & 0xFFFF) | 0x40000001).to(tl.float32, bitcast=True) * 128.0 - 257.0


@triton.jit
def _signed(value, word, bit):
    return (value.to(tl.uint32, bitcast=True) ^ ((word << (31 - bit).to(tl.uint32)) & 0x80000000)).to(
        tl.float32, bitcast=True
    )


@triton.jit
def _entries(word, factor, DISTRIBUTION: tl.constexpr):
    """factor times the entries of word: (E, CALLS) for the word's E entries."""
    lanes = tl.arange(0, word_entries(DISTRIBUTION))[:, None]
    if is_rademacher(DISTRIBUTION):
        return _signed(factor, word[None, :], lanes)
    elif word_entries(DISTRIBUTION) == 2:
        return factor * _uniform16_value(word[None, :], lanes)
    else:
        return factor * _uniform_value(word[None, :])


@triton.jit
def reference_kernel(
    coeffs_ptr, grad_ptr, out_ptr, k, seed, stream_lo, stream_hi,
    CALLS: tl.constexpr, DISTRIBUTION: tl.constexpr, MIX: tl.constexpr, PROJECT: tl.constexpr,
):  # fmt: skip
    """CALLS calls per program per basis index, i < k."""
    E: tl.constexpr = word_entries(DISTRIBUTION)
    call = (tl.program_id(0) * CALLS + tl.arange(0, CALLS)).to(tl.uint32)
    zero = tl.zeros((CALLS,), tl.uint32)
    # Strided loads (not the entries' positions: nothing useful is computed), so that they take
    # the Philox words' layout: threads along the calls, a word's entries in each thread.
    positions = (call[None, :] << call_shift(DISTRIBUTION)) + E * tl.arange(0, E)[:, None]
    g0 = tl.load(grad_ptr + positions)
    g1 = tl.load(grad_ptr + positions + E)
    g2 = tl.load(grad_ptr + positions + 2 * E)
    g3 = tl.load(grad_ptr + positions + 3 * E)
    acc0 = tl.zeros(positions.shape, tl.float32)
    acc1, acc2, acc3, dot = acc0, acc0, acc0, acc0
    for i in range(k):
        z0, z1, z2, z3 = tl.philox(seed, call, zero + i, zero + stream_lo, zero + stream_hi, philox_rounds(DISTRIBUTION))
        if MIX:
            coeff = tl.load(coeffs_ptr + i)
            acc0 += _entries(z0, coeff, DISTRIBUTION)
            acc1 += _entries(z1, coeff, DISTRIBUTION)
            acc2 += _entries(z2, coeff, DISTRIBUTION)
            acc3 += _entries(z3, coeff, DISTRIBUTION)
        if PROJECT:
            dot += _entries(z0, g0, DISTRIBUTION) + _entries(z1, g1, DISTRIBUTION)
            dot += _entries(z2, g2, DISTRIBUTION) + _entries(z3, g3, DISTRIBUTION)
    tl.store(out_ptr + positions, acc0 + acc1 + acc2 + acc3 + dot)
