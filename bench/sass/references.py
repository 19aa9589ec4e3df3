"""Reference loops for the SASS budget, in Triton: per basis index, the Philox calls of the
entries one program owns (the contract's minimum: one call per 4 uniform or 128 rademacher
entries, each thread making whole calls), the entries' values, and one FMA (mix) or one
multiply-add into a running sum (projection) per entry; nothing else. They compute nothing
useful (the projection sums run over every basis index together) and are never launched."""

import triton
import triton.language as tl


@triton.jit
def _uniform_value(word):
    # The contract's uniform value in its cheapest exact form: exponent bits of 2.0 under the
    # word's top 23 bits, less 3, plus 2^-23.
    return ((word >> 9) | 0x40000000).to(tl.float32, bitcast=True) - 3.0 + 1.0 / 8388608


@triton.jit
def _signed(value, word, bit):
    return (value.to(tl.uint32, bitcast=True) ^ ((word << (31 - bit).to(tl.uint32)) & 0x80000000)).to(
        tl.float32, bitcast=True
    )


@triton.jit
def _entries(word, factor, RADEMACHER: tl.constexpr):
    """factor times the entries of word: (1, CALLS) uniform, (32, CALLS) rademacher."""
    if RADEMACHER:
        return _signed(factor, word[None, :], tl.arange(0, 32)[:, None])
    else:
        return factor * _uniform_value(word[None, :])


@triton.jit
def reference_kernel(
    coeffs_ptr, grad_ptr, out_ptr, k, seed, stream_lo, stream_hi,
    CALLS: tl.constexpr, RADEMACHER: tl.constexpr, MIX: tl.constexpr, PROJECT: tl.constexpr,
    ROUNDS: tl.constexpr,
):  # fmt: skip
    """CALLS calls per program per basis index, i < k."""
    call = (tl.program_id(0) * CALLS + tl.arange(0, CALLS)).to(tl.uint32)
    zero = tl.zeros((CALLS,), tl.uint32)
    rows = tl.arange(0, 32 if RADEMACHER else 1)[:, None]
    positions = call[None, :] * (128 if RADEMACHER else 4) + (32 if RADEMACHER else 1) * rows
    g0 = tl.load(grad_ptr + positions)
    g1 = tl.load(grad_ptr + positions + (32 if RADEMACHER else 1))
    g2 = tl.load(grad_ptr + positions + (64 if RADEMACHER else 2))
    g3 = tl.load(grad_ptr + positions + (96 if RADEMACHER else 3))
    acc0 = tl.zeros(positions.shape, tl.float32)
    acc1, acc2, acc3, dot = acc0, acc0, acc0, acc0
    for i in range(k):
        z0, z1, z2, z3 = tl.philox(seed, call, zero + i, zero + stream_lo, zero + stream_hi, ROUNDS)
        if MIX:
            coeff = tl.load(coeffs_ptr + i)
            acc0 += _entries(z0, coeff, RADEMACHER)
            acc1 += _entries(z1, coeff, RADEMACHER)
            acc2 += _entries(z2, coeff, RADEMACHER)
            acc3 += _entries(z3, coeff, RADEMACHER)
        if PROJECT:
            dot += _entries(z0, g0, RADEMACHER) + _entries(z1, g1, RADEMACHER)
            dot += _entries(z2, g2, RADEMACHER) + _entries(z3, g3, RADEMACHER)
    tl.store(out_ptr + positions, acc0 + acc1 + acc2 + acc3 + dot)
