"""Philox4x32 (Salmon et al., SC'11) on PyTorch int64 tensors.

PyTorch has no unsigned 32-bit shifts or adds, so each 32-bit word lives in an int64 tensor. The
32x32 -> 64-bit product may exceed 2^63 and wrap to a negative int64; its bit pattern is still the
exact unsigned product, so the high word is recovered by an arithmetic shift and a mask.
"""

import torch

MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
KEY_BUMPS = (0x9E3779B9, 0xBB67AE85)
MASK32 = 0xFFFFFFFF
DEFAULT_ROUNDS = 10


def philox4x32(counter, key, rounds=DEFAULT_ROUNDS):
    """Philox4x32-`rounds` of `counter` (four broadcastable int64 tensors of uint32 values) under
    `key` (two Python ints below 2^32). Returns the four output words as int64 tensors."""
    c0, c1, c2, c3 = torch.broadcast_tensors(*counter)
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0 = (k0 + KEY_BUMPS[0]) & MASK32
            k1 = (k1 + KEY_BUMPS[1]) & MASK32
        p0 = c0 * MULTIPLIERS[0]
        p1 = c2 * MULTIPLIERS[1]
        # Every tensor written in place below was freshly made in this round.
        hi1 = (p1 >> 32).bitwise_and_(MASK32).bitwise_xor_(c1).bitwise_xor_(k0)
        hi0 = (p0 >> 32).bitwise_and_(MASK32).bitwise_xor_(c3).bitwise_xor_(k1)
        c0, c1, c2, c3 = hi1, p1.bitwise_and_(MASK32), hi0, p0.bitwise_and_(MASK32)
    return c0, c1, c2, c3
